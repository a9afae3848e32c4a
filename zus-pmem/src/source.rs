//! Client data buffers: where data comes from on a write and goes to on a read.
#![allow(unsafe_code)]

use std::marker::PhantomData;

/// A readable client buffer (a shared-memory window, another process's memory, a test Vec).
///
/// # Safety
/// Implementors must honour the contracts of [`copy_to`](DataSource::copy_to) and
/// [`as_ptr`](DataSource::as_ptr): copy exactly the bytes asked for, write nothing outside
/// `[dst, dst+len)`, and return a pointer only if it stays valid for reads of `len()` bytes while
/// `&self` lives.
pub unsafe trait DataSource {
    /// Number of bytes available.
    fn len(&self) -> usize;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `len` bytes starting at `src_off` to `dst`. Errors are errnos (e.g. EFAULT).
    ///
    /// # Safety
    /// `dst` must be valid for `len` writes; callers check `src_off + len <= self.len()`.
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32>;
    /// A direct pointer to the bytes, if the source is mapped in this process. It lets pmem use
    /// non-temporal stores straight from the client's buffer. The bytes may change concurrently
    /// (shared memory), so they are only ever read with raw copies.
    fn as_ptr(&self) -> Option<*const u8> {
        None
    }
    /// Waits until bytes `[0, end)` may be read through [`as_ptr`](DataSource::as_ptr): a
    /// streamed source fills while the op runs (`copy_to` waits by itself). Errors are errnos
    /// (EFAULT when the producer stalls or `end` is out of range).
    fn wait_ready(&self, end: usize) -> Result<(), i32> {
        if end > self.len() { Err(libc::EFAULT) } else { Ok(()) }
    }
}

/// Unit in which a persistence backend copies from a streamed source (and a streamed window
/// announces what it filled): big enough that the wait per piece costs nothing, small enough
/// that the two sides of a streamed op overlap well.
pub const STREAM_PIECE: usize = 16 * 1024;

/// A writable client buffer.
///
/// # Safety
/// Implementors must write exactly `[dst_off, dst_off+len)` of their buffer in
/// [`copy_from`](DataSink::copy_from) and nothing else.
pub unsafe trait DataSink {
    /// Number of bytes available.
    fn len(&self) -> usize;
    /// Whether the sink is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `len` bytes from `src` into the buffer at `dst_off`. Errors are errnos.
    ///
    /// # Safety
    /// `src` must be valid for `len` reads; callers check `dst_off + len <= self.len()`.
    unsafe fn copy_from(&self, dst_off: usize, src: *const u8, len: usize) -> Result<(), i32>;
}

// SAFETY: copies only within the slice after a bounds check; the pointer is valid while &self is.
unsafe impl DataSource for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        let end = src_off.checked_add(len).ok_or(libc::EFAULT)?;
        let s = self.get(src_off..end).ok_or(libc::EFAULT)?;
        // SAFETY: s has len bytes; dst is valid for len writes (caller contract); a Rust slice
        // cannot overlap the caller's destination buffer it hands us as a raw pointer to pmem.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), dst, len) };
        Ok(())
    }
    fn as_ptr(&self) -> Option<*const u8> {
        Some(<[u8]>::as_ptr(self))
    }
}

// SAFETY: delegates to the slice implementation.
unsafe impl DataSource for Vec<u8> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        // SAFETY: forwarded contract.
        unsafe { self.as_slice().copy_to(src_off, dst, len) }
    }
    fn as_ptr(&self) -> Option<*const u8> {
        Some(self.as_slice().as_ptr())
    }
}

/// A [`DataSource`] over a borrowed slice (`[u8]` itself is unsized, so it cannot become a
/// `&dyn DataSource`; this wrapper can).
#[derive(Clone, Copy, Debug)]
pub struct SliceSource<'a>(pub &'a [u8]);

// SAFETY: delegates to the slice implementation.
unsafe impl DataSource for SliceSource<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> Result<(), i32> {
        // SAFETY: forwarded contract.
        unsafe { self.0.copy_to(src_off, dst, len) }
    }
    fn as_ptr(&self) -> Option<*const u8> {
        Some(self.0.as_ptr())
    }
}

/// A [`DataSink`] over a `&mut [u8]`. (A sink writes through `&self`, so it cannot be implemented
/// on `[u8]` itself; this wrapper holds the exclusive borrow and writes through a raw pointer.)
#[derive(Debug)]
pub struct SliceSink<'a> {
    ptr: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> SliceSink<'a> {
    /// Wrap an exclusive buffer.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { ptr: buf.as_mut_ptr(), len: buf.len(), _borrow: PhantomData }
    }
}

// SAFETY: bounds-checked copies into the exclusively borrowed buffer only.
unsafe impl DataSink for SliceSink<'_> {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn copy_from(&self, dst_off: usize, src: *const u8, len: usize) -> Result<(), i32> {
        match dst_off.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(libc::EFAULT),
        }
        // SAFETY: [dst_off, dst_off+len) is within the borrowed buffer (checked above), which we
        // hold exclusively for 'a; src is valid for len reads (caller contract).
        unsafe { std::ptr::copy_nonoverlapping(src, self.ptr.add(dst_off), len) };
        Ok(())
    }
}

/// Copy `out.len()` bytes of `src` from `src_off` into a plugin-owned buffer (safe helper).
pub fn source_to_vec(src: &dyn DataSource, src_off: usize, out: &mut [u8]) -> Result<(), i32> {
    match src_off.checked_add(out.len()) {
        Some(end) if end <= src.len() => {}
        _ => return Err(libc::EFAULT),
    }
    // SAFETY: out is valid for out.len() writes and the source range was checked above.
    unsafe { src.copy_to(src_off, out.as_mut_ptr(), out.len()) }
}

/// Copy `data` into `dst` at `dst_off`.
pub fn sink_from_slice(dst: &dyn DataSink, dst_off: usize, data: &[u8]) -> Result<(), i32> {
    match dst_off.checked_add(data.len()) {
        Some(end) if end <= dst.len() => {}
        _ => return Err(libc::EFAULT),
    }
    // SAFETY: data is valid for data.len() reads and the sink range was checked above.
    unsafe { dst.copy_from(dst_off, data.as_ptr(), data.len()) }
}
