//! The filesystem: public API over any [`Persist`] backend.
//!
//! Concurrency: each inode has its own `RwLock` (data ops take only that lock). Namespace ops take
//! the namespace lock shared plus the directory's lock, then the child's (always parent before
//! child, so the tree order prevents deadlock); rename takes the namespace lock exclusively and
//! then locks every inode involved in inode-number order. The journal commit is one short critical
//! section (two fences); block allocation is sharded per CPU.
//!
//! This file holds the core: the [`Fs`] struct, its locks, the transaction wrapper [`Op`], mount,
//! unmount, mkfs/fsck and the inode attributes. The operations live in the submodules:
//! [`namespace`] (lookup, create, link, unlink, rename, readdir, open/release, reclaim), [`data`]
//! (read, write, truncate, fallocate, fsync), [`dax`] (map/map_done, the dax reader probe, the
//! quarantine of freed data blocks) and [`xattr`].

mod data;
mod dax;
mod namespace;
mod xattr;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::lock;

use zus_pmem::Persist;

use crate::alloc::BlockAlloc;
use crate::check::{self, FsckReport};
use crate::error::{FsError, Result};
use crate::inode::Inode;
use crate::journal::{Journal, Txn};
use crate::layout::{BLOCK, DiskInode, Geometry, MAX_FILE_BLOCKS, ROOT_INO, S_IFDIR, S_IFMT, SB_OFF};

pub use data::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
pub use dax::MapExtent;
pub use namespace::{DirEntry, RENAME_EXCHANGE, RENAME_NOREPLACE};
pub use xattr::{XATTR_CREATE, XATTR_REPLACE};

/// Blocks handled per write/fallocate transaction (bounds journal use).
const CHUNK_BLOCKS: u64 = 256;
/// Extents freed per truncate/reclaim transaction.
const FREE_BATCH: usize = 256;

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
    /// change time at least this (ns): by default a setattr stamps ctime now; with this it stays
    /// where it is unless this is later (a ctime never goes back). The kernel module sends the
    /// ctime it knows with a DAX read's atime update, which changes no ctime.
    pub ctime: Option<i64>,
}

/// When reads and readdir update atime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum AtimePolicy {
    /// When atime is not after mtime or ctime, or is a day old (Linux's default).
    #[default]
    Relatime = 0,
    /// On every access.
    Strict = 1,
    /// Never (and always on a read-only mount: reads do not write pmem).
    NoAtime = 2,
}

/// mkfs options.
#[derive(Clone, Copy, Debug, Default)]
pub struct MkfsOptions {
    /// inode count (default: one per 8 KiB)
    pub inodes: Option<u64>,
    /// allocator shards (default 8)
    pub shards: Option<u32>,
}

/// Current time in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

type WGuard<'a> = RwLockWriteGuard<'a, Option<Box<Inode>>>;

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
    /// [`AtimePolicy`] as u8.
    atime: AtomicU8,
    /// Inodes whose records the journal's log holds (a copy kept under the journal lock, so
    /// in-place stores skip that lock when the log holds none).
    logged_inodes: AtomicUsize,
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
        let (s, n) = match self.fs.balloc.alloc(want, goal) {
            Some(r) => r,
            // Blocks freed by logged transactions come back at a checkpoint: ours, or one that
            // another thread ran a moment ago (its frees are in the allocator once the journal
            // lock is free, which `checkpoint` takes), so try again whatever ours released.
            None => {
                self.fs.checkpoint()?;
                self.fs.balloc.alloc(want, goal).ok_or(FsError::NoSpace)?
            }
        };
        self.allocated.push((s, n));
        self.txn.set_bits(s, n);
        Ok((s, n))
    }

    /// Frees metadata blocks (never handed to a client): reusable once the transaction commits.
    fn free(&mut self, s: u64, n: u64) {
        self.free_data(s, n, false);
    }

    fn new_ino(&mut self) -> Result<(u64, u64)> {
        let x = lock(&self.fs.ifree).pop().ok_or(FsError::NoSpace)?;
        self.new_inos.push(x);
        Ok(x)
    }

    fn commit(mut self) -> Result<()> {
        self.done = true;
        let txn = std::mem::take(&mut self.txn);
        let r = {
            let mut j = crate::lock_hot(&self.fs.journal);
            let r = j.commit(&self.fs.pm, &self.fs.geo, txn, &self.free_after);
            self.fs.logged_inodes.store(j.logged_inodes(), Ordering::Release);
            // Blocks a checkpoint released go back under the journal lock (see `alloc`).
            if let Ok(released) = &r {
                self.fs.release_blocks(released);
            }
            r
        };
        match r {
            Ok(_) => {
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

fn node_mut<'g>(g: &'g mut WGuard<'_>) -> Result<&'g mut Inode> {
    g.as_deref_mut().ok_or(FsError::NotFound)
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
    Journal::format(pm, &geo)?;
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
            atime: AtomicU8::new(AtimePolicy::Relatime as u8),
            logged_inodes: AtomicUsize::new(0),
        };
        for ino in l.report.orphans {
            let mut g = fs.wl(ino)?;
            fs.reclaim(ino, &mut g)?;
        }
        Ok(fs)
    }

    /// Unmount, returning the device (checkpointed: its journal is empty).
    pub fn into_pmem(self) -> P {
        if self.live().is_ok() {
            let _ = self.checkpoint();
        }
        self.pm.fence();
        self.pm
    }

    /// Checkpoint the journal (`journal.rs`): every logged change is made durable in place and
    /// the log emptied; blocks freed by logged transactions become reusable. Returns how many.
    /// (Never needed for durability: a logged change is durable when its op returns.)
    pub fn checkpoint(&self) -> Result<u64> {
        // After a failed commit the in-place state may lag the log: keep the log for the next
        // mount's replay.
        self.live()?;
        let mut j = lock(&self.journal);
        let released = j.checkpoint(&self.pm, &self.geo);
        self.logged_inodes.store(j.logged_inodes(), Ordering::Release);
        let released = released.inspect_err(|_| self.poisoned.store(true, Ordering::SeqCst))?;
        // Under the journal lock: a thread whose allocation failed and that checkpoints after
        // this one finds these blocks in the allocator (`Tx::alloc`).
        self.release_blocks(&released);
        drop(j);
        Ok(released.iter().map(|f| f.1).sum())
    }

    fn release_blocks(&self, blocks: &[crate::journal::Freed]) {
        for &(s, n, quarantine) in blocks {
            if quarantine {
                self.balloc.release_committed(s, n);
            } else {
                self.balloc.release(s, n);
            }
        }
    }

    /// Before an in-place store to inode `ino`'s record outside the journal (hot fields):
    /// checkpoint if a logged transaction wrote that record, or its replay after a crash would
    /// roll the store back. Call with the inode's lock held.
    pub(crate) fn before_inplace(&self, ino: u64) -> Result<()> {
        // Without the lock when the log holds no inode (the usual case for data-only work): a
        // transaction that logged `ino` held `ino`'s lock, which the caller holds now, so its
        // count is visible here.
        if self.logged_inodes.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.live()?;
        let mut j = lock(&self.journal);
        if !j.logged(ino) {
            return Ok(());
        }
        let released = j.checkpoint(&self.pm, &self.geo);
        self.logged_inodes.store(j.logged_inodes(), Ordering::Release);
        let released = released.inspect_err(|_| self.poisoned.store(true, Ordering::SeqCst))?;
        self.release_blocks(&released);
        drop(j);
        Ok(())
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
        if self.live().is_ok() {
            self.checkpoint()?;
        }
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
                        || m.xattr_nblk != d.xattr_nblk
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
        let slot = self.slot(ino)?;
        Ok(crate::acquire_hot(|| slot.try_write(), || slot.write(), |e| self.poisoned_by_panic(e)))
    }

    fn rl(&self, ino: u64) -> Result<RwLockReadGuard<'_, Option<Box<Inode>>>> {
        Ok(self.slot(ino)?.read().unwrap_or_else(|e| self.poisoned_by_panic(e)))
    }

    fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|e| self.poisoned_by_panic(e))
    }

    // ---------------------------------------------------------------- attributes

    /// statfs.
    pub fn statfs(&self) -> StatFs {
        // Blocks freed by logged transactions are free on pmem (reusable at the next checkpoint).
        let free = self.balloc.free_blocks() + lock(&self.journal).pending_free_blocks();
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

    /// Sets when reads and readdir update atime.
    pub fn set_atime_policy(&self, p: AtimePolicy) {
        self.atime.store(p as u8, Ordering::Relaxed);
    }

    /// Whether an access at `now` updates an atime of `n` under the policy.
    fn atime_due(&self, n: &Inode, now: i64) -> bool {
        const DAY_NS: i64 = 24 * 3600 * 1_000_000_000;
        let a = n.d.atime;
        match self.atime.load(Ordering::Relaxed) {
            0 => a <= n.d.mtime || a <= n.d.ctime || now.saturating_sub(a) >= DAY_NS,
            1 => a != now,
            _ => false,
        }
    }

    /// An access (read, readdir) of `ino`: updates atime when the policy says so, in place
    /// (one 8-byte store of a hot field, flushed; durable at the next fence, like any
    /// timestamp). Checked under the read lock first: usually nothing to do.
    pub(crate) fn touch_atime(&self, ino: u64) {
        let now = now_ns();
        if self.live().is_err() || !self.rl(ino).is_ok_and(|g| g.as_ref().is_some_and(|n| self.atime_due(n, now))) {
            return;
        }
        let Ok(mut g) = self.wl(ino) else { return };
        let Some(n) = g.as_deref_mut() else { return };
        if !self.atime_due(n, now) {
            return;
        }
        let at = self.geo.inode_off(ino) + 8;
        if self.before_inplace(ino).is_ok()
            && self.pm.store(at, &now.to_le_bytes()).and_then(|()| self.pm.flush(at, 8)).is_ok()
        {
            n.d.atime = now;
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let g = self.rl(ino)?;
        Ok(attr_of(ino, g.as_ref().ok_or(FsError::NotFound)?))
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
        n.d.ctime = sa.ctime.map_or(now, |c| c.max(n.d.ctime));
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

    /// A write by a user without CAP_FSETID: clear S_ISUID, and S_ISGID when the group-exec bit
    /// is set (the rule of the kernel's FUSE setattr), in one transaction; nothing when neither
    /// is set (the usual case: no journal).
    pub fn kill_suidgid(&self, ino: u64) -> Result<()> {
        self.live()?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let mut kill = n.d.mode & S_ISUID;
        if n.d.mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
            kill |= S_ISGID;
        }
        if kill == 0 || !n.is_reg() {
            return Ok(());
        }
        n.d.mode &= !kill;
        n.d.ctime = now_ns();
        n.dirty = true;
        let mut op = Op::new(self);
        n.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()
    }
}

/// Set-user-id bit.
pub const S_ISUID: u32 = 0o4000;
/// Set-group-id bit.
pub const S_ISGID: u32 = 0o2000;
/// Group-execute bit.
const S_IXGRP: u32 = 0o0010;
