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
    /// Per binary: its debug file found by build id, if any (looked up once).
    by_build_id: std::cell::RefCell<std::collections::HashMap<PathBuf, Option<PathBuf>>>,
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
    /// DWARF (pprof shows them; a file's line table is read once, on the
    /// symbolizer thread, off the hot path). Separate debug files
    /// (`.gnu_debuglink`, build id) are looked for next to each binary, then in
    /// `debug_dirs`, then in the system's debug folders.
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
            by_build_id: Default::default(),
        }
    }

    /// The separate debug file of the binary at `path` by its GNU build id:
    /// `DIR/.build-id/xx/rest.debug` in the first of the debug folders that
    /// has it, whose own build id is the same. blazesym looks there only for
    /// a binary that names a debug file (`.gnu_debuglink`); one stripped
    /// without (`objcopy --strip-all`, many distributions' packages) has only
    /// its build id to go by.
    fn debug_file_by_build_id(&self, path: &Path) -> Option<PathBuf> {
        if let Some(found) = self.by_build_id.borrow().get(path) {
            return found.clone();
        }
        let found = super::elf::build_id(path)
            .filter(|id| id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|id| {
                self.dirs.iter().find_map(|dir| {
                    let file = dir
                        .join(".build-id")
                        .join(&id[..2])
                        .join(format!("{}.debug", &id[2..]));
                    (file.is_file() && super::elf::build_id(&file).as_deref() == Some(&id))
                        .then_some(file)
                })
            });
        self.by_build_id
            .borrow_mut()
            .insert(path.to_path_buf(), found.clone());
        found
    }

    /// Names from the debug file found by build id for the offsets of
    /// `path` that `names` has none for (by their link-time addresses: a
    /// debug file keeps the binary's addresses, not its file layout).
    fn fill_from_build_id(&self, path: &Path, offsets: &[u64], names: &mut [Named]) {
        if names.iter().all(|n| n.0.is_some()) {
            return;
        }
        let Some(debug) = self.debug_file_by_build_id(path) else {
            return;
        };
        let Some(file) = super::elf::MappedFile::open(path) else {
            return;
        };
        let Some(elf) = super::elf::Elf::parse(file.bytes()) else {
            return;
        };
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
        let src = Source::Elf(Elf::new(&debug));
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
        let src = Source::Elf(Elf::new(path));
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
        self.fill_from_build_id(path, offsets, &mut names);
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
    fn a_file_that_is_not_elf_names_nothing() {
        let syms = NativeSymbols::new(&[]);
        assert_eq!(
            syms.elf(Path::new("/etc/hostname"), &[0, 1]),
            vec![None, None]
        );
    }
}
