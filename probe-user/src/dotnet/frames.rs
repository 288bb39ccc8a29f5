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
    /// The thread that decodes them (started with the first assembly).
    decoder: Option<Decoder>,
    /// Notified by it after each assembly.
    decoded: Arc<tokio::sync::Notify>,
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

    /// Notified whenever an assembly's precompiled methods are decoded: the
    /// event loop then hands them to the kernel at once (not at the next
    /// tick).
    pub fn precompiled_read(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.decoded)
    }

    /// Takes in the assemblies decoded since the last call.
    pub(super) fn take_decoded(&mut self) {
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        while let Some((module, methods)) = decoder.take() {
            self.precompiled.insert(module, methods);
        }
    }

    /// Asks for the precompiled methods of assembly `module`, read through
    /// `file` (the handle opened when its mapping was first seen), to be
    /// decoded off the event loop: reading and decoding CoreLib (12.7 MB)
    /// took 50 ms, in which no maps were re-read and no rules placed (a Go
    /// library loaded by a P/Invoke then was walked without its rules for as
    /// long). Once per file; the answer comes through [`Self::take_decoded`].
    pub(super) fn decode_later(
        &mut self,
        module: ModuleId,
        open: impl FnOnce() -> Option<std::fs::File>,
    ) {
        let notify = Arc::clone(&self.decoded);
        // Started with the first assembly; one that cannot start leaves
        // every assembly without precompiled methods (walked by frame
        // pointers), as an unreadable one.
        let decoder = self.decoder.get_or_insert_with(|| {
            Decoder::spawn(
                "crossprof-r2r",
                "reads ReadyToRun code",
                notify,
                |_: &ModuleId, file: std::fs::File| decode(&file),
            )
        });
        if decoder.is_pending(&module) {
            return;
        }
        // Unreadable, or the thread is gone (it panicked): none.
        if !open().is_some_and(|file| decoder.ask(module, file)) {
            self.precompiled.insert(module, None);
        }
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

/// The thread that reads and decodes assemblies' precompiled methods (their
/// frame shapes, for the kernel's walk), in the order asked (see
/// [`crate::worker`]).
type Decoder = crate::worker::Worker<ModuleId, std::fs::File, Option<Arc<[super::Precompiled]>>>;

/// The precompiled methods of the assembly open as `file`, read bounded by
/// [`super::MAX_ASSEMBLY`] (never through its path again, which the file's
/// owner may since have made a FIFO, an open that waits for ever, or a link
/// to an endless file); `None` for IL only or unreadable (its code is JIT'd).
fn decode(file: &std::fs::File) -> Option<Arc<[super::Precompiled]>> {
    let data = crate::files::read_at_most(file, 0, super::MAX_ASSEMBLY).ok()?;
    let image = super::r2r::R2rImage::parse(&data).ok()?;
    Some(super::precompiled_shapes(&image, &data).into())
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
