//! Shared helpers for the preload tests (included by each `preload_*.rs` with `#[path]`; a
//! subdirectory, so cargo does not build it as a test of its own): a zusd,
//! a pmemfs device mounted through the FUSE bridge with the settings that make the kernel mount
//! coherent with the fast path (`direct_io,attr_timeout=0,entry_timeout=0`), and commands run
//! under `LD_PRELOAD=libzufs_preload.so` in a given mode.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, artifact, plugin_dir, target_dir};

/// Mount options every preload test uses: no page cache, no attribute cache in the kernel.
pub const COHERENT: &str = "direct_io,attr_timeout=0,entry_timeout=0";

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = zufs_tests::fuse_unavailable() {
        return Some(why);
    }
    for a in ["libzufs_preload.so", "libpmemfs.so", "zufs", "zusd"] {
        if !target_dir().join(a).exists() {
            return Some(format!("{a} is not built"));
        }
    }
    None
}

/// Skips the calling test with a printed reason.
macro_rules! skip_unless_ready {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    ($($prog:expr),+) => {
        skip_unless_ready!();
        $(if !have($prog) {
            eprintln!("SKIPPED: {} is not installed", $prog);
            return;
        })+
    };
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("bash").arg("-c").arg(format!("command -v {prog}")).output().is_ok_and(|o| o.status.success())
}

pub use zufs_tests::run_with_timeout;

/// stdout+stderr of an output.
pub fn text(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

/// A zusd, a pmemfs device and its mount.
#[derive(Debug)]
pub struct Fixture {
    pub dir: TempDir,
    pub zusd: Zusd,
    pub plugins: PathBuf,
    pub run_dir: PathBuf,
    pub dev: PathBuf,
    pub mnt: PathBuf,
}

impl Fixture {
    /// mkfs + mount a pmemfs device of `size` (e.g. "256M") with `opts`.
    pub fn new(tag: &str, size: &str, opts: &str) -> Self {
        let dir = TempDir::new(tag);
        let plugins = plugin_dir(&dir.0, &["pmemfs"]);
        let zusd = Zusd::start(&dir.0, &plugins, &[]);
        let run_dir = dir.0.join("run");
        let mnt = dir.0.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        let mnt = std::fs::canonicalize(&mnt).expect("canon");
        let dev = dir.0.join("pmem.img");
        let f = Self { dir, zusd, plugins, run_dir, dev, mnt };
        let d = f.dev.display().to_string();
        f.zufs_ok(&["mkfs", "-t", "pmemfs", "--size", size, &d]);
        let m = f.mnt.display().to_string();
        f.zufs_ok(&["mount", "-t", "pmemfs", "-o", opts, &d, &m]);
        f
    }

    /// A `zufs` command bound to this fixture.
    pub fn zufs(&self) -> Command {
        let mut c = Command::new(artifact("zufs"));
        c.arg("--socket").arg(&self.zusd.socket).arg("--plugins").arg(&self.plugins);
        c.env("ZUFS_RUN_DIR", &self.run_dir);
        c.env("ZUFS_ZUSD", artifact("zusd"));
        c
    }

    /// Runs `zufs ARGS`, requires success, returns stdout+stderr.
    pub fn zufs_ok(&self, args: &[&str]) -> String {
        let o = run_with_timeout(self.zufs().args(args), Duration::from_secs(30));
        assert!(o.status.success(), "zufs {args:?} failed:\n{}\nzusd log:\n{}", text(&o), self.zusd.log_text());
        text(&o)
    }

    /// `path` inside the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// `zufs run --mode MODE -- PROG` (the preload library in `mode`, "dax" or "channel");
    /// further `.arg()`s go to the program.
    /// `mode` is `dax`, `channel`, or `channel+DATA` with a `ZUFS_DATA` policy (`remote`: one
    /// copy for every size, `window`: the two-copy fallback for every size).
    pub fn preload(&self, mode: &str, prog: &str) -> Command {
        let mut c = self.zufs();
        let (mode, data) = mode.split_once('+').unwrap_or((mode, "auto"));
        c.args(["run", "--mode", mode, "--", prog]).env("ZUFS_DATA", data);
        c
    }

    /// Runs a preloaded command; requires success; returns stdout+stderr.
    pub fn preload_ok(&self, mode: &str, prog: &str, args: &[&str], secs: u64) -> String {
        let o = run_with_timeout(self.preload(mode, prog).args(args), Duration::from_secs(secs));
        assert!(
            o.status.success(),
            "{prog} {args:?} ({mode}) failed:\n{}\nzusd log:\n{}",
            text(&o),
            self.zusd.log_text()
        );
        text(&o)
    }

    /// Unmounts and runs fsck; returns the fsck output (panics when it reports problems).
    pub fn unmount_and_fsck(&self) -> String {
        let m = self.mnt.display().to_string();
        self.zufs_ok(&["umount", &m]);
        let d = self.dev.display().to_string();
        self.zufs_ok(&["fsck", "-t", "pmemfs", &d])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let m = self.mnt.display().to_string();
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(m.as_str()));
        if mounted {
            let _ = run_with_timeout(self.zufs().args(["umount", &m]), Duration::from_secs(20));
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2)
                && std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&m)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&m) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
    }
}
