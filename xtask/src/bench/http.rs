//! Request-attribution figures (issue #6): what `--group-by trace` costs an
//! HTTP server under load. The seed case's Go server
//! (`tests/fixtures/go/seed_server.go`) serves its own load generator
//! (`seed_server load`, a separate process: 8 kept-alive connections, each
//! request with a `traceparent`, for 3 s), alternately unobserved and with
//! `crossprof record --group-by trace --pid SERVER` attached; a figure is the
//! median requests per second of each kind. Two handlers:
//!
//! - `/fast`, 1 ms of CPU per request (the goal's figure: a service doing
//!   some work per request);
//! - `/hello`, an empty handler: nothing but the HTTP exchange, ~50k requests
//!   a second on the 2-core VM, the worst case for a per-request cost.
//!
//! The attribution program (`raw_syscalls:sys_exit`) runs at every system
//! call's exit on the machine, the load generator's included: the figures carry
//! that cost too, and the kernel's per-call cost is printed beside them.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::{Go, GoBuild, read_summary, wait_for_link};

use super::{Figure, Goal, Unit, check_interrupted, median};
use crate::{cmd, say};

/// Connections of the load generator.
const CONNS: &str = "8";
/// Seconds of load per run.
const LOAD_SECS: f64 = 3.0;
/// How long crossprof may take to load and attach.
const ATTACH: Duration = Duration::from_secs(10);

/// The server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn figures(runs: u32, crossprof: &Path, bench_dir: &Path) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (path, goal) in [("/fast", Goal::AtMost(0.05)), ("/hello", Goal::Info)] {
        figures.extend(load_figures(runs, crossprof, bench_dir, path, goal)?);
    }
    Ok(figures)
}

fn load_figures(
    runs: u32,
    crossprof: &Path,
    bench_dir: &Path,
    path: &str,
    goal: Goal,
) -> Result<Vec<Figure>> {
    let bin = Go::Go127.fixture("seed_server", GoBuild::Normal);
    let mut child = Command::new(&bin)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the server's stdout")?).read_line(&mut line)?;
    let server = Server(child);
    let Some(addr) = line.trim().strip_prefix("listening http://") else {
        bail!("seed_server said {line:?}");
    };
    let out_dir = bench_dir.join("run-http");
    let load = || -> Result<f64> {
        let out = cmd::output(Command::new(&bin).args([
            "load",
            addr,
            path,
            CONNS,
            &LOAD_SECS.to_string(),
        ]))?;
        out.split_whitespace()
            .skip_while(|w| *w != "rps")
            .nth(1)
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("the load generator said {out:?}"))
    };
    // Requests per second, and with crossprof: requests traced, kernel ns per
    // call of the program.
    let run = |traced: bool| -> Result<(f64, Option<f64>, Option<f64>)> {
        if !traced {
            return Ok((load()?, None, None));
        }
        let mut prof = Command::new(crossprof)
            .args(["record", "--quiet", "--group-by", "trace", "--pid"])
            .arg(server.0.id().to_string())
            .args(["--duration", &(LOAD_SECS + 3.0).to_string(), "-o"])
            .arg(&out_dir)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start crossprof")?;
        // Attached once its raw tracepoint link exists (the CPU sampler's
        // follow within a millisecond).
        wait_for_link(prof.id(), "raw_tracepoint", ATTACH);
        let rps = load();
        let status = prof.wait()?;
        let rps = rps?;
        if !status.success() {
            bail!("crossprof record --group-by trace failed: {status}");
        }
        let summary = read_summary(&out_dir);
        let number = |p: &str| summary.pointer(p).and_then(serde_json::Value::as_f64);
        let per_call = number("/http_program/run_time_ns")
            .zip(number("/http_program/run_count"))
            .map(|(ns, n)| ns / n);
        Ok((rps, number("/http_requests/traced"), per_call))
    };
    say!("bench: HTTP attribution, {path}: warming up (one run of each kind, not counted)...");
    run(false)?;
    run(true)?;
    let (mut plain, mut traced, mut followed, mut per_call) = (vec![], vec![], vec![], vec![]);
    for round in 0..runs as usize {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let (rps, requests, ns) = run(with)?;
            check_interrupted()?;
            if with {
                traced.push(rps);
                followed.extend(requests);
                per_call.extend(ns);
            } else {
                plain.push(rps);
            }
        }
        say!(
            "round {:>2}/{runs}: HTTP load {path} plain {:.0} req/s  --group-by trace {:.0} req/s",
            round + 1,
            plain[round],
            traced[round]
        );
    }
    let slowdown = median(plain.iter().copied())
        .zip(median(traced.iter().copied()))
        .map(|(p, t)| 1.0 - t / p);
    Ok(vec![
        Figure {
            name: format!("HTTP load slowdown (req/s), {path} handler, --group-by trace"),
            measured: slowdown,
            unit: Unit::Percent,
            goal,
        },
        Figure {
            name: format!("  {path}: requests per second, unobserved"),
            measured: median(plain.iter().copied()),
            unit: Unit::Count,
            goal: Goal::Info,
        },
        Figure {
            name: format!("  {path}: traced requests followed per run"),
            measured: median(followed.iter().copied()),
            unit: Unit::Count,
            goal: Goal::Info,
        },
        Figure {
            name: format!("  {path}: kernel ns per system call exit (all processes)"),
            measured: median(per_call.iter().copied()),
            unit: Unit::Ns,
            goal: Goal::Info,
        },
    ])
}
