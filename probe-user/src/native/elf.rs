//! Just enough ELF64 (little-endian) to find sections, turn virtual addresses into
//! file offsets and back, and read the relative relocations that PIE binaries
//! keep their pointers in (System V ABI, x86-64 supplement). blazesym reads ELF
//! for symbols; this is for runtimes whose tables live in their own sections
//! (Go's `.gopclntab`).

use std::collections::HashMap;

use crate::le::{u16_at, u32_at, u64_at};

/// A section.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// Its virtual address (0 if not loaded).
    pub addr: u64,
    /// Its file offset.
    pub offset: u64,
    /// Its size in the file.
    pub size: u64,
    /// `SHT_NOBITS` (`.bss`): no bytes in the file.
    pub nobits: bool,
    /// `SHF_COMPRESSED`: the bytes are an `Elf64_Chdr` and a compressed stream.
    pub compressed: bool,
}

/// A loadable segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    /// `PF_X`.
    exec: bool,
}

/// An ELF file's layout, read from its bytes.
#[derive(Debug, Default)]
pub struct Elf {
    sections: HashMap<String, Section>,
    segments: Vec<Segment>,
    /// The `SHT_RELA` sections, as (file offset, entries inside the file).
    rela: Vec<(usize, usize)>,
    /// Their `R_X86_64_RELATIVE` relocations: where -> value (PIE pointers),
    /// read when first asked for: a large PIE has hundreds of thousands, and
    /// most reads of an ELF file (is it Go? where is its code?) need none.
    relative: std::sync::OnceLock<HashMap<u64, u64>>,
}

const R_X86_64_RELATIVE: u64 = 8;
const SHF_COMPRESSED: u64 = 0x800;
/// `Elf64_Chdr.ch_type` of a zlib stream.
const ELFCOMPRESS_ZLIB: u32 = 1;

/// The file offset of an executable's entry point (`e_entry`, `_start`), read
/// from the start of the file (its ELF and program headers); `None` for a file
/// that is not an executable (a shared library has no interpreter).
pub fn entry_file_offset(head: &[u8]) -> Option<u64> {
    if head.get(..4)? != b"\x7fELF" || head.get(4)? != &2 || head.get(5)? != &1 {
        return None;
    }
    let (kind, entry) = (u16_at(head, 0x10)?, u64_at(head, 0x18)?);
    let phoff = u64_at(head, 0x20)? as usize;
    let (phentsize, phnum) = (
        usize::from(u16_at(head, 0x36)?),
        usize::from(u16_at(head, 0x38)?),
    );
    let headers = (0..phnum).filter_map(|i| phoff.checked_add(i * phentsize));
    // ET_EXEC, or ET_DYN with an interpreter (PIE).
    let executable = kind == 2 || headers.clone().any(|p| u32_at(head, p) == Some(3));
    if !executable || entry == 0 {
        return None;
    }
    headers
        .filter(|&p| u32_at(head, p) == Some(1))
        .find_map(|p| {
            let (offset, vaddr, filesz) = (
                u64_at(head, p + 8)?,
                u64_at(head, p + 16)?,
                u64_at(head, p + 32)?,
            );
            (vaddr <= entry && entry - vaddr < filesz).then(|| (entry - vaddr).wrapping_add(offset))
        })
}

/// Whether the ELF file `head` starts (its first 18 bytes) is loaded at the
/// addresses it names (`ET_EXEC`): then its symbols are its addresses in any
/// process, known before it runs.
pub fn is_fixed_address_head(head: &[u8]) -> bool {
    head.get(..4) == Some(b"\x7fELF") && u16_at(head, 0x10) == Some(2)
}

/// [`is_fixed_address_head`] of the regular file at `path` (a canonical path:
/// no link is followed, a FIFO is not waited on; false if unreadable).
pub fn is_fixed_address(path: &std::path::Path) -> bool {
    use std::{io::Read, os::unix::fs::OpenOptionsExt as _};
    let mut head = [0u8; 18];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::ErrorKind::InvalidInput.into());
            }
            f.read_exact(&mut head)
        })
        .is_ok_and(|()| is_fixed_address_head(&head))
}

impl Elf {
    /// Reads the headers of `d`; `None` if it is not a little-endian ELF64 file.
    pub fn parse(d: &[u8]) -> Option<Self> {
        if d.get(..4)? != b"\x7fELF" || d.get(4)? != &2 || d.get(5)? != &1 {
            return None;
        }
        let (phoff, shoff) = (u64_at(d, 0x20)? as usize, u64_at(d, 0x28)? as usize);
        let (phentsize, phnum) = (usize::from(u16_at(d, 0x36)?), usize::from(u16_at(d, 0x38)?));
        let (shentsize, shnum) = (usize::from(u16_at(d, 0x3A)?), usize::from(u16_at(d, 0x3C)?));
        let shstrndx = usize::from(u16_at(d, 0x3E)?);
        let mut elf = Elf::default();
        for i in 0..phnum {
            let p = phoff.checked_add(i * phentsize)?;
            if u32_at(d, p)? == 1 {
                // PT_LOAD
                elf.segments.push(Segment {
                    offset: u64_at(d, p + 8)?,
                    vaddr: u64_at(d, p + 16)?,
                    filesz: u64_at(d, p + 32)?,
                    exec: u32_at(d, p + 4)? & 1 != 0,
                });
            }
        }
        let header = |i: usize| -> Option<(u32, u32, Section)> {
            let s = shoff.checked_add(i * shentsize).filter(|&s| s < d.len())?;
            let kind = u32_at(d, s + 4)?;
            Some((
                u32_at(d, s)?,
                kind,
                Section {
                    addr: u64_at(d, s + 16)?,
                    offset: u64_at(d, s + 24)?,
                    size: u64_at(d, s + 32)?,
                    nobits: kind == 8,
                    compressed: u64_at(d, s + 8)? & SHF_COMPRESSED != 0,
                },
            ))
        };
        let names = header(shstrndx).map(|(_, _, s)| s);
        for i in 0..shnum {
            let Some((name_off, kind, section)) = header(i) else {
                continue;
            };
            let name = names
                .and_then(|n| d.get((n.offset as usize).checked_add(name_off as usize)?..))
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default();
            if kind == 4 {
                // SHT_RELA. Only the entries inside the file: a section
                // header can say anything (a size of 2^64 would loop for ever).
                let at = section.offset as usize;
                let n = (section.size as usize / 24).min(d.len().saturating_sub(at) / 24);
                elf.rela.push((at, n));
            }
            elf.sections.insert(name, section);
        }
        Some(elf)
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<Section> {
        self.sections.get(name).copied()
    }

    /// The bytes of section `name` in `d`.
    pub fn section_data<'a>(&self, d: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.section(name).filter(|s| !s.nobits)?;
        d.get(s.offset as usize..s.offset.checked_add(s.size)? as usize)
    }

    /// The bytes of section `name` in `d`, decompressed if it is compressed
    /// (zlib, as Go's linker writes its DWARF). At most `limit` bytes.
    pub fn section_bytes<'a>(
        &self,
        d: &'a [u8],
        name: &str,
        limit: usize,
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        let s = self.section(name)?;
        let data = self.section_data(d, name)?;
        if !s.compressed {
            return Some(std::borrow::Cow::Borrowed(data));
        }
        // Elf64_Chdr: ch_type, ch_reserved, ch_size, ch_addralign.
        if u32_at(data, 0)? != ELFCOMPRESS_ZLIB || u64_at(data, 8)? as usize > limit {
            return None;
        }
        miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data.get(24..)?, limit)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    /// The value (link-time address) of the symbol called `name`: from the
    /// dynamic symbols, else from the full symbol table (local symbols too:
    /// .NET Core 3.1's `libcoreclr.so` exports no `g_dacTable`, but ships its
    /// `.symtab`). Entries past the file are not read.
    pub fn symbol(&self, d: &[u8], name: &str) -> Option<u64> {
        [(".dynsym", ".dynstr"), (".symtab", ".strtab")]
            .into_iter()
            .find_map(|(symbols, strings)| {
                let (symbols, strings) = (
                    self.section_data(d, symbols)?,
                    self.section_data(d, strings)?,
                );
                // Elf64_Sym: st_name u32, st_info, st_other, st_shndx u16,
                // st_value u64, st_size u64.
                symbols.chunks_exact(24).find_map(|sym| {
                    let at = u32_at(sym, 0)? as usize;
                    let found = strings.get(at..)?.split(|&b| b == 0).next()?;
                    (found == name.as_bytes() && u16_at(sym, 6)? != 0)
                        .then(|| u64_at(sym, 8))
                        .flatten()
                })
            })
    }

    /// The file offset of virtual address `vaddr`.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .map(|s| (vaddr - s.vaddr).wrapping_add(s.offset))
    }

    /// The link-time address of an executable mapping that starts at file
    /// offset `off` (page-aligned, as in `/proc/PID/maps`). The mapping's
    /// segment may start inside the page (lld aligns segments in memory but
    /// not in the file: libcoreclr's code segment is at file offset 0x1a8020,
    /// address 0x1a9020, and its mapping starts at offset 0x1a8000, which
    /// [`Elf::vaddr`] would place in the segment before, 0x1000 off).
    pub fn mapping_vaddr(&self, off: u64) -> Option<u64> {
        const PAGE: u64 = 4096;
        self.segments
            .iter()
            .filter(|s| s.exec)
            .find(|s| {
                s.offset & !(PAGE - 1) <= off
                    && s.offset.checked_add(s.filesz).is_some_and(|end| off < end)
            })
            .map(|s| s.vaddr.wrapping_sub(s.offset - off))
            .or_else(|| self.vaddr(off))
    }

    /// The virtual address of file offset `off`.
    pub fn vaddr(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| off >= s.offset && off - s.offset < s.filesz)
            .map(|s| (off - s.offset).wrapping_add(s.vaddr))
    }

    /// The pointer stored at `vaddr`: the relocation's value in a PIE, else the
    /// file's bytes.
    pub fn pointer(&self, d: &[u8], vaddr: u64) -> Option<u64> {
        if let Some(&v) = self.relative(d).get(&vaddr) {
            return Some(v);
        }
        u64_at(d, self.file_offset(vaddr)? as usize)
    }

    /// Where a relative relocation stores `value`, if one does (`d`: the
    /// file's bytes, as given to [`Elf::parse`]).
    pub fn relocation_to(&self, d: &[u8], value: u64) -> Option<u64> {
        self.relative(d)
            .iter()
            .find(|&(_, &v)| v == value)
            .map(|(&at, _)| at)
    }

    /// The relative relocations, read from `d` (the file's bytes) the first
    /// time.
    fn relative(&self, d: &[u8]) -> &HashMap<u64, u64> {
        self.relative.get_or_init(|| {
            let mut relative = HashMap::new();
            for &(at, n) in &self.rela {
                for r in 0..n {
                    let Some(e) = r.checked_mul(24).and_then(|o| o.checked_add(at)) else {
                        break;
                    };
                    let (Some(off), Some(info), Some(addend)) =
                        (u64_at(d, e), u64_at(d, e + 8), u64_at(d, e + 16))
                    else {
                        break;
                    };
                    if info & 0xFFFF_FFFF == R_X86_64_RELATIVE {
                        relative.insert(off, addend);
                    }
                }
            }
            relative
        })
    }
}

/// The build id of the ELF file at `path`: its GNU build id (`NT_GNU_BUILD_ID`,
/// hex, what `perf`, debuginfod and pprof key on), else a Go binary's own
/// (`.note.go.buildid`, type 4, a string). Read from the `PT_NOTE` segments.
pub fn build_id(path: &std::path::Path) -> Option<String> {
    build_id_in(MappedFile::open(path)?.bytes())
}

/// The file at `path`, opened as [`crate::files::open_regular`] opens (no
/// link followed, no blocking, a regular file), if its GNU build id is `id`
/// (any such file when `id` is `None`): a candidate debug file, checked on
/// the handle it is then read through.
pub fn open_with_build_id(path: &std::path::Path, id: Option<&str>) -> Option<std::fs::File> {
    let f = crate::files::open_regular(path)?;
    let matches = id.is_none()
        || MappedFile::of(&f)
            .and_then(|m| build_id_in(m.bytes()))
            .as_deref()
            == id;
    matches.then_some(f)
}

/// [`build_id`] of an ELF file's bytes `d`.
pub fn build_id_in(d: &[u8]) -> Option<String> {
    if d.get(..4)? != b"\x7fELF" || d.get(4)? != &2 || d.get(5)? != &1 {
        return None;
    }
    let phoff = u64_at(d, 0x20)? as usize;
    let (phentsize, phnum) = (usize::from(u16_at(d, 0x36)?), usize::from(u16_at(d, 0x38)?));
    let mut go = None;
    for i in 0..phnum {
        let p = phoff.checked_add(i * phentsize)?;
        if u32_at(d, p)? != 4 {
            continue; // PT_NOTE
        }
        let (off, size) = (u64_at(d, p + 8)? as usize, u64_at(d, p + 32)? as usize);
        let notes = d.get(off..off.checked_add(size)?)?;
        match notes_build_id(notes) {
            Some(BuildId::Gnu(id)) => return Some(id),
            Some(BuildId::Go(id)) => go = Some(id),
            None => {}
        }
    }
    go
}

/// A build id found in ELF notes.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildId {
    /// `NT_GNU_BUILD_ID`, as hex.
    Gnu(String),
    /// The Go toolchain's (`"Go"`, type 4).
    Go(String),
}

/// The build id in a run of ELF notes (a `PT_NOTE` segment, or the kernel's
/// `/sys/kernel/notes`): each is namesz, descsz, type (4 bytes each), then the
/// name and the descriptor, each padded to 4 bytes. A GNU id wins over Go's.
pub fn notes_build_id(mut notes: &[u8]) -> Option<BuildId> {
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut go = None;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)? as usize;
        let descsz = u32_at(notes, 4)? as usize;
        let kind = u32_at(notes, 8)?;
        let name_end = 12 + pad(namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        match (name, kind) {
            (b"GNU\0", 3) => {
                return Some(BuildId::Gnu(
                    desc.iter().map(|b| format!("{b:02x}")).collect(),
                ));
            }
            (b"Go\0\0" | b"Go\0", 4) => {
                let text = desc.split(|&b| b == 0).next().unwrap_or_default();
                go = Some(BuildId::Go(String::from_utf8_lossy(text).into_owned()));
            }
            _ => {}
        }
        notes = notes.get(name_end + pad(descsz)?..).unwrap_or_default();
    }
    go
}

/// A file mapped read-only: its pages are read as they are touched, so finding
/// that a 30 MB data library (libicudata) has no unwind or Go table costs its
/// headers, not the 13 ms of reading it whole — time the rules of a library
/// just loaded waited for. (A file truncated in place while mapped would fault
/// on access; packages replace binaries by rename, which leaves the mapped
/// file whole.)
pub struct MappedFile {
    at: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    /// Maps `path`; `None` if it cannot be opened without blocking, is not a
    /// regular file, or is empty (see [`crate::files::open_regular`]).
    pub fn open(path: &std::path::Path) -> Option<Self> {
        Self::of(&crate::files::open_regular(path)?)
    }

    /// Maps the open `file`; `None` if it is empty or cannot be mapped.
    pub fn of(file: &std::fs::File) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh private read-only mapping of the whole file; the fd
        // may close afterwards (the mapping keeps the file).
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (at != libc::MAP_FAILED).then_some(Self { at, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.at.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.at, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_et_exec_files_are_at_fixed_addresses() {
        let mut head = *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0";
        assert!(is_fixed_address_head(&head));
        head[16] = 3; // ET_DYN: a PIE or a library
        assert!(!is_fixed_address_head(&head));
        assert!(!is_fixed_address_head(&head[..17]));
        assert!(!is_fixed_address_head(b"#!/bin/sh\nexec true\n"));
    }

    #[test]
    fn build_ids_of_c_and_go_binaries_and_the_kernel() {
        let c = crossprof_tests::build_c("native/spinner.c", &["-O0"]);
        let id = build_id(&c).expect("gcc writes a GNU build id");
        assert!(
            id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        let go = crossprof_tests::Go::Go123.fixture("chain", crossprof_tests::GoBuild::Stripped);
        let id = build_id(&go).expect("the Go linker writes its own build id");
        assert_eq!(id.matches('/').count(), 3, "Go's action/content ids: {id}");
        let kernel = std::fs::read("/sys/kernel/notes").unwrap();
        assert!(matches!(notes_build_id(&kernel), Some(BuildId::Gnu(id)) if id.len() == 40));
        assert_eq!(notes_build_id(&[1, 0, 0]), None);
    }

    #[test]
    fn an_executables_entry_is_its_start_code() {
        let head = std::fs::read("/proc/self/exe").unwrap();
        let entry = entry_file_offset(&head).unwrap() as usize;
        // `_start`: (endbr64,) xor %ebp,%ebp.
        let code = &head[entry..entry + 6];
        assert!(
            code.starts_with(&[0x31, 0xed]) || code[4..] == [0x31, 0xed],
            "{code:x?}"
        );
        // The mapping of a code segment that starts inside its page.
        let elf = Elf {
            segments: vec![
                Segment {
                    vaddr: 0,
                    offset: 0,
                    filesz: 0x1a801c,
                    exec: false,
                },
                Segment {
                    vaddr: 0x1a9020,
                    offset: 0x1a8020,
                    filesz: 0x4b67e0,
                    exec: true,
                },
            ],
            ..Elf::default()
        };
        assert_eq!(elf.mapping_vaddr(0x1a8000), Some(0x1a9000));
        assert_eq!(elf.vaddr(0x1a8000), Some(0x1a8000));
        // A library (no interpreter) has no entry of its own.
        let lib = std::fs::read("/lib/x86_64-linux-gnu/libm.so.6").unwrap();
        assert_eq!(entry_file_offset(&lib), None);
    }
}
