//! Replays every input kept in `fuzz/regressions/<target>/` (crashes the fuzzers found, after
//! their fix) and every seed in `fuzz/seeds/<target>/` through the fuzz targets' code, without
//! libFuzzer: a plain `cargo test` in `fuzz/` (scripts/test.sh runs it).

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    v.sort();
    v
}

fn replay(kind: &str, target: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(kind).join(target);
    let files = inputs(&dir);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        eprintln!("{target}: {}", f.display());
        zufs_fuzz_harness::run(target, &data);
    }
    files.len()
}

macro_rules! target_tests {
    ($($name:ident => $target:literal),*) => {$(
        #[test]
        fn $name() {
            let r = replay("regressions", $target);
            let s = replay("seeds", $target);
            eprintln!("{}: {r} regression inputs, {s} seeds replayed", $target);
            assert!(s > 0, "no seeds for {}", $target);
        }
    )*};
}

target_tests!(
    dispatch => "dispatch",
    adapter => "adapter",
    pmemfs_image => "pmemfs_image",
    control => "control",
    fuse_decode => "fuse_decode"
);
