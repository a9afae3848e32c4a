/* SPDX-License-Identifier: GPL-2.0 OR MIT OR Apache-2.0 */
/*
 * zus_api.h: the zufs ABI for C (kernel module, C plugins): channel layout, op codes and request
 * structs, control-socket header, on-pmem device header, plugin vtable.
 *
 * GENERATED from the Rust crate zus-api (zus-api/src) by zus-api-cgen: do not edit. Regenerate
 * with `cargo run -p zus-api-cgen` (or `ZUS_BLESS=1 cargo test -p zus-api --test c_header`).
 * That test fails when this file differs from what the Rust sources generate, and compiles
 * _Static_asserts of every struct size, alignment and field offset and every constant against it.
 *
 * Usable from kernel (__KERNEL__) and user space. Layouts are those of an LP64 target (x86-64,
 * arm64). Integers are native-endian except the __le32/__le64 fields of the device header.
 */
#ifndef _ZUS_API_H
#define _ZUS_API_H

#include <linux/types.h>
#ifndef __KERNEL__
#include <stddef.h>
#endif

struct zus_io_vec;
struct zus_device_desc;
struct zus_op_call;

/* ============================================================================================== */
/*
 * lib.rs
 *
 * Magic, ABI version and the feature bits of the handshake.
 */

/* Magic that opens every zus_api structure exchanged between peers ("ZUSAPI01" little-endian). */
#define ZUS_MAGIC 0x313049504153555aULL
/* The ABI version. Bump on any incompatible layout or protocol change. */
#define ZUS_ABI_VERSION 1

/*
 * features: Feature bits a peer may advertise in the handshake. Unknown bits are ignored; a peer that
 * *requires* a bit the other lacks refuses the connection.
 */
/* Data may be passed as client iovecs read/written by the server with process_vm_readv/writev. */
#define ZUS_FEATURES_REMOTE_IOV 0x1ULL
/* The server implements the MAP / MAP_DONE ops for direct (dax) data access. */
#define ZUS_FEATURES_DAX_MAP 0x2ULL
/* The server accepts `ZUS_DATA_WINDOW_STREAM` reads and writes. */
#define ZUS_FEATURES_STREAMED_WINDOW 0x8ULL
/* All features this build understands. */
#define ZUS_FEATURES_ALL 0xbULL
/*
 * A role, not a capability: the client is the kernel side of a mount (the FUSE bridge).
 * Its data ops are what fills the kernel's page cache, so zusd never refuses them with
 * `EUSEKERNEL`, and only such a client (and a privileged one) may send `KernelCache`.
 */
#define ZUS_FEATURES_KERNEL_BRIDGE 0x4ULL

/* ============================================================================================== */
/*
 * ops.rs
 *
 * Op codes and the request/reply structs carried in a channel slot.
 *
 * A request is an `struct zus_op_header` plus, in the slot's inline payload, the op's fixed request struct
 * followed by its variable bytes (names, targets). The reply reuses the header (`result`,
 * `out_len`, `data_len`) and the payload (the op's reply struct). Bulk data (read/write/readdir/
 * xattr values) travels in the slot's data window, or, with `ZUS_DATA_REMOTE_IOV`, directly
 * between the caller's memory and pmem via `process_vm_readv/writev` (one copy, P-CH6).
 *
 * All integers are native-endian (both peers run on the same machine); on-pmem structures are in
 * `device` and are little-endian.
 */

/* Request flag: the caller was interrupted by a signal while waiting (informational). */
#define ZUS_HDR_F_INTR 0x1U
/*
 * Request flag: the caller spins for the reply (it runs on another CPU than the ZT) and sends
 * back to back (its previous spun-for reply came less than 100 µs before). After serving such
 * an op the ZT polls its lane for a while instead of sleeping at once, so the caller's next op
 * needs no cross-CPU wake (P-CH2).
 */
#define ZUS_HDR_F_CLIENT_SPINS 0x2U
/* Data travels in the slot's data window (bounce copy; counted as such). */
#define ZUS_DATA_WINDOW 0
/*
 * Data travels between the caller's memory and pmem via process_vm_readv/writev: the payload
 * after the request struct holds `IoReq::niov` `struct zus_io_vec`s in the caller's address space.
 */
#define ZUS_DATA_REMOTE_IOV 1
/*
 * Data travels in the slot's data window, and the window fills while the op runs: the side
 * that produces the data raises the slot's `data_ready` word (`Slot::data_ready`, bytes valid
 * from the window's start) as it copies, and the other side copies each part out as soon as
 * it is there. A write's producer is the client (it may submit before it has copied anything;
 * `OpHeader::data_len` says how much will come), a read's the server. With the ZT on another
 * CPU the two copies overlap, so the op takes about one copy's time (see docs/design.md,
 * "streamed window"). Needs `ZUS_FEATURES_STREAMED_WINDOW`; counted as a window op.
 */
#define ZUS_DATA_WINDOW_STREAM 2

/* setattr: `SetattrReq::valid` bits. */
#define ZUS_SETATTR_MODE 0x1U
#define ZUS_SETATTR_UID 0x2U
#define ZUS_SETATTR_GID 0x4U
#define ZUS_SETATTR_SIZE 0x8U
#define ZUS_SETATTR_ATIME 0x10U
#define ZUS_SETATTR_MTIME 0x20U
#define ZUS_SETATTR_ATIME_NOW 0x40U
#define ZUS_SETATTR_MTIME_NOW 0x80U
#define ZUS_SETATTR_CTIME 0x100U

/* io_flags: `IoReq::flags` bits. */
/* O_SYNC / O_DSYNC: data durable when the op returns. */
#define ZUS_IO_FLAGS_SYNC 0x1U
/* O_DIRECT. */
#define ZUS_IO_FLAGS_DIRECT 0x2U
/* O_APPEND: write at the end of file (offset ignored), atomically. */
#define ZUS_IO_FLAGS_APPEND 0x4U
/*
 * The writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID): the write clears S_ISUID, and
 * S_ISGID when the group-exec bit is set, in the same operation.
 */
#define ZUS_IO_FLAGS_KILL_SUIDGID 0x8U
/* Most iovecs one request may carry. */
#define ZUS_MAX_IOV 256
/* Marks a hole in an `struct zus_extent`. */
#define ZUS_EXTENT_HOLE 0xffffffffffffffffULL
/* Most extents one map reply carries. */
#define ZUS_MAX_MAP_EXTENTS 64
/* `_IOR('Z', 1, IoctlTicket)`: the private ioctl the FUSE bridge answers on its files. */
#define ZUFS_IOC_TICKET 0x80185a01U
/* Longest name a request may carry. */
#define ZUS_NAME_MAX 255
/* Longest symlink target. */
#define ZUS_PATH_MAX 4096

/* Op codes. Values are stable; gaps are never reused. */
enum zus_op_code {
	/* Does nothing; measures the channel round trip. */
	ZUS_OP_NOOP = 1,
	ZUS_OP_STATFS = 2,
	ZUS_OP_SYNC = 3,
	ZUS_OP_LOOKUP = 4,
	ZUS_OP_GETATTR = 5,
	ZUS_OP_SETATTR = 6,
	ZUS_OP_CREATE = 7,
	ZUS_OP_MKNOD = 8,
	ZUS_OP_MKDIR = 9,
	ZUS_OP_UNLINK = 10,
	ZUS_OP_RMDIR = 11,
	ZUS_OP_RENAME = 12,
	ZUS_OP_LINK = 13,
	ZUS_OP_SYMLINK = 14,
	ZUS_OP_READLINK = 15,
	ZUS_OP_READDIR = 16,
	ZUS_OP_OPEN = 17,
	ZUS_OP_RELEASE = 18,
	ZUS_OP_READ = 19,
	ZUS_OP_WRITE = 20,
	ZUS_OP_FSYNC = 21,
	ZUS_OP_FALLOCATE = 22,
	ZUS_OP_GETXATTR = 23,
	ZUS_OP_SETXATTR = 24,
	ZUS_OP_LISTXATTR = 25,
	ZUS_OP_REMOVEXATTR = 26,
	/* File range -> pmem extents, for the dax data path. */
	ZUS_OP_MAP = 27,
	/* Commits size/mtime after a client wrote through extents from `ZUS_OP_MAP`. */
	ZUS_OP_MAP_DONE = 28,
	/* The caller drops `nlookup` references to an inode. */
	ZUS_OP_FORGET = 29,
	/*
	 * The FUSE bridge says the kernel starts or stops caching an inode's pages
	 * (`struct zus_kernel_cache_req`); served by zusd itself, never by the plugin.
	 */
	ZUS_OP_KERNEL_CACHE = 30,
	/*
	 * The FUSE bridge issues (or revokes) a ticket for one inode to one user (`struct zus_ticket_req`);
	 * served by zusd itself.
	 */
	ZUS_OP_TICKET = 31,
	/*
	 * copy_file_range(2) between two open files of one mount, served in one op
	 * (`struct zus_copy_file_range_req`); the result is the number of bytes copied.
	 */
	ZUS_OP_COPY_FILE_RANGE = 32,
	/*
	 * Create a regular file and open it, in one op (`struct zus_create_req`, the name following): the
	 * reply is a `struct zus_create_open_reply`. Served by zusd itself from the plugin's `Create` and
	 * `Open` (plugins never see this op code); a failed open gives the create's lookup
	 * reference back and answers the open's errno (the file stays, as after `Create`).
	 */
	ZUS_OP_CREATE_OPEN = 33,
	/*
	 * Drops lookup references to many inodes in one op: the payload is one or more
	 * `struct zus_forget_req`s back to back (nothing else). Served by zusd as that many `Forget`s of the
	 * plugin (plugins never see this op code).
	 */
	ZUS_OP_FORGET_MANY = 34,
	/*
	 * Releases many file handles in one op: the payload is one or more `struct zus_release_req`s back
	 * to back (nothing else). Served by zusd as that many `Release`s of the plugin (plugins
	 * never see this op code); the answer is 0 whatever they answered.
	 */
	ZUS_OP_RELEASE_MANY = 35,
	/*
	 * Read directory entries with their inodes' attributes (`struct zus_readdir_req`): the data window
	 * holds `struct zus_dirent_plus` records; the result is the number of bytes written. Each record
	 * with a nonzero `attr.ino` counted a lookup reference, as a `Lookup` of its name would
	 * (`.` and `..` get none). Served by zusd itself from the plugin's `Readdir` and a
	 * `Lookup` per entry (plugins never see this op code).
	 */
	ZUS_OP_READDIR_PLUS = 36,
};

/*
 * The op header at the start of every slot.
 * (64 bytes.)
 */
struct zus_op_header {
	/* `OpCode` as u32. */
	__u32 opcode;
	/* `HDR_F_*`. */
	__u32 flags;
	/* Which mount the op addresses (from a control-socket mount/attach). */
	__u32 mount_id;
	/* Request bytes used in the payload (fixed struct + variable part). */
	__u32 in_len;
	/* Reply bytes the server wrote into the payload. */
	__u32 out_len;
	/* Bytes of data in the window (request: write data; reply: read data). */
	__u32 data_len;
	/* Client's sequence number, echoed back. */
	__u64 seq;
	/* Reply: >= 0 success value (op-specific, e.g. bytes), < 0 negative errno. */
	__s64 result;
	/*
	 * Caller credentials, honoured only when the client is privileged (the FUSE bridge acting
	 * for users); otherwise the server substitutes the peer credentials of the socket.
	 */
	__u32 uid;
	/* See `uid`. */
	__u32 gid;
	/* See `uid`. */
	__u32 pid;
	/* Reserved, zero. */
	__u32 reserved;
	/*
	 * The ticket (`ZUS_OP_TICKET`) a client attached to a mount it does not own shows for the
	 * inode of this op; 0 otherwise.
	 */
	__u64 ticket;
};

/*
 * Attributes of an inode, returned by lookup/getattr/create/...
 * (80 bytes.)
 */
struct zus_attr {
	__u64 ino;
	__u64 generation;
	__u64 size;
	/* 512-byte blocks allocated. */
	__u64 blocks;
	__s64 atime_ns;
	__s64 mtime_ns;
	__s64 ctime_ns;
	__u32 mode;
	__u32 nlink;
	__u32 uid;
	__u32 gid;
	__u32 rdev;
	__u32 blksize;
};

/*
 * Request naming only an inode.
 * (8 bytes.)
 */
struct zus_ino_req {
	__u64 ino;
};

/*
 * Request naming a directory and a name that follows the struct (lookup, unlink, rmdir).
 * (16 bytes.)
 */
struct zus_name_req {
	__u64 dir;
	__u32 name_len;
	__u32 reserved;
};

/*
 * Change attributes.
 * (56 bytes.)
 */
struct zus_setattr_req {
	__u64 ino;
	__u32 valid;
	__u32 mode;
	__u32 uid;
	__u32 gid;
	__u64 size;
	__s64 atime_ns;
	__s64 mtime_ns;
	__s64 ctime_ns;
};

/*
 * Create a file, node or directory; the name follows.
 * (24 bytes.)
 */
struct zus_create_req {
	__u64 dir;
	__u32 mode;
	__u32 rdev;
	/* Open flags for `Create` (O_EXCL ...). */
	__u32 flags;
	__u32 name_len;
};

/*
 * Rename; the old name then the new name follow.
 * (32 bytes.)
 */
struct zus_rename_req {
	__u64 old_dir;
	__u64 new_dir;
	/* `RENAME_NOREPLACE` (1), `RENAME_EXCHANGE` (2). */
	__u32 flags;
	__u32 old_len;
	__u32 new_len;
	__u32 reserved;
};

/*
 * Hard link `ino` as a name (following) in `new_dir`.
 * (24 bytes.)
 */
struct zus_link_req {
	__u64 ino;
	__u64 new_dir;
	__u32 name_len;
	__u32 reserved;
};

/*
 * Create a symlink; the name then the target follow.
 * (16 bytes.)
 */
struct zus_symlink_req {
	__u64 dir;
	__u32 name_len;
	__u32 target_len;
};

/*
 * Read directory entries starting after `cookie` (0 = from the start) into the data window as
 * `struct zus_dirent` records; the reply result is the number of bytes written.
 * (16 bytes.)
 */
struct zus_readdir_req {
	__u64 dir;
	__u64 cookie;
};

/*
 * A directory entry record in the data window; the name follows, the record is padded to 8.
 * (24 bytes.)
 */
struct zus_dirent {
	__u64 ino;
	/* Cookie to resume after this entry. */
	__u64 cookie;
	/* `DT_*` type. */
	__u32 kind;
	__u32 name_len;
};

/*
 * A `ZUS_OP_READDIR_PLUS` record in the data window: the entry, then its inode's attributes
 * (what a `Lookup` of the name answers; all zero when there is none: `.`, `..`, or a name gone
 * before its lookup); the name follows, the record is padded to 8.
 * (104 bytes.)
 */
struct zus_dirent_plus {
	struct zus_dirent dirent;
	struct zus_attr attr;
};

/*
 * Open an inode.
 * (16 bytes.)
 */
struct zus_open_req {
	__u64 ino;
	__u32 flags;
	__u32 reserved;
};

/*
 * Reply to open (and create): a file handle.
 * (8 bytes.)
 */
struct zus_open_reply {
	__u64 fh;
};

/*
 * Reply to `ZUS_OP_CREATE_OPEN`: the new file's attributes (as `Create`'s reply), the file
 * handle (as `Open`'s) and the directory's attributes after the create (all zero, `ino` 0, when
 * zusd could not read them), so that a kernel need not ask for the times the create moved.
 * (168 bytes.)
 */
struct zus_create_open_reply {
	struct zus_attr attr;
	__u64 fh;
	struct zus_attr dir;
};

/*
 * Release a file handle.
 * (16 bytes.)
 */
struct zus_release_req {
	__u64 ino;
	__u64 fh;
};

/*
 * Read or write `len` bytes at `offset`.
 * (48 bytes.)
 */
struct zus_io_req {
	__u64 ino;
	__u64 fh;
	__u64 offset;
	__u64 len;
	/* `io_flags`. */
	__u32 flags;
	/* `ZUS_DATA_WINDOW` or `ZUS_DATA_REMOTE_IOV`. */
	__u32 data_kind;
	/* Number of `struct zus_io_vec`s after this struct with `DATA_REMOTE_IOV`. */
	__u32 niov;
	__u32 reserved;
};

/*
 * Reply to read/write.
 * (16 bytes.)
 */
struct zus_io_reply {
	/* File size after the op. */
	__u64 size;
	/* Offset the write landed at (useful with APPEND). */
	__u64 offset;
};

/*
 * A buffer in the caller's address space.
 * (16 bytes.)
 */
struct zus_io_vec {
	__u64 addr;
	__u64 len;
};

/*
 * Flush a file.
 * (24 bytes.)
 */
struct zus_fsync_req {
	__u64 ino;
	__u64 fh;
	__u32 datasync;
	__u32 reserved;
};

/*
 * fallocate(2).
 * (32 bytes.)
 */
struct zus_fallocate_req {
	__u64 ino;
	__u64 offset;
	__u64 len;
	__u32 mode;
	__u32 reserved;
};

/*
 * xattr get/set/remove; the name follows; set's value is in the data window; get's value is
 * returned in the data window (result = value length; `size` 0 asks for the length only).
 * (24 bytes.)
 */
struct zus_xattr_req {
	__u64 ino;
	__u32 name_len;
	/* set: `XATTR_CREATE`/`XATTR_REPLACE`. */
	__u32 flags;
	/* get/list: caller's buffer size; set: value length. */
	__u32 size;
	__u32 reserved;
};

/*
 * Map a file range to pmem extents.
 * (32 bytes.)
 */
struct zus_map_req {
	__u64 ino;
	__u64 offset;
	__u64 len;
	/* 1 = the caller will write (allocate and zero holes). */
	__u32 write;
	__u32 reserved;
};

/*
 * One mapped extent: `len` bytes of the file at `file_offset` live at `dev_offset` on the device.
 * `dev_offset == u64::MAX` marks a hole (reads as zeros).
 * (24 bytes.)
 */
struct zus_extent {
	__u64 file_offset;
	__u64 dev_offset;
	__u64 len;
};

/*
 * Reply to map: `count` extents follow.
 * (16 bytes.)
 */
struct zus_map_reply {
	__u32 count;
	__u32 reserved;
	/* File size at the time of the map. */
	__u64 size;
};

/*
 * Commit a dax write: the file now extends to at least `end` (size update) and mtime is now.
 * (24 bytes.)
 */
struct zus_map_done_req {
	__u64 ino;
	__u64 end;
	/* 1 = also make the written range durable (flush done by client; server fences metadata). */
	__u32 sync;
	__u32 reserved;
};

/*
 * Drop lookup references.
 * (16 bytes.)
 */
struct zus_forget_req {
	__u64 ino;
	__u64 nlookup;
};

/*
 * `ZUS_OP_KERNEL_CACHE`: while an inode is marked, the kernel may hold its pages (a page-cache
 * read or write, or a shared mmap, through the FUSE mount), and zusd answers the data ops of
 * every other client on it with `ZUS_EUSEKERNEL`, so that they go through the
 * kernel too and the page cache stays the one copy everybody sees. Marks nest per client (`on`
 * counts up, `off` takes back one of the sender's own) and leave with a client that
 * disconnects; only the kernel bridge (`features::KERNEL_BRIDGE`, privileged) may send it.
 * (16 bytes.)
 */
struct zus_kernel_cache_req {
	__u64 ino;
	/* 1 = mark, 0 = unmark. */
	__u32 on;
	__u32 reserved;
};

/*
 * `ZUS_OP_TICKET`. A user's process that opened a file through the kernel mount (so the
 * kernel checked its permissions) asks the bridge for a ticket with `ZUFS_IOC_TICKET`; the
 * bridge has zusd issue one (`ticket` 0: the result is the new ticket, 63 random bits, never 0)
 * for `ino`, the caller's `uid` and `writable` = the file was opened for writing, and revokes
 * it (`ticket` set) when the kernel releases that open file. A client attached to a mount it
 * does not own may send only data ops, each with a ticket of its uid for that inode
 * (`zus_op_header.ticket`). Only the kernel bridge may send this op.
 * (24 bytes.)
 */
struct zus_ticket_req {
	__u64 ino;
	__u64 ticket;
	__u32 uid;
	__u32 writable;
};

/*
 * `ZUS_OP_COPY_FILE_RANGE`: copy `len` bytes of file `ino_in` (open as `fh_in`) at `off_in`
 * to file `ino_out` (open as `fh_out`) at `off_out`, inside the filesystem. The result is the
 * number of bytes copied (0 when `off_in` is at or past the source's end). Overlapping ranges
 * of one file are `EINVAL`; `flags` must be 0.
 * (64 bytes.)
 */
struct zus_copy_file_range_req {
	__u64 ino_in;
	__u64 fh_in;
	__u64 off_in;
	__u64 ino_out;
	__u64 fh_out;
	__u64 off_out;
	__u64 len;
	__u32 flags;
	__u32 reserved;
};

/*
 * What the bridge answers to `ZUFS_IOC_TICKET` on a file of its mount.
 * (24 bytes.)
 */
struct zus_ioctl_ticket {
	/* The plugin's inode of the file. */
	__u64 ino;
	__u64 ticket;
	/* zusd's id of the mount (what to attach to). */
	__u32 mount_id;
	/* 1 when the ticket allows writes. */
	__u32 writable;
};

/*
 * Reply to statfs.
 * (56 bytes.)
 */
struct zus_statfs_reply {
	__u64 blocks;
	__u64 bfree;
	__u64 bavail;
	__u64 files;
	__u64 ffree;
	__u32 bsize;
	__u32 namelen;
	__u32 frsize;
	__u32 reserved;
};

/* ============================================================================================== */
/*
 * chan.rs
 *
 * Shared channel memory layout.
 *
 * `zusd` creates one memfd per client connection (P-CH4: a client sees only its own channels) and
 * sends it over the control socket. Both sides map it `MAP_SHARED`. The layout:
 *
 * offset 0                 ChannelSetHeader (4 KiB)
 * lane_offset(cpu)         one Lane per CPU, lane_size bytes each (a multiple of 4 KiB):
 *     LaneHeader               256 B: doorbell, ZT sleeping/polling flags, slot-freed futex, stats
 *     Slot[slots_per_cpu]      SLOT_SIZE each: state, reply futex, op header, inline payload
 *     window[slots_per_cpu]    window_size each: the data window of the slot with that index
 *
 * Every futex word sits on its own 64-byte cache line. These structs describe the layout only:
 * nobody ever holds a reference to them in shared memory; `shm` accesses fields by offset
 * with atomics or raw copies (the client may scribble over its own channel memory at any time).
 */

/* Size of a cache line, the unit of isolation for futex words. */
#define ZUS_CACHE_LINE 64
/* Most CPUs a channel set describes. */
#define ZUS_MAX_CPUS 1024
/* Size of one slot (control part; the data window is separate). */
#define ZUS_SLOT_SIZE 8192
/* Bytes of inline payload in a slot: request in, reply out. */
#define ZUS_PAYLOAD_SIZE 8000
/* Default data window per slot. */
#define ZUS_DEFAULT_WINDOW_SIZE 0x100000
/* Default slots per CPU lane. */
#define ZUS_DEFAULT_SLOTS_PER_CPU 4

/*
 * slot_state: Slot states. The client moves FREE->CLAIMED->SUBMITTED and DONE->FREE; the server moves
 * SUBMITTED->SERVING->DONE. The server re-checks every transition with compare-exchange and never
 * relies on the client having followed the protocol.
 */
/* Available for a client thread to claim. */
#define ZUS_SLOT_STATE_FREE 0
/* Owned by one client thread that is filling in a request. */
#define ZUS_SLOT_STATE_CLAIMED 1
/* Request complete; the lane's ZT may take it. */
#define ZUS_SLOT_STATE_SUBMITTED 2
/* A ZT copied the request out and is serving it. */
#define ZUS_SLOT_STATE_SERVING 3
/* The reply is in the slot; the owning client thread reads it and frees the slot. */
#define ZUS_SLOT_STATE_DONE 4
/*
 * Dax reader slots per client (one cache line each, after the header page). A client thread
 * that copies through cached extents writes the layout generation it checked them against
 * into its slot for the length of the copy (0 when idle), so that zusd can tell when no copy
 * that may still target freed blocks is running (see `HostApi::oldest_dax_reader`).
 */
#define ZUS_DAX_READER_SLOTS 128

/*
 * Page 0 of a channel set: what the client needs to find its way around.
 * (2176 bytes.)
 */
struct zus_channel_set_header {
	/* `ZUS_MAGIC`. */
	__u64 magic;
	/* `ZUS_ABI_VERSION`. */
	__u32 abi_version;
	/* `size_of::<ChannelSetHeader>()`. */
	__u32 header_size;
	/* Feature bits the server offers (`features`). */
	__u64 features;
	/* Number of lanes (= possible CPU ids served; lane i serves CPU i). */
	__u32 ncpu;
	/* Slots in each lane. */
	__u32 slots_per_cpu;
	/* Bytes per slot data window. */
	__u32 window_size;
	/* Bytes per lane (header + slots + windows), a multiple of 4096. */
	__u32 lane_size;
	/* Offset of lane 0. */
	__u64 lanes_offset;
	/* Total size of the mapping. */
	__u64 total_size;
	/* Server process id (informational; clients detect death via the control socket). */
	__u32 server_pid;
	/* Id the server gave this client. */
	__u32 client_id;
	/*
	 * Spin budget (ns) the server suggests before a client sleeps when its lane's ZT runs on
	 * another CPU (same-CPU waits never spin: the ZT cannot run while we spin).
	 */
	__u32 client_spin_ns;
	/* Number of NUMA nodes in the topology the server uses. */
	__u32 nnodes;
	/* NUMA node of each CPU (lane); entries past `ncpu` are zero. */
	__u16 cpu_node[ZUS_MAX_CPUS];
	/*
	 * Layout generation: the server raises it (never lowers it) before it answers an op that
	 * may have freed or moved file blocks (truncate, punch, unlink, ...). A client that caches
	 * extents (dax) drops them when it changes; freed blocks are not reused for a grace period.
	 */
	__u64 layout_gen;
	/* Reserved, zero (makes the size a multiple of 64 without implicit padding). */
	__u8 reserved[48];
} __attribute__((aligned(64)));

/*
 * Per-CPU lane header. Each word that a futex waits on has its own cache line.
 * (256 bytes.)
 */
struct zus_lane_header {
	/* Client increments after submitting a request; the ZT futex-waits on it. */
	__u32 doorbell;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad0[60];
	/*
	 * Server sets 1 just before it sleeps, 0 when awake. Clients only `FUTEX_WAKE` the doorbell
	 * when it is 1, so the common case costs no syscall.
	 */
	__u32 zt_sleeping;
	/* CPU the lane's ZT is pinned to. */
	__u32 zt_cpu;
	/*
	 * Server sets 1 while the ZT polls this lane for new work on an otherwise idle CPU (after
	 * serving a spinning client), 0 otherwise. A submission seen by a polling ZT needs no wake;
	 * clients on other CPUs prefer such a lane.
	 */
	__u32 zt_polling;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad1[52];
	/* Bumped by a client thread that frees a slot while others wait for one (P-CH3). */
	__u32 free_seq;
	/* Number of client threads waiting for a free slot in this lane. */
	__u32 free_waiters;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad2[56];
	/* Reserved, zero (per-op counters live in the server: `zufs status`). */
	__u64 reserved;
	/* Requests refused as malformed on this lane. */
	__u64 ops_rejected;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad3[48];
} __attribute__((aligned(64)));

/*
 * One slot: a request/reply exchange between one client thread and the lane's ZT.
 * (8192 bytes.)
 */
struct zus_slot {
	/* `slot_state`. */
	__u32 state;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad0[60];
	/* The reply futex word: the server increments it after setting DONE. */
	__u32 reply_seq;
	/* Client sets 1 before it futex-waits on `reply_seq`; the server only wakes when it is 1. */
	__u32 client_waiting;
	/*
	 * Streamed window (`ZUS_DATA_WINDOW_STREAM`): bytes at the start of the slot's
	 * window that hold the op's data so far. The client resets it before it submits; the
	 * producer (client for a write, server for a read) only raises it, with release stores.
	 * The server never trusts it: it bounds how long it waits for a write's bytes.
	 */
	__u32 data_ready;
	/* Keeps the next word on its own cache line; zero. */
	__u8 _pad1[52];
	/* Request header in, reply header out. */
	struct zus_op_header hdr;
	/* Inline payload: op-specific struct followed by names, then the reply struct. */
	__u8 payload[8000];
} __attribute__((aligned(64)));

/* ============================================================================================== */
/*
 * control.rs
 *
 * The control socket's wire header. The messages themselves (JSON) and their encoding live in
 * the `zus-channel` crate; only the fixed header is ABI.
 */

/* Largest control message. */
#define ZUS_MAX_CTL_MSG 65536

/*
 * Fixed header of every control message.
 * (16 bytes.)
 */
struct zus_ctl_header {
	/* `ZUS_MAGIC`. */
	__u64 magic;
	/* `ZUS_ABI_VERSION`. */
	__u32 abi_version;
	/* Length of the JSON body that follows. */
	__u32 body_len;
};

/* ============================================================================================== */
/*
 * device.rs
 *
 * The generic on-pmem device header (P-PM1, P-PM4).
 *
 * The first 4 KiB of every zufs device hold this header, written by `zufs mkfs` and checked by
 * `zusd` before a plugin sees the device: magic, format version, uuid, fs type, feature flags,
 * size and a CRC32C. The filesystem's own data starts at `ZUS_DEVICE_HEADER_SIZE`. Every integer is
 * stored little-endian in fixed-width byte arrays, so the layout is the same on any host.
 */

/* Bytes reserved for the header at the start of a device. */
#define ZUS_DEVICE_HEADER_SIZE 4096ULL
/* Magic at offset 0. */
#define ZUS_DEVICE_MAGIC "ZUFSDEV\001"
/* Header format version. */
#define ZUS_DEVICE_VERSION 1
/* Devices are sized in multiples of this (huge-page friendly, as ZUFS required). */
#define ZUS_DEVICE_ALIGN 0x200000ULL

/*
 * The device header as stored.
 * (144 bytes.)
 */
struct zus_device_header {
	/* `ZUS_DEVICE_MAGIC`. */
	__u8 magic[8];
	/* `ZUS_DEVICE_VERSION`. */
	__le32 version;
	/* `size_of::<DeviceHeader>()`. */
	__le32 header_size;
	/* Random id of this device. */
	__u8 uuid[16];
	/* Filesystem type name, NUL padded (e.g. "pmemfs"). */
	__u8 fs_type[16];
	/* Features an older reader may ignore. */
	__le64 feature_compat;
	/* Features a reader must understand to mount at all. */
	__le64 feature_incompat;
	/* Features a reader must understand to mount read-write. */
	__le64 feature_ro_compat;
	/* Device size in bytes recorded at mkfs; must equal the mapped size. */
	__le64 dev_size;
	/* Creation time, ns since the epoch. */
	__le64 created_ns;
	/* Reserved, zero. */
	__u8 reserved[48];
	/* CRC32C of the header bytes before this field. */
	__le32 checksum;
	/* Padding to 8 bytes, zero. */
	__le32 pad;
} __attribute__((packed));

/* ============================================================================================== */
/*
 * errno.rs
 *
 * The error convention: every op returns a non-negative value on success or a negative errno.
 */

/*
 * zufs-private, never returned to a program: the kernel caches this inode's pages
 * (`struct zus_kernel_cache_req`); the preload library serves the call through the kernel
 * mount instead. Outside the range of Linux errnos.
 */
#define ZUS_EUSEKERNEL 4000

/* ============================================================================================== */
/*
 * kabi.rs
 *
 * The ioctl ABI of `/dev/zufs`, the zufs kernel module (`kmod-shim/module`).
 *
 * The same structs and numbers as `kmod-shim/module/zufs_kabi.h`; both sides assert every size
 * and offset (here at compile time).
 *
 * A server opens `/dev/zufs` (`O_CLOEXEC`), sends `ZUFS_IOC_HELLO` and maps
 * `zufs_ioc_hello.total_size` bytes `MAP_SHARED` at offset 0: a channel set with the layout of
 * `chan::Geometry` (`ncpu` = the kernel's `nr_cpu_ids`, lane `i` for CPU `i`), whose
 * `struct zus_channel_set_header` the module has filled in. Then one thread per CPU, pinned to
 * that CPU alone, sends `ZUFS_IOC_ZT_INIT` and loops: it serves every `SUBMITTED` slot of its
 * lane exactly as for a user client (`SUBMITTED -> SERVING -> DONE`, reply header and payload),
 * then calls `ZUFS_IOC_ZT_WAIT`, which hands the `DONE` replies to the waiting kernel callers
 * and sleeps until a slot of the lane is `SUBMITTED`, a `ZUFS_IOC_KICK_ALL` or a
 * `ZUFS_IOC_BREAK`. The kernel never sets `client_waiting`, so the server issues no futex wake
 * for its slots. Closing the server's last fd (and mapping) ends the session: every kernel op
 * waiting or sent later fails with `EIO`; the module can be unloaded after.
 *
 * The kernel owns slot allocation: it decides which caller owns a slot from its own memory and
 * treats every reply field as untrusted (`result` must be a Linux errno or within the op's
 * range, `out_len`/`data_len` within the caller's buffers, `seq` the one it sent), answering
 * `EIO` otherwise.
 */

/* The ioctl type byte. */
#define ZUFS_IOC_TYPE 'Z'
/* Slots per lane when `zufs_ioc_hello.slots_per_cpu` is 0. */
#define ZUFS_DEFAULT_SLOTS 4
/* Window bytes when `zufs_ioc_hello.window_size` is 0. */
#define ZUFS_DEFAULT_WINDOW 262144
/* Largest window the module accepts. */
#define ZUFS_MAX_WINDOW 4194304
/* Largest kernel channel set the module allocates. */
#define ZUFS_MAX_SET_SIZE 0x40000000ULL
/* `zufs_ioc_zt_wait.flags`: a `KICK_ALL` came since this ZT's last wait (re-read the server state). */
#define ZUFS_ZT_KICKED 0x1U
/* `zufs_ioc_zt_wait.flags`: `BREAK`: the server shuts down; the ZT should leave. */
#define ZUFS_ZT_BREAK 0x2U
/* `zufs_ioc_dbg_op.flags`: send `args[..nargs]` as the request payload. */
#define ZUFS_DBG_F_ARGS 0x1U
/* `_IOWR('Z', 0x40, struct zufs_ioc_hello)`. */
#define ZUFS_IOC_HELLO 0xc0485a40U
/* `_IOW('Z', 0x41, struct zufs_ioc_zt_init)`. */
#define ZUFS_IOC_ZT_INIT 0x40105a41U
/* `_IOWR('Z', 0x42, struct zufs_ioc_zt_wait)`. */
#define ZUFS_IOC_ZT_WAIT 0xc0105a42U
/* `_IO('Z', 0x43)`: wake every ZT once with `ZUFS_ZT_KICKED`. */
#define ZUFS_IOC_KICK_ALL 0x5a43U
/* `_IO('Z', 0x44)`: no new kernel ops; every ZT wait returns `ZUFS_ZT_BREAK` from now on. */
#define ZUFS_IOC_BREAK 0x5a44U
/* `_IOWR('Z', 0x45, struct zufs_ioc_grab_pmem)`. */
#define ZUFS_IOC_GRAB_PMEM 0xc0305a45U
/* `_IOWR('Z', 0x4f, struct zufs_ioc_dbg_op)`. */
#define ZUFS_IOC_DBG_OP 0xc0905a4fU

/*
 * `ZUFS_IOC_HELLO`: create this fd's session and its kernel channel set (one session at a time;
 * `EBUSY` while another lives). Needs `CAP_SYS_ADMIN`. Errors: `EINVAL` (magic, geometry,
 * flags), `EPROTO` (ABI version), `E2BIG` (set larger than `ZUFS_MAX_SET_SIZE`).
 * (72 bytes.)
 */
struct zufs_ioc_hello {
	/* In: `ZUS_MAGIC`. */
	__u64 magic;
	/* In: `ZUS_ABI_VERSION`. */
	__u32 abi_version;
	/* In: 1..=64, 0 = `ZUFS_DEFAULT_SLOTS`; out: the value used. */
	__u32 slots_per_cpu;
	/* In: a multiple of 4096 up to `ZUFS_MAX_WINDOW`, 0 = `ZUFS_DEFAULT_WINDOW`; out: used. */
	__u32 window_size;
	/* Out: lanes (the kernel's `nr_cpu_ids`). */
	__u32 ncpu;
	/* In: written to the channel set header's `features`. */
	__u64 features;
	/* Out: bytes to map at offset 0. */
	__u64 total_size;
	/* Out: bytes per lane. */
	__u32 lane_size;
	/* Out: NUMA node ids (`nr_node_ids`); the header's `cpu_node` has each lane's node. */
	__u32 nnodes;
	/* In: 0. */
	__u32 flags;
	/* In: 0. */
	__u32 reserved[5];
};

/*
 * `ZUFS_IOC_ZT_INIT`: the calling thread, a thread of the process that sent HELLO and allowed
 * to run on `cpu` only, becomes lane `cpu`'s ZT. `EINVAL` when not pinned so, `EBUSY` when the
 * lane has a live ZT, `ESHUTDOWN` after BREAK.
 * (16 bytes.)
 */
struct zufs_ioc_zt_init {
	/* The CPU (lane). */
	__u32 cpu;
	/* 0. */
	__u32 flags;
	/* 0. */
	__u64 reserved;
};

/*
 * `ZUFS_IOC_ZT_WAIT`: report the lane's `DONE` slots to their kernel callers, then sleep
 * (interruptibly: `EINTR` on a signal, call again) until a slot is `SUBMITTED`, a kick or a
 * break. `EPERM` when the caller is not the lane's ZT.
 * (16 bytes.)
 */
struct zufs_ioc_zt_wait {
	/* In: the caller's lane. */
	__u32 cpu;
	/* Out: `ZUFS_ZT_*`. */
	__u32 flags;
	/* Out: kernel ops this call completed. */
	__u32 completed;
	/* Out: `SUBMITTED` slots seen when it returned. */
	__u32 submitted;
};

/*
 * `ZUFS_IOC_DBG_OP` (`CAP_SYS_ADMIN`): the module sends one NOOP from the calling CPU through
 * the kernel channel set, as the filesystem sends its ops, and says which lane and ZT served it.
 * Returns the errno of the op (`EIO` for a malformed reply or no server, `EDEADLK` from the
 * server's own process).
 * (144 bytes.)
 */
struct zufs_ioc_dbg_op {
	/* In: `ZUFS_DBG_F_*`. */
	__u32 flags;
	/* In: 0..=4. */
	__u32 nargs;
	/* In: request payload (8 * `nargs` bytes). */
	__u64 args[4];
	/* In: user address of request data (copied into the slot's window). */
	__u64 data_in;
	/* In: bytes of request data (at most the window). */
	__u32 data_in_len;
	/* In: reply payload bytes the caller accepts (at most the payload size). */
	__u32 reply_size;
	/* In: user address for reply data. */
	__u64 data_out;
	/* In: reply data bytes the caller accepts. */
	__u32 data_out_size;
	/* In: 0. */
	__u32 reserved;
	/* In: largest non-negative result accepted. */
	__s64 result_max;
	/* Out: the server's result (>= 0). */
	__s64 result;
	/* Out: CPU the op was sent from. */
	__u32 submit_cpu;
	/* Out: lane it went to. */
	__u32 lane;
	/* Out: CPU that lane's ZT registered for. */
	__u32 zt_cpu;
	/* Out: CPU the ZT reported DONE from. */
	__u32 done_cpu;
	/* Out: reply payload bytes. */
	__u32 out_len;
	/* Out: reply data bytes. */
	__u32 data_len;
	/* Out: the first 32 bytes of the reply payload. */
	__u64 reply[4];
};

/*
 * `ZUFS_IOC_GRAB_PMEM` (`CAP_SYS_ADMIN`, on any `/dev/zufs` fd, no HELLO needed): the module
 * opens the DAX block device at `path` exclusively (`/dev/pmem0` on memmap= pmem), takes its
 * `dax_device`, and returns a new fd whose `MAP_SHARED` mapping (offset 0, up to `size` bytes,
 * `MAP_SYNC` accepted) maps the device's pmem itself: faults insert its page frames, nothing
 * goes through the block device's page cache, so what the server stores is what the kernel's
 * DAX copies see. A second grab of a device the module holds shares it. The device stays held
 * while the fd, a mapping of it, or a `zufs` mount naming it (`-o dax=PATH`) lives. Errors:
 * `ENOTBLK`, `EOPNOTSUPP` (no DAX), `EBUSY` (open exclusively elsewhere), `EINVAL`.
 * (48 bytes.)
 */
struct zufs_ioc_grab_pmem {
	/* In: user address of the device path (NUL-terminated, at most 4095 bytes). */
	__u64 path;
	/* In: 0. */
	__u32 flags;
	/* Out: the new fd (`O_RDWR | O_CLOEXEC`). */
	__s32 fd;
	/* Out: bytes of pmem the fd maps (a multiple of 2 MiB). */
	__u64 size;
	/* Out: the block device number (`st_rdev` encoding). */
	__u64 dev;
	/* In: 0. */
	__u64 reserved[2];
};

/* ============================================================================================== */
/*
 * plugin.rs
 *
 * The plugin boundary (P-PL1..P-PL4).
 *
 * A plugin is a shared object that exports one C symbol, `ZUS_REGISTER_SYMBOL`
 * (`zus_plugin_register`), returning a pointer to a static `struct zus_plugin_vtable`. The vtable opens
 * with magic, ABI version and struct size so `zusd` can refuse a plugin built for another ABI.
 * Everything that crosses is `#[repr(C)]`: a plugin may be written in C (against the generated
 * `include/zus_api.h`). A Rust plugin instead implements the safe `FileSystem` trait of the
 * `zus-plugin` crate and calls its `export_plugin!`; that crate's adapter turns the C calls into
 * trait calls, catches panics (P-PL2) and never lets a Rust type cross the boundary.
 *
 * Ownership: the server owns the device mapping, the request copy, the reply buffer and the data
 * window; it keeps them alive for the duration of the call (and the device until `unmount`
 * returns). The plugin owns the handle `mount` returns and frees it in `unmount`.
 */

/* The symbol every plugin exports. */
#define ZUS_REGISTER_SYMBOL "zus_plugin_register"
/* Magic at the start of a `struct zus_plugin_vtable` ("ZUSPLUG1"). */
#define ZUS_PLUGIN_MAGIC 0x3147554c5053555aULL

/* log_level: Log levels for `zus_host_api.log`. */
#define ZUS_LOG_LEVEL_ERROR 1
#define ZUS_LOG_LEVEL_WARN 2
#define ZUS_LOG_LEVEL_INFO 3
#define ZUS_LOG_LEVEL_DEBUG 4

/* data_kind: Data descriptor kinds. */
/* The op moves no bulk data. */
#define ZUS_DATA_KIND_NONE 0
/* `window`/`window_len` is a shared-memory data window. */
#define ZUS_DATA_KIND_WINDOW 1
/* `iov`/`niov` are buffers in process `pid`. */
#define ZUS_DATA_KIND_REMOTE 2

/* plugin_flags: Plugin flags. */
/* The filesystem needs a device (pmemfs); device-less ones (nullfs) get none. */
#define ZUS_PLUGIN_FLAGS_NEEDS_DEVICE 0x1U
/*
 * The plugin honours `DataDesc::ready` (streamed windows). Without it zusd waits until a
 * streamed write's data is all in the window before it calls the plugin, and a read's
 * data reaches the client only with the reply. Every plugin built on
 * `export_plugin!` has it.
 */
#define ZUS_PLUGIN_FLAGS_STREAMED_WINDOW 0x2U

/* Creates a filesystem on a device. Returns 0 or -errno; writes a message to `msg`. */
typedef __s64 (*zus_mkfs_fn)(const struct zus_device_desc *dev, const __u8 *opts, size_t opts_len, __u8 *msg, size_t msg_cap);

/*
 * Checks a device. Returns bytes of report written to `msg` (>= 0: clean if 0 problems, see
 * report) or -errno; `*problems` receives the number of problems found.
 */
typedef __s64 (*zus_fsck_fn)(const struct zus_device_desc *dev, __u64 *problems, __u8 *msg, size_t msg_cap);

/* Mounts. On success stores the handle and root inode and returns 0; else -errno with `msg`. */
typedef __s64 (*zus_mount_fn)(const struct zus_device_desc *dev, const __u8 *opts, size_t opts_len, void **handle, __u64 *root, __u8 *msg, size_t msg_cap);

/* Unmounts and frees the handle. */
typedef __s64 (*zus_unmount_fn)(void *handle);

/* Serves one op; returns the op result (>= 0) or -errno. */
typedef __s64 (*zus_op_fn)(void *handle, struct zus_op_call *call);

/*
 * What the server offers a plugin at registration.
 * (40 bytes.)
 */
struct zus_host_api {
	/* `ZUS_MAGIC`. */
	__u64 magic;
	/* `ZUS_ABI_VERSION`. */
	__u32 abi_version;
	/* `size_of::<HostApi>()`. */
	__u32 struct_size;
	/* Writes a log line (UTF-8, not NUL-terminated) at a `log_level`. */
	void (*log)(__u32 level, const __u8 *msg, size_t len);
	/* The server's layout generation now (raised after every op that may free blocks). */
	__u64 (*layout_gen)(void);
	/*
	 * The oldest layout generation a client's dax copy in progress checked its extents
	 * against (`u64::MAX` when none is in progress). Blocks freed while the generation was G
	 * may be reused once this is above G.
	 */
	__u64 (*oldest_dax_reader)(void);
};

/*
 * A device mapping handed to a plugin.
 * (24 bytes.)
 */
struct zus_device_desc {
	/* Start of the `MAP_SHARED` mapping (null for device-less mounts). */
	__u8 *base;
	/* Bytes mapped. */
	__u64 len;
	/* 1 when mapped with MAP_SYNC (CPU flushes alone make stores durable). */
	__u32 map_sync;
	/* 1 when mounted read-only. */
	__u32 read_only;
};

/*
 * Where an op's bulk data lives.
 * (48 bytes.)
 */
struct zus_data_desc {
	/* `data_kind`. */
	__u32 kind;
	/* Process that owns `iov` buffers. */
	__s32 pid;
	/* Window start. */
	__u8 *window;
	/* Window bytes available (write: bytes of data in it). */
	__u64 window_len;
	/* Remote buffers. */
	const struct zus_io_vec *iov;
	/* Number of remote buffers. */
	__u64 niov;
	/*
	 * Streamed window (only for plugins with `ZUS_PLUGIN_FLAGS_STREAMED_WINDOW`, else null):
	 * the shared `u32` that counts the bytes of the window holding data. On a write the plugin
	 * must not read window bytes at or beyond its value (it waits, bounded, for more); on a
	 * read it raises it as it fills the window, so the client can copy out meanwhile. Accessed
	 * atomically only. `zus_plugin::WindowData` does both for Rust plugins.
	 */
	__u32 *ready;
};

/*
 * One op call from the server to a plugin.
 * (160 bytes.)
 */
struct zus_op_call {
	/* Private copy of the request header (already validated for opcode and lengths). */
	struct zus_op_header hdr;
	/* Private copy of the request payload (`hdr.in_len` bytes). */
	const __u8 *req;
	/* Bytes at `req`. */
	size_t req_len;
	/* Reply buffer. */
	__u8 *reply;
	/* Reply buffer capacity. */
	size_t reply_cap;
	/* Out: reply bytes written. */
	size_t reply_len;
	/* Out: data bytes placed in the window (read, readdir, getxattr ...). */
	size_t data_out;
	/* Bulk data. */
	struct zus_data_desc data;
};

/*
 * The table a plugin exports.
 * (80 bytes.)
 */
struct zus_plugin_vtable {
	/* `ZUS_PLUGIN_MAGIC`. */
	__u64 magic;
	/* `ZUS_ABI_VERSION` the plugin was built for. */
	__u32 abi_version;
	/* `size_of::<PluginVtable>()` as the plugin knows it. */
	__u32 struct_size;
	/* Filesystem type name, NUL padded. */
	__u8 name[16];
	/* `plugin_flags`. */
	__u32 flags;
	/* Reserved, zero. */
	__u32 reserved;
	/* mkfs (NULL: not supported). */
	zus_mkfs_fn mkfs;
	/* fsck (NULL: not supported). */
	zus_fsck_fn fsck;
	/* mount (required). */
	zus_mount_fn mount;
	/* unmount (required). */
	zus_unmount_fn unmount;
	/* op dispatch (required). A NULL op table means every op fails with ENOSYS. */
	zus_op_fn op;
};

#endif /* _ZUS_API_H */
