//! Raw system calls, errno, and the real libc functions behind our hooks.
//!
//! Everything the library does for itself goes through `libc::syscall` (or functions we do not
//! hook), so it never re-enters its own hooks. The real functions are found with
//! `dlsym(RTLD_NEXT, ..)` once (eagerly in the constructor, lazily otherwise) and cached in
//! `AtomicPtr`s.

use core::ffi::{c_int, c_long, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

/// errno of the calling thread.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot; it is always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets errno of the calling thread.
pub fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

fn check(r: c_long) -> Result<i64, i32> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

/// fstat(2) without the libc wrapper.
pub fn fstat(fd: c_int) -> Result<libc::stat, i32> {
    let mut st = core::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: the kernel writes at most one `struct stat` into our buffer.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) };
    check(r)?;
    // SAFETY: zero-initialized, then filled by the kernel; every bit pattern is a valid stat.
    Ok(unsafe { st.assume_init() })
}

/// The size the kernel's inode of `fd` holds after statx(2) with `sync` (`AT_STATX_*`) flags.
fn statx_size(fd: c_int, sync: c_int) -> Option<u64> {
    let mut stx = core::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is NUL-terminated; the kernel writes at most one `struct statx` into
    // our buffer.
    let r = unsafe {
        libc::syscall(libc::SYS_statx, fd, c"".as_ptr(), libc::AT_EMPTY_PATH | sync, libc::STATX_SIZE, stx.as_mut_ptr())
    };
    check(r).ok()?;
    // SAFETY: zero-initialized, then filled by the kernel; every bit pattern is a valid statx.
    Some(unsafe { stx.assume_init() }.stx_size)
}

/// Makes the kernel fetch the attributes of the file `fd` names from the filesystem now
/// (`AT_STATX_FORCE_SYNC`: FUSE sends GETATTR whatever its attribute timeout), so that its
/// cached size is the true one for every kernel call that trusts it (copy_file_range, splice,
/// a mapping's faults, O_APPEND). A reply the kernel dropped (a concurrent change through the
/// kernel moved its attribute version) is asked for again, a few times.
pub fn refresh_kernel_attrs(fd: c_int) {
    for _ in 0..4 {
        let Some(fresh) = statx_size(fd, libc::AT_STATX_FORCE_SYNC) else { return };
        if statx_size(fd, libc::AT_STATX_DONT_SYNC) == Some(fresh) {
            return;
        }
    }
}

/// lseek(2) without the libc wrapper.
pub fn lseek(fd: c_int, off: i64, whence: c_int) -> Result<i64, i32> {
    // SAFETY: lseek takes plain integers.
    check(unsafe { libc::syscall(libc::SYS_lseek, fd, off, whence) })
}

/// fcntl(F_GETFL) without the libc wrapper.
pub fn getfl(fd: c_int) -> Result<i32, i32> {
    // SAFETY: F_GETFL takes no pointer.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) }).map(|v| v as i32)
}

/// The bridge's ticket for the file open as `fd` (`ZUFS_IOC_TICKET`), or None (not a zufs file,
/// or the bridge would not issue one).
pub fn ticket(fd: c_int) -> Option<zus_api::ops::IoctlTicket> {
    let mut t = zus_api::ops::IoctlTicket::default();
    // SAFETY: the ioctl writes at most size_of::<IoctlTicket>() bytes (encoded in the request
    // number) into `t`, which we own.
    let r =
        unsafe { libc::syscall(libc::SYS_ioctl, fd, libc::c_ulong::from(zus_api::ops::ZUFS_IOC_TICKET), &raw mut t) };
    (r == 0 && t.ticket != 0).then_some(t)
}

/// `ZUFS_IOC_GRAB_PMEM` on the zufs kernel module's `/dev/zufs` (CAP_SYS_ADMIN): an fd whose
/// shared mapping is the pmem of the DAX block device `path` itself, and its length. Errno on
/// failure.
pub fn grab_pmem(path: &core::ffi::CStr) -> Result<(c_int, u64), i32> {
    use zus_api::kabi::{KGrabPmem, ZUFS_IOC_GRAB_PMEM};
    let dev = open(c"/dev/zufs", libc::O_RDWR | libc::O_CLOEXEC)?;
    let mut g = KGrabPmem { path: path.as_ptr() as u64, ..KGrabPmem::default() };
    // SAFETY: the ioctl reads the NUL-terminated path `g.path` points at (alive for the call)
    // and writes at most size_of::<KGrabPmem>() bytes (encoded in the request number) into `g`.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, dev, libc::c_ulong::from(ZUFS_IOC_GRAB_PMEM), &raw mut g) };
    let r = check(r);
    close(dev);
    r?;
    if g.fd < 0 {
        return Err(libc::EIO);
    }
    Ok((g.fd, g.size))
}

/// close(2) without the libc wrapper.
pub fn close(fd: c_int) {
    // SAFETY: closing an fd we own.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// openat(AT_FDCWD, path, flags) without the libc wrapper.
pub fn open(path: &core::ffi::CStr, flags: c_int) -> Result<c_int, i32> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, 0) }).map(|v| v as c_int)
}

/// Writes a line to stderr, ignoring errors (fd 2 may be closed).
pub fn say(msg: &str) {
    let e = errno();
    let mut buf = [0u8; 512];
    let pre = b"zufs-preload: ";
    let body = msg.as_bytes();
    let n = (pre.len() + body.len()).min(buf.len() - 1);
    buf[..pre.len()].copy_from_slice(pre);
    buf[pre.len()..n].copy_from_slice(&body[..n - pre.len()]);
    buf[n] = b'\n';
    // SAFETY: writing our own buffer to fd 2.
    unsafe { libc::syscall(libc::SYS_write, 2, buf.as_ptr(), n + 1) };
    set_errno(e);
}

/// The monotonic clock in nanoseconds (vDSO, no system call). Not the coarse clock: its tick
/// (4 ms at HZ=250) is longer than the 1 ms mtime commit interval.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// A real libc function, looked up with `dlsym(RTLD_NEXT, name)` and cached.
#[derive(Debug)]
pub struct Real {
    ptr: AtomicPtr<c_void>,
    name: &'static [u8],
}

impl Real {
    /// `name` must end with a NUL byte.
    pub const fn new(name: &'static [u8]) -> Self {
        Self { ptr: AtomicPtr::new(core::ptr::null_mut()), name }
    }

    /// The function's address, or null when libc has no such symbol.
    pub fn get(&self) -> *mut c_void {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            return p;
        }
        // SAFETY: `name` is NUL-terminated (constructor contract); RTLD_NEXT asks for the next
        // definition after this library, i.e. libc's.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) };
        self.ptr.store(p, Ordering::Relaxed);
        p
    }
}

macro_rules! reals {
    ($($name:ident),* $(,)?) => {
        /// Index of each real function in [`REALS`].
        #[allow(non_camel_case_types, missing_docs, dead_code)]
        #[derive(Debug, Clone, Copy)]
        #[repr(usize)]
        pub enum Sym { $($name),* }

        /// The real functions, in [`Sym`] order.
        pub static REALS: [Real; [$(stringify!($name)),*].len()] =
            [$(Real::new(concat!(stringify!($name), "\0").as_bytes())),*];
    };
}

reals!(
    read,
    write,
    pread,
    pread64,
    pwrite,
    pwrite64,
    readv,
    writev,
    preadv,
    preadv64,
    pwritev,
    pwritev64,
    preadv2,
    preadv64v2,
    pwritev2,
    pwritev64v2,
    lseek,
    lseek64,
    fsync,
    fdatasync,
    ftruncate,
    ftruncate64,
    fallocate,
    fallocate64,
    fstat,
    fstat64,
    __fxstat,
    __fxstat64,
    close,
    close_range,
    fclose,
    dup,
    dup2,
    dup3,
    fcntl,
    fcntl64,
    open,
    open64,
    openat,
    openat64,
    creat,
    creat64,
    __open_2,
    __open64_2,
    __openat_2,
    __openat64_2,
    fopen,
    fopen64,
    truncate,
    truncate64,
);

/// Resolves every real function (the constructor's only work).
pub fn resolve_all() {
    for r in &REALS {
        r.get();
    }
}

/// The real function `s` as a function pointer of type `F`.
///
/// # Safety
/// `F` must be the `unsafe extern "C" fn` type of the libc symbol `s`.
#[inline]
pub unsafe fn real<F: Copy>(s: Sym) -> Option<F> {
    const { assert!(core::mem::size_of::<F>() == core::mem::size_of::<*mut c_void>()) };
    let p = REALS[s as usize].get();
    if p.is_null() {
        return None;
    }
    // SAFETY: F is a function pointer type of the symbol (caller's contract); sizes are equal.
    Some(unsafe { core::mem::transmute_copy::<*mut c_void, F>(&p) })
}
