//! Fuzz target `pmemfs_image`: see `zufs_fuzz_harness::image` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zufs_fuzz_harness::image::run(data));
