//! `zufs bench` end to end: a short real run produces the table, JSON and plots, reports what it
//! cannot run as missing (never a made-up figure), and cleans up after Ctrl-C.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, artifact};

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success())
}

fn usable() -> bool {
    if !have("fio") {
        eprintln!("SKIPPED: fio is not installed");
        return false;
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: /dev/fuse is absent");
        return false;
    }
    true
}

fn mounts_mentioning(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(s))
        .map(str::to_owned)
        .collect()
}

#[test]
fn test_bench_short_run_writes_table_json_and_plots() {
    if !usable() {
        return;
    }
    let out = TempDir::new("bench-out");
    let o = Command::new(artifact("zufs"))
        .args(["bench", "--threads", "1,2", "--runtime", "1", "--file-mib", "8", "--rw", "randwrite"])
        .args(["--configs", "tmpfs,nullfs-bridge,preload-dax"])
        .arg("--out")
        .arg(&out.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| threads | tmpfs | nullfs bridge | pmemfs preload dax |"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("results.json")).unwrap()).unwrap();
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    for c in cells {
        let cfg = c["config"].as_str().unwrap();
        let outcome = &c["outcome"];
        if let Some(m) = outcome.get("Measured") {
            assert!(m["iops"].as_f64().unwrap() > 0.0, "{cfg}: measured zero IOPS: {c}");
            assert!(m["mean_us"].as_f64().unwrap() > 0.0, "{cfg}: zero latency: {c}");
        } else {
            // Only a configuration that does not exist yet may be missing, and it must say why.
            assert_eq!(cfg, "PreloadDax", "{cfg} did not run: {c}");
            assert!(!outcome["Missing"].as_str().unwrap_or("").is_empty() || outcome.get("Failed").is_some(), "{c}");
        }
        if cfg != "PreloadDax" {
            assert!(outcome.get("Measured").is_some(), "{cfg} must run: {c}");
        }
    }
    let md = std::fs::read_to_string(out.0.join("results.md")).unwrap();
    assert!(md.contains("| 1 |") && md.contains("| 2 |") && md.contains("Machine:"), "{md}");
    for f in ["4k-random-write-rate.png", "4k-random-write-latency.png"] {
        let meta = std::fs::metadata(out.0.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 10_000, "{f} is only {} bytes", meta.len());
    }
    assert!(std::fs::read_dir(out.0.join("raw")).unwrap().count() >= 4, "raw fio JSON missing");
    assert!(mounts_mentioning("zufs-bench").is_empty(), "mounts left behind: {:?}", mounts_mentioning("zufs-bench"));
}

#[test]
fn test_bench_ctrl_c_cleans_up_everything() {
    if !usable() {
        return;
    }
    let out = TempDir::new("bench-int");
    let mut child = Command::new(artifact("zufs"))
        .args(["bench", "--threads", "1,2,4", "--runtime", "3", "--file-mib", "8", "--rw", "randwrite"])
        .args(["--configs", "tmpfs,fuse,pmemfs-bridge"])
        .arg("--out")
        .arg(&out.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the mounts exist, then interrupt.
    let t0 = Instant::now();
    while mounts_mentioning(&format!("zufs-bench-{pid}")).is_empty() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "bench did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!st.success(), "an interrupted bench must not report success");
    let left = mounts_mentioning(&format!("zufs-bench-{pid}"));
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    assert!(!std::path::Path::new(&format!("/dev/shm/zufs-bench-{pid}.img")).exists(), "device left behind");
    assert!(!std::path::Path::new(&format!("/tmp/zufs-bench-{pid}")).exists(), "scratch dir left behind");
}
