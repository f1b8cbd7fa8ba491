//! See `detector_fuzz::model_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::model_load(data));
