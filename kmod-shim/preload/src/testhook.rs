//! Test hooks (`ZUFS_PRELOAD_TEST`), read once by the constructor: they widen race windows and
//! inject failures so that the end-to-end tests (tests/tests/preload_process.rs) can drive
//! interleavings a real program hits only by chance. Comma-separated items:
//!
//! - `pause_rw=MS`: a read/write call of more than `MAX_IOV` buffers sleeps MS ms between its
//!   chunks (another thread then closes the fd and opens another file);
//! - `pause_release=MS`: dropping an fd's reference to a file slot (a close) sleeps MS ms before
//!   the drop (two threads close two dup'ed fds at once);
//! - `fail_map_done=N`: the next N MAP_DONE ops fail with EIO without being sent.
//!
//! Unset (always, outside the tests), each hook costs one relaxed load, on paths that are not
//! per-op hot (a chunk boundary, a release, a MAP_DONE).

use core::sync::atomic::{AtomicU32, Ordering};

static PAUSE_RW_MS: AtomicU32 = AtomicU32::new(0);
static PAUSE_RELEASE_MS: AtomicU32 = AtomicU32::new(0);
static FAIL_MAP_DONE: AtomicU32 = AtomicU32::new(0);

/// Parses `ZUFS_PRELOAD_TEST` (constructor; no allocation).
pub fn init() {
    // SAFETY: getenv with a NUL-terminated name; it does not allocate.
    let v = unsafe { libc::getenv(c"ZUFS_PRELOAD_TEST".as_ptr()) };
    if v.is_null() {
        return;
    }
    // SAFETY: a non-null getenv result is a NUL-terminated string that lives as long as the
    // environment is not changed (we are in the constructor).
    let s = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
    for item in s.split(|&b| b == b',') {
        let Some(eq) = item.iter().position(|&b| b == b'=') else { continue };
        let (name, val) = (&item[..eq], &item[eq + 1..]);
        let n = val.iter().try_fold(0u32, |a, &b| {
            b.is_ascii_digit().then(|| a.saturating_mul(10).saturating_add(u32::from(b - b'0')))
        });
        let Some(n) = n else { continue };
        let target = match name {
            b"pause_rw" => &PAUSE_RW_MS,
            b"pause_release" => &PAUSE_RELEASE_MS,
            b"fail_map_done" => &FAIL_MAP_DONE,
            _ => continue,
        };
        target.store(n, Ordering::Relaxed);
    }
}

fn sleep_ms(ms: u32) {
    if ms == 0 {
        return;
    }
    let ts =
        libc::timespec { tv_sec: libc::time_t::from(ms / 1000), tv_nsec: libc::c_long::from(ms % 1000) * 1_000_000 };
    // SAFETY: nanosleep reads one timespec we own; a null remainder is allowed.
    unsafe { libc::nanosleep(&raw const ts, core::ptr::null_mut()) };
}

/// Between two chunks of one read/write call.
#[inline]
pub fn pause_rw() {
    sleep_ms(PAUSE_RW_MS.load(Ordering::Relaxed));
}

/// Before an fd's reference to a file slot is dropped.
#[inline]
pub fn pause_release() {
    sleep_ms(PAUSE_RELEASE_MS.load(Ordering::Relaxed));
}

/// Whether this MAP_DONE is to fail (consumes one of the `fail_map_done` count).
#[inline]
pub fn fail_map_done() -> bool {
    FAIL_MAP_DONE.load(Ordering::Relaxed) > 0
        && FAIL_MAP_DONE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}
