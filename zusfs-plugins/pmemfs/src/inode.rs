//! In-DRAM inode state, rebuilt from pmem at mount, and the helpers that keep it and the
//! transaction in step (extent slots, directory slots).

use std::collections::{BTreeMap, HashMap};

use crate::error::{FsError, Result};
use crate::journal::Txn;
use crate::layout::{
    BLOCK, CHAIN_MAGIC, CHAIN_SLOTS, DIRENT_MAX, DSLOT, DSLOTS_PER_BLOCK, DiskInode, Extent, Geometry, INLINE_SLOTS,
    S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, dirent_encode,
};

/// Longest extent (256 MiB): freeing one touches at most 8 KiB of bitmap, so a bounded number
/// of extents always fits one journal transaction.
pub const MAX_EXTENT_BLOCKS: u64 = 65_536;
/// Blocks freed per transaction at most (plus one extent): bounds the bitmap records.
pub const FREE_BLOCKS_BATCH: u64 = 131_072;

/// One extent in DRAM, with the slot that stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext {
    /// blocks
    pub len: u64,
    /// first device block
    pub pblk: u64,
    /// storage slot (0..8 inline, then chain blocks)
    pub slot: u32,
}

/// A directory entry in DRAM.
#[derive(Clone, Copy, Debug)]
pub struct DEnt {
    /// target inode
    pub ino: u64,
    /// d_type
    pub dtype: u8,
    /// slot position: dir block * 128 + slot
    pub pos: u32,
    /// slots used
    pub nslots: u32,
}

/// Directory index: hashed by name (O(1) lookup at any size), ordered by position for readdir.
#[derive(Debug, Default)]
pub struct DirIndex {
    /// name -> entry
    pub names: HashMap<Vec<u8>, DEnt>,
    /// position -> name
    pub by_pos: BTreeMap<u32, Vec<u8>>,
    /// used-slot mask per directory block
    pub used: Vec<u128>,
    /// block to try first for inserts
    pub hint: usize,
    /// number of subdirectories
    pub subdirs: u32,
}

impl DirIndex {
    /// Find `k` consecutive free slots: (block, slot).
    pub fn find_free(&self, k: u32) -> Option<(usize, u32)> {
        let n = self.used.len();
        for j in 0..n {
            let b = (self.hint + j) % n;
            let m = self.used[b];
            if m == u128::MAX {
                continue;
            }
            let mut s = 0u32;
            while s + k <= DSLOTS_PER_BLOCK {
                let want = if k >= 128 { u128::MAX } else { ((1u128 << k) - 1) << s };
                if m & want == 0 {
                    return Some((b, s));
                }
                s += 1;
            }
        }
        None
    }

    /// Mask of `k` slots at `s`.
    pub fn mask(s: u32, k: u32) -> u128 {
        if k >= 128 { u128::MAX } else { ((1u128 << k) - 1) << s }
    }
}

/// An inode in DRAM.
#[derive(Debug)]
pub struct Inode {
    /// on-pmem fields
    pub d: DiskInode,
    /// file block -> extent
    pub ext: BTreeMap<u64, Ext>,
    /// extent-chain blocks in order
    pub chain: Vec<u64>,
    /// free extent slots
    pub free_slots: Vec<u32>,
    /// directory index (directories only)
    pub dir: Option<Box<DirIndex>>,
    /// xattrs
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// blocks of the xattr run at `d.xattr_blk` (0 without one)
    pub xattr_nblk: u64,
    /// open handles
    pub open: u32,
    /// the inode record must be rewritten in the current transaction
    pub dirty: bool,
    /// highest end offset handed out by a write `map` (bounds `map_done`)
    pub dax_hi: u64,
    /// blocks mapped by `ext` (kept with every change to it: stat must not walk the extents)
    pub mapped: u64,
    /// a client got this file's extents with `map` since mount: blocks it frees go through the
    /// allocator's reuse quarantine (a dax client may still be copying with them)
    pub dax_mapped: bool,
}

impl Inode {
    /// A fresh in-DRAM inode around `d` with no extents.
    pub fn new(d: DiskInode) -> Inode {
        let dir = if d.mode & S_IFMT == S_IFDIR { Some(Box::default()) } else { None };
        Inode {
            d,
            ext: BTreeMap::new(),
            chain: Vec::new(),
            free_slots: (0..u32::try_from(INLINE_SLOTS).unwrap_or(8)).rev().collect(),
            dir,
            xattrs: BTreeMap::new(),
            xattr_nblk: 0,
            open: 0,
            dirty: false,
            dax_hi: 0,
            mapped: 0,
            dax_mapped: false,
        }
    }

    /// File type bits.
    pub fn kind(&self) -> u32 {
        self.d.mode & S_IFMT
    }
    /// Is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }
    /// Is a regular file.
    pub fn is_reg(&self) -> bool {
        self.kind() == S_IFREG
    }
    /// Symlink whose target is inline (no extents used).
    pub fn inline_link(&self) -> bool {
        self.kind() == S_IFLNK && self.d.flags & crate::layout::IFLAG_INLINE_LINK != 0
    }

    /// Blocks mapped.
    pub fn nblocks(&self) -> u64 {
        self.mapped
    }

    /// The device block of file block `lblk` and how many blocks of the same extent follow.
    pub fn map(&self, lblk: u64) -> Option<(u64, u64)> {
        let (&l, e) = self.ext.range(..=lblk).next_back()?;
        if lblk < l + e.len { Some((e.pblk + (lblk - l), l + e.len - lblk)) } else { None }
    }

    /// First mapped file block at or after `lblk`.
    pub fn next_mapped(&self, lblk: u64) -> Option<u64> {
        if self.map(lblk).is_some() {
            return Some(lblk);
        }
        self.ext.range(lblk..).next().map(|(&l, _)| l)
    }

    /// Last mapped block + 1 (0 if none).
    pub fn end_lblk(&self) -> u64 {
        self.ext.iter().next_back().map_or(0, |(&l, e)| l + e.len)
    }

    /// Device offset of extent slot `slot` if it lives in a chain block.
    fn chain_slot_off(&self, slot: u32) -> Option<u64> {
        let i = (slot as usize).checked_sub(INLINE_SLOTS)?;
        let blk = *self.chain.get(i / CHAIN_SLOTS)?;
        Some(blk * BLOCK + 16 + (i % CHAIN_SLOTS) as u64 * 16)
    }

    /// Store extent `e` in `slot` (inline: in the inode record; else a chain-block record).
    pub fn put_slot(&mut self, slot: u32, e: Extent, txn: &mut Txn) {
        let s = slot as usize;
        if s < INLINE_SLOTS {
            self.d.area[s * 16..s * 16 + 16].copy_from_slice(&e.encode());
            self.dirty = true;
        } else if let Some(off) = self.chain_slot_off(slot) {
            txn.write(off, &e.encode());
        }
    }

    /// Whether a slot is free (for callers that must reserve a chain block first).
    pub fn has_free_slot(&self) -> bool {
        !self.free_slots.is_empty()
    }

    /// Append a (zeroed) chain block `blk`, adding 255 free slots.
    pub fn add_chain(&mut self, blk: u64, txn: &mut Txn) {
        txn.zero(blk * BLOCK, BLOCK);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&CHAIN_MAGIC.to_le_bytes());
        txn.write(blk * BLOCK, &h);
        match self.chain.last() {
            Some(&prev) => txn.write(prev * BLOCK + 8, &blk.to_le_bytes()),
            None => {
                self.d.chain = blk;
                self.dirty = true;
            }
        }
        let base = u32::try_from(INLINE_SLOTS + self.chain.len() * CHAIN_SLOTS).unwrap_or(u32::MAX);
        self.chain.push(blk);
        for i in (0..u32::try_from(CHAIN_SLOTS).unwrap_or(0)).rev() {
            self.free_slots.push(base + i);
        }
    }

    /// Map `len` blocks at `lblk` to `pblk`, merging with the previous extent when contiguous.
    /// Needs a free slot unless it merges: callers ensure one with [`Self::has_free_slot`].
    pub fn ext_insert(&mut self, lblk: u64, pblk: u64, len: u64, txn: &mut Txn) -> Result<()> {
        if let Some((&l, e)) = self.ext.range_mut(..lblk).next_back()
            && l + e.len == lblk
            && e.pblk + e.len == pblk
            && e.len + len <= MAX_EXTENT_BLOCKS
        {
            e.len += len;
            let (slot, x) = (e.slot, Extent { lblk: l, len: e.len, pblk: e.pblk });
            self.put_slot(slot, x, txn);
            self.mapped += len;
            return Ok(());
        }
        let slot = self.free_slots.pop().ok_or(FsError::NoSpace)?;
        self.ext.insert(lblk, Ext { len, pblk, slot });
        self.mapped += len;
        self.put_slot(slot, Extent { lblk, len, pblk }, txn);
        Ok(())
    }

    /// Unmap file blocks `[a, b)`, pushing freed device ranges to `freed`. Stops after `limit`
    /// extents touched (for bounded transactions) and returns the lowest block unmapped so far
    /// (`a` when finished). Splitting an extent in the middle needs a free slot.
    pub fn ext_remove(
        &mut self,
        a: u64,
        b: u64,
        limit: usize,
        txn: &mut Txn,
        freed: &mut Vec<(u64, u64)>,
    ) -> Result<u64> {
        let keys: Vec<u64> =
            self.ext.range(..b).rev().take_while(|(l, e)| **l + e.len > a).map(|(l, _)| *l).take(limit).collect();
        let mut low = b;
        let mut freed_blocks = 0u64;
        let mut done_all = true;
        for l in keys.iter().copied() {
            if freed_blocks >= FREE_BLOCKS_BATCH {
                done_all = false;
                break;
            }
            let Some(e) = self.ext.get(&l).copied() else { continue };
            let end = l + e.len;
            let (s, t) = (a.max(l), b.min(end));
            low = low.min(s);
            if s == l && t == end {
                self.ext.remove(&l);
                self.put_slot(e.slot, Extent::default(), txn);
                self.free_slots.push(e.slot);
                freed.push((e.pblk, e.len));
            } else if s == l {
                // drop the head
                self.ext.remove(&l);
                let ne = Ext { len: end - t, pblk: e.pblk + (t - l), slot: e.slot };
                self.ext.insert(t, ne);
                self.put_slot(e.slot, Extent { lblk: t, len: ne.len, pblk: ne.pblk }, txn);
                freed.push((e.pblk, t - l));
            } else if t == end {
                // drop the tail
                let ne = Ext { len: s - l, ..e };
                self.ext.insert(l, ne);
                self.put_slot(e.slot, Extent { lblk: l, len: ne.len, pblk: e.pblk }, txn);
                freed.push((e.pblk + (s - l), end - s));
            } else {
                // split
                let slot = self.free_slots.pop().ok_or(FsError::NoSpace)?;
                let head = Ext { len: s - l, ..e };
                let tail = Ext { len: end - t, pblk: e.pblk + (t - l), slot };
                self.ext.insert(l, head);
                self.ext.insert(t, tail);
                self.put_slot(e.slot, Extent { lblk: l, len: head.len, pblk: e.pblk }, txn);
                self.put_slot(slot, Extent { lblk: t, len: tail.len, pblk: tail.pblk }, txn);
                freed.push((e.pblk + (s - l), t - s));
            }
            freed_blocks += t - s;
            self.mapped -= t - s;
        }
        if done_all && keys.len() < limit { Ok(a) } else { Ok(low.max(a)) }
    }

    /// Write the inode record into `txn` if it changed.
    pub fn flush_record(&mut self, geo: &Geometry, ino: u64, txn: &mut Txn) {
        if self.dirty {
            txn.write(geo.inode_off(ino), &self.d.encode(ino));
            self.dirty = false;
        }
    }

    /// Device offset of directory slot position `pos`.
    pub fn dslot_off(&self, pos: u32) -> Option<u64> {
        let (p, _) = self.map(u64::from(pos / DSLOTS_PER_BLOCK))?;
        Some(p * BLOCK + u64::from(pos % DSLOTS_PER_BLOCK) * DSLOT)
    }

    /// Put a directory entry into free slots at `pos` (the caller found them with `find_free`).
    pub fn dir_put(&mut self, pos: u32, name: &[u8], ino: u64, dtype: u8, txn: &mut Txn) -> Result<()> {
        let off = self.dslot_off(pos).ok_or_else(|| FsError::corrupt("directory slot unmapped"))?;
        let k = crate::layout::dirent_slots(name.len());
        txn.write(off, dirent_encode(ino, dtype, name, &mut [0; DIRENT_MAX])?);
        let d = self.dir.as_mut().ok_or(FsError::NotDir)?;
        let b = (pos / DSLOTS_PER_BLOCK) as usize;
        d.used[b] |= DirIndex::mask(pos % DSLOTS_PER_BLOCK, k);
        d.names.insert(name.to_vec(), DEnt { ino, dtype, pos, nslots: k });
        d.by_pos.insert(pos, name.to_vec());
        if dtype == 4 {
            d.subdirs += 1;
        }
        Ok(())
    }

    /// Remove a directory entry (its slots are zeroed).
    pub fn dir_del(&mut self, name: &[u8], txn: &mut Txn) -> Result<DEnt> {
        let e = *self.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?;
        let off = self.dslot_off(e.pos).ok_or_else(|| FsError::corrupt("directory slot unmapped"))?;
        txn.zero(off, u64::from(e.nslots) * DSLOT);
        let d = self.dir.as_mut().ok_or(FsError::NotDir)?;
        let b = (e.pos / DSLOTS_PER_BLOCK) as usize;
        d.used[b] &= !DirIndex::mask(e.pos % DSLOTS_PER_BLOCK, e.nslots);
        d.names.remove(name);
        d.by_pos.remove(&e.pos);
        d.hint = b;
        if e.dtype == 4 {
            d.subdirs = d.subdirs.saturating_sub(1);
        }
        Ok(e)
    }

    /// Point an existing entry at another inode (rename over an existing name, exchange).
    pub fn dir_repoint(&mut self, name: &[u8], ino: u64, dtype: u8, txn: &mut Txn) -> Result<DEnt> {
        let e = *self.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?;
        let off = self.dslot_off(e.pos).ok_or_else(|| FsError::corrupt("directory slot unmapped"))?;
        txn.write(off, dirent_encode(ino, dtype, name, &mut [0; DIRENT_MAX])?);
        let d = self.dir.as_mut().ok_or(FsError::NotDir)?;
        if e.dtype == 4 {
            d.subdirs = d.subdirs.saturating_sub(1);
        }
        if dtype == 4 {
            d.subdirs += 1;
        }
        d.names.insert(name.to_vec(), DEnt { ino, dtype, ..e });
        Ok(e)
    }
}
