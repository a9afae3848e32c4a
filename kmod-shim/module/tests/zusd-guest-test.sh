#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# zusd-guest-test.sh - the guest harness (../guest-test.sh) with zusd serving
# the module: builds zusd, the plugins and zufs-testclient (release), the
# static tests/zufs-dbgop.c, and runs guest-test.sh with tests/zusd-kzt.sh
# added (ZUFS_GUEST_TESTS) and zufs-dbgop in the initramfs (ZUFS_GUEST_FILES;
# guest-test.sh itself picks up target/release/zusd, zufs-testclient and the
# plugins with their shared libraries).
#
#   bash kmod-shim/module/tests/zusd-guest-test.sh     (as root)
#
# Environment: as guest-test.sh (ZUFS_KMOD_DIR, SMP, ...), plus
#   NO_BUILD=1   use what target/release holds
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=${ZUFS_KMOD_DIR:-/tmp/zufs-kmod}
mkdir -p "$W/build"

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && cargo build --release -p zusd -p nullfs -p pmemfs 2>&1 | tail -2 &&
     cargo build --release -p zufs-tests --bin zufs-testclient 2>&1 | tail -2)
fi
gcc -static -O2 -g -Wall -Wextra -Werror -I"$REPO/zus-api/include" -o "$W/build/zufs-dbgop" "$HERE/zufs-dbgop.c"

export ZUFS_GUEST_FILES="$W/build/zufs-dbgop ${ZUFS_GUEST_FILES:-}"
export ZUFS_GUEST_TESTS="$HERE/zusd-kzt.sh ${ZUFS_GUEST_TESTS:-}"
exec bash "$REPO/kmod-shim/module/guest-test.sh"
