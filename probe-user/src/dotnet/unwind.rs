//! Unwinding JIT-compiled code: the shape of each method's frame, decoded from its
//! prolog, handed to the kernel program as per-page tables (`probe_common::dotnet`).
//!
//! Why: on x86-64 the JIT omits the frame pointer in small methods (seen on .NET
//! 8.0.4: Tier-1 `Outer(x) => Hot(x) + 1` starts `push rbx; sub rsp, 0x10`-like,
//! with no `push rbp`), and a frame-pointer walk then skips the caller of such a
//! method (`Main` was missing in ~2/3 of the chain fixture's samples).
//!
//! The prolog the JIT emits on x86-64 (dotnet/runtime `src/coreclr/jit/codegenxarch.cpp`,
//! `genPushCalleeSavedRegisters`, `genAllocLclFrame`, `genEstablishFramePointer`)
//! is, in order: `push rbp` when it keeps a frame pointer, `push` of callee-saved
//! registers (rbx, r12-r15), `sub rsp, N`, then `lea rbp, [rsp+N]` (or, in older
//! JITs, `mov rbp, rsp` right after `push rbp`). The decoder reads exactly those
//! instructions and stops at the first other one:
//! - `push rbp` and a frame-pointer set-up: framed, unwound by `rbp` in its body;
//! - no `push rbp`: frameless, the return address at `sp + pushes + N`;
//! - `push rbp` without a set-up seen: unknown, left to the frame-pointer walk (as
//!   before), never guessed.
//!
//! A leaf sampled in a prolog or epilog is cut after itself by the kernel program
//! (`[truncated: ...]`), since its frame is half built there.
//!
//! The code bytes are read from `/proc/PID/mem` (read-only; nothing is written to
//! the target).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt as _,
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use probe_common::dotnet::{
    CODE_CONT, CODE_FRAMED, CODE_OSR, CodeEntry, CodePage, PAGE_ENTRIES, PAGE_SHIFT, PROLOG_PUSHES,
    PageKey,
};

/// How a method's frame is built, from its prolog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rbp` is the frame pointer in the body (`[rbp]` the caller's `rbp`,
    /// `[rbp + 8]` the return address).
    Framed,
    /// No frame pointer: the return address is at `sp + body_cfa - 8`.
    Frameless,
    /// An on-stack-replacement method: it runs on top of its Tier-0 version's
    /// frame, and `rbp + body_cfa` is that frame's CFA.
    Osr,
}

/// A method's frame, from its prolog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// How its body unwinds.
    pub kind: Kind,
    /// Bytes of prolog.
    pub prolog_len: u8,
    /// Frameless: from `sp` in the body to the CFA. Osr: from `rbp` to the CFA
    /// (0 until [`osr_shape`] fills it in). Framed: from `sp` after the prolog's
    /// pushes and `sub rsp` to the CFA (what an OSR frame above it needs).
    pub body_cfa: u16,
    /// End offsets of the prolog's pushes (0 = none), for a leaf in the prolog.
    pub push_ends: [u8; PROLOG_PUSHES],
    /// End offset of its `sub rsp, N`, or 0.
    pub sub_end: u8,
}

/// Longest prolog read.
pub const PROLOG_BYTES: usize = 64;

/// The frame shape of a method whose code starts with `code`, or `None` when its
/// prolog is not one the decoder knows.
pub fn decode_prolog(code: &[u8]) -> Option<Shape> {
    // OSR: `mov rax, [rbp]; push rax` reuses the Tier-0 frame's saved rbp.
    if code.starts_with(&[0x48, 0x8B, 0x45, 0x00, 0x50]) {
        let lea = find_lea_rbp(code)?;
        return Some(Shape {
            kind: Kind::Osr,
            prolog_len: u8::try_from(lea).ok()?,
            body_cfa: 0,
            push_ends: [0; PROLOG_PUSHES],
            sub_end: 0,
        });
    }
    let mut at = 0usize;
    let mut push_ends = [0u8; PROLOG_PUSHES];
    let mut sub_end = 0u8;
    let mut pushes = 0u32;
    let mut sub = 0u32;
    let mut pushed_rbp = false;
    let byte = |i: usize| code.get(i).copied();
    loop {
        let b0 = byte(at);
        let b1 = byte(at + 1);
        let b2 = byte(at + 2);
        match (b0, b1, b2) {
            // push rbp, first
            (Some(0x55), ..) if pushes == 0 && sub == 0 => {
                pushed_rbp = true;
                pushes += 1;
                at += 1;
            }
            // push of another register (callee-saved, or rax as an 8-byte
            // allocation that keeps the stack aligned)
            (Some(0x50..=0x57), ..) if sub == 0 && b0 != Some(0x55) => {
                pushes += 1;
                at += 1;
            }
            // push r8..r15
            (Some(0x41), Some(0x50..=0x57), _) if sub == 0 => {
                pushes += 1;
                at += 2;
            }
            // sub rsp, imm8
            (Some(0x48), Some(0x83), Some(0xEC)) if sub == 0 => {
                sub = u32::from(byte(at + 3)?);
                at += 4;
            }
            // sub rsp, imm32
            (Some(0x48), Some(0x81), Some(0xEC)) if sub == 0 => {
                let imm = code.get(at + 3..at + 7)?;
                sub = u32::from_le_bytes(imm.try_into().ok()?);
                at += 7;
            }
            // vzeroupper (emitted in prologs of methods that use AVX)
            (Some(0xC5), Some(0xF8), Some(0x77)) => at += 3,
            // mov rbp, rsp (both encodings), right after push rbp
            (Some(0x48), Some(0x8B), Some(0xEC)) | (Some(0x48), Some(0x89), Some(0xE5))
                if pushed_rbp =>
            {
                at += 3;
                return framed(at, frame_bytes(pushes, sub)?, push_ends, sub_end);
            }
            // lea rbp, [rsp + imm8 / imm32]
            (Some(0x48), Some(0x8D), Some(0x6C | 0xAC))
                if pushed_rbp && byte(at + 3) == Some(0x24) =>
            {
                at += if b2 == Some(0x6C) { 5 } else { 8 };
                code.get(at - 1)?;
                return framed(at, frame_bytes(pushes, sub)?, push_ends, sub_end);
            }
            _ => break,
        }
        if at > PROLOG_BYTES {
            return None;
        }
        // Where each push and the sub end, for a leaf sampled in the prolog.
        let done = u8::try_from(at).ok()?;
        if sub != 0 && sub_end == 0 {
            sub_end = done;
        } else if sub == 0 && pushes as usize > push_ends.iter().filter(|&&e| e != 0).count() {
            *push_ends.get_mut(pushes as usize - 1)? = done;
        }
    }
    // rbp saved but never set up, or nothing recognised at all (OSR variants,
    // stack probes, hand-written stubs): not guessed at.
    if pushed_rbp || at == 0 {
        return None;
    }
    Some(Shape {
        kind: Kind::Frameless,
        prolog_len: u8::try_from(at).ok()?,
        body_cfa: u16::try_from(frame_bytes(pushes, sub)?).ok()?,
        push_ends,
        sub_end,
    })
}

/// The CFA's distance from RSP in the body: the pushes, the `sub` (up to
/// `u32::MAX` from a hostile `sub rsp, imm32`) and the return address.
fn frame_bytes(pushes: u32, sub: u32) -> Option<u32> {
    pushes.checked_mul(8)?.checked_add(sub)?.checked_add(8)
}

fn framed(at: usize, frame: u32, push_ends: [u8; PROLOG_PUSHES], sub_end: u8) -> Option<Shape> {
    Some(Shape {
        kind: Kind::Framed,
        prolog_len: u8::try_from(at).ok()?,
        body_cfa: u16::try_from(frame).ok()?,
        push_ends,
        sub_end,
    })
}

/// The end of the first frame-pointer set-up in `code` (`lea rbp, [rsp + imm]`
/// or `mov rbp, rsp`), if any.
fn find_lea_rbp(code: &[u8]) -> Option<usize> {
    (0..code.len().saturating_sub(2)).find_map(|i| match &code[i..] {
        [0x48, 0x8D, 0x6C, 0x24, _, ..] => Some(i + 5),
        [0x48, 0x8D, 0xAC, 0x24, _, _, _, _, ..] => Some(i + 8),
        [0x48, 0x8B, 0xEC, ..] | [0x48, 0x89, 0xE5, ..] => Some(i + 3),
        _ => None,
    })
}

/// An OSR method's shape, given the frame size of the Tier-0 code it replaces
/// (`Shape::body_cfa` of that code's framed shape).
///
/// Layout (dotnet/runtime `docs/design/features/OnStackReplacement.md`, and the
/// x64 OSR prolog seen on 8.0.4: `mov rax, [rbp]; push rax; sub rsp, N; ...;
/// lea rbp, [rsp + N]`): the OSR method is entered with `rsp` 8 below the Tier-0
/// frame's `rsp`, as if called; it pushes the caller's `rbp` (read from the Tier-0
/// frame) and points `rbp` at it. So `rbp + 16` is the Tier-0 `rsp`, and the
/// Tier-0 frame's CFA — where the real return address is — is `tier0_frame`
/// above that.
pub fn osr_shape(osr: Shape, tier0_frame: u16) -> Option<Shape> {
    Some(Shape {
        body_cfa: tier0_frame.checked_add(16)?,
        ..osr
    })
}

/// The per-page tables of one process, as last sent to the kernel.
#[derive(Debug, Default)]
pub struct CodeTable {
    pages: HashMap<u64, CodePage>,
    /// Methods not listed because their page was full (they unwind by `rbp`).
    pub overflowed: u64,
}

impl CodeTable {
    /// Lists the method at `[start, end)` with `shape`; returns the pages changed.
    pub fn add(&mut self, start: u64, end: u64, shape: Shape) -> Vec<u64> {
        let mut changed = Vec::new();
        let page_size = 1u64 << PAGE_SHIFT;
        let mut page = start >> PAGE_SHIFT;
        while page << PAGE_SHIFT < end {
            let page_start = page << PAGE_SHIFT;
            let from = start.max(page_start);
            let to = end.min(page_start + page_size);
            let prolog_end = start + u64::from(shape.prolog_len);
            // Prolog offsets are from the method's start; in a later page the
            // prolog is over (a method's prolog is far shorter than a page).
            let first_page = from == start;
            let entry = CodeEntry {
                start: (from - page_start) as u16,
                len: (to - from) as u16,
                body_cfa: shape.body_cfa,
                bp_slot: 0,
                prolog_len: prolog_end.saturating_sub(from).min(255) as u8,
                sub_end: if first_page { shape.sub_end } else { 0 },
                pad: 0,
                push_ends: if first_page {
                    shape.push_ends
                } else {
                    [0; PROLOG_PUSHES]
                },
                pad2: 0,
                flags: match shape.kind {
                    Kind::Framed => CODE_FRAMED,
                    Kind::Frameless => 0,
                    Kind::Osr => CODE_OSR,
                } | if first_page { 0 } else { CODE_CONT },
            };
            let table = self.pages.entry(page).or_default();
            if insert(table, entry) {
                changed.push(page);
            } else {
                self.overflowed += 1;
            }
            page += 1;
        }
        changed
    }

    /// The table of `page`.
    pub fn page(&self, page: u64) -> Option<&CodePage> {
        self.pages.get(&page)
    }

    /// Every page listed.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.keys().copied()
    }
}

/// Inserts `e` in order, replacing entries it overlaps (code memory reused).
/// Returns false when the page is full.
fn insert(page: &mut CodePage, e: CodeEntry) -> bool {
    let n = page.count as usize;
    let end = |x: &CodeEntry| u32::from(x.start) + u32::from(x.len);
    let mut kept: Vec<CodeEntry> = page.entries[..n]
        .iter()
        .copied()
        .filter(|x| end(x) <= u32::from(e.start) || u32::from(x.start) >= end(&e))
        .collect();
    if kept.len() >= PAGE_ENTRIES {
        return false;
    }
    let at = kept.partition_point(|x| x.start < e.start);
    kept.insert(at, e);
    page.entries = [CodeEntry::default(); PAGE_ENTRIES];
    page.entries[..kept.len()].copy_from_slice(&kept);
    page.count = kept.len() as u32;
    page.index_slots();
    true
}

/// Why the kernel's tables could not be updated.
#[derive(Debug, thiserror::Error)]
#[error("cannot update the kernel's JIT code table: {0}")]
pub struct TableError(#[from] MapError);

/// The kernel's `CODE_PAGES`, and the managed mark of each process's
/// `PROCESSES` entry.
pub struct KernelTables {
    processes: crate::process::ProcessEntries,
    pages: BpfHashMap<MapData, PageKey, CodePage>,
    /// Pages written, per process, to remove them when it is released.
    written: HashMap<u32, HashSet<u64>>,
    /// Pages that did not fit (the map is full): those methods unwind by `rbp`.
    pub full: u64,
}

impl KernelTables {
    /// Wraps the two maps.
    pub fn new(
        processes: crate::process::ProcessEntries,
        pages: BpfHashMap<MapData, PageKey, CodePage>,
    ) -> Self {
        Self {
            processes,
            pages,
            written: HashMap::new(),
            full: 0,
        }
    }

    /// Writes `changed` pages of `pid`'s `table`, and walks `pid`'s stacks with
    /// them from now on.
    pub fn write(
        &mut self,
        pid: u32,
        table: &CodeTable,
        changed: &[u64],
    ) -> Result<(), TableError> {
        let written = self.written.entry(pid).or_default();
        for &page in changed {
            let Some(value) = table.page(page) else {
                continue;
            };
            let key = PageKey { pid, pad: 0, page };
            match self.pages.insert(key, value, 0) {
                Ok(()) => {
                    written.insert(page);
                }
                Err(_) => self.full += 1,
            }
        }
        if !written.is_empty() {
            self.processes.set_managed(pid, true)?;
        }
        Ok(())
    }

    /// Forgets `pid`: its stacks are walked by `bpf_get_stack` again and its pages
    /// are freed.
    pub fn release(&mut self, pid: u32) {
        let _ = self.processes.set_managed(pid, false);
        for page in self.written.remove(&pid).unwrap_or_default() {
            let _ = self.pages.remove(&PageKey { pid, pad: 0, page });
        }
    }
}

/// Reads prologs from a process's memory (by default: none, nothing read).
#[derive(Debug, Default)]
pub struct CodeReader {
    mem: Option<File>,
}

impl CodeReader {
    /// Opens `/proc/PID/mem` for reading (nothing is ever written).
    pub fn open(pid: u32) -> Self {
        Self {
            mem: File::open(format!("/proc/{pid}/mem")).ok(),
        }
    }

    /// The first bytes of the code at `start`, at most `len`.
    pub fn prolog(&self, start: u64, len: u64) -> Option<Vec<u8>> {
        let mem = self.mem.as_ref()?;
        let mut buf = vec![0u8; (len as usize).min(PROLOG_BYTES)];
        let n = mem.read_at(&mut buf, start).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_prologs_the_jit_emits() {
        // Seen on 8.0.4 (tests/fixtures/dotnet/chain.cs), read from the process:
        // Tier-0 Main: push rbp; sub rsp, 0x80; vzeroupper; lea rbp, [rsp+0x80]
        let main_tier0 = "55 48 81 ec 80 00 00 00 c5 f8 77 48 8d ac 24 80 00 00 00 33 c0";
        assert_eq!(
            decode_prolog(&hex(main_tier0)),
            Some(Shape {
                kind: Kind::Framed,
                prolog_len: 19,
                body_cfa: 8 + 0x80 + 8,
                push_ends: [1, 0, 0, 0, 0, 0, 0],
                sub_end: 8,
            })
        );
        // Tier-1 Outer: push rax (8-byte allocation); call [rip+..]: frameless.
        let outer_tier1 = "50 ff 15 d1 51 09 00 48 ff c0 48 83 c4 08 c3";
        assert_eq!(
            decode_prolog(&hex(outer_tier1)),
            Some(Shape {
                kind: Kind::Frameless,
                prolog_len: 1,
                body_cfa: 16,
                push_ends: [1, 0, 0, 0, 0, 0, 0],
                sub_end: 0,
            })
        );
        // Tier-1 Hot: push rbp; mov rbp, rsp.
        let hot_tier1 = "55 48 8b ec 33 c0 48 b9 2d 7f 95 4c";
        assert_eq!(
            decode_prolog(&hex(hot_tier1)).map(|s| s.kind),
            Some(Kind::Framed)
        );
        // OSR Main: mov rax,[rbp]; push rax; sub rsp,0x20; 3 x mov [rsp+..], reg;
        // vzeroupper; lea rbp, [rsp+0x20].
        let main_osr = "48 8b 45 00 50 48 83 ec 20 4c 89 bc 24 a8 00 00 00 4c 89 b4 24 a0 00 00 00 \
                        48 89 9c 24 98 00 00 00 c5 f8 77 48 8d 6c 24 20 48 8b 5d 50";
        let osr = decode_prolog(&hex(main_osr)).unwrap();
        assert_eq!((osr.kind, osr.prolog_len), (Kind::Osr, 41));
        assert_eq!(osr_shape(osr, 0x90).map(|s| s.body_cfa), Some(0xA0));
        // OSR Hot: mov rax,[rbp]; push rax; mov rbp, rsp.
        let hot_osr = decode_prolog(&hex("48 8b 45 00 50 48 8b ec 48 8b 7d 20")).unwrap();
        assert_eq!((hot_osr.kind, hot_osr.prolog_len), (Kind::Osr, 8));
        // push rbx; push r14; sub rsp, 0x28: frameless, 8+8+0x28 below the RA.
        let frameless = decode_prolog(&hex("53 41 56 48 83 ec 28 48 8b df")).unwrap();
        assert_eq!(frameless.body_cfa, 8 + 8 + 0x28 + 8);
        assert_eq!(frameless.push_ends, [1, 3, 0, 0, 0, 0, 0]);
        assert_eq!((frameless.sub_end, frameless.prolog_len), (7, 7));
        // Nothing recognised, rbp saved but never set up, or cut short: unknown.
        assert_eq!(decode_prolog(&hex("48 8b c7 c3")), None);
        assert_eq!(decode_prolog(&hex("55 53 48 8b c7")), None);
        assert_eq!(decode_prolog(&hex("48 81 ec 00")), None);
        assert_eq!(decode_prolog(&hex("55 48 8d ac 24 80 00")), None);
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn pages_list_methods_in_order_and_split_at_page_ends() {
        let mut t = CodeTable::default();
        let shape = Shape {
            kind: Kind::Frameless,
            prolog_len: 5,
            body_cfa: 24,
            push_ends: [1, 0, 0, 0, 0, 0, 0],
            sub_end: 5,
        };
        assert_eq!(t.add(0x10_0100, 0x10_0180, shape), vec![0x100]);
        assert_eq!(t.add(0x10_0000, 0x10_0040, shape), vec![0x100]);
        // Crosses into the next page: its prolog is cut in two.
        assert_eq!(t.add(0x10_0ffe, 0x10_1010, shape), vec![0x100, 0x101]);
        let p = t.page(0x100).unwrap();
        let starts: Vec<u16> = p.entries[..p.count as usize]
            .iter()
            .map(|e| e.start)
            .collect();
        assert_eq!(starts, vec![0x000, 0x100, 0xffe]);
        assert_eq!(p.entries[2].len, 2);
        // Slot index: the last entry starting before each 16-byte slot ends.
        assert_eq!(p.slots[0], 0);
        assert_eq!(p.slots[0x0f], 0, "0x0f0..0x100: still the first entry's");
        assert_eq!(p.slots[0x10], 1);
        assert_eq!(p.slots[0xff], 2);
        let next = t.page(0x101).unwrap();
        assert_eq!(next.count, 1);
        assert_eq!((next.entries[0].start, next.entries[0].len), (0, 0x10));
        assert_eq!(next.entries[0].prolog_len, 3, "rest of the prolog");
        assert_eq!(next.entries[0].flags & CODE_CONT, CODE_CONT);
        assert_eq!(p.entries[2].push_ends[0], 1);
        // Code memory reused: the new method replaces what it overlaps.
        t.add(0x10_0120, 0x10_0200, shape);
        let p = t.page(0x100).unwrap();
        let starts: Vec<u16> = p.entries[..p.count as usize]
            .iter()
            .map(|e| e.start)
            .collect();
        assert_eq!(starts, vec![0x000, 0x120, 0xffe]);
    }

    #[test]
    fn a_full_page_refuses_more_methods() {
        let mut t = CodeTable::default();
        let shape = Shape {
            kind: Kind::Framed,
            prolog_len: 4,
            body_cfa: 0,
            push_ends: [1, 0, 0, 0, 0, 0, 0],
            sub_end: 0,
        };
        for i in 0..PAGE_ENTRIES as u64 {
            assert_eq!(t.add(0x2000 + i * 16, 0x2000 + i * 16 + 16, shape).len(), 1);
        }
        assert!(
            t.add(0x2000 + 64 * 16, 0x2000 + 64 * 16 + 8, shape)
                .is_empty()
        );
        assert_eq!(t.overflowed, 1);
    }
}
