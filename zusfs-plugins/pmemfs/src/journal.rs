//! The redo journal: every metadata change is one transaction, atomic across a crash.
//!
//! A transaction collects records in DRAM: `write(off, bytes)`, `zero(off, len)`, and bitmap bit
//! changes (turned into word writes at commit, against the committed bitmap, under the commit
//! lock, so two transactions that allocate in the same bitmap word never overwrite each other's
//! bits). Commit:
//!
//! 1. the records go to the journal body (non-temporal), the header (magic, seq, length,
//!    checksum of seq+length+body) to its line; **fence** — the commit point;
//! 2. the records are applied in place and flushed; **fence**;
//! 3. the header magic is cleared (flushed, not fenced: the next fence of any kind persists it,
//!    and replaying a transaction twice is harmless because records hold absolute values).
//!
//! Recovery (bounded: one journal of at most 256 KiB) replays a header whose checksum matches and
//! ignores anything else: a torn commit never reached its commit point.

use zus_pmem::Persist;

use crate::error::{FsError, Result};
use crate::layout::{BLOCK, Geometry, get_u32, get_u64, hash64, put_u32, put_u64};

const JMAGIC: u64 = u64::from_le_bytes(*b"PMJRNL01");
const JHDR: u64 = 64;
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

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
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

/// Journal state (held under the commit lock).
#[derive(Debug)]
pub struct Journal {
    seq: u64,
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

fn checksum(seq: u64, body: &[u8]) -> u64 {
    hash64(seq ^ (body.len() as u64).rotate_left(32), body)
}

impl Journal {
    /// Replay a committed transaction left by a crash. Returns whether one was replayed.
    pub fn recover<P: Persist>(pm: &P, geo: &Geometry) -> Result<(Journal, bool)> {
        let joff = geo.journal_off();
        let mut h = [0u8; 32];
        pm.read(joff, &mut h)?;
        let seq = get_u64(&h, 8);
        let len = get_u64(&h, 16);
        if get_u64(&h, 0) != JMAGIC || len > geo.journal_len() - JHDR {
            return Ok((Journal { seq: seq.wrapping_add(1) }, false));
        }
        let mut body = vec![0u8; usize::try_from(len).map_err(|_| FsError::corrupt("journal length"))?];
        pm.read(joff + JHDR, &mut body)?;
        if checksum(seq, &body) != get_u64(&h, 24) {
            // Torn commit: never reached its commit point.
            pm.store_u64(joff, 0)?;
            pm.persist(joff, 8)?;
            return Ok((Journal { seq: seq.wrapping_add(1) }, false));
        }
        let recs = parse(&body, geo)?;
        apply(pm, &recs)?;
        pm.fence();
        pm.store_u64(joff, 0)?;
        pm.persist(joff, 8)?;
        Ok((Journal { seq: seq.wrapping_add(1) }, true))
    }

    /// Largest body a transaction may have.
    pub fn capacity(geo: &Geometry) -> usize {
        usize::try_from(geo.journal_len() - JHDR).unwrap_or(0)
    }

    /// Commit `txn` (see the module docs). On error nothing was made durable unless the error
    /// came from applying (which only fails on a pmem bounds bug).
    pub fn commit<P: Persist>(&mut self, pm: &P, geo: &Geometry, mut txn: Txn) -> Result<()> {
        if txn.is_empty() {
            return Ok(());
        }
        // Bitmap changes against the committed bitmap.
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
        let joff = geo.journal_off();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        pm.nt_store(joff + JHDR, &txn.body)?;
        let mut h = [0u8; 32];
        put_u64(&mut h, 0, JMAGIC);
        put_u64(&mut h, 8, seq);
        put_u64(&mut h, 16, txn.body.len() as u64);
        put_u64(&mut h, 24, checksum(seq, &txn.body));
        pm.store(joff, &h)?;
        pm.flush(joff, 32)?;
        pm.fence(); // commit point
        apply(pm, &recs)?;
        pm.fence();
        pm.store_u64(joff, 0)?;
        pm.flush(joff, 8)?;
        Ok(())
    }
}
