//! The data path: the file a call holds ([`Held`]), the calls themselves (read/write and
//! friends, fstat, lseek, fsync, ftruncate, fallocate), and the ops they send. Channel mode's
//! data movement is in [`channel`] (which ZT lane, [`lane`]), dax mode's in [`dax`]; both walk
//! the caller's buffers with [`cursor::Cursor`].
//!
//! Every function returns `Ok(value)` or `Err(errno)`; the hooks turn that into the C
//! convention. Nothing here allocates: requests, iovec arrays and extent lists live on the stack.

mod channel;
mod cursor;
mod dax;
mod lane;

use core::sync::atomic::Ordering;

use zus_api::ops::{
    Attr, FallocateReq, FsyncReq, InoReq, IoVec, MAX_IOV, MapDoneReq, OpCode, Pod, SetattrReq, io_flags, setattr,
};
use zus_client::DataIn;

use self::channel::chan_io;
use self::dax::{DAX_USE_CHANNEL, DaxReader, dax_on, dax_read, dax_write};
use self::lane::pick_lane;
use crate::mount::{self, Mount};
use crate::state::{self, FD_UNKNOWN, LAYOUT_EPOCH, Ref, Slot};
use crate::sys;

/// mtime is committed at most this often by dax writes (like the kernel's coarse clock).
pub const COMMIT_NS: u64 = 1_000_000;

/// An fd we serve.
#[derive(Debug, Clone, Copy)]
pub struct File {
    /// Its slot.
    pub s: &'static Slot,
    /// Its mount.
    pub m: &'static Mount,
}

/// A served fd's file, held for the length of a call ([`Ref::Call`]): its slot stays this
/// file's, even when another thread closes the fd meanwhile and an open reuses the number.
/// Dropping it may commit the pending mtime (when the fd was closed during the call).
#[derive(Debug)]
pub struct Held(File);

impl Held {
    /// The file.
    #[inline]
    pub fn file(&self) -> File {
        self.0
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        release_slot(self.0.s, Ref::Call, true);
    }
}

/// Holds the file `fd` names for a call; `e` is its fd table entry as just loaded (an unknown
/// fd is detected first). None: we do not serve it.
#[inline]
pub fn hold(fd: i32, mut e: u32) -> Option<Held> {
    loop {
        if e == FD_UNKNOWN {
            e = mount::detect(fd);
        }
        let s = state::slot_of(e)?;
        if s.try_retain(Ref::Call) {
            // The slot is ours now; it is still this fd's file unless the fd was closed (and
            // the slot set up for another file) between the load and the retain.
            if state::fd_entry(fd) == e {
                let Some(m) = mount::mount(s.mount.load(Ordering::Relaxed)) else {
                    release_slot(s, Ref::Call, true);
                    return None;
                };
                return Some(Held(File { s, m }));
            }
            release_slot(s, Ref::Call, true);
        }
        e = state::fd_entry(fd);
    }
}

thread_local! {
    /// Set during a call by a write that reached the end of the file (it may have moved the
    /// size): the call then has the kernel fetch the size ([`sync_kernel_size`]).
    static SIZE_MOVED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// A write of this call reached the end of the file.
fn note_size_moved() {
    SIZE_MOVED.set(true);
}

/// The fast path moved the size of `f` (open as `fd`): the kernel's inode must hold the new
/// one before the call returns. The kernel trusts its cached size, without asking the bridge,
/// for copy_file_range (it copies nothing past it), sendfile and splice (they stop at it), a
/// mapping's faults (SIGBUS past it) and O_APPEND (its position); so we make it fetch the size
/// now, one GETATTR through the mount (see `sys::refresh_kernel_attrs`).
fn sync_kernel_size(f: File, fd: i32) {
    // A closed fd (another thread, during the call) may name another file now.
    if names(fd, f) {
        state::count(&state::STATS.kernel_sync, 1);
        sys::refresh_kernel_attrs(fd);
    }
}

/// Whether `fd` still names `f` (not closed, or closed and reused, since the call began).
fn names(fd: i32, f: File) -> bool {
    state::slot_of(state::fd_entry(fd)).is_some_and(|s| core::ptr::eq(s, f.s))
}

/// Drops one reference on the slot an fd table entry names (a closed or reused fd); the last
/// one commits a pending mtime (when `commit`) before the slot can be reused.
pub fn release(entry: u32, commit: bool) {
    if let Some(s) = state::slot_of(entry) {
        release_slot(s, Ref::Fd, commit);
    }
}

fn release_slot(s: &'static Slot, r: Ref, commit: bool) {
    let Some(last) = s.release(r) else { return };
    if commit && let Some(m) = mount::mount(s.mount.load(Ordering::Relaxed)) {
        let _ = commit_mtime(File { s: last.slot(), m }, false);
    }
}

fn op(f: File, code: OpCode, req: &[&[u8]], reply: &mut [u8]) -> Result<u64, i32> {
    op_sized(f, code, req, reply, 0)
}

/// [`op`] for an op moving `bytes` of data (for the lane choice).
fn op_sized(f: File, code: OpCode, req: &[&[u8]], reply: &mut [u8], bytes: u64) -> Result<u64, i32> {
    let r = f.m.relay()?;
    op_on_lane(f, r, pick_lane(f, r, bytes), code, req, reply)
}

/// [`op`] on a given lane.
fn op_on_lane(
    f: File,
    r: &zus_client::Relay,
    lane: usize,
    code: OpCode,
    req: &[&[u8]],
    reply: &mut [u8],
) -> Result<u64, i32> {
    let st = &state::STATS;
    state::count(
        match code {
            OpCode::Read | OpCode::Write => &st.chan_io,
            OpCode::Map => &st.map,
            OpCode::MapDone => &st.map_done,
            _ => &st.other,
        },
        1,
    );
    let id = f.m.mount_id.load(Ordering::Relaxed) as u32;
    let ticket = f.s.ticket.load(Ordering::Relaxed);
    r.op_with_ticket(lane, id, code, req, DataIn::None, reply, None, None, ticket)
        .map(|o| o.value)
        .map_err(|e| op_errno(f, r, &e))
}

/// Slot `kernel_gen` value: the kernel serves this file for good.
const KERNEL_FOR_GOOD: u64 = u64::MAX;

/// The errno of a failed op; EUSEKERNEL is remembered in the slot (see [`kernel_route`]). A
/// refused ticket (a zusd restarted since the bridge issued it) sends the file to the kernel
/// for good: the kernel mount always serves it correctly.
fn op_errno(f: File, r: &zus_client::Relay, e: &zus_client::RelayError) -> i32 {
    let e = e.errno().0;
    if e == USE_KERNEL {
        f.s.kernel_gen.store(r.layout_gen().wrapping_add(1), Ordering::Relaxed);
    } else if e == libc::EACCES && f.s.ticket.load(Ordering::Relaxed) != 0 {
        f.s.kernel_gen.store(KERNEL_FOR_GOOD, Ordering::Relaxed);
        return USE_KERNEL;
    }
    e
}

/// zusd's answer for a data op on a file whose pages the kernel caches (a shared mmap or a
/// page-cache open through the mount): the hook then makes the real call, through the kernel.
pub const USE_KERNEL: i32 = zus_api::Errno::EUSEKERNEL.0;

/// `Err(USE_KERNEL)` while zusd's last word on this file was EUSEKERNEL and its layout
/// generation has not moved since (the bridge's unmark moves it): no op is sent meanwhile.
#[inline]
fn kernel_route(f: File) -> Result<(), i32> {
    let k = f.s.kernel_gen.load(Ordering::Relaxed);
    if k != 0 && (k == KERNEL_FOR_GOOD || k == f.m.relay()?.layout_gen().wrapping_add(1)) {
        return Err(USE_KERNEL);
    }
    Ok(())
}

fn ino(f: File) -> u64 {
    f.s.ino.load(Ordering::Relaxed)
}

fn oflags(f: File) -> i32 {
    f.s.flags.load(Ordering::Relaxed) as i32
}

/// io_flags for a write/read on this file plus `RWF_*` flags of the `*v2` calls.
fn io_flags_of(f: File, rwf: i32) -> u32 {
    let fl = oflags(f);
    let mut x = 0;
    if fl & libc::O_DSYNC != 0 || rwf & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
        x |= io_flags::SYNC;
    }
    if fl & libc::O_DIRECT != 0 {
        x |= io_flags::DIRECT;
    }
    if fl & libc::O_APPEND != 0 || rwf & libc::RWF_APPEND != 0 {
        x |= io_flags::APPEND;
    }
    x
}

/// Commits a pending mtime (MAP_DONE). A failed commit leaves it pending, for the next commit
/// point (a later write after [`COMMIT_NS`], fstat, fsync, the last close) to try again.
fn commit_mtime(f: File, sync: bool) -> Result<(), i32> {
    // Cleared before the op: a write that lands meanwhile sets it again and is committed later.
    if !f.s.dirty.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    f.s.last_commit.store(sys::now_ns(), Ordering::Relaxed);
    map_done(f, 0, sync).map(drop).inspect_err(|_| f.s.dirty.store(true, Ordering::Release))
}

fn map_done(f: File, end: u64, sync: bool) -> Result<u64, i32> {
    if crate::testhook::fail_map_done() {
        return Err(libc::EIO);
    }
    let req = MapDoneReq { ino: ino(f), end, sync: u32::from(sync), reserved: 0 };
    op(f, OpCode::MapDone, &[req.as_bytes()], &mut [])
}

/// One read or write of up to `MAX_IOV` buffers at `off` (`None`: append), either mode.
/// Returns (bytes, offset the data landed at).
fn io_chunk(f: File, write: bool, iov: &[IoVec], off: Option<u64>, flags: u32) -> Result<(u64, u64), i32> {
    let total = iov.iter().try_fold(0u64, |a, v| a.checked_add(v.len)).ok_or(libc::EINVAL)?;
    if total > isize::MAX as u64 {
        return Err(libc::EINVAL);
    }
    match off {
        Some(off)
            if dax_on(f)
                && let Some(reader) = DaxReader::new(f)? =>
        {
            let r = if write {
                dax_write(f, &reader, iov, total, off, flags)
            } else {
                dax_read(f, &reader, iov, total, off)
            };
            match r {
                Err(e) if (e == libc::ENOSYS || e == libc::EOPNOTSUPP) && !f.m.dax_ok.load(Ordering::Relaxed) => {}
                Err(DAX_USE_CHANNEL) => {}
                r => return r.map(|n| (n, off)),
            }
            chan_io(f, write, iov, total, off, flags).map(|(n, _)| (n, off))
        }
        Some(off) => chan_io(f, write, iov, total, off, flags & !io_flags::APPEND).map(|(n, _)| (n, off)),
        None => {
            let (n, rep) = chan_io(f, write, iov, total, 0, flags | io_flags::APPEND)?;
            f.s.size.fetch_max(rep.size, Ordering::Relaxed);
            Ok((n, rep.offset))
        }
    }
}

/// read/write/pread/pwrite/readv/... on a served fd. `off = None` uses (and advances) the
/// kernel's file offset of `fd`, which stays authoritative; `rwf` are `RWF_*` flags.
///
/// # Safety
/// `iov` must point to `cnt` iovecs describing buffers valid as read(2)/write(2) require.
pub unsafe fn rw(
    f: File,
    fd: i32,
    write: bool,
    iov: *const libc::iovec,
    cnt: i32,
    off: Option<i64>,
    rwf: i32,
) -> Result<i64, i32> {
    let acc = oflags(f) & libc::O_ACCMODE;
    if (write && acc == libc::O_RDONLY) || (!write && acc == libc::O_WRONLY) {
        return Err(libc::EBADF);
    }
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Err(libc::EINVAL);
    }
    if cnt > 0 && iov.is_null() {
        return Err(libc::EFAULT);
    }
    if rwf & !(libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_NOWAIT | libc::RWF_APPEND) != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    kernel_route(f)?;
    let flags = io_flags_of(f, rwf);
    if let Some(o) = off
        && o < 0
    {
        return Err(libc::EINVAL);
    }
    let append = write && flags & io_flags::APPEND != 0;
    // Positional writes on O_APPEND files append on Linux too (pwrite(2) BUGS).
    let mut pos = match off {
        _ if append => None,
        Some(o) => Some(o as u64),
        None => Some(sys::lseek(fd, 0, libc::SEEK_CUR)? as u64),
    };
    let mut total = 0u64;
    let mut last_end = None;
    let mut i = 0usize;
    SIZE_MOVED.set(false);
    let cnt = cnt as usize;
    let mut err = None;
    while i < cnt {
        if i > 0 {
            crate::testhook::pause_rw();
        }
        let mut buf = [IoVec::default(); MAX_IOV];
        let mut k = 0;
        let mut want = 0u64;
        while i < cnt && k < MAX_IOV {
            // SAFETY: i < cnt, within the caller's array.
            let v = unsafe { *iov.add(i) };
            i += 1;
            if v.iov_len == 0 {
                continue;
            }
            buf[k] = IoVec { addr: v.iov_base as u64, len: v.iov_len as u64 };
            want += v.iov_len as u64;
            k += 1;
        }
        if k == 0 {
            continue;
        }
        match io_chunk(f, write, &buf[..k], pos, flags) {
            Ok((n, at)) => {
                total += n;
                last_end = Some(at + n);
                if let Some(p) = pos.as_mut() {
                    *p += n;
                }
                if n < want {
                    break;
                }
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    if write && SIZE_MOVED.take() {
        sync_kernel_size(f, fd);
    }
    // The kernel's offset of the file: unless another thread closed the fd meanwhile (the
    // offset went with the file; the number may name another file now).
    if off.is_none()
        && let Some(p) = last_end
        && names(fd, f)
    {
        sys::lseek(fd, p as i64, libc::SEEK_SET)?;
    }
    match err {
        Some(e) if total == 0 => Err(e),
        _ => Ok(total as i64),
    }
}

/// Current attributes (after committing a pending mtime).
pub fn getattr(f: File) -> Result<Attr, i32> {
    commit_mtime(f, false)?;
    let mut rep = [0u8; 80];
    op(f, OpCode::Getattr, &[InoReq { ino: ino(f) }.as_bytes()], &mut rep)?;
    Attr::read_from(&rep).ok_or(libc::EIO)
}

/// fstat(2).
///
/// # Safety
/// `st` must be valid for writing a `struct stat`.
pub unsafe fn fstat(f: File, st: *mut libc::stat) -> Result<i64, i32> {
    if st.is_null() {
        return Err(libc::EFAULT);
    }
    let a = getattr(f)?;
    // SAFETY: zeroed stat is valid; the caller's pointer is writable (contract).
    unsafe {
        let mut s: libc::stat = core::mem::zeroed();
        s.st_dev = f.s.dev.load(Ordering::Relaxed);
        s.st_ino = a.ino;
        s.st_nlink = u64::from(a.nlink);
        s.st_mode = a.mode;
        s.st_uid = a.uid;
        s.st_gid = a.gid;
        s.st_rdev = u64::from(a.rdev);
        s.st_size = a.size as i64;
        s.st_blksize = if a.blksize == 0 { 4096 } else { i64::from(a.blksize) };
        s.st_blocks = a.blocks as i64;
        s.st_atime = a.atime_ns.div_euclid(1_000_000_000);
        s.st_atime_nsec = a.atime_ns.rem_euclid(1_000_000_000);
        s.st_mtime = a.mtime_ns.div_euclid(1_000_000_000);
        s.st_mtime_nsec = a.mtime_ns.rem_euclid(1_000_000_000);
        s.st_ctime = a.ctime_ns.div_euclid(1_000_000_000);
        s.st_ctime_nsec = a.ctime_ns.rem_euclid(1_000_000_000);
        st.write(s);
    }
    Ok(0)
}

/// lseek(2): SEEK_END from the fresh size; the rest is the kernel's.
pub fn lseek_end(f: File, fd: i32, off: i64) -> Result<i64, i32> {
    let size = getattr(f)?.size as i64;
    let p = size.checked_add(off).ok_or(libc::EOVERFLOW)?;
    if p < 0 {
        return Err(libc::EINVAL);
    }
    sys::lseek(fd, p, libc::SEEK_SET)
}

/// fsync/fdatasync.
pub fn fsync(f: File, datasync: bool) -> Result<i64, i32> {
    kernel_route(f)?;
    zus_pmem::flush::fence();
    commit_mtime(f, true)?;
    let req = FsyncReq { ino: ino(f), fh: 0, datasync: u32::from(datasync), reserved: 0 };
    op(f, OpCode::Fsync, &[req.as_bytes()], &mut []).map(|_| 0)
}

/// ftruncate(2) of `f`, open as `fd`.
pub fn ftruncate(f: File, fd: i32, len: i64) -> Result<i64, i32> {
    if len < 0 {
        return Err(libc::EINVAL);
    }
    if oflags(f) & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EINVAL);
    }
    kernel_route(f)?;
    let req = SetattrReq { ino: ino(f), valid: setattr::SIZE, size: len as u64, ..SetattrReq::default() };
    let mut rep = [0u8; 80];
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    let r = op(f, OpCode::Setattr, &[req.as_bytes()], &mut rep);
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    r?;
    sync_kernel_size(f, fd);
    Ok(0)
}

/// fallocate(2) of `f`, open as `fd`.
pub fn fallocate(f: File, fd: i32, mode: i32, off: i64, len: i64) -> Result<i64, i32> {
    if off < 0 || len <= 0 {
        return Err(libc::EINVAL);
    }
    if oflags(f) & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EBADF);
    }
    kernel_route(f)?;
    let req = FallocateReq { ino: ino(f), offset: off as u64, len: len as u64, mode: mode as u32, reserved: 0 };
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    let r = op(f, OpCode::Fallocate, &[req.as_bytes()], &mut []);
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    r?;
    // Without KEEP_SIZE the size may have moved (allocation past the end, collapse, insert).
    if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
        sync_kernel_size(f, fd);
    }
    Ok(0)
}

/// Re-reads the open flags after F_SETFL.
pub fn refresh_flags(f: File, fd: i32) {
    if let Ok(fl) = sys::getfl(fd) {
        f.s.flags.store(fl as u32, Ordering::Relaxed);
    }
}
