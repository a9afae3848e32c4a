/* SPDX-License-Identifier: GPL-2.0 */
/*
 * zufs-fs.h - what super.c (the filesystem type) shares with acl.c (POSIX
 * ACLs) and export.c (file handles).
 */
#ifndef ZUFS_FS_H
#define ZUFS_FS_H

#include <linux/fs.h>
#include <linux/exportfs.h>

struct posix_acl;

/* super.c */
ssize_t zufs_getxattr(struct inode *inode, const char *name, void *buf,
		      size_t size);
int zufs_setxattr(struct inode *inode, const char *name, const void *value,
		  size_t size, int flags);
int zufs_set_mode(struct inode *inode, umode_t mode);
struct inode *zufs_iget_ino(struct super_block *sb, u64 ino, u32 generation);
struct inode *zufs_lookup_dotdot(struct inode *dir);

/* acl.c */
struct zufs_new_acls {
	struct posix_acl *dflt;
	struct posix_acl *access;
};

struct posix_acl *zufs_get_acl(struct inode *inode, int type, bool rcu);
int zufs_set_acl(struct user_namespace *mnt_userns, struct inode *inode,
		 struct posix_acl *acl, int type);
int zufs_acl_prepare(struct inode *dir, umode_t *mode,
		     struct zufs_new_acls *a);
int zufs_acl_apply(struct inode *inode, struct zufs_new_acls *a);
void zufs_acl_release(struct zufs_new_acls *a);

/* export.c */
extern const struct export_operations zufs_export_ops;

#endif /* ZUFS_FS_H */
