#![no_main]
// See sluice::fuzz::text_value for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::text_value(data));
