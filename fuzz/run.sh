#!/usr/bin/env bash
# Runs one zufs fuzz target for a given time: fuzz/run.sh TARGET SECONDS [libFuzzer args...]
#
# Installs cargo-fuzz if missing (cargo install --locked), builds the target with libFuzzer and
# AddressSanitizer (stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z sanitizer flags),
# runs it on one core over fuzz/corpus/TARGET (kept between runs, not committed) seeded from
# fuzz/seeds/TARGET, and prints the executions and the coverage libFuzzer reached (cov: edges,
# ft: features). A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script.
#
# Targets: dispatch adapter pmemfs_image control fuse_decode (docs/fuzzing.md).
# Environment: ZUFS_FUZZ_SANITIZER (address; none builds faster, for a CI smoke),
# ZUFS_FUZZ_LOG (where libFuzzer's output goes; default fuzz/logs/TARGET.log).
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer args...]}"
secs="${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer args...]}"
shift 2
case "$target" in
dispatch | adapter | control) max_len=16384 ;;
pmemfs_image) max_len=4096 ;;
fuse_decode) max_len=4096 ;;
*)
    echo "unknown target $target (dispatch adapter pmemfs_image control fuse_decode)" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz =="
    cargo install cargo-fuzz --locked
fi
# libFuzzer's C++ runtime is built by the libfuzzer-sys crate.
if ! command -v c++ >/dev/null 2>&1; then
    apt-get install -y g++ >/dev/null
fi

export RUSTC_BOOTSTRAP=1
san="${ZUFS_FUZZ_SANITIZER:-address}"
build=(cargo fuzz build --fuzz-dir fuzz --debug-assertions --sanitizer "$san")
"${build[@]}" "$target"

corpus="fuzz/corpus/$target"
artifacts="fuzz/artifacts/$target"
log="${ZUFS_FUZZ_LOG:-fuzz/logs/$target.log}"
mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
# cargo fuzz builds under CARGO_TARGET_DIR when it is set (scripts/env.sh sets it), else fuzz/target.
tdir="${CARGO_TARGET_DIR:-fuzz/target}"
bin="$tdir/x86_64-unknown-linux-gnu/release/$target"
leaks=1
# The control target's server threads (accept loop, connections) outlive single inputs, and
# LeakSanitizer's check at exit would count a connection thread still running then.
if [ "$target" = control ]; then
    leaks=0
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi

echo "== fuzzing $target for ${secs}s (one core; log: $log) =="
rc=0
# One process, one core (no -jobs/-workers: those fork worker processes).
"$bin" "$corpus" "fuzz/seeds/$target" \
    -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
    -detect_leaks="$leaks" -print_final_stats=1 -artifact_prefix="$artifacts/" "$@" \
    >"$log" 2>&1 || rc=$?

last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$last")
echo "$target: ${execs:-?} executions in ${secs}s (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
if [ "$rc" != 0 ]; then
    echo "== $target FAILED (exit $rc); the end of $log: ==" >&2
    tail -60 "$log" >&2
    ls -l "$artifacts" >&2 || true
    exit "$rc"
fi
