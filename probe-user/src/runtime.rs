//! The runtimes a process can run, and what each one adds to crossprof.
//!
//! A process is native code first: [`crate::native`] reads its maps, names
//! ELF frames and gives the kernel `.eh_frame` rules. A runtime adds to that,
//! and lives in a folder of its own (`go/`, `dotnet/`), mirrored in
//! `probe-common/src/{go,dotnet}.rs` (the records and map values the kernel
//! shares) and `probe-ebpf/src/{go,dotnet}.rs` (its walks and uprobes). The
//! process table keeps one typed slot per runtime and calls the runtime's
//! steps; each step is written in the runtime's folder:
//!
//! | step | Go (`go/`) | .NET (`dotnet/`) |
//! |---|---|---|
//! | per-file data, read once per file | `pclntab::GoTables` (in `ModuleTable`) | precompiled code (`frames::DotnetTable`) |
//! | per-process state (a slot in `Process`) | `process::GoProcess` | `DotnetProcess` |
//! | found | `table::poll_go`: the executable's function table | `frames::maps_read`: `libcoreclr.so` mapped |
//! | kernel state | goroutine offsets (`poll_go`), `GoProcess::wants_rules`, state uprobes (`probes`) | frame shapes (`table::poll_dotnet_unwind`) |
//! | a frame named | `name_of` (from the symbolizer) | `DotnetTable::jit_frame`, `precompiled_frame` |
//! | a stack repaired | `table::repair_stack` | (walked whole by the kernel) |
//! | report | `table::describe`, `layout_notes`, `table_notes` | `report::describe`, `report::notes` |
//! | let go | (nothing held) | `frames::retire`, `table::release_dotnet` |
//!
//! The runtime's table-wide steps (`table.rs`) extend the process table from
//! its own folder; what `native/process.rs` calls of a runtime is in files
//! that do not import it back (`go/process.rs`, `dotnet/frames.rs`), so no
//! file imports itself through others (`tests/imports.rs`).
//!
//! Typed slots rather than a list of trait objects: each runtime has queries
//! only it answers (a goroutine's labels, a .NET process's GC pauses), which
//! a trait object would hide behind downcasts, and with two runtimes the
//! steps above are two calls each, in plain sight.

use crate::native::process::ProcessTable;

/// The runtime a process is labelled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// No managed runtime crossprof knows.
    Native,
    /// A Go executable.
    Go,
    /// CoreCLR (running, or exited).
    Dotnet,
}

impl Runtime {
    /// Its name in outputs (pprof's `runtime` label, the agent's windows).
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Go => "go",
            Self::Dotnet => "dotnet",
        }
    }
}

impl ProcessTable {
    /// The runtime of process `pid`, if it was seen: .NET if it runs (or
    /// ran) CoreCLR, even with a Go library in it; Go if its executable is.
    pub fn runtime(&self, pid: u32) -> Option<Runtime> {
        let p = self.get(pid)?;
        Some(if p.dotnet.is_some() || p.was_dotnet {
            Runtime::Dotnet
        } else if self.go_exe_table(pid).is_some() {
            Runtime::Go
        } else {
            Runtime::Native
        })
    }
}
