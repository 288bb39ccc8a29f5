//! Folded stacks, the contract between collapse and render that inferno and the
//! FlameGraph tools share: one line per stack, `root;frame;...;leaf COUNT`.
//!
//! crossprof's root is the process name; user frames follow outermost first, then
//! kernel frames. Frames carry the annotations inferno's palettes know (inferno
//! 0.12 knows `_[k]`, `_[j]` and `_[i]`, and strips them from the label):
//! - kernel frames `_[k]`;
//! - managed .NET frames (JIT code, named ReadyToRun code) `_[j]`;
//! - calls a compiler inlined are frames of their own, `_[i]`.
//!
//! Go, native and transition frames are not annotated: inferno has no
//! annotation for them, and one of its own would show in every label. Their
//! kind travels beside the lines instead ([`Folded::kinds`], see
//! [`crate::kinds`]) for the SVG's colours. Where a stack crosses runtimes a
//! marker frame is inserted right before the callee, `[cgo]` (Go <-> native) or
//! `[P/Invoke]` (.NET -> native), so a folded file shows its crossings too (rules
//! in [`crate::kinds`]).
//!
//! Stacks that name the same way are merged, so processes of one program add up.

use std::{
    collections::{BTreeMap, HashMap},
    io,
};

use crate::frame::{FrameKind, sanitize};
use crate::{
    aggregate::StackKey,
    kinds::{Classifier, Crossing, count_edges},
    native::process::ProcessTable,
    summary::Edge,
    symbolize::Names,
};

/// Folded stacks and what folding learnt about their frames.
#[derive(Debug, Default)]
pub struct Folded {
    /// Folded lines (without counts) and their counts, sorted.
    pub stacks: BTreeMap<String, u64>,
    /// The kind of each frame text the lines hold (`None`: not code, e.g. the
    /// process root or a goroutine level). A text shown by frames of two kinds
    /// keeps the first kind seen.
    pub kinds: HashMap<String, Option<FrameKind>>,
    /// Calls from one runtime into another, most samples first.
    pub edges: Vec<Edge>,
}

impl Folded {
    /// Notes that `text` is a frame of kind `kind`.
    fn note(&mut self, text: &str, kind: Option<FrameKind>) {
        match self.kinds.get_mut(text) {
            Some(known) => {
                if known.is_none() {
                    *known = kind;
                }
            }
            None => {
                self.kinds.insert(text.to_owned(), kind);
            }
        }
    }
}

/// Names every stack, marks where it crosses runtimes, and merges those that
/// read the same. Each stack's root is its process's name.
pub fn fold<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    process_name: impl Fn(u32) -> String,
    names: &Names,
    procs: &ProcessTable,
) -> Folded {
    fold_under(stacks, |pid| vec![process_name(pid)], names, procs)
}

/// [`fold_under`] one process at a time: each process's stacks folded on
/// their own (two processes of one name stay apart), by pid.
pub fn fold_by_process<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    roots: impl Fn(u32) -> Vec<String>,
    names: &Names,
    procs: &ProcessTable,
) -> BTreeMap<u32, Folded> {
    let mut per_pid: BTreeMap<u32, Vec<(&StackKey, u64)>> = BTreeMap::new();
    for (key, count) in stacks {
        per_pid.entry(key.pid).or_default().push((key, count));
    }
    per_pid
        .into_iter()
        .map(|(pid, stacks)| (pid, fold_under(stacks, &roots, names, procs)))
        .collect()
}

/// [`fold`], with the levels `roots` gives a process (outermost first: a
/// container, then the process's name) at the root of its stacks.
pub fn fold_under<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    roots: impl Fn(u32) -> Vec<String>,
    names: &Names,
    procs: &ProcessTable,
) -> Folded {
    let mut folded = Folded::default();
    let mut classifier = Classifier::new(names, procs);
    let mut crossings: Vec<(Vec<Crossing>, u64)> = Vec::new();
    for (key, count) in stacks {
        let mut line = String::new();
        for level in roots(key.pid) {
            // Each level on its own: a process named `a;b` is one level.
            let text = sanitize(&level);
            let text = if text.is_empty() { "[unknown]" } else { &text };
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(text);
            folded.note(text, None);
        }
        if line.is_empty() {
            line.push_str("[unknown]");
            folded.note(&line, None);
        }
        let shown = classifier.show(&key.frames);
        for frame in &shown.frames {
            line.push(';');
            line.push_str(&frame.text);
            folded.note(&frame.text, frame.kind);
        }
        *folded.stacks.entry(line).or_insert(0) += count;
        if !shown.crossings.is_empty() {
            crossings.push((shown.crossings, count));
        }
    }
    folded.edges = count_edges(crossings.iter().map(|(c, n)| (c.as_slice(), *n)));
    folded
}

/// Writes `folded` as text, one `stack COUNT` line each.
pub fn write_folded(folded: &Folded, out: &mut impl io::Write) -> io::Result<()> {
    for (stack, count) in &folded.stacks {
        writeln!(out, "{stack} {count}")?;
    }
    Ok(())
}

/// The lines as inferno reads them.
pub fn lines(folded: &Folded) -> Vec<String> {
    folded
        .stacks
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::Aggregator,
        frame::{FrameRef, Marker},
    };

    #[test]
    fn a_cgo_call_is_marked_once_right_before_the_c_code() {
        let functions = [
            "main.main",
            "main.inner",
            "main._Cfunc_cfunc",
            "runtime.cgocall",
            "runtime.asmcgocall",
            "cfunc",
            "cspin",
        ];
        let (bin, offsets) = crate::kinds::cgo_fixture(&functions);
        let mut procs = ProcessTable::default();
        let module = procs.modules.add_file(&bin);
        let table = procs.modules.go_table(module).unwrap();
        let frames: Vec<FrameRef> = offsets
            .iter()
            .map(|&offset| FrameRef::Elf { module, offset })
            .collect();
        // Named as the symbolizer thread names them.
        let mut names = Names::default();
        let found = crate::symbolize::elf_names(
            Some(&table),
            &crate::native::symbols::NativeSymbols::new(&[]),
            &bin,
            &offsets,
        );
        for (&f, name) in frames.iter().zip(found) {
            names.insert(f, name);
        }
        let mut agg = Aggregator::default();
        agg.add(1, frames.clone());
        agg.add(2, frames[..2].to_vec()); // pure Go: no marker
        let folded = fold(agg.stacks(), |_| "cgo".into(), &names, &procs);
        let shown: Vec<String> = frames
            .iter()
            .map(|&f| names.display(f, &procs).into_owned())
            .collect();
        assert_eq!(shown[5], "cfunc", "C code named from the ELF symbols");
        // Neither stack reaches a root (`runtime.goexit`): both marked so.
        let cut = Marker::ShortOfRoot.label();
        let crossing = format!(
            "cgo;{cut};{};[cgo];{}",
            shown[..5].join(";"),
            shown[5..].join(";")
        );
        let plain = format!("cgo;{cut};{}", shown[..2].join(";"));
        assert_eq!(
            folded.stacks,
            BTreeMap::from([(crossing, 1), (plain, 1)]),
            "{shown:?}"
        );
        let kind = |text: &str| folded.kinds[text];
        assert_eq!(kind("cgo"), None);
        assert_eq!(kind(&shown[1]), Some(FrameKind::Go));
        assert_eq!(kind(&shown[2]), Some(FrameKind::Transition));
        assert_eq!(kind(&shown[3]), Some(FrameKind::Transition));
        assert_eq!(kind("[cgo]"), Some(FrameKind::Transition));
        assert_eq!(kind("cfunc"), Some(FrameKind::Native));
        assert_eq!(kind("cspin"), Some(FrameKind::Native));
        assert_eq!(
            folded.edges,
            [Edge {
                caller: "main.inner".into(),
                callee: "cfunc".into(),
                caller_kind: FrameKind::Go,
                callee_kind: FrameKind::Native,
                samples: 1,
            }]
        );
    }

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
        // An `[unknown]` outermost frame is no root: those stacks are cut.
        let cut = Marker::ShortOfRoot.label();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("app;{cut};[unknown];[unknown]_[k] 2\nother:x;{cut};[unknown] 1\n")
        );
        assert_eq!(
            lines(&folded),
            vec![
                format!("app;{cut};[unknown];[unknown]_[k] 2"),
                format!("other:x;{cut};[unknown] 1")
            ]
        );
    }
}
