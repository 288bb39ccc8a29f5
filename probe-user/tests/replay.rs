//! The replay tier: captured recordings (`tests/data/replay/<case>/`, see
//! `crossprof::replay`) replayed through the pipeline without root, and
//! their folded stacks checked against what was expected when they were
//! captured.
//!
//! `CROSSPROF_BLESS=1 cargo test --release -p probe-user --test replay` (as
//! root, after `cargo xtask build`) records each case again with `record
//! --capture`, checks that its replay gives what the recording wrote, and
//! rewrites the case. The fixtures are built so that another checkout
//! builds the same bytes (`-ffile-prefix-map`, `-trimpath`): a replay checks
//! every binary's build id against the capture's.
//!
//! `CROSSPROF_BLESS=expected` (no root needed) keeps the captures and
//! rewrites only what their replays are expected to give: for a change in
//! how stacks are shown, not in what is recorded. The chain check below
//! still holds each case to what it is about.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crossprof_tests::{Dotnet, Go, parse_folded, workspace_root};

/// A case: its name, `record`'s flags and the command it records.
struct Case {
    name: &'static str,
    flags: &'static [&'static str],
    command: fn() -> Vec<String>,
    /// A chain the stacks of the command's busy part have, in order...
    chain: &'static [&'static str],
    /// ... in at least this share of the samples (of the time, off-CPU).
    share: f64,
}

const CASES: &[Case] = &[
    Case {
        name: "native-chain",
        flags: &[],
        command: || vec![c_fixture("chain"), "0.6".into()],
        chain: &["main", "outer", "middle", "hot"],
        share: 0.8,
    },
    Case {
        name: "go-chain",
        flags: &[],
        command: || vec![go_fixture("chain"), "0.6".into()],
        chain: &["main.main", "main.work", "main.hot"],
        share: 0.8,
    },
    Case {
        name: "go-goroutines",
        flags: &["--group-by", "goroutine"],
        // Two busy goroutines, each under its own `goroutine N` level.
        command: || vec![go_fixture("goroutines"), "0.6".into(), "2".into()],
        chain: &["main.busy"],
        share: 0.8,
    },
    Case {
        name: "go-labels",
        flags: &["--group-by", "label:worker"],
        // Two busy goroutines under pprof.Do, worker=w0 and worker=w1: the
        // labels read from the process's memory, captured.
        command: || vec![go_fixture("labels"), "0.6".into(), "2".into()],
        chain: &["main.busy"],
        share: 0.8,
    },
    Case {
        name: "dotnet-chain",
        // No pprof: its source lines come from the runtime's JIT events,
        // which a capture does not hold (see `crossprof::replay`).
        flags: &["--format", "folded"],
        // JIT code named from the perf map the runtime was asked for, read
        // as the recording read it.
        command: || dotnet_command("chain", &["1.5"], None),
        chain: &[
            "Program::Main_[j]",
            "Program::Outer_[j]",
            "Program::Hot_[j]",
        ],
        share: 0.6,
    },
    Case {
        name: "pinvoke-mixed",
        flags: &["--format", "folded"],
        // C# -> P/Invoke -> Go (c-shared) -> cgo -> C -> Go: every runtime's
        // walk and naming in one stack.
        command: || dotnet_command("pinvoke", &["1.5"], Some(&go_cgo_library())),
        chain: &[
            "Prog::Main_[j]",
            "Prog::Outer_[j]",
            "[P/Invoke]",
            "main.Compute",
            "main.inner",
            "[cgo]",
            "c_outer",
            "c_middle",
            "crosscall2",
            "[cgo]",
            "main.goSpin",
            "main.spin",
        ],
        share: 0.6,
    },
    Case {
        name: "native-offcpu",
        flags: &["--mode", "offcpu"],
        // Naps 0.3 s, and its main thread waits as long to join it.
        command: || vec![c_fixture("sleeper"), "0.3".into()],
        chain: &["start_thread", "nap", "nanosleep", "[sleep]"],
        share: 0.45,
    },
];

/// Where this checkout's replay fixtures are built.
fn fixtures() -> PathBuf {
    crossprof_tests::target_dir().join("fixtures/replay")
}

/// `tests/fixtures/native/<name>.c`, built path-independently.
fn c_fixture(name: &str) -> String {
    let root = workspace_root();
    let out = fixtures().join(name);
    std::fs::create_dir_all(fixtures()).unwrap();
    // From the root, so that the compile folder is `.` too.
    let status = Command::new("gcc")
        .current_dir(&root)
        .args(["-O0", "-g", "-fno-omit-frame-pointer"])
        .arg(format!("-ffile-prefix-map={}=.", root.display()))
        .arg("-o")
        .arg(&out)
        .arg(root.join(format!("tests/fixtures/native/{name}.c")))
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc {name}");
    out.display().to_string()
}

/// `tests/fixtures/go/<name>.go`, built by Go 1.25 path-independently.
fn go_fixture(name: &str) -> String {
    let out = fixtures().join(format!("go-{name}"));
    let src = workspace_root().join(format!("tests/fixtures/go/{name}.go"));
    go_build(&workspace_root(), &[], &src, &out, false);
    out.display().to_string()
}

/// `tests/fixtures/go/cgo` as a C shared library (`libcgo.so`), built by
/// Go 1.25 with cgo path-independently (`-trimpath` maps the C objects'
/// paths too); returns its folder.
fn go_cgo_library() -> PathBuf {
    let dir = fixtures().join("cgo-shared");
    let package = workspace_root().join("tests/fixtures/go/cgo");
    go_build(
        &package,
        &["-buildmode=c-shared"],
        Path::new("."),
        &dir.join("libcgo.so"),
        true,
    );
    dir
}

/// `go build -trimpath FLAGS -o OUT SRC` by Go 1.25 in folder `dir`, with
/// cgo or without.
fn go_build(dir: &Path, flags: &[&str], src: &Path, out: &Path, cgo: bool) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let go = Go::Go125;
    let built = Command::new(go.go())
        .current_dir(dir)
        .args(["build", "-trimpath"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .env(
            "GOCACHE",
            crossprof_tests::target_dir()
                .join("go-cache")
                .join(go.version()),
        )
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .env("CGO_ENABLED", if cgo { "1" } else { "0" })
        .output()
        .expect("go build");
    assert!(
        built.status.success(),
        "go build {}: {}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
}

/// `tests/fixtures/dotnet/<name>.cs` run by .NET 8 with `args`, its native
/// libraries found in `libs`: through `env`, which sets what the host needs
/// and execs it (the process is `dotnet` from its exec on).
fn dotnet_command(name: &str, args: &[&str], libs: Option<&Path>) -> Vec<String> {
    let runtime = Dotnet::Net8;
    let dll = runtime.fixture(name);
    let host = runtime.host();
    let mut command = vec![
        "env".to_owned(),
        format!("DOTNET_ROOT={}", host.parent().unwrap().display()),
    ];
    if let Some(libs) = libs {
        command.push(format!("LD_LIBRARY_PATH={}", libs.display()));
    }
    command.push(host.display().to_string());
    command.push(dll.display().to_string());
    command.extend(args.iter().map(|a| (*a).to_owned()));
    command
}

fn case_dir(name: &str) -> PathBuf {
    workspace_root().join("tests/data/replay").join(name)
}

/// The checkout a case was captured in (its paths are moved to this one's).
fn captured_root(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("root"))
        .expect("the case's root file")
        .trim_end()
        .to_owned()
}

/// Records `case` again into its folder, and checks the replay of the new
/// capture against the recording's own folded stacks.
fn bless(case: &Case) {
    let dir = case_dir(case.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = crossprof_tests::out_dir(&format!("replay-{}", case.name));
    let command = (case.command)();
    let run = Command::new(crossprof_tests::crossprof_bin())
        .args(["record", "--capture"])
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(case.flags)
        .arg("--")
        .args(&command)
        .output()
        .expect("run crossprof");
    assert!(
        run.status.success(),
        "record: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let root = workspace_root().display().to_string();
    std::fs::write(dir.join("root"), format!("{root}\n")).unwrap();
    let replayed = crossprof::replay::replay(&dir, None).expect("replay");
    let recorded = std::fs::read_to_string(out.join("profile.folded")).unwrap();
    let (replayed_lines, recorded_lines) = (sorted(&replayed.folded), sorted(&recorded));
    let only = |a: &[&str], b: &[&str]| -> Vec<String> {
        a.iter()
            .filter(|l| !b.contains(l))
            .map(|l| (*l).to_owned())
            .collect()
    };
    assert!(
        replayed_lines == recorded_lines,
        "the replay of {} differs from its recording:\nonly replayed:\n{}\nonly recorded:\n{}",
        case.name,
        only(&replayed_lines, &recorded_lines).join("\n"),
        only(&recorded_lines, &replayed_lines).join("\n"),
    );
    std::fs::write(dir.join("expected.folded"), &replayed.folded).unwrap();
    std::fs::write(dir.join(EXPECTED_PPROF), pprof_text(&replayed.pprof)).unwrap();
}

/// A case's expected pprof, as [`pprof_text`] reads it.
const EXPECTED_PPROF: &str = "expected.pprof.txt";

/// A pprof profile as text: its sample types, then each stack (root first)
/// with its values, in stack order.
fn pprof_text(pprof: &[u8]) -> String {
    let read = crossprof::pprof::read(pprof).expect("pprof");
    let mut text = String::from("# ");
    let types: Vec<String> = read
        .sample_types
        .iter()
        .map(|(kind, unit)| format!("{kind}/{unit}"))
        .collect();
    text.push_str(&types.join(" "));
    text.push('\n');
    for (stack, values) in &read.stacks {
        let values: Vec<String> = values.iter().map(i64::to_string).collect();
        text.push_str(&format!("{stack} {}\n", values.join(" ")));
    }
    text
}

fn sorted(folded: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = folded.lines().collect();
    lines.sort_unstable();
    lines
}

#[test]
fn captured_recordings_replay_to_the_stacks_they_recorded() {
    let bless_env = std::env::var("CROSSPROF_BLESS").ok();
    let expected_only = bless_env.as_deref() == Some("expected");
    for case in CASES {
        if bless_env.is_some() && !expected_only {
            bless(case);
        }
        // The case's binaries, built here as they were where it was captured.
        (case.command)();
        let dir = case_dir(case.name);
        let relocate = (captured_root(&dir), workspace_root().display().to_string());
        let replayed = crossprof::replay::replay(&dir, Some(relocate))
            .unwrap_or_else(|e| panic!("replay {}: {e}", case.name));
        if expected_only {
            std::fs::write(dir.join("expected.folded"), &replayed.folded).unwrap();
            std::fs::write(dir.join(EXPECTED_PPROF), pprof_text(&replayed.pprof)).unwrap();
        }
        let expected = std::fs::read_to_string(dir.join("expected.folded")).unwrap();
        assert_eq!(
            sorted(&replayed.folded),
            sorted(&expected),
            "{}: the replay's folded stacks changed (if on purpose: CROSSPROF_BLESS=1, see the file's doc)",
            case.name
        );
        let expected_pprof = std::fs::read_to_string(dir.join(EXPECTED_PPROF)).unwrap();
        assert!(
            pprof_text(&replayed.pprof) == expected_pprof,
            "{}: the replay's pprof changed (if on purpose: CROSSPROF_BLESS=1)",
            case.name
        );
        // What the case is about, so that a blessed regression cannot pass:
        // the chain in order in most stacks.
        let stacks = parse_folded(&replayed.folded);
        let total: u64 = stacks.iter().map(|s| s.count).sum();
        let chained: u64 = stacks
            .iter()
            .filter(|s| {
                let mut at = 0;
                for f in &s.frames {
                    // A call Go inlined (`main.inner_[i]`) is its plain name.
                    let plain = f.strip_suffix("_[i]").unwrap_or(f);
                    if case.chain.get(at) == Some(&plain) {
                        at += 1;
                    }
                }
                at == case.chain.len()
            })
            .map(|s| s.count)
            .sum();
        if case.flags.contains(&"label:worker") {
            let workers: std::collections::BTreeSet<&String> = stacks
                .iter()
                .filter(|s| s.frames.iter().any(|f| f == "main.busy"))
                .filter_map(|s| s.frames.iter().find(|f| f.starts_with("worker=")))
                .collect();
            assert_eq!(
                workers.into_iter().cloned().collect::<Vec<_>>(),
                ["worker=w0", "worker=w1"],
                "{}: the busy goroutines' labels",
                case.name
            );
        }
        if case.flags.contains(&"goroutine") {
            let ids: std::collections::BTreeSet<&String> = stacks
                .iter()
                .filter(|s| s.frames.iter().any(|f| f == "main.busy"))
                .filter_map(|s| s.frames.iter().find(|f| f.starts_with("goroutine ")))
                .collect();
            assert_eq!(ids.len(), 2, "{}: the busy goroutines: {ids:?}", case.name);
        }
        assert!(
            total >= 20 && chained as f64 >= total as f64 * case.share,
            "{}: {chained} of {total} samples have {:?}",
            case.name,
            case.chain
        );
        // The pprof of the same replay holds the same samples (off-CPU
        // time in nanoseconds there, microseconds in folded stacks).
        let read = crossprof::pprof::read(&replayed.pprof).expect("pprof");
        let (column, per) = match read.sample_types.iter().position(|(_, u)| u == "count") {
            Some(samples) => (samples, 1),
            None => (read.default_column, 1000),
        };
        let pprof_total: i64 = read.stacks.values().map(|v| v[column]).sum();
        assert_eq!(
            pprof_total as u64,
            total * per,
            "{}: pprof's {:?}",
            case.name,
            read.sample_types[column]
        );
    }
}
