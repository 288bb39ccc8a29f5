//! Go (issue #4): Go binaries named from `.gopclntab` — normal, stripped
//! (`-s -w`) and PIE builds of Go 1.19 to 1.27 — with inlined calls as frames of
//! their own; goroutine ids, labels and status per sample; goroutine states over
//! time; stacks across the runtime's stack switches.

use std::process::Command;

use crossprof_tests::{
    Go, GoBuild, Run, count_where, crossprof_bin, emulated, emulated_on_one_thread, fixture_secs,
    go_switching, out_dir, read_folded, read_summary, record_command as record,
};

#[test]
fn go_chain_and_inlined_call_are_named_in_every_version_and_build() {
    for go in Go::tested() {
        for build in GoBuild::tested() {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("chain", build);
            let dir = out_dir(&format!("go_chain_{}_{build:?}", go.version()));
            let run = record(&dir, &[], &bin, &["2"]);
            assert!(run.status.success(), "{what}: {}", run.stderr);
            assert!(run.stdout.contains("done false"), "{what}: {}", run.stdout);
            let stacks = read_folded(&dir);
            // Under emulation (the VM tier, see `emulated`) the runtime's
            // start-up and `time.Now` (a system call on an emulated HPET)
            // are a larger, varying share of the run (22% seen on 6.1):
            // the chain is judged in the samples in main.hot there.
            let counted = |s: &crossprof_tests::FoldedStack| {
                !emulated() || s.frames.iter().any(|f| f == "main.hot")
            };
            let (chain, _) = count_where(&stacks, "chain", |s| {
                counted(s) && s.contains_chain(&["main.main", "main.work", "main.hot"])
            });
            let (all, _) = count_where(&stacks, "chain", counted);
            assert!(all >= 100, "{what}: only {all} samples");
            assert!(
                chain * 100 >= all * 80,
                "{what}: main.main;main.work;main.hot in {chain} of {all}:\n{stacks:#?}"
            );
            // mix is inlined into hot: a frame of its own, annotated _[i] (92-99%
            // of samples measured). Which instruction of hot's loop a sample
            // lands on is not measured under emulation (see `emulated`).
            let (inlined, _) = count_where(&stacks, "chain", |s| {
                s.contains_chain(&["main.hot", "main.mix_[i]"])
            });
            assert!(
                emulated() || inlined * 100 >= all * 50,
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

/// A call through an interface to a value-receiver method goes through the
/// wrapper the compiler generates (`main.(*counter).spin`): left out as Go's
/// own profiles leave it, `main.run;main.counter.spin` in >= 90% of samples,
/// the wrapper in none, in every version.
#[test]
fn generated_wrappers_are_left_out_in_every_version() {
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("wrappers", GoBuild::Normal);
        let dir = out_dir(&format!("go_wrappers_{}", go.version()));
        let run = record(&dir, &["--freq", "499"], &bin, &[&fixture_secs(1.0)]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        let stacks = read_folded(&dir);
        let (chain, all) = count_where(&stacks, "wrappers", |s| {
            s.contains_chain(&["main.main", "main.run", "main.counter.spin"])
        });
        let (wrapper, _) = count_where(&stacks, "wrappers", |s| {
            s.frames.iter().any(|f| f == "main.(*counter).spin")
        });
        assert!(all >= 200, "{what}: only {all} samples");
        assert!(
            chain * 100 >= all * 90 && wrapper == 0,
            "{what}: the chain in {chain} of {all}, the wrapper in {wrapper}:\n{stacks:#?}"
        );
    }
}

/// Go assembly that uses RBP as a general register (`tests/fixtures/go/asmbp`,
/// as crypto/md5's `block` does), in a cgo binary (walked by rules) and in a
/// pure Go one (Go's linker, no `.eh_frame`): its callers are found by its
/// `pcsp` table, not by the junk in RBP:
/// `runtime.main;main.main;main.work;crossprof.test/asmbp/spin.Spinbp` in >=
/// 90% of samples, every version.
#[test]
fn go_assembly_that_uses_rbp_keeps_its_callers_in_every_version() {
    for (go, pure) in Go::tested()
        .into_iter()
        .flat_map(|go| [(go, false), (go, true)])
    {
        let what = format!("go {}{}", go.version(), if pure { " pure" } else { " cgo" });
        let bin = if pure {
            go.pure_fixture("asmbp", GoBuild::Normal)
        } else {
            go.fixture("asmbp", GoBuild::Normal)
        };
        let comm = bin.file_name().unwrap().to_str().unwrap().to_owned();
        let dir = out_dir(&format!("go_asmbp_{}_{pure}", go.version()));
        let run = record(&dir, &["--freq", "499"], &bin, &[&fixture_secs(1.0)]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        let stacks = read_folded(&dir);
        // Under emulation the program's start (exec, the loader, the
        // runtime's and its threads' start-up) is a larger share of the run,
        // up to 45% with the guest's CPUs on one host thread: the chain is
        // judged in the samples in the assembly there.
        let counted = |s: &crossprof_tests::FoldedStack| {
            !crossprof_tests::emulated()
                || s.frames
                    .iter()
                    .any(|f| f == "crossprof.test/asmbp/spin.Spinbp")
        };
        let (chain, _) = count_where(&stacks, &comm, |s| {
            counted(s)
                && s.contains_chain(&[
                    "runtime.main",
                    "main.main",
                    "main.work",
                    "crossprof.test/asmbp/spin.Spinbp",
                ])
        });
        let (all, _) = count_where(&stacks, &comm, counted);
        assert!(all >= 200, "{what}: only {all} samples");
        let want = if crossprof_tests::emulated() { 80 } else { 90 };
        assert!(
            chain * 100 >= all * want,
            "{what}: the chain in {chain} of {all}:\n{stacks:#?}"
        );
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
fn each_sample_carries_its_goroutine_in_every_version_and_build() {
    for go in Go::tested() {
        for build in GoBuild::tested() {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("goroutines", build);
            let dir = out_dir(&format!("go_goroutines_{}_{build:?}", go.version()));
            let run = record(
                &dir,
                &["--group-by", "goroutine"],
                &bin,
                &[&fixture_secs(1.5), "4"],
            );
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
                .filter(|s| {
                    s.frames[0] == "goroutines" && s.frames.iter().any(|f| f == "main.busy")
                })
                .collect();
            let total: u64 = busy.iter().map(|s| s.count).sum();
            let seen: std::collections::BTreeSet<String> = busy
                .iter()
                .map(|s| s.frames[1].clone())
                .filter(|f| f.starts_with("goroutine "))
                .collect();
            assert_eq!(seen, printed, "{what}: goroutine frames over main.busy");
            // The layout comes from the binary's DWARF where it has any.
            let summary = read_summary(&dir);
            let layout = summary["processes"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["comm"] == "goroutines"))
                .map(|p| p["goroutine_layout"].clone());
            let want = if build == GoBuild::Stripped {
                "table"
            } else {
                "dwarf"
            };
            assert_eq!(layout, Some(want.into()), "{what}");
            // Not one busy sample goes without its goroutine: the command's
            // goroutine layout is in the kernel before it runs (the child puts
            // it there between fork and exec), not once crossprof has read the
            // binary after its first samples. Only a sample taken on the way
            // through the scheduler or a preemption signal's handler may lose
            // it (under emulation, ~0.2% of them). On one host thread, 1-3%:
            // a preempted goroutine's thread spins for `sched.lock` in
            // `goschedImpl`, after `dropg` (no goroutine, as in Go's own
            // profiles), while the CPU holding the lock waits for the host
            // thread (measured: 18 of 631 busy samples, 13 of them in
            // `runtime.lock2`'s `procyield`).
            let lost = |s: &crossprof_tests::FoldedStack, in_runtime: bool| {
                s.frames.iter().any(|f| f == "main.busy")
                    && !s.frames[1].starts_with("goroutine ")
                    && go_switching(&s.frames) == in_runtime
            };
            let without =
                |in_runtime: bool| count_where(&stacks, "goroutines", |s| lost(s, in_runtime)).0;
            assert_eq!(
                without(false),
                0,
                "{what}: busy samples without a goroutine (of {total})"
            );
            let percent = if emulated_on_one_thread() { 5 } else { 1 };
            assert!(
                without(true) * 100 <= total * percent,
                "{what}: {} of {total} busy samples in the runtime's switches without a goroutine:\n{}",
                without(true),
                stacks
                    .iter()
                    .filter(|s| s.frames[0] == "goroutines" && lost(s, true))
                    .map(|s| format!("{} {}", s.frames.join(";"), s.count))
                    .collect::<Vec<_>>()
                    .join("\n")
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
}

#[test]
fn pprof_labels_are_a_frame_level_in_every_version_and_build() {
    for go in Go::tested() {
        for build in GoBuild::tested() {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("labels", build);
            let dir = out_dir(&format!("go_labels_{}_{build:?}", go.version()));
            let run = record(
                &dir,
                &["--group-by", "goroutine", "--group-by", "label:worker"],
                &bin,
                &["1.5", "3"],
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
}

/// The goroutines of the `states` fixture, by role, from its output
/// (`goid G ROLE`).
fn roles(stdout: &str) -> std::collections::BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 3 || f[0] != "goid" {
                return None;
            }
            Some((f[2].to_owned(), f[1].parse().expect("a goroutine id")))
        })
        .collect()
}

/// The `goroutines.by_goroutine` entry of `goid` in the summary's process `comm`.
fn goroutine_row(summary: &serde_json::Value, comm: &str, goid: u64) -> serde_json::Value {
    let process = summary["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["comm"] == comm))
        .unwrap_or_else(|| panic!("no process {comm}: {}", summary["processes"]));
    process["goroutines"]["by_goroutine"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["goid"] == goid))
        .unwrap_or_else(|| panic!("no goroutine {goid}: {}", process["goroutines"]))
        .clone()
}

/// The time goroutine row `g` was seen in any state, ms.
fn lifetime_ms(g: &serde_json::Value) -> f64 {
    let field = |k: &str| g[k].as_f64().unwrap_or(0.0);
    let waits: f64 = g["waiting_ms"]
        .as_object()
        .map(|w| w.values().filter_map(serde_json::Value::as_f64).sum())
        .unwrap_or(0.0);
    [
        "running_ms",
        "runnable_ms",
        "syscall_ms",
        "other_ms",
        "unobserved_ms",
    ]
    .iter()
    .map(|k| field(k))
    .sum::<f64>()
        + waits
}

fn within(what: &str, ms: f64, want_ms: f64) {
    // Under emulation (the VM tier) the guest's timers fire late, the more
    // so with its CPUs on one host thread (a 1 s wait measured 1.25 s on
    // 6.1): the times are real, the program's own waits longer.
    let tolerance = if emulated() { 0.30 } else { 0.10 };
    assert!(
        (ms - want_ms).abs() <= want_ms * tolerance,
        "{what}: {ms:.1} ms, want {want_ms} ms +-{:.0}%",
        tolerance * 100.0
    );
}

/// Goroutines blocked on a channel, a mutex, a sleep and in system calls for a
/// known time: each one's time is in the right state and wait reason, within
/// 10%, in every version and build; and each was created by main.main in
/// goroutine 1. The program computes and exits as without crossprof.
#[test]
fn goroutine_states_split_time_by_wait_reason_in_every_version_and_build() {
    for go in Go::tested() {
        for build in GoBuild::tested() {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("states", build);
            let dir = out_dir(&format!("go_states_{}_{build:?}", go.version()));
            let run = record(&dir, &["--go-states"], &bin, &["1"]);
            assert!(run.status.success(), "{what}: {}", run.stderr);
            assert!(
                run.stdout.contains("sum 10\ndone"),
                "{what}: the program's result changed: {}",
                run.stdout
            );
            let roles = roles(&run.stdout);
            assert_eq!(roles.len(), 4, "{what}: {}", run.stdout);
            let summary = read_summary(&dir);
            // Go 1.19 parks a contended sync.Mutex as plain "semacquire"; its own
            // reason came in 1.20.
            let mutex = if go == Go::Go119 {
                "semacquire"
            } else {
                "sync.Mutex.Lock"
            };
            for (role, reason) in [
                ("chan", "chan receive"),
                ("mutex", mutex),
                ("sleep", "sleep"),
            ] {
                let g = goroutine_row(&summary, "states", roles[role]);
                let ms = g["waiting_ms"][reason].as_f64().unwrap_or(0.0);
                let what = format!("{what}: {role} waiting for {reason:?} in {g}");
                // Under emulation the goroutine's start (its announcement, a
                // write, with every status change trapped) takes ~150 ms of
                // the second it lives; its wait is the rest. The whole life
                // is still held to 10%, the wait to 80%.
                within(&what, lifetime_ms(&g), 1000.0);
                if emulated() {
                    assert!((800.0..=1100.0).contains(&ms), "{what}: {ms:.1} ms");
                } else {
                    within(&what, ms, 1000.0);
                }
                assert_eq!(g["ended"], true, "{what}: {g}");
            }
            let g = goroutine_row(&summary, "states", roles["syscall"]);
            within(
                &format!("{what}: syscall time of {g}"),
                g["syscall_ms"].as_f64().unwrap_or(0.0),
                1000.0,
            );
            for (role, goid) in &roles {
                let g = goroutine_row(&summary, "states", *goid);
                assert_eq!(g["created_by"], "main.main", "{what}: {g}");
                // `go f(x)`: from 1.22 the compiler's wrapper (`main.main.gowrap1`)
                // is seen through to f; before, it is a closure like any other
                // (`main.main.func1`), named as such.
                let function = g["function"].as_str().unwrap_or("");
                let want = match role.as_str() {
                    "chan" => "main.chanWaiter",
                    "mutex" => "main.mutexWaiter",
                    "sleep" => "main.sleeper",
                    _ => "main.syscaller",
                };
                if matches!(go, Go::Go119 | Go::Go121) {
                    assert!(function.starts_with("main.main.func"), "{what}: {g}");
                } else {
                    assert_eq!(function, want, "{what}: {g}");
                }
                assert_eq!(g["parent_goid"], 1, "{what}: {g}");
                assert_eq!(g["unobserved_ms"], 0.0, "{what}: {g}");
            }
        }
    }
}

/// `--go-state-sampling` (issue #21): the states fixture's goroutines
/// sampled from the process's memory 100 times a second have the shares of
/// their time `--go-states` timed exactly in the same run, within 5 points,
/// per goroutine and per creation site, in every version; the program's
/// result is unchanged.
#[test]
fn sampled_goroutine_states_agree_with_the_followed_ones_in_every_version() {
    /// Each state's share of a row's time (`running`, `wait: sleep`, ...).
    fn shares(row: &serde_json::Value) -> std::collections::BTreeMap<String, f64> {
        let total = lifetime_ms(row).max(1e-9);
        let mut out = std::collections::BTreeMap::new();
        for k in ["running_ms", "runnable_ms", "syscall_ms", "other_ms"] {
            out.insert(k.to_owned(), row[k].as_f64().unwrap_or(0.0) / total);
        }
        for (reason, ms) in row["waiting_ms"].as_object().into_iter().flatten() {
            out.insert(
                format!("wait: {reason}"),
                ms.as_f64().unwrap_or(0.0) / total,
            );
        }
        out
    }
    fn agree(what: &str, exact: &serde_json::Value, sampled: &serde_json::Value) {
        let (e, s) = (shares(exact), shares(sampled));
        for key in e.keys().chain(s.keys()) {
            let (a, b) = (e.get(key).unwrap_or(&0.0), s.get(key).unwrap_or(&0.0));
            assert!(
                (a - b).abs() <= 0.05,
                "{what}: {key} is {:.1}% followed, {:.1}% sampled\nfollowed {exact}\nsampled {sampled}",
                a * 100.0,
                b * 100.0
            );
        }
    }
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("states", GoBuild::Normal);
        let dir = out_dir(&format!("go_state_sampling_{}", go.version()));
        let run = record(
            &dir,
            &["--go-states", "--go-state-sampling", "100"],
            &bin,
            &["2"],
        );
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(
            run.stdout.contains("sum 10\ndone"),
            "{what}: {}",
            run.stdout
        );
        let roles = roles(&run.stdout);
        assert_eq!(roles.len(), 4, "{what}: {}", run.stdout);
        let summary = read_summary(&dir);
        let process = summary["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["comm"] == "states"))
            .unwrap_or_else(|| panic!("{what}: no states process: {summary}"))
            .clone();
        let sampled = &process["goroutines_sampled"];
        assert_eq!(sampled["sampled"]["hz"], 100, "{what}: {sampled}");
        for (role, goid) in &roles {
            let exact = goroutine_row(&summary, "states", *goid);
            let row = sampled["by_goroutine"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["goid"] == *goid))
                .unwrap_or_else(|| {
                    panic!("{what}: {role} (goroutine {goid}) not sampled: {sampled}")
                });
            // 100 Hz over its 2 s: at least half the readings (a loaded
            // machine delays rounds), each 10 ms.
            assert!(lifetime_ms(row) >= 1000.0, "{what}: {role}: {row}");
            assert_eq!(row["function"], exact["function"], "{what}: {role}");
            assert_eq!(row["created_by"], exact["created_by"], "{what}: {role}");
            agree(&format!("{what}: {role}"), &exact, row);
        }
        for site in process["goroutines"]["by_site"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(other) = sampled["by_site"].as_array().and_then(|s| {
                s.iter().find(|o| {
                    o["function"] == site["function"] && o["created_by"] == site["created_by"]
                })
            }) else {
                // A goroutine that lived between two readings: too short
                // for the sampler to see.
                assert!(lifetime_ms(site) < 50.0, "{what}: site {site} not sampled");
                continue;
            };
            if lifetime_ms(site) >= 500.0 {
                agree(&format!("{what}: site {}", site["function"]), site, other);
            }
        }
    }
}

/// `--go-state-sampling` on a crowd (issue #21): 20,000 goroutines parked in
/// a channel receive. Reading them all 10 times a second took a quarter of a
/// core (a read per goroutine); now neighbours are read together and a
/// process whose rounds would take more than 0.5% of a core is read less
/// often. The rounds' CPU stays within that share of the run (the first
/// round aside: nothing was known before it), the rate was lowered to keep
/// it, and the crowd is still seen, all of it waiting in `main.parked`.
#[test]
fn a_crowd_of_goroutines_is_sampled_within_half_a_percent_of_a_core() {
    let count = 20_000;
    let bin = Go::Go123.fixture("crowd", GoBuild::Normal);
    let dir = out_dir("go_state_sampling_crowd");
    let run = record(
        &dir,
        &["--go-state-sampling", "10"],
        &bin,
        &[&count.to_string(), "3"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("crowd 20000"), "{}", run.stdout);
    let summary = read_summary(&dir);
    let sampled = summary["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["comm"] == "crowd"))
        .map(|p| p["goroutines_sampled"].clone())
        .unwrap_or_else(|| panic!("no crowd process: {summary}"));
    let stats = &sampled["sampled"];
    let rounds = stats["rounds"].as_f64().unwrap_or(0.0);
    let round_us = stats["round_us"].as_f64().unwrap_or(f64::MAX);
    let secs = summary["duration_secs"].as_f64().unwrap_or(0.0);
    println!("{rounds} rounds of {round_us:.0} us in {secs:.2} s: {stats}");
    assert!(rounds >= 2.0, "{stats}");
    assert!(
        stats["deferred"].as_u64() > Some(0),
        "the rate was not lowered: {stats}"
    );
    let spent_us = round_us * rounds;
    let allowed_us = 0.005 * secs * 1e6 + round_us;
    assert!(
        spent_us <= allowed_us * 1.2,
        "rounds took {spent_us:.0} us of CPU in {secs:.2} s (at most {allowed_us:.0}): {stats}"
    );
    let site = sampled["by_site"]
        .as_array()
        .and_then(|sites| sites.iter().find(|s| s["function"] == "main.parked"))
        .unwrap_or_else(|| panic!("main.parked not sampled: {sampled}"));
    assert!(
        site["goroutines"].as_u64() >= Some(count),
        "the crowd is not all seen: {site}"
    );
    let waiting = site["waiting_ms"]["chan receive"].as_f64().unwrap_or(0.0);
    let lifetime = lifetime_ms(site);
    assert!(
        waiting >= 0.99 * lifetime && lifetime > 0.0,
        "the crowd was not seen waiting on its channel: {site}"
    );
}

/// `--mode goblock` (issue #6): each goroutine of the states fixture that
/// parks for 1 s (channel receive, contended `sync.Mutex`, `time.Sleep`) has
/// 1 s ± 10% of waiting under the stack it parked in, from `runtime.goexit`
/// through its own function to `runtime.gopark`, topped by its wait reason;
/// the program's result is unchanged. Every version, normal and PIE builds.
#[test]
fn goroutine_waits_are_a_profile_of_their_stacks_in_every_version() {
    for go in Go::tested() {
        for build in [GoBuild::Normal, GoBuild::Pie] {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("states", build);
            let dir = out_dir(&format!("go_block_{}_{build:?}", go.version()));
            let run = record(&dir, &["--mode", "goblock"], &bin, &["1"]);
            assert!(run.status.success(), "{what}: {}", run.stderr);
            assert!(
                run.stdout.contains("sum 10\ndone"),
                "{what}: the program's result changed: {}",
                run.stdout
            );
            let stacks = read_folded(&dir);
            // Go 1.19 parks a contended sync.Mutex as plain "semacquire".
            let mutex = if go == Go::Go119 {
                "[wait: semacquire]"
            } else {
                "[wait: sync.Mutex.Lock]"
            };
            for (function, leaf) in [
                ("main.chanWaiter", "[wait: chan receive]"),
                ("main.mutexWaiter", mutex),
                ("main.sleeper", "[wait: sleep]"),
            ] {
                let (us, _) = count_where(&stacks, "states", |s| {
                    s.frames.iter().any(|f| f == function)
                        && s.frames.last().is_some_and(|l| l == leaf)
                        && s.frames[1] == "runtime.goexit"
                        && s.frames[s.frames.len() - 2] == "runtime.gopark"
                });
                within(
                    &format!("{what}: {function} under {leaf}:\n{stacks:#?}"),
                    us as f64 / 1000.0,
                    1000.0,
                );
            }
            assert_eq!(read_summary(&dir)["mode"], "goblock", "{what}");
        }
    }
}

/// Attached to a running process (`--pid`): goroutines blocked on a channel, a
/// mutex and a sleep through the whole recording change no state, yet are
/// listed (read through `runtime.allgs`, found in the stripped binary's code)
/// as waiting for their reason the whole time, with their creation; the
/// goroutine in 200 ms system calls is counted in them from the attach (its
/// first change shows what it was doing). The process goes on and exits
/// normally afterwards.
#[test]
fn goroutine_states_of_a_running_process_count_from_the_attach() {
    let bin = Go::Go125.fixture("states", GoBuild::Stripped);
    let target = Command::new(&bin)
        .arg("4")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the fixture");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let dir = out_dir("go_states_pid");
    let run: Run = Command::new(crossprof_bin())
        .args(["record", "-q", "--go-states", "--duration", "2", "--pid"])
        .arg(target.id().to_string())
        .arg("-o")
        .arg(&dir)
        .output()
        .expect("run crossprof")
        .into();
    assert!(run.status.success(), "{}", run.stderr);
    let out = target.wait_with_output().expect("the fixture ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sum 10\ndone"),
        "{stdout}"
    );
    let roles = roles(&stdout);
    let summary = read_summary(&dir);
    let window_ms = summary["duration_secs"].as_f64().unwrap() * 1e3;
    for (role, reason) in [
        ("chan", "chan receive"),
        ("mutex", "sync.Mutex.Lock"),
        ("sleep", "sleep"),
    ] {
        let g = goroutine_row(&summary, "states", roles[role]);
        within(
            &format!("{role}, blocked through the recording: {g}"),
            g["waiting_ms"][reason].as_f64().unwrap_or(0.0),
            window_ms,
        );
        assert_eq!(g["ended"], false, "{g}");
        assert_eq!(g["created_by"], "main.main", "{g}");
        assert_eq!(g["parent_goid"], 1, "{g}");
    }
    let g = goroutine_row(&summary, "states", roles["syscall"]);
    within(
        &format!("in system calls through the recording: {g}"),
        g["syscall_ms"].as_f64().unwrap_or(0.0),
        window_ms,
    );
    assert_eq!(g["created_by"], "main.main", "{g}");
}

/// Samples in the runtime's signal handler (`runtime.sigtramp`, on the thread's
/// signal stack) continue into the code the signal interrupted — its own frame
/// first, from the ucontext — and reach a root like any other: also when that
/// code was the scheduler on the system stack (1.27: 19% of them stopped at
/// `runtime.mcall` before the switch was followed from the signal stack too).
#[test]
fn stacks_in_signal_handlers_reach_a_root_in_every_version() {
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("signals", GoBuild::Normal);
        let dir = out_dir(&format!("go_signals_{}", go.version()));
        let run = record(&dir, &["--freq", "999"], &bin, &["2"]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(
            run.stdout.contains("received true\ndone"),
            "{what}: {}",
            run.stdout
        );
        let stacks = read_folded(&dir);
        let rooted = |s: &crossprof_tests::FoldedStack| {
            s.frames.get(1).is_some_and(|f| {
                f == "runtime.goexit" || f.starts_with("runtime.mstart") || f == "runtime.rt0_go"
            })
        };
        let (handler, handled_rooted) = stacks
            .iter()
            .filter(|s| {
                s.frames[0] == "signals" && s.frames.iter().any(|f| f == "runtime.sigtramp")
            })
            .fold((0, 0), |(n, r), s| {
                (n + s.count, r + if rooted(s) { s.count } else { 0 })
            });
        assert!(
            handler >= 15,
            "{what}: only {handler} samples in the signal handler"
        );
        assert!(
            handled_rooted * 10 >= handler * 9,
            "{what}: {handled_rooted} of {handler} signal-handler stacks reach a root"
        );
        let (all_rooted, all) = count_where(&stacks, "signals", rooted);
        assert!(
            all_rooted * 100 >= all * 95,
            "{what}: {all_rooted} of {all} reach a root"
        );
        // Under the handler's entry: the function the signal interrupted (a
        // leaf in a system call, or main.busy), from the handler's ucontext —
        // not its caller (the frame-pointer chain skips it), and never the
        // signal-return trampoline, named as if it were a call.
        let interrupted = |f: &str| {
            [
                "runtime.futex",
                "runtime.usleep",
                "runtime.tgkill",
                "main.busy",
                "syscall.RawSyscall",
            ]
            .contains(&f)
                || f.ends_with("syscall.Syscall6")
                || f.ends_with("syscall/linux.Syscall6")
        };
        let mut under = std::collections::BTreeMap::new();
        for s in stacks.iter().filter(|s| s.frames[0] == "signals") {
            if let Some(i) = s.frames.iter().position(|f| f == "runtime.sigtramp") {
                *under.entry(s.frames[i - 1].clone()).or_insert(0) += s.count;
            }
        }
        let named: u64 = under
            .iter()
            .filter(|(f, _)| interrupted(f))
            .map(|(_, n)| n)
            .sum();
        assert!(
            named * 10 >= handler * 8,
            "{what}: under runtime.sigtramp: {under:?}"
        );
        assert!(
            !under.contains_key("runtime.cgoSigtramp"),
            "{what}: {under:?}"
        );
    }
}

/// Stack growth: `runtime.morestack` runs before the growing function has a
/// frame record, so its caller is known only from the word at its saved SP.
/// `main.grow` (which grows the stack) is called by `main.descend` only: the
/// frames over `runtime.morestack` must read `main.descend;main.grow`, never
/// `main.grow;main.grow` (a call that does not exist, which the frame-pointer
/// chain alone gave), in every version.
#[test]
fn stack_growth_keeps_the_caller_of_the_growing_function_in_every_version() {
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("morestack", GoBuild::Normal);
        let dir = out_dir(&format!("go_morestack_{}", go.version()));
        let run = record(&dir, &["--freq", "999"], &bin, &["1"]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(run.stdout.contains("done"), "{what}: {}", run.stdout);
        let stacks = read_folded(&dir);
        let (growing, right, wrong) = stacks
            .iter()
            .filter(|s| s.frames[0] == "morestack")
            .filter_map(|s| {
                let i = s.frames.iter().position(|f| f == "runtime.morestack")?;
                let over = &s.frames[i.saturating_sub(2)..i];
                Some((s.count, over))
            })
            .filter(|(_, over)| over.last().is_some_and(|f| f == "main.grow"))
            .fold((0, 0, 0), |(n, r, w), (c, over)| {
                let caller = over.first().map(String::as_str);
                (
                    n + c,
                    r + if caller == Some("main.descend") { c } else { 0 },
                    w + if caller == Some("main.grow") { c } else { 0 },
                )
            });
        assert!(
            growing >= 50,
            "{what}: only {growing} samples growing main.grow's stack"
        );
        assert!(
            right * 10 >= growing * 9,
            "{what}: main.descend;main.grow in {right} of {growing}"
        );
        assert_eq!(
            wrong, 0,
            "{what}: main.grow;main.grow in {wrong} of {growing}"
        );
    }
}

/// A goroutine-switch-heavy program spends much of its time in the scheduler on
/// each thread's system stack (g0), entered through `runtime.mcall`, which from Go
/// 1.25 clears the frame pointer: without following the switch, 18-26% of its
/// stacks stopped at `runtime.mcall` (measured on 1.25.5 and 1.27.3). Every stack
/// must reach a root: `runtime.goexit` for a goroutine's, the thread's start
/// (`runtime.mstart*`, `runtime.rt0_go`) for the scheduler's own.
#[test]
fn stacks_reach_a_root_across_the_switch_to_the_system_stack_in_every_version() {
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("switches", GoBuild::Normal);
        let dir = out_dir(&format!("go_switches_{}", go.version()));
        let run = record(&dir, &["--freq", "999"], &bin, &["300000"]);
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(run.stdout.contains("sum=1200000"), "{what}: {}", run.stdout);
        let stacks = read_folded(&dir);
        let is_root = |f: &str| {
            f == "runtime.goexit" || f.starts_with("runtime.mstart") || f == "runtime.rt0_go"
        };
        let (rooted, all) = count_where(&stacks, "switches", |s| {
            s.frames.get(1).is_some_and(|f| is_root(f))
        });
        assert!(all >= 100, "{what}: only {all} samples");
        assert!(
            rooted * 100 >= all * 95,
            "{what}: {rooted} of {all} stacks reach a root:\n{stacks:#?}"
        );
        let (at_mcall, _) = count_where(&stacks, "switches", |s| {
            s.frames.get(1).is_some_and(|f| f == "runtime.mcall")
        });
        assert!(
            at_mcall * 50 <= all,
            "{what}: {at_mcall} of {all} stop at runtime.mcall"
        );
    }
}

/// Each sample carries its goroutine's status: a goroutine in a `syscall.Read`
/// loop is `[syscall]` in the samples taken in the kernel under it, busy ones
/// `[running]` (`--group-by goroutine --group-by state`), in every version.
#[test]
fn each_sample_carries_its_goroutine_status_in_every_version() {
    for go in Go::tested() {
        let what = format!("go {}", go.version());
        let bin = go.fixture("syscalls", GoBuild::Stripped);
        let dir = out_dir(&format!("go_syscalls_{}", go.version()));
        let run = record(
            &dir,
            &["--group-by", "goroutine", "--group-by", "state"],
            &bin,
            &["1.5"],
        );
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(run.stdout.contains("done"), "{what}: {}", run.stdout);
        let reader = format!(
            "goroutine {}",
            run.stdout
                .lines()
                .find_map(|l| l.strip_suffix(" reader")?.strip_prefix("goid "))
                .expect("the reader's id")
        );
        let stacks = read_folded(&dir);
        let in_kernel = |s: &&crossprof_tests::FoldedStack| {
            s.frames.last().is_some_and(|f| f.ends_with("_[k]"))
        };
        let (mut reading, mut syscall) = (0, 0);
        let (mut busy, mut running) = (0, 0);
        for s in stacks.iter().filter(|s| s.frames[0] == "syscalls") {
            if s.frames[1] == reader && s.frames.iter().any(|f| f == "main.reader") && in_kernel(&s)
            {
                reading += s.count;
                syscall += if s.frames[2] == "[syscall]" {
                    s.count
                } else {
                    0
                };
            }
            if s.frames.iter().any(|f| f == "main.busy") {
                busy += s.count;
                running += if s.frames[2] == "[running]" {
                    s.count
                } else {
                    0
                };
            }
        }
        assert!(
            reading >= 20,
            "{what}: {reading} kernel samples of the reader"
        );
        assert!(
            syscall * 10 >= reading * 8,
            "{what}: [syscall] in {syscall} of {reading} kernel samples of the reader"
        );
        assert!(
            running * 10 >= busy * 9,
            "{what}: [running] in {running} of {busy} samples of main.busy"
        );
    }
}

/// A Go version crossprof does not know (here a build whose build info says
/// go1.99.9) gets stacks, named, but no goroutine data, and one note saying why;
/// the program runs as ever.
#[test]
fn an_unknown_go_version_gets_stacks_without_goroutines_and_a_note() {
    let bin = Go::Go123.fixture("goroutines", GoBuild::Stripped);
    let dir = out_dir("go_unknown_version");
    let future = dir.join("goroutines");
    let mut data = std::fs::read(&bin).unwrap();
    // The version in .go.buildinfo (after its magic): what outside readers use.
    let magic = find(&data, b"\xff Go buildinf:").expect("build info");
    let at = magic + find(&data[magic..], b"go1.23.9").expect("version");
    data[at..at + 8].copy_from_slice(b"go1.99.9");
    std::fs::write(&future, &data).unwrap();
    std::fs::set_permissions(&future, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("out");
    let run = record(&out, &["--group-by", "goroutine"], &future, &["1", "2"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("done"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("runs go1.99.9, whose goroutine layout crossprof does not know"),
        "{}",
        run.stderr
    );
    let stacks = read_folded(&out);
    let (busy, all) = count_where(&stacks, "goroutines", |s| {
        s.frames.iter().any(|f| f == "main.busy")
    });
    assert!(busy * 2 >= all && all > 50, "{busy} of {all} in main.busy");
    let (with_goroutine, _) = count_where(&stacks, "goroutines", |s| {
        s.frames[1].starts_with("goroutine ")
    });
    assert_eq!(with_goroutine, 0, "goroutine data for an unknown version");
}
