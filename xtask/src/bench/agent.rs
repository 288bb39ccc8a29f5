//! Always-on figures (issue #7): what `crossprof agent` costs, profiling the
//! whole host while fixtures run.
//!
//! - Agent CPU-seconds per wall-second and peak RSS (`VmHWM`), at 19 Hz (its
//!   default) and 99 Hz: the agent runs [`AGENT_SECS`] with 10-second windows
//!   while a C, a Go and a .NET fixture burn the CPU (3 busy threads on the 2
//!   cores); its CPU time is read from `/proc/PID/stat` between the end of
//!   start-up (the first window) and the end, so the one-time start-up
//!   (loading programs, kallsyms, first symbolization) is left out, as for an
//!   agent that runs for days.
//! - Workload slowdown at 19 Hz: `tests/fixtures/bench/cpu_bound.c`'s work time
//!   with the agent running against without, rounds alternating, medians.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use crossprof_tests::{Dotnet, Go, GoBuild, build_c, http};

use super::{FIXTURE, FIXTURE_FLAGS, Figure, Goal, MIB, Unit, check_interrupted, median, work_ns};
use crate::{cmd, say};

/// How long the agent runs per frequency (the first 10 s excluded).
const AGENT_SECS: u64 = 50;
/// Published claims the README puts beside these figures.
const OTEL_CPU: f64 = 0.01;

/// A child killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Result<Kill> {
    Ok(Kill(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", cmd::line(cmd)))?,
    ))
}

/// Starts the agent at `freq` Hz on a free port; returns it and its address
/// once it serves.
fn start_agent(crossprof: &Path, dir: &Path, freq: u64) -> Result<(Kill, String)> {
    let _ = std::fs::remove_dir_all(dir);
    let addr = format!("127.0.0.1:{}", http::free_port());
    let agent = spawn(
        Command::new(crossprof)
            .args([
                "agent",
                "--window",
                "10s",
                "--freq",
                &freq.to_string(),
                "--dir",
            ])
            .arg(dir)
            .args(["--listen", &addr]),
    )?;
    let start = Instant::now();
    while http::get(&addr, "/api/windows", &[]).is_none() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((agent, addr))
}

/// (user + system CPU seconds, peak RSS bytes) of process `pid`.
fn usage(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    Ok((ticks / hz, hwm_kib * 1024.0))
}

pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let dir = bench_dir.join("agent");
    let c = build_c("native/chain.c", &["-O0", "-g", "-fno-omit-frame-pointer"]);
    let go = Go::Go123.fixture("chain", GoBuild::Normal);
    let dll = Dotnet::Net8.fixture("chain");
    let secs = (AGENT_SECS + 30).to_string();
    let mut figures = Vec::new();
    for freq in [19, 99] {
        say!(
            "bench: agent: {AGENT_SECS} s at {freq} Hz over the whole host, C, Go and .NET fixtures busy..."
        );
        let _work = [
            spawn(Command::new(&c).arg(&secs))?,
            spawn(Command::new(&go).arg(&secs))?,
            spawn(&mut Dotnet::Net8.command(&dll, &[&secs]))?,
        ];
        let (agent, _addr) = start_agent(crossprof, &dir, freq)?;
        let pid = agent.0.id();
        std::thread::sleep(Duration::from_secs(10));
        let (cpu0, _) = usage(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(AGENT_SECS - 10));
        check_interrupted()?;
        let (cpu1, peak) = usage(pid)?;
        let per_wall = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
        say!(
            "bench: agent at {freq} Hz: {:.3}% of a core, peak RSS {:.1} MiB",
            per_wall * 100.0,
            peak / MIB
        );
        let default = freq == 19;
        figures.push(Figure {
            name: format!(
                "agent CPU per wall second, whole host at {freq} Hz (OTel: 1%, Parca: <1%)"
            ),
            measured: Some(per_wall),
            unit: Unit::CorePercent,
            goal: if default {
                Goal::AtMost(0.005)
            } else {
                Goal::AtMost(OTEL_CPU)
            },
        });
        figures.push(Figure {
            name: format!("agent peak RSS at {freq} Hz (OTel: 250 MB, Parca: 200 MB)"),
            measured: Some(peak),
            unit: Unit::MiB,
            goal: if default {
                Goal::AtMost(64.0 * MIB)
            } else {
                Goal::Info
            },
        });
    }

    // Slowdown: the same fixed work with and without the agent running.
    let fixture = build_c(FIXTURE, FIXTURE_FLAGS);
    let work = || -> Result<f64> {
        let out = cmd::output(&mut Command::new(&fixture))?;
        check_interrupted()?;
        Ok(work_ns(&out)? as f64)
    };
    say!(
        "bench: agent: slowdown at 19 Hz, {runs} rounds of {} with and without the agent...",
        fixture.display()
    );
    let (mut plain, mut under) = (Vec::new(), Vec::new());
    work()?; // warm-up
    for round in 0..runs {
        let agent_first = round % 2 == 0;
        for with_agent in [agent_first, !agent_first] {
            if with_agent {
                let (_agent, _) = start_agent(crossprof, &dir, 19)?;
                std::thread::sleep(Duration::from_secs(2)); // past its start-up
                under.push(work()?);
            } else {
                plain.push(work()?);
            }
        }
    }
    let slowdown = median(under.iter().copied())
        .zip(median(plain.iter().copied()))
        .map(|(u, p)| u / p - 1.0);
    figures.push(Figure {
        name: "workload slowdown under the agent at 19 Hz (cpu_bound, medians)".into(),
        measured: slowdown,
        unit: Unit::Percent,
        goal: Goal::AtMost(0.005),
    });
    Ok(figures)
}
