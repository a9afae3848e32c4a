//! The kernel-module transport, zusd's side: `/dev/zufs` (`kmod-shim/module`).
//!
//! When the module is loaded (or `Config::kernel` says so) zusd opens `/dev/zufs`, sends HELLO
//! and maps the kernel's channel set: the layout of every user client's set
//! ([`zus_api::chan::Geometry`], one lane per kernel CPU id), in kernel memory. That set is
//! registered as one more client, the **kernel client** ([`crate::server::Snapshot::kernel`]):
//! privileged (the op headers' uid/gid are the calling task's), a kernel bridge (its data ops fill
//! the kernel's caches; it may set kernel-cache marks), and attached to every mount (the module's
//! mount names a zusd mount id).
//!
//! Its lanes are served by **K-ZTs**, a second thread per CPU next to the futex ZT, pinned to the
//! same CPU: `ZT_INIT`, then serve every `SUBMITTED` slot of the lane with the same code as a
//! user client's ([`crate::zt::serve_client`]), then `ZT_WAIT` (which hands the `DONE` replies to
//! their kernel callers and sleeps until the next submission, a kick or a break). A ZT asleep in
//! that ioctl cannot also be woken by a user client's `FUTEX_WAKE` on a doorbell, and the futex
//! ZT's `futex_waitv` cannot include the module's wait queue; two threads per CPU leave the user
//! channels (FUSE bridge, preload, tests) exactly as they are. `docs/design.md` has the rest.
//!
//! Every value the kernel's memory holds is read once into private memory and checked
//! ([`Geometry::from_header`] for the header; the slot protocol for slots), as for any client.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use zus_api::chan::{ChannelSetHeader, Geometry};
use zus_api::kabi::{
    KHello, KZtInit, KZtWait, ZUFS_IOC_BREAK, ZUFS_IOC_HELLO, ZUFS_IOC_KICK_ALL, ZUFS_IOC_ZT_INIT, ZUFS_IOC_ZT_WAIT,
    ZUFS_MAX_WINDOW, ZUFS_ZT_BREAK, ZUFS_ZT_KICKED,
};
use zus_channel::shm::ShmRegion;
use zus_channel::sock::PeerCred;

use crate::dispatch::Scratch;
use crate::server::{Client, Server, Snapshot};

/// The module's device.
pub const DEVICE: &str = "/dev/zufs";

/// Whether zusd serves the kernel module ([`crate::Config::kernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelMode {
    /// Never (the library's default).
    #[default]
    Off,
    /// When `/dev/zufs` exists and the topology is the real one (zusd's default); a failure to
    /// attach is logged and zusd serves its user clients alone.
    Auto,
    /// Always: zusd does not start without the module.
    On,
}

impl std::str::FromStr for KernelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "no" | "false" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "on" | "yes" | "true" => Ok(Self::On),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// Errors attaching to the module.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `/dev/zufs` could not be opened.
    #[error("opening {path}: {error} (is the zufs module loaded? modprobe zufs)")]
    Open {
        /// The device.
        path: PathBuf,
        /// The OS error (shown in the message, so not a source).
        error: io::Error,
    },
    /// The module refused HELLO.
    #[error("{DEVICE}: HELLO refused: {0}{hint}", hint = hello_hint(.0))]
    Hello(io::Error),
    /// The module's answer or channel set is not what this build speaks.
    #[error("{DEVICE}: {0}")]
    Header(String),
    /// Mapping the kernel channel set failed.
    #[error("{DEVICE}: {0}")]
    Map(#[from] zus_channel::shm::ShmError),
    /// A K-ZT could not start or register.
    #[error("{DEVICE}: K-ZT for CPU {cpu}: {error}")]
    Zt {
        /// Its CPU.
        cpu: usize,
        /// Why (shown in the message, so not a source).
        error: io::Error,
    },
}

fn hello_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => " (another server holds the module's session)",
        Some(libc::E2BIG) => " (the kernel channel set is too large: fewer --slots or a smaller --window-kib)",
        Some(libc::EPROTO) => " (the module speaks another zus_api ABI version; rebuild one side)",
        Some(libc::EPERM) => " (needs CAP_SYS_ADMIN)",
        _ => "",
    }
}

/// What a K-ZT needs from the module: [`Device`], or a stand-in in tests.
pub trait Port: Send + Sync + std::fmt::Debug {
    /// `ZT_INIT`: the calling thread (pinned to `cpu` alone) becomes lane `cpu`'s ZT.
    ///
    /// # Errors
    /// The module's errno.
    fn zt_init(&self, cpu: u32) -> io::Result<()>;
    /// `ZT_WAIT`: hands the lane's `DONE` replies to their callers, then sleeps until a slot is
    /// `SUBMITTED`, a kick or a break.
    ///
    /// # Errors
    /// The module's errno (`EINTR`: call again).
    fn zt_wait(&self, cpu: u32) -> io::Result<KZtWait>;
    /// `KICK_ALL`: every K-ZT returns from its wait once (to pick up a new snapshot).
    fn kick_all(&self);
    /// `BREAK`: no new kernel ops; every K-ZT's wait returns [`ZUFS_ZT_BREAK`] from now on.
    fn break_all(&self);
}

/// An open `/dev/zufs`.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

impl Device {
    /// Opens `path` read-write, close-on-exec.
    ///
    /// # Errors
    /// [`KernelError::Open`].
    pub fn open(path: &Path) -> Result<Self, KernelError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|error| KernelError::Open { path: path.to_owned(), error })?;
        Ok(Self { fd: f.into() })
    }

    /// One ioctl whose argument is `arg` (or none).
    fn ioctl<T>(&self, req: u32, arg: Option<&mut T>) -> io::Result<()> {
        let p = arg.map_or(core::ptr::null_mut(), |a| core::ptr::from_mut(a).cast::<libc::c_void>());
        // SAFETY: `req` is one of zus_api::kabi's numbers, whose size field matches `T` (asserted
        // there); `p` is null or points to a `T` we own exclusively for the call, which the
        // module reads and writes within its size.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::Ioctl::from(req), p) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// `HELLO`: creates this fd's session and its kernel channel set; returns the module's answer.
    ///
    /// # Errors
    /// [`KernelError::Hello`].
    pub fn hello(&self, slots: usize, window: usize) -> Result<KHello, KernelError> {
        let mut h = KHello {
            magic: zus_api::ZUS_MAGIC,
            abi_version: zus_api::ZUS_ABI_VERSION,
            slots_per_cpu: u32::try_from(slots.min(64)).unwrap_or(0),
            window_size: u32::try_from(window.min(ZUFS_MAX_WINDOW as usize)).unwrap_or(0),
            features: zus_api::features::ALL,
            ..KHello::default()
        };
        self.ioctl(ZUFS_IOC_HELLO, Some(&mut h)).map_err(KernelError::Hello)?;
        Ok(h)
    }

    /// Maps the session's channel set (`len` bytes, shared).
    ///
    /// # Errors
    /// [`KernelError::Map`].
    pub fn map(&self, len: usize) -> Result<ShmRegion, KernelError> {
        Ok(ShmRegion::map(self.fd.as_fd(), len)?)
    }
}

impl Port for Device {
    fn zt_init(&self, cpu: u32) -> io::Result<()> {
        let mut z = KZtInit { cpu, ..KZtInit::default() };
        self.ioctl(ZUFS_IOC_ZT_INIT, Some(&mut z))
    }

    fn zt_wait(&self, cpu: u32) -> io::Result<KZtWait> {
        let mut w = KZtWait { cpu, ..KZtWait::default() };
        self.ioctl(ZUFS_IOC_ZT_WAIT, Some(&mut w))?;
        Ok(w)
    }

    fn kick_all(&self) {
        if let Err(e) = self.ioctl::<()>(ZUFS_IOC_KICK_ALL, None) {
            tracing::warn!("{DEVICE}: KICK_ALL: {e}");
        }
    }

    fn break_all(&self) {
        if let Err(e) = self.ioctl::<()>(ZUFS_IOC_BREAK, None) {
            tracing::warn!("{DEVICE}: BREAK: {e}");
        }
    }
}

/// The running kernel transport: its K-ZT threads.
#[derive(Debug)]
pub struct Attached {
    threads: Vec<JoinHandle<()>>,
}

impl Attached {
    /// Number of K-ZTs.
    #[must_use]
    pub fn zts(&self) -> usize {
        self.threads.len()
    }

    /// Shutdown: `BREAK` (kernel ops fail with `EIO` from now on), wait for the K-ZTs to serve
    /// what was submitted before and leave.
    pub fn stop(self, server: &Server) {
        if let Some(p) = server.kernel_port() {
            p.break_all();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Whether `config` wants the kernel transport now (`Auto`: the device exists and the topology
/// is the real one).
#[must_use]
pub fn wanted(config: &crate::Config) -> bool {
    match config.kernel {
        KernelMode::Off => false,
        KernelMode::On => true,
        KernelMode::Auto if !Path::new(DEVICE).exists() => false,
        KernelMode::Auto if config.topology.simulated => {
            tracing::info!("{DEVICE} exists but the topology is simulated: not serving the kernel module");
            false
        }
        KernelMode::Auto => true,
    }
}

/// Opens `/dev/zufs`, maps its channel set, registers the kernel client and starts one K-ZT per
/// CPU; returns once every K-ZT has registered with the module.
///
/// # Errors
/// [`KernelError`]; nothing of the session is left then (the fd is closed, the set unmapped).
pub fn attach(server: &Arc<Server>) -> Result<Attached, KernelError> {
    let dev = Device::open(Path::new(DEVICE))?;
    let h = dev.hello(server.config.slots_per_cpu, server.config.window_size)?;
    let total = usize::try_from(h.total_size)
        .ok()
        .filter(|&t| t >= size_of::<ChannelSetHeader>() && t as u64 <= zus_api::kabi::ZUFS_MAX_SET_SIZE)
        .ok_or_else(|| KernelError::Header(format!("HELLO answered a set of {} bytes", h.total_size)))?;
    let region = dev.map(total)?;
    let dev: Arc<dyn Port> = Arc::new(dev);
    register(server, region, &h, Arc::clone(&dev))?;
    match start_zts(server, &dev) {
        Ok(threads) => {
            tracing::info!(
                "{DEVICE}: serving the kernel module: {} lanes x {} slots, {} KiB windows, {} K-ZT(s)",
                h.ncpu,
                h.slots_per_cpu,
                h.window_size / 1024,
                threads.len()
            );
            Ok(Attached { threads })
        }
        Err(e) => {
            dev.break_all();
            detach(server);
            Err(e)
        }
    }
}

/// Checks the kernel's channel set (its header read once) against the HELLO answer and the
/// topology, and publishes it as the kernel client, with `port` for kicks.
///
/// # Errors
/// [`KernelError::Header`] naming the first mismatch.
pub fn register(
    server: &Server,
    region: ShmRegion,
    h: &KHello,
    port: Arc<dyn Port>,
) -> Result<Arc<Client>, KernelError> {
    let bad = |what: String| KernelError::Header(what);
    let hdr: ChannelSetHeader = region.read(0);
    zus_api::check_peer(hdr.magic, hdr.abi_version, "the kernel channel set").map_err(bad)?;
    let g = Geometry::from_header(&hdr, region.len()).map_err(|e| bad(format!("kernel channel set: {e}")))?;
    if (g.ncpu, g.slots_per_cpu, g.window_size, g.lane_size())
        != (h.ncpu as usize, h.slots_per_cpu as usize, h.window_size as usize, h.lane_size as usize)
        || hdr.total_size != h.total_size
    {
        return Err(bad(format!(
            "the channel set header ({} lanes x {} slots, {} byte windows) differs from HELLO's answer ({} x {}, {})",
            g.ncpu, g.slots_per_cpu, g.window_size, h.ncpu, h.slots_per_cpu, h.window_size
        )));
    }
    if let Some(c) = server.config.topology.cpus.iter().find(|c| c.os_cpu >= g.ncpu) {
        return Err(bad(format!("CPU {} has no lane in the kernel's set of {} lanes", c.os_cpu, g.ncpu)));
    }
    let mut st = server.state();
    let id = st.next_client;
    st.next_client += 1;
    let client = Arc::new(Client {
        id,
        cred: PeerCred { pid: 0, uid: 0, gid: 0 },
        privileged: true,
        kernel_bridge: true,
        name: "kernel".into(),
        features: zus_api::features::KERNEL_BRIDGE,
        region,
        geometry: g,
    });
    st.kernel = Some(Arc::clone(&client));
    *server.kernel_slot() = Some(port);
    server.publish(&st);
    Ok(client)
}

/// Removes the kernel client and forgets the port (the session ends once the last snapshot and
/// the port let go of the mapping and the fd).
pub fn detach(server: &Server) {
    let mut st = server.state();
    if let Some(c) = st.kernel.take() {
        for m in &st.mounts {
            m.kernel_cache.drop_client(c.id);
            m.tickets.drop_issuer(c.id);
        }
    }
    server.publish(&st);
    *server.kernel_slot() = None;
}

/// Starts one K-ZT per online CPU of the topology and waits until each registered.
fn start_zts(server: &Arc<Server>, port: &Arc<dyn Port>) -> Result<Vec<JoinHandle<()>>, KernelError> {
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    let mut cpus = Vec::new();
    let mut failed = None;
    for (lane, c) in server.config.topology.cpus.iter().enumerate() {
        if cpus.contains(&c.os_cpu) {
            continue; // an offline CPU's lane in the topology: the kernel sends nothing from it
        }
        cpus.push(c.os_cpu);
        server.kzts[lane].exited.store(false, Ordering::SeqCst);
        let (s, p, tx) = (Arc::clone(server), Arc::clone(port), tx.clone());
        let spawned = std::thread::Builder::new().name(format!("kzt{}", c.os_cpu)).spawn(move || {
            let cpu = s.config.topology.cpus[lane].os_cpu;
            let ready = register_zt(p.as_ref(), cpu);
            let ok = ready.is_ok();
            let _ = tx.send((cpu, ready));
            if ok {
                run(&s, p.as_ref(), lane, cpu);
            }
            s.kzts[lane].exited.store(true, Ordering::SeqCst);
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                server.kzts[lane].exited.store(true, Ordering::SeqCst);
                failed = Some(KernelError::Zt { cpu: c.os_cpu, error: e });
                break;
            }
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((cpu, Err(error))) => {
                failed.get_or_insert(KernelError::Zt { cpu, error });
            }
            Err(_) => break,
        }
    }
    match failed {
        None => Ok(threads),
        Some(e) => {
            port.break_all();
            for t in threads {
                let _ = t.join();
            }
            Err(e)
        }
    }
}

/// `prctl(PR_SET_IO_FLUSHER)`: a thread the kernel's writeback may wait for allocates without
/// recursing into filesystem reclaim. Needs `CAP_SYS_RESOURCE`; without it we go on.
fn set_io_flusher() {
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc != 0 {
        tracing::debug!("PR_SET_IO_FLUSHER: {}", io::Error::last_os_error());
    }
}

/// Pins the calling thread to `cpu` and registers it as that lane's ZT.
fn register_zt(port: &dyn Port, cpu: usize) -> io::Result<()> {
    zus_channel::cpu::pin_to(cpu)?;
    set_io_flusher();
    port.zt_init(u32::try_from(cpu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?)
}

/// The K-ZT loop for kernel lane `cpu` (topology lane `lane`, whose `Server::kzts` entry it
/// uses): serve every submitted slot of the lane, then wait in the module. Returns on `BREAK`
/// (after serving what was submitted before it) or when the module refuses the wait.
pub fn run(server: &Server, port: &dyn Port, lane: usize, cpu: usize) {
    let ctl = &server.kzts[lane];
    let kcpu = u32::try_from(cpu).unwrap_or(u32::MAX);
    let mut scratch = Scratch::new();
    let mut snap = Arc::new(Snapshot::default());
    loop {
        if server.generation.load(Ordering::SeqCst) != snap.generation {
            snap = server.current_snapshot();
            ctl.seen_generation.store(snap.generation, Ordering::SeqCst);
        }
        if serve(server, lane, cpu, &snap, &mut scratch) > 0 {
            continue;
        }
        match port.zt_wait(kcpu) {
            Ok(w) if w.flags & ZUFS_ZT_BREAK != 0 => {
                // Ops submitted before the break are served, and handed over by one more wait
                // (which returns at once now).
                if serve(server, lane, cpu, &snap, &mut scratch) > 0 {
                    let _ = port.zt_wait(kcpu);
                }
                break;
            }
            Ok(w) => {
                if w.flags & ZUFS_ZT_KICKED != 0 {
                    tracing::trace!("K-ZT {cpu}: kicked");
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                tracing::error!("K-ZT {cpu}: ZT_WAIT: {e}; this CPU's kernel ops are no longer served");
                break;
            }
        }
    }
}

/// Serves every submitted slot of kernel lane `cpu` once.
fn serve(server: &Server, lane: usize, cpu: usize, snap: &Snapshot, scratch: &mut Scratch) -> usize {
    let Some((client, attached)) = &snap.kernel else { return 0 };
    crate::zt::serve_client(server, &server.kzts[lane], cpu, snap, client, attached, scratch).served
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::time::{Duration, Instant};

    use zus_api::Errno;
    use zus_api::ops::{InoReq, OpCode, OpHeader};
    use zus_channel::proto::{Channel, ReplyWait};

    use crate::testutil;

    /// The module, as far as a K-ZT sees it: waits return after a short sleep (a kernel wait
    /// returns on a submission; polling stands in for that), with the kick and break flags.
    #[derive(Debug, Default)]
    struct FakePort {
        inits: std::sync::Mutex<Vec<u32>>,
        kicks: AtomicU32,
        seen_kicks: AtomicU32,
        broken: AtomicBool,
        waits: AtomicU32,
    }

    impl Port for FakePort {
        fn zt_init(&self, cpu: u32) -> io::Result<()> {
            assert_eq!(zus_channel::cpu::allowed_cpus(), vec![cpu as usize], "a K-ZT registers pinned to its CPU");
            self.inits.lock().unwrap().push(cpu);
            Ok(())
        }
        fn zt_wait(&self, _cpu: u32) -> io::Result<KZtWait> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(200));
            let mut w = KZtWait::default();
            let k = self.kicks.load(Ordering::SeqCst);
            if self.seen_kicks.swap(k, Ordering::SeqCst) != k {
                w.flags |= ZUFS_ZT_KICKED;
            }
            if self.broken.load(Ordering::SeqCst) {
                w.flags |= ZUFS_ZT_BREAK;
            }
            Ok(w)
        }
        fn kick_all(&self) {
            self.kicks.fetch_add(1, Ordering::SeqCst);
        }
        fn break_all(&self) {
            self.broken.store(true, Ordering::SeqCst);
        }
    }

    /// A server without futex ZTs whose one CPU is `cpu`, with a testfs mount (its id).
    fn server_on(tag: &str, cpu: usize) -> (Arc<Server>, u32, testutil::Device) {
        let mut c = testutil::config(tag);
        c.topology.cpus[0].os_cpu = cpu;
        c.topology.simulated = false;
        let s = Server::new(c, vec![testutil::plugin()]).unwrap();
        for z in &s.zts {
            z.exited.store(true, Ordering::SeqCst);
        }
        let dev = testutil::Device::new(tag);
        let m = crate::mounts::mount(7, &testutil::plugin(), &dev.0, &dev.0).unwrap();
        let mut st = s.state();
        st.mounts.push(Arc::new(m));
        s.publish(&st);
        drop(st);
        (s, 7, dev)
    }

    /// A channel set in an ordinary memfd, laid out and headed as the module lays out its own,
    /// with the HELLO answer that goes with it.
    fn kernel_set(server: &Server, ncpu: usize) -> (ShmRegion, KHello) {
        let g = Geometry::new(ncpu, 4, 64 << 10).unwrap();
        let fd = ShmRegion::create_memfd(c"zufs-kset", g.total_size()).unwrap();
        let region = ShmRegion::map(fd.as_fd(), g.total_size()).unwrap();
        region.write(0, &server.channel_header(&g, 0));
        let h = KHello {
            ncpu: u32::try_from(ncpu).unwrap(),
            slots_per_cpu: 4,
            window_size: 64 << 10,
            total_size: g.total_size() as u64,
            lane_size: u32::try_from(g.lane_size()).unwrap(),
            ..KHello::default()
        };
        (region, h)
    }

    #[test]
    fn test_the_kernel_client_is_privileged_attached_to_every_mount_and_apart_from_user_clients() {
        let (s, mount, _dev) = server_on("kreg", 0);
        let user = testutil::client(&s);
        let (region, h) = kernel_set(&s, 2);
        let port = Arc::new(FakePort::default());
        let k = register(&s, region, &h, port.clone()).unwrap();
        assert!(k.privileged && k.kernel_bridge && k.features & zus_api::features::KERNEL_BRIDGE != 0);
        assert_eq!(k.cred.uid, 0);
        assert_ne!(k.id, user.id);
        assert!(port.kicks.load(Ordering::SeqCst) > 0, "publishing kicks the K-ZTs");
        let snap = s.current_snapshot();
        let (kc, att) = snap.kernel.as_ref().unwrap();
        assert_eq!(kc.id, k.id);
        assert_eq!(att.as_slice(), [crate::server::Attachment { mount_id: mount, ticketed: false }]);
        assert!(snap.clients.iter().all(|(c, _)| c.id != k.id), "futex ZTs must not serve the kernel's lanes");
        assert_eq!(snap.all_clients().map(|c| c.id).collect::<Vec<_>>(), vec![user.id, k.id]);
        // A layout change reaches the kernel's channel header too.
        let chan = Channel::new(&k.region, k.geometry);
        let before = chan.layout_gen().load(Ordering::SeqCst);
        crate::zt::publish_layout_change(&s, &snap);
        assert!(chan.layout_gen().load(Ordering::SeqCst) > before);
        drop(snap);
        // A new mount is the kernel's at once; the user client still has to attach.
        let dev2 = testutil::Device::new("kreg2");
        let mut st = s.state();
        st.mounts.push(Arc::new(crate::mounts::mount(8, &testutil::plugin(), &dev2.0, &dev2.0).unwrap()));
        s.publish(&st);
        drop(st);
        let snap = s.current_snapshot();
        assert_eq!(snap.kernel.as_ref().unwrap().1.len(), 2);
        assert!(snap.mount_for(&snap.clients[0].1, 8).is_none());
        drop(snap);
        detach(&s);
        assert!(s.current_snapshot().kernel.is_none() && s.kernel_port().is_none());
        s.unmount_all();
    }

    #[test]
    fn test_register_refuses_a_set_that_is_not_what_hello_said() {
        let (s, _, _dev) = server_on("kbad", 0);
        let port: Arc<dyn Port> = Arc::new(FakePort::default());
        let (region, mut h) = kernel_set(&s, 2);
        h.slots_per_cpu = 8;
        let e = register(&s, region, &h, Arc::clone(&port)).unwrap_err().to_string();
        assert!(e.contains("differs from HELLO"), "{e}");
        let (region, h) = kernel_set(&s, 2);
        region.atomic_u64(0).store(0, Ordering::SeqCst);
        let e = register(&s, region, &h, Arc::clone(&port)).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        let (region, h) = kernel_set(&s, 2);
        region.atomic_u32(core::mem::offset_of!(ChannelSetHeader, lane_size)).fetch_add(4096, Ordering::SeqCst);
        assert!(register(&s, region, &h, Arc::clone(&port)).is_err());
        // A CPU of ours without a lane in the kernel's set.
        let (s, _, _dev) = server_on("kbad2", 3);
        let (region, h) = kernel_set(&s, 2);
        let e = register(&s, region, &h, port).unwrap_err().to_string();
        assert!(e.contains("CPU 3 has no lane"), "{e}");
        assert!(s.current_snapshot().kernel.is_none() && s.kernel_port().is_none());
        s.unmount_all();
    }

    #[test]
    fn test_config_refuses_the_kernel_transport_with_a_simulated_topology() {
        let mut c = testutil::config("ksim");
        c.kernel = KernelMode::On;
        assert_eq!(c.validate().map(|_| ()), Err(crate::ConfigError::KernelWithSimulatedTopology));
        assert!(c.validate().unwrap_err().to_string().contains("real CPU topology"));
        c.kernel = KernelMode::Auto;
        assert!(c.validate().is_ok());
        assert!(!wanted(&c), "auto never serves the module with a simulated topology");
        assert_eq!("off".parse::<KernelMode>(), Ok(KernelMode::Off));
        assert_eq!("on".parse::<KernelMode>(), Ok(KernelMode::On));
        assert!("maybe".parse::<KernelMode>().is_err());
    }

    /// Sends one op on `lane` of the kernel set as the module does, waits for the reply.
    fn kernel_op(k: &Client, lane: usize, hdr: OpHeader, payload: &[u8]) -> OpHeader {
        let chan = Channel::new(&k.region, k.geometry);
        let l = chan.lane(lane);
        let slot = l.try_claim().unwrap();
        slot.write_request(&OpHeader { in_len: u32::try_from(payload.len()).unwrap(), ..hdr }, &[payload]);
        l.submit(slot);
        let t0 = Instant::now();
        while slot.wait_done(Duration::from_millis(5)) != ReplyWait::Done {
            assert!(t0.elapsed() < Duration::from_secs(10), "the K-ZT did not serve the op");
        }
        let r = slot.reply_header();
        l.release(slot);
        r
    }

    #[test]
    fn test_a_kzt_serves_its_lane_of_the_kernel_set_acknowledges_snapshots_and_leaves_on_break() {
        let cpu = zus_channel::cpu::allowed_cpus()[0];
        let (s, mount, _dev) = server_on("kzt", cpu);
        let (region, h) = kernel_set(&s, cpu + 1);
        let port = Arc::new(FakePort::default());
        let dynport: Arc<dyn Port> = port.clone();
        let k = register(&s, region, &h, Arc::clone(&dynport)).unwrap();
        let attached = Attached { threads: start_zts(&s, &dynport).unwrap() };
        assert_eq!(attached.zts(), 1);
        assert_eq!(*port.inits.lock().unwrap(), vec![u32::try_from(cpu).unwrap()]);
        assert!(!s.kzts[0].exited.load(Ordering::SeqCst));

        let hdr = OpHeader { uid: 1000, gid: 1000, pid: 42, seq: 5, ..OpHeader::default() };
        let r = kernel_op(&k, cpu, OpHeader { opcode: OpCode::Noop as u32, ..hdr }, &[]);
        assert_eq!((r.result, r.seq), (0, 5));
        // Every mount is the kernel's to address, without attaching.
        let ino = InoReq { ino: 1 };
        let req = zus_api::ops::Pod::as_bytes(&ino);
        let r = kernel_op(&k, cpu, OpHeader { opcode: OpCode::Getattr as u32, mount_id: mount, ..hdr }, req);
        assert_eq!(r.result, 0);
        let r = kernel_op(&k, cpu, OpHeader { opcode: OpCode::Getattr as u32, mount_id: 99, ..hdr }, req);
        assert_eq!(r.result, Errno::EBADF.to_wire());
        let r = kernel_op(&k, cpu, OpHeader { opcode: 9999, ..hdr }, &[]);
        assert_eq!(r.result, Errno::ENOSYS.to_wire());
        // The kernel has no process whose memory remote iovecs could name.
        let io = zus_api::ops::IoReq {
            ino: 1,
            len: 8,
            data_kind: zus_api::ops::DATA_REMOTE_IOV,
            niov: 1,
            ..Default::default()
        };
        let iov = zus_api::ops::IoVec { addr: 4096, len: 8 };
        let mut req = zus_api::ops::Pod::as_bytes(&io).to_vec();
        req.extend_from_slice(zus_api::ops::Pod::as_bytes(&iov));
        let r = kernel_op(&k, cpu, OpHeader { opcode: OpCode::Read as u32, mount_id: mount, ..hdr }, &req);
        assert_eq!(r.result, Errno::EINVAL.to_wire());
        assert_eq!(s.kzts[0].ops.load(Ordering::SeqCst), 5, "served by the K-ZT");
        assert_eq!(s.kzts[0].rejected.load(Ordering::SeqCst), 3, "unknown mount, unknown op, remote iovecs");
        assert_eq!(s.zts[0].ops.load(Ordering::SeqCst), 0);
        assert_eq!(s.status().lanes[0].ops, 5, "status counts both threads of the CPU");

        // A new snapshot waits for the K-ZT's acknowledgement, which a kick brings.
        let kicks = port.kicks.load(Ordering::SeqCst);
        s.publish(&s.state());
        assert!(port.kicks.load(Ordering::SeqCst) > kicks);
        assert_eq!(s.kzts[0].seen_generation.load(Ordering::SeqCst), s.generation.load(Ordering::SeqCst));

        attached.stop(&s);
        assert!(s.kzts[0].exited.load(Ordering::SeqCst));
        assert!(port.broken.load(Ordering::SeqCst));
        detach(&s);
        s.unmount_all();
    }
}
