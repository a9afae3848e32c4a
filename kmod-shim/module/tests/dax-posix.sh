#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest test (tests/dax-guest-test.sh, after guest-dax.sh): tests/zusd-posix.sh
# on a DAX mount, pmemfs on /dev/pmem0 mounted with
# `zufs mount -o transport=kernel` (dax=/dev/pmem0 by itself): the issue-16
# checks against the same references, with file data through DAX.
PX_NAME=pxd PX_DEV=/dev/pmem0 . /tests/lib/zusd-posix.sh
