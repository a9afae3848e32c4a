//! The preload fast path against tmpfs and classic FUSE (bindfs), one run, same machine:
//!
//! - fio 4 KiB randwrite and randread, `--direct=1 --sync=1 --ioengine=psync`, 1/2/4/8 jobs, for
//!   kernel tmpfs, bindfs over tmpfs, pmemfs under `zufs run --mode channel` (default data
//!   policy), the same with one copy for every size (`ZUFS_DATA=remote`) and with the two-copy
//!   window fallback for every size (`ZUFS_DATA=window`), and `--mode dax`;
//! - the scatter-gather shape: preadv/pwritev of 32 x 4 KiB with O_DIRECT, one call per op, by a
//!   worker mode of this same binary (re-executed under `zufs run`).
//!
//! `cargo bench -p zufs-tests --bench preload_fio` (needs root, /dev/fuse, fio; bindfs optional).
//! `ZUFS_BENCH_SECS` sets the seconds per point (default 5); `ZUFS_BENCH_JOBS` the job counts.
//! Prints a markdown table and writes it to `target/<profile>/preload-bench.md`.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, artifact, plugin_dir, target_dir};

const SG_SEGS: usize = 32;
const SG_SEG: usize = 4096;
const SG_FILE: u64 = 64 << 20;

/// Worker: `--sg-worker PATH SECS write|read` runs preadv/pwritev of 32 x 4 KiB with O_DIRECT at
/// random 128 KiB-aligned offsets and prints `MBPS <value>`.
#[allow(unsafe_code)]
fn sg_worker(path: &str, secs: f64, write: bool) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(Path::new(path).as_os_str().as_bytes()).unwrap();
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_DIRECT, 0o644) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    let layout = std::alloc::Layout::from_size_align(SG_SEGS * SG_SEG, 4096).unwrap();
    // SAFETY: non-zero size layout; freed never (the process exits).
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    for i in 0..SG_SEGS * SG_SEG {
        // SAFETY: inside the allocation.
        unsafe { *buf.add(i) = (i % 251) as u8 };
    }
    let iov: Vec<libc::iovec> = (0..SG_SEGS)
        // SAFETY: each segment lies inside the allocation.
        .map(|i| libc::iovec { iov_base: unsafe { buf.add(i * SG_SEG) }.cast(), iov_len: SG_SEG })
        .collect();
    let chunk = (SG_SEGS * SG_SEG) as u64;
    // Lay the file out once.
    let mut off = 0;
    while off < SG_FILE {
        // SAFETY: iovecs over our buffer.
        let n = unsafe { libc::pwritev(fd, iov.as_ptr(), SG_SEGS as i32, off as i64) };
        assert_eq!(n, chunk as isize, "layout pwritev: {}", std::io::Error::last_os_error());
        off += chunk;
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let end = Duration::from_secs_f64(secs);
    while t0.elapsed() < end {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % (SG_FILE / chunk)) * chunk;
            // SAFETY: iovecs over our buffer.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, iov.as_ptr(), SG_SEGS as i32, at as i64)
                } else {
                    libc::preadv(fd, iov.as_ptr(), SG_SEGS as i32, at as i64)
                }
            };
            assert_eq!(n, chunk as isize, "sg op: {}", std::io::Error::last_os_error());
            bytes += chunk;
        }
    }
    let mbps = bytes as f64 / t0.elapsed().as_secs_f64() / 1e6;
    println!("MBPS {mbps:.1}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cfg {
    Tmpfs,
    Bindfs,
    Channel,
    Remote,
    Window,
    Dax,
}

impl Cfg {
    fn name(self) -> &'static str {
        match self {
            Cfg::Tmpfs => "kernel tmpfs",
            Cfg::Bindfs => "bindfs (classic FUSE)",
            Cfg::Channel => "preload channel (default data policy auto)",
            Cfg::Remote => "preload channel, one copy (ZUFS_DATA=remote)",
            Cfg::Window => "preload channel, window fallback (2 copies)",
            Cfg::Dax => "preload dax",
        }
    }
}

struct Setup {
    _dir: TempDir,
    zusd: Zusd,
    plugins: PathBuf,
    run_dir: PathBuf,
    tmpfs: PathBuf,
    bindfs: Option<PathBuf>,
    bind_src: PathBuf,
    mnt: PathBuf,
    dev: PathBuf,
}

impl Setup {
    fn zufs(&self) -> Command {
        let mut c = Command::new(artifact("zufs"));
        c.arg("--socket").arg(&self.zusd.socket).arg("--plugins").arg(&self.plugins);
        c.env("ZUFS_RUN_DIR", &self.run_dir).env("ZUFS_ZUSD", artifact("zusd"));
        c
    }

    fn dir(&self, cfg: Cfg) -> Option<PathBuf> {
        match cfg {
            Cfg::Tmpfs => Some(self.tmpfs.clone()),
            Cfg::Bindfs => self.bindfs.clone(),
            Cfg::Channel | Cfg::Remote | Cfg::Window | Cfg::Dax => Some(self.mnt.clone()),
        }
    }

    /// The command for `prog` in configuration `cfg`.
    fn cmd(&self, cfg: Cfg, prog: &Path) -> Command {
        match cfg {
            Cfg::Tmpfs | Cfg::Bindfs => Command::new(prog),
            Cfg::Channel | Cfg::Remote | Cfg::Window | Cfg::Dax => {
                let mut c = self.zufs();
                let mode = if cfg == Cfg::Dax { "dax" } else { "channel" };
                c.args(["run", "--mode", mode, "--"]).arg(prog);
                match cfg {
                    Cfg::Window => c.env("ZUFS_DATA", "window"),
                    Cfg::Remote => c.env("ZUFS_DATA", "remote"),
                    _ => &mut c,
                };
                c
            }
        }
    }
}

fn ok(c: &mut Command) -> String {
    let o = c.output().expect("spawn");
    assert!(o.status.success(), "{c:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn which(p: &str) -> Option<PathBuf> {
    let o = Command::new("bash").arg("-c").arg(format!("command -v {p}")).output().ok()?;
    o.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

struct Point {
    iops: f64,
    mean_us: f64,
    p99_us: f64,
}

fn fio(s: &Setup, cfg: Cfg, rw: &str, jobs: usize, secs: u64) -> Option<Point> {
    let dir = s.dir(cfg)?.join(format!("fio-{rw}-{jobs}"));
    std::fs::create_dir_all(&dir).ok()?;
    let fio = which("fio")?;
    let out = ok(s.cmd(cfg, &fio).args([
        "--name=b",
        &format!("--directory={}", dir.display()),
        "--ioengine=psync",
        &format!("--rw={rw}"),
        "--bs=4k",
        "--size=64m",
        &format!("--numjobs={jobs}"),
        "--direct=1",
        "--sync=1",
        "--time_based",
        &format!("--runtime={secs}"),
        "--ramp_time=1",
        "--group_reporting",
        "--output-format=json",
    ]));
    let _ = std::fs::remove_dir_all(&dir);
    let start = out.find('{')?;
    let v: serde_json::Value = serde_json::from_str(&out[start..]).ok()?;
    let j = &v["jobs"][0][if rw.contains("write") { "write" } else { "read" }];
    Some(Point {
        iops: j["iops"].as_f64()?,
        mean_us: j["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        p99_us: j["clat_ns"]["percentile"]["99.000000"].as_f64().unwrap_or(0.0) / 1000.0,
    })
}

fn sg(s: &Setup, cfg: Cfg, write: bool, secs: u64) -> Option<f64> {
    let file = s.dir(cfg)?.join("sg.dat");
    let me = std::env::current_exe().ok()?;
    let out = ok(s.cmd(cfg, &me).arg("--sg-worker").arg(&file).arg(secs.to_string()).arg(if write {
        "write"
    } else {
        "read"
    }));
    out.lines().find_map(|l| l.strip_prefix("MBPS ")).and_then(|v| v.trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--sg-worker") {
        sg_worker(&args[2], args[3].parse().unwrap(), args[4] == "write");
        return;
    }
    if args.iter().any(|a| a == "--list") || args.iter().any(|a| a == "--test") {
        return; // `cargo test --benches` / listing: nothing to run
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() || which("fio").is_none() {
        eprintln!("SKIPPED: needs root, /dev/fuse and fio");
        return;
    }
    let secs: u64 = std::env::var("ZUFS_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let jobs: Vec<usize> = std::env::var("ZUFS_BENCH_JOBS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    let dir = TempDir::new("preload-bench");
    let plugins = plugin_dir(&dir.0, &["pmemfs"]);
    let zusd = Zusd::start(&dir.0, &plugins, &[]);
    let pid = std::process::id();
    let tmpfs = PathBuf::from(format!("/dev/shm/zufs-preload-bench-tmpfs-{pid}"));
    let bind_src = PathBuf::from(format!("/dev/shm/zufs-preload-bench-bindsrc-{pid}"));
    std::fs::create_dir_all(&tmpfs).unwrap();
    std::fs::create_dir_all(&bind_src).unwrap();
    let bmnt = dir.0.join("bindfs");
    std::fs::create_dir_all(&bmnt).unwrap();
    let bindfs = which("bindfs")
        .and_then(|b| Command::new(b).arg(&bind_src).arg(&bmnt).status().ok()?.success().then(|| bmnt.clone()));
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let dev = PathBuf::from(format!("/dev/shm/zufs-preload-bench-{pid}.img"));
    let s = Setup { run_dir: dir.0.join("run"), _dir: dir, zusd, plugins, tmpfs, bindfs, bind_src, mnt, dev };
    ok(s.zufs().args(["mkfs", "-t", "pmemfs", "--size", "2G"]).arg(&s.dev));
    ok(s.zufs()
        .args(["mount", "-t", "pmemfs", "-o", "direct_io,attr_timeout=0,entry_timeout=0"])
        .arg(&s.dev)
        .arg(&s.mnt));

    let cfgs = [Cfg::Tmpfs, Cfg::Bindfs, Cfg::Channel, Cfg::Remote, Cfg::Window, Cfg::Dax];
    let mut md = String::new();
    md.push_str(&format!(
        "fio 4 KiB, `--ioengine=psync --direct=1 --sync=1 --size=64m --runtime={secs} --ramp_time=1`, per job count; IOPS (mean / p99 completion latency in µs)\n\n"
    ));
    for rw in ["randwrite", "randread"] {
        md.push_str(&format!("\n**{rw}**\n\n| target |"));
        for j in &jobs {
            md.push_str(&format!(" {j} job{} |", if *j == 1 { "" } else { "s" }));
        }
        md.push_str(" 2 jobs / 1 job |\n|---|");
        for _ in &jobs {
            md.push_str("---|");
        }
        md.push_str("---|\n");
        let mut base: Vec<f64> = Vec::new();
        let mut fuse: Vec<f64> = Vec::new();
        let mut rows = Vec::new();
        for cfg in cfgs {
            let mut row = format!("| {} |", cfg.name());
            let mut iops = Vec::new();
            for &j in &jobs {
                let t0 = Instant::now();
                match fio(&s, cfg, rw, j, secs) {
                    Some(p) => {
                        eprintln!("{rw} {} {j} jobs: {:.0} IOPS ({:?})", cfg.name(), p.iops, t0.elapsed());
                        row.push_str(&format!(" {:.0}K ({:.2} / {:.2}) |", p.iops / 1000.0, p.mean_us, p.p99_us));
                        iops.push(p.iops);
                    }
                    None => {
                        row.push_str(" n/a |");
                        iops.push(f64::NAN);
                    }
                }
            }
            let scale = match (jobs.iter().position(|&j| j == 1), jobs.iter().position(|&j| j == 2)) {
                (Some(a), Some(b)) => format!("{:.2}x", iops[b] / iops[a]),
                _ => "-".into(),
            };
            row.push_str(&format!(" {scale} |\n"));
            if cfg == Cfg::Tmpfs {
                base.clone_from(&iops);
            }
            if cfg == Cfg::Bindfs {
                fuse.clone_from(&iops);
            }
            rows.push((cfg, row, iops));
        }
        for (_, row, _) in &rows {
            md.push_str(row);
        }
        md.push_str("\nRatios (IOPS):\n\n| target | vs tmpfs | vs bindfs |\n|---|---|---|\n");
        for (cfg, _, iops) in &rows {
            if matches!(cfg, Cfg::Channel | Cfg::Remote | Cfg::Window | Cfg::Dax) {
                let r = |b: &[f64]| {
                    iops.iter().zip(b).map(|(a, b)| format!("{:.2}x", a / b)).collect::<Vec<_>>().join(" / ")
                };
                md.push_str(&format!("| {} | {} | {} |\n", cfg.name(), r(&base), r(&fuse)));
            }
        }
    }
    md.push_str(&format!(
        "\n**scatter-gather**: preadv/pwritev of {SG_SEGS} x 4 KiB, O_DIRECT, one call per op, random 128 KiB-aligned offsets in a 64 MiB file, 1 thread, {secs} s (MB/s)\n\n| target | pwritev | preadv |\n|---|---|---|\n"
    ));
    for cfg in cfgs {
        let w = sg(&s, cfg, true, secs);
        let r = sg(&s, cfg, false, secs);
        let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        eprintln!("sg {}: write {} read {}", cfg.name(), f(w), f(r));
        md.push_str(&format!("| {} | {} | {} |\n", cfg.name(), f(w), f(r)));
    }
    println!("{md}");
    let out = target_dir().join("preload-bench.md");
    let _ = std::fs::write(&out, &md);
    eprintln!("wrote {}", out.display());
    // Clean up: unmount pmemfs and bindfs, remove the tmpfs directories and the device.
    let _ = s.zufs().args(["umount"]).arg(&s.mnt).status();
    if let Some(b) = &s.bindfs {
        let _ = Command::new("fusermount3").arg("-u").arg(b).status();
    }
    let _ = std::fs::remove_dir_all(&s.tmpfs);
    let _ = std::fs::remove_dir_all(&s.bind_src);
    let _ = std::fs::remove_file(&s.dev);
}
