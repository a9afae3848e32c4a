//! The zusd channel client, "the relay" (P-CH1..P-CH5).
//!
//! `Relay::connect` performs the handshake and maps the channel set the server created for this
//! process. [`Relay::op`] runs one op synchronously:
//!
//! 1. pick the lane of the CPU we run on (`sched_getcpu`, vDSO) so the ZT that serves us is pinned
//!    to our own CPU (P-CH1);
//! 2. claim a free slot there, else in another lane of the same NUMA node, else sleep on the
//!    lane's slot-freed futex until a slot frees (P-CH3: never a fixed sleep);
//! 3. write the request, mark it SUBMITTED, ring the doorbell (a futex wake only when the ZT sleeps);
//! 4. wait: when the ZT shares our CPU spinning is useless (it cannot run while we spin), so we go
//!    straight to the futex; when it runs elsewhere we spin for the server's suggested budget
//!    first (P-CH2) and flag the op `HDR_F_CLIENT_SPINS`, so the ZT polls for our next op;
//! 5. copy the reply out and free the slot.
//!
//! While waiting, every 100 ms without an answer we check whether the control socket hung up:
//! a dead server becomes [`RelayError::ServerGone`] within a bounded time, never a hang (P-CH5).
//! The op path allocates nothing and takes no lock.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zus_api::Errno;
use zus_api::chan::{ChannelSetHeader, Geometry, PAYLOAD_SIZE, slot_state};
use zus_api::ops::{HDR_F_CLIENT_SPINS, OpHeader};
use zus_channel::control::{self, FsTypeInfo, MountInfo, Reply, Request, StatusInfo};
use zus_channel::proto::{Channel, ReplyWait, Slot};
use zus_channel::shm::ShmRegion;
/// The CPU the calling thread runs on (vDSO `getcpu`): the lane an op goes to.
pub use zus_channel::shm::current_cpu;
use zus_channel::sock;

/// A thread whose next op follows its last reply within this is "back to back": a ZT on another
/// CPU polls for its ops. (dax mode's MAP_DONE once per ms is not: a poll would only steal CPU
/// time from the job running on the ZT's CPU.)
const BACK_TO_BACK: Duration = Duration::from_micros(100);

std::thread_local! {
    /// When this thread last got a reply.
    static LAST_REPLY: core::cell::Cell<Option<Instant>> = const { core::cell::Cell::new(None) };
}

/// How often a spinning client offers its CPU to other runnable threads (`sched_yield`).
const SPIN_YIELD_EVERY: Duration = Duration::from_micros(4);

/// Longest a client spins for an op that a ZT on another CPU is already serving (then it sleeps).
const SERVING_SPIN_CAP: Duration = Duration::from_micros(200);

/// How often a waiting client checks that the server is still alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// Relay errors.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Could not reach zusd.
    #[error("cannot connect to zusd at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server refused us or a request.
    #[error("zusd: {message}")]
    Refused {
        /// errno.
        errno: Errno,
        /// Server's message.
        message: String,
    },
    /// Protocol violation by the server.
    #[error("zusd protocol error: {0}")]
    Protocol(String),
    /// The server died or closed our connection.
    #[error("zusd is gone (server exited or closed the connection)")]
    ServerGone,
    /// The op failed with an errno.
    #[error("{0}")]
    Op(Errno),
    /// A request does not fit a slot.
    #[error("request of {0} bytes does not fit a slot")]
    TooLarge(usize),
}

impl RelayError {
    /// errno for callers that speak POSIX (the FUSE bridge, the preload library).
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            Self::Op(e) | Self::Refused { errno: e, .. } => *e,
            Self::ServerGone | Self::Connect { .. } => Errno::ENOTCONN,
            Self::Protocol(_) => Errno::EPROTO,
            Self::TooLarge(_) => Errno::EINVAL,
        }
    }
}

/// Result of a successful op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpOutcome {
    /// The op's non-negative result.
    pub value: u64,
    /// Reply payload bytes copied into the caller's reply buffer.
    pub reply_len: usize,
    /// Data bytes copied into the caller's data-out buffer.
    pub data_len: usize,
}

/// Who the op is for (honoured by the server only for privileged clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Creds {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid.
    pub pid: u32,
}

/// Data an op carries.
#[derive(Debug, Clone, Copy)]
pub enum DataIn<'a> {
    /// None.
    None,
    /// Bytes copied into the slot's window.
    Window(&'a [u8]),
}

/// The caller's buffers that a streamed write copies into the window, visited in order.
pub trait GatherSource {
    /// Total bytes.
    fn total(&self) -> usize;
    /// The next at most `max` bytes (empty once every byte was handed out).
    fn next_piece(&mut self, max: usize) -> &[u8];
}

/// The caller's buffers that a streamed read fills from the window, visited in order.
pub trait ScatterSink {
    /// Total bytes.
    fn total(&self) -> usize;
    /// Room for the next at most `max` bytes (empty once every byte was handed out).
    fn next_piece(&mut self, max: usize) -> &mut [u8];
}

/// The data of a streamed read or write ([`Relay::op_streamed`]).
pub enum Stream<'a> {
    /// A write: the caller's bytes go into the window as the ZT consumes them.
    Write(&'a mut dyn GatherSource),
    /// A read: the caller copies the window out as the ZT fills it.
    Read(&'a mut dyn ScatterSink),
}

impl core::fmt::Debug for Stream<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Write(g) => write!(f, "Stream::Write({} bytes)", g.total()),
            Self::Read(s) => write!(f, "Stream::Read({} bytes)", s.total()),
        }
    }
}

/// Largest piece a streamed op copies before it announces it (the ZT's own piece is
/// `zus_pmem::STREAM_PIECE`; smaller here so the ZT starts early).
const STREAM_CLIENT_PIECE: usize = 8 * 1024;

/// A connection to zusd with this process's channel set.
#[derive(Debug)]
pub struct Relay {
    /// Channel memory; dropped before the socket (field order), so the server sees us unmap first.
    region: ShmRegion,
    geo: Geometry,
    /// Spill order per lane: other lanes of the same node.
    peers: Vec<Vec<usize>>,
    client_spin: Duration,
    sock: OwnedFd,
    ctl: Mutex<()>,
    dead: AtomicBool,
    seq: AtomicU64,
    /// Bytes that went through the bounce window (two copies), for stats (P-CH6).
    pub bounce_bytes: AtomicU64,
    client_id: u32,
    /// Feature bits the server offers (`ChannelSetHeader::features`).
    server_features: u64,
}

impl Relay {
    /// Connects to zusd at `socket` and maps this process's channel set.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn connect(socket: &Path, name: &str) -> Result<Self, RelayError> {
        Self::connect_with(socket, name, zus_api::features::ALL)
    }

    /// As [`Relay::connect`], announcing `features` (the bridge adds
    /// [`zus_api::features::KERNEL_BRIDGE`]).
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn connect_with(socket: &Path, name: &str, features: u64) -> Result<Self, RelayError> {
        let sock = sock::connect(socket)
            .map_err(|source| RelayError::Connect { path: socket.display().to_string(), source })?;
        let hello = Request::Hello { features, required: 0, name: name.to_owned() };
        let (reply, fd) = roundtrip(&sock, &hello)?;
        let channel_size = match reply {
            Reply::Hello { channel_size, .. } => {
                usize::try_from(channel_size).map_err(|_| RelayError::Protocol("size".into()))?
            }
            Reply::Error { errno, message } => return Err(RelayError::Refused { errno: Errno(errno), message }),
            other => return Err(RelayError::Protocol(format!("unexpected reply to hello: {other:?}"))),
        };
        let fd = fd.ok_or_else(|| RelayError::Protocol("hello reply carried no channel memfd".into()))?;
        let region = ShmRegion::map(fd.as_fd(), channel_size).map_err(|e| RelayError::Protocol(e.to_string()))?;
        let h: ChannelSetHeader = region.read(0);
        zus_api::check_peer(h.magic, h.abi_version, "zusd channel set").map_err(RelayError::Protocol)?;
        let geo = Geometry::from_header(&h, channel_size).map_err(|e| RelayError::Protocol(e.to_string()))?;
        let node = |l: usize| h.cpu_node.get(l).copied().unwrap_or(0);
        let peers = (0..geo.ncpu)
            .map(|l| (1..geo.ncpu).map(|k| (l + k) % geo.ncpu).filter(|&p| node(p) == node(l)).collect())
            .collect();
        Ok(Self {
            region,
            geo,
            peers,
            client_spin: Duration::from_nanos(u64::from(h.client_spin_ns)),
            sock,
            ctl: Mutex::new(()),
            dead: AtomicBool::new(false),
            seq: AtomicU64::new(1),
            bounce_bytes: AtomicU64::new(0),
            client_id: h.client_id,
            server_features: h.features,
        })
    }

    /// Whether the server accepts streamed-window reads and writes ([`Relay::op_streamed`]).
    #[must_use]
    pub fn streams(&self) -> bool {
        self.server_features & zus_api::features::STREAMED_WINDOW != 0
    }

    /// Dax reader slot `i` of our channel set (see [`zus_api::chan::DAX_READER_SLOTS`]).
    #[must_use]
    pub fn dax_reader_slot(&self, i: usize) -> &AtomicU64 {
        self.chan().dax_reader(i)
    }

    /// Our channel set, as the slot protocol sees it.
    fn chan(&self) -> Channel<'_> {
        Channel::new(&self.region, self.geo)
    }

    /// Id the server gave us.
    #[must_use]
    pub fn client_id(&self) -> u32 {
        self.client_id
    }

    /// Channel geometry.
    #[must_use]
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// NUMA node of each lane as the server described it.
    #[must_use]
    pub fn lane_nodes(&self) -> Vec<u16> {
        let h: ChannelSetHeader = self.region.read(0);
        h.cpu_node[..self.geo.ncpu].to_vec()
    }

    /// CPU the ZT of `lane` is pinned to (written by that ZT).
    #[must_use]
    pub fn lane_zt_cpu(&self, lane: usize) -> u32 {
        self.chan().lane(lane).zt_cpu()
    }

    /// The server's layout generation (`ChannelSetHeader::layout_gen`): changes after any op that
    /// may have freed or moved file blocks, by any client.
    #[inline]
    #[must_use]
    pub fn layout_gen(&self) -> u64 {
        self.chan().layout_gen().load(Ordering::Acquire)
    }

    /// Whether the calling thread sends ops back to back: its last reply (from any lane) came
    /// less than 100 µs ago.
    #[inline]
    #[must_use]
    pub fn sends_back_to_back() -> bool {
        LAST_REPLY.get().is_some_and(|t| t.elapsed() < BACK_TO_BACK)
    }

    /// Whether the ZT of `lane` is polling for work on an otherwise idle CPU right now.
    #[must_use]
    pub fn lane_zt_polling(&self, lane: usize) -> bool {
        self.chan().lane(lane).zt_polling()
    }

    /// Sends a control request and returns the reply.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn control(&self, req: &Request) -> Result<Reply, RelayError> {
        let _g = self.ctl.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (r, _) = roundtrip(&self.sock, req)?;
        if let Reply::Error { errno, message } = r {
            return Err(RelayError::Refused { errno: Errno(errno), message });
        }
        Ok(r)
    }

    /// Sends a control request with `fd` attached (`SCM_RIGHTS`) and returns the reply.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn control_with_fd(&self, req: &Request, fd: std::os::fd::BorrowedFd<'_>) -> Result<Reply, RelayError> {
        let _g = self.ctl.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = control::encode(req).map_err(|e| RelayError::Protocol(e.to_string()))?;
        sock::send_msg(self.sock.as_fd(), &m, Some(fd)).map_err(|_| RelayError::ServerGone)?;
        let r = match sock::recv_msg(self.sock.as_fd()) {
            Ok(Some((msg, _))) => {
                control::decode::<Reply>(&msg, "zusd").map_err(|e| RelayError::Protocol(e.to_string()))?
            }
            Ok(None) | Err(_) => return Err(RelayError::ServerGone),
        };
        if let Reply::Error { errno, message } = r {
            return Err(RelayError::Refused { errno: Errno(errno), message });
        }
        Ok(r)
    }

    /// The control socket (to watch for the server's end: it hangs up when zusd exits).
    #[must_use]
    pub fn control_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Lists fs types.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn list_fs(&self) -> Result<Vec<FsTypeInfo>, RelayError> {
        match self.control(&Request::ListFs)? {
            Reply::FsList { types } => Ok(types),
            r => Err(RelayError::Protocol(format!("{r:?}"))),
        }
    }

    /// Mounts a device.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn mount(&self, fs_type: &str, device: &str, options: &str) -> Result<MountInfo, RelayError> {
        let req = Request::Mount { fs_type: fs_type.into(), device: device.into(), options: options.into() };
        match self.control(&req)? {
            Reply::Mounted { mount } => Ok(mount),
            r => Err(RelayError::Protocol(format!("{r:?}"))),
        }
    }

    /// Attaches to an existing mount.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn attach(&self, mount_id: u32) -> Result<MountInfo, RelayError> {
        match self.control(&Request::Attach { mount_id })? {
            Reply::Mounted { mount } => Ok(mount),
            r => Err(RelayError::Protocol(format!("{r:?}"))),
        }
    }

    /// Unmounts.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn unmount(&self, mount_id: u32) -> Result<(), RelayError> {
        self.control(&Request::Unmount { mount_id }).map(|_| ())
    }

    /// Server status.
    ///
    /// # Errors
    /// [`RelayError`].
    pub fn status(&self) -> Result<StatusInfo, RelayError> {
        match self.control(&Request::Status)? {
            Reply::Status { status } => Ok(status),
            r => Err(RelayError::Protocol(format!("{r:?}"))),
        }
    }

    /// Whether the server has gone away (checked lazily).
    #[must_use]
    pub fn server_gone(&self) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return true;
        }
        if sock::peer_hung_up(self.sock.as_fd()) {
            self.dead.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Runs one op on the lane of the current CPU. `req` parts are concatenated into the payload;
    /// the reply payload goes to `reply`, data the server produced to `data_out`.
    ///
    /// # Errors
    /// [`RelayError::Op`] with the op's errno, or a transport error.
    #[allow(clippy::too_many_arguments)] // the hot path takes plain arguments: nothing to build per op
    pub fn op(
        &self,
        mount_id: u32,
        opcode: zus_api::ops::OpCode,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
    ) -> Result<OpOutcome, RelayError> {
        let lane = current_cpu() % self.geo.ncpu;
        self.op_on_lane(lane, mount_id, opcode, req, data_in, reply, data_out, creds)
    }

    /// As [`Relay::op`], starting at a given lane (benchmarks use it to force a cross-CPU ZT).
    ///
    /// # Errors
    /// As [`Relay::op`].
    #[allow(clippy::too_many_arguments)]
    pub fn op_on_lane(
        &self,
        lane: usize,
        mount_id: u32,
        opcode: zus_api::ops::OpCode,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
    ) -> Result<OpOutcome, RelayError> {
        self.op_with_ticket(lane, mount_id, opcode, req, data_in, reply, data_out, creds, 0)
    }

    /// As [`Relay::op_on_lane`], showing `ticket` for the op's inode (`OpHeader::ticket`; a
    /// client attached to a mount it does not own needs one for every op).
    ///
    /// # Errors
    /// As [`Relay::op`].
    #[allow(clippy::too_many_arguments)]
    pub fn op_with_ticket(
        &self,
        lane: usize,
        mount_id: u32,
        opcode: zus_api::ops::OpCode,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
        ticket: u64,
    ) -> Result<OpOutcome, RelayError> {
        let data_len = match data_in {
            DataIn::None => 0,
            DataIn::Window(d) => d.len(),
        };
        let (slot, spins) = self.begin(lane, mount_id, opcode, req, data_len, creds, ticket)?;
        if let DataIn::Window(d) = data_in {
            slot.copy_to_window(0, d);
            self.bounce_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        // On error the slot stays busy: the server may still write it. A dead server makes the
        // whole channel set useless anyway.
        self.chan().lane(slot.lane()).submit(slot);
        self.wait_reply(slot, spins)?;
        self.finish(slot, reply, |slot, dl| {
            let mut got = 0;
            if let Some(d) = data_out {
                got = dl.min(d.len());
                if got > 0 {
                    slot.copy_from_window(0, &mut d[..got]);
                }
            }
            got
        })
    }

    /// A read or write whose data goes through the slot's window while the op runs
    /// ([`zus_api::ops::DATA_WINDOW_STREAM`]; `req` starts with an `IoReq` of that kind). When
    /// the ZT runs on another CPU we submit first and copy while it works: our copy and its
    /// copy overlap, so the op takes about one copy's time. On our own CPU's ZT we copy a
    /// write's data in before submitting (the ZT could not run while we copy anyway). Counted
    /// in `bounce_bytes` (two copies, P-CH6's named fallback).
    ///
    /// # Errors
    /// As [`Relay::op`]; [`RelayError::TooLarge`] for more data than a window holds.
    #[allow(clippy::too_many_arguments)] // the hot path takes plain arguments: nothing to build per op
    pub fn op_streamed(
        &self,
        lane: usize,
        mount_id: u32,
        opcode: zus_api::ops::OpCode,
        req: &[&[u8]],
        data: Stream<'_>,
        reply: &mut [u8],
        ticket: u64,
    ) -> Result<OpOutcome, RelayError> {
        let (total, data_len) = match &data {
            Stream::Write(g) => (g.total(), g.total()),
            Stream::Read(s) => (s.total(), 0),
        };
        if total > self.geo.window_size {
            return Err(RelayError::TooLarge(total));
        }
        let (slot, spins) = self.begin(lane, mount_id, opcode, req, data_len, None, ticket)?;
        let lane = self.chan().lane(slot.lane());
        let ready = slot.data_ready();
        self.bounce_bytes.fetch_add(total as u64, Ordering::Relaxed);
        match data {
            Stream::Write(src) => {
                if spins {
                    ready.store(0, Ordering::Relaxed);
                    lane.submit(slot);
                    self.gather_into_window(src, slot);
                } else {
                    self.gather_into_window(src, slot);
                    lane.submit(slot);
                }
                self.wait_reply(slot, spins)?;
                self.finish(slot, reply, |_, _| 0)
            }
            Stream::Read(dst) => {
                ready.store(0, Ordering::Relaxed);
                lane.submit(slot);
                let mut copied = 0;
                if spins {
                    copied = self.scatter_while_served(dst, slot);
                }
                self.wait_reply(slot, spins)?;
                self.finish(slot, reply, |slot, dl| scatter_from_window(slot, dst, copied, dl.min(total)).min(dl))
            }
        }
    }

    /// Copies a streamed write's bytes into the window, announcing each piece.
    fn gather_into_window(&self, src: &mut dyn GatherSource, slot: Slot<'_>) {
        let ready = slot.data_ready();
        let total = src.total().min(self.geo.window_size);
        let mut at = 0;
        while at < total {
            let piece = src.next_piece((total - at).min(STREAM_CLIENT_PIECE));
            if piece.is_empty() {
                break;
            }
            slot.copy_to_window(at, piece);
            at += piece.len();
            ready.store(u32::try_from(at).unwrap_or(u32::MAX), Ordering::Release);
        }
    }

    /// While a ZT on another CPU serves a streamed read, copies out what it announced; returns
    /// the bytes copied once the op is done or the ZT stops making progress for a while (the
    /// rest is copied after the reply).
    fn scatter_while_served(&self, dst: &mut dyn ScatterSink, slot: Slot<'_>) -> usize {
        let total = dst.total().min(self.geo.window_size);
        let ready = slot.data_ready();
        let mut copied = 0;
        let mut progress_at = Instant::now();
        let mut n = 0u32;
        while copied < total {
            let r = (ready.load(Ordering::Acquire) as usize).min(total);
            if r > copied {
                let now_copied = scatter_from_window(slot, dst, copied, r);
                if now_copied < r {
                    return now_copied;
                }
                copied = now_copied;
                progress_at = Instant::now();
                continue;
            }
            if slot.state() == slot_state::DONE {
                break;
            }
            core::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && progress_at.elapsed() >= self.client_spin.max(SPIN_YIELD_EVERY) {
                break;
            }
        }
        copied
    }

    /// Claims a slot (from `lane`, else a peer lane of its node) and writes the request header
    /// and payload. Returns the slot and whether to spin for the reply.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        lane: usize,
        mount_id: u32,
        opcode: zus_api::ops::OpCode,
        req: &[&[u8]],
        data_len: usize,
        creds: Option<Creds>,
        ticket: u64,
    ) -> Result<(Slot<'_>, bool), RelayError> {
        let in_len: usize = req.iter().map(|p| p.len()).sum();
        if in_len > PAYLOAD_SIZE {
            return Err(RelayError::TooLarge(in_len));
        }
        if data_len > self.geo.window_size {
            return Err(RelayError::TooLarge(data_len));
        }
        if self.dead.load(Ordering::Relaxed) {
            return Err(RelayError::ServerGone);
        }
        let slot = self.claim(lane % self.geo.ncpu)?;
        let c = creds.unwrap_or_default();
        // Spinning for the reply only makes sense when the ZT runs on another CPU (P-CH2). When
        // this thread also sends back to back (its last spun-for reply came a moment ago) we
        // say so, and the ZT polls for our next op instead of sleeping at once.
        let zt_cpu = self.chan().lane(slot.lane()).zt_cpu() as usize;
        let spins = zt_cpu != current_cpu() && !self.client_spin.is_zero();
        let back_to_back = spins && Self::sends_back_to_back();
        let hdr = OpHeader {
            opcode: opcode as u32,
            flags: if back_to_back { HDR_F_CLIENT_SPINS } else { 0 },
            mount_id,
            in_len: u32::try_from(in_len).unwrap_or(0),
            out_len: 0,
            data_len: u32::try_from(data_len).unwrap_or(0),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            result: 0,
            uid: c.uid,
            gid: c.gid,
            pid: c.pid,
            reserved: 0,
            ticket,
        };
        slot.write_request(&hdr, req);
        Ok((slot, spins))
    }

    /// Reads the reply of a finished op, lets `data_out(slot, data_len)` copy its data
    /// (returning the bytes it took) and frees the slot.
    fn finish(
        &self,
        slot: Slot<'_>,
        reply: &mut [u8],
        data_out: impl FnOnce(Slot<'_>, usize) -> usize,
    ) -> Result<OpOutcome, RelayError> {
        LAST_REPLY.set(Some(Instant::now()));
        let rh: OpHeader = slot.reply_header();
        let out = match Errno::from_wire(rh.result) {
            Ok(value) => {
                let rl = (rh.out_len as usize).min(reply.len()).min(PAYLOAD_SIZE);
                if rl > 0 {
                    slot.copy_reply(&mut reply[..rl]);
                }
                let dl = (rh.data_len as usize).min(self.geo.window_size);
                let data_len = data_out(slot, dl);
                Ok(OpOutcome { value, reply_len: rl, data_len })
            }
            Err(e) => Err(RelayError::Op(e)),
        };
        self.chan().lane(slot.lane()).release(slot);
        out
    }

    fn try_claim(&self, lane: usize) -> Option<Slot<'_>> {
        let chan = self.chan();
        if let Some(s) = chan.lane(lane).try_claim() {
            return Some(s);
        }
        // Spill within the node (P-CH3).
        self.peers[lane].iter().find_map(|&l| chan.lane(l).try_claim())
    }

    /// Claims a slot on `lane` or a peer lane; with every slot busy, sleeps on `lane`'s
    /// slot-freed futex (P-CH3: never a fixed sleep), checking the server's liveness.
    fn claim(&self, lane: usize) -> Result<Slot<'_>, RelayError> {
        if let Some(s) = self.try_claim(lane) {
            return Ok(s);
        }
        let home = self.chan().lane(lane);
        loop {
            if let Some(s) = home.wait_for_free(LIVENESS_CHECK, || self.try_claim(lane)) {
                return Ok(s);
            }
            if self.server_gone() {
                return Err(RelayError::ServerGone);
            }
        }
    }

    /// Waits for the reply in `slot`, spinning first when `spins`.
    fn wait_reply(&self, slot: Slot<'_>, spins: bool) -> Result<(), RelayError> {
        if spins {
            // Spin for the client budget; once the ZT has taken the op (SERVING) it is working
            // for us on its own CPU, and the wait it leaves is the op's own length: keep
            // spinning up to SERVING_SPIN_CAP rather than pay a cross-CPU wake at the end.
            // The spin is cooperative: every SPIN_YIELD_EVERY we offer our CPU to any other
            // runnable thread (another client's ZT may be waiting for exactly this CPU).
            let t0 = Instant::now();
            let mut last_yield = t0;
            let mut n = 0u32;
            loop {
                let st = slot.state();
                if st == slot_state::DONE {
                    return Ok(());
                }
                core::hint::spin_loop();
                n = n.wrapping_add(1);
                if n.is_multiple_of(64) {
                    let now = Instant::now();
                    let waited = now.duration_since(t0);
                    if waited >= self.client_spin && (st != slot_state::SERVING || waited >= SERVING_SPIN_CAP) {
                        break;
                    }
                    if now.duration_since(last_yield) >= SPIN_YIELD_EVERY {
                        std::thread::yield_now();
                        last_yield = Instant::now();
                    }
                }
            }
        }
        loop {
            match slot.wait_done(LIVENESS_CHECK) {
                ReplyWait::Done => return Ok(()),
                ReplyWait::TimedOut if self.server_gone() => return Err(RelayError::ServerGone),
                ReplyWait::TimedOut | ReplyWait::Pending => {}
            }
        }
    }
}

/// Copies window bytes `[from, to)` (offsets in the window at `win`) into the next pieces of
/// `dst`; returns where it stopped (`to`, or earlier when `dst` has no more room).
fn scatter_from_window(slot: Slot<'_>, dst: &mut dyn ScatterSink, from: usize, to: usize) -> usize {
    let mut at = from;
    while at < to {
        let piece = dst.next_piece(to - at);
        if piece.is_empty() {
            break;
        }
        slot.copy_from_window(at, piece);
        at += piece.len();
    }
    at
}

fn roundtrip(sock: &OwnedFd, req: &Request) -> Result<(Reply, Option<OwnedFd>), RelayError> {
    let m = control::encode(req).map_err(|e| RelayError::Protocol(e.to_string()))?;
    sock::send_msg(sock.as_fd(), &m, None).map_err(|_| RelayError::ServerGone)?;
    match sock::recv_msg(sock.as_fd()) {
        Ok(Some((msg, fd))) => {
            let r = control::decode::<Reply>(&msg, "zusd").map_err(|e| RelayError::Protocol(e.to_string()))?;
            Ok((r, fd))
        }
        Ok(None) | Err(_) => Err(RelayError::ServerGone),
    }
}

/// Undoes the octal escapes (`\\040` for a space ...) of /proc/self/mountinfo fields.
#[must_use]
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
