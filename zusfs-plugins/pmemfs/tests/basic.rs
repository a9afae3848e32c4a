//! Functional tests of the filesystem API.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use pmemfs::*;
use zus_pmem::{CrashSim, MappedPmem, Persist};

const ROOT: u64 = 1;

fn sim(mb: usize) -> Fs<CrashSim> {
    Fs::mkfs(CrashSim::new(mb << 20), &MkfsOptions::default()).unwrap()
}

fn assert_clean<P: Persist>(fs: &Fs<P>) {
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn test_create_write_read_remount() {
    let fs = sim(4);
    let a = fs.create(ROOT, b"hello", 0o644, 1, 2).unwrap();
    assert_eq!(fs.write_bytes(a.ino, 0, b"hello world", false).unwrap(), 11);
    assert_eq!(fs.read_vec(a.ino, 0, 100).unwrap(), b"hello world");
    assert_eq!(fs.read_vec(a.ino, 6, 3).unwrap(), b"wor");
    assert_clean(&fs);
    let pm = fs.into_pmem();
    let fs = Fs::mount(pm).unwrap();
    let b = fs.lookup(ROOT, b"hello").unwrap();
    assert_eq!(b.ino, a.ino);
    assert_eq!(b.size, 11);
    assert_eq!((b.uid, b.gid), (1, 2));
    assert_eq!(fs.read_vec(a.ino, 0, 100).unwrap(), b"hello world");
    assert_clean(&fs);
}

#[test]
fn test_sparse_and_truncate() {
    let fs = sim(4);
    let a = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.write_bytes(a.ino, 100_000, b"xyz", false).unwrap();
    let at = fs.getattr(a.ino).unwrap();
    assert_eq!(at.size, 100_003);
    assert!(at.blocks <= 16 * 8 + 8, "sparse file allocated {} sectors", at.blocks);
    let v = fs.read_vec(a.ino, 0, 200_000).unwrap();
    assert_eq!(v.len(), 100_003);
    assert!(v[..100_000].iter().all(|&b| b == 0));
    assert_eq!(&v[100_000..], b"xyz");
    fs.setattr(a.ino, &SetAttr { size: Some(5), ..Default::default() }).unwrap();
    assert_eq!(fs.read_vec(a.ino, 0, 100).unwrap(), vec![0; 5]);
    fs.write_bytes(a.ino, 0, b"abcdefgh", false).unwrap();
    fs.setattr(a.ino, &SetAttr { size: Some(3), ..Default::default() }).unwrap();
    fs.setattr(a.ino, &SetAttr { size: Some(8000), ..Default::default() }).unwrap();
    let v = fs.read_vec(a.ino, 0, 9000).unwrap();
    assert_eq!(&v[..3], b"abc");
    assert!(v[3..].iter().all(|&b| b == 0), "truncate up must read zeros");
    assert_clean(&fs);
}

#[test]
fn test_append_beyond_prealloc_then_shrink_grow_zeroes() {
    let fs = sim(8);
    let a = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let blk = vec![0xAAu8; 4096];
    for i in 0..40u64 {
        fs.write_bytes(a.ino, i * 4096, &blk, false).unwrap();
    }
    assert_clean(&fs);
    fs.setattr(a.ino, &SetAttr { size: Some(4096 * 3 + 10), ..Default::default() }).unwrap();
    fs.write_bytes(a.ino, 4096 * 10, b"z", false).unwrap();
    let v = fs.read_vec(a.ino, 0, 4096 * 11).unwrap();
    assert!(v[..4096 * 3 + 10].iter().all(|&b| b == 0xAA));
    assert!(v[4096 * 3 + 10..4096 * 10].iter().all(|&b| b == 0));
    assert_eq!(v[4096 * 10], b'z');
    assert_clean(&fs);
}

#[test]
fn test_dirs_links_symlinks_rename() {
    let fs = sim(4);
    let d1 = fs.mkdir(ROOT, b"d1", 0o755, 0, 0).unwrap();
    let d2 = fs.mkdir(ROOT, b"d2", 0o755, 0, 0).unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 4);
    let f = fs.create(d1.ino, b"f", 0o600, 0, 0).unwrap();
    fs.link(f.ino, d2.ino, b"g").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    let long = vec![b'x'; 300];
    let s1 = fs.symlink(ROOT, b"s1", b"d1/f", 0, 0).unwrap();
    let s2 = fs.symlink(ROOT, b"s2", &long, 0, 0).unwrap();
    assert_eq!(fs.readlink(s1.ino).unwrap(), b"d1/f");
    assert_eq!(fs.readlink(s2.ino).unwrap(), long);
    assert!(matches!(fs.rmdir(ROOT, b"d1"), Err(FsError::NotEmpty)));
    // renaming onto another link of the same inode does nothing
    fs.rename(d1.ino, b"f", d2.ino, b"g", 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    let h = fs.create(d2.ino, b"h", 0o600, 0, 0).unwrap();
    fs.rename(d2.ino, b"h", d1.ino, b"f", 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 1);
    assert_eq!(fs.lookup(d1.ino, b"f").unwrap().ino, h.ino);
    assert!(matches!(fs.lookup(d2.ino, b"h"), Err(FsError::NotFound)));
    fs.unlink(d1.ino, b"f").unwrap();
    assert!(fs.getattr(h.ino).is_err());
    // exchange a dir and a file across directories
    let sub = fs.mkdir(d1.ino, b"sub", 0o755, 0, 0).unwrap();
    fs.rename(d1.ino, b"sub", d2.ino, b"g", RENAME_EXCHANGE).unwrap();
    assert_eq!(fs.lookup(d2.ino, b"g").unwrap().ino, sub.ino);
    assert_eq!(fs.lookup(d1.ino, b"sub").unwrap().ino, f.ino);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, d2.ino);
    assert_eq!(fs.getattr(d2.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(d1.ino).unwrap().nlink, 2);
    assert!(matches!(fs.rename(ROOT, b"d2", d2.ino, b"x", 0), Err(FsError::Invalid(_))));
    assert!(matches!(fs.rename(ROOT, b"s1", ROOT, b"s2", RENAME_NOREPLACE), Err(FsError::Exists)));
    assert_clean(&fs);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.readlink(s2.ino).unwrap(), long);
    assert_clean(&fs);
}

#[test]
fn test_unlink_open_file_is_orphan_until_release_or_mount() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.write_bytes(f.ino, 0, &[1u8; 20000], false).unwrap();
    let before = fs.statfs().bfree;
    fs.open(f.ino).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    assert_eq!(fs.read_vec(f.ino, 0, 3).unwrap(), vec![1, 1, 1]);
    assert_clean(&fs);
    fs.release(f.ino).unwrap();
    assert!(fs.getattr(f.ino).is_err());
    assert!(fs.statfs().bfree > before);
    // and at next mount
    let g = fs.create(ROOT, b"g", 0o644, 0, 0).unwrap();
    fs.write_bytes(g.ino, 0, &[1u8; 20000], false).unwrap();
    fs.open(g.ino).unwrap();
    fs.unlink(ROOT, b"g").unwrap();
    let free_open = fs.statfs().bfree;
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert!(fs.getattr(g.ino).is_err());
    assert!(fs.statfs().bfree > free_open);
    assert_clean(&fs);
}

#[test]
fn test_xattrs() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.setxattr(f.ino, b"user.a", b"1", 0).unwrap();
    fs.setxattr(f.ino, b"user.b", &[7; 300], XATTR_CREATE).unwrap();
    assert!(matches!(fs.setxattr(f.ino, b"user.a", b"2", XATTR_CREATE), Err(FsError::Exists)));
    assert!(matches!(fs.setxattr(f.ino, b"user.c", b"2", XATTR_REPLACE), Err(FsError::NoAttr)));
    // Past the largest run (32 blocks) or the largest value (64 KiB - 1).
    assert!(matches!(fs.setxattr(f.ino, b"user.big", &[0; 70_000], 0), Err(FsError::NoSpace)));
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.getxattr(f.ino, b"user.a").unwrap(), b"1");
    assert_eq!(fs.listxattr(f.ino).unwrap().len(), 2);
    fs.removexattr(f.ino, b"user.a").unwrap();
    fs.removexattr(f.ino, b"user.b").unwrap();
    assert!(matches!(fs.getxattr(f.ino, b"user.a"), Err(FsError::NoAttr)));
    assert_clean(&fs);
}

#[test]
fn test_a_thousand_xattrs_and_large_values_span_several_blocks() {
    let fs = sim(8);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let free0 = fs.statfs().bfree;
    for i in 0..1000u32 {
        fs.setxattr(f.ino, format!("user.attr{i:04}").as_bytes(), format!("value{i}").as_bytes(), 0).unwrap();
    }
    fs.setxattr(f.ino, b"user.big", &[9; 65_535], 0).unwrap();
    assert_clean(&fs);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.listxattr(f.ino).unwrap().len(), 1001);
    assert_eq!(fs.getxattr(f.ino, b"user.attr0999").unwrap(), b"value999");
    assert_eq!(fs.getxattr(f.ino, b"user.big").unwrap(), vec![9; 65_535]);
    assert_clean(&fs);
    fs.removexattr(f.ino, b"user.big").unwrap();
    for i in 0..1000u32 {
        fs.removexattr(f.ino, format!("user.attr{i:04}").as_bytes()).unwrap();
    }
    assert!(fs.listxattr(f.ino).unwrap().is_empty());
    assert_eq!(fs.statfs().bfree, free0, "xattr runs leaked blocks");
    fs.setxattr(f.ino, b"user.x", &[1; 10_000], 0).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    // + 1: the root directory, emptied, gives its block back too.
    assert_eq!(fs.statfs().bfree, free0 + 1, "the unlinked inode's xattr run leaked");
    assert_clean(&fs);
}

#[test]
fn test_atime_policies() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.write_bytes(f.ino, 0, b"data", false).unwrap();
    let old = now_ns() - 3 * 86_400 * 1_000_000_000;
    let set = |a: i64, m: i64| {
        fs.setattr(
            f.ino,
            &SetAttr { atime: Some(TimeSpec::Ns(a)), mtime: Some(TimeSpec::Ns(m)), ..Default::default() },
        )
        .unwrap();
    };
    let atime = || fs.getattr(f.ino).unwrap().atime;
    // relatime (the default): atime not after mtime/ctime, or a day old, is updated; a recent
    // atime after both is kept.
    set(old, old + 10);
    fs.read_vec(f.ino, 0, 4).unwrap();
    let a1 = atime();
    assert!(a1 > old + 10);
    fs.read_vec(f.ino, 0, 4).unwrap();
    assert_eq!(atime(), a1, "relatime updated a recent atime");
    fs.readdir(ROOT, 0, 10).unwrap();
    fs.set_atime_policy(AtimePolicy::Strict);
    fs.read_vec(f.ino, 0, 4).unwrap();
    assert!(atime() > a1, "strictatime kept atime");
    fs.set_atime_policy(AtimePolicy::NoAtime);
    set(old, old + 10);
    fs.read_vec(f.ino, 0, 4).unwrap();
    assert_eq!(atime(), old, "noatime updated atime");
    assert_clean(&fs);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().atime, old);
    assert!(fs.getattr(ROOT).unwrap().atime > old, "readdir did not update the directory's atime");
}

/// A setattr with a ctime (the kernel module's DAX-read atime update) keeps a later ctime and
/// takes a later one; without one it stamps ctime now.
#[test]
fn test_setattr_ctime_never_goes_back() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let c0 = fs.getattr(f.ino).unwrap().ctime;
    let a = fs.setattr(f.ino, &SetAttr { atime: Some(TimeSpec::Now), ctime: Some(c0 - 1000), ..Default::default() });
    let a = a.unwrap();
    assert_eq!(a.ctime, c0, "an older ctime moved it");
    assert!(a.atime >= c0);
    let later = c0 + 5_000_000_000;
    let a = fs.setattr(f.ino, &SetAttr { ctime: Some(later), ..Default::default() }).unwrap();
    assert_eq!(a.ctime, later);
    let a = fs.setattr(f.ino, &SetAttr { atime: Some(TimeSpec::Now), ..Default::default() }).unwrap();
    assert!(a.ctime < later && a.ctime > c0, "without a ctime, setattr stamps now");
    assert_clean(&fs);
}

#[test]
fn test_enospc_is_clean_and_space_is_reused() {
    let fs = sim(2);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let buf = vec![3u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        match fs.write_bytes(f.ino, off, &buf, false) {
            Ok(n) if n > 0 => off += n as u64,
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.errno(), libc_enospc());
                break;
            }
        }
    }
    assert!(off > 1_000_000, "wrote only {off}");
    assert_clean(&fs);
    fs.unlink(ROOT, b"f").unwrap();
    let h = fs.create(ROOT, b"h", 0o644, 0, 0).unwrap();
    assert_eq!(fs.write_bytes(h.ino, 0, &buf, false).unwrap(), buf.len());
    assert_clean(&fs);
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn test_fallocate_and_punch() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.fallocate(f.ino, 0, 0, 40000).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 40000);
    assert!(fs.read_vec(f.ino, 0, 40000).unwrap().iter().all(|&b| b == 0));
    fs.write_bytes(f.ino, 0, &[9u8; 40000], false).unwrap();
    fs.fallocate(f.ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5000, 20000).unwrap();
    let v = fs.read_vec(f.ino, 0, 40000).unwrap();
    assert!(v[..5000].iter().all(|&b| b == 9));
    assert!(v[5000..25000].iter().all(|&b| b == 0));
    assert!(v[25000..].iter().all(|&b| b == 9));
    fs.fallocate(f.ino, FALLOC_FL_KEEP_SIZE, 100_000, 8192).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 40000);
    assert_clean(&fs);
}

#[test]
fn test_map_write_then_done() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let ext = fs.map(f.ino, 1000, 10000, true).unwrap();
    let total: u64 = ext.iter().map(|e| e.len).sum();
    assert_eq!(total, 10000);
    for e in &ext {
        let d = e.dev_off.unwrap();
        fs.pmem().store(d, &vec![5u8; usize::try_from(e.len).unwrap()]).unwrap();
        fs.pmem().flush(d, e.len).unwrap();
    }
    fs.map_done(f.ino, 11000).unwrap();
    let v = fs.read_vec(f.ino, 0, 20000).unwrap();
    assert_eq!(v.len(), 11000);
    assert!(v[..1000].iter().all(|&b| b == 0));
    assert!(v[1000..].iter().all(|&b| b == 5));
    assert!(fs.map_done(f.ino, 1 << 30).is_err());
    let r = fs.map(f.ino, 0, 1 << 20, false).unwrap();
    assert_eq!(r.iter().map(|e| e.len).sum::<u64>(), 11000);
    assert_clean(&fs);
}

#[test]
fn test_readdir_cookies_and_big_directory() {
    let pm = MappedPmem::anonymous(64 << 20).unwrap();
    let fs = Fs::mkfs(pm, &MkfsOptions { inodes: Some(110_000), shards: None }).unwrap();
    let f = fs.create(ROOT, b"target", 0o644, 0, 0).unwrap();
    let d = fs.mkdir(ROOT, b"big", 0o755, 0, 0).unwrap();
    let n = 100_000u32;
    let t = std::time::Instant::now();
    for i in 0..n - 1000 {
        fs.create(d.ino, format!("entry-{i}").as_bytes(), 0o644, 0, 0).unwrap();
    }
    for i in n - 1000..n {
        fs.link(f.ino, d.ino, format!("entry-{i}").as_bytes()).unwrap();
    }
    let link_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    for i in (0..n).step_by(7) {
        assert!(fs.lookup(d.ino, format!("entry-{i}").as_bytes()).is_ok());
    }
    let lookups = t.elapsed();
    let mut cookie = 0;
    let mut seen = 0;
    loop {
        let v = fs.readdir(d.ino, cookie, 1000).unwrap();
        if v.is_empty() {
            break;
        }
        seen += v.len();
        cookie = v.last().unwrap().next;
    }
    assert_eq!(seen, n as usize + 2);
    eprintln!("100k creates/links: {link_rate:.0}/s; {} lookups in {lookups:?}", n / 7);
    assert!(lookups.as_secs_f64() < 1.0);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 1001);
    for i in 0..n / 2 {
        fs.unlink(d.ino, format!("entry-{i}").as_bytes()).unwrap();
    }
    assert_clean(&fs);
}

#[test]
fn test_directory_emptied_of_100k_entries_gives_its_blocks_back() {
    let pm = MappedPmem::anonymous(64 << 20).unwrap();
    let fs = Fs::mkfs(pm, &MkfsOptions { inodes: Some(110_000), shards: None }).unwrap();
    let d = fs.mkdir(ROOT, b"big", 0o755, 0, 0).unwrap().ino;
    let empty = fs.statfs().bfree;
    let n = 100_000u32;
    for i in 0..n {
        fs.create(d, format!("entry-{i}").as_bytes(), 0o644, 0, 0).unwrap();
    }
    let a = fs.getattr(d).unwrap();
    assert!(a.size >= 700 * 4096, "{a:?}");
    assert!(fs.statfs().bfree + 700 <= empty);
    // Every other entry first (no block empties), then the rest.
    for i in (0..n).step_by(2).chain((1..n).step_by(2)) {
        fs.unlink(d, format!("entry-{i}").as_bytes()).unwrap();
    }
    let a = fs.getattr(d).unwrap();
    assert_eq!((a.size, a.blocks), (0, 0));
    assert_eq!(fs.statfs().bfree, empty);
    assert_clean(&fs);
    // Partly emptied: 1000 entries (8 blocks), the last 900 removed: one block left.
    for i in 0..1000 {
        fs.create(d, format!("entry-{i}").as_bytes(), 0o644, 0, 0).unwrap();
    }
    assert_eq!(fs.getattr(d).unwrap().size, 8 * 4096);
    for i in 100..1000 {
        fs.unlink(d, format!("entry-{i}").as_bytes()).unwrap();
    }
    assert_eq!(fs.getattr(d).unwrap().size, 4096);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.readdir(d, 0, 1000).unwrap().len(), 102);
    assert_clean(&fs);
}

#[test]
fn test_large_file_truncate_and_unlink_stay_within_journal() {
    // 600 MiB sequential file: extents are capped, frees are batched per transaction.
    let pm = MappedPmem::anonymous(700 << 20).unwrap();
    let fs = Fs::mkfs(pm, &MkfsOptions { inodes: Some(256), shards: Some(2) }).unwrap();
    let f = fs.create(ROOT, b"big", 0o644, 0, 0).unwrap();
    let free0 = fs.statfs().bfree;
    fs.fallocate(f.ino, 0, 0, 600 << 20).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 600 << 20);
    fs.write_bytes(f.ino, (600 << 20) - 3, b"end", false).unwrap();
    fs.setattr(f.ino, &SetAttr { size: Some(100 << 20), ..Default::default() }).unwrap();
    assert_clean(&fs);
    fs.unlink(ROOT, b"big").unwrap();
    assert_clean(&fs);
    // + 1: the root directory, emptied, gives its block back too.
    assert_eq!(fs.statfs().bfree, free0 + 1);
}

/// A client buffer whose pages fault after `ok` bytes (like a bad user pointer).
struct Faulty {
    len: usize,
    ok: usize,
}

// SAFETY: copies only within [dst, dst+len) and only when the range is below `ok`.
unsafe impl zus_pmem::DataSource for Faulty {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn copy_to(&self, src_off: usize, dst: *mut u8, len: usize) -> std::result::Result<(), i32> {
        if src_off + len > self.ok {
            return Err(14);
        }
        // SAFETY: dst is valid for len writes (caller contract).
        unsafe { std::ptr::write_bytes(dst, 0xCD, len) };
        Ok(())
    }
}

#[test]
fn test_client_fault_mid_write_leaves_fs_consistent() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    fs.write_bytes(f.ino, 0, &[1; 100], false).unwrap();
    let free = fs.statfs().bfree;
    let e = fs.write(f.ino, 8192, &Faulty { len: 50_000, ok: 10_000 }, 0, 50_000, false).unwrap_err();
    assert_eq!(e.errno(), 14);
    assert_eq!(fs.getattr(f.ino).unwrap().size, 100);
    assert_eq!(fs.statfs().bfree, free);
    assert_clean(&fs);
    // the blocks it had reserved are reused by another file: the first file must not still
    // think it owns them
    let g = fs.create(ROOT, b"g", 0o644, 0, 0).unwrap();
    fs.write_bytes(g.ino, 0, &[2; 50_000], false).unwrap();
    fs.write_bytes(f.ino, 8192, &[3; 50_000], false).unwrap();
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_clean(&fs);
    assert!(fs.read_vec(g.ino, 0, 50_000).unwrap().iter().all(|&b| b == 2));
    assert!(fs.read_vec(f.ino, 8192, 50_000).unwrap().iter().all(|&b| b == 3));
}

#[test]
fn test_persistence_across_unmount_on_a_dev_shm_file() {
    let path = std::path::PathBuf::from(format!("/dev/shm/pmemfs-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (ino, dino) = {
        let pm = MappedPmem::open_file(&path, Some(32 << 20)).unwrap();
        let fs = Fs::mkfs(pm, &MkfsOptions::default()).unwrap();
        let d = fs.mkdir(ROOT, b"d", 0o700, 5, 6).unwrap();
        let f = fs.create(d.ino, b"f", 0o600, 5, 6).unwrap();
        fs.write_bytes(f.ino, 0, &data, true).unwrap();
        fs.setxattr(f.ino, b"user.a", b"b", 0).unwrap();
        fs.symlink(ROOT, b"s", b"d/f", 0, 0).unwrap();
        (f.ino, d.ino)
        // unmount: drop (munmap)
    };
    let pm = MappedPmem::open_file(&path, None).unwrap();
    let fs = Fs::mount(pm).unwrap();
    assert_eq!(fs.lookup(ROOT, b"d").unwrap().ino, dino);
    let a = fs.lookup(dino, b"f").unwrap();
    assert_eq!((a.ino, a.size, a.mode & 0o7777, a.uid, a.gid), (ino, data.len() as u64, 0o600, 5, 6));
    assert_eq!(fs.read_vec(ino, 0, data.len()).unwrap(), data);
    assert_eq!(fs.getxattr(ino, b"user.a").unwrap(), b"b");
    assert_eq!(fs.readlink(fs.lookup(ROOT, b"s").unwrap().ino).unwrap(), b"d/f");
    assert_clean(&fs);
    drop(fs);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn test_setattr_size_and_mode_together_and_too_big_changes_nothing() {
    let fs = sim(4);
    let f = fs.create(ROOT, b"f", 0o644, 0, 0).unwrap();
    let sa = SetAttr { size: Some(5000), mode: Some(0o600), mtime: Some(TimeSpec::Ns(7)), ..Default::default() };
    let a = fs.setattr(f.ino, &sa).unwrap();
    assert_eq!((a.size, a.mode & 0o7777, a.mtime), (5000, 0o600, 7));
    let bad = SetAttr { size: Some(u64::MAX), mode: Some(0o777), ..Default::default() };
    assert!(matches!(fs.setattr(f.ino, &bad), Err(FsError::TooBig)));
    assert_eq!(fs.getattr(f.ino).unwrap().mode & 0o7777, 0o600);
    assert_clean(&fs);
}

/// A 16-block file mapped as a dax client would, then the device filled up: returns the file and
/// its extents (device offset, length).
fn mapped_file_on_full_device(fs: &Fs<CrashSim>) -> (Attr, Vec<(u64, u64)>) {
    let a = fs.create(ROOT, b"a", 0o644, 0, 0).unwrap();
    fs.write_bytes(a.ino, 0, &[1u8; 16 * 4096], false).unwrap();
    let old = fs.map(a.ino, 0, 16 * 4096, false).unwrap().iter().map(|e| (e.dev_off.unwrap(), e.len)).collect();
    let filler = fs.create(ROOT, b"filler", 0o644, 0, 0).unwrap();
    let mut off = 0u64;
    while let Ok(n @ 1..) = fs.write_bytes(filler.ino, off, &[3u8; 4096], false) {
        off += n as u64;
    }
    (a, old)
}

#[test]
fn test_freed_blocks_are_not_reused_within_the_grace_period() {
    // A dax client may still be copying with extents of a file another process just truncated:
    // the blocks it freed must not go to another file at once (alloc.rs: REUSE_GRACE). On a full
    // device they are the only free blocks, so the next allocation waits for them.
    let fs = sim(4);
    let (a, old) = mapped_file_on_full_device(&fs);
    let free_full = fs.statfs().bfree;
    fs.setattr(a.ino, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(fs.statfs().bfree, free_full + 16, "quarantined blocks count as free");
    let b = fs.create(ROOT, b"b", 0o644, 0, 0).unwrap();
    assert_eq!(fs.write_bytes(b.ino, 0, &[2u8; 4096], false).unwrap(), 4096);
    let waited = t0.elapsed();
    let new = fs.map(b.ino, 0, 4096, false).unwrap();
    let d = new[0].dev_off.unwrap();
    let reused = old.iter().any(|&(o, l)| d >= o && d < o + l);
    assert!(reused, "a full device had no other block to give");
    assert!(waited >= REUSE_GRACE, "a block of the truncated file was reused after {waited:?}");
    assert_clean(&fs);
}

static PROBE_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5);
static PROBE_OLDEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

fn probe() -> Option<(u64, u64)> {
    use std::sync::atomic::Ordering::SeqCst;
    Some((PROBE_GEN.load(SeqCst), PROBE_OLDEST.load(SeqCst)))
}

#[test]
fn test_freed_blocks_wait_for_dax_copies_under_their_generation() {
    // Past the grace, blocks freed under layout generation 5 still wait while a dax copy that
    // checked its extents against generation 5 runs (zusd's reader slots, faked here), and are
    // reused as soon as it ends.
    use std::sync::atomic::Ordering::SeqCst;
    let fs = std::sync::Arc::new(sim(4));
    fs.set_dax_reader_probe(probe);
    let (a, old) = mapped_file_on_full_device(&fs);
    PROBE_OLDEST.store(5, SeqCst); // a copy under generation 5 is in progress
    fs.setattr(a.ino, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
    PROBE_GEN.store(6, SeqCst); // zusd raises the generation after the op
    let b = fs.create(ROOT, b"b", 0o644, 0, 0).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let fs2 = std::sync::Arc::clone(&fs);
    let writer = std::thread::spawn(move || {
        let r = fs2.write_bytes(b.ino, 0, &[2u8; 4096], false);
        let _ = tx.send(());
        r
    });
    assert!(
        rx.recv_timeout(REUSE_GRACE * 6).is_err(),
        "freed blocks were reused while a dax copy under their generation was running"
    );
    PROBE_OLDEST.store(u64::MAX, SeqCst); // the copy ended
    rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the write did not go on once the copy ended");
    assert_eq!(writer.join().unwrap().unwrap(), 4096);
    let d = fs.map(b.ino, 0, 4096, false).unwrap()[0].dev_off.unwrap();
    assert!(old.iter().any(|&(o, l)| d >= o && d < o + l), "a full device had no other block to give");
    assert_clean(&fs);
}

#[test]
fn test_copy_range_between_and_within_files() {
    let fs = sim(16);
    let a = fs.create(ROOT, b"a", 0o644, 0, 0).unwrap();
    let b = fs.create(ROOT, b"b", 0o644, 0, 0).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs.write_bytes(a.ino, 0, &data, false).unwrap();
    // Across files, a long copy (several chunks) at an unaligned offset.
    assert_eq!(fs.copy_range(a.ino, 10, b.ino, 4096 + 3, 2_500_000, false).unwrap(), 2_500_000);
    assert_eq!(fs.getattr(b.ino).unwrap().size, 4096 + 3 + 2_500_000);
    let v = fs.read_vec(b.ino, 0, 3_000_000).unwrap();
    assert!(v[..4099].iter().all(|&x| x == 0));
    assert_eq!(&v[4099..], &data[10..2_500_010]);
    // Shortened at the source's end; 0 at or past it.
    assert_eq!(fs.copy_range(a.ino, 2_999_990, b.ino, 0, 100, false).unwrap(), 10);
    assert_eq!(fs.copy_range(a.ino, 3_000_000, b.ino, 0, 100, false).unwrap(), 0);
    assert_eq!(fs.copy_range(a.ino, 5_000_000, b.ino, 0, 100, false).unwrap(), 0);
    // Within one file: disjoint ranges copy, overlapping ones are EINVAL.
    assert_eq!(fs.copy_range(a.ino, 0, a.ino, 3_000_000, 1000, false).unwrap(), 1000);
    assert_eq!(fs.read_vec(a.ino, 3_000_000, 1000).unwrap(), &data[..1000]);
    let e = fs.copy_range(a.ino, 0, a.ino, 500, 1000, false).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // Directories are refused.
    assert_eq!(fs.copy_range(a.ino, 0, ROOT, 0, 10, false).unwrap_err().errno(), libc::EISDIR);
    assert_clean(&fs);
    let fs = Fs::mount(fs.into_pmem()).unwrap();
    assert_eq!(fs.read_vec(b.ino, 4099, 2_500_000).unwrap(), &data[10..2_500_010]);
    assert_clean(&fs);
}
