// SPDX-License-Identifier: GPL-2.0
/*
 * super.c - the zufs filesystem type.
 *
 *   mount -t zufs -o mount_id=N,root=INO none /mnt
 *
 * names a mount that zusd already holds (the control socket made it). Every
 * VFS operation is one op to zusd through zufs_dispatch(); inodes are built
 * from the Attr replies; file data goes through the slot's data window (two
 * copies, no page cache). Inode numbers are the plugin's; each reply that
 * hands the kernel an inode (lookup, create, mkdir, mknod, symlink, link)
 * counts one lookup reference, given back with FORGET when the inode is
 * evicted, in batches from a work item (never from reclaim itself).
 *
 * Other clients (the FUSE bridge, the preload library, another mount) change
 * the same files, so what the kernel caches expires: an inode's attributes
 * after attr_timeout_ms (getattr, permission and SEEK_END re-fetch them), a
 * dentry after entry_timeout_ms (d_revalidate looks the name up again). Both
 * default to a second; 0 asks zusd every time.
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/module.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/fs_parser.h>
#include <linux/slab.h>
#include <linux/statfs.h>
#include <linux/namei.h>
#include <linux/uio.h>
#include <linux/workqueue.h>
#include <linux/time64.h>
#include <linux/kdev_t.h>
#include <linux/seq_file.h>
#include <linux/mm.h>
#include <linux/xattr.h>
#include <linux/jiffies.h>
#include <linux/dcache.h>
#include <linux/pagemap.h>
#include <linux/bvec.h>
#include <linux/highmem.h>
#include <linux/writeback.h>
#include <linux/falloc.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>

#include "zufs.h"
#include "zufs-dax.h"
#include "zufs-fs.h"

#define ZUFS_SUPER_MAGIC	0x5a554653	/* "ZUFS" */
#define ZUFS_DEFAULT_TIMEOUT_MS	1000
#define ZUFS_MAX_TIMEOUT_MS	(3600 * 1000)

struct zufs_sb_info {
	u32 mount_id;
	u64 root;
	u32 attr_timeout_ms;
	u32 entry_timeout_ms;
	unsigned long attr_timeout;	/* jiffies */
	unsigned long entry_timeout;	/* jiffies */
	spinlock_t defer_lock;
	struct list_head deferred;
	struct delayed_work defer_work;
	/* zusd answered ENOSYS to FORGET_MANY or RELEASE_MANY: one by one */
	bool no_many;
	/* -o dax=PATH: file data through DAX on this pmem (dax.c), or NULL */
	struct zufs_pmem *pmem;
	char *dax_path;
	/* zusd answered ENOSYS to CREATE_OPEN: create, then open */
	bool no_create_open;
	/* zusd answered ENOSYS to READDIR_PLUS: names only */
	bool no_readdir_plus;
	/* zufs_sbs: every superblock of the module */
	struct list_head sbs;
	/*
	 * Another superblock serves the same zusd mount (a second mount(2)
	 * of its mount_id, e.g. a window mount next to a DAX one): what one
	 * changes the other cannot know, so neither trusts its caches longer
	 * than ZUFS_DEFAULT_TIMEOUT_MS from then on.
	 */
	bool shared;
};

static LIST_HEAD(zufs_sbs);
static DEFINE_MUTEX(zufs_sbs_lock);

/* an op that goes out later, from the work item: FORGET or RELEASE */
struct zufs_deferred {
	struct list_head list;
	u32 opcode;	/* ZUS_OP_FORGET or ZUS_OP_RELEASE */
	u64 ino;
	u64 arg;	/* FORGET: lookups given back; RELEASE: the fh */
};

struct zufs_inode {
	struct inode vfs;
	atomic64_t nlookup;	/* lookup references zusd counted for us */
	u64 attr_expire;	/* jiffies64: the attributes are stale after it */
	/* jiffies64: mode, owner and ACLs (what permission() uses) after it */
	u64 perm_expire;
	/*
	 * The ctime the cached ACLs were good for (zufs_fill_inode), and
	 * whether it had no security.capability then: a GETXATTR of it
	 * answered ENODATA, or this mount made the inode.
	 */
	struct timespec64 acl_ctime;
	bool no_caps;
	/* allocated with the inode, so that eviction never allocates */
	struct zufs_deferred *forget;
	struct zufs_dax_inode dax;	/* dax.c */
	/*
	 * zusd's kernel-cache mark (ZUS_OP_KERNEL_CACHE): set at the first
	 * mmap of the inode (its pages are then in the page cache, or its
	 * pmem in page tables), taken back when its last open file goes. While
	 * it is set, zusd sends fast-path clients (the preload library)
	 * through the kernel for this inode.
	 */
	struct mutex kc_lock;
	unsigned int kc_open;	/* files open through zufs_open() */
	bool kc_marked;
	/* files with a shared writable map (window mounts): writeback's fh */
	spinlock_t wb_lock;
	struct list_head wb_files;
	/*
	 * Files whose process writes past the kernel (the preload library
	 * asked ZUFS_IOC_TICKET on them, under wb_lock): while one is open,
	 * size, blocks, times and (a write drops set-id bits) the mode change
	 * behind this mount, and nothing cached of them is used.
	 */
	struct list_head fp_files;
	atomic_t fp_writers;
	/*
	 * A directory this mount made, each of whose names it has in the
	 * dcache since: a name not there does not exist, and its lookup
	 * costs no LOOKUP (tar's unlink() before each create, a build's
	 * probes in a fresh tree). Until this jiffy (0: not known whole):
	 * what the mkdir told is trusted for entry_timeout, as a name is.
	 * A child dentry that leaves the dcache (zufs_d_prune), or a name
	 * that turns out to be other than cached, ends it for good.
	 */
	u64 complete_until;
};

/* an open file on one of an inode's lists (wb_files, fp_files) */
struct zufs_file_ref {
	struct list_head list;
	struct file *file;
};

static struct kmem_cache *zufs_inode_cachep;
static struct workqueue_struct *zufs_wq;

static inline struct zufs_sb_info *ZUFS_SB(struct super_block *sb)
{
	return sb->s_fs_info;
}

static inline struct zufs_inode *ZUFS_I(struct inode *inode)
{
	return container_of(inode, struct zufs_inode, vfs);
}

static const struct inode_operations zufs_dir_iops;
static const struct inode_operations zufs_file_iops;
static const struct inode_operations zufs_symlink_iops;
static const struct inode_operations zufs_special_iops;
static const struct file_operations zufs_dir_fops;
static const struct file_operations zufs_file_fops;
static const struct address_space_operations zufs_file_aops;
static const struct dentry_operations zufs_dentry_ops;
static const struct xattr_handler *zufs_xattr_handlers[];
static void zufs_wb_del(struct file *file);
static int zufs_flush_range(struct inode *inode, loff_t pos, size_t len);

/* ----- attribute and dentry timeouts ----- */

static void zufs_attr_fresh(struct inode *inode)
{
	u64 expire = get_jiffies_64() + ZUFS_SB(inode->i_sb)->attr_timeout;

	WRITE_ONCE(ZUFS_I(inode)->attr_expire, expire);
	WRITE_ONCE(ZUFS_I(inode)->perm_expire, expire);
}

/* after an op that changed attributes the reply did not carry */
static void zufs_attr_stale(struct inode *inode)
{
	WRITE_ONCE(ZUFS_I(inode)->attr_expire, get_jiffies_64() - 1);
	WRITE_ONCE(ZUFS_I(inode)->perm_expire, get_jiffies_64() - 1);
}

/*
 * After a change of the names in a directory, or of an inode's links, made
 * through this mount: the times, size and link count moved, the mode, owner
 * and ACLs did not. getattr asks zusd again; permission() keeps what it has,
 * so a run of creates or unlinks in one directory costs no GETATTR (and no
 * re-read of its default ACL) between them.
 */
static void zufs_times_stale(struct inode *inode)
{
	WRITE_ONCE(ZUFS_I(inode)->attr_expire, get_jiffies_64() - 1);
}

/*
 * What is left of @timeout from a deadline of @expire: on a shared
 * superblock (zufs_sb_info.shared) a deadline set for a longer timeout
 * ends ZUFS_DEFAULT_TIMEOUT_MS after it was set.
 */
static u64 zufs_deadline(struct zufs_sb_info *sbi, u64 expire,
			 unsigned long timeout)
{
	unsigned long cap = msecs_to_jiffies(ZUFS_DEFAULT_TIMEOUT_MS);

	if (READ_ONCE(sbi->shared) && timeout > cap)
		expire -= timeout - cap;
	return expire;
}

static bool zufs_inode_fresh(struct inode *inode, u64 expire)
{
	struct zufs_sb_info *sbi = ZUFS_SB(inode->i_sb);

	return !atomic_read(&ZUFS_I(inode)->fp_writers) &&
	       time_before64(get_jiffies_64(),
			     zufs_deadline(sbi, expire, sbi->attr_timeout));
}

static bool zufs_perm_valid(struct inode *inode)
{
	return zufs_inode_fresh(inode, READ_ONCE(ZUFS_I(inode)->perm_expire));
}

static bool zufs_attr_valid(struct inode *inode)
{
	return zufs_inode_fresh(inode, READ_ONCE(ZUFS_I(inode)->attr_expire));
}

static void zufs_dentry_fresh(struct dentry *dentry)
{
	WRITE_ONCE(dentry->d_time,
		   jiffies + ZUFS_SB(dentry->d_sb)->entry_timeout);
}

/* zufs_inode.complete_until: until when @dir is known whole, or 0 */
static u64 zufs_dir_complete(struct inode *dir)
{
	struct zufs_sb_info *sbi = ZUFS_SB(dir->i_sb);
	u64 until = READ_ONCE(ZUFS_I(dir)->complete_until);

	if (!until)
		return 0;
	until = zufs_deadline(sbi, until, sbi->entry_timeout);
	return time_before64(get_jiffies_64(), until) ? until : 0;
}

/* @dentry's name in its directory may be other than the dcache says */
static void zufs_dir_incomplete(struct dentry *dentry)
{
	struct dentry *parent = READ_ONCE(dentry->d_parent);
	struct inode *dir = parent ? d_inode_rcu(parent) : NULL;

	if (dir && dentry != parent)
		WRITE_ONCE(ZUFS_I(dir)->complete_until, 0);
}

/* zusd says that @dentry's name exists, which its negative dentry denied */
static void zufs_name_error(struct dentry *dentry, s64 ret)
{
	if (ret == -EEXIST)
		zufs_dir_incomplete(dentry);
}

static bool zufs_dentry_valid(struct dentry *dentry)
{
	struct zufs_sb_info *sbi = ZUFS_SB(dentry->d_sb);

	return time_before(jiffies,
			   (unsigned long)zufs_deadline(sbi, READ_ONCE(dentry->d_time),
							sbi->entry_timeout));
}

/* i_nlink from a reply may be anything: never let drop_nlink() warn */
static void zufs_drop_nlink(struct inode *inode)
{
	if (inode->i_nlink)
		drop_nlink(inode);
}

/* An op with a fixed request and a reply in kernel memory. */
static s64 zufs_simple(u32 mount_id, u32 opcode, const void *req, u32 req_len,
		       void *reply, u32 reply_size, u32 reply_min)
{
	struct zufs_op op = {
		.opcode = opcode,
		.mount_id = mount_id,
		.req = req,
		.req_len = req_len,
		.reply = reply,
		.reply_size = reply_size,
		.reply_min = reply_min,
	};

	return zufs_dispatch(&op);
}

/* A request of @fixed followed by the bytes @a and @b (@b may be NULL). */
static void *zufs_req_build(const void *fixed, size_t flen, const void *a,
			    u32 alen, const void *b, u32 blen, u32 *len)
{
	size_t n = flen + alen + (b ? blen : 0);
	char *req;

	if (n > ZUS_PAYLOAD_SIZE)
		return ERR_PTR(-ENAMETOOLONG);
	req = kmalloc(n, GFP_KERNEL);
	if (!req)
		return ERR_PTR(-ENOMEM);
	memcpy(req, fixed, flen);
	memcpy(req + flen, a, alen);
	if (b)
		memcpy(req + flen + alen, b, blen);
	*len = n;
	return req;
}

/* A request of @fixed followed by the names @a and @b (@b may be NULL). */
static void *zufs_req_names(const void *fixed, size_t flen,
			    const struct qstr *a, const char *b, u32 blen,
			    u32 *len)
{
	return zufs_req_build(fixed, flen, a->name, a->len, b, blen, len);
}

static bool zufs_mode_ok(u32 mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		return true;
	}
	return false;
}

/*
 * A reply showed @ctime. Another client that changed an ACL or a capability
 * moved it (acl.c): what is cached about them goes. A reply to a change this
 * mount made itself (@own) moved it too: that keeps them while they are
 * valid (perm_expire), and the first refresh from zusd after it, seeing a
 * ctime other than the one they were good for, drops them then.
 */
static void zufs_ctime_seen(struct inode *inode, const struct timespec64 *ctime,
			    bool own)
{
	struct zufs_inode *zi = ZUFS_I(inode);

	if (timespec64_equal(&zi->acl_ctime, ctime) ||
	    (own && zufs_perm_valid(inode)))
		return;
	forget_all_cached_acls(inode);
	WRITE_ONCE(zi->no_caps, false);
	zi->acl_ctime = *ctime;
}

/*
 * The times, size and link count of @a, fresh for attr_timeout. @own: @a
 * is the reply to a change this mount made (zufs_ctime_seen()).
 */
static void zufs_fill_times(struct inode *inode, const struct zus_attr *a,
			    bool own)
{
	struct timespec64 ctime = ns_to_timespec64(a->ctime_ns);

	zufs_ctime_seen(inode, &ctime, own);
	set_nlink(inode, a->nlink);
	i_size_write(inode, min_t(u64, a->size, MAX_LFS_FILESIZE));
	inode->i_blocks = a->blocks;
	inode->i_atime = ns_to_timespec64(a->atime_ns);
	inode->i_mtime = ns_to_timespec64(a->mtime_ns);
	inode->i_ctime = ctime;
	WRITE_ONCE(ZUFS_I(inode)->attr_expire,
		   get_jiffies_64() + ZUFS_SB(inode->i_sb)->attr_timeout);
}

/*
 * Takes the attributes of a reply; the type was checked by the caller.
 * @own: the reply to a change this mount made (SETATTR): mode and owner are
 * zusd's now, but the ACLs cached stay only until perm_expire, which a
 * refresh from zusd (GETATTR, LOOKUP) moves, not this. (A change of names
 * in a directory takes only zufs_fill_times() from its reply: the mode,
 * owner and ACLs stay as the last refresh left them.)
 */
static void __zufs_fill_inode(struct inode *inode, const struct zus_attr *a,
			      bool own)
{
	zufs_fill_times(inode, a, own);
	inode->i_mode = (inode->i_mode & S_IFMT) | (a->mode & ~S_IFMT);
	inode->i_uid = make_kuid(&init_user_ns, a->uid);
	inode->i_gid = make_kgid(&init_user_ns, a->gid);
	inode->i_generation = a->generation;
	if (!own)
		zufs_attr_fresh(inode);
}

static void zufs_fill_inode(struct inode *inode, const struct zus_attr *a)
{
	__zufs_fill_inode(inode, a, false);
}

/*
 * @inode, found by its number, is an earlier life of the inode @a describes:
 * the plugin freed that inode and gave its number to a new one (with the
 * next generation) while the kernel still holds the old one, e.g. a removed
 * directory pinned by files still open below it. A removed directory (S_DEAD)
 * never comes back, whatever the plugin's generations say.
 */
static bool zufs_stale_inode(struct inode *inode, const struct zus_attr *a)
{
	return inode->i_generation != a->generation || IS_DEADDIR(inode);
}

/* The inode of an Attr reply; @counted: the reply counted a lookup. */
static struct inode *zufs_iget(struct super_block *sb,
			       const struct zus_attr *a, bool counted)
{
	struct inode *inode;

	if (!a->ino || !zufs_mode_ok(a->mode)) {
		pr_warn_ratelimited("bad attr: ino %llu mode %o\n", a->ino,
				    a->mode);
		return ERR_PTR(-EIO);
	}
again:
	inode = iget_locked(sb, a->ino);
	if (!inode)
		return ERR_PTR(-ENOMEM);
	if (!(inode->i_state & I_NEW) && zufs_stale_inode(inode, a)) {
		/*
		 * Out of the hash, so that the new life gets an inode of its
		 * own; the old one lives on while its users hold it. The
		 * lookups it counted were for a life the plugin already
		 * ended: its eviction sends no FORGET (it would land on the
		 * new life).
		 */
		atomic64_set(&ZUFS_I(inode)->nlookup, 0);
		remove_inode_hash(inode);
		iput(inode);
		goto again;
	}
	if (counted)
		atomic64_inc(&ZUFS_I(inode)->nlookup);
	if (!(inode->i_state & I_NEW)) {
		if (inode_wrong_type(inode, a->mode)) {
			iput(inode);
			return ERR_PTR(-EIO);
		}
		zufs_fill_inode(inode, a);
		return inode;
	}
	inode->i_mode = a->mode & S_IFMT;
	zufs_fill_inode(inode, a);
	switch (a->mode & S_IFMT) {
	case S_IFREG:
		inode->i_op = &zufs_file_iops;
		inode->i_fop = &zufs_file_fops;
		inode->i_mapping->a_ops = &zufs_file_aops;
		zufs_dax_set_inode(inode);	/* -o dax: S_DAX, dax.c's aops */
		break;
	case S_IFDIR:
		inode->i_op = &zufs_dir_iops;
		inode->i_fop = &zufs_dir_fops;
		break;
	case S_IFLNK:
		inode->i_op = &zufs_symlink_iops;
		break;
	default:
		inode->i_op = &zufs_special_iops;
		init_special_inode(inode, inode->i_mode, new_decode_dev(a->rdev));
		break;
	}
	unlock_new_inode(inode);
	return inode;
}

/* Re-reads an inode's attributes from zusd. */
static int zufs_refresh(struct inode *inode)
{
	struct zus_ino_req r = { .ino = inode->i_ino };
	struct zus_attr a;
	s64 ret;

	ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id, ZUS_OP_GETATTR, &r,
			  sizeof(r), &a, sizeof(a), sizeof(a));
	if (ret < 0)
		return ret;
	if (a.ino != inode->i_ino || inode_wrong_type(inode, a.mode))
		return -EIO;
	/* the number names a new life now (zufs_stale_inode) */
	if (a.generation != inode->i_generation)
		return -ESTALE;
	zufs_fill_inode(inode, &a);
	return 0;
}

/*
 * The inode numbered @ino in its life @generation (a file handle, export.c):
 * ESTALE when zusd has no such inode or the number names another life.
 */
struct inode *zufs_iget_ino(struct super_block *sb, u64 ino, u32 generation)
{
	struct zus_ino_req r = { .ino = ino };
	struct zus_attr a;
	s64 ret;

	ret = zufs_simple(ZUFS_SB(sb)->mount_id, ZUS_OP_GETATTR, &r, sizeof(r),
			  &a, sizeof(a), sizeof(a));
	if (ret == -ENOENT || ret == -ESTALE || ret == -EINVAL)
		return ERR_PTR(-ESTALE);
	if (ret < 0)
		return ERR_PTR(ret);
	if (a.ino != ino)
		return ERR_PTR(-EIO);
	if (a.generation != generation)
		return ERR_PTR(-ESTALE);
	return zufs_iget(sb, &a, false);
}

/* ----- forgets and releases, deferred ----- */

/*
 * FORGET and RELEASE are both { ino, u64 }: a batch of either is an array
 * of these, sent as one FORGET_MANY or RELEASE_MANY of up to a page.
 */
struct zufs_deferred_req {
	u64 ino;
	u64 arg;
};

static_assert(sizeof(struct zufs_deferred_req) == sizeof(struct zus_forget_req));
static_assert(sizeof(struct zufs_deferred_req) == sizeof(struct zus_release_req));
static_assert(offsetof(struct zus_forget_req, nlookup) == 8);
static_assert(offsetof(struct zus_release_req, fh) == 8);
static_assert(PAGE_SIZE <= ZUS_PAYLOAD_SIZE);
#define ZUFS_DEFER_BATCH	(PAGE_SIZE / sizeof(struct zufs_deferred_req))

static void zufs_send_many(struct zufs_sb_info *sbi, u32 opcode,
			   const struct zufs_deferred_req *r, unsigned int n)
{
	u32 many = opcode == ZUS_OP_FORGET ? ZUS_OP_FORGET_MANY :
					     ZUS_OP_RELEASE_MANY;
	unsigned int i;

	if (!n)
		return;
	if (n > 1 && !READ_ONCE(sbi->no_many)) {
		s64 ret = zufs_simple(sbi->mount_id, many, r, n * sizeof(*r),
				      NULL, 0, 0);

		if (ret != -ENOSYS)
			return;
		WRITE_ONCE(sbi->no_many, true);
	}
	for (i = 0; i < n; i++)
		zufs_simple(sbi->mount_id, opcode, &r[i], sizeof(r[i]), NULL,
			    0, 0);
}

/*
 * Every queued op, in order, a run of one kind in one FORGET_MANY or
 * RELEASE_MANY (one by one when there is no memory for the batch).
 */
static void zufs_send_deferred(struct zufs_sb_info *sbi)
{
	struct zufs_deferred_req one, *reqs;
	struct zufs_deferred *f, *tmp;
	unsigned int n = 0, cap;
	u32 opcode = 0;
	LIST_HEAD(batch);

	spin_lock(&sbi->defer_lock);
	list_splice_init(&sbi->deferred, &batch);
	spin_unlock(&sbi->defer_lock);
	if (list_empty(&batch))
		return;
	/* no I/O from here: the work may be what reclaim waits for */
	reqs = kmalloc_array(ZUFS_DEFER_BATCH, sizeof(*reqs),
			     GFP_NOIO | __GFP_NOWARN);
	cap = reqs ? ZUFS_DEFER_BATCH : 1;
	if (!reqs)
		reqs = &one;
	list_for_each_entry_safe(f, tmp, &batch, list) {
		if (n == cap || (n && f->opcode != opcode)) {
			zufs_send_many(sbi, opcode, reqs, n);
			n = 0;
		}
		opcode = f->opcode;
		reqs[n].ino = f->ino;
		reqs[n].arg = f->arg;
		n++;
		list_del(&f->list);
		kfree(f);
	}
	zufs_send_many(sbi, opcode, reqs, n);
	if (reqs != &one)
		kfree(reqs);
}

static void zufs_defer_work(struct work_struct *work)
{
	zufs_send_deferred(container_of(to_delayed_work(work),
				       struct zufs_sb_info, defer_work));
}

/*
 * Queues @f; every queued op goes out in the work item's next run, a jiffy
 * later, so that a run of creates or unlinks, a tar -x or an rm -rf sends
 * its releases and forgets in a few batches instead of one op per file.
 */
static void zufs_defer_queue(struct zufs_sb_info *sbi, struct zufs_deferred *f)
{
	spin_lock(&sbi->defer_lock);
	list_add_tail(&f->list, &sbi->deferred);
	spin_unlock(&sbi->defer_lock);
	queue_delayed_work(zufs_wq, &sbi->defer_work, 1);
}

/*
 * A FORGET or RELEASE that the caller need not wait for; with no memory to
 * queue it, it goes out now, so that zusd's count stays right either way.
 */
static void zufs_defer(struct super_block *sb, u32 opcode, u64 ino, u64 arg)
{
	struct zufs_deferred *f = kmalloc(sizeof(*f), GFP_KERNEL);

	if (!f) {
		struct zufs_deferred_req r = { .ino = ino, .arg = arg };

		zufs_send_many(ZUFS_SB(sb), opcode, &r, 1);
		return;
	}
	f->opcode = opcode;
	f->ino = ino;
	f->arg = arg;
	zufs_defer_queue(ZUFS_SB(sb), f);
}

/*
 * A lookup reference that reached no inode (a revalidation that found
 * another inode, a readdir entry not kept) goes back with the next batch.
 */
static void zufs_forget_one(struct super_block *sb, u64 ino)
{
	zufs_defer(sb, ZUS_OP_FORGET, ino, 1);
}

static void zufs_evict_inode(struct inode *inode)
{
	struct zufs_inode *zi = ZUFS_I(inode);
	u64 n = atomic64_read(&zi->nlookup);
	struct zufs_deferred *f = zi->forget;

	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (!n)
		return;
	/* may run in reclaim: no op here and no allocation, only a hand-over */
	zi->forget = NULL;
	f->opcode = ZUS_OP_FORGET;
	f->ino = inode->i_ino;
	f->arg = n;
	zufs_defer_queue(ZUFS_SB(inode->i_sb), f);
}

/* ----- inodes ----- */

static struct inode *zufs_alloc_inode(struct super_block *sb)
{
	struct zufs_inode *zi = alloc_inode_sb(sb, zufs_inode_cachep,
					       GFP_KERNEL);

	if (!zi)
		return NULL;
	zi->forget = kmalloc(sizeof(*zi->forget), GFP_KERNEL);
	if (!zi->forget) {
		kmem_cache_free(zufs_inode_cachep, zi);
		return NULL;
	}
	atomic64_set(&zi->nlookup, 0);
	zi->attr_expire = get_jiffies_64() - 1;
	zi->perm_expire = zi->attr_expire;
	zi->acl_ctime = (struct timespec64){};
	zi->no_caps = false;
	zufs_dax_inode_init(&zi->dax);
	zi->kc_open = 0;
	zi->kc_marked = false;
	spin_lock_init(&zi->wb_lock);
	INIT_LIST_HEAD(&zi->wb_files);
	INIT_LIST_HEAD(&zi->fp_files);
	atomic_set(&zi->fp_writers, 0);
	zi->complete_until = 0;
	return &zi->vfs;
}

static void zufs_free_inode(struct inode *inode)
{
	kfree(ZUFS_I(inode)->forget);
	kmem_cache_free(zufs_inode_cachep, ZUFS_I(inode));
}

static void zufs_inode_init_once(void *p)
{
	struct zufs_inode *zi = p;

	inode_init_once(&zi->vfs);
	mutex_init(&zi->kc_lock);
}

static int zufs_getattr(struct user_namespace *mnt_userns,
			const struct path *path, struct kstat *stat,
			u32 request_mask, unsigned int flags)
{
	struct inode *inode = d_inode(path->dentry);
	unsigned int sync = flags & AT_STATX_SYNC_TYPE;
	int err;

	if (sync == AT_STATX_FORCE_SYNC ||
	    (sync != AT_STATX_DONT_SYNC &&
	     (!zufs_attr_valid(inode) || !zufs_perm_valid(inode)))) {
		err = zufs_refresh(inode);
		if (err)
			return err;
	}
	generic_fillattr(&init_user_ns, inode, stat);
	return 0;
}

static int zufs_permission(struct user_namespace *mnt_userns,
			   struct inode *inode, int mask)
{
	if (!zufs_perm_valid(inode)) {
		int err;

		if (mask & MAY_NOT_BLOCK)
			return -ECHILD;
		err = zufs_refresh(inode);
		if (err)
			return err;
	}
	return generic_permission(&init_user_ns, inode, mask);
}

/* A SETATTR of @r; the inode takes the attributes of the reply. */
static int zufs_setattr_send(struct inode *inode,
			     const struct zus_setattr_req *r)
{
	struct zus_attr a;
	s64 ret;

	ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id, ZUS_OP_SETATTR, r,
			  sizeof(*r), &a, sizeof(a), sizeof(a));
	if (ret < 0)
		return ret;
	if (a.ino != inode->i_ino || inode_wrong_type(inode, a.mode))
		return -EIO;
	__zufs_fill_inode(inode, &a, true);
	return 0;
}

static int zufs_setattr_op(struct user_namespace *mnt_userns,
			   struct dentry *dentry, struct iattr *ia)
{
	struct inode *inode = d_inode(dentry);
	struct zus_setattr_req r = { .ino = inode->i_ino };
	int err;

	err = setattr_prepare(&init_user_ns, dentry, ia);
	if (err)
		return err;
	if (ia->ia_valid & ATTR_MODE) {
		r.valid |= ZUS_SETATTR_MODE;
		r.mode = ia->ia_mode;
	}
	if (ia->ia_valid & ATTR_UID) {
		r.valid |= ZUS_SETATTR_UID;
		r.uid = from_kuid(&init_user_ns, ia->ia_uid);
	}
	if (ia->ia_valid & ATTR_GID) {
		r.valid |= ZUS_SETATTR_GID;
		r.gid = from_kgid(&init_user_ns, ia->ia_gid);
	}
	if (ia->ia_valid & ATTR_SIZE) {
		r.valid |= ZUS_SETATTR_SIZE;
		r.size = ia->ia_size;
	}
	if (ia->ia_valid & ATTR_ATIME) {
		if (ia->ia_valid & ATTR_ATIME_SET) {
			r.valid |= ZUS_SETATTR_ATIME;
			r.atime_ns = timespec64_to_ns(&ia->ia_atime);
		} else {
			r.valid |= ZUS_SETATTR_ATIME_NOW;
		}
	}
	if (ia->ia_valid & ATTR_MTIME) {
		if (ia->ia_valid & ATTR_MTIME_SET) {
			r.valid |= ZUS_SETATTR_MTIME;
			r.mtime_ns = timespec64_to_ns(&ia->ia_mtime);
		} else {
			r.valid |= ZUS_SETATTR_MTIME_NOW;
		}
	}
	if (!r.valid)
		return 0;
	err = zufs_setattr_send(inode, &r);
	if (err)
		return err;
	if (r.valid & ZUS_SETATTR_SIZE)
		truncate_pagecache(inode, i_size_read(inode));
	/* the ACL's owner, mask (or group) and other entries follow (acl.c) */
	if (r.valid & ZUS_SETATTR_MODE)
		return posix_acl_chmod(&init_user_ns, inode, inode->i_mode);
	return 0;
}

/* A mode change alone (acl.c: the mode an access ACL implies). */
int zufs_set_mode(struct inode *inode, umode_t mode)
{
	struct zus_setattr_req r = {
		.ino = inode->i_ino,
		.valid = ZUS_SETATTR_MODE,
		.mode = mode,
	};

	return zufs_setattr_send(inode, &r);
}

static int zufs_setattr(struct user_namespace *mnt_userns,
			struct dentry *dentry, struct iattr *ia)
{
	struct inode *inode = d_inode(dentry);
	int err;

	if (!(ia->ia_valid & ATTR_SIZE) || !IS_DAX(inode))
		return zufs_setattr_op(mnt_userns, dentry, ia);
	/* DAX: nothing maps the blocks zusd frees (dax.c) */
	err = zufs_dax_truncate_begin(inode, ia->ia_size);
	if (err)
		return err;
	err = zufs_setattr_op(mnt_userns, dentry, ia);
	zufs_dax_truncate_end(inode);
	return err;
}

/* ----- directories ----- */

/* LOOKUP of @name in @dir; a success counts a lookup reference in zusd. */
static int zufs_lookup_attr(struct inode *dir, const struct qstr *name,
			    struct zus_attr *a)
{
	struct zus_name_req r = { .dir = dir->i_ino, .name_len = name->len };
	void *req;
	u32 len;
	s64 ret;

	if (name->len > ZUS_NAME_MAX)
		return -ENAMETOOLONG;
	req = zufs_req_names(&r, sizeof(r), name, NULL, 0, &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	ret = zufs_simple(ZUFS_SB(dir->i_sb)->mount_id, ZUS_OP_LOOKUP, req,
			  len, a, sizeof(*a), sizeof(*a));
	kfree(req);
	return ret < 0 ? ret : 0;
}

static struct dentry *zufs_lookup(struct inode *dir, struct dentry *dentry,
				  unsigned int flags)
{
	u64 until = zufs_dir_complete(dir);
	struct inode *inode = NULL;
	struct zus_attr a;
	int err;

	if (dentry->d_name.len > ZUS_NAME_MAX)
		return ERR_PTR(-ENAMETOOLONG);
	if (until) {
		/* every name of @dir is in the dcache: this one does not exist */
		WRITE_ONCE(dentry->d_time, (unsigned long)until);
		return d_splice_alias(NULL, dentry);
	}
	err = zufs_lookup_attr(dir, &dentry->d_name, &a);
	if (!err) {
		inode = zufs_iget(dir->i_sb, &a, true);
		if (IS_ERR(inode))
			return ERR_CAST(inode);
	} else if (err != -ENOENT) {
		return ERR_PTR(err);
	}
	zufs_dentry_fresh(dentry);
	return d_splice_alias(inode, dentry);
}

/* The parent of the directory @dir: its ".." entry (export.c). */
struct inode *zufs_lookup_dotdot(struct inode *dir)
{
	static const struct qstr dotdot = QSTR_INIT("..", 2);
	struct zus_attr a;
	int err;

	err = zufs_lookup_attr(dir, &dotdot, &a);
	if (err)
		return ERR_PTR(err);
	if (!S_ISDIR(a.mode))
		return ERR_PTR(-EIO);
	return zufs_iget(dir->i_sb, &a, true);
}

/*
 * A cached name older than entry_timeout is looked up again: it stays if
 * zusd still names the same inode there, else the VFS drops it and looks
 * the name up afresh (a negative dentry just expires).
 */
static int zufs_d_revalidate(struct dentry *dentry, unsigned int flags)
{
	struct name_snapshot name;
	struct dentry *parent;
	struct inode *inode;
	struct zus_attr a;
	struct inode *dir;
	struct dentry *p;
	u64 until;
	int err;

	if (zufs_dentry_valid(dentry))
		return 1;
	/* a name a complete directory does not have stays absent */
	p = READ_ONCE(dentry->d_parent);
	dir = p != dentry ? d_inode_rcu(p) : NULL;
	if (d_really_is_negative(dentry) && dir) {
		until = zufs_dir_complete(dir);
		if (until) {
			WRITE_ONCE(dentry->d_time, (unsigned long)until);
			return 1;
		}
	}
	if (flags & LOOKUP_RCU)
		return -ECHILD;
	inode = d_inode(dentry);
	if (!inode)
		return 0;
	if (IS_ROOT(dentry))
		return 1;
	parent = dget_parent(dentry);
	take_dentry_name_snapshot(&name, dentry);
	err = zufs_lookup_attr(d_inode(parent), &name.name, &a);
	release_dentry_name_snapshot(&name);
	dput(parent);
	if (err == -ENOMEM || err == -EINTR)
		return err;
	if (!err && a.ino == inode->i_ino && !inode_wrong_type(inode, a.mode) &&
	    a.generation == inode->i_generation) {
		atomic64_inc(&ZUFS_I(inode)->nlookup);
		zufs_fill_inode(inode, &a);
		zufs_dentry_fresh(dentry);
		return 1;
	}
	/* the name is not what the dcache says: the VFS drops the dentry */
	zufs_dir_incomplete(dentry);
	if (err)
		return 0;
	/* another inode now: give back the reference this lookup counted */
	if (a.ino)
		zufs_forget_one(dentry->d_sb, a.ino);
	return 0;
}

/* a child leaves the dcache: its directory is no longer known whole */
static void zufs_d_prune(struct dentry *dentry)
{
	zufs_dir_incomplete(dentry);
}

static const struct dentry_operations zufs_dentry_ops = {
	.d_revalidate	= zufs_d_revalidate,
	.d_prune	= zufs_d_prune,
};

static void zufs_send_release(struct super_block *sb, u64 ino, u64 fh)
{
	struct zus_release_req r = { .ino = ino, .fh = fh };

	zufs_simple(ZUFS_SB(sb)->mount_id, ZUS_OP_RELEASE, &r, sizeof(r),
		    NULL, 0, 0);
}

/*
 * create, mknod, mkdir, and the create of an atomic open (@fh not NULL:
 * CREATE_OPEN, whose reply also carries the open file's handle). Returns
 * the new inode, its ACLs applied, for the caller to put in the dcache.
 */
static struct inode *zufs_make_inode(struct inode *dir, struct dentry *dentry,
				     u32 opcode, umode_t mode, dev_t rdev,
				     u32 flags, u64 *fh)
{
	struct zus_create_req r = {
		.dir = dir->i_ino,
		.rdev = new_encode_dev(rdev),
		.flags = flags,
		.name_len = dentry->d_name.len,
	};
	u32 rlen = fh ? sizeof(struct zus_create_open_reply) :
			sizeof(struct zus_attr);
	struct zus_create_open_reply rep;
	struct zufs_new_acls acls;
	struct inode *inode;
	void *req;
	u32 len;
	s64 ret;

	/* the parent's default ACL (or the umask) shapes the mode (acl.c) */
	ret = zufs_acl_prepare(dir, &mode, &acls);
	if (ret)
		return ERR_PTR(ret);
	r.mode = mode;
	req = zufs_req_names(&r, sizeof(r), &dentry->d_name, NULL, 0, &len);
	if (IS_ERR(req)) {
		inode = req;
		goto out;
	}
	ret = zufs_simple(ZUFS_SB(dir->i_sb)->mount_id, opcode, req, len, &rep,
			  rlen, rlen);
	kfree(req);
	if (ret < 0) {
		zufs_name_error(dentry, ret);
		inode = ERR_PTR(ret);
		goto out;
	}
	if ((rep.attr.mode & S_IFMT) != (mode & S_IFMT))
		inode = ERR_PTR(-EIO);
	else
		inode = zufs_iget(dir->i_sb, &rep.attr, true);
	if (!IS_ERR(inode)) {
		/* made just now: no capability (until a setxattr here) */
		WRITE_ONCE(ZUFS_I(inode)->no_caps, true);
		ret = zufs_acl_apply(inode, &acls);
		if (ret) {
			/* the entry exists at zusd; a later lookup finds it */
			iput(inode);
			inode = ERR_PTR(ret);
		}
	}
	if (IS_ERR(inode)) {
		if (fh)
			zufs_send_release(dir->i_sb, rep.attr.ino, rep.fh);
		zufs_attr_stale(dir);
		goto out;
	}
	/* mtime, ctime and (mkdir) nlink changed: CREATE_OPEN says how */
	if (fh && rep.dir.ino == dir->i_ino &&
	    rep.dir.generation == dir->i_generation &&
	    !inode_wrong_type(dir, rep.dir.mode))
		zufs_fill_times(dir, &rep.dir, true);
	else
		zufs_times_stale(dir);
	if (fh)
		*fh = rep.fh;
out:
	zufs_acl_release(&acls);
	return inode;
}

/* @dentry names the new @inode (an atomic open's may be in lookup still) */
static void zufs_instantiate(struct dentry *dentry, struct inode *inode)
{
	zufs_dentry_fresh(dentry);
	if (d_in_lookup(dentry))
		d_splice_alias(inode, dentry);	/* not a directory: no alias */
	else
		d_instantiate(dentry, inode);
}

/* create, mknod, mkdir */
static int zufs_make(struct inode *dir, struct dentry *dentry, u32 opcode,
		     umode_t mode, dev_t rdev, u32 flags)
{
	struct inode *inode = zufs_make_inode(dir, dentry, opcode, mode, rdev,
					      flags, NULL);

	if (IS_ERR(inode))
		return PTR_ERR(inode);
	zufs_instantiate(dentry, inode);
	return 0;
}

static int zufs_create(struct user_namespace *mnt_userns, struct inode *dir,
		       struct dentry *dentry, umode_t mode, bool excl)
{
	return zufs_make(dir, dentry, ZUS_OP_CREATE, mode | S_IFREG, 0,
			 O_CREAT | (excl ? O_EXCL : 0));
}

static int zufs_mknod(struct user_namespace *mnt_userns, struct inode *dir,
		      struct dentry *dentry, umode_t mode, dev_t rdev)
{
	return zufs_make(dir, dentry, ZUS_OP_MKNOD, mode, rdev, 0);
}

static int zufs_mkdir(struct user_namespace *mnt_userns, struct inode *dir,
		      struct dentry *dentry, umode_t mode)
{
	int err = zufs_make(dir, dentry, ZUS_OP_MKDIR, mode | S_IFDIR, 0, 0);

	/* empty, and every name it gets from now on comes through here */
	if (!err && d_really_is_positive(dentry) &&
	    ZUFS_SB(dir->i_sb)->entry_timeout)
		WRITE_ONCE(ZUFS_I(d_inode(dentry))->complete_until,
			   get_jiffies_64() + ZUFS_SB(dir->i_sb)->entry_timeout);
	return err;
}

static int zufs_open(struct inode *inode, struct file *file);
static int zufs_open_created(struct inode *inode, struct file *file);

/*
 * open(O_CREAT) of a name the dcache has no inode for: one CREATE_OPEN
 * (exclusive, so zusd says whether it created), and no LOOKUP before it.
 * A name that exists after all (EEXIST without O_EXCL) is looked up and
 * opened the usual way, by the VFS after finish_no_open(). Without
 * O_CREAT, or with a zusd that has no CREATE_OPEN, the name is looked up
 * (and created, then opened) op by op.
 */
static int zufs_atomic_open(struct inode *dir, struct dentry *dentry,
			    struct file *file, unsigned int flags,
			    umode_t mode)
{
	struct zufs_sb_info *sbi = ZUFS_SB(dir->i_sb);
	bool create = flags & O_CREAT;
	struct dentry *res = NULL;
	struct inode *inode;
	u64 fh;
	int err;

	mode = (mode & ~S_IFMT) | S_IFREG;
	if (create && !READ_ONCE(sbi->no_create_open)) {
		inode = zufs_make_inode(dir, dentry, ZUS_OP_CREATE_OPEN, mode,
					0, file->f_flags | O_CREAT | O_EXCL,
					&fh);
		if (!IS_ERR(inode)) {
			zufs_instantiate(dentry, inode);
			file->f_mode |= FMODE_CREATED;
			file->private_data = (void *)(uintptr_t)fh;
			err = finish_open(file, dentry, zufs_open_created);
			if (err && !(file->f_mode & FMODE_OPENED))
				zufs_send_release(dir->i_sb, inode->i_ino, fh);
			return err;
		}
		err = PTR_ERR(inode);
		if (err == -ENOSYS)
			WRITE_ONCE(sbi->no_create_open, true);
		else if (err != -EEXIST || (flags & O_EXCL))
			return err;
		/* a cached negative name that another client created */
		zufs_dir_incomplete(dentry);
		if (err == -EEXIST && !d_in_lookup(dentry))
			d_drop(dentry);
	}
	if (d_in_lookup(dentry) || d_unhashed(dentry)) {
		res = zufs_lookup(dir, dentry, 0);
		if (IS_ERR(res))
			return PTR_ERR(res);
		if (res)
			dentry = res;
	}
	if (create && d_really_is_negative(dentry)) {
		err = zufs_make(dir, dentry, ZUS_OP_CREATE, mode, 0,
				O_CREAT | (flags & O_EXCL));
		if (!err) {
			file->f_mode |= FMODE_CREATED;
			err = finish_open(file, dentry, zufs_open);
		}
		dput(res);
		return err;
	}
	return finish_no_open(file, res);
}

static int zufs_remove(struct inode *dir, struct dentry *dentry, u32 opcode)
{
	struct zus_name_req r = { .dir = dir->i_ino,
				  .name_len = dentry->d_name.len };
	void *req;
	u32 len;
	s64 ret;

	req = zufs_req_names(&r, sizeof(r), &dentry->d_name, NULL, 0, &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	ret = zufs_simple(ZUFS_SB(dir->i_sb)->mount_id, opcode, req, len,
			  NULL, 0, 0);
	kfree(req);
	if (ret < 0)
		return ret;
	zufs_times_stale(dir);
	zufs_times_stale(d_inode(dentry));
	return 0;
}

static int zufs_unlink(struct inode *dir, struct dentry *dentry)
{
	struct inode *inode = d_inode(dentry);
	int err = zufs_remove(dir, dentry, ZUS_OP_UNLINK);

	if (err)
		return err;
	zufs_drop_nlink(inode);
	return 0;
}

static int zufs_rmdir(struct inode *dir, struct dentry *dentry)
{
	int err = zufs_remove(dir, dentry, ZUS_OP_RMDIR);

	if (err)
		return err;
	clear_nlink(d_inode(dentry));
	return 0;
}

static int zufs_rename(struct user_namespace *mnt_userns,
		       struct inode *old_dir, struct dentry *old_dentry,
		       struct inode *new_dir, struct dentry *new_dentry,
		       unsigned int flags)
{
	struct zus_rename_req r = {
		.old_dir = old_dir->i_ino,
		.new_dir = new_dir->i_ino,
		.flags = flags,
		.old_len = old_dentry->d_name.len,
		.new_len = new_dentry->d_name.len,
	};
	struct inode *target = d_inode(new_dentry);
	void *req;
	u32 len;
	s64 ret;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	req = zufs_req_names(&r, sizeof(r), &old_dentry->d_name,
			     new_dentry->d_name.name, new_dentry->d_name.len,
			     &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	ret = zufs_simple(ZUFS_SB(old_dir->i_sb)->mount_id, ZUS_OP_RENAME,
			  req, len, NULL, 0, 0);
	kfree(req);
	if (ret < 0) {
		zufs_name_error(new_dentry, ret);
		return ret;
	}
	if (target && !(flags & RENAME_EXCHANGE)) {
		if (S_ISDIR(target->i_mode))
			clear_nlink(target);
		else
			zufs_drop_nlink(target);
	}
	/* times and directory link counts: zusd's, at the next getattr */
	zufs_times_stale(old_dir);
	zufs_times_stale(new_dir);
	zufs_times_stale(d_inode(old_dentry));
	if (target)
		zufs_times_stale(target);
	return 0;
}

static int zufs_link(struct dentry *old, struct inode *dir,
		     struct dentry *dentry)
{
	struct zus_link_req r = { .ino = d_inode(old)->i_ino,
				  .new_dir = dir->i_ino,
				  .name_len = dentry->d_name.len };
	struct inode *inode;
	struct zus_attr a;
	void *req;
	u32 len;
	s64 ret;

	req = zufs_req_names(&r, sizeof(r), &dentry->d_name, NULL, 0, &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	ret = zufs_simple(ZUFS_SB(dir->i_sb)->mount_id, ZUS_OP_LINK, req, len,
			  &a, sizeof(a), sizeof(a));
	kfree(req);
	if (ret < 0) {
		zufs_name_error(dentry, ret);
		return ret;
	}
	if (a.ino != d_inode(old)->i_ino)
		return -EIO;
	inode = zufs_iget(dir->i_sb, &a, true);
	if (IS_ERR(inode))
		return PTR_ERR(inode);
	zufs_dentry_fresh(dentry);
	d_instantiate(dentry, inode);
	zufs_times_stale(dir);
	return 0;
}

static int zufs_symlink(struct user_namespace *mnt_userns, struct inode *dir,
			struct dentry *dentry, const char *target)
{
	size_t tlen = strlen(target);
	struct zus_symlink_req r = { .dir = dir->i_ino,
				     .name_len = dentry->d_name.len,
				     .target_len = tlen };
	struct inode *inode;
	struct zus_attr a;
	void *req;
	u32 len;
	s64 ret;

	if (tlen >= ZUS_PATH_MAX)
		return -ENAMETOOLONG;
	req = zufs_req_names(&r, sizeof(r), &dentry->d_name, target, tlen,
			     &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	ret = zufs_simple(ZUFS_SB(dir->i_sb)->mount_id, ZUS_OP_SYMLINK, req,
			  len, &a, sizeof(a), sizeof(a));
	kfree(req);
	if (ret < 0) {
		zufs_name_error(dentry, ret);
		return ret;
	}
	if (!S_ISLNK(a.mode))
		return -EIO;
	inode = zufs_iget(dir->i_sb, &a, true);
	if (IS_ERR(inode))
		return PTR_ERR(inode);
	zufs_dentry_fresh(dentry);
	d_instantiate(dentry, inode);
	zufs_times_stale(dir);
	return 0;
}

static const char *zufs_get_link(struct dentry *dentry, struct inode *inode,
				 struct delayed_call *done)
{
	struct zus_ino_req r = { .ino = inode->i_ino };
	struct kvec kv;
	struct iov_iter it;
	struct zufs_op op = {
		.opcode = ZUS_OP_READLINK,
		.req = &r,
		.req_len = sizeof(r),
		.result_max = ZUS_PATH_MAX,
		.data_out = &it,
		.data_out_size = ZUS_PATH_MAX - 1,
	};
	char *buf;
	s64 ret;

	if (!dentry)
		return ERR_PTR(-ECHILD);
	buf = kmalloc(ZUS_PATH_MAX, GFP_KERNEL);
	if (!buf)
		return ERR_PTR(-ENOMEM);
	kv.iov_base = buf;
	kv.iov_len = ZUS_PATH_MAX - 1;
	iov_iter_kvec(&it, ITER_DEST, &kv, 1, kv.iov_len);
	op.mount_id = ZUFS_SB(inode->i_sb)->mount_id;
	ret = zufs_dispatch(&op);
	if (ret >= 0 && (!op.data_len || memchr(buf, 0, op.data_len)))
		ret = -EIO;
	if (ret < 0) {
		kfree(buf);
		return ERR_PTR(ret);
	}
	buf[op.data_len] = 0;
	set_delayed_call(done, kfree_link, buf);
	return buf;
}

/*
 * A READDIR_PLUS entry: its name goes in the dcache with its inode, which
 * keeps the lookup reference zusd counted for it, so that the stat of each
 * entry that follows (ls -l, find, rm -rf) costs no LOOKUP. A name the
 * dcache holds with this inode already is only confirmed (its attributes
 * stay as they are: they may be newer than the lookup, which raced with
 * whatever this mount did to the inode since); a name it holds otherwise
 * (negative, another inode) is left to d_revalidate.
 */
static void zufs_readdir_link(struct dentry *parent, const char *name,
			      u32 len, const struct zus_attr *a)
{
	struct inode *dir = d_inode(parent);
	struct qstr q = QSTR_INIT(name, len);
	DECLARE_WAIT_QUEUE_HEAD_ONSTACK(wq);
	struct dentry *dentry, *alias;
	struct inode *inode;

	q.hash = full_name_hash(parent, q.name, q.len);
	dentry = d_lookup(parent, &q);
	if (dentry) {
		inode = d_inode(dentry);
		if (inode && inode->i_ino == a->ino &&
		    !inode_wrong_type(inode, a->mode) &&
		    inode->i_generation == a->generation) {
			atomic64_inc(&ZUFS_I(inode)->nlookup);
			zufs_dentry_fresh(dentry);
			dput(dentry);
			return;
		}
		dput(dentry);
		goto forget;
	}
	dentry = d_alloc_parallel(parent, &q, &wq);
	if (IS_ERR(dentry))
		goto forget;
	if (!d_in_lookup(dentry)) {
		/* another task looked it up meanwhile */
		dput(dentry);
		goto forget;
	}
	inode = zufs_iget(dir->i_sb, a, true);
	if (IS_ERR(inode)) {
		/* as after a LOOKUP: an inode of another type keeps the count */
		d_lookup_done(dentry);
		dput(dentry);
		return;
	}
	zufs_dentry_fresh(dentry);
	alias = d_splice_alias(inode, dentry);
	d_lookup_done(dentry);
	if (!IS_ERR_OR_NULL(alias))
		dput(alias);
	dput(dentry);
	return;
forget:
	zufs_forget_one(dir->i_sb, a->ino);
}

/* DT_* of a mode */
static u32 zufs_dt(u32 mode)
{
	return (mode & S_IFMT) >> 12;
}

/*
 * Directory entries from zusd's window: READDIR_PLUS (each entry with its
 * inode's attributes, zufs_readdir_link()) unless the directory is known
 * whole (its names are all in the dcache) or zusd lacks the op; else
 * READDIR, names only.
 */
static int zufs_readdir(struct file *file, struct dir_context *ctx)
{
	struct inode *dir = file_inode(file);
	struct zufs_sb_info *sbi = ZUFS_SB(dir->i_sb);
	struct zus_readdir_req r = { .dir = dir->i_ino };
	struct zus_dirent_plus dp;
	struct zus_dirent *de = &dp.dirent;
	struct iov_iter it;
	struct kvec kv;
	size_t size;
	char *buf;
	int err = 0;

	if (!dir_emit_dots(file, ctx))
		return 0;
	/* zusd may fill the whole window */
	size = zufs_data_max();
	if (!size)
		return -EIO;
	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		bool plus = !READ_ONCE(sbi->no_readdir_plus) &&
			    !zufs_dir_complete(dir);
		size_t rec = plus ? sizeof(dp) : sizeof(*de);
		struct zufs_op op = {
			.opcode = plus ? ZUS_OP_READDIR_PLUS : ZUS_OP_READDIR,
			.mount_id = sbi->mount_id,
			.req = &r,
			.req_len = sizeof(r),
			.result_max = size,
			.data_out = &it,
			.data_out_size = size,
		};
		size_t off = 0, n;
		bool progress = false, emit = true;
		s64 ret;

		r.cookie = ctx->pos - 2;
		kv.iov_base = buf;
		kv.iov_len = size;
		iov_iter_kvec(&it, ITER_DEST, &kv, 1, size);
		ret = zufs_dispatch(&op);
		if (ret == -ENOSYS && plus) {
			WRITE_ONCE(sbi->no_readdir_plus, true);
			continue;
		}
		if (ret < 0) {
			err = ret;
			break;
		}
		n = op.data_len;
		if (!n)
			break;
		/*
		 * Every record is read (a plus one's lookup reference is kept
		 * or given back) even after the caller's buffer is full.
		 */
		while (off + rec <= n) {
			const char *name = buf + off + rec;
			bool dots;

			memcpy(&dp, buf + off, rec);
			if (!de->name_len || de->name_len > ZUS_NAME_MAX ||
			    off + rec + de->name_len > n || de->kind > 15 ||
			    de->cookie >= (u64)LLONG_MAX - 2 || !de->ino) {
				err = -EIO;
				goto out;
			}
			dots = is_dot_dotdot(name, de->name_len);
			if (plus && dp.attr.ino) {
				if (dots || dp.attr.ino != de->ino ||
				    zufs_dt(dp.attr.mode) != de->kind)
					zufs_forget_one(dir->i_sb, dp.attr.ino);
				else
					zufs_readdir_link(file->f_path.dentry,
							  name, de->name_len,
							  &dp.attr);
			}
			if (emit) {
				if (!dots &&
				    !dir_emit(ctx, name, de->name_len, de->ino,
					      de->kind))
					emit = false;
				else
					ctx->pos = de->cookie + 2;
				progress = true;
			}
			off += round_up(rec + de->name_len, 8);
		}
		if (!emit)
			break;
		if (!progress) {
			err = -EIO;
			break;
		}
	}
out:
	kvfree(buf);
	return err;
}

static int zufs_dir_fsync(struct file *file, loff_t start, loff_t end,
			  int datasync)
{
	return 0;
}

/* ----- files ----- */

static void zufs_count_open(struct inode *inode)
{
	mutex_lock(&ZUFS_I(inode)->kc_lock);
	ZUFS_I(inode)->kc_open++;
	mutex_unlock(&ZUFS_I(inode)->kc_lock);
}

static int zufs_open(struct inode *inode, struct file *file)
{
	struct zus_open_req r = {
		.ino = inode->i_ino,
		.flags = file->f_flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC),
	};
	struct zus_open_reply rep;
	s64 ret;

	ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id, ZUS_OP_OPEN, &r,
			  sizeof(r), &rep, sizeof(rep), sizeof(rep));
	if (ret < 0)
		return ret;
	file->private_data = (void *)(uintptr_t)rep.fh;
	zufs_count_open(inode);
	return 0;
}

/* finish_open()'s open of a file CREATE_OPEN opened: its handle is set */
static int zufs_open_created(struct inode *inode, struct file *file)
{
	zufs_count_open(inode);
	return 0;
}

static int zufs_kcache_send(struct inode *inode, bool on)
{
	struct zus_kernel_cache_req r = { .ino = inode->i_ino, .on = on };
	s64 ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id,
			      ZUS_OP_KERNEL_CACHE, &r, sizeof(r), NULL, 0, 0);

	return ret < 0 ? ret : 0;
}

/*
 * Before the first mapping of @inode: mark it at zusd, which then waits
 * for the fast-path ops in flight on it and refuses later ones
 * (ZUS_EUSEKERNEL), so no fast-path truncate frees blocks the kernel maps
 * and no fast-path write misses the page cache. Held until the inode's
 * last open file goes (every mapping holds one). Called with mmap_lock
 * held: zusd's answer does not depend on this process's memory.
 */
static int zufs_kcache_mark(struct inode *inode)
{
	struct zufs_inode *zi = ZUFS_I(inode);
	int err = 0;

	mutex_lock(&zi->kc_lock);
	if (!zi->kc_marked) {
		err = zufs_kcache_send(inode, true);
		zi->kc_marked = !err;
	}
	mutex_unlock(&zi->kc_lock);
	return err;
}

/*
 * @file on one of an inode's lists of files (wb_files, fp_files; under
 * wb_lock), once: 1 when added, 0 when it was there, or -ENOMEM.
 */
static int zufs_file_list_add(struct zufs_inode *zi, struct list_head *head,
			      struct file *file)
{
	struct zufs_file_ref *w, *n = kmalloc(sizeof(*n), GFP_KERNEL);

	if (!n)
		return -ENOMEM;
	n->file = file;
	spin_lock(&zi->wb_lock);
	list_for_each_entry(w, head, list) {
		if (w->file == file) {
			spin_unlock(&zi->wb_lock);
			kfree(n);
			return 0;
		}
	}
	list_add_tail(&n->list, head);
	spin_unlock(&zi->wb_lock);
	return 1;
}

/* @file off an inode's list of files: whether it was there */
static bool zufs_file_list_del(struct zufs_inode *zi, struct list_head *head,
			       struct file *file)
{
	struct zufs_file_ref *w, *found = NULL;

	spin_lock(&zi->wb_lock);
	list_for_each_entry(w, head, list) {
		if (w->file == file) {
			found = w;
			list_del(&w->list);
			break;
		}
	}
	spin_unlock(&zi->wb_lock);
	if (!found)
		return false;
	kfree(found);
	return true;
}

/*
 * What the FUSE bridge answers to ZUFS_IOC_TICKET (zus_api.h), with the
 * layout of zus-api's IoctlTicket.
 */
struct zufs_ioctl_ticket {
	__u64 ino;
	__u64 ticket;
	__u32 mount_id;
	__u32 writable;
};

/*
 * ZUFS_IOC_TICKET: the preload library asks it on every file it is about
 * to serve itself, before its first op. This module issues no tickets
 * (ticket 0: only the owner of a mount serves files past the kernel here);
 * on a file open for writing it means that the file's size, blocks, times
 * and mode will change behind this mount, so its cached attributes go now
 * and are not trusted again until that file is released.
 */
static long zufs_file_ioctl(struct file *file, unsigned int cmd,
			    unsigned long arg)
{
	struct inode *inode = file_inode(file);
	struct zufs_inode *zi = ZUFS_I(inode);
	struct zufs_ioctl_ticket t = {
		.ino = inode->i_ino,
		.mount_id = ZUFS_SB(inode->i_sb)->mount_id,
		.writable = !!(file->f_mode & FMODE_WRITE),
	};
	int added;

	BUILD_BUG_ON(_IOC_SIZE(ZUFS_IOC_TICKET) != sizeof(t));
	if (cmd != ZUFS_IOC_TICKET)
		return -ENOTTY;
	if (t.writable) {
		added = zufs_file_list_add(zi, &zi->fp_files, file);
		if (added < 0)
			return added;
		if (added)
			atomic_inc(&zi->fp_writers);
		zufs_attr_stale(inode);
	}
	return copy_to_user((void __user *)arg, &t, sizeof(t)) ? -EFAULT : 0;
}

/* @file's ZUFS_IOC_TICKET registration goes with it */
static void zufs_fp_del(struct file *file)
{
	struct inode *inode = file_inode(file);
	struct zufs_inode *zi = ZUFS_I(inode);

	if (!atomic_read(&zi->fp_writers) ||
	    !zufs_file_list_del(zi, &zi->fp_files, file))
		return;
	/* what the file's last writes changed is not cached either */
	zufs_attr_stale(inode);
	atomic_dec(&zi->fp_writers);
}

static int zufs_release(struct inode *inode, struct file *file)
{
	struct zufs_inode *zi = ZUFS_I(inode);

	/* dirty pages of shared maps go while this fh can carry them */
	zufs_wb_del(file);
	zufs_fp_del(file);
	mutex_lock(&zi->kc_lock);
	if (zi->kc_open && !--zi->kc_open && zi->kc_marked) {
		/* no file, so no mapping: the page cache goes, then the mark */
		if (!IS_DAX(inode))
			invalidate_mapping_pages(inode->i_mapping, 0, -1);
		zufs_kcache_send(inode, false);
		zi->kc_marked = false;
	}
	mutex_unlock(&zi->kc_lock);
	/*
	 * The close does not wait for zusd: the release goes out with the
	 * next batch (kill_sb flushes them), in order with the forgets.
	 */
	zufs_defer(inode->i_sb, ZUS_OP_RELEASE, inode->i_ino,
		   (uintptr_t)file->private_data);
	return 0;
}

/*
 * One READ or WRITE of @len bytes at @pos through the slot window: @it is
 * where the data goes (READ) or comes from (WRITE). Returns the bytes zusd
 * moved; @rep has what a write left (its offset, the file's size).
 */
static s64 zufs_io(struct inode *inode, u64 fh, u32 opcode, u32 flags,
		   loff_t pos, size_t len, struct iov_iter *it,
		   struct zus_io_reply *rep)
{
	struct zus_io_req r = {
		.ino = inode->i_ino,
		.fh = fh,
		.offset = pos,
		.len = len,
		.flags = flags,
		.data_kind = ZUS_DATA_WINDOW,
	};
	struct zufs_op op = {
		.opcode = opcode,
		.mount_id = ZUFS_SB(inode->i_sb)->mount_id,
		.req = &r,
		.req_len = sizeof(r),
		.reply = rep,
		.reply_size = sizeof(*rep),
		.result_max = len,
	};
	s64 ret;

	if (opcode == ZUS_OP_WRITE) {
		op.reply_min = sizeof(*rep);
		op.data_in = it;
		op.data_in_len = len;
	} else {
		op.data_out = it;
		op.data_out_size = len;
	}
	ret = zufs_dispatch(&op);
	/* a read's result is the bytes it put in the window */
	if (ret >= 0 && opcode == ZUS_OP_READ && op.data_len != ret)
		ret = -EIO;
	return ret;
}

static ssize_t zufs_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	size_t chunk = zufs_data_max();
	loff_t pos = iocb->ki_pos;
	ssize_t done = 0;
	s64 ret = 0;

	if (IS_DAX(inode)) {
		done = zufs_dax_read_iter(iocb, to);	/* dax.c */
		if (done >= 0)
			file_accessed(file);
		return done;
	}
	if (!chunk)
		return -EIO;
	/* what shared maps wrote reaches zusd first */
	ret = zufs_flush_range(inode, pos, iov_iter_count(to));
	if (ret)
		return ret;
	while (iov_iter_count(to)) {
		size_t len = min(iov_iter_count(to), chunk);
		struct zus_io_reply rep = {};

		ret = zufs_io(inode, (uintptr_t)file->private_data, ZUS_OP_READ,
			      0, pos, len, to, &rep);
		if (ret <= 0)
			break;
		pos += ret;
		done += ret;
		if (ret < len)
			break;
	}
	iocb->ki_pos = pos;
	/* atime by the mount's policy (zufs_update_time) */
	if (done || ret >= 0)
		file_accessed(file);
	return done ? done : ret;
}

static ssize_t zufs_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	size_t chunk = zufs_data_max();
	ssize_t done = 0;
	s64 ret;
	loff_t pos;
	u32 flags = 0;

	if (IS_DAX(inode))
		return zufs_dax_write_iter(iocb, from);	/* dax.c */
	if (!chunk)
		return -EIO;
	inode_lock(inode);
	ret = generic_write_checks(iocb, from);
	if (ret <= 0)
		goto out;
	ret = file_remove_privs(file);
	if (ret)
		goto out;
	pos = iocb->ki_pos;
	/* dirty pages of shared maps must not land over this write later */
	ret = zufs_flush_range(inode, pos, iov_iter_count(from));
	if (ret)
		goto out;
	if (iocb->ki_flags & IOCB_APPEND)
		flags |= ZUS_IO_FLAGS_APPEND;
	if (iocb_is_dsync(iocb))
		flags |= ZUS_IO_FLAGS_SYNC;
	while (iov_iter_count(from)) {
		size_t len = min(iov_iter_count(from), chunk);
		struct zus_io_reply rep = {};

		ret = zufs_io(inode, (uintptr_t)file->private_data,
			      ZUS_OP_WRITE, flags, pos, len, from, &rep);
		if (ret >= 0 && (rep.offset > MAX_LFS_FILESIZE ||
				 rep.size > MAX_LFS_FILESIZE))
			ret = -EIO;
		if (ret <= 0)
			break;
		pos = rep.offset + ret;
		done += ret;
		i_size_write(inode, rep.size);
		if (ret < len)
			break;
	}
	/*
	 * mtime and ctime changed; mode and owner did not (this module sends
	 * no KILL_SUIDGID: file_remove_privs() above dropped the set-id bits
	 * with a SETATTR), so permission checks and the cached ACLs stay.
	 * Pages of private maps are read again.
	 */
	zufs_times_stale(inode);
	if (done && inode->i_mapping->nrpages)
		invalidate_inode_pages2_range(inode->i_mapping,
					      (pos - done) >> PAGE_SHIFT,
					      (pos - 1) >> PAGE_SHIFT);
	if (done) {
		iocb->ki_pos = pos;
		ret = done;
	}
out:
	inode_unlock(inode);
	return ret;
}

static int zufs_fsync(struct file *file, loff_t start, loff_t end,
		      int datasync)
{
	struct inode *inode = file_inode(file);
	struct zus_fsync_req r = {
		.ino = inode->i_ino,
		.fh = (uintptr_t)file->private_data,
		.datasync = datasync,
	};
	s64 ret;

	/* dirty pages of shared maps first (DAX: to pmem, dax.c; else: WRITEs) */
	ret = IS_DAX(inode) ? zufs_dax_fsync_begin(file, start, end) :
			      file_write_and_wait_range(file, start, end);
	if (ret)
		return ret;
	ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id, ZUS_OP_FSYNC, &r,
			  sizeof(r), NULL, 0, 0);
	return ret < 0 ? ret : 0;
}

/*
 * A DAX read's atime, which the VFS found due by the mount's policy: zusd
 * stamps it (ATIME_NOW: its clock, as for its own reads) and keeps the ctime,
 * which is never older than the one sent (CTIME). The mtime and ctime of a
 * DAX write that zusd learns with the next MAP_DONE stay in the inode.
 */
static int zufs_dax_atime(struct inode *inode)
{
	struct zus_setattr_req r = {
		.ino = inode->i_ino,
		.valid = ZUS_SETATTR_ATIME_NOW | ZUS_SETATTR_CTIME,
	};
	struct timespec64 mtime = inode->i_mtime;
	struct timespec64 ctime = inode->i_ctime;
	int err;

	r.ctime_ns = timespec64_to_ns(&ctime);
	err = zufs_setattr_send(inode, &r);
	if (err)
		return err;
	if (timespec64_compare(&mtime, &inode->i_mtime) > 0)
		inode->i_mtime = mtime;
	if (timespec64_compare(&ctime, &inode->i_ctime) > 0)
		inode->i_ctime = ctime;
	return 0;
}

/*
 * Times the VFS updates itself: atime by the mount's relatime, strictatime or
 * noatime policy after a read or readdir, mtime and ctime of a store through
 * a shared map (without DAX: a SETATTR) or a DAX write (MAP_DONE carries it).
 */
static int zufs_update_time(struct inode *inode, struct timespec64 *now,
			    int flags)
{
	struct zus_setattr_req r = { .ino = inode->i_ino };

	if (!(flags & (S_MTIME | S_CTIME))) {
		/*
		 * atime alone. Window reads and readdir reached zusd, whose
		 * plugin applied its atime policy: the next stat reads what it
		 * kept. A DAX read never reaches zusd.
		 */
		if (!IS_DAX(inode) || !S_ISREG(inode->i_mode)) {
			zufs_attr_stale(inode);
			return 0;
		}
		return zufs_dax_atime(inode);
	}
	/*
	 * DAX writes and stores through DAX maps: the kernel's inode only,
	 * zusd learns the mtime with the next MAP_DONE (dax.c), so a cached
	 * overwrite stays free of round trips.
	 */
	if (IS_DAX(inode))
		return generic_update_time(inode, now, flags);
	r.valid = ZUS_SETATTR_MTIME;
	r.mtime_ns = timespec64_to_ns(now);
	return zufs_setattr_send(inode, &r);
}

/*
 * fallocate: allocation, KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE, as the plugin
 * supports them (else EOPNOTSUPP from zusd). Blocks it frees are first
 * unmapped everywhere (DAX: after pinned pages were waited for), and cached
 * pages of the range dropped.
 */
static long zufs_fallocate(struct file *file, int mode, loff_t offset,
			   loff_t len)
{
	struct inode *inode = file_inode(file);
	struct zus_fallocate_req r = {
		.ino = inode->i_ino,
		.offset = offset,
		.len = len,
		.mode = mode,
	};
	bool frees = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
	s64 ret;

	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE |
		     FALLOC_FL_ZERO_RANGE))
		return -EOPNOTSUPP;
	inode_lock(inode);
	ret = file_remove_privs(file);
	if (ret)
		goto out;
	if (frees && IS_DAX(inode)) {
		ret = zufs_dax_truncate_begin(inode, i_size_read(inode));
		if (ret)
			goto out;
	} else {
		ret = zufs_flush_range(inode, offset, len);
		if (ret)
			goto out;
	}
	ret = zufs_simple(ZUFS_SB(inode->i_sb)->mount_id, ZUS_OP_FALLOCATE, &r,
			  sizeof(r), NULL, 0, 0);
	/* a server without the op: posix_fallocate() then writes zeros itself */
	if (ret == -ENOSYS)
		ret = -EOPNOTSUPP;
	if (frees && IS_DAX(inode))
		zufs_dax_truncate_end(inode);
	else if (frees)
		truncate_pagecache_range(inode, offset, offset + len - 1);
	if (!ret && !(mode & FALLOC_FL_KEEP_SIZE) &&
	    offset + len > i_size_read(inode))
		i_size_write(inode, offset + len);
	/* ctime, mtime, blocks */
	zufs_attr_stale(inode);
out:
	inode_unlock(inode);
	return ret < 0 ? ret : 0;
}

/*
 * copy_file_range between two files of this mount: one COPY_FILE_RANGE op,
 * the data copied by the plugin (pmem to pmem), never through the kernel.
 * The VFS checked the arguments (generic_copy_file_checks: overlap within a
 * file, read-only and append-only destinations, the length cut at the
 * source's size). Files of two mounts, or a plugin without the op, get the
 * kernel's splice copy.
 */
static ssize_t zufs_copy_file_range(struct file *in, loff_t pos_in,
				    struct file *out, loff_t pos_out,
				    size_t len, unsigned int flags)
{
	struct inode *src = file_inode(in), *dst = file_inode(out);
	struct zus_copy_file_range_req r = {
		.ino_in = src->i_ino,
		.fh_in = (uintptr_t)in->private_data,
		.off_in = pos_in,
		.ino_out = dst->i_ino,
		.fh_out = (uintptr_t)out->private_data,
		.off_out = pos_out,
		.len = len,
	};
	struct zufs_op op = {
		.opcode = ZUS_OP_COPY_FILE_RANGE,
		.mount_id = ZUFS_SB(dst->i_sb)->mount_id,
		.req = &r,
		.req_len = sizeof(r),
		.result_max = min_t(u64, len, MAX_LFS_FILESIZE - pos_out),
	};
	s64 ret;

	if (src->i_sb != dst->i_sb)
		goto splice;
	inode_lock(dst);
	ret = zufs_flush_range(src, pos_in, len);
	if (!ret)
		ret = zufs_flush_range(dst, pos_out, len);
	if (!ret)
		ret = file_remove_privs(out);
	if (!ret)
		ret = zufs_dispatch(&op);
	if (ret > 0) {
		if (pos_out + ret > i_size_read(dst))
			i_size_write(dst, pos_out + ret);
		if (!IS_DAX(dst) && dst->i_mapping->nrpages)
			invalidate_inode_pages2_range(dst->i_mapping,
					pos_out >> PAGE_SHIFT,
					(pos_out + ret - 1) >> PAGE_SHIFT);
	}
	/* mtime, ctime and the size zusd committed */
	zufs_attr_stale(dst);
	inode_unlock(dst);
	if (ret != -ENOSYS && ret != -EOPNOTSUPP)
		return ret;
splice:
	return generic_copy_file_range(in, pos_in, out, pos_out, len, flags);
}

/* ----- xattrs ----- */

/*
 * The POSIX ACL names have handlers of their own (acl.c enforces what they
 * store); any other system.* name would be stored without meaning anything:
 * refused.
 */
static bool zufs_xattr_name_ok(const char *name)
{
	return strncmp(name, XATTR_SYSTEM_PREFIX, XATTR_SYSTEM_PREFIX_LEN);
}

/* The value of @name (or its size, @size 0); acl.c reads ACLs with it. */
ssize_t zufs_getxattr(struct inode *inode, const char *name, void *buffer,
		      size_t size)
{
	size_t nlen = strlen(name);
	size_t max = min_t(size_t, size, zufs_data_max());
	struct zus_xattr_req r = {
		.ino = inode->i_ino,
		.name_len = nlen,
		.size = min_t(size_t, max, XATTR_SIZE_MAX),
	};
	struct iov_iter it;
	struct kvec kv = { .iov_base = buffer, .iov_len = r.size };
	struct zufs_op op = {
		.opcode = ZUS_OP_GETXATTR,
		.mount_id = ZUFS_SB(inode->i_sb)->mount_id,
		.result_max = size ? r.size : XATTR_SIZE_MAX,
	};
	void *req;
	bool caps;
	u32 len;
	s64 ret;

	if (size && !r.size)
		return -EIO;	/* no session */
	/* asked at every write's and chown's check for privileges to drop */
	caps = !strcmp(name, XATTR_NAME_CAPS);
	if (caps && READ_ONCE(ZUFS_I(inode)->no_caps))
		return -ENODATA;
	req = zufs_req_build(&r, sizeof(r), name, nlen, NULL, 0, &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	op.req = req;
	op.req_len = len;
	if (r.size) {
		iov_iter_kvec(&it, ITER_DEST, &kv, 1, r.size);
		op.data_out = &it;
		op.data_out_size = r.size;
	}
	ret = zufs_dispatch(&op);
	kfree(req);
	/* with a buffer, the value itself; without, its length only */
	if (ret >= 0 && op.data_len != (r.size ? ret : 0))
		ret = -EIO;
	if (caps && ret == -ENODATA)
		WRITE_ONCE(ZUFS_I(inode)->no_caps, true);
	return ret;
}

static int zufs_xattr_get(const struct xattr_handler *handler,
			  struct dentry *dentry, struct inode *inode,
			  const char *name, void *buffer, size_t size)
{
	if (!zufs_xattr_name_ok(name))
		return -EOPNOTSUPP;
	return zufs_getxattr(inode, name, buffer, size);
}

/* Sets @name (@value NULL: removes it); acl.c stores ACLs with it. */
int zufs_setxattr(struct inode *inode, const char *name, const void *value,
		  size_t size, int flags)
{
	size_t nlen = strlen(name);
	struct zus_xattr_req r = {
		.ino = inode->i_ino,
		.name_len = nlen,
		.flags = flags & (XATTR_CREATE | XATTR_REPLACE),
		.size = value ? size : 0,
	};
	struct iov_iter it;
	struct kvec kv = { .iov_base = (void *)value, .iov_len = r.size };
	struct zufs_op op = {
		.opcode = value ? ZUS_OP_SETXATTR : ZUS_OP_REMOVEXATTR,
		.mount_id = ZUFS_SB(inode->i_sb)->mount_id,
	};
	void *req;
	u32 len;
	s64 ret;

	if (r.size > XATTR_SIZE_MAX)
		return -E2BIG;
	if (r.size > zufs_data_max())
		return zufs_data_max() ? -E2BIG : -EIO;
	if (!strcmp(name, XATTR_NAME_CAPS))
		WRITE_ONCE(ZUFS_I(inode)->no_caps, false);
	req = zufs_req_build(&r, sizeof(r), name, nlen, NULL, 0, &len);
	if (IS_ERR(req))
		return PTR_ERR(req);
	op.req = req;
	op.req_len = len;
	if (r.size) {
		iov_iter_kvec(&it, ITER_SOURCE, &kv, 1, r.size);
		op.data_in = &it;
		op.data_in_len = r.size;
	}
	ret = zufs_dispatch(&op);
	kfree(req);
	if (ret < 0)
		return ret;
	zufs_attr_stale(inode);	/* ctime */
	return 0;
}

static int zufs_xattr_set(const struct xattr_handler *handler,
			  struct user_namespace *mnt_userns,
			  struct dentry *dentry, struct inode *inode,
			  const char *name, const void *value, size_t size,
			  int flags)
{
	if (!zufs_xattr_name_ok(name))
		return -EOPNOTSUPP;
	return zufs_setxattr(inode, name, value, size, flags);
}

/* Checks a name list: NUL-terminated names, none empty. */
static bool zufs_xattr_list_ok(const char *buf, size_t n)
{
	size_t i, start = 0;

	if (n && buf[n - 1])
		return false;
	for (i = 0; i < n; i++) {
		if (buf[i])
			continue;
		if (i == start)
			return false;
		start = i + 1;
	}
	return true;
}

static ssize_t zufs_listxattr_raw(struct inode *inode, char *buffer,
				  size_t size)
{
	size_t max = min_t(size_t, size, zufs_data_max());
	struct zus_xattr_req r = {
		.ino = inode->i_ino,
		.size = min_t(size_t, max, XATTR_LIST_MAX),
	};
	struct iov_iter it;
	struct kvec kv = { .iov_base = buffer, .iov_len = r.size };
	struct zufs_op op = {
		.opcode = ZUS_OP_LISTXATTR,
		.mount_id = ZUFS_SB(inode->i_sb)->mount_id,
		.req = &r,
		.req_len = sizeof(r),
		.result_max = size ? r.size : XATTR_LIST_MAX,
	};
	s64 ret;

	if (size && !r.size)
		return -EIO;
	if (r.size) {
		iov_iter_kvec(&it, ITER_DEST, &kv, 1, r.size);
		op.data_out = &it;
		op.data_out_size = r.size;
	}
	ret = zufs_dispatch(&op);
	if (ret >= 0 && op.data_len != (r.size ? ret : 0))
		ret = -EIO;
	if (ret > 0 && r.size && !zufs_xattr_list_ok(buffer, ret))
		ret = -EIO;
	return ret;
}

/*
 * The plugin lists every name; trusted.* names are shown only to
 * CAP_SYS_ADMIN, as the kernel's own filesystems do. Other callers get the
 * list without them, so their sizes are computed from the whole list.
 */
static ssize_t zufs_listxattr(struct dentry *dentry, char *buffer,
			      size_t size)
{
	struct inode *inode = d_inode(dentry);
	ssize_t len, i, out = 0;
	char *all;

	if (capable(CAP_SYS_ADMIN))
		return zufs_listxattr_raw(inode, buffer, size);
	len = zufs_listxattr_raw(inode, NULL, 0);
	if (len <= 0)
		return len;
	if (len > XATTR_LIST_MAX)
		return -E2BIG;
	all = kvmalloc(len, GFP_KERNEL);
	if (!all)
		return -ENOMEM;
	len = zufs_listxattr_raw(inode, all, len);
	for (i = 0; len > 0 && i < len; i += strlen(all + i) + 1) {
		size_t n = strlen(all + i) + 1;

		if (!strncmp(all + i, XATTR_TRUSTED_PREFIX,
			     XATTR_TRUSTED_PREFIX_LEN))
			continue;
		if (size && out + n > size) {
			out = -ERANGE;
			break;
		}
		if (size)
			memcpy(buffer + out, all + i, n);
		out += n;
	}
	kvfree(all);
	return len < 0 ? len : out;
}

static const struct xattr_handler zufs_xattr_handler = {
	.prefix	= "",	/* every name: zusd's plugin decides */
	.get	= zufs_xattr_get,
	.set	= zufs_xattr_set,
};

static const struct xattr_handler *zufs_xattr_handlers[] = {
	&posix_acl_access_xattr_handler,	/* acl.c's get_acl/set_acl */
	&posix_acl_default_xattr_handler,
	&zufs_xattr_handler,
	NULL
};

/*
 * Pages only for mappings (without DAX): read() and write() go to zusd
 * directly, and a write drops the pages it covers. Shared writable maps
 * write their dirty pages back (zufs_writepage below).
 */
static int zufs_read_folio(struct file *file, struct folio *folio)
{
	struct inode *inode = folio->mapping->host;
	struct bio_vec bv = {
		.bv_page = &folio->page,
		.bv_len = PAGE_SIZE,
	};
	struct zus_io_reply rep = {};
	struct iov_iter it;
	s64 ret;

	/* the large-folio mapping flag is never set: one page */
	if (!file || folio_test_large(folio)) {
		ret = -EIO;
		goto out;
	}
	iov_iter_bvec(&it, ITER_DEST, &bv, 1, PAGE_SIZE);
	ret = zufs_io(inode, (uintptr_t)file->private_data, ZUS_OP_READ, 0,
		      folio_pos(folio), PAGE_SIZE, &it, &rep);
	if (ret < 0)
		goto out;
	if (ret < PAGE_SIZE)
		zero_user_segment(&folio->page, ret, PAGE_SIZE);
	folio_mark_uptodate(folio);
	ret = 0;
out:
	folio_unlock(folio);
	return ret;
}

/*
 * Shared writable maps on a mount without DAX: pages of the page cache,
 * dirtied by stores through the map and written back as WRITE ops, through
 * the fh of a file that has such a map (zusd needs an open file for a
 * write). read(), write(), copy_file_range and fsync first write back the
 * dirty pages of their range, so that zusd holds the data they see or
 * replace; the last close of a mapping file writes back everything while its
 * fh is still open.
 */
static int zufs_wb_add(struct file *file)
{
	struct zufs_inode *zi = ZUFS_I(file_inode(file));
	int err = zufs_file_list_add(zi, &zi->wb_files, file);

	return err < 0 ? err : 0;
}

static void zufs_wb_del(struct file *file)
{
	struct inode *inode = file_inode(file);
	struct zufs_inode *zi = ZUFS_I(inode);

	if (list_empty_careful(&zi->wb_files))
		return;
	/* every dirty page written while this fh can still carry it */
	filemap_write_and_wait(inode->i_mapping);
	zufs_file_list_del(zi, &zi->wb_files, file);
}

static bool zufs_wb_fh(struct inode *inode, u64 *fh)
{
	struct zufs_inode *zi = ZUFS_I(inode);
	struct zufs_file_ref *w;
	bool ok = false;

	spin_lock(&zi->wb_lock);
	w = list_first_entry_or_null(&zi->wb_files, struct zufs_file_ref, list);
	if (w) {
		*fh = (uintptr_t)w->file->private_data;
		ok = true;
	}
	spin_unlock(&zi->wb_lock);
	return ok;
}

/* Dirty pages of [pos, pos + len) to zusd (a no-op without any). */
static int zufs_flush_range(struct inode *inode, loff_t pos, size_t len)
{
	struct address_space *m = inode->i_mapping;

	if (!len || IS_DAX(inode) || !mapping_tagged(m, PAGECACHE_TAG_DIRTY))
		return 0;
	return filemap_write_and_wait_range(m, pos, pos + len - 1);
}

static int zufs_writepage(struct page *page, struct writeback_control *wbc)
{
	struct inode *inode = page->mapping->host;
	loff_t pos = page_offset(page), size = i_size_read(inode);
	size_t len = min_t(loff_t, PAGE_SIZE, size - pos);
	struct bio_vec bv = { .bv_page = page, .bv_len = len };
	struct zus_io_reply rep = {};
	struct iov_iter it;
	s64 ret;
	u64 fh;

	if (pos >= size) {
		/* past EOF: truncated meanwhile, nothing to keep */
		unlock_page(page);
		return 0;
	}
	if (!zufs_wb_fh(inode, &fh)) {
		/* no open file with a shared writable map: cannot be dirty */
		pr_warn_ratelimited("inode %lu: dirty page without a writable map\n",
				    inode->i_ino);
		mapping_set_error(page->mapping, -EIO);
		unlock_page(page);
		return -EIO;
	}
	set_page_writeback(page);
	unlock_page(page);
	iov_iter_bvec(&it, ITER_SOURCE, &bv, 1, len);
	ret = zufs_io(inode, fh, ZUS_OP_WRITE, 0, pos, len, &it, &rep);
	if (ret >= 0 && ret != len)
		ret = -EIO;
	if (ret < 0)
		mapping_set_error(page->mapping, ret);
	end_page_writeback(page);
	/* mtime and ctime changed */
	zufs_attr_stale(inode);
	return ret < 0 ? ret : 0;
}

static const struct address_space_operations zufs_file_aops = {
	.read_folio	= zufs_read_folio,
	.writepage	= zufs_writepage,
	.dirty_folio	= filemap_dirty_folio,
	/* O_DIRECT opens: read and write never use the page cache anyway */
	.direct_IO	= noop_direct_IO,
};

/* SEEK_END and friends see the size other clients left */
static loff_t zufs_llseek(struct file *file, loff_t offset, int whence)
{
	if (whence == SEEK_END || whence == SEEK_DATA || whence == SEEK_HOLE) {
		int err = zufs_refresh(file_inode(file));

		if (err)
			return err;
	}
	return generic_file_llseek(file, offset, whence);
}

/* ----- DAX hooks (dax.c, zufs-dax.h) ----- */

u32 zufs_sb_mount_id(struct super_block *sb)
{
	return ZUFS_SB(sb)->mount_id;
}

struct zufs_pmem *zufs_sb_pmem(struct super_block *sb)
{
	return ZUFS_SB(sb)->pmem;
}

struct zufs_dax_inode *zufs_dax_i(struct inode *inode)
{
	return &ZUFS_I(inode)->dax;
}

/* @force: ask zusd even while the attributes are fresh */
int zufs_inode_revalidate(struct inode *inode, bool force)
{
	return force || !zufs_attr_valid(inode) ? zufs_refresh(inode) : 0;
}

static int zufs_file_mmap(struct file *file, struct vm_area_struct *vma)
{
	int err = zufs_kcache_mark(file_inode(file));

	if (err)
		return err;
	if (IS_DAX(file_inode(file)))
		return zufs_dax_mmap(file, vma);
	if (vma->vm_flags & VM_SYNC)
		return -EOPNOTSUPP;
	if ((vma->vm_flags & (VM_SHARED | VM_MAYWRITE)) ==
	    (VM_SHARED | VM_MAYWRITE)) {
		err = zufs_wb_add(file);
		if (err)
			return err;
	}
	return generic_file_mmap(file, vma);
}

static const struct file_operations zufs_file_fops = {
	.open		= zufs_open,
	.release	= zufs_release,
	.read_iter	= zufs_read_iter,
	.write_iter	= zufs_write_iter,
	.fsync		= zufs_fsync,
	.llseek		= zufs_llseek,
	.copy_file_range = zufs_copy_file_range,
	.fallocate	= zufs_fallocate,
	.mmap		= zufs_file_mmap,
	.mmap_supported_flags = MAP_SYNC,	/* DAX mounts only */
	.unlocked_ioctl	= zufs_file_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

static const struct file_operations zufs_dir_fops = {
	/*
	 * zusd counts open directories as open files: one removed (rmdir, or
	 * renamed over) while open stays usable (fstat, fchmod, an empty
	 * readdir) until its last close
	 */
	.open		= zufs_open,
	.release	= zufs_release,
	.read		= generic_read_dir,
	.iterate_shared	= zufs_readdir,
	.fsync		= zufs_dir_fsync,
	.llseek		= generic_file_llseek,
};

static const struct inode_operations zufs_dir_iops = {
	.lookup		= zufs_lookup,
	.create		= zufs_create,
	.atomic_open	= zufs_atomic_open,
	.mknod		= zufs_mknod,
	.mkdir		= zufs_mkdir,
	.unlink		= zufs_unlink,
	.rmdir		= zufs_rmdir,
	.rename		= zufs_rename,
	.link		= zufs_link,
	.symlink	= zufs_symlink,
	.getattr	= zufs_getattr,
	.setattr	= zufs_setattr,
	.permission	= zufs_permission,
	.listxattr	= zufs_listxattr,
	.update_time	= zufs_update_time,
	.get_acl	= zufs_get_acl,
	.set_acl	= zufs_set_acl,
};

static const struct inode_operations zufs_file_iops = {
	.getattr	= zufs_getattr,
	.setattr	= zufs_setattr,
	.permission	= zufs_permission,
	.listxattr	= zufs_listxattr,
	.update_time	= zufs_update_time,
	.get_acl	= zufs_get_acl,
	.set_acl	= zufs_set_acl,
};

static const struct inode_operations zufs_symlink_iops = {
	.get_link	= zufs_get_link,
	.getattr	= zufs_getattr,
	.setattr	= zufs_setattr,
	.listxattr	= zufs_listxattr,
	.update_time	= zufs_update_time,
};

static const struct inode_operations zufs_special_iops = {
	.getattr	= zufs_getattr,
	.setattr	= zufs_setattr,
	.permission	= zufs_permission,
	.listxattr	= zufs_listxattr,
	.update_time	= zufs_update_time,
	.get_acl	= zufs_get_acl,
	.set_acl	= zufs_set_acl,
};

/* ----- the super block ----- */

static int zufs_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	struct zufs_sb_info *sbi = ZUFS_SB(dentry->d_sb);
	struct zus_statfs_reply s;
	s64 ret;

	/* the blocks of files removed and closed just now count as free */
	if (!list_empty_careful(&sbi->deferred))
		flush_delayed_work(&sbi->defer_work);
	ret = zufs_simple(sbi->mount_id, ZUS_OP_STATFS,
			  NULL, 0, &s, sizeof(s), sizeof(s));
	if (ret < 0)
		return ret;
	buf->f_type = ZUFS_SUPER_MAGIC;
	buf->f_bsize = s.bsize;
	buf->f_frsize = s.frsize ?: s.bsize;
	buf->f_blocks = s.blocks;
	buf->f_bfree = s.bfree;
	buf->f_bavail = s.bavail;
	buf->f_files = s.files;
	buf->f_ffree = s.ffree;
	buf->f_namelen = min_t(u32, s.namelen, ZUS_NAME_MAX);
	return 0;
}

static int zufs_show_options(struct seq_file *m, struct dentry *root)
{
	struct zufs_sb_info *sbi = ZUFS_SB(root->d_sb);

	seq_printf(m, ",mount_id=%u,root=%llu,attr_timeout_ms=%u,entry_timeout_ms=%u",
		   sbi->mount_id, sbi->root, sbi->attr_timeout_ms,
		   sbi->entry_timeout_ms);
	if (sbi->dax_path)
		seq_show_option(m, "dax", sbi->dax_path);
	return 0;
}

static const struct super_operations zufs_sops = {
	.alloc_inode	= zufs_alloc_inode,
	.free_inode	= zufs_free_inode,
	.evict_inode	= zufs_evict_inode,
	.statfs		= zufs_statfs,
	.show_options	= zufs_show_options,
};

enum { OPT_MOUNT_ID, OPT_ROOT, OPT_ATTR_TIMEOUT, OPT_ENTRY_TIMEOUT, OPT_DAX };

static const struct fs_parameter_spec zufs_params[] = {
	fsparam_u32("mount_id", OPT_MOUNT_ID),
	fsparam_u64("root", OPT_ROOT),
	fsparam_u32("attr_timeout_ms", OPT_ATTR_TIMEOUT),
	fsparam_u32("entry_timeout_ms", OPT_ENTRY_TIMEOUT),
	fsparam_string("dax", OPT_DAX),		/* a pmem zusd holds (dax.c) */
	{}
};

struct zufs_fs_context {
	u32 mount_id;
	u64 root;
	u32 attr_timeout_ms;
	u32 entry_timeout_ms;
	bool have_id;
	bool have_root;
	bool have_attr_timeout;
	bool have_entry_timeout;
	char *dax;
};

static int zufs_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct zufs_fs_context *ctx = fc->fs_private;
	struct fs_parse_result result;
	int opt = fs_parse(fc, zufs_params, param, &result);

	if (opt < 0)
		return opt;
	switch (opt) {
	case OPT_DAX:
		kfree(ctx->dax);
		ctx->dax = param->string;
		param->string = NULL;
		break;
	case OPT_MOUNT_ID:
		ctx->mount_id = result.uint_32;
		ctx->have_id = true;
		break;
	case OPT_ROOT:
		ctx->root = result.uint_64;
		ctx->have_root = true;
		break;
	case OPT_ATTR_TIMEOUT:
	case OPT_ENTRY_TIMEOUT:
		if (result.uint_32 > ZUFS_MAX_TIMEOUT_MS)
			return invalfc(fc, "%s at most %u", param->key,
				       ZUFS_MAX_TIMEOUT_MS);
		if (opt == OPT_ATTR_TIMEOUT) {
			ctx->attr_timeout_ms = result.uint_32;
			ctx->have_attr_timeout = true;
		} else {
			ctx->entry_timeout_ms = result.uint_32;
			ctx->have_entry_timeout = true;
		}
		break;
	}
	return 0;
}

/* adds @sbi to zufs_sbs; another superblock of its mount_id shares it */
static void zufs_sb_register(struct zufs_sb_info *sbi)
{
	struct zufs_sb_info *o;

	mutex_lock(&zufs_sbs_lock);
	list_for_each_entry(o, &zufs_sbs, sbs) {
		if (o->mount_id == sbi->mount_id) {
			WRITE_ONCE(o->shared, true);
			WRITE_ONCE(sbi->shared, true);
		}
	}
	list_add_tail(&sbi->sbs, &zufs_sbs);
	mutex_unlock(&zufs_sbs_lock);
}

static int zufs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct zufs_fs_context *ctx = fc->fs_private;
	struct zufs_sb_info *sbi;
	struct zus_ino_req r = { .ino = ctx->root };
	struct inode *root;
	struct zus_attr a;
	s64 ret;
	int err;

	sbi = kzalloc(sizeof(*sbi), GFP_KERNEL);
	if (!sbi)
		return -ENOMEM;
	sbi->mount_id = ctx->mount_id;
	sbi->root = ctx->root;
	sbi->attr_timeout_ms = ctx->attr_timeout_ms;
	sbi->entry_timeout_ms = ctx->entry_timeout_ms;
	sbi->attr_timeout = msecs_to_jiffies(ctx->attr_timeout_ms);
	sbi->entry_timeout = msecs_to_jiffies(ctx->entry_timeout_ms);
	spin_lock_init(&sbi->defer_lock);
	INIT_LIST_HEAD(&sbi->deferred);
	INIT_DELAYED_WORK(&sbi->defer_work, zufs_defer_work);
	sb->s_fs_info = sbi;
	zufs_sb_register(sbi);
	/*
	 * A writeback-capable bdi of our own (get_tree_nodev's default, the
	 * noop bdi, cannot write back): dirty pages of shared maps reach zusd
	 * (zufs_writepage), and DAX fsync flushes what stores through a map
	 * left in the CPU caches (dax.c's writepages).
	 */
	err = super_setup_bdi(sb);
	if (err)
		return err;
	sb->s_magic = ZUFS_SUPER_MAGIC;
	sb->s_op = &zufs_sops;
	sb->s_d_op = &zufs_dentry_ops;
	sb->s_xattr = zufs_xattr_handlers;
	sb->s_export_op = &zufs_export_ops;
	/* the kernel enforces POSIX ACLs; the umask is left to acl.c */
	sb->s_flags |= SB_POSIXACL;
	sb->s_maxbytes = MAX_LFS_FILESIZE;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_time_gran = 1;
	if (ctx->dax) {
		/* file data through DAX (dax.c) */
		struct zufs_pmem *pm = zufs_pmem_get_held(ctx->dax);

		if (IS_ERR(pm))
			return invalfc(fc, "dax=%s: no pmem the module holds for zusd (%ld)",
				       ctx->dax, PTR_ERR(pm));
		sbi->pmem = pm;
		sbi->dax_path = ctx->dax;
		ctx->dax = NULL;
		/*
		 * A write asks for security.capability only until the inode
		 * is known to have none (S_NOSEC), not once per write.
		 */
		sb->s_flags |= SB_NOSEC;
	}

	ret = zufs_simple(sbi->mount_id, ZUS_OP_GETATTR, &r, sizeof(r), &a,
			  sizeof(a), sizeof(a));
	if (ret < 0)
		return ret;
	if (a.ino != ctx->root || !S_ISDIR(a.mode))
		return -EIO;
	root = zufs_iget(sb, &a, false);
	if (IS_ERR(root))
		return PTR_ERR(root);
	sb->s_root = d_make_root(root);
	return sb->s_root ? 0 : -ENOMEM;
}

static int zufs_get_tree(struct fs_context *fc)
{
	struct zufs_fs_context *ctx = fc->fs_private;

	if (!ctx->have_id || !ctx->have_root)
		return invalfc(fc, "zufs needs mount_id= and root=");
	return get_tree_nodev(fc, zufs_fill_super);
}

/*
 * mount -o remount: the VFS applies the flags (ro, rw, ...) to the superblock
 * and the mount; zusd's mount stays as it is. The options name that mount,
 * so a remount may repeat them (mount(8) passes the mount table's back) but
 * not change them. Going read-only writes back what shared maps dirtied
 * first (files open for writing made the VFS refuse it already).
 */
static int zufs_reconfigure(struct fs_context *fc)
{
	struct zufs_fs_context *ctx = fc->fs_private;
	struct super_block *sb = fc->root->d_sb;
	struct zufs_sb_info *sbi = ZUFS_SB(sb);

	if ((ctx->have_id && ctx->mount_id != sbi->mount_id) ||
	    (ctx->have_root && ctx->root != sbi->root) ||
	    (ctx->have_attr_timeout &&
	     ctx->attr_timeout_ms != sbi->attr_timeout_ms) ||
	    (ctx->have_entry_timeout &&
	     ctx->entry_timeout_ms != sbi->entry_timeout_ms) ||
	    (ctx->dax && (!sbi->dax_path || strcmp(ctx->dax, sbi->dax_path))))
		return invalfc(fc, "remount cannot change mount_id, root, the timeouts or dax= (unmount and mount again)");
	if ((fc->sb_flags_mask & SB_RDONLY) && (fc->sb_flags & SB_RDONLY) &&
	    !sb_rdonly(sb))
		return sync_filesystem(sb);
	return 0;
}

static void zufs_free_fc(struct fs_context *fc)
{
	struct zufs_fs_context *ctx = fc->fs_private;

	if (ctx)
		kfree(ctx->dax);
	kfree(ctx);
}

static const struct fs_context_operations zufs_context_ops = {
	.parse_param	= zufs_parse_param,
	.get_tree	= zufs_get_tree,
	.reconfigure	= zufs_reconfigure,
	.free		= zufs_free_fc,
};

static int zufs_init_fs_context(struct fs_context *fc)
{
	struct zufs_fs_context *ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);

	if (!ctx)
		return -ENOMEM;
	ctx->attr_timeout_ms = ZUFS_DEFAULT_TIMEOUT_MS;
	ctx->entry_timeout_ms = ZUFS_DEFAULT_TIMEOUT_MS;
	fc->fs_private = ctx;
	fc->ops = &zufs_context_ops;
	return 0;
}

static void zufs_kill_sb(struct super_block *sb)
{
	struct zufs_sb_info *sbi = ZUFS_SB(sb);

	kill_anon_super(sb);
	if (!sbi)
		return;
	flush_delayed_work(&sbi->defer_work);
	zufs_send_deferred(sbi);
	mutex_lock(&zufs_sbs_lock);
	list_del(&sbi->sbs);
	mutex_unlock(&zufs_sbs_lock);
	if (sbi->pmem)
		zufs_pmem_put(sbi->pmem);
	kfree(sbi->dax_path);
	kfree(sbi);
}

static struct file_system_type zufs_fs_type = {
	.owner			= THIS_MODULE,
	.name			= "zufs",
	.init_fs_context	= zufs_init_fs_context,
	.parameters		= zufs_params,
	.kill_sb		= zufs_kill_sb,
};

int __init zufs_fs_init(void)
{
	int err;

	zufs_inode_cachep = kmem_cache_create("zufs_inode",
					      sizeof(struct zufs_inode), 0,
					      SLAB_RECLAIM_ACCOUNT | SLAB_ACCOUNT,
					      zufs_inode_init_once);
	if (!zufs_inode_cachep)
		return -ENOMEM;
	/* forgets: may be needed to make progress under memory pressure */
	zufs_wq = alloc_workqueue("zufs", WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!zufs_wq) {
		kmem_cache_destroy(zufs_inode_cachep);
		return -ENOMEM;
	}
	err = register_filesystem(&zufs_fs_type);
	if (err) {
		destroy_workqueue(zufs_wq);
		kmem_cache_destroy(zufs_inode_cachep);
	}
	return err;
}

void zufs_fs_exit(void)
{
	unregister_filesystem(&zufs_fs_type);
	destroy_workqueue(zufs_wq);
	rcu_barrier();	/* inodes freed by RCU */
	kmem_cache_destroy(zufs_inode_cachep);
}

MODULE_ALIAS_FS("zufs");
