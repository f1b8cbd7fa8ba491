//! See `detector_fuzz::import_cicflowmeter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::import_cicflowmeter(data));
