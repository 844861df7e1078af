#![no_main]
// See sluice::fuzz::copy_text for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::copy_text(data));
