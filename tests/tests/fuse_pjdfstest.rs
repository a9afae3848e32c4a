//! pjdfstest (Rust rewrite) through the FUSE bridge on pmemfs, next to kernel tmpfs in the same
//! run: every test that passes on tmpfs must pass on pmemfs. On both transports (modules
//! `classic` and `uring`, and `uring_zusd`: the rings served inside zusd).
//!
//! Needs root, /dev/fuse, the pmemfs plugin, `pjdfstest` on PATH and the users it switches to
//! (nobody/nogroup, tests); `tests/scripts/fuse-deps.sh` installs them. Skips with a reason
//! otherwise. `tests/scripts/pjdfstest.sh` runs the same comparison standalone.

#[macro_use]
#[path = "fuse_common.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const CONFIG: &str = r#"[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

fn pjdfstest(config: &Path, dir: &Path) -> (String, BTreeSet<String>) {
    let o = run_with_timeout(
        Command::new("pjdfstest").arg("-c").arg(config).arg("-p").arg(dir).current_dir(dir),
        Duration::from_secs(900),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let summary = out.lines().find(|l| l.starts_with("Summary:")).unwrap_or("no summary").to_owned();
    let failed = out
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (summary, failed)
}

fn test_pjdfstest_passes_on_pmemfs_wherever_it_passes_on_tmpfs() {
    pjdfstest_on_pmemfs("");
}

on_both_transports!(test_pjdfstest_passes_on_pmemfs_wherever_it_passes_on_tmpfs);

/// Runs pjdfstest on kernel tmpfs, then on pmemfs mounted with `opts` (on this test's
/// transport), and fails on any test that fails only on pmemfs.
fn pjdfstest_on_pmemfs(opts: &str) {
    skip_without_fuse!();
    if !plugin_available("pmemfs") {
        eprintln!("SKIPPED: libpmemfs.so is not built or does not export zus_plugin_register");
        return;
    }
    if Command::new("pjdfstest").arg("--version").output().is_err() {
        eprintln!("SKIPPED: pjdfstest is not installed (tests/scripts/fuse-deps.sh: cargo install pjdfstest --locked)");
        return;
    }
    if !Command::new("id").arg("tests").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: user `tests` is missing (tests/scripts/fuse-deps.sh creates it)");
        return;
    }
    let f = Fixture::new("fuse-pjd", &["pmemfs"], true);
    let config = f.dir.0.join("pjd.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let tmpfs = f.dir.0.join("tmpfs");
    std::fs::create_dir_all(&tmpfs).unwrap();
    assert!(Command::new("mount").args(["-t", "tmpfs", "zufs-pjd"]).arg(&tmpfs).status().unwrap().success());
    let (tsum, tfail) = pjdfstest(&config, &tmpfs);
    let _ = Command::new("umount").arg("-l").arg(&tmpfs).status();
    let dev = f.dir.0.join("pmem.img").display().to_string();
    f.zufs_ok(&["mkfs", "-t", "pmemfs", "--size", "512M", &dev]);
    f.mount("pmemfs", &dev, opts);
    let (psum, pfail) = pjdfstest(&config, &f.mnt);
    let t = transport();
    eprintln!("tmpfs:  {tsum}\npmemfs ({t}{}{opts}): {psum}", if opts.is_empty() { "" } else { ", " });
    let extra: Vec<_> = pfail.difference(&tfail).collect();
    assert!(extra.is_empty(), "fail on pmemfs but pass on tmpfs: {extra:?}\n{psum}");
    assert!(psum.contains(" passed"), "{psum}");
    f.umount();
}
