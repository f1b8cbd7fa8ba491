//! See `detector_fuzz::pcap_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detector_fuzz::pcap_reader(data));
