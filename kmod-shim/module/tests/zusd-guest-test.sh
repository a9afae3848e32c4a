#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# zusd-guest-test.sh - the guest harness (../guest-test.sh) with zusd serving
# the module: builds zusd, zufs, the plugins and zufs-testclient (release), the
# static tests/zufs-dbgop.c, and runs guest-test.sh with tests/zusd-kzt.sh
# (K-ZTs, NOOPs, nullfs), tests/zusd-pmemfs.sh (pmemfs mounted with
# `zufs mount -o transport=kernel`: workload, zusd killed, fsck) and
# tests/zusd-posix.sh (tests/scripts/fs_semantics.py's checks on that mount
# against tmpfs: python3 and the stdlib modules it imports are packed) and
# tests/zusd-pjdfstest.sh (pjdfstest on that mount against tmpfs) and
# tests/zusd-mount8.sh (mount(8), fstab, remount and second mounts through the
# module with util-linux's mount and umount, packed as /lib/zufs/bin/) added
# (ZUFS_GUEST_TESTS) and zufs-dbgop in the initramfs (ZUFS_GUEST_FILES;
# guest-test.sh itself picks up target/release/zusd, zufs, zufs-testclient and
# the plugins with their shared libraries). With BENCH=1 also
# tests/zusd-bench.sh: the guest benchmark on zusd + pmemfs (module mount,
# FUSE bridge, tmpfs).
#
#   bash kmod-shim/module/tests/zusd-guest-test.sh     (as root)
#
# Environment: as guest-test.sh (ZUFS_KMOD_DIR, SMP, ...), plus
#   NO_BUILD=1   use what target/release holds
#   ZUSD_GUEST_TESTS="kzt pmemfs posix pjdfstest mount8"   which of this wrapper's guest scripts run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=${ZUFS_KMOD_DIR:-/tmp/zufs-kmod}
mkdir -p "$W/build"

# not root: guest-test.sh says why it cannot run (exit 77) before anything is built
[ "$(id -u)" = 0 ] || exec bash "$REPO/kmod-shim/module/guest-test.sh"
if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && cargo build --release -p zusd -p zufs-cli -p nullfs -p pmemfs 2>&1 | tail -2 &&
     cargo build --release -p zufs-tests --bin zufs-testclient 2>&1 | tail -2)
fi
gcc -static -O2 -g -Wall -Wextra -Werror -I"$REPO/zus-api/include" -o "$W/build/zufs-dbgop" "$HERE/zufs-dbgop.c"

# the plugins just built (guest-test.sh prefers target/release/plugins, which may be stale)
P=
for p in nullfs pmemfs; do
  [ -f "$REPO/target/release/lib$p.so" ] && P="$P $REPO/target/release/lib$p.so:/lib/zufs/plugins/lib$p.so"
done
export ZUFS_GUEST_FILES="$W/build/zufs-dbgop$P ${ZUFS_GUEST_FILES:-}"

# what zusd-posix.sh needs in the guest (python3, setfacl, ext4 on a RAM disk)
. "$HERE/posix-files.sh"
# util-linux's mount and umount for zusd-mount8.sh (the guest's /bin/mount is
# busybox, which runs no mount helpers); not /bin/mount: that is a link to
# busybox, which the copy would overwrite
for b in mount umount; do
  p=$(command -v $b || true)
  [ -n "$p" ] && ! "$p" --version 2>&1 | grep -q BusyBox &&
    ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $(readlink -f "$p"):/lib/zufs/bin/$b"
done
T=
for t in ${ZUSD_GUEST_TESTS:-kzt pmemfs posix pjdfstest mount8}; do T="$T $HERE/zusd-$t.sh"; done
# the benchmark is slow under TCG (the FUSE bridge most): a longer guest watchdog
[ "${BENCH:-0}" = 1 ] && T="$T $HERE/zusd-bench.sh" && export TIMEOUT=${TIMEOUT:-900}
export ZUFS_GUEST_TESTS="$T ${ZUFS_GUEST_TESTS:-}"
exec bash "$REPO/kmod-shim/module/guest-test.sh"
