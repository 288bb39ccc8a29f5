//! What a recording reports of its .NET processes: the runtime's version,
//! its garbage collections, and the notes that say what could not be named
//! and why.

use crate::{
    native::process::ProcessTable,
    summary::{GcSummary, ProcessSummary},
};

/// Fills in `summary`'s .NET fields, if its process is .NET.
pub(crate) fn describe(procs: &ProcessTable, summary: &mut ProcessSummary) {
    let Some(p) = procs.get(summary.pid) else {
        return;
    };
    let Some(d) = p.dotnet.as_ref() else {
        return;
    };
    summary.runtime = Some(format!("dotnet {}", d.clr.version));
    summary.jit_from_memory = d.jit_from_memory();
    summary.gc = d.gc_stats().map(|g| GcSummary {
        collections: g.collections,
        pauses: g.pauses,
        pause_ms: g.pause_ms,
        samples: p.gc_samples,
        share: p.gc_samples as f64 / p.samples.max(1) as f64,
    });
}

/// The notes of the .NET processes sampled.
pub(crate) fn notes(procs: &ProcessTable) -> Vec<String> {
    procs
        .iter()
        .filter(|p| p.samples > 0)
        .filter_map(|p| p.dotnet.as_ref().map(|d| d.notes(&p.name)))
        .flatten()
        .collect()
}
