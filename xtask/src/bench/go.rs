//! The Go part of `cargo xtask bench` (issue #4): what following goroutines costs
//! a goroutine-switch-heavy Go program.
//!
//! The workload is tests/fixtures/go/switches.go built by Go 1.23: four pairs of
//! goroutines pass a counter over unbuffered channels (~180 ns a message here),
//! timed by the program itself after 300 ms of untimed sleep (crossprof attaches
//! then). Rounds alternate plain runs (without crossprof) with:
//!
//! - `crossprof record` at 99 Hz with `--go-state-sampling 0`: every sample
//!   carries its goroutine's id, pprof labels and status, read by the sampling
//!   program (no uprobe); 1,000,000 messages per pair, `--runs` rounds;
//! - the same with goroutine states sampled at 10 Hz (`record`'s default: every
//!   goroutine's status read from the process's memory), in the same rounds;
//! - the same with `--go-states`: uprobes on every goroutine status change;
//!   200,000 messages per pair (the runs are ~8 times longer), 3 rounds.
//!
//! Figures: each slowdown (median work time / median plain work time - 1), and
//! what the state sampling adds (median with it / median without - 1) and its
//! bound (the collector's CPU per round times the rate: the target runs
//! nothing for it, so it can lose at most that share of a core); the
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
    /// Sampling, with goroutine states sampled at [`STATE_HZ`].
    StateSampling,
    States,
}

/// `--go-state-sampling` rate measured (`record`'s default).
const STATE_HZ: u64 = 10;

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
            match kind {
                Kind::States => {
                    c.arg("--go-states");
                }
                Kind::Sampling => {
                    c.args(["--go-state-sampling", "0"]);
                }
                Kind::StateSampling => {
                    c.args(["--go-state-sampling", &STATE_HZ.to_string()]);
                }
                Kind::Plain => {}
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
    run(Kind::StateSampling, MESSAGES)?;
    run(Kind::States, STATES_MESSAGES)?;
    let (mut plain, mut sampling, mut state_sampling) = (Vec::new(), Vec::new(), Vec::new());
    let mut round_us = Vec::new();
    for round in 0..runs as usize {
        // Each kind first in turn.
        let mut kinds = [Kind::Plain, Kind::Sampling, Kind::StateSampling];
        kinds.rotate_left(round % 3);
        let mut took = [0.0; 3];
        for kind in kinds {
            let (ns, summary) = run(kind, MESSAGES)?;
            let ns = ns as f64;
            if kind == Kind::StateSampling {
                round_us.extend(summary.as_ref().and_then(|s| {
                    s["processes"]
                        .as_array()?
                        .iter()
                        .find_map(|p| p.pointer("/goroutines_sampled/sampled/round_us")?.as_f64())
                }));
            }
            let at = match kind {
                Kind::Plain => 0,
                Kind::Sampling => 1,
                _ => 2,
            };
            took[at] = ns;
        }
        say!(
            "round {:>2}/{runs}: Go  plain {:.3} s  {FREQ} Hz {:.3} s  + states at {STATE_HZ} Hz {:.3} s",
            round + 1,
            took[0] / 1e9,
            took[1] / 1e9,
            took[2] / 1e9
        );
        plain.push(took[0]);
        sampling.push(took[1]);
        state_sampling.push(took[2]);
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
            name: format!(
                "Go switch-heavy: what --go-state-sampling {STATE_HZ} adds to the {FREQ} Hz run"
            ),
            measured: slowdown(&state_sampling, &sampling),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.005),
        },
        Figure {
            name: "--go-state-sampling: the collector's time per round (every goroutine read)"
                .into(),
            measured: median(round_us.iter().copied()).map(|us| us * 1e3),
            unit: Unit::Ns,
            goal: Goal::Info,
        },
        // The target runs nothing for the state sampling (no probe, no
        // write): the collector reads its memory. What it can take from the
        // target is at most the CPU those reads take, were they to run on the
        // target's own core: their share of one core bounds the slowdown the
        // wall-clock figure above cannot resolve on a noisy machine.
        Figure {
            name: format!(
                "--go-state-sampling {STATE_HZ}: bound on its cost to the target, the collector's rounds as a share of one core"
            ),
            measured: median(round_us.iter().copied()).map(|us| us * STATE_HZ as f64 / 1e6),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.005),
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
