//! Devices and mounts: map a device, check its generic header (P-PM1), hand it to a plugin.
#![allow(unsafe_code)]

use core::ffi::c_void;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use zus_api::Errno;
use zus_api::device::{DEVICE_ALIGN, DEVICE_HEADER_SIZE, DeviceHeader, DeviceHeaderError};
use zus_api::ops::{
    Attr, CreateOpenReply, CreateReq, Dirent, DirentPlus, ForgetReq, InoReq, NameReq, OpCode, OpHeader, OpenReply,
    OpenReq, Pod, ReaddirReq,
};
use zus_plugin::{DeviceDesc, OpCall, PluginVtable};
use zus_pmem::{MapMode, MappedPmem, Persist};

use crate::plugins::Plugin;

/// Mount and mkfs errors; each carries a message fit for the user and maps to an errno.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// No such fs type.
    #[error("unknown filesystem type {0:?} (loaded: {1})")]
    UnknownFsType(String, String),
    /// Device missing or unmappable.
    #[error("cannot map device {path}: {reason}")]
    Device {
        /// Device path.
        path: String,
        /// Why.
        reason: String,
        /// errno.
        errno: Errno,
    },
    /// Header refused.
    #[error("device {path}: {source}")]
    Header {
        /// Device path.
        path: String,
        /// Why.
        source: DeviceHeaderError,
    },
    /// The plugin refused.
    #[error("{fs_type} refused {path}: {message}")]
    Plugin {
        /// fs type.
        fs_type: String,
        /// Device path.
        path: String,
        /// Plugin message.
        message: String,
        /// errno.
        errno: Errno,
    },
    /// Bad option.
    #[error("bad mount option {0:?}")]
    BadOption(String),
    /// Already mounted.
    #[error("device {0} is already mounted")]
    Busy(String),
}

impl MountError {
    /// errno to report.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            Self::UnknownFsType(..) => Errno::ENODEV,
            Self::Device { errno, .. } | Self::Plugin { errno, .. } => *errno,
            Self::Header { .. } => Errno::EINVAL,
            Self::BadOption(_) => Errno::EINVAL,
            Self::Busy(_) => Errno::EBUSY,
        }
    }
}

/// A mounted filesystem.
#[derive(Debug)]
pub struct Mount {
    /// Mount id used in op headers.
    pub id: u32,
    /// fs type.
    pub fs_type: String,
    /// Device path (canonical) or empty.
    pub device: String,
    /// Options as given.
    pub options: String,
    /// Root inode.
    pub root: u64,
    /// Mounted read-only.
    pub read_only: bool,
    /// Device mapped with MAP_SYNC.
    pub map_sync: bool,
    /// Inodes whose pages the kernel may cache (marked by the FUSE bridge).
    pub kernel_cache: crate::kcache::KernelCacheMarks,
    /// Tickets issued for the mount's inodes (users who do not own the mount).
    pub tickets: crate::tickets::Tickets,
    vtable: &'static PluginVtable,
    handle: *mut c_void,
    /// The device mapping; declared after `handle` users finish (unmount runs before drop).
    pmem: Option<MappedPmem>,
    /// The device's exclusive lock, held as long as the mount lives (dropped after the mapping).
    _lock: Option<DeviceLock>,
}

/// An exclusive `flock` on a device file, held while it is mounted, formatted or checked, so
/// that two mounts of one device (two zusd instances, or zusd and a bridge serving a mount
/// inline) can never run one filesystem's metadata from two places.
#[derive(Debug)]
pub struct DeviceLock {
    /// The open file the lock belongs to (closing it releases the lock).
    _file: std::fs::File,
}

/// Takes the device's exclusive lock without waiting.
///
/// # Errors
/// [`MountError::Busy`] when someone holds it, [`MountError::Device`] when the file cannot be
/// opened or locked.
pub fn lock_device(path: &str) -> Result<DeviceLock, MountError> {
    let f = std::fs::OpenOptions::new().read(true).open(path).map_err(|e| MountError::Device {
        path: path.to_owned(),
        reason: e.to_string(),
        errno: Errno(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DeviceLock { _file: f }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(MountError::Busy(path.to_owned())),
        Err(e) => Err(MountError::Device {
            path: path.to_owned(),
            reason: format!("flock: {e}"),
            errno: Errno(e.raw_os_error()),
        }),
    }
}

// SAFETY: the plugin handle is used only through the plugin's thread-safe op entry (the
// FileSystem contract requires Send + Sync); the mapping is plain shared memory.
unsafe impl Send for Mount {}
// SAFETY: as above.
unsafe impl Sync for Mount {}

/// Options the server itself understands; the rest go to the plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerOptions {
    /// `ro`.
    pub read_only: bool,
}

/// Parses server-level options.
///
/// # Errors
/// [`MountError::BadOption`] for an empty element or a non-printable option.
pub fn parse_options(opts: &str) -> Result<ServerOptions, MountError> {
    let mut so = ServerOptions::default();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        if !o.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(MountError::BadOption(o.to_owned()));
        }
        match o {
            "ro" => so.read_only = true,
            "rw" => so.read_only = false,
            _ => {}
        }
    }
    Ok(so)
}

/// Whether `path` is a block device whose queue does DAX (`/dev/pmem0` on memmap= pmem).
#[must_use]
pub fn is_dax_block_device(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(m) = std::fs::metadata(path) else { return false };
    if !m.file_type().is_block_device() {
        return false;
    }
    let rdev = m.rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/queue/dax")).is_ok_and(|s| s.trim() == "1")
}

/// Maps the pmem of the DAX block device `path` through the zufs kernel module
/// (`ZUFS_IOC_GRAB_PMEM`): the module holds the device exclusively and its fd maps the pmem
/// itself. A mapping of the block device node would go through the block device's page cache,
/// which the kernel's DAX copies (a `zufs -o dax` mount) never see.
///
/// # Errors
/// The open, ioctl or mmap error.
pub fn grab_pmem(path: &str) -> std::io::Result<MappedPmem> {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    use zus_api::kabi::{KGrabPmem, ZUFS_IOC_GRAB_PMEM};
    let dev =
        std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(crate::kernel::DEVICE)?;
    let cpath = std::ffi::CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut g = KGrabPmem { path: cpath.as_ptr() as u64, ..KGrabPmem::default() };
    // SAFETY: the argument is a live KGrabPmem of the size the ioctl number encodes; the path
    // string outlives the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), libc::Ioctl::from(ZUFS_IOC_GRAB_PMEM), &raw mut g) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if g.fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    // SAFETY: the module installed this fd for us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(g.fd) };
    MappedPmem::map_fd(fd.as_fd(), g.size, path).map_err(std::io::Error::other)
}

/// Maps a device: a DAX block device through the kernel module ([`grab_pmem`]), anything else
/// as a file (created or extended to `create` bytes when given).
fn map_device(path: &str, create: Option<u64>) -> Result<MappedPmem, MountError> {
    if is_dax_block_device(Path::new(path)) {
        return grab_pmem(path).map_err(|e| MountError::Device {
            path: path.to_owned(),
            reason: format!(
                "DAX block device, mapped through {} (is the zufs module loaded?): {e}",
                crate::kernel::DEVICE
            ),
            errno: Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        });
    }
    MappedPmem::open_file(Path::new(path), create).map_err(|e| device_error(path, &e))
}

fn device_error(path: &str, e: &zus_pmem::PmemError) -> MountError {
    MountError::Device { path: path.to_owned(), reason: e.to_string(), errno: Errno(e.errno()) }
}

fn desc(pmem: Option<&MappedPmem>, read_only: bool) -> DeviceDesc {
    pmem.map_or(DeviceDesc { base: core::ptr::null_mut(), len: 0, map_sync: 0, read_only: u32::from(read_only) }, |p| {
        DeviceDesc {
            base: p.base_ptr(),
            len: p.len(),
            map_sync: u32::from(p.map_mode() == MapMode::Sync),
            read_only: u32::from(read_only),
        }
    })
}

/// The error for a plugin entry that returned `rc < 0` with a message in `msg`.
fn plugin_failure(plugin: &Plugin, path: &str, rc: i64, msg: &[u8]) -> MountError {
    let errno = Errno::from_wire(rc).err().unwrap_or(Errno::EIO);
    let mut message = msg_str(msg);
    if message.is_empty() {
        message = errno.to_string();
    }
    MountError::Plugin { fs_type: plugin.name.clone(), path: path.to_owned(), message, errno }
}

fn msg_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Maps an existing device and checks its header for `fs_type`.
///
/// # Errors
/// [`MountError`] naming the device and the problem.
pub fn open_device(path: &str, fs_type: &str) -> Result<MappedPmem, MountError> {
    if !Path::new(path).exists() {
        return Err(MountError::Device { path: path.to_owned(), reason: "no such file".into(), errno: Errno::ENOENT });
    }
    let pmem = map_device(path, None)?;
    if pmem.map_mode() != MapMode::Sync {
        tracing::info!("{path}: MAP_SYNC not supported here, mapped MAP_SHARED (flushes still issued)");
    }
    let mut hb = vec![0u8; size_of::<DeviceHeader>()];
    if pmem.len() < DEVICE_HEADER_SIZE {
        return Err(MountError::Header { path: path.to_owned(), source: DeviceHeaderError::TooSmall(pmem.len()) });
    }
    pmem.read(0, &mut hb).map_err(|e| device_error(path, &e))?;
    let h =
        DeviceHeader::parse(&hb, pmem.len()).map_err(|source| MountError::Header { path: path.to_owned(), source })?;
    h.expect_fs_type(fs_type).map_err(|source| MountError::Header { path: path.to_owned(), source })?;
    Ok(pmem)
}

/// Mounts `device` with `plugin`.
///
/// # Errors
/// [`MountError`].
pub fn mount(id: u32, plugin: &Plugin, device: &str, options: &str) -> Result<Mount, MountError> {
    let so = parse_options(options)?;
    let (pmem, canon, lock) = if plugin.needs_device() {
        let canon = std::fs::canonicalize(device).map_or_else(|_| device.to_owned(), |p| p.display().to_string());
        let lock = if Path::new(&canon).exists() { Some(lock_device(&canon)?) } else { None };
        (Some(open_device(&canon, &plugin.name)?), canon, lock)
    } else {
        (None, device.to_owned(), None)
    };
    let d = desc(pmem.as_ref(), so.read_only);
    let mut handle: *mut c_void = core::ptr::null_mut();
    let mut root = 0u64;
    let mut msg = vec![0u8; 1024];
    let mount_fn = plugin.vtable.mount.ok_or_else(|| MountError::Plugin {
        fs_type: plugin.name.clone(),
        path: canon.clone(),
        message: "no mount entry".into(),
        errno: Errno::ENOSYS,
    })?;
    // SAFETY: all pointers are valid for the call; the mapping outlives the mount (kept in Mount).
    let rc = unsafe {
        mount_fn(
            &raw const d,
            options.as_ptr(),
            options.len(),
            &raw mut handle,
            &raw mut root,
            msg.as_mut_ptr(),
            msg.len(),
        )
    };
    if rc < 0 || handle.is_null() {
        // A plugin that "succeeds" without a handle broke the contract: report EIO.
        let rc = if rc < 0 { rc } else { Errno::EIO.to_wire() };
        return Err(plugin_failure(plugin, &canon, rc, &msg));
    }
    Ok(Mount {
        id,
        fs_type: plugin.name.clone(),
        device: canon,
        options: options.to_owned(),
        root,
        read_only: so.read_only,
        map_sync: pmem.as_ref().is_some_and(|p| p.map_mode() == MapMode::Sync),
        kernel_cache: crate::kcache::KernelCacheMarks::default(),
        tickets: crate::tickets::Tickets::default(),
        vtable: plugin.vtable,
        handle,
        pmem,
        _lock: lock,
    })
}

impl Mount {
    /// Whether the plugin honours `DataDesc::ready` (streamed windows).
    #[must_use]
    pub fn plugin_streams(&self) -> bool {
        self.vtable.flags & zus_plugin::plugin_flags::STREAMED_WINDOW != 0
    }

    /// Serves one op: the plugin's, or one zusd composes from several of the plugin's
    /// ([`OpCode::CreateOpen`], [`OpCode::ForgetMany`], [`OpCode::ReleaseMany`],
    /// [`OpCode::ReaddirPlus`]).
    pub fn op(&self, call: &mut OpCall) -> i64 {
        match OpCode::from_u32(call.hdr.opcode) {
            Some(OpCode::CreateOpen) => self.create_open(call),
            Some(OpCode::ReaddirPlus) => self.readdir_plus(call),
            Some(OpCode::ForgetMany) => self.many(call, OpCode::Forget),
            Some(OpCode::ReleaseMany) => self.many(call, OpCode::Release),
            _ => self.plugin_op(call),
        }
    }

    /// `ForgetMany` and `ReleaseMany`: the plugin's `one` (`Forget`, `Release`) for each record
    /// of the payload, which dispatch decoded as whole records (`Request::decode`). The answer
    /// is 0 once every one was served: like a single RELEASE's, a release's error reaches no
    /// one (the close returned), and an errno here would read as zusd's own (ENOSYS: no such
    /// op, which makes the kernel send them again one by one).
    fn many(&self, call: &mut OpCall, one: OpCode) -> i64 {
        if call.req.is_null() {
            return Errno::EINVAL.to_wire();
        }
        // SAFETY: `req` is the server's private copy of `req_len` bytes (dispatch's scratch).
        let payload = unsafe { core::slice::from_raw_parts(call.req, call.req_len) };
        for r in payload.chunks_exact(one.request_size()) {
            self.plugin_op(&mut sub_call(call, one, r, 0));
        }
        call.reply_len = 0;
        0
    }

    /// `CreateOpen`: the plugin's `Create` (its `Attr` reply lands at the start of the reply
    /// buffer), then its `Open` of the new inode (its `OpenReply` lands right after), then its
    /// `Getattr` of the directory (after that), which is the layout of [`CreateOpenReply`]. A
    /// failed open gives back the lookup reference the create counted, so the inode is not
    /// pinned by a kernel that never learned of it; a failed getattr leaves the directory's
    /// attributes zero.
    fn create_open(&self, call: &mut OpCall) -> i64 {
        const ATTR: usize = size_of::<Attr>();
        if call.reply_cap < size_of::<CreateOpenReply>() || call.req.is_null() {
            return Errno::EINVAL.to_wire();
        }
        // SAFETY: `req` is the server's private copy of `req_len` bytes (dispatch's scratch).
        let payload = unsafe { core::slice::from_raw_parts(call.req, call.req_len) };
        let Some(cr) = CreateReq::read_from(payload) else { return Errno::EINVAL.to_wire() };
        call.hdr.opcode = OpCode::Create as u32;
        let rc = self.plugin_op(call);
        call.hdr.opcode = OpCode::CreateOpen as u32;
        if rc < 0 {
            return rc;
        }
        // SAFETY: the plugin wrote `reply_len` (at most `reply_cap`) bytes at `reply`.
        let made = unsafe { core::slice::from_raw_parts(call.reply, call.reply_len.min(call.reply_cap)) };
        let Some(attr) = (call.reply_len == ATTR).then(|| Attr::read_from(made)).flatten() else {
            return Errno::EIO.to_wire();
        };
        let open_flags = cr.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY).cast_unsigned();
        let open = OpenReq { ino: attr.ino, flags: open_flags, reserved: 0 };
        let mut sub = sub_call(call, OpCode::Open, open.as_bytes(), ATTR);
        let rc = self.plugin_op(&mut sub);
        if rc < 0 || sub.reply_len != size_of::<OpenReply>() {
            let forget = ForgetReq { ino: attr.ino, nlookup: 1 };
            self.plugin_op(&mut sub_call(call, OpCode::Forget, forget.as_bytes(), 0));
            call.reply_len = 0;
            return if rc < 0 { rc } else { Errno::EIO.to_wire() };
        }
        let at = ATTR + size_of::<OpenReply>();
        let dir = InoReq { ino: cr.dir };
        let mut sub = sub_call(call, OpCode::Getattr, dir.as_bytes(), at);
        if self.plugin_op(&mut sub) < 0 || sub.reply_len != ATTR {
            // SAFETY: `at + ATTR` is the reply's size, within `reply_cap` (checked above).
            unsafe { core::ptr::write_bytes(call.reply.add(at), 0, ATTR) };
        }
        call.reply_len = size_of::<CreateOpenReply>();
        0
    }

    /// `ReaddirPlus`: the plugin's `Readdir` into private memory, sized so that every entry it
    /// gives still fits the caller's window with its attributes (a [`DirentPlus`] record is at
    /// most four times the [`Dirent`] record of the same name), then its `Lookup` of each name
    /// but `.` and `..`, and the records written to the window in one copy. A lookup that fails
    /// (the name went meanwhile) leaves the record's attributes zero and counts no reference.
    fn readdir_plus(&self, call: &mut OpCall) -> i64 {
        const ATTR: usize = size_of::<Attr>();
        if call.req.is_null() || call.data.kind != zus_plugin::data_kind::WINDOW || call.data.window.is_null() {
            return Errno::EINVAL.to_wire();
        }
        // SAFETY: `req` is the server's private copy of `req_len` bytes (dispatch's scratch).
        let payload = unsafe { core::slice::from_raw_parts(call.req, call.req_len) };
        let Some(rd) = ReaddirReq::read_from(payload) else { return Errno::EINVAL.to_wire() };
        let cap = usize::try_from(call.data.window_len).unwrap_or(0);
        // (and at most 64 KiB of them a call: a few thousand names, each a lookup)
        let mut names = vec![0u8; (cap / 4).min(64 << 10)];
        let mut sub = sub_call(call, OpCode::Readdir, payload, 0);
        sub.data = zus_plugin::DataDesc {
            kind: zus_plugin::data_kind::WINDOW,
            window: names.as_mut_ptr(),
            window_len: names.len() as u64,
            ..zus_plugin::DataDesc::NONE
        };
        let rc = self.plugin_op(&mut sub);
        if rc < 0 {
            return rc;
        }
        let n = usize::try_from(rc).unwrap_or(usize::MAX).min(sub.data_out).min(names.len());
        let Some(entries) = zus_plugin::parse_dirents(&names[..n]) else { return Errno::EIO.to_wire() };
        let mut out = Vec::with_capacity(cap.min(entries.len() * (size_of::<DirentPlus>() + 16)));
        for (ino, kind, name, cookie) in entries {
            let mut attr = Attr::default();
            if name != b"." && name != b".." {
                let r = NameReq { dir: rd.dir, name_len: u32::try_from(name.len()).unwrap_or(u32::MAX), reserved: 0 };
                let req = [r.as_bytes(), &name].concat();
                let mut lookup = sub_call(call, OpCode::Lookup, &req, 0);
                if self.plugin_op(&mut lookup) >= 0 && lookup.reply_len == ATTR {
                    // SAFETY: the plugin wrote `reply_len` (ATTR, within `reply_cap`) bytes at `reply`.
                    let got = unsafe { core::slice::from_raw_parts(lookup.reply, ATTR) };
                    attr = Attr::read_from(got).unwrap_or_default();
                }
            }
            let rec = (size_of::<DirentPlus>() + name.len()).next_multiple_of(8);
            if out.len() + rec > cap {
                // Not possible with the sizing above; the reference must not leak if it is.
                if attr.ino != 0 {
                    let forget = ForgetReq { ino: attr.ino, nlookup: 1 };
                    self.plugin_op(&mut sub_call(call, OpCode::Forget, forget.as_bytes(), 0));
                }
                break;
            }
            let dirent = Dirent { ino, cookie, kind, name_len: u32::try_from(name.len()).unwrap_or(0) };
            out.extend_from_slice(DirentPlus { dirent, attr }.as_bytes());
            out.extend_from_slice(&name);
            out.resize(out.len().next_multiple_of(8), 0);
        }
        // SAFETY: the window holds `cap` bytes (dispatch set it up for this op) and `out` is at
        // most `cap` bytes of private memory; a raw copy into shared memory.
        unsafe { core::ptr::copy_nonoverlapping(out.as_ptr(), call.data.window, out.len()) };
        call.reply_len = 0;
        call.data_out = out.len();
        i64::try_from(out.len()).unwrap_or(i64::MAX)
    }

    /// Calls the plugin for one op.
    fn plugin_op(&self, call: &mut OpCall) -> i64 {
        match self.vtable.op {
            // SAFETY: the handle is live until unmount, which runs only after every ZT has
            // dropped its reference to this mount (see the server's generation barrier).
            Some(f) => unsafe { f(self.handle, call) },
            None => Errno::ENOSYS.to_wire(),
        }
    }

    /// Unmounts: the plugin flushes and frees its state; then the device is unmapped.
    pub fn unmount(mut self) -> Result<(), Errno> {
        let rc = match self.vtable.unmount {
            // SAFETY: the handle came from mount and is never used again after this call.
            Some(f) => unsafe { f(self.handle) },
            None => 0,
        };
        self.handle = core::ptr::null_mut();
        drop(self.pmem.take());
        Errno::from_wire(rc).map(|_| ())
    }
}

/// One of the plugin ops a composed op (`CreateOpen`, `ForgetMany`, `ReleaseMany`) is made of: `call`'s caller,
/// the request `req` (which must outlive the call), no data, and the reply at `reply_at` bytes
/// into `call`'s reply buffer (at most its capacity).
fn sub_call(call: &OpCall, op: OpCode, req: &[u8], reply_at: usize) -> OpCall {
    let reply_at = reply_at.min(call.reply_cap);
    OpCall {
        hdr: OpHeader { opcode: op as u32, in_len: u32::try_from(req.len()).unwrap_or(u32::MAX), ..call.hdr },
        req: req.as_ptr(),
        req_len: req.len(),
        // SAFETY: `reply_at` is within the reply buffer of `reply_cap` bytes.
        reply: unsafe { call.reply.add(reply_at) },
        reply_cap: call.reply_cap - reply_at,
        reply_len: 0,
        data_out: 0,
        data: zus_plugin::DataDesc::NONE,
    }
}

/// Creates a device (file) of `size` bytes if absent, writes the generic header for `plugin`
/// and runs the plugin's mkfs. An existing device keeps its size.
///
/// # Errors
/// [`MountError`].
pub fn mkfs(plugin: &Plugin, device: &str, size: Option<u64>, options: &str) -> Result<(), MountError> {
    let exists = Path::new(device).exists();
    let create = if exists { None } else { Some(size.unwrap_or(1 << 30)) };
    if let Some(s) = create
        && (s < DEVICE_ALIGN || !s.is_multiple_of(DEVICE_ALIGN))
    {
        {
            return Err(MountError::Device {
                path: device.to_owned(),
                reason: format!("size {s} must be a positive multiple of 2 MiB"),
                errno: Errno::EINVAL,
            });
        }
    }
    let pmem = map_device(device, create)?;
    let _lock = lock_device(device)?;
    if pmem.len() < DEVICE_ALIGN {
        return Err(MountError::Device {
            path: device.to_owned(),
            reason: format!("{} bytes is smaller than the 2 MiB minimum", pmem.len()),
            errno: Errno::EINVAL,
        });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    let mut uuid = [0u8; 16];
    // SAFETY: getrandom into a valid 16-byte buffer.
    let n = unsafe { libc::getrandom(uuid.as_mut_ptr().cast(), uuid.len(), 0) };
    if n != 16 {
        uuid[..8].copy_from_slice(&now.to_le_bytes());
    }
    let h = DeviceHeader::new(&plugin.name, pmem.len(), uuid, now)
        .map_err(|source| MountError::Header { path: device.to_owned(), source })?;
    // Zero the whole header block, then write the header and persist it.
    pmem.store(0, &vec![0u8; usize::try_from(DEVICE_HEADER_SIZE).unwrap_or(4096)])
        .map_err(|e| device_error(device, &e))?;
    pmem.store(0, &h.to_bytes()).map_err(|e| device_error(device, &e))?;
    pmem.persist(0, DEVICE_HEADER_SIZE).map_err(|e| device_error(device, &e))?;
    let Some(mkfs_fn) = plugin.vtable.mkfs else { return Ok(()) };
    let d = desc(Some(&pmem), false);
    let mut msg = vec![0u8; 1024];
    // SAFETY: valid pointers for the duration of the call; the mapping outlives it.
    let rc = unsafe { mkfs_fn(&raw const d, options.as_ptr(), options.len(), msg.as_mut_ptr(), msg.len()) };
    if rc < 0 {
        return Err(plugin_failure(plugin, device, rc, &msg));
    }
    Ok(())
}

/// Runs a plugin's fsck on a device: (problems, report).
///
/// # Errors
/// [`MountError`] when the device cannot be checked at all.
pub fn fsck(plugin: &Plugin, device: &str) -> Result<(u64, String), MountError> {
    let _lock = if Path::new(device).exists() { Some(lock_device(device)?) } else { None };
    let pmem = open_device(device, &plugin.name)?;
    let Some(f) = plugin.vtable.fsck else {
        return Err(MountError::Plugin {
            fs_type: plugin.name.clone(),
            path: device.to_owned(),
            message: "no fsck".into(),
            errno: Errno::ENOSYS,
        });
    };
    let d = desc(Some(&pmem), true);
    let mut problems = 0u64;
    let mut msg = vec![0u8; 1 << 20];
    // SAFETY: valid pointers for the duration of the call.
    let rc = unsafe { f(&raw const d, &raw mut problems, msg.as_mut_ptr(), msg.len()) };
    if rc < 0 {
        return Err(plugin_failure(plugin, device, rc, &msg));
    }
    Ok((problems, msg_str(&msg)))
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn test_a_device_is_locked_once_and_released_on_drop() {
        let path = std::env::temp_dir().join(format!("zufs-lock-test-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let p = path.display().to_string();
        let first = lock_device(&p).unwrap();
        // A second mount, mkfs or fsck (in this process or another) is refused while it is held.
        assert!(matches!(lock_device(&p), Err(MountError::Busy(ref d)) if *d == p));
        drop(first);
        let again = lock_device(&p).unwrap();
        drop(again);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(lock_device(&p), Err(MountError::Device { .. })));
    }
}
