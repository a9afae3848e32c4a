//! The one place that touches shared channel memory.
//!
//! Shared memory may change under us at any time (the peer writes it, possibly maliciously), so
//! we never form `&`/`&mut` references to it: words we synchronise on are accessed as atomics,
//! everything else is copied in or out with raw-pointer copies, and a value is validated only
//! after it has been copied into private memory (no double fetch, P-CH4).
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use zus_api::ops::Pod;

/// Errors mapping or addressing shared memory.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// mmap failed.
    #[error("mapping {len} bytes of shared memory: {source}")]
    Map {
        /// Bytes requested.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// memfd creation or sizing failed.
    #[error("creating the channel memfd: {0}")]
    Memfd(std::io::Error),
}

/// An owned `MAP_SHARED` mapping, unmapped on drop.
#[derive(Debug)]
pub struct ShmRegion {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain shared memory; all access goes through atomics or raw copies whose
// callers uphold bounds, so it may be shared and sent between threads.
unsafe impl Send for ShmRegion {}
// SAFETY: as above.
unsafe impl Sync for ShmRegion {}

impl ShmRegion {
    /// Maps `len` bytes of `fd` shared, read-write.
    ///
    /// # Errors
    /// The mmap error.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> Result<Self, ShmError> {
        // SAFETY: a fresh mapping chosen by the kernel aliases nothing of ours; errors are checked.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ShmError::Map { len, source: std::io::Error::last_os_error() });
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or(ShmError::Map { len, source: std::io::Error::from_raw_os_error(libc::EFAULT) })?;
        Ok(Self { base, len })
    }

    /// Creates a sealed-size memfd of `len` bytes (zero-filled) named `name`.
    ///
    /// # Errors
    /// The memfd_create/ftruncate error.
    pub fn create_memfd(name: &std::ffi::CStr, len: usize) -> Result<std::os::fd::OwnedFd, ShmError> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let memfd = |e: rustix::io::Errno| ShmError::Memfd(e.into());
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(memfd)?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(memfd)?;
        // Seal the size so a client cannot shrink the memfd under the server (SIGBUS).
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).map_err(memfd)?;
        Ok(fd)
    }

    /// Length of the mapping.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, in practice).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize, align: usize) {
        let end = off.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.len) && off.is_multiple_of(align),
            "shared-memory access {off}+{len} (align {align}) outside a {} byte region",
            self.len
        );
    }

    /// The atomic u32 at `off`. Offsets come from [`zus_api::chan::Geometry`], never from a peer.
    ///
    /// # Panics
    /// If `off` is out of bounds or misaligned: a bug in our own geometry code.
    #[must_use]
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked); AtomicU32 tolerates concurrent access from any
        // peer; the mapping lives as long as &self.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }

    /// The atomic u64 at `off`.
    ///
    /// # Panics
    /// If `off` is out of bounds or misaligned.
    #[must_use]
    pub fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as for atomic_u32.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast::<u64>()) }
    }

    /// Copies a plain-data value out of shared memory.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[must_use]
    pub fn read<T: Pod>(&self, off: usize) -> T {
        self.check(off, size_of::<T>(), 1);
        // SAFETY: in bounds; T is Pod so any bytes form a valid value; volatile so the compiler
        // performs exactly one fetch which we then validate privately.
        unsafe { self.base.as_ptr().add(off).cast::<T>().read_volatile() }
    }

    /// Copies a plain-data value into shared memory.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn write<T: Pod>(&self, off: usize, v: &T) {
        self.check(off, size_of::<T>(), 1);
        // SAFETY: in bounds; raw volatile store, no reference to shared memory is formed.
        unsafe { self.base.as_ptr().add(off).cast::<T>().write_volatile(*v) }
    }

    /// Copies `dst.len()` bytes from shared memory at `off` into private memory.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        // SAFETY: source range in bounds; dst is private memory that cannot overlap the mapping.
        unsafe { core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into shared memory at `off`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        self.check(off, src.len(), 1);
        // SAFETY: destination range in bounds; src is private memory.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len()) }
    }

    /// A raw pointer to `len` bytes at `off`, for one-copy data movement (e.g. pmem <-> window).
    /// Callers may only use it with raw-pointer copies while `self` is alive.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[must_use]
    pub fn raw(&self, off: usize, len: usize) -> *mut u8 {
        self.check(off, len, 1);
        // SAFETY: in bounds (checked), so the offset pointer stays inside the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Touches every page of `[off, off+len)` so it is allocated by (and on the node of) the
    /// calling thread (first-touch NUMA placement, P-NU1).
    pub fn first_touch(&self, off: usize, len: usize) {
        self.check(off, len, 1);
        let mut at = off;
        while at < off + len {
            // Read-modify-write of an atomic keeps the content and faults the page in writable.
            self.atomic_u32(at & !3).fetch_add(0, core::sync::atomic::Ordering::Relaxed);
            at += 4096;
        }
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        // SAFETY: base/len describe a mapping we own; no references into it can outlive self.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Shared (not private) futex operations on words in [`ShmRegion`]s (P-CH2).
pub mod futex {
    use super::{AtomicU32, Duration};

    /// Outcome of a futex wait.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WaitResult {
        /// Woken, or the value already differed, or a signal: re-check the condition.
        Retry,
        /// The timeout passed.
        TimedOut,
    }

    /// Sleeps while `*word == expected`, at most `timeout`. The futex is shared (no
    /// `FUTEX_PRIVATE_FLAG`): the word lives in memory two processes map.
    pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitResult {
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), expected, ts.as_ref()) {
            Err(rustix::io::Errno::TIMEDOUT) => WaitResult::TimedOut,
            _ => WaitResult::Retry,
        }
    }

    /// Wakes up to `n` waiters on `word` (shared futex); returns how many were woken.
    pub fn wake(word: &AtomicU32, n: u32) -> usize {
        let n = n.min(i32::MAX.unsigned_abs());
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n).unwrap_or(0)
    }

    /// One entry of a `futex_waitv` call.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct WaitV {
        /// Expected value.
        pub val: u64,
        uaddr: u64,
        flags: u32,
        reserved: u32,
    }

    const FUTEX2_SIZE_U32: u32 = 2;
    const FUTEX2_PRIVATE: u32 = 128;
    /// Most entries one `futex_waitv` accepts.
    pub const WAITV_MAX: usize = 128;

    impl WaitV {
        /// Waits on a word shared with other processes.
        #[must_use]
        pub fn shared(word: &AtomicU32, expected: u32) -> Self {
            Self { val: u64::from(expected), uaddr: word.as_ptr() as u64, flags: FUTEX2_SIZE_U32, reserved: 0 }
        }
        /// Waits on a word private to this process.
        #[must_use]
        pub fn private(word: &AtomicU32, expected: u32) -> Self {
            Self {
                val: u64::from(expected),
                uaddr: word.as_ptr() as u64,
                flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
                reserved: 0,
            }
        }
    }

    /// More words than one `futex_waitv` call can wait on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("futex_waitv waits on at most {WAITV_MAX} words, {0} given")]
    pub struct TooManyWaiters(pub usize);

    /// Sleeps until any word in `waiters` is woken or differs from its expected value.
    ///
    /// # Errors
    /// [`TooManyWaiters`] (without waiting) for more than [`WAITV_MAX`] words: the kernel
    /// cannot watch them all, and leaving some out would sleep through their wakes.
    ///
    /// # Safety
    /// Every `WaitV` must name a word that stays mapped for the duration of the call.
    pub unsafe fn waitv(waiters: &[WaitV], timeout: Option<Duration>) -> Result<WaitResult, TooManyWaiters> {
        let n = waiters.len();
        if n > WAITV_MAX {
            return Err(TooManyWaiters(n));
        }
        // futex_waitv takes an absolute CLOCK_MONOTONIC timeout.
        let ts = timeout.map(|d| {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid out pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
            let total = u128::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000
                + u128::try_from(now.tv_nsec).unwrap_or(0)
                + d.as_nanos();
            libc::timespec {
                tv_sec: libc::time_t::try_from(total / 1_000_000_000).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::try_from(total % 1_000_000_000).unwrap_or(0),
            }
        });
        let ts_ptr = ts.as_ref().map_or(core::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the array is valid for n entries; the caller keeps every word mapped.
        let rc =
            unsafe { libc::syscall(libc::SYS_futex_waitv, waiters.as_ptr(), n, 0u32, ts_ptr, libc::CLOCK_MONOTONIC) };
        if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
            Ok(WaitResult::TimedOut)
        } else {
            Ok(WaitResult::Retry)
        }
    }
}

/// The CPU the calling thread runs on. glibc's `sched_getcpu` reads the rseq area the kernel
/// keeps up to date (no syscall, no vDSO call); rustix's goes through the vDSO, so this one stays
/// on libc.
#[must_use]
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::futex::{self, TooManyWaiters, WAITV_MAX, WaitResult, WaitV};
    use core::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[test]
    fn test_waitv_refuses_more_words_than_it_can_wait_on() {
        // WAITV_MAX words that would all sleep, and one more that has already changed.
        let words: Vec<AtomicU32> = (0..=WAITV_MAX).map(|_| AtomicU32::new(0)).collect();
        let mut ws: Vec<WaitV> = words.iter().map(|w| WaitV::private(w, 0)).collect();
        ws[WAITV_MAX] = WaitV::private(&words[WAITV_MAX], 1);
        // SAFETY: every word lives in `words` for the whole call.
        let r = unsafe { futex::waitv(&ws, Some(Duration::from_millis(200))) };
        assert_eq!(r, Err(TooManyWaiters(WAITV_MAX + 1)), "the word past the limit must not be silently left out");
        // At the limit it waits on every word: the last one has changed, so no sleep.
        // SAFETY: as above.
        let r = unsafe { futex::waitv(&ws[1..], Some(Duration::from_secs(5))) };
        assert_eq!(r, Ok(WaitResult::Retry));
        // SAFETY: as above.
        let r = unsafe { futex::waitv(&ws[..WAITV_MAX], Some(Duration::from_millis(20))) };
        assert_eq!(r, Ok(WaitResult::TimedOut));
    }
}
