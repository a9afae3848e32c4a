//! Validation and dispatch of one request (P-CH4).
//!
//! The request has already been copied out of shared memory (header by the caller, payload here),
//! so a client that rewrites its slot while we work cannot change what we validated. Every length,
//! name, iovec and mount id is checked before the plugin sees anything.

use zus_api::Errno;
use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{DATA_REMOTE_IOV, DATA_WINDOW, DATA_WINDOW_STREAM, IoVec, MAX_IOV, OpCode, OpHeader, Pod};
use zus_api::request::Request;
use zus_channel::proto::Slot;
use zus_plugin::{DataDesc, OpCall, data_kind};

use crate::mounts::Mount;
use crate::server::{Attachment, Client, Snapshot};
use crate::tickets::Ticket;

/// Per-ZT buffers, allocated once.
#[derive(Debug)]
pub struct Scratch {
    /// Private copy of the request payload.
    pub req: Vec<u8>,
    /// Reply payload being built.
    pub reply: Vec<u8>,
    /// Validated remote iovecs.
    pub iov: Vec<IoVec>,
}

impl Scratch {
    /// Allocates the buffers.
    #[must_use]
    pub fn new() -> Self {
        Self { req: vec![0; PAYLOAD_SIZE], reply: vec![0; PAYLOAD_SIZE], iov: Vec::with_capacity(MAX_IOV) }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of serving one slot.
#[derive(Debug, Default)]
pub struct Served {
    /// Op result (>= 0) or -errno.
    pub result: i64,
    /// Reply payload bytes in `Scratch::reply`.
    pub reply_len: usize,
    /// Bytes the plugin placed in the window.
    pub data_len: usize,
    /// Whether the request was refused as malformed.
    pub rejected: bool,
}

/// Waits until a streamed write's `len` bytes are all in the window (for a plugin that does not
/// read streamed windows itself), bounded like the plugin-side wait.
fn wait_for_stream(ready: &core::sync::atomic::AtomicU32, len: u64) -> Result<(), Errno> {
    let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
    zus_plugin::wait_stream_ready(ready, len).map_err(Errno)
}

fn reject(e: Errno) -> Served {
    Served { result: e.to_wire(), rejected: true, ..Served::default() }
}

/// A client attached with tickets only (it does not own the mount) may send the data ops of
/// the preload library, each with a ticket of its uid for the op's inode, issued for writing
/// when the op writes (see [`crate::tickets`]; the rule per op is in `OpCode::facts`).
fn check_ticket(mount: &Mount, client: &Client, op: OpCode, ticket: u64, req: &Request<'_>) -> Result<(), Errno> {
    let write = req.ticket_need(op).ok_or(Errno::EPERM)?;
    mount.tickets.check(ticket, client.cred.uid, req.ino(), write)
}

/// Serves the request in `slot`, whose header was copied to `hdr`.
pub fn serve(
    snap: &Snapshot,
    client: &Client,
    attached: &[Attachment],
    hdr: &OpHeader,
    slot: Slot<'_>,
    scratch: &mut Scratch,
) -> Served {
    let Some(op) = OpCode::from_u32(hdr.opcode) else { return reject(Errno::ENOSYS) };
    let facts = op.facts();
    let in_len = hdr.in_len as usize;
    if in_len > PAYLOAD_SIZE || in_len < facts.request_size {
        return reject(Errno::EINVAL);
    }
    if op == OpCode::Noop {
        return Served::default();
    }
    slot.copy_request(&mut scratch.req[..in_len]);
    let payload = &scratch.req[..in_len];
    let Some((mount, ticketed)) = snap.mount_for(attached, hdr.mount_id) else { return reject(Errno::EBADF) };
    if mount.read_only && facts.mutates {
        return Served { result: Errno::EROFS.to_wire(), ..Served::default() };
    }
    // The one decode of this request: everything below works on the typed value.
    let req = match Request::decode(op, payload) {
        Ok(r) => r,
        Err(e) => return reject(e),
    };
    if let Request::KernelCache(r) = req {
        if !client.kernel_bridge {
            return Served { result: Errno::EPERM.to_wire(), ..Served::default() };
        }
        let result = mount.kernel_cache.set(client.id, r.ino, r.on != 0).map_or_else(Errno::to_wire, |()| 0);
        return Served { result, ..Served::default() };
    }
    if let Request::Ticket(r) = req {
        if !client.kernel_bridge {
            return Served { result: Errno::EPERM.to_wire(), ..Served::default() };
        }
        let result = if r.ticket == 0 {
            let t = Ticket { ino: r.ino, uid: r.uid, writable: r.writable != 0, issuer: client.id };
            mount.tickets.issue(t).map_or_else(Errno::to_wire, |id| i64::try_from(id).unwrap_or(0))
        } else {
            mount.tickets.revoke(client.id, r.ticket).map_or_else(Errno::to_wire, |()| 0)
        };
        return Served { result, ..Served::default() };
    }
    if ticketed && let Err(e) = check_ticket(mount, client, op, hdr.ticket, &req) {
        return Served { result: e.to_wire(), ..Served::default() };
    }
    if !client.kernel_bridge && req.steps_aside_for_kernel_cache(op) && mount.kernel_cache.contains(req.ino()) {
        return Served { result: Errno::EUSEKERNEL.to_wire(), ..Served::default() };
    }
    if let Request::CopyFileRange(r) = req
        && !client.kernel_bridge
        && mount.kernel_cache.contains(r.ino_in)
    {
        // The source's pages may be newer in the kernel's cache than on pmem.
        return Served { result: Errno::EUSEKERNEL.to_wire(), ..Served::default() };
    }
    if let Request::Map(r) = req
        && mount.read_only
        && r.write != 0
    {
        // A read-only mount may still map for reading; the write flag is refused.
        return Served { result: Errno::EROFS.to_wire(), ..Served::default() };
    }
    let (win_off, win_size) = (slot.window_offset(), slot.window_size());
    let mut data = DataDesc::NONE;
    let data_in = |len: usize| -> Result<usize, Errno> { if len > win_size { Err(Errno::EINVAL) } else { Ok(len) } };
    match req {
        Request::Read(io, iovs) | Request::Write(io, iovs) => {
            match io.data_kind {
                DATA_WINDOW => {
                    let avail = if op == OpCode::Write {
                        match data_in(hdr.data_len as usize) {
                            Ok(n) => n,
                            Err(e) => return reject(e),
                        }
                    } else {
                        win_size
                    };
                    if io.len > avail as u64 || io.niov != 0 {
                        return reject(Errno::EINVAL);
                    }
                    data.kind = data_kind::WINDOW;
                    data.window = client.region.raw(win_off, win_size);
                    data.window_len = avail as u64;
                }
                DATA_WINDOW_STREAM => {
                    // The window fills while we serve (a write's data from the client, a read's
                    // from the plugin); the op's own length bounds it in both directions.
                    if io.niov != 0 || io.len > win_size as u64 {
                        return reject(Errno::EINVAL);
                    }
                    if op == OpCode::Write && u64::from(hdr.data_len) != io.len {
                        return reject(Errno::EINVAL);
                    }
                    let ready = slot.data_ready();
                    if mount.plugin_streams() {
                        data.ready = ready.as_ptr();
                    } else if op == OpCode::Write
                        && let Err(e) = wait_for_stream(ready, io.len)
                    {
                        // A plugin that does not stream gets the whole write at once.
                        return Served { result: e.to_wire(), ..Served::default() };
                    }
                    data.kind = data_kind::WINDOW;
                    data.window = client.region.raw(win_off, win_size);
                    data.window_len = io.len;
                }
                DATA_REMOTE_IOV => {
                    if client.cred.pid == 0 {
                        // The kernel client: no process whose memory the iovecs could name.
                        return reject(Errno::EINVAL);
                    }
                    let n = io.niov as usize;
                    if n == 0 || n > MAX_IOV || n * size_of::<IoVec>() != iovs.len() {
                        return reject(Errno::EINVAL);
                    }
                    scratch.iov.clear();
                    let mut total = 0u64;
                    for v in iovs.chunks_exact(size_of::<IoVec>()) {
                        let Some(v) = <IoVec as Pod>::read_from(v) else { return reject(Errno::EINVAL) };
                        let Some(t) = total.checked_add(v.len) else { return reject(Errno::EINVAL) };
                        total = t;
                        scratch.iov.push(v);
                    }
                    if total != io.len || total > isize::MAX as u64 {
                        return reject(Errno::EINVAL);
                    }
                    data.kind = data_kind::REMOTE;
                    data.pid = i32::try_from(client.cred.pid).unwrap_or(0);
                    data.iov = scratch.iov.as_ptr();
                    data.niov = n as u64;
                }
                _ => return reject(Errno::EINVAL),
            }
        }
        Request::Setxattr(x, _) => {
            let n = match data_in(hdr.data_len as usize) {
                Ok(n) => n,
                Err(e) => return reject(e),
            };
            if x.size as usize > n {
                return reject(Errno::EINVAL);
            }
            data.kind = data_kind::WINDOW;
            data.window = client.region.raw(win_off, win_size);
            data.window_len = n as u64;
        }
        Request::Readdir(_)
        | Request::ReaddirPlus(_)
        | Request::Readlink(_)
        | Request::Getxattr(..)
        | Request::Listxattr(_) => {
            data.kind = data_kind::WINDOW;
            data.window = client.region.raw(win_off, win_size);
            data.window_len = win_size as u64;
        }
        _ => {}
    }
    let mut h = *hdr;
    if !client.privileged {
        // Only a privileged client (the FUSE bridge) may speak for other users.
        h.uid = client.cred.uid;
        h.gid = client.cred.gid;
        h.pid = client.cred.pid;
    }
    let mut call = OpCall {
        hdr: h,
        req: payload.as_ptr(),
        req_len: in_len,
        reply: scratch.reply.as_mut_ptr(),
        reply_cap: PAYLOAD_SIZE,
        reply_len: 0,
        data_out: 0,
        data,
    };
    let result = mount.op(&mut call);
    let window_out = if data.kind == data_kind::WINDOW { call.data_out.min(win_size) } else { 0 };
    Served {
        result,
        reply_len: if result >= 0 { call.reply_len.min(PAYLOAD_SIZE) } else { 0 },
        data_len: window_out,
        rejected: false,
    }
}
