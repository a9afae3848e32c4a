//! Metadata through the FUSE bridge: create, stat and unlink of 20,000 files, on the uring
//! transport (mode (a): each op handed to the caller's CPU's ZT over the channel; mode (b)
//! prototype: `serve=inline`, each op served on the ring thread itself; mode (b): `serve=zusd`,
//! each op served on zusd's ring thread of the caller's CPU), the classic bridge,
//! bindfs and kernel tmpfs, all in one run (a benchmark, not a timed test: it prints a table with
//! ratios against the baselines measured in the same run).
//!
//! One thread, one directory per round: `create` is `open(O_CREAT|O_WRONLY|O_TRUNC)` + `close`
//! (FUSE CREATE, FLUSH, RELEASE), `stat` a `stat(2)` of each file by path (LOOKUP/GETATTR, or the
//! kernel's caches within the mount's attr/entry timeouts), `unlink` an `unlink(2)` of each.
//! Rounds are interleaved across the targets and the median round of each phase is reported.
//!
//! Run (root, /dev/fuse): `cargo build --workspace --release && source scripts/env.sh &&
//! stage_plugins && cargo bench -p zufs-tests --bench fuse_meta`. Environment:
//! `ZUFS_META_FILES` (default 20000), `ZUFS_META_ROUNDS` (default 3; `--short` or
//! `ZUFS_BENCH_SHORT=1`: 2000 files, 1 round), `ZUFS_META_TARGETS` (comma-separated subset of
//! tmpfs,bindfs,classic,uring,uring-inline,uring-zusd), `ZUFS_META_MOUNT_OPTS` (extra `zufs mount -o`
//! options for every zufs mount, e.g. `attr_timeout=0,entry_timeout=0`), `ZUFS_BENCH_OUT`
//! (also write the markdown table there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, artifact, plugin_dir};

fn run(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn have(prog: &str) -> bool {
    Command::new("bash").arg("-c").arg(format!("command -v {prog}")).output().is_ok_and(|o| o.status.success())
}

fn umount(p: &Path) {
    let _ = Command::new("umount").arg(p).status();
    let want = p.display().to_string();
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()));
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{} CPU(s) ({cpu}), kernel {kernel}", zufs_tests::online_cpus())
}

/// Seconds each phase took for `n` files in a fresh directory under `base`.
fn round(base: &Path, r: usize, n: usize) -> [f64; 3] {
    let d = base.join(format!("r{r}"));
    std::fs::create_dir_all(&d).expect("mkdir round dir");
    let names: Vec<PathBuf> = (0..n).map(|i| d.join(format!("f{i:06}"))).collect();
    let t0 = Instant::now();
    for p in &names {
        drop(std::fs::File::create(p).expect("create"));
    }
    let t1 = Instant::now();
    for p in &names {
        let m = std::fs::metadata(p).expect("stat");
        assert!(m.is_file());
    }
    let t2 = Instant::now();
    for p in &names {
        std::fs::remove_file(p).expect("unlink");
    }
    let t3 = Instant::now();
    std::fs::remove_dir(&d).expect("rmdir round dir");
    [(t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64()]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Target {
    id: &'static str,
    name: String,
    dir: PathBuf,
}

#[allow(clippy::too_many_lines)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("fuse_meta: bench");
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: fuse_meta needs root and /dev/fuse");
        return;
    }
    if !zufs_tests::target_dir().join("libpmemfs.so").exists() {
        eprintln!("SKIPPED: fuse_meta needs the pmemfs plugin (cargo build --workspace --release)");
        return;
    }
    let short = args.iter().any(|a| a == "--short") || std::env::var("ZUFS_BENCH_SHORT").is_ok_and(|v| v == "1");
    let env_num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let files = env_num("ZUFS_META_FILES", if short { 2000 } else { 20_000 });
    let rounds = env_num("ZUFS_META_ROUNDS", if short { 1 } else { 3 }).max(1);
    let wanted: Option<Vec<String>> =
        std::env::var("ZUFS_META_TARGETS").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let want = |n: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == n));
    let extra = std::env::var("ZUFS_META_MOUNT_OPTS").unwrap_or_default();
    let uring_ok = Path::new("/sys/module/fuse/parameters/enable_uring").exists();

    let dir = TempDir::new("fuse-meta");
    let mut kmounts: Vec<PathBuf> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let tmpfs = dir.0.join("tmpfs");
    std::fs::create_dir_all(&tmpfs).expect("mkdir");
    assert!(run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1g", "zufs-meta"]).arg(&tmpfs)), "mount tmpfs");
    kmounts.push(tmpfs.clone());
    if want("tmpfs") {
        let d = tmpfs.join("direct");
        std::fs::create_dir_all(&d).expect("mkdir");
        targets.push(Target { id: "tmpfs", name: "kernel tmpfs".into(), dir: d });
    }
    if want("bindfs") && have("bindfs") {
        let src = tmpfs.join("bindfs-src");
        let mnt = dir.0.join("bindfs");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        if run(Command::new("bindfs").arg(&src).arg(&mnt)) {
            kmounts.push(mnt.clone());
            targets.push(Target { id: "bindfs", name: "bindfs (classic FUSE)".into(), dir: mnt });
        }
    }
    let pd = plugin_dir(&dir.0, &["pmemfs"]);
    let zusd = Zusd::start(&dir.0, &pd, &[]);
    let zufs = |args: &[&str]| {
        let ok = run(Command::new(artifact("zufs"))
            .arg("--socket")
            .arg(&zusd.socket)
            .arg("--plugins")
            .arg(&pd)
            .env("ZUFS_RUN_DIR", dir.0.join("run"))
            .args(args));
        assert!(ok, "zufs {args:?} failed");
    };
    let mut zmounts: Vec<PathBuf> = Vec::new();
    let mut devs: Vec<PathBuf> = Vec::new();
    let zufs_targets: [(&'static str, &str, &str); 4] = [
        ("classic", "pmemfs classic bridge", "transport=classic"),
        ("uring", "pmemfs uring (a: ZT over the channel)", "transport=uring"),
        ("uring-inline", "pmemfs uring (b prototype: ring thread in the bridge)", "transport=uring,serve=inline"),
        ("uring-zusd", "pmemfs uring (b: zusd's ring thread)", "transport=uring,serve=zusd"),
    ];
    for (id, name, opts) in zufs_targets {
        if !want(id) {
            continue;
        }
        if id.starts_with("uring") && !uring_ok {
            eprintln!("fuse_meta: {id} skipped: this kernel has no FUSE over io_uring");
            continue;
        }
        let mnt = dir.0.join(id);
        std::fs::create_dir_all(&mnt).expect("mkdir");
        let dev = PathBuf::from(format!("/dev/shm/zufs-meta-{}-{id}.img", std::process::id()));
        let _ = std::fs::remove_file(&dev);
        zufs(&["mkfs", "-t", "pmemfs", "--size", "1G", &dev.display().to_string()]);
        let o = if extra.is_empty() { opts.to_owned() } else { format!("{opts},{extra}") };
        zufs(&["mount", "-t", "pmemfs", "-o", &o, &dev.display().to_string(), &mnt.display().to_string()]);
        zmounts.push(mnt.clone());
        devs.push(dev);
        targets.push(Target { id, name: name.into(), dir: mnt });
    }

    eprintln!("fuse_meta: {} target(s), {files} files, {rounds} round(s)", targets.len());
    let mut secs: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        for (ti, t) in targets.iter().enumerate() {
            let s = round(&t.dir, r, files);
            eprintln!(
                "  round {r} {:<46} create {:>7.3} s  stat {:>7.3} s  unlink {:>7.3} s",
                t.name, s[0], s[1], s[2]
            );
            for (p, v) in s.iter().enumerate() {
                secs.entry((ti, p)).or_default().push(*v);
            }
            secs.entry((ti, 3)).or_default().push(s.iter().sum());
        }
    }
    // Median seconds per (target, phase); phase 3 is the sum of the three.
    let med: BTreeMap<(usize, usize), f64> = secs.into_iter().map(|(k, mut v)| (k, median(&mut v))).collect();
    let rate = |ti: usize, p: usize| {
        let n = if p == 3 { 3 * files } else { files };
        #[allow(clippy::cast_precision_loss)]
        let r = n as f64 / med[&(ti, p)].max(1e-9);
        r
    };
    let classic = targets.iter().position(|t| t.id == "classic");
    let tmpfs_i = targets.iter().position(|t| t.id == "tmpfs");
    let mut md = format!(
        "{files} files, create/stat/unlink in one thread, median of {rounds} round(s); zufs mounts: pmemfs on a 1 GiB \
         /dev/shm device, -o transport=...{}; {}\n\n",
        if extra.is_empty() { String::new() } else { format!(",{extra}") },
        machine()
    );
    md.push_str(
        "| target | create/s | stat/s | unlink/s | all ops/s | µs per file (3 ops) | × classic bridge | × tmpfs |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (ti, t) in targets.iter().enumerate() {
        let ratio = |o: Option<usize>| o.map_or("-".to_owned(), |oi| format!("{:.2}", rate(ti, 3) / rate(oi, 3)));
        #[allow(clippy::cast_precision_loss)]
        let us = med[&(ti, 3)] * 1e6 / files as f64;
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {us:.1} | {} | {} |\n",
            t.name,
            rate(ti, 0),
            rate(ti, 1),
            rate(ti, 2),
            rate(ti, 3),
            ratio(classic),
            ratio(tmpfs_i)
        ));
    }
    md.push_str("\nPer phase, × classic bridge (create / stat / unlink):");
    if let Some(ci) = classic {
        for (ti, t) in targets.iter().enumerate() {
            md.push_str(&format!(
                "\n- {}: {:.2} / {:.2} / {:.2}",
                t.name,
                rate(ti, 0) / rate(ci, 0),
                rate(ti, 1) / rate(ci, 1),
                rate(ti, 2) / rate(ci, 2)
            ));
        }
    }
    md.push('\n');
    println!("{md}");
    if let Some(p) = std::env::var_os("ZUFS_BENCH_OUT") {
        let _ = std::fs::write(p, &md);
    }

    for m in zmounts {
        zufs(&["umount", &m.display().to_string()]);
    }
    drop(zusd);
    for d in devs {
        let _ = std::fs::remove_file(d);
    }
    for m in kmounts.iter().rev() {
        umount(m);
    }
    std::thread::sleep(Duration::from_millis(50));
}
