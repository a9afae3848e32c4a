#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The guest benchmark on zusd + pmemfs (not a test: no TEST lines; run by
# tests/zusd-guest-test.sh with BENCH=1). In this one boot: 4 KiB O_SYNC
# write and read latency and create/stat/unlink rates (fs-test bench) on
#   module  pmemfs mounted with `zufs mount -o transport=kernel` (K-ZTs)
#   fuse    pmemfs mounted with `zufs mount -o transport=classic,direct_io`
#           (the FUSE bridge, /dev/fuse; the guest's 6.1 kernel has no FUSE
#           io_uring; direct_io because the module has no page cache for
#           read/write either: without it FUSE reads come from the page cache)
#   nosync  the module mount again with sync_wake=0 (the ZT wakes its callers
#           without WF_SYNC, so the scheduler may move them to an idle CPU)
#   tmpfs
# in interleaved rounds, the best round per metric, and the ratios. TCG makes
# absolute times meaningless: only the ratios say something.
. /tests/lib/guest-lib.sh	# start_zusd, stop_zusd

OPS=${ZUFS_BENCH_OPS:-1000}
ROUNDS=${ZUFS_BENCH_ROUNDS:-2}
export ZUFS_SOCKET=/run/zufs/zusd-bench.sock ZUFS_PLUGINS=/lib/zufs/plugins ZUFS_RUN_DIR=/run/zufs NO_COLOR=1
LOG=/tmp/zusd-bench.log
say() { echo "GUEST: BENCH-ZUSD $*"; }

mkdir -p /tmp/zbt /mnt/zbk /mnt/zbf /run/zufs
mount -t tmpfs bench-tmpfs /tmp/zbt
lsmod | grep -q '^zufs ' || modprobe zufs
modprobe fuse 2>/dev/null
: >"$LOG"
ZUSD_LOG=warn,zusd=info start_zusd --kernel
zufs mkfs -t pmemfs --size 256M /dev/shm/bench-k >/dev/null &&
	zufs mount -t pmemfs -o transport=kernel /dev/shm/bench-k /mnt/zbk || say "skipped: no module mount ($(tail -n 2 $LOG))"
zufs mkfs -t pmemfs --size 256M /dev/shm/bench-f >/dev/null &&
	zufs mount -t pmemfs -o transport=classic,direct_io /dev/shm/bench-f /mnt/zbf || say "no FUSE mount ($(ls -l /dev/fuse 2>&1))"
grep -E ' /mnt/zb[kf] ' /proc/mounts | sed 's/^/GUEST: BENCH-ZUSD mount: /'

: >/tmp/zusd-bench.out
for round in $(seq "$ROUNDS"); do
	for c in tmpfs:/tmp/zbt module:/mnt/zbk nosync:/mnt/zbk fuse:/mnt/zbf; do
		grep -q " ${c#*:} " /proc/mounts || continue
		T0=$(cut -d' ' -f1 /proc/uptime)
		[ "${c%%:*}" = nosync ] && echo 0 >/sys/module/zufs/parameters/sync_wake
		fs-test bench "${c%%:*}" "${c#*:}" "$OPS" >/tmp/zusd-bench.one 2>&1
		echo 1 >/sys/module/zufs/parameters/sync_wake
		cat /tmp/zusd-bench.one >>/tmp/zusd-bench.out
		say "round $round ${c%%:*}: $(awk '{ printf "%s=%s ", $3, $4 }' /tmp/zusd-bench.one)(from ${T0}s)"
	done
done
# the best round per metric (lowest latency, highest rate), then the ratios:
# for latencies X/tmpfs is how many times slower, for rates X/tmpfs the
# fraction of tmpfs's rate; module/fuse likewise (below 1 for a latency, above
# 1 for a rate: the module is faster)
awk -v rounds="$ROUNDS" -v ops="$OPS" '
$1 == "BENCH" {
	k = $2 " " $3
	if ($5 == "us") { if (!(k in v) || $4 < v[k]) v[k] = $4 }
	else if (!(k in v) || $4 > v[k]) v[k] = $4
	unit[$3] = $5
}
function r(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
function f(x) { return x == "" ? "-" : x }
END {
	printf "GUEST: BENCH-ZUSD best of %d rounds of %d ops; zusd + pmemfs through the module and the FUSE bridge (classic), tmpfs\n", rounds, ops
	printf "GUEST: BENCH-ZUSD %-18s %6s %10s %10s %10s %10s %13s %11s %12s %14s\n", "metric", "unit", "tmpfs", "module", "nosync", "fuse", "module/tmpfs", "fuse/tmpfs", "module/fuse", "module/nosync"
	n = split("write4k_osync_mean write4k_osync_p50 read4k_mean read4k_p50 create_rate stat_rate unlink_rate", m, " ")
	for (i = 1; i <= n; i++) {
		t = v["tmpfs " m[i]]; k = v["module " m[i]]; s = v["nosync " m[i]]; u = v["fuse " m[i]]
		printf "GUEST: BENCH-ZUSD %-18s %6s %10s %10s %10s %10s %13s %11s %12s %14s\n", m[i], unit[m[i]], f(t), f(k), f(s), f(u), r(k, t), r(u, t), r(k, u), r(k, s)
	}
}' /tmp/zusd-bench.out

grep -q ' /mnt/zbf ' /proc/mounts && zufs umount /mnt/zbf
grep -q ' /mnt/zbk ' /proc/mounts && zufs umount /mnt/zbk
stop_zusd
rm -f /dev/shm/bench-k /dev/shm/bench-f
umount /tmp/zbt
rmmod zufs 2>/dev/null
exit 0
