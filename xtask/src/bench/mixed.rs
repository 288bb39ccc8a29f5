//! The mixed-stack part of `cargo xtask bench` (issue #5): what walking one
//! stack across .NET, Go and C costs the kernel, and the memory of the unwind
//! tables it needs.
//!
//! The workload is tests/fixtures/dotnet/pinvoke.cs on .NET 8 calling the Go
//! c-shared library built from tests/fixtures/go/cgo by Go 1.23: `Main ->
//! Outer -> [P/Invoke] Compute -> main.inner -> C c_outer -> c_middle (-O2
//! -fomit-frame-pointer) -> goSpin -> main.spin`, ~45 frames from `_start`,
//! recorded at 999 Hz for 2 s per round.
//!
//! - kernel cost per sample = the program's run time (bpf_stats) / samples
//!   sent. The run time includes the samples of the other CPU that the pid
//!   filter drops (a few dozen ns each), so this is an upper bound;
//! - frames per sample (user and kernel, markers and the process name left
//!   out), for scale;
//! - stack completeness, the frame-pointer baseline crossprof measures in the
//!   same run, and the same program with `--frame-pointers-only`;
//! - the unwind table's kernel memory for libc, libcoreclr and the Go library
//!   (summary.json `unwind_objects`), and for every object the process maps.

use std::{path::Path, process::Command};

use anyhow::Result;
use crossprof_tests::{Dotnet, Go, GoBuild, parse_folded, read_summary};
use serde_json::Value;

use super::{Figure, Goal, Unit, check_interrupted, median};
use crate::{cmd, say};

const FREQ: u64 = 999;
/// At most this many rounds: each is 2 s of work, and the figures vary little.
const MAX_ROUNDS: u32 = 5;

/// One recording.
struct Round {
    /// Kernel ns per sample sent.
    ns_per_sample: Option<f64>,
    /// Mean frames per sample.
    frames: Option<f64>,
    complete: Option<f64>,
    summary: Value,
}

/// Runs the mixed rounds and returns their figures.
pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let runtime = Dotnet::Net8;
    let dll = runtime.fixture("pinvoke");
    let lib = Go::Go123.fixture("cgo", GoBuild::CShared);
    let out_dir = bench_dir.join("run-mixed");
    let record = |flags: &[&str]| -> Result<Round> {
        let target = runtime.command(&dll, &["2"]);
        let mut c = Command::new(crossprof);
        c.args(["record", "--quiet", "--freq", &FREQ.to_string()])
            .args(flags)
            .arg("-o")
            .arg(&out_dir)
            .arg("--")
            .arg(target.get_program())
            .args(target.get_args())
            .env("LD_LIBRARY_PATH", lib.parent().unwrap_or(Path::new(".")));
        for (k, v) in target.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        cmd::output(&mut c)?;
        check_interrupted()?;
        let summary = read_summary(&out_dir);
        let num = |p: &str| summary.pointer(p).and_then(Value::as_f64);
        let stacks = parse_folded(&std::fs::read_to_string(out_dir.join("profile.folded"))?);
        let (frames, samples) = stacks
            .iter()
            .filter(|s| s.frames.iter().any(|f| f == "main.spin"))
            .fold((0, 0), |(f, n), s| {
                let real = s.frames[1..].iter().filter(|f| !is_marker(f)).count() as u64;
                (f + real * s.count, n + s.count)
            });
        Ok(Round {
            ns_per_sample: num("/kernel_program/run_time_ns")
                .zip(num("/counters/sent"))
                .filter(|&(_, sent)| sent > 0.0)
                .map(|(ns, sent)| ns / sent),
            frames: (samples > 0).then(|| frames as f64 / samples as f64),
            complete: num("/stacks_complete"),
            summary,
        })
    };

    say!("bench: mixed .NET/Go/C stacks: warming up (one run, not counted)...");
    record(&[])?;
    let rounds = runs.min(MAX_ROUNDS);
    let mut measured = Vec::new();
    for round in 0..rounds {
        let r = record(&[])?;
        say!(
            "round {:>2}/{rounds}: mixed {FREQ} Hz: {} ns per sample, {:.0} frames, complete {:.1}%",
            round + 1,
            r.ns_per_sample.map_or("n/a".into(), |n| format!("{n:.0}")),
            r.frames.unwrap_or(0.0),
            r.complete.unwrap_or(0.0) * 100.0
        );
        measured.push(r);
    }
    let fp = record(&["--frame-pointers-only"])?;
    let last = measured.last().map(|r| &r.summary);
    let object_bytes = |wanted: &dyn Fn(&str) -> bool| -> Option<f64> {
        let objects = last?.get("unwind_objects")?.as_array()?;
        Some(
            objects
                .iter()
                .filter(|o| {
                    o.get("path")
                        .and_then(Value::as_str)
                        .and_then(|p| Path::new(p).file_name()?.to_str())
                        .is_some_and(wanted)
                })
                .filter_map(|o| o.get("bytes")?.as_f64())
                .sum(),
        )
    };
    let frames = median(measured.iter().filter_map(|r| r.frames));
    Ok(vec![
        Figure {
            name: format!(
                "kernel ns per sample, mixed .NET/Go/C stacks (~{:.0} frames), {FREQ} Hz",
                frames.unwrap_or(0.0)
            ),
            measured: median(measured.iter().filter_map(|r| r.ns_per_sample)),
            unit: Unit::Ns,
            goal: Goal::AtMost(5000.0),
        },
        Figure {
            name: "mixed stacks complete (reach _start / a thread root)".into(),
            measured: median(measured.iter().filter_map(|r| r.complete)),
            unit: Unit::Share,
            goal: Goal::AtLeast(0.95),
        },
        Figure {
            name: "  frame-pointer baseline measured in the same runs".into(),
            measured: median(measured.iter().filter_map(|r| {
                r.summary
                    .pointer("/frame_pointer_baseline/stacks_complete")
                    .and_then(Value::as_f64)
            })),
            unit: Unit::Share,
            goal: Goal::Info,
        },
        Figure {
            name: "  the same program run with --frame-pointers-only".into(),
            measured: fp.complete,
            unit: Unit::Share,
            goal: Goal::Info,
        },
        Figure {
            name: "unwind table memory: libc + libcoreclr + Go library".into(),
            measured: object_bytes(&|name| {
                name.starts_with("libc.so") || name == "libcoreclr.so" || name == "libcgo.so"
            }),
            unit: Unit::MiB,
            goal: Goal::Info,
        },
        Figure {
            name: "unwind table memory: every object of the .NET process".into(),
            measured: object_bytes(&|_| true),
            unit: Unit::MiB,
            goal: Goal::Info,
        },
    ])
}

/// `[cgo]`, `[P/Invoke]`: transition markers, not frames walked.
fn is_marker(frame: &str) -> bool {
    matches!(frame, "[cgo]" | "[P/Invoke]")
}
