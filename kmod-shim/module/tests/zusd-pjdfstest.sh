#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# pjdfstest on zusd + pmemfs through the module (`zufs mount -o
# transport=kernel`) next to tmpfs in the same guest: every test that passes
# on tmpfs must pass on the module mount. Run by the guest's /init via
# tests/zusd-guest-test.sh (ZUSD_GUEST_TESTS) after zusd-pmemfs.sh.
# guest-pjdfstest.sh runs the same suite against fake-zusd's in-memory server.
# Prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms, start_zusd, stop_zusd

if ! command -v pjdfstest >/dev/null; then
	# guest-test.sh leaves it out only with PJDFSTEST=off or no cargo (CI runs
	# with PJDFSTEST=required, which fails before the boot instead)
	echo "GUEST: zusd pjdfstest: no pjdfstest in this initramfs (PJDFSTEST=off): not run"
	exit 0
fi

export ZUFS_SOCKET=/run/zufs/zusd-pjd.sock ZUFS_PLUGINS=/lib/zufs/plugins ZUFS_RUN_DIR=/run/zufs NO_COLOR=1
LOG=/tmp/zusd-pjd.log
DEV=/dev/shm/pmem-pjd
W=/tmp/zpjd
mkdir -p $W/tmpfs $W/zufs /run/zufs
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

mount -t tmpfs zpjd-tmpfs $W/tmpfs
chmod 0755 $W/tmpfs
(cd $W/tmpfs && pjdfstest -c $W/pjd.toml -p $W/tmpfs > $W/tmpfs.out 2>&1)
umount $W/tmpfs

lsmod | grep -q '^zufs ' || modprobe zufs
start_zusd --kernel
check zpjd_mkfs sh -c "zufs mkfs -t pmemfs --size 256M $DEV >/tmp/zpjd-mkfs.log 2>&1"
check zpjd_mount zufs mount -t pmemfs -o transport=kernel $DEV $W/zufs
chmod 0755 $W/zufs
stat -f $W/zufs | sed 's/^/GUEST: zpjd statfs before: /'
(cd $W/zufs && pjdfstest -c $W/pjd.toml -p $W/zufs > $W/zufs.out 2>&1)

echo "GUEST: zusd pjdfstest tmpfs: $(grep '^Summary' $W/tmpfs.out || echo 'no summary')"
echo "GUEST: zusd pjdfstest zufs (zusd + pmemfs):  $(grep '^Summary' $W/zufs.out || echo 'no summary')"
check zpjd_tmpfs_ran_to_its_end grep -q '^Summary' $W/tmpfs.out
check zpjd_zufs_ran_to_its_end grep -q '^Summary' $W/zufs.out
failed() {
	sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E ' FAILED *$' | awk '{print $1}' | sort -u
}
failed $W/tmpfs.out > $W/tmpfs.failed
failed $W/zufs.out > $W/zufs.failed
# (busybox grep -f with an empty pattern file matches every line: compare one name at a time)
n=0
both=0
for t in $(cat $W/zufs.failed); do
	if grep -qxF "$t" $W/tmpfs.failed; then
		both=$((both + 1))
		continue
	fi
	echo "TEST zpjd:$t ... FAILED: passes on tmpfs"
	[ $n -lt 8 ] && grep -A3 "^$t " $W/zufs.out | head -4 | sed 's/^/    /'
	n=$((n + 1))
done
check zpjd_zusd_pmemfs_passes_what_tmpfs_passes [ $n = 0 ]
if [ $n != 0 ]; then
	# where it started: the tests just before the first failure
	first=$(grep -n ' FAILED' $W/zufs.out | head -n 1 | cut -d: -f1)
	sed -n "$((first > 12 ? first - 12 : 1)),$((first + 3))p" $W/zufs.out | cat -v | sed 's/^/GUEST: zpjd: /'
	ls -la $W/zufs | head -n 5 | sed 's/^/GUEST: zpjd ls: /'
	stat -f $W/zufs | sed 's/^/GUEST: zpjd statfs after: /'
	dmesg | tail -n 8 | sed 's/^/GUEST: zpjd dmesg: /'
	tail -n 8 $LOG | sed 's/^/GUEST: zpjd zusd: /'
fi
echo "GUEST: zusd pjdfstest: $both tests fail on both"

check zpjd_umount zufs umount $W/zufs
zufs fsck -t pmemfs $DEV >/tmp/zpjd-fsck.log 2>&1
rc=$?
check zpjd_fsck_clean sh -c "[ $rc = 0 ] && grep -q ': 0 problem' /tmp/zpjd-fsck.log"
stop_zusd
check zpjd_rmmod rmmod zufs
rm -f $DEV
check zpjd_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption|VFS: Busy inodes"'
