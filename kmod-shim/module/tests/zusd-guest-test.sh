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
# FUSE bridge, tmpfs). With META_BENCH=1 also tests/zusd-meta-bench.sh: the
# metadata benchmark of the module transport (fs-test's create/stat/unlink
# rates and O_SYNC write/read latency, busybox tar -xf and rm -rf of a
# generated tree of 3,121 entries, and zusd's requests per op of each) for
# this tree ("after") and, with ZUFS_BEFORE, another tree's build ("before"),
# in one boot next to tmpfs, after tests/switch-cost.c's figures (what a
# hand-off to another process, and the cache and TLB misses after it, cost in
# this guest). Run it with GUEST_DEBUG=0 (no debugging allocator).
#
#   bash kmod-shim/module/tests/zusd-guest-test.sh     (as root)
#
# The metadata benchmark of this tree against a landed commit (here d8b38ee),
# built in its own worktree first:
#   git worktree add --detach /work/before-d8b38ee d8b38ee
#   cd /work/before-d8b38ee && cargo build --release -p zusd -p zufs-cli -p pmemfs &&
#     make -C kmod-shim/module -s KDIR=/usr/src/linux-headers-$(cat /tmp/zufs-kmod/kabi) \
#       ZUS_API_INC=/work/before-d8b38ee/zus-api/include
#   cd - && flock /tmp/zufs-qemu.lock env GUEST_DEBUG=0 META_BENCH=1 ZUFS_BEFORE=/work/before-d8b38ee \
#     DEFAULT_TESTS=0 ZUSD_GUEST_TESTS=" " PJDFSTEST=off \
#     bash kmod-shim/module/tests/zusd-guest-test.sh
# (NO_BUILD=1 when target/release is built already; OFFLINE=1 and
# ZUFS_KMOD_DIR as for guest-test.sh). The figures are the lines
# "GUEST: BENCH-META ..."; the benchmark prints no TEST lines, so run alone
# the guest ends with "0 passed, 0 failed" and guest-test.sh exits 1 (add a
# test script, e.g. ZUSD_GUEST_TESTS=kzt, for a pass/fail verdict). Under TCG
# a round takes about 25 s per module build (2,000 ops, quiet host): the
# default 5 rounds about 4 minutes in the guest.
#
# Environment: as guest-test.sh (ZUFS_KMOD_DIR, SMP, ...), plus
#   NO_BUILD=1   use what target/release holds
#   ZUSD_GUEST_TESTS="kzt pmemfs posix pjdfstest mount8"   which of this wrapper's guest scripts run
#   META_BENCH=1  tests/zusd-meta-bench.sh too (TIMEOUT default 1200 then)
#   ZUFS_BEFORE=DIR  the "before" build for it: DIR/target/release/{zusd,zufs,
#                 libpmemfs.so} and DIR/kmod-shim/module/zufs.ko (or
#                 ZUFS_BEFORE_KO=PATH), built against the same kernel headers;
#                 unset: the benchmark runs tmpfs and this tree only (it says so)
#   META_OPS=2000 META_ROUNDS=5   files per fs-test phase, rounds
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
if [ "${META_BENCH:-0}" = 1 ]; then
  T="$T $HERE/zusd-meta-bench.sh"
  # on top of BENCH=1's 900 s when both run
  [ "${BENCH:-0}" = 1 ] && [ "$TIMEOUT" = 900 ] && TIMEOUT=2100
  export TIMEOUT=${TIMEOUT:-1200}
  # the tree to untar: 60 directories of 50 files of 0-8 KiB and one symlink
  # each (3,121 entries with the top directory), the same bytes every time
  python3 - "$W/build/meta-tree.tar" <<'EOF'
import io, sys, tarfile
def info(name, kind, size=0, mode=0o644):
    t = tarfile.TarInfo(name)
    t.type, t.size, t.mode, t.mtime = kind, size, mode, 1700000000
    return t
with tarfile.open(sys.argv[1], "w", format=tarfile.USTAR_FORMAT) as tar:
    tar.addfile(info("tree", tarfile.DIRTYPE, mode=0o755))
    for d in range(60):
        tar.addfile(info(f"tree/d{d:02d}", tarfile.DIRTYPE, mode=0o755))
        for f in range(50):
            n = (d * 50 + f) * 1237 % 8193
            line = f"tree/d{d:02d}/f{f:02d} {n}\n".encode()
            data = (line * (n // len(line) + 1))[:n]
            tar.addfile(info(f"tree/d{d:02d}/f{f:02d}", tarfile.REGTYPE, n), io.BytesIO(data))
        l = info(f"tree/d{d:02d}/link", tarfile.SYMTYPE, mode=0o777)
        l.linkname = f"f{d % 50:02d}"
        tar.addfile(l)
EOF
  printf 'OPS=%d\nROUNDS=%d\n' "${META_OPS:-2000}" "${META_ROUNDS:-5}" >"$W/build/meta-bench.conf"
  # what one hand-off to another process costs in this guest (the benchmark prints it first)
  gcc -static -O2 -Wall -Wextra -Werror -o "$W/build/switch-cost" "$HERE/switch-cost.c" -lpthread
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $W/build/meta-tree.tar:/lib/zufs/meta-tree.tar $W/build/meta-bench.conf:/etc/zufs-meta-bench.conf"
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $W/build/switch-cost:/bin/switch-cost"
  if [ -n "${ZUFS_BEFORE:-}" ]; then
    BR=$ZUFS_BEFORE/target/release
    BKO=${ZUFS_BEFORE_KO:-$ZUFS_BEFORE/kmod-shim/module/zufs.ko}
    for f in "$BR/zusd" "$BR/zufs" "$BR/libpmemfs.so" "$BKO"; do
      [ -f "$f" ] || { echo "zusd-guest-test: ZUFS_BEFORE: no $f (build it: see the top of $0)" >&2; exit 1; }
    done
    # built against the headers of the kernel the guest boots?
    KABI=$(cat "$W/kabi" 2>/dev/null || true)
    [ -z "$KABI" ] || grep -aq "vermagic=$KABI " "$BKO" ||
      { echo "zusd-guest-test: $BKO is not built for $KABI: $(grep -ao 'vermagic=[^ ]*' "$BKO")" >&2; exit 1; }
    ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $BKO:/lib/zufs/before/zufs.ko $BR/zusd:/lib/zufs/before/zusd"
    ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $BR/zufs:/lib/zufs/before/zufs $BR/libpmemfs.so:/lib/zufs/before/plugins/libpmemfs.so"
    echo "zusd-guest-test: meta benchmark: before = $ZUFS_BEFORE ($(git -C "$ZUFS_BEFORE" rev-parse --short HEAD 2>/dev/null || echo '?')), after = $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + changes'))"
  else
    echo "zusd-guest-test: meta benchmark without ZUFS_BEFORE: tmpfs and this tree only"
  fi
fi
export ZUFS_GUEST_TESTS="$T ${ZUFS_GUEST_TESTS:-}"
exec bash "$REPO/kmod-shim/module/guest-test.sh"
