//! The replay tier: a recording's inputs captured, and replayed through the
//! same pipeline without root, kernel or the processes.
//!
//! `crossprof record --capture DIR` writes, beside its usual outputs:
//! - `ring.bin`: every ring-buffer record as the kernel sent it (a `u32`
//!   length, then its bytes, in the order drained);
//! - `procs.jsonl`: every read of a process's `/proc` files the process
//!   table made (maps, comm, exe), in order;
//! - `files.jsonl`: every file a process mapped that was opened, with its
//!   build id;
//! - `labels.jsonl`: every Go pprof label set read from a target's memory,
//!   by process and `g.labels` pointer (a set never changes once made);
//! - `runtime.bin`: every read of a file a runtime writes for crossprof (a
//!   .NET perf map or jitdump): process, file, the record it was read at,
//!   offset and bytes (deflated; a jitdump's code bytes blanked, as naming
//!   never reads them);
//! - `gc.jsonl`: each .NET process's GC pauses, as its event session saw
//!   them;
//! - `kallsyms`: the kernel symbols the recorded kernel addresses need (each
//!   address's symbol and the one after it), in `/proc/kallsyms` form;
//! - `session`: the recording's mode, frequency and `--group-by` levels.
//!
//! [`replay`] reads them back: the records through the pipeline's own
//! decoding and stack stages, `/proc` reads answered from the capture (never
//! from the machine's `/proc`, where the pid is someone else's), files opened
//! by their path (checked against the build id captured: replaying another
//! build of a binary fails, naming it), kernel addresses named from the
//! captured symbols, Go labels from the captured sets, a .NET process's
//! JIT and precompiled code from its perf map and jitdump as they had been
//! read by the record being replayed (nothing asked of a runtime, no
//! memory read), its `[gc]` marks from its captured pauses. What a replay
//! does not have yet: .NET source lines (the runtime's JIT events and the
//! PDBs they lead to), containers (a process's cgroup). `tests/data/replay/` holds captured cases with their
//! expected outputs (`probe-user/tests/replay.rs`).

pub mod source;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

pub use source::{Capture, KALLSYMS, ProcRead, ProcSource, RING, ReplayError, Snapshot};

/// What [`replay`] made of a capture.
pub struct Replayed {
    /// The folded stacks, as `record` writes `profile.folded`.
    pub folded: String,
    /// The pprof profile (not gzipped).
    pub pprof: Vec<u8>,
}

/// Replays the capture in `dir` (paths under `relocate.0` read under
/// `relocate.1`): its records through the pipeline, named from the files
/// its processes mapped and the captured kernel symbols.
pub fn replay(dir: &Path, relocate: Option<(String, String)>) -> Result<Replayed, ReplayError> {
    let snapshot = Snapshot::open(dir, relocate)?;
    snapshot.check_files()?;
    let records = snapshot.records()?;
    let known = snapshot.read_first();
    let kallsyms = snapshot.kallsyms();
    let (mode, freq, group_by) = snapshot.session()?;
    let procs = crate::native::process::ProcessTable::reading(ProcSource::Replay(Arc::new(
        Mutex::new(snapshot),
    )));
    let cfg = crate::session::Config::replay(&mode, freq, &group_by, kallsyms).map_err(|why| {
        ReplayError::Malformed {
            path: dir.join(source::SESSION),
            line: 1,
            why,
        }
    })?;
    let mut pipeline = crate::session::Pipeline::new(&cfg, procs, None, Vec::new(), None);
    // As a recording starts: the targets it knew read before any record.
    for pid in known {
        pipeline.procs.get_or_capture(pid, "[exited]");
    }
    pipeline.procs.poll_go(None, &mut || {});
    for record in &records {
        pipeline.replay_record(record);
    }
    // As a recording ends: the .NET processes let go of, and their
    // samples, held for the GC pauses of their time, counted.
    pipeline.procs.release_dotnet();
    pipeline.count_waiting(u64::MAX);
    pipeline.symbolizer.finish();
    let names = &pipeline.symbolizer.names;
    let folded = crate::fold::fold_under(
        pipeline.agg.stacks(),
        |pid| vec![pipeline.procs.name_of(pid)],
        names,
        &pipeline.procs,
    );
    let mut text = Vec::new();
    crate::fold::write_folded(&folded, &mut text).map_err(source::io(dir))?;
    let pprof = crate::pprof::build(
        pipeline.agg.stacks(),
        names,
        &pipeline.procs,
        &mut crate::pprof::BuildIds::default(),
        crate::pprof::Kind::of(&cfg),
        crate::pprof::Span {
            start_unix_ns: 0,
            duration_ns: 0,
        },
    );
    Ok(Replayed {
        folded: String::from_utf8_lossy(&text).into_owned(),
        pprof,
    })
}
