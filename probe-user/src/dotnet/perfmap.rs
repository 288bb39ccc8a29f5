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

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

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
    path: PathBuf,
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
    /// The perf map of `pid` in its temp folder `tmp` (as crossprof reaches it:
    /// `/proc/PID/root/tmp` for a process in a container).
    pub fn for_pid(pid: u32, tmp: &std::path::Path) -> Self {
        let mut map = Self::at(tmp.join(format!("perf-{pid}.map")));
        map.not_before = process_start(pid);
        map
    }

    /// A perf map at `path` (read on [`PerfMap::refresh`]).
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
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
        let Ok(mut f) = File::open(&self.path) else {
            return false;
        };
        if let (Some(not_before), Ok(written)) =
            (self.not_before, f.metadata().and_then(|m| m.modified()))
            && written < not_before
        {
            return false;
        }
        if f.seek(SeekFrom::Start(self.read_to)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return false;
        }
        // Only whole lines: a half-written last line is read again next time.
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.read_to += whole as u64;
        for line in String::from_utf8_lossy(&buf[..whole]).lines() {
            self.add_line(line);
        }
        true
    }

    fn add_line(&mut self, line: &str) {
        let mut fields = line.splitn(3, ' ');
        let parsed = (|| {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let start = hex(fields.next()?)?;
            let size = hex(fields.next()?)?;
            let name = fields.next()?.trim();
            (!name.is_empty() && size > 0).then(|| (start, start + size, name))
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

    /// Where the map is read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
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
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_perf_map_older_than_its_process_is_a_leftover_and_not_read() {
        let path = std::env::temp_dir().join(format!("crossprof-stale-{}", std::process::id()));
        std::fs::write(&path, "0x1000 10 int32 [P] P::A()[QuickJitted]\n").unwrap();
        let mut map = PerfMap::at(path.clone());
        map.not_before = Some(SystemTime::now() + Duration::from_secs(60));
        assert!(!map.refresh());
        assert!(map.is_empty());
        map.not_before = process_start(std::process::id());
        assert!(map.not_before.is_some_and(|t| t <= SystemTime::now()));
        assert!(map.refresh());
        assert_eq!(map.len(), 1);
        std::fs::remove_file(&path).unwrap();
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
        let path = std::env::temp_dir().join(format!("crossprof-perfmap-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "0x1000 10 int32 [P] P::A()[QuickJitted]\n2000 20 int32 [P] P::B()[Optimized"
        )
        .unwrap();
        let mut map = PerfMap::at(path.clone());
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
    }
}
