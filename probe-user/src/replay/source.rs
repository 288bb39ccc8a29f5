//! What a capture holds, written ([`Capture`]) and read back
//! ([`Snapshot`]), and where the process table reads a process's `/proc`
//! files ([`ProcSource`]: live, live and captured, or from a capture). See
//! [`super`] for what a capture is.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::files::{Refused, TargetFile, read_at_most};

/// The records, as the kernel sent them.
pub const RING: &str = "ring.bin";
/// The process table's reads of `/proc`.
pub const PROCS: &str = "procs.jsonl";
/// The files processes mapped, with their build ids.
pub const FILES: &str = "files.jsonl";
/// The kernel symbols the recorded stacks need.
pub const KALLSYMS: &str = "kallsyms";
/// The Go pprof label sets read from targets' memory, by process and
/// `g.labels` pointer.
pub const LABELS: &str = "labels.jsonl";
/// The bytes read from the files runtimes write for crossprof (a .NET
/// perf map or jitdump): see [`RuntimeFile`].
pub const RUNTIME: &str = "runtime.bin";
/// The GC pauses of .NET processes, as their event sessions saw them.
pub const GC: &str = "gc.jsonl";
/// The recording's mode, frequency and `--group-by` levels (`mode=cpu`,
/// `freq=99`, `group_by=goroutine,state`, a line each).
pub const SESSION: &str = "session";

/// Most bytes of one ring record read back (the largest record is a sample
/// header and 2 × 127 + 50 frames: a few KiB).
const MAX_RECORD: usize = 64 << 10;

/// One read of a process's `/proc` files (`None`: unreadable).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRead {
    /// Its pid.
    pub pid: u32,
    /// When it was made (see `moment`): a replay gives the last read
    /// made by then.
    #[serde(default)]
    pub at: u64,
    /// `/proc/PID/maps`.
    pub maps: Option<String>,
    /// `/proc/PID/comm`, its newline removed.
    pub comm: Option<String>,
    /// `/proc/PID/exe`'s target.
    pub exe: Option<String>,
}

/// `/proc/PID/comm` now, its newline removed.
fn live_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_owned())
}

impl ProcRead {
    /// Reads process `pid`'s files now.
    pub(crate) fn live(pid: u32) -> Self {
        ProcRead {
            pid,
            at: 0,
            maps: std::fs::read_to_string(format!("/proc/{pid}/maps")).ok(),
            comm: live_comm(pid),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|e| e.to_string_lossy().into_owned()),
        }
    }
}

impl ProcRead {
    /// Did the process have maps to read (not gone, not a zombie)?
    fn has_maps(&self) -> bool {
        self.maps.as_deref().is_some_and(|m| !m.is_empty())
    }
}

/// Most processes [`AnnouncedReads`] keeps a read of: a burst of process
/// starts the pipeline has not caught up with (a build's compilers), beyond
/// which the oldest read is let go.
const MAX_ANNOUNCED_READS: usize = 4096;

/// The reads made the moment the kernel announced a process (its `exec`, or
/// code it mapped), by a thread of their own (`session::announce`): a
/// process that lives milliseconds has exited by the time the sample pipeline
/// gets to it (it may be busy reading a Go binary's tables for tens of
/// milliseconds), and its samples are named from this read. Kept until the
/// process table has read the process itself, or forgets it; bounded.
#[derive(Clone, Debug, Default)]
pub struct AnnouncedReads {
    reads: Arc<Mutex<AnnouncedMap>>,
}

#[derive(Debug, Default)]
struct AnnouncedMap {
    /// By pid: the order the read was made in, and the read.
    by_pid: HashMap<u32, (u64, ProcRead)>,
    next: u64,
}

impl AnnouncedReads {
    /// Keeps `read` (one with maps) as the latest of its process.
    pub(crate) fn keep(&self, read: ProcRead) {
        if !read.has_maps() {
            return;
        }
        let mut m = self.reads.lock().expect("announced reads");
        if m.by_pid.len() >= MAX_ANNOUNCED_READS
            && !m.by_pid.contains_key(&read.pid)
            && let Some(oldest) = m
                .by_pid
                .iter()
                .min_by_key(|(_, (n, _))| *n)
                .map(|(p, _)| *p)
        {
            m.by_pid.remove(&oldest);
        }
        let n = m.next;
        m.next += 1;
        m.by_pid.insert(read.pid, (n, read));
    }

    /// Process `pid`'s latest announced read, if one is kept.
    fn latest(&self, pid: u32) -> Option<ProcRead> {
        let m = self.reads.lock().expect("announced reads");
        m.by_pid.get(&pid).map(|(_, r)| r.clone())
    }

    /// Lets go of process `pid`'s read (read since, or gone).
    pub(crate) fn forget(&self, pid: u32) {
        self.reads
            .lock()
            .expect("announced reads")
            .by_pid
            .remove(&pid);
    }

    /// How many reads are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.reads.lock().expect("announced reads").by_pid.len()
    }
}

/// A process's Go label sets as a capture read them, by `g.labels` pointer
/// (`None`: the set did not read).
pub type CapturedSets = HashMap<u64, Option<Vec<(String, String)>>>;

/// A Go label set read from a process's memory, as captured (`None`: it did
/// not read).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CapturedLabels {
    pid: u32,
    ptr: u64,
    labels: Option<Vec<(String, String)>>,
}

/// A .NET process's GC pauses, as captured when its event session ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CapturedGc {
    pid: u32,
    /// Each pause, `(start_ns, end_ns)` (CLOCK_MONOTONIC).
    pauses: Vec<(u64, u64)>,
}

/// A file a process mapped, as captured.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CapturedFile {
    /// The path it was mapped from.
    path: String,
    /// Its build id (hex), if it has one.
    build_id: Option<String>,
}

/// Why a capture could not be written or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file of the capture could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A line of `procs.jsonl` or `files.jsonl` is not what a capture writes.
    #[error("{path}, line {line}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its line (of `ring.bin`: its record), from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A file the capture named is another build now.
    #[error(
        "{path} is not the build the capture was made with (build id {found}, captured {captured}): rebuild it as it was, or capture again (CROSSPROF_BLESS=1)"
    )]
    OtherBuild {
        /// The file.
        path: String,
        /// Its build id now.
        found: String,
        /// Its build id when captured.
        captured: String,
    },
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A capture being written (`record --capture DIR`): like every output
/// crossprof writes as root, each file is made under a random name in the
/// folder held open (never through a link) and renamed into place at the end.
#[derive(Debug)]
pub struct Capture {
    dir: PathBuf,
    folder: crate::files::OutFolder,
    /// Each file being written, and its temporary name.
    ring: (BufWriter<File>, String),
    procs: (BufWriter<File>, String),
    files: (BufWriter<File>, String),
    labels: (BufWriter<File>, String),
    runtime: (BufWriter<File>, String),
    gc: (BufWriter<File>, String),
    files_seen: BTreeSet<String>,
    /// Records written so far.
    records: u64,
    /// The last record has been taken (what is read now was read after it).
    taken: bool,
    /// The first write that failed (the capture is then incomplete).
    failed: Option<String>,
}

impl Capture {
    /// Starts a capture in `dir` (created; its files replaced) of a
    /// recording in `mode` (its `--mode` name) at `freq` Hz grouped by
    /// `group_by` (its `--group-by` names).
    pub fn create(
        dir: &Path,
        mode: &str,
        freq: u64,
        group_by: &[String],
    ) -> Result<Self, ReplayError> {
        use std::os::unix::fs::DirBuilderExt as _;
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let folder = crate::files::OutFolder::open(dir).map_err(io(dir))?;
        let open = |name: &str| -> Result<(BufWriter<File>, String), ReplayError> {
            let (file, tmp) = folder.create_temp(name).map_err(io(&dir.join(name)))?;
            Ok((BufWriter::new(file), tmp))
        };
        let (mut session, tmp) = open(SESSION)?;
        let group_by = group_by.join(",");
        write!(session, "mode={mode}\nfreq={freq}\ngroup_by={group_by}\n")
            .and_then(|()| session.flush())
            .and_then(|()| folder.rename(&tmp, SESSION))
            .map_err(io(&dir.join(SESSION)))?;
        Ok(Capture {
            dir: dir.to_owned(),
            ring: open(RING)?,
            procs: open(PROCS)?,
            files: open(FILES)?,
            labels: open(LABELS)?,
            runtime: open(RUNTIME)?,
            gc: open(GC)?,
            folder,
            files_seen: BTreeSet::new(),
            records: 0,
            taken: false,
            failed: None,
        })
    }

    fn note(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r
            && self.failed.is_none()
        {
            self.failed = Some(e.to_string());
        }
    }

    /// A ring record, as drained.
    pub fn record(&mut self, bytes: &[u8]) {
        self.records += 1;
        self.taken = false;
        let ring = &mut self.ring.0;
        let r = ring
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .and_then(|()| ring.write_all(bytes));
        self.note(r);
    }

    fn proc_read(&mut self, read: &ProcRead) {
        let read = ProcRead {
            at: moment(self.records, self.taken),
            ..read.clone()
        };
        let line = serde_json::to_string(&read).expect("plain data");
        let r = writeln!(self.procs.0, "{line}");
        self.note(r);
    }

    /// A file a process mapped from `path`, as the handle `file` kept open
    /// (its build id read through the handle, never the path again).
    pub fn file(&mut self, path: &str, file: Option<&File>) {
        if !self.files_seen.insert(path.to_owned()) {
            return;
        }
        let captured = CapturedFile {
            path: path.to_owned(),
            build_id: file
                .and_then(crate::native::elf::MappedFile::of)
                .and_then(|m| crate::native::elf::build_id_in(m.bytes())),
        };
        let line = serde_json::to_string(&captured).expect("plain data");
        let r = writeln!(self.files.0, "{line}");
        self.note(r);
    }

    /// A Go label set read from process `pid`'s memory at `ptr`.
    pub fn labels(&mut self, pid: u32, ptr: u64, labels: Option<&[(String, String)]>) {
        let captured = CapturedLabels {
            pid,
            ptr,
            labels: labels.map(<[_]>::to_vec),
        };
        let line = serde_json::to_string(&captured).expect("plain data");
        let r = writeln!(self.labels.0, "{line}");
        self.note(r);
    }

    /// `bytes` read at `offset` from process `pid`'s runtime file `kind`:
    /// a chunk of `runtime.bin`, `u32 pid, u8 kind, u64 moment (see
    /// [`moment`]), u64 offset,
    /// u32 length, u32 deflated length` (little-endian) and the deflated
    /// bytes.
    fn runtime_read(&mut self, pid: u32, kind: RuntimeKind, offset: u64, bytes: &[u8]) {
        let packed = miniz_oxide::deflate::compress_to_vec(bytes, 6);
        let mut head = Vec::with_capacity(CHUNK_HEAD);
        head.extend(pid.to_le_bytes());
        head.push(kind as u8);
        head.extend(moment(self.records, self.taken).to_le_bytes());
        head.extend(offset.to_le_bytes());
        head.extend((bytes.len() as u32).to_le_bytes());
        head.extend((packed.len() as u32).to_le_bytes());
        let w = &mut self.runtime.0;
        let r = w.write_all(&head).and_then(|()| w.write_all(&packed));
        self.note(r);
    }

    /// .NET process `pid`'s GC pauses, as its event session saw them.
    fn gc_pauses(&mut self, pid: u32, pauses: &[(u64, u64)]) {
        let line = serde_json::to_string(&CapturedGc {
            pid,
            pauses: pauses.to_vec(),
        })
        .expect("plain data");
        let r = writeln!(self.gc.0, "{line}");
        self.note(r);
    }

    /// Ends the capture: the kernel symbols of `kernel_addrs` (from
    /// `/proc/kallsyms`) written, every file flushed.
    pub fn finish(&mut self, kernel_addrs: &BTreeSet<u64>) -> Result<(), ReplayError> {
        let kallsyms = Path::new("/proc/kallsyms");
        let text = std::fs::read_to_string(kallsyms).map_err(io(kallsyms))?;
        let path = self.dir.join(KALLSYMS);
        let (mut file, tmp) = self.folder.create_temp(KALLSYMS).map_err(io(&path))?;
        file.write_all(kallsyms_for(&text, kernel_addrs).as_bytes())
            .and_then(|()| self.folder.rename(&tmp, KALLSYMS))
            .map_err(io(&path))?;
        for ((w, tmp), name) in [
            (&mut self.ring, RING),
            (&mut self.procs, PROCS),
            (&mut self.files, FILES),
            (&mut self.labels, LABELS),
            (&mut self.runtime, RUNTIME),
            (&mut self.gc, GC),
        ] {
            w.flush()
                .and_then(|()| self.folder.rename(tmp, name))
                .map_err(io(&self.dir.join(name)))?;
        }
        match self.failed.take() {
            Some(why) => Err(ReplayError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(why),
            }),
            None => Ok(()),
        }
    }
}

/// The lines of `kallsyms` (`/proc/kallsyms` text) that name `addrs`: for
/// each address, the text symbol at or before it and the one after (where
/// its function ends), in address order.
pub fn kallsyms_for(kallsyms: &str, addrs: &BTreeSet<u64>) -> String {
    let mut syms: Vec<(u64, &str)> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then_some((addr, l))
        })
        .collect();
    syms.sort_by_key(|&(a, _)| a);
    let mut keep = BTreeSet::new();
    for &addr in addrs {
        let i = syms.partition_point(|&(a, _)| a <= addr);
        if i > 0 {
            keep.insert(i - 1);
            if i < syms.len() {
                keep.insert(i);
            }
        }
    }
    keep.into_iter()
        .map(|i| format!("{}\n", syms[i].1))
        .collect()
}

/// A capture read back.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    /// Per process, its reads in order.
    reads: HashMap<u32, Vec<ProcRead>>,
    /// Records replayed so far.
    now: u64,
    /// The last of them has been taken.
    taken: bool,
    files: Vec<CapturedFile>,
    /// Per process, its label sets by pointer.
    labels: HashMap<u32, CapturedSets>,
    /// Per process and runtime file, the chunks read, in order.
    runtime: RuntimeReads,
    /// Per .NET process, its GC pauses.
    gc: HashMap<u32, Vec<(u64, u64)>>,
    /// Paths under the first prefix are read under the second (a capture
    /// made in another checkout).
    relocate: Option<(String, String)>,
}

impl Snapshot {
    /// The capture in `dir`; paths starting with `relocate.0` are read
    /// from under `relocate.1` instead.
    pub fn open(dir: &Path, relocate: Option<(String, String)>) -> Result<Self, ReplayError> {
        let mut s = Snapshot {
            dir: dir.to_owned(),
            reads: HashMap::new(),
            now: 0,
            taken: false,
            files: Vec::new(),
            labels: HashMap::new(),
            runtime: HashMap::new(),
            gc: HashMap::new(),
            relocate,
        };
        for read in s.jsonl::<ProcRead>(PROCS)? {
            let read = ProcRead {
                maps: read.maps.map(|m| s.moved(&m)),
                exe: read.exe.map(|e| s.moved(&e)),
                ..read
            };
            s.reads.entry(read.pid).or_default().push(read);
        }
        // Captures made before labels were captured have none.
        if s.dir.join(LABELS).exists() {
            for l in s.jsonl::<CapturedLabels>(LABELS)? {
                s.labels.entry(l.pid).or_default().insert(l.ptr, l.labels);
            }
        }
        // Captures made before .NET was captured have neither.
        if s.dir.join(GC).exists() {
            for g in s.jsonl::<CapturedGc>(GC)? {
                s.gc.insert(g.pid, g.pauses);
            }
        }
        if s.dir.join(RUNTIME).exists() {
            s.runtime = s.chunks()?;
        }
        s.files = s
            .jsonl::<CapturedFile>(FILES)?
            .into_iter()
            .map(|f| CapturedFile {
                path: s.moved(&f.path),
                ..f
            })
            .collect();
        Ok(s)
    }

    fn jsonl<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, ReplayError> {
        let path = self.dir.join(name);
        let file = File::open(&path).map_err(io(&path))?;
        BufReader::new(file)
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let line = line.map_err(io(&path))?;
                serde_json::from_str(&line).map_err(|e| ReplayError::Malformed {
                    path: path.clone(),
                    line: i + 1,
                    why: e.to_string(),
                })
            })
            .collect()
    }

    /// The chunks of `runtime.bin` (see `Capture::runtime_read`), by
    /// process and file.
    fn chunks(&self) -> Result<RuntimeReads, ReplayError> {
        let path = self.dir.join(RUNTIME);
        parse_runtime(&read_capped(&path)?).map_err(|(line, why)| ReplayError::Malformed {
            path,
            line,
            why: why.to_owned(),
        })
    }

    /// Process `pid`'s runtime file `kind` as it had been read by the
    /// record being replayed: its bytes from `offset` on, at most `max`
    /// (`None`: it had not been read).
    fn runtime_bytes(&self, pid: u32, kind: RuntimeKind, offset: u64, max: u64) -> Option<Vec<u8>> {
        let chunks: Vec<&Chunk> = self
            .runtime
            .get(&(pid, kind))?
            .iter()
            .filter(|c| c.at <= moment(self.now, self.taken))
            .collect();
        if chunks.is_empty() {
            return None;
        }
        Some(assemble(&chunks, offset, max))
    }

    /// `text` with the relocated prefix moved.
    fn moved(&self, text: &str) -> String {
        match &self.relocate {
            Some((from, to)) => text.replace(from.as_str(), to),
            None => text.to_owned(),
        }
    }

    /// Process `pid`'s files as the capture read them last at or before
    /// the record being replayed (its first read, if it was read only
    /// later: a replay may read a process where the recording did not).
    fn read_now(&self, pid: u32) -> ProcRead {
        let Some(reads) = self.reads.get(&pid) else {
            return ProcRead {
                pid,
                ..ProcRead::default()
            };
        };
        let now = moment(self.now, self.taken);
        let i = reads.partition_point(|r| r.at <= now);
        reads[i.saturating_sub(1)].clone()
    }

    /// The processes the recording read before its first record (its
    /// targets, known from the start), in pid order.
    pub fn read_first(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .reads
            .iter()
            .filter(|(_, reads)| reads.first().is_some_and(|r| r.at == 0))
            .map(|(&pid, _)| pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Checks that every file the capture named is, where it is now, the
    /// build it was (by build id).
    pub fn check_files(&self) -> Result<(), ReplayError> {
        for f in &self.files {
            let Some(captured) = &f.build_id else {
                continue;
            };
            let found = crate::native::elf::build_id(Path::new(&f.path));
            if found.as_deref() != Some(captured) {
                return Err(ReplayError::OtherBuild {
                    path: f.path.clone(),
                    found: found.unwrap_or_else(|| "none".into()),
                    captured: captured.clone(),
                });
            }
        }
        Ok(())
    }

    /// The ring records, in order.
    pub fn records(&self) -> Result<Vec<Vec<u8>>, ReplayError> {
        let path = self.dir.join(RING);
        parse_ring(&read_capped(&path)?).map_err(|(line, why)| ReplayError::Malformed {
            path,
            line,
            why: why.to_owned(),
        })
    }

    /// The captured kernel symbols.
    pub fn kallsyms(&self) -> PathBuf {
        self.dir.join(KALLSYMS)
    }

    /// The recording's mode (its `--mode` name), frequency and `--group-by`
    /// levels (their names).
    pub fn session(&self) -> Result<(String, u64, Vec<String>), ReplayError> {
        let path = self.dir.join(SESSION);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| ReplayError::Malformed {
                    path: path.clone(),
                    line: 0,
                    why: format!("no {key}"),
                })
        };
        let freq = value("freq")?.parse().map_err(|_| ReplayError::Malformed {
            path: path.clone(),
            line: 2,
            why: "freq is not a number".into(),
        })?;
        let group_by = value("group_by")
            .map(|v| {
                v.split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok((value("mode")?.to_owned(), freq, group_by))
    }
}

/// A capture's file whole (at most 1 GiB).
fn read_capped(path: &Path) -> Result<Vec<u8>, ReplayError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(1 << 30).read_to_end(&mut data))
        .map_err(io(path))?;
    Ok(data)
}

/// The records of a `ring.bin` (each a `u32` length and its bytes), or the
/// record (from 1) that is malformed and why.
pub fn parse_ring(data: &[u8]) -> Result<Vec<Vec<u8>>, (usize, &'static str)> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let at = records.len() + 1;
        let len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or((at, "a record's length is cut"))?;
        if len > MAX_RECORD {
            return Err((at, "a record longer than any the kernel sends"));
        }
        let bytes = rest.get(4..4 + len).ok_or((at, "a record is cut"))?;
        records.push(bytes.to_vec());
        rest = &rest[4 + len..];
    }
    Ok(records)
}

/// The chunks of a `runtime.bin` (see `Capture::runtime_read`) by
/// process and file, or the chunk (from 1) that is malformed and why.
pub fn parse_runtime(data: &[u8]) -> Result<RuntimeReads, (usize, &'static str)> {
    let mut out: HashMap<_, Vec<Chunk>> = HashMap::new();
    let mut rest = data;
    let mut n = 0;
    while !rest.is_empty() {
        n += 1;
        let head = rest.get(..CHUNK_HEAD).ok_or((n, "a chunk's head is cut"))?;
        let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
        let kind = RuntimeKind::from_u8(head[4]).ok_or((n, "no such file kind"))?;
        let (len, packed) = (u32_at(21) as usize, u32_at(25) as usize);
        if len as u64 > MAX_CHUNK {
            return Err((n, "a chunk larger than any read"));
        }
        let bytes = rest
            .get(CHUNK_HEAD..CHUNK_HEAD.saturating_add(packed))
            .ok_or((n, "a chunk is cut"))?;
        let bytes = miniz_oxide::inflate::decompress_to_vec_with_limit(bytes, len)
            .ok()
            .filter(|b| b.len() == len)
            .ok_or((n, "a chunk does not inflate to its length"))?;
        out.entry((u32_at(0), kind)).or_default().push(Chunk {
            at: u64_at(5),
            offset: u64_at(13),
            bytes,
        });
        rest = &rest[CHUNK_HEAD + packed..];
    }
    Ok(out)
}

/// The bytes from `offset` on (at most `max`) of a file read as `chunks`.
/// The file only grows: the chunks are views of one file, and the bytes at
/// an offset are those of the chunk reaching furthest past it.
pub fn assemble(chunks: &[&Chunk], offset: u64, max: u64) -> Vec<u8> {
    let end = |c: &Chunk| c.offset.saturating_add(c.bytes.len() as u64);
    let mut out = Vec::new();
    let mut at = offset;
    while (out.len() as u64) < max {
        let Some(c) = chunks
            .iter()
            .filter(|c| c.offset <= at && at < end(c))
            .max_by_key(|c| end(c))
        else {
            break;
        };
        let from = (at - c.offset) as usize;
        let take = (c.bytes.len() - from).min((max - out.len() as u64) as usize);
        out.extend_from_slice(&c.bytes[from..from + take]);
        at = at.saturating_add(take as u64);
    }
    out
}

/// Per process and runtime file, the chunks read, in order.
pub type RuntimeReads = HashMap<(u32, RuntimeKind), Vec<Chunk>>;

/// A `runtime.bin` chunk's head: see [`Capture::runtime_read`].
const CHUNK_HEAD: usize = 29;
/// The most bytes one chunk holds (a read of a runtime file is at most
/// 16 MiB).
const MAX_CHUNK: u64 = 64 << 20;

/// When a read was made, in a capture: while the `records`-th record was
/// taken (twice `records`), or after it was and before the next (one
/// more). A replay, taking a record, sees what had been read by then while
/// it was taken, never what was read after it (the recording had not).
fn moment(records: u64, taken: bool) -> u64 {
    2 * records + u64::from(taken)
}

/// A runtime file's bytes as one read got them.
#[derive(Debug)]
pub struct Chunk {
    /// When it was read (see [`moment`]).
    at: u64,
    /// Where in the file.
    offset: u64,
    bytes: Vec<u8>,
}

/// The files a target's runtime writes for crossprof to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RuntimeKind {
    /// A .NET perf map (`perf-PID.map`).
    PerfMap = 1,
    /// A .NET jitdump (`jit-PID.dump`).
    JitDump = 2,
}

impl RuntimeKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::PerfMap),
            2 => Some(Self::JitDump),
            _ => None,
        }
    }
}

/// A file a target's runtime writes for crossprof to read (a .NET perf map
/// or jitdump), read where the process table reads its processes
/// ([`ProcSource`]): in the target's folder (each read also written to a
/// capture), or from a capture.
#[derive(Debug)]
pub struct RuntimeFile {
    pid: u32,
    kind: RuntimeKind,
    /// The file in the target's folder (none: nothing to read there).
    pub file: Option<TargetFile>,
    source: ProcSource,
    /// What a capture keeps of a read, given its bytes and offset (the
    /// jitdump's code bytes, never read for naming, are blanked).
    captured_as: fn(&mut [u8], u64),
    /// The file as last opened, and when: read again without opening it
    /// (a .NET process's perf map is polled 20 times a second; opening it
    /// each time through the target's folder was a quarter of the agent's
    /// event loop), reopened once it has no name left (removed or replaced)
    /// and every [`REOPEN_EVERY`] (renamed over).
    held: Mutex<Option<(std::fs::File, std::time::Instant)>>,
}

/// How long a runtime's file is read through the same handle.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl RuntimeFile {
    /// Process `pid`'s file of `kind`, at `file` in its folder, read as
    /// `source` reads.
    pub fn new(pid: u32, kind: RuntimeKind, file: Option<TargetFile>, source: ProcSource) -> Self {
        RuntimeFile {
            pid,
            kind,
            file,
            source,
            captured_as: |_, _| {},
            held: Mutex::new(None),
        }
    }

    /// The file in the target's folder alone (not captured).
    pub fn live(file: Option<TargetFile>) -> Self {
        Self::new(0, RuntimeKind::PerfMap, file, ProcSource::Live)
    }

    /// Captures keep `f(bytes, offset)` of each read instead of the bytes.
    pub fn captured_as(self, f: fn(&mut [u8], u64)) -> Self {
        RuntimeFile {
            captured_as: f,
            ..self
        }
    }

    /// At most `max` bytes from `offset` on. `Ok(None)`: nothing to read
    /// (it does not exist yet, it is older than `not_before`, a leftover of
    /// an earlier process with the pid, or the read failed); `Err`: the
    /// file is refused (a link, a FIFO, another user's).
    pub fn read(
        &self,
        offset: u64,
        max: u64,
        not_before: Option<std::time::SystemTime>,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if let ProcSource::Replay(s) = &self.source {
            let s = s.lock().expect("snapshot");
            return Ok(s.runtime_bytes(self.pid, self.kind, offset, max));
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut held = self.held.lock().expect("held file");
        // Reopened when old, or when the name no longer leads to it (removed,
        // or replaced by a process with the pid: a link count of 0 says so
        // without a path lookup).
        let stale = |f: &std::fs::File| {
            use std::os::unix::fs::MetadataExt as _;
            f.metadata().map_or(true, |m| m.nlink() == 0)
        };
        if held
            .as_ref()
            .is_none_or(|(f, at)| at.elapsed() >= REOPEN_EVERY || stale(f))
        {
            *held = None;
            let f = match file.open() {
                Ok(f) => f,
                Err(Refused::Missing) => return Ok(None),
                Err(e) => return Err(e),
            };
            if let (Some(not_before), Ok(written)) =
                (not_before, f.metadata().and_then(|m| m.modified()))
                && written < not_before
            {
                return Ok(None);
            }
            *held = Some((f, std::time::Instant::now()));
        }
        let Some((f, _)) = held.as_mut() else {
            return Ok(None);
        };
        let Ok(buf) = read_at_most(f, offset, max) else {
            return Ok(None);
        };
        if let ProcSource::Capturing(c) = &self.source {
            let mut kept = buf.clone();
            (self.captured_as)(&mut kept, offset);
            c.lock()
                .expect("capture")
                .runtime_read(self.pid, self.kind, offset, &kept);
        }
        Ok(Some(buf))
    }

    /// Its name in the target's folder.
    pub fn name(&self) -> Option<&str> {
        self.file.as_ref().map(|f| f.name.as_str())
    }

    /// The file's path as the process sees it (`/tmp/perf-1.map`), for
    /// messages.
    pub fn shown(&self) -> Option<String> {
        self.file.as_ref().map(|f| f.dir.show(&f.name))
    }
}

/// Where the process table reads a process's `/proc` files.
#[derive(Clone, Debug, Default)]
pub enum ProcSource {
    /// From `/proc`, now.
    #[default]
    Live,
    /// From `/proc`, now, and each read written to a capture.
    Capturing(Arc<Mutex<Capture>>),
    /// From a capture (no process is read).
    Replay(Arc<Mutex<Snapshot>>),
}

impl ProcSource {
    /// Are the processes there to read (their memory, their cgroup, a
    /// runtime's files)?
    pub fn is_live(&self) -> bool {
        !matches!(self, ProcSource::Replay(_))
    }

    /// Process `pid`'s comm alone, with its newline removed (not
    /// captured: the process's next read keeps it).
    pub fn comm(&self, pid: u32) -> Option<String> {
        match self {
            ProcSource::Live | ProcSource::Capturing(_) => live_comm(pid),
            ProcSource::Replay(s) => s.lock().expect("snapshot").read_now(pid).comm,
        }
    }

    /// Process `pid`'s maps, comm and exe: read now, or, if it has exited
    /// (no maps to read), the read `announced` made when the kernel
    /// announced it. A process read now has its announced read let go.
    pub fn read(&self, pid: u32, announced: &AnnouncedReads) -> ProcRead {
        let live = || {
            let read = ProcRead::live(pid);
            if read.has_maps() {
                announced.forget(pid);
                read
            } else {
                announced.latest(pid).unwrap_or(read)
            }
        };
        match self {
            ProcSource::Live => live(),
            ProcSource::Capturing(c) => {
                let read = live();
                c.lock().expect("capture").proc_read(&read);
                read
            }
            ProcSource::Replay(s) => s.lock().expect("snapshot").read_now(pid),
        }
    }

    /// A file a process mapped from `path` was opened (`file`: the handle
    /// kept, if it opened).
    pub fn opened(&self, path: &str, file: Option<&File>) {
        if let ProcSource::Capturing(c) = self {
            c.lock().expect("capture").file(path, file);
        }
    }

    /// Process `pid`'s Go label sets as the capture read them, by pointer
    /// (none unless replaying).
    pub fn captured_labels(&self, pid: u32) -> CapturedSets {
        match self {
            ProcSource::Replay(s) => s
                .lock()
                .expect("snapshot")
                .labels
                .get(&pid)
                .cloned()
                .unwrap_or_default(),
            _ => HashMap::new(),
        }
    }

    /// A Go label set was read from process `pid`'s memory at `ptr`.
    pub fn labels_read(&self, pid: u32, ptr: u64, labels: Option<&[(String, String)]>) {
        if let ProcSource::Capturing(c) = self {
            c.lock().expect("capture").labels(pid, ptr, labels);
        }
    }

    /// .NET process `pid`'s GC pauses, as its event session saw them (a
    /// capture keeps them).
    pub fn gc_pauses(&self, pid: u32, pauses: &[(u64, u64)]) {
        if let ProcSource::Capturing(c) = self {
            c.lock().expect("capture").gc_pauses(pid, pauses);
        }
    }

    /// .NET process `pid`'s GC pauses as the capture saw them (`None`
    /// unless replaying a process whose GC events were read).
    pub fn captured_gc(&self, pid: u32) -> Option<Vec<(u64, u64)>> {
        match self {
            ProcSource::Replay(s) => s.lock().expect("snapshot").gc.get(&pid).cloned(),
            _ => None,
        }
    }

    /// A ring record was drained (or replayed): it is being taken.
    pub fn record(&self, bytes: &[u8]) {
        match self {
            ProcSource::Live => {}
            ProcSource::Capturing(c) => c.lock().expect("capture").record(bytes),
            ProcSource::Replay(s) => {
                let mut s = s.lock().expect("snapshot");
                s.now += 1;
                s.taken = false;
            }
        }
    }

    /// The record drained last has been taken: what is read from now on
    /// was read after it.
    pub fn record_done(&self) {
        match self {
            ProcSource::Live => {}
            ProcSource::Capturing(c) => c.lock().expect("capture").taken = true,
            ProcSource::Replay(s) => s.lock().expect("snapshot").taken = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(pid: u32, maps: &str) -> ProcRead {
        ProcRead {
            pid,
            maps: Some(maps.into()),
            ..Default::default()
        }
    }

    #[test]
    fn an_announced_read_names_a_process_only_once_it_is_gone() {
        let announced = AnnouncedReads::default();
        // No process has this pid (above pid_max's largest value).
        let gone = 4_194_305;
        announced.keep(read_of(gone, "1000-2000 r-xp 0 08:01 5 /bin/short\n"));
        announced.keep(ProcRead {
            pid: gone + 1,
            ..Default::default()
        });
        assert_eq!(announced.len(), 1, "a read without maps is not kept");
        let read = ProcSource::Live.read(gone, &announced);
        assert_eq!(
            read.maps.as_deref(),
            Some("1000-2000 r-xp 0 08:01 5 /bin/short\n")
        );
        // A process that is there is read now, and its announced read goes.
        let me = std::process::id();
        announced.keep(read_of(me, "stale"));
        let read = ProcSource::Live.read(me, &announced);
        assert_ne!(read.maps.as_deref(), Some("stale"));
        assert!(read.maps.is_some_and(|m| m.contains("r-xp")));
        assert_eq!(announced.len(), 1);
        announced.forget(gone);
        assert_eq!(announced.len(), 0);
    }

    #[test]
    fn announced_reads_are_bounded_and_let_the_oldest_go() {
        let announced = AnnouncedReads::default();
        for pid in 1..=MAX_ANNOUNCED_READS as u32 + 10 {
            announced.keep(read_of(pid, "m"));
        }
        assert_eq!(announced.len(), MAX_ANNOUNCED_READS);
        assert!(announced.latest(1).is_none(), "the oldest went first");
        assert!(announced.latest(11).is_some());
        // A newer read of a kept process replaces it, and keeps the bound.
        announced.keep(read_of(11, "newer"));
        assert_eq!(announced.len(), MAX_ANNOUNCED_READS);
        assert_eq!(
            announced.latest(11).and_then(|r| r.maps).as_deref(),
            Some("newer")
        );
    }

    #[test]
    fn kallsyms_keeps_each_address_s_symbol_and_the_next() {
        let text = "\
ffffffff81000000 T _stext
ffffffff81000100 t helper
ffffffff81000200 T do_sys_open
ffffffff81000300 D some_data
ffffffff81000400 T vfs_read
0000000000000000 T hidden
";
        let addrs = BTreeSet::from([0xffff_ffff_8100_0210, 0xffff_ffff_8100_0050]);
        assert_eq!(
            kallsyms_for(text, &addrs),
            "ffffffff81000000 T _stext\nffffffff81000100 t helper\n\
             ffffffff81000200 T do_sys_open\nffffffff81000400 T vfs_read\n"
        );
        // Below every symbol: nothing to name it.
        assert_eq!(kallsyms_for(text, &BTreeSet::from([0x10])), "");
    }

    #[test]
    fn a_replay_sees_a_runtime_file_as_it_had_been_read_by_each_record() {
        let dir = std::env::temp_dir().join(format!("crossprof-runtime-{}", std::process::id()));
        let mut c = Capture::create(&dir, "cpu", 99, &[]).unwrap();
        c.record(&[1]);
        // While the first record is taken, then after it.
        c.runtime_read(7, RuntimeKind::PerfMap, 0, b"ab");
        c.taken = true;
        c.runtime_read(7, RuntimeKind::PerfMap, 0, b"abcd");
        c.record(&[2]);
        c.taken = true;
        c.finish(&BTreeSet::new()).unwrap();
        let source = ProcSource::Replay(Arc::new(Mutex::new(Snapshot::open(&dir, None).unwrap())));
        let map = RuntimeFile::new(7, RuntimeKind::PerfMap, None, source.clone());
        let read = |f: &RuntimeFile, at, max| f.read(at, max, None).unwrap();
        assert_eq!(read(&map, 0, 100), None, "not read before any record");
        source.record(&[1]);
        assert_eq!(read(&map, 0, 100).as_deref(), Some(&b"ab"[..]));
        assert_eq!(read(&map, 1, 100).as_deref(), Some(&b"b"[..]));
        // Read after the first record was taken: seen once it is.
        source.record_done();
        assert_eq!(read(&map, 0, 100).as_deref(), Some(&b"abcd"[..]));
        source.record(&[2]);
        assert_eq!(read(&map, 0, 3).as_deref(), Some(&b"abc"[..]));
        assert_eq!(read(&map, 2, 100).as_deref(), Some(&b"cd"[..]));
        assert_eq!(read(&map, 9, 100).as_deref(), Some(&b""[..]));
        // Another process's file, another file of the process: never read.
        let other = RuntimeFile::new(8, RuntimeKind::PerfMap, None, source.clone());
        assert_eq!(read(&other, 0, 100), None);
        let dump = RuntimeFile::new(7, RuntimeKind::JitDump, None, source);
        assert_eq!(read(&dump, 0, 100), None);
        // A cut chunk is an error, not a shorter file.
        let bin = dir.join(RUNTIME);
        let data = std::fs::read(&bin).unwrap();
        std::fs::write(&bin, &data[..data.len() - 1]).unwrap();
        assert!(matches!(
            Snapshot::open(&dir, None),
            Err(ReplayError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replay_reads_a_process_as_it_was_at_each_record() {
        let dir = std::env::temp_dir().join(format!("crossprof-replay-{}", std::process::id()));
        let mut c = Capture::create(&dir, "cpu", 99, &[]).unwrap();
        let read = |n: &str| ProcRead {
            pid: 7,
            at: 0,
            maps: Some(format!("/old/root/{n}")),
            comm: Some("w".into()),
            exe: Some("/old/root/bin".into()),
        };
        // Read at the first record, and again at the third.
        c.record(&[1, 2, 3]);
        c.proc_read(&read("a"));
        c.record(&[]);
        c.record(&[4]);
        c.proc_read(&read("b"));
        c.finish(&BTreeSet::new()).unwrap();
        let s = Snapshot::open(&dir, Some(("/old/root".into(), "/new".into()))).unwrap();
        assert_eq!(s.records().unwrap(), vec![vec![1, 2, 3], vec![], vec![4]]);
        let source = ProcSource::Replay(Arc::new(Mutex::new(s)));
        let maps = |r: ProcRead| (r.maps.unwrap(), r.exe.unwrap());
        // Before any record: the first read there is.
        assert_eq!(
            maps(source.read(7, &AnnouncedReads::default())),
            ("/new/a".into(), "/new/bin".into())
        );
        for (record, want) in [
            (&[1u8, 2, 3][..], "/new/a"),
            (&[], "/new/a"),
            (&[4], "/new/b"),
        ] {
            source.record(record);
            assert_eq!(maps(source.read(7, &AnnouncedReads::default())).0, want);
            assert_eq!(
                maps(source.read(7, &AnnouncedReads::default())).0,
                want,
                "as often as asked"
            );
        }
        assert_eq!(
            source.read(8, &AnnouncedReads::default()).maps,
            None,
            "never captured"
        );
        assert!(!source.is_live());
        // A cut ring file is an error, not a short replay.
        let ring = dir.join(RING);
        let data = std::fs::read(&ring).unwrap();
        std::fs::write(&ring, &data[..5]).unwrap();
        assert!(matches!(
            Snapshot::open(&dir, None).unwrap().records(),
            Err(ReplayError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
