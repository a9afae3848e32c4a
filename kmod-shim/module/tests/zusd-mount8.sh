#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test: mount(8), fstab, remount and second mounts (issue 16 item 9) on
# the kernel-module transport, with util-linux's mount and umount (packed by
# tests/zusd-guest-test.sh as /lib/zufs/bin/{mount,umount}: the guest's
# /bin/mount is busybox, which runs no helpers) and the helpers of
# `zufs install-helpers`: `mount -t zufs.pmemfs -o transport=kernel DEV MNT`
# and an /etc/fstab line mount through the module, `mount -o remount,ro|rw`
# flips the superblock (writes EROFS, the mount's other flags kept), a second
# mount of the device is refused naming the first mount point, umount(8)
# ends zusd's mount too (umount.zufs), and the zusd mount a plain umount(2)
# left is ended by the next mount of the device.
# Prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, start_zusd, stop_zusd

export ZUFS_SOCKET=/run/zufs/zusd-m8.sock ZUFS_PLUGINS=/lib/zufs/plugins ZUFS_RUN_DIR=/run/zufs NO_COLOR=1
MOUNT=/lib/zufs/bin/mount
UMOUNT=/lib/zufs/bin/umount
DEV=/dev/shm/pmem-m8
M=/mnt/m8
M2=/mnt/m8-second
LOG=/tmp/zusd-m8.log
mkdir -p $M $M2 /run/zufs

if ! [ -x $MOUNT ] || ! [ -x $UMOUNT ]; then
	echo "TEST m8_util_linux_present ... FAILED: no util-linux mount/umount in the initramfs"
	exit 0
fi
lsmod | grep -q '^zufs ' || modprobe zufs
start_zusd --kernel
check m8_mkfs sh -c "zufs mkfs -t pmemfs --size 64M $DEV >/tmp/m8-mkfs.log 2>&1"
check m8_install_helpers sh -c "zufs install-helpers --dir /sbin >/tmp/m8-ih.log 2>&1"
check m8_helpers_installed sh -c "[ -L /sbin/mount.zufs.pmemfs ] && [ -L /sbin/mount.zufs ] && [ -L /sbin/umount.zufs ]"

run() {  # NAME CMD...: CMD's output to /tmp/m8-NAME.log, shown when it fails
	n=$1
	shift
	"$@" >/tmp/m8-$n.log 2>&1 && return 0
	sed "s/^/GUEST: m8 $n: /" /tmp/m8-$n.log
	return 1
}
zmounts() {  # zusd's mounts
	zufs status 2>/dev/null | grep -c '^  #'
}
line() {  # the mount table's line of $M
	grep " $M zufs " /proc/mounts
}
opt() {  # OPT: the mount of $M has option OPT
	line | cut -d' ' -f4 | tr , '\n' | grep -qx "$1"
}
zcount() {  # N: zusd has N mounts
	[ "$(zmounts)" = "$1" ]
}
mounted() {
	line >/dev/null
}
unmounted() {
	! line >/dev/null
}
erofs() {  # a write under $M fails with EROFS
	! sh -c "echo x >$M/ro-file" 2>/tmp/m8-erofs.log && grep -q 'Read-only file system' /tmp/m8-erofs.log
}
flags_kept() {
	opt nosuid && opt nodev && opt noatime
}
second_refused() {
	! run second $MOUNT -t zufs.pmemfs -o transport=kernel $DEV $M2
}
second_absent() {
	! grep -q " $M2 " /proc/mounts && zcount 1
}
ro_busy_refused() {
	! run ro_busy $MOUNT -o remount,ro $M && opt rw
}

# mount(8) with a type: /sbin/mount.zufs.pmemfs, through the module
check m8_mount_t run mount_t $MOUNT -t zufs.pmemfs -o transport=kernel,nosuid,nodev,noatime $DEV $M
check m8_mount_is_the_module mounted
line | sed 's/^/GUEST: m8 mounted: /'
check m8_mount_flags flags_kept
check m8_write sh -c "echo 'through mount(8)' >$M/a"
check m8_zusd_has_one_mount zcount 1

# a second mount of the device: refused, naming the first mount point
check m8_second_refused second_refused
check m8_second_names_the_first grep -q "already mounted on $M" /tmp/m8-second.log
check m8_second_not_mounted second_absent

# remount,ro and back: the superblock's flag, the other flags kept
check m8_remount_ro run remount_ro $MOUNT -o remount,ro $M
check m8_ro_in_table opt ro
check m8_ro_keeps_flags flags_kept
check m8_ro_erofs erofs
check m8_ro_reads grep -qx 'through mount(8)' $M/a
check m8_remount_rw run remount_rw $MOUNT -o remount,rw $M
check m8_rw_in_table opt rw
check m8_rw_writes sh -c "echo b >$M/b"
# read-only while a file is open for writing: EBUSY, still writable
exec 3>>$M/b
check m8_remount_ro_busy ro_busy_refused
exec 3>&-

# umount(8): umount.zufs unmounts the module's mount and zusd's
check m8_umount run umount $UMOUNT $M
check m8_umounted unmounted
check m8_zusd_unmounted zcount 0

# an /etc/fstab line (mount(8)-only options the helper drops), mount MNT
echo "$DEV $M zufs.pmemfs transport=kernel,noauto,nofail,x-zufs.test,nosuid 0 0" >/etc/fstab
check m8_fstab_mount run fstab_mount $MOUNT $M
check m8_fstab_is_the_module mounted
check m8_fstab_flags opt nosuid
check m8_fstab_data grep -qx 'through mount(8)' $M/a
check m8_fstab_remount_ro run fstab_ro $MOUNT -o remount,ro $M
check m8_fstab_ro_erofs erofs
check m8_fstab_remount_rw run fstab_rw $MOUNT -o remount,rw $M
check m8_fstab_rw_writes sh -c "echo c >$M/c"
check m8_fstab_umount run fstab_umount $UMOUNT $M
check m8_fstab_umounted unmounted
check m8_fstab_zusd_unmounted zcount 0
rm -f /etc/fstab

# a plain umount(2) (busybox's umount runs no helper) leaves zusd's mount ...
check m8_plain_mount run plain_mount $MOUNT -t zufs.pmemfs -o transport=kernel $DEV $M
id=$(line | tr , '\n' | sed -n 's/^mount_id=//p')
root=$(line | tr , '\n' | sed -n 's/^root=//p')
check m8_plain_umount umount $M
check m8_plain_leaves_zusd_mount zcount 1
# ... which mount -t zufs (mount.zufs passes it on to mount(2)) mounts again
check m8_raw_mount run raw_mount $MOUNT -t zufs -o mount_id=$id,root=$root $DEV $M
check m8_raw_data grep -qx 'through mount(8)' $M/a
check m8_raw_umount umount $M
# ... and the next mount of the device ends first
check m8_orphan_mount run orphan_mount $MOUNT -t zufs.pmemfs -o transport=kernel $DEV $M
check m8_orphan_ended zcount 1
check m8_orphan_umount run orphan_umount $UMOUNT $M
check m8_orphan_zusd_unmounted zcount 0

zufs install-helpers --dir /sbin --remove >/dev/null 2>&1
stop_zusd
check m8_fsck sh -c "zufs fsck -t pmemfs $DEV >/tmp/m8-fsck.log 2>&1 || { cat /tmp/m8-fsck.log; false; }"
rm -f $DEV
exit 0
