//! Inodes whose pages the kernel may cache (P-CO: one copy of the data that everybody sees).
//!
//! The FUSE bridge marks an inode before the kernel fills its page cache from it (a page-cache
//! read or write through the mount, or a fault of a shared mmap) and unmarks it once the last
//! such kernel file is released and the pages are invalidated. While an inode is marked, the
//! data ops of the preload library on it are refused with [`Errno::EUSEKERNEL`], so that the
//! library serves them through the kernel mount: the page cache and the fast path never hold two
//! views of the same bytes.
//!
//! The check is on every data op of a fast-path client, so it is one load of a word of a
//! 4096-bit filter (a hash of the inode); only when that bit is set is the set looked at.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use zus_api::Errno;

/// The marks of one mount: per inode, how many times marked, by which client (a bridge that
/// goes away takes its marks with it).
#[derive(Debug)]
pub struct KernelCacheMarks {
    /// Bit `filter_bit(ino)` is set while some marked inode hashes there (rebuilt from
    /// `inner` on every change).
    filter: [AtomicU64; FILTER_WORDS],
    inner: Mutex<Marks>,
}

const FILTER_WORDS: usize = 64;

impl Default for KernelCacheMarks {
    fn default() -> Self {
        Self { filter: [const { AtomicU64::new(0) }; FILTER_WORDS], inner: Mutex::default() }
    }
}

/// The filter word and bit of `ino`.
fn filter_bit(ino: u64) -> (usize, u64) {
    let h = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52; // 12 bits
    ((h >> 6) as usize % FILTER_WORDS, 1 << (h & 63))
}

#[derive(Debug, Default)]
struct Marks {
    /// inode -> marks from every client.
    counts: HashMap<u64, u32>,
    /// client id -> (inode -> its marks).
    by_client: HashMap<u32, HashMap<u64, u32>>,
}

impl Marks {
    fn unmark(&mut self, ino: u64, n: u32) {
        if let Some(c) = self.counts.get_mut(&ino) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.counts.remove(&ino);
            }
        }
    }
}

impl KernelCacheMarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks (`on`) or unmarks `ino` for `client`. A client may only take back its own marks.
    ///
    /// # Errors
    /// `EINVAL` for an unmark without a mark of this client.
    pub fn set(&self, client: u32, ino: u64, on: bool) -> Result<(), Errno> {
        let mut m = self.lock();
        let mine = m.by_client.entry(client).or_default();
        if on {
            *mine.entry(ino).or_insert(0) += 1;
            *m.counts.entry(ino).or_insert(0) += 1;
        } else {
            let Some(n) = mine.get_mut(&ino) else { return Err(Errno::EINVAL) };
            *n -= 1;
            if *n == 0 {
                mine.remove(&ino);
            }
            m.unmark(ino, 1);
        }
        self.rebuild_filter(&m);
        Ok(())
    }

    /// Sets exactly the bits of the marked inodes (SeqCst: see [`Self::contains`]).
    fn rebuild_filter(&self, m: &Marks) {
        let mut words = [0u64; FILTER_WORDS];
        for &ino in m.counts.keys() {
            let (w, b) = filter_bit(ino);
            words[w] |= b;
        }
        for (f, w) in self.filter.iter().zip(words) {
            f.store(w, Ordering::SeqCst);
        }
    }

    /// Drops every mark `client` holds (it disconnected: its kernel mount is gone or will mark
    /// again when it re-attaches).
    pub fn drop_client(&self, client: u32) {
        let mut m = self.lock();
        if let Some(mine) = m.by_client.remove(&client) {
            for (ino, n) in mine {
                m.unmark(ino, n);
            }
        }
        self.rebuild_filter(&m);
    }

    /// Whether the kernel may cache `ino`'s pages.
    ///
    /// An op that starts after a mark was set sees it; the ZT (or a handed transport's thread
    /// in zusd) that sets it waits for the ops already running on the other ZTs before it
    /// replies (`zt::before_reply`).
    #[inline]
    pub fn contains(&self, ino: u64) -> bool {
        // SeqCst: the ZT's `busy` store comes before this load (see `zt::wait_for_other_zts`);
        // a plain load on x86.
        let (w, b) = filter_bit(ino);
        if self.filter[w].load(Ordering::SeqCst) & b == 0 {
            return false;
        }
        self.lock().counts.contains_key(&ino)
    }

    /// Number of inodes marked.
    pub fn len(&self) -> usize {
        self.lock().counts.len()
    }

    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_marks_nest_per_client_and_leave_with_their_client() {
        let m = KernelCacheMarks::default();
        assert!(!m.contains(5));
        m.set(1, 5, true).unwrap();
        m.set(2, 5, true).unwrap();
        assert!(m.contains(5) && !m.contains(6));
        assert_eq!(m.set(3, 5, false), Err(Errno::EINVAL), "not client 3's mark");
        m.set(1, 5, false).unwrap();
        assert!(m.contains(5), "client 2 still marks it");
        m.set(2, 5, false).unwrap();
        assert!(!m.contains(5) && m.is_empty());
        assert_eq!(m.set(1, 5, false), Err(Errno::EINVAL));
        m.set(1, 7, true).unwrap();
        m.set(1, 7, true).unwrap();
        m.set(2, 8, true).unwrap();
        m.drop_client(1);
        assert!(!m.contains(7) && m.contains(8) && m.len() == 1);
    }

    #[test]
    fn test_filter_never_hides_a_mark_and_clears_with_the_last() {
        let m = KernelCacheMarks::default();
        for ino in 0..10_000u64 {
            m.set(1, ino, true).unwrap();
        }
        assert!((0..10_000u64).all(|i| m.contains(i)));
        for ino in 0..10_000u64 {
            m.set(1, ino, false).unwrap();
        }
        assert!(m.filter.iter().all(|w| w.load(Ordering::Relaxed) == 0));
        assert!(!m.contains(5));
    }
}
