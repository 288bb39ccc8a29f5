//! Loading: what the verifier makes of each of crossprof's programs, on this
//! kernel and on Debian 12's 6.1 and 6.12 (booted under qemu, see
//! `cargo xtask vmtest`), from `crossprof check --load --json`: instructions
//! processed (`BPF_OBJ_GET_INFO`), stack (the object's call chains, as the
//! verifier sums them), CPU time of each load (the verifier runs in the
//! loading thread).
//!
//! The goal is for this kernel: everything one run loads verifies in 0.3 s of
//! CPU or less, for a cpu run and for the heaviest (wall, with the goroutine
//! probes). Under software emulation times are ~10x longer and not comparable
//! with the host's: kernels are compared with each other by ratio, in the same
//! guest setup.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::target_dir;
use serde_json::Value;

use super::{Figure, Goal, Unit, median};
use crate::{cmd, say, vmtest};

/// Loads measured on this kernel; the figure is their median.
const HOST_ROUNDS: usize = 5;

/// What a cpu run of a native program loads (no runtime walks: issue #21).
const CPU_RUN: &[&str] = &["cpu_sample", "mmap_enter", "mmap_exit"];
/// What a cpu run loads once it meets a Go or .NET process.
const CPU_RUNTIMES_RUN: &[&str] = &[
    "cpu_sample",
    "cpu_sample_runtimes",
    "mmap_enter",
    "mmap_exit",
];
/// What the heaviest run loads (`--mode wall` in a Go process: on- and
/// off-CPU, the goroutine probes).
const WALL_RUN: &[&str] = &[
    "cpu_sample",
    "cpu_sample_runtimes",
    "mmap_enter",
    "mmap_exit",
    "off_cpu_start",
    "off_cpu_end",
    "go_casgstatus",
    "go_newproc1",
    "go_syscall_enter",
    "go_syscall_exit",
];

/// One program as `check --load --json` reports it.
#[derive(Clone, Debug, Default)]
struct Program {
    insns: Option<f64>,
    stack: Option<f64>,
    cpu_ms: Option<f64>,
    refused: Option<String>,
}

fn programs(report: &Value) -> BTreeMap<String, Program> {
    report["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                Program {
                    insns: p["verified_insns"].as_f64(),
                    stack: p["stack"].as_f64(),
                    cpu_ms: p["cpu_ms"].as_f64(),
                    refused: p["refused"].as_str().map(str::to_owned),
                },
            ))
        })
        .collect()
}

pub fn figures(crossprof: &Path, vms: bool) -> Result<Vec<Figure>> {
    say!("bench: loading every program {HOST_ROUNDS} times on this kernel...");
    let mut rounds = Vec::new();
    for _ in 0..HOST_ROUNDS {
        let out =
            cmd::output(std::process::Command::new(crossprof).args(["check", "--load", "--json"]))?;
        rounds.push(programs(
            &serde_json::from_str(&out).context("check --json")?,
        ));
    }
    let host = rounds[0].clone();
    let cpu_ms = |name: &str| median(rounds.iter().filter_map(|r| r.get(name)?.cpu_ms));
    let release = crate::cmd::output(std::process::Command::new("uname").arg("-r"))?
        .trim()
        .to_owned();
    let mut tables = vec![(format!("this kernel ({release})"), host.clone(), true)];
    let mut figures = Vec::new();
    let run_ms = |set: &[&str]| -> Option<f64> { set.iter().map(|p| cpu_ms(p)).sum() };
    figures.push(Figure {
        name: format!("verification CPU of a cpu run of a native program on {release}"),
        measured: run_ms(CPU_RUN),
        unit: Unit::Ms,
        goal: Goal::AtMost(300.0),
    });
    figures.push(Figure {
        name: format!("verification CPU of a cpu run with a Go or .NET process on {release}"),
        measured: run_ms(CPU_RUNTIMES_RUN),
        unit: Unit::Ms,
        goal: Goal::AtMost(300.0),
    });
    figures.push(Figure {
        name: format!("verification CPU of a wall run with Go probes on {release}"),
        measured: run_ms(WALL_RUN),
        unit: Unit::Ms,
        goal: Goal::AtMost(300.0),
    });
    let deepest = host.values().filter_map(|p| p.stack).fold(0.0, f64::max);
    figures.push(Figure {
        name: "deepest program stack (any kernel: at most 512 bytes)".into(),
        measured: Some(deepest),
        unit: Unit::Count,
        goal: Goal::AtMost(512.0),
    });
    if vms {
        for kernel in vmtest::KERNELS {
            let dir = target_dir()
                .join("bench")
                .join(format!("load-{}", kernel.short));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            let bin = dir.join("crossprof");
            fs::copy(crossprof, &bin)?;
            say!(
                "bench: loading every program on Linux {} (under qemu, ~1-2 min)...",
                kernel.short
            );
            let script = format!(
                "\"{}\" check --load --json > \"$OUT/check.json\" 2> \"$OUT/check.err\"\n",
                bin.display()
            );
            let (console, ended) = vmtest::boot(
                &kernel,
                &dir,
                &script,
                &[],
                4096,
                vmtest::Limits {
                    total: Duration::from_secs(15 * 60),
                    watch: &[],
                },
                vmtest::Tcg::Multi,
            )?;
            if let vmtest::Ended::Killed(why) = ended {
                bail!(
                    "the {} guest was killed ({why}): see {}",
                    kernel.short,
                    console.display()
                );
            }
            let text = fs::read_to_string(dir.join("check.json")).unwrap_or_default();
            let report: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let progs = programs(&report);
            let refused = progs.values().filter(|p| p.refused.is_some()).count();
            figures.push(Figure {
                name: format!("programs refused by Linux {}", kernel.short),
                measured: (!progs.is_empty()).then_some(refused as f64),
                unit: Unit::Count,
                goal: Goal::AtMost(0.0),
            });
            tables.push((format!("Linux {} (under qemu)", kernel.short), progs, false));
        }
    }
    println!();
    print!("{}", load_table(&tables));
    Ok(figures)
}

/// Program by program, each kernel's verified instructions and load CPU, and
/// for the emulated kernels the ratio of CPU to the first of them.
fn load_table(tables: &[(String, BTreeMap<String, Program>, bool)]) -> String {
    let mut out = String::new();
    let names: Vec<String> = tables
        .first()
        .map(|(_, p, _)| p.keys().cloned().collect())
        .unwrap_or_default();
    let _ = write!(out, "{:<18} {:>6}", "program", "stack");
    for (kernel, _, _) in tables {
        let _ = write!(out, " | {kernel:>28}");
    }
    let _ = writeln!(out);
    let _ = write!(out, "{:<18} {:>6}", "", "bytes");
    for (_, _, host) in tables {
        let _ = write!(
            out,
            " | {:>12} {:>15}",
            "insns",
            if *host { "CPU ms" } else { "CPU ms (ratio)" }
        );
    }
    let _ = writeln!(out);
    let base = tables.iter().find(|(_, _, host)| !host).map(|(_, p, _)| p);
    for name in &names {
        let stack = tables[0].1.get(name).and_then(|p| p.stack);
        let _ = write!(
            out,
            "{name:<18} {:>6}",
            stack.map_or("-".into(), |s| format!("{s:.0}"))
        );
        for (_, progs, host) in tables {
            let p = progs.get(name).cloned().unwrap_or_default();
            let insns = p.insns.map_or("-".into(), |n| format!("{n:.0}"));
            let cpu = match (&p.refused, p.cpu_ms) {
                (Some(_), _) => "REFUSED".to_owned(),
                (None, Some(ms)) if !host => {
                    let ratio = base
                        .and_then(|b| b.get(name)?.cpu_ms)
                        .filter(|b| *b > 0.0)
                        .map_or(String::new(), |b| format!(" ({:.2})", ms / b));
                    format!("{ms:.1}{ratio}")
                }
                (None, Some(ms)) => format!("{ms:.1}"),
                (None, None) => "-".into(),
            };
            let _ = write!(out, " | {insns:>12} {cpu:>15}");
        }
        let _ = writeln!(out);
    }
    out
}
