//! Filesystem errors; each maps to one errno.

use zus_pmem::PmemError;

/// Errors of the filesystem. The doc comment of each variant is its meaning.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The name does not exist, or the inode is not allocated.
    #[error("no such file or directory")]
    NotFound,
    /// The name already exists.
    #[error("file exists")]
    Exists,
    /// A directory was expected.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was expected.
    #[error("is a directory")]
    IsDir,
    /// Directory not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// No space (blocks, inodes, journal room, xattr room).
    #[error("no space left on device")]
    NoSpace,
    /// Name too long.
    #[error("file name too long")]
    NameTooLong,
    /// Bad argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// File too large.
    #[error("file too large")]
    TooBig,
    /// Too many links.
    #[error("too many links")]
    TooManyLinks,
    /// Operation not permitted (hard link to a directory, ...).
    #[error("operation not permitted")]
    NotPermitted,
    /// No such xattr.
    #[error("no such attribute")]
    NoAttr,
    /// Buffer too small for the result.
    #[error("result too large for buffer")]
    Range,
    /// Not supported.
    #[error("operation not supported")]
    NotSupported,
    /// The superblock is missing, corrupt or does not match the device.
    #[error("bad superblock: {0}")]
    BadSuperblock(String),
    /// On-pmem metadata is inconsistent.
    #[error("filesystem corrupt: {0}")]
    Corrupt(String),
    /// An earlier internal failure left the in-memory state untrustworthy; remount.
    #[error("filesystem is shut down after an internal error")]
    Shutdown,
    /// Persistence layer error.
    #[error(transparent)]
    Pmem(#[from] PmemError),
}

impl FsError {
    /// A corruption error.
    pub fn corrupt(msg: impl Into<String>) -> FsError {
        FsError::Corrupt(msg.into())
    }

    /// The errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::TooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::BadSuperblock(_) => libc::EINVAL,
            FsError::Corrupt(_) => libc::EUCLEAN,
            FsError::Shutdown => libc::EIO,
            FsError::Pmem(e) => e.errno(),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, FsError>;
