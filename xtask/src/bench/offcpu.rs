//! Off-CPU figures (issue #6): what following every blocking costs a
//! context-switch-heavy workload, `tests/fixtures/bench/pingpong.c` (two threads
//! passing a byte over two pipes: a blocking read and a switch per message on
//! each side), run alternately plain, with `--mode offcpu` and with
//! `--mode wall`; the fixture times its exchanges only.

use std::{path::Path, process::Command};

use anyhow::Result;
use crossprof_tests::{build_c, read_summary};
use serde_json::Value;

use super::{Figure, Goal, Unit, check_interrupted, median, work_ns};
use crate::{cmd, say};

/// Round trips per run (~2.5 s on the 2-core VM).
const TRIPS: &str = "50000";

pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let bin = build_c("bench/pingpong.c", &["-O2", "-g"]);
    let out_dir = bench_dir.join("run-offcpu");
    let run = |mode: Option<&str>| -> Result<(f64, Option<Value>)> {
        let out = match mode {
            None => cmd::output(Command::new(&bin).arg(TRIPS))?,
            Some(mode) => cmd::output(
                Command::new(crossprof)
                    .args(["record", "--quiet", "--mode", mode, "-o"])
                    .arg(&out_dir)
                    .arg("--")
                    .arg(&bin)
                    .arg(TRIPS),
            )?,
        };
        check_interrupted()?;
        Ok((work_ns(&out)? as f64, mode.map(|_| read_summary(&out_dir))))
    };
    say!("bench: off-CPU: warming up (one run of each kind, not counted)...");
    for mode in [None, Some("offcpu"), Some("wall")] {
        run(mode)?;
    }
    let (mut plain, mut offcpu, mut wall, mut spans) = (vec![], vec![], vec![], vec![]);
    for round in 0..runs as usize {
        // Rotate the order, so that no kind always runs after the same one.
        let mut kinds = [None, Some("offcpu"), Some("wall")];
        kinds.rotate_left(round % 3);
        for mode in kinds {
            let (ns, summary) = run(mode)?;
            match mode {
                None => plain.push(ns),
                Some("offcpu") => {
                    offcpu.push(ns);
                    if let Some(n) = summary
                        .as_ref()
                        .and_then(|s| s.pointer("/counters/off_cpu_spans")?.as_f64())
                    {
                        spans.push(n);
                    }
                }
                _ => wall.push(ns),
            }
        }
        say!(
            "round {:>2}/{runs}: ping-pong plain {:.3} s  offcpu {:.3} s  wall {:.3} s",
            round + 1,
            plain[round] / 1e9,
            offcpu[round] / 1e9,
            wall[round] / 1e9
        );
    }
    let slowdown = |with: &[f64]| {
        median(with.iter().copied())
            .zip(median(plain.iter().copied()))
            .map(|(w, p)| w / p - 1.0)
    };
    Ok(vec![
        Figure {
            name: "context-switch-heavy slowdown (pipe ping-pong), --mode offcpu".into(),
            measured: slowdown(&offcpu),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.05),
        },
        Figure {
            name: "context-switch-heavy slowdown (pipe ping-pong), --mode wall at 99 Hz".into(),
            measured: slowdown(&wall),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.05),
        },
        Figure {
            name: "  off-CPU spans followed per ping-pong run".into(),
            measured: median(spans.iter().copied()),
            unit: Unit::Count,
            goal: Goal::Info,
        },
    ])
}
