//! `crossprof record`: the pipeline, top to bottom.
//!
//! 1. Check the input (nothing loaded or written on bad input).
//! 2. Load the kernel programs, fill the target set, attach to every CPU, start
//!    the command if there is one (held before `exec` until its pid is a target).
//! 3. Drain the ring buffer on wakeups and every [`DRAIN_EVERY`]: decode, capture
//!    each process at first sight, aggregate, and send new frames for naming.
//! 4. Stop on the duration, a signal, the command's exit, or the last target's exit.
//! 5. Fold, render, and write the outputs atomically, then the summary.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ffi::OsString,
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    process::ExitStatus,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use probe_common::{COUNTER_SLOTS, Counter};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    aggregate::{Aggregator, sample_frames},
    cli::{Format, GroupBy, Mode, RecordArgs},
    decode::{HttpWhat, Record, decode},
    dotnet::{eventpipe::GC_EVENT_DELAY_NS, unwind::KernelTables},
    error::{Error, UsageError},
    fold::write_folded,
    frame::{FrameRef, Marker},
    native::process::ProcessTable,
    preflight::{self, OutputDir},
    render::render_svg,
    sampler::{Sampler, SamplerConfig, register_self_in_child},
    status::Status,
    summary::{CollectorStats, GcSummary, KernelProgramStats, ProcessSummary, Summary},
    symbolize::SymbolizerThread,
    sys::{alive, monotonic_ns},
};

/// How often the ring buffer is drained when the kernel has not woken us (wakeups
/// are batched, see `probe_common::Config::wakeup_bytes`).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// The most time one drain takes records off the ring (see `Pipeline::drain`).
const DRAIN_BUDGET: Duration = Duration::from_millis(25);
/// A process's maps are re-read for new code at most this often.
const MAPS_REREAD_EVERY: Duration = Duration::from_millis(20);
/// How often the processes of a followed tree that ended leave the target
/// set (see [`Sampler::prune_targets`]).
const PRUNE_TARGETS_EVERY: Duration = Duration::from_secs(1);

/// Output file names.
pub const FOLDED_FILE: &str = "profile.folded";
/// See [`FOLDED_FILE`].
pub const SVG_FILE: &str = "flamegraph.svg";
/// See [`FOLDED_FILE`].
pub const SUMMARY_FILE: &str = "summary.json";

/// Why the recording stopped.
#[derive(Debug)]
enum Stop {
    Duration,
    Signal(i32),
    CommandExited(ExitStatus),
    TargetsExited,
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
    off_cpu_us: u64,
    /// Microseconds of goroutine waits counted.
    go_wait_us: u64,
    /// `--timeline`: the events kept for it.
    timeline: Option<crate::timeline::Timeline>,
    /// `--group-by trace`: the requests in flight.
    requests: crate::http::Requests,
    /// `--trace-id`: only what works for this trace is kept.
    only_trace: Option<String>,
    /// `--group-by`: frame levels under the process (and thread).
    group_by: Vec<GroupBy>,
    /// The kernel's entry per process (the Go poll writes the Go part).
    processes: crate::process::ProcessEntries,
    /// `--go-states`: follow goroutine states in Go processes.
    go_states: bool,
    /// Go processes whose states could not be followed: (process, why).
    go_states_failed: Vec<(String, String)>,
    /// The command's Go executable, probed before it started.
    go_preattached: Option<crate::go::probes::Preattached>,
    /// Samples of .NET processes waiting for the GC events of their time.
    waiting: VecDeque<Waiting>,
    /// The kernel's tables for walking .NET stacks.
    dotnet_tables: KernelTables,
    /// The kernel's `.eh_frame` tables for native code.
    pub(crate) unwind_tables: crate::native::unwind::UnwindTables,
    /// The first failure to update them, reported once.
    unwind_tables_error: Option<String>,
    /// `--frame-pointers-only`: no rules given to the kernel.
    frame_pointers_only: bool,
    /// The first failure to update them, reported once.
    dotnet_tables_error: bool,
    /// The frame-pointer baseline: per process, the outermost frames a
    /// frame-pointer walk of the same stacks reached (one sample in
    /// `FP_BASELINE_EVERY` of those walked by rules).
    fp_baseline: HashMap<u32, HashMap<FrameRef, u64>>,
    /// Aggregators every counted stack also goes to (the agent's on-demand
    /// captures).
    pub(crate) taps: Vec<Aggregator>,
    /// Processes that mapped new code, whose maps are still to be re-read.
    maps_pending: std::collections::BTreeSet<u32>,
}

impl Pipeline {
    /// The pipeline of a recording with `args`, over the kernel's tables.
    pub(crate) fn new(
        args: &RecordArgs,
        procs: ProcessTable,
        processes: crate::process::ProcessEntries,
        dotnet_tables: KernelTables,
        unwind_tables: crate::native::unwind::UnwindTables,
        go_states_failed: Vec<(String, String)>,
        go_preattached: Option<crate::go::probes::Preattached>,
    ) -> Self {
        Pipeline {
            symbolizer: SymbolizerThread::spawn(
                args.debug_dirs.clone(),
                procs.modules.go.clone(),
                args.debuginfod
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
            per_thread: args.per_thread || args.mode == Mode::Wall,
            mode: args.mode,
            cpu_weight: match args.mode {
                Mode::Wall => (1_000_000 / args.freq.max(1)).max(1),
                _ => 1,
            },
            off_cpu_us: 0,
            go_wait_us: 0,
            timeline: args
                .timeline
                .then(|| crate::timeline::Timeline::new(monotonic_ns(), args.freq)),
            requests: crate::http::Requests::new(
                args.slow_ms.map_or(0, |ms| ms.saturating_mul(1_000_000)),
            ),
            only_trace: args.trace_id.clone(),
            group_by: args.group_by.clone(),
            processes,
            go_states: args.go_states || args.go_waits(),
            go_states_failed,
            go_preattached,
            waiting: VecDeque::new(),
            dotnet_tables,
            dotnet_tables_error: false,
            unwind_tables,
            unwind_tables_error: None,
            frame_pointers_only: args.frame_pointers_only,
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
    pub(crate) fn drain(&mut self, events: &mut RingBuf<MapData>) {
        let mut maps_changed = std::mem::take(&mut self.maps_pending);
        // At most DRAIN_BUDGET of records per call: whatever the rate they
        // come at (a whole-system recording at 100 kHz), the event loop gets
        // back to its signals, deadline and timers; records left in the ring
        // wait for the next drain (and a full ring drops and counts them).
        let budget = Instant::now() + DRAIN_BUDGET;
        let mut taken = 0u32;
        while let Some(item) = events.next() {
            self.drain_record(&item, &mut maps_changed);
            taken += 1;
            if taken.is_multiple_of(64) && Instant::now() >= budget {
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
        let fresh = self.agg.take_fresh();
        if !fresh.is_empty() {
            self.symbolizer.submit(&fresh, &self.procs.modules);
        }
        self.symbolizer.poll();
    }

    /// Takes one record off the ring.
    fn drain_record(&mut self, item: &[u8], maps_changed: &mut std::collections::BTreeSet<u32>) {
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
                    let p = self.procs.get_or_capture(sample.pid, &sample.comm_str());
                    p.samples += 1;
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
                        let reasons = self
                            .procs
                            .get(sample.pid)
                            .and_then(|p| p.go.states.as_ref())
                            .map(|t| t.reasons.as_slice())
                            .unwrap_or_default();
                        let name = crate::go::states::reason_name(reasons, b.reason);
                        let wait = format!("[wait: {name}]");
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
                    let go = self.procs.get(sample.pid).is_some_and(|p| p.go.tracked);
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
                            _ if !go => continue,
                            GroupBy::Goroutine => FrameRef::Goroutine(sample.goid),
                            GroupBy::Label(key) => {
                                self.procs.label_frame(sample.pid, sample.go_labels, key)
                            }
                            GroupBy::State => self.procs.text_frame(
                                crate::go::states::status_text(sample.goid, sample.go_status),
                            ),
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
                    if let Some(t) = self.procs.get_mut(pid).and_then(|p| p.go.states.as_mut()) {
                        t.ended.push(g);
                    }
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
        if let Err(e) = self.procs.poll_dotnet_unwind(&mut self.dotnet_tables)
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
            && let Err(e) = self.procs.poll_native_unwind(&mut self.unwind_tables)
            && self.unwind_tables_error.is_none()
        {
            log::warn!("{e}");
            self.unwind_tables_error = Some(e.to_string());
        }
    }

    /// Hands the kernel the goroutine layout of Go processes seen for the first
    /// time and, with `--go-states`, attaches their state probes.
    pub(crate) fn poll_go(&mut self, sampler: &mut Sampler) {
        let tracked = self.procs.poll_go(&self.processes);
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
        self.unwind_tables.remove_process(pid);
        self.dotnet_tables.release(pid);
        let _ = self.processes.set_go(pid, None);
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

/// Runs `crossprof record`; returns the exit status crossprof should end with.
pub async fn record(mut args: RecordArgs) -> Result<i32, Error> {
    // One request's profile: wall-clock time, by trace.
    if args.trace_id.is_some() || args.slow_ms.is_some() {
        if args.mode == Mode::Cpu {
            args.mode = Mode::Wall;
        }
        if !args.group_by.contains(&GroupBy::Trace) {
            args.group_by.insert(0, GroupBy::Trace);
        }
    }
    // 1. Input.
    // `record --` and nothing: clap gives an empty command, as for no `--` at
    // all (the whole system); the user meant a command.
    if args.command.is_empty() && std::env::args_os().last().is_some_and(|a| a == "--") {
        return Err(UsageError::NoCommand.into());
    }
    preflight::check_duration(args.duration)?;
    preflight::check_freq(args.freq)?;
    preflight::check_debug_dirs(&args.debug_dirs)?;
    preflight::check_debuginfod(args.debuginfod)?;
    if args.kernel_waits && !matches!(args.mode, Mode::Offcpu | Mode::Wall) {
        return Err(UsageError::KernelWaits.into());
    }
    preflight::check_privileges()?;
    preflight::check_pid_namespace()?;
    let kernel = preflight::check_kernel(kernel_needs(&args), &kernel_request(&args))?;
    if kernel.plan.walk == crate::kernel::Walk::FramePointers {
        args.frame_pointers_only = true;
    }
    let pids = preflight::resolve_pids(&args.pids)?;
    let program = match args.command.first() {
        Some(p) => Some(preflight::resolve_command(p)?),
        None => None,
    };
    // --container: its threads, selected in the kernel by cgroup.
    let select = Select {
        skip_self: !args.containers.is_empty(),
        comms: Vec::new(),
        cgroups: crate::containers::container_cgroups(&args.containers)
            .collect::<Result<_, _>>()?,
    };
    let out = OutputDir::prepare(&args.output)?;
    raise_fd_limit();

    let started = match start(&args, &pids, program.as_deref(), &select, kernel).await {
        Ok(s) => s,
        Err(e) => {
            out.discard();
            return Err(e);
        }
    };
    run(args, pids, started, out).await
}

/// What a run with `args` asks of the kernel.
pub(crate) fn kernel_needs(args: &RecordArgs) -> crate::kernel::Needs {
    crate::kernel::Needs {
        on_cpu: matches!(args.mode, Mode::Cpu | Mode::Wall),
        off_cpu: args.off_cpu(),
        go_probes: args.go_states || args.go_waits(),
        http: args.group_by.contains(&GroupBy::Trace),
    }
}

/// How a refusal names a run with `args`: `--mode offcpu --group-by trace`.
pub(crate) fn kernel_request(args: &RecordArgs) -> String {
    let mut parts = vec![format!(
        "--mode {}",
        match args.mode {
            Mode::Cpu => "cpu",
            Mode::Offcpu => "offcpu",
            Mode::Wall => "wall",
            Mode::Goblock => "goblock",
        }
    )];
    if args.go_states {
        parts.push("--go-states".into());
    }
    if args.group_by.contains(&GroupBy::Trace) {
        parts.push("--group-by trace".into());
    }
    parts.join(" ")
}

/// How long sampling a running .NET target waits for its perf map (see `run`).
const DOTNET_ATTACH_WAIT: Duration = Duration::from_secs(2);

/// What the agent selects beyond `--pid`.
#[derive(Debug, Default)]
pub(crate) struct Select {
    /// Never sample crossprof itself.
    pub(crate) skip_self: bool,
    /// Process names whose `exec` makes a target (`--comm`).
    pub(crate) comms: Vec<String>,
    /// Cgroup (v2) ids whose threads are targets (`--cgroup`).
    pub(crate) cgroups: Vec<u64>,
}

pub(crate) struct Started {
    pub(crate) sampler: Sampler,
    pub(crate) events: RingBuf<MapData>,
    pub(crate) dotnet_tables: KernelTables,
    pub(crate) unwind_tables: crate::native::unwind::UnwindTables,
    pub(crate) processes: crate::process::ProcessEntries,
    pub(crate) procs: ProcessTable,
    pub(crate) go_preattached: Result<Option<crate::go::probes::Preattached>, String>,
    pub(crate) child: Option<tokio::process::Child>,
    pub(crate) sigint: tokio::signal::unix::Signal,
    pub(crate) sigterm: tokio::signal::unix::Signal,
    /// The kernel, and how stacks are walked on it.
    pub(crate) kernel: preflight::KernelPlan,
}

/// Do the processes the targets start become targets? A command's, unless
/// `--no-children`; running processes' (`--pid`), with `--children`.
pub(crate) fn follows_children(args: &RecordArgs, pids: &[u32], has_command: bool) -> bool {
    (has_command && !args.no_children) || (!pids.is_empty() && args.children)
}

// 2. Kernel side and command.
pub(crate) async fn start(
    args: &RecordArgs,
    pids: &[u32],
    program: Option<&std::path::Path>,
    select: &Select,
    kernel: preflight::KernelPlan,
) -> Result<Started, Error> {
    let has_command = program.is_some();
    let io = |what| move |source| Error::Io { what, source };
    // Signals first: a Ctrl-C from here on stops the recording instead of killing it.
    let sigint = signal(SignalKind::interrupt()).map_err(io("install the SIGINT handler"))?;
    let sigterm = signal(SignalKind::terminate()).map_err(io("install the SIGTERM handler"))?;

    let mut sampler = Sampler::load(SamplerConfig {
        freq: args.freq,
        filter_pids: !pids.is_empty()
            || has_command
            || !select.comms.is_empty()
            || !select.cgroups.is_empty(),
        include_idle: args.include_idle,
        go_states: args.go_states || args.go_waits(),
        on_cpu: matches!(args.mode, Mode::Cpu | Mode::Wall),
        off_cpu: args.off_cpu(),
        min_block_ns: args.min_block.saturating_mul(1000),
        min_go_wait_ns: args.min_go_wait().saturating_mul(1000),
        go_block: args.go_waits(),
        http: args.group_by.contains(&GroupBy::Trace),
        off_cpu_kernel: args.kernel_waits,
        skip_self: select.skip_self,
        filter_cgroups: !select.cgroups.is_empty(),
        select_comms: !select.comms.is_empty(),
        follow_children: follows_children(args, pids, has_command),
        walk: kernel.plan.walk,
    })?;
    for &pid in pids {
        sampler.add_target(pid)?;
    }
    for comm in &select.comms {
        sampler.select_comm(comm)?;
    }
    for &id in &select.cgroups {
        sampler.select_cgroup(id)?;
    }
    let events = sampler.take_events()?;
    let processes = sampler.take_processes()?;
    let dotnet_tables = sampler.take_dotnet_tables(&processes)?;
    let mut unwind_tables = sampler.take_unwind_tables(&processes)?;
    // A command is sampled from its exec on. Running targets (--pid) and the
    // whole system are sampled once the targets' unwind rules are in (see
    // `run`): their first samples are not walked without them.
    if has_command {
        sampler.attach()?;
    }
    // Without them, new libraries get their rules when a sample first lands
    // in them (one maps re-read, rate-limited): a few stacks short meanwhile.
    if !args.frame_pointers_only
        && let Err(e) = sampler.attach_mmap_tracepoints()
    {
        log::warn!("{e}: libraries loaded while recording are unwound from their first samples on");
    }
    for &pid in pids {
        if !alive(pid) {
            return Err(UsageError::PidExited(pid).into());
        }
    }
    let mut procs = ProcessTable::default();
    // Source lines of .NET methods are for the pprof output.
    procs.dotnet_lines = args.formats.contains(&Format::Pprof);
    let go_preattached = match program {
        Some(exe) if args.go_states || args.go_waits() => {
            crate::go::probes::preattach(sampler.ebpf_mut(), &procs, exe)
        }
        _ => Ok(None),
    };
    let child = if has_command {
        // The objects the command will load have their rules read first: once
        // it has exec'd, only its mappings are left to write (see
        // `native::loader`). At most PREFETCH_WAIT: a huge library is read
        // while the command runs, as for any process.
        if let Some(exe) = program
            && !args.frame_pointers_only
        {
            let library_path = std::env::var("LD_LIBRARY_PATH").ok();
            let objects = crate::native::loader::objects_loaded_by(exe, library_path.as_deref());
            let read = unwind_tables.prefetch(&objects, |p| procs.modules.go.get(p), PREFETCH_WAIT);
            log::debug!(
                "unwind rules of {read} of {} objects read before the command started",
                objects.len()
            );
        }
        // A Go command's goroutine layout goes into the kernel from the child
        // itself, before exec: its first samples carry their goroutine (and
        // trace) as later ones do, however long reading its binary takes.
        let go = program.and_then(|exe| crate::go::table::offsets_before_exec(&procs, exe));
        let go = go.map(|offsets| (processes.fd(), offsets));
        Some(spawn_registered(&args.command, &sampler, go)?)
    } else {
        None
    };
    Ok(Started {
        sampler,
        events,
        dotnet_tables,
        unwind_tables,
        processes,
        procs,
        go_preattached,
        child,
        sigint,
        sigterm,
        kernel,
    })
}

/// How long a command's start waits for the rules of the objects it will
/// load to be read.
const PREFETCH_WAIT: Duration = Duration::from_secs(2);

/// Starts `command`; the child puts its own pid in the target set (and, with
/// `go`, its goroutine offsets in the kernel's Go table) between `fork` and
/// `exec`, so not one sample of it is missed.
fn spawn_registered(
    command: &[OsString],
    sampler: &Sampler,
    go: Option<(std::os::fd::RawFd, probe_common::go::GoOffsets)>,
) -> Result<tokio::process::Child, Error> {
    let targets_fd = sampler.targets_fd();
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only issues the bpf(2) syscall (async-signal-safe) on
    // memory of its own stack and copied plain data.
    unsafe {
        cmd.pre_exec(move || register_self_in_child(targets_fd, go));
    }
    let child = cmd.spawn().map_err(|e| -> Error {
        UsageError::Spawn {
            command: command[0].to_string_lossy().into_owned(),
            reason: e.to_string(),
        }
        .into()
    })?;
    if let Some(pid) = child.id() {
        crate::crash::started(pid);
    }
    Ok(child)
}

/// The root levels of process `pid`'s stacks, outermost first: its name,
/// under its container (`container <12 digits>`, under `pod <uid>` for a
/// Kubernetes pod's; `[host]` for none) with `by_container`.
pub(crate) fn roots_of(procs: &ProcessTable, pid: u32, by_container: bool) -> Vec<String> {
    let name = procs.name_of(pid);
    if !by_container {
        return vec![name];
    }
    match procs.get(pid).and_then(|p| p.container.as_deref()) {
        Some(c) => {
            let id = c.id.get(..12).unwrap_or(&c.id);
            let mut levels: Vec<String> = c.pod_uid.iter().map(|u| format!("pod {u}")).collect();
            levels.push(format!("container {id}"));
            levels.push(name);
            levels
        }
        None => vec!["[host]".to_owned(), name],
    }
}

/// Waits (at most 30 ms) for a command that has just started to have mapped its
/// libraries — its maps unchanged over 3 ms — so that the kernel gets their
/// unwind rules before their code runs much.
fn settle_maps(pid: u32) {
    let read = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut last = read();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(3));
        let now = read();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Each mapped file is held open (see `native::process`): make room for many.
pub(crate) fn raise_fd_limit() {
    // SAFETY: get/setrlimit on a valid local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// 3-5.
async fn run(
    args: RecordArgs,
    pids: Vec<u32>,
    started: Started,
    out: OutputDir,
) -> Result<i32, Error> {
    let Started {
        mut sampler,
        events,
        dotnet_tables,
        unwind_tables,
        processes,
        procs,
        go_preattached,
        mut child,
        mut sigint,
        mut sigterm,
        kernel,
    } = started;
    let mut logger = sampler.take_logger();
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, for as long
    // as the AsyncFd holds it.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| Error::Io {
            what: "poll the ring buffer",
            source: std::io::Error::from(e),
        })?;
    let (go_preattached, go_states_failed) = match go_preattached {
        Ok(pre) => (pre, Vec::new()),
        Err(why) => (None, vec![(title(&args, &pids), why)]),
    };
    let mut pipeline = Pipeline::new(
        &args,
        procs,
        processes,
        dotnet_tables,
        unwind_tables,
        go_states_failed,
        go_preattached,
    );
    // Known targets are read now, not at their first sample: the kernel gets
    // their unwind rules and Go layouts (and their goroutine states are followed)
    // from the start. (A .NET runtime is found when its maps are re-read.)
    for pid in pids
        .iter()
        .copied()
        .chain(child.as_ref().and_then(|c| c.id()))
    {
        pipeline.procs.get_or_capture(pid, "[exited]");
    }
    pipeline.poll_go(&mut sampler);
    // A command just started has only its executable and the dynamic loader
    // mapped: read it again once its libraries are there.
    if let Some(pid) = child.as_ref().and_then(|c| c.id()) {
        settle_maps(pid);
        pipeline.procs.recapture(pid);
        pipeline.poll_go(&mut sampler);
    }
    if child.is_none() {
        // A running .NET target's JIT code is walked by the frame shapes
        // read from its perf map, which the runtime writes once asked (over
        // its diagnostics socket, on a thread): sampling starts once they are
        // in the kernel, or its first samples in frameless methods lose their
        // callers. At most 2 s; the duration counts from the attach.
        let wait = Instant::now();
        if pipeline.procs.dotnet_pending(&pids) {
            while pipeline.procs.dotnet_pending(&pids) && wait.elapsed() < DOTNET_ATTACH_WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Past the shapes' own rate limit (50 ms), so that this poll reads
            // the map the runtime has just started writing.
            tokio::time::sleep(Duration::from_millis(60)).await;
            pipeline.poll_dotnet_unwind_now();
        }
        sampler.attach()?;
    }
    let mut status = Status::new(args.quiet);
    let start = Instant::now();
    let started_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let cpu_at_start = CollectorStats::cpu_now();
    let deadline = args.duration.and_then(|d| {
        tokio::time::Instant::now().checked_add(Duration::try_from_secs_f64(d).ok()?)
    });
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);

    let rules_read = pipeline.unwind_tables.rules_read();
    // Following a process tree: the kernel adds processes as they start;
    // the ones that ended are taken out once a second.
    let follows = follows_children(&args, &pids, child.is_some());
    let mut last_prune = Instant::now();
    let stop = loop {
        tokio::select! {
            // A file's unwind rules were read (off this loop): place them now.
            () = rules_read.notified() => pipeline.poll_go(&mut sampler),
            guard = events.readable_mut() => {
                if let Ok(mut guard) = guard {
                    pipeline.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                pipeline.poll_go(&mut sampler);
            }
            _ = tick.tick() => {
                pipeline.drain(events.get_mut());
                pipeline.poll_go(&mut sampler);
                if let Some(l) = logger.as_mut() { l.flush(); }
                let lost = drops(&sampler.counters()) + pipeline.decode_errors;
                status.update(start.elapsed(), pipeline.agg.samples, lost);
                if !pids.is_empty() && child.is_none() && !pids.iter().any(|&p| alive(p)) {
                    break Stop::TargetsExited;
                }
                if follows && last_prune.elapsed() >= PRUNE_TARGETS_EVERY {
                    last_prune = Instant::now();
                    sampler.prune_targets();
                }
            }
            () = &mut until_deadline => break Stop::Duration,
            _ = sigint.recv() => break Stop::Signal(libc::SIGINT),
            _ = sigterm.recv() => break Stop::Signal(libc::SIGTERM),
            exit = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                match exit {
                    Ok(st) => break Stop::CommandExited(st),
                    Err(_) => break Stop::CommandExited(ExitStatus::from_raw(1 << 8)),
                }
            }
        }
    };
    if matches!(stop, Stop::CommandExited(_)) {
        crate::crash::ended(); // reaped: its pid may be another's now
    }
    let stopped_at = Instant::now();
    // RUST_LOG=debug: how long each step after the stop takes (the stop must
    // be honoured within a second under any load, issue #18).
    let phase = |what: &str| log::debug!("stop +{:?}: {what}", stopped_at.elapsed());
    phase(&format!(
        "{stop:?}, {:?} after the start",
        stopped_at - start
    ));
    let recording_cpu = CollectorStats::cpu_now() - cpu_at_start;
    let duration = stopped_at - start;
    status.clear();

    // What the kernel counted, then whatever is still in flight.
    let counters = sampler.counters();
    let program_stats = sampler.program_stats();
    let go_program_stats = crate::go::probes::program_stats(sampler.ebpf());
    let http_program_stats = sampler.http_program_stats();
    pipeline.drain(events.get_mut());
    phase("last drain");
    let end_ns = monotonic_ns();
    // Every goroutine from the processes' own lists first, then the kernel's
    // table: one that changes between the two reads is in the table.
    let all_gs: Vec<(u32, Vec<(u64, probe_common::go::Goroutine)>)> = pipeline
        .procs
        .iter()
        .filter_map(|p| {
            let t = p.go.states.as_ref()?;
            let all =
                crate::go::states::all_goroutines(p.pid, t.allgs?, t.layout.as_ref()?, t.since_ns);
            Some((p.pid, all))
        })
        .collect();
    let mut seen: BTreeMap<u32, std::collections::HashMap<u64, usize>> = BTreeMap::new();
    for (pid, g_addr, g) in crate::go::probes::live_goroutines(sampler.ebpf()) {
        if let Some(t) = pipeline
            .procs
            .get_mut(pid)
            .and_then(|p| p.go.states.as_mut())
        {
            seen.entry(pid).or_default().insert(g_addr, t.live.len());
            t.live.push(g);
        }
    }
    for (pid, all) in all_gs {
        if let Some(t) = pipeline
            .procs
            .get_mut(pid)
            .and_then(|p| p.go.states.as_mut())
        {
            t.add_unseen(all, &seen.remove(&pid).unwrap_or_default());
        }
    }
    for p in pipeline.procs.iter_mut() {
        if let Some(t) = p.go.states.as_mut() {
            t.end_ns = end_ns;
        }
    }
    drop(events);
    sampler.detach_mmap_tracepoints_in_background();
    // Every figure was read from it: its programs detach while the profile
    // is written.
    sampler.detach_in_background();
    pipeline.procs.release_dotnet(); // ends GC event sessions: every pause is known
    pipeline.count_waiting(u64::MAX);
    phase("detached, .NET sessions ended");
    if let Some(l) = logger.as_mut() {
        l.flush();
    }

    // A command still running is asked to stop the way crossprof was.
    let mut command_status = match &stop {
        Stop::CommandExited(st) => Some(*st),
        _ => None,
    };
    if let Some(c) = child.as_mut()
        && command_status.is_none()
        && let Some(pid) = c.id()
    {
        let sig = match stop {
            Stop::Signal(s) => s,
            _ => libc::SIGTERM,
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, sig) };
    }

    // Names for the last frames, then fold and render.
    let Pipeline {
        procs,
        agg,
        mut symbolizer,
        decode_errors,
        per_thread: _,
        mode: _,
        cpu_weight: _,
        off_cpu_us,
        go_wait_us,
        timeline,
        requests,
        only_trace: _,
        group_by: _,
        processes: _,
        go_states: _,
        go_states_failed,
        go_preattached: _,
        waiting: _,
        dotnet_tables: _,
        dotnet_tables_error: _,
        unwind_tables,
        unwind_tables_error,
        frame_pointers_only: _,
        fp_baseline,
        taps: _,
        maps_pending: _,
    } = pipeline;
    // The command's status first: a failure to write the outputs still
    // reports it.
    if let Some(c) = child.as_mut()
        && command_status.is_none()
    {
        command_status = c.wait().await.ok();
    }
    crate::crash::ended();
    let command_exit_status = command_status.map(exit_code);
    // A failed write (a full disk) takes back what was written: outputs are
    // whole or absent.
    let failed = |e: Error| out.abandon(e, command_exit_status);
    symbolizer.finish();
    phase("every frame named");
    let names = &symbolizer.names;
    let by_container = args.group_by.contains(&GroupBy::Container);
    let folded = crate::fold::fold_under(
        agg.stacks(),
        |pid| roots_of(&procs, pid, by_container),
        names,
        &procs,
    );
    if args.formats.contains(&Format::Folded) {
        out.write_atomic(FOLDED_FILE, |w| write_folded(&folded, w))
            .map_err(failed)?;
    }
    if args.formats.contains(&Format::Pprof) {
        let kind = crate::pprof::Kind::of(&args);
        let span = crate::pprof::Span {
            start_unix_ns: started_unix_ns,
            duration_ns: (stopped_at - start).as_nanos() as i64,
        };
        let profile = crate::pprof::build(
            agg.stacks(),
            names,
            &procs,
            &mut crate::pprof::BuildIds::default(),
            kind,
            span,
        );
        out.write_atomic(crate::pprof::FILE, |w| {
            w.write_all(&crate::pprof::gzip(&profile))
        })
        .map_err(failed)?;
    }
    let complete = crate::fold::completeness(agg.stacks(), names, &procs);
    // Per process: (rooted, walked) of the frame-pointer walks of the same run.
    let fp_complete: HashMap<u32, (u64, u64)> = fp_baseline
        .iter()
        .map(|(&pid, frames)| {
            let rooted = frames
                .iter()
                .filter(|(f, _)| crate::fold::frame_is_root(**f, names, &procs))
                .map(|(_, n)| n)
                .sum();
            (pid, (rooted, frames.values().sum()))
        })
        .collect();
    let lost = drops(&counters) + decode_errors;
    let title = title(&args, &pids);
    let subtitle = match args.mode {
        Mode::Cpu => format!(
            "{} samples at {} Hz over {:.1} s, {} lost",
            agg.samples,
            args.freq,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Offcpu => format!(
            "off-CPU time in µs: {:.3} s in {} spans of {} µs or more over {:.1} s, {} lost",
            off_cpu_us as f64 / 1e6,
            agg.samples,
            args.min_block,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Wall => format!(
            "wall-clock time in µs per thread (and goroutine): on-CPU samples at {} Hz, off-CPU spans and goroutine waits over {:.1} s, {} lost",
            args.freq,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Goblock => format!(
            "goroutine waits in µs: {:.3} s in {} waits of {} µs or more over {:.1} s, {} lost",
            go_wait_us as f64 / 1e6,
            agg.samples,
            args.min_go_wait(),
            duration.as_secs_f64(),
            lost
        ),
    };
    let count_name = if args.mode == Mode::Cpu {
        "samples"
    } else {
        "µs"
    };
    if args.formats.contains(&Format::Speedscope) {
        let unit = if args.mode == Mode::Cpu {
            "none"
        } else {
            "microseconds"
        };
        // One profile per process: stacks folded per pid (the folded file
        // merges processes of one name).
        let profiles: Vec<(String, crate::fold::Folded)> = crate::fold::fold_by_process(
            agg.stacks(),
            |pid| vec![procs.name_of(pid)],
            names,
            &procs,
        )
        .into_iter()
        .map(|(pid, folded)| (format!("{} ({pid})", procs.name_of(pid)), folded))
        .collect();
        out.write_atomic(crate::speedscope::FILE, |w| {
            crate::speedscope::write(&profiles, &title, unit, w)
        })
        .map_err(failed)?;
    }
    let svg = if args.formats.contains(&Format::Svg) {
        out.write_atomic(SVG_FILE, |w| {
            render_svg(&folded, &title, &subtitle, count_name, w)
        })
        .map_err(failed)?
    } else {
        args.output.clone()
    };
    let stop_to_svg = stopped_at.elapsed();

    let mut procs = procs;
    let go_versions: BTreeMap<u32, String> = procs
        .iter()
        .filter(|p| (p.samples > 0 || p.go.states.is_some()) && p.dotnet.is_none())
        .map(|p| p.pid)
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|pid| Some((pid, procs.go_version(pid)?)))
        .collect();
    let mut processes: Vec<ProcessSummary> = procs
        .iter()
        .filter(|p| p.samples > 0 || p.go.states.is_some())
        .map(|p| ProcessSummary {
            pid: p.pid,
            comm: p.name.to_string(),
            exe: p.exe.clone(),
            container_id: p.container.as_ref().map(|c| c.id.clone()),
            pod_uid: p.container.as_ref().and_then(|c| c.pod_uid.clone()),
            samples: p.samples,
            runtime: p
                .dotnet
                .as_ref()
                .map(|d| format!("dotnet {}", d.runtime.version))
                .or_else(|| go_versions.get(&p.pid).map(|v| v.replacen("go", "go ", 1))),
            goroutine_layout: p
                .go
                .tracked
                .then(|| procs.go_exe_table(p.pid))
                .flatten()
                .and_then(|t| crate::go::layout(&t))
                .map(|l| if l.from_dwarf { "dwarf" } else { "table" }),
            gc: p
                .dotnet
                .as_ref()
                .and_then(|d| d.gc_stats())
                .map(|g| GcSummary {
                    collections: g.collections,
                    pauses: g.pauses,
                    pause_ms: g.pause_ms,
                    samples: p.gc_samples,
                    share: p.gc_samples as f64 / p.samples.max(1) as f64,
                }),
            stacks_complete: complete.get(&p.pid).and_then(share),
            stacks_complete_frame_pointers: fp_complete.get(&p.pid).and_then(share),
            goroutines: p.go.states.as_ref().map(|t| {
                crate::go::states::summarize(
                    t,
                    |addr, leaf| procs.go_function(p.pid, addr, leaf),
                    |addr| procs.go_start_function(p.pid, addr),
                )
            }),
        })
        .collect();
    processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    let notes: Vec<String> = procs
        .iter()
        .filter(|p| p.samples > 0)
        .filter_map(|p| p.dotnet.as_ref().map(|d| d.notes(&p.name)))
        .flatten()
        .chain(procs.iter().filter(|p| p.samples > 0).filter_map(|p| {
            let version = p.go.note.as_ref()?;
            Some(format!(
                "{} (pid {}) runs {version}, whose goroutine layout crossprof does not know (it knows go1.19 to go1.27): its samples carry no goroutine",
                p.name, p.pid
            ))
        }))
        .chain(kernel.note())
        .chain({
            let lost = counters[probe_common::Counter::ChildrenLost as usize];
            (lost > 0).then(|| {
                format!(
                    "{lost} processes started by the targets were not profiled: the kernel's target set is full ({} processes)",
                    probe_common::MAX_TARGETS
                )
            })
        })
        .chain(unwind_tables_error)
        .chain(go_states_failed.into_iter().map(|(process, why)| {
            format!("{process}: goroutine states not followed: {why}")
        }))
        .chain(procs.modules.go.errors().into_iter().map(|(module, why)| {
            format!(
                "{module}: {why}: its Go frames are named from ELF symbols only, [{module}+0x...] where it has none"
            )
        }))
        .collect();
    if let Some(t) = &timeline {
        let gc: BTreeMap<u32, Vec<(u64, u64)>> = procs
            .iter()
            .filter_map(|p| {
                let stats = p.dotnet.as_ref()?.gc_stats()?;
                Some((p.pid, stats.pause_spans.clone()))
            })
            .collect();
        let trace = t.to_json(names, &procs, |pid| procs.name_of(pid), &gc);
        out.write_atomic(crate::timeline::FILE, |w| {
            serde_json::to_writer(&mut *w, &trace)?;
            writeln!(w)
        })
        .map_err(failed)?;
    }
    let summary = Summary {
        timeline_events_dropped: timeline.as_ref().map(|t| t.dropped),
        slow_requests: args.slow_ms.map(|_| requests.slow.clone()),
        http_requests: args.group_by.contains(&GroupBy::Trace).then(|| {
            BTreeMap::from([
                ("traced", requests.traced),
                ("untraced", requests.untraced),
                ("partial", requests.partial),
                ("overflow", requests.overflow),
                ("sent", requests.sent),
                ("inherited", requests.inherited),
                ("causes_dropped", requests.causes_dropped),
            ])
        }),
        mode: match args.mode {
            Mode::Cpu => "cpu",
            Mode::Offcpu => "offcpu",
            Mode::Wall => "wall",
            Mode::Goblock => "goblock",
        },
        off_cpu_us: args.off_cpu().then_some(off_cpu_us),
        go_wait_us: args.go_waits().then_some(go_wait_us),
        duration_secs: duration.as_secs_f64(),
        frequency_hz: args.freq,
        kernel: kernel.summary(),
        samples: agg.samples,
        lost,
        decode_errors,
        counters: Counter::ALL
            .iter()
            .map(|&c| (c.name(), counters[c as usize]))
            .collect::<BTreeMap<_, _>>(),
        distinct_stacks: agg.distinct(),
        unnamed_frames: names.unnamed,
        processes,
        collector: CollectorStats::now(recording_cpu),
        kernel_program: program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        stacks_complete: share(&total(complete.values())),
        frame_pointer_baseline: {
            let counts = total(fp_complete.values());
            share(&counts).map(|stacks_complete| crate::summary::FpBaseline {
                samples: counts.1,
                stacks_complete,
            })
        },
        unwind_table_rows: unwind_tables.rows_written,
        unwind_rows_freed: unwind_tables.rows_freed,
        unwind_files_refused: unwind_tables.files_refused,
        unwind_objects: unwind_tables
            .objects()
            .into_iter()
            .map(|(path, rows, pages)| crate::summary::UnwindObject {
                path,
                rows,
                bytes: u64::from(rows) * size_of::<probe_common::native::UnwindRow>() as u64
                    + u64::from(pages) * size_of::<probe_common::native::UnwindPage>() as u64,
            })
            .collect(),
        go_state_probes: go_program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        http_program: http_program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        transitions: folded.edges.clone(),
        stop_to_svg_ms: stop_to_svg.as_secs_f64() * 1e3,
        command_exit_status,
        notes,
    };
    out.write_atomic(SUMMARY_FILE, |w| {
        serde_json::to_writer_pretty(&mut *w, &summary)?;
        writeln!(w)
    })
    .map_err(failed)?;

    if args.only_transitions {
        crate::kinds::write_edges(&summary.transitions, &mut std::io::stdout().lock()).map_err(
            |source| Error::Write {
                path: "stdout".into(),
                source,
            },
        )?;
    }
    if args.off_cpu() {
        eprintln!(
            "crossprof: {:.3} s off-CPU in {} spans of {} µs or more",
            off_cpu_us as f64 / 1e6,
            counters[Counter::OffCpuSpans as usize]
                .saturating_sub(counters[Counter::OffCpuShort as usize]),
            args.min_block
        );
    }
    if args.go_waits() && go_wait_us > 0 {
        eprintln!(
            "crossprof: {:.3} s of goroutine waits in {} waits of {} µs or more",
            go_wait_us as f64 / 1e6,
            counters[Counter::GoBlocks as usize],
            args.min_go_wait()
        );
    }
    eprintln!(
        "crossprof: {} samples ({} lost) from {} process{} in {:.1} s at {} Hz -> {}",
        summary.samples,
        lost,
        summary.processes.len(),
        if summary.processes.len() == 1 {
            ""
        } else {
            "es"
        },
        summary.duration_secs,
        args.freq,
        svg.display()
    );
    if let (Some(complete), Some(fp)) = (summary.stacks_complete, &summary.frame_pointer_baseline) {
        eprintln!(
            "crossprof: stacks complete: {:.1}% (frame pointers only, same run, {} samples: {:.1}%)",
            complete * 100.0,
            fp.samples,
            fp.stacks_complete * 100.0
        );
    }
    for note in &summary.notes {
        eprintln!("crossprof: note: {note}");
    }
    if summary.samples == 0 {
        eprintln!(
            "crossprof: note: no samples: the target{} did not run on a CPU while recording",
            if pids.len() > 1 { "s" } else { "" }
        );
    }
    if lost > 0 {
        eprintln!(
            "crossprof: note: {lost} samples were lost ({}); see summary.json",
            lost_breakdown(&counters, decode_errors)
        );
    }
    Ok(command_exit_status.unwrap_or(0))
}

/// What the lost samples were, each cause that lost any: `12 ring buffer
/// full, 3 while the CPU's buffer was taken`.
pub(crate) fn lost_breakdown(counters: &[u64; COUNTER_SLOTS as usize], undecodable: u64) -> String {
    let mut parts: Vec<String> = Counter::ALL
        .iter()
        .filter(|c| c.is_drop())
        .filter(|&&c| counters[c as usize] > 0)
        .map(|&c| format!("{} {}", counters[c as usize], c.lost_as()))
        .collect();
    if undecodable > 0 {
        parts.push(format!("{undecodable} undecodable"));
    }
    parts.join(", ")
}

pub(crate) fn drops(counters: &[u64; COUNTER_SLOTS as usize]) -> u64 {
    Counter::ALL
        .iter()
        .filter(|c| c.is_drop())
        .map(|&c| counters[c as usize])
        .sum()
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(st: ExitStatus) -> i32 {
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn title(args: &RecordArgs, pids: &[u32]) -> String {
    if !args.command.is_empty() {
        let cmd: Vec<_> = args.command.iter().map(|a| a.to_string_lossy()).collect();
        format!("crossprof: {}", cmd.join(" "))
    } else if !pids.is_empty() || !args.containers.is_empty() {
        let p = pids.iter().map(|p| format!("pid {p}"));
        let c = args.containers.iter().map(|c| format!("container {c}"));
        format!("crossprof: {}", p.chain(c).collect::<Vec<_>>().join(", "))
    } else {
        "crossprof: whole system".to_owned()
    }
}

/// `rooted / all` of `(rooted, all)` stack counts, when there are any.
fn share(&(rooted, all): &(u64, u64)) -> Option<f64> {
    (all > 0).then(|| rooted as f64 / all as f64)
}

/// Per-process `(rooted, all)` stack counts added up.
fn total<'a>(counts: impl IntoIterator<Item = &'a (u64, u64)>) -> (u64, u64) {
    counts
        .into_iter()
        .fold((0, 0), |(r, a), &(x, y)| (r + x, a + y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The final line names each loss by its cause, and only the causes that
    /// lost something (it said "(0 ring buffer full, 0 undecodable)" beside a
    /// loss of another kind).
    #[test]
    fn losses_are_named_by_their_cause() {
        let mut counters = [0u64; COUNTER_SLOTS as usize];
        assert_eq!(lost_breakdown(&counters, 0), "");
        counters[probe_common::Counter::DropNoScratch as usize] = 3;
        assert_eq!(
            lost_breakdown(&counters, 0),
            "3 while the CPU's record buffer was taken"
        );
        counters[probe_common::Counter::DropRingFull as usize] = 2;
        assert_eq!(
            lost_breakdown(&counters, 1),
            "2 ring buffer full, 3 while the CPU's record buffer was taken, 1 undecodable"
        );
        assert_eq!(drops(&counters), 5);
        // HTTP events are not samples.
        counters[probe_common::Counter::HttpEventsLost as usize] = 9;
        assert_eq!(drops(&counters), 5);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGTERM)),
            128 + libc::SIGTERM
        );
    }
}
