//! What the process table keeps for its .NET processes (a
//! [`DotnetTable`]): the names of their managed frames, interned; each
//! assembly's precompiled code, decoded once; when to start following a
//! process. And how a .NET process is found in its maps and let go of when
//! it exits. The steps that use them are in [`super::table`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::DotnetProcess;
use crate::{
    frame::{FrameRef, Interner, ModuleId, Source},
    native::maps::MapEntry,
    replay::source::ProcSource,
};

/// A managed method's name, and the source line of the sampled address in it
/// when its assembly has a PDB (a method has a frame per line sampled).
type ManagedFrame = (Arc<str>, Option<Source>);

/// What the process table keeps for its .NET processes.
#[derive(Debug, Default)]
pub struct DotnetTable {
    /// A .NET process's precompiled code is given to the kernel, and its JIT
    /// events followed for source lines, once it is this old (the agent:
    /// short-lived processes are not worth the cost; `record`: 0).
    pub precompiled_after: Duration,
    /// Follow .NET processes' JIT events for source lines (pprof output).
    pub lines: bool,
    /// Name .NET processes' JIT code through the runtime's perf map, which
    /// crossprof asks it to write (`--dotnet-perf-map`), not from its memory.
    pub perf_map: bool,
    /// Start no GC event session for .NET processes (`--no-dotnet-gc`).
    pub no_gc: bool,
    /// Per assembly file, its precompiled methods (`None`: IL only, or
    /// unreadable), decoded once.
    pub(super) precompiled: HashMap<ModuleId, Option<Arc<[super::Precompiled]>>>,
    /// The managed frames named so far.
    managed: Interner<ManagedFrame>,
}

impl DotnetTable {
    /// How a .NET process found is followed: its JIT events for source
    /// lines from the moment it is found (`record`), or once it is
    /// [`DotnetTable::precompiled_after`] old (the agent); its JIT code named
    /// from memory or through a perf map.
    pub(crate) fn follow(&self) -> super::Follow {
        super::Follow {
            lines: self.lines && self.precompiled_after.is_zero(),
            perf_map: self.perf_map,
            no_gc: self.no_gc,
        }
    }

    /// The frame of JIT code at `addr` of .NET process `dn` (in anonymous
    /// memory, or in no mapping), named by the runtime's perf map (re-read,
    /// rate-limited, when `addr` is not known yet). `None`: not a method.
    pub(crate) fn jit_frame(&mut self, dn: &mut DotnetProcess, addr: u64) -> Option<FrameRef> {
        let name = dn.lookup(addr)?.clone();
        let source = dn.source(addr);
        Some(FrameRef::Managed(self.managed.intern(&(name, source))))
    }

    /// The frame of ReadyToRun code at `addr` of .NET process `dn` (in an
    /// assembly's mapping), named by its jitdump. `None`: not named there
    /// (shown as `[Assembly.dll+0xOFFSET]`, never read as ELF).
    pub(crate) fn precompiled_frame(
        &mut self,
        dn: &mut DotnetProcess,
        addr: u64,
    ) -> Option<FrameRef> {
        let name = dn.lookup_precompiled(addr)?.clone();
        Some(FrameRef::Managed(self.managed.intern(&(name, None))))
    }

    /// The name behind a [`FrameRef::Managed`] id.
    pub fn name(&self, id: u32) -> &str {
        self.managed.item(id).map_or("[unknown]", |(name, _)| name)
    }

    /// The source line of a [`FrameRef::Managed`] id, if known.
    pub fn source(&self, id: u32) -> Option<&Source> {
        self.managed.item(id)?.1.as_ref()
    }
}

/// A process's maps were read (`entries`): the .NET state `slot` of process
/// `pid` is filled if they map a .NET runtime (and it was none before, nor
/// ran one that exited, `was`), followed as `follow` says; its files read as
/// `source` reads.
pub(crate) fn maps_read(
    slot: &mut Option<DotnetProcess>,
    was: bool,
    pid: u32,
    entries: &[MapEntry],
    follow: super::Follow,
    source: &ProcSource,
) {
    if slot.is_some() || was {
        return;
    }
    let exec = entries.iter().filter(|e| e.is_exec());
    if let Some(clr) = super::detect(exec.map(|e| e.path.as_str())) {
        *slot = Some(DotnetProcess::attach(pid, clr, follow, source));
    }
}

/// Its process exited: the .NET state in `slot` (code tables, perf map, open
/// files, event session) goes now, what names its last frames stays.
/// Whether there was one.
pub(crate) fn retire(slot: &mut Option<DotnetProcess>) -> bool {
    slot.take().map(|mut dn| dn.release()).is_some()
}
