//! The data buffers a plugin reads from and writes to: a shared-memory window, or buffers in the
//! calling process reached with `process_vm_readv/writev` (one copy, P-CH6).
#![allow(unsafe_code)]

use core::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use zus_pmem::{DataSink, DataSource};

use zus_api::ops::IoVec;

/// A data window in shared memory, optionally streamed (`DataDesc::ready`).
#[derive(Debug)]
pub struct WindowData {
    base: *mut u8,
    len: usize,
    /// The shared count of window bytes holding data (streamed windows), else null.
    ready: *mut u32,
    /// Streamed reads: the prefix of the window this side has filled and announced.
    published: Cell<usize>,
}

/// Longest a streamed write waits for the client's next bytes (any progress restarts it).
/// A live client copies a whole window in well under a millisecond; one that stops (killed,
/// stopped, hostile) costs the ZT this long once, and its op fails with EFAULT.
pub const STREAM_STALL_LIMIT: Duration = Duration::from_millis(100);

/// How often a streamed write that waits for the client yields its CPU (the client may share it).
const STREAM_YIELD_EVERY: Duration = Duration::from_micros(4);

impl WindowData {
    /// Wraps a window whose data is all there.
    ///
    /// # Safety
    /// `[base, base+len)` must stay mapped while the value is used; it may be concurrently
    /// written by the peer (only raw copies are made).
    #[must_use]
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        // SAFETY: the caller's contract for `new` is the one of `streamed` with no ready word.
        unsafe { Self::streamed(base, len, core::ptr::null_mut()) }
    }

    /// Wraps a streamed window: `*ready` counts the bytes from the window's start that hold
    /// data (a write's source waits for them; a read's sink raises it as it fills the window).
    ///
    /// # Safety
    /// As [`WindowData::new`]; `ready` must be null or a 4-byte aligned word that stays mapped
    /// while the value is used (it is only ever accessed atomically).
    #[must_use]
    pub unsafe fn streamed(base: *mut u8, len: usize, ready: *mut u32) -> Self {
        Self { base, len, ready, published: Cell::new(0) }
    }

    fn ready_word(&self) -> Option<&AtomicU32> {
        if self.ready.is_null() {
            return None;
        }
        // SAFETY: non-null, aligned and mapped for the life of self (constructor contract); the
        // word is shared with the client and only accessed through this atomic.
        Some(unsafe { AtomicU32::from_ptr(self.ready) })
    }

    /// Waits until the client has put the first `end` bytes into a streamed window.
    fn wait_for(&self, end: usize) -> Result<(), i32> {
        match self.ready_word() {
            Some(word) => wait_stream_ready(word, end),
            None => Ok(()),
        }
    }
}

/// Waits until a streamed window's `ready` word (raised by the client) reaches `end`: spins,
/// yields every few µs (the client may need this CPU), and gives up with EFAULT after
/// [`STREAM_STALL_LIMIT`] without progress.
///
/// # Errors
/// EFAULT when the client stops filling the window.
pub fn wait_stream_ready(word: &AtomicU32, end: usize) -> Result<(), i32> {
    let mut seen = word.load(Ordering::Acquire) as usize;
    if seen >= end {
        return Ok(());
    }
    let mut progress_at = Instant::now();
    let mut yielded_at = progress_at;
    let mut n = 0u32;
    loop {
        core::hint::spin_loop();
        let now_ready = word.load(Ordering::Acquire) as usize;
        if now_ready >= end {
            return Ok(());
        }
        n = n.wrapping_add(1);
        if now_ready != seen {
            seen = now_ready;
            progress_at = Instant::now();
        } else if n.is_multiple_of(64) {
            let now = Instant::now();
            if now.duration_since(progress_at) >= STREAM_STALL_LIMIT {
                return Err(libc::EFAULT);
            }
            if now.duration_since(yielded_at) >= STREAM_YIELD_EVERY {
                std::thread::yield_now();
                yielded_at = Instant::now();
            }
        }
    }
}

fn in_range(off: usize, len: usize, total: usize) -> Result<(), i32> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(libc::EFAULT),
    }
}

// SAFETY: copies stay within [base, base+len), checked; no references to shared memory are formed.
unsafe impl DataSource for WindowData {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        in_range(src_off, len, self.len)?;
        self.wait_for(src_off + len)?;
        // SAFETY: source in bounds (checked); dst valid per the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(self.base.add(src_off), dst, len) };
        Ok(())
    }
    /// The window is mapped here: pmem can stream from it with non-temporal stores (one copy).
    fn as_ptr(&self) -> Option<*const u8> {
        Some(self.base.cast_const())
    }
    fn wait_ready(&self, end: usize) -> Result<(), i32> {
        in_range(0, end, self.len)?;
        self.wait_for(end)
    }
}

// SAFETY: as above.
unsafe impl DataSink for WindowData {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn copy_from(&self, dst_off: usize, src: *const u8, len: usize) -> Result<(), i32> {
        in_range(dst_off, len, self.len)?;
        let Some(word) = self.ready_word() else {
            // SAFETY: destination in bounds (checked); src valid per the caller's contract.
            unsafe { core::ptr::copy_nonoverlapping(src, self.base.add(dst_off), len) };
            return Ok(());
        };
        // Streamed: copy a piece at a time and announce each one that extends the filled
        // prefix, so that the client copies it out while we copy the next.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zus_pmem::STREAM_PIECE);
            // SAFETY: [dst_off+done, +n) lies inside the checked range; src valid for len reads.
            unsafe { core::ptr::copy_nonoverlapping(src.add(done), self.base.add(dst_off + done), n) };
            if self.published.get() == dst_off + done {
                let end = dst_off + done + n;
                self.published.set(end);
                word.store(u32::try_from(end).unwrap_or(u32::MAX), Ordering::Release);
            }
            done += n;
        }
        Ok(())
    }
}

/// Buffers in another process, addressed by its iovecs (validated by the server: count and
/// total length). The kernel checks every address against the target process's own mappings,
/// so a client can only ever name its own memory. Borrows the server's private copy of the
/// iovecs for the call and moves data without allocating.
#[derive(Debug)]
pub struct RemoteIov<'a> {
    pid: i32,
    iov: &'a [IoVec],
    total: usize,
}

/// Remote iovecs handed to one `process_vm_readv/writev` call (more take several calls).
const REMOTE_BATCH: usize = 64;

impl<'a> RemoteIov<'a> {
    /// Describes buffers in process `pid`.
    #[must_use]
    pub fn new(pid: i32, iov: &'a [IoVec]) -> Self {
        let total =
            iov.iter().map(|v| usize::try_from(v.len).unwrap_or(usize::MAX)).fold(0usize, usize::saturating_add);
        Self { pid, iov, total }
    }

    /// Fills `out` with remote iovecs covering the start of `[off, off+len)`; returns how many
    /// and the bytes they cover.
    fn batch(&self, mut off: usize, mut len: usize, out: &mut [libc::iovec; REMOTE_BATCH]) -> (usize, usize) {
        let (mut k, mut bytes) = (0, 0);
        for v in self.iov {
            let vlen = usize::try_from(v.len).unwrap_or(0);
            if off >= vlen {
                off -= vlen;
                continue;
            }
            if k == REMOTE_BATCH || len == 0 {
                break;
            }
            let take = (vlen - off).min(len);
            out[k] = libc::iovec {
                iov_base: (usize::try_from(v.addr).unwrap_or(0) + off) as *mut libc::c_void,
                iov_len: take,
            };
            k += 1;
            bytes += take;
            len -= take;
            off = 0;
        }
        (k, bytes)
    }

    fn xfer(&self, off: usize, local: *mut u8, len: usize, write_remote: bool) -> Result<(), i32> {
        in_range(off, len, self.total)?;
        let mut rem = [libc::iovec { iov_base: core::ptr::null_mut(), iov_len: 0 }; REMOTE_BATCH];
        let mut done = 0usize;
        // A call moves at most one batch; a partial transfer (the kernel stops at a page it
        // cannot reach) resumes where it stopped.
        while done < len {
            let (k, bytes) = self.batch(off + done, len - done, &mut rem);
            if k == 0 {
                return Err(libc::EFAULT);
            }
            // SAFETY: done < len, so the local pointer stays inside the caller's buffer, which is
            // valid for len bytes (caller contract) and so for the `bytes` <= len - done here.
            let lio = libc::iovec { iov_base: unsafe { local.add(done) }.cast(), iov_len: bytes };
            // SAFETY: local buffer as above; remote addresses are checked by the kernel against
            // the target process's mappings; `rem` holds k initialised entries.
            let n = unsafe {
                if write_remote {
                    libc::process_vm_writev(self.pid, &raw const lio, 1, rem.as_ptr(), k as libc::c_ulong, 0)
                } else {
                    libc::process_vm_readv(self.pid, &raw const lio, 1, rem.as_ptr(), k as libc::c_ulong, 0)
                }
            };
            if n <= 0 {
                return Err(if n == 0 {
                    libc::EFAULT
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EFAULT)
                });
            }
            done += n.unsigned_abs();
        }
        Ok(())
    }
}

// SAFETY: bounds checked against the validated total; the kernel validates remote addresses.
unsafe impl DataSource for RemoteIov<'_> {
    fn len(&self) -> usize {
        self.total
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        self.xfer(src_off, dst, len, false)
    }
}

// SAFETY: as above.
unsafe impl DataSink for RemoteIov<'_> {
    fn len(&self) -> usize {
        self.total
    }
    unsafe fn copy_from(&self, dst_off: usize, src: *const u8, len: usize) -> Result<(), i32> {
        self.xfer(dst_off, src.cast_mut(), len, true)
    }
}

/// Copies `src` into a data sink at `off` (safe wrapper for plugins, P-PL3).
///
/// # Errors
/// EFAULT when the range is outside the sink (or the remote memory is gone).
pub fn sink_write(dst: &dyn DataSink, off: usize, src: &[u8]) -> Result<(), zus_api::Errno> {
    // SAFETY: src is a valid slice for src.len() bytes; the sink checks its own range.
    unsafe { dst.copy_from(off, src.as_ptr(), src.len()) }.map_err(zus_api::Errno)
}

/// Copies bytes from a data source at `off` into `dst` (safe wrapper for plugins, P-PL3).
///
/// # Errors
/// EFAULT when the range is outside the source.
pub fn source_read(src: &dyn DataSource, off: usize, dst: &mut [u8]) -> Result<(), zus_api::Errno> {
    // SAFETY: dst is a valid, exclusive slice of dst.len() bytes; the source checks its range.
    unsafe { src.copy_to(off, dst.as_mut_ptr(), dst.len()) }.map_err(zus_api::Errno)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zus_pmem::{MappedPmem, Persist};

    use super::*;

    /// A page-aligned buffer standing in for a slot's window, plus its ready word.
    struct Shared {
        window: Vec<u64>,
        ready: AtomicU32,
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap_or(0)).collect()
    }

    #[test]
    fn test_streamed_write_waits_for_each_piece_the_client_announces() {
        const LEN: usize = 200_000;
        let shared = Arc::new(Shared { window: vec![0u64; LEN / 8 + 1], ready: AtomicU32::new(0) });
        let base = shared.window.as_ptr().cast::<u8>().cast_mut();
        let data = pattern(LEN);
        let base_addr = base as usize;
        let (sh, d) = (Arc::clone(&shared), data.clone());
        // The "client": fills the window 3000 bytes at a time, announcing each piece.
        let client = std::thread::spawn(move || {
            let mut at = 0;
            while at < LEN {
                let n = (LEN - at).min(3000);
                // SAFETY: inside the window, which outlives the thread (Arc); the server side
                // reads only bytes below `ready`.
                unsafe { core::ptr::copy_nonoverlapping(d[at..].as_ptr(), (base_addr as *mut u8).add(at), n) };
                at += n;
                sh.ready.store(u32::try_from(at).unwrap_or(u32::MAX), Ordering::Release);
                std::thread::yield_now();
            }
        });
        let pm = MappedPmem::anonymous(1 << 20).unwrap();
        // SAFETY: the window and ready word live in `shared` for the whole test.
        let src = unsafe { WindowData::streamed(base, LEN, shared.ready.as_ptr()) };
        pm.write_from(4096 + 5, &src, 0, LEN, true).unwrap();
        pm.fence();
        client.join().unwrap();
        let mut back = vec![0u8; LEN];
        pm.read(4096 + 5, &mut back).unwrap();
        assert!(back == data, "streamed write copied bytes before they were announced");
    }

    #[test]
    fn test_streamed_write_from_a_client_that_stops_fails_with_efault() {
        let shared = Shared { window: vec![0u64; 4096], ready: AtomicU32::new(100) };
        let base = shared.window.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: as above.
        let src = unsafe { WindowData::streamed(base, 32768, shared.ready.as_ptr()) };
        let pm = MappedPmem::anonymous(1 << 16).unwrap();
        let t0 = Instant::now();
        let err = pm.write_from(0, &src, 0, 32768, true).unwrap_err();
        assert!(matches!(err, zus_pmem::PmemError::Copy(libc::EFAULT)), "{err}");
        let waited = t0.elapsed();
        assert!(waited >= STREAM_STALL_LIMIT && waited < STREAM_STALL_LIMIT * 20, "waited {waited:?}");
        // What the client did announce is there to be read at once.
        let mut b = [0u8; 100];
        // SAFETY: b is a valid buffer of 100 bytes.
        unsafe { src.copy_to(0, b.as_mut_ptr(), 100) }.unwrap();
    }

    #[test]
    fn test_remote_iov_moves_ranges_across_many_buffers_both_ways() {
        // 150 buffers of uneven sizes (more than one process_vm_* batch), in this process.
        let mut bufs: Vec<Vec<u8>> = (0..150).map(|i| vec![0u8; 1 + (i * 37) % 300]).collect();
        let flat = pattern(bufs.iter().map(Vec::len).sum());
        let iov: Vec<IoVec> =
            bufs.iter_mut().map(|b| IoVec { addr: b.as_mut_ptr() as u64, len: b.len() as u64 }).collect();
        let remote = RemoteIov::new(i32::try_from(std::process::id()).unwrap(), &iov);
        assert_eq!(DataSink::len(&remote), flat.len());
        // Write the pattern in three uneven pieces, then read ranges back and compare.
        let cuts = [0, 777, 20_001, flat.len()];
        for w in cuts.windows(2) {
            // SAFETY: flat is valid for the range's length.
            unsafe { remote.copy_from(w[0], flat[w[0]..].as_ptr(), w[1] - w[0]) }.unwrap();
        }
        for (off, len) in [(0, flat.len()), (5, 1), (299, 12_345), (flat.len() - 3, 3)] {
            let mut out = vec![0u8; len];
            // SAFETY: out is valid for len bytes.
            unsafe { remote.copy_to(off, out.as_mut_ptr(), len) }.unwrap();
            assert!(out == flat[off..off + len], "range {off}+{len}");
        }
        let mut one = [0u8; 1];
        // SAFETY: one byte past the end is refused before any copy.
        assert_eq!(unsafe { remote.copy_to(flat.len(), one.as_mut_ptr(), 1) }, Err(libc::EFAULT));
        drop(bufs);
    }

    #[test]
    fn test_streamed_read_announces_the_filled_prefix_only() {
        let shared = Shared { window: vec![0u64; 8192], ready: AtomicU32::new(0) };
        let base = shared.window.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: as above.
        let sink = unsafe { WindowData::streamed(base, 65536, shared.ready.as_ptr()) };
        let data = pattern(40_000);
        // Out of order first: nothing may be announced, the prefix below it is not filled.
        // SAFETY: data is valid for the lengths given.
        unsafe { sink.copy_from(30_000, data.as_ptr(), 10_000) }.unwrap();
        assert_eq!(shared.ready.load(Ordering::Acquire), 0);
        // SAFETY: as above.
        unsafe { sink.copy_from(0, data.as_ptr(), 30_000) }.unwrap();
        assert_eq!(shared.ready.load(Ordering::Acquire), 30_000);
        let mut out = vec![0u8; 30_000];
        // SAFETY: reading back the bytes just written, inside the window.
        unsafe { core::ptr::copy_nonoverlapping(base, out.as_mut_ptr(), 30_000) };
        assert_eq!(out, data[..30_000]);
    }
}
