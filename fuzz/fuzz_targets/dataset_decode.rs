//! See `detector_fuzz::dataset_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::dataset_decode(data));
