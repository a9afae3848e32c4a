//! The FUSE kernel ABI as far as the bridge serves it (protocol 7.45 of Linux 6.18), and a
//! decoder and encoder that never trust the kernel's buffers.
//!
//! fuser keeps its parser private (0.18), so the io_uring transport decodes requests here. A
//! request arrives as three pieces: the [`InHeader`], the opcode's first argument struct and the
//! rest (names, write data). On `/dev/fuse` they are one buffer; on a FUSE io_uring entry the
//! header sits in `in_out`, the first argument in `op_in` and the rest in the payload buffer.
//! [`decode`] checks every length against the bytes present and every name for its NUL inside
//! the payload; anything malformed is an error for that one request ([`DecodeError`], answered
//! with its errno), never a panic or an out-of-bounds read.
//!
//! All structs are plain `#[repr(C)]` data with their sizes asserted, read with
//! [`read_struct`] (an unaligned copy of bytes known to be present).

#![allow(unsafe_code)]

use core::mem::size_of;

/// Protocol version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// Minor version we speak (6.18's).
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// The node id of the root.
pub const ROOT_ID: u64 = 1;

/// Opcodes.
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;

    /// The kernel's name of an opcode (`FUSE_` left off), or `OP<n>`.
    #[must_use]
    pub fn name(op: u32) -> String {
        let n = match op {
            LOOKUP => "LOOKUP",
            FORGET => "FORGET",
            GETATTR => "GETATTR",
            SETATTR => "SETATTR",
            READLINK => "READLINK",
            SYMLINK => "SYMLINK",
            MKNOD => "MKNOD",
            MKDIR => "MKDIR",
            UNLINK => "UNLINK",
            RMDIR => "RMDIR",
            RENAME => "RENAME",
            LINK => "LINK",
            OPEN => "OPEN",
            READ => "READ",
            WRITE => "WRITE",
            STATFS => "STATFS",
            RELEASE => "RELEASE",
            FSYNC => "FSYNC",
            SETXATTR => "SETXATTR",
            GETXATTR => "GETXATTR",
            LISTXATTR => "LISTXATTR",
            REMOVEXATTR => "REMOVEXATTR",
            FLUSH => "FLUSH",
            INIT => "INIT",
            OPENDIR => "OPENDIR",
            READDIR => "READDIR",
            RELEASEDIR => "RELEASEDIR",
            FSYNCDIR => "FSYNCDIR",
            ACCESS => "ACCESS",
            CREATE => "CREATE",
            INTERRUPT => "INTERRUPT",
            DESTROY => "DESTROY",
            IOCTL => "IOCTL",
            BATCH_FORGET => "BATCH_FORGET",
            FALLOCATE => "FALLOCATE",
            READDIRPLUS => "READDIRPLUS",
            RENAME2 => "RENAME2",
            LSEEK => "LSEEK",
            COPY_FILE_RANGE => "COPY_FILE_RANGE",
            SYNCFS => "SYNCFS",
            _ => return format!("OP{op}"),
        };
        n.to_owned()
    }
}

/// INIT flags (`flags | flags2 << 32`).
#[allow(missing_docs)]
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// Open reply flags.
#[allow(missing_docs)]
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID (clear the set-id bits).
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Notification codes (the `error` field of an unsolicited out header).
pub const NOTIFY_INVAL_INODE: i32 = 2;

/// FUSE io_uring commands (`sqe.cmd_op`).
pub const URING_CMD_REGISTER: u32 = 1;
/// Commit a reply and fetch the next request.
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// Marker for plain-data structs: any byte pattern is a valid value, no padding bytes.
///
/// # Safety
/// Only for `#[repr(C)]` structs of integers without implicit padding.
pub unsafe trait Plain: Copy + Default {}

macro_rules! plain {
    ($($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? } = $size:expr;)*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(size_of::<$name>() == $size);
        // SAFETY: repr(C) of integers and integer arrays; the size assert equals the sum of
        // the fields' sizes (checked by the padding test below), so there is no padding.
        unsafe impl Plain for $name {}
    )*};
}

plain! {
    /// Every request's header.
    pub struct InHeader { pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64, pub uid: u32,
        pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16 } = 40;
    /// Every reply's header.
    pub struct OutHeader { pub len: u32, pub error: i32, pub unique: u64 } = 16;
    /// INIT request (7.36+; older kernels send the first 16 bytes).
    pub struct InitIn { pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32, pub flags2: u32,
        pub unused: [u32; 11] } = 64;
    /// INIT reply.
    pub struct InitOut { pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub max_background: u16, pub congestion_threshold: u16, pub max_write: u32, pub time_gran: u32,
        pub max_pages: u16, pub map_alignment: u16, pub flags2: u32, pub max_stack_depth: u32,
        pub request_timeout: u16, pub unused: [u16; 11] } = 64;
    /// Attributes.
    pub struct FuseAttr { pub ino: u64, pub size: u64, pub blocks: u64, pub atime: u64, pub mtime: u64,
        pub ctime: u64, pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32, pub mode: u32,
        pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32, pub blksize: u32, pub flags: u32 } = 88;
    /// LOOKUP/MKNOD/MKDIR/SYMLINK/LINK reply.
    pub struct EntryOut { pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64,
        pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: FuseAttr } = 128;
    /// GETATTR request.
    pub struct GetattrIn { pub getattr_flags: u32, pub dummy: u32, pub fh: u64 } = 16;
    /// GETATTR/SETATTR reply.
    pub struct AttrOut { pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: FuseAttr } = 104;
    /// SETATTR request.
    pub struct SetattrIn { pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64, pub atimensec: u32, pub mtimensec: u32,
        pub ctimensec: u32, pub mode: u32, pub unused4: u32, pub uid: u32, pub gid: u32, pub unused5: u32 } = 88;
    /// MKNOD request.
    pub struct MknodIn { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32 } = 16;
    /// MKDIR request.
    pub struct MkdirIn { pub mode: u32, pub umask: u32 } = 8;
    /// RENAME request.
    pub struct RenameIn { pub newdir: u64 } = 8;
    /// RENAME2 request.
    pub struct Rename2In { pub newdir: u64, pub flags: u32, pub padding: u32 } = 16;
    /// LINK request.
    pub struct LinkIn { pub oldnodeid: u64 } = 8;
    /// OPEN/OPENDIR request.
    pub struct OpenIn { pub flags: u32, pub open_flags: u32 } = 8;
    /// OPEN/OPENDIR reply (and CREATE's second part).
    pub struct OpenOut { pub fh: u64, pub open_flags: u32, pub backing_id: i32 } = 16;
    /// CREATE request.
    pub struct CreateIn { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32 } = 16;
    /// RELEASE/RELEASEDIR request.
    pub struct ReleaseIn { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64 } = 24;
    /// FLUSH request.
    pub struct FlushIn { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64 } = 24;
    /// READ/READDIR request.
    pub struct ReadIn { pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32, pub lock_owner: u64,
        pub flags: u32, pub padding: u32 } = 40;
    /// WRITE request.
    pub struct WriteIn { pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32, pub lock_owner: u64,
        pub flags: u32, pub padding: u32 } = 40;
    /// WRITE reply.
    pub struct WriteOut { pub size: u32, pub padding: u32 } = 8;
    /// STATFS reply.
    pub struct StatfsOut { pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64,
        pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32, pub spare: [u32; 6] } = 80;
    /// FSYNC/FSYNCDIR request.
    pub struct FsyncIn { pub fh: u64, pub fsync_flags: u32, pub padding: u32 } = 16;
    /// SETXATTR request (without FUSE_SETXATTR_EXT, which we do not negotiate).
    pub struct SetxattrIn { pub size: u32, pub flags: u32 } = 8;
    /// GETXATTR/LISTXATTR request.
    pub struct GetxattrIn { pub size: u32, pub padding: u32 } = 8;
    /// GETXATTR/LISTXATTR size reply.
    pub struct GetxattrOut { pub size: u32, pub padding: u32 } = 8;
    /// ACCESS request.
    pub struct AccessIn { pub mask: u32, pub padding: u32 } = 8;
    /// INTERRUPT request.
    pub struct InterruptIn { pub unique: u64 } = 8;
    /// FORGET request.
    pub struct ForgetIn { pub nlookup: u64 } = 8;
    /// BATCH_FORGET request head.
    pub struct BatchForgetIn { pub count: u32, pub dummy: u32 } = 8;
    /// One BATCH_FORGET item.
    pub struct ForgetOne { pub nodeid: u64, pub nlookup: u64 } = 16;
    /// FALLOCATE request.
    pub struct FallocateIn { pub fh: u64, pub offset: u64, pub length: u64, pub mode: u32, pub padding: u32 } = 32;
    /// LSEEK request.
    pub struct LseekIn { pub fh: u64, pub offset: u64, pub whence: u32, pub padding: u32 } = 24;
    /// COPY_FILE_RANGE request.
    pub struct CopyFileRangeIn { pub fh_in: u64, pub off_in: u64, pub nodeid_out: u64, pub fh_out: u64,
        pub off_out: u64, pub len: u64, pub flags: u64 } = 56;
    /// IOCTL request.
    pub struct IoctlIn { pub fh: u64, pub flags: u32, pub cmd: u32, pub arg: u64, pub in_size: u32,
        pub out_size: u32 } = 32;
    /// IOCTL reply head.
    pub struct IoctlOut { pub result: i32, pub flags: u32, pub in_iovs: u32, pub out_iovs: u32 } = 16;
    /// A READDIR entry's head (the name follows, padded to 8 bytes).
    pub struct Dirent { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32 } = 24;
    /// FUSE_NOTIFY_INVAL_INODE.
    pub struct NotifyInvalInode { pub ino: u64, pub off: i64, pub len: i64 } = 24;
    /// The io_uring entry's `ring_ent_in_out`.
    pub struct UringEntInOut { pub flags: u64, pub commit_id: u64, pub payload_sz: u32, pub padding: u32,
        pub reserved: u64 } = 32;
    /// The 80-byte command area's `fuse_uring_cmd_req` (first 24 bytes).
    pub struct UringCmdReq { pub flags: u64, pub commit_id: u64, pub qid: u16, pub padding: [u8; 6] } = 24;
}

/// Size of `fuse_uring_req_header.in_out` and `.op_in`.
pub const URING_HDR_AREA: usize = 128;
/// Size of `fuse_uring_req_header`: in_out, op_in, ring_ent_in_out.
pub const URING_REQ_HEADER: usize = 2 * URING_HDR_AREA + size_of::<UringEntInOut>();
const _: () = assert!(URING_REQ_HEADER == 288);

/// Reads a `T` from the start of `b`, or `None` when `b` is shorter.
#[must_use]
pub fn read_struct<T: Plain>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `b` holds at least size_of::<T>() bytes (checked); T is Plain (any bytes are a
    // valid value); read_unaligned has no alignment requirement.
    Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// The bytes of a plain struct.
#[must_use]
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain (no padding, every byte initialised); the slice covers exactly `v`.
    unsafe { core::slice::from_raw_parts(core::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

/// Why a request could not be decoded; answered with [`DecodeError::errno`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header's length disagrees with the bytes present, or is shorter than a header.
    #[error("bad request length")]
    BadLength,
    /// The opcode's argument struct is missing or truncated.
    #[error("truncated argument of opcode {0}")]
    Truncated(u32),
    /// A name without its NUL inside the payload, or an empty one.
    #[error("bad name in opcode {0}")]
    BadName(u32),
    /// An opcode we do not serve.
    #[error("unknown opcode {0}")]
    Unknown(u32),
}

impl DecodeError {
    /// The errno of the reply.
    #[must_use]
    pub fn errno(self) -> i32 {
        match self {
            Self::Unknown(_) => libc::ENOSYS,
            Self::BadLength | Self::Truncated(_) | Self::BadName(_) => libc::EINVAL,
        }
    }
}

/// A decoded request; names and data borrow the request's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request<'a> {
    Init(InitIn),
    Destroy,
    Lookup { name: &'a [u8] },
    Forget(ForgetIn),
    BatchForget(Vec<ForgetOne>),
    Getattr(GetattrIn),
    Setattr(SetattrIn),
    Readlink,
    Symlink { name: &'a [u8], target: &'a [u8] },
    Mknod { arg: MknodIn, name: &'a [u8] },
    Mkdir { arg: MkdirIn, name: &'a [u8] },
    Unlink { name: &'a [u8] },
    Rmdir { name: &'a [u8] },
    Rename { newdir: u64, flags: u32, name: &'a [u8], newname: &'a [u8] },
    Link { arg: LinkIn, name: &'a [u8] },
    Open(OpenIn),
    Opendir(OpenIn),
    Read(ReadIn),
    Readdir(ReadIn),
    Readdirplus(ReadIn),
    Write { arg: WriteIn, data: &'a [u8] },
    Statfs,
    Release(ReleaseIn),
    Releasedir(ReleaseIn),
    Fsync(FsyncIn),
    Fsyncdir(FsyncIn),
    Flush(FlushIn),
    Setxattr { arg: SetxattrIn, name: &'a [u8], value: &'a [u8] },
    Getxattr { arg: GetxattrIn, name: &'a [u8] },
    Listxattr(GetxattrIn),
    Removexattr { name: &'a [u8] },
    Access(AccessIn),
    Create { arg: CreateIn, name: &'a [u8] },
    Interrupt(InterruptIn),
    Ioctl { arg: IoctlIn, data: &'a [u8] },
    Fallocate(FallocateIn),
    Lseek(LseekIn),
    CopyFileRange(CopyFileRangeIn),
    Syncfs,
}

/// The size of `opcode`'s first argument struct (the part that goes to `op_in` on a ring).
#[must_use]
pub fn arg0_size(opcode: u32) -> usize {
    match opcode {
        op::INIT => size_of::<InitIn>(),
        op::FORGET => size_of::<ForgetIn>(),
        op::BATCH_FORGET => size_of::<BatchForgetIn>(),
        op::GETATTR => size_of::<GetattrIn>(),
        op::SETATTR => size_of::<SetattrIn>(),
        op::MKNOD => size_of::<MknodIn>(),
        op::MKDIR => size_of::<MkdirIn>(),
        op::RENAME => size_of::<RenameIn>(),
        op::RENAME2 => size_of::<Rename2In>(),
        op::LINK => size_of::<LinkIn>(),
        op::OPEN | op::OPENDIR => size_of::<OpenIn>(),
        op::READ | op::READDIR | op::READDIRPLUS => size_of::<ReadIn>(),
        op::WRITE => size_of::<WriteIn>(),
        op::RELEASE | op::RELEASEDIR => size_of::<ReleaseIn>(),
        op::FSYNC | op::FSYNCDIR => size_of::<FsyncIn>(),
        op::FLUSH => size_of::<FlushIn>(),
        op::SETXATTR => size_of::<SetxattrIn>(),
        op::GETXATTR | op::LISTXATTR => size_of::<GetxattrIn>(),
        op::ACCESS => size_of::<AccessIn>(),
        op::CREATE => size_of::<CreateIn>(),
        op::INTERRUPT => size_of::<InterruptIn>(),
        op::IOCTL => size_of::<IoctlIn>(),
        op::FALLOCATE => size_of::<FallocateIn>(),
        op::LSEEK => size_of::<LseekIn>(),
        op::COPY_FILE_RANGE => size_of::<CopyFileRangeIn>(),
        // LOOKUP, UNLINK, RMDIR, SYMLINK, REMOVEXATTR: the kernel sends an empty first
        // argument (fuse_set_zero_arg0) and the names in the rest; the others have none.
        _ => 0,
    }
}

/// A NUL-terminated, non-empty name at the start of `b`: (name, the bytes after its NUL).
fn name(b: &[u8], opcode: u32) -> Result<(&[u8], &[u8]), DecodeError> {
    let end = b.iter().position(|&c| c == 0).ok_or(DecodeError::BadName(opcode))?;
    if end == 0 {
        return Err(DecodeError::BadName(opcode));
    }
    Ok((&b[..end], &b[end + 1..]))
}

fn arg<T: Plain>(a: &[u8], opcode: u32) -> Result<T, DecodeError> {
    read_struct(a).ok_or(DecodeError::Truncated(opcode))
}

/// Decodes a request from its three pieces (see the module doc). `arg0` may be longer than the
/// opcode's struct (a ring's `op_in` is 128 bytes); `rest` is exactly the payload's valid bytes.
///
/// # Errors
/// The request is malformed or its opcode unknown.
pub fn decode<'a>(h: &InHeader, arg0: &[u8], rest: &'a [u8]) -> Result<Request<'a>, DecodeError> {
    let o = h.opcode;
    Ok(match o {
        op::INIT => {
            // Kernels before 7.36 send the 16-byte head only.
            let mut b = [0u8; size_of::<InitIn>()];
            let n = arg0.len().min(b.len());
            if n < 16 {
                return Err(DecodeError::Truncated(o));
            }
            b[..n].copy_from_slice(&arg0[..n]);
            Request::Init(arg(&b, o)?)
        }
        op::DESTROY => Request::Destroy,
        op::LOOKUP => Request::Lookup { name: name(rest, o)?.0 },
        op::FORGET => Request::Forget(arg(arg0, o)?),
        op::BATCH_FORGET => {
            let head: BatchForgetIn = arg(arg0, o)?;
            let n = head.count as usize;
            let need = n.checked_mul(size_of::<ForgetOne>()).ok_or(DecodeError::Truncated(o))?;
            if rest.len() < need {
                return Err(DecodeError::Truncated(o));
            }
            Request::BatchForget(
                rest[..need].chunks_exact(size_of::<ForgetOne>()).filter_map(read_struct::<ForgetOne>).collect(),
            )
        }
        op::GETATTR => Request::Getattr(arg(arg0, o)?),
        op::SETATTR => Request::Setattr(arg(arg0, o)?),
        op::READLINK => Request::Readlink,
        op::SYMLINK => {
            let (n, r) = name(rest, o)?;
            Request::Symlink { name: n, target: name(r, o)?.0 }
        }
        op::MKNOD => Request::Mknod { arg: arg(arg0, o)?, name: name(rest, o)?.0 },
        op::MKDIR => Request::Mkdir { arg: arg(arg0, o)?, name: name(rest, o)?.0 },
        op::UNLINK => Request::Unlink { name: name(rest, o)?.0 },
        op::RMDIR => Request::Rmdir { name: name(rest, o)?.0 },
        op::RENAME | op::RENAME2 => {
            let (newdir, flags) = if o == op::RENAME {
                (arg::<RenameIn>(arg0, o)?.newdir, 0)
            } else {
                let a: Rename2In = arg(arg0, o)?;
                (a.newdir, a.flags)
            };
            let (n, r) = name(rest, o)?;
            Request::Rename { newdir, flags, name: n, newname: name(r, o)?.0 }
        }
        op::LINK => Request::Link { arg: arg(arg0, o)?, name: name(rest, o)?.0 },
        op::OPEN => Request::Open(arg(arg0, o)?),
        op::OPENDIR => Request::Opendir(arg(arg0, o)?),
        op::READ => Request::Read(arg(arg0, o)?),
        op::READDIR => Request::Readdir(arg(arg0, o)?),
        op::READDIRPLUS => Request::Readdirplus(arg(arg0, o)?),
        op::WRITE => {
            let a: WriteIn = arg(arg0, o)?;
            let data = rest.get(..a.size as usize).ok_or(DecodeError::BadLength)?;
            Request::Write { arg: a, data }
        }
        op::STATFS => Request::Statfs,
        op::RELEASE => Request::Release(arg(arg0, o)?),
        op::RELEASEDIR => Request::Releasedir(arg(arg0, o)?),
        op::FSYNC => Request::Fsync(arg(arg0, o)?),
        op::FSYNCDIR => Request::Fsyncdir(arg(arg0, o)?),
        op::FLUSH => Request::Flush(arg(arg0, o)?),
        op::SETXATTR => {
            let a: SetxattrIn = arg(arg0, o)?;
            let (n, r) = name(rest, o)?;
            let value = r.get(..a.size as usize).ok_or(DecodeError::BadLength)?;
            Request::Setxattr { arg: a, name: n, value }
        }
        op::GETXATTR => Request::Getxattr { arg: arg(arg0, o)?, name: name(rest, o)?.0 },
        op::LISTXATTR => Request::Listxattr(arg(arg0, o)?),
        op::REMOVEXATTR => Request::Removexattr { name: name(rest, o)?.0 },
        op::ACCESS => Request::Access(arg(arg0, o)?),
        op::CREATE => Request::Create { arg: arg(arg0, o)?, name: name(rest, o)?.0 },
        op::INTERRUPT => Request::Interrupt(arg(arg0, o)?),
        op::IOCTL => {
            let a: IoctlIn = arg(arg0, o)?;
            let data = rest.get(..a.in_size as usize).ok_or(DecodeError::BadLength)?;
            Request::Ioctl { arg: a, data }
        }
        op::FALLOCATE => Request::Fallocate(arg(arg0, o)?),
        op::LSEEK => Request::Lseek(arg(arg0, o)?),
        op::COPY_FILE_RANGE => Request::CopyFileRange(arg(arg0, o)?),
        op::SYNCFS => Request::Syncfs,
        _ => return Err(DecodeError::Unknown(o)),
    })
}

/// Splits one `/dev/fuse` message (`buf` = the bytes `read` returned) into its header and
/// decodes it. The header is returned whenever it is present, so that an error can be answered.
///
/// # Errors
/// `(None, _)`: not even a header (or its length disagrees with `buf`): nothing to answer;
/// `(Some(h), e)`: answer `h.unique` with `e.errno()`.
pub fn decode_dev(buf: &[u8]) -> Result<(InHeader, Request<'_>), (Option<InHeader>, DecodeError)> {
    let h: InHeader = read_struct(buf).ok_or((None, DecodeError::BadLength))?;
    let len = h.len as usize;
    if len < size_of::<InHeader>() || len > buf.len() {
        return Err((None, DecodeError::BadLength));
    }
    let body = &buf[size_of::<InHeader>()..len];
    let a0 = arg0_size(h.opcode).min(body.len());
    let (arg0, rest) = body.split_at(a0);
    decode(&h, arg0, rest).map(|r| (h, r)).map_err(|e| (Some(h), e))
}

/// Appends one READDIR entry to `out` if it fits in `max` bytes; false when it does not.
pub fn push_dirent(out: &mut Vec<u8>, max: usize, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
    let Ok(namelen) = u32::try_from(name.len()) else { return false };
    let len = size_of::<Dirent>() + name.len();
    let padded = len.div_ceil(8) * 8;
    if out.len() + padded > max {
        return false;
    }
    out.extend_from_slice(bytes_of(&Dirent { ino, off, namelen, typ }));
    out.extend_from_slice(name);
    out.resize(out.len() + (padded - len), 0);
    true
}

/// Appends one READDIRPLUS entry (`fuse_direntplus`: the entry reply, then the dirent) to
/// `out` if it fits in `max` bytes; false when it does not.
pub fn push_direntplus(
    out: &mut Vec<u8>,
    max: usize,
    entry: &EntryOut,
    ino: u64,
    off: u64,
    typ: u32,
    name: &[u8],
) -> bool {
    let Ok(namelen) = u32::try_from(name.len()) else { return false };
    let len = size_of::<EntryOut>() + size_of::<Dirent>() + name.len();
    let padded = len.div_ceil(8) * 8;
    if out.len() + padded > max {
        return false;
    }
    out.extend_from_slice(bytes_of(entry));
    out.extend_from_slice(bytes_of(&Dirent { ino, off, namelen, typ }));
    out.extend_from_slice(name);
    out.resize(out.len() + (padded - len), 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(opcode: u32, len: usize) -> InHeader {
        InHeader { len: u32::try_from(len).unwrap(), opcode, unique: 7, nodeid: 1, ..InHeader::default() }
    }

    fn msg(opcode: u32, arg0: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut v = bytes_of(&hdr(opcode, 40 + arg0.len() + rest.len())).to_vec();
        v.extend_from_slice(arg0);
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn no_padding() {
        // Sum of the field sizes equals the struct size (plain! asserts the size itself).
        assert_eq!(size_of::<InHeader>(), 4 + 4 + 8 + 8 + 4 * 3 + 2 + 2);
        assert_eq!(size_of::<EntryOut>(), 8 * 4 + 4 * 2 + size_of::<FuseAttr>());
        assert_eq!(size_of::<AttrOut>(), 8 + 4 + 4 + size_of::<FuseAttr>());
    }

    #[test]
    fn decodes_names_and_data() {
        let m = msg(op::LOOKUP, &[], b"abc\0");
        let (_, r) = decode_dev(&m).unwrap();
        assert_eq!(r, Request::Lookup { name: b"abc" });
        let ren = Rename2In { newdir: 5, flags: 1, padding: 0 };
        let m = msg(op::RENAME2, bytes_of(&ren), b"a\0bb\0");
        let (_, r) = decode_dev(&m).unwrap();
        assert_eq!(r, Request::Rename { newdir: 5, flags: 1, name: b"a", newname: b"bb" });
        let w = WriteIn { size: 3, ..WriteIn::default() };
        let m = msg(op::WRITE, bytes_of(&w), b"xyz");
        let (_, r) = decode_dev(&m).unwrap();
        assert!(matches!(r, Request::Write { data: b"xyz", .. }));
    }

    #[test]
    fn rejects_malformed() {
        // Name without NUL.
        let m = msg(op::LOOKUP, &[], b"abc");
        assert_eq!(decode_dev(&m).unwrap_err().1, DecodeError::BadName(op::LOOKUP));
        // Write length past the payload.
        let w = WriteIn { size: 4096, ..WriteIn::default() };
        let m = msg(op::WRITE, bytes_of(&w), b"xyz");
        assert_eq!(decode_dev(&m).unwrap_err().1, DecodeError::BadLength);
        // Header length past the buffer.
        let mut m = msg(op::GETATTR, &[0; 16], &[]);
        m[0] = 200;
        assert_eq!(decode_dev(&m).unwrap_err(), (None, DecodeError::BadLength));
        // Unknown opcode: ENOSYS.
        let m = msg(9999, &[], &[]);
        let e = decode_dev(&m).unwrap_err();
        assert_eq!(e.1.errno(), libc::ENOSYS);
        assert_eq!(e.0.unwrap().unique, 7);
        // Batch forget count past the payload.
        let m = msg(op::BATCH_FORGET, bytes_of(&BatchForgetIn { count: u32::MAX, dummy: 0 }), &[0; 16]);
        assert_eq!(decode_dev(&m).unwrap_err().1, DecodeError::Truncated(op::BATCH_FORGET));
    }

    #[test]
    fn dirents_pad_and_stop() {
        let mut v = Vec::new();
        assert!(push_dirent(&mut v, 64, 1, 1, 4, b"abc"));
        assert_eq!(v.len(), 32);
        assert!(!push_dirent(&mut v, 64, 2, 2, 4, b"abcdefghijk"));
        assert_eq!(v.len(), 32);
    }

    #[test]
    fn direntplus_is_entry_then_dirent_padded() {
        let mut v = Vec::new();
        let e = EntryOut { nodeid: 5, generation: 1, ..EntryOut::default() };
        assert!(push_direntplus(&mut v, 4096, &e, 5, 9, 8, b"name"));
        // fuse_entry_out (128) + fuse_dirent (24) + "name", padded to 8.
        assert_eq!(v.len(), 160);
        let d: Dirent = read_struct(&v[128..]).unwrap();
        assert_eq!((d.ino, d.off, d.namelen, d.typ), (5, 9, 4, 8));
        assert_eq!(&v[152..156], b"name");
        assert!(!push_direntplus(&mut v, 300, &e, 5, 10, 8, b"other"));
        assert_eq!(v.len(), 160);
        assert_eq!(op::name(op::READDIRPLUS), "READDIRPLUS");
        assert_eq!(op::name(99), "OP99");
        let m = msg(op::READDIRPLUS, bytes_of(&ReadIn { size: 4096, ..ReadIn::default() }), &[]);
        let r = decode_dev(&m).unwrap();
        assert!(matches!(r.1, Request::Readdirplus(ReadIn { size: 4096, .. })));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any bytes as a /dev/fuse message: an error or a request, never a panic.
            #[test]
            fn any_dev_buffer(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_dev(&buf);
            }

            /// A well-formed header over any opcode and arguments (the ring's three pieces),
            /// with lengths and names drawn at random.
            #[test]
            fn any_ring_request(
                opcode in prop_oneof![0u32..60, any::<u32>()],
                arg0 in proptest::collection::vec(any::<u8>(), 0..128),
                rest in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..256),
            ) {
                let h = InHeader { opcode, ..InHeader::default() };
                match decode(&h, &arg0, &rest) {
                    Ok(Request::Write { data, .. } | Request::Ioctl { data, .. }) => {
                        prop_assert!(data.len() <= rest.len());
                    }
                    Ok(Request::Lookup { name } | Request::Unlink { name } | Request::Rmdir { name }) => {
                        prop_assert!(!name.contains(&0) && !name.is_empty() && name.len() < rest.len());
                    }
                    Ok(_) => {}
                    Err(DecodeError::Unknown(o)) => prop_assert!(o == opcode),
                    Err(e) => prop_assert_eq!(e.errno(), libc::EINVAL),
                }
            }

            /// A truncated copy of a valid message never decodes past its end.
            #[test]
            fn truncated_messages(cut in 0usize..80, namelen in 1usize..20) {
                let mut rest = vec![b'x'; namelen];
                rest.push(0);
                let arg0 = bytes_of(&MkdirIn { mode: 0o755, umask: 0 }).to_vec();
                let mut m = bytes_of(&InHeader {
                    len: u32::try_from(40 + arg0.len() + rest.len()).unwrap(),
                    opcode: op::MKDIR, ..InHeader::default()
                }).to_vec();
                m.extend_from_slice(&arg0);
                m.extend_from_slice(&rest);
                let keep = m.len().saturating_sub(cut);
                let r = decode_dev(&m[..keep]);
                if cut == 0 { prop_assert!(r.is_ok()); } else { prop_assert!(r.is_err()); }
            }
        }
    }
}
