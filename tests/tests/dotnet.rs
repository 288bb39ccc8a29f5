//! .NET (CoreCLR 8.0.4 and 3.1.23; 10.0.0 for naming from memory):
//! JIT-compiled methods named from the runtime's memory (the default) or its
//! perf map (`--dotnet-perf-map`) with W^X on (the default: JIT code runs from
//! `/memfd:doublemapper` mappings), unwound through frameless and OSR methods,
//! ReadyToRun code, GC pauses, threads.

use std::path::Path;

use crossprof_tests::{
    Dotnet, Guard, Run, count_where, emulated, finish, go_tool_pprof, out_dir, read_folded,
    read_summary, record_target, run_crossprof, spawn_crossprof, wait_for_link, workspace_root,
};

/// Records the chain fixture on `runtime`, started with `env` as its only
/// DOTNET_*/COMPlus_* settings, crossprof with `flags`.
fn record_dotnet(
    name: &str,
    runtime: Dotnet,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (std::path::PathBuf, Run) {
    record_fixture(name, runtime, "chain", env, flags)
}

/// Records `fixture` (3 s of work) on `runtime`, started with `env` as its only
/// DOTNET_*/COMPlus_* settings, crossprof with `flags`.
fn record_fixture(
    name: &str,
    runtime: Dotnet,
    fixture: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (std::path::PathBuf, Run) {
    let dll = runtime.fixture(fixture);
    let mut target = runtime.command(&dll, &["3"]);
    target.envs(env.iter().copied());
    let dir = out_dir(name);
    let run = record_target(&dir, flags, &target);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    (dir, run)
}

/// Removes the maps a runtime wrote because the test's settings asked it to (they
/// are the user's, so crossprof leaves them): /tmp stays clean.
fn remove_runtime_maps(dir: &Path) {
    let pid = dotnet_process(dir)["pid"].clone();
    for file in ["perf-{}.map", "perfinfo-{}.map", "jit-{}.dump"] {
        let _ = std::fs::remove_file(format!("/tmp/{}", file.replace("{}", &pid.to_string())));
    }
}

fn dotnet_process(dir: &Path) -> serde_json::Value {
    let summary = read_summary(dir);
    summary["processes"][0].clone()
}

/// `Program::Main;Program::Outer;Program::Hot` is named, in order, in at least 80%
/// of the process's samples, of which there are at least `min_samples`: frameless
/// Tier-1 `Outer` and the OSR version of `Main` do not hide their callers.
///
/// Under emulation (the VM tier, see `emulated`) the runtime's start-up takes
/// seconds of the run: the shares are of the samples in the program's own
/// code (a `Program::` frame), which is what a kernel's walk decides.
fn assert_chain_named(dir: &Path, min_samples: u64) {
    let stacks = read_folded(dir);
    // Under emulation, of the samples in `Hot` (whose callers are what the
    // walk decides): Main's own calls into the runtime (its `Stopwatch`,
    // a clock read that an emulated HPET makes slow) are a larger share
    // there, and have no Outer or Hot to name.
    let counted = |st: &crossprof_tests::FoldedStack| {
        !emulated() || st.frames.iter().any(|f| f == "Program::Hot_[j]")
    };
    let (named, all) = count_where(&stacks, "dotnet", |st| {
        counted(st)
            && st.contains_chain(&[
                "Program::Main_[j]",
                "Program::Outer_[j]",
                "Program::Hot_[j]",
            ])
    });
    let (all_counted, _) = count_where(&stacks, "dotnet", |st| counted(st));
    let all = if emulated() { all_counted } else { all };
    assert!(all >= min_samples, "only {all} samples of the .NET process");
    assert!(
        named * 100 >= all * 80,
        "Main;Outer;Hot named in {named} of {all}:\n{stacks:#?}"
    );
    // Every tier of a method is one frame: no tier or signature leaks into names.
    assert!(
        stacks
            .iter()
            .flat_map(|s| &s.frames)
            .all(|f| !f.contains("[OptimizedTier1]") && !f.contains("(int64)")),
        "tier or signature in a frame name"
    );
    // Walked by the runtime's and libc's `.eh_frame` rules between managed
    // frames, the stacks reach the thread's root (issue #5; 0% before).
    let complete = if emulated() {
        let (rooted, _) = count_where(&stacks, "dotnet", |st| {
            counted(st) && st.frames.get(1).is_some_and(|f| f == "_start")
        });
        rooted as f64 / all_counted.max(1) as f64
    } else {
        dotnet_process(dir)["stacks_complete"]
            .as_f64()
            .unwrap_or(0.0)
    };
    assert!(
        complete >= 0.95,
        "stacks complete {:.1}%:\n{stacks:#?}",
        complete * 100.0
    );
}

/// What `--dotnet-perf-map` asks for.
const PERF_MAP: &[&str] = &["--dotnet-perf-map"];

#[test]
fn perf_map_is_turned_on_in_a_process_started_without_settings() {
    // No DOTNET_* variable at all, W^X on, --dotnet-perf-map: crossprof asks
    // the runtime through the diagnostics IPC, and cleans up after itself.
    let (dir, run) = record_dotnet("dotnet_ipc", Dotnet::Net8, &[], PERF_MAP);
    assert_chain_named(&dir, 150); // 3 s at 99 Hz
    let p = dotnet_process(&dir);
    assert_eq!(p["runtime"].as_str(), Some("dotnet 8.0.4"), "{p}");
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
    for file in ["perf-{}.map", "perfinfo-{}.map", "jit-{}.dump"] {
        let path = format!("/tmp/{}", file.replace("{}", &p["pid"].to_string()));
        assert!(!Path::new(&path).exists(), "{path} left behind");
    }
    // This fixture allocates nothing: GC events were read, and there were none.
    assert_eq!(p["gc"]["collections"], 0, "{p}");
    assert_eq!(p["gc"]["samples"], 0, "{p}");
    assert!(
        read_folded(&dir)
            .iter()
            .all(|s| !s.frames.contains(&"[gc]".into())),
        "[gc] frames without a collection"
    );
}

#[test]
fn a_perf_map_the_process_writes_itself_is_read() {
    let (dir, _) = record_dotnet(
        "dotnet_env",
        Dotnet::Net8,
        &[("DOTNET_PerfMapEnabled", "1")],
        PERF_MAP,
    );
    assert_chain_named(&dir, 150); // 3 s at 99 Hz
    // The runtime's own perf map is the user's: crossprof, which saw the
    // process before its runtime wrote it, neither took it over nor removed it.
    let pid = dotnet_process(&dir)["pid"].clone();
    let map = format!("/tmp/perf-{pid}.map");
    assert!(
        Path::new(&map).exists(),
        "{map}, the process's own, was removed"
    );
    // Removed here so /tmp stays clean.
    remove_runtime_maps(&dir);
}

/// Without a perf map, the process's JIT frames are named, and its methods'
/// frame shapes listed, from its runtime's memory (`dotnet::memory`): the
/// whole chain as with a perf map ([`assert_chain_named`]: frameless Outer
/// and OSR Main included), and nothing of the perf map's was made. (The
/// framework's code, named from memory too, is checked where it is busy:
/// `framework_readytorun_code_is_named*`; here a sample in it is luck: 3.1's
/// chain had none in one run of four.)
fn assert_named_from_memory(dir: &Path) {
    assert_chain_named(dir, 150);
    let p = dotnet_process(dir);
    for file in ["perf-{}.map", "perfinfo-{}.map", "jit-{}.dump"] {
        let file = format!("/tmp/{}", file.replace("{}", &p["pid"].to_string()));
        assert!(!Path::new(&file).exists(), "{file} was made");
    }
    // summary.json says where the names came from, and counts what was not
    // named (a runtime stub's address, say: shown `[unknown]`).
    let memory = &p["jit_from_memory"];
    assert!(
        memory["named"].as_u64() >= Some(3)
            && memory["methods_listed"].as_u64() >= Some(3)
            && memory["unnamed"].is_u64(),
        "{p}"
    );
}

#[test]
fn without_diagnostics_jit_frames_are_named_from_the_runtime_s_memory() {
    // A perf map left in /tmp by an earlier process with the same pid is older than
    // this process and is ignored (unit-tested in dotnet::perfmap).
    let (dir, run) = record_dotnet(
        "dotnet_no_ipc",
        Dotnet::Net8,
        &[("DOTNET_EnableDiagnostics", "0")],
        &[],
    );
    assert_named_from_memory(&dir);
    // Nothing is missing for names and stacks: no note of the perf map's.
    // What needs the diagnostics IPC still says why it is missing (issue
    // #20: the cause this process has, not a list of guesses).
    assert!(!run.stderr.contains("perf map"), "{}", run.stderr);
    let gc = "no [gc] marks, its GC events could not be read (no diagnostics socket: its runtime was started with DOTNET_EnableDiagnostics=0)";
    assert!(run.stderr.contains(gc), "{}", run.stderr);
    let summary = read_summary(&dir);
    assert!(
        summary["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n.as_str().unwrap_or("").contains(gc))),
        "{summary}"
    );
}

/// Starts `dll` on `runtime` for `secs` seconds, its output discarded.
fn spawn_dotnet(runtime: Dotnet, dll: &Path, secs: &str) -> Guard {
    Guard(
        runtime
            .command(dll, &[secs])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the .NET fixture"),
    )
}

/// `crossprof record -q --pid PID --duration SECS FLAGS` into
/// `out_dir(name)`, to its end (it must succeed).
fn record_pid(name: &str, pid: &str, secs: &str, flags: &[&str]) -> (std::path::PathBuf, Run) {
    let dir = out_dir(name);
    let mut args = vec!["record", "-q", "--pid", pid, "--duration", secs];
    args.extend_from_slice(flags);
    args.extend(["-o", dir.to_str().unwrap()]);
    let run = run_crossprof(&args, std::time::Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    (dir, run)
}

#[test]
fn a_running_process_is_named_without_a_restart() {
    let runtime = Dotnet::Net8;
    let target = spawn_dotnet(runtime, &runtime.fixture("chain"), "6");
    std::thread::sleep(std::time::Duration::from_secs(1)); // running, JIT done
    let pid = target.pid().to_string();
    let (dir, _) = record_pid("dotnet_pid", &pid, "2", &[]);
    assert_chain_named(&dir, 100); // 2 s at 99 Hz
    // Named from its memory: its methods compiled before crossprof came are
    // listed there; no perf map made.
    let p = dotnet_process(&dir);
    assert!(p["jit_from_memory"]["named"].as_u64() >= Some(3), "{p}");
    let map = format!("/tmp/perf-{pid}.map");
    assert!(!Path::new(&map).exists(), "{map} was made");
    // The sampler's .NET walk was loaded before the first sample (issue
    // #21): no sample of it walked without (those lose the chain's root).
    let summary = read_summary(&dir);
    assert_eq!(summary["kernel_load"]["runtime_walks"], "loaded");
    assert_eq!(summary["counters"]["runtime_walk_pending"], 0);
    drop(target);
    // With --dotnet-perf-map: asked for, then turned off again and the file
    // removed while the process still runs.
    let target = spawn_dotnet(runtime, &runtime.fixture("chain"), "6");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pid = target.pid().to_string();
    let (dir, _) = record_pid("dotnet_pid_map", &pid, "2", PERF_MAP);
    assert_chain_named(&dir, 100);
    let map = format!("/tmp/perf-{pid}.map");
    assert!(!Path::new(&map).exists(), "{map} left behind");
}

/// Is process `crossprof` connected to the diagnostics socket of .NET
/// process `pid`? The runtime's end of each connection is listed by `ss -x`
/// under the socket's path, with its peer's inode; crossprof's sockets are
/// its `socket:[INODE]` descriptors.
fn connected_to_runtime(crossprof: u32, pid: u32) -> bool {
    let ours: Vec<String> = std::fs::read_dir(format!("/proc/{crossprof}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let ss = std::process::Command::new("ss")
        .args(["-x", "-p"])
        .output()
        .expect("run ss (iproute2)");
    let socket = format!("dotnet-diagnostic-{pid}-");
    String::from_utf8_lossy(&ss.stdout).lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // u_str ESTAB 0 0 PATH INODE * PEER_INODE users:...
        f.len() > 7 && f[4].contains(&socket) && ours.iter().any(|o| o == f[7])
    })
}

#[test]
fn with_no_dotnet_gc_nothing_is_asked_of_the_runtime() {
    // Named from memory, the GC session is the only use of the diagnostics
    // socket; --no-dotnet-gc turns it off: no connection at all (checked
    // against the default, which holds one for the whole recording), the
    // JIT frames named and walked as ever, no GC figures and no note.
    let runtime = Dotnet::Net8;
    let target = spawn_dotnet(runtime, &runtime.fixture("chain"), "12");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pid = target.pid();
    let pid_s = pid.to_string();
    let mut seen = Vec::new();
    for (name, flags) in [
        ("dotnet_gc_session", &[][..]),
        ("dotnet_no_gc", &["--no-dotnet-gc"][..]),
    ] {
        let dir = out_dir(name);
        let mut args = vec!["record", "-q", "--pid", &pid_s, "--duration", "3"];
        args.extend_from_slice(flags);
        args.extend(["-o", dir.to_str().unwrap()]);
        let crossprof = spawn_crossprof(&args);
        std::thread::sleep(std::time::Duration::from_secs(2));
        seen.push(connected_to_runtime(crossprof.pid(), pid));
        let run = finish(crossprof, std::time::Duration::from_secs(60));
        assert!(run.status.success(), "{}", run.stderr);
        assert_chain_named(&dir, 100);
        let p = dotnet_process(&dir);
        assert_eq!(p["gc"].is_null(), !flags.is_empty(), "{p}");
        assert!(!run.stderr.contains("note"), "{}", run.stderr);
    }
    assert_eq!(
        seen,
        [true, false],
        "connected to the runtime (GC session on, then --no-dotnet-gc)"
    );
}

/// Sends `ResumeRuntime` (Process command set 0x04, id 0x01; dotnet/runtime
/// `ds-process-protocol.h`) to the runtime of `pid`, held at start-up by
/// `DOTNET_DefaultDiagnosticPortSuspend=1`.
fn resume_runtime(pid: u32) {
    use std::io::{Read as _, Write as _};
    let socket = diagnostics_socket(pid);
    let mut sock = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let mut msg = b"DOTNET_IPC_V1\0".to_vec();
    msg.extend_from_slice(&20u16.to_le_bytes());
    msg.extend_from_slice(&[0x04, 0x01, 0, 0]);
    sock.write_all(&msg).expect("send ResumeRuntime");
    let mut reply = [0u8; 24];
    sock.read_exact(&mut reply[..20])
        .expect("ResumeRuntime reply");
    assert_eq!(reply[16..18], [0xFF, 0x00], "ResumeRuntime refused");
}

/// The diagnostics socket of `pid`: named by the process's start time
/// (`/proc/PID/stat` field 22), unlike the stale ones of earlier processes
/// that had its pid.
fn diagnostics_socket(pid: u32) -> std::path::PathBuf {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let start = after_comm.split(' ').nth(19).unwrap();
    std::path::PathBuf::from(format!("/tmp/dotnet-diagnostic-{pid}-{start}-socket"))
}

#[test]
fn a_process_held_at_start_up_is_not_asked_for_its_perf_map_too_early() {
    // `DOTNET_DefaultDiagnosticPortSuspend=1` holds the runtime just after it
    // opened its diagnostics socket and before it set up its perf map: an
    // EnablePerfMap sent there crashes .NET 8 (dotnet/runtime#122472; before
    // the fix crossprof sent it at once and this process died of SIGSEGV).
    // The same window, a few milliseconds wide, is open in every .NET process
    // crossprof sees start (record -- CMD, the agent's --comm / whole host).
    let runtime = Dotnet::Net8;
    let mut target = Guard(
        runtime
            .command(&runtime.fixture("chain"), &["3"])
            .env("DOTNET_DefaultDiagnosticPortSuspend", "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the .NET fixture"),
    );
    let pid = target.pid();
    let socket_seen = (0..250).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        diagnostics_socket(pid).exists()
    });
    assert!(socket_seen, "no diagnostics socket for {pid}");
    let dir = out_dir("dotnet_held");
    let crossprof = spawn_crossprof(&[
        "record",
        "-q",
        "--dotnet-perf-map",
        "--pid",
        &pid.to_string(),
        "--duration",
        "15",
        "-o",
        dir.to_str().unwrap(),
    ]);
    wait_for_link(crossprof.pid(), "perf", std::time::Duration::from_secs(30));
    // crossprof follows the held process (its GC session is open) but leaves
    // its perf map alone until start-up goes on.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let map = format!("/tmp/perf-{pid}.map");
    assert!(
        !Path::new(&map).exists(),
        "perf map turned on before the runtime set it up"
    );
    assert!(
        target.0.try_wait().unwrap().is_none(),
        "the held process died"
    );
    resume_runtime(pid);
    let status = target.wait_for(std::time::Duration::from_secs(60));
    assert!(status.success(), "the .NET process ended with {status}");
    let run = finish(crossprof, std::time::Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    // Asked for once start-up was past it: the JIT frames are named.
    assert_chain_named(&dir, 150);
    assert!(!Path::new(&map).exists(), "{map} left behind");
}

#[test]
fn core31_with_the_perf_map_setting_is_named() {
    // .NET Core 3.1 reads COMPlus_ settings only, and has no command to turn the
    // perf map on at run time: with --dotnet-perf-map, the user's setting is
    // the way.
    let (dir, run) = record_dotnet(
        "dotnet31_env",
        Dotnet::Core31,
        &[("COMPlus_PerfMapEnabled", "1")],
        PERF_MAP,
    );
    assert_chain_named(&dir, 150); // 3 s at 99 Hz
    let p = dotnet_process(&dir);
    assert_eq!(p["runtime"].as_str(), Some("dotnet 3.1.23"), "{p}");
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
    remove_runtime_maps(&dir);
}

#[test]
fn core31_without_the_setting_is_named_from_the_runtime_s_memory() {
    // .NET Core 3.1 exports no g_dacTable (its .symtab has it) and keeps its
    // code ranges in a list: the other layout of `dotnet::memory`.
    let (dir, run) = record_dotnet("dotnet31_no_map", Dotnet::Core31, &[], &[]);
    assert_named_from_memory(&dir);
    // No setting needed any more: no note at all.
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
}

#[test]
fn net10_is_named_from_the_runtime_s_memory() {
    // .NET 10: the layouts its own contract descriptor gives, and the nibble
    // map that points to a method's start (`dotnet::memory::NET10`); the
    // linear reading of .NET 8 named half its addresses after a neighbour.
    let (dir, run) = record_dotnet("dotnet10_no_map", Dotnet::Net10, &[], &[]);
    assert_named_from_memory(&dir);
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
}

#[test]
fn net9_is_named_from_the_runtime_s_memory() {
    // .NET 9: 8's code heaps and nibble map, 10's 16-byte `MethodDesc` and a
    // `Module` of its own (`dotnet::memory::NET9`), checked against the type
    // system its contract descriptor states (it states no code heaps).
    let (dir, run) = record_dotnet("dotnet9_no_map", Dotnet::Net9, &[], &[]);
    assert_named_from_memory(&dir);
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
}

#[test]
fn per_thread_puts_each_thread_under_its_process_by_name_and_tid() {
    let runtime = Dotnet::Net8;
    let target = runtime.command(&runtime.fixture("pool"), &["3", "2"]);
    let dir = out_dir("dotnet_per_thread");
    let run = record_target(&dir, &["--per-thread"], &target);
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    // Every stack of the process has its thread right under the process: `NAME (TID)`.
    let thread_of = |s: &crossprof_tests::FoldedStack| -> (String, u32) {
        let frame = &s.frames[1];
        let (name, tid) = frame
            .rsplit_once(" (")
            .unwrap_or_else(|| panic!("no thread frame in {s:?}"));
        let tid = tid.trim_end_matches(')').parse().expect("a tid");
        (name.to_owned(), tid)
    };
    let pid: u32 = dotnet_process(&dir)["pid"].as_u64().unwrap() as u32;
    let spinning: Vec<(String, u32, u64)> = stacks
        .iter()
        .filter(|s| s.frames[0] == "dotnet")
        .filter(|s| s.contains_chain(&["Program::Outer_[j]", "Program::Hot_[j]"]))
        .map(|s| {
            let (name, tid) = thread_of(s);
            (name, tid, s.count)
        })
        .collect();
    let named: u64 = spinning
        .iter()
        .filter(|(n, ..)| n == "crossprof-named")
        .map(|t| t.2)
        .sum();
    let pool_tids: std::collections::BTreeSet<u32> = spinning
        .iter()
        .filter(|(n, ..)| n == ".NET TP Worker")
        .map(|t| t.1)
        .collect();
    assert!(
        named >= 50,
        "named thread has {named} samples: {spinning:?}"
    );
    assert!(
        pool_tids.len() >= 2,
        "pool workers seen: {pool_tids:?} in {spinning:?}"
    );
    assert!(
        !pool_tids.contains(&pid),
        "a worker carries the process's tid"
    );
}

/// The gc fixture's collections are counted and its samples in GC pauses carry a
/// `[gc]` frame under the process, mostly above the method that forced them.
fn assert_gc_marked(dir: &Path, run: &Run) {
    let forced: u64 = run
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("collections="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no collections=N in {:?}", run.stdout));
    let p = dotnet_process(dir);
    let gc = &p["gc"];
    // Collections before crossprof's session began are not seen: at most a few.
    let seen = gc["collections"].as_u64().unwrap();
    assert!(
        seen <= forced + 2 && seen * 10 >= forced * 9,
        "{seen} GCs seen of {forced}: {p}"
    );
    // The fixture spends most of its time in forced full GCs.
    let share = gc["share"].as_f64().unwrap();
    assert!(share >= 0.5, "GC share {share}: {p}");
    let stacks = read_folded(dir);
    let (in_gc, _) = count_where(&stacks, "dotnet", |s| s.frames[1] == "[gc]");
    assert_eq!(in_gc, gc["samples"].as_u64().unwrap(), "{p}");
    let (from_churn, _) = count_where(&stacks, "dotnet", |s| {
        s.frames[1] == "[gc]" && s.contains_chain(&["Program::Churn_[j]"])
    });
    assert!(
        from_churn * 2 >= in_gc,
        "only {from_churn} of {in_gc} [gc] samples under Program::Churn"
    );
}

#[test]
fn gc_pauses_are_marked_on_net8() {
    let (dir, run) = record_fixture("dotnet_gc", Dotnet::Net8, "gc", &[], &[]);
    assert_gc_marked(&dir, &run);
}

#[test]
fn gc_pauses_are_marked_on_core31() {
    let (dir, run) = record_fixture("dotnet31_gc", Dotnet::Core31, "gc", &[], &[]);
    assert_gc_marked(&dir, &run);
}

/// Framework-heavy code reads `System.*`, with under 2% of samples in unnamed
/// ReadyToRun code (`[System.Linq.dll+0x...]`).
fn assert_framework_named(dir: &Path) {
    let stacks = read_folded(dir);
    let (system, all) = count_where(&stacks, "dotnet", |s| {
        s.frames
            .iter()
            .any(|f| f.starts_with("System.") && f.ends_with("_[j]"))
    });
    let (hex, _) = count_where(&stacks, "dotnet", |s| {
        s.frames
            .iter()
            .any(|f| f.starts_with("[System.") && f.contains(".dll+0x"))
    });
    assert!(all >= 150, "only {all} samples");
    assert!(system * 2 >= all, "System.* named in {system} of {all}");
    assert!(hex * 50 <= all, "unnamed R2R code in {hex} of {all}");
    // Framework code is unwound too (frameless ReadyToRun methods, leaves in
    // prologs and epilogs): the stacks reach Main. 79% did with frame pointers
    // through precompiled code; 90-97% measured with its prologs decoded.
    // Of the samples that could reach Main: not those of the runtime's
    // own threads (tiering, finalizer, timers), walked to their own root
    // (`start_thread`), whose share varies with the machine (3-8% seen).
    let (rooted, _) = count_where(&stacks, "dotnet", |s| {
        s.contains_chain(&["Program::Main_[j]", "Program::Work_[j]"])
    });
    let (threads, _) = count_where(&stacks, "dotnet", |s| {
        s.frames
            .get(1)
            .is_some_and(|f| f == "__clone3" || f == "start_thread")
    });
    let could = all - threads;
    assert!(
        rooted * 100 >= could * 85,
        "Main;Work in {rooted} of {could} ({threads} more in the runtime's threads)"
    );
}

#[test]
fn framework_readytorun_code_is_named() {
    // .NET 8, named from memory: R2R names from the assemblies themselves
    // (about a tenth of this fixture's samples were in unnamed R2R code
    // before they were named), no perf map or jitdump made.
    let (dir, _) = record_fixture("dotnet_framework", Dotnet::Net8, "framework", &[], &[]);
    assert_framework_named(&dir);
    let summary = read_summary(&dir);
    assert!(summary["notes"].as_array().unwrap().is_empty(), "{summary}");
    let pid = dotnet_process(&dir)["pid"].clone();
    assert!(!Path::new(&format!("/tmp/jit-{pid}.dump")).exists());
    // With --dotnet-perf-map: from the jitdump the runtime is asked for.
    let (dir, _) = record_fixture(
        "dotnet_framework_map",
        Dotnet::Net8,
        "framework",
        &[],
        PERF_MAP,
    );
    assert_framework_named(&dir);
}

#[test]
fn framework_readytorun_code_is_named_on_core31() {
    // 3.1 writes no jitdump: R2R names from the assemblies themselves, generic
    // instantiations included (7-10% of samples were unnamed without them).
    let (dir, _) = record_fixture("dotnet31_framework", Dotnet::Core31, "framework", &[], &[]);
    assert_framework_named(&dir);
}

#[test]
fn framework_readytorun_code_is_named_on_net9() {
    let (dir, _) = record_fixture("dotnet9_framework", Dotnet::Net9, "framework", &[], &[]);
    assert_framework_named(&dir);
}

#[test]
fn framework_readytorun_code_is_named_on_net10() {
    let (dir, _) = record_fixture("dotnet10_framework", Dotnet::Net10, "framework", &[], &[]);
    assert_framework_named(&dir);
}

/// `go tool pprof -lines -top` of a profile: `(function, file:line or "",
/// flat seconds)` per row.
fn pprof_lines(pb: &Path) -> Vec<(String, String, f64)> {
    let top = go_tool_pprof(&["-lines", "-top", "-nodecount=1000", pb.to_str().unwrap()]);
    top.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // flat flat% sum% cum cum% NAME [FILE:LINE]
            let flat = seconds(cols.first()?)?;
            let name = cols.get(5)?.to_string();
            let at = cols.get(6).map_or(String::new(), |s| s.to_string());
            Some((name, at, flat))
        })
        .collect()
}

/// A duration as `go tool pprof` prints it (`1.46s`, `940ms`, `0`).
fn seconds(text: &str) -> Option<f64> {
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
            .unwrap_or(text.len()),
    );
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "" => 1.0,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// The line numbers of the chain fixture's source that hold `needle`.
fn chain_line(needle: &str) -> u32 {
    let src = std::fs::read_to_string(workspace_root().join("tests/fixtures/dotnet/chain.cs"))
        .expect("chain.cs");
    1 + src
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in chain.cs")) as u32
}

/// The lines of `Program::Hot` in a profile of the Roslyn-built chain
/// fixture: most of its time on the lines of its loop, named from the PDB,
/// and its callers on their call lines.
fn assert_chain_lines(what: &str, pb: &Path) {
    let rows = pprof_lines(pb);
    let (for_line, body) = (chain_line("for (int i = 0;"), chain_line("x = x * 6364"));
    let at = |l: u32| format!("chain.cs:{l}");
    let hot: f64 = rows
        .iter()
        .filter(|r| r.0 == "Program::Hot")
        .map(|r| r.2)
        .sum();
    let hot_lined: f64 = rows
        .iter()
        .filter(|r| {
            r.0 == "Program::Hot" && (r.1.ends_with(&at(for_line)) || r.1.ends_with(&at(body)))
        })
        .map(|r| r.2)
        .sum();
    assert!(
        hot >= 1.0,
        "{what}: only {hot} s of Program::Hot: {rows:#?}"
    );
    assert!(
        hot_lined >= 0.85 * hot,
        "{what}: {hot_lined} of {hot} s of Program::Hot on its loop's lines {for_line}/{body}: {rows:#?}"
    );
    // No line of Hot outside its body; the file is the fixture's source.
    let body_lines = for_line..=chain_line("return x;");
    for r in rows
        .iter()
        .filter(|r| r.0 == "Program::Hot" && !r.1.is_empty())
    {
        let (file, line) = r.1.rsplit_once(':').expect("file:line");
        assert!(
            file.ends_with("tests/fixtures/dotnet/chain.cs"),
            "{what}: {r:?}"
        );
        assert!(
            body_lines.contains(&line.parse::<u32>().unwrap()),
            "{what}: {r:?}"
        );
    }
    // The callers, at their calls (-lines shows each caller line once).
    let top = go_tool_pprof(&["-lines", "-traces", pb.to_str().unwrap()]);
    for (caller, line) in [
        ("Program::Outer", chain_line("static long Outer")),
        ("Program::Main", chain_line("x = Outer(x);")),
    ] {
        assert!(
            top.lines()
                .any(|l| l.contains(caller) && l.ends_with(&at(line))),
            "{what}: no {caller} at line {line}:\n{top}"
        );
    }
}

#[test]
fn jit_frames_carry_file_and_line_from_the_portable_pdb() {
    // Built by Roslyn with its portable PDB, as `dotnet build` does; the
    // IL offsets come from the runtime's debug info in its memory (no JIT
    // event session).
    let runtime = Dotnet::Net8;
    let dll = runtime.roslyn_fixture("chain");
    let dir = out_dir("dotnet_lines");
    let run = record_target(&dir, &[], &runtime.command(&dll, &["3"]));
    assert!(run.status.success(), "{}", run.stderr);
    assert_chain_lines("record -- dotnet", &dir.join("profile.pb.gz"));
}

/// The Roslyn-built chain (for .NET 8) run on `runtime`, recorded into
/// `out_dir(dir)`: its JIT frames carry the chain's files and lines
/// ([`assert_chain_lines`]).
fn assert_retargeted_chain_lines(runtime: Dotnet, dir: &str) {
    let dll = runtime.retarget(&Dotnet::Net8.roslyn_fixture("chain"));
    let dir = out_dir(dir);
    let run = record_target(&dir, &[], &runtime.command(&dll, &["3"]));
    assert!(run.status.success(), "{}", run.stderr);
    assert_chain_lines(
        &format!("record -- dotnet ({runtime:?})"),
        &dir.join("profile.pb.gz"),
    );
}

#[test]
fn net10_jit_frames_carry_file_and_line_from_its_bit_packed_debug_info() {
    // 10's runtime packs a method's IL bounds in bits
    // (`dotnet::debuginfo::decode_packed_bounds`).
    assert_retargeted_chain_lines(Dotnet::Net10, "dotnet10_lines");
}

#[test]
fn net9_jit_frames_carry_file_and_line_from_its_debug_info() {
    // 8's debug-info format read through 9's layouts.
    assert_retargeted_chain_lines(Dotnet::Net9, "dotnet9_lines");
}

#[test]
fn a_running_process_gets_its_lines_from_the_rundown() {
    // Everything compiled before crossprof came. With --dotnet-perf-map
    // (the JIT event session's IL maps), the lines come from the rundown of a
    // short session (the live one sees no new method); by default, from
    // memory as for any method.
    let runtime = Dotnet::Net8;
    let dll = runtime.roslyn_fixture("chain");
    let target = spawn_dotnet(runtime, &dll, "10");
    std::thread::sleep(std::time::Duration::from_millis(1500)); // tiered up
    let (dir, _) = record_pid("dotnet_lines_pid", &target.pid().to_string(), "2.5", &[]);
    assert_chain_lines("record --pid", &dir.join("profile.pb.gz"));
    let (dir, _) = record_pid(
        "dotnet_lines_pid_map",
        &target.pid().to_string(),
        "2.5",
        PERF_MAP,
    );
    assert_chain_lines("record --pid --dotnet-perf-map", &dir.join("profile.pb.gz"));
}

#[test]
fn a_pdb_of_another_build_gives_no_lines_and_a_note() {
    // The next version of the source (two lines added at the top) built
    // too, and its PDB put beside the first build's assembly (a stale PDB
    // after a redeploy): its lines would be two off. crossprof shows none,
    // and says why.
    let runtime = Dotnet::Net8;
    let out = out_dir("dotnet_stale_pdb");
    let src = workspace_root().join("tests/fixtures/dotnet/chain.cs");
    let first = runtime.roslyn_build(&src, &out.join("first"));
    let next = out.join("next/chain.cs");
    std::fs::create_dir_all(next.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(&src).unwrap();
    std::fs::write(&next, format!("// v2\n// v2\n{text}")).unwrap();
    let second = runtime.roslyn_build(&next, &out.join("second"));
    std::fs::copy(second.with_extension("pdb"), first.with_extension("pdb")).unwrap();
    let dir = out.join("profile");
    let run = record_target(&dir, &[], &runtime.command(&first, &["2"]));
    assert!(run.status.success(), "{}", run.stderr);
    let rows = pprof_lines(&dir.join("profile.pb.gz"));
    let hot: Vec<_> = rows.iter().filter(|r| r.0 == "Program::Hot").collect();
    assert!(!hot.is_empty(), "no Program::Hot: {rows:#?}");
    assert!(
        hot.iter().all(|r| r.1.is_empty()),
        "lines from a stale PDB: {hot:#?}"
    );
    assert!(
        run.stderr.contains("chain.dll") && run.stderr.contains("does not match"),
        "no note on the stale PDB: {}",
        run.stderr
    );
}

#[test]
fn stale_sockets_of_earlier_processes_with_the_same_pid_are_not_used() {
    // A .NET process killed leaves its diagnostics socket in /tmp; a later
    // process given the same pid has a socket of its own, named by its start
    // time. Fifty stale ones (a listener bound, then closed: "connection
    // refused") beside the live one: crossprof must talk to the live one.
    let runtime = Dotnet::Net8;
    let target = spawn_dotnet(runtime, &runtime.fixture("chain"), "6");
    let pid = target.pid();
    struct Stale(Vec<std::path::PathBuf>);
    impl Drop for Stale {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let stale = Stale(
        (1..=50)
            .map(|k| {
                let p =
                    std::path::PathBuf::from(format!("/tmp/dotnet-diagnostic-{pid}-{k}-socket"));
                drop(std::os::unix::net::UnixListener::bind(&p).expect("bind a stale socket"));
                p
            })
            .collect(),
    );
    std::thread::sleep(std::time::Duration::from_secs(1)); // running, JIT done
    let (dir, run) = record_pid("dotnet_stale_sockets", &pid.to_string(), "2", &[]);
    assert!(!run.stderr.contains("note"), "{}", run.stderr);
    assert_chain_named(&dir, 100);
    assert_eq!(
        dotnet_process(&dir)["gc"]["collections"],
        0,
        "GC events read"
    );
    drop(stale);
}

/// Issue #21: code freed and given to another method never keeps the first's
/// name. The `freed` fixture runs dynamic method AlphaHot on thread
/// phase-alpha, has it collected, then runs BetaHot (the same IL) on
/// phase-beta, which the runtime compiles into AlphaHot's freed block: the
/// runtime's own perf map, which it writes for the test (crossprof, naming
/// from memory, reads none), shows both at one address. Every phase-beta
/// sample in that code is BetaHot, none AlphaHot; `summary.json` counts the
/// freed method. With `--no-dotnet-gc`: the GC session's EventPipe makes the
/// runtime compile and free IL stubs in the same heap, which moves BetaHot
/// to another freed block (named right too, but then the test shows no
/// reuse); without it the runtime places its code as with no profiler.
#[test]
fn freed_jit_code_never_keeps_a_stale_name() {
    for runtime in Dotnet::ALL {
        let what = format!("{runtime:?}");
        let dll = runtime.fixture("freed");
        let mut target = runtime.command(&dll, &["1.5"]);
        target.envs([
            ("DOTNET_PerfMapEnabled", "1"),
            ("COMPlus_PerfMapEnabled", "1"),
        ]);
        let dir = out_dir(&format!("dotnet_freed_{what}"));
        let run = record_target(&dir, &["--per-thread", "--no-dotnet-gc"], &target);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        let pid = dotnet_process(&dir)["pid"].clone();
        let map = std::fs::read(format!("/tmp/perf-{pid}.map")).unwrap_or_default();
        remove_runtime_maps(&dir);
        // `START SIZE NAME`: 8's `0x7f..`, 3.1's `00007F..`.
        let map = String::from_utf8_lossy(&map);
        let address_of = |method: &str| {
            let needle = format!("dynamicClass::{method}(");
            map.lines()
                .find(|l| l.contains(&needle))
                .and_then(|l| l.split(' ').next())
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        };
        let alpha = address_of("AlphaHot");
        assert!(alpha.is_some(), "{what}: AlphaHot not in the runtime's map");
        assert_eq!(
            alpha,
            address_of("BetaHot"),
            "{what}: BetaHot was not compiled into AlphaHot's block: the test proves nothing"
        );
        let stacks = read_folded(&dir);
        // Each phase's thread by the id it printed (3.1 names no thread).
        let tid = |phase: &str| {
            run.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{phase} tid ")))
                .map(|t| format!(" ({})", t.trim()))
                .unwrap_or_else(|| panic!("{what}: no {phase} tid in {}", run.stdout))
        };
        let on = |thread: &str, method: &str| {
            let suffix = tid(thread);
            let frame = format!("dynamicClass::{method}");
            count_where(&stacks, "dotnet", |s| {
                s.frames.get(1).is_some_and(|t| t.ends_with(&suffix))
                    && (method.is_empty() || s.frames.iter().any(|f| f.starts_with(&frame)))
            })
            .0
        };
        let (beta, alpha) = (on("phase-beta", ""), on("phase-alpha", ""));
        let min = if emulated() { 20 } else { 80 };
        assert!(
            beta >= min && alpha >= min,
            "{what}: {alpha} and {beta} samples"
        );
        assert_eq!(
            on("phase-beta", "AlphaHot"),
            0,
            "{what}: the freed method's name on the code put in its place"
        );
        assert!(
            on("phase-beta", "BetaHot") * 10 >= beta * 9,
            "{what}: BetaHot in {} of {beta} phase-beta samples",
            on("phase-beta", "BetaHot")
        );
        assert!(
            on("phase-alpha", "AlphaHot") * 10 >= alpha * 9,
            "{what}: AlphaHot in {} of {alpha} phase-alpha samples",
            on("phase-alpha", "AlphaHot")
        );
        let freed = &dotnet_process(&dir)["jit_from_memory"]["methods_freed"];
        assert!(freed.as_u64() >= Some(1), "{what}: {freed}");
    }
}
