//! Recognizing an fd on a zufs mount, attaching to the mount through zusd, and (dax mode)
//! mapping its pmem device. All slow path: allocation and the init lock are fine here.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use zus_client::Relay;
use zus_client::unescape_mountinfo as unescape;

use crate::state::{self, FD_KERNEL, FD_SLOT0};
use crate::sys;

/// Mounts known at once.
const MAX_MOUNTS: usize = 32;

/// The mount table (entries are leaked boxes, never freed).
static MOUNTS: [AtomicPtr<Mount>; MAX_MOUNTS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_MOUNTS];

/// Mount `i`.
#[inline]
pub fn mount(i: u32) -> Option<&'static Mount> {
    let p = MOUNTS.get(i as usize)?.load(Ordering::Acquire);
    // SAFETY: entries are leaked `Box<Mount>`s that are never freed.
    unsafe { p.as_ref() }
}

/// The pmem device mapped into this process (dax mode).
#[derive(Debug, Clone, Copy)]
pub struct DaxMap {
    /// Base address.
    pub base: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A zufs mount as this process sees it.
#[derive(Debug)]
pub struct Mount {
    /// st_dev of the FUSE mount.
    pub dev: u64,
    /// False: files here go through the kernel mount (we may not attach).
    pub usable: bool,
    /// zusd mount id.
    pub mount_id: AtomicU64,
    /// Mount point (for messages).
    pub mountpoint: String,
    /// Device path as zusd reports it.
    pub device: String,
    socket: PathBuf,
    relay: AtomicPtr<Relay>,
    relay_gen: AtomicU64,
    /// Attached with tickets only (we do not own the mount): each file needs a ticket from the
    /// bridge (`ZUFS_IOC_TICKET`) before we serve it.
    pub ticketed: AtomicBool,
    /// Dax mapping, when dax mode is on and the device could be mapped.
    pub dax: Option<DaxMap>,
    /// The plugin answers MAP (cleared on ENOSYS/EOPNOTSUPP: channel mode from then on).
    pub dax_ok: AtomicBool,
    /// How channel-mode data travels (`ZUFS_DATA`).
    pub data: DataPolicy,
    /// Which ZT lane channel ops go to (`ZUFS_LANE`).
    pub lane: LanePolicy,
}

/// Which ZT serves our channel ops (`ZUFS_LANE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanePolicy {
    /// The ZT of our CPU (P-CH1): we sleep on the futex while it serves.
    Own,
    /// The next CPU's ZT: we spin while it serves, and it polls for our next op.
    Peer,
    /// `Peer` for ops of up to 32 KiB from a thread that sends back to back (its last reply came
    /// < 100 µs ago), `Own` for isolated ones, and for longer back-to-back ops whichever the
    /// thread measured faster (the default). A same-CPU hand-off costs two context switches
    /// (4.6 µs here) and a caller that sleeps on the futex is often woken on the other, idle CPU
    /// (28 µs): short ops are several times faster on the next CPU's ZT at every job count.
    /// Long ops are dominated by the copy: with the next CPU free its ZT copies while we copy
    /// (streamed window, 1.7x faster), with another job there the own lane is 2-7x faster, so
    /// each thread learns which (`io::lane::long_lane`). An isolated op (dax mode's MAP_DONE once
    /// per ms) is better on the own lane: waking the next CPU's ZT preempts whatever runs there
    /// (dax at 2 jobs: 1.7x of 1 job that way, 1.7-2.0x with the own lane). Measured on the
    /// 2-vCPU development VM (kmod-shim/preload/README.md).
    Auto,
}

/// How channel-mode data travels between the caller's buffers and zusd (`ZUFS_DATA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPolicy {
    /// One copy: zusd moves data straight between our buffers and pmem with
    /// `process_vm_readv`/`writev` (P-CH6).
    Remote,
    /// The named two-copy fallback: data bounces through the slot's window, one op per buffer.
    Window,
    /// Two copies in one op: all buffers stream through the slot's window while the ZT works
    /// (ops larger than a window go remote).
    Stream,
    /// The window for one short buffer (where a `process_vm_readv` costs more than two memcpys:
    /// measured 1.4 µs vs 0.2 µs for 4 KiB here), a streamed window for anything else up to a
    /// window (two copies that overlap: 32 x 4 KiB 1.8-2x faster than one `process_vm_readv`),
    /// one copy above (the default).
    Auto,
}

/// Data mode asked for (`ZUFS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ops over the channels.
    Channel,
    /// Direct pmem access.
    Dax,
}

/// The value named by environment variable `var` among `choices` (the first is the default,
/// also for a value we do not know, which we say once on stderr).
fn env_choice<T: Copy>(var: &str, choices: &[(&str, T)]) -> T {
    let default = choices[0];
    match std::env::var(var) {
        Err(_) => default.1,
        Ok(v) => choices.iter().find(|c| c.0 == v).map_or_else(
            || {
                sys::say(&format!("unknown {var}={v:?}; using {}", default.0));
                default.1
            },
            |c| c.1,
        ),
    }
}

fn env_mode() -> Mode {
    env_choice("ZUFS_MODE", &[("dax", Mode::Dax), ("channel", Mode::Channel)])
}

impl Mount {
    /// The relay of this process for the mount, connecting (again) after a fork.
    ///
    /// # Errors
    /// errno when zusd cannot be reached.
    #[inline]
    pub fn relay(&self) -> Result<&Relay, i32> {
        let g = state::FORK_GEN.load(Ordering::Acquire);
        if self.relay_gen.load(Ordering::Acquire) == g {
            let p = self.relay.load(Ordering::Acquire);
            // SAFETY: relays are leaked boxes, never freed.
            if let Some(r) = unsafe { p.as_ref() } {
                return Ok(r);
            }
        }
        self.reconnect()
    }

    #[cold]
    fn reconnect(&self) -> Result<&Relay, i32> {
        let _l = state::INIT_LOCK.lock();
        let g = state::FORK_GEN.load(Ordering::Acquire);
        if self.relay_gen.load(Ordering::Acquire) == g {
            // SAFETY: as in `relay`.
            if let Some(r) = unsafe { self.relay.load(Ordering::Acquire).as_ref() } {
                return Ok(r);
            }
        }
        let (r, id, ticketed) =
            connect_attach(&self.socket, self.mount_id.load(Ordering::Relaxed) as u32, &self.device).map_err(
                |(e, why)| {
                    sys::say(&format!("{}: reconnecting to zusd: {why}", self.mountpoint));
                    e
                },
            )?;
        self.mount_id.store(u64::from(id), Ordering::Relaxed);
        self.ticketed.store(ticketed, Ordering::Relaxed);
        // Extents cached under the old connection are not comparable with the new server's
        // layout generation.
        state::LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
        // The previous relay (the parent's, after a fork) is leaked on purpose: its channel memory
        // and socket belong to the parent's session with zusd.
        let p = Box::into_raw(Box::new(r));
        self.relay.store(p, Ordering::Release);
        self.relay_gen.store(g, Ordering::Release);
        // SAFETY: just leaked.
        Ok(unsafe { &*p })
    }
}

/// Connects to zusd and attaches to the mount of `device` (by id, else by looking it up).
/// Returns the relay, the mount id, and whether we are attached with tickets only.
fn connect_attach(socket: &Path, mount_id: u32, device: &str) -> Result<(Relay, u32, bool), (i32, String)> {
    let r = Relay::connect(socket, "zufs-preload").map_err(|e| (e.errno().0, e.to_string()))?;
    match r.attach(mount_id) {
        Ok(info) if device.is_empty() || info.device == device => return Ok((r, mount_id, info.ticketed)),
        Ok(_) => {}
        Err(e) if e.errno().0 == libc::EPERM => return Err((libc::EPERM, e.to_string())),
        Err(_) => {}
    }
    // The record is stale (zusd restarted): find the mount by its device.
    let st = r.status().map_err(|e| (e.errno().0, e.to_string()))?;
    let m = st
        .mounts
        .iter()
        .find(|m| !device.is_empty() && m.device == device)
        .ok_or((libc::ENODEV, format!("zusd has no mount of {device}")))?;
    let id = m.mount_id;
    let info = r.attach(id).map_err(|e| (e.errno().0, e.to_string()))?;
    Ok((r, id, info.ticketed))
}

/// What the FUSE bridge writes under `<run dir>/mounts/`.
#[derive(Debug, serde::Deserialize)]
struct Record {
    mountpoint: String,
    mount_id: u32,
    socket: String,
    device: String,
}

fn records() -> Vec<Record> {
    let mut dirs = vec![];
    if let Some(d) = std::env::var_os("ZUFS_RUN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/run/zufs"));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d.join("mounts")) else { continue };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "json")
                && let Ok(s) = std::fs::read_to_string(e.path())
                && let Ok(r) = serde_json::from_str::<Record>(&s)
            {
                out.push(r);
            }
        }
    }
    out
}

/// The zufs kernel module's filesystem type (`kmod-shim/module`).
const MODULE_FS_TYPE: &str = "zufs";

/// What a mountinfo line says of a mount.
#[derive(Debug)]
struct MountInfo {
    mountpoint: String,
    fstype: String,
    source: String,
    super_options: String,
}

/// The zusd mount id among a module mount's super options (`mount_id=N`).
fn module_mount_id(super_options: &str) -> Option<u32> {
    super_options.split(',').find_map(|o| o.strip_prefix("mount_id=")?.parse().ok())
}

/// The mountinfo line for device `dev`.
fn mountinfo_for(dev: u64) -> Option<MountInfo> {
    let s = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    s.lines().rev().find_map(|l| {
        let (a, b) = l.split_once(" - ")?;
        let mut f = a.split(' ');
        let majmin = f.nth(2)?;
        let mp = f.nth(1)?;
        if majmin != want {
            return None;
        }
        let mut bi = b.split(' ');
        let fstype = bi.next()?.to_owned();
        let source = unescape(bi.next().unwrap_or(""));
        let super_options = bi.next().unwrap_or("").to_owned();
        Some(MountInfo { mountpoint: unescape(mp), fstype, source, super_options })
    })
}

/// Devices known not to be zufs mounts.
static NOT_ZUFS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

fn known_not_zufs(dev: u64) -> bool {
    NOT_ZUFS.iter().any(|d| d.load(Ordering::Relaxed) == dev.wrapping_add(1))
}

fn mark_not_zufs(dev: u64) {
    for d in &NOT_ZUFS {
        if d.compare_exchange(0, dev.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return;
        }
    }
}

fn find_mount(dev: u64) -> Option<u32> {
    (0..MAX_MOUNTS as u32).find(|&i| mount(i).is_some_and(|m| m.dev == dev))
}

static ATFORK: AtomicBool = AtomicBool::new(false);

extern "C" fn atfork_child() {
    state::after_fork_child();
}

/// Whether `path` is a block device whose queue does DAX (`/dev/pmem0`): zusd maps such a
/// device through the zufs kernel module, and so must we.
fn is_dax_block_device(path: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(m) = std::fs::metadata(path) else { return false };
    if !m.file_type().is_block_device() {
        return false;
    }
    let rdev = m.rdev();
    std::fs::read_to_string(format!("/sys/dev/block/{}:{}/queue/dax", libc::major(rdev), libc::minor(rdev)))
        .is_ok_and(|s| s.trim() == "1")
}

/// Maps the pmem of a DAX block device through the module (`ZUFS_IOC_GRAB_PMEM`): a mapping
/// of the device node would go through the block device's page cache, which neither zusd's
/// mapping nor the kernel's DAX copies see.
fn map_dax_block_device(device: &str, c: &CString) -> Result<DaxMap, String> {
    let (fd, size) = sys::grab_pmem(c).map_err(|e| {
        format!(
            "{device} is a DAX block device, mapped only through the zufs module's /dev/zufs (root): {}",
            std::io::Error::from_raw_os_error(e)
        )
    })?;
    let res = (|| {
        let len = usize::try_from(size).unwrap_or(0);
        if len == 0 {
            return Err(format!("{device}: the module maps 0 bytes"));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh shared mapping of the fd the module gave us; the kernel picks the
        // address.
        let p =
            unsafe { libc::mmap(core::ptr::null_mut(), len, prot, libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(format!("cannot map {device} through /dev/zufs: errno {}", sys::errno()));
        }
        Ok(DaxMap { base: p as usize, len })
    })();
    sys::close(fd);
    res
}

fn map_device(device: &str) -> Result<DaxMap, String> {
    let c = CString::new(device).map_err(|_| "device path has a NUL".to_owned())?;
    if is_dax_block_device(device) {
        return map_dax_block_device(device, &c);
    }
    let fd = sys::open(&c, libc::O_RDWR | libc::O_CLOEXEC)
        .map_err(|e| format!("cannot open {device} read-write ({})", std::io::Error::from_raw_os_error(e)))?;
    let len = sys::lseek(fd, 0, libc::SEEK_END);
    let res = (|| {
        let len = usize::try_from(len.map_err(|e| format!("size of {device}: errno {e}"))?).unwrap_or(0);
        if len == 0 {
            return Err(format!("{device} is empty"));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh shared mapping of a file we opened; the kernel picks the address.
        let mut p =
            unsafe { libc::mmap(core::ptr::null_mut(), len, prot, libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC, fd, 0) };
        if p == libc::MAP_FAILED {
            // SAFETY: as above, without MAP_SYNC (a DRAM-backed file cannot have it).
            p = unsafe { libc::mmap(core::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        }
        if p == libc::MAP_FAILED {
            return Err(format!("cannot map {device}: errno {}", sys::errno()));
        }
        Ok(DaxMap { base: p as usize, len })
    })();
    sys::close(fd);
    res
}

/// Classifies `fd` on first data access: a regular file on a usable zufs mount gets a slot and
/// its fd table entry names it; anything else becomes [`FD_KERNEL`]. Returns the new entry.
#[cold]
pub fn detect(fd: i32) -> u32 {
    let e = classify(fd);
    // Another thread may have classified it meanwhile: keep the first answer.
    let Some(cell) = usize::try_from(fd).ok().and_then(|i| state::FDS.get(i)) else { return FD_KERNEL };
    match cell.compare_exchange(state::FD_UNKNOWN, e, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => e,
        Err(cur) => {
            // Our slot was never named by an fd: its last reference drops with nothing to commit.
            if let Some(s) = state::slot_of(e) {
                drop(s.release(state::Ref::Fd));
            }
            cur
        }
    }
}

fn classify(fd: i32) -> u32 {
    let Ok(st) = sys::fstat(fd) else { return FD_KERNEL };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || libc::major(st.st_dev) != 0 {
        return FD_KERNEL;
    }
    let Ok(fl) = sys::getfl(fd) else { return FD_KERNEL };
    if fl & libc::O_PATH != 0 {
        return FD_KERNEL;
    }
    let dev = st.st_dev;
    let mi = match find_mount(dev) {
        Some(i) => i,
        None => {
            if known_not_zufs(dev) {
                return FD_KERNEL;
            }
            match new_mount(dev) {
                Some(i) => i,
                None => return FD_KERNEL,
            }
        }
    };
    let Some(m) = mount(mi) else { return FD_KERNEL };
    if !m.usable {
        return FD_KERNEL;
    }
    // On a mount we do not own, the bridge's ticket for this open file (the kernel checked our
    // permissions when it opened it); none: the kernel serves the file.
    // On a mount we own, a writable file asks for one too, unused: it tells the bridge (or the
    // zufs kernel module, which answers it too, with no ticket) that we may change the file's
    // size, blocks and times behind the kernel, so the kernel's cached attributes of it are
    // dropped and not trusted while the file is open (issue 17: the other files' attributes
    // are cached for the mount's timeouts).
    let ticket = if m.ticketed.load(Ordering::Relaxed) {
        match sys::ticket(fd) {
            Some(t) if t.ino == st.st_ino && u64::from(t.mount_id) == m.mount_id.load(Ordering::Relaxed) => t.ticket,
            _ => return FD_KERNEL,
        }
    } else {
        if fl & libc::O_ACCMODE != libc::O_RDONLY {
            let _ = sys::ticket(fd);
        }
        0
    };
    let Some(si) = state::alloc_slot() else { return FD_KERNEL };
    let s = &state::SLOTS[si as usize];
    s.mount.store(mi, Ordering::Relaxed);
    s.flags.store(fl as u32, Ordering::Relaxed);
    s.ino.store(st.st_ino, Ordering::Relaxed);
    s.dev.store(dev, Ordering::Relaxed);
    s.invalidate();
    s.n.store(0, Ordering::Relaxed);
    s.size.store(0, Ordering::Relaxed);
    s.last_commit.store(0, Ordering::Relaxed);
    s.dirty.store(false, Ordering::Relaxed);
    s.kernel_gen.store(0, Ordering::Relaxed);
    s.ticket.store(ticket, Ordering::Relaxed);
    s.publish();
    FD_SLOT0 + si
}

#[cold]
fn new_mount(dev: u64) -> Option<u32> {
    let _l = state::INIT_LOCK.lock();
    if let Some(i) = find_mount(dev) {
        return Some(i);
    }
    if !ATFORK.swap(true, Ordering::Relaxed) {
        // SAFETY: registering a plain function as the fork child handler.
        unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
    }
    let Some(mi) = mountinfo_for(dev) else {
        mark_not_zufs(dev);
        return None;
    };
    // The zufs kernel module's mounts (fstype `zufs`) as well as the FUSE bridge's.
    let module = mi.fstype == MODULE_FS_TYPE;
    if !mi.fstype.starts_with("fuse") && !module {
        mark_not_zufs(dev);
        return None;
    }
    let mp = mi.mountpoint;
    let rec = records().into_iter().find(|r| r.mountpoint == mp);
    let default_socket =
        || std::env::var_os("ZUFS_SOCKET").map_or_else(|| PathBuf::from("/run/zufs/zusd.sock"), PathBuf::from);
    let (socket, mount_id, device) = match rec {
        Some(r) => (PathBuf::from(r.socket), r.mount_id, r.device),
        None if mi.fstype == "fuse.zufs" => (default_socket(), u32::MAX, mi.source),
        // `mount -t zufs -o mount_id=N,...` by hand: the module shows the id; its source is
        // the device (`zufs mount`) or anything (`none`).
        None if module => match module_mount_id(&mi.super_options) {
            Some(id) => (default_socket(), id, if mi.source.starts_with('/') { mi.source } else { String::new() }),
            None => {
                mark_not_zufs(dev);
                return None;
            }
        },
        None => {
            mark_not_zufs(dev);
            return None;
        }
    };
    let mode = env_mode();
    let data = env_choice(
        "ZUFS_DATA",
        &[
            ("auto", DataPolicy::Auto),
            ("remote", DataPolicy::Remote),
            ("window", DataPolicy::Window),
            ("stream", DataPolicy::Stream),
        ],
    );
    let mut m = Mount {
        dev,
        usable: true,
        mount_id: AtomicU64::new(u64::from(mount_id)),
        mountpoint: mp.clone(),
        device: device.clone(),
        socket: socket.clone(),
        relay: AtomicPtr::new(core::ptr::null_mut()),
        relay_gen: AtomicU64::new(0),
        ticketed: AtomicBool::new(false),
        dax: None,
        dax_ok: AtomicBool::new(true),
        data,
        lane: env_choice(
            "ZUFS_LANE",
            &[("auto", LanePolicy::Auto), ("own", LanePolicy::Own), ("peer", LanePolicy::Peer)],
        ),
    };
    match connect_attach(&socket, mount_id, &device) {
        Ok((r, id, ticketed)) => {
            m.mount_id.store(u64::from(id), Ordering::Relaxed);
            m.ticketed.store(ticketed, Ordering::Relaxed);
            m.relay = AtomicPtr::new(Box::into_raw(Box::new(r)));
            m.relay_gen = AtomicU64::new(state::FORK_GEN.load(Ordering::Acquire));
            if mode == Mode::Dax {
                match map_device(&device) {
                    Ok(d) => m.dax = Some(d),
                    Err(why) => sys::say(&format!("{mp}: dax mode unavailable: {why}; using channel mode")),
                }
            }
        }
        Err((_, why)) => {
            m.usable = false;
            sys::say(&format!("{mp}: fast path unavailable: {why}; using the kernel mount"));
        }
    }
    let p = Box::into_raw(Box::new(m));
    for (i, slot) in MOUNTS.iter().enumerate() {
        if slot.compare_exchange(core::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return Some(i as u32);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unescape_octal() {
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn test_mountinfo_finds_root_device() {
        let st = sys::fstat(0).ok();
        let _ = st;
        let root = std::fs::metadata("/").unwrap();
        use std::os::unix::fs::MetadataExt;
        let mi = mountinfo_for(root.dev()).expect("mountinfo has /");
        assert!(mi.mountpoint.starts_with('/'));
    }

    #[test]
    fn test_module_mount_id_from_super_options() {
        assert_eq!(module_mount_id("rw,mount_id=3,root=1,attr_timeout_ms=1000,dax=/dev/pmem0"), Some(3));
        assert_eq!(module_mount_id("rw,root=1"), None);
        assert_eq!(module_mount_id("rw,mount_id=x"), None);
    }

    #[test]
    fn test_regular_files_are_not_dax_block_devices() {
        assert!(!is_dax_block_device("/dev/null"));
        assert!(!is_dax_block_device("/no/such/device"));
        assert!(!is_dax_block_device("/proc/self/status"));
    }
}
