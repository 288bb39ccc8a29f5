//! The runtime's perf map, `/tmp/perf-<pid>.map`: one `START SIZE NAME` line per
//! piece of generated code, appended while the process runs (tiered compilation
//! writes a method again at each tier).
//!
//! Lines seen on .NET 8.0.4 (`DOTNET_PerfMapEnabled=1`, written by
//! `src/coreclr/vm/perfmap.cpp`):
//!
//! ```text
//! 0x7fe831621af0 96 int64 [Prog] Program::Hot(int64)[QuickJitted]
//! 0x7fe831621fa0 2f int64 [Prog] Program::Hot(int64)[OptimizedTier1]
//! 0x7fe831621c00 67 instance valuetype System.TimeSpan [System.Private.CoreLib] System.Diagnostics.Stopwatch::get_Elapsed()[InstrumentedTierOptimized]
//! 0x7fe831560000 d8 stub<1> AllocateTemporaryEntryPoints<PRECODE_STUB>
//! ```
//!
//! Addresses and sizes are hex, with or without `0x`. The file is read
//! incrementally from where the last read stopped, and only whole lines are taken:
//! the last line may be half-written when it is read.
//!
//! The file is the target's, in its temp folder: opened as [`crate::files`]
//! opens a target's files (no link, no FIFO, its user's only), at most
//! [`MAX_READ`] bytes a refresh, and a line longer than [`MAX_LINE`] is no
//! method's: skipped to its end and counted, never held.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    files::TargetFile,
    replay::source::{ProcSource, RuntimeFile, RuntimeKind},
};

/// The longest line taken (a method's line is a few hundred bytes; generic
/// signatures reach ~1 KiB).
pub const MAX_LINE: usize = 4096;
/// The most read in one refresh (the rest is read by the next ones).
pub const MAX_READ: u64 = 16 << 20;

/// How a method reads in a profile: `Namespace.Type::Method`, tier and signature
/// dropped so that every tier of one method is one frame; runtime stubs as
/// `[stub: KIND]`.
pub fn display_name(raw: &str) -> String {
    if let Some(rest) = raw.strip_prefix("stub<") {
        // stub<N> NAME<KIND>
        let name = rest.split_once(' ').map_or(rest, |(_, n)| n);
        let kind = name
            .rsplit_once('<')
            .map_or(name, |(_, k)| k.trim_end_matches('>'));
        return format!("[stub: {kind}]");
    }
    let Some(colons) = raw.find("::") else {
        return raw.to_owned();
    };
    // The type starts after the assembly's `[Asm] `; the method ends at `(`.
    let start = raw[..colons].rfind("] ").map_or(0, |i| i + 2);
    let end = raw[colons..].find('(').map_or(raw.len(), |i| colons + i);
    raw[start..end].to_owned()
}

/// One process's perf map, read so far.
#[derive(Debug)]
pub struct PerfMap {
    file: RuntimeFile,
    /// Why the file was refused, if it was (a link, a FIFO, another user's).
    pub refused: Option<String>,
    /// Lines longer than [`MAX_LINE`], skipped.
    pub long_lines: u64,
    /// Inside such a line (its end not read yet).
    skipping: bool,
    /// A file last written before this is a leftover of an earlier process that had
    /// the same pid, and is not read.
    not_before: Option<SystemTime>,
    read_to: u64,
    /// start -> (end, name)
    symbols: BTreeMap<u64, (u64, Arc<str>)>,
    /// Lines that did not parse (counted, never guessed at).
    pub bad_lines: u64,
    /// Methods (not stubs) read since the last [`PerfMap::take_fresh`].
    fresh: Vec<Method>,
}

/// A method's code as the perf map lists it.
#[derive(Debug, Clone)]
pub struct Method {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Its display name (see [`display_name`]).
    pub name: Arc<str>,
    /// Compiled at Tier 0 (`[QuickJitted]`, `[InstrumentedTier]`, `[MinOptJitted]`):
    /// code an OSR method may replace on the stack.
    pub tier0: bool,
}

impl PerfMap {
    /// The perf map of `pid` in its temp folder `tmp` (none: nothing to
    /// read there), read as `source` reads.
    pub fn for_pid(
        pid: u32,
        tmp: Option<&Arc<crate::files::TargetDir>>,
        source: &ProcSource,
    ) -> Self {
        let file = tmp.map(|dir| TargetFile {
            dir: dir.clone(),
            // The pid it sees: in a container, not the host's.
            name: format!("perf-{}.map", crate::files::own_pid(pid)),
        });
        let mut map = Self::reading(RuntimeFile::new(
            pid,
            RuntimeKind::PerfMap,
            file,
            source.clone(),
        ));
        if source.is_live() {
            map.not_before = process_start(pid);
        }
        map
    }

    /// A perf map at `file` alone (read on [`PerfMap::refresh`]).
    pub fn at(file: Option<TargetFile>) -> Self {
        Self::reading(RuntimeFile::live(file))
    }

    /// A perf map read from `file`.
    pub fn reading(file: RuntimeFile) -> Self {
        Self {
            file,
            refused: None,
            long_lines: 0,
            skipping: false,
            not_before: None,
            read_to: 0,
            symbols: BTreeMap::new(),
            bad_lines: 0,
            fresh: Vec::new(),
        }
    }

    /// Reads the lines appended since the last call. Returns whether the file
    /// could be read.
    pub fn refresh(&mut self) -> bool {
        let buf = match self.file.read(self.read_to, MAX_READ, self.not_before) {
            Ok(Some(buf)) => buf,
            Ok(None) => return false,
            Err(e) => {
                self.refused = Some(e.to_string());
                return false;
            }
        };
        let consumed = self.ingest(&buf);
        self.read_to += consumed as u64;
        true
    }

    /// Takes the whole lines of `buf` (bytes from where the last read
    /// stopped); returns how many bytes it consumed. A half-written last line
    /// is left to be read again; a line longer than [`MAX_LINE`] is skipped to
    /// its end, however many reads that takes.
    pub fn ingest(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            let rest = &buf[at..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    if self.skipping {
                        self.skipping = false;
                    } else if end > MAX_LINE {
                        self.long_lines += 1;
                    } else {
                        self.add_line(&String::from_utf8_lossy(&rest[..end]));
                    }
                    at += end + 1;
                }
                None => {
                    if rest.len() > MAX_LINE {
                        if !self.skipping {
                            self.long_lines += 1;
                            self.skipping = true;
                        }
                        at = buf.len();
                    }
                    break;
                }
            }
        }
        at
    }

    fn add_line(&mut self, line: &str) {
        let mut fields = line.splitn(3, ' ');
        let parsed = (|| {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let start = hex(fields.next()?)?;
            let size = hex(fields.next()?)?;
            let name = fields.next()?.trim();
            let end = start.checked_add(size)?;
            (!name.is_empty() && size > 0).then_some((start, end, name))
        })();
        match parsed {
            Some((start, end, raw)) => {
                let name: Arc<str> = display_name(raw).into();
                if !raw.starts_with("stub<") {
                    self.fresh.push(Method {
                        start,
                        end,
                        name: name.clone(),
                        tier0: ["[QuickJitted]", "[InstrumentedTier]", "[MinOptJitted]"]
                            .iter()
                            .any(|t| raw.ends_with(t)),
                    });
                }
                self.symbols.insert(start, (end, name));
            }
            None if line.trim().is_empty() => {}
            None => self.bad_lines += 1,
        }
    }

    /// The methods read since the last call (stubs left out).
    pub fn take_fresh(&mut self) -> Vec<Method> {
        std::mem::take(&mut self.fresh)
    }

    /// Its name in the target's temp folder.
    pub fn name(&self) -> Option<&str> {
        self.file.name()
    }

    /// The file's path as the process sees it (`/tmp/perf-1.map`), for
    /// messages.
    pub fn shown(&self) -> Option<String> {
        self.file.shown()
    }

    /// The method whose code holds `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<str>> {
        let (_, (end, name)) = self.symbols.range(..=addr).next_back()?;
        (addr < *end).then_some(name)
    }

    /// Entries read.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Nothing read?
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// When `pid` started (to the clock tick), from `/proc/PID/stat` field 22
/// (starttime, ticks since boot) and `btime` in `/proc/stat`, less a second of
/// slack for the clock's granularity.
fn process_start(pid: u32) -> Option<SystemTime> {
    let start_ticks = super::start_ticks(pid)?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let secs = btime as f64 + start_ticks as f64 / ticks as f64 - 1.0;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
}

#[cfg(test)]
mod tests {
    use std::{fs::File, io::Write as _, os::unix::fs::symlink, path::PathBuf};

    use super::*;
    use crate::files::TargetDir;

    /// A perf map named `name` in a scratch folder of this test's, which
    /// belongs to this process's user; and the folder.
    fn scratch(name: &str) -> (TargetFile, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("crossprof-perfmap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let file = TargetFile {
            dir: Arc::new(TargetDir::at(&dir, me).unwrap()),
            name: "perf-1.map".into(),
        };
        (file, dir)
    }

    #[test]
    fn a_perf_map_older_than_its_process_is_a_leftover_and_not_read() {
        let (file, dir) = scratch("stale");
        std::fs::write(
            dir.join("perf-1.map"),
            "0x1000 10 int32 [P] P::A()[QuickJitted]\n",
        )
        .unwrap();
        let mut map = PerfMap::at(Some(file));
        map.not_before = Some(SystemTime::now() + Duration::from_secs(60));
        assert!(!map.refresh());
        assert!(map.is_empty());
        map.not_before = process_start(std::process::id());
        assert!(map.not_before.is_some_and(|t| t <= SystemTime::now()));
        assert!(map.refresh());
        assert_eq!(map.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_drop_return_type_assembly_signature_and_tier() {
        assert_eq!(
            display_name("int64 [Prog] Program::Hot(int64)[OptimizedTier1]"),
            "Program::Hot"
        );
        assert_eq!(
            display_name(
                "instance valuetype System.TimeSpan [System.Private.CoreLib] System.Diagnostics.Stopwatch::get_Elapsed()[InstrumentedTierOptimized]"
            ),
            "System.Diagnostics.Stopwatch::get_Elapsed"
        );
        assert_eq!(
            display_name("stub<1> AllocateTemporaryEntryPoints<PRECODE_STUB>"),
            "[stub: PRECODE_STUB]"
        );
        assert_eq!(display_name("plainname"), "plainname");
    }

    #[test]
    fn reads_incrementally_and_never_a_half_written_line() {
        let (file, dir) = scratch("incremental");
        let path = dir.join("perf-1.map");
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "0x1000 10 int32 [P] P::A()[QuickJitted]\n2000 20 int32 [P] P::B()[Optimized"
        )
        .unwrap();
        let mut map = PerfMap::at(Some(file));
        assert!(map.refresh());
        assert_eq!(map.len(), 1);
        assert_eq!(map.lookup(0x1005).map(|n| &**n), Some("P::A"));
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(map.lookup(0x2005), None, "a half-written line was taken");
        // The writer finishes the line, and a method is re-jitted at a new tier.
        write!(
            f,
            "Tier1]\nzz bad line\n0x3000 8 int32 [P] P::A()[OptimizedTier1]\n"
        )
        .unwrap();
        assert!(map.refresh());
        assert_eq!(map.lookup(0x2005).map(|n| &**n), Some("P::B"));
        assert_eq!(map.lookup(0x3001).map(|n| &**n), Some("P::A"));
        assert_eq!(map.bad_lines, 1);
        std::fs::remove_file(&path).unwrap();
        assert!(!map.refresh());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_too_long_is_skipped_to_its_end_across_reads_and_never_held() {
        let mut map = PerfMap::at(Some(scratch("long").0));
        let head = b"0x1000 10 int32 [P] P::A()[QuickJitted]\n".to_vec();
        let mut buf = head.clone();
        buf.extend(std::iter::repeat_n(b'x', MAX_LINE * 3));
        // The long line's start: consumed, not held for the next read.
        assert_eq!(map.ingest(&buf), buf.len());
        assert_eq!(map.long_lines, 1);
        // Its end, then a good line.
        let mut tail = vec![b'y'; 100];
        tail.extend(b"\n0x2000 10 int32 [P] P::B()[QuickJitted]\n");
        assert_eq!(map.ingest(&tail), tail.len());
        assert_eq!(map.long_lines, 1);
        assert_eq!(map.lookup(0x2001).map(|n| &**n), Some("P::B"));
        assert_eq!(map.bad_lines, 0);
        // start + size past the end of the address space is no method.
        map.ingest(b"0xffffffffffffff00 1000 int32 [P] P::C()[QuickJitted]\n");
        assert_eq!(map.bad_lines, 1);
    }

    #[test]
    fn a_planted_link_or_fifo_is_refused_not_followed_or_waited_on() {
        let (file, dir) = scratch("planted");
        let secret = dir.join("secret");
        std::fs::write(&secret, "0x1000 10 int32 [P] P::Secret()[QuickJitted]\n").unwrap();
        symlink(&secret, dir.join("perf-1.map")).unwrap();
        let mut map = PerfMap::at(Some(file.clone()));
        assert!(!map.refresh());
        assert!(map.is_empty(), "read through a link");
        assert_eq!(map.refused.as_deref(), Some("it is a symbolic link"));
        std::fs::remove_file(dir.join("perf-1.map")).unwrap();
        let c = std::ffi::CString::new(dir.join("perf-1.map").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut map = PerfMap::at(Some(file));
        assert!(!map.refresh(), "a FIFO was read");
        assert!(map.refused.as_deref().is_some_and(|r| r.contains("FIFO")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
