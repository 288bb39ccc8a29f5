//! Go: the goroutine a sample ran on, and goroutine states over time (see
//! `probe_common::go`).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{self, bpf_get_attach_cookie, bpf_loop},
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use probe_common::{
    Counter, RecordKind,
    go::{
        COOKIE_EVERY_PROCESS, Creation, G_M, G_SCHED_PC, G_SCHED_SP, GKey, GoOffsets, Goroutine,
        GoroutineEnd, GoroutineStart, MAX_GOROUTINES, MAX_SIGNAL_FRAMES, MAX_SWITCH_FRAMES,
        UCONTEXT_RIP, WAIT_SLOT_FREE, WAIT_SLOTS, slot, status,
    },
    native::{FLAG_USER_TRUNCATED, MAX_FRAMES, STACK_TOP_WORDS, SampleScratch, record_len},
    process::PROCESS_GO,
};

use crate::{EVENTS, config, count, regs::UserRegs};

/// Where `tgid`'s `g` keeps what the kernel reads, if it is a Go process.
#[inline(always)]
fn go_offsets(tgid: u32) -> Option<&'static GoOffsets> {
    crate::process(tgid)
        .filter(|p| p.flags & PROCESS_GO != 0)
        .map(|p| &p.go)
}

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

/// The goroutine that made the system call the current thread of `tgid` is
/// returning from (0: none, or not Go), from `regs`, its user registers saved
/// at the kernel entry: R14 is the `g`, if its stack holds SP (Go makes system
/// calls on the goroutine's own stack). Two kernel and two user reads, not a
/// sample's whole [`goroutine`]: request attribution asks on every request.
#[inline(always)]
pub fn syscall_goid(tgid: u32, regs: *const pt_regs) -> u64 {
    let Some(goid_off) = go_offsets(tgid).map(|o| u64::from(o.goid)) else {
        return 0;
    };
    // SAFETY: `regs` is a BTF-typed kernel pointer (loads are checked by the
    // verifier); user reads through the helper, which checks the addresses.
    unsafe {
        let (g, sp) = (
            core::ptr::read_volatile(&(*regs).r14),
            core::ptr::read_volatile(&(*regs).rsp),
        );
        match bpf_probe_read_user(g as *const [u64; 2]) {
            Ok([lo, hi]) if g != 0 && lo <= sp && sp < hi => {
                bpf_probe_read_user((g + goid_off) as *const u64).unwrap_or(0)
            }
            _ => 0,
        }
    }
}

/// The goroutine fields of the record being built in this CPU's scratch, for
/// a sample of `tgid` whose frames end at `ips[at]`: the goroutine it ran, from
/// the candidate `g` in R14 and the user stack pointer (both in the CPU's walk
/// state); nothing when `tgid` is not Go or R14 is not a `g` whose stack holds
/// SP. On a system stack (goid 0), the frames of the goroutine it works for
/// are written from `ips[at]` on (see [`switch_frames`]).
///
/// A subprogram (a call, not inlined): its frame exists only while it runs.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn crossprof_go_sample_fields(at: u32) -> u32 {
    let Some(walks) = crate::sample::walks() else {
        return 0;
    };
    // The record's process entry (copied into the walk state by
    // `sample::record`): not Go, nothing to read.
    if walks.process.flags & PROCESS_GO == 0 {
        return 0;
    }
    let regs = walks.regs;
    let offsets = &walks.process.go;
    // Bounded again, opaquely: the verifier checks a subprogram with what its
    // arguments' types say, and LLVM turns a plain bound into comparisons
    // Linux 6.1 learns nothing from.
    let at = crate::opaque(u64::from(at)) as usize;
    if at >= 2 * MAX_FRAMES {
        return 0;
    }
    let Some(g) = goroutine(offsets, &regs, at) else {
        return 0;
    };
    let Some(scratch) = crate::SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot (see `sample::record`).
    let h = unsafe { &mut (*scratch).header };
    h.go.goid = g.goid;
    h.go.labels = g.labels;
    h.go.status = g.status;
    h.go.switch_frames = g.switch_frames as u32;
    h.go.signal_pc = g.signal_pc;
    1
}

/// What a sample of a Go process learns from its `g`.
struct GoSample {
    /// The goroutine id; 0 on a system stack (g0, gsignal).
    goid: u64,
    /// Its `g.labels` pointer.
    labels: u64,
    /// Its status.
    status: u32,
    /// Frames of the goroutine a system stack works for, written into the
    /// sample after its user frames.
    switch_frames: usize,
    /// In a signal handler: the PC the signal interrupted.
    signal_pc: u64,
}

/// The goroutine a Go process (whose `g` layout is `offsets`) was running,
/// from the candidate `g` in R14 and the user stack pointer `sp`; `None` when
/// R14 is not a `g` whose stack holds `sp`. On a system stack (goid 0), the
/// frames of the goroutine it works for are written to the scratch `ips` from
/// `at` on. (Every field of `offsets` is read before that.)
#[inline(always)]
fn goroutine(offsets: &GoOffsets, regs: &UserRegs, at: usize) -> Option<GoSample> {
    let (sp, r14) = (regs.sp, regs.r14);
    let (goid_off, labels_off, status_off) = (
        u64::from(offsets.goid),
        u64::from(offsets.labels),
        u64::from(offsets.status),
    );
    let (m_curg, sched_bp) = (u64::from(offsets.m_curg), u64::from(offsets.sched_bp));
    if r14 == 0 {
        return None;
    }
    let read = |addr: u64| -> Option<u64> {
        // SAFETY: the user-read helper checks the address and fails on a fault.
        unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
    };
    let holds = |g: u64| -> Option<bool> {
        let (lo, hi) = (read(g)?, read(g + 8)?);
        Some(lo <= sp && sp < hi)
    };
    // R14 is the `g` whose stack holds SP; or, in a signal handler entered from
    // Go code (before the handler switches R14), the interrupted `g`, while SP is
    // on its thread's signal stack (`g.m.gsignal`); or the goroutine itself,
    // still `m.curg`, while SP is on its thread's `g0` stack: a vDSO call
    // (`runtime.nanotime1`/`walltime` move SP to g0 and leave R14), whose
    // samples were `[no trace]`/goroutine 0 before.
    let m_gsignal = u64::from(offsets.m_gsignal);
    let mut on_signal_stack = false;
    if !holds(r14)? {
        let m = read(r14 + G_M)?;
        if m == 0 {
            return None;
        }
        // `m.g0` is the first field of `runtime.m` (runtime/runtime2.go, Go
        // 1.19 to 1.27).
        let g0 = read(m)?;
        let on_g0 = g0 != 0 && read(m + m_curg) == Some(r14) && holds(g0)?;
        if !on_g0 {
            let gsignal = read(m + m_gsignal)?;
            if gsignal == 0 || !holds(gsignal)? {
                return None;
            }
            on_signal_stack = true;
        }
    }
    let (sigtramp, cgo_sigtramp) = (offsets.sigtramp, offsets.cgo_sigtramp);
    let goid = read(r14 + goid_off).unwrap_or(0);
    let mut g = GoSample {
        goid,
        labels: read(r14 + labels_off).unwrap_or(0),
        // SAFETY: as above.
        status: unsafe { bpf_probe_read_user((r14 + status_off) as *const u32) }.unwrap_or(0),
        switch_frames: 0,
        signal_pc: 0,
    };
    if goid == 0 {
        g.switch_frames = switch_frames(r14, m_curg, sched_bp, at);
        // R14 may be the signal stack's own g (the handler's Go code).
        on_signal_stack =
            on_signal_stack || read(r14 + G_M).and_then(|m| read(m + m_gsignal)) == Some(r14);
    }
    if on_signal_stack && sigtramp[0] != 0 {
        g.signal_pc = signal_pc(regs, sigtramp, cgo_sigtramp);
    }
    Some(g)
}

/// The PC a signal interrupted, for a sample in a Go signal handler: from the
/// `ucontext` the kernel passed in RDX at the handler's entry, or, deeper in
/// the handler, the copy `runtime.sigtrampgo` spilled to its argument slot (its
/// frame record + 32), found by walking frame pointers up to the frame that
/// `runtime.sigtramp` called. 0 when not found.
#[inline(always)]
fn signal_pc(regs: &UserRegs, sigtramp: [u64; 2], cgo_sigtramp: u64) -> u64 {
    let read = |addr: u64| -> u64 {
        // SAFETY: the user-read helper checks the address; 0 on a fault.
        unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
    };
    let mut uc = 0;
    if regs.ip == sigtramp[0] || (cgo_sigtramp != 0 && regs.ip == cgo_sigtramp) {
        uc = regs.rdx;
    } else {
        let mut bp = regs.bp;
        for _ in 0..MAX_SIGNAL_FRAMES {
            if bp == 0 {
                break;
            }
            let ra = read(bp + 8);
            if ra > sigtramp[0] && ra <= sigtramp[1] {
                uc = read(bp + 32);
                break;
            }
            let next = read(bp);
            if next <= bp {
                break;
            }
            bp = next;
        }
    }
    if uc == 0 { 0 } else { read(uc + UCONTEXT_RIP) }
}

/// On a system stack (`g0` is m.g0, or m.gsignal in a signal handler): where
/// the frame-pointer chain stops at a stack switch (`runtime.mcall` clears BP
/// from Go 1.25; `runtime.morestack`),
/// the frames that logically call this code are those of the goroutine the thread
/// works for (`m.curg`), from the PC and frame pointer the switch saved in its
/// `g.sched`; with no goroutine (after `dropg`, in the scheduler), those of the
/// thread's start (`g0.sched`, saved by `mstart1`). Writes them from `ips[at]`
/// and returns how many; the collector decides whether they continue the stack.
#[inline(always)]
fn switch_frames(g0: u64, m_curg: u64, sched_bp: u64, at: usize) -> usize {
    let read = |addr: u64| -> u64 {
        // SAFETY: the user-read helper checks the address; 0 on a fault.
        unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
    };
    let m = read(g0 + G_M);
    if m == 0 {
        return 0;
    }
    // With no goroutine, the thread's own start, saved in m.g0 (at 0 in every
    // version) — also when this is the signal stack's g.
    let curg = read(m + m_curg);
    let g = if curg != 0 && curg != g0 {
        curg
    } else {
        read(m)
    };
    if g == 0 {
        return 0;
    }
    let pc = read(g + G_SCHED_PC);
    let Some(scratch) = crate::SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot (see `sample::record`).
    let ips = unsafe { &mut (*scratch).ips };
    let at = crate::opaque(at as u64) as usize;
    if pc == 0 || at >= ips.len() - 1 {
        return 0;
    }
    ips[at] = pc;
    // The word at a goroutine's saved SP (0 for the thread's own start): after
    // `runtime.morestack`, the return address into the caller of the function
    // that grows its stack, whose frame record does not exist yet (its prologue
    // checks the stack before pushing BP). The collector keeps it only then.
    let sp = if g == curg { read(g + G_SCHED_SP) } else { 0 };
    ips[at + 1] = if sp == 0 { 0 } else { read(sp) };
    // The frame-pointer chain, in steps under bpf_loop (the verifier checks
    // one step rather than 48, which kept loading slow).
    frame_chain(read(g + sched_bp), at + 2, 2)
}

/// Walks the frame-pointer chain from `bp` into the scratch `ips[next..]`
/// (at most [`MAX_SWITCH_FRAMES`] frames); returns `frames` plus those written.
#[inline(always)]
fn frame_chain(bp: u64, next: usize, frames: u32) -> usize {
    let Some(walks) = crate::sample::walks() else {
        return 0;
    };
    let walk = &mut walks.switch;
    walk.bp = bp;
    walk.next = next as u32;
    walk.frames = frames;
    // SAFETY: `switch_step` has the callback signature bpf_loop expects; it
    // finds its state in this CPU's walk state.
    unsafe {
        bpf_loop(
            MAX_SWITCH_FRAMES as u32,
            switch_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    walk.frames as usize
}

/// The switch walk's state between `bpf_loop` steps (in the CPU's walk state,
/// see `sample::Walks`).
#[repr(C)]
pub(crate) struct SwitchWalk {
    bp: u64,
    /// Index in the scratch `ips` of the next frame.
    next: u32,
    /// Frames written.
    frames: u32,
}

/// One frame record of the goroutine's chain. Returns 1 to stop.
#[inline(never)]
extern "C" fn switch_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(walks) = crate::sample::walks() else {
        return 1;
    };
    let w = &mut walks.switch;
    let idx = w.next as usize;
    if w.bp == 0 || idx >= 2 * MAX_FRAMES {
        return 1;
    }
    // SAFETY: user reads through the checking helper.
    let (ra, next) = unsafe {
        (
            bpf_probe_read_user((w.bp + 8) as *const u64).unwrap_or(0),
            bpf_probe_read_user(w.bp as *const u64).unwrap_or(0),
        )
    };
    let Some(scratch) = crate::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    if ra == 0 {
        return 1;
    }
    // SAFETY: this CPU's scratch slot; idx < 2 * MAX_FRAMES was checked above.
    unsafe { (*scratch).ips[idx] = ra };
    w.next += 1;
    w.frames += 1;
    // Frames only go up the stack: anything else is not a frame record.
    if next <= w.bp {
        return 1;
    }
    w.bp = next;
    0
}

/// `runtime.casgstatus(gp, oldval, newval)`, at entry: RAX, EBX, ECX.
#[inline(always)]
pub fn casgstatus(ctx: &ProbeContext) {
    // SAFETY: a uprobe's context is the user registers, readable directly.
    let (gp, old, new) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx as u32, r.rcx as u32)
    };
    change(ctx, gp, old, new);
}

/// `runtime.reentersyscall` (Go 1.26+, whose fast path skips `casgstatus`):
/// the goroutine in R14 enters a system call.
#[inline(always)]
pub fn syscall_enter(ctx: &ProbeContext) {
    // SAFETY: as in casgstatus.
    let gp = unsafe { (*ctx.regs).r14 };
    change(ctx, gp, status::RUNNING, status::SYSCALL);
}

/// `runtime.exitsyscall` (Go 1.26+): the goroutine in R14 is back from its call.
#[inline(always)]
pub fn syscall_exit(ctx: &ProbeContext) {
    // SAFETY: as in casgstatus.
    let gp = unsafe { (*ctx.regs).r14 };
    change(ctx, gp, status::SYSCALL, status::RUNNING);
}

/// `runtime.newproc1(fn, callergp, callerpc, ...)`, at entry: RAX, RBX, RCX.
/// Kept for the goroutine this thread makes runnable next.
#[inline(always)]
pub fn newproc1(ctx: &ProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cookie = cookie(ctx);
    if !targeted(cookie, (pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: as in casgstatus.
    let (fnv, callergp, callerpc) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx)
    };
    let goid_off = cookie & 0xffff;
    // SAFETY: user reads through the checking helper.
    let creation = unsafe {
        Creation {
            parent_goid: bpf_probe_read_user((callergp + goid_off) as *const u64).unwrap_or(0),
            create_pc: callerpc,
            start_pc: bpf_probe_read_user(fnv as *const u64).unwrap_or(0),
        }
    };
    let _ = CREATIONS.insert(pid_tgid as u32, creation, 0);
}

/// The attach cookie (see `probe_common::go::cookie`).
#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: plain helper call on the program's own context.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Does the probe's hit in `tgid` count? Probes attached to one process only
/// ever fire in it; probes attached to a binary for every process (the command's,
/// before it starts) fire in any process running it, and only targets count.
#[inline(always)]
fn targeted(cookie: u64, tgid: u32) -> bool {
    // SAFETY: the map value is only tested for presence.
    cookie & COOKIE_EVERY_PROCESS == 0 || crate::selected(tgid)
}

/// Goroutine `gp` of the current process goes from `old` to `new`.
#[inline(always)]
fn change(ctx: &ProbeContext, gp: u64, old: u32, new: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cookie = cookie(ctx);
    if gp == 0 || !targeted(cookie, tgid) {
        return;
    }
    count(Counter::GoStatusChanges);
    let (goid_off, reason_off) = (cookie & 0xffff, (cookie >> 16) & 0xffff);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = GKey {
        tgid,
        _pad: 0,
        g: gp,
    };
    let g = match GOROUTINES.get_ptr_mut(key) {
        Some(g) => g,
        None => {
            // First sight. A `g` leaving idle or dead is a new goroutine; one
            // leaving any other status has been in it since before tracking.
            if new == status::DEAD {
                return;
            }
            // By reference: a copy of the static would be built on the stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let inserted = GOROUTINES.insert(key, &FRESH, BPF_NOEXIST as u64);
            if inserted.is_err() {
                count(Counter::GoroutinesUntracked);
                return;
            }
            let Some(g) = GOROUTINES.get_ptr_mut(key) else {
                return;
            };
            // SAFETY: the map value, just inserted, is only this thread's: the
            // runtime serialises a goroutine's status changes.
            let r = unsafe { &mut *g };
            if old == status::IDLE || old == status::DEAD {
                let tid = pid_tgid as u32;
                // SAFETY: copied out field by field.
                if let Some(c) = unsafe { CREATIONS.get(tid) } {
                    r.creation.parent_goid = c.parent_goid;
                    r.creation.create_pc = c.create_pc;
                    r.creation.start_pc = c.start_pc;
                    let _ = CREATIONS.remove(tid);
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
            enter(r, tgid, gp, new, now, goid_off, reason_off);
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
        if new == status::RUNNABLE && config().go_block != 0 {
            block(tgid, pid_tgid as u32, gp, r.goid, r.wait_reason, spent, now);
        }
    } else {
        let s = match old {
            status::RUNNING => slot::RUNNING,
            status::RUNNABLE => slot::RUNNABLE,
            status::SYSCALL => slot::SYSCALL,
            _ => slot::OTHER,
        };
        r.ns[s] += spent;
    }
    enter(r, tgid, gp, new, now, goid_off, reason_off);
    if new == status::DEAD {
        end(r, tgid, now);
        let _ = GOROUTINES.remove(key);
    }
}

/// `--mode goblock`: goroutine `gp` (id `goid`) of `tgid` is made runnable
/// after waiting `ns` for `reason`, by thread `tid`. Its stack is still as it
/// parked (`g.sched`: the PC after `mcall` in `gopark`, and the frame-pointer
/// chain from there), so it is read now and sent with the wait, in a
/// `GoBlockSample` record built in this CPU's scratch, which it takes for the
/// time (the CPU sampler can interrupt a uprobe program: see `SCRATCH_BUSY`).
#[inline(always)]
fn block(tgid: u32, tid: u32, gp: u64, goid: u64, reason: u32, ns: u64, now: u64) {
    if ns < config().min_go_wait_ns {
        count(Counter::GoBlocksShort);
        return;
    }
    if !crate::take_scratch() {
        return;
    }
    block_in_scratch(tgid, tid, gp, goid, reason, ns, now);
    crate::set_scratch_busy(false);
}

/// [`block`] once it holds this CPU's scratch.
#[inline(always)]
fn block_in_scratch(tgid: u32, tid: u32, gp: u64, goid: u64, reason: u32, ns: u64, now: u64) {
    let Some(offsets) = go_offsets(tgid) else {
        count(Counter::GoBlocksLost);
        return;
    };
    let (sched_bp, labels_off) = (u64::from(offsets.sched_bp), u64::from(offsets.labels));
    let Some(scratch) = crate::SCRATCH.get_ptr_mut(0) else {
        count(Counter::GoBlocksLost);
        return;
    };
    // SAFETY: this CPU's scratch slot (see above).
    let scratch = unsafe { &mut *scratch };
    let read = |addr: u64| -> u64 {
        // SAFETY: the user-read helper checks the address; 0 on a fault.
        unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
    };
    let pc = read(gp + G_SCHED_PC);
    if pc == 0 {
        count(Counter::GoBlocksLost);
        return;
    }
    scratch.ips[0] = pc;
    let frames = frame_chain(read(gp + sched_bp), 1, 1).min(MAX_FRAMES);
    let h = &mut scratch.header;
    h.id.kind = RecordKind::GoBlockSample as u32;
    h.id.pid = tgid;
    h.id.tid = tid;
    // SAFETY: plain helper calls; the comm helper writes at most 16 bytes
    // (zeros on failure) into the 16-byte field.
    unsafe {
        h.id.cpu = bpf_get_smp_processor_id();
        generated::bpf_get_current_comm(h.id.comm.as_mut_ptr().cast::<c_void>(), 16);
    }
    h.id.time_ns = now;
    h.stacks.kernel_frames = 0;
    h.stacks.user_frames = frames as u16;
    h.stacks.flags = if frames > MAX_SWITCH_FRAMES {
        FLAG_USER_TRUNCATED
    } else {
        0
    };
    // Volatile: plain stores of adjacent zeros become a `memset` call.
    // SAFETY: fields of this CPU's scratch slot.
    unsafe {
        for w in 0..STACK_TOP_WORDS {
            core::ptr::write_volatile(&mut h.stacks.stack_top[w], 0);
        }
        core::ptr::write_volatile(&mut h.go.switch_frames, 0);
        core::ptr::write_volatile(&mut h.go.signal_pc, 0);
        core::ptr::write_volatile(&mut h.baseline.outermost, 0);
        core::ptr::write_volatile(&mut h.baseline.frames, 0);
        core::ptr::write_volatile(&mut h.span.state, 0);
        core::ptr::write_volatile(&mut h.span.syscall, 0);
    }
    h.go.goid = goid;
    h.go.labels = read(gp + labels_off);
    h.go.status = reason;
    h.span.ns = ns;
    let len = record_len(frames);
    // SAFETY: len <= size_of::<SampleScratch>() (frames <= MAX_FRAMES), and the
    // scratch slot lives for the whole program run.
    let record =
        unsafe { core::slice::from_raw_parts(scratch as *const SampleScratch as *const u8, len) };
    match EVENTS.output::<[u8]>(record, crate::wakeup_flags()) {
        Ok(()) => {
            count(Counter::GoBlocks);
        }
        Err(_) => {
            count(Counter::GoBlocksLost);
        }
    }
}

/// The goroutine `gp` of `tgid` enters `new` at `now`.
#[inline(always)]
fn enter(
    r: &mut Goroutine,
    tgid: u32,
    gp: u64,
    new: u32,
    now: u64,
    goid_off: u64,
    reason_off: u64,
) {
    r.status = new;
    r.since_ns = now;
    r.changes += 1;
    r.wait_reason = if new == status::WAITING {
        wait_reason(gp, reason_off)
    } else {
        0
    };
    // A goroutine's id is set once, in `newproc1`, around its first change (after
    // it before Go 1.27, before it from 1.27); once it has run it is final.
    if r.changes <= 3 {
        // SAFETY: user read through the checking helper.
        if let Ok(goid) = unsafe { bpf_probe_read_user((gp + goid_off) as *const u64) } {
            if r.goid == 0 && goid != 0 && r.creation.parent_goid != 0 && config().http != 0 {
                started(tgid, goid, r.creation.parent_goid, now);
            }
            r.goid = goid;
        }
    }
}

/// Tells the collector goroutine `goid` of `tgid`, created by `parent_goid`,
/// has its id (request attribution: it works for its creator's request).
#[inline(always)]
fn started(tgid: u32, goid: u64, parent_goid: u64, now: u64) {
    let record = GoroutineStart {
        kind: RecordKind::GoroutineStart as u32,
        pid: tgid,
        goid,
        parent_goid,
        time_ns: now,
    };
    if EVENTS
        .output::<GoroutineStart>(&record, crate::wakeup_flags())
        .is_err()
    {
        count(Counter::HttpEventsLost);
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
    entry.submit(crate::wakeup_flags());
}
