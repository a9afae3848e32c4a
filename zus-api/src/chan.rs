//! Shared channel memory layout.
//!
//! `zusd` creates one memfd per client connection (P-CH4: a client sees only its own channels) and
//! sends it over the control socket. Both sides map it `MAP_SHARED`. The layout:
//!
//! ```text
//! offset 0                 ChannelSetHeader (4 KiB)
//! lane_offset(cpu)         one Lane per CPU, lane_size bytes each (a multiple of 4 KiB):
//!     LaneHeader               256 B: doorbell, ZT sleeping/polling flags, slot-freed futex, stats
//!     Slot[slots_per_cpu]      SLOT_SIZE each: state, reply futex, op header, inline payload
//!     window[slots_per_cpu]    window_size each: the data window of the slot with that index
//! ```
//!
//! Every futex word sits on its own 64-byte cache line. These structs describe the layout only:
//! nobody ever holds a reference to them in shared memory; [`crate::shm`] accesses fields by offset
//! with atomics or raw copies (the client may scribble over its own channel memory at any time).

use core::mem::{offset_of, size_of};

use crate::ops::OpHeader;

/// Size of a cache line, the unit of isolation for futex words.
pub const CACHE_LINE: usize = 64;
/// Most CPUs a channel set describes.
pub const MAX_CPUS: usize = 1024;
/// Size of one slot (control part; the data window is separate).
pub const SLOT_SIZE: usize = 8192;
/// Bytes of inline payload in a slot: request in, reply out.
pub const PAYLOAD_SIZE: usize = SLOT_SIZE - offset_of!(Slot, payload);
/// Default data window per slot.
pub const DEFAULT_WINDOW_SIZE: usize = 1 << 20;
/// Default slots per CPU lane.
pub const DEFAULT_SLOTS_PER_CPU: usize = 4;

/// Slot states. The client moves FREE->CLAIMED->SUBMITTED and DONE->FREE; the server moves
/// SUBMITTED->SERVING->DONE. The server re-checks every transition with compare-exchange and never
/// relies on the client having followed the protocol.
pub mod slot_state {
    /// Available for a client thread to claim.
    pub const FREE: u32 = 0;
    /// Owned by one client thread that is filling in a request.
    pub const CLAIMED: u32 = 1;
    /// Request complete; the lane's ZT may take it.
    pub const SUBMITTED: u32 = 2;
    /// A ZT copied the request out and is serving it.
    pub const SERVING: u32 = 3;
    /// The reply is in the slot; the owning client thread reads it and frees the slot.
    pub const DONE: u32 = 4;
}

/// Page 0 of a channel set: what the client needs to find its way around.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
pub struct ChannelSetHeader {
    /// [`crate::ZUS_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<ChannelSetHeader>()`.
    pub header_size: u32,
    /// Feature bits the server offers ([`crate::features`]).
    pub features: u64,
    /// Number of lanes (= possible CPU ids served; lane i serves CPU i).
    pub ncpu: u32,
    /// Slots in each lane.
    pub slots_per_cpu: u32,
    /// Bytes per slot data window.
    pub window_size: u32,
    /// Bytes per lane (header + slots + windows), a multiple of 4096.
    pub lane_size: u32,
    /// Offset of lane 0.
    pub lanes_offset: u64,
    /// Total size of the mapping.
    pub total_size: u64,
    /// Server process id (informational; clients detect death via the control socket).
    pub server_pid: u32,
    /// Id the server gave this client.
    pub client_id: u32,
    /// Spin budget (ns) the server suggests before a client sleeps when its lane's ZT runs on
    /// another CPU (same-CPU waits never spin: the ZT cannot run while we spin).
    pub client_spin_ns: u32,
    /// Number of NUMA nodes in the topology the server uses.
    pub nnodes: u32,
    /// NUMA node of each CPU (lane); entries past `ncpu` are zero.
    pub cpu_node: [u16; MAX_CPUS],
    /// Layout generation: the server raises it (never lowers it) before it answers an op that
    /// may have freed or moved file blocks (truncate, punch, unlink, ...). A client that caches
    /// extents (dax) drops them when it changes; freed blocks are not reused for a grace period.
    pub layout_gen: u64,
    /// Reserved, zero (makes the size a multiple of 64 without implicit padding).
    pub reserved: [u8; 48],
}

crate::ops::pod_impl!(ChannelSetHeader = 2176);

/// Per-CPU lane header. Each word that a futex waits on has its own cache line.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct LaneHeader {
    /// Client increments after submitting a request; the ZT futex-waits on it.
    pub doorbell: u32,
    /// Keeps the next word on its own cache line; zero.
    pub _pad0: [u8; CACHE_LINE - 4],
    /// Server sets 1 just before it sleeps, 0 when awake. Clients only `FUTEX_WAKE` the doorbell
    /// when it is 1, so the common case costs no syscall.
    pub zt_sleeping: u32,
    /// CPU the lane's ZT is pinned to.
    pub zt_cpu: u32,
    /// Server sets 1 while the ZT polls this lane for new work on an otherwise idle CPU (after
    /// serving a spinning client), 0 otherwise. A submission seen by a polling ZT needs no wake;
    /// clients on other CPUs prefer such a lane.
    pub zt_polling: u32,
    /// Keeps the next word on its own cache line; zero.
    pub _pad1: [u8; CACHE_LINE - 12],
    /// Bumped by a client thread that frees a slot while others wait for one (P-CH3).
    pub free_seq: u32,
    /// Number of client threads waiting for a free slot in this lane.
    pub free_waiters: u32,
    /// Keeps the next word on its own cache line; zero.
    pub _pad2: [u8; CACHE_LINE - 8],
    /// Reserved, zero (per-op counters live in the server: `zufs status`).
    pub reserved: u64,
    /// Requests refused as malformed on this lane.
    pub ops_rejected: u64,
    /// Keeps the next word on its own cache line; zero.
    pub _pad3: [u8; CACHE_LINE - 16],
}

/// Dax reader slots per client (one cache line each, after the header page). A client thread
/// that copies through cached extents writes the layout generation it checked them against
/// into its slot for the length of the copy (0 when idle), so that zusd can tell when no copy
/// that may still target freed blocks is running (see `HostApi::oldest_dax_reader`).
pub const DAX_READER_SLOTS: usize = 128;

/// One slot: a request/reply exchange between one client thread and the lane's ZT.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// [`slot_state`].
    pub state: u32,
    /// Keeps the next word on its own cache line; zero.
    pub _pad0: [u8; CACHE_LINE - 4],
    /// The reply futex word: the server increments it after setting DONE.
    pub reply_seq: u32,
    /// Client sets 1 before it futex-waits on `reply_seq`; the server only wakes when it is 1.
    pub client_waiting: u32,
    /// Streamed window ([`crate::ops::DATA_WINDOW_STREAM`]): bytes at the start of the slot's
    /// window that hold the op's data so far. The client resets it before it submits; the
    /// producer (client for a write, server for a read) only raises it, with release stores.
    /// The server never trusts it: it bounds how long it waits for a write's bytes.
    pub data_ready: u32,
    /// Keeps the next word on its own cache line; zero.
    pub _pad1: [u8; CACHE_LINE - 12],
    /// Request header in, reply header out.
    pub hdr: OpHeader,
    /// Inline payload: op-specific struct followed by names, then the reply struct.
    pub payload: [u8; 8192 - 3 * CACHE_LINE],
}

const _: () = {
    assert!(size_of::<ChannelSetHeader>() == (72 + 2 * MAX_CPUS).next_multiple_of(64));
    assert!(size_of::<ChannelSetHeader>() <= 4096);
    assert!(offset_of!(ChannelSetHeader, magic) == 0);
    assert!(offset_of!(ChannelSetHeader, abi_version) == 8);
    assert!(offset_of!(ChannelSetHeader, header_size) == 12);
    assert!(offset_of!(ChannelSetHeader, features) == 16);
    assert!(offset_of!(ChannelSetHeader, ncpu) == 24);
    assert!(offset_of!(ChannelSetHeader, slots_per_cpu) == 28);
    assert!(offset_of!(ChannelSetHeader, window_size) == 32);
    assert!(offset_of!(ChannelSetHeader, lane_size) == 36);
    assert!(offset_of!(ChannelSetHeader, lanes_offset) == 40);
    assert!(offset_of!(ChannelSetHeader, total_size) == 48);
    assert!(offset_of!(ChannelSetHeader, server_pid) == 56);
    assert!(offset_of!(ChannelSetHeader, client_id) == 60);
    assert!(offset_of!(ChannelSetHeader, client_spin_ns) == 64);
    assert!(offset_of!(ChannelSetHeader, nnodes) == 68);
    assert!(offset_of!(ChannelSetHeader, cpu_node) == 72);
    assert!(offset_of!(ChannelSetHeader, layout_gen) == 72 + 2 * MAX_CPUS);

    assert!(size_of::<LaneHeader>() == 4 * CACHE_LINE);
    assert!(offset_of!(LaneHeader, doorbell) == 0);
    assert!(offset_of!(LaneHeader, zt_sleeping) == 64);
    assert!(offset_of!(LaneHeader, zt_cpu) == 68);
    assert!(offset_of!(LaneHeader, zt_polling) == 72);
    assert!(offset_of!(LaneHeader, free_seq) == 128);
    assert!(offset_of!(LaneHeader, free_waiters) == 132);
    assert!(offset_of!(LaneHeader, reserved) == 192);
    assert!(offset_of!(LaneHeader, ops_rejected) == 200);

    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(offset_of!(Slot, state) == 0);
    assert!(offset_of!(Slot, reply_seq) == 64);
    assert!(offset_of!(Slot, client_waiting) == 68);
    assert!(offset_of!(Slot, data_ready) == 72);
    assert!(offset_of!(Slot, hdr) == 128);
    assert!(offset_of!(Slot, payload) == 192);
};

/// Geometry of a channel set, computed identically by both sides from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of lanes.
    pub ncpu: usize,
    /// Slots per lane.
    pub slots_per_cpu: usize,
    /// Bytes per data window.
    pub window_size: usize,
}

/// Errors in a channel-set geometry (from a peer's header or a command line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    /// Lane count outside 1..=MAX_CPUS.
    #[error("channel set has {0} lanes, must be 1..={MAX_CPUS}")]
    BadCpuCount(usize),
    /// Slots per lane outside 1..=64.
    #[error("channel set has {0} slots per lane, must be 1..=64")]
    BadSlotCount(usize),
    /// Window size not a multiple of 4096 or outside 4 KiB..=64 MiB.
    #[error("data window of {0} bytes: must be a multiple of 4096 between 4 KiB and 64 MiB")]
    BadWindow(usize),
    /// The header disagrees with the geometry or the mapping size.
    #[error("channel header inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl Geometry {
    /// Validates and builds a geometry.
    ///
    /// # Errors
    /// [`GeometryError`] when a dimension is out of range.
    pub fn new(ncpu: usize, slots_per_cpu: usize, window_size: usize) -> Result<Self, GeometryError> {
        if ncpu == 0 || ncpu > MAX_CPUS {
            return Err(GeometryError::BadCpuCount(ncpu));
        }
        if slots_per_cpu == 0 || slots_per_cpu > 64 {
            return Err(GeometryError::BadSlotCount(slots_per_cpu));
        }
        if !window_size.is_multiple_of(4096) || !(4096..=64 << 20).contains(&window_size) {
            return Err(GeometryError::BadWindow(window_size));
        }
        Ok(Self { ncpu, slots_per_cpu, window_size })
    }

    /// Bytes of one lane, rounded to a page.
    #[must_use]
    pub fn lane_size(&self) -> usize {
        let ctl = size_of::<LaneHeader>() + self.slots_per_cpu * SLOT_SIZE;
        ctl.next_multiple_of(4096) + self.slots_per_cpu * self.window_size
    }

    /// Offset of the dax reader slots ([`DAX_READER_SLOTS`] cache lines after the header page).
    #[must_use]
    pub fn dax_readers_offset(&self) -> usize {
        4096
    }

    /// Offset of dax reader slot `i` (its `u64` word).
    #[must_use]
    pub fn dax_reader_offset(&self, i: usize) -> usize {
        self.dax_readers_offset() + (i % DAX_READER_SLOTS) * CACHE_LINE
    }

    /// Offset of lane 0.
    #[must_use]
    pub fn lanes_offset(&self) -> usize {
        self.dax_readers_offset() + DAX_READER_SLOTS * CACHE_LINE
    }

    /// Total bytes of the channel set.
    #[must_use]
    pub fn total_size(&self) -> usize {
        self.lanes_offset() + self.ncpu * self.lane_size()
    }

    /// Offset of a lane header.
    #[must_use]
    pub fn lane_offset(&self, cpu: usize) -> usize {
        self.lanes_offset() + cpu * self.lane_size()
    }

    /// Offset of a slot.
    #[must_use]
    pub fn slot_offset(&self, cpu: usize, slot: usize) -> usize {
        self.lane_offset(cpu) + size_of::<LaneHeader>() + slot * SLOT_SIZE
    }

    /// Offset of a slot's data window.
    #[must_use]
    pub fn window_offset(&self, cpu: usize, slot: usize) -> usize {
        let ctl = (size_of::<LaneHeader>() + self.slots_per_cpu * SLOT_SIZE).next_multiple_of(4096);
        self.lane_offset(cpu) + ctl + slot * self.window_size
    }

    /// Checks that a header received from a peer describes this geometry within `mapped` bytes.
    ///
    /// # Errors
    /// [`GeometryError`] naming the first inconsistency.
    pub fn from_header(h: &ChannelSetHeader, mapped: usize) -> Result<Self, GeometryError> {
        let g = Self::new(h.ncpu as usize, h.slots_per_cpu as usize, h.window_size as usize)?;
        if h.lane_size as usize != g.lane_size() {
            return Err(GeometryError::Inconsistent("lane_size"));
        }
        if h.lanes_offset != g.lanes_offset() as u64 || h.total_size != g.total_size() as u64 {
            return Err(GeometryError::Inconsistent("offsets"));
        }
        if g.total_size() > mapped {
            return Err(GeometryError::Inconsistent("larger than the mapping"));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_geometry_windows_are_page_aligned_and_disjoint() {
        let g = Geometry::new(3, 4, 65536).unwrap();
        assert_eq!(g.lane_size() % 4096, 0);
        for cpu in 0..3 {
            for s in 0..4 {
                assert_eq!(g.window_offset(cpu, s) % 4096, 0);
                assert!(g.slot_offset(cpu, s) + SLOT_SIZE <= g.window_offset(cpu, 0));
            }
            assert_eq!(g.window_offset(cpu, 3) + 65536, g.lane_offset(cpu) + g.lane_size());
        }
        assert_eq!(g.total_size(), g.lane_offset(3));
    }

    #[test]
    fn test_geometry_rejects_bad_dimensions() {
        assert_eq!(Geometry::new(0, 1, 4096), Err(GeometryError::BadCpuCount(0)));
        assert_eq!(Geometry::new(1, 0, 4096), Err(GeometryError::BadSlotCount(0)));
        assert_eq!(Geometry::new(1, 1, 100), Err(GeometryError::BadWindow(100)));
    }
}
