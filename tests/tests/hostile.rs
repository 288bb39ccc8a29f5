//! A hostile neighbour: another user plants links, FIFOs and names with
//! control characters where root crossprof looks, or a user asks for the
//! absurd. Each test is one defect found by trying (issue 18) and asserts what
//! must hold: no root file changed, nothing of one published, the recording
//! stops on time, outputs whole, private and well formed, the exit status as
//! documented.
//!
//! "Another user" is `nobody` (uid 65534): the links and FIFOs are made by a
//! process running as it, as an attacker's would be. This machine runs with
//! `fs.protected_symlinks = 0`, so the kernel itself would follow them.

use std::{
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crossprof_tests::{
    Dotnet, Guard, Run, out_dir, output_within, parse_folded, read_summary, run_crossprof, spinner,
};

const NOBODY: u32 = 65534;

/// Runs `program args` as `nobody`; it must succeed.
fn as_nobody(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .expect("run a command as nobody");
    assert!(status.success(), "{program} {args:?} as nobody");
}

/// A root-only (0600) file holding `text`, in a root-only folder: what an
/// attacker aims a link at.
fn victim(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Every file of an output folder, as text.
fn outputs(dir: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            (p, text)
        })
        .collect()
}

/// A running .NET 8 target (root) with the settings `env`, given a second to
/// start.
fn dotnet_target(secs: &str, env: &[(&str, &str)]) -> Guard {
    let runtime = Dotnet::Net8;
    let target = Guard(
        runtime
            .command(&runtime.fixture("chain"), &[secs])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the .NET fixture"),
    );
    std::thread::sleep(Duration::from_secs(1));
    target
}

/// The peak memory `/usr/bin/time -f maxrss_kib=%M` printed, KiB.
fn peak_rss_kib(run: &Run) -> u64 {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .expect("/usr/bin/time's figure")
}

/// `crossprof record -q --pid PID --duration SECS FLAGS -o DIR`.
fn record_pid(dir: &Path, pid: u32, secs: &str, flags: &[&str]) -> Run {
    let pid = pid.to_string();
    let mut args = vec!["record", "-q", "--pid", &pid, "--duration", secs];
    args.extend_from_slice(flags);
    args.extend(["-o", dir.to_str().unwrap()]);
    run_crossprof(&args, Duration::from_secs(60))
}

/// Where the target's /tmp matters: its JIT code named through its perf map,
/// which the runtime writes there (by default it is named from its memory,
/// and nothing there is read or made).
const PERF_MAP: &[&str] = &["--dotnet-perf-map"];

/// Defects 1 and 2: links planted at the names a root .NET process's runtime
/// writes (`/tmp/perf-PID.map`, `perfinfo-PID.map`, `jit-PID.dump`), aimed at
/// root-only files. crossprof must not turn the maps on (the runtime would
/// write through the links as root), must not read the link that poses as a
/// perf map (its target's content would become frame names in 0644 files),
/// must leave the links alone, and must say why in a note.
#[test]
fn links_planted_for_a_dotnet_targets_maps_are_neither_written_through_nor_read() {
    let secret = "SECRET-ROOT-ONLY";
    let victims = out_dir("hostile_links_victims");
    let target = dotnet_target("6", &[]);
    let pid = target.pid();
    let names = [
        format!("perf-{pid}.map"),
        format!("perfinfo-{pid}.map"),
        format!("jit-{pid}.dump"),
    ];
    let mut planted = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // A perf map line covering every address: were it read, each JIT frame
        // would be named after the secret.
        let text = format!("0 7fffffffffff {secret}-{i}\n");
        let v = victim(&victims, &format!("victim-{i}"), &text);
        let link = PathBuf::from("/tmp").join(name);
        let _ = std::fs::remove_file(&link);
        as_nobody("ln", &["-s", v.to_str().unwrap(), link.to_str().unwrap()]);
        planted.push((link, v, text));
    }
    let dir = out_dir("hostile_links");
    let run = record_pid(&dir, pid, "2", PERF_MAP);
    let cleanup = || {
        for (link, ..) in &planted {
            let _ = std::fs::remove_file(link);
        }
    };
    if !run.status.success() {
        cleanup();
        panic!("{}", run.stderr);
    }
    let seen: Vec<(bool, String)> = planted
        .iter()
        .map(|(link, v, _)| {
            let meta = std::fs::symlink_metadata(link);
            (
                meta.is_ok_and(|m| m.file_type().is_symlink()),
                std::fs::read_to_string(v).unwrap(),
            )
        })
        .collect();
    cleanup();
    for ((link, v, text), (still, now)) in planted.iter().zip(seen) {
        assert!(still, "{} was removed or replaced", link.display());
        assert_eq!(&now, text, "{} was written through", v.display());
    }
    for (path, text) in outputs(&dir) {
        assert!(
            !text.contains(secret),
            "{} publishes the root-only file",
            path.display()
        );
    }
    let notes = read_summary(&dir)["notes"].to_string();
    assert!(
        notes.contains(&format!("/tmp/perf-{pid}.map")) && notes.contains("symbolic link"),
        "no note names the planted link: {notes}"
    );
}

/// Defect 4: a FIFO planted as a .NET target's perf map. Opening it for
/// reading would block until someone writes: crossprof must not wait on it
/// (the recording ends on time, SIGTERM is honoured) and must say why.
#[test]
fn a_fifo_planted_as_a_perf_map_does_not_hang_the_recording() {
    let target = dotnet_target("8", &[]);
    let pid = target.pid();
    let fifo = format!("/tmp/perf-{pid}.map");
    let _ = std::fs::remove_file(&fifo);
    as_nobody("mkfifo", &["-m", "0666", &fifo]);
    let dir = out_dir("hostile_fifo");
    let started = Instant::now();
    let run = record_pid(&dir, pid, "2", PERF_MAP);
    let took = started.elapsed();
    let _ = std::fs::remove_file(&fifo);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(10),
        "a 2 s recording took {took:?}"
    );
    let notes = read_summary(&dir)["notes"].to_string();
    assert!(
        notes.contains(&fifo) && notes.contains("not a regular file"),
        "no note names the FIFO: {notes}"
    );
}

/// A whole-system recording of 1 s at 100 kHz into `dir`, and how long it took.
fn one_second_at_100_khz(dir: &Path) -> (Run, Duration) {
    let started = Instant::now();
    let run = run_crossprof(
        &[
            "record",
            "-q",
            "--freq",
            "100000",
            "--duration",
            "1",
            "-o",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    (run, started.elapsed())
}

/// Defect 5: a whole-system recording at 100 kHz (the kernel's default
/// maximum) with two busy processes: the collector must keep its deadline
/// (asked 1 s: done well within 10 s with its outputs written), and a SIGTERM
/// must stop it within 2 s.
#[test]
fn a_whole_system_recording_at_100_khz_keeps_its_deadline_and_signals() {
    let _busy = [spinner(30.0, "busy-a"), spinner(30.0, "busy-b")];
    let dir = out_dir("hostile_100khz");
    let (run, took) = one_second_at_100_khz(&dir);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(10),
        "a 1 s recording took {took:?}"
    );
    assert!(dir.join("summary.json").is_file());

    let dir = out_dir("hostile_100khz_term");
    let mut child = Command::new(crossprof_tests::crossprof_bin());
    child.args([
        "record",
        "-q",
        "--freq",
        "100000",
        "--duration",
        "60",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let child = Guard(
        child
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
    let mut child = child;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "SIGTERM not honoured within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dir.join("summary.json").is_file());
}

/// Defect 5 under real load: processes that start all the time and map
/// very large libraries (two loops of `rustc -V`: librustc_driver and libLLVM,
/// 1.1M and 1.4M unwind rows, seconds each to read). Reading their rules and
/// their ELF headers on the event loop made a 1 s whole-system recording last
/// 6-22 s; the rules are read on their own thread and relocations only when
/// asked for, so the deadline holds. The stop itself is due at the deadline:
/// the event loop returns to the scheduler at every turn (before, a ring
/// always ready kept the deadline's timer unseen for a cooperative budget of
/// turns: 1.2-2.9 s for 1 s on this 2-core machine, 10 s once in 30; now
/// 1.01-1.28 s), and a drain reads the clock after every record.
#[test]
fn a_storm_of_processes_with_huge_libraries_does_not_delay_the_deadline() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(&rustc).arg("-V").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "{rustc:?} -V: the storm needs the toolchain's rustc"
    );
    let storm = || {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("while :; do \"$0\" -V >/dev/null; done")
            .arg(&rustc)
            // Its own group, so that the guard's kill reaches the loop's rustc too.
            .process_group(0);
        Guard(sh.spawn().expect("start a rustc loop"))
    };
    let storms = [storm(), storm()];
    std::thread::sleep(Duration::from_millis(500));
    let dir = out_dir("hostile_storm");
    let (run, took) = one_second_at_100_khz(&dir);
    println!("a 1 s recording beside the storm took {took:?}");
    for s in &storms {
        // SAFETY: kill has no memory preconditions; the loop's own group.
        unsafe { libc::kill(-(s.pid() as i32), libc::SIGKILL) };
    }
    assert!(run.status.success(), "{}", run.stderr);
    let recorded = read_summary(&dir)["duration_secs"].as_f64().unwrap_or(0.0);
    println!("it recorded for {recorded:.3} s");
    assert!(
        (1.0..1.75).contains(&recorded),
        "asked 1 s beside a storm of rustc processes, it recorded {recorded} s"
    );
    // Start-up (loading the programs on a loaded machine) + 1 s + the stop.
    assert!(
        took < Duration::from_secs(4),
        "a 1 s recording beside a storm of rustc processes took {took:?}"
    );
}

/// Defect 7: a process named with control characters (prctl lets any user
/// do it) must leave the SVG well formed (no character XML 1.0 forbids) and
/// the folded file parseable, the name shown escaped.
#[test]
fn control_characters_in_a_process_name_keep_the_outputs_well_formed() {
    let target = spinner(4.0, "ev\u{1}il\u{1b}[31m");
    let dir = out_dir("hostile_comm");
    let run = record_pid(&dir, target.pid(), "1", &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let svg = std::fs::read(dir.join("flamegraph.svg")).unwrap();
    let bad: Vec<u8> = svg
        .iter()
        .copied()
        .filter(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
        .collect();
    assert!(bad.is_empty(), "the SVG holds control bytes {bad:?}");
    let folded = std::fs::read_to_string(dir.join("profile.folded")).unwrap();
    assert!(
        !folded.chars().any(|c| c.is_control() && c != '\n'),
        "control characters in profile.folded"
    );
    let stacks = parse_folded(&folded);
    let named: u64 = stacks
        .iter()
        .filter(|s| s.frames[0].starts_with("ev\\x01il\\x1b[31m"))
        .map(|s| s.count)
        .sum();
    assert!(named > 50, "the process is not named, escaped: {folded}");
}

/// Defect 7, through a binary: a function whose symbol holds control
/// characters is named, escaped, and the SVG stays well formed.
#[test]
fn control_characters_in_a_symbol_name_keep_the_outputs_well_formed() {
    let bin = crossprof_tests::build_c("native/ctlname.c", &["-O1", "-fno-omit-frame-pointer"]);
    let dir = out_dir("hostile_symbol");
    let mut cmd = Command::new(crossprof_tests::crossprof_bin());
    cmd.args(["record", "-q", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(&bin)
        .arg("1");
    let run = output_within(&mut cmd, Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    let svg = std::fs::read(dir.join("flamegraph.svg")).unwrap();
    assert!(
        !svg.iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')),
        "the SVG holds control bytes"
    );
    let folded = std::fs::read_to_string(dir.join("profile.folded")).unwrap();
    let (named, total) = crossprof_tests::count_with_frame(
        &parse_folded(&folded),
        "ctlname",
        "ev\\x01il\\x1b[31mname",
    );
    assert!(
        named * 10 >= total * 8,
        "{named} of {total} samples in the escaped name: {folded}"
    );
}

/// Defects 3 and 14: an output folder another user can write, with links
/// planted at the names crossprof writes: the links are replaced, never
/// followed (the root files they aim at are unchanged), and every output is
/// private (0600 files, a 0700 folder when crossprof creates it).
#[test]
fn links_in_the_output_folder_are_replaced_not_followed_and_outputs_are_private() {
    let victims = out_dir("hostile_out_victims");
    let dir = out_dir("hostile_out");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut planted = Vec::new();
    for name in [
        "summary.json",
        "profile.folded",
        "flamegraph.svg",
        "profile.pb.gz",
    ] {
        let v = victim(&victims, name, "root's own content\n");
        as_nobody(
            "ln",
            &["-s", v.to_str().unwrap(), dir.join(name).to_str().unwrap()],
        );
        planted.push(v);
    }
    let target = spinner(3.0, "outputs");
    let run = record_pid(&dir, target.pid(), "1", &[]);
    assert!(run.status.success(), "{}", run.stderr);
    for v in &planted {
        assert_eq!(
            std::fs::read_to_string(v).unwrap(),
            "root's own content\n",
            "{} was written through a link",
            v.display()
        );
    }
    for (path, _) in outputs(&dir) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", path.display());
        assert_eq!(
            meta.mode() & 0o777,
            0o600,
            "{} is not private",
            path.display()
        );
    }
    // A folder crossprof makes is private too.
    let fresh = out_dir("hostile_out_fresh").join("made");
    let target = spinner(3.0, "outputs");
    let run = record_pid(&fresh, target.pid(), "1", &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let mode = std::fs::metadata(&fresh).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the output folder is {mode:o}");
}

/// Defect 6: a `--duration` past what a clock can add is refused before the
/// command starts, in one line, exit 2 (it panicked, leaving the command
/// running unprofiled).
#[test]
fn a_duration_past_the_clock_is_refused_before_the_command_starts() {
    let dir = out_dir("hostile_duration");
    let marker = dir.join("ran");
    for value in ["1e19", "18446744073709551616", "1e300"] {
        let mut cmd = Command::new(crossprof_tests::crossprof_bin());
        cmd.args(["record", "--duration", value, "-o"])
            .arg(dir.join("out"))
            .args(["--", "touch"])
            .arg(&marker);
        let run = output_within(&mut cmd, Duration::from_secs(30));
        assert_eq!(run.status.code(), Some(2), "{value}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains("--duration"), "{}", run.stderr);
        assert!(!marker.exists(), "--duration {value}: the command ran");
    }
}

/// The start time of `pid` in clock ticks (`/proc/PID/stat` field 22), as the
/// .NET runtime puts it in its diagnostics socket's name.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

/// Defect 10: a diagnostics socket that accepts and then drips one byte every
/// 2 s (a fake one, planted where a .NET target started without diagnostics
/// would have its own). A 3 s recording must not wait on it: done within 8 s,
/// with the target's GC marks and perf map given up, in notes.
#[test]
fn a_diagnostics_socket_that_drips_does_not_stall_the_stop() {
    let target = dotnet_target("10", &[("DOTNET_EnableDiagnostics", "0")]);
    let pid = target.pid();
    let name = format!("/tmp/dotnet-diagnostic-{pid}-{}-socket", start_ticks(pid));
    let _ = std::fs::remove_file(&name);
    let listener = std::os::unix::net::UnixListener::bind(&name).unwrap();
    let dripping = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        // Every connection: read the request, then answer a byte at a time.
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                for b in b"DOTNET_IPC_V1\0" {
                    std::thread::sleep(Duration::from_secs(2));
                    if conn.write_all(&[*b]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = out_dir("hostile_drip");
    let started = Instant::now();
    let run = record_pid(&dir, pid, "3", PERF_MAP);
    let took = started.elapsed();
    let _ = std::fs::remove_file(&name);
    drop(dripping);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(8),
        "a 3 s recording took {took:?}"
    );
    let notes = read_summary(&dir)["notes"].to_string();
    assert!(notes.contains("no [gc] marks"), "{notes}");
}

/// Defect 11: outputs to a folder that fills up (a 16 KiB tmpfs): one line,
/// exit 2, the command's own status still reported, and no partial file
/// left.
#[test]
fn a_full_disk_leaves_no_half_output_and_reports_the_command_s_status() {
    let dir = out_dir("hostile_full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "crossprof-full"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a small tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&dir);
    let chain = crossprof_tests::native_fixture("chain");
    let mut cmd = Command::new(crossprof_tests::crossprof_bin());
    cmd.args(["record", "-q", "--freq", "999", "-o"])
        .arg(&dir)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!("{} 2 >/dev/null; exit 7", chain.display()));
    let run = output_within(&mut cmd, Duration::from_secs(60));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("No space left on device") && lines[0].contains("status 7"),
        "{}",
        lines[0]
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "partial outputs left: {left:?}");
}

/// Defect 9: input sized by an attacker. A gzip bomb (4 GiB of zeros in a
/// few MiB) given to `diff` is refused in one line, exit 2, without the
/// collector's memory following it (it reached 1 GB).
#[test]
fn a_gzip_bomb_given_to_diff_is_refused_without_inflating_it() {
    let dir = out_dir("hostile_bomb");
    let bomb = dir.join("bomb.pb.gz");
    // gzip -c of /dev/zero, cut at 4 GiB: ~4 MiB of deflate.
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 4294967296 /dev/zero | gzip -1 > {}",
            bomb.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let other = dir.join("other.folded");
    std::fs::write(&other, "a;b 1\n").unwrap();
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("maxrss_kib=%M")
        .arg(crossprof_tests::crossprof_bin())
        .arg("diff")
        .arg(&bomb)
        .arg(&other)
        .arg("-o")
        .arg(dir.join("out.svg"));
    let run = output_within(&mut cmd, Duration::from_secs(120));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("MiB once decompressed"),
        "{}",
        run.stderr
    );
    let rss = peak_rss_kib(&run);
    assert!(rss < 600 << 10, "diff reached {rss} KiB on a bomb");
    assert!(!dir.join("out.svg").exists());
}

/// Defect 9 in a target's file: a 256 MiB line without a newline appended to
/// a .NET process's perf map. crossprof skips it (and says so) without
/// holding it in memory, and still names the process's JIT frames from the
/// map's other lines.
#[test]
fn a_huge_perf_map_line_is_skipped_without_holding_it() {
    let target = dotnet_target("6", &[("DOTNET_PerfMapEnabled", "1")]);
    let pid = target.pid();
    let map = format!("/tmp/perf-{pid}.map");
    let grown = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 268435456 /dev/zero | tr '\\0' x >> {map}"))
        .status()
        .unwrap();
    assert!(grown.success());
    let dir = out_dir("hostile_long_line");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "maxrss_kib=%M"])
        .arg(crossprof_tests::crossprof_bin())
        .args([
            "record",
            "-q",
            "--dotnet-perf-map",
            "--pid",
            &pid.to_string(),
            "--duration",
            "2",
            "-o",
        ])
        .arg(&dir);
    let run = output_within(&mut cmd, Duration::from_secs(60));
    let _ = std::fs::remove_file(&map);
    assert!(run.status.success(), "{}", run.stderr);
    let rss = peak_rss_kib(&run);
    assert!(rss < 200 << 10, "crossprof reached {rss} KiB");
    let notes = read_summary(&dir)["notes"].to_string();
    assert!(
        notes.contains("longer than 4096 bytes were skipped"),
        "{notes}"
    );
    let folded = std::fs::read_to_string(dir.join("profile.folded")).unwrap();
    // (Never printed whole: with the defect it holds the 256 MiB line.)
    assert!(
        folded.len() < 1 << 20,
        "profile.folded is {} bytes: the line was published",
        folded.len()
    );
    assert!(folded.contains("Program::"), "JIT frames unnamed");
}

/// The agent beside another user (issue 22's outbox made `--dir` hold more
/// of what root reads back): a `--dir` that user owns, with a link planted
/// under a window's name aimed at a root-only file, and a `--log-file`
/// that is a planted link. The log link is refused at start (exit status
/// 2, the file named) and its target unchanged; in the folder, the planted
/// window is neither listed nor served, the agent's own windows are
/// written as private files beside it, and its outbox is a private folder
/// of root's.
#[test]
fn the_agent_neither_writes_nor_serves_through_links_planted_in_its_folders() {
    let victims = out_dir("hostile_agent_victims");
    let secret = victim(&victims, "secret", "root's own content\n");
    let dir = out_dir("hostile_agent");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let windows = dir.join("windows");
    as_nobody("mkdir", &[windows.to_str().unwrap()]);
    let planted_id = "20260101T000000.000Z";
    as_nobody(
        "ln",
        &[
            "-s",
            secret.to_str().unwrap(),
            windows
                .join(format!("{planted_id}.pb.gz"))
                .to_str()
                .unwrap(),
        ],
    );
    let log_link = dir.join("agent.log");
    as_nobody(
        "ln",
        &["-s", secret.to_str().unwrap(), log_link.to_str().unwrap()],
    );
    let port = crossprof_tests::http::free_port();
    let agent = |log: &Path| {
        let mut cmd = Command::new(crossprof_tests::crossprof_bin());
        cmd.args(["agent", "--window", "1s", "--dir"])
            .arg(&windows)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log-file"])
            .arg(log)
            .args(["--otlp-endpoint", "http://127.0.0.1:9"]);
        cmd
    };
    // The log file a link: refused.
    let refused = output_within(&mut agent(&log_link), Duration::from_secs(30));
    let stderr = &refused.stderr;
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("agent.log"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root's own content\n"
    );
    // The folder nobody's: windows written safely, the planted one ignored.
    let target = spinner(30.0, "agentdir");
    let running = Guard(
        agent(&dir.join("real.log"))
            .args(["--pid", &target.pid().to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let listed = loop {
        if let Some((2.., v)) = windows_listed(&addr) {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no windows written"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !listed.to_string().contains(planted_id),
        "the planted window is listed: {listed}"
    );
    let served =
        crossprof_tests::http::get(&addr, &format!("/flamegraph.svg?window={planted_id}"), &[])
            .expect("an answer");
    assert!(
        served.status != 200 && !served.text().contains("root's own"),
        "the planted window is served: {}",
        served.status
    );
    drop(running);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root's own content\n"
    );
    for entry in std::fs::read_dir(&windows).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(planted_id) {
            continue;
        }
        if name == "outbox-otlp" {
            assert!(meta.is_dir() && meta.uid() == 0, "{name}");
            assert_eq!(meta.mode() & 0o777, 0o700, "{name}");
        } else {
            assert!(meta.is_file() && meta.uid() == 0, "{name}");
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
        }
    }
}

/// The agent's `/api/windows` listing and how many windows it lists as
/// written whole; `None` if the agent does not answer.
fn windows_listed(addr: &str) -> Option<(usize, serde_json::Value)> {
    let v: serde_json::Value = crossprof_tests::http::get(addr, "/api/windows", &[])?.json();
    let whole = v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["on_disk"] == true)
        .count();
    Some((whole, v))
}

/// [`windows_listed`]'s count, 0 if the agent does not answer.
fn windows_on_disk(addr: &str) -> usize {
    windows_listed(addr).map_or(0, |(whole, _)| whole)
}

/// An assembly a root .NET process mapped from a folder another user can
/// write, replaced by that user with a FIFO once the agent has seen it
/// mapped: the agent reads a mapped assembly's ReadyToRun code 2 s after it
/// first sees the process (`agent::PRECOMPILED_AFTER`), and must read it
/// through the handle it opened at first sight, never the path again (an open
/// of a FIFO for reading waits for a writer: for ever; a link to `/dev/zero`
/// there would be read without end). Its windows go on being written and it
/// stops when told.
#[test]
fn an_assembly_replaced_by_a_fifo_once_mapped_does_not_stall_the_agent() {
    let runtime = Dotnet::Net8;
    let dir = out_dir("hostile_assembly");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A ReadyToRun assembly (a framework one, copied): its code is mapped
    // executable from the path, which is what crossprof reads it for.
    let lib = dir.join("System.Collections.dll");
    let _ = std::fs::remove_file(&lib);
    std::fs::copy(
        runtime
            .host()
            .with_file_name("shared/Microsoft.NETCore.App")
            .join(runtime.version())
            .join("System.Collections.dll"),
        &lib,
    )
    .unwrap();
    let fixture = runtime.fixture("loads");
    let mut target = runtime
        .command(&fixture, &[lib.to_str().unwrap(), "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the .NET fixture");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(target.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let target = Guard(target);
    assert_eq!(line.trim(), "loaded System.Collections", "{line}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).unwrap();
    assert!(
        maps.lines()
            .any(|l| l.contains(" r-xp ") && l.ends_with(lib.to_str().unwrap())),
        "the runtime did not map {}'s code: {maps}",
        lib.display()
    );
    let port = crossprof_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Guard(
        Command::new(crossprof_tests::crossprof_bin())
            .args(["agent", "--window", "1s", "--dir"])
            .arg(dir.join("windows"))
            .args(["--listen", &addr, "--pid", &target.pid().to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    // Its first window: it has seen the process and its maps.
    let start = Instant::now();
    while windows_on_disk(&addr) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no window");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fifo = dir.join("fifo");
    as_nobody("mkfifo", &["-m", "0666", fifo.to_str().unwrap()]);
    as_nobody("mv", &["-f", fifo.to_str().unwrap(), lib.to_str().unwrap()]);
    let swapped = start.elapsed();
    assert!(
        swapped < Duration::from_secs(2),
        "replaced only {swapped:?} after the agent started: it may have read the file already"
    );
    let before = windows_on_disk(&addr);
    std::thread::sleep(Duration::from_secs(5));
    let after = windows_on_disk(&addr);
    assert!(
        after >= before + 3,
        "{before} windows before the swap, {after} 5 s after: the agent stalled"
    );
    // SIGTERM: it stops, promptly.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    agent.wait_for(Duration::from_secs(10));
}
