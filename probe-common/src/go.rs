//! Go: what the kernel needs to read the current goroutine of a Go process.
//!
//! On x86-64, Go code compiled for the internal ABI keeps the current `g` in R14
//! (golang/go `src/cmd/compile/abi-internal.md`, Go 1.17+). The kernel program
//! takes R14 as a candidate `g` and accepts it only if the sampled stack pointer
//! lies within that `g`'s stack (`g.stack.lo <= sp < g.stack.hi`, offsets 0 and 8
//! in every version): R14 is an ordinary register in C and assembly code. On a
//! system stack (g0) the id is 0, "no goroutine".

/// What a stack record carries of a Go process's goroutine
/// ([`crate::native::SampleHeader::go`]): zeros for a process that is not
/// Go, or when no goroutine is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoSample {
    /// The goroutine running; 0 when none or unknown.
    pub goid: u64,
    /// That goroutine's `g.labels` pointer (its pprof labels, read by the
    /// collector); 0 when none.
    pub labels: u64,
    /// That goroutine's status (`g.atomicstatus`, see [`status`]): running,
    /// or in a system call for a sample taken in the kernel. For a
    /// goroutine-wait record (`GoBlockSample`): its wait reason.
    pub status: u32,
    /// For a sample of Go code on a thread's system stack (g0): frames of the
    /// goroutine it works for (`m.curg`, from its saved `g.sched` registers),
    /// after the user frames: its saved PC, the word at its saved SP (a return
    /// address after `runtime.morestack` only), then its frame-pointer chain.
    /// The collector appends them where the user stack stops at the switch
    /// (`runtime.mcall`, `runtime.morestack`).
    pub switch_frames: u32,
    /// For a sample in a Go signal handler: the PC the signal interrupted
    /// (from the handler's `ucontext`), which no frame-pointer walk sees; 0
    /// otherwise.
    pub signal_pc: u64,
}
const _: () = assert!(core::mem::size_of::<GoSample>() == 32);

/// Where a Go version keeps what the kernel reads in a `g` (from the collector's
/// per-version table, `probe-user/src/go/offsets.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOffsets {
    /// `g.goid` (int64).
    pub goid: u32,
    /// `g.labels` (unsafe.Pointer to the goroutine's pprof labels).
    pub labels: u32,
    /// `g.atomicstatus` (uint32).
    pub status: u32,
    /// `g.waitreason` (uint8).
    pub wait_reason: u32,
    /// `m.curg`: the goroutine an M (thread) runs user code for.
    pub m_curg: u32,
    /// `g.sched.bp`: the frame pointer saved when the goroutine left its stack
    /// (`g.sched.pc` is at 64 and `g.m` at 48 in every version).
    pub sched_bp: u32,
    /// `m.gsignal`: the thread's signal-handling `g`, whose stack a signal
    /// handler runs on while R14 still holds the interrupted `g`.
    pub m_gsignal: u32,
    /// Zero.
    pub _pad: u32,
    /// `runtime.sigtramp` in this process: `[start, end)`, addresses. The
    /// kernel enters a Go signal handler there (or at `cgo_sigtramp`), with
    /// the interrupted registers in the `ucontext` RDX points to; `sigtrampgo`
    /// spills that pointer to its argument slot, 32 bytes above its frame record
    /// (go1.19.8 to go1.27.3 alike). 0 when unknown.
    pub sigtramp: [u64; 2],
    /// `runtime.cgoSigtramp`'s entry, the handler a binary with cgo installs.
    pub cgo_sigtramp: u64,
}
const _: () = assert!(core::mem::size_of::<GoOffsets>() == 56);

/// Where `uc_mcontext.rip` is in a Linux x86-64 `ucontext`: `uc_flags`,
/// `uc_link`, `uc_stack` (24 bytes), then `sigcontext` whose `rip` is its 17th
/// word (include/uapi/asm/sigcontext.h, ucontext.h).
pub const UCONTEXT_RIP: u64 = 40 + 16 * 8;
/// Frames looked through for the one `runtime.sigtramp` called.
pub const MAX_SIGNAL_FRAMES: usize = 16;

/// `g.m` (amd64, Go 1.19-1.27).
pub const G_M: u64 = 48;
/// `g.sched.pc` (amd64, Go 1.19-1.27).
pub const G_SCHED_PC: u64 = 64;
/// `g.sched.sp` (amd64, Go 1.19-1.27).
pub const G_SCHED_SP: u64 = 56;
/// Most frames of the goroutine a system stack (g0) works for, appended to a
/// sample taken on g0 (see [`GoSample::switch_frames`]): its saved PC, the
/// word at its saved SP, then up to this many from its frame pointer.
pub const MAX_SWITCH_FRAMES: usize = 48;

#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for GoOffsets {}

// --- Goroutine states over time (uprobes on the runtime, entry only) -------------
//
// `runtime.casgstatus(gp *g, oldval, newval uint32)` is the one function almost
// every status change goes through (golang/go `src/runtime/proc.go`, 1.19-1.27;
// `//go:nosplit`, so its entry runs once per call). Its arguments arrive in RAX,
// EBX and ECX (ABIInternal). From Go 1.26 the syscall fast paths change the status
// with a bare CAS instead (`reentersyscall`, `exitsyscall`), so those two functions
// are probed too on those versions; `g` is then R14. `runtime.newproc1(fn, callergp,
// callerpc, ...)` gives the parent and the creation site of the goroutine that the
// same thread makes runnable next. The kernel keeps, per goroutine, how long it
// spent in each state, and hands the record over when the goroutine ends.

/// Goroutine statuses (`_G*` in `runtime/runtime2.go`, the same 1.19-1.27).
pub mod status {
    /// `_Gidle`: just allocated.
    pub const IDLE: u32 = 0;
    /// `_Grunnable`: on a run queue.
    pub const RUNNABLE: u32 = 1;
    /// `_Grunning`: running Go code.
    pub const RUNNING: u32 = 2;
    /// `_Gsyscall`: in a system call.
    pub const SYSCALL: u32 = 3;
    /// `_Gwaiting`: blocked, for `g.waitreason`.
    pub const WAITING: u32 = 4;
    /// `_Gdead`: unused (exited, or not started).
    pub const DEAD: u32 = 6;
}

/// Most goroutines tracked at once, over all processes; more are counted
/// (`Counter::GoroutinesUntracked`), never guessed.
pub const MAX_GOROUTINES: u32 = 1 << 16;

/// Distinct wait reasons whose time is kept apart per goroutine; time waiting
/// for any further reason is summed in [`Goroutine::wait_other_ns`].
pub const WAIT_SLOTS: usize = 6;
/// [`Goroutine::wait_reasons`] value of an unused slot.
pub const WAIT_SLOT_FREE: u8 = 0xff;

/// Slots of [`Goroutine::ns`].
pub mod slot {
    /// `_Grunning`.
    pub const RUNNING: usize = 0;
    /// `_Grunnable`.
    pub const RUNNABLE: usize = 1;
    /// `_Gsyscall`.
    pub const SYSCALL: usize = 2;
    /// Any other status (`_Gcopystack`, `_Gpreempted`, ...).
    pub const OTHER: usize = 3;
    /// Time after which the goroutine was found in another status than the last
    /// one seen: a change the probes do not see (e.g. an asynchronous preemption
    /// that parks it) happened then.
    pub const UNOBSERVED: usize = 4;
    /// Number of slots.
    pub const COUNT: usize = 5;
}

/// Map key of a tracked goroutine: its process and the address of its `g`,
/// which stays the same for the goroutine's whole life (a `g` is reused only
/// after the goroutine has ended, which closes its record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GKey {
    /// Process (tgid).
    pub tgid: u32,
    /// Zero.
    pub _pad: u32,
    /// Address of the `g`.
    pub g: u64,
}
const _: () = assert!(core::mem::size_of::<GKey>() == 16);

/// What a thread's `runtime.newproc1` call said about the goroutine it creates,
/// until that goroutine's first status change on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creation {
    /// The creating goroutine's id.
    pub parent_goid: u64,
    /// The `go` statement's PC (`callerpc`).
    pub create_pc: u64,
    /// The function the goroutine runs (`fn.fn`).
    pub start_pc: u64,
}
const _: () = assert!(core::mem::size_of::<Creation>() == 24);

/// One goroutine's time, per status, since it was first seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goroutine {
    /// Its id (read at every change: a new goroutine gets it late in `newproc1`).
    pub goid: u64,
    /// See [`Creation`]; zeros when it was created before tracking began.
    pub creation: Creation,
    /// When the current status began.
    pub since_ns: u64,
    /// The current status.
    pub status: u32,
    /// The current wait reason (`g.waitreason`), when waiting.
    pub wait_reason: u32,
    /// Its first change, when the status it left began before the goroutine was
    /// tracked (0 otherwise): the collector counts that status from the moment
    /// tracking began.
    pub first_ns: u64,
    /// The status left at `first_ns`.
    pub first_status: u32,
    /// Its wait reason, when waiting.
    pub first_reason: u32,
    /// Nanoseconds per [`slot`].
    pub ns: [u64; slot::COUNT],
    /// The wait reasons of `wait_ns` ([`WAIT_SLOT_FREE`] when unused).
    pub wait_reasons: [u8; WAIT_SLOTS],
    /// Zero.
    pub _pad: [u8; 2],
    /// Nanoseconds waiting per reason in `wait_reasons`.
    pub wait_ns: [u64; WAIT_SLOTS],
    /// Nanoseconds waiting for other reasons once every slot is taken.
    pub wait_other_ns: u64,
    /// Status changes seen.
    pub changes: u64,
}
const _: () = assert!(core::mem::size_of::<Goroutine>() == 176);

/// A ring-buffer record: a goroutine created by another one got its id
/// (`RecordKind::GoroutineStart`), sent only with request attribution: the
/// collector lets it work for the request its creator works for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineStart {
    /// `RecordKind::GoroutineStart`.
    pub kind: u32,
    /// Process.
    pub pid: u32,
    /// Its id.
    pub goid: u64,
    /// Its creator's id.
    pub parent_goid: u64,
    /// When (CLOCK_MONOTONIC ns).
    pub time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<GoroutineStart>() == 32);

/// A ring-buffer record: a goroutine ended (`RecordKind::GoroutineEnd`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineEnd {
    /// `RecordKind::GoroutineEnd`.
    pub kind: u32,
    /// Process.
    pub pid: u32,
    /// When it ended (CLOCK_MONOTONIC ns).
    pub end_ns: u64,
    /// Its record, the last interval included.
    pub g: Goroutine,
}
const _: () = assert!(core::mem::size_of::<GoroutineEnd>() == 192);

/// The uprobe cookie: where this binary's Go version keeps `g.goid` and
/// `g.waitreason` (low and high 16 bits), and [`COOKIE_EVERY_PROCESS`] when the
/// probe is attached for every process running the binary.
pub const fn cookie(offsets: GoOffsets, every_process: bool) -> u64 {
    let flag = if every_process {
        COOKIE_EVERY_PROCESS
    } else {
        0
    };
    (offsets.goid as u64 & 0xffff) | ((offsets.wait_reason as u64 & 0xffff) << 16) | flag
}

/// Cookie bit: the probe fires in every process running the binary, so the
/// program keeps only the target set's hits.
pub const COOKIE_EVERY_PROCESS: u64 = 1 << 32;

#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for GKey {}
#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for Goroutine {}
