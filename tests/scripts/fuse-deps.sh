#!/usr/bin/env bash
# Installs what the FUSE bridge tests and benchmark need on a fresh Debian/Ubuntu machine (root):
# fuse3 (fusermount3, /dev/fuse userspace), fio, bindfs (classic FUSE baseline), sqlite3, git,
# the pjdfstest Rust rewrite, and the users pjdfstest switches to (nobody/nogroup, tests).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
pkgs=(fuse3 fio bindfs sqlite3 git acl util-linux coreutils tar binutils)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
if ! command -v pjdfstest >/dev/null; then
    cargo install pjdfstest --locked --version 0.2.2
fi
getent group nogroup >/dev/null || $SUDO groupadd -g 65534 nogroup
id nobody >/dev/null 2>&1 || $SUDO useradd -u 65534 -g nogroup -M -s /usr/sbin/nologin nobody
id tests >/dev/null 2>&1 || $SUDO useradd -U -M tests
# fusectl lets the tests abort a hung FUSE connection.
mountpoint -q /sys/fs/fuse/connections || $SUDO mount -t fusectl none /sys/fs/fuse/connections || true
test -e /dev/fuse || { echo "fuse-deps: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
echo "fuse-deps: ok"
