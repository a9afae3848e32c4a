//! The plugin boundary (P-PL1..P-PL4).
//!
//! A plugin is a shared object that exports one C symbol, [`REGISTER_SYMBOL`]
//! (`zus_plugin_register`), returning a pointer to a static [`PluginVtable`]. The vtable opens
//! with magic, ABI version and struct size so `zusd` can refuse a plugin built for another ABI.
//! Everything that crosses is `#[repr(C)]`: a plugin may be written in C. A Rust plugin instead
//! implements the safe [`FileSystem`] trait and calls [`crate::export_plugin!`]; the adapter in
//! [`adapter`] turns the C calls into trait calls, catches panics (P-PL2) and never lets a Rust
//! type cross the boundary.
//!
//! Ownership: the server owns the device mapping, the request copy, the reply buffer and the data
//! window; it keeps them alive for the duration of the call (and the device until `unmount`
//! returns). The plugin owns the handle `mount` returns and frees it in `unmount`.

pub mod adapter;
pub mod data;

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

pub use data::{RemoteIov, STREAM_STALL_LIMIT, WindowData, sink_write, source_read, wait_stream_ready};
pub use zus_pmem::{DataSink, DataSource};

use crate::Errno;
use crate::ops::{Attr, Extent, OpHeader, SetattrReq, StatfsReply};

/// The symbol every plugin exports.
pub const REGISTER_SYMBOL: &[u8] = b"zus_plugin_register\0";
/// Magic at the start of a [`PluginVtable`] ("ZUSPLUG1").
pub const PLUGIN_MAGIC: u64 = u64::from_le_bytes(*b"ZUSPLUG1");

/// Log levels for [`HostApi::log`].
pub mod log_level {
    #![allow(missing_docs)]
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
}

/// What the server offers a plugin at registration.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostApi {
    /// [`crate::ZUS_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<HostApi>()`.
    pub struct_size: u32,
    /// Writes a log line (UTF-8, not NUL-terminated) at a [`log_level`].
    pub log: Option<unsafe extern "C" fn(level: u32, msg: *const u8, len: usize)>,
    /// The server's layout generation now (raised after every op that may free blocks).
    pub layout_gen: Option<unsafe extern "C" fn() -> u64>,
    /// The oldest layout generation a client's dax copy in progress checked its extents
    /// against (`u64::MAX` when none is in progress). Blocks freed while the generation was G
    /// may be reused once this is above G.
    pub oldest_dax_reader: Option<unsafe extern "C" fn() -> u64>,
}

/// A device mapping handed to a plugin.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceDesc {
    /// Start of the `MAP_SHARED` mapping (null for device-less mounts).
    pub base: *mut u8,
    /// Bytes mapped.
    pub len: u64,
    /// 1 when mapped with MAP_SYNC (CPU flushes alone make stores durable).
    pub map_sync: u32,
    /// 1 when mounted read-only.
    pub read_only: u32,
}

/// Data descriptor kinds.
pub mod data_kind {
    /// The op moves no bulk data.
    pub const NONE: u32 = 0;
    /// `window`/`window_len` is a shared-memory data window.
    pub const WINDOW: u32 = 1;
    /// `iov`/`niov` are buffers in process `pid`.
    pub const REMOTE: u32 = 2;
}

/// Where an op's bulk data lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DataDesc {
    /// [`data_kind`].
    pub kind: u32,
    /// Process that owns `iov` buffers.
    pub pid: i32,
    /// Window start.
    pub window: *mut u8,
    /// Window bytes available (write: bytes of data in it).
    pub window_len: u64,
    /// Remote buffers.
    pub iov: *const crate::ops::IoVec,
    /// Number of remote buffers.
    pub niov: u64,
    /// Streamed window (only for plugins with [`plugin_flags::STREAMED_WINDOW`], else null):
    /// the shared `u32` that counts the bytes of the window holding data. On a write the plugin
    /// must not read window bytes at or beyond its value (it waits, bounded, for more); on a
    /// read it raises it as it fills the window, so the client can copy out meanwhile. Accessed
    /// atomically only. [`crate::plugin::WindowData`] does both for Rust plugins.
    pub ready: *mut u32,
}

/// One op call from the server to a plugin.
#[repr(C)]
#[derive(Debug)]
pub struct OpCall {
    /// Private copy of the request header (already validated for opcode and lengths).
    pub hdr: OpHeader,
    /// Private copy of the request payload (`hdr.in_len` bytes).
    pub req: *const u8,
    /// Bytes at `req`.
    pub req_len: usize,
    /// Reply buffer.
    pub reply: *mut u8,
    /// Reply buffer capacity.
    pub reply_cap: usize,
    /// Out: reply bytes written.
    pub reply_len: usize,
    /// Out: data bytes placed in the window (read, readdir, getxattr ...).
    pub data_out: usize,
    /// Bulk data.
    pub data: DataDesc,
}

/// Plugin flags.
pub mod plugin_flags {
    /// The filesystem needs a device (pmemfs); device-less ones (nullfs) get none.
    pub const NEEDS_DEVICE: u32 = 1 << 0;
    /// The plugin honours `DataDesc::ready` (streamed windows). Without it zusd waits until a
    /// streamed write's data is all in the window before it calls the plugin, and a read's
    /// data reaches the client only with the reply. Every plugin built on
    /// [`crate::export_plugin!`] has it.
    pub const STREAMED_WINDOW: u32 = 1 << 1;
}

/// Creates a filesystem on a device. Returns 0 or -errno; writes a message to `msg`.
pub type MkfsFn =
    unsafe extern "C" fn(dev: *const DeviceDesc, opts: *const u8, opts_len: usize, msg: *mut u8, msg_cap: usize) -> i64;
/// Checks a device. Returns bytes of report written to `msg` (>= 0: clean if 0 problems, see
/// report) or -errno; `*problems` receives the number of problems found.
pub type FsckFn = unsafe extern "C" fn(dev: *const DeviceDesc, problems: *mut u64, msg: *mut u8, msg_cap: usize) -> i64;
/// Mounts. On success stores the handle and root inode and returns 0; else -errno with `msg`.
pub type MountFn = unsafe extern "C" fn(
    dev: *const DeviceDesc,
    opts: *const u8,
    opts_len: usize,
    handle: *mut *mut c_void,
    root: *mut u64,
    msg: *mut u8,
    msg_cap: usize,
) -> i64;
/// Unmounts and frees the handle.
pub type UnmountFn = unsafe extern "C" fn(handle: *mut c_void) -> i64;
/// Serves one op; returns the op result (>= 0) or -errno.
pub type OpFn = unsafe extern "C" fn(handle: *mut c_void, call: *mut OpCall) -> i64;

/// The table a plugin exports.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVtable {
    /// [`PLUGIN_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`] the plugin was built for.
    pub abi_version: u32,
    /// `size_of::<PluginVtable>()` as the plugin knows it.
    pub struct_size: u32,
    /// Filesystem type name, NUL padded.
    pub name: [u8; 16],
    /// [`plugin_flags`].
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// mkfs (NULL: not supported).
    pub mkfs: Option<MkfsFn>,
    /// fsck (NULL: not supported).
    pub fsck: Option<FsckFn>,
    /// mount (required).
    pub mount: Option<MountFn>,
    /// unmount (required).
    pub unmount: Option<UnmountFn>,
    /// op dispatch (required). A NULL op table means every op fails with ENOSYS.
    pub op: Option<OpFn>,
}

// SAFETY: the vtable holds only integers and function pointers, which are freely shareable.
unsafe impl Sync for PluginVtable {}

const _: () = {
    assert!(size_of::<HostApi>() == 40);
    assert!(size_of::<DeviceDesc>() == 24);
    assert!(size_of::<DataDesc>() == 48);
    assert!(offset_of!(DataDesc, ready) == 40);
    assert!(size_of::<OpCall>() == 64 + 6 * 8 + 48);
    assert!(offset_of!(OpCall, data) == 112);
    assert!(size_of::<PluginVtable>() == 40 + 5 * 8);
    assert!(offset_of!(PluginVtable, abi_version) == 8);
    assert!(offset_of!(PluginVtable, struct_size) == 12);
    assert!(offset_of!(PluginVtable, name) == 16);
    assert!(offset_of!(PluginVtable, mkfs) == 40);
    assert!(offset_of!(PluginVtable, op) == 72);
};

/// An error from mkfs/fsck/mount: an errno plus a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// errno for the caller.
    pub errno: Errno,
    /// What went wrong, e.g. "superblock checksum mismatch".
    pub message: String,
}

impl PluginError {
    /// Builds an error.
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        Self { errno, message: message.into() }
    }
}

impl From<Errno> for PluginError {
    fn from(errno: Errno) -> Self {
        Self { errno, message: errno.to_string() }
    }
}

/// The device a plugin mounts: a bounds-checked persistence handle over the server's mapping.
#[derive(Debug)]
pub struct Device {
    /// The mapped pmem with the persistence API.
    pub pmem: zus_pmem::MappedPmem,
    /// Mapped with MAP_SYNC.
    pub map_sync: bool,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Who is calling: credentials the server vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// Result of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteDone {
    /// Bytes written.
    pub bytes: u64,
    /// Where they landed (differs from the request with O_APPEND).
    pub offset: u64,
    /// File size afterwards.
    pub size: u64,
}

/// Collects directory entries for readdir.
#[derive(Debug)]
pub struct DirSink {
    buf: Vec<u8>,
    cap: usize,
}

impl DirSink {
    /// A sink that holds at most `cap` bytes of records.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), cap }
    }

    /// Adds an entry; `cookie` resumes after it. Returns false (and adds nothing) when full.
    pub fn push(&mut self, ino: u64, kind: u32, name: &[u8], cookie: u64) -> bool {
        use crate::ops::{Dirent, Pod};
        let rec = (size_of::<Dirent>() + name.len()).next_multiple_of(8);
        if self.buf.len() + rec > self.cap || name.len() > crate::ops::NAME_MAX {
            return false;
        }
        let d = Dirent { ino, cookie, kind, name_len: u32::try_from(name.len()).unwrap_or(0) };
        self.buf.extend_from_slice(d.as_bytes());
        self.buf.extend_from_slice(name);
        self.buf.resize(self.buf.len().next_multiple_of(8), 0);
        true
    }

    /// The encoded records.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A decoded directory entry: (ino, `DT_*` kind, name, resume cookie).
pub type DirEntry = (u64, u32, Vec<u8>, u64);

/// Parses readdir records (as written by [`DirSink`]).
#[must_use]
pub fn parse_dirents(mut buf: &[u8]) -> Option<Vec<DirEntry>> {
    use crate::ops::{Dirent, Pod};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let d = Dirent::read_from(buf)?;
        let n = d.name_len as usize;
        let name = buf.get(size_of::<Dirent>()..size_of::<Dirent>() + n)?.to_vec();
        out.push((d.ino, d.kind, name, d.cookie));
        let rec = (size_of::<Dirent>() + n).next_multiple_of(8);
        buf = buf.get(rec..).unwrap_or(&[]);
    }
    Some(out)
}

/// A filesystem plugin, written in safe Rust (P-PL3).
///
/// Every method has `&self`: ZTs on all CPUs call concurrently, so implementations synchronise
/// internally (per-inode locks scale better than one). Unimplemented ops default to `ENOSYS`.
/// Names are raw bytes (no NUL, no '/', 1..=255 bytes: checked before the call).
#[allow(unused_variables)]
pub trait FileSystem: Send + Sync + Sized + 'static {
    /// Type name used with `mount -t`, at most 15 bytes.
    const NAME: &'static str;
    /// Whether the filesystem needs a device.
    const NEEDS_DEVICE: bool = true;

    /// Creates an empty filesystem on `dev` (whose generic header `zusd` already wrote).
    ///
    /// # Errors
    /// Why the device could not be formatted.
    fn mkfs(dev: &Device, options: &str) -> Result<(), PluginError> {
        Err(PluginError::new(Errno::ENOSYS, "this filesystem has no mkfs"))
    }
    /// Checks every on-pmem invariant; returns (problems found, report).
    ///
    /// # Errors
    /// When the device cannot be checked at all.
    fn fsck(dev: &Device) -> Result<(u64, String), PluginError> {
        Err(PluginError::new(Errno::ENOSYS, "this filesystem has no fsck"))
    }
    /// Mounts (and recovers) the filesystem. `dev` is `None` for device-less filesystems.
    ///
    /// # Errors
    /// A clear reason when the device cannot be mounted.
    fn mount(dev: Option<Device>, options: &str) -> Result<Self, PluginError>;
    /// Root inode number.
    fn root(&self) -> u64;
    /// Flushes everything; called before the handle is dropped.
    ///
    /// # Errors
    /// Flush failures.
    fn unmount(&self) -> Result<(), Errno> {
        Ok(())
    }
    /// Filesystem statistics.
    ///
    /// # Errors
    /// Errno.
    fn statfs(&self) -> Result<StatfsReply, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Makes everything durable.
    ///
    /// # Errors
    /// Errno.
    fn sync(&self) -> Result<(), Errno> {
        Ok(())
    }
    /// Looks up `name` in `dir` (also counts one lookup reference).
    ///
    /// # Errors
    /// ENOENT and friends.
    fn lookup(&self, caller: &Caller, dir: u64, name: &[u8]) -> Result<Attr, Errno>;
    /// Attributes of an inode.
    ///
    /// # Errors
    /// Errno.
    fn getattr(&self, ino: u64) -> Result<Attr, Errno>;
    /// Changes attributes (`req.valid` says which).
    ///
    /// # Errors
    /// Errno.
    fn setattr(&self, caller: &Caller, req: &SetattrReq) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Creates a regular file.
    ///
    /// # Errors
    /// Errno.
    fn create(&self, caller: &Caller, dir: u64, name: &[u8], mode: u32, flags: u32) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Creates a special file (or regular file).
    ///
    /// # Errors
    /// Errno.
    fn mknod(&self, caller: &Caller, dir: u64, name: &[u8], mode: u32, rdev: u32) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Creates a directory.
    ///
    /// # Errors
    /// Errno.
    fn mkdir(&self, caller: &Caller, dir: u64, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Removes a non-directory name.
    ///
    /// # Errors
    /// Errno.
    fn unlink(&self, caller: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    /// Removes an empty directory.
    ///
    /// # Errors
    /// Errno.
    fn rmdir(&self, caller: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    /// Renames, with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` flags.
    ///
    /// # Errors
    /// Errno.
    fn rename(
        &self,
        caller: &Caller,
        old_dir: u64,
        old_name: &[u8],
        new_dir: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    /// Adds a hard link.
    ///
    /// # Errors
    /// Errno.
    fn link(&self, caller: &Caller, ino: u64, new_dir: u64, name: &[u8]) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Creates a symlink.
    ///
    /// # Errors
    /// Errno.
    fn symlink(&self, caller: &Caller, dir: u64, name: &[u8], target: &[u8]) -> Result<Attr, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Reads a symlink.
    ///
    /// # Errors
    /// Errno.
    fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Lists entries after `cookie` into `out` until it is full or the directory ends.
    ///
    /// # Errors
    /// Errno.
    fn readdir(&self, dir: u64, cookie: u64, out: &mut DirSink) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    /// Opens; returns a file handle.
    ///
    /// # Errors
    /// Errno.
    fn open(&self, caller: &Caller, ino: u64, flags: u32) -> Result<u64, Errno> {
        Ok(0)
    }
    /// Releases a file handle (an unlinked file is reclaimed at its last release).
    ///
    /// # Errors
    /// Errno.
    fn release(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        Ok(())
    }
    /// Reads up to `len` bytes at `offset` into `dst`; returns bytes read (0 at EOF).
    ///
    /// # Errors
    /// Errno.
    fn read(&self, ino: u64, fh: u64, offset: u64, len: u64, dst: &dyn DataSink) -> Result<u64, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Writes `len` bytes from `src` at `offset` (or at EOF with `io_flags::APPEND`).
    ///
    /// # Errors
    /// Errno.
    #[allow(clippy::too_many_arguments)] // mirrors pwrite plus identity; a struct would only rename them
    fn write(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        flags: u32,
        src: &dyn DataSource,
    ) -> Result<WriteDone, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Makes a file durable.
    ///
    /// # Errors
    /// Errno.
    fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        Ok(())
    }
    /// fallocate(2) with its mode bits.
    ///
    /// # Errors
    /// Errno.
    fn fallocate(&self, caller: &Caller, ino: u64, mode: u32, offset: u64, len: u64) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Gets an xattr value.
    ///
    /// # Errors
    /// ENODATA when absent.
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Sets an xattr (`XATTR_CREATE`/`XATTR_REPLACE` flags).
    ///
    /// # Errors
    /// Errno.
    fn setxattr(&self, caller: &Caller, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Lists xattr names, each NUL-terminated.
    ///
    /// # Errors
    /// Errno.
    fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Removes an xattr.
    ///
    /// # Errors
    /// Errno.
    fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Maps a file range to device extents (allocating and zeroing for writes); also returns the
    /// current file size. At most [`crate::ops::MAX_MAP_EXTENTS`] extents.
    ///
    /// # Errors
    /// Errno.
    fn map(&self, ino: u64, offset: u64, len: u64, write: bool) -> Result<(Vec<Extent>, u64), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Commits a dax write that reached `end`: size and mtime.
    ///
    /// # Errors
    /// Errno.
    fn map_done(&self, ino: u64, end: u64, sync: bool) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Drops `nlookup` lookup references.
    fn forget(&self, ino: u64, nlookup: u64) {}
}

/// Builds the vtable for a [`FileSystem`]; used by [`crate::export_plugin!`].
#[must_use]
pub const fn vtable<T: FileSystem>() -> PluginVtable {
    let mut name = [0u8; 16];
    let src = T::NAME.as_bytes();
    assert!(src.len() < 16, "filesystem NAME must be at most 15 bytes");
    let mut i = 0;
    while i < src.len() {
        name[i] = src[i];
        i += 1;
    }
    PluginVtable {
        magic: PLUGIN_MAGIC,
        abi_version: crate::ZUS_ABI_VERSION,
        #[allow(clippy::cast_possible_truncation)] // 80 bytes, asserted above
        struct_size: size_of::<PluginVtable>() as u32,
        name,
        // Streamed windows are honoured by `WindowData`, which every Rust plugin reads through.
        flags: if T::NEEDS_DEVICE { plugin_flags::NEEDS_DEVICE } else { 0 } | plugin_flags::STREAMED_WINDOW,
        reserved: 0,
        mkfs: Some(adapter::mkfs::<T>),
        fsck: Some(adapter::fsck::<T>),
        mount: Some(adapter::mount::<T>),
        unmount: Some(adapter::unmount::<T>),
        op: Some(adapter::op::<T>),
    }
}

/// Exports a [`FileSystem`] as a zusd plugin: `zus_api::export_plugin!(MyFs);` in a `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    ($fs:ty) => {
        static ZUS_PLUGIN_VTABLE: $crate::plugin::PluginVtable = $crate::plugin::vtable::<$fs>();

        /// The plugin registration symbol zusd looks up.
        ///
        /// # Safety
        /// `host` must be null or point to a valid `HostApi` for the life of the process.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn zus_plugin_register(
            host: *const $crate::plugin::HostApi,
        ) -> *const $crate::plugin::PluginVtable {
            // SAFETY: forwarded contract: host is null or valid for the process lifetime.
            unsafe { $crate::plugin::adapter::set_host(host) };
            &raw const ZUS_PLUGIN_VTABLE
        }
    };
}
