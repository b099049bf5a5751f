#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpod_fuzz_targets::cri_log::cri_log(data));
