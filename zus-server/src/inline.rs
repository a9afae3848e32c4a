//! In-process serving of one mount: a caller's own thread runs each op in the plugin, with no
//! channel, no slot and no ZT hand-off (the mode (b) prototype of issue 13: a FUSE-over-io_uring
//! ring thread pinned to CPU n serving its requests itself, as that CPU's ZT would).
//!
//! [`InlineMount`] loads the plugins of a directory, mounts one filesystem in this process and
//! serves ops given as plain slices: the request payload (the same zus_api request structs a
//! channel client writes into a slot), the caller's data buffer as the op's window (a write's
//! data is read from it, a read's data lands in it: no bounce copy), and the reply buffer. The
//! checks are those of [`crate::dispatch::serve`] that apply to a single trusted, privileged
//! caller: request size, the typed decode, `ro` against mutating ops, window lengths.
//!
//! What it is not: a server. The mount is private to the process that holds the
//! [`InlineMount`]; no other client (a preloaded program, `zufs status`) sees it, so the
//! kernel-cache marks have nobody to steer (`KernelCache` succeeds and does nothing) and tickets
//! are refused (`EPERM`).

use std::path::Path;

use zus_api::Errno;
use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{DATA_WINDOW, OpCode, OpHeader};
use zus_api::request::Request;
use zus_plugin::{DataDesc, OpCall, data_kind};

use crate::mounts::{self, Mount, MountError};
use crate::plugins::{self, Plugin};
use crate::tickets::Ticket;

/// The data of one op: the caller's buffer, used as the op's window.
#[derive(Debug)]
pub enum InlineData<'a> {
    /// No data.
    None,
    /// A write's (or setxattr's) bytes.
    In(&'a [u8]),
    /// Where a read, readdir, readlink or getxattr/listxattr puts its bytes.
    Out(&'a mut [u8]),
}

/// What one op did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InlineOutcome {
    /// The op's result (>= 0) or -errno, as on the wire.
    pub result: i64,
    /// Reply payload bytes written into the reply buffer.
    pub reply_len: usize,
    /// Bytes the plugin put into an [`InlineData::Out`] buffer.
    pub data_len: usize,
}

impl InlineOutcome {
    fn err(e: Errno) -> Self {
        Self { result: e.to_wire(), ..Self::default() }
    }
}

/// Who an op is for (the plugin sees these as the caller's credentials).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InlineCreds {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid.
    pub pid: u32,
}

/// One filesystem mounted in this process, served on the caller's thread.
#[derive(Debug)]
pub struct InlineMount {
    mount: Mount,
    /// The loaded plugins (their libraries stay loaded for the process anyway).
    _plugins: Vec<Plugin>,
}

/// The mount id in every op header an [`InlineMount`] builds.
pub const INLINE_MOUNT_ID: u32 = 1;

impl InlineMount {
    /// Loads the plugins in `plugin_dir` and mounts `device` (empty for a device-less plugin)
    /// with `fs_type`.
    ///
    /// # Errors
    /// The plugin directory's or the mount's error, as a message.
    pub fn mount(plugin_dir: &Path, fs_type: &str, device: &str, options: &str) -> Result<Self, String> {
        let plugins = plugins::load_dir(plugin_dir).map_err(|e| e.to_string())?;
        let Some(p) = plugins.iter().find(|p| p.name == fs_type) else {
            let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
            return Err(MountError::UnknownFsType(fs_type.to_owned(), names.join(", ")).to_string());
        };
        let mount = mounts::mount(INLINE_MOUNT_ID, p, device, options).map_err(|e| e.to_string())?;
        Ok(Self { mount, _plugins: plugins })
    }

    /// The root inode.
    #[must_use]
    pub fn root(&self) -> u64 {
        self.mount.root
    }

    /// The canonical device path (empty for a device-less plugin).
    #[must_use]
    pub fn device(&self) -> &str {
        &self.mount.device
    }

    /// Serves one op on this thread: `req` is the request payload in pieces (a request struct,
    /// then names or iovecs), `reply` receives the reply payload.
    pub fn op(
        &self,
        op: OpCode,
        creds: InlineCreds,
        req: &[&[u8]],
        data: InlineData<'_>,
        reply: &mut [u8],
    ) -> InlineOutcome {
        REQ.with_borrow_mut(|buf| op_on(&self.mount, None, buf, op, creds, req, data, reply))
    }

    /// Unmounts: the plugin flushes and frees its state; then the device is unmapped.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn unmount(self) -> Result<(), Errno> {
        self.mount.unmount()
    }
}

/// Serves one op on `mount` on this thread (see [`InlineMount::op`]); `issuer`: the server's
/// id for marks and tickets when `mount` is a live zusd mount (`None`: a private mount).
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
pub(crate) fn op_on(
    mount: &Mount,
    issuer: Option<u32>,
    buf: &mut Vec<u8>,
    op: OpCode,
    creds: InlineCreds,
    req: &[&[u8]],
    data: InlineData<'_>,
    reply: &mut [u8],
) -> InlineOutcome {
    let facts = op.facts();
    let in_len: usize = req.iter().map(|p| p.len()).sum();
    if in_len > PAYLOAD_SIZE || in_len < facts.request_size {
        return InlineOutcome::err(Errno::EINVAL);
    }
    if op == OpCode::Noop {
        return InlineOutcome::default();
    }
    if mount.read_only && facts.mutates {
        return InlineOutcome::err(Errno::EROFS);
    }
    buf.clear();
    for p in req {
        buf.extend_from_slice(p);
    }
    let payload = &buf[..in_len];
    let decoded = match Request::decode(op, payload) {
        Ok(r) => r,
        Err(e) => return InlineOutcome::err(e),
    };
    // The caller's buffer is the op's window: its pointer and length, and whether the
    // plugin fills it.
    let (window, window_len, out) = match data {
        InlineData::None => (core::ptr::null_mut(), 0usize, false),
        // The plugin only reads a write's window; the pointer is mutable by the C ABI.
        InlineData::In(d) => (d.as_ptr().cast_mut(), d.len(), false),
        InlineData::Out(d) => (d.as_mut_ptr(), d.len(), true),
    };
    let mut desc = DataDesc::NONE;
    match decoded {
        // A private mount: nobody else to steer or to show a ticket.
        Request::KernelCache(_) if issuer.is_none() => return InlineOutcome::default(),
        Request::Ticket(_) if issuer.is_none() => return InlineOutcome::err(Errno::EPERM),
        // A live zusd mount served for a kernel transport: the marks and tickets are the
        // server's own, held by `issuer` (as `dispatch::serve` does for a bridge client).
        Request::KernelCache(r) => {
            let id = issuer.unwrap_or(0);
            return InlineOutcome {
                result: mount.kernel_cache.set(id, r.ino, r.on != 0).map_or_else(Errno::to_wire, |()| 0),
                ..InlineOutcome::default()
            };
        }
        Request::Ticket(r) => {
            let id = issuer.unwrap_or(0);
            let result = if r.ticket == 0 {
                let t = Ticket { ino: r.ino, uid: r.uid, writable: r.writable != 0, issuer: id };
                mount.tickets.issue(t).map_or_else(Errno::to_wire, |t| i64::try_from(t).unwrap_or(0))
            } else {
                mount.tickets.revoke(id, r.ticket).map_or_else(Errno::to_wire, |()| 0)
            };
            return InlineOutcome { result, ..InlineOutcome::default() };
        }
        Request::Read(io, _) | Request::Write(io, _) => {
            // Only the window kind: the data is the caller's buffer, in this process.
            if io.data_kind != DATA_WINDOW || io.niov != 0 || io.len > window_len as u64 {
                return InlineOutcome::err(Errno::EINVAL);
            }
            if (op == OpCode::Write) == out {
                return InlineOutcome::err(Errno::EINVAL);
            }
            desc.kind = data_kind::WINDOW;
            desc.window = window;
            desc.window_len = io.len;
        }
        Request::Setxattr(x, _) => {
            if out || x.size as usize > window_len {
                return InlineOutcome::err(Errno::EINVAL);
            }
            desc.kind = data_kind::WINDOW;
            desc.window = window;
            desc.window_len = window_len as u64;
        }
        Request::Readdir(_) | Request::Readlink(_) | Request::Getxattr(..) | Request::Listxattr(_) => {
            if !out && window_len > 0 {
                return InlineOutcome::err(Errno::EINVAL);
            }
            desc.kind = data_kind::WINDOW;
            desc.window = window;
            desc.window_len = window_len as u64;
        }
        _ => {}
    }
    let hdr = OpHeader {
        opcode: op as u32,
        flags: 0,
        mount_id: mount.id,
        in_len: u32::try_from(in_len).unwrap_or(0),
        out_len: 0,
        data_len: if out { 0 } else { u32::try_from(window_len).unwrap_or(0) },
        seq: 0,
        result: 0,
        uid: creds.uid,
        gid: creds.gid,
        pid: creds.pid,
        reserved: 0,
        ticket: 0,
    };
    let mut call = OpCall {
        hdr,
        req: payload.as_ptr(),
        req_len: in_len,
        reply: reply.as_mut_ptr(),
        reply_cap: reply.len().min(PAYLOAD_SIZE),
        reply_len: 0,
        data_out: 0,
        data: desc,
    };
    let result = mount.op(&mut call);
    InlineOutcome {
        result,
        reply_len: if result >= 0 { call.reply_len.min(reply.len()).min(PAYLOAD_SIZE) } else { 0 },
        data_len: if out && desc.kind == data_kind::WINDOW && result >= 0 { call.data_out.min(window_len) } else { 0 },
    }
}

thread_local! {
    /// The request payload, assembled once per op (as a ZT's private copy).
    static REQ: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(PAYLOAD_SIZE));
}

#[cfg(test)]
mod tests {
    use zus_api::ops::{DATA_REMOTE_IOV, InoReq, IoReq, KernelCacheReq, Pod, TicketReq};

    use super::*;
    use crate::testutil::{Device, plugin};

    fn inline(dev: &Device, extra: &str) -> InlineMount {
        let opts = if extra.is_empty() { dev.0.clone() } else { format!("{},{extra}", dev.0) };
        InlineMount { mount: mounts::mount(INLINE_MOUNT_ID, &plugin(), &dev.0, &opts).unwrap(), _plugins: Vec::new() }
    }

    fn io(kind: u32, len: u64) -> IoReq {
        IoReq { ino: 1, fh: 1, offset: 0, len, flags: 0, data_kind: kind, niov: 0, reserved: 0 }
    }

    #[test]
    fn test_inline_ops_are_checked_before_the_plugin_sees_them() {
        let dev = Device::new("inline");
        let m = inline(&dev, "");
        let mut reply = vec![0u8; 256];
        let ino = InoReq { ino: 1 };
        let run = |op, req: &[&[u8]], data: InlineData<'_>, reply: &mut [u8]| {
            m.op(op, InlineCreds::default(), req, data, reply).result
        };
        assert_eq!(run(OpCode::Getattr, &[ino.as_bytes()], InlineData::None, &mut reply), 0);
        // Shorter than the op's request struct.
        assert_eq!(run(OpCode::Getattr, &[&[0u8; 3]], InlineData::None, &mut reply), Errno::EINVAL.to_wire());
        // Only window data, of the right direction and length.
        let mut buf = vec![0u8; 4096];
        let r = io(DATA_REMOTE_IOV, 4096);
        assert_eq!(run(OpCode::Read, &[r.as_bytes()], InlineData::Out(&mut buf), &mut reply), Errno::EINVAL.to_wire());
        let r = io(DATA_WINDOW, 8192);
        assert_eq!(run(OpCode::Read, &[r.as_bytes()], InlineData::Out(&mut buf), &mut reply), Errno::EINVAL.to_wire());
        let r = io(DATA_WINDOW, 4096);
        assert_eq!(run(OpCode::Read, &[r.as_bytes()], InlineData::Out(&mut buf), &mut reply), 0);
        assert_eq!(run(OpCode::Write, &[r.as_bytes()], InlineData::Out(&mut buf), &mut reply), Errno::EINVAL.to_wire());
        assert_eq!(run(OpCode::Write, &[r.as_bytes()], InlineData::In(&buf), &mut reply), 0);
        // Nobody else to steer or to show a ticket.
        let k = KernelCacheReq { ino: 1, on: 1, reserved: 0 };
        assert_eq!(run(OpCode::KernelCache, &[k.as_bytes()], InlineData::None, &mut reply), 0);
        let t = TicketReq { ino: 1, ticket: 0, uid: 1000, writable: 0 };
        assert_eq!(run(OpCode::Ticket, &[t.as_bytes()], InlineData::None, &mut reply), Errno::EPERM.to_wire());
        m.unmount().unwrap();
    }

    #[test]
    fn test_inline_read_only_mount_refuses_mutating_ops() {
        let dev = Device::new("inline-ro");
        let m = inline(&dev, "ro");
        let buf = vec![0u8; 512];
        let r = io(DATA_WINDOW, 512);
        let mut reply = vec![0u8; 256];
        let res = m.op(OpCode::Write, InlineCreds::default(), &[r.as_bytes()], InlineData::In(&buf), &mut reply);
        assert_eq!(res.result, Errno::EROFS.to_wire());
        m.unmount().unwrap();
    }
}
