//! The data buffers a plugin reads from and writes to: a shared-memory window, or buffers in the
//! calling process reached with `process_vm_readv/writev` (one copy, P-CH6).
#![allow(unsafe_code)]

use zus_pmem::{DataSink, DataSource};

use crate::ops::IoVec;

/// A data window in shared memory.
#[derive(Debug)]
pub struct WindowData {
    base: *mut u8,
    len: usize,
}

impl WindowData {
    /// Wraps a window.
    ///
    /// # Safety
    /// `[base, base+len)` must stay mapped while the value is used; it may be concurrently
    /// written by the peer (only raw copies are made).
    #[must_use]
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        Self { base, len }
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
        // SAFETY: source in bounds (checked); dst valid per the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(self.base.add(src_off), dst, len) };
        Ok(())
    }
    /// The window is mapped here: pmem can stream from it with non-temporal stores (one copy).
    fn as_ptr(&self) -> Option<*const u8> {
        Some(self.base.cast_const())
    }
}

// SAFETY: as above.
unsafe impl DataSink for WindowData {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn copy_from(&self, dst_off: usize, src: *const u8, len: usize) -> Result<(), i32> {
        in_range(dst_off, len, self.len)?;
        // SAFETY: destination in bounds (checked); src valid per the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(src, self.base.add(dst_off), len) };
        Ok(())
    }
}

/// Buffers in another process, addressed by its iovecs (validated by the server: count and
/// total length). The kernel checks every address against the target process's own mappings,
/// so a client can only ever name its own memory.
#[derive(Debug)]
pub struct RemoteIov {
    pid: i32,
    iov: Vec<IoVec>,
    total: usize,
}

impl RemoteIov {
    /// Describes buffers in process `pid`.
    #[must_use]
    pub fn new(pid: i32, iov: Vec<IoVec>) -> Self {
        let total =
            iov.iter().map(|v| usize::try_from(v.len).unwrap_or(usize::MAX)).fold(0usize, usize::saturating_add);
        Self { pid, iov, total }
    }

    /// Remote iovecs covering `[off, off+len)`.
    fn slice(&self, mut off: usize, mut len: usize) -> Vec<libc::iovec> {
        let mut out = Vec::new();
        for v in &self.iov {
            let vlen = usize::try_from(v.len).unwrap_or(0);
            if off >= vlen {
                off -= vlen;
                continue;
            }
            let take = (vlen - off).min(len);
            out.push(libc::iovec {
                iov_base: (usize::try_from(v.addr).unwrap_or(0) + off) as *mut libc::c_void,
                iov_len: take,
            });
            len -= take;
            off = 0;
            if len == 0 {
                break;
            }
        }
        out
    }

    fn xfer(&self, off: usize, local: *mut u8, len: usize, write_remote: bool) -> Result<(), i32> {
        in_range(off, len, self.total)?;
        if len == 0 {
            return Ok(());
        }
        let remote = self.slice(off, len);
        let local_iov = libc::iovec { iov_base: local.cast(), iov_len: len };
        let mut done = 0usize;
        // Retry partial transfers (the kernel stops at page boundaries on some errors).
        let mut rem = remote;
        let mut lio = local_iov;
        while done < len {
            // SAFETY: local buffer valid for len bytes per the caller's contract; remote addresses
            // are checked by the kernel against the target process's mappings.
            let n = unsafe {
                if write_remote {
                    libc::process_vm_writev(self.pid, &raw const lio, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
                } else {
                    libc::process_vm_readv(self.pid, &raw const lio, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
                }
            };
            if n <= 0 {
                return Err(if n == 0 {
                    libc::EFAULT
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EFAULT)
                });
            }
            let n = n.unsigned_abs();
            done += n;
            if done < len {
                rem = self.slice(off + done, len - done);
                // SAFETY: done < len, so the advanced pointer stays inside the local buffer.
                lio = libc::iovec { iov_base: unsafe { local.add(done) }.cast(), iov_len: len - done };
            }
        }
        Ok(())
    }
}

// SAFETY: bounds checked against the validated total; the kernel validates remote addresses.
unsafe impl DataSource for RemoteIov {
    fn len(&self) -> usize {
        self.total
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        self.xfer(src_off, dst, len, false)
    }
}

// SAFETY: as above.
unsafe impl DataSink for RemoteIov {
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
pub fn sink_write(dst: &dyn DataSink, off: usize, src: &[u8]) -> Result<(), crate::Errno> {
    // SAFETY: src is a valid slice for src.len() bytes; the sink checks its own range.
    unsafe { dst.copy_from(off, src.as_ptr(), src.len()) }.map_err(crate::Errno)
}

/// Copies bytes from a data source at `off` into `dst` (safe wrapper for plugins, P-PL3).
///
/// # Errors
/// EFAULT when the range is outside the source.
pub fn source_read(src: &dyn DataSource, off: usize, dst: &mut [u8]) -> Result<(), crate::Errno> {
    // SAFETY: dst is a valid, exclusive slice of dst.len() bytes; the source checks its range.
    unsafe { src.copy_to(off, dst.as_mut_ptr(), dst.len()) }.map_err(crate::Errno)
}
