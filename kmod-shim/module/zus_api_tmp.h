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

/* op codes (ops.rs OpCode), only those the module sends so far */
#define ZUS_OP_NOOP		1

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
