//! Fuzz target `dispatch`: see `zufs_fuzz_harness::dispatch` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zufs_fuzz_harness::dispatch::run(data));
