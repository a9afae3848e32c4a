//! `zus_api`: the contract between every zufs component, as plain data.
//!
//! Everything that crosses a process boundary (client <-> `zusd` channels and control socket), a
//! plugin boundary (`zusd` <-> filesystem `.so`) or the kernel boundary (`zusd` <-> the zufs
//! module) is defined here, with `#[repr(C)]` layouts whose sizes and field offsets are asserted
//! at compile time. The crate has no runtime: no I/O, no threads, no shared-memory access. The
//! C header `include/zus_api.h` is generated from it (see `docs/abi.md`).
//!
//! - [`chan`]: the shared channel memory (one lane per CPU, slots, futex words, data windows).
//! - [`ops`]: op codes and the request/reply structs carried in a slot.
//! - [`request`]: a request payload decoded once into a typed [`request::Request`], and the one
//!   table of per-op facts ([`ops::OpCode::facts`]).
//! - [`control`]: the control-socket message header.
//! - [`device`]: the generic on-pmem device header.
//! - [`plugin`]: the C vtable a plugin exports and what `zusd` hands it.
//! - [`kabi`]: the ioctl ABI of `/dev/zufs`, the zufs kernel module.

pub mod chan;
pub mod control;
pub mod device;
pub mod errno;
pub mod kabi;
pub mod ops;
pub mod plugin;
pub mod request;

pub use errno::Errno;

/// Magic that opens every zus_api structure exchanged between peers ("ZUSAPI01" little-endian).
pub const ZUS_MAGIC: u64 = u64::from_le_bytes(*b"ZUSAPI01");
/// The ABI version. Bump on any incompatible layout or protocol change.
pub const ZUS_ABI_VERSION: u32 = 1;

/// Feature bits a peer may advertise in the handshake. Unknown bits are ignored; a peer that
/// *requires* a bit the other lacks refuses the connection.
pub mod features {
    /// Data may be passed as client iovecs read/written by the server with process_vm_readv/writev.
    pub const REMOTE_IOV: u64 = 1 << 0;
    /// The server implements the MAP / MAP_DONE ops for direct (dax) data access.
    pub const DAX_MAP: u64 = 1 << 1;
    /// The server accepts [`crate::ops::DATA_WINDOW_STREAM`] reads and writes.
    pub const STREAMED_WINDOW: u64 = 1 << 3;
    /// All features this build understands.
    pub const ALL: u64 = REMOTE_IOV | DAX_MAP | STREAMED_WINDOW;
    /// A role, not a capability: the client is the kernel side of a mount (the FUSE bridge).
    /// Its data ops are what fills the kernel's page cache, so zusd never refuses them with
    /// `EUSEKERNEL`, and only such a client (and a privileged one) may send `KernelCache`.
    pub const KERNEL_BRIDGE: u64 = 1 << 2;
}

/// Checks a peer's magic and ABI version, returning a message fit for a user when they differ.
///
/// # Errors
/// A human-readable reason naming both versions.
pub fn check_peer(magic: u64, abi_version: u32, what: &str) -> Result<(), String> {
    if magic != ZUS_MAGIC {
        return Err(format!("{what}: bad magic {magic:#018x}, not a zus_api peer (expected {ZUS_MAGIC:#018x})"));
    }
    if abi_version != ZUS_ABI_VERSION {
        return Err(format!(
            "{what}: speaks zus_api ABI version {abi_version}, this build speaks version {ZUS_ABI_VERSION}; rebuild one side"
        ));
    }
    Ok(())
}
