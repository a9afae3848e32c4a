#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# guest-lib.sh - what every guest test script uses; guest-test.sh packs it as
# /tests/lib/guest-lib.sh and the scripts source it.

check() {  # NAME CMD...: prints "TEST NAME ... ok|FAILED: CMD"
	name=$1
	shift
	if "$@"; then
		echo "TEST $name ... ok"
	else
		echo "TEST $name ... FAILED: $*"
	fi
}

wait_for() {  # TENTHS CMD...: up to TENTHS/10 s for CMD to succeed
	n=$1
	shift
	while [ "$n" -gt 0 ]; do
		"$@" && return 0
		sleep 0.1
		n=$((n - 1))
	done
	return 1
}

uptime_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# zusd with the plugins, until it is ready (or dead): ZUFS_PLUGINS, ZUFS_SOCKET and LOG from the
# caller (ZUSD: another zusd than /bin/zusd; ZUSD_LOG: its ZUFS_LOG, default info, which must
# let its "zusd ready" line through), its arguments (e.g. --kernel) first; sets ZPID
start_zusd() {
	ZUFS_LOG=${ZUSD_LOG:-info} "${ZUSD:-/bin/zusd}" "$@" --plugins "$ZUFS_PLUGINS" --socket "$ZUFS_SOCKET" >>"$LOG" 2>&1 &
	ZPID=$!
	wait_for 600 sh -c "grep -q 'zusd ready' $LOG || ! kill -0 $ZPID 2>/dev/null"
	grep 'zusd ready' "$LOG" | tail -n 1 | sed 's/^/GUEST: zusd: /'
}

stop_zusd() {
	kill -TERM "$ZPID" 2>/dev/null
	wait "$ZPID" 2>/dev/null
}
