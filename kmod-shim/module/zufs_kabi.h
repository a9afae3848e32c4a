/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The ioctl ABI of /dev/zufs, shared by the zufs module, zusd and the test
 * servers. zus-api/src/kabi.rs defines the same structs and numbers for Rust;
 * both sides assert every size and offset.
 *
 * A server opens /dev/zufs (O_CLOEXEC), sends ZUFS_IOC_HELLO and mmaps
 * hello.total_size bytes MAP_SHARED at offset 0: a channel set laid out as
 * zus-api's chan.rs Geometry, lane i for CPU i. Then one thread per CPU, pinned
 * to that CPU alone, sends ZUFS_IOC_ZT_INIT and loops: serve every SUBMITTED
 * slot of its lane (SUBMITTED -> SERVING -> DONE, as for any client), then
 * ZUFS_IOC_ZT_WAIT, which reports the DONE slots to their kernel callers and
 * sleeps until a slot is SUBMITTED, a kick, or a break. Closing the last fd
 * (and mapping) ends the session: every kernel op waiting or sent later fails
 * with EIO.
 */
#ifndef ZUFS_KABI_H
#define ZUFS_KABI_H

#include <linux/types.h>
#include <linux/ioctl.h>
#ifndef __KERNEL__
#include <stddef.h>
#endif

#define ZUFS_IOC_TYPE		'Z'

/* chan.rs aligns lanes and data windows to this, whatever the page size */
#define ZUFS_SET_PAGE		4096

/* Default and limits of the kernel channel set */
#define ZUFS_DEFAULT_SLOTS	4
#define ZUFS_DEFAULT_WINDOW	(256 * 1024)
#define ZUFS_MAX_WINDOW		(4 * 1024 * 1024)
#define ZUFS_MAX_SET_SIZE	(1ULL << 30)

/* HELLO: create the session's channel set (once per fd; one session at a time) */
struct zufs_ioc_hello {
	__u64 magic;		/* in: ZUS_MAGIC */
	__u32 abi_version;	/* in: ZUS_ABI_VERSION */
	__u32 slots_per_cpu;	/* in: 1..64, 0 = default; out: used */
	__u32 window_size;	/* in: 4 KiB multiple up to 4 MiB, 0 = default; out */
	__u32 ncpu;		/* out: lanes (the kernel's nr_cpu_ids) */
	__u64 features;		/* in: written to the set header's features */
	__u64 total_size;	/* out: bytes to mmap at offset 0 */
	__u32 lane_size;	/* out */
	__u32 nnodes;		/* out: NUMA node ids (nr_node_ids) */
	__u32 flags;		/* in: 0 */
	__u32 reserved[5];	/* in: 0 */
};

/* ZT_INIT: the calling thread, pinned to @cpu alone, becomes lane @cpu's ZT */
struct zufs_ioc_zt_init {
	__u32 cpu;
	__u32 flags;		/* in: 0 */
	__u64 reserved;		/* in: 0 */
};

/* ZT_WAIT flags (out) */
#define ZUFS_ZT_KICKED		(1U << 0)	/* KICK_ALL since the last wait */
#define ZUFS_ZT_BREAK		(1U << 1)	/* BREAK: the server shuts down */

/* ZT_WAIT: report DONE slots, sleep until SUBMITTED / kick / break */
struct zufs_ioc_zt_wait {
	__u32 cpu;		/* in: the caller's lane */
	__u32 flags;		/* out: ZUFS_ZT_* */
	__u32 completed;	/* out: kernel ops this call completed */
	__u32 submitted;	/* out: SUBMITTED slots seen when it returned */
};

/* DBG_OP flags (in) */
#define ZUFS_DBG_F_ARGS		(1U << 0)	/* send args[0..nargs) as payload */

/*
 * DBG_OP: send one NOOP from the calling CPU through the kernel channel set,
 * as the filesystem sends its ops, and tell which lane and ZT served it.
 * Data in goes to the slot's window; reply data comes back to data_out.
 */
struct zufs_ioc_dbg_op {
	__u32 flags;		/* in: ZUFS_DBG_F_* */
	__u32 nargs;		/* in: 0..4 */
	__u64 args[4];		/* in: request payload (8 * nargs bytes) */
	__u64 data_in;		/* in: user address of request data */
	__u32 data_in_len;	/* in: bytes (<= window) */
	__u32 reply_size;	/* in: reply payload bytes accepted (<= payload) */
	__u64 data_out;		/* in: user address for reply data */
	__u32 data_out_size;	/* in: bytes accepted (<= window) */
	__u32 reserved;		/* in: 0 */
	__s64 result_max;	/* in: largest non-negative result accepted */
	__s64 result;		/* out: the server's result (>= 0) */
	__u32 submit_cpu;	/* out: CPU the op was sent from */
	__u32 lane;		/* out: lane it went to */
	__u32 zt_cpu;		/* out: CPU that lane's ZT registered for */
	__u32 done_cpu;		/* out: CPU the ZT reported DONE from */
	__u32 out_len;		/* out: reply payload bytes */
	__u32 data_len;		/* out: reply data bytes */
	__u64 reply[4];		/* out: the first 32 bytes of the reply payload */
};

#define ZUFS_IOC_HELLO		_IOWR(ZUFS_IOC_TYPE, 0x40, struct zufs_ioc_hello)
#define ZUFS_IOC_ZT_INIT	_IOW(ZUFS_IOC_TYPE, 0x41, struct zufs_ioc_zt_init)
#define ZUFS_IOC_ZT_WAIT	_IOWR(ZUFS_IOC_TYPE, 0x42, struct zufs_ioc_zt_wait)
#define ZUFS_IOC_KICK_ALL	_IO(ZUFS_IOC_TYPE, 0x43)
#define ZUFS_IOC_BREAK		_IO(ZUFS_IOC_TYPE, 0x44)
#define ZUFS_IOC_DBG_OP		_IOWR(ZUFS_IOC_TYPE, 0x4f, struct zufs_ioc_dbg_op)

_Static_assert(sizeof(struct zufs_ioc_hello) == 72, "hello size");
_Static_assert(offsetof(struct zufs_ioc_hello, features) == 24, "hello features");
_Static_assert(offsetof(struct zufs_ioc_hello, total_size) == 32, "hello total_size");
_Static_assert(offsetof(struct zufs_ioc_hello, flags) == 48, "hello flags");
_Static_assert(sizeof(struct zufs_ioc_zt_init) == 16, "zt_init size");
_Static_assert(sizeof(struct zufs_ioc_zt_wait) == 16, "zt_wait size");
_Static_assert(sizeof(struct zufs_ioc_dbg_op) == 144, "dbg_op size");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, data_in) == 40, "dbg data_in");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, data_out) == 56, "dbg data_out");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, result_max) == 72, "dbg result_max");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, result) == 80, "dbg result");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, submit_cpu) == 88, "dbg submit_cpu");
_Static_assert(offsetof(struct zufs_ioc_dbg_op, reply) == 112, "dbg reply");

#endif /* ZUFS_KABI_H */
