//! A pmem backend over a raw mapping.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use crate::flush;
use crate::persist::{Persist, PmemError, Result, check_buf, check_range};
use crate::source::{DataSink, DataSource, STREAM_PIECE};

/// How a device file was mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapMode {
    /// `MAP_SHARED_VALIDATE | MAP_SYNC`: a real DAX mapping, flush+fence is enough for durability.
    Sync,
    /// Plain `MAP_SHARED` (e.g. /dev/shm, where MAP_SYNC fails with EOPNOTSUPP).
    Shared,
    /// An anonymous shared mapping (tests, benchmarks).
    Anonymous,
    /// A region handed over with [`MappedPmem::from_raw`]; not unmapped by us.
    Raw,
}

/// A mapped pmem region. The memory is shared with other processes, so no Rust reference into it
/// is ever created: every access is a raw-pointer copy.
#[derive(Debug)]
pub struct MappedPmem {
    base: NonNull<u8>,
    len: usize,
    mode: MapMode,
    /// Whether Drop must munmap `[base, base+len)`.
    owned: bool,
}

// SAFETY: the region is plain shared memory accessed only through raw copies; concurrent access to
// disjoint ranges is how it is meant to be used, and callers serialize overlapping updates.
unsafe impl Send for MappedPmem {}
// SAFETY: see Send; no interior state besides the mapping itself.
unsafe impl Sync for MappedPmem {}

impl MappedPmem {
    /// Wrap an existing mapping without taking ownership.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for the life of the returned value,
    /// and nothing may hold Rust references into that range meanwhile.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Option<Self> {
        NonNull::new(ptr).map(|base| MappedPmem { base, len, mode: MapMode::Raw, owned: false })
    }

    /// Map `path` shared. If `create_len` is given and the file is shorter (or absent), it is
    /// created/extended to that length. Tries `MAP_SHARED_VALIDATE|MAP_SYNC` first and falls back
    /// to `MAP_SHARED`; [`map_mode`](Self::map_mode) says which one was used.
    pub fn open_file(path: &Path, create_len: Option<u64>) -> Result<Self> {
        let err = |source: std::io::Error| PmemError::Map { path: path.display().to_string(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create_len.is_some())
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let mut len = meta.len();
        if let Some(want) = create_len
            && len < want
        {
            file.set_len(want).map_err(err)?;
            len = want;
        }
        if len == 0 {
            // Block devices report 0 in metadata; ask the device itself.
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            len = f.seek(SeekFrom::End(0)).map_err(err)?;
        }
        let ulen = usize::try_from(len).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        if ulen == 0 {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let fd = file.as_raw_fd();
        // SAFETY: a fresh mapping of a file we opened; the kernel picks the address.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), ulen, prot, libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC, fd, 0) };
        let (p, mode) = if p == libc::MAP_FAILED {
            // SAFETY: as above, plain shared mapping.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), ulen, prot, libc::MAP_SHARED, fd, 0) };
            if p == libc::MAP_FAILED {
                return Err(err(std::io::Error::last_os_error()));
            }
            (p, MapMode::Shared)
        } else {
            (p, MapMode::Sync)
        };
        // The mapping keeps the file alive; the fd can be closed now.
        drop(file);
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(MappedPmem { base, len: ulen, mode, owned: true })
    }

    /// Map `len` bytes of `fd` shared from offset 0, as [`open_file`](Self::open_file) does
    /// (`MAP_SYNC` first, `MAP_SHARED` otherwise). For an fd that maps pmem itself, such as the
    /// one the zufs kernel module hands out for a DAX block device (`ZUFS_IOC_GRAB_PMEM`): a
    /// mapping of the block device node would go through its page cache. `what` names the device
    /// in errors. The fd can be closed afterwards.
    pub fn map_fd(fd: std::os::fd::BorrowedFd<'_>, len: u64, what: &str) -> Result<Self> {
        let err = |source: std::io::Error| PmemError::Map { path: what.to_owned(), source };
        let ulen = usize::try_from(len).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        if ulen == 0 {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let fd = fd.as_raw_fd();
        // SAFETY: a fresh shared mapping of a caller's fd; the kernel picks the address.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), ulen, prot, libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC, fd, 0) };
        let (p, mode) = if p == libc::MAP_FAILED {
            // SAFETY: as above, plain shared mapping.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), ulen, prot, libc::MAP_SHARED, fd, 0) };
            if p == libc::MAP_FAILED {
                return Err(err(std::io::Error::last_os_error()));
            }
            (p, MapMode::Shared)
        } else {
            (p, MapMode::Sync)
        };
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(MappedPmem { base, len: ulen, mode, owned: true })
    }

    /// An anonymous shared mapping of `len` bytes (zero-filled), for tests and benchmarks.
    pub fn anonymous(len: usize) -> Result<Self> {
        let err = |source| PmemError::Map { path: "<anonymous>".into(), source };
        if len == 0 {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(MappedPmem { base, len, mode: MapMode::Anonymous, owned: true })
    }

    /// How the region was mapped.
    pub fn map_mode(&self) -> MapMode {
        self.mode
    }

    /// Base address (for callers that hand ranges to DAX clients).
    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        // SAFETY: callers pass offsets already checked against len (check_range), so the result
        // stays within the mapping (or one past its end for a zero-length range).
        unsafe { self.base.as_ptr().add(off) }
    }
}

impl Drop for MappedPmem {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we created exactly this mapping and nothing can use it after drop.
            unsafe {
                libc::munmap(self.base.as_ptr().cast(), self.len);
            }
        }
    }
}

impl Persist for MappedPmem {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let (o, l) = check_range(off, buf.len() as u64, self.len())?;
        // SAFETY: [o, o+l) is inside the mapping; buf is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(o), buf.as_mut_ptr(), l) };
        Ok(())
    }

    fn store(&self, off: u64, data: &[u8]) -> Result<()> {
        let (o, l) = check_range(off, data.len() as u64, self.len())?;
        // SAFETY: [o, o+l) is inside the mapping; data is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(o), l) };
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<()> {
        let (o, l) = check_range(off, len, self.len())?;
        // SAFETY: the range is inside the mapping.
        unsafe { flush::flush_raw(self.ptr(o), l) };
        Ok(())
    }

    fn fence(&self) {
        flush::fence();
    }

    fn nt_store(&self, off: u64, data: &[u8]) -> Result<()> {
        let (o, l) = check_range(off, data.len() as u64, self.len())?;
        // SAFETY: destination inside the mapping, source a distinct Rust buffer.
        unsafe { flush::nt_copy(self.ptr(o), data.as_ptr(), l) };
        Ok(())
    }

    fn nt_zero(&self, off: u64, len: u64) -> Result<()> {
        let (o, l) = check_range(off, len, self.len())?;
        // SAFETY: destination inside the mapping.
        unsafe { flush::nt_zero(self.ptr(o), l) };
        Ok(())
    }

    fn write_from(&self, off: u64, src: &dyn DataSource, src_off: usize, len: usize, nontemporal: bool) -> Result<()> {
        let (o, l) = check_range(off, len as u64, self.len())?;
        check_buf(src_off, len, src.len())?;
        match (nontemporal, src.as_ptr()) {
            (true, Some(p)) => {
                // A piece at a time: a streamed source (a window the client is still filling)
                // says when each piece is there.
                let mut done = 0;
                while done < l {
                    // Pieces end on STREAM_PIECE boundaries of the destination (aligned stores).
                    let n = (l - done).min(STREAM_PIECE - (o + done) % STREAM_PIECE);
                    src.wait_ready(src_off + done + n).map_err(PmemError::Copy)?;
                    // SAFETY: src_off+done+n is within the source (checked) whose pointer is
                    // valid for len() reads; destination inside the mapping; client buffers
                    // never alias pmem.
                    unsafe { flush::nt_copy(self.ptr(o + done), p.add(src_off + done), n) };
                    done += n;
                }
            }
            _ => {
                // SAFETY: destination inside the mapping and valid for l writes.
                unsafe { src.copy_to(src_off, self.ptr(o), l) }.map_err(PmemError::Copy)?;
                // SAFETY: the range is inside the mapping.
                unsafe { flush::flush_raw(self.ptr(o), l) };
            }
        }
        Ok(())
    }

    fn read_into(&self, off: u64, dst: &dyn DataSink, dst_off: usize, len: usize) -> Result<()> {
        let (o, l) = check_range(off, len as u64, self.len())?;
        check_buf(dst_off, len, dst.len())?;
        // SAFETY: the source range is inside the mapping and valid for l reads.
        unsafe { dst.copy_from(dst_off, self.ptr(o), l) }.map_err(PmemError::Copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SliceSink;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i % 251).unwrap_or(0).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn test_nt_store_unaligned_head_tail_roundtrip() {
        let pm = MappedPmem::anonymous(1 << 16).unwrap();
        for (off, len) in [(0u64, 4096usize), (3, 1), (5, 100), (7, 4093), (64, 63), (1000, 17), (9, 0)] {
            let data = pattern(len, u8::try_from(off % 256).unwrap_or(0));
            pm.nt_store(off, &data).unwrap();
            pm.fence();
            let mut back = vec![0u8; len];
            pm.read(off, &mut back).unwrap();
            assert_eq!(back, data, "off {off} len {len}");
        }
    }

    #[test]
    fn test_write_from_read_into_one_copy() {
        let pm = MappedPmem::anonymous(8192).unwrap();
        let src = pattern(5000, 9);
        pm.write_from(11, &src, 100, 4000, true).unwrap();
        pm.write_from(6000, &src, 0, 100, false).unwrap();
        pm.fence();
        let mut out = vec![0u8; 4000];
        pm.read_into(11, &SliceSink::new(&mut out), 0, 4000).unwrap();
        assert_eq!(&out[..], &src[100..4100]);
    }

    #[test]
    fn test_bad_offsets_are_errors() {
        let pm = MappedPmem::anonymous(4096).unwrap();
        assert!(pm.store(4090, &[0; 7]).is_err());
        assert!(pm.flush(u64::MAX, 2).is_err());
        assert!(pm.read(4096, &mut [0; 1]).is_err());
        assert!(pm.write_from(0, &vec![0u8; 10], 5, 6, true).is_err());
        assert!(pm.load_u64(4089).is_err());
        assert!(pm.store(4096, &[]).is_ok());
    }

    #[test]
    fn test_map_fd_maps_a_file() {
        let dir = std::env::temp_dir().join(format!("zus-pmem-mapfd-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&dir).unwrap();
        f.set_len(8192).unwrap();
        let pm = MappedPmem::map_fd(std::os::fd::AsFd::as_fd(&f), 8192, "test").unwrap();
        drop(f);
        pm.store(4096, b"abc").unwrap();
        let mut b = [0u8; 3];
        pm.read(4096, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        drop(pm);
        assert_eq!(&std::fs::read(&dir).unwrap()[4096..4099], b"abc");
        std::fs::remove_file(&dir).unwrap();
        assert!(
            MappedPmem::map_fd(std::os::fd::AsFd::as_fd(&std::fs::File::open("/dev/null").unwrap()), 0, "x").is_err()
        );
    }

    #[test]
    fn test_open_file_falls_back_and_persists() {
        let path = std::env::temp_dir().join(format!("zus-pmem-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let pm = MappedPmem::open_file(&path, Some(1 << 20)).unwrap();
            assert!(matches!(pm.map_mode(), MapMode::Sync | MapMode::Shared));
            pm.store_u64(4096, 0xdead_beef).unwrap();
            pm.persist(4096, 8).unwrap();
        }
        let pm = MappedPmem::open_file(&path, None).unwrap();
        assert_eq!(pm.len(), 1 << 20);
        assert_eq!(pm.load_u64(4096).unwrap(), 0xdead_beef);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn test_flush_kind_detected() {
        let k = flush::flush_kind();
        #[cfg(target_arch = "x86_64")]
        assert_ne!(k, flush::FlushKind::None);
        let _ = k;
    }
}

#[cfg(test)]
mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Non-temporal copies are byte-exact for every alignment and length, and write nothing
        /// outside their range.
        #[test]
        fn test_nt_store_any_alignment(off in 0u64..200, len in 0usize..700, seed in any::<u8>()) {
            let pm = MappedPmem::anonymous(4096).unwrap();
            pm.store(0, &[0xEEu8; 1024]).unwrap();
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 256).unwrap_or(0) ^ seed).collect();
            pm.nt_store(off, &data).unwrap();
            pm.fence();
            let mut back = vec![0u8; 1024];
            pm.read(0, &mut back).unwrap();
            let o = usize::try_from(off).unwrap();
            prop_assert_eq!(&back[o..o + len], &data[..]);
            prop_assert!(back[..o].iter().all(|&b| b == 0xEE));
            prop_assert!(back[o + len..].iter().all(|&b| b == 0xEE));
        }
    }
}
