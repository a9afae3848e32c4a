//! fio through the FUSE bridge next to kernel tmpfs and a classic FUSE filesystem, in one run
//! (not a timed test; prints a table with ratios).
//!
//! fio 4 KiB random writes, `--direct=1 --sync=1 --ioengine=psync`, numjobs 1, 2, 4, 8, on:
//! - kernel tmpfs (a fresh tmpfs mount);
//! - bindfs over a tmpfs directory (classic single-threaded FUSE, Debian's bindfs), when installed;
//! - libfuse's `passthrough_ll` over a tmpfs directory, when `ZUFS_PASSTHROUGH_LL` names the built
//!   example (it rejects O_DIRECT writes, so it runs with `--direct=0`; the row says so);
//! - nullfs through the bridge (writes are discarded; fio verify disabled);
//! - pmemfs through the bridge on a DRAM-backed device in /dev/shm, when the plugin is built.
//!
//! Run (root, /dev/fuse, fio): `cargo build --workspace --release && cargo bench -p zufs-tests
//! --bench fuse_fio`. Environment: `ZUFS_FIO_RUNTIME` seconds per cell (default 15; `--short`
//! or `ZUFS_BENCH_SHORT=1`: 3), `ZUFS_FIO_JOBS` (default `1,2,4,8`), `ZUFS_FIO_TARGETS`
//! (comma-separated subset of tmpfs,bindfs,passthrough_ll,nullfs,pmemfs), `ZUFS_FIO_MOUNT_OPTS`
//! (extra `zufs mount -o` options), `ZUFS_BENCH_OUT` (also write the markdown table there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use zufs_tests::TempDir;
use zufs_tests::bench::{ZufsSetup, have, is_root, run, umount};

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    iops: f64,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    error: i64,
}

fn fio(dir: &Path, jobs: usize, runtime: u64, direct: bool) -> Cell {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--rw=randwrite",
            "--bs=4k",
            "--size=64m",
            "--ioengine=psync",
            "--sync=1",
            "--verify=0",
            "--group_reporting",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--directory={}", dir.display()))
        .arg(format!("--numjobs={jobs}"))
        .arg(format!("--runtime={runtime}"))
        .stdin(Stdio::null())
        .output()
        .expect("run fio (is it installed? tests/scripts/fuse-deps.sh)");
    let s = String::from_utf8_lossy(&out.stdout);
    let Some(start) = s.find('{') else {
        eprintln!("fio on {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        return Cell { error: -1, ..Cell::default() };
    };
    let j: serde_json::Value = serde_json::from_str(&s[start..]).expect("fio json");
    let job = &j["jobs"][0];
    let w = &job["write"];
    let pct = |k: &str| w["clat_ns"]["percentile"][k].as_f64().unwrap_or(0.0) / 1000.0;
    Cell {
        iops: w["iops"].as_f64().unwrap_or(0.0),
        mean_us: w["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        error: job["error"].as_i64().unwrap_or(-1),
    }
}

fn machine() -> String {
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{}, {fio}", zufs_tests::bench::machine())
}

struct Target {
    name: String,
    dir: PathBuf,
    direct: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("fuse_fio: bench");
        return;
    }
    if !is_root() || !Path::new("/dev/fuse").exists() || !have("fio") {
        eprintln!("SKIPPED: fuse_fio needs root, /dev/fuse and fio (tests/scripts/fuse-deps.sh installs fio)");
        return;
    }
    let short = args.iter().any(|a| a == "--short") || std::env::var("ZUFS_BENCH_SHORT").is_ok_and(|v| v == "1");
    let runtime: u64 =
        std::env::var("ZUFS_FIO_RUNTIME").ok().and_then(|v| v.parse().ok()).unwrap_or(if short { 3 } else { 15 });
    let jobs: Vec<usize> = std::env::var("ZUFS_FIO_JOBS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    let wanted: Option<Vec<String>> =
        std::env::var("ZUFS_FIO_TARGETS").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let want = |n: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == n));
    let extra_opts = std::env::var("ZUFS_FIO_MOUNT_OPTS").unwrap_or_default();

    let dir = TempDir::new("fuse-fio");
    let mut mounts: Vec<PathBuf> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    // Kernel tmpfs, also the backing store of the classic FUSE filesystems.
    let tmpfs = dir.0.join("tmpfs");
    std::fs::create_dir_all(&tmpfs).expect("mkdir");
    assert!(run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=2g", "zufs-bench"]).arg(&tmpfs)), "mount tmpfs");
    mounts.push(tmpfs.clone());
    if want("tmpfs") {
        let d = tmpfs.join("direct");
        std::fs::create_dir_all(&d).expect("mkdir");
        targets.push(Target { name: "kernel tmpfs".into(), dir: d, direct: true });
    }
    if want("bindfs") && have("bindfs") {
        let src = tmpfs.join("bindfs-src");
        let mnt = dir.0.join("bindfs");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        if run(Command::new("bindfs").arg(&src).arg(&mnt)) {
            mounts.push(mnt.clone());
            targets.push(Target { name: "bindfs (classic FUSE)".into(), dir: mnt, direct: true });
        }
    }
    if want("passthrough_ll")
        && let Some(bin) = std::env::var_os("ZUFS_PASSTHROUGH_LL")
    {
        {
            let src = tmpfs.join("pt-src");
            let mnt = dir.0.join("passthrough");
            std::fs::create_dir_all(&src).expect("mkdir");
            std::fs::create_dir_all(&mnt).expect("mkdir");
            if run(Command::new(bin).arg("-o").arg(format!("source={}", src.display())).arg(&mnt)) {
                mounts.push(mnt.clone());
                targets.push(Target {
                    name: "passthrough_ll (classic FUSE, direct=0)".into(),
                    dir: mnt,
                    direct: false,
                });
            }
        }
    }
    // zusd with the plugins, and the bridge mounts.
    let pmemfs_built = zufs_tests::target_dir().join("libpmemfs.so").exists();
    let mut plugins = vec!["nullfs"];
    if pmemfs_built {
        plugins.push("pmemfs");
    }
    let mut zufs = ZufsSetup::start(&zufs_tests::target_dir(), &dir.0.join("zufs"), &plugins)
        .expect("the nullfs plugin (cargo build --workspace --release)");
    if want("nullfs") {
        let mnt = dir.0.join("nullfs");
        assert!(zufs.mount("nullfs", &extra_opts, "none", &mnt), "zufs mount nullfs");
        targets.push(Target { name: "nullfs via zufs bridge".into(), dir: mnt, direct: true });
    }
    if want("pmemfs") && pmemfs_built {
        let mnt = dir.0.join("pmemfs");
        let dev = zufs.pmemfs_device("bench", "1G");
        assert!(zufs.mount("pmemfs", &extra_opts, &dev, &mnt), "zufs mount pmemfs");
        targets.push(Target { name: "pmemfs via zufs bridge".into(), dir: mnt, direct: true });
    }

    eprintln!("fuse_fio: {} target(s) x jobs {:?}, {runtime} s each", targets.len(), jobs);
    let mut res: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for &j in &jobs {
        for (ti, t) in targets.iter().enumerate() {
            let d = t.dir.join(format!("j{j}"));
            let _ = std::fs::create_dir_all(&d);
            let c = fio(&d, j, runtime, t.direct);
            eprintln!(
                "  {:<40} jobs={j}: {:>10.0} IOPS  mean {:>8.1} us  p99 {:>8.1} us{}",
                t.name,
                c.iops,
                c.mean_us,
                c.p99_us,
                if c.error != 0 { format!("  (fio error {})", c.error) } else { String::new() }
            );
            res.insert((ti, j), c);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    // The table.
    let classic = targets.iter().position(|t| t.name.starts_with("bindfs"));
    let tmpfs_i = targets.iter().position(|t| t.name.starts_with("kernel tmpfs"));
    let mut md = String::new();
    md.push_str(&format!(
        "fio 4 KiB randwrite, --direct=1 --sync=1 --ioengine=psync, {runtime} s per cell, one run; {}\n\n",
        machine()
    ));
    md.push_str("| target | jobs | IOPS | mean µs | p50 µs | p99 µs | × classic FUSE (bindfs) | × tmpfs |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (ti, t) in targets.iter().enumerate() {
        for &j in &jobs {
            let c = res[&(ti, j)];
            let ratio = |o: Option<usize>| {
                o.and_then(|oi| res.get(&(oi, j)))
                    .filter(|b| b.iops > 0.0)
                    .map_or("-".to_owned(), |b| format!("{:.2}", c.iops / b.iops))
            };
            md.push_str(&format!(
                "| {} | {j} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
                t.name,
                c.iops,
                c.mean_us,
                c.p50_us,
                c.p99_us,
                ratio(classic),
                ratio(tmpfs_i)
            ));
        }
    }
    println!("{md}");
    if let Some(p) = std::env::var_os("ZUFS_BENCH_OUT") {
        let _ = std::fs::write(p, &md);
    }

    drop(zufs);
    for m in mounts.iter().rev() {
        umount(m);
    }
    std::thread::sleep(Duration::from_millis(50));
}
