//! Op codes and the request/reply structs carried in a channel slot.
//!
//! A request is an [`OpHeader`] plus, in the slot's inline payload, the op's fixed request struct
//! followed by its variable bytes (names, targets). The reply reuses the header (`result`,
//! `out_len`, `data_len`) and the payload (the op's reply struct). Bulk data (read/write/readdir/
//! xattr values) travels in the slot's data window, or, with [`DATA_REMOTE_IOV`], directly
//! between the caller's memory and pmem via `process_vm_readv/writev` (one copy, P-CH6).
//!
//! All integers are native-endian (both peers run on the same machine); on-pmem structures are in
//! [`crate::device`] and are little-endian.

use core::mem::{offset_of, size_of};

/// Marker for plain-old-data wire structs: every bit pattern is valid, there is no padding.
///
/// The proof is zerocopy's: each implementor derives [`zerocopy::FromBytes`] (every bit pattern
/// is a valid value), [`zerocopy::IntoBytes`] (no padding, so every byte is initialised; the
/// derive refuses a struct with padding at compile time) and [`zerocopy::Immutable`] (no interior
/// mutability). A padded struct cannot be `Pod`, so no uninitialised byte is ever sent:
///
/// ```compile_fail
/// # use zus_api::ops::Pod;
/// // 4 bytes of padding after `a`: the IntoBytes derive refuses it.
/// #[repr(C)]
/// #[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
/// struct Padded {
///     a: u32,
///     b: u64,
/// }
/// impl Pod for Padded {}
/// ```
///
/// The same struct without the hole is accepted:
///
/// ```
/// # use zus_api::ops::Pod;
/// #[repr(C)]
/// #[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
/// struct Packed {
///     a: u32,
///     reserved: u32,
///     b: u64,
/// }
/// impl Pod for Packed {}
/// assert_eq!(Packed::read_from(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]).map(|p| p.b), Some(2));
/// ```
pub trait Pod: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable + Copy + 'static {
    /// Reads a value from the start of `bytes`, or `None` if `bytes` is too short.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        <Self as zerocopy::FromBytes>::read_from_prefix(bytes).ok().map(|(v, _)| v)
    }

    /// The value's bytes.
    fn as_bytes(&self) -> &[u8] {
        <Self as zerocopy::IntoBytes>::as_bytes(self)
    }
}

/// Declares wire structs as [`Pod`] and asserts their sizes. The [`Pod`] bound itself proves
/// there is no padding: each struct must derive zerocopy's `FromBytes`, `IntoBytes` (which
/// rejects padding) and `Immutable`.
macro_rules! pod_impl {
    ($($t:ty = $size:expr),* $(,)?) => {$(
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        impl $crate::ops::Pod for $t {}
    )*};
}
pub(crate) use pod_impl;

/// Op codes. Values are stable; gaps are never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum OpCode {
    /// Does nothing; measures the channel round trip.
    Noop = 1,
    Statfs = 2,
    Sync = 3,
    Lookup = 4,
    Getattr = 5,
    Setattr = 6,
    Create = 7,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Symlink = 14,
    Readlink = 15,
    Readdir = 16,
    Open = 17,
    Release = 18,
    Read = 19,
    Write = 20,
    Fsync = 21,
    Fallocate = 22,
    Getxattr = 23,
    Setxattr = 24,
    Listxattr = 25,
    Removexattr = 26,
    /// File range -> pmem extents, for the dax data path.
    Map = 27,
    /// Commits size/mtime after a client wrote through extents from [`OpCode::Map`].
    MapDone = 28,
    /// The caller drops `nlookup` references to an inode.
    Forget = 29,
    /// The FUSE bridge says the kernel starts or stops caching an inode's pages
    /// ([`KernelCacheReq`]); served by zusd itself, never by the plugin.
    KernelCache = 30,
    /// The FUSE bridge issues (or revokes) a ticket for one inode to one user ([`TicketReq`]);
    /// served by zusd itself.
    Ticket = 31,
    /// copy_file_range(2) between two open files of one mount, served in one op
    /// ([`CopyFileRangeReq`]); the result is the number of bytes copied.
    CopyFileRange = 32,
    /// Create a regular file and open it, in one op ([`CreateReq`], the name following): the
    /// reply is a [`CreateOpenReply`]. Served by zusd itself from the plugin's `Create` and
    /// `Open` (plugins never see this op code); a failed open gives the create's lookup
    /// reference back and answers the open's errno (the file stays, as after `Create`).
    CreateOpen = 33,
    /// Drops lookup references to many inodes in one op: the payload is one or more
    /// [`ForgetReq`]s back to back (nothing else). Served by zusd as that many `Forget`s of the
    /// plugin (plugins never see this op code).
    ForgetMany = 34,
    /// Releases many file handles in one op: the payload is one or more [`ReleaseReq`]s back
    /// to back (nothing else). Served by zusd as that many `Release`s of the plugin (plugins
    /// never see this op code); the answer is 0 whatever they answered.
    ReleaseMany = 35,
    /// Read directory entries with their inodes' attributes ([`ReaddirReq`]): the data window
    /// holds [`DirentPlus`] records; the result is the number of bytes written. Each record
    /// with a nonzero `attr.ino` counted a lookup reference, as a `Lookup` of its name would
    /// (`.` and `..` get none). Served by zusd itself from the plugin's `Readdir` and a
    /// `Lookup` per entry (plugins never see this op code).
    ReaddirPlus = 36,
}

impl OpCode {
    /// Every op code, in numeric order.
    pub const ALL: [Self; 36] = [
        Self::Noop,
        Self::Statfs,
        Self::Sync,
        Self::Lookup,
        Self::Getattr,
        Self::Setattr,
        Self::Create,
        Self::Mknod,
        Self::Mkdir,
        Self::Unlink,
        Self::Rmdir,
        Self::Rename,
        Self::Link,
        Self::Symlink,
        Self::Readlink,
        Self::Readdir,
        Self::Open,
        Self::Release,
        Self::Read,
        Self::Write,
        Self::Fsync,
        Self::Fallocate,
        Self::Getxattr,
        Self::Setxattr,
        Self::Listxattr,
        Self::Removexattr,
        Self::Map,
        Self::MapDone,
        Self::Forget,
        Self::KernelCache,
        Self::Ticket,
        Self::CopyFileRange,
        Self::CreateOpen,
        Self::ForgetMany,
        Self::ReleaseMany,
        Self::ReaddirPlus,
    ];

    /// Decodes a wire op code.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        let idx = usize::try_from(v).ok()?.checked_sub(1)?;
        Self::ALL.get(idx).copied()
    }

    /// Size of the fixed request struct this op carries in the payload.
    #[must_use]
    pub fn request_size(self) -> usize {
        match self {
            Self::Noop | Self::Statfs | Self::Sync => 0,
            Self::Lookup | Self::Unlink | Self::Rmdir => size_of::<NameReq>(),
            Self::Getattr | Self::Readlink | Self::Listxattr => size_of::<InoReq>(),
            Self::Setattr => size_of::<SetattrReq>(),
            Self::Create | Self::Mknod | Self::Mkdir | Self::CreateOpen => size_of::<CreateReq>(),
            Self::Rename => size_of::<RenameReq>(),
            Self::Link => size_of::<LinkReq>(),
            Self::Symlink => size_of::<SymlinkReq>(),
            Self::Readdir | Self::ReaddirPlus => size_of::<ReaddirReq>(),
            Self::Open => size_of::<OpenReq>(),
            Self::Release | Self::ReleaseMany => size_of::<ReleaseReq>(),
            Self::Read | Self::Write => size_of::<IoReq>(),
            Self::Fsync => size_of::<FsyncReq>(),
            Self::Fallocate => size_of::<FallocateReq>(),
            Self::Getxattr | Self::Setxattr | Self::Removexattr => size_of::<XattrReq>(),
            Self::Map => size_of::<MapReq>(),
            Self::MapDone => size_of::<MapDoneReq>(),
            Self::Forget | Self::ForgetMany => size_of::<ForgetReq>(),
            Self::KernelCache => size_of::<KernelCacheReq>(),
            Self::Ticket => size_of::<TicketReq>(),
            Self::CopyFileRange => size_of::<CopyFileRangeReq>(),
        }
    }
}

/// Request flag: the caller was interrupted by a signal while waiting (informational).
pub const HDR_F_INTR: u32 = 1 << 0;
/// Request flag: the caller spins for the reply (it runs on another CPU than the ZT) and sends
/// back to back (its previous spun-for reply came less than 100 µs before). After serving such
/// an op the ZT polls its lane for a while instead of sleeping at once, so the caller's next op
/// needs no cross-CPU wake (P-CH2).
pub const HDR_F_CLIENT_SPINS: u32 = 1 << 1;

/// Data travels in the slot's data window (bounce copy; counted as such).
pub const DATA_WINDOW: u32 = 0;
/// Data travels between the caller's memory and pmem via process_vm_readv/writev: the payload
/// after the request struct holds `IoReq::niov` [`IoVec`]s in the caller's address space.
pub const DATA_REMOTE_IOV: u32 = 1;
/// Data travels in the slot's data window, and the window fills while the op runs: the side
/// that produces the data raises the slot's `data_ready` word (`Slot::data_ready`, bytes valid
/// from the window's start) as it copies, and the other side copies each part out as soon as
/// it is there. A write's producer is the client (it may submit before it has copied anything;
/// `OpHeader::data_len` says how much will come), a read's the server. With the ZT on another
/// CPU the two copies overlap, so the op takes about one copy's time (see docs/design.md,
/// "streamed window"). Needs [`crate::features::STREAMED_WINDOW`]; counted as a window op.
pub const DATA_WINDOW_STREAM: u32 = 2;

/// The op header at the start of every slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
pub struct OpHeader {
    /// [`OpCode`] as u32.
    pub opcode: u32,
    /// `HDR_F_*`.
    pub flags: u32,
    /// Which mount the op addresses (from a control-socket mount/attach).
    pub mount_id: u32,
    /// Request bytes used in the payload (fixed struct + variable part).
    pub in_len: u32,
    /// Reply bytes the server wrote into the payload.
    pub out_len: u32,
    /// Bytes of data in the window (request: write data; reply: read data).
    pub data_len: u32,
    /// Client's sequence number, echoed back.
    pub seq: u64,
    /// Reply: >= 0 success value (op-specific, e.g. bytes), < 0 negative errno.
    pub result: i64,
    /// Caller credentials, honoured only when the client is privileged (the FUSE bridge acting
    /// for users); otherwise the server substitutes the peer credentials of the socket.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// See `uid`.
    pub pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The ticket ([`OpCode::Ticket`]) a client attached to a mount it does not own shows for the
    /// inode of this op; 0 otherwise.
    pub ticket: u64,
}

/// Attributes of an inode, returned by lookup/getattr/create/...
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct Attr {
    pub ino: u64,
    pub generation: u64,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Request naming only an inode.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct InoReq {
    pub ino: u64,
}

/// Request naming a directory and a name that follows the struct (lookup, unlink, rmdir).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct NameReq {
    pub dir: u64,
    pub name_len: u32,
    pub reserved: u32,
}

/// `SetattrReq::valid` bits.
pub mod setattr {
    #![allow(missing_docs)]
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const ATIME_NOW: u32 = 1 << 6;
    pub const MTIME_NOW: u32 = 1 << 7;
    pub const CTIME: u32 = 1 << 8;
}

/// Change attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct SetattrReq {
    pub ino: u64,
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// Create a file, node or directory; the name follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct CreateReq {
    pub dir: u64,
    pub mode: u32,
    pub rdev: u32,
    /// Open flags for `Create` (O_EXCL ...).
    pub flags: u32,
    pub name_len: u32,
}

/// Rename; the old name then the new name follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct RenameReq {
    pub old_dir: u64,
    pub new_dir: u64,
    /// `RENAME_NOREPLACE` (1), `RENAME_EXCHANGE` (2).
    pub flags: u32,
    pub old_len: u32,
    pub new_len: u32,
    pub reserved: u32,
}

/// Hard link `ino` as a name (following) in `new_dir`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct LinkReq {
    pub ino: u64,
    pub new_dir: u64,
    pub name_len: u32,
    pub reserved: u32,
}

/// Create a symlink; the name then the target follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct SymlinkReq {
    pub dir: u64,
    pub name_len: u32,
    pub target_len: u32,
}

/// Read directory entries starting after `cookie` (0 = from the start) into the data window as
/// [`Dirent`] records; the reply result is the number of bytes written.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct ReaddirReq {
    pub dir: u64,
    pub cookie: u64,
}

/// A directory entry record in the data window; the name follows, the record is padded to 8.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct Dirent {
    pub ino: u64,
    /// Cookie to resume after this entry.
    pub cookie: u64,
    /// `DT_*` type.
    pub kind: u32,
    pub name_len: u32,
}

/// A [`OpCode::ReaddirPlus`] record in the data window: the entry, then its inode's attributes
/// (what a `Lookup` of the name answers; all zero when there is none: `.`, `..`, or a name gone
/// before its lookup); the name follows, the record is padded to 8.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct DirentPlus {
    pub dirent: Dirent,
    pub attr: Attr,
}

/// Open an inode.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct OpenReq {
    pub ino: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// Reply to open (and create): a file handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct OpenReply {
    pub fh: u64,
}

/// Reply to [`OpCode::CreateOpen`]: the new file's attributes (as `Create`'s reply), the file
/// handle (as `Open`'s) and the directory's attributes after the create (all zero, `ino` 0, when
/// zusd could not read them), so that a kernel need not ask for the times the create moved.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct CreateOpenReply {
    pub attr: Attr,
    pub fh: u64,
    pub dir: Attr,
}

/// Release a file handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct ReleaseReq {
    pub ino: u64,
    pub fh: u64,
}

/// `IoReq::flags` bits.
pub mod io_flags {
    /// O_SYNC / O_DSYNC: data durable when the op returns.
    pub const SYNC: u32 = 1 << 0;
    /// O_DIRECT.
    pub const DIRECT: u32 = 1 << 1;
    /// O_APPEND: write at the end of file (offset ignored), atomically.
    pub const APPEND: u32 = 1 << 2;
    /// The writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID): the write clears S_ISUID, and
    /// S_ISGID when the group-exec bit is set, in the same operation.
    pub const KILL_SUIDGID: u32 = 1 << 3;
}

/// Read or write `len` bytes at `offset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct IoReq {
    pub ino: u64,
    pub fh: u64,
    pub offset: u64,
    pub len: u64,
    /// [`io_flags`].
    pub flags: u32,
    /// [`DATA_WINDOW`] or [`DATA_REMOTE_IOV`].
    pub data_kind: u32,
    /// Number of [`IoVec`]s after this struct with `DATA_REMOTE_IOV`.
    pub niov: u32,
    pub reserved: u32,
}

/// Reply to read/write.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct IoReply {
    /// File size after the op.
    pub size: u64,
    /// Offset the write landed at (useful with APPEND).
    pub offset: u64,
}

/// A buffer in the caller's address space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct IoVec {
    pub addr: u64,
    pub len: u64,
}

/// Most iovecs one request may carry.
pub const MAX_IOV: usize = 256;

/// Flush a file.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct FsyncReq {
    pub ino: u64,
    pub fh: u64,
    pub datasync: u32,
    pub reserved: u32,
}

/// fallocate(2).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct FallocateReq {
    pub ino: u64,
    pub offset: u64,
    pub len: u64,
    pub mode: u32,
    pub reserved: u32,
}

/// xattr get/set/remove; the name follows; set's value is in the data window; get's value is
/// returned in the data window (result = value length; `size` 0 asks for the length only).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct XattrReq {
    pub ino: u64,
    pub name_len: u32,
    /// set: `XATTR_CREATE`/`XATTR_REPLACE`.
    pub flags: u32,
    /// get/list: caller's buffer size; set: value length.
    pub size: u32,
    pub reserved: u32,
}

/// Map a file range to pmem extents.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct MapReq {
    pub ino: u64,
    pub offset: u64,
    pub len: u64,
    /// 1 = the caller will write (allocate and zero holes).
    pub write: u32,
    pub reserved: u32,
}

/// One mapped extent: `len` bytes of the file at `file_offset` live at `dev_offset` on the device.
/// `dev_offset == u64::MAX` marks a hole (reads as zeros).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct Extent {
    pub file_offset: u64,
    pub dev_offset: u64,
    pub len: u64,
}

/// Marks a hole in an [`Extent`].
pub const EXTENT_HOLE: u64 = u64::MAX;
/// Most extents one map reply carries.
pub const MAX_MAP_EXTENTS: usize = 64;

/// Reply to map: `count` extents follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct MapReply {
    pub count: u32,
    pub reserved: u32,
    /// File size at the time of the map.
    pub size: u64,
}

/// Commit a dax write: the file now extends to at least `end` (size update) and mtime is now.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct MapDoneReq {
    pub ino: u64,
    pub end: u64,
    /// 1 = also make the written range durable (flush done by client; server fences metadata).
    pub sync: u32,
    pub reserved: u32,
}

/// Drop lookup references.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct ForgetReq {
    pub ino: u64,
    pub nlookup: u64,
}

/// [`OpCode::KernelCache`]: while an inode is marked, the kernel may hold its pages (a page-cache
/// read or write, or a shared mmap, through the FUSE mount), and zusd answers the data ops of
/// every other client on it with [`crate::Errno::EUSEKERNEL`], so that they go through the
/// kernel too and the page cache stays the one copy everybody sees. Marks nest per client (`on`
/// counts up, `off` takes back one of the sender's own) and leave with a client that
/// disconnects; only the kernel bridge (`features::KERNEL_BRIDGE`, privileged) may send it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct KernelCacheReq {
    pub ino: u64,
    /// 1 = mark, 0 = unmark.
    pub on: u32,
    pub reserved: u32,
}

/// [`OpCode::Ticket`]. A user's process that opened a file through the kernel mount (so the
/// kernel checked its permissions) asks the bridge for a ticket with [`ZUFS_IOC_TICKET`]; the
/// bridge has zusd issue one (`ticket` 0: the result is the new ticket, 63 random bits, never 0)
/// for `ino`, the caller's `uid` and `writable` = the file was opened for writing, and revokes
/// it (`ticket` set) when the kernel releases that open file. A client attached to a mount it
/// does not own may send only data ops, each with a ticket of its uid for that inode
/// ([`OpHeader::ticket`]). Only the kernel bridge may send this op.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct TicketReq {
    pub ino: u64,
    pub ticket: u64,
    pub uid: u32,
    pub writable: u32,
}

/// [`OpCode::CopyFileRange`]: copy `len` bytes of file `ino_in` (open as `fh_in`) at `off_in`
/// to file `ino_out` (open as `fh_out`) at `off_out`, inside the filesystem. The result is the
/// number of bytes copied (0 when `off_in` is at or past the source's end). Overlapping ranges
/// of one file are `EINVAL`; `flags` must be 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct CopyFileRangeReq {
    pub ino_in: u64,
    pub fh_in: u64,
    pub off_in: u64,
    pub ino_out: u64,
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// What the bridge answers to [`ZUFS_IOC_TICKET`] on a file of its mount.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct IoctlTicket {
    /// The plugin's inode of the file.
    pub ino: u64,
    pub ticket: u64,
    /// zusd's id of the mount (what to attach to).
    pub mount_id: u32,
    /// 1 when the ticket allows writes.
    pub writable: u32,
}

/// `_IOR('Z', 1, IoctlTicket)`: the private ioctl the FUSE bridge answers on its files.
#[allow(clippy::cast_possible_truncation)] // 24 (asserted below) fits the 14-bit size field
pub const ZUFS_IOC_TICKET: u32 = (2 << 30) | ((size_of::<IoctlTicket>() as u32) << 16) | ((b'Z' as u32) << 8) | 1;

/// Reply to statfs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[allow(missing_docs)]
pub struct StatfsReply {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub reserved: u32,
}

pod_impl! {
    u8 = 1,
    u16 = 2,
    u32 = 4,
    u64 = 8,
    i32 = 4,
    i64 = 8,
    OpHeader = 64,
    Attr = 80,
    InoReq = 8,
    NameReq = 16,
    SetattrReq = 56,
    CreateReq = 24,
    RenameReq = 32,
    LinkReq = 24,
    SymlinkReq = 16,
    ReaddirReq = 16,
    Dirent = 24,
    DirentPlus = 104,
    OpenReq = 16,
    OpenReply = 8,
    CreateOpenReply = 168,
    ReleaseReq = 16,
    IoReq = 48,
    IoReply = 16,
    IoVec = 16,
    FsyncReq = 24,
    FallocateReq = 32,
    XattrReq = 24,
    MapReq = 32,
    Extent = 24,
    MapReply = 16,
    MapDoneReq = 24,
    ForgetReq = 16,
    KernelCacheReq = 16,
    TicketReq = 24,
    CopyFileRangeReq = 64,
    IoctlTicket = 24,
    StatfsReply = 56,
}

const _: () = {
    assert!(offset_of!(OpHeader, opcode) == 0);
    assert!(offset_of!(OpHeader, flags) == 4);
    assert!(offset_of!(OpHeader, mount_id) == 8);
    assert!(offset_of!(OpHeader, in_len) == 12);
    assert!(offset_of!(OpHeader, out_len) == 16);
    assert!(offset_of!(OpHeader, data_len) == 20);
    assert!(offset_of!(OpHeader, seq) == 24);
    assert!(offset_of!(OpHeader, result) == 32);
    assert!(offset_of!(OpHeader, uid) == 40);
    assert!(offset_of!(OpHeader, gid) == 44);
    assert!(offset_of!(OpHeader, pid) == 48);
    assert!(offset_of!(OpHeader, ticket) == 56);
    assert!(ZUFS_IOC_TICKET == 0x8018_5a01);
    assert!(offset_of!(Attr, ino) == 0);
    assert!(offset_of!(Attr, size) == 16);
    assert!(offset_of!(Attr, mode) == 56);
    assert!(offset_of!(Attr, blksize) == 76);
    assert!(offset_of!(IoReq, offset) == 16);
    assert!(offset_of!(IoReq, flags) == 32);
    assert!(offset_of!(IoReq, niov) == 40);
    assert!(offset_of!(Dirent, name_len) == 20);
    assert!(offset_of!(DirentPlus, attr) == 24);
    assert!(offset_of!(RenameReq, flags) == 16);
    assert!(offset_of!(CopyFileRangeReq, ino_out) == 24);
    assert!(offset_of!(CopyFileRangeReq, len) == 48);
    assert!(offset_of!(CopyFileRangeReq, flags) == 56);
};

/// Longest name a request may carry.
pub const NAME_MAX: usize = 255;
/// Longest symlink target.
pub const PATH_MAX: usize = 4096;

/// Splits the variable part of a request into `N` byte strings of the given lengths, checking
/// that they fit exactly within `var`. Used by the server (validation) and plugin adapters.
#[must_use]
pub fn split_names<'a>(var: &'a [u8], lens: &[u32]) -> Option<Vec<&'a [u8]>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for &l in lens {
        let l = usize::try_from(l).ok()?;
        let end = at.checked_add(l)?;
        out.push(var.get(at..end)?);
        at = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_opcode_round_trip() {
        for op in OpCode::ALL {
            assert_eq!(OpCode::from_u32(op as u32), Some(op));
        }
        assert_eq!(OpCode::from_u32(0), None);
        assert_eq!(OpCode::from_u32(37), None);
        assert_eq!(OpCode::from_u32(u32::MAX), None);
    }

    #[test]
    fn test_pod_read_short_buffer_is_none() {
        assert!(IoReq::read_from(&[0u8; 47]).is_none());
        let r = IoReq { ino: 7, len: 4096, ..Default::default() };
        let back = IoReq::read_from(r.as_bytes()).unwrap();
        assert_eq!(back.ino, 7);
        assert_eq!(back.len, 4096);
    }

    #[test]
    fn test_split_names_rejects_overflow() {
        assert_eq!(split_names(b"abcdef", &[2, 3]).unwrap(), vec![&b"ab"[..], &b"cde"[..]]);
        assert!(split_names(b"abc", &[2, 2]).is_none());
        assert!(split_names(b"abc", &[u32::MAX, 1]).is_none());
    }
}
