#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The guest metadata benchmark of two builds of the module transport (not a
# test: no TEST lines; run by tests/zusd-guest-test.sh with META_BENCH=1,
# which says how to name the builds). In this one boot, in interleaved rounds:
#   tmpfs
#   after   the build being tested: /lib/modules/.../extra/zufs.ko (modprobe),
#           /bin/zusd, /bin/zufs, /lib/zufs/plugins/libpmemfs.so
#   before  another build packed under /lib/zufs/before/ (zufs.ko, zusd, zufs,
#           plugins/libpmemfs.so); left out when it is not there
# Each module round loads its zufs.ko (only one can be loaded: rmmod the
# other), starts its zusd --kernel, and mounts a fresh 256 MiB pmemfs device
# with its zufs CLI (`zufs mount -o transport=kernel`, K-ZTs); afterwards
# umount, zusd stopped, rmmod. Per round and configuration:
#   fs-test phase io|create|stat|unlink: 4 KiB O_SYNC write / read latency,
#           create, stat and unlink rates of OPS files in one directory
#   untar   busybox tar -xf of the packed tree (/lib/zufs/meta-tree.tar, made
#           on the host by the wrapper), then ls -lR of it after drop_caches
#           (cold: names and inodes asked of zusd again), then rm -rf of it:
#           seconds
#   req     zusd's requests per op of each phase (per entry for untar and rm):
#           the sum of `zufs status --json`'s lanes[].ops before and after it
# and at the end the best round per metric (lowest time or requests, highest
# rate), after/before and after/tmpfs. TCG makes absolute times meaningless:
# only the ratios say something. The requests per op are counts, but those of
# stat and unlink also depend on time: a name or attributes cached longer than
# the module's timeouts (entry_timeout_ms, attr_timeout_ms: 1 s by default)
# are revalidated (another request), so a slower create phase leaves more of
# them to revalidate.
# /etc/zufs-meta-bench.conf (written by the wrapper) may set OPS and ROUNDS.
. /tests/lib/guest-lib.sh	# wait_for, start_zusd, stop_zusd

OPS=2000
ROUNDS=5
[ -f /etc/zufs-meta-bench.conf ] && . /etc/zufs-meta-bench.conf
TAR=/lib/zufs/meta-tree.tar
B=/lib/zufs/before
OUT=/tmp/zusd-meta-bench.out
export NO_COLOR=1
say() { echo "GUEST: BENCH-META $*"; }

CONFIGS="tmpfs after"
if [ -f $B/zufs.ko ] && [ -x $B/zusd ] && [ -x $B/zufs ] && [ -f $B/plugins/libpmemfs.so ]; then
	CONFIGS="$CONFIGS before"
else
	say "no before build packed in $B (ZUFS_BEFORE unset): tmpfs and after only"
fi
ENTRIES=0
[ -f $TAR ] && ENTRIES=$(tar -tf $TAR | wc -l)
[ "$ENTRIES" -gt 0 ] || say "no $TAR: no untar / rm -rf figures"
say "$ROUNDS rounds of $OPS ops, untar of $ENTRIES entries; configurations: $CONFIGS"
say "clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource);" \
	"$(grep -o 'slub_debug=[^ ]*' /proc/cmdline || echo 'no slub_debug')"
# the floor of one request here: a hand-off to another process and back, on one CPU
if [ -x /bin/switch-cost ]; then
	/bin/switch-cost 2>&1 | sed 's/^/GUEST: BENCH-META switch-cost /'
	/bin/switch-cost thread 2>&1 | sed 's/^/GUEST: BENCH-META switch-cost /'
fi

# the build's files: sets KO (empty: modprobe), ZUSD, CLI and PLUG
build() {
	if [ "$1" = before ]; then
		KO=$B/zufs.ko ZUSD=$B/zusd CLI=$B/zufs PLUG=$B/plugins
	else
		KO= ZUSD=/bin/zusd CLI=/bin/zufs PLUG=/lib/zufs/plugins
	fi
	export ZUFS_SOCKET=/run/zufs-mb/$1.sock ZUFS_RUN_DIR=/run/zufs-mb/$1 ZUFS_PLUGINS=$PLUG
	LOG=/tmp/zusd-meta-$1.log
}

unload() {
	lsmod | grep -q '^zufs ' || return 0
	wait_for 100 rmmod zufs 2>/dev/null || say "rmmod zufs failed: $(lsmod | grep '^zufs ')"
}

# NAME MOUNTPOINT: NAME's module, zusd and a fresh pmemfs mounted there
up() {
	build "$1"
	unload
	mkdir -p "$ZUFS_RUN_DIR" "$2"
	if [ -n "$KO" ]; then insmod "$KO"; else modprobe zufs; fi || { say "$1: module not loaded"; return 1; }
	: >"$LOG"
	# warnings, and zusd's own info lines: "zusd ready" is one
	ZUSD_LOG=warn,zusd=info start_zusd --kernel
	grep -q 'zusd ready' "$LOG" || say "$1: zusd not ready ($(tail -n 2 "$LOG"))"
	rm -f /dev/shm/meta-$1
	"$CLI" mkfs -t pmemfs --size 256M /dev/shm/meta-$1 >/dev/null &&
		"$CLI" mount -t pmemfs -o transport=kernel /dev/shm/meta-$1 "$2" ||
		{ say "$1: no module mount ($(tail -n 2 "$LOG"))"; return 1; }
}

down() {  # NAME MOUNTPOINT
	grep -q " $2 " /proc/mounts && "$CLI" umount "$2"
	stop_zusd
	rm -f /dev/shm/meta-$1
	unload
}

# the requests zusd has served: the sum of its lanes' ops
reqs() {
	"$CLI" status --json 2>/dev/null | sed -n 's/.*"lanes":\[\([^]]*\)\].*/\1/p' |
		grep -o '"ops":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }'
}

# LABEL DIR COUNTED(0/1): every phase, its requests per op when COUNTED
phases() {
	label=$1 d=$2 counted=$3
	# what one status call itself costs (none expected): each phase's count
	# spans one such call, taken off below
	sr=0
	[ "$counted" = 1 ] && { r0=$(reqs); r1=$(reqs); sr=$((r1 - r0)); echo "BENCH $label status_req $sr req" >>$OUT; }
	for p in io create stat unlink untar lsl rm; do
		[ "$counted" = 1 ] && r0=$(reqs)
		case $p in
		untar)	[ "$ENTRIES" -gt 0 ] || continue
			n=$ENTRIES
			fs-test time "$label" untar_s tar -xf $TAR -C "$d" >>$OUT ;;
		lsl)	[ "$ENTRIES" -gt 0 ] || continue
			n=$ENTRIES
			# cold: the kernel forgets the tree's names and inodes first
			sync
			echo 2 >/proc/sys/vm/drop_caches
			fs-test time "$label" lsl_s sh -c "ls -lR '$d/tree' >/dev/null" >>$OUT ;;
		rm)	[ "$ENTRIES" -gt 0 ] || continue
			n=$ENTRIES
			fs-test time "$label" rm_s rm -rf "$d/tree" >>$OUT ;;
		io)	n=$((2 * OPS))	# OPS writes and OPS reads
			fs-test phase io "$label" "$d" "$OPS" >>$OUT ;;
		*)	n=$OPS
			fs-test phase $p "$label" "$d" "$OPS" >>$OUT ;;
		esac || say "$label: $p failed"
		[ "$counted" = 1 ] && r1=$(reqs) &&
			echo "BENCH $label ${p}_req $(awk -v a="$r0" -v b="$r1" -v s="$sr" -v n="$n" 'BEGIN { printf "%.2f", (b - a - s) / n }') req/op" >>$OUT
	done
	[ -e "$d/tree" ] && say "$label: $d/tree left after rm -rf"
}

mkdir -p /tmp/mb-tmpfs /run/zufs-mb
: >$OUT
for round in $(seq "$ROUNDS"); do
	# the two builds in turn first: an order effect shows as a swing between rounds
	order=$CONFIGS
	[ $((round % 2)) = 0 ] && order=$(echo "$CONFIGS" | sed 's/after before/before after/')
	for c in $order; do
		T0=$(cut -d' ' -f1 /proc/uptime)
		start=$(wc -l <$OUT)
		if [ $c = tmpfs ]; then
			mount -t tmpfs meta-tmpfs /tmp/mb-tmpfs
			phases tmpfs /tmp/mb-tmpfs 0
			umount /tmp/mb-tmpfs
		else
			M=/mnt/mb-$c
			up $c $M && T1=$(cut -d' ' -f1 /proc/uptime) && phases $c $M 1
			T2=$(cut -d' ' -f1 /proc/uptime)
			down $c $M
			T3=$(cut -d' ' -f1 /proc/uptime)
		fi
		say "round $round $c: $(tail -n +$((start + 1)) $OUT | awk '{ printf "%s=%s ", $3, $4 }')(from ${T0}s$([ $c = tmpfs ] || echo "$T0 $T1 $T2 $T3" | awk '{ printf "; module, zusd and mount %.1fs, umount and rmmod %.1fs", $2 - $1, $4 - $3 }'))"
	done
done

# the best round per metric, its spread (worst/best over the rounds), ratios
awk -v rounds="$ROUNDS" -v ops="$OPS" -v entries="$ENTRIES" '
$1 == "BENCH" {
	k = $2 " " $3
	hi = ($5 == "ops/s")
	if (!(k in v) || (hi && $4 > v[k]) || (!hi && $4 < v[k])) v[k] = $4
	if (!(k in w) || (hi && $4 < w[k]) || (!hi && $4 > w[k])) w[k] = $4
	unit[$3] = $5
}
function r(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
function f(x) { return x == "" ? "-" : x }
# how many times the worst round is off the best (1.00: all rounds alike)
function sp(c, m) { return !((c " " m) in v) ? "-" : unit[m] == "ops/s" ? r(v[c " " m], w[c " " m]) : r(w[c " " m], v[c " " m]) }
END {
	printf "GUEST: BENCH-META best of %d rounds: %d ops per phase, untar / rm -rf of %d entries; zusd + pmemfs through the module (before, after), tmpfs\n", rounds, ops, entries
	printf "GUEST: BENCH-META (rates: higher is faster; times and req/op: lower is better; spread = how many times the worst round is off the best)\n"
	fmt = "GUEST: BENCH-META %-18s %6s %10s %10s %10s %12s %11s %13s %12s\n"
	printf fmt, "metric", "unit", "tmpfs", "before", "after", "after/before", "after/tmpfs", "before_spread", "after_spread"
	n = split("write4k_osync_mean write4k_osync_p50 read4k_mean read4k_p50 create_rate stat_rate unlink_rate untar_s lsl_s rm_s io_req create_req stat_req unlink_req untar_req lsl_req rm_req", m, " ")
	for (i = 1; i <= n; i++) {
		t = v["tmpfs " m[i]]; b = v["before " m[i]]; a = v["after " m[i]]
		if (t == "" && b == "" && a == "") continue
		printf fmt, m[i], unit[m[i]], f(t), f(b), f(a), r(a, b), r(a, t), sp("before", m[i]), sp("after", m[i])
	}
	printf "GUEST: BENCH-META requests of one zufs status call between phases (counted in): before %s, after %s\n", f(w["before status_req"]), f(w["after status_req"])
}' $OUT

unload
exit 0
