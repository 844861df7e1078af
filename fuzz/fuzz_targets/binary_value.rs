#![no_main]
// See sluice::fuzz::binary_value for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::binary_value(data));
