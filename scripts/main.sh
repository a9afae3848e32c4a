#!/usr/bin/env bash
# The main job: set up, build, create a simulated pmem device in /dev/shm, start zusd, mount pmemfs
# through the FUSE bridge, run a short workload on it, then the short scalability table
# (`zufs bench`: fio at 1 and 2 threads against tmpfs, classic FUSE and every zufs path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

echo "== build (release) =="
cargo build --release --workspace --all-targets
stage_plugins

work="$(mktemp -d /tmp/zufs-main.XXXXXX)"
dev="/dev/shm/zufs-main-$$.img"
mnt="$work/mnt"
zufs=("$ZUFS_BIN/zufs" --socket "$work/zusd.sock" --plugins "$ZUFS_PLUGINS")
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && { "${zufs[@]}" umount "$mnt" || umount -l "$mnt"; }
    [ -f "$work/zusd.pid" ] && kill "$(cat "$work/zusd.pid")" 2>/dev/null
    rm -f "$dev"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== zusd (plugins: $(ls "$ZUFS_PLUGINS" | tr '\n' ' ')) =="
"$ZUFS_BIN/zusd" --plugins "$ZUFS_PLUGINS" --socket "$work/zusd.sock" 2>"$work/zusd.log" &
echo $! > "$work/zusd.pid"
for _ in $(seq 100); do grep -q "zusd ready" "$work/zusd.log" 2>/dev/null && break; sleep 0.1; done
grep "zusd ready" "$work/zusd.log"

echo "== mkfs and mount pmemfs on a simulated pmem device ($dev) =="
mkdir -p "$mnt"
"${zufs[@]}" mkfs -t pmemfs --size 1G "$dev"
"${zufs[@]}" mount -t pmemfs "$dev" "$mnt"

echo "== workload: this source tree in, checksums compared, then 3 s of fio 4K randwrite =="
(cd "$ZUFS_ROOT" && find . \( -path "./target*" -o -path "./fuzz/target*" -o -path ./.git -o -path ./bench-out \) -prune -o -type f -print0 \
    | sort -z > "$work/files" && xargs -0 sha256sum < "$work/files" > "$work/sums" \
    && tar --null -T "$work/files" -cf "$work/src.tar")
mkdir "$mnt/src" && tar -C "$mnt/src" -xf "$work/src.tar"
(cd "$mnt/src" && sha256sum --quiet -c "$work/sums") && echo "checksums: all $(wc -l < "$work/sums") files match"
fio --name=main --directory="$mnt" --rw=randwrite --bs=4k --size=64m --direct=1 --sync=1 \
    --ioengine=psync --runtime=3 --time_based --group_reporting | grep -E "write: IOPS=| clat \(" | head -2
"${zufs[@]}" status
"${zufs[@]}" umount "$mnt"
"${zufs[@]}" fsck -t pmemfs "$dev"

echo "== short scalability table (zufs bench) =="
configs=tmpfs,fuse,nullfs-bridge,pmemfs-bridge,preload-channel,preload-dax
if [ -e /sys/module/fuse/parameters/enable_uring ]; then
    configs=tmpfs,fuse,nullfs-bridge,pmemfs-bridge,nullfs-uring,pmemfs-uring,preload-channel,preload-dax
else
    echo "(this kernel has no FUSE over io_uring: the uring rows are left out)"
fi
"${zufs[@]}" bench --threads 1,2 --runtime "${ZUFS_MAIN_RUNTIME:-3}" --file-mib 32 --configs "$configs" \
    --out "$ZUFS_ROOT/bench-out"
