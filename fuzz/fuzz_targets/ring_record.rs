#![no_main]
//! `ring_record` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("ring_record", data));
});
