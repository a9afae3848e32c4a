//! What the `zufs` command does: mkfs, fsck, mount (with zusd started on demand), umount,
//! status. The binary (`src/bin/zufs.rs`) only parses arguments.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use zufs_fuse::bridge::{Bridge, DataPath, MountSpec};
use zufs_fuse::fuse::{FuseOptions, FuserTransport, Transport};
use zufs_fuse::uring::{UringState, UringTransport, uring_support};
use zus_client::{Relay, RelayError};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/zufs/zusd.sock";

/// Where zusd is and where its plugins are.
#[derive(Debug, Clone)]
pub struct Env {
    /// Control socket.
    pub socket: PathBuf,
    /// Plugin directory (for mkfs/fsck and for a zusd started on demand).
    pub plugins: PathBuf,
    /// Run directory: mount records and logs.
    pub run_dir: PathBuf,
}

impl Env {
    /// Resolves flags, then environment (`ZUFS_SOCKET`, `ZUFS_PLUGINS`, `ZUFS_RUN_DIR`), then
    /// defaults (`/run/zufs/zusd.sock`; `<exe dir>/plugins` else `/usr/lib/zufs`; `/run/zufs`).
    #[must_use]
    pub fn resolve(socket: Option<PathBuf>, plugins: Option<PathBuf>) -> Self {
        let socket = socket
            .or_else(|| std::env::var_os("ZUFS_SOCKET").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let plugins = plugins.or_else(|| std::env::var_os("ZUFS_PLUGINS").map(PathBuf::from)).unwrap_or_else(|| {
            let beside = exe_dir().map(|d| d.join("plugins"));
            match beside {
                Some(d) if d.is_dir() => d,
                _ => PathBuf::from("/usr/lib/zufs"),
            }
        });
        let run_dir = std::env::var_os("ZUFS_RUN_DIR").map_or_else(|| PathBuf::from("/run/zufs"), PathBuf::from);
        Self { socket, plugins, run_dir }
    }

    fn mounts_dir(&self) -> PathBuf {
        self.run_dir.join("mounts")
    }
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Options of `zufs mount -o`, split between the bridge and zusd/the plugin.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// FUSE side.
    pub fuse: FuseOptions,
    /// Passed to zusd and the plugin (ro, sync and anything the bridge does not know).
    pub server: String,
    /// Data path.
    pub data_path: DataPath,
    /// Kernel transport of the bridge.
    pub transport: TransportChoice,
    /// Who runs the ops (`-o serve=`).
    pub serve: ServeChoice,
    /// `-o dax=`: file data through kernel DAX (`transport=kernel` only).
    pub dax: DaxChoice,
}

/// `-o dax[=auto|always|never]`, `-o nodax`: whether a `transport=kernel` mount passes the
/// device to the module as `dax=DEVICE` (file data copied straight between user memory and
/// pmem by the kernel, mappings of pmem itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DaxChoice {
    /// DAX when zusd's device is a DAX-capable block device (`/dev/pmem0`), else the windows.
    #[default]
    Auto,
    /// DAX, or the mount fails (`-o dax`, `-o dax=always`).
    Always,
    /// Never: data through the slot windows (`-o dax=never`, `-o nodax`).
    Never,
}

/// `-o serve=`: who runs each op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServeChoice {
    /// zusd: each op handed to the ZT of the caller's CPU over the channel (mode (a)).
    #[default]
    Channel,
    /// zusd itself, on the ring thread it runs pinned to the caller's CPU (`transport=uring`
    /// only: the bridge hands zusd the `/dev/fuse` fd after INIT; mode (b) of issue 13). The
    /// mount ends with zusd (no re-attach).
    Zusd,
}

/// `-o transport=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// FUSE over io_uring where the kernel offers it, else classic /dev/fuse (saying why once).
    #[default]
    Auto,
    /// FUSE over io_uring, or the mount fails.
    Uring,
    /// Classic /dev/fuse (fuser).
    Classic,
    /// No bridge: the zufs kernel module (`/dev/zufs`) mounts zusd's mount (`crate::kmount`).
    Kernel,
}

/// Default `attr_timeout` and `entry_timeout` of a mount, on every transport (issue 17).
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(60);

fn secs(v: &str, name: &str) -> Result<Duration> {
    let f: f64 = v.parse().with_context(|| format!("mount option {name}={v}: not a number of seconds"))?;
    if !(0.0..=86400.0).contains(&f) {
        bail!("mount option {name}={v}: out of range");
    }
    Ok(Duration::from_secs_f64(f))
}

/// Parses `-o` options.
///
/// # Errors
/// A malformed bridge option.
pub fn parse_mount_options(opts: &str, fsname: &str) -> Result<MountOptions> {
    let mut f = FuseOptions { fsname: fsname.to_owned(), ..FuseOptions::default() };
    let mut server = Vec::new();
    let mut data_path = DataPath::Auto;
    // The default transport may come from the environment (ZUFS_TRANSPORT=auto|uring|classic).
    let mut transport = match std::env::var("ZUFS_TRANSPORT").as_deref() {
        Ok("uring") => TransportChoice::Uring,
        Ok("classic") => TransportChoice::Classic,
        Ok("kernel") => TransportChoice::Kernel,
        _ => TransportChoice::Auto,
    };
    // The default server may come from the environment too (ZUFS_SERVE=channel|zusd).
    let mut serve = match std::env::var("ZUFS_SERVE").as_deref() {
        Ok("zusd") => ServeChoice::Zusd,
        _ => ServeChoice::Channel,
    };
    let mut dax = None;
    let (mut attr_set, mut entry_set) = (false, false);
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("attr_timeout", Some(v)) => {
                f.attr_timeout = secs(v, k)?;
                attr_set = true;
            }
            ("entry_timeout", Some(v)) => {
                f.entry_timeout = secs(v, k)?;
                entry_set = true;
            }
            ("allow_other", None) => f.allow_other = true,
            ("noallow_other", None) => f.allow_other = false,
            ("default_permissions", None) => f.default_permissions = true,
            ("nodefault_permissions", None) => f.default_permissions = false,
            ("direct_io", None) => f.direct_io = true,
            ("pin", None) => f.pin = true,
            ("nopin", None) => f.pin = false,
            ("keep_cache", None) => f.keep_cache = true,
            ("threads", Some(v)) => {
                f.threads = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| (1..=256).contains(&n))
                    .with_context(|| format!("mount option threads={v}: want 1..256"))?;
            }
            ("data", Some("remote")) => data_path = DataPath::Remote,
            ("data", Some("window")) => data_path = DataPath::Window,
            ("data", Some("auto")) => data_path = DataPath::Auto,
            ("fsname", Some(v)) => f.fsname = v.to_owned(),
            ("transport", Some("auto")) => transport = TransportChoice::Auto,
            ("transport", Some("uring")) => transport = TransportChoice::Uring,
            ("transport", Some("classic")) => transport = TransportChoice::Classic,
            ("transport", Some("kernel")) => transport = TransportChoice::Kernel,
            ("serve", Some("channel")) => serve = ServeChoice::Channel,
            ("serve", Some("zusd")) => serve = ServeChoice::Zusd,
            ("dax", None | Some("always")) => dax = Some(DaxChoice::Always),
            ("dax", Some("auto")) => dax = Some(DaxChoice::Auto),
            ("dax", Some("never")) | ("nodax", None) => dax = Some(DaxChoice::Never),
            ("ro", None) => {
                f.read_only = true;
                server.push(o.to_owned());
            }
            ("rw", None) => {
                f.read_only = false;
                server.push(o.to_owned());
            }
            ("sync", None) => {
                f.sync = true;
                server.push(o.to_owned());
            }
            ("async", None) => f.sync = false,
            // per-mount flags: the kernel's (the module's mount gets them; the FUSE bridge mounts
            // nosuid,nodev as it always does)
            ("nosuid" | "suid" | "nodev" | "dev" | "noexec" | "exec", None) => {}
            (
                "attr_timeout" | "entry_timeout" | "threads" | "data" | "fsname" | "transport" | "serve" | "dax"
                | "nodax",
                _,
            ) => {
                bail!("mount option {o:?}: bad value")
            }
            _ => server.push(o.to_owned()),
        }
    }
    if dax.is_some() && transport != TransportChoice::Kernel {
        bail!("mount option dax/nodax: only with transport=kernel (the FUSE bridge has no DAX)");
    }
    // Nothing but the kernel changes names, and attributes only the kernel and the preload fast
    // path, whose files neither the bridge (`Bridge::attr_ttl`) nor the kernel module (after the
    // library's `ZUFS_IOC_TICKET` on the file) trusts cached attributes of while they are open.
    if !attr_set {
        f.attr_timeout = CACHE_TIMEOUT;
    }
    if !entry_set {
        f.entry_timeout = CACHE_TIMEOUT;
    }
    Ok(MountOptions { fuse: f, server: server.join(","), data_path, transport, serve, dax: dax.unwrap_or_default() })
}

/// One mount as `zufs` records it (in `<run dir>/mounts/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    /// Mount point.
    pub mountpoint: String,
    /// Bridge process.
    pub pid: u32,
    /// zusd mount id (at mount time).
    pub mount_id: u32,
    /// zusd socket.
    pub socket: String,
    /// fs type.
    pub fs_type: String,
    /// Device.
    pub device: String,
    /// Options as given.
    pub options: String,
    /// The bridge's kernel transport (`uring` or `classic`).
    #[serde(default)]
    pub transport: String,
    /// FUSE-over-io_uring requests served per CPU (the CPU the ring thread served them on).
    #[serde(default)]
    pub served_per_cpu: Vec<u64>,
    /// Who runs the ops (`-o serve=`: `channel`, `zusd`; empty: channel).
    #[serde(default)]
    pub serve: String,
}

fn record_path(env: &Env, mountpoint: &str) -> PathBuf {
    // FNV-1a of the path: a flat, safe file name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mountpoint.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    env.mounts_dir().join(format!("{h:016x}.json"))
}

pub(crate) fn write_record(env: &Env, rec: &MountRecord) {
    let _ = std::fs::create_dir_all(env.mounts_dir());
    if let Ok(s) = serde_json::to_string(rec) {
        let _ = std::fs::write(record_path(env, &rec.mountpoint), s);
    }
}

pub(crate) fn remove_record(env: &Env, mountpoint: &str) {
    let p = record_path(env, mountpoint);
    let _ = std::fs::remove_file(requests_path(&p));
    let _ = std::fs::remove_file(p);
}

/// Where a bridge keeps its kernel request counts per FUSE opcode (beside its mount record).
fn requests_path(record: &Path) -> PathBuf {
    record.with_extension("requests.json")
}

/// A live bridge's kernel request counts per FUSE opcode.
fn read_requests(env: &Env, mountpoint: &str) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(requests_path(&record_path(env, mountpoint)))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn read_record(env: &Env, mountpoint: &str) -> Option<MountRecord> {
    let s = std::fs::read_to_string(record_path(env, mountpoint)).ok()?;
    serde_json::from_str(&s).ok()
}

pub(crate) fn all_records(env: &Env) -> Vec<MountRecord> {
    let Ok(rd) = std::fs::read_dir(env.mounts_dir()) else { return Vec::new() };
    rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks existence.
    p > 0 && unsafe { libc::kill(p, 0) } == 0
}

/// A line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Mount point.
    pub mountpoint: String,
    /// fs type (`fuse.zufs` for ours).
    pub fstype: String,
    /// Source.
    pub source: String,
}

pub use zus_client::unescape_mountinfo;

/// The current mounts.
#[must_use]
pub fn mount_table() -> Vec<MountEntry> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    s.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let mp = a.split(' ').nth(4)?;
            let mut bi = b.split(' ');
            let fstype = bi.next()?;
            let source = bi.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: unescape_mountinfo(mp),
                fstype: fstype.to_owned(),
                source: unescape_mountinfo(source),
            })
        })
        .collect()
}

/// Absolute form of `p` without touching a (possibly dead) mount: canonicalize when possible.
fn abs_path(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    // Canonicalize the parent (alive) and keep the last component as is.
    match (abs.parent(), abs.file_name()) {
        (Some(d), Some(n)) => std::fs::canonicalize(d).map_or(abs.clone(), |d| d.join(n)),
        _ => abs,
    }
}

/// Connects to zusd; when it is not running and `start` is set, starts it first.
///
/// # Errors
/// Connection or start failure.
pub fn connect(env: &Env, start: bool) -> Result<Relay> {
    match Relay::connect(&env.socket, "zufs") {
        Ok(r) => return Ok(r),
        Err(RelayError::Connect { source, .. })
            if start && matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {}
        Err(e) => return Err(e.into()),
    }
    start_zusd(env)?;
    Relay::connect(&env.socket, "zufs").map_err(Into::into)
}

fn zusd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ZUFS_ZUSD") {
        return PathBuf::from(p);
    }
    match exe_dir().map(|d| d.join("zusd")) {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("zusd"),
    }
}

/// Starts zusd in the background (its own session) and waits until its socket answers.
///
/// # Errors
/// zusd could not be started or did not come up within 10 s.
pub fn start_zusd(env: &Env) -> Result<()> {
    let dir = env.socket.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = env.socket.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let bin = zusd_binary();
    let mut child = Command::new(&bin)
        .arg("--plugins")
        .arg(&env.plugins)
        .arg("--socket")
        .arg(&env.socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "zusd exited at start ({st}); see {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Relay::connect(&env.socket, "zufs-probe").is_ok() {
            eprintln!(
                "zufs: started zusd (pid {}, plugins {}, log {})",
                child.id(),
                env.plugins.display(),
                log_path.display()
            );
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("zusd did not come up within 10 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load_plugins(env: &Env) -> Result<Vec<zus_server::plugins::Plugin>> {
    zus_server::plugins::load_dir(&env.plugins)
        .with_context(|| format!("loading plugins from {}", env.plugins.display()))
}

fn find_plugin<'a>(
    plugins: &'a [zus_server::plugins::Plugin],
    fs_type: &str,
    env: &Env,
) -> Result<&'a zus_server::plugins::Plugin> {
    plugins.iter().find(|p| p.name == fs_type).with_context(|| {
        let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
        format!("unknown filesystem type {fs_type:?} (plugins in {}: {})", env.plugins.display(), names.join(", "))
    })
}

/// `zufs mkfs`.
///
/// # Errors
/// Unknown type or mkfs failure.
pub fn mkfs(env: &Env, fs_type: &str, device: &str, size: Option<u64>, options: &str) -> Result<()> {
    let plugins = load_plugins(env)?;
    let p = find_plugin(&plugins, fs_type, env)?;
    zus_server::mounts::mkfs(p, device, size, options).map_err(|e| anyhow::anyhow!("mkfs: {e}"))?;
    println!("zufs: created {fs_type} on {device}");
    Ok(())
}

/// `zufs fsck`: returns the number of problems.
///
/// # Errors
/// The device cannot be checked.
pub fn fsck(env: &Env, fs_type: &str, device: &str) -> Result<u64> {
    let plugins = load_plugins(env)?;
    let p = find_plugin(&plugins, fs_type, env)?;
    let (problems, report) = zus_server::mounts::fsck(p, device).map_err(|e| anyhow::anyhow!("fsck: {e}"))?;
    if !report.is_empty() {
        println!("{}", report.trim_end());
    }
    println!("zufs fsck: {device}: {problems} problem(s)");
    Ok(problems)
}

/// Parses sizes like `64M`, `1G`, `4096`.
///
/// # Errors
/// Malformed size.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('t' | 'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mul).with_context(|| format!("size {s:?} overflows"))
}

/// What `zufs mount` needs.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// Plugin.
    pub fs_type: String,
    /// Device (may be empty or "none" for device-less plugins).
    pub device: String,
    /// Mount point.
    pub mountpoint: PathBuf,
    /// `-o`.
    pub options: String,
    /// Do not start zusd on demand.
    pub no_start: bool,
}

fn check_mountpoint(mp: &Path) -> Result<PathBuf> {
    let md = std::fs::metadata(mp).with_context(|| format!("mount point {}", mp.display()))?;
    if !md.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    let abs = std::fs::canonicalize(mp).with_context(|| format!("mount point {}", mp.display()))?;
    let s = abs.display().to_string();
    if let Some(m) = mount_table().iter().rev().find(|m| m.mountpoint == s) {
        bail!("mount point {s} is busy: {} ({}) is already mounted there", m.source, m.fstype);
    }
    Ok(abs)
}

/// Where `device` is mounted already, if it is: a live mount record of ours, else a FUSE or
/// zufs mount in the mount table whose source is that device.
fn device_mounted_at(env: &Env, device: &str) -> Option<String> {
    if device.is_empty() || device == "none" {
        return None;
    }
    let canon = |d: &str| std::fs::canonicalize(d).ok();
    let dev = canon(device)?;
    let table = mount_table();
    let live = |mp: &str| table.iter().any(|m| m.mountpoint == mp);
    all_records(env)
        .into_iter()
        .filter(|r| if r.pid == 0 { crate::kmount::record_alive(r) } else { pid_alive(r.pid) })
        .find(|r| canon(&r.device).as_ref() == Some(&dev) && live(&r.mountpoint))
        .map(|r| r.mountpoint)
        .or_else(|| {
            table
                .iter()
                .find(|m| {
                    (m.fstype.starts_with("fuse") || m.fstype == crate::kmount::FS_TYPE)
                        && canon(&m.source).as_ref() == Some(&dev)
                })
                .map(|m| m.mountpoint.clone())
        })
}

/// `zufs mount` (background): checks, starts zusd if needed, and runs the bridge in its own
/// process; returns once the kernel mount exists or with the bridge's error.
///
/// # Errors
/// Anything that stops the mount; nothing is left mounted then.
pub fn mount(env: &Env, a: &MountArgs) -> Result<()> {
    let mp = check_mountpoint(&a.mountpoint)?;
    let mo = parse_mount_options(&a.options, "zufs")?;
    if !a.device.is_empty() && a.device != "none" && !Path::new(&a.device).exists() {
        bail!("device {} does not exist", a.device);
    }
    if let Some(first) = device_mounted_at(env, &a.device) {
        bail!(
            "device {} is already mounted on {first} (one mount per device: use that mount point, or `zufs umount {first}` first)",
            a.device
        );
    }
    if mo.transport == TransportChoice::Kernel {
        return crate::kmount::mount(env, a, &mp, &mo).map(|_| ());
    }
    drop(connect(env, !a.no_start)?);
    std::fs::create_dir_all(env.mounts_dir()).with_context(|| format!("creating {}", env.mounts_dir().display()))?;
    let log_path = record_path(env, &mp.display().to_string()).with_extension("log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the zufs binary")?;
    let mut child = Command::new(exe)
        .arg("--socket")
        .arg(&env.socket)
        .arg("--plugins")
        .arg(&env.plugins)
        .arg("mount")
        .arg("--foreground")
        .arg("--notify-stdout")
        .arg("-t")
        .arg(&a.fs_type)
        .arg("-o")
        .arg(&a.options)
        .arg(if a.device.is_empty() { "none" } else { &a.device })
        .arg(&mp)
        .env("ZUFS_RUN_DIR", &env.run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the bridge process")?;
    let out = child.stdout.take().context("bridge stdout")?;
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("READY ") {
        tracing::debug!("bridge ready: {rest}");
        return Ok(());
    }
    let _ = child.wait();
    if let Some(msg) = line.strip_prefix("ERROR ") {
        bail!("{msg}");
    }
    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
    bail!("the bridge process exited before mounting; log {}:\n{}", log_path.display(), tail.trim_end())
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: building and installing a signal mask for this and later threads.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&raw mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, core::ptr::null_mut());
        set
    }
}

pub(crate) fn umount2(path: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// `zufs mount --foreground`: the bridge itself. Mounts at zusd, mounts FUSE, serves until
/// unmounted, then unmounts at zusd (the plugin flushes). With `notify_stdout`, one line
/// `READY <mount_id>` or `ERROR <message>` goes to stdout.
///
/// # Errors
/// Mount failure (nothing is left mounted).
pub fn serve(env: &Env, a: &MountArgs, notify_stdout: bool) -> Result<()> {
    let report_err = |msg: String| -> anyhow::Error {
        if notify_stdout {
            println!("ERROR {}", msg.replace('\n', " "));
        }
        anyhow::anyhow!(msg)
    };
    let mp = check_mountpoint(&a.mountpoint).map_err(|e| report_err(format!("{e:#}")))?;
    let device = if a.device == "none" { String::new() } else { a.device.clone() };
    let fsname = if device.is_empty() { a.fs_type.clone() } else { device.clone() };
    let mo = parse_mount_options(&a.options, &fsname).map_err(|e| report_err(format!("{e:#}")))?;
    if mo.transport == TransportChoice::Kernel {
        // No bridge to run: mount through the module and return.
        let id = crate::kmount::mount(env, a, &mp, &mo).map_err(|e| report_err(format!("{e:#}")))?;
        if notify_stdout {
            println!("READY {id}");
        }
        return Ok(());
    }
    let signals = block_signals();
    let spec =
        MountSpec { socket: env.socket.clone(), fs_type: a.fs_type.clone(), device, server_options: mo.server.clone() };
    let (bridge, info) =
        Bridge::mount(spec, mo.data_path, mo.fuse.sync).map_err(|e| report_err(format!("mount {}: {e}", a.fs_type)))?;
    let rec = MountRecord {
        mountpoint: mp.display().to_string(),
        pid: std::process::id(),
        mount_id: info.mount_id,
        socket: env.socket.display().to_string(),
        fs_type: a.fs_type.clone(),
        device: info.device.clone(),
        options: a.options.clone(),
        transport: String::new(),
        served_per_cpu: Vec::new(),
        serve: match mo.serve {
            ServeChoice::Channel => "channel",
            ServeChoice::Zusd => "zusd",
        }
        .to_owned(),
    };
    let rpath = record_path(env, &rec.mountpoint);
    // Signals: unmount (lazily) and let the session end normally.
    {
        let mp = mp.clone();
        let _ = std::thread::Builder::new().name("zufs-signals".into()).spawn(move || {
            let mut sig = 0;
            // SAFETY: sigwait on a set of blocked signals.
            unsafe { libc::sigwait(&raw const signals, &raw mut sig) };
            tracing::info!("signal {sig}: unmounting {}", mp.display());
            let _ = umount2(&mp, libc::MNT_DETACH);
        });
    }
    let (transport, ustate): (Box<dyn Transport>, Option<Arc<UringState>>) = match mo.transport {
        TransportChoice::Classic | TransportChoice::Kernel if mo.serve == ServeChoice::Zusd => {
            let _ = bridge.shutdown();
            return Err(report_err("serve=zusd needs transport=uring (or auto where the kernel offers it)".into()));
        }
        TransportChoice::Uring | TransportChoice::Auto if mo.serve == ServeChoice::Zusd => match uring_support() {
            Ok(_) => {
                let t = zufs_fuse::uring::handoff::ZusdTransport::new(env.socket.clone());
                let st = t.state();
                (Box::new(t), Some(st))
            }
            Err(why) => {
                let _ = bridge.shutdown();
                return Err(report_err(format!("serve=zusd: {why}")));
            }
        },
        TransportChoice::Classic | TransportChoice::Kernel => (Box::new(FuserTransport), None),
        TransportChoice::Uring => match uring_support() {
            Ok(_) => {
                let t = UringTransport::new(true);
                let st = t.state();
                (Box::new(t), Some(st))
            }
            Err(why) => return Err(report_err(format!("transport=uring: {why}"))),
        },
        TransportChoice::Auto => match uring_support() {
            Ok(_) => {
                let t = UringTransport::new(false);
                let st = t.state();
                (Box::new(t), Some(st))
            }
            Err(why) => {
                tracing::warn!("transport classic: {why}");
                (Box::new(FuserTransport), None)
            }
        },
    };
    let mut ready = || {
        let _ = std::fs::create_dir_all(env.mounts_dir());
        let mut rec = rec.clone();
        rec.transport = ustate.as_ref().map_or_else(|| "classic".to_owned(), |s| s.active());
        if let Ok(s) = serde_json::to_string(&rec) {
            let _ = std::fs::write(&rpath, s);
        }
        tracing::info!(
            "mounted {} ({}) on {} as zusd mount {} via {}",
            rec.fs_type,
            rec.device,
            rec.mountpoint,
            rec.mount_id,
            rec.transport
        );
        let mount_id = rec.mount_id;
        {
            // Per-CPU and per-opcode counts for `zufs status`: the record is rewritten when they
            // change.
            let rpath = rpath.clone();
            let st = ustate.clone();
            let bridge = Arc::clone(&bridge);
            let _ = std::thread::Builder::new().name("zufs-stats".into()).spawn(move || {
                let mut last = (Vec::new(), std::collections::BTreeMap::new());
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let now =
                        (st.as_ref().map(|s| s.served_per_cpu()).unwrap_or_default(), bridge.stats.requests.snapshot());
                    if now == last {
                        continue;
                    }
                    if !rpath.exists() {
                        return;
                    }
                    if let Ok(s) = serde_json::to_string(&now.1) {
                        let (tmp, to) = (requests_path(&rpath).with_extension("rtmp"), requests_path(&rpath));
                        if std::fs::write(&tmp, s).is_ok() {
                            let _ = std::fs::rename(&tmp, &to);
                        }
                    }
                    if now.0 == last.0 {
                        last = now;
                        continue;
                    }
                    rec.served_per_cpu.clone_from(&now.0);
                    last = now;
                    if let Ok(s) = serde_json::to_string(&rec) {
                        let tmp = rpath.with_extension("tmp");
                        if std::fs::write(&tmp, s).is_ok() {
                            let _ = std::fs::rename(&tmp, &rpath);
                        }
                    }
                }
            });
        }
        if notify_stdout {
            println!("READY {mount_id}");
            // Nobody reads stdout any more: point it at /dev/null.
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto fd 1 of an open file.
                unsafe { libc::dup2(f.as_raw_fd(), 1) };
            }
        }
    };
    let res = transport.serve(Arc::clone(&bridge), &mp, &mo.fuse, &mut ready);
    let mounted = rpath.exists();
    if let Err(e) = bridge.shutdown() {
        tracing::warn!("unmount at zusd: {e}");
    }
    let _ = std::fs::remove_file(requests_path(&rpath));
    let _ = std::fs::remove_file(&rpath);
    match res {
        Ok(()) => {
            tracing::info!("{} unmounted; {} flushed", mp.display(), a.fs_type);
            Ok(())
        }
        Err(e) if !mounted => Err(report_err(format!("mounting FUSE on {}: {e}", mp.display()))),
        Err(e) => Err(anyhow::anyhow!("FUSE session on {}: {e}", mp.display())),
    }
}

/// `zufs umount`.
///
/// # Errors
/// Not a zufs mount, busy, or the bridge did not finish.
pub fn umount(env: &Env, mountpoint: &Path, lazy: bool) -> Result<()> {
    let mp = abs_path(mountpoint);
    let s = mp.display().to_string();
    let table = mount_table();
    let Some(m) = table.iter().rev().find(|m| m.mountpoint == s) else {
        bail!("{s} is not mounted");
    };
    // fuser mounts with mount(2) as type "fuse" (the subtype only names the source): a mount is
    // ours when its bridge left a record.
    let rec = read_record(env, &s);
    if m.fstype == crate::kmount::FS_TYPE {
        return crate::kmount::umount(env, &mp, rec.filter(|r| r.transport == crate::kmount::TRANSPORT), lazy);
    }
    if !m.fstype.starts_with("fuse") || rec.is_none() {
        bail!("{s} is not a zufs mount (it is {} from {})", m.fstype, m.source);
    }
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    match umount2(&mp, flags) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            bail!("{s}: target is busy (files open or a process inside); `zufs umount -l` detaches it lazily")
        }
        Err(e) => bail!("unmounting {s}: {e}"),
    }
    let Some(rec) = rec else { return Ok(()) };
    let t0 = Instant::now();
    while pid_alive(rec.pid) && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if pid_alive(rec.pid) {
        bail!("{s} is unmounted, but its bridge (pid {}) has not finished flushing after 15 s", rec.pid);
    }
    // A bridge that was killed could not unmount at zusd: do it for it.
    let env2 = Env { socket: PathBuf::from(&rec.socket), ..env.clone() };
    if let Ok(r) = connect(&env2, false)
        && let Ok(st) = r.status()
        && let Some(zm) =
            st.mounts.iter().find(|z| z.mount_id == rec.mount_id && z.device == rec.device && z.fs_type == rec.fs_type)
    {
        let _ = r.unmount(zm.mount_id);
    }
    let _ = std::fs::remove_file(record_path(env, &s));
    Ok(())
}

/// `zufs status`.
///
/// # Errors
/// zusd unreachable.
pub fn status(env: &Env, json: bool) -> Result<()> {
    let r = connect(env, false).with_context(|| format!("zusd is not running at {}", env.socket.display()))?;
    let st = r.status()?;
    let recs: Vec<MountRecord> = all_records(env)
        .into_iter()
        .filter(|x| if x.pid == 0 { crate::kmount::record_alive(x) } else { pid_alive(x.pid) })
        .collect();
    let mp_of = |m: &zus_channel::control::MountInfo| {
        recs.iter()
            .find(|x| {
                x.mount_id == m.mount_id || (!m.device.is_empty() && x.device == m.device && x.fs_type == m.fs_type)
            })
            .map(|x| {
                // A transport zusd serves itself counts there (serve=zusd), not in the bridge.
                let served = if m.served_by.is_empty() { x.served_per_cpu.clone() } else { m.served_per_cpu.clone() };
                (x.mountpoint.clone(), x.pid, x.transport.clone(), served)
            })
    };
    if json {
        let mounts: Vec<serde_json::Value> = st
            .mounts
            .iter()
            .map(|m| {
                let (mp, pid, tr, served) =
                    mp_of(m).map_or((None, None, None, None), |(a, b, t, c)| (Some(a), Some(b), Some(t), Some(c)));
                let reqs = mp.as_deref().map(|p| read_requests(env, p)).unwrap_or_default();
                serde_json::json!({"mount": m, "mountpoint": mp, "bridge_pid": pid, "transport": tr,
                    "served_per_cpu": served, "fuse_requests": reqs})
            })
            .collect();
        println!("{}", serde_json::json!({"zusd": st, "mounts": mounts}));
        return Ok(());
    }
    println!("zusd pid {} on {}: topology {}, {} client(s)", st.pid, env.socket.display(), st.topology, st.clients);
    println!("plugins:");
    for p in &st.plugins {
        println!("  {:<10} {}{}", p.name, p.path, if p.needs_device { "" } else { " (no device)" });
    }
    println!("mounts:");
    if st.mounts.is_empty() {
        println!("  (none)");
    }
    for m in &st.mounts {
        let (mp, pid, tr, served) = mp_of(m)
            .map_or(("-".to_owned(), "-".to_owned(), String::new(), Vec::new()), |(a, b, t, c)| {
                (a, if b == 0 { "-".to_owned() } else { b.to_string() }, t, c)
            });
        println!(
            "  #{:<3} {:<8} {:<30} on {:<30} bridge pid {:<7} options {:?}{}; kernel-cached inodes {}, tickets {}",
            m.mount_id,
            m.fs_type,
            if m.device.is_empty() { "none" } else { &m.device },
            mp,
            pid,
            m.options,
            if m.map_sync { " MAP_SYNC" } else { "" },
            m.kernel_cached,
            m.tickets
        );
        if !tr.is_empty() {
            let per_cpu = served.iter().enumerate().map(|(c, n)| format!("cpu{c}={n}")).collect::<Vec<_>>().join(" ");
            let by =
                if m.served_by.is_empty() { String::new() } else { format!(" served inside zusd ({})", m.served_by) };
            println!(
                "        transport {tr}{by}{}{per_cpu}",
                if per_cpu.is_empty() { "" } else { "; served per CPU: " }
            );
        }
        let reqs = read_requests(env, &mp);
        if !reqs.is_empty() {
            let list = reqs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            println!("        kernel requests: {list}");
        }
    }
    println!("channels (per-CPU ZT lanes):");
    println!("  {:>4} {:>4} {:>14} {:>10}", "cpu", "node", "ops", "rejected");
    for l in &st.lanes {
        println!("  {:>4} {:>4} {:>14} {:>10}", l.cpu, l.node, l.ops, l.rejected);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_options_split_between_bridge_and_server() {
        let m = parse_mount_options(
            "ro,attr_timeout=0.5,entry_timeout=0,noallow_other,direct_io,inodes=9,sync,data=window",
            "x",
        )
        .unwrap();
        assert!(m.fuse.read_only && m.fuse.sync && m.fuse.direct_io && !m.fuse.allow_other);
        assert_eq!(m.fuse.attr_timeout, Duration::from_millis(500));
        assert_eq!(m.fuse.entry_timeout, Duration::ZERO);
        assert_eq!(m.server, "ro,inodes=9,sync");
        assert_eq!(m.data_path, DataPath::Window);
        assert!(parse_mount_options("attr_timeout=x", "x").is_err());
        assert!(parse_mount_options("threads=0", "x").is_err());
    }

    #[test]
    fn test_mounts_cache_for_a_minute_by_default_on_every_transport() {
        let m = parse_mount_options("transport=classic", "x").unwrap();
        assert_eq!((m.fuse.attr_timeout, m.fuse.entry_timeout), (CACHE_TIMEOUT, CACHE_TIMEOUT));
        let m = parse_mount_options("transport=uring,attr_timeout=0", "x").unwrap();
        assert_eq!((m.fuse.attr_timeout, m.fuse.entry_timeout), (Duration::ZERO, CACHE_TIMEOUT));
        let m = parse_mount_options("transport=kernel", "x").unwrap();
        assert_eq!((m.fuse.attr_timeout, m.fuse.entry_timeout), (CACHE_TIMEOUT, CACHE_TIMEOUT));
        let m = parse_mount_options("transport=kernel,entry_timeout=1", "x").unwrap();
        assert_eq!((m.fuse.attr_timeout, m.fuse.entry_timeout), (CACHE_TIMEOUT, Duration::from_secs(1)));
    }

    #[test]
    fn test_serve_option_picks_who_runs_the_ops_and_stays_out_of_the_server_options() {
        assert_eq!(parse_mount_options("", "x").unwrap().serve, ServeChoice::Channel);
        let m = parse_mount_options("transport=uring,serve=zusd,ro", "x").unwrap();
        assert_eq!(m.serve, ServeChoice::Zusd);
        assert_eq!(m.transport, TransportChoice::Uring);
        assert_eq!(m.server, "ro");
        assert!(parse_mount_options("serve=inline", "x").is_err(), "the serve=inline prototype is gone");
        assert_eq!(parse_mount_options("serve=channel", "x").unwrap().serve, ServeChoice::Channel);
        let m = parse_mount_options("transport=uring,serve=zusd", "x").unwrap();
        assert_eq!((m.serve, m.transport, m.server.as_str()), (ServeChoice::Zusd, TransportChoice::Uring, ""));
        assert!(parse_mount_options("serve=zt", "x").is_err());
        assert!(parse_mount_options("serve", "x").is_err());
    }

    #[test]
    fn test_sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn test_mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
