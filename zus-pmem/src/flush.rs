//! CPU cache flushing, fences and non-temporal copies on raw memory.
//!
//! The flush instruction is chosen once from CPUID leaf 7 (EBX bit 24 = CLWB, bit 23 =
//! CLFLUSHOPT), falling back to CLFLUSH, which every x86_64 CPU has. Stable Rust has no CLWB
//! intrinsic and `_mm_clflushopt` is unstable, so both are emitted with inline `asm!`.
//! Ordering (PMDK#4649): CLWB/CLFLUSHOPT are weakly ordered and need a trailing SFENCE; CLFLUSH is
//! ordered with stores but we fence anyway, because [`fence`] also drains non-temporal stores.
//! On other architectures the flush is a no-op and the fence a SeqCst fence: the code compiles and
//! is correct for DRAM, not for real pmem.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The cache-line write-back instruction in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushKind {
    /// CLWB: writes the line back and may keep it cached (best).
    Clwb,
    /// CLFLUSHOPT: writes back and evicts, weakly ordered.
    ClflushOpt,
    /// CLFLUSH: writes back and evicts, strongly ordered (slowest).
    Clflush,
    /// No flush instruction (non-x86 fallback).
    None,
}

static KIND: OnceLock<FlushKind> = OnceLock::new();

/// The flush instruction chosen from CPUID (detected on first call, then cached).
pub fn flush_kind() -> FlushKind {
    *KIND.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> FlushKind {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 0 reports the highest supported leaf and we
    // only query leaf 7 when it is supported.
    let (max_leaf, ebx7) = unsafe {
        let max = __cpuid(0).eax;
        let ebx = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
        (max, ebx)
    };
    let _ = max_leaf;
    if ebx7 & (1 << 24) != 0 {
        FlushKind::Clwb
    } else if ebx7 & (1 << 23) != 0 {
        FlushKind::ClflushOpt
    } else {
        FlushKind::Clflush
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> FlushKind {
    FlushKind::None
}

/// Write back every cache line overlapping `[p, p+len)`.
///
/// # Safety
/// The range must lie within one live mapping (the instructions fault on unmapped addresses).
pub unsafe fn flush_raw(p: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    let start = (p as usize) & !63;
    let end = (p as usize).saturating_add(len);
    #[cfg(target_arch = "x86_64")]
    {
        let kind = flush_kind();
        let mut line = start;
        while line < end {
            match kind {
                // SAFETY: `line` is within (or is the line-aligned start of) the caller's mapped
                // range, per this function's contract; CLWB only writes back, never changes data.
                FlushKind::Clwb => unsafe {
                    core::arch::asm!("clwb [{}]", in(reg) line, options(nostack, preserves_flags));
                },
                // SAFETY: as above; CLFLUSHOPT writes back and evicts the line.
                FlushKind::ClflushOpt => unsafe {
                    core::arch::asm!("clflushopt [{}]", in(reg) line, options(nostack, preserves_flags));
                },
                // SAFETY: as above; CLFLUSH is baseline SSE2 on x86_64.
                FlushKind::Clflush => unsafe {
                    core::arch::x86_64::_mm_clflush(line as *const u8);
                },
                FlushKind::None => {}
            }
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (start, end);
    }
}

/// Store fence: orders (and, for pmem, makes durable) every earlier flush and non-temporal store.
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    // SAFETY: SFENCE has no memory-safety preconditions; SSE is baseline on x86_64.
    unsafe {
        core::arch::x86_64::_mm_sfence();
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Copy `len` bytes from `src` to `dst` with non-temporal stores where `dst` alignment allows,
/// and ordinary stores plus a flush for the unaligned head and tail. The bytes are durable after
/// the next [`fence`].
///
/// # Safety
/// `src` must be valid for `len` reads, `dst` valid for `len` writes, and the ranges must not
/// overlap.
pub unsafe fn nt_copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si64, _mm_stream_si128};
        let mut d = dst;
        let mut s = src;
        let mut n = len;
        // Head: ordinary copy up to 8-byte alignment, then flushed.
        let head = (d as usize).wrapping_neg() & 7;
        if head > 0 {
            let h = head.min(n);
            // SAFETY: h <= n bytes remain in both ranges; the ranges do not overlap (contract).
            unsafe {
                core::ptr::copy_nonoverlapping(s, d, h);
                flush_raw(d, h);
                d = d.add(h);
                s = s.add(h);
            }
            n -= h;
        }
        // 8-byte stream stores up to 16-byte alignment.
        while n >= 8 && (d as usize) & 15 != 0 {
            // SAFETY: d is 8-aligned and 8 bytes remain in both ranges.
            unsafe {
                let v = core::ptr::read_unaligned(s.cast::<i64>());
                _mm_stream_si64(d.cast::<i64>(), v);
                d = d.add(8);
                s = s.add(8);
            }
            n -= 8;
        }
        // Body: 16-byte stream stores, four per 64-byte line.
        while n >= 64 {
            // SAFETY: d is 16-aligned, 64 bytes remain in both ranges; loadu has no alignment need.
            unsafe {
                let a = _mm_loadu_si128(s.cast::<__m128i>());
                let b = _mm_loadu_si128(s.add(16).cast::<__m128i>());
                let c = _mm_loadu_si128(s.add(32).cast::<__m128i>());
                let e = _mm_loadu_si128(s.add(48).cast::<__m128i>());
                _mm_stream_si128(d.cast::<__m128i>(), a);
                _mm_stream_si128(d.add(16).cast::<__m128i>(), b);
                _mm_stream_si128(d.add(32).cast::<__m128i>(), c);
                _mm_stream_si128(d.add(48).cast::<__m128i>(), e);
                d = d.add(64);
                s = s.add(64);
            }
            n -= 64;
        }
        while n >= 16 {
            // SAFETY: d is 16-aligned and 16 bytes remain in both ranges.
            unsafe {
                let a = _mm_loadu_si128(s.cast::<__m128i>());
                _mm_stream_si128(d.cast::<__m128i>(), a);
                d = d.add(16);
                s = s.add(16);
            }
            n -= 16;
        }
        while n >= 8 {
            // SAFETY: d is 8-aligned and 8 bytes remain in both ranges.
            unsafe {
                let v = core::ptr::read_unaligned(s.cast::<i64>());
                _mm_stream_si64(d.cast::<i64>(), v);
                d = d.add(8);
                s = s.add(8);
            }
            n -= 8;
        }
        if n > 0 {
            // SAFETY: n bytes remain in both ranges.
            unsafe {
                core::ptr::copy_nonoverlapping(s, d, n);
                flush_raw(d, n);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded contract of this function.
    unsafe {
        core::ptr::copy_nonoverlapping(src, dst, len);
    }
}

/// Zero `len` bytes at `dst` with non-temporal stores (durable after the next [`fence`]).
///
/// # Safety
/// `dst` must be valid for `len` writes.
pub unsafe fn nt_zero(dst: *mut u8, len: usize) {
    const Z: [u8; 256] = [0; 256];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(Z.len());
        // SAFETY: `done + n <= len`, so the destination range is within the caller's range; Z is a
        // distinct static so the ranges cannot overlap.
        unsafe { nt_copy(dst.add(done), Z.as_ptr(), n) };
        done += n;
    }
}

/// The CPU the calling thread runs on (via `sched_getcpu`, a vDSO call), or 0 if unknown.
/// Plugins use it to pick a per-CPU shard.
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu takes no arguments and has no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).unwrap_or(0)
}
