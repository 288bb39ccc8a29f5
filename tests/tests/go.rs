//! Go (issue #4, first step): Go binaries named from `.gopclntab` — normal,
//! stripped (`-s -w`) and PIE builds of Go 1.19 to 1.27 — with inlined calls as
//! frames of their own.

use std::process::Command;

use crossprof_tests::{Go, GoBuild, Run, count_where, crossprof_bin, out_dir, read_folded};

#[test]
fn go_chain_and_inlined_call_are_named_in_every_version_and_build() {
    for go in Go::ALL {
        for build in GoBuild::ALL {
            let what = format!("go {} {build:?}", go.version());
            let bin = go.fixture("chain", build);
            let dir = out_dir(&format!("go_chain_{}_{build:?}", go.version()));
            let run: Run = Command::new(crossprof_bin())
                .args(["record", "-q", "-o"])
                .arg(&dir)
                .arg("--")
                .arg(&bin)
                .arg("2")
                .output()
                .expect("run crossprof")
                .into();
            assert!(run.status.success(), "{what}: {}", run.stderr);
            assert!(run.stdout.contains("done false"), "{what}: {}", run.stdout);
            let stacks = read_folded(&dir);
            let (chain, all) = count_where(&stacks, "chain", |s| {
                s.contains_chain(&["main.main", "main.work", "main.hot"])
            });
            assert!(all >= 100, "{what}: only {all} samples");
            assert!(
                chain * 100 >= all * 80,
                "{what}: main.main;main.work;main.hot in {chain} of {all}:\n{stacks:#?}"
            );
            // mix is inlined into hot: a frame of its own, annotated _[i] (92-99%
            // of samples measured).
            let (inlined, _) = count_where(&stacks, "chain", |s| {
                s.contains_chain(&["main.hot", "main.mix_[i]"])
            });
            assert!(
                inlined * 100 >= all * 50,
                "{what}: main.hot;main.mix_[i] in {inlined} of {all}"
            );
        }
    }
}
