//! Test harness: locate the built binaries and plugins, run `zusd` as a real process in a private
//! directory, and clean up (kill, remove) on drop.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zus_channel::shm::ShmRegion;

/// Directory holding the built binaries and plugins (`target/<profile>`).
///
/// # Panics
/// When the test binary's location is unexpected.
#[must_use]
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZUFS_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // Test and bench executables live in target/<profile>/deps/; binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a built artifact, with a clear message when it is missing.
///
/// # Panics
/// When the artifact was not built.
#[must_use]
pub fn artifact(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace` with the same profile)",
        p.display()
    );
    p
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/zufs-test-<tag>-<pid>-<n>`.
    ///
    /// # Panics
    /// When it cannot be created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("zufs-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plugin directory with the named built plugins linked in.
///
/// # Panics
/// When a plugin was not built.
#[must_use]
pub fn plugin_dir(dir: &Path, plugins: &[&str]) -> PathBuf {
    let pd = dir.join("plugins");
    std::fs::create_dir_all(&pd).expect("plugin dir");
    for p in plugins {
        let file = format!("lib{p}.so");
        std::fs::copy(artifact(&file), pd.join(&file)).expect("copy plugin");
    }
    pd
}

/// A running `zusd` process.
#[derive(Debug)]
pub struct Zusd {
    /// The process.
    pub child: Child,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl Zusd {
    /// Starts zusd with `plugins_dir` and extra args; waits until the socket accepts.
    ///
    /// # Panics
    /// When it does not come up within 10 s.
    #[must_use]
    pub fn start(dir: &Path, plugins_dir: &Path, extra: &[&str]) -> Self {
        Self::start_from(&target_dir(), dir, plugins_dir, extra)
    }

    /// As [`Zusd::start`], with the `zusd` binary of `bin` (another build, e.g. the code before
    /// a change, for a benchmark that compares them).
    ///
    /// # Panics
    /// When it does not come up within 10 s.
    #[must_use]
    pub fn start_from(bin: &Path, dir: &Path, plugins_dir: &Path, extra: &[&str]) -> Self {
        let socket = dir.join("zusd.sock");
        let log = dir.join("zusd.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let exe = bin.join("zusd");
        assert!(exe.exists(), "{} is missing", exe.display());
        let child = Command::new(exe)
            .arg("--plugins")
            .arg(plugins_dir)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("ZUFS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn zusd");
        let mut z = Self { child, socket, log };
        let t0 = Instant::now();
        loop {
            if let Some(st) = z.child.try_wait().expect("try_wait") {
                panic!("zusd exited early ({st}); log:\n{}", z.log_text());
            }
            if z.log_text().contains("zusd ready") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "zusd did not become ready; log:\n{}", z.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        z
    }

    /// The log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }

    /// Waits for exit up to `timeout`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Zusd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared read-write mapping of a file (`MAP_SHARED`), for tests that look at a file through
/// mmap: zus_api's [`ShmRegion`] (raw-pointer copies, never references into the mapping) plus
/// msync.
#[derive(Debug)]
pub struct SharedFileMap(ShmRegion);

impl SharedFileMap {
    /// Maps the first `len` bytes of `file` (open read-write).
    ///
    /// # Panics
    /// When mmap fails.
    #[must_use]
    pub fn new(file: &std::fs::File, len: usize) -> Self {
        use std::os::fd::AsFd;
        Self(ShmRegion::map(file.as_fd(), len).expect("mmap"))
    }

    /// Mapped length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes of `range`.
    ///
    /// # Panics
    /// When `range` leaves the mapping.
    #[must_use]
    pub fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut v = vec![0u8; range.len()];
        self.0.copy_out(range.start, &mut v);
        v
    }

    /// Stores `data` at `at`.
    ///
    /// # Panics
    /// When it leaves the mapping.
    pub fn write(&self, at: usize, data: &[u8]) {
        self.0.copy_in(at, data);
    }

    /// `msync(MS_SYNC)` of the whole mapping.
    ///
    /// # Panics
    /// When msync fails.
    #[allow(unsafe_code)]
    pub fn msync(&self) {
        // SAFETY: msync of the whole live mapping; it reads no memory of ours.
        let r = unsafe { libc::msync(self.0.raw(0, self.len()).cast(), self.len(), libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

/// Pins the calling thread to one OS CPU.
///
/// # Errors
/// The sched_setaffinity error.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    zus_channel::cpu::pin_to(cpu)
}

/// Number of online CPUs.
#[must_use]
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Runs a command with a deadline; kills it when it runs over.
///
/// # Panics
/// When the command cannot start or runs past `timeout`.
#[must_use]
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command {cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// Why tests that mount through FUSE cannot run here (no /dev/fuse, not root), if they cannot.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Some(format!("not root (euid {uid}): the bridge mounts with mount(2)"));
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        return Some("/dev/fuse cannot be opened".into());
    }
    None
}

/// What the FUSE benchmarks (`benches/fuse_fio.rs`, `benches/fuse_meta.rs`) share: commands,
/// mounts, the machine's description, and a zusd with `zufs mount`s that are all undone on drop.
pub mod bench {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use super::Zusd;

    /// Runs a command (stdin from /dev/null); whether it succeeded.
    pub fn run(cmd: &mut Command) -> bool {
        cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// Whether `prog` is on the PATH.
    #[must_use]
    pub fn have(prog: &str) -> bool {
        Command::new("bash").arg("-c").arg(format!("command -v {prog}")).output().is_ok_and(|o| o.status.success())
    }

    /// Whether `p` is a mount point.
    #[must_use]
    pub fn is_mounted(p: &Path) -> bool {
        let want = p.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    }

    /// Unmounts `p` (lazily when busy).
    pub fn umount(p: &Path) {
        let _ = Command::new("umount").arg(p).status();
        if is_mounted(p) {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }

    /// Whether we run as root.
    #[must_use]
    #[allow(unsafe_code)]
    pub fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// CPUs, CPU model, kernel and the load average now.
    #[must_use]
    pub fn machine() -> String {
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
        format!("{} CPU(s) ({cpu}), kernel {kernel}, load average {}", super::online_cpus(), load_average())
    }

    /// The 1, 5 and 15 minute load averages.
    #[must_use]
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A zusd started from the binaries in `bin` (this build's, or another's), its plugins, and
    /// the `zufs mount`s made through it; everything is unmounted, stopped and removed on drop.
    #[derive(Debug)]
    pub struct ZufsSetup {
        /// The binaries' directory.
        pub bin: PathBuf,
        /// The plugin directory zusd and `zufs` use.
        pub plugins: PathBuf,
        /// Scratch directory (socket, logs, mount records).
        pub dir: PathBuf,
        /// The daemon.
        pub zusd: Zusd,
        mounts: Vec<PathBuf>,
        devs: Vec<PathBuf>,
    }

    impl ZufsSetup {
        /// Starts zusd from `bin` in `dir` (created) with the named plugins, found in `bin` or
        /// `bin/plugins`. None when a plugin is missing.
        #[must_use]
        pub fn start(bin: &Path, dir: &Path, plugins: &[&str]) -> Option<Self> {
            let pd = dir.join("plugins");
            std::fs::create_dir_all(&pd).ok()?;
            for p in plugins {
                let file = format!("lib{p}.so");
                let src = [bin.join(&file), bin.join("plugins").join(&file)].into_iter().find(|f| f.exists())?;
                std::fs::copy(src, pd.join(&file)).ok()?;
            }
            let zusd = Zusd::start_from(bin, dir, &pd, &[]);
            Some(Self {
                bin: bin.to_path_buf(),
                plugins: pd,
                dir: dir.to_path_buf(),
                zusd,
                mounts: Vec::new(),
                devs: Vec::new(),
            })
        }

        /// A `zufs` command of this setup (socket, plugins, run directory).
        #[must_use]
        pub fn zufs_cmd(&self) -> Command {
            let mut c = Command::new(self.bin.join("zufs"));
            c.arg("--socket")
                .arg(&self.zusd.socket)
                .arg("--plugins")
                .arg(&self.plugins)
                .env("ZUFS_RUN_DIR", self.dir.join("run"));
            c
        }

        /// Runs `zufs ARGS`; whether it succeeded.
        pub fn zufs(&self, args: &[&str]) -> bool {
            run(self.zufs_cmd().args(args))
        }

        /// `zufs mount -t FS -o OPTS DEV MNT` (MNT created); unmounted on drop.
        pub fn mount(&mut self, fs: &str, opts: &str, dev: &str, mnt: &Path) -> bool {
            let _ = std::fs::create_dir_all(mnt);
            let m = mnt.display().to_string();
            let ok = if opts.is_empty() {
                self.zufs(&["mount", "-t", fs, dev, &m])
            } else {
                self.zufs(&["mount", "-t", fs, "-o", opts, dev, &m])
            };
            if ok {
                self.mounts.push(mnt.to_path_buf());
            }
            ok
        }

        /// A fresh pmemfs device of `size` in /dev/shm named after `tag` (removed on drop).
        ///
        /// # Panics
        /// When mkfs fails.
        #[must_use]
        pub fn pmemfs_device(&mut self, tag: &str, size: &str) -> String {
            let dev = PathBuf::from(format!("/dev/shm/zufs-{tag}-{}.img", std::process::id()));
            let _ = std::fs::remove_file(&dev);
            let d = dev.display().to_string();
            assert!(self.zufs(&["mkfs", "-t", "pmemfs", "--size", size, &d]), "zufs mkfs {d}");
            self.devs.push(dev);
            d
        }

        /// The kernel requests the bridge of the mount at `mnt` served, per FUSE opcode (from
        /// `zufs status --json`; empty for a build that does not count them).
        #[must_use]
        pub fn fuse_requests(&self, mnt: &Path) -> BTreeMap<String, u64> {
            let Ok(o) = self.zufs_cmd().args(["status", "--json"]).stdin(Stdio::null()).output() else {
                return BTreeMap::new();
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else { return BTreeMap::new() };
            let want = mnt.display().to_string();
            v["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountpoint"].as_str() == Some(want.as_str()))
                .and_then(|m| m["fuse_requests"].as_object())
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
                .unwrap_or_default()
        }
    }

    impl Drop for ZufsSetup {
        fn drop(&mut self) {
            for m in std::mem::take(&mut self.mounts).into_iter().rev() {
                let s = m.display().to_string();
                if !self.zufs(&["umount", &s]) {
                    umount(&m);
                }
            }
            self.zusd.signal(libc::SIGTERM);
            let _ = self.zusd.wait_exit(std::time::Duration::from_secs(5));
            for d in self.devs.drain(..) {
                let _ = std::fs::remove_file(d);
            }
        }
    }
}
