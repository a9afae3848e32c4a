//! On-pmem layout: fixed-width little-endian integers at fixed offsets, offsets never pointers
//! (P-PM4). Every decoder validates what it reads and returns an error instead of panicking.
//!
//! ```text
//! block 0              device header (owned by zus-api, never touched here)
//! block 1              superblock (written once by mkfs, checksummed)
//! journal_blk..        redo journal (header line + records)
//! itable_blk..         inode table, 256-byte inodes, 16 per block; ino = index (0 unused, 1 = root)
//! bitmap_blk..         block bitmap, one bit per device block (metadata blocks are set)
//! data_blk..total      data: file extents, extent-chain blocks, directory blocks, xattr blocks
//! ```

use crate::error::{FsError, Result};

/// Block size: the unit of allocation and of the bitmap.
pub const BLOCK: u64 = 4096;
/// Bytes reserved at the start of the device for the zus-api device header.
pub const DEV_HEADER: u64 = 4096;
/// Offset of the superblock.
pub const SB_OFF: u64 = DEV_HEADER;
/// Superblock magic ("PMEMFS" + version byte).
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"PMEMFS\x00\x01");
/// On-pmem format version (2: the journal is a log of transactions, see `journal.rs`).
pub const FORMAT_VERSION: u32 = 2;
/// Inode size.
pub const INODE_SIZE: u64 = 256;
/// Root directory inode number.
pub const ROOT_INO: u64 = 1;
/// Inline extent slots in an inode.
pub const INLINE_SLOTS: usize = 8;
/// Extent slots in an extent-chain block (16-byte header + 255 slots).
pub const CHAIN_SLOTS: usize = 255;
/// Bytes of the inline area (inline extents or inline symlink target).
pub const INLINE_AREA: usize = 128;
/// Directory slot size; a directory block holds 128 slots.
pub const DSLOT: u64 = 32;
/// Slots per directory block.
pub const DSLOTS_PER_BLOCK: u32 = 128;
/// Longest name.
pub const NAME_MAX: usize = 255;
/// Largest file: 2^32 blocks.
pub const MAX_FILE_BLOCKS: u64 = 1 << 32;
/// Extent-chain block magic.
pub const CHAIN_MAGIC: u32 = u32::from_le_bytes(*b"EXTC");
/// Xattr block magic.
pub const XATTR_MAGIC: u32 = u32::from_le_bytes(*b"XATR");

/// 64-bit hash for checksums (not cryptographic; catches torn and flipped bytes).
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(K);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h
}

/// Little-endian field access on a byte buffer (panic-free: short buffers read as zero).
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}
/// Read a little-endian u32.
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}
/// Write a little-endian u64 (ignored if out of range; callers size their buffers).
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
/// Write a little-endian u32.
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Where everything lives; decoded from (and validated against) the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// device blocks
    pub total_blocks: u64,
    /// first journal block
    pub journal_blk: u64,
    /// journal blocks
    pub journal_blocks: u64,
    /// first inode-table block
    pub itable_blk: u64,
    /// inode count (including unused ino 0)
    pub ninodes: u64,
    /// first bitmap block
    pub bitmap_blk: u64,
    /// bitmap blocks
    pub bitmap_blocks: u64,
    /// first data block
    pub data_blk: u64,
    /// allocator shards
    pub nshards: u32,
    /// filesystem uuid
    pub uuid: [u8; 16],
}

impl Geometry {
    /// Lay out a device of `dev_len` bytes.
    pub fn compute(dev_len: u64, inodes: Option<u64>, nshards: Option<u32>) -> Result<Geometry> {
        let total_blocks = dev_len / BLOCK;
        if total_blocks < 64 {
            return Err(FsError::Invalid("device too small (need at least 256 KiB)".into()));
        }
        let journal_blocks = (total_blocks / 64).clamp(16, 64);
        let journal_blk = 2;
        let want_inodes = inodes.unwrap_or(dev_len / 8192).max(64);
        let itable_blocks = want_inodes.div_ceil(BLOCK / INODE_SIZE);
        let ninodes = itable_blocks * (BLOCK / INODE_SIZE);
        let itable_blk = journal_blk + journal_blocks;
        let bitmap_blk = itable_blk + itable_blocks;
        let bitmap_blocks = total_blocks.div_ceil(BLOCK * 8);
        let data_blk = bitmap_blk + bitmap_blocks;
        if data_blk + 16 > total_blocks {
            return Err(FsError::Invalid("device too small for this many inodes".into()));
        }
        let nshards = nshards.unwrap_or(8).clamp(1, 64);
        let mut uuid = [0u8; 16];
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        uuid.copy_from_slice(&t.to_le_bytes());
        let g = Geometry {
            total_blocks,
            journal_blk,
            journal_blocks,
            itable_blk,
            ninodes,
            bitmap_blk,
            bitmap_blocks,
            data_blk,
            nshards,
            uuid,
        };
        g.validate(dev_len)?;
        Ok(g)
    }

    /// Check the geometry against the device; every later offset computation relies on this.
    pub fn validate(&self, dev_len: u64) -> Result<()> {
        let bad = |m: &str| Err(FsError::BadSuperblock(m.to_string()));
        if self.total_blocks != dev_len / BLOCK {
            return bad(&format!(
                "size mismatch: superblock says {} blocks, device has {}",
                self.total_blocks,
                dev_len / BLOCK
            ));
        }
        if self.journal_blk != 2 || !(16..=64).contains(&self.journal_blocks) {
            return bad("journal location");
        }
        if self.itable_blk != self.journal_blk + self.journal_blocks {
            return bad("inode table location");
        }
        if self.ninodes < 64 || !self.ninodes.is_multiple_of(16) || self.ninodes > (1 << 32) {
            return bad("inode count");
        }
        if self.bitmap_blk != self.itable_blk + self.ninodes / 16 {
            return bad("bitmap location");
        }
        if self.bitmap_blocks != self.total_blocks.div_ceil(BLOCK * 8) {
            return bad("bitmap size");
        }
        if self.data_blk != self.bitmap_blk + self.bitmap_blocks || self.data_blk + 16 > self.total_blocks {
            return bad("data area");
        }
        if !(1..=64).contains(&self.nshards) {
            return bad("shard count");
        }
        Ok(())
    }

    /// Byte offset of the journal.
    pub fn journal_off(&self) -> u64 {
        self.journal_blk * BLOCK
    }
    /// Journal length in bytes.
    pub fn journal_len(&self) -> u64 {
        self.journal_blocks * BLOCK
    }
    /// Byte offset of inode `ino`.
    pub fn inode_off(&self, ino: u64) -> u64 {
        self.itable_blk * BLOCK + ino * INODE_SIZE
    }
    /// Byte offset of the bitmap.
    pub fn bitmap_off(&self) -> u64 {
        self.bitmap_blk * BLOCK
    }
    /// Whether `[pblk, pblk+len)` lies in the data area.
    pub fn data_range_ok(&self, pblk: u64, len: u64) -> bool {
        len > 0 && pblk >= self.data_blk && pblk.checked_add(len).is_some_and(|e| e <= self.total_blocks)
    }

    /// Encode the superblock (first 128 bytes of block 1; the rest of the block is zero).
    pub fn encode(&self, mkfs_time: i64) -> [u8; 128] {
        let mut b = [0u8; 128];
        put_u64(&mut b, 0, SB_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        put_u32(&mut b, 12, u32::try_from(BLOCK).unwrap_or(0));
        put_u64(&mut b, 16, self.total_blocks);
        put_u64(&mut b, 24, self.journal_blk);
        put_u64(&mut b, 32, self.journal_blocks);
        put_u64(&mut b, 40, self.itable_blk);
        put_u64(&mut b, 48, self.ninodes);
        put_u64(&mut b, 56, self.bitmap_blk);
        put_u64(&mut b, 64, self.bitmap_blocks);
        put_u64(&mut b, 72, self.data_blk);
        put_u32(&mut b, 80, self.nshards);
        b[88..104].copy_from_slice(&self.uuid);
        put_u64(&mut b, 104, mkfs_time.cast_unsigned());
        let h = hash64(SB_MAGIC, &b[..120]);
        put_u64(&mut b, 120, h);
        b
    }

    /// Decode and validate a superblock.
    pub fn decode(b: &[u8], dev_len: u64) -> Result<Geometry> {
        if b.len() < 128 || get_u64(b, 0) != SB_MAGIC {
            return Err(FsError::BadSuperblock("bad magic: not a pmemfs device".into()));
        }
        if get_u64(b, 120) != hash64(SB_MAGIC, &b[..120]) {
            return Err(FsError::BadSuperblock("superblock checksum mismatch".into()));
        }
        if get_u32(b, 8) != FORMAT_VERSION {
            return Err(FsError::BadSuperblock(format!("unsupported format version {}", get_u32(b, 8))));
        }
        if u64::from(get_u32(b, 12)) != BLOCK {
            return Err(FsError::BadSuperblock("block size".into()));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[88..104]);
        let g = Geometry {
            total_blocks: get_u64(b, 16),
            journal_blk: get_u64(b, 24),
            journal_blocks: get_u64(b, 32),
            itable_blk: get_u64(b, 40),
            ninodes: get_u64(b, 48),
            bitmap_blk: get_u64(b, 56),
            bitmap_blocks: get_u64(b, 64),
            data_blk: get_u64(b, 72),
            nshards: get_u32(b, 80),
            uuid,
        };
        g.validate(dev_len)?;
        Ok(g)
    }
}

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010_000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140_000;

/// Whether `mode` has a valid file type.
pub fn valid_type(mode: u32) -> bool {
    matches!(mode & S_IFMT, S_IFDIR | S_IFREG | S_IFLNK | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK)
}

/// Inode flag: the symlink target is stored inline.
pub const IFLAG_INLINE_LINK: u32 = 1;

/// One extent: `len` blocks of the file from `lblk` live at device block `pblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Extent {
    /// first file block
    pub lblk: u64,
    /// length in blocks (0 = empty slot)
    pub len: u64,
    /// first device block
    pub pblk: u64,
}

impl Extent {
    /// 16-byte slot encoding: lblk u32, len u32, pblk u64.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u32(&mut b, 0, u32::try_from(self.lblk).unwrap_or(u32::MAX));
        put_u32(&mut b, 4, u32::try_from(self.len).unwrap_or(0));
        put_u64(&mut b, 8, self.pblk);
        b
    }
    /// Decode a slot.
    pub fn decode(b: &[u8]) -> Extent {
        Extent { lblk: u64::from(get_u32(b, 0)), len: u64::from(get_u32(b, 4)), pblk: get_u64(b, 8) }
    }
}

/// The on-pmem inode.
///
/// ```text
///   0 size  8 atime  16 mtime  24 ctime        "hot" fields: updated in place by 8-byte stores,
///                                              outside the checksum
///  32 mode u32  36 nlink u32  40 uid u32  44 gid u32
///  48 rdev  56 generation  64 parent (dirs)  72 xattr block  80 first extent-chain block
///  88 flags u32  92..120 reserved (zero)
/// 120..248 inline area: 8 extent slots, or an inline symlink target
/// 248 checksum of bytes 32..248, keyed by ino
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInode {
    /// bytes
    pub size: u64,
    /// ns since epoch
    pub atime: i64,
    /// ns since epoch
    pub mtime: i64,
    /// ns since epoch
    pub ctime: i64,
    /// type and permission bits; 0 = free inode
    pub mode: u32,
    /// link count
    pub nlink: u32,
    /// owner
    pub uid: u32,
    /// group
    pub gid: u32,
    /// device number for device files
    pub rdev: u64,
    /// bumped each time the inode number is reused
    pub generation: u64,
    /// parent directory (directories only)
    pub parent: u64,
    /// xattr block or 0
    pub xattr_blk: u64,
    /// first extent-chain block or 0
    pub chain: u64,
    /// IFLAG_*
    pub flags: u32,
    /// inline extents or symlink target
    pub area: [u8; INLINE_AREA],
}

impl DiskInode {
    /// A free inode keeping its generation.
    pub fn free(generation: u64) -> DiskInode {
        DiskInode {
            size: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            mode: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            generation,
            parent: 0,
            xattr_blk: 0,
            chain: 0,
            flags: 0,
            area: [0; INLINE_AREA],
        }
    }

    /// Encode with checksum.
    pub fn encode(&self, ino: u64) -> [u8; 256] {
        let mut b = [0u8; 256];
        put_u64(&mut b, 0, self.size);
        put_u64(&mut b, 8, self.atime.cast_unsigned());
        put_u64(&mut b, 16, self.mtime.cast_unsigned());
        put_u64(&mut b, 24, self.ctime.cast_unsigned());
        put_u32(&mut b, 32, self.mode);
        put_u32(&mut b, 36, self.nlink);
        put_u32(&mut b, 40, self.uid);
        put_u32(&mut b, 44, self.gid);
        put_u64(&mut b, 48, self.rdev);
        put_u64(&mut b, 56, self.generation);
        put_u64(&mut b, 64, self.parent);
        put_u64(&mut b, 72, self.xattr_blk);
        put_u64(&mut b, 80, self.chain);
        put_u32(&mut b, 88, self.flags);
        b[120..248].copy_from_slice(&self.area);
        let h = hash64(ino, &b[32..248]);
        put_u64(&mut b, 248, h);
        b
    }

    /// Decode, verifying the checksum.
    pub fn decode(ino: u64, b: &[u8]) -> Result<DiskInode> {
        if b.len() < 256 {
            return Err(FsError::corrupt(format!("inode {ino}: short read")));
        }
        if get_u64(b, 248) != hash64(ino, &b[32..248]) {
            return Err(FsError::corrupt(format!("inode {ino}: checksum mismatch")));
        }
        if b[92..120].iter().any(|&x| x != 0) {
            return Err(FsError::corrupt(format!("inode {ino}: reserved bytes set")));
        }
        let mut area = [0u8; INLINE_AREA];
        area.copy_from_slice(&b[120..248]);
        Ok(DiskInode {
            size: get_u64(b, 0),
            atime: get_u64(b, 8).cast_signed(),
            mtime: get_u64(b, 16).cast_signed(),
            ctime: get_u64(b, 24).cast_signed(),
            mode: get_u32(b, 32),
            nlink: get_u32(b, 36),
            uid: get_u32(b, 40),
            gid: get_u32(b, 44),
            rdev: get_u64(b, 48),
            generation: get_u64(b, 56),
            parent: get_u64(b, 64),
            xattr_blk: get_u64(b, 72),
            chain: get_u64(b, 80),
            flags: get_u32(b, 88),
            area,
        })
    }
}

/// Directory entry header (first 16 bytes of its first 32-byte slot), then the name.
/// ```text
///  0 ino u64 (0 = free slot)  8 name_len u8  9 nslots u8  10 dtype u8  11 zero  12 check u32
/// 16.. name bytes (continuing into following slots)
/// ```
/// Slots not covered by an entry are all zero.
pub fn dirent_slots(name_len: usize) -> u32 {
    u32::try_from((16 + name_len).div_ceil(32)).unwrap_or(u32::MAX)
}

/// Check word of a directory entry.
pub fn dirent_check(ino: u64, dtype: u8, name: &[u8]) -> u32 {
    let h = hash64(ino ^ (u64::from(dtype) << 56), name);
    u32::try_from(h & 0xFFFF_FFFF).unwrap_or(0)
}

/// The bytes of the largest directory entry (a 255-byte name: 9 slots).
pub const DIRENT_MAX: usize = 288;

/// Encode a directory entry into `out`: its bytes (nslots * 32), or ENAMETOOLONG.
pub fn dirent_encode<'o>(ino: u64, dtype: u8, name: &[u8], out: &'o mut [u8; DIRENT_MAX]) -> Result<&'o [u8]> {
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    let len = dirent_slots(name.len()) as usize * 32;
    let b = &mut out[..len];
    b.fill(0);
    put_u64(b, 0, ino);
    b[8] = u8::try_from(name.len()).unwrap_or(0);
    b[9] = u8::try_from(len / 32).unwrap_or(0);
    b[10] = dtype;
    put_u32(b, 12, dirent_check(ino, dtype, name));
    b[16..16 + name.len()].copy_from_slice(name);
    Ok(b)
}

/// d_type value of a mode.
pub fn dtype_of(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFIFO => 1,
        S_IFCHR => 2,
        S_IFDIR => 4,
        S_IFBLK => 6,
        S_IFREG => 8,
        S_IFLNK => 10,
        S_IFSOCK => 12,
        _ => 0,
    }
}
