#![no_main]
// See sluice::fuzz::decoder_stream for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::decoder_stream(data));
