//! `cargo xtask build`: bootstrap, then the release build of the workspace.
//!
//! probe-user's build script builds the eBPF programs (probe-ebpf) with nightly and
//! bpf-linker, so this one build yields a complete `target/release/crossprof`.

use anyhow::{Result, bail};

use crate::{bootstrap, cmd, say};

/// The eBPF crate builds only for `bpfel-unknown-none` (through probe-user's build
/// script), never for the host: every workspace-wide cargo command leaves it out.
pub const EXCLUDE: [&str; 2] = ["--exclude", "probe-ebpf"];

pub fn run() -> Result<()> {
    bootstrap::run()?;
    say!("building the workspace (release)...");
    let mut build = cmd::cargo();
    build
        .args(["build", "--release", "--workspace"])
        .args(EXCLUDE);
    locked_in_ci(&mut build);
    cmd::run(&mut build)?;
    let bin = crossprof_tests::target_dir().join("release/crossprof");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    say!("built {}", bin.display());
    Ok(())
}

/// In CI (`CI` set), cargo must build exactly what Cargo.lock says.
pub fn locked_in_ci(cargo: &mut std::process::Command) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        cargo.arg("--locked");
    }
}
