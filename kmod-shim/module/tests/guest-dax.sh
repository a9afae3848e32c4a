#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test: the DAX path (issue 15 part 2). zufs mkfs/fsck and zusd map
# /dev/pmem0 through the module (ZUFS_IOC_GRAB_PMEM); a zufs mount with
# -o dax=/dev/pmem0 copies between user memory and pmem (dax_iomap_rw) and
# maps pmem into processes (dax_iomap_fault); a second mount of the same
# zusd mount without dax= goes through the slot windows. Then the
# benchmark: DAX mount, window mount, ext4 -o dax on /dev/pmem1 (the second
# memmap= region), the FUSE bridge and tmpfs, in this one boot.
# Run by the guest's /init (tests/dax-guest-test.sh sets it up).

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

PL=/lib/zufs/plugins
SOCK=/run/zufs/zusd-dax.sock
LOG=/tmp/zusd-dax.log
D=/mnt/dax
WIN=/mnt/win

lsmod | grep -q '^zufs ' || modprobe zufs
# memmap= regions are e820 type 12: nd_e820 makes them nvdimm regions, nd_pmem /dev/pmemN
modprobe nd_e820 2>/dev/null
modprobe nd_pmem 2>/dev/null
wait_for 100 test -b /dev/pmem0
check dax_pmem0_is_a_dax_block_device sh -c 'test -b /dev/pmem0 && grep -qx 1 /sys/block/pmem0/queue/dax'
if ! test -b /dev/pmem0; then
	# zufs mkfs would make a file of that name: stop here
	grep -i persistent /proc/iomem | sed 's/^/GUEST: iomem: /'
	ls -l /dev/pmem* 2>&1 | sed 's/^/GUEST: /'
	exit 1
fi
ls -l /dev/pmem* | sed 's/^/GUEST: /'

# mkfs and fsck map the device through the module, which holds it meanwhile
check dax_mkfs_through_the_module /bin/zufs mkfs -t pmemfs --plugins $PL /dev/pmem0
check dax_module_held_pmem0 sh -c 'dmesg | grep -q "zufs: pmem /dev/pmem0 .*held"'
check dax_released_after_mkfs sh -c 'dmesg | grep -q "zufs: pmem .* released"'
check dax_fsck_clean_after_mkfs sh -c "/bin/zufs fsck -t pmemfs --plugins $PL /dev/pmem0 | grep -q ': 0 problem'"

start_zusd() {
	NO_COLOR=1 ZUFS_LOG=info /bin/zusd --kernel --plugins $PL --socket "$SOCK" >"$LOG" 2>&1 &
	ZPID=$!
	wait_for 600 grep -q 'zusd ready' "$LOG"
}
zufs_k() {  # zufs CMD ...: the CLI talking to this zusd
	cmd=$1
	shift
	/bin/zufs "$cmd" --socket "$SOCK" --plugins $PL "$@"
}
mount_opt() {  # MNT KEY: the value of KEY= among the zufs mount's options at MNT
	awk -v m="$1" -v k="$2=" '$2 == m && $3 == "zufs" {
		n = split($4, o, ","); for (i = 1; i <= n; i++) if (index(o[i], k) == 1) print substr(o[i], length(k) + 1)
	}' /proc/mounts | tail -n 1
}
start_zusd
mkdir -p $D $WIN /mnt/x
# zufs mount -o transport=kernel: zusd mounts /dev/pmem0 (a DAX block device, which zusd maps
# through the module), and the CLI passes dax=/dev/pmem0 to mount(2) itself; nodax does not
check dax_zufs_mount_nodax zufs_k mount -t pmemfs -o transport=kernel,nodax /dev/pmem0 $D
check dax_zufs_mount_nodax_has_no_dax sh -c "grep -q ' $D zufs ' /proc/mounts && ! grep -q ' $D zufs .*dax=' /proc/mounts"
check dax_zufs_umount_nodax zufs_k umount $D
check dax_mount zufs_k mount -t pmemfs -o transport=kernel /dev/pmem0 $D
check dax_mount_shows_dax grep -q " $D zufs .*dax=/dev/pmem0" /proc/mounts
MID=$(mount_opt $D mount_id)
ROOT=$(mount_opt $D root)
echo "GUEST: zufs mount: zusd mount ${MID:-?}, root ${ROOT:-?}"
check dax_pmem0_held_exclusively sh -c '! mount -t ext4 /dev/pmem0 /mnt/x 2>/dev/null'
check dax_window_mount_of_the_same_fs mount -t zufs -o "mount_id=$MID,root=$ROOT" none $WIN
check dax_mount_refuses_a_device_not_held sh -c "! mount -t zufs -o mount_id=$MID,root=$ROOT,dax=/dev/pmem1 none /mnt/x 2>/dev/null"

# ---- the part 1 workload on the DAX mount ----
check dax_write_read sh -c "echo hello > $D/a && [ \"\$(cat $D/a)\" = hello ]"
check dax_append sh -c "echo world >> $D/a && [ \"\$(wc -l < $D/a)\" = 2 ] && [ \"\$(tail -n 1 $D/a)\" = world ]"
dd if=/dev/urandom of=/tmp/big bs=1k count=700 2>/dev/null
check dax_700k_file sh -c "cp /tmp/big $D/big && cmp /tmp/big $D/big"
check dax_md5sum sh -c "[ \"\$(md5sum < $D/big)\" = \"\$(md5sum < /tmp/big)\" ]"
check dax_data_seen_through_the_window_mount cmp /tmp/big $WIN/big
check dax_window_write_seen_by_dax sh -c "echo fromwin > $WIN/w && [ \"\$(cat $D/w)\" = fromwin ]"
check dax_overwrite_middle sh -c "dd if=/dev/zero of=$D/big bs=4096 seek=10 count=3 conv=notrunc 2>/dev/null && dd if=/dev/zero of=/tmp/big bs=4096 seek=10 count=3 conv=notrunc 2>/dev/null && cmp /tmp/big $D/big && cmp /tmp/big $WIN/big"
# ---- what the mount caches: names and attributes for a minute (the zufs CLI's default) ----
# but not a file's attributes while a process writes it past the kernel (the preload library
# asks ZUFS_IOC_TICKET on such a file), and not beyond a second while another superblock (the
# window mount) serves the same zusd mount and changes what this one cached
check dax_mount_caches_for_a_minute [ "$(mount_opt $D attr_timeout_ms)/$(mount_opt $D entry_timeout_ms)" = 60000/60000 ]
/bin/dax-test ticket $D/tk $WIN/tk "$MID" 2>&1
size_is() { [ "$(stat -c %s "$1")" = "$2" ]; }
echo first > $D/shared
size_is $D/shared 6
echo second >> $WIN/shared
check dax_second_superblock_change_seen_within_3s wait_for 30 size_is $D/shared 13
rm -f $D/shared
# open(O_CREAT) without O_EXCL of a name this mount cached as absent, which the other made
# meanwhile: zusd's EEXIST to the exclusive CREATE_OPEN makes the module look the name up
# and open the file that is there (the shell's >> is O_WRONLY|O_CREAT|O_APPEND)
stat $D/ee 2>/dev/null
echo fromwin > $WIN/ee
check dax_create_open_of_a_name_made_elsewhere_opens_it sh -c "echo more >> $D/ee && [ \"\$(cat $D/ee)\" = \"\$(printf 'fromwin\nmore')\" ]"
rm -f $D/ee

cached_overwrites() {  # 200 O_SYNC overwrites through one open file: one MAP at most
	/bin/dax-test overwrite $D/big 200 > /tmp/ow.log 2>&1
	rc=$?
	sed 's/^/GUEST: /' /tmp/ow.log
	[ $rc = 0 ]
}
check dax_cached_overwrite_needs_no_map cached_overwrites
check dax_truncate_down sh -c "truncate -s 1000 $D/big && [ \$(stat -c %s $D/big) = 1000 ] && cmp -n 1000 /tmp/big $D/big"
check dax_truncate_up_reads_zeros sh -c "truncate -s 9000 $D/big && [ \"\$(dd if=$D/big bs=1000 skip=1 2>/dev/null | tr -d '\\000' | wc -c)\" = 0 ]"
check dax_sparse_write sh -c "echo x | dd of=$D/sparse bs=1 seek=5242880 2>/dev/null && [ \$(stat -c %s $D/sparse) = 5242882 ] && [ \"\$(dd if=$D/sparse bs=4096 skip=100 count=1 2>/dev/null | tr -d '\\000' | wc -c)\" = 0 ]"
check dax_fsync sh -c "dd if=/tmp/big of=$D/synced bs=64k conv=fsync 2>/dev/null && cmp /tmp/big $D/synced"
check dax_rename_link_symlink sh -c "mv $D/a $D/b && ln $D/b $D/h && ln -s b $D/s && [ \"\$(cat $D/s)\" = \"\$(cat $D/h)\" ] && [ \$(stat -c %h $D/b) = 2 ]"
check dax_readdir_1000 sh -c "mkdir $D/many && i=0 && while [ \$i -lt 1000 ]; do : > $D/many/f\$i; i=\$((i + 1)); done && [ \$(ls $D/many | wc -l) = 1000 ]"
check dax_tar_round_trip sh -c "mkdir -p $D/t && (cd /lib/zufs && tar cf - .) | (cd $D/t && tar xf -) && for f in \$(cd /lib/zufs && find . -type f); do cmp /lib/zufs/\$f $D/t/\$f || exit 1; done"
check dax_cp_r sh -c "cp -r $D/t $D/t2 && [ \"\$(cd $D/t && find . -type f | sort | xargs md5sum)\" = \"\$(cd $D/t2 && find . -type f | sort | xargs md5sum)\" ]"
check dax_open_unlinked sh -c "exec 3<$D/synced; rm $D/synced; cmp /tmp/big /proc/self/fd/3"
check dax_rm_r sh -c "rm -r $D/many $D/t $D/t2 && [ ! -e $D/many ]"

# ---- fio with verify=crc32c on the DAX mount: 4 jobs of random writes, then every block read
# back and checked (write(2)/read(2) through dax_iomap_rw; then through mappings, faults) ----
fio_verify() {  # JOB FIO-OPTIONS... (not $name: check's)
	job=$1
	shift
	mkdir -p $D/fio
	fio --name="$job" --directory=$D/fio --numjobs=4 --rw=randwrite --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --group_reporting "$@" >/tmp/fio-$job.log 2>&1
	rc=$?
	grep -E 'err=|WRITE:|READ:|verify' /tmp/fio-$job.log | head -n 8 | sed "s/^/GUEST: fio $job: /"
	rm -rf $D/fio
	[ $rc = 0 ] && grep -q 'err= 0' /tmp/fio-$job.log && ! grep -qiE 'verify.*(bad|fail)|crc32c.*wanted' /tmp/fio-$job.log
}
if command -v fio >/dev/null; then
	check dax_fio_verify_crc32c_psync_4_jobs fio_verify psync --ioengine=psync --bs=4k --size=4m --fsync=64
	check dax_fio_verify_crc32c_mmap_4_jobs fio_verify mmap --ioengine=mmap --bsrange=4k-64k --size=4m
else
	check dax_fio_in_the_guest false
fi

# ---- pjdfstest on the DAX mount against the window mount of the same zusd mount ----
# (both zusd + pmemfs: a test failing on both is the server's, not DAX's)
pjd() {  # NAME DIR
	mkdir -p "$2"
	chmod 0755 "$(dirname "$2")" "$2"
	(cd "$2" && NO_COLOR=1 pjdfstest -c /tmp/pjd/pjd.toml -p "$2" > /tmp/pjd/$1.out 2>&1)
	echo "GUEST: pjdfstest $1: $(grep '^Summary' /tmp/pjd/$1.out || echo 'no summary')"
	sed 's/\x1b\[[0-9;]*m//g' /tmp/pjd/$1.out | awk '$2 == "FAILED" {print $1}' | sort -u > /tmp/pjd/$1.failed
	rm -rf "$2"
}
if command -v pjdfstest >/dev/null && [ -f /tmp/pjd/pjd.toml ]; then
	pjd window $WIN/pjd
	pjd dax $D/pjd
	check dax_pjdfstest_ran_to_its_end grep -q '^Summary' /tmp/pjd/dax.out
	n=0
	for t in $(cat /tmp/pjd/dax.failed); do
		grep -qxF "$t" /tmp/pjd/window.failed && continue
		echo "TEST dax_pjdfstest:$t ... FAILED: passes on the window mount"
		grep -A3 "^$t " /tmp/pjd/dax.out | head -4 | sed 's/^/    /'
		n=$((n + 1))
	done
	check dax_pjdfstest_passes_what_the_window_mount_passes [ $n = 0 ]
	grep -A1 -m 3 ' FAILED' /tmp/pjd/window.out | cat -v | sed 's/^/GUEST: pjd window: /'
else
	echo "GUEST: pjdfstest on the DAX mount: not in this guest (PJDFSTEST=off, or not built)"
fi

# ---- mmap ----
/bin/dax-test mmap $D 2>&1
check dax_mmap_on_the_window_mount_is_read_only sh -c "! /bin/dax-test mmap $WIN >/dev/null 2>&1"

# ---- the preload library on the module's mount (zufs run --mode dax) ----
# It recognises the zufs mount (mountinfo fstype zufs, zufs mount's record), maps /dev/pmem0
# through the module (GRAB_PMEM) and copies to pmem itself. While the kernel maps a file, the
# module holds zusd's kernel-cache mark on it, and the library steps aside (EUSEKERNEL: the
# calls go through the kernel), then takes over again once the mapping is gone.
pre_stat() {  # LOG KEY: the preload's counter KEY from its stats line in LOG
	sed -n "s/.*stats pid [0-9]*:.* $2 \([0-9]*\).*/\1/p" "$1" | tail -n 1
}
pre_fio() {  # LOG FILE: zufs run --mode dax -- fio writing FILE (256 KiB, crc32c headers)
	# (fio: busybox is static, so LD_PRELOAD cannot reach it; --thread: one stats line)
	dd if=/dev/zero of="$2" bs=4k count=64 conv=notrunc 2>/dev/null
	ZUFS_PRELOAD_STATS=1 zufs_k run --mode dax -- fio --name=pre --filename="$2" --thread \
		--rw=write --bs=4k --size=256k --ioengine=psync --invalidate=0 --verify=crc32c \
		--do_verify=0 >"$1" 2>&1
	sed -n 's/^.*\(stats pid\)/GUEST: preload: \1/p' "$1"
}
pre_check() {  # FILE: every block of what pre_fio wrote, read through the kernel (no preload)
	fio --name=pre --filename="$1" --thread --rw=write --bs=4k --size=256k --ioengine=psync \
		--invalidate=0 --verify=crc32c --verify_only --verify_fatal=1 >/tmp/pre-check.log 2>&1 &&
		grep -q 'err= 0' /tmp/pre-check.log
}
pre_fast() {  # LOG: the library copied to pmem itself, and the kernel never had the calls
	[ "$(pre_stat "$1" dax_bytes)" -ge 262144 ] && [ "$(pre_stat "$1" kernel_cached)" = 0 ]
}
pre_aside() {  # LOG: every write went through the kernel
	[ "$(pre_stat "$1" dax_bytes)" = 0 ] && [ "$(pre_stat "$1" kernel_cached)" -gt 0 ]
}
kc_inodes() {  # zusd's count of kernel-cached inodes of its /dev/pmem0 mount
	zufs_k status 2>/dev/null | grep -F ' /dev/pmem0 ' | sed -n 's/.*kernel-cached inodes \([0-9]*\).*/\1/p' | head -n 1
}
if [ -f /bin/libzufs_preload.so ] && command -v fio >/dev/null; then
	P=$D/pre
	pre_fio /tmp/pre-fast1.log $P
	check dax_preload_serves_the_module_mount pre_fast /tmp/pre-fast1.log
	check dax_preload_writes_seen_by_the_kernel pre_check $P
	check dax_preload_writes_seen_by_the_window_mount pre_check $WIN/pre
	/bin/dax-test hold $P >/tmp/hold.out 2>&1 &
	HPID=$!
	check dax_kernel_maps_the_file wait_for 100 grep -q held /tmp/hold.out
	check dax_mapped_file_marked_at_zusd [ "$(kc_inodes)" = 1 ]
	pre_fio /tmp/pre-aside.log $P
	check dax_preload_steps_aside_while_the_kernel_maps pre_aside /tmp/pre-aside.log
	check dax_preload_aside_writes_land pre_check $P
	kill $HPID
	wait $HPID 2>/dev/null
	check dax_mark_dropped_with_the_mapping [ "$(kc_inodes)" = 0 ]
	pre_fio /tmp/pre-fast2.log $P
	check dax_preload_fast_again_after_munmap pre_fast /tmp/pre-fast2.log
	check dax_preload_writes_seen_by_the_kernel_again pre_check $P
	rm -f $P
else
	echo "GUEST: preload on the module mount: no libzufs_preload.so in this guest"
fi

# ---- remount: the data is on pmem ----
check dax_umount umount $D
check dax_remount mount -t zufs -o "mount_id=$MID,root=$ROOT,dax=/dev/pmem0" none $D
check dax_data_after_remount sh -c "cmp -n 1000 /tmp/big $D/big && [ \"\$(cat $D/w)\" = fromwin ]"

# ---- benchmark: one boot, five targets ----
bench() {  # LABEL DIR
	/bin/dax-test bench "$2" "$1" 2>&1 | sed 's/^/GUEST: /'
}
for m in crc32c_generic crc16 mbcache jbd2 ext4; do
	insmod /lib/zufs/kmod/$m.ko 2>/dev/null
done
E=/mnt/ext4dax
mkdir -p $E /mnt/tmpfs /mnt/fuse
EXT4=0
if [ -b /dev/pmem1 ] && /lib/zufs/bin/mke2fs -q -F -t ext4 -b 4096 /dev/pmem1 >/dev/null 2>&1 &&
	mount -t ext4 -o dax /dev/pmem1 $E 2>/dev/null; then
	EXT4=1
fi
echo "GUEST: bench: ext4 -o dax on /dev/pmem1: $EXT4"
mount -t tmpfs -o size=256m tmpfs /mnt/tmpfs
modprobe fuse 2>/dev/null
FUSE=0
if /bin/zufs mkfs -t pmemfs --plugins $PL --size 256M /dev/shm/fuse.img >/dev/null 2>&1 &&
	/bin/zufs mount --socket "$SOCK" --plugins $PL -t pmemfs /dev/shm/fuse.img /mnt/fuse >/tmp/fuse-mount.log 2>&1; then
	FUSE=1
fi
echo "GUEST: bench: FUSE bridge mount: $FUSE $(tail -n 1 /tmp/fuse-mount.log 2>/dev/null)"
for round in 1 2; do
	bench dax $D
	bench window $WIN
	[ $EXT4 = 1 ] && bench ext4dax $E
	[ $FUSE = 1 ] && bench fuse /mnt/fuse
	bench tmpfs /mnt/tmpfs
done
[ $FUSE = 1 ] && /bin/zufs umount --socket "$SOCK" /mnt/fuse >/dev/null 2>&1
[ $EXT4 = 1 ] && umount $E
umount /mnt/tmpfs

# ---- zusd killed: EIO, no hang; the device goes back ----
kill -KILL "$ZPID"
wait "$ZPID" 2>/dev/null
check dax_eio_after_zusd_died sh -c "! cat $D/w >/dev/null 2>&1"
check dax_umount_after_zusd_died sh -c "umount $D && umount $WIN"
check dax_pmem_released_after_umount sh -c '[ "$(dmesg | grep -c "zufs: pmem .* released")" -ge 3 ]'
check dax_fsck_after_kill sh -c "/bin/zufs fsck -t pmemfs --plugins $PL /dev/pmem0 > /tmp/fsck.log 2>&1; grep -q ': 0 problem' /tmp/fsck.log"
sed 's/^/GUEST: fsck: /' /tmp/fsck.log | tail -n 3
check dax_rmmod rmmod zufs
check dax_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption"'
