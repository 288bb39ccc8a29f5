//! The runtime's jitdump, `/tmp/jit-<pid>.dump`, read for one thing the perf map
//! lacks: ReadyToRun (precompiled) framework code. The perf map never lists R2R
//! methods; the jitdump does, as `[PreJIT]` code loads, each time the runtime first
//! uses a method's precompiled code, and on enabling for every R2R method already in
//! use (dotnet/runtime `src/coreclr/vm/perfmap.cpp`, `PerfMap::LogPreCompiledMethod`
//! and `PerfMap::Enable`, .NET 8; checked on 8.0.4: `System.AppContext::Setup`,
//! generic instantiations such as ``Dictionary`2[System.__Canon,...]::Initialize``).
//! The R2R code runs from the PE file mapped at its section RVAs, so these
//! addresses fall in file mappings of `*.dll`, not in JIT memory.
//!
//! Format (Linux perf `tools/perf/Documentation/jitdump-specification.txt`, as the
//! runtime's PAL `perfjitdump.cpp` writes it, little-endian): a header `u32 magic
//! 0x4A695444 ("JiTD"), u32 version, u32 header size, u32 elf machine, u32 pad,
//! u32 pid, u64 timestamp, u64 flags`; then records `u32 id, u32 total size, u64
//! timestamp` + body. `JIT_CODE_LOAD` (id 0): `u32 pid, u32 tid, u64 vma, u64
//! code address, u64 code size, u64 code index`, the NUL-terminated name, then the
//! code bytes. Only whole records are read; the file is read on from where the last
//! read stopped. It is the target's file: opened as [`crate::files`] opens a
//! target's files, at most [`MAX_READ`] bytes a refresh; a record larger than
//! [`MAX_RECORD`] (no method's code is) is skipped, not read.

use std::{collections::BTreeMap, sync::Arc};

use super::perfmap::display_name;
use crate::{files::TargetFile, replay::source::RuntimeFile};

const MAGIC: u32 = 0x4A69_5444;
const JIT_CODE_LOAD: u32 = 0;
const RECORD_PREFIX: usize = 16;
const CODE_LOAD_FIXED: usize = RECORD_PREFIX + 40;
/// A record larger than this is skipped unread (a method's code is a few KiB).
pub const MAX_RECORD: u32 = 1 << 20;
/// The most read in one refresh.
pub const MAX_READ: u64 = 16 << 20;

/// One process's jitdump, R2R entries read so far.
#[derive(Debug)]
pub struct JitDump {
    /// The file.
    file: RuntimeFile,
    /// Records larger than [`MAX_RECORD`], skipped.
    pub skipped: u64,
    read_to: u64,
    header_ok: bool,
    /// The file broke the format: stop reading it (counted in the note).
    broken: bool,
    /// start -> (end, name)
    symbols: BTreeMap<u64, (u64, Arc<str>)>,
}

impl JitDump {
    /// A jitdump at `file` alone (none: fed by [`JitDump::parse`] only).
    pub fn at(file: Option<TargetFile>) -> Self {
        Self::reading(RuntimeFile::live(file))
    }

    /// A jitdump read from `file` (a capture keeps its reads without the
    /// code bytes: see [`blank_code`]).
    pub fn reading(file: RuntimeFile) -> Self {
        Self {
            file: file.captured_as(blank_code),
            skipped: 0,
            read_to: 0,
            header_ok: false,
            broken: false,
            symbols: BTreeMap::new(),
        }
    }

    /// Reads the records appended since the last call.
    pub fn refresh(&mut self) {
        if self.broken {
            return;
        }
        let Ok(Some(buf)) = self.file.read(self.read_to, MAX_READ, None) else {
            return;
        };
        let consumed = self.parse(&buf);
        self.read_to = self.read_to.saturating_add(consumed as u64);
    }

    /// Parses whole records of `buf`; returns the bytes consumed (past its end
    /// when a record too large to read is skipped).
    pub fn parse(&mut self, buf: &[u8]) -> usize {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
        };
        let mut at = 0;
        if !self.header_ok {
            let (Some(magic), Some(size)) = (u32_at(0), u32_at(8)) else {
                return 0;
            };
            if magic != MAGIC || size < 40 {
                self.broken = true;
                return 0;
            }
            if buf.len() < size as usize {
                return 0;
            }
            self.header_ok = true;
            at = size as usize;
        }
        while let (Some(id), Some(size)) = (u32_at(at), u32_at(at + 4)) {
            if (size as usize) < RECORD_PREFIX {
                self.broken = true;
                break;
            }
            let end = at + size as usize;
            if size > MAX_RECORD {
                self.skipped += 1;
                at = end;
                break;
            }
            if end > buf.len() {
                break; // half-written: read again next time
            }
            if id == JIT_CODE_LOAD && (size as usize) > CODE_LOAD_FIXED {
                let addr = u64_at(at + RECORD_PREFIX + 16).unwrap_or(0);
                let code_size = u64_at(at + RECORD_PREFIX + 24).unwrap_or(0);
                let name = &buf[at + CODE_LOAD_FIXED..end];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                let name = String::from_utf8_lossy(name);
                // Only precompiled code: JIT code is the perf map's.
                if (name.ends_with("[PreJIT]") || name.ends_with("[PreJit-cold]")) && code_size > 0
                {
                    self.symbols.insert(
                        addr,
                        (addr.saturating_add(code_size), display_name(&name).into()),
                    );
                }
            }
            at = end;
        }
        at
    }

    /// The precompiled method whose code holds `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<str>> {
        let (_, (end, name)) = self.symbols.range(..=addr).next_back()?;
        (addr < *end).then_some(name)
    }

    /// Did the file break the format?
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

/// Blanks the code bytes of the whole `JIT_CODE_LOAD` records in `buf`, a
/// read of a jitdump at `offset` (a read starts at its header or at a
/// record: where the last whole record ended). What a capture keeps of a
/// read (see [`crate::replay`]): naming reads the names and addresses
/// only, and zeros take no room once deflated.
pub fn blank_code(buf: &mut [u8], offset: u64) {
    let u32_at = |buf: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0;
    if offset == 0 {
        match (u32_at(buf, 0), u32_at(buf, 8)) {
            (Some(MAGIC), Some(size)) => at = size as usize,
            _ => return,
        }
    }
    while let (Some(id), Some(size)) = (u32_at(buf, at), u32_at(buf, at + 4)) {
        let end = at.saturating_add(size as usize);
        if (size as usize) < RECORD_PREFIX || end > buf.len() {
            return;
        }
        if id == JIT_CODE_LOAD && (size as usize) > CODE_LOAD_FIXED {
            let body = &mut buf[at + CODE_LOAD_FIXED..end];
            if let Some(nul) = body.iter().position(|&b| b == 0) {
                body[nul + 1..].fill(0);
            }
        }
        at = end;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header() -> Vec<u8> {
        let mut h = Vec::new();
        for v in [MAGIC, 1, 40, 62, 0, 42] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&[0; 16]);
        h
    }

    pub(crate) fn code_load(addr: u64, size: u64, name: &str) -> Vec<u8> {
        let total = CODE_LOAD_FIXED + name.len() + 1 + size as usize;
        let mut r = Vec::new();
        r.extend_from_slice(&JIT_CODE_LOAD.to_le_bytes());
        r.extend_from_slice(&(total as u32).to_le_bytes());
        r.extend_from_slice(&0u64.to_le_bytes());
        r.extend_from_slice(&[0; 8]); // pid, tid
        for v in [addr, addr, size, 0] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(name.as_bytes());
        r.push(0);
        r.extend(std::iter::repeat_n(0xCC, size as usize));
        r
    }

    #[test]
    fn reads_precompiled_methods_from_whole_records_only() {
        let mut file = header();
        file.extend(code_load(
            0x1000,
            0x40,
            "int32 [System.Private.CoreLib] System.Collections.HashHelpers::GetPrime(int32)[PreJIT]",
        ));
        file.extend(code_load(
            0x2000,
            0x10,
            "int64 [P] P::Hot(int64)[OptimizedTier1]",
        ));
        let cut = file.len();
        file.extend(code_load(0x3000, 0x20, "void [S] S.T::M()[PreJIT]"));

        let mut dump = JitDump::at(None);
        let first = dump.parse(&file[..cut + 30]);
        assert_eq!(first, cut, "a half-written record was consumed");
        assert_eq!(
            dump.lookup(0x1010).map(|n| &**n),
            Some("System.Collections.HashHelpers::GetPrime")
        );
        assert_eq!(dump.lookup(0x2005), None, "JIT code is the perf map's");
        assert_eq!(dump.lookup(0x3005), None);
        assert_eq!(dump.parse(&file[first..]), file.len() - cut);
        assert_eq!(dump.lookup(0x3005).map(|n| &**n), Some("S.T::M"));
        assert_eq!(dump.lookup(0x3020), None);
    }

    #[test]
    fn a_capture_blanks_code_bytes_and_names_the_same() {
        let mut file = header();
        file.extend(code_load(0x1000, 0x40, "void [S] S.T::A()[PreJIT]"));
        let second = file.len();
        file.extend(code_load(0x2000, 0x10, "void [S] S.T::B()[PreJIT]"));
        let mut blanked = file.clone();
        blank_code(&mut blanked, 0);
        assert_eq!(blanked.len(), file.len());
        assert!(!blanked.contains(&0xCC), "code bytes kept");
        assert!(file.contains(&0xCC));
        // A read from a record on, cut inside its last record: the whole
        // record blanked, the cut one left as it is.
        let tail = &file[second..file.len() - 4];
        let mut tail_blanked = tail.to_vec();
        blank_code(&mut tail_blanked, second as u64);
        assert_eq!(tail_blanked, tail, "a cut record is not a whole one");
        let mut whole = file[second..].to_vec();
        blank_code(&mut whole, second as u64);
        assert_eq!(whole, blanked[second..], "a read from a record on");
        let mut dump = JitDump::at(None);
        assert_eq!(dump.parse(&blanked), file.len());
        assert_eq!(dump.lookup(0x1001).map(|n| &**n), Some("S.T::A"));
        assert_eq!(dump.lookup(0x200f).map(|n| &**n), Some("S.T::B"));
        // Not a jitdump: left alone.
        let mut junk = b"no magic, no header, nothing to blank.....".to_vec();
        let kept = junk.clone();
        blank_code(&mut junk, 0);
        assert_eq!(junk, kept);
    }

    #[test]
    fn a_corrupt_file_is_left_alone() {
        let mut dump = JitDump::at(None);
        assert_eq!(dump.parse(b"not a jitdump at all, no magic here......"), 0);
        assert!(dump.is_broken());
        let mut file = header();
        file.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0]); // record of 3 bytes
        let mut dump = JitDump::at(None);
        dump.parse(&file);
        assert!(dump.is_broken());
    }

    #[test]
    fn a_record_too_large_is_skipped_unread() {
        let mut file = header();
        let big = MAX_RECORD as usize + 100;
        file.extend_from_slice(&JIT_CODE_LOAD.to_le_bytes());
        file.extend_from_slice(&(big as u32).to_le_bytes());
        file.extend_from_slice(&[0; 8]);
        let mut dump = JitDump::at(None);
        // Consumed past the buffer: the next read starts after it.
        assert_eq!(dump.parse(&file), 40 + big);
        assert_eq!(dump.skipped, 1);
        assert!(!dump.is_broken());
    }
}
