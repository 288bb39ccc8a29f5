#![no_main]
//! `ready_to_run` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("ready_to_run", data));
});
