//! nullfs: the memcpy null filesystem, the benchmark partner (as ZUFS compared FUSE against "a
//! memcpy null-FS").
//!
//! It keeps a namespace in memory (enough for fio: lookup, getattr, setattr, create, mkdir, open,
//! read, write, fsync, unlink, rmdir, readdir, statfs) and no data: a write copies the caller's
//! bytes into a per-thread scratch buffer (so it costs what moving the data costs) and extends the
//! file size; a read returns a fixed pattern, byte `o` of any file being `o % 251`, so readers can
//! verify what they got. Nothing survives an unmount. Written in safe Rust (P-PL3).
#![deny(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use zus_api::Errno;
use zus_api::ops::{Attr, SetattrReq, StatfsReply, io_flags, setattr};
use zus_plugin::{
    Caller, DataSink, DataSource, Device, DirSink, FileSystem, PluginError, WriteDone, sink_write, source_read,
};

const ROOT: u64 = 1;
/// Pattern period: a prime, so the pattern does not line up with block sizes.
const PERIOD: usize = 251;
/// Largest single read served from the pattern buffer.
const PATTERN_LEN: usize = (1 << 20) + PERIOD;

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The byte nullfs returns at file offset `off`.
#[must_use]
pub fn pattern_byte(off: u64) -> u8 {
    u8::try_from(off % PERIOD as u64).unwrap_or(0)
}

#[derive(Debug)]
struct Node {
    ino: u64,
    mode: AtomicU32,
    uid: AtomicU32,
    gid: AtomicU32,
    nlink: AtomicU32,
    size: AtomicU64,
    atime: AtomicI64,
    mtime: AtomicI64,
    ctime: AtomicI64,
    /// Children of a directory (name -> ino), `None` for files.
    children: Option<Mutex<BTreeMap<Vec<u8>, u64>>>,
}

impl Node {
    fn new(ino: u64, mode: u32, c: &Caller) -> Self {
        let t = now_ns();
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        Self {
            ino,
            mode: AtomicU32::new(mode),
            uid: AtomicU32::new(c.uid),
            gid: AtomicU32::new(c.gid),
            nlink: AtomicU32::new(if dir { 2 } else { 1 }),
            size: AtomicU64::new(0),
            atime: AtomicI64::new(t),
            mtime: AtomicI64::new(t),
            ctime: AtomicI64::new(t),
            children: dir.then(|| Mutex::new(BTreeMap::new())),
        }
    }

    fn attr(&self) -> Attr {
        let size = self.size.load(Ordering::Relaxed);
        Attr {
            ino: self.ino,
            generation: 1,
            size,
            blocks: 0,
            atime_ns: self.atime.load(Ordering::Relaxed),
            mtime_ns: self.mtime.load(Ordering::Relaxed),
            ctime_ns: self.ctime.load(Ordering::Relaxed),
            mode: self.mode.load(Ordering::Relaxed),
            nlink: self.nlink.load(Ordering::Relaxed),
            uid: self.uid.load(Ordering::Relaxed),
            gid: self.gid.load(Ordering::Relaxed),
            rdev: 0,
            blksize: 4096,
        }
    }

    fn dir(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, u64>>, Errno> {
        let m = self.children.as_ref().ok_or(Errno::ENOTDIR)?;
        Ok(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// The null filesystem.
#[derive(Debug)]
pub struct NullFs {
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
    next_ino: AtomicU64,
    pattern: Vec<u8>,
    /// Test hook: an op on a file with this name panics (P-PL2 tests), when mounted with
    /// `-o panic_on=NAME`.
    panic_on: Option<Vec<u8>>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl NullFs {
    fn node(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&ino).cloned().ok_or(Errno::ENOENT)
    }

    fn check_panic(&self, name: &[u8]) {
        if self.panic_on.as_deref() == Some(name) {
            panic!("nullfs: asked to panic on {:?}", String::from_utf8_lossy(name));
        }
    }

    fn make(&self, c: &Caller, dir: u64, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        self.check_panic(name);
        let parent = self.node(dir)?;
        let mut children = parent.dir()?;
        if children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node::new(ino, mode, c));
        let attr = node.attr();
        if node.children.is_some() {
            parent.nlink.fetch_add(1, Ordering::Relaxed);
        }
        self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ino, node);
        children.insert(name.to_vec(), ino);
        parent.mtime.store(now_ns(), Ordering::Relaxed);
        Ok(attr)
    }

    fn remove(&self, dir: u64, name: &[u8], want_dir: bool) -> Result<(), Errno> {
        let parent = self.node(dir)?;
        let mut children = parent.dir()?;
        let ino = *children.get(name).ok_or(Errno::ENOENT)?;
        let node = self.node(ino)?;
        match (&node.children, want_dir) {
            (Some(_), false) => return Err(Errno::EISDIR),
            (None, true) => return Err(Errno::ENOTDIR),
            (Some(c), true) => {
                if !c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                parent.nlink.fetch_sub(1, Ordering::Relaxed);
            }
            (None, false) => {}
        }
        children.remove(name);
        if node.nlink.fetch_sub(1, Ordering::Relaxed) <= 1 || want_dir {
            self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ino);
        }
        parent.mtime.store(now_ns(), Ordering::Relaxed);
        Ok(())
    }
}

impl FileSystem for NullFs {
    const NAME: &'static str = "nullfs";
    const NEEDS_DEVICE: bool = false;

    fn mount(_dev: Option<Device>, options: &str) -> Result<Self, PluginError> {
        let mut panic_on = None;
        for o in options.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("panic_on", name)) => panic_on = Some(name.as_bytes().to_vec()),
                _ if ["ro", "rw", "sync"].contains(&o) => {}
                _ => return Err(PluginError::new(Errno::EINVAL, format!("nullfs: unknown option {o:?}"))),
            }
        }
        let root = Caller { uid: 0, gid: 0, pid: 0 };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Arc::new(Node::new(ROOT, libc::S_IFDIR | 0o777, &root)));
        let pattern = (0..PATTERN_LEN as u64).map(pattern_byte).collect();
        Ok(Self { nodes: RwLock::new(nodes), next_ino: AtomicU64::new(ROOT + 1), pattern, panic_on })
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn statfs(&self) -> Result<StatfsReply, Errno> {
        let files = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).len() as u64;
        Ok(StatfsReply {
            blocks: 1 << 30,
            bfree: 1 << 30,
            bavail: 1 << 30,
            files: files + (1 << 20),
            ffree: 1 << 20,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
            reserved: 0,
        })
    }

    fn lookup(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<Attr, Errno> {
        self.check_panic(name);
        let parent = self.node(dir)?;
        let ino = match name {
            b"." => dir,
            _ => *parent.dir()?.get(name).ok_or(Errno::ENOENT)?,
        };
        Ok(self.node(ino)?.attr())
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(self.node(ino)?.attr())
    }

    fn setattr(&self, _c: &Caller, r: &SetattrReq) -> Result<Attr, Errno> {
        let n = self.node(r.ino)?;
        let t = now_ns();
        if r.valid & setattr::MODE != 0 {
            let kind = n.mode.load(Ordering::Relaxed) & libc::S_IFMT;
            n.mode.store(kind | (r.mode & 0o7777), Ordering::Relaxed);
        }
        if r.valid & setattr::UID != 0 {
            n.uid.store(r.uid, Ordering::Relaxed);
        }
        if r.valid & setattr::GID != 0 {
            n.gid.store(r.gid, Ordering::Relaxed);
        }
        if r.valid & setattr::SIZE != 0 {
            if n.children.is_some() {
                return Err(Errno::EISDIR);
            }
            n.size.store(r.size, Ordering::Relaxed);
            n.mtime.store(t, Ordering::Relaxed);
        }
        if r.valid & setattr::ATIME != 0 {
            n.atime.store(r.atime_ns, Ordering::Relaxed);
        }
        if r.valid & setattr::ATIME_NOW != 0 {
            n.atime.store(t, Ordering::Relaxed);
        }
        if r.valid & setattr::MTIME != 0 {
            n.mtime.store(r.mtime_ns, Ordering::Relaxed);
        }
        if r.valid & setattr::MTIME_NOW != 0 {
            n.mtime.store(t, Ordering::Relaxed);
        }
        n.ctime.store(t, Ordering::Relaxed);
        Ok(n.attr())
    }

    fn create(&self, c: &Caller, dir: u64, name: &[u8], mode: u32, _flags: u32) -> Result<Attr, Errno> {
        self.make(c, dir, name, libc::S_IFREG | (mode & 0o7777))
    }

    fn mknod(&self, c: &Caller, dir: u64, name: &[u8], mode: u32, _rdev: u32) -> Result<Attr, Errno> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.make(c, dir, name, libc::S_IFREG | (mode & 0o7777))
    }

    fn mkdir(&self, c: &Caller, dir: u64, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        self.make(c, dir, name, libc::S_IFDIR | (mode & 0o7777))
    }

    fn unlink(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(dir, name, false)
    }

    fn rmdir(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(dir, name, true)
    }

    fn readdir(&self, dir: u64, cookie: u64, out: &mut DirSink) -> Result<(), Errno> {
        let d = self.node(dir)?;
        let children = d.dir()?;
        // Cookies: 1 = ".", 2 = "..", then 3 + index in name order.
        if cookie < 1 && !out.push(dir, u32::from(libc::DT_DIR), b".", 1) {
            return Ok(());
        }
        if cookie < 2 && !out.push(dir, u32::from(libc::DT_DIR), b"..", 2) {
            return Ok(());
        }
        let skip = usize::try_from(cookie.saturating_sub(2)).unwrap_or(usize::MAX);
        for (i, (name, &ino)) in children.iter().enumerate().skip(skip) {
            let kind = self
                .node(ino)
                .map_or(libc::DT_UNKNOWN, |n| if n.children.is_some() { libc::DT_DIR } else { libc::DT_REG });
            if !out.push(ino, u32::from(kind), name, 3 + i as u64) {
                break;
            }
        }
        Ok(())
    }

    fn read(&self, ino: u64, _fh: u64, offset: u64, len: u64, dst: &dyn DataSink) -> Result<u64, Errno> {
        let n = self.node(ino)?;
        if n.children.is_some() {
            return Err(Errno::EISDIR);
        }
        let size = n.size.load(Ordering::Relaxed);
        let len = len.min(size.saturating_sub(offset));
        let mut done = 0u64;
        while done < len {
            let phase = usize::try_from((offset + done) % PERIOD as u64).unwrap_or(0);
            let chunk = (len - done).min((PATTERN_LEN - PERIOD) as u64);
            let chunk_us = usize::try_from(chunk).map_err(|_| Errno::EINVAL)?;
            let src = &self.pattern[phase..phase + chunk_us];
            let at = usize::try_from(done).map_err(|_| Errno::EINVAL)?;
            sink_write(dst, at, src)?;
            done += chunk;
        }
        Ok(len)
    }

    fn write(
        &self,
        _c: &Caller,
        ino: u64,
        _fh: u64,
        offset: u64,
        len: u64,
        flags: u32,
        src: &dyn DataSource,
    ) -> Result<WriteDone, Errno> {
        let n = self.node(ino)?;
        if n.children.is_some() {
            return Err(Errno::EISDIR);
        }
        let ulen = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < ulen {
                s.resize(ulen, 0);
            }
            source_read(src, 0, &mut s[..ulen])
        })?;
        let at = if flags & io_flags::APPEND != 0 { n.size.fetch_add(len, Ordering::AcqRel) } else { offset };
        let end = at.checked_add(len).ok_or(Errno::EFBIG)?;
        let size = n.size.fetch_max(end, Ordering::AcqRel).max(end);
        n.mtime.store(now_ns(), Ordering::Relaxed);
        Ok(WriteDone { bytes: len, offset: at, size })
    }

    fn fsync(&self, ino: u64, _fh: u64, _datasync: bool) -> Result<(), Errno> {
        self.node(ino).map(|_| ())
    }
}

zus_plugin::export_plugin!(NullFs);
