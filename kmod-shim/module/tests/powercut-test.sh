#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# powercut-test.sh - a real power cut: pmemfs on a qemu nvdimm whose memory
# is a file on this host (memory-backend-file,share=on), mounted through the
# zufs module with -o dax=. For each cut point N:
#   boot 1  zufs mkfs on the nvdimm's /dev/pmem0 (fsdax), mount, write and
#           fsync files (tests/powercut-io.c: sizes and bytes from SEED); at
#           the console line "PC: fsynced N" qemu is SIGKILLed (no shutdown)
#   host    zufs fsck of the image as the cut left it (reported, not judged:
#           recovery has not run yet)
#   boot 2  same file: mount (recovery runs), every byte of every file whose
#           fsync returned before the cut (the last "PC: fsynced" line seen)
#           is checked, a new file, umount, fsck in the guest
#   host    target/release/zufs fsck of the pmem0 data (the image from the
#           fsdax data offset the guest printed) must find 0 problems
#
#   bash kmod-shim/module/tests/powercut-test.sh      (as root)
#
# Environment: as ../guest-test.sh (ZUFS_KMOD_DIR, OFFLINE, ...), plus
#   CUTS="3 25 80"  cut points (fsynced files before the kill)
#   SEED=1          file sizes and contents
#   SMP=2           guest CPUs
#   NO_BUILD=1      use what target/release holds
#   KEEP_IMG=1      leave $ZUFS_KMOD_DIR/nvdimm.img (the last boot's) behind
#   NOCUT=N         first a boot without a cut: N files written, verified,
#                   verified again after umount and a new zusd (tells a
#                   runtime fault from a recovery one)
#   NOCUT_JUNK=0    that boot without the scratch file (no truncates);
#                   =noappend: the scratch file without O_APPEND;
#                   =notrunc: the scratch file never cut back; =trunc0: cut to 0
#   NOCUT_WINDOW=1  that boot's mount without dax= (the slot windows)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=${ZUFS_KMOD_DIR:-/tmp/zufs-kmod}
mkdir -p "$W/build"
W=$(cd "$W" && pwd)
CUTS=${CUTS-3 25 80}
SEED=${SEED:-1}
SMP=${SMP:-2}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-400}
IMG=$W/nvdimm.img

T0=$(date +%s)
say() { printf '[%4ss] %s\n' $(( $(date +%s) - T0 )) "$*"; }
die() { echo "powercut-test: FAILED: $*" >&2; exit 1; }

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && cargo build --release -p zusd -p nullfs -p pmemfs -p zufs-cli 2>&1 | tail -2 &&
     cargo build --release -p zufs-tests --bin zufs-testclient 2>&1 | tail -2)
fi
ZUFS=$REPO/target/release/zufs
PLUGINS=$REPO/target/release/plugins
[ -d "$PLUGINS" ] || PLUGINS=$REPO/target/release
[ -x "$ZUFS" ] || die "no $ZUFS"
gcc -static -O2 -g -Wall -Wextra -Werror -o "$W/build/powercut-io" "$HERE/powercut-io.c"

# the initramfs: only this test's guest script; booted here, not by guest-test.sh
rc=0
ZUFS_KMOD_DIR=$W NO_BOOT=1 DEFAULT_TESTS=0 PJDFSTEST=off \
  ZUFS_GUEST_FILES="$W/build/powercut-io" ZUFS_GUEST_TESTS="$HERE/guest-powercut.sh" \
  bash "$REPO/kmod-shim/module/guest-test.sh" || rc=$?
[ $rc = 0 ] || exit $rc     # 77: this machine cannot run it
# shellcheck disable=SC1091
. "$W/guest-boot.env"       # QEMU VMLINUZ INITRD

CMDLINE="console=ttyS0 loglevel=4 panic=-1 oops=panic panic_on_warn=1"
CMDLINE+=" hung_task_timeout_secs=10 hung_task_panic=1 softlockup_panic=1"
CMDLINE+=" slub_debug=FZPU page_poison=1"

# one guest at a time on this host: wait for another run's qemu to end
wait_no_qemu() {
  local n=0
  while pgrep qemu >/dev/null; do
    [ $n = 0 ] && say "another qemu is running; waiting"
    n=$((n + 1))
    [ $n -lt 360 ] || die "another qemu ran for 30 minutes"
    sleep 5
  done
}

boot() {  # LOG PHASE-ARG: qemu in the background on the nvdimm image; QPID
  wait_no_qemu
  : >"$1"
  "${QEMU[@]}" -accel tcg,thread=multi -cpu max -machine q35,nvdimm=on \
    -m 2G,slots=2,maxmem=4G -smp "$SMP" \
    -object memory-backend-file,id=mem1,share=on,mem-path="$IMG",size=256M \
    -device nvdimm,id=nv1,memdev=mem1 \
    -kernel "$VMLINUZ" -initrd "$INITRD" -append "$CMDLINE zufs_pc=$2" \
    -nographic -no-reboot -nic none </dev/null >"$1" 2>&1 &
  QPID=$!
}

host_fsck() {  # LOG: fsck the pmem0 data of the image (from the data offset)
  local copy=$W/pmem0.img
  dd if="$IMG" of="$copy" bs=4096 skip=$((OFF / 4096)) count=$((SIZE / 4096)) status=none
  "$ZUFS" fsck -t pmemfs --plugins "$PLUGINS" "$copy" >"$1" 2>&1 || true
  rm -f "$copy"
  grep -q ': 0 problem' "$1"
}

FAIL=0
fail() { echo "TEST $1 ... FAILED: $2"; FAIL=$((FAIL + 1)); }
ok() { echo "TEST $1 ... ok"; }

# wait_qemu's lines on stderr, the last one on stdout. Not `tee /dev/stderr`:
# that opens the file behind stderr anew, and with O_TRUNC, so a caller's
# log (`.ci/run > log 2>&1`) lost everything before the power cut.
wait_qemu_last() {  # LOG
  local out=$W/pc-wait.txt
  wait_qemu "$1" >"$out"
  cat "$out" >&2
  tail -n 1 "$out"
}

wait_qemu() {  # LOG: until qemu ends or BOOT_TIMEOUT; the guest's result line
  local end=$(( $(date +%s) + BOOT_TIMEOUT ))
  while kill -0 "$QPID" 2>/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || { kill -KILL "$QPID"; break; }
    sleep 1
  done
  wait "$QPID" 2>/dev/null || true
  tr -d '\r' <"$1" | grep -aE '^GUEST:|^TEST|^PC:|^[0-9]+ passed|Kernel panic|BUG:|WARNING:' | sed 's/^/    /'
  tr -d '\r' <"$1" | grep -aE '^[0-9]+ passed, [0-9]+ failed$' | tail -1 || true
}

if [ -n "${NOCUT:-}" ]; then
  rm -f "$IMG"
  truncate -s 256M "$IMG"
  say "no cut: $NOCUT files, verify, remount, verify"
  boot "$W/pc-nocut.log" "nocut:$SEED:$NOCUT:$(case ${NOCUT_JUNK:-1} in 0) echo nojunk;; noappend|notrunc|trunc0) echo "$NOCUT_JUNK";; *) echo junk;; esac):$([ "${NOCUT_WINDOW:-0}" = 1 ] && echo window || echo dax)"
  LINE=$(wait_qemu_last "$W/pc-nocut.log")
  case $LINE in
  *" passed, 0 failed") ok "pc_nocut_${NOCUT}_files" ;;
  *) fail "pc_nocut_${NOCUT}_files" "${LINE:-no result line} (log $W/pc-nocut.log)" ;;
  esac
fi

for N in $CUTS; do
  L1=$W/pc-$N-boot1.log
  L2=$W/pc-$N-boot2.log
  rm -f "$IMG"
  truncate -s 256M "$IMG"
  say "cut $N: boot 1 (mkfs, write, fsync; SIGKILL at 'PC: fsynced $N')"
  boot "$L1" "write:$SEED"
  end=$(( $(date +%s) + BOOT_TIMEOUT ))
  cut=0
  while kill -0 "$QPID" 2>/dev/null; do
    if tr -d '\r' <"$L1" | grep -aq "^PC: fsynced $N "; then
      kill -KILL "$QPID"
      cut=1
      break
    fi
    [ "$(date +%s)" -lt "$end" ] || { kill -KILL "$QPID"; break; }
    sleep 0.05
  done
  wait "$QPID" 2>/dev/null || true
  tr -d '\r' <"$L1" | grep -aE '^GUEST:|^TEST|^PC: (layout|writing)|Kernel panic|BUG:|WARNING:' | sed 's/^/    /'
  if [ $cut != 1 ]; then
    fail "pc_cut_${N}_boot1" "no 'PC: fsynced $N' before qemu ended or ${BOOT_TIMEOUT}s (log $L1)"
    continue
  fi
  K=$(tr -d '\r' <"$L1" | sed -n 's/^PC: fsynced \([0-9]*\) .*/\1/p' | tail -1)
  LAYOUT=$(tr -d '\r' <"$L1" | grep -a '^PC: layout' | tail -1)
  OFF=$(echo "$LAYOUT" | sed -n 's/.*data_offset=\([0-9]*\).*/\1/p')
  SIZE=$(echo "$LAYOUT" | sed -n 's/.*size=\([0-9]*\).*/\1/p')
  [ -n "$OFF" ] && [ -n "$SIZE" ] || { fail "pc_cut_${N}_layout" "no 'PC: layout' line"; continue; }
  ok "pc_cut_${N}_killed_after_${K}_fsynced"
  # the fsdax info block sits 4 KiB into the namespace, and the namespace at
  # offset 0 of the file (a label-less nvdimm has no label area)
  if [ "$OFF" != 0 ]; then
    if [ "$(dd if="$IMG" bs=4096 skip=1 count=1 status=none | head -c 15)" = NVDIMM_PFN_INFO ]; then
      ok "pc_cut_${N}_pfn_info_block_at_4k_data_at_$OFF"
    else
      fail "pc_cut_${N}_pfn_info_block" "no NVDIMM_PFN_INFO at 4 KiB of $IMG"
    fi
  fi
  if host_fsck "$W/pc-$N-fsck-cut.log"; then
    say "cut $N: host fsck of the image as cut: clean"
  else
    say "cut $N: host fsck of the image as cut (before recovery): $(grep -a 'problem' "$W/pc-$N-fsck-cut.log" | tail -1)"
  fi

  say "cut $N: boot 2 (recovery, verify files 1..$K)"
  boot "$L2" "verify:$SEED:$K"
  LINE=$(wait_qemu_last "$L2")
  case $LINE in
  *" passed, 0 failed") ok "pc_cut_${N}_boot2_verified_${K}_files" ;;
  *) fail "pc_cut_${N}_boot2" "${LINE:-no result line} (log $L2)" ;;
  esac
  if host_fsck "$W/pc-$N-fsck.log"; then
    ok "pc_cut_${N}_host_fsck_clean"
  else
    fail "pc_cut_${N}_host_fsck" "$(tail -n 3 "$W/pc-$N-fsck.log" | tr '\n' ' ')"
  fi
done
[ "${KEEP_IMG:-0}" = 1 ] || rm -f "$IMG"
say "done: $FAIL failed"
[ $FAIL = 0 ]
