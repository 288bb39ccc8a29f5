//! The Go part of `cargo xtask bench` (issue #4): what following goroutines costs
//! a goroutine-switch-heavy Go program.
//!
//! The workload is tests/fixtures/go/switches.go built by Go 1.23: four pairs of
//! goroutines pass a counter over unbuffered channels (~180 ns a message here),
//! timed by the program itself after 300 ms of untimed sleep (crossprof attaches
//! then). Rounds rotate three kinds of run:
//!
//! - plain, without crossprof;
//! - `crossprof record` at 99 Hz: every sample carries its goroutine's id, pprof
//!   labels and status, read by the sampling program (no uprobe);
//! - the same with `--go-states`: uprobes on every goroutine status change.
//!
//! Figures: each slowdown (median work time / median plain work time - 1); the
//! cost of one status change in the target under `--go-states` (extra work time /
//! changes counted by the kernel: the uprobe trap and the program together); and
//! the state program's own run time per call (bpf_stats).

use std::{path::Path, process::Command};

use anyhow::Result;
use crossprof_tests::{Go, GoBuild, read_summary};
use serde_json::Value;

use super::{Figure, Goal, Unit, check_interrupted, median, work_ns};
use crate::{cmd, say};

const FREQ: u64 = 99;
/// Messages per pair: ~0.3 s of work without crossprof.
const MESSAGES: &str = "400000";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    Sampling,
    States,
}

/// Runs the Go rounds and returns their figures.
pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let bin = Go::Go123.fixture("switches", GoBuild::Normal);
    let out_dir = bench_dir.join("run-go");
    let run = |kind: Kind| -> Result<(u64, Option<Value>)> {
        let out = if kind == Kind::Plain {
            cmd::output(Command::new(&bin).arg(MESSAGES))?
        } else {
            let mut c = Command::new(crossprof);
            c.args(["record", "--quiet", "--freq", &FREQ.to_string(), "-o"])
                .arg(&out_dir);
            if kind == Kind::States {
                c.arg("--go-states");
            }
            cmd::output(c.arg("--").arg(&bin).arg(MESSAGES))?
        };
        check_interrupted()?;
        let summary = (kind != Kind::Plain).then(|| read_summary(&out_dir));
        Ok((work_ns(&out)?, summary))
    };

    say!("bench: Go: warming up (one run of each kind, not counted)...");
    for kind in [Kind::Plain, Kind::Sampling, Kind::States] {
        run(kind)?;
    }
    // --go-states runs are long (every status change traps): fewer rounds.
    let rounds = runs.min(5);
    let (mut plain, mut sampling, mut states) = (Vec::new(), Vec::new(), Vec::new());
    let (mut per_change, mut program_ns) = (Vec::new(), (0.0, 0.0));
    let kinds = [Kind::Plain, Kind::Sampling, Kind::States];
    for round in 0..rounds as usize {
        let mut line = format!("round {:>2}/{rounds}: Go", round + 1);
        for k in 0..kinds.len() {
            let kind = kinds[(k + round) % kinds.len()];
            let (ns, summary) = run(kind)?;
            let secs = ns as f64 / 1e9;
            match kind {
                Kind::Plain => {
                    line += &format!("  plain {secs:.3} s");
                    plain.push(ns as f64);
                }
                Kind::Sampling => {
                    line += &format!("  {FREQ} Hz {secs:.3} s");
                    sampling.push(ns as f64);
                }
                Kind::States => {
                    line += &format!("  --go-states {secs:.3} s");
                    states.push(ns as f64);
                    let summary = summary.unwrap_or_default();
                    let changes = summary
                        .pointer("/counters/go_status_changes")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0);
                    if changes > 0.0 {
                        per_change.push((ns as f64, changes));
                    }
                    let field = |p: &str| summary.pointer(p).and_then(Value::as_f64);
                    if let (Some(t), Some(n)) = (
                        field("/go_state_probes/run_time_ns"),
                        field("/go_state_probes/run_count"),
                    ) {
                        program_ns.0 += t;
                        program_ns.1 += n;
                    }
                }
            }
        }
        say!("{line}");
    }
    let plain_median = median(plain.iter().copied());
    let slowdown = |runs: &[f64]| {
        median(runs.iter().copied())
            .zip(plain_median)
            .map(|(with, without)| with / without - 1.0)
    };
    let change_ns = plain_median
        .and_then(|p| median(per_change.iter().map(|&(ns, changes)| (ns - p) / changes)));
    Ok(vec![
        Figure {
            name: format!(
                "Go switch-heavy slowdown at {FREQ} Hz (goroutine id, labels, status per sample)"
            ),
            measured: slowdown(&sampling),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.02),
        },
        Figure {
            name: format!("Go switch-heavy slowdown at {FREQ} Hz with --go-states (uprobes)"),
            measured: slowdown(&states),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.02),
        },
        Figure {
            name: "--go-states cost per goroutine status change in the target".into(),
            measured: change_ns,
            unit: Unit::Ns,
            goal: Goal::Info,
        },
        Figure {
            name: "--go-states kernel program ns per call (casgstatus & co.)".into(),
            measured: (program_ns.1 > 0.0).then(|| program_ns.0 / program_ns.1),
            unit: Unit::Ns,
            goal: Goal::Info,
        },
    ])
}
