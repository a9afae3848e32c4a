/* SPDX-License-Identifier: GPL-2.0 */
/*
 * zufs-dax.h - the DAX path: the pmem device the module holds (pmem.c) and
 * the DAX file operations (dax.c), with the hooks super.c and zufs-core.c
 * call.
 */
#ifndef ZUFS_DAX_H
#define ZUFS_DAX_H

#include <linux/types.h>
#include <linux/fs.h>
#include <linux/spinlock.h>
#include <linux/mman.h>	/* MAP_SYNC for the file_operations */

struct zufs_pmem;
struct dax_device;
struct block_device;

/* pmem.c */
long zufs_pmem_grab_ioctl(void __user *uarg);
struct zufs_pmem *zufs_pmem_get_held(const char *path);
void zufs_pmem_put(struct zufs_pmem *p);
struct dax_device *zufs_pmem_dax(struct zufs_pmem *p);
struct block_device *zufs_pmem_bdev(struct zufs_pmem *p);
u64 zufs_pmem_start(struct zufs_pmem *p);
u64 zufs_pmem_size(struct zufs_pmem *p);

/*
 * zufs-core.c: a dax reader slot of the kernel channel set (chan.rs
 * DAX_READER_SLOTS). While a kernel thread copies through extents it holds
 * one, with the layout generation it started under, so that zusd does not
 * reuse blocks freed under a later generation until the copy is over.
 */
struct zufs_dax_reader {
	void *session;
	u32 idx;
};

int zufs_dax_reader_begin(struct zufs_dax_reader *r);
void zufs_dax_reader_end(struct zufs_dax_reader *r);
/* the current session's layout generation tagged with the session; 0: none */
u64 zufs_dax_layout_key(void);

/* super.c */
u32 zufs_sb_mount_id(struct super_block *sb);
struct zufs_pmem *zufs_sb_pmem(struct super_block *sb);
struct zufs_dax_inode *zufs_dax_i(struct inode *inode);
int zufs_inode_revalidate(struct inode *inode, bool force);

/* dax.c: a small per-inode cache of mapped extents */
#define ZUFS_DAX_EXTENTS	32

struct zufs_dax_extent {
	u64 off;	/* file offset, page aligned */
	u64 len;	/* bytes, page aligned */
	u64 dev;	/* device offset, page aligned */
};

struct zufs_dax_inode {
	spinlock_t lock;
	u64 key;	/* zufs_dax_layout_key() the extents are valid for */
	u32 n;
	u32 next;	/* round-robin replacement */
	u64 done_jiffies;	/* last MAP_DONE (mtime) */
	struct zufs_dax_extent ext[ZUFS_DAX_EXTENTS];
};

void zufs_dax_inode_init(struct zufs_dax_inode *di);
void zufs_dax_set_inode(struct inode *inode);
ssize_t zufs_dax_read_iter(struct kiocb *iocb, struct iov_iter *to);
ssize_t zufs_dax_write_iter(struct kiocb *iocb, struct iov_iter *from);
int zufs_dax_mmap(struct file *file, struct vm_area_struct *vma);
int zufs_dax_fsync_begin(struct file *file, loff_t start, loff_t end);
int zufs_dax_truncate_begin(struct inode *inode, loff_t size);
void zufs_dax_truncate_end(struct inode *inode);

#endif /* ZUFS_DAX_H */
