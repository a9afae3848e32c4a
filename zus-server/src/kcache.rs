//! Inodes whose pages the kernel may cache (P-CO: one copy of the data that everybody sees).
//!
//! The FUSE bridge marks an inode before the kernel fills its page cache from it (a page-cache
//! read or write through the mount, or a fault of a shared mmap) and unmarks it once the last
//! such kernel file is released and the pages are invalidated. While an inode is marked, the
//! data ops of the preload library on it are refused with [`Errno::EUSEKERNEL`], so that the
//! library serves them through the kernel mount: the page cache and the fast path never hold two
//! views of the same bytes.
//!
//! The check is on every data op of a fast-path client, so the common case (nothing marked on
//! the mount) is one relaxed load; the set is looked at only while some inode is marked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use zus_api::Errno;

/// The marks of one mount: inode -> how many times marked (by every bridge of the mount).
#[derive(Debug, Default)]
pub struct KernelCacheMarks {
    marked: AtomicUsize,
    counts: Mutex<HashMap<u64, u32>>,
}

impl KernelCacheMarks {
    /// Marks (`on`) or unmarks `ino`. Unmarking an inode that is not marked is refused, so that a
    /// confused bridge cannot drive the count below what another bridge relies on.
    ///
    /// # Errors
    /// `EINVAL` for an unmark without a mark.
    pub fn set(&self, ino: u64, on: bool) -> Result<(), Errno> {
        let mut m = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if on {
            *m.entry(ino).or_insert(0) += 1;
        } else {
            let Some(n) = m.get_mut(&ino) else { return Err(Errno::EINVAL) };
            *n -= 1;
            if *n == 0 {
                m.remove(&ino);
            }
        }
        self.marked.store(m.len(), Ordering::SeqCst);
        Ok(())
    }

    /// Whether the kernel may cache `ino`'s pages.
    ///
    /// An op that starts after a mark was set sees it; the ZT that sets it waits for the ops
    /// already running on the other ZTs before it replies (`zt::wait_for_other_zts`).
    #[inline]
    pub fn contains(&self, ino: u64) -> bool {
        // SeqCst: the ZT's `busy` store comes before this load (see `zt::wait_for_other_zts`);
        // a plain load on x86.
        if self.marked.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&ino)
    }

    /// Number of inodes marked.
    pub fn len(&self) -> usize {
        self.marked.load(Ordering::Relaxed)
    }

    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every mark (the bridges re-mark what they still cache when they re-attach).
    pub fn clear(&self) {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.marked.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_marks_nest_and_unmark_without_mark_is_refused() {
        let m = KernelCacheMarks::default();
        assert!(!m.contains(5));
        m.set(5, true).unwrap();
        m.set(5, true).unwrap();
        assert!(m.contains(5) && !m.contains(6));
        m.set(5, false).unwrap();
        assert!(m.contains(5));
        m.set(5, false).unwrap();
        assert!(!m.contains(5) && m.is_empty());
        assert_eq!(m.set(5, false), Err(Errno::EINVAL));
        m.set(7, true).unwrap();
        m.clear();
        assert!(!m.contains(7));
    }
}
