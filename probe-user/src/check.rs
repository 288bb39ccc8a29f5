//! `crossprof check`: what this kernel offers crossprof and which modes run
//! here; with `--load`, what the verifier makes of each program (instructions
//! it processed, stack, CPU time of the load). Nothing is attached.

use std::io::Write as _;

use serde::Serialize;

use crate::{
    cli::CheckArgs,
    error::Error,
    kernel::{Feature, Kernel, stack},
    preflight,
    sampler::{self, SamplerError},
};

/// The report, as `--json` writes it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub release: String,
    /// Each feature: does the kernel have it, and was that probed or read
    /// from the version.
    pub features: Vec<FeatureRow>,
    /// The modes that run here.
    pub modes: Vec<String>,
    /// With `--load`: each program.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramRow>,
}

/// One feature.
#[derive(Debug, Serialize)]
pub struct FeatureRow {
    /// Its key (`CROSSPROF_ASSUME_MISSING` takes them).
    pub key: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The mainline kernel that brought it.
    pub since: String,
    /// Does this kernel have it.
    pub has: bool,
    /// Asked of the kernel (else told by its version).
    pub probed: bool,
}

/// One program.
#[derive(Debug, Serialize)]
pub struct ProgramRow {
    /// Its name.
    pub name: &'static str,
    /// Instructions the verifier processed (Linux 5.16+).
    pub verified_insns: Option<u32>,
    /// Its deepest call chain's stack, as the verifier counts it (read from
    /// the object: frames rounded to 32 bytes; the limit is 512).
    pub stack: Option<u32>,
    /// CPU time of its load, ms.
    pub cpu_ms: Option<f64>,
    /// Wall time of its load, ms.
    pub wall_ms: Option<f64>,
    /// Why the kernel refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Runs `crossprof check`: exit 0, or 2 if a program was refused.
pub fn check(args: &CheckArgs) -> Result<i32, Error> {
    preflight::check_privileges()?;
    let kernel = Kernel::probe(&preflight::btf_path());
    let mut report = Report {
        release: kernel.release.clone(),
        features: Feature::ALL
            .iter()
            .map(|&f| FeatureRow {
                key: f.key(),
                name: f.name(),
                since: f.since().to_string(),
                has: kernel.has(f),
                probed: kernel.probed.contains_key(&f),
            })
            .collect(),
        modes: kernel.modes_that_work(),
        programs: Vec::new(),
    };
    let mut refused = false;
    if args.load {
        let stacks = stack::program_stacks(sampler::PROBE_OBJECT).unwrap_or_default();
        for (name, result) in sampler::load_each(&sampler::ALL_PROGRAMS)? {
            let stack = stacks.iter().find(|s| s.name == name).map(|s| s.combined);
            let row = match result {
                Ok(f) => ProgramRow {
                    name,
                    verified_insns: f.verified_insns,
                    stack,
                    cpu_ms: Some(f.cpu_ns as f64 / 1e6),
                    wall_ms: Some(f.wall_ns as f64 / 1e6),
                    refused: None,
                },
                Err(e) => {
                    refused = true;
                    let why = match &e {
                        SamplerError::Refused { cause, log, .. } => {
                            format!("{cause} (whole log: {log})")
                        }
                        other => other.to_string(),
                    };
                    ProgramRow {
                        name,
                        verified_insns: None,
                        stack,
                        cpu_ms: None,
                        wall_ms: None,
                        refused: Some(why),
                    }
                }
            };
            report.programs.push(row);
        }
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&report, &mut out)
    };
    written.map_err(|source| Error::Write {
        path: "stdout".into(),
        source,
    })?;
    Ok(if refused { 2 } else { 0 })
}

fn write_text(r: &Report, w: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(w, "kernel {}", r.release)?;
    for f in &r.features {
        writeln!(
            w,
            "  {:<4} {:<42} Linux {:<5} ({})",
            if f.has { "yes" } else { "NO" },
            f.name,
            f.since,
            if f.probed { "probed" } else { "by version" }
        )?;
    }
    if r.modes.is_empty() {
        writeln!(w, "runs here: nothing")?;
    } else {
        writeln!(w, "runs here: {}", r.modes.join(", "))?;
    }
    if r.programs.is_empty() {
        return Ok(());
    }
    writeln!(
        w,
        "{:<18} {:>14} {:>6} {:>12}",
        "PROGRAM", "VERIFIED INSNS", "STACK", "LOAD CPU ms"
    )?;
    let mut total = 0.0;
    for p in &r.programs {
        let insns = p.verified_insns.map_or("-".into(), |n| n.to_string());
        let stack = p.stack.map_or("-".into(), |n| n.to_string());
        match (&p.refused, p.cpu_ms) {
            (Some(why), _) => writeln!(w, "{:<18} {insns:>14} {stack:>6}  refused: {why}", p.name)?,
            (None, Some(ms)) => {
                total += ms;
                writeln!(w, "{:<18} {insns:>14} {stack:>6} {ms:>12.1}", p.name)?;
            }
            (None, None) => writeln!(w, "{:<18} {insns:>14} {stack:>6}", p.name)?,
        }
    }
    writeln!(w, "{:<18} {:>14} {:>6} {total:>12.1}", "total", "", "")
}
