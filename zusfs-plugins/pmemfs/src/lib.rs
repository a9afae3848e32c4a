//! pmemfs: a persistent, crash-consistent filesystem on (emulated) pmem.
//!
//! The core is ordinary safe Rust over any [`zus_pmem::Persist`] backend: a real mapping in
//! production ([`zus_pmem::MappedPmem`]), the crash simulator in tests ([`zus_pmem::CrashSim`]).
//! See `docs/pmemfs.md` at the repository root for the layout and the crash-consistency argument.
#![deny(unsafe_code)]
// pmemfs is 64-bit only (pmem devices are larger than 4 GiB address spaces anyway): every
// u64 -> usize cast below is of a value already validated against the device or block size.
#![allow(clippy::cast_possible_truncation)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("pmemfs needs a 64-bit target");

mod alloc;
mod check;
mod error;
mod fs;
mod inode;
mod journal;
pub mod layout;
pub mod plugin;

pub use alloc::{REUSE_GRACE, REUSE_MAX_WAIT, ReaderProbe};

/// Locks `m`, also after a panic poisoned it: pmemfs's own shutdown flag (`Fs::live`), not the
/// mutex's, decides whether the filesystem may still change.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes a lock held a µs or so at a time by every metadata op (the commit lock, a directory's
/// inode lock): `try_` until it succeeds, spinning, then yielding the CPU, and `block` (sleep)
/// only after ~2000 tries; a poisoned lock is taken through `poisoned`. A sleeper is woken from
/// the holder's CPU, which costs tens of µs (60-85 on the 2-vCPU VM); std's locks, once they have
/// a sleeper, make every later waiter sleep too. The kernel's mutexes and rwsems spin on a running
/// owner for the same reason.
fn acquire_hot<G>(
    mut try_: impl FnMut() -> std::sync::TryLockResult<G>,
    block: impl FnOnce() -> std::sync::LockResult<G>,
    poisoned: impl Fn(std::sync::PoisonError<G>) -> G,
) -> G {
    for i in 0..2000u32 {
        match try_() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(e)) => return poisoned(e),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        if i < 200 {
            for _ in 0..8 {
                std::hint::spin_loop();
            }
        } else {
            // The holder may be waiting for this CPU.
            std::thread::yield_now();
        }
    }
    block().unwrap_or_else(poisoned)
}

/// [`lock`] through [`acquire_hot`].
fn lock_hot<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    acquire_hot(|| m.try_lock(), || m.lock(), std::sync::PoisonError::into_inner)
}

pub use check::FsckReport;
pub use error::{FsError, Result};
pub use fs::{
    AtimePolicy, Attr, DirEntry, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, Fs, MapExtent, MkfsOptions,
    RENAME_EXCHANGE, RENAME_NOREPLACE, SetAttr, StatFs, TimeSpec, XATTR_CREATE, XATTR_REPLACE, format, fsck, now_ns,
};

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::lock_hot;

    /// A holder that keeps the lock past every try (here 50 ms): the waiter ends up asleep in
    /// the blocking lock, and gets the lock, with the holder's change, once it is let go.
    #[test]
    fn lock_hot_waits_out_a_long_holder() {
        let m = Arc::new(Mutex::new(0u32));
        let g = m.lock().unwrap();
        let m2 = Arc::clone(&m);
        let t0 = Instant::now();
        let waiter = std::thread::spawn(move || {
            let v = *lock_hot(&m2);
            (v, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut g = g;
        *g = 7;
        drop(g);
        let (v, waited) = waiter.join().unwrap();
        assert_eq!(v, 7);
        assert!(waited >= Duration::from_millis(50));
    }

    /// A lock poisoned by a panicking holder is still taken (pmemfs's own flag decides).
    #[test]
    fn lock_hot_takes_a_poisoned_lock() {
        let m = Arc::new(Mutex::new(1u32));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock_hot(&m), 1);
    }

    /// Two threads adding under it lose no update.
    #[test]
    fn lock_hot_excludes() {
        let m = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        *lock_hot(&m) += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*lock_hot(&m), 200_000);
    }
}
