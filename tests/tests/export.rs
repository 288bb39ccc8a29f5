//! End to end: the profile formats other tools read. `record` writes pprof,
//! read back by the reference reader (`go tool pprof`, Debian's Go 1.19),
//! speedscope's JSON, and `crossprof diff` draws two real recordings.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crossprof_tests::{
    Go, GoBuild, count_where, go_tool_pprof as pprof, native_fixture, out_dir, read_folded,
    record_command, run_crossprof,
};

const LIMIT: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `go tool pprof -top`'s rows: (flat share %, function).
fn top_rows(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let share = cols.get(1)?.trim_end_matches('%').parse().ok()?;
            Some((share, cols.get(5..)?.join(" ")))
        })
        .collect()
}

#[test]
fn go_tool_pprof_reads_the_recorded_profile_functions_lines_labels_and_build_id() {
    let dir = out_dir("export_pprof_go");
    let bin = Go::Go123.fixture("chain", GoBuild::Stripped);
    let run = record_command(
        &dir,
        &[
            "--group-by",
            "goroutine",
            "--per-thread",
            "--format",
            "pprof,speedscope",
        ],
        &bin,
        &["2"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        !dir.join("flamegraph.svg").exists(),
        "--format left the SVG out"
    );
    assert!(!dir.join("profile.folded").exists());
    let profile = dir.join("profile.pb.gz");
    let p = s(&profile);

    // -top: the hot function (inlined into main.hot) holds most of the time.
    let top = pprof(&["-top", p]);
    let rows = top_rows(&top);
    let hot: f64 = rows
        .iter()
        .filter(|(_, f)| f.starts_with("main.mix") || f.starts_with("main.hot"))
        .map(|(share, _)| share)
        .sum();
    assert!(hot > 90.0, "main.hot/mix at {hot}% flat:\n{top}");
    assert!(top.contains("Type: cpu"), "{top}");

    // -traces: the chain, leaf first, in order.
    let traces = pprof(&["-traces", p]);
    let chain =
        "main.mix (inline)\n main.hot\n main.work\n main.main\n runtime.main\n runtime.goexit";
    let squeezed: String = traces
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n ");
    assert!(squeezed.contains(chain), "no chain in:\n{traces}");

    // -tags: the process, its runtime, goroutine and thread as labels.
    let tags = pprof(&["-tags", p]);
    for want in [
        "comm: Total",
        "chain",
        "runtime: Total",
        "go",
        "goroutine: Total",
        "thread: Total",
    ] {
        assert!(tags.contains(want), "no {want:?} in:\n{tags}");
    }
    let goroutine_1 = tags
        .split("goroutine: Total")
        .nth(1)
        .and_then(|t| t.lines().nth(1))
        .unwrap_or_default()
        .to_owned();
    assert!(
        goroutine_1.trim().ends_with(": 1"),
        "main goroutine first: {goroutine_1}\n{tags}"
    );

    // -lines: file and line from .gopclntab (the binary is stripped).
    let src_line = 1 + std::fs::read_to_string(
        crossprof_tests::workspace_root().join("tests/fixtures/go/chain.go"),
    )
    .unwrap()
    .lines()
    .position(|l| l.contains("x = mix("))
    .unwrap();
    let lines = pprof(&["-traces", "-lines", p]);
    assert!(
        lines.contains("main.hot /") && lines.contains(&format!("chain.go:{src_line}")),
        "no main.hot at chain.go:{src_line}:\n{lines}"
    );

    // -raw: the mapping carries the binary's Go build id.
    let id = Command::new(Go::Go119.go())
        .args(["tool", "buildid", s(&bin)])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let raw = pprof(&["-raw", p]);
    assert!(
        !id.is_empty() && raw.contains(&id),
        "build id {id} not in:\n{raw}"
    );

    // speedscope: one sampled profile, its stacks root first.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("profile.speedscope.json")).unwrap())
            .unwrap();
    let frames = doc["shared"]["frames"].as_array().unwrap();
    let name = |i: &serde_json::Value| {
        frames[i.as_u64().unwrap() as usize]["name"]
            .as_str()
            .unwrap()
    };
    let prof = &doc["profiles"][0];
    assert_eq!(prof["type"], "sampled");
    let samples = prof["samples"].as_array().unwrap();
    let weights = prof["weights"].as_array().unwrap();
    let (mut hot, mut all) = (0, 0);
    for (st, w) in samples.iter().zip(weights) {
        let w = w.as_u64().unwrap();
        all += w;
        if st.as_array().unwrap().iter().any(|f| name(f) == "main.hot") {
            hot += w;
        }
    }
    assert!(hot * 10 >= all * 9, "main.hot in {hot} of {all} samples");
    assert_eq!(prof["endValue"].as_u64(), Some(all));
}

/// Two processes of one name (a script starting two workers): two speedscope
/// profiles, `chain (PID)` each, each with about half the samples and its
/// own hot chain; the folded file merges them under one root.
#[test]
fn speedscope_has_one_profile_per_process_not_per_name() {
    let dir = out_dir("export_speedscope_two");
    let bin = native_fixture("chain");
    let script = format!("{b} 1 & {b} 1; wait", b = bin.display());
    let sh = std::path::Path::new("/bin/sh");
    let run = record_command(
        &dir,
        &["--format", "folded,speedscope"],
        sh,
        &["-c", &script],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("profile.speedscope.json")).unwrap())
            .unwrap();
    let frames = doc["shared"]["frames"].as_array().unwrap();
    let chains: Vec<&serde_json::Value> = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("chain ("))
        .collect();
    assert_eq!(chains.len(), 2, "{doc:#}");
    assert_ne!(chains[0]["name"], chains[1]["name"]);
    let mut totals = Vec::new();
    for p in &chains {
        let (mut hot, mut all) = (0, 0);
        for (st, w) in p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["weights"].as_array().unwrap())
        {
            let w = w.as_u64().unwrap();
            all += w;
            let names: Vec<&str> = st
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    frames[i.as_u64().unwrap() as usize]["name"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            if names
                .windows(4)
                .any(|w| w == ["main", "outer", "middle", "hot"])
            {
                hot += w;
            }
        }
        assert!(
            all >= 50 && hot * 10 >= all * 8,
            "{}: main;outer;middle;hot in {hot} of {all}",
            p["name"]
        );
        totals.push(all);
    }
    let folded = read_folded(&dir);
    let (_, merged) = count_where(&folded, "chain", |_| true);
    assert_eq!(
        merged,
        totals.iter().sum::<u64>(),
        "the folded file merges both"
    );
}

#[test]
fn a_c_programs_pprof_has_its_gnu_build_id_and_hot_function() {
    let dir = out_dir("export_pprof_c");
    let bin = native_fixture("chain");
    let run = record_command(&dir, &[], &bin, &["2"]);
    assert!(run.status.success(), "{}", run.stderr);
    for f in [
        "profile.folded",
        "flamegraph.svg",
        "profile.pb.gz",
        "summary.json",
    ] {
        assert!(dir.join(f).exists(), "default formats: no {f}");
    }
    let p = dir.join("profile.pb.gz");
    let top = top_rows(&pprof(&["-top", s(&p)]));
    assert_eq!(top.first().map(|r| r.1.as_str()), Some("hot"), "{top:?}");
    // Lines from the fixture's DWARF (-g): hot's loop.
    let src = std::fs::read_to_string(
        crossprof_tests::workspace_root().join("tests/fixtures/native/chain.c"),
    )
    .unwrap();
    let hot_at = 1 + src
        .lines()
        .position(|l| l.contains("6364136223846793005UL"))
        .unwrap();
    let lines = pprof(&["-top", "-lines", s(&p)]);
    let first = lines
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    // The loop's two lines (its header and the multiply) share the time.
    assert!(
        first.contains("hot ")
            && [hot_at - 1, hot_at]
                .iter()
                .any(|n| format!("{first} ").contains(&format!("chain.c:{n} "))),
        "hot not first at chain.c:{hot_at}:\n{lines}"
    );
    let notes = Command::new("readelf")
        .args(["-n", s(&bin)])
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&notes.stdout).into_owned();
    let id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("gcc wrote a build id");
    let raw = pprof(&["-raw", s(&p)]);
    assert!(raw.contains(id), "GNU build id {id} not in:\n{raw}");
}

/// A frame of an SVG flamegraph.
#[derive(Debug)]
struct Frame {
    name: String,
    /// Left edge and width, in % of the graph.
    x: f64,
    w: f64,
    fill: (u8, u8, u8),
}

/// Every frame of an SVG flamegraph inferno drew.
fn frames(svg: &str) -> Vec<Frame> {
    let attr = |g: &str, a: &str| -> Option<String> {
        Some(
            g.split(&format!(" {a}=\""))
                .nth(1)?
                .split('"')
                .next()?
                .to_owned(),
        )
    };
    svg.split("<g><title>")
        .skip(1)
        .filter_map(|g| {
            let name = g.split(" (").next()?.to_owned();
            let fill = attr(g, "fill")?;
            let c: Vec<u8> = fill
                .trim_start_matches("rgb(")
                .trim_end_matches(')')
                .split(',')
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(Frame {
                name,
                x: attr(g, "x")?.trim_end_matches('%').parse().ok()?,
                w: attr(g, "width")?.trim_end_matches('%').parse().ok()?,
                fill: (*c.first()?, *c.get(1)?, *c.get(2)?),
            })
        })
        .collect()
}

fn record_twofuncs(name: &str, a: &str, format: &str) -> PathBuf {
    let dir = out_dir(name);
    let run = record_command(
        &dir,
        &["--format", format],
        &native_fixture("twofuncs"),
        &["3", a, "1"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    dir
}

#[test]
fn diff_of_identical_profiles_is_neutral_and_a_function_made_twice_as_hot_is_red() {
    let before = record_twofuncs("export_diff_before", "1", "pprof");
    let after = record_twofuncs("export_diff_after", "2", "folded");
    let out = out_dir("export_diff");
    let before = before.join("profile.pb.gz");
    let after = after.join("profile.folded");

    // Identical inputs (one of them read as pprof, one as folded): neutral.
    let same = out.join("same.svg");
    let run = run_crossprof(&["diff", s(&before), s(&before), "-o", s(&same)], LIMIT);
    assert!(run.status.success(), "{}", run.stderr);
    let f = frames(&std::fs::read_to_string(&same).unwrap());
    assert!(f.iter().any(|f| f.name == "alpha"), "{f:?}");
    assert!(
        f.iter().all(|f| f.fill == (250, 250, 250)),
        "not all neutral: {f:?}"
    );

    // alpha twice as hot: the burn under it (the leaf, its self time) red,
    // the one under beta, whose share shrank, blue.
    let diff = out.join("diff.svg");
    let run = run_crossprof(&["diff", s(&before), s(&after), "-o", s(&diff)], LIMIT);
    assert!(run.status.success(), "{}", run.stderr);
    let f = frames(&std::fs::read_to_string(&diff).unwrap());
    let under = |caller: &str| -> (u8, u8, u8) {
        // The widest frame of that name: a few stacks cut short
        // (`[truncated: ...]`) have small ones of their own.
        let c = f
            .iter()
            .filter(|f| f.name == caller)
            .max_by(|a, b| a.w.total_cmp(&b.w))
            .unwrap_or_else(|| panic!("no {caller}: {f:?}"));
        f.iter()
            .filter(|b| b.name == "burn" && b.x >= c.x - 0.01 && b.x + b.w <= c.x + c.w + 0.01)
            .max_by(|a, b| a.w.total_cmp(&b.w))
            .unwrap_or_else(|| panic!("no burn under {caller}: {f:?}"))
            .fill
    };
    let (r, g, b) = under("alpha");
    assert!(
        r == 255 && g < 230 && b < 230,
        "alpha's burn not red: {:?}",
        (r, g, b)
    );
    let (r, g, b) = under("beta");
    assert!(
        b == 255 && r < 230 && g < 230,
        "beta's burn not blue: {:?}",
        (r, g, b)
    );

    // Bad input: one line, exit 2.
    let run = run_crossprof(
        &["diff", s(&diff), s(&after), "-o", s(&out.join("x.svg"))],
        LIMIT,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("not folded stacks, nor pprof"),
        "{}",
        run.stderr
    );
}
