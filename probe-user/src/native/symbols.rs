//! Names for native frames: ELF files through blazesym (symtab, dynsym, DWARF when
//! present), the kernel through kallsyms (`super::kallsyms`).

use std::path::{Path, PathBuf};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
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
    /// Servers asked for debug files found nowhere here (`--debuginfod`).
    debuginfod: Option<std::cell::RefCell<super::debuginfod::Client>>,
    /// Kernel symbols, read once per boot.
    kernel: std::cell::RefCell<super::kallsyms::KernelSymbols>,
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
    /// The file offset of its entry point, if it is an executable.
    entry: Option<u64>,
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
            debuginfod: None,
            kernel: std::cell::RefCell::new(super::kallsyms::KernelSymbols::new(None)),
        }
    }

    /// Asks `servers` (debuginfod) for the debug files of stripped binaries
    /// found nowhere here, keeping them in `cache`.
    pub fn use_debuginfod(&mut self, servers: Vec<String>, cache: &Path) {
        self.debuginfod = Some(std::cell::RefCell::new(super::debuginfod::Client::new(
            servers, cache,
        )));
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
                .or_else(|| mini_debug_info(&elf, file.bytes()))
                .map(|file| std::rc::Rc::new(DebugFile { file, elf }))
        };
        FileInfo {
            own_dwarf,
            debug_file,
            entry: super::elf::entry_file_offset(file.bytes()),
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
        let same = |file: &Path| super::elf::open_with_build_id(file, id.as_deref());
        let by_id = id.as_deref().and_then(|id| {
            self.dirs.iter().find_map(|dir| {
                same(
                    &dir.join(".build-id")
                        .join(&id[..2])
                        .join(format!("{}.debug", &id[2..])),
                )
            })
        });
        let by_link = || {
            let link = link?;
            let dir = path.parent()?;
            let rel = dir.strip_prefix("/").ok()?;
            std::iter::once(dir.join(link))
                .chain(std::iter::once(dir.join(".debug").join(link)))
                .chain(self.dirs.iter().map(|d| d.join(link)))
                .chain(self.dirs.iter().map(|d| d.join(rel).join(link)))
                .filter(|file| file != path)
                .find_map(|file| same(&file))
        };
        by_id.or_else(by_link).or_else(|| {
            let id = id.as_deref()?;
            self.debuginfod.as_ref()?.borrow_mut().debug_file(id)
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
            && let Some(entry) = self.info(path).entry
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

    /// Where the kernel names given so far came from.
    pub fn kernel_read(&self) -> super::kallsyms::Read {
        self.kernel.borrow().read()
    }

    /// Names kernel addresses from `kallsyms` instead of `/proc/kallsyms` (a
    /// replayed capture's file: see `crate::replay`).
    pub fn use_kallsyms(&mut self, kallsyms: PathBuf) {
        self.kernel.get_mut().source = Some(kallsyms);
    }

    /// Names for kernel addresses (see [`super::kallsyms`]).
    pub fn kernel(&self, addrs: &[u64]) -> Vec<Option<String>> {
        self.kernel.borrow_mut().names(addrs)
    }
}

/// The length of `_start` assumed where no symbol says: glibc's x86-64
/// `_start` (crt1.o) is 0x26 bytes, its call to `__libc_start_main` ends at
/// +0x22; musl's and Go-free C runtimes' are shorter.
const START_LEN: u64 = 0x30;

/// Most bytes a MiniDebugInfo ELF is decompressed to (Fedora's are tens
/// to hundreds of KiB: a symbol table and little else).
const MINI_DEBUG_INFO_LIMIT: usize = 64 << 20;

/// The binary's MiniDebugInfo, as Fedora and RHEL ship it (gdb's "MiniDebugInfo"):
/// an ELF file holding a symbol table of the functions `.dynsym` leaves out,
/// xz-compressed in the `.gnu_debugdata` section. Decompressed (at most
/// [`MINI_DEBUG_INFO_LIMIT`]) into an anonymous in-memory file, read as a
/// separate debug file is; `None` if there is none or it does not decompress
/// to an ELF file.
fn mini_debug_info(elf: &super::elf::Elf, data: &[u8]) -> Option<std::fs::File> {
    let xz = elf.section_data(data, ".gnu_debugdata")?;
    let elf_bytes = decompress_xz(xz, MINI_DEBUG_INFO_LIMIT)?;
    super::elf::Elf::parse(&elf_bytes)?;
    memory_file(&elf_bytes)
}

/// The xz stream `xz`, decompressed: `None` if it is not one, or if it would
/// be longer than `limit` bytes.
pub(crate) fn decompress_xz(xz: &[u8], limit: usize) -> Option<Vec<u8>> {
    /// A writer that refuses to grow past its limit.
    struct Bounded {
        out: Vec<u8>,
        limit: usize,
    }
    impl std::io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.out.len() + buf.len() > self.limit {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // The decoder keeps a block's whole output in memory before it writes
    // any: the sizes its chunks declare (which bound what it decodes) are
    // added up first, so that a small stream that expands to gigabytes is
    // refused before it is decoded.
    if xz_unpacked_size(xz)? > limit as u64 {
        return None;
    }
    let mut out = Bounded {
        out: Vec::new(),
        limit,
    };
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(xz), &mut out).ok()?;
    Some(out.out)
}

/// The bytes the first stream of the xz file `xz` decompresses to, from its
/// LZMA2 chunks' headers (the .xz file format 1.2.1, sections 2 and 3; the
/// LZMA2 chunk header as xz's liblzma reads it: a control byte, then for an
/// LZMA chunk 5 bits of its unpacked size in the control byte, 16 more, and
/// its packed size); `None` if it is not an xz stream of LZMA2 blocks.
fn xz_unpacked_size(xz: &[u8]) -> Option<u64> {
    const MAGIC: &[u8] = b"\xFD7zXZ\0";
    if xz.get(..6)? != MAGIC {
        return None;
    }
    // The stream footer (the last 12 bytes: CRC32, backward size, flags,
    // "YZ"): the index's size must fit in the file (a decoder adds to it).
    let footer = xz.len().checked_sub(12)?;
    if xz.get(footer + 10..)? != b"YZ" {
        return None;
    }
    let backward = u32::from_le_bytes(xz.get(footer + 4..footer + 8)?.try_into().ok()?);
    if (u64::from(backward) + 1) * 4 > xz.len() as u64 {
        return None;
    }
    // Stream flags: the check's type in the low 4 bits of the second byte.
    let check = match xz.get(7)? & 0x0F {
        0 => 0,
        c => 4usize << ((c - 1) / 3),
    };
    let varint = |at: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = *xz.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let be16 = |at: usize| {
        Some(u64::from(u16::from_be_bytes([
            *xz.get(at)?,
            *xz.get(at + 1)?,
        ])))
    };
    let mut at = 12;
    let mut total = 0u64;
    loop {
        let size = *xz.get(at)?;
        if size == 0 {
            return Some(total); // the index: no more blocks
        }
        let header_end = at + (usize::from(size) + 1) * 4;
        let flags = *xz.get(at + 1)?;
        let mut p = at + 2;
        if flags & 0x03 != 0 {
            return None; // more than one filter: not plain LZMA2
        }
        if flags & 0x40 != 0 {
            varint(&mut p)?; // compressed size
        }
        if flags & 0x80 != 0 {
            varint(&mut p)?; // uncompressed size (checked by the chunks)
        }
        if varint(&mut p)? != 0x21 || p > header_end {
            return None; // not LZMA2
        }
        at = header_end;
        loop {
            let control = *xz.get(at)?;
            at += 1;
            match control {
                0x00 => break,
                0x01 | 0x02 => {
                    let n = be16(at)? + 1;
                    total += n;
                    at = at.checked_add(2 + n as usize)?;
                }
                0x80..=0xFF => {
                    let unpacked = (u64::from(control & 0x1F) << 16) + be16(at)? + 1;
                    let packed = be16(at + 2)? + 1;
                    total += unpacked;
                    let props = usize::from(control >= 0xC0);
                    at = at.checked_add(4 + props + packed as usize)?;
                }
                _ => return None,
            }
        }
        // Block padding to a multiple of 4 from the block's start (the
        // stream header is 12 bytes, so from the file's), then the check.
        at = at.checked_add((4 - at % 4) % 4 + check)?;
    }
}

/// An anonymous in-memory file (`memfd_create`) holding `bytes`, for a
/// reader that takes a path (`/proc/self/fd/N`).
fn memory_file(bytes: &[u8]) -> Option<std::fs::File> {
    use std::{io::Write as _, os::fd::FromRawFd as _};
    // SAFETY: a NUL-terminated name; the returned fd is ours alone.
    let fd = unsafe { libc::memfd_create(c"crossprof-minidebuginfo".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes).ok()?;
    Some(file)
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

    /// This test binary's path and the file offset of `a_function_with_a_name`.
    fn own_function() -> (PathBuf, u64) {
        let addr = a_function_with_a_name();
        let maps =
            crate::native::maps::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let m = maps
            .iter()
            .find(|m| m.is_exec() && m.start <= addr && addr < m.end)
            .unwrap();
        (PathBuf::from(&m.path), addr - m.start + m.offset)
    }

    #[test]
    fn names_own_code_by_file_offset() {
        let (path, offset) = own_function();
        let syms = NativeSymbols::new(&[]);
        let names = syms.elf(&path, &[offset, u64::MAX]);
        let name = names[0].as_deref().unwrap();
        assert!(name.ends_with("a_function_with_a_name"), "{name}");
        assert_eq!(names[1], None);
    }

    #[test]
    fn unnamed_code_is_placed_in_its_function_by_the_fde() {
        let (path, entry) = own_function();
        let syms = NativeSymbols::new(&[]);
        let starts = syms.function_starts(&path, &[entry, entry + 1, u64::MAX]);
        // The function's first byte starts its FDE: every address in it maps there.
        assert_eq!(starts, vec![Some(entry), Some(entry), None]);
        assert_eq!(
            syms.function_starts(Path::new("/etc/hostname"), &[0]),
            vec![None]
        );
    }

    #[test]
    fn xz_streams_decompress_within_their_limit_and_garbage_does_not() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::BufReader::new(&data[..]), &mut xz).unwrap();
        assert_eq!(decompress_xz(&xz, 1 << 20).as_deref(), Some(&data[..]));
        assert_eq!(decompress_xz(&xz, 50_000), None, "over the limit");
        assert_eq!(decompress_xz(b"not xz at all", 1 << 20), None);
        assert_eq!(xz_unpacked_size(&xz), Some(data.len() as u64));
        // What the system's xz writes (LZMA2 chunks, CRC64), and a bomb:
        // 256 MiB of zeros in a few dozen KiB, refused before decoding.
        let run_xz = |input: &[u8], args: &[&str]| -> Vec<u8> {
            use std::io::Write as _;
            let mut child = std::process::Command::new("xz")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("xz (xz-utils)");
            let mut stdin = child.stdin.take().unwrap();
            let input = input.to_vec();
            let writer = std::thread::spawn(move || stdin.write_all(&input));
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            out.stdout
        };
        let real = run_xz(&data, &["-c"]);
        assert_eq!(xz_unpacked_size(&real), Some(data.len() as u64));
        assert_eq!(decompress_xz(&real, 1 << 20).as_deref(), Some(&data[..]));
        let bomb = run_xz(&vec![0u8; 1 << 28], &["-c", "-1"]);
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        assert_eq!(xz_unpacked_size(&bomb), Some(1 << 28));
        let started = std::time::Instant::now();
        assert_eq!(decompress_xz(&bomb, 64 << 20), None);
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        for cut in [0, 10, xz.len() / 2, xz.len() - 1] {
            assert_eq!(decompress_xz(&xz[..cut], 1 << 20), None, "cut at {cut}");
        }
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
