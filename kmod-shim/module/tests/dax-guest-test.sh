#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# dax-guest-test.sh - the guest harness (../guest-test.sh) with the DAX tests
# (tests/guest-dax.sh): zusd, the plugins, zufs and zufs-testclient (release),
# the static tests/dax-test.c, fio, the preload library, mke2fs and ext4 with its modules for the
# ext4 -o dax anchor, and two memmap= pmem regions (/dev/pmem0 for zufs,
# /dev/pmem1 for ext4).
#
#   bash kmod-shim/module/tests/dax-guest-test.sh     (as root)
#
# Environment: as guest-test.sh (ZUFS_KMOD_DIR, SMP, PMEM, ...), plus
#   NO_BUILD=1   use what target/release holds
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=${ZUFS_KMOD_DIR:-/tmp/zufs-kmod}
mkdir -p "$W/build"

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && cargo build --release -p zusd -p nullfs -p pmemfs -p zufs-cli -p zufs-preload 2>&1 | tail -2 &&
     cargo build --release -p zufs-tests --bin zufs-testclient 2>&1 | tail -2)
fi
gcc -static -O2 -g -Wall -Wextra -Werror -I"$REPO/zus-api/include" -o "$W/build/dax-test" "$HERE/dax-test.c"

EXTRA="$W/build/dax-test"
# the plugins just built (guest-test.sh prefers target/release/plugins, which may be stale)
for p in nullfs pmemfs; do
  [ -f "$REPO/target/release/lib$p.so" ] && EXTRA+=" $REPO/target/release/lib$p.so:/lib/zufs/plugins/lib$p.so"
done
# the preload library next to zufs (zufs run finds it there)
[ -f "$REPO/target/release/libzufs_preload.so" ] && EXTRA+=" $REPO/target/release/libzufs_preload.so:/bin/libzufs_preload.so"
# ext4 and what it needs, from the guest kernel's package (cached by an earlier run)
KM=$(ls -d "$W"/kimg-*/lib/modules/* 2>/dev/null | head -1 || true)
if [ -n "$KM" ] && [ -f "$KM/kernel/fs/ext4/ext4.ko" ]; then
  for m in crypto/crc32c_generic lib/crc16 fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4; do
    EXTRA+=" $KM/kernel/$m.ko:/lib/zufs/kmod/$(basename "$m").ko"
  done
  # not /bin/mke2fs: that is a link to busybox, which the copy would overwrite
  EXTRA+=" $(command -v mke2fs):/lib/zufs/bin/mke2fs"
else
  echo "dax-guest-test: no cached kernel image in $W yet: the ext4 -o dax anchor is left out of this run"
fi

# fio (Debian's binary; guest-test.sh packs its shared libraries) for the verify run on
# the DAX mount: installed on the host when missing (a fresh Debian 12 has none)
if ! command -v fio >/dev/null; then
  echo "dax-guest-test: apt-get install fio (host)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends fio >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends fio >/dev/null; } ||
    { echo "dax-guest-test: FAILED: cannot install fio" >&2; exit 1; }
fi
EXTRA+=" $(command -v fio)"

# the guest's watchdog: a loaded host slows TCG a lot (572 s seen on a 2-CPU host at load 9;
# 95 s unloaded before fio and the preload were added); a hung task panics after 10 s anyway
export TIMEOUT=${TIMEOUT:-900}
# two e820 pmem regions with a gap (adjacent ones would merge into one device)
export PMEM=${PMEM:-512M!1G memmap=256M!1664M}
export ZUFS_GUEST_FILES="$EXTRA ${ZUFS_GUEST_FILES:-}"
# then the issue-16 checks on a DAX mount (tests/dax-posix.sh, tests/zusd-posix.sh)
. "$HERE/posix-files.sh"
export ZUFS_GUEST_TESTS="$HERE/guest-dax.sh $HERE/dax-posix.sh ${ZUFS_GUEST_TESTS:-}"
exec bash "$REPO/kmod-shim/module/guest-test.sh"
