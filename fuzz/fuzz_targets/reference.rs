//! cargo-fuzz target: `dependency_proxy_fuzz::check_reference` on every input libFuzzer makes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dependency_proxy_fuzz::check_reference(data));
