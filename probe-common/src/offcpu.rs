//! Off-CPU time: when a target thread blocks in a system call and when the
//! call returns.
//!
//! At `sched_switch` the kernel program notes a thread that blocks inside a
//! system call (time, state, call; the first block of the call); when the call
//! returns (`raw_syscalls:sys_exit`, in the thread's own context, so its user
//! stack is still the one it made the call with) it sends an
//! [`crate::RecordKind::OffCpuSample`]: a [`crate::native::SampleHeader`] with
//! its [`Span`] set and both stacks, if the span lasted `Config::min_block_ns`:
//! the user stack read then (unchanged since the call), the kernel stack taken
//! at the switch (where the thread waited; at the call's return it is only the
//! exit path).
//! With `Config::off_cpu_runnable` (`--mode wall`), a thread that leaves the
//! CPU runnable (preempted, or yielding in the kernel) is noted too, state
//! [`state::PREEMPTED`]: its span ends when it runs again, which the kernel
//! program learns at the thread's next switch or system call return on that
//! CPU (the CPU's last switch is when it came back). Not followed: waits
//! outside system calls (page faults). Kernels without kprobes and with
//! lockdown (this machine's: fentry/fexit are refused) still have both
//! tracepoints.

/// The span an off-CPU record ([`crate::RecordKind::OffCpuSample`]) or a
/// goroutine-wait record (`GoBlockSample`) stands for
/// ([`crate::native::SampleHeader::span`]); zeros in a CPU sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    /// Nanoseconds from leaving the CPU (or starting to wait) to running
    /// again.
    pub ns: u64,
    /// Off-CPU: the thread's state when it left the CPU (see [`state`]).
    pub state: u16,
    /// Off-CPU: the system call the thread was in, plus one (0: none, e.g.
    /// preempted in user mode or a page fault).
    pub syscall: u16,
    /// Explicit padding (always 0).
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Span>() == 16);

/// Threads blocked in a system call tracked at once (all targets together;
/// least recently used out first); a failed insert is `Counter::OffCpuUntracked`.
pub const MAX_OFF_CPU_THREADS: u32 = 1 << 16;

/// Kernel frames kept of a blocked thread's stack, taken as it leaves the CPU
/// (`schedule` and the call's path into it).
pub const MAX_OFF_CPU_KERNEL_FRAMES: usize = 32;

/// Blocked threads whose kernel stack is kept at once (least recently used
/// out first; a span whose stack was evicted is sent without it, counted as
/// `Counter::KernelStackError`).
pub const MAX_OFF_CPU_KERNEL_STACKS: u32 = 1 << 13;

/// Blocked threads whose off-CPU record is built at the switch and kept until
/// the call returns (least recently used out first; a thread without one is
/// walked at the return instead, as before). Each holds a whole record
/// (~2 KiB); only `--mode offcpu`/`wall` load the table at this size.
pub const MAX_OFF_CPU_STASHED: u32 = 1 << 12;

/// The thread state bits kept (`prev_state` of the `sched_switch` tracepoint).
pub const STATE_MASK: u16 = 0x7fff;

/// Thread state bits, from the kernel's `include/linux/sched.h` (Linux 5.18 to
/// 6.18; stable since 5.14 except for `TASK_FREEZABLE`, which is not kept).
pub mod state {
    /// `TASK_INTERRUPTIBLE`: a sleep a signal can end (most waits).
    pub const INTERRUPTIBLE: u16 = 0x1;
    /// `TASK_UNINTERRUPTIBLE`: a sleep a signal cannot end (disk I/O, some locks).
    pub const UNINTERRUPTIBLE: u16 = 0x2;
    /// `__TASK_STOPPED`: stopped by a signal.
    pub const STOPPED: u16 = 0x4;
    /// `__TASK_TRACED`: stopped by a tracer.
    pub const TRACED: u16 = 0x8;
    /// `EXIT_DEAD | EXIT_ZOMBIE | TASK_DEAD`: the thread is exiting and will not
    /// run again, so it is not tracked.
    pub const EXITING: u16 = 0x10 | 0x20 | 0x80;
    /// crossprof's own (outside [`super::STATE_MASK`]): the thread left the
    /// CPU runnable, preempted, and waited for a CPU.
    pub const PREEMPTED: u16 = 0x8000;
}
