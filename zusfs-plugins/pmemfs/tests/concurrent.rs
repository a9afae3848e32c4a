//! Several threads at once: private files, a shared directory, cross-directory renames, links
//! and unlinks. The result must be consistent (fsck clean, before and after remount).

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::sync::Arc;

use common::ROOT;
use pmemfs::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zus_pmem::MappedPmem;

#[test]
fn test_parallel_mixed_ops_stay_consistent() {
    let fs = Arc::new(Fs::mkfs(MappedPmem::anonymous(64 << 20).unwrap(), &MkfsOptions::default()).unwrap());
    let shared = fs.mkdir(ROOT, b"shared", 0o755, 0, 0).unwrap().ino;
    let other = fs.mkdir(ROOT, b"other", 0o755, 0, 0).unwrap().ino;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let fs = Arc::clone(&fs);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t);
                let mine = fs.mkdir(ROOT, format!("t{t}").as_bytes(), 0o755, 0, 0).unwrap().ino;
                let data = vec![t as u8 + 1; 10_000];
                for i in 0..1500u64 {
                    let name = format!("f{}", rng.random_range(0..20)).into_bytes();
                    let dirs = [mine, shared, other];
                    let d = dirs[rng.random_range(0..3)];
                    match rng.random_range(0..7) {
                        0 | 1 => {
                            if let Ok(a) = fs.create(d, &name, 0o644, 0, 0) {
                                let off = rng.random_range(0..50_000);
                                // another thread may have unlinked it (and the inode number may be reused)
                                match fs.write_bytes(a.ino, off, &data[..rng.random_range(1..10_000)], false) {
                                    Ok(n) => assert!(n > 0),
                                    Err(e) => assert!(
                                        matches!(e, FsError::NotFound | FsError::IsDir | FsError::Invalid(_)),
                                        "{e:?}"
                                    ),
                                }
                            }
                        }
                        2 => {
                            let _ = fs.unlink(d, &name);
                        }
                        3 => {
                            let d2 = dirs[rng.random_range(0..3)];
                            let fl = [0, RENAME_NOREPLACE, RENAME_EXCHANGE][rng.random_range(0..3)];
                            let _ = fs.rename(d, &name, d2, format!("f{}", rng.random_range(0..20)).as_bytes(), fl);
                        }
                        4 => {
                            if let Ok(a) = fs.lookup(d, &name) {
                                let _ = fs.link(a.ino, mine, format!("l{i}").as_bytes());
                                let _ = fs.write_bytes(a.ino, 0, &data[..4096], true);
                                let _ = fs.read_vec(a.ino, 0, 20_000);
                            }
                        }
                        5 => {
                            if let Ok(a) = fs.lookup(d, &name) {
                                fs.open(a.ino).ok();
                                let _ = fs.unlink(d, &name);
                                let _ = fs.read_vec(a.ino, 0, 100);
                                let _ = fs.release(a.ino);
                            }
                        }
                        _ => {
                            let _ = fs.mkdir(d, format!("d{}", rng.random_range(0..5)).as_bytes(), 0o755, 0, 0);
                            let _ = fs.rmdir(d, format!("d{}", rng.random_range(0..5)).as_bytes());
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
    let fs = Arc::into_inner(fs).unwrap();
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}

/// On a full device two threads each truncate their file and write it again, over and over:
/// the blocks one frees come back at a checkpoint (and after the reuse quarantine), which either
/// thread may run. A thread whose allocation failed must find the blocks another thread's
/// checkpoint released, not fail with ENOSPC while they are on their way back.
#[test]
fn test_full_device_rewrites_never_fail_while_blocks_come_back() {
    let fs = Arc::new(Fs::mkfs(MappedPmem::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap());
    const SIZE: usize = 1 << 20;
    let files: Vec<u64> = (0..2)
        .map(|t| {
            let a = fs.create(ROOT, format!("f{t}").as_bytes(), 0o644, 0, 0).unwrap();
            fs.write_bytes(a.ino, 0, &vec![1u8; SIZE], false).unwrap();
            a.ino
        })
        .collect();
    let filler = fs.create(ROOT, b"filler", 0o644, 0, 0).unwrap().ino;
    let mut off = 0u64;
    while let Ok(n) = fs.write_bytes(filler, off, &[2u8; 64 << 10], false) {
        off += n as u64;
    }
    // Some slack for the files' extent blocks: rewritten among the other file's blocks, a file
    // may take more extents than when it was written first.
    fs.setattr(filler, &SetAttr { size: Some(off - (256 << 10)), ..Default::default() }).unwrap();
    let threads: Vec<_> = files
        .into_iter()
        .map(|ino| {
            let fs = Arc::clone(&fs);
            std::thread::spawn(move || {
                let chunk = vec![3u8; 128 << 10];
                for round in 0..60 {
                    fs.setattr(ino, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
                    for i in 0..SIZE / chunk.len() {
                        let mut tries = 0;
                        while let Err(e) = fs.write_bytes(ino, (i * chunk.len()) as u64, &chunk, false) {
                            // ENOSPC while the other thread holds more than its share for a
                            // moment (its old blocks still on their way back) is the device's
                            // truth; with the chunk's blocks free it is the bug.
                            let st = fs.statfs();
                            tries += 1;
                            assert!(
                                matches!(e, FsError::NoSpace) && st.bfree < (chunk.len() / 4096) as u64 && tries < 200,
                                "round {round}, chunk {i}: {e:?} with {} of {} blocks free (try {tries})",
                                st.bfree,
                                st.blocks
                            );
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
