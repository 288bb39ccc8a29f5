//! Off-CPU time (issue #6): `--mode offcpu` weighs the stack a thread blocked
//! in by the time until it ran again, under its blocking state.

use crossprof_tests::{FoldedStack, build_c, out_dir, read_folded, read_summary, record_command};

/// Microseconds of the sleeper fixture's stacks that `pred` accepts.
fn weight(stacks: &[FoldedStack], pred: &dyn Fn(&[String]) -> bool) -> u64 {
    stacks
        .iter()
        .filter(|s| s.frames[0] == "sleeper" && pred(&s.frames))
        .map(|s| s.count)
        .sum()
}

fn has(frames: &[String], name: &str) -> bool {
    frames.iter().any(|f| f == name)
}

fn leaf(frames: &[String]) -> &str {
    frames.last().map_or("", String::as_str)
}

/// `sleeper.c`: a thread sleeps 2 s in `nap` (nanosleep) while main waits for
/// it in pthread_join. The sleeping thread's off-CPU time under
/// `sleeper;nap;...;[sleep]` is within 5% of 2 s, its leaf is `[sleep]`, with
/// (`--kernel-waits`) the kernel stack it waited in (taken at the switch: the
/// nanosleep path down to `__schedule`, none of crossprof's own frames); main's join is
/// `[blocked: futex]` for about as long; and nothing else is called sleep.
#[test]
fn a_two_second_sleep_is_two_seconds_off_cpu_under_its_stack() {
    let bin = build_c("native/sleeper.c", &["-O2", "-g"]);
    let dir = out_dir("offcpu_sleeper");
    let run = record_command(&dir, &["--mode", "offcpu", "--kernel-waits"], &bin, &["2"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("done"), "{}", run.stdout);
    let stacks = read_folded(&dir);
    let weight = |pred: &dyn Fn(&[String]) -> bool| weight(&stacks, pred);
    let slept = weight(&|f| has(f, "nap") && has(f, "sleeper") && leaf(f) == "[sleep]");
    let all_sleep = weight(&|f| leaf(f) == "[sleep]");
    let in_kernel = weight(&|f| {
        leaf(f) == "[sleep]"
            && has(f, "do_nanosleep_[k]")
            && f[f.len() - 2] == "__schedule_[k]"
            && !f.iter().any(|f| f.starts_with("bpf_"))
    });
    let joined = weight(&|f| has(f, "main") && leaf(f) == "[blocked: futex]");
    println!("nap [sleep]: {slept} µs; any [sleep]: {all_sleep} µs; main join: {joined} µs");
    assert!(
        (1_900_000..=2_100_000).contains(&slept),
        "nap slept {slept} µs, not 2 s ± 5%:\n{stacks:#?}"
    );
    assert_eq!(
        slept, all_sleep,
        "[sleep] outside nap's stack:\n{stacks:#?}"
    );
    assert_eq!(
        in_kernel, slept,
        "the sleep without its kernel stack:\n{stacks:#?}"
    );
    assert!(
        (1_800_000..=2_200_000).contains(&joined),
        "main waited {joined} µs in pthread_join, not ~2 s:\n{stacks:#?}"
    );
    let summary = read_summary(&dir);
    assert_eq!(summary["mode"], "offcpu");
    let total = summary["off_cpu_us"].as_u64().expect("off_cpu_us");
    assert!(total >= slept + joined, "summary total {total} µs");
}

/// `--min-block` drops shorter spans in the kernel: with a 3 s minimum the
/// 2 s sleep is not in the profile, and the kernel counted what it dropped.
#[test]
fn spans_shorter_than_min_block_are_dropped_in_the_kernel() {
    let bin = build_c("native/sleeper.c", &["-O2", "-g"]);
    let dir = out_dir("offcpu_min_block");
    let run = record_command(
        &dir,
        &["--mode", "offcpu", "--min-block", "3000000"],
        &bin,
        &["1"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let stacks = read_folded(&dir);
    assert!(
        stacks
            .iter()
            .all(|s| s.frames.last().is_none_or(|l| l != "[sleep]")),
        "{stacks:#?}"
    );
    let summary = read_summary(&dir);
    assert!(
        summary["counters"]["off_cpu_short_dropped"].as_u64() >= Some(2),
        "{summary:#}"
    );
}

/// `--mode wall`: the sleeper thread spins 1 s, then sleeps 1 s. Its wall
/// profile (one level per thread) has about 1 s under `spin;[running]` (99 Hz
/// samples of 10,101 µs each) and 1 s ± 5% under `nap;[sleep]` (without
/// `--kernel-waits`: no kernel frame above the user stack).
#[test]
fn wall_mode_weighs_running_and_blocked_time_per_thread() {
    let bin = build_c("native/sleeper.c", &["-O2", "-g"]);
    let dir = out_dir("offcpu_wall");
    let run = record_command(&dir, &["--mode", "wall"], &bin, &["1", "1"]);
    assert!(run.status.success(), "{}", run.stderr);
    let stacks = read_folded(&dir);
    let weight = |pred: &dyn Fn(&[String]) -> bool| weight(&stacks, pred);
    let running = weight(&|f| has(f, "spin") && leaf(f) == "[running]");
    let slept = weight(&|f| has(f, "nap") && leaf(f) == "[sleep]");
    let kernel = weight(&|f| leaf(f) == "[sleep]" && f.iter().any(|f| f.ends_with("_[k]")));
    assert_eq!(kernel, 0, "kernel frames without --kernel-waits");
    println!("spin [running]: {running} µs; nap [sleep]: {slept} µs");
    assert!(
        (850_000..=1_150_000).contains(&running),
        "spin ran {running} µs, not ~1 s:\n{stacks:#?}"
    );
    assert!(
        (950_000..=1_050_000).contains(&slept),
        "nap slept {slept} µs, not 1 s ± 5%:\n{stacks:#?}"
    );
    // One level per thread under the process: the sleeper thread's frames
    // are apart from main's.
    let threads: std::collections::BTreeSet<&str> = stacks
        .iter()
        .filter(|s| s.frames[0] == "sleeper")
        .map(|s| s.frames[1].as_str())
        .collect();
    assert!(threads.len() >= 2, "{threads:?}");
    assert_eq!(read_summary(&dir)["mode"], "wall");
}

/// Kernel names are read once per boot (`probe-user/src/native/kallsyms.rs`):
/// with this boot's cache file removed, a run reads `/proc/kallsyms`
/// (`kernel_symbols: kallsyms` in summary.json) and leaves the core kernel's
/// symbols in `/var/cache/crossprof/kallsyms/<boot id>`, a 0600 file of
/// root's in a 0700 folder; the next run names the same kernel stack (the
/// nanosleep path down to `__schedule`) from that file alone (`cache`).
#[test]
fn the_second_run_names_the_kernel_from_the_boot_s_cache() {
    use std::os::unix::fs::MetadataExt as _;
    let bin = build_c("native/sleeper.c", &["-O2", "-g"]);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let folder = std::path::Path::new("/var/cache/crossprof/kallsyms");
    let file = folder.join(boot.trim());
    let _ = std::fs::remove_file(&file);
    let run = |name: &str| -> (String, Vec<String>) {
        let dir = out_dir(name);
        let run = record_command(&dir, &["--mode", "offcpu", "--kernel-waits"], &bin, &["1"]);
        assert!(run.status.success(), "{}", run.stderr);
        let stacks = read_folded(&dir);
        let nap = stacks
            .iter()
            .filter(|s| has(&s.frames, "nap") && leaf(&s.frames) == "[sleep]")
            .max_by_key(|s| s.count)
            .unwrap_or_else(|| panic!("no sleep in nap:\n{stacks:#?}"));
        let kernel: Vec<String> = nap
            .frames
            .iter()
            .filter(|f| f.ends_with("_[k]"))
            .cloned()
            .collect();
        assert!(
            has(&kernel, "do_nanosleep_[k]") && kernel.last().unwrap() == "__schedule_[k]",
            "{kernel:?}"
        );
        let from = read_summary(&dir)["kernel_symbols"]
            .as_str()
            .unwrap()
            .to_owned();
        (from, kernel)
    };
    let (first_from, first) = run("kallsyms_first");
    assert_eq!(first_from, "kallsyms");
    let meta = std::fs::symlink_metadata(&file).expect("this boot's cache file");
    assert!(meta.file_type().is_file() && meta.uid() == 0 && meta.mode() & 0o777 == 0o600);
    assert_eq!(std::fs::metadata(folder).unwrap().mode() & 0o777, 0o700);
    let (second_from, second) = run("kallsyms_second");
    assert_eq!(second_from, "cache", "the second run read /proc/kallsyms");
    assert_eq!(second, first, "the same kernel stack, named alike");
}

/// `--mode wall` counts every moment of a thread, time waiting for a CPU
/// included: two spinners (`spinner.c`, 2 s of CPU-bound work each) pinned to
/// one CPU each run about half the time. Each has 2 s ± 10% in all, of which
/// 35-65% `[running]` (samples) and 35-65% `[waiting for CPU]` (preempted:
/// the span from leaving the CPU runnable to running again, with the stack it
/// was preempted in, `spin` under `main`). `--mode offcpu` counts blocking
/// only: no `[waiting for CPU]` in it. Under emulation (the VM tier: 6 s
/// each, and a guest timer that delivers fewer samples) the waits, timed by
/// the kernel's clock, are checked (30-70% of the run) and the samples only
/// for being there.
#[test]
fn wall_time_of_threads_sharing_a_cpu_includes_their_wait_for_it() {
    let spinner = crossprof_tests::native_fixture("spinner");
    let secs = crossprof_tests::fixture_secs(2.0);
    let run_us = (secs.parse::<f64>().unwrap() * 1e6) as u64;
    let script = format!(
        "{0} {secs} spin-a & {0} {secs} spin-b; wait",
        spinner.display()
    );
    // Both spinners on CPU 0, recorded in `mode`.
    let record = |mode: &str, name: &str| {
        let dir = out_dir(name);
        let run = record_command(
            &dir,
            &["--mode", mode],
            std::path::Path::new("/usr/bin/taskset"),
            &["-c", "0", "sh", "-c", &script],
        );
        assert!(run.status.success(), "{}", run.stderr);
        read_folded(&dir)
    };
    let stacks = record("wall", "wall_cpu_wait");
    for name in ["spin-a", "spin-b"] {
        // By the thread level (`spin-a (PID)`): the process level is the
        // name the process was read with, `spinner` if before its `prctl`.
        let thread = format!("{name} (");
        let of = |pred: &dyn Fn(&[String]) -> bool| -> u64 {
            stacks
                .iter()
                .filter(|s| {
                    s.frames.get(1).is_some_and(|f| f.starts_with(&thread)) && pred(&s.frames)
                })
                .map(|s| s.count)
                .sum()
        };
        let all = of(&|_| true);
        let running = of(&|f| leaf(f) == "[running]");
        let waiting = of(&|f| leaf(f) == "[waiting for CPU]");
        let waiting_in_spin =
            of(&|f| leaf(f) == "[waiting for CPU]" && has(f, "spin") && has(f, "main"));
        println!(
            "{name}: {all} µs, running {running}, waiting {waiting} ({waiting_in_spin} in spin)"
        );
        if crossprof_tests::emulated() {
            assert!(
                (run_us * 3 / 10..=run_us * 7 / 10).contains(&waiting) && running > 0,
                "{name}: {waiting} µs waiting for a CPU, {running} µs running, of {run_us}:\n{stacks:#?}"
            );
        } else {
            assert!(
                (run_us * 9 / 10..=run_us * 11 / 10).contains(&all),
                "{name}: {all} µs in all, not {run_us} ± 10%:\n{stacks:#?}"
            );
            for (what, us) in [("running", running), ("waiting for CPU", waiting)] {
                assert!(
                    (all * 35 / 100..=all * 65 / 100).contains(&us),
                    "{name}: {us} µs {what} of {all}:\n{stacks:#?}"
                );
            }
        }
        assert!(
            waiting_in_spin >= waiting * 9 / 10,
            "{name}: the wait without the stack it was preempted in:\n{stacks:#?}"
        );
    }
    let stacks = record("offcpu", "offcpu_no_cpu_wait");
    assert!(
        !stacks
            .iter()
            .any(|s| leaf(&s.frames) == "[waiting for CPU]"),
        "offcpu counts blocking only:\n{stacks:#?}"
    );
}
