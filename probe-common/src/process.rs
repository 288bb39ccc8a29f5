//! What the kernel knows of one process: one entry per process the collector
//! described (`PROCESSES`, by tgid), read once per sample.
//!
//! It replaces three sets that each cost a sample a hash lookup (which
//! process has `.eh_frame` rules and in which slot, which is .NET, which is
//! Go and where its `g` keeps what the kernel reads): at 99 Hz every lookup
//! is a few cold cache lines, ~1 µs on the VMs measured (issue #17). The
//! target set (`TARGETS`) stays apart: the kernel writes it (a target's
//! children join it at fork), and only the collector writes this one (and a
//! command's child its own entry, between fork and exec).

use crate::go::GoOffsets;

/// Processes with an entry.
pub const MAX_PROCESSES: u32 = 8192;

/// [`ProcessEntry::flags`]: its user stacks are walked by `.eh_frame` rules,
/// from `UNWIND_MAPS[unwind_slot]`.
pub const PROCESS_RULES: u32 = 1;
/// [`ProcessEntry::flags`]: a .NET process whose JIT code the kernel has
/// pages of (`CODE_PAGES`).
pub const PROCESS_MANAGED: u32 = 2;
/// [`ProcessEntry::flags`]: a Go process; [`ProcessEntry::go`] holds its
/// `g` layout.
pub const PROCESS_GO: u32 = 4;

/// One process's entry in `PROCESSES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEntry {
    /// `PROCESS_*` bits; an entry with none is removed.
    pub flags: u32,
    /// Its slot in `UNWIND_MAPS` (with [`PROCESS_RULES`]).
    pub unwind_slot: u32,
    /// Its `g` layout (with [`PROCESS_GO`]).
    pub go: GoOffsets,
}
const _: () = assert!(core::mem::size_of::<ProcessEntry>() == 64);

#[cfg(feature = "user")]
// SAFETY: `ProcessEntry` is `repr(C)`, `Copy`, made only of integers, and has
// no padding (4 + 4 + 56 bytes).
unsafe impl aya::Pod for ProcessEntry {}
