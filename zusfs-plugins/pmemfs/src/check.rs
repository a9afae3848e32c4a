//! Loading and checking: the one walk over every on-pmem structure that both mount and fsck use.
//!
//! Every value read from pmem is validated before use (ranges, checksums, cross references), so a
//! corrupt image gives a report, never a panic. Checked invariants:
//! superblock checksum and geometry; journal clean after recovery; every inode record checksummed,
//! free inodes zeroed; valid file types; extents inside the data area, non-overlapping within a
//! file and never sharing a block with anything else; extent-chain and xattr blocks well formed;
//! directories dense (size = blocks * 4096) with well-formed, checksummed, unique entries and
//! zeroed free slots; every entry names an allocated inode of the stated type; link counts (files:
//! number of entries; directories: 2 + subdirectories), one parent per directory matching its
//! `parent` field, everything reachable from the root; symlink sizes; and the block bitmap equal
//! to the set of owned blocks. Inodes with no links are orphans (legal after a crash or with open
//! handles); mount reclaims them.

use std::collections::BTreeMap;

use zus_pmem::Persist;

use crate::error::{FsError, Result};
use crate::inode::{DEnt, DirIndex, Ext, Inode};
use crate::layout::{
    BLOCK, CHAIN_MAGIC, CHAIN_SLOTS, DSLOT, DSLOTS_PER_BLOCK, DiskInode, Extent, Geometry, IFLAG_INLINE_LINK,
    INLINE_AREA, INLINE_SLOTS, INODE_SIZE, MAX_FILE_BLOCKS, ROOT_INO, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK,
    S_IFMT, S_IFREG, S_IFSOCK, SB_OFF, XATTR_MAGIC, dirent_check, dirent_slots, dtype_of, get_u32, get_u64, hash64,
    valid_type,
};

/// What fsck found.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Inconsistencies (empty = clean).
    pub errors: Vec<String>,
    /// Inodes with no links (reclaimed at mount).
    pub orphans: Vec<u64>,
    /// Whether a committed journal transaction was replayed first.
    pub journal_replayed: bool,
    /// allocated inodes
    pub inodes: u64,
    /// directories
    pub dirs: u64,
    /// data/metadata blocks in use (data area)
    pub used_blocks: u64,
    /// blocks in the data area
    pub data_blocks: u64,
}

impl FsckReport {
    /// No errors.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
    fn err(&mut self, m: String) {
        if self.errors.len() < 200 {
            self.errors.push(m);
        }
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pmemfs fsck: {} inodes ({} directories), {}/{} data blocks used, {} orphans, journal {}",
            self.inodes,
            self.dirs,
            self.used_blocks,
            self.data_blocks,
            self.orphans.len(),
            if self.journal_replayed { "replayed" } else { "clean" }
        )?;
        if self.errors.is_empty() {
            writeln!(f, "no errors")
        } else {
            for e in &self.errors {
                writeln!(f, "error: {e}")?;
            }
            writeln!(f, "{} error(s)", self.errors.len())
        }
    }
}

/// The loaded filesystem state.
pub(crate) struct Loaded {
    pub geo: Geometry,
    pub inodes: Vec<Option<Box<Inode>>>,
    pub bitmap: Vec<u64>,
    pub report: FsckReport,
    pub journal: crate::journal::Journal,
    /// free inode numbers with their generation
    pub free_inos: Vec<(u64, u64)>,
}

/// Read and validate the superblock.
pub(crate) fn read_geometry<P: Persist>(pm: &P) -> Result<Geometry> {
    let mut sb = [0u8; 128];
    pm.read(SB_OFF, &mut sb).map_err(|_| FsError::BadSuperblock("device too small".into()))?;
    Geometry::decode(&sb, pm.len())
}

struct Owners {
    owned: Vec<u64>,
}
impl Owners {
    /// Mark [b, b+n) owned; false if any block was already owned.
    fn claim(&mut self, b: u64, n: u64) -> bool {
        let mut ok = true;
        for x in b..b + n {
            let (w, bit) = ((x / 64) as usize, 1u64 << (x % 64));
            match self.owned.get_mut(w) {
                Some(v) => {
                    if *v & bit != 0 {
                        ok = false;
                    }
                    *v |= bit;
                }
                None => ok = false,
            }
        }
        ok
    }
}

fn read_block<P: Persist>(pm: &P, b: u64) -> Result<Vec<u8>> {
    let mut v = vec![0u8; BLOCK as usize];
    pm.read(b * BLOCK, &mut v)?;
    Ok(v)
}

/// Replay the journal, then load and check everything.
pub(crate) fn load<P: Persist>(pm: &P) -> Result<Loaded> {
    let geo = read_geometry(pm)?;
    let (journal, replayed) = crate::journal::Journal::recover(pm, &geo)?;
    let mut r = FsckReport { journal_replayed: replayed > 0, ..Default::default() };
    r.data_blocks = geo.total_blocks - geo.data_blk;
    let mut own = Owners { owned: vec![0; geo.total_blocks.div_ceil(64) as usize] };
    own.claim(0, geo.data_blk);

    // Inode table in one read.
    let n = usize::try_from(geo.ninodes).map_err(|_| FsError::corrupt("inode count"))?;
    // Read the table in 1 MiB chunks (4096 inodes) so memory stays bounded on large devices.
    const CHUNK: usize = 4096;
    let mut table = vec![0u8; CHUNK * INODE_SIZE as usize];
    let mut chunk_base = usize::MAX;
    let mut inodes: Vec<Option<Box<Inode>>> = (0..n).map(|_| None).collect();
    let mut free_inos = Vec::new();
    for (i, slot) in inodes.iter_mut().enumerate().skip(1) {
        let ino = i as u64;
        if i / CHUNK != chunk_base {
            chunk_base = i / CHUNK;
            let count = (n - chunk_base * CHUNK).min(CHUNK);
            table.truncate(count * 256);
            pm.read(geo.inode_off((chunk_base * CHUNK) as u64), &mut table)?;
        }
        let k = i % CHUNK;
        let raw = &table[k * 256..k * 256 + 256];
        let d = match DiskInode::decode(ino, raw) {
            Ok(d) => d,
            Err(e) => {
                r.err(e.to_string());
                continue;
            }
        };
        if d.mode == 0 {
            if d != DiskInode::free(d.generation) {
                r.err(format!("inode {ino}: free inode with fields set"));
            }
            free_inos.push((ino, d.generation));
            continue;
        }
        if !valid_type(d.mode) {
            r.err(format!("inode {ino}: bad mode {:o}", d.mode));
            continue;
        }
        match load_inode(pm, &geo, ino, d, &mut own, &mut r) {
            Ok(Some(node)) => *slot = Some(Box::new(node)),
            Ok(None) => {}
            Err(e) => r.err(format!("inode {ino}: {e}")),
        }
    }
    if inodes.get(ROOT_INO as usize).and_then(|x| x.as_ref()).is_none_or(|x| !x.is_dir()) {
        r.err("root inode missing or not a directory".into());
    }
    check_tree(&geo, &inodes, &mut r);

    // Bitmap = owned blocks.
    let words = geo.total_blocks.div_ceil(64) as usize;
    let mut bm = vec![0u8; words * 8];
    pm.read(geo.bitmap_off(), &mut bm)?;
    let bitmap: Vec<u64> = bm.chunks_exact(8).map(|c| get_u64(c, 0)).collect();
    let mut bad = 0u64;
    for b in 0..geo.total_blocks {
        let w = (b / 64) as usize;
        let bit = 1u64 << (b % 64);
        let on_pm = bitmap[w] & bit != 0;
        let owned = own.owned[w] & bit != 0;
        if on_pm != owned {
            bad += 1;
            if bad <= 10 {
                r.err(format!(
                    "block {b}: bitmap says {} but it is {}",
                    if on_pm { "used" } else { "free" },
                    if owned { "owned" } else { "unowned" }
                ));
            }
        }
        if owned && b >= geo.data_blk {
            r.used_blocks += 1;
        }
    }
    if bad > 10 {
        r.err(format!("{bad} bitmap mismatches in total"));
    }
    // Bytes that must be zero: the rest of the superblock block and of the bitmap.
    let mut sb_tail = vec![0u8; (BLOCK - 128) as usize];
    pm.read(SB_OFF + 128, &mut sb_tail)?;
    if sb_tail.iter().any(|&b| b != 0) {
        r.err("superblock block: bytes after the superblock are not zero".into());
    }
    let tail_bits = geo.total_blocks % 64;
    if tail_bits != 0 && bitmap.last().is_some_and(|w| w >> tail_bits != 0) {
        r.err("bitmap: bits set past the end of the device".into());
    }
    if bm.len() < (geo.bitmap_blocks * BLOCK) as usize {
        let mut rest = vec![0u8; (geo.bitmap_blocks * BLOCK) as usize - bm.len()];
        pm.read(geo.bitmap_off() + bm.len() as u64, &mut rest)?;
        if rest.iter().any(|&b| b != 0) {
            r.err("bitmap: bytes past the end of the device are not zero".into());
        }
    }
    r.inodes = inodes.iter().filter(|x| x.is_some()).count() as u64;
    r.dirs = inodes.iter().flatten().filter(|x| x.is_dir()).count() as u64;
    Ok(Loaded { geo, inodes, bitmap, report: r, journal, free_inos })
}

fn load_inode<P: Persist>(
    pm: &P,
    geo: &Geometry,
    ino: u64,
    d: DiskInode,
    own: &mut Owners,
    r: &mut FsckReport,
) -> Result<Option<Inode>> {
    let kind = d.mode & S_IFMT;
    let mut node = Inode::new(d.clone());
    node.free_slots.clear();
    if d.nlink == 0 {
        r.orphans.push(ino);
    }
    if kind != S_IFDIR && d.parent != 0 {
        return Err(FsError::corrupt("parent set on a non-directory"));
    }
    if kind == S_IFLNK && d.flags & IFLAG_INLINE_LINK != 0 {
        if d.size > INLINE_AREA as u64 || d.chain != 0 || d.area[d.size as usize..].iter().any(|&b| b != 0) {
            return Err(FsError::corrupt("bad inline symlink"));
        }
    } else {
        if d.flags != 0 {
            return Err(FsError::corrupt(format!("bad flags {:#x}", d.flags)));
        }
        // Extent slots: inline, then the chain.
        let mut slots: Vec<(u32, Extent)> = Vec::new();
        for s in 0..INLINE_SLOTS {
            slots.push((s as u32, Extent::decode(&d.area[s * 16..s * 16 + 16])));
        }
        let mut blk = d.chain;
        let mut nchain = 0u64;
        while blk != 0 {
            if !geo.data_range_ok(blk, 1) {
                return Err(FsError::corrupt(format!("extent-chain block {blk} out of range")));
            }
            if !own.claim(blk, 1) {
                return Err(FsError::corrupt(format!("extent-chain block {blk} shared")));
            }
            nchain += 1;
            let b = read_block(pm, blk)?;
            if get_u32(&b, 0) != CHAIN_MAGIC || get_u32(&b, 4) != 0 {
                return Err(FsError::corrupt(format!("extent-chain block {blk}: bad header")));
            }
            let base = INLINE_SLOTS + node.chain.len() * CHAIN_SLOTS;
            for i in 0..CHAIN_SLOTS {
                slots.push(((base + i) as u32, Extent::decode(&b[16 + i * 16..32 + i * 16])));
            }
            node.chain.push(blk);
            blk = get_u64(&b, 8);
            if nchain > geo.total_blocks {
                return Err(FsError::corrupt("extent chain loops"));
            }
        }
        for (slot, e) in slots {
            if e.len == 0 {
                if e != Extent::default() {
                    return Err(FsError::corrupt(format!("empty extent slot {slot} not zeroed")));
                }
                node.free_slots.push(slot);
                continue;
            }
            if !geo.data_range_ok(e.pblk, e.len)
                || e.lblk + e.len > MAX_FILE_BLOCKS
                || e.len > crate::inode::MAX_EXTENT_BLOCKS
            {
                return Err(FsError::corrupt(format!("extent {e:?} out of range")));
            }
            if let Some((&l, p)) = node.ext.range(..e.lblk + e.len).next_back()
                && l + p.len > e.lblk
            {
                return Err(FsError::corrupt(format!("extents overlap at file block {}", e.lblk)));
            }
            if let Some((&l, _)) = node.ext.range(e.lblk..).next()
                && l < e.lblk + e.len
            {
                return Err(FsError::corrupt(format!("extents overlap at file block {l}")));
            }
            if !own.claim(e.pblk, e.len) {
                return Err(FsError::corrupt(format!("extent {e:?} shares blocks with another owner")));
            }
            node.ext.insert(e.lblk, Ext { len: e.len, pblk: e.pblk, slot });
            node.mapped += e.len;
        }
        node.free_slots.reverse();
    }
    // xattrs
    if d.xattr_blk != 0 {
        if !geo.data_range_ok(d.xattr_blk, 1) {
            return Err(FsError::corrupt("xattr block out of range"));
        }
        let b = read_block(pm, d.xattr_blk)?;
        let nblk = xattr_run_blocks(&b).ok_or_else(|| FsError::corrupt("corrupt xattr block"))?;
        if !geo.data_range_ok(d.xattr_blk, nblk) || !own.claim(d.xattr_blk, nblk) {
            return Err(FsError::corrupt("xattr blocks out of range or shared"));
        }
        let mut run = vec![0u8; usize::try_from(nblk * BLOCK).map_err(|_| FsError::corrupt("xattr run"))?];
        pm.read(d.xattr_blk * BLOCK, &mut run)?;
        node.xattrs = decode_xattrs(&run)?;
        node.xattr_nblk = nblk;
        if node.xattrs.is_empty() {
            return Err(FsError::corrupt("empty xattr block"));
        }
    }
    match kind {
        S_IFDIR => {
            let nb = node.end_lblk();
            if d.size != nb * BLOCK || node.nblocks() != nb || nb > u64::from(u32::MAX / DSLOTS_PER_BLOCK) {
                return Err(FsError::corrupt("directory size does not match its dense blocks"));
            }
            if d.parent == 0 || d.parent >= geo.ninodes {
                return Err(FsError::corrupt("directory parent out of range"));
            }
            let mut di = DirIndex::default();
            for lb in 0..nb {
                let Some((p, _)) = node.map(lb) else { return Err(FsError::corrupt("directory hole")) };
                let b = read_block(pm, p)?;
                let m = parse_dir_block(&b, u32::try_from(lb).unwrap_or(u32::MAX), geo, &mut di)?;
                di.used.push(m);
            }
            node.dir = Some(Box::new(di));
        }
        S_IFLNK => {
            if d.flags & IFLAG_INLINE_LINK == 0
                && (d.size == 0 || d.size > BLOCK || node.nblocks() != 1 || node.map(0).is_none())
            {
                return Err(FsError::corrupt("bad symlink"));
            }
        }
        S_IFREG => {
            if d.size > MAX_FILE_BLOCKS * BLOCK {
                return Err(FsError::corrupt("file size beyond the largest file"));
            }
        }
        S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {
            if !node.ext.is_empty() || d.size != 0 {
                return Err(FsError::corrupt("device node with data"));
            }
        }
        _ => return Err(FsError::corrupt("bad type")),
    }
    Ok(Some(node))
}

fn parse_dir_block(b: &[u8], lb: u32, geo: &Geometry, di: &mut DirIndex) -> Result<u128> {
    let mut used = 0u128;
    let mut s = 0u32;
    while s < DSLOTS_PER_BLOCK {
        let o = (s as usize) * DSLOT as usize;
        let ino = get_u64(b, o);
        if ino == 0 {
            if b[o..o + DSLOT as usize].iter().any(|&x| x != 0) {
                return Err(FsError::corrupt(format!("directory block {lb}: free slot {s} not zeroed")));
            }
            s += 1;
            continue;
        }
        let nlen = b[o + 8] as usize;
        let k = u32::from(b[o + 9]);
        let dtype = b[o + 10];
        if ino >= geo.ninodes || nlen == 0 || k != dirent_slots(nlen) || s + k > DSLOTS_PER_BLOCK || b[o + 11] != 0 {
            return Err(FsError::corrupt(format!("directory block {lb}: bad entry at slot {s}")));
        }
        let name = &b[o + 16..o + 16 + nlen];
        let end = o + (k as usize) * DSLOT as usize;
        if get_u32(b, o + 12) != dirent_check(ino, dtype, name)
            || b[o + 16 + nlen..end].iter().any(|&x| x != 0)
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            return Err(FsError::corrupt(format!("directory block {lb}: corrupt entry at slot {s}")));
        }
        let pos = lb * DSLOTS_PER_BLOCK + s;
        if di.names.insert(name.to_vec(), DEnt { ino, dtype, pos, nslots: k }).is_some() {
            return Err(FsError::corrupt(format!("directory block {lb}: duplicate name")));
        }
        di.by_pos.insert(pos, name.to_vec());
        if dtype == 4 {
            di.subdirs += 1;
        }
        used |= DirIndex::mask(s, k);
        s += k;
    }
    Ok(used)
}

/// Most blocks in one inode's xattr run (128 KiB: a thousand small attributes, or one value of
/// the largest size, 64 KiB).
pub(crate) const XATTR_MAX_BLOCKS: u64 = 32;

/// The blocks of the xattr run whose first block is `b` (from its header; 0 there, as written
/// before runs existed, means one), or `None` when the header is not an xattr header.
pub(crate) fn xattr_run_blocks(b: &[u8]) -> Option<u64> {
    if get_u32(b, 0) != XATTR_MAGIC {
        return None;
    }
    let n = u64::from(get_u32(b, 12)).max(1);
    (n <= XATTR_MAX_BLOCKS).then_some(n)
}

/// Xattr run (1..=[`XATTR_MAX_BLOCKS`] contiguous blocks): magic u32, count u32, used u32,
/// blocks u32, checksum u64 of bytes 24..used, then entries [name_len u8][value_len u16 LE]
/// [name][value], then zeros to the end of the run. Returned padded to whole blocks.
pub(crate) fn encode_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 24];
    for (k, v) in x {
        b.push(u8::try_from(k.len()).ok()?);
        b.extend_from_slice(&u16::try_from(v.len()).ok()?.to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    let nblk = (b.len() as u64).div_ceil(BLOCK);
    if nblk > XATTR_MAX_BLOCKS {
        return None;
    }
    let used = u32::try_from(b.len()).ok()?;
    b[0..4].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&u32::try_from(x.len()).ok()?.to_le_bytes());
    b[8..12].copy_from_slice(&used.to_le_bytes());
    b[12..16].copy_from_slice(&u32::try_from(nblk).ok()?.to_le_bytes());
    let h = hash64(u64::from(XATTR_MAGIC), &b[24..]);
    b[16..24].copy_from_slice(&h.to_le_bytes());
    b.resize(usize::try_from(nblk * BLOCK).ok()?, 0);
    Some(b)
}

pub(crate) fn decode_xattrs(b: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let bad = || FsError::corrupt("corrupt xattr block");
    if xattr_run_blocks(b).is_none_or(|n| n * BLOCK != b.len() as u64) {
        return Err(bad());
    }
    let count = get_u32(b, 4) as usize;
    let used = get_u32(b, 8) as usize;
    if !(24..=b.len()).contains(&used) || get_u64(b, 16) != hash64(u64::from(XATTR_MAGIC), &b[24..used]) {
        return Err(bad());
    }
    if b[used..].iter().any(|&x| x != 0) {
        return Err(bad());
    }
    let mut m = BTreeMap::new();
    let mut i = 24;
    while i < used {
        let nl = *b.get(i).ok_or_else(bad)? as usize;
        let vl = usize::from(u16::from_le_bytes([*b.get(i + 1).ok_or_else(bad)?, *b.get(i + 2).ok_or_else(bad)?]));
        let name = b.get(i + 3..i + 3 + nl).ok_or_else(bad)?;
        let val = b.get(i + 3 + nl..i + 3 + nl + vl).ok_or_else(bad)?;
        if nl == 0 || m.insert(name.to_vec(), val.to_vec()).is_some() {
            return Err(bad());
        }
        i += 3 + nl + vl;
    }
    if m.len() != count {
        return Err(bad());
    }
    Ok(m)
}

fn check_tree(geo: &Geometry, inodes: &[Option<Box<Inode>>], r: &mut FsckReport) {
    let n = inodes.len();
    let mut refs = vec![0u32; n];
    let mut dir_parent = vec![0u64; n];
    for (i, node) in inodes.iter().enumerate() {
        let Some(node) = node else { continue };
        let Some(d) = &node.dir else { continue };
        for (name, e) in &d.names {
            let t = e.ino as usize;
            match inodes.get(t).and_then(|x| x.as_ref()) {
                None => r.err(format!("dir {i}: entry {:?} names free inode {t}", String::from_utf8_lossy(name))),
                Some(tn) => {
                    if dtype_of(tn.d.mode) != e.dtype {
                        r.err(format!("dir {i}: entry type mismatch for inode {t}"));
                    }
                    refs[t] += 1;
                    if tn.is_dir() {
                        if dir_parent[t] != 0 {
                            r.err(format!("directory {t} has two parents"));
                        }
                        dir_parent[t] = i as u64;
                    }
                }
            }
        }
    }
    for (i, node) in inodes.iter().enumerate().skip(1) {
        let Some(node) = node else { continue };
        let ino = i as u64;
        if node.is_dir() {
            let subdirs = node.dir.as_ref().map_or(0, |d| d.subdirs);
            let want_parent = if ino == ROOT_INO { ROOT_INO } else { dir_parent[i] };
            if node.d.nlink == 0 {
                if refs[i] != 0 {
                    r.err(format!("orphan directory {ino} still referenced"));
                }
                continue;
            }
            if ino == ROOT_INO && refs[i] != 0 {
                r.err("root directory is referenced by an entry".into());
            }
            if node.d.parent != want_parent {
                r.err(format!("directory {ino}: parent field {} but found in {}", node.d.parent, want_parent));
            }
            if node.d.nlink != 2 + subdirs {
                r.err(format!("directory {ino}: nlink {} but {} subdirectories", node.d.nlink, subdirs));
            }
        } else if node.d.nlink != refs[i] {
            r.err(format!("inode {ino}: nlink {} but {} entries", node.d.nlink, refs[i]));
        }
    }
    // Reachability from the root.
    let mut seen = vec![false; n];
    let mut stack = vec![ROOT_INO as usize];
    if (ROOT_INO as usize) < n {
        seen[ROOT_INO as usize] = true;
    }
    while let Some(i) = stack.pop() {
        if let Some(Some(node)) = inodes.get(i)
            && let Some(d) = &node.dir
        {
            for e in d.names.values() {
                let t = e.ino as usize;
                if t < n && !seen[t] {
                    seen[t] = true;
                    stack.push(t);
                }
            }
        }
    }
    for (i, node) in inodes.iter().enumerate().skip(1) {
        if let Some(node) = node
            && node.d.nlink > 0
            && !seen[i]
        {
            r.err(format!("inode {i} is not reachable from the root"));
        }
    }
    let _ = geo;
}
