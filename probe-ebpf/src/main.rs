//! crossprof's kernel programs.
//!
//! Every program's entry point is in this file; each calls into the module
//! that does the work. One module per runtime, mirroring `probe-common` and
//! `probe-user`: [`native`] walks user stacks by `.eh_frame` rules and tracks
//! `mmap`; [`dotnet`] walks the user stacks of .NET processes through
//! frameless JIT code; [`go`] reads the goroutine a Go process runs and
//! follows goroutine states; [`offcpu`] weighs the stacks of threads that
//! left the CPU by the time away; [`http`] sees HTTP requests and responses
//! start, for request attribution. [`sample`] builds a record with their
//! walks; [`regs`] reads the registers they start from. This file also holds
//! what they all share: the maps, the configuration and the counters.
#![no_std]
#![no_main]

mod dotnet;
mod go;
mod http;
mod native;
mod offcpu;
mod regs;
mod sample;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::{btf_tracepoint, map, perf_event, raw_tracepoint, tracepoint, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        BtfTracePointContext, PerfEventContext, ProbeContext, RawTracePointContext,
        TracePointContext,
    },
};
use probe_common::{
    COUNTER_SLOTS, Config, Counter, EVENTS_BYTES, MAX_SELECTORS, MAX_TARGETS,
    TASK_NEWTASK_CLONE_FLAGS, TASK_NEWTASK_PID,
    native::SampleScratch,
    process::{MAX_PROCESSES, ProcessEntry},
};

/// Overwritten by the collector before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter_pids: 0,
    include_idle: 0,
    wakeup_bytes: 0,
    min_block_ns: 0,
    min_go_wait_ns: 0,
    go_block: 0,
    http: 0,
    off_cpu_kernel: 0,
    skip_tgid: 0,
    filter_cgroups: 0,
    select_comms: 0,
    announce_new: 0,
    off_cpu_runnable: 0,
};

/// Every record, of every kind, for the collector.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Process announcements (`Exec`, `MapsChanged`), each with a wakeup: the
/// collector reads them on a thread of their own, so a process that lives
/// milliseconds is read while it lives whatever the sample pipeline is busy
/// with.
#[map]
static ANNOUNCE: RingBuf = RingBuf::with_byte_size(probe_common::ANNOUNCE_BYTES, 0);

/// Per-CPU counters, see [`Counter`]. Per-CPU so that counting never contends.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Target tgids; consulted only when `CONFIG.filter_pids` is set.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// What the collector told the kernel of each process it described: rules,
/// .NET, Go (see `probe_common::process`). Looked up once per record.
#[map]
static PROCESSES: HashMap<u32, ProcessEntry> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// `tgid`'s entry in `PROCESSES`, if the collector described it.
#[inline(always)]
fn process(tgid: u32) -> Option<&'static ProcessEntry> {
    // SAFETY: only read here; every use of its fields is bounded (a slot is
    // masked into UNWIND_MAPS, offsets are added to user addresses read by
    // the checking helper).
    unsafe { PROCESSES.get(tgid) }
}

/// Process names (`--comm`) whose `exec` makes the process a target.
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_SELECTORS, 0);

/// Cgroup ids (`--cgroup`) whose threads are targets.
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_SELECTORS, 0);

/// Is the current thread, of process `tgid`, one to follow? Everything
/// without a filter; else a target tgid (`--pid`, a command, a `--comm`
/// match), or a thread in a selected cgroup; never the agent itself.
#[inline(always)]
fn selected(tgid: u32) -> bool {
    let cfg = config();
    if cfg.skip_tgid != 0 && tgid == cfg.skip_tgid {
        return false;
    }
    if cfg.filter_pids == 0 {
        return true;
    }
    // SAFETY: the values are only tested for presence, never read.
    unsafe {
        TARGETS.get(tgid).is_some()
            || (cfg.filter_cgroups != 0
                && CGROUPS
                    .get(aya_ebpf::helpers::bpf_get_current_cgroup_id())
                    .is_some())
    }
}

/// Processes whose first sample was announced (see `Config::announce_new`).
#[map]
static ANNOUNCED: LruHashMap<u32, u8> =
    LruHashMap::with_max_entries(probe_common::MAX_ANNOUNCED, 0);

/// Is this `tgid`'s sample its first one in a whole-system session (the
/// collector is woken for it at once)? Remembers it if so, and announces
/// the process as a selected target's `exec` is announced: the collector's
/// announcement thread reads it at once, however busy its sample pipeline.
#[inline(always)]
fn first_sample(tgid: u32) -> bool {
    if config().announce_new == 0 || tgid == 0 {
        return false;
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { ANNOUNCED.get(&tgid) }.is_some() {
        return false;
    }
    let _ = ANNOUNCED.insert(&tgid, &1, 0);
    announce(probe_common::RecordKind::Exec, tgid);
    true
}

/// Tells the collector's announcement thread that `tgid` is new (`Exec`) or
/// mapped code (`MapsChanged`), with a wakeup: it reads the process at once.
#[inline(always)]
pub(crate) fn announce(kind: probe_common::RecordKind, tgid: u32) {
    let record = probe_common::native::MapsChanged {
        kind: kind as u32,
        pid: tgid,
    };
    let _ = ANNOUNCE.output::<probe_common::native::MapsChanged>(
        &record,
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64,
    );
}

/// Where a sample is assembled before it is copied to the ring buffer. A record is
/// too large for the 512-byte BPF stack, and the ring buffer only reserves
/// constant sizes, so the variable-length record is built here first.
#[map]
static SCRATCH: PerCpuArray<SampleScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: non-zero while a program that runs in a thread's context (the
/// off-CPU programs, the Go uprobes) assembles a record in `SCRATCH` and the
/// walk's per-CPU buffers. The CPU sampler can interrupt those (BPF only keeps
/// a program from interrupting itself; since Linux 6.x a uprobe program runs
/// with interrupts and, on preemptible kernels, preemption on: only migration
/// is off), and on a preemptible kernel another thread's program can run on
/// the CPU while one is preempted mid-record. A sample that finds this set is
/// dropped, and a program that finds it set skips its record (both counted
/// as `DropNoScratch`), rather than write over a record half built.
#[map]
static SCRATCH_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Is this CPU's scratch in use by the off-CPU program?
#[inline(always)]
fn scratch_busy() -> bool {
    // SAFETY: this CPU's slot, read once.
    SCRATCH_BUSY
        .get_ptr(0)
        .is_some_and(|b| unsafe { core::ptr::read_volatile(b) } != 0)
}

/// Takes this CPU's scratch for a record built in a thread's context: false
/// (counted) when another program holds it. The holder frees it with
/// `set_scratch_busy(false)`. (A check then a set: programs on one CPU
/// interleave only by interruption or preemption, and one that takes the
/// scratch between the two finishes, and frees it, before this one goes on.)
#[inline(always)]
fn take_scratch() -> bool {
    if !scratch_free() {
        return false;
    }
    set_scratch_busy(true);
    true
}

/// Whether this CPU's scratch is free: false (counted as `DropNoScratch`)
/// while a program in a thread's context holds it — the record this
/// program would build is dropped.
#[inline(always)]
fn scratch_free() -> bool {
    if scratch_busy() {
        count(Counter::DropNoScratch);
        return false;
    }
    true
}

/// Marks this CPU's scratch in use (or free again).
#[inline(always)]
fn set_scratch_busy(busy: bool) {
    if let Some(b) = SCRATCH_BUSY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { core::ptr::write_volatile(b, u64::from(busy)) };
    }
}

/// `v`, which the compiler can no longer reason about: a bound applied to the
/// result (a mask) stays in the code, where LLVM would drop one it can prove
/// redundant, and older verifiers, which learn less from the comparisons
/// before it, need it (Linux 6.1). A volatile copy through the stack: one
/// store and one load.
#[inline(always)]
fn opaque(v: u64) -> u64 {
    let slot = v;
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&slot) }
}

#[inline(always)]
fn config() -> Config {
    // SAFETY: CONFIG is a plain-old-data global in .rodata; the volatile read keeps
    // the compiler from folding in the default value the collector overrides.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// The ring-buffer flags for a record about to be written: the collector is
/// woken once `wakeup_bytes` wait; below that it drains on its own timer
/// (batched wakeups: a wakeup per record would cost more than the record).
#[inline(always)]
fn wakeup_flags() -> u64 {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config().wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}

/// Adds one to `counter` on this CPU and returns the new value.
#[inline(always)]
fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        Some(slot) => {
            // SAFETY: the slot is this CPU's own and perf_event programs do not nest
            // on one CPU, so nothing else writes it meanwhile.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}

/// See [`cpu_sample`]: slot 0 holds `cpu_sample_runtimes` once the
/// collector loaded it.
#[map]
static RUNTIME_SAMPLERS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The slot of [`RUNTIME_SAMPLERS`] the native sampler tail-calls (always 0),
/// read from writable global data (`.bss`) so that the verifier cannot see
/// the key as a constant. With a constant key the tail call becomes a direct
/// jump that the x86-64 JIT patches into the *running* sampler's code
/// (`text_poke_bp`, with its cross-CPU syncs) each time the slot changes: when
/// the collector loads the runtimes' walks mid-run and when the array is
/// freed at exit. Under QEMU's multi-threaded emulation, which the VM tier
/// runs, a CPU can keep executing a stale translation of patched code (see
/// `xtask/src/vmtest.rs`, `emulator_fault`); an indirect tail call reads the
/// slot at each call and patches nothing.
#[unsafe(no_mangle)]
static mut RUNTIME_SAMPLER_SLOT: u32 = 0;

/// Passes the current sample to `cpu_sample_runtimes` (see [`cpu_sample`]);
/// returns only if its slot is empty.
#[inline(always)]
pub(crate) fn tail_call_runtime_sampler(ctx: &PerfEventContext) {
    // SAFETY: a plain read of a global no program writes; the tail call goes
    // to a perf_event program of this object, which takes the same context,
    // and returns here only on failure.
    unsafe {
        let slot = core::ptr::read_volatile(&raw const RUNTIME_SAMPLER_SLOT);
        let _ = RUNTIME_SAMPLERS.tail_call(ctx, slot);
    }
    count(Counter::RuntimeWalkPending);
}

/// Samples the stacks of whatever runs on this CPU, at the perf event's
/// frequency, by the native walks (`.eh_frame` rules, frame pointers). A
/// sample of a process the collector described as Go or .NET goes to
/// [`cpu_sample_runtimes`] by a tail call (see `sample::sample`): the
/// runtimes' walks are verified only in a run that meets a runtime, when the
/// collector first describes one. Until then (the slot is empty, the call
/// falls through) the sample is walked here, counted as `RuntimeWalkPending`.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    sample::sample::<false>(&ctx);
    0
}

/// [`cpu_sample`] with the Go and .NET walks (the goroutine, JIT code, a
/// system stack's goroutine frames).
#[perf_event]
pub fn cpu_sample_runtimes(ctx: PerfEventContext) -> u32 {
    sample::sample::<true>(&ctx);
    0
}

/// The CPU sampler of kernels without what the other walks need: frame
/// pointers only (see `sample::sample_frame_pointers`).
#[perf_event]
pub fn cpu_sample_fp(ctx: PerfEventContext) -> u32 {
    sample::sample_frame_pointers(&ctx);
    0
}

/// `syscalls:sys_enter_mmap`: notes a thread mapping a file's code.
#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    native::mmap_enter(&ctx);
    0
}

/// `syscalls:sys_exit_mmap`: tells the collector the mapping is there.
#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    native::mmap_exit(&ctx);
    0
}

/// `raw_syscalls:sys_exit` (BTF-typed): a target's `read`/`write`-like call
/// may have moved the start of an HTTP request or response.
#[btf_tracepoint(function = "sys_exit")]
pub fn http_sys_exit(ctx: BtfTracePointContext) -> i32 {
    http::sys_exit(&ctx);
    0
}

/// `sched:sched_switch` (BTF-typed): a target thread leaves the CPU.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_start(ctx: BtfTracePointContext) -> i32 {
    offcpu::switch_out(&ctx);
    0
}

/// `raw_syscalls:sys_exit` (raw): a target thread that blocked in this system
/// call returns from it; its off-CPU span ends.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn off_cpu_end(ctx: RawTracePointContext) -> i32 {
    offcpu::syscall_exit(&ctx);
    0
}

/// `sched_process_exec`: a process whose new name is one `--comm` selects
/// becomes a target from its first instruction on; a target that execs (a
/// child of a followed tree, a command) is announced to the collector with a
/// wakeup, which reads it at once (see `RecordKind::Exec`).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if cfg.select_comms != 0
        && let Ok(comm) = aya_ebpf::helpers::bpf_get_current_comm()
        // SAFETY: the value is only tested for presence.
        && unsafe { COMMS.get(comm) }.is_some()
    {
        let _ = TARGETS.insert(tgid, 1, 0);
    }
    if cfg.filter_pids != 0 && selected(tgid) {
        announce(probe_common::RecordKind::Exec, tgid);
    }
    0
}

/// `task:task_newtask` (a plain tracepoint: its fields have kept their place
/// since Linux 3.x; the collector checks them in the format file before it
/// attaches this): a process a target starts joins the target set before it
/// runs its first instruction. The new task is made in its parent's context
/// (`copy_process`), so the current tgid is the parent's; a new thread
/// (`CLONE_THREAD`) is already in its process's set.
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the event's record, checked by the collector
    // against /sys/kernel/tracing/events/task/task_newtask/format.
    let (Ok(pid), Ok(flags)) = (unsafe { ctx.read_at::<i32>(TASK_NEWTASK_PID) }, unsafe {
        ctx.read_at::<u64>(TASK_NEWTASK_CLONE_FLAGS)
    }) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let parent = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { TARGETS.get(parent) }.is_none() {
        return 0;
    }
    match TARGETS.insert(pid as u32, 1, 0) {
        Ok(()) => count(Counter::ChildrenFollowed),
        Err(_) => count(Counter::ChildrenLost),
    };
    0
}

/// `CLONE_THREAD` (`<linux/sched.h>`).
const CLONE_THREAD: u64 = 0x0001_0000;

#[cfg(not(test))]
/// `runtime.casgstatus` (`--go-states`): a goroutine changes status.
#[uprobe]
pub fn go_casgstatus(ctx: ProbeContext) -> u32 {
    go::casgstatus(&ctx);
    0
}

/// `runtime.reentersyscall` (`--go-states`, Go 1.26+).
#[uprobe]
pub fn go_syscall_enter(ctx: ProbeContext) -> u32 {
    go::syscall_enter(&ctx);
    0
}

/// `runtime.exitsyscall` (`--go-states`, Go 1.26+).
#[uprobe]
pub fn go_syscall_exit(ctx: ProbeContext) -> u32 {
    go::syscall_exit(&ctx);
    0
}

/// `runtime.newproc1` (`--go-states`): a goroutine is created.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    go::newproc1(&ctx);
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
