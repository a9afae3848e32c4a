//! In-process metadata benchmark (issue 17): create / stat / readdir / rename / unlink / mkdir /
//! rmdir on `pmemfs::Fs` directly (no channel, no mount), 1 and 2 threads, one shared directory
//! or many, next to tmpfs (the same operations through `std::fs` on /dev/shm) measured in the
//! same run. `cargo bench -p pmemfs --bench meta [-- --quick]`.
//!
//! Three columns per row: pmemfs on a /dev/shm file mapped MAP_SHARED (flushes are real
//! CLWB/CLFLUSHOPT, fences real SFENCE; every namespace op is durable on return), the same code
//! over a backend whose flush and fence do nothing (what the op costs without its persistence
//! instructions: DRAM index, locks, hashing, allocation, record encoding), and tmpfs (which pays
//! a system call and the VFS per op, and persists nothing). Times are wall time over all
//! threads' operations divided by the operations (µs per op; with 2 threads the inverse of the
//! combined rate). Medians of interleaved rounds: the 2-vCPU VM drifts over seconds.
//!
//! `META_DEV_MIB` (default 1024) and `META_INODES` (default 400,000) size the two pmemfs devices,
//! for a machine with less /dev/shm (a qemu guest with `--quick`: 256 and 50,000 fit in 2 GiB).
//!
//! `META_SWITCH=1`: every op comes right after a one-byte ping-pong with another process (a `cat`
//! per thread), as an op served for another process through the kernel does; the ping-pong alone
//! is measured too and taken off. Run it under `taskset -c 0` so that the hand-off is on one CPU,
//! and read the 1-thread rows. The difference from a plain run is what a process switch costs the
//! op after it (caches and TLB refilled): a few % on hardware, most of an op under qemu's TCG.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use pmemfs::{Fs, MkfsOptions};
use zus_pmem::{DataSink, DataSource, MappedPmem, Persist, Result as PmResult, flush_kind};

const ROOT: u64 = 1;
/// Directories per thread in the "many directories" layout.
const MANY: usize = 64;

/// A backend that forwards everything but makes flush and fence no-ops: the op's cost without
/// its persistence instructions (not crash-safe; measurement only).
struct NoFlush(MappedPmem);

impl Persist for NoFlush {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> PmResult<()> {
        self.0.read(off, buf)
    }
    fn store(&self, off: u64, data: &[u8]) -> PmResult<()> {
        self.0.store(off, data)
    }
    fn flush(&self, _off: u64, _len: u64) -> PmResult<()> {
        Ok(())
    }
    fn fence(&self) {}
    fn nt_store(&self, off: u64, data: &[u8]) -> PmResult<()> {
        self.0.store(off, data)
    }
    fn nt_zero(&self, off: u64, len: u64) -> PmResult<()> {
        self.0.store(off, &vec![0u8; len as usize])
    }
    fn write_from(&self, off: u64, src: &dyn DataSource, so: usize, len: usize, nt: bool) -> PmResult<()> {
        self.0.write_from(off, src, so, len, nt)
    }
    fn read_into(&self, off: u64, dst: &dyn DataSink, d: usize, len: usize) -> PmResult<()> {
        self.0.read_into(off, dst, d, len)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    OneDir,
    ManyDirs,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Layout::OneDir => "one dir",
            Layout::ManyDirs => "64 dirs/thread",
        }
    }
}

const OPS: [&str; 7] = ["create", "stat", "readdir (per entry)", "rename", "unlink", "mkdir", "rmdir"];

/// The operations under test, on one filesystem.
trait Target: Sync {
    type Dir: Copy + Send + Sync;
    fn mkdir(&self, parent: Self::Dir, name: &str) -> Self::Dir;
    fn root(&self) -> Self::Dir;
    fn rmdir(&self, parent: Self::Dir, name: &str);
    fn create(&self, d: Self::Dir, name: &str);
    fn stat(&self, d: Self::Dir, name: &str);
    fn rename(&self, d: Self::Dir, from: &str, to: &str);
    fn unlink(&self, d: Self::Dir, name: &str);
    /// Entries listed.
    fn readdir(&self, d: Self::Dir) -> usize;
}

impl<P: Persist> Target for Fs<P> {
    type Dir = u64;
    fn root(&self) -> u64 {
        ROOT
    }
    fn mkdir(&self, parent: u64, name: &str) -> u64 {
        Fs::mkdir(self, parent, name.as_bytes(), 0o755, 0, 0).unwrap().ino
    }
    fn rmdir(&self, parent: u64, name: &str) {
        Fs::rmdir(self, parent, name.as_bytes()).unwrap();
    }
    fn create(&self, d: u64, name: &str) {
        Fs::create(self, d, name.as_bytes(), 0o644, 0, 0).unwrap();
    }
    fn stat(&self, d: u64, name: &str) {
        std::hint::black_box(self.lookup(d, name.as_bytes()).unwrap());
    }
    fn rename(&self, d: u64, from: &str, to: &str) {
        Fs::rename(self, d, from.as_bytes(), d, to.as_bytes(), 0).unwrap();
    }
    fn unlink(&self, d: u64, name: &str) {
        Fs::unlink(self, d, name.as_bytes()).unwrap();
    }
    fn readdir(&self, d: u64) -> usize {
        let mut cookie = 0;
        let mut n = 0;
        loop {
            let v = Fs::readdir(self, d, cookie, 256).unwrap();
            let Some(last) = v.last() else { return n };
            cookie = last.next;
            n += v.len();
        }
    }
}

/// tmpfs through std::fs; a directory is an index into `dirs`.
struct Tmpfs {
    root: PathBuf,
    dirs: std::sync::RwLock<Vec<PathBuf>>,
}

impl Tmpfs {
    fn path(&self, d: usize, name: &str) -> PathBuf {
        self.dirs.read().unwrap()[d].join(name)
    }
}

impl Target for Tmpfs {
    type Dir = usize;
    fn root(&self) -> usize {
        0
    }
    fn mkdir(&self, parent: usize, name: &str) -> usize {
        let p = self.path(parent, name);
        std::fs::create_dir(&p).unwrap();
        let mut v = self.dirs.write().unwrap();
        v.push(p);
        v.len() - 1
    }
    fn rmdir(&self, parent: usize, name: &str) {
        std::fs::remove_dir(self.path(parent, name)).unwrap();
    }
    fn create(&self, d: usize, name: &str) {
        drop(std::fs::File::create(self.path(d, name)).unwrap());
    }
    fn stat(&self, d: usize, name: &str) {
        std::hint::black_box(std::fs::symlink_metadata(self.path(d, name)).unwrap());
    }
    fn rename(&self, d: usize, from: &str, to: &str) {
        std::fs::rename(self.path(d, from), self.path(d, to)).unwrap();
    }
    fn unlink(&self, d: usize, name: &str) {
        std::fs::remove_file(self.path(d, name)).unwrap();
    }
    fn readdir(&self, d: usize) -> usize {
        let p = self.dirs.read().unwrap()[d].clone();
        std::fs::read_dir(&p).unwrap().map(|e| drop(std::hint::black_box(e.unwrap()))).count()
    }
}

/// CPU time of the calling thread, in µs.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Whether each op runs right after a process switch (`META_SWITCH=1`).
fn switching() -> bool {
    std::env::var_os("META_SWITCH").is_some()
}

/// A process to hand the CPU to before each op (`META_SWITCH=1`): `cat` echoes each byte.
struct Partner(Option<(std::process::Child, std::process::ChildStdin, std::process::ChildStdout)>);

impl Partner {
    fn new() -> Self {
        if !switching() {
            return Partner(None);
        }
        let mut c = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("META_SWITCH: run cat");
        let (i, o) = (c.stdin.take().unwrap(), c.stdout.take().unwrap());
        Partner(Some((c, i, o)))
    }

    /// One byte there and back: this thread sleeps while the partner runs.
    fn ping(&mut self) {
        use std::io::{Read, Write};
        if let Some((_, i, o)) = &mut self.0 {
            let mut b = [1u8];
            i.write_all(&b).unwrap();
            o.read_exact(&mut b).unwrap();
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        if let Some((mut c, i, o)) = self.0.take() {
            drop((i, o));
            let _ = c.wait();
        }
    }
}

/// (wall µs per op, CPU µs per op) of `f(thread, i)` for i in 0..n on each of `t` threads: wall
/// time over all ops (with 2 threads the inverse of the combined rate), and the CPU time the
/// threads used per op (what other tenants of this shared VM disturb least). With a partner
/// (`META_SWITCH=1`) each op follows a ping-pong, whose own cost is taken off.
fn timed(t: usize, n: usize, f: impl Fn(usize, usize) + Sync) -> (f64, f64) {
    let run = |f: &(dyn Fn(usize, usize) + Sync)| {
        let start = Instant::now();
        let cpu: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..t)
                .map(|k| {
                    s.spawn(move || {
                        let mut partner = Partner::new();
                        let c = thread_cpu_us();
                        for i in 0..n {
                            partner.ping();
                            f(k, i);
                        }
                        thread_cpu_us() - c
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        (start.elapsed().as_secs_f64() * 1e6 / (t * n) as f64, cpu / (t * n) as f64)
    };
    let (w, c) = run(&f);
    if !switching() {
        return (w, c);
    }
    let (w0, c0) = run(&|_, _| ());
    (w - w0, c - c0)
}

/// One round of every op on `fs`: µs per op, in the order of `OPS`.
fn round<T: Target>(fs: &T, tag: &str, threads: usize, layout: Layout, n: usize) -> [(f64, f64); 7] {
    // Directories: per thread, one shared (OneDir) or MANY of its own.
    let top = fs.mkdir(fs.root(), &format!("{tag}-top"));
    let shared = fs.mkdir(top, "shared");
    let dirs: Vec<Vec<T::Dir>> = (0..threads)
        .map(|k| match layout {
            Layout::OneDir => vec![shared],
            Layout::ManyDirs => (0..MANY).map(|j| fs.mkdir(top, &format!("t{k}-d{j}"))).collect(),
        })
        .collect();
    let dir = |k: usize, i: usize| dirs[k][i % dirs[k].len()];
    // The names are made before the clock starts: formatting them in the loop timed the
    // threads' contention on malloc, not the filesystem's.
    let names = |f: fn(usize, usize) -> String| -> Vec<Vec<String>> {
        (0..threads).map(|k| (0..n).map(|i| f(k, i)).collect()).collect()
    };
    let (names, rnames) = (names(|k, i| format!("t{k}-file-{i:07}")), names(|k, i| format!("t{k}-renamed-{i:07}")));
    let name = |k: usize, i: usize| names[k][i].as_str();
    let rname = |k: usize, i: usize| rnames[k][i].as_str();
    let mut r = [(0f64, 0f64); 7];
    r[0] = timed(threads, n, |k, i| fs.create(dir(k, i), name(k, i)));
    r[1] = timed(threads, n, |k, i| fs.stat(dir(k, i), name(k, i)));
    {
        // Each thread lists its own directories (all threads list the shared one).
        let start = Instant::now();
        let dirs = &dirs;
        let (total, cpu) = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|k| {
                    s.spawn(move || {
                        let c = thread_cpu_us();
                        let n = dirs[k].iter().map(|&d| fs.readdir(d)).sum::<usize>();
                        (n, thread_cpu_us() - c)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).fold((0usize, 0f64), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        let total = total.max(1) as f64;
        r[2] = (start.elapsed().as_secs_f64() * 1e6 / total, cpu / total);
    }
    r[3] = timed(threads, n, |k, i| fs.rename(dir(k, i), name(k, i), rname(k, i)));
    r[4] = timed(threads, n, |k, i| fs.unlink(dir(k, i), rname(k, i)));
    let dn = n / 4;
    r[5] = timed(threads, dn, |k, i| {
        fs.mkdir(dir(k, i), name(k, i));
    });
    r[6] = timed(threads, dn, |k, i| fs.rmdir(dir(k, i), name(k, i)));
    for (k, ds) in dirs.iter().enumerate() {
        if layout == Layout::ManyDirs {
            for j in 0..ds.len() {
                fs.rmdir(top, &format!("t{k}-d{j}"));
            }
        }
    }
    fs.rmdir(top, "shared");
    fs.rmdir(fs.root(), &format!("{tag}-top"));
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn shm_pmem(path: &Path, len: u64) -> MappedPmem {
    let pm = MappedPmem::open_file(path, Some(len)).expect("map /dev/shm file");
    // Touch every page first: real pmem does not page-fault, a fresh /dev/shm file does.
    pm.nt_zero(0, pm.len()).unwrap();
    pm.fence();
    let _ = std::fs::remove_file(path); // the mapping keeps it alive
    pm
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let n: usize = if quick { 5_000 } else { 20_000 };
    let pid = std::process::id();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let dev = env("META_DEV_MIB", 1024) << 20;
    let opts = MkfsOptions { inodes: Some(env("META_INODES", 400_000)), shards: None };
    let pm = shm_pmem(Path::new(&format!("/dev/shm/pmemfs-meta-{pid}")), dev);
    let mode = pm.map_mode();
    let fs = Fs::mkfs(pm, &opts).unwrap();
    if let Some(t) = std::env::var_os("META_PROFILE") {
        // For `perf record`: only pmemfs rounds, 64 directories per thread, on META_PROFILE
        // threads (1 if it is not a number).
        let t = t.to_str().and_then(|t| t.parse().ok()).unwrap_or(1);
        for r in 0..10 {
            round(&fs, &format!("p{r}"), t, Layout::ManyDirs, 20_000);
        }
        return;
    }
    let nf = Fs::mkfs(NoFlush(shm_pmem(Path::new(&format!("/dev/shm/pmemfs-metanf-{pid}")), dev)), &opts).unwrap();
    let troot = PathBuf::from(format!("/dev/shm/meta-bench-{pid}"));
    std::fs::create_dir_all(&troot).unwrap();
    let tmp = Tmpfs { root: troot.clone(), dirs: std::sync::RwLock::new(vec![troot]) };

    let cfgs = [(1, Layout::OneDir), (2, Layout::OneDir), (1, Layout::ManyDirs), (2, Layout::ManyDirs)];
    // res[cfg][target][op] = (wall, cpu) samples
    let mut res = vec![vec![vec![Vec::new(); OPS.len()]; 3]; cfgs.len()];
    for r in 0..rounds {
        for (ci, &(t, l)) in cfgs.iter().enumerate() {
            let tag = format!("r{r}c{ci}");
            let a = round(&fs, &tag, t, l, n);
            let b = round(&nf, &tag, t, l, n);
            let c = round(&tmp, &tag, t, l, n);
            for (ti, v) in [a, b, c].iter().enumerate() {
                for (oi, x) in v.iter().enumerate() {
                    res[ci][ti][oi].push(*x);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp.root);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pmemfs in-process metadata ({rounds} rounds x {n} ops per thread (mkdir/rmdir: {}), medians; flush = {:?}, \
         map = {mode:?}; load average {}){}",
        n / 4,
        flush_kind(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if switching() {
            "; META_SWITCH: each op after a process switch, the ping-pong's own time taken off"
        } else {
            ""
        }
    );
    println!(
        "| op | threads | layout | pmemfs µs/op wall (CPU) | pmemfs, flush+fence off | tmpfs µs/op wall (CPU) | \
         pmemfs speed vs tmpfs (wall) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let med = |v: &Vec<(f64, f64)>| (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()));
    for (oi, op) in OPS.iter().enumerate() {
        for (ci, &(t, l)) in cfgs.iter().enumerate() {
            let (p, pc) = med(&res[ci][0][oi]);
            let (q, qc) = med(&res[ci][1][oi]);
            let (m, mc) = med(&res[ci][2][oi]);
            println!(
                "| {op} | {t} | {} | {p:.2} ({pc:.2}) | {q:.2} ({qc:.2}) | {m:.2} ({mc:.2}) | {:.1}x |",
                l.label(),
                m / p
            );
        }
    }
    // Scaling: the combined rate of 2 threads over 1, per op.
    for (label, c1, c2) in [("one dir", 0, 1), ("64 dirs/thread", 2, 3)] {
        print!("scaling 2 threads / 1 thread ({label}), pmemfs [tmpfs]:");
        for (oi, op) in OPS.iter().enumerate() {
            let (p1, p2) = (med(&res[c1][0][oi]).0, med(&res[c2][0][oi]).0);
            let (m1, m2) = (med(&res[c1][2][oi]).0, med(&res[c2][2][oi]).0);
            print!(" {op} {:.2}x [{:.2}x];", p1 / p2, m1 / m2);
        }
        println!();
    }
    let (c, cc) = med(&res[2][0][0]);
    println!("target: create (durable on return) <= 5 µs in-process: {c:.2} µs wall, {cc:.2} µs CPU");
}
