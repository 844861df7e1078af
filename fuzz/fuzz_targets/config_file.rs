#![no_main]
// See sluice::fuzz::config_file for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::config_file(data));
