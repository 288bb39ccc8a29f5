//! Building a record: ids, time, comm, the kernel stack and the user stack of
//! whatever runs on the CPU when the `CPU_CLOCK` software event fires (and,
//! for the off-CPU programs, of a thread leaving or coming back to a CPU),
//! in the per-CPU scratch buffer, then copied to the ring buffer only as long
//! as its frames, or stashed for later (`Output`).
//!
//! The user stack is walked by the process's runtime: `.eh_frame` rules
//! ([`crate::native`]), through JIT code ([`crate::dotnet`]), by frame
//! pointers (`bpf_get_stack`), with the goroutine of a Go process read
//! beside it ([`crate::go`]). The registers they start from are
//! [`crate::regs`].

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{self, bpf_get_stack},
    },
    macros::map,
    maps::PerCpuArray,
    programs::PerfEventContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    Counter, RecordKind,
    native::{
        FLAG_FP_BASELINE, FLAG_KERNEL_STACK_ERROR, FLAG_KERNEL_TRUNCATED, FLAG_USER_STACK_ERROR,
        FLAG_USER_TRUNCATED, FP_BASELINE_EVERY, MAX_FRAMES, STACK_TOP_WORDS, SampleScratch,
        record_len,
    },
    offcpu::MAX_OFF_CPU_KERNEL_FRAMES,
    process::{PROCESS_GO, PROCESS_MANAGED, PROCESS_RULES, ProcessEntry},
};

use crate::{
    EVENTS, SCRATCH, config, count,
    native::{RuleWalk, unwind_by_rules},
    regs::{UserRegs, in_user_mode, saved_user_regs},
};

const STACK_BYTES: u32 = (MAX_FRAMES * 8) as u32;

/// Per CPU: the state of the walks of the record being built in `SCRATCH`
/// (same discipline: perf_event programs do not nest on a CPU, and the
/// off-CPU programs mark the scratch busy while they build).
///
/// Kept in a map, not on the BPF stack: before Linux 6.13 the frames of a call
/// chain share 512 bytes, `bpf_loop` callbacks included, and the sampler's
/// frame with its walks' callbacks went past that (6.12: "combined stack size
/// of 3 calls is 528"). Callbacks find it here (`bpf_loop` passes them a
/// pointer to the stack only, and crossprof passes none).
#[repr(C)]
pub(crate) struct Walks {
    /// The user registers the walks start from.
    pub regs: UserRegs,
    /// The process's `PROCESSES` entry (flags 0: none), copied once per
    /// record: the walks and the goroutine fields read it here instead of a
    /// hash lookup each.
    pub process: ProcessEntry,
    /// The `.eh_frame` rule walk.
    pub rule: RuleWalk,
    /// The .NET walk (processes without rules).
    pub managed: crate::dotnet::Walk,
    /// A Go frame-pointer chain on another stack.
    pub switch: crate::go::SwitchWalk,
    /// A managed leaf's step to its caller.
    pub stepped: crate::dotnet::Stepped,
}

#[map]
static WALKS: PerCpuArray<Walks> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Walks`].
#[inline(always)]
pub(crate) fn walks() -> Option<&'static mut Walks> {
    // SAFETY: this CPU's slot, used by one program at a time (see `Walks`).
    WALKS.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

/// The CPU sampler's work: `RUNTIMES` builds the one with the Go and .NET
/// walks (`cpu_sample_runtimes`), `!RUNTIMES` the one with the native walks
/// only (`cpu_sample`, which passes a Go or .NET process's samples to the
/// other: see `crate::cpu_sample`).
#[inline(always)]
pub fn sample<const RUNTIMES: bool>(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();

    if pid_tgid as u32 == 0 && cfg.include_idle == 0 {
        count(Counter::Idle);
        return;
    }
    if !crate::selected(tgid) {
        return;
    }
    // One lookup per sample: the native build decides the tail call with
    // the entry `record` then copies.
    let process = crate::process(tgid);
    if !RUNTIMES && process.is_some_and(|p| p.flags & (PROCESS_GO | PROCESS_MANAGED) != 0) {
        crate::tail_call_runtime_sampler(ctx);
    }
    count(Counter::Samples);
    if !crate::scratch_free() {
        // This CPU interrupted a program in a thread's context (off-CPU, a Go
        // uprobe) in the middle of a record.
        return;
    }
    // A sample taken in user mode has no kernel stack: skip the helper call (and
    // the 1 KiB it zero-fills), a third of the program's cost.
    let in_user = in_user_mode(ctx);
    record::<RUNTIMES>(
        ctx.as_ptr(),
        pid_tgid,
        || process,
        if in_user {
            Kernel::None
        } else {
            Kernel::Current
        },
        if in_user {
            Regs::Sampled(ctx)
        } else {
            Regs::Saved
        },
        None,
        if crate::first_sample(tgid) {
            Output::RingNow
        } else {
            Output::Ring
        },
    );
}

/// Copies `entry` (none: flags 0) into `to`, a word at a time: a plain
/// struct copy becomes a byte-wise `memmove` call.
#[inline(always)]
fn copy_process(to: &mut ProcessEntry, entry: Option<&ProcessEntry>) {
    const WORDS: usize = core::mem::size_of::<ProcessEntry>() / 8;
    let to = (to as *mut ProcessEntry).cast::<u64>();
    match entry {
        Some(from) => {
            let from = (from as *const ProcessEntry).cast::<u64>();
            for i in 0..WORDS {
                // SAFETY: both are 8-aligned `ProcessEntry`s (a map value and
                // a field of this CPU's walk state), WORDS words long.
                unsafe {
                    core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)))
                };
            }
        }
        // Only the flags: the rest is read only under a flag.
        // SAFETY: as above; the flags are in the first word's low half.
        None => unsafe { core::ptr::write_volatile(to.cast::<u32>(), 0) },
    }
}

/// What an off-CPU record adds to a sample (see `probe_common::offcpu`).
#[derive(Clone, Copy)]
pub(crate) struct OffCpu {
    pub ns: u64,
    pub state: u16,
    pub syscall: u16,
}

/// Where a record's kernel frames come from.
pub(crate) enum Kernel {
    /// None (a sample taken in user mode).
    None,
    /// The current kernel stack.
    Current,
    /// A stack kept earlier (an off-CPU span's, from its switch-out); null
    /// when it was not kept (a `KernelStackError`).
    Saved(*const crate::offcpu::KernelStack),
}

/// Where a record's user registers come from.
pub(crate) enum Regs<'a> {
    /// The perf event's own (a sample taken in user mode).
    Sampled(&'a PerfEventContext),
    /// Those saved at the thread's kernel entry.
    Saved,
}

/// Where a built record goes.
pub(crate) enum Output {
    /// The ring buffer, now.
    Ring,
    /// The same, waking the collector (a process's first sample, see
    /// `first_sample`).
    RingNow,
    /// The off-CPU stash of the current thread, to be sent when its system
    /// call returns (see `offcpu::syscall_exit`).
    Stash,
}

/// Builds the record of the current thread (`pid_tgid`): the kernel stack of
/// `ctx` as `kernel` says, the user stack from the registers `regs` names; an
/// on-CPU sample, or an off-CPU span when `off_cpu` is set; and sends or
/// stashes it. `process` gives the thread's process entry (none: not
/// described): the sampler's, found before it decided on the tail call; the
/// off-CPU programs' looked up here, where it always was (found earlier, the
/// entry lives across their other lookups and 6.1's verifier refused the
/// code LLVM then made: a stack slot read on a path that never wrote it).
///
/// The walks are subprograms of their own ([`user_stack`], [`go_fields`]): their
/// frames come and go, and this one keeps only what lives across them.
/// `RUNTIMES`: with the Go and .NET walks (without, a process's rules or its
/// frame pointers only, and no goroutine fields).
#[inline(always)]
pub(crate) fn record<const RUNTIMES: bool>(
    ctx: *mut c_void,
    pid_tgid: u64,
    process: impl FnOnce() -> Option<&'static ProcessEntry>,
    kernel: Kernel,
    regs: Regs,
    off_cpu: Option<OffCpu>,
    output: Output,
) {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    // SAFETY: this CPU's scratch slot; perf_event programs do not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    let Some(walks) = walks() else {
        count(Counter::DropNoScratch);
        return;
    };
    copy_process(&mut walks.process, process());
    let mut flags = 0u32;

    let kernel_bytes = match kernel {
        Kernel::None => 0,
        // SAFETY: the buffer is STACK_BYTES long at the start of `ips`.
        Kernel::Current => unsafe {
            bpf_get_stack(
                ctx,
                scratch.ips.as_mut_ptr().cast::<c_void>(),
                STACK_BYTES,
                0,
            )
        },
        Kernel::Saved(stack) if stack.is_null() => -1,
        Kernel::Saved(stack) => {
            // One fixed-size copy, not a loop over the frames: a loop's exits
            // would each be a state for the verifier to walk the rest with.
            // SAFETY: a map value of the caller's, valid for this run; the
            // destination is the start of `ips`, longer than the source.
            let n = unsafe {
                generated::bpf_probe_read_kernel(
                    scratch.ips.as_mut_ptr().cast::<c_void>(),
                    (MAX_OFF_CPU_KERNEL_FRAMES * 8) as u32,
                    (*stack).ips.as_ptr().cast::<c_void>(),
                );
                (*stack).frames
            };
            // A mask, not a comparison: one bounded state for the verifier to
            // walk the rest of the record with (`frames` is at most 32 already:
            // `bpf_get_stack` filled at most that many).
            ((n & (2 * MAX_OFF_CPU_KERNEL_FRAMES as u64 - 1)) * 8) as i64
        }
    };
    let kernel_frames = frames_in(
        kernel_bytes,
        &mut flags,
        (FLAG_KERNEL_STACK_ERROR, Counter::KernelStackError),
        FLAG_KERNEL_TRUNCATED,
    );

    // The user registers, read once: the walks, the goroutine and the
    // stack-top words all start from them.
    let have_regs = match regs {
        Regs::Sampled(perf) => {
            // SAFETY: the perf_event context is readable directly.
            let r = unsafe { &(*perf.ctx).regs };
            walks.regs.ip = r.rip;
            walks.regs.sp = r.rsp;
            walks.regs.bp = r.rbp;
            walks.regs.r14 = r.r14;
            walks.regs.rdx = r.rdx;
            true
        }
        Regs::Saved => saved_user_regs(&mut walks.regs),
    };
    let walked = user_stack::<RUNTIMES>(ctx, tgid, kernel_frames as u32, u32::from(have_regs));
    flags |= (walked >> 32) as u32;
    let user_frames = walked as u32 as usize;
    let user_frames = if user_frames > MAX_FRAMES {
        MAX_FRAMES
    } else {
        user_frames
    };

    let header = &mut scratch.header;
    fill_header(header, pid_tgid, kernel_frames, user_frames, flags, off_cpu);
    // The words at the user stack pointer, for a leaf without a frame record
    // (zeros where unreadable: the read zero-fills on a fault).
    if have_regs {
        if RUNTIMES {
            crate::go::crossprof_go_sample_fields((kernel_frames + user_frames) as u32);
        }
        // SAFETY: the user-read helper checks the address and writes at most the
        // field's size into it (zeros on a fault).
        unsafe {
            generated::bpf_probe_read_user(
                header.stacks.stack_top.as_mut_ptr().cast::<c_void>(),
                (8 * STACK_TOP_WORDS) as u32,
                walks.regs.sp as *const c_void,
            );
        }
    } else {
        for w in 0..STACK_TOP_WORDS {
            // SAFETY: a field of this CPU's scratch slot.
            unsafe { core::ptr::write_volatile(&mut header.stacks.stack_top[w], 0) };
        }
    }

    // The frame-pointer baseline, last: a branch here doubles only what
    // follows for the verifier (0.15 s of load time when it sat after the walk).
    // SAFETY: plain helper call with no arguments.
    let draw = unsafe { generated::bpf_get_prandom_u32() };
    if u64::from(draw) % FP_BASELINE_EVERY == 0 && walks.process.flags & PROCESS_RULES != 0 {
        let (outermost, n) = frame_pointer_baseline(ctx);
        header.stacks.flags |= FLAG_FP_BASELINE;
        header.baseline.outermost = outermost;
        header.baseline.frames = n;
    }
    match output {
        Output::Ring => send(ctx, scratch, false),
        Output::RingNow => send(ctx, scratch, true),
        Output::Stash => crate::offcpu::stash(tid, scratch),
    }
}

/// The fields every record has: kind (an on-CPU sample, or an off-CPU span
/// when `off_cpu` is set), ids, CPU, time, comm, frame counts and flags; the
/// Go fields zeroed (set after, by `go::sample_fields`).
#[inline(always)]
fn fill_header(
    header: &mut probe_common::native::SampleHeader,
    pid_tgid: u64,
    kernel_frames: usize,
    user_frames: usize,
    flags: u32,
    off_cpu: Option<OffCpu>,
) {
    header.id.kind = match off_cpu {
        None => RecordKind::CpuSample as u32,
        Some(_) => RecordKind::OffCpuSample as u32,
    };
    let off = off_cpu.unwrap_or(OffCpu {
        ns: 0,
        state: 0,
        syscall: 0,
    });
    header.span.ns = off.ns;
    header.span.state = off.state;
    header.span.syscall = off.syscall;
    header.id.pid = (pid_tgid >> 32) as u32;
    header.id.tid = pid_tgid as u32;
    // SAFETY: plain helper calls with no arguments.
    unsafe {
        header.id.cpu = bpf_get_smp_processor_id();
        header.id.time_ns = bpf_ktime_get_ns();
    }
    // SAFETY: the helper writes at most 16 bytes (zeros on failure) into the
    // field, which is 16 bytes long.
    unsafe {
        generated::bpf_get_current_comm(header.id.comm.as_mut_ptr().cast::<c_void>(), 16);
    }
    header.stacks.kernel_frames = kernel_frames as u16;
    header.stacks.user_frames = user_frames as u16;
    header.stacks.flags = flags;
    // Volatile: plain stores of adjacent zeros become a byte-wise `memset`
    // call (~1 ns a byte).
    // SAFETY: fields of a map value of the caller's.
    unsafe {
        core::ptr::write_volatile(&mut header.go.goid, 0);
        core::ptr::write_volatile(&mut header.go.labels, 0);
        core::ptr::write_volatile(&mut header.go.status, 0);
        core::ptr::write_volatile(&mut header.go.switch_frames, 0);
        core::ptr::write_volatile(&mut header.go.signal_pc, 0);
        core::ptr::write_volatile(&mut header.baseline.outermost, 0);
        core::ptr::write_volatile(&mut header.baseline.frames, 0);
    }
}

/// The frame-pointer-only sampler (`cpu_sample_fp`), for kernels without
/// what the other walks need (`bpf_loop`: 5.17; kernel BTF, for
/// `bpf_get_current_task_btf`: 5.11; `bpf_task_pt_regs`: 5.15), such as
/// Ubuntu 22.04's 5.15: both stacks from `bpf_get_stack`, as perf takes them,
/// and none of the helpers those kernels lack. No goroutine fields (R14 of a
/// sample taken in the kernel is only in the task's saved registers).
pub fn sample_frame_pointers(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == 0 && config().include_idle == 0 {
        count(Counter::Idle);
        return;
    }
    if !crate::selected(tgid) {
        return;
    }
    count(Counter::Samples);
    if !crate::scratch_free() {
        // This CPU interrupted a Go uprobe in the middle of a record.
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    // SAFETY: this CPU's scratch slot; perf_event programs do not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    let in_user = in_user_mode(ctx);
    let mut flags = 0u32;
    let kernel_bytes = if in_user {
        0
    } else {
        // SAFETY: the buffer is STACK_BYTES long at the start of `ips`.
        unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                scratch.ips.as_mut_ptr().cast::<c_void>(),
                STACK_BYTES,
                0,
            )
        }
    };
    let kernel_frames = frames_in(
        kernel_bytes,
        &mut flags,
        (FLAG_KERNEL_STACK_ERROR, Counter::KernelStackError),
        FLAG_KERNEL_TRUNCATED,
    );
    // SAFETY: kernel_frames <= MAX_FRAMES, so the STACK_BYTES window that
    // starts there ends at or before the end of `ips` (2 * MAX_FRAMES slots).
    let user_bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            scratch.ips.as_mut_ptr().add(kernel_frames).cast::<c_void>(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        )
    };
    let user_frames = frames_in(
        user_bytes,
        &mut flags,
        (FLAG_USER_STACK_ERROR, Counter::UserStackError),
        FLAG_USER_TRUNCATED,
    );
    let header = &mut scratch.header;
    fill_header(header, pid_tgid, kernel_frames, user_frames, flags, None);
    // The words at the user stack pointer, for a leaf without a frame
    // record: known only for a sample taken in user mode.
    // SAFETY: the perf_event context is readable directly; the user-read
    // helper writes at most the field's size (zeros on a fault).
    unsafe {
        if in_user {
            generated::bpf_probe_read_user(
                header.stacks.stack_top.as_mut_ptr().cast::<c_void>(),
                (8 * STACK_TOP_WORDS) as u32,
                (*ctx.ctx).regs.rsp as *const c_void,
            );
        } else {
            for w in 0..STACK_TOP_WORDS {
                core::ptr::write_volatile(&mut header.stacks.stack_top[w], 0);
            }
        }
    }
    send(ctx.as_ptr(), scratch, crate::first_sample(tgid));
}

/// The user stack of `tgid` into the scratch `ips[first..]`, from the
/// registers in [`Walks::regs`] (`have_regs` 0: none could be read): by
/// `.eh_frame` rules in a process that has them, by the .NET walk in a .NET
/// process without, else by `bpf_get_stack`'s frame pointers. Returns the
/// frames, and `FLAG_USER_*` bits in the high 32 bits. Without `RUNTIMES`
/// a .NET process's JIT code is not walked (rules or frame pointers only).
///
/// A subprogram (a call, not inlined): its frame exists only while it runs.
#[inline(never)]
fn user_stack<const RUNTIMES: bool>(
    ctx: *mut c_void,
    tgid: u32,
    first: u32,
    have_regs: u32,
) -> u64 {
    let mut flags = 0u32;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot (see `record`).
    let scratch = unsafe { &mut *scratch };
    // Bounded again here: the verifier checks a subprogram with what its
    // arguments' types say, and a scalar argument's range may be lost.
    let first = crate::opaque(u64::from(first)) as usize;
    if first > MAX_FRAMES {
        return 0;
    }
    let Some(walks) = walks() else {
        return 0;
    };
    let process = walks.process.flags;
    let frames = if process & PROCESS_RULES != 0 {
        // Native code without frame pointers: its objects' .eh_frame rules;
        // JIT code in between by the collector's table of its methods' frames.
        // (The frames go straight into this CPU's scratch, from bpf_loop steps.)
        let slot = walks.process.unwind_slot;
        let managed = RUNTIMES && process & PROCESS_MANAGED != 0;
        unwind_by_rules::<RUNTIMES>(tgid, slot, managed, have_regs != 0, first, &mut flags)
    } else if RUNTIMES && process & PROCESS_MANAGED != 0 {
        // JIT code: walked with the collector's table of frameless methods.
        crate::dotnet::unwind_user(tgid, have_regs != 0, &mut scratch.ips, first, &mut flags)
    } else {
        // SAFETY: first <= MAX_FRAMES, so the STACK_BYTES window that starts
        // there ends at or before the end of `ips` (2 * MAX_FRAMES slots).
        let user_bytes = unsafe {
            bpf_get_stack(
                ctx,
                scratch.ips.as_mut_ptr().add(first).cast::<c_void>(),
                STACK_BYTES,
                BPF_F_USER_STACK as u64,
            )
        };
        frames_in(
            user_bytes,
            &mut flags,
            (FLAG_USER_STACK_ERROR, Counter::UserStackError),
            FLAG_USER_TRUNCATED,
        )
    };
    (frames as u64) | (u64::from(flags) << 32)
}

/// Sends the record built in `scratch` (its length from its frame counts),
/// waking the collector if `wake`.
#[inline(always)]
pub(crate) fn send(ctx: *mut c_void, scratch: &SampleScratch, wake: bool) {
    let h = &scratch.header;
    let frames = h.stacks.kernel_frames as usize
        + h.stacks.user_frames as usize
        + h.go.switch_frames as usize;
    let len = record_len(if frames > 2 * MAX_FRAMES {
        2 * MAX_FRAMES
    } else {
        frames
    });
    // SAFETY: len <= size_of::<SampleScratch>() (at most 2 * MAX_FRAMES
    // frames), and the record lives for the whole program run.
    let record = unsafe { core::slice::from_raw_parts(scratch as *const _ as *const u8, len) };
    let flags = if wake {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64
    } else {
        crate::wakeup_flags()
    };
    match EVENTS.output::<[u8]>(record, flags) {
        Ok(()) => {
            count(Counter::Sent);
        }
        Err(_) => {
            // Log the first drop on each CPU only: the counter says how many follow.
            if count(Counter::DropRingFull) == 1 {
                warn!(
                    ctx,
                    "ring buffer full on cpu {}: samples are being dropped", h.id.cpu
                );
            }
        }
    }
}

/// Per CPU: where the frame-pointer baseline's walk is written.
#[map]
static FP_SCRATCH: PerCpuArray<[u64; MAX_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

/// A frame-pointer walk of the sampled user stack, as perf does it: its
/// outermost frame (0 if none) and its frame count.
#[inline(always)]
fn frame_pointer_baseline(ctx: *mut c_void) -> (u64, u32) {
    let Some(buf) = FP_SCRATCH.get_ptr_mut(0) else {
        return (0, 0);
    };
    // SAFETY: this CPU's slot, STACK_BYTES long.
    let bytes = unsafe {
        bpf_get_stack(
            ctx,
            buf.cast::<c_void>(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        )
    };
    if bytes <= 0 {
        return (0, 0);
    }
    let n = bytes as usize / 8;
    if n == 0 || n > MAX_FRAMES {
        return (0, 0);
    }
    // SAFETY: this CPU's slot; `get` checks the index.
    let outermost = unsafe { (*buf).get(n - 1).copied() }.unwrap_or(0);
    (outermost, n as u32)
}

/// Frames in a `bpf_get_stack` result, never more than [`MAX_FRAMES`] (the bound
/// the verifier needs for the next write offset). A failure sets and counts
/// `error`; a full buffer sets `truncated` (the stack may go deeper).
#[inline(always)]
fn frames_in(bytes: i64, flags: &mut u32, error: (u32, Counter), truncated: u32) -> usize {
    if bytes < 0 {
        *flags |= error.0;
        count(error.1);
        return 0;
    }
    let frames = (bytes as usize) / 8;
    if frames >= MAX_FRAMES {
        *flags |= truncated;
        MAX_FRAMES
    } else {
        frames
    }
}
