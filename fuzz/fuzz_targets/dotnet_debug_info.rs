#![no_main]
//! `dotnet_debug_info` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("dotnet_debug_info", data));
});
