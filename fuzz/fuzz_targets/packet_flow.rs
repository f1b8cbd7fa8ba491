//! See `detector_fuzz::packet_flow`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::packet_flow(data));
