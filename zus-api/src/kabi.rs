//! The ioctl ABI of `/dev/zufs`, the zufs kernel module (`kmod-shim/module`).
//!
//! The same structs and numbers as `kmod-shim/module/zufs_kabi.h`; both sides assert every size
//! and offset (here at compile time).
//!
//! A server opens `/dev/zufs` (`O_CLOEXEC`), sends [`ZUFS_IOC_HELLO`] and maps
//! [`KHello::total_size`] bytes `MAP_SHARED` at offset 0: a channel set with the layout of
//! [`crate::chan::Geometry`] (`ncpu` = the kernel's `nr_cpu_ids`, lane `i` for CPU `i`), whose
//! [`crate::chan::ChannelSetHeader`] the module has filled in. Then one thread per CPU, pinned to
//! that CPU alone, sends [`ZUFS_IOC_ZT_INIT`] and loops: it serves every `SUBMITTED` slot of its
//! lane exactly as for a user client (`SUBMITTED -> SERVING -> DONE`, reply header and payload),
//! then calls [`ZUFS_IOC_ZT_WAIT`], which hands the `DONE` replies to the waiting kernel callers
//! and sleeps until a slot of the lane is `SUBMITTED`, a [`ZUFS_IOC_KICK_ALL`] or a
//! [`ZUFS_IOC_BREAK`]. The kernel never sets `client_waiting`, so the server issues no futex wake
//! for its slots. Closing the server's last fd (and mapping) ends the session: every kernel op
//! waiting or sent later fails with `EIO`; the module can be unloaded after.
//!
//! The kernel owns slot allocation: it decides which caller owns a slot from its own memory and
//! treats every reply field as untrusted (`result` must be a Linux errno or within the op's
//! range, `out_len`/`data_len` within the caller's buffers, `seq` the one it sent), answering
//! `EIO` otherwise.

use core::mem::{offset_of, size_of};

/// The ioctl type byte.
pub const ZUFS_IOC_TYPE: u8 = b'Z';
/// Slots per lane when [`KHello::slots_per_cpu`] is 0.
pub const ZUFS_DEFAULT_SLOTS: u32 = 4;
/// Window bytes when [`KHello::window_size`] is 0.
pub const ZUFS_DEFAULT_WINDOW: u32 = 256 * 1024;
/// Largest window the module accepts.
pub const ZUFS_MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest kernel channel set the module allocates.
pub const ZUFS_MAX_SET_SIZE: u64 = 1 << 30;

/// `ZUFS_IOC_HELLO`: create this fd's session and its kernel channel set (one session at a time;
/// `EBUSY` while another lives). Needs `CAP_SYS_ADMIN`. Errors: `EINVAL` (magic, geometry,
/// flags), `EPROTO` (ABI version), `E2BIG` (set larger than [`ZUFS_MAX_SET_SIZE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KHello {
    /// In: [`crate::ZUS_MAGIC`].
    pub magic: u64,
    /// In: [`crate::ZUS_ABI_VERSION`].
    pub abi_version: u32,
    /// In: 1..=64, 0 = [`ZUFS_DEFAULT_SLOTS`]; out: the value used.
    pub slots_per_cpu: u32,
    /// In: a multiple of 4096 up to [`ZUFS_MAX_WINDOW`], 0 = [`ZUFS_DEFAULT_WINDOW`]; out: used.
    pub window_size: u32,
    /// Out: lanes (the kernel's `nr_cpu_ids`).
    pub ncpu: u32,
    /// In: written to the channel set header's `features`.
    pub features: u64,
    /// Out: bytes to map at offset 0.
    pub total_size: u64,
    /// Out: bytes per lane.
    pub lane_size: u32,
    /// Out: NUMA node ids (`nr_node_ids`); the header's `cpu_node` has each lane's node.
    pub nnodes: u32,
    /// In: 0.
    pub flags: u32,
    /// In: 0.
    pub reserved: [u32; 5],
}

/// `ZUFS_IOC_ZT_INIT`: the calling thread, a thread of the process that sent HELLO and allowed
/// to run on `cpu` only, becomes lane `cpu`'s ZT. `EINVAL` when not pinned so, `EBUSY` when the
/// lane has a live ZT, `ESHUTDOWN` after BREAK.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KZtInit {
    /// The CPU (lane).
    pub cpu: u32,
    /// 0.
    pub flags: u32,
    /// 0.
    pub reserved: u64,
}

/// [`KZtWait::flags`]: a `KICK_ALL` came since this ZT's last wait (re-read the server state).
pub const ZUFS_ZT_KICKED: u32 = 1 << 0;
/// [`KZtWait::flags`]: `BREAK`: the server shuts down; the ZT should leave.
pub const ZUFS_ZT_BREAK: u32 = 1 << 1;

/// `ZUFS_IOC_ZT_WAIT`: report the lane's `DONE` slots to their kernel callers, then sleep
/// (interruptibly: `EINTR` on a signal, call again) until a slot is `SUBMITTED`, a kick or a
/// break. `EPERM` when the caller is not the lane's ZT.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KZtWait {
    /// In: the caller's lane.
    pub cpu: u32,
    /// Out: `ZUFS_ZT_*`.
    pub flags: u32,
    /// Out: kernel ops this call completed.
    pub completed: u32,
    /// Out: `SUBMITTED` slots seen when it returned.
    pub submitted: u32,
}

/// [`KDbgOp::flags`]: send `args[..nargs]` as the request payload.
pub const ZUFS_DBG_F_ARGS: u32 = 1 << 0;

/// `ZUFS_IOC_DBG_OP` (`CAP_SYS_ADMIN`): the module sends one NOOP from the calling CPU through
/// the kernel channel set, as the filesystem sends its ops, and says which lane and ZT served it.
/// Returns the errno of the op (`EIO` for a malformed reply or no server, `EDEADLK` from the
/// server's own process).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KDbgOp {
    /// In: `ZUFS_DBG_F_*`.
    pub flags: u32,
    /// In: 0..=4.
    pub nargs: u32,
    /// In: request payload (8 * `nargs` bytes).
    pub args: [u64; 4],
    /// In: user address of request data (copied into the slot's window).
    pub data_in: u64,
    /// In: bytes of request data (at most the window).
    pub data_in_len: u32,
    /// In: reply payload bytes the caller accepts (at most the payload size).
    pub reply_size: u32,
    /// In: user address for reply data.
    pub data_out: u64,
    /// In: reply data bytes the caller accepts.
    pub data_out_size: u32,
    /// In: 0.
    pub reserved: u32,
    /// In: largest non-negative result accepted.
    pub result_max: i64,
    /// Out: the server's result (>= 0).
    pub result: i64,
    /// Out: CPU the op was sent from.
    pub submit_cpu: u32,
    /// Out: lane it went to.
    pub lane: u32,
    /// Out: CPU that lane's ZT registered for.
    pub zt_cpu: u32,
    /// Out: CPU the ZT reported DONE from.
    pub done_cpu: u32,
    /// Out: reply payload bytes.
    pub out_len: u32,
    /// Out: reply data bytes.
    pub data_len: u32,
    /// Out: the first 32 bytes of the reply payload.
    pub reply: [u64; 4],
}

/// `ZUFS_IOC_GRAB_PMEM` (`CAP_SYS_ADMIN`, on any `/dev/zufs` fd, no HELLO needed): the module
/// opens the DAX block device at `path` exclusively (`/dev/pmem0` on memmap= pmem), takes its
/// `dax_device`, and returns a new fd whose `MAP_SHARED` mapping (offset 0, up to `size` bytes,
/// `MAP_SYNC` accepted) maps the device's pmem itself: faults insert its page frames, nothing
/// goes through the block device's page cache, so what the server stores is what the kernel's
/// DAX copies see. A second grab of a device the module holds shares it. The device stays held
/// while the fd, a mapping of it, or a `zufs` mount naming it (`-o dax=PATH`) lives. Errors:
/// `ENOTBLK`, `EOPNOTSUPP` (no DAX), `EBUSY` (open exclusively elsewhere), `EINVAL`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KGrabPmem {
    /// In: user address of the device path (NUL-terminated, at most 4095 bytes).
    pub path: u64,
    /// In: 0.
    pub flags: u32,
    /// Out: the new fd (`O_RDWR | O_CLOEXEC`).
    pub fd: i32,
    /// Out: bytes of pmem the fd maps (a multiple of 2 MiB).
    pub size: u64,
    /// Out: the block device number (`st_rdev` encoding).
    pub dev: u64,
    /// In: 0.
    pub reserved: [u64; 2],
}

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

#[allow(clippy::cast_possible_truncation)] // every size is asserted below 1 << 14
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ZUFS_IOC_TYPE as u32) << 8) | nr
}

/// `_IOWR('Z', 0x40, struct zufs_ioc_hello)`.
pub const ZUFS_IOC_HELLO: u32 = ioc(IOC_READ | IOC_WRITE, 0x40, size_of::<KHello>());
/// `_IOW('Z', 0x41, struct zufs_ioc_zt_init)`.
pub const ZUFS_IOC_ZT_INIT: u32 = ioc(IOC_WRITE, 0x41, size_of::<KZtInit>());
/// `_IOWR('Z', 0x42, struct zufs_ioc_zt_wait)`.
pub const ZUFS_IOC_ZT_WAIT: u32 = ioc(IOC_READ | IOC_WRITE, 0x42, size_of::<KZtWait>());
/// `_IO('Z', 0x43)`: wake every ZT once with [`ZUFS_ZT_KICKED`].
pub const ZUFS_IOC_KICK_ALL: u32 = ioc(0, 0x43, 0);
/// `_IO('Z', 0x44)`: no new kernel ops; every ZT wait returns [`ZUFS_ZT_BREAK`] from now on.
pub const ZUFS_IOC_BREAK: u32 = ioc(0, 0x44, 0);
/// `_IOWR('Z', 0x45, struct zufs_ioc_grab_pmem)`.
pub const ZUFS_IOC_GRAB_PMEM: u32 = ioc(IOC_READ | IOC_WRITE, 0x45, size_of::<KGrabPmem>());
/// `_IOWR('Z', 0x4f, struct zufs_ioc_dbg_op)`.
pub const ZUFS_IOC_DBG_OP: u32 = ioc(IOC_READ | IOC_WRITE, 0x4f, size_of::<KDbgOp>());

const _: () = {
    assert!(size_of::<KHello>() == 72);
    assert!(offset_of!(KHello, abi_version) == 8);
    assert!(offset_of!(KHello, slots_per_cpu) == 12);
    assert!(offset_of!(KHello, window_size) == 16);
    assert!(offset_of!(KHello, ncpu) == 20);
    assert!(offset_of!(KHello, features) == 24);
    assert!(offset_of!(KHello, total_size) == 32);
    assert!(offset_of!(KHello, lane_size) == 40);
    assert!(offset_of!(KHello, nnodes) == 44);
    assert!(offset_of!(KHello, flags) == 48);
    assert!(offset_of!(KHello, reserved) == 52);

    assert!(size_of::<KZtInit>() == 16);
    assert!(offset_of!(KZtInit, flags) == 4);
    assert!(offset_of!(KZtInit, reserved) == 8);

    assert!(size_of::<KZtWait>() == 16);
    assert!(offset_of!(KZtWait, flags) == 4);
    assert!(offset_of!(KZtWait, completed) == 8);
    assert!(offset_of!(KZtWait, submitted) == 12);

    assert!(size_of::<KGrabPmem>() == 48);
    assert!(offset_of!(KGrabPmem, flags) == 8);
    assert!(offset_of!(KGrabPmem, fd) == 12);
    assert!(offset_of!(KGrabPmem, size) == 16);
    assert!(offset_of!(KGrabPmem, dev) == 24);
    assert!(offset_of!(KGrabPmem, reserved) == 32);

    assert!(size_of::<KDbgOp>() == 144);
    assert!(offset_of!(KDbgOp, args) == 8);
    assert!(offset_of!(KDbgOp, data_in) == 40);
    assert!(offset_of!(KDbgOp, data_in_len) == 48);
    assert!(offset_of!(KDbgOp, reply_size) == 52);
    assert!(offset_of!(KDbgOp, data_out) == 56);
    assert!(offset_of!(KDbgOp, data_out_size) == 64);
    assert!(offset_of!(KDbgOp, result_max) == 72);
    assert!(offset_of!(KDbgOp, result) == 80);
    assert!(offset_of!(KDbgOp, submit_cpu) == 88);
    assert!(offset_of!(KDbgOp, lane) == 92);
    assert!(offset_of!(KDbgOp, zt_cpu) == 96);
    assert!(offset_of!(KDbgOp, done_cpu) == 100);
    assert!(offset_of!(KDbgOp, out_len) == 104);
    assert!(offset_of!(KDbgOp, data_len) == 108);
    assert!(offset_of!(KDbgOp, reply) == 112);

    // The numbers the C header's _IO* macros give (checked with the kernel's headers).
    assert!(ZUFS_IOC_HELLO == 0xc048_5a40);
    assert!(ZUFS_IOC_ZT_INIT == 0x4010_5a41);
    assert!(ZUFS_IOC_ZT_WAIT == 0xc010_5a42);
    assert!(ZUFS_IOC_KICK_ALL == 0x5a43);
    assert!(ZUFS_IOC_BREAK == 0x5a44);
    assert!(ZUFS_IOC_GRAB_PMEM == 0xc030_5a45);
    assert!(ZUFS_IOC_DBG_OP == 0xc090_5a4f);
};
