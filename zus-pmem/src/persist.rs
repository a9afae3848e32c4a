//! The persistence trait every plugin programs against.

use crate::source::{DataSink, DataSource};

/// Size of the flush/persistence unit.
pub const CACHE_LINE: u64 = 64;

/// Errors of the persistence layer. Bad offsets are errors, never panics.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    /// A pmem range outside the device.
    #[error("pmem range {off:#x}+{len:#x} is outside the {dev_len:#x}-byte device")]
    OutOfBounds {
        /// start offset asked for
        off: u64,
        /// length asked for
        len: u64,
        /// device length
        dev_len: u64,
    },
    /// A range outside a client data buffer.
    #[error("data buffer range {off}+{len} is outside its {buf_len} bytes")]
    BufferRange {
        /// start offset in the buffer
        off: usize,
        /// length
        len: usize,
        /// buffer length
        buf_len: usize,
    },
    /// The client data source or sink failed (errno).
    #[error("client data copy failed with errno {0}")]
    Copy(i32),
    /// Mapping or sizing the device failed.
    #[error("mapping pmem device {path}: {source}")]
    Map {
        /// the device path
        path: String,
        /// the OS error
        source: std::io::Error,
    },
}

impl PmemError {
    /// The errno this error should be reported as.
    pub fn errno(&self) -> i32 {
        match self {
            PmemError::OutOfBounds { .. } => libc::EIO,
            PmemError::BufferRange { .. } => libc::EFAULT,
            PmemError::Copy(e) => *e,
            PmemError::Map { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PmemError>;

/// Check that `[off, off+len)` lies within a device of `dev_len` bytes; returns the range as usize.
pub(crate) fn check_range(off: u64, len: u64, dev_len: u64) -> Result<(usize, usize)> {
    match off.checked_add(len) {
        Some(end) if end <= dev_len => {
            let o = usize::try_from(off).map_err(|_| PmemError::OutOfBounds { off, len, dev_len })?;
            let l = usize::try_from(len).map_err(|_| PmemError::OutOfBounds { off, len, dev_len })?;
            Ok((o, l))
        }
        _ => Err(PmemError::OutOfBounds { off, len, dev_len }),
    }
}

/// Check a range of a client buffer.
pub(crate) fn check_buf(off: usize, len: usize, buf_len: usize) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        _ => Err(PmemError::BufferRange { off, len, buf_len }),
    }
}

/// Byte-addressed persistent memory.
///
/// Durability model: a [`store`](Persist::store) lands in the CPU cache; it is durable only after a
/// [`flush`](Persist::flush) of its lines followed by a [`fence`](Persist::fence). Non-temporal
/// stores ([`nt_store`](Persist::nt_store), [`write_from`](Persist::write_from)) are durable after
/// the next fence. Nothing is ordered between two fences: a crash may keep any subset of the lines
/// written since the last fence. Every offset is checked; a bad one is an error, never a panic.
pub trait Persist: Send + Sync {
    /// Device length in bytes.
    fn len(&self) -> u64;
    /// Whether the device is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()>;
    /// Store `data` at `off` (cached; needs flush + fence to be durable).
    fn store(&self, off: u64, data: &[u8]) -> Result<()>;
    /// Write back the cache lines overlapping `[off, off+len)`.
    fn flush(&self, off: u64, len: u64) -> Result<()>;
    /// Order and complete every earlier flush and non-temporal store.
    fn fence(&self);
    /// Store `data` at `off` bypassing the cache; durable after the next fence.
    fn nt_store(&self, off: u64, data: &[u8]) -> Result<()>;
    /// Zero `[off, off+len)` with non-temporal stores; durable after the next fence.
    fn nt_zero(&self, off: u64, len: u64) -> Result<()>;
    /// Copy `len` bytes from `src` (starting at `src_off`) to pmem at `off`, in one copy.
    /// With `nontemporal` the copy uses streaming stores where the source allows it; either way
    /// the bytes are flushed on return, so they are durable after the next fence.
    fn write_from(&self, off: u64, src: &dyn DataSource, src_off: usize, len: usize, nontemporal: bool) -> Result<()>;
    /// Copy `len` bytes from pmem at `off` into `dst` at `dst_off`, in one copy.
    fn read_into(&self, off: u64, dst: &dyn DataSink, dst_off: usize, len: usize) -> Result<()>;

    /// Flush then fence: `[off, off+len)` is durable on return.
    fn persist(&self, off: u64, len: u64) -> Result<()> {
        self.flush(off, len)?;
        self.fence();
        Ok(())
    }
    /// Load a little-endian u64.
    fn load_u64(&self, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Load a little-endian u32.
    fn load_u32(&self, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Store a little-endian u64 (one 8-byte store: atomic for persistence when 8-aligned).
    fn store_u64(&self, off: u64, v: u64) -> Result<()> {
        self.store(off, &v.to_le_bytes())
    }
    /// Store a little-endian u32.
    fn store_u32(&self, off: u64, v: u32) -> Result<()> {
        self.store(off, &v.to_le_bytes())
    }
}
