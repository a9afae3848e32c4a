//! A cursor over the caller's iovecs: the pieces a copy walks through, one buffer at a time.

use zus_api::ops::{IoVec, MAX_IOV};

/// A cursor over the caller's buffers.
pub(super) struct Cursor<'a> {
    iov: &'a [IoVec],
    i: usize,
    at: u64,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(iov: &'a [IoVec]) -> Self {
        Self { iov, i: 0, at: 0 }
    }

    /// The next piece of at most `max` (> 0) bytes, within one buffer: (pointer, length);
    /// `None` once every buffer was visited.
    pub(super) fn next(&mut self, max: u64) -> Option<(*mut u8, usize)> {
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
    pub(super) fn each(&mut self, mut n: u64, mut f: impl FnMut(*mut u8, usize, u64)) {
        let mut done = 0u64;
        while n > 0 {
            let Some((p, len)) = self.next(n) else { return };
            f(p, len, done);
            done += len as u64;
            n -= len as u64;
        }
    }

    /// The rest as iovecs in `out`; returns how many.
    pub(super) fn rest(&self, out: &mut [IoVec; MAX_IOV]) -> usize {
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
