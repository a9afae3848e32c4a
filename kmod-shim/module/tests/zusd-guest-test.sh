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
# tests/zusd-pjdfstest.sh (pjdfstest on that mount against tmpfs) added
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
#   ZUSD_GUEST_TESTS="kzt pmemfs posix pjdfstest"   which of this wrapper's guest scripts run
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

# zusd-posix.sh: python3 with the stdlib modules tests/scripts/fs_semantics.py
# imports (found by importing them here, -S as in the guest), under the
# guest's /lib/python3.X (PYTHONHOME=/ there), and setfacl/getfacl
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
if [ -n "$PY" ]; then
  PYF=$("$PY" -S -c '
import os, sys, sysconfig
import ctypes, ctypes.util, errno, json, mmap, pwd, stat, subprocess, time
import encodings.ascii, encodings.latin_1, encodings.utf_8
std = os.path.realpath(sysconfig.get_paths()["stdlib"])
lib = "/lib/python%d.%d/" % sys.version_info[:2]
for m in list(sys.modules.values()):
    f = os.path.realpath(getattr(m, "__file__", None) or "/")
    if f.startswith(std + "/"):
        print(f + ":" + lib + f[len(std) + 1:])
')
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $("$PY" -S -c 'import os, sys; print(os.path.realpath(sys.executable))'):/bin/python3 $(echo $PYF)"
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $REPO/tests/scripts/fs_semantics.py:/tests/lib/fs_semantics.py"
  # the xattrs check on this host's tmpfs (6.1's tmpfs in the guest has no user xattrs)
  XT=$W/build/xattrs-tmpfs
  mkdir -p "$XT"
  if mount -t tmpfs -o size=64M zufs-xattrs "$XT"; then
    mkdir -m 0777 "$XT/xattrs"
    "$PY" -S "$REPO/tests/scripts/fs_semantics.py" xattrs "$XT/xattrs" >"$W/build/host-tmpfs-xattrs.txt" 2>&1 &&
      ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $W/build/host-tmpfs-xattrs.txt:/tests/lib/host-tmpfs-xattrs.txt"
    umount "$XT"
  fi
fi
# ext4 on a RAM disk (brd) as the reference for the checks that need O_DIRECT
KM=$(ls -d "$W"/kimg-*/lib/modules/* 2>/dev/null | head -1 || true)
if [ -n "$KM" ] && [ -f "$KM/kernel/fs/ext4/ext4.ko" ]; then
  for m in crypto/crc32c_generic lib/crc16 fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4 drivers/block/brd; do
    ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $KM/kernel/$m.ko:/lib/zufs/kmod/$(basename "$m").ko"
  done
  # not /bin/mke2fs: that is a link to busybox, which the copy would overwrite
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $(command -v mke2fs):/lib/zufs/bin/mke2fs"
fi
for b in setfacl getfacl; do
  command -v $b >/dev/null && ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $(command -v $b)"
done
export ZUFS_GUEST_FILES
T=
for t in ${ZUSD_GUEST_TESTS:-kzt pmemfs posix pjdfstest}; do T="$T $HERE/zusd-$t.sh"; done
# the benchmark is slow under TCG (the FUSE bridge most): a longer guest watchdog
[ "${BENCH:-0}" = 1 ] && T="$T $HERE/zusd-bench.sh" && export TIMEOUT=${TIMEOUT:-900}
export ZUFS_GUEST_TESTS="$T ${ZUFS_GUEST_TESTS:-}"
exec bash "$REPO/kmod-shim/module/guest-test.sh"
