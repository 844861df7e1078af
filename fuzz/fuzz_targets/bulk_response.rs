#![no_main]
// See sluice::fuzz::bulk_response for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::bulk_response(data));
