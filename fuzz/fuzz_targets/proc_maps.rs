#![no_main]
//! `proc_maps` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("proc_maps", data));
});
