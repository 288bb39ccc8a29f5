//! Off-CPU time (`--mode offcpu`, `--mode wall`): what a thread was waiting
//! for, named from its state and system call when it left the CPU (see
//! `probe_common::offcpu` for how the kernel side measures it).

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, ProgramError, RawTracePoint},
};
use probe_common::{names, offcpu::state};

use crate::{
    decode::OffCpu,
    kernel::error::{SamplerError, load_failed},
};

/// Where a thread blocked in a system call is back in its own context: the
/// call's return. (This machine's kernel has no kprobes, and its lockdown
/// refuses fentry/fexit programs: `finish_task_switch` or the return of
/// `schedule()`, the exact end of a span, cannot be hooked here.)
const SWITCH_IN: &str = "sys_exit";

fn err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> SamplerError {
    let what = what.into();
    move |source| SamplerError::OffCpu { what, source }
}

fn start_program(ebpf: &mut Ebpf) -> Result<&mut BtfTracePoint, SamplerError> {
    let name = names::OFF_CPU_START_PROG;
    ebpf.program_mut(name)
        .ok_or(SamplerError::MissingProgram(name))?
        .try_into()
        .map_err(err(name))
}

fn end_program(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint, SamplerError> {
    let name = names::OFF_CPU_END_PROG;
    ebpf.program_mut(name)
        .ok_or(SamplerError::MissingProgram(name))?
        .try_into()
        .map_err(err(name))
}

/// Loads the `sched_switch` and `sys_exit` programs (the first is typed by the
/// kernel's BTF, parsed only in the modes that follow off-CPU time).
pub fn load(ebpf: &mut Ebpf) -> Result<(), SamplerError> {
    let btf = Btf::from_sys_fs().map_err(|e| SamplerError::OffCpu {
        what: "the kernel's BTF (/sys/kernel/btf/vmlinux)".into(),
        source: ProgramError::Btf(e),
    })?;
    start_program(ebpf)?
        .load("sched_switch", &btf)
        .map_err(|e| load_failed(names::OFF_CPU_START_PROG, e))?;
    end_program(ebpf)?
        .load()
        .map_err(|e| load_failed(names::OFF_CPU_END_PROG, e))?;
    Ok(())
}

/// Attaches them.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), SamplerError> {
    start_program(ebpf)?
        .attach()
        .map_err(err("attach to sched_switch"))?;
    end_program(ebpf)?
        .attach(SWITCH_IN)
        .map_err(err("attach to sys_exit"))?;
    Ok(())
}

/// The leaf frame an off-CPU span gets: `[blocked: futex]`, `[sleep]`, ...
pub fn reason(off: &OffCpu) -> String {
    if off.state == state::PREEMPTED {
        return "[waiting for CPU]".into();
    }
    if off.state & state::STOPPED != 0 {
        return "[stopped]".into();
    }
    if off.state & state::TRACED != 0 {
        return "[traced]".into();
    }
    let Some(nr) = off.syscall.checked_sub(1) else {
        // Not in a system call: a page fault (disk) or a kernel-side wait.
        return "[blocked: outside a system call]".into();
    };
    match syscall_class(nr) {
        Some(Class::Sleep) => "[sleep]".into(),
        Some(Class::Futex) => "[blocked: futex]".into(),
        Some(Class::Io) => "[blocked: io]".into(),
        Some(Class::Poll) => "[blocked: poll]".into(),
        Some(Class::Wait) => "[blocked: child wait]".into(),
        Some(Class::Signal) => "[blocked: signal wait]".into(),
        Some(Class::Yield) => "[yield]".into(),
        None => format!("[blocked: syscall {nr}]"),
    }
}

/// Kinds of blocking system calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Sleep,
    Futex,
    Io,
    Poll,
    Wait,
    Signal,
    Yield,
}

/// x86-64 system call numbers (`arch/x86/entry/syscalls/syscall_64.tbl`).
fn syscall_class(nr: u16) -> Option<Class> {
    Some(match nr {
        35 | 230 | 34 => Class::Sleep, // nanosleep, clock_nanosleep, pause
        202 | 449 | 454 | 455 => Class::Futex, // futex, futex_waitv, futex_wake, futex_wait
        // read, write, pread64, pwrite64, readv, writev, sendfile, connect, accept,
        // sendto, recvfrom, sendmsg, recvmsg, flock, fsync, fdatasync, openat,
        // accept4, recvmmsg, sendmmsg, splice, io_getevents, io_uring_enter,
        // preadv, pwritev, copy_file_range
        0 | 1 | 17 | 18 | 19 | 20 | 40 | 42 | 43 | 44 | 45 | 46 | 47 | 73 | 74 | 75 | 257 | 288
        | 299 | 307 | 275 | 208 | 426 | 295 | 296 | 326 => Class::Io,
        // poll, select, epoll_wait, pselect6, ppoll, epoll_pwait, epoll_pwait2
        7 | 23 | 232 | 270 | 271 | 281 | 441 => Class::Poll,
        61 | 247 => Class::Wait,    // wait4, waitid
        128 | 130 => Class::Signal, // rt_sigtimedwait, rt_sigsuspend
        24 => Class::Yield,         // sched_yield
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(state: u16, syscall: Option<u16>) -> OffCpu {
        OffCpu {
            ns: 1,
            state,
            syscall: syscall.map_or(0, |n| n + 1),
        }
    }

    #[test]
    fn reasons_come_from_the_state_then_the_system_call() {
        assert_eq!(reason(&off(state::PREEMPTED, Some(0))), "[waiting for CPU]");
        assert_eq!(reason(&off(state::PREEMPTED, None)), "[waiting for CPU]");
        assert_eq!(reason(&off(state::INTERRUPTIBLE, Some(230))), "[sleep]");
        assert_eq!(
            reason(&off(state::INTERRUPTIBLE, Some(202))),
            "[blocked: futex]"
        );
        assert_eq!(reason(&off(state::INTERRUPTIBLE, Some(0))), "[blocked: io]");
        assert_eq!(
            reason(&off(state::INTERRUPTIBLE, Some(232))),
            "[blocked: poll]"
        );
        assert_eq!(
            reason(&off(state::INTERRUPTIBLE, Some(61))),
            "[blocked: child wait]"
        );
        assert_eq!(
            reason(&off(state::INTERRUPTIBLE, Some(999))),
            "[blocked: syscall 999]"
        );
        assert_eq!(
            reason(&off(state::UNINTERRUPTIBLE, None)),
            "[blocked: outside a system call]"
        );
        assert_eq!(reason(&off(state::STOPPED, None)), "[stopped]");
    }
}
