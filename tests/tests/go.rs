//! Go (issue #4, first step): Go binaries named from `.gopclntab` — normal,
//! stripped (`-s -w`) and PIE builds of Go 1.19 to 1.27 — with inlined calls as
//! frames of their own.

use std::{path::Path, process::Command};

use crossprof_tests::{
    Go, GoBuild, Run, count_where, crossprof_bin, out_dir, read_folded, read_summary,
};

/// `crossprof record -q FLAGS -o DIR -- BIN ARGS`, to the end.
fn record(dir: &Path, flags: &[&str], bin: &Path, args: &[&str]) -> Run {
    Command::new(crossprof_bin())
        .args(["record", "-q"])
        .args(flags)
        .arg("-o")
        .arg(dir)
        .arg("--")
        .arg(bin)
        .args(args)
        .output()
        .expect("run crossprof")
        .into()
}

#[test]
fn go_chain_and_inlined_call_are_named_in_every_version_and_build() {
    for go in Go::ALL {
        for build in GoBuild::ALL {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("chain", build);
            let dir = out_dir(&format!("go_chain_{}_{build:?}", go.version()));
            let run = record(&dir, &[], &bin, &["2"]);
            assert!(run.status.success(), "{what}: {}", run.stderr);
            assert!(run.stdout.contains("done false"), "{what}: {}", run.stdout);
            let stacks = read_folded(&dir);
            let (chain, all) = count_where(&stacks, "chain", |s| {
                s.contains_chain(&["main.main", "main.work", "main.hot"])
            });
            assert!(all >= 100, "{what}: only {all} samples");
            assert!(
                chain * 100 >= all * 80,
                "{what}: main.main;main.work;main.hot in {chain} of {all}:\n{stacks:#?}"
            );
            // mix is inlined into hot: a frame of its own, annotated _[i] (92-99%
            // of samples measured).
            let (inlined, _) = count_where(&stacks, "chain", |s| {
                s.contains_chain(&["main.hot", "main.mix_[i]"])
            });
            assert!(
                inlined * 100 >= all * 50,
                "{what}: main.hot;main.mix_[i] in {inlined} of {all}"
            );
            // The Go version, from the binary's build info.
            let summary = read_summary(&dir);
            let runtime = summary["processes"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["comm"] == "chain"))
                .and_then(|p| p["runtime"].as_str())
                .unwrap_or("");
            assert!(
                runtime.starts_with(&format!("go {}", go.version())),
                "{what}: runtime {runtime:?} in {}",
                summary["processes"]
            );
        }
    }
}

#[test]
fn a_corrupt_gopclntab_gives_unnamed_frames_and_a_note_and_the_program_runs() {
    let bin = Go::Go123.fixture("chain", GoBuild::Stripped);
    let dir = out_dir("go_corrupt");
    let broken = dir.join("chain");
    let mut data = std::fs::read(&bin).unwrap();
    // Break the table's header where only outside readers look: the offset of
    // its function-name table (the runtime itself reads that from moduledata, and
    // refuses to start on a bad magic or function table).
    let at = find(&data, &[0xF1, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x08]).expect("magic");
    data[at + 32..at + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&broken, &data).unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("out");
    let run = record(&out, &[], &broken, &["1"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.contains("done false"),
        "the program did not run: {}",
        run.stdout
    );
    let note = "chain: unreadable .gopclntab: offset outside the section";
    assert!(run.stderr.contains(note), "{}", run.stderr);
    // Stripped and unreadable: no Go name is made up.
    let stacks = read_folded(&out);
    let (named, all) = count_where(&stacks, "chain", |s| {
        s.frames.iter().any(|f| f.starts_with("main."))
    });
    assert!(all > 50, "only {all} samples");
    assert_eq!(named, 0, "Go names without a table");
    let (unnamed, _) = count_where(&stacks, "chain", |s| {
        s.frames.iter().any(|f| f.starts_with("[chain+0x"))
    });
    assert!(
        unnamed * 10 >= all * 9,
        "{unnamed} of {all} with [chain+0x...] frames"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn each_sample_carries_its_goroutine_in_every_version() {
    for go in Go::ALL {
        let what = format!("go {}", go.version());
        let bin = go.fixture("goroutines", GoBuild::Stripped);
        let dir = out_dir(&format!("go_goroutines_{}", go.version()));
        let run = record(&dir, &["--group-by", "goroutine"], &bin, &["2", "4"]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        // The ids the goroutines printed are the ids the busy samples carry.
        let printed: std::collections::BTreeSet<String> = run
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("goid "))
            .map(|id| format!("goroutine {id}"))
            .collect();
        assert_eq!(printed.len(), 4, "{what}: {}", run.stdout);
        let stacks = read_folded(&dir);
        let busy: Vec<_> = stacks
            .iter()
            .filter(|s| s.frames[0] == "goroutines" && s.frames.iter().any(|f| f == "main.busy"))
            .collect();
        let total: u64 = busy.iter().map(|s| s.count).sum();
        let seen: std::collections::BTreeSet<String> = busy
            .iter()
            .map(|s| s.frames[1].clone())
            .filter(|f| f.starts_with("goroutine "))
            .collect();
        assert_eq!(seen, printed, "{what}: goroutine frames over main.busy");
        // Only the first moments, before crossprof has read the binary's Go
        // version, go without a goroutine.
        let (without, _) = count_where(&stacks, "goroutines", |s| {
            s.frames.iter().any(|f| f == "main.busy") && !s.frames[1].starts_with("goroutine ")
        });
        assert!(
            without * 10 <= total,
            "{what}: {without} of {total} busy samples without a goroutine"
        );
        // Each goroutine ran about a quarter of the busy time (2 cores, 4 busy
        // goroutines: each gets its share).
        for g in &printed {
            let n: u64 = busy
                .iter()
                .filter(|s| &s.frames[1] == g)
                .map(|s| s.count)
                .sum();
            assert!(n * 8 >= total, "{what}: {g} has {n} of {total} samples");
        }
    }
}

#[test]
fn pprof_labels_are_a_frame_level_in_every_version() {
    for go in Go::ALL {
        let what = format!("go {}", go.version());
        let bin = go.fixture("labels", GoBuild::Normal);
        let dir = out_dir(&format!("go_labels_{}", go.version()));
        let run = record(
            &dir,
            &["--group-by", "goroutine", "--group-by", "label:worker"],
            &bin,
            &["2", "3"],
        );
        assert!(run.status.success(), "{what}: {}", run.stderr);
        // goroutine id -> its worker label, as the program printed them.
        let printed: std::collections::BTreeMap<String, String> = run
            .stdout
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[0] == "goid")
                    .then(|| (format!("goroutine {}", f[1]), format!("worker={}", f[3])))
            })
            .collect();
        assert_eq!(printed.len(), 3, "{what}: {}", run.stdout);
        let stacks = read_folded(&dir);
        let mut seen = std::collections::BTreeMap::new();
        let mut total = 0;
        let mut labelled = 0;
        for s in stacks
            .iter()
            .filter(|s| s.frames[0] == "labels" && s.frames.iter().any(|f| f == "main.busy"))
        {
            total += s.count;
            if let Some(label) = printed.get(&s.frames[1]) {
                if &s.frames[2] == label {
                    labelled += s.count;
                }
                *seen.entry(s.frames[2].clone()).or_insert(0) += s.count;
            }
        }
        // Every busy goroutine's samples carry its own label, and no other.
        assert_eq!(
            seen.keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            printed.values().cloned().collect(),
            "{what}: labels over main.busy: {seen:?}"
        );
        assert!(
            labelled * 10 >= total * 9,
            "{what}: {labelled} of {total} busy samples labelled right"
        );
    }
}
