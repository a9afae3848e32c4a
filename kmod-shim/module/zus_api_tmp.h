/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * TEMPORARY: the few zus_api definitions the zufs module needs, written by
 * hand from zus-api/src/chan.rs and zus-api/src/ops.rs until the generated
 * zus-api/include/zus_api.h exists. Names follow the generated header's
 * convention (struct zus_..., ZUS_...), so switching is a change of #include.
 * Delete this file then. Every layout is asserted below.
 */
#ifndef ZUS_API_TMP_H
#define ZUS_API_TMP_H

#include <linux/types.h>
#ifndef __KERNEL__
#include <stddef.h>
#endif

/* "ZUSAPI01" read as a little-endian u64 */
#define ZUS_MAGIC		0x313049504153555aULL
#define ZUS_ABI_VERSION		1

#define ZUS_CACHE_LINE		64
#define ZUS_MAX_CPUS		1024
#define ZUS_SLOT_SIZE		8192
#define ZUS_PAYLOAD_SIZE	(ZUS_SLOT_SIZE - 3 * ZUS_CACHE_LINE)
#define ZUS_DAX_READER_SLOTS	128

/* slot states (chan.rs slot_state) */
#define ZUS_SLOT_STATE_FREE		0
#define ZUS_SLOT_STATE_CLAIMED	1
#define ZUS_SLOT_STATE_SUBMITTED	2
#define ZUS_SLOT_STATE_SERVING	3
#define ZUS_SLOT_STATE_DONE		4

/* op codes (ops.rs OpCode) the module sends */
#define ZUS_OP_NOOP		1
#define ZUS_OP_STATFS		2
#define ZUS_OP_SYNC		3
#define ZUS_OP_LOOKUP		4
#define ZUS_OP_GETATTR		5
#define ZUS_OP_SETATTR		6
#define ZUS_OP_CREATE		7
#define ZUS_OP_MKNOD		8
#define ZUS_OP_MKDIR		9
#define ZUS_OP_UNLINK		10
#define ZUS_OP_RMDIR		11
#define ZUS_OP_RENAME		12
#define ZUS_OP_LINK		13
#define ZUS_OP_SYMLINK		14
#define ZUS_OP_READLINK		15
#define ZUS_OP_READDIR		16
#define ZUS_OP_OPEN		17
#define ZUS_OP_RELEASE		18
#define ZUS_OP_READ		19
#define ZUS_OP_WRITE		20
#define ZUS_OP_FSYNC		21
#define ZUS_OP_GETXATTR		23
#define ZUS_OP_SETXATTR		24
#define ZUS_OP_LISTXATTR	25
#define ZUS_OP_REMOVEXATTR	26
#define ZUS_OP_FORGET		29

#define ZUS_DATA_WINDOW		0
#define ZUS_NAME_MAX		255
#define ZUS_PATH_MAX		4096

#define ZUS_SETATTR_MODE	0x1U
#define ZUS_SETATTR_UID		0x2U
#define ZUS_SETATTR_GID		0x4U
#define ZUS_SETATTR_SIZE	0x8U
#define ZUS_SETATTR_ATIME	0x10U
#define ZUS_SETATTR_MTIME	0x20U
#define ZUS_SETATTR_ATIME_NOW	0x40U
#define ZUS_SETATTR_MTIME_NOW	0x80U
#define ZUS_SETATTR_CTIME	0x100U

#define ZUS_IO_FLAGS_SYNC	0x1U
#define ZUS_IO_FLAGS_DIRECT	0x2U
#define ZUS_IO_FLAGS_APPEND	0x4U

struct zus_channel_set_header {
	__u64 magic;
	__u32 abi_version;
	__u32 header_size;
	__u64 features;
	__u32 ncpu;
	__u32 slots_per_cpu;
	__u32 window_size;
	__u32 lane_size;
	__u64 lanes_offset;
	__u64 total_size;
	__u32 server_pid;
	__u32 client_id;
	__u32 client_spin_ns;
	__u32 nnodes;
	__u16 cpu_node[ZUS_MAX_CPUS];
	__u64 layout_gen;
	__u8 reserved[48];
} __attribute__((aligned(64)));

struct zus_lane_header {
	__u32 doorbell;
	__u8 _pad0[ZUS_CACHE_LINE - 4];
	__u32 zt_sleeping;
	__u32 zt_cpu;
	__u32 zt_polling;
	__u8 _pad1[ZUS_CACHE_LINE - 12];
	__u32 free_seq;
	__u32 free_waiters;
	__u8 _pad2[ZUS_CACHE_LINE - 8];
	__u64 reserved;
	__u64 ops_rejected;
	__u8 _pad3[ZUS_CACHE_LINE - 16];
} __attribute__((aligned(64)));

struct zus_op_header {
	__u32 opcode;
	__u32 flags;
	__u32 mount_id;
	__u32 in_len;
	__u32 out_len;
	__u32 data_len;
	__u64 seq;
	__s64 result;
	__u32 uid;
	__u32 gid;
	__u32 pid;
	__u32 reserved;
	__u64 ticket;
};

struct zus_slot {
	__u32 state;
	__u8 _pad0[ZUS_CACHE_LINE - 4];
	__u32 reply_seq;
	__u32 client_waiting;
	__u32 data_ready;
	__u8 _pad1[ZUS_CACHE_LINE - 12];
	struct zus_op_header hdr;
	__u8 payload[ZUS_PAYLOAD_SIZE];
} __attribute__((aligned(64)));

struct zus_attr {
	__u64 ino;
	__u64 generation;
	__u64 size;
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

struct zus_ino_req {
	__u64 ino;
};

struct zus_name_req {
	__u64 dir;
	__u32 name_len;
	__u32 reserved;
};

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

struct zus_create_req {
	__u64 dir;
	__u32 mode;
	__u32 rdev;
	__u32 flags;
	__u32 name_len;
};

struct zus_rename_req {
	__u64 old_dir;
	__u64 new_dir;
	__u32 flags;
	__u32 old_len;
	__u32 new_len;
	__u32 reserved;
};

struct zus_link_req {
	__u64 ino;
	__u64 new_dir;
	__u32 name_len;
	__u32 reserved;
};

struct zus_symlink_req {
	__u64 dir;
	__u32 name_len;
	__u32 target_len;
};

struct zus_readdir_req {
	__u64 dir;
	__u64 cookie;
};

struct zus_dirent {
	__u64 ino;
	__u64 cookie;
	__u32 kind;
	__u32 name_len;
};

struct zus_open_req {
	__u64 ino;
	__u32 flags;
	__u32 reserved;
};

struct zus_open_reply {
	__u64 fh;
};

struct zus_release_req {
	__u64 ino;
	__u64 fh;
};

struct zus_io_req {
	__u64 ino;
	__u64 fh;
	__u64 offset;
	__u64 len;
	__u32 flags;
	__u32 data_kind;
	__u32 niov;
	__u32 reserved;
};

struct zus_io_reply {
	__u64 size;
	__u64 offset;
};

struct zus_fsync_req {
	__u64 ino;
	__u64 fh;
	__u32 datasync;
	__u32 reserved;
};

struct zus_xattr_req {
	__u64 ino;
	__u32 name_len;
	__u32 flags;
	__u32 size;
	__u32 reserved;
};

struct zus_forget_req {
	__u64 ino;
	__u64 nlookup;
};

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

_Static_assert(sizeof(struct zus_attr) == 80, "attr");
_Static_assert(sizeof(struct zus_setattr_req) == 56, "setattr");
_Static_assert(sizeof(struct zus_create_req) == 24, "create");
_Static_assert(sizeof(struct zus_rename_req) == 32, "rename");
_Static_assert(sizeof(struct zus_link_req) == 24, "link");
_Static_assert(sizeof(struct zus_symlink_req) == 16, "symlink");
_Static_assert(sizeof(struct zus_dirent) == 24, "dirent");
_Static_assert(sizeof(struct zus_io_req) == 48, "io");
_Static_assert(sizeof(struct zus_fsync_req) == 24, "fsync");
_Static_assert(sizeof(struct zus_statfs_reply) == 56, "statfs");
_Static_assert(sizeof(struct zus_xattr_req) == 24, "xattr");
_Static_assert(sizeof(struct zus_channel_set_header) == 2176, "header size");
_Static_assert(offsetof(struct zus_channel_set_header, ncpu) == 24, "ncpu");
_Static_assert(offsetof(struct zus_channel_set_header, lanes_offset) == 40, "lanes_offset");
_Static_assert(offsetof(struct zus_channel_set_header, server_pid) == 56, "server_pid");
_Static_assert(offsetof(struct zus_channel_set_header, nnodes) == 68, "nnodes");
_Static_assert(offsetof(struct zus_channel_set_header, cpu_node) == 72, "cpu_node");
_Static_assert(offsetof(struct zus_channel_set_header, layout_gen) == 72 + 2 * ZUS_MAX_CPUS, "layout_gen");
_Static_assert(sizeof(struct zus_lane_header) == 256, "lane header size");
_Static_assert(offsetof(struct zus_lane_header, zt_cpu) == 68, "zt_cpu");
_Static_assert(offsetof(struct zus_lane_header, free_seq) == 128, "free_seq");
_Static_assert(offsetof(struct zus_lane_header, ops_rejected) == 200, "ops_rejected");
_Static_assert(sizeof(struct zus_op_header) == 64, "op header size");
_Static_assert(offsetof(struct zus_op_header, seq) == 24, "seq");
_Static_assert(offsetof(struct zus_op_header, result) == 32, "result");
_Static_assert(offsetof(struct zus_op_header, uid) == 40, "uid");
_Static_assert(offsetof(struct zus_op_header, ticket) == 56, "ticket");
_Static_assert(sizeof(struct zus_slot) == ZUS_SLOT_SIZE, "slot size");
_Static_assert(offsetof(struct zus_slot, reply_seq) == 64, "reply_seq");
_Static_assert(offsetof(struct zus_slot, data_ready) == 72, "data_ready");
_Static_assert(offsetof(struct zus_slot, hdr) == 128, "hdr");
_Static_assert(offsetof(struct zus_slot, payload) == 192, "payload");

#endif /* ZUS_API_TMP_H */
