//! The Go part of `cargo xtask bench` (issue #4): what following goroutines costs
//! a goroutine-switch-heavy Go program.
//!
//! The workload is tests/fixtures/go/switches.go built by Go 1.23: four pairs of
//! goroutines pass a counter over unbuffered channels (~180 ns a message here),
//! timed by the program itself after 300 ms of untimed sleep (crossprof attaches
//! then). Rounds alternate plain runs (without crossprof) with:
//!
//! - `crossprof record` at 99 Hz: every sample carries its goroutine's id, pprof
//!   labels and status, read by the sampling program (no uprobe); 1,000,000
//!   messages per pair, `--runs` rounds;
//! - the same with `--go-states`: uprobes on every goroutine status change;
//!   200,000 messages per pair (the runs are ~8 times longer), 3 rounds.
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
/// Messages per pair for plain against sampling: ~0.7 s of work without
/// crossprof, long enough that the run-to-run noise (±2% at 0.3 s) falls under
/// the 2% goal.
const MESSAGES: &str = "1000000";
/// Messages per pair for plain against `--go-states`, whose runs are ~8 times
/// longer.
const STATES_MESSAGES: &str = "200000";

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
    let run = |kind: Kind, messages: &str| -> Result<(u64, Option<Value>)> {
        let out = if kind == Kind::Plain {
            cmd::output(Command::new(&bin).arg(messages))?
        } else {
            let mut c = Command::new(crossprof);
            c.args(["record", "--quiet", "--freq", &FREQ.to_string(), "-o"])
                .arg(&out_dir);
            if kind == Kind::States {
                c.arg("--go-states");
            }
            cmd::output(c.arg("--").arg(&bin).arg(messages))?
        };
        check_interrupted()?;
        let summary = (kind != Kind::Plain).then(|| read_summary(&out_dir));
        Ok((work_ns(&out)?, summary))
    };

    say!("bench: Go: warming up (one run of each kind, not counted)...");
    run(Kind::Plain, MESSAGES)?;
    run(Kind::Sampling, MESSAGES)?;
    run(Kind::States, STATES_MESSAGES)?;
    let (mut plain, mut sampling) = (Vec::new(), Vec::new());
    for round in 0..runs as usize {
        // Alternate who goes first.
        let (p, w) = if round % 2 == 0 {
            let p = run(Kind::Plain, MESSAGES)?.0;
            (p, run(Kind::Sampling, MESSAGES)?.0)
        } else {
            let w = run(Kind::Sampling, MESSAGES)?.0;
            (run(Kind::Plain, MESSAGES)?.0, w)
        };
        say!(
            "round {:>2}/{runs}: Go  plain {:.3} s  {FREQ} Hz {:.3} s",
            round + 1,
            p as f64 / 1e9,
            w as f64 / 1e9
        );
        plain.push(p as f64);
        sampling.push(w as f64);
    }
    // --go-states runs are long (every status change traps): fewer rounds,
    // against their own plain runs of the same (shorter) work.
    let rounds = runs.min(3);
    let (mut states_plain, mut states) = (Vec::new(), Vec::new());
    let (mut per_change, mut program_ns) = (Vec::new(), (0.0, 0.0));
    for round in 0..rounds as usize {
        let p = run(Kind::Plain, STATES_MESSAGES)?.0;
        let (ns, summary) = run(Kind::States, STATES_MESSAGES)?;
        say!(
            "round {:>2}/{rounds}: Go  plain {:.3} s  --go-states {:.3} s",
            round + 1,
            p as f64 / 1e9,
            ns as f64 / 1e9
        );
        states_plain.push(p as f64);
        states.push(ns as f64);
        let summary = summary.unwrap_or_default();
        let field = |ptr: &str| summary.pointer(ptr).and_then(Value::as_f64);
        if let Some(changes) = field("/counters/go_status_changes").filter(|&c| c > 0.0) {
            per_change.push((ns as f64 - p as f64) / changes);
        }
        if let (Some(t), Some(n)) = (
            field("/go_state_probes/run_time_ns"),
            field("/go_state_probes/run_count"),
        ) {
            program_ns.0 += t;
            program_ns.1 += n;
        }
    }
    let slowdown = |runs: &[f64], base: &[f64]| {
        median(runs.iter().copied())
            .zip(median(base.iter().copied()))
            .map(|(with, without)| with / without - 1.0)
    };
    let change_ns = median(per_change.iter().copied());
    Ok(vec![
        Figure {
            name: format!(
                "Go switch-heavy slowdown at {FREQ} Hz (goroutine id, labels, status per sample)"
            ),
            measured: slowdown(&sampling, &plain),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.02),
        },
        Figure {
            name: format!("Go switch-heavy slowdown at {FREQ} Hz with --go-states (uprobes)"),
            measured: slowdown(&states, &states_plain),
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
