//! End to end: real C fixtures, profiled by the real `crossprof` binary on the real
//! kernel. Run as root, one test at a time (`cargo xtask test` does both).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crossprof_tests::{
    count_where, count_with_frame, finish, native_fixture, out_dir, read_folded, read_summary,
    run_crossprof, spawn_crossprof, spinner, wait_for_link,
};

const LIMIT: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The three outputs exist and are whole.
fn assert_outputs_whole(dir: &Path) {
    let svg = std::fs::read_to_string(dir.join("flamegraph.svg")).expect("flamegraph.svg");
    assert!(svg.starts_with("<?xml"), "SVG does not start with <?xml");
    assert!(svg.trim_end().ends_with("</svg>"), "SVG is cut short");
    read_summary(dir); // parses, or panics
    let folded = std::fs::read_to_string(dir.join("profile.folded")).expect("profile.folded");
    assert!(
        folded.is_empty() || folded.ends_with('\n'),
        "folded output is cut short"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn call_chain_is_in_order_in_most_samples() {
    let chain = native_fixture("chain");
    let dir = out_dir("call_chain");
    let run = run_crossprof(
        &[
            "record",
            "--freq",
            "99",
            "-o",
            s(&dir),
            "--",
            s(&chain),
            "3",
        ],
        LIMIT,
    );
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (hit, all) = count_where(&stacks, "chain", |st| {
        st.contains_chain(&["main", "outer", "middle", "hot"])
    });
    // 3 s at 99 Hz is ~297 samples; fewer than half means samples went missing.
    assert!(all >= 150, "only {all} samples of chain in 3 s at 99 Hz");
    assert!(
        hit * 100 >= all * 80,
        "main;outer;middle;hot in {hit} of {all} samples (< 80%):\n{stacks:#?}"
    );
    // Nothing but the command was profiled.
    assert!(
        stacks.iter().all(|st| st.frames[0] == "chain"),
        "{stacks:#?}"
    );
    let summary = read_summary(&dir);
    assert_eq!(summary["samples"].as_u64(), Some(all));
    assert_eq!(summary["lost"].as_u64(), Some(0));
    assert_eq!(summary["command_exit_status"].as_i64(), Some(0));
    let svg = std::fs::read_to_string(dir.join("flamegraph.svg")).unwrap();
    assert!(
        svg.contains("<title>hot ("),
        "hot is not a frame of the SVG"
    );
}

#[test]
fn kernel_frames_sit_on_top_of_user_frames() {
    let fixture = native_fixture("syscalls");
    let dir = out_dir("kernel_frames");
    let run = run_crossprof(&["record", "-o", s(&dir), "--", s(&fixture), "2"], LIMIT);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let is_kernel = |f: &String| f.ends_with("_[k]");
    // In every stack, once a kernel frame appears, every frame after it is kernel.
    for st in &stacks {
        if let Some(first) = st.frames.iter().position(is_kernel) {
            assert!(
                st.frames[first..].iter().all(is_kernel),
                "user frame above kernel: {st:?}"
            );
            assert!(first >= 1, "no user frame under the kernel frames: {st:?}");
        }
    }
    // The fixture spends most of its time in read(2) of /dev/zero: its samples show
    // the user chain and then the kernel's read path.
    let (hit, all) = count_where(&stacks, "syscalls", |st| {
        let Some(k) = st.frames.iter().position(is_kernel) else {
            return false;
        };
        st.frames[..k].ends_with(&["main".to_owned(), "syscall_loop".to_owned()])
            && st.frames[k..].iter().any(|f| f.contains("read"))
    });
    assert!(all >= 100, "only {all} samples in 2 s at 99 Hz");
    assert!(
        hit * 100 >= all * 60,
        "main;syscall_loop;<kernel read path> in {hit} of {all}:\n{stacks:#?}"
    );
    // pprof's first mapping is the program, though most leaves are in the
    // kernel: `go tool pprof` names the profile's binary by it (issue #20:
    // rclone's showed `File: [kernel.kallsyms]`).
    let top = crossprof_tests::go_tool_pprof(&["-top", s(&dir.join("profile.pb.gz"))]);
    assert!(top.contains("File: syscalls"), "{top}");
}

#[test]
fn pid_filter_excludes_other_busy_processes() {
    let target = spinner(6.0, "xp-target");
    let _other = spinner(6.0, "xp-other");
    let dir = out_dir("pid_filter");
    let pid = target.pid().to_string();
    let run = run_crossprof(
        &["record", "--pid", &pid, "--duration", "2", "-o", s(&dir)],
        LIMIT,
    );
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (spin, all) = count_with_frame(&stacks, "xp-target", "spin");
    assert!(all >= 100, "only {all} samples of the target in 2 s");
    assert!(spin * 100 >= all * 90, "spin in {spin} of {all}");
    assert!(
        stacks.iter().all(|st| st.frames[0] == "xp-target"),
        "samples of other processes: {:?}",
        stacks
            .iter()
            .map(|st| &st.frames[0])
            .collect::<std::collections::BTreeSet<_>>()
    );
    let summary = read_summary(&dir);
    let procs = summary["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0]["pid"].as_u64(), Some(u64::from(target.pid())));
}

#[test]
fn whole_system_sees_busy_processes() {
    let _busy = spinner(4.0, "xp-anyone");
    let dir = out_dir("whole_system");
    let run = run_crossprof(&["record", "--duration", "2", "-o", s(&dir)], LIMIT);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (spin, all) = count_with_frame(&stacks, "xp-anyone", "spin");
    assert!(all >= 100, "only {all} samples of a busy process in 2 s");
    assert!(spin * 100 >= all * 90, "spin in {spin} of {all}");
    // The idle task is not profiled unless asked.
    assert!(stacks.iter().all(|st| !st.frames[0].starts_with("swapper")));
}

#[test]
fn a_process_that_exits_mid_recording_is_still_symbolized() {
    let mut short = spinner(1.0, "xp-short");
    let _long = spinner(5.0, "xp-long"); // keeps the recording busy after xp-short exits
    let dir = out_dir("exiting");
    let rec = spawn_crossprof(&["record", "--duration", "3", "-o", s(&dir)]);
    assert!(short.wait_for(Duration::from_secs(10)).success());
    let run = finish(rec, LIMIT);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (named, all) = count_where(&stacks, "xp-short", |st| {
        st.contains_chain(&["main", "spin"])
    });
    assert!(all >= 20, "only {all} samples of the exiting process");
    assert!(
        named * 100 >= all * 90,
        "main;spin named in {named} of {all}:\n{stacks:#?}"
    );
}

/// Processes that live 15 ms, started one after another during a
/// whole-system recording (no target: no exec is announced): the first
/// sample of each wakes crossprof, which reads the process while it lives,
/// so >= 90% of their samples have a user frame named (about a third
/// before: a process gone by the next drain had only `[unknown]` frames),
/// and `main;burn` is where most of their time is (on the host; under
/// emulation the dynamic loader takes a large share of a short run).
#[test]
fn processes_that_live_milliseconds_are_named_in_a_whole_system_recording() {
    let brief = native_fixture("brief");
    let dir = out_dir("whole_system_brief");
    let rec = spawn_crossprof(&["record", "--freq", "999", "--duration", "4", "-o", s(&dir)]);
    wait_for_link(rec.pid(), "perf", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    // Under emulation (the VM tier) everything is ~10x slower: programs of
    // 60 ms there.
    let ms = if crossprof_tests::emulated() {
        "60"
    } else {
        "15"
    };
    for _ in 0..30 {
        let out = Command::new(&brief).arg(ms).output().unwrap();
        assert!(out.status.success());
        std::thread::sleep(Duration::from_millis(30));
    }
    let run = finish(rec, LIMIT);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    // Unnamed: every user frame `[unknown]` (what a process gone before it
    // was read gets). A few samples at `execve` (the old program's
    // registers) or early in the dynamic loader have one `[unknown]` caller
    // whatever crossprof does.
    let (named, all) = count_where(&stacks, "brief", |st| {
        let user: Vec<&String> = st.frames[1..]
            .iter()
            .take_while(|f| !f.ends_with("_[k]"))
            .filter(|f| !f.starts_with("[truncated"))
            .collect();
        !user.iter().all(|f| *f == "[unknown]")
    });
    let (chain, _) = count_where(&stacks, "brief", |st| st.contains_chain(&["main", "burn"]));
    assert!(all >= 150, "only {all} samples of 30 processes of 15 ms");
    let want = if crossprof_tests::emulated() { 80 } else { 90 };
    assert!(
        named * 100 >= all * want,
        "{named} of {all} samples with a user frame named:\n{stacks:#?}"
    );
    assert!(
        crossprof_tests::emulated() || chain * 2 >= all,
        "main;burn in {chain} of {all}:\n{stacks:#?}"
    );
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let chain = native_fixture("chain");
    let dir = out_dir(name);
    let rec = spawn_crossprof(&["record", "-o", s(&dir), "--", s(&chain), "30"]);
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.pid() as i32, signal) };
    let run = finish(rec, LIMIT);
    // The command got the same signal and crossprof passes its status on.
    assert_eq!(run.status.code(), Some(128 + signal), "{}", run.stderr);
    assert_outputs_whole(&dir);
    let stacks = read_folded(&dir);
    let (hit, all) = count_where(&stacks, "chain", |st| {
        st.contains_chain(&["main", "outer", "middle", "hot"])
    });
    assert!(all >= 100, "only {all} samples before the signal");
    assert!(hit * 100 >= all * 80, "chain in {hit} of {all}");
    let summary = read_summary(&dir);
    assert_eq!(
        summary["command_exit_status"].as_i64(),
        Some(i64::from(128 + signal))
    );
}

#[test]
fn sigint_still_writes_every_output() {
    stops_cleanly_on(libc::SIGINT, "sigint");
}

#[test]
fn sigterm_still_writes_every_output() {
    stops_cleanly_on(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_without_a_command_exits_zero_with_outputs() {
    let target = spinner(10.0, "xp-sig");
    let dir = out_dir("sigint_pid");
    let rec = spawn_crossprof(&["record", "--pid", &target.pid().to_string(), "-o", s(&dir)]);
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.pid() as i32, libc::SIGINT) };
    let run = finish(rec, LIMIT);
    assert!(run.status.success(), "{}", run.stderr);
    assert_outputs_whole(&dir);
    let (_, all) = count_where(&read_folded(&dir), "xp-sig", |_| true);
    assert!(all >= 100, "only {all} samples");
    drop(target);
}

#[test]
fn exit_status_of_the_command_is_passed_on() {
    let dir = out_dir("exit_status");
    let run = run_crossprof(
        &["record", "-q", "-o", s(&dir), "--", "sh", "-c", "exit 7"],
        LIMIT,
    );
    assert_eq!(run.status.code(), Some(7), "{}", run.stderr);
    assert_outputs_whole(&dir);
    assert_eq!(read_summary(&dir)["command_exit_status"].as_i64(), Some(7));
}

#[test]
fn duration_ending_first_stops_the_command() {
    let chain = native_fixture("chain");
    let dir = out_dir("duration_first");
    let started = std::time::Instant::now();
    let run = run_crossprof(
        &[
            "record",
            "--duration",
            "1.5",
            "-o",
            s(&dir),
            "--",
            s(&chain),
            "30",
        ],
        LIMIT,
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the command was not stopped"
    );
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        run.stderr
    );
    assert_outputs_whole(&dir);
}

#[test]
fn idle_cpus_are_profiled_only_when_asked() {
    let dir = out_dir("include_idle");
    let run = run_crossprof(
        &[
            "record",
            "--duration",
            "1.5",
            "--include-idle",
            "-o",
            s(&dir),
        ],
        LIMIT,
    );
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    // A mostly idle machine: the idle tasks of all CPUs (pid 0) hold samples, under
    // one root.
    let stacks = read_folded(&dir);
    let (_, idle) = count_where(&stacks, "swapper", |_| true);
    assert!(!stacks.iter().any(|st| st.frames[0].starts_with("swapper/")));
    assert!(idle > 0, "no idle samples with --include-idle");
    let summary = read_summary(&dir);
    assert_eq!(summary["counters"]["idle_skipped"].as_u64(), Some(0));
}

/// The chain fixture stripped of every symbol, its symbols in a separate debug
/// file named by `.gnu_debuglink` (what distributions and `dotnet-symbol` ship),
/// in `debug_dir` or next to the binary. Returns the stripped binary.
fn split_debug_chain(name: &str, debug_dir: Option<&Path>) -> PathBuf {
    let full = native_fixture("chain");
    let dir = out_dir(name);
    let bin = dir.join("chain");
    let debug = debug_dir.unwrap_or(&dir).join("chain.debug");
    let tool = |args: &[&std::ffi::OsStr]| {
        let st = Command::new(args[0])
            .args(&args[1..])
            .status()
            .expect("binutils");
        assert!(st.success(), "{args:?}");
    };
    tool(&[
        "objcopy".as_ref(),
        "--only-keep-debug".as_ref(),
        full.as_os_str(),
        debug.as_os_str(),
    ]);
    tool(&[
        "strip".as_ref(),
        "--strip-all".as_ref(),
        "-o".as_ref(),
        bin.as_os_str(),
        full.as_os_str(),
    ]);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    tool(&["objcopy".as_ref(), link.as_ref(), bin.as_os_str()]);
    bin
}

/// Records `bin` for 2 s with `extra` flags; the share of its samples with the
/// named chain.
fn named_chain_share(bin: &Path, name: &str, extra: &[&str]) -> (u64, u64) {
    let dir = out_dir(name);
    let mut args = vec!["record", "-q", "-o", s(&dir)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", s(bin), "2"]);
    let run = run_crossprof(&args, LIMIT);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    count_where(&read_folded(&dir), "chain", |st| {
        st.contains_chain(&["main", "outer", "middle", "hot"])
    })
}

#[test]
fn stripped_binaries_are_named_from_separate_debug_files() {
    // Next to the binary: found through the mapped path.
    let bin = split_debug_chain("split_debug_here", None);
    let (hit, all) = named_chain_share(&bin, "split_debug_here_rec", &[]);
    assert!(all >= 100 && hit * 100 >= all * 80, "{hit} of {all}");

    // Elsewhere: found with --debug-dir; without it the frames stay unnamed, so
    // the names above did come from the debug file.
    let symbols = out_dir("split_debug_symbols");
    let bin = split_debug_chain("split_debug_there", Some(&symbols));
    let moved = symbols.join("chain.debug");
    let (hit, all) = named_chain_share(&bin, "split_debug_none", &[]);
    assert_eq!(hit, 0, "named without its debug file? ({all} samples)");
    let dirs = symbols.to_str().unwrap();
    assert!(moved.exists());
    let (hit, all) = named_chain_share(&bin, "split_debug_dir", &["--debug-dir", dirs]);
    assert!(all >= 100 && hit * 100 >= all * 80, "{hit} of {all}");
}
