//! Crash consistency: every fence of every operation (and the moment after it) is turned into
//! crash images — everything fenced plus any subset of the lines written since (exhaustive when
//! few, sampled otherwise). Each image must mount (running recovery), pass fsck, and show the tree
//! before or after the operation, never a mix; fsync'ed data is never lost.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{ROOT, Tree, before_or_after, snapshot};
use pmemfs::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zus_pmem::{CrashPoint, CrashSim, ImageBudget};

const DEV: usize = 512 << 10;
static IMAGES: AtomicU64 = AtomicU64::new(0);

fn budget() -> ImageBudget {
    ImageBudget { exhaustive_max: 64, samples: 40 }
}

/// Mount every image of `points`, check it, and compare with before/after. Returns image count.
fn check_points(points: &[CrashPoint], before: &Tree, after: &Tree, what: &str, seed: u64) -> u64 {
    let mut n = 0;
    for (pi, p) in points.iter().enumerate() {
        for img in p.images(&budget(), seed + pi as u64) {
            n += 1;
            let fs = match Fs::mount(CrashSim::from_image(img)) {
                Ok(fs) => fs,
                Err(e) => panic!("{what}: crash image (point {pi}, fence {}) does not mount: {e}", p.fence_no),
            };
            let r = fs.check().unwrap();
            assert!(r.is_clean(), "{what}: fsck after recovery (point {pi}):\n{r}");
            let t = snapshot(&fs).unwrap();
            if !before_or_after(&t, before, after) {
                panic!(
                    "{what}: crash image (point {pi} of {}, fence {}) is neither before nor after\n\
                     image:  {}\nbefore: {}\nafter:  {}",
                    points.len(),
                    p.fence_no,
                    common::describe(&t),
                    common::describe(before),
                    common::describe(after),
                );
            }
        }
    }
    IMAGES.fetch_add(n, Ordering::Relaxed);
    n
}

type Step = Box<dyn Fn(&Fs<CrashSim>)>;

/// Run `setup` (not crash-tested), then `op` with crash capture; check every image.
fn crash_case(what: &str, setup: impl FnOnce(&Fs<CrashSim>), op: impl Fn(&Fs<CrashSim>) + 'static) -> u64 {
    crash_steps(what, setup, vec![Box::new(op)])
}

/// Like `crash_case` for several operations in a row, each checked on its own.
fn crash_steps(what: &str, setup: impl FnOnce(&Fs<CrashSim>), steps: Vec<Step>) -> u64 {
    crash_steps_on(DEV, what, setup, steps)
}

/// `crash_steps` on a device of `dev` bytes.
fn crash_steps_on(dev: usize, what: &str, setup: impl FnOnce(&Fs<CrashSim>), steps: Vec<Step>) -> u64 {
    let fs = Fs::mkfs(CrashSim::new(dev), &MkfsOptions::default()).unwrap();
    setup(&fs);
    fs.sync().unwrap();
    let mut total = 0;
    for (i, op) in steps.iter().enumerate() {
        let before = snapshot(&fs).unwrap();
        fs.pmem().set_capture(true);
        op(&fs);
        fs.pmem().set_capture(false);
        let after = snapshot(&fs).unwrap();
        let mut points = fs.pmem().take_points();
        points.push(fs.pmem().crash_point_now());
        total += check_points(&points, &before, &after, &format!("{what} (step {i})"), 7 + i as u64);
    }
    assert!(total > 0);
    total
}

fn file(fs: &Fs<CrashSim>, dir: u64, name: &str, len: usize) -> u64 {
    let a = fs.create(dir, name.as_bytes(), 0o644, 0, 0).unwrap();
    if len > 0 {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
        fs.write_bytes(a.ino, 0, &data, true).unwrap();
    }
    a.ino
}

fn lookup(fs: &Fs<CrashSim>, dir: u64, name: &str) -> u64 {
    fs.lookup(dir, name.as_bytes()).unwrap().ino
}

#[test]
fn test_crash_each_metadata_op() {
    let mut total = 0;
    total += crash_case(
        "create",
        |_| {},
        |fs| {
            fs.create(ROOT, b"a", 0o644, 0, 0).unwrap();
        },
    );
    total += crash_case(
        "mkdir",
        |fs| {
            file(fs, ROOT, "x", 10);
        },
        |fs| {
            fs.mkdir(ROOT, b"d", 0o755, 3, 4).unwrap();
        },
    );
    total += crash_case(
        "mknod",
        |_| {},
        |fs| {
            fs.mknod(ROOT, b"fifo", 0o010644, 0, 0, 0).unwrap();
        },
    );
    total += crash_case(
        "unlink file with data",
        |fs| {
            file(fs, ROOT, "a", 30_000);
            file(fs, ROOT, "b", 100);
        },
        |fs| fs.unlink(ROOT, b"a").unwrap(),
    );
    total += crash_steps_on(
        4 << 20,
        "unlink of a file with more extents than one transaction frees",
        |fs| {
            // 300 one-block extents (a hole punched after each): the name, the first 256 and
            // the inode's smaller size go in one transaction, the rest and the inode in a second.
            let a = file(fs, ROOT, "a", 600 * 4096);
            for i in 0..300u64 {
                fs.fallocate(a, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * 8192 + 4096, 4096).unwrap();
            }
            file(fs, ROOT, "b", 100);
        },
        vec![Box::new(|fs| fs.unlink(ROOT, b"a").unwrap())],
    );
    total += crash_steps(
        "unlink of an open file, then release",
        |fs| {
            let a = file(fs, ROOT, "a", 9000);
            fs.open(a).unwrap();
        },
        vec![Box::new(|fs| fs.unlink(ROOT, b"a").unwrap()), Box::new(|fs| fs.release(2).unwrap())],
    );
    total += crash_case(
        "rmdir",
        |fs| {
            let d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
            file(fs, d.ino, "t", 0);
            fs.unlink(d.ino, b"t").unwrap();
        },
        |fs| fs.rmdir(ROOT, b"d").unwrap(),
    );
    total += crash_case(
        "rename within a directory",
        |fs| {
            file(fs, ROOT, "a", 100);
        },
        |fs| fs.rename(ROOT, b"a", ROOT, b"b", 0).unwrap(),
    );
    total += crash_case(
        "rename replacing a file",
        |fs| {
            file(fs, ROOT, "a", 100);
            file(fs, ROOT, "b", 20_000);
        },
        |fs| fs.rename(ROOT, b"a", ROOT, b"b", 0).unwrap(),
    );
    total += crash_case(
        "rename a directory across directories",
        |fs| {
            let d1 = fs.mkdir(ROOT, b"d1", 0o755, 0, 0).unwrap();
            fs.mkdir(ROOT, b"d2", 0o755, 0, 0).unwrap();
            let s = fs.mkdir(d1.ino, b"s", 0o755, 0, 0).unwrap();
            file(fs, s.ino, "f", 10);
        },
        |fs| {
            let (d1, d2) = (lookup(fs, ROOT, "d1"), lookup(fs, ROOT, "d2"));
            fs.rename(d1, b"s", d2, b"s2", 0).unwrap();
        },
    );
    total += crash_case(
        "rename exchange across directories",
        |fs| {
            let d1 = fs.mkdir(ROOT, b"d1", 0o755, 0, 0).unwrap();
            let d2 = fs.mkdir(ROOT, b"d2", 0o755, 0, 0).unwrap();
            fs.mkdir(d1.ino, b"s", 0o755, 0, 0).unwrap();
            file(fs, d2.ino, "f", 10);
        },
        |fs| {
            let (d1, d2) = (lookup(fs, ROOT, "d1"), lookup(fs, ROOT, "d2"));
            fs.rename(d1, b"s", d2, b"f", RENAME_EXCHANGE).unwrap();
        },
    );
    total += crash_case(
        "rename over an empty directory",
        |fs| {
            fs.mkdir(ROOT, b"a", 0o755, 0, 0).unwrap();
            let b = fs.mkdir(ROOT, b"b", 0o755, 0, 0).unwrap();
            file(fs, b.ino, "x", 0);
            fs.unlink(b.ino, b"x").unwrap();
        },
        |fs| fs.rename(ROOT, b"a", ROOT, b"b", 0).unwrap(),
    );
    total += crash_case(
        "link",
        |fs| {
            file(fs, ROOT, "a", 10);
            fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
        },
        |fs| {
            let (a, d) = (lookup(fs, ROOT, "a"), lookup(fs, ROOT, "d"));
            fs.link(a, d, b"b").unwrap();
        },
    );
    // A directory whose last entries go gives its blocks back in the same transaction (names of
    // 100 bytes take 4 slots: 32 entries per block, so 33 fill two blocks).
    let long = |i: usize| format!("{i:0>100}");
    let shrinking = move |fs: &Fs<CrashSim>| {
        let d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
        for i in 0..33 {
            file(fs, d.ino, &long(i), 0);
        }
        for i in 0..32 {
            fs.unlink(d.ino, long(i).as_bytes()).unwrap();
        }
        assert_eq!(fs.getattr(d.ino).unwrap().size, 8192);
    };
    total += crash_case("unlink that shrinks a directory", shrinking, move |fs| {
        let d = lookup(fs, ROOT, "d");
        fs.unlink(d, long(32).as_bytes()).unwrap();
        assert_eq!(fs.getattr(d).unwrap().size, 0);
    });
    total += crash_case("rename out of a directory that shrinks", shrinking, move |fs| {
        let d = lookup(fs, ROOT, "d");
        fs.rename(d, long(32).as_bytes(), ROOT, b"moved", 0).unwrap();
        assert_eq!(fs.getattr(d).unwrap().size, 0);
    });
    total += crash_case(
        "symlink inline",
        |_| {},
        |fs| {
            fs.symlink(ROOT, b"l", b"target/path", 0, 0).unwrap();
        },
    );
    total += crash_case(
        "symlink in a block",
        |_| {},
        |fs| {
            fs.symlink(ROOT, b"l", &[b'z'; 700], 0, 0).unwrap();
        },
    );
    total += crash_case(
        "chmod/chown",
        |fs| {
            file(fs, ROOT, "a", 10);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.setattr(a, &SetAttr { mode: Some(0o600), uid: Some(5), gid: Some(6), ..Default::default() }).unwrap();
        },
    );
    total += crash_case(
        "truncate down",
        |fs| {
            let a = file(fs, ROOT, "a", 0);
            // fragmented: several extents
            for i in 0..12u64 {
                fs.write_bytes(a, i * 8192, &[i as u8 + 1; 4096], true).unwrap();
                file(fs, ROOT, &format!("pad{i}"), 4096);
            }
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.setattr(a, &SetAttr { size: Some(5000), ..Default::default() }).unwrap();
        },
    );
    total += crash_case(
        "truncate up",
        |fs| {
            let a = file(fs, ROOT, "a", 10_000);
            fs.setattr(a, &SetAttr { size: Some(3000), ..Default::default() }).unwrap();
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.setattr(a, &SetAttr { size: Some(20_000), ..Default::default() }).unwrap();
        },
    );
    total += crash_case(
        "setxattr",
        |fs| {
            file(fs, ROOT, "a", 10);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.setxattr(a, b"user.k", &[1; 100], 0).unwrap();
        },
    );
    total += crash_steps(
        "replace and remove xattrs",
        |fs| {
            let a = file(fs, ROOT, "a", 10);
            fs.setxattr(a, b"user.k", &[1; 100], 0).unwrap();
            fs.setxattr(a, b"user.j", &[2; 10], 0).unwrap();
        },
        vec![
            Box::new(|fs| fs.setxattr(lookup(fs, ROOT, "a"), b"user.k", &[3; 1000], XATTR_REPLACE).unwrap()),
            Box::new(|fs| fs.removexattr(lookup(fs, ROOT, "a"), b"user.k").unwrap()),
            Box::new(|fs| fs.removexattr(lookup(fs, ROOT, "a"), b"user.j").unwrap()),
        ],
    );
    total += crash_steps(
        "xattrs grow to a run of several blocks and shrink back to one",
        |fs| {
            let a = file(fs, ROOT, "a", 10);
            fs.setxattr(a, b"user.k", &[1; 3000], 0).unwrap();
        },
        vec![
            Box::new(|fs| fs.setxattr(lookup(fs, ROOT, "a"), b"user.j", &[2; 9000], 0).unwrap()),
            Box::new(|fs| fs.setxattr(lookup(fs, ROOT, "a"), b"user.i", &[3; 20], 0).unwrap()),
            Box::new(|fs| fs.removexattr(lookup(fs, ROOT, "a"), b"user.j").unwrap()),
            Box::new(|fs| fs.removexattr(lookup(fs, ROOT, "a"), b"user.k").unwrap()),
        ],
    );
    total += crash_steps(
        "directory grows blocks and an extent-chain block",
        |fs| {
            // 40-byte names take 2 slots: 64 entries per directory block. A padding file after
            // each directory block keeps the directory's blocks apart, so each is its own extent and
            // the 9th needs an extent-chain block.
            let target = file(fs, ROOT, "t", 0);
            let d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
            for k in 0..8 {
                for i in 0..64 {
                    fs.link(target, d.ino, format!("{:040}", k * 64 + i).as_bytes()).unwrap();
                }
                file(fs, ROOT, &format!("pad{k}"), 4096);
            }
            for i in 512..575 {
                fs.link(target, d.ino, format!("{i:040}").as_bytes()).unwrap();
            }
        },
        (575..580)
            .map(|i| -> Step {
                Box::new(move |fs| {
                    let (d, t) = (lookup(fs, ROOT, "d"), lookup(fs, ROOT, "t"));
                    fs.link(t, d, format!("{i:040}").as_bytes()).unwrap();
                })
            })
            .collect(),
    );
    eprintln!("metadata ops: {total} crash images");
}

fn fences(fs: &Fs<CrashSim>) -> u64 {
    fs.pmem().stats().fences
}

/// The journal's checkpoints (format 2: a log): explicit, before an in-place store to an inode
/// the log holds (an append inside the preallocation after the commit that made it), and when a
/// commit finds the log full. Every image of every step mounts and shows before or after.
#[test]
fn test_crash_at_checkpoints() {
    let mut total = crash_steps(
        "explicit checkpoint, and one before an in-place size store",
        |fs| {
            // The snapshots between steps read everything: no atime stores (they would
            // checkpoint).
            fs.set_atime_policy(AtimePolicy::NoAtime);
            file(fs, ROOT, "a", 10);
        },
        vec![
            Box::new(|fs| {
                fs.checkpoint().unwrap();
            }),
            Box::new(|fs| {
                fs.create(ROOT, b"c", 0o644, 0, 0).unwrap();
            }),
            Box::new(|fs| {
                fs.write_bytes(lookup(fs, ROOT, "c"), 0, &[7; 100], true).unwrap();
            }),
            Box::new(|fs| {
                let c = lookup(fs, ROOT, "c");
                let f0 = fences(fs);
                fs.write_bytes(c, 100, &[8; 100], true).unwrap();
                // data fence, checkpoint (2), size store fence
                assert!(fences(fs) - f0 >= 3, "no checkpoint before the in-place store: {} fences", fences(fs) - f0);
            }),
        ],
    );
    // A log-full checkpoint inside a commit: find the period of checkpoints under create/unlink
    // churn (a commit is one fence, one that checkpoints first three), stop two ops short of the
    // next, then check the creates that cross it.
    let setup = |fs: &Fs<CrashSim>| {
        fs.set_atime_policy(AtimePolicy::NoAtime);
        let mut marks = Vec::new();
        let mut i = 0u64;
        while marks.len() < 2 {
            let f0 = fences(fs);
            if i.is_multiple_of(2) {
                fs.create(ROOT, b"churn", 0o644, 0, 0).unwrap();
            } else {
                fs.unlink(ROOT, b"churn").unwrap();
            }
            if fences(fs) - f0 >= 3 {
                marks.push(i);
            }
            i += 1;
        }
        let period = marks[1] - marks[0];
        for j in 0..period.saturating_sub(3) {
            if (i + j).is_multiple_of(2) {
                fs.create(ROOT, b"churn", 0o644, 0, 0).unwrap();
            } else {
                fs.unlink(ROOT, b"churn").unwrap();
            }
        }
    };
    let steps: Vec<Step> = (0..6)
        .map(|k| -> Step {
            Box::new(move |fs| {
                fs.create(ROOT, format!("x{k}").as_bytes(), 0o644, 0, 0).unwrap();
            })
        })
        .collect();
    let fs_probe = Fs::mkfs(CrashSim::new(DEV), &MkfsOptions::default()).unwrap();
    setup(&fs_probe);
    let f0 = fences(&fs_probe);
    for k in 0..6 {
        fs_probe.create(ROOT, format!("x{k}").as_bytes(), 0o644, 0, 0).unwrap();
    }
    assert!(fences(&fs_probe) - f0 >= 8, "the steps cross no log-full checkpoint");
    total += crash_steps("creates across a log-full checkpoint", setup, steps);
    eprintln!("checkpoints: {total} crash images");
}

/// Multi-step operations are checked step by step: each step is one "operation".
#[test]
fn test_crash_each_data_op() {
    let mut total = 0;
    total += crash_case(
        "append into a new block",
        |fs| {
            file(fs, ROOT, "a", 100);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.write_bytes(a, 100, &[9; 5000], true).unwrap();
        },
    );
    total += crash_case(
        "append within preallocated blocks",
        |fs| {
            file(fs, ROOT, "a", 4096);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.write_bytes(a, 4096, &[9; 4096], true).unwrap();
        },
    );
    total += crash_case(
        "overwrite in place",
        |fs| {
            file(fs, ROOT, "a", 12_000);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.write_bytes(a, 1000, &[0xEE; 8000], true).unwrap();
        },
    );
    total += crash_case(
        "write into a hole past EOF",
        |fs| {
            let a = file(fs, ROOT, "a", 6000);
            fs.setattr(a, &SetAttr { size: Some(100), ..Default::default() }).unwrap();
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.write_bytes(a, 30_000, b"tail", true).unwrap();
        },
    );
    total += crash_case(
        "fallocate",
        |fs| {
            file(fs, ROOT, "a", 100);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.fallocate(a, 0, 0, 50_000).unwrap();
        },
    );
    total += crash_case(
        "fallocate keep size",
        |fs| {
            file(fs, ROOT, "a", 100);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.fallocate(a, FALLOC_FL_KEEP_SIZE, 8192, 50_000).unwrap();
        },
    );
    total += crash_case(
        "punch hole",
        |fs| {
            file(fs, ROOT, "a", 40_000);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            fs.fallocate(a, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3000, 20_000).unwrap();
        },
    );
    total += crash_case(
        "copy_file_range extending another file",
        |fs| {
            file(fs, ROOT, "a", 20_000);
            file(fs, ROOT, "b", 100);
        },
        |fs| {
            let (a, b) = (lookup(fs, ROOT, "a"), lookup(fs, ROOT, "b"));
            assert_eq!(fs.copy_range(a, 1000, b, 100, 9000, true).unwrap(), 9000);
        },
    );
    total += crash_case(
        "map for write + map_done",
        |fs| {
            file(fs, ROOT, "a", 1000);
        },
        |fs| {
            let a = lookup(fs, ROOT, "a");
            let ext = fs.map(a, 1000, 9000, true).unwrap();
            for e in ext {
                let d = e.dev_off.unwrap();
                zus_pmem::Persist::nt_store(fs.pmem(), d, &vec![4u8; e.len as usize]).unwrap();
            }
            fs.map_done(a, 10_000).unwrap();
        },
    );
    eprintln!("data ops: {total} crash images");
}

/// fsync'ed data survives any crash during later operations on other files.
#[test]
fn test_crash_never_loses_fsynced_data() {
    let mut steps: Vec<Step> = Vec::new();
    for i in 0..4 {
        steps.push(Box::new(move |fs| {
            fs.create(ROOT, format!("t{i}").as_bytes(), 0o644, 0, 0).unwrap();
        }));
        steps.push(Box::new(move |fs| {
            fs.write_bytes(lookup(fs, ROOT, &format!("t{i}")), 0, &[i as u8; 6000], false).unwrap();
        }));
        steps.push(Box::new(move |fs| fs.unlink(ROOT, format!("t{i}").as_bytes()).unwrap()));
    }
    // every image of every step must still hold the fsync'ed bytes: they are in before and after
    let n = crash_steps(
        "fsync then unrelated churn",
        |fs| {
            let a = file(fs, ROOT, "keep", 0);
            fs.write_bytes(a, 0, &[0x5A; 10_000], false).unwrap();
            fs.fsync(a, false).unwrap();
        },
        steps,
    );
    eprintln!("fsync: {n} crash images");
}

/// Random sequences of operations; a crash anywhere shows the tree after some prefix of them.
#[test]
fn test_crash_random_sequences() {
    let mut total = 0u64;
    for seed in 0..12u64 {
        total += random_sequence(seed, 40);
    }
    eprintln!("random sequences: {total} crash images; all tests so far: {}", IMAGES.load(Ordering::Relaxed));
}

fn random_sequence(seed: u64, nops: usize) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = Fs::mkfs(CrashSim::new(DEV), &MkfsOptions::default()).unwrap();
    let mut trees = vec![snapshot(&fs).unwrap()];
    let mut total = 0;
    for step in 0..nops {
        let t = trees.last().unwrap().clone();
        let dirs: Vec<(Vec<u8>, u64)> = std::iter::once((Vec::new(), ROOT))
            .chain(t.iter().filter(|(_, n)| n.mode & 0o170000 == 0o040000).map(|(p, n)| (p.clone(), n.ino)))
            .collect();
        let files: Vec<(Vec<u8>, u64)> =
            t.iter().filter(|(_, n)| n.mode & 0o170000 == 0o100000).map(|(p, n)| (p.clone(), n.ino)).collect();
        let (dpath, dir) = dirs[rng.random_range(0..dirs.len())].clone();
        let name = format!("n{}", rng.random_range(0..6)).into_bytes();
        let parent_of = |p: &[u8]| -> (u64, Vec<u8>) {
            let cut = p.iter().rposition(|&c| c == b'/').unwrap_or(0);
            let dp = &p[..cut];
            let d = if dp.is_empty() { ROOT } else { t[dp].ino };
            (d, p[cut + 1..].to_vec())
        };
        let _ = dpath;
        fs.pmem().set_capture(true);
        let r: Result<()> = match rng.random_range(0..12) {
            0 | 1 => fs.create(dir, &name, 0o644, 0, 0).map(|_| ()),
            2 => fs.mkdir(dir, &name, 0o755, 0, 0).map(|_| ()),
            3 if !files.is_empty() => {
                let (_, ino) = &files[rng.random_range(0..files.len())];
                let off = rng.random_range(0..20_000u64);
                let len = rng.random_range(1..9000usize);
                let b = rng.random::<u8>();
                // sync: an unsynced write may legitimately vanish at a later crash
                fs.write_bytes(*ino, off, &vec![b; len], true).map(|_| ())
            }
            4 if !files.is_empty() => {
                let (p, _) = &files[rng.random_range(0..files.len())];
                let (d, n) = parent_of(p);
                fs.unlink(d, &n)
            }
            5 => fs.rmdir(dir, &name),
            6 if !t.is_empty() => {
                let keys: Vec<&Vec<u8>> = t.keys().collect();
                let p = keys[rng.random_range(0..keys.len())];
                let (d, n) = parent_of(p);
                let flags = [0, RENAME_NOREPLACE, RENAME_EXCHANGE][rng.random_range(0..3)];
                fs.rename(d, &n, dir, &name, flags)
            }
            7 if !files.is_empty() => {
                let (_, ino) = &files[rng.random_range(0..files.len())];
                fs.link(*ino, dir, &name).map(|_| ())
            }
            8 if !files.is_empty() => {
                let (_, ino) = &files[rng.random_range(0..files.len())];
                let size = rng.random_range(0..30_000u64);
                fs.setattr(*ino, &SetAttr { size: Some(size), ..Default::default() }).map(|_| ())
            }
            9 => fs.symlink(dir, &name, &vec![b'l'; rng.random_range(1..300)], 0, 0).map(|_| ()),
            10 if !files.is_empty() => {
                let (_, ino) = &files[rng.random_range(0..files.len())];
                fs.setxattr(*ino, b"user.x", &vec![1; rng.random_range(0..500)], 0)
            }
            _ if !files.is_empty() => {
                let (_, ino) = &files[rng.random_range(0..files.len())];
                let off = rng.random_range(0..40_000u64);
                fs.fallocate(
                    *ino,
                    [0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE][rng.random_range(0..3)],
                    off,
                    rng.random_range(1..20_000),
                )
            }
            _ => Ok(()),
        };
        fs.pmem().set_capture(false);
        // Errors are legitimate (ENOENT, EEXIST, ENOSPC...), but must leave the tree unchanged.
        let after = snapshot(&fs).unwrap();
        if r.is_err() {
            assert_eq!(&after, trees.last().unwrap(), "seed {seed} step {step}: failed op changed the tree: {r:?}");
        }
        let mut points = fs.pmem().take_points();
        points.push(fs.pmem().crash_point_now());
        total += check_points(
            &points,
            trees.last().unwrap(),
            &after,
            &format!("seed {seed} step {step}"),
            seed * 1000 + step as u64,
        );
        trees.push(after);
    }
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
    total
}

/// What one thread of `test_crash_concurrent_metadata_ops_from_two_threads` owns in a tree:
/// its directory and everything below, and its names in the shared directory (inode numbers
/// left out: they depend on the interleaving).
type View = Vec<(Vec<u8>, u32, u32, u64, Vec<u8>)>;

fn view(t: &Tree, k: usize) -> View {
    let own = format!("/t{k}");
    let mine = format!("/shared/k{k}-");
    t.iter()
        .filter(|(p, _)| {
            p.as_slice() == own.as_bytes()
                || p.starts_with(format!("{own}/").as_bytes())
                || p.starts_with(mine.as_bytes())
        })
        .map(|(p, n)| (p.clone(), n.mode, n.nlink, n.size, n.data.clone()))
        .collect()
}

/// Thread `k`'s `j`-th operation.
fn thread_op(fs: &Fs<CrashSim>, k: usize, j: usize) {
    let t = lookup(fs, ROOT, &format!("t{k}"));
    let shared = lookup(fs, ROOT, "shared");
    match j % 10 {
        0 => {
            fs.create(t, format!("f{j}").as_bytes(), 0o644, 0, 0).unwrap();
        }
        // Within one directory, files only: the shared-lock rename.
        1 => fs.rename(t, format!("f{}", j - 1).as_bytes(), t, format!("h{j}").as_bytes(), 0).unwrap(),
        2 => {
            fs.create(shared, format!("k{k}-{j}").as_bytes(), 0o600, 0, 0).unwrap();
        }
        3 => {
            let a = lookup(fs, shared, &format!("k{k}-{}", j - 1));
            fs.write_bytes(a, 0, &[j as u8; 700], true).unwrap();
        }
        // In the shared directory, while the other thread changes it too.
        4 => {
            fs.rename(shared, format!("k{k}-{}", j - 2).as_bytes(), shared, format!("k{k}-r{j}").as_bytes(), 0).unwrap()
        }
        5 => {
            fs.mkdir(t, format!("d{j}").as_bytes(), 0o755, 0, 0).unwrap();
        }
        6 => {
            let d = lookup(fs, t, &format!("d{}", j - 1));
            fs.rename(t, format!("h{}", j - 5).as_bytes(), d, format!("g{j}").as_bytes(), 0).unwrap();
        }
        7 => fs.unlink(shared, format!("k{k}-r{}", j - 3).as_bytes()).unwrap(),
        8 => {
            let d = lookup(fs, t, &format!("d{}", j - 3));
            fs.unlink(d, format!("g{}", j - 2).as_bytes()).unwrap();
        }
        _ => fs.rmdir(t, format!("d{}", j - 4).as_bytes()).unwrap(),
    }
}

fn two_thread_setup(fs: &Fs<CrashSim>) {
    for d in ["shared", "t0", "t1"] {
        fs.mkdir(ROOT, d.as_bytes(), 0o755, 0, 0).unwrap();
    }
    fs.sync().unwrap();
}

/// Two threads run metadata operations at the same time (each in its own directory and in a
/// shared one, their commits interleaved), with a crash point at every fence of either. Every
/// image mounts, passes fsck, and shows for each thread the state after some number of its
/// operations: each operation all or nothing, whatever the other thread was doing.
#[test]
fn test_crash_concurrent_metadata_ops_from_two_threads() {
    const OPS: usize = 30;
    // Each thread's views after 0..=OPS of its operations, from a run of that thread alone.
    let expected: Vec<Vec<View>> = (0..2)
        .map(|k| {
            let fs = Fs::mkfs(CrashSim::new(DEV), &MkfsOptions::default()).unwrap();
            two_thread_setup(&fs);
            let mut v = vec![view(&snapshot(&fs).unwrap(), k)];
            for j in 0..OPS {
                thread_op(&fs, k, j);
                v.push(view(&snapshot(&fs).unwrap(), k));
            }
            v
        })
        .collect();
    let mut total = 0;
    let mut seen = [std::collections::BTreeSet::new(), std::collections::BTreeSet::new()];
    for round in 0..3u64 {
        let fs = Fs::mkfs(CrashSim::new(DEV), &MkfsOptions::default()).unwrap();
        two_thread_setup(&fs);
        fs.pmem().set_capture(true);
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for k in 0..2 {
                let (fs, barrier) = (&fs, &barrier);
                s.spawn(move || {
                    for j in 0..OPS {
                        // Start each op together (and, from round 1, one thread a little
                        // behind), so the commits of the two threads interleave.
                        barrier.wait();
                        if k == 1 && round > 0 {
                            std::thread::yield_now();
                        }
                        thread_op(fs, k, j);
                    }
                });
            }
        });
        fs.pmem().set_capture(false);
        let fin = snapshot(&fs).unwrap();
        for (k, e) in expected.iter().enumerate() {
            assert_eq!(view(&fin, k), e[OPS], "thread {k}: final state");
        }
        let mut points = fs.pmem().take_points();
        points.push(fs.pmem().crash_point_now());
        for (pi, p) in points.iter().enumerate() {
            for img in p.images(&budget(), 1000 * round + pi as u64) {
                total += 1;
                let fs = Fs::mount(CrashSim::from_image(img))
                    .unwrap_or_else(|e| panic!("round {round} point {pi}: crash image does not mount: {e}"));
                let r = fs.check().unwrap();
                assert!(r.is_clean(), "round {round} point {pi}: fsck after recovery:\n{r}");
                let t = snapshot(&fs).unwrap();
                for k in 0..2 {
                    let v = view(&t, k);
                    let Some(i) = expected[k].iter().position(|e| *e == v) else {
                        panic!(
                            "round {round} point {pi}: thread {k} shows no state after a whole number of ops: {v:?}"
                        );
                    };
                    seen[k].insert(i);
                }
            }
        }
    }
    IMAGES.fetch_add(total, Ordering::Relaxed);
    eprintln!("two threads: {total} crash images checked; states seen per thread: {seen:?}");
    // Every state of each thread (after 0..=OPS ops; some repeat: an op undoes an earlier one)
    // shows up in some image.
    for k in 0..2 {
        let states: std::collections::BTreeSet<usize> =
            expected[k].iter().map(|v| expected[k].iter().position(|e| e == v).unwrap_or(0)).collect();
        assert_eq!(seen[k], states, "thread {k}");
    }
    assert!(total > 100);
}
