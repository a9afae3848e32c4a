//! Sharded block allocator (DRAM state; the committed bitmap on pmem is the truth at mount).
//!
//! The data area is cut into `nshards` ranges aligned to 64 blocks (one bitmap word), each with
//! its own lock, so writers on different CPUs allocate without contending and never share a
//! bitmap word. A thread starts in the shard of its CPU (`sched_getcpu`) and moves on when that
//! shard is full. A block is marked taken in DRAM as soon as it is reserved; freed blocks return to
//! DRAM only after the transaction freeing them committed, so no block is reused while a crash
//! could still bring back its old owner.
//!
//! Committed frees are not handed out again at once: they wait in a quarantine. A dax client
//! (the preload library) copies data with extents it got from MAP before; it checks zusd's
//! layout generation before each copy, but a copy that already started when another process
//! truncated the file must not land in a block that now belongs to someone else. So freed
//! blocks are tagged with the layout generation of the free, and come back once
//! [`REUSE_GRACE`] has passed *and* no client copy checked against that generation or an older
//! one is still running (zusd's dax reader slots, through the host API). A reader that never
//! finishes (a client that stopped, or lies) holds them for [`REUSE_MAX_WAIT`] at most.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::layout::Geometry;
use crate::lock;

#[derive(Debug)]
struct Shard {
    start: u64,
    end: u64,
    /// one bit per block of [start, end), 1 = used or reserved
    used: Vec<u64>,
    free: u64,
    /// next-fit hint (block number)
    hint: u64,
}

impl Shard {
    fn is_used(&self, b: u64) -> bool {
        let i = b - self.start;
        self.used[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, b: u64, on: bool) {
        let i = b - self.start;
        let w = &mut self.used[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
    /// First free block at or after `from`, wrapping once.
    fn find_free(&self, from: u64) -> Option<u64> {
        let span = self.end - self.start;
        let mut i = if (self.start..self.end).contains(&from) { from - self.start } else { 0 };
        let mut scanned = 0;
        while scanned < span + 64 {
            if i >= span {
                i = 0;
            }
            let wi = i / 64;
            let bit = i % 64;
            let w = self.used[wi as usize] | ((1u64 << bit) - 1);
            if w != u64::MAX {
                let cand = wi * 64 + u64::from((!w).trailing_zeros());
                if cand < span {
                    return Some(self.start + cand);
                }
            }
            scanned += 64 - bit;
            i = (wi + 1) * 64;
        }
        None
    }

    /// Take up to `want` contiguous blocks starting at the first free block at or after `from`.
    fn take(&mut self, want: u64, from: u64) -> Option<(u64, u64)> {
        if self.free == 0 || want == 0 {
            return None;
        }
        let s = self.find_free(from)?;
        let mut b = s;
        while b - s < want && b < self.end && !self.is_used(b) {
            self.set(b, true);
            b += 1;
        }
        self.free -= b - s;
        self.hint = b;
        Some((s, b - s))
    }
}

/// How long freed blocks stay out of reach after the free committed, at least.
pub const REUSE_GRACE: Duration = Duration::from_millis(50);
/// How long a dax copy still running under an older layout generation may hold freed blocks.
pub const REUSE_MAX_WAIT: Duration = Duration::from_secs(10);

/// The host's (layout generation, oldest dax reader), or None without such a host.
pub type ReaderProbe = fn() -> Option<(u64, u64)>;

/// Blocks freed by a committed transaction, waiting to be reusable.
#[derive(Debug, Clone, Copy)]
struct Quarantined {
    freed: Instant,
    /// The layout generation when they were freed (None: no host tracks dax readers).
    tag: Option<u64>,
    start: u64,
    len: u64,
}

/// The block allocator.
#[derive(Debug)]
pub struct BlockAlloc {
    shards: Vec<Mutex<Shard>>,
    per: u64,
    data_blk: u64,
    total: u64,
    /// Committed frees not reusable yet, oldest first.
    quarantine: Mutex<VecDeque<Quarantined>>,
    /// Blocks in `quarantine` (read without the lock on every allocation).
    quarantined: AtomicU64,
    /// Where the layout generation and the oldest dax reader come from.
    readers: Mutex<ReaderProbe>,
}

impl BlockAlloc {
    /// Build from the committed bitmap (`used(b)` says whether block b is in use).
    pub fn new(geo: &Geometry, used: impl Fn(u64) -> bool) -> BlockAlloc {
        let data = geo.total_blocks - geo.data_blk;
        let n = u64::from(geo.nshards).min(data.div_ceil(64)).max(1);
        let per = (data / n).div_ceil(64) * 64;
        let mut shards = Vec::new();
        let mut s = geo.data_blk;
        while s < geo.total_blocks {
            let e = (s + per).min(geo.total_blocks);
            let words = (e - s).div_ceil(64) as usize;
            let mut sh = Shard { start: s, end: e, used: vec![0; words], free: 0, hint: s };
            for b in s..e {
                if used(b) {
                    sh.set(b, true);
                } else {
                    sh.free += 1;
                }
            }
            shards.push(Mutex::new(sh));
            s = e;
        }
        BlockAlloc {
            shards,
            per,
            data_blk: geo.data_blk,
            total: geo.total_blocks,
            quarantine: Mutex::new(VecDeque::new()),
            quarantined: AtomicU64::new(0),
            readers: Mutex::new(zus_plugin::adapter::dax_readers),
        }
    }

    /// Replaces the host's reader probe (tests, tools).
    pub fn set_reader_probe(&self, probe: ReaderProbe) {
        *lock(&self.readers) = probe;
    }

    fn probe(&self) -> Option<(u64, u64)> {
        let p = *lock(&self.readers);
        p()
    }

    fn shard_of(&self, b: u64) -> Option<usize> {
        if b < self.data_blk || b >= self.total {
            return None;
        }
        usize::try_from((b - self.data_blk) / self.per).ok().filter(|&i| i < self.shards.len())
    }

    /// Reserve up to `want` contiguous blocks, preferring `goal` (e.g. right after the file's last
    /// block, so extents grow), else the caller's CPU shard, else any shard.
    /// When only quarantined blocks are left, waits for them (their grace, then the dax copies
    /// that may still target them, [`REUSE_MAX_WAIT`] at most).
    pub fn alloc(&self, want: u64, goal: Option<u64>) -> Option<(u64, u64)> {
        loop {
            if self.quarantined.load(Ordering::Acquire) > 0 {
                self.drain_quarantine();
            }
            if let Some(r) = self.alloc_now(want, goal) {
                return Some(r);
            }
            // Full but for blocks freed a moment ago: wait for the oldest to become reusable.
            let freed = lock(&self.quarantine).front().map(|q| q.freed)?;
            let wait = (freed + REUSE_GRACE).saturating_duration_since(Instant::now());
            std::thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }

    fn alloc_now(&self, want: u64, goal: Option<u64>) -> Option<(u64, u64)> {
        if let Some(g) = goal
            && let Some(si) = self.shard_of(g)
        {
            let mut s = lock(&self.shards[si]);
            if g < s.end && !s.is_used(g) {
                return s.take(want, g);
            }
        }
        let n = self.shards.len();
        let first = zus_pmem::current_cpu() % n;
        for k in 0..n {
            let mut s = lock(&self.shards[(first + k) % n]);
            let h = s.hint;
            if let Some(r) = s.take(want, h) {
                return Some(r);
            }
        }
        None
    }

    /// Returns blocks freed by a committed transaction: reusable after [`REUSE_GRACE`].
    pub fn release_committed(&self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let tag = self.probe().map(|(gen_now, _)| gen_now);
        lock(&self.quarantine).push_back(Quarantined { freed: Instant::now(), tag, start, len });
        self.quarantined.fetch_add(len, Ordering::AcqRel);
    }

    /// Moves quarantined blocks back to the free pool once their grace has passed and no dax
    /// copy checked against their generation (or an older one) still runs.
    fn drain_quarantine(&self) {
        let now = Instant::now();
        let mut oldest_reader: Option<u64> = None;
        let mut q = lock(&self.quarantine);
        while let Some(&e) = q.front() {
            let age = now.saturating_duration_since(e.freed);
            if age < REUSE_GRACE {
                break;
            }
            if let Some(tag) = e.tag {
                let oldest = *oldest_reader.get_or_insert_with(|| self.probe().map_or(u64::MAX, |(_, r)| r));
                if oldest <= tag {
                    if age < REUSE_MAX_WAIT {
                        break;
                    }
                    zus_plugin::adapter::log(
                        zus_plugin::log_level::WARN,
                        &format!(
                            "pmemfs: a dax copy under layout generation {oldest} has run for {age:?}; reusing {} \
                             freed blocks anyway",
                            e.len
                        ),
                    );
                }
            }
            q.pop_front();
            self.release(e.start, e.len);
            self.quarantined.fetch_sub(e.len, Ordering::AcqRel);
        }
    }

    /// Whether block `b` waits in the quarantine (free on pmem, not yet reusable).
    pub fn is_quarantined(&self, b: u64) -> bool {
        lock(&self.quarantine).iter().any(|e| (e.start..e.start + e.len).contains(&b))
    }

    /// Return blocks to the free pool now (blocks of an aborted transaction, never seen by
    /// anyone; and the quarantine when their grace has passed).
    pub fn release(&self, start: u64, len: u64) {
        for sh in &self.shards {
            let mut s = lock(sh);
            let a = start.max(s.start);
            let e = (start + len).min(s.end);
            for b in a..e {
                if s.is_used(b) {
                    s.set(b, false);
                    s.free += 1;
                }
            }
        }
    }

    /// Whether block `b` is used or reserved (for consistency checks).
    pub fn is_used(&self, b: u64) -> bool {
        match self.shard_of(b) {
            Some(i) => {
                let s = lock(&self.shards[i]);
                (s.start..s.end).contains(&b) && s.is_used(b)
            }
            None => true,
        }
    }

    /// Free blocks (quarantined ones count: they are free on pmem and reusable shortly).
    pub fn free_blocks(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).free).sum::<u64>() + self.quarantined.load(Ordering::Acquire)
    }
}
