#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest tests of the zufs filesystem type, served by fake-zusd's in-memory
# filesystem (mount_id 7, root inode 1). Prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

M=/mnt/z
modprobe zufs
fake-zusd serve 4 65536 &
SRV=$!
i=0
while ! dmesg | grep -q "session of pid $SRV:" && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mkdir -p $M
check fs_mount mount -t zufs -o mount_id=7,root=1 none $M
check fs_mount_needs_options sh -c "! mount -t zufs none /mnt 2>/dev/null"
check fs_statfs_magic sh -c "[ \"\$(stat -f -c %t $M)\" = 5a554653 ]"
check fs_write_read sh -c "echo hello > $M/a && [ \"\$(cat $M/a)\" = hello ]"
check fs_append sh -c "echo world >> $M/a && [ \"\$(cat $M/a)\" = \"\$(printf 'hello\nworld')\" ]"
dd if=/dev/urandom of=/tmp/rnd bs=1024 count=700 2>/dev/null
check fs_large_file_through_windows sh -c "cp /tmp/rnd $M/rnd && cmp /tmp/rnd $M/rnd && [ \$(stat -c %s $M/rnd) = 716800 ]"
check fs_md5sum sh -c "[ \"\$(md5sum < /tmp/rnd)\" = \"\$(md5sum < $M/rnd)\" ]"
check fs_truncate sh -c "truncate -s 1000 $M/rnd && [ \$(stat -c %s $M/rnd) = 1000 ] && truncate -s 0 $M/rnd && [ ! -s $M/rnd ]"
check fs_chmod sh -c "chmod 600 $M/a && [ \$(stat -c %a $M/a) = 600 ]"
check fs_mkdir_rmdir sh -c "mkdir $M/d && [ -d $M/d ] && rmdir $M/d && [ ! -e $M/d ]"
check fs_rmdir_nonempty_fails sh -c "mkdir $M/d && touch $M/d/x && ! rmdir $M/d 2>/dev/null && rm $M/d/x && rmdir $M/d"
check fs_rename sh -c "echo r > $M/r1 && mv $M/r1 $M/r2 && [ ! -e $M/r1 ] && [ \"\$(cat $M/r2)\" = r ]"
check fs_rename_over sh -c "echo s > $M/s && mv $M/s $M/r2 && [ \"\$(cat $M/r2)\" = s ] && [ ! -e $M/s ]"
check fs_rename_dir sh -c "mkdir -p $M/p/q && mkdir $M/o && mv $M/p/q $M/o/q && [ -d $M/o/q ] && [ ! -e $M/p/q ]"
check fs_hard_link sh -c "ln $M/r2 $M/l && [ \$(stat -c %h $M/r2) = 2 ] && rm $M/l && [ \$(stat -c %h $M/r2) = 1 ]"
check fs_symlink sh -c "ln -s r2 $M/sl && [ \"\$(readlink $M/sl)\" = r2 ] && [ \"\$(cat $M/sl)\" = s ]"
check fs_unlink sh -c "rm $M/r2 $M/sl && [ ! -e $M/r2 ]"
check fs_open_unlinked_file sh -c "echo keep > $M/u && exec 3<$M/u && rm $M/u && [ \"\$(cat <&3)\" = keep ]"
check fs_mknod_fifo sh -c "mkfifo $M/fifo && [ -p $M/fifo ] && rm $M/fifo"
# READDIR_PLUS: each entry's name and inode in one request (fs_ls_l_of_a_cold_directory), and
# what a broken zusd might answer instead (fake-zusd: rdp-odd's attributes name another inode,
# another type or none; rdp-broken's record runs past the data): names listed, no inode from
# the bad attributes (each found by its own lookup), EIO for the broken listing, nothing in
# the kernel log (every warning panics this guest)
mkdir $M/rdp $M/rdp-odd $M/rdp-broken
for f in a b c d e f; do echo $f > $M/rdp/$f; echo $f > $M/rdp-odd/$f; done
echo x > $M/rdp-broken/x
sync
echo 2 > /proc/sys/vm/drop_caches
check fs_ls_l_of_a_cold_directory sh -c "[ \"\$(ls -l $M/rdp | grep -c '^-rw')\" = 6 ] && [ \"\$(cat $M/rdp/e)\" = e ]"
check fs_readdir_plus_odd_attributes_names_listed sh -c "[ \"\$(ls $M/rdp-odd | tr '\n' ' ')\" = 'a b c d e f ' ]"
check fs_readdir_plus_odd_attributes_files_as_they_are sh -c "for f in a b c d e f; do [ -f $M/rdp-odd/\$f ] && [ \"\$(cat $M/rdp-odd/\$f)\" = \$f ] || exit 1; done"
# (busybox ls stops at a readdir error without failing: the EIO shows as an empty listing)
check fs_readdir_plus_broken_record_eio sh -c "[ -z \"\$(ls $M/rdp-broken 2>/dev/null)\" ] && [ \"\$(cat $M/rdp-broken/x)\" = x ]"
rm -r $M/rdp $M/rdp-odd && rm $M/rdp-broken/x && rmdir $M/rdp-broken
check fs_exclusive_create sh -c "set -C; : > $M/x && ! (: > $M/x) 2>/dev/null"
mkdir $M/many
i=0
while [ $i -lt 1000 ]; do : > $M/many/f$i; i=$((i + 1)); done
check fs_readdir_1000 sh -c "[ \$(ls $M/many | wc -l) = 1000 ] && [ \$(ls -a $M/many | wc -l) = 1002 ]"
check fs_rm_r sh -c "rm -r $M/many && [ ! -e $M/many ]"
check fs_cp_r sh -c "cp -r /lib/modules $M/mods && diff -rq /lib/modules $M/mods"
check fs_tar_round_trip sh -c "tar -C $M -cf /tmp/t.tar mods && mkdir /tmp/x && tar -C /tmp/x -xf /tmp/t.tar && diff -rq /lib/modules /tmp/x/mods && [ \"\$(find $M/mods | wc -l)\" = \"\$(find /lib/modules | wc -l)\" ]"
check fs_dd_fsync sh -c "dd if=/dev/zero of=$M/z bs=4096 count=16 conv=fsync 2>/dev/null && [ \$(stat -c %s $M/z) = 65536 ]"
check fs_exec_from_the_mount sh -c "mkdir $M/bin && cp /bin/busybox $M/bin/busybox && [ \"\$($M/bin/busybox echo run)\" = run ] && rm -r $M/bin"
check fs_find_md5sum sh -c "[ \"\$(cd $M/mods && find . -type f | sort | xargs md5sum)\" = \"\$(cd /lib/modules && find . -type f | sort | xargs md5sum)\" ]"
check fs_mount_options_shown sh -c "grep -q 'zufs.*mount_id=7,root=1,attr_timeout_ms=1000,entry_timeout_ms=1000' /proc/mounts"

# xattrs, renameat2 flags, times, statfs, mknod, and changes made by another
# client (fake-zusd's SIGUSR2) seen within the 1 s default timeouts
fs-test check $M $SRV
check fs_test_ran_to_its_end [ $? -le 1 ]

# a second mount of the same tree without caching: sees every change at once
mkdir -p /mnt/z0
check fs_mount_no_timeouts mount -t zufs -o mount_id=7,root=1,attr_timeout_ms=0,entry_timeout_ms=0 none /mnt/z0
fs-test check /mnt/z0 $SRV > /tmp/z0.log
rc=$?
sed 's/^TEST /TEST z0_/' /tmp/z0.log
check z0_fs_test_ran_to_its_end [ $rc -le 1 ]
check fs_two_mounts_see_each_other sh -c "echo two > /mnt/z0/two && [ \"\$(cat $M/two)\" = two ] && rm $M/two && [ ! -e /mnt/z0/two ]"
check fs_umount_second umount /mnt/z0

# evicted inodes give their lookups back from the work item, before unmount
forgets() {
	rm -f /tmp/fake-zusd.forgets
	kill -USR1 $SRV
	i=0
	while [ ! -s /tmp/fake-zusd.forgets ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
	cat /tmp/fake-zusd.forgets
}
mkdir $M/ev
i=0
while [ $i -lt 200 ]; do : > $M/ev/f$i; i=$((i + 1)); done
F0=$(forgets)
echo 2 > /proc/sys/vm/drop_caches
i=0
while [ "$(forgets)" -lt $((F0 + 150)) ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check fs_forgets_sent_on_eviction [ "$(forgets)" -ge $((F0 + 150)) ]
check fs_files_there_after_eviction sh -c "[ \$(ls $M/ev | wc -l) = 200 ] && rm -r $M/ev"
check fs_umount umount $M
rm -f /tmp/fake-zusd.forgets
kill -USR1 $SRV
i=0
while [ ! -s /tmp/fake-zusd.forgets ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check fs_forgets_sent_by_umount [ "$(cat /tmp/fake-zusd.forgets)" -gt 100 ]
check fs_remount_sees_files sh -c "mount -t zufs -o mount_id=7,root=1 none $M && [ \"\$(cat $M/a)\" = \"\$(printf 'hello\nworld')\" ]"

# a server without READDIR_PLUS (fake-zusd answers ENOSYS for rdp-nosys): the listing comes by
# READDIR, on this mount from then on
mkdir $M/rdp-nosys
for f in a b c; do echo $f > $M/rdp-nosys/$f; done
sync
echo 2 > /proc/sys/vm/drop_caches
check fs_readdir_plus_enosys_lists_by_readdir sh -c "[ \"\$(ls $M/rdp-nosys | tr '\n' ' ')\" = 'a b c ' ] && [ \"\$(ls $M/ | grep -c rdp-nosys)\" = 1 ] && rm -r $M/rdp-nosys"

# the server dies while an op waits in it: EIO within a bound, nothing hangs
(stat $M/hang-forever >/dev/null 2>&1; echo $? > /tmp/hang.rc) &
HANG=$!
sleep 1
T0=$(date +%s)
kill -9 $SRV
wait $HANG
T1=$(date +%s)
check fs_server_killed_op_fails sh -c "[ \"\$(cat /tmp/hang.rc)\" != 0 ]"
check fs_server_killed_within_3s [ $((T1 - T0)) -le 3 ]
check fs_after_server_death_eio sh -c "! cat $M/a 2>/dev/null && ! ls $M/ >/dev/null 2>&1"
check fs_umount_after_server_death umount $M
check fs_rmmod rmmod zufs
check fs_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption|VFS: Busy inodes"'
