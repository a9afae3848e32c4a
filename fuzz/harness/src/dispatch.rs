//! zusd's request decoding and validation, with one client's channel memory as input.
//!
//! A server (no threads; one simulated CPU, 4 slots of 8 KiB, 16 KiB windows) with two nullfs
//! mounts (1: read-write, 2: `ro`) and four clients that differ in what zusd trusts them with:
//!
//! | client | uid | privileged | kernel bridge | mount 1 | mount 2 |
//! |---|---|---|---|---|---|
//! | 0 | 0 | yes | yes | owner | owner |
//! | 1 | 0 | yes | no | owner | owner |
//! | 2 | 1000 | no | no | tickets only | tickets only |
//! | 3 | 1000 | no | no | owner | tickets only |
//!
//! Input: one byte picks the client; then, for each of the lane's slots, a chunk (u16 length)
//! of raw bytes laid over the slot (state word, reply words, `data_ready`, the `OpHeader` at
//! 128, the payload at 192) and a chunk laid over its data window. Whatever slots hold
//! `SUBMITTED` are served by `zus_server::zt::serve_client`, exactly as a ZT serves a lane
//! (take, one header copy, `dispatch::serve`, layout-generation bump, `complete`).
//!
//! Two things the harness fixes up, because a real client could only make them slower, not
//! different: `data_ready` is set to "everything is there" (a streamed write whose client stops
//! filling the window only makes zusd wait 100 ms and fail with EFAULT), and a header ticket of
//! 1, 2 or 3 is replaced by a live ticket (63 random bits nobody can guess) of uid 1000 for
//! inode 1 (writable), 2 (read-only) or 3 (writable) on mount 1. The clients' pid, which zusd
//! moves remote iovecs against, is a sacrificial child process: fuzzed addresses land there.
//!
//! Checked after each input: every submitted slot is `DONE`, its reply fits the payload
//! (`out_len <= PAYLOAD_SIZE`, nothing with an error), its `data_len` fits the window.
//!
//! nullfs keeps its namespace in memory and builds a 1 MiB read pattern at mount, so its mounts
//! are remade every [`REMOUNT_EVERY`] inputs (kernel-cache marks and tickets are reset on every
//! input): an input may meet a few files that earlier inputs created.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use zus_api::chan::{Geometry, SLOT_SIZE, Slot as SlotLayout, slot_state};
use zus_api::ops::OpHeader;
use zus_channel::proto::Channel;
use zus_channel::shm::ShmRegion;
use zus_channel::sock::PeerCred;
use zus_plugin::PluginVtable;
use zus_server::dispatch::Scratch;
use zus_server::mounts::{self, Mount};
use zus_server::plugins::Plugin;
use zus_server::server::{Attachment, Client, Config, Server, Snapshot};
use zus_server::tickets::Ticket;
use zus_server::topology::{Cpu, Topology};

use crate::Reader;

static NULLFS: PluginVtable = zus_plugin::vtable::<nullfs::NullFs>();

/// Slots per lane.
pub const SLOTS: usize = 4;
/// Bytes of each slot's data window.
pub const WINDOW: usize = 16 << 10;
/// Inputs served by one pair of nullfs mounts.
pub const REMOUNT_EVERY: u64 = 4096;
/// uid of the unprivileged clients.
pub const USER: u32 = 1000;

const HDR_OFF: usize = core::mem::offset_of!(SlotLayout, hdr);
const DATA_READY_OFF: usize = core::mem::offset_of!(SlotLayout, data_ready);

struct Fixture {
    server: Arc<Server>,
    plugin: Plugin,
    clients: Vec<(Arc<Client>, Vec<Attachment>)>,
    mounts: Vec<Arc<Mount>>,
    served: u64,
    scratch: Scratch,
    zeroes: Vec<u8>,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("zufs-fuzz-dispatch-{}", std::process::id()));
    Config {
        plugin_dir: dir.join("plugins"),
        socket: dir.join("zusd.sock"),
        topology: Topology { cpus: vec![Cpu { id: 0, node: 0, os_cpu: 0 }], nnodes: 1, simulated: true },
        slots_per_cpu: SLOTS,
        window_size: WINDOW,
        client_spin_ns: 0,
        zt_poll_ns: 0,
        max_clients: 8,
        kernel: zus_server::KernelMode::Off,
    }
}

fn client(server: &Server, id: u32, pid: u32, uid: u32, privileged: bool, bridge: bool) -> Arc<Client> {
    let g = server.config.validate().expect("fuzz config");
    let fd = ShmRegion::create_memfd(c"zufs-fuzz", g.total_size()).expect("memfd");
    let region = ShmRegion::map(std::os::fd::AsFd::as_fd(&fd), g.total_size()).expect("map");
    region.write(0, &server.channel_header(&g, id));
    Arc::new(Client {
        id,
        cred: PeerCred { pid, uid, gid: uid },
        privileged,
        kernel_bridge: bridge,
        name: format!("fuzz{id}"),
        features: if bridge { zus_api::features::KERNEL_BRIDGE } else { 0 },
        region,
        geometry: g,
    })
}

fn attach(m1_ticketed: bool, m2_ticketed: bool) -> Vec<Attachment> {
    vec![Attachment { mount_id: 1, ticketed: m1_ticketed }, Attachment { mount_id: 2, ticketed: m2_ticketed }]
}

fn fresh_mounts(plugin: &Plugin) -> Vec<Arc<Mount>> {
    vec![
        Arc::new(mounts::mount(1, plugin, "", "").expect("nullfs mount")),
        Arc::new(mounts::mount(2, plugin, "", "ro").expect("nullfs ro mount")),
    ]
}

fn unmount(ms: Vec<Arc<Mount>>) {
    for m in ms {
        let m = Arc::try_unwrap(m).expect("the harness holds the last reference to its mounts");
        m.unmount().expect("nullfs unmount");
    }
}

impl Fixture {
    fn new() -> Self {
        let plugin = Plugin { name: "nullfs".into(), path: PathBuf::from("(fuzz)"), vtable: &NULLFS };
        let server = Server::new(config(), Vec::new()).expect("fuzz server");
        // No ZT threads: serve_client runs on the fuzzer's thread; nothing waits for them.
        for z in server.zts.iter().chain(&server.kzts) {
            z.exited.store(true, Ordering::SeqCst);
        }
        let peer = crate::sacrificial_peer();
        let clients = vec![
            (client(&server, 1, peer, 0, true, true), attach(false, false)),
            (client(&server, 2, peer, 0, true, false), attach(false, false)),
            (client(&server, 3, peer, USER, false, false), attach(true, true)),
            (client(&server, 4, peer, USER, false, false), attach(false, true)),
        ];
        let mounts = fresh_mounts(&plugin);
        let lane_size = clients[0].0.geometry.lane_size();
        Self { server, plugin, clients, mounts, served: 0, scratch: Scratch::new(), zeroes: vec![0; lane_size] }
    }

    fn run(&mut self, data: &[u8]) {
        self.served += 1;
        if self.served.is_multiple_of(REMOUNT_EVERY) {
            unmount(std::mem::take(&mut self.mounts));
            self.mounts = fresh_mounts(&self.plugin);
        }
        let mut r = Reader::new(data);
        let which = usize::from(r.u8()) % self.clients.len();
        let (client, attached) = &self.clients[which];
        // Every input starts from clean marks and a fresh set of tickets.
        let bridge = self.clients[0].0.id;
        let mut tickets = [0u64; 3];
        for m in &self.mounts {
            for (c, _) in &self.clients {
                m.kernel_cache.drop_client(c.id);
            }
            m.tickets.drop_issuer(bridge);
        }
        for (i, t) in tickets.iter_mut().enumerate() {
            let ino = i as u64 + 1;
            let issued = Ticket { ino, uid: USER, writable: ino != 2, issuer: bridge };
            *t = self.mounts[0].tickets.issue(issued).expect("ticket");
        }
        // The lane's memory: zeroed, then the input laid over each slot and window.
        let g: Geometry = client.geometry;
        let region = &client.region;
        region.copy_in(g.lane_offset(0), &self.zeroes);
        let lane = Channel::new(region, g).lane(0);
        let mut submitted = [false; SLOTS];
        for (s, sub) in submitted.iter_mut().enumerate() {
            let slot = lane.slot(s);
            let at = g.slot_offset(0, s);
            let raw = r.chunk();
            region.copy_in(at, &raw[..raw.len().min(SLOT_SIZE)]);
            let win = r.chunk();
            slot.copy_to_window(0, win);
            region.atomic_u32(at + DATA_READY_OFF).store(u32::MAX, Ordering::Release);
            let mut hdr: OpHeader = region.read(at + HDR_OFF);
            if let Some(&t) = hdr.ticket.checked_sub(1).and_then(|i| tickets.get(i as usize)) {
                hdr.ticket = t;
                region.write(at + HDR_OFF, &hdr);
            }
            *sub = slot.state() == slot_state::SUBMITTED;
        }
        let snap = Snapshot { generation: 1, clients: self.clients.clone(), mounts: self.mounts.clone(), kernel: None };
        let ctl = &self.server.zts[0];
        let pass = zus_server::zt::serve_client(&self.server, ctl, 0, &snap, client, attached, &mut self.scratch);
        drop(snap);
        assert_eq!(pass.served, submitted.iter().filter(|s| **s).count(), "every submitted slot is served once");
        for (s, sub) in submitted.iter().enumerate() {
            if !sub {
                continue;
            }
            let slot = lane.slot(s);
            assert_eq!(slot.state(), slot_state::DONE, "slot {s} served but not DONE");
            let h = slot.reply_header();
            if debug() {
                eprintln!(
                    "dispatch: client {which} slot {s} op {} -> {} (out {}, data {})",
                    h.opcode, h.result, h.out_len, h.data_len
                );
            }
            assert!(h.out_len as usize <= zus_api::chan::PAYLOAD_SIZE, "slot {s}: reply of {} bytes", h.out_len);
            assert!(h.data_len as usize <= WINDOW, "slot {s}: {} window bytes", h.data_len);
            if h.result < 0 {
                assert_eq!(h.out_len, 0, "slot {s}: an error with a reply payload");
            }
        }
    }
}

fn debug() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("ZUFS_FUZZ_DEBUG").is_some())
}

impl Drop for Fixture {
    /// A `Mount` frees its plugin state only through `unmount` (zusd unmounts explicitly).
    fn drop(&mut self) {
        unmount(std::mem::take(&mut self.mounts));
    }
}

/// One input (see the module doc).
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| f.borrow_mut().get_or_insert_with(Fixture::new).run(data));
}

/// An input with `client` sending `reqs`: each an op header, its payload and its window bytes,
/// one per slot (at most [`SLOTS`]).
#[must_use]
pub fn encode(client: u8, reqs: &[(OpHeader, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    use zus_api::ops::Pod;
    let mut out = vec![client];
    for (hdr, payload, window) in reqs.iter().take(SLOTS) {
        let mut slot = vec![0u8; HDR_OFF];
        slot[..4].copy_from_slice(&slot_state::SUBMITTED.to_le_bytes());
        slot.extend_from_slice(hdr.as_bytes());
        slot.resize(core::mem::offset_of!(SlotLayout, payload), 0);
        slot.extend_from_slice(payload);
        crate::put_chunk(&mut out, &slot);
        crate::put_chunk(&mut out, window);
    }
    out
}
