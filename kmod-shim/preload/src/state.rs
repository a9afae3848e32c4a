//! Process state, all preallocated: the fd table, per-file slots and their references, the
//! re-entrancy guard and the fork generation. (The mount table is `mount`'s: this module
//! depends on no other of the crate's but the test hooks.)
//!
//! The hot path reads one `AtomicU32` of the fd table; for our fds that names a [`Slot`], which
//! names a mount (`mount::Mount`). Nothing here allocates or blocks after initialization; the slow paths
//! (detection, connecting) take [`InitLock`], a spin lock that a forked child resets.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use zus_api::chan::DAX_READER_SLOTS;
use zus_api::ops::MAX_MAP_EXTENTS;

/// fds at or above this go straight to the kernel.
pub const MAX_FDS: usize = 1 << 16;
/// Files (open file descriptions) served at once; more fall back to the kernel path.
pub const MAX_SLOTS: usize = 1024;

/// fd table entry: never looked at (or closed since).
pub const FD_UNKNOWN: u32 = 0;
/// fd table entry: not a file on a usable zufs mount: the real function serves it.
pub const FD_KERNEL: u32 = 1;
/// fd table entries from here on name slot `entry - FD_SLOT0`.
pub const FD_SLOT0: u32 = 16;

/// The fd table.
pub static FDS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(FD_UNKNOWN) }; MAX_FDS];

/// The fd's table entry (`FD_KERNEL` for fds out of range).
#[inline]
pub fn fd_entry(fd: i32) -> u32 {
    usize::try_from(fd).ok().and_then(|i| FDS.get(i)).map_or(FD_KERNEL, |e| e.load(Ordering::Acquire))
}

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as inside the library until dropped; `None` when it already is (a nested
/// call, e.g. from our own slow path or a signal handler that interrupted a hook).
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Enters, or `None` when re-entered.
    #[inline]
    pub fn enter() -> Option<Self> {
        IN_HOOK.with(|g| if g.replace(true) { None } else { Some(Self(())) })
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        IN_HOOK.with(|g| g.set(false));
    }
}

/// Dax reader slot indexes in use by this process's threads (one bit per slot).
static READERS_USED: [AtomicU64; DAX_READER_SLOTS / 64] = [const { AtomicU64::new(0) }; DAX_READER_SLOTS / 64];

/// A thread's dax reader slot index, given back when the thread exits.
#[derive(Debug)]
struct ReaderIndex(Cell<u32>);

const READER_NONE: u32 = u32::MAX;
const READER_FULL: u32 = u32::MAX - 1;

impl Drop for ReaderIndex {
    fn drop(&mut self) {
        let i = self.0.get();
        if (i as usize) < DAX_READER_SLOTS {
            READERS_USED[i as usize / 64].fetch_and(!(1u64 << (i % 64)), Ordering::AcqRel);
        }
    }
}

thread_local! {
    static READER: ReaderIndex = const { ReaderIndex(Cell::new(READER_NONE)) };
}

/// This thread's dax reader slot index (claimed on first use), or None when all
/// [`DAX_READER_SLOTS`] are taken by other threads (the caller then uses channel mode).
pub fn reader_index() -> Option<usize> {
    READER
        .try_with(|r| {
            let cur = r.0.get();
            if cur == READER_NONE {
                let claimed = READERS_USED.iter().enumerate().find_map(|(w, word)| {
                    let mut v = word.load(Ordering::Relaxed);
                    while v != u64::MAX {
                        let bit = (!v).trailing_zeros();
                        match word.compare_exchange(v, v | 1 << bit, Ordering::AcqRel, Ordering::Relaxed) {
                            Ok(_) => return Some(w as u32 * 64 + bit),
                            Err(now) => v = now,
                        }
                    }
                    None
                });
                r.0.set(claimed.unwrap_or(READER_FULL));
            }
            let i = r.0.get();
            ((i as usize) < DAX_READER_SLOTS).then_some(i as usize)
        })
        .ok()
        .flatten()
}

/// Bumped in a forked child: connections made before belong to the parent.
pub static FORK_GEN: AtomicU64 = AtomicU64::new(1);
/// Bumped whenever this process may have changed a file's block layout (truncate, punch,
/// open with O_TRUNC): every cached extent list is dropped.
pub static LAYOUT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// The slow-path lock (spin + yield; a forked child resets it).
#[derive(Debug)]
pub struct InitLock(AtomicBool);

/// The one slow-path lock.
pub static INIT_LOCK: InitLock = InitLock(AtomicBool::new(false));

/// Holds [`INIT_LOCK`].
#[derive(Debug)]
pub struct InitGuard(());

impl InitLock {
    /// Takes the lock.
    pub fn lock(&'static self) -> InitGuard {
        while self.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        InitGuard(())
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        INIT_LOCK.0.store(false, Ordering::Release);
    }
}

/// A cached extent: `len` bytes of the file at `file_off` at `dev_off` (or a hole).
#[derive(Debug)]
pub struct CachedExtent {
    /// File offset.
    pub file_off: AtomicU64,
    /// Device offset, `EXTENT_HOLE` for a hole.
    pub dev_off: AtomicU64,
    /// Length.
    pub len: AtomicU64,
}

/// [`Slot::refs`] while the slot is set up (between [`alloc_slot`] and its first fd) or torn
/// down (after its last reference, while the pending mtime is committed): not free, and no
/// reference can be taken.
const REFS_BUSY: u64 = u64::MAX;

/// A reference to a [`Slot`]: an fd that names it, or a call in progress on it. A call holds
/// its file's slot from its first look at the fd table to its return, as the kernel holds an
/// open file for a system call: a `close` of the fd on another thread meanwhile, and an open
/// that takes the fd number, give the new file another slot, and the call goes on with its own
/// file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    /// An fd naming the slot (counted in the low 32 bits of [`Slot::refs`]).
    Fd,
    /// A call in progress (the high 32 bits; a forked child drops these: the calls were its
    /// parent's other threads').
    Call,
}

impl Ref {
    const fn unit(self) -> u64 {
        match self {
            Self::Fd => 1,
            Self::Call => 1 << 32,
        }
    }

    const fn count(self, refs: u64) -> u64 {
        match self {
            Self::Fd => refs & 0xffff_ffff,
            Self::Call => refs >> 32,
        }
    }
}

/// One open file description we serve.
#[derive(Debug)]
pub struct Slot {
    /// References ([`Ref`]): fds naming this slot in the low 32 bits, calls in progress in the
    /// high 32; 0 = free, [`REFS_BUSY`] while set up or torn down. Changed only by
    /// [`alloc_slot`], [`Slot::publish`], [`Slot::try_retain`], [`Slot::release`] and
    /// [`after_fork_child`].
    refs: AtomicU64,
    /// Index into the mount table (`mount::MOUNTS`).
    pub mount: AtomicU32,
    /// Open flags (O_ACCMODE, O_APPEND, O_SYNC, O_DSYNC, O_DIRECT).
    pub flags: AtomicU32,
    /// Plugin inode number (= st_ino on the FUSE mount).
    pub ino: AtomicU64,
    /// st_dev of the FUSE mount.
    pub dev: AtomicU64,
    // --- dax state ---
    /// Seqlock over the extent cache: odd while a refill writes it.
    pub seq: AtomicU64,
    /// [`LAYOUT_EPOCH`] when the cache was filled.
    pub epoch: AtomicU64,
    /// zusd's layout generation (`Relay::layout_gen`) when the cache was filled.
    pub layout_gen: AtomicU64,
    /// Extents in the cache.
    pub n: AtomicU32,
    /// File size as of the fill (raised by our own writes).
    pub size: AtomicU64,
    /// Last size/mtime commit (MAP_DONE).
    pub last_commit: AtomicU64,
    /// Data was written since the last commit (mtime pending).
    pub dirty: AtomicBool,
    /// zusd's layout generation + 1 when it last answered EUSEKERNEL for this file (the kernel
    /// caches its pages); 0 = never. While the generation stays, calls go to the kernel without
    /// asking zusd again.
    pub kernel_gen: AtomicU64,
    /// The bridge's ticket for this file on a mount we do not own (0: none needed).
    pub ticket: AtomicU64,
    /// The extents, sorted by file offset, contiguous.
    pub ext: [CachedExtent; MAX_MAP_EXTENTS],
}

impl Slot {
    const fn new() -> Self {
        Self {
            refs: AtomicU64::new(0),
            mount: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            ino: AtomicU64::new(0),
            dev: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            layout_gen: AtomicU64::new(0),
            n: AtomicU32::new(0),
            size: AtomicU64::new(0),
            last_commit: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            kernel_gen: AtomicU64::new(0),
            ticket: AtomicU64::new(0),
            ext: [const { CachedExtent { file_off: AtomicU64::new(0), dev_off: AtomicU64::new(0), len: AtomicU64::new(0) } };
                MAX_MAP_EXTENTS],
        }
    }

    /// Drops the cached extents (the next access maps again).
    pub fn invalidate(&self) {
        self.epoch.store(0, Ordering::Release);
    }

    /// A slot from [`alloc_slot`], set up: it now has one reference (the fd about to name it).
    pub fn publish(&self) {
        self.refs.store(Ref::Fd.unit(), Ordering::Release);
    }

    /// Takes one more reference (a dup'ed fd, a call) unless the slot is free, set up or torn
    /// down. A caller that found the slot through an fd checks afterwards that the fd still
    /// names it: the slot may have been freed and set up for another file in between.
    pub fn try_retain(&self, r: Ref) -> bool {
        let mut v = self.refs.load(Ordering::Relaxed);
        loop {
            if v == 0 || v == REFS_BUSY {
                return false;
            }
            match self.refs.compare_exchange_weak(v, v + r.unit(), Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
    }

    /// In a forked child: drops the references of calls in progress, and a set-up or tear-down
    /// in progress (see [`after_fork_child`]).
    fn forget_calls(&self) {
        let v = self.refs.load(Ordering::Relaxed);
        self.refs.store(if v == REFS_BUSY { 0 } else { Ref::Fd.count(v) }, Ordering::Relaxed);
    }

    /// Drops one reference. Deciding whether it was the last is the same atomic step as the
    /// drop (two threads closing two dup'ed fds at once: exactly one of them is last), and the
    /// last one gets the slot as a [`LastRef`]: it is neither reused nor retained until that is
    /// dropped, so its holder can still commit the file's pending mtime.
    pub fn release(&'static self, r: Ref) -> Option<LastRef> {
        if r == Ref::Fd {
            crate::testhook::pause_release();
        }
        let mut v = self.refs.load(Ordering::Relaxed);
        loop {
            if v == REFS_BUSY || r.count(v) == 0 {
                return None;
            }
            let next = if v == r.unit() { REFS_BUSY } else { v - r.unit() };
            match self.refs.compare_exchange_weak(v, next, Ordering::AcqRel, Ordering::Relaxed) {
                // (Not `then_some`: a LastRef built and dropped would free the slot.)
                Ok(_) if next == REFS_BUSY => return Some(LastRef(self)),
                Ok(_) => return None,
                Err(now) => v = now,
            }
        }
    }
}

/// The last reference to a slot, dropped: the slot is free when this is dropped.
#[derive(Debug)]
pub struct LastRef(&'static Slot);

impl LastRef {
    /// The slot.
    pub fn slot(&self) -> &'static Slot {
        self.0
    }
}

impl Drop for LastRef {
    fn drop(&mut self) {
        self.0.refs.store(0, Ordering::Release);
    }
}

/// The slots.
pub static SLOTS: [Slot; MAX_SLOTS] = [const { Slot::new() }; MAX_SLOTS];

/// Claims a free slot, to be set up and then [`Slot::publish`]ed.
pub fn alloc_slot() -> Option<u32> {
    SLOTS
        .iter()
        .position(|s| s.refs.compare_exchange(0, REFS_BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok())
        .map(|i| i as u32)
}

/// The slot an fd table entry names.
#[inline]
pub fn slot_of(entry: u32) -> Option<&'static Slot> {
    SLOTS.get(entry.checked_sub(FD_SLOT0)? as usize)
}

/// Sets `fd`'s entry, returning the previous one.
pub fn set_entry(fd: i32, e: u32) -> u32 {
    usize::try_from(fd).ok().and_then(|i| FDS.get(i)).map_or(FD_KERNEL, |x| x.swap(e, Ordering::AcqRel))
}

/// The entry a new fd that shares `old`'s file (dup) gets, with the reference it holds taken:
/// `old`'s entry, or [`FD_UNKNOWN`] (the new fd is detected on its own) when `old` was closed
/// meanwhile or its slot cannot be retained.
pub fn dup_entry(old: i32) -> u32 {
    let e = match fd_entry(old) {
        // Out of range or never looked at: let the new fd be detected on its own.
        FD_KERNEL if usize::try_from(old).map_or(true, |o| o >= MAX_FDS) => return FD_UNKNOWN,
        e => e,
    };
    let Some(s) = slot_of(e) else { return e };
    if !s.try_retain(Ref::Fd) {
        return FD_UNKNOWN;
    }
    // The slot may have been freed and taken by another file between the load and the retain.
    if fd_entry(old) != e {
        drop(s.release(Ref::Fd));
        return FD_UNKNOWN;
    }
    e
}

/// In a forked child: connections are the parent's, and locks held by other parent threads
/// will never be released.
pub fn after_fork_child() {
    FORK_GEN.fetch_add(1, Ordering::AcqRel);
    INIT_LOCK.0.store(false, Ordering::Release);
    for s in &SLOTS {
        // Calls in progress were other threads' (gone here), as were slots being set up (no fd
        // names them yet) or torn down (the parent commits their mtime).
        s.forget_calls();
        let q = s.seq.load(Ordering::Relaxed);
        if q & 1 == 1 {
            s.invalidate();
            s.seq.store(q + 1, Ordering::Release);
        }
    }
}

/// Counters, kept only with `ZUFS_PRELOAD_STATS=1` (printed to stderr at exit).
#[derive(Debug)]
pub struct Stats {
    /// Calls served by the library.
    pub served: AtomicU64,
    /// Read/write ops sent over the channels.
    pub chan_io: AtomicU64,
    /// Of which through the bounce window (two copies).
    pub window_io: AtomicU64,
    /// Bytes copied directly to or from the mapped device.
    pub dax_bytes: AtomicU64,
    /// MAP ops.
    pub map: AtomicU64,
    /// MAP_DONE ops.
    pub map_done: AtomicU64,
    /// Other ops (getattr, fsync, setattr, fallocate).
    pub other: AtomicU64,
    /// Calls passed to the kernel because it caches the file's pages.
    pub kernel_cached: AtomicU64,
    /// Sizes the kernel was made to fetch after the fast path moved them.
    pub kernel_sync: AtomicU64,
}

/// Whether [`STATS`] are kept.
pub static STATS_ON: AtomicBool = AtomicBool::new(false);
/// The counters.
pub static STATS: Stats = Stats {
    served: AtomicU64::new(0),
    chan_io: AtomicU64::new(0),
    window_io: AtomicU64::new(0),
    dax_bytes: AtomicU64::new(0),
    map: AtomicU64::new(0),
    map_done: AtomicU64::new(0),
    other: AtomicU64::new(0),
    kernel_cached: AtomicU64::new(0),
    kernel_sync: AtomicU64::new(0),
};

/// Adds `n` to a counter when stats are on.
#[inline]
pub fn count(c: &AtomicU64, n: u64) {
    if STATS_ON.load(Ordering::Relaxed) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The stats line.
pub fn stats_line() -> String {
    let s = &STATS;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "stats pid {}: served {} chan_io {} window_io {} dax_bytes {} map {} map_done {} other {} kernel_cached {} \
         kernel_sync {}",
        std::process::id(),
        g(&s.served),
        g(&s.chan_io),
        g(&s.window_io),
        g(&s.dax_bytes),
        g(&s.map),
        g(&s.map_done),
        g(&s.other),
        g(&s.kernel_cached),
        g(&s.kernel_sync)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads drop the two references of a slot at once, many times over: each time
    /// exactly one of them is the last (and it alone may commit the mtime), and the slot is
    /// not handed out again before that one is done.
    #[test]
    fn test_exactly_one_of_two_concurrent_releases_is_the_last() {
        let s: &'static Slot = &SLOTS[MAX_SLOTS - 1];
        s.refs.store(REFS_BUSY, Ordering::Release);
        for _ in 0..2000 {
            s.publish();
            assert!(s.try_retain(Ref::Fd));
            let go = std::sync::Barrier::new(2);
            let lasts: u32 = std::thread::scope(|sc| {
                let h: Vec<_> = (0..2)
                    .map(|_| {
                        sc.spawn(|| {
                            go.wait();
                            s.release(Ref::Fd).map(|last| {
                                // Not reusable while the last holder works.
                                assert!(!s.try_retain(Ref::Fd));
                                assert_eq!(s.refs.load(Ordering::Acquire), REFS_BUSY);
                                core::mem::forget(last);
                            })
                        })
                    })
                    .collect();
                h.into_iter().map(|h| u32::from(h.join().unwrap().is_some())).sum()
            });
            assert_eq!(lasts, 1);
        }
        s.refs.store(0, Ordering::Release);
    }

    /// A call holds its slot: the fd's close leaves the slot to the call, which is then its
    /// last reference; another file gets another slot meanwhile; a forked child, where the call
    /// does not go on, drops the call's reference.
    #[test]
    fn test_a_call_holds_its_slot_past_the_close_of_its_fd() {
        let s: &'static Slot = &SLOTS[MAX_SLOTS - 2];
        s.refs.store(REFS_BUSY, Ordering::Release);
        s.publish();
        assert!(s.try_retain(Ref::Call));
        assert!(s.release(Ref::Fd).is_none(), "the call still holds the slot");
        assert_ne!(s.refs.load(Ordering::Acquire), 0);
        assert!(s.try_retain(Ref::Call), "a second call on the same file (no fd names it now)");
        assert!(s.release(Ref::Call).is_none());
        let last = s.release(Ref::Call).expect("the last call is the last reference");
        assert!(!s.try_retain(Ref::Fd));
        drop(last);
        assert_eq!(s.refs.load(Ordering::Acquire), 0, "free again");
        // Fork: two fds and a call in the parent; the child has the two fds only.
        s.refs.store(REFS_BUSY, Ordering::Release);
        s.publish();
        assert!(s.try_retain(Ref::Fd) && s.try_retain(Ref::Call));
        s.forget_calls();
        assert!(s.release(Ref::Call).is_none(), "no call to drop in the child");
        assert!(s.release(Ref::Fd).is_none());
        drop(s.release(Ref::Fd).expect("the second fd is the last reference"));
        s.refs.store(REFS_BUSY, Ordering::Release);
        s.forget_calls();
        assert_eq!(s.refs.load(Ordering::Acquire), 0, "a tear-down in another thread of the parent");
        s.refs.store(0, Ordering::Release);
    }
}
