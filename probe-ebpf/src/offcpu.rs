//! Off-CPU time (see `probe_common::offcpu`): a target thread blocking in a
//! system call is noted at `sched_switch`; when the call returns (`sys_exit`,
//! in the thread's own context) its stacks are sent weighted by the time since
//! it blocked.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use probe_common::{
    Counter,
    native::SampleScratch,
    offcpu::{
        MAX_OFF_CPU_KERNEL_FRAMES, MAX_OFF_CPU_KERNEL_STACKS, MAX_OFF_CPU_THREADS, STATE_MASK,
        state,
    },
};

use crate::{
    config, count, regs,
    sample::{self, OffCpu},
};

/// A thread blocked in a system call: since when, and why.
#[repr(C)]
#[derive(Clone, Copy)]
struct Away {
    since_ns: u64,
    state: u16,
    syscall: u16,
    _pad: u32,
}

/// Target threads blocked in a system call, by thread id. LRU: a thread
/// killed while blocked never returns from its call, and its entry is the
/// first to go when the table is full.
#[map]
static AWAY: LruHashMap<u32, Away> = LruHashMap::with_max_entries(MAX_OFF_CPU_THREADS, 0);

/// A blocked thread's kernel stack as it left the CPU: frames, then how many.
#[repr(C)]
pub struct KernelStack {
    pub ips: [u64; MAX_OFF_CPU_KERNEL_FRAMES],
    pub frames: u64,
}

/// The kernel stacks of target threads blocked in a system call, by thread id
/// (LRU, smaller than [`AWAY`]: a span whose stack was evicted goes without).
#[map]
pub static AWAY_STACKS: LruHashMap<u32, KernelStack> =
    LruHashMap::with_max_entries(MAX_OFF_CPU_KERNEL_STACKS, 0);

/// What a new [`AWAY_STACKS`] entry starts from (inserted, then filled in
/// place by `bpf_get_stack`: 264 bytes are too many for the BPF stack).
static EMPTY_STACK: KernelStack = KernelStack {
    ips: [0; MAX_OFF_CPU_KERNEL_FRAMES],
    frames: 0,
};

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)` (the tracepoint's arguments since Linux
/// 5.18): runs in `prev`'s context, so the current ids are `prev`'s.
#[inline(always)]
pub fn switch_out(ctx: &BtfTracePointContext) {
    let cfg = config();
    // SAFETY: plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // When the thread leaving now came onto this CPU (every switch is noted,
    // whoever's: the next one to leave came back at this one).
    let came_back = if cfg.off_cpu_runnable != 0 {
        swap_last_switch(now)
    } else {
        0
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 {
        return;
    }
    if !crate::selected(tgid) {
        return;
    }
    if cfg.off_cpu_runnable != 0 {
        end_preempted(ctx.as_ptr(), tid, came_back);
    }
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    let bits = prev_state as u16 & STATE_MASK;
    if bits & state::EXITING != 0 {
        // It does not come back.
        return;
    }
    // A thread preempted stays runnable whatever its state says: followed
    // until it runs again in `--mode wall` only.
    if (preempt as u8) != 0 || bits == 0 {
        if cfg.off_cpu_runnable != 0 {
            start_span(
                ctx,
                pid_tgid,
                Away {
                    since_ns: now,
                    state: state::PREEMPTED,
                    syscall: regs::current_syscall(),
                    _pad: 0,
                },
            );
        }
        return;
    }
    // Blocked inside a system call only: its return ends the span (a page
    // fault's wait has no such end the kernel programs here can see).
    let syscall = regs::current_syscall();
    if syscall == 0 {
        return;
    }
    start_span(
        ctx,
        pid_tgid,
        Away {
            since_ns: now,
            state: bits,
            syscall,
            _pad: 0,
        },
    );
}

/// Notes `away` for thread `pid_tgid`, leaving the CPU now, and builds its
/// record.
#[inline(always)]
fn start_span(ctx: &BtfTracePointContext, pid_tgid: u64, away: Away) {
    let tid = pid_tgid as u32;
    let cfg = config();
    // The first block of the call is kept (a call may block several times:
    // a futex woken early, a read that waits again); a thread preempted on
    // its way back from a block stays in that block's span, which its call's
    // return ends.
    match AWAY.insert(tid, away, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            if cfg.off_cpu_kernel != 0 {
                keep_kernel_stack(ctx, tid);
            }
            build_at_switch(ctx, pid_tgid, &away);
        }
        Err(-17) => {} // EEXIST: already blocked in this call
        Err(_) => {
            count(Counter::OffCpuUntracked);
        }
    }
}

/// Per CPU: when its last context switch was (`--mode wall`).
#[map]
static LAST_SWITCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's last switch time, replaced by `now`.
#[inline(always)]
fn swap_last_switch(now: u64) -> u64 {
    let Some(slot) = LAST_SWITCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; sched_switch programs do not nest on a CPU.
    unsafe {
        let last = *slot;
        *slot = now;
        last
    }
}

/// This CPU's last switch time: when the thread running now came onto it.
#[inline(always)]
fn last_switch() -> u64 {
    // SAFETY: this CPU's slot, read once.
    LAST_SWITCH
        .get_ptr(0)
        .map_or(0, |slot| unsafe { core::ptr::read_volatile(slot) })
}

/// Ends thread `tid`'s preempted span, if it has one, at `came_back` (when it
/// ran again on this CPU): its record, built as it left the CPU, is sent.
#[inline(always)]
fn end_preempted(ctx: *mut core::ffi::c_void, tid: u32, came_back: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(away) = (unsafe { AWAY.get(tid) }).copied() else {
        return;
    };
    if away.state != state::PREEMPTED {
        return;
    }
    let _ = AWAY.remove(tid);
    let _ = AWAY_STACKS.remove(tid);
    count(Counter::OffCpuSpans);
    let ns = came_back.saturating_sub(away.since_ns);
    if came_back == 0 || ns < config().min_block_ns {
        count(Counter::OffCpuShort);
        let _ = OFF_CPU_STASH.remove(tid);
        return;
    }
    if !send_stashed(ctx, tid, ns) {
        // Not built at the switch (the stash was full): the stack it left
        // with is gone.
        count(Counter::OffCpuUntracked);
    }
}

/// Sends thread `tid`'s record built at the switch, stamped `ns` long, and
/// drops it; false if there is none.
#[inline(always)]
fn send_stashed(ctx: *mut core::ffi::c_void, tid: u32, ns: u64) -> bool {
    let Some(record) = OFF_CPU_STASH.get_ptr_mut(tid) else {
        return false;
    };
    // SAFETY: the map value is this thread's (only its own switches and call
    // returns touch it), valid for this run.
    unsafe {
        (*record).header.span.ns = ns;
        (*record).header.id.time_ns = bpf_ktime_get_ns();
        sample::send(ctx, &*record, false);
    }
    let _ = OFF_CPU_STASH.remove(tid);
    true
}

/// Off-CPU records built at the switch, by thread: see [`build_at_switch`].
/// Sized by the collector (`MAX_OFF_CPU_STASHED` in the off-CPU modes, 1
/// otherwise).
#[map]
static OFF_CPU_STASH: LruHashMap<u32, SampleScratch> = LruHashMap::with_max_entries(1, 0);

/// Builds the blocking thread's record now, as it leaves the CPU (its user
/// stack is the one the call will return to), and keeps it for
/// [`syscall_exit`], which only stamps the time away and sends it. The walk
/// happens here, off the path of the thread that woke it: when the call
/// returns, the woken thread goes on at once (the ping-pong bench: +8% with the
/// walk at the return, where every message waited for it).
#[inline(always)]
fn build_at_switch(ctx: &BtfTracePointContext, pid_tgid: u64, away: &Away) {
    record_span(ctx.as_ptr(), pid_tgid, away, 0, sample::Output::Stash);
}

/// Builds the record of thread `pid_tgid`'s span `away` (`ns` long, 0 when not
/// known yet) with its user stack and, with `--kernel-waits`, the kernel stack
/// kept at the switch, into `output`.
#[inline(always)]
fn record_span(
    ctx: *mut core::ffi::c_void,
    pid_tgid: u64,
    away: &Away,
    ns: u64,
    output: sample::Output,
) {
    let kernel = kernel_frames(pid_tgid as u32);
    // Held by a program preempted mid-record: at the switch, the span is walked
    // at the call's return instead (no stash); at the return, it is lost.
    if !crate::take_scratch() {
        return;
    }
    sample::record::<true>(
        ctx,
        pid_tgid,
        || crate::process((pid_tgid >> 32) as u32),
        kernel,
        sample::Regs::Saved,
        Some(OffCpu {
            ns,
            state: away.state,
            syscall: away.syscall,
        }),
        output,
    );
    crate::set_scratch_busy(false);
}

/// Blocks this long or longer are walked again at the call's return (see
/// [`syscall_exit`]).
const REWALK_NS: u64 = 1_000_000;

/// Keeps the record built in `scratch` for thread `tid` (see
/// [`build_at_switch`]); when the table is full the least recently used goes,
/// and that thread is walked at its return instead.
#[inline(always)]
pub(crate) fn stash(tid: u32, scratch: &SampleScratch) {
    let _ = OFF_CPU_STASH.insert(tid, scratch, 0);
}

/// The kernel frames of `tid`'s record: kept at the switch with
/// `--kernel-waits`, none otherwise.
#[inline(always)]
fn kernel_frames(tid: u32) -> sample::Kernel {
    let keep = config().off_cpu_kernel != 0;
    let stack = if keep {
        AWAY_STACKS.get_ptr(tid).unwrap_or(core::ptr::null())
    } else {
        core::ptr::null()
    };
    // Defined on both paths, through memory: LLVM loads the pointer before
    // it tests which kind of frames these are, and Linux 6.1's verifier
    // refuses a read of a stack slot that only one path wrote ("invalid read
    // from stack"; 6.12 lets privileged programs read it).
    let stack = crate::opaque(stack as u64) as *const KernelStack;
    if keep {
        sample::Kernel::Saved(stack)
    } else {
        sample::Kernel::None
    }
}

/// Frames of the kernel stack at the switch that are this program's own call
/// (`bpf_prog_..._off_cpu_start` and `bpf_trace_run4`, called straight from
/// `__schedule` on Linux 6.x: the stack then starts at `__schedule`).
const OWN_FRAMES: u64 = 2;

/// Keeps the kernel stack `tid` blocks with (this program runs in its context,
/// in `__schedule`), for [`syscall_exit`] to send.
#[inline(always)]
fn keep_kernel_stack(ctx: &BtfTracePointContext, tid: u32) {
    // By reference: a copy of the static would be built on the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    if AWAY_STACKS.insert(tid, &EMPTY_STACK, 0).is_err() {
        return;
    }
    let Some(stack) = AWAY_STACKS.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the map value is this thread's (only its own switch-out and
    // call return touch it); the helper writes at most the array's size.
    let n = unsafe {
        generated::bpf_get_stack(
            ctx.as_ptr(),
            (*stack).ips.as_mut_ptr().cast(),
            (MAX_OFF_CPU_KERNEL_FRAMES * 8) as u32,
            OWN_FRAMES,
        )
    };
    if n <= 0 {
        // Unreadable: the span goes without, marked as such (no entry).
        let _ = AWAY_STACKS.remove(tid);
        return;
    }
    // SAFETY: as above.
    unsafe { (*stack).frames = n as u64 / 8 };
}

/// `sys_exit` (raw tracepoint: no event record is filled), in the thread's
/// own context: a thread that blocked in this call is back; its user stack is
/// still the one it made the call with.
#[inline(always)]
pub fn syscall_exit(ctx: &RawTracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(away) = (unsafe { AWAY.get(tid) }).copied() else {
        return;
    };
    if away.state == state::PREEMPTED {
        // Preempted (in the kernel, or in user mode before this call): it
        // came back at this CPU's last switch.
        end_preempted(ctx.as_ptr(), tid, last_switch());
        return;
    }
    let _ = AWAY.remove(tid);
    count(Counter::OffCpuSpans);
    // SAFETY: plain helper call with no arguments.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(away.since_ns);
    if ns < config().min_block_ns {
        count(Counter::OffCpuShort);
        let _ = AWAY_STACKS.remove(tid);
        let _ = OFF_CPU_STASH.remove(tid);
        return;
    }
    // Built at the switch: stamp and send — for a short block. A long one is
    // walked again now: the collector's unwind tables may have grown since
    // (a process that blocked before its rules were placed, JIT code
    // registered meanwhile), and at one walk per long block the cost is
    // nothing.
    if ns >= REWALK_NS {
        let _ = OFF_CPU_STASH.remove(tid);
    } else if send_stashed(ctx.as_ptr(), tid, ns) {
        let _ = AWAY_STACKS.remove(tid);
        return;
    }
    // Not built at the switch (the stash was full), or a long block: walked
    // now. The kernel stack is the one kept at the switch (`--kernel-waits`):
    // at the call's return it is only the exit path and this program.
    record_span(ctx.as_ptr(), pid_tgid, &away, ns, sample::Output::Ring);
    let _ = AWAY_STACKS.remove(tid);
}
