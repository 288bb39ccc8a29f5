//! Go: the goroutine a sample ran on, and goroutine states over time (see
//! `probe_common::go`).

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use probe_common::{
    Counter, RecordKind,
    go::{
        Creation, GKey, GoOffsets, Goroutine, GoroutineEnd, MAX_GO_PIDS, MAX_GOROUTINES,
        WAIT_SLOT_FREE, WAIT_SLOTS, slot, status,
    },
};

use crate::{EVENTS, TARGETS, config, count};

/// Go processes, with the offsets of their Go version.
#[map]
static GO_PIDS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(MAX_GO_PIDS, 0);

/// Tracked goroutines: time per status so far (see [`Goroutine`]). Not
/// preallocated: memory follows the goroutines alive.
#[map]
static GOROUTINES: HashMap<GKey, Goroutine> =
    HashMap::with_max_entries(MAX_GOROUTINES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Per thread, what its last `runtime.newproc1` call said, until the goroutine it
/// creates changes status (on the same thread, within the same call).
#[map]
static CREATIONS: LruHashMap<u32, Creation> = LruHashMap::with_max_entries(4096, 0);

/// The value a goroutine's record starts from (inserted, then filled in place:
/// the record is too large to build on the BPF stack).
static FRESH: Goroutine = Goroutine {
    goid: 0,
    creation: Creation {
        parent_goid: 0,
        create_pc: 0,
        start_pc: 0,
    },
    since_ns: 0,
    status: 0,
    wait_reason: 0,
    first_ns: 0,
    first_status: 0,
    first_reason: 0,
    ns: [0; slot::COUNT],
    wait_reasons: [WAIT_SLOT_FREE; WAIT_SLOTS],
    _pad: [0; 2],
    wait_ns: [0; WAIT_SLOTS],
    wait_other_ns: 0,
    changes: 0,
};

/// The id, `labels` pointer and status of the goroutine `tgid` was running, from
/// the candidate `g` in R14 and the user stack pointer `sp`; zeros when `tgid`
/// is not Go, R14 is not a `g` whose stack holds `sp`, or the goroutine is a
/// system stack's (g0).
#[inline(always)]
pub fn goroutine(tgid: u32, sp: u64, r14: u64) -> (u64, u64, u32) {
    // SAFETY: the value is copied out field by field.
    let Some(offsets) = (unsafe { GO_PIDS.get(tgid) }) else {
        return (0, 0, 0);
    };
    let (goid_off, labels_off, status_off) = (
        u64::from(offsets.goid),
        u64::from(offsets.labels),
        u64::from(offsets.status),
    );
    if r14 == 0 {
        return (0, 0, 0);
    }
    // SAFETY: the user-read helper checks the addresses and fails on a fault.
    let (lo, hi) = unsafe {
        match (
            bpf_probe_read_user(r14 as *const u64),
            bpf_probe_read_user((r14 + 8) as *const u64),
        ) {
            (Ok(lo), Ok(hi)) => (lo, hi),
            _ => return (0, 0, 0),
        }
    };
    if !(lo <= sp && sp < hi) {
        return (0, 0, 0);
    }
    // SAFETY: as above.
    unsafe {
        (
            bpf_probe_read_user((r14 + goid_off) as *const u64).unwrap_or(0),
            bpf_probe_read_user((r14 + labels_off) as *const u64).unwrap_or(0),
            bpf_probe_read_user((r14 + status_off) as *const u32).unwrap_or(0),
        )
    }
}

/// `runtime.casgstatus(gp, oldval, newval)`, at entry: RAX, EBX, ECX.
#[uprobe]
pub fn go_casgstatus(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the user registers, readable directly.
    let (gp, old, new) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx as u32, r.rcx as u32)
    };
    change(&ctx, gp, old, new);
    0
}

/// `runtime.reentersyscall` (Go 1.26+, whose fast path skips `casgstatus`):
/// the goroutine in R14 enters a system call.
#[uprobe]
pub fn go_syscall_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: as in go_casgstatus.
    let gp = unsafe { (*ctx.regs).r14 };
    change(&ctx, gp, status::RUNNING, status::SYSCALL);
    0
}

/// `runtime.exitsyscall` (Go 1.26+): the goroutine in R14 is back from its call.
#[uprobe]
pub fn go_syscall_exit(ctx: ProbeContext) -> u32 {
    // SAFETY: as in go_casgstatus.
    let gp = unsafe { (*ctx.regs).r14 };
    change(&ctx, gp, status::SYSCALL, status::RUNNING);
    0
}

/// `runtime.newproc1(fn, callergp, callerpc, ...)`, at entry: RAX, RBX, RCX.
/// Kept for the goroutine this thread makes runnable next.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: as in go_casgstatus.
    let (fnv, callergp, callerpc) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx)
    };
    let goid_off = cookie(&ctx).0;
    // SAFETY: user reads through the checking helper.
    let creation = unsafe {
        Creation {
            parent_goid: bpf_probe_read_user((callergp + goid_off) as *const u64).unwrap_or(0),
            create_pc: callerpc,
            start_pc: bpf_probe_read_user(fnv as *const u64).unwrap_or(0),
        }
    };
    let _ = CREATIONS.insert(&(pid_tgid as u32), &creation, 0);
    0
}

/// `(goid offset, waitreason offset)` from the attach cookie.
#[inline(always)]
fn cookie(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: plain helper call on the program's own context.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    (c & 0xffff, (c >> 16) & 0xffff)
}

#[inline(always)]
fn targeted(tgid: u32) -> bool {
    // SAFETY: only tested for presence.
    config().filter_pids == 0 || unsafe { TARGETS.get(tgid) }.is_some()
}

/// Goroutine `gp` of the current process goes from `old` to `new`.
#[inline(always)]
fn change(ctx: &ProbeContext, gp: u64, old: u32, new: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if gp == 0 || !targeted(tgid) {
        return;
    }
    count(Counter::GoStatusChanges);
    let (goid_off, reason_off) = cookie(ctx);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = GKey {
        tgid,
        _pad: 0,
        g: gp,
    };
    let g = match GOROUTINES.get_ptr_mut(&key) {
        Some(g) => g,
        None => {
            // First sight. A `g` leaving idle or dead is a new goroutine; one
            // leaving any other status has been in it since before tracking.
            if new == status::DEAD {
                return;
            }
            if GOROUTINES.insert(&key, &FRESH, BPF_NOEXIST as u64).is_err() {
                count(Counter::GoroutinesUntracked);
                return;
            }
            let Some(g) = GOROUTINES.get_ptr_mut(&key) else {
                return;
            };
            // SAFETY: the map value, just inserted, is only this thread's: the
            // runtime serialises a goroutine's status changes.
            let r = unsafe { &mut *g };
            if old == status::IDLE || old == status::DEAD {
                let tid = pid_tgid as u32;
                // SAFETY: copied out field by field.
                if let Some(c) = unsafe { CREATIONS.get(&tid) } {
                    r.creation.parent_goid = c.parent_goid;
                    r.creation.create_pc = c.create_pc;
                    r.creation.start_pc = c.start_pc;
                    let _ = CREATIONS.remove(&tid);
                }
            } else {
                r.first_ns = now;
                r.first_status = old;
                r.first_reason = if old == status::WAITING {
                    wait_reason(gp, reason_off)
                } else {
                    0
                };
            }
            enter(r, gp, new, now, goid_off, reason_off);
            return;
        }
    };
    // SAFETY: as above.
    let r = unsafe { &mut *g };
    let spent = now.saturating_sub(r.since_ns);
    if old != r.status {
        r.ns[slot::UNOBSERVED] += spent;
    } else if old == status::WAITING {
        add_wait(r, r.wait_reason, spent);
    } else {
        let s = match old {
            status::RUNNING => slot::RUNNING,
            status::RUNNABLE => slot::RUNNABLE,
            status::SYSCALL => slot::SYSCALL,
            _ => slot::OTHER,
        };
        r.ns[s] += spent;
    }
    enter(r, gp, new, now, goid_off, reason_off);
    if new == status::DEAD {
        end(r, tgid, now);
        let _ = GOROUTINES.remove(&key);
    }
}

/// The goroutine enters `new` at `now`.
#[inline(always)]
fn enter(r: &mut Goroutine, gp: u64, new: u32, now: u64, goid_off: u64, reason_off: u64) {
    r.status = new;
    r.since_ns = now;
    r.changes += 1;
    r.wait_reason = if new == status::WAITING {
        wait_reason(gp, reason_off)
    } else {
        0
    };
    // SAFETY: user read through the checking helper.
    if let Ok(goid) = unsafe { bpf_probe_read_user((gp + goid_off) as *const u64) } {
        r.goid = goid;
    }
}

#[inline(always)]
fn wait_reason(gp: u64, reason_off: u64) -> u32 {
    // SAFETY: user read through the checking helper.
    u32::from(unsafe { bpf_probe_read_user((gp + reason_off) as *const u8) }.unwrap_or(0))
}

/// Adds `spent` to the slot of wait reason `reason`, taking a free slot for a
/// reason not seen yet.
#[inline(always)]
fn add_wait(r: &mut Goroutine, reason: u32, spent: u64) {
    let reason = reason as u8;
    for i in 0..WAIT_SLOTS {
        if r.wait_reasons[i] == reason {
            r.wait_ns[i] += spent;
            return;
        }
        if r.wait_reasons[i] == WAIT_SLOT_FREE {
            r.wait_reasons[i] = reason;
            r.wait_ns[i] = spent;
            return;
        }
    }
    r.wait_other_ns += spent;
}

/// Hands the finished record of a goroutine to the collector.
#[inline(always)]
fn end(r: &Goroutine, tgid: u32, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<GoroutineEnd>(0) else {
        count(Counter::GoroutineEndsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reservation is a GoroutineEnd-sized, exclusively owned slot;
    // every field is written before it is submitted (field by field: a struct
    // copy would become a memcpy call, which the loader cannot link here).
    unsafe {
        (*e).kind = RecordKind::GoroutineEnd as u32;
        (*e).pid = tgid;
        (*e).end_ns = now;
        let g = &mut (*e).g;
        g.goid = r.goid;
        g.creation.parent_goid = r.creation.parent_goid;
        g.creation.create_pc = r.creation.create_pc;
        g.creation.start_pc = r.creation.start_pc;
        g.since_ns = r.since_ns;
        g.status = r.status;
        g.wait_reason = r.wait_reason;
        g.first_ns = r.first_ns;
        g.first_status = r.first_status;
        g.first_reason = r.first_reason;
        for i in 0..slot::COUNT {
            g.ns[i] = r.ns[i];
        }
        for i in 0..WAIT_SLOTS {
            g.wait_reasons[i] = r.wait_reasons[i];
            g.wait_ns[i] = r.wait_ns[i];
        }
        g._pad = [0; 2];
        g.wait_other_ns = r.wait_other_ns;
        g.changes = r.changes;
    }
    entry.submit(0);
}
