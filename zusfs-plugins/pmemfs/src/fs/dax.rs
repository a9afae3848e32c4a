//! Direct access: map/map_done for clients that copy to and from the device themselves, the
//! allocator's probe for the layout generation and the oldest dax copy, and the quarantine of
//! data blocks freed from a file a client mapped (marked here; [`Op::commit`] hands them to the
//! allocator's quarantine, `alloc.rs`).

use zus_pmem::Persist;

use super::{Attr, CHUNK_BLOCKS, Fs, Op, attr_of, node_mut, now_ns};
use crate::error::{FsError, Result};
use crate::layout::{BLOCK, MAX_FILE_BLOCKS};

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

impl<P: Persist> Op<'_, P> {
    /// Frees data blocks of a file; those of a file a client mapped wait out the reuse grace.
    pub(super) fn free_data(&mut self, s: u64, n: u64, dax_mapped: bool) {
        self.txn.clear_bits(s, n);
        self.free_after.push((s, n, dax_mapped));
    }
}

impl<P: Persist> Fs<P> {
    /// Replaces where the allocator learns the layout generation and the oldest dax copy in
    /// progress (zusd's host API by default): for tests and in-process tools.
    pub fn set_dax_reader_probe(&self, probe: crate::alloc::ReaderProbe) {
        self.balloc.set_reader_probe(probe);
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
            // Past EOF, `[size, dax_hi)` was handed out by earlier maps: a client may have
            // written it and not yet committed it with map_done (one write is mapped in several
            // calls when its range has several extents), so only what lies beyond is zeroed: the
            // gap before `off`, and blocks already mapped (preallocation, the partial last block)
            // in this range, so that [size, dax_hi) never holds another file's stale bytes even
            // when the client writes less than it mapped.
            let hi = n.d.size.max(n.dax_hi);
            if off > hi {
                self.zero_mapped(n, hi, off)?;
            }
            if end > hi.max(off) {
                self.zero_mapped(n, hi.max(off), end)?;
            }
            Self::apply_alloc(n, &nb, &mut op.txn)?;
            let runs = &nb.runs;
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
        self.before_inplace(ino)?;
        let mut hot = [0u8; 32];
        hot[..8].copy_from_slice(&n.d.size.to_le_bytes());
        hot[8..16].copy_from_slice(&n.d.atime.to_le_bytes());
        hot[16..24].copy_from_slice(&now.to_le_bytes());
        hot[24..32].copy_from_slice(&now.to_le_bytes());
        self.pm.store(io, &hot)?;
        self.pm.persist(io, 32)?;
        Ok(attr_of(ino, n))
    }
}
