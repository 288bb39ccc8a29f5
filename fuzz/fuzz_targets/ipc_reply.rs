#![no_main]
//! `ipc_reply` of probe-user/src/fuzz.rs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(crossprof::fuzz::run_named("ipc_reply", data));
});
