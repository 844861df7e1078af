#![no_main]
// See sluice::fuzz::mapping_file for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::mapping_file(data));
