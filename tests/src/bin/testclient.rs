//! A zusd client process for the end-to-end tests: well-behaved load, endless writes (to be
//! killed), and a hostile mode that writes garbage into its own channel.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use zus_api::Errno;
use zus_api::chan::{Geometry, LaneHeader, PAYLOAD_SIZE, Slot, slot_state};
use zus_api::ops::{
    Attr, CopyFileRangeReq, CreateReq, DATA_WINDOW, DATA_WINDOW_STREAM, InoReq, IoReq, NameReq, OpCode, OpHeader, Pod,
    ReaddirReq, ReleaseReq,
};
use zus_channel::control::{self, Reply, Request};
use zus_channel::shm::{ShmRegion, futex};
use zus_channel::sock;
use zus_client::Relay;
use zus_client::{DataIn, GatherSource, ScatterSink, Stream};

#[derive(Debug, Parser)]
struct Args {
    /// zusd control socket.
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mount (or attach) and drive checked ops from N threads.
    Ops {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// Attach to this mount instead of mounting nullfs.
        #[arg(long)]
        mount_id: Option<u32>,
    },
    /// Attach and write forever (the test kills it).
    Spin {
        #[arg(long)]
        mount_id: u32,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Write garbage requests into our own channel and check each gets an error or a sane reply.
    Garbage {
        #[arg(long)]
        mount_id: u32,
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Mount nullfs and print the mount id, then stay connected until stdin closes.
    Mount {
        #[arg(long, default_value = "nullfs")]
        fs: String,
        #[arg(long, default_value = "")]
        device: String,
        #[arg(long, default_value = "")]
        options: String,
    },
    /// Do one op that makes the plugin panic (mount with panic_on=boom), then a normal one.
    Panic,
    /// Print the server status as JSON.
    Status,
    /// Mount a device-less fs type and print the root's attributes.
    Probe {
        #[arg(long)]
        fs: String,
        /// Then a streamed write of this many bytes to the root (the C test plugin answers
        /// with the sum of the bytes it got), the data arriving 50 ms after the submit where
        /// another CPU's lane allows it; prints `SUM got=.. want=..`.
        #[arg(long)]
        streamed_write_sum: Option<usize>,
    },
    /// Print each lane's NUMA node and the CPU its ZT runs on.
    Lanes,
    /// Send a hello claiming another ABI version; print the server's answer.
    BadHello,
    /// Pinned to lane 0's CPU: ops on our own lane, then on another CPU's lane (we spin), each
    /// followed by a look at that lane's `zt_polling` flag; then whether it clears after `--idle-ms`.
    Poll {
        #[arg(long, default_value_t = 200)]
        iters: usize,
        #[arg(long, default_value_t = 100)]
        idle_ms: u64,
    },
    /// Streamed windows: writes and reads on our own CPU's lane and another's (where the copy
    /// overlaps the ZT's), reads compared with the plain window path, malformed streamed
    /// requests refused, and a writer that stops mid-stream failing with EFAULT in bounded
    /// time while the server keeps serving. Prints `STREAM OK`.
    Stream,
    /// The kernel-cache marks: who may set them, what they refuse, and that they leave with the
    /// bridge that set them. Prints `KCACHE OK` or fails with the step that went wrong.
    Kcache,
    /// `CreateOpen` (create and open in one op, composed by zusd): the reply's attributes and
    /// handle, the name then found by lookup, EEXIST the second time, a bad name refused, the
    /// handle usable for a write; then `ForgetMany` giving the reference back and refusing
    /// payloads that are not whole `ForgetReq`s. Prints `CREATEOPEN OK`.
    CreateOpen,
    /// `ReaddirPlus` (readdir with each entry's attributes, composed by zusd): the same entries
    /// and cookies as `Readdir`, each with what a lookup of its name answers (and a lookup
    /// reference, given back with `ForgetMany`), `.`/`..` without; resuming at a cookie; a
    /// file refused as a directory and a short request refused. Prints `READDIRPLUS OK`.
    ReaddirPlus,
    /// Tickets: as root, mount nullfs, issue tickets to `--uid` through a bridge connection, and
    /// run `ticket-user` as that user to use them; then revoke one and check it is refused.
    /// Prints `TICKETS OK`.
    Tickets {
        #[arg(long, default_value_t = 65534)]
        uid: u32,
    },
    /// Run by `tickets` as another user: attach to a mount we do not own and check what our
    /// tickets allow. Prints `USER OK`.
    TicketUser {
        #[arg(long)]
        mount_id: u32,
        #[arg(long)]
        ino: u64,
        #[arg(long)]
        other_ino: u64,
        #[arg(long)]
        ro: u64,
        #[arg(long)]
        rw: u64,
        /// The rw ticket was revoked: only check that it is refused now.
        #[arg(long)]
        revoked: bool,
    },
}

fn name_req(dir: u64, name: &[u8]) -> NameReq {
    NameReq { dir, name_len: u32::try_from(name.len()).unwrap_or(0), reserved: 0 }
}

fn attr_of(buf: &[u8]) -> Result<Attr> {
    Attr::read_from(buf).context("short attr reply")
}

/// One thread's checked workload: create, write, read back, getattr, readdir, unlink.
fn worker(relay: &Relay, mount: u32, root: u64, tid: usize, iters: usize, counter: &AtomicU32) -> Result<()> {
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let name = format!("t{tid}-{}", std::process::id());
    let cr = CreateReq { dir: root, mode: 0o644, rdev: 0, flags: 0, name_len: u32::try_from(name.len())? };
    let o = relay.op(mount, OpCode::Create, &[cr.as_bytes(), name.as_bytes()], DataIn::None, &mut reply, None, None)?;
    let a = attr_of(&reply[..o.reply_len])?;
    ensure!(a.mode & libc::S_IFMT == libc::S_IFREG, "create returned mode {:o}", a.mode);
    let ino = a.ino;
    let mut data = vec![0u8; 4096];
    let mut back = vec![0u8; 4096];
    for i in 0..iters {
        let off = (i as u64 % 16) * 4096;
        for (k, b) in data.iter_mut().enumerate() {
            *b = u8::try_from((k + i + tid) % 256).unwrap_or(0);
        }
        let w = IoReq { ino, fh: 0, offset: off, len: 4096, flags: 0, data_kind: 0, niov: 0, reserved: 0 };
        let o = relay.op(mount, OpCode::Write, &[w.as_bytes()], DataIn::Window(&data), &mut reply, None, None)?;
        ensure!(o.value == 4096, "write returned {}", o.value);
        let o = relay.op(mount, OpCode::Read, &[w.as_bytes()], DataIn::None, &mut reply, Some(&mut back), None)?;
        ensure!(o.value == 4096 && o.data_len == 4096, "read returned {} ({} bytes)", o.value, o.data_len);
        // nullfs returns its pattern, not the data: byte at offset o is o % 251.
        for (k, b) in back.iter().enumerate() {
            ensure!(*b == ((off + k as u64) % 251) as u8, "read byte {k} at {off} = {b}");
        }
        let o = relay.op(mount, OpCode::Getattr, &[InoReq { ino }.as_bytes()], DataIn::None, &mut reply, None, None)?;
        let a = attr_of(&reply[..o.reply_len])?;
        ensure!(a.ino == ino && a.size >= off + 4096, "getattr size {} after write at {off}", a.size);
        counter.fetch_add(3, Ordering::Relaxed);
    }
    let l = name_req(root, name.as_bytes());
    let o = relay.op(mount, OpCode::Lookup, &[l.as_bytes(), name.as_bytes()], DataIn::None, &mut reply, None, None)?;
    ensure!(attr_of(&reply[..o.reply_len])?.ino == ino, "lookup found another inode");
    let mut dents = vec![0u8; 64 * 1024];
    let rd = ReaddirReq { dir: root, cookie: 0 };
    let o = relay.op(mount, OpCode::Readdir, &[rd.as_bytes()], DataIn::None, &mut reply, Some(&mut dents), None)?;
    let list = zus_plugin::parse_dirents(&dents[..o.data_len]).context("readdir records")?;
    ensure!(list.iter().any(|(i, _, n, _)| *i == ino && n == name.as_bytes()), "readdir misses {name}");
    relay.op(mount, OpCode::Unlink, &[l.as_bytes(), name.as_bytes()], DataIn::None, &mut reply, None, None)?;
    match relay.op(mount, OpCode::Lookup, &[l.as_bytes(), name.as_bytes()], DataIn::None, &mut reply, None, None) {
        Err(zus_client::RelayError::Op(e)) if e == Errno::ENOENT => {}
        other => bail!("lookup after unlink gave {other:?}"),
    }
    Ok(())
}

fn ops(relay: &Relay, threads: usize, iters: usize, mount_id: Option<u32>) -> Result<()> {
    let m = match mount_id {
        Some(id) => relay.attach(id)?,
        None => relay.mount("nullfs", "", "")?,
    };
    let counter = AtomicU32::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn({
                    let c = &counter;
                    let m = &m;
                    move || worker(relay, m.mount_id, m.root, t, iters, c)
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    println!("OK threads={threads} ops={} in {:?}", counter.load(Ordering::Relaxed), t0.elapsed());
    Ok(())
}

/// A streamed write's source: a byte vector handed out in pieces, optionally after a pause
/// before the first one (a client that stalls mid-op).
struct VecSource<'a> {
    data: &'a [u8],
    at: usize,
    stall: Duration,
}

impl GatherSource for VecSource<'_> {
    fn total(&self) -> usize {
        self.data.len()
    }
    fn next_piece(&mut self, max: usize) -> &[u8] {
        if self.at == 0 && !self.stall.is_zero() {
            std::thread::sleep(self.stall);
        }
        let n = max.min(self.data.len() - self.at);
        let p = &self.data[self.at..self.at + n];
        self.at += n;
        p
    }
}

/// A streamed read's sink: a byte vector filled in pieces.
struct VecSink<'a> {
    data: &'a mut [u8],
    at: usize,
}

impl ScatterSink for VecSink<'_> {
    fn total(&self) -> usize {
        self.data.len()
    }
    fn next_piece(&mut self, max: usize) -> &mut [u8] {
        let n = max.min(self.data.len() - self.at);
        let start = self.at;
        self.at += n;
        &mut self.data[start..start + n]
    }
}

/// One streamed read or write (the op follows the data's direction).
fn streamed(
    relay: &Relay,
    lane: usize,
    mount_id: u32,
    req: &IoReq,
    data: Stream<'_>,
) -> Result<zus_client::OpOutcome, zus_client::RelayError> {
    let code = if matches!(data, Stream::Write(_)) { OpCode::Write } else { OpCode::Read };
    let mut reply = [0u8; 64];
    relay.op_streamed(lane, mount_id, code, &[req.as_bytes()], data, &mut reply, 0)
}

fn stream(relay: &Relay) -> Result<()> {
    ensure!(relay.streams(), "server does not offer streamed windows");
    let m = relay.mount("nullfs", "", "")?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let name = b"streamed";
    let cr = CreateReq { dir: m.root, mode: 0o644, rdev: 0, flags: 0, name_len: 8 };
    let o = relay.op(m.mount_id, OpCode::Create, &[cr.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
    let ino = attr_of(&reply[..o.reply_len])?.ino;
    let ncpu = relay.geometry().ncpu;
    let own_cpu = relay.lane_zt_cpu(0);
    zufs_tests::pin_current(own_cpu as usize)?;
    let other = (1..ncpu).find(|&l| relay.lane_zt_cpu(l) != own_cpu);
    let io = |len: usize, off: u64| IoReq {
        ino,
        fh: 0,
        offset: off,
        len: len as u64,
        flags: 0,
        data_kind: DATA_WINDOW_STREAM,
        niov: 0,
        reserved: 0,
    };
    let len = 300 * 1024 + 123;
    let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 253).unwrap_or(0)).collect();
    for lane in std::iter::once(0).chain(other) {
        let w = io(len, 4096 * lane as u64);
        let mut src = VecSource { data: &data, at: 0, stall: Duration::ZERO };
        let o = streamed(relay, lane, m.mount_id, &w, Stream::Write(&mut src))?;
        ensure!(o.value == len as u64, "streamed write on lane {lane} wrote {}", o.value);
        // Reads: streamed, against the same range through the plain window.
        let mut got = vec![0u8; len];
        let mut sink = VecSink { data: &mut got, at: 0 };
        let o = streamed(relay, lane, m.mount_id, &w, Stream::Read(&mut sink))?;
        ensure!(o.value == len as u64 && o.data_len == len, "streamed read on lane {lane}: {o:?}");
        let mut want = vec![0u8; len];
        let plain = IoReq { data_kind: DATA_WINDOW, ..w };
        relay.op_on_lane(
            lane,
            m.mount_id,
            OpCode::Read,
            &[plain.as_bytes()],
            DataIn::None,
            &mut reply,
            Some(&mut want),
            None,
        )?;
        ensure!(got == want, "streamed read on lane {lane} differs from the plain window read");
        // A read past the end: only what is there.
        let tail = io(len, 4096 * lane as u64 + len as u64 - 1000);
        let mut sink = VecSink { data: &mut got, at: 0 };
        let o = streamed(relay, lane, m.mount_id, &tail, Stream::Read(&mut sink))?;
        ensure!(o.value == 1000 && o.data_len == 1000, "streamed read across EOF on lane {lane}: {o:?}");
    }
    // Malformed: the data length disagrees with the request; a request longer than a window.
    let win = relay.geometry().window_size;
    let small = vec![1u8; 4096];
    for (what, req) in [("data_len != len", io(8192, 0)), ("longer than a window", io(win + 4096, 0))] {
        let mut src = VecSource { data: &small, at: 0, stall: Duration::ZERO };
        match streamed(relay, 0, m.mount_id, &req, Stream::Write(&mut src)) {
            Err(zus_client::RelayError::Op(e)) if e == Errno::EINVAL => {}
            other => bail!("streamed write with {what} gave {other:?}, expected EINVAL"),
        }
    }
    let mut big = vec![0u8; 4096];
    let mut sink = VecSink { data: &mut big, at: 0 };
    match streamed(relay, 0, m.mount_id, &io(win + 4096, 0), Stream::Read(&mut sink)) {
        Err(zus_client::RelayError::Op(e)) if e == Errno::EINVAL => {}
        other => bail!("streamed read longer than a window gave {other:?}, expected EINVAL"),
    }
    // A writer that stops: only where the op is submitted before the data (another CPU's ZT).
    if let Some(lane) = other {
        let mut src = VecSource { data: &data, at: 0, stall: Duration::from_millis(600) };
        let t0 = Instant::now();
        let r = streamed(relay, lane, m.mount_id, &io(len, 0), Stream::Write(&mut src));
        let waited = t0.elapsed();
        match r {
            Err(zus_client::RelayError::Op(e)) if e == Errno::EFAULT => {}
            other => bail!("stalled streamed write gave {other:?}, expected EFAULT"),
        }
        ensure!(waited < Duration::from_secs(3), "stalled streamed write took {waited:?}");
        // The ZT is free again and the next write goes through.
        let mut src = VecSource { data: &data, at: 0, stall: Duration::ZERO };
        let o = streamed(relay, lane, m.mount_id, &io(len, 0), Stream::Write(&mut src))?;
        ensure!(o.value == len as u64, "write after the stalled one wrote {}", o.value);
    } else {
        println!("one CPU: no stalled-writer check (the data always goes in before the submit)");
    }
    println!("STREAM OK");
    Ok(())
}

fn spin(relay: &Relay, mount_id: u32, threads: usize) -> Result<()> {
    let m = relay.attach(mount_id)?;
    let name = format!("spin-{}", std::process::id());
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let cr = CreateReq { dir: m.root, mode: 0o644, rdev: 0, flags: 0, name_len: u32::try_from(name.len())? };
    let o = relay.op(
        m.mount_id,
        OpCode::Create,
        &[cr.as_bytes(), name.as_bytes()],
        DataIn::None,
        &mut reply,
        None,
        None,
    )?;
    let ino = attr_of(&reply[..o.reply_len])?.ino;
    println!("spinning");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let data = vec![7u8; 65536];
                let mut reply = vec![0u8; 256];
                let w = IoReq { ino, fh: 0, offset: 0, len: 65536, flags: 0, data_kind: 0, niov: 0, reserved: 0 };
                loop {
                    if relay
                        .op(m.mount_id, OpCode::Write, &[w.as_bytes()], DataIn::Window(&data), &mut reply, None, None)
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Raw channel access for the hostile client: speaks the protocol by hand.
fn garbage(socket: &Path, mount_id: u32, iters: usize, seed: u64) -> Result<()> {
    // A normal relay connection to attach the mount, plus our own hand-driven channel set.
    let sock = raw_connect(socket)?;
    let hello = Request::Hello { features: 0, required: 0, name: "garbage".into() };
    sock::send_msg(sock.as_fd(), &control::encode(&hello)?, None)?;
    let (msg, fd) = sock::recv_msg(sock.as_fd())?.context("no hello reply")?;
    let Reply::Hello { channel_size, .. } = control::decode::<Reply>(&msg, "zusd")? else { bail!("bad hello") };
    let fd = fd.context("no memfd")?;
    let size = usize::try_from(channel_size)?;
    let region = ShmRegion::map(fd.as_fd(), size)?;
    let h: zus_api::chan::ChannelSetHeader = region.read(0);
    let g = Geometry::from_header(&h, size)?;
    sock::send_msg(sock.as_fd(), &control::encode(&Request::Attach { mount_id })?, None)?;
    let (msg, _) = sock::recv_msg(sock.as_fd())?.context("no attach reply")?;
    ensure!(matches!(control::decode::<Reply>(&msg, "zusd")?, Reply::Mounted { .. }), "attach refused");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut errors, mut ok) = (0u64, 0u64);
    for i in 0..iters {
        let lane = rng.random_range(0..g.ncpu);
        let so = g.slot_offset(lane, 0);
        let mut hdr = OpHeader {
            opcode: if rng.random_bool(0.2) { rng.random() } else { rng.random_range(0..32) },
            flags: rng.random(),
            mount_id: if rng.random_bool(0.8) { mount_id } else { rng.random() },
            in_len: if rng.random_bool(0.3) { rng.random() } else { rng.random_range(0..200) },
            out_len: rng.random(),
            data_len: if rng.random_bool(0.3) { rng.random() } else { rng.random_range(0..70000) },
            seq: i as u64,
            result: rng.random(),
            uid: rng.random(),
            gid: rng.random(),
            pid: rng.random(),
            reserved: rng.random(),
            ticket: rng.random(),
        };
        if rng.random_bool(0.05) {
            hdr.opcode = OpCode::Noop as u32;
        }
        region.write(so + core::mem::offset_of!(Slot, hdr), &hdr);
        let mut payload = [0u8; 256];
        rng.fill(&mut payload[..]);
        if rng.random_bool(0.5) {
            // Plausible inode numbers and lengths make the plugin work harder.
            payload[..8].copy_from_slice(&rng.random_range(0u64..8).to_le_bytes());
        }
        region.copy_in(so + core::mem::offset_of!(Slot, payload), &payload);
        let state = region.atomic_u32(so + core::mem::offset_of!(Slot, state));
        state.store(slot_state::SUBMITTED, Ordering::SeqCst);
        let lo = g.lane_offset(lane);
        let bell = region.atomic_u32(lo + core::mem::offset_of!(LaneHeader, doorbell));
        bell.fetch_add(1, Ordering::SeqCst);
        futex::wake(bell, 1);
        // Occasionally scribble over the slot while the server may be serving it.
        if rng.random_bool(0.1) {
            region.write(so + core::mem::offset_of!(Slot, hdr), &OpHeader { in_len: u32::MAX, ..hdr });
        }
        let t0 = Instant::now();
        while state.load(Ordering::SeqCst) != slot_state::DONE {
            ensure!(t0.elapsed() < Duration::from_secs(5), "no reply to garbage request {i}: server wedged?");
            std::thread::yield_now();
        }
        let r: OpHeader = region.read(so + core::mem::offset_of!(Slot, hdr));
        if r.result < 0 {
            errors += 1;
        } else {
            ok += 1;
        }
        state.store(slot_state::FREE, Ordering::SeqCst);
    }
    println!("GARBAGE OK errors={errors} accepted={ok}");
    Ok(())
}

fn raw_connect(socket: &Path) -> Result<std::os::fd::OwnedFd> {
    sock::connect(socket).with_context(|| format!("connect {}", socket.display()))
}

fn bad_hello(socket: &Path) -> Result<()> {
    let sock = raw_connect(socket)?;
    let mut m = control::encode(&Request::Hello { features: 0, required: 0, name: "old".into() })?;
    m[8..12].copy_from_slice(&99u32.to_le_bytes());
    sock::send_msg(sock.as_fd(), &m, None)?;
    let (msg, _) = sock::recv_msg(sock.as_fd())?.context("no reply")?;
    match control::decode::<Reply>(&msg, "zusd")? {
        Reply::Error { errno, message } => println!("REFUSED errno={errno} {message}"),
        other => bail!("server accepted a mismatched hello: {other:?}"),
    }
    Ok(())
}

/// Whether `lane`'s ZT announces polling within `window` (looked at from a spinning loop).
fn sees_polling(relay: &Relay, lane: usize, window: Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < window {
        if relay.lane_zt_polling(lane) {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// One op's errno (0 on success).
fn op_errno(relay: &Relay, mount: u32, code: OpCode, req: &[&[u8]], data: DataIn<'_>, out: Option<&mut [u8]>) -> i32 {
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    match relay.op(mount, code, req, data, &mut reply, out, None) {
        Ok(_) => 0,
        Err(zus_client::RelayError::Op(e)) => e.0,
        Err(e) => panic!("{code:?}: {e}"),
    }
}

fn create_open(relay: &Relay) -> Result<()> {
    use zus_api::ops::CreateOpenReply;
    let m = relay.mount("nullfs", "", "")?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let name = b"made";
    let cr = CreateReq { dir: m.root, mode: 0o640, rdev: 0, flags: libc::O_RDWR.cast_unsigned(), name_len: 4 };
    let o = relay.op(m.mount_id, OpCode::CreateOpen, &[cr.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
    ensure!(o.reply_len == size_of::<CreateOpenReply>(), "CreateOpen replied {} bytes", o.reply_len);
    let r = CreateOpenReply::read_from(&reply[..o.reply_len]).context("short CreateOpen reply")?;
    ensure!(r.attr.ino != 0 && r.attr.mode == libc::S_IFREG | 0o640, "CreateOpen attr {:?}", r.attr);
    ensure!(r.dir.ino == m.root && r.dir.mode & libc::S_IFMT == libc::S_IFDIR, "CreateOpen dir attr {:?}", r.dir);
    ensure!(r.dir.mtime_ns >= r.attr.mtime_ns, "the directory's mtime is from before the create: {:?}", r.dir);
    let l = name_req(m.root, name);
    let o = relay.op(m.mount_id, OpCode::Lookup, &[l.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
    ensure!(attr_of(&reply[..o.reply_len])?.ino == r.attr.ino, "lookup found another inode");
    let again = op_errno(relay, m.mount_id, OpCode::CreateOpen, &[cr.as_bytes(), name], DataIn::None, None);
    ensure!(again == libc::EEXIST, "a second CreateOpen gave errno {again}, not EEXIST");
    let bad = CreateReq { name_len: 3, ..cr };
    let e = op_errno(relay, m.mount_id, OpCode::CreateOpen, &[bad.as_bytes(), b"a/b"], DataIn::None, None);
    ensure!(e == libc::EINVAL, "CreateOpen of \"a/b\" gave errno {e}, not EINVAL");
    let data = [5u8; 100];
    let w = IoReq { ino: r.attr.ino, fh: r.fh, len: 100, data_kind: DATA_WINDOW, ..IoReq::default() };
    let o = relay.op(m.mount_id, OpCode::Write, &[w.as_bytes()], DataIn::Window(&data), &mut reply, None, None)?;
    ensure!(o.value == 100, "write through the CreateOpen handle wrote {}", o.value);
    // ReleaseMany: whole ReleaseReqs only; the handle released (nullfs: no error either way).
    let rel = ReleaseReq { ino: r.attr.ino, fh: r.fh };
    let e = op_errno(relay, m.mount_id, OpCode::ReleaseMany, &[&rel.as_bytes()[..12]], DataIn::None, None);
    ensure!(e == libc::EINVAL, "ReleaseMany of 12 bytes gave errno {e}, not EINVAL");
    let e = op_errno(relay, m.mount_id, OpCode::ReleaseMany, &[rel.as_bytes()], DataIn::None, None);
    ensure!(e == 0, "ReleaseMany of the CreateOpen handle gave errno {e}");
    // ForgetMany: whole ForgetReqs only, at least one.
    let f = zus_api::ops::ForgetReq { ino: r.attr.ino, nlookup: 1 };
    let two = [f.as_bytes(), f.as_bytes()].concat();
    for bad in [&two[..15], &two[..17], &[][..]] {
        let e = op_errno(relay, m.mount_id, OpCode::ForgetMany, &[bad], DataIn::None, None);
        ensure!(e == libc::EINVAL, "ForgetMany of {} bytes gave errno {e}, not EINVAL", bad.len());
    }
    let e = op_errno(relay, m.mount_id, OpCode::ForgetMany, &[f.as_bytes()], DataIn::None, None);
    ensure!(e == 0, "ForgetMany of the created inode's reference gave errno {e}");
    println!("CREATEOPEN OK");
    Ok(())
}

fn readdir_plus(relay: &Relay) -> Result<()> {
    use zus_api::ops::{DirentPlus, ForgetReq};
    let m = relay.mount("nullfs", "", "")?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let mut made = Vec::new();
    for (name, mode, op) in
        [(&b"a"[..], 0o600, OpCode::Create), (b"bbbbbbbbbbbb", 0o644, OpCode::Create), (b"d", 0o755, OpCode::Mkdir)]
    {
        let cr = CreateReq { dir: m.root, mode, rdev: 0, flags: 0, name_len: u32::try_from(name.len())? };
        let o = relay.op(m.mount_id, op, &[cr.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
        made.push((name.to_vec(), attr_of(&reply[..o.reply_len])?));
    }
    let mut plain = vec![0u8; 1 << 20];
    let rd = ReaddirReq { dir: m.root, cookie: 0 };
    let o =
        relay.op(m.mount_id, OpCode::Readdir, &[rd.as_bytes()], DataIn::None, &mut reply, Some(&mut plain), None)?;
    let want = zus_plugin::parse_dirents(&plain[..o.data_len]).context("readdir records")?;
    // the records: a DirentPlus, the name, padding to 8
    let plus = |cookie: u64| -> Result<Vec<(DirentPlus, Vec<u8>)>> {
        let mut buf = vec![0u8; 1 << 20];
        let rd = ReaddirReq { dir: m.root, cookie };
        let o = relay.op(
            m.mount_id,
            OpCode::ReaddirPlus,
            &[rd.as_bytes()],
            DataIn::None,
            &mut vec![0u8; PAYLOAD_SIZE],
            Some(&mut buf),
            None,
        )?;
        ensure!(o.value == o.data_len as u64, "ReaddirPlus answered {} for {} bytes", o.value, o.data_len);
        let mut b = &buf[..o.data_len];
        let mut out = Vec::new();
        while !b.is_empty() {
            let d = DirentPlus::read_from(b).context("short DirentPlus")?;
            let n = d.dirent.name_len as usize;
            let name = b.get(size_of::<DirentPlus>()..size_of::<DirentPlus>() + n).context("short name")?.to_vec();
            b = b.get((size_of::<DirentPlus>() + n).next_multiple_of(8)..).unwrap_or(&[]);
            out.push((d, name));
        }
        Ok(out)
    };
    let got = plus(0)?;
    ensure!(got.len() == want.len(), "ReaddirPlus gave {} entries, Readdir {}", got.len(), want.len());
    let mut refs = Vec::new();
    for ((d, name), (ino, kind, wname, cookie)) in got.iter().zip(&want) {
        ensure!(
            d.dirent.ino == *ino && d.dirent.kind == *kind && name == wname && d.dirent.cookie == *cookie,
            "entry {name:?} differs from readdir's"
        );
        if name == b"." || name == b".." {
            ensure!(d.attr.ino == 0, "{name:?} came with attributes");
            continue;
        }
        let (_, a) = made.iter().find(|(n, _)| n == name).with_context(|| format!("unexpected entry {name:?}"))?;
        ensure!(
            d.attr.ino == a.ino && d.attr.mode == a.mode && d.attr.generation == a.generation,
            "{name:?}: attributes {:?}, not {a:?}",
            d.attr
        );
        refs.push(ForgetReq { ino: d.attr.ino, nlookup: 1 });
    }
    ensure!(refs.len() == made.len(), "{} entries with attributes, not {}", refs.len(), made.len());
    // each counted a lookup reference: given back
    let forgets: Vec<u8> = refs.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
    let e = op_errno(relay, m.mount_id, OpCode::ForgetMany, &[&forgets], DataIn::None, None);
    ensure!(e == 0, "ForgetMany of the ReaddirPlus references gave errno {e}");
    // resumed after the first entry: the rest
    let rest = plus(got[0].0.dirent.cookie)?;
    ensure!(
        rest.len() == got.len() - 1 && rest.iter().zip(&got[1..]).all(|(a, b)| a.1 == b.1),
        "resumed ReaddirPlus gave {} entries",
        rest.len()
    );
    let forgets: Vec<u8> = rest
        .iter()
        .filter(|(d, _)| d.attr.ino != 0)
        .flat_map(|(d, _)| ForgetReq { ino: d.attr.ino, nlookup: 1 }.as_bytes().to_vec())
        .collect();
    let e = op_errno(relay, m.mount_id, OpCode::ForgetMany, &[&forgets], DataIn::None, None);
    ensure!(e == 0, "ForgetMany after the resumed ReaddirPlus gave errno {e}");
    // a file is not a directory; a request short of a ReaddirReq is refused
    let file = ReaddirReq { dir: made[0].1.ino, cookie: 0 };
    let mut buf = vec![0u8; 4096];
    let e = op_errno(relay, m.mount_id, OpCode::ReaddirPlus, &[file.as_bytes()], DataIn::None, Some(&mut buf));
    ensure!(e == libc::ENOTDIR, "ReaddirPlus of a file gave errno {e}, not ENOTDIR");
    let e = op_errno(relay, m.mount_id, OpCode::ReaddirPlus, &[&rd.as_bytes()[..8]], DataIn::None, Some(&mut buf));
    ensure!(e == libc::EINVAL, "ReaddirPlus of 8 bytes gave errno {e}, not EINVAL");
    println!("READDIRPLUS OK");
    Ok(())
}

fn kcache(relay: &Relay, socket: &Path) -> Result<()> {
    use zus_api::ops::KernelCacheReq;
    let m = relay.mount("nullfs", "", "")?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let name = b"cached";
    let cr = CreateReq { dir: m.root, mode: 0o644, rdev: 0, flags: 0, name_len: 6 };
    let o = relay.op(m.mount_id, OpCode::Create, &[cr.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
    let ino = attr_of(&reply[..o.reply_len])?.ino;
    let mark = |r: &Relay, on: bool| {
        let k = KernelCacheReq { ino, on: u32::from(on), reserved: 0 };
        op_errno(r, m.mount_id, OpCode::KernelCache, &[k.as_bytes()], DataIn::None, None)
    };
    let data = [7u8; 512];
    let w = IoReq { ino, fh: 0, offset: 0, len: 512, flags: 0, data_kind: 0, niov: 0, reserved: 0 };
    let write = |r: &Relay| op_errno(r, m.mount_id, OpCode::Write, &[w.as_bytes()], DataIn::Window(&data), None);
    let getattr =
        |r: &Relay| op_errno(r, m.mount_id, OpCode::Getattr, &[InoReq { ino }.as_bytes()], DataIn::None, None);
    ensure!(mark(relay, true) == libc::EPERM, "a client that is not a bridge could mark");
    let bridge =
        Relay::connect_with(socket, "kcache-bridge", zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE)?;
    bridge.attach(m.mount_id)?;
    ensure!(write(relay) == 0, "write before any mark");
    let gen0 = relay.layout_gen();
    ensure!(mark(&bridge, true) == 0, "the bridge could not mark");
    ensure!(relay.layout_gen() > gen0, "a mark did not move the layout generation (dax caches would stay)");
    ensure!(write(relay) == Errno::EUSEKERNEL.0, "a write on a marked inode was not sent to the kernel");
    let st = relay.status()?;
    let shown = st.mounts.iter().find(|x| x.mount_id == m.mount_id).map(|x| x.kernel_cached);
    ensure!(shown == Some(1), "status shows {shown:?} kernel-cached inodes, not 1");
    ensure!(getattr(relay) == 0, "getattr on a marked inode was refused");
    ensure!(write(&bridge) == 0, "the bridge's own write was refused");
    ensure!(mark(relay, false) == libc::EPERM, "a client that is not a bridge could unmark");
    ensure!(mark(&bridge, false) == 0, "unmark");
    ensure!(mark(&bridge, false) == libc::EINVAL, "unmark without a mark");
    ensure!(write(relay) == 0, "write after the unmark");
    // A bridge that goes away takes its marks with it.
    ensure!(mark(&bridge, true) == 0 && write(relay) == Errno::EUSEKERNEL.0, "second mark");
    drop(bridge);
    let t0 = Instant::now();
    while write(relay) != 0 {
        ensure!(t0.elapsed() < Duration::from_secs(5), "the marks of a disconnected bridge stayed");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("KCACHE OK");
    Ok(())
}

fn tickets(relay: &Relay, socket: &Path, uid: u32) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use zus_api::ops::TicketReq;
    let m = relay.mount("nullfs", "", "")?;
    let bridge =
        Relay::connect_with(socket, "tickets-bridge", zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE)?;
    bridge.attach(m.mount_id)?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let mut create = |name: &[u8]| -> Result<u64> {
        let cr = CreateReq { dir: m.root, mode: 0o644, rdev: 0, flags: 0, name_len: u32::try_from(name.len())? };
        let o = relay.op(m.mount_id, OpCode::Create, &[cr.as_bytes(), name], DataIn::None, &mut reply, None, None)?;
        Ok(attr_of(&reply[..o.reply_len])?.ino)
    };
    let (ino, other) = (create(b"mine")?, create(b"other")?);
    let ticket_op = |r: &Relay, t: TicketReq| -> i32 {
        op_errno(r, m.mount_id, OpCode::Ticket, &[t.as_bytes()], DataIn::None, None)
    };
    ensure!(
        ticket_op(relay, TicketReq { ino, ticket: 0, uid, writable: 1 }) == libc::EPERM,
        "a client that is not a bridge got a ticket"
    );
    let mut issue = |writable: u32| -> Result<u64> {
        let t = TicketReq { ino, ticket: 0, uid, writable };
        let o = bridge.op(m.mount_id, OpCode::Ticket, &[t.as_bytes()], DataIn::None, &mut reply, None, None)?;
        ensure!(o.value != 0, "ticket 0");
        Ok(o.value)
    };
    let (ro, rw) = (issue(0)?, issue(1)?);
    let user = |revoked: bool| -> Result<String> {
        let mut c = std::process::Command::new(std::env::current_exe()?);
        c.arg("--socket").arg(socket).arg("ticket-user");
        for (k, v) in
            [("--mount-id", u64::from(m.mount_id)), ("--ino", ino), ("--other-ino", other), ("--ro", ro), ("--rw", rw)]
        {
            c.arg(k).arg(v.to_string());
        }
        if revoked {
            c.arg("--revoked");
        }
        let o = c.uid(uid).gid(uid).output()?;
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        ensure!(o.status.success() && out.contains("USER OK"), "as uid {uid}: {out}");
        Ok(out)
    };
    user(false)?;
    ensure!(ticket_op(&bridge, TicketReq { ino, ticket: rw, uid: 0, writable: 0 }) == 0, "revoke");
    ensure!(
        ticket_op(&bridge, TicketReq { ino, ticket: rw, uid: 0, writable: 0 }) == libc::EINVAL,
        "a revoked ticket was revoked again"
    );
    user(true)?;
    println!("TICKETS OK");
    Ok(())
}

fn ticket_user(relay: &Relay, mount_id: u32, [ino, other]: [u64; 2], [ro, rw]: [u64; 2], revoked: bool) -> Result<()> {
    let info = relay.attach(mount_id)?;
    ensure!(info.ticketed, "attached to a mount we do not own without tickets");
    let op = |code: OpCode, req: &[&[u8]], data: DataIn<'_>, ticket: u64| -> i32 {
        let mut reply = vec![0u8; PAYLOAD_SIZE];
        let mut back = vec![0u8; 4096];
        let out = if code == OpCode::Read { Some(&mut back[..]) } else { None };
        match relay.op_with_ticket(0, mount_id, code, req, data, &mut reply, out, None, ticket) {
            Ok(_) => 0,
            Err(zus_client::RelayError::Op(e)) => e.0,
            Err(e) => panic!("{code:?}: {e}"),
        }
    };
    let data = [5u8; 512];
    let io = |i: u64| IoReq { ino: i, fh: 0, offset: 0, len: 512, flags: 0, data_kind: 0, niov: 0, reserved: 0 };
    let write = |i: u64, t: u64| op(OpCode::Write, &[io(i).as_bytes()], DataIn::Window(&data), t);
    let read = |i: u64, t: u64| op(OpCode::Read, &[io(i).as_bytes()], DataIn::None, t);
    if revoked {
        ensure!(write(ino, rw) == libc::EACCES, "a revoked ticket still allowed a write");
        ensure!(read(ino, ro) == 0, "the other ticket went with the revoked one");
        println!("USER OK");
        return Ok(());
    }
    let look = NameReq { dir: ino, name_len: 1, reserved: 0 };
    ensure!(op(OpCode::Lookup, &[look.as_bytes(), b"x"], DataIn::None, rw) == libc::EPERM, "lookup with tickets only");
    ensure!(read(ino, 0) == libc::EACCES, "a read without a ticket");
    ensure!(read(ino, rw ^ 1) == libc::EACCES, "a read with a forged ticket");
    ensure!(read(ino, ro) == 0, "a read with the read ticket");
    ensure!(write(ino, ro) == libc::EACCES, "a write with the read ticket");
    ensure!(write(ino, rw) == 0, "a write with the write ticket");
    ensure!(read(other, rw) == libc::EACCES, "the ticket of one inode opened another");
    let getattr = InoReq { ino };
    ensure!(op(OpCode::Getattr, &[getattr.as_bytes()], DataIn::None, ro) == 0, "getattr with a ticket");
    // copy_file_range is the kernel bridge's alone: refused whatever the tickets.
    let copy = CopyFileRangeReq { ino_in: ino, ino_out: ino, off_out: 4096, len: 512, ..CopyFileRangeReq::default() };
    ensure!(
        op(OpCode::CopyFileRange, &[copy.as_bytes()], DataIn::None, rw) == libc::EPERM,
        "copy_file_range with tickets only"
    );
    println!("USER OK");
    Ok(())
}

fn poll(relay: &Relay, iters: usize, idle_ms: u64) -> Result<()> {
    let m = relay.mount("nullfs", "", "")?;
    let ncpu = relay.geometry().ncpu;
    let own_cpu = relay.lane_zt_cpu(0);
    let Some(other) = (1..ncpu).find(|&l| relay.lane_zt_cpu(l) != own_cpu) else {
        println!("SKIP one CPU");
        return Ok(());
    };
    zufs_tests::pin_current(own_cpu as usize)?;
    let mut reply = vec![0u8; PAYLOAD_SIZE];
    let getattr = InoReq { ino: m.root };
    // `iters` getattrs on `lane`, each followed by a look at its polling flag for 40 µs (within
    // the relay's back-to-back window of 100 µs, so the next op asks for a poll).
    let mut polled_after_ops = |lane: usize| -> Result<usize> {
        let mut seen = 0;
        for _ in 0..iters {
            relay.op_on_lane(
                lane,
                m.mount_id,
                OpCode::Getattr,
                &[getattr.as_bytes()],
                DataIn::None,
                &mut reply,
                None,
                None,
            )?;
            seen += usize::from(sees_polling(relay, lane, Duration::from_micros(40)));
        }
        Ok(seen)
    };
    let own_polled = polled_after_ops(0)?;
    let seen = polled_after_ops(other)?;
    std::thread::sleep(Duration::from_millis(idle_ms));
    println!("OWN polled={own_polled} of {iters}");
    println!("OTHER polled={seen} of {iters}");
    println!("AFTER polling={}", relay.lane_zt_polling(other));
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Cmd::Garbage { mount_id, iters, seed } = args.cmd {
        return garbage(&args.socket, mount_id, iters, seed);
    }
    if let Cmd::BadHello = args.cmd {
        return bad_hello(&args.socket);
    }
    let relay = Relay::connect(&args.socket, "zufs-testclient")?;
    match args.cmd {
        Cmd::Ops { threads, iters, mount_id } => ops(&relay, threads, iters, mount_id),
        Cmd::Spin { mount_id, threads } => spin(&relay, mount_id, threads),
        Cmd::Mount { fs, device, options } => {
            let m = relay.mount(&fs, &device, &options)?;
            println!("MOUNTED {} {}", m.mount_id, m.root);
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            Ok(())
        }
        Cmd::Panic => {
            let m = relay.mount("nullfs", "", "panic_on=boom")?;
            let mut reply = vec![0u8; PAYLOAD_SIZE];
            let l = name_req(m.root, b"boom");
            match relay.op(m.mount_id, OpCode::Lookup, &[l.as_bytes(), b"boom"], DataIn::None, &mut reply, None, None) {
                Err(zus_client::RelayError::Op(e)) if e == Errno::EIO => {}
                other => bail!("panicking lookup gave {other:?}, expected EIO"),
            }
            let l = name_req(m.root, b"fine");
            match relay.op(m.mount_id, OpCode::Lookup, &[l.as_bytes(), b"fine"], DataIn::None, &mut reply, None, None) {
                Err(zus_client::RelayError::Op(e)) if e == Errno::ENOENT => {}
                other => bail!("lookup after the panic gave {other:?}, expected ENOENT"),
            }
            println!("PANIC OK");
            Ok(())
        }
        Cmd::Status => {
            println!("{}", serde_json::to_string(&relay.status()?)?);
            Ok(())
        }
        Cmd::Probe { fs, streamed_write_sum } => {
            let m = relay.mount(&fs, "", "")?;
            let mut reply = vec![0u8; PAYLOAD_SIZE];
            let o = relay.op(
                m.mount_id,
                OpCode::Getattr,
                &[InoReq { ino: m.root }.as_bytes()],
                DataIn::None,
                &mut reply,
                None,
                None,
            )?;
            let a = attr_of(&reply[..o.reply_len])?;
            println!("ROOT ino={} mode={:o} nlink={}", a.ino, a.mode, a.nlink);
            if let Some(len) = streamed_write_sum {
                let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect();
                let want: u64 = data.iter().map(|&b| u64::from(b)).sum();
                let own = relay.lane_zt_cpu(0);
                let lane = (1..relay.geometry().ncpu).find(|&l| relay.lane_zt_cpu(l) != own).unwrap_or(0);
                zufs_tests::pin_current(own as usize)?;
                let req = IoReq {
                    ino: m.root,
                    fh: 0,
                    offset: 0,
                    len: len as u64,
                    flags: 0,
                    data_kind: DATA_WINDOW_STREAM,
                    niov: 0,
                    reserved: 0,
                };
                let mut src = VecSource { data: &data, at: 0, stall: Duration::from_millis(50) };
                let o = streamed(&relay, lane, m.mount_id, &req, Stream::Write(&mut src))?;
                println!("SUM got={} want={want}", o.value);
            }
            Ok(())
        }
        Cmd::Lanes => {
            let nodes = relay.lane_nodes();
            let cpus: Vec<u32> = (0..nodes.len()).map(|l| relay.lane_zt_cpu(l)).collect();
            println!("NODES {nodes:?}");
            println!("ZTCPUS {cpus:?}");
            Ok(())
        }
        Cmd::Poll { iters, idle_ms } => poll(&relay, iters, idle_ms),
        Cmd::Kcache => kcache(&relay, &args.socket),
        Cmd::CreateOpen => create_open(&relay),
        Cmd::ReaddirPlus => readdir_plus(&relay),
        Cmd::Stream => stream(&relay),
        Cmd::Tickets { uid } => tickets(&relay, &args.socket, uid),
        Cmd::TicketUser { mount_id, ino, other_ino, ro, rw, revoked } => {
            ticket_user(&relay, mount_id, [ino, other_ino], [ro, rw], revoked)
        }
        Cmd::Garbage { .. } | Cmd::BadHello => unreachable!(),
    }
}
