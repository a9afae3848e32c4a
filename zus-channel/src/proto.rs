//! The slot protocol, written once for both ends of a channel.
//!
//! A client thread and a lane's ZT exchange one op through one slot:
//!
//! ```text
//! client                                   ZT (pinned to the lane's CPU)
//! Lane::try_claim      FREE -> CLAIMED
//! Slot::write_request  header + payload
//! Lane::submit         CLAIMED -> SUBMITTED, doorbell += 1 (FUTEX_WAKE only if the ZT sleeps)
//!                                          Slot::take            SUBMITTED -> SERVING
//!                                          Slot::request_header  one copy, then validation
//!                                          Slot::complete        reply, SERVING -> DONE,
//!                                                                reply_seq += 1 (FUTEX_WAKE only
//!                                                                if the client waits)
//! Slot::wait_done      spin (policy of the caller) or futex on reply_seq
//! Slot::reply_header   one copy
//! Lane::release        DONE -> FREE, free_seq += 1 (FUTEX_WAKE only if a thread waits for a slot)
//! ```
//!
//! The views resolve offsets once ([`Lane`] and [`Slot`] are small `Copy` handles over the
//! mapping); nothing here holds a reference into shared memory other than the atomics themselves,
//! and every other byte moves with a raw copy ([`ShmRegion`]). The server never trusts a state it
//! reads: each of its transitions is a compare-exchange, so a client that scribbles on its own
//! slot only confuses itself. The layout is plain data in `zus_api::chan`.
//!
//! Memory ordering, every pairing in one place:
//! - **Request publication.** The client writes the header and payload with plain copies, then
//!   stores `SUBMITTED` with `Release`; the ZT's `take` is an `Acquire` compare-exchange, so the
//!   request bytes it then copies are the ones written before the submit.
//! - **Reply publication.** The ZT writes the reply payload and header, then moves the state to
//!   `DONE` with `Release`; the client sees `DONE` with an `Acquire` load before it copies the
//!   reply out.
//! - **Lost-wake freedom (doorbell).** The client's `doorbell += 1` and its load of `zt_sleeping`
//!   are `SeqCst`; the ZT stores `zt_sleeping = 1` (`SeqCst`) and then reads the doorbell value it
//!   will sleep on (`SeqCst`) and re-checks for submitted slots. Either the client sees the flag
//!   and wakes, or the ZT sees the new doorbell/state and does not sleep (a Dekker pattern).
//! - **Lost-wake freedom (reply).** Mirror image on `client_waiting` and `reply_seq`: the client
//!   stores `client_waiting = 1` and reads `reply_seq` and the state (`SeqCst`) before it sleeps;
//!   the ZT bumps `reply_seq` and then reads `client_waiting` (`SeqCst`).
//! - **Slot release.** `FREE` is stored `SeqCst` before `free_waiters` is read; a waiter raises
//!   `free_waiters` and reads `free_seq` (`SeqCst`) before it tries to claim again and sleeps.
//! - **Streamed windows.** The producer of a streamed op's data raises `data_ready` with
//!   `Release` after copying each piece; the consumer loads it with `Acquire` before copying.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use zus_api::chan::{ChannelSetHeader, Geometry, LaneHeader, PAYLOAD_SIZE, Slot as SlotLayout, slot_state};
use zus_api::ops::OpHeader;

use crate::shm::{ShmRegion, futex};

const DOORBELL: usize = offset_of!(LaneHeader, doorbell);
const ZT_SLEEPING: usize = offset_of!(LaneHeader, zt_sleeping);
const ZT_CPU: usize = offset_of!(LaneHeader, zt_cpu);
const ZT_POLLING: usize = offset_of!(LaneHeader, zt_polling);
const FREE_SEQ: usize = offset_of!(LaneHeader, free_seq);
const FREE_WAITERS: usize = offset_of!(LaneHeader, free_waiters);
const OPS_REJECTED: usize = offset_of!(LaneHeader, ops_rejected);
const STATE: usize = offset_of!(SlotLayout, state);
const REPLY_SEQ: usize = offset_of!(SlotLayout, reply_seq);
const CLIENT_WAITING: usize = offset_of!(SlotLayout, client_waiting);
const DATA_READY: usize = offset_of!(SlotLayout, data_ready);
const HDR: usize = offset_of!(SlotLayout, hdr);
const PAYLOAD: usize = offset_of!(SlotLayout, payload);
const LAYOUT_GEN: usize = offset_of!(ChannelSetHeader, layout_gen);

/// One mapped channel set: the region and the geometry both sides computed from its header.
#[derive(Debug, Clone, Copy)]
pub struct Channel<'a> {
    region: &'a ShmRegion,
    geo: Geometry,
}

impl<'a> Channel<'a> {
    /// A view of `region` laid out as `geo` (validated by the caller, e.g. with
    /// `Geometry::from_header` against the mapping's length).
    #[must_use]
    pub fn new(region: &'a ShmRegion, geo: Geometry) -> Self {
        Self { region, geo }
    }

    /// The geometry.
    #[must_use]
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Lane `lane` (must be below `ncpu`).
    #[must_use]
    pub fn lane(&self, lane: usize) -> Lane<'a> {
        Lane { region: self.region, geo: self.geo, lane, off: self.geo.lane_offset(lane) }
    }

    /// The set's layout generation word (`ChannelSetHeader::layout_gen`): the server raises it
    /// with `fetch_max`, clients load it with `Acquire`.
    #[must_use]
    pub fn layout_gen(&self) -> &'a AtomicU64 {
        self.region.atomic_u64(LAYOUT_GEN)
    }

    /// Dax reader slot `i` (`chan::DAX_READER_SLOTS` of them).
    #[must_use]
    pub fn dax_reader(&self, i: usize) -> &'a AtomicU64 {
        self.region.atomic_u64(self.geo.dax_reader_offset(i))
    }
}

/// One CPU's lane of a channel set.
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    region: &'a ShmRegion,
    geo: Geometry,
    lane: usize,
    off: usize,
}

impl<'a> Lane<'a> {
    /// The lane's index (= the CPU its ZT serves).
    #[must_use]
    pub fn index(&self) -> usize {
        self.lane
    }

    /// Slot `s` of this lane (must be below `slots_per_cpu`).
    #[must_use]
    pub fn slot(&self, s: usize) -> Slot<'a> {
        Slot {
            region: self.region,
            lane: self.lane,
            index: s,
            off: self.geo.slot_offset(self.lane, s),
            window: self.geo.window_offset(self.lane, s),
            window_size: self.geo.window_size,
        }
    }

    /// Every slot of the lane.
    pub fn slots(&self) -> impl Iterator<Item = Slot<'a>> + '_ {
        (0..self.geo.slots_per_cpu).map(|s| self.slot(s))
    }

    fn word(&self, w: usize) -> &'a AtomicU32 {
        self.region.atomic_u32(self.off + w)
    }

    // ---- client side ----

    /// Claims a free slot of this lane (`FREE -> CLAIMED`), or `None` when all are busy.
    #[must_use]
    pub fn try_claim(&self) -> Option<Slot<'a>> {
        self.slots().find(|s| {
            let st = s.state_word();
            st.load(Ordering::Relaxed) == slot_state::FREE
                && st
                    .compare_exchange(slot_state::FREE, slot_state::CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Waits (at most `timeout`) for a slot of this lane to be released, registered as a waiter
    /// so that a releasing thread wakes us; `try_claim` runs after registering (no lost wake)
    /// and again after the wait. Returns what `try_claim` got, `None` after a timeout or a wake
    /// that another thread beat us to (the caller decides whether to go on waiting).
    pub fn wait_for_free<T>(&self, timeout: Duration, mut try_claim: impl FnMut() -> Option<T>) -> Option<T> {
        let waiters = self.word(FREE_WAITERS);
        let free_seq = self.word(FREE_SEQ);
        waiters.fetch_add(1, Ordering::SeqCst);
        let seq = free_seq.load(Ordering::SeqCst);
        if let Some(x) = try_claim() {
            waiters.fetch_sub(1, Ordering::SeqCst);
            return Some(x);
        }
        futex::wait(free_seq, seq, Some(timeout));
        waiters.fetch_sub(1, Ordering::SeqCst);
        try_claim()
    }

    /// Hands a finished slot back (`-> FREE`) and wakes one thread waiting for a slot.
    pub fn release(&self, slot: Slot<'_>) {
        slot.state_word().store(slot_state::FREE, Ordering::SeqCst);
        if self.word(FREE_WAITERS).load(Ordering::SeqCst) > 0 {
            let fs = self.word(FREE_SEQ);
            fs.fetch_add(1, Ordering::SeqCst);
            futex::wake(fs, 1);
        }
    }

    /// Publishes the request in `slot` (`-> SUBMITTED`) and rings the doorbell; a futex wake
    /// only when the ZT said it sleeps.
    pub fn submit(&self, slot: Slot<'_>) {
        slot.state_word().store(slot_state::SUBMITTED, Ordering::Release);
        let bell = self.word(DOORBELL);
        bell.fetch_add(1, Ordering::SeqCst);
        if self.word(ZT_SLEEPING).load(Ordering::SeqCst) != 0 {
            futex::wake(bell, 1);
        }
    }

    /// The OS CPU the lane's ZT is pinned to (written by the ZT; 0 before it ran).
    #[must_use]
    pub fn zt_cpu(&self) -> u32 {
        self.word(ZT_CPU).load(Ordering::Relaxed)
    }

    /// Whether the lane's ZT polls for new work right now (a submission needs no wake).
    #[must_use]
    pub fn zt_polling(&self) -> bool {
        self.word(ZT_POLLING).load(Ordering::Relaxed) != 0
    }

    // ---- server side ----

    /// The doorbell word a sleeping ZT waits on.
    #[must_use]
    pub fn doorbell(&self) -> &'a AtomicU32 {
        self.word(DOORBELL)
    }

    /// Announces that the ZT is about to sleep (`true`) or is awake (`false`).
    pub fn set_zt_sleeping(&self, sleeping: bool) {
        self.word(ZT_SLEEPING).store(u32::from(sleeping), Ordering::SeqCst);
    }

    /// Announces that the ZT polls this lane (`true`) or stopped polling.
    pub fn set_zt_polling(&self, polling: bool) {
        self.word(ZT_POLLING).store(u32::from(polling), Ordering::SeqCst);
    }

    /// Records the OS CPU the lane's ZT runs on.
    pub fn set_zt_cpu(&self, cpu: u32) {
        self.word(ZT_CPU).store(cpu, Ordering::Relaxed);
    }

    /// Counts a request refused as malformed (visible to the client).
    pub fn count_rejected(&self) {
        self.region.atomic_u64(self.off + OPS_REJECTED).fetch_add(1, Ordering::Relaxed);
    }

    /// Whether any slot of the lane holds a submitted request.
    #[must_use]
    pub fn any_submitted(&self) -> bool {
        self.slots().any(|s| s.state() == slot_state::SUBMITTED)
    }

    /// Faults the lane's pages in from the calling (pinned) thread, so they land on its node.
    pub fn first_touch(&self) {
        self.region.first_touch(self.off, self.geo.lane_size());
    }
}

/// What one [`Slot::wait_done`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyWait {
    /// The reply is in.
    Done,
    /// Woken (or the word moved) but not done yet: wait again.
    Pending,
    /// The timeout passed without a wake.
    TimedOut,
}

/// One slot of a lane.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    region: &'a ShmRegion,
    lane: usize,
    index: usize,
    off: usize,
    window: usize,
    window_size: usize,
}

impl<'a> Slot<'a> {
    /// The lane it belongs to.
    #[must_use]
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Its index in the lane.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    fn state_word(&self) -> &'a AtomicU32 {
        self.region.atomic_u32(self.off + STATE)
    }

    /// The state now (`Acquire`: a `DONE` seen here makes the reply visible).
    #[must_use]
    pub fn state(&self) -> u32 {
        self.state_word().load(Ordering::Acquire)
    }

    /// The streamed-window word ([`zus_api::ops::DATA_WINDOW_STREAM`]): bytes of the window that
    /// hold the op's data so far. Producer raises it with `Release`, consumer loads `Acquire`.
    #[must_use]
    pub fn data_ready(&self) -> &'a AtomicU32 {
        self.region.atomic_u32(self.off + DATA_READY)
    }

    /// Offset of the `data_ready` word in the mapping (the server hands it to plugins).
    #[must_use]
    pub fn data_ready_offset(&self) -> usize {
        self.off + DATA_READY
    }

    /// Offset of the slot's data window in the mapping.
    #[must_use]
    pub fn window_offset(&self) -> usize {
        self.window
    }

    /// Bytes of the data window.
    #[must_use]
    pub fn window_size(&self) -> usize {
        self.window_size
    }

    /// Offset of the inline payload in the mapping.
    #[must_use]
    pub fn payload_offset(&self) -> usize {
        self.off + PAYLOAD
    }

    /// Copies `src` into the data window at `at` (clipped to the window).
    pub fn copy_to_window(&self, at: usize, src: &[u8]) {
        let n = src.len().min(self.window_size.saturating_sub(at));
        self.region.copy_in(self.window + at, &src[..n]);
    }

    /// Copies the data window at `at` into `dst` (clipped to the window).
    pub fn copy_from_window(&self, at: usize, dst: &mut [u8]) {
        let n = dst.len().min(self.window_size.saturating_sub(at));
        self.region.copy_out(self.window + at, &mut dst[..n]);
    }

    // ---- client side ----

    /// Writes a request: its header, then the payload parts back to back. The caller checked
    /// that the parts fit [`PAYLOAD_SIZE`].
    pub fn write_request(&self, hdr: &OpHeader, parts: &[&[u8]]) {
        self.region.write(self.off + HDR, hdr);
        let mut at = self.off + PAYLOAD;
        let end = at + PAYLOAD_SIZE;
        for p in parts {
            let n = p.len().min(end - at);
            self.region.copy_in(at, &p[..n]);
            at += n;
        }
    }

    /// Sleeps once until the reply is in (`DONE`), a wake, or `timeout`. The caller's spin
    /// policy runs before this, and the caller loops (checking its peer's liveness on
    /// [`ReplyWait::TimedOut`]).
    #[must_use]
    pub fn wait_done(&self, timeout: Duration) -> ReplyWait {
        let seq = self.region.atomic_u32(self.off + REPLY_SEQ);
        let waiting = self.region.atomic_u32(self.off + CLIENT_WAITING);
        waiting.store(1, Ordering::SeqCst);
        let s = seq.load(Ordering::SeqCst);
        let r = if self.state() == slot_state::DONE {
            ReplyWait::Done
        } else if futex::wait(seq, s, Some(timeout)) == futex::WaitResult::TimedOut {
            ReplyWait::TimedOut
        } else if self.state() == slot_state::DONE {
            ReplyWait::Done
        } else {
            ReplyWait::Pending
        };
        waiting.store(0, Ordering::Relaxed);
        r
    }

    /// One copy of the reply header (valid once [`Slot::state`] is `DONE`).
    #[must_use]
    pub fn reply_header(&self) -> OpHeader {
        self.region.read(self.off + HDR)
    }

    /// Copies the reply payload into `dst` (at most [`PAYLOAD_SIZE`] bytes).
    pub fn copy_reply(&self, dst: &mut [u8]) {
        let n = dst.len().min(PAYLOAD_SIZE);
        self.region.copy_out(self.off + PAYLOAD, &mut dst[..n]);
    }

    // ---- server side ----

    /// Takes a submitted request for serving (`SUBMITTED -> SERVING`); `false` if there is none.
    #[must_use]
    pub fn take(&self) -> bool {
        let st = self.state_word();
        st.load(Ordering::Relaxed) == slot_state::SUBMITTED
            && st
                .compare_exchange(slot_state::SUBMITTED, slot_state::SERVING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// One copy of the request header into private memory; validate the copy, never the slot.
    #[must_use]
    pub fn request_header(&self) -> OpHeader {
        self.region.read(self.off + HDR)
    }

    /// Copies the request payload's first `dst.len()` bytes (at most [`PAYLOAD_SIZE`]).
    pub fn copy_request(&self, dst: &mut [u8]) {
        let n = dst.len().min(PAYLOAD_SIZE);
        self.region.copy_out(self.off + PAYLOAD, &mut dst[..n]);
    }

    /// Publishes the reply: payload, header, `SERVING -> DONE`, then wakes the client if it
    /// sleeps. A client that rewrote the state meanwhile only confuses itself.
    pub fn complete(&self, reply: &OpHeader, payload: &[u8]) {
        if !payload.is_empty() {
            self.region.copy_in(self.off + PAYLOAD, &payload[..payload.len().min(PAYLOAD_SIZE)]);
        }
        self.region.write(self.off + HDR, reply);
        let _ = self.state_word().compare_exchange(
            slot_state::SERVING,
            slot_state::DONE,
            Ordering::Release,
            Ordering::Relaxed,
        );
        let seq = self.region.atomic_u32(self.off + REPLY_SEQ);
        seq.fetch_add(1, Ordering::SeqCst);
        if self.region.atomic_u32(self.off + CLIENT_WAITING).load(Ordering::SeqCst) != 0 {
            futex::wake(seq, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn channel(ncpu: usize, slots: usize) -> (ShmRegion, Geometry) {
        let g = Geometry::new(ncpu, slots, 4096).unwrap();
        let fd = ShmRegion::create_memfd(c"proto-test", g.total_size()).unwrap();
        (ShmRegion::map(std::os::fd::AsFd::as_fd(&fd), g.total_size()).unwrap(), g)
    }

    #[test]
    fn test_claim_submit_take_complete_release_round_trip() {
        let (r, g) = channel(2, 2);
        let ch = Channel::new(&r, g);
        let lane = ch.lane(1);
        let a = lane.try_claim().unwrap();
        let b = lane.try_claim().unwrap();
        assert!(lane.try_claim().is_none(), "two slots, both claimed");
        assert!(!a.take(), "a claimed slot is not served");
        let hdr = OpHeader { opcode: 1, in_len: 3, seq: 7, ..OpHeader::default() };
        a.write_request(&hdr, &[b"ab", b"c"]);
        lane.submit(a);
        assert!(lane.any_submitted());
        assert!(a.take() && !a.take(), "taken once");
        let got = a.request_header();
        assert_eq!((got.opcode, got.seq), (1, 7));
        let mut p = [0u8; 3];
        a.copy_request(&mut p);
        assert_eq!(&p, b"abc");
        a.complete(&OpHeader { result: 5, out_len: 2, ..got }, b"ok");
        assert_eq!(a.state(), slot_state::DONE);
        assert_eq!(a.reply_header().result, 5);
        let mut out = [0u8; 2];
        a.copy_reply(&mut out);
        assert_eq!(&out, b"ok");
        lane.release(a);
        lane.release(b);
        assert_eq!(lane.try_claim().map(|s| s.index()), Some(0));
    }

    #[test]
    fn test_complete_of_a_slot_not_serving_leaves_its_state() {
        let (r, g) = channel(1, 1);
        let s = Channel::new(&r, g).lane(0).slot(0);
        // A hostile client set FREE while the ZT served: DONE is not forced on it.
        s.complete(&OpHeader::default(), &[]);
        assert_eq!(s.state(), slot_state::FREE);
    }

    #[test]
    fn test_wait_done_wakes_on_completion_from_another_thread() {
        let (r, g) = channel(1, 1);
        let r = Arc::new(r);
        let s = Channel::new(&r, g).lane(0).try_claim().unwrap();
        Channel::new(&r, g).lane(0).submit(s);
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || {
            let s = Channel::new(&r2, g).lane(0).slot(0);
            while !s.take() {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20));
            s.complete(&OpHeader { result: 1, ..OpHeader::default() }, &[]);
        });
        let mut done = false;
        for _ in 0..100 {
            if s.wait_done(Duration::from_millis(100)) == ReplyWait::Done {
                done = true;
                break;
            }
        }
        t.join().unwrap();
        assert!(done);
        assert_eq!(s.reply_header().result, 1);
    }

    #[test]
    fn test_wait_for_free_is_woken_by_release() {
        let (r, g) = channel(1, 1);
        let r = Arc::new(r);
        let lane = Channel::new(&r, g).lane(0);
        let held = lane.try_claim().unwrap();
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || {
            let lane = Channel::new(&r2, g).lane(0);
            let t0 = std::time::Instant::now();
            loop {
                if let Some(s) = lane.wait_for_free(Duration::from_secs(5), || lane.try_claim()) {
                    return (s.index(), t0.elapsed());
                }
            }
        });
        std::thread::sleep(Duration::from_millis(30));
        lane.release(held);
        let (idx, waited) = t.join().unwrap();
        assert_eq!(idx, 0);
        assert!(waited < Duration::from_secs(4), "woken by the release, not the timeout: {waited:?}");
    }
}
