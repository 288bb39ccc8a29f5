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
//! - At 19 Hz the agent also exports every window (issue #22), OTLP and
//!   Pyroscope, to a sink on 127.0.0.1 that answers every request 200: the
//!   CPU and RSS goals hold with export on, and the bytes each destination
//!   was sent (as sent: gzipped) are printed per window and per hour.
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

/// An HTTP sink on 127.0.0.1 answering every request `200 OK` (keep-alive),
/// for the export figures; returns its port.
fn start_sink() -> Result<u16> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = conn.try_clone()?;
                let mut reader = BufReader::new(conn);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
                    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
                }
            });
        }
    });
    Ok(port)
}

/// Starts the agent at `freq` Hz on a free port; returns it and its address
/// once it serves.
fn start_agent(crossprof: &Path, dir: &Path, freq: u64) -> Result<(Kill, String)> {
    start_agent_with(crossprof, dir, freq, &[])
}

/// As [`start_agent`], with `extra` arguments.
fn start_agent_with(
    crossprof: &Path,
    dir: &Path,
    freq: u64,
    extra: &[String],
) -> Result<(Kill, String)> {
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
            .args(["--listen", &addr])
            .args(extra),
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
    let sink = start_sink()?;
    for freq in [19, 99] {
        say!(
            "bench: agent: {AGENT_SECS} s at {freq} Hz over the whole host, C, Go and .NET fixtures busy..."
        );
        let _work = [
            spawn(Command::new(&c).arg(&secs))?,
            spawn(Command::new(&go).arg(&secs))?,
            spawn(&mut Dotnet::Net8.command(&dll, &[&secs]))?,
        ];
        let default = freq == 19;
        // At the default frequency, with both exports on.
        let export = if default {
            vec![
                "--otlp-endpoint".to_owned(),
                format!("http://127.0.0.1:{sink}"),
                "--pyroscope-url".to_owned(),
                format!("http://127.0.0.1:{sink}"),
            ]
        } else {
            Vec::new()
        };
        let (agent, addr) = start_agent_with(crossprof, &dir, freq, &export)?;
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
        if default {
            let status = http::get(&addr, "/api/windows", &[])
                .context("the agent's status")?
                .json();
            for (key, name, unit) in [
                ("otlp", "OTLP", "window"),
                ("pyroscope", "Pyroscope", "process window"),
            ] {
                let s = &status["agent"][key];
                let (sent, bytes) = (
                    s["sent"].as_f64().unwrap_or(0.0),
                    s["bytes_sent"].as_f64().unwrap_or(0.0),
                );
                let windows = status["agent"]["windows"].as_f64().unwrap_or(0.0);
                say!(
                    "bench: agent {name} export: {sent} requests, {bytes} bytes over {windows} windows, last error {}",
                    s["last_error"]
                );
                figures.push(Figure {
                    name: format!(
                        "agent {name} export: bytes sent per 10 s window, whole host at 19 Hz, gzipped ({sent:.0} requests, one per {unit})"
                    ),
                    measured: (windows > 0.0).then(|| bytes / windows),
                    unit: Unit::KiB,
                    goal: Goal::Info,
                });
                figures.push(Figure {
                    name: format!("agent {name} export: bytes sent per hour (360 such windows)"),
                    measured: (windows > 0.0).then(|| bytes / windows * 360.0),
                    unit: Unit::MiB,
                    goal: Goal::Info,
                });
            }
        }
        figures.push(Figure {
            name: format!(
                "agent CPU per wall second, whole host at {freq} Hz{} (OTel: 1%, Parca: <1%)",
                if default {
                    ", OTLP and Pyroscope export on"
                } else {
                    ""
                }
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
            name: format!(
                "agent peak RSS at {freq} Hz{} (OTel: 250 MB, Parca: 200 MB)",
                if default { ", export on" } else { "" }
            ),
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
