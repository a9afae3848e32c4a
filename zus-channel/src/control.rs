//! The control socket: handshake, mount management and status.
//!
//! `zusd` listens on a Unix `SOCK_SEQPACKET` socket (message boundaries preserved). Every message
//! is a [`CtlHeader`] followed by a JSON body ([`Request`] from the client, [`Reply`] from the
//! server). The first request must be [`Request::Hello`]; its reply carries the client's own
//! channel memfd as `SCM_RIGHTS` ancillary data. Both sides check the header's magic and ABI
//! version on every message and refuse a mismatched peer with a message naming both versions.
//! The control plane is not on the hot path, so it favours clarity over speed.

use core::mem::size_of;

use serde::{Deserialize, Serialize};

pub use zus_api::control::{CtlHeader, MAX_CTL_MSG};
use zus_api::ops::Pod;

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "req", rename_all = "snake_case")]
pub enum Request {
    /// Handshake: the reply carries the client's channel memfd.
    Hello {
        /// Feature bits the client understands.
        features: u64,
        /// Feature bits the client cannot work without.
        required: u64,
        /// A name for logs (program name).
        name: String,
    },
    /// List the loaded filesystem types.
    ListFs,
    /// Mount `device` with plugin `fs_type`.
    Mount {
        /// Plugin name.
        fs_type: String,
        /// Device path (file, /dev/dax, /dev/pmem); may be empty for device-less plugins.
        device: String,
        /// Comma-separated options.
        options: String,
    },
    /// Allow this client to send ops to an existing mount.
    Attach {
        /// The mount.
        mount_id: u32,
    },
    /// Unmount (flushes and releases the plugin's state).
    Unmount {
        /// The mount.
        mount_id: u32,
    },
    /// Server status.
    Status,
    /// Serve a kernel transport for a mount inside zusd: the message carries the transport's
    /// fd (`SCM_RIGHTS`), e.g. a mounted `/dev/fuse` whose connection negotiated FUSE over
    /// io_uring. zusd hands it to the service registered for `kind` (the zusd binary registers
    /// `fuse-uring`), which serves the mount's requests from threads pinned per CPU until the
    /// transport's connection ends. Privileged kernel-bridge clients only.
    Handoff {
        /// The mount (one this client mounted or attached).
        mount_id: u32,
        /// Which service: `fuse-uring`.
        kind: String,
        /// The service's parameters (its own `key=value,...` text).
        params: String,
    },
}

/// A loaded filesystem type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsTypeInfo {
    /// Name used with `-t`.
    pub name: String,
    /// Shared object it came from.
    pub path: String,
    /// Whether it needs a device.
    pub needs_device: bool,
}

/// A mount, as reported by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// Id used in op headers.
    pub mount_id: u32,
    /// Plugin.
    pub fs_type: String,
    /// Device path.
    pub device: String,
    /// Options.
    pub options: String,
    /// Root inode.
    pub root: u64,
    /// Whether the device is mapped with MAP_SYNC.
    pub map_sync: bool,
    /// Attached with tickets only (the client does not own the mount): data ops on inodes the
    /// client holds a ticket for ([`zus_api::ops::OpCode::Ticket`]), nothing else.
    #[serde(default)]
    pub ticketed: bool,
    /// In status: inodes the kernel caches pages of (the fast path steps aside for them).
    #[serde(default)]
    pub kernel_cached: u64,
    /// In status: live tickets (other users' open files on the fast path).
    #[serde(default)]
    pub tickets: u64,
    /// In status: the kernel transport zusd serves for this mount itself (a
    /// [`Request::Handoff`]: `fuse-uring`), empty when none.
    #[serde(default)]
    pub served_by: String,
    /// In status: requests that transport served, per CPU they were served on.
    #[serde(default)]
    pub served_per_cpu: Vec<u64>,
}

/// One ZT lane, as reported by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneInfo {
    /// CPU the ZT is pinned to.
    pub cpu: u32,
    /// NUMA node of that CPU.
    pub node: u32,
    /// Ops served by this ZT since start.
    pub ops: u64,
    /// Malformed requests refused.
    pub rejected: u64,
}

/// Server status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Server pid.
    pub pid: u32,
    /// Loaded plugins.
    pub plugins: Vec<FsTypeInfo>,
    /// Mounts.
    pub mounts: Vec<MountInfo>,
    /// Connected clients.
    pub clients: u32,
    /// Per-CPU ZT lanes.
    pub lanes: Vec<LaneInfo>,
    /// Topology description, e.g. "1 node x 2 CPUs (sysfs)".
    pub topology: String,
}

/// A server reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Handshake accepted; the channel memfd is attached.
    Hello {
        /// Id of this client.
        client_id: u32,
        /// Server feature bits.
        features: u64,
        /// Bytes to map from the memfd.
        channel_size: u64,
    },
    /// Loaded filesystem types.
    FsList {
        /// Types.
        types: Vec<FsTypeInfo>,
    },
    /// A mount exists (new, or attached).
    Mounted {
        /// Mount details.
        mount: MountInfo,
    },
    /// Done.
    Ok,
    /// Status.
    Status {
        /// Details.
        status: StatusInfo,
    },
    /// Refused: errno and a message fit for a user.
    Error {
        /// Positive errno.
        errno: i32,
        /// What went wrong.
        message: String,
    },
}

/// Errors framing control messages.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The peer is not speaking our protocol/version.
    #[error("{0}")]
    Peer(String),
    /// Truncated or oversized message.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// JSON body did not parse.
    #[error("malformed control message body: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a message: header + JSON body.
///
/// # Errors
/// [`CtlError::Malformed`] if the body is too large.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, CtlError> {
    let json = serde_json::to_vec(body)?;
    let body_len = u32::try_from(json.len())
        .ok()
        .filter(|&l| l as usize + size_of::<CtlHeader>() <= MAX_CTL_MSG)
        .ok_or_else(|| CtlError::Malformed(format!("body of {} bytes too large", json.len())))?;
    let h = CtlHeader { magic: zus_api::ZUS_MAGIC, abi_version: zus_api::ZUS_ABI_VERSION, body_len };
    let mut out = Vec::with_capacity(size_of::<CtlHeader>() + json.len());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Decodes a message received whole (SOCK_SEQPACKET), checking magic, version and length.
///
/// # Errors
/// [`CtlError`] naming what is wrong.
pub fn decode<T: for<'de> Deserialize<'de>>(msg: &[u8], peer: &str) -> Result<T, CtlError> {
    let h = CtlHeader::read_from(msg)
        .ok_or_else(|| CtlError::Malformed(format!("{} bytes, shorter than the header", msg.len())))?;
    zus_api::check_peer(h.magic, h.abi_version, peer).map_err(CtlError::Peer)?;
    let body = &msg[size_of::<CtlHeader>()..];
    if body.len() != h.body_len as usize {
        return Err(CtlError::Malformed(format!("body is {} bytes, header says {}", body.len(), h.body_len)));
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip_request() {
        let r = Request::Mount { fs_type: "pmemfs".into(), device: "/dev/shm/x".into(), options: "sync".into() };
        let m = encode(&r).unwrap();
        assert_eq!(decode::<Request>(&m, "client").unwrap(), r);
    }

    #[test]
    fn test_wrong_version_names_both_versions() {
        let mut m = encode(&Request::Status).unwrap();
        m[8] = 99;
        let e = decode::<Request>(&m, "client").unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains(&format!("version {}", zus_api::ZUS_ABI_VERSION)), "{e}");
    }

    #[test]
    fn test_truncated_and_garbage_refused() {
        assert!(decode::<Request>(&[1, 2, 3], "c").is_err());
        let mut m = encode(&Request::Status).unwrap();
        m.truncate(m.len() - 1);
        assert!(decode::<Request>(&m, "c").is_err());
        let mut m = encode(&Request::Status).unwrap();
        let n = m.len();
        m[n - 2] = b'!';
        assert!(decode::<Request>(&m, "c").is_err());
    }
}
