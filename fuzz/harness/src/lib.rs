//! The bodies of zufs's fuzz targets, one module per trust boundary (docs/fuzzing.md).
//!
//! Each module has a `run(&[u8])` that never panics on any input unless the code under test
//! has a bug (or an invariant the harness checks fails), and an `encode`-style helper that the
//! seed generator (`zufs-fuzz-seeds`) uses to turn real requests into inputs. The libFuzzer
//! binaries in `fuzz/fuzz_targets` call `run`; `tests/regressions.rs` replays every input kept
//! in `fuzz/regressions/<target>/` through the same `run`.
//!
//! - [`dispatch`]: zusd's request decoding and validation, with one client's channel memory
//!   (its lane's slots and windows) as input, served by `zus_server::zt::serve_client` over
//!   in-process nullfs mounts.
//! - [`adapter`]: the Rust plugin adapter (`zus_plugin::adapter::op::<PmemFs>`) with fuzzed op
//!   calls over a pmemfs mounted in memory.
//! - [`image`]: pmemfs mount, fsck and a few ops on a corrupt image.
//! - [`control`]: the control socket: message decoding and zusd's handling of a connection
//!   (hello, mount, attach, unmount, status) over a real socket.
//! - [`fuse`]: the FUSE bridge's request decoder (`/dev/fuse` messages and ring entries).
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::missing_panics_doc)]

pub mod adapter;
pub mod control;
pub mod dispatch;
pub mod fuse;
pub mod image;

/// The targets, by name (the `fuzz/regressions` and `fuzz/seeds` subdirectories).
pub const TARGETS: [&str; 5] = ["dispatch", "adapter", "pmemfs_image", "control", "fuse_decode"];

/// Runs target `name` on `data` (for the regression replay).
///
/// # Panics
/// On an unknown name, or where the target itself finds a bug.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "dispatch" => dispatch::run(data),
        "adapter" => adapter::run(data),
        "pmemfs_image" => image::run(data),
        "control" => control::run(data),
        "fuse_decode" => fuse::run(data),
        _ => panic!("unknown fuzz target {name}"),
    }
}

/// Reads little-endian fields off the front of a fuzz input; past its end every read gives
/// zeroes (or an empty slice), so any input is a valid one.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// A u8.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    /// A length-prefixed (u16) slice.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}

/// Appends `b` as a length-prefixed (u16) chunk: the inverse of [`Reader::chunk`].
pub fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).expect("chunk over 64 KiB");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(b);
}

/// A child process that does nothing but exist, killed when this process dies: the peer of a
/// fuzzed client's remote iovecs (zusd moves them with `process_vm_readv/writev` against the
/// client's pid), so that fuzzed addresses land in its memory, never in ours.
#[must_use]
pub fn sacrificial_peer() -> u32 {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("1000000").stdin(std::process::Stdio::null());
    // SAFETY: prctl in the forked child before exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting the fuzz harness's peer process (sleep)");
    let pid = child.id();
    std::mem::forget(child);
    pid
}
