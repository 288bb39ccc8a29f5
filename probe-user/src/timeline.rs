//! `--timeline`: `DIR/timeline.json` in the Chrome trace event format, which
//! Perfetto (ui.perfetto.dev) and chrome://tracing open.
//!
//! One track per thread and one per goroutine, grouped by process: its
//! on-CPU samples (instant events with the stack in their args) and `running`
//! spans (consecutive samples merged), the spans it spent blocked or waiting,
//! named by the wait (`[sleep]`, `[blocked: futex]` with `--mode offcpu` or
//! `wall`; `[wait: chan receive]` on a goroutine's track with `--mode
//! goblock`), per .NET process a `GC` track of its pauses, and with
//! `--group-by trace` the requests each thread or goroutine served or sent
//! (`request <trace id>` spans, category `request`). Times are microseconds
//! from the start of the recording.
//!
//! Events are kept in memory until the end, at most [`MAX_EVENTS`]; the
//! rest are counted (`timeline_events_dropped` in summary.json), never
//! silently lost.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::{
    frame::FrameRef, http::Worker, kinds::Classifier, native::process::ProcessTable,
    symbolize::Names,
};

/// The file, in the output folder.
pub const FILE: &str = "timeline.json";

/// Events kept for the timeline (samples and blocked spans together).
pub const MAX_EVENTS: usize = 1 << 20;

/// Goroutine `N`'s track is `GOROUTINE_TRACK + N` (Chrome trace tracks are
/// numbered like threads; this keeps them apart from any thread id).
pub const GOROUTINE_TRACK: u64 = 1 << 32;

/// A sample or a blocked span.
struct Event {
    pid: u32,
    /// The thread it belongs on, if any (a goroutine's wait, sent by the
    /// thread that woke it, belongs on the goroutine's track only).
    tid: Option<u32>,
    /// End of a blocked span, or the sample's time (CLOCK_MONOTONIC ns).
    time_ns: u64,
    /// The span's length; 0 for a sample.
    dur_ns: u64,
    /// The goroutine (0: none).
    goid: u64,
    /// Root first; a blocked span's last frame names the wait.
    frames: Box<[FrameRef]>,
}

/// The timeline being recorded.
pub struct Timeline {
    start_ns: u64,
    /// Samples further apart than this on one track end a `running` span.
    gap_ns: u64,
    events: Vec<Event>,
    requests: Vec<crate::http::Finished>,
    threads: BTreeMap<(u32, u32), String>,
    /// Events past [`MAX_EVENTS`].
    pub dropped: u64,
}

impl Timeline {
    /// A timeline starting at `start_ns`, of samples taken at `freq` Hz.
    pub fn new(start_ns: u64, freq: u64) -> Self {
        Self {
            start_ns,
            gap_ns: 3 * 1_000_000_000 / freq.max(1) / 2,
            events: Vec::new(),
            requests: Vec::new(),
            threads: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Keeps an on-CPU sample (`dur_ns` 0) or a blocked span ending at
    /// `time_ns`, of `pid`, on the track of thread `tid` (named `comm`) if
    /// given and of goroutine `goid` if not 0, with its stack.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        comm: &str,
        time_ns: u64,
        dur_ns: u64,
        goid: u64,
        frames: &[FrameRef],
    ) {
        if self.events.len() + self.requests.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        if let Some(tid) = tid {
            self.threads
                .entry((pid, tid))
                .or_insert_with(|| comm.to_owned());
        }
        self.events.push(Event {
            pid,
            tid,
            time_ns,
            dur_ns,
            goid,
            frames: frames.into(),
        });
    }

    /// Keeps a request's span on its worker's track.
    pub fn request(&mut self, done: crate::http::Finished) {
        if self.events.len() + self.requests.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        self.requests.push(done);
    }

    fn us(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.start_ns) as f64 / 1e3
    }

    /// The trace: process, thread and goroutine track names, samples, running
    /// and blocked spans, and the GC pauses of `gc` (per process,
    /// `(start_ns, end_ns)`).
    pub fn to_json(
        &self,
        names: &Names,
        procs: &ProcessTable,
        process_name: impl Fn(u32) -> String,
        gc: &BTreeMap<u32, Vec<(u64, u64)>>,
    ) -> Value {
        let mut out = Vec::new();
        let mut pids: Vec<u32> = self.events.iter().map(|e| e.pid).collect();
        pids.extend(self.requests.iter().map(|r| r.pid()));
        pids.extend(gc.keys());
        pids.sort_unstable();
        pids.dedup();
        for &pid in &pids {
            out.push(
                json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                "args": {"name": format!("{} ({pid})", process_name(pid))}}),
            );
        }
        for (&(pid, tid), comm) in &self.threads {
            out.push(
                json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                "args": {"name": format!("{comm} ({tid})")}}),
            );
        }
        let request_goroutines = self.requests.iter().filter_map(|r| match r.worker {
            Worker::Goroutine(pid, goid) => Some((pid, goid)),
            Worker::Thread(..) => None,
        });
        let goroutines: BTreeSet<(u32, u64)> = self
            .events
            .iter()
            .filter(|e| e.goid != 0)
            .map(|e| (e.pid, e.goid))
            .chain(request_goroutines)
            .collect();
        for &(pid, goid) in &goroutines {
            out.push(json!({"name": "thread_name", "ph": "M", "pid": pid,
                "tid": GOROUTINE_TRACK + goid, "args": {"name": format!("goroutine {goid}")}}));
        }
        // Each event on its thread's track and its goroutine's.
        let tracks = |e: &Event| {
            let goroutine = (e.goid != 0).then_some(GOROUTINE_TRACK + e.goid);
            e.tid.map(u64::from).into_iter().chain(goroutine)
        };
        // Consecutive samples of a track, merged into running spans.
        let mut samples: Vec<&Event> = self.events.iter().filter(|e| e.dur_ns == 0).collect();
        samples.sort_by_key(|e| e.time_ns);
        let mut running: BTreeMap<(u32, u64), Vec<(u64, u64)>> = BTreeMap::new();
        for e in &samples {
            for track in tracks(e) {
                let spans = running.entry((e.pid, track)).or_default();
                match spans.last_mut() {
                    Some(last) if e.time_ns.saturating_sub(last.1) <= self.gap_ns => {
                        last.1 = e.time_ns;
                    }
                    _ => spans.push((e.time_ns, e.time_ns)),
                }
            }
        }
        // A sample stands for its period.
        let period = self.gap_ns * 2 / 3;
        for ((pid, track), spans) in running {
            for (first, last) in spans {
                out.push(json!({"name": "running", "cat": "running", "ph": "X",
                    "pid": pid, "tid": track, "ts": self.us(first),
                    "dur": (last + period - first) as f64 / 1e3}));
            }
        }
        let mut classifier = Classifier::new(names, procs);
        for e in &self.events {
            let shown = classifier.show(&e.frames);
            let texts: Vec<&str> = shown.frames.iter().map(|f| f.text.as_str()).collect();
            let leaf = texts.last().copied().unwrap_or("[unknown]");
            let mut args = json!({"stack": texts.join(";")});
            if e.goid != 0 {
                args["goroutine"] = json!(e.goid);
            }
            for track in tracks(e) {
                if e.dur_ns == 0 {
                    out.push(json!({"name": leaf, "cat": "sample", "ph": "i", "s": "t",
                        "pid": e.pid, "tid": track, "ts": self.us(e.time_ns), "args": args}));
                } else {
                    let start = e.time_ns.saturating_sub(e.dur_ns);
                    out.push(json!({"name": leaf, "cat": "blocked", "ph": "X",
                        "pid": e.pid, "tid": track, "ts": self.us(start),
                        "dur": e.dur_ns as f64 / 1e3, "args": args}));
                }
            }
        }
        for r in &self.requests {
            let (pid, track) = match r.worker {
                Worker::Goroutine(pid, goid) => (pid, GOROUTINE_TRACK + goid),
                Worker::Thread(pid, tid) => (pid, u64::from(tid)),
            };
            out.push(
                json!({"name": format!("request {}", r.trace), "cat": "request",
                "ph": "X", "pid": pid, "tid": track, "ts": self.us(r.start_ns),
                "dur": r.end_ns.saturating_sub(r.start_ns) as f64 / 1e3,
                "args": {"trace_id": r.trace, "side": if r.client { "client" } else { "server" }}}),
            );
        }
        for (&pid, pauses) in gc {
            // Track 0 of the process: its GC pauses (all its threads stopped).
            out.push(
                json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": 0,
                "args": {"name": "GC"}}),
            );
            for &(start, end) in pauses {
                out.push(
                    json!({"name": "GC pause", "cat": "gc", "ph": "X", "pid": pid,
                    "tid": 0, "ts": self.us(start), "dur": end.saturating_sub(start) as f64 / 1e3}),
                );
            }
        }
        // Metadata events carry a category too, as Chrome's own traces do:
        // some readers of the format refuse an event without one (issue #20).
        for e in &mut out {
            if e["ph"] == "M" {
                e["cat"] = json!("__metadata");
            }
        }
        json!({"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"tool": "crossprof", "events_dropped": self.dropped}})
    }
}
