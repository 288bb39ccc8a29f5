//! Aggregation: identical stacks of a process are counted once, as [`FrameRef`]s
//! (not yet names), so the hot path never waits for symbolization.

use std::collections::{HashMap, HashSet};

use probe_common::native::{
    FLAG_KERNEL_STACK_ERROR, FLAG_KERNEL_TRUNCATED, FLAG_USER_LEAF_EDGE, FLAG_USER_NO_UNWIND_INFO,
    FLAG_USER_OUTERMOST, FLAG_USER_STACK_ERROR, FLAG_USER_TRUNCATED,
};

use crate::{
    decode::Sample,
    frame::{FrameRef, Marker},
    native::process::ProcessTable,
};

/// A distinct stack of one process, root first: user frames, then kernel frames.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct StackKey {
    /// The process.
    pub pid: u32,
    /// Frames, root first.
    pub frames: Box<[FrameRef]>,
}

/// Counts per distinct stack, and the frames not yet sent for naming.
#[derive(Debug, Default)]
pub struct Aggregator {
    stacks: HashMap<StackKey, u64>,
    seen: HashSet<FrameRef>,
    fresh: Vec<FrameRef>,
    /// Samples added.
    pub samples: u64,
}

impl Aggregator {
    /// Counts one sample of `pid` with `frames` (root first).
    pub fn add(&mut self, pid: u32, frames: Vec<FrameRef>) {
        self.add_weighted(pid, frames, 1);
    }

    /// Counts one sample of `pid` with `frames` (root first) as `weight`
    /// (microseconds in the off-CPU and wall modes).
    pub fn add_weighted(&mut self, pid: u32, frames: Vec<FrameRef>, weight: u64) {
        for &f in &frames {
            if self.seen.insert(f) {
                self.fresh.push(f);
            }
        }
        *self
            .stacks
            .entry(StackKey {
                pid,
                frames: frames.into_boxed_slice(),
            })
            .or_insert(0) += weight;
        self.samples += 1;
    }

    /// Moves the stacks counted so far (and their sample count) into a new
    /// aggregator, and starts counting afresh: the agent's window cut. Frames
    /// already seen stay seen (they are named once).
    pub fn take_stacks(&mut self) -> Aggregator {
        Aggregator {
            stacks: std::mem::take(&mut self.stacks),
            samples: std::mem::take(&mut self.samples),
            ..Aggregator::default()
        }
    }

    /// Forgets which frames were seen (they are sent for naming again when
    /// next counted): bounds memory in a long run, with [`crate::symbolize::Names::clear`].
    pub fn forget_seen(&mut self) {
        self.seen = HashSet::new();
        self.fresh.clear();
    }

    /// Frames seen for the first time since the last call.
    pub fn take_fresh(&mut self) -> Vec<FrameRef> {
        std::mem::take(&mut self.fresh)
    }

    /// Every distinct stack with its count.
    pub fn stacks(&self) -> impl Iterator<Item = (&StackKey, u64)> {
        self.stacks.iter().map(|(k, &n)| (k, n))
    }

    /// Number of distinct stacks.
    pub fn distinct(&self) -> usize {
        self.stacks.len()
    }
}

/// The root-first frames of `sample`: its user stack (outermost first), then its
/// kernel stack. Every return address is moved back by one byte so that it names the
/// call, not the instruction after it (which may be the next function). A stack that
/// could not be read, or was cut at the depth limit, carries a marker saying so.
pub fn sample_frames(sample: &Sample, procs: &mut ProcessTable) -> Vec<FrameRef> {
    let mut frames = Vec::with_capacity(sample.user.len() + sample.kernel.len() + 2);
    if sample.flags & FLAG_USER_STACK_ERROR != 0 {
        frames.push(FrameRef::Marker(Marker::UserStackError));
    } else {
        // Go stacks repaired (callers no frame record holds, signal
        // handlers, switches to the system stack, junk past a root).
        let mut user = std::borrow::Cow::Borrowed(&sample.user[..]);
        let rooted = crate::go::table::repair_stack(procs, sample, &mut user);
        // A stack that reaches a Go root is whole, however the walk went on
        // past it (a thread Go's `clone` started keeps its parent's RBP).
        if sample.flags & FLAG_USER_TRUNCATED != 0 && !rooted {
            frames.push(FrameRef::Marker(Marker::UserTruncated));
        }
        if sample.flags & FLAG_USER_LEAF_EDGE != 0 {
            frames.push(FrameRef::Marker(Marker::LeafEdge));
        }
        if sample.flags & FLAG_USER_NO_UNWIND_INFO != 0 && !rooted {
            frames.push(FrameRef::Marker(Marker::NoUnwindInfo));
        }
        let first = frames.len();
        for (i, &ip) in user.iter().enumerate().rev() {
            frames.push(procs.user_frame(sample.pid, call_site(i, ip)));
        }
        // The walk's own word that the stack is whole (see `roots::completeness`).
        // Code in a file only: an `[unknown]` is no particular place.
        if sample.flags & FLAG_USER_OUTERMOST != 0
            && let Some(&outermost @ FrameRef::Elf { .. }) = frames.get(first)
        {
            procs.note_outermost(outermost);
        }
    }
    if sample.flags & FLAG_KERNEL_STACK_ERROR != 0 {
        frames.push(FrameRef::Marker(Marker::KernelStackError));
    } else {
        if sample.flags & FLAG_KERNEL_TRUNCATED != 0 {
            frames.push(FrameRef::Marker(Marker::KernelTruncated));
        }
        frames.extend(
            sample
                .kernel
                .iter()
                .enumerate()
                .rev()
                .map(|(i, &ip)| FrameRef::Kernel(call_site(i, ip))),
        );
    }
    frames
}

/// Frame 0 is where the CPU was; every other frame is a return address.
fn call_site(depth: usize, ip: u64) -> u64 {
    if depth == 0 { ip } else { ip.saturating_sub(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ModuleId;

    fn elf(offset: u64) -> FrameRef {
        FrameRef::Elf {
            module: ModuleId(0),
            offset,
        }
    }

    #[test]
    fn identical_stacks_are_counted_once_and_fresh_frames_reported_once() {
        let mut agg = Aggregator::default();
        agg.add(7, vec![elf(1), elf(2)]);
        agg.add(7, vec![elf(1), elf(2)]);
        agg.add(8, vec![elf(1), elf(2)]);
        agg.add(7, vec![elf(1), elf(3)]);
        assert_eq!(agg.samples, 4);
        assert_eq!(agg.distinct(), 3);
        let key = StackKey {
            pid: 7,
            frames: vec![elf(1), elf(2)].into_boxed_slice(),
        };
        assert_eq!(agg.stacks().find(|(k, _)| **k == key).unwrap().1, 2);
        assert_eq!(agg.take_fresh(), vec![elf(1), elf(2), elf(3)]);
        agg.add(9, vec![elf(3), elf(4)]);
        assert_eq!(agg.take_fresh(), vec![elf(4)]);
    }

    fn sample(flags: u32, kernel: Vec<u64>, user: Vec<u64>) -> Sample {
        Sample {
            pid: u32::MAX - 1, // never a live process: user frames become markers
            tid: 1,
            cpu: 0,
            time_ns: 0,
            comm: [0; 16],
            flags,
            stack_top: [0; 4],
            goid: 0,
            go_labels: 0,
            go_status: 0,
            go_switch: Vec::new(),
            go_signal_pc: 0,
            fp_baseline: None,
            off_cpu: None,
            go_block: None,
            kernel,
            user,
        }
    }

    #[test]
    fn frames_are_root_first_user_then_kernel_with_call_sites() {
        let mut procs = ProcessTable::default();
        let s = sample(0, vec![0x10, 0x20], vec![0x1, 0x2, 0x3]);
        let frames = sample_frames(&s, &mut procs);
        let unknown = FrameRef::Marker(Marker::Unknown);
        assert_eq!(
            frames,
            vec![
                unknown,
                unknown,
                unknown,
                FrameRef::Kernel(0x1f),
                FrameRef::Kernel(0x10)
            ]
        );
    }

    #[test]
    fn a_walk_that_ended_at_an_outermost_rule_marks_its_root() {
        let mut procs = ProcessTable::default();
        let bin = std::fs::canonicalize("/bin/sh").unwrap();
        let module = procs.modules.add_file(&bin);
        let pid = std::process::id();
        let p = procs.get_or_capture(pid, "test");
        p.mappings.clear();
        p.mappings.push(crate::native::process::ExecMapping {
            start: 0x1000,
            end: 0x9000,
            offset: 0,
            target: crate::native::process::Target::Module(module),
        });
        let root = |procs: &ProcessTable, off: u64| {
            procs.is_outermost(FrameRef::Elf {
                module,
                offset: off,
            })
        };
        let mut s = sample(0, vec![], vec![0x1100, 0x1200, 0x1301]);
        s.pid = pid;
        sample_frames(&s, &mut procs);
        assert!(!root(&procs, 0x300), "no flag, no root");
        s.flags = FLAG_USER_OUTERMOST;
        let frames = sample_frames(&s, &mut procs);
        assert_eq!(
            frames[0],
            FrameRef::Elf {
                module,
                offset: 0x300
            }
        );
        assert!(root(&procs, 0x300), "the walk's last frame");
        assert!(!root(&procs, 0x1ff) && !root(&procs, 0x100));
        // An unknown frame is never a root.
        let mut unknown = sample(FLAG_USER_OUTERMOST, vec![], vec![0x5]);
        unknown.pid = u32::MAX - 1;
        sample_frames(&unknown, &mut procs);
        assert!(!procs.is_outermost(FrameRef::Marker(Marker::Unknown)));
    }

    #[test]
    fn unreadable_and_cut_stacks_are_marked() {
        let mut procs = ProcessTable::default();
        let s = sample(
            FLAG_USER_STACK_ERROR | FLAG_KERNEL_TRUNCATED,
            vec![0x10],
            vec![],
        );
        assert_eq!(
            sample_frames(&s, &mut procs),
            vec![
                FrameRef::Marker(Marker::UserStackError),
                FrameRef::Marker(Marker::KernelTruncated),
                FrameRef::Kernel(0x10)
            ]
        );
        let s = sample(
            FLAG_USER_TRUNCATED | FLAG_KERNEL_STACK_ERROR,
            vec![],
            vec![0x5],
        );
        assert_eq!(
            sample_frames(&s, &mut procs),
            vec![
                FrameRef::Marker(Marker::UserTruncated),
                FrameRef::Marker(Marker::Unknown),
                FrameRef::Marker(Marker::KernelStackError)
            ]
        );
    }
}
