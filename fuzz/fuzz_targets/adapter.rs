//! Fuzz target `adapter`: see `zufs_fuzz_harness::adapter` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zufs_fuzz_harness::adapter::run(data));
