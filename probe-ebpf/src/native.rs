//! Walking native code by `.eh_frame` rules (see `probe_common::native`):
//! the kernel's side of the tables the collector fills, the walk itself (one
//! frame per `bpf_loop` step, CFA and return address by the frame's row, the
//! frame pointer where there is none), the per-CPU caches it reads through;
//! and the `mmap` tracking that tells the collector a process mapped new code.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{self, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
};
use probe_common::{
    Counter, RecordKind,
    native::{
        FLAG_USER_LEAF_EDGE, FLAG_USER_NO_UNWIND_INFO, FLAG_USER_OUTERMOST, FLAG_USER_STACK_ERROR,
        FLAG_USER_TRUNCATED, MAX_FRAMES, MAX_MMAP_THREADS, MAX_UNWIND_MAPPINGS, MAX_UNWIND_PAGES,
        MAX_UNWIND_PIDS, MAX_UNWIND_ROWS, RBP_SAME, RBP_UNKNOWN, UNWIND_PAGE_SHIFT, UnwindMappings,
        UnwindPage, UnwindRow, cfa_kind,
    },
    process::{PROCESS_MANAGED, PROCESS_RULES},
};

use crate::{SCRATCH, count, regs::UserRegs, sample::walks};

/// Every object's rows. Memory-mappable: the collector writes rows straight
/// into it, not with one syscall per row.
#[map]
static UNWIND_ROWS: Array<UnwindRow> =
    Array::with_max_entries(MAX_UNWIND_ROWS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Every object's page index: for each page of its code, the range of rows
/// (from the object's first) a PC in it has its row in.
#[map]
static UNWIND_PAGES: Array<UnwindPage> =
    Array::with_max_entries(MAX_UNWIND_PAGES, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Per slot: a process's executable mappings with rows. An array, looked up
/// once per frame: the verifier inlines array lookups, not hash lookups.
#[map]
static UNWIND_MAPS: Array<UnwindMappings> = Array::with_max_entries(MAX_UNWIND_PIDS, 0);

const SLOT_MASK: u32 = MAX_UNWIND_PIDS - 1;

/// Walks the user stack of `tgid` (at `slot` in `UNWIND_MAPS`; `managed`: a
/// .NET process, whose code without rules may be JIT code) by its objects'
/// `.eh_frame` rules into the scratch `ips[first..]`, leaf first, from the
/// registers in [`Walks::regs`] (none if `!have_regs`), falling back to the
/// frame pointer where there is no rule; returns the number of frames and sets
/// `FLAG_USER_*` bits. Without `RUNTIMES` the .NET steps are not built in
/// (`managed` must then be false).
#[inline(always)]
pub fn unwind_by_rules<const RUNTIMES: bool>(
    tgid: u32,
    slot: u32,
    managed: bool,
    have_regs: bool,
    first: usize,
    flags: &mut u32,
) -> usize {
    count(Counter::NativeUnwinds);
    let Some(state) = walks() else {
        return 0;
    };
    if !have_regs {
        *flags |= FLAG_USER_STACK_ERROR;
        count(Counter::UserStackError);
        return 0;
    }
    let r = state.regs;
    if first >= MAX_FRAMES || r.ip == 0 {
        return 0;
    }
    state
        .rule
        .start(slot, tgid, &r, first as u32, u32::from(managed));
    // A managed leaf may be in its prolog or epilog, which the .NET walk's
    // leaf step knows; the loop below steps from callers only.
    if RUNTIMES && managed && crate::dotnet::is_managed_code(tgid, r.ip) {
        count(Counter::ManagedUnwinds);
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        // SAFETY: this CPU's scratch slot; first < MAX_FRAMES.
        unsafe { (*scratch).ips[first] = r.ip };
        crate::dotnet::crossprof_leaf_step(tgid);
        let Some(state) = walks() else {
            return 1;
        };
        match state.stepped.outcome {
            crate::dotnet::outcome::STEPPED => {
                let walk = &mut state.rule;
                walk.ip = state.stepped.ip;
                walk.sp = state.stepped.sp;
                walk.bp = state.stepped.bp;
                walk.next += 1;
                walk.frames = 1;
                walk.back = 1;
            }
            crate::dotnet::outcome::EDGE => {
                *flags |= FLAG_USER_LEAF_EDGE;
                count(Counter::ManagedLeafEdge);
                return 1;
            }
            _ => return 1,
        }
    }
    let Some(state) = walks() else {
        return 0;
    };
    let walk = &mut state.rule;
    // SAFETY: `rule_step` has the callback signature bpf_loop expects; it
    // finds its state in this CPU's `Walks`.
    unsafe {
        bpf_loop(
            MAX_FRAMES as u32,
            rule_step::<RUNTIMES> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    match walk.end {
        0 => *flags |= FLAG_USER_TRUNCATED,
        END_NO_RULE => {
            *flags |= FLAG_USER_NO_UNWIND_INFO;
            count(Counter::NativeUnwindStops);
        }
        END_OUTERMOST => *flags |= FLAG_USER_OUTERMOST,
        _ => {}
    }
    // Through memory: the caller's use of the count as a size would make the
    // verifier track `frames` precisely back into the loop, and check each of
    // its 127 steps apart instead of one.
    forget(u64::from(walk.frames)) as usize
}

/// `v`, through this CPU's window memory: the verifier knows nothing of the
/// result (an unknown scalar to bound again), and so tracks nothing back.
#[inline(always)]
pub(crate) fn forget(v: u64) -> u64 {
    let Some(window) = STACK_WINDOW.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's window.
    unsafe {
        core::ptr::write_volatile(&mut (*window).index, v);
        core::ptr::read_volatile(&(*window).index)
    }
}

/// Bytes of user stack one read brings in for the rule walk (a power of two).
const WINDOW_BYTES: usize = 512;
const WINDOW_WORDS: usize = WINDOW_BYTES / 8;
/// `RuleWalk::window` when the window holds nothing: no user address is within
/// `WINDOW_BYTES` above it.
const NO_WINDOW: u64 = 1 << 63;

/// This CPU's copy of a window of the user stack being walked: a frame's
/// return address and saved RBP, and usually the next frames' too, come out of
/// one `bpf_probe_read_user` instead of one each (each read costs ~60-70 ns
/// in a VM, about half of a 40-frame walk when read word by word).
#[repr(C)]
pub struct StackWindow {
    words: [u64; WINDOW_WORDS],
    /// A value passed through memory (`forget`).
    index: u64,
}

#[map]
static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);

/// Reads the user word at `addr` through this CPU's stack window starting at
/// `*base`, refilling it from `addr` on a miss; a refill that faults (the
/// window runs off the stack's mapping) reads the word alone.
///
/// Every path leaves `*base` an unknown value to the verifier (never a
/// constant), so that the paths' states prune each other.
#[inline(always)]
fn read_stack(base: &mut u64, addr: u64) -> Option<u64> {
    let window = STACK_WINDOW.get_ptr_mut(0)?;
    let off = addr.wrapping_sub(*base);
    let aligned = addr & 7 == 0;
    if aligned && off < (WINDOW_BYTES - 8) as u64 {
        // SAFETY: this CPU's window; the index is masked into the array.
        let i = forget(off / 8) as usize & (WINDOW_WORDS - 1);
        // SAFETY: this CPU's window; the index is masked into the array.
        return Some(unsafe { (*window).words[i] });
    }
    if aligned {
        // SAFETY: the helper checks the user range and fails on a fault; the
        // destination is this CPU's window, WINDOW_BYTES long.
        let ret = unsafe {
            generated::bpf_probe_read_user(
                (*window).words.as_mut_ptr().cast(),
                WINDOW_BYTES as u32,
                addr as *const c_void,
            )
        };
        if ret == 0 {
            *base = addr;
            // SAFETY: as above; word 0 is `addr`.
            return Some(unsafe { (*window).words[0] });
        }
    }
    *base = addr | NO_WINDOW;
    // SAFETY: the user-read helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// `RuleWalk::end`: the stack is complete (outermost frame, or no caller).
const END_COMPLETE: u32 = 1;
/// `RuleWalk::end`: a frame had neither a rule nor a usable frame pointer.
const END_NO_RULE: u32 = 2;
/// `RuleWalk::end`: complete, at a frame the rules mark outermost (no
/// caller: `DW_CFA_undefined rip`, or a zero return address by a rule).
const END_OUTERMOST: u32 = 3;

/// The rule walk's state between `bpf_loop` steps (in [`Walks`]).
#[repr(C)]
pub(crate) struct RuleWalk {
    /// The process's slot in `UNWIND_MAPS`.
    slot: u32,
    ip: u64,
    sp: u64,
    bp: u64,
    tgid: u32,
    /// Index in the scratch `ips` of the next frame.
    next: u32,
    /// Frames written.
    frames: u32,
    /// Why the walk ended (0: the frame limit).
    end: u32,
    /// 1 in a .NET process: code without rules may be JIT code.
    managed: u32,
    /// The process's `UnwindMappings::generation` (0: none, nothing cached).
    generation: u32,
    /// Where this CPU's `StackWindow` starts in the user stack.
    window: u64,
    /// The previous frame's row, and the addresses it covers (`row_lo..row_hi`).
    row: UnwindRow,
    row_lo: u64,
    row_hi: u64,
    /// 0 while `ip` is the interrupted leaf's, then 1: a return address is
    /// looked up one byte back. (Not `frames == 1`: a compare with a constant
    /// makes the verifier track `frames` precisely, so that it checks each of
    /// the loop's 127 steps apart instead of one.)
    back: u64,
}

impl RuleWalk {
    /// Starts a walk from `r`, its first frame at `ips[next]`.
    #[inline(always)]
    fn start(&mut self, slot: u32, tgid: u32, r: &UserRegs, next: u32, managed: u32) {
        self.slot = slot;
        // SAFETY: the value is copied out.
        self.generation = UNWIND_MAPS
            .get(slot & SLOT_MASK)
            .map_or(0, |m| m.generation);
        self.ip = r.ip;
        self.sp = r.sp;
        self.bp = r.bp;
        self.tgid = tgid;
        self.next = next;
        self.frames = 0;
        self.end = 0;
        self.managed = managed;
        self.window = NO_WINDOW;
        self.back = 0;
        // An empty range: no previous row (the row itself is then never read).
        // Volatile: adjacent zero stores became a byte-wise `memset` call.
        // SAFETY: fields of this CPU's walk state.
        unsafe {
            core::ptr::write_volatile(&mut self.row_lo, 0);
            core::ptr::write_volatile(&mut self.row_hi, 0);
        }
    }
}

/// Records `ip` and steps to its caller. Returns 1 to stop.
#[inline(never)]
extern "C" fn rule_step<const RUNTIMES: bool>(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(walks) = walks() else {
        return 1;
    };
    let w = &mut walks.rule;
    let idx = w.next as usize;
    if idx >= 2 * MAX_FRAMES || w.ip == 0 {
        w.end = END_COMPLETE;
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        w.end = END_NO_RULE;
        return 1;
    };
    // SAFETY: this CPU's scratch slot; idx < 2 * MAX_FRAMES was checked above.
    unsafe { (*scratch).ips[idx] = w.ip };
    w.next += 1;
    w.frames += 1;
    // A return address is looked up one byte back: the call, not what follows.
    let pc = w.ip - w.back;
    w.back = 1;
    // Consecutive frames often share a row (Go code is one row per object):
    // the previous frame's row is tried before the search.
    let row = if pc.wrapping_sub(w.row_lo) < w.row_hi.wrapping_sub(w.row_lo) {
        Some(w.row)
    } else {
        let cache = ROW_CACHE.get_ptr_mut(row_cache_index(pc));
        // SAFETY: this CPU's cache slot, used by one walk at a time (see `Walks`).
        let cached = cache.map(|c| unsafe { &mut *c });
        let found = match cached {
            Some(c)
                if c.generation == w.generation
                    && pc.wrapping_sub(c.lo) < c.hi.wrapping_sub(c.lo) =>
            {
                Some((c.row, c.lo, c.hi))
            }
            cached => {
                let found = rule_for(w.slot, pc);
                if let (Some((row, lo, hi)), Some(c)) = (found, cached) {
                    c.generation = w.generation;
                    c.row = row;
                    c.lo = lo;
                    c.hi = hi;
                }
                found
            }
        };
        if let Some((row, lo, hi)) = found {
            w.row = row;
            w.row_lo = lo;
            w.row_hi = hi;
        }
        found.map(|(row, _, _)| row)
    };
    let cfa = match row.map(|r| r.cfa_kind) {
        Some(cfa_kind::RSP) => {
            w.sp.wrapping_add(row.map_or(0, |r| r.cfa_off as i64) as u64)
        }
        Some(cfa_kind::RBP) => {
            w.bp.wrapping_add(row.map_or(0, |r| r.cfa_off as i64) as u64)
        }
        Some(cfa_kind::PLT) => {
            let past = if (w.ip & 15) >= 11 { 8 } else { 0 };
            w.sp + 8 + past
        }
        Some(cfa_kind::OUTERMOST) => {
            w.end = END_OUTERMOST;
            return 1;
        }
        Some(cfa_kind::GO_CGO_CALL) => {
            // Back from the system stack to the goroutine's (asmcgocall's
            // saved depth and g; see probe_common::native::cfa_kind).
            let at =
                w.sp.wrapping_add(row.map_or(0, |r| r.cfa_off as i64) as u64);
            let (Some(word), Some(g)) = (
                read_stack(&mut w.window, at),
                read_stack(&mut w.window, at + 8),
            ) else {
                w.end = END_NO_RULE;
                return 1;
            };
            let sp = if g == 0 {
                word
            } else {
                // Straight from the g, not through the window: the g is
                // not on this stack, and refilling the window from it would
                // cost the next frame's read a refill back.
                // SAFETY: the user-read helper checks the address and fails on a fault.
                match unsafe { bpf_probe_read_user((g + 8) as *const u64) }.ok() {
                    Some(hi) => hi.wrapping_sub(word),
                    None => {
                        w.end = END_NO_RULE;
                        return 1;
                    }
                }
            };
            let record = row.map_or(0, |r| r.rbp) == 1;
            let sp = if record {
                match read_stack(&mut w.window, sp) {
                    Some(bp) => w.bp = bp,
                    None => {
                        w.end = END_NO_RULE;
                        return 1;
                    }
                }
                sp + 8
            } else {
                sp
            };
            let Some(ra) = read_stack(&mut w.window, sp) else {
                w.end = END_NO_RULE;
                return 1;
            };
            w.ip = ra;
            w.sp = sp + 8;
            if ra == 0 {
                w.end = END_COMPLETE;
                return 1;
            }
            return 0;
        }
        kind => {
            // No rule (hand-written assembly, JIT code): the frame pointer, if
            // it points up the stack. Go code keeps frame pointers, and its
            // frame records may be on another stack.
            let go = kind == Some(cfa_kind::GO_FRAME_POINTER);
            if RUNTIMES && !go && w.managed != 0 {
                // JIT code by its method's frame, else the frame pointer.
                let mut window = w.window;
                let stepped = crate::dotnet::step(w.tgid, false, w.ip, w.sp, w.bp, &mut |a| {
                    read_stack(&mut window, a)
                });
                w.window = window;
                return match stepped {
                    Ok(Some((ip, sp, bp))) => {
                        w.ip = ip;
                        w.sp = sp;
                        w.bp = bp;
                        if ip == 0 {
                            w.end = END_COMPLETE;
                            return 1;
                        }
                        0
                    }
                    _ => {
                        w.end = if w.bp == 0 { END_COMPLETE } else { END_NO_RULE };
                        1
                    }
                };
            }
            if w.bp == 0 {
                // The outermost frame: the x86-64 psABI has the first frame
                // (`_start`, a thread's start) zero RBP, and Go zeroes it at a
                // goroutine's and a thread's first frame.
                w.end = END_COMPLETE;
                return 1;
            }
            // `bp == sp` is a frame: `push rbp; mov rbp, rsp` and a call
            // with nothing else pushed leaves the caller's CFA at its `rbp`
            // (a .NET method's own frame before its runtime is known here:
            // `System.Attribute::GetCustomAttribute` in CoreLib 8.0.4's
            // ReadyToRun code ended 1-4 start-up walks of every run).
            if !go && (w.bp < w.sp || w.bp & 7 != 0 || w.bp - w.sp > (1 << 20)) {
                w.end = END_NO_RULE;
                return 1;
            }
            let Some(saved) = read_stack(&mut w.window, w.bp) else {
                w.end = END_NO_RULE;
                return 1;
            };
            let cfa = w.bp + 16;
            let Some(ra) = read_stack(&mut w.window, cfa - 8) else {
                w.end = END_NO_RULE;
                return 1;
            };
            w.ip = ra;
            w.sp = cfa;
            w.bp = saved;
            if ra == 0 {
                w.end = END_COMPLETE;
                return 1;
            }
            return 0;
        }
    };
    // The saved RBP (below the return address) first: the window is read
    // upwards from the lower address.
    let rbp = row.map_or(RBP_SAME, |r| r.rbp);
    if rbp != RBP_SAME && rbp != RBP_UNKNOWN {
        match read_stack(&mut w.window, cfa.wrapping_add((rbp as i64 * 8) as u64)) {
            Some(bp) => w.bp = bp,
            None => {
                w.end = END_NO_RULE;
                return 1;
            }
        }
    }
    let Some(ra) = read_stack(&mut w.window, cfa.wrapping_sub(8)) else {
        w.end = END_NO_RULE;
        return 1;
    };
    if cfa <= w.sp {
        // The stack only grows down: a CFA at or below SP is no caller's frame.
        w.end = END_NO_RULE;
        return 1;
    }
    w.sp = cfa;
    w.ip = ra;
    if ra == 0 {
        w.end = END_OUTERMOST;
        return 1;
    }
    0
}

/// Rules found recently on this CPU, by return address: a profile's stacks
/// repeat, and a hit costs one load where [`rule_for`]'s two searches touch
/// a dozen cache lines (~1.5-2.5 µs of a 40-frame walk on this VM, issue
/// #17). Each entry is keyed by the `UnwindMappings::generation` it was found
/// in: a process's list is never rewritten under the same number, so an
/// entry is right for as long as a walk sees that number, and dead after.
/// Direct-mapped: a collision replaces the entry.
#[map]
static ROW_CACHE: PerCpuArray<CachedRow> = PerCpuArray::with_max_entries(ROW_CACHE_ENTRIES, 0);

/// Entries in [`ROW_CACHE`] (a power of two): 16 KiB per CPU.
const ROW_CACHE_ENTRIES: u32 = 512;

/// A row found for a mapping list's `generation`, and the addresses it
/// covers (`lo..hi`).
#[repr(C)]
pub(crate) struct CachedRow {
    generation: u32,
    row: UnwindRow,
    lo: u64,
    hi: u64,
}

/// `pc`'s entry in [`ROW_CACHE`] (Fibonacci hashing: the top bits of the
/// product mix every bit of the address).
#[inline(always)]
fn row_cache_index(pc: u64) -> u32 {
    (pc.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - ROW_CACHE_ENTRIES.trailing_zeros())) as u32
        & (ROW_CACHE_ENTRIES - 1)
}

/// The rule for `pc` of `tgid`: its row and the addresses the row covers
/// (`lo..hi`), if an object with rules covers it; between the process's
/// objects with rules, a [`NO_RULE`] row for the gap.
///
/// Both searches are branch-free lower bounds with masked indexes and a fixed
/// number of steps: a search whose bounds the verifier must track precisely
/// (`if lo < hi`) multiplies its states past the 1M-instruction limit.
#[inline(always)]
fn rule_for(slot: u32, pc: u64) -> Option<(UnwindRow, u64, u64)> {
    let maps = UNWIND_MAPS.get(slot & SLOT_MASK)?;
    const MAP_MASK: u32 = MAX_UNWIND_MAPPINGS as u32 - 1;
    // The last mapping starting at or before pc (entries sorted by start).
    let mut base = 0u32;
    let mut len = maps.count & (2 * MAX_UNWIND_MAPPINGS as u32 - 1);
    for _ in 0..7 {
        let half = len / 2;
        let start = maps.entries[((base + half) & MAP_MASK) as usize].start;
        base += u32::from(start <= pc) * half;
        len -= half;
    }
    let m = &maps.entries[(base & MAP_MASK) as usize];
    if maps.count == 0 {
        return None;
    }
    // No rules at pc (JIT code, anonymous memory, an object without rows): a
    // row that says so, for the addresses up to the next mapping, so that the
    // row cache answers for them too (a .NET walk meets the same JIT frames
    // in every sample; each miss was a search). A range that does not hold
    // pc (overlapping mappings) is no answer.
    if pc < m.start || pc >= m.end || m.count == 0 {
        let (lo, hi) = if pc < m.start {
            (0, m.start)
        } else if pc >= m.end {
            let next = base + 1;
            let hi = if next < maps.count {
                maps.entries[(next & MAP_MASK) as usize].start
            } else {
                u64::MAX
            };
            (m.end, hi)
        } else {
            (m.start, m.end)
        };
        return (lo <= pc && pc < hi).then_some((NO_RULE, lo, hi));
    }
    let (first, count, bias, end) = (m.first, m.count, m.bias, m.end);
    let link = pc.wrapping_sub(bias) as u32;
    // The rows of pc's page, by the page index; all the object's rows if pc is
    // outside the pages it covers.
    let page = (link >> UNWIND_PAGE_SHIFT).wrapping_sub(m.page_base);
    let (mut lo, mut len) = (0, count);
    if page < m.pages
        && let Some(&UnwindPage { lo: a, hi: b }) =
            UNWIND_PAGES.get(m.pages_first.wrapping_add(page) & PAGE_MASK)
        && a <= b
        && b < count
    {
        (lo, len) = (a, b - a + 1);
    }
    // The last row at or before the link-time pc, in steps under bpf_loop (the
    // verifier checks one step, not up to 21).
    let mut search = RowSearch {
        base: first.wrapping_add(lo),
        len: len & ROW_MASK,
        link,
    };
    // A page with one candidate row needs no search.
    if search.len > 1 {
        // SAFETY: `row_search_step` has the callback signature bpf_loop
        // expects, and `search` lives on this stack frame for the whole loop.
        unsafe {
            bpf_loop(
                21,
                row_search_step as *mut c_void,
                (&mut search as *mut RowSearch).cast::<c_void>(),
                0,
            );
        }
    }
    let row = *UNWIND_ROWS.get(search.base & ROW_MASK)?;
    if row.pc > link {
        return None;
    }
    // The row ends where the next one starts, or with the mapping.
    let next = search.base.wrapping_add(1);
    let hi = match UNWIND_ROWS.get(next & ROW_MASK) {
        Some(r) if next.wrapping_sub(first) < count => bias.wrapping_add(u64::from(r.pc)),
        _ => end,
    };
    Some((row, bias.wrapping_add(u64::from(row.pc)), hi))
}

/// The row of addresses without rules: the frame pointer, or the .NET walk.
const NO_RULE: UnwindRow = UnwindRow {
    pc: 0,
    cfa_off: 0,
    cfa_kind: cfa_kind::UNKNOWN,
    rbp: RBP_UNKNOWN,
};

const ROW_MASK: u32 = MAX_UNWIND_ROWS - 1;
const PAGE_MASK: u32 = MAX_UNWIND_PAGES - 1;

/// A lower-bound search over `UNWIND_ROWS[base..base + len]` for `link`.
#[repr(C)]
struct RowSearch {
    base: u32,
    len: u32,
    link: u32,
}

/// One halving of a [`RowSearch`]; branch-free, so the verifier keeps one state.
#[inline(never)]
extern "C" fn row_search_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `RowSearch` rule_for passed to bpf_loop.
    let s = unsafe { &mut *ctx.cast::<RowSearch>() };
    let half = s.len / 2;
    let row_pc = UNWIND_ROWS
        .get((s.base + half) & ROW_MASK)
        .map_or(u32::MAX, |r| r.pc);
    s.base += u32::from(row_pc <= s.link) * half;
    s.len -= half;
    i64::from(s.len <= 1)
}

// --- New code mapped (dlopen): the collector re-reads the process's maps ----

/// Threads inside an `mmap` of a file's code: tid -> tgid.
#[map]
static MMAP_EXEC: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MMAP_THREADS, 0);

/// `PROT_EXEC` (`<sys/mman.h>`).
const PROT_EXEC: u64 = 4;

/// At `mmap`'s entry: a process walked by rules (or a .NET process, which
/// will be), or any target of a session that selects its targets (its
/// libraries are read while it lives, however short its life), mapping a
/// file with `PROT_EXEC` is remembered by thread. The
/// `sys_enter_mmap` format (`/sys/kernel/tracing/events/syscalls/
/// sys_enter_mmap/format`): 8 bytes of common fields, the syscall number (8
/// with padding), then the six arguments as 8-byte words: addr @16, len @24,
/// prot @32, flags @40, fd @48, off @56.
#[inline(always)]
pub fn mmap_enter(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if crate::process(tgid).is_none_or(|p| p.flags & (PROCESS_RULES | PROCESS_MANAGED) == 0)
        && (crate::config().filter_pids == 0 || !crate::selected(tgid))
    {
        return;
    }
    // SAFETY: reads of the tracepoint record at the offsets of its format.
    let (prot, fd) = unsafe { (ctx.read_at::<u64>(32), ctx.read_at::<i64>(48)) };
    if prot.is_ok_and(|p| p & PROT_EXEC != 0) && fd.is_ok_and(|fd| fd >= 0) {
        let _ = MMAP_EXEC.insert(pid_tgid as u32, tgid, 0);
    }
}

/// At `mmap`'s exit (return value @16): if the thread was mapping code and it
/// worked, a `MapsChanged` announcement, with a wakeup.
#[inline(always)]
pub fn mmap_exit(ctx: &TracePointContext) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&tgid) = (unsafe { MMAP_EXEC.get(tid) }) else {
        return;
    };
    let _ = MMAP_EXEC.remove(tid);
    // SAFETY: a read of the tracepoint record at its return value's offset.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if (-4095..0).contains(&ret) {
        return;
    }
    crate::announce(RecordKind::MapsChanged, tgid);
}
