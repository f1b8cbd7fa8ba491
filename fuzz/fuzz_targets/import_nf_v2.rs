//! See `detector_fuzz::import_nf_v2`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::import_nf_v2(data));
