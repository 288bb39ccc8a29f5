//! `cargo xtask fuzz [--secs N] [--seed S] [--coverage] [TARGET]`: every fuzz
//! target of the collector's parsers (`probe-user/src/fuzz.rs`) for N seconds
//! each.
//!
//! - By default, the mutation driver of the unit tests, on the stable
//!   toolchain (what CI runs): a panic or a slow input fails, naming the
//!   input it saved under `target/fuzz/crashes/`.
//! - `--coverage`: the same targets under libFuzzer (`cargo fuzz`, nightly,
//!   the harnesses in `fuzz/`), coverage-guided, from the unit tests' seeds;
//!   the corpus grows in `target/fuzz/corpus/<target>/` across runs and a
//!   crash is left in `fuzz/artifacts/<target>/`. Installs cargo-fuzz if
//!   missing.
//!
//! A crash fixed gets its input checked in under `tests/data/fuzz/<target>/`,
//! which the unit tests replay.

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, say};

/// `cargo xtask fuzz` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// The random seed (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Coverage-guided, with libFuzzer (cargo fuzz, nightly).
    #[arg(long)]
    coverage: bool,
    /// Only this target (e.g. perf_map, gopclntab, pprof).
    target: Option<String>,
}

/// The targets, as `fuzz/Cargo.toml` names its harnesses.
fn harnesses() -> Result<Vec<String>> {
    let toml = std::fs::read_to_string(crossprof_tests::workspace_root().join("fuzz/Cargo.toml"))
        .context("read fuzz/Cargo.toml")?;
    Ok(toml
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "crossprof-fuzz")
        .map(str::to_owned)
        .collect())
}

pub fn run(args: &Args) -> Result<()> {
    build::run()?;
    let mut seeds = cmd::cargo();
    // Arithmetic that overflows on hostile input is a bug even where release
    // code would wrap without a word: the fuzz build (profile `checked`, a
    // build of its own beside the release one, made once) panics on it in
    // crossprof's crates.
    seeds.args(["test", "--profile", "checked", "-p", "probe-user", "--lib"]);
    build::locked_in_ci(&mut seeds);
    seeds.args([
        "fuzz::tests::fuzz_for_a_while",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    if !args.coverage {
        say!("fuzzing each target for {} s...", args.secs);
        seeds.env("CROSSPROF_FUZZ_SECS", args.secs.to_string());
        if let Some(seed) = args.seed {
            seeds.env("CROSSPROF_FUZZ_SEED", seed.to_string());
        }
        if let Some(target) = &args.target {
            seeds.env("CROSSPROF_FUZZ_TARGET", target);
        }
        cmd::run(&mut seeds)?;
        say!("fuzz: no target panicked");
        return Ok(());
    }
    // Coverage-guided: seeds first, then each harness under libFuzzer.
    if !cmd::succeeds(std::process::Command::new("cargo").args(["fuzz", "--version"])) {
        say!("installing cargo-fuzz...");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = crossprof_tests::target_dir().join("fuzz/corpus");
    seeds.env("CROSSPROF_FUZZ_WRITE_SEEDS", &corpus);
    cmd::run(&mut seeds)?;
    let names = harnesses()?;
    let chosen: Vec<&String> = names
        .iter()
        .filter(|n| args.target.as_ref().is_none_or(|t| t == *n))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no fuzz target {:?}: one of {}",
            args.target,
            names.join(", ")
        );
    }
    let fuzz_dir = crossprof_tests::workspace_root().join("fuzz");
    let mut failed = Vec::new();
    for name in chosen {
        say!("fuzz --coverage: {name} for {} s", args.secs);
        let mut run = std::process::Command::new("cargo");
        run.current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", "--release", name])
            .arg(corpus.join(name))
            .args([
                "--",
                &format!("-max_total_time={}", args.secs.ceil() as u64),
                "-timeout=2",
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ])
            // probe-user's build script: no BPF object under sanitizer flags.
            .env("CROSSPROF_NO_EBPF", "1");
        if let Some(seed) = args.seed {
            run.arg(format!("-seed={seed}"));
        }
        if cmd::run(&mut run).is_err() {
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz --coverage: {} crashed (inputs in fuzz/artifacts/): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    say!("fuzz --coverage: no target crashed");
    Ok(())
}
