//! The server core: shared state, clients, the generation barrier, and server start/stop.
//!
//! State that ZTs read on every op (clients, mounts) is published as an immutable
//! [`Snapshot`] behind a generation counter, RCU style: the control thread builds a new snapshot,
//! bumps the generation, wakes every ZT and waits until each has picked it up. A ZT refreshes only
//! between ops, so once all have acknowledged, nothing references a removed client or mount and
//! it can be torn down (unmount, unmap) without a lock on the hot path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use zus_api::chan::{ChannelSetHeader, Geometry};
use zus_channel::control::{FsTypeInfo, LaneInfo, MountInfo, StatusInfo};
use zus_channel::shm::{ShmRegion, futex};
use zus_channel::sock::PeerCred;

use crate::kernel::{KernelMode, Port};
use crate::mounts::Mount;
use crate::plugins::Plugin;
use crate::topology::Topology;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of plugin `.so` files.
    pub plugin_dir: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// Topology (real or simulated).
    pub topology: Topology,
    /// Slots per lane.
    pub slots_per_cpu: usize,
    /// Data window per slot.
    pub window_size: usize,
    /// Spin budget suggested to clients whose ZT runs on another CPU.
    pub client_spin_ns: u32,
    /// How long a ZT polls for new work after serving a client that spins on another CPU.
    pub zt_poll_ns: u32,
    /// Most connected clients, 1..=[`Config::MAX_CLIENTS`].
    pub max_clients: usize,
    /// Whether to serve the kernel module through `/dev/zufs` ([`crate::kernel`]).
    pub kernel: KernelMode,
}

/// A configuration the server cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `max_clients` outside 1..=[`Config::MAX_CLIENTS`].
    #[error(
        "max_clients {0} is out of range 1..={max}: a ZT sleeps on every client's doorbell and its own control word \
         in one futex_waitv, which takes at most {waitv} words",
        max = Config::MAX_CLIENTS,
        waitv = futex::WAITV_MAX
    )]
    MaxClients(usize),
    /// The CPU count, slots per CPU or window size make no channel geometry.
    #[error(transparent)]
    Geometry(#[from] zus_api::chan::GeometryError),
    /// The kernel transport was asked for with a simulated topology.
    #[error(
        "the kernel transport (/dev/zufs) needs the real CPU topology: the module's lanes are the kernel's CPUs, \
         one K-ZT pinned to each; drop the simulated topology or turn the kernel transport off"
    )]
    KernelWithSimulatedTopology,
}

impl Config {
    /// Most clients one server can serve: each ZT waits on every client's doorbell plus its own
    /// control word in one `futex_waitv` call ([`futex::WAITV_MAX`] words).
    pub const MAX_CLIENTS: usize = futex::WAITV_MAX - 1;
    /// Default for [`Config::max_clients`].
    pub const DEFAULT_MAX_CLIENTS: usize = 120;
    /// Default for [`Config::window_size`].
    pub const DEFAULT_WINDOW_SIZE: usize = 1 << 20;
    /// Default for [`Config::client_spin_ns`].
    pub const DEFAULT_CLIENT_SPIN_NS: u32 = 20_000;
    /// Default for [`Config::zt_poll_ns`].
    pub const DEFAULT_ZT_POLL_NS: u32 = 50_000;

    /// A configuration with the default limits.
    #[must_use]
    pub fn new(plugin_dir: PathBuf, socket: PathBuf, topology: Topology) -> Self {
        Self {
            plugin_dir,
            socket,
            topology,
            slots_per_cpu: zus_api::chan::DEFAULT_SLOTS_PER_CPU,
            window_size: Self::DEFAULT_WINDOW_SIZE,
            client_spin_ns: Self::DEFAULT_CLIENT_SPIN_NS,
            zt_poll_ns: Self::DEFAULT_ZT_POLL_NS,
            max_clients: Self::DEFAULT_MAX_CLIENTS,
            kernel: KernelMode::Off,
        }
    }

    /// Checks the limits; returns the channel geometry every client gets.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value out of range.
    pub fn validate(&self) -> Result<Geometry, ConfigError> {
        if !(1..=Self::MAX_CLIENTS).contains(&self.max_clients) {
            return Err(ConfigError::MaxClients(self.max_clients));
        }
        if self.kernel == KernelMode::On && self.topology.simulated {
            return Err(ConfigError::KernelWithSimulatedTopology);
        }
        Ok(Geometry::new(self.topology.cpus.len(), self.slots_per_cpu, self.window_size)?)
    }
}

/// Per-ZT control words and counters (server-private memory).
#[derive(Debug, Default)]
pub struct ZtControl {
    /// Bumped (and futex-woken) by the control thread to make the ZT re-read the snapshot.
    pub wake: AtomicU32,
    /// Generation the ZT has picked up.
    pub seen_generation: AtomicU64,
    /// Ops served.
    pub ops: AtomicU64,
    /// Set while the ZT serves an op (see `zt::wait_for_other_zts`).
    pub busy: AtomicBool,
    /// Requests refused as malformed.
    pub rejected: AtomicU64,
    /// Set once the ZT exited.
    pub exited: AtomicBool,
}

/// A connected client: its private channel memory and credentials.
#[derive(Debug)]
pub struct Client {
    /// Id.
    pub id: u32,
    /// Peer credentials from the socket.
    pub cred: PeerCred,
    /// Root clients (the FUSE bridge) may act on behalf of the users named in op headers.
    pub privileged: bool,
    /// A privileged client that announced [`zus_api::features::KERNEL_BRIDGE`]: the kernel
    /// side of a mount (see [`crate::kcache`]).
    pub kernel_bridge: bool,
    /// Program name from the hello.
    pub name: String,
    /// Features the client announced.
    pub features: u64,
    /// The channel memory.
    pub region: ShmRegion,
    /// Its geometry.
    pub geometry: Geometry,
}

/// What ZTs see: clients with the mounts each may use, and all mounts.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Generation this snapshot belongs to.
    pub generation: u64,
    /// Clients and the mounts they attached.
    pub clients: Vec<(Arc<Client>, Vec<Attachment>)>,
    /// Mounts.
    pub mounts: Vec<Arc<Mount>>,
    /// The kernel module's channel set ([`crate::kernel`]), attached to every mount. Not among
    /// `clients`: its lanes are the kernel's CPUs, served by the K-ZTs alone.
    pub kernel: Option<(Arc<Client>, Vec<Attachment>)>,
}

/// A client's attachment to a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The mount.
    pub mount_id: u32,
    /// The client does not own the mount: data ops with tickets only ([`crate::tickets`]).
    pub ticketed: bool,
}

impl Snapshot {
    /// The mount `id` and whether the client is attached with tickets only, if `attached`
    /// allows it at all.
    #[must_use]
    pub fn mount_for(&self, attached: &[Attachment], id: u32) -> Option<(&Arc<Mount>, bool)> {
        let a = attached.iter().find(|a| a.mount_id == id)?;
        self.mounts.iter().find(|m| m.id == id).map(|m| (m, a.ticketed))
    }

    /// Every client's channel set: the user clients', then the kernel's.
    pub fn all_clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.iter().map(|(c, _)| c).chain(self.kernel.as_ref().map(|(c, _)| c))
    }
}

/// Mutable server state, under one mutex (control plane only).
#[derive(Debug, Default)]
pub struct State {
    /// Clients and attached mounts.
    pub clients: Vec<(Arc<Client>, Vec<Attachment>)>,
    /// Mounts.
    pub mounts: Vec<Arc<Mount>>,
    /// Who mounted each mount (uid), for attach permission.
    pub mount_owner: Vec<(u32, u32)>,
    /// Next ids.
    pub next_client: u32,
    /// Next mount id.
    pub next_mount: u32,
    /// The kernel client, while zusd serves the module.
    pub kernel: Option<Arc<Client>>,
}

/// The server.
#[derive(Debug)]
pub struct Server {
    /// Configuration.
    pub config: Config,
    /// Loaded plugins.
    pub plugins: Vec<Plugin>,
    /// Per-ZT control.
    pub zts: Vec<ZtControl>,
    /// Per-K-ZT control (the kernel transport's thread on each CPU, by topology lane); marked
    /// exited while none runs.
    pub kzts: Vec<ZtControl>,
    /// The module's device while zusd serves it (for kicks).
    kernel: Mutex<Option<Arc<dyn Port>>>,
    /// Current generation.
    pub generation: AtomicU64,
    /// Published snapshot.
    pub snapshot: Mutex<Arc<Snapshot>>,
    /// Control state.
    pub state: Mutex<State>,
    /// Set at shutdown.
    pub shutting_down: AtomicBool,
    /// Layout generation published in every client's channel header (`ChannelSetHeader::layout_gen`):
    /// the process's one clock, [`crate::host::LAYOUT_GEN`], shared with every other server here.
    pub layout_gen: &'static AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Server {
    /// Creates the server state (no threads yet).
    ///
    /// # Errors
    /// [`ConfigError`] when `config` does not [validate](Config::validate).
    pub fn new(config: Config, plugins: Vec<Plugin>) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let zts = (0..config.topology.cpus.len()).map(|_| ZtControl::default()).collect();
        let kzts = (0..config.topology.cpus.len())
            .map(|_| ZtControl { exited: AtomicBool::new(true), ..ZtControl::default() })
            .collect();
        let s = Arc::new(Self {
            config,
            plugins,
            zts,
            kzts,
            kernel: Mutex::new(None),
            generation: AtomicU64::new(1),
            snapshot: Mutex::new(Arc::new(Snapshot { generation: 1, ..Default::default() })),
            state: Mutex::new(State { next_client: 1, next_mount: 1, ..Default::default() }),
            shutting_down: AtomicBool::new(false),
            layout_gen: &crate::host::LAYOUT_GEN,
        });
        let weak: std::sync::Weak<Self> = Arc::downgrade(&s);
        crate::host::register(weak);
        Ok(s)
    }

    /// The oldest layout generation any client's dax copy in progress checked its extents
    /// against (its reader slots; `u64::MAX` when no copy is in progress).
    #[must_use]
    pub fn oldest_dax_reader(&self) -> u64 {
        let snap = self.current_snapshot();
        let mut oldest = u64::MAX;
        for c in snap.all_clients() {
            for i in 0..zus_api::chan::DAX_READER_SLOTS {
                let g = c.region.atomic_u64(c.geometry.dax_reader_offset(i)).load(Ordering::SeqCst);
                if g != 0 {
                    oldest = oldest.min(g);
                }
            }
        }
        oldest
    }

    /// Locks the control state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The current snapshot.
    #[must_use]
    pub fn current_snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&lock(&self.snapshot))
    }

    /// Publishes `st` as a new snapshot and waits until every live ZT has picked it up.
    pub fn publish(&self, st: &State) {
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let kernel = st.kernel.as_ref().map(|k| {
            // The module's mounts name zusd mounts: the kernel may address every one.
            (Arc::clone(k), st.mounts.iter().map(|m| Attachment { mount_id: m.id, ticketed: false }).collect())
        });
        let snap = Arc::new(Snapshot { generation, clients: st.clients.clone(), mounts: st.mounts.clone(), kernel });
        // Keep the old snapshot alive until every ZT moved on: a ZT may be asleep on its doorbells.
        let old = std::mem::replace(&mut *lock(&self.snapshot), snap);
        self.generation.store(generation, Ordering::SeqCst);
        self.wake_zts(&old);
        self.wait_for_zts(generation);
    }

    /// The module's port while zusd serves it.
    #[must_use]
    pub fn kernel_port(&self) -> Option<Arc<dyn Port>> {
        lock(&self.kernel).clone()
    }

    /// Sets or clears the module's port ([`crate::kernel`]).
    pub(crate) fn kernel_slot(&self) -> MutexGuard<'_, Option<Arc<dyn Port>>> {
        lock(&self.kernel)
    }

    /// Wakes every ZT: through its control word, and through the doorbells of the clients of
    /// `snap` (a ZT serving exactly one client sleeps on that client's doorbell alone); and
    /// every K-ZT, through the module's `KICK_ALL`.
    fn wake_zts(&self, snap: &Snapshot) {
        if let Some(p) = self.kernel_port() {
            p.kick_all();
        }
        for (lane, z) in self.zts.iter().enumerate() {
            z.wake.fetch_add(1, Ordering::SeqCst);
            futex::wake(&z.wake, 1);
            for (c, _) in &snap.clients {
                let bell = c.region.atomic_u32(
                    c.geometry.lane_offset(lane) + core::mem::offset_of!(zus_api::chan::LaneHeader, doorbell),
                );
                bell.fetch_add(1, Ordering::SeqCst);
                futex::wake(bell, 1);
            }
        }
    }

    /// Wakes every ZT and waits until each has seen `generation` (or exited).
    pub fn wait_for_zts(&self, generation: u64) {
        self.wake_zts(&self.current_snapshot());
        let mut waited = Duration::ZERO;
        for z in self.zts.iter().chain(&self.kzts) {
            while z.seen_generation.load(Ordering::SeqCst) < generation && !z.exited.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(100));
                waited += Duration::from_micros(100);
                if waited.as_secs() >= 5 && waited.as_micros() % 5_000_000 < 100 {
                    tracing::warn!("still waiting for a ZT to pick up generation {generation} (busy in a long op?)");
                }
            }
        }
    }

    /// Builds the channel-set header for a new client.
    #[must_use]
    pub fn channel_header(&self, g: &Geometry, client_id: u32) -> ChannelSetHeader {
        let mut cpu_node = [0u16; zus_api::chan::MAX_CPUS];
        for c in &self.config.topology.cpus {
            if let Some(slot) = cpu_node.get_mut(c.id) {
                *slot = u16::try_from(c.node).unwrap_or(u16::MAX);
            }
        }
        ChannelSetHeader {
            magic: zus_api::ZUS_MAGIC,
            abi_version: zus_api::ZUS_ABI_VERSION,
            header_size: u32::try_from(size_of::<ChannelSetHeader>()).unwrap_or(0),
            features: zus_api::features::ALL,
            ncpu: u32::try_from(g.ncpu).unwrap_or(0),
            slots_per_cpu: u32::try_from(g.slots_per_cpu).unwrap_or(0),
            window_size: u32::try_from(g.window_size).unwrap_or(0),
            lane_size: u32::try_from(g.lane_size()).unwrap_or(0),
            lanes_offset: g.lanes_offset() as u64,
            total_size: g.total_size() as u64,
            server_pid: std::process::id(),
            client_id,
            client_spin_ns: self.config.client_spin_ns,
            nnodes: u32::try_from(self.config.topology.nnodes).unwrap_or(1),
            cpu_node,
            layout_gen: self.layout_gen.load(Ordering::SeqCst),
            reserved: [0; 48],
        }
    }

    /// Status for `zufs status`.
    #[must_use]
    pub fn status(&self) -> StatusInfo {
        let st = self.state();
        let handed = crate::handoff::served_per_cpu();
        StatusInfo {
            pid: std::process::id(),
            plugins: self.fs_types(),
            mounts: st.mounts.iter().map(|m| mount_info(m)).collect(),
            clients: u32::try_from(st.clients.len()).unwrap_or(u32::MAX),
            lanes: self
                .config
                .topology
                .cpus
                .iter()
                .zip(self.zts.iter().zip(&self.kzts))
                .map(|(c, (z, k))| LaneInfo {
                    cpu: u32::try_from(c.id).unwrap_or(0),
                    node: u32::try_from(c.node).unwrap_or(0),
                    // Every thread of the CPU: its ZT's, its K-ZT's and the requests of transports
                    // handed to zusd that were served on it.
                    ops: z.ops.load(Ordering::Relaxed)
                        + k.ops.load(Ordering::Relaxed)
                        + handed.get(c.id).copied().unwrap_or(0),
                    rejected: z.rejected.load(Ordering::Relaxed) + k.rejected.load(Ordering::Relaxed),
                })
                .collect(),
            topology: self.config.topology.describe(),
        }
    }

    /// Loaded fs types.
    #[must_use]
    pub fn fs_types(&self) -> Vec<FsTypeInfo> {
        self.plugins
            .iter()
            .map(|p| FsTypeInfo {
                name: p.name.clone(),
                path: p.path.display().to_string(),
                needs_device: p.needs_device(),
            })
            .collect()
    }

    /// Unmounts everything (shutdown): removes mounts from the snapshot, waits for ZTs, then
    /// lets each plugin flush.
    pub fn unmount_all(&self) {
        let mounts = {
            let mut st = self.state();
            let m = std::mem::take(&mut st.mounts);
            for c in &mut st.clients {
                c.1.clear();
            }
            self.publish(&st);
            m
        };
        for m in mounts {
            finish_unmount(m);
        }
    }
}

impl crate::host::DaxReaders for Server {
    fn oldest_dax_reader(&self) -> u64 {
        Server::oldest_dax_reader(self)
    }
}

/// Describes a mount.
#[must_use]
pub fn mount_info(m: &Mount) -> MountInfo {
    let (served_by, served_per_cpu) = crate::handoff::served(m.id);
    MountInfo {
        mount_id: m.id,
        fs_type: m.fs_type.clone(),
        device: m.device.clone(),
        options: m.options.clone(),
        root: m.root,
        map_sync: m.map_sync,
        ticketed: false,
        kernel_cached: m.kernel_cache.len() as u64,
        tickets: m.tickets.len() as u64,
        served_by,
        served_per_cpu,
    }
}

/// How long [`finish_unmount`] waits for the last reference to a removed mount.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// Runs the plugin's unmount once the last reference is gone.
pub fn finish_unmount(m: Arc<Mount>) {
    finish_unmount_within(m, UNMOUNT_WAIT);
}

/// [`finish_unmount`], waiting `wait` for stragglers before handing the mount to a thread of
/// its own that waits on.
///
/// The device is unmapped only by [`Mount::unmount`], after the plugin's unmount: a mount still
/// referenced when the wait ends stays mapped (the holder may be calling into the plugin, which
/// uses the mapping) until the last reference is gone and the plugin has flushed.
fn finish_unmount_within(m: Arc<Mount>, wait: Duration) {
    let id = m.id;
    // After the barrier only the old snapshot (held by the server mutex) may still reference it;
    // wait briefly for stragglers (a connection thread building a status reply).
    let m = match unmount_when_free(m, wait) {
        Ok(()) => return,
        Err(m) => m,
    };
    tracing::error!("mount {id} still referenced after {wait:?}; leaving it mapped until the last reference is gone");
    let held = Arc::clone(&m);
    let spawned = std::thread::Builder::new().name(format!("zusd-unmount{id}")).spawn(move || {
        let mut m = m;
        loop {
            match unmount_when_free(m, Duration::from_secs(60)) {
                Ok(()) => return,
                Err(back) => {
                    tracing::warn!("mount {id} is still referenced; its unmount waits on");
                    m = back;
                }
            }
        }
    });
    match spawned {
        Ok(_) => drop(held),
        Err(e) => {
            // Never unmap under a user: keep the mount (and its mapping) for the process's life.
            tracing::error!("mount {id}: cannot start a thread to finish its unmount ({e}); it stays mapped");
            std::mem::forget(held);
        }
    }
}

/// Runs the plugin's unmount once `m` is the last reference, waiting at most `wait` for that;
/// gives `m` back when it is still shared.
fn unmount_when_free(m: Arc<Mount>, wait: Duration) -> Result<(), Arc<Mount>> {
    let id = m.id;
    let mut m = m;
    let t0 = std::time::Instant::now();
    loop {
        match Arc::try_unwrap(m) {
            Ok(mount) => {
                let dev = mount.device.clone();
                match mount.unmount() {
                    Ok(()) => tracing::info!("unmounted mount {id} ({dev})"),
                    Err(e) => tracing::error!("unmount of mount {id} ({dev}) reported: {e}"),
                }
                return Ok(());
            }
            Err(back) if t0.elapsed() < wait => {
                m = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(back) => return Err(back),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    #[test]
    fn test_unmount_timeout_leaves_the_device_mapped_until_the_plugin_unmounted() {
        let dev = testutil::Device::new("unmount-timeout");
        let m = Arc::new(crate::mounts::mount(7, &testutil::plugin(), &dev.0, &dev.0).unwrap());
        assert!(testutil::mapped(&dev.0));
        // A straggler (a ZT stuck in a long op, say) still holds the mount when the wait ends.
        let straggler = Arc::clone(&m);
        finish_unmount_within(m, Duration::from_millis(50));
        assert!(testutil::unmounts_of(&dev.0).is_empty(), "unmount ran while the mount was in use");
        assert!(testutil::mapped(&dev.0), "the device was unmapped while the mount was in use");
        // Once the straggler lets go, the plugin unmounts (with the device still mapped), and
        // only then is the device unmapped.
        drop(straggler);
        let t0 = std::time::Instant::now();
        while testutil::unmounts_of(&dev.0).is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(testutil::unmounts_of(&dev.0), vec![true], "the plugin's unmount must run, before the unmap");
        while testutil::mapped(&dev.0) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!testutil::mapped(&dev.0), "the device stays mapped after the unmount");
    }

    #[test]
    fn test_config_refuses_more_clients_than_a_zt_can_wait_on() {
        for bad in [0, 128, 500] {
            let mut c = testutil::config("cap");
            c.max_clients = bad;
            match crate::start(c) {
                Err(crate::StartError::Config(e)) => {
                    assert_eq!(e, ConfigError::MaxClients(bad));
                    assert!(e.to_string().contains("1..=127"), "{e}");
                }
                r => panic!("max_clients {bad}: {r:?}"),
            }
        }
        for good in [1, Config::MAX_CLIENTS] {
            let mut c = testutil::config("cap");
            c.max_clients = good;
            assert_eq!(c.validate().map(|g| g.ncpu), Ok(1));
        }
        let mut c = testutil::config("cap");
        c.window_size = 1000;
        assert!(matches!(c.validate(), Err(ConfigError::Geometry(_))));
        assert_eq!(Config::MAX_CLIENTS, 127);
    }
}
