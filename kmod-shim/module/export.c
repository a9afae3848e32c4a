// SPDX-License-Identifier: GPL-2.0
/*
 * export.c - file handles (name_to_handle_at, open_by_handle_at, NFS
 * export) on a zufs mount.
 *
 * A handle is the plugin's inode number and generation (and the parent's,
 * when asked for a connectable handle): both stable across unmount, mount
 * and a zusd restart, as pmemfs keeps them on pmem. Decoding asks zusd for
 * the inode's attributes (GETATTR by number) and refuses an inode whose
 * generation differs: the number was freed and given to another file, and
 * the handle is stale. The parent of a directory is its ".." entry.
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/fs.h>
#include <linux/exportfs.h>
#include <linux/dcache.h>

#include "zufs.h"
#include "zufs-fs.h"

/*
 * The handle types of a 64-bit inode number with a 32-bit generation (the
 * values later kernels name FILEID_INO64_GEN and FILEID_INO64_GEN_PARENT;
 * 6.1's exportfs.h has no name for them).
 */
#define ZUFS_FILEID_INO64_GEN		0x81
#define ZUFS_FILEID_INO64_GEN_PARENT	0x82

/* u32 words of a handle: inode number (2), generation (1); parent's after */
#define ZUFS_FH_WORDS		3
#define ZUFS_FH_WORDS_PARENT	6

static void zufs_fh_put(u32 *fh, u64 ino, u32 gen)
{
	fh[0] = ino >> 32;
	fh[1] = (u32)ino;
	fh[2] = gen;
}

static int zufs_encode_fh(struct inode *inode, __u32 *fh, int *max_len,
			  struct inode *parent)
{
	int want = parent ? ZUFS_FH_WORDS_PARENT : ZUFS_FH_WORDS;

	if (*max_len < want) {
		*max_len = want;
		return FILEID_INVALID;
	}
	zufs_fh_put(fh, inode->i_ino, inode->i_generation);
	if (parent)
		zufs_fh_put(fh + ZUFS_FH_WORDS, parent->i_ino,
			    parent->i_generation);
	*max_len = want;
	return parent ? ZUFS_FILEID_INO64_GEN_PARENT :
			ZUFS_FILEID_INO64_GEN;
}

/* The inode of a handle's (number, generation), or ESTALE. */
static struct dentry *zufs_fh_inode(struct super_block *sb, const u32 *fh)
{
	u64 ino = (u64)fh[0] << 32 | fh[1];
	struct inode *inode;

	if (!ino)
		return ERR_PTR(-ESTALE);
	inode = zufs_iget_ino(sb, ino, fh[2]);
	if (IS_ERR(inode))
		return ERR_CAST(inode);
	return d_obtain_alias(inode);
}

static struct dentry *zufs_fh_to_dentry(struct super_block *sb,
					struct fid *fid, int fh_len,
					int fh_type)
{
	if ((fh_type != ZUFS_FILEID_INO64_GEN &&
	     fh_type != ZUFS_FILEID_INO64_GEN_PARENT) || fh_len < ZUFS_FH_WORDS)
		return NULL;	/* not ours: the caller says ESTALE */
	return zufs_fh_inode(sb, fid->raw);
}

static struct dentry *zufs_fh_to_parent(struct super_block *sb,
					struct fid *fid, int fh_len,
					int fh_type)
{
	if (fh_type != ZUFS_FILEID_INO64_GEN_PARENT ||
	    fh_len < ZUFS_FH_WORDS_PARENT)
		return NULL;
	return zufs_fh_inode(sb, fid->raw + ZUFS_FH_WORDS);
}

static struct dentry *zufs_get_parent(struct dentry *child)
{
	struct inode *dir = d_inode(child);
	struct inode *inode = zufs_lookup_dotdot(dir);

	if (IS_ERR(inode))
		return ERR_CAST(inode);
	return d_obtain_alias(inode);
}

const struct export_operations zufs_export_ops = {
	.encode_fh	= zufs_encode_fh,
	.fh_to_dentry	= zufs_fh_to_dentry,
	.fh_to_parent	= zufs_fh_to_parent,
	.get_parent	= zufs_get_parent,
};
