//! The .NET part of `cargo xtask bench` (issue #3): what profiling costs a JIT-heavy
//! .NET program, and how much of a .NET profile is named.
//!
//! The workload is tests/fixtures/dotnet/jit_heavy.cs on .NET 8: 60,000 expression
//! trees compiled and called (~1 s), each a new method the JIT compiles, timed by the
//! program itself after 300 ms of untimed spinning (crossprof attaches then). Rounds
//! take turns between plain runs and four ways of running under `crossprof record`
//! at 99 Hz: named from the runtime's memory (the default) with and without source
//! lines (`--format folded,svg` leaves them out), with `--dotnet-perf-map` (perf
//! map, jitdump and the JIT event session for lines), and from memory with
//! `--no-dotnet-gc` (no GC event session: no connection to the runtime at all).
//!
//! - slowdown = median(work under crossprof) / median(plain work) - 1, for each way
//!   of naming. With the perf map it includes the runtime writing its perf map and
//!   jitdump, which crossprof turns on: for every method compiled the runtime
//!   formats its name and writes it out. From memory the runtime does nothing for
//!   crossprof: what is left is the sampling itself and crossprof's reads of its
//!   memory (its mmap lock, taken for reading). For the default way, two views
//!   less swayed by this VM too: the median of each round's ratio to that
//!   round's plain run (the machine's speed drifts over minutes), and the
//!   fastest round against the fastest plain round (interference only ever
//!   slows a round);
//! - the target's own CPU time in its work (all its threads, as the fixture
//!   reads it from the runtime) under crossprof against plain, medians: what
//!   naming costs the target itself, without the collector's CPU taking turns
//!   with it on a machine whose cores the target keeps busy;
//! - the kernel program's cost per run while it walks .NET stacks itself;
//! - share of the .NET samples whose every frame is named, and whose managed frames
//!   (JIT code, ReadyToRun code, stubs) are: `[unknown]` and `[module+0x...]`
//!   frames are not named. Kernel frames count too.

use std::{path::Path, process::Command};

use anyhow::Result;
use crossprof_tests::{Dotnet, parse_folded, read_summary};

use super::{Figure, Goal, Unit, check_interrupted, median, printed, work_ns};
use crate::{cmd, say};

const FIXTURE: &str = "jit_heavy";
const FREQ: u64 = 99;

/// Runs the .NET rounds on runtime `version` (8, 9 or 10) and returns their
/// figures.
pub fn figures(
    runs: u32,
    version: &str,
    crossprof: &Path,
    bench_dir: &Path,
) -> Result<Vec<Figure>> {
    let runtime = match version {
        "10" => Dotnet::Net10,
        "9" => Dotnet::Net9,
        _ => Dotnet::Net8,
    };
    let dll = runtime.fixture(FIXTURE);
    let out_dir = bench_dir.join("run-dotnet");
    let plain = || -> Result<(u64, u64)> {
        let out = cmd::output(&mut runtime.command(&dll, &[]))?;
        check_interrupted()?;
        Ok((work_ns(&out)?, printed(&out, "cpu_ns")?))
    };
    let profiled = |flags: &[&str]| -> Result<Round> {
        let target = runtime.command(&dll, &[]);
        let mut c = Command::new(crossprof);
        c.args(["record", "--quiet", "--freq", &FREQ.to_string()])
            .args(flags)
            .arg("-o")
            .arg(&out_dir)
            .arg("--")
            .arg(target.get_program())
            .args(target.get_args());
        for (k, v) in target.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let out = cmd::output(&mut c)?;
        check_interrupted()?;
        let folded = std::fs::read_to_string(out_dir.join("profile.folded"))?;
        let summary = read_summary(&out_dir);
        let kernel = summary
            .pointer("/kernel_program/run_time_ns")
            .and_then(serde_json::Value::as_f64)
            .zip(
                summary
                    .pointer("/kernel_program/run_count")
                    .and_then(serde_json::Value::as_f64),
            );
        Ok((
            (work_ns(&out)?, printed(&out, "cpu_ns")?),
            Shares::of(&folded),
            kernel,
        ))
    };

    // The ways of naming measured: the default (memory, with the JIT event
    // session that source lines need, for the pprof output), the same
    // without source lines, and the perf map.
    const WAYS: [(&str, &[&str]); 4] = [
        ("named from memory, source lines on (default)", &[]),
        (
            "named from memory, no source lines (--format folded,svg)",
            &["--format", "folded,svg"],
        ),
        ("--dotnet-perf-map, source lines on", &["--dotnet-perf-map"]),
        // The GC event session, the only use of the diagnostics socket
        // left: what it costs is the difference with way 1.
        (
            "named from memory, source lines on, --no-dotnet-gc",
            &["--no-dotnet-gc"],
        ),
    ];
    say!("bench: .NET: warming up (one run of each kind, not counted)...");
    plain()?;
    for (_, flags) in WAYS {
        profiled(flags)?;
    }
    let mut plain_ns = Vec::new();
    let mut ways_ns: [Vec<u64>; 4] = Default::default();
    // The target's own CPU time in its work (all its threads), plain and
    // each way.
    let mut plain_cpu = Vec::new();
    let mut ways_cpu: [Vec<u64>; 4] = Default::default();
    let mut shares = Vec::new();
    let (mut kernel_ns, mut kernel_runs) = (0.0, 0.0);
    for round in 0..runs {
        // The order turns each round, so that no kind always follows another.
        let mut order: Vec<Option<usize>> = vec![None, Some(0), Some(1), Some(2), Some(3)];
        let turn = round as usize % order.len();
        order.rotate_left(turn);
        let mut line = format!("round {:>2}/{runs}:", round + 1);
        for way in order {
            match way {
                None => {
                    let (p, cpu) = plain()?;
                    line.push_str(&format!(" plain {:.3} s", p as f64 / 1e9));
                    plain_ns.push(p);
                    plain_cpu.push(cpu);
                }
                Some(w) => {
                    let ((ns, cpu), s, k) = profiled(WAYS[w].1)?;
                    line.push_str(&format!(" | way {} {:.3} s", w + 1, ns as f64 / 1e9));
                    ways_ns[w].push(ns);
                    ways_cpu[w].push(cpu);
                    if w == 0 {
                        if let Some((ns, runs)) = k {
                            kernel_ns += ns;
                            kernel_runs += runs;
                        }
                        shares.push(s);
                    }
                }
            }
        }
        say!("{line}");
    }
    let total = |f: fn(&Shares) -> u64| shares.iter().map(f).sum::<u64>() as f64;
    let samples = total(|s| s.samples);
    let ratio = |with: &[u64], without: &[u64]| {
        median(with.iter().map(|&n| n as f64))
            .zip(median(without.iter().map(|&n| n as f64)))
            .map(|(with, without)| with / without - 1.0)
    };
    let slowdown = |with: &[u64]| ratio(with, &plain_ns);
    let mut figures: Vec<Figure> = WAYS
        .iter()
        .zip(&ways_ns)
        .enumerate()
        .map(|(w, ((name, _), ns))| Figure {
            name: format!(
                "JIT-heavy .NET slowdown at {FREQ} Hz, way {}: {name}",
                w + 1
            ),
            measured: slowdown(ns),
            unit: Unit::Percent,
            // The goal is for names and lines; the perf map's cost is
            // the runtime's writing, measured for comparison.
            goal: if WAYS[w].1.contains(&"--dotnet-perf-map") {
                Goal::Info
            } else {
                Goal::AtMost(0.03)
            },
        })
        .collect();
    // Each round's run of way 1 against the same round's plain run: the
    // machine's speed drifts over minutes, and a pair shares its minute.
    figures.push(Figure {
        name: format!(
            "JIT-heavy .NET slowdown at {FREQ} Hz, way 1, median of each round's ratio to its plain run"
        ),
        measured: median(
            ways_ns[0]
                .iter()
                .zip(&plain_ns)
                .map(|(&with, &without)| with as f64 / without as f64 - 1.0),
        ),
        unit: Unit::Percent,
        goal: Goal::Info,
    });
    // Interference on a shared machine only ever slows a round: the fastest
    // round of each kind is the least disturbed estimate of its cost, a
    // second view where the medians swing by more than the goal.
    let fastest = |ns: &[u64]| ns.iter().min().map(|&n| n as f64);
    figures.push(Figure {
        name: format!(
            "JIT-heavy .NET slowdown at {FREQ} Hz, way 1, fastest round against fastest plain round"
        ),
        measured: fastest(&ways_ns[0])
            .zip(fastest(&plain_ns))
            .map(|(with, without)| with / without - 1.0),
        unit: Unit::Percent,
        goal: Goal::Info,
    });
    // What the target itself spends: on a machine whose cores the target
    // keeps busy, the wall-clock slowdown also holds the collector's own CPU
    // taking turns with it; this does not (medians).
    for (w, what) in [(0, "named from memory (default)"), (2, "--dotnet-perf-map")] {
        figures.push(Figure {
            name: format!(
                "JIT-heavy .NET: the target's own CPU time in its work, way {}, {what}",
                w + 1
            ),
            measured: ratio(&ways_cpu[w], &plain_cpu),
            unit: Unit::Percent,
            goal: Goal::Info,
        });
    }
    figures.extend([
        Figure {
            name: format!("kernel program ns per run, .NET at {FREQ} Hz (own stack walk)"),
            measured: (kernel_runs > 0.0).then(|| kernel_ns / kernel_runs),
            unit: Unit::Ns,
            goal: Goal::Info,
        },
        Figure {
            name: ".NET samples with every frame named".into(),
            measured: (samples > 0.0).then(|| total(|s| s.fully_named) / samples),
            unit: Unit::Share,
            goal: Goal::AtLeast(0.99),
        },
        Figure {
            name: ".NET samples with every managed frame named".into(),
            measured: (samples > 0.0).then(|| total(|s| s.managed_named) / samples),
            unit: Unit::Share,
            goal: Goal::Info,
        },
    ]);
    Ok(figures)
}

/// One run under crossprof: work time and CPU time, named shares, and the kernel program's
/// `(run_time_ns, run_count)` when the kernel kept them.
type Round = ((u64, u64), Shares, Option<(f64, f64)>);

/// How much of one profile's .NET samples is named.
#[derive(Debug, Default, PartialEq)]
struct Shares {
    samples: u64,
    fully_named: u64,
    managed_named: u64,
}

impl Shares {
    /// Counts the `dotnet` stacks of a folded profile.
    fn of(folded: &str) -> Self {
        let mut s = Shares::default();
        for stack in parse_folded(folded)
            .into_iter()
            .filter(|st| st.frames[0] == "dotnet")
        {
            let frames = &stack.frames[1..];
            let unnamed = |f: &str| {
                let f = f.trim_end_matches("_[k]").trim_end_matches("_[j]");
                f == "[unknown]" || (f.starts_with('[') && f.contains("+0x"))
            };
            let managed_unnamed =
                |f: &str| f == "[unknown]" || (f.starts_with('[') && f.contains(".dll+0x"));
            s.samples += stack.count;
            if !frames.iter().any(|f| unnamed(f)) {
                s.fully_named += stack.count;
            }
            if !frames.iter().any(|f| managed_unnamed(f)) {
                s.managed_named += stack.count;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_named_and_unnamed_dotnet_samples() {
        let folded = "\
dotnet;main;Program::Main_[j];System.String::Concat_[j] 5
dotnet;main;[libcoreclr.so+0x2d729d];Program::Main_[j] 3
dotnet;main;[unknown];do_syscall_64_[k] 2
dotnet;main;[System.Linq.dll+0x1234] 1
other;[unknown] 7
";
        assert_eq!(
            Shares::of(folded),
            Shares {
                samples: 11,
                fully_named: 5,
                managed_named: 8,
            }
        );
    }
}
