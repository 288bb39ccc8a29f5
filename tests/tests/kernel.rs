//! The kernel crossprof runs on (issue #17): what it says before loading
//! anything on a kernel that lacks what a mode needs, the frame-pointer walk it
//! falls back to where the other walks would not load, and every program's
//! budget (stack and instructions), checked here so that a change that would
//! break Linux 6.1 or 6.12 fails on this kernel too. The programs themselves
//! run on 6.1 and 6.12 in `cargo xtask vmtest`.
//!
//! A kernel without a feature is played by `CROSSPROF_ASSUME_MISSING` (the
//! preflight believes the kernel lacks the features it names) and, for BTF, by
//! `CROSSPROF_BTF` pointing nowhere.

use std::{path::Path, process::Command, time::Duration};

use crossprof_tests::{
    Go, GoBuild, Guard, Run, bpf_programs_of, count_where, crossprof_bin, emulated, finish,
    fixture_secs, native_fixture, out_dir, output_within, read_folded, read_summary,
    spawn_crossprof, wait_for_link,
};

const LIMIT: Duration = Duration::from_secs(120);

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `uname -r`.
fn release() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `crossprof ARGS` with `env`.
fn crossprof(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(crossprof_bin());
    cmd.args(args).envs(env.iter().copied());
    output_within(&mut cmd, LIMIT)
}

/// Records the frame-pointer C chain for 3 s on a kernel that lacks what
/// `env` says: the chain is whole in >= 80% of samples, the summary says
/// how stacks were walked and what the kernel lacks, and one note says so.
fn assert_frame_pointer_run(name: &str, env: &[(&str, &str)], missing: &str) {
    let chain = native_fixture("chain");
    let dir = out_dir(name);
    let run = crossprof(env, &["record", "-o", s(&dir), "--", s(&chain), "3"]);
    assert!(run.status.success(), "{name}: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (hit, all) = count_where(&stacks, "chain", |st| {
        st.contains_chain(&["main", "outer", "middle", "hot"])
    });
    assert!(all >= 150, "{name}: only {all} samples");
    assert!(
        hit * 100 >= all * 80,
        "{name}: main;outer;middle;hot in {hit} of {all}:\n{stacks:#?}"
    );
    let summary = read_summary(&dir);
    assert_eq!(summary["kernel"]["walk"], "frame pointers only", "{name}");
    assert_eq!(summary["kernel"]["release"], release().as_str(), "{name}");
    let lacks: Vec<&str> = summary["kernel"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert!(
        lacks.iter().any(|m| m.contains(missing)),
        "{name}: {lacks:?}"
    );
    // The rules walk never ran: the frame-pointer program was loaded instead.
    assert_eq!(summary["counters"]["native_unwinds"], 0, "{name}");
    let notes: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("frame pointers only"))
        .collect();
    assert_eq!(notes.len(), 1, "{name}: {}", run.stderr);
    assert!(notes[0].contains(missing), "{name}: {}", notes[0]);
}

/// Ubuntu 22.04's 5.15 has no `bpf_loop`: cpu profiles by frame pointers.
#[test]
fn a_kernel_without_bpf_loop_samples_by_frame_pointers_and_says_so() {
    assert_frame_pointer_run(
        "kernel_no_bpf_loop",
        &[("CROSSPROF_ASSUME_MISSING", "bpf_loop")],
        "the bpf_loop helper (Linux 5.17)",
    );
}

/// A kernel built without BTF: cpu profiles by frame pointers, modes that
/// need BTF are refused before anything is loaded, naming what runs.
#[test]
fn a_kernel_without_btf_samples_by_frame_pointers_and_refuses_off_cpu() {
    let no_btf = [("CROSSPROF_BTF", "/nonexistent/vmlinux")];
    assert_frame_pointer_run("kernel_no_btf", &no_btf, "kernel BTF");
    let dir = out_dir("kernel_no_btf_offcpu").join("out");
    let run = crossprof(
        &no_btf,
        &["record", "--mode", "offcpu", "-o", s(&dir), "--", "true"],
    );
    assert_refused(
        &run,
        &dir,
        &[
            "--mode offcpu needs kernel BTF (CONFIG_DEBUG_INFO_BTF), which Linux has from 5.4",
            &format!("this kernel is {}", release()),
            "what runs here: cpu (frame pointers only), goblock",
        ],
    );
}

/// A kernel older than 5.18 (sched_switch without `prev_state`): off-CPU
/// modes are refused in one line, before anything is written.
#[test]
fn off_cpu_on_a_kernel_without_it_is_refused_in_one_line() {
    let env = [("CROSSPROF_ASSUME_MISSING", "sched_switch_prev_state")];
    for (mode, what) in [("offcpu", "--mode offcpu"), ("wall", "--mode wall")] {
        let dir = out_dir(&format!("kernel_refused_{mode}")).join("out");
        let run = crossprof(
            &env,
            &["record", "--mode", mode, "-o", s(&dir), "--", "true"],
        );
        assert_refused(
            &run,
            &dir,
            &[
                &format!(
                    "{what} needs sched_switch's prev_state argument, which Linux has from 5.18"
                ),
                &format!("this kernel is {}", release()),
                "what runs here: cpu, goblock, --go-states, --group-by trace",
            ],
        );
    }
    // The agent too.
    let dir = out_dir("kernel_refused_agent").join("store");
    let run = crossprof(
        &env,
        &[
            "agent",
            "--off-cpu",
            "--dir",
            s(&dir),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_refused(
        &run,
        &dir,
        &["crossprof agent (--mode wall) needs sched_switch's prev_state argument"],
    );
}

/// Exit 2, one line with every one of `needles`, no output folder.
fn assert_refused(run: &Run, dir: &Path, needles: &[&str]) {
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {}", run.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "{:?} lacks {n:?}", lines[0]);
    }
    assert!(!dir.exists(), "{} written on a refusal", dir.display());
}

/// Every program loads here within the budget that also fits Linux 6.1 and
/// 6.12: each call chain's stack (the verifier sums a chain's frames, 512
/// bytes at most before 6.13's private stacks) and the instructions the
/// verifier processes (6.1 and 6.12 process ~2.4x this kernel's count for the
/// sampler, under the 1M limit everywhere only with room to spare).
#[test]
fn every_program_loads_within_the_budget_of_every_kernel() {
    let run = crossprof(&[], &["check", "--load", "--json"]);
    assert!(run.status.success(), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["release"], release().as_str());
    let programs = report["programs"].as_array().unwrap();
    assert_eq!(programs.len(), 14, "{programs:#?}");
    for p in programs {
        let name = p["name"].as_str().unwrap();
        assert!(p["refused"].is_null(), "{name} refused: {}", p["refused"]);
        let stack = p["stack"].as_u64().unwrap();
        assert!(
            stack <= 480,
            "{name}: stack {stack} bytes, budget 480 (limit 512)"
        );
        let insns = p["verified_insns"].as_u64().unwrap();
        let budget = match name {
            "cpu_sample" | "cpu_sample_runtimes" | "off_cpu_start" | "off_cpu_end" => 150_000,
            _ => 20_000,
        };
        assert!(
            insns <= budget,
            "{name}: {insns} instructions verified, budget {budget}"
        );
    }
    // The native sampler is the runtimes' without their walks: verified in
    // well under what the whole costs (what a native run saves).
    let insns = |name: &str| {
        programs
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["verified_insns"].as_u64())
            .unwrap()
    };
    assert!(
        insns("cpu_sample") * 4 < insns("cpu_sample_runtimes") * 3,
        "cpu_sample {} instructions, cpu_sample_runtimes {}",
        insns("cpu_sample"),
        insns("cpu_sample_runtimes")
    );
    // Every mode runs here.
    let modes: Vec<&str> = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert_eq!(
        modes,
        [
            "cpu",
            "offcpu",
            "wall",
            "goblock",
            "--go-states",
            "--group-by trace"
        ]
    );
}

/// `cpu_sample_runtimes`, as the kernel keeps its name (15 bytes).
const RUNTIMES_PROGRAM: &str = "cpu_sample_runt";

/// Runs `crossprof ARGS` to its end, listing the programs it holds every
/// 50 ms from its first attach on (the kernel's word): every program it
/// held at some point of the run.
fn programs_while_recording(args: &[&str]) -> (Run, Vec<String>) {
    let mut rec = spawn_crossprof(args);
    wait_for_link(rec.pid(), "perf", Duration::from_secs(30));
    let mut programs = Vec::new();
    while rec.0.try_wait().ok().flatten().is_none() {
        for p in bpf_programs_of(rec.pid()) {
            if !programs.contains(&p) {
                programs.push(p);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (finish(rec, LIMIT), programs)
}

/// Issue #21 (load only what a run needs): a cpu run of a native program
/// never verifies the Go and .NET walks. The kernel holds the native sampler
/// and the `mmap` programs for it, not the runtimes' sampler, nor an
/// off-CPU, HTTP or goroutine-state program; the summary says the runtime
/// walks were not loaded and what the loads cost; the chain is whole.
#[test]
fn a_native_cpu_run_loads_no_runtime_walk() {
    let chain = native_fixture("chain");
    let dir = out_dir("kernel_native_load");
    let (run, programs) =
        programs_while_recording(&["record", "-q", "-o", s(&dir), "--", s(&chain), "2"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        programs.iter().any(|p| p == "cpu_sample"),
        "no sampler loaded: {programs:?}"
    );
    for absent in [
        RUNTIMES_PROGRAM,
        "off_cpu_start",
        "off_cpu_end",
        "http_sys_exit",
        "go_casgstatus",
    ] {
        assert!(
            !programs.iter().any(|p| p == absent),
            "{absent} loaded for a native cpu run: {programs:?}"
        );
    }
    let summary = read_summary(&dir);
    assert_eq!(summary["kernel_load"]["runtime_walks"], "not_loaded");
    let ms = summary["kernel_load"]["verify_cpu_ms"].as_f64().unwrap();
    assert!(ms > 0.0, "verification took no CPU: {summary:#?}");
    assert_eq!(summary["counters"]["runtime_walk_pending"], 0);
    let stacks = read_folded(&dir);
    let (hit, all) = count_where(&stacks, "chain", |st| {
        st.contains_chain(&["main", "outer", "middle", "hot"])
    });
    assert!(all >= 100, "only {all} samples");
    assert!(hit * 100 >= all * 95, "the chain in {hit} of {all}");
}

/// The other side: a running Go program (`--pid`) has the runtimes' walks
/// loaded before the sampler starts, so not one sample of it goes without
/// them (`runtime_walk_pending` 0) and its busy samples carry their
/// goroutine; the kernel holds the runtimes' sampler.
#[test]
fn a_go_target_has_the_runtime_walks_before_its_first_sample() {
    let go = Go::tested()[0];
    let bin = go.fixture("goroutines", GoBuild::Normal);
    // Long enough under emulation (three times), where crossprof's start on
    // a running Go program (its DWARF read) took 6 s on one host thread.
    let target = Guard(
        Command::new(&bin)
            .args([fixture_secs(6.0).as_str(), "2"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Its goroutines started.
    std::thread::sleep(Duration::from_millis(300));
    let pid = target.pid().to_string();
    let dir = out_dir("kernel_go_load");
    let (run, programs) = programs_while_recording(&[
        "record",
        "-q",
        "-o",
        s(&dir),
        "--group-by",
        "goroutine",
        "--pid",
        &pid,
        "--duration",
        "2",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let summary = read_summary(&dir);
    assert!(
        programs.iter().any(|p| p == RUNTIMES_PROGRAM),
        "no runtime walks loaded for a Go target: {programs:?}; {}; {}; {}",
        summary["kernel_load"],
        summary["counters"],
        run.stderr
    );
    assert_eq!(summary["kernel_load"]["runtime_walks"], "loaded");
    assert_eq!(summary["counters"]["runtime_walk_pending"], 0);
    let stacks = read_folded(&dir);
    let (with_goroutine, _) = count_where(&stacks, "goroutines", |st| {
        st.frames.iter().any(|f| f == "main.busy") && st.frames[1].starts_with("goroutine ")
    });
    let (busy, _) = count_where(&stacks, "goroutines", |st| {
        st.frames.iter().any(|f| f == "main.busy")
    });
    assert!(busy >= 100, "only {busy} busy samples");
    // Under emulation reading the binary's goroutine layout (its DWARF)
    // takes seconds, which the recording may start before (those samples
    // have no goroutine, walks or not: see `go.rs` for commands, whose
    // layout is read before they start).
    if !emulated() {
        assert!(
            with_goroutine * 100 >= busy * 98,
            "{with_goroutine} of {busy} busy samples with their goroutine"
        );
    }
}
