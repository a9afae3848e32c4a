//! A crash-simulating [`Persist`] backend (redb's `CrashBackend` pattern, at cache-line grain).
//!
//! It keeps the *live* image (what the CPU sees) and the *durable* image (what survives a power
//! cut), and for every 64-byte line what happened since the last fence:
//!
//! * a plain store marks the line **dirty** (in cache; it may or may not reach pmem at a crash);
//! * a flush (or a non-temporal store) snapshots the line as **pending** (on its way; it may or may
//!   not be durable until the next fence);
//! * a fence makes every pending snapshot durable. Dirty lines stay dirty.
//!
//! A crash image is the durable image plus, for each dirty or pending line, any one of its possible
//! contents (the pending snapshot, the live value, or the old durable value). [`CrashPoint`]s are
//! captured just before each fence (when capture is on) or on demand, and expand into images: all
//! combinations when few, else random samples plus the two extremes. Intermediate values of a line
//! stored several times between flushes are not modelled (only the latest).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::persist::{Persist, PmemError, Result, check_buf, check_range};
use crate::source::{DataSink, DataSource};

const LINE: usize = 64;
type Line = [u8; LINE];

/// Counters of what the simulated program did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// store calls (including the cached part of copies)
    pub stores: u64,
    /// flush calls
    pub flushes: u64,
    /// fence calls
    pub fences: u64,
    /// crash points captured
    pub points: u64,
}

#[derive(Debug)]
struct SimState {
    live: Vec<u8>,
    durable: Arc<Vec<u8>>,
    dirty: BTreeSet<usize>,
    pending: BTreeMap<usize, Line>,
    capture: bool,
    points: Vec<CrashPoint>,
    stats: SimStats,
}

/// The crash-simulating backend.
#[derive(Debug)]
pub struct CrashSim {
    len: u64,
    st: Mutex<SimState>,
}

/// How many images to build from one crash point.
#[derive(Clone, Copy, Debug)]
pub struct ImageBudget {
    /// Enumerate every combination when there are at most this many.
    pub exhaustive_max: u64,
    /// Otherwise: this many random combinations (plus "nothing new" and "everything new").
    pub samples: usize,
}

impl Default for ImageBudget {
    fn default() -> Self {
        ImageBudget { exhaustive_max: 64, samples: 16 }
    }
}

/// The state at one instant: the durable image and the unsettled lines with their candidates.
#[derive(Clone, Debug)]
pub struct CrashPoint {
    durable: Arc<Vec<u8>>,
    /// (line index, possible contents other than the durable one)
    lines: Vec<(usize, Vec<Line>)>,
    /// Number of fences issued before this point.
    pub fence_no: u64,
}

fn line_of(buf: &[u8], line: usize) -> Line {
    let mut l = [0u8; LINE];
    let s = line * LINE;
    let e = (s + LINE).min(buf.len());
    l[..e - s].copy_from_slice(&buf[s..e]);
    l
}

fn lines_of(off: usize, len: usize) -> std::ops::Range<usize> {
    if len == 0 {
        return 0..0;
    }
    off / LINE..(off + len).div_ceil(LINE)
}

/// splitmix64: small deterministic generator for sampling.
fn next_rand(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CrashPoint {
    /// Number of unsettled lines at this point.
    pub fn unsettled_lines(&self) -> usize {
        self.lines.len()
    }

    /// Total number of distinct images this point allows (saturating).
    pub fn combinations(&self) -> u64 {
        self.lines.iter().fold(1u64, |acc, (_, c)| acc.saturating_mul(c.len() as u64 + 1))
    }

    /// The choice vectors to build (0 = durable, k = candidate k-1) under `budget`.
    fn choices(&self, budget: &ImageBudget, seed: u64) -> Vec<Vec<u8>> {
        let n = self.lines.len();
        let total = self.combinations();
        let mut out = Vec::new();
        if total <= budget.exhaustive_max {
            for mut k in 0..total {
                let mut c = vec![0u8; n];
                for (i, (_, cands)) in self.lines.iter().enumerate() {
                    let radix = cands.len() as u64 + 1;
                    c[i] = u8::try_from(k % radix).unwrap_or(0);
                    k /= radix;
                }
                out.push(c);
            }
            return out;
        }
        out.push(vec![0u8; n]);
        out.push(self.lines.iter().map(|(_, c)| u8::try_from(c.len()).unwrap_or(0)).collect());
        let mut s = seed ^ self.fence_no.wrapping_mul(0x2545_F491_4F6C_DD1D);
        for _ in 0..budget.samples {
            let c = self
                .lines
                .iter()
                .map(|(_, cands)| u8::try_from(next_rand(&mut s) % (cands.len() as u64 + 1)).unwrap_or(0))
                .collect();
            out.push(c);
        }
        out
    }

    fn build(&self, choice: &[u8]) -> Vec<u8> {
        let mut img = (*self.durable).clone();
        for ((line, cands), &k) in self.lines.iter().zip(choice) {
            if k == 0 {
                continue;
            }
            let s = line * LINE;
            let e = (s + LINE).min(img.len());
            img[s..e].copy_from_slice(&cands[usize::from(k) - 1][..e - s]);
        }
        img
    }

    /// Build the images of this point under `budget` (lazily, one device copy each).
    pub fn images(&self, budget: &ImageBudget, seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.choices(budget, seed).into_iter().map(move |c| self.build(&c))
    }

    /// The image where nothing unsettled survived.
    pub fn oldest_image(&self) -> Vec<u8> {
        (*self.durable).clone()
    }
}

impl CrashSim {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self::from_image(vec![0u8; len])
    }

    /// A device whose live and durable contents are `img` (e.g. a crash image being remounted).
    pub fn from_image(img: Vec<u8>) -> Self {
        CrashSim {
            len: img.len() as u64,
            st: Mutex::new(SimState {
                durable: Arc::new(img.clone()),
                live: img,
                dirty: BTreeSet::new(),
                pending: BTreeMap::new(),
                capture: false,
                points: Vec::new(),
                stats: SimStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic in another test thread must not hide this state: recover the guard.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turn capture of a crash point before every fence on or off.
    pub fn set_capture(&self, on: bool) {
        self.lock().capture = on;
    }

    /// Take the captured crash points.
    pub fn take_points(&self) -> Vec<CrashPoint> {
        std::mem::take(&mut self.lock().points)
    }

    /// A crash point for "power cut now".
    pub fn crash_point_now(&self) -> CrashPoint {
        Self::point(&self.lock())
    }

    /// The durable image (what a crash with no unsettled line surviving leaves).
    pub fn durable_image(&self) -> Vec<u8> {
        (*self.lock().durable).clone()
    }

    /// The live image (what a crash where every line survived leaves; also a clean unmount).
    pub fn live_image(&self) -> Vec<u8> {
        self.lock().live.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Lines stored or flushed but not yet fenced.
    pub fn unsettled_lines(&self) -> usize {
        let st = self.lock();
        st.dirty.union(&st.pending.keys().copied().collect()).count()
    }

    fn point(st: &SimState) -> CrashPoint {
        let mut idx: BTreeSet<usize> = st.dirty.clone();
        idx.extend(st.pending.keys().copied());
        let mut lines = Vec::with_capacity(idx.len());
        for l in idx {
            let old = line_of(&st.durable, l);
            let mut c: Vec<Line> = Vec::with_capacity(2);
            if let Some(p) = st.pending.get(&l)
                && *p != old
            {
                c.push(*p);
            }
            if st.dirty.contains(&l) {
                let live = line_of(&st.live, l);
                if live != old && !c.contains(&live) {
                    c.push(live);
                }
            }
            if !c.is_empty() {
                lines.push((l, c));
            }
        }
        CrashPoint { durable: Arc::clone(&st.durable), lines, fence_no: st.stats.fences }
    }

    fn store_locked(st: &mut SimState, o: usize, data: &[u8]) {
        st.live[o..o + data.len()].copy_from_slice(data);
        st.stats.stores += 1;
        for l in lines_of(o, data.len()) {
            st.dirty.insert(l);
        }
    }

    fn flush_locked(st: &mut SimState, o: usize, len: usize) {
        st.stats.flushes += 1;
        for l in lines_of(o, len) {
            if st.dirty.remove(&l) {
                let snap = line_of(&st.live, l);
                st.pending.insert(l, snap);
            }
        }
    }
}

impl Persist for CrashSim {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let (o, l) = check_range(off, buf.len() as u64, self.len)?;
        buf.copy_from_slice(&self.lock().live[o..o + l]);
        Ok(())
    }

    fn store(&self, off: u64, data: &[u8]) -> Result<()> {
        let (o, _) = check_range(off, data.len() as u64, self.len)?;
        Self::store_locked(&mut self.lock(), o, data);
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<()> {
        let (o, l) = check_range(off, len, self.len)?;
        Self::flush_locked(&mut self.lock(), o, l);
        Ok(())
    }

    fn fence(&self) {
        let mut st = self.lock();
        if st.capture && !st.pending.is_empty() {
            let p = Self::point(&st);
            st.points.push(p);
            st.stats.points += 1;
        }
        st.stats.fences += 1;
        let pending = std::mem::take(&mut st.pending);
        if pending.is_empty() {
            return;
        }
        let durable = Arc::make_mut(&mut st.durable);
        for (l, snap) in pending {
            let s = l * LINE;
            let e = (s + LINE).min(durable.len());
            durable[s..e].copy_from_slice(&snap[..e - s]);
        }
    }

    fn nt_store(&self, off: u64, data: &[u8]) -> Result<()> {
        let (o, l) = check_range(off, data.len() as u64, self.len)?;
        let mut st = self.lock();
        Self::store_locked(&mut st, o, data);
        Self::flush_locked(&mut st, o, l);
        Ok(())
    }

    fn nt_zero(&self, off: u64, len: u64) -> Result<()> {
        let (o, l) = check_range(off, len, self.len)?;
        let mut st = self.lock();
        st.live[o..o + l].fill(0);
        st.stats.stores += 1;
        for line in lines_of(o, l) {
            st.dirty.insert(line);
        }
        Self::flush_locked(&mut st, o, l);
        Ok(())
    }

    fn write_from(&self, off: u64, src: &dyn DataSource, src_off: usize, len: usize, _nt: bool) -> Result<()> {
        let (o, l) = check_range(off, len as u64, self.len)?;
        check_buf(src_off, len, src.len())?;
        let mut tmp = vec![0u8; l];
        copy_source(src, src_off, &mut tmp)?;
        let mut st = self.lock();
        Self::store_locked(&mut st, o, &tmp);
        Self::flush_locked(&mut st, o, l);
        Ok(())
    }

    fn read_into(&self, off: u64, dst: &dyn DataSink, dst_off: usize, len: usize) -> Result<()> {
        let (o, l) = check_range(off, len as u64, self.len)?;
        check_buf(dst_off, len, dst.len())?;
        let tmp = self.lock().live[o..o + l].to_vec();
        copy_sink(dst, dst_off, &tmp)
    }
}

fn copy_source(src: &dyn DataSource, src_off: usize, out: &mut [u8]) -> Result<()> {
    crate::source::source_to_vec(src, src_off, out).map_err(PmemError::Copy)
}

fn copy_sink(dst: &dyn DataSink, dst_off: usize, data: &[u8]) -> Result<()> {
    crate::source::sink_from_slice(dst, dst_off, data).map_err(PmemError::Copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_store_without_flush_is_not_durable() {
        let sim = CrashSim::new(4096);
        sim.store_u64(0, 7).unwrap();
        sim.fence();
        assert_eq!(&sim.durable_image()[..8], &[0; 8]);
        assert_eq!(sim.load_u64(0).unwrap(), 7);
    }

    #[test]
    fn test_flush_then_fence_is_durable() {
        let sim = CrashSim::new(4096);
        sim.store_u64(64, 9).unwrap();
        sim.flush(64, 8).unwrap();
        assert_eq!(sim.durable_image()[64], 0);
        sim.fence();
        assert_eq!(sim.durable_image()[64], 9);
    }

    #[test]
    fn test_store_after_flush_keeps_flushed_snapshot() {
        let sim = CrashSim::new(4096);
        sim.set_capture(true);
        sim.store_u64(0, 1).unwrap();
        sim.flush(0, 8).unwrap();
        sim.store_u64(0, 2).unwrap();
        sim.fence();
        assert_eq!(sim.durable_image()[0], 1);
        let pts = sim.take_points();
        assert_eq!(pts.len(), 1);
        // the line can be old (0), flushed (1) or live (2)
        let vals: BTreeSet<u8> = pts[0].images(&ImageBudget::default(), 1).map(|i| i[0]).collect();
        assert_eq!(vals, [0u8, 1, 2].into_iter().collect());
    }

    #[test]
    fn test_images_enumerate_all_subsets_when_small() {
        let sim = CrashSim::new(4096);
        for i in 0..3u64 {
            sim.store_u64(i * 64, i + 1).unwrap();
        }
        sim.flush(0, 192).unwrap();
        let p = sim.crash_point_now();
        assert_eq!(p.unsettled_lines(), 3);
        assert_eq!(p.combinations(), 8);
        let imgs: BTreeSet<Vec<u8>> = p.images(&ImageBudget::default(), 0).map(|i| vec![i[0], i[64], i[128]]).collect();
        assert_eq!(imgs.len(), 8);
    }

    #[test]
    fn test_images_sample_when_large() {
        let sim = CrashSim::new(1 << 16);
        sim.nt_store(0, &[0xAB; 64 * 40]).unwrap();
        let p = sim.crash_point_now();
        let b = ImageBudget { exhaustive_max: 16, samples: 10 };
        let imgs: Vec<Vec<u8>> = p.images(&b, 3).collect();
        assert_eq!(imgs.len(), 12);
        assert!(imgs[0].iter().all(|&b| b == 0));
        assert!(imgs[1][..64 * 40].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn test_capture_records_point_per_fence_with_pending() {
        let sim = CrashSim::new(4096);
        sim.set_capture(true);
        sim.persist(0, 0).unwrap();
        sim.nt_store(0, &[1; 8]).unwrap();
        sim.fence();
        sim.nt_store(64, &[1; 8]).unwrap();
        sim.fence();
        assert_eq!(sim.take_points().len(), 2);
        assert_eq!(sim.stats().fences, 3);
    }

    #[test]
    fn test_out_of_range_is_error_not_panic() {
        let sim = CrashSim::new(100);
        assert!(sim.store(99, &[0, 0]).is_err());
        assert!(sim.nt_zero(50, 51).is_err());
        assert!(sim.flush(101, 0).is_err());
    }

    #[test]
    fn test_partial_last_line() {
        let sim = CrashSim::new(100);
        sim.store(96, &[5; 4]).unwrap();
        sim.persist(96, 4).unwrap();
        assert_eq!(&sim.durable_image()[96..], &[5; 4]);
    }
}
