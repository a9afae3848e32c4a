//! Which ZT lane a channel op goes to: the next CPU's ZT for short back-to-back ops, the
//! caller's own for isolated ones, and for long back-to-back ops whichever the thread measured
//! faster ([`long_lane`]). See [`crate::mount::LanePolicy`].

use zus_client::Relay;

use super::File;
use crate::mount::LanePolicy;

/// Largest op (data bytes) the auto lane policy sends to the next CPU's ZT.
pub(super) const AUTO_PEER_MAX_BYTES: u64 = 32 * 1024;

/// The ZT lane for our next op (see [`crate::mount::LanePolicy`]).
#[inline]
pub(super) fn pick_lane(f: File, r: &Relay, bytes: u64) -> usize {
    let peer = match f.m.lane {
        LanePolicy::Own => false,
        LanePolicy::Peer => true,
        LanePolicy::Auto => bytes <= AUTO_PEER_MAX_BYTES && Relay::sends_back_to_back(),
    };
    lane_of(r, peer)
}

/// The lane of our CPU's ZT, or of the next CPU's.
#[inline]
pub(super) fn lane_of(r: &Relay, peer: bool) -> usize {
    (zus_client::current_cpu() + usize::from(peer)) % r.geometry().ncpu
}

/// The lane of a long op (above [`AUTO_PEER_MAX_BYTES`]) and, under the auto policy for a
/// thread that sends back to back, which choice its time should teach ([`long_lane`]).
pub(super) fn pick_long_lane(f: File, r: &Relay, bytes: u64) -> (usize, Option<bool>) {
    if f.m.lane != LanePolicy::Auto || bytes <= AUTO_PEER_MAX_BYTES || !Relay::sends_back_to_back() {
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
pub(super) mod long_lane {
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
pub(super) fn timed_long_op<T>(learn: Option<bool>, bytes: u64, op: impl FnOnce() -> Result<T, i32>) -> Result<T, i32> {
    let Some(peer) = learn else { return op() };
    let t0 = std::time::Instant::now();
    let out = op();
    if out.is_ok() {
        long_lane::record(peer, t0.elapsed(), bytes);
    }
    out
}
