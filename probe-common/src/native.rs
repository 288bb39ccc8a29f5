//! The on-CPU sample: what every sample carries whatever the runtime.

/// Most frames kept per stack (kernel and user each), as `perf` does.
pub const MAX_FRAMES: usize = 127;

/// `SampleHeader::flags`: the kernel stack could not be read.
pub const FLAG_KERNEL_STACK_ERROR: u32 = 1 << 0;
/// `SampleHeader::flags`: the user stack could not be read.
pub const FLAG_USER_STACK_ERROR: u32 = 1 << 1;
/// `SampleHeader::flags`: the user stack filled all [`MAX_FRAMES`] slots and may
/// have been cut.
pub const FLAG_USER_TRUNCATED: u32 = 1 << 2;
/// `SampleHeader::flags`: the kernel stack filled all [`MAX_FRAMES`] slots.
pub const FLAG_KERNEL_TRUNCATED: u32 = 1 << 3;
/// `SampleHeader::flags`: the user leaf was in a managed method's prolog or epilog,
/// where its frame has no fixed shape; the stack stops after it.
pub const FLAG_USER_LEAF_EDGE: u32 = 1 << 4;

/// Fixed part of a CPU sample record. On the ring buffer it is followed by
/// `kernel_frames` kernel addresses and then `user_frames` user addresses, each a
/// little-endian `u64`, leaf first. The record is only as long as its frames.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleHeader {
    /// [`crate::RecordKind::CpuSample`].
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` at the sample (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Number of kernel frames that follow.
    pub kernel_frames: u16,
    /// Number of user frames that follow the kernel frames.
    pub user_frames: u16,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The first words at the user stack pointer (0 where unreadable): the return
    /// address of a leaf that has not saved a frame pointer is among them, where a
    /// frame-pointer walk cannot see it (see `probe-user`'s `aggregate.rs`).
    pub stack_top: [u64; STACK_TOP_WORDS],
    /// The goroutine running, for a Go process (see [`crate::go`]); 0 when none
    /// or unknown.
    pub goid: u64,
    /// That goroutine's `g.labels` pointer (its pprof labels, read by the
    /// collector); 0 when none.
    pub go_labels: u64,
    /// That goroutine's status (`g.atomicstatus`, see [`crate::go::status`]):
    /// running, or in a system call for a sample taken in the kernel.
    pub go_status: u32,
    /// For a sample of Go code on a thread's system stack (g0): frames of the
    /// goroutine it works for (`m.curg`, from its saved `g.sched` registers),
    /// after the user frames: its saved PC, the word at its saved SP (a return
    /// address after `runtime.morestack` only), then its frame-pointer chain.
    /// The collector appends them where the user stack stops at the switch
    /// (`runtime.mcall`, `runtime.morestack`).
    pub go_switch_frames: u32,
    /// For a sample in a Go signal handler: the PC the signal interrupted
    /// (from the handler's `ucontext`), which no frame-pointer walk sees; 0
    /// otherwise.
    pub go_signal_pc: u64,
}
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 80 + 8 * STACK_TOP_WORDS);

/// Words of [`SampleHeader::stack_top`].
pub const STACK_TOP_WORDS: usize = 4;

/// The per-CPU scratch buffer a sample is assembled in before it is copied to the
/// ring buffer: the header, then room for both stacks. Kernel frames are written at
/// `ips[0..]`, user frames right after them, so the record is contiguous.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleScratch {
    /// The fixed part.
    pub header: SampleHeader,
    /// Kernel frames, then user frames.
    pub ips: [u64; 2 * MAX_FRAMES],
}
const _: () = assert!(
    core::mem::size_of::<SampleScratch>()
        == core::mem::size_of::<SampleHeader>() + 2 * MAX_FRAMES * 8
);

/// Bytes of a record with `frames` frames in all.
pub const fn record_len(frames: usize) -> usize {
    core::mem::size_of::<SampleHeader>() + frames * 8
}
