//! pmemfs mount, fsck and a few ops on a corrupt image.
//!
//! The base image is a 1 MiB pmemfs (256 inodes) populated as `pmemfs/tests/corrupt.rs` does,
//! smaller: a directory of 12 files with data and xattrs, symlinks (inline and in blocks), a
//! fragmented file (an extent chain) and a hard link. An input patches it:
//!
//! - `u8` mode: bit 0 recomputes the checksums the patches broke (the superblock's, and each
//!   touched inode record's), so that the damage gets past the checksums to the code behind
//!   them; without it the fuzzer mostly tests that a checksum mismatch is refused;
//! - then patches to the end of the input (at most [`MAX_PATCHES`]): a `u32` offset (bit 31
//!   clear: into the metadata, from the superblock to the first data block; set: anywhere), a
//!   `u8` length and that many bytes, written over the image.
//!
//! Then: the offline fsck (`pmemfs::fsck`, what `zufs fsck` runs) on the image; a mount; and on
//! whatever mounted, the online check and a bounded walk that reads, writes, truncates, lists
//! xattrs and unlinks what it finds, creates, renames, and checks again. Errors are expected;
//! a panic, a hang or a memory error is a bug.

use std::cell::RefCell;

use pmemfs::layout::{Geometry, INODE_SIZE, SB_MAGIC, SB_OFF, hash64, put_u64};
use pmemfs::{Fs, MkfsOptions, SetAttr};
use zus_pmem::MappedPmem;

use crate::Reader;

/// Bytes of the image.
pub const IMG_LEN: usize = 1 << 20;
/// Patches per input.
pub const MAX_PATCHES: usize = 32;
/// Mode bit: fix the checksums after patching.
pub const FIX_CHECKSUMS: u8 = 1;
/// Offset bit: anywhere in the image (else: in the metadata).
pub const ANYWHERE: u32 = 1 << 31;

const ROOT: u64 = pmemfs::layout::ROOT_INO;

struct Fixture {
    dev: MappedPmem,
    image: Vec<u8>,
    geo: Geometry,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn borrowed(dev: &MappedPmem) -> MappedPmem {
    // SAFETY: the fixture's mapping outlives every use of the borrowed handle (dropped within
    // the input), and a borrowed handle never unmaps.
    unsafe { MappedPmem::from_raw(dev.base_ptr(), IMG_LEN) }.expect("non-null mapping")
}

fn populate(fs: &Fs<MappedPmem>) {
    let d = fs.mkdir(ROOT, b"dir", 0o755, 0, 0).expect("mkdir");
    let t = fs.create(ROOT, b"target", 0o644, 0, 0).expect("create");
    for i in 0..12u64 {
        let f =
            fs.create(d.ino, format!("file-with-a-longer-name-{i}").as_bytes(), 0o644, i as u32, 0).expect("create");
        fs.write_bytes(f.ino, i * 5000, &[i as u8; 3000], true).expect("write");
        fs.write_bytes(t.ino, i * 8192, &[1; 100], true).expect("write"); // fragmented: a chain
        if i % 4 == 0 {
            fs.setxattr(f.ino, b"user.x", &[2; 50], 0).expect("setxattr");
            fs.symlink(d.ino, format!("l{i}").as_bytes(), &vec![b'p'; 10 + 60 * i as usize], 0, 0).expect("symlink");
        }
    }
    fs.link(t.ino, d.ino, b"hard").expect("link");
}

impl Fixture {
    fn new() -> Self {
        let dev = MappedPmem::anonymous(IMG_LEN).expect("anonymous device");
        let fs = Fs::mkfs(borrowed(&dev), &MkfsOptions { inodes: Some(256), ..MkfsOptions::default() }).expect("mkfs");
        populate(&fs);
        let geo = fs.geometry();
        drop(fs.into_pmem());
        // SAFETY: the mapping is IMG_LEN bytes and unused now.
        let image = unsafe { core::slice::from_raw_parts(dev.base_ptr(), IMG_LEN) }.to_vec();
        Self { dev, image, geo }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is IMG_LEN bytes; nothing else uses it between mounts.
        unsafe { core::slice::from_raw_parts_mut(self.dev.base_ptr(), IMG_LEN) }
    }

    fn run(&mut self, data: &[u8]) {
        let image = core::mem::take(&mut self.image);
        self.bytes().copy_from_slice(&image);
        self.image = image;
        let geo = self.geo;
        let meta_start = SB_OFF as usize;
        let meta_end = (geo.data_blk * pmemfs::layout::BLOCK) as usize;
        let mut r = Reader::new(data);
        let mode = r.u8();
        let mut touched: Vec<(usize, usize)> = Vec::new();
        for _ in 0..MAX_PATCHES {
            if r.is_empty() {
                break;
            }
            let off = r.u32();
            let n = usize::from(r.u8());
            let b = r.bytes(n);
            let at = if off & ANYWHERE != 0 {
                (off & !ANYWHERE) as usize % IMG_LEN
            } else {
                meta_start + off as usize % (meta_end - meta_start)
            };
            let n = b.len().min(IMG_LEN - at);
            self.bytes()[at..at + n].copy_from_slice(&b[..n]);
            touched.push((at, n));
        }
        if mode & FIX_CHECKSUMS != 0 {
            fix_checksums(self.bytes(), &geo, &touched);
        }
        let _ = pmemfs::fsck(&borrowed(&self.dev));
        if let Ok(fs) = Fs::mount(borrowed(&self.dev)) {
            exercise(&fs);
            drop(fs.into_pmem());
        }
    }
}

/// Recomputes the superblock's checksum and those of the inode records `touched` overlaps.
fn fix_checksums(img: &mut [u8], geo: &Geometry, touched: &[(usize, usize)]) {
    let sb = SB_OFF as usize;
    let overlaps = |a: usize, b: usize| touched.iter().any(|&(at, n)| at < b && at + n.max(1) > a);
    if overlaps(sb, sb + 128) {
        let h = hash64(SB_MAGIC, &img[sb..sb + 120]);
        put_u64(&mut img[sb..sb + 128], 120, h);
    }
    let itable = geo.inode_off(0) as usize;
    let isz = INODE_SIZE as usize;
    for ino in 0..geo.ninodes {
        let at = itable + ino as usize * isz;
        if at + isz > img.len() {
            break;
        }
        if overlaps(at, at + isz) {
            let rec = &mut img[at..at + isz];
            let h = hash64(ino, &rec[32..248]);
            put_u64(rec, 248, h);
        }
    }
}

/// Exercises a mounted (possibly damaged) filesystem; errors are fine, panics are not.
fn exercise(fs: &Fs<MappedPmem>) {
    let _ = fs.check();
    let mut stack = vec![ROOT];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        let Ok(ents) = fs.readdir(dir, 0, 256) else { continue };
        for e in ents.iter().filter(|e| e.name != b"." && e.name != b"..") {
            if let Ok(a) = fs.getattr(e.ino) {
                match a.mode & 0o170000 {
                    0o040000 => stack.push(e.ino),
                    0o120000 => {
                        let _ = fs.readlink(e.ino);
                    }
                    _ => {
                        let _ = fs.read_vec(e.ino, 0, 1 << 17);
                        let _ = fs.write_bytes(e.ino, 100, b"poke", true);
                        let _ = fs.listxattr(e.ino).map(|l| l.first().map(|n| fs.getxattr(e.ino, n)));
                        let _ = fs.setattr(e.ino, &SetAttr { size: Some(10), ..Default::default() });
                    }
                }
            }
            let _ = fs.unlink(dir, &e.name);
        }
    }
    let _ = fs.create(ROOT, b"new", 0o644, 0, 0).map(|a| fs.write_bytes(a.ino, 0, &[7; 9000], true));
    let _ = fs.mkdir(ROOT, b"newdir", 0o755, 0, 0);
    let _ = fs.rename(ROOT, b"new", ROOT, b"dir", 0);
    let _ = fs.check();
}

/// One input (see the module doc).
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| f.borrow_mut().get_or_insert_with(Fixture::new).run(data));
}

/// The base image's geometry (for the seed generator).
#[must_use]
pub fn geometry() -> Geometry {
    FIXTURE.with(|f| f.borrow_mut().get_or_insert_with(Fixture::new).geo)
}

/// An input: `mode` and the patches (offset with [`ANYWHERE`] or not, bytes).
#[must_use]
pub fn encode(mode: u8, patches: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![mode];
    for (off, b) in patches {
        out.extend_from_slice(&off.to_le_bytes());
        out.push(u8::try_from(b.len()).expect("patch of at most 255 bytes"));
        out.extend_from_slice(b);
    }
    out
}
