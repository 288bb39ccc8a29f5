//! The user registers a walk or a goroutine read starts from: saved at the
//! thread's kernel entry (`bpf_task_pt_regs`), or the perf event's own; the
//! system call a thread is in; whether an event fired in user mode. A leaf:
//! every walk imports it, it imports none.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::PerfEventContext,
};

/// The user registers a walk or a goroutine read starts from.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub r14: u64,
    pub rdx: u64,
}

/// Reads the user registers saved at the current thread's kernel entry into
/// `out`; false if they cannot be read.
#[inline(always)]
pub(crate) fn saved_user_regs(out: &mut UserRegs) -> bool {
    // SAFETY: the current task is valid for the whole program run, and its user
    // registers sit at the top of its kernel stack.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return false;
    }
    // SAFETY: reads through the kernel-read helper, which checks the address.
    unsafe {
        let read = |field: &u64| bpf_probe_read_kernel(field).ok();
        let (Some(ip), Some(sp), Some(bp), Some(r14), Some(rdx)) = (
            read(&(*regs).rip),
            read(&(*regs).rsp),
            read(&(*regs).rbp),
            read(&(*regs).r14),
            read(&(*regs).rdx),
        ) else {
            return false;
        };
        out.ip = ip;
        out.sp = sp;
        out.bp = bp;
        out.r14 = r14;
        out.rdx = rdx;
    }
    true
}

/// The system call the current thread is in, plus one (0: none): `orig_ax`
/// of its saved user registers holds the number from the syscall entry, and
/// is negative for an interrupt or exception.
#[inline(always)]
pub(crate) fn current_syscall() -> u16 {
    // SAFETY: as in `saved_user_regs`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return 0;
    }
    // SAFETY: read through the kernel-read helper, which checks the address.
    match unsafe { bpf_probe_read_kernel(&(*regs).orig_rax) } {
        Ok(nr) if (nr as i64) >= 0 && nr < u64::from(u16::MAX) => nr as u16 + 1,
        _ => 0,
    }
}

/// Was the CPU in user mode when the event fired? On x86-64 the privilege level is
/// the low two bits of the saved `cs` (3 = user).
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) fn in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: the perf_event program context is readable directly; `regs` is the
    // register set saved when the event fired.
    let cs = unsafe { (*ctx.ctx).regs.cs };
    cs & 3 == 3
}

/// Elsewhere, always ask for the kernel stack (it is empty in user mode).
#[cfg(not(bpf_target_arch = "x86_64"))]
pub(crate) fn in_user_mode(_ctx: &PerfEventContext) -> bool {
    false
}
