//! `cargo xtask test`: bootstrap, build, then every test of the workspace, one at a time
//! (the end-to-end tests profile the whole machine and would see each other).

use anyhow::{Result, bail};

use crate::{build, cmd, say};

pub fn run(test_args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask test` must run as root: the end-to-end tests load eBPF programs \
             and sample every CPU (try `sudo env PATH=\"$PATH\" cargo xtask test`)"
        );
    }
    build::run()?;
    say!("running the tests (release, one at a time)...");
    let mut test = cmd::cargo();
    test.args(["test", "--release", "--workspace"])
        .args(build::EXCLUDE);
    build::locked_in_ci(&mut test);
    test.args(["--", "--test-threads=1"]).args(test_args);
    cmd::run(&mut test)?;
    say!("all tests passed");
    Ok(())
}
