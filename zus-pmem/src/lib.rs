//! Persistence API for zufs plugins (design brief P-PM2).
//!
//! Every byte a plugin makes durable goes through one trait, [`Persist`]: offset-based stores,
//! cache-line flushes, fences and non-temporal copies. Two backends implement it:
//!
//! * [`MappedPmem`]: a real mapping (a DAX device or a `/dev/shm` file standing in for pmem). Flushes
//!   use CLWB, else CLFLUSHOPT, else CLFLUSH, chosen once from CPUID ([`flush::flush_kind`]).
//! * [`CrashSim`]: a crash-simulating backend that tracks, per 64-byte line, what was stored, flushed
//!   and fenced, and builds the images a power cut could leave (redb's `CrashBackend` pattern).
//!
//! Client data never has to be staged in a plugin buffer: [`DataSource`] / [`DataSink`] describe a
//! client's buffer (a shared-memory window, or another process's memory), and
//! [`Persist::write_from`] / [`Persist::read_into`] move bytes between it and pmem in one copy.
//!
//! Rules for the mapped backend: no Rust reference (`&[u8]`, `&mut [u8]`) is ever created into the
//! mapping; it is shared memory that other processes (DAX clients) may write. All access is through
//! raw-pointer copies. `unsafe` lives only in [`flush`], [`mapped`] and [`source`].
#![deny(unsafe_code)]

mod crashsim;
pub mod flush;
mod mapped;
mod persist;
mod source;

pub use crashsim::{CrashPoint, CrashSim, ImageBudget, SimStats};
pub use flush::{FlushKind, current_cpu, flush_kind};
pub use mapped::{MapMode, MappedPmem};
pub use persist::{CACHE_LINE, Persist, PmemError, Result};
pub use source::{DataSink, DataSource, STREAM_PIECE, SliceSink, SliceSource, sink_from_slice, source_to_vec};
