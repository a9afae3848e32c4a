#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest tests of the zufs transport: load, the fake server's tests, unload.
# Run by the guest's /init (guest-test.sh); prints "TEST name ... ok|FAILED".

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

check load_zufs_module modprobe zufs
check dev_zufs_is_a_char_device test -c /dev/zufs
/bin/fake-zusd test
check no_zufs_process_left sh -c '! pidof fake-zusd'
check rmmod_after_server_exit rmmod zufs
check reload_and_unload sh -c 'modprobe zufs && rmmod zufs'
check kernel_log_clean sh -c '! dmesg | grep -E "WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption"'
