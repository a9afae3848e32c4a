//! The FUSE transport: the kernel's FUSE module plays the VFS side, `fuser` reads `/dev/fuse`,
//! and each request becomes [`Bridge`] calls (zus_api ops on the relay).
//!
//! The transport boundary is [`Transport`]: it mounts, serves the bridge until the kernel
//! unmounts, and reports readiness. [`FuserTransport`] is the classic `/dev/fuse` transport (one
//! reader thread per CPU, each with its own cloned fd, pinned to its CPU so that it submits to
//! the ZT lane of that CPU). A FUSE-over-io_uring transport (one queue per CPU, the request stays
//! on the CPU that issued it) would implement the same trait.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use zus_api::Errno;
use zus_api::ops::{Attr, IoctlTicket, OpCode, Pod, SetattrReq, ZUFS_IOC_TICKET, setattr};

use crate::abi::op;
use crate::bridge::Bridge;
use crate::killpriv::KillSetid;
use zus_client::Creds;

/// Options of the FUSE side of a mount.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache name lookups (and negative ones are not cached).
    pub entry_timeout: Duration,
    /// Let every user use the mount (else only the mounting user).
    pub allow_other: bool,
    /// The kernel checks permissions from the mode bits (as a kernel filesystem does).
    pub default_permissions: bool,
    /// Read-only.
    pub read_only: bool,
    /// Synchronous writes (the kernel's `sync` flag too).
    pub sync: bool,
    /// Bypass the page cache for every file (`direct_io`); mmap still works.
    pub direct_io: bool,
    /// Keep the page cache across opens (`keep_cache`).
    pub keep_cache: bool,
    /// Reader threads (default: one per CPU).
    pub threads: usize,
    /// Pin reader thread n to CPU n (default); `nopin` leaves placement to the scheduler.
    pub pin: bool,
    /// Name shown as the mount's source.
    pub fsname: String,
}

impl Default for FuseOptions {
    fn default() -> Self {
        Self {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            allow_other: true,
            default_permissions: true,
            read_only: false,
            sync: false,
            direct_io: false,
            keep_cache: false,
            threads: online_cpus().len(),
            pin: true,
            fsname: "zufs".into(),
        }
    }
}

/// A kernel transport for the bridge.
pub trait Transport {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Mounts at `mountpoint`, calls `ready` once the kernel mount exists, and serves `bridge`
    /// until the mount goes away.
    ///
    /// # Errors
    /// Mount failure (before `ready`) or a fatal transport error.
    fn serve(
        &self,
        bridge: Arc<Bridge>,
        mountpoint: &Path,
        opts: &FuseOptions,
        ready: &mut dyn FnMut(),
    ) -> std::io::Result<()>;
}

/// The classic `/dev/fuse` transport through the `fuser` crate.
#[derive(Debug, Default, Clone, Copy)]
pub struct FuserTransport;

impl Transport for FuserTransport {
    fn name(&self) -> &'static str {
        "fuse"
    }

    fn serve(
        &self,
        bridge: Arc<Bridge>,
        mountpoint: &Path,
        opts: &FuseOptions,
        ready: &mut dyn FnMut(),
    ) -> std::io::Result<()> {
        // `dev`: root may make and use device nodes on the mount, as on a kernel filesystem
        // (fuser defaults to nodev; a mount by another user goes through fusermount3, which
        // forces nodev itself).
        // `subtype=zufs` as a kernel option (fuser keeps `Subtype` for fusermount only): the
        // mount table says `fuse.zufs`, so mount(8) runs our helper for a remount.
        let mut mo = vec![
            MountOption::FSName(opts.fsname.clone()),
            MountOption::CUSTOM("subtype=zufs".into()),
            MountOption::Dev,
        ];
        if opts.default_permissions {
            mo.push(MountOption::DefaultPermissions);
        }
        if opts.read_only {
            mo.push(MountOption::RO);
        }
        if opts.sync {
            mo.push(MountOption::Sync);
        }
        let mut config = fuser::Config::default();
        config.mount_options = mo;
        config.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(opts.threads.max(1));
        config.clone_fd = true;
        PIN.store(opts.pin, std::sync::atomic::Ordering::Relaxed);
        let fs = FuseFs { bridge: bridge.clone(), opts: opts.clone() };
        let session = fuser::Session::new(fs, mountpoint, &config)?;
        let notifier = session.notifier();
        let attrs = notifier.clone();
        // Offset -1: the attributes only (no page lock taken: safe on a request thread).
        bridge.set_attr_invalidator(Box::new(move |node| {
            let _ = attrs.inval_inode(INodeNo(node), -1, 0);
        }));
        bridge.set_page_cache_invalidator(Box::new(move |node| {
            // ENOENT: the kernel has forgotten the inode, and its pages with it.
            let _ = notifier.inval_inode(INodeNo(node), 0, 0);
        }));
        ready();
        session.run()
    }
}

/// The online CPUs this process may run on.
#[must_use]
pub fn online_cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // SAFETY: valid pointer and size.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
        let mut v: Vec<usize> = if rc == 0 {
            // SAFETY: CPU_ISSET reads within the set.
            (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
        } else {
            Vec::new()
        };
        if v.is_empty() {
            v.push(0);
        }
        v
    })
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0
    }
}

static PIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

thread_local! {
    static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pins fuser's reader thread `fuser-N` to the N-th online CPU, once, on its first request.
fn pin_reader() {
    if PINNED.get() {
        return;
    }
    PINNED.set(true);
    if !PIN.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let cur = std::thread::current();
    let Some(n) = cur.name().and_then(|n| n.strip_prefix("fuser-")).and_then(|n| n.parse::<usize>().ok()) else {
        return;
    };
    let cpus = online_cpus();
    let cpu = cpus[n % cpus.len()];
    if !pin_to(cpu) {
        tracing::warn!("cannot pin FUSE reader {n} to CPU {cpu}");
    }
}

/// The kernel's page size on the platforms we build for (x86-64, arm64 with 4 KiB pages).
const PAGE: u64 = 4096;

fn err(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

fn creds(req: &Request) -> Creds {
    Creds { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.cast_unsigned())
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dt_kind(dt: u32) -> FileType {
    match u8::try_from(dt).unwrap_or(0) {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: kind(a.mode),
        perm: u16::try_from(a.mode & 0o7777).unwrap_or(0),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
        flags: 0,
    }
}

struct FuseFs {
    bridge: Arc<Bridge>,
    opts: FuseOptions,
}

impl std::fmt::Debug for FuseFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseFs").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl FuseFs {
    /// Counts the request and pins the reader thread (once).
    fn req(&self, opcode: u32) {
        self.bridge.stats.requests.note(opcode);
        pin_reader();
    }

    /// The attribute lifetime of `node` in a reply (see [`Bridge::attr_ttl`]).
    fn attr_ttl(&self, node: u64) -> Duration {
        self.bridge.attr_ttl(node, self.opts.attr_timeout)
    }

    fn entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &self.attr_ttl(a.ino),
                &self.opts.entry_timeout,
                &file_attr(&a),
                Generation(a.generation),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open_flags(&self, flags: i32) -> FopenFlags {
        let mut f = FopenFlags::empty();
        if self.opts.direct_io || flags & libc::O_DIRECT != 0 {
            // O_DIRECT is accepted as is: no alignment rules are forwarded (none apply here).
            f |= FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        }
        if self.opts.keep_cache {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        // No FLUSH on close: writes are write-through (no writeback cache, nothing pending in
        // the bridge) and POSIX locks stay in the kernel (no FUSE_POSIX_LOCKS).
        f | FopenFlags::FOPEN_NOFLUSH
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let max = u32::try_from(self.bridge.max_io().min(1 << 20)).unwrap_or(1 << 20);
        let _ = config.set_max_write(max);
        // DIRECT_IO_ALLOW_MMAP: shared mappings of direct_io files (an O_DIRECT open, or every
        // file with the direct_io option). EXPORT_SUPPORT: file handles (name_to_handle_at, NFS)
        // are node id + generation, which are the plugin's persistent inode number and
        // generation; the kernel looks up "." and ".." of a node it no longer caches.
        let want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_EXPORT_SUPPORT
            // POSIX ACLs: the kernel caches and enforces them (the rest is `crate::acl`).
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            // READDIRPLUS when the kernel sees lookups follow a readdir (ls -l, rm -rf, tar).
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // SB_NOSEC: no GETXATTR security.capability before every write; set-id bits and
            // capabilities are cleared here instead (crate::killpriv; fuser hides the
            // SETATTR's FATTR_KILL_SUIDGID, so KillSetid infers it).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let _ = config.add_capabilities(want & config.capabilities());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.req(op::LOOKUP);
        self.entry(self.bridge.lookup(creds(req), parent.0, name.as_bytes()), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.bridge.stats.requests.note(op::FORGET);
        self.bridge.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.req(op::GETATTR);
        match self.bridge.getattr(ino.0) {
            Ok(a) => reply.attr(&self.attr_ttl(a.ino), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.req(op::SETATTR);
        let mut r = SetattrReq { ino: ino.0, ..SetattrReq::default() };
        if let Some(m) = mode {
            r.valid |= setattr::MODE;
            r.mode = m;
        }
        if let Some(u) = uid {
            r.valid |= setattr::UID;
            r.uid = u;
        }
        if let Some(g) = gid {
            r.valid |= setattr::GID;
            r.gid = g;
        }
        if let Some(s) = size {
            r.valid |= setattr::SIZE;
            r.size = s;
        }
        match atime {
            Some(TimeOrNow::Now) => r.valid |= setattr::ATIME | setattr::ATIME_NOW,
            Some(TimeOrNow::SpecificTime(t)) => {
                r.valid |= setattr::ATIME;
                r.atime_ns = time_ns(t);
            }
            None => {}
        }
        match mtime {
            Some(TimeOrNow::Now) => r.valid |= setattr::MTIME | setattr::MTIME_NOW,
            Some(TimeOrNow::SpecificTime(t)) => {
                r.valid |= setattr::MTIME;
                r.mtime_ns = time_ns(t);
            }
            None => {}
        }
        if let Some(t) = ctime {
            r.valid |= setattr::CTIME;
            r.ctime_ns = time_ns(t);
        }
        let kill = KillSetid::of(r.valid, None);
        match self.bridge.setattr_killpriv(creds(req), r, kill) {
            Ok(a) => reply.attr(&self.attr_ttl(a.ino), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.req(op::READLINK);
        match self.bridge.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        self.req(op::MKNOD);
        let c = creds(req);
        self.entry(self.bridge.make_acl(c, OpCode::Mknod, parent.0, name.as_bytes(), mode, umask, rdev, 0), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.req(op::MKDIR);
        let mode = (mode & 0o7777) | libc::S_IFDIR;
        self.entry(
            self.bridge.make_acl(creds(req), OpCode::Mkdir, parent.0, name.as_bytes(), mode, umask, 0, 0),
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.req(op::UNLINK);
        match self.bridge.remove(creds(req), OpCode::Unlink, parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.req(op::RMDIR);
        match self.bridge.remove(creds(req), OpCode::Rmdir, parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.req(op::SYMLINK);
        self.entry(
            self.bridge.symlink(creds(req), parent.0, link_name.as_bytes(), target.as_os_str().as_bytes()),
            reply,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.req(op::RENAME);
        match self.bridge.rename(creds(req), parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.req(op::LINK);
        self.entry(self.bridge.link(creds(req), ino.0, newparent.0, newname.as_bytes()), reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.req(op::OPEN);
        match self.bridge.open(creds(req), ino.0, flags.0.cast_unsigned()) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags(flags.0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.req(op::READ);
        // A read through the page cache (or a fault of a shared mmap, which reads whole
        // pages even of a direct_io file) fills the kernel's cache: keep the fast path off it.
        let direct = self.opts.direct_io || flags.0 & libc::O_DIRECT != 0;
        if !direct || (offset.is_multiple_of(PAGE) && u64::from(size).is_multiple_of(PAGE)) {
            self.bridge.note_page_cache_io(fh.0);
        }
        BUF.with_borrow_mut(|buf| {
            let n = size as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            match self.bridge.read(ino.0, fh.0, offset, &mut buf[..n]) {
                Ok(got) => reply.data(&buf[..got]),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.req(op::WRITE);
        if !(self.opts.direct_io || flags.0 & libc::O_DIRECT != 0) {
            // Written through the page cache: the kernel keeps the pages.
            self.bridge.note_page_cache_io(fh.0);
        }
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.bridge.write(creds(req), ino.0, fh.0, offset, data, flags.0, kill) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.req(op::IOCTL);
        if cmd != ZUFS_IOC_TICKET {
            return reply.error(FErrno::from_i32(libc::ENOTTY));
        }
        if (out_size as usize) < size_of::<IoctlTicket>() {
            return reply.error(FErrno::from_i32(libc::EINVAL));
        }
        match self.bridge.ticket(fh.0, req.uid()) {
            Ok(t) => reply.ioctl(0, t.as_bytes()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Writes are write-through (no writeback cache): nothing is pending in the bridge (the
        // open replies say FOPEN_NOFLUSH, so the kernel does not ask).
        self.bridge.stats.requests.note(op::FLUSH);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.req(op::RELEASE);
        self.bridge.release(ino.0, fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.req(op::FSYNC);
        match self.bridge.fsync(ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.req(op::READDIR);
        match self.bridge.readdir(ino.0, offset, 64 * 1024) {
            Ok(list) => {
                for e in list {
                    if reply.add(INodeNo(e.ino), e.cookie, dt_kind(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.req(op::READDIRPLUS);
        // fuser does not tell the reply's size: ask for a page of records, what the kernel
        // reads a directory in.
        let list = match self.bridge.readdir(ino.0, offset, 4096) {
            Ok(l) => l,
            Err(e) => return reply.error(err(e)),
        };
        let c = creds(req);
        for e in list {
            let name = OsStr::from_bytes(&e.name);
            // "." and "..": no attributes (the kernel takes no reference on them). An entry
            // gone meanwhile, or refused, goes without attributes too (node id 0).
            let dot = e.name == b"." || e.name == b"..";
            let looked = if dot { None } else { self.bridge.lookup(c, ino.0, &e.name).ok() };
            let full = match &looked {
                Some(a) => {
                    let ttl = self.opts.entry_timeout.min(self.attr_ttl(a.ino));
                    reply.add(INodeNo(a.ino), e.cookie, name, &ttl, &file_attr(a), Generation(a.generation))
                }
                None => {
                    // The kernel ignores the attributes of "." and ".." (but shows the node id
                    // as d_ino); node id 0 says "no attributes" for the others.
                    let mut fa = file_attr(&Attr::default());
                    fa.kind = dt_kind(e.kind);
                    let id = if dot { e.ino } else { 0 };
                    reply.add(INodeNo(id), e.cookie, name, &Duration::ZERO, &fa, Generation(0))
                }
            };
            if full {
                // Not sent: give back the reference the lookup took.
                if let Some(a) = looked {
                    self.bridge.forget(a.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.req(op::OPENDIR);
        // An open directory, like an open file, outlives its removal (rmdir, or a rename over
        // it) until its last release: the plugin counts it.
        match self.bridge.open(creds(req), ino.0, flags.0.cast_unsigned()) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.req(op::RELEASEDIR);
        self.bridge.release(ino.0, fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.req(op::FSYNCDIR);
        match self.bridge.fsync(ino.0, 0, datasync) {
            Ok(()) | Err(Errno::ENOSYS | Errno::EISDIR | Errno::EINVAL) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.req(op::STATFS);
        match self.bridge.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                s.bsize,
                s.namelen,
                if s.frsize == 0 { s.bsize } else { s.frsize },
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.req(op::SETXATTR);
        match self.bridge.setxattr_acl(creds(req), ino.0, name.as_bytes(), value, flags.cast_unsigned()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.req(op::GETXATTR);
        match self.bridge.getxattr_acl(ino.0, name.as_bytes(), size) {
            Ok((len, _)) if size == 0 => reply.size(u32::try_from(len).unwrap_or(u32::MAX)),
            Ok((_, v)) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.req(op::LISTXATTR);
        match self.bridge.listxattr(creds(req), ino.0, size) {
            Ok((len, _)) if size == 0 => reply.size(u32::try_from(len).unwrap_or(u32::MAX)),
            Ok((_, v)) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.req(op::REMOVEXATTR);
        match self.bridge.removexattr(creds(req), ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.bridge.stats.requests.note(op::ACCESS);
        // Only reached without default_permissions: the plugin checks on each op.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.req(op::CREATE);
        let c = creds(req);
        let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
        let flags_u = flags.cast_unsigned();
        match self.bridge.create_open_acl(c, parent.0, name.as_bytes(), mode, umask, flags_u) {
            // fuser's CREATE reply has one timeout for the entry and the attributes: the shorter
            // one, so that the kernel does not keep the new file's attributes for the entry
            // timeout (with attr_timeout=0, a stat would show the size at create for up to
            // entry_timeout after the fast path grew the file).
            Ok((a, fh)) => reply.created(
                &self.opts.entry_timeout.min(self.attr_ttl(a.ino)),
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(fh),
                self.open_flags(flags),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.req(op::COPY_FILE_RANGE);
        if !flags.is_empty() {
            return reply.error(FErrno::from_i32(libc::EINVAL));
        }
        match self.bridge.copy_file_range(
            creds(req),
            ino_in.0,
            fh_in.0,
            offset_in,
            ino_out.0,
            fh_out.0,
            offset_out,
            len,
        ) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.req(op::FALLOCATE);
        match self.bridge.fallocate(creds(req), ino.0, offset, length, mode.cast_unsigned()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }
}
