#![no_main]
// See sluice::fuzz::replication_session for the input layout.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::replication_session(data));
