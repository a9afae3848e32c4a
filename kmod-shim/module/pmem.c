// SPDX-License-Identifier: GPL-2.0
/*
 * pmem.c - the DAX block device, held by the module and mapped to zusd.
 *
 * ZUFS_IOC_GRAB_PMEM {path} opens the block device exclusively and takes its
 * dax_device, as ext2_fill_super() does in 6.1, and answers a new fd whose
 * shared mapping maps the pmem itself: the fault handler asks the dax_device
 * for the page frame (dax_direct_access) and inserts it (vmf_insert_pfn, a
 * special PTE: no struct page reference, no get_user_pages). zusd must not
 * mmap /dev/pmem0 itself: a block device mapping goes through the block
 * device's page cache, which the kernel's DAX copies never see.
 *
 * A device stays held while a grab fd, a mapping of one, or a zufs mount
 * naming it (-o dax=PATH) lives; a second grab of the same device shares it.
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/module.h>
#include <linux/fs.h>
#include <linux/blkdev.h>
#include <linux/dax.h>
#include <linux/pfn_t.h>
#include <linux/mm.h>
#include <linux/anon_inodes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/kref.h>
#include <linux/mman.h>
#include <linux/kdev_t.h>
#include <linux/capability.h>
#include <linux/file.h>

#include "zufs.h"
#include "zufs-dax.h"

#define ZUFS_PMEM_ALIGN		(2UL << 20)	/* zus device sizes: 2 MiB */

struct zufs_pmem {
	struct kref kref;
	struct list_head list;
	dev_t dev;
	struct block_device *bdev;
	struct dax_device *dax_dev;
	u64 start_off;		/* the partition in the dax_device */
	u64 size;		/* bytes mapped and used */
};

static DEFINE_MUTEX(zufs_pmem_lock);
static LIST_HEAD(zufs_pmems);
/* the FMODE_EXCL holder of every device the module opens */
static int zufs_pmem_holder;

/* the last reference went, with zufs_pmem_lock held */
static void zufs_pmem_release(struct kref *kref)
	__releases(&zufs_pmem_lock)
{
	struct zufs_pmem *p = container_of(kref, struct zufs_pmem, kref);

	list_del(&p->list);
	mutex_unlock(&zufs_pmem_lock);
	fs_put_dax(p->dax_dev, NULL);
	blkdev_put(p->bdev, FMODE_READ | FMODE_WRITE | FMODE_EXCL);
	pr_info("pmem %u:%u released\n", MAJOR(p->dev), MINOR(p->dev));
	kfree(p);
}

void zufs_pmem_put(struct zufs_pmem *p)
{
	kref_put_mutex(&p->kref, zufs_pmem_release, &zufs_pmem_lock);
}

static struct zufs_pmem *zufs_pmem_find(dev_t dev)
{
	struct zufs_pmem *p;

	lockdep_assert_held(&zufs_pmem_lock);
	list_for_each_entry(p, &zufs_pmems, list)
		if (p->dev == dev) {
			kref_get(&p->kref);
			return p;
		}
	return NULL;
}

/* A device the module holds already (a mount names zusd's device), with a reference. */
struct zufs_pmem *zufs_pmem_get_held(const char *path)
{
	struct zufs_pmem *p;
	dev_t dev;
	int err = lookup_bdev(path, &dev);

	if (err)
		return ERR_PTR(err);
	mutex_lock(&zufs_pmem_lock);
	p = zufs_pmem_find(dev);
	mutex_unlock(&zufs_pmem_lock);
	return p ?: ERR_PTR(-ENODEV);
}

static struct zufs_pmem *zufs_pmem_open(const char *path)
{
	const fmode_t mode = FMODE_READ | FMODE_WRITE | FMODE_EXCL;
	struct block_device *bdev;
	struct zufs_pmem *p;
	dev_t dev;
	int err;

	err = lookup_bdev(path, &dev);
	if (err)
		return ERR_PTR(err);
	mutex_lock(&zufs_pmem_lock);
	p = zufs_pmem_find(dev);
	if (p)
		goto out;
	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p) {
		p = ERR_PTR(-ENOMEM);
		goto out;
	}
	bdev = blkdev_get_by_path(path, mode, &zufs_pmem_holder);
	if (IS_ERR(bdev)) {
		kfree(p);
		p = ERR_CAST(bdev);
		goto out;
	}
	p->dax_dev = fs_dax_get_by_bdev(bdev, &p->start_off, NULL, NULL);
	p->size = round_down(bdev_nr_bytes(bdev), ZUFS_PMEM_ALIGN);
	if (!p->dax_dev || !p->size) {
		err = p->dax_dev ? -EINVAL : -EOPNOTSUPP;
		fs_put_dax(p->dax_dev, NULL);
		blkdev_put(bdev, mode);
		kfree(p);
		p = ERR_PTR(err);
		goto out;
	}
	kref_init(&p->kref);
	p->bdev = bdev;
	p->dev = bdev->bd_dev;
	list_add(&p->list, &zufs_pmems);
	pr_info("pmem %s (%u:%u): %llu MiB at dax offset %llu, held\n", path,
		MAJOR(p->dev), MINOR(p->dev), p->size >> 20, p->start_off);
out:
	mutex_unlock(&zufs_pmem_lock);
	return p;
}

struct dax_device *zufs_pmem_dax(struct zufs_pmem *p)
{
	return p->dax_dev;
}

struct block_device *zufs_pmem_bdev(struct zufs_pmem *p)
{
	return p->bdev;
}

u64 zufs_pmem_start(struct zufs_pmem *p)
{
	return p->start_off;
}

u64 zufs_pmem_size(struct zufs_pmem *p)
{
	return p->size;
}

/* ----- the grab fd and its mapping ----- */

static vm_fault_t zufs_pmem_fault(struct vm_fault *vmf)
{
	struct zufs_pmem *p = vmf->vma->vm_file->private_data;
	pgoff_t pgoff = vmf->pgoff;
	long n;
	pfn_t pfn;
	int id;

	if (pgoff >= p->size >> PAGE_SHIFT)
		return VM_FAULT_SIGBUS;
	id = dax_read_lock();
	n = dax_direct_access(p->dax_dev, PHYS_PFN(p->start_off) + pgoff, 1,
			      DAX_ACCESS, NULL, &pfn);
	dax_read_unlock(id);
	if (n < 1)
		return VM_FAULT_SIGBUS;
	/* a special PTE: nothing refcounts or pins the page through it */
	return vmf_insert_pfn(vmf->vma, vmf->address, pfn_t_to_pfn(pfn));
}

static const struct vm_operations_struct zufs_pmem_vm_ops = {
	.fault	= zufs_pmem_fault,
};

static int zufs_pmem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct zufs_pmem *p = file->private_data;
	unsigned long pages = p->size >> PAGE_SHIFT;

	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	if (vma->vm_pgoff >= pages || vma_pages(vma) > pages - vma->vm_pgoff)
		return -EINVAL;
	vma->vm_flags &= ~VM_MAYEXEC;
	vma->vm_flags |= VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY;
	vma->vm_ops = &zufs_pmem_vm_ops;
	return 0;
}

static int zufs_pmem_fd_release(struct inode *inode, struct file *file)
{
	zufs_pmem_put(file->private_data);
	return 0;
}

static const struct file_operations zufs_pmem_fops = {
	.owner			= THIS_MODULE,
	.mmap			= zufs_pmem_mmap,
	/* the mapping is the pmem: flush + fence makes a store durable */
	.mmap_supported_flags	= MAP_SYNC,
	.release		= zufs_pmem_fd_release,
	.llseek			= noop_llseek,
};

long zufs_pmem_grab_ioctl(void __user *uarg)
{
	struct zufs_ioc_grab_pmem g;
	struct zufs_pmem *p;
	struct file *file;
	char *path;
	int fd;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (copy_from_user(&g, uarg, sizeof(g)))
		return -EFAULT;
	if (g.flags || g.reserved[0] || g.reserved[1])
		return -EINVAL;
	path = strndup_user(u64_to_user_ptr(g.path), PATH_MAX);
	if (IS_ERR(path))
		return PTR_ERR(path);
	p = zufs_pmem_open(path);
	kfree(path);
	if (IS_ERR(p))
		return PTR_ERR(p);
	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		zufs_pmem_put(p);
		return fd;
	}
	file = anon_inode_getfile("[zufs-pmem]", &zufs_pmem_fops, p, O_RDWR);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		zufs_pmem_put(p);
		return PTR_ERR(file);
	}
	g.fd = fd;
	g.size = p->size;
	g.dev = new_encode_dev(p->dev);
	if (copy_to_user(uarg, &g, sizeof(g))) {
		put_unused_fd(fd);
		fput(file);	/* its release drops the device */
		return -EFAULT;
	}
	fd_install(fd, file);
	return 0;
}
