#![no_main]
//! `eh_frame` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("eh_frame", data));
});
