//! Writing a zusd plugin in safe Rust (P-PL3).
//!
//! A plugin implements [`FileSystem`] in a `cdylib` crate and calls [`export_plugin!`]. The C
//! boundary itself (the vtable, the op call, the host API) is plain data in `zus_api::plugin`;
//! [`adapter`] turns those C calls into trait calls, decodes each request once, catches panics
//! (P-PL2) and never lets a Rust type cross the boundary. [`data`] gives the plugin its bulk data
//! (a shared window, streamed or whole, or the caller's own buffers).

pub mod adapter;
pub mod data;

use core::mem::size_of;

pub use data::{RemoteIov, STREAM_STALL_LIMIT, WindowData, sink_write, source_read, wait_stream_ready};
pub use zus_api;
pub use zus_api::Errno;
pub use zus_api::plugin::{
    DataDesc, DeviceDesc, HostApi, OpCall, PLUGIN_MAGIC, PluginVtable, REGISTER_SYMBOL, data_kind, log_level,
    plugin_flags,
};
/// The persistence API offered to plugins (store, flush, fence, non-temporal copy).
pub use zus_pmem as persist;
pub use zus_pmem::{DataSink, DataSource};

use zus_api::ops::{Attr, Extent, SetattrReq, StatfsReply};

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
        use zus_api::ops::{Dirent, Pod};
        let rec = (size_of::<Dirent>() + name.len()).next_multiple_of(8);
        if self.buf.len() + rec > self.cap || name.len() > zus_api::ops::NAME_MAX {
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
    use zus_api::ops::{Dirent, Pod};
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
    /// copy_file_range(2): copies `len` bytes of `ino_in` (open as `fh_in`) at `off_in` to
    /// `ino_out` (open as `fh_out`) at `off_out` inside the filesystem, and returns the bytes
    /// copied (0 when `off_in` is at or past the source's end). Must be as crash-consistent as
    /// [`FileSystem::write`].
    ///
    /// # Errors
    /// `ENOSYS` by default: the caller then copies by reading and writing (the FUSE bridge
    /// answers the kernel ENOSYS, and the kernel falls back for good). `EINVAL` for
    /// overlapping ranges of one file.
    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        caller: &Caller,
        ino_in: u64,
        fh_in: u64,
        off_in: u64,
        ino_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        Err(Errno::ENOSYS)
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
    /// current file size. At most [`zus_api::ops::MAX_MAP_EXTENTS`] extents.
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

/// Builds the vtable for a [`FileSystem`]; used by [`export_plugin!`].
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
        abi_version: zus_api::ZUS_ABI_VERSION,
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

/// Exports a [`FileSystem`] as a zusd plugin: `zus_plugin::export_plugin!(MyFs);` in a `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    ($fs:ty) => {
        static ZUS_PLUGIN_VTABLE: $crate::PluginVtable = $crate::vtable::<$fs>();

        /// The plugin registration symbol zusd looks up.
        ///
        /// # Safety
        /// `host` must be null or point to a valid `HostApi` for the life of the process.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn zus_plugin_register(host: *const $crate::HostApi) -> *const $crate::PluginVtable {
            // SAFETY: forwarded contract: host is null or valid for the process lifetime.
            unsafe { $crate::adapter::set_host(host) };
            &raw const ZUS_PLUGIN_VTABLE
        }
    };
}
