//! Bad input: one line on stderr that says what was wrong and what to do, exit
//! status 2, and no output written.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use crossprof_tests::{Run, crossprof_bin, out_dir, run_crossprof};

const LIMIT: Duration = Duration::from_secs(30);

/// Exit 2, exactly one `crossprof: error: ` line that contains `needle`, and `dir`
/// (when given) left without any file.
fn assert_rejected(run: &Run, needle: &str, dir: Option<&Path>) {
    assert_eq!(run.status.code(), Some(2), "stderr: {}", run.stderr);
    let lines: Vec<_> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("crossprof: error: "), "{:?}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
    if let Some(dir) = dir
        && dir.exists()
    {
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(files.is_empty(), "files written on bad input: {files:?}");
    }
}

fn out(name: &str) -> (std::path::PathBuf, String) {
    let dir = out_dir(name).join("out");
    let s = dir.to_str().unwrap().to_owned();
    (dir, s)
}

#[test]
fn frequency_zero_or_above_the_kernel_limit() {
    let (dir, d) = out("err_freq");
    let run = run_crossprof(&["record", "--freq", "0", "-o", &d, "--", "true"], LIMIT);
    assert_rejected(&run, "--freq 0", Some(&dir));
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let above = (max + 1).to_string();
    let run = run_crossprof(&["record", "--freq", &above, "-o", &d, "--", "true"], LIMIT);
    assert_rejected(&run, &format!("use 1 to {max} Hz"), Some(&dir));
    assert!(!dir.exists(), "the output folder was created on bad input");
}

#[test]
fn pid_that_does_not_exist() {
    let (dir, d) = out("err_pid");
    // A child that has exited and been reaped: its pid is free.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let run = run_crossprof(&["record", "--pid", &pid.to_string(), "-o", &d], LIMIT);
    assert_rejected(
        &run,
        &format!("--pid {pid}: no process has that id"),
        Some(&dir),
    );
    let run = run_crossprof(&["record", "--pid", "4194305", "-o", &d], LIMIT);
    assert_rejected(&run, "--pid 4194305: no process has that id", Some(&dir));
}

#[test]
fn command_that_cannot_start() {
    let (dir, d) = out("err_command");
    let run = run_crossprof(&["record", "-o", &d, "--", "/nonexistent/prog"], LIMIT);
    assert_rejected(&run, "cannot start `/nonexistent/prog`", Some(&dir));
    let run = run_crossprof(&["record", "-o", &d, "--", "no-such-command-xp"], LIMIT);
    assert_rejected(&run, "not found in PATH", Some(&dir));
}

#[test]
fn output_folder_that_cannot_be_written() {
    let base = out_dir("err_output");
    let file = base.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("sub");
    let run = run_crossprof(
        &["record", "-o", under_file.to_str().unwrap(), "--", "true"],
        LIMIT,
    );
    assert_rejected(&run, "cannot write to output folder", None);
    let run = run_crossprof(
        &["record", "-o", "/proc/crossprof-test", "--", "true"],
        LIMIT,
    );
    assert_rejected(&run, "/proc/crossprof-test", None);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn not_root() {
    // A copy of the binary that the unprivileged user can run, wherever target/ is.
    let base = out_dir("err_not_root");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    for a in base.ancestors().skip(1) {
        let mode = a.metadata().unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            // A folder on the way that "other" cannot cross: use /tmp instead.
            return not_root_from(&std::env::temp_dir().join("crossprof-not-root"));
        }
    }
    not_root_from(&base);
}

fn not_root_from(base: &Path) {
    std::fs::create_dir_all(base).unwrap();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = base.join("crossprof");
    std::fs::copy(crossprof_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.join("out");
    let run: Run = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["record", "-o", dir.to_str().unwrap(), "--", "true"])
        .output()
        .expect("run setpriv (util-linux)")
        .into();
    assert_rejected(&run, "needs root", Some(&dir));
}

#[test]
fn syntax_errors_are_one_line_too() {
    let run = run_crossprof(&["record", "--bogus"], LIMIT);
    assert_rejected(&run, "--bogus", None);
    let run = run_crossprof(&["record", "--duration", "-1"], LIMIT);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = run_crossprof(&["record", "--duration", "0", "--", "true"], LIMIT);
    assert_rejected(&run, "--duration 0", None);
}

#[test]
fn a_debug_dir_that_is_not_a_folder() {
    let (dir, d) = out("err_debug_dir");
    let run = run_crossprof(
        &[
            "record",
            "--debug-dir",
            "/nonexistent/symbols",
            "-o",
            &d,
            "--",
            "true",
        ],
        LIMIT,
    );
    assert_rejected(
        &run,
        "--debug-dir /nonexistent/symbols is not a readable folder",
        Some(&dir),
    );
}

#[test]
fn a_group_by_level_that_does_not_exist() {
    let (dir, d) = out("err_group_by");
    let run = run_crossprof(
        &["record", "--group-by", "colour", "-o", &d, "--", "true"],
        LIMIT,
    );
    assert_rejected(
        &run,
        "use goroutine, state, trace, container or label:KEY",
        Some(&dir),
    );
}

#[test]
fn a_trace_id_that_is_not_one() {
    let (dir, d) = out("err_trace_id");
    let run = run_crossprof(
        &["record", "--trace-id", "0AF7", "-o", &d, "--", "true"],
        LIMIT,
    );
    assert_rejected(
        &run,
        "is not a trace id: give the 32 lower-case hex digits",
        Some(&dir),
    );
}

#[test]
fn kernel_waits_without_off_cpu_spans() {
    let (dir, d) = out("err_kernel_waits");
    let run = run_crossprof(&["record", "--kernel-waits", "-o", &d, "--", "true"], LIMIT);
    assert_rejected(
        &run,
        "--kernel-waits needs off-CPU spans: add --mode offcpu or --mode wall",
        Some(&dir),
    );
}

/// Every numeric or parsed flag of `record`, `agent` and `diff`, given a bad
/// value (zero where zero means nothing, negative, huge, not a number, empty,
/// past the type's range): exit 2 and one line that names the flag, never a
/// panic (101) or the panic hook's 70, and nothing started or written.
#[test]
fn every_flag_with_a_bad_value_is_one_line_naming_it() {
    let huge = "99999999999999999999999";
    let common: &[&str] = &["-1", "abc", "", huge];
    let table: &[(&str, &str, &[&str])] = &[
        ("record", "--freq", &["0"]),
        (
            "record",
            "--duration",
            &[
                "0",
                "1e19",
                "1e300",
                "18446744073709551616",
                "nan",
                "inf",
                "-0.5",
            ],
        ),
        ("record", "--pid", &["0", "99999999999"]),
        ("record", "--min-block", &[]),
        ("record", "--min-go-wait", &[]),
        ("record", "--slow-ms", &[]),
        ("agent", "--freq", &["0"]),
        ("agent", "--pid", &["0"]),
        ("agent", "--min-block", &[]),
        ("agent", "--window", &["0", "0.001s", "1e300s", "-5s"]),
        ("agent", "--retain", &["0", "-5m"]),
        (
            "agent",
            "--max-disk",
            &["0", "99999999999999999999GB", "1e300GB"],
        ),
        ("agent", "--listen", &["1.2.3.4:99999", "localhost"]),
        ("agent", "--comm", &["", "a-name-longer-than-15-bytes"]),
    ];
    let (dir, d) = out("err_table");
    let marker = dir.with_file_name("command-ran");
    let _ = std::fs::remove_file(&marker);
    let marker_s = marker.to_str().unwrap().to_owned();
    for (command, flag, values) in table {
        let values = values
            .iter()
            .chain(if *flag == "--comm" || *flag == "--listen" {
                [].iter()
            } else {
                common.iter()
            });
        for value in values {
            let assigned = format!("{flag}={value}");
            let mut args = vec![*command, assigned.as_str()];
            match *command {
                "record" => args.extend(["-o", &d, "--", "touch", &marker_s]),
                _ => args.extend(["--dir", &d]),
            }
            let run = run_crossprof(&args, LIMIT);
            assert_ne!(
                run.status.code(),
                Some(101),
                "{args:?} panicked: {}",
                run.stderr
            );
            assert_ne!(
                run.status.code(),
                Some(70),
                "{args:?} panicked: {}",
                run.stderr
            );
            assert_rejected(&run, flag, Some(&dir));
            assert!(!marker.exists(), "{args:?} started its command");
        }
    }
}

/// `record --` with nothing after it is a mistake, not a whole-system
/// recording.
#[test]
fn a_bare_double_dash_names_the_missing_command() {
    let (dir, d) = out("err_bare_dash");
    let run = run_crossprof(&["record", "-o", &d, "--"], LIMIT);
    assert_rejected(&run, "command", Some(&dir));
}

/// The agent's token is a secret: a token file others can read is refused.
#[test]
fn a_token_file_others_can_read_is_refused() {
    let (dir, d) = out("err_token_mode");
    let token = dir.with_file_name("token");
    std::fs::write(&token, "s3cret-token-for-the-test\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = run_crossprof(
        &[
            "agent",
            "--dir",
            &d,
            "--token-file",
            token.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_rejected(&run, "--token-file", None);
}

/// `--pid` of a zombie or of a kernel thread says what it is (it said "did
/// not run on a CPU").
#[test]
fn a_zombie_or_a_kernel_thread_pid_is_named_as_such() {
    let (dir, d) = out("err_zombie");
    // A child that exited and is not waited for: a zombie until dropped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .contains(") Z ")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = run_crossprof(&["record", "--pid", &pid, "-o", &d], LIMIT);
    child.wait().unwrap();
    assert_rejected(&run, "zombie", Some(&dir));
    // kthreadd is pid 2 on every Linux.
    let run = run_crossprof(&["record", "--pid", "2", "-o", &d], LIMIT);
    assert_rejected(&run, "kernel thread", Some(&dir));
}

/// Issue #20: crossprof started in a pid namespace of its own (a container
/// without the host's pids) cannot match the kernel's pids to its /proc: it
/// says so in one line, naming what to do, for `record` and for the agent.
#[test]
fn a_pid_namespace_of_its_own() {
    let (dir, s) = out("err_pid_namespace");
    for args in [
        vec!["record", "-o", &s, "--duration", "1"],
        vec!["agent", "--dir", &s, "--window", "1s"],
    ] {
        let run: Run = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(crossprof_bin())
            .args(&args)
            .output()
            .expect("run unshare (util-linux)")
            .into();
        assert_rejected(&run, "pid namespace of its own", Some(&dir));
        assert!(run.stderr.contains("--pid=host"), "{}", run.stderr);
    }
}
