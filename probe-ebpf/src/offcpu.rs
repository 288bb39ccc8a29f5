//! Off-CPU time (see `probe_common::offcpu`): a target thread blocking in a
//! system call is noted at `sched_switch`; when the call returns (`sys_exit`,
//! in the thread's own context) its stacks are sent weighted by the time since
//! it blocked.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::LruHashMap,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use probe_common::{
    Counter,
    offcpu::{MAX_OFF_CPU_THREADS, STATE_MASK, state},
};

use crate::{
    TARGETS, config, count,
    native::{self, OffCpu},
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

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)` (the tracepoint's arguments since Linux
/// 5.18): runs in `prev`'s context, so the current ids are `prev`'s.
#[inline(always)]
pub fn switch_out(ctx: &BtfTracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 {
        return;
    }
    let cfg = config();
    // SAFETY: the value is only tested for presence, never read.
    if cfg.filter_pids != 0 && unsafe { TARGETS.get(tgid) }.is_none() {
        return;
    }
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    let bits = prev_state as u16 & STATE_MASK;
    // Only blocking is followed: a thread preempted stays runnable whatever
    // its state says, and an exiting one does not come back.
    if (preempt as u8) != 0 || bits == 0 || bits & state::EXITING != 0 {
        return;
    }
    // Inside a system call only: its return ends the span (a page fault's
    // wait has no such end the kernel programs here can see).
    let syscall = native::current_syscall();
    if syscall == 0 {
        return;
    }
    let away = Away {
        // SAFETY: plain helper call with no arguments.
        since_ns: unsafe { bpf_ktime_get_ns() },
        state: bits,
        syscall,
        _pad: 0,
    };
    // The first block of the call is kept (a call may block several times:
    // a futex woken early, a read that waits again).
    match AWAY.insert(tid, away, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(-17) => {} // EEXIST: already blocked in this call
        Err(_) => {
            count(Counter::OffCpuUntracked);
        }
    }
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
    let _ = AWAY.remove(tid);
    count(Counter::OffCpuSpans);
    // SAFETY: plain helper call with no arguments.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(away.since_ns);
    if ns < config().min_block_ns {
        count(Counter::OffCpuShort);
        return;
    }
    // No kernel stack: at the call's return it is the exit path and this
    // program, not where the thread waited (the leaf names the call instead).
    crate::set_scratch_busy(true);
    native::record(
        ctx.as_ptr(),
        pid_tgid,
        false,
        native::saved_user_regs,
        Some(OffCpu {
            ns,
            state: away.state,
            syscall: away.syscall,
        }),
    );
    crate::set_scratch_busy(false);
}
