//! The error convention: every op returns a non-negative value on success or a negative errno.

use std::fmt;

/// A positive POSIX errno value. Ops carry it on the wire as `-errno`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Self = Self(libc::EPERM);
    pub const ENOENT: Self = Self(libc::ENOENT);
    pub const EIO: Self = Self(libc::EIO);
    pub const EBADF: Self = Self(libc::EBADF);
    pub const EAGAIN: Self = Self(libc::EAGAIN);
    pub const ENOMEM: Self = Self(libc::ENOMEM);
    pub const EACCES: Self = Self(libc::EACCES);
    pub const EFAULT: Self = Self(libc::EFAULT);
    pub const EBUSY: Self = Self(libc::EBUSY);
    pub const EEXIST: Self = Self(libc::EEXIST);
    pub const EXDEV: Self = Self(libc::EXDEV);
    pub const ENODEV: Self = Self(libc::ENODEV);
    pub const ENOTDIR: Self = Self(libc::ENOTDIR);
    pub const EISDIR: Self = Self(libc::EISDIR);
    pub const EINVAL: Self = Self(libc::EINVAL);
    pub const EFBIG: Self = Self(libc::EFBIG);
    pub const ENOSPC: Self = Self(libc::ENOSPC);
    pub const EROFS: Self = Self(libc::EROFS);
    pub const EMLINK: Self = Self(libc::EMLINK);
    pub const ERANGE: Self = Self(libc::ERANGE);
    pub const ENAMETOOLONG: Self = Self(libc::ENAMETOOLONG);
    pub const ENOSYS: Self = Self(libc::ENOSYS);
    pub const ENOTEMPTY: Self = Self(libc::ENOTEMPTY);
    pub const ENODATA: Self = Self(libc::ENODATA);
    pub const EOVERFLOW: Self = Self(libc::EOVERFLOW);
    pub const EOPNOTSUPP: Self = Self(libc::EOPNOTSUPP);
    pub const ESHUTDOWN: Self = Self(libc::ESHUTDOWN);
    pub const ETIMEDOUT: Self = Self(libc::ETIMEDOUT);
    pub const EPROTO: Self = Self(libc::EPROTO);
    pub const ENOTCONN: Self = Self(libc::ENOTCONN);
    pub const EINTR: Self = Self(libc::EINTR);
    /// zufs-private, never returned to a program: the kernel caches this inode's pages
    /// ([`crate::ops::KernelCacheReq`]); the preload library serves the call through the kernel
    /// mount instead. Outside the range of Linux errnos.
    pub const EUSEKERNEL: Self = Self(4000);

    /// The wire form of this error (negative).
    #[must_use]
    pub fn to_wire(self) -> i64 {
        -i64::from(self.0.abs())
    }

    /// Decodes a wire result: `Ok(value)` for non-negative, `Err(errno)` for negative.
    ///
    /// # Errors
    /// The errno carried by a negative result (clamped to a valid range; anything odd is EIO).
    pub fn from_wire(result: i64) -> Result<u64, Self> {
        if result >= 0 {
            return Ok(result.unsigned_abs());
        }
        match i32::try_from(-result) {
            Ok(e) if (1..4096).contains(&e) => Err(Self(e)),
            _ => Err(Self::EIO),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, std::io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        Self::from_raw_os_error(e.0)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Self(e.raw_os_error().unwrap_or(libc::EIO))
    }
}
