//! `cargo xtask vmtest`: the end-to-end tests on the kernels production runs,
//! Debian 12's 6.1 and 6.12 LTS, each booted under qemu.
//!
//! The kernels are Debian's own packages (`apt-get download`, cached under
//! `~/.cache/crossprof/kernels/`). Each boots with a small initramfs of
//! busybox and the kernel's own 9p, virtio and overlay modules, which mounts
//! this machine's `/` read-only over virtio-9p under a tmpfs overlay (the guest
//! may write anywhere; nothing reaches the host) and cargo's target folder
//! read-write (test outputs, fixtures and the Go build cache are kept), then
//! runs the test binaries built here, one test at a time, and powers off.
//!
//! This machine's `/dev/kvm` is paravirtual: stock kernels hang under
//! `-accel kvm`, so the guest runs under software emulation (TCG). A guest
//! reaches its first command in 3-5 s; everything in it runs ~5-10x slower,
//! the verifier included (see ../shared/ENVIRONMENT.md).
//!
//! Emulation makes timing noisy (the guest's timer loses ticks while the host
//! is busy; the tests' emulated bounds allow for what was measured), so a test
//! that fails is run once more: it passes only if the second run passes, and
//! the report names every test that needed it, with the first run's log kept
//! beside the second's. A property that is broken fails both runs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::target_dir;

use crate::{build, cmd, say};

/// A kernel the VM tier boots.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What `--kernel` calls it.
    pub short: &'static str,
    /// The Debian package (bookworm and its security updates).
    pub package: &'static str,
}

/// The kernels production runs: Debian 12's stock kernel and its 6.12 LTS.
pub const KERNELS: [Kernel; 2] = [
    Kernel {
        short: "6.1",
        package: "linux-image-6.1.0-47-amd64-unsigned",
    },
    Kernel {
        short: "6.12",
        package: "linux-image-6.12.111+deb12-amd64-unsigned",
    },
];

/// The modules the guest's init loads (with what they depend on), in order:
/// the 9p file system over virtio, and overlayfs.
const MODULES: [&str; 4] = ["9p", "9pnet_virtio", "virtio_pci", "overlay"];

/// The representative tests run in each guest: binary, then test name.
/// One of each kind of walk and each mode, as the issue lists them.
pub const TESTS: &[(&str, &str)] = &[
    // Native code: frame pointers, then `.eh_frame` rules.
    ("record", "call_chain_is_in_order_in_most_samples"),
    ("record", "kernel_frames_sit_on_top_of_user_frames"),
    // A running process's children joining the target set as they start
    // (every `record -- CMD` attaches the same program).
    (
        "children",
        "children_of_a_running_process_are_followed_with_children",
    ),
    // Announcements on their own ring: a 15 ms program read at its exec.
    ("children", "processes_that_live_milliseconds_are_named"),
    (
        "native",
        "code_without_frame_pointers_is_walked_by_eh_frame_to_main",
    ),
    // Frame-pointer code without rules, RBP == RSP included (the rules
    // walk's own frame-pointer step).
    ("native", "frames_whose_rbp_equals_rsp_are_walked"),
    // The vDSO's own rules; a whole-system recording's first-sample wakeup.
    ("native", "samples_in_the_vdso_keep_their_callers"),
    (
        "record",
        "processes_that_live_milliseconds_are_named_in_a_whole_system_recording",
    ),
    // Go: names, goroutine ids and states, goroutine waits.
    (
        "go",
        "go_chain_and_inlined_call_are_named_in_every_version_and_build",
    ),
    (
        "go",
        "each_sample_carries_its_goroutine_in_every_version_and_build",
    ),
    (
        "go",
        "goroutine_states_split_time_by_wait_reason_in_every_version_and_build",
    ),
    (
        "go",
        "goroutine_waits_are_a_profile_of_their_stacks_in_every_version",
    ),
    // Load only what a run needs (issue #21): a native run holds no
    // runtime walk; a running Go program's samples are tail-called into
    // them from its first one.
    ("kernel", "a_native_cpu_run_loads_no_runtime_walk"),
    (
        "kernel",
        "a_go_target_has_the_runtime_walks_before_its_first_sample",
    ),
    // Go assembly that uses RBP, cgo and pure Go (the latter walked by
    // rules for its assembly only).
    (
        "go",
        "go_assembly_that_uses_rbp_keeps_its_callers_in_every_version",
    ),
    // .NET JIT code named, and one stack across C#, Go and C.
    (
        "dotnet",
        "perf_map_is_turned_on_in_a_process_started_without_settings",
    ),
    (
        "mixed",
        "csharp_to_go_to_c_to_go_is_one_stack_with_every_go_version",
    ),
    // Off-CPU and wall-clock time, the timeline.
    (
        "offcpu",
        "a_two_second_sleep_is_two_seconds_off_cpu_under_its_stack",
    ),
    (
        "offcpu",
        "wall_mode_weighs_running_and_blocked_time_per_thread",
    ),
    (
        "offcpu",
        "wall_time_of_threads_sharing_a_cpu_includes_their_wait_for_it",
    ),
    (
        "timeline",
        "a_wall_timeline_has_running_samples_and_blocked_spans_per_thread",
    ),
    // Request attribution.
    ("trace", "each_request_s_work_is_under_its_trace_id"),
    // The agent, scraped by go tool pprof.
    (
        "agent",
        "go_tool_pprof_scrapes_the_agent_and_windows_are_private_pprof_and_folded_files",
    ),
];

/// The Go toolchains the tests use in a guest (`CROSSPROF_TEST_GO`): the oldest
/// and the newest; each more costs a minute of emulated builds and runs.
const GUEST_GO: &str = "1.19,1.27.3";

/// `cargo xtask vmtest` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Which kernel: 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 6144)]
    memory: u32,
    /// Stop a guest after this many minutes.
    #[arg(long, default_value_t = 40)]
    timeout_min: u64,
    /// Run the guests' CPUs on one host thread from the start (as a guest
    /// booted again after an emulator fault runs): slower, no cross-CPU
    /// patching race.
    #[arg(long)]
    single_thread: bool,
    /// Only the tests whose name contains one of these (default: the representative set).
    filters: Vec<String>,
}

/// The kernels `--kernel` names.
pub fn kernels(which: &str) -> Result<Vec<Kernel>> {
    match which {
        "all" => Ok(KERNELS.to_vec()),
        short => match KERNELS.iter().find(|k| k.short == short) {
            Some(k) => Ok(vec![*k]),
            None => bail!("--kernel {short}: not one of 6.1, 6.12, all"),
        },
    }
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!("`cargo xtask vmtest` must run as root (the guest's tests load eBPF programs)");
    }
    let kernels = kernels(&args.kernel)?;
    build::run()?;
    let binaries = snapshot(&test_binaries()?)?;
    let tests: Vec<(String, PathBuf, String)> = TESTS
        .iter()
        .filter(|(_, name)| {
            args.filters.is_empty() || args.filters.iter().any(|f| name.contains(f.as_str()))
        })
        .map(|(bin, name)| {
            let path = binaries
                .get(*bin)
                .with_context(|| format!("no test binary `{bin}` was built"))?;
            Ok(((*bin).to_owned(), path.clone(), (*name).to_owned()))
        })
        .collect::<Result<_>>()?;
    if tests.is_empty() {
        bail!("no test of the VM tier matches {:?}", args.filters);
    }
    let mut failed = Vec::new();
    let mut retried = Vec::new();
    let mut restarted = Vec::new();
    let mut report = String::new();
    for kernel in &kernels {
        let tcg = if args.single_thread {
            Tcg::Single
        } else {
            Tcg::Multi
        };
        let mut outcome = run_tests(kernel, &tests, args, "", tcg)?;
        // A guest that died of the emulator's known text-patching fault, or
        // hung (see `STALL`), is booted once more, its CPUs on one host
        // thread, for the tests it did not finish (see `emulator_fault`); any
        // other crash fails the tier.
        let stopped_by = match &outcome.ended {
            Ended::Killed(why) => Some(format!(
                "killed: {why}, during {}",
                first_left(&tests, &outcome.results)
            )),
            Ended::Stopped => emulator_fault(&outcome.console),
        };
        if outcome.results.len() < tests.len()
            && let Some(oops) = stopped_by
        {
            let _ = writeln!(
                report,
                "kernel {}: the first guest's console ended:\n{}",
                kernel.short,
                console_tail(&outcome.console, 15)
            );
            let left: Vec<_> = unfinished(&tests, &outcome.results).cloned().collect();
            say!(
                "vmtest: the guest of {} stopped ({oops}): booting it again, its CPUs on one host thread, for the {} test(s) left",
                kernel.short,
                left.len()
            );
            restarted.push(format!("{} ({oops})", kernel.short));
            let again = run_tests(kernel, &left, args, "-restart", Tcg::Single)?;
            outcome.results.extend(again.results);
            let _ = writeln!(
                report,
                "kernel {}: restarted after the first guest stopped ({oops}); first console {}",
                kernel.short,
                outcome.console.display()
            );
            outcome.console = again.console;
        }
        let _ = writeln!(report, "kernel {} ({}):", kernel.short, outcome.release);
        let check =
            fs::read_to_string(outcome.console.with_file_name("check.txt")).unwrap_or_default();
        for line in check.lines() {
            let _ = writeln!(report, "  | {line}");
        }
        for (name, result) in &outcome.results {
            let _ = writeln!(report, "  {result:<24} {name}");
            if !result.starts_with("ok") {
                failed.push(format!("{} on {}", name, kernel.short));
            } else if result.ends_with("2nd try") {
                retried.push(format!("{} on {}", name, kernel.short));
            }
        }
        if outcome.results.len() < tests.len() {
            let _ = writeln!(
                report,
                "  {} test(s) did not report (the guest stopped: see {}); its console ended:\n{}",
                tests.len() - outcome.results.len(),
                outcome.console.display(),
                console_tail(&outcome.console, 15)
            );
            let how = match &outcome.ended {
                Ended::Killed(why) => format!("was killed ({why})"),
                Ended::Stopped => "stopped early".to_owned(),
            };
            failed.push(format!(
                "the guest of {} {how}, during {}",
                kernel.short,
                first_left(&tests, &outcome.results)
            ));
        }
    }
    println!("{report}");
    if !retried.is_empty() {
        say!(
            "vmtest: {} passed only on a second try (the first run's log is the test's log + `.first`): {}",
            retried.len(),
            retried.join("; ")
        );
    }
    if !restarted.is_empty() {
        say!(
            "vmtest: a guest was booted again after an emulator fault: {}",
            restarted.join("; ")
        );
    }
    if !failed.is_empty() {
        bail!("vmtest: {} failed: {}", failed.len(), failed.join("; "));
    }
    say!(
        "vmtest: every test passed on {}",
        kernels
            .iter()
            .map(|k| k.short)
            .collect::<Vec<_>>()
            .join(" and ")
    );
    Ok(())
}

/// The tests (`(binary, path, name)`) with no result (`(binary::name, _)`).
fn unfinished<'a>(
    tests: &'a [(String, PathBuf, String)],
    results: &'a [(String, String)],
) -> impl Iterator<Item = &'a (String, PathBuf, String)> {
    tests.iter().filter(|(bin, _, name)| {
        let id = format!("{bin}::{name}");
        !results.iter().any(|(done, _)| *done == id)
    })
}

/// The first of `tests` with no result, `binary::name`: the one a guest
/// that stopped early was running.
fn first_left(tests: &[(String, PathBuf, String)], results: &[(String, String)]) -> String {
    unfinished(tests, results).next().map_or_else(
        || "no test (all reported)".to_owned(),
        |(bin, _, name)| format!("{bin}::{name}"),
    )
}

/// What one guest's run gave.
struct Outcome {
    /// `uname -r` in the guest.
    release: String,
    /// Per test (`binary::name`), "ok 12 s", "ok 30 s, 2nd try" or "FAILED ..."
    /// in run order.
    results: Vec<(String, String)>,
    /// The guest's console output.
    console: PathBuf,
    /// Whether it powered off or was killed.
    ended: Ended,
}

/// A test's time limit in a guest, each try (the slowest, `mixed`, takes
/// 85 s on 6.1 under emulation, twice that on one host thread); also
/// `check --load`'s.
const TEST_LIMIT_SECS: u64 = 300;

/// A guest whose results file has not grown for this long is hung (two
/// tries of a test, and the boot and `check --load` before the first), and
/// is killed: a guest hung in the emulator would otherwise hold CI for the
/// whole `--timeout-min`.
const STALL: Duration = Duration::from_secs(2 * TEST_LIMIT_SECS + 180);

/// The guest's script rewrites a file this often (`HEARTBEAT`, from a
/// background loop) ...
const HEARTBEAT_SECS: u64 = 10;
/// ... and a guest that has not for this long is frozen (both of its CPUs
/// stuck in the emulator, which even the guest's own `timeout` and
/// soft-lockup panic never end): it is killed minutes after, not `STALL`'s
/// 13 (a hung *test* in a live guest is ended by the guest's `timeout`).
const FROZEN: Duration = Duration::from_secs(240);
/// The heartbeat file, in the guest's output folder.
const HEARTBEAT: &str = "alive";

/// How QEMU runs a guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tcg {
    /// A host thread per guest CPU (the default: twice as fast on 2 cores).
    Multi,
    /// Every guest CPU on one host thread: slower, and free of the
    /// cross-CPU code-patching fault `emulator_fault` names.
    Single,
}

/// Boots `kernel` and runs `tests` in it; logs in `target/vmtest/KERNEL{suffix}`.
fn run_tests(
    kernel: &Kernel,
    tests: &[(String, PathBuf, String)],
    args: &Args,
    suffix: &str,
    tcg: Tcg,
) -> Result<Outcome> {
    let dir = target_dir()
        .join("vmtest")
        .join(format!("{}{suffix}", kernel.short));
    // Only this run's logs: a stale result must never read as a pass.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let results = dir.join("results.txt");
    let mut script = format!(
        "(while :; do date +%s > \"$OUT/{HEARTBEAT}\"; sleep {HEARTBEAT_SECS}; done) &\n\
         uname -r > \"$OUT/release\"\n\
         timeout {TEST_LIMIT_SECS} \"$CROSSPROF_BIN\" check --load > \"$OUT/check.txt\" 2>&1\n\
         timeout {TEST_LIMIT_SECS} \"$CROSSPROF_BIN\" check --load --json > \"$OUT/check.json\" 2>/dev/null\n\
         cp /tmp/crossprof-verifier-*.log \"$OUT/\" 2>/dev/null\n",
    );
    for (bin, path, name) in tests {
        let log = dir.join(format!("{bin}-{name}.log"));
        let _ = writeln!(
            script,
            "start=$(date +%s)\n\
             again=\n\
             timeout {TEST_LIMIT_SECS} {path} --exact {name} --test-threads=1 > {log} 2>&1\n\
             status=$?\n\
             if [ $status != 0 ]; then mv {log} {log}.first; again=\", 2nd try\"; \
             timeout {TEST_LIMIT_SECS} {path} --exact {name} --test-threads=1 > {log} 2>&1; status=$?; fi\n\
             secs=$(( $(date +%s) - start ))\n\
             if [ $status = 0 ]; then echo \"ok ${{secs}} s$again|{bin}::{name}\" >> {results}; \
             else echo \"FAILED ($status) ${{secs}} s$again|{bin}::{name}\" >> {results}; fi",
            path = path.display(),
            log = log.display(),
            results = results.display(),
        );
    }
    say!(
        "vmtest: booting {} ({}) for {} test(s); logs in {}",
        kernel.short,
        kernel.package,
        tests.len(),
        dir.display()
    );
    let started = Instant::now();
    let (console, ended) = boot(
        kernel,
        &dir,
        &script,
        &[
            ("CROSSPROF_TEST_GO", GUEST_GO),
            ("CROSSPROF_TEST_GO_BUILDS", "normal"),
            (
                "CROSSPROF_TEST_EMULATED",
                match tcg {
                    Tcg::Multi => "1",
                    Tcg::Single => "one-thread",
                },
            ),
            (
                "CROSSPROF_BIN",
                &target_dir()
                    .join("vmtest/bin/crossprof")
                    .display()
                    .to_string(),
            ),
        ],
        args.memory,
        Limits {
            total: Duration::from_secs(args.timeout_min * 60),
            watch: &[(&results, STALL), (&dir.join(HEARTBEAT), FROZEN)],
        },
        tcg,
    )?;
    say!(
        "vmtest: {} done in {:.0} s",
        kernel.short,
        started.elapsed().as_secs_f64()
    );
    let release = fs::read_to_string(dir.join("release"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let results = fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (result, name) = l.split_once('|')?;
            Some((name.to_owned(), result.to_owned()))
        })
        .collect();
    Ok(Outcome {
        release,
        results,
        console,
        ended,
    })
}

/// Copies crossprof and the test binaries into `target/vmtest/bin/`, which the
/// guests run: a build on the host while a guest runs (they take minutes)
/// must not change what it tests.
fn snapshot(binaries: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
    let bin = target_dir().join("vmtest/bin");
    let _ = fs::remove_dir_all(&bin);
    fs::create_dir_all(&bin)?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = bin.join(name);
        fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    copy(&target_dir().join("release/crossprof"), "crossprof")?;
    binaries
        .iter()
        .map(|(name, path)| Ok((name.clone(), copy(path, &format!("test-{name}"))?)))
        .collect()
}

/// The test binaries `cargo test --release --no-run` builds, by target name.
fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    say!("vmtest: building the test binaries...");
    let mut c = cmd::cargo();
    c.args([
        "test",
        "--release",
        "--workspace",
        "--no-run",
        "--message-format=json",
    ])
    .args(build::EXCLUDE);
    build::locked_in_ci(&mut c);
    let out = cmd::output(&mut c)?;
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// When a guest is killed.
pub struct Limits<'a> {
    /// It runs this long at most.
    pub total: Duration,
    /// Files its script writes, and how long each may go unchanged (in
    /// length and modification time; from the boot for one not written yet)
    /// before the guest counts as hung.
    pub watch: &'a [(&'a Path, Duration)],
}

/// How a guest's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It powered off.
    Stopped,
    /// It was killed: it ran past its time limit, or its progress file did
    /// not grow for its stall limit (a hung guest).
    Killed(String),
}

/// Boots `kernel` with this machine's `/` as its root (read-only, under a
/// tmpfs overlay) and the target folder read-write; runs `script` (sh) in it
/// with `OUT=dir` and `env`; powers off. Returns the path of the console log
/// and how the guest ended: killed if it passes one of its `limits`.
pub fn boot(
    kernel: &Kernel,
    dir: &Path,
    script: &str,
    env: &[(&str, &str)],
    memory_mib: u32,
    limits: Limits,
    tcg: Tcg,
) -> Result<(PathBuf, Ended)> {
    let Limits {
        total: limit,
        watch,
    } = limits;
    let root = kernel_tree(kernel)?;
    let release = only_entry(&root.join("lib/modules"))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let initramfs = dir.join("initramfs.cpio");
    write_initramfs(&root, &release, &initramfs)?;
    let target = target_dir();
    let target = target.canonicalize().unwrap_or(target);
    let mut guest = String::from("set -u\n");
    let _ = writeln!(guest, "export OUT={}", dir.display());
    for (k, v) in env {
        let _ = writeln!(guest, "export {k}='{v}'");
    }
    guest.push_str(script);
    let script_path = dir.join("guest.sh");
    fs::write(&script_path, guest)?;
    let console = dir.join("console.log");
    let log = fs::File::create(&console)?;
    let mut qemu = Command::new("qemu-system-x86_64");
    // SMAP off: qemu 7.2's TCG checks an `iretq` at CPL 3 as a supervisor
    // access, and SMAP then faults it (the guest kernel oopses: "supervisor read
    // access in user mode"); CoreCLR restores contexts with `iretq`, so every
    // .NET process died at start-up.
    qemu.args([
        "-accel",
        match tcg {
            Tcg::Multi => "tcg,thread=multi",
            Tcg::Single => "tcg,thread=single",
        },
        "-cpu",
        "max,-smap",
        "-smp",
        "2",
    ])
    .args(["-m", &memory_mib.to_string()])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&vmlinuz)
    .arg("-initrd")
    .arg(&initramfs)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 panic=-1 softlockup_panic=1 loglevel=3 mitigations=off \
             crossprof.target={} crossprof.script={}",
        target.display(),
        script_path.display()
    ))
    .args([
        "-fsdev",
        "local,id=root,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
    ])
    .arg("-fsdev")
    .arg(format!(
        "local,id=target,path={},security_model=none,multidevs=remap",
        target.display()
    ))
    .args(["-device", "virtio-9p-pci,fsdev=target,mount_tag=target"])
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask bootstrap installs it)")?;
    let started = Instant::now();
    // Each watched file's length and time, and when they last changed.
    let stamp = |path: &Path| {
        fs::metadata(path)
            .map(|m| (m.len(), m.modified().ok()))
            .unwrap_or((0, None))
    };
    let mut last: Vec<_> = watch
        .iter()
        .map(|&(path, _)| (stamp(path), Instant::now()))
        .collect();
    let killed = loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "qemu exited with {status} for {}: see {}",
                    kernel.short,
                    console.display()
                );
            }
            break None;
        }
        if started.elapsed() > limit {
            break Some(format!(
                "it did not stop within {} min",
                limit.as_secs() / 60
            ));
        }
        let stalled = watch
            .iter()
            .zip(&mut last)
            .find_map(|(&(path, stall), (was, since))| {
                let now = stamp(path);
                if now != *was {
                    (*was, *since) = (now, Instant::now());
                    None
                } else {
                    (since.elapsed() > stall).then(|| {
                        format!(
                            "{} did not change for {} min",
                            path.display(),
                            stall.as_secs() / 60
                        )
                    })
                }
            });
        if stalled.is_some() {
            break stalled;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ended = match killed {
        None => Ended::Stopped,
        Some(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Ended::Killed(why)
        }
    };
    Ok((console, ended))
}

/// The single entry of `dir` (a package's `lib/modules/<release>`).
fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.len() != 1 {
        bail!(
            "{} should hold one kernel release, holds {names:?}",
            dir.display()
        );
    }
    Ok(names.remove(0))
}

/// The kernel package, downloaded and unpacked once under
/// `~/.cache/crossprof/kernels/<package>/`, with its module index built.
fn kernel_tree(kernel: &Kernel) -> Result<PathBuf> {
    let cache = cmd::home()
        .context("HOME is not set")?
        .join(".cache/crossprof/kernels");
    let tree = cache.join(kernel.package);
    let done = tree.join(".unpacked");
    if done.exists() {
        return Ok(tree);
    }
    fs::create_dir_all(&cache)?;
    say!("vmtest: downloading {} (one time)...", kernel.package);
    let downloads = cache.join("debs");
    fs::create_dir_all(&downloads)?;
    // apt's sandbox user cannot write root's cache: download as root, quietly.
    cmd::run(
        Command::new("apt-get")
            .args(["-o", "APT::Sandbox::User=root", "download", kernel.package])
            .current_dir(&downloads)
            .stdin(Stdio::null()),
    )?;
    let deb = fs::read_dir(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{}_", kernel.package)) && n.ends_with(".deb")
            })
        })
        .with_context(|| format!("apt-get download left no {}_*.deb", kernel.package))?;
    let _ = fs::remove_dir_all(&tree);
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let release = only_entry(&tree.join("lib/modules"))?;
    cmd::run(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
    fs::write(&done, "")?;
    let _ = fs::remove_file(&deb);
    Ok(tree)
}

/// The guest's first process: mounts, loads the modules, puts the host's root
/// together, runs the script named on the kernel command line, powers off.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in /modules/*; do $B insmod "$m" || echo "vmtest: insmod $m failed"; done
arg() { $B sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
TARGET=$(arg crossprof.target)
SCRIPT=$(arg crossprof.script)
R=/newroot
$B mkdir -p /host /rw $R
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host
$B mount -t tmpfs -o size=80% tmpfs /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work $R
$B mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=512000 target "$R$TARGET"
$B mount -t proc proc $R/proc
$B mount -t sysfs sys $R/sys
$B mount -t devtmpfs dev $R/dev
$B mkdir -p $R/dev/pts $R/dev/shm
$B mount -t devpts devpts $R/dev/pts
$B mount -t tmpfs tmpfs $R/dev/shm
for d in /tmp /run /var/tmp; do $B mount -t tmpfs tmpfs "$R$d"; done
$B mount -t tracefs tracefs $R/sys/kernel/tracing
$B mount -t debugfs debugfs $R/sys/kernel/debug
$B mount -t bpf bpf $R/sys/fs/bpf
$B mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
$B ifconfig lo 127.0.0.1 up
$B hostname vmtest
ulimit -l unlimited
$B chroot $R /usr/bin/env -i HOME=/root TERM=dumb CI=true \
  PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  /bin/sh "$SCRIPT"
echo "vmtest: script exited $?"
$B poweroff -f
"#;

/// Writes the guest's initramfs: busybox, [`MODULES`] with their
/// dependencies (decompressed: busybox's insmod reads plain ELF), and [`INIT`].
fn write_initramfs(tree: &Path, release: &str, out: &Path) -> Result<()> {
    let mut modules: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let deps = cmd::output(Command::new("modprobe").arg("-d").arg(tree).args([
            "-S",
            release,
            "--show-depends",
            m,
        ]))?;
        for line in deps.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                if !modules.contains(&path) {
                    modules.push(path);
                }
            }
        }
    }
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "dev", "proc", "sys", "modules", "newroot", "host", "rw",
    ] {
        cpio.dir(dir);
    }
    cpio.file("init", INIT.as_bytes(), 0o755);
    let busybox = fs::read("/bin/busybox")
        .context("cannot read /bin/busybox (cargo xtask bootstrap installs busybox-static)")?;
    cpio.file("bin/busybox", &busybox, 0o755);
    for (i, path) in modules.iter().enumerate() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module.ko");
        let (name, bytes) = match name.strip_suffix(".xz") {
            Some(plain) => (
                plain,
                cmd::output_bytes(Command::new("xz").arg("-dc").arg(path))?,
            ),
            None => (name, fs::read(path)?),
        };
        cpio.file(&format!("modules/{i:02}-{name}"), &bytes, 0o644);
    }
    let mut f = fs::File::create(out)?;
    f.write_all(&cpio.finish())?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A `newc` cpio archive, the format the kernel unpacks an initramfs from.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100_000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

/// The first line of a crash in `console` if it is the emulator's, not the
/// kernel's or crossprof's. Under QEMU 7.2's multi-threaded software
/// emulation a CPU can run a stale translation of kernel code another CPU
/// has just patched with `text_poke_bp` (a static key flipped as a
/// tracepoint is attached or detached):
/// - it traps on the temporary int3 after the patch is done, which
///   `poke_int3_handler` no longer claims: "Oops: int3" in kernel text with
///   no BPF program on the stack (seen on 6.12 in `syscall_trace_enter` and
///   `syscall_exit_to_user_mode_prepare`, in crossprof's own `close()` of a
///   tracepoint);
/// - or the patching CPU waits for ever for the others to pass its sync:
///   a soft lockup (made a panic by `softlockup_panic=1`, so that the guest
///   stops instead of eating the timeout) whose stack is in the patching or
///   the cross-CPU call it waits on (seen on 6.1, in crossprof, for 425 s),
///   or the other CPU, looping on the site being patched (see
///   [`stuck_on_a_patch_site`]).
///
/// Real hardware and KVM re-fetch patched code.
fn emulator_fault(console: &Path) -> Option<String> {
    let text = fs::read_to_string(console).ok()?;
    classify_oops(&text)
}

/// [`emulator_fault`]'s reading of a console log.
fn classify_oops(text: &str) -> Option<String> {
    if let Some(at) = text.find("Oops: ") {
        let crash = &text[at..];
        let first = crash.lines().next()?.trim().to_owned();
        let int3 = first.starts_with("Oops: int3");
        return (int3 && !in_bpf(crash)).then_some(first);
    }
    let at = text.find("soft lockup")?;
    let crash = &text[at..];
    let patching = ["text_poke", "smp_call_function", "do_sync_core"]
        .iter()
        .any(|f| crash.contains(f))
        || stuck_on_a_patch_site(crash);
    (patching && !in_bpf(crash)).then(|| {
        format!(
            "soft lockup{}",
            crash
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("soft lockup")
        )
    })
}

/// Does a BPF program take part in `crash`: named by a `RIP:` line or a
/// reliable frame of its trace? A frame the unwinder only guessed from stale
/// stack contents (`? bpf_prog_..._http_sys_exit+0x103`, left by a program
/// that ran earlier in the same system call's exit, seen on 6.12 under an
/// int3 Oops at `syscall_exit_to_user_mode_prepare`) does not.
fn in_bpf(crash: &str) -> bool {
    crash.lines().any(|line| {
        let frame = line
            .split_once("] ")
            .map_or(line, |(_, rest)| rest)
            .trim_start();
        line.contains("bpf_prog_") && !frame.starts_with("? ")
    })
}

/// Is the stuck CPU's kernel RIP on a jump-label site: the 2- or 5-byte NOP
/// a static key is patched over (`<66> 90`, `<0f> 1f 44 00 00` at the RIP
/// mark of the `Code:` line after the first kernel `RIP:`)? Real hardware
/// does not loop on a NOP; QEMU's stale translation of a site just patched
/// does (seen on 6.1 at `syscall_trace_enter+0xd8`, the site of the int3
/// Oops above, stuck 26 s while the other CPU patched).
fn stuck_on_a_patch_site(crash: &str) -> bool {
    let mut lines = crash.lines().skip_while(|l| !l.contains("RIP: 0010:"));
    lines.next().is_some()
        && lines
            .find(|l| l.contains("Code: "))
            .is_some_and(|code| code.contains("<66> 90 ") || code.contains("<0f> 1f 44 00 00"))
}

/// The lines of a guest's console log that say why it stopped early.
pub fn console_tail(console: &Path, lines: usize) -> String {
    let Ok(f) = fs::File::open(console) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_four_byte_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", b"#!/bin/sh\n", 0o755);
        let bytes = c.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's mode: a regular file, 0755.
        assert!(text.contains(&format!("{:08x}", 0o100_755)));
    }

    #[test]
    fn only_an_int3_oops_outside_bpf_is_the_emulator_s() {
        let tcg = "[ 302.879192] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                   [ 302.880820] RIP: 0010:syscall_trace_enter+0xd6/0x190\n\
                   Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert_eq!(
            classify_oops(tcg).as_deref(),
            Some("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        let in_bpf = tcg.replace(
            "syscall_trace_enter+0xd6/0x190",
            "bpf_prog_6deef7357e7b4530_cpu_sample+0x1d/0x2a0",
        );
        assert_eq!(classify_oops(&in_bpf), None);
        // A BPF program only guessed from stale stack contents ("? "): the
        // emulator's still; a reliable frame of one: not.
        let guessed = format!(
            "{tcg}[ 601.272305]  do_syscall_64+0x93/0x1b0\n\
             [ 601.272413]  ? bpf_prog_d5ed0c91212b254d_http_sys_exit+0x103/0xe15\n"
        );
        assert!(classify_oops(&guessed).is_some());
        let reliable = guessed.replace("  ? bpf_prog", "  bpf_prog");
        assert_eq!(classify_oops(&reliable), None);
        let fault = "Oops: general protection fault, probably for non-canonical address\n";
        assert_eq!(classify_oops(fault), None);
        let lockup = "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [crossprof:935]\n\
                      RIP: 0010:smp_call_function_many_cond+0x12e/0x500\n\
                      text_poke_bp_batch+0x8a/0x2b0\n\
                      Kernel panic - not syncing: softlockup: hung tasks\n";
        assert_eq!(
            classify_oops(lockup).as_deref(),
            Some("soft lockup - CPU#0 stuck for 22s! [crossprof:935]")
        );
        // Stuck anywhere else (or in a BPF program): a failure.
        let elsewhere = lockup
            .replace(
                "smp_call_function_many_cond",
                "native_queued_spin_lock_slowpath",
            )
            .replace("text_poke_bp_batch", "htab_map_update_elem");
        assert_eq!(classify_oops(&elsewhere), None);
        assert_eq!(classify_oops("Kernel panic - not syncing: VFS\n"), None);
        // Looping on a static key's NOP in kernel text (6.1, the other
        // CPU's patching not on this stack).
        let on_nop = "watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [a_wall_timeline:950]\n\
                      Kernel panic - not syncing: softlockup: hung tasks\n\
                      RIP: 0010:syscall_trace_enter.constprop.0+0xd8/0x190\n\
                      Code: 85 c0 75 6d 65 48 8b 04 25 80 fb 01 00 ff ff <66> 90 e9 50 ff ff ff 49\n\
                      RIP: 0033:0x7ff5470f1c17\n\
                      Code: 89 7c 24 10 b8 3d 00 00 00 0f 05 <48> 3d 00 f0 ff ff 77 31\n";
        assert_eq!(
            classify_oops(on_nop).as_deref(),
            Some("soft lockup - CPU#0 stuck for 26s! [a_wall_timeline:950]")
        );
        // Stuck on any other instruction: a failure.
        let on_load = on_nop.replace("<66> 90 e9", "<48> 8b 04 25");
        assert_eq!(classify_oops(&on_load), None);
    }

    #[test]
    fn kernels_are_named_by_their_short_version() {
        assert_eq!(kernels("6.1").unwrap()[0].short, "6.1");
        assert_eq!(kernels("all").unwrap().len(), 2);
        assert!(kernels("5.15").is_err());
    }
}
