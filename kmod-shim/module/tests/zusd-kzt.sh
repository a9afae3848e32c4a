#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test: zusd serves the module through its K-ZTs (zus-server/src/kernel.rs).
# Run by the guest's /init after tests/guest-tests.sh, with zusd, its plugins
# and the static zufs-dbgop in the initramfs (tests/zusd-guest-test.sh sets
# that up). Prints "TEST name ... ok|FAILED"; leaves the module unloaded.

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

NCPU=$(grep -c ^processor /proc/cpuinfo)
SOCK=/run/zufs/zusd-kzt.sock
LOG=/tmp/zusd-kzt.log

lsmod | grep -q '^zufs ' || modprobe zufs
check kzt_dev_zufs test -c /dev/zufs
check kzt_tools_present test -x /bin/zusd -a -x /bin/zufs-dbgop -a -f /lib/zufs/plugins/libnullfs.so

start_zusd() {  # zusd with the plugins (nullfs among them); --kernel: fail without the module
	NO_COLOR=1 ZUFS_LOG=info /bin/zusd --kernel --plugins /lib/zufs/plugins --socket "$SOCK" >"$LOG" 2>&1 &
	ZPID=$!
	wait_for 600 grep -q 'zusd ready' "$LOG"
	sed 's/^/GUEST: zusd: /' "$LOG"
}

start_zusd
check kzt_zusd_serves_the_module_with_a_kzt_per_cpu grep -q "ZT(s), $NCPU K-ZT(s)" "$LOG"
check kzt_zusd_loaded_nullfs grep -q 'plugins \[.*nullfs' "$LOG"

# one NOOP from every CPU, each served by the K-ZT of that CPU
/bin/zufs-dbgop cpus >/tmp/kzt-cpus.log 2>&1
rc=$?
sed 's/^/GUEST: kzt /' /tmp/kzt-cpus.log
check kzt_noop_on_every_cpu_served_by_that_cpus_kzt test "$rc" = 0 -a "$(grep -c ': ok ' /tmp/kzt-cpus.log)" = "$NCPU"
if [ -x /bin/zufs-testclient ]; then
	/bin/zufs-testclient --socket "$SOCK" status >/tmp/kzt-status.json 2>&1
	# every CPU's lane counted at least the NOOP its K-ZT served
	check kzt_zusd_counted_an_op_on_every_cpu \
		test "$(grep -o '"ops":[1-9][0-9]*' /tmp/kzt-status.json | wc -l)" -ge "$NCPU"
fi
/bin/zufs-dbgop bench 2000 2>&1 | sed 's/^/GUEST: kzt zusd /'

# a nullfs mount of zusd's, mounted through the module: its ops reach the K-ZTs
M=/mnt/kzt
mkdir -p $M
set -- $(echo | /bin/zufs-testclient --socket "$SOCK" mount 2>/dev/null | grep '^MOUNTED')
check kzt_zusd_mounted_nullfs test "${1:-}" = MOUNTED
check kzt_module_mounts_the_zusd_mount mount -t zufs -o "mount_id=${2:-0},root=${3:-0}" none $M
check kzt_fs_mkdir_create_list sh -c "mkdir $M/d && touch $M/d/f && ls $M/d | grep -qx f"
check kzt_fs_write_through_windows sh -c "dd if=/dev/zero of=$M/d/f bs=64k count=8 2>/dev/null && [ \$(stat -c %s $M/d/f) = 524288 ]"
check kzt_fs_read sh -c "[ \$(cat $M/d/f | wc -c) = 524288 ]"
check kzt_fs_unlink_rmdir sh -c "rm $M/d/f && rmdir $M/d && [ -z \"\$(ls $M)\" ]"
check kzt_fs_umount umount $M

# SIGTERM: zusd ends the module's session (BREAK, K-ZTs leave) and stops cleanly
T0=$(uptime_ms)
kill -TERM "$ZPID"
wait "$ZPID"
rc=$?
T1=$(uptime_ms)
grep -E 'signal|stopped|K-ZT|ERROR|WARN' "$LOG" | tail -n 5 | sed 's/^/GUEST: zusd: /'
check kzt_zusd_sigterm_exits_cleanly sh -c "[ $rc = 0 ] && grep -q 'zusd stopped cleanly' $LOG"
echo "GUEST: kzt zusd shutdown took $((T1 - T0)) ms"
/bin/zufs-dbgop once >/tmp/kzt-after-term.log 2>&1
check kzt_op_after_clean_shutdown_gets_eio grep -q '^errno 5 ' /tmp/kzt-after-term.log

start_zusd
check kzt_zusd_restarts_on_the_module grep -q "ZT(s), $NCPU K-ZT(s)" "$LOG"

# an op waiting in the module when zusd dies gets EIO at once
kill -STOP "$ZPID"
/bin/zufs-dbgop once >/tmp/kzt-inflight.log 2>&1 &
OPID=$!
sleep 1
check kzt_op_waits_while_zusd_is_stopped kill -0 "$OPID"
T0=$(uptime_ms)
kill -KILL "$ZPID"
wait "$OPID"
T1=$(uptime_ms)
echo "GUEST: kzt in-flight op after SIGKILL: $(cat /tmp/kzt-inflight.log), $((T1 - T0)) ms after the kill"
check kzt_waiting_op_gets_eio_when_zusd_dies grep -q '^errno 5 ' /tmp/kzt-inflight.log
check kzt_waiting_op_returns_within_2s test $((T1 - T0)) -lt 2000
wait "$ZPID" 2>/dev/null
/bin/zufs-dbgop once >/tmp/kzt-later.log 2>&1
echo "GUEST: kzt op after zusd exited: $(cat /tmp/kzt-later.log)"
check kzt_later_op_gets_eio_at_once sh -c "grep -qE '^errno 5 in [0-9]{1,3} ms' /tmp/kzt-later.log"
check kzt_no_zusd_left sh -c "! kill -0 $ZPID 2>/dev/null"
check kzt_rmmod_after_zusd_killed rmmod zufs

# the same NOOPs against the C fake server, for the cost of zusd's K-ZT path
if [ -x /bin/fake-zusd ] && modprobe zufs; then
	/bin/fake-zusd serve >/tmp/kzt-fake.log 2>&1 &
	FPID=$!
	wait_for 300 sh -c '/bin/zufs-dbgop once | grep -q "^errno 0 "'
	/bin/zufs-dbgop bench 2000 2>&1 | sed 's/^/GUEST: kzt fake-zusd /'
	kill -TERM "$FPID"
	wait "$FPID" 2>/dev/null
	rmmod zufs
fi
check kzt_kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption"'
