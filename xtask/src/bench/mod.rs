//! `cargo xtask bench`: what crossprof costs the program it profiles and the machine.
//!
//! The native workload is tests/fixtures/bench/cpu_bound.c: a fixed amount of CPU
//! work that prints its own work time (CLOCK_MONOTONIC around the work only). Rounds alternate
//! plain runs and runs under `crossprof record --freq F` (F = 99 and 999 Hz, in a
//! rotating order), and each figure is a median over the rounds:
//!
//! - slowdown = median(work time under crossprof) / median(plain work time) - 1;
//! - kernel program cost = run_time_ns / run_count from summary.json, with
//!   `kernel.bpf_stats_enabled=1` for the whole bench (restored afterwards; the stats
//!   cost two clock reads per program run). run_count counts every firing of the perf
//!   event on every CPU, including the ones the pid filter drops;
//! - collector CPU-seconds per wall-second and peak RSS (summary.json `collector`);
//! - samples received / expected, expected = F x the fixture's work seconds;
//! - samples lost (summary.json `lost`);
//! - start to recording (summary.json `startup_ms`), stop to finished SVG
//!   (`stop_to_svg_ms`).
//!
//! The .NET figures come from [`dotnet`], the Go ones from [`go`], the mixed
//! .NET/Go/C stacks' from [`mixed`], the off-CPU ones from [`offcpu`], request
//! attribution's from [`http`], the always-on agent's from [`agent`], the
//! programs' verification on this kernel and on Debian 12's from [`load`].
//!
//! Prints `figure | measured | goal | ok?` and writes target/bench/bench.json.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::{build_c, read_summary, target_dir};
use serde_json::{Value, json};

use crate::{build, cmd, say};

mod agent;
mod dotnet;
mod go;
mod http;
mod load;
mod mixed;
mod offcpu;

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each kind: without crossprof, under crossprof at 99 Hz, at 999 Hz.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Exit non-zero when a figure misses its goal.
    #[arg(long)]
    strict: bool,
    /// Only this part's figures (for working on one): core (the CPU-bound
    /// fixture's rounds and the collector's 20 s run), dotnet, go, mixed,
    /// offcpu, http, agent or load.
    #[arg(long, value_parser = ["core", "dotnet", "go", "mixed", "offcpu", "http", "agent", "load"])]
    only: Option<String>,
    /// The .NET runtime of the dotnet part: 8 (its figures' reference), 9 or 10.
    #[arg(long, default_value = "8", value_parser = ["8", "9", "10"])]
    dotnet: String,
}

/// The sampling frequencies measured; the first is crossprof's default.
const FREQS: [u64; 2] = [99, 999];

const FIXTURE: &str = "bench/cpu_bound.c";
/// Rounds of the fixture's work for the long run (850 rounds, its default, is ~1.5 s).
const LONG_RUN_ROUNDS: u32 = 850 * 13;
const FIXTURE_FLAGS: &[&str] = &["-O2", "-fno-omit-frame-pointer"];

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask bench` must run as root: crossprof loads eBPF programs and the \
             bench sets kernel.bpf_stats_enabled"
        );
    }
    build::run()?;
    let start = Instant::now();
    let fixture = build_c(FIXTURE, FIXTURE_FLAGS);
    let crossprof = target_dir().join("release/crossprof");
    let bench_dir = target_dir().join("bench");
    fs::create_dir_all(&bench_dir)
        .with_context(|| format!("cannot create {}", bench_dir.display()))?;
    catch_sigint();
    let _stats = BpfStats::enable()?;
    let core_only = args.only.as_deref() == Some("core");
    if let Some(part) = args.only.as_ref().filter(|_| !core_only) {
        let figures = match part.as_str() {
            "dotnet" => dotnet::figures(args.runs, &args.dotnet, &crossprof, &bench_dir)?,
            "go" => go::figures(args.runs, &crossprof, &bench_dir)?,
            "mixed" => mixed::figures(args.runs, &crossprof, &bench_dir)?,
            "offcpu" => offcpu::figures(args.runs, &crossprof, &bench_dir)?,
            "agent" => agent::figures(args.runs, &crossprof, &bench_dir)?,
            "load" => load::figures(&crossprof, true)?,
            _ => http::figures(args.runs, &crossprof, &bench_dir)?,
        };
        println!();
        print!("{}", table(&figures));
        return Ok(());
    }

    let bench = Bench {
        fixture: &fixture,
        crossprof: &crossprof,
        bench_dir: &bench_dir,
    };
    say!("bench: warming up (one run of each kind, not counted)...");
    bench.plain()?;
    for freq in FREQS {
        bench.profiled(freq)?;
    }

    let runs = args.runs as usize;
    let mut plain = Vec::with_capacity(runs);
    let mut profiled: Vec<Vec<Profiled>> = FREQS.iter().map(|_| Vec::new()).collect();
    say!(
        "bench: {runs} rounds of {} (plain, {}), in rotating order",
        fixture.display(),
        FREQS.map(|f| format!("{f} Hz")).join(", ")
    );
    for round in 0..runs {
        let mut line = format!("round {:>2}/{runs}:", round + 1);
        // Kind 0 is plain, kind i+1 is FREQS[i]; rotate who goes first.
        for k in 0..=FREQS.len() {
            let kind = (k + round) % (FREQS.len() + 1);
            if kind == 0 {
                let ns = bench.plain()?;
                write!(line, "  plain {:.3} s", ns as f64 / 1e9)?;
                plain.push(ns);
            } else {
                let freq = FREQS[kind - 1];
                let run = bench.profiled(freq)?;
                write!(line, "  {freq} Hz {:.3} s", run.work_ns as f64 / 1e9)?;
                profiled[kind - 1].push(run);
            }
        }
        say!("{line}");
    }

    // The collector's cost is a per-wall-second figure: over a 1.5 s run its one-time
    // costs (start-up, loading kallsyms, parsing each binary once) dominate, so it is
    // measured on one long run at the default frequency, everything included.
    say!(
        "bench: one {LONG_RUN_ROUNDS}-round run (~20 s) at {} Hz for the collector's cost...",
        FREQS[0]
    );
    let long = bench.profiled_rounds(FREQS[0], Some(LONG_RUN_ROUNDS))?;

    let mut parts = Vec::new();
    if !core_only {
        parts.extend(dotnet::figures(
            args.runs,
            &args.dotnet,
            &crossprof,
            &bench_dir,
        )?);
        parts.extend(go::figures(args.runs, &crossprof, &bench_dir)?);
        parts.extend(mixed::figures(args.runs, &crossprof, &bench_dir)?);
        parts.extend(offcpu::figures(args.runs, &crossprof, &bench_dir)?);
        parts.extend(http::figures(args.runs, &crossprof, &bench_dir)?);
        parts.extend(agent::figures(args.runs, &crossprof, &bench_dir)?);
        parts.extend(load::figures(&crossprof, true)?);
    }

    let mut missing = Vec::new();
    let mut figures = figures(&plain, &profiled, &mut missing);
    let long_cpu = long
        .summary
        .pointer("/collector/cpu_seconds")
        .and_then(Value::as_f64);
    let long_wall = long
        .summary
        .pointer("/duration_secs")
        .and_then(Value::as_f64);
    figures.insert(
        4,
        Figure {
            name: format!("collector CPU per wall second, 20 s at {} Hz", FREQS[0]),
            measured: long_cpu.zip(long_wall).map(|(c, w)| c / w),
            unit: Unit::CorePercent,
            goal: Goal::AtMost(0.01),
        },
    );
    figures.insert(
        5,
        Figure {
            name: format!("collector peak RSS, 20 s at {} Hz", FREQS[0]),
            measured: long
                .summary
                .pointer("/collector/peak_rss_bytes")
                .and_then(Value::as_f64),
            unit: Unit::MiB,
            goal: Goal::AtMost(64.0 * MIB),
        },
    );
    figures.extend(parts);
    println!();
    print!("{}", table(&figures));
    let met = figures.iter().filter(|f| f.ok() == Some(true)).count();
    let judged = figures.iter().filter(|f| f.ok().is_some()).count();
    println!();
    say!(
        "bench: {met} of {judged} goals met ({runs} runs of each kind, {:.0} s); \
         kernel.bpf_stats_enabled was 1 during every run",
        start.elapsed().as_secs_f64()
    );
    for m in &missing {
        say!("bench: summary.json lacks {m} (see the contract): figures from it are n/a");
    }

    let report = json!({
        "runs": runs,
        "fixture": fixture,
        "plain_work_ns": plain,
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "profiled": FREQS.iter().zip(&profiled).map(|(freq, runs)| json!({
            "frequency_hz": freq,
            "work_ns": runs.iter().map(|r| r.work_ns).collect::<Vec<_>>(),
            "summaries": runs.iter().map(|r| &r.summary).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "missing_summary_fields": missing,
    });
    let json_path = bench_dir.join("bench.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    say!("bench: wrote {}", json_path.display());
    if args.strict && met < judged {
        bail!("{} figure(s) missed their goal", judged - met);
    }
    Ok(())
}

struct Bench<'a> {
    fixture: &'a Path,
    crossprof: &'a Path,
    bench_dir: &'a Path,
}

/// One run under crossprof.
struct Profiled {
    work_ns: u64,
    summary: Value,
}

impl Bench<'_> {
    /// Runs the fixture alone; returns its work time.
    fn plain(&self) -> Result<u64> {
        let out = cmd::output(&mut Command::new(self.fixture))?;
        check_interrupted()?;
        work_ns(&out)
    }

    /// Runs the fixture under `crossprof record --freq freq`.
    fn profiled(&self, freq: u64) -> Result<Profiled> {
        self.profiled_rounds(freq, None)
    }

    /// Runs the fixture under `crossprof record --freq freq`, with `rounds` of work
    /// instead of the fixture's default.
    fn profiled_rounds(&self, freq: u64, rounds: Option<u32>) -> Result<Profiled> {
        let out_dir = self.bench_dir.join(format!("run-{freq}hz"));
        let out = cmd::output(
            Command::new(self.crossprof)
                .args(["record", "--quiet", "--freq", &freq.to_string(), "-o"])
                .arg(&out_dir)
                .arg("--")
                .arg(self.fixture)
                .args(rounds.map(|r| r.to_string())),
        )?;
        check_interrupted()?;
        Ok(Profiled {
            work_ns: work_ns(&out)?,
            summary: read_summary(&out_dir),
        })
    }
}

/// The fixture's `work_ns=N`.
fn work_ns(stdout: &str) -> Result<u64> {
    printed(stdout, "work_ns")
}

/// The `KEY=N` a fixture printed.
fn printed(stdout: &str, key: &str) -> Result<u64> {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key}=N in the fixture's output: {stdout:?}"))
}

fn figures(plain: &[u64], profiled: &[Vec<Profiled>], missing: &mut Vec<String>) -> Vec<Figure> {
    let plain_median = median(plain.iter().map(|&n| n as f64));
    let mut figures = Vec::new();
    let mut field = |runs: &[Profiled], pointer: &str| -> Vec<f64> {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.summary.pointer(pointer)?.as_f64())
            .collect();
        if values.len() < runs.len() && !missing.iter().any(|m| m == pointer) {
            missing.push(pointer.to_owned());
        }
        values
    };

    for (&freq, runs) in FREQS.iter().zip(profiled) {
        let goal = if freq <= 99 { 0.01 } else { 0.03 };
        figures.push(Figure {
            name: format!("slowdown at {freq} Hz"),
            measured: median(runs.iter().map(|r| r.work_ns as f64))
                .zip(plain_median)
                .map(|(with, without)| with / without - 1.0),
            unit: Unit::Percent,
            goal: Goal::AtMost(goal),
        });
    }
    for (&freq, runs) in FREQS.iter().zip(profiled) {
        let time: f64 = field(runs, "/kernel_program/run_time_ns").iter().sum();
        let count: f64 = field(runs, "/kernel_program/run_count").iter().sum();
        figures.push(Figure {
            name: format!("kernel program ns per run at {freq} Hz"),
            measured: (count > 0.0).then(|| time / count),
            unit: Unit::Ns,
            goal: Goal::AtMost(3000.0),
        });
    }
    for (&freq, runs) in FREQS.iter().zip(profiled) {
        let cpu = field(runs, "/collector/recording_cpu_seconds");
        let wall = field(runs, "/duration_secs");
        let per_wall = (cpu.len() == wall.len())
            .then(|| median(cpu.iter().zip(&wall).map(|(c, w)| c / w)))
            .flatten();
        // The goals are judged on the long run; these are for information: the
        // collector's CPU while recording only (start-up and output excluded).
        figures.push(Figure {
            name: format!("collector CPU while recording, {freq} Hz"),
            measured: per_wall,
            unit: Unit::CorePercent,
            goal: Goal::Info,
        });
        figures.push(Figure {
            name: format!("collector peak RSS, 1.5 s at {freq} Hz"),
            measured: median(field(runs, "/collector/peak_rss_bytes").into_iter()),
            unit: Unit::MiB,
            goal: Goal::Info,
        });
    }
    for (&freq, runs) in FREQS.iter().zip(profiled) {
        field(runs, "/samples"); // notes a missing field
        let ratios = runs.iter().filter_map(|r| {
            let samples = r.summary.pointer("/samples")?.as_f64()?;
            Some(samples / (freq as f64 * r.work_ns as f64 / 1e9))
        });
        figures.push(Figure {
            name: format!("samples received / expected at {freq} Hz"),
            measured: median(ratios),
            unit: Unit::Ratio,
            goal: Goal::Between(0.95, 1.05),
        });
    }
    for (&freq, runs) in FREQS.iter().zip(profiled) {
        let lost = field(runs, "/lost");
        figures.push(Figure {
            name: format!("samples lost at {freq} Hz (all runs)"),
            measured: (!lost.is_empty()).then(|| lost.iter().sum()),
            unit: Unit::Count,
            goal: Goal::AtMost(0.0),
        });
    }
    figures.push(Figure {
        name: format!(
            "start to recording (programs loaded and attached, command started), {} Hz",
            FREQS[0]
        ),
        measured: median(field(&profiled[0], "/startup_ms").into_iter()),
        unit: Unit::Ms,
        goal: Goal::AtMost(300.0),
    });
    figures.push(Figure {
        name: format!(
            "of which verification CPU (the run's own loads: a native program, no runtime walks), {} Hz",
            FREQS[0]
        ),
        measured: median(field(&profiled[0], "/kernel_load/verify_cpu_ms").into_iter()),
        unit: Unit::Ms,
        goal: Goal::Info,
    });
    for (&freq, runs) in FREQS.iter().zip(profiled) {
        figures.push(Figure {
            name: format!("stop to finished SVG at {freq} Hz"),
            measured: median(field(runs, "/stop_to_svg_ms").into_iter()),
            unit: Unit::Ms,
            goal: Goal::AtMost(1000.0),
        });
    }
    figures
}

/// The median, or None without values.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[derive(Clone, Copy)]
enum Unit {
    /// A fraction shown as a signed percentage.
    Percent,
    /// A share (0..1) shown as a percentage.
    Share,
    /// A fraction of one core shown as a percentage.
    CorePercent,
    Ns,
    Ms,
    MiB,
    KiB,
    Ratio,
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{:+.2}%", v * 100.0),
            Unit::Share => format!("{:.1}%", v * 100.0),
            Unit::CorePercent => format!("{:.2}% of a core", v * 100.0),
            Unit::Ns => format!("{v:.0} ns"),
            Unit::Ms => format!("{v:.0} ms"),
            Unit::MiB => format!("{:.1} MiB", v / MIB),
            Unit::KiB => format!("{:.1} KiB", v / 1024.0),
            Unit::Ratio => format!("{v:.3}"),
            Unit::Count => format!("{v:.0}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Percent | Unit::Share => "fraction",
            Unit::CorePercent => "cores",
            Unit::Ns => "ns",
            Unit::Ms => "ms",
            Unit::MiB | Unit::KiB => "bytes",
            Unit::Ratio => "ratio",
            Unit::Count => "count",
        }
    }
}

enum Goal {
    AtMost(f64),
    AtLeast(f64),
    Between(f64, f64),
    /// Reported for information, no goal.
    Info,
}

struct Figure {
    name: String,
    /// None when crossprof did not report what it needs.
    measured: Option<f64>,
    unit: Unit,
    goal: Goal,
}

impl Figure {
    fn ok(&self) -> Option<bool> {
        let v = self.measured;
        match self.goal {
            Goal::AtMost(max) => Some(v.is_some_and(|v| v <= max)),
            Goal::AtLeast(min) => Some(v.is_some_and(|v| v >= min)),
            Goal::Between(lo, hi) => Some(v.is_some_and(|v| (lo..=hi).contains(&v))),
            Goal::Info => None,
        }
    }

    fn measured_text(&self) -> String {
        self.measured
            .map_or_else(|| "n/a".to_owned(), |v| self.unit.show(v))
    }

    fn goal_text(&self) -> String {
        let show = |v: f64| match self.unit {
            // Goals read better without a sign.
            Unit::Percent | Unit::Share if (v * 100.0).fract() == 0.0 => {
                format!("{:.0}%", v * 100.0)
            }
            Unit::Percent | Unit::Share => format!("{:.1}%", v * 100.0),
            Unit::MiB => format!("{:.0} MiB", v / MIB),
            unit => unit.show(v),
        };
        match self.goal {
            Goal::AtMost(max) => format!("<= {}", show(max)),
            Goal::AtLeast(min) => format!(">= {}", show(min)),
            Goal::Between(lo, hi) => format!("{} .. {}", show(lo), show(hi)),
            Goal::Info => "(info)".to_owned(),
        }
    }

    fn ok_text(&self) -> &'static str {
        match self.ok() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        }
    }

    fn to_json(&self) -> Value {
        let (max, min) = match self.goal {
            Goal::AtMost(max) => (Some(max), None),
            Goal::AtLeast(min) => (None, Some(min)),
            Goal::Between(lo, hi) => (Some(hi), Some(lo)),
            Goal::Info => (None, None),
        };
        json!({
            "figure": self.name,
            "measured": self.measured,
            "unit": self.unit.name(),
            "goal_min": min,
            "goal_max": max,
            "text": { "measured": self.measured_text(), "goal": self.goal_text() },
            "ok": self.ok(),
        })
    }
}

fn table(figures: &[Figure]) -> String {
    let header = ["figure", "measured", "goal", "ok?"];
    let rows: Vec<[String; 4]> = figures
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                f.measured_text(),
                f.goal_text(),
                f.ok_text().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: [&str; 4]| {
        let line = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ");
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(header);
    let rule = widths.map(|w| "-".repeat(w));
    push_row([&rule[0], &rule[1], &rule[2], &rule[3]]);
    for row in &rows {
        push_row([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}

/// Sets `kernel.bpf_stats_enabled=1` and restores the old value when dropped (also
/// after an error or Ctrl-C: the bench then stops at the end of the current run).
struct BpfStats {
    old: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?
            .trim()
            .to_owned();
        if old != "1" {
            say!("bench: setting kernel.bpf_stats_enabled=1 (was {old}; restored at the end)");
            fs::write(BPF_STATS, "1").with_context(|| format!("cannot write 1 to {BPF_STATS}"))?;
        }
        Ok(BpfStats { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if self.old != "1"
            && let Err(e) = fs::write(BPF_STATS, &self.old)
        {
            eprintln!(
                "xtask: warning: cannot restore {BPF_STATS} to {}: {e}",
                self.old
            );
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C reaches the running child too (same process group); the bench notices after
/// that run and stops through the normal error path, so that [`BpfStats`] is restored.
fn catch_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn reads_the_fixture_output() {
        let out = "cpu_bound: work_ns=1500000000 rounds=850 hash=00\n";
        assert_eq!(work_ns(out).unwrap(), 1_500_000_000);
        assert!(work_ns("nothing").is_err());
    }

    #[test]
    fn judges_goals() {
        let fig = |measured, goal| Figure {
            name: String::new(),
            measured,
            unit: Unit::Ratio,
            goal,
        };
        assert_eq!(fig(Some(0.5), Goal::AtMost(1.0)).ok(), Some(true));
        assert_eq!(fig(Some(1.5), Goal::AtMost(1.0)).ok(), Some(false));
        assert_eq!(fig(None, Goal::AtMost(1.0)).ok(), Some(false));
        assert_eq!(fig(Some(1.0), Goal::Between(0.95, 1.05)).ok(), Some(true));
        assert_eq!(fig(Some(1.0), Goal::Info).ok(), None);
    }
}
