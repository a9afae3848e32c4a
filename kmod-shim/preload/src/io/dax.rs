//! Dax mode: extents from MAP cached per file (a seqlock over the slot's extent array, valid
//! while this process's layout epoch and zusd's layout generation stay), data copied directly
//! to and from the mapped device (non-temporal stores and a fence for writes), and the dax
//! reader slot that keeps freed blocks from reuse while a copy may still run.

use core::sync::atomic::{AtomicU64, Ordering, fence};

use zus_api::ops::{EXTENT_HOLE, Extent, IoVec, MAX_IOV, MAX_MAP_EXTENTS, MapReply, MapReq, OpCode, Pod, io_flags};
use zus_client::Relay;

use super::channel::chan_io;
use super::cursor::Cursor;
use super::{COMMIT_NS, File, commit_mtime, ino, op};
use crate::state::{self, LAYOUT_EPOCH, Slot};
use crate::sys;

/// Where a file offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loc {
    /// At `dev` on the device, `run` bytes contiguous.
    Mapped { dev: u64, run: u64 },
    /// A hole of `run` bytes.
    Hole { run: u64 },
    /// At or beyond end of file.
    Eof,
}

pub(super) fn search(ext: &[Extent], size: u64, pos: u64) -> Option<Loc> {
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
pub(super) fn layout_epoch(f: File) -> Result<(u64, u64), i32> {
    Ok((LAYOUT_EPOCH.load(Ordering::Acquire), f.m.relay()?.layout_gen()))
}

/// Seqlock read of the cached extents.
#[inline]
pub(super) fn cache_lookup(s: &Slot, pos: u64, (epoch, layout_gen): (u64, u64)) -> Option<Loc> {
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
pub(super) fn map(
    f: File,
    off: u64,
    len: u64,
    write: bool,
    out: &mut [Extent; MAX_MAP_EXTENTS],
) -> Result<(usize, u64), i32> {
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
pub(super) fn fill_from(f: File, from: u64, buf: &mut [Extent; MAX_MAP_EXTENTS]) -> Result<(usize, u64), i32> {
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
pub(super) fn locate(f: File, pos: u64, force: bool) -> Result<Loc, i32> {
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

pub(super) fn dev_ptr(f: File, dev: u64, n: u64) -> Result<*mut u8, i32> {
    let d = f.m.dax.ok_or(libc::EIO)?;
    let end = dev.checked_add(n).ok_or(libc::EIO)?;
    if end > d.len as u64 {
        return Err(libc::EIO);
    }
    Ok((d.base + dev as usize) as *mut u8)
}

pub(super) fn dax_write(
    f: File,
    r: &DaxReader<'_>,
    iov: &[IoVec],
    total: u64,
    off: u64,
    flags: u32,
) -> Result<u64, i32> {
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

pub(super) fn dax_read(f: File, r: &DaxReader<'_>, iov: &[IoVec], total: u64, off: u64) -> Result<u64, i32> {
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

pub(super) fn dax_on(f: File) -> bool {
    f.m.dax.is_some() && f.m.dax_ok.load(Ordering::Relaxed)
}

/// This thread's dax reader slot, as zusd sees it: while the thread copies to or from the
/// device, the slot holds the layout generation current when it checked where to copy
/// (re-read after the slot was written, so that zusd, which raises the generation before it
/// looks at the slots, either sees the slot or we see the new generation); 0 otherwise. pmemfs
/// reuses freed blocks only once no slot holds their generation or an older one. The slot is
/// never published across an op to zusd: the ZT may be waiting for exactly this slot.
pub(super) struct DaxReader<'a> {
    slot: &'a AtomicU64,
    relay: &'a Relay,
}

impl<'a> DaxReader<'a> {
    /// This thread's slot (nothing published yet); `Ok(None)` when none is left for it.
    pub(super) fn new(f: File) -> Result<Option<Self>, i32> {
        let Some(i) = state::reader_index() else { return Ok(None) };
        let relay: &'a Relay = f.m.relay()?;
        Ok(Some(Self { slot: relay.dax_reader_slot(i), relay }))
    }

    /// Publishes the current layout generation; returns it.
    pub(super) fn publish(&self) -> u64 {
        loop {
            let g = self.relay.layout_gen();
            self.slot.store(g, Ordering::SeqCst);
            if self.relay.layout_gen() == g {
                return g;
            }
        }
    }

    /// Nothing copied through extents from here on.
    pub(super) fn clear(&self) {
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
pub(super) const DAX_USE_CHANNEL: i32 = 4001;

/// Where `pos` lives, with the reader slot published and the answer checked against the
/// generation published (a cache hit after the publication). Misses are refilled with MAP ops
/// while the slot is clear. `force` refills first (another process may have grown the file).
pub(super) fn locate_published(f: File, r: &DaxReader<'_>, pos: u64, force: bool) -> Result<Loc, i32> {
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
