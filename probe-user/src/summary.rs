//! The run's summary: `summary.json` for scripts and the bench, and a few lines on
//! stderr for people.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::frame::FrameKind;

/// Everything `summary.json` holds.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `--mode`: `cpu`, `offcpu`, `wall` or `goblock`; the profile's counts are samples
    /// in `cpu` mode, microseconds otherwise.
    pub mode: &'static str,
    /// Threads' off-CPU time in the profile, in microseconds (`offcpu` and
    /// `wall` modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_cpu_us: Option<u64>,
    /// Goroutines' waits in the profile, in microseconds (`goblock` and `wall`
    /// modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_wait_us: Option<u64>,
    /// `--group-by trace`: HTTP requests seen with a valid `traceparent`
    /// (`traced`), without one (`untraced`, their time unattributed; `partial`
    /// of them had headers split across reads), not followed because too many
    /// were in flight (`overflow`), sent by client threads with one (`sent`);
    /// goroutines that worked for their creator's request (`inherited`), and
    /// slow-request causes not kept past their bound (`causes_dropped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<BTreeMap<&'static str, u64>>,
    /// `--slow-ms`: requests slower than that, slowest first (at most 100),
    /// each with its time by cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_requests: Option<Vec<crate::http::SlowRequest>>,
    /// `--timeline`: events past its limit, counted and left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline_events_dropped: Option<u64>,
    /// Recording wall time.
    pub duration_secs: f64,
    /// Sampling frequency per CPU.
    pub frequency_hz: u64,
    /// The kernel, and how user stacks were walked on it.
    pub kernel: KernelSummary,
    /// Samples received and aggregated.
    pub samples: u64,
    /// Samples lost anywhere: dropped in the kernel or undecodable.
    pub lost: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// The kernel counters by name (`probe_common::Counter::name`).
    pub counters: BTreeMap<&'static str, u64>,
    /// Distinct stacks.
    pub distinct_stacks: usize,
    /// Frames no symbol covered (shown as `[module+0xoff]` or `[unknown]`).
    pub unnamed_frames: u64,
    /// Processes with samples, most samples first.
    pub processes: Vec<ProcessSummary>,
    /// The collector's own cost.
    pub collector: CollectorStats,
    /// Where kernel frames' names came from: `cache` (this boot's file of the
    /// core kernel's symbols, no read of `/proc/kallsyms`), `kallsyms`, `file`
    /// (a replayed capture's) or `none`.
    pub kernel_symbols: crate::native::kallsyms::Read,
    /// The sampler program's own cost, when `kernel.bpf_stats_enabled` is 1.
    pub kernel_program: Option<KernelProgramStats>,
    /// What loading the kernel programs cost, and whether the Go and .NET
    /// walks were needed.
    pub kernel_load: KernelLoad,
    /// Share of all samples with a user stack whose stack starts at a thread
    /// root (see `ProcessSummary::stacks_complete`).
    pub stacks_complete: Option<f64>,
    /// The frame-pointer baseline of the same run, when stacks were walked
    /// by rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_pointer_baseline: Option<FpBaseline>,
    /// Rows of `.eh_frame` rules given to the kernel (8 bytes each), for native
    /// code walked without frame pointers.
    pub unwind_table_rows: u64,
    /// Rows given back when no live process mapped their file any more
    /// (reused by the next files).
    pub unwind_rows_freed: u64,
    /// Files whose rules did not fit the table (their stacks end at
    /// `[truncated: no unwind info]`).
    pub unwind_files_refused: u64,
    /// The objects in that table, largest first: what each costs in kernel
    /// memory (rows are shared by every process that maps the object).
    pub unwind_objects: Vec<UnwindObject>,
    /// The goroutine-state uprobe programs' cost (`--go-states`), likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_state_probes: Option<KernelProgramStats>,
    /// The request-attribution program's cost (`--group-by trace`), likewise:
    /// it runs at every system call's exit on the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_program: Option<KernelProgramStats>,
    /// Calls from one runtime into another (`[cgo]`, `[P/Invoke]` crossings),
    /// most samples first; empty when none was sampled. A sample counts once
    /// per distinct edge in its stack.
    pub transitions: Vec<Edge>,
    /// From crossprof's start to the recording's: the programs loaded and
    /// attached, the targets read (and a command started).
    pub startup_ms: f64,
    /// From the stop to a finished SVG.
    pub stop_to_svg_ms: f64,
    /// The command's exit status, if crossprof started one (128+N for signal N).
    pub command_exit_status: Option<i32>,
    /// What could not be done, one line each (also printed on stderr).
    pub notes: Vec<String>,
}

/// One process.
#[derive(Debug, Default, Serialize)]
pub struct ProcessSummary {
    /// pid.
    pub pid: u32,
    /// Name (main thread's comm).
    pub comm: String,
    /// Executable, if it could be read.
    pub exe: Option<String>,
    /// Samples.
    pub samples: u64,
    /// The managed runtime found in it (`dotnet 8.0.4`), if any.
    pub runtime: Option<String>,
    /// The container its cgroup names (see [`crate::containers`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The Kubernetes pod its cgroup is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// For Go: where the goroutine layout came from, `dwarf` (the binary's
    /// own) or `table` (crossprof's per-version table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine_layout: Option<&'static str>,
    /// Garbage collection, for a .NET process whose GC events were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSummary>,
    /// For .NET: what its runtime's memory gave where the perf map had
    /// nothing (see `dotnet::memory`), if it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jit_from_memory: Option<JitFromMemory>,
    /// Share of its samples with a user stack whose stack starts at a thread
    /// root: a frame the unwind rules say has no caller (`DW_CFA_undefined
    /// rip`, named or not), or one named `_start`, `clone3`,
    /// `runtime.goexit`, ...: how many stacks were walked whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks_complete: Option<f64>,
    /// The same share for a frame-pointer walk of the same stacks (sampled:
    /// one in `FP_BASELINE_EVERY` of those walked by rules), as perf would
    /// have walked them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks_complete_frame_pointers: Option<f64>,
    /// How its samples' user stacks ended, by the walk's own word (only the
    /// ways that happened): `outermost_rule`, `walk_end`, `no_unwind_info`,
    /// `depth_limit`, `leaf_in_prolog`, `unreadable`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user_stack_ends: BTreeMap<&'static str, u64>,
    /// Goroutine states, for a Go process followed with `--go-states`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<GoroutineStates>,
    /// Its goroutine states as sampled (`--go-state-sampling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines_sampled: Option<GoroutineStates>,
}

/// JIT code named and listed from a .NET runtime's memory.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct JitFromMemory {
    /// Code addresses named there.
    pub named: u64,
    /// Addresses looked up there and not named (not a method, or a walk that
    /// failed): shown `[unknown]`.
    pub unnamed: u64,
    /// JIT methods listed there for their frame shapes (no perf map), and
    /// in the listing at the end.
    pub methods_listed: u64,
    /// Listed methods found freed (dynamic methods collected, collectible
    /// assemblies unloaded): what was said of their code was forgotten, and
    /// code put there later named afresh.
    pub methods_freed: u64,
}

/// How a Go process's goroutines spent the recording.
#[derive(Debug, Serialize)]
pub struct GoroutineStates {
    /// Goroutines seen.
    pub seen: usize,
    /// Of them, goroutines that ended while recording.
    pub ended: usize,
    /// Every goroutine, most time first, when there are at most
    /// [`crate::go::states::MAX_LISTED`]; otherwise only `by_site` is given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_goroutine: Vec<GoroutineTime>,
    /// Per creation site (the function that ran `go`, and the function
    /// started), most time first.
    pub by_site: Vec<SiteTime>,
    /// How the states were sampled (`--go-state-sampling`; none: followed,
    /// every change timed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<SampledStates>,
}

/// How a process's goroutine states were sampled (`--go-state-sampling`):
/// each goroutine's time in a state is the readings that found it there,
/// times the period.
#[derive(Debug, Serialize)]
pub struct SampledStates {
    /// Readings per second.
    pub hz: u64,
    /// Rounds taken (each reads every goroutine).
    pub rounds: u64,
    /// Rounds that read no goroutine (the process exiting).
    pub empty_rounds: u64,
    /// Goroutine readings not kept: more goroutines than crossprof keeps
    /// (`crate::go::states::MAX_SAMPLED`).
    pub missed: u64,
    /// Rounds passed over to keep the collector's rounds under
    /// `crate::go::states::MAX_CORE_SHARE` of a core (a process with many
    /// goroutines is read less often than `hz`).
    pub deferred: u64,
    /// The collector's CPU time per round, reading and counting every
    /// goroutine (the target runs nothing for it), in microseconds.
    pub round_us: f64,
}

/// One goroutine's time.
#[derive(Debug, Serialize)]
pub struct GoroutineTime {
    /// Its id.
    pub goid: u64,
    /// The goroutine that created it (0: created before tracking began).
    pub parent_goid: u64,
    /// The function it runs (`main.main.func2`), `[unknown]` when created
    /// before tracking began.
    pub function: String,
    /// The function whose `go` statement created it.
    pub created_by: String,
    /// Ended while recording.
    pub ended: bool,
    /// Its time per state.
    #[serde(flatten)]
    pub time: StateTimes,
}

/// The goroutines of one creation site.
#[derive(Debug, Serialize)]
pub struct SiteTime {
    /// See [`GoroutineTime::function`].
    pub function: String,
    /// See [`GoroutineTime::created_by`].
    pub created_by: String,
    /// Goroutines.
    pub goroutines: u64,
    /// Their time per state, summed.
    #[serde(flatten)]
    pub time: StateTimes,
}

/// Time per goroutine state, in milliseconds.
#[derive(Debug, Serialize, Default, Clone)]
pub struct StateTimes {
    /// Running Go code.
    pub running_ms: f64,
    /// Runnable, waiting for a thread.
    pub runnable_ms: f64,
    /// In a system call.
    pub syscall_ms: f64,
    /// Blocked, per wait reason (`chan receive`, `sleep`, `sync.Mutex.Lock`, ...).
    pub waiting_ms: BTreeMap<String, f64>,
    /// Other runtime states (stack copy, preempted).
    pub other_ms: f64,
    /// After a change the probes could not see (see
    /// `probe_common::go::slot::UNOBSERVED`): not attributed.
    pub unobserved_ms: f64,
}

/// Garbage collection in one process over the recording.
#[derive(Debug, Serialize)]
pub struct GcSummary {
    /// Collections started.
    pub collections: u64,
    /// Pauses (the runtime's threads suspended for a collection).
    pub pauses: u64,
    /// Their total time, in milliseconds.
    pub pause_ms: f64,
    /// Samples taken in a pause (they carry a `[gc]` frame).
    pub samples: u64,
    /// `samples` / the process's samples.
    pub share: f64,
}

/// The collector's resource use, from `getrusage(RUSAGE_SELF)`.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct CollectorStats {
    /// User + system CPU time of the whole run: start-up, recording and output.
    pub cpu_seconds: f64,
    /// CPU time spent while recording only (draining, decoding, aggregating,
    /// symbolizing as frames appear): the steady-state cost of leaving it on.
    pub recording_cpu_seconds: f64,
    /// Peak resident set size.
    pub peak_rss_bytes: u64,
}

impl CollectorStats {
    /// This process's CPU time so far, in seconds.
    pub fn cpu_now() -> f64 {
        Self::now(0.0).cpu_seconds
    }

    /// This process's figures so far; `recording_cpu_seconds` as given.
    pub fn now(recording_cpu_seconds: f64) -> Self {
        // SAFETY: getrusage fills the struct it is given and nothing else.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Self {
            cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
            recording_cpu_seconds,
            peak_rss_bytes: ru.ru_maxrss as u64 * 1024,
        }
    }
}

/// The sampler program's cost.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct KernelProgramStats {
    /// Runs.
    pub run_count: u64,
    /// Total run time.
    pub run_time_ns: u64,
}

/// What loading this run's kernel programs cost.
#[derive(Debug, Serialize, Clone)]
pub struct KernelLoad {
    /// CPU time spent loading them (the verifier runs in the loading
    /// thread), the Go and .NET walks included when they were loaded.
    pub verify_cpu_ms: f64,
    /// The Go and .NET walks (`cpu_sample_runtimes`): `loaded` when a Go or
    /// .NET process was met, `not_loaded` when none was (a native run
    /// never verifies them), `not_used` when the sampler has no such walks
    /// (frame pointers only, no on-CPU sampling), `refused` (with a note).
    pub runtime_walks: &'static str,
    /// When they were loaded, since crossprof's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_walks_loaded_ms: Option<f64>,
}

/// One object's share of the kernel's unwind table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnwindObject {
    /// The file (as opened: `/proc/PID/root/...` or `/proc/PID/map_files/...`
    /// for a process in another mount namespace or a deleted file).
    pub path: String,
    /// Its rows.
    pub rows: u32,
    /// Their kernel memory: 8 bytes a row and 8 a page-index entry.
    pub bytes: u64,
}

/// The kernel a recording ran on.
#[derive(Debug, Clone, Serialize)]
pub struct KernelSummary {
    /// `uname -r`.
    pub release: String,
    /// `full`, or `frame pointers only` on a kernel without what the other
    /// walks need.
    pub walk: &'static str,
    /// What it lacks, each with the kernel that has it.
    pub missing: Vec<String>,
}

/// Stack completeness had the same stacks been walked by frame pointers only.
#[derive(Debug, Clone, Serialize)]
pub struct FpBaseline {
    /// Samples walked both ways.
    pub samples: u64,
    /// Share of them whose frame-pointer walk reached a thread root.
    pub stacks_complete: f64,
}

/// A call from one runtime into another and the samples whose stack holds it
/// (a sample counts once per distinct edge in its stack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The last non-glue frame before the crossing (`Prog::Main`).
    pub caller: String,
    /// The first non-glue frame after it (`main.AddInts`).
    pub callee: String,
    /// The caller's kind.
    pub caller_kind: FrameKind,
    /// The callee's kind.
    pub callee_kind: FrameKind,
    /// Samples.
    pub samples: u64,
}

/// When this process started (set first thing in `main`; else when first asked).
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Notes this process's start (`summary.json`'s `startup_ms` counts from it).
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// How long after this process's start `at` is.
pub fn since_process_start(at: std::time::Instant) -> std::time::Duration {
    at.saturating_duration_since(*PROCESS_START.get_or_init(std::time::Instant::now))
}
