//! Fuzz target `fuse_decode`: see `zufs_fuzz_harness::fuse` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zufs_fuzz_harness::fuse::run(data));
