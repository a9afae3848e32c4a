# Sourced by the scripts: common paths.
ZUFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ZUFS_ROOT/target}"
ZUFS_BIN="$CARGO_TARGET_DIR/release"
ZUFS_PLUGINS="$ZUFS_BIN/plugins"

# Copies every built plugin (.so of each crate under zusfs-plugins/) into one plugin directory.
stage_plugins() {
    mkdir -p "$ZUFS_PLUGINS"
    for d in "$ZUFS_ROOT"/zusfs-plugins/*/; do
        name="$(basename "$d")"
        if [ -f "$ZUFS_BIN/lib$name.so" ]; then
            # A new file renamed over the old one: a running zusd keeps the library it mapped
            # (copying over it in place would change the code under it).
            cp -f "$ZUFS_BIN/lib$name.so" "$ZUFS_PLUGINS/.lib$name.so.new"
            mv -f "$ZUFS_PLUGINS/.lib$name.so.new" "$ZUFS_PLUGINS/lib$name.so"
        fi
    done
}
