#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# guest-test.sh - build the zufs kernel module against Debian 12's current
# kernel and test it in a throw-away qemu guest.
#
#   bash kmod-shim/module/guest-test.sh          (as root, on Debian 12)
#
# Steps: resolve the kernel ABI that linux-image-amd64 points at today (it
# moves: 6.1.0-56 became -57 within two weeks), install its headers, fetch the
# matching kernel image and a qemu, build zufs.ko (Kbuild, -Werror, only
# exported symbols) and the static test programs, pack a busybox initramfs,
# boot it under TCG with an e820 pmem region and a kernel command line that
# turns every warning, oops, hung task and soft lockup into a panic, run the
# guest tests, and print the guest's "N passed, M failed".
# Exit 0 only when the guest printed that line with M = 0 (and M counts a
# test script that did not run to its end). Exit 77, with a line "SKIP: why",
# only when this machine cannot run it at all: not root, no apt/dpkg (not
# Debian), or no package source reachable and nothing cached. Any failure to
# build, boot or finish (panic, hang, timeout) is exit 1.
#
# The kernel image and qemu are unpacked with dpkg -x, never installed:
# installing linux-image-* pulls initramfs-tools and rebuilds initramfs for
# every kernel; installing bookworm's qemu-system-x86 (7.2) would remove a
# newer qemu-utils from backports (it Breaks qemu-system-common << 8.0). If
# qemu-system-x86_64 is already on PATH, that one is used.
#
# Environment:
#   ZUFS_KMOD_DIR  scratch directory (default /tmp/zufs-kmod; never the repo).
#                  Downloads are cached there; about 600 MB.
#   SMP=4 MEM=2G   guest CPUs and memory
#   PMEM=512M!1G   memmap= pmem region (-> /dev/pmem0)
#   TIMEOUT=300    guest watchdog (s): sysrq t/w and a dmesg dump, then off
#   ZUFS_GUEST_FILES="SRC[:DEST] ..."
#                  more files for the initramfs (DEST default /bin/NAME);
#                  dynamically linked programs and .so files bring their
#                  shared libraries (ldd). Also picked up when present:
#                  target/release/{zusd,zufs,zufs-testclient} and the plugin
#                  libraries lib{nullfs,pmemfs}.so (as /lib/zufs/plugins/).
#   ZUFS_GUEST_TESTS="script.sh ..."
#                  more guest test scripts, run after tests/guest-tests.sh
#   OFFLINE=1      skip apt-get update/install; use what is cached
#   BENCH=1        also run the guest benchmark (tests/guest-bench.sh:
#                  module mount vs tmpfs ratios; not a test, prints GUEST: BENCH)
#   PJDFSTEST=auto|required|off
#                  pjdfstest in the guest (tmpfs vs the module mount): built
#                  static with cargo into $ZUFS_KMOD_DIR/pjdfstest once;
#                  auto (default) says so and leaves it out where there is no
#                  cargo, required fails then
#   ZUFS_KMOD_REQUIRED=1  make the "cannot run here" cases failures, not skips
#   DEFAULT_TESTS=0  leave the transport, filesystem and pjdfstest scripts out
#                  (only ZUFS_GUEST_TESTS run)
#   GUEST_DEBUG=0  boot without slub_debug and page_poison, with the TSC as
#                  clocksource (HPET otherwise: a clock read is a trap under
#                  TCG): for benchmarks, which should not time the debugging
#                  allocator; tests keep the default 1
#   NO_BOOT=1      build the initramfs, write how to boot it to
#                  $ZUFS_KMOD_DIR/guest-boot.env (QEMU, VMLINUZ, INITRD) and
#                  exit 0: for a caller that boots it itself
#                  (tests/powercut-test.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=${ZUFS_KMOD_DIR:-/tmp/zufs-kmod}
mkdir -p "$W"
W=$(cd "$W" && pwd)
case "$W/" in "$REPO"/*) echo "ZUFS_KMOD_DIR ($W) must be outside the repository" >&2; exit 2;; esac
SMP=${SMP:-4}
MEM=${MEM:-2G}
PMEM=${PMEM:-512M!1G}
TIMEOUT=${TIMEOUT:-300}
OFFLINE=${OFFLINE:-0}

T0=$(date +%s%N)
el() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }
step() { printf '[%7s] %s\n' "$(el "$T0")" "$*"; }
die() { echo "guest-test: FAILED: $*" >&2; exit 1; }
# this machine cannot run the guest test at all: say why, exit 77
skip() {
  [ "${ZUFS_KMOD_REQUIRED:-0}" = 1 ] && die "cannot run here: $* (ZUFS_KMOD_REQUIRED=1)"
  echo "guest-test: SKIP: $*" >&2
  exit 77
}
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || skip "not root (apt-get, and the initramfs needs device nodes)"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || skip "no apt-get/dpkg (needs Debian 12)"
[ "$(uname -m)" = x86_64 ] || skip "host is $(uname -m), the harness boots an x86_64 guest"
mkdir -p "$W"/{debs,build}

# ---- kernel ABI and host packages ------------------------------------------
NET=1
if [ "$OFFLINE" != 1 ]; then
  step "apt-get update"
  apt-get update -qq || { NET=0; echo "    apt-get update failed; using cached package lists"; }
else
  NET=0
fi
KABI=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-//p' | head -1)
if [ -z "$KABI" ]; then
  [ -s "$W/kabi" ] || skip "cannot resolve the kernel ABI (no linux-image-amd64 in the package lists: not Debian 12, or apt has no source)"
  KABI=$(cat "$W/kabi")
fi
echo "$KABI" > "$W/kabi"
step "kernel ABI $KABI"

NEED=("linux-headers-$KABI" busybox-static cpio make gcc libc6-dev)
MISSING=()
for p in "${NEED[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
  [ "$NET" = 1 ] || skip "no package source reachable (apt-get update failed or OFFLINE=1) and not installed: ${MISSING[*]}"
  step "apt-get install ${MISSING[*]}"
  apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
fi
KDIR=/usr/src/linux-headers-$KABI
KVER=$(dpkg-query -W -f '${Version}' "linux-headers-$KABI")

# ---- kernel image and qemu (cached, unpacked, never installed) -------------
KIMG=$W/kimg-$KABI-$KVER
if [ ! -f "$KIMG/.ok" ]; then
  [ "$NET" = 1 ] || skip "no package source reachable and linux-image-$KABI is not cached in $W"
  step "fetch linux-image-$KABI $KVER"
  rm -rf "$KIMG"
  (cd "$W/debs" && apt-get download -qq "linux-image-$KABI=$KVER" 2>&1 | grep -v unsandboxed || true)
  IMGDEB=$(ls "$W/debs/linux-image-${KABI}_${KVER}_"*.deb 2>/dev/null | head -1)
  [ -n "$IMGDEB" ] || die "linux-image-$KABI=$KVER did not download"
  dpkg -x "$IMGDEB" "$KIMG"
  busybox depmod -b "$KIMG" "$KABI"      # the .deb ships no modules.dep
  touch "$KIMG/.ok"
  find "$W" -maxdepth 1 -name 'kimg-*' ! -path "$KIMG" -exec rm -rf {} +   # older ABIs
fi
VMLINUZ=$KIMG/boot/vmlinuz-$KABI

if command -v qemu-system-x86_64 >/dev/null; then
  QEMU=(qemu-system-x86_64)
else
  Q=$W/qemu
  if [ ! -f "$Q/.ok" ]; then
    [ "$NET" = 1 ] || skip "no package source reachable and qemu is not cached in $W"
    step "fetch qemu-system-x86 and the libraries this machine lacks"
    QPKGS=$(apt-get install -s --no-install-recommends qemu-system-x86 | awk '/^Inst /{print $2}')
    [ -n "$QPKGS" ] || die "apt-get cannot resolve qemu-system-x86"
    (cd "$W/debs" && apt-get download -qq $QPKGS 2>&1 | grep -v unsandboxed || true)
    rm -rf "$Q"
    for p in $QPKGS; do
      d=$(ls "$W/debs/${p}_"*.deb 2>/dev/null | head -1)
      [ -n "$d" ] || die "$p did not download"
      dpkg -x "$d" "$Q"
    done
  fi
  QEMU=(env LD_LIBRARY_PATH="$Q/usr/lib/x86_64-linux-gnu:$Q/lib/x86_64-linux-gnu" "$Q/usr/bin/qemu-system-x86_64"
        -L "$Q/usr/share/qemu" -L "$Q/usr/share/seabios")
  "${QEMU[@]}" --version >/dev/null || { rm -f "$Q/.ok"; die "qemu does not run"; }
  touch "$Q/.ok"
fi

# ---- build -----------------------------------------------------------------
step "build zufs.ko against $KDIR"
B=$W/build
rm -rf "$B/module"
mkdir -p "$B/module"
# a copy: Kbuild writes its objects next to the sources, and the repo stays clean
cp "$HERE"/Kbuild "$HERE"/*.c "$HERE"/*.h "$B/module/"
# the generated ABI header (zus-api/include/zus_api.h) with it
[ -f "$REPO/zus-api/include/zus_api.h" ] || die "no zus-api/include/zus_api.h"
cp -r "$REPO/zus-api/include" "$B/module/zus-api-include"
make -s -C "$KDIR" M="$B/module" W=1 ZUS_API_INC="$B/module/zus-api-include" modules 2>&1 | grep -v 'Skipping BTF' | tee "$B/module/build.log" || true
[ -f "$B/module/zufs.ko" ] || die "module build failed"
grep -qE 'warning:|error:' "$B/module/build.log" && die "module build printed warnings"
# only symbols the kernel exports (modpost checks too; this names them)
BAD=$(nm -u "$B/module/zufs.ko" | awk '{print $2}' | while read -r s; do
        grep -qE "^0x[0-9a-f]+[[:space:]]$s[[:space:]]" "$KDIR/Module.symvers" || echo "$s"; done)
[ -z "$BAD" ] || die "zufs.ko uses symbols that $KABI does not export: $BAD"

step "build static test programs"
gcc -static -O2 -g -Wall -Wextra -Werror -pthread -I"$REPO/zus-api/include" \
  -o "$B/fake-zusd" "$HERE/tests/fake-zusd.c"
gcc -static -O2 -g -Wall -Wextra -Werror -o "$B/fs-test" "$HERE/tests/fs-test.c"

# pjdfstest, static (the guest has no glibc of its own); cached in $W
PJD=$W/pjdfstest/bin/pjdfstest
PJDFSTEST=${PJDFSTEST:-auto}
if [ "$PJDFSTEST" != off ] && [ ! -x "$PJD" ]; then
  if command -v cargo >/dev/null; then
    step "build pjdfstest 0.2.2 (static, once)"
    pjd_install() {
      RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$W/pjdfstest-build" \
        cargo install pjdfstest --locked --version 0.2.2 --target x86_64-unknown-linux-gnu \
        --root "$W/pjdfstest" "$@" > "$W/pjdfstest-build.log" 2>&1
    }
    # the registry cache usually has it (tests/scripts/fuse-deps.sh installs it too)
    pjd_install --offline || pjd_install || die "pjdfstest did not build: $W/pjdfstest-build.log"
    rm -rf "$W/pjdfstest-build"
  elif [ "$PJDFSTEST" = required ]; then
    die "PJDFSTEST=required but there is no cargo to build it"
  else
    echo "    NOTE: no cargo: pjdfstest is left out of this guest run (PJDFSTEST=required fails instead)"
  fi
fi

# ---- initramfs -------------------------------------------------------------
step "initramfs"
R=$B/initramfs
rm -rf "$R"
mkdir -p "$R"/{bin,dev,proc,sys,tmp,mnt,etc,run/zufs,lib/zufs/plugins,tests,lib/modules/"$KABI"/extra}
cp /bin/busybox "$R/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
ln -s bin "$R/sbin"
mknod -m 600 "$R/dev/console" c 5 1
cp "$B/module/zufs.ko" "$R/lib/modules/$KABI/extra/"
cp "$B/fake-zusd" "$B/fs-test" "$R/bin/"
# check, wait_for, uptime_ms: sourced by every guest test script
mkdir -p "$R/tests/lib"
cp "$HERE/tests/guest-lib.sh" "$R/tests/lib/"
if [ "${DEFAULT_TESTS:-1}" != 0 ]; then
  cp "$HERE/tests/guest-tests.sh" "$R/tests/00-transport.sh"
  cp "$HERE/tests/guest-fs.sh" "$R/tests/10-fs.sh"
fi
if [ "${DEFAULT_TESTS:-1}" != 0 ] && [ "$PJDFSTEST" != off ] && [ -x "$PJD" ]; then
  cp "$PJD" "$R/bin/"
  cp "$HERE/tests/guest-pjdfstest.sh" "$R/tests/15-pjdfstest.sh"
fi
[ "${BENCH:-0}" = 1 ] && cp "$HERE/tests/guest-bench.sh" "$R/tests/90-bench.sh"
n=20
for t in ${ZUFS_GUEST_TESTS:-}; do
  cp "$t" "$R/tests/$(printf '%02d' $n)-$(basename "$t")"; n=$((n + 1))
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\ntests:x:1000:1000::/:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\ntests:x:1000:\n' > "$R/etc/group"

MD=$KIMG/lib/modules/$KABI
declare -A seen=()
add_kmod() {
  local rel d
  rel=$(grep -E "(^|/)$1\.ko:" "$MD/modules.dep" | head -1 | cut -d: -f1) || true
  [ -n "$rel" ] || { echo "    no module $1"; return; }
  [ -n "${seen[$rel]:-}" ] && return
  seen[$rel]=1
  mkdir -p "$R/lib/modules/$KABI/$(dirname "$rel")"
  cp "$MD/$rel" "$R/lib/modules/$KABI/$rel"
  for d in $(grep -E "^$rel:" "$MD/modules.dep" | cut -d: -f2); do add_kmod "$(basename "$d" .ko)"; done
}
# nd_e820: memmap= pmem; nfit: a qemu nvdimm device (tests/powercut-test.sh);
# ext4 (crc32c for its checksums) and brd: a RAM-disk ext4 (tests/zusd-posix.sh)
for m in nd_e820 nfit nd_pmem dax_pmem fuse ext4 crc32c_generic brd; do add_kmod "$m"; done
cp "$MD"/modules.builtin* "$MD"/modules.order "$R/lib/modules/$KABI/"
busybox depmod -b "$R" "$KABI"

# extra files, with the shared libraries of dynamic ones
add_libs() {
  local l
  for l in $(ldd "$1" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
    [ -e "$R$l" ] && continue
    mkdir -p "$R$(dirname "$l")"
    cp -L "$l" "$R$l"
  done
}
add_file() {  # SRC [DEST]
  local src=$1 dest=${2:-/bin/$(basename "$1")}
  mkdir -p "$R$(dirname "$dest")"
  cp -L "$src" "$R$dest"
  add_libs "$src"
  echo "    + $dest"
}
for b in zusd zufs zufs-testclient; do
  [ -x "$REPO/target/release/$b" ] && add_file "$REPO/target/release/$b"
done
for p in nullfs pmemfs; do
  for d in "$REPO/target/release/plugins" "$REPO/target/release"; do
    [ -f "$d/lib$p.so" ] && { add_file "$d/lib$p.so" "/lib/zufs/plugins/lib$p.so"; break; }
  done
done
for f in ${ZUFS_GUEST_FILES:-}; do add_file "${f%%:*}" $([ "$f" != "${f#*:}" ] && echo "${f#*:}"); done

echo "$TIMEOUT" > "$R/etc/zufs-timeout"
cat > "$R/init" <<'EOF'
#!/bin/sh
# PID 1 of the test guest: mount, run /tests/*.sh with a watchdog, count, off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
echo 1 > /proc/sys/kernel/sysrq
echo; echo "GUEST: up at $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus"
T=$(cat /etc/zufs-timeout)
(
  sleep "$T"
  echo "GUEST: watchdog: tests still running after ${T}s; blocked and all tasks:"
  echo w > /proc/sysrq-trigger
  echo t > /proc/sysrq-trigger
  dmesg | tail -n 600
  echo "GUEST: watchdog: power off"
  poweroff -f
) &
WD=$!
for t in /tests/*.sh; do
  echo "GUEST: running $t"
  sh "$t" 2>&1
  rc=$?
  # a script that died half-way fails, whatever it printed before
  [ $rc = 0 ] || echo "TEST script_${t#/tests/}_exit_status ... FAILED: exit $rc"
done | tee /tmp/tests.log
pass=$(grep -c '^TEST .* \.\.\. ok$' /tmp/tests.log)
fail=$(grep -c '^TEST .* \.\.\. FAILED' /tmp/tests.log)
if [ "$fail" != 0 ]; then
  echo "GUEST: failed:"; grep '^TEST .* \.\.\. FAILED' /tmp/tests.log
  echo "GUEST: kernel log:"; dmesg | tail -n 80
fi
kill "$WD" 2>/dev/null
echo "GUEST: done at $(cut -d' ' -f1 /proc/uptime)s"
echo "$pass passed, $fail failed"
poweroff -f
EOF
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$B/initramfs.cpio.gz"
echo "    $(du -h "$B/initramfs.cpio.gz" | cut -f1) initramfs"

# ---- boot ------------------------------------------------------------------
if [ "${NO_BOOT:-0}" = 1 ]; then
  { declare -p QEMU; echo "VMLINUZ=$VMLINUZ"; echo "INITRD=$B/initramfs.cpio.gz"; } > "$W/guest-boot.env"
  step "NO_BOOT=1: boot with $W/guest-boot.env"
  exit 0
fi
CMDLINE="console=ttyS0 loglevel=4 memmap=$PMEM panic=-1 oops=panic panic_on_warn=1"
CMDLINE+=" hung_task_timeout_secs=10 hung_task_panic=1 softlockup_panic=1"
if [ "${GUEST_DEBUG:-1}" = 1 ]; then
  CMDLINE+=" slub_debug=FZPU page_poison=1"
else
  CMDLINE+=" clocksource=tsc tsc=reliable"
fi
step "boot the guest (TCG, $SMP cpus, $MEM)"
B0=$(date +%s%N)
set +e
timeout $((TIMEOUT + 120)) "${QEMU[@]}" -accel tcg,thread=multi -cpu max -M q35 -m "$MEM" -smp "$SMP" \
  -kernel "$VMLINUZ" -initrd "$B/initramfs.cpio.gz" -append "$CMDLINE" \
  -nographic -no-reboot -nic none </dev/null 2>&1 | tr -d '\r' | tee "$W/boot.log" \
  | grep -aE --line-buffered '^GUEST:|^TEST|^fake-zusd|^[0-9]+ passed|Kernel panic|BUG:|WARNING:|Oops|Call Trace|zufs'
QRC=${PIPESTATUS[0]}
set -e
step "guest ran $(el "$B0") (qemu rc $QRC); serial log: $W/boot.log"

LINE=$(grep -aE '^[0-9]+ passed, [0-9]+ failed$' "$W/boot.log" | tail -1 || true)
[ -n "$LINE" ] || die "the guest printed no result line (build, boot, panic or timeout: see $W/boot.log)"
echo "$LINE"
P=${LINE%% passed*}
F=${LINE#*passed, }; F=${F%% failed*}
[ "$F" = 0 ] && [ "$P" -gt 0 ] || die "$LINE (serial log: $W/boot.log)"
step "all guest tests passed; serial log: $W/boot.log"
