//! See `detector_fuzz::import_unsw_nb15`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::import_unsw_nb15(data));
