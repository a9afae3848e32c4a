//! The interposed libc functions.
//!
//! Each hook looks at the fd table once. Unknown-to-us fds and fds that are not on a zufs mount
//! go straight to the real function; our fds are served by [`crate::io`]. Hooks never unwind
//! (a panic aborts), set errno only on failure, and never re-enter themselves: while a thread is
//! inside the library every hook forwards to the real function.
//!
//! # Safety (all hooks)
//! Each hook has exactly the contract of the libc function of the same name.
#![allow(clippy::missing_safety_doc)] // one contract for all: that of the libc function

use core::ffi::{c_char, c_int, c_uint, c_ulong, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{FILE, iovec, off_t, size_t, ssize_t};

use crate::io::{self, File};
use crate::state::{self, FD_KERNEL, FD_UNKNOWN, Guard};
use crate::sys;

/// Runs `f`, aborting the process if it panics (the workspace profile unwinds; a hook must not).
#[inline]
fn guarded<R>(f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            sys::say("internal panic; aborting");
            std::process::abort()
        }
    }
}

/// Runs `fast` on the file behind `fd` when we serve it (detecting it on first use), with the
/// guard held and the file held for the call ([`io::Held`]); None when we do not serve it.
#[inline]
fn with_file(fd: c_int, fast: impl FnOnce(File) -> Result<i64, i32>) -> Option<Result<i64, i32>> {
    let e = state::fd_entry(fd);
    if e == FD_KERNEL {
        return None;
    }
    let _g = Guard::enter()?;
    // The file is let go (which may commit its mtime) inside the guard and the panic catch.
    guarded(|| io::hold(fd, e).map(|h| fast(h.file())))
}

#[inline]
fn finish(r: Result<i64, i32>, saved: i32) -> i64 {
    match r {
        Ok(v) => {
            sys::set_errno(saved);
            v
        }
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    }
}

/// A value meaning "failed" for a libc return type (when the real function is missing).
trait Fail {
    fn fail() -> Self;
}
impl Fail for c_int {
    fn fail() -> Self {
        -1
    }
}
impl Fail for i64 {
    fn fail() -> Self {
        -1
    }
}
impl Fail for isize {
    fn fail() -> Self {
        -1
    }
}
impl Fail for *mut FILE {
    fn fail() -> Self {
        core::ptr::null_mut()
    }
}

macro_rules! real {
    ($sym:ident : fn($($t:ty),*) -> $r:ty ; $($a:expr),*) => {
        real!(@ $sym, unsafe extern "C" fn($($t),*) -> $r, $r; $($a),*)
    };
    ($sym:ident : fn($($t:ty),* ; ...) -> $r:ty ; $($a:expr),*) => {
        real!(@ $sym, unsafe extern "C" fn($($t),*, ...) -> $r, $r; $($a),*)
    };
    (@ $sym:ident, $fty:ty, $r:ty; $($a:expr),*) => {{
        // SAFETY: the type is the C prototype of the libc function of that name.
        match unsafe { sys::real::<$fty>(sys::Sym::$sym) } {
            // SAFETY: forwarding the caller's arguments, under the caller's contract.
            Some(fp) => unsafe { fp($($a),*) },
            None => {
                sys::set_errno(libc::ENOSYS);
                <$r as Fail>::fail()
            }
        }
    }};
}

/// Serves `fd` with `$fast` (given the file) when it is ours, else (or when `$fast` answers
/// [`io::USE_KERNEL`]) calls `$real`.
macro_rules! serve {
    ($fd:expr, |$f:ident| $fast:expr, $real:expr) => {{
        let saved = sys::errno();
        match with_file($fd, |$f| $fast) {
            None => {}
            // The kernel caches this file's pages: it serves the call, coherent with them.
            Some(Err(e)) if e == io::USE_KERNEL => state::count(&state::STATS.kernel_cached, 1),
            Some(r) => {
                state::count(&state::STATS.served, 1);
                return finish(r, saved) as _;
            }
        }
        $real
    }};
}

fn one(buf: *const c_void, n: size_t) -> iovec {
    iovec { iov_base: buf.cast_mut(), iov_len: n }
}

// ---- read / write family ------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let v = one(buf, n);
    serve!(
        fd,
        // SAFETY: one iovec for the caller's buffer.
        |f| unsafe { io::rw(f, fd, false, &raw const v, 1, None, 0) },
        real!(read: fn(c_int, *mut c_void, size_t) -> ssize_t; fd, buf, n)
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let v = one(buf, n);
    serve!(
        fd,
        // SAFETY: one iovec for the caller's buffer.
        |f| unsafe { io::rw(f, fd, true, &raw const v, 1, None, 0) },
        real!(write: fn(c_int, *const c_void, size_t) -> ssize_t; fd, buf, n)
    )
}

macro_rules! pread_like {
    ($name:ident, $write:expr, $ptr:ty) => {
        #[unsafe(no_mangle)]
        #[allow(clippy::ptr_as_ptr)] // `$ptr` is `*mut c_void` or `*const c_void`
        pub unsafe extern "C" fn $name(fd: c_int, buf: $ptr, n: size_t, off: off_t) -> ssize_t {
            let v = one(buf as *const c_void, n);
            serve!(
                fd,
                // SAFETY: one iovec for the caller's buffer.
                |f| unsafe { io::rw(f, fd, $write, &raw const v, 1, Some(off), 0) },
                real!($name: fn(c_int, $ptr, size_t, off_t) -> ssize_t; fd, buf, n, off)
            )
        }
    };
}
pread_like!(pread, false, *mut c_void);
pread_like!(pread64, false, *mut c_void);
pread_like!(pwrite, true, *const c_void);
pread_like!(pwrite64, true, *const c_void);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    serve!(
        fd,
        // SAFETY: the caller's iovec array (readv contract).
        |f| unsafe { io::rw(f, fd, false, iov, cnt, None, 0) },
        real!(readv: fn(c_int, *const iovec, c_int) -> ssize_t; fd, iov, cnt)
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    serve!(
        fd,
        // SAFETY: the caller's iovec array (writev contract).
        |f| unsafe { io::rw(f, fd, true, iov, cnt, None, 0) },
        real!(writev: fn(c_int, *const iovec, c_int) -> ssize_t; fd, iov, cnt)
    )
}

macro_rules! preadv_like {
    ($name:ident, $write:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
            serve!(
                fd,
                // SAFETY: the caller's iovec array.
                |f| unsafe { io::rw(f, fd, $write, iov, cnt, Some(off), 0) },
                real!($name: fn(c_int, *const iovec, c_int, off_t) -> ssize_t; fd, iov, cnt, off)
            )
        }
    };
}
preadv_like!(preadv, false);
preadv_like!(preadv64, false);
preadv_like!(pwritev, true);
preadv_like!(pwritev64, true);

macro_rules! preadv2_like {
    ($name:ident, $write:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
            let pos = if off == -1 { None } else { Some(off) };
            serve!(
                fd,
                // SAFETY: the caller's iovec array.
                |f| unsafe { io::rw(f, fd, $write, iov, cnt, pos, flags) },
                real!($name: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t; fd, iov, cnt, off, flags)
            )
        }
    };
}
preadv2_like!(preadv2, false);
preadv2_like!(preadv64v2, false);
preadv2_like!(pwritev2, true);
preadv2_like!(pwritev64v2, true);

// ---- position, sync, size, attributes -----------------------------------------------------

macro_rules! lseek_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, off: off_t, whence: c_int) -> off_t {
            // SEEK_SET/SEEK_CUR never leave the kernel (FUSE keeps the offset); SEEK_END needs the
            // size, which we have fresh from zusd.
            if whence == libc::SEEK_END {
                serve!(fd, |f| io::lseek_end(f, fd, off), real!($name: fn(c_int, off_t, c_int) -> off_t; fd, off, whence))
            } else {
                real!($name: fn(c_int, off_t, c_int) -> off_t; fd, off, whence)
            }
        }
    };
}
lseek_like!(lseek);
lseek_like!(lseek64);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    serve!(fd, |f| io::fsync(f, false), real!(fsync: fn(c_int) -> c_int; fd))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    serve!(fd, |f| io::fsync(f, true), real!(fdatasync: fn(c_int) -> c_int; fd))
}

macro_rules! ftruncate_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, len: off_t) -> c_int {
            serve!(fd, |f| io::ftruncate(f, fd, len), real!($name: fn(c_int, off_t) -> c_int; fd, len))
        }
    };
}
ftruncate_like!(ftruncate);
ftruncate_like!(ftruncate64);

macro_rules! fallocate_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int {
            serve!(fd, |f| io::fallocate(f, fd, mode, off, len), real!($name: fn(c_int, c_int, off_t, off_t) -> c_int; fd, mode, off, len))
        }
    };
}
fallocate_like!(fallocate);
fallocate_like!(fallocate64);

macro_rules! fstat_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, st: *mut libc::stat) -> c_int {
            // SAFETY: the caller's stat buffer.
            serve!(fd, |f| unsafe { io::fstat(f, st) }, real!($name: fn(c_int, *mut libc::stat) -> c_int; fd, st))
        }
    };
}
fstat_like!(fstat);
fstat_like!(fstat64);

macro_rules! fxstat_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(ver: c_int, fd: c_int, st: *mut libc::stat) -> c_int {
            // SAFETY: the caller's stat buffer (x86_64: one layout for every version).
            serve!(fd, |f| unsafe { io::fstat(f, st) }, real!($name: fn(c_int, c_int, *mut libc::stat) -> c_int; ver, fd, st))
        }
    };
}
fxstat_like!(__fxstat);
fxstat_like!(__fxstat64);

// ---- fd life: close, dup, fcntl, open -----------------------------------------------------

/// Forgets `fd` (closed or reused); the last reference to a slot commits a pending mtime.
fn forget(fd: c_int) {
    if state::fd_entry(fd) == FD_UNKNOWN {
        return;
    }
    let prev = state::set_entry(fd, FD_UNKNOWN);
    let g = Guard::enter();
    guarded(|| io::release(prev, g.is_some()));
}

/// `new` now names what `old` names (dup).
fn copy_entry(old: c_int, new: c_int) {
    if old == new || usize::try_from(new).map_or(true, |n| n >= state::MAX_FDS) {
        return;
    }
    let e = state::dup_entry(old);
    let prev = state::set_entry(new, e);
    let g = Guard::enter();
    guarded(|| io::release(prev, g.is_some()));
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget(fd);
    real!(close: fn(c_int) -> c_int; fd)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let r = real!(close_range: fn(c_uint, c_uint, c_int) -> c_int; first, last, flags);
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let hi = (last as usize).min(state::MAX_FDS - 1);
        for fd in (first as usize)..=hi {
            forget(fd as c_int);
        }
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fclose(fp: *mut FILE) -> c_int {
    if !fp.is_null() {
        // SAFETY: a FILE the caller is about to close; fileno only reads it.
        let fd = unsafe { libc::fileno(fp) };
        if fd >= 0 {
            forget(fd);
        }
    }
    real!(fclose: fn(*mut FILE) -> c_int; fp)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    let r = real!(dup: fn(c_int) -> c_int; old);
    if r >= 0 {
        copy_entry(old, r);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let r = real!(dup2: fn(c_int, c_int) -> c_int; old, new);
    if r >= 0 {
        copy_entry(old, r);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let r = real!(dup3: fn(c_int, c_int, c_int) -> c_int; old, new, flags);
    if r >= 0 {
        copy_entry(old, r);
    }
    r
}

fn after_fcntl(fd: c_int, cmd: c_int, r: c_int) {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC if r >= 0 => copy_entry(fd, r),
        libc::F_SETFL if r >= 0 => {
            let e = state::fd_entry(fd);
            if state::slot_of(e).is_some()
                && let Some(_g) = Guard::enter()
            {
                guarded(|| io::hold(fd, e).map(|h| io::refresh_flags(h.file(), fd)));
            }
        }
        _ => {}
    }
}

// fcntl is variadic in C; its one optional argument is an int or a pointer, which the x86_64
// (and aarch64) calling conventions pass in the same register as a fixed third argument.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real!(fcntl: fn(c_int, c_int; ...) -> c_int; fd, cmd, arg);
    after_fcntl(fd, cmd, r);
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real!(fcntl64: fn(c_int, c_int; ...) -> c_int; fd, cmd, arg);
    after_fcntl(fd, cmd, r);
    r
}

/// A new fd from an open: whatever the table remembered for its number is stale (its old file
/// was closed behind our back, e.g. by stdio or a raw system call).
fn opened(fd: c_int, flags: c_int) {
    if flags & libc::O_TRUNC != 0 {
        state::LAYOUT_EPOCH.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    }
    if fd >= 0 {
        forget(fd);
    }
}

fn truncating(flags: c_int) {
    if flags & libc::O_TRUNC != 0 {
        state::LAYOUT_EPOCH.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    }
}

// open/openat are variadic; the mode is passed as a fixed argument (x86_64 SysV: same register).
macro_rules! open_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            truncating(flags);
            let r = real!($name: fn(*const c_char, c_int; ...) -> c_int; path, flags, mode);
            opened(r, flags);
            r
        }
    };
}
open_like!(open);
open_like!(open64);

macro_rules! openat_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            truncating(flags);
            let r = real!($name: fn(c_int, *const c_char, c_int; ...) -> c_int; dirfd, path, flags, mode);
            opened(r, flags);
            r
        }
    };
}
openat_like!(openat);
openat_like!(openat64);

macro_rules! open2_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            truncating(flags);
            let r = real!($name: fn(*const c_char, c_int) -> c_int; path, flags);
            opened(r, flags);
            r
        }
    };
}
open2_like!(__open_2);
open2_like!(__open64_2);

macro_rules! openat2_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            truncating(flags);
            let r = real!($name: fn(c_int, *const c_char, c_int) -> c_int; dirfd, path, flags);
            opened(r, flags);
            r
        }
    };
}
openat2_like!(__openat_2);
openat2_like!(__openat64_2);

macro_rules! creat_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: libc::mode_t) -> c_int {
            truncating(libc::O_TRUNC);
            let r = real!($name: fn(*const c_char, libc::mode_t) -> c_int; path, mode);
            opened(r, libc::O_TRUNC);
            r
        }
    };
}
creat_like!(creat);
creat_like!(creat64);

macro_rules! fopen_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut FILE {
            // SAFETY: the caller's NUL-terminated mode string.
            let trunc = !mode.is_null() && unsafe { *mode } == b'w' as c_char;
            let flags = if trunc { libc::O_TRUNC } else { 0 };
            truncating(flags);
            let r = real!($name: fn(*const c_char, *const c_char) -> *mut FILE; path, mode);
            if !r.is_null() {
                // SAFETY: a FILE just opened.
                opened(unsafe { libc::fileno(r) }, flags);
            }
            r
        }
    };
}
fopen_like!(fopen);
fopen_like!(fopen64);

macro_rules! truncate_like {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, len: off_t) -> c_int {
            truncating(libc::O_TRUNC);
            let r = real!($name: fn(*const c_char, off_t) -> c_int; path, len);
            truncating(libc::O_TRUNC);
            r
        }
    };
}
truncate_like!(truncate);
truncate_like!(truncate64);

// ---- our own entry point ---------------------------------------------------------------------

/// `ssize_t zufs_preload_stats(char *buf, size_t len)`: copies the stats line (counters are kept
/// only with `ZUFS_PRELOAD_STATS=1`) into `buf`, NUL-terminated and truncated to fit; returns
/// its full length. Lets a program (and the tests) see mid-run whether the fast path serves it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zufs_preload_stats(buf: *mut c_char, len: size_t) -> ssize_t {
    let Some(_g) = Guard::enter() else { return -1 };
    let line = guarded(state::stats_line);
    if !buf.is_null() && len > 0 {
        let n = line.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `buf`; we write n + 1 <= len.
        unsafe {
            core::ptr::copy_nonoverlapping(line.as_ptr().cast::<c_char>(), buf, n);
            *buf.add(n) = 0;
        }
    }
    line.len() as ssize_t
}
