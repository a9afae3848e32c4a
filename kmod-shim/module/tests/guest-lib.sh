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
