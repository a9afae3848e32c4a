//! Serving one op of a live zusd mount on the caller's own thread, with no channel, no slot and
//! no ZT hand-off: what zusd's FUSE-over-io_uring ring threads do (`serve=zusd`, mode (b) of
//! issue 13; [`crate::handoff::LiveMount::op`]).
//!
//! [`op_on`] takes the op as plain slices: the request payload (the same zus_api request structs
//! a channel client writes into a slot), the caller's data buffer as the op's window (a write's
//! data is read from it, a read's data lands in it: no bounce copy), and the reply buffer. The
//! checks are those of [`crate::dispatch::serve`] that apply to a single trusted, privileged
//! caller: request size, the typed decode, `ro` against mutating ops, window lengths.

use zus_api::Errno;
use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{DATA_WINDOW, OpCode, OpHeader};
use zus_api::request::Request;
use zus_plugin::{DataDesc, OpCall, data_kind};

use crate::mounts::Mount;
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

/// Serves one op on `mount` on this thread: `req` is the request payload in pieces (a request
/// struct, then names or iovecs), `reply` receives the reply payload; `issuer` is the server's
/// id for the kernel-cache marks and tickets this caller holds; `buf` the thread's scratch copy
/// of the request.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
pub(crate) fn op_on(
    mount: &Mount,
    issuer: u32,
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
        // The marks and tickets are the server's own, held by `issuer` (as `dispatch::serve`
        // does for a bridge client).
        Request::KernelCache(r) => {
            return InlineOutcome {
                result: mount.kernel_cache.set(issuer, r.ino, r.on != 0).map_or_else(Errno::to_wire, |()| 0),
                ..InlineOutcome::default()
            };
        }
        Request::Ticket(r) => {
            let result = if r.ticket == 0 {
                let t = Ticket { ino: r.ino, uid: r.uid, writable: r.writable != 0, issuer };
                mount.tickets.issue(t).map_or_else(Errno::to_wire, |t| i64::try_from(t).unwrap_or(0))
            } else {
                mount.tickets.revoke(issuer, r.ticket).map_or_else(Errno::to_wire, |()| 0)
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
        Request::Readdir(_)
        | Request::ReaddirPlus(_)
        | Request::Readlink(_)
        | Request::Getxattr(..)
        | Request::Listxattr(_) => {
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

#[cfg(test)]
mod tests {
    use zus_api::ops::{DATA_REMOTE_IOV, InoReq, IoReq, Pod};

    use super::*;
    use crate::mounts;
    use crate::testutil::{Device, plugin};

    fn mount(dev: &Device, extra: &str) -> Mount {
        let opts = if extra.is_empty() { dev.0.clone() } else { format!("{},{extra}", dev.0) };
        mounts::mount(1, &plugin(), &dev.0, &opts).unwrap()
    }

    fn io(kind: u32, len: u64) -> IoReq {
        IoReq { ino: 1, fh: 1, offset: 0, len, flags: 0, data_kind: kind, niov: 0, reserved: 0 }
    }

    #[test]
    fn test_inline_ops_are_checked_before_the_plugin_sees_them() {
        let dev = Device::new("inline");
        let m = mount(&dev, "");
        let mut reply = vec![0u8; 256];
        let mut scratch = Vec::new();
        let ino = InoReq { ino: 1 };
        let mut run = |op, req: &[&[u8]], data: InlineData<'_>, reply: &mut [u8]| {
            op_on(&m, 7, &mut scratch, op, InlineCreds::default(), req, data, reply).result
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
        m.unmount().unwrap();
    }

    #[test]
    fn test_inline_read_only_mount_refuses_mutating_ops() {
        let dev = Device::new("inline-ro");
        let m = mount(&dev, "ro");
        let buf = vec![0u8; 512];
        let r = io(DATA_WINDOW, 512);
        let mut reply = vec![0u8; 256];
        let res = op_on(
            &m,
            7,
            &mut Vec::new(),
            OpCode::Write,
            InlineCreds::default(),
            &[r.as_bytes()],
            InlineData::In(&buf),
            &mut reply,
        );
        assert_eq!(res.result, Errno::EROFS.to_wire());
        m.unmount().unwrap();
    }
}
