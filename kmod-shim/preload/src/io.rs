//! The data path: channel mode (one op per call; data bounced through the slot window for a
//! short buffer, streamed through it for other calls up to a window, moved once by zusd with
//! process_vm_readv/writev above) and dax mode
//! (extents from MAP cached per file, data copied directly to and from the mapped device with
//! non-temporal stores).
//!
//! Every function returns `Ok(value)` or `Err(errno)`; the hooks turn that into the C
//! convention. Nothing here allocates: requests, iovec arrays and extent lists live on the stack.

use core::sync::atomic::{Ordering, fence};

use zus_api::ops::{
    Attr, DATA_REMOTE_IOV, DATA_WINDOW, DATA_WINDOW_STREAM, EXTENT_HOLE, Extent, FallocateReq, FsyncReq, InoReq,
    IoReply, IoReq, IoVec, MAX_IOV, MAX_MAP_EXTENTS, MapDoneReq, MapReply, MapReq, OpCode, Pod, SetattrReq, io_flags,
    setattr,
};
use zus_client::{DataIn, Stream};

use crate::mount;
use crate::mount::{DataPolicy, LanePolicy, Mount};
use crate::state::{self, FD_UNKNOWN, LAYOUT_EPOCH, Ref, Slot};
use crate::sys;

/// mtime is committed at most this often by dax writes (like the kernel's coarse clock).
pub const COMMIT_NS: u64 = 1_000_000;

/// An fd we serve.
#[derive(Debug, Clone, Copy)]
pub struct File {
    /// Its slot.
    pub s: &'static Slot,
    /// Its mount.
    pub m: &'static Mount,
}

/// A served fd's file, held for the length of a call ([`Ref::Call`]): its slot stays this
/// file's, even when another thread closes the fd meanwhile and an open reuses the number.
/// Dropping it may commit the pending mtime (when the fd was closed during the call).
#[derive(Debug)]
pub struct Held(File);

impl Held {
    /// The file.
    #[inline]
    pub fn file(&self) -> File {
        self.0
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        release_slot(self.0.s, Ref::Call, true);
    }
}

/// Holds the file `fd` names for a call; `e` is its fd table entry as just loaded (an unknown
/// fd is detected first). None: we do not serve it.
#[inline]
pub fn hold(fd: i32, mut e: u32) -> Option<Held> {
    loop {
        if e == FD_UNKNOWN {
            e = mount::detect(fd);
        }
        let s = state::slot_of(e)?;
        if s.try_retain(Ref::Call) {
            // The slot is ours now; it is still this fd's file unless the fd was closed (and
            // the slot set up for another file) between the load and the retain.
            if state::fd_entry(fd) == e {
                let Some(m) = state::mount(s.mount.load(Ordering::Relaxed)) else {
                    release_slot(s, Ref::Call, true);
                    return None;
                };
                return Some(Held(File { s, m }));
            }
            release_slot(s, Ref::Call, true);
        }
        e = state::fd_entry(fd);
    }
}

/// Whether `fd` still names `f` (not closed, or closed and reused, since the call began).
fn names(fd: i32, f: File) -> bool {
    state::slot_of(state::fd_entry(fd)).is_some_and(|s| core::ptr::eq(s, f.s))
}

/// Drops one reference on the slot an fd table entry names (a closed or reused fd); the last
/// one commits a pending mtime (when `commit`) before the slot can be reused.
pub fn release(entry: u32, commit: bool) {
    if let Some(s) = state::slot_of(entry) {
        release_slot(s, Ref::Fd, commit);
    }
}

fn release_slot(s: &'static Slot, r: Ref, commit: bool) {
    let Some(last) = s.release(r) else { return };
    if commit && let Some(m) = state::mount(s.mount.load(Ordering::Relaxed)) {
        let _ = commit_mtime(File { s: last.slot(), m }, false);
    }
}

fn op(f: File, code: OpCode, req: &[&[u8]], reply: &mut [u8]) -> Result<u64, i32> {
    op_sized(f, code, req, reply, 0)
}

/// [`op`] for an op moving `bytes` of data (for the lane choice).
fn op_sized(f: File, code: OpCode, req: &[&[u8]], reply: &mut [u8], bytes: u64) -> Result<u64, i32> {
    let r = f.m.relay()?;
    op_on_lane(f, r, pick_lane(f, r, bytes), code, req, reply)
}

/// [`op`] on a given lane.
fn op_on_lane(
    f: File,
    r: &zus_client::Relay,
    lane: usize,
    code: OpCode,
    req: &[&[u8]],
    reply: &mut [u8],
) -> Result<u64, i32> {
    let st = &state::STATS;
    state::count(
        match code {
            OpCode::Read | OpCode::Write => &st.chan_io,
            OpCode::Map => &st.map,
            OpCode::MapDone => &st.map_done,
            _ => &st.other,
        },
        1,
    );
    let id = f.m.mount_id.load(Ordering::Relaxed) as u32;
    let ticket = f.s.ticket.load(Ordering::Relaxed);
    r.op_with_ticket(lane, id, code, req, DataIn::None, reply, None, None, ticket)
        .map(|o| o.value)
        .map_err(|e| op_errno(f, r, &e))
}

/// Slot `kernel_gen` value: the kernel serves this file for good.
const KERNEL_FOR_GOOD: u64 = u64::MAX;

/// The errno of a failed op; EUSEKERNEL is remembered in the slot (see [`kernel_route`]). A
/// refused ticket (a zusd restarted since the bridge issued it) sends the file to the kernel
/// for good: the kernel mount always serves it correctly.
fn op_errno(f: File, r: &zus_client::Relay, e: &zus_client::RelayError) -> i32 {
    let e = e.errno().0;
    if e == USE_KERNEL {
        f.s.kernel_gen.store(r.layout_gen().wrapping_add(1), Ordering::Relaxed);
    } else if e == libc::EACCES && f.s.ticket.load(Ordering::Relaxed) != 0 {
        f.s.kernel_gen.store(KERNEL_FOR_GOOD, Ordering::Relaxed);
        return USE_KERNEL;
    }
    e
}

/// zusd's answer for a data op on a file whose pages the kernel caches (a shared mmap or a
/// page-cache open through the mount): the hook then makes the real call, through the kernel.
pub const USE_KERNEL: i32 = zus_api::Errno::EUSEKERNEL.0;

/// `Err(USE_KERNEL)` while zusd's last word on this file was EUSEKERNEL and its layout
/// generation has not moved since (the bridge's unmark moves it): no op is sent meanwhile.
#[inline]
fn kernel_route(f: File) -> Result<(), i32> {
    let k = f.s.kernel_gen.load(Ordering::Relaxed);
    if k != 0 && (k == KERNEL_FOR_GOOD || k == f.m.relay()?.layout_gen().wrapping_add(1)) {
        return Err(USE_KERNEL);
    }
    Ok(())
}

/// Largest op (data bytes) the auto lane policy sends to the next CPU's ZT.
const AUTO_PEER_MAX_BYTES: u64 = 32 * 1024;

/// The ZT lane for our next op (see [`crate::mount::LanePolicy`]).
#[inline]
fn pick_lane(f: File, r: &zus_client::Relay, bytes: u64) -> usize {
    let peer = match f.m.lane {
        LanePolicy::Own => false,
        LanePolicy::Peer => true,
        LanePolicy::Auto => bytes <= AUTO_PEER_MAX_BYTES && zus_client::Relay::sends_back_to_back(),
    };
    lane_of(r, peer)
}

/// The lane of our CPU's ZT, or of the next CPU's.
#[inline]
fn lane_of(r: &zus_client::Relay, peer: bool) -> usize {
    (zus_client::current_cpu() + usize::from(peer)) % r.geometry().ncpu
}

/// The lane of a long op (above [`AUTO_PEER_MAX_BYTES`]) and, under the auto policy for a
/// thread that sends back to back, which choice its time should teach ([`long_lane`]).
fn pick_long_lane(f: File, r: &zus_client::Relay, bytes: u64) -> (usize, Option<bool>) {
    if f.m.lane != LanePolicy::Auto || bytes <= AUTO_PEER_MAX_BYTES || !zus_client::Relay::sends_back_to_back() {
        return (pick_lane(f, r, bytes), None);
    }
    let peer = long_lane::choose();
    (lane_of(r, peer), Some(peer))
}

/// The lane choice for long back-to-back ops under `ZUFS_LANE=auto`, learnt per thread. Which
/// is faster depends on what else runs: with the next CPU free, its ZT copies while we copy
/// (a streamed 128 KiB op 1.7x faster there); with another job on it, the ZT and that job
/// take turns and the own lane is 2-7x faster (2 jobs, measured on the development VM). Each
/// thread keeps the time per KiB of both choices, takes the faster, and tries the other for 2
/// ops every 256 to 4096 ops (less often while it stays clearly slower), so it follows the load
/// as it changes.
mod long_lane {
    use core::cell::Cell;

    /// Ops between two probes of the other lane while the probes keep finding it slower: from
    /// 256, doubled after each such probe up to 4096 (a probe of a lane 7x slower costs ~12
    /// op-times), back to 256 once a probe finds it no more than 1.5x slower.
    const PROBE_EVERY_MIN: u32 = 256;
    const PROBE_EVERY_MAX: u32 = 4096;
    /// Ops per probe: the first after a switch pays for waking the other side and is not
    /// counted (a ZT that stopped polling, a thread that moved).
    const PROBE_OPS: u32 = 2;

    #[derive(Clone, Copy)]
    struct Costs {
        /// ns per KiB on the own lane and on the next CPU's lane (0: not measured yet).
        own: u32,
        peer: u32,
        /// Ops until the next probe.
        left: u32,
        /// Ops between probes now.
        every: u32,
        /// Ops of the probe in flight still to go (0: not probing).
        probing: u32,
        /// The last choice.
        last_peer: bool,
        /// Whether the op in flight follows one on the same side (its time counts).
        counts: bool,
    }

    std::thread_local! {
        static COST: Cell<Costs> = const {
            Cell::new(Costs {
                own: 0,
                peer: 0,
                left: PROBE_EVERY_MIN,
                every: PROBE_EVERY_MIN,
                probing: 0,
                last_peer: false,
                counts: false,
            })
        };
    }

    /// Whether the next long op goes to the next CPU's ZT.
    pub fn choose() -> bool {
        COST.with(|c| {
            let mut k = c.get();
            let best_peer = k.peer <= k.own;
            let peer = if k.peer == 0 {
                true
            } else if k.own == 0 {
                false
            } else if k.probing > 0 {
                k.probing -= 1;
                k.last_peer
            } else if k.left == 0 {
                k.probing = PROBE_OPS - 1;
                k.left = k.every;
                !best_peer
            } else {
                k.left -= 1;
                best_peer
            };
            k.counts = peer == k.last_peer;
            k.last_peer = peer;
            c.set(k);
            peer
        })
    }

    /// Records how long a long op of `bytes` took on the chosen lane.
    pub fn record(peer: bool, elapsed: core::time::Duration, bytes: u64) {
        let kib = (bytes / 1024).max(1);
        let cost = u32::try_from(elapsed.as_nanos() / u128::from(kib)).unwrap_or(u32::MAX).max(1);
        COST.with(|c| {
            let mut k = c.get();
            // A running mean in which one op counts at most twice the mean: a preempted op
            // (hundreds of µs with two jobs on two CPUs) must not flip the choice by itself,
            // while a load that really changed moves it by up to a quarter per op.
            let mix = |old: u32| {
                if old == 0 {
                    cost
                } else {
                    let sample = u64::from(cost).min(u64::from(old) * 2);
                    ((u64::from(old) * 3 + sample) / 4) as u32
                }
            };
            // The last, counted op of a probe: was the other lane still clearly slower?
            let probe_end = k.counts && k.probing == 0 && k.left == k.every && k.own != 0 && k.peer != 0;
            // A probe's figure replaces the old one (it is stale by a whole probe interval).
            if probe_end && peer {
                k.peer = cost;
            } else if probe_end {
                k.own = cost;
            } else if peer && (k.counts || k.peer == 0) {
                k.peer = mix(k.peer);
            } else if !peer && (k.counts || k.own == 0) {
                k.own = mix(k.own);
            }
            if probe_end {
                let (probed, other) = if peer { (k.peer, k.own) } else { (k.own, k.peer) };
                let slower = u64::from(probed) * 2 > u64::from(other) * 3;
                k.every = if slower { (k.every * 2).min(PROBE_EVERY_MAX) } else { PROBE_EVERY_MIN };
                k.left = k.every;
            }
            c.set(k);
        });
    }

    #[cfg(test)]
    mod tests {
        use core::time::Duration;

        /// Runs `n` ops with the given µs per op on each lane; returns how many went to the peer.
        fn run(n: u32, own_us: u64, peer_us: u64) -> u32 {
            let mut to_peer = 0;
            for _ in 0..n {
                let peer = super::choose();
                to_peer += u32::from(peer);
                super::record(peer, Duration::from_micros(if peer { peer_us } else { own_us }), 128 * 1024);
            }
            to_peer
        }

        #[test]
        fn test_long_lane_takes_the_faster_side_and_probes_less_while_it_stays_slower() {
            // Two jobs: the next CPU's ZT 7x slower. After learning, probes back off to 2 ops
            // in 4096.
            let _ = run(100, 20, 140);
            let peer_ops = run(20_000, 20, 140);
            assert!(peer_ops <= 40, "{peer_ops} of 20000 ops went to the slower lane");
            // The load changes (the other job ends): the next CPU's ZT is now faster. The next
            // probe finds it and the thread moves within one probe interval.
            let peer_ops = run(8192, 40, 23);
            assert!(peer_ops >= 8192 - 4096 - 8, "only {peer_ops} of 8192 ops moved to the faster lane");
            let peer_ops = run(2000, 40, 23);
            assert!(peer_ops >= 2000 - 20, "{peer_ops} of 2000 ops on the faster lane");
        }
    }
}

/// Runs a long op on the lane [`pick_long_lane`] chose and teaches [`long_lane`] its time.
fn timed_long_op<T>(learn: Option<bool>, bytes: u64, op: impl FnOnce() -> Result<T, i32>) -> Result<T, i32> {
    let Some(peer) = learn else { return op() };
    let t0 = std::time::Instant::now();
    let out = op();
    if out.is_ok() {
        long_lane::record(peer, t0.elapsed(), bytes);
    }
    out
}

fn ino(f: File) -> u64 {
    f.s.ino.load(Ordering::Relaxed)
}

fn oflags(f: File) -> i32 {
    f.s.flags.load(Ordering::Relaxed) as i32
}

/// io_flags for a write/read on this file plus `RWF_*` flags of the `*v2` calls.
fn io_flags_of(f: File, rwf: i32) -> u32 {
    let fl = oflags(f);
    let mut x = 0;
    if fl & libc::O_DSYNC != 0 || rwf & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
        x |= io_flags::SYNC;
    }
    if fl & libc::O_DIRECT != 0 {
        x |= io_flags::DIRECT;
    }
    if fl & libc::O_APPEND != 0 || rwf & libc::RWF_APPEND != 0 {
        x |= io_flags::APPEND;
    }
    x
}

fn iov_bytes(v: &[IoVec]) -> &[u8] {
    // SAFETY: IoVec is Pod (repr(C), two u64, no padding); the slice borrows `v`.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

/// The request of a read or write of `len` bytes at `off` on this file.
fn io_req(f: File, off: u64, len: u64, flags: u32, data_kind: u32, niov: u32) -> IoReq {
    IoReq { ino: ino(f), fh: 0, offset: off, len, flags, data_kind, niov, reserved: 0 }
}

/// One channel read or write of the buffers `iov` at `off`: (bytes, reply).
fn chan_io(f: File, write: bool, iov: &[IoVec], total: u64, off: u64, flags: u32) -> Result<(u64, IoReply), i32> {
    if total == 0 {
        return Ok((0, IoReply { size: 0, offset: off }));
    }
    let code = if write { OpCode::Write } else { OpCode::Read };
    let r = f.m.relay()?;
    let fits_window = total <= r.geometry().window_size as u64 && r.streams();
    match f.m.data {
        DataPolicy::Remote => {}
        DataPolicy::Window => return window_io(f, r, code, iov, off, flags),
        DataPolicy::Stream if fits_window => return stream_io(f, r, write, iov, total, off, flags),
        DataPolicy::Stream => {}
        DataPolicy::Auto if iov.len() == 1 && total <= AUTO_WINDOW_MAX_BYTES => {
            return window_io(f, r, code, iov, off, flags);
        }
        DataPolicy::Auto if fits_window => return stream_io(f, r, write, iov, total, off, flags),
        DataPolicy::Auto => {}
    }
    let req = io_req(f, off, total, flags, DATA_REMOTE_IOV, iov.len() as u32);
    let mut rep = [0u8; 16];
    let (lane, learn) = pick_long_lane(f, r, total);
    let n = timed_long_op(learn, total, || op_on_lane(f, r, lane, code, &[req.as_bytes(), iov_bytes(iov)], &mut rep))?;
    Ok((n, IoReply::read_from(&rep).unwrap_or_default()))
}

/// The caller's iovecs, handed to the relay a piece at a time for a streamed op.
struct IovPieces<'a> {
    cur: Cursor<'a>,
    total: usize,
}

impl<'a> IovPieces<'a> {
    fn new(iov: &'a [IoVec], total: u64) -> Self {
        Self { cur: Cursor::new(iov), total: usize::try_from(total).unwrap_or(usize::MAX) }
    }
}

impl zus_client::GatherSource for IovPieces<'_> {
    fn total(&self) -> usize {
        self.total
    }
    fn next_piece(&mut self, max: usize) -> &[u8] {
        let Some((addr, n)) = self.cur.next(max as u64) else { return &[] };
        // SAFETY: a part of one of the caller's buffers, readable for its length (the
        // write(2)/writev(2) contract), borrowed no longer than the call.
        unsafe { core::slice::from_raw_parts(addr.cast_const(), n) }
    }
}

impl zus_client::ScatterSink for IovPieces<'_> {
    fn total(&self) -> usize {
        self.total
    }
    fn next_piece(&mut self, max: usize) -> &mut [u8] {
        let Some((addr, n)) = self.cur.next(max as u64) else { return &mut [] };
        // SAFETY: a part of one of the caller's buffers, writable for its length (the
        // read(2)/readv(2) contract), handed out once and borrowed no longer than the call.
        unsafe { core::slice::from_raw_parts_mut(addr, n) }
    }
}

/// One read or write of all of `iov` as a single op whose data streams through the slot's
/// window (two copies that overlap when the ZT runs on another CPU; counted in `window_io`).
fn stream_io(
    f: File,
    r: &zus_client::Relay,
    write: bool,
    iov: &[IoVec],
    total: u64,
    off: u64,
    flags: u32,
) -> Result<(u64, IoReply), i32> {
    let code = if write { OpCode::Write } else { OpCode::Read };
    let req = io_req(f, off, total, flags, DATA_WINDOW_STREAM, 0);
    state::count(&state::STATS.chan_io, 1);
    state::count(&state::STATS.window_io, 1);
    let id = f.m.mount_id.load(Ordering::Relaxed) as u32;
    let (lane, learn) = pick_long_lane(f, r, total);
    let ticket = f.s.ticket.load(Ordering::Relaxed);
    let mut pieces = IovPieces::new(iov, total);
    let data = if write { Stream::Write(&mut pieces) } else { Stream::Read(&mut pieces) };
    let mut rep = [0u8; 16];
    let n = timed_long_op(learn, total, || {
        r.op_streamed(lane, id, code, &[req.as_bytes()], data, &mut rep, ticket)
            .map(|o| o.value)
            .map_err(|e| op_errno(f, r, &e))
    })?;
    Ok((n, IoReply::read_from(&rep).unwrap_or_default()))
}

/// Largest single buffer the auto data policy bounces through the window: up to here two
/// memcpys cost less than one `process_vm_readv` on the machines we measured (4 KiB: 0.4 µs vs
/// 1.4 µs; 64 KiB: 9.7 µs vs 8.6 µs).
const AUTO_WINDOW_MAX_BYTES: u64 = 32 * 1024;

/// The named two-copy fallback (`ZUFS_DATA=window`, and short buffers under `auto`): data
/// bounces through the slot's window, one buffer (piece) per op. Counted in `window_io`.
fn window_io(
    f: File,
    r: &zus_client::Relay,
    code: OpCode,
    iov: &[IoVec],
    mut off: u64,
    flags: u32,
) -> Result<(u64, IoReply), i32> {
    let win = r.geometry().window_size as u64;
    let mut done = 0u64;
    let mut last = IoReply { size: 0, offset: off };
    for v in iov {
        let mut at = 0u64;
        while at < v.len {
            let n = (v.len - at).min(win);
            let p = (v.addr + at) as *mut u8;
            let req =
                IoReq { ino: ino(f), fh: 0, offset: off, len: n, flags, data_kind: DATA_WINDOW, niov: 0, reserved: 0 };
            let mut rep = [0u8; 16];
            state::count(&state::STATS.chan_io, 1);
            state::count(&state::STATS.window_io, 1);
            let id = f.m.mount_id.load(Ordering::Relaxed) as u32;
            let lane = pick_lane(f, r, n);
            let ticket = f.s.ticket.load(Ordering::Relaxed);
            let o = if code == OpCode::Write {
                // SAFETY: the caller's buffer, valid for `v.len` bytes (write(2) contract).
                let d = unsafe { core::slice::from_raw_parts(p, n as usize) };
                r.op_with_ticket(lane, id, code, &[req.as_bytes()], DataIn::Window(d), &mut rep, None, None, ticket)
            } else {
                // SAFETY: as above, writable (read(2) contract).
                let d = unsafe { core::slice::from_raw_parts_mut(p, n as usize) };
                r.op_with_ticket(lane, id, code, &[req.as_bytes()], DataIn::None, &mut rep, Some(d), None, ticket)
            };
            let o = match o {
                Ok(o) => o,
                // What was done stays done (an append must not be repeated by a retry).
                Err(_) if done > 0 => return Ok((done, last)),
                Err(e) => return Err(op_errno(f, r, &e)),
            };
            let got = o.value;
            last = IoReply::read_from(&rep).unwrap_or_default();
            if flags & io_flags::APPEND != 0 && done == 0 {
                off = last.offset;
            }
            done += got;
            off += got;
            at += got;
            if got < n {
                return Ok((done, last));
            }
        }
    }
    Ok((done, last))
}

// ----------------------------------------------------------------------------------------------
// dax
// ----------------------------------------------------------------------------------------------

/// Where a file offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// At `dev` on the device, `run` bytes contiguous.
    Mapped { dev: u64, run: u64 },
    /// A hole of `run` bytes.
    Hole { run: u64 },
    /// At or beyond end of file.
    Eof,
}

fn search(ext: &[Extent], size: u64, pos: u64) -> Option<Loc> {
    if pos >= size {
        return Some(Loc::Eof);
    }
    let i = ext.partition_point(|e| e.file_offset <= pos).checked_sub(1)?;
    let e = ext[i];
    if pos >= e.file_offset + e.len {
        return None;
    }
    let run = e.file_offset + e.len - pos;
    Some(if e.dev_offset == EXTENT_HOLE {
        Loc::Hole { run }
    } else {
        Loc::Mapped { dev: e.dev_offset + (pos - e.file_offset), run }
    })
}

/// What cached extents must have been filled under to be trusted: this process's own layout
/// epoch (its truncates, punches, reconnects) and zusd's layout generation (raised before any
/// client's truncate, punch, unlink... returns). Freed blocks are not reused for a grace period
/// (pmemfs `REUSE_GRACE`), which covers a copy that started just before the generation moved.
#[inline]
fn layout_epoch(f: File) -> Result<(u64, u64), i32> {
    Ok((LAYOUT_EPOCH.load(Ordering::Acquire), f.m.relay()?.layout_gen()))
}

/// Seqlock read of the cached extents.
#[inline]
fn cache_lookup(s: &Slot, pos: u64, (epoch, layout_gen): (u64, u64)) -> Option<Loc> {
    let q = s.seq.load(Ordering::Acquire);
    if q & 1 == 1 || s.epoch.load(Ordering::Relaxed) != epoch || s.layout_gen.load(Ordering::Relaxed) != layout_gen {
        return None;
    }
    let n = (s.n.load(Ordering::Relaxed) as usize).min(MAX_MAP_EXTENTS);
    let size = s.size.load(Ordering::Relaxed);
    let loc = if pos >= size {
        Loc::Eof
    } else {
        // Last extent starting at or before pos.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if s.ext[mid].file_off.load(Ordering::Relaxed) <= pos { lo = mid + 1 } else { hi = mid }
        }
        let i = lo.checked_sub(1)?;
        let e = &s.ext[i];
        let (fo, dev, len) =
            (e.file_off.load(Ordering::Relaxed), e.dev_off.load(Ordering::Relaxed), e.len.load(Ordering::Relaxed));
        if pos >= fo.wrapping_add(len) {
            return None;
        }
        let run = fo + len - pos;
        if dev == EXTENT_HOLE { Loc::Hole { run } } else { Loc::Mapped { dev: dev + (pos - fo), run } }
    };
    fence(Ordering::Acquire);
    (s.seq.load(Ordering::Relaxed) == q).then_some(loc)
}

/// MAP: extents of `[off, off+len)` into `out`; returns (count, file size).
fn map(f: File, off: u64, len: u64, write: bool, out: &mut [Extent; MAX_MAP_EXTENTS]) -> Result<(usize, u64), i32> {
    let req = MapReq { ino: ino(f), offset: off, len, write: u32::from(write), reserved: 0 };
    let mut rep = [0u8; 16 + 24 * MAX_MAP_EXTENTS];
    let r = op(f, OpCode::Map, &[req.as_bytes()], &mut rep);
    let r = match r {
        Err(e) if e == libc::ENOSYS || e == libc::EOPNOTSUPP => {
            f.m.dax_ok.store(false, Ordering::Relaxed);
            return Err(e);
        }
        r => r?,
    };
    let _ = r;
    let h = MapReply::read_from(&rep).ok_or(libc::EIO)?;
    let n = (h.count as usize).min(MAX_MAP_EXTENTS);
    for (i, e) in out.iter_mut().enumerate().take(n) {
        *e = Extent::read_from(&rep[16 + 24 * i..]).ok_or(libc::EIO)?;
    }
    Ok((n, h.size))
}

/// Maps (for reading) from `from` to the end of file and caches the result when the cache is
/// not being refilled by another thread.
fn fill_from(f: File, from: u64, buf: &mut [Extent; MAX_MAP_EXTENTS]) -> Result<(usize, u64), i32> {
    let (epoch, layout_gen) = layout_epoch(f)?;
    let (n, size) = map(f, from, 1 << 50, false, buf)?;
    let s = f.s;
    let q = s.seq.load(Ordering::Relaxed);
    if q & 1 == 0 && s.seq.compare_exchange(q, q + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
        for (c, e) in s.ext.iter().zip(&buf[..n]) {
            c.file_off.store(e.file_offset, Ordering::Relaxed);
            c.dev_off.store(e.dev_offset, Ordering::Relaxed);
            c.len.store(e.len, Ordering::Relaxed);
        }
        s.n.store(n as u32, Ordering::Relaxed);
        s.size.store(size, Ordering::Relaxed);
        s.epoch.store(epoch, Ordering::Relaxed);
        s.layout_gen.store(layout_gen, Ordering::Relaxed);
        s.seq.store(q + 2, Ordering::Release);
    }
    Ok((n, size))
}

/// Where `pos` lives: from the cache unless `force`, else from a fresh MAP.
fn locate(f: File, pos: u64, force: bool) -> Result<Loc, i32> {
    if !force && let Some(l) = cache_lookup(f.s, pos, layout_epoch(f)?) {
        return Ok(l);
    }
    let mut buf = [Extent::default(); MAX_MAP_EXTENTS];
    // Whole file first (most files have few extents), else from just before pos.
    for from in [0, pos & !0xffff, pos] {
        let (n, size) = fill_from(f, from, &mut buf)?;
        if let Some(l) = search(&buf[..n], size, pos) {
            return Ok(l);
        }
    }
    Err(libc::EIO)
}

/// A cursor over the caller's buffers.
struct Cursor<'a> {
    iov: &'a [IoVec],
    i: usize,
    at: u64,
}

impl<'a> Cursor<'a> {
    fn new(iov: &'a [IoVec]) -> Self {
        Self { iov, i: 0, at: 0 }
    }

    /// The next piece of at most `max` (> 0) bytes, within one buffer: (pointer, length);
    /// `None` once every buffer was visited.
    fn next(&mut self, max: u64) -> Option<(*mut u8, usize)> {
        while self.i < self.iov.len() {
            let v = self.iov[self.i];
            let take = (v.len - self.at).min(max);
            let piece = (v.addr + self.at) as *mut u8;
            self.at += take;
            if self.at == v.len {
                self.i += 1;
                self.at = 0;
            }
            if take > 0 {
                return Some((piece, take as usize));
            }
        }
        None
    }

    /// Calls `f(buffer pointer, len, bytes before it)` for the next `n` bytes, piece by piece.
    fn each(&mut self, mut n: u64, mut f: impl FnMut(*mut u8, usize, u64)) {
        let mut done = 0u64;
        while n > 0 {
            let Some((p, len)) = self.next(n) else { return };
            f(p, len, done);
            done += len as u64;
            n -= len as u64;
        }
    }

    /// The rest as iovecs in `out`; returns how many.
    fn rest(&self, out: &mut [IoVec; MAX_IOV]) -> usize {
        let mut k = 0;
        for (j, v) in self.iov.iter().enumerate().skip(self.i) {
            let skip = if j == self.i { self.at } else { 0 };
            if v.len > skip {
                out[k] = IoVec { addr: v.addr + skip, len: v.len - skip };
                k += 1;
            }
        }
        k
    }
}

fn dev_ptr(f: File, dev: u64, n: u64) -> Result<*mut u8, i32> {
    let d = f.m.dax.ok_or(libc::EIO)?;
    let end = dev.checked_add(n).ok_or(libc::EIO)?;
    if end > d.len as u64 {
        return Err(libc::EIO);
    }
    Ok((d.base + dev as usize) as *mut u8)
}

fn dax_write(f: File, r: &DaxReader<'_>, iov: &[IoVec], total: u64, off: u64, flags: u32) -> Result<u64, i32> {
    let now = sys::now_ns();
    let end = off.checked_add(total).ok_or(libc::EFBIG)?;
    let mut cur = Cursor::new(iov);
    let mut pos = off;
    let mut wrote_direct = false;
    // Bytes copied stay copied whatever happens next: an error after some landed makes a short
    // write (with their mtime pending), like the kernel's.
    let res = (|| {
        while pos < end {
            let loc = match locate_published(f, r, pos, false) {
                // Done so far stays done; the rest goes in channel mode (a partial write).
                Err(DAX_USE_CHANNEL) if pos > off => break,
                l => l?,
            };
            match loc {
                Loc::Mapped { dev, run } => {
                    let n = run.min(end - pos);
                    let dst = dev_ptr(f, dev, n)?;
                    // SAFETY: `dst..dst+n` lies in the device mapping (checked); the source pieces are
                    // the caller's buffers (write(2) contract); they cannot overlap the private
                    // device mapping unless the caller passes it to us, which only a program that
                    // mapped the device itself could do.
                    cur.each(n, |src, len, at| unsafe { zus_pmem::flush::nt_copy(dst.add(at as usize), src, len) });
                    r.clear();
                    pos += n;
                    wrote_direct = true;
                }
                Loc::Hole { run } => {
                    // Allocate the hole's blocks (zeroed by the server), then copy, unless the layout
                    // moved meanwhile (then look again).
                    r.clear();
                    let want = run.min(end - pos);
                    let mut buf = [Extent::default(); MAX_MAP_EXTENTS];
                    let before = f.m.relay()?.layout_gen();
                    let (n, _) = map(f, pos, want, true, &mut buf)?;
                    f.s.invalidate();
                    if r.publish() != before {
                        r.clear();
                        continue;
                    }
                    let mut progressed = false;
                    for e in &buf[..n] {
                        if e.file_offset != pos || e.dev_offset == EXTENT_HOLE || e.len == 0 {
                            break;
                        }
                        let len = e.len.min(end - pos);
                        let dst = dev_ptr(f, e.dev_offset, len)?;
                        // SAFETY: as above.
                        cur.each(len, |src, l, at| unsafe { zus_pmem::flush::nt_copy(dst.add(at as usize), src, l) });
                        pos += len;
                        progressed = true;
                        wrote_direct = true;
                    }
                    r.clear();
                    if !progressed {
                        return Err(libc::EIO);
                    }
                }
                Loc::Eof => {
                    r.clear();
                    // Extending: the server writes and moves the size in one op (atomic against other
                    // writers, no MAP_DONE round trip).
                    let mut rest = [IoVec::default(); MAX_IOV];
                    let k = cur.rest(&mut rest);
                    zus_pmem::flush::fence();
                    let (n, rep) = chan_io(f, true, &rest[..k], end - pos, pos, flags & !io_flags::APPEND)?;
                    f.s.size.fetch_max(rep.size, Ordering::Relaxed);
                    pos += n;
                    break;
                }
            }
        }
        Ok(())
    })();
    state::count(&state::STATS.dax_bytes, pos - off);
    if wrote_direct {
        // Drain the non-temporal stores: durable for O_SYNC/O_DIRECT and visible to zusd
        // (and so to the kernel mount) before we return. From here the data has landed and its
        // mtime is pending.
        zus_pmem::flush::fence();
        f.s.dirty.store(true, Ordering::Release);
        let last = f.s.last_commit.load(Ordering::Relaxed);
        if now.wrapping_sub(last) >= COMMIT_NS
            && let Err(e) = commit_mtime(f, flags & io_flags::SYNC != 0)
            && flags & io_flags::SYNC != 0
            && res.is_ok()
        {
            // An O_SYNC/O_DSYNC write whose metadata did not reach pmem fails, as the kernel's
            // does when its sync after the write fails; the mtime stays pending either way.
            return Err(e);
        }
    }
    match res {
        Err(e) if pos == off => Err(e),
        _ => Ok(pos - off),
    }
}

/// Commits a pending mtime (MAP_DONE). A failed commit leaves it pending, for the next commit
/// point (a later write after [`COMMIT_NS`], fstat, fsync, the last close) to try again.
fn commit_mtime(f: File, sync: bool) -> Result<(), i32> {
    // Cleared before the op: a write that lands meanwhile sets it again and is committed later.
    if !f.s.dirty.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    f.s.last_commit.store(sys::now_ns(), Ordering::Relaxed);
    map_done(f, 0, sync).map(drop).inspect_err(|_| f.s.dirty.store(true, Ordering::Release))
}

fn dax_read(f: File, r: &DaxReader<'_>, iov: &[IoVec], total: u64, off: u64) -> Result<u64, i32> {
    let end = off.saturating_add(total);
    let mut cur = Cursor::new(iov);
    let mut pos = off;
    while pos < end {
        let found = locate_published(f, r, pos, false).and_then(|l| match l {
            // Another process may have grown the file or filled the hole: ask again.
            Loc::Eof | Loc::Hole { .. } => {
                r.clear();
                locate_published(f, r, pos, true)
            }
            l => Ok(l),
        });
        let l = match found {
            Err(DAX_USE_CHANNEL) if pos > off => break,
            l => l?,
        };
        match l {
            Loc::Mapped { dev, run } => {
                let n = run.min(end - pos);
                let src = dev_ptr(f, dev, n)?;
                // SAFETY: source in the device mapping (checked), destination the caller's
                // buffers (read(2) contract).
                cur.each(n, |dst, len, at| unsafe { core::ptr::copy_nonoverlapping(src.add(at as usize), dst, len) });
                r.clear();
                pos += n;
            }
            Loc::Hole { run } => {
                let n = run.min(end - pos);
                // SAFETY: the caller's buffers.
                cur.each(n, |dst, len, _| unsafe { core::ptr::write_bytes(dst, 0, len) });
                pos += n;
            }
            Loc::Eof => break,
        }
    }
    state::count(&state::STATS.dax_bytes, pos - off);
    Ok(pos - off)
}

fn map_done(f: File, end: u64, sync: bool) -> Result<u64, i32> {
    if crate::testhook::fail_map_done() {
        return Err(libc::EIO);
    }
    let req = MapDoneReq { ino: ino(f), end, sync: u32::from(sync), reserved: 0 };
    op(f, OpCode::MapDone, &[req.as_bytes()], &mut [])
}

fn dax_on(f: File) -> bool {
    f.m.dax.is_some() && f.m.dax_ok.load(Ordering::Relaxed)
}

/// This thread's dax reader slot, as zusd sees it: while the thread copies to or from the
/// device, the slot holds the layout generation current when it checked where to copy
/// (re-read after the slot was written, so that zusd, which raises the generation before it
/// looks at the slots, either sees the slot or we see the new generation); 0 otherwise. pmemfs
/// reuses freed blocks only once no slot holds their generation or an older one. The slot is
/// never published across an op to zusd: the ZT may be waiting for exactly this slot.
struct DaxReader<'a> {
    slot: &'a core::sync::atomic::AtomicU64,
    relay: &'a zus_client::Relay,
}

impl<'a> DaxReader<'a> {
    /// This thread's slot (nothing published yet); `Ok(None)` when none is left for it.
    fn new(f: File) -> Result<Option<Self>, i32> {
        let Some(i) = state::reader_index() else { return Ok(None) };
        let relay: &'a zus_client::Relay = f.m.relay()?;
        Ok(Some(Self { slot: relay.dax_reader_slot(i), relay }))
    }

    /// Publishes the current layout generation; returns it.
    fn publish(&self) -> u64 {
        loop {
            let g = self.relay.layout_gen();
            self.slot.store(g, Ordering::SeqCst);
            if self.relay.layout_gen() == g {
                return g;
            }
        }
    }

    /// Nothing copied through extents from here on.
    fn clear(&self) {
        self.slot.store(0, Ordering::Release);
    }
}

impl Drop for DaxReader<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A dax access that gave up on the extent cache (refilled by other threads or invalidated
/// every time it looked): the caller does this piece in channel mode. Outside errno's range.
const DAX_USE_CHANNEL: i32 = 4001;

/// Where `pos` lives, with the reader slot published and the answer checked against the
/// generation published (a cache hit after the publication). Misses are refilled with MAP ops
/// while the slot is clear. `force` refills first (another process may have grown the file).
fn locate_published(f: File, r: &DaxReader<'_>, pos: u64, force: bool) -> Result<Loc, i32> {
    if force {
        locate(f, pos, true)?;
    }
    for _ in 0..8 {
        r.publish();
        if let Some(l) = cache_lookup(f.s, pos, layout_epoch(f)?) {
            return Ok(l);
        }
        r.clear();
        locate(f, pos, true)?;
    }
    Err(DAX_USE_CHANNEL)
}

/// One read or write of up to `MAX_IOV` buffers at `off` (`None`: append), either mode.
/// Returns (bytes, offset the data landed at).
fn io_chunk(f: File, write: bool, iov: &[IoVec], off: Option<u64>, flags: u32) -> Result<(u64, u64), i32> {
    let total = iov.iter().try_fold(0u64, |a, v| a.checked_add(v.len)).ok_or(libc::EINVAL)?;
    if total > isize::MAX as u64 {
        return Err(libc::EINVAL);
    }
    match off {
        Some(off)
            if dax_on(f)
                && let Some(reader) = DaxReader::new(f)? =>
        {
            let r = if write {
                dax_write(f, &reader, iov, total, off, flags)
            } else {
                dax_read(f, &reader, iov, total, off)
            };
            match r {
                Err(e) if (e == libc::ENOSYS || e == libc::EOPNOTSUPP) && !f.m.dax_ok.load(Ordering::Relaxed) => {}
                Err(DAX_USE_CHANNEL) => {}
                r => return r.map(|n| (n, off)),
            }
            chan_io(f, write, iov, total, off, flags).map(|(n, _)| (n, off))
        }
        Some(off) => chan_io(f, write, iov, total, off, flags & !io_flags::APPEND).map(|(n, _)| (n, off)),
        None => {
            let (n, rep) = chan_io(f, write, iov, total, 0, flags | io_flags::APPEND)?;
            f.s.size.fetch_max(rep.size, Ordering::Relaxed);
            Ok((n, rep.offset))
        }
    }
}

/// read/write/pread/pwrite/readv/... on a served fd. `off = None` uses (and advances) the
/// kernel's file offset of `fd`, which stays authoritative; `rwf` are `RWF_*` flags.
///
/// # Safety
/// `iov` must point to `cnt` iovecs describing buffers valid as read(2)/write(2) require.
pub unsafe fn rw(
    f: File,
    fd: i32,
    write: bool,
    iov: *const libc::iovec,
    cnt: i32,
    off: Option<i64>,
    rwf: i32,
) -> Result<i64, i32> {
    let acc = oflags(f) & libc::O_ACCMODE;
    if (write && acc == libc::O_RDONLY) || (!write && acc == libc::O_WRONLY) {
        return Err(libc::EBADF);
    }
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Err(libc::EINVAL);
    }
    if cnt > 0 && iov.is_null() {
        return Err(libc::EFAULT);
    }
    if rwf & !(libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_NOWAIT | libc::RWF_APPEND) != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    kernel_route(f)?;
    let flags = io_flags_of(f, rwf);
    if let Some(o) = off
        && o < 0
    {
        return Err(libc::EINVAL);
    }
    let append = write && flags & io_flags::APPEND != 0;
    // Positional writes on O_APPEND files append on Linux too (pwrite(2) BUGS).
    let mut pos = match off {
        _ if append => None,
        Some(o) => Some(o as u64),
        None => Some(sys::lseek(fd, 0, libc::SEEK_CUR)? as u64),
    };
    let mut total = 0u64;
    let mut last_end = None;
    let mut i = 0usize;
    let cnt = cnt as usize;
    let mut err = None;
    while i < cnt {
        if i > 0 {
            crate::testhook::pause_rw();
        }
        let mut buf = [IoVec::default(); MAX_IOV];
        let mut k = 0;
        let mut want = 0u64;
        while i < cnt && k < MAX_IOV {
            // SAFETY: i < cnt, within the caller's array.
            let v = unsafe { *iov.add(i) };
            i += 1;
            if v.iov_len == 0 {
                continue;
            }
            buf[k] = IoVec { addr: v.iov_base as u64, len: v.iov_len as u64 };
            want += v.iov_len as u64;
            k += 1;
        }
        if k == 0 {
            continue;
        }
        match io_chunk(f, write, &buf[..k], pos, flags) {
            Ok((n, at)) => {
                total += n;
                last_end = Some(at + n);
                if let Some(p) = pos.as_mut() {
                    *p += n;
                }
                if n < want {
                    break;
                }
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    // The kernel's offset of the file: unless another thread closed the fd meanwhile (the
    // offset went with the file; the number may name another file now).
    if off.is_none()
        && let Some(p) = last_end
        && names(fd, f)
    {
        sys::lseek(fd, p as i64, libc::SEEK_SET)?;
    }
    match err {
        Some(e) if total == 0 => Err(e),
        _ => Ok(total as i64),
    }
}

/// Current attributes (after committing a pending mtime).
pub fn getattr(f: File) -> Result<Attr, i32> {
    commit_mtime(f, false)?;
    let mut rep = [0u8; 80];
    op(f, OpCode::Getattr, &[InoReq { ino: ino(f) }.as_bytes()], &mut rep)?;
    Attr::read_from(&rep).ok_or(libc::EIO)
}

/// fstat(2).
///
/// # Safety
/// `st` must be valid for writing a `struct stat`.
pub unsafe fn fstat(f: File, st: *mut libc::stat) -> Result<i64, i32> {
    if st.is_null() {
        return Err(libc::EFAULT);
    }
    let a = getattr(f)?;
    // SAFETY: zeroed stat is valid; the caller's pointer is writable (contract).
    unsafe {
        let mut s: libc::stat = core::mem::zeroed();
        s.st_dev = f.s.dev.load(Ordering::Relaxed);
        s.st_ino = a.ino;
        s.st_nlink = u64::from(a.nlink);
        s.st_mode = a.mode;
        s.st_uid = a.uid;
        s.st_gid = a.gid;
        s.st_rdev = u64::from(a.rdev);
        s.st_size = a.size as i64;
        s.st_blksize = if a.blksize == 0 { 4096 } else { i64::from(a.blksize) };
        s.st_blocks = a.blocks as i64;
        s.st_atime = a.atime_ns.div_euclid(1_000_000_000);
        s.st_atime_nsec = a.atime_ns.rem_euclid(1_000_000_000);
        s.st_mtime = a.mtime_ns.div_euclid(1_000_000_000);
        s.st_mtime_nsec = a.mtime_ns.rem_euclid(1_000_000_000);
        s.st_ctime = a.ctime_ns.div_euclid(1_000_000_000);
        s.st_ctime_nsec = a.ctime_ns.rem_euclid(1_000_000_000);
        st.write(s);
    }
    Ok(0)
}

/// lseek(2): SEEK_END from the fresh size; the rest is the kernel's.
pub fn lseek_end(f: File, fd: i32, off: i64) -> Result<i64, i32> {
    let size = getattr(f)?.size as i64;
    let p = size.checked_add(off).ok_or(libc::EOVERFLOW)?;
    if p < 0 {
        return Err(libc::EINVAL);
    }
    sys::lseek(fd, p, libc::SEEK_SET)
}

/// fsync/fdatasync.
pub fn fsync(f: File, datasync: bool) -> Result<i64, i32> {
    kernel_route(f)?;
    zus_pmem::flush::fence();
    commit_mtime(f, true)?;
    let req = FsyncReq { ino: ino(f), fh: 0, datasync: u32::from(datasync), reserved: 0 };
    op(f, OpCode::Fsync, &[req.as_bytes()], &mut []).map(|_| 0)
}

/// ftruncate(2).
pub fn ftruncate(f: File, len: i64) -> Result<i64, i32> {
    if len < 0 {
        return Err(libc::EINVAL);
    }
    if oflags(f) & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EINVAL);
    }
    kernel_route(f)?;
    let req = SetattrReq { ino: ino(f), valid: setattr::SIZE, size: len as u64, ..SetattrReq::default() };
    let mut rep = [0u8; 80];
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    let r = op(f, OpCode::Setattr, &[req.as_bytes()], &mut rep);
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    r.map(|_| 0)
}

/// fallocate(2).
pub fn fallocate(f: File, mode: i32, off: i64, len: i64) -> Result<i64, i32> {
    if off < 0 || len <= 0 {
        return Err(libc::EINVAL);
    }
    if oflags(f) & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EBADF);
    }
    kernel_route(f)?;
    let req = FallocateReq { ino: ino(f), offset: off as u64, len: len as u64, mode: mode as u32, reserved: 0 };
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    let r = op(f, OpCode::Fallocate, &[req.as_bytes()], &mut []);
    LAYOUT_EPOCH.fetch_add(1, Ordering::AcqRel);
    r.map(|_| 0)
}

/// Re-reads the open flags after F_SETFL.
pub fn refresh_flags(f: File, fd: i32) {
    if let Ok(fl) = sys::getfl(fd) {
        f.s.flags.store(fl as u32, Ordering::Relaxed);
    }
}
