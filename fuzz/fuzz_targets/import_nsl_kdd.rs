//! See `detector_fuzz::import_nsl_kdd`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::import_nsl_kdd(data));
