//! Data operations: read, write (and O_APPEND), fsync, truncate (the size change of setattr and
//! of the last release), fallocate, and the block reservation they share with dax writes.

use zus_pmem::{DataSink, DataSource, Persist, sink_from_slice};

use super::{CHUNK_BLOCKS, FREE_BATCH, Fs, Op, WGuard, node_mut, now_ns};
use crate::error::{FsError, Result};
use crate::inode::Inode;
use crate::journal::Txn;
use crate::layout::{BLOCK, MAX_FILE_BLOCKS};

/// FALLOC_FL_KEEP_SIZE.
pub const FALLOC_FL_KEEP_SIZE: u32 = 1;
/// FALLOC_FL_PUNCH_HOLE (needs KEEP_SIZE).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 2;
/// Extra blocks allocated past EOF on appends, so most appends need no transaction.
const PREALLOC_BLOCKS: u64 = 63;

/// Blocks reserved for a range before the inode is changed.
pub(super) struct NewBlocks {
    /// (file block, device block, count)
    pub(super) runs: Vec<(u64, u64, u64)>,
    /// extent-chain blocks for the new slots
    chains: Vec<u64>,
}

impl NewBlocks {
    /// Device block of file block `lb` among the new runs, and how many follow in that run.
    fn map(&self, lb: u64) -> Option<(u64, u64)> {
        self.runs.iter().find(|r| (r.0..r.0 + r.2).contains(&lb)).map(|&(l, p, c)| (p + lb - l, l + c - lb))
    }
}

impl<P: Persist> Fs<P> {
    /// Zero the mapped parts of `[from, to)` (non-temporal; durable at the next fence).
    pub(super) fn zero_mapped(&self, n: &Inode, from: u64, to: u64) -> Result<()> {
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
    pub(super) fn alloc_range(
        &self,
        op: &mut Op<'_, P>,
        n: &Inode,
        first: u64,
        last: u64,
        extra: u64,
    ) -> Result<NewBlocks> {
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
    pub(super) fn apply_alloc(n: &mut Inode, nb: &NewBlocks, txn: &mut Txn) -> Result<()> {
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
        self.before_inplace(ino)?;
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
            drop(g);
            self.touch_atime(ino);
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
        drop(g);
        self.touch_atime(ino);
        Ok(total as usize)
    }

    /// copy_file_range(2) inside the filesystem: copies up to `len` bytes of `ino_in` at
    /// `off_in` to `ino_out` at `off_out`, chunk by chunk through the write path (each chunk's
    /// blocks and size update are one journaled transaction, as a write's are). The copy is
    /// shortened to the source's end (0 bytes at or past it); overlapping ranges of one file
    /// are `EINVAL`, as the kernel's rule. Returns the bytes copied (short only on an error
    /// after some progress).
    pub fn copy_range(
        &self,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
        sync: bool,
    ) -> Result<u64> {
        self.live()?;
        let src = self.getattr(ino_in)?;
        let dst = self.getattr(ino_out)?;
        for a in [&src, &dst] {
            if a.mode & crate::layout::S_IFMT == crate::layout::S_IFDIR {
                return Err(FsError::IsDir);
            }
            if a.mode & crate::layout::S_IFMT != crate::layout::S_IFREG {
                return Err(FsError::Invalid("copy between non-regular files".into()));
            }
        }
        let len = if off_in >= src.size { 0 } else { len.min(src.size - off_in) };
        if off_in.checked_add(len).is_none() || off_out.checked_add(len).is_none() {
            return Err(FsError::Invalid("copy range overflows".into()));
        }
        if ino_in == ino_out && off_out < off_in + len && off_in < off_out + len {
            return Err(FsError::Invalid("overlapping copy within one file".into()));
        }
        let chunk = (CHUNK_BLOCKS * BLOCK).min(len);
        let mut buf = vec![0u8; usize::try_from(chunk).map_err(|_| FsError::TooBig)?];
        let mut done = 0u64;
        while done < len {
            let c = (len - done).min(chunk) as usize;
            let step = self
                .read(ino_in, off_in + done, &zus_pmem::SliceSink::new(&mut buf[..c]), 0, c)
                .and_then(|r| self.write(ino_out, off_out + done, &zus_pmem::SliceSource(&buf[..r]), 0, r, sync));
            match step {
                Ok(0) => break,
                Ok(w) => done += w as u64,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
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

    pub(super) fn set_size(&self, ino: u64, g: &mut WGuard<'_>, size: u64, touch: bool) -> Result<()> {
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
        // What earlier maps handed out past the new EOF is gone (freed, or past the size in the
        // kept last block): a later map must zero it again.
        n.dax_hi = n.dax_hi.min(size);
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
}
