//! The filesystem: public API over any [`Persist`] backend.
//!
//! Concurrency: each inode has its own `RwLock` (data ops take only that lock). Namespace ops take
//! the namespace lock shared plus the directory's lock, then the child's (always parent before
//! child, so the tree order prevents deadlock); rename takes the namespace lock exclusively and
//! then locks every inode involved in inode-number order. The journal commit is one short critical
//! section (two fences); block allocation is sharded per CPU.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::lock;

use zus_pmem::{DataSink, DataSource, Persist, sink_from_slice};

use crate::alloc::BlockAlloc;
use crate::check::{self, FsckReport, encode_xattrs};
use crate::error::{FsError, Result};
use crate::inode::{DEnt, Inode};
use crate::journal::{Journal, Txn};
use crate::layout::{
    BLOCK, DSLOTS_PER_BLOCK, DiskInode, Geometry, IFLAG_INLINE_LINK, INLINE_AREA, MAX_FILE_BLOCKS, NAME_MAX, ROOT_INO,
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, SB_OFF, dirent_slots, dtype_of,
};

/// RENAME_NOREPLACE (as in linux/fs.h).
pub const RENAME_NOREPLACE: u32 = 1;
/// RENAME_EXCHANGE.
pub const RENAME_EXCHANGE: u32 = 2;
/// FALLOC_FL_KEEP_SIZE.
pub const FALLOC_FL_KEEP_SIZE: u32 = 1;
/// FALLOC_FL_PUNCH_HOLE (needs KEEP_SIZE).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 2;
/// XATTR_CREATE.
pub const XATTR_CREATE: u32 = 1;
/// XATTR_REPLACE.
pub const XATTR_REPLACE: u32 = 2;

/// Blocks handled per write/fallocate transaction (bounds journal use).
const CHUNK_BLOCKS: u64 = 256;
/// Extra blocks allocated past EOF on appends, so most appends need no transaction.
const PREALLOC_BLOCKS: u64 = 63;
/// Extents freed per truncate/reclaim transaction.
const FREE_BATCH: usize = 256;
/// Most hard links to one file.
const LINK_MAX: u32 = 65_000;

/// Attributes of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attr {
    /// inode number
    pub ino: u64,
    /// bytes
    pub size: u64,
    /// 512-byte units allocated
    pub blocks: u64,
    /// type and permissions
    pub mode: u32,
    /// links
    pub nlink: u32,
    /// owner
    pub uid: u32,
    /// group
    pub gid: u32,
    /// device number
    pub rdev: u64,
    /// ns since the epoch
    pub atime: i64,
    /// ns since the epoch
    pub mtime: i64,
    /// ns since the epoch
    pub ctime: i64,
    /// bumped when the inode number is reused
    pub generation: u64,
    /// preferred I/O size
    pub blksize: u32,
}

/// statfs result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatFs {
    /// block size
    pub bsize: u32,
    /// data blocks
    pub blocks: u64,
    /// free blocks
    pub bfree: u64,
    /// free blocks for unprivileged users
    pub bavail: u64,
    /// inodes
    pub files: u64,
    /// free inodes
    pub ffree: u64,
    /// longest name
    pub namelen: u32,
}

/// A directory entry from [`Fs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// inode
    pub ino: u64,
    /// name
    pub name: Vec<u8>,
    /// d_type (DT_DIR = 4, DT_REG = 8, ...)
    pub dtype: u8,
    /// cookie to pass to readdir to continue after this entry
    pub next: u64,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    /// the current time
    Now,
    /// ns since the epoch
    Ns(i64),
}

/// Fields to change in [`Fs::setattr`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// permission bits (the type bits are ignored)
    pub mode: Option<u32>,
    /// owner
    pub uid: Option<u32>,
    /// group
    pub gid: Option<u32>,
    /// truncate / extend
    pub size: Option<u64>,
    /// access time
    pub atime: Option<TimeSpec>,
    /// modification time
    pub mtime: Option<TimeSpec>,
}

/// mkfs options.
#[derive(Clone, Copy, Debug, Default)]
pub struct MkfsOptions {
    /// inode count (default: one per 8 KiB)
    pub inodes: Option<u64>,
    /// allocator shards (default 8)
    pub shards: Option<u32>,
}

/// One piece of a file range mapped for direct access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapExtent {
    /// file offset
    pub file_off: u64,
    /// bytes
    pub len: u64,
    /// device offset, or None for a hole (read intent only; reads as zeros)
    pub dev_off: Option<u64>,
}

/// Current time in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

type WGuard<'a> = RwLockWriteGuard<'a, Option<Box<Inode>>>;

/// Blocks reserved for a range before the inode is changed.
struct NewBlocks {
    /// (file block, device block, count)
    runs: Vec<(u64, u64, u64)>,
    /// extent-chain blocks for the new slots
    chains: Vec<u64>,
}

impl NewBlocks {
    /// Device block of file block `lb` among the new runs, and how many follow in that run.
    fn map(&self, lb: u64) -> Option<(u64, u64)> {
        self.runs.iter().find(|r| (r.0..r.0 + r.2).contains(&lb)).map(|&(l, p, c)| (p + lb - l, l + c - lb))
    }
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct Fs<P: Persist> {
    pm: P,
    geo: Geometry,
    journal: Mutex<Journal>,
    balloc: BlockAlloc,
    /// free inode numbers with their last generation
    ifree: Mutex<Vec<(u64, u64)>>,
    /// Boxed so a free slot costs 16 bytes of DRAM.
    inodes: Vec<RwLock<Option<Box<Inode>>>>,
    ns: RwLock<()>,
    poisoned: AtomicBool,
}

/// One operation's transaction plus the DRAM resources it reserved (given back if it fails).
struct Op<'a, P: Persist> {
    fs: &'a Fs<P>,
    txn: Txn,
    allocated: Vec<(u64, u64)>,
    /// (start, len, quarantine): blocks this transaction frees
    free_after: Vec<(u64, u64, bool)>,
    new_inos: Vec<(u64, u64)>,
    free_inos: Vec<(u64, u64)>,
    done: bool,
}

impl<'a, P: Persist> Op<'a, P> {
    fn new(fs: &'a Fs<P>) -> Self {
        Op {
            fs,
            txn: Txn::new(),
            allocated: Vec::new(),
            free_after: Vec::new(),
            new_inos: Vec::new(),
            free_inos: Vec::new(),
            done: false,
        }
    }

    /// Allocate up to `want` contiguous blocks (at least one) or fail with ENOSPC.
    fn alloc(&mut self, want: u64, goal: Option<u64>) -> Result<(u64, u64)> {
        let (s, n) = self.fs.balloc.alloc(want, goal).ok_or(FsError::NoSpace)?;
        self.allocated.push((s, n));
        self.txn.set_bits(s, n);
        Ok((s, n))
    }

    /// Frees metadata blocks (never handed to a client): reusable once the transaction commits.
    fn free(&mut self, s: u64, n: u64) {
        self.free_data(s, n, false);
    }

    /// Frees data blocks of a file; those of a file a client mapped wait out the reuse grace.
    fn free_data(&mut self, s: u64, n: u64, dax_mapped: bool) {
        self.txn.clear_bits(s, n);
        self.free_after.push((s, n, dax_mapped));
    }

    fn new_ino(&mut self) -> Result<(u64, u64)> {
        let x = lock(&self.fs.ifree).pop().ok_or(FsError::NoSpace)?;
        self.new_inos.push(x);
        Ok(x)
    }

    fn commit(mut self) -> Result<()> {
        self.done = true;
        let txn = std::mem::take(&mut self.txn);
        let r = lock(&self.fs.journal).commit(&self.fs.pm, &self.fs.geo, txn);
        match r {
            Ok(()) => {
                for &(s, n, quarantine) in &self.free_after {
                    if quarantine {
                        self.fs.balloc.release_committed(s, n);
                    } else {
                        self.fs.balloc.release(s, n);
                    }
                }
                if !self.free_inos.is_empty() {
                    lock(&self.fs.ifree).extend(self.free_inos.iter().copied());
                }
                Ok(())
            }
            Err(e) => {
                // DRAM already reflects the change; it can no longer be trusted.
                self.fs.poisoned.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

impl<P: Persist> Drop for Op<'_, P> {
    fn drop(&mut self) {
        if !self.done {
            for &(s, n) in &self.allocated {
                self.fs.balloc.release(s, n);
            }
            if !self.new_inos.is_empty() {
                lock(&self.fs.ifree).extend(self.new_inos.iter().copied());
            }
        }
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(FsError::Invalid("bad name".into()));
    }
    Ok(())
}

fn node_mut<'g>(g: &'g mut WGuard<'_>) -> Result<&'g mut Inode> {
    g.as_deref_mut().ok_or(FsError::NotFound)
}

/// `dir` is a live directory (not unlinked) without an entry `name`: a new name may go there.
fn check_new_name(dir: &Inode, name: &[u8]) -> Result<()> {
    let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
    if dir.d.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if di.names.contains_key(name) {
        return Err(FsError::Exists);
    }
    Ok(())
}

fn attr_of(ino: u64, n: &Inode) -> Attr {
    Attr {
        ino,
        size: n.d.size,
        blocks: n.nblocks() * (BLOCK / 512),
        mode: n.d.mode,
        nlink: n.d.nlink,
        uid: n.d.uid,
        gid: n.d.gid,
        rdev: n.d.rdev,
        atime: n.d.atime,
        mtime: n.d.mtime,
        ctime: n.d.ctime,
        generation: n.d.generation,
        blksize: 4096,
    }
}

fn resolve(t: TimeSpec, now: i64) -> i64 {
    match t {
        TimeSpec::Now => now,
        TimeSpec::Ns(v) => v,
    }
}

/// Write a fresh filesystem on `pm` (bytes 0..4096, the device header, are left alone).
pub fn format<P: Persist>(pm: &P, opts: &MkfsOptions) -> Result<()> {
    let geo = Geometry::compute(pm.len(), opts.inodes, opts.shards)?;
    let now = now_ns();
    // Invalidate any old superblock first, so a crash during mkfs leaves an unmountable device.
    pm.store(SB_OFF, &[0u8; 128])?;
    pm.persist(SB_OFF, 128)?;
    pm.nt_zero(geo.journal_off(), 64)?;
    let n = usize::try_from(geo.ninodes).map_err(|_| FsError::Invalid("inode count".into()))?;
    let mut table = vec![0u8; n * 256];
    for i in 0..n {
        let ino = i as u64;
        let d = if ino == ROOT_INO {
            DiskInode {
                mode: S_IFDIR | 0o755,
                nlink: 2,
                parent: ROOT_INO,
                atime: now,
                mtime: now,
                ctime: now,
                generation: 1,
                ..DiskInode::free(0)
            }
        } else {
            DiskInode::free(0)
        };
        table[i * 256..i * 256 + 256].copy_from_slice(&d.encode(ino));
    }
    pm.nt_store(geo.inode_off(0), &table)?;
    let mut bm = vec![0u8; usize::try_from(geo.bitmap_blocks * BLOCK).unwrap_or(0)];
    for b in 0..geo.data_blk {
        bm[(b / 8) as usize] |= 1 << (b % 8);
    }
    pm.nt_store(geo.bitmap_off(), &bm)?;
    pm.fence();
    let mut sb = vec![0u8; BLOCK as usize];
    sb[..128].copy_from_slice(&geo.encode(now));
    pm.nt_store(SB_OFF, &sb)?;
    pm.fence();
    Ok(())
}

/// Check a device (replaying its journal first, which writes to it) and report.
pub fn fsck<P: Persist>(pm: &P) -> Result<FsckReport> {
    check::load(pm).map(|l| l.report)
}

impl<P: Persist> Fs<P> {
    /// Format `pm` and mount it.
    pub fn mkfs(pm: P, opts: &MkfsOptions) -> Result<Self> {
        format(&pm, opts)?;
        Self::mount(pm)
    }

    /// Mount: validate the superblock, replay the journal, load and check every structure, then
    /// reclaim orphans. A device that fails any check is refused with the first problems found.
    pub fn mount(pm: P) -> Result<Self> {
        let l = check::load(&pm)?;
        if !l.report.is_clean() {
            let n = l.report.errors.len();
            let first: Vec<&str> = l.report.errors.iter().take(3).map(String::as_str).collect();
            return Err(FsError::Corrupt(format!("{n} problem(s), first: {}", first.join("; "))));
        }
        let bitmap = l.bitmap;
        let balloc =
            BlockAlloc::new(&l.geo, |b| bitmap.get((b / 64) as usize).is_some_and(|w| w & (1 << (b % 64)) != 0));
        let mut free = l.free_inos;
        free.reverse(); // pop() hands out low numbers first
        let fs = Fs {
            pm,
            geo: l.geo,
            journal: Mutex::new(l.journal),
            balloc,
            ifree: Mutex::new(free),
            inodes: l.inodes.into_iter().map(RwLock::new).collect(),
            ns: RwLock::new(()),
            poisoned: AtomicBool::new(false),
        };
        for ino in l.report.orphans {
            let mut g = fs.wl(ino)?;
            fs.reclaim(ino, &mut g)?;
        }
        Ok(fs)
    }

    /// Unmount, returning the device.
    pub fn into_pmem(self) -> P {
        self.pm.fence();
        self.pm
    }

    /// The device.
    pub fn pmem(&self) -> &P {
        &self.pm
    }

    /// Geometry (for tools).
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Check the device while mounted (call when no operation is running): every on-pmem
    /// invariant, plus that the in-DRAM state (inodes, extents, directories, xattrs, allocator)
    /// matches what a fresh mount would load.
    pub fn check(&self) -> Result<FsckReport> {
        self.pm.fence();
        let l = check::load(&self.pm)?;
        let mut r = l.report;
        // Open-but-unlinked inodes are legal while mounted.
        r.orphans.retain(|&i| self.rl(i).ok().and_then(|g| g.as_ref().map(|n| n.open)).unwrap_or(0) == 0);
        for (i, disk) in l.inodes.iter().enumerate().skip(1) {
            let Ok(g) = self.rl(i as u64) else { continue };
            match (g.as_ref(), disk) {
                (None, None) => {}
                (Some(m), Some(d)) => {
                    let ext = |n: &Inode| n.ext.iter().map(|(&k, e)| (k, e.len, e.pblk)).collect::<Vec<_>>();
                    let names = |n: &Inode| {
                        n.dir.as_ref().map(|x| {
                            let mut v: Vec<_> =
                                x.names.iter().map(|(k, e)| (k.clone(), e.ino, e.dtype, e.pos)).collect();
                            v.sort();
                            v
                        })
                    };
                    if m.d != d.d
                        || ext(m) != ext(d)
                        || names(m) != names(d)
                        || m.xattrs != d.xattrs
                        || m.chain != d.chain
                        || m.mapped != d.mapped
                        || m.mapped != m.ext.values().map(|e| e.len).sum::<u64>()
                    {
                        r.errors.push(format!("inode {i}: in-memory state differs from pmem"));
                    }
                }
                (m, _) => r.errors.push(format!("inode {i}: in memory {}, on pmem {}", m.is_some(), disk.is_some())),
            }
        }
        let mut bad = 0;
        for b in self.geo.data_blk..self.geo.total_blocks {
            let on_pm = l.bitmap.get((b / 64) as usize).is_some_and(|w| w & (1 << (b % 64)) != 0);
            let in_dram = self.balloc.is_used(b);
            // Quarantined blocks are free on pmem and still held in DRAM (alloc.rs).
            if on_pm != in_dram && !(in_dram && self.balloc.is_quarantined(b)) {
                bad += 1;
            }
        }
        if bad > 0 {
            r.errors.push(format!("allocator: {bad} blocks differ between memory and the pmem bitmap"));
        }
        Ok(r)
    }

    /// A lock whose holder panicked (a bug; the plugin adapter turned it into an errno): the
    /// in-memory state may be half-updated, so refuse further changes until a remount.
    fn poisoned_by_panic<G>(&self, e: std::sync::PoisonError<G>) -> G {
        self.poisoned.store(true, Ordering::SeqCst);
        e.into_inner()
    }

    fn live(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Relaxed) { Err(FsError::Shutdown) } else { Ok(()) }
    }

    fn slot(&self, ino: u64) -> Result<&RwLock<Option<Box<Inode>>>> {
        if ino == 0 {
            return Err(FsError::NotFound);
        }
        usize::try_from(ino).ok().and_then(|i| self.inodes.get(i)).ok_or(FsError::NotFound)
    }

    fn wl(&self, ino: u64) -> Result<WGuard<'_>> {
        Ok(self.slot(ino)?.write().unwrap_or_else(|e| self.poisoned_by_panic(e)))
    }

    fn rl(&self, ino: u64) -> Result<RwLockReadGuard<'_, Option<Box<Inode>>>> {
        Ok(self.slot(ino)?.read().unwrap_or_else(|e| self.poisoned_by_panic(e)))
    }

    fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|e| self.poisoned_by_panic(e))
    }

    // ---------------------------------------------------------------- attributes

    /// Replaces where the allocator learns the layout generation and the oldest dax copy in
    /// progress (zusd's host API by default): for tests and in-process tools.
    pub fn set_dax_reader_probe(&self, probe: crate::alloc::ReaderProbe) {
        self.balloc.set_reader_probe(probe);
    }

    /// statfs.
    pub fn statfs(&self) -> StatFs {
        let free = self.balloc.free_blocks();
        StatFs {
            bsize: 4096,
            blocks: self.geo.total_blocks - self.geo.data_blk,
            bfree: free,
            bavail: free,
            files: self.geo.ninodes - 1,
            ffree: lock(&self.ifree).len() as u64,
            namelen: 255,
        }
    }

    /// Make everything done so far durable.
    pub fn sync(&self) -> Result<()> {
        self.live()?;
        self.pm.fence();
        Ok(())
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let g = self.rl(ino)?;
        Ok(attr_of(ino, g.as_ref().ok_or(FsError::NotFound)?))
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let ino = {
            let g = self.rl(parent)?;
            let d = g.as_ref().ok_or(FsError::NotFound)?;
            if name == b"." {
                parent
            } else if name == b".." {
                if d.is_dir() { d.d.parent } else { return Err(FsError::NotDir) }
            } else {
                if name.len() > NAME_MAX {
                    return Err(FsError::NameTooLong);
                }
                d.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?.ino
            }
        };
        self.getattr(ino)
    }

    /// Change attributes. All changes, the size included, are one transaction (a shrink of more
    /// than 512 MiB or 256 extents is split; each step is a valid truncate).
    pub fn setattr(&self, ino: u64, sa: &SetAttr) -> Result<Attr> {
        self.live()?;
        let mut g = self.wl(ino)?;
        let now = now_ns();
        let n = node_mut(&mut g)?;
        if sa.size.is_some() {
            if n.is_dir() {
                return Err(FsError::IsDir);
            }
            if !n.is_reg() {
                return Err(FsError::Invalid("size of a non-regular file".into()));
            }
        }
        if sa.size.is_some_and(|x| x > MAX_FILE_BLOCKS * BLOCK) {
            return Err(FsError::TooBig);
        }
        if let Some(m) = sa.mode {
            n.d.mode = (n.d.mode & S_IFMT) | (m & 0o7777);
        }
        if let Some(u) = sa.uid {
            n.d.uid = u;
        }
        if let Some(gid) = sa.gid {
            n.d.gid = gid;
        }
        if let Some(t) = sa.atime {
            n.d.atime = resolve(t, now);
        }
        if let Some(t) = sa.mtime {
            n.d.mtime = resolve(t, now);
        }
        n.d.ctime = now;
        n.dirty = true;
        if let Some(size) = sa.size {
            // set_size commits the fields above with the new size.
            self.set_size(ino, &mut g, size, sa.mtime.is_none())?;
        } else {
            let mut op = Op::new(self);
            n.flush_record(&self.geo, ino, &mut op.txn);
            op.commit()?;
        }
        Ok(attr_of(ino, node_mut(&mut g)?))
    }

    // ---------------------------------------------------------------- namespace

    /// Insert `name -> ino` into directory `dir` (allocating a directory block if needed).
    /// Fails only before changing anything.
    fn dir_insert(&self, op: &mut Op<'_, P>, dir: &mut Inode, name: &[u8], ino: u64, dtype: u8) -> Result<()> {
        let k = dirent_slots(name.len());
        let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
        let pos = match di.find_free(k) {
            Some((b, s)) => u32::try_from(b).map_err(|_| FsError::NoSpace)? * DSLOTS_PER_BLOCK + s,
            None => {
                let lb = di.used.len() as u64;
                if lb >= u64::from(u32::MAX / DSLOTS_PER_BLOCK) {
                    return Err(FsError::NoSpace);
                }
                let last = if lb > 0 { dir.map(lb - 1).map(|(p, _)| p) } else { None };
                let (p, _) = op.alloc(1, last.map(|p| p + 1))?;
                // A slot may be needed (the block might not merge into the last extent).
                if !dir.has_free_slot() {
                    let (c, _) = op.alloc(1, None)?;
                    dir.add_chain(c, &mut op.txn);
                }
                op.txn.zero(p * BLOCK, BLOCK);
                dir.ext_insert(lb, p, 1, &mut op.txn)?;
                dir.d.size += BLOCK;
                dir.dirty = true;
                let di = dir.dir.as_mut().ok_or(FsError::NotDir)?;
                di.used.push(0);
                di.hint = di.used.len() - 1;
                u32::try_from(lb).map_err(|_| FsError::NoSpace)? * DSLOTS_PER_BLOCK
            }
        };
        dir.dir_put(pos, name, ino, dtype, &mut op.txn)
    }

    /// Create a node of any type (the common part of create/mknod/mkdir/symlink).
    fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        ids: (u32, u32),
        link: Option<&[u8]>,
    ) -> Result<Attr> {
        self.live()?;
        check_name(name)?;
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        check_new_name(dir, name)?;
        let is_dir = mode & S_IFMT == S_IFDIR;
        if is_dir && dir.d.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        let (ino, gen_) = op.new_ino()?;
        let d = DiskInode {
            mode,
            nlink: if is_dir { 2 } else { 1 },
            uid: ids.0,
            gid: ids.1,
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            generation: gen_ + 1,
            parent: if is_dir { parent } else { 0 },
            ..DiskInode::free(0)
        };
        let mut node = Inode::new(d);
        node.dirty = true;
        if let Some(t) = link {
            node.d.size = t.len() as u64;
            if t.len() <= INLINE_AREA {
                node.d.flags = IFLAG_INLINE_LINK;
                node.d.area[..t.len()].copy_from_slice(t);
                node.free_slots.clear();
            } else {
                let (b, _) = op.alloc(1, None)?;
                op.txn.write(b * BLOCK, t);
                node.ext_insert(0, b, 1, &mut op.txn)?;
            }
        }
        self.dir_insert(&mut op, dir, name, ino, dtype_of(mode))?;
        if is_dir {
            dir.d.nlink += 1;
        }
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        node.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()?;
        let a = attr_of(ino, &node);
        *self.wl(ino)? = Some(Box::new(node));
        Ok(a)
    }

    /// Create a regular file (`mode` permission bits).
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.make_node(parent, name, S_IFREG | (mode & 0o7777), 0, (uid, gid), None)
    }

    /// Create a node; `mode` includes the type (regular, char/block device, fifo, socket).
    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u64, uid: u32, gid: u32) -> Result<Attr> {
        match mode & S_IFMT {
            S_IFREG | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {}
            0 => return self.create(parent, name, mode, uid, gid),
            _ => return Err(FsError::Invalid("mknod type".into())),
        }
        self.make_node(parent, name, mode, rdev, (uid, gid), None)
    }

    /// Create a directory.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.make_node(parent, name, S_IFDIR | (mode & 0o7777), 0, (uid, gid), None)
    }

    /// Create a symlink (targets up to 128 bytes are stored inline in the inode).
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        if target.is_empty() || target.len() >= BLOCK as usize {
            return Err(if target.is_empty() { FsError::NotFound } else { FsError::NameTooLong });
        }
        self.make_node(parent, name, S_IFLNK | 0o777, 0, (uid, gid), Some(target))
    }

    /// Read a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let g = self.rl(ino)?;
        let n = g.as_ref().ok_or(FsError::NotFound)?;
        if n.kind() != S_IFLNK {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        let len = usize::try_from(n.d.size).map_err(|_| FsError::corrupt("symlink size"))?;
        if n.inline_link() {
            return n.d.area.get(..len).map(<[u8]>::to_vec).ok_or_else(|| FsError::corrupt("symlink size"));
        }
        let (p, _) = n.map(0).ok_or_else(|| FsError::corrupt("symlink block"))?;
        let mut v = vec![0u8; len];
        self.pm.read(p * BLOCK, &mut v)?;
        Ok(v)
    }

    /// Hard link `ino` as `name` in `parent`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        self.live()?;
        check_name(name)?;
        if ino == parent || self.rl(ino)?.as_ref().ok_or(FsError::NotFound)?.is_dir() {
            return Err(FsError::NotPermitted);
        }
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        check_new_name(dir, name)?;
        let mut cg = self.wl(ino)?;
        let node = node_mut(&mut cg)?;
        if node.is_dir() {
            return Err(FsError::NotPermitted);
        }
        if node.d.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if node.d.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        self.dir_insert(&mut op, dir, name, ino, dtype_of(node.d.mode))?;
        node.d.nlink += 1;
        node.d.ctime = now;
        node.dirty = true;
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        node.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()?;
        Ok(attr_of(ino, node))
    }

    /// Remove a non-directory name.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> Result<()> {
        self.live()?;
        if name == b"." {
            return Err(FsError::Invalid("rmdir .".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        let e: DEnt = *dir.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?;
        match (want_dir, e.dtype == 4) {
            (false, true) => return Err(FsError::IsDir),
            (true, false) => return Err(FsError::NotDir),
            _ => {}
        }
        let mut cg = self.wl(e.ino)?;
        let child = node_mut(&mut cg)?;
        if want_dir && child.dir.as_ref().is_some_and(|d| !d.names.is_empty()) {
            return Err(FsError::NotEmpty);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        dir.dir_del(name, &mut op.txn)?;
        if want_dir {
            child.d.nlink = 0;
            dir.d.nlink = dir.d.nlink.saturating_sub(1);
        } else {
            child.d.nlink = child.d.nlink.saturating_sub(1);
        }
        child.d.ctime = now;
        child.dirty = true;
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        child.flush_record(&self.geo, e.ino, &mut op.txn);
        op.commit()?;
        drop(pg);
        if child.d.nlink == 0 && child.open == 0 {
            self.reclaim(e.ino, &mut cg)?;
        }
        Ok(())
    }

    /// Rename, with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(&self, sp: u64, sname: &[u8], dp: u64, dname: &[u8], flags: u32) -> Result<()> {
        self.live()?;
        check_name(sname)?;
        check_name(dname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(FsError::Invalid("rename flags".into()));
        }
        let _ns = self.ns.write().unwrap_or_else(|e| self.poisoned_by_panic(e));
        let find = |d: u64, n: &[u8]| -> Result<Option<DEnt>> {
            let g = self.rl(d)?;
            let dn = g.as_ref().ok_or(FsError::NotFound)?;
            Ok(dn.dir.as_ref().ok_or(FsError::NotDir)?.names.get(n).copied())
        };
        let se = find(sp, sname)?.ok_or(FsError::NotFound)?;
        let de = find(dp, dname)?;
        let exchange = flags & RENAME_EXCHANGE != 0;
        if let Some(d) = de {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if d.ino == se.ino {
                return Ok(());
            }
        } else if exchange {
            return Err(FsError::NotFound);
        }
        let s_dir = se.dtype == 4;
        let d_dir = de.is_some_and(|d| d.dtype == 4);
        if !exchange && let Some(_d) = de {
            if s_dir && !d_dir {
                return Err(FsError::NotDir);
            }
            if !s_dir && d_dir {
                return Err(FsError::IsDir);
            }
        }
        // A directory must not move under itself.
        let ancestor_of = |a: u64, mut x: u64| -> Result<bool> {
            for _ in 0..self.geo.ninodes {
                if x == a {
                    return Ok(true);
                }
                if x == ROOT_INO {
                    return Ok(false);
                }
                x = self.rl(x)?.as_ref().ok_or(FsError::NotFound)?.d.parent;
            }
            Err(FsError::corrupt("directory parent loop"))
        };
        if sp != dp {
            if s_dir && ancestor_of(se.ino, dp)? {
                return Err(FsError::Invalid("move a directory under itself".into()));
            }
            if exchange
                && d_dir
                && let Some(d) = de
                && ancestor_of(d.ino, sp)?
            {
                return Err(FsError::Invalid("move a directory under itself".into()));
            }
        }
        // Lock everything involved in inode order.
        let mut inos = vec![sp, dp, se.ino];
        if let Some(d) = de {
            inos.push(d.ino);
        }
        inos.sort_unstable();
        inos.dedup();
        let mut gs: BTreeMap<u64, WGuard<'_>> = BTreeMap::new();
        for i in inos {
            gs.insert(i, self.wl(i)?);
        }
        fn n<'m, 'g>(gs: &'m mut BTreeMap<u64, WGuard<'g>>, i: u64) -> Result<&'m mut Inode> {
            gs.get_mut(&i).and_then(|g| g.as_deref_mut()).ok_or(FsError::NotFound)
        }
        if let Some(d) = de
            && !exchange
            && d_dir
            && n(&mut gs, d.ino)?.dir.as_ref().is_some_and(|x| !x.names.is_empty())
        {
            return Err(FsError::NotEmpty);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        let mut victim = None;
        if exchange {
            let d = de.ok_or(FsError::NotFound)?;
            n(&mut gs, sp)?.dir_repoint(sname, d.ino, d.dtype, &mut op.txn)?;
            n(&mut gs, dp)?.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
            if sp != dp {
                if s_dir {
                    let x = n(&mut gs, se.ino)?;
                    x.d.parent = dp;
                    x.dirty = true;
                }
                if d_dir {
                    let x = n(&mut gs, d.ino)?;
                    x.d.parent = sp;
                    x.dirty = true;
                }
            }
            let x = n(&mut gs, d.ino)?;
            x.d.ctime = now;
            x.dirty = true;
        } else {
            match de {
                Some(d) => {
                    n(&mut gs, dp)?.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
                    let v = n(&mut gs, d.ino)?;
                    v.d.nlink = if d_dir { 0 } else { v.d.nlink.saturating_sub(1) };
                    v.d.ctime = now;
                    v.dirty = true;
                    victim = Some(d.ino);
                }
                None => {
                    // Take the guard out of the map so the insert can borrow `op` and the directory.
                    let mut g = gs.remove(&dp).ok_or(FsError::NotFound)?;
                    let r = self.dir_insert(&mut op, node_mut(&mut g)?, dname, se.ino, se.dtype);
                    gs.insert(dp, g);
                    r?;
                }
            }
            n(&mut gs, sp)?.dir_del(sname, &mut op.txn)?;
            if s_dir && sp != dp {
                let x = n(&mut gs, se.ino)?;
                x.d.parent = dp;
                x.dirty = true;
            }
        }
        let x = n(&mut gs, se.ino)?;
        x.d.ctime = now;
        x.dirty = true;
        for p in [sp, dp] {
            let x = n(&mut gs, p)?;
            x.d.nlink = 2 + x.dir.as_ref().map_or(0, |d| d.subdirs);
            x.d.mtime = now;
            x.d.ctime = now;
            x.dirty = true;
        }
        for (&i, g) in gs.iter_mut() {
            if let Some(x) = g.as_mut() {
                x.flush_record(&self.geo, i, &mut op.txn);
            }
        }
        op.commit()?;
        if let Some(v) = victim {
            let open = n(&mut gs, v)?;
            if open.d.nlink == 0 && open.open == 0 {
                let mut g = gs.remove(&v).ok_or(FsError::NotFound)?;
                drop(gs);
                self.reclaim(v, &mut g)?;
            }
        }
        Ok(())
    }

    /// List a directory from `cookie` (0 = start), at most `max` entries (with "." and "..").
    pub fn readdir(&self, ino: u64, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let g = self.rl(ino)?;
        let n = g.as_ref().ok_or(FsError::NotFound)?;
        let d = n.dir.as_ref().ok_or(FsError::NotDir)?;
        let mut out = Vec::new();
        if cookie == 0 && out.len() < max {
            out.push(DirEntry { ino, name: b".".to_vec(), dtype: 4, next: 1 });
        }
        if cookie <= 1 && out.len() < max {
            out.push(DirEntry { ino: n.d.parent, name: b"..".to_vec(), dtype: 4, next: 2 });
        }
        let from = u32::try_from(cookie.saturating_sub(2)).unwrap_or(u32::MAX);
        for (&pos, name) in d.by_pos.range(from..) {
            if out.len() >= max {
                break;
            }
            if let Some(e) = d.names.get(name) {
                out.push(DirEntry { ino: e.ino, name: name.clone(), dtype: e.dtype, next: u64::from(pos) + 3 });
            }
        }
        Ok(out)
    }

    /// Note an open handle (an unlinked file stays until its last release).
    pub fn open(&self, ino: u64) -> Result<Attr> {
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        n.open = n.open.saturating_add(1);
        Ok(attr_of(ino, n))
    }

    /// Drop an open handle; the last release of an unlinked inode frees it.
    pub fn release(&self, ino: u64) -> Result<()> {
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        n.open = n.open.saturating_sub(1);
        if n.open == 0 && n.d.nlink == 0 {
            self.live()?;
            self.reclaim(ino, &mut g)?;
        } else if n.open == 0 && n.is_reg() && n.end_lblk() > n.d.size.div_ceil(BLOCK) {
            // Give back the preallocation past EOF.
            self.live()?;
            let size = n.d.size;
            self.set_size(ino, &mut g, size, false)?;
        }
        Ok(())
    }

    /// Free every block of an inode with no links, then the inode itself, in bounded steps
    /// (each a transaction that leaves a valid, smaller orphan; mount finishes an interrupted one).
    fn reclaim(&self, ino: u64, g: &mut WGuard<'_>) -> Result<()> {
        loop {
            let n = node_mut(g)?;
            let mut op = Op::new(self);
            let mut freed = Vec::new();
            let low = n.ext_remove(0, u64::MAX, FREE_BATCH, &mut op.txn, &mut freed)?;
            for (s, l) in freed {
                op.free_data(s, l, n.dax_mapped);
            }
            if low > 0 || !n.ext.is_empty() {
                n.d.size = n.d.size.min(low * BLOCK);
                n.dirty = true;
                n.flush_record(&self.geo, ino, &mut op.txn);
                op.commit()?;
                continue;
            }
            for &c in &n.chain {
                op.free(c, 1);
            }
            if n.d.xattr_blk != 0 {
                op.free(n.d.xattr_blk, 1);
            }
            let gen_ = n.d.generation;
            op.txn.write(self.geo.inode_off(ino), &DiskInode::free(gen_).encode(ino));
            op.free_inos.push((ino, gen_));
            op.commit()?;
            **g = None;
            return Ok(());
        }
    }

    // ---------------------------------------------------------------- data

    /// Zero the mapped parts of `[from, to)` (non-temporal; durable at the next fence).
    fn zero_mapped(&self, n: &Inode, from: u64, to: u64) -> Result<()> {
        let mut pos = from;
        while pos < to {
            let lb = pos / BLOCK;
            match n.map(lb) {
                Some((p, run)) => {
                    let seg_end = ((lb + run) * BLOCK).min(to);
                    self.pm.nt_zero(p * BLOCK + pos % BLOCK, seg_end - pos)?;
                    pos = seg_end;
                }
                None => match n.next_mapped(lb) {
                    Some(nl) => pos = (nl * BLOCK).max(pos + 1),
                    None => break,
                },
            }
        }
        Ok(())
    }

    /// Allocate the holes of file blocks `[first, last]` (plus `extra` blocks of preallocation
    /// after `last` when the range is at the end of the file) and the extent-chain blocks their
    /// slots may need. Only reserves: the inode is untouched until [`apply_alloc`](Self::apply_alloc).
    fn alloc_range(&self, op: &mut Op<'_, P>, n: &Inode, first: u64, last: u64, extra: u64) -> Result<NewBlocks> {
        let mut runs = Vec::new();
        let mut lb = first;
        while lb <= last {
            if let Some((_, run)) = n.map(lb) {
                lb += run;
                continue;
            }
            let hole_end = n.next_mapped(lb).unwrap_or(u64::MAX).min(last + 1);
            let mut want = hole_end - lb;
            if hole_end == last + 1 && n.next_mapped(lb).is_none() {
                want += extra;
            }
            let goal = match runs.last() {
                Some(&(l, p, c)) if l + c == lb => Some(p + c),
                _ => lb.checked_sub(1).and_then(|x| n.map(x)).map(|(p, _)| p + 1),
            };
            let (p, c) = op.alloc(want.min(crate::inode::MAX_EXTENT_BLOCKS), goal)?;
            runs.push((lb, p, c));
            lb += c;
        }
        // Slots: worst case one per run; add chain blocks before touching the inode.
        let free = n.free_slots.len();
        let mut need = runs.len().saturating_sub(free);
        let mut chains = Vec::new();
        while need > 0 {
            chains.push(op.alloc(1, None)?.0);
            need = need.saturating_sub(crate::layout::CHAIN_SLOTS);
        }
        Ok(NewBlocks { runs, chains })
    }

    /// Map blocks from [`alloc_range`](Self::alloc_range) into the inode. Cannot fail once the
    /// allocation succeeded (slots were provided), so callers do it after every fallible step.
    fn apply_alloc(n: &mut Inode, nb: &NewBlocks, txn: &mut Txn) -> Result<()> {
        for &c in &nb.chains {
            n.add_chain(c, txn);
        }
        for &(l, p, c) in &nb.runs {
            n.ext_insert(l, p, c, txn)?;
        }
        Ok(())
    }

    /// Write `len` bytes from `src` at `off`. Data is durable after [`fsync`](Self::fsync) (or on
    /// return with `sync`). Returns bytes written (short only on ENOSPC after some progress).
    pub fn write(
        &self,
        ino: u64,
        off: u64,
        src: &dyn DataSource,
        src_off: usize,
        len: usize,
        sync: bool,
    ) -> Result<usize> {
        self.write_impl(ino, Some(off), src, src_off, len, sync).map(|w| w.1)
    }

    /// O_APPEND write: at the end of file, atomically with respect to other writers.
    /// Returns (offset written at, bytes, size afterwards).
    pub fn write_append(
        &self,
        ino: u64,
        src: &dyn DataSource,
        src_off: usize,
        len: usize,
        sync: bool,
    ) -> Result<(u64, usize, u64)> {
        self.write_impl(ino, None, src, src_off, len, sync)
    }

    fn write_impl(
        &self,
        ino: u64,
        off: Option<u64>,
        src: &dyn DataSource,
        src_off: usize,
        len: usize,
        sync: bool,
    ) -> Result<(u64, usize, u64)> {
        self.live()?;
        if src_off.checked_add(len).is_none_or(|e| e > src.len()) {
            return Err(FsError::Invalid("source buffer range".into()));
        }
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        if n.is_dir() {
            return Err(FsError::IsDir);
        }
        if !n.is_reg() {
            return Err(FsError::Invalid("write to a non-regular file".into()));
        }
        let off = off.unwrap_or(n.d.size);
        if len == 0 {
            return Ok((off, 0, n.d.size));
        }
        let end = off.checked_add(len as u64).ok_or(FsError::TooBig)?;
        if end > MAX_FILE_BLOCKS * BLOCK {
            return Err(FsError::TooBig);
        }
        let mut done = 0usize;
        let chunk = (CHUNK_BLOCKS * BLOCK) as usize;
        while done < len {
            let c = (len - done).min(chunk);
            match self.write_chunk(ino, n, off + done as u64, src, src_off + done, c) {
                Ok(()) => done += c,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if sync {
            self.pm.fence();
        }
        Ok((off, done, n.d.size))
    }

    fn write_chunk(
        &self,
        ino: u64,
        n: &mut Inode,
        off: u64,
        src: &dyn DataSource,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        let end = off + len as u64;
        let first = off / BLOCK;
        let last = (end - 1) / BLOCK;
        let old_size = n.d.size;
        let mut op = Op::new(self);
        // Preallocate past EOF for appends, growing with the file (no waste on small files);
        // trimmed at the last close.
        let extra = if old_size <= (last + 1) * BLOCK { PREALLOC_BLOCKS.min(n.nblocks()) } else { 0 };
        let nb = self.alloc_range(&mut op, n, first, last, extra)?;
        for &(l, p, c) in &nb.runs {
            // Newly allocated edge blocks: zero what this write does not cover.
            if (l..l + c).contains(&first) && !off.is_multiple_of(BLOCK) {
                self.pm.nt_zero((p + first - l) * BLOCK, off % BLOCK)?;
            }
            if (l..l + c).contains(&last) && !end.is_multiple_of(BLOCK) {
                self.pm.nt_zero((p + last - l) * BLOCK + end % BLOCK, BLOCK - end % BLOCK)?;
            }
        }
        if off > old_size {
            self.zero_mapped(n, old_size, off)?;
        }
        // The data, straight from the client buffer. A failing client copy (EFAULT) returns
        // before the inode changed; the new blocks go back to the allocator.
        let mut pos = off;
        while pos < end {
            let lb = pos / BLOCK;
            let (p, run) =
                nb.map(lb).or_else(|| n.map(lb)).ok_or_else(|| FsError::corrupt("write: block not mapped"))?;
            let seg = ((lb + run) * BLOCK).min(end) - pos;
            let so = src_off + (pos - off) as usize;
            self.pm.write_from(p * BLOCK + pos % BLOCK, src, so, seg as usize, true)?;
            pos += seg;
        }
        Self::apply_alloc(n, &nb, &mut op.txn)?;
        let runs = &nb.runs;
        let now = now_ns();
        n.d.mtime = now;
        n.d.ctime = now;
        let grows = end > old_size;
        if grows {
            n.d.size = end;
        }
        if !runs.is_empty() {
            // Data (and zeroing) must be durable before the extents that expose it.
            self.pm.fence();
            n.dirty = true;
            n.flush_record(&self.geo, ino, &mut op.txn);
            return op.commit();
        }
        drop(op);
        let io = self.geo.inode_off(ino);
        if grows {
            // Size is one 8-byte store: atomic. The data before it must be durable first.
            self.pm.fence();
            let mut hot = [0u8; 32];
            hot[..8].copy_from_slice(&n.d.size.to_le_bytes());
            hot[8..16].copy_from_slice(&n.d.atime.to_le_bytes());
            hot[16..24].copy_from_slice(&now.to_le_bytes());
            hot[24..32].copy_from_slice(&now.to_le_bytes());
            self.pm.store(io, &hot)?;
            self.pm.flush(io, 32)?;
        } else {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&now.to_le_bytes());
            t[8..].copy_from_slice(&now.to_le_bytes());
            self.pm.store(io + 16, &t)?;
            self.pm.flush(io + 16, 16)?;
        }
        Ok(())
    }

    /// Convenience: write a byte slice.
    pub fn write_bytes(&self, ino: u64, off: u64, data: &[u8], sync: bool) -> Result<usize> {
        self.write(ino, off, &zus_pmem::SliceSource(data), 0, data.len(), sync)
    }

    /// Read up to `len` bytes at `off` into `dst` at `dst_off` (holes read as zeros).
    pub fn read(&self, ino: u64, off: u64, dst: &dyn DataSink, dst_off: usize, len: usize) -> Result<usize> {
        if dst_off.checked_add(len).is_none_or(|e| e > dst.len()) {
            return Err(FsError::Invalid("destination buffer range".into()));
        }
        let g = self.rl(ino)?;
        let n = g.as_ref().ok_or(FsError::NotFound)?;
        if n.is_dir() {
            return Err(FsError::IsDir);
        }
        if !n.is_reg() {
            return Err(FsError::Invalid("read of a non-regular file".into()));
        }
        if off >= n.d.size {
            return Ok(0);
        }
        let total = (n.d.size - off).min(len as u64);
        let end = off + total;
        let mut pos = off;
        const Z: [u8; 4096] = [0; 4096];
        while pos < end {
            let lb = pos / BLOCK;
            let d_at = dst_off + (pos - off) as usize;
            match n.map(lb) {
                Some((p, run)) => {
                    let seg = ((lb + run) * BLOCK).min(end) - pos;
                    self.pm.read_into(p * BLOCK + pos % BLOCK, dst, d_at, seg as usize)?;
                    pos += seg;
                }
                None => {
                    let hole_end = n.next_mapped(lb).map_or(end, |x| (x * BLOCK).min(end));
                    let seg = (hole_end - pos).min(Z.len() as u64);
                    sink_from_slice(dst, d_at, &Z[..seg as usize])
                        .map_err(|e| FsError::Pmem(zus_pmem::PmemError::Copy(e)))?;
                    pos += seg;
                }
            }
        }
        Ok(total as usize)
    }

    /// Convenience: read into a new Vec.
    pub fn read_vec(&self, ino: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        let n = self.read(ino, off, &zus_pmem::SliceSink::new(&mut v), 0, len)?;
        v.truncate(n);
        Ok(v)
    }

    /// Make the file's data and metadata durable.
    pub fn fsync(&self, ino: u64, _datasync: bool) -> Result<()> {
        self.live()?;
        self.slot(ino)?;
        self.pm.fence();
        Ok(())
    }

    fn set_size(&self, ino: u64, g: &mut WGuard<'_>, size: u64, touch: bool) -> Result<()> {
        if size > MAX_FILE_BLOCKS * BLOCK {
            return Err(FsError::TooBig);
        }
        let now = now_ns();
        let n = node_mut(g)?;
        let old = n.d.size;
        if size > old {
            self.zero_mapped(n, old, size)?;
            self.pm.fence();
        }
        let keep = size.div_ceil(BLOCK);
        loop {
            let mut op = Op::new(self);
            let mut freed = Vec::new();
            let low = n.ext_remove(keep, u64::MAX, FREE_BATCH, &mut op.txn, &mut freed)?;
            for (s, l) in freed {
                op.free_data(s, l, n.dax_mapped);
            }
            n.d.size = if low <= keep { size } else { low * BLOCK };
            if touch {
                n.d.mtime = now;
                n.d.ctime = now;
            }
            n.dirty = true;
            n.flush_record(&self.geo, ino, &mut op.txn);
            op.commit()?;
            if low <= keep {
                return Ok(());
            }
        }
    }

    /// fallocate: allocate (mode 0 or KEEP_SIZE) or punch a hole (PUNCH_HOLE|KEEP_SIZE).
    pub fn fallocate(&self, ino: u64, mode: u32, off: u64, len: u64) -> Result<()> {
        self.live()?;
        if len == 0 {
            return Err(FsError::Invalid("zero length".into()));
        }
        let end = off.checked_add(len).ok_or(FsError::TooBig)?;
        if end > MAX_FILE_BLOCKS * BLOCK {
            return Err(FsError::TooBig);
        }
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        if n.is_dir() {
            return Err(FsError::IsDir);
        }
        if !n.is_reg() {
            return Err(FsError::Invalid("fallocate of a non-regular file".into()));
        }
        let now = now_ns();
        match mode {
            0 | FALLOC_FL_KEEP_SIZE => {
                let (first, last) = (off / BLOCK, (end - 1) / BLOCK);
                let mut lb = first;
                while lb <= last {
                    let hi = (lb + CHUNK_BLOCKS - 1).min(last);
                    let mut op = Op::new(self);
                    let nb = self.alloc_range(&mut op, n, lb, hi, 0)?;
                    for &(_, p, c) in &nb.runs {
                        self.pm.nt_zero(p * BLOCK, c * BLOCK)?;
                    }
                    Self::apply_alloc(n, &nb, &mut op.txn)?;
                    self.pm.fence();
                    n.dirty = true;
                    n.d.ctime = now;
                    n.flush_record(&self.geo, ino, &mut op.txn);
                    op.commit()?;
                    lb = hi + 1;
                }
                if mode == 0 && end > n.d.size {
                    self.set_size(ino, &mut g, end, true)?;
                }
                Ok(())
            }
            m if m == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE => {
                let a = off.div_ceil(BLOCK);
                let b = end / BLOCK;
                // partial blocks at the edges: zero in place
                let head_end = (a * BLOCK).min(end);
                if off < head_end {
                    self.zero_mapped(n, off, head_end)?;
                }
                if b * BLOCK >= head_end && b * BLOCK < end {
                    self.zero_mapped(n, b * BLOCK, end)?;
                }
                self.pm.fence();
                let mut hi = b;
                while a < hi {
                    let mut op = Op::new(self);
                    if !n.has_free_slot() {
                        let (c, _) = op.alloc(1, None)?;
                        n.add_chain(c, &mut op.txn);
                    }
                    let mut freed = Vec::new();
                    hi = n.ext_remove(a, hi, FREE_BATCH, &mut op.txn, &mut freed)?;
                    for (s, l) in freed {
                        op.free_data(s, l, n.dax_mapped);
                    }
                    n.d.ctime = now;
                    n.d.mtime = now;
                    n.dirty = true;
                    n.flush_record(&self.geo, ino, &mut op.txn);
                    op.commit()?;
                }
                Ok(())
            }
            _ => Err(FsError::NotSupported),
        }
    }

    /// Map a file range for direct access. Read intent: the extents (and holes) within the file
    /// size. Write intent: allocates (zeroed) blocks for the whole range (at most 1 MiB per call:
    /// the result may cover less) and returns device extents; the size/mtime update is committed by
    /// [`map_done`](Self::map_done) after the client wrote and flushed its data. At most
    /// `MAX_MAP_EXTENTS` extents, from `off` on.
    pub fn map(&self, ino: u64, off: u64, len: u64, write: bool) -> Result<Vec<MapExtent>> {
        self.live()?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        if !n.is_reg() {
            return Err(if n.is_dir() { FsError::IsDir } else { FsError::Invalid("map of a non-regular file".into()) });
        }
        let mut end = off.checked_add(len).ok_or(FsError::TooBig)?;
        n.dax_mapped = true;
        if write {
            if end > MAX_FILE_BLOCKS * BLOCK {
                return Err(FsError::TooBig);
            }
            end = end.min((off / BLOCK + CHUNK_BLOCKS) * BLOCK);
            if len == 0 {
                return Ok(Vec::new());
            }
            let mut op = Op::new(self);
            let nb = self.alloc_range(&mut op, n, off / BLOCK, (end - 1) / BLOCK, 0)?;
            for &(_, p, c) in &nb.runs {
                self.pm.nt_zero(p * BLOCK, c * BLOCK)?;
            }
            Self::apply_alloc(n, &nb, &mut op.txn)?;
            let runs = &nb.runs;
            if off > n.d.size {
                let s = n.d.size;
                self.zero_mapped(n, s, off)?;
            }
            self.pm.fence();
            if !runs.is_empty() {
                n.dirty = true;
                n.flush_record(&self.geo, ino, &mut op.txn);
                op.commit()?;
            }
            n.dax_hi = n.dax_hi.max(end);
        } else {
            end = end.min(n.d.size);
        }
        // At most MAX_MAP_EXTENTS (what one reply carries): a client mapping "from here to the
        // end" of a sparse file with many thousand extents must not cost a walk over all of them.
        let mut out = Vec::new();
        let mut pos = off;
        while pos < end && out.len() < zus_api::ops::MAX_MAP_EXTENTS {
            let lb = pos / BLOCK;
            match n.map(lb) {
                Some((p, run)) => {
                    let seg = ((lb + run) * BLOCK).min(end) - pos;
                    out.push(MapExtent { file_off: pos, len: seg, dev_off: Some(p * BLOCK + pos % BLOCK) });
                    pos += seg;
                }
                None => {
                    let he = n.next_mapped(lb).map_or(end, |x| (x * BLOCK).min(end));
                    out.push(MapExtent { file_off: pos, len: he - pos, dev_off: None });
                    pos = he;
                }
            }
        }
        Ok(out)
    }

    /// Finish a direct write that ended at `end`: commits size (if it grew) and mtime.
    /// The client must have flushed *and fenced* its stores first: a fence here orders only this
    /// CPU's stores, not those of the client's CPU.
    pub fn map_done(&self, ino: u64, end: u64) -> Result<Attr> {
        self.live()?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        if !n.is_reg() {
            return Err(FsError::Invalid("map_done on a non-regular file".into()));
        }
        if end > n.d.size.max(n.dax_hi) {
            return Err(FsError::Invalid("map_done beyond the mapped range".into()));
        }
        // The client's flushed data must be durable before the size that exposes it.
        self.pm.fence();
        let now = now_ns();
        n.d.mtime = now;
        n.d.ctime = now;
        if end > n.d.size {
            n.d.size = end;
        }
        let io = self.geo.inode_off(ino);
        let mut hot = [0u8; 32];
        hot[..8].copy_from_slice(&n.d.size.to_le_bytes());
        hot[8..16].copy_from_slice(&n.d.atime.to_le_bytes());
        hot[16..24].copy_from_slice(&now.to_le_bytes());
        hot[24..32].copy_from_slice(&now.to_le_bytes());
        self.pm.store(io, &hot)?;
        self.pm.persist(io, 32)?;
        Ok(attr_of(ino, n))
    }

    // ---------------------------------------------------------------- xattrs

    /// Get an xattr.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let g = self.rl(ino)?;
        g.as_ref().ok_or(FsError::NotFound)?.xattrs.get(name).cloned().ok_or(FsError::NoAttr)
    }

    /// List xattr names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let g = self.rl(ino)?;
        Ok(g.as_ref().ok_or(FsError::NotFound)?.xattrs.keys().cloned().collect())
    }

    /// Set an xattr (flags: XATTR_CREATE / XATTR_REPLACE). All of an inode's xattrs share one block.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.live()?;
        if name.is_empty() || name.len() > 255 {
            return Err(if name.is_empty() { FsError::Invalid("empty xattr name".into()) } else { FsError::Range });
        }
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let exists = n.xattrs.contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        let mut m = n.xattrs.clone();
        m.insert(name.to_vec(), value.to_vec());
        self.store_xattrs(ino, n, m)
    }

    /// Remove an xattr.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        self.live()?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let mut m = n.xattrs.clone();
        m.remove(name).ok_or(FsError::NoAttr)?;
        self.store_xattrs(ino, n, m)
    }

    fn store_xattrs(&self, ino: u64, n: &mut Inode, m: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        let mut op = Op::new(self);
        if m.is_empty() {
            if n.d.xattr_blk != 0 {
                op.free(n.d.xattr_blk, 1);
                n.d.xattr_blk = 0;
            }
        } else {
            let mut enc = encode_xattrs(&m).ok_or(FsError::NoSpace)?;
            enc.resize(BLOCK as usize, 0);
            if n.d.xattr_blk == 0 {
                n.d.xattr_blk = op.alloc(1, None)?.0;
            }
            op.txn.write(n.d.xattr_blk * BLOCK, &enc);
        }
        n.xattrs = m;
        n.d.ctime = now_ns();
        n.dirty = true;
        n.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()
    }
}
