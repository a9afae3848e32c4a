#!/usr/bin/env bash
# The main job: set up, build, create a simulated pmem device in /dev/shm, start zusd with the
# plugins, mount, run a short workload and print the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

echo "== build (release) =="
cargo build --release --workspace --all-targets
stage_plugins

work="$(mktemp -d /tmp/zufs-main.XXXXXX)"
sock="$work/zusd.sock"
zusd_pid=""
cleanup() {
    [ -n "$zusd_pid" ] && kill "$zusd_pid" 2>/dev/null && wait "$zusd_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== start zusd (plugins: $(ls "$ZUFS_PLUGINS" | tr '\n' ' ')) =="
"$ZUFS_BIN/zusd" --plugins "$ZUFS_PLUGINS" --socket "$sock" 2>"$work/zusd.log" &
zusd_pid=$!
for _ in $(seq 100); do grep -q "zusd ready" "$work/zusd.log" 2>/dev/null && break; sleep 0.1; done
grep "zusd ready" "$work/zusd.log" || { cat "$work/zusd.log"; exit 1; }

echo "== workload: nullfs mounted, 4 client threads, every reply checked =="
"$ZUFS_BIN/zufs-testclient" --socket "$sock" ops --threads 4 --iters 2000
"$ZUFS_BIN/zufs-testclient" --socket "$sock" status | head -c 2000; echo

echo "== channel benchmark (NOOP round trip vs raw futex ping-pong) =="
ZUFS_BENCH_ITERS="${ZUFS_BENCH_ITERS:-50000}" cargo bench -q -p zufs-tests --bench channel
