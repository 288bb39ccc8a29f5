//! The .NET part of `cargo xtask bench` (issue #3): what profiling costs a JIT-heavy
//! .NET program, and how much of a .NET profile is named.
//!
//! The workload is tests/fixtures/dotnet/jit_heavy.cs on .NET 8: 60,000 expression
//! trees compiled and called (~1 s), each a new method the JIT compiles, timed by the
//! program itself after 300 ms of untimed spinning (crossprof attaches then). Rounds
//! alternate plain runs and runs under `crossprof record` at 99 Hz, named from the
//! runtime's memory (the default) and with `--dotnet-perf-map`.
//!
//! - slowdown = median(work under crossprof) / median(plain work) - 1, for each way
//!   of naming. With the perf map it includes the runtime writing its perf map and
//!   jitdump, which crossprof turns on: for every method compiled the runtime
//!   formats its name and writes it out. From memory the runtime does nothing for
//!   crossprof: what is left is the sampling itself and crossprof's reads of its
//!   memory (its mmap lock, taken for reading);
//! - the kernel program's cost per run while it walks .NET stacks itself;
//! - share of the .NET samples whose every frame is named, and whose managed frames
//!   (JIT code, ReadyToRun code, stubs) are: `[unknown]` and `[module+0x...]`
//!   frames are not named. Kernel frames count too.

use std::{path::Path, process::Command};

use anyhow::Result;
use crossprof_tests::{Dotnet, parse_folded, read_summary};

use super::{Figure, Goal, Unit, check_interrupted, median, work_ns};
use crate::{cmd, say};

const FIXTURE: &str = "jit_heavy";
const FREQ: u64 = 99;

/// Runs the .NET rounds and returns their figures.
pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let runtime = Dotnet::Net8;
    let dll = runtime.fixture(FIXTURE);
    let out_dir = bench_dir.join("run-dotnet");
    let plain = || -> Result<u64> {
        let out = cmd::output(&mut runtime.command(&dll, &[]))?;
        check_interrupted()?;
        work_ns(&out)
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
        Ok((work_ns(&out)?, Shares::of(&folded), kernel))
    };

    const PERF_MAP: &[&str] = &["--dotnet-perf-map"];
    say!("bench: .NET: warming up (one run of each kind, not counted)...");
    plain()?;
    profiled(&[])?;
    profiled(PERF_MAP)?;
    let (mut plain_ns, mut profiled_ns, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    let mut map_ns = Vec::new();
    let (mut kernel_ns, mut kernel_runs) = (0.0, 0.0);
    for round in 0..runs {
        // The order turns each round, so that no kind always follows another.
        let (p, (w, s, k), (m, ..)) = if round % 2 == 0 {
            let p = plain()?;
            (p, profiled(&[])?, profiled(PERF_MAP)?)
        } else {
            let m = profiled(PERF_MAP)?;
            let w = profiled(&[])?;
            (plain()?, w, m)
        };
        say!(
            "round {:>2}/{runs}: .NET plain {:.3} s  {FREQ} Hz {:.3} s (perf map: {:.3} s)  fully named {:.1}%",
            round + 1,
            p as f64 / 1e9,
            w as f64 / 1e9,
            m as f64 / 1e9,
            s.fully_named() * 100.0
        );
        if let Some((ns, runs)) = k {
            kernel_ns += ns;
            kernel_runs += runs;
        }
        plain_ns.push(p);
        profiled_ns.push(w);
        map_ns.push(m);
        shares.push(s);
    }
    let total = |f: fn(&Shares) -> u64| shares.iter().map(f).sum::<u64>() as f64;
    let samples = total(|s| s.samples);
    let slowdown = |with: &[u64]| {
        median(with.iter().map(|&n| n as f64))
            .zip(median(plain_ns.iter().map(|&n| n as f64)))
            .map(|(with, without)| with / without - 1.0)
    };
    Ok(vec![
        Figure {
            name: format!("JIT-heavy .NET slowdown at {FREQ} Hz (named from memory)"),
            measured: slowdown(&profiled_ns),
            unit: Unit::Percent,
            goal: Goal::AtMost(0.03),
        },
        Figure {
            name: format!("JIT-heavy .NET slowdown at {FREQ} Hz (--dotnet-perf-map)"),
            measured: slowdown(&map_ns),
            unit: Unit::Percent,
            goal: Goal::Info,
        },
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
    ])
}

/// One run under crossprof: work time, named shares, and the kernel program's
/// `(run_time_ns, run_count)` when the kernel kept them.
type Round = (u64, Shares, Option<(f64, f64)>);

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

    fn fully_named(&self) -> f64 {
        self.fully_named as f64 / self.samples.max(1) as f64
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
