#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test: pmemfs served by zusd's K-ZTs, mounted with
# `zufs mount -o transport=kernel` (no FUSE bridge). Run by the guest's /init
# (ZUFS_GUEST_TESTS, set up by tests/zusd-guest-test.sh) after zusd-kzt.sh,
# which leaves the module unloaded. Device: a file on the guest's /dev/shm.
#   1. the CLI's errors without the module and without K-ZTs;
#   2. a file workload and busybox programs on the mount, zufs status, a clean
#      zufs umount, then zufs fsck of the device: clean;
#   3. zusd SIGKILLed mid-workload (an op in flight): EIO within a bound,
#      nothing hangs, zufs umount and rmmod work;
#   4. a new zusd mounts the device again: what was fsynced before the kill is
#      there; clean umount, fsck clean, rmmod.
# Prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms, start_zusd, stop_zusd

export ZUFS_SOCKET=/run/zufs/zusd-pmemfs.sock ZUFS_PLUGINS=/lib/zufs/plugins ZUFS_RUN_DIR=/run/zufs NO_COLOR=1
LOG=/tmp/zusd-pmemfs.log
DEV=/dev/shm/pmem-k
M=/mnt/pk
mkdir -p $M /run/zufs

# ---- 1. the CLI's errors ---------------------------------------------------
lsmod | grep -q '^zufs ' && rmmod zufs
check pk_tools_present test -x /bin/zusd -a -x /bin/zufs -a -x /bin/fs-test -a -f /lib/zufs/plugins/libpmemfs.so
check pk_mkfs sh -c "zufs mkfs -t pmemfs --size 128M $DEV >/tmp/pk-mkfs.log 2>&1"
zufs mount -t pmemfs -o transport=kernel $DEV $M >/tmp/pk-nomod.log 2>&1
rc=$?
sed 's/^/GUEST: pk without the module: /' /tmp/pk-nomod.log
check pk_cli_without_the_module_says_modprobe sh -c "[ $rc != 0 ] && grep -q 'modprobe zufs' /tmp/pk-nomod.log && ! grep -q ' $M ' /proc/mounts"
check pk_cli_started_no_zusd_without_the_module test ! -S "$ZUFS_SOCKET"

modprobe zufs
start_zusd --kernel=off
zufs mount -t pmemfs -o transport=kernel $DEV $M >/tmp/pk-nokzt.log 2>&1
rc=$?
sed 's/^/GUEST: pk zusd --kernel=off: /' /tmp/pk-nokzt.log
check pk_cli_without_kzts_says_so sh -c "[ $rc != 0 ] && grep -q 'no K-ZTs' /tmp/pk-nokzt.log && grep -q 'zusd --kernel' /tmp/pk-nokzt.log"
check pk_cli_without_kzts_leaves_nothing_mounted sh -c "! grep -q ' $M ' /proc/mounts && ! zufs status | grep -q pmem-k"
stop_zusd

# ---- 2. the workload ---------------------------------------------------------
: >"$LOG"
start_zusd --kernel
check pk_zusd_serves_the_module grep -q "K-ZT(s)" "$LOG"
check pk_mount_transport_kernel zufs mount -t pmemfs -o transport=kernel $DEV $M
grep " $M " /proc/mounts | sed 's/^/GUEST: pk mount: /'
check pk_mounted_as_zufs_with_the_device_as_source sh -c "grep -q '^$DEV $M zufs .*mount_id=[0-9]*,root=[0-9]*' /proc/mounts"
check pk_no_bridge_process sh -c "! ps | grep -v grep | grep -q 'zufs.*--foreground'"
zufs status >/tmp/pk-status.log 2>&1
sed 's/^/GUEST: pk status: /' /tmp/pk-status.log | head -n 8
check pk_status_shows_transport_kernel sh -c "grep -q 'pmemfs.*$DEV.*on $M' /tmp/pk-status.log && grep -q 'transport kernel' /tmp/pk-status.log"
check pk_status_json_transport_kernel sh -c "zufs status --json | grep -q '\"transport\":\"kernel\"'"
check pk_statfs_magic sh -c "[ \"\$(stat -f -c %t $M)\" = 5a554653 ]"
check pk_busy_mountpoint_refused sh -c "! zufs mount -t pmemfs -o transport=kernel $DEV $M 2>/dev/null"

# ---- what the mount caches (a minute, zufs mount's default) -----------------
# the requests zusd served: the sum of its lanes' ops (this mount is its only client here)
reqs() { zufs status --json 2>/dev/null | sed -n 's/.*"lanes":\[\([^]]*\)\].*/\1/p' | grep -o '"ops":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }'; }
reqs_of() {  # CMD...: how many requests CMD cost (its own exit status ignored)
	r0=$(reqs)
	"$@" >/dev/null 2>&1
	echo $(($(reqs) - r0))
}
check pk_caches_for_a_minute sh -c "grep -q ' $M zufs .*attr_timeout_ms=60000,entry_timeout_ms=60000' /proc/mounts"
mkdir $M/cd && echo x > $M/cd/there && mkdir $M/cd/sub
touch $M/cd/gone && rm $M/cd/gone
echo "GUEST: pk requests: stat of a missing name in a directory this mount made: $(reqs_of stat $M/cd/missing), of a removed one: $(reqs_of stat $M/cd/gone), of a file: $(reqs_of stat $M/cd/there)"
check pk_new_dir_missing_name_costs_no_request [ "$(reqs_of stat $M/cd/missing2)" = 0 ]
check pk_new_dir_missing_name_absent sh -c "! stat $M/cd/missing2 2>/dev/null && ! stat $M/cd/gone 2>/dev/null"
check pk_new_dir_names_found sh -c "[ \"\$(cat $M/cd/there)\" = x ] && [ -d $M/cd/sub ]"
echo y > $M/cdr
check pk_new_dir_rename_in_and_out sh -c "mv $M/cdr $M/cd/r && [ -f $M/cd/r ] && mv $M/cd/r $M/cdr && [ ! -e $M/cd/r ] && [ -f $M/cdr ]"
# the kernel forgets names (reclaim; here drop_caches) while the directory stays (an open
# fd keeps it): it is asked again, and the names zusd has are found
exec 3<$M/cd
sync
echo 2 > /proc/sys/vm/drop_caches
check pk_after_drop_caches_names_found_again sh -c "[ \"\$(cat $M/cd/there)\" = x ] && [ -d $M/cd/sub ] && ! stat $M/cd/missing2 2>/dev/null"
check pk_after_drop_caches_missing_name_asked [ "$(reqs_of stat $M/cd/missing3)" -gt 0 ]
exec 3<&-
# a directory the kernel does not hold: its listing brings every entry's inode (READDIR_PLUS),
# so ls -l and the stats after it ask zusd nothing per entry
mkdir $M/rp
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo $i > $M/rp/f$i; done
ln -s f3 $M/rp/link
sync
echo 2 > /proc/sys/vm/drop_caches
n=$(reqs_of ls -l $M/rp)
echo "GUEST: pk requests: ls -l of a cold directory of 21 entries: $n"
check pk_cold_ls_l_asks_no_lookup_per_entry [ "$n" -lt 10 ]
check pk_cold_ls_l_shows_the_attributes sh -c "ls -l $M/rp | grep -q ' 3 .* f10\$' && ls -l $M/rp | grep -q '^l.* link -> f3\$' && [ \"\$(cat $M/rp/f20)\" = 20 ]"
check pk_after_readdir_plus_stat_costs_nothing [ "$(reqs_of stat $M/rp/f7)" = 0 ]
rm -r $M/cd $M/cdr $M/rp

check pk_create_write_read sh -c "echo hello > $M/a && [ \"\$(cat $M/a)\" = hello ]"
check pk_o_append sh -c "echo world >> $M/a && echo again >> $M/a && [ \"\$(cat $M/a)\" = \"\$(printf 'hello\nworld\nagain')\" ]"
dd if=/dev/urandom of=/tmp/pk-rnd bs=1024 count=1500 2>/dev/null
check pk_large_file_through_windows sh -c "cp /tmp/pk-rnd $M/rnd && cmp /tmp/pk-rnd $M/rnd && [ \$(stat -c %s $M/rnd) = 1536000 ]"
check pk_overwrite_middle sh -c "printf XYZ | dd of=$M/rnd bs=1 seek=100000 conv=notrunc 2>/dev/null && [ \"\$(dd if=$M/rnd bs=1 skip=100000 count=3 2>/dev/null)\" = XYZ ]"
check pk_truncate sh -c "truncate -s 5000 $M/rnd && [ \$(stat -c %s $M/rnd) = 5000 ] && truncate -s 70000 $M/rnd && [ \$(stat -c %s $M/rnd) = 70000 ] && [ \"\$(dd if=$M/rnd bs=1 skip=60000 count=4 2>/dev/null | od -An -tx1 | tr -d ' ')\" = 00000000 ] && truncate -s 0 $M/rnd && [ ! -s $M/rnd ]"
check pk_fsync sh -c "dd if=/dev/zero of=$M/z bs=4096 count=16 conv=fsync 2>/dev/null && [ \$(stat -c %s $M/z) = 65536 ]"
check pk_rename sh -c "echo r > $M/r1 && mv $M/r1 $M/r2 && [ ! -e $M/r1 ] && [ \"\$(cat $M/r2)\" = r ]"
check pk_rename_over sh -c "echo s > $M/s && mv $M/s $M/r2 && [ \"\$(cat $M/r2)\" = s ] && [ ! -e $M/s ]"
check pk_rename_dir sh -c "mkdir -p $M/p/q && mkdir $M/o && mv $M/p/q $M/o/q && [ -d $M/o/q ] && [ ! -e $M/p/q ] && rmdir $M/o/q $M/o $M/p"
check pk_hard_link sh -c "ln $M/r2 $M/l && [ \$(stat -c %h $M/r2) = 2 ] && [ \"\$(cat $M/l)\" = s ] && rm $M/l && [ \$(stat -c %h $M/r2) = 1 ]"
check pk_symlink sh -c "ln -s r2 $M/sl && [ \"\$(readlink $M/sl)\" = r2 ] && [ \"\$(cat $M/sl)\" = s ] && [ -L $M/sl ]"
check pk_unlink sh -c "rm $M/r2 $M/sl && [ ! -e $M/r2 ] && [ ! -L $M/sl ]"
check pk_open_unlinked_file sh -c "echo keep > $M/u && exec 3<$M/u && rm $M/u && [ \"\$(cat <&3)\" = keep ]"
check pk_chmod sh -c "chmod 640 $M/a && [ \$(stat -c %a $M/a) = 640 ]"
check pk_mkdir_rmdir sh -c "mkdir $M/d && touch $M/d/x && ! rmdir $M/d 2>/dev/null && rm $M/d/x && rmdir $M/d && [ ! -e $M/d ]"
check pk_exclusive_create sh -c "set -C; : > $M/x && ! (: > $M/x) 2>/dev/null"
mkdir $M/many
i=0
while [ $i -lt 1000 ]; do : > $M/many/f$i; i=$((i + 1)); done
check pk_readdir_1000 sh -c "[ \$(ls $M/many | wc -l) = 1000 ] && [ \$(ls -a $M/many | wc -l) = 1002 ] && [ \$(ls $M/many | sort -u | wc -l) = 1000 ]"
check pk_rm_r_1000 sh -c "rm -r $M/many && [ ! -e $M/many ]"
check pk_cp_r sh -c "cp -r /lib/modules $M/mods && diff -rq /lib/modules $M/mods"
# tar out of the mount and back into it, checksums compared both ways
check pk_tar_round_trip sh -c "tar -C $M -cf /tmp/pk.tar mods && mkdir /tmp/pkx && tar -C /tmp/pkx -xf /tmp/pk.tar && diff -rq /lib/modules /tmp/pkx/mods && mkdir $M/t2 && tar -C $M/t2 -xf /tmp/pk.tar && diff -rq /lib/modules $M/t2/mods"
check pk_tar_checksums sh -c '[ "$(cd /lib/modules && find . -type f | sort | xargs md5sum)" = "$(cd /mnt/pk/t2/mods && find . -type f | sort | xargs md5sum)" ] && rm -r /mnt/pk/t2 /tmp/pkx'
check pk_find sh -c "[ \"\$(cd $M/mods && find . | sort)\" = \"\$(cd /lib/modules && find . | sort)\" ]"
check pk_md5sum sh -c "[ \"\$(cd $M/mods && find . -type f | sort | xargs md5sum)\" = \"\$(cd /lib/modules && find . -type f | sort | xargs md5sum)\" ]"
check pk_exec_from_the_mount sh -c "mkdir $M/bin && cp /bin/busybox $M/bin/busybox && [ \"\$($M/bin/busybox echo run)\" = run ] && rm -r $M/bin"
# xattrs, renameat2 flags, times, statfs, mknod, files (the module's static test program)
fs-test check $M >/tmp/pk-fstest.log 2>&1
rc=$?
# pmemfs keeps an inode's xattrs in one 4 KiB block (docs/pmemfs.md): a 60000-byte
# value gets ENOSPC, as on ext4 without ea_inode; that is pmemfs, not the module
sed -n 's/^TEST /TEST pk_/p' /tmp/pk-fstest.log |
	sed 's/^TEST \(pk_xattr_60000_byte_value\) \.\.\. FAILED: .*errno 28 .*/GUEST: \1: ENOSPC (pmemfs: one 4 KiB xattr block per inode)/'
grep -v '^TEST ' /tmp/pk-fstest.log | head -n 20 | sed 's/^/GUEST: pk fs-test: /'
check pk_fs_test_ran_to_its_end [ $rc -le 1 ]
cat $M/a >/tmp/pk-a
(cd $M/mods && find . -type f | sort | xargs md5sum) >/tmp/pk-mods.md5
check pk_zufs_umount zufs umount $M
check pk_umount_left_no_mount sh -c "! grep -q ' $M ' /proc/mounts && ! zufs status | grep -q pmem-k"
zufs fsck -t pmemfs $DEV >/tmp/pk-fsck.log 2>&1
rc=$?
tail -n 3 /tmp/pk-fsck.log | sed 's/^/GUEST: pk fsck: /'
check pk_fsck_clean_after_clean_umount sh -c "[ $rc = 0 ] && grep -q ': 0 problem' /tmp/pk-fsck.log"
check pk_remount_keeps_the_files sh -c "zufs mount -t pmemfs -o transport=kernel $DEV $M && cmp /tmp/pk-a $M/a && [ \"\$(cd $M/mods && find . -type f | sort | xargs md5sum)\" = \"\$(cat /tmp/pk-mods.md5)\" ]"

# ---- 3. zusd SIGKILLed mid-workload ----------------------------------------
# the workload: files written with fsync, each recorded (on tmpfs) once done
mkdir -p $M/w
rm -f /tmp/pk-done /tmp/pk-werr
(
	i=0
	while dd if=/tmp/pk-rnd of=$M/w/f$i bs=64k count=2 conv=fsync 2>>/tmp/pk-werr; do
		echo $i >>/tmp/pk-done
		i=$((i + 1))
	done
) &
WPID=$!
wait_for 300 test -s /tmp/pk-done
sleep 1
# stop zusd so that an op is surely waiting in the module, then kill it
kill -STOP "$ZPID"
sleep 1
check pk_workload_waits_while_zusd_is_stopped kill -0 "$WPID"
T0=$(uptime_ms)
kill -KILL "$ZPID"
wait_for 100 sh -c "! kill -0 $WPID 2>/dev/null"
T1=$(uptime_ms)
echo "GUEST: pk workload ended $((T1 - T0)) ms after the kill, $(wc -l </tmp/pk-done) files done; $(tail -n 1 /tmp/pk-werr)"
check pk_workload_ends_within_2s_of_the_kill test $((T1 - T0)) -lt 2000
check pk_workload_gets_eio grep -q 'Input/output error' /tmp/pk-werr
wait "$ZPID" 2>/dev/null
check pk_after_kill_ops_get_eio_at_once sh -c "! cat $M/a 2>/tmp/pk-cat.err && grep -q 'Input/output error' /tmp/pk-cat.err && ! ls $M >/dev/null 2>&1"
check pk_zufs_umount_after_kill zufs umount $M
check pk_rmmod_after_kill rmmod zufs

# ---- 4. a new zusd: recovery, clean umount, fsck ----------------------------
modprobe zufs
: >"$LOG"
start_zusd --kernel
check pk_remount_after_the_kill zufs mount -t pmemfs -o transport=kernel $DEV $M
ok=1
n=0
for i in $(cat /tmp/pk-done); do
	{ [ "$(stat -c %s $M/w/f$i)" = 131072 ] && cmp -s -n 131072 /tmp/pk-rnd $M/w/f$i; } || ok=0
	n=$((n + 1))
done
echo "GUEST: pk $n fsynced files checked after the kill"
check pk_fsynced_files_survive_the_kill sh -c "[ $ok = 1 ] && [ $n -gt 0 ]"
check pk_old_files_survive_the_kill cmp /tmp/pk-a $M/a
check pk_zufs_umount_clean zufs umount $M
zufs fsck -t pmemfs $DEV >/tmp/pk-fsck2.log 2>&1
rc=$?
tail -n 3 /tmp/pk-fsck2.log | sed 's/^/GUEST: pk fsck: /'
check pk_fsck_clean_after_recovery_and_clean_umount sh -c "[ $rc = 0 ] && grep -q ': 0 problem' /tmp/pk-fsck2.log"
T0=$(uptime_ms)
stop_zusd
check pk_zusd_stops_cleanly grep -q 'zusd stopped cleanly' "$LOG"
check pk_rmmod rmmod zufs
rm -f $DEV
check pk_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption|VFS: Busy inodes"'
