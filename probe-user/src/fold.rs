//! Folded stacks, the contract between collapse and render that inferno and the
//! FlameGraph tools share: one line per stack, `root;frame;...;leaf COUNT`.
//!
//! crossprof's root is the process name; user frames follow outermost first, then
//! kernel frames, each annotated `_[k]` (inferno colours them as kernel code);
//! managed .NET frames are annotated `_[j]` (JIT code); calls a compiler inlined
//! are frames of their own, annotated `_[i]`.
//! Stacks that name the same way are merged, so processes of one program add up.

use std::{collections::BTreeMap, io};

use crate::{
    aggregate::StackKey,
    native::process::ProcessTable,
    symbolize::{FrameRef, INLINE_SEPARATOR, Marker, Names, sanitize},
};

/// inferno's annotation for kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";
/// inferno's annotation for JIT-compiled (managed) frames.
pub const JIT_SUFFIX: &str = "_[j]";

/// Folded lines (without counts) and their counts, sorted.
pub type Folded = BTreeMap<String, u64>;

/// Names every stack and merges those that read the same.
pub fn fold<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    process_name: impl Fn(u32) -> String,
    names: &Names,
    procs: &ProcessTable,
) -> Folded {
    let mut folded = Folded::new();
    for (key, count) in stacks {
        let mut line = sanitize(&process_name(key.pid)).into_owned();
        if line.is_empty() {
            line.push_str("[unknown]");
        }
        for &frame in key.frames.iter() {
            line.push(';');
            // One address may stand for several frames (calls inlined into it).
            for c in names.display(frame, procs).chars() {
                line.push(if c == INLINE_SEPARATOR { ';' } else { c });
            }
            if frame.is_kernel() {
                line.push_str(KERNEL_SUFFIX);
            } else if frame.is_managed() || is_named_assembly_code(frame, names, procs) {
                line.push_str(JIT_SUFFIX);
            }
        }
        *folded.entry(line).or_insert(0) += count;
    }
    folded
}

/// Functions a thread's stack starts in: a process's entry (`_start`), a
/// thread's (`clone3`/`clone`, glibc's `start_thread` above them), Go's
/// goroutines and threads (`runtime.goexit`, `runtime.mstart*`,
/// `runtime.rt0_go`).
fn is_root(name: &str) -> bool {
    matches!(
        name,
        "_start"
            | "clone3"
            | "clone"
            | "__clone"
            | "start_thread"
            | "runtime.goexit"
            | "runtime.rt0_go"
    ) || name.starts_with("runtime.mstart")
}

/// Stack completeness per process: `(samples whose user stack starts at a
/// thread root, samples with a user stack)`. A stack cut short (`[truncated:
/// ...]`, `[unknown]` outermost) does not count as complete.
pub fn completeness<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    names: &Names,
    procs: &ProcessTable,
) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut out = std::collections::BTreeMap::<u32, (u64, u64)>::new();
    for (key, count) in stacks {
        let outermost = key.frames.iter().find(|f| {
            !matches!(
                f,
                FrameRef::Thread(_)
                    | FrameRef::Goroutine(_)
                    | FrameRef::Label(_)
                    | FrameRef::Marker(Marker::Gc)
            )
        });
        let Some(&frame) = outermost.filter(|f| !f.is_kernel()) else {
            continue;
        };
        let name = names.display(frame, procs);
        let first = name.split(INLINE_SEPARATOR).next().unwrap_or("");
        let e = out.entry(key.pid).or_default();
        e.1 += count;
        if is_root(first.trim_end_matches("_[j]")) {
            e.0 += count;
        }
    }
    out
}

/// ReadyToRun code named from its assembly: managed code like JIT code.
fn is_named_assembly_code(frame: FrameRef, names: &Names, procs: &ProcessTable) -> bool {
    matches!(frame, FrameRef::Elf { module, .. }
        if procs.modules.get(module).is_assembly() && names.has(frame))
}

/// Writes `folded` as text, one `stack COUNT` line each.
pub fn write_folded(folded: &Folded, out: &mut impl io::Write) -> io::Result<()> {
    for (stack, count) in folded {
        writeln!(out, "{stack} {count}")?;
    }
    Ok(())
}

/// The lines as inferno reads them.
pub fn lines(folded: &Folded) -> Vec<String> {
    folded.iter().map(|(s, n)| format!("{s} {n}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::Aggregator,
        symbolize::{FrameRef, Marker},
    };

    #[test]
    fn lines_are_root_first_with_kernel_frames_annotated_and_merged() {
        let mut agg = Aggregator::default();
        let user = FrameRef::Marker(Marker::Unknown);
        let kernel = FrameRef::Kernel(0xffff_ffff_8100_0000);
        agg.add(10, vec![user, kernel]);
        agg.add(11, vec![user, kernel]); // same program, other pid: merged
        agg.add(12, vec![user]);
        let folded = fold(
            agg.stacks(),
            |pid| {
                if pid == 12 {
                    "other;x".into()
                } else {
                    "app".into()
                }
            },
            &Names::default(),
            &ProcessTable::default(),
        );
        let mut out = Vec::new();
        write_folded(&folded, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "app;[unknown];[unknown]_[k] 2\nother:x;[unknown] 1\n"
        );
        assert_eq!(
            lines(&folded),
            vec!["app;[unknown];[unknown]_[k] 2", "other:x;[unknown] 1"]
        );
    }
}
