// SPDX-License-Identifier: GPL-2.0
/*
 * acl.c - POSIX ACLs on a zufs mount.
 *
 * The ACLs are stored by zusd's plugin as any other xattr, under the names
 * system.posix_acl_access and system.posix_acl_default, in the kernel's
 * xattr format (posix_acl_to_xattr); the kernel enforces them. The VFS does
 * the rest as for its own filesystems: the ACL handlers (which call
 * ->get_acl and ->set_acl), generic_permission() checking the cached ACL,
 * the umask left to posix_acl_create() on SB_POSIXACL mounts, and
 * posix_acl_chmod() after a mode change.
 *
 * Another client (the FUSE bridge, the preload library, a second mount) may
 * change an ACL behind the kernel's cache: a change of an ACL changes the
 * inode's ctime, so super.c drops the cached ACLs whenever a reply shows a
 * new ctime.
 *
 * Whatever zusd returns is parsed by posix_acl_from_xattr(), which checks
 * the header, the size and every entry; a malformed value is EIO, not an
 * ACL.
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/xattr.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>

#include "zufs.h"
#include "zufs-fs.h"

/* the largest ACL we read: the xattr size limit caps what anyone stored */
#define ZUFS_ACL_MAX	XATTR_SIZE_MAX

static const char *zufs_acl_name(int type)
{
	return type == ACL_TYPE_ACCESS ? XATTR_NAME_POSIX_ACL_ACCESS :
					 XATTR_NAME_POSIX_ACL_DEFAULT;
}

struct posix_acl *zufs_get_acl(struct inode *inode, int type, bool rcu)
{
	const char *name;
	struct posix_acl *acl;
	size_t size;
	ssize_t len;
	void *buf;

	if (rcu)
		return ERR_PTR(-ECHILD);
	if (type != ACL_TYPE_ACCESS && type != ACL_TYPE_DEFAULT)
		return ERR_PTR(-EINVAL);
	name = zufs_acl_name(type);
	/* the size first, then the value: most inodes have no ACL at all */
	len = zufs_getxattr(inode, name, NULL, 0);
	if (len == -ENODATA || len == -EOPNOTSUPP || len == -ENOSYS || !len)
		return NULL;
	if (len < 0)
		return ERR_PTR(len);
	if (len > ZUFS_ACL_MAX)
		return ERR_PTR(-EIO);
	size = len;
	buf = kmalloc(size, GFP_KERNEL);
	if (!buf)
		return ERR_PTR(-ENOMEM);
	len = zufs_getxattr(inode, name, buf, size);
	if (len == -ENODATA) {
		acl = NULL;		/* removed in between */
	} else if (len == -ERANGE) {
		acl = ERR_PTR(-EAGAIN);	/* grew in between: the caller retries */
	} else if (len < 0) {
		acl = ERR_PTR(len);
	} else {
		acl = posix_acl_from_xattr(&init_user_ns, buf, len);
		if (IS_ERR(acl)) {
			pr_warn_ratelimited("inode %lu: malformed %s from zusd (%ld)\n",
					    inode->i_ino, name, PTR_ERR(acl));
			acl = ERR_PTR(-EIO);
		}
	}
	kfree(buf);
	return acl;
}

/* Stores @acl (NULL: removes it) without touching the mode. */
static int zufs_store_acl(struct inode *inode, struct posix_acl *acl, int type)
{
	const char *name = zufs_acl_name(type);
	size_t size;
	void *buf;
	int err;

	if (!acl) {
		err = zufs_setxattr(inode, name, NULL, 0, 0);
		if (err == -ENODATA)
			err = 0;
	} else {
		size = posix_acl_xattr_size(acl->a_count);
		if (size > ZUFS_ACL_MAX)
			return -E2BIG;
		buf = kmalloc(size, GFP_KERNEL);
		if (!buf)
			return -ENOMEM;
		err = posix_acl_to_xattr(&init_user_ns, acl, buf, size);
		if (err >= 0)
			err = zufs_setxattr(inode, name, buf, size, 0);
		kfree(buf);
	}
	if (!err)
		set_cached_acl(inode, type, acl);
	return err;
}

int zufs_set_acl(struct user_namespace *mnt_userns, struct inode *inode,
		 struct posix_acl *acl, int type)
{
	umode_t mode = inode->i_mode;
	int err;

	if (type == ACL_TYPE_ACCESS && acl) {
		/*
		 * The mode follows the ACL; an ACL the mode says in full is
		 * not stored (acl becomes NULL); a caller outside the group
		 * without CAP_FSETID loses S_ISGID.
		 */
		err = posix_acl_update_mode(mnt_userns, inode, &mode, &acl);
		if (err)
			return err;
	}
	if (mode != inode->i_mode) {
		err = zufs_set_mode(inode, mode);
		if (err)
			return err;
	}
	return zufs_store_acl(inode, acl, type);
}

/*
 * Before a create: @mode masked by the parent's default ACL (or the umask,
 * where it has none), and the ACLs the new inode gets.
 */
int zufs_acl_prepare(struct inode *dir, umode_t *mode, struct zufs_new_acls *a)
{
	a->dflt = NULL;
	a->access = NULL;
	return posix_acl_create(dir, mode, &a->dflt, &a->access);
}

/* After the create: the new inode's ACLs stored; a failure leaves none. */
int zufs_acl_apply(struct inode *inode, struct zufs_new_acls *a)
{
	int err = 0;

	if (a->dflt)
		err = zufs_store_acl(inode, a->dflt, ACL_TYPE_DEFAULT);
	if (!err && a->access)
		err = zufs_store_acl(inode, a->access, ACL_TYPE_ACCESS);
	if (!err) {
		if (!a->dflt)
			set_cached_acl(inode, ACL_TYPE_DEFAULT, NULL);
		if (!a->access)
			set_cached_acl(inode, ACL_TYPE_ACCESS, NULL);
	}
	return err;
}

void zufs_acl_release(struct zufs_new_acls *a)
{
	posix_acl_release(a->dflt);
	posix_acl_release(a->access);
}
