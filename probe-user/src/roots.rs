//! Does a stack reach its thread's root? A sample's user stack is whole when
//! its outermost frame is where a thread starts: a process's `_start`, a
//! thread's `clone3`/`start_thread`, Go's `runtime.goexit`/`runtime.mstart`
//! ([`crate::frame::is_root`]), or a frame the walk's unwind rules said has
//! no caller. This module counts the stacks that do ([`completeness`], the
//! summary's `stacks complete`) and, for every output, marks the ones that
//! do not and carry no mark of the walk's saying why ([`marked`]).

use crate::{
    aggregate::StackKey,
    frame::{FrameRef, INLINE_SEPARATOR, Marker, is_root},
    native::process::ProcessTable,
    symbolize::Names,
};

/// Stack completeness per process: `(samples whose user stack starts at a
/// thread root, samples with a user stack)`. A stack cut short (`[truncated:
/// ...]`, `[unknown]` outermost) does not count as complete: those are the
/// stacks a profile shows with a mark (see [`marked`]).
pub fn completeness<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    names: &Names,
    procs: &ProcessTable,
) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut out = std::collections::BTreeMap::<u32, (u64, u64)>::new();
    for (key, count) in stacks {
        let Some((_, frame)) = outermost_user(&key.frames) else {
            continue;
        };
        let e = out.entry(key.pid).or_default();
        e.1 += count;
        if frame_is_root(frame, names, procs) {
            e.0 += count;
        }
    }
    out
}

/// The outermost user frame of the root-first `frames`, and where it is:
/// past the levels a recording puts above a stack (thread, goroutine, label,
/// `[gc]`). None for a stack with no user frame.
fn outermost_user(frames: &[FrameRef]) -> Option<(usize, FrameRef)> {
    let (at, &frame) = frames.iter().enumerate().find(|(_, f)| {
        !matches!(
            f,
            FrameRef::Thread(_)
                | FrameRef::Goroutine(_)
                | FrameRef::Label(_)
                | FrameRef::Marker(Marker::Gc)
        )
    })?;
    (!frame.is_kernel()).then_some((at, frame))
}

/// `frames` (root first) as every profile shows them: a user stack whose walk
/// ended at a frame that is no thread root, with no mark saying why, gets
/// [`Marker::ShortOfRoot`] before its outermost frame. The kernel walk ends
/// such a stack as if whole (a zero frame pointer, a zero return address),
/// so without the mark a cut stack would read as a complete one whose root
/// is some inner function.
pub fn marked<'f>(
    frames: &'f [FrameRef],
    names: &Names,
    procs: &ProcessTable,
) -> std::borrow::Cow<'f, [FrameRef]> {
    match outermost_user(frames) {
        Some((at, frame))
            if !matches!(frame, FrameRef::Marker(m) if m.says_cut())
                && !frame_is_root(frame, names, procs) =>
        {
            let mut out = Vec::with_capacity(frames.len() + 1);
            out.extend_from_slice(&frames[..at]);
            out.push(FrameRef::Marker(Marker::ShortOfRoot));
            out.extend_from_slice(&frames[at..]);
            std::borrow::Cow::Owned(out)
        }
        _ => std::borrow::Cow::Borrowed(frames),
    }
}

/// Is `frame` (a user stack's outermost) in a thread root function: one a
/// walk ended at by its unwind rules (`DW_CFA_undefined rip`: glibc's
/// `_start` and `clone3`, named or not), or one named as a root?
pub fn frame_is_root(frame: FrameRef, names: &Names, procs: &ProcessTable) -> bool {
    if procs.is_outermost(frame) {
        return true;
    }
    let name = names.display(frame, procs);
    let first = name.split(INLINE_SEPARATOR).next().unwrap_or("");
    is_root(first.trim_end_matches("_[j]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregator;

    #[test]
    fn a_stack_that_ends_short_of_a_root_is_marked_once_where_it_ends() {
        let elf = |offset| FrameRef::Elf {
            module: crate::frame::ModuleId(0),
            offset,
        };
        let (start, main, hot, clone) = (elf(1), elf(2), elf(3), elf(4));
        let mut names = Names::default();
        names.insert(start, Some("_start".to_owned()));
        names.insert(main, Some("main".to_owned()));
        names.insert(hot, Some("hot".to_owned()));
        names.insert(clone, Some("[libc.so.6+0x1234]".to_owned()));
        let mut procs = ProcessTable::default();
        // A stripped libc's thread entry: the walk's rules said "no caller".
        procs.note_outermost(clone);
        let kernel = FrameRef::Kernel(0xffff_ffff_8100_0000);
        let thread = FrameRef::Thread(0);
        let gc = FrameRef::Marker(Marker::Gc);
        let cut = FrameRef::Marker(Marker::ShortOfRoot);
        let no_info = FrameRef::Marker(Marker::NoUnwindInfo);
        let cases: [(&[FrameRef], &[FrameRef]); 8] = [
            // Whole: from a root by name, or by the walk's own word.
            (
                &[thread, start, main, hot, kernel],
                &[thread, start, main, hot, kernel],
            ),
            (&[clone, hot], &[clone, hot]),
            // Cut: marked after the levels, before the outermost frame.
            (
                &[thread, main, hot, kernel],
                &[thread, cut, main, hot, kernel],
            ),
            (&[gc, hot], &[gc, cut, hot]),
            (
                &[FrameRef::Marker(Marker::Unknown), hot],
                &[cut, FrameRef::Marker(Marker::Unknown), hot],
            ),
            // Already marked by the walk, or no user stack: as they are.
            (&[no_info, main, hot], &[no_info, main, hot]),
            (&[thread, kernel], &[thread, kernel]),
            (&[], &[]),
        ];
        for (frames, shown) in cases {
            assert_eq!(&marked(frames, &names, &procs)[..], shown, "{frames:?}");
            // Marked twice, once: a shown stack is whole or says it is not.
            let again = marked(shown, &names, &procs);
            assert_eq!(&again[..], shown, "{frames:?}");
        }
        // Completeness counts as whole exactly the stacks left unmarked.
        let mut agg = Aggregator::default();
        for (frames, _) in cases {
            agg.add(1, frames.to_vec());
        }
        let counted = completeness(agg.stacks(), &names, &procs);
        assert_eq!(counted[&1], (2, 6));
    }
}
