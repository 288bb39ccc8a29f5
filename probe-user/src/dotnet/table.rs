//! The process table's .NET part: the steps the session takes for its .NET
//! processes — giving the kernel their frame shapes (JIT methods as they
//! come, each assembly's precompiled code once), waiting for a perf map,
//! letting go at the end — and the names of their managed frames. What the
//! table keeps for them is a [`DotnetTable`](super::frames::DotnetTable),
//! each process's own state a [`DotnetProcess`](super::DotnetProcess); the
//! Go part of the table is [`crate::go::table`].

use crate::{
    frame::Source,
    native::process::{ProcessTable, Target},
};

impl ProcessTable {
    /// The name behind a [`FrameRef::Managed`](crate::frame::FrameRef::Managed) id.
    pub fn managed_name(&self, id: u32) -> &str {
        self.dotnet.name(id)
    }

    /// The source line of a [`FrameRef::Managed`](crate::frame::FrameRef::Managed) id, if known.
    pub fn managed_source(&self, id: u32) -> Option<&Source> {
        self.dotnet.source(id)
    }

    /// Does any process run a .NET runtime (found in its maps)?
    pub fn runs_dotnet(&self) -> bool {
        self.procs.values().any(|p| p.dotnet.is_some())
    }

    /// Is one of `pids` a .NET process whose perf map is still being asked
    /// for (see [`super::DotnetProcess::perf_map_settled`])?
    pub fn dotnet_pending(&mut self, pids: &[u32]) -> bool {
        pids.iter().any(|pid| {
            self.procs
                .get_mut(pid)
                .and_then(|p| p.dotnet.as_mut())
                .is_some_and(|d| !d.perf_map_settled())
        })
    }

    /// Gives the kernel the frame shapes of every .NET process's new JIT
    /// methods, and of each assembly's precompiled code once. The first
    /// failure is returned (the rest are alike).
    pub fn poll_dotnet_unwind(
        &mut self,
        tables: &mut super::unwind::KernelTables,
    ) -> Result<(), super::unwind::TableError> {
        let mut result = Ok(());
        let (modules, table) = (&self.modules, &mut self.dotnet);
        table.take_decoded();
        for p in self.procs.values_mut() {
            let Some(dn) = p.dotnet.as_mut() else {
                continue;
            };
            let mut r = dn.poll_unwind(tables);
            // Precompiled code, once per mapped assembly, decoded off the
            // event loop (see `DotnetTable::decode_later`).
            let young = p.first_captured.elapsed() < table.precompiled_after;
            if table.lines && !young {
                dn.follow_lines();
            }
            for m in p.mappings.iter().filter(|_| !young) {
                let Target::Assembly(module) = m.target else {
                    continue;
                };
                if dn.r2r_done.contains(&m.start) {
                    continue;
                }
                let Some(methods) = table.precompiled.get(&module).cloned() else {
                    table.decode_later(module, || modules.get(module).open());
                    continue;
                };
                dn.r2r_done.insert(m.start);
                let Some(methods) = methods else {
                    continue;
                };
                let added = dn.add_precompiled(&methods, (m.start, m.end, m.offset), tables);
                if r.is_ok() {
                    r = added;
                }
            }
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Turns off every perf map crossprof turned on, and removes the file the
    /// runtime wrote for it, leaving the process as it was.
    pub fn release_dotnet(&mut self) {
        for dn in self.procs.values_mut().filter_map(|p| p.dotnet.as_mut()) {
            dn.release();
        }
    }
}
