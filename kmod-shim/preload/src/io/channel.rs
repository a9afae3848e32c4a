//! Channel-mode data: one op per call, its data bounced through the slot window (one short
//! buffer, [`window_io`]), streamed through it while the ZT works (anything else up to a window,
//! [`stream_io`]), or moved once by zusd with process_vm_readv/writev (longer calls).

use core::sync::atomic::Ordering;

use zus_api::ops::{DATA_REMOTE_IOV, DATA_WINDOW, DATA_WINDOW_STREAM, IoReply, IoReq, IoVec, OpCode, Pod, io_flags};
use zus_client::{DataIn, Relay, Stream};

use super::cursor::Cursor;
use super::lane::{pick_lane, pick_long_lane, timed_long_op};
use super::{File, ino, op_errno, op_on_lane};
use crate::mount::DataPolicy;
use crate::state;

pub(super) fn iov_bytes(v: &[IoVec]) -> &[u8] {
    // SAFETY: IoVec is Pod (repr(C), two u64, no padding); the slice borrows `v`.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

/// The request of a read or write of `len` bytes at `off` on this file.
pub(super) fn io_req(f: File, off: u64, len: u64, flags: u32, data_kind: u32, niov: u32) -> IoReq {
    IoReq { ino: ino(f), fh: 0, offset: off, len, flags, data_kind, niov, reserved: 0 }
}

/// One channel read or write of the buffers `iov` at `off`: (bytes, reply). A write that
/// reached the end of the file (it may have moved the size; an append always does) is noted for
/// the call (`note_size_moved`).
pub(super) fn chan_io(
    f: File,
    write: bool,
    iov: &[IoVec],
    total: u64,
    off: u64,
    flags: u32,
) -> Result<(u64, IoReply), i32> {
    let r = chan_io_once(f, write, iov, total, off, flags);
    if write
        && let Ok((n, rep)) = &r
        && *n > 0
        && (flags & io_flags::APPEND != 0 || off.saturating_add(*n) >= rep.size)
    {
        super::note_size_moved();
    }
    r
}

fn chan_io_once(f: File, write: bool, iov: &[IoVec], total: u64, off: u64, flags: u32) -> Result<(u64, IoReply), i32> {
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
pub(super) struct IovPieces<'a> {
    cur: Cursor<'a>,
    total: usize,
}

impl<'a> IovPieces<'a> {
    pub(super) fn new(iov: &'a [IoVec], total: u64) -> Self {
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
pub(super) fn stream_io(
    f: File,
    r: &Relay,
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
pub(super) const AUTO_WINDOW_MAX_BYTES: u64 = 32 * 1024;

/// The named two-copy fallback (`ZUFS_DATA=window`, and short buffers under `auto`): data
/// bounces through the slot's window, one buffer (piece) per op. Counted in `window_io`.
pub(super) fn window_io(
    f: File,
    r: &Relay,
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
