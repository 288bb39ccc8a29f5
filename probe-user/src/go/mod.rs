//! Go: symbolizing Go binaries from their own function table, stripped or not.
//!
//! Issue #4, first steps: [`pclntab`] names every PC of a Go binary, inlined
//! calls included, from `.gopclntab` (Go 1.18 on), which `-ldflags='-s -w'` keeps;
//! [`offsets`] tells the kernel where a Go version keeps the goroutine id, which
//! it reads from the `g` in R14 (`probe-ebpf/src/go.rs`).
//! [`labels`] reads a goroutine's pprof labels behind the `g.labels` pointer
//! the kernel sends; [`states`] places the goroutine-state uprobes
//! (`--go-states`), names wait reasons from the binary, and turns the kernel's
//! per-goroutine records into time per state; [`process`] keeps each Go
//! process's state and answers the process table's Go queries (its
//! executable's table, roots, signal handlers, `morestack`). Stacks that stop
//! at a switch to the system stack are continued in `crate::aggregate` with
//! the frames the kernel read from the goroutine's saved registers.

pub mod cgo;
pub mod dwarf;
pub mod labels;
pub mod offsets;
pub mod pclntab;
pub mod probes;
pub mod process;
pub mod states;
pub mod table;

use pclntab::GoTable;

/// The source lines of Go file offset `offset`, outermost first as in
/// [`name_of`]; `None` if no line is known.
pub(crate) fn sources_of(
    table: &GoTable,
    offset: u64,
) -> Option<std::sync::Arc<[Option<crate::frame::Source>]>> {
    let frames = table.frames(table.vaddr(offset)?, true)?;
    frames.iter().any(|f| f.source.is_some()).then(|| {
        frames
            .iter()
            .rev()
            .map(|f| {
                f.source
                    .as_ref()
                    .map(|(file, line)| (std::sync::Arc::from(file.as_str()), *line))
            })
            .collect()
    })
}

/// The name of Go file offset `offset`: the function, then each call inlined into
/// it, outermost first, the inlined ones annotated `_[i]`.
pub(crate) fn name_of(table: &GoTable, offset: u64) -> Option<String> {
    let frames = table.frames(table.vaddr(offset)?, true)?;
    let mut name = String::new();
    for f in frames.iter().rev() {
        if !name.is_empty() {
            name.push(crate::frame::INLINE_SEPARATOR);
        }
        name.push_str(&crate::frame::sanitize(&f.name));
        if f.inlined {
            name.push_str(crate::frame::INLINE_SUFFIX);
        }
    }
    Some(name)
}

/// What the kernel needs of a Go process (its `PROCESSES` entry): its goroutine layout,
/// and, when its load bias is known, where its signal trampolines are in it
/// (`runtime.sigtramp`'s range, `runtime.cgoSigtramp`'s entry; zero when
/// unknown, and then signal frames are not looked through).
pub fn kernel_offsets(table: &GoTable, bias: Option<u64>) -> Option<probe_common::go::GoOffsets> {
    let mut offsets = layout(table)?.offsets;
    if let Some(bias) = bias {
        if let Some((start, end)) = table.function("runtime.sigtramp") {
            offsets.sigtramp = [start.wrapping_add(bias), end.wrapping_add(bias)];
        }
        if let Some((start, _)) = table.function("runtime.cgoSigtramp") {
            offsets.cgo_sigtramp = start.wrapping_add(bias);
        }
    }
    Some(offsets)
}

/// The goroutine layout of a Go binary: from its own DWARF when it has DWARF,
/// else from the per-version table. `None` for a Go version outside the table,
/// DWARF or not: status numbers and label layouts are version semantics DWARF
/// does not give, and an unknown version is never guessed.
pub fn layout(table: &GoTable) -> Option<dwarf::Layout> {
    let version = table.version.as_deref()?;
    let known = offsets::for_version(version)?;
    Some(table.dwarf_layout().unwrap_or(dwarf::Layout {
        offsets: known,
        creation: offsets::creation(version),
        from_dwarf: false,
    }))
}
