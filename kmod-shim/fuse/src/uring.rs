//! The FUSE-over-io_uring transport (Linux 6.14+): the kernel queues each request on the ring of
//! the CPU its caller runs on, and a thread pinned to that CPU serves it through the [`Bridge`]
//! (which hands the op to that CPU's ZT lane: mode (a) of issue 13).
//!
//! Layout: `/dev/fuse` is opened and mounted as fuser does (`mount -t fuse` with `fd=`); INIT is
//! read and answered on `/dev/fuse` with `FUSE_OVER_IO_URING` (bit 9 of `flags2`); then one
//! `IORING_SETUP_SQE128` ring per possible CPU, each with [`DEPTH`] entries (a 288-byte header
//! area and a payload buffer sized from `max_write`), REGISTERed and then answered with
//! COMMIT_AND_FETCH. The thread that called [`Transport::serve`] keeps reading `/dev/fuse` for
//! FORGET, INTERRUPT and anything else the kernel sends there, and writes the page-cache
//! notifications. When the kernel does not offer io_uring at INIT (the `enable_uring` parameter
//! was off), the same decoder serves classic `/dev/fuse` from one pinned reader per CPU.
//!
//! Buffers the kernel writes (the entries' header areas and payloads) are owned by the kernel
//! from the SQE's submission until its CQE; the ring thread touches them only in between, and
//! copies the header area out once, then validates the copy.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use zus_api::Errno;
use zus_api::ops::{Attr, IoctlTicket, OpCode, Pod, SetattrReq, ZUFS_IOC_TICKET, setattr};
use zus_client::Creds;

use crate::abi::{self, InHeader, OutHeader, Request, bytes_of, op, read_struct};
use crate::bridge::Bridge;
use crate::fuse::{FuseOptions, Transport, online_cpus};
use crate::killpriv::KillSetid;

pub mod handoff;

/// Entries per ring (per CPU).
pub const DEPTH: u16 = 4;
const PAGE: usize = 4096;
const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Which transport a [`UringTransport`] ended up serving, and per-CPU counts of the requests
/// its ring threads served.
#[derive(Debug)]
pub struct UringState {
    active: Mutex<String>,
    served: Vec<AtomicU64>,
}

impl UringState {
    /// `"uring"`, `"classic"` (no io_uring at INIT), or `""` before INIT.
    #[must_use]
    pub fn active(&self) -> String {
        self.active.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests served by a ring thread, indexed by the CPU it ran on when it served them.
    #[must_use]
    pub fn served_per_cpu(&self) -> Vec<u64> {
        self.served.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    fn set_active(&self, s: &str) {
        if let Ok(mut a) = self.active.lock() {
            s.clone_into(&mut a);
        }
    }
}

/// The FUSE-over-io_uring transport.
#[derive(Debug, Clone)]
pub struct UringTransport {
    /// Fail (instead of serving classic `/dev/fuse`) when the kernel does not offer io_uring.
    pub required: bool,
    state: Arc<UringState>,
}

impl UringTransport {
    /// A transport; `required`: see the field.
    #[must_use]
    pub fn new(required: bool) -> Self {
        let n = possible_cpus().max(online_cpus().iter().max().map_or(1, |m| m + 1));
        Self {
            required,
            state: Arc::new(UringState {
                active: Mutex::new(String::new()),
                served: (0..n).map(|_| AtomicU64::new(0)).collect(),
            }),
        }
    }

    /// Shared state (active transport, per-CPU counts), readable while serving.
    #[must_use]
    pub fn state(&self) -> Arc<UringState> {
        Arc::clone(&self.state)
    }
}

/// The number of possible CPUs (the kernel makes one queue per possible CPU).
#[must_use]
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut max = 0usize;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let hi = part.rsplit('-').next().and_then(|x| x.parse::<usize>().ok()).unwrap_or(0);
        max = max.max(hi);
    }
    max + 1
}

/// Whether FUSE over io_uring can be negotiated here: `Ok(true)` when `enable_uring` is on,
/// `Ok(false)` when it is off but we may switch it on for INIT (root), or the reason it cannot.
///
/// # Errors
/// The reason, naming the parameter and the modprobe.d line.
pub fn uring_support() -> Result<bool, String> {
    let Ok(v) = std::fs::read_to_string(PARAM) else {
        return Err(format!(
            "this kernel has no FUSE over io_uring ({PARAM} is missing: needs Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        ));
    };
    if let Ok(d) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && d.trim() == "2"
    {
        return Err("io_uring is disabled (kernel.io_uring_disabled=2)".into());
    }
    if v.trim() == "Y" {
        return Ok(true);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let writable = std::fs::OpenOptions::new().write(true).open(PARAM).is_ok();
    if root && writable {
        Ok(false)
    } else {
        Err(format!(
            "the fuse module parameter enable_uring is off and only root may switch it on \
             ({PARAM}; or add `options fuse enable_uring=1` to /etc/modprobe.d/fuse.conf)"
        ))
    }
}

/// Holds the cross-process lock around switching `enable_uring` on for one INIT, and switches
/// it back off when dropped (if we switched it on).
struct ParamGuard {
    _lock: Option<File>,
    restore: bool,
}

impl ParamGuard {
    fn acquire() -> Self {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("zufs-fuse-enable-uring.lock"))
            .ok();
        if let Some(f) = &lock {
            // SAFETY: flock on an open fd; blocks until other mounts finished their INIT.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        }
        let mut g = Self { _lock: lock, restore: false };
        if std::fs::read_to_string(PARAM).is_ok_and(|v| v.trim() == "N") && std::fs::write(PARAM, "Y").is_ok() {
            tracing::info!("fuse: switched {PARAM} on for FUSE_INIT (back off after it)");
            g.restore = true;
        }
        g
    }
}

impl Drop for ParamGuard {
    fn drop(&mut self) {
        if self.restore {
            let _ = std::fs::write(PARAM, "N");
        }
    }
}

fn cstr(s: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `/dev/fuse` and mounts it at `mountpoint` (type `fuse`, as fuser's pure-Rust mount).
fn mount_fuse(mountpoint: &Path, opts: &FuseOptions) -> io::Result<File> {
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let meta = std::fs::metadata(mountpoint)?;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // subtype=zufs: the mount table says `fuse.zufs` (mount(8) runs our helper for a remount).
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},subtype=zufs",
        dev.as_raw_fd(),
        meta.mode() & libc::S_IFMT
    );
    if opts.default_permissions {
        data.push_str(",default_permissions");
    }
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    // Device nodes work (as on a kernel filesystem; only root may make them).
    let mut flags = libc::MS_NOSUID;
    if opts.read_only {
        flags |= libc::MS_RDONLY;
    }
    if opts.sync {
        flags |= libc::MS_SYNCHRONOUS;
    }
    let src = cstr(opts.fsname.as_bytes())?;
    let tgt = cstr(mountpoint.as_os_str().as_bytes())?;
    let data = cstr(data.as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), c"fuse".as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dev)
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0
    }
}

fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

/// Has the bridge drop the kernel's cached attributes and pages of a node through `dev`
/// (`FUSE_NOTIFY_INVAL_INODE`): offset -1 for the attributes only (no page lock taken, so safe
/// on a request thread), offset 0 for the pages too.
fn set_invalidators(bridge: &Arc<Bridge>, dev: &File) -> io::Result<()> {
    let nfd = dev.try_clone()?;
    let afd = dev.try_clone()?;
    bridge.set_attr_invalidator(Box::new(move |node| {
        let n = abi::NotifyInvalInode { ino: node, off: -1, len: 0 };
        let _ = write_dev(afd.as_raw_fd(), 0, abi::NOTIFY_INVAL_INODE, bytes_of(&n));
    }));
    bridge.set_page_cache_invalidator(Box::new(move |node| {
        let n = abi::NotifyInvalInode { ino: node, off: 0, len: 0 };
        let _ = write_dev(nfd.as_raw_fd(), 0, abi::NOTIFY_INVAL_INODE, bytes_of(&n));
    }));
    Ok(())
}

/// Writes one reply (or notification) to `/dev/fuse` in one `writev`.
fn write_dev(fd: RawFd, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(size_of::<OutHeader>() + body.len()).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
    let oh = OutHeader { len, error, unique };
    let hb = bytes_of(&oh);
    let iov = [
        libc::iovec { iov_base: hb.as_ptr().cast_mut().cast(), iov_len: hb.len() },
        libc::iovec { iov_base: body.as_ptr().cast_mut().cast(), iov_len: body.len() },
    ];
    // SAFETY: two iovecs over live buffers that the kernel only reads.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

// ---------------------------------------------------------------------------------------------
// Serving a decoded request through the bridge (shared by the ring threads and /dev/fuse).

fn time_parts(ns: i64) -> (u64, u32) {
    let s = ns.div_euclid(1_000_000_000);
    let n = ns.rem_euclid(1_000_000_000);
    (s.cast_unsigned(), u32::try_from(n).unwrap_or(0))
}

fn type_bits(mode: u32) -> u32 {
    match mode & libc::S_IFMT {
        m @ (libc::S_IFDIR | libc::S_IFLNK | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK) => m,
        _ => libc::S_IFREG,
    }
}

fn fuse_attr(a: &Attr) -> abi::FuseAttr {
    let (atime, atimensec) = time_parts(a.atime_ns);
    let (mtime, mtimensec) = time_parts(a.mtime_ns);
    let (ctime, ctimensec) = time_parts(a.ctime_ns);
    abi::FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: type_bits(a.mode) | (a.mode & 0o7777),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
        flags: 0,
    }
}

fn dt_type(kind: u32) -> u32 {
    match u8::try_from(kind).unwrap_or(0) {
        k @ (libc::DT_DIR | libc::DT_LNK | libc::DT_CHR | libc::DT_BLK | libc::DT_FIFO | libc::DT_SOCK) => u32::from(k),
        _ => u32::from(libc::DT_REG),
    }
}

fn ttl(d: std::time::Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// What a request needs as its answer.
enum Outcome {
    /// Reply with the bytes pushed to `out` (possibly none).
    Reply,
    /// No reply (FORGET, BATCH_FORGET, INTERRUPT).
    None,
}

/// The request handler over the bridge, common to every reader.
struct Server {
    bridge: Arc<Bridge>,
    opts: FuseOptions,
    max_write: u32,
    uring: bool,
}

fn e(x: Errno) -> i32 {
    x.0
}

impl Server {
    fn entry(&self, a: &Attr, entry_ttl: std::time::Duration, attr_ttl: std::time::Duration, out: &mut Vec<u8>) {
        let (ev, evn) = ttl(entry_ttl);
        let (av, avn) = ttl(self.bridge.attr_ttl(a.ino, attr_ttl));
        let eo = abi::EntryOut {
            nodeid: a.ino,
            generation: a.generation,
            entry_valid: ev,
            attr_valid: av,
            entry_valid_nsec: evn,
            attr_valid_nsec: avn,
            attr: fuse_attr(a),
        };
        out.extend_from_slice(bytes_of(&eo));
    }

    fn entry_reply(&self, r: Result<Attr, Errno>, out: &mut Vec<u8>) -> Result<Outcome, i32> {
        let a = r.map_err(e)?;
        self.entry(&a, self.opts.entry_timeout, self.opts.attr_timeout, out);
        Ok(Outcome::Reply)
    }

    fn attr_reply(&self, r: Result<Attr, Errno>, out: &mut Vec<u8>) -> Result<Outcome, i32> {
        let a = r.map_err(e)?;
        let (av, avn) = ttl(self.bridge.attr_ttl(a.ino, self.opts.attr_timeout));
        out.extend_from_slice(bytes_of(&abi::AttrOut {
            attr_valid: av,
            attr_valid_nsec: avn,
            dummy: 0,
            attr: fuse_attr(&a),
        }));
        Ok(Outcome::Reply)
    }

    fn open_flags(&self, flags: u32) -> u32 {
        let mut f = 0;
        if self.opts.direct_io || flags.cast_signed() & libc::O_DIRECT != 0 {
            f |= abi::fopen::DIRECT_IO | abi::fopen::PARALLEL_DIRECT_WRITES;
        }
        if self.opts.keep_cache {
            f |= abi::fopen::KEEP_CACHE;
        }
        // No FLUSH on close: writes are write-through (no writeback cache, nothing pending in
        // the bridge) and POSIX locks stay in the kernel (no FUSE_POSIX_LOCKS).
        f | abi::fopen::NOFLUSH
    }

    fn init_reply(&self, i: &abi::InitIn, out: &mut Vec<u8>) -> u64 {
        let kernel = u64::from(i.flags) | (u64::from(i.flags2) << 32);
        let mut want = abi::init::ASYNC_READ
            | abi::init::BIG_WRITES
            | abi::init::MAX_PAGES
            | abi::init::PARALLEL_DIROPS
            | abi::init::ASYNC_DIO
            | abi::init::INIT_EXT
            // Shared mappings of direct_io files; file handles (node id + generation).
            | abi::init::DIRECT_IO_ALLOW_MMAP
            | abi::init::EXPORT_SUPPORT
            // POSIX ACLs: the kernel caches and enforces them (the rest is `crate::acl`).
            | abi::init::POSIX_ACL
            | abi::init::DONT_MASK
            // READDIRPLUS when the kernel sees lookups follow a readdir (ls -l, rm -rf, tar).
            | abi::init::DO_READDIRPLUS
            | abi::init::READDIRPLUS_AUTO
            // SB_NOSEC: no GETXATTR security.capability before every write; set-id bits and
            // capabilities are cleared here instead (crate::killpriv).
            | abi::init::HANDLE_KILLPRIV_V2;
        if self.uring {
            want |= abi::init::OVER_IO_URING;
        }
        let flags = want & kernel;
        let pages = (self.max_write.max(i.max_readahead) as usize).div_ceil(PAGE);
        let io = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION.min(i.minor),
            max_readahead: i.max_readahead,
            flags: (flags & 0xffff_ffff) as u32,
            max_background: 16,
            congestion_threshold: 12,
            max_write: self.max_write,
            time_gran: 1,
            max_pages: u16::try_from(pages).unwrap_or(u16::MAX),
            flags2: (flags >> 32) as u32,
            ..abi::InitOut::default()
        };
        out.extend_from_slice(bytes_of(&io));
        flags
    }

    /// Serves a READ into `buf` (the reply's data, at most `buf.len()` bytes).
    fn read(&self, a: &abi::ReadIn, node: u64, buf: &mut [u8]) -> Result<usize, i32> {
        self.bridge.stats.requests.note(abi::op::READ);
        let n = (a.size as usize).min(buf.len());
        // A read through the page cache (or a fault of a shared mmap, which reads whole pages
        // even of a direct_io file) fills the kernel's cache: keep the fast path off it.
        let direct = self.opts.direct_io || a.flags.cast_signed() & libc::O_DIRECT != 0;
        if !direct || (a.offset.is_multiple_of(PAGE as u64) && (a.size as usize).is_multiple_of(PAGE)) {
            self.bridge.note_page_cache_io(a.fh);
        }
        self.bridge.read(node, a.fh, a.offset, &mut buf[..n]).map_err(e)
    }

    /// Serves every request but READ (and INIT); the reply's body goes to `out`.
    #[allow(clippy::too_many_lines)]
    fn handle(&self, h: &InHeader, req: Request<'_>, out: &mut Vec<u8>) -> Result<Outcome, i32> {
        let c = Creds { uid: h.uid, gid: h.gid, pid: h.pid };
        let b = &self.bridge;
        let node = h.nodeid;
        let ok = |r: Result<(), Errno>| r.map(|()| Outcome::Reply).map_err(e);
        b.stats.requests.note(h.opcode);
        match req {
            Request::Init(_) | Request::Read(_) => Err(libc::EIO),
            Request::Destroy | Request::Flush(_) | Request::Access(_) => Ok(Outcome::Reply),
            Request::Releasedir(r) => {
                b.release(node, r.fh);
                Ok(Outcome::Reply)
            }
            Request::Interrupt(_) => Ok(Outcome::None),
            Request::Forget(f) => {
                b.forget(node, f.nlookup);
                Ok(Outcome::None)
            }
            Request::BatchForget(v) => {
                for f in v {
                    b.forget(f.nodeid, f.nlookup);
                }
                Ok(Outcome::None)
            }
            Request::Lookup { name } => self.entry_reply(b.lookup(c, node, name), out),
            Request::Getattr(_) => self.attr_reply(b.getattr(node), out),
            Request::Setattr(s) => {
                let mut r = SetattrReq { ino: node, ..SetattrReq::default() };
                let v = s.valid;
                if v & abi::fattr::MODE != 0 {
                    r.valid |= setattr::MODE;
                    r.mode = s.mode;
                }
                if v & abi::fattr::UID != 0 {
                    r.valid |= setattr::UID;
                    r.uid = s.uid;
                }
                if v & abi::fattr::GID != 0 {
                    r.valid |= setattr::GID;
                    r.gid = s.gid;
                }
                if v & abi::fattr::SIZE != 0 {
                    r.valid |= setattr::SIZE;
                    r.size = s.size;
                }
                let ns = |sec: u64, nsec: u32| {
                    sec.cast_signed().saturating_mul(1_000_000_000).saturating_add(i64::from(nsec))
                };
                if v & abi::fattr::ATIME_NOW != 0 {
                    r.valid |= setattr::ATIME | setattr::ATIME_NOW;
                } else if v & abi::fattr::ATIME != 0 {
                    r.valid |= setattr::ATIME;
                    r.atime_ns = ns(s.atime, s.atimensec);
                }
                if v & abi::fattr::MTIME_NOW != 0 {
                    r.valid |= setattr::MTIME | setattr::MTIME_NOW;
                } else if v & abi::fattr::MTIME != 0 {
                    r.valid |= setattr::MTIME;
                    r.mtime_ns = ns(s.mtime, s.mtimensec);
                }
                if v & abi::fattr::CTIME != 0 {
                    r.valid |= setattr::CTIME;
                    r.ctime_ns = ns(s.ctime, s.ctimensec);
                }
                let kill = KillSetid::of(r.valid, Some(v & abi::fattr::KILL_SUIDGID != 0));
                self.attr_reply(b.setattr_killpriv(c, r, kill), out)
            }
            Request::Readlink => {
                out.extend_from_slice(&b.readlink(node).map_err(e)?);
                Ok(Outcome::Reply)
            }
            Request::Symlink { name, target } => self.entry_reply(b.symlink(c, node, name, target), out),
            Request::Mknod { arg, name } => {
                self.entry_reply(b.make_acl(c, OpCode::Mknod, node, name, arg.mode, arg.umask, arg.rdev, 0), out)
            }
            Request::Mkdir { arg, name } => {
                let mode = (arg.mode & 0o7777) | libc::S_IFDIR;
                self.entry_reply(b.make_acl(c, OpCode::Mkdir, node, name, mode, arg.umask, 0, 0), out)
            }
            Request::Unlink { name } => ok(b.remove(c, OpCode::Unlink, node, name)),
            Request::Rmdir { name } => ok(b.remove(c, OpCode::Rmdir, node, name)),
            Request::Rename { newdir, flags, name, newname } => ok(b.rename(c, node, name, newdir, newname, flags)),
            Request::Link { arg, name } => self.entry_reply(b.link(c, arg.oldnodeid, node, name), out),
            Request::Open(o) => {
                let fh = b.open(c, node, o.flags).map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::OpenOut {
                    fh,
                    open_flags: self.open_flags(o.flags),
                    backing_id: 0,
                }));
                Ok(Outcome::Reply)
            }
            Request::Opendir(o) => {
                // An open directory outlives its removal until its last release, as a file.
                let fh = b.open(c, node, o.flags).map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::OpenOut { fh, ..abi::OpenOut::default() }));
                Ok(Outcome::Reply)
            }
            Request::Readdir(r) => {
                let max = (r.size as usize).min(self.max_write as usize);
                for d in b.readdir(node, r.offset, 64 * 1024).map_err(e)? {
                    if !abi::push_dirent(out, max, d.ino, d.cookie, dt_type(d.kind), &d.name) {
                        break;
                    }
                }
                Ok(Outcome::Reply)
            }
            Request::Readdirplus(r) => {
                let max = (r.size as usize).min(self.max_write as usize);
                self.readdirplus(c, node, r.offset, max, out).map_err(e)?;
                Ok(Outcome::Reply)
            }
            Request::Write { arg, data } => {
                if !(self.opts.direct_io || arg.flags.cast_signed() & libc::O_DIRECT != 0) {
                    // Written through the page cache: the kernel keeps the pages.
                    b.note_page_cache_io(arg.fh);
                }
                let kill = arg.write_flags & abi::WRITE_KILL_SUIDGID != 0;
                let n = b.write(c, node, arg.fh, arg.offset, data, arg.flags.cast_signed(), kill).map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::WriteOut {
                    size: u32::try_from(n).unwrap_or(u32::MAX),
                    padding: 0,
                }));
                Ok(Outcome::Reply)
            }
            Request::Statfs => {
                let s = b.statfs().map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::StatfsOut {
                    blocks: s.blocks,
                    bfree: s.bfree,
                    bavail: s.bavail,
                    files: s.files,
                    ffree: s.ffree,
                    bsize: s.bsize,
                    namelen: s.namelen,
                    frsize: if s.frsize == 0 { s.bsize } else { s.frsize },
                    ..abi::StatfsOut::default()
                }));
                Ok(Outcome::Reply)
            }
            Request::Release(r) => {
                b.release(node, r.fh);
                Ok(Outcome::Reply)
            }
            Request::Fsync(f) => ok(b.fsync(node, f.fh, f.fsync_flags & 1 != 0)),
            Request::Fsyncdir(f) => match b.fsync(node, 0, f.fsync_flags & 1 != 0) {
                Ok(()) | Err(Errno::ENOSYS | Errno::EISDIR | Errno::EINVAL) => Ok(Outcome::Reply),
                Err(x) => Err(e(x)),
            },
            Request::Setxattr { arg, name, value } => ok(b.setxattr_acl(c, node, name, value, arg.flags)),
            Request::Getxattr { arg, name } => self.xattr_reply(b.getxattr_acl(node, name, arg.size), arg.size, out),
            Request::Listxattr(arg) => self.xattr_reply(b.listxattr(c, node, arg.size), arg.size, out),
            Request::Removexattr { name } => ok(b.removexattr(c, node, name)),
            Request::Create { arg, name } => {
                let mode = if arg.mode & libc::S_IFMT == 0 { arg.mode | libc::S_IFREG } else { arg.mode };
                let (a, fh) = b.create_open_acl(c, node, name, mode, arg.umask, arg.flags).map_err(e)?;
                self.entry(&a, self.opts.entry_timeout, self.opts.attr_timeout, out);
                out.extend_from_slice(bytes_of(&abi::OpenOut {
                    fh,
                    open_flags: self.open_flags(arg.flags),
                    backing_id: 0,
                }));
                Ok(Outcome::Reply)
            }
            Request::Ioctl { arg, .. } => {
                if arg.cmd != ZUFS_IOC_TICKET {
                    return Err(libc::ENOTTY);
                }
                if (arg.out_size as usize) < size_of::<IoctlTicket>() {
                    return Err(libc::EINVAL);
                }
                let t = b.ticket(arg.fh, h.uid).map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::IoctlOut::default()));
                out.extend_from_slice(Pod::as_bytes(&t));
                Ok(Outcome::Reply)
            }
            Request::Fallocate(f) => ok(b.fallocate(c, node, f.offset, f.length, f.mode)),
            Request::CopyFileRange(r) => {
                if r.flags != 0 {
                    return Err(libc::EINVAL);
                }
                let n = b
                    .copy_file_range(c, node, r.fh_in, r.off_in, r.nodeid_out, r.fh_out, r.off_out, r.len)
                    .map_err(e)?;
                out.extend_from_slice(bytes_of(&abi::WriteOut { size: n, padding: 0 }));
                Ok(Outcome::Reply)
            }
            Request::Lseek(_) | Request::Syncfs => Err(libc::ENOSYS),
        }
    }

    /// READDIRPLUS: the entries after `cookie` with their attributes, as many as fit in `max`
    /// bytes. Each entry sent with attributes is a lookup (the kernel counts a reference and
    /// forgets it later), so an entry is looked up only once it is known to fit. "." and "..",
    /// entries the kernel holds already (it asks READDIRPLUS for every directory's first page,
    /// also when it only lists names) and entries gone or refused meanwhile go without
    /// attributes (node id 0: the kernel keeps what it has, or looks the name up when needed).
    fn readdirplus(&self, c: Creds, node: u64, cookie: u64, max: usize, out: &mut Vec<u8>) -> Result<(), Errno> {
        let b = &self.bridge;
        // About what `max` bytes of READDIRPLUS records hold, as plain records.
        let want = (max / 4).max(1024);
        for d in b.readdir(node, cookie, want)? {
            let need = (size_of::<abi::EntryOut>() + size_of::<abi::Dirent>() + d.name.len()).div_ceil(8) * 8;
            if out.len() + need > max {
                break;
            }
            let bare = d.name == b"." || d.name == b".." || b.kernel_knows(d.ino);
            let looked = if bare { None } else { b.lookup(c, node, &d.name).ok() };
            let mut eo = abi::EntryOut::default();
            if let Some(a) = looked {
                let (ev, evn) = ttl(self.opts.entry_timeout);
                let (av, avn) = ttl(b.attr_ttl(a.ino, self.opts.attr_timeout));
                eo = abi::EntryOut {
                    nodeid: a.ino,
                    generation: a.generation,
                    entry_valid: ev,
                    attr_valid: av,
                    entry_valid_nsec: evn,
                    attr_valid_nsec: avn,
                    attr: fuse_attr(&a),
                };
            }
            let typ = dt_type(d.kind);
            if !abi::push_direntplus(out, max, &eo, d.ino, d.cookie, typ, &d.name) {
                if looked.is_some() {
                    b.forget(eo.nodeid, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn xattr_reply(&self, r: Result<(u64, Vec<u8>), Errno>, size: u32, out: &mut Vec<u8>) -> Result<Outcome, i32> {
        let (len, v) = r.map_err(e)?;
        if size == 0 {
            let size = u32::try_from(len).unwrap_or(u32::MAX);
            out.extend_from_slice(bytes_of(&abi::GetxattrOut { size, padding: 0 }));
        } else {
            out.extend_from_slice(&v);
        }
        Ok(Outcome::Reply)
    }
}

// ---------------------------------------------------------------------------------------------
// /dev/fuse readers.

/// Reads and serves `/dev/fuse` until the connection ends (ENODEV). Returns Ok on unmount.
fn dev_loop(srv: &Server, fd: RawFd) -> io::Result<()> {
    let mut buf = vec![0u8; srv.max_write as usize + PAGE * 2];
    let mut out = Vec::with_capacity(128 * 1024);
    loop {
        // SAFETY: reading into our own buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV) => return Ok(()),
                _ => return Err(err),
            }
        }
        let msg = &buf[..n.cast_unsigned()];
        out.clear();
        let (h, res) = match abi::decode_dev(msg) {
            Err((None, _)) => continue,
            Err((Some(h), er)) => {
                if er != abi::DecodeError::Unknown(h.opcode) {
                    tracing::warn!("fuse: malformed request (opcode {}): {er}", h.opcode);
                }
                (h, Err(er.errno()))
            }
            Ok((h, Request::Read(a))) => {
                out.resize(a.size as usize, 0);
                let r = srv.read(&a, h.nodeid, &mut out);
                if let Ok(got) = r {
                    out.truncate(got);
                }
                (h, r.map(|_| Outcome::Reply))
            }
            Ok((h, Request::Init(i))) => {
                srv.init_reply(&i, &mut out);
                (h, Ok(Outcome::Reply))
            }
            Ok((h, req)) => (h, srv.handle(&h, req, &mut out)),
        };
        let r = match res {
            Ok(Outcome::None) => continue,
            Ok(Outcome::Reply) => write_dev(fd, h.unique, 0, &out),
            Err(errno) => write_dev(fd, h.unique, -errno, &[]),
        };
        if let Err(er) = r
            && er.raw_os_error() == Some(libc::ENODEV)
        {
            return Ok(());
        }
    }
}

/// Reads INIT from a fresh mount's `/dev/fuse`.
fn read_init(fd: RawFd) -> io::Result<(InHeader, abi::InitIn)> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        return match abi::decode_dev(&buf[..n.cast_unsigned()]) {
            Ok((h, Request::Init(i))) => Ok((h, i)),
            _ => Err(io::Error::other("the first FUSE request was not INIT")),
        };
    }
}

fn clone_fd(fd: RawFd) -> io::Result<File> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let mut src = u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t).
    const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
    // SAFETY: the ioctl reads a u32 from a live local.
    if unsafe { libc::ioctl(f.as_raw_fd(), FUSE_DEV_IOC_CLONE, &raw mut src) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// The rings.

/// A buffer the kernel writes while an SQE naming it is in flight.
struct RawBuf {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

impl RawBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for a FUSE ring buffer");
        Self { ptr, len, layout }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

struct Ent {
    hdr: RawBuf,
    payload: RawBuf,
    iov: Box<[libc::iovec; 2]>,
    /// The last command submitted for this entry (to resubmit on EINTR/EAGAIN).
    last: Option<squeue::Entry128>,
}

fn cmd_sqe(
    fd: RawFd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<*const libc::iovec>,
    tag: u64,
) -> squeue::Entry128 {
    let req = abi::UringCmdReq { flags: 0, commit_id, qid, padding: [0; 6] };
    let mut cmd = [0u8; 80];
    cmd[..size_of::<abi::UringCmdReq>()].copy_from_slice(bytes_of(&req));
    let mut b = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
    if let Some(p) = iov {
        b = b.addr(Some(p as u64));
    }
    let mut sqe = b.build().user_data(tag);
    if iov.is_some() {
        // io-uring 0.7's UringCmd80 leaves `len` (the iovec count) unset: write it at its
        // offset in struct io_uring_sqe (opcode, flags, ioprio, fd, off, addr, then len).
        const _: () = assert!(size_of::<squeue::Entry128>() == 128);
        let p = (&raw mut sqe).cast::<u8>();
        // SAFETY: Entry128 is repr(C) over the 128-byte SQE; bytes 24..28 are its `len` (u32).
        unsafe { p.add(24).cast::<u32>().write_unaligned(2) };
    }
    sqe
}

/// Serves queue `qid` (pinned to CPU `cpu` when it is online) until the connection ends.
fn ring_thread(
    srv: &Server,
    state: &UringState,
    fd: RawFd,
    qid: u16,
    cpu: Option<usize>,
    payload: usize,
) -> io::Result<()> {
    if let Some(c) = cpu
        && srv.opts.pin
        && !pin_to(c)
    {
        tracing::warn!("fuse uring: cannot pin queue {qid} to CPU {c}");
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        IoUring::builder().setup_single_issuer().build(u32::from(DEPTH) * 2)?;
    let mut ents: Vec<Ent> = (0..DEPTH)
        .map(|_| {
            let hdr = RawBuf::new(abi::URING_REQ_HEADER);
            let pl = RawBuf::new(payload);
            let iov = Box::new([
                libc::iovec { iov_base: hdr.ptr.cast(), iov_len: hdr.len },
                libc::iovec { iov_base: pl.ptr.cast(), iov_len: pl.len },
            ]);
            Ent { hdr, payload: pl, iov, last: None }
        })
        .collect();
    for (i, ent) in ents.iter_mut().enumerate() {
        let sqe = cmd_sqe(fd, abi::URING_CMD_REGISTER, qid, 0, Some(ent.iov.as_ptr()), i as u64);
        ent.last = Some(sqe.clone());
        // SAFETY: the SQE names buffers owned by `ents`, which outlive the ring (dropped after it).
        unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("SQ full"))?;
    }
    let mut out = Vec::with_capacity(128 * 1024);
    let mut done: Vec<(usize, i32)> = Vec::with_capacity(usize::from(DEPTH));
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(er) if er.raw_os_error() == Some(libc::EINTR) => continue,
            Err(er) => return Err(er),
        }
        done.clear();
        done.extend(ring.completion().map(|c| (usize::try_from(c.user_data()).unwrap_or(usize::MAX), c.result())));
        for &(i, res) in &done {
            let Some(ent) = ents.get_mut(i) else { continue };
            if res == -libc::EINTR || res == -libc::EAGAIN {
                if let Some(s) = ent.last.clone() {
                    // SAFETY: as above.
                    unsafe { ring.submission().push(&s) }.map_err(|_| io::Error::other("SQ full"))?;
                }
                continue;
            }
            if res < 0 {
                // ENOTCONN / ECONNABORTED: the connection ended (unmount or abort).
                return if res == -libc::ENOTCONN || res == -libc::ECONNABORTED || res == -libc::ENODEV {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
            }
            state.served.get(current_cpu()).map(|a| a.fetch_add(1, Ordering::Relaxed));
            let commit = serve_entry(srv, ent, &mut out);
            let sqe = cmd_sqe(fd, abi::URING_CMD_COMMIT_AND_FETCH, qid, commit, None, i as u64);
            ent.last = Some(sqe.clone());
            // SAFETY: as above.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("SQ full"))?;
        }
    }
}

/// Serves the request sitting in `ent` (its CQE arrived: the kernel is done writing) and writes
/// the reply into it; returns the commit id.
fn serve_entry(srv: &Server, ent: &mut Ent, out: &mut Vec<u8>) -> u64 {
    let mut hdr = [0u8; abi::URING_REQ_HEADER];
    // SAFETY: the kernel completed this entry's CQE and does not write its buffers until we
    // commit; copy the header area once and validate the copy.
    unsafe { core::ptr::copy_nonoverlapping(ent.hdr.ptr, hdr.as_mut_ptr(), hdr.len()) };
    let h: InHeader = read_struct(&hdr[..abi::URING_HDR_AREA]).unwrap_or_default();
    let op_in = &hdr[abi::URING_HDR_AREA..2 * abi::URING_HDR_AREA];
    let io: abi::UringEntInOut = read_struct(&hdr[2 * abi::URING_HDR_AREA..]).unwrap_or_default();
    let commit = io.commit_id;
    let plen = ent.payload.len;
    // SAFETY: as above, the payload is ours until the commit; nothing else aliases it now.
    let payload = unsafe { core::slice::from_raw_parts_mut(ent.payload.ptr, plen) };
    out.clear();
    let res: Result<usize, i32> = if io.payload_sz as usize > plen {
        Err(libc::EINVAL)
    } else if h.opcode == op::READ {
        // Straight into the payload: READ has no payload of its own.
        match read_struct::<abi::ReadIn>(op_in) {
            Some(a) => srv.read(&a, h.nodeid, payload),
            None => Err(libc::EINVAL),
        }
    } else {
        let rest = &payload[..io.payload_sz as usize];
        match abi::decode(&h, op_in, rest) {
            Ok(req) => match srv.handle(&h, req, out) {
                Ok(_) if out.len() > plen => Err(libc::EIO),
                Ok(_) => {
                    payload[..out.len()].copy_from_slice(out);
                    Ok(out.len())
                }
                Err(x) => Err(x),
            },
            Err(er) => Err(er.errno()),
        }
    };
    let (error, n) = match res {
        Ok(n) => (0, n),
        Err(x) => (-x, 0),
    };
    let oh = OutHeader { len: u32::try_from(size_of::<OutHeader>() + n).unwrap_or(0), error, unique: h.unique };
    let eio = abi::UringEntInOut { commit_id: commit, payload_sz: u32::try_from(n).unwrap_or(0), ..Default::default() };
    // SAFETY: writes within our header buffer (288 bytes) before handing it back to the kernel.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes_of(&oh).as_ptr(), ent.hdr.ptr, size_of::<OutHeader>());
        core::ptr::copy_nonoverlapping(
            bytes_of(&eio).as_ptr(),
            ent.hdr.ptr.add(2 * abi::URING_HDR_AREA),
            size_of::<abi::UringEntInOut>(),
        );
    }
    commit
}

impl Transport for UringTransport {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn serve(
        &self,
        bridge: Arc<Bridge>,
        mountpoint: &Path,
        opts: &FuseOptions,
        ready: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let max_write = u32::try_from(bridge.max_io().min(1 << 20)).unwrap_or(1 << 20).max(4096);
        let guard = ParamGuard::acquire();
        let dev = mount_fuse(mountpoint, opts)?;
        let fd = dev.as_raw_fd();
        let (h, init) = match read_init(fd) {
            Ok(x) => x,
            Err(er) => {
                // SAFETY: NUL-terminated path.
                let _ = cstr(mountpoint.as_os_str().as_bytes())
                    .map(|c| unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) });
                return Err(er);
            }
        };
        let offered = (u64::from(init.flags2) << 32) & abi::init::OVER_IO_URING != 0;
        let uring = offered && u64::from(init.flags) & abi::init::INIT_EXT != 0;
        if !uring {
            let why = format!(
                "the kernel did not offer FUSE_OVER_IO_URING at INIT (is {PARAM} on? `options fuse enable_uring=1` in /etc/modprobe.d/fuse.conf)"
            );
            if self.required {
                let _ = write_dev(fd, h.unique, -libc::EPROTO, &[]);
                // SAFETY: NUL-terminated path.
                let _ = cstr(mountpoint.as_os_str().as_bytes())
                    .map(|c| unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) });
                return Err(io::Error::other(why));
            }
            tracing::warn!("fuse: transport classic: {why}");
        }
        let srv = Arc::new(Server { bridge: Arc::clone(&bridge), opts: opts.clone(), max_write, uring });
        let mut out = Vec::new();
        let flags = srv.init_reply(&init, &mut out);
        write_dev(fd, h.unique, 0, &out)?;
        drop(guard);
        let uring = flags & abi::init::OVER_IO_URING != 0;
        self.state.set_active(if uring { "uring" } else { "classic" });
        // Page-cache notifications go over /dev/fuse (on either transport).
        set_invalidators(&bridge, &dev)?;
        let online = online_cpus();
        if uring {
            let pages = (max_write.max(init.max_readahead) as usize).div_ceil(PAGE);
            let payload = (8192usize).max(max_write as usize).max(pages * PAGE);
            for q in 0..possible_cpus() {
                let srv = Arc::clone(&srv);
                let state = Arc::clone(&self.state);
                let cpu = online.contains(&q).then_some(q);
                let qid = u16::try_from(q).unwrap_or(u16::MAX);
                std::thread::Builder::new().name(format!("fuse-ring-{q}")).spawn(move || {
                    if let Err(er) = ring_thread(&srv, &state, fd, qid, cpu, payload) {
                        tracing::warn!("fuse ring {qid}: {er}");
                    }
                })?;
            }
        } else {
            // Classic /dev/fuse: one more reader per CPU, each on a cloned fd, pinned.
            for (n, &cpu) in online.iter().enumerate().skip(1) {
                let srv = Arc::clone(&srv);
                let f = clone_fd(fd)?;
                let pin = opts.pin;
                std::thread::Builder::new().name(format!("fuse-dev-{n}")).spawn(move || {
                    if pin {
                        pin_to(cpu);
                    }
                    let _ = dev_loop(&srv, f.as_raw_fd());
                })?;
            }
            if opts.pin {
                pin_to(online[0]);
            }
        }
        ready();
        let r = dev_loop(&srv, fd);
        // The ring threads end with the connection (their entries complete with ENOTCONN).
        drop(dev);
        r
    }
}
