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
    /// Ring records drained before it (the one being taken included): a
    /// replay gives the last read made at or before the record it is at.
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
    fn live(pid: u32) -> Self {
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
    files_seen: BTreeSet<String>,
    /// Records written so far.
    records: u64,
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
            folder,
            files_seen: BTreeSet::new(),
            records: 0,
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
        let ring = &mut self.ring.0;
        let r = ring
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .and_then(|()| ring.write_all(bytes));
        self.note(r);
    }

    fn proc_read(&mut self, read: &ProcRead) {
        let read = ProcRead {
            at: self.records,
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
    files: Vec<CapturedFile>,
    /// Per process, its label sets by pointer.
    labels: HashMap<u32, CapturedSets>,
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
            files: Vec::new(),
            labels: HashMap::new(),
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
        let i = reads.partition_point(|r| r.at <= self.now);
        reads[i.saturating_sub(1)].clone()
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
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(1 << 30).read_to_end(&mut data))
            .map_err(io(&path))?;
        let mut records = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let malformed = |why: &str| ReplayError::Malformed {
                path: path.clone(),
                line: records.len() + 1,
                why: why.to_owned(),
            };
            let len = rest
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| malformed("a record's length is cut"))?;
            if len > MAX_RECORD {
                return Err(malformed("a record longer than any the kernel sends"));
            }
            let bytes = rest
                .get(4..4 + len)
                .ok_or_else(|| malformed("a record is cut"))?;
            records.push(bytes.to_vec());
            rest = &rest[4 + len..];
        }
        Ok(records)
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

    /// Process `pid`'s maps, comm and exe.
    pub fn read(&self, pid: u32) -> ProcRead {
        match self {
            ProcSource::Live => ProcRead::live(pid),
            ProcSource::Capturing(c) => {
                let read = ProcRead::live(pid);
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

    /// A ring record was drained (or replayed).
    pub fn record(&self, bytes: &[u8]) {
        match self {
            ProcSource::Live => {}
            ProcSource::Capturing(c) => c.lock().expect("capture").record(bytes),
            ProcSource::Replay(s) => s.lock().expect("snapshot").now += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(maps(source.read(7)), ("/new/a".into(), "/new/bin".into()));
        for (record, want) in [
            (&[1u8, 2, 3][..], "/new/a"),
            (&[], "/new/a"),
            (&[4], "/new/b"),
        ] {
            source.record(record);
            assert_eq!(maps(source.read(7)).0, want);
            assert_eq!(maps(source.read(7)).0, want, "as often as asked");
        }
        assert_eq!(source.read(8).maps, None, "never captured");
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
