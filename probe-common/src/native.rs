//! The on-CPU sample: what every sample carries whatever the runtime.

/// Most frames kept per stack (kernel and user each), as `perf` does.
pub const MAX_FRAMES: usize = 127;

/// `Stacks::flags`: the kernel stack could not be read.
pub const FLAG_KERNEL_STACK_ERROR: u32 = 1 << 0;
/// `Stacks::flags`: the user stack could not be read.
pub const FLAG_USER_STACK_ERROR: u32 = 1 << 1;
/// `Stacks::flags`: the user stack filled all [`MAX_FRAMES`] slots and may
/// have been cut.
pub const FLAG_USER_TRUNCATED: u32 = 1 << 2;
/// `Stacks::flags`: the kernel stack filled all [`MAX_FRAMES`] slots.
pub const FLAG_KERNEL_TRUNCATED: u32 = 1 << 3;
/// `Stacks::flags`: the user stack walk (by `.eh_frame` rules) stopped at
/// a frame it had no rule for and whose frame pointer was not usable either.
pub const FLAG_USER_NO_UNWIND_INFO: u32 = 1 << 5;
/// `Stacks::flags`: the user leaf was in a managed method's prolog or epilog,
/// where its frame has no fixed shape; the stack stops after it.
pub const FLAG_USER_LEAF_EDGE: u32 = 1 << 4;
/// `Stacks::flags`: the user stack walk (by `.eh_frame` rules) ended
/// where the unwind information says there is no caller (`DW_CFA_undefined
/// rip`, as in `_start` and a new thread's `clone3`, or a zero return
/// address): the stack is complete, whatever its outermost frame is named.
pub const FLAG_USER_OUTERMOST: u32 = 1 << 7;
/// [`SampleHeader::baseline`] holds a frame-pointer walk of the same stack.
pub const FLAG_FP_BASELINE: u32 = 1 << 6;

/// Fixed part of every stack record (`CpuSample`, `OffCpuSample`,
/// `GoBlockSample`), one part per feature. On the ring buffer it is followed
/// by `kernel_frames` kernel addresses, `user_frames` user addresses and
/// `go.switch_frames` goroutine addresses, each a `u64`, leaf first; the
/// record is only as long as its frames. Every part is plain integers with
/// no implicit padding (checked below), so the collector reads a header with
/// one unaligned copy of its bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleHeader {
    /// Who was sampled, where and when.
    pub id: SampleId,
    /// The stacks that follow, and how their walks ended.
    pub stacks: Stacks,
    /// The goroutine running, for a Go process.
    pub go: crate::go::GoSample,
    /// A frame-pointer walk of the same stack, one sample in
    /// [`FP_BASELINE_EVERY`].
    pub baseline: FpBaseline,
    /// The span an off-CPU or goroutine-wait record stands for.
    pub span: crate::offcpu::Span,
}
const _: () = assert!(
    core::mem::size_of::<SampleHeader>()
        == core::mem::size_of::<SampleId>()
            + core::mem::size_of::<Stacks>()
            + core::mem::size_of::<crate::go::GoSample>()
            + core::mem::size_of::<FpBaseline>()
            + core::mem::size_of::<crate::offcpu::Span>()
);
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 112 + 8 * STACK_TOP_WORDS);

/// Who was sampled, where and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleId {
    /// The [`crate::RecordKind`].
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
}
const _: () = assert!(core::mem::size_of::<SampleId>() == 40);

/// The stacks that follow a header, and how their walks ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stacks {
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
}
const _: () = assert!(core::mem::size_of::<Stacks>() == 8 + 8 * STACK_TOP_WORDS);

/// For one sample in [`FP_BASELINE_EVERY`] of those walked by rules
/// ([`FLAG_FP_BASELINE`] set): the outermost frame a frame-pointer walk of
/// the same stack reached (`bpf_get_stack`, as perf walks), for the
/// frame-pointer baseline of stack completeness; zeros otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FpBaseline {
    /// The outermost frame it reached; 0 if it found none.
    pub outermost: u64,
    /// Its frame count.
    pub frames: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FpBaseline>() == 16);

/// One sample in this many of those walked by rules also gets a frame-pointer
/// walk, for the baseline (about 1 µs each).
pub const FP_BASELINE_EVERY: u64 = 8;

/// Words of [`Stacks::stack_top`].
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

// --- Native code without frame pointers: `.eh_frame` rules for the kernel -------
//
// The collector reads each mapped object's `.eh_frame` (`probe-user/src/native/
// ehframe.rs`) into rows sorted by PC, all objects' rows in one array
// (`UNWIND_ROWS`), each object a contiguous range shared by every process that
// maps it; per process, its mappings with where their rows are. A page index
// per object (`UNWIND_PAGES`: for each 256-byte page of its code, the rows its
// PCs can have) narrows the search for a PC's row to the rows of its page (a
// few at most) instead of the whole object's.

/// Rows in `UNWIND_ROWS`, all objects together (8 bytes each: 8 MiB of kernel
/// memory; libc has ~10,000, libcoreclr ~60,000).
pub const MAX_UNWIND_ROWS: u32 = 1 << 20;
/// Executable mappings with rules, per process.
pub const MAX_UNWIND_MAPPINGS: usize = 64;
/// Processes walked with `.eh_frame` rules.
pub const MAX_UNWIND_PIDS: u32 = 4096;

/// How to find the CFA, in [`UnwindRow::cfa_kind`].
pub mod cfa_kind {
    /// No rule: the walk falls back to the frame pointer, else stops.
    pub const UNKNOWN: u8 = 0;
    /// RSP + `cfa_off`.
    pub const RSP: u8 = 1;
    /// RBP + `cfa_off`.
    pub const RBP: u8 = 2;
    /// A PLT entry: RSP + 8, + 8 past the entry's 11th byte.
    pub const PLT: u8 = 3;
    /// The outermost frame: the stack is complete.
    pub const OUTERMOST: u8 = 4;
    /// Go code (from the binary's `.gopclntab`, in a Go binary that also has
    /// `.eh_frame` rows for its C parts): Go keeps frame pointers, so the
    /// caller is found by RBP, and the frame record may be on another stack
    /// (`runtime.cgocallback` and `runtime.systemstack` run on the system
    /// stack and call onto the goroutine's, or back).
    pub const GO_FRAME_POINTER: u8 = 5;
    /// The return address of C code into `runtime.asmcgocall`, which called it
    /// on the system stack: the goroutine's stack pointer at asmcgocall's entry
    /// (after its own frame record, if it has one) is kept in asmcgocall's
    /// frame as a depth below `g.stack.hi` (word at RSP + `cfa_off`; g at the
    /// word after; when that g is 0 the word is the stack pointer itself).
    /// [`super::UnwindRow::rbp`] is 1 if a frame record (saved RBP) is at that
    /// stack pointer, before the return address, else 0.
    pub const GO_CGO_CALL: u8 = 6;
}

/// [`UnwindRow::rbp`]: the caller's RBP is still in RBP.
pub const RBP_SAME: i8 = 0;
/// [`UnwindRow::rbp`]: the caller's RBP cannot be recovered.
pub const RBP_UNKNOWN: i8 = i8::MIN;

/// The rules from `pc` up to the next row's PC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindRow {
    /// Link-time address (low 32 bits; objects are smaller than 4 GiB).
    pub pc: u32,
    /// CFA offset from the register of `cfa_kind`.
    pub cfa_off: i16,
    /// See [`cfa_kind`].
    pub cfa_kind: u8,
    /// Where the caller's RBP is: saved at CFA + 8 * `rbp`, or [`RBP_SAME`] /
    /// [`RBP_UNKNOWN`].
    pub rbp: i8,
}
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);

/// One executable mapping of a process, and its object's rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindMapping {
    /// First address.
    pub start: u64,
    /// Past the last address.
    pub end: u64,
    /// Run-time address minus link-time address.
    pub bias: u64,
    /// Index of the object's first row in `UNWIND_ROWS`.
    pub first: u32,
    /// Its rows.
    pub count: u32,
    /// Index of the object's page index in `UNWIND_PAGES`.
    pub pages_first: u32,
    /// Entries of its page index: one per page of its code, from its first
    /// row's page to its last row's.
    pub pages: u32,
    /// The link-time page (address >> [`UNWIND_PAGE_SHIFT`]) of its first row.
    pub page_base: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 48);

/// One page of an object's code in the page index: its rows (indexes from the
/// object's first row) are among `lo..=hi` — `lo` the last row at or before
/// the page's start, `hi` the last at or before the next page's. 8 bytes, as
/// the kernel lays array elements out (a `u32` element would take 8 bytes in
/// the memory-mapped array anyway).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindPage {
    /// First candidate row.
    pub lo: u32,
    /// Last candidate row.
    pub hi: u32,
}
const _: () = assert!(core::mem::size_of::<UnwindPage>() == 8);

/// Page size of the row index: rows are found by page, then by a short search.
/// 256 bytes: dense C++ (libcoreclr) has ~4 rows in one, so most lookups need
/// one or two steps. (4 KiB pages, ~40 rows: 6 steps, +1.3 µs for a 40-frame
/// mixed stack; 1 KiB: +0.5 µs.)
pub const UNWIND_PAGE_SHIFT: u32 = 8;
/// Entries in `UNWIND_PAGES`, all objects together (8 bytes each, one per 256
/// bytes of code: 8 MiB of index for 256 MiB of code; libcoreclr's 5.5 MiB of
/// code take 22,000).
pub const MAX_UNWIND_PAGES: u32 = 1 << 20;

/// A process's mappings with rules, sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindMappings {
    /// Entries used.
    pub count: u32,
    /// This version of the list: never 0, and never the same twice in a run
    /// (the collector numbers every write of every slot). The kernel's row
    /// cache keys what it found by it, so a list rewritten in place (new
    /// libraries, a slot given to another process) is never served stale.
    pub generation: u32,
    /// The mappings.
    pub entries: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}
const _: () = assert!(core::mem::size_of::<UnwindMappings>() == 8 + 48 * MAX_UNWIND_MAPPINGS);

#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for UnwindRow {}
#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for UnwindMappings {}

/// A ring-buffer record (`RecordKind::MapsChanged`): a process whose stacks
/// are walked by rules (or a .NET process) mapped a file's code (`mmap` with
/// `PROT_EXEC` returned; `dlopen` does this), so the collector reads its maps
/// and gives the kernel the new object's rules now rather than when a sample
/// first lands there.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MapsChanged {
    /// `RecordKind::MapsChanged`, or `RecordKind::Exec` (the same record, sent
    /// when a target `exec`s).
    pub kind: u32,
    /// The process.
    pub pid: u32,
}
const _: () = assert!(core::mem::size_of::<MapsChanged>() == 8);

/// Threads in an `mmap` of code, between the tracepoints at its entry and exit.
pub const MAX_MMAP_THREADS: u32 = 1024;
