#!/usr/bin/env bash
# Installs what building and testing zufs needs on a fresh Debian 12 machine (idempotent).
# Run as root (or with sudo available). Safe to run repeatedly: it only installs what is missing.
set -euo pipefail

need_pkgs=()
for p in build-essential pkg-config fonts-dejavu-core python3 util-linux fuse3 libfuse3-dev fio bindfs sqlite3 git curl ca-certificates procps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

# fusectl lets tests abort a hung FUSE connection instead of hanging CI.
if [ -d /sys/fs/fuse/connections ] && ! mountpoint -q /sys/fs/fuse/connections; then
    mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
fi
echo "setup: ok ($(cargo --version))"
