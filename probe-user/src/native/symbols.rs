//! Names for native frames: ELF files through blazesym (symtab, dynsym, DWARF when
//! present), the kernel through kallsyms.

use std::path::{Path, PathBuf};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Kernel, Source},
    },
};

/// A long-lived blazesym [`Symbolizer`]: it caches every parsed file and kallsyms, so
/// it must be kept for the whole recording (it is not `Send`; it lives on the
/// symbolizer thread).
pub struct NativeSymbols {
    symbolizer: Symbolizer,
    /// Where debug files are looked for, in order (`--debug-dir`s, then the
    /// system's).
    dirs: Vec<PathBuf>,
    /// Per binary: what it offers for naming (looked up once).
    files: std::cell::RefCell<std::collections::HashMap<PathBuf, FileInfo>>,
    /// Per binary: its functions' file offsets `[start, end)` by its
    /// `.eh_frame`, read the first time one of its frames is unnamed.
    functions: std::cell::RefCell<std::collections::HashMap<PathBuf, Functions>>,
}

/// A binary's functions as file offsets `[start, end)`, sorted.
type Functions = std::rc::Rc<[(u64, u64)]>;

/// What a binary offers for naming its code.
#[derive(Debug, Clone, Default)]
struct FileInfo {
    /// DWARF of its own (`.debug_info` with contents): names and lines from it.
    own_dwarf: bool,
    /// A separate debug file, for a binary stripped of its symbol table.
    debug_file: Option<std::rc::Rc<DebugFile>>,
}

/// A binary's separate debug file, held open, and the binary's own layout
/// (its file offsets to link-time addresses).
#[derive(Debug)]
struct DebugFile {
    /// Opened once, checked (a regular file with the binary's build id) and
    /// named to blazesym as `/proc/self/fd/N`: what it reads is what was
    /// checked, whatever is put at the path since.
    file: std::fs::File,
    elf: super::elf::Elf,
}

impl DebugFile {
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

impl Default for NativeSymbols {
    fn default() -> Self {
        Self::new(&[])
    }
}

/// Where separate debug files are looked for after `--debug-dir`s: the usual
/// places of distribution debug packages (their `.build-id/` trees included).
const SYSTEM_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

impl NativeSymbols {
    /// A symbolizer with demangling on, and source lines where a file has
    /// DWARF of its own (pprof shows them; a file's line table is read once,
    /// on the symbolizer thread, off the hot path). A binary stripped of its
    /// symbol table is named from its separate debug file's (by build id,
    /// else `.gnu_debuglink`), looked for next to it, in `debug_dirs`, then in
    /// the system's debug folders.
    pub fn new(debug_dirs: &[PathBuf]) -> Self {
        let dirs: Vec<PathBuf> = debug_dirs
            .iter()
            .cloned()
            .chain(SYSTEM_DEBUG_DIRS.iter().map(PathBuf::from))
            .collect();
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .set_debug_dirs(Some(dirs.clone()))
                .build(),
            dirs,
            files: Default::default(),
            functions: Default::default(),
        }
    }

    /// What the binary at `path` offers (see [`FileInfo`]), read once.
    fn info(&self, path: &Path) -> FileInfo {
        if let Some(info) = self.files.borrow().get(path) {
            return info.clone();
        }
        let info = self.read_info(path);
        self.files
            .borrow_mut()
            .insert(path.to_path_buf(), info.clone());
        info
    }

    fn read_info(&self, path: &Path) -> FileInfo {
        let Some(file) = super::elf::MappedFile::open(path) else {
            return FileInfo::default();
        };
        let Some(elf) = super::elf::Elf::parse(file.bytes()) else {
            return FileInfo::default();
        };
        let has = |name: &str| elf.section(name).is_some_and(|s| !s.nobits && s.size > 0);
        let own_dwarf = has(".debug_info");
        let debug_file = if has(".symtab") {
            None
        } else {
            let link = elf
                .section_data(file.bytes(), ".gnu_debuglink")
                .and_then(|d| d.split(|&b| b == 0).next())
                .and_then(|name| std::str::from_utf8(name).ok())
                .filter(|name| !name.is_empty() && !name.contains('/'))
                .map(str::to_owned);
            let id = super::elf::build_id_in(file.bytes());
            self.find_debug_file(path, id, link.as_deref())
                .map(|file| std::rc::Rc::new(DebugFile { file, elf }))
        };
        FileInfo {
            own_dwarf,
            debug_file,
        }
    }

    /// The separate debug file of the binary at `path` (build id `id`): by
    /// its GNU build id (`DIR/.build-id/xx/rest.debug` in the first debug
    /// folder that has it),
    /// else by the name its `.gnu_debuglink` gives (`link`: next to the
    /// binary, in `.debug/` there, in a debug folder, or under one at the
    /// binary's path), the way gdb and perf look. A candidate whose build id is not
    /// the binary's is not it.
    fn find_debug_file(
        &self,
        path: &Path,
        id: Option<String>,
        link: Option<&str>,
    ) -> Option<std::fs::File> {
        let id = id.filter(|id| id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        // Opened without blocking, a regular file, with the binary's build id.
        let same = |file: &Path| {
            let f = crate::files::open_regular(file)?;
            let matches = id.is_none()
                || super::elf::MappedFile::of(&f)
                    .and_then(|m| super::elf::build_id_in(m.bytes()))
                    .as_deref()
                    == id.as_deref();
            matches.then_some(f)
        };
        let by_id = id.as_deref().and_then(|id| {
            self.dirs.iter().find_map(|dir| {
                same(
                    &dir.join(".build-id")
                        .join(&id[..2])
                        .join(format!("{}.debug", &id[2..])),
                )
            })
        });
        by_id.or_else(|| {
            let link = link?;
            let dir = path.parent()?;
            let rel = dir.strip_prefix("/").ok()?;
            std::iter::once(dir.join(link))
                .chain(std::iter::once(dir.join(".debug").join(link)))
                .chain(self.dirs.iter().map(|d| d.join(link)))
                .chain(self.dirs.iter().map(|d| d.join(rel).join(link)))
                .filter(|file| file != path)
                .find_map(|file| same(&file))
        })
    }

    /// Names from the binary's separate debug file (its symbol table: a
    /// system library's DWARF is tens of MiB to read for lines nobody asked
    /// of it) for the offsets of `path` that `names` has none for, by their
    /// link-time addresses (a debug file keeps the binary's addresses, not
    /// its file layout).
    fn fill_from_debug_file(&self, path: &Path, offsets: &[u64], names: &mut [Named]) {
        if names.iter().all(|n| n.0.is_some()) {
            return;
        }
        let Some(debug) = self.info(path).debug_file else {
            return;
        };
        let elf = &debug.elf;
        let missing: Vec<(usize, u64)> = names
            .iter()
            .zip(offsets)
            .enumerate()
            .filter(|(_, (n, _))| n.0.is_none())
            .filter_map(|(i, (_, &off))| Some((i, elf.vaddr(off)?)))
            .collect();
        if missing.is_empty() {
            return;
        }
        let vaddrs: Vec<u64> = missing.iter().map(|&(_, v)| v).collect();
        let mut source = Elf::new(debug.path());
        source.debug_syms = false;
        let src = Source::Elf(source);
        let found = sourced(
            self.symbolizer
                .symbolize(&src, Input::VirtOffset(&vaddrs[..])),
            vaddrs.len(),
        );
        for ((i, _), named) in missing.into_iter().zip(found) {
            if named.0.is_some() {
                names[i] = named;
            }
        }
    }

    /// Names for file offsets in one ELF file; `None` where no symbol covers one. A
    /// file that is not ELF, or cannot be read, yields all `None`.
    pub fn elf(&self, path: &Path, offsets: &[u64]) -> Vec<Option<String>> {
        self.elf_sourced(path, offsets)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// Like [`NativeSymbols::elf`], with each name's source file and line
    /// where the file's DWARF says.
    pub fn elf_sourced(&self, path: &Path, offsets: &[u64]) -> Vec<Named> {
        // DWARF only where the binary has its own: blazesym would otherwise
        // follow a stripped library's debug link and read the debug file's
        // DWARF (Debian's libc6-dbg: +18 MiB and ~2% of a core per run, for
        // the lines of libc); its names come from the debug file's symbol
        // table below.
        let mut own = Elf::new(path);
        own.debug_syms = self.info(path).own_dwarf;
        let src = Source::Elf(own);
        let result = match self.symbolizer.symbolize(&src, Input::FileOffset(offsets)) {
            Ok(syms) => Ok(syms),
            // DWARF blazesym cannot read here (zstd-compressed sections: this
            // build reads zlib's, which the Go linker and Debian's debug
            // packages write, not zstd's): the file's own symbol tables still
            // name what they cover (a separate debug file is not read then).
            Err(e) => {
                log::debug!("{}: {e}; named from its symbol tables", path.display());
                let mut elf = Elf::new(path);
                elf.debug_syms = false;
                self.symbolizer
                    .symbolize(&Source::Elf(elf), Input::FileOffset(offsets))
            }
        };
        let mut names = sourced(result, offsets.len());
        self.fill_from_debug_file(path, offsets, &mut names);
        // A stripped executable's entry point is still `_start` (its ELF
        // header says where): the root of its main thread's stack.
        if names.iter().any(|n| n.0.is_none())
            && let Some(entry) = entry_of(path)
        {
            for ((name, _), &off) in names.iter_mut().zip(offsets) {
                if name.is_none() && (entry..entry + START_LEN).contains(&off) {
                    *name = Some("_start".to_owned());
                }
            }
        }
        names
    }

    /// For each of `offsets` (unnamed code of the binary at `path`), the file
    /// offset of the function it is in, by the FDE of its `.eh_frame` that
    /// covers it (`None` where none does).
    pub fn function_starts(&self, path: &Path, offsets: &[u64]) -> Vec<Option<u64>> {
        if offsets.is_empty() {
            return Vec::new();
        }
        let functions = self
            .functions
            .borrow_mut()
            .entry(path.to_path_buf())
            .or_insert_with(|| read_functions(path).into())
            .clone();
        offsets
            .iter()
            .map(|&off| {
                let i = functions.partition_point(|&(start, _)| start <= off);
                let &(start, end) = functions.get(i.checked_sub(1)?)?;
                (off < end).then_some(start)
            })
            .collect()
    }

    /// Names for kernel addresses, from `/proc/kallsyms`.
    pub fn kernel(&self, addrs: &[u64]) -> Vec<Option<String>> {
        let src = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        sourced(
            self.symbolizer.symbolize(&src, Input::AbsAddr(addrs)),
            addrs.len(),
        )
        .into_iter()
        .map(|(name, _)| name)
        .collect()
    }
}

/// The length of `_start` assumed where no symbol says: glibc's x86-64
/// `_start` (crt1.o) is 0x26 bytes, its call to `__libc_start_main` ends at
/// +0x22; musl's and Go-free C runtimes' are shorter.
const START_LEN: u64 = 0x30;

/// The file offset of `path`'s entry point, if it is an executable.
fn entry_of(path: &Path) -> Option<u64> {
    use std::io::Read as _;
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    super::elf::entry_file_offset(&head[..n])
}

/// The functions of the ELF file at `path` as file offsets `[start, end)`,
/// sorted: its `.eh_frame` FDEs (empty if it has none or is unreadable).
fn read_functions(path: &Path) -> Vec<(u64, u64)> {
    let Some(file) = super::elf::MappedFile::open(path) else {
        return Vec::new();
    };
    let Some(elf) = super::elf::Elf::parse(file.bytes()) else {
        return Vec::new();
    };
    let (Some(section), Some(bytes)) = (
        elf.section(".eh_frame"),
        elf.section_data(file.bytes(), ".eh_frame"),
    ) else {
        return Vec::new();
    };
    let functions = super::ehframe::functions(bytes, section.addr).unwrap_or_default();
    functions
        .into_iter()
        .filter_map(|(start, end)| {
            let off = elf.file_offset(start)?;
            Some((off, off + (end - start)))
        })
        .collect()
}

/// A name, and its source file and line if known.
pub type Named = (Option<String>, Option<(String, u32)>);

fn sourced(result: blazesym::Result<Vec<Symbolized<'_>>>, n: usize) -> Vec<Named> {
    match result {
        Ok(syms) => {
            syms.into_iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => {
                        let source = sym.code_info.as_ref().and_then(|c| {
                            Some((c.to_path().to_string_lossy().into_owned(), c.line?))
                        });
                        (Some(sym.name.into_owned()), source)
                    }
                    Symbolized::Unknown(_) => (None, None),
                })
                .collect()
        }
        Err(e) => {
            log::debug!("symbolization batch failed: {e}");
            vec![(None, None); n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_name() -> u64 {
        a_function_with_a_name as *const () as usize as u64
    }

    #[test]
    fn names_own_code_by_file_offset() {
        let addr = a_function_with_a_name();
        let maps =
            crate::native::maps::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let m = maps
            .iter()
            .find(|m| m.is_exec() && m.start <= addr && addr < m.end)
            .unwrap();
        let syms = NativeSymbols::new(&[]);
        let names = syms.elf(Path::new(&m.path), &[addr - m.start + m.offset, u64::MAX]);
        let name = names[0].as_deref().unwrap();
        assert!(name.ends_with("a_function_with_a_name"), "{name}");
        assert_eq!(names[1], None);
    }

    #[test]
    fn unnamed_code_is_placed_in_its_function_by_the_fde() {
        let addr = a_function_with_a_name();
        let maps =
            crate::native::maps::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let m = maps
            .iter()
            .find(|m| m.is_exec() && m.start <= addr && addr < m.end)
            .unwrap();
        let entry = addr - m.start + m.offset;
        let syms = NativeSymbols::new(&[]);
        let starts = syms.function_starts(Path::new(&m.path), &[entry, entry + 1, u64::MAX]);
        // The function's first byte starts its FDE: every address in it maps there.
        assert_eq!(starts, vec![Some(entry), Some(entry), None]);
        assert_eq!(
            syms.function_starts(Path::new("/etc/hostname"), &[0]),
            vec![None]
        );
    }

    #[test]
    fn a_file_that_is_not_elf_names_nothing() {
        let syms = NativeSymbols::new(&[]);
        assert_eq!(
            syms.elf(Path::new("/etc/hostname"), &[0, 1]),
            vec![None, None]
        );
    }
}
