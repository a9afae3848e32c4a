#!/usr/bin/env bash
# pjdfstest through the zufs FUSE bridge on pmemfs, next to kernel tmpfs: every test that passes
# on tmpfs must pass on pmemfs. Needs root and /dev/fuse; installs what it needs.
#   tests/scripts/pjdfstest.sh [--release]
# Prints both summaries and the tests that fail on pmemfs but not on tmpfs; exit 1 if any.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
profile=debug; [ "${1:-}" = "--release" ] && profile=release
"$here/tests/scripts/fuse-deps.sh" >/dev/null
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
(cd "$here" && cargo build --workspace $([ $profile = release ] && echo --release) -q)
bin=$CARGO_TARGET_DIR/$profile
work=$(mktemp -d /tmp/zufs-pjd.XXXXXX)
chmod 0755 "$work"  # pjdfstest switches to other users: they must reach the test dirs
cleanup() {
    set +e
    [ -n "${mnt_done:-}" ] && timeout 30 "$bin/zufs" --socket "$work/zusd.sock" umount -l "$work/mnt"
    mountpoint -q "$work/tmpfs" && umount -l "$work/tmpfs"
    [ -n "${zpid:-}" ] && kill "$zpid" 2>/dev/null && wait "$zpid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/pjd.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML
mkdir -p "$work/tmpfs" "$work/mnt" "$work/plugins"
mount -t tmpfs zufs-pjd "$work/tmpfs"
(cd "$work/tmpfs" && timeout 600 pjdfstest -c "$work/pjd.toml" -p "$work/tmpfs" > "$work/tmpfs.out" 2>&1) || true
cp "$bin/libpmemfs.so" "$work/plugins/"
"$bin/zusd" --plugins "$work/plugins" --socket "$work/zusd.sock" > "$work/zusd.log" 2>&1 &
zpid=$!
for _ in $(seq 100); do [ -S "$work/zusd.sock" ] && break; sleep 0.1; done
export ZUFS_RUN_DIR=$work/run
"$bin/zufs" --socket "$work/zusd.sock" --plugins "$work/plugins" mkfs -t pmemfs --size 512M "$work/pmem.img" >/dev/null
"$bin/zufs" --socket "$work/zusd.sock" mount -t pmemfs "$work/pmem.img" "$work/mnt"
mnt_done=1
chmod 0755 "$work/mnt"
(cd "$work/mnt" && timeout 600 pjdfstest -c "$work/pjd.toml" -p "$work/mnt" > "$work/pmemfs.out" 2>&1) || true
keep=${ZUFS_PJD_KEEP:-}; [ -n "$keep" ] && cp "$work"/*.out "$keep"/
failed() { grep -E ' FAILED$' "$1" | awk '{print $1}' | sort -u; }
echo "tmpfs:  $(grep '^Summary' "$work/tmpfs.out" || echo 'no summary')"
echo "pmemfs: $(grep '^Summary' "$work/pmemfs.out" || echo 'no summary')"
extra=$(comm -13 <(failed "$work/tmpfs.out") <(failed "$work/pmemfs.out"))
if [ -n "$extra" ]; then
    echo "fail on pmemfs but pass on tmpfs:"; echo "$extra" | sed 's/^/  /'
    exit 1
fi
echo "pjdfstest: every test that passes on tmpfs passes on pmemfs through the bridge"
