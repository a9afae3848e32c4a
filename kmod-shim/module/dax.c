// SPDX-License-Identifier: GPL-2.0
/*
 * dax.c - file data straight between user memory and pmem (mount -o dax=PATH).
 *
 * zusd's plugin answers only where a file range lives on the device (MAP,
 * allocating and zeroing for a write) and commits size and mtime (MAP_DONE);
 * the kernel copies with the DAX helpers (dax_iomap_rw: non-temporal stores
 * to pmem, one copy) and maps pmem pages into faulting processes
 * (dax_iomap_fault), as ext2 does in 6.1.
 *
 * Every extent zusd names is checked once: inside the device, the device
 * and file offsets congruent modulo the page size, no overflow, a write's
 * range mapped (a hole where a write must go is EIO, never a WARN in
 * fs/dax.c).
 *
 * A few mapped extents per inode are cached, tagged with the kernel channel
 * set's layout generation: zusd raises it before it answers an op that may
 * have freed or moved blocks, so an overwrite of a cached range is no round
 * trip at all. While a copy or fault uses extents it holds a dax reader slot
 * of the set (zufs_dax_reader_begin), so zusd does not reuse blocks freed
 * under a later generation before the copy is over. Blocks this mount frees
 * (truncate) are first unmapped from every process, after pinned pages were
 * waited for (dax_layout_busy_page).
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/module.h>
#include <linux/fs.h>
#include <linux/dax.h>
#include <linux/iomap.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/pagemap.h>
#include <linux/pfn_t.h>
#include <linux/uio.h>
#include <linux/slab.h>
#include <linux/wait_bit.h>
#include <linux/jiffies.h>
#include <linux/overflow.h>

#include "zufs.h"
#include "zufs-dax.h"

/* a lookup asks zusd for this much at least, which fills the cache */
#define ZUFS_DAX_MAP_AHEAD	(16ULL << 20)
/* an overwrite commits mtime (MAP_DONE) at most this often */
#define ZUFS_DAX_MTIME_EVERY	HZ

/* MAP round trips, for the guest tests (racy counts: statistics only) */
static unsigned long dax_map_ops;
module_param(dax_map_ops, ulong, 0444);
MODULE_PARM_DESC(dax_map_ops, "MAP ops the DAX path sent to zusd");

#define ZUFS_MAP_REPLY_SIZE	(sizeof(struct zus_map_reply) + \
				 ZUS_MAX_MAP_EXTENTS * sizeof(struct zus_extent))

/* ----- the extent cache ----- */

void zufs_dax_inode_init(struct zufs_dax_inode *di)
{
	spin_lock_init(&di->lock);
	di->key = 0;
	di->n = 0;
	di->next = 0;
	di->done_jiffies = get_jiffies_64();
}

static void zufs_dax_cache_drop(struct zufs_dax_inode *di)
{
	spin_lock(&di->lock);
	di->key = 0;
	di->n = 0;
	spin_unlock(&di->lock);
}

static bool zufs_dax_cache_find(struct zufs_dax_inode *di, u64 key, u64 pos,
				struct zufs_dax_extent *out)
{
	bool found = false;
	u32 i;

	spin_lock(&di->lock);
	if (di->key == key) {
		for (i = 0; i < di->n; i++) {
			if (pos >= di->ext[i].off &&
			    pos - di->ext[i].off < di->ext[i].len) {
				*out = di->ext[i];
				found = true;
				break;
			}
		}
	}
	spin_unlock(&di->lock);
	return found;
}

static void zufs_dax_cache_add(struct zufs_dax_inode *di, u64 key,
			       const struct zufs_dax_extent *e)
{
	u32 i;

	spin_lock(&di->lock);
	if (di->key != key) {
		di->key = key;
		di->n = 0;
	}
	for (i = 0; i < di->n; i++) {
		struct zufs_dax_extent *x = &di->ext[i];

		if (x->off < e->off + e->len && e->off < x->off + x->len) {
			*x = di->ext[--di->n];
			i--;
		}
	}
	if (di->n < ZUFS_DAX_EXTENTS) {
		di->ext[di->n++] = *e;
	} else {
		di->ext[di->next] = *e;
		di->next = (di->next + 1) % ZUFS_DAX_EXTENTS;
	}
	spin_unlock(&di->lock);
}

/* ----- MAP and MAP_DONE ----- */

/*
 * Checks one extent of a MAP reply (copied out of the slot already) and
 * widens it to whole pages: the blocks around a range's ends are the file's.
 * Returns false for anything a sane server cannot have sent.
 */
static bool zufs_dax_extent_ok(struct zufs_pmem *pm, const struct zus_extent *x,
			       struct zufs_dax_extent *e, bool *hole)
{
	u64 end, start, dev;

	if (!x->len || check_add_overflow(x->file_offset, x->len, &end) ||
	    end > MAX_LFS_FILESIZE)
		return false;
	start = round_down(x->file_offset, PAGE_SIZE);
	if (x->dev_offset == ZUS_EXTENT_HOLE) {
		*hole = true;
		e->off = x->file_offset;
		e->len = x->len;
		e->dev = 0;
		return true;
	}
	*hole = false;
	if (x->dev_offset % PAGE_SIZE != x->file_offset % PAGE_SIZE)
		return false;
	dev = x->dev_offset - (x->file_offset - start);
	e->off = start;
	e->len = round_up(end, PAGE_SIZE) - start;
	e->dev = dev;
	return dev <= zufs_pmem_size(pm) && e->len <= zufs_pmem_size(pm) - dev;
}

/*
 * MAP [pos, pos + len) of @inode; @write allocates (zeroed). The extent with
 * pos goes to @first (@hole: it is one); mapped extents go to the cache when
 * the layout generation did not move while zusd answered.
 */
static int zufs_dax_map(struct inode *inode, u64 pos, u64 len, bool write,
			u64 key, struct zufs_dax_extent *first, bool *hole)
{
	struct super_block *sb = inode->i_sb;
	struct zufs_pmem *pm = zufs_sb_pmem(sb);
	struct zus_map_req r = {
		.ino = inode->i_ino,
		.offset = pos,
		.len = len,
		.write = write,
	};
	struct zus_map_reply rep;
	struct zus_extent x;
	struct zufs_dax_extent e;
	bool cache, h;
	void *buf;
	s64 ret;
	u32 i;

	buf = kmalloc(ZUFS_MAP_REPLY_SIZE, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	{
		struct zufs_op op = {
			.opcode = ZUS_OP_MAP,
			.mount_id = zufs_sb_mount_id(sb),
			.req = &r,
			.req_len = sizeof(r),
			.reply = buf,
			.reply_size = ZUFS_MAP_REPLY_SIZE,
			.reply_min = sizeof(rep),
			.result_max = ZUS_MAX_MAP_EXTENTS,
		};

		WRITE_ONCE(dax_map_ops, READ_ONCE(dax_map_ops) + 1);
		ret = zufs_dispatch(&op);
		if (ret < 0)
			goto out;
		memcpy(&rep, buf, sizeof(rep));
		if (rep.count != ret ||
		    op.reply_len < sizeof(rep) + ret * sizeof(x))
			goto bad;
	}
	if (!ret) {
		/* past the end zusd knows: reads see zeros, writes cannot be */
		if (write)
			goto bad;
		first->off = pos;
		first->len = len;
		*hole = true;
		ret = 0;
		goto out;
	}
	cache = zufs_dax_layout_key() == key;
	for (i = 0; i < ret; i++) {
		memcpy(&x, buf + sizeof(rep) + i * sizeof(x), sizeof(x));
		if (!zufs_dax_extent_ok(pm, &x, &e, &h))
			goto bad;
		if (i == 0) {
			/* the first extent holds pos; a write's is mapped */
			if (x.file_offset > pos || pos - x.file_offset >= x.len ||
			    (write && h))
				goto bad;
			*first = e;
			*hole = h;
		}
		/* the extents from pos on, as many as the cache holds */
		if (!h && cache && i < ZUFS_DAX_EXTENTS)
			zufs_dax_cache_add(zufs_dax_i(inode), key, &e);
	}
	ret = 0;
	goto out;
bad:
	pr_warn_ratelimited("ino %lu: bad MAP reply for %llu+%llu%s\n",
			    inode->i_ino, pos, len, write ? " (write)" : "");
	ret = -EIO;
out:
	kfree(buf);
	return ret;
}

static int zufs_dax_map_done(struct inode *inode, u64 end, bool sync)
{
	struct zus_map_done_req r = {
		.ino = inode->i_ino,
		.end = end,
		.sync = sync,
	};
	struct zufs_op op = {
		.opcode = ZUS_OP_MAP_DONE,
		.mount_id = zufs_sb_mount_id(inode->i_sb),
		.req = &r,
		.req_len = sizeof(r),
	};
	s64 ret = zufs_dispatch(&op);

	if (ret < 0)
		return ret;
	WRITE_ONCE(zufs_dax_i(inode)->done_jiffies, get_jiffies_64());
	return 0;
}

/* ----- iomap ----- */

static int zufs_iomap_begin(struct inode *inode, loff_t pos, loff_t length,
			    unsigned int flags, struct iomap *iomap,
			    struct iomap *srcmap)
{
	struct zufs_pmem *pm = zufs_sb_pmem(inode->i_sb);
	bool write = flags & IOMAP_WRITE;
	struct zufs_dax_extent e;
	bool hole = false;
	u64 key = zufs_dax_layout_key();
	int err;

	if (!key || !pm)
		return -EIO;
	/*
	 * A write past the size always asks zusd: it allocates there and
	 * learns how far MAP_DONE may commit the size.
	 */
	if (write && pos + length > i_size_read(inode)) {
		err = zufs_dax_map(inode, pos, length, true, key, &e, &hole);
		if (err)
			return err;
	} else if (!zufs_dax_cache_find(zufs_dax_i(inode), key, pos, &e)) {
		/*
		 * A lookup of the range and what follows fills the cache; an
		 * overwrite goes on with it, a write into a hole allocates.
		 */
		err = zufs_dax_map(inode, pos, max_t(u64, length, ZUFS_DAX_MAP_AHEAD),
				   false, key, &e, &hole);
		if (!err && write && hole)
			err = zufs_dax_map(inode, pos, length, true, key, &e, &hole);
		if (err)
			return err;
	}
	iomap->offset = e.off;
	iomap->length = e.len;
	iomap->flags = 0;
	iomap->bdev = zufs_pmem_bdev(pm);
	iomap->dax_dev = zufs_pmem_dax(pm);
	if (hole) {
		iomap->type = IOMAP_HOLE;
		iomap->addr = IOMAP_NULL_ADDR;
	} else {
		iomap->type = IOMAP_MAPPED;
		iomap->addr = zufs_pmem_start(pm) + e.dev;
	}
	return 0;
}

static const struct iomap_ops zufs_iomap_ops = {
	.iomap_begin	= zufs_iomap_begin,
};

/* ----- read, write ----- */

ssize_t zufs_dax_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct inode *inode = file_inode(iocb->ki_filp);
	struct zufs_dax_reader rd;
	ssize_t ret;

	if (!iov_iter_count(to))
		return 0;
	/* the size other clients left */
	ret = zufs_inode_revalidate(inode, false);
	if (ret)
		return ret;
	ret = zufs_dax_reader_begin(&rd);
	if (ret)
		return ret;
	inode_lock_shared(inode);
	ret = dax_iomap_rw(iocb, to, &zufs_iomap_ops);
	inode_unlock_shared(inode);
	zufs_dax_reader_end(&rd);
	return ret;
}

ssize_t zufs_dax_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	struct zufs_dax_inode *di = zufs_dax_i(inode);
	bool sync = iocb_is_dsync(iocb);
	struct zufs_dax_reader rd;
	ssize_t ret;
	loff_t end;
	int err;

	if (iocb->ki_flags & IOCB_APPEND) {
		/* append where zusd says the file ends */
		ret = zufs_inode_revalidate(inode, true);
		if (ret)
			return ret;
	}
	ret = zufs_dax_reader_begin(&rd);
	if (ret)
		return ret;
	inode_lock(inode);
	ret = generic_write_checks(iocb, from);
	if (ret <= 0)
		goto out;
	ret = file_remove_privs(file);
	if (ret)
		goto out;
	/*
	 * mtime and ctime move now in the kernel's inode, as ext2's DAX write
	 * does: zusd learns them with the next MAP_DONE (at once when the size
	 * grows, else within ZUFS_DAX_MTIME_EVERY), and a stat in between must
	 * not show the times from before the write.
	 */
	ret = file_update_time(file);
	if (ret)
		goto out;
	ret = dax_iomap_rw(iocb, from, &zufs_iomap_ops);
	if (ret <= 0)
		goto out;
	/* the non-temporal stores are durable before the size that shows them */
	wmb();
	/*
	 * The data is durable now (non-temporal stores, fenced). zusd commits
	 * a size that grew at once, and mtime at most once a second: an
	 * O_SYNC overwrite needs no round trip at all.
	 */
	end = iocb->ki_pos;
	if (end > i_size_read(inode) ||
	    time_after64(get_jiffies_64(),
			 READ_ONCE(di->done_jiffies) + ZUFS_DAX_MTIME_EVERY)) {
		err = zufs_dax_map_done(inode, end, sync);
		if (err)
			ret = err;
		else if (end > i_size_read(inode))
			i_size_write(inode, end);
	}
out:
	inode_unlock(inode);
	zufs_dax_reader_end(&rd);
	return ret;
}

/* ----- mmap ----- */

static vm_fault_t zufs_dax_fault(struct vm_fault *vmf)
{
	struct inode *inode = file_inode(vmf->vma->vm_file);
	bool write = (vmf->flags & FAULT_FLAG_WRITE) &&
		     (vmf->vma->vm_flags & VM_SHARED);
	struct zufs_dax_reader rd;
	vm_fault_t ret;
	pfn_t pfn;

	if (zufs_dax_reader_begin(&rd))
		return VM_FAULT_SIGBUS;
	if (write)
		sb_start_pagefault(inode->i_sb);
	filemap_invalidate_lock_shared(inode->i_mapping);
	ret = dax_iomap_fault(vmf, PE_SIZE_PTE, &pfn, NULL, &zufs_iomap_ops);
	filemap_invalidate_unlock_shared(inode->i_mapping);
	/*
	 * MAP allocated durably before it answered, so no fault leaves
	 * metadata to sync (IOMAP_F_DIRTY is never set); kept for safety.
	 */
	if (ret & VM_FAULT_NEEDDSYNC)
		ret = dax_finish_sync_fault(vmf, PE_SIZE_PTE, pfn);
	if (write)
		sb_end_pagefault(inode->i_sb);
	zufs_dax_reader_end(&rd);
	return ret;
}

static const struct vm_operations_struct zufs_dax_vm_ops = {
	.fault		= zufs_dax_fault,
	.page_mkwrite	= zufs_dax_fault,
	.pfn_mkwrite	= zufs_dax_fault,
};

int zufs_dax_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct inode *inode = file_inode(file);
	struct zufs_pmem *pm = zufs_sb_pmem(inode->i_sb);

	/* a window mount has no page cache to map */
	if (!IS_DAX(inode) || !pm)
		return -ENODEV;
	if (!daxdev_mapping_supported(vma, zufs_pmem_dax(pm)))
		return -EOPNOTSUPP;
	vma->vm_ops = &zufs_dax_vm_ops;
	return 0;
}

/* dirty pages of shared mappings (without MAP_SYNC) are flushed at fsync */
static int zufs_dax_writepages(struct address_space *mapping,
			       struct writeback_control *wbc)
{
	struct zufs_pmem *pm = zufs_sb_pmem(mapping->host->i_sb);

	return dax_writeback_mapping_range(mapping, zufs_pmem_dax(pm), wbc);
}

static const struct address_space_operations zufs_dax_aops = {
	.writepages	= zufs_dax_writepages,
	.direct_IO	= noop_direct_IO,
	.dirty_folio	= noop_dirty_folio,
};

void zufs_dax_set_inode(struct inode *inode)
{
	if (!S_ISREG(inode->i_mode) || !zufs_sb_pmem(inode->i_sb))
		return;
	inode->i_flags |= S_DAX;
	inode->i_mapping->a_ops = &zufs_dax_aops;
}

int zufs_dax_fsync_begin(struct file *file, loff_t start, loff_t end)
{
	if (!IS_DAX(file_inode(file)))
		return 0;
	return file_write_and_wait_range(file, start, end);
}

/* ----- truncate ----- */

static void zufs_dax_wait_page(struct inode *inode)
{
	filemap_invalidate_unlock(inode->i_mapping);
	schedule();
	filemap_invalidate_lock(inode->i_mapping);
}

/* waits until no page of the file is pinned (get_user_pages, O_DIRECT) */
static int zufs_dax_break_layouts(struct inode *inode)
{
	struct page *page;
	int err;

	do {
		page = dax_layout_busy_page(inode->i_mapping);
		if (!page)
			return 0;
		err = ___wait_var_event(&page->_refcount,
					atomic_read(&page->_refcount) == 1,
					TASK_INTERRUPTIBLE, 0, 0,
					zufs_dax_wait_page(inode));
	} while (!err);
	return err;
}

/*
 * Before a SETATTR that changes the size: no fault maps a page until
 * zufs_dax_truncate_end(), no page is pinned, and the pages past @size are
 * unmapped from every process, so none maps a block zusd frees.
 */
int zufs_dax_truncate_begin(struct inode *inode, loff_t size)
{
	int err;

	filemap_invalidate_lock(inode->i_mapping);
	err = zufs_dax_break_layouts(inode);
	if (err) {
		filemap_invalidate_unlock(inode->i_mapping);
		return err;
	}
	truncate_pagecache(inode, size);
	zufs_dax_cache_drop(zufs_dax_i(inode));
	return 0;
}

void zufs_dax_truncate_end(struct inode *inode)
{
	zufs_dax_cache_drop(zufs_dax_i(inode));
	filemap_invalidate_unlock(inode->i_mapping);
}
