//! Per Go process: what crossprof learned of its runtime (checked, its
//! goroutine layout handed to the kernel, its labels, its goroutine states)
//! and the addresses its stacks are repaired with (roots, signal handlers,
//! `morestack`, the signal return trampoline). The process table's Go
//! queries, which fill and read it, are in [`super::table`].

use crate::native::unwind::{ObjectMapping, UnwindTableError, UnwindTables};

/// A process's Go state (empty for a process that is not Go).
#[derive(Debug, Default)]
pub struct GoProcess {
    /// Checked for Go (goroutine offsets handed to the kernel if it is).
    pub(crate) checked: bool,
    /// A Go version whose goroutine layout is not known: no goroutine data.
    pub note: Option<String>,
    /// The kernel reads this Go process's goroutines.
    pub tracked: bool,
    /// Its goroutines' pprof labels.
    pub(crate) labels: Option<super::labels::Labels>,
    /// Its goroutine states, when followed (`--go-states`).
    pub states: Option<super::states::Tracking>,
    /// Its goroutine states, when sampled (`--go-state-sampling`; none
    /// once it exited).
    pub sampling: Option<super::states::Sampling>,
    /// Where its Go stacks start (`runtime.goexit`, `runtime.mstart`,
    /// `runtime.rt0_go`) in each Go object it maps (see [`Self::find_roots`]),
    /// as address ranges in the process: nothing is called from outside them,
    /// so a walk that runs past one (a thread whose first frame pointer was
    /// never zeroed, cgo's C thread entry without unwind rules) read junk. Like every set
    /// of ranges here, in address order (see `super::table::holds`).
    pub(super) roots: Vec<(u64, u64)>,
    /// Its Go signal handlers' entries (`runtime.sigtramp`, `runtime.cgoSigtramp`)
    /// as address ranges.
    pub(super) sigtramps: Vec<(u64, u64)>,
    /// `runtime.morestack` and `runtime.morestack_noctxt`, as address ranges.
    pub(super) morestack: Vec<(u64, u64)>,
    /// Its generated wrappers (see `GoTable::wrappers`), as address ranges in
    /// address order.
    pub(super) wrappers: Vec<(u64, u64)>,
    /// `runtime.gopanic`, `runtime.sigpanic`, `runtime.panicwrap`: a wrapper
    /// that called one of them instead of what it wraps stays in the stack
    /// (Go's `elideWrapperCalling`).
    pub(super) panics: Vec<(u64, u64)>,
    /// The signal return trampoline its handlers return to
    /// (`runtime.sigreturn__sigaction`, `runtime.sigreturn` before Go 1.21):
    /// its address is on the stack as if it were a return address.
    pub(super) restorer: Option<u64>,
}

impl GoProcess {
    /// Its process exited: its goroutines are no longer read (the pid may
    /// be another process's soon); what was learned stays.
    pub(crate) fn exited(&mut self) {
        if let Some(s) = self.sampling.as_mut() {
            s.stop();
        }
    }

    /// Does this process (whose objects' mappings are `mappings`) need its
    /// `.eh_frame` rules in the kernel? A Go process whose goroutines are
    /// tracked does only if one of its Go objects has rules (C code of cgo, or
    /// assembly that uses RBP); without, the kernel's frame-pointer walk
    /// (`bpf_get_stack`) is whole and cheaper. Any other process does.
    pub(crate) fn wants_rules(
        &self,
        mappings: &[ObjectMapping<'_>],
        tables: &mut UnwindTables,
    ) -> Result<bool, UnwindTableError> {
        if !self.tracked {
            return Ok(true);
        }
        mappings
            .iter()
            .filter(|m| m.go.is_some())
            .try_fold(false, |any, m| Ok(any || tables.has_rules(m.path, m.go)?))
    }

    /// Finds its Go stacks' roots again in the Go objects it maps now
    /// (`mappings`): its executable's, and those of Go libraries built with
    /// `-buildmode=c-shared` that a C or .NET program loaded, whose threads
    /// (`sysmon`, the garbage collector's) start in their own `runtime.mstart`.
    pub(crate) fn find_roots(&mut self, mappings: &[ObjectMapping<'_>]) {
        let mut roots: Vec<(u64, u64)> = mappings
            .iter()
            .filter_map(|m| Some((m, m.go?, m.go?.mapping_vaddr(m.offset)?)))
            .flat_map(|(m, table, vaddr)| {
                table.roots().iter().filter_map(move |&(start, end)| {
                    let start = start.checked_sub(vaddr)?.checked_add(m.start)?;
                    let end = end.checked_sub(vaddr)?.checked_add(m.start)?;
                    (start >= m.start && end <= m.end).then_some((start, end))
                })
            })
            .collect();
        roots.sort_unstable();
        roots.dedup();
        self.roots = roots;
    }

    /// The value of pprof label `key` of the goroutine whose `g.labels` is
    /// `ptr`, if it has one.
    pub fn label(&mut self, ptr: u64, key: &str) -> Option<String> {
        let set = self.labels.as_mut()?.get(ptr)?;
        set.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}
