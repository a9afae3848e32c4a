//! ZT threads: one per CPU, pinned, serving its lane of every client's channel set (P-CH1).
//!
//! The wait/wake of a ZT sits behind [`ZtWait`], so a kernel-module transport (a ZT sleeping in
//! an ioctl, as in ZUFS) can replace the futex one.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use zus_api::chan::{LaneHeader, PAYLOAD_SIZE, Slot, slot_state};
use zus_api::ops::{HDR_F_CLIENT_SPINS, OpCode, OpHeader};
use zus_channel::shm::futex::{self, WaitV};

use crate::dispatch::{self, Scratch};
use crate::server::{Server, Snapshot};

const DOORBELL: usize = core::mem::offset_of!(LaneHeader, doorbell);
const ZT_SLEEPING: usize = core::mem::offset_of!(LaneHeader, zt_sleeping);
const ZT_CPU: usize = core::mem::offset_of!(LaneHeader, zt_cpu);
const ZT_POLLING: usize = core::mem::offset_of!(LaneHeader, zt_polling);
const LAYOUT_GEN: usize = core::mem::offset_of!(zus_api::chan::ChannelSetHeader, layout_gen);
const OPS_REJECTED: usize = core::mem::offset_of!(LaneHeader, ops_rejected);
const STATE: usize = core::mem::offset_of!(Slot, state);
const REPLY_SEQ: usize = core::mem::offset_of!(Slot, reply_seq);
const CLIENT_WAITING: usize = core::mem::offset_of!(Slot, client_waiting);
const DATA_READY: usize = core::mem::offset_of!(Slot, data_ready);
const HDR: usize = core::mem::offset_of!(Slot, hdr);
const PAYLOAD: usize = core::mem::offset_of!(Slot, payload);

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
        set_lane_word(snap, lane, ZT_SLEEPING, 1);
        self.waiters.clear();
        // Shared, like `futex::wake` that the control thread uses (private and shared keys differ).
        self.waiters.push(WaitV::shared(&ctl.wake, wake_val));
        let mut pending = server.generation.load(Ordering::SeqCst) != snap.generation;
        for (c, _) in &snap.clients {
            let lo = c.geometry.lane_offset(lane);
            let bell = c.region.atomic_u32(lo + DOORBELL);
            self.waiters.push(WaitV::shared(bell, bell.load(Ordering::SeqCst)));
            pending |= (0..c.geometry.slots_per_cpu).any(|s| {
                c.region.atomic_u32(c.geometry.slot_offset(lane, s) + STATE).load(Ordering::SeqCst)
                    == slot_state::SUBMITTED
            });
        }
        if !pending {
            if let [(c, _)] = snap.clients.as_slice() {
                // One client (the common case: the FUSE bridge, or one preloaded program): a
                // plain futex wait on its doorbell is cheaper than futex_waitv. The control
                // thread rings this doorbell too when it needs us (Server::wake_zts).
                let bell = c.region.atomic_u32(c.geometry.lane_offset(lane) + DOORBELL);
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
        set_lane_word(snap, lane, ZT_SLEEPING, 0);
    }
}

fn pin_to(os_cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(os_cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
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
    if let Err(e) = pin_to(cpu.os_cpu) {
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
                    let lo = c.geometry.lane_offset(lane);
                    c.region.first_touch(lo, c.geometry.lane_size());
                    c.region.atomic_u32(lo + ZT_CPU).store(u32::try_from(cpu.os_cpu).unwrap_or(0), Ordering::Relaxed);
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
    set_lane_word(snap, lane, ZT_POLLING, 1);
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
    set_lane_word(snap, lane, ZT_POLLING, 0);
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

/// Stores `v` (SeqCst) into the lane-header word at `word` of `lane` in every client's channels.
fn set_lane_word(snap: &Snapshot, lane: usize, word: usize, v: u32) {
    for (c, _) in &snap.clients {
        c.region.atomic_u32(c.geometry.lane_offset(lane) + word).store(v, Ordering::SeqCst);
    }
}

fn any_submitted(snap: &Snapshot, lane: usize) -> bool {
    snap.clients.iter().any(|(c, _)| {
        (0..c.geometry.slots_per_cpu).any(|s| {
            c.region.atomic_u32(c.geometry.slot_offset(lane, s) + STATE).load(Ordering::Relaxed)
                == slot_state::SUBMITTED
        })
    })
}

/// Ops after which a client's cached extents may be wrong: they may point at blocks the file no
/// longer owns, or (KernelCache) the kernel now caches the file and dax access must stop.
fn invalidates_extents(opcode: u32) -> bool {
    OpCode::from_u32(opcode).is_some_and(|c| {
        matches!(
            c,
            OpCode::Setattr
                | OpCode::Fallocate
                | OpCode::Unlink
                | OpCode::Rmdir
                | OpCode::Rename
                | OpCode::Release
                | OpCode::Forget
                | OpCode::KernelCache
        )
    })
}

/// Waits until every other ZT has finished the op it is serving now. Called after a kernel-cache
/// mark was set: an op that read the marks before the mark existed is then over, and every later
/// op sees the mark (its `busy` store comes first, SeqCst, and the mark is SeqCst too). An op
/// takes microseconds (the longest, a 1 MiB copy, well under a millisecond), so this spins,
/// yielding now and then in case the other ZT waits for this CPU.
fn wait_for_other_zts(server: &Server, lane: usize) {
    for (i, z) in server.zts.iter().enumerate() {
        if i == lane {
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
fn publish_layout_change(server: &Server, snap: &Snapshot) -> u64 {
    let before = server.layout_gen.fetch_add(1, Ordering::SeqCst);
    for (c, _) in &snap.clients {
        c.region.atomic_u64(LAYOUT_GEN).fetch_max(before + 1, Ordering::SeqCst);
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

/// What one [`serve_pass`] did.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    /// Ops served.
    served: usize,
    /// One of them came from a client spinning for its reply on another CPU that sends back to
    /// back (`HDR_F_CLIENT_SPINS`).
    client_spins: bool,
}

/// Serves every submitted slot of `lane` once; returns how many were served.
fn serve_pass(server: &Server, lane: usize, snap: &Snapshot, scratch: &mut Scratch) -> Pass {
    let mut pass = Pass::default();
    for (client, attached) in &snap.clients {
        let g = &client.geometry;
        for s in 0..g.slots_per_cpu {
            let so = g.slot_offset(lane, s);
            let state = client.region.atomic_u32(so + STATE);
            if state.load(Ordering::Relaxed) != slot_state::SUBMITTED
                || state
                    .compare_exchange(slot_state::SUBMITTED, slot_state::SERVING, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            // One fetch of the header into private memory; everything is validated from the copy.
            let hdr: OpHeader = client.region.read(so + HDR);
            let window = dispatch::Window {
                offset: g.window_offset(lane, s),
                size: g.window_size,
                ready_offset: so + DATA_READY,
            };
            let ctl = &server.zts[lane];
            // SeqCst: pairs with the load in `wait_for_other_zts` (a Dekker pattern with the
            // kernel-cache mark, which this op reads after this store).
            ctl.busy.store(true, Ordering::SeqCst);
            let out = dispatch::serve(snap, client, attached, &hdr, so + PAYLOAD, window, scratch);
            if hdr.opcode == OpCode::KernelCache as u32 && out.result == 0 {
                // Before the reply: once a mark returns, no data op that missed it still runs.
                wait_for_other_zts(server, lane);
            }
            if invalidates_extents(hdr.opcode) {
                // Before the reply: once this op returns, no client may trust extents from before.
                let before = publish_layout_change(server, snap);
                if hdr.opcode == OpCode::KernelCache as u32 && out.result == 0 {
                    // And no dax copy checked against the layout from before the mark still
                    // runs, so the kernel reads what those copies wrote.
                    wait_for_dax_readers(server, before);
                }
            }
            let lo = g.lane_offset(lane);
            if out.rejected {
                ctl.rejected.fetch_add(1, Ordering::Relaxed);
                client.region.atomic_u64(lo + OPS_REJECTED).fetch_add(1, Ordering::Relaxed);
            }
            ctl.ops.fetch_add(1, Ordering::Relaxed);
            let reply = OpHeader {
                result: out.result,
                out_len: u32::try_from(out.reply_len).unwrap_or(0),
                data_len: u32::try_from(out.data_len).unwrap_or(0),
                ..hdr
            };
            if out.reply_len > 0 {
                client.region.copy_in(so + PAYLOAD, &scratch.reply[..out.reply_len.min(PAYLOAD_SIZE)]);
            }
            client.region.write(so + HDR, &reply);
            // A client that scribbled on the state meanwhile only confuses itself.
            let _ = state.compare_exchange(slot_state::SERVING, slot_state::DONE, Ordering::Release, Ordering::Relaxed);
            let seq = client.region.atomic_u32(so + REPLY_SEQ);
            seq.fetch_add(1, Ordering::SeqCst);
            if client.region.atomic_u32(so + CLIENT_WAITING).load(Ordering::SeqCst) != 0 {
                futex::wake(seq, 1);
            }
            ctl.busy.store(false, Ordering::Release);
            pass.served += 1;
            pass.client_spins |= hdr.flags & HDR_F_CLIENT_SPINS != 0;
        }
    }
    pass
}
