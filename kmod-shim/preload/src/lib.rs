//! `libzufs_preload.so`: unmodified programs bypass the kernel for data on a zufs mount.
//!
//! Files are opened through the kernel (FUSE) mount as usual. On the first data access of an
//! fd the library fstat()s it, recognizes a zufs mount (its mount record, or fs type
//! `fuse.zufs`), attaches to the mount through zusd's control socket, and from then on serves
//! read, write, pread, pwrite, readv, writev, preadv, pwritev (64-bit and `2` variants), lseek
//! (SEEK_END), fsync, fdatasync, ftruncate, fallocate and fstat itself:
//!
//! - **channel mode** (`ZUFS_MODE=channel`): each call is one op on a ZT lane (the next CPU's ZT
//!   for short back-to-back ops, which polls for the next one; for long ones whichever lane the
//!   thread measured faster); a short single buffer bounces through the slot window, anything
//!   else up to a window streams through it while the ZT works (two copies that overlap), and
//!   longer calls go one copy, zusd moving the data straight between the caller's buffers and
//!   pmem with process_vm_readv/writev; `ZUFS_DATA=remote|window|stream` forces one path.
//! - **dax mode** (`ZUFS_MODE=dax`, the default): the device is mapped into the process; extents
//!   come from the MAP op and are cached per file; data is copied with non-temporal stores and a
//!   fence; size growth goes through zusd; mtime is committed with MAP_DONE at most every
//!   millisecond.
//!
//! See `kmod-shim/preload/README.md` for coherence, process life (dup, fork, exec) and the known windows.

// This crate sits on the C ABI: every call converts between C's int/ssize_t/off_t/size_t and
// the wire's u64/u32. Lengths and offsets are range-checked where it matters (negative offsets,
// iovec counts, totals against isize::MAX, device bounds); the remaining casts are the ABI's.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

mod hooks;
mod io;
mod mount;
mod state;
mod sys;
mod testhook;

/// The constructor: only symbol lookup (no connection, no threads).
extern "C" fn init() {
    sys::resolve_all();
    testhook::init();
    // SAFETY: getenv with a NUL-terminated name; it does not allocate.
    let v = unsafe { libc::getenv(c"ZUFS_PRELOAD_STATS".as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    if !v.is_null() && unsafe { *v } == b'1' as core::ffi::c_char {
        state::STATS_ON.store(true, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The destructor: prints the stats line when asked to (fd 2 may already be closed).
extern "C" fn fini() {
    if state::STATS_ON.load(core::sync::atomic::Ordering::Relaxed)
        && let Some(_g) = state::Guard::enter()
    {
        sys::say(&state::stats_line());
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = fini;

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;
