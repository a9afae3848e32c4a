#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test: what real programs expect of a filesystem (issue 16) on the
# kernel-module transport. The checks of tests/scripts/fs_semantics.py, the
# same ones tests/tests/fuse_semantics.rs runs on both FUSE transports, run
# here on tmpfs and on pmemfs served by zusd's K-ZTs and mounted with
# `zufs mount -o transport=kernel`; each check's output lines must be equal
# on both (set-id rules, files and directories open after removal, 1000
# xattrs, shared mmap of an O_DIRECT fd, device nodes, file handles across an
# unmount and mount, copy_file_range's rules and POSIX ACLs), and a few
# lines are required outright. Then atime under relatime, noatime and
# strictatime, copy_file_range is checked to be one op at zusd, and mount(8)'s
# remount,ro and back (busybox's mount: tests/zusd-mount8.sh has util-linux's).
# Needs python3 (the stdlib modules the checks import; packed by
# tests/zusd-guest-test.sh), setfacl/getfacl, and the module loaded by an
# earlier script or here.
# Prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms, start_zusd, stop_zusd

export ZUFS_SOCKET=/run/zufs/zusd-${PX_NAME:-px}.sock ZUFS_PLUGINS=/lib/zufs/plugins ZUFS_RUN_DIR=/run/zufs NO_COLOR=1
export PYTHONHOME=/ PYTHONDONTWRITEBYTECODE=1
# PX_DEV: the device (default a file on /dev/shm; tests/dax-posix.sh: /dev/pmem0,
# a DAX mount); PX_NAME: the tests' name prefix
P=${PX_NAME:-px}
DEV=${PX_DEV:-/dev/shm/pmem-posix}
LOG=/tmp/zusd-$P.log
M=/mnt/$P
T=/mnt/$P-tmpfs
SEM=/tests/lib/fs_semantics.py
mkdir -p $M $T /run/zufs

if ! [ -x /bin/python3 ] || ! [ -f $SEM ]; then
	echo "TEST ${P}_python_present ... FAILED: no python3 or fs_semantics.py in the initramfs"
	exit 0
fi
lsmod | grep -q '^zufs ' || modprobe zufs
start_zusd --kernel
if [ -b "$DEV" ]; then
	check ${P}_mkfs sh -c "zufs mkfs -t pmemfs $DEV >/tmp/px-mkfs.log 2>&1"
else
	check ${P}_mkfs sh -c "zufs mkfs -t pmemfs --size 256M $DEV >/tmp/px-mkfs.log 2>&1"
fi

mnt() {  # [OPTS]: pmemfs on $M through the module
	o=transport=kernel
	[ -n "$1" ] && o="$o,$1"
	zufs mount -t pmemfs -o "$o" $DEV $M >/tmp/px-mount.log 2>&1 ||
		{ sed 's/^/GUEST: px mount: /' /tmp/px-mount.log; return 1; }
}

umnt() {
	zufs umount $M >/tmp/px-umount.log 2>&1 ||
		{ sed 's/^/GUEST: px umount: /' /tmp/px-umount.log; return 1; }
}

# a fresh 0777 directory DIR/NAME
fresh() {
	rm -rf "$1/$2"
	mkdir -p "$1/$2"
	chmod 0777 "$1/$2"
}

# CHECK TAG [ARGS...]: the check on the reference ($REF: tmpfs, or ext4
# where the check needs O_DIRECT, which 6.1's tmpfs refuses) and on the
# mount, outputs compared
same() {
	c=$1
	tag=$2
	shift 2
	fresh $REF "$tag"
	fresh $M "$tag"
	python3 -S $SEM "$c" "$REF/$tag" "$@" >/tmp/px-$tag.tmpfs 2>&1
	rt=$?
	python3 -S $SEM "$c" "$M/$tag" "$@" >/tmp/px-$tag.zufs 2>&1
	rz=$?
	if [ $rt = 0 ] && [ $rz = 0 ] && cmp -s /tmp/px-$tag.tmpfs /tmp/px-$tag.zufs; then
		echo "TEST ${P}_${tag}_matches_tmpfs ... ok"
		return 0
	fi
	echo "TEST ${P}_${tag}_matches_tmpfs ... FAILED: exit $rt (tmpfs) $rz (zufs)"
	diff /tmp/px-$tag.tmpfs /tmp/px-$tag.zufs | sed "s/^/GUEST: px $tag: /"
	[ $rt = 0 ] || tail -n 4 /tmp/px-$tag.tmpfs | sed "s/^/GUEST: px $tag tmpfs: /"
	[ $rz = 0 ] || tail -n 4 /tmp/px-$tag.zufs | sed "s/^/GUEST: px $tag zufs: /"
	return 1
}

has() {  # TAG LINE: the mount's output of check TAG has LINE
	grep -qxF "$2" /tmp/px-$1.zufs
}

mount -t tmpfs -o size=256M px-tmpfs $T
check ${P}_mount_transport_kernel mnt
if [ -b "$DEV" ]; then
	check ${P}_mount_is_dax grep -q " $M zufs .*dax=$DEV" /proc/mounts
fi

# ext4 on a RAM disk: the reference with O_DIRECT (modules packed by guest-test.sh)
E=/mnt/px-ext4
mkdir -p $E
modprobe crc32c_generic 2>/dev/null
modprobe ext4 2>/dev/null
lsmod | grep -q '^brd ' || modprobe brd rd_nr=1 rd_size=131072 2>/dev/null
if [ -b /dev/ram0 ] && /lib/zufs/bin/mke2fs -q -F -t ext4 /dev/ram0 >/dev/null 2>&1 &&
	mount -t ext4 -o acl,user_xattr /dev/ram0 $E; then
	echo "GUEST: $P reference for O_DIRECT checks: ext4 on /dev/ram0"
	REF=$E
else
	echo "TEST ${P}_ext4_reference ... FAILED: no ext4 on a RAM disk (guest-test.sh packs ext4 and brd, posix-files.sh mke2fs)"
	REF=$T
fi
same setid setid
check ${P}_setid_user_truncate_clears_suid has setid "user truncate on 4777: ok -> 0o777"
check ${P}_setid_chmod_outside_group has setid "chmod 2755 by owner outside the group: ok 0o755"
check ${P}_setid_dir_inherits has setid "in setgid dir: sg/user-77-d-755: ok 0o2700 parent-gid"
same open_unlinked open_unlinked
check ${P}_dir_renamed_over_fstat has open_unlinked "dir renamed over, fstat: nlink 0 dir True"
# 6.1's tmpfs has no user.* xattrs (6.6 added them): where it refuses them,
# the mount is compared with the output of the same check on the host's tmpfs
# (tests/zusd-guest-test.sh ran it there), as tests/tests/fuse_semantics.rs does
fresh $T xattrs
python3 -S $SEM xattrs $T/xattrs >/tmp/px-xattrs.guest-tmpfs 2>&1
if grep -q '^create: ENOTSUP' /tmp/px-xattrs.guest-tmpfs && [ -f /tests/lib/host-tmpfs-xattrs.txt ]; then
	echo "GUEST: $P xattrs: this tmpfs has no user xattrs: compared with the host's tmpfs"
	fresh $M xattrs
	python3 -S $SEM xattrs $M/xattrs >/tmp/px-xattrs.zufs 2>&1
	diff /tests/lib/host-tmpfs-xattrs.txt /tmp/px-xattrs.zufs | sed 's/^/GUEST: px xattrs: /'
	check ${P}_xattrs_match_host_tmpfs cmp -s /tests/lib/host-tmpfs-xattrs.txt /tmp/px-xattrs.zufs
else
	same xattrs xattrs
fi
check ${P}_xattrs_1000 has xattrs "set 1000: ['ok']"
same mmap_odirect mmap_odirect
check ${P}_mmap_odirect_shared has mmap_odirect "shared mmap of an O_DIRECT fd: ok"
REF=$T
same devices devices
check ${P}_device_null_node has devices "write to null node: ok"
same copy_file_range copy_file_range
check ${P}_cfr_overlap_einval has copy_file_range "overlap in one file: EINVAL"
same acl acl
check ${P}_acl_enforced has acl "user read denied by ACL entry: EACCES"
check ${P}_acl_inherited sh -c "grep -q \"^inherited d/f 0o664 \\['system.posix_acl_access'\\]\" /tmp/px-acl.zufs"

# file handles: saved, unmount and mount, opened again, stale once removed
# (the check keeps the handles in ../handles, next to its directory hs)
same handles_save hs
check ${P}_handle_opens has hs "open_by_handle_at d/f b'by handle'"
check ${P}_handles_umount umnt
check ${P}_handles_mount mnt
python3 -S $SEM handles_reopen $T/hs >/tmp/px-hr.tmpfs 2>&1
python3 -S $SEM handles_reopen $M/hs >/tmp/px-hr.zufs 2>&1
diff /tmp/px-hr.tmpfs /tmp/px-hr.zufs | sed 's/^/GUEST: px handles_reopen: /'
check ${P}_handles_after_remount_match_tmpfs cmp -s /tmp/px-hr.tmpfs /tmp/px-hr.zufs
check ${P}_handle_after_remount has hr "after remount, open_by_handle_at d/f b'by handle'"
check ${P}_handle_removed_estale has hr "removed file by handle: ESTALE"

# atime: relatime by default, noatime and strictatime on request. Not
# compared with tmpfs: 6.1's tmpfs stamps times from the coarse clock, so an
# atime set in the same tick as the ctime counts as not newer and its "recent"
# case flips between runs. On a DAX mount reads never reach zusd: the kernel
# applies the mount's policy and sends zusd the atime (a SETATTR that keeps
# the ctime); readdir reaches zusd, whose plugin applies the same policy.
atime() {  # POLICY: the atime check on $M (mounted with POLICY)
	fresh $M atime
	python3 -S $SEM atime $M/atime $1 >/tmp/px-atime-$1.zufs 2>&1
	sed "s/^/GUEST: $P atime $1: /" /tmp/px-atime-$1.zufs
}
atime relatime
check ${P}_atime_relatime_older_than_mtime has atime-relatime "read, atime < mtime: updated"
check ${P}_atime_relatime_recent has atime-relatime "read, atime > mtime, recent: kept"
check ${P}_atime_relatime_a_day_old has atime-relatime "read, atime a day old: updated"
check ${P}_atime_relatime_readdir has atime-relatime "readdir, atime a day old: updated"
for pol in noatime strictatime; do
	check ${P}_atime_${pol}_umount umnt
	check ${P}_atime_${pol}_mount mnt $pol
	atime $pol
	if [ $pol = noatime ]; then w=kept; else w=updated; fi
	check ${P}_atime_${pol}_older_than_mtime has atime-$pol "read, atime < mtime: $w"
	check ${P}_atime_${pol}_recent has atime-$pol "read, atime > mtime, recent: $w"
	check ${P}_atime_${pol}_a_day_old has atime-$pol "read, atime a day old: $w"
	check ${P}_atime_${pol}_readdir has atime-$pol "readdir, atime a day old: $w"
done
check ${P}_atime_default_umount umnt
check ${P}_atime_default_mount mnt

# copy_file_range is one op at zusd: the module's COPY_FILE_RANGE
ops() {  # every op counter of zufs status, summed
	zufs status --json 2>/dev/null | grep -o '"ops":[0-9]*' |
		awk -F: '{ s += $2 } END { print s + 0 }'
}
dd if=/dev/urandom of=$M/cfr-src bs=1M count=1 2>/dev/null
b=$(ops)
cfr_1m() { python3 -S -c '
import os
s = os.open("'$M'/cfr-src", os.O_RDONLY)
d = os.open("'$M'/cfr-dst", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
n = os.copy_file_range(s, d, 1 << 20, 0, 7)
assert n == 1 << 20, n'; }
check ${P}_cfr_copies cfr_1m
a=$(ops)
echo "GUEST: $P copy_file_range of 1 MiB: $((a - b)) ops at zusd"
check ${P}_cfr_is_one_op sh -c "[ $b -gt 0 ] && [ $((a - b)) -le 12 ]"
echo 3 >/proc/sys/vm/drop_caches
check ${P}_cfr_bytes sh -c "dd if=$M/cfr-dst bs=7 skip=1 2>/dev/null | cmp -s - $M/cfr-src"

# remount read-only and back (mount(8) as an admin would)
check ${P}_remount_ro mount -o remount,ro $M
check ${P}_remount_ro_refuses_writes sh -c "! touch $M/ro-file 2>/dev/null"
check ${P}_remount_rw mount -o remount,rw $M
check ${P}_remount_rw_writes touch $M/rw-file

check ${P}_umount umnt
umount $T
umount $E 2>/dev/null
stop_zusd
check ${P}_fsck sh -c "zufs fsck -t pmemfs $DEV >/tmp/px-fsck.log 2>&1 || { cat /tmp/px-fsck.log; false; }"
[ -b "$DEV" ] || rm -f $DEV
exit 0
