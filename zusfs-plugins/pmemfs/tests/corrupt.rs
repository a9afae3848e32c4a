//! Corrupt images: random byte flips in metadata. Mount must refuse with an error or the damage
//! must be harmless/reported; nothing may panic, loop or read out of bounds — including running
//! operations on whatever a corrupt-but-accepted image mounted as.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::ROOT;
use pmemfs::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zus_pmem::CrashSim;

fn populated() -> (Vec<u8>, layout::Geometry) {
    let fs = Fs::mkfs(CrashSim::new(1 << 20), &MkfsOptions::default()).unwrap();
    let d = fs.mkdir(ROOT, b"dir", 0o755, 0, 0).unwrap();
    let t = fs.create(ROOT, b"target", 0o644, 0, 0).unwrap();
    for i in 0..40u64 {
        let f = fs.create(d.ino, format!("file-with-a-longer-name-{i}").as_bytes(), 0o644, i as u32, 0).unwrap();
        fs.write_bytes(f.ino, i * 5000, &[i as u8; 3000], true).unwrap();
        fs.write_bytes(t.ino, i * 8192, &[1; 100], true).unwrap(); // fragmented: extent chain
        if i % 5 == 0 {
            fs.setxattr(f.ino, b"user.x", &[2; 50], 0).unwrap();
            fs.symlink(d.ino, format!("l{i}").as_bytes(), &vec![b'p'; 10 + 20 * i as usize], 0, 0).unwrap();
        }
    }
    fs.link(t.ino, d.ino, b"hard").unwrap();
    let geo = fs.geometry();
    let img = fs.into_pmem().live_image();
    (img, geo)
}

/// Exercise a mounted (possibly damaged) filesystem; errors are fine, panics are not.
fn exercise(fs: &Fs<CrashSim>) {
    let _ = fs.check();
    let mut stack = vec![ROOT];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > 500 {
            break;
        }
        let Ok(ents) = fs.readdir(dir, 0, 1000) else { continue };
        for e in ents.iter().skip(2) {
            if let Ok(a) = fs.getattr(e.ino) {
                match a.mode & 0o170000 {
                    0o040000 => stack.push(e.ino),
                    0o120000 => {
                        let _ = fs.readlink(e.ino);
                    }
                    _ => {
                        let _ = fs.read_vec(e.ino, 0, 1 << 20);
                        let _ = fs.write_bytes(e.ino, 100, b"poke", true);
                        let _ = fs.listxattr(e.ino);
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

#[test]
fn test_random_metadata_byte_flips_never_panic() {
    let (img, geo) = populated();
    let meta_end = (geo.data_blk * 4096) as usize;
    let mut rng = StdRng::seed_from_u64(42);
    let (mut refused, mut reported, mut accepted, mut panics) = (0, 0, 0, 0);
    let runs = 2500;
    for i in 0..runs {
        let mut bad = img.clone();
        let flips = rng.random_range(1..4);
        for _ in 0..flips {
            // mostly metadata areas; sometimes anywhere (dir, chain, xattr blocks live there)
            let at = if rng.random_bool(0.75) {
                rng.random_range(4096..meta_end)
            } else {
                rng.random_range(meta_end..bad.len())
            };
            bad[at] ^= 1 << rng.random_range(0..8);
        }
        let r = catch_unwind(AssertUnwindSafe(|| match Fs::mount(CrashSim::from_image(bad.clone())) {
            Err(_) => 0,
            Ok(fs) => {
                let clean = fs.check().map(|r| r.is_clean()).unwrap_or(false);
                exercise(&fs);
                if clean { 2 } else { 1 }
            }
        }));
        match r {
            Ok(0) => refused += 1,
            Ok(1) => reported += 1,
            Ok(_) => accepted += 1,
            Err(_) => {
                panics += 1;
                eprintln!("panic on corrupt image {i}");
            }
        }
    }
    eprintln!(
        "{runs} corrupt images: {refused} refused at mount, {reported} mounted with fsck errors, \
         {accepted} accepted (flip in free space or an unchecked field: times, sizes, data), {panics} panics"
    );
    assert_eq!(panics, 0);
    assert!(refused > runs / 3);
}

#[test]
fn test_mount_errors_are_clear() {
    let (img, _) = populated();
    let mut bad = img.clone();
    bad[4096] ^= 1; // magic
    let e = Fs::mount(CrashSim::from_image(bad)).unwrap_err();
    assert!(e.to_string().contains("bad magic"), "{e}");
    let mut bad = img.clone();
    bad[4096 + 40] ^= 1; // a geometry field: checksum
    let e = Fs::mount(CrashSim::from_image(bad)).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    let mut short = img.clone();
    short.truncate(img.len() - 4096);
    let e = Fs::mount(CrashSim::from_image(short)).unwrap_err();
    assert!(e.to_string().contains("size mismatch"), "{e}");
    let e = Fs::mount(CrashSim::new(1 << 20)).unwrap_err();
    assert!(e.to_string().contains("not a pmemfs device"), "{e}");
    // A format-1 superblock (the journal before it became a log), checksum and all.
    let mut old = img.clone();
    old[4096 + 8..4096 + 12].copy_from_slice(&1u32.to_le_bytes());
    let h = pmemfs::layout::hash64(pmemfs::layout::SB_MAGIC, &old[4096..4096 + 120]);
    old[4096 + 120..4096 + 128].copy_from_slice(&h.to_le_bytes());
    let e = Fs::mount(CrashSim::from_image(old)).unwrap_err();
    assert!(e.to_string().contains("unsupported format version 1"), "{e}");
    // The journal's head line.
    let mut bad = img.clone();
    bad[2 * 4096] ^= 1;
    let e = Fs::mount(CrashSim::from_image(bad)).unwrap_err();
    assert!(e.to_string().contains("journal: bad head magic"), "{e}");
}

#[test]
fn test_every_inode_record_flip_outside_hot_fields_is_refused() {
    let (img, geo) = populated();
    let mut rng = StdRng::seed_from_u64(7);
    for ino in 1..geo.ninodes {
        let mut bad = img.clone();
        let at = (geo.inode_off(ino) + rng.random_range(32..256)) as usize;
        bad[at] ^= 1 << rng.random_range(0..8);
        let r = Fs::mount(CrashSim::from_image(bad));
        assert!(r.is_err(), "flip in inode {ino} at byte {} went unnoticed", at as u64 - geo.inode_off(ino));
    }
}
