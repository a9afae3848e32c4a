//! The plugin boundary (P-PL1..P-PL4).
//!
//! A plugin is a shared object that exports one C symbol, [`REGISTER_SYMBOL`]
//! (`zus_plugin_register`), returning a pointer to a static [`PluginVtable`]. The vtable opens
//! with magic, ABI version and struct size so `zusd` can refuse a plugin built for another ABI.
//! Everything that crosses is `#[repr(C)]`: a plugin may be written in C (against the generated
//! `include/zus_api.h`). A Rust plugin instead implements the safe `FileSystem` trait of the
//! `zus-plugin` crate and calls its `export_plugin!`; that crate's adapter turns the C calls into
//! trait calls, catches panics (P-PL2) and never lets a Rust type cross the boundary.
//!
//! Ownership: the server owns the device mapping, the request copy, the reply buffer and the data
//! window; it keeps them alive for the duration of the call (and the device until `unmount`
//! returns). The plugin owns the handle `mount` returns and frees it in `unmount`.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use crate::ops::OpHeader;

/// The symbol every plugin exports.
pub const REGISTER_SYMBOL: &[u8] = b"zus_plugin_register\0";
/// Magic at the start of a [`PluginVtable`] ("ZUSPLUG1").
pub const PLUGIN_MAGIC: u64 = u64::from_le_bytes(*b"ZUSPLUG1");

/// Log levels for [`HostApi::log`].
pub mod log_level {
    #![allow(missing_docs)]
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
}

/// What the server offers a plugin at registration.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostApi {
    /// [`crate::ZUS_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<HostApi>()`.
    pub struct_size: u32,
    /// Writes a log line (UTF-8, not NUL-terminated) at a [`log_level`].
    pub log: Option<unsafe extern "C" fn(level: u32, msg: *const u8, len: usize)>,
    /// The server's layout generation now (raised after every op that may free blocks).
    pub layout_gen: Option<unsafe extern "C" fn() -> u64>,
    /// The oldest layout generation a client's dax copy in progress checked its extents
    /// against (`u64::MAX` when none is in progress). Blocks freed while the generation was G
    /// may be reused once this is above G.
    pub oldest_dax_reader: Option<unsafe extern "C" fn() -> u64>,
}

/// A device mapping handed to a plugin.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceDesc {
    /// Start of the `MAP_SHARED` mapping (null for device-less mounts).
    pub base: *mut u8,
    /// Bytes mapped.
    pub len: u64,
    /// 1 when mapped with MAP_SYNC (CPU flushes alone make stores durable).
    pub map_sync: u32,
    /// 1 when mounted read-only.
    pub read_only: u32,
}

/// Data descriptor kinds.
pub mod data_kind {
    /// The op moves no bulk data.
    pub const NONE: u32 = 0;
    /// `window`/`window_len` is a shared-memory data window.
    pub const WINDOW: u32 = 1;
    /// `iov`/`niov` are buffers in process `pid`.
    pub const REMOTE: u32 = 2;
}

/// Where an op's bulk data lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DataDesc {
    /// [`data_kind`].
    pub kind: u32,
    /// Process that owns `iov` buffers.
    pub pid: i32,
    /// Window start.
    pub window: *mut u8,
    /// Window bytes available (write: bytes of data in it).
    pub window_len: u64,
    /// Remote buffers.
    pub iov: *const crate::ops::IoVec,
    /// Number of remote buffers.
    pub niov: u64,
    /// Streamed window (only for plugins with [`plugin_flags::STREAMED_WINDOW`], else null):
    /// the shared `u32` that counts the bytes of the window holding data. On a write the plugin
    /// must not read window bytes at or beyond its value (it waits, bounded, for more); on a
    /// read it raises it as it fills the window, so the client can copy out meanwhile. Accessed
    /// atomically only. `zus_plugin::WindowData` does both for Rust plugins.
    pub ready: *mut u32,
}

impl DataDesc {
    /// No bulk data: the descriptor of every op that moves none.
    pub const NONE: Self = Self {
        kind: data_kind::NONE,
        pid: 0,
        window: core::ptr::null_mut(),
        window_len: 0,
        iov: core::ptr::null(),
        niov: 0,
        ready: core::ptr::null_mut(),
    };
}

/// One op call from the server to a plugin.
#[repr(C)]
#[derive(Debug)]
pub struct OpCall {
    /// Private copy of the request header (already validated for opcode and lengths).
    pub hdr: OpHeader,
    /// Private copy of the request payload (`hdr.in_len` bytes).
    pub req: *const u8,
    /// Bytes at `req`.
    pub req_len: usize,
    /// Reply buffer.
    pub reply: *mut u8,
    /// Reply buffer capacity.
    pub reply_cap: usize,
    /// Out: reply bytes written.
    pub reply_len: usize,
    /// Out: data bytes placed in the window (read, readdir, getxattr ...).
    pub data_out: usize,
    /// Bulk data.
    pub data: DataDesc,
}

/// Plugin flags.
pub mod plugin_flags {
    /// The filesystem needs a device (pmemfs); device-less ones (nullfs) get none.
    pub const NEEDS_DEVICE: u32 = 1 << 0;
    /// The plugin honours `DataDesc::ready` (streamed windows). Without it zusd waits until a
    /// streamed write's data is all in the window before it calls the plugin, and a read's
    /// data reaches the client only with the reply. Every plugin built on
    /// `export_plugin!` has it.
    pub const STREAMED_WINDOW: u32 = 1 << 1;
}

/// Creates a filesystem on a device. Returns 0 or -errno; writes a message to `msg`.
pub type MkfsFn =
    unsafe extern "C" fn(dev: *const DeviceDesc, opts: *const u8, opts_len: usize, msg: *mut u8, msg_cap: usize) -> i64;
/// Checks a device. Returns bytes of report written to `msg` (>= 0: clean if 0 problems, see
/// report) or -errno; `*problems` receives the number of problems found.
pub type FsckFn = unsafe extern "C" fn(dev: *const DeviceDesc, problems: *mut u64, msg: *mut u8, msg_cap: usize) -> i64;
/// Mounts. On success stores the handle and root inode and returns 0; else -errno with `msg`.
pub type MountFn = unsafe extern "C" fn(
    dev: *const DeviceDesc,
    opts: *const u8,
    opts_len: usize,
    handle: *mut *mut c_void,
    root: *mut u64,
    msg: *mut u8,
    msg_cap: usize,
) -> i64;
/// Unmounts and frees the handle.
pub type UnmountFn = unsafe extern "C" fn(handle: *mut c_void) -> i64;
/// Serves one op; returns the op result (>= 0) or -errno.
pub type OpFn = unsafe extern "C" fn(handle: *mut c_void, call: *mut OpCall) -> i64;

/// The table a plugin exports.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVtable {
    /// [`PLUGIN_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`] the plugin was built for.
    pub abi_version: u32,
    /// `size_of::<PluginVtable>()` as the plugin knows it.
    pub struct_size: u32,
    /// Filesystem type name, NUL padded.
    pub name: [u8; 16],
    /// [`plugin_flags`].
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// mkfs (NULL: not supported).
    pub mkfs: Option<MkfsFn>,
    /// fsck (NULL: not supported).
    pub fsck: Option<FsckFn>,
    /// mount (required).
    pub mount: Option<MountFn>,
    /// unmount (required).
    pub unmount: Option<UnmountFn>,
    /// op dispatch (required). A NULL op table means every op fails with ENOSYS.
    pub op: Option<OpFn>,
}

// SAFETY: the vtable holds only integers and function pointers, which are freely shareable.
unsafe impl Sync for PluginVtable {}

const _: () = {
    assert!(size_of::<HostApi>() == 40);
    assert!(size_of::<DeviceDesc>() == 24);
    assert!(size_of::<DataDesc>() == 48);
    assert!(offset_of!(DataDesc, ready) == 40);
    assert!(size_of::<OpCall>() == 64 + 6 * 8 + 48);
    assert!(offset_of!(OpCall, data) == 112);
    assert!(size_of::<PluginVtable>() == 40 + 5 * 8);
    assert!(offset_of!(PluginVtable, abi_version) == 8);
    assert!(offset_of!(PluginVtable, struct_size) == 12);
    assert!(offset_of!(PluginVtable, name) == 16);
    assert!(offset_of!(PluginVtable, mkfs) == 40);
    assert!(offset_of!(PluginVtable, op) == 72);
};
