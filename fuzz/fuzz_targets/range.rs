//! cargo-fuzz target: `dependency_proxy_fuzz::check_range` on every input libFuzzer makes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dependency_proxy_fuzz::check_range(data));
