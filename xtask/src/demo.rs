//! `cargo xtask demo` profiles a small C program (tests/fixtures/demo/demo.c) and prints
//! where its flamegraph is; `cargo xtask gallery` regenerates the checked-in SVGs in
//! flamegraphs/gallery/ from the fixtures.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::{build_c, read_folded, read_summary, workspace_root};

use crate::{build, cmd, say};

/// A flamegraph of the gallery: a fixture profiled from start to exit.
struct Entry {
    /// `flamegraphs/gallery/<name>.svg`.
    name: &'static str,
    /// Source under tests/fixtures.
    src: &'static str,
    gcc_flags: &'static [&'static str],
    args: &'static [&'static str],
    /// A chain of frames the profile must show, or the SVG is not worth checking in.
    expect_chain: &'static [&'static str],
}

const DEMO_FLAGS: &[&str] = &["-O0", "-fno-omit-frame-pointer"];

const DEMO: Entry = Entry {
    name: "demo",
    src: "demo/demo.c",
    gcc_flags: DEMO_FLAGS,
    args: &[],
    expect_chain: &[
        "main",
        "serve",
        "handle_request",
        "parse_request",
        "tokenize",
        "hash_token",
    ],
};

const GALLERY: &[Entry] = &[
    DEMO,
    Entry {
        name: "native-chain",
        src: "native/chain.c",
        gcc_flags: DEMO_FLAGS,
        args: &["3"],
        expect_chain: &["main", "outer", "middle", "hot"],
    },
    Entry {
        name: "native-syscalls",
        src: "native/syscalls.c",
        gcc_flags: DEMO_FLAGS,
        args: &["3"],
        expect_chain: &["main", "syscall_loop", "entry_SYSCALL_64_after_hwframe_[k]"],
    },
];

pub fn run_demo() -> Result<()> {
    build::run()?;
    let out = workspace_root().join("flamegraphs");
    profile(&DEMO, &out)?;
    say!(
        "demo: the flamegraph is {} (open it in a browser; the folded stacks and \
         summary.json are beside it)",
        out.join("flamegraph.svg").display()
    );
    Ok(())
}

pub fn run_gallery() -> Result<()> {
    build::run()?;
    let gallery = workspace_root().join("flamegraphs/gallery");
    fs::create_dir_all(&gallery).with_context(|| format!("cannot create {}", gallery.display()))?;
    for entry in GALLERY {
        let out = crossprof_tests::target_dir()
            .join("gallery")
            .join(entry.name);
        profile(entry, &out)?;
        let stacks = read_folded(&out);
        if !stacks.iter().any(|s| s.contains_chain(entry.expect_chain)) {
            bail!(
                "{}: no stack in {} shows {}; not updating the gallery",
                entry.name,
                out.join("profile.folded").display(),
                entry.expect_chain.join(";")
            );
        }
        let svg = gallery.join(format!("{}.svg", entry.name));
        fs::copy(out.join("flamegraph.svg"), &svg)
            .with_context(|| format!("cannot write {}", svg.display()))?;
        say!("gallery: wrote {}", svg.display());
    }
    Ok(())
}

/// Builds `entry`'s fixture and records it from start to exit into `out`.
fn profile(entry: &Entry, out: &Path) -> Result<()> {
    let program = build_c(entry.src, entry.gcc_flags);
    say!("profiling {} until it exits...", program.display());
    cmd::run(
        Command::new(crossprof_tests::target_dir().join("release/crossprof"))
            .arg("record")
            .arg("-o")
            .arg(out)
            .arg("--")
            .arg(&program)
            .args(entry.args)
            .current_dir(workspace_root()),
    )?;
    let summary = read_summary(out);
    say!(
        "{}: {} samples in {:.1} s, {} lost",
        entry.name,
        summary["samples"],
        summary["duration_secs"].as_f64().unwrap_or(f64::NAN),
        summary["lost"]
    );
    Ok(())
}
