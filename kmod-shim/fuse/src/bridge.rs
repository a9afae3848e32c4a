//! The bridge core: POSIX-shaped calls turned into zus_api ops on a [`Relay`], independent of
//! the kernel transport (FUSE today, see [`crate::fuse`]; FUSE-over-io_uring or a real kernel
//! module later).
//!
//! The bridge keeps no filesystem state beyond what the transport needs: node ids are the
//! plugin's inode numbers (the transport's root id 1 is swapped with the mount's root inode),
//! with the plugin's generation. The one table it keeps maps the transport's file handles to the
//! plugin's, so that a mount can be re-attached to a restarted zusd (a handle opened before the
//! restart is re-opened on first use after it).
//!
//! Every call carries the caller's uid/gid/pid as [`Creds`]: the bridge is a privileged zusd
//! client, and the server honours the credentials only for such clients.
//!
//! When zusd dies, every op fails with `EIO` within the relay's liveness bound (100 ms) and no
//! caller hangs. A background thread then tries to reconnect: for a device-backed mount
//! (persistent inode numbers) it mounts the same device again and the mount carries on; a
//! device-less mount (nullfs: its namespace died with the server) stays failed with `EIO` until
//! it is unmounted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use zus_api::Errno;
use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{
    Attr, CopyFileRangeReq, CreateOpenReply, CreateReq, DATA_REMOTE_IOV, DATA_WINDOW, Dirent, FallocateReq, ForgetReq,
    FsyncReq, InoReq, IoReply, IoReq, IoVec, IoctlTicket, KernelCacheReq, LinkReq, NameReq, OpCode, OpenReply, OpenReq,
    Pod, ReaddirReq, ReleaseReq, RenameReq, SetattrReq, StatfsReply, SymlinkReq, TicketReq, XattrReq, io_flags,
};
use zus_channel::control::MountInfo;

use zus_client::{Creds, DataIn, OpOutcome, Relay, RelayError};

/// The op code and errno types of [`InProcess`] (for implementors without a zus-api dependency).
pub use zus_api::{Errno as OpErrno, ops::OpCode as Op};

/// How the bridge moves file data to and from zusd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// The server copies straight between the bridge's buffer and pmem (`process_vm_readv`/
    /// `writev`): one copy (P-CH6).
    Remote,
    /// Through the slot's shared data window: two copies (the bounce path, counted as such).
    Window,
    /// Window up to [`AUTO_WINDOW_MAX`] bytes (a 4 KiB memcpy costs less than the
    /// `process_vm_readv` call and its page walk), remote above.
    Auto,
}

/// Largest transfer [`DataPath::Auto`] sends through the window.
pub const AUTO_WINDOW_MAX: usize = 32 * 1024;

impl DataPath {
    fn remote_for(self, len: usize) -> bool {
        match self {
            Self::Remote => len > 0,
            Self::Window => false,
            Self::Auto => len > AUTO_WINDOW_MAX,
        }
    }
}

/// What the bridge announces to zusd: everything, and that it is a mount's kernel side.
const BRIDGE_FEATURES: u64 = zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE;

/// What the bridge was asked to mount, kept to mount it again on a restarted zusd.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// zusd control socket.
    pub socket: PathBuf,
    /// Plugin name.
    pub fs_type: String,
    /// Device path (empty for device-less plugins).
    pub device: String,
    /// Options passed to zusd and the plugin.
    pub server_options: String,
}

/// A server that runs the bridge's ops on the calling thread, in this process (mode (b) of
/// issue 13: a ring thread serving its CPU's requests itself, no channel hop). zusd implements
/// it over a live mount for the rings it serves (`serve=zusd`, `zus-server/zusd/src/fuse_uring.rs`).
pub trait InProcess: Send + Sync + std::fmt::Debug {
    /// Runs one op as [`Relay::op`] does, on this thread.
    ///
    /// # Errors
    /// The op's errno.
    #[allow(clippy::too_many_arguments)]
    fn op(
        &self,
        opcode: OpCode,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
    ) -> Result<OpOutcome, Errno>;

    /// Unmounts (the plugin flushes); ops fail with `EIO` afterwards.
    ///
    /// # Errors
    /// The plugin's error.
    fn unmount(&self) -> Result<(), Errno>;

    /// The zusd mount id the ops run on (0: a mount private to this process), which the
    /// tickets handed to the preload library name.
    fn mount_id(&self) -> u32 {
        0
    }
}

/// How the bridge reaches the filesystem.
#[derive(Debug)]
enum Link {
    /// zusd over a channel set: each op handed to the ZT of the caller's CPU.
    Relay(Relay),
    /// In this process, on the calling thread.
    InProcess(Arc<dyn InProcess>),
}

/// The largest read or write an in-process bridge carries in one op (the FUSE max_write cap).
pub const IN_PROCESS_MAX_IO: usize = 1 << 20;

/// One live connection to zusd with the mount attached.
#[derive(Debug)]
struct Conn {
    link: Link,
    mount_id: u32,
    root: u64,
    epoch: u64,
}

/// A transport file handle: the plugin's handle, re-opened after a re-attach.
#[derive(Debug)]
struct Handle {
    ino: u64,
    flags: u32,
    plugin_fh: AtomicU64,
    epoch: AtomicU64,
    /// The kernel filled (or may have filled) its page cache through this handle: counted in
    /// [`PageCacheUse::handles`] until released.
    page_cache: AtomicBool,
    /// Tickets zusd issued for this open file, per uid (`ZUFS_IOC_TICKET`), and the connection
    /// epoch they belong to; revoked on release.
    tickets: Mutex<(u64, Vec<(u32, u64)>)>,
    /// A fast-path client asked for a ticket on this writable handle: counted in
    /// the bridge's fast-path inode map until released.
    fast_path: AtomicBool,
}

/// What the bridge knows of the kernel's page cache of one inode.
///
/// The kernel fills its page cache only through requests the bridge serves (a read or write
/// through a handle that is not `direct_io`, or a page fault of a shared mmap), and a mapping
/// keeps its file, hence its handle, until munmap. So: before serving the first such request
/// of a handle, the bridge marks the inode in zusd (`OpCode::KernelCache`), which makes the
/// preload library serve the inode's data through the kernel too; when the last such handle is
/// released, it drops the inode's pages (FUSE `notify_inval_inode`) and only then unmarks.
#[derive(Debug, Default)]
struct PageCacheUse {
    /// Open handles counted (see [`Handle::page_cache`]).
    handles: u32,
    /// zusd holds our mark.
    marked: bool,
}

/// Kernel requests served, per FUSE opcode (both transports count them; `zufs status` shows
/// them, the metadata benchmark divides them by its ops).
#[derive(Debug)]
pub struct RequestCounts([AtomicU64; 64]);

impl Default for RequestCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl RequestCounts {
    /// Counts one request of `opcode` (opcodes past the table are not counted).
    pub fn note(&self, opcode: u32) {
        if let Some(c) = self.0.get(opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The opcodes seen so far, by name, with their counts.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(op, c)| {
                let n = c.load(Ordering::Relaxed);
                let op = u32::try_from(op).ok()?;
                (n > 0).then(|| (crate::abi::op::name(op), n))
            })
            .collect()
    }
}

/// The extended attributes whose absence the bridge remembers: the parent's default ACL (read on
/// every create, mknod and mkdir, see `crate::acl`), the access ACL (read after a chmod) and
/// `security.capability` (the kernel reads it before every write that may have to clear it).
fn watched_xattr(name: &[u8]) -> Option<u8> {
    match name {
        b"system.posix_acl_default" => Some(0),
        b"system.posix_acl_access" => Some(1),
        b"security.capability" => Some(2),
        _ => None,
    }
}

/// At most this many absent attributes are remembered (then the memory starts afresh).
const XATTR_ABSENT_MAX: usize = 1 << 20;

/// The transport's way to drop the kernel's cached attributes of a node (FUSE
/// `notify_inval_inode` with a negative offset: attributes only, no pages).
struct AttrInvalidator(Box<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for AttrInvalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttrInvalidator")
    }
}

/// Counters the bridge keeps for `zufs status` and the logs.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Ops sent to zusd.
    pub ops: AtomicU64,
    /// Ops failed because zusd was gone.
    pub server_gone: AtomicU64,
    /// Successful re-attachments to a restarted zusd.
    pub reattached: AtomicU64,
    /// Kernel requests per FUSE opcode.
    pub requests: RequestCounts,
}

/// The transport-independent bridge.
#[derive(Debug)]
pub struct Bridge {
    spec: MountSpec,
    conn: RwLock<Option<Arc<Conn>>>,
    /// Root inode of the mount (stable across re-attach; checked).
    root: u64,
    /// Whether a restarted zusd can take the mount back (device-backed: persistent inodes).
    reattachable: bool,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    data_path: DataPath,
    /// `sync` mount option: every write is durable when it returns.
    sync_writes: bool,
    /// Window size of the channel (largest single data transfer).
    window: usize,
    gone: Mutex<bool>,
    gone_cv: Condvar,
    stopping: AtomicBool,
    /// The inodes the kernel caches pages of (see [`PageCacheUse`]).
    page_cache: Mutex<HashMap<u64, PageCacheUse>>,
    /// Queue of inodes whose last page-cache handle was released (to the invalidating thread).
    invalidate: OnceLock<std::sync::mpsc::Sender<u64>>,
    /// Inodes a fast-path client may be changing behind the kernel, with the number of handles
    /// through which it may (see [`Bridge::attr_ttl`]); `fast_path_n` is the map's length.
    fast_path: Mutex<HashMap<u64, u32>>,
    fast_path_n: AtomicUsize,
    attr_invalidate: OnceLock<AttrInvalidator>,
    /// Extended attributes the kernel asks for on every create, chmod or write and that are
    /// mostly absent ([`watched_xattr`]), known absent per inode: answered ENODATA without a
    /// zusd op. Every setxattr and removexattr of the mount passes through the bridge, which
    /// forgets the entry first.
    /// References the kernel holds per node, as far as the bridge saw ([`Bridge::kernel_knows`]).
    kernel_refs: Mutex<HashMap<u64, u64>>,
    /// With a generation raised by every set and remove of a watched name.
    xattr_absent: Mutex<(u64, std::collections::HashSet<(u64, u8)>)>,
    /// The plugin has no xattrs (so no `security.capability` to drop, [`Bridge::drop_caps`]).
    pub(crate) no_xattrs: AtomicBool,
    /// Counters.
    pub stats: BridgeStats,
}

/// A directory entry as the transport needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Transport node id of the entry.
    pub ino: u64,
    /// Cookie to resume after this entry.
    pub cookie: u64,
    /// `DT_*`.
    pub kind: u32,
    /// Name.
    pub name: Vec<u8>,
}

thread_local! {
    static REPLY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; PAYLOAD_SIZE]);
}

fn name_len(name: &[u8]) -> Result<u32, Errno> {
    if name.len() > zus_api::ops::NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    u32::try_from(name.len()).map_err(|_| Errno::ENAMETOOLONG)
}

/// Parses dirent records, tolerating a truncated last record.
#[must_use]
pub fn parse_dirents(mut buf: &[u8]) -> Vec<(u64, u64, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(d) = Dirent::read_from(buf) {
        let n = d.name_len as usize;
        let rec = (size_of::<Dirent>() + n).next_multiple_of(8);
        let Some(name) = buf.get(size_of::<Dirent>()..size_of::<Dirent>() + n) else { break };
        out.push((d.ino, d.cookie, d.kind, name.to_vec()));
        if rec > buf.len() {
            break;
        }
        buf = &buf[rec..];
    }
    out
}

impl Bridge {
    /// Connects to zusd, mounts `spec` there, and returns the bridge.
    ///
    /// # Errors
    /// The relay's error (connect, or the server's refusal with its message).
    pub fn mount(
        spec: MountSpec,
        data_path: DataPath,
        sync_writes: bool,
    ) -> Result<(Arc<Self>, MountInfo), RelayError> {
        let relay = Relay::connect_with(&spec.socket, "zufs-fuse", BRIDGE_FEATURES)?;
        let info = relay.mount(&spec.fs_type, &spec.device, &spec.server_options)?;
        let window = relay.geometry().window_size;
        let reattachable = !info.device.is_empty();
        let b = Arc::new(Self {
            conn: RwLock::new(Some(Arc::new(Conn {
                link: Link::Relay(relay),
                mount_id: info.mount_id,
                root: info.root,
                epoch: 1,
            }))),
            root: info.root,
            reattachable,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            data_path,
            sync_writes,
            window,
            gone: Mutex::new(false),
            gone_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
            page_cache: Mutex::new(HashMap::new()),
            invalidate: OnceLock::new(),
            fast_path: Mutex::new(HashMap::new()),
            fast_path_n: AtomicUsize::new(0),
            attr_invalidate: OnceLock::new(),
            xattr_absent: Mutex::new((0, std::collections::HashSet::new())),
            no_xattrs: AtomicBool::new(false),
            kernel_refs: Mutex::new(HashMap::new()),
            stats: BridgeStats::default(),
            spec: MountSpec { device: info.device.clone(), ..spec },
        });
        let w = Arc::downgrade(&b);
        let _ = std::thread::Builder::new().name("zufs-reattach".into()).spawn(move || reattach_loop(&w));
        Ok((b, info))
    }

    /// A bridge over a filesystem served in this process (`server`), whose root inode is
    /// `root`: every op runs on the thread that asks (no zusd, no channel, no re-attach; the
    /// data goes straight between the caller's buffer and the plugin).
    #[must_use]
    pub fn in_process(spec: MountSpec, server: Arc<dyn InProcess>, root: u64, sync_writes: bool) -> Arc<Self> {
        Arc::new(Self {
            conn: RwLock::new(Some(Arc::new(Conn {
                mount_id: server.mount_id(),
                link: Link::InProcess(server),
                root,
                epoch: 1,
            }))),
            root,
            reattachable: false,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            data_path: DataPath::Window,
            sync_writes,
            window: IN_PROCESS_MAX_IO,
            gone: Mutex::new(false),
            gone_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
            page_cache: Mutex::new(HashMap::new()),
            invalidate: OnceLock::new(),
            fast_path: Mutex::new(HashMap::new()),
            fast_path_n: AtomicUsize::new(0),
            attr_invalidate: OnceLock::new(),
            xattr_absent: Mutex::new((0, std::collections::HashSet::new())),
            no_xattrs: AtomicBool::new(false),
            kernel_refs: Mutex::new(HashMap::new()),
            stats: BridgeStats::default(),
            spec,
        })
    }

    /// Largest read or write the bridge can carry in one op.
    #[must_use]
    pub fn max_io(&self) -> usize {
        self.window
    }

    /// The zusd mount id currently attached (None while zusd is gone).
    #[must_use]
    pub fn mount_id(&self) -> Option<u32> {
        self.current().map(|c| c.mount_id)
    }

    /// Whether zusd is reachable right now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    /// Plugin inode -> transport node id (root <-> 1).
    #[must_use]
    pub fn to_node(&self, ino: u64) -> u64 {
        if ino == self.root {
            1
        } else if ino == 1 {
            self.root
        } else {
            ino
        }
    }

    /// Transport node id -> plugin inode (the same swap).
    #[must_use]
    pub fn to_ino(&self, node: u64) -> u64 {
        self.to_node(node)
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn mark_gone(&self, c: &Conn) {
        let mut g = self.conn.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.as_ref().is_some_and(|x| x.epoch == c.epoch) {
            *g = None;
            tracing::error!("zusd is gone: operations on the mount fail with EIO until it is back");
        }
        drop(g);
        *self.gone.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.gone_cv.notify_all();
    }

    /// Runs one op on the current connection.
    #[allow(clippy::too_many_arguments)]
    fn op_on(
        &self,
        c: &Conn,
        creds: Option<Creds>,
        opcode: OpCode,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
    ) -> Result<OpOutcome, Errno> {
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        let relay = match &c.link {
            Link::Relay(r) => r,
            Link::InProcess(s) => return s.op(opcode, req, data_in, reply, data_out, creds),
        };
        match relay.op(c.mount_id, opcode, req, data_in, reply, data_out, creds) {
            Ok(o) => Ok(o),
            Err(RelayError::Op(e)) => Err(e),
            Err(RelayError::ServerGone) => {
                self.stats.server_gone.fetch_add(1, Ordering::Relaxed);
                self.mark_gone(c);
                Err(Errno::EIO)
            }
            Err(e) => {
                tracing::warn!("{opcode:?}: {e}");
                Err(e.errno())
            }
        }
    }

    fn conn_or_eio(&self) -> Result<Arc<Conn>, Errno> {
        self.current().ok_or(Errno::EIO)
    }

    /// An op whose reply is an [`Attr`].
    fn attr_op(&self, creds: Option<Creds>, opcode: OpCode, req: &[&[u8]], data_in: DataIn<'_>) -> Result<Attr, Errno> {
        let c = self.conn_or_eio()?;
        REPLY.with_borrow_mut(|reply| {
            let o = self.op_on(&c, creds, opcode, req, data_in, reply, None)?;
            let mut a = Attr::read_from(&reply[..o.reply_len]).ok_or(Errno::EIO)?;
            a.ino = self.to_node(a.ino);
            Ok(a)
        })
    }

    fn plain_op(&self, creds: Option<Creds>, opcode: OpCode, req: &[&[u8]], data_in: DataIn<'_>) -> Result<u64, Errno> {
        let c = self.conn_or_eio()?;
        REPLY.with_borrow_mut(|reply| self.op_on(&c, creds, opcode, req, data_in, reply, None).map(|o| o.value))
    }

    /// lookup.
    ///
    /// # Errors
    /// The op's errno.
    pub fn lookup(&self, creds: Creds, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        let r = NameReq { dir: self.to_ino(parent), name_len: name_len(name)?, reserved: 0 };
        self.entry_op(Some(creds), OpCode::Lookup, &[r.as_bytes(), name])
    }

    /// An op whose reply is an entry the kernel will hold a reference to (lookup, create,
    /// mknod, mkdir, link, symlink): counted in [`Bridge::kernel_knows`].
    fn entry_op(&self, creds: Option<Creds>, opcode: OpCode, req: &[&[u8]]) -> Result<Attr, Errno> {
        let a = self.attr_op(creds, opcode, req, DataIn::None)?;
        *self.kernel_refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(a.ino).or_default() += 1;
        Ok(a)
    }

    /// Whether the kernel holds a reference to `node` (entry replies minus forgets, as far as
    /// the bridge saw): it then has the inode, and most likely the entry, cached. A hint, for
    /// READDIRPLUS to leave out attributes the kernel has (no lookup for them).
    #[must_use]
    pub fn kernel_knows(&self, node: u64) -> bool {
        self.kernel_refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&node)
    }

    /// The kernel dropped `nlookup` references to `node`.
    pub fn forget(&self, node: u64, nlookup: u64) {
        {
            let mut m = self.kernel_refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = m.get_mut(&node) {
                *n = n.saturating_sub(nlookup);
                if *n == 0 {
                    m.remove(&node);
                }
            }
        }
        if let Some(c) = self.current() {
            let r = ForgetReq { ino: self.to_ino(node), nlookup };
            REPLY.with_borrow_mut(|reply| {
                let _ = self.op_on(&c, None, OpCode::Forget, &[r.as_bytes()], DataIn::None, reply, None);
            });
        }
    }

    /// getattr.
    ///
    /// # Errors
    /// The op's errno.
    pub fn getattr(&self, node: u64) -> Result<Attr, Errno> {
        let r = InoReq { ino: self.to_ino(node) };
        self.attr_op(None, OpCode::Getattr, &[r.as_bytes()], DataIn::None)
    }

    /// setattr (`req.ino` is a transport node id).
    ///
    /// # Errors
    /// The op's errno.
    pub fn setattr(&self, creds: Creds, mut req: SetattrReq) -> Result<Attr, Errno> {
        req.ino = self.to_ino(req.ino);
        self.attr_op(Some(creds), OpCode::Setattr, &[req.as_bytes()], DataIn::None)
    }

    /// create/mknod/mkdir.
    ///
    /// # Errors
    /// The op's errno.
    #[allow(clippy::too_many_arguments)]
    pub fn make(
        &self,
        creds: Creds,
        op: OpCode,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        flags: u32,
    ) -> Result<Attr, Errno> {
        let r = CreateReq { dir: self.to_ino(parent), mode, rdev, flags, name_len: name_len(name)? };
        self.entry_op(Some(creds), op, &[r.as_bytes(), name])
    }

    /// unlink/rmdir.
    ///
    /// # Errors
    /// The op's errno.
    pub fn remove(&self, creds: Creds, op: OpCode, parent: u64, name: &[u8]) -> Result<(), Errno> {
        let r = NameReq { dir: self.to_ino(parent), name_len: name_len(name)?, reserved: 0 };
        self.plain_op(Some(creds), op, &[r.as_bytes(), name], DataIn::None).map(|_| ())
    }

    /// rename (flags: RENAME_NOREPLACE 1, RENAME_EXCHANGE 2).
    ///
    /// # Errors
    /// The op's errno.
    pub fn rename(
        &self,
        creds: Creds,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let r = RenameReq {
            old_dir: self.to_ino(parent),
            new_dir: self.to_ino(newparent),
            flags,
            old_len: name_len(name)?,
            new_len: name_len(newname)?,
            reserved: 0,
        };
        self.plain_op(Some(creds), OpCode::Rename, &[r.as_bytes(), name, newname], DataIn::None).map(|_| ())
    }

    /// link.
    ///
    /// # Errors
    /// The op's errno.
    pub fn link(&self, creds: Creds, node: u64, newparent: u64, newname: &[u8]) -> Result<Attr, Errno> {
        let r = LinkReq {
            ino: self.to_ino(node),
            new_dir: self.to_ino(newparent),
            name_len: name_len(newname)?,
            reserved: 0,
        };
        self.entry_op(Some(creds), OpCode::Link, &[r.as_bytes(), newname])
    }

    /// symlink.
    ///
    /// # Errors
    /// The op's errno.
    pub fn symlink(&self, creds: Creds, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr, Errno> {
        if target.len() >= zus_api::ops::PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let r = SymlinkReq {
            dir: self.to_ino(parent),
            name_len: name_len(name)?,
            target_len: u32::try_from(target.len()).map_err(|_| Errno::ENAMETOOLONG)?,
        };
        self.entry_op(Some(creds), OpCode::Symlink, &[r.as_bytes(), name, target])
    }

    /// Variable-size output into `out` (readlink, readdir, xattrs).
    fn data_op(
        &self,
        creds: Option<Creds>,
        opcode: OpCode,
        req: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(u64, usize), Errno> {
        let c = self.conn_or_eio()?;
        REPLY.with_borrow_mut(|reply| {
            self.op_on(&c, creds, opcode, req, DataIn::None, reply, Some(out)).map(|o| (o.value, o.data_len))
        })
    }

    /// readlink.
    ///
    /// # Errors
    /// The op's errno.
    pub fn readlink(&self, node: u64) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; zus_api::ops::PATH_MAX];
        let (_, n) = self.data_op(None, OpCode::Readlink, &[InoReq { ino: self.to_ino(node) }.as_bytes()], &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Directory entries after `cookie` (at most about `max_bytes` of records).
    ///
    /// # Errors
    /// The op's errno.
    pub fn readdir(&self, node: u64, cookie: u64, max_bytes: usize) -> Result<Vec<DirEntry>, Errno> {
        let mut buf = vec![0u8; max_bytes.clamp(4096, self.window)];
        let r = ReaddirReq { dir: self.to_ino(node), cookie };
        let (_, n) = self.data_op(None, OpCode::Readdir, &[r.as_bytes()], &mut buf)?;
        Ok(parse_dirents(&buf[..n])
            .into_iter()
            .map(|(ino, cookie, kind, name)| DirEntry { ino: self.to_node(ino), cookie, kind, name })
            .collect())
    }

    fn plugin_open(&self, c: &Conn, creds: Option<Creds>, ino: u64, flags: u32) -> Result<u64, Errno> {
        let r = OpenReq { ino, flags, reserved: 0 };
        REPLY.with_borrow_mut(|reply| {
            let o = self.op_on(c, creds, OpCode::Open, &[r.as_bytes()], DataIn::None, reply, None)?;
            Ok(OpenReply::read_from(&reply[..o.reply_len]).map_or(0, |x| x.fh))
        })
    }

    /// open: returns a transport file handle.
    ///
    /// # Errors
    /// The op's errno.
    pub fn open(&self, creds: Creds, node: u64, flags: u32) -> Result<u64, Errno> {
        let c = self.conn_or_eio()?;
        let ino = self.to_ino(node);
        let pfh = self.plugin_open(&c, Some(creds), ino, flags)?;
        Ok(self.new_handle(&c, ino, flags, pfh))
    }

    /// create and open in one op at zusd (`CreateOpen`), with `mode` already masked: the new
    /// file's attributes (counted as an entry the kernel holds) and a transport file handle.
    ///
    /// # Errors
    /// The op's errno.
    pub fn create_open(
        &self,
        creds: Creds,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> Result<(Attr, u64), Errno> {
        let c = self.conn_or_eio()?;
        let r = CreateReq { dir: self.to_ino(parent), mode, rdev: 0, flags, name_len: name_len(name)? };
        let (mut a, pfh) = REPLY.with_borrow_mut(|reply| {
            let o =
                self.op_on(&c, Some(creds), OpCode::CreateOpen, &[r.as_bytes(), name], DataIn::None, reply, None)?;
            CreateOpenReply::read_from(&reply[..o.reply_len]).map(|x| (x.attr, x.fh)).ok_or(Errno::EIO)
        })?;
        let ino = a.ino;
        a.ino = self.to_node(ino);
        *self.kernel_refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(a.ino).or_default() += 1;
        Ok((a, self.new_handle(&c, ino, flags, pfh)))
    }

    /// A transport file handle for the plugin's handle `pfh` of `ino`, opened with `flags`.
    fn new_handle(&self, c: &Conn, ino: u64, flags: u32, pfh: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // A re-open after a re-attach must not truncate or create again.
        let reopen_flags = flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL).cast_unsigned();
        let h = Arc::new(Handle {
            ino,
            flags: reopen_flags,
            plugin_fh: AtomicU64::new(pfh),
            epoch: AtomicU64::new(c.epoch),
            page_cache: AtomicBool::new(false),
            tickets: Mutex::new((c.epoch, Vec::new())),
            fast_path: AtomicBool::new(false),
        });
        self.handles.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(fh, h);
        fh
    }

    /// The plugin's handle for `fh` on connection `c` (re-opened after a re-attach).
    fn plugin_fh(&self, c: &Conn, fh: u64) -> Result<(u64, u64), Errno> {
        let h = self.handles.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&fh).cloned();
        let Some(h) = h else { return Ok((0, 0)) };
        if h.epoch.load(Ordering::Acquire) != c.epoch {
            let pfh = self.plugin_open(c, None, h.ino, h.flags)?;
            h.plugin_fh.store(pfh, Ordering::Relaxed);
            h.epoch.store(c.epoch, Ordering::Release);
        }
        Ok((h.ino, h.plugin_fh.load(Ordering::Relaxed)))
    }

    /// release.
    pub fn release(&self, node: u64, fh: u64) {
        let h = self.handles.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&fh);
        let Some(h) = h else { return };
        if h.page_cache.load(Ordering::Acquire) {
            self.page_cache_released(h.ino);
        }
        if h.fast_path.load(Ordering::Acquire) {
            self.fast_path_released(h.ino);
        }
        if let Some(c) = self.current() {
            let (epoch, issued) =
                std::mem::take(&mut *h.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            for (_, t) in issued.into_iter().filter(|_| epoch == c.epoch) {
                let r = TicketReq { ino: h.ino, ticket: t, uid: 0, writable: 0 };
                let _ = self.plain_op(None, OpCode::Ticket, &[r.as_bytes()], DataIn::None);
            }
        }
        if let Some(c) = self.current()
            && h.epoch.load(Ordering::Acquire) == c.epoch
        {
            let r = ReleaseReq { ino: self.to_ino(node), fh: h.plugin_fh.load(Ordering::Relaxed) };
            REPLY.with_borrow_mut(|reply| {
                let _ = self.op_on(&c, None, OpCode::Release, &[r.as_bytes()], DataIn::None, reply, None);
            });
        }
    }

    /// `ZUFS_IOC_TICKET` on the open file `fh` by user `uid`: a ticket zusd checks on that user's
    /// fast-path ops for this inode, allowing writes when the file was opened for writing (the
    /// kernel checked the user's permissions at open). The same user gets the same ticket again;
    /// it is revoked when the kernel releases the file.
    ///
    /// # Errors
    /// `EBADF` for an unknown handle; the op's errno.
    pub fn ticket(&self, fh: u64, uid: u32) -> Result<IoctlTicket, Errno> {
        let c = self.conn_or_eio()?;
        let h = self.handles.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&fh).cloned();
        let h = h.ok_or(Errno::EBADF)?;
        let writable = h.flags & libc::O_ACCMODE.cast_unsigned() != libc::O_RDONLY.cast_unsigned();
        // Whatever becomes of the ticket (a mount's owner needs none), the caller is a fast-path
        // client that may write this file behind the kernel.
        if writable && !h.fast_path.swap(true, Ordering::AcqRel) {
            self.fast_path_opened(h.ino);
        }
        let mut g = h.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.0 != c.epoch {
            // Issued by a zusd that has since restarted: they died with it.
            *g = (c.epoch, Vec::new());
        }
        let ticket = match g.1.iter().find(|(u, _)| *u == uid) {
            Some(&(_, t)) => t,
            None => {
                let r = TicketReq { ino: h.ino, ticket: 0, uid, writable: u32::from(writable) };
                let t = self.plain_op(None, OpCode::Ticket, &[r.as_bytes()], DataIn::None)?;
                g.1.push((uid, t));
                t
            }
        };
        Ok(IoctlTicket { ino: h.ino, ticket, mount_id: c.mount_id, writable: u32::from(writable) })
    }

    /// How long the kernel may cache the attributes of `node` it gets in a reply, where the
    /// mount says `configured`: zero while a fast-path client holds a writable handle of it (it
    /// changes size, blocks and times behind the kernel; the preload library asks for a ticket
    /// on every writable file before its first fast-path op, see [`Bridge::ticket`]), else the
    /// configured timeout (nothing but the kernel changes the inode then).
    #[must_use]
    pub fn attr_ttl(&self, node: u64, configured: Duration) -> Duration {
        if configured.is_zero() || self.fast_path_n.load(Ordering::Acquire) == 0 {
            return configured;
        }
        let ino = self.to_ino(node);
        if self.fast_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&ino) {
            Duration::ZERO
        } else {
            configured
        }
    }

    /// The transport's way to drop the kernel's cached attributes of a node, called on the
    /// request thread (it takes no page lock).
    pub fn set_attr_invalidator(&self, f: Box<dyn Fn(u64) + Send + Sync>) {
        let _ = self.attr_invalidate.set(AttrInvalidator(f));
    }

    /// A writable handle of `ino` goes to the fast path: from now on replies give its attributes
    /// no lifetime, and the ones the kernel cached before (for the configured timeout) are
    /// dropped before the ticket goes back, hence before the first fast-path op. A reply that
    /// raced with this and carries the longer lifetime is discarded by the kernel (the
    /// notification moved the inode's attribute version past it).
    fn fast_path_opened(&self, ino: u64) {
        {
            let mut m = self.fast_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *m.entry(ino).or_default() += 1;
            self.fast_path_n.store(m.len(), Ordering::Release);
        }
        if let Some(f) = self.attr_invalidate.get() {
            (f.0)(self.to_node(ino));
        }
    }

    fn fast_path_released(&self, ino: u64) {
        let mut m = self.fast_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&ino) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ino);
            }
        }
        self.fast_path_n.store(m.len(), Ordering::Release);
    }

    /// Called before the kernel may fill its page cache through `fh` (see [`PageCacheUse`]):
    /// the first time for a handle, the inode is marked in zusd unless it already is. Returns
    /// once the mark holds for every fast-path op zusd serves from now on.
    pub fn note_page_cache_io(&self, fh: u64) {
        let h = self.handles.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&fh).cloned();
        let Some(h) = h else { return };
        if h.page_cache.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.page_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if h.page_cache.load(Ordering::Relaxed) {
            return;
        }
        let u = m.entry(h.ino).or_default();
        if !u.marked {
            if let Err(e) = self.kernel_cache_op(h.ino, true) {
                // zusd is gone (the request fails too) or refused: nothing to keep apart.
                tracing::debug!("kernel-cache mark of inode {}: {e:?}", h.ino);
                if u.handles == 0 {
                    m.remove(&h.ino);
                }
                return;
            }
            u.marked = true;
            tracing::debug!("inode {}: the kernel caches its pages; the fast path steps aside", h.ino);
        }
        u.handles += 1;
        h.page_cache.store(true, Ordering::Release);
    }

    fn kernel_cache_op(&self, ino: u64, on: bool) -> Result<u64, Errno> {
        let r = KernelCacheReq { ino, on: u32::from(on), reserved: 0 };
        self.plain_op(None, OpCode::KernelCache, &[r.as_bytes()], DataIn::None)
    }

    /// A handle counted in [`PageCacheUse`] was released: the last one queues the inode for
    /// invalidation and unmarking (without an invalidating thread the mark stays: correct, only
    /// slower for the fast path).
    fn page_cache_released(&self, ino: u64) {
        let mut m = self.page_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(u) = m.get_mut(&ino) else { return };
        u.handles = u.handles.saturating_sub(1);
        if u.handles == 0
            && let Some(tx) = self.invalidate.get()
        {
            let _ = tx.send(ino);
        }
    }

    /// Starts the thread that drops the kernel's pages of inodes nobody caches any more (with
    /// `invalidate(node)`, the transport's `notify_inval_inode`) and then unmarks them. Its own
    /// thread: the kernel's invalidation waits for page locks that requests in flight hold, and
    /// those need the transport's request threads.
    pub fn set_page_cache_invalidator(self: &Arc<Self>, invalidate: Box<dyn Fn(u64) + Send>) {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        if self.invalidate.set(tx).is_err() {
            return;
        }
        let w = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("zufs-inval".into()).spawn(move || {
            for ino in rx {
                let Some(b) = w.upgrade() else { return };
                if !b.page_cache_idle(ino) {
                    continue;
                }
                invalidate(b.to_node(ino));
                let mut m = b.page_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // A handle that came meanwhile keeps the mark (its pages may be newer).
                if m.get(&ino).is_some_and(|u| u.handles == 0) {
                    if m.get(&ino).is_some_and(|u| u.marked) && b.kernel_cache_op(ino, false).is_ok() {
                        tracing::debug!("inode {ino}: pages dropped; the fast path may serve it again");
                    }
                    m.remove(&ino);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("no page-cache invalidation thread ({e}): inodes the kernel cached stay marked");
        }
    }

    fn page_cache_idle(&self, ino: u64) -> bool {
        self.page_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ino)
            .is_some_and(|u| u.handles == 0)
    }

    /// After a re-attach: a restarted zusd knows no marks; set ours again.
    fn remark_page_cache(&self) {
        let mut m = self.page_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (&ino, u) in m.iter_mut() {
            if u.marked && self.kernel_cache_op(ino, true).is_err() {
                tracing::warn!("cannot mark inode {ino} as cached by the kernel after re-attach");
            }
        }
    }

    /// read into `buf`; returns bytes read.
    ///
    /// # Errors
    /// The op's errno.
    pub fn read(&self, node: u64, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let c = self.conn_or_eio()?;
        let (_, pfh) = self.plugin_fh(&c, fh)?;
        let len = buf.len().min(self.window);
        let buf = &mut buf[..len];
        let ino = self.to_ino(node);
        REPLY.with_borrow_mut(|reply| match self.data_path.remote_for(len) {
            true => {
                let io = IoReq {
                    ino,
                    fh: pfh,
                    offset,
                    len: len as u64,
                    flags: 0,
                    data_kind: DATA_REMOTE_IOV,
                    niov: 1,
                    reserved: 0,
                };
                let v = IoVec { addr: buf.as_mut_ptr() as u64, len: len as u64 };
                let o =
                    self.op_on(&c, None, OpCode::Read, &[io.as_bytes(), v.as_bytes()], DataIn::None, reply, None)?;
                Ok(usize::try_from(o.value).unwrap_or(0).min(len))
            }
            false => {
                let io = IoReq {
                    ino,
                    fh: pfh,
                    offset,
                    len: len as u64,
                    flags: 0,
                    data_kind: DATA_WINDOW,
                    niov: 0,
                    reserved: 0,
                };
                let o = self.op_on(&c, None, OpCode::Read, &[io.as_bytes()], DataIn::None, reply, Some(buf))?;
                Ok(o.data_len)
            }
        })
    }

    /// write; `open_flags` are the file's flags (O_SYNC, O_DSYNC, O_DIRECT, O_APPEND);
    /// `kill_suidgid`: the kernel's FUSE_WRITE_KILL_SUIDGID (the writer lacks CAP_FSETID).
    ///
    /// # Errors
    /// The op's errno.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        creds: Creds,
        node: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        open_flags: i32,
        kill_suidgid: bool,
    ) -> Result<usize, Errno> {
        let c = self.conn_or_eio()?;
        let (_, pfh) = self.plugin_fh(&c, fh)?;
        if data.len() > self.window {
            return Err(Errno::EINVAL);
        }
        let mut flags = 0;
        if self.sync_writes || open_flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            flags |= io_flags::SYNC;
        }
        if open_flags & libc::O_DIRECT != 0 {
            flags |= io_flags::DIRECT;
        }
        // O_APPEND: the kernel resolved the offset from its cached i_size, which a preloaded
        // process writing straight to zusd may have outgrown; zusd appends at the true end of
        // file under the inode lock instead (the kernel still serialises appends on the inode).
        if open_flags & libc::O_APPEND != 0 {
            flags |= io_flags::APPEND;
        }
        if kill_suidgid {
            flags |= io_flags::KILL_SUIDGID;
        }
        // As the kernel's file_remove_privs, which it skips on an S_NOSEC inode (killpriv.rs).
        self.drop_caps(node)?;
        let ino = self.to_ino(node);
        let len = data.len() as u64;
        REPLY.with_borrow_mut(|reply| {
            let o = match self.data_path.remote_for(data.len()) {
                true => {
                    let io =
                        IoReq { ino, fh: pfh, offset, len, flags, data_kind: DATA_REMOTE_IOV, niov: 1, reserved: 0 };
                    let v = IoVec { addr: data.as_ptr() as u64, len };
                    self.op_on(
                        &c,
                        Some(creds),
                        OpCode::Write,
                        &[io.as_bytes(), v.as_bytes()],
                        DataIn::None,
                        reply,
                        None,
                    )?
                }
                false => {
                    let io = IoReq { ino, fh: pfh, offset, len, flags, data_kind: DATA_WINDOW, niov: 0, reserved: 0 };
                    self.op_on(&c, Some(creds), OpCode::Write, &[io.as_bytes()], DataIn::Window(data), reply, None)?
                }
            };
            let _ = IoReply::read_from(&reply[..o.reply_len]);
            Ok(usize::try_from(o.value).unwrap_or(0))
        })
    }

    /// fsync (also used for flush of a sync mount).
    ///
    /// # Errors
    /// The op's errno.
    pub fn fsync(&self, node: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        let c = self.conn_or_eio()?;
        let (_, pfh) = self.plugin_fh(&c, fh)?;
        let r = FsyncReq { ino: self.to_ino(node), fh: pfh, datasync: u32::from(datasync), reserved: 0 };
        REPLY.with_borrow_mut(|reply| {
            self.op_on(&c, None, OpCode::Fsync, &[r.as_bytes()], DataIn::None, reply, None).map(|_| ())
        })
    }

    /// fallocate.
    ///
    /// # Errors
    /// The op's errno.
    pub fn fallocate(&self, creds: Creds, node: u64, offset: u64, len: u64, mode: u32) -> Result<(), Errno> {
        let r = FallocateReq { ino: self.to_ino(node), offset, len, mode, reserved: 0 };
        self.plain_op(Some(creds), OpCode::Fallocate, &[r.as_bytes()], DataIn::None).map(|_| ())
    }

    /// copy_file_range (the kernel's COPY_FILE_RANGE): one op at zusd, the data never passing
    /// through the kernel or the bridge. Returns the bytes copied (at most `u32::MAX` rounded
    /// down to a page, what the kernel's reply carries).
    ///
    /// # Errors
    /// The op's errno; `ENOSYS` from a plugin without the op, on which the kernel stops asking
    /// and copies by reading and writing.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        creds: Creds,
        node_in: u64,
        fh_in: u64,
        off_in: u64,
        node_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        let c = self.conn_or_eio()?;
        let (_, pfh_in) = self.plugin_fh(&c, fh_in)?;
        let (_, pfh_out) = self.plugin_fh(&c, fh_out)?;
        let len = len.min(u64::from(u32::MAX) & !4095);
        let r = CopyFileRangeReq {
            ino_in: self.to_ino(node_in),
            fh_in: pfh_in,
            off_in,
            ino_out: self.to_ino(node_out),
            fh_out: pfh_out,
            off_out,
            len,
            flags: 0,
            reserved: 0,
        };
        let n = REPLY.with_borrow_mut(|reply| {
            self.op_on(&c, Some(creds), OpCode::CopyFileRange, &[r.as_bytes()], DataIn::None, reply, None)
        })?;
        u32::try_from(n.value.min(len)).map_err(|_| Errno::EIO)
    }

    /// statfs.
    ///
    /// # Errors
    /// The op's errno.
    pub fn statfs(&self) -> Result<StatfsReply, Errno> {
        let c = self.conn_or_eio()?;
        REPLY.with_borrow_mut(|reply| {
            let o = self.op_on(&c, None, OpCode::Statfs, &[], DataIn::None, reply, None)?;
            StatfsReply::read_from(&reply[..o.reply_len]).ok_or(Errno::EIO)
        })
    }

    /// Sync the whole filesystem.
    ///
    /// # Errors
    /// The op's errno.
    pub fn sync_fs(&self) -> Result<(), Errno> {
        self.plain_op(None, OpCode::Sync, &[], DataIn::None).map(|_| ())
    }

    /// getxattr: `size` 0 asks for the length. Returns the length, and the value when `size > 0`.
    ///
    /// # Errors
    /// The op's errno.
    pub fn getxattr(&self, node: u64, name: &[u8], size: u32) -> Result<(u64, Vec<u8>), Errno> {
        let ino = self.to_ino(node);
        let watched = watched_xattr(name);
        let mut gen0 = 0;
        if let Some(k) = watched {
            let m = self.xattr_absent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.1.contains(&(ino, k)) {
                return Err(Errno(libc::ENODATA));
            }
            gen0 = m.0;
        }
        let r = XattrReq { ino, name_len: name_len(name)?, flags: 0, size, reserved: 0 };
        let mut buf = vec![0u8; (size as usize).min(self.window)];
        match self.data_op(None, OpCode::Getxattr, &[r.as_bytes(), name], &mut buf) {
            Ok((v, n)) => {
                buf.truncate(n);
                Ok((v, buf))
            }
            Err(e) => {
                if let Some(k) = watched
                    && e.0 == libc::ENODATA
                {
                    let mut m = self.xattr_absent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    // Not when a set or remove of a watched name ran meanwhile: the answer may
                    // predate it.
                    if m.0 == gen0 {
                        if m.1.len() >= XATTR_ABSENT_MAX {
                            m.1.clear();
                        }
                        m.1.insert((ino, k));
                    }
                }
                Err(e)
            }
        }
    }

    /// `name` of `node` may exist from now on: forget that it did not (called before and after
    /// the op that sets or removes it, so that no lookup running meanwhile records it absent).
    fn xattr_changed(&self, node: u64, name: &[u8]) {
        if let Some(k) = watched_xattr(name) {
            let mut m = self.xattr_absent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            m.0 += 1;
            m.1.remove(&(self.to_ino(node), k));
        }
    }

    /// listxattr (as getxattr). `trusted.*` names are listed to root only (as tmpfs and ext4
    /// do for callers without CAP_SYS_ADMIN; the kernel leaves that filter to the filesystem).
    ///
    /// # Errors
    /// The op's errno.
    pub fn listxattr(&self, creds: Creds, node: u64, size: u32) -> Result<(u64, Vec<u8>), Errno> {
        let filter = creds.uid != 0;
        let want = if filter { u32::try_from(self.window).unwrap_or(u32::MAX) } else { size };
        let r = XattrReq { ino: self.to_ino(node), name_len: 0, flags: 0, size: want, reserved: 0 };
        let mut buf = vec![0u8; (want as usize).min(self.window)];
        let (v, n) = self.data_op(None, OpCode::Listxattr, &[r.as_bytes()], &mut buf)?;
        buf.truncate(n);
        if !filter {
            return Ok((v, buf));
        }
        let mut list = Vec::with_capacity(buf.len());
        for name in buf.split_inclusive(|&c| c == 0).filter(|n| !n.starts_with(b"trusted.")) {
            list.extend_from_slice(name);
        }
        if size != 0 && list.len() > size as usize {
            return Err(Errno(libc::ERANGE));
        }
        Ok((list.len() as u64, if size == 0 { Vec::new() } else { list }))
    }

    /// setxattr.
    ///
    /// # Errors
    /// The op's errno.
    pub fn setxattr(&self, creds: Creds, node: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        if value.len() > self.window {
            return Err(Errno::E2BIG_OR_RANGE);
        }
        self.xattr_changed(node, name);
        let r = XattrReq {
            ino: self.to_ino(node),
            name_len: name_len(name)?,
            flags,
            size: u32::try_from(value.len()).map_err(|_| Errno::ERANGE)?,
            reserved: 0,
        };
        let res = self.plain_op(Some(creds), OpCode::Setxattr, &[r.as_bytes(), name], DataIn::Window(value));
        self.xattr_changed(node, name);
        res.map(|_| ())
    }

    /// removexattr.
    ///
    /// # Errors
    /// The op's errno.
    pub fn removexattr(&self, creds: Creds, node: u64, name: &[u8]) -> Result<(), Errno> {
        self.xattr_changed(node, name);
        let r = XattrReq { ino: self.to_ino(node), name_len: name_len(name)?, flags: 0, size: 0, reserved: 0 };
        let res = self.plain_op(Some(creds), OpCode::Removexattr, &[r.as_bytes(), name], DataIn::None);
        self.xattr_changed(node, name);
        res.map(|_| ())
    }

    /// The transport is gone (unmounted): unmount at zusd (the plugin flushes) and stop.
    ///
    /// # Errors
    /// zusd's refusal; `Ok` when zusd is gone already (nothing to flush there).
    pub fn shutdown(&self) -> Result<(), RelayError> {
        self.stopping.store(true, Ordering::SeqCst);
        {
            *self.gone.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            self.gone_cv.notify_all();
        }
        let c = self.conn.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match c {
            Some(c) => match &c.link {
                Link::Relay(r) if !r.server_gone() => r.unmount(c.mount_id),
                Link::Relay(_) => Ok(()),
                Link::InProcess(s) => s.unmount().map_err(RelayError::Op),
            },
            None => Ok(()),
        }
    }

    /// Attempts one re-attachment to a (restarted) zusd.
    fn try_reattach(&self) -> Result<(), String> {
        let relay = Relay::connect_with(&self.spec.socket, "zufs-fuse", BRIDGE_FEATURES).map_err(|e| e.to_string())?;
        let old_epoch = self.stats.reattached.load(Ordering::Relaxed) + 1;
        // The mount may still exist (zusd restarted its control socket only) or be gone.
        let st = relay.status().map_err(|e| e.to_string())?;
        let info = match st.mounts.iter().find(|m| m.device == self.spec.device && m.fs_type == self.spec.fs_type) {
            Some(m) => relay.attach(m.mount_id).map_err(|e| e.to_string())?,
            None => relay
                .mount(&self.spec.fs_type, &self.spec.device, &self.spec.server_options)
                .map_err(|e| e.to_string())?,
        };
        if info.root != self.root {
            return Err(format!("the remounted filesystem has root inode {} instead of {}", info.root, self.root));
        }
        let conn = Conn { link: Link::Relay(relay), mount_id: info.mount_id, root: info.root, epoch: old_epoch + 1 };
        debug_assert_eq!(conn.root, self.root);
        *self.conn.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(conn));
        self.stats.reattached.fetch_add(1, Ordering::Relaxed);
        self.remark_page_cache();
        // A restarted zusd may have served other clients meanwhile.
        self.xattr_absent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.clear();
        Ok(())
    }
}

/// Waits for the server to go away, then tries to re-attach (device-backed mounts only).
fn reattach_loop(w: &std::sync::Weak<Bridge>) {
    loop {
        let Some(b) = w.upgrade() else { return };
        {
            let g = b.gone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut g, _) = b
                .gone_cv
                .wait_timeout_while(g, Duration::from_millis(500), |gone| !*gone)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*g {
                continue;
            }
            *g = false;
        }
        if b.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !b.reattachable {
            tracing::error!(
                "zusd is gone and {} has no device: its namespace died with the server; the mount stays \
                 failed (EIO) until `zufs umount`",
                b.spec.fs_type
            );
            return;
        }
        let t0 = Instant::now();
        let mut last = String::new();
        drop(b);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(b) = w.upgrade() else { return };
            if b.stopping.load(Ordering::SeqCst) {
                return;
            }
            match b.try_reattach() {
                Ok(()) => {
                    tracing::info!("re-attached {} to a restarted zusd after {:?}", b.spec.device, t0.elapsed());
                    break;
                }
                Err(e) => {
                    if e != last {
                        tracing::info!("waiting for zusd to come back: {e}");
                        last = e;
                    }
                }
            }
        }
    }
}

/// An errno alias for an xattr value too large for one op.
trait XattrErrno {
    const E2BIG_OR_RANGE: Errno;
}

impl XattrErrno for Errno {
    const E2BIG_OR_RANGE: Errno = Errno(libc::E2BIG);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_dirents_tolerates_truncation() {
        let mut sink = zus_plugin::DirSink::new(4096);
        assert!(sink.push(5, 4, b".", 1));
        assert!(sink.push(9, 8, b"hello", 2));
        let b = sink.bytes();
        let all = parse_dirents(b);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], (9, 2, 8, b"hello".to_vec()));
        assert_eq!(parse_dirents(&b[..b.len() - 8]).len(), 1);
        assert!(parse_dirents(&b[..10]).is_empty());
    }
}
