//! The kernel's entry for each process crossprof describes to it
//! (`PROCESSES`, see `probe_common::process`): whether its stacks are walked
//! by `.eh_frame` rules and from which slot, whether it is .NET, whether it is
//! Go and where its `g` keeps what the kernel reads.
//!
//! Three owners write parts of one entry — the unwind tables
//! ([`crate::native::unwind`]), the .NET code tables ([`crate::dotnet::unwind`])
//! and the Go poll ([`crate::native::process`]) — so each entry is changed
//! here only, by reading the whole entry, changing its part and writing the
//! whole entry back. A command's child writes its own Go entry before `exec`
//! ([`crate::sampler::register_self_in_child`]); an entry this side never
//! wrote is read from the kernel first, so that part is kept.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData, MapError};
use probe_common::{
    go::GoOffsets,
    process::{PROCESS_GO, PROCESS_MANAGED, PROCESS_RULES, ProcessEntry},
};

/// The `PROCESSES` map, shared (cheap to clone) by its three writers.
#[derive(Clone)]
pub struct ProcessEntries(Arc<Mutex<Inner>>);

struct Inner {
    map: BpfHashMap<MapData, u32, ProcessEntry>,
    /// What this side last wrote, per process.
    written: HashMap<u32, ProcessEntry>,
    /// Raised at the first Go or .NET entry: the sampler's runtime walks
    /// are wanted (see `sampler::RuntimeWalks`).
    runtimes_wanted: Arc<AtomicBool>,
}

impl std::fmt::Debug for ProcessEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessEntries").finish_non_exhaustive()
    }
}

impl ProcessEntries {
    /// Over the loaded `PROCESSES` map; `runtimes_wanted` is raised when a
    /// Go or .NET entry is first written.
    pub fn new(
        map: BpfHashMap<MapData, u32, ProcessEntry>,
        runtimes_wanted: Arc<AtomicBool>,
    ) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            map,
            written: HashMap::new(),
            runtimes_wanted,
        })))
    }

    /// `pid`'s stacks are walked by rules from `UNWIND_MAPS[slot]` (or no
    /// longer, with `None`).
    pub fn set_rules(&self, pid: u32, slot: Option<u32>) -> Result<(), MapError> {
        self.update(pid, |e| {
            e.flags = with_flag(e.flags, PROCESS_RULES, slot.is_some());
            e.unwind_slot = slot.unwrap_or(0);
        })
    }

    /// `pid` is a .NET process whose JIT code pages are in the kernel (or no
    /// longer).
    pub fn set_managed(&self, pid: u32, managed: bool) -> Result<(), MapError> {
        self.update(pid, |e| {
            e.flags = with_flag(e.flags, PROCESS_MANAGED, managed);
        })
    }

    /// `pid` is a Go process whose `g` has the layout `offsets` (or no
    /// longer, with `None`).
    pub fn set_go(&self, pid: u32, offsets: Option<GoOffsets>) -> Result<(), MapError> {
        self.update(pid, |e| {
            e.flags = with_flag(e.flags, PROCESS_GO, offsets.is_some());
            e.go = offsets.unwrap_or_default();
        })
    }

    /// The map's file descriptor, for a child to write its own entry
    /// between fork and exec.
    pub fn fd(&self) -> RawFd {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.map.map().fd().as_fd().as_raw_fd()
    }

    /// Reads `pid`'s entry (ours, else the kernel's), changes it with
    /// `change` and writes it back; an entry left with no flag is removed.
    fn update(&self, pid: u32, change: impl FnOnce(&mut ProcessEntry)) -> Result<(), MapError> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = match inner.written.get(&pid) {
            Some(&e) => Some(e),
            None => inner.map.get(&pid, 0).ok(),
        };
        let mut entry = before.unwrap_or_default();
        change(&mut entry);
        if entry.flags == 0 {
            inner.written.remove(&pid);
            if before.is_some() {
                // Already gone is fine (the process was forgotten twice).
                let _ = inner.map.remove(&pid);
            }
            return Ok(());
        }
        if entry.flags & (PROCESS_GO | PROCESS_MANAGED) != 0 {
            inner.runtimes_wanted.store(true, Ordering::Relaxed);
        }
        if before != Some(entry) {
            inner.map.insert(pid, entry, 0)?;
        }
        inner.written.insert(pid, entry);
        Ok(())
    }
}

/// The entry a Go child writes for itself before `exec`.
pub fn go_entry(offsets: GoOffsets) -> ProcessEntry {
    ProcessEntry {
        flags: PROCESS_GO,
        unwind_slot: 0,
        go: offsets,
    }
}

/// `flags` with `flag` set or cleared.
fn with_flag(flags: u32, flag: u32, on: bool) -> u32 {
    if on { flags | flag } else { flags & !flag }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_set_and_cleared_alone() {
        let f = with_flag(0, PROCESS_RULES, true);
        let f = with_flag(f, PROCESS_GO, true);
        assert_eq!(f, PROCESS_RULES | PROCESS_GO);
        assert_eq!(with_flag(f, PROCESS_RULES, false), PROCESS_GO);
        assert_eq!(with_flag(f, PROCESS_MANAGED, false), f);
    }
}
