//! ZT threads: one per CPU, pinned, serving its lane of every client's channel set (P-CH1).
//!
//! The wait/wake of a ZT sits behind [`ZtWait`]. The kernel module's lanes are served by a
//! second thread per CPU, the K-ZT ([`crate::kernel`]), with the same [`serve_client`].
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use zus_api::chan::PAYLOAD_SIZE;
use zus_api::ops::{HDR_F_CLIENT_SPINS, OpCode, OpHeader};
use zus_channel::proto::{Channel, Lane};
use zus_channel::shm::futex::{self, WaitV};

use crate::dispatch::{self, Scratch};
use crate::server::{Attachment, Client, Server, Snapshot, ZtControl};

/// The slot protocol's view of a client's channel set.
fn chan(c: &crate::server::Client) -> Channel<'_> {
    Channel::new(&c.region, c.geometry)
}

/// `lane` of a client's channel set.
fn lane_of(c: &crate::server::Client, lane: usize) -> Lane<'_> {
    chan(c).lane(lane)
}

/// How a ZT sleeps until there may be work (the transport boundary).
pub trait ZtWait {
    /// Sleeps until a doorbell of `snap` for `lane` or the control word moves.
    fn wait(&mut self, server: &Server, lane: usize, snap: &Snapshot);
}

/// Futex transport: `futex_waitv` over the control word and every client's doorbell.
#[derive(Debug, Default)]
pub struct FutexWait {
    waiters: Vec<WaitV>,
}

impl ZtWait for FutexWait {
    fn wait(&mut self, server: &Server, lane: usize, snap: &Snapshot) {
        let ctl = &server.zts[lane];
        let wake_val = ctl.wake.load(Ordering::SeqCst);
        for_each_lane(snap, lane, |l| l.set_zt_sleeping(true));
        self.waiters.clear();
        // Shared, like `futex::wake` that the control thread uses (private and shared keys differ).
        self.waiters.push(WaitV::shared(&ctl.wake, wake_val));
        let mut pending = server.generation.load(Ordering::SeqCst) != snap.generation;
        for (c, _) in &snap.clients {
            let l = lane_of(c, lane);
            let bell = l.doorbell();
            self.waiters.push(WaitV::shared(bell, bell.load(Ordering::SeqCst)));
            pending |= l.any_submitted();
        }
        if !pending {
            if let [(c, _)] = snap.clients.as_slice() {
                // One client (the common case: the FUSE bridge, or one preloaded program): a
                // plain futex wait on its doorbell is cheaper than futex_waitv. The control
                // thread rings this doorbell too when it needs us (Server::wake_zts).
                let bell = lane_of(c, lane).doorbell();
                let expected = u32::try_from(self.waiters[1].val).unwrap_or(0);
                futex::wait(bell, expected, None);
            } else {
                // SAFETY: every word lives in memory the snapshot keeps mapped (clients' regions
                // are Arc'd by `snap`) or in the server's own ZtControl, for the whole call.
                if let Err(e) = unsafe { futex::waitv(&self.waiters, None) } {
                    // Config::validate keeps clients under the limit; past it, poll rather
                    // than sleep through the doorbells futex_waitv cannot watch.
                    tracing::error!("ZT {lane}: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        for_each_lane(snap, lane, |l| l.set_zt_sleeping(false));
    }
}

fn prefer_node(node: usize) {
    const MPOL_PREFERRED: libc::c_long = 1;
    let mut mask = [0u64; 16];
    if node >= 1024 {
        return;
    }
    mask[node / 64] |= 1 << (node % 64);
    // SAFETY: set_mempolicy reads `maxnode` bits from the mask buffer we own.
    let rc = unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_PREFERRED, mask.as_ptr(), 1024usize) };
    if rc != 0 {
        tracing::debug!("set_mempolicy(node {node}) failed: {}", std::io::Error::last_os_error());
    }
}

/// The ZT main loop for lane `lane`.
pub fn run(server: &Arc<Server>, lane: usize) {
    let cpu = server.config.topology.cpus[lane];
    if let Err(e) = zus_channel::cpu::pin_to(cpu.os_cpu) {
        tracing::warn!("ZT {lane}: cannot pin to CPU {}: {e}", cpu.os_cpu);
    }
    // Real multi-node machines: allocate this thread's memory (and first-touched channel pages)
    // on its node. A simulated topology has no such node to ask for.
    if !server.config.topology.simulated && server.config.topology.nnodes > 1 {
        prefer_node(cpu.node);
    }
    let ctl = &server.zts[lane];
    let mut waiter = FutexWait::default();
    let mut scratch = Scratch::new();
    let mut snap = Arc::new(Snapshot::default());
    let mut touched: Vec<u32> = Vec::new();
    let poll_budget = Duration::from_nanos(u64::from(server.config.zt_poll_ns));
    let mut poll_until: Option<Instant> = None;
    loop {
        let g = server.generation.load(Ordering::SeqCst);
        if g != snap.generation {
            snap = server.current_snapshot();
            // First-touch the lane memory of new clients from this pinned thread (P-NU1).
            touched.retain(|id| snap.clients.iter().any(|(c, _)| c.id == *id));
            for (c, _) in &snap.clients {
                if !touched.contains(&c.id) {
                    let l = lane_of(c, lane);
                    l.first_touch();
                    l.set_zt_cpu(u32::try_from(cpu.os_cpu).unwrap_or(0));
                    touched.push(c.id);
                }
            }
            ctl.seen_generation.store(snap.generation, Ordering::SeqCst);
        }
        if server.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let pass = serve_pass(server, lane, &snap, &mut scratch);
        if pass.served > 0 {
            // A client that spins for its replies and sends back to back (it says so): poll
            // for its next op. A client with long gaps (dax mode's MAP_DONE once per ms) does
            // not ask, so we do not steal CPU time from the job that runs on our CPU.
            if pass.client_spins && !poll_budget.is_zero() {
                poll_until = Some(Instant::now() + poll_budget);
            }
            continue;
        }
        if let Some(until) = poll_until.take()
            && poll(server, lane, &snap, until)
        {
            continue;
        }
        waiter.wait(server, lane, &snap);
    }
    ctl.exited.store(true, Ordering::SeqCst);
}

/// How often a polling ZT offers its CPU to other runnable threads.
const POLL_YIELD_EVERY: Duration = Duration::from_micros(4);
/// A `sched_yield` that returns later than this (with an involuntary switch of this thread)
/// means another thread wanted our CPU.
const POLL_CONTENDED: Duration = Duration::from_micros(15);

/// Polls `lane` for new submissions until `until` (P-CH2's bounded ZT spin), announcing it in
/// `zt_polling` so that a submission needs no wake. Polling
/// only pays on an otherwise idle CPU: the ZT yields every few µs, and stops as soon as a yield
/// shows that another thread wanted this CPU (a client running here, or any other work), not
/// when the hypervisor merely took the vCPU away for a while.
/// Returns whether work (or a new snapshot) arrived.
fn poll(server: &Server, lane: usize, snap: &Snapshot, until: Instant) -> bool {
    for_each_lane(snap, lane, |l| l.set_zt_polling(true));
    let switched_out = involuntary_switches();
    let mut found = false;
    let mut last_yield = Instant::now();
    loop {
        for _ in 0..32 {
            if any_submitted(snap, lane) || server.generation.load(Ordering::Relaxed) != snap.generation {
                found = true;
                break;
            }
            core::hint::spin_loop();
        }
        if found {
            break;
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        if now.duration_since(last_yield) >= POLL_YIELD_EVERY {
            // SAFETY: sched_yield takes no arguments and has no memory effects.
            unsafe { libc::sched_yield() };
            let after = Instant::now();
            // A late return alone may be the hypervisor running another guest (steal time);
            // an involuntary switch of this thread means another thread here wanted the CPU.
            if after.duration_since(now) >= POLL_CONTENDED && involuntary_switches() != switched_out {
                break;
            }
            last_yield = after;
        }
    }
    for_each_lane(snap, lane, |l| l.set_zt_polling(false));
    // A client that saw `zt_polling == 1` and skipped the wake may have submitted just now.
    found || any_submitted(snap, lane)
}

/// Involuntary context switches of this thread so far (`getrusage(RUSAGE_THREAD)`): a yield
/// that let another thread run counts as one.
fn involuntary_switches() -> i64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = core::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &raw mut ru) != 0 {
            return -1;
        }
        ru.ru_nivcsw
    }
}

/// Runs `f` on `lane` of every client's channel set.
fn for_each_lane(snap: &Snapshot, lane: usize, f: impl Fn(Lane<'_>)) {
    for (c, _) in &snap.clients {
        f(lane_of(c, lane));
    }
}

fn any_submitted(snap: &Snapshot, lane: usize) -> bool {
    snap.clients.iter().any(|(c, _)| lane_of(c, lane).any_submitted())
}

/// Waits until every other ZT and K-ZT (all but `me`; every one when `me` is `None`) has
/// finished the op it is serving now. Called after a kernel-cache
/// mark was set: an op that read the marks before the mark existed is then over, and every later
/// op sees the mark (its `busy` store comes first, SeqCst, and the mark is SeqCst too). An op
/// takes microseconds (the longest, a 1 MiB copy, well under a millisecond), so this spins,
/// yielding now and then in case the other ZT waits for this CPU.
fn wait_for_other_zts(server: &Server, me: Option<&ZtControl>) {
    for z in server.zts.iter().chain(&server.kzts) {
        if me.is_some_and(|me| core::ptr::eq(z, me)) {
            continue;
        }
        let ops_before = z.ops.load(Ordering::SeqCst);
        let mut spins = 0u32;
        while z.busy.load(Ordering::SeqCst) && z.ops.load(Ordering::SeqCst) == ops_before {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
    }
}

/// Raises the layout generation in every client's channel header (never lowering it: ZTs race).
/// Returns the generation before.
pub(crate) fn publish_layout_change(server: &Server, snap: &Snapshot) -> u64 {
    let before = server.layout_gen.fetch_add(1, Ordering::SeqCst);
    for c in snap.all_clients() {
        chan(c).layout_gen().fetch_max(before + 1, Ordering::SeqCst);
    }
    before
}

/// How long a kernel-cache mark waits for dax copies under an older layout generation (a client
/// stopped mid-copy must not stall the kernel's page fault for long).
const DAX_READER_WAIT: Duration = Duration::from_secs(1);

/// Waits (bounded) until no client's dax reader slot holds generation `old` or older.
fn wait_for_dax_readers(server: &Server, old: u64) {
    let t0 = Instant::now();
    while server.oldest_dax_reader() <= old {
        if t0.elapsed() >= DAX_READER_WAIT {
            tracing::warn!("a dax copy under layout generation {old} still runs after {DAX_READER_WAIT:?}; going on");
            return;
        }
        std::thread::yield_now();
    }
}

/// What must hold before the reply to an op (`opcode`, its `result`) that zusd served on a
/// mount, whichever thread served it: the ZT or K-ZT `me`, or (`me` is `None`) a thread that
/// serves a handed kernel transport inside zusd ([`crate::handoff::LiveMount`]), which is no
/// ZT but changes the same marks and layouts.
///
/// - A kernel-cache mark (or unmark) waits until no data op that missed it still runs on a
///   ZT or K-ZT.
/// - An op that may free or move blocks, or stop dax access (the mark and unmark among them),
///   raises the layout generation in every client's channel header: clients drop the extents
///   they cached, and a fast-path client that was told `EUSEKERNEL` asks again (the unmark's
///   raise is what brings it back). A mark also waits for the dax copies checked against the
///   layout from before it.
pub(crate) fn before_reply(server: &Server, snap: &Snapshot, me: Option<&ZtControl>, opcode: u32, result: i64) {
    let mark = opcode == OpCode::KernelCache as u32 && result == 0;
    if mark {
        if let Some(me) = me {
            // This ZT serves no data op now, so another ZT setting a mark at the same time must
            // not wait for it: two marks (the kernel module's, from two CPUs) would each wait
            // for the other's `busy` forever.
            me.busy.store(false, Ordering::SeqCst);
        }
        // Before the reply: once a mark returns, no data op that missed it still runs.
        wait_for_other_zts(server, me);
    }
    if OpCode::from_u32(opcode).is_some_and(|op| op.facts().invalidates_extents) {
        // Before the reply: once this op returns, no client may trust extents from before.
        let before = publish_layout_change(server, snap);
        if mark {
            // And no dax copy checked against the layout from before the mark still
            // runs, so the kernel reads what those copies wrote.
            wait_for_dax_readers(server, before);
        }
    }
}

/// What one [`serve_pass`] or [`serve_client`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pass {
    /// Ops served.
    pub served: usize,
    /// One of them came from a client spinning for its reply on another CPU that sends back to
    /// back (`HDR_F_CLIENT_SPINS`).
    pub client_spins: bool,
}

/// Serves every submitted slot of `lane` of every user client once.
fn serve_pass(server: &Server, lane: usize, snap: &Snapshot, scratch: &mut Scratch) -> Pass {
    let mut pass = Pass::default();
    let ctl = &server.zts[lane];
    for (client, attached) in &snap.clients {
        let p = serve_client(server, ctl, lane, snap, client, attached, scratch);
        pass.served += p.served;
        pass.client_spins |= p.client_spins;
    }
    pass
}

/// Serves every submitted slot of `lane` of `client`'s channel set once, as the thread whose
/// control words are `ctl` (a ZT's, or a K-ZT's for the kernel client).
#[inline]
pub fn serve_client(
    server: &Server,
    ctl: &ZtControl,
    lane: usize,
    snap: &Snapshot,
    client: &Client,
    attached: &[Attachment],
    scratch: &mut Scratch,
) -> Pass {
    let mut pass = Pass::default();
    let l = lane_of(client, lane);
    for slot in l.slots() {
        if !slot.take() {
            continue;
        }
        // One fetch of the header into private memory; everything is validated from the copy.
        let hdr: OpHeader = slot.request_header();
        // SeqCst: pairs with the load in `wait_for_other_zts` (a Dekker pattern with the
        // kernel-cache mark, which this op reads after this store).
        ctl.busy.store(true, Ordering::SeqCst);
        let out = dispatch::serve(snap, client, attached, &hdr, slot, scratch);
        before_reply(server, snap, Some(ctl), hdr.opcode, out.result);
        if out.rejected {
            ctl.rejected.fetch_add(1, Ordering::Relaxed);
            l.count_rejected();
        }
        ctl.ops.fetch_add(1, Ordering::Relaxed);
        let reply = OpHeader {
            result: out.result,
            out_len: u32::try_from(out.reply_len).unwrap_or(0),
            data_len: u32::try_from(out.data_len).unwrap_or(0),
            ..hdr
        };
        slot.complete(&reply, &scratch.reply[..out.reply_len.min(PAYLOAD_SIZE)]);
        ctl.busy.store(false, Ordering::Release);
        pass.served += 1;
        pass.client_spins |= hdr.flags & HDR_F_CLIENT_SPINS != 0;
    }
    pass
}
