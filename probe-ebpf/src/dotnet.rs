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

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, pt_regs},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::HashMap,
    programs::PerfEventContext,
};
use probe_common::{
    Counter,
    dotnet::{
        CODE_FRAMED, CODE_OSR, CodeEntry, CodePage, MAX_CODE_PAGES, MAX_MANAGED_PIDS, PAGE_ENTRIES,
        PAGE_SHIFT, PageKey,
    },
    native::{FLAG_USER_LEAF_EDGE, FLAG_USER_STACK_ERROR, FLAG_USER_TRUNCATED, MAX_FRAMES},
};

use crate::count;

/// Processes whose user stacks are walked here.
#[map]
static MANAGED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_MANAGED_PIDS, 0);

/// The JIT code of those processes, per page.
#[map]
static CODE_PAGES: HashMap<PageKey, CodePage> =
    HashMap::with_max_entries(MAX_CODE_PAGES, BPF_F_NO_PREALLOC);

/// Is `tgid` walked here?
#[inline(always)]
pub fn is_managed(tgid: u32) -> bool {
    // SAFETY: only tested for presence.
    unsafe { MANAGED_PIDS.get(tgid) }.is_some()
}

/// The user registers the walk starts from: the sampled ones in user mode, else
/// those saved at the kernel entry.
#[inline(always)]
fn user_regs(ctx: &PerfEventContext, in_user: bool) -> Option<(u64, u64, u64)> {
    if in_user {
        // SAFETY: the perf_event context is readable directly.
        let regs = unsafe { &(*ctx.ctx).regs };
        return Some((regs.rip, regs.rsp, regs.rbp));
    }
    // SAFETY: the current task is valid for the whole program run, and its user
    // registers sit at the top of its kernel stack.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    // SAFETY: reads through the kernel-read helper, which checks the address.
    unsafe {
        Some((
            bpf_probe_read_kernel(&(*regs).rip).ok()?,
            bpf_probe_read_kernel(&(*regs).rsp).ok()?,
            bpf_probe_read_kernel(&(*regs).rbp).ok()?,
        ))
    }
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
    let page = unsafe { CODE_PAGES.get(key) }?;
    let off = (ip & ((1 << PAGE_SHIFT) - 1)) as u32;
    let count = page.count;
    // The last entry that starts at or before `off` may hold it. A linear scan:
    // the verifier checks it in one pass per entry, where a binary search's
    // precise bounds multiply its states past its limit.
    let mut hit = PAGE_ENTRIES;
    for i in 0..PAGE_ENTRIES {
        if i as u32 >= count || u32::from(page.entries[i].start) > off {
            break;
        }
        hit = i;
    }
    if hit >= PAGE_ENTRIES {
        return None;
    }
    let e: &CodeEntry = &page.entries[hit];
    let start = u32::from(e.start);
    if off >= start + u32::from(e.len) {
        return None;
    }
    Some(Found {
        off: off - start,
        prolog_len: u32::from(e.prolog_len),
        body_cfa: u64::from(e.body_cfa),
        bp_slot: u64::from(e.bp_slot),
        flags: e.flags,
    })
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

/// Walks the user stack of `tgid` into `ips[first..]`, leaf first; returns the
/// number of frames and sets `FLAG_USER_*` bits in `flags`.
#[inline(always)]
pub fn unwind_user(
    ctx: &PerfEventContext,
    tgid: u32,
    in_user: bool,
    ips: &mut [u64; 2 * MAX_FRAMES],
    first: usize,
    flags: &mut u32,
) -> usize {
    count(Counter::ManagedUnwinds);
    let Some((mut ip, mut sp, mut bp)) = user_regs(ctx, in_user) else {
        *flags |= FLAG_USER_STACK_ERROR;
        count(Counter::UserStackError);
        return 0;
    };
    let mut n = 0usize;
    for i in 0..MAX_FRAMES {
        let idx = first + i;
        if idx >= 2 * MAX_FRAMES || ip == 0 {
            return n;
        }
        ips[idx] = ip;
        n = i + 1;
        // A return address is the instruction after the call: look up the call.
        let at = if i == 0 { ip } else { ip - 1 };
        if let Some(e) = find(tgid, at) {
            if i == 0 && (e.off < e.prolog_len || at_epilog(ip)) {
                *flags |= FLAG_USER_LEAF_EDGE;
                count(Counter::ManagedLeafEdge);
                return n;
            }
            if e.flags & CODE_OSR != 0 {
                // The Tier-0 frame under the OSR code: CFA from rbp.
                let cfa = bp + e.body_cfa;
                let (Some(ra), Some(saved_bp)) = (read_user(cfa - 8), read_user(cfa - 16)) else {
                    return n;
                };
                sp = cfa;
                bp = saved_bp;
                ip = ra;
                continue;
            }
            if e.flags & CODE_FRAMED == 0 {
                let cfa = sp + e.body_cfa;
                let Some(ra) = read_user(cfa - 8) else {
                    return n;
                };
                if e.bp_slot != 0 {
                    match read_user(cfa - e.bp_slot) {
                        Some(saved) => bp = saved,
                        None => return n,
                    }
                }
                sp = cfa;
                ip = ra;
                continue;
            }
        }
        // The frame-pointer step: [bp] is the caller's bp, [bp + 8] the return
        // address. A bp below sp or misaligned is not a frame: the walk ends.
        if bp < sp || bp & 7 != 0 {
            return n;
        }
        let (Some(ra), Some(next_bp)) = (read_user(bp + 8), read_user(bp)) else {
            return n;
        };
        sp = bp + 16;
        bp = next_bp;
        ip = ra;
    }
    *flags |= FLAG_USER_TRUNCATED;
    n
}
