//! The host functions plugins call ([`HostApi`]), answering for every server in the process.
//!
//! A plugin library is loaded once per process and keeps the one `HostApi` it was handed, and
//! its functions take no context: they cannot tell which server (or mount) asks. So they answer
//! for all live servers together, which keeps the block-reuse guard sound with several servers in
//! one process (tests, an embedding program):
//! - the layout generation is one process-wide clock, [`LAYOUT_GEN`], that every server raises and
//!   publishes to its own clients; a server's clients only ever see values it took from it, so a
//!   block freed at generation G is safe once no dax copy runs under G or older, on any server;
//! - the oldest dax reader is the oldest over every live server ([`register`]).
//!
//! The cost of sharing: another server's dax copy in progress can hold back block reuse for a
//! while (never past the plugin's own bound), as one server's own copies do.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

use zus_plugin::{HostApi, log_level};

/// What the host functions ask of a server.
pub trait DaxReaders: Send + Sync {
    /// The oldest layout generation any of the server's clients' dax copies in progress
    /// checked its extents against (`u64::MAX` when none runs).
    fn oldest_dax_reader(&self) -> u64;
}

/// The process's layout generation (see the module docs); starts at 1.
pub static LAYOUT_GEN: AtomicU64 = AtomicU64::new(1);

/// Live servers, for [`HostApi::oldest_dax_reader`].
static SERVERS: Mutex<Vec<Weak<dyn DaxReaders>>> = Mutex::new(Vec::new());

fn servers() -> MutexGuard<'static, Vec<Weak<dyn DaxReaders>>> {
    SERVERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds a server to those the host functions answer for (until it is dropped).
pub fn register(server: Weak<dyn DaxReaders>) {
    let mut s = servers();
    s.retain(|w| w.strong_count() > 0);
    s.push(server);
}

/// The host API handed to every plugin at registration (static: valid for the process).
#[must_use]
pub fn api() -> &'static HostApi {
    &HOST_API
}

static HOST_API: HostApi = HostApi {
    magic: zus_api::ZUS_MAGIC,
    abi_version: zus_api::ZUS_ABI_VERSION,
    #[allow(clippy::cast_possible_truncation)] // 40 bytes, asserted in zus-api
    struct_size: size_of::<HostApi>() as u32,
    log: Some(host_log),
    layout_gen: Some(host_layout_gen),
    oldest_dax_reader: Some(host_oldest_dax_reader),
};

unsafe extern "C" fn host_log(level: u32, msg: *const u8, len: usize) {
    if msg.is_null() {
        return;
    }
    // SAFETY: the plugin passes a buffer valid for len bytes for the duration of the call.
    let bytes = unsafe { core::slice::from_raw_parts(msg, len) };
    let text = String::from_utf8_lossy(bytes);
    match level {
        log_level::ERROR => tracing::error!(target: "plugin", "{text}"),
        log_level::WARN => tracing::warn!(target: "plugin", "{text}"),
        log_level::INFO => tracing::info!(target: "plugin", "{text}"),
        _ => tracing::debug!(target: "plugin", "{text}"),
    }
}

unsafe extern "C" fn host_layout_gen() -> u64 {
    LAYOUT_GEN.load(Ordering::SeqCst)
}

unsafe extern "C" fn host_oldest_dax_reader() -> u64 {
    // Collect first: a server dropped here (our upgrade the last reference) must not drop under
    // the lock.
    let live: Vec<_> = servers().iter().filter_map(Weak::upgrade).collect();
    live.iter().map(|s| s.oldest_dax_reader()).min().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    fn host_gen() -> u64 {
        // SAFETY: a host function without arguments, callable from any thread.
        unsafe { api().layout_gen.unwrap()() }
    }

    fn host_oldest() -> u64 {
        // SAFETY: as above.
        unsafe { api().oldest_dax_reader.unwrap()() }
    }

    #[test]
    fn test_host_functions_answer_for_every_server_in_the_process() {
        let first = testutil::server("host-a");
        let second = testutil::server("host-b");
        let c = testutil::client(&second);
        // A dax copy in progress on the second server, under its current layout generation.
        let g = second.layout_gen.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(host_gen() >= g, "the second server's layout generation is not seen");
        let reader = c.region.atomic_u64(c.geometry.dax_reader_offset(3));
        reader.store(g, Ordering::SeqCst);
        assert!(host_oldest() <= g, "the second server's dax reader is not seen: blocks it may read could be reused");
        reader.store(0, Ordering::SeqCst);
        assert!(host_oldest() > g);
        // A dropped server (with its mounts) no longer counts.
        reader.store(g, Ordering::SeqCst);
        assert!(host_oldest() <= g);
        drop(second);
        assert!(host_oldest() > g, "a dropped server's readers still count");
        drop((first, c));
    }
}
