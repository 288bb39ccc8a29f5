#![no_std]
#![deny(missing_docs)]
//! Types shared by crossprof's kernel programs (`probe-ebpf`) and its collector
//! (`probe-user`).
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`, has its
//! padding spelled out, uses no `bool`, and has its size pinned by a const assertion,
//! so that a change on one side that the other side does not expect fails to compile.
//!
//! One module per runtime, mirrored in `probe-ebpf/src/` and `probe-user/src/`:
//! [`native`] holds what every sample carries (ids, time, kernel and user stack),
//! [`dotnet`] how the kernel unwinds JIT-compiled .NET code, [`go`] how it reads
//! the current goroutine.

pub mod dotnet;
pub mod go;
pub mod http;
pub mod native;
pub mod offcpu;
pub mod process;

/// Tag in the first 4 bytes of every ring-buffer record, so that later record kinds
/// (goroutine state, thread state, ...) can share the one ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`native::SampleHeader`] followed by its stack frames.
    CpuSample = 1,
    /// A [`go::GoroutineEnd`]: a tracked goroutine ended.
    GoroutineEnd = 2,
    /// A [`native::MapsChanged`]: a process mapped new code.
    MapsChanged = 3,
    /// A [`native::SampleHeader`] and its frames, taken when a thread that had
    /// left the CPU runs again (see [`offcpu`]).
    OffCpuSample = 4,
    /// A [`native::SampleHeader`] and the frames of a parked goroutine, taken
    /// when it is made runnable again (`--mode goblock`, see [`go`]):
    /// `off_cpu_ns` is how long it waited, `go_status` its wait reason.
    GoBlockSample = 5,
    /// An [`http::HttpEvent`]: a target read the start of an HTTP request.
    HttpRequest = 6,
    /// An [`http::HttpEvent`] without its bytes: a target wrote the start of an
    /// HTTP response.
    HttpResponse = 7,
    /// An [`http::HttpEvent`]: a target wrote the start of an HTTP request (a
    /// client sending it).
    HttpRequestSent = 8,
    /// An [`http::HttpEvent`] without its bytes: a target read the start of an
    /// HTTP response (a client receiving it).
    HttpResponseRead = 9,
    /// A [`go::GoroutineStart`]: a goroutine's id became known, with its
    /// creator's (with request attribution and the goroutine-state probes).
    GoroutineStart = 10,
    /// A [`native::MapsChanged`] sent at `exec` (`sched_process_exec`) of a
    /// target: a new program, read by the collector at once, while it surely
    /// lives (one that exits in 20 ms is gone by its first samples' drain).
    Exec = 11,
}

impl RecordKind {
    /// Decodes a record tag; `None` for a tag this build does not know.
    pub fn from_u32(tag: u32) -> Option<Self> {
        match tag {
            1 => Some(Self::CpuSample),
            2 => Some(Self::GoroutineEnd),
            3 => Some(Self::MapsChanged),
            4 => Some(Self::OffCpuSample),
            5 => Some(Self::GoBlockSample),
            6 => Some(Self::HttpRequest),
            7 => Some(Self::HttpResponse),
            8 => Some(Self::HttpRequestSent),
            9 => Some(Self::HttpResponseRead),
            10 => Some(Self::GoroutineStart),
            11 => Some(Self::Exec),
            _ => None,
        }
    }
}

/// Run-time settings written into the kernel programs' `.rodata` before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Non-zero: only samples of tgids present in the `TARGETS` map are kept.
    pub filter_pids: u32,
    /// Non-zero: keep samples of the idle task (pid 0) too.
    pub include_idle: u32,
    /// The collector is woken once this many bytes wait in the ring buffer; below
    /// it, records are published with `BPF_RB_NO_WAKEUP` and the collector drains
    /// on its own timer.
    pub wakeup_bytes: u64,
    /// Off-CPU spans shorter than this are dropped in the kernel
    /// (`--min-block`).
    pub min_block_ns: u64,
    /// Goroutine waits shorter than this are dropped in the kernel
    /// (`--min-go-wait`).
    pub min_go_wait_ns: u64,
    /// Non-zero: a goroutine made runnable after waiting sends its stack and
    /// wait (`--mode goblock`; needs the goroutine-state probes).
    pub go_block: u32,
    /// Non-zero: HTTP request starts and response starts are sent
    /// (`--group-by trace`).
    pub http: u32,
    /// Non-zero: an off-CPU span carries the kernel stack its thread blocked
    /// with (`--kernel-waits`).
    pub off_cpu_kernel: u32,
    /// Non-zero: this tgid (the agent itself) is never sampled.
    pub skip_tgid: u32,
    /// Non-zero (with `filter_pids`): threads in a cgroup of `CGROUPS` are
    /// targets too (`--cgroup`).
    pub filter_cgroups: u32,
    /// Non-zero: a process whose name after `exec` is in `COMMS` becomes a
    /// target (`--comm`).
    pub select_comms: u32,
    /// Non-zero (whole-system sessions, where no `exec` is announced): the
    /// first sample of each process wakes the collector at once, which reads
    /// the process while it still lives (a compiler a build runs for 15 ms).
    pub announce_new: u32,
    /// Non-zero (`--mode wall`): a target thread preempted is followed until
    /// it runs again, as an off-CPU span of state `offcpu::state::PREEMPTED`.
    pub off_cpu_runnable: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 64);

#[cfg(feature = "user")]
// SAFETY: `Config` is `repr(C)`, `Copy`, made only of integers, and has no padding.
unsafe impl aya::Pod for Config {}

/// Names of the maps and programs, shared so that neither side spells them twice.
pub mod names {
    /// The ring buffer every record travels on.
    pub const EVENTS: &str = "EVENTS";
    /// The ring buffer of process announcements (a target's `exec`, code it
    /// maps), read by a thread of their own.
    pub const ANNOUNCE: &str = "ANNOUNCE";
    /// The `sys_exit` raw tracepoint program of request attribution.
    pub const HTTP_SYS_EXIT_PROG: &str = "http_sys_exit";
    /// Per-CPU counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Hash set of target tgids (`u32 -> u8`).
    pub const TARGETS: &str = "TARGETS";
    /// Hash set of the process names `--comm` selects (`[u8; 16] -> u8`, the
    /// kernel's comm, zero-padded).
    pub const COMMS: &str = "COMMS";
    /// Hash set of the cgroup (v2) ids `--cgroup` selects (`u64 -> u8`).
    pub const CGROUPS: &str = "CGROUPS";
    /// The `sched_process_exec` raw tracepoint program that adds processes
    /// whose new name is in `COMMS` to `TARGETS`.
    pub const PROCESS_EXEC_PROG: &str = "process_exec";
    /// The `task:task_newtask` tracepoint program that adds the processes a
    /// target starts to `TARGETS` (following the process tree).
    pub const PROCESS_FORK_PROG: &str = "process_fork";
    /// The `.rodata` global holding the [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Off-CPU records built at the switch, by thread (`MAX_OFF_CPU_STASHED`).
    pub const OFF_CPU_STASH: &str = "OFF_CPU_STASH";
    /// The perf_event program that samples on-CPU stacks.
    pub const CPU_SAMPLE_PROG: &str = "cpu_sample";
    /// The perf_event program that samples on-CPU stacks with the Go and
    /// .NET walks: [`CPU_SAMPLE_PROG`] (which walks native code only, so that
    /// a run that never meets a runtime never verifies their walks) passes
    /// it a sample of a process described as Go or .NET, by a tail call
    /// through [`RUNTIME_SAMPLERS`], once the collector loaded it there.
    pub const CPU_SAMPLE_RUNTIMES_PROG: &str = "cpu_sample_runtimes";
    /// The program array [`CPU_SAMPLE_PROG`] tail-calls into: slot 0 holds
    /// [`CPU_SAMPLE_RUNTIMES_PROG`] once loaded (empty: the call falls
    /// through, counted as `Counter::RuntimeWalkPending`).
    pub const RUNTIME_SAMPLERS: &str = "RUNTIME_SAMPLERS";
    /// The perf_event program that samples on-CPU stacks by frame pointers
    /// only, for kernels without what the other walks need.
    pub const CPU_SAMPLE_FP_PROG: &str = "cpu_sample_fp";
    /// The `sched_switch` program that notes a thread leaving the CPU.
    pub const OFF_CPU_START_PROG: &str = "off_cpu_start";
    /// The `sys_exit` raw tracepoint program that ends an off-CPU span.
    pub const OFF_CPU_END_PROG: &str = "off_cpu_end";
    /// `PROCESSES`: what the kernel knows of each process the collector
    /// described (see [`crate::process`]).
    pub const PROCESSES: &str = "PROCESSES";
    /// `CODE_PAGES` (see [`crate::dotnet`]).
    pub const CODE_PAGES: &str = "CODE_PAGES";
    /// `UNWIND_ROWS`: every object's `.eh_frame` rows.
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// `UNWIND_MAPS`: per slot, a process's mappings with rows.
    pub const UNWIND_MAPS: &str = "UNWIND_MAPS";
    /// `UNWIND_PAGES`: every object's page index into its rows.
    pub const UNWIND_PAGES: &str = "UNWIND_PAGES";
    /// The tracepoint programs at the entry and exit of `mmap` (see
    /// [`crate::native::MapsChanged`]).
    pub const MMAP_ENTER_PROG: &str = "mmap_enter";
    /// See [`MMAP_ENTER_PROG`].
    pub const MMAP_EXIT_PROG: &str = "mmap_exit";
    /// `GOROUTINES`: per-goroutine time per status (see [`crate::go::Goroutine`]).
    pub const GOROUTINES: &str = "GOROUTINES";
    /// The uprobe on `runtime.casgstatus`.
    pub const GO_CASGSTATUS_PROG: &str = "go_casgstatus";
    /// The uprobe on `runtime.newproc1`.
    pub const GO_NEWPROC1_PROG: &str = "go_newproc1";
    /// The uprobe on `runtime.reentersyscall` (Go 1.26+).
    pub const GO_SYSCALL_ENTER_PROG: &str = "go_syscall_enter";
    /// The uprobe on `runtime.exitsyscall` (Go 1.26+).
    pub const GO_SYSCALL_EXIT_PROG: &str = "go_syscall_exit";
}

/// Compiled-in size of the ring buffer; the collector sets the real size at load
/// (`ring_bytes`), scaled to the number of CPUs.
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Bytes of the announcement ring (see `names::ANNOUNCE`): 4,096 records of
/// 8 bytes and their 8-byte headers, a burst of process starts and `dlopen`s
/// far beyond what a thread that reads each at once leaves waiting.
pub const ANNOUNCE_BYTES: u32 = 64 << 10;

/// Ring-buffer bytes for `cpus` CPUs: 512 KiB each (about 1.7 s of 999 Hz samples
/// with 40-frame stacks, against a 50 ms drain interval), a power of two as the
/// kernel requires, from 1 MiB to 64 MiB. The kernel maps the data area twice, and
/// it counts in the collector's RSS, so bigger is not free.
pub const fn ring_bytes(cpus: u32) -> u32 {
    let want = (cpus as u64) * (512 << 10);
    let mut size: u64 = 1 << 20;
    while size < want && size < (64 << 20) {
        size <<= 1;
    }
    size as u32
}

/// Maximum number of target tgids.
pub const MAX_TARGETS: u32 = 4096;

/// Processes remembered as announced (`Config::announce_new`; least recently
/// used forgotten first: a forgotten one is announced again, once).
pub const MAX_ANNOUNCED: u32 = 8192;

/// Where `task:task_newtask`'s record holds the new task's `pid` (`pid_t`)
/// and its `clone_flags` (8 bytes): after the 8 bytes of common fields, then
/// `pid`, `comm[16]`, padding (include/trace/events/task.h, Linux 3.x-6.18;
/// the collector checks both against the format file before attaching).
pub const TASK_NEWTASK_PID: usize = 8;
/// See [`TASK_NEWTASK_PID`].
pub const TASK_NEWTASK_CLONE_FLAGS: usize = 32;
/// Maximum number of `--comm` names and of `--cgroup` ids.
pub const MAX_SELECTORS: u32 = 64;

/// Per-CPU event counters kept by the kernel programs. Indexes into `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Samples that passed the pid filter (sent or dropped).
    Samples = 0,
    /// Samples written to the ring buffer.
    Sent = 1,
    /// Samples dropped because the ring buffer was full.
    DropRingFull = 2,
    /// Samples dropped because the per-CPU scratch buffer was unavailable (or in
    /// use by the off-CPU program the sample interrupted).
    DropNoScratch = 3,
    /// Samples whose kernel stack could not be read (sent with no kernel frames).
    KernelStackError = 4,
    /// Samples whose user stack could not be read (sent with no user frames).
    UserStackError = 5,
    /// Samples of the idle task, skipped unless `include_idle` is set.
    Idle = 6,
    /// User stacks walked with the JIT code table (.NET processes).
    ManagedUnwinds = 7,
    /// User stacks stopped after a leaf in a managed prolog or epilog.
    ManagedLeafEdge = 8,
    /// Goroutine status changes seen by the Go uprobes.
    GoStatusChanges = 9,
    /// Goroutines not tracked because the goroutine table was full.
    GoroutinesUntracked = 10,
    /// Ended goroutines whose record was lost because the ring buffer was full.
    GoroutineEndsLost = 11,
    /// User stacks walked with `.eh_frame` rules.
    NativeUnwinds = 12,
    /// Of them, walks that stopped at a frame with neither a rule nor a usable
    /// frame pointer.
    NativeUnwindStops = 13,
    /// Off-CPU spans of target threads that ended (the thread ran again).
    OffCpuSpans = 14,
    /// Of them, spans shorter than `--min-block`, dropped in the kernel.
    OffCpuShort = 15,
    /// Threads that left the CPU untracked: the table of threads off the CPU
    /// was full (their blocking is missing from the profile).
    OffCpuUntracked = 16,
    /// Goroutine waits sent (`--mode goblock`).
    GoBlocks = 17,
    /// Goroutine waits shorter than `--min-block`, dropped in the kernel.
    GoBlocksShort = 18,
    /// Goroutine waits lost: no Go entry in `PROCESSES` or the ring buffer was full.
    GoBlocksLost = 19,
    /// HTTP request and response starts lost: the ring buffer was full (their
    /// requests are not attributed).
    HttpEventsLost = 20,
    /// Processes a target started that joined the target set (following the
    /// process tree: `record -- CMD`, `--pid P --children`).
    ChildrenFollowed = 21,
    /// Processes a target started that could not join it: the target set
    /// was full ([`MAX_TARGETS`]).
    ChildrenLost = 22,
    /// Samples of a Go or .NET process walked without its runtime's walk
    /// (frame pointers or rules only, no goroutine): the runtime walk
    /// ([`names::CPU_SAMPLE_RUNTIMES_PROG`]) was not loaded yet. The
    /// collector loads it when it first describes such a process, so these
    /// are the first milliseconds of such a process at most.
    RuntimeWalkPending = 23,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 24;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Samples,
        Counter::Sent,
        Counter::DropRingFull,
        Counter::DropNoScratch,
        Counter::KernelStackError,
        Counter::UserStackError,
        Counter::Idle,
        Counter::ManagedUnwinds,
        Counter::ManagedLeafEdge,
        Counter::GoStatusChanges,
        Counter::GoroutinesUntracked,
        Counter::GoroutineEndsLost,
        Counter::NativeUnwinds,
        Counter::NativeUnwindStops,
        Counter::OffCpuSpans,
        Counter::OffCpuShort,
        Counter::OffCpuUntracked,
        Counter::GoBlocks,
        Counter::GoBlocksShort,
        Counter::GoBlocksLost,
        Counter::HttpEventsLost,
        Counter::ChildrenFollowed,
        Counter::ChildrenLost,
        Counter::RuntimeWalkPending,
    ];

    /// A stable snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Samples => "samples",
            Counter::Sent => "sent",
            Counter::DropRingFull => "dropped_ring_full",
            Counter::DropNoScratch => "dropped_no_scratch",
            Counter::KernelStackError => "kernel_stack_errors",
            Counter::UserStackError => "user_stack_errors",
            Counter::Idle => "idle_skipped",
            Counter::ManagedUnwinds => "managed_unwinds",
            Counter::ManagedLeafEdge => "managed_leaf_in_prolog_or_epilog",
            Counter::GoStatusChanges => "go_status_changes",
            Counter::GoroutinesUntracked => "goroutines_untracked",
            Counter::GoroutineEndsLost => "goroutine_ends_lost",
            Counter::NativeUnwinds => "native_unwinds",
            Counter::NativeUnwindStops => "native_unwind_stops",
            Counter::OffCpuSpans => "off_cpu_spans",
            Counter::OffCpuShort => "off_cpu_short_dropped",
            Counter::OffCpuUntracked => "off_cpu_untracked",
            Counter::GoBlocks => "go_blocks",
            Counter::GoBlocksShort => "go_blocks_short_dropped",
            Counter::GoBlocksLost => "go_blocks_lost",
            Counter::HttpEventsLost => "http_events_lost",
            Counter::ChildrenFollowed => "children_followed",
            Counter::ChildrenLost => "children_lost",
            Counter::RuntimeWalkPending => "runtime_walk_pending",
        }
    }

    /// True for the counters that mean a sample (an on-CPU sample, an
    /// off-CPU span, a goroutine wait) was lost. (HTTP events lost are not
    /// samples: `http_events_lost` counts them apart.)
    pub fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropRingFull
                | Counter::DropNoScratch
                | Counter::OffCpuUntracked
                | Counter::GoBlocksLost
        )
    }

    /// How the final line names a loss this counter counts.
    pub fn lost_as(self) -> &'static str {
        match self {
            Counter::DropRingFull => "ring buffer full",
            Counter::DropNoScratch => "while the CPU's record buffer was taken",
            Counter::OffCpuUntracked => "off-CPU spans untracked (table full)",
            Counter::GoBlocksLost => "goroutine waits",
            other => other.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_scales_with_cpus_within_bounds() {
        assert_eq!(ring_bytes(1), 1 << 20);
        assert_eq!(ring_bytes(2), 1 << 20);
        assert_eq!(ring_bytes(3), 2 << 20);
        assert_eq!(ring_bytes(64), 32 << 20);
        assert_eq!(ring_bytes(4096), 64 << 20);
        for cpus in 1..300 {
            assert!(ring_bytes(cpus).is_power_of_two());
        }
    }
}
