//! What a profiling session does, whichever command started it: `record`
//! (one recording, then its files) and `agent` (windows, for ever) each build
//! a [`Config`] from their own arguments, and the session's stages (the
//! kernel side in `record::start`, the pipeline, the pprof writer)
//! read only the config. Both drive the pipeline with the same `Events`:
//! their loops add only what is theirs (a deadline and a command, or windows
//! and an HTTP server). The pipeline itself, everything downstream of the
//! ring buffer, is `pipeline`.

use std::{path::PathBuf, time::Duration};

use crate::cli::{AgentArgs, Format, GroupBy, Mode, RecordArgs};

mod announce;
mod events;
pub(crate) mod pipeline;

pub(crate) use events::{Events, load_runtime_walks_if_met};
pub(crate) use pipeline::{KernelSide, Pipeline};

/// How often the ring buffer is drained when the kernel has not woken us (wakeups
/// are batched, see `probe_common::Config::wakeup_bytes`).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// A session's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// What a sample weighs: an on-CPU sample, off-CPU time, both per thread
    /// (wall), or goroutine waits.
    pub mode: Mode,
    /// Samples per second per CPU.
    pub freq: u64,
    /// Off-CPU spans are followed (`record --mode offcpu|wall`, `agent
    /// --off-cpu`).
    pub off_cpu: bool,
    /// Goroutine waits are followed (`record --mode wall|goblock`, `agent
    /// --go-waits`; with the goroutine-state probes).
    pub go_waits: bool,
    /// Off-CPU spans shorter than this many microseconds are dropped.
    pub min_block: u64,
    /// Goroutine waits shorter than this many microseconds are dropped.
    pub min_go_wait: u64,
    /// Off-CPU stacks keep their kernel frames (`--kernel-waits`).
    pub kernel_waits: bool,
    /// Every goroutine's state is followed (`--go-states`).
    pub go_states: bool,
    /// `--go-state-sampling`: goroutine states read this many times a second
    /// (0: not sampled).
    pub go_state_sampling: u64,
    /// A thread frame under each process (`--per-thread`, and wall mode).
    pub per_thread: bool,
    /// Frame levels under the process (and thread).
    pub group_by: Vec<GroupBy>,
    /// No unwind rules given to the kernel (`--frame-pointers-only`, or a
    /// kernel that cannot walk by them).
    pub frame_pointers_only: bool,
    /// Idle-CPU samples are kept.
    pub include_idle: bool,
    /// Where debug files are looked for besides the standard places.
    pub debug_dirs: Vec<PathBuf>,
    /// Debug files are fetched from `DEBUGINFOD_URLS`.
    pub debuginfod: bool,
    /// Source lines are followed (.NET's need a JIT event session): wanted
    /// where the output has room for them (pprof).
    pub source_lines: bool,
    /// `--dotnet-perf-map`: .NET JIT code named through the runtime's perf
    /// map, not from its memory (also `record --capture`: a capture holds
    /// the perf map's reads, not the memory's).
    pub dotnet_perf_map: bool,
    /// `--no-dotnet-gc`: no GC event session for .NET processes.
    pub dotnet_no_gc: bool,
    /// `--timeline`: every event kept, with its time.
    pub timeline: bool,
    /// `--trace-id`: only what works for this trace is kept.
    pub trace_id: Option<String>,
    /// `--slow-ms`: requests slower than this are listed.
    pub slow_ms: Option<u64>,
    /// The processes given (`--pid`).
    pub pids: Vec<u32>,
    /// `--children`: processes the given ones start are followed too.
    pub children: bool,
    /// `--no-children`: a command's own process only.
    pub no_children: bool,
    /// `--container`: the containers given.
    pub containers: Vec<String>,
    /// Kernel addresses are named from this file, not `/proc/kallsyms` (a
    /// replayed capture's).
    pub kallsyms: Option<PathBuf>,
    /// `record --capture`: what the recording reads is captured here (see
    /// [`crate::replay`]).
    pub capture: Option<PathBuf>,
}

impl Config {
    /// `crossprof record`'s: a request's profile (`--trace-id`, `--slow-ms`)
    /// is wall-clock time (unless asked otherwise), by trace.
    pub(crate) fn of_record(args: &RecordArgs) -> Self {
        let by_request = args.trace_id.is_some() || args.slow_ms.is_some();
        let mode = if by_request && args.mode == Mode::Cpu {
            Mode::Wall
        } else {
            args.mode
        };
        let mut group_by = args.group_by.clone();
        if by_request && !group_by.contains(&GroupBy::Trace) {
            group_by.insert(0, GroupBy::Trace);
        }
        Config {
            mode,
            freq: args.freq,
            off_cpu: matches!(mode, Mode::Offcpu | Mode::Wall),
            go_waits: mode.goroutine_waits(),
            min_block: args.min_block,
            min_go_wait: args.min_go_wait.unwrap_or(args.min_block),
            kernel_waits: args.kernel_waits,
            go_states: args.go_states,
            go_state_sampling: args.go_state_sampling,
            per_thread: args.per_thread,
            group_by,
            frame_pointers_only: args.frame_pointers_only,
            include_idle: args.include_idle,
            debug_dirs: args.debug_dirs.clone(),
            debuginfod: args.debuginfod,
            source_lines: args.formats.contains(&Format::Pprof),
            dotnet_perf_map: args.dotnet_perf_map || args.capture.is_some(),
            dotnet_no_gc: args.no_dotnet_gc,
            timeline: args.timeline,
            trace_id: args.trace_id.clone(),
            slow_ms: args.slow_ms,
            pids: args.pids.clone(),
            children: args.children,
            no_children: args.no_children,
            containers: args.containers.clone(),
            kallsyms: None,
            capture: args.capture.clone(),
        }
    }

    /// `crossprof agent`'s: on-CPU samples, a wall-clock profile when it
    /// follows off-CPU spans or goroutine waits (on-CPU samples weigh one
    /// period each; the source not asked for is left out); processes chosen
    /// by pid, name and cgroup (see `record::Select`), never by process tree;
    /// pprof windows, so source lines.
    pub(crate) fn of_agent(args: &AgentArgs) -> Self {
        Config {
            mode: if args.off_cpu || args.go_waits {
                Mode::Wall
            } else {
                Mode::Cpu
            },
            freq: args.freq,
            off_cpu: args.off_cpu,
            go_waits: args.go_waits,
            min_block: args.min_block,
            min_go_wait: args.min_go_wait,
            kernel_waits: false,
            go_states: false,
            go_state_sampling: args.go_state_sampling,
            per_thread: args.per_thread,
            group_by: args.group_by.clone(),
            frame_pointers_only: false,
            include_idle: false,
            debug_dirs: args.debug_dirs.clone(),
            debuginfod: args.debuginfod,
            source_lines: true,
            dotnet_perf_map: args.dotnet_perf_map,
            dotnet_no_gc: args.no_dotnet_gc,
            timeline: false,
            trace_id: None,
            slow_ms: None,
            pids: args.pids.clone(),
            children: false,
            no_children: false,
            containers: Vec::new(),
            kallsyms: None,
            capture: None,
        }
    }

    /// A replayed capture's (see [`crate::replay`]): the profile `record
    /// --mode MODE` made at `freq` Hz grouped by `group_by` (level names)
    /// with its other flags as they are by default, kernel frames named from
    /// `kallsyms`. An error names what is not a mode or a level.
    pub(crate) fn replay(
        mode: &str,
        freq: u64,
        group_by: &[String],
        kallsyms: PathBuf,
    ) -> Result<Self, String> {
        use clap::ValueEnum as _;
        let mode = Mode::from_str(mode, false).map_err(|_| format!("{mode:?} is not a mode"))?;
        let group_by = group_by
            .iter()
            .map(|l| crate::cli::parse_group_by(l))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            mode,
            freq,
            off_cpu: matches!(mode, Mode::Offcpu | Mode::Wall),
            go_waits: mode.goroutine_waits(),
            min_block: 0,
            min_go_wait: 0,
            kernel_waits: false,
            go_states: false,
            go_state_sampling: 0,
            per_thread: false,
            group_by,
            frame_pointers_only: false,
            include_idle: false,
            debug_dirs: Vec::new(),
            debuginfod: false,
            source_lines: false,
            dotnet_perf_map: false,
            dotnet_no_gc: false,
            timeline: false,
            trace_id: None,
            slow_ms: None,
            pids: Vec::new(),
            children: false,
            no_children: false,
            containers: Vec::new(),
            kallsyms: Some(kallsyms),
            capture: None,
        })
    }

    /// The goroutine-state probes are loaded (states, or waits).
    pub(crate) fn go_probes(&self) -> bool {
        self.go_states || self.go_waits
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn record(line: &str) -> Config {
        let cli = Cli::try_parse_from(line.split_whitespace()).unwrap();
        let Command::Record(args) = cli.command else {
            panic!("{line}: not record");
        };
        Config::of_record(&args)
    }

    #[test]
    fn modes_say_what_is_followed() {
        let c = record("crossprof record");
        assert!(!c.off_cpu && !c.go_waits && !c.go_probes());
        let c = record("crossprof record --mode wall --min-block 50");
        assert!(c.off_cpu && c.go_waits && c.go_probes());
        assert_eq!((c.min_block, c.min_go_wait), (50, 50));
        let c = record("crossprof record --mode goblock --min-go-wait 7");
        assert!(!c.off_cpu && c.go_waits);
        assert_eq!(c.min_go_wait, 7);
        let c = record("crossprof record --mode offcpu");
        assert!(c.off_cpu && !c.go_waits && !c.go_probes());
    }

    #[test]
    fn a_request_profile_is_wall_clock_time_by_trace() {
        let c = record("crossprof record --slow-ms 100");
        assert_eq!(c.mode, Mode::Wall);
        assert_eq!(c.group_by.first(), Some(&GroupBy::Trace));
        let c = record(
            "crossprof record --trace-id 0af7651916cd43dd8448eb211c80319c --mode offcpu --group-by trace",
        );
        assert_eq!(c.mode, Mode::Offcpu);
        assert_eq!(c.group_by, [GroupBy::Trace]);
    }
}
