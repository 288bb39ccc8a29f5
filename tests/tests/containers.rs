//! Issue #20, part 2: a .NET process in a container, as docker and Kubernetes
//! run it: its own pid namespace (it is pid 1 there) and mount namespace with a
//! private /tmp. Profiled from the host by its host pid, its JIT frames must be
//! named as outside: the runtime names its diagnostics socket and maps by the
//! pid it sees (`dotnet-diagnostic-1-...`, `/tmp/perf-1.map` inside its own
//! /tmp), which crossprof finds through `/proc/PID/root` and `NSpid`. Before,
//! 0 of 315 samples were named and the note blamed `DOTNET_EnableDiagnostics`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crossprof_tests::{
    Dotnet, Guard, TestCgroup, count_where, go_tool_pprof, out_dir, read_folded, read_summary,
    run_crossprof,
};

/// A container id as the runtimes write them (64 hex digits).
const CONTAINER_ID: &str = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// The host pid of the only child of `pid` (the namespace's pid 1), once it
/// exists.
fn only_child(pid: u32) -> u32 {
    for _ in 0..100 {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().expect("a pid");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{pid} started no child");
}

/// Records the .NET chain fixture running as `pid` for 3 s (`--pid`, into
/// `target/test-out/<name>`, with `flags`): Main;Outer;Hot named in >= 90%
/// of its >= 150 samples. Returns the output folder.
fn chain_named_from_the_host(pid: u32, name: &str, how: &str, flags: &[&str]) -> PathBuf {
    let dir = out_dir(name);
    let pid_s = pid.to_string();
    let mut args = vec!["record", "-q", "--pid", &pid_s, "--duration", "3"];
    args.extend_from_slice(flags);
    args.extend(["-o", dir.to_str().unwrap()]);
    let run = run_crossprof(&args, Duration::from_secs(60));
    assert!(run.status.success(), "crossprof failed: {}", run.stderr);
    let stacks = read_folded(&dir);
    let (named, all) = count_where(&stacks, "dotnet", |st| {
        st.contains_chain(&[
            "Program::Main_[j]",
            "Program::Outer_[j]",
            "Program::Hot_[j]",
        ])
    });
    assert!(all >= 150, "only {all} samples of the .NET process");
    assert!(
        named * 100 >= all * 90,
        "Main;Outer;Hot named in {named} of {all} samples of a .NET process {how}:\n{stacks:#?}\n{}",
        run.stderr
    );
    dir
}

#[test]
fn dotnet_in_its_own_pid_and_mount_namespace_is_named_from_the_host() {
    let runtime = Dotnet::Net8;
    let host = runtime.host();
    let dll = runtime.fixture("chain");
    // unshare forks the namespace's pid 1, which mounts a /tmp of its own and
    // becomes the runtime.
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount", "--mount-proc", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /tmp && DOTNET_ROOT=\"$1\" exec \"$2\" \"$3\" 8")
        .arg("container")
        .arg(host.parent().expect("the host is in a folder"))
        .arg(&host)
        .arg(&dll)
        .stdout(std::process::Stdio::null());
    let scope = TestCgroup::docker_scope(CONTAINER_ID);
    let unshare = Guard(unshare.spawn().expect("unshare (util-linux)"));
    let pid = only_child(unshare.pid());
    scope.enter(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "the fixture is not pid 1 of its own namespace:\n{status}"
    );
    // Running, its JIT done; its /tmp is not the host's.
    std::thread::sleep(Duration::from_secs(2));
    let own_tmp = format!("/proc/{pid}/root/tmp");
    assert!(
        std::fs::read_dir(&own_tmp)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("dotnet-diagnostic-1-")),
        "no diagnostics socket of pid 1 in {own_tmp}"
    );
    // Named from its runtime's memory, read through /proc/PID/mem, its
    // assemblies through its own root.
    let dir = chain_named_from_the_host(pid, "container_dotnet", "in a container", &[]);
    assert!(
        read_summary(&dir)["processes"][0]["jit_from_memory"]["named"].as_u64() > Some(0),
        "not named from memory"
    );
    // Nothing was made in its own /tmp, nor in the host's.
    assert!(!Path::new(&format!("{own_tmp}/perf-1.map")).exists());
    assert!(!Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    // Labelled with its container, from its cgroup: summary.json and pprof.
    let summary = read_summary(&dir);
    let process = &summary["processes"][0];
    assert_eq!(process["container_id"], CONTAINER_ID, "{process}");
    let tags = go_tool_pprof(&["-tags", dir.join("profile.pb.gz").to_str().unwrap()]);
    assert!(
        tags.contains("container_id") && tags.contains(CONTAINER_ID),
        "go tool pprof -tags:\n{tags}"
    );
    // The namespace's pid 1 ends with it (and leaves the scope empty).
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    drop(unshare);
}

/// Issue #20: a .NET process started with a `TMPDIR` of its own (service
/// managers and container images set one) listens there, and writes its perf
/// map and jitdump to `DOTNET_PerfMapJitDumpPath` when that is set (on .NET 8
/// the maps do not follow `TMPDIR`). crossprof reads both from the
/// environment the process started with. Before, it looked in /tmp only: no
/// socket found, no map asked for, its JIT frames `[unknown]`. (The perf map
/// is asked for with `--dotnet-perf-map`, and for a runtime whose memory
/// crossprof does not read.)
#[test]
fn dotnet_with_its_own_tmpdir_and_map_folder_is_named() {
    let runtime = Dotnet::Net8;
    let dll = runtime.fixture("chain");
    let base = out_dir("dotnet_tmpdir");
    let (tmpdir, maps) = (base.join("tmp"), base.join("maps"));
    std::fs::create_dir_all(&tmpdir).unwrap();
    std::fs::create_dir_all(&maps).unwrap();
    let mut cmd = runtime.command(&dll, &["8"]);
    cmd.env("TMPDIR", &tmpdir)
        .env("DOTNET_PerfMapJitDumpPath", &maps)
        .stdout(std::process::Stdio::null());
    let child = Guard(cmd.spawn().expect("start the .NET fixture"));
    let pid = child.pid();
    std::thread::sleep(Duration::from_secs(2));
    let socket = format!("dotnet-diagnostic-{pid}-");
    assert!(
        std::fs::read_dir(&tmpdir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(&socket)),
        "the runtime did not listen in its TMPDIR {}",
        tmpdir.display()
    );
    chain_named_from_the_host(
        pid,
        "dotnet_tmpdir_profile",
        "with its own TMPDIR",
        &["--dotnet-perf-map"],
    );
    // The map was written where the runtime was told, then turned off and
    // removed; none in /tmp.
    assert!(!maps.join(format!("perf-{pid}.map")).exists());
    assert!(!Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    drop(child);
}

/// `record --container ID --group-by container`: the processes of a
/// container (a scope named as docker names it), selected in the kernel by
/// its cgroup, under a `container <12 digits>` level above each process; a
/// process outside it, running the same time, not sampled. Recorded
/// system-wide with `--group-by container`, that one is under `[host]`.
#[test]
fn record_selects_a_container_and_groups_its_processes_under_it() {
    const ID: &str = "dead0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
    let scope = TestCgroup::docker_scope(ID);
    let fixture = |name: &str| crossprof_tests::native_fixture(name);
    let spawn = |bin: PathBuf, args: &[&str]| {
        Guard(
            Command::new(bin)
                .args(args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let inside = spawn(fixture("chain"), &["30"]);
    scope.enter(inside.pid());
    let outside = spawn(fixture("twofuncs"), &["30", "1", "1"]);
    let level = format!("container {}", &ID[..12]);

    // 2 s of `record --group-by container EXTRA`, its folded stacks.
    let record = |name: &str, extra: &[&str]| {
        let dir = out_dir(name);
        let d = dir.to_str().unwrap();
        let args = [
            &[
                "record",
                "-q",
                "--group-by",
                "container",
                "--duration",
                "2",
                "-o",
                d,
            ][..],
            extra,
        ]
        .concat();
        let run = run_crossprof(&args, Duration::from_secs(60));
        assert!(run.status.success(), "{name}: {}", run.stderr);
        read_folded(&dir)
    };
    let stacks = record("container_record", &["--container", &ID[..12]]);
    let (chain, all) = count_where(&stacks, &level, |s| {
        s.frames[1] == "chain" && s.contains_chain(&["main", "outer", "middle", "hot"])
    });
    assert!(all >= 100, "only {all} samples under {level}: {stacks:#?}");
    assert!(
        chain * 10 >= all * 8,
        "the chain in {chain} of {all}: {stacks:#?}"
    );
    assert!(
        stacks.iter().all(|s| s.frames[0] == level),
        "only the container's processes: {stacks:#?}"
    );

    // The whole system: the process outside under [host].
    let stacks = record("container_group_all", &[]);
    let (host, _) = count_where(&stacks, "[host]", |s| s.frames[1] == "twofuncs");
    let (mine, _) = count_where(&stacks, &level, |s| s.frames[1] == "chain");
    assert!(
        host >= 50 && mine >= 50,
        "[host] twofuncs {host}, {level} chain {mine}"
    );
    drop(outside);
    drop(inside); // the scope empties, and can go
}
