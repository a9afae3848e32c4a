//! The configurations compared side by side, and their setup and teardown.
//!
//! Everything a configuration sets up is undone by [`Prepared`]'s and [`Env`]'s `Drop`, so a failed
//! or interrupted run leaves no mount, daemon or device behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// A configuration of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Config {
    /// The in-kernel tmpfs: the baseline.
    Tmpfs,
    /// A classic FUSE filesystem (bindfs over a tmpfs directory): the "fuse" row.
    Fuse,
    /// nullfs through the zufs FUSE bridge.
    NullfsBridge,
    /// pmemfs through the zufs FUSE bridge.
    PmemfsBridge,
    /// nullfs through the zufs FUSE bridge over FUSE io_uring.
    NullfsUring,
    /// pmemfs through the zufs FUSE bridge over FUSE io_uring.
    PmemfsUring,
    /// pmemfs over FUSE io_uring with the rings served inside zusd (`serve=zusd`: mode (b) of
    /// issue 13, each op served on zusd's ring thread of the caller's CPU on the live mount).
    PmemfsUringZusd,
    /// pmemfs with fio under `zufs run --mode channel` (the preload fast path over ZT channels).
    PreloadChannel,
    /// pmemfs with fio under `zufs run --mode dax` (the preload path copying to pmem itself).
    PreloadDax,
}

impl Config {
    /// All, in table order.
    pub const ALL: [Self; 9] = [
        Self::Tmpfs,
        Self::Fuse,
        Self::NullfsBridge,
        Self::PmemfsBridge,
        Self::NullfsUring,
        Self::PmemfsUring,
        Self::PmemfsUringZusd,
        Self::PreloadChannel,
        Self::PreloadDax,
    ];

    /// Column name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tmpfs => "tmpfs",
            Self::Fuse => "fuse (bindfs)",
            Self::NullfsBridge => "nullfs bridge",
            Self::PmemfsBridge => "pmemfs bridge",
            Self::NullfsUring => "nullfs uring",
            Self::PmemfsUring => "pmemfs uring",
            Self::PmemfsUringZusd => "pmemfs uring zusd",
            Self::PreloadChannel => "pmemfs preload channel",
            Self::PreloadDax => "pmemfs preload dax",
        }
    }

    /// Short id for file names and `--configs`.
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Self::Tmpfs => "tmpfs",
            Self::Fuse => "fuse",
            Self::NullfsBridge => "nullfs-bridge",
            Self::PmemfsBridge => "pmemfs-bridge",
            Self::NullfsUring => "nullfs-uring",
            Self::PmemfsUring => "pmemfs-uring",
            Self::PmemfsUringZusd => "pmemfs-uring-zusd",
            Self::PreloadChannel => "preload-channel",
            Self::PreloadDax => "preload-dax",
        }
    }

    /// Parses an id.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.id() == s)
    }
}

/// Tools and the scratch area shared by all configurations.
#[derive(Debug)]
pub struct Env {
    /// `zufs` CLI.
    pub zufs: PathBuf,
    /// `zusd`.
    pub zusd: PathBuf,
    /// Plugin directory.
    pub plugins: PathBuf,
    /// `fio`.
    pub fio: PathBuf,
    /// Scratch directory (removed at the end).
    pub work: PathBuf,
    /// zusd socket.
    pub socket: PathBuf,
    /// Simulated pmem device in /dev/shm.
    pub device: PathBuf,
    /// Device size.
    pub device_size: u64,
    zusd_child: Option<Child>,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("{:?}: {e}", cmd.get_program())),
    }
}

impl Env {
    /// Finds the tools next to `bin_dir` (the zufs binaries) and creates the scratch area.
    ///
    /// # Errors
    /// [`BenchError::Setup`] when fio or zusd is missing.
    pub fn new(bin_dir: &Path, plugins: Option<&Path>, device_size: u64) -> Result<Self, BenchError> {
        let fio = which("fio").ok_or_else(|| BenchError::Setup("fio is not installed (apt-get install fio)".into()))?;
        let zusd = bin_dir.join("zusd");
        if !zusd.exists() {
            return Err(BenchError::Setup(format!("{} not found: build the workspace", zusd.display())));
        }
        let pid = std::process::id();
        let work = std::env::temp_dir().join(format!("zufs-bench-{pid}"));
        std::fs::create_dir_all(&work)?;
        Ok(Self {
            zufs: bin_dir.join("zufs"),
            plugins: plugins.map_or_else(
                || std::env::var_os("ZUFS_PLUGINS").map_or_else(|| bin_dir.join("plugins"), PathBuf::from),
                Path::to_path_buf,
            ),
            zusd,
            fio,
            socket: work.join("zusd.sock"),
            device: PathBuf::from(format!("/dev/shm/zufs-bench-{pid}.img")),
            device_size,
            work,
            zusd_child: None,
        })
    }

    /// Starts a private zusd for the run (once).
    ///
    /// # Errors
    /// [`BenchError::Setup`] when it does not become ready.
    pub fn start_zusd(&mut self) -> Result<(), BenchError> {
        if self.zusd_child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.work.join("zusd.log"))?;
        let child = Command::new(&self.zusd)
            .arg("--plugins")
            .arg(&self.plugins)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting zusd: {e}")))?;
        self.zusd_child = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(self.work.join("zusd.log")).unwrap_or_default().contains("zusd ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(BenchError::Setup("zusd did not become ready within 10 s".into()))
    }

    fn zufs(&self) -> Command {
        let mut c = Command::new(&self.zufs);
        c.arg("--socket").arg(&self.socket).arg("--plugins").arg(&self.plugins);
        c
    }

    /// Sets up `cfg`, or says why it is not available.
    ///
    /// # Errors
    /// A reason (the configuration is then reported as missing, never faked).
    pub fn prepare(&mut self, cfg: Config) -> Result<Prepared, String> {
        let dir = self.work.join(cfg.id());
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        match cfg {
            Config::Tmpfs => {
                // /dev/shm is tmpfs on every Debian system; use a directory inside it.
                let d = PathBuf::from(format!("/dev/shm/zufs-bench-tmpfs-{}", std::process::id()));
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                Ok(Prepared { dir: d.clone(), wrapper: vec![], undo: vec![Undo::RemoveDir(d)] })
            }
            Config::Fuse => {
                let bindfs = which("bindfs").ok_or("bindfs is not installed (apt-get install bindfs)")?;
                let src = PathBuf::from(format!("/dev/shm/zufs-bench-bindfs-src-{}", std::process::id()));
                std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
                sh(Command::new(bindfs).arg(&src).arg(&dir))?;
                Ok(Prepared {
                    dir: dir.clone(),
                    wrapper: vec![],
                    undo: vec![Undo::Fusermount(dir), Undo::RemoveDir(src)],
                })
            }
            Config::NullfsBridge | Config::NullfsUring => {
                self.zufs_ready()?;
                let t = if cfg == Config::NullfsUring { "transport=uring" } else { "transport=classic" };
                sh(self.zufs().args(["mount", "-t", "nullfs", "-o", t, "none"]).arg(&dir))?;
                Ok(Prepared {
                    dir: dir.clone(),
                    wrapper: vec![],
                    undo: vec![Undo::Zufs(self.zufs.clone(), self.socket.clone(), dir)],
                })
            }
            Config::PmemfsUring | Config::PmemfsUringZusd => {
                // A pmemfs of its own (the classic bridge's mount stays as it is).
                self.zufs_ready()?;
                let (ext, opts) = match cfg {
                    Config::PmemfsUringZusd => ("uring-zusd", "transport=uring,serve=zusd"),
                    _ => ("uring", "transport=uring"),
                };
                let dev = self.device.with_extension(ext);
                sh(self.zufs().args(["mkfs", "-t", "pmemfs", "--size"]).arg(self.device_size.to_string()).arg(&dev))?;
                sh(self.zufs().args(["mount", "-t", "pmemfs", "-o", opts]).arg(&dev).arg(&dir))?;
                Ok(Prepared {
                    dir: dir.clone(),
                    wrapper: vec![],
                    undo: vec![Undo::Zufs(self.zufs.clone(), self.socket.clone(), dir), Undo::RemoveFile(dev)],
                })
            }
            Config::PmemfsBridge | Config::PreloadChannel | Config::PreloadDax => {
                self.zufs_ready()?;
                let wrapper = match cfg {
                    Config::PreloadChannel => self.preload_wrapper("channel")?,
                    Config::PreloadDax => self.preload_wrapper("dax")?,
                    _ => vec![],
                };
                let mnt = self.work.join("pmemfs");
                if !mnt.join(".zufs-bench-mounted").exists() {
                    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
                    if !self.device.exists() {
                        sh(self
                            .zufs()
                            .args(["mkfs", "-t", "pmemfs", "--size"])
                            .arg(self.device_size.to_string())
                            .arg(&self.device))?;
                    }
                    sh(self
                        .zufs()
                        .args(["mount", "-t", "pmemfs", "-o", "transport=classic"])
                        .arg(&self.device)
                        .arg(&mnt))?;
                    std::fs::write(mnt.join(".zufs-bench-mounted"), b"").map_err(|e| e.to_string())?;
                    return Ok(Prepared {
                        dir: mnt.clone(),
                        wrapper,
                        undo: vec![
                            Undo::Zufs(self.zufs.clone(), self.socket.clone(), mnt),
                            Undo::RemoveFile(self.device.clone()),
                        ],
                    });
                }
                Ok(Prepared { dir: mnt, wrapper, undo: vec![] })
            }
        }
    }

    fn zufs_ready(&mut self) -> Result<(), String> {
        if !self.zufs.exists() {
            return Err(format!("{} not built", self.zufs.display()));
        }
        self.start_zusd().map_err(|e| e.to_string())
    }

    fn preload_wrapper(&self, mode: &str) -> Result<Vec<String>, String> {
        sh(Command::new(&self.zufs).args(["run", "--help"]))
            .map_err(|_| "`zufs run` (the preload library) is not available yet".to_owned())?;
        Ok(vec![
            self.zufs.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "run".into(),
            "--mode".into(),
            mode.into(),
            "--".into(),
        ])
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.zusd_child.take() {
            // SIGTERM: zusd unmounts and flushes, then exits.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.device);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Something to undo at teardown.
#[derive(Debug)]
enum Undo {
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    Fusermount(PathBuf),
    Zufs(PathBuf, PathBuf, PathBuf),
}

/// A configuration ready to run: fio's directory and the wrapper command (if any).
#[derive(Debug)]
pub struct Prepared {
    /// Directory for fio's files.
    pub dir: PathBuf,
    /// Command prefix for fio (`zufs run --mode ... --`).
    pub wrapper: Vec<String>,
    undo: Vec<Undo>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for u in self.undo.drain(..) {
            match u {
                Undo::RemoveDir(d) => {
                    let _ = std::fs::remove_dir_all(d);
                }
                Undo::RemoveFile(f) => {
                    let _ = std::fs::remove_file(f);
                }
                Undo::Fusermount(d) => {
                    if sh(Command::new("fusermount3").arg("-u").arg(&d)).is_err() {
                        let _ = Command::new("umount").arg("-l").arg(&d).status();
                    }
                }
                Undo::Zufs(zufs, socket, d) => {
                    let ok = sh(Command::new(&zufs).arg("--socket").arg(&socket).arg("umount").arg(&d)).is_ok();
                    if !ok {
                        let _ = Command::new("umount").arg("-l").arg(&d).status();
                    }
                }
            }
        }
    }
}
