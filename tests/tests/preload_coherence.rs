//! Coherence between the preload fast path and the kernel mount, both ways, and fsx-style random
//! operation sequences checked against a shadow copy, in both data modes.
//!
//! A Python driver (`tests/scripts/preload_driver.py`) runs under the preload library and
//! executes one file operation per line; this test process uses the plain kernel mount (no
//! preload) and checks after every step that each side sees what the other did, at once.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

#[macro_use]
#[path = "preload_support/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rand::{Rng, SeedableRng};
use zufs_tests::SharedFileMap;

fn pattern(seed: u64, n: usize, start: usize) -> Vec<u8> {
    (0..n).map(|i| ((seed as usize + (start + i) * 131 + ((start + i) >> 9)) % 251) as u8).collect()
}

struct Driver {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Driver {
    fn start(f: &Fixture, mode: &str) -> Self {
        Self::start_as(f, mode, None)
    }

    /// The driver, run as user `uid` (and group `uid`) when given.
    fn start_as(f: &Fixture, mode: &str, uid: Option<u32>) -> Self {
        use std::os::unix::process::CommandExt;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/preload_driver.py");
        let mut cmd = f.preload(mode, "python3");
        if let Some(u) = uid {
            cmd.uid(u).gid(u);
        }
        let mut child = cmd
            .arg(script)
            .env("ZUFS_PRELOAD_STATS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, out }
    }

    fn cmd(&mut self, line: &str) -> Result<String, i32> {
        writeln!(self.stdin, "{line}").expect("driver stdin");
        let mut r = String::new();
        self.out.read_line(&mut r).expect("driver stdout");
        let r = r.trim_end();
        if let Some(v) = r.strip_prefix("ok ") {
            Ok(v.to_owned())
        } else if let Some(e) = r.strip_prefix("err ") {
            Err(e.parse().unwrap())
        } else {
            panic!("driver died on {line:?}: {r:?}");
        }
    }

    fn ok(&mut self, line: &str) -> String {
        self.cmd(line).unwrap_or_else(|e| panic!("{line}: errno {e}"))
    }

    fn num(&mut self, line: &str) -> i64 {
        self.ok(line).parse().unwrap()
    }

    /// Ends the driver; returns its stderr (the stats line).
    fn finish(mut self) -> String {
        let _ = writeln!(self.stdin, "exit");
        drop(self.stdin);
        let o = self.child.wait_with_output().expect("wait");
        assert!(o.status.success(), "driver failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// A counter summed over every stats line (the driver and anything it spawned).
fn stat_field(stats: &str, name: &str) -> u64 {
    let mut sum = 0;
    for line in stats.lines().filter(|l| l.contains("zufs-preload: stats")) {
        let mut it = line.split_whitespace();
        while let Some(w) = it.next() {
            if w == name {
                sum += it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    sum
}

/// Compares bytes without printing megabytes: the first difference and the lengths.
#[track_caller]
fn same(got: &[u8], want: &[u8], ctx: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!(
            "{ctx}: content differs at byte {at} (got {} bytes, want {}); got[at..+16]={:?} want[at..+16]={:?}",
            got.len(),
            want.len(),
            &got[at.min(got.len())..(at + 16).min(got.len())],
            &want[at.min(want.len())..(at + 16).min(want.len())]
        );
    }
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn assert_fast_path_used(stats: &str, mode: &str) {
    assert!(stat_field(stats, "served") > 0, "nothing served by the library: {stats}");
    if mode == "dax" {
        assert!(stat_field(stats, "dax_bytes") > 0, "dax mode moved no data directly: {stats}");
    } else {
        assert!(stat_field(stats, "chan_io") > 0, "channel mode sent no I/O op: {stats}");
        assert_eq!(stat_field(stats, "dax_bytes"), 0, "{stats}");
        if mode.ends_with("+remote") {
            assert_eq!(stat_field(stats, "window_io"), 0, "one-copy policy bounced data: {stats}");
        }
    }
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

fn coherence(mode: &str) {
    let f = Fixture::new(&format!("preload-coh-{mode}"), "256M", COHERENT);
    let path = f.path("f");
    let p = path.display().to_string();
    let mut d = Driver::start(&f, mode);
    let fd = d.num(&format!("open {p} rw,creat"));
    let mut shadow: Vec<u8> = Vec::new();
    let mut last_mtime = 0i128;
    // Fast-path writes, seen at once through the kernel mount: data, size, mtime.
    for i in 0..24u64 {
        std::thread::sleep(Duration::from_millis(3));
        let off = (i as usize * 3001) % 40_000;
        let len = 1 + (i as usize * 997) % 9000;
        let t0 = now_ns();
        assert_eq!(d.num(&format!("pwrite {fd} {off} {len} {i}")), len as i64);
        if shadow.len() < off + len {
            shadow.resize(off + len, 0);
        }
        shadow[off..off + len].copy_from_slice(&pattern(i, len, 0));
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), shadow.len() as u64, "size after write {i}");
        same(&std::fs::read(&path).unwrap(), &shadow, &format!("content after write {i}"));
        let mt = mtime_ns(&md);
        assert!(mt >= t0 - 2_000_000, "mtime {mt} older than the write at {t0} ({mode}, write {i})");
        assert!(mt >= last_mtime, "mtime went back");
        last_mtime = mt;
    }
    // Kernel-mount writes, seen at once by the fast path (reads and fstat).
    let k = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    for i in 0..16u64 {
        let off = (i as usize * 7919) % 60_000;
        let data = pattern(100 + i, 1 + (i as usize * 389) % 6000, 0);
        k.write_all_at(&data, off as u64).unwrap();
        if shadow.len() < off + data.len() {
            shadow.resize(off + data.len(), 0);
        }
        shadow[off..off + data.len()].copy_from_slice(&data);
        let st = d.ok(&format!("fstat {fd}"));
        assert_eq!(st.split(' ').next().unwrap().parse::<usize>().unwrap(), shadow.len(), "fstat size ({mode})");
        same(
            &unhex(&d.ok(&format!("pread {fd} 0 {}", shadow.len() + 100))),
            &shadow,
            &format!("pread after kernel write {i}"),
        );
    }
    // Truncate through the fast path, then grow through the kernel.
    d.ok(&format!("ftruncate {fd} 5000"));
    shadow.truncate(5000);
    same(&std::fs::read(&path).unwrap(), &shadow, "kernel read");
    k.set_len(9000).unwrap();
    shadow.resize(9000, 0);
    same(&unhex(&d.ok(&format!("pread {fd} 0 20000"))), &shadow, "pread after kernel grow");
    // The fast path writes into the grown (hole) range and beyond.
    d.ok(&format!("pwrite {fd} 8000 4000 7"));
    shadow.resize(12000, 0);
    shadow[8000..12000].copy_from_slice(&pattern(7, 4000, 0));
    same(&std::fs::read(&path).unwrap(), &shadow, "kernel read");
    // O_APPEND through the fast path from two open files, interleaved: atomic at the true end.
    let afd = d.num(&format!("open {p} wo,append"));
    let afd2 = d.num(&format!("open {p} rw,append"));
    for i in 0..6u64 {
        d.ok(&format!("write {afd} 1000 {i}"));
        shadow.extend(pattern(i, 1000, 0));
        d.ok(&format!("write {afd2} 333 {}", 50 + i));
        shadow.extend(pattern(50 + i, 333, 0));
    }
    same(&std::fs::read(&path).unwrap(), &shadow, "after fast-path appends");
    assert_eq!(d.num(&format!("lseek {afd} 0 1")), shadow.len() as i64 - 333, "append fd offset");
    assert_eq!(d.num(&format!("lseek {afd2} 0 1")), shadow.len() as i64, "append fd offset");
    // Kernel-mount appends after the fast path grew the file (with a stat in between here; the
    // bridge's io_flags::APPEND makes them land at the true end without it, see the tests below).
    let mut ka = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    for i in 0..3u64 {
        d.ok(&format!("write {afd} 500 {}", 70 + i));
        shadow.extend(pattern(70 + i, 500, 0));
        assert_eq!(ka.metadata().unwrap().len(), shadow.len() as u64);
        let kd = pattern(80 + i, 200, 0);
        ka.write_all(&kd).unwrap();
        shadow.extend(kd);
    }
    same(&std::fs::read(&path).unwrap(), &shadow, "after mixed appends");
    d.ok(&format!("close {afd2}"));
    // fallocate grows the file (mode 0).
    d.ok(&format!("fallocate {fd} 0 0 {}", shadow.len() + 8192));
    shadow.resize(shadow.len() + 8192, 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), shadow.len() as u64);
    same(&std::fs::read(&path).unwrap(), &shadow, "kernel read");
    d.ok(&format!("fsync {fd}"));
    // Access modes are the kernel's: EBADF for a write on a read-only fd and the other way round.
    let ro = d.num(&format!("open {p} ro"));
    assert_eq!(d.cmd(&format!("pwrite {ro} 0 10 1")), Err(libc::EBADF));
    assert_eq!(d.cmd(&format!("ftruncate {ro} 0")), Err(libc::EINVAL));
    assert_eq!(d.cmd(&format!("read {afd} 10")), Err(libc::EBADF));
    d.ok(&format!("close {ro}"));
    same(&std::fs::read(&path).unwrap(), &shadow, "after refused calls");
    d.ok(&format!("close {afd}"));
    d.ok(&format!("close {fd}"));
    let stats = d.finish();
    assert_fast_path_used(&stats, mode);
    drop(k);
    drop(ka);
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

#[test]
fn test_coherence_with_kernel_mount_channel_mode() {
    skip_unless_ready!("python3");
    coherence("channel");
}

#[test]
fn test_coherence_with_kernel_mount_dax_mode() {
    skip_unless_ready!("python3");
    coherence("dax");
}

fn segs(rng: &mut impl Rng, total: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = rng.random_range(1..=left.min(5000));
        v.push(n);
        left -= n;
    }
    v
}

fn join(v: &[usize]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// fsx-style random operations through the fast path and the kernel mount, against a shadow
/// copy. With `with_mmap`, a shared mapping through the kernel mount comes and goes among them
/// (mapped reads compared, mapped stores msync'ed), so the fast path keeps stepping aside for
/// the kernel's page cache and coming back.
fn fsx(mode: &str, seed: u64, ops: usize, with_mmap: bool) {
    eprintln!("fsx {mode} seed {seed} mmap {with_mmap}");
    let f = Fixture::new(&format!("preload-fsx-{mode}"), "256M", COHERENT);
    let path = f.path("fsx");
    let p = path.display().to_string();
    let mut d = Driver::start(&f, mode);
    let fd = d.num(&format!("open {p} rw,creat"));
    let afd = d.num(&format!("open {p} rw,append"));
    let k = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shadow: Vec<u8> = Vec::new();
    let mut pos = 0usize; // offset of `fd`
    let mut hist: Vec<String> = Vec::new();
    let mut map: Option<SharedFileMap> = None;
    const MAXLEN: usize = 300_000;
    let put = |shadow: &mut Vec<u8>, off: usize, data: &[u8]| {
        if shadow.len() < off + data.len() {
            shadow.resize(off + data.len(), 0);
        }
        shadow[off..off + data.len()].copy_from_slice(data);
    };
    let read_of = |shadow: &Vec<u8>, off: usize, len: usize| -> Vec<u8> {
        if off >= shadow.len() { Vec::new() } else { shadow[off..(off + len).min(shadow.len())].to_vec() }
    };
    for step in 0..ops {
        let what = rng.random_range(0..100);
        let off = rng.random_range(0..MAXLEN);
        let len = rng.random_range(1..16_384usize);
        let s = rng.random_range(0..1_000_000u64);
        let ctx = format!(
            "{mode} seed {seed} step {step} op {what} off {off} len {len} size {} (before: {:?})",
            shadow.len(),
            &hist[hist.len().saturating_sub(6)..]
        );
        hist.push(format!("{step}:{what}@{off}+{len} size {}", shadow.len()));
        if with_mmap && what >= 90 && map.is_some() {
            let size = std::fs::metadata(&path).unwrap().len() as usize;
            assert_eq!(size, shadow.len(), "{ctx}: stat before a mapped access");
        }
        match what {
            // The mapping: made over the current size, then read, written (and msync'ed)
            // within what is still file (a page wholly past the end would fault), or dropped.
            // Before a mapped access the test stats the file, as a program that maps a file
            // others resize does before it relies on its size (and checks that size).
            88..=99 if with_mmap => match (map.as_ref(), what) {
                (None, _) if shadow.len() >= 4096 => map = Some(kernel_map(&path, shadow.len() / 4096 * 4096)),
                (None, _) => {}
                (Some(_), 88..=89) => map = None,
                (Some(m), 90..=94) => {
                    let n = m.len().min(shadow.len());
                    same(&m.bytes(0..n), &shadow[..n], &format!("{ctx}: mapped read"));
                }
                (Some(m), _) => {
                    let n = m.len().min(shadow.len());
                    let at = off % n;
                    let data = pattern(s, len.min(n - at), 0);
                    m.write(at, &data);
                    m.msync();
                    put(&mut shadow, at, &data);
                }
            },
            0..=24 => {
                assert_eq!(d.num(&format!("pwrite {fd} {off} {len} {s}")), len as i64, "{ctx}");
                put(&mut shadow, off, &pattern(s, len, 0));
            }
            25..=39 => {
                let got = d.ok(&format!("pread {fd} {off} {len}"));
                same(&unhex(&got), &read_of(&shadow, off, len), &format!("{ctx}: pread {off}+{len}"));
            }
            40..=47 => {
                let v = segs(&mut rng, len);
                assert_eq!(d.num(&format!("pwritev {fd} {off} {s} {}", join(&v))), len as i64, "{ctx}");
                put(&mut shadow, off, &pattern(s, len, 0));
            }
            48..=54 => {
                let v = segs(&mut rng, len);
                let got = d.ok(&format!("preadv {fd} {off} {}", join(&v)));
                same(&unhex(&got), &read_of(&shadow, off, len), &format!("{ctx}: preadv"));
            }
            55..=61 => {
                assert_eq!(d.num(&format!("write {fd} {len} {s}")), len as i64, "{ctx}");
                put(&mut shadow, pos, &pattern(s, len, 0));
                pos += len;
            }
            62..=67 => {
                let got = d.ok(&format!("read {fd} {len}"));
                let want = read_of(&shadow, pos, len);
                same(&unhex(&got), &want, &format!("{ctx}: read at {pos}"));
                pos += want.len();
            }
            68..=70 => {
                let to = rng.random_range(0..MAXLEN);
                assert_eq!(d.num(&format!("lseek {fd} {to} 0")), to as i64);
                pos = to;
            }
            71..=72 => {
                let back = rng.random_range(0..1000i64);
                let want = shadow.len() as i64 - back;
                let r = d.cmd(&format!("lseek {fd} -{back} 2"));
                if want >= 0 {
                    assert_eq!(r, Ok(want.to_string()), "{ctx}: SEEK_END");
                    pos = want as usize;
                } else {
                    assert_eq!(r, Err(libc::EINVAL), "{ctx}");
                }
            }
            73..=77 => {
                let to = rng.random_range(0..MAXLEN);
                d.ok(&format!("ftruncate {fd} {to}"));
                shadow.resize(to, 0);
            }
            78..=81 => {
                let w = d.num(&format!("write {afd} {len} {s}"));
                assert_eq!(w, len as i64);
                shadow.extend(pattern(s, len, 0));
            }
            82..=84 => {
                let keep = rng.random_bool(0.5);
                let mode_bits = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                d.ok(&format!("fallocate {fd} {mode_bits} {off} {len}"));
                if !keep && shadow.len() < off + len {
                    shadow.resize(off + len, 0);
                }
            }
            85..=89 => {
                // The other side: a kernel-mount write.
                let data = pattern(s, len, 0);
                k.write_all_at(&data, off as u64).unwrap();
                put(&mut shadow, off, &data);
            }
            90..=91 => {
                let to = rng.random_range(0..MAXLEN);
                k.set_len(to as u64).unwrap();
                shadow.resize(to, 0);
                // Another process changed the layout: the next dax access must see it at once
                // (zusd's layout generation), with no pause here.
            }
            92..=95 => {
                let st = d.ok(&format!("fstat {fd}"));
                assert_eq!(st.split(' ').next().unwrap(), shadow.len().to_string(), "{ctx}: fstat size");
            }
            96..=97 => {
                d.ok(&format!("fsync {fd}"));
            }
            _ => {
                same(&std::fs::read(&path).unwrap(), &shadow, &format!("{ctx}: kernel read of the whole file"));
            }
        }
    }
    same(&std::fs::read(&path).unwrap(), &shadow, &format!("final content ({mode} seed {seed})"));
    drop(map);
    d.ok(&format!("close {afd}"));
    d.ok(&format!("close {fd}"));
    let stats = d.finish();
    eprintln!("{stats}");
    assert_fast_path_used(&stats, mode);
    drop(k);
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

fn seed() -> u64 {
    std::env::var("ZUFS_FSX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0005)
}

#[test]
fn test_fsx_random_ops_match_shadow_channel_mode() {
    skip_unless_ready!("python3");
    fsx("channel", seed(), 1500, false);
}

#[test]
fn test_fsx_random_ops_match_shadow_channel_mode_one_copy() {
    skip_unless_ready!("python3");
    fsx("channel+remote", seed() ^ 1, 1000, false);
}

/// Every read and write as one op through a streamed window (single buffers too).
#[test]
fn test_fsx_random_ops_match_shadow_channel_mode_streamed() {
    skip_unless_ready!("python3");
    fsx("channel+stream", seed() ^ 2, 1000, false);
}

#[test]
fn test_fsx_random_ops_match_shadow_dax_mode() {
    skip_unless_ready!("python3");
    fsx("dax", seed() + 1, 1500, false);
}

#[test]
fn test_fsx_with_kernel_mmap_channel_mode() {
    skip_unless_ready!("python3");
    fsx("channel", seed() + 2, 1500, true);
}

#[test]
fn test_fsx_with_kernel_mmap_dax_mode() {
    skip_unless_ready!("python3");
    fsx("dax", seed() + 3, 1500, true);
}

/// An O_APPEND write through the kernel mount lands at the true end of file even when the fast
/// path grew the file behind the kernel's cached size (the bridge passes APPEND to zusd).
fn kernel_append_after_fast_path_growth(mode: &str) {
    let f = Fixture::new(&format!("preload-append-{mode}"), "64M", COHERENT);
    let path = f.path("log");
    let p = path.display().to_string();
    let mut d = Driver::start(&f, mode);
    let fd = d.num(&format!("open {p} rw,creat"));
    // The kernel fd is opened while the file is empty: its cached size is 0.
    let mut k = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    assert_eq!(d.num(&format!("pwrite {fd} 0 1000 7")), 1000);
    k.write_all(b"tail").unwrap();
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), 1004, "the append overwrote fast-path data or left a gap ({mode})");
    same(&got[..1000], &pattern(7, 1000, 0), &format!("fast-path bytes survive the append ({mode})"));
    assert_eq!(&got[1000..], b"tail", "{mode}");
}

#[test]
fn test_kernel_o_append_after_fast_path_growth_channel_mode() {
    skip_unless_ready!("python3");
    kernel_append_after_fast_path_growth("channel");
}

#[test]
fn test_kernel_o_append_after_fast_path_growth_dax_mode() {
    skip_unless_ready!("python3");
    kernel_append_after_fast_path_growth("dax");
}

/// A truncate by another process is seen by a dax process at once (zusd's layout generation),
/// and the blocks it freed are not handed to another file while a copy may still target them
/// (pmemfs's reuse grace). On a full device those blocks are the only free ones, so a stale
/// extent cache would write into the other file: the test checks that file stays intact.
#[test]
fn test_truncate_by_another_process_never_lets_dax_writes_into_freed_blocks() {
    skip_unless_ready!("python3");
    let f = Fixture::new("preload-trunc", "32M", COHERENT);
    let x = f.path("x");
    std::fs::write(&x, vec![7u8; 4 << 20]).unwrap();
    let mut d = Driver::start(&f, "dax");
    let fd = d.num(&format!("open {} rw", x.display()));
    // The driver caches x's extents.
    assert_eq!(d.ok(&format!("pread {fd} 0 16")), "07".repeat(16));
    // Fill the device.
    let mut filler = std::fs::File::create(f.path("filler")).unwrap();
    let chunk = vec![1u8; 256 << 10];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    // Another process truncates x; once the grace has passed, y gets x's old blocks.
    std::fs::OpenOptions::new().write(true).open(&x).unwrap().set_len(0).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let y_data = pattern(9, 1 << 20, 0);
    std::fs::write(f.path("y"), &y_data).unwrap();
    // The driver writes at offset 0 of x through the fast path: x is empty now, so this must
    // extend x, not land in the blocks x had.
    assert_eq!(d.num(&format!("pwrite {fd} 0 8192 5")), 8192);
    assert_fast_path_used(&d.finish(), "dax");
    same(&std::fs::read(f.path("y")).unwrap(), &y_data, "another file after a dax write to a truncated file");
    same(&std::fs::read(&x).unwrap(), &pattern(5, 8192, 0), "the truncated file after the dax write");
    let out = f.unmount_and_fsck();
    assert!(out.contains("0 problem"), "{out}");
}

/// A shared mapping of a file through the kernel mount (the test process has no preload).
fn kernel_map(path: &std::path::Path, len: usize) -> SharedFileMap {
    SharedFileMap::new(&std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap(), len)
}

/// The driver's live counter `name` (zufs_preload_stats).
fn live_stat(d: &mut Driver, name: &str) -> u64 {
    stat_field(&format!("zufs-preload: {}", d.ok("stats")), name)
}

/// Waits until a read through `fd` is served by the fast path (the bridge unmarks an inode on
/// its own thread after the last kernel user of its page cache goes).
fn wait_for_fast_path(d: &mut Driver, fd: i64, ctx: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let before = live_stat(d, "kernel_cached");
        d.ok(&format!("pread {fd} 0 1"));
        if live_stat(d, "kernel_cached") == before {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{ctx}: the fast path never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens `p` (read-write) in the driver until a read through the new fd is served by the fast
/// path, and returns that fd. The bridge unmarks an inode on its own thread after the last
/// kernel user of its page cache goes; a read through the kernel between its dropping the pages
/// and unmarking fills them again through the new file, which then keeps the inode marked until
/// it is closed (correctly: the kernel caches pages again), so the file is opened again.
fn reopen_until_fast(d: &mut Driver, p: &str, ctx: &str) -> i64 {
    let t0 = std::time::Instant::now();
    loop {
        let fd = d.num(&format!("open {p} rw"));
        let before = live_stat(d, "kernel_cached");
        d.ok(&format!("pread {fd} 0 1"));
        if live_stat(d, "kernel_cached") == before {
            return fd;
        }
        d.ok(&format!("close {fd}"));
        assert!(t0.elapsed() < Duration::from_secs(5), "{ctx}: the fast path never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pages the kernel caches (a shared mmap through the mount, or a page-cache open) see
/// fast-path writes at once, and the fast path sees what was written through them: while the
/// kernel holds pages of a file, the library serves that file through the kernel; once the
/// last kernel file that cached pages is closed (the library's own included, since its calls
/// went through the kernel), the fast path serves it again.
fn kernel_page_cache_coherence(mode: &str, opts: &str) {
    const LEN: usize = 64 << 10;
    let f = Fixture::new(&format!("preload-mmap-{mode}"), "64M", opts);
    let path = f.path("mapped");
    let p = path.display().to_string();
    let mut shadow = pattern(1, LEN, 0);
    std::fs::write(&path, &shadow).unwrap();
    let mut d = Driver::start(&f, mode);
    let fd = reopen_until_fast(&mut d, &p, "before the mapping");
    let fast_before = live_stat(&mut d, "served");
    // Map and touch every page: the kernel now caches the file.
    let map = kernel_map(&path, LEN);
    same(&map.bytes(0..LEN), &shadow, &format!("mapping at first ({mode}, {opts})"));
    for i in 0..8u64 {
        let off = (i as usize * 9973) % (LEN - 5000);
        let len = 1 + (i as usize * 1777) % 5000;
        assert_eq!(d.num(&format!("pwrite {fd} {off} {len} {}", 10 + i)), len as i64);
        shadow[off..off + len].copy_from_slice(&pattern(10 + i, len, 0));
        same(&map.bytes(0..LEN), &shadow, &format!("mapping after preloaded write {i} ({mode}, {opts})"));
    }
    // The other way: stores through the mapping, flushed, are what the preloaded process reads.
    let mine = pattern(77, 3000, 0);
    map.write(5000, &mine);
    shadow[5000..8000].copy_from_slice(&mine);
    map.msync();
    same(
        &unhex(&d.ok(&format!("pread {fd} 0 {LEN}"))),
        &shadow,
        &format!("preloaded read after msync ({mode}, {opts})"),
    );
    let passed = live_stat(&mut d, "kernel_cached");
    assert!(passed >= 9, "the calls on the mapped file did not go through the kernel ({passed})");
    // The mapping goes, and so does the driver's file (its calls went through the kernel, so
    // its handle may hold pages too): the fast path serves the file again, the kernel sees it.
    drop(map);
    d.ok(&format!("close {fd}"));
    let fd = reopen_until_fast(&mut d, &p, "after munmap");
    assert_eq!(d.num(&format!("pwrite {fd} 100 200 5")), 200);
    shadow[100..300].copy_from_slice(&pattern(5, 200, 0));
    assert!(live_stat(&mut d, "served") > fast_before, "nothing served by the fast path");
    same(&std::fs::read(&path).unwrap(), &shadow, &format!("kernel read after the mapping ({mode}, {opts})"));
    let stats = d.finish();
    assert_fast_path_used(&stats, mode);
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

/// A page-cache mount (no direct_io): a program holding the file open reads it through the
/// page cache, and a fast-path write is there on its next read of the same open file.
fn page_cache_reader_sees_fast_path_writes(mode: &str) {
    let f = Fixture::new(&format!("preload-pcache-{mode}"), "64M", "attr_timeout=0,entry_timeout=0");
    let path = f.path("cached");
    let p = path.display().to_string();
    let mut shadow = pattern(3, 40_000, 0);
    std::fs::write(&path, &shadow).unwrap();
    let mut d = Driver::start(&f, mode);
    let fd = d.num(&format!("open {p} rw"));
    let k = std::fs::File::open(&path).unwrap();
    let read_all = |k: &std::fs::File| {
        let mut b = vec![0u8; 40_000];
        k.read_exact_at(&mut b, 0).unwrap();
        b
    };
    same(&read_all(&k), &shadow, "first read through the page cache");
    for i in 0..6u64 {
        let off = (i as usize * 6007) % 35_000;
        assert_eq!(d.num(&format!("pwrite {fd} {off} 4000 {}", 20 + i)), 4000);
        shadow[off..off + 4000].copy_from_slice(&pattern(20 + i, 4000, 0));
        same(&read_all(&k), &shadow, &format!("cached reader after preloaded write {i} ({mode})"));
    }
    drop(k);
    d.ok(&format!("close {fd}"));
    let fd = reopen_until_fast(&mut d, &p, "after the cached reader closed");
    assert_eq!(d.num(&format!("pwrite {fd} 0 4000 40")), 4000);
    shadow[..4000].copy_from_slice(&pattern(40, 4000, 0));
    same(&std::fs::read(&path).unwrap(), &shadow, "a new reader after the fast path came back");
    assert_fast_path_used(&d.finish(), mode);
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

#[test]
fn test_kernel_mmap_sees_fast_path_writes_channel_mode() {
    skip_unless_ready!("python3");
    kernel_page_cache_coherence("channel", COHERENT);
}

#[test]
fn test_kernel_mmap_sees_fast_path_writes_dax_mode() {
    skip_unless_ready!("python3");
    kernel_page_cache_coherence("dax", COHERENT);
}

#[test]
fn test_kernel_mmap_on_page_cache_mount_sees_fast_path_writes_dax_mode() {
    skip_unless_ready!("python3");
    kernel_page_cache_coherence("dax", "attr_timeout=0,entry_timeout=0");
}

#[test]
fn test_page_cache_reader_sees_fast_path_writes_channel_mode() {
    skip_unless_ready!("python3");
    page_cache_reader_sees_fast_path_writes("channel");
}

#[test]
fn test_page_cache_reader_sees_fast_path_writes_dax_mode() {
    skip_unless_ready!("python3");
    page_cache_reader_sees_fast_path_writes("dax");
}

/// A user who does not own the mount (on an `allow_other` mount) gets the fast path through
/// tickets: the kernel checks the user's permissions at open, the bridge hands the library a
/// ticket for that open file, and zusd serves that user's data ops on that inode only. dax mode
/// needs the device file, which this user may not open: channel mode, said once on stderr.
fn another_user_with_tickets(mode: &str) {
    another_user_with_tickets_on(mode, "");
}

fn another_user_with_tickets_on(mode: &str, extra: &str) {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let f = Fixture::new(&format!("preload-tickets-{mode}"), "64M", &format!("{COHERENT},allow_other{extra}"));
    for d in [&f.dir.0, &f.mnt] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let shared = f.path("shared");
    let mut shadow = pattern(1, 20_000, 0);
    std::fs::write(&shared, &shadow).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    let private = f.path("private");
    std::fs::write(&private, b"root only").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Driver::start_as(&f, mode, Some(NOBODY));
    assert_eq!(d.cmd(&format!("open {} rw", private.display())), Err(libc::EACCES), "the kernel's check at open");
    let fd = d.num(&format!("open {} rw", shared.display()));
    for i in 0..8u64 {
        let off = (i as usize * 2311) % 15_000;
        assert_eq!(d.num(&format!("pwrite {fd} {off} 3000 {}", 30 + i)), 3000);
        shadow[off..off + 3000].copy_from_slice(&pattern(30 + i, 3000, 0));
        same(&unhex(&d.ok(&format!("pread {fd} 0 30000"))), &shadow, &format!("pread as another user ({mode})"));
    }
    same(&std::fs::read(&shared).unwrap(), &shadow, "the owner reads what the other user wrote");
    let ro = d.num(&format!("open {} ro", shared.display()));
    assert_eq!(d.cmd(&format!("pwrite {ro} 0 10 1")), Err(libc::EBADF));
    same(&unhex(&d.ok(&format!("pread {ro} 0 30000"))), &shadow, "read through a read-only file");
    let stats = d.finish();
    assert!(stat_field(&stats, "chan_io") >= 16, "the other user's calls did not take the fast path: {stats}");
    assert_eq!(stat_field(&stats, "kernel_cached"), 0, "{stats}");
    if mode == "dax" {
        assert!(stats.contains("dax mode unavailable"), "no word of the fallback to channel mode: {stats}");
        assert_eq!(stats.matches("dax mode unavailable").count(), 1, "said more than once: {stats}");
    }
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

#[test]
fn test_another_user_gets_the_fast_path_with_tickets_channel_mode() {
    skip_unless_ready!("python3");
    another_user_with_tickets("channel");
}

/// Tickets issued by the ring threads inside zusd (`serve=zusd`).
#[test]
fn test_another_user_gets_the_fast_path_with_tickets_served_by_zusd() {
    skip_unless_ready!("python3");
    if on_transport("", "uring").is_none() {
        return;
    }
    another_user_with_tickets_on("channel", ",transport=uring,serve=zusd");
}

/// The kernel's mmap and page cache stay coherent with the fast path when zusd serves the
/// rings itself (`serve=zusd`): the marks are set on zusd's mount by its ring threads.
#[test]
fn test_kernel_mmap_sees_fast_path_writes_channel_mode_served_by_zusd() {
    skip_unless_ready!("python3");
    let Some(opts) = on_transport(COHERENT, "uring") else { return };
    kernel_page_cache_coherence("channel", &format!("{opts},serve=zusd"));
}

#[test]
fn test_another_user_gets_the_fast_path_with_tickets_dax_mode() {
    skip_unless_ready!("python3");
    another_user_with_tickets("dax");
}

// ---------------------------------------------------------------------------------------------
// Every kernel call sees the fast path's size and data at once (issue 16). The library serves
// read/write/fstat/... itself; copy_file_range, sendfile, splice, mmap, O_APPEND through the
// kernel and stat from another process are the kernel's, and they take the file size from the
// kernel's inode (copy_file_range clamps to it, a mapping faults SIGBUS past it, O_APPEND
// starts at it) without asking the bridge. Each check below follows its own fast-path growth,
// with nothing in between that could make the kernel ask (no stat, no lookup: the kernel fds
// are opened before, and the mount keeps entries cached, as the README's options do).

/// The options the README recommends for the fast path (entry_timeout left at its default).
const RECOMMENDED: &str = "direct_io,attr_timeout=0";

/// `opts` with the bridge on `transport`; None (after a printed reason) where the kernel has
/// no FUSE over io_uring.
fn on_transport(opts: &str, transport: &str) -> Option<String> {
    if transport.starts_with("uring") && !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring");
        return None;
    }
    Some(format!("{opts},transport={transport}"))
}

/// copy_file_range(2) through the kernel, as `cp` does: from `off` of `src` to the start of a
/// fresh `dst` until it returns 0; the bytes that arrived.
#[allow(unsafe_code)]
fn kernel_copy_file_range(src: &std::fs::File, off: u64, dst: &std::path::Path) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let out = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dst).unwrap();
    let (mut off_in, mut off_out) = (off as i64, 0i64);
    for _ in 0..64 {
        // SAFETY: two open fds and two valid offset pointers.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &raw mut off_in, out.as_raw_fd(), &raw mut off_out, 1 << 20, 0)
        };
        assert!(n >= 0, "copy_file_range: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
    }
    drop(out);
    std::fs::read(dst).unwrap()
}

/// sendfile(2) through the kernel from `off` of `src` into a file outside the mount, until 0.
#[allow(unsafe_code)]
fn kernel_sendfile(src: &std::fs::File, off: u64, dst: &std::path::Path) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let out = std::fs::File::create(dst).unwrap();
    let mut o = off as i64;
    for _ in 0..64 {
        // SAFETY: two open fds and a valid offset pointer.
        let n = unsafe { libc::sendfile(out.as_raw_fd(), src.as_raw_fd(), &raw mut o, 1 << 20) };
        assert!(n >= 0, "sendfile: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
    }
    drop(out);
    std::fs::read(dst).unwrap()
}

/// splice(2) through the kernel from `off` of `src` into a pipe, until 0.
#[allow(unsafe_code)]
fn kernel_splice(src: &std::fs::File, off: u64) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut p = [0i32; 2];
    // SAFETY: p has room for the two fds.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds this function owns from here.
    let (mut r, w) = unsafe { (std::fs::File::from_raw_fd(p[0]), std::fs::File::from_raw_fd(p[1])) };
    let mut o = off as i64;
    let mut got = Vec::new();
    for _ in 0..256 {
        // SAFETY: open fds and a valid offset pointer.
        let n = unsafe { libc::splice(src.as_raw_fd(), &raw mut o, w.as_raw_fd(), std::ptr::null_mut(), 32 << 10, 0) };
        assert!(n >= 0, "splice: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut b = vec![0u8; n as usize];
        r.read_exact(&mut b).unwrap();
        got.extend_from_slice(&b);
    }
    got
}

/// A shared mapping of the first `len` bytes of the file `k` names, read in another process
/// (no preload; it opens `/proc/PID/fd/N`, so no lookup or stat reaches the bridge): the bytes,
/// or Err(why) when it died (SIGBUS past the kernel's size).
fn kernel_mmap_in_child(k: &std::fs::File, len: usize) -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    const PY: &str = "import ctypes, os, sys\n\
        fd = os.open(sys.argv[1], os.O_RDONLY)\n\
        n = int(sys.argv[2])\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.mmap.restype = ctypes.c_void_p\n\
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
        p = libc.mmap(None, n, 1, 1, fd, 0)\n\
        if p is None or p == ctypes.c_void_p(-1).value:\n    sys.exit('mmap: errno %d' % ctypes.get_errno())\n\
        sys.stdout.write(ctypes.string_at(p, n).hex())\n";
    let path = format!("/proc/{}/fd/{}", std::process::id(), k.as_raw_fd());
    let o = run_with_timeout(
        std::process::Command::new("python3").args(["-c", PY, &path, &len.to_string()]),
        Duration::from_secs(30),
    );
    if o.status.success() {
        Ok(unhex(String::from_utf8_lossy(&o.stdout).trim()))
    } else {
        Err(format!("{:?}: {}", o.status, text(&o)))
    }
}

/// Records a difference between `got` and `want` (the checks below report every path that
/// failed, not only the first).
fn check(bad: &mut Vec<String>, got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        bad.push(format!("{what}: got {} bytes, want {}, first difference at {at}", got.len(), want.len()));
    }
}

/// [`check`] for numbers.
fn check_eq(bad: &mut Vec<String>, got: u64, want: u64, what: &str) {
    if got != want {
        bad.push(format!("{what}: got {got}, want {want}"));
    }
}

/// Grows the file open as `fd` in the driver by `n` bytes of `pattern(seed)` at its end,
/// through the fast path (checked: not through the kernel).
fn fast_grow(d: &mut Driver, fd: i64, shadow: &mut Vec<u8>, seed: u64, n: usize) {
    let before = live_stat(d, "kernel_cached");
    let at = shadow.len();
    assert_eq!(d.num(&format!("pwrite {fd} {at} {n} {seed}")), n as i64);
    assert_eq!(live_stat(d, "kernel_cached"), before, "the growth went through the kernel, not the fast path");
    shadow.extend_from_slice(&pattern(seed, n, 0));
}

/// Each kernel call, right after the fast path grew (or shrank) the file, sees its size and
/// data: from another process (this one, no preload) and from the preloaded process itself.
/// A call that reads through the page cache (copy_file_range, sendfile, splice, mmap) makes the
/// bridge mark the file, and the fast path steps aside while the kernel file that cached pages
/// is open: each check therefore has its own kernel file, opened before the growth (so that no
/// lookup refreshes the kernel's size in between) and closed after, and the next growth waits
/// for the fast path to come back.
#[allow(clippy::too_many_lines)]
fn kernel_calls_see_fast_path_size(mode: &str, transport: &str) {
    use std::io::Seek;
    let Some(opts) = on_transport(RECOMMENDED, transport) else { return };
    let tag = transport.replace([',', '='], "-");
    let f = Fixture::new(&format!("preload-kcalls-{mode}-{tag}"), "128M", &opts);
    let mut bad: Vec<String> = Vec::new();

    // A writer that fsyncs, closes and exits; then stat and cp from another process at once.
    let w = f.path("written");
    let script = format!(
        "import os\nfd = os.open('{}', os.O_CREAT | os.O_RDWR, 0o644)\n\
         os.write(fd, bytes((i * 7) % 251 for i in range(100000)))\nos.fsync(fd)\nos.close(fd)\n",
        w.display()
    );
    f.preload_ok(mode, "python3", &["-c", &script], 30);
    let want: Vec<u8> = (0..100_000usize).map(|i| ((i * 7) % 251) as u8).collect();
    check_eq(&mut bad, std::fs::metadata(&w).unwrap().len(), 100_000, "stat after the writer exited");
    let o =
        run_with_timeout(std::process::Command::new("cp").arg(&w).arg(f.path("written.cp")), Duration::from_secs(30));
    assert!(o.status.success(), "cp: {}", text(&o));
    check(&mut bad, &std::fs::read(f.path("written.cp")).unwrap(), &want, "cp right after the writer exited");

    // Another process's calls on a file the fast path grows step by step.
    let path = f.path("f");
    let p = path.display().to_string();
    let mut d = Driver::start(&f, mode);
    let fd = d.num(&format!("open {p} rw,creat"));
    let mut shadow: Vec<u8> = Vec::new();
    let kopen = || std::fs::File::open(&path).unwrap();
    let kappend = || std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    // Every kernel file is opened now: a later open could look the name up again, and a lookup
    // refreshes the kernel's attributes.
    let (k1, k2, k3, k4, k5) = (kopen(), kopen(), kopen(), kopen(), kopen());
    let (mut ka1, mut ka2) = (kappend(), kappend());

    fast_grow(&mut d, fd, &mut shadow, 1, 100_000);
    check(&mut bad, &kernel_copy_file_range(&k1, 0, &f.path("copy")), &shadow, "copy_file_range");
    drop(k1);
    wait_for_fast_path(&mut d, fd, "after copy_file_range");

    fast_grow(&mut d, fd, &mut shadow, 2, 30_000);
    check(&mut bad, &kernel_sendfile(&k2, 0, &f.dir.0.join("sent")), &shadow, "sendfile");
    drop(k2);
    wait_for_fast_path(&mut d, fd, "after sendfile");

    fast_grow(&mut d, fd, &mut shadow, 3, 30_000);
    check(&mut bad, &kernel_splice(&k3, 0), &shadow, "splice");
    drop(k3);
    wait_for_fast_path(&mut d, fd, "after splice");

    fast_grow(&mut d, fd, &mut shadow, 4, 30_000);
    match kernel_mmap_in_child(&k4, shadow.len()) {
        Ok(m) => check(&mut bad, &m, &shadow, "mmap in another process"),
        Err(e) => bad.push(format!("mmap in another process: {e}")),
    }
    drop(k4);
    wait_for_fast_path(&mut d, fd, "after mmap");

    fast_grow(&mut d, fd, &mut shadow, 5, 30_000);
    ka1.write_all(b"tail").unwrap();
    shadow.extend_from_slice(b"tail");
    check_eq(&mut bad, ka1.stream_position().unwrap(), shadow.len() as u64, "O_APPEND position");
    drop(ka1);

    let before = live_stat(&mut d, "kernel_cached");
    d.ok(&format!("ftruncate {fd} 150000"));
    shadow.truncate(150_000);
    ka2.write_all(b"end").unwrap();
    shadow.extend_from_slice(b"end");
    check_eq(&mut bad, ka2.stream_position().unwrap(), shadow.len() as u64, "O_APPEND position after ftruncate");
    drop(ka2);

    d.ok(&format!("fallocate {fd} 0 {} 20000", shadow.len()));
    assert_eq!(live_stat(&mut d, "kernel_cached"), before, "ftruncate or fallocate went through the kernel");
    shadow.resize(shadow.len() + 20_000, 0);
    check(&mut bad, &kernel_copy_file_range(&k5, 0, &f.path("copy")), &shadow, "copy_file_range after fallocate");
    drop(k5);
    wait_for_fast_path(&mut d, fd, "after copy_file_range after fallocate");

    fast_grow(&mut d, fd, &mut shadow, 6, 30_000);
    check_eq(&mut bad, std::fs::metadata(&path).unwrap().len(), shadow.len() as u64, "stat from another process");
    check(&mut bad, &std::fs::read(&path).unwrap(), &shadow, "read from another process");
    d.ok(&format!("close {fd}"));

    // The preloaded process's own calls (its fstat is the library's: the kernel is never asked),
    // each on a fresh open of its own file.
    let g = f.path("g");
    let gp = g.display().to_string();
    let out = f.path("out");
    let ofd = d.num(&format!("open {} rw,creat", out.display()));
    let mut shadow: Vec<u8> = Vec::new();
    let fd = d.num(&format!("open {gp} rw,creat"));
    fast_grow(&mut d, fd, &mut shadow, 7, 40_000);
    let n = shadow.len() as u64;
    let copied = d.num(&format!("copy_file_range {fd} 0 {ofd} 0 {}", n + 4096));
    check_eq(&mut bad, copied as u64, n, "own copy_file_range");
    check(
        &mut bad,
        &std::fs::read(&out).unwrap()[..copied as usize],
        &shadow[..copied as usize],
        "own copy_file_range data",
    );
    d.ok(&format!("close {fd}"));
    let fd = reopen_until_fast(&mut d, &gp, "after own copy_file_range");
    fast_grow(&mut d, fd, &mut shadow, 8, 30_000);
    let tail = shadow.len() - 50_000;
    check(&mut bad, &unhex(&d.ok(&format!("sendfile {fd} {tail} 60000"))), &shadow[tail..], "own sendfile");
    d.ok(&format!("close {fd}"));
    let fd = reopen_until_fast(&mut d, &gp, "after own sendfile");
    fast_grow(&mut d, fd, &mut shadow, 9, 30_000);
    let tail = shadow.len() - 50_000;
    check(&mut bad, &unhex(&d.ok(&format!("splice {fd} {tail} 60000"))), &shadow[tail..], "own splice");
    d.ok(&format!("close {fd}"));
    let fd = reopen_until_fast(&mut d, &gp, "after own splice");
    // Last: a mapping past the kernel's size kills the driver (SIGBUS), so what failed so far
    // is printed first.
    if !bad.is_empty() {
        eprintln!("so far ({mode}, {transport}):\n{}", bad.join("\n"));
    }
    fast_grow(&mut d, fd, &mut shadow, 10, 30_000);
    let n = shadow.len();
    match d.cmd(&format!("mmapread {fd} 0 {n}")) {
        Ok(v) => check(&mut bad, &unhex(&v), &shadow, "own mmap"),
        Err(e) => bad.push(format!("own mmap: errno {e}")),
    }
    assert!(
        bad.is_empty(),
        "kernel calls that missed the fast path's size or data ({mode}, {transport}):\n{}",
        bad.join("\n")
    );
    let stats = d.finish();
    assert_fast_path_used(&stats, mode);
    assert!(stat_field(&stats, "kernel_sync") >= 10, "the kernel was not told of the sizes: {stats}");
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

#[test]
fn test_kernel_calls_see_fast_path_size_channel_mode_classic() {
    skip_unless_ready!("python3", "cp");
    kernel_calls_see_fast_path_size("channel", "classic");
}

#[test]
fn test_kernel_calls_see_fast_path_size_channel_mode_uring() {
    skip_unless_ready!("python3", "cp");
    kernel_calls_see_fast_path_size("channel", "uring");
}

/// The same with the rings served inside zusd (`serve=zusd`, issue 13 mode (b)): the ring
/// threads' kernel-cache marks are zusd's own. The fast path comes back after the unmark only
/// because the unmark raises zusd's layout generation (the library, told `EUSEKERNEL`, asks
/// again only once it moved): the ring threads' ops now do what a ZT does before its reply
/// (`zt::before_reply`); before, the fast path stayed away whenever the library had been told
/// `EUSEKERNEL` between the kernel's last close and the unmark (1 run in 4 to 10 here).
#[test]
fn test_kernel_calls_see_fast_path_size_channel_mode_uring_served_by_zusd() {
    skip_unless_ready!("python3", "cp");
    kernel_calls_see_fast_path_size("channel", "uring,serve=zusd");
}

#[test]
fn test_kernel_calls_see_fast_path_size_dax_mode_classic() {
    skip_unless_ready!("python3", "cp");
    kernel_calls_see_fast_path_size("dax", "classic");
}

#[test]
fn test_kernel_calls_see_fast_path_size_dax_mode_uring() {
    skip_unless_ready!("python3", "cp");
    kernel_calls_see_fast_path_size("dax", "uring");
}

/// A fast-path client told `EUSEKERNEL` while the kernel caches a file's pages (a shared
/// mapping in this process) gets the fast path back on the same open file once the kernel lets
/// go. The library asks zusd again only once zusd's layout generation moved, and the bridge's
/// unmark is what moves it: on `serve=zusd` the ring threads' unmark moved nothing until issue
/// 13's fix, so the file stayed with the kernel (the same open file: a new one starts afresh).
fn fast_path_returns_to_an_open_file(mode: &str, transport: &str) {
    const LEN: usize = 16 << 10;
    let Some(opts) = on_transport(COHERENT, transport) else { return };
    let tag = transport.replace([',', '='], "-");
    let f = Fixture::new(&format!("preload-back-{mode}-{tag}"), "64M", &opts);
    let path = f.path("back");
    let p = path.display().to_string();
    let shadow = pattern(1, LEN, 0);
    std::fs::write(&path, &shadow).unwrap();
    let mut d = Driver::start(&f, mode);
    let fd = reopen_until_fast(&mut d, &p, "before the mapping");
    // Every page faulted in: the bridge marked the inode before the first fill.
    let map = kernel_map(&path, LEN);
    same(&map.bytes(0..LEN), &shadow, &format!("the mapping ({mode}, {transport})"));
    // One byte (no whole page: the driver's own file fills no page of the kernel's).
    let before = live_stat(&mut d, "kernel_cached");
    d.ok(&format!("pread {fd} 0 1"));
    assert_eq!(live_stat(&mut d, "kernel_cached"), before + 1, "a read of the mapped file missed the kernel");
    drop(map);
    wait_for_fast_path(&mut d, fd, &format!("the same open file after munmap ({mode}, {transport})"));
    d.ok(&format!("close {fd}"));
    assert_fast_path_used(&d.finish(), mode);
}

#[test]
fn test_fast_path_returns_to_an_open_file_channel_mode_classic() {
    skip_unless_ready!();
    fast_path_returns_to_an_open_file("channel", "classic");
}

#[test]
fn test_fast_path_returns_to_an_open_file_channel_mode_uring() {
    skip_unless_ready!();
    fast_path_returns_to_an_open_file("channel", "uring");
}

#[test]
fn test_fast_path_returns_to_an_open_file_channel_mode_uring_served_by_zusd() {
    skip_unless_ready!();
    fast_path_returns_to_an_open_file("channel", "uring,serve=zusd");
}

#[test]
fn test_fast_path_returns_to_an_open_file_dax_mode_uring_served_by_zusd() {
    skip_unless_ready!();
    fast_path_returns_to_an_open_file("dax", "uring,serve=zusd");
}

/// stat from another process sees what the fast path changed at once on the README's mount,
/// on a file the kernel just created: its CREATE reply must not let the kernel keep the
/// attributes for the entry timeout. fallocate(KEEP_SIZE) changes the blocks, not the size.
fn stat_sees_fast_path_change_after_create(transport: &str) {
    let Some(opts) = on_transport(RECOMMENDED, transport) else { return };
    let f = Fixture::new(&format!("preload-create-{transport}"), "64M", &opts);
    let path = f.path("m");
    drop(std::fs::File::create(&path).unwrap());
    let mut d = Driver::start(&f, "dax");
    let fd = d.num(&format!("open {} rw", path.display()));
    d.ok(&format!("fallocate {fd} {} 0 65536", libc::FALLOC_FL_KEEP_SIZE));
    let md = std::fs::metadata(&path).unwrap();
    assert!(md.blocks() >= 128, "stat shows {} blocks after a 64 KiB fallocate ({transport})", md.blocks());
    assert_eq!(md.len(), 0);
    d.finish();
}

#[test]
fn test_stat_sees_fast_path_change_after_kernel_create_classic() {
    skip_unless_ready!("python3");
    stat_sees_fast_path_change_after_create("classic");
}

#[test]
fn test_stat_sees_fast_path_change_after_kernel_create_uring() {
    skip_unless_ready!("python3");
    stat_sees_fast_path_change_after_create("uring");
}

/// The mount's attribute cache holds for its timeout (a minute by default) only for files no
/// fast-path client writes: a writable file the library attaches gets its cached attributes
/// dropped and no attribute lifetime until it is closed, so stat from another process sees a
/// fast-path overwrite's mtime at once (the size does not move: the library's GETATTR after a
/// size change does not run).
fn stat_sees_fast_path_mtime(transport: &str) {
    let Some(opts) = on_transport("direct_io", transport) else { return };
    let f = Fixture::new(&format!("preload-mtime-{transport}"), "64M", &opts);
    let path = f.path("t");
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let m0 = std::fs::metadata(&path).unwrap().modified().unwrap();
    // Cached now (the lookup's and the stat's replies).
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), m0);
    std::thread::sleep(Duration::from_millis(30));
    let mut d = Driver::start(&f, "channel");
    let fd = d.num(&format!("open {} rw", path.display()));
    for i in 0..3u64 {
        assert_eq!(d.num(&format!("pwrite {fd} 0 4096 {}", 30 + i)), 4096);
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 8192);
        assert!(m.modified().unwrap() > m0, "stat after fast-path overwrite {i} shows the old mtime ({transport})");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_fast_path_used(&d.finish(), "channel");
}

#[test]
fn test_stat_sees_fast_path_mtime_with_attribute_cache_classic() {
    skip_unless_ready!("python3");
    stat_sees_fast_path_mtime("classic");
}

#[test]
fn test_stat_sees_fast_path_mtime_with_attribute_cache_uring() {
    skip_unless_ready!("python3");
    stat_sees_fast_path_mtime("uring");
}

/// With the kernel's attribute cache on (attr_timeout of 1 s, the default), stat from another
/// process still sees a size the fast path set, at once.
#[test]
fn test_stat_sees_fast_path_size_with_attribute_cache() {
    skip_unless_ready!("python3");
    let f = Fixture::new("preload-attrcache", "64M", "direct_io");
    let path = f.path("a");
    std::fs::write(&path, b"x").unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1);
    let mut d = Driver::start(&f, "dax");
    let fd = d.num(&format!("open {} rw", path.display()));
    for (i, n) in [5000u64, 70_000, 3000].into_iter().enumerate() {
        if i == 2 {
            d.ok(&format!("ftruncate {fd} {n}"));
        } else {
            assert_eq!(d.num(&format!("pwrite {fd} 0 {n} 1")), n as i64);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), n, "stat after fast-path size change {i}");
    }
    assert_fast_path_used(&d.finish(), "dax");
}
