#![no_main]
// See sluice::fuzz::auth_scan for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::auth_scan(data));
