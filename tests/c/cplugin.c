/* A zufs plugin written in C, used by the end-to-end tests to show the vtable is a C ABI.
 * Built twice: -DABI_VERSION=1 (loads; its working ops are getattr on the root, and a write whose
 * result is the sum of the bytes it was handed) and -DABI_VERSION=999 (zusd must refuse it,
 * naming both versions). It declares no STREAMED_WINDOW flag: zusd must hand it a streamed
 * write's data whole, with no ready word. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>

#ifndef ABI_VERSION
#define ABI_VERSION 1
#endif
#ifndef FS_NAME
#define FS_NAME "cnull"
#endif

struct host_api { uint64_t magic; uint32_t abi_version, struct_size; void (*log)(uint32_t, const uint8_t *, size_t); };
struct device_desc { uint8_t *base; uint64_t len; uint32_t map_sync, read_only; };
struct op_header { uint32_t opcode, flags, mount_id, in_len, out_len, data_len; uint64_t seq; int64_t result; uint32_t uid, gid, pid, reserved[3]; };
struct data_desc { uint32_t kind; int32_t pid; uint8_t *window; uint64_t window_len; const void *iov; uint64_t niov; uint32_t *ready; };
struct op_call { struct op_header hdr; const uint8_t *req; size_t req_len; uint8_t *reply; size_t reply_cap, reply_len, data_out; struct data_desc data; };
struct attr { uint64_t ino, generation, size, blocks; int64_t atime, mtime, ctime; uint32_t mode, nlink, uid, gid, rdev, blksize; };
struct vtable {
    uint64_t magic; uint32_t abi_version, struct_size; uint8_t name[16]; uint32_t flags, reserved;
    int64_t (*mkfs)(const struct device_desc *, const uint8_t *, size_t, uint8_t *, size_t);
    int64_t (*fsck)(const struct device_desc *, uint64_t *, uint8_t *, size_t);
    int64_t (*mount)(const struct device_desc *, const uint8_t *, size_t, void **, uint64_t *, uint8_t *, size_t);
    int64_t (*unmount)(void *);
    int64_t (*op)(void *, struct op_call *);
};

static int handle = 42;
static const struct host_api *host;

static int64_t c_mount(const struct device_desc *d, const uint8_t *o, size_t ol, void **h, uint64_t *root, uint8_t *m, size_t mc)
{
    (void)d; (void)o; (void)ol; (void)m; (void)mc;
    *h = &handle;
    *root = 1;
    if (host && host->log) host->log(3, (const uint8_t *)"cnull mounted", 13);
    return 0;
}
static int64_t c_unmount(void *h) { return h == &handle ? 0 : -EINVAL; }
static int64_t c_op(void *h, struct op_call *c)
{
    if (h != &handle) return -EINVAL;
    if (c->hdr.opcode == 5 /* getattr */ && c->req_len >= 8) {
        uint64_t ino; memcpy(&ino, c->req, 8);
        if (ino != 1) return -ENOENT;
        struct attr a = { .ino = 1, .generation = 1, .mode = 0040755, .nlink = 2, .blksize = 4096 };
        if (c->reply_cap < sizeof a) return -EOVERFLOW;
        memcpy(c->reply, &a, sizeof a);
        c->reply_len = sizeof a;
        return 0;
    }
    if (c->hdr.opcode == 20 /* write */ && c->req_len >= 48) {
        uint64_t len; memcpy(&len, c->req + 24, 8);
        if (c->data.kind != 1 /* window */ || c->data.ready != NULL) return -EPROTO;
        if (len > c->data.window_len) return -EINVAL;
        int64_t sum = 0;
        for (uint64_t i = 0; i < len; i++) sum += c->data.window[i];
        return sum;
    }
    return -ENOSYS;
}

static const struct vtable vt = {
    .magic = 0x3147554c5053555aULL, /* "ZUSPLUG1" little-endian */
    .abi_version = ABI_VERSION, .struct_size = sizeof(struct vtable), .name = FS_NAME,
    .mount = c_mount, .unmount = c_unmount, .op = c_op,
};

const struct vtable *zus_plugin_register(const struct host_api *h) { host = h; return &vt; }
