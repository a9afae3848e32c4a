// SPDX-License-Identifier: GPL-2.0
/*
 * fake-zusd: a small server for /dev/zufs and the transport tests that use it.
 *
 *   fake-zusd test     run every transport test; prints "TEST name ... ok"
 *                      or "TEST name ... FAILED: why" per test
 *   fake-zusd serve [SLOTS [WINDOW]]
 *                      serve until SIGTERM (SIGUSR1 kicks every ZT and
 *                      writes the FORGET count to /tmp/fake-zusd.forgets;
 *                      SIGUSR2 changes files behind the kernel's back, as
 *                      another client would: see fs_external_change)
 *
 * The server does what zusd does with the kernel channel set: HELLO, mmap,
 * one thread per CPU pinned to it (ZT_INIT), and per lane the same
 * SUBMITTED -> SERVING -> DONE exchange as zusd's serve_pass, then ZT_WAIT.
 * What it replies is chosen per op by the request payload (args[0]): a NOOP
 * without payload gets zusd's NOOP reply; the B_* behaviours reply with
 * malformed headers, delay or never reply, so the tests can check that the
 * module refuses what it must and never hangs.
 *
 * Built static (gcc -static); runs in the guest's busybox initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zus_api.h"	/* zus-api/include: generated from the Rust ABI */

#define ZUFS_SET_PAGE	4096	/* chan.rs's alignment of lanes and windows */

#define DEV "/dev/zufs"
#define MAX_THREADS 256

/* behaviours, chosen by args[0] */
enum {
	B_OK = 1,	/* reply[] = served cpu, uid, gid, pid; out_len 32 */
	B_ECHO,		/* window data back xor 0x5a; reply[] = in_len, data_len, seq */
	B_OUTLEN,	/* out_len = args[1] */
	B_DATALEN,	/* data_len = args[1] */
	B_RESULT,	/* result = args[1] */
	B_SEQ,		/* reply for another seq */
	B_DELAY,	/* reply after args[1] microseconds */
	B_HANG,		/* never reply */
	B_SCRIBBLE,	/* garbage header, and every free slot of the lane DONE */
};

static int npass, nfail;

static void report(const char *name, int ok, const char *fmt, ...)
{
	char why[256] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
	}
	if (ok) {
		npass++;
		dprintf(1, "TEST %s ... ok\n", name);
	} else {
		nfail++;
		dprintf(1, "TEST %s ... FAILED: %s\n", name, why);
	}
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static int online_cpus(int *cpus)
{
	cpu_set_t set;
	int n = 0, c;

	if (sched_getaffinity(0, sizeof(set), &set))
		return 0;
	for (c = 0; c < CPU_SETSIZE && n < MAX_THREADS; c++)
		if (CPU_ISSET(c, &set))
			cpus[n++] = c;
	return n;
}

/* ======================= the server ======================= */

struct server {
	int fd;
	char *mem;
	struct zufs_ioc_hello h;
	size_t ctl;
	int ncpus;
	int cpus[MAX_THREADS];
	pthread_t zt[MAX_THREADS];
	int kicked[MAX_THREADS];
	int broke[MAX_THREADS];
	int started;
};

static struct server srv;

static struct zus_slot *slot_at(int lane, int i)
{
	return (struct zus_slot *)(srv.mem + ZUFS_SET_PAGE +
		ZUS_DAX_READER_SLOTS * ZUS_CACHE_LINE +
		(size_t)lane * srv.h.lane_size + sizeof(struct zus_lane_header) +
		(size_t)i * ZUS_SLOT_SIZE);
}

static unsigned char *window_at(int lane, int i)
{
	return (unsigned char *)srv.mem + ZUFS_SET_PAGE +
		ZUS_DAX_READER_SLOTS * ZUS_CACHE_LINE +
		(size_t)lane * srv.h.lane_size + srv.ctl +
		(size_t)i * srv.h.window_size;
}


/* ============ a small in-memory filesystem (mount_id FS_MOUNT_ID) ============ */

#define FS_MOUNT_ID	7
#define FS_ROOT		1
#define FS_NODES	8192
#define FS_HANG_NAME	"hang-forever"	/* a lookup of it is never answered */
/*
 * READDIR_PLUS of a directory of the root with one of these names answers
 * records a broken zusd might: attributes naming another inode, a type
 * other than the entry's, a mode of no type (the module must give back or
 * keep each lookup reference as zusd counted it, and list the names); or
 * a record whose name runs past the data (EIO for the listing).
 */
#define FS_RDP_ODD	"rdp-odd"
#define FS_RDP_BROKEN	"rdp-broken"
/* ... and of this one ENOSYS, as a zusd without the op (the module then uses READDIR) */
#define FS_RDP_NOSYS	"rdp-nosys"

struct fent {
	char name[ZUS_NAME_MAX + 1];
	uint64_t ino;
};

#define FS_XATTRS	16

struct fxattr {
	char name[256];
	unsigned char *val;
	uint32_t len;
};

struct fnode {
	int used;
	struct zus_attr a;
	uint64_t nlookup;
	unsigned char *data;	/* symlink target */
	unsigned char **chunks;	/* file bytes, FS_CHUNK each; NULL: a hole */
	size_t nchunks;
	struct fent *ents;	/* directory entries */
	uint32_t nents, cents;
	struct fxattr xa[FS_XATTRS];
	uint32_t nxa;
};

static struct fnode fs_nodes[FS_NODES];
static pthread_mutex_t fs_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t fs_forgets;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct fnode *fs_node(uint64_t ino)
{
	return ino && ino < FS_NODES && fs_nodes[ino].used ? &fs_nodes[ino] : NULL;
}

static struct fnode *fs_new(uint32_t mode, uint32_t uid, uint32_t gid)
{
	uint64_t i;

	for (i = FS_ROOT; i < FS_NODES; i++) {
		struct fnode *n = &fs_nodes[i];

		if (n->used)
			continue;
		memset(n, 0, sizeof(*n));
		n->used = 1;
		n->a.ino = i;
		n->a.generation = 1;
		n->a.mode = mode;
		n->a.nlink = S_ISDIR(mode) ? 2 : 1;
		n->a.uid = uid;
		n->a.gid = gid;
		n->a.blksize = 4096;
		n->a.atime_ns = n->a.mtime_ns = n->a.ctime_ns = now_ns();
		return n;
	}
	return NULL;
}

static void fs_maybe_free(struct fnode *n)
{
	uint32_t i;

	if (n->a.nlink || n->nlookup || n->a.ino == FS_ROOT)
		return;
	free(n->data);
	free(n->ents);
	for (i = 0; i < n->nchunks; i++)
		free(n->chunks[i]);
	free(n->chunks);
	for (i = 0; i < n->nxa; i++)
		free(n->xa[i].val);
	n->used = 0;
}

static int fs_xfind(struct fnode *n, const char *name, uint32_t len)
{
	uint32_t i;

	for (i = 0; i < n->nxa; i++)
		if (strlen(n->xa[i].name) == len && !memcmp(n->xa[i].name, name, len))
			return i;
	return -1;
}

static int fs_find(struct fnode *d, const char *name, uint32_t len)
{
	uint32_t i;

	for (i = 0; i < d->nents; i++)
		if (strlen(d->ents[i].name) == len &&
		    !memcmp(d->ents[i].name, name, len))
			return i;
	return -1;
}

/* whether the root's entry @name is the directory @ino */
static int fs_root_entry_is(const char *name, uint64_t ino)
{
	struct fnode *root = fs_node(FS_ROOT);
	int i = fs_find(root, name, strlen(name));

	return i >= 0 && root->ents[i].ino == ino;
}

static int fs_add(struct fnode *d, const char *name, uint32_t len, uint64_t ino)
{
	if (d->nents == d->cents) {
		uint32_t c = d->cents ? 2 * d->cents : 16;
		struct fent *e = realloc(d->ents, c * sizeof(*e));

		if (!e)
			return -ENOSPC;
		d->ents = e;
		d->cents = c;
	}
	memcpy(d->ents[d->nents].name, name, len);
	d->ents[d->nents].name[len] = 0;
	d->ents[d->nents].ino = ino;
	d->nents++;
	d->a.mtime_ns = d->a.ctime_ns = now_ns();
	return 0;
}

static void fs_del(struct fnode *d, int i)
{
	/* keep the order: readdir cookies are indexes */
	memmove(&d->ents[i], &d->ents[i + 1], (d->nents - i - 1) * sizeof(d->ents[0]));
	d->nents--;
	d->a.mtime_ns = d->a.ctime_ns = now_ns();
}

/* Files are sparse: chunks are allocated where written. */
#define FS_CHUNK	(64 << 10)
#define FS_MAX_FILE	(16ULL << 30)

static void fs_blocks(struct fnode *n)
{
	size_t i, k = 0;

	for (i = 0; i < n->nchunks; i++)
		k += !!n->chunks[i];
	n->a.blocks = k * (FS_CHUNK / 512);
}

static int fs_resize(struct fnode *n, uint64_t size)
{
	size_t want = (size + FS_CHUNK - 1) / FS_CHUNK, i;

	if (size > FS_MAX_FILE)
		return -EFBIG;
	if (want > n->nchunks) {
		unsigned char **c = realloc(n->chunks, want * sizeof(*c));

		if (!c)
			return -ENOSPC;
		memset(c + n->nchunks, 0, (want - n->nchunks) * sizeof(*c));
		n->chunks = c;
		n->nchunks = want;
	} else {
		for (i = want; i < n->nchunks; i++) {
			free(n->chunks[i]);
			n->chunks[i] = NULL;
		}
		n->nchunks = want;
	}
	/* a later extension reads zeros past the new end */
	if (size < n->a.size && size % FS_CHUNK && n->chunks[size / FS_CHUNK])
		memset(n->chunks[size / FS_CHUNK] + size % FS_CHUNK, 0,
		       FS_CHUNK - size % FS_CHUNK);
	n->a.size = size;
	fs_blocks(n);
	return 0;
}

static void fs_read(struct fnode *n, uint64_t off, unsigned char *dst, uint64_t len)
{
	while (len) {
		uint64_t k = off / FS_CHUNK, o = off % FS_CHUNK;
		uint64_t l = FS_CHUNK - o < len ? FS_CHUNK - o : len;

		if (k < n->nchunks && n->chunks[k])
			memcpy(dst, n->chunks[k] + o, l);
		else
			memset(dst, 0, l);
		dst += l;
		off += l;
		len -= l;
	}
}

/* within the size */
static int fs_write(struct fnode *n, uint64_t off, const unsigned char *src, uint64_t len)
{
	while (len) {
		uint64_t k = off / FS_CHUNK, o = off % FS_CHUNK;
		uint64_t l = FS_CHUNK - o < len ? FS_CHUNK - o : len;

		if (!n->chunks[k]) {
			n->chunks[k] = calloc(1, FS_CHUNK);
			if (!n->chunks[k])
				return -ENOSPC;
		}
		memcpy(n->chunks[k] + o, src, l);
		src += l;
		off += l;
		len -= l;
	}
	fs_blocks(n);
	return 0;
}

static int name_ok(const char *p, uint32_t len)
{
	return len && len <= ZUS_NAME_MAX && !memchr(p, '/', len) && !memchr(p, 0, len);
}

/* Serves one filesystem op; returns 0 to reply, 1 to never reply. */
static int fs_serve(struct zus_slot *sl, struct zus_op_header *h,
		    unsigned char *w, uint32_t wsize)
{
	unsigned char req[ZUS_PAYLOAD_SIZE];
	unsigned char *out = sl->payload;
	uint32_t in = h->in_len, din = h->data_len;
	struct fnode *n, *d, *d2;
	int64_t r = 0;
	int i, j;

	h->out_len = 0;
	h->data_len = 0;

	if (in > sizeof(req) || h->mount_id != FS_MOUNT_ID) {
		h->result = -EINVAL;
		return 0;
	}
	memcpy(req, sl->payload, in);
	pthread_mutex_lock(&fs_lock);
#define NEED(t) do { if (in < sizeof(t)) { r = -EINVAL; goto out; } } while (0)
#define ATTR(node) do { memcpy(out, &(node)->a, sizeof((node)->a)); \
			h->out_len = sizeof((node)->a); } while (0)
	switch (h->opcode) {
	case ZUS_OP_STATFS: {
		struct zus_statfs_reply s = { .blocks = 1 << 20, .bfree = 1 << 19,
			.bavail = 1 << 19, .files = FS_NODES, .ffree = FS_NODES / 2,
			.bsize = 4096, .namelen = ZUS_NAME_MAX, .frsize = 4096 };

		memcpy(out, &s, sizeof(s));
		h->out_len = sizeof(s);
		break;
	}
	case ZUS_OP_GETATTR: {
		struct zus_ino_req q;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n) { r = -ENOENT; break; }
		ATTR(n);
		break;
	}
	case ZUS_OP_SETATTR: {
		struct zus_setattr_req q;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n) { r = -ENOENT; break; }
		if (q.valid & ZUS_SETATTR_SIZE) {
			if (!S_ISREG(n->a.mode)) { r = -EINVAL; break; }
			r = fs_resize(n, q.size);
			if (r)
				break;
			n->a.mtime_ns = now_ns();
		}
		if (q.valid & ZUS_SETATTR_MODE)
			n->a.mode = (n->a.mode & S_IFMT) | (q.mode & 07777);
		if (q.valid & ZUS_SETATTR_UID)
			n->a.uid = q.uid;
		if (q.valid & ZUS_SETATTR_GID)
			n->a.gid = q.gid;
		if (q.valid & ZUS_SETATTR_ATIME)
			n->a.atime_ns = q.atime_ns;
		if (q.valid & ZUS_SETATTR_ATIME_NOW)
			n->a.atime_ns = now_ns();
		if (q.valid & ZUS_SETATTR_MTIME)
			n->a.mtime_ns = q.mtime_ns;
		if (q.valid & ZUS_SETATTR_MTIME_NOW)
			n->a.mtime_ns = now_ns();
		n->a.ctime_ns = now_ns();
		ATTR(n);
		break;
	}
	case ZUS_OP_LOOKUP: {
		struct zus_name_req q;
		const char *nm = (char *)req + sizeof(q);

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (in != sizeof(q) + q.name_len || !name_ok(nm, q.name_len)) { r = -EINVAL; break; }
		if (q.name_len == strlen(FS_HANG_NAME) && !memcmp(nm, FS_HANG_NAME, q.name_len)) {
			pthread_mutex_unlock(&fs_lock);
			return 1;
		}
		d = fs_node(q.dir);
		if (!d || !S_ISDIR(d->a.mode)) { r = -ENOTDIR; break; }
		i = fs_find(d, nm, q.name_len);
		if (i < 0) { r = -ENOENT; break; }
		n = fs_node(d->ents[i].ino);
		n->nlookup++;
		ATTR(n);
		break;
	}
	case ZUS_OP_CREATE:
	case ZUS_OP_MKNOD:
	case ZUS_OP_MKDIR: {
		struct zus_create_req q;
		const char *nm = (char *)req + sizeof(q);

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (in != sizeof(q) + q.name_len || !name_ok(nm, q.name_len)) { r = -EINVAL; break; }
		d = fs_node(q.dir);
		if (!d || !S_ISDIR(d->a.mode)) { r = -ENOTDIR; break; }
		if (fs_find(d, nm, q.name_len) >= 0) { r = -EEXIST; break; }
		if (h->opcode == ZUS_OP_MKDIR)
			q.mode = S_IFDIR | (q.mode & 07777);
		else if (h->opcode == ZUS_OP_CREATE)
			q.mode = S_IFREG | (q.mode & 07777);
		n = fs_new(q.mode, h->uid, h->gid);
		if (!n) { r = -ENOSPC; break; }
		n->a.rdev = q.rdev;
		r = fs_add(d, nm, q.name_len, n->a.ino);
		if (r) { n->a.nlink = 0; fs_maybe_free(n); break; }
		if (S_ISDIR(q.mode))
			d->a.nlink++;
		n->nlookup++;
		ATTR(n);
		break;
	}
	case ZUS_OP_UNLINK:
	case ZUS_OP_RMDIR: {
		struct zus_name_req q;
		const char *nm = (char *)req + sizeof(q);

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (in != sizeof(q) + q.name_len || !name_ok(nm, q.name_len)) { r = -EINVAL; break; }
		d = fs_node(q.dir);
		if (!d || !S_ISDIR(d->a.mode)) { r = -ENOTDIR; break; }
		i = fs_find(d, nm, q.name_len);
		if (i < 0) { r = -ENOENT; break; }
		n = fs_node(d->ents[i].ino);
		if (h->opcode == ZUS_OP_UNLINK && S_ISDIR(n->a.mode)) { r = -EISDIR; break; }
		if (h->opcode == ZUS_OP_RMDIR) {
			if (!S_ISDIR(n->a.mode)) { r = -ENOTDIR; break; }
			if (n->nents) { r = -ENOTEMPTY; break; }
			d->a.nlink--;
			n->a.nlink = 0;
		} else {
			n->a.nlink--;
		}
		n->a.ctime_ns = now_ns();
		fs_del(d, i);
		fs_maybe_free(n);
		break;
	}
	case ZUS_OP_RENAME: {
		struct zus_rename_req q;
		const char *on = (char *)req + sizeof(q), *nn;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		nn = on + q.old_len;
		if (in != sizeof(q) + q.old_len + q.new_len || !name_ok(on, q.old_len) ||
		    !name_ok(nn, q.new_len) || (q.flags & ~3u)) { r = -EINVAL; break; }
		d = fs_node(q.old_dir);
		d2 = fs_node(q.new_dir);
		if (!d || !d2 || !S_ISDIR(d->a.mode) || !S_ISDIR(d2->a.mode)) { r = -ENOTDIR; break; }
		i = fs_find(d, on, q.old_len);
		if (i < 0) { r = -ENOENT; break; }
		n = fs_node(d->ents[i].ino);
		j = fs_find(d2, nn, q.new_len);
		if (q.flags & 2) {	/* exchange */
			uint64_t t;

			if (j < 0) { r = -ENOENT; break; }
			t = d->ents[i].ino;
			d->ents[i].ino = d2->ents[j].ino;
			d2->ents[j].ino = t;
			break;
		}
		if (j >= 0) {
			struct fnode *o = fs_node(d2->ents[j].ino);

			if (q.flags & 1) { r = -EEXIST; break; }
			if (o == n)
				break;
			if (S_ISDIR(o->a.mode) != S_ISDIR(n->a.mode)) {
				r = S_ISDIR(o->a.mode) ? -EISDIR : -ENOTDIR;
				break;
			}
			if (S_ISDIR(o->a.mode)) {
				if (o->nents) { r = -ENOTEMPTY; break; }
				o->a.nlink = 0;
				d2->a.nlink--;
			} else {
				o->a.nlink--;
			}
			o->a.ctime_ns = now_ns();
			fs_del(d2, j);
			fs_maybe_free(o);
			if (d == d2 && j < i)
				i--;
		}
		fs_del(d, i);
		r = fs_add(d2, nn, q.new_len, n->a.ino);
		if (!r && S_ISDIR(n->a.mode) && d != d2) {
			d->a.nlink--;
			d2->a.nlink++;
		}
		n->a.ctime_ns = now_ns();
		break;
	}
	case ZUS_OP_LINK: {
		struct zus_link_req q;
		const char *nm = (char *)req + sizeof(q);

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (in != sizeof(q) + q.name_len || !name_ok(nm, q.name_len)) { r = -EINVAL; break; }
		n = fs_node(q.ino);
		d = fs_node(q.new_dir);
		if (!n || !d) { r = -ENOENT; break; }
		if (S_ISDIR(n->a.mode)) { r = -EPERM; break; }
		if (fs_find(d, nm, q.name_len) >= 0) { r = -EEXIST; break; }
		r = fs_add(d, nm, q.name_len, n->a.ino);
		if (r)
			break;
		n->a.nlink++;
		n->nlookup++;
		n->a.ctime_ns = now_ns();
		ATTR(n);
		break;
	}
	case ZUS_OP_SYMLINK: {
		struct zus_symlink_req q;
		const char *nm = (char *)req + sizeof(q), *t;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		t = nm + q.name_len;
		if (in != sizeof(q) + q.name_len + q.target_len || !name_ok(nm, q.name_len) ||
		    !q.target_len || q.target_len >= ZUS_PATH_MAX) { r = -EINVAL; break; }
		d = fs_node(q.dir);
		if (!d || !S_ISDIR(d->a.mode)) { r = -ENOTDIR; break; }
		if (fs_find(d, nm, q.name_len) >= 0) { r = -EEXIST; break; }
		n = fs_new(S_IFLNK | 0777, h->uid, h->gid);
		if (!n) { r = -ENOSPC; break; }
		n->data = malloc(q.target_len);
		memcpy(n->data, t, q.target_len);
		n->a.size = q.target_len;
		fs_add(d, nm, q.name_len, n->a.ino);
		n->nlookup++;
		ATTR(n);
		break;
	}
	case ZUS_OP_READLINK: {
		struct zus_ino_req q;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n || !S_ISLNK(n->a.mode)) { r = -EINVAL; break; }
		memcpy(w, n->data, n->a.size);
		h->data_len = n->a.size;
		r = n->a.size;
		break;
	}
	case ZUS_OP_READDIR:
	case ZUS_OP_READDIR_PLUS: {
		/* a READDIR record is the leading struct zus_dirent of a plus one */
		int plus = h->opcode == ZUS_OP_READDIR_PLUS;
		uint32_t fixed = plus ? sizeof(struct zus_dirent_plus) : sizeof(struct zus_dirent);
		struct zus_readdir_req q;
		uint32_t off = 0, k;
		int odd, broken;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		d = fs_node(q.dir);
		if (!d || !S_ISDIR(d->a.mode)) { r = -ENOTDIR; break; }
		if (plus && fs_root_entry_is(FS_RDP_NOSYS, q.dir)) { r = -ENOSYS; break; }
		odd = plus && fs_root_entry_is(FS_RDP_ODD, q.dir);
		broken = plus && fs_root_entry_is(FS_RDP_BROKEN, q.dir);
		for (k = q.cookie; k < d->nents; k++) {
			struct zus_dirent_plus dp;
			uint32_t len = strlen(d->ents[k].name);
			uint32_t rec = (fixed + len + 7) & ~7u;

			if (off + rec > wsize)
				break;
			n = fs_node(d->ents[k].ino);
			memset(&dp, 0, sizeof(dp));
			dp.dirent.ino = n->a.ino;
			dp.dirent.cookie = k + 1;
			dp.dirent.kind = (n->a.mode & S_IFMT) >> 12;
			dp.dirent.name_len = len;
			dp.attr = n->a;
			/* as a LOOKUP would, unless the attributes name nothing real */
			if (plus)
				n->nlookup++;
			if (odd && k % 3 == 0) {
				dp.attr.ino = 0xdead0000 + k;	/* no such inode */
				n->nlookup--;
			} else if (odd && k % 3 == 1) {
				dp.attr.mode = (dp.attr.mode & ~S_IFMT) | S_IFIFO;
			} else if (odd) {
				dp.attr.mode &= ~S_IFMT;	/* no type */
				dp.dirent.kind = 0;
			}
			if (broken)
				dp.dirent.name_len = wsize;
			memcpy(w + off, &dp, fixed);
			memcpy(w + off + fixed, d->ents[k].name, len);
			off += rec;
		}
		h->data_len = off;
		r = off;
		break;
	}
	case ZUS_OP_OPEN: {
		struct zus_open_req q;
		struct zus_open_reply o;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (!fs_node(q.ino)) { r = -ENOENT; break; }
		o.fh = 1000 + q.ino;
		memcpy(out, &o, sizeof(o));
		h->out_len = sizeof(o);
		break;
	}
	case ZUS_OP_READ:
	case ZUS_OP_WRITE: {
		struct zus_io_req q;
		struct zus_io_reply o;
		uint64_t len;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n || !S_ISREG(n->a.mode)) { r = -EINVAL; break; }
		if (q.fh != 1000 + q.ino || q.data_kind != ZUS_DATA_WINDOW) { r = -EBADF; break; }
		if (q.len > wsize) { r = -EINVAL; break; }
		if (h->opcode == ZUS_OP_READ) {
			len = q.offset >= n->a.size ? 0 : n->a.size - q.offset;
			if (len > q.len)
				len = q.len;
			fs_read(n, q.offset, w, len);
			h->data_len = len;
			n->a.atime_ns = now_ns();
		} else {
			if (din != q.len) { r = -EINVAL; break; }
			if (q.flags & ZUS_IO_FLAGS_APPEND)
				q.offset = n->a.size;
			len = q.len;
			if (q.offset > FS_MAX_FILE || q.offset + len > FS_MAX_FILE) { r = -EFBIG; break; }
			if (q.offset + len > n->a.size) {
				r = fs_resize(n, q.offset + len);
				if (r)
					break;
			}
			r = fs_write(n, q.offset, w, len);
			if (r)
				break;
			n->a.mtime_ns = n->a.ctime_ns = now_ns();
		}
		o.size = n->a.size;
		o.offset = q.offset;
		memcpy(out, &o, sizeof(o));
		h->out_len = sizeof(o);
		r = len;
		break;
	}
	case ZUS_OP_RELEASE:
	case ZUS_OP_FSYNC:
	case ZUS_OP_SYNC:
		break;
	case ZUS_OP_KERNEL_CACHE: {
		/* the kernel maps the inode (marks nest; no fast path to steer here) */
		struct zus_kernel_cache_req q;

		NEED(q);
		break;
	}
	case ZUS_OP_GETXATTR:
	case ZUS_OP_SETXATTR:
	case ZUS_OP_REMOVEXATTR: {
		struct zus_xattr_req q;
		const char *nm = (char *)req + sizeof(q);
		struct fxattr *x;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		if (in != sizeof(q) + q.name_len || !q.name_len || q.name_len > 255 ||
		    memchr(nm, 0, q.name_len)) { r = -EINVAL; break; }
		n = fs_node(q.ino);
		if (!n) { r = -ENOENT; break; }
		i = fs_xfind(n, nm, q.name_len);
		if (h->opcode == ZUS_OP_GETXATTR) {
			if (i < 0) { r = -ENODATA; break; }
			x = &n->xa[i];
			r = x->len;
			if (!q.size)
				break;
			if (x->len > q.size || x->len > wsize) { r = -ERANGE; break; }
			memcpy(w, x->val, x->len);
			h->data_len = x->len;
			break;
		}
		if (h->opcode == ZUS_OP_REMOVEXATTR) {
			if (i < 0) { r = -ENODATA; break; }
			free(n->xa[i].val);
			n->xa[i] = n->xa[--n->nxa];
			n->a.ctime_ns = now_ns();
			break;
		}
		if (q.size > din || q.size > wsize || q.size > 65536) { r = -EINVAL; break; }
		if (i >= 0 && (q.flags & 1)) { r = -EEXIST; break; }	/* XATTR_CREATE */
		if (i < 0 && (q.flags & 2)) { r = -ENODATA; break; }	/* XATTR_REPLACE */
		if (i < 0) {
			if (n->nxa == FS_XATTRS) { r = -ENOSPC; break; }
			i = n->nxa++;
			memcpy(n->xa[i].name, nm, q.name_len);
			n->xa[i].name[q.name_len] = 0;
			n->xa[i].val = NULL;
			n->xa[i].len = 0;
		}
		x = &n->xa[i];
		free(x->val);
		x->val = malloc(q.size ? q.size : 1);
		if (!x->val) { n->xa[i] = n->xa[--n->nxa]; r = -ENOMEM; break; }
		memcpy(x->val, w, q.size);
		x->len = q.size;
		n->a.ctime_ns = now_ns();
		break;
	}
	case ZUS_OP_LISTXATTR: {
		struct zus_xattr_req q;
		uint32_t k, len = 0;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n) { r = -ENOENT; break; }
		for (k = 0; k < n->nxa; k++)
			len += strlen(n->xa[k].name) + 1;
		r = len;
		if (!q.size)
			break;
		if (len > q.size || len > wsize) { r = -ERANGE; break; }
		for (k = 0, len = 0; k < n->nxa; k++) {
			size_t l = strlen(n->xa[k].name) + 1;

			memcpy(w + len, n->xa[k].name, l);
			len += l;
		}
		h->data_len = len;
		break;
	}
	case ZUS_OP_FORGET: {
		struct zus_forget_req q;

		NEED(q);
		memcpy(&q, req, sizeof(q));
		n = fs_node(q.ino);
		if (!n) { r = -ENOENT; break; }
		n->nlookup = q.nlookup > n->nlookup ? 0 : n->nlookup - q.nlookup;
		fs_forgets++;
		fs_maybe_free(n);
		break;
	}
	default:
		r = -ENOSYS;
	}
#undef NEED
#undef ATTR
out:
	pthread_mutex_unlock(&fs_lock);
	if (r < 0) {
		h->out_len = 0;
		h->data_len = 0;
	}
	h->result = r;
	return 0;
}

/*
 * SIGUSR2: what another client of the same filesystem might do, behind the
 * kernel's caches: "ext-attr" in the root becomes mode 0604 with the 3 bytes
 * "ext", and "ext-old" is renamed to "ext-new" (replacing it). Then the
 * count of changes goes to /tmp/fake-zusd.ext.
 */
static void fs_external_change(void)
{
	static unsigned int changes;
	struct fnode *root, *n;
	int i, j, fd;

	pthread_mutex_lock(&fs_lock);
	root = fs_node(FS_ROOT);
	i = fs_find(root, "ext-attr", 8);
	if (i >= 0) {
		n = fs_node(root->ents[i].ino);
		if (S_ISREG(n->a.mode) && !fs_resize(n, 3) &&
		    !fs_write(n, 0, (const unsigned char *)"ext", 3)) {
			n->a.mode = S_IFREG | 0604;
			n->a.mtime_ns = n->a.ctime_ns = now_ns();
		}
	}
	i = fs_find(root, "ext-old", 7);
	if (i >= 0) {
		uint64_t ino = root->ents[i].ino;

		j = fs_find(root, "ext-new", 7);
		if (j >= 0) {
			n = fs_node(root->ents[j].ino);
			if (S_ISDIR(n->a.mode)) {
				j = -2;
			} else {
				n->a.nlink--;
				fs_del(root, j);
				fs_maybe_free(n);
			}
		}
		if (j != -2) {
			fs_del(root, fs_find(root, "ext-old", 7));
			fs_add(root, "ext-new", 7, ino);
		}
	}
	changes++;
	pthread_mutex_unlock(&fs_lock);
	fd = open("/tmp/fake-zusd.ext", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		dprintf(fd, "%u\n", changes);
		close(fd);
	}
}

static void fs_init(void)
{
	struct fnode *root = fs_new(S_IFDIR | 0755, 0, 0);

	root->nlookup = 1;
}

static void serve_one(int lane, int i)
{
	struct zus_slot *sl = slot_at(lane, i);
	struct zus_op_header h;
	uint64_t args[4] = { 0 };
	uint32_t n, k;
	unsigned char *w = window_at(lane, i);
	uint64_t *rw = (uint64_t *)sl->payload;

	memcpy(&h, (void *)&sl->hdr, sizeof(h));
	if (h.opcode != ZUS_OP_NOOP) {
		if (fs_serve(sl, &h, w, srv.h.window_size))
			return;
		goto reply;
	}
	if (h.in_len >= 8 && h.in_len <= sizeof(args))
		memcpy(args, sl->payload, h.in_len);
	h.result = 0;
	h.out_len = 0;
	h.data_len = 0;
	if (h.in_len == 0)
		args[0] = 0;
	switch (args[0]) {
	case B_OK:
		rw[0] = sched_getcpu();
		rw[1] = h.uid;
		rw[2] = h.gid;
		rw[3] = h.pid;
		h.out_len = 32;
		break;
	case B_ECHO:
		n = sl->hdr.data_len;
		if (n > srv.h.window_size)
			n = srv.h.window_size;
		for (k = 0; k < n; k++)
			w[k] ^= 0x5a;
		rw[0] = h.in_len;
		rw[1] = n;
		rw[2] = h.seq;
		rw[3] = 0;
		h.out_len = 32;
		h.data_len = n;
		break;
	case B_OUTLEN:
		h.out_len = args[1];
		break;
	case B_DATALEN:
		h.data_len = args[1];
		break;
	case B_RESULT:
		h.result = (int64_t)args[1];
		break;
	case B_SEQ:
		h.seq ^= 1;
		break;
	case B_DELAY:
		usleep(args[1]);
		break;
	case B_HANG:
		return;
	case B_SCRIBBLE:
		memset(&h, 0xff, sizeof(h));
		for (k = 0; k < srv.h.slots_per_cpu; k++)
			if (k != (uint32_t)i)
				__atomic_compare_exchange_n(&slot_at(lane, k)->state,
					&(uint32_t){ ZUS_SLOT_STATE_FREE }, ZUS_SLOT_STATE_DONE, 0,
					__ATOMIC_RELEASE, __ATOMIC_RELAXED);
		break;
	}
reply:
	memcpy((void *)&sl->hdr, &h, sizeof(h));
	__atomic_compare_exchange_n(&sl->state, &(uint32_t){ ZUS_SLOT_STATE_SERVING },
				    ZUS_SLOT_STATE_DONE, 0, __ATOMIC_RELEASE,
				    __ATOMIC_RELAXED);
}

static int serve_pass(int lane)
{
	uint32_t i, served = 0;

	for (i = 0; i < srv.h.slots_per_cpu; i++) {
		struct zus_slot *sl = slot_at(lane, i);
		uint32_t want = ZUS_SLOT_STATE_SUBMITTED;

		if (__atomic_load_n(&sl->state, __ATOMIC_RELAXED) != want ||
		    !__atomic_compare_exchange_n(&sl->state, &want,
						 ZUS_SLOT_STATE_SERVING, 0,
						 __ATOMIC_ACQUIRE,
						 __ATOMIC_RELAXED))
			continue;
		serve_one(lane, i);
		served++;
	}
	return served;
}

static void *zt_main(void *arg)
{
	int idx = (int)(long)arg, cpu = srv.cpus[idx];
	struct zufs_ioc_zt_init zi = { .cpu = cpu };
	struct zufs_ioc_zt_wait zw;

	if (pin(cpu) || ioctl(srv.fd, ZUFS_IOC_ZT_INIT, &zi)) {
		dprintf(1, "fake-zusd: ZT %d: %s\n", cpu, strerror(errno));
		return NULL;
	}
	__atomic_add_fetch(&srv.started, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		while (serve_pass(cpu))
			;
		memset(&zw, 0, sizeof(zw));
		zw.cpu = cpu;
		if (ioctl(srv.fd, ZUFS_IOC_ZT_WAIT, &zw)) {
			if (errno == EINTR)
				continue;
			dprintf(1, "fake-zusd: ZT_WAIT %d: %s\n", cpu,
				strerror(errno));
			return NULL;
		}
		if (zw.flags & ZUFS_ZT_KICKED)
			__atomic_store_n(&srv.kicked[idx], 1, __ATOMIC_SEQ_CST);
		if (zw.flags & ZUFS_ZT_BREAK) {
			srv.broke[idx] = 1;
			return NULL;
		}
	}
}

/* Checks made from inside the server process. */
static void server_selftests(void)
{
	struct zus_channel_set_header *ch = (void *)srv.mem;
	struct zufs_ioc_zt_init zi = { .cpu = srv.cpus[0] };
	struct zufs_ioc_zt_wait zw = { .cpu = srv.cpus[0] };
	struct zufs_ioc_dbg_op d = { 0 };
	size_t lane = srv.ctl + (size_t)ch->slots_per_cpu * ch->window_size;
	int ok;

	ok = ch->magic == ZUS_MAGIC && ch->abi_version == ZUS_ABI_VERSION &&
	     ch->header_size == sizeof(*ch) && ch->ncpu == srv.h.ncpu &&
	     ch->lane_size == lane && ch->lanes_offset == ZUFS_SET_PAGE +
	     ZUS_DAX_READER_SLOTS * ZUS_CACHE_LINE &&
	     ch->total_size == ch->lanes_offset + ch->ncpu * lane &&
	     ch->server_pid == (uint32_t)getpid() && ch->total_size == srv.h.total_size;
	report("server_channel_header_matches_geometry", ok,
	       "magic %llx ncpu %u lane_size %u total %llu",
	       (unsigned long long)ch->magic, ch->ncpu, ch->lane_size,
	       (unsigned long long)ch->total_size);

	/* the main thread is not pinned */
	ok = ioctl(srv.fd, ZUFS_IOC_ZT_INIT, &zi) == -1 && errno == EINVAL;
	report("server_zt_init_refuses_unpinned_thread", ok, "errno %d", errno);
	if (srv.ncpus > 1) {
		pin(srv.cpus[1]);
		ok = ioctl(srv.fd, ZUFS_IOC_ZT_INIT, &zi) == -1 && errno == EINVAL;
		report("server_zt_init_refuses_other_cpu", ok, "errno %d", errno);
	}
	pin(srv.cpus[0]);
	ok = ioctl(srv.fd, ZUFS_IOC_ZT_INIT, &zi) == -1 && errno == EBUSY;
	report("server_zt_init_refuses_second_zt", ok, "errno %d", errno);
	ok = ioctl(srv.fd, ZUFS_IOC_ZT_WAIT, &zw) == -1 && errno == EPERM;
	report("server_zt_wait_refuses_non_zt", ok, "errno %d", errno);
	ok = ioctl(srv.fd, ZUFS_IOC_DBG_OP, &d) == -1 && errno == EDEADLK;
	report("server_own_op_is_edeadlk", ok, "errno %d", errno);
	ok = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, srv.fd, 0) == MAP_FAILED;
	report("server_private_mmap_refused", ok, NULL);
}

/* Serves until SIGTERM; SIGUSR1 kicks. Writes one byte to @ready_fd when up. */
static int serve(unsigned int slots, unsigned int window, int ready_fd)
{
	sigset_t set;
	int i, sig, kicked;
	double t;

	memset(&srv, 0, sizeof(srv));
	fs_init();
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	srv.fd = open(DEV, O_RDWR | O_CLOEXEC);
	if (srv.fd < 0)
		return dprintf(1, "fake-zusd: open: %s\n", strerror(errno)), 1;
	srv.h.magic = ZUS_MAGIC;
	srv.h.abi_version = ZUS_ABI_VERSION;
	srv.h.slots_per_cpu = slots;
	srv.h.window_size = window;
	if (ioctl(srv.fd, ZUFS_IOC_HELLO, &srv.h))
		return dprintf(1, "fake-zusd: HELLO: %s\n", strerror(errno)), 1;
	srv.mem = mmap(NULL, srv.h.total_size, PROT_READ | PROT_WRITE,
		       MAP_SHARED, srv.fd, 0);
	if (srv.mem == MAP_FAILED)
		return dprintf(1, "fake-zusd: mmap: %s\n", strerror(errno)), 1;
	srv.ctl = (sizeof(struct zus_lane_header) +
		   (size_t)srv.h.slots_per_cpu * ZUS_SLOT_SIZE + 4095) & ~4095UL;
	srv.ncpus = online_cpus(srv.cpus);
	for (i = 0; i < srv.ncpus; i++)
		pthread_create(&srv.zt[i], NULL, zt_main, (void *)(long)i);
	t = now_s();
	while (__atomic_load_n(&srv.started, __ATOMIC_SEQ_CST) < srv.ncpus &&
	       now_s() - t < 10)
		usleep(1000);
	if (srv.started < srv.ncpus)
		return dprintf(1, "fake-zusd: only %d of %d ZTs\n", srv.started,
			       srv.ncpus), 1;
	if (ready_fd >= 0) {
		cpu_set_t all;

		sched_getaffinity(0, sizeof(all), &all);
		server_selftests();
		sched_setaffinity(0, sizeof(all), &all);
		if (write(ready_fd, "r", 1) != 1)
			return 1;
		close(ready_fd);
	}
	for (;;) {
		if (sigwait(&set, &sig))
			continue;
		if (sig == SIGUSR2) {
			fs_external_change();
			continue;
		}
		if (sig == SIGUSR1) {
			ioctl(srv.fd, ZUFS_IOC_KICK_ALL);
			t = now_s();
			do {
				kicked = 0;
				for (i = 0; i < srv.ncpus; i++)
					kicked += __atomic_load_n(&srv.kicked[i],
								  __ATOMIC_SEQ_CST);
				if (kicked < srv.ncpus)
					usleep(1000);
			} while (kicked < srv.ncpus && now_s() - t < 5);
			report("server_kick_all_reaches_every_zt",
			       kicked == srv.ncpus, "%d of %d", kicked,
			       srv.ncpus);
			memset(srv.kicked, 0, sizeof(srv.kicked));
			pthread_mutex_lock(&fs_lock);
			t = fs_forgets;
			pthread_mutex_unlock(&fs_lock);
			/* for the guest's shell tests */
			i = open("/tmp/fake-zusd.forgets",
				 O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (i >= 0) {
				dprintf(i, "%.0f\n", t);
				close(i);
			}
			continue;
		}
		break;
	}
	ioctl(srv.fd, ZUFS_IOC_BREAK);
	for (i = 0; i < srv.ncpus; i++)
		pthread_join(srv.zt[i], NULL);
	for (i = 0, kicked = 0; i < srv.ncpus; i++)
		kicked += srv.broke[i];
	if (ready_fd >= 0)
		report("server_break_ends_every_zt", kicked == srv.ncpus,
		       "%d of %d", kicked, srv.ncpus);
	dprintf(1, "fake-zusd: exits; %llu forgets received\n",
		(unsigned long long)fs_forgets);
	munmap(srv.mem, srv.h.total_size);
	close(srv.fd);
	return 0;
}

/* ======================= the tests ======================= */

static pid_t server_pid;
static unsigned int cur_window;

static int start_server(unsigned int slots, unsigned int window)
{
	int p[2];
	char c;

	if (pipe(p))
		return -1;
	server_pid = fork();
	if (server_pid == 0) {
		close(p[0]);
		_exit(serve(slots, window, p[1]));
	}
	close(p[1]);
	if (read(p[0], &c, 1) != 1) {
		close(p[0]);
		waitpid(server_pid, NULL, 0);
		server_pid = 0;
		return -1;
	}
	close(p[0]);
	cur_window = window;
	return 0;
}

/* SIGTERM: the server breaks its ZTs and exits; returns its exit status */
static int stop_server(void)
{
	int st = -1;

	if (!server_pid)
		return -1;
	kill(server_pid, SIGTERM);
	waitpid(server_pid, &st, 0);
	server_pid = 0;
	return st;
}

static int dev_fd(void)
{
	static int fd = -1;

	if (fd < 0)
		fd = open(DEV, O_RDWR | O_CLOEXEC);
	return fd;
}

/* One debug op; returns 0 or -errno. */
static int dbg(struct zufs_ioc_dbg_op *d)
{
	return ioctl(dev_fd(), ZUFS_IOC_DBG_OP, d) ? -errno : 0;
}

static int dbg_b(uint64_t b, uint64_t a1, struct zufs_ioc_dbg_op *out)
{
	struct zufs_ioc_dbg_op d = {
		.flags = ZUFS_DBG_F_ARGS, .nargs = 2, .args = { b, a1 },
		.reply_size = ZUS_PAYLOAD_SIZE,
	};
	int r = dbg(&d);

	if (out)
		*out = d;
	return r;
}

struct percpu {
	int cpu;
	int err;
	struct zufs_ioc_dbg_op d;
};

static void *percpu_op(void *arg)
{
	struct percpu *p = arg;

	memset(&p->d, 0, sizeof(p->d));
	p->err = pin(p->cpu) ? -errno : dbg(&p->d);
	return NULL;
}

static void test_hello_checks(void)
{
	struct zufs_ioc_hello h;
	int fd = open(DEV, O_RDWR | O_CLOEXEC), ok;

	report("open_dev_zufs", fd >= 0, "%s", strerror(errno));
	if (fd < 0)
		return;
	memset(&h, 0, sizeof(h));
	h.abi_version = ZUS_ABI_VERSION;
	ok = ioctl(fd, ZUFS_IOC_HELLO, &h) == -1 && errno == EINVAL;
	report("hello_bad_magic_einval", ok, "errno %d", errno);
	h.magic = ZUS_MAGIC;
	h.abi_version = 999;
	ok = ioctl(fd, ZUFS_IOC_HELLO, &h) == -1 && errno == EPROTO;
	report("hello_bad_abi_eproto", ok, "errno %d", errno);
	h.abi_version = ZUS_ABI_VERSION;
	h.window_size = 1000;
	ok = ioctl(fd, ZUFS_IOC_HELLO, &h) == -1 && errno == EINVAL;
	h.window_size = 0;
	h.slots_per_cpu = 65;
	ok = ok && ioctl(fd, ZUFS_IOC_HELLO, &h) == -1 && errno == EINVAL;
	h.slots_per_cpu = 0;
	h.reserved[2] = 1;
	ok = ok && ioctl(fd, ZUFS_IOC_HELLO, &h) == -1 && errno == EINVAL;
	report("hello_bad_geometry_einval", ok, "errno %d", errno);
	ok = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED &&
	     errno == EINVAL;
	report("mmap_before_hello_einval", ok, "errno %d", errno);
	ok = ioctl(fd, ZUFS_IOC_ZT_WAIT, &(struct zufs_ioc_zt_wait){ 0 }) == -1 &&
	     errno == EINVAL;
	report("zt_wait_without_session_einval", ok, "errno %d", errno);
	ok = ioctl(fd, _IO('Z', 0x7f)) == -1 && errno == ENOTTY;
	report("unknown_ioctl_enotty", ok, "errno %d", errno);
	close(fd);
}

static void test_percpu(int ncpus, const int *cpus)
{
	struct percpu p[MAX_THREADS];
	pthread_t t[MAX_THREADS];
	int i, bad = 0;
	char why[200] = "";

	for (i = 0; i < ncpus; i++) {
		p[i].cpu = cpus[i];
		pthread_create(&t[i], NULL, percpu_op, &p[i]);
	}
	for (i = 0; i < ncpus; i++) {
		pthread_join(t[i], NULL);
		if (p[i].err || p[i].d.result || p[i].d.submit_cpu != (uint32_t)p[i].cpu ||
		    p[i].d.lane != (uint32_t)p[i].cpu ||
		    p[i].d.zt_cpu != (uint32_t)p[i].cpu ||
		    p[i].d.done_cpu != (uint32_t)p[i].cpu) {
			if (!bad++)
				snprintf(why, sizeof(why),
					 "cpu %d: err %d submit %u lane %u zt %u done %u",
					 p[i].cpu, p[i].err, p[i].d.submit_cpu,
					 p[i].d.lane, p[i].d.zt_cpu, p[i].d.done_cpu);
		}
	}
	report("noop_on_every_cpu_served_by_that_cpus_zt", !bad, "%s", why);
}

static void *creds_op(void *arg)
{
	struct percpu *p = arg;

	setfsuid(1234);
	setfsgid(4321);
	p->err = dbg_b(B_OK, 0, &p->d);
	return NULL;
}

static void test_creds(void)
{
	struct percpu p = { 0 };
	pthread_t t;

	pthread_create(&t, NULL, creds_op, &p);
	pthread_join(t, NULL);
	report("op_header_carries_fsuid_fsgid_tgid",
	       !p.err && p.d.out_len == 32 && p.d.reply[1] == 1234 &&
	       p.d.reply[2] == 4321 && p.d.reply[3] == (uint64_t)getpid(),
	       "err %d out_len %u uid %llu gid %llu pid %llu", p.err,
	       p.d.out_len, (unsigned long long)p.d.reply[1],
	       (unsigned long long)p.d.reply[2], (unsigned long long)p.d.reply[3]);
}

static void test_echo(void)
{
	size_t n = cur_window - 1000, i;
	unsigned char *in = malloc(n), *out = malloc(cur_window);
	struct zufs_ioc_dbg_op d = {
		.flags = ZUFS_DBG_F_ARGS, .nargs = 1, .args = { B_ECHO },
		.data_in = (uintptr_t)in, .data_in_len = n,
		.data_out = (uintptr_t)out, .data_out_size = cur_window,
		.reply_size = 64,
	};
	int r, ok;

	for (i = 0; i < n; i++)
		in[i] = i * 7 + 3;
	memset(out, 0, cur_window);
	r = dbg(&d);
	ok = !r && d.data_len == n && d.out_len == 32 && d.reply[0] == 8 &&
	     d.reply[1] == n;
	for (i = 0; ok && i < n; i++)
		ok = out[i] == (unsigned char)(in[i] ^ 0x5a);
	report("window_data_round_trip", ok, "r %d data_len %u out_len %u", r,
	       d.data_len, d.out_len);

	d.data_in_len = cur_window + 1;
	report("data_in_past_window_einval", dbg(&d) == -EINVAL, NULL);
	free(in);
	free(out);
}

static void test_malformed(void)
{
	static char buf[2 << 20];
	struct zufs_ioc_dbg_op d;
	int r;

#define EXPECT(name, want, ...) do {					\
		memset(&d, 0, sizeof(d));				\
		d.flags = ZUFS_DBG_F_ARGS;				\
		d.nargs = 2;						\
		d.reply_size = ZUS_PAYLOAD_SIZE;			\
		__VA_ARGS__;						\
		r = dbg(&d);						\
		report(name, r == (want), "got %d (%s), want %d", r,	\
		       strerror(-r), want);				\
	} while (0)

	EXPECT("reply_out_len_past_buffer_eio", -EIO,
	       d.args[0] = B_OUTLEN; d.args[1] = 17; d.reply_size = 16);
	EXPECT("reply_out_len_past_payload_eio", -EIO,
	       d.args[0] = B_OUTLEN; d.args[1] = ZUS_PAYLOAD_SIZE + 1);
	EXPECT("reply_out_len_huge_eio", -EIO,
	       d.args[0] = B_OUTLEN; d.args[1] = 0xffffffffu);
	EXPECT("reply_out_len_within_buffer_ok", 0,
	       d.args[0] = B_OUTLEN; d.args[1] = 16; d.reply_size = 16);
	EXPECT("reply_data_len_past_buffer_eio", -EIO,
	       d.args[0] = B_DATALEN; d.args[1] = 101;
	       d.data_out = (uintptr_t)buf; d.data_out_size = 100);
	EXPECT("reply_data_len_past_window_eio", -EIO,
	       d.args[0] = B_DATALEN; d.args[1] = cur_window + 4096;
	       d.data_out = (uintptr_t)buf; d.data_out_size = sizeof(buf));
	EXPECT("reply_data_without_buffer_eio", -EIO,
	       d.args[0] = B_DATALEN; d.args[1] = 1);
	EXPECT("reply_result_kernel_errno_eio", -EIO,
	       d.args[0] = B_RESULT; d.args[1] = (uint64_t)-512);
	EXPECT("reply_result_private_errno_eio", -EIO,
	       d.args[0] = B_RESULT; d.args[1] = (uint64_t)-4000);
	EXPECT("reply_result_int64_min_eio", -EIO,
	       d.args[0] = B_RESULT; d.args[1] = 1ULL << 63);
	EXPECT("reply_result_above_max_eio", -EIO,
	       d.args[0] = B_RESULT; d.args[1] = 1);
	EXPECT("reply_result_errno_passed_through", -ENOENT,
	       d.args[0] = B_RESULT; d.args[1] = (uint64_t)-ENOENT);
	EXPECT("reply_result_within_max_ok", 0,
	       d.args[0] = B_RESULT; d.args[1] = 7; d.result_max = 7);
	EXPECT("reply_wrong_seq_eio", -EIO, d.args[0] = B_SEQ);
	EXPECT("reply_scribbled_slot_eio", -EIO, d.args[0] = B_SCRIBBLE);
	EXPECT("noop_after_malformed_replies_ok", 0, d.nargs = 0);
	EXPECT("dbg_op_bad_flags_einval", -EINVAL, d.flags = 0x80);
#undef EXPECT
}

struct loop_arg {
	int n;
	int errs;
	int first_err;
	uint64_t b;
	uint64_t a1;
	int cpu;
	uint32_t lane;
};

static void *loop_ops(void *arg)
{
	struct loop_arg *a = arg;
	struct zufs_ioc_dbg_op d;
	int i, r;

	if (a->cpu >= 0)
		pin(a->cpu);
	for (i = 0; i < a->n; i++) {
		r = a->b ? dbg_b(a->b, a->a1, &d) : dbg(&(struct zufs_ioc_dbg_op){ 0 });
		if (r && !a->errs++)
			a->first_err = r;
		if (!r && a->b)
			a->lane = d.lane;
	}
	return NULL;
}

static void test_concurrent(int ncpus)
{
	struct loop_arg a[16];
	pthread_t t[16];
	int i, n = 16, errs = 0, first = 0;
	double t0 = now_s();

	for (i = 0; i < n; i++) {
		a[i] = (struct loop_arg){ .n = 500, .cpu = -1 };
		pthread_create(&t[i], NULL, loop_ops, &a[i]);
	}
	for (i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		errs += a[i].errs;
		if (!first)
			first = a[i].first_err;
	}
	report("concurrent_16_threads_x_500_noops", !errs, "%d errors, first %d",
	       errs, first);
	dprintf(1, "fake-zusd: 8000 noops from 16 threads on %d cpus: %.2f s\n",
		ncpus, now_s() - t0);
}

/* More delayed ops on one CPU than its lane has slots: they spill or wait. */
static void test_full_lane(int ncpus, const int *cpus, unsigned int slots)
{
	struct loop_arg a[MAX_THREADS];
	pthread_t t[MAX_THREADS];
	int i, n = slots * ncpus + 2, errs = 0, spilled = 0;

	if (n > MAX_THREADS)
		n = MAX_THREADS;
	for (i = 0; i < n; i++) {
		a[i] = (struct loop_arg){ .n = 1, .b = B_DELAY, .a1 = 200000,
					  .cpu = cpus[0] };
		pthread_create(&t[i], NULL, loop_ops, &a[i]);
	}
	for (i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		errs += a[i].errs;
		spilled += !a[i].errs && a[i].lane != (uint32_t)cpus[0];
	}
	report("full_lane_spills_then_waits", !errs && (ncpus == 1 || spilled > 0),
	       "%d errors, %d spilled", errs, spilled);
}

/* A caller killed while its op runs: the slot comes back when the reply does. */
static void test_killed_caller(int ncpus, const int *cpus, unsigned int slots)
{
	pid_t kids[64];
	int i, n = slots, st, ok = 1;
	double t0;

	for (i = 0; i < n; i++) {
		kids[i] = fork();
		if (!kids[i]) {
			pin(cpus[0]);
			_exit(dbg_b(B_DELAY, 300000, NULL) ? 1 : 0);
		}
	}
	usleep(100000);
	t0 = now_s();
	for (i = 0; i < n; i++)
		kill(kids[i], SIGKILL);
	for (i = 0; i < n; i++) {
		waitpid(kids[i], &st, 0);
		ok &= WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
	}
	report("caller_killed_mid_op_dies_at_once", ok && now_s() - t0 < 1.0,
	       "after %.2f s", now_s() - t0);
	/* the server answers the abandoned ops (300 ms each, one ZT) */
	usleep(n * 300000 + 300000);
	test_percpu(ncpus, cpus);
}

struct hang_arg {
	int err;
	double t_ret;
};

static void *hang_op(void *arg)
{
	struct hang_arg *h = arg;

	h->err = dbg_b(B_HANG, 0, NULL);
	h->t_ret = now_s();
	return NULL;
}

static void test_server_killed(void)
{
	struct hang_arg h[4] = { 0 };
	pthread_t t[4];
	double t0;
	int i, ok = 1, st;

	for (i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, hang_op, &h[i]);
	usleep(300000);
	t0 = now_s();
	kill(server_pid, SIGKILL);
	waitpid(server_pid, &st, 0);
	server_pid = 0;
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ok &= h[i].err == -EIO && h[i].t_ret - t0 < 3.0;
	}
	report("server_sigkilled_waiting_ops_eio_within_3s", ok,
	       "err %d after %.2f s", h[0].err, h[0].t_ret - t0);
	t0 = now_s();
	i = dbg(&(struct zufs_ioc_dbg_op){ 0 });
	report("op_after_server_death_eio_at_once", i == -EIO && now_s() - t0 < 0.5,
	       "got %d after %.2f s", i, now_s() - t0);
}

static int run_tests(void)
{
	int cpus[MAX_THREADS], ncpus = online_cpus(cpus), st, r;
	double t0 = now_s();

	setvbuf(stdout, NULL, _IONBF, 0);
	dprintf(1, "fake-zusd: %d cpus\n", ncpus);
	test_hello_checks();
	r = dbg(&(struct zufs_ioc_dbg_op){ 0 });
	report("op_without_server_eio", r == -EIO, "got %d", r);

	if (start_server(2, 64 << 10)) {
		report("server_starts", 0, "see above");
		return 1;
	}
	report("server_starts", 1, NULL);
	r = ioctl(dev_fd(), ZUFS_IOC_HELLO, &(struct zufs_ioc_hello){
		.magic = ZUS_MAGIC, .abi_version = ZUS_ABI_VERSION });
	report("second_session_ebusy", r == -1 && errno == EBUSY, "errno %d", errno);
	test_percpu(ncpus, cpus);
	test_creds();
	test_echo();
	test_malformed();
	test_concurrent(ncpus);
	test_full_lane(ncpus, cpus, 2);
	test_killed_caller(ncpus, cpus, 2);
	kill(server_pid, SIGUSR1);
	st = stop_server();
	report("server_exits_cleanly_on_break", WIFEXITED(st) && !WEXITSTATUS(st),
	       "status %#x", st);
	r = dbg(&(struct zufs_ioc_dbg_op){ 0 });
	report("op_after_server_exit_eio", r == -EIO, "got %d", r);

	if (start_server(1, 16 << 10)) {
		report("server_restarts", 0, "see above");
		return 1;
	}
	report("server_restarts", 1, NULL);
	test_percpu(ncpus, cpus);
	test_server_killed();
	dprintf(1, "fake-zusd: tests took %.2f s\n", now_s() - t0);
	return nfail ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "test"))
		return run_tests();
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return serve(argc > 2 ? atoi(argv[2]) : 0,
			     argc > 3 ? atoi(argv[3]) : 0, -1);
	fprintf(stderr, "usage: %s test | serve [SLOTS [WINDOW]]\n", argv[0]);
	return 2;
}
