//! Go's own symbol table, `.gopclntab`: function names (and inlined calls) for
//! every PC of a Go binary, present even when it is stripped (`-ldflags='-s -w'`)
//! since the runtime needs it for tracebacks. blazesym does not read it.
//!
//! Layouts (golang/go `src/runtime/symtab.go`, `runtime2.go`, `symtabinl.go`,
//! `debug/gosym/pclntab.go`, `cmd/link/internal/ld/pcln.go`; checked from go1.19.8
//! to go1.23.5, and on binaries of the versions the tests build):
//! - Header (`pcHeader`): `u32 magic` (0xfffffff0 for Go 1.18-1.19, 0xfffffff1
//!   for 1.20 on), `u8 pad, pad, minLC (PC quantum), ptrSize`, then `nfunc`,
//!   `nfiles`, `textStart`, and the offsets of `funcnametab`, `cutab`, `filetab`,
//!   `pctab` and `pclntable` from the header, each pointer-sized.
//! - `pclntable` starts with `nfunc + 1` pairs `{u32 entryoff, u32 funcoff}`
//!   (entry relative to `textStart`, `_func` relative to `pclntable`), the last
//!   one ending the last function.
//! - `_func`: `u32 entryOff, i32 nameOff, i32 args, u32 deferreturn, u32 pcsp,
//!   pcfile, pcln, npcdata, cuOffset`, (1.20+: `i32 startLine`), `u8 funcID, flag,
//!   _, nfuncdata`, then `npcdata` u32 pctab offsets and `nfuncdata` u32 offsets
//!   from `moduledata.gofunc`.
//! - A pc-value table is a sequence of (zig-zag varint value delta, varint pc
//!   delta × minLC) pairs starting from value -1 at the entry.
//! - Inlining: `pcdata[2]` (PCDATA_InlTreeIndex) maps a PC to an index in the
//!   inline tree `funcdata[3]` (FUNCDATA_InlTree); an entry is `{u8 funcID, 3 pad,
//!   i32 nameOff, i32 parentPc, i32 startLine}` (1.20+) or `{i16 parent, u8
//!   funcID, u8 pad, i32 file, i32 line, i32 nameOff, i32 parentPc}` (1.18-1.19);
//!   the caller's position is `entry + parentPc`.
//! - `textStart` is relocated in PIE binaries before 1.26 and always 0 from 1.26
//!   (then `moduledata.text`, in `.go.module`); `moduledata` begins with a pointer
//!   to the header, and holds `text` at +176 and `gofunc` at +320 (+304 in
//!   1.18-1.19), read through the relative relocations in PIE binaries.
//!
//! A table that breaks these rules is refused whole ([`PclnError`]); frames that
//! cannot be named stay `[module+0xOFFSET]`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::{
    le::{u32_at, u64_at},
    native::elf::Elf,
};

/// What reading a file's Go table gave: the table, not Go (`None`), or why it
/// could not be read.
type Entry = Result<Option<Arc<GoTable>>, String>;

/// Go function tables by file, shared by the pipeline (a frameless leaf's caller)
/// and the symbolizer thread (names), so that each file is read and parsed once.
#[derive(Debug, Clone, Default)]
pub struct GoTables(Arc<Mutex<HashMap<PathBuf, Entry>>>);

impl GoTables {
    /// The table of the binary at `path`, if it is Go and its table reads.
    pub fn get(&self, path: &Path) -> Option<Arc<GoTable>> {
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = lock().get(path) {
            return entry.clone().ok().flatten();
        }
        // Parsed without the lock held: the other thread never waits on a file.
        // Most files are not Go: their headers say so without reading them. A
        // Go one is copied from the mapping checked (a regular file, opened
        // without following a link or blocking), not opened again by path.
        let go = crate::native::elf::MappedFile::open(path)
            .filter(|file| Elf::parse(file.bytes()).is_some_and(|elf| may_be_go(&elf)));
        let entry: Entry = match go {
            Some(file) => GoTable::parse(file.bytes().to_vec())
                .map(|t| t.map(Arc::new))
                .map_err(|e| e.to_string()),
            None => Ok(None),
        };
        lock()
            .entry(path.to_path_buf())
            .or_insert(entry)
            .clone()
            .ok()
            .flatten()
    }

    /// Go binaries whose table could not be read: (file name, why).
    pub fn errors(&self) -> Vec<(String, String)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors: Vec<(String, String)> = map
            .iter()
            .filter_map(|(path, entry)| {
                let why = entry.as_ref().err()?;
                let name = path.file_name()?.to_string_lossy().into_owned();
                Some((name, why.clone()))
            })
            .collect();
        errors.sort();
        errors
    }
}

/// Why a Go symbol table could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unreadable .gopclntab: {0}")]
pub struct PclnError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

/// The function table of one Go binary.
#[derive(Debug)]
pub struct GoTable {
    /// The whole file (the tables point into `.gopclntab` and `.rodata`).
    file: Vec<u8>,
    elf: Elf,
    layout: Layout,
    quantum: u64,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    /// `cutab`: per compilation unit, its files' offsets into `filetab`.
    cutab: usize,
    /// `filetab`: NUL-terminated source paths.
    filetab: usize,
    pctab: usize,
    pclntable: usize,
    /// `moduledata.gofunc` (virtual address), for the inline tree.
    gofunc: Option<u64>,
    /// The Go version that built it (`go1.23.9`), from its build info.
    pub version: Option<String>,
    /// Its goroutine layout from DWARF, read when first asked.
    dwarf: std::sync::OnceLock<Option<super::dwarf::Layout>>,
    /// Its stack roots (see [`GoTable::roots`]), found when first asked.
    roots: std::sync::OnceLock<Vec<(u64, u64)>>,
}

/// One frame a PC stands for: the function, and whether it was inlined into its
/// caller (the next frame out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFrame {
    /// `main.hot`, `net/http.(*conn).serve`, ...
    pub name: String,
    /// Inlined into the frame after it.
    pub inlined: bool,
    /// Its source file and line at the PC (for an inlined call's caller, the
    /// line of the call), from the function's `pcfile` and `pcln` tables.
    pub source: Option<(String, u32)>,
}

/// The Go version in a `.go.buildinfo` section (cmd/link `buildinfo`,
/// debug/buildinfo; Go 1.18+): the 14-byte magic `\xff Go buildinf:`, pointer
/// size, flags (bit 1: pointer-free format), padding to 32 bytes, then the
/// version as a uvarint-length string.
pub fn build_info_version(d: &[u8]) -> Option<String> {
    if d.get(..14)? != b"\xff Go buildinf:" || d.get(15)? & 2 == 0 {
        return None;
    }
    let (mut len, mut at, mut shift) = (0usize, 32usize, 0);
    loop {
        let b = *d.get(at)?;
        at += 1;
        len |= usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    let v = std::str::from_utf8(d.get(at..at + len)?).ok()?;
    v.starts_with("go").then(|| v.to_owned())
}

const MAGIC_118: u32 = 0xFFFF_FFF0;
const MAGIC_120: u32 = 0xFFFF_FFF1;
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
const MODULEDATA_TEXT: u64 = 176;

/// A Go shared library (`-buildmode=c-shared`) has no `.gopclntab` section:
/// the linker merges the table into `.data.rel.ro`. A Go library is one with
/// `.go.buildinfo`; the table is where its header is (`runtime.pclntab`), found
/// by its magic and checked by its offsets. The "section" returned runs from
/// there to the end of `.data.rel.ro`.
/// Could `elf` hold a Go table ([`GoTable::parse`] looks no further)?
fn may_be_go(elf: &Elf) -> bool {
    [".gopclntab", ".data.rel.ro.gopclntab", ".go.buildinfo"]
        .iter()
        .any(|name| elf.section(name).is_some())
}

fn shared_library_table(elf: &Elf, file: &[u8]) -> Option<crate::native::elf::Section> {
    elf.section(".go.buildinfo")?;
    let data = elf.section(".data.rel.ro")?;
    let bytes = elf.section_data(file, ".data.rel.ro")?;
    let plausible = |at: usize| -> bool {
        let word = |i: usize| u64_at(bytes, at + 8 + 8 * i);
        let rest = (bytes.len() - at) as u64;
        // nfunc, then the offsets of funcnametab, cutab, filetab, pctab and
        // pclntable, in order and inside the rest of the section.
        let offsets: Option<Vec<u64>> = (3..8).map(word).collect();
        matches!(word(0), Some(n) if n > 0 && n < 1 << 24)
            && offsets.is_some_and(|o| o.windows(2).all(|w| w[0] <= w[1]) && o[4] < rest)
    };
    let at = (0..bytes.len().saturating_sub(64)).step_by(8).find(|&at| {
        let magic = u32_at(bytes, at);
        matches!(magic, Some(MAGIC_118 | MAGIC_120))
            && bytes[at + 4..at + 6] == [0, 0]
            && matches!(bytes[at + 6], 1 | 2 | 4)
            && bytes[at + 7] == 8
            && plausible(at)
    })?;
    Some(crate::native::elf::Section {
        addr: data.addr + at as u64,
        offset: data.offset + at as u64,
        size: data.size - at as u64,
        nobits: false,
        compressed: false,
    })
}

impl GoTable {
    /// Reads the table of the Go binary `file`; `Ok(None)` if it is not Go.
    pub fn parse(file: Vec<u8>) -> Result<Option<Self>, PclnError> {
        let Some(elf) = Elf::parse(&file) else {
            return Ok(None);
        };
        let Some(section) = elf
            .section(".gopclntab")
            .or_else(|| elf.section(".data.rel.ro.gopclntab"))
            .or_else(|| shared_library_table(&elf, &file))
        else {
            return Ok(None);
        };
        let base = section.offset as usize;
        let bad = PclnError;
        let magic = u32_at(&file, base).ok_or(bad("truncated header"))?;
        let layout = match magic {
            MAGIC_118 => Layout::Go118,
            MAGIC_120 => Layout::Go120,
            _ => return Err(bad("unknown magic (Go before 1.18, or newer than known)")),
        };
        let (quantum, ptr) = (file.get(base + 6).copied(), file.get(base + 7).copied());
        if ptr != Some(8) {
            return Err(bad("not a 64-bit table"));
        }
        let word = |i: usize| u64_at(&file, base + 8 + 8 * i).ok_or(bad("truncated header"));
        let nfunc = word(0)? as usize;
        let header_text = word(2)?;
        let offset = |i: usize| -> Result<usize, PclnError> {
            let o = word(i)? as usize;
            (o < section.size as usize)
                .then_some(base + o)
                .ok_or(bad("offset outside the section"))
        };
        let (funcnames, cutab, filetab, pctab, pclntable) =
            (offset(3)?, offset(4)?, offset(5)?, offset(6)?, offset(7)?);
        // Checked arithmetic: a count from the file must not wrap past the
        // bound (2^61 functions would then pass it and loop for ever).
        let table_end = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(pclntable));
        if nfunc == 0 || table_end.is_none_or(|end| end > base + section.size as usize) {
            return Err(bad("function table outside the section"));
        }
        let pcln_vaddr = section.addr;
        // moduledata: `.go.module` (1.26+), else the data word that points at the
        // header (a relocation in PIE).
        let moduledata = elf.section(".go.module").map(|s| s.addr).or_else(|| {
            elf.relocation_to(&file, pcln_vaddr).or_else(|| {
                let data = elf.section(".noptrdata")?;
                let bytes = elf.section_data(&file, ".noptrdata")?;
                (0..bytes.len() / 8)
                    .find(|&i| u64_at(bytes, i * 8) == Some(pcln_vaddr))
                    .map(|i| data.addr + 8 * i as u64)
            })
        });
        // textStart: the header's, relocated in PIE; from 1.26, moduledata.text.
        let text_start = if header_text != 0 {
            header_text
        } else {
            elf.pointer(&file, pcln_vaddr + 24)
                .filter(|&t| t != 0)
                .or_else(|| elf.pointer(&file, moduledata? + MODULEDATA_TEXT))
                .or_else(|| elf.section(".text").map(|s| s.addr))
                .ok_or(bad("no text start"))?
        };
        // `moduledata.gofunc`: funcdata moved into `.gopclntab` in 1.26, with
        // moduledata in `.go.module` and `gofunc` at +344 (read off a go1.27.3
        // binary: +312 is `.go.func`, +336 `.rodata`, +344 inside `.gopclntab`).
        let gofunc_at = match (layout, elf.section(".go.module").is_some()) {
            (Layout::Go118, _) => 304,
            (Layout::Go120, false) => 320,
            (Layout::Go120, true) => 344,
        };
        let gofunc = moduledata.and_then(|m| elf.pointer(&file, m + gofunc_at));
        let version = elf
            .section_data(&file, ".go.buildinfo")
            .and_then(build_info_version);
        Ok(Some(GoTable {
            version,
            layout,
            quantum: u64::from(quantum.unwrap_or(1).max(1)),
            nfunc,
            text_start,
            funcnames,
            cutab,
            filetab,
            pctab,
            pclntable,
            gofunc,
            elf,
            file,
            dwarf: std::sync::OnceLock::new(),
            roots: std::sync::OnceLock::new(),
        }))
    }

    /// Functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// No function?
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The link-time address of a code mapping starting at file offset `off`
    /// (see [`Elf::mapping_vaddr`]).
    pub fn mapping_vaddr(&self, off: u64) -> Option<u64> {
        self.elf.mapping_vaddr(off)
    }

    /// The virtual address of file offset `off`.
    pub fn vaddr(&self, off: u64) -> Option<u64> {
        self.elf.vaddr(off)
    }

    /// Is `pc` in a Go function? In a binary built with cgo, the C functions
    /// linked in (outside `runtime.text`..`runtime.etext`) are not.
    pub fn covers(&self, pc: u64) -> bool {
        self.func(pc).is_some()
    }

    /// The `_func` holding `pc`: its file offset and entry PC.
    fn func(&self, pc: u64) -> Option<(usize, u64)> {
        let rel = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let entry = |i: usize| u32_at(&self.file, self.pclntable + 8 * i);
        // The last function whose entry is at or before pc (the final pair only
        // ends the table).
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid)? <= rel {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo.checked_sub(1)?;
        if rel >= entry(self.nfunc)? {
            return None;
        }
        let funcoff = u32_at(&self.file, self.pclntable + 8 * i + 4)? as usize;
        let f = self.pclntable + funcoff;
        Some((f, self.text_start + u64::from(u32_at(&self.file, f)?)))
    }

    fn name(&self, name_off: i32) -> Option<String> {
        let start = self.funcnames + usize::try_from(name_off).ok()?;
        let s = self.file.get(start..)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    /// The value of pc-value table `table` at `pc`, for a function entered at
    /// `entry`.
    fn pcvalue(&self, table: u32, entry: u64, pc: u64) -> Option<i32> {
        for range in self.pc_ranges(table, entry) {
            let (_, end, val) = range?;
            if pc < end {
                return Some(val);
            }
        }
        None
    }

    /// The pc-value table at `table` (an offset into `pctab`) of the function
    /// at `entry`, as `(start, end, value)` ranges in order, until the table
    /// ends; an entry that does not read is a `None`, and the last item.
    fn pc_ranges(
        &self,
        table: u32,
        entry: u64,
    ) -> impl Iterator<Item = Option<(u64, u64, i32)>> + '_ {
        let mut at = self.pctab + table as usize;
        let (mut val, mut cur) = (-1i32, entry);
        let (mut first, mut done) = (true, table == 0);
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut step = || -> Option<Option<(u64, u64, i32)>> {
                let uvdelta = self.varint(&mut at)?;
                if uvdelta == 0 && !first {
                    return Some(None); // the table's end
                }
                first = false;
                val = val.wrapping_add(-((uvdelta & 1) as i32) ^ (uvdelta >> 1) as i32);
                let next = cur.checked_add(u64::from(self.varint(&mut at)?) * self.quantum)?;
                let start = std::mem::replace(&mut cur, next);
                Some(Some((start, next, val)))
            };
            match step() {
                Some(Some(range)) => Some(Some(range)),
                Some(None) => {
                    done = true;
                    None
                }
                None => {
                    done = true;
                    Some(None)
                }
            }
        })
    }

    fn varint(&self, at: &mut usize) -> Option<u32> {
        let mut v = 0u32;
        for shift in (0..35).step_by(7) {
            let b = *self.file.get(*at)?;
            *at += 1;
            v |= u32::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The frames `pc` stands for, innermost first: inlined calls, then the
    /// function they were inlined into. `leaf` is false for a return address
    /// (then the call instruction, `pc - 1`, is looked up).
    pub fn frames(&self, pc: u64, leaf: bool) -> Option<Vec<GoFrame>> {
        let pc = if leaf { pc } else { pc.checked_sub(1)? };
        let (f, entry) = self.func(pc)?;
        let d = &self.file;
        let name_off = u32_at(d, f + 4)? as i32;
        let fixed = self.func_fixed();
        let npcdata = u32_at(d, f + 28)? as usize;
        let nfuncdata = usize::from(*d.get(f + fixed - 1)?);
        let mut frames = Vec::new();
        // The PC each frame is at: `pc`, then each inlined call's site.
        let mut at_pc = pc;
        if let Some(gofunc) = self.gofunc
            && npcdata > PCDATA_INL_TREE_INDEX
            && nfuncdata > FUNCDATA_INL_TREE
        {
            let table = u32_at(d, f + fixed + 4 * PCDATA_INL_TREE_INDEX)?;
            let tree = u32_at(d, f + fixed + 4 * npcdata + 4 * FUNCDATA_INL_TREE)?;
            if let Some(tree) = (tree != u32::MAX)
                .then(|| self.elf.file_offset(gofunc + u64::from(tree)))
                .flatten()
            {
                let tree = tree as usize;
                for _ in 0..64 {
                    let Some(idx) = self.pcvalue(table, entry, at_pc).filter(|&i| i >= 0) else {
                        break;
                    };
                    let (name_off, parent_pc) = match self.layout {
                        Layout::Go120 => {
                            let e = tree + 16 * idx as usize;
                            (u32_at(d, e + 4)? as i32, u32_at(d, e + 8)? as i32)
                        }
                        Layout::Go118 => {
                            let e = tree + 20 * idx as usize;
                            (u32_at(d, e + 12)? as i32, u32_at(d, e + 16)? as i32)
                        }
                    };
                    // An entry that does not read: the function alone (never a
                    // wrong inlined frame).
                    let Some(name) = self.name(name_off) else {
                        frames.clear();
                        at_pc = pc;
                        break;
                    };
                    frames.push(GoFrame {
                        name,
                        inlined: true,
                        source: self.source(f, entry, at_pc),
                    });
                    let Some(next) = entry.checked_add_signed(i64::from(parent_pc)) else {
                        frames.clear();
                        at_pc = pc;
                        break;
                    };
                    at_pc = next;
                }
            }
        }
        frames.push(GoFrame {
            name: self.name(name_off)?,
            inlined: false,
            source: self.source(f, entry, at_pc),
        });
        Some(frames)
    }

    /// The source file and line of `_func` `f` (entered at `entry`) at `pc`:
    /// `pcfile` (+20) indexes the unit's files (`cutab[cuOffset + n]`, cuOffset
    /// at +32) into `filetab`, `pcln` (+24) is the line (runtime/symtab.go's
    /// `_func`, the same offsets in Go 1.18 to 1.27).
    fn source(&self, f: usize, entry: u64, pc: u64) -> Option<(String, u32)> {
        let d = &self.file;
        let fileno = self.pcvalue(u32_at(d, f + 20)?, entry, pc)?;
        let line = self.pcvalue(u32_at(d, f + 24)?, entry, pc)?;
        let cu = u32_at(d, f + 32)? as usize;
        let at = self.cutab + 4 * (cu + usize::try_from(fileno).ok()?);
        let name_off = u32_at(d, at)?;
        if name_off == u32::MAX {
            return None;
        }
        let s = d.get(self.filetab + name_off as usize..)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some((
            String::from_utf8_lossy(&s[..end]).into_owned(),
            u32::try_from(line).ok()?,
        ))
    }

    /// How far `pc`'s function has moved the stack pointer below its entry value
    /// there (its `pcsp` table): 0 means the return address is at `sp`.
    pub fn sp_delta(&self, pc: u64) -> Option<i32> {
        let (f, entry) = self.func(pc)?;
        self.pcvalue(self.pcsp_table(f)?, entry, pc)
    }

    /// The offset of the `_func` at `f`'s `pcsp` table.
    fn pcsp_table(&self, f: usize) -> Option<u32> {
        u32_at(&self.file, f + 16)
    }

    /// Where the return address of `pc`'s function is, in words above the
    /// stack pointer, when `pc` is where its frame record is not linked in
    /// RBP yet or any more (RBP is still or again the caller's, so a
    /// frame-pointer walk skips the caller): with nothing pushed (at entry, or
    /// after the epilogue's `POPQ BP`), and in the prologue between pushing
    /// (or storing) the caller's RBP and pointing RBP at it (`PUSHQ BP` /
    /// `MOVQ SP, BP` from Go 1.21, `SUBQ $n, SP` / `MOVQ BP, n-8(SP)` / `LEAQ
    /// n-8(SP), BP` before; cmd/internal/obj/x86/obj6.go). `None` elsewhere.
    pub fn return_slot(&self, pc: u64) -> Option<usize> {
        let (f, entry) = self.func(pc)?;
        let delta = self.pcvalue(self.pcsp_table(f)?, entry, pc)?;
        if delta == 0 {
            return Some(0);
        }
        // The prologue is the first few instructions (after the stack
        // check); RBP is linked by `mov %rsp,%rbp` or `lea d(%rsp),%rbp`.
        let len = usize::try_from(pc.checked_sub(entry)?).ok()?;
        if len > 48 || delta < 0 || delta % 8 != 0 {
            return None;
        }
        let code = self.bytes(entry, len)?;
        let links = |w: &[u8]| {
            w[..3] == [0x48, 0x89, 0xe5]
                || w[..3] == [0x48, 0x8d, 0x6c]
                || w[..3] == [0x48, 0x8d, 0xac]
        };
        if code.windows(3).any(links) {
            return None;
        }
        usize::try_from(delta / 8).ok()
    }

    /// The function at `entry`'s stack-pointer offsets (its `pcsp` table) as
    /// `(start, end, delta)` ranges, in order: `delta` bytes below the stack
    /// pointer at entry from `start` up to `end` (the padding after the code
    /// is not covered). `None` if the table does not read.
    pub fn sp_ranges(&self, entry: u64, end: u64) -> Option<Vec<(u64, u64, i32)>> {
        let (f, found) = self.func(entry)?;
        if found != entry {
            return None;
        }
        let table = self.pcsp_table(f)?;
        if table == 0 {
            return None;
        }
        let mut out = Vec::new();
        // The table ends with the code: what is left up to the next function
        // is padding.
        for range in self.pc_ranges(table, entry) {
            let (start, next, val) = range?;
            out.push((start, next.min(end), val));
            if out.len() > 1 << 16 {
                return None;
            }
            if next >= end {
                break;
            }
        }
        Some(out)
    }

    /// The `_func.flag` of the function at `entry` (`abi.FuncFlag`:
    /// TopFrame 1, SPWrite 2, Asm 4; the same bits in Go 1.18-1.27).
    pub fn func_flag(&self, entry: u64) -> Option<u8> {
        let (f, found) = self.func(entry)?;
        (found == entry).then(|| self.file.get(f + self.func_fixed() - 3).copied())?
    }

    /// The size of a `_func`'s fixed part (up to its pcdata offsets), which
    /// ends with `funcID, flag, _, nfuncdata` (one byte each).
    fn func_fixed(&self) -> usize {
        match self.layout {
            Layout::Go118 => 40,
            Layout::Go120 => 44,
        }
    }

    /// Every function: `(entry, end, _func offset)`, in address order
    /// (link-time addresses relative to `text_start`).
    fn funcs(&self) -> impl Iterator<Item = (u32, u32, usize)> + '_ {
        (0..self.nfunc).filter_map(move |i| {
            let entry = u32_at(&self.file, self.pclntable + 8 * i)?;
            let end = u32_at(&self.file, self.pclntable + 8 * (i + 1))?;
            let f = self.pclntable + u32_at(&self.file, self.pclntable + 8 * i + 4)? as usize;
            Some((entry, end, f))
        })
    }

    /// The file offset of virtual address `vaddr`.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.file_offset(vaddr)
    }

    /// The goroutine layout its DWARF gives, if it has DWARF (read once).
    pub fn dwarf_layout(&self) -> Option<super::dwarf::Layout> {
        *self
            .dwarf
            .get_or_init(|| super::dwarf::layout(&self.file, &self.elf))
    }

    /// `len` bytes of the file at virtual address `vaddr`.
    pub fn bytes(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let off = self.file_offset(vaddr)? as usize;
        self.file.get(off..off.checked_add(len)?)
    }

    /// The pointer stored at `vaddr` (relocated in a PIE).
    pub fn pointer(&self, vaddr: u64) -> Option<u64> {
        self.elf.pointer(&self.file, vaddr)
    }

    /// The function a goroutine starting at `pc` really runs: `pc` itself,
    /// unless it is a wrapper the compiler made for a `go f(args)` statement
    /// (`main.main.gowrap1`, Go 1.22+), whose one call is to `f` (the first
    /// `call rel32` in its body; the stack-growth call comes after its `ret`).
    pub fn start_function(&self, pc: u64) -> Option<String> {
        let name = self.frames(pc, true)?.first()?.name.clone();
        let is_wrapper = name
            .rsplit_once(".gowrap")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_wrapper {
            return Some(name);
        }
        let (_, entry) = self.func(pc)?;
        let code = self.bytes(entry, 64)?;
        let callee = (0..code.len().saturating_sub(4)).find_map(|i| {
            if code[i] != 0xe8 {
                return None;
            }
            let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().ok()?);
            let target = (entry + i as u64 + 5).checked_add_signed(i64::from(rel))?;
            let (_, callee_entry) = self.func(target)?;
            (callee_entry == target).then_some(target)
        });
        Some(
            match callee.and_then(|t| self.frames(t, true)?.first().cloned()) {
                Some(f) => f.name,
                None => name,
            },
        )
    }

    /// `(entry, end)` of the function named `name`.
    pub fn function(&self, name: &str) -> Option<(u64, u64)> {
        self.functions()
            .find(|(_, _, n)| n == name)
            .map(|(entry, end, _)| (entry, end))
    }

    /// The functions its stacks start in, which nothing calls (Go's
    /// `TOPFRAME`s: `runtime.goexit` under every goroutine, `runtime.mstart`
    /// under every thread's system stack, `runtime.rt0_go` under the first):
    /// `(entry, end)` virtual addresses in address order.
    pub fn roots(&self) -> &[(u64, u64)] {
        self.roots.get_or_init(|| {
            let mut v: Vec<(u64, u64)> = ["runtime.goexit", "runtime.mstart", "runtime.rt0_go"]
                .iter()
                .filter_map(|name| self.function(name))
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// The functions the Go toolchain generated and Go's own tracebacks and
    /// profiles leave out (`abi.FuncIDWrapper`: ABI0/ABIInternal wrappers,
    /// which carry the name of the function they call, method-value and
    /// pointer-receiver wrappers, hash/eq algorithms): `(entry, end)`, in
    /// address order. The wrapper id's number differs between versions
    /// (21 in Go 1.19, 22 once `FuncID_corostart` came, 23 with
    /// `FuncID_runFinalizers`/`runCleanups`: internal/abi/symtab.go), so it
    /// is read from a function the linker always marks so,
    /// `runtime.deferreturn` (cmd/internal/objabi/funcid.go: "Don't show in
    /// call stack"); none if it is missing.
    pub fn wrappers(&self) -> Vec<(u64, u64)> {
        // `_func.funcID`: the 4th byte from the end of the fixed part.
        let func_id = |f: usize| self.file.get(f + self.func_fixed() - 4).copied();
        let Some(wrapper) = self
            .funcs()
            .find(|&(_, _, f)| {
                u32_at(&self.file, f + 4)
                    .and_then(|off| self.name(off as i32))
                    .is_some_and(|n| n == "runtime.deferreturn")
            })
            .and_then(|(_, _, f)| func_id(f))
            .filter(|&id| id != 0)
        else {
            return Vec::new();
        };
        self.funcs()
            .filter(|&(_, _, f)| func_id(f) == Some(wrapper))
            .map(|(entry, end, _)| {
                (
                    self.text_start + u64::from(entry),
                    self.text_start + u64::from(end),
                )
            })
            .collect()
    }

    /// Every function: `(entry, end, name)`, in address order.
    pub fn functions(&self) -> impl Iterator<Item = (u64, u64, String)> + '_ {
        self.funcs().filter_map(|(entry, end, f)| {
            let name = self.name(u32_at(&self.file, f + 4)? as i32)?;
            Some((
                self.text_start + u64::from(entry),
                self.text_start + u64::from(end),
                name,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use crossprof_tests::{Go, GoBuild};

    use super::*;

    fn table(go: Go, build: GoBuild) -> GoTable {
        let bin = go.fixture("chain", build);
        GoTable::parse(std::fs::read(&bin).unwrap())
            .unwrap_or_else(|e| panic!("go {} {build:?}: {e}", go.version()))
            .unwrap_or_else(|| panic!("go {} {build:?}: not read as Go", go.version()))
    }

    #[test]
    fn names_functions_and_inlined_calls_of_every_version_and_build() {
        let src = std::fs::read_to_string(
            crossprof_tests::workspace_root().join("tests/fixtures/go/chain.go"),
        )
        .unwrap();
        let line_of = |text: &str| 1 + src.lines().position(|l| l.contains(text)).unwrap() as u32;
        let (mix_at, call_at) = (line_of("func mix("), line_of("x = mix("));
        for go in Go::ALL {
            for build in GoBuild::ALL {
                let what = format!("go {} {build:?}", go.version());
                let t = table(go, build);
                assert!(t.len() > 1000, "{what}: {} functions", t.len());
                let version = t.version.clone().unwrap_or_default();
                assert!(
                    version.starts_with(&format!("go{}", go.version())),
                    "{what}: build info says {version:?}"
                );
                let (entry, end, _) = t
                    .functions()
                    .find(|f| f.2 == "main.hot")
                    .unwrap_or_else(|| panic!("{what}: no main.hot"));
                // Every PC of hot is hot, or mix inlined into it.
                let mut inlined = false;
                for pc in entry..end {
                    let frames = t.frames(pc, true).unwrap();
                    assert_eq!(frames.last().unwrap().name, "main.hot", "{what}");
                    assert!(!frames.last().unwrap().inlined);
                    if frames.len() == 2 {
                        assert_eq!(
                            frames[0],
                            GoFrame {
                                name: "main.mix".into(),
                                inlined: true,
                                source: frames[0].source.clone(),
                            },
                            "{what}"
                        );
                        inlined = true;
                        // Source lines: mix's body, and hot's line is the call.
                        let (file, line) = frames[0].source.clone().expect("mix's source");
                        assert!(file.ends_with("/chain.go"), "{what}: {file}");
                        assert!((mix_at + 1..mix_at + 8).contains(&line), "{what}: {line}");
                        let hot = frames[1].source.clone().expect("hot's source");
                        assert_eq!(hot.1, call_at, "{what}: main.hot at the call");
                    }
                }
                assert!(inlined, "{what}: main.mix never seen inlined");
                // hot is a leaf without a frame of its own: the return address
                // stays at sp all through it.
                assert_eq!(t.sp_delta(entry), Some(0), "{what}");
                assert_eq!(t.sp_delta(entry + (end - entry) / 2), Some(0), "{what}");
                // A return address is looked up at its call.
                let (work, _, _) = t.functions().find(|f| f.2 == "main.work").unwrap();
                assert_eq!(t.frames(work + 1, false).unwrap()[0].name, "main.work");
                assert!(t.frames(entry - 1, true).unwrap()[0].name != "main.hot");
            }
        }
    }

    /// main.work's return address, instruction by instruction from its
    /// entry: at SP at entry; right after `PUSHQ BP` (Go 1.21+) or at the
    /// store of BP after `SUBQ` (1.19), `delta / 8` words up; nowhere once RBP
    /// is linked (the frame-pointer walk sees the caller).
    #[test]
    fn the_return_address_is_found_until_the_frame_record_is_linked() {
        for go in [Go::Go119, Go::Go121, Go::Go127] {
            let t = table(go, GoBuild::Normal);
            let (entry, end) = t.function("main.work").unwrap();
            let code = t.bytes(entry, (end - entry) as usize).unwrap().to_vec();
            assert_eq!(t.return_slot(entry), Some(0), "go {}", go.version());
            let linked = code
                .windows(3)
                .position(|w| w == [0x48, 0x89, 0xe5] || w == [0x48, 0x8d, 0x6c])
                .unwrap() as u64;
            let saved = if go == Go::Go119 {
                // movq %rbp, d(%rsp) right before the lea.
                code[..linked as usize]
                    .windows(4)
                    .rposition(|w| w == [0x48, 0x89, 0x6c, 0x24])
                    .unwrap() as u64
            } else {
                assert_eq!(code[linked as usize - 1], 0x55, "go {}", go.version());
                linked
            };
            let delta = t.sp_delta(entry + saved).unwrap();
            assert!(delta > 0, "go {}", go.version());
            assert_eq!(
                t.return_slot(entry + saved),
                Some(delta as usize / 8),
                "go {}",
                go.version()
            );
            // Past the link: the body.
            let body = entry + linked + if go == Go::Go119 { 5 } else { 3 };
            assert_eq!(t.return_slot(body), None, "go {}", go.version());
        }
    }

    #[test]
    fn wrappers_are_found_in_every_version() {
        for go in Go::tested() {
            let t = table(go, GoBuild::Normal);
            let wrappers = t.wrappers();
            let named = |name: &str| t.function(name).unwrap();
            let is_wrapper = |range: (u64, u64)| wrappers.contains(&range);
            let what = go.version();
            assert!(wrappers.len() >= 3, "{what}: {wrappers:?}");
            assert!(is_wrapper(named("runtime.deferreturn")), "{what}");
            // Ordinary functions are not.
            for name in ["main.main", "main.work", "runtime.main", "runtime.goexit"] {
                assert!(!is_wrapper(named(name)), "{what}: {name}");
            }
            // An ABI wrapper shares its name with the function it calls: of
            // the functions named `runtime.newproc` (called from rt0_go's
            // assembly, ABI0), one is a wrapper and one is not.
            let newprocs: Vec<(u64, u64)> = t
                .functions()
                .filter(|f| f.2 == "runtime.newproc")
                .map(|f| (f.0, f.1))
                .collect();
            assert_eq!(newprocs.len(), 2, "{what}: {newprocs:?}");
            assert_eq!(
                newprocs.iter().filter(|&&r| is_wrapper(r)).count(),
                1,
                "{what}"
            );
        }
    }

    #[test]
    fn a_corrupt_table_is_an_error_or_unnamed_never_a_panic() {
        let bin = Go::Go123.fixture("chain", GoBuild::Stripped);
        let file = std::fs::read(&bin).unwrap();
        let elf = Elf::parse(&file).unwrap();
        let s = elf.section(".gopclntab").unwrap();
        // A bad magic: refused whole.
        let mut bad = file.clone();
        bad[s.offset as usize] ^= 0xFF;
        assert_eq!(
            GoTable::parse(bad).unwrap_err(),
            PclnError("unknown magic (Go before 1.18, or newer than known)")
        );
        // Garbage through the table: lookups fail or name, never panic.
        let mut junk = file.clone();
        for i in (s.offset as usize + 64..(s.offset + s.size) as usize).step_by(7) {
            junk[i] = junk[i].wrapping_mul(31).wrapping_add(7);
        }
        if let Ok(Some(t)) = GoTable::parse(junk) {
            let (lo, hi) = (t.text_start, t.text_start + 0x20_0000);
            for pc in (lo..hi).step_by(97) {
                let _ = t.frames(pc, true);
            }
        }
        // Not Go at all.
        assert!(
            GoTable::parse(std::fs::read("/proc/self/exe").unwrap())
                .unwrap()
                .is_none()
        );
        assert!(GoTable::parse(b"not even ELF".to_vec()).unwrap().is_none());
    }
}
