#![no_main]
//! `kallsyms_cache` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("kallsyms_cache", data));
});
