//! .NET (CoreCLR 8.0.4): JIT-compiled methods named from the runtime's perf map,
//! with W^X on (the default: JIT code runs from `/memfd:doublemapper` mappings).
//!
//! A first step of issue #3: the process is started with `DOTNET_PerfMapEnabled=1`.
//! Turning the perf map on in a running process (diagnostics IPC) and unwinding
//! frameless Tier-1 methods come next.

use std::{path::Path, process::Command};

use crossprof_tests::{
    Run, count_where, crossprof_bin, dotnet_fixture, dotnet8_host, out_dir, read_folded,
    read_summary,
};

fn record_dotnet(name: &str, perf_map: bool) -> (std::path::PathBuf, Run) {
    let dll = dotnet_fixture("chain");
    let host = dotnet8_host();
    let dir = out_dir(name);
    let mut cmd = Command::new(crossprof_bin());
    cmd.args(["record", "-q", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(&host)
        .arg(&dll)
        .arg("3")
        .env("DOTNET_ROOT", host.parent().unwrap());
    if perf_map {
        cmd.env("DOTNET_PerfMapEnabled", "1");
    }
    let run: Run = cmd.output().expect("run crossprof").into();
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    (dir, run)
}

fn dotnet_process(dir: &Path) -> serde_json::Value {
    let summary = read_summary(dir);
    summary["processes"][0].clone()
}

#[test]
fn jit_methods_are_named_from_the_perf_map_under_wx() {
    let (dir, _) = record_dotnet("dotnet_perfmap", true);
    let stacks = read_folded(&dir);
    let (named, all) = count_where(&stacks, "dotnet", |st| {
        st.contains_chain(&["Program::Outer_[j]", "Program::Hot_[j]"])
    });
    assert!(
        all >= 150,
        "only {all} samples of the .NET process in 3 s at 99 Hz"
    );
    assert!(
        named * 100 >= all * 80,
        "Outer;Hot named in {named} of {all}:\n{stacks:#?}"
    );
    // Every tier of a method is one frame: no tier or signature leaks into names.
    assert!(
        stacks
            .iter()
            .flat_map(|s| &s.frames)
            .all(|f| !f.contains("[OptimizedTier1]") && !f.contains("(int64)")),
        "tier or signature in a frame name"
    );
    let p = dotnet_process(&dir);
    assert_eq!(p["runtime"].as_str(), Some("dotnet 8.0.4"), "{p}");
    // The runtime leaves its perf map behind: do not let it pile up in /tmp.
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", p["pid"]));
}

#[test]
fn without_a_perf_map_jit_frames_are_unknown_and_a_note_says_why() {
    // A perf map left in /tmp by an earlier process with the same pid is older than
    // this process and is ignored (unit-tested in dotnet::perfmap).
    let (dir, run) = record_dotnet("dotnet_no_perfmap", false);
    let stacks = read_folded(&dir);
    assert!(
        stacks
            .iter()
            .flat_map(|s| &s.frames)
            .all(|f| !f.ends_with("_[j]")),
        "managed frames named without a perf map"
    );
    let note = "without a perf map, so its JIT frames are [unknown]: start it with DOTNET_PerfMapEnabled=1";
    assert!(run.stderr.contains(note), "{}", run.stderr);
    let summary = read_summary(&dir);
    assert!(
        summary["notes"][0].as_str().unwrap_or("").contains(note),
        "{summary}"
    );
}
