//! `crossprof record`: the pipeline, top to bottom.
//!
//! 1. Check the input (nothing loaded or written on bad input).
//! 2. Load the kernel programs, fill the target set, attach to every CPU, start
//!    the command if there is one (held before `exec` until its pid is a target).
//! 3. Drain the ring buffer on wakeups and every [`DRAIN_EVERY`]: decode, capture
//!    each process at first sight, aggregate, and send new frames for naming.
//! 4. Stop on the duration, a signal, the command's exit, or the last target's exit.
//! 5. Fold, render, and write the outputs atomically, then the summary.

mod report;

pub(crate) use crate::session::Pipeline;

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt as _,
    process::ExitStatus,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use probe_common::{COUNTER_SLOTS, Counter};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{GroupBy, Mode, RecordArgs},
    dotnet::unwind::KernelTables,
    error::{Error, UsageError},
    native::process::ProcessTable,
    preflight::{self, OutputDir},
    sampler::{Sampler, SamplerConfig, register_self_in_child},
    session::{Config, Events, KernelSide},
    status::Status,
    summary::CollectorStats,
    sys::{alive, monotonic_ns},
};

pub use crate::session::DRAIN_EVERY;
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

/// Runs `crossprof record`; returns the exit status crossprof should end with.
pub async fn record(args: RecordArgs) -> Result<i32, Error> {
    let mut cfg = Config::of_record(&args);
    // 1. Input.
    // `record --` and nothing: clap gives an empty command, as for no `--` at
    // all (the whole system); the user meant a command.
    if args.command.is_empty() && std::env::args_os().last().is_some_and(|a| a == "--") {
        return Err(UsageError::NoCommand.into());
    }
    preflight::check_duration(args.duration)?;
    preflight::check_freq(cfg.freq)?;
    preflight::check_debug_dirs(&cfg.debug_dirs)?;
    preflight::check_debuginfod(cfg.debuginfod)?;
    if cfg.kernel_waits && !matches!(cfg.mode, Mode::Offcpu | Mode::Wall) {
        return Err(UsageError::KernelWaits.into());
    }
    preflight::check_privileges()?;
    preflight::check_pid_namespace()?;
    let kernel = preflight::check_kernel(kernel_needs(&cfg), &kernel_request(&cfg))?;
    if kernel.plan.walk == crate::kernel::Walk::FramePointers {
        cfg.frame_pointers_only = true;
    }
    let pids = preflight::resolve_pids(&cfg.pids)?;
    let program = match args.command.first() {
        Some(p) => Some(preflight::resolve_command(p)?),
        None => None,
    };
    // --container: its threads, selected in the kernel by cgroup.
    let select = Select {
        skip_self: !cfg.containers.is_empty(),
        comms: Vec::new(),
        cgroups: crate::containers::container_cgroups(&cfg.containers).collect::<Result<_, _>>()?,
    };
    let out = OutputDir::prepare(&args.output)?;
    raise_fd_limit();

    let started = match start(
        &cfg,
        &pids,
        program.as_deref(),
        &args.command,
        &select,
        kernel,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            out.discard();
            return Err(e);
        }
    };
    run(args, cfg, pids, started, out).await
}

/// What a session with `cfg` asks of the kernel.
pub(crate) fn kernel_needs(cfg: &Config) -> crate::kernel::Needs {
    crate::kernel::Needs {
        on_cpu: matches!(cfg.mode, Mode::Cpu | Mode::Wall),
        off_cpu: cfg.off_cpu,
        go_probes: cfg.go_probes(),
        http: cfg.group_by.contains(&GroupBy::Trace),
    }
}

/// How a refusal names a session with `cfg`: `--mode offcpu --group-by trace`.
pub(crate) fn kernel_request(cfg: &Config) -> String {
    let mut parts = vec![format!(
        "--mode {}",
        match cfg.mode {
            Mode::Cpu => "cpu",
            Mode::Offcpu => "offcpu",
            Mode::Wall => "wall",
            Mode::Goblock => "goblock",
        }
    )];
    if cfg.go_states {
        parts.push("--go-states".into());
    }
    if cfg.group_by.contains(&GroupBy::Trace) {
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
pub(crate) fn follows_children(cfg: &Config, pids: &[u32], has_command: bool) -> bool {
    (has_command && !cfg.no_children) || (!pids.is_empty() && cfg.children)
}

// 2. Kernel side and command.
pub(crate) async fn start(
    cfg: &Config,
    pids: &[u32],
    program: Option<&std::path::Path>,
    command: &[OsString],
    select: &Select,
    kernel: preflight::KernelPlan,
) -> Result<Started, Error> {
    let has_command = program.is_some();
    let io = |what| move |source| Error::Io { what, source };
    // Signals first: a Ctrl-C from here on stops the recording instead of killing it.
    let sigint = signal(SignalKind::interrupt()).map_err(io("install the SIGINT handler"))?;
    let sigterm = signal(SignalKind::terminate()).map_err(io("install the SIGTERM handler"))?;

    let mut sampler = Sampler::load(SamplerConfig {
        freq: cfg.freq,
        filter_pids: !pids.is_empty()
            || has_command
            || !select.comms.is_empty()
            || !select.cgroups.is_empty(),
        include_idle: cfg.include_idle,
        go_states: cfg.go_probes(),
        on_cpu: matches!(cfg.mode, Mode::Cpu | Mode::Wall),
        off_cpu: cfg.off_cpu,
        min_block_ns: cfg.min_block.saturating_mul(1000),
        min_go_wait_ns: cfg.min_go_wait.saturating_mul(1000),
        go_block: cfg.go_waits,
        http: cfg.group_by.contains(&GroupBy::Trace),
        off_cpu_kernel: cfg.kernel_waits,
        off_cpu_runnable: cfg.mode == Mode::Wall,
        skip_self: select.skip_self,
        filter_cgroups: !select.cgroups.is_empty(),
        select_comms: !select.comms.is_empty(),
        follow_children: follows_children(cfg, pids, has_command),
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
    if !cfg.frame_pointers_only
        && let Err(e) = sampler.attach_mmap_tracepoints()
    {
        log::warn!("{e}: libraries loaded while recording are unwound from their first samples on");
    }
    for &pid in pids {
        if !alive(pid) {
            return Err(UsageError::PidExited(pid).into());
        }
    }
    let source = match &cfg.capture {
        Some(dir) => {
            use clap::ValueEnum as _;
            let mode = cfg.mode.to_possible_value().expect("every mode has a name");
            let group_by: Vec<String> = cfg.group_by.iter().map(GroupBy::name).collect();
            let capture =
                crate::replay::source::Capture::create(dir, mode.get_name(), cfg.freq, &group_by)
                    .map_err(|e| Error::Write {
                    path: dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            crate::replay::source::ProcSource::Capturing(std::sync::Arc::new(
                std::sync::Mutex::new(capture),
            ))
        }
        None => crate::replay::source::ProcSource::Live,
    };
    let mut procs = ProcessTable::reading(source);
    // Source lines of .NET methods are for the pprof output.
    procs.dotnet.lines = cfg.source_lines;
    procs.dotnet.perf_map = cfg.dotnet_perf_map;
    procs.dotnet.no_gc = cfg.dotnet_no_gc;
    let go_preattached = match program {
        Some(exe) if cfg.go_probes() => {
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
            && !cfg.frame_pointers_only
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
        if go.is_some() {
            // Its first samples are tail-called into the Go walk: have it there.
            sampler.load_runtime_walks();
        }
        Some(spawn_registered(command, &sampler, go)?)
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
    cfg: Config,
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
    let (go_preattached, go_states_failed) = match go_preattached {
        Ok(pre) => (pre, Vec::new()),
        Err(why) => (None, vec![(title(&args, &pids), why)]),
    };
    let mut pipeline = Pipeline::new(
        &cfg,
        procs,
        Some(KernelSide {
            processes,
            dotnet: dotnet_tables,
            unwind: unwind_tables,
        }),
        go_states_failed,
        go_preattached,
    );
    let mut events = Events::new(events, &mut sampler, &pipeline)?;
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
        // A Go or .NET target read above: its walks in place before its
        // first sample.
        crate::session::load_runtime_walks_if_met(&pipeline, &mut sampler);
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
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);

    // Following a process tree: the kernel adds processes as they start;
    // the ones that ended are taken out once a second.
    let follows = follows_children(&cfg, &pids, child.is_some());
    let mut last_prune = Instant::now();
    let stop = loop {
        // Back to the scheduler at every turn: its drivers turned, the
        // deadline's timer and the signals are seen now. Without it a turn
        // that is always ready (a full ring at 100 kHz) kept them unseen for
        // a whole cooperative budget of turns, seconds on a starved CPU.
        tokio::task::yield_now().await;
        tokio::select! {
            // The stops first: a turn late is a turn of samples too many.
            biased;
            () = &mut until_deadline => break Stop::Duration,
            _ = sigint.recv() => break Stop::Signal(libc::SIGINT),
            _ = sigterm.recv() => break Stop::Signal(libc::SIGTERM),
            exit = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                match exit {
                    Ok(st) => break Stop::CommandExited(st),
                    Err(_) => break Stop::CommandExited(ExitStatus::from_raw(1 << 8)),
                }
            }
            tick = events.next(&mut pipeline, &mut sampler) => {
                if !tick {
                    continue;
                }
                status.update(start.elapsed(), pipeline.agg.samples, || {
                    drops(&sampler.counters()) + pipeline.decode_errors
                });
                if !pids.is_empty() && child.is_none() && !pids.iter().any(|&p| alive(p)) {
                    break Stop::TargetsExited;
                }
                if follows && last_prune.elapsed() >= PRUNE_TARGETS_EVERY {
                    last_prune = Instant::now();
                    sampler.prune_targets();
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
    status.clear();

    // What the kernel counted, then whatever is still in flight.
    let counters = sampler.counters();
    let program_stats = sampler.program_stats();
    let go_program_stats = crate::go::probes::program_stats(sampler.ebpf());
    let http_program_stats = sampler.http_program_stats();
    let kernel_load = sampler.kernel_load();
    let runtime_walks_refused = match sampler.runtime_walks() {
        crate::sampler::RuntimeWalkState::Failed(why) => Some(why.clone()),
        _ => None,
    };
    events.drain(&mut pipeline);
    phase("last drain");
    let end_ns = monotonic_ns();
    crate::go::probes::collect_goroutines(&mut pipeline.procs, sampler.ebpf(), end_ns);
    let mut log = events.into_log();
    sampler.detach_mmap_tracepoints_in_background();
    // Every figure was read from it: its programs detach while the profile
    // is written.
    sampler.detach_in_background();
    pipeline.procs.release_dotnet(); // ends GC event sessions: every pause is known
    pipeline.count_waiting(u64::MAX);
    phase("detached, .NET sessions ended");
    if let Some(l) = log.as_mut() {
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

    // The command's status first: a failure to write the outputs still
    // reports it.
    if let Some(c) = child.as_mut()
        && command_status.is_none()
    {
        command_status = c.wait().await.ok();
    }
    crate::crash::ended();
    report::finish(
        pipeline,
        report::Ended {
            args: &args,
            cfg: &cfg,
            pids: &pids,
            out: &out,
            kernel: &kernel,
            counters,
            program_stats,
            go_program_stats,
            http_program_stats,
            kernel_load,
            runtime_walks_refused,
            start,
            stopped_at,
            started_unix_ns,
            recording_cpu,
            command_exit_status: command_status.map(exit_code),
        },
    )
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
