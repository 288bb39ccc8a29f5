//! .NET: how the kernel unwinds JIT-compiled code.
//!
//! The JIT omits the frame pointer in small methods (seen on .NET 8: a Tier-1
//! method with one call and no loop gets no `rbp` frame), and frame-pointer
//! unwinding then skips the caller of such a method. For the processes marked
//! managed in `PROCESSES` ([`crate::process`]), the kernel program walks the user stack itself and consults
//! `CODE_PAGES`: per 4 KiB page of JIT code, the methods that lie in it and how to
//! unwind each (a frameless method's frame size from its prolog, decoded by the
//! collector). Frames in no listed method are unwound by `rbp` as before.

/// Bytes of a code page.
pub const PAGE_SHIFT: u32 = 12;
/// Methods (or parts of methods) one page can list.
pub const PAGE_ENTRIES: usize = 64;
/// Pages of JIT code the kernel knows of, over all processes.
pub const MAX_CODE_PAGES: u32 = 65536;

/// `CodeEntry::flags`: the method keeps `rbp` as its frame pointer in its body.
pub const CODE_FRAMED: u8 = 1 << 0;
/// `CodeEntry::flags`: an on-stack-replacement method, whose body runs on top of
/// its Tier-0 frame: the CFA of that frame is `rbp + body_cfa`, with the return
/// address at CFA - 8 and the caller's `rbp` at CFA - 16.
pub const CODE_OSR: u8 = 1 << 1;
/// `CodeEntry::flags`: the method started in an earlier page (prolog offsets are
/// not from this entry's start).
pub const CODE_CONT: u8 = 1 << 2;

/// Key of `CODE_PAGES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// Process id (tgid).
    pub pid: u32,
    /// Always 0.
    pub pad: u32,
    /// Address >> [`PAGE_SHIFT`].
    pub page: u64,
}
const _: () = assert!(core::mem::size_of::<PageKey>() == 16);

/// One method's part of a page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeEntry {
    /// Where it starts in the page.
    pub start: u16,
    /// Bytes of it in the page (to the page's end at most).
    pub len: u16,
    /// Frameless body: the return address is at `sp + body_cfa - 8`. OSR body:
    /// at `rbp + body_cfa - 8`.
    pub body_cfa: u16,
    /// Frameless body that saved `rbp`: the caller's `rbp` is at
    /// `sp + body_cfa - bp_slot`; 0 when `rbp` is untouched.
    pub bp_slot: u16,
    /// Prolog bytes left from `start` (0 when the prolog is in an earlier page).
    /// A leaf sampled there cannot be unwound by its body's rule.
    pub prolog_len: u8,
    /// `CODE_*` bits.
    pub flags: u8,
    /// Offset from the method's start (0 when the prolog is in an earlier
    /// page) of the end of its `sub rsp, N`, or 0 if none: a leaf in the prolog at
    /// or after it has the whole frame below its CFA.
    pub sub_end: u8,
    /// Always 0.
    pub pad: u8,
    /// Offsets from the method's start of the end of each `push` in its prolog
    /// (0 = none): a leaf in the prolog has 8 bytes below its CFA per push done.
    pub push_ends: [u8; PROLOG_PUSHES],
    /// Always 0.
    pub pad2: u8,
}
const _: () = assert!(core::mem::size_of::<CodeEntry>() == 20);

/// Pushes of a prolog the kernel can replay.
pub const PROLOG_PUSHES: usize = 7;

/// Bytes of code per [`CodePage::slots`] element.
pub const SLOT_SHIFT: u32 = 4;
/// [`CodePage::slots`] elements: one per 16 bytes of the page.
pub const PAGE_SLOTS: usize = 1 << (PAGE_SHIFT - SLOT_SHIFT);
/// [`CodePage::slots`]: no entry starts in or before the slot.
pub const NO_ENTRY: u8 = 0xFF;

/// The methods of one page, sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodePage {
    /// Entries used.
    pub count: u32,
    /// Always 0.
    pub pad: u32,
    /// `entries[..count]`, sorted by `start`, not overlapping.
    pub entries: [CodeEntry; PAGE_ENTRIES],
    /// Per 16 bytes of the page, the last entry that starts before the slot's
    /// end ([`NO_ENTRY`] if none): the entry holding an address is that one or
    /// the one before it, found without a search (the kernel program has no
    /// loop to spare).
    pub slots: [u8; PAGE_SLOTS],
}
const _: () = assert!(core::mem::size_of::<CodePage>() == 8 + 20 * PAGE_ENTRIES + PAGE_SLOTS);

impl Default for CodePage {
    fn default() -> Self {
        Self {
            count: 0,
            pad: 0,
            entries: [CodeEntry::default(); PAGE_ENTRIES],
            slots: [NO_ENTRY; PAGE_SLOTS],
        }
    }
}

impl CodePage {
    /// Recomputes [`CodePage::slots`] from the entries.
    pub fn index_slots(&mut self) {
        let n = (self.count as usize).min(PAGE_ENTRIES);
        let mut e = 0usize;
        let mut last = NO_ENTRY;
        for (slot, value) in self.slots.iter_mut().enumerate() {
            let slot_end = ((slot + 1) << SLOT_SHIFT) as u32;
            while e < n && u32::from(self.entries[e].start) < slot_end {
                last = e as u8;
                e += 1;
            }
            *value = last;
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, no padding beyond the explicit `pad` fields.
unsafe impl aya::Pod for PageKey {}
#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for CodePage {}
