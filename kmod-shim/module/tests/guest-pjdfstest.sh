#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# pjdfstest (the Rust rewrite, static) on tmpfs and on the zufs module's
# mount, in the same guest: every test that passes on tmpfs must pass on the
# module mount. The server is fake-zusd's in-memory filesystem; with
# ZUFS_PJD_SERVER=zusd (once zusd serves /dev/zufs) it is zusd + pmemfs.
# Prints "TEST name ... ok|FAILED" lines for guest-test.sh's count.

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

if ! command -v pjdfstest >/dev/null; then
	echo "TEST pjdfstest_in_initramfs ... FAILED: guest-test.sh did not build it"
	exit 0
fi
W=/tmp/pjd
mkdir -p $W/tmpfs $W/zufs
cat > $W/pjd.toml <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML

export NO_COLOR=1
T0=$(cut -d' ' -f1 /proc/uptime)
mount -t tmpfs pjd-tmpfs $W/tmpfs
chmod 0755 $W/tmpfs
(cd $W/tmpfs && pjdfstest -c $W/pjd.toml -p $W/tmpfs > $W/tmpfs.out 2>&1)
T1=$(cut -d' ' -f1 /proc/uptime)
umount $W/tmpfs

modprobe zufs
fake-zusd serve 4 262144 &
SRV=$!
i=0
while ! dmesg | grep -q "session of pid $SRV:" && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
check pjdfstest_mount mount -t zufs -o mount_id=7,root=1 none $W/zufs
chmod 0755 $W/zufs
(cd $W/zufs && pjdfstest -c $W/pjd.toml -p $W/zufs > $W/zufs.out 2>&1)
T2=$(cut -d' ' -f1 /proc/uptime)

echo "GUEST: pjdfstest tmpfs: $(grep '^Summary' $W/tmpfs.out || echo 'no summary') ($(echo "$T1 - $T0" | bc 2>/dev/null || echo "$T0..$T1") s)"
echo "GUEST: pjdfstest zufs:  $(grep '^Summary' $W/zufs.out || echo 'no summary') (up to ${T2} s)"
check pjdfstest_tmpfs_ran_to_its_end grep -q '^Summary' $W/tmpfs.out
check pjdfstest_zufs_ran_to_its_end grep -q '^Summary' $W/zufs.out
# test names of the FAILED lines (colour codes, if any, stripped)
failed() {
	sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E ' FAILED *$' | awk '{print $1}' | sort -u
}
failed $W/tmpfs.out > $W/tmpfs.failed
failed $W/zufs.out > $W/zufs.failed
grep FAILED $W/zufs.out | head -20 | cat -v
# passes on tmpfs, fails on zufs: one failed test each (busybox has no comm,
# and its grep -f with an empty pattern file matches every line: compare one
# name at a time)
n=0
both=0
for t in $(cat $W/zufs.failed); do
	if grep -qxF "$t" $W/tmpfs.failed; then
		both=$((both + 1))
		continue
	fi
	echo "TEST pjdfstest:$t ... FAILED: passes on tmpfs"
	grep -A3 "^$t " $W/zufs.out | head -4 | sed 's/^/    /'
	n=$((n + 1))
done
check pjdfstest_zufs_passes_what_tmpfs_passes [ $n = 0 ]
echo "GUEST: pjdfstest: $both tests fail on both"

umount $W/zufs
kill $SRV
wait $SRV
check pjdfstest_rmmod rmmod zufs
check pjdfstest_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption|VFS: Busy inodes"'
