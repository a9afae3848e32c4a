/* SPDX-License-Identifier: GPL-2.0 */
/*
 * zufs: internal declarations of the module.
 */
#ifndef ZUFS_H
#define ZUFS_H

#include <linux/types.h>
#include <linux/uio.h>

/* generated from the Rust ABI: zus-api/include (Kbuild adds it to the path) */
#include "zus_api.h"

/* chan.rs aligns lanes and data windows to this, whatever the page size */
#define ZUFS_SET_PAGE		4096

/*
 * One op sent to zusd through the kernel channel set. The caller fills the
 * "in" part; zufs_dispatch() fills the "out" part only from values it read
 * once from the slot and checked.
 */
struct zufs_op {
	/* in */
	u32 opcode;
	u32 flags;		/* ZUS op header flags */
	u32 mount_id;
	u64 ticket;
	const void *req;	/* request payload: fixed struct + names */
	u32 req_len;		/* <= ZUS_PAYLOAD_SIZE */
	void *reply;		/* reply payload buffer */
	u32 reply_size;		/* bytes of @reply */
	u32 reply_min;		/* a success must carry at least this much */
	s64 result_max;		/* largest non-negative result accepted */
	struct iov_iter *data_in;	/* request data into the window, or NULL */
	size_t data_in_len;
	struct iov_iter *data_out;	/* reply data out of the window, or NULL */
	size_t data_out_size;

	/* out */
	u32 reply_len;
	u32 data_len;

	/* out, for the debug ioctl */
	int submit_cpu;
	int lane;
	int zt_cpu;
	int done_cpu;
};

s64 zufs_dispatch(struct zufs_op *op);
size_t zufs_data_max(void);

int zufs_fs_init(void);
void zufs_fs_exit(void);

#endif /* ZUFS_H */
