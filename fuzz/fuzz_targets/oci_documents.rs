#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpod_fuzz_targets::oci::oci_documents(data));
