/* A zufs plugin written in C, used by the end-to-end tests to show the vtable is a C ABI.
 * It includes the generated zus-api/include/zus_api.h (build with -I zus-api/include).
 * Built twice: with its default ABI version (loads; its working ops are getattr on the root,
 * and a write whose result is the sum of the bytes it was handed) and -DABI_VERSION=999 (zusd
 * must refuse it, naming both versions). It declares no STREAMED_WINDOW flag: zusd must hand it
 * a streamed write's data whole, with no ready word. */
#include <string.h>
#include <errno.h>

#include "zus_api.h"

#ifndef ABI_VERSION
#define ABI_VERSION ZUS_ABI_VERSION
#endif
#ifndef FS_NAME
#define FS_NAME "cnull"
#endif

static int handle = 42;
static const struct zus_host_api *host;

static __s64 c_mount(const struct zus_device_desc *d, const __u8 *o, size_t ol, void **h, __u64 *root, __u8 *m,
		     size_t mc)
{
	(void)d; (void)o; (void)ol; (void)m; (void)mc;
	*h = &handle;
	*root = 1;
	if (host && host->log)
		host->log(ZUS_LOG_LEVEL_INFO, (const __u8 *)"cnull mounted", 13);
	return 0;
}

static __s64 c_unmount(void *h) { return h == &handle ? 0 : -EINVAL; }

static __s64 c_op(void *h, struct zus_op_call *c)
{
	if (h != &handle)
		return -EINVAL;
	if (c->hdr.opcode == ZUS_OP_GETATTR && c->req_len >= sizeof(struct zus_ino_req)) {
		struct zus_ino_req r;
		memcpy(&r, c->req, sizeof r);
		if (r.ino != 1)
			return -ENOENT;
		struct zus_attr a = { .ino = 1, .generation = 1, .mode = 0040755, .nlink = 2, .blksize = 4096 };
		if (c->reply_cap < sizeof a)
			return -EOVERFLOW;
		memcpy(c->reply, &a, sizeof a);
		c->reply_len = sizeof a;
		return 0;
	}
	if (c->hdr.opcode == ZUS_OP_WRITE && c->req_len >= sizeof(struct zus_io_req)) {
		struct zus_io_req r;
		memcpy(&r, c->req, sizeof r);
		if (c->data.kind != ZUS_DATA_KIND_WINDOW || c->data.ready != NULL)
			return -EPROTO;
		if (r.len > c->data.window_len)
			return -EINVAL;
		__s64 sum = 0;
		for (__u64 i = 0; i < r.len; i++)
			sum += c->data.window[i];
		return sum;
	}
	return -ENOSYS;
}

static const struct zus_plugin_vtable vt = {
	.magic = ZUS_PLUGIN_MAGIC,
	.abi_version = ABI_VERSION,
	.struct_size = sizeof(struct zus_plugin_vtable),
	.name = FS_NAME,
	.mount = c_mount,
	.unmount = c_unmount,
	.op = c_op,
};

const struct zus_plugin_vtable *zus_plugin_register(const struct zus_host_api *h)
{
	host = h;
	return &vt;
}
