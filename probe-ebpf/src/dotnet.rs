//! .NET: the user stack of a process that runs JIT-compiled code, walked here
//! instead of by `bpf_get_stack`, so that a frameless method does not hide its
//! caller (see `probe_common::dotnet`).
//!
//! Each step starts from the frame's `ip`, `sp` and `bp`:
//! - `ip` in a method listed in `CODE_PAGES` whose body is frameless: the return
//!   address is at `sp + body_cfa - 8`, the caller's `sp` is `sp + body_cfa`, and
//!   its `bp` is unchanged (or reloaded from where the prolog saved it);
//! - anywhere else: the frame-pointer step, as `bpf_get_stack` does it.
//!
//! A leaf sampled in a listed method's prolog or epilog has no fixed frame shape:
//! the walk stops after it, flagged, rather than guess.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::HashMap,
};
use probe_common::{
    Counter,
    dotnet::{
        CODE_CONT, CODE_FRAMED, CODE_OSR, CodeEntry, CodePage, MAX_CODE_PAGES, NO_ENTRY,
        PAGE_ENTRIES, PAGE_SHIFT, PAGE_SLOTS, PROLOG_PUSHES, PageKey, SLOT_SHIFT,
    },
    native::{FLAG_USER_LEAF_EDGE, FLAG_USER_STACK_ERROR, FLAG_USER_TRUNCATED, MAX_FRAMES},
};

use crate::{SCRATCH, count};

/// The JIT code of those processes, per page.
#[map]
static CODE_PAGES: HashMap<PageKey, CodePage> =
    HashMap::with_max_entries(MAX_CODE_PAGES, BPF_F_NO_PREALLOC);

/// Is `ip` in a managed method of `tgid` the collector has described?
#[inline(always)]
pub fn is_managed_code(tgid: u32, ip: u64) -> bool {
    find(tgid, ip).is_some()
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: the user-read helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64).ok() }
}

/// What the walk needs of a [`CodeEntry`], copied out field by field (a struct
/// copy would become a `memcpy` call, which the program must not contain).
#[derive(Clone, Copy)]
struct Found {
    /// Offset of `ip` from the entry's start.
    off: u32,
    prolog_len: u32,
    body_cfa: u64,
    bp_slot: u64,
    flags: u8,
    /// The entry, for a leaf's prolog replay.
    entry: &'static CodeEntry,
}

/// The listed method part holding `ip` of `tgid`, if any.
#[inline(always)]
fn find(tgid: u32, ip: u64) -> Option<Found> {
    let key = PageKey {
        pid: tgid,
        pad: 0,
        page: ip >> PAGE_SHIFT,
    };
    // SAFETY: the value is only read, field by field.
    let page: &'static CodePage = unsafe { CODE_PAGES.get(key) }?;
    let off = (ip & ((1 << PAGE_SHIFT) - 1)) as u32;
    // The slot index names the last entry starting before this 16-byte slot
    // ends: it holds `off`, or, if it starts after `off`, the one before does.
    let last = page.slots[(off >> SLOT_SHIFT) as usize & (PAGE_SLOTS - 1)];
    if last == NO_ENTRY || u32::from(last) >= page.count {
        return None;
    }
    let mut hit = usize::from(last) & (PAGE_ENTRIES - 1);
    if u32::from(page.entries[hit].start) > off {
        if hit == 0 {
            return None;
        }
        // Masked after an opaque copy: LLVM knows `hit - 1` is in 0..63 here
        // and drops a plain mask, and Linux 6.1's verifier, which learns
        // nothing from `hit != 0`, then sees an index that may be -1.
        hit = crate::opaque((hit - 1) as u64) as usize & (PAGE_ENTRIES - 1);
    }
    let e: &CodeEntry = &page.entries[hit];
    let start = u32::from(e.start);
    if off >= start + u32::from(e.len) {
        return None;
    }
    let off = off - start;
    Some(Found {
        off,
        prolog_len: u32::from(e.prolog_len),
        body_cfa: u64::from(e.body_cfa),
        bp_slot: u64::from(e.bp_slot),
        flags: e.flags,
        entry: e,
    })
}

/// Bytes a prolog has pushed or allocated before offset `off`: 8 per push that
/// ended at or before it, or the whole frame once its `sub rsp` has.
#[inline(always)]
fn prolog_below(e: &CodeEntry, off: u32) -> u64 {
    if e.sub_end != 0 && u32::from(e.sub_end) <= off {
        return u64::from(e.body_cfa) - 8;
    }
    // Branch-free, so that the verifier sees one path, not one per push.
    let mut pushes = 0u64;
    for k in 0..PROLOG_PUSHES {
        let end = u32::from(e.push_ends[k]);
        pushes += u64::from(end != 0) & u64::from(end <= off);
    }
    8 * pushes
}

/// Is the instruction at `ip` part of an epilog: `ret`, a `pop`, `add rsp, N`,
/// `lea rsp, [...]` or the `vzeroupper` that may precede them?
#[inline(always)]
fn at_epilog(ip: u64) -> bool {
    // SAFETY: the user-read helper checks the address and fails on a fault.
    let Ok(word) = (unsafe { bpf_probe_read_user(ip as *const u32) }) else {
        return true; // unreadable code: do not trust the rule either
    };
    let (b0, b1, b2) = (word as u8, (word >> 8) as u8, (word >> 16) as u8);
    matches!(b0, 0xC3 | 0x58..=0x5F)
        || (b0 == 0x41 && matches!(b1, 0x58..=0x5F))
        || (b0 == 0x48 && matches!(b1, 0x83 | 0x81) && b2 == 0xC4)
        || (b0 == 0x48 && b1 == 0x8D && (b2 & 0x38) == 0x20)
        || (b0 == 0xC5 && b1 == 0xF8 && b2 == 0x77)
}

/// Reads 32 code bytes at `addr`.
#[inline(always)]
fn code_bytes(addr: u64) -> Option<[u8; 32]> {
    // SAFETY: the user-read helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const [u8; 32]) }.ok()
}

/// The CFA of a leaf stopped at `ip` in an epilog (`[vzeroupper] [add rsp, N |
/// lea rsp, [rbp + d]] pop... ret`), and where the caller's `rbp` was saved if
/// a `pop rbp` is still to come.
#[inline(always)]
fn in_epilog(ip: u64, sp: u64, bp: u64) -> Option<(u64, Option<u64>)> {
    let b = code_bytes(ip)?;
    let mut pos = 0usize;
    let mut base = sp;
    if b[0] == 0xC5 && b[1] == 0xF8 && b[2] == 0x77 {
        pos = 3;
    }
    let (b0, b1, b2) = (b[pos & 31], b[(pos + 1) & 31], b[(pos + 2) & 31]);
    if b0 == 0x48 && b1 == 0x83 && b2 == 0xC4 {
        base += u64::from(b[(pos + 3) & 31]);
        pos += 4;
    } else if b0 == 0x48 && b1 == 0x81 && b2 == 0xC4 {
        let imm = u32::from_le_bytes([
            b[(pos + 3) & 31],
            b[(pos + 4) & 31],
            b[(pos + 5) & 31],
            b[(pos + 6) & 31],
        ]);
        base += u64::from(imm);
        pos += 7;
    } else if b0 == 0x48 && b1 == 0x8D && b2 == 0x65 {
        // lea rsp, [rbp + disp8]
        base = bp.wrapping_add(b[(pos + 3) & 31] as i8 as u64);
        pos += 4;
    }
    let mut saved_bp = None;
    for _ in 0..8 {
        // Forgotten at each step: with `pos` a known constant on every path
        // the verifier walked each sequence of one- and two-byte pops apart
        // (2^8 of them, ~12k instructions of the sampler's load).
        let pos_now = crate::native::forget(pos as u64) as usize;
        pos = pos_now;
        let (b0, b1) = (b[pos & 31], b[(pos + 1) & 31]);
        if (0x58..=0x5F).contains(&b0) {
            if b0 == 0x5D {
                saved_bp = Some(base);
            }
            base += 8;
            pos += 1;
        } else if b0 == 0x41 && (0x58..=0x5F).contains(&b1) {
            base += 8;
            pos += 2;
        } else {
            break;
        }
        if pos >= 30 {
            return None;
        }
    }
    // The epilog must end here, returning (or tail-calling).
    (b[pos & 31] == 0xC3 || b[pos & 31] == 0xE9).then_some((base + 8, saved_bp))
}

/// One step from a frame at `ip` (a return address unless `leaf`) with its `sp`
/// and `bp` to its caller's `(ip, sp, bp)`; `None` ends the walk, and `Err(())`
/// ends it flagged (a leaf in a prolog or epilog that cannot be replayed).
/// Stack words come from `read` (of two words, the lower is read first: the
/// rule walk's reader brings in a window upwards from the address asked).
#[inline(always)]
pub(crate) fn step(
    tgid: u32,
    leaf: bool,
    ip: u64,
    sp: u64,
    bp: u64,
    read: &mut impl FnMut(u64) -> Option<u64>,
) -> Result<Option<(u64, u64, u64)>, ()> {
    // A return address is the instruction after the call: look up the call.
    let at = if leaf { ip } else { ip - 1 };
    if let Some(e) = find(tgid, at) {
        if e.flags & CODE_OSR != 0 {
            // The Tier-0 frame under the OSR code: CFA from rbp.
            let cfa = bp + e.body_cfa;
            let (Some(saved_bp), Some(ra)) = (read(cfa - 16), read(cfa - 8)) else {
                return Ok(None);
            };
            return Ok(Some((ra, cfa, saved_bp)));
        }
        if leaf {
            // A leaf in a prolog or an epilog: its frame is half built or half
            // torn down. Replay what the instructions did; give up, flagged,
            // when they are not the JIT's usual ones.
            let edge = if e.off < e.prolog_len {
                // Prolog offsets are from the method's start: not known in a page
                // the method only continues into.
                if e.flags & CODE_CONT != 0 {
                    return Err(());
                }
                Some((sp + prolog_below(e.entry, e.off) + 8, None))
            } else if at_epilog(ip) {
                match in_epilog(ip, sp, bp) {
                    Some(found) => Some(found),
                    None => return Err(()),
                }
            } else {
                None
            };
            if let Some((cfa, saved_bp_at)) = edge {
                let bp = match saved_bp_at {
                    Some(at) => match read(at) {
                        Some(v) => v,
                        None => return Ok(None),
                    },
                    None => bp,
                };
                let Some(ra) = read(cfa - 8) else {
                    return Ok(None);
                };
                return Ok(Some((ra, cfa, bp)));
            }
        }
        if e.flags & CODE_FRAMED == 0 {
            let cfa = sp + e.body_cfa;
            let bp = if e.bp_slot != 0 {
                match read(cfa - e.bp_slot) {
                    Some(v) => v,
                    None => return Ok(None),
                }
            } else {
                bp
            };
            let Some(ra) = read(cfa - 8) else {
                return Ok(None);
            };
            return Ok(Some((ra, cfa, bp)));
        }
    }
    // The frame-pointer step: [bp] is the caller's bp, [bp + 8] the return
    // address. A bp below sp or misaligned is not a frame: the walk ends.
    if bp < sp || bp & 7 != 0 {
        return Ok(None);
    }
    let (Some(next_bp), Some(ra)) = (read(bp), read(bp + 8)) else {
        return Ok(None);
    };
    Ok(Some((ra, bp + 16, next_bp)))
}

/// The outcome of [`leaf_step`], in [`Stepped::outcome`].
pub(crate) mod outcome {
    /// The walk ends after the leaf.
    pub const STOPPED: u64 = 0;
    /// The caller's registers are in the [`super::Stepped`].
    pub const STEPPED: u64 = 1;
    /// The leaf is in a prolog or epilog that cannot be replayed: the walk
    /// ends after it, flagged.
    pub const EDGE: u64 = 2;
}

/// What [`leaf_step`] left in the CPU's walk state.
#[repr(C)]
pub(crate) struct Stepped {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// One of [`outcome`].
    pub outcome: u64,
}

/// The step from a managed leaf, at the registers in the CPU's walk state, to
/// its caller, left in [`Stepped`]: a subprogram whose results go through map
/// memory. Its prolog and epilog replays end in many ways, each with its own
/// register values; returned in registers (inlined), the verifier checked the
/// rest of the walk once for each (~29k instructions of the sampler's 63k,
/// ~20% of its load time); read back from memory they are one unknown state.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn crossprof_leaf_step(tgid: u32) -> u32 {
    let Some(walks) = crate::sample::walks() else {
        return 0;
    };
    let r = walks.regs;
    let (kind, (ip, sp, bp)) = match step(tgid, true, r.ip, r.sp, r.bp, &mut read_user) {
        Ok(Some(next)) => (outcome::STEPPED, next),
        Ok(None) => (outcome::STOPPED, (0, 0, 0)),
        Err(()) => (outcome::EDGE, (0, 0, 0)),
    };
    let s = &mut walks.stepped;
    s.ip = ip;
    s.sp = sp;
    s.bp = bp;
    s.outcome = kind;
    0
}

/// Walks the user stack of `tgid` into `ips[first..]`, leaf first, from the
/// registers in the CPU's walk state (none if `!have_regs`); returns the
/// number of frames and sets `FLAG_USER_*` bits in `flags`.
#[inline(always)]
pub fn unwind_user(
    tgid: u32,
    have_regs: bool,
    ips: &mut [u64; 2 * MAX_FRAMES],
    first: usize,
    flags: &mut u32,
) -> usize {
    count(Counter::ManagedUnwinds);
    let Some(walks) = crate::sample::walks() else {
        return 0;
    };
    if !have_regs {
        *flags |= FLAG_USER_STACK_ERROR;
        count(Counter::UserStackError);
        return 0;
    }
    let ip = walks.regs.ip;
    if first >= MAX_FRAMES || ip == 0 {
        return 0;
    }
    // The leaf, on its own: the prolog and epilog replays are checked once.
    ips[first] = ip;
    crossprof_leaf_step(tgid);
    let Some(walks) = crate::sample::walks() else {
        return 1;
    };
    match walks.stepped.outcome {
        outcome::STEPPED => {}
        outcome::EDGE => {
            *flags |= FLAG_USER_LEAF_EDGE;
            count(Counter::ManagedLeafEdge);
            return 1;
        }
        _ => return 1,
    }
    let (ip, sp, bp) = (walks.stepped.ip, walks.stepped.sp, walks.stepped.bp);
    // The callers, under bpf_loop: the verifier checks one step, not 126, which
    // keeps the program's load (verification) time small.
    let walk = &mut walks.managed;
    walk.ip = ip;
    walk.sp = sp;
    walk.bp = bp;
    walk.tgid = tgid;
    walk.next = first as u32 + 1;
    walk.frames = 1;
    walk.done = 0;
    // SAFETY: `next_frame` has the callback signature bpf_loop expects; it
    // finds its state in this CPU's walk state.
    unsafe {
        bpf_loop(
            (MAX_FRAMES - 1) as u32,
            next_frame as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    if walk.done == 0 {
        *flags |= FLAG_USER_TRUNCATED;
    }
    walk.frames as usize
}

/// The walk's state between `bpf_loop` steps (in the CPU's walk state, see
/// `sample::Walks`).
#[repr(C)]
pub(crate) struct Walk {
    ip: u64,
    sp: u64,
    bp: u64,
    tgid: u32,
    /// Index in the scratch `ips` of the next frame.
    next: u32,
    /// Frames written.
    frames: u32,
    /// Set when the walk ended before the frame limit.
    done: u32,
}

/// One caller: records `ip` and steps to its caller. Returns 1 to stop.
#[inline(never)]
extern "C" fn next_frame(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(walks) = crate::sample::walks() else {
        return 1;
    };
    let w = &mut walks.managed;
    let idx = w.next as usize;
    if idx >= 2 * MAX_FRAMES || w.ip == 0 {
        w.done = 1;
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        w.done = 1;
        return 1;
    };
    // SAFETY: this CPU's scratch slot (perf_event programs do not nest on a
    // CPU); idx < 2 * MAX_FRAMES was checked above.
    unsafe { (*scratch).ips[idx] = w.ip };
    w.next += 1;
    w.frames += 1;
    match step(w.tgid, false, w.ip, w.sp, w.bp, &mut read_user) {
        Ok(Some((ip, sp, bp))) => {
            w.ip = ip;
            w.sp = sp;
            w.bp = bp;
            0
        }
        _ => {
            w.done = 1;
            1
        }
    }
}
