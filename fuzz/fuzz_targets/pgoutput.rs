#![no_main]
// See sluice::fuzz::pgoutput_message for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::pgoutput_message(data));
