//! Shared helpers for the FUSE bridge tests (included by each `fuse_*.rs` with `#[path]`):
//! a zusd, a `zufs mount` of it, commands with timeouts, and cleanup that cannot leave a hung
//! mount behind (lazy unmount, then the fusectl abort).
#![allow(dead_code, unused_macros)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, artifact, plugin_dir};

pub use zufs_tests::fuse_unavailable;

/// Skips the calling test with a printed reason when FUSE is unavailable.
macro_rules! skip_without_fuse {
    () => {
        if let Some(why) = fuse_unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// Whether a built plugin exports the registration symbol (pmemfs may not yet).
pub fn plugin_available(name: &str) -> bool {
    let p = zufs_tests::target_dir().join(format!("lib{name}.so"));
    if !p.exists() {
        return false;
    }
    let Ok(out) = Command::new("nm").arg("-D").arg("--defined-only").arg(&p).output() else {
        // No nm: fall back to a byte search of the symbol name.
        return std::fs::read(&p).is_ok_and(|b| b.windows(19).any(|w| w == b"zus_plugin_register"));
    };
    String::from_utf8_lossy(&out.stdout).contains("zus_plugin_register")
}

pub use zufs_tests::run_with_timeout;

thread_local! {
    /// The bridge transport of this test's mounts (`classic`, `uring`; empty: the default).
    static TRANSPORT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// This test's transport (set by [`with_transport`]): `classic`, `uring` (also for the
/// `uring-zusd` variant, see [`serve`]) or empty.
pub fn transport() -> String {
    TRANSPORT.with_borrow(|t| t.strip_suffix("-zusd").unwrap_or(t).to_owned())
}

/// Who serves this test's mounts (`-o serve=`): `zusd` in the `uring-zusd` variant (FUSE over
/// io_uring served inside zusd, mode (b) of issue 13), else empty (the default, channel).
pub fn serve() -> String {
    TRANSPORT.with_borrow(|t| if t.ends_with("-zusd") { "zusd".to_owned() } else { String::new() })
}

/// Why FUSE over io_uring cannot be used here, if it cannot.
pub fn uring_unavailable() -> Option<String> {
    let p = "/sys/module/fuse/parameters/enable_uring";
    let v = std::fs::read_to_string(p).ok()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    (v.trim() != "Y" && !root).then(|| format!("{p} is off and we are not root"))
}

/// Runs `test` with its mounts on `transport` (skipped with a printed reason when the kernel
/// has no FUSE over io_uring).
pub fn with_transport(transport: &str, test: fn()) {
    if transport.starts_with("uring") {
        if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
            eprintln!("SKIPPED: this kernel has no FUSE over io_uring (needs 6.14+, CONFIG_FUSE_IO_URING)");
            return;
        }
        if let Some(why) = uring_unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    }
    TRANSPORT.with_borrow_mut(|t| transport.clone_into(t));
    test();
}

/// Declares each listed test function three times, in modules `classic`, `uring` (ring
/// threads in the bridge, each op handed to a ZT) and `uring_zusd` (`serve=zusd`: the rings
/// served inside zusd).
macro_rules! on_both_transports {
    ($($t:ident),* $(,)?) => {
        mod classic {
            $( #[test] fn $t() { super::common::with_transport("classic", super::$t) } )*
        }
        mod uring {
            $( #[test] fn $t() { super::common::with_transport("uring", super::$t) } )*
        }
        mod uring_zusd {
            $( #[test] fn $t() { super::common::with_transport("uring-zusd", super::$t) } )*
        }
    };
}

/// Shell command with a deadline; returns (success, stdout+stderr).
pub fn sh(script: &str, timeout: Duration) -> (bool, String) {
    let o = run_with_timeout(Command::new("bash").arg("-c").arg(script), timeout);
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// Lines of /proc/self/mountinfo naming `mp`.
pub fn mounted_at(mp: &Path) -> bool {
    let s = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.display().to_string();
    s.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Clears a mount whatever state it is in: lazy unmount, then abort every FUSE connection
/// whose mount is gone from the table but still counted as waiting.
pub fn force_clear(mp: &Path) {
    if mounted_at(mp) {
        // Abort the connection first so nothing blocked on it stays blocked.
        if let Ok(md) = std::fs::read_to_string("/proc/self/mountinfo") {
            let want = mp.display().to_string();
            for l in md.lines().filter(|l| l.split(' ').nth(4) == Some(want.as_str())) {
                if let Some(dev) = l.split(' ').nth(2)
                    && let Some((_, minor)) = dev.split_once(':')
                {
                    let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
                }
            }
        }
        let _ = Command::new("umount").arg("-l").arg(mp).status();
    }
}

/// A zusd plus a mount directory and a run directory for `zufs`.
#[derive(Debug)]
pub struct Fixture {
    pub dir: TempDir,
    pub zusd: Option<Zusd>,
    pub socket: PathBuf,
    pub plugins: PathBuf,
    pub run_dir: PathBuf,
    pub mnt: PathBuf,
}

impl Fixture {
    /// Starts zusd with the given plugins (`zusd_running` false: leave it to `zufs mount`).
    pub fn new(tag: &str, plugins: &[&str], zusd_running: bool) -> Self {
        let dir = TempDir::new(tag);
        let pd = plugin_dir(&dir.0, plugins);
        let zusd = zusd_running.then(|| Zusd::start(&dir.0, &pd, &[]));
        let socket = dir.0.join("zusd.sock");
        let run_dir = dir.0.join("run");
        let mnt = dir.0.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        let mnt = std::fs::canonicalize(&mnt).expect("canon");
        Self { dir, zusd, socket, plugins: pd, run_dir, mnt }
    }

    /// A `zufs` command bound to this fixture's socket, plugins and run dir.
    pub fn zufs(&self) -> Command {
        let mut c = Command::new(artifact("zufs"));
        c.arg("--socket").arg(&self.socket).arg("--plugins").arg(&self.plugins);
        c.env("ZUFS_RUN_DIR", &self.run_dir);
        c.env("ZUFS_ZUSD", artifact("zusd"));
        let t = transport();
        if !t.is_empty() {
            c.env("ZUFS_TRANSPORT", t);
        }
        let s = serve();
        if !s.is_empty() {
            c.env("ZUFS_SERVE", s);
        }
        c
    }

    /// Runs `zufs ARGS` (20 s deadline).
    pub fn zufs_run(&self, args: &[&str]) -> Output {
        run_with_timeout(self.zufs().args(args), Duration::from_secs(20))
    }

    /// Runs `zufs ARGS` and requires success; returns stdout.
    pub fn zufs_ok(&self, args: &[&str]) -> String {
        let o = self.zufs_run(args);
        assert!(
            o.status.success(),
            "zufs {args:?} failed: {}\n{}\nzusd log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.zusd.as_ref().map(Zusd::log_text).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Mounts `fs` from `device` at `self.mnt` with options.
    pub fn mount(&self, fs: &str, device: &str, opts: &str) {
        let mnt = self.mnt.display().to_string();
        self.zufs_ok(&["mount", "-t", fs, "-o", opts, device, &mnt]);
        assert!(mounted_at(&self.mnt), "zufs mount returned but {mnt} is not mounted");
    }

    /// Unmounts `self.mnt` with `zufs umount`.
    pub fn umount(&self) {
        let mnt = self.mnt.display().to_string();
        self.zufs_ok(&["umount", &mnt]);
        assert!(!mounted_at(&self.mnt), "{mnt} still mounted after zufs umount");
    }

    /// `zufs status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.zufs_ok(&["status", "--json"])).expect("status json")
    }

    /// The bridge process of the mount (from `zufs status`).
    pub fn bridge_pid(&self) -> u32 {
        let st = self.status();
        let m = st["mounts"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mountpoint"].as_str() == Some(&self.mnt.display().to_string())))
            .cloned();
        let pid = m.and_then(|m| m["bridge_pid"].as_u64()).expect("bridge pid in status");
        u32::try_from(pid).expect("pid")
    }

    /// The zusd log, when this fixture started zusd.
    pub fn zusd_log(&self) -> String {
        self.zusd.as_ref().map(Zusd::log_text).unwrap_or_default()
    }

    /// The bridge logs.
    pub fn bridge_logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.run_dir.join("mounts")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        s
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if mounted_at(&self.mnt) {
            let mnt = self.mnt.display().to_string();
            let _ = run_with_timeout(self.zufs().args(["umount", "-l", &mnt]), Duration::from_secs(20));
            force_clear(&self.mnt);
        }
        // A zusd started on demand by `zufs mount` is not our child: stop it by its pid.
        if self.zusd.is_none()
            && let Ok(o) =
                Command::new(artifact("zufs")).arg("--socket").arg(&self.socket).args(["status", "--json"]).output()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            && let Some(pid) = v["zusd"]["pid"].as_u64()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// Waits until `f` holds or the deadline passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn test_fuse_common_helpers_compile() {
    assert!(wait_until(Duration::from_millis(10), || true));
}
