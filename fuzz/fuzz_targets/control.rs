//! Fuzz target `control`: see `zufs_fuzz_harness::control` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zufs_fuzz_harness::control::run(data));
