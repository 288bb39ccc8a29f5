//! Processes as first seen: their name, executable and executable mappings
//! (each mapped file a module of [`super::modules`], shared between processes
//! that map it), and the slots the runtimes keep per process
//! ([`crate::runtime`]).
//!
//! Capturing at first sight matters: once a process exits its `/proc/PID` is gone,
//! and a binary replaced on disk (an upgrade) is no longer the code that ran. An
//! open handle (through `/proc/PID/map_files`) keeps the very file that was mapped,
//! so symbolization works after the process exits or the file is deleted.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

pub use super::modules::{Module, ModuleTable};
use super::{maps::parse_maps, unwind::ObjectMapping};
use crate::{
    dotnet::DotnetProcess,
    frame::{FrameRef, Interner, Marker, ModuleId},
};

/// A .NET jitdump (`/tmp/jit-PID.dump`): the runtime maps it executable, as
/// perf's convention wants, but it holds no code. Not a module: each process
/// has its own, and holding each open would keep every exited process's file.
fn is_jitdump(path: &str) -> bool {
    let name = path
        .trim_end_matches(" (deleted)")
        .rsplit('/')
        .next()
        .unwrap_or("");
    name.strip_prefix("jit-")
        .and_then(|n| n.strip_suffix(".dump"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Module(ModuleId),
    /// A managed assembly (`*.dll`, a PE file) mapped by the .NET loader: its
    /// ReadyToRun code is named by the runtime, not by ELF symbols.
    Assembly(ModuleId),
    Vdso,
    /// Anonymous or non-file executable memory (JIT code, memfd).
    Anonymous,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecMapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) offset: u64,
    pub(crate) target: Target,
}

/// A process as captured.
#[derive(Debug)]
pub struct Process {
    /// pid (tgid).
    pub pid: u32,
    /// The process name: its main thread's comm.
    pub name: Arc<str>,
    /// `/proc/PID/exe` at capture.
    pub exe: Option<String>,
    /// The container its cgroup names, if any (read at its first capture).
    pub container: Option<Arc<crate::containers::Container>>,
    /// Samples seen.
    pub samples: u64,
    /// How its samples' user stacks ended (see [`StackEnds`]).
    pub stack_ends: StackEnds,
    /// The comm of the sample it was last read for (a thread's name, 16
    /// bytes at most).
    pub(crate) sample_comm: String,
    /// Times it was read again because a sample's comm changed (see
    /// [`ProcessTable::of_sample`]).
    pub(crate) comm_reads: u8,
    /// Samples taken in a .NET GC pause.
    pub gc_samples: u64,
    /// The .NET runtime, if the process runs one.
    pub dotnet: Option<DotnetProcess>,
    /// It ran .NET, and exited ([`ProcessTable::retire`] let go of its state).
    pub was_dotnet: bool,
    /// Its Go state (see [`crate::go::process`]).
    pub go: crate::go::process::GoProcess,
    /// Checked for `.eh_frame` unwinding (the kernel given its objects' rules).
    unwind_checked: bool,
    pub(crate) mappings: Vec<ExecMapping>,
    captured: Instant,
    pub(crate) first_captured: Instant,
}

/// How a process's user stacks ended, sample by sample, by the walk's own
/// word (the record's `FLAG_USER_*` bits): what stops the walks of a
/// program whose stacks are not whole (`summary.json`: `user_stack_ends`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StackEnds {
    /// At a frame its unwind rules say has no caller (`DW_CFA_undefined rip`).
    pub outermost_rule: u64,
    /// Otherwise, at its own end: a zero frame pointer, the end of a
    /// frame-pointer walk, a frame whose return address is 0.
    pub walk_end: u64,
    /// At a frame with no rule and no usable frame pointer.
    pub no_unwind_info: u64,
    /// At the depth limit.
    pub depth_limit: u64,
    /// After a managed leaf in a prolog or epilog.
    pub leaf_in_prolog: u64,
    /// The stack could not be read at all.
    pub unreadable: u64,
}

impl StackEnds {
    /// Counts a sample whose record has `flags` (and a user stack).
    pub fn add(&mut self, flags: u32) {
        use probe_common::native::{
            FLAG_USER_LEAF_EDGE, FLAG_USER_NO_UNWIND_INFO, FLAG_USER_OUTERMOST,
            FLAG_USER_STACK_ERROR, FLAG_USER_TRUNCATED,
        };
        let slot = if flags & FLAG_USER_STACK_ERROR != 0 {
            &mut self.unreadable
        } else if flags & FLAG_USER_TRUNCATED != 0 {
            &mut self.depth_limit
        } else if flags & FLAG_USER_NO_UNWIND_INFO != 0 {
            &mut self.no_unwind_info
        } else if flags & FLAG_USER_LEAF_EDGE != 0 {
            &mut self.leaf_in_prolog
        } else if flags & FLAG_USER_OUTERMOST != 0 {
            &mut self.outermost_rule
        } else {
            &mut self.walk_end
        };
        *slot += 1;
    }

    /// The ways that happened, by their `summary.json` names, with their
    /// counts.
    pub fn counted(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [
            ("outermost_rule", self.outermost_rule),
            ("walk_end", self.walk_end),
            ("no_unwind_info", self.no_unwind_info),
            ("depth_limit", self.depth_limit),
            ("leaf_in_prolog", self.leaf_in_prolog),
            ("unreadable", self.unreadable),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .collect()
    }
}

impl Process {
    pub(crate) fn lookup(&self, addr: u64) -> Option<ExecMapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = *self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

/// Re-reading a process's maps on an unknown address happens at most this often:
/// an address outside every mapping is either new code (dlopen, exec) or garbage
/// from a broken frame chain, and the latter must not cost a read per sample.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// In a process's first second (a command captured right after `exec`, before
/// the dynamic loader has mapped its libraries), maps are re-read this often.
const EARLY_REFRESH_INTERVAL: Duration = Duration::from_millis(5);
const EARLY: Duration = Duration::from_secs(1);

/// Every process seen so far.
#[derive(Debug, Default)]
pub struct ProcessTable {
    pub(crate) procs: HashMap<u32, Process>,
    /// The files they map.
    pub modules: ModuleTable,
    /// `NAME (TID)` of threads, by (tid, comm at the sample).
    threads: Interner,
    /// `KEY=VALUE` texts of `--group-by label:KEY` frames.
    label_texts: Interner,
    thread_ids: HashMap<(u32, [u8; 16]), u32>,
    /// Where processes' `/proc` files are read (see [`crate::replay`]).
    pub source: crate::replay::source::ProcSource,
    /// The reads made when the kernel announced a process, for one that
    /// exited before it was read here.
    pub announced: crate::replay::source::AnnouncedReads,
    /// Its .NET part (see [`crate::dotnet::table`]).
    pub dotnet: crate::dotnet::frames::DotnetTable,
    /// Frames a stack walk ended at because their unwind rules say there is
    /// no caller (`FLAG_USER_OUTERMOST`): thread roots, named or not (a
    /// stripped libc's `clone3` is `[libc.so.6+0x...]`).
    outermost: std::collections::HashSet<FrameRef>,
}

impl ProcessTable {
    /// A table whose processes' `/proc` files are read from `source`.
    pub fn reading(source: crate::replay::source::ProcSource) -> Self {
        ProcessTable {
            source,
            ..Default::default()
        }
    }

    /// Notes that a stack walk ended at `frame` by its rules (see
    /// `FLAG_USER_OUTERMOST`): stacks that start there are complete.
    pub fn note_outermost(&mut self, frame: FrameRef) {
        // Bounded by the code's distinct outermost frames (a few per object).
        if self.outermost.len() < 4096 {
            self.outermost.insert(frame);
        }
    }

    /// Did a walk end at `frame` by its rules?
    pub fn is_outermost(&self, frame: FrameRef) -> bool {
        self.outermost.contains(&frame)
    }

    /// The process `pid`, captured now if this is its first sample. `fallback_name`
    /// names it if it is already gone.
    pub fn get_or_capture(&mut self, pid: u32, fallback_name: &str) -> &mut Process {
        if !self.procs.contains_key(&pid) {
            // pid 0 is every CPU's idle task (swapper/0, swapper/1, ...): one root.
            let name = if pid == 0 { "swapper" } else { fallback_name };
            let mut p = Process {
                pid,
                name: name.into(),
                exe: None,
                samples: 0,
                gc_samples: 0,
                dotnet: None,
                was_dotnet: false,
                unwind_checked: false,
                go: Default::default(),
                mappings: Vec::new(),
                captured: Instant::now(),
                first_captured: Instant::now(),
                container: self
                    .source
                    .is_live()
                    .then(|| crate::containers::of_process(pid))
                    .flatten(),
                sample_comm: String::new(),
                stack_ends: StackEnds::default(),
                comm_reads: 0,
            };
            let follow = self.dotnet.follow();
            Self::capture(
                &mut self.modules,
                &self.source,
                &self.announced,
                &mut p,
                follow,
            );
            // The name it was read under (its comm then, not a placeholder).
            p.sample_comm = p.name.to_string();
            self.procs.insert(pid, p);
        }
        self.procs.get_mut(&pid).expect("inserted above")
    }

    /// The process of a sample of `pid` whose thread is named `comm`, read
    /// at first sight (see [`ProcessTable::get_or_capture`]). If it was read
    /// for a sample of another name, it may have `exec`'d since (a forked
    /// child read at its first sample, before its `exec`: a whole-system
    /// recording reads a process at once, and announces no exec), so it is
    /// read again, at most twice per process (a process whose threads have
    /// names of their own costs two reads, not one per sample).
    pub fn of_sample(&mut self, pid: u32, comm: &str) -> &mut Process {
        let follow = self.dotnet.follow();
        if let Some(p) = self.procs.get_mut(&pid)
            && p.comm_reads < 2
            && p.sample_comm != comm
        {
            p.comm_reads += 1;
            p.sample_comm = comm.to_owned();
            Self::capture(&mut self.modules, &self.source, &self.announced, p, follow);
        }
        self.get_or_capture(pid, comm)
    }

    /// Process `pid` has just `exec`'d (the kernel's `Exec` record, sent with
    /// a wakeup): read it at once if it is new, named by its new comm. A
    /// process that lives a few milliseconds is gone when its samples are
    /// drained; read here, its frames are named like a long-lived one's. (One
    /// seen before the exec — a forked child sampled in the microseconds
    /// before — is read again as a `dlopen` would be: its maps, not its Go
    /// check, which keeps what the pre-exec program said.)
    pub fn exec(&mut self, pid: u32) {
        let follow = self.dotnet.follow();
        if let Some(p) = self.procs.get_mut(&pid) {
            Self::capture(&mut self.modules, &self.source, &self.announced, p, follow);
            return;
        }
        // The kernel's own file, 16 bytes at most: the name it keeps if it is
        // gone before its maps are read (and was not read when announced).
        let comm = self.source.comm(pid).unwrap_or_default();
        self.get_or_capture(pid, &comm);
    }

    /// A .NET process found is followed as `dotnet` says.
    fn capture(
        modules: &mut ModuleTable,
        source: &crate::replay::source::ProcSource,
        announced: &crate::replay::source::AnnouncedReads,
        p: &mut Process,
        dotnet: crate::dotnet::Follow,
    ) {
        let pid = p.pid;
        p.captured = Instant::now();
        let read = source.read(pid, announced);
        let Some(text) = read.maps else {
            return;
        };
        if let Some(comm) = read.comm {
            // The process names itself (prctl): escaped for every output.
            p.name = crate::frame::sanitize(&comm).into();
        }
        p.exe = read.exe;
        let entries = parse_maps(&text);
        let mut mappings: Vec<ExecMapping> = entries
            .iter()
            .filter(|e| e.is_exec())
            .map(|e| ExecMapping {
                start: e.start,
                end: e.end,
                offset: e.offset,
                target: if e.path == "[vdso]" {
                    Target::Vdso
                } else if e.is_file() && e.path.ends_with(".dll") {
                    Target::Assembly(modules.intern(pid, e, source))
                } else if e.is_file() && !e.path.starts_with("/memfd:") && !is_jitdump(&e.path) {
                    Target::Module(modules.intern(pid, e, source))
                } else {
                    Target::Anonymous
                },
            })
            .collect();
        // A process that has exited (a zombie: its maps read empty) keeps
        // the mappings it had: its last records are still to be named.
        if mappings.is_empty() && !p.mappings.is_empty() {
            return;
        }
        mappings.sort_by_key(|m| m.start);
        p.mappings = mappings;
        // New mappings (dlopen): the kernel's rules are refreshed.
        p.unwind_checked = false;
        crate::dotnet::frames::maps_read(
            &mut p.dotnet,
            p.was_dotnet,
            pid,
            &entries,
            dotnet,
            source,
        );
    }

    /// Lets go of the state of process `pid` (it exited) but its name and
    /// runtime: its .NET state (code tables, perf map, open files, event
    /// session) goes now, the rest with [`ProcessTable::forget`] once its
    /// last stacks are folded.
    pub fn retire(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.go.exited();
            if crate::dotnet::frames::retire(&mut p.dotnet) {
                p.was_dotnet = true;
            }
        }
    }

    /// The module of `pid`'s executable (`/proc/PID/exe` at capture), if
    /// the process maps it.
    pub fn exe_module(&self, pid: u32) -> Option<ModuleId> {
        let p = self.procs.get(&pid)?;
        let exe = p.exe.as_deref()?;
        p.mappings.iter().find_map(|m| match m.target {
            Target::Module(id) if self.modules.get(id).path == Path::new(exe) => Some(id),
            _ => None,
        })
    }

    /// Forgets process `pid` (it exited); the modules it mapped stay (other
    /// processes share them, and frames already counted name offsets in them).
    pub fn forget(&mut self, pid: u32) {
        self.retire(pid);
        self.procs.remove(&pid);
        self.announced.forget(pid);
    }

    /// The `--per-thread` frame of thread `tid` named `comm` when it was sampled
    /// (a thread renamed later appears under each name it ran with).
    pub fn thread_frame(&mut self, tid: u32, comm: &[u8; 16]) -> FrameRef {
        if let Some(&id) = self.thread_ids.get(&(tid, *comm)) {
            return FrameRef::Thread(id);
        }
        let name: Arc<str> = format!("{} ({tid})", crate::decode::comm_to_string(comm)).into();
        let id = self.threads.intern(&name);
        self.thread_ids.insert((tid, *comm), id);
        FrameRef::Thread(id)
    }

    /// A frame level showing `text` as is (e.g. `[syscall]`).
    pub fn text_frame(&mut self, text: &str) -> FrameRef {
        FrameRef::Label(self.label_texts.intern(&Arc::from(text)))
    }

    /// The text behind a [`FrameRef::Label`] id.
    pub fn label_text(&self, id: u32) -> &str {
        self.label_texts.get(id)
    }

    /// The name behind a [`FrameRef::Thread`] id.
    pub fn thread_name(&self, id: u32) -> &str {
        self.threads.get(id)
    }

    /// Gives the kernel the `.eh_frame` rules of every process seen for the
    /// first time or whose maps changed: native and .NET processes, and Go
    /// processes with C parts (cgo; Go binaries without `.eh_frame` keep the
    /// frame-pointer walk). The first failure is returned.
    pub fn poll_native_unwind(
        &mut self,
        tables: &mut super::unwind::UnwindTables,
    ) -> Result<(), super::unwind::UnwindTableError> {
        use super::unwind::UnwindTableError;
        tables.begin_poll();
        let mut result = Ok(());
        for p in self.procs.values_mut() {
            // A .NET process is never Go-checked: its runtime was found first.
            if p.unwind_checked || p.pid == 0 || (!p.go.checked && p.dotnet.is_none()) {
                continue;
            }
            p.unwind_checked = true;
            let go_tables: Vec<_> = p
                .mappings
                .iter()
                .map(|m| match m.target {
                    Target::Module(id) => self.modules.go_table(id),
                    _ => None,
                })
                .collect();
            let mappings: Vec<ObjectMapping<'_>> = p
                .mappings
                .iter()
                .zip(&go_tables)
                .filter_map(|(m, go)| match m.target {
                    Target::Module(id) => Some(ObjectMapping {
                        start: m.start,
                        end: m.end,
                        offset: m.offset,
                        path: self.modules.get(id).open_path.as_path(),
                        go: go.as_ref(),
                    }),
                    Target::Vdso if Some(m.end.saturating_sub(m.start)) == tables.vdso_len() => {
                        Some(ObjectMapping {
                            start: m.start,
                            end: m.end,
                            offset: 0,
                            path: std::path::Path::new(super::rules::VDSO),
                            go: None,
                        })
                    }
                    _ => None,
                })
                .collect();
            p.go.find_roots(&mappings);
            match p.go.wants_rules(&mappings, tables) {
                Ok(true) => {}
                Ok(false) => continue,
                // Still being read: asked again at the next poll.
                Err(UnwindTableError::Pending) => {
                    p.unwind_checked = false;
                    continue;
                }
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                    continue;
                }
            }
            match tables.add_process(p.pid, &mappings) {
                Ok(_) => {}
                Err(UnwindTableError::Pending) => p.unwind_checked = false,
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        tables.end_poll();
        result
    }

    /// The frame for user address `addr` of `pid` (already captured). An address
    /// outside every known mapping triggers one re-read of the maps (rate-limited),
    /// then counts as unknown.
    pub fn user_frame(&mut self, pid: u32, addr: u64) -> FrameRef {
        let follow = self.dotnet.follow();
        let Some(p) = self.procs.get_mut(&pid) else {
            return FrameRef::Marker(Marker::Unknown);
        };
        let mut found = p.lookup(addr);
        let interval = if p.first_captured.elapsed() < EARLY {
            EARLY_REFRESH_INTERVAL
        } else {
            REFRESH_INTERVAL
        };
        // A replay reads again at every miss: it gets what the recording
        // had read by then, so a read the recording did not make changes
        // nothing.
        if found.is_none() && (!self.source.is_live() || p.captured.elapsed() >= interval) {
            Self::capture(&mut self.modules, &self.source, &self.announced, p, follow);
            found = p.lookup(addr);
        }
        match found {
            Some(ExecMapping {
                start,
                offset,
                target: Target::Module(module),
                ..
            }) => FrameRef::Elf {
                module,
                offset: addr - start + offset,
            },
            Some(ExecMapping {
                target: Target::Vdso,
                ..
            }) => FrameRef::Marker(Marker::Vdso),
            // ReadyToRun code, named by the runtime's jitdump.
            Some(ExecMapping {
                start,
                offset,
                target: Target::Assembly(module),
                ..
            }) => p
                .dotnet
                .as_mut()
                .and_then(|dn| self.dotnet.precompiled_frame(dn, addr))
                .unwrap_or(FrameRef::Elf {
                    module,
                    offset: addr - start + offset,
                }),
            // JIT code: anonymous or memfd memory (W^X), named by the runtime.
            Some(ExecMapping {
                target: Target::Anonymous,
                ..
            })
            | None => p
                .dotnet
                .as_mut()
                .and_then(|dn| self.dotnet.jit_frame(dn, addr))
                .unwrap_or(FrameRef::Marker(Marker::Unknown)),
        }
    }

    /// Every process seen, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    /// Reads `pid`'s maps again now (a process captured before its libraries
    /// were mapped).
    pub fn recapture(&mut self, pid: u32) {
        let follow = self.dotnet.follow();
        if let Some(p) = self.procs.get_mut(&pid) {
            Self::capture(&mut self.modules, &self.source, &self.announced, p, follow);
        }
    }

    /// Reads `pid`'s maps again, unless they were read less than `every`
    /// ago; returns whether it did.
    pub fn recapture_rate_limited(&mut self, pid: u32, every: Duration) -> bool {
        let follow = self.dotnet.follow();
        match self.procs.get_mut(&pid) {
            Some(p) if p.captured.elapsed() >= every => {
                Self::capture(&mut self.modules, &self.source, &self.announced, p, follow);
                true
            }
            Some(_) => false,
            // Gone, or not seen yet: nothing to re-read.
            None => true,
        }
    }

    /// Every process captured, to update.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.procs.values_mut()
    }

    /// The process `pid`, if seen.
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// The name of process `pid` (its main thread's comm), empty if unseen.
    pub fn name_of(&self, pid: u32) -> String {
        self.get(pid)
            .map(|p| p.name.to_string())
            .unwrap_or_default()
    }

    /// The process `pid`, if seen, to update.
    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Process> {
        self.procs.get_mut(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_stack_end_is_counted_by_the_walk_s_word() {
        use probe_common::native::{
            FLAG_USER_LEAF_EDGE, FLAG_USER_NO_UNWIND_INFO, FLAG_USER_OUTERMOST,
            FLAG_USER_STACK_ERROR, FLAG_USER_TRUNCATED,
        };
        let mut e = StackEnds::default();
        for flags in [
            0,
            FLAG_USER_OUTERMOST,
            FLAG_USER_OUTERMOST,
            FLAG_USER_NO_UNWIND_INFO,
            FLAG_USER_TRUNCATED | FLAG_USER_NO_UNWIND_INFO,
            FLAG_USER_LEAF_EDGE,
            FLAG_USER_STACK_ERROR | FLAG_USER_TRUNCATED,
        ] {
            e.add(flags);
        }
        assert_eq!(
            (
                e.walk_end,
                e.outermost_rule,
                e.no_unwind_info,
                e.depth_limit,
                e.leaf_in_prolog,
                e.unreadable
            ),
            (1, 2, 1, 1, 1, 1)
        );
        assert_eq!(e.counted()["outermost_rule"], 2);
        assert_eq!(e.counted().len(), 6);
        assert!(StackEnds::default().counted().is_empty());
    }

    #[test]
    fn jitdumps_are_not_modules() {
        assert!(is_jitdump("/tmp/jit-4242.dump"));
        assert!(is_jitdump("/tmp/jit-4242.dump (deleted)"));
        assert!(!is_jitdump("/usr/lib/jit-tools.dump"));
        assert!(!is_jitdump("/usr/lib/libjit.so"));
    }

    #[test]
    fn maps_own_code_to_file_offsets_of_one_shared_module() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        table.get_or_capture(me, "fallback");
        let f = maps_own_code_to_file_offsets_of_one_shared_module as *const () as usize as u64;
        let FrameRef::Elf { module, offset } = table.user_frame(me, f) else {
            panic!("own code not in an ELF mapping");
        };
        assert!(offset < f, "file offset {offset:#x} of {f:#x}");
        let m = table.modules.get(module);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(m.path, exe);
        // Still the very file that is mapped: symbolized through its own path, so
        // that debug files next to it are found.
        assert_eq!(m.open_path, exe);
        // Capturing the same file again through another pid entry reuses the module.
        let before = table.modules.len();
        table.procs.remove(&me);
        table.get_or_capture(me, "fallback");
        assert_eq!(table.modules.len(), before);
        // The name comes from /proc, not from the fallback.
        assert_ne!(table.get(me).unwrap().name.as_ref(), "fallback");
    }

    #[test]
    fn unknown_addresses_and_pids_are_markers() {
        let mut table = ProcessTable::default();
        assert_eq!(
            table.user_frame(1, 0x1000),
            FrameRef::Marker(Marker::Unknown)
        );
        let me = std::process::id();
        table.get_or_capture(me, "x");
        assert_eq!(
            table.user_frame(me, 0x10),
            FrameRef::Marker(Marker::Unknown)
        );
    }
}
