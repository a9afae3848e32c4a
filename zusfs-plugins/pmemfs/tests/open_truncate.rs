//! A file open and growing, cut back to a partial first block, then growing again, while other
//! files are written (the module's op sequence of the power-cut test): no other file may lose data.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use pmemfs::*;
use zus_pmem::{CrashSim, SliceSource};

const ROOT: u64 = 1;

fn pat(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

fn append(fs: &Fs<CrashSim>, ino: u64, data: &[u8], piece: usize, use_append: bool) {
    let mut done = 0;
    while done < data.len() {
        let c = piece.min(data.len() - done);
        if use_append {
            fs.write_append(ino, &SliceSource(&data[done..done + c]), 0, c, false).unwrap();
        } else {
            let off = fs.getattr(ino).unwrap().size;
            fs.write_bytes(ino, off, &data[done..done + c], false).unwrap();
        }
        done += c;
    }
}

fn scenario(cut: u64, mtime_now: bool, release_early: bool, use_append: bool, piece: usize) {
    let fs = Fs::mkfs(CrashSim::new(64 << 20), &MkfsOptions::default()).unwrap();
    let a = fs.create(ROOT, b"scratch", 0o644, 0, 0).unwrap().ino;
    fs.open(a).unwrap();
    append(&fs, a, &vec![0xa5; 1 << 20], piece, use_append);
    let sa = SetAttr { size: Some(cut), mtime: mtime_now.then_some(TimeSpec::Now), ..Default::default() };
    fs.setattr(a, &sa).unwrap();
    append(&fs, a, &vec![0xa5; 300_000], piece, use_append);
    if release_early {
        fs.release(a).unwrap();
    }
    let mut files = Vec::new();
    for i in 0..20u64 {
        let name = format!("f{i}");
        let f = fs.create(ROOT, name.as_bytes(), 0o644, 0, 0).unwrap().ino;
        fs.open(f).unwrap();
        let d = pat(i, 10_000 + (i as usize * 37_123) % 300_000);
        append(&fs, f, &d, 27_125 + i as usize * 101, use_append);
        fs.fsync(f, false).unwrap();
        fs.release(f).unwrap();
        files.push((f, d));
        if i == 5 && !release_early {
            // the scratch file keeps growing and is cut again
            append(&fs, a, &vec![0xa5; 200_000], piece, use_append);
            fs.setattr(a, &sa).unwrap();
            append(&fs, a, &vec![0xa5; 50_000], piece, use_append);
        }
        if i == 10 && !release_early {
            fs.release(a).unwrap();
        }
    }
    for (f, d) in &files {
        let got = fs.read_vec(*f, 0, d.len() + 10).unwrap();
        assert!(got == *d, "file {f} differs at {:?}", got.iter().zip(d).position(|(x, y)| x != y));
    }
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn open_partial_truncate_then_grow() {
    for cut in [1, 1000, 4095] {
        for mtime_now in [false, true] {
            for release_early in [false, true] {
                for use_append in [true, false] {
                    for piece in [4096 * 3 + 17, 65_536, 1000] {
                        scenario(cut, mtime_now, release_early, use_append, piece);
                    }
                }
            }
        }
    }
}

/// powercut-io.c's writer (SEED 1, 120 files), op for op as the kernel module sends it.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn seeded(seed: u64, i: u64, salt: u64) -> Rng {
        let mut r = Rng((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ (i << 20) ^ salt);
        if r.0 == 0 {
            r.0 = 1;
        }
        for _ in 0..8 {
            r.next();
        }
        r
    }
}

const MAXSZ: u64 = 384 * 1024;

fn file_size(seed: u64, i: u64) -> usize {
    let r = Rng::seeded(seed, i, 0x51e).next();
    (match r % 8 {
        0 => r % 64,
        1 => 4096 * (1 + (r >> 8) % 8),
        _ => (r >> 8) % MAXSZ,
    }) as usize
}

fn file_data(seed: u64, i: u64, n: usize) -> Vec<u8> {
    let mut g = Rng::seeded(seed, i, 0xda7a);
    let mut v = Vec::with_capacity(n);
    while v.len() + 8 <= n {
        v.extend_from_slice(&g.next().to_le_bytes());
    }
    while v.len() < n {
        v.push(g.next() as u8);
    }
    v
}

fn powercut_io(seed: u64, max: u64, window: usize, use_append: bool, trunc0: bool) {
    let fs = Fs::mkfs(CrashSim::new(254 << 20), &MkfsOptions::default()).unwrap();
    let dir = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap().ino;
    let mut r: u64 = seed | 1;
    let j = fs.create(dir, b"junk", 0o644, 0, 0).unwrap().ino;
    fs.open(j).unwrap();
    let junk = vec![0xa5u8; 65536];
    let write = |ino: u64, mut off: u64, data: &[u8], app: bool| {
        for c in data.chunks(window) {
            if app {
                fs.write_append(ino, &SliceSource(c), 0, c.len(), false).unwrap();
            } else {
                fs.write_bytes(ino, off, c, false).unwrap();
            }
            off += c.len() as u64;
        }
    };
    for i in 1..=max {
        let n = file_size(seed, i);
        let buf = file_data(seed, i, n);
        let f = fs.create(dir, format!("f{i:04}").as_bytes(), 0o644, 0, 0).unwrap().ino;
        fs.open(f).unwrap();
        let mut off = 0usize;
        while off < n {
            let piece = ((1 + r % 65536) as usize).min(n - off);
            r = r.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            write(f, off as u64, &buf[off..off + piece], false);
            off += piece;
        }
        fs.fsync(f, false).unwrap();
        fs.release(f).unwrap();
        let size = fs.getattr(j).unwrap().size;
        let len = (1 + r % 65536) as usize;
        write(j, size, &junk[..len], use_append);
        let size = fs.getattr(j).unwrap().size;
        if size > 1024 * 1024 {
            let cut = if trunc0 { 0 } else { r % 4096 };
            let sa = SetAttr { size: Some(cut), mtime: Some(TimeSpec::Now), ..Default::default() };
            fs.setattr(j, &sa).unwrap();
        }
    }
    let mut bad = Vec::new();
    for i in 1..=max {
        let f = fs.lookup(dir, format!("f{i:04}").as_bytes()).unwrap().ino;
        let want = file_data(seed, i, file_size(seed, i));
        let got = fs.read_vec(f, 0, want.len() + 1).unwrap();
        if got != want {
            bad.push((i, got.iter().zip(&want).position(|(x, y)| x != y), got.len()));
        }
    }
    let rep = fs.check().unwrap();
    assert!(bad.is_empty() && rep.is_clean(), "bad files {bad:?}; fsck {rep}");
}

#[test]
fn powercut_io_seed1_sequence() {
    for window in [4096, 65536, 1 << 20] {
        for use_append in [true, false] {
            powercut_io(1, 120, window, use_append, false);
        }
    }
}

/// A dax write as the kernel module does it: one `map` per extent (each from where the last
/// ended), the data stored through the mapping, `map_done` at the end.
fn dax_write(fs: &Fs<CrashSim>, ino: u64, off: u64, data: &[u8]) {
    use zus_pmem::Persist;
    let end = off + data.len() as u64;
    let mut pos = off;
    while pos < end {
        let ext = fs.map(ino, pos, end - pos, true).unwrap();
        let e = ext[0];
        assert_eq!(e.file_off, pos);
        let d = e.dev_off.unwrap();
        let s = (pos - off) as usize;
        fs.pmem().store(d, &data[s..s + e.len as usize]).unwrap();
        fs.pmem().flush(d, e.len).unwrap();
        pos += e.len;
    }
    fs.pmem().fence();
    fs.map_done(ino, end).unwrap();
}

/// The power-cut test's loss: a dax write past EOF whose range has several extents (free space
/// fragmented by a partial truncate of a file that grew interleaved with others) is mapped in
/// several calls; each later call found its offset past the (uncommitted) size and zeroed
/// `[size, off)`: the data the client had just put in the earlier extents.
#[test]
fn dax_write_over_several_extents_keeps_its_data() {
    let fs = Fs::mkfs(CrashSim::new(64 << 20), &MkfsOptions::default()).unwrap();
    let a = fs.create(ROOT, b"junk", 0o644, 0, 0).unwrap().ino;
    fs.open(a).unwrap();
    let mut others = Vec::new();
    // a grows interleaved with other files: its blocks alternate with theirs
    for i in 0..40u64 {
        dax_write(&fs, a, fs.getattr(a).unwrap().size, &vec![0xa5; 9000]);
        let f = fs.create(ROOT, format!("o{i}").as_bytes(), 0o644, 0, 0).unwrap().ino;
        let d = pat(i + 100, 7000);
        dax_write(&fs, f, 0, &d);
        others.push((f, d));
    }
    fs.setattr(a, &SetAttr { size: Some(42), mtime: Some(TimeSpec::Now), ..Default::default() }).unwrap();
    dax_write(&fs, a, 42, &vec![0xa5; 3000]);
    for i in 0..10u64 {
        let f = fs.create(ROOT, format!("v{i}").as_bytes(), 0o644, 0, 0).unwrap().ino;
        let d = pat(i, 150_000);
        let mut off = 0;
        for piece in [6271usize, 20854, 56801, 41392, 24682] {
            dax_write(&fs, f, off as u64, &d[off..off + piece]);
            off += piece;
        }
        others.push((f, d));
    }
    fs.release(a).unwrap();
    for (f, d) in &others {
        let got = fs.read_vec(*f, 0, d.len() + 10).unwrap();
        assert!(got == *d, "file {f} differs at {:?}", got.iter().zip(d).position(|(x, y)| x != y));
    }
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}

/// The same, minimal: the block after a file's partial last block belongs to another file, so
/// an append starting in that partial block spans two extents (two map calls).
#[test]
fn dax_append_from_partial_block_over_two_extents() {
    let fs = Fs::mkfs(CrashSim::new(16 << 20), &MkfsOptions::default()).unwrap();
    let v = fs.create(ROOT, b"v", 0o644, 0, 0).unwrap().ino;
    let o = fs.create(ROOT, b"o", 0o644, 0, 0).unwrap().ino;
    let d = pat(7, 40_000);
    dax_write(&fs, v, 0, &d[..6000]);
    dax_write(&fs, o, 0, &[1u8; 100]);
    let ext = fs.map(v, 6000, 34_000, true).unwrap();
    assert!(ext.len() > 1, "the append must span two extents: {ext:?}");
    dax_write(&fs, v, 6000, &d[6000..]);
    let got = fs.read_vec(v, 0, 50_000).unwrap();
    assert!(got == d, "differs at {:?}", got.iter().zip(&d).position(|(x, y)| x != y));
    assert_eq!(fs.read_vec(o, 0, 200).unwrap(), vec![1u8; 100]);
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
}
