//! The process table's Go part: finding a process's Go runtime and telling
//! the kernel its goroutine layout (`poll_go`), the queries that read its
//! executable's function table, and the repair of its stacks (callers a
//! frame-pointer walk cannot see, signal handlers, system-stack switches,
//! junk past a root, generated wrappers).

use std::{path::Path, sync::Arc};

use super::pclntab::GoTable;
use crate::native::process::{ProcessTable, Target};
use crate::{cli::GroupBy, decode::Sample, frame::FrameRef};

impl ProcessTable {
    /// The frame of `--group-by` level `level` (goroutine, `label:KEY`,
    /// state) for `sample`; `None` if its process's goroutines are not
    /// tracked (not Go, or a version whose layout is not known), or the level
    /// is not Go's.
    pub(crate) fn go_level(&mut self, level: &GroupBy, sample: &Sample) -> Option<FrameRef> {
        if !self.get(sample.pid).is_some_and(|p| p.go.tracked) {
            return None;
        }
        Some(match level {
            GroupBy::Goroutine => FrameRef::Goroutine(sample.goid),
            GroupBy::Label(key) => self.label_frame(sample.pid, sample.go_labels, key),
            GroupBy::State => {
                self.text_frame(super::states::status_text(sample.goid, sample.go_status))
            }
            _ => return None,
        })
    }

    /// Goroutine `g` of `pid` ended (`GoroutineEnd`): its time by state is
    /// kept for the report, when the process's states are followed.
    pub(crate) fn go_goroutine_ended(&mut self, pid: u32, g: probe_common::go::Goroutine) {
        if let Some(t) = self.get_mut(pid).and_then(|p| p.go.states.as_mut()) {
            t.ended.push(g);
        }
    }

    /// `[wait: REASON]`, the frame text of a goroutine-wait record of `pid`
    /// (`--go-waits`) whose wait reason is `reason` (named by the process's
    /// Go version's table, when its states are followed).
    pub(crate) fn go_wait_text(&self, pid: u32, reason: u32) -> String {
        let reasons = self
            .get(pid)
            .and_then(|p| p.go.states.as_ref())
            .map(|t| t.reasons.as_slice())
            .unwrap_or_default();
        format!("[wait: {}]", super::states::reason_name(reasons, reason))
    }

    /// The `--group-by label:KEY` frame of a sample of `pid` whose goroutine's
    /// `g.labels` is `ptr`: `KEY=VALUE`, or `[no KEY label]`.
    pub fn label_frame(&mut self, pid: u32, ptr: u64, key: &str) -> FrameRef {
        let value = self.procs.get_mut(&pid).and_then(|p| p.go.label(ptr, key));
        let text = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("[no {key} label]"),
        };
        self.text_frame(&text)
    }

    /// Gives the kernel the goroutine offsets of every Go process not seen yet,
    /// and returns those processes with their offsets and function table.
    /// `before_describing` runs before a process's offsets go to the kernel
    /// (the sampler's Go walk is loaded there, so that no sample of it is
    /// walked without).
    pub fn poll_go(
        &mut self,
        processes: Option<&crate::process::ProcessEntries>,
        before_describing: &mut dyn FnMut(),
    ) -> Vec<(u32, probe_common::go::GoOffsets, Arc<GoTable>)> {
        let fresh: Vec<u32> = self
            .procs
            .values()
            .filter(|p| !p.go.checked && p.dotnet.is_none() && p.pid != 0)
            .map(|p| p.pid)
            .collect();
        let mut tracked = Vec::new();
        for pid in fresh {
            let table = self.go_exe_table(pid);
            let p = self.procs.get_mut(&pid).expect("listed above");
            p.go.checked = true;
            let Some(table) = table else { continue };
            let Some(version) = table.version.clone() else {
                continue;
            };
            let bias = self.go_exe_bias(pid).unwrap_or(0);
            let range = |name: &str| {
                let (start, end) = table.function(name)?;
                Some((start.wrapping_add(bias), end.wrapping_add(bias)))
            };
            let (sigtramp, cgo_sigtramp) =
                (range("runtime.sigtramp"), range("runtime.cgoSigtramp"));
            let restorer = range("runtime.sigreturn__sigaction")
                .or_else(|| range("runtime.sigreturn"))
                .map(|(start, _)| start);
            // Each set in address order, for `holds`.
            let ranges = |names: &[&str]| -> Vec<(u64, u64)> {
                let mut v: Vec<(u64, u64)> = names.iter().filter_map(|name| range(name)).collect();
                v.sort_unstable();
                v
            };
            let morestack = ranges(&["runtime.morestack", "runtime.morestack_noctxt"]);
            let roots = table
                .roots()
                .iter()
                .map(|&(start, end)| (start.wrapping_add(bias), end.wrapping_add(bias)))
                .collect();
            let panics = ranges(&["runtime.gopanic", "runtime.sigpanic", "runtime.panicwrap"]);
            let mut sigtramps: Vec<(u64, u64)> = sigtramp.into_iter().chain(cgo_sigtramp).collect();
            sigtramps.sort_unstable();
            let wrappers = table
                .wrappers()
                .into_iter()
                .map(|(start, end)| (start.wrapping_add(bias), end.wrapping_add(bias)))
                .collect();
            let p = self.procs.get_mut(&pid).expect("listed above");
            p.go.wrappers = wrappers;
            p.go.panics = panics;
            p.go.sigtramps = sigtramps;
            p.go.roots = roots;
            p.go.restorer = restorer;
            p.go.morestack = morestack;
            match crate::go::kernel_offsets(&table, Some(bias)) {
                Some(offsets) => {
                    before_describing();
                    // Replayed (no kernel): tracked as the kernel would.
                    p.go.tracked = processes.is_none_or(|e| e.set_go(pid, Some(offsets)).is_ok());
                    p.go.labels = crate::go::offsets::label_layout(&version)
                        .map(|layout| crate::go::labels::Labels::open(pid, layout, &self.source));
                    if p.go.tracked {
                        tracked.push((pid, offsets, table));
                    }
                }
                None => p.go.note = Some(version),
            }
        }
        tracked
    }

    /// For a sample whose leaf is `runtime.morestack` itself, still on the
    /// goroutine's stack (`on_goroutine`: the kernel found the goroutine there):
    /// the function growing its stack and its caller, the first two words at SP
    /// (morestack has no frame; the grower has not pushed its frame pointer).
    pub fn go_morestack_callers(
        &self,
        pid: u32,
        leaf: u64,
        on_goroutine: bool,
        stack_top: &[u64],
    ) -> Option<[u64; 2]> {
        if !on_goroutine || stack_top.len() < 2 {
            return None;
        }
        holds(&self.procs.get(&pid)?.go.morestack, leaf, true)
            .then_some([stack_top[0], stack_top[1]])
    }

    /// The signal return trampoline of `pid`'s Go signal handlers, if known: a
    /// frame-pointer walk through a handler meets its address where a return
    /// address would be, though nothing called from there.
    pub fn go_restorer(&self, pid: u32) -> Option<u64> {
        self.procs.get(&pid)?.go.restorer
    }

    /// The index of the frame in `user` (leaf first) that is a Go signal
    /// handler's entry, if any.
    pub fn go_signal_handler_frame(&self, pid: u32, user: &[u64]) -> Option<usize> {
        let p = self.procs.get(&pid)?;
        user.iter()
            .enumerate()
            .position(|(i, &a)| holds(&p.go.sigtramps, a, i == 0))
    }

    /// The indexes of `user`'s frames (leaf first) in generated wrappers that
    /// Go's tracebacks leave out: all but one that called a panic function,
    /// and never every frame. `None` if there is none (the common case).
    pub fn go_wrapper_frames(&self, pid: u32, user: &[u64]) -> Option<Vec<usize>> {
        let p = self.procs.get(&pid).filter(|p| !p.go.wrappers.is_empty())?;
        let out: Vec<usize> = (0..user.len())
            .filter(|&i| holds(&p.go.wrappers, user[i], i == 0))
            .filter(|&i| i == 0 || !holds(&p.go.panics, user[i - 1], i == 1))
            .collect();
        (!out.is_empty() && out.len() < user.len()).then_some(out)
    }

    /// How many of `user`'s frames (leaf first) to keep: up to and including
    /// the first in a Go root function (see `GoProcess::roots`), all if none;
    /// and whether one was found.
    pub fn go_stack_len(&self, pid: u32, user: &[u64]) -> (usize, bool) {
        let Some(p) = self.procs.get(&pid).filter(|p| !p.go.roots.is_empty()) else {
            return (user.len(), false);
        };
        // The leaf may be in a root itself (a thread's first instructions).
        user.iter()
            .enumerate()
            .find(|&(i, &addr)| holds(&p.go.roots, addr, i == 0))
            .map_or((user.len(), false), |(i, _)| (i + 1, true))
    }

    /// The Go version that built `pid`'s executable (`go1.23.9`), if it is Go.
    pub fn go_version(&mut self, pid: u32) -> Option<String> {
        self.go_exe_table(pid)?.version.clone()
    }

    /// The Go function table of `pid`'s executable, if it is Go.
    pub fn go_exe_table(&self, pid: u32) -> Option<Arc<GoTable>> {
        self.modules.go_table(self.exe_module(pid)?)
    }

    /// How far `pid`'s executable is loaded from its link addresses (0 unless
    /// it is position-independent).
    pub fn go_exe_bias(&self, pid: u32) -> Option<u64> {
        let p = self.procs.get(&pid)?;
        let exe = p.exe.as_deref()?;
        let table = self.go_exe_table(pid)?;
        p.mappings.iter().find_map(|m| match m.target {
            Target::Module(id) if self.modules.get(id).path == Path::new(exe) => {
                Some(m.start.wrapping_sub(table.mapping_vaddr(m.offset)?))
            }
            _ => None,
        })
    }

    /// Where `runtime.allgs` is in process `pid`, whose executable's
    /// function table is `table` (see [`super::states::allgs_address`]).
    pub fn go_allgs(&self, pid: u32, table: &GoTable) -> Option<u64> {
        super::states::allgs_address(table)
            .and_then(|v| Some(v.wrapping_add(self.go_exe_bias(pid)?)))
    }

    /// Starts sampling the goroutine states of Go process `pid` (its
    /// executable's function table `table`) `hz` times a second, if its
    /// goroutines can be read.
    pub fn sample_go_states(&mut self, pid: u32, table: &GoTable, hz: u64) {
        let sampling = super::states::Sampling::new(
            std::fs::File::open(format!("/proc/{pid}/mem")).ok(),
            self.go_allgs(pid, table),
            super::layout(table),
            super::states::wait_reasons(table).unwrap_or_default(),
            hz,
        );
        if let Some(p) = self.procs.get_mut(&pid) {
            p.go.sampling = sampling;
        }
    }

    /// One round of `--go-state-sampling`: the goroutines of every Go
    /// process sampled read, each counted `period_ns` in its state.
    pub fn sample_goroutines(&mut self, period_ns: u64) {
        for p in self.procs.values_mut() {
            if let Some(s) = p.go.sampling.as_mut() {
                s.sample(period_ns);
            }
        }
    }

    /// Go process `pid`'s goroutines' time per state in the agent's window
    /// being counted (`--go-state-sampling`), summed over its goroutines.
    pub fn go_window_states(&self, pid: u32) -> Option<crate::summary::StateTimes> {
        self.procs.get(&pid)?.go.sampling.as_ref()?.window_times()
    }

    /// The Go processes whose goroutines were sampled in the agent's window
    /// being counted.
    pub fn go_window_sampled(&self) -> Vec<u32> {
        self.procs
            .values()
            .filter(|p| {
                p.go.sampling
                    .as_ref()
                    .is_some_and(|s| s.window_times().is_some())
            })
            .map(|p| p.pid)
            .collect()
    }

    /// A new window starts: every Go process's window sums start again.
    pub fn go_new_window(&mut self) {
        for s in self
            .procs
            .values_mut()
            .filter_map(|p| p.go.sampling.as_mut())
        {
            s.new_window();
        }
    }

    /// The function a goroutine of `pid` starting at `addr` runs (see
    /// `GoTable::start_function`).
    pub fn go_start_function(&self, pid: u32, addr: u64) -> Option<String> {
        let p = self.procs.get(&pid)?;
        let m = p.lookup(addr)?;
        let Target::Module(module) = m.target else {
            return None;
        };
        let table = self.modules.go_table(module)?;
        table.start_function(table.vaddr(addr - m.start + m.offset)?)
    }

    /// The Go function at address `addr` of `pid` (the innermost one where
    /// calls were inlined); `leaf` is false for a return address.
    pub fn go_function(&self, pid: u32, addr: u64, leaf: bool) -> Option<String> {
        let p = self.procs.get(&pid)?;
        let m = p.lookup(addr)?;
        let Target::Module(module) = m.target else {
            return None;
        };
        let table = self.modules.go_table(module)?;
        let pc = table.vaddr(addr - m.start + m.offset)?;
        Some(table.frames(pc, leaf)?.first()?.name.clone())
    }

    /// The caller a frame-pointer walk missed: when the leaf `leaf` of `pid` is in
    /// Go code whose frame record is not linked in RBP (a frameless leaf, a
    /// function at its first instructions or after its epilogue), the walk
    /// starts from the caller's frame record and skips the caller, whose
    /// return address is in `stack_top` (see `GoTable::return_slot`). `next`
    /// is the walk's first return address; `stack_top` the words at `sp`.
    pub fn missing_caller(
        &mut self,
        pid: u32,
        leaf: u64,
        next: Option<u64>,
        stack_top: &[u64],
    ) -> Option<u64> {
        let p = self.procs.get(&pid)?;
        // A signal handler's entry was not called: the word at SP is the
        // signal frame's restorer, not a return address. runtime.morestack
        // switches SP to the system stack, so the word at SP is no return
        // address either (see `go_morestack_callers` for before the switch).
        if holds(&p.go.sigtramps, leaf, true) || holds(&p.go.morestack, leaf, true) {
            return None;
        }
        let m = p.lookup(leaf)?;
        let Target::Module(module) = m.target else {
            return None;
        };
        let table = self.modules.go_table(module)?;
        let pc = table.vaddr(leaf - m.start + m.offset)?;
        let ra = *stack_top.get(table.return_slot(pc)?)?;
        (ra != 0 && next != Some(ra)).then_some(ra)
    }
}

/// Fills in `summary`'s Go fields, if its process is Go (and not .NET: a
/// .NET process's Go library names no runtime): its version, where its
/// goroutine layout came from, and its goroutine states when followed.
pub(crate) fn describe(procs: &mut ProcessTable, summary: &mut crate::summary::ProcessSummary) {
    let pid = summary.pid;
    let Some(p) = procs.get(pid) else {
        return;
    };
    let (dotnet, tracked) = (p.dotnet.is_some(), p.go.tracked);
    if !dotnet && let Some(version) = procs.go_version(pid) {
        summary.runtime = Some(version.replacen("go", "go ", 1));
    }
    summary.goroutine_layout = tracked
        .then(|| procs.go_exe_table(pid))
        .flatten()
        .and_then(|t| super::layout(&t))
        .map(|l| if l.from_dwarf { "dwarf" } else { "table" });
    summary.goroutines = procs.get(pid).and_then(|p| p.go.states.as_ref()).map(|t| {
        super::states::summarize(
            t,
            |addr, leaf| procs.go_function(pid, addr, leaf),
            |addr| procs.go_start_function(pid, addr),
        )
    });
    summary.goroutines_sampled = procs
        .get(pid)
        .and_then(|p| p.go.sampling.as_ref())
        .filter(|s| s.rounds > 0)
        .map(|s| {
            s.summarize(
                |addr, leaf| procs.go_function(pid, addr, leaf),
                |addr| procs.go_start_function(pid, addr),
            )
        });
}

/// Notes on the Go processes sampled whose version's goroutine layout is not
/// known.
pub(crate) fn layout_notes(procs: &ProcessTable) -> Vec<String> {
    procs
        .iter()
        .filter(|p| p.samples > 0)
        .filter_map(|p| {
            let version = p.go.note.as_ref()?;
            Some(format!(
                "{} (pid {}) runs {version}, whose goroutine layout crossprof does not know (it knows go1.19 to go1.27): its samples carry no goroutine",
                p.name, p.pid
            ))
        })
        .collect()
}

/// Notes on the Go function tables that could not be read.
pub(crate) fn table_notes(procs: &ProcessTable) -> Vec<String> {
    procs
        .modules
        .go
        .errors()
        .into_iter()
        .map(|(module, why)| {
            format!(
                "{module}: {why}: its Go frames are named from ELF symbols only, [{module}+0x...] where it has none"
            )
        })
        .collect()
}

/// Is `addr` in one of `ranges` (functions `[start, end)`, in address
/// order)? A `leaf` is where the CPU was; any other frame's address is a
/// return address, one past its call, so `(start, end]`.
fn holds(ranges: &[(u64, u64)], addr: u64, leaf: bool) -> bool {
    let k = ranges.partition_point(|&(start, _)| if leaf { start <= addr } else { start < addr });
    k.checked_sub(1).is_some_and(|k| {
        let (start, end) = ranges[k];
        if leaf {
            addr >= start && addr < end
        } else {
            addr > start && addr <= end
        }
    })
}

/// The goroutine offsets the kernel needs for the Go executable `exe`, known
/// before it runs: its layout, and, when it is not position-independent (Go's
/// default on amd64), where its signal trampolines are. `None` when `exe` is
/// not Go or its version is not known. `poll_go` later writes the same entry
/// with the trampolines of a position-independent one.
pub(crate) fn offsets_before_exec(
    procs: &ProcessTable,
    exe: &std::path::Path,
) -> Option<probe_common::go::GoOffsets> {
    let exe = exe.canonicalize().ok()?;
    let table = procs.modules.go.get(&exe)?;
    // A fixed-address executable's bias is 0; a PIE's is known only once it
    // is mapped.
    let bias = crate::native::elf::is_fixed_address(&exe).then_some(0);
    crate::go::kernel_offsets(&table, bias)
}

/// Repairs the user stack `user` (leaf first) of `sample`, a sample of a Go
/// process (nothing changes for others): callers the frame-pointer walk
/// could not see (a frameless leaf, `runtime.morestack`), the PC a signal
/// handler interrupted, no signal return trampoline as a caller, the
/// goroutine a system stack works for, nothing past a root. Returns whether
/// the stack reaches a root (it is whole, whatever the walk said after it).
pub(crate) fn repair_stack(
    procs: &mut ProcessTable,
    sample: &crate::decode::Sample,
    user: &mut std::borrow::Cow<'_, [u64]>,
) -> bool {
    // A Go leaf without a frame record: put back the caller the
    // frame-pointer walk skipped.
    if let Some(&leaf) = sample.user.first()
        && let Some([grower, caller]) =
            procs.go_morestack_callers(sample.pid, leaf, sample.goid != 0, &sample.stack_top)
    {
        // In runtime.morestack itself: the function growing its stack and
        // its caller are the words at SP (neither has a frame record).
        let u = user.to_mut();
        u.insert(1, caller);
        u.insert(1, grower);
        if u.get(3) == Some(&caller) {
            u.remove(3);
        }
    } else if let Some(&leaf) = sample.user.first()
        && let Some(ra) = procs.missing_caller(
            sample.pid,
            leaf,
            sample.user.get(1).copied(),
            &sample.stack_top,
        )
    {
        user.to_mut().insert(1, ra);
    }
    // In a Go signal handler: the interrupted PC, which no frame record
    // holds, goes right under the handler's entry (`runtime.sigtramp`).
    // Stored one past it: every frame after the leaf is taken as a return
    // address and moved back one byte (below).
    if sample.go_signal_pc != 0
        && let Some(i) = procs.go_signal_handler_frame(sample.pid, user)
    {
        user.to_mut().insert(i + 1, sample.go_signal_pc + 1);
    }
    // A Go signal handler's return trampoline, met walking through it, is
    // no caller.
    if let Some(restorer) = procs.go_restorer(sample.pid)
        && user.iter().skip(1).any(|&ra| ra == restorer)
    {
        let mut at = 0;
        user.to_mut().retain(|&ra| {
            at += 1;
            at == 1 || ra != restorer
        });
    }
    // Go code on a thread's system stack whose frame-pointer chain stops at
    // the switch: continue with the goroutine it works for (or the thread's
    // start), as the kernel read them.
    if sample.go_switch.len() >= 2
        && let Some(&outer) = sample.user.last()
        && let Some(switch) = procs.go_function(sample.pid, outer, sample.user.len() == 1)
        && (switch == "runtime.mcall" || switch == "runtime.morestack")
    {
        // [saved PC, word at saved SP, frame-pointer chain...]: the word is
        // the grown function's return address after morestack, and nothing
        // after mcall.
        let s = &sample.go_switch;
        let user = user.to_mut();
        user.push(s[0]);
        if switch == "runtime.morestack" && s[1] != 0 {
            user.push(s[1]);
        }
        user.extend_from_slice(&s[2..]);
    }
    // Nothing calls a Go stack's root: frames past it are junk.
    let (keep, rooted) = procs.go_stack_len(sample.pid, user);
    if keep < user.len() {
        user.to_mut().truncate(keep);
    }
    // Wrappers the toolchain generated are left out, as Go's own profiles
    // leave them (`syscall.Syscall6;syscall.Syscall6` is an ABI wrapper
    // calling the function of the same name).
    if let Some(wrappers) = procs.go_wrapper_frames(sample.pid, user) {
        let mut at = 0;
        user.to_mut().retain(|_| {
            at += 1;
            !wrappers.contains(&(at - 1))
        });
    }
    rooted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_inside_its_function_and_a_return_address_one_past_a_call() {
        let ranges = [(0x100, 0x180), (0x200, 0x240)];
        for (addr, leaf, inside) in [
            (0x100, true, true),
            (0x17f, true, true),
            (0x180, true, false),
            (0x100, false, false),
            (0x180, false, true),
            (0x1ff, true, false),
            (0x240, false, true),
            (0x241, false, false),
            (0x0ff, true, false),
        ] {
            assert_eq!(holds(&ranges, addr, leaf), inside, "{addr:#x} leaf {leaf}");
        }
        assert!(!holds(&[], 0x100, true));
    }
}
