//! The redo journal: every metadata change is one transaction, atomic across a crash.
//!
//! A transaction collects records in DRAM: `write(off, bytes)`, `zero(off, len)`, and bitmap bit
//! changes (turned into word writes at commit, against the current bitmap, under the commit
//! lock, so two transactions that allocate in the same bitmap word never overwrite each other's
//! bits).
//!
//! The journal area is a log (format 2): a head line (magic, `base`: the sequence number of the
//! first transaction since the last checkpoint) and then transactions back to back, each a
//! 32-byte header (magic, seq, length, checksum of seq + length + records) and its records,
//! 64-byte aligned. Commit:
//!
//! 1. header and records go to the log tail with non-temporal stores; **fence** — the commit
//!    point, and the only fence of the operation;
//! 2. the records are applied in place with ordinary cached stores, not flushed: the lines they
//!    dirtied are remembered (a crash may keep any of them; replay rewrites them all).
//!
//! **Checkpoint** (when the log is full, before an in-place store outside the journal to an
//! inode the log wrote, at unmount and before a check): flush every remembered line, **fence**,
//! store the next sequence number as `base` (one 8-byte store), flush, **fence**. The log is then
//! empty. Blocks freed by logged transactions are handed back to the allocator only after it: a
//! block must not be reused (written outside the journal, e.g. as file data) while a replay
//! could still write the old transaction's records into it.
//!
//! Recovery (bounded: one log of at most 256 KiB) replays, from the head, every transaction whose
//! sequence number is the next expected and whose checksum matches, in order, and stops at the
//! first that is not (a torn commit never reached its commit point; older transactions left
//! further on carry smaller sequence numbers). Records hold absolute values, so replaying over a
//! state where some of the in-place stores already landed is harmless.

use zus_pmem::Persist;

use crate::error::{FsError, Result};
use crate::layout::{BLOCK, Geometry, get_u32, get_u64, hash64, put_u32, put_u64};

const JMAGIC: u64 = u64::from_le_bytes(*b"PMJRNL02");
const HEAD_MAGIC: u64 = u64::from_le_bytes(*b"PMJHEAD2");
/// The head line; transactions start after it.
const LOG_START: u64 = 64;
const THDR: u64 = 32;
const REC_WRITE: u32 = 1;
const REC_ZERO: u32 = 2;
const REC_HDR: usize = 16;

/// One metadata transaction being built.
#[derive(Debug, Default)]
pub struct Txn {
    body: Vec<u8>,
    /// (first block, count, set?) bitmap changes
    bits: Vec<(u64, u64, bool)>,
}

/// A transaction's buffers kept for the thread's next one, up to this size.
const SPARE_MAX: usize = 64 << 10;

/// A transaction's buffers: its records, its bitmap changes.
type Buffers = (Vec<u8>, Vec<(u64, u64, bool)>);

thread_local! {
    /// The buffers of this thread's last transaction: a metadata op allocates nothing for its
    /// records. (Two threads' ops contended on the allocator's lock, and freed the buffers
    /// under the commit lock.)
    static SPARE: std::cell::Cell<Buffers> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        let (body, bits) = SPARE.try_with(std::cell::Cell::take).unwrap_or_default();
        Txn { body, bits }
    }

    /// Record `data` to be written at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.rec(REC_WRITE, off, data.len() as u64);
        self.body.extend_from_slice(data);
        self.pad();
    }

    /// Record `[off, off+len)` to be zeroed.
    pub fn zero(&mut self, off: u64, len: u64) {
        self.rec(REC_ZERO, off, len);
    }

    /// Record blocks becoming used.
    pub fn set_bits(&mut self, start: u64, len: u64) {
        self.bits.push((start, len, true));
    }

    /// Record blocks becoming free.
    pub fn clear_bits(&mut self, start: u64, len: u64) {
        self.bits.push((start, len, false));
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty() && self.bits.is_empty()
    }

    fn rec(&mut self, kind: u32, off: u64, len: u64) {
        let mut h = [0u8; REC_HDR];
        put_u32(&mut h, 0, kind);
        put_u32(&mut h, 4, u32::try_from(len).unwrap_or(u32::MAX));
        put_u64(&mut h, 8, off);
        self.body.extend_from_slice(&h);
    }

    fn pad(&mut self) {
        while !self.body.len().is_multiple_of(8) {
            self.body.push(0);
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        // (An empty one, left by `std::mem::take`, keeps the spare there.)
        let cap = (self.body.capacity(), self.bits.capacity());
        if cap != (0, 0) && cap.0 <= SPARE_MAX && cap.1 <= SPARE_MAX / 16 {
            let (mut body, mut bits) = (std::mem::take(&mut self.body), std::mem::take(&mut self.bits));
            body.clear();
            bits.clear();
            // The thread may be exiting (its thread-locals gone): the buffers are then freed.
            let _ = SPARE.try_with(|s| s.set((body, bits)));
        }
    }
}

/// Hashes an inode number with one multiplication (Fibonacci hashing): the log's set of inodes
/// grows inside the commit's critical section, where std's SipHash took ~6% of a metadata op.
/// The numbers are pmemfs's own, so no one can choose them to collide.
#[derive(Debug, Default)]
struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Blocks a transaction frees: (start, len, through the dax quarantine).
pub type Freed = (u64, u64, bool);

/// Journal state (held under the commit lock).
#[derive(Debug)]
pub struct Journal {
    /// sequence number of the next transaction
    seq: u64,
    /// where it goes (offset in the journal area)
    pos: u64,
    /// cache lines (device offset / 64) stored in place since the last checkpoint, not flushed
    dirty: Vec<u64>,
    /// inodes whose records a transaction of the log wrote
    inos: std::collections::HashSet<u64, std::hash::BuildHasherDefault<InoHasher>>,
    /// blocks freed by transactions of the log: reusable after the next checkpoint
    frees: Vec<Freed>,
}

/// Parsed record.
enum Rec<'a> {
    Write(u64, &'a [u8]),
    Zero(u64, u64),
}

fn parse<'a>(body: &'a [u8], geo: &Geometry) -> Result<Vec<Rec<'a>>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    let lo = geo.itable_blk * BLOCK;
    let hi = geo.total_blocks * BLOCK;
    while i < body.len() {
        let h = body.get(i..i + REC_HDR).ok_or_else(|| FsError::corrupt("journal: truncated record"))?;
        let kind = get_u32(h, 0);
        let len = u64::from(get_u32(h, 4));
        let off = get_u64(h, 8);
        if off < lo || off.checked_add(len).is_none_or(|e| e > hi) {
            return Err(FsError::corrupt(format!("journal: record {off:#x}+{len:#x} outside metadata/data area")));
        }
        i += REC_HDR;
        match kind {
            REC_WRITE => {
                let l = usize::try_from(len).map_err(|_| FsError::corrupt("journal: length"))?;
                let d = body.get(i..i + l).ok_or_else(|| FsError::corrupt("journal: truncated data"))?;
                out.push(Rec::Write(off, d));
                i += l.div_ceil(8) * 8;
            }
            REC_ZERO => out.push(Rec::Zero(off, len)),
            _ => return Err(FsError::corrupt(format!("journal: unknown record kind {kind}"))),
        }
    }
    Ok(out)
}

/// Apply records durably (recovery): stores and flushes; the caller fences.
fn apply<P: Persist>(pm: &P, recs: &[Rec<'_>]) -> Result<()> {
    for r in recs {
        match *r {
            Rec::Write(off, d) => {
                pm.store(off, d)?;
                pm.flush(off, d.len() as u64)?;
            }
            Rec::Zero(off, len) => pm.nt_zero(off, len)?,
        }
    }
    Ok(())
}

fn align64(x: u64) -> u64 {
    x.div_ceil(64) * 64
}

fn checksum(seq: u64, body: &[u8]) -> u64 {
    hash64(seq ^ (body.len() as u64).rotate_left(32), body)
}

impl Journal {
    /// Initialise the journal of a fresh filesystem: a zeroed log and a head with base 0.
    pub fn format<P: Persist>(pm: &P, geo: &Geometry) -> Result<()> {
        let joff = geo.journal_off();
        pm.nt_zero(joff, geo.journal_len())?;
        let mut h = [0u8; 16];
        put_u64(&mut h, 0, HEAD_MAGIC);
        pm.nt_store(joff, &h)?;
        Ok(())
    }

    /// Replay the transactions logged since the last checkpoint (left by a crash), then empty
    /// the log. Returns how many were replayed.
    pub fn recover<P: Persist>(pm: &P, geo: &Geometry) -> Result<(Journal, u64)> {
        let joff = geo.journal_off();
        let jlen = geo.journal_len();
        let mut h = [0u8; 16];
        pm.read(joff, &mut h)?;
        if get_u64(&h, 0) != HEAD_MAGIC {
            return Err(FsError::corrupt("journal: bad head magic"));
        }
        let base = get_u64(&h, 8);
        let (mut pos, mut seq, mut replayed) = (LOG_START, base, 0u64);
        while pos + THDR <= jlen {
            let mut t = [0u8; THDR as usize];
            pm.read(joff + pos, &mut t)?;
            let len = get_u64(&t, 16);
            if get_u64(&t, 0) != JMAGIC || get_u64(&t, 8) != seq || len > jlen - pos - THDR {
                break;
            }
            let mut body = vec![0u8; usize::try_from(len).map_err(|_| FsError::corrupt("journal length"))?];
            pm.read(joff + pos + THDR, &mut body)?;
            if checksum(seq, &body) != get_u64(&t, 24) {
                break; // torn: never reached its commit point
            }
            let recs = parse(&body, geo)?;
            apply(pm, &recs)?;
            pos += align64(THDR + len);
            seq = seq.wrapping_add(1);
            replayed += 1;
        }
        if replayed > 0 {
            pm.fence();
            pm.store_u64(joff + 8, seq)?;
            pm.persist(joff + 8, 8)?;
        }
        let j = Journal {
            seq,
            pos: LOG_START,
            dirty: Vec::new(),
            inos: std::collections::HashSet::default(),
            frees: Vec::new(),
        };
        Ok((j, replayed))
    }

    /// Largest body a transaction may have.
    pub fn capacity(geo: &Geometry) -> usize {
        usize::try_from(geo.journal_len() - LOG_START - THDR).unwrap_or(0)
    }

    /// Whether a transaction of the log wrote inode `ino`'s record: an in-place store to it
    /// outside the journal must checkpoint first (a replay would roll it back).
    pub fn logged(&self, ino: u64) -> bool {
        self.inos.contains(&ino)
    }

    /// How many inodes' records the log holds (0 after a checkpoint).
    pub fn logged_inodes(&self) -> usize {
        self.inos.len()
    }

    /// Blocks freed by logged transactions (free on pmem, not reusable before a checkpoint).
    pub fn pending_free_blocks(&self) -> u64 {
        self.frees.iter().map(|f| f.1).sum()
    }

    /// Make every in-place store of the log durable and empty the log (see the module docs).
    /// Returns the blocks that became reusable.
    pub fn checkpoint<P: Persist>(&mut self, pm: &P, geo: &Geometry) -> Result<Vec<Freed>> {
        if self.pos == LOG_START && self.dirty.is_empty() {
            return Ok(std::mem::take(&mut self.frees));
        }
        self.dirty.sort_unstable();
        self.dirty.dedup();
        let mut i = 0;
        while i < self.dirty.len() {
            let mut j = i + 1;
            while j < self.dirty.len() && self.dirty[j] == self.dirty[j - 1] + 1 {
                j += 1;
            }
            pm.flush(self.dirty[i] * 64, (j - i) as u64 * 64)?;
            i = j;
        }
        pm.fence();
        let joff = geo.journal_off();
        pm.store_u64(joff + 8, self.seq)?;
        pm.persist(joff + 8, 8)?;
        self.pos = LOG_START;
        self.dirty.clear();
        self.inos.clear();
        Ok(std::mem::take(&mut self.frees))
    }

    /// Commit `txn` (see the module docs); `frees` are the blocks it frees, held until the next
    /// checkpoint. Returns blocks a checkpoint made reusable on the way (usually none). On
    /// error nothing was made durable unless the error came from applying (which only fails on
    /// a pmem bounds bug).
    pub fn commit<P: Persist>(&mut self, pm: &P, geo: &Geometry, mut txn: Txn, frees: &[Freed]) -> Result<Vec<Freed>> {
        if txn.is_empty() {
            self.frees.extend_from_slice(frees);
            return Ok(Vec::new());
        }
        // Bitmap changes against the current bitmap (every logged transaction is applied).
        if !txn.bits.is_empty() {
            let mut words: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
            for &(start, len, set) in &txn.bits {
                for b in start..start + len {
                    if b >= geo.total_blocks {
                        return Err(FsError::corrupt(format!("bitmap: block {b} out of range")));
                    }
                    let wi = b / 64;
                    let w = match words.get(&wi) {
                        Some(w) => *w,
                        None => pm.load_u64(geo.bitmap_off() + wi * 8)?,
                    };
                    let bit = 1u64 << (b % 64);
                    if (w & bit != 0) == set {
                        return Err(FsError::corrupt(format!(
                            "bitmap: block {b} already {}",
                            if set { "used" } else { "free" }
                        )));
                    }
                    words.insert(wi, w ^ bit);
                }
            }
            // Coalesce runs of consecutive words into one record each.
            let mut run: Vec<u8> = Vec::new();
            let mut run_start = 0u64;
            let mut prev: Option<u64> = None;
            for (wi, w) in words {
                if prev.is_some_and(|p| p + 1 != wi) {
                    txn.write(geo.bitmap_off() + run_start * 8, &run);
                    run.clear();
                }
                if run.is_empty() {
                    run_start = wi;
                }
                run.extend_from_slice(&w.to_le_bytes());
                prev = Some(wi);
            }
            if !run.is_empty() {
                txn.write(geo.bitmap_off() + run_start * 8, &run);
            }
        }
        if txn.body.len() > Self::capacity(geo) {
            return Err(FsError::NoSpace);
        }
        let recs = parse(&txn.body, geo)?;
        let need = align64(THDR + txn.body.len() as u64);
        let released = if self.pos + need > geo.journal_len() { self.checkpoint(pm, geo)? } else { Vec::new() };
        let joff = geo.journal_off();
        let seq = self.seq;
        let mut h = [0u8; THDR as usize];
        put_u64(&mut h, 0, JMAGIC);
        put_u64(&mut h, 8, seq);
        put_u64(&mut h, 16, txn.body.len() as u64);
        put_u64(&mut h, 24, checksum(seq, &txn.body));
        pm.nt_store(joff + self.pos, &h)?;
        pm.nt_store(joff + self.pos + THDR, &txn.body)?;
        pm.fence(); // commit point
        self.seq = self.seq.wrapping_add(1);
        self.pos += need;
        self.frees.extend_from_slice(frees);
        let itable = geo.inode_off(0);
        let itable_end = geo.inode_off(geo.ninodes);
        for r in &recs {
            let (off, len) = match *r {
                Rec::Write(off, d) => {
                    pm.store(off, d)?;
                    (off, d.len() as u64)
                }
                Rec::Zero(off, len) => {
                    pm.nt_zero(off, len)?;
                    (off, len)
                }
            };
            if len == 0 {
                continue;
            }
            if matches!(r, Rec::Write(..)) {
                self.dirty.extend(off / 64..(off + len).div_ceil(64));
            }
            if off < itable_end && off + len > itable {
                let first = (off.max(itable) - itable) / crate::layout::INODE_SIZE;
                let last = ((off + len).min(itable_end) - 1 - itable) / crate::layout::INODE_SIZE;
                self.inos.extend(first..=last);
            }
        }
        Ok(released)
    }
}
