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
        let socket = dir.join("zusd.sock");
        let log = dir.join("zusd.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(artifact("zusd"))
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
