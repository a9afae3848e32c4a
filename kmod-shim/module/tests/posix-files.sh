# SPDX-License-Identifier: GPL-2.0
#
# posix-files.sh - sourced by tests/zusd-guest-test.sh and
# tests/dax-guest-test.sh (bash, with W, REPO and HERE set): adds to
# ZUFS_GUEST_FILES what tests/zusd-posix.sh needs in the guest: python3 with
# the stdlib modules tests/scripts/fs_semantics.py imports (found by
# importing them here, -S as in the guest) under the guest's /lib/python3.X
# (PYTHONHOME=/ there), the checks themselves and zusd-posix.sh under
# /tests/lib, the host tmpfs's answers to the xattrs check (6.1's tmpfs has
# no user xattrs), setfacl/getfacl, and mke2fs for the ext4 reference of the
# checks that open O_DIRECT.

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
  ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $HERE/zusd-posix.sh:/tests/lib/zusd-posix.sh"
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
# mke2fs for the ext4 reference (guest-test.sh packs ext4 and brd as modules);
# not /bin/mke2fs: that is a link to busybox, which the copy would overwrite
command -v mke2fs >/dev/null && ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $(command -v mke2fs):/lib/zufs/bin/mke2fs"
for b in setfacl getfacl; do
  command -v $b >/dev/null && ZUFS_GUEST_FILES="$ZUFS_GUEST_FILES $(command -v $b)"
done
export ZUFS_GUEST_FILES
