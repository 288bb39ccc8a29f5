//! `cargo xtask fuzz [--secs N] [--seed S] [TARGET]`: every fuzz target of the
//! collector's parsers (`probe-user/src/fuzz.rs`) for N seconds each. A panic
//! or a slow input fails, naming the input it saved under
//! `target/fuzz/crashes/`; fixed, that input goes to
//! `tests/data/fuzz/<target>/`, which the unit tests replay.

use anyhow::Result;

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
    /// Only this target (e.g. perf_map, gopclntab, pprof).
    target: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    build::run()?;
    say!("fuzzing each target for {} s...", args.secs);
    let mut test = cmd::cargo();
    test.args(["test", "--release", "-p", "probe-user", "--lib"]);
    build::locked_in_ci(&mut test);
    test.args([
        "fuzz::tests::fuzz_for_a_while",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CROSSPROF_FUZZ_SECS", args.secs.to_string());
    if let Some(seed) = args.seed {
        test.env("CROSSPROF_FUZZ_SEED", seed.to_string());
    }
    if let Some(target) = &args.target {
        test.env("CROSSPROF_FUZZ_TARGET", target);
    }
    cmd::run(&mut test)?;
    say!("fuzz: no target panicked");
    Ok(())
}
