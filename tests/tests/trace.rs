//! Request attribution (issue #6): `--group-by trace` puts what a goroutine or
//! thread does while serving a plaintext HTTP/1.x request under the request's
//! W3C trace id.

use crossprof_tests::{Go, GoBuild, out_dir, read_folded, read_summary, record_command};

/// `traced.go`: a net/http server and a client in one program; 10 requests,
/// each with its own traceparent, each handler burning 100 ms of CPU. At 999 Hz,
/// each request from the second on has ~100 samples of `main.work` under
/// `trace <its id>` (within 20%); no client frame (`main.main`) is under a
/// trace; the first request (during the process's start, before its
/// goroutines are known) is partly `[no trace]` — unattributed, never under
/// another trace; every request was seen with its trace (summary.json).
/// Normal and PIE builds of the newest and oldest toolchains.
#[test]
fn each_request_s_work_is_under_its_trace_id() {
    for (go, build) in [
        (Go::Go119, GoBuild::Normal),
        (Go::Go127, GoBuild::Normal),
        (Go::Go127, GoBuild::Pie),
    ] {
        let what = format!("go {} {build:?}", go.version());
        let bin = go.fixture("traced", build);
        let dir = out_dir(&format!("trace_{}_{build:?}", go.version()));
        let run = record_command(
            &dir,
            &["--freq", "999", "--group-by", "trace"],
            &bin,
            &["10", "100"],
        );
        assert!(run.status.success(), "{what}: {}", run.stderr);
        assert!(run.stdout.ends_with("done\n"), "{what}: {}", run.stdout);
        let stacks = read_folded(&dir);
        let work = |level: &str| -> u64 {
            stacks
                .iter()
                .filter(|s| s.frames[1] == level && s.frames.iter().any(|f| f == "main.work"))
                .map(|s| s.count)
                .sum()
        };
        for i in 2..=10u32 {
            let n = work(&format!("trace {i:032x}"));
            assert!(
                (80..=120).contains(&n),
                "{what}: request {i}: {n} samples of main.work under its trace:\n{stacks:#?}"
            );
        }
        let first = work(&format!("trace {:032x}", 1));
        let unattributed = work("[no trace]");
        assert!(
            first + unattributed >= 80 && unattributed <= 120,
            "{what}: first request {first} + [no trace] {unattributed}"
        );
        assert!(
            !stacks
                .iter()
                .any(|s| s.frames[1].starts_with("trace ")
                    && s.frames.iter().any(|f| f == "main.main")),
            "{what}: the client's frames under a trace"
        );
        let summary = read_summary(&dir);
        assert_eq!(
            summary["http_requests"]["traced"], 10,
            "{what}: {summary:#}"
        );
        assert_eq!(summary["counters"]["http_events_lost"], 0, "{what}");
    }
}

/// `--trace-id` of the fifth request: the profile holds that request's work
/// only — every stack under `trace <its id>`, wall-clock microseconds of
/// `main.work` within 25% of its 100 ms, and nothing of the other requests.
#[test]
fn one_request_s_wall_clock_profile() {
    let bin = Go::Go127.fixture("traced", GoBuild::Normal);
    let dir = out_dir("trace_id");
    let id = format!("{:032x}", 5);
    let run = record_command(&dir, &["--trace-id", &id], &bin, &["10", "100"]);
    assert!(run.status.success(), "{}", run.stderr);
    let stacks = read_folded(&dir);
    assert!(!stacks.is_empty());
    let level = format!("trace {id}");
    assert!(
        stacks.iter().all(|s| s.frames.contains(&level)),
        "a stack of another request:\n{stacks:#?}"
    );
    let work: u64 = stacks
        .iter()
        .filter(|s| s.frames.iter().any(|f| f == "main.work"))
        .map(|s| s.count)
        .sum();
    assert!(
        (75_000..=125_000).contains(&work),
        "{work} µs of main.work:\n{stacks:#?}"
    );
    assert_eq!(read_summary(&dir)["mode"], "wall");
}

/// `--slow-ms 200 --mode goblock`: of six requests (50 ms of work each), the
/// third also sleeps 300 ms; it alone is listed as slow, at 350 ms ± 20%,
/// with `[wait: sleep]` as its first cause at 300 ms ± 10%.
#[test]
fn slow_requests_are_listed_with_their_causes() {
    let bin = Go::Go127.fixture("traced", GoBuild::Normal);
    let dir = out_dir("trace_slow");
    let run = record_command(
        &dir,
        &["--slow-ms", "200", "--mode", "goblock"],
        &bin,
        &["6", "50", "3", "300"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let summary = read_summary(&dir);
    let slow = summary["slow_requests"].as_array().expect("slow_requests");
    assert_eq!(slow.len(), 1, "{slow:#?}");
    assert_eq!(slow[0]["trace_id"], format!("{:032x}", 3));
    let ms = slow[0]["ms"].as_f64().unwrap();
    assert!((280.0..=420.0).contains(&ms), "{ms} ms");
    let cause = &slow[0]["causes"][0];
    assert_eq!(cause[0], "[wait: sleep]", "{slow:#?}");
    let waited = cause[1].as_f64().unwrap();
    assert!((270.0..=330.0).contains(&waited), "{waited} ms asleep");
}
