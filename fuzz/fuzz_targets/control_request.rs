//! See `detector_fuzz::control_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::control_request(data));
