//! Everything downstream of the ring buffer: each record decoded and
//! dispatched by its kind (samples to the stack stage, GC events, off-CPU
//! spans, goroutine waits, requests, a process's new code), processes
//! captured at first sight and their kernel tables kept current.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::Config;
use crate::{
    aggregate::{Aggregator, sample_frames},
    cli::{GroupBy, Mode},
    decode::{HttpWhat, Record, decode},
    dotnet::{eventpipe::GC_EVENT_DELAY_NS, unwind::KernelTables},
    frame::{FrameRef, Marker},
    native::process::ProcessTable,
    sampler::Sampler,
    symbolize::SymbolizerThread,
    sys::monotonic_ns,
};

/// The most time one drain takes records off the ring (see `drain`).
const DRAIN_BUDGET: Duration = Duration::from_millis(25);
/// A process's maps are re-read for new code at most this often.
pub(crate) const MAPS_REREAD_EVERY: Duration = Duration::from_millis(20);

/// What the pipeline writes in the kernel.
pub(crate) struct KernelSide {
    /// The kernel's entry per process (the Go poll writes the Go part).
    pub(crate) processes: crate::process::ProcessEntries,
    /// The kernel's tables for walking .NET stacks.
    pub(crate) dotnet: KernelTables,
    /// The kernel's `.eh_frame` tables for native code.
    pub(crate) unwind: crate::native::unwind::UnwindTables,
}

/// Everything downstream of the ring buffer.
pub(crate) struct Pipeline {
    pub(crate) procs: ProcessTable,
    pub(crate) agg: Aggregator,
    pub(crate) symbolizer: SymbolizerThread,
    pub(crate) decode_errors: u64,
    /// `--per-thread` (and `--mode wall`): a thread frame under the process.
    per_thread: bool,
    /// `--mode`.
    mode: Mode,
    /// Weight of an on-CPU sample: 1 (a sample), or in wall mode the sample
    /// period in microseconds.
    cpu_weight: u64,
    /// Microseconds of thread off-CPU time counted.
    pub(crate) off_cpu_us: u64,
    /// Microseconds of goroutine waits counted.
    pub(crate) go_wait_us: u64,
    /// `--timeline`: the events kept for it.
    pub(crate) timeline: Option<crate::timeline::Timeline>,
    /// `--group-by trace`: the requests in flight.
    pub(crate) requests: crate::http::Requests,
    /// `--trace-id`: only what works for this trace is kept.
    only_trace: Option<String>,
    /// `--group-by`: frame levels under the process (and thread).
    group_by: Vec<GroupBy>,
    /// What it writes in the kernel (none when a capture is replayed).
    pub(crate) kernel: Option<KernelSide>,
    /// `--go-states`: follow goroutine states in Go processes.
    go_states: bool,
    /// `--go-state-sampling`: goroutine states read this many times a
    /// second (0: not sampled).
    pub(crate) go_sampling_hz: u64,
    /// Go processes whose states could not be followed: (process, why).
    pub(crate) go_states_failed: Vec<(String, String)>,
    /// The command's Go executable, probed before it started.
    go_preattached: Option<crate::go::probes::Preattached>,
    /// Samples of .NET processes waiting for the GC events of their time.
    waiting: VecDeque<Waiting>,
    /// The first failure to update them, reported once.
    pub(crate) unwind_tables_error: Option<String>,
    /// `--frame-pointers-only`: no rules given to the kernel.
    frame_pointers_only: bool,
    /// The first failure to update them, reported once.
    dotnet_tables_error: bool,
    /// The frame-pointer baseline: per process, the outermost frames a
    /// frame-pointer walk of the same stacks reached (one sample in
    /// `FP_BASELINE_EVERY` of those walked by rules).
    pub(crate) fp_baseline: HashMap<u32, HashMap<FrameRef, u64>>,
    /// Aggregators every counted stack also goes to (the agent's on-demand
    /// captures).
    pub(crate) taps: Vec<Aggregator>,
    /// Processes that mapped new code, whose maps are still to be re-read.
    maps_pending: std::collections::BTreeSet<u32>,
}

impl Pipeline {
    /// The pipeline of a session with `cfg`, over the kernel's tables.
    pub(crate) fn new(
        cfg: &Config,
        procs: ProcessTable,
        kernel: Option<KernelSide>,
        go_states_failed: Vec<(String, String)>,
        go_preattached: Option<crate::go::probes::Preattached>,
    ) -> Self {
        Pipeline {
            symbolizer: SymbolizerThread::spawn(
                cfg.debug_dirs.clone(),
                cfg.kallsyms.clone(),
                procs.modules.go.clone(),
                cfg.debuginfod
                    .then(|| {
                        crate::native::debuginfod::servers(
                            crate::native::debuginfod::urls_from_env().as_deref(),
                        )
                        .ok()
                    })
                    .flatten(),
            ),
            procs,
            agg: Aggregator::default(),
            decode_errors: 0,
            per_thread: cfg.per_thread || cfg.mode == Mode::Wall,
            mode: cfg.mode,
            cpu_weight: match cfg.mode {
                Mode::Wall => (1_000_000 / cfg.freq.max(1)).max(1),
                _ => 1,
            },
            off_cpu_us: 0,
            go_wait_us: 0,
            timeline: cfg
                .timeline
                .then(|| crate::timeline::Timeline::new(monotonic_ns(), cfg.freq)),
            requests: crate::http::Requests::new(
                cfg.slow_ms.map_or(0, |ms| ms.saturating_mul(1_000_000)),
            ),
            only_trace: cfg.trace_id.clone(),
            group_by: cfg.group_by.clone(),
            kernel,
            go_states: cfg.go_probes(),
            go_sampling_hz: cfg.go_state_sampling,
            go_states_failed,
            go_preattached,
            waiting: VecDeque::new(),
            dotnet_tables_error: false,
            unwind_tables_error: None,
            frame_pointers_only: cfg.frame_pointers_only,
            fp_baseline: HashMap::new(),
            taps: Vec::new(),
            maps_pending: Default::default(),
        }
    }
}

/// A sample held until it is known whether its process was in a GC pause.
struct Waiting {
    pid: u32,
    time_ns: u64,
    frames: Vec<FrameRef>,
    weight: u64,
}

impl Pipeline {
    /// Are processes whose maps changed waiting for their re-read (rate
    /// limited: see [`MAPS_REREAD_EVERY`])? The event loop then drains again
    /// that much later instead of at its next tick: until the re-read, the
    /// new code's samples are cut where its rules are missing.
    pub(crate) fn maps_waiting(&self) -> bool {
        !self.maps_pending.is_empty()
    }

    pub(crate) fn drain(&mut self, events: &mut RingBuf<MapData>, announced: Vec<Vec<u8>>) {
        let mut maps_changed = std::mem::take(&mut self.maps_pending);
        // Processes announced (their reads made on the announcements' own
        // thread): before the samples, which may be theirs.
        for item in &announced {
            self.drain_record(item, &mut maps_changed);
        }
        // At most DRAIN_BUDGET of records per call: whatever the rate they
        // come at (a whole-system recording at 100 kHz), the event loop gets
        // back to its signals, deadline and timers; records left in the ring
        // wait for the next drain (and a full ring drops and counts them).
        // The clock is read after every record (~25 ns, a few percent of a
        // record's decoding): one that has a process's maps read can take
        // tens to hundreds of milliseconds on a starved CPU (a read of
        // /proc/PID/maps waits for the process's memory lock while it execs
        // or exits); read every 64 records, the budget was overrun by a
        // second under a storm of rustc processes, every 8 by 0.3 s.
        let budget = Instant::now() + DRAIN_BUDGET;
        while let Some(item) = events.next() {
            self.drain_record(&item, &mut maps_changed);
            if Instant::now() >= budget {
                break;
            }
        }
        // New code mapped: its rules now, before more of its samples come (at
        // most one re-read of a process's maps per MAPS_REREAD_EVERY; the
        // others wait for the next drain).
        let mut reread = false;
        for pid in maps_changed {
            if self.procs.recapture_rate_limited(pid, MAPS_REREAD_EVERY) {
                reread = true;
            } else {
                self.maps_pending.insert(pid);
            }
        }
        if reread {
            self.poll_native_unwind();
        }
        self.count_waiting(monotonic_ns().saturating_sub(GC_EVENT_DELAY_NS));
        self.poll_dotnet_unwind_now();
        self.submit_fresh();
        self.symbolizer.poll();
    }

    /// A captured record (see [`crate::replay`]), as [`Self::drain`] takes
    /// one off the ring: a process that mapped new code is read again at
    /// once (its next captured read).
    pub(crate) fn replay_record(&mut self, item: &[u8]) {
        let mut maps_changed = std::collections::BTreeSet::new();
        self.drain_record(item, &mut maps_changed);
        for pid in maps_changed {
            self.procs.recapture(pid);
        }
        self.procs.poll_go(None, &mut || {});
        self.submit_fresh();
    }

    /// Takes one record off the ring.
    fn drain_record(&mut self, item: &[u8], maps_changed: &mut std::collections::BTreeSet<u32>) {
        self.procs.source.record(item);
        self.take_record(item, maps_changed);
        self.procs.source.record_done();
    }

    /// Decodes one record and hands it to what takes its kind.
    fn take_record(&mut self, item: &[u8], maps_changed: &mut std::collections::BTreeSet<u32>) {
        {
            match decode(item) {
                Ok(Record::CpuSample(sample)) => {
                    // Time away from the CPU (off-CPU span, goroutine wait).
                    let away_ns = sample
                        .off_cpu
                        .map(|o| o.ns)
                        .or(sample.go_block.map(|b| b.ns));
                    let weight = away_ns.map_or(self.cpu_weight, |ns| ns / 1000);
                    if weight == 0 {
                        return; // a span under a microsecond (--min-block 0)
                    }
                    // The request it works for, looked up once (with
                    // --group-by trace only).
                    let trace = if self.group_by.contains(&GroupBy::Trace) {
                        self.requests
                            .trace(sample.pid, sample.tid, sample.goid)
                            .map(str::to_owned)
                    } else {
                        None
                    };
                    if self.only_trace.is_some() && trace != self.only_trace {
                        return;
                    }
                    if sample.go_block.is_some() {
                        self.go_wait_us += weight;
                    } else if away_ns.is_some() {
                        self.off_cpu_us += weight;
                    }
                    let p = self.procs.of_sample(sample.pid, &sample.comm_str());
                    p.samples += 1;
                    if !sample.user.is_empty()
                        || sample.flags & probe_common::native::FLAG_USER_STACK_ERROR != 0
                    {
                        p.stack_ends.add(sample.flags);
                    }
                    let dotnet = p.dotnet.is_some();
                    let mut frames = sample_frames(&sample, &mut self.procs);
                    // What the time went to, for --slow-ms.
                    let mut cause = None;
                    if let Some(off) = &sample.off_cpu {
                        let reason = crate::offcpu::reason(off);
                        frames.push(self.procs.text_frame(&reason));
                        cause = Some(reason);
                    }
                    if let Some(b) = &sample.go_block {
                        let wait = self.procs.go_wait_text(sample.pid, b.reason);
                        frames.push(self.procs.text_frame(&wait));
                        cause = Some(wait);
                    }
                    if let Some(t) = self.timeline.as_mut() {
                        t.add(
                            sample.pid,
                            // A goroutine's wait is sent by the thread that
                            // woke it: it goes on the goroutine's track only.
                            sample.go_block.is_none().then_some(sample.tid),
                            &sample.comm_str(),
                            sample.time_ns,
                            away_ns.unwrap_or(0),
                            sample.goid,
                            &frames,
                        );
                    }
                    if away_ns.is_none() && self.mode == Mode::Wall {
                        frames.push(self.procs.text_frame("[running]"));
                        cause = Some("[running]".to_owned());
                    }
                    if let (Some(cause), Some(trace)) = (&cause, &trace) {
                        self.requests.attribute(sample.pid, trace, cause, weight);
                    }
                    if let Some((outermost, n)) = sample.fp_baseline {
                        self.add_fp_baseline(sample.pid, outermost, n);
                    }
                    for level in self.group_by.iter().rev() {
                        let frame = match level {
                            GroupBy::Trace => {
                                let text = match &trace {
                                    Some(trace) => format!("trace {trace}"),
                                    None => "[no trace]".to_owned(),
                                };
                                self.procs.text_frame(&text)
                            }
                            // A level above the process, added when folding.
                            GroupBy::Container => continue,
                            // Goroutine, label, state: Go processes only.
                            _ => match self.procs.go_level(level, &sample) {
                                Some(frame) => frame,
                                None => continue,
                            },
                        };
                        frames.insert(0, frame);
                    }
                    if self.per_thread {
                        // A goroutine's wait is sent by the thread that woke
                        // it: its level is the goroutine's.
                        frames.insert(
                            0,
                            match sample.go_block {
                                Some(_) => FrameRef::Goroutine(sample.goid),
                                None => self.procs.thread_frame(sample.tid, &sample.comm),
                            },
                        );
                    }
                    if dotnet {
                        self.waiting.push_back(Waiting {
                            pid: sample.pid,
                            time_ns: sample.time_ns,
                            frames,
                            weight,
                        });
                    } else {
                        self.count(sample.pid, frames, weight);
                    }
                }
                Ok(Record::Http {
                    pid,
                    tid,
                    goid,
                    what,
                    time_ns,
                }) => {
                    let worker = crate::http::Worker::of(pid, tid, goid);
                    let finished = match what {
                        HttpWhat::Request(bytes) => {
                            self.requests.request(worker, &bytes, time_ns);
                            None
                        }
                        HttpWhat::RequestSent(bytes) => {
                            self.requests.request_sent(worker, &bytes, time_ns);
                            None
                        }
                        HttpWhat::Response => self.requests.response(pid, tid, goid, time_ns),
                        HttpWhat::ResponseRead => {
                            self.requests.response_read(pid, tid, goid, time_ns)
                        }
                    };
                    if let (Some(done), Some(t)) = (finished, self.timeline.as_mut()) {
                        t.request(done);
                    }
                }
                Ok(Record::Exec { pid }) => {
                    // A target's new program (a child of a followed tree, a
                    // --comm match, a command): read now, while it lives.
                    self.procs.exec(pid);
                }
                Ok(Record::MapsChanged { pid }) => {
                    // Read once the ring is drained (a dlopen maps several
                    // segments; the record is sent when mmap returns, so the
                    // mapping exists).
                    maps_changed.insert(pid);
                }
                Ok(Record::GoroutineStart {
                    pid,
                    goid,
                    parent_goid,
                }) => self.requests.goroutine_started(pid, goid, parent_goid),
                Ok(Record::GoroutineEnd { pid, end_ns: _, g }) => {
                    self.requests.goroutine_ended(pid, g.goid);
                    self.procs.go_goroutine_ended(pid, g);
                }
                Err(e) => {
                    if self.decode_errors == 0 {
                        log::warn!("undecodable record from the kernel: {e}");
                    }
                    self.decode_errors += 1;
                }
            }
        }
    }
}

impl Pipeline {
    /// Counts a frame-pointer walk's outermost frame for the baseline, and has
    /// it named (a walk cut at the frame limit, or of no frame, is not rooted).
    fn add_fp_baseline(&mut self, pid: u32, outermost: u64, frames: u32) {
        let frame = if outermost == 0 || frames as usize >= probe_common::native::MAX_FRAMES {
            FrameRef::Marker(Marker::UserTruncated)
        } else {
            self.procs.user_frame(pid, outermost.saturating_sub(1))
        };
        let seen = self.fp_baseline.values().any(|m| m.contains_key(&frame));
        *self
            .fp_baseline
            .entry(pid)
            .or_default()
            .entry(frame)
            .or_insert(0) += 1;
        if !seen {
            self.symbolizer.submit(&[frame], &self.procs.modules);
        }
    }

    /// Gives the kernel the frame shapes of .NET processes' new JIT methods.
    pub(crate) fn poll_dotnet_unwind_now(&mut self) {
        if let Some(kernel) = &mut self.kernel
            && let Err(e) = self.procs.poll_dotnet_unwind(&mut kernel.dotnet)
            && !self.dotnet_tables_error
        {
            log::warn!("{e}: .NET stacks are walked by frame pointers only");
            self.dotnet_tables_error = true;
        }
    }

    /// Gives the kernel the `.eh_frame` rules of processes seen for the first
    /// time or whose maps changed (unless `--frame-pointers-only`).
    fn poll_native_unwind(&mut self) {
        if !self.frame_pointers_only
            && let Some(kernel) = &mut self.kernel
            && let Err(e) = self.procs.poll_native_unwind(&mut kernel.unwind)
            && self.unwind_tables_error.is_none()
        {
            log::warn!("{e}");
            self.unwind_tables_error = Some(e.to_string());
        }
    }

    /// Hands the kernel the goroutine layout of Go processes seen for the first
    /// time and, with `--go-states`, attaches their state probes.
    pub(crate) fn poll_go(&mut self, sampler: &mut Sampler) {
        let tracked = self
            .procs
            .poll_go(self.kernel.as_ref().map(|k| &k.processes), &mut || {
                sampler.load_runtime_walks()
            });
        if self.go_sampling_hz > 0 {
            for (pid, _, table) in &tracked {
                self.procs
                    .sample_go_states(*pid, table, self.go_sampling_hz);
            }
        }
        self.poll_native_unwind();
        if self.go_states {
            crate::go::probes::follow(
                &mut self.procs,
                sampler.ebpf_mut(),
                tracked,
                self.go_preattached.as_ref(),
                &mut self.go_states_failed,
            );
        }
    }

    /// One round of `--go-state-sampling`: every sampled Go process's
    /// goroutines read.
    pub(crate) fn sample_goroutines(&mut self) {
        self.procs
            .sample_goroutines(1_000_000_000 / self.go_sampling_hz.max(1));
    }

    /// Counts the waiting samples taken up to `until_ns`, each under a `[gc]` frame
    /// if its process was in a GC pause then.
    pub(crate) fn count_waiting(&mut self, until_ns: u64) {
        while let Some(w) = self.waiting.front()
            && w.time_ns <= until_ns
        {
            let mut w = self.waiting.pop_front().expect("front exists");
            if let Some(p) = self.procs.get_mut(w.pid)
                && let Some(dn) = p.dotnet.as_mut()
                && dn.in_gc(w.time_ns) == Some(true)
            {
                p.gc_samples += 1;
                w.frames.insert(0, FrameRef::Marker(Marker::Gc));
            }
            self.count(w.pid, w.frames, w.weight);
        }
        // Their frames named too: at the end (`u64::MAX`) no drain follows
        // to queue them, and a .NET process that lived less than the GC
        // events' delay would have none named.
        self.submit_fresh();
    }

    /// Queues the frames counted for the first time since the last call
    /// for naming.
    fn submit_fresh(&mut self) {
        let fresh = self.agg.take_fresh();
        if !fresh.is_empty() {
            self.symbolizer.submit(&fresh, &self.procs.modules);
        }
    }

    /// Counts one stack, in the profile and in every tap.
    fn count(&mut self, pid: u32, frames: Vec<FrameRef>, weight: u64) {
        for tap in &mut self.taps {
            tap.add_weighted(pid, frames.clone(), weight);
        }
        self.agg.add_weighted(pid, frames, weight);
    }

    /// Lets go of process `pid` (exited): its rows in the kernel's tables
    /// (native unwind rules, .NET code pages, Go layout) and its .NET state;
    /// its name stays for the stacks not yet folded (see [`Self::forget`]).
    pub(crate) fn retire(&mut self, pid: u32) {
        if let Some(kernel) = &mut self.kernel {
            kernel.unwind.remove_process(pid);
            kernel.dotnet.release(pid);
            let _ = kernel.processes.set_go(pid, None);
        }
        self.procs.retire(pid);
    }

    /// Forgets process `pid` (exited, retired, its stacks folded), so that a
    /// long run's churn of processes leaves nothing behind.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.retire(pid);
        self.fp_baseline.remove(&pid);
        self.procs.forget(pid);
    }
}
