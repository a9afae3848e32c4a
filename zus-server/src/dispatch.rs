//! Validation and dispatch of one request (P-CH4).
//!
//! The request has already been copied out of shared memory (header by the caller, payload here),
//! so a client that rewrites its slot while we work cannot change what we validated. Every length,
//! name, iovec and mount id is checked before the plugin sees anything.

use zus_api::Errno;
use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{
    CreateReq, DATA_REMOTE_IOV, DATA_WINDOW, DATA_WINDOW_STREAM, InoReq, IoReq, IoVec, KernelCacheReq, LinkReq,
    MAX_IOV, NAME_MAX, NameReq, OpCode, OpHeader, PATH_MAX, Pod, RenameReq, SetattrReq, SymlinkReq, TicketReq,
    XattrReq, setattr, split_names,
};
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

/// Where an op's data window and its streamed-window word lie in the client's channel set.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Offset of the slot's data window.
    pub offset: usize,
    /// Bytes of the window.
    pub size: usize,
    /// Offset of the slot's `data_ready` word.
    pub ready_offset: usize,
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

fn check_name(n: &[u8]) -> Result<(), Errno> {
    if n.is_empty() || n.contains(&b'/') || n.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if n.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn names<R: Pod>(payload: &[u8], lens: impl FnOnce(&R) -> Vec<u32>) -> Result<(), Errno> {
    let r = R::read_from(payload).ok_or(Errno::EINVAL)?;
    let var = &payload[size_of::<R>()..];
    let ls = lens(&r);
    let total: u64 = ls.iter().map(|&l| u64::from(l)).sum();
    if total != var.len() as u64 {
        return Err(Errno::EINVAL);
    }
    split_names(var, &ls).ok_or(Errno::EINVAL).map(|_| ())
}

/// Checks the names an op carries. Symlink targets may contain '/', so they are checked apart.
fn check_names(op: OpCode, p: &[u8]) -> Result<(), Errno> {
    match op {
        OpCode::Lookup | OpCode::Unlink | OpCode::Rmdir => {
            names::<NameReq>(p, |r| vec![r.name_len])?;
            check_name(&p[size_of::<NameReq>()..])
        }
        OpCode::Create | OpCode::Mknod | OpCode::Mkdir => {
            names::<CreateReq>(p, |r| vec![r.name_len])?;
            check_name(&p[size_of::<CreateReq>()..])
        }
        OpCode::Link => {
            names::<LinkReq>(p, |r| vec![r.name_len])?;
            check_name(&p[size_of::<LinkReq>()..])
        }
        OpCode::Rename => {
            names::<RenameReq>(p, |r| vec![r.old_len, r.new_len])?;
            let r = RenameReq::read_from(p).ok_or(Errno::EINVAL)?;
            let v = &p[size_of::<RenameReq>()..];
            let (a, b) = v.split_at(r.old_len as usize);
            check_name(a)?;
            check_name(b)
        }
        OpCode::Symlink => {
            names::<SymlinkReq>(p, |r| vec![r.name_len, r.target_len])?;
            let r = SymlinkReq::read_from(p).ok_or(Errno::EINVAL)?;
            let v = &p[size_of::<SymlinkReq>()..];
            let (a, t) = v.split_at(r.name_len as usize);
            check_name(a)?;
            if t.is_empty() || t.contains(&0) {
                return Err(Errno::EINVAL);
            }
            if t.len() >= PATH_MAX {
                return Err(Errno::ENAMETOOLONG);
            }
            Ok(())
        }
        OpCode::Getxattr | OpCode::Setxattr | OpCode::Removexattr => {
            names::<XattrReq>(p, |r| vec![r.name_len])?;
            let n = &p[size_of::<XattrReq>()..];
            if n.is_empty() || n.contains(&0) {
                return Err(Errno::EINVAL);
            }
            if n.len() > NAME_MAX {
                return Err(Errno::ERANGE);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Ops that change the filesystem (refused on read-only mounts).
fn mutates(op: OpCode) -> bool {
    matches!(
        op,
        OpCode::Setattr
            | OpCode::Create
            | OpCode::Mknod
            | OpCode::Mkdir
            | OpCode::Unlink
            | OpCode::Rmdir
            | OpCode::Rename
            | OpCode::Link
            | OpCode::Symlink
            | OpCode::Write
            | OpCode::Fallocate
            | OpCode::Setxattr
            | OpCode::Removexattr
            | OpCode::MapDone
    )
}

/// Data ops that a fast-path client must send through the kernel while the kernel caches the
/// inode's pages (see [`crate::kcache`]). Getattr and MapDone (which commits earlier dax writes)
/// stay; a setattr only when it changes the size.
fn steps_aside_for_kernel_cache(op: OpCode, payload: &[u8]) -> bool {
    match op {
        OpCode::Read | OpCode::Write | OpCode::Map | OpCode::Fallocate | OpCode::Fsync => true,
        OpCode::Setattr => SetattrReq::read_from(payload).is_some_and(|r| r.valid & setattr::SIZE != 0),
        _ => false,
    }
}

/// A client attached with tickets only (it does not own the mount) may send the data ops of
/// the preload library, each with a ticket of its uid for the op's inode, issued for writing
/// when the op writes (see [`crate::tickets`]).
fn check_ticket(mount: &Mount, client: &Client, op: OpCode, ticket: u64, payload: &[u8]) -> Result<(), Errno> {
    let write = match op {
        OpCode::Read | OpCode::Getattr | OpCode::Fsync => false,
        OpCode::Write | OpCode::Fallocate | OpCode::MapDone => true,
        OpCode::Setattr if SetattrReq::read_from(payload).is_some_and(|r| r.valid == setattr::SIZE) => true,
        OpCode::Map => zus_api::ops::MapReq::read_from(payload).is_none_or(|r| r.write != 0),
        _ => return Err(Errno::EPERM),
    };
    mount.tickets.check(ticket, client.cred.uid, first_ino(payload), write)
}

/// The inode of a request whose fixed part starts with it (every data op's does).
fn first_ino(payload: &[u8]) -> u64 {
    payload.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Serves one request whose header was copied to `hdr`; the payload sits at `payload_off`.
pub fn serve(
    snap: &Snapshot,
    client: &Client,
    attached: &[Attachment],
    hdr: &OpHeader,
    payload_off: usize,
    window: Window,
    scratch: &mut Scratch,
) -> Served {
    let Some(op) = OpCode::from_u32(hdr.opcode) else { return reject(Errno::ENOSYS) };
    let in_len = hdr.in_len as usize;
    if in_len > PAYLOAD_SIZE || in_len < op.request_size() {
        return reject(Errno::EINVAL);
    }
    if op == OpCode::Noop {
        return Served::default();
    }
    client.region.copy_out(payload_off, &mut scratch.req[..in_len]);
    let payload = &scratch.req[..in_len];
    let Some((mount, ticketed)) = snap.mount_for(attached, hdr.mount_id) else { return reject(Errno::EBADF) };
    if mount.read_only && mutates(op) {
        return Served { result: Errno::EROFS.to_wire(), ..Served::default() };
    }
    if let Err(e) = check_names(op, payload) {
        return reject(e);
    }
    if op == OpCode::KernelCache {
        let Some(r) = KernelCacheReq::read_from(payload) else { return reject(Errno::EINVAL) };
        if !client.kernel_bridge {
            return Served { result: Errno::EPERM.to_wire(), ..Served::default() };
        }
        let result = mount.kernel_cache.set(client.id, r.ino, r.on != 0).map_or_else(Errno::to_wire, |()| 0);
        return Served { result, ..Served::default() };
    }
    if op == OpCode::Ticket {
        let Some(r) = TicketReq::read_from(payload) else { return reject(Errno::EINVAL) };
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
    if ticketed && let Err(e) = check_ticket(mount, client, op, hdr.ticket, payload) {
        return Served { result: e.to_wire(), ..Served::default() };
    }
    if !client.kernel_bridge
        && steps_aside_for_kernel_cache(op, payload)
        && mount.kernel_cache.contains(first_ino(payload))
    {
        return Served { result: Errno::EUSEKERNEL.to_wire(), ..Served::default() };
    }
    if matches!(op, OpCode::Map) && mount.read_only {
        // A read-only mount may still map for reading; the write flag is refused.
        if zus_api::ops::MapReq::read_from(payload).is_some_and(|r| r.write != 0) {
            return Served { result: Errno::EROFS.to_wire(), ..Served::default() };
        }
    }
    let Window { offset: win_off, size: win_size, ready_offset } = window;
    let mut data = DataDesc {
        kind: data_kind::NONE,
        pid: 0,
        window: core::ptr::null_mut(),
        window_len: 0,
        iov: core::ptr::null(),
        niov: 0,
        ready: core::ptr::null_mut(),
    };
    let data_in = |len: usize| -> Result<usize, Errno> { if len > win_size { Err(Errno::EINVAL) } else { Ok(len) } };
    match op {
        OpCode::Read | OpCode::Write => {
            let Some(io) = IoReq::read_from(payload) else { return reject(Errno::EINVAL) };
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
                    let ready = client.region.atomic_u32(ready_offset);
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
                    let n = io.niov as usize;
                    let need = size_of::<IoReq>() + n * size_of::<IoVec>();
                    if n == 0 || n > MAX_IOV || need != in_len {
                        return reject(Errno::EINVAL);
                    }
                    scratch.iov.clear();
                    let mut total = 0u64;
                    for i in 0..n {
                        let Some(v) = IoVec::read_from(&payload[size_of::<IoReq>() + i * size_of::<IoVec>()..]) else {
                            return reject(Errno::EINVAL);
                        };
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
        OpCode::Setxattr => {
            let Some(x) = XattrReq::read_from(payload) else { return reject(Errno::EINVAL) };
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
        OpCode::Readdir | OpCode::Readlink | OpCode::Getxattr | OpCode::Listxattr => {
            data.kind = data_kind::WINDOW;
            data.window = client.region.raw(win_off, win_size);
            data.window_len = win_size as u64;
        }
        OpCode::Getattr if InoReq::read_from(payload).is_none() => return reject(Errno::EINVAL),
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
