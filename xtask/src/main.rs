//! crossprof's project tasks (`cargo xtask <task>`, an alias in `.cargo/config.toml`).
//!
//! - `bootstrap`: installs what building and testing need and this machine lacks.
//! - `build`: bootstrap, then the release build of the workspace.
//! - `test`: bootstrap, build, then every test, as root (this is what `.ci/run` runs).
//! - `demo`: profiles a small C program and prints where its flamegraph is.
//! - `gallery`: regenerates the checked-in SVGs in `flamegraphs/gallery/`.
//! - `bench`: measures crossprof's overhead and prints each figure beside its goal.
//! - `vmtest`: the representative end-to-end tests on Debian 12's 6.1 and 6.12
//!   kernels, booted under qemu.
//! - `fuzz`: every parser of untrusted bytes under random mutations, N seconds each.

mod bench;
mod bootstrap;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod test;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "crossprof's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker, gcc and other Debian packages.
    Bootstrap,
    /// Bootstrap, then `cargo build --release` of the workspace (crossprof included).
    Build,
    /// Bootstrap, build, then run every test (needs root: the tests load eBPF programs).
    Test {
        /// Extra arguments for the test binaries (after `--test-threads=1`), e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Profile a demo C program with crossprof and print where the flamegraph is.
    Demo,
    /// Regenerate the checked-in flamegraphs in flamegraphs/gallery/ from the fixtures.
    Gallery,
    /// Measure crossprof's overhead and cost; print a table and write target/bench/bench.json.
    Bench(bench::Args),
    /// Run the representative end-to-end tests on Debian 12's 6.1 and 6.12 kernels under qemu.
    Vmtest(vmtest::Args),
    /// Fuzz every parser of untrusted bytes for a while (no root needed).
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    add_cargo_bin_to_path();
    let result = match cli.task {
        Task::Bootstrap => bootstrap::run(),
        Task::Build => build::run(),
        Task::Test { test_args } => test::run(&test_args),
        Task::Demo => demo::run_demo(),
        Task::Gallery => demo::run_gallery(),
        Task::Bench(args) => bench::run(&args),
        Task::Vmtest(args) => vmtest::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo install` puts bpf-linker in `~/.cargo/bin`, and probe-user's build script looks
/// for it on PATH: make sure that folder is there for every program this xtask starts.
fn add_cargo_bin_to_path() {
    let Some(bin) = cmd::cargo_bin_dir() else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: called at the start of main, before this process starts any thread.
        unsafe { std::env::set_var("PATH", joined) };
    }
}
