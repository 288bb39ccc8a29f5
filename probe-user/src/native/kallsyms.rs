//! Names for kernel addresses, from `/proc/kallsyms`, read once per boot.
//!
//! A read of `/proc/kallsyms` costs ~60 ms of CPU, in the kernel, which formats
//! its 120,000+ lines anew at every read (Linux 6.18 here, 2026-12-06: `cat
//! /proc/kallsyms` 0.06 s of system time) — most of what a short recording's
//! collector spends once a single kernel frame is sampled. But the core
//! kernel's text does not move during a boot (KASLR places it once, at boot),
//! so its symbols (`_stext` to `_etext`) are kept in a file of root's,
//! `/var/cache/crossprof/kallsyms/<boot id>`, which the next run reads back in
//! about a millisecond. Addresses outside the core text (modules, BPF
//! programs, ftrace and kprobe trampolines: loaded and unloaded at any time)
//! are never named from that file: a run that meets one reads `/proc/kallsyms`
//! whole, as before, and keeps only the symbols outside the core text (~5,000
//! of 121,000 on 6.18: ~0.2 MB where the whole table is ~4.5 MB, which a
//! long-running agent would otherwise carry from the first such address on).
//!
//! Names are picked as blazesym's kallsyms resolver (which this replaces)
//! picked them: the symbol at the greatest address not above the address; of
//! several at one address, the first listed.

use std::path::{Path, PathBuf};

use crate::files::OutFolder;

/// Where the core kernel's symbols are kept, one file per boot.
pub const CACHE_DIR: &str = "/var/cache/crossprof/kallsyms";

/// The most of `/proc/kallsyms` read (a kernel with every module loaded lists
/// ~300,000 symbols, ~15 MB), and the most of a cache file.
const MAX_KALLSYMS: u64 = 64 << 20;

/// The cache file's first line.
const MAGIC: &[u8] = b"crossprof-kallsyms 1\n";

/// Kernel symbols sorted by address, one per address.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    addrs: Vec<u64>,
    /// Where symbol `i`'s name ends in `names` (it starts where `i - 1`'s ends).
    ends: Vec<u32>,
    names: String,
}

impl Table {
    /// The symbols of `kallsyms` text (`ADDR TYPE NAME [MODULE]` lines), and
    /// the core kernel's text range (`_stext` to `_etext`) if both are listed.
    /// Lines that do not parse and symbols at 0 (addresses hidden by
    /// `kptr_restrict`) are skipped.
    pub fn parse(kallsyms: &str) -> (Self, Option<(u64, u64)>) {
        let mut syms: Vec<(u64, &str)> = Vec::new();
        let (mut stext, mut etext) = (None, None);
        for line in kallsyms.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(_kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            match name {
                "_stext" => stext = stext.or(Some(addr)),
                "_etext" => etext = etext.or(Some(addr)),
                _ => {}
            }
            syms.push((addr, name));
        }
        // Stable: of the symbols at one address the first listed stays first.
        syms.sort_by_key(|&(addr, _)| addr);
        syms.dedup_by_key(|&mut (addr, _)| addr);
        let core = match (stext, etext) {
            (Some(s), Some(e)) if s < e => Some((s, e)),
            _ => None,
        };
        (Self::from_sorted(syms), core)
    }

    fn from_sorted<'a>(syms: impl IntoIterator<Item = (u64, &'a str)>) -> Self {
        let mut t = Self::default();
        for (addr, name) in syms {
            t.names.push_str(name);
            let Ok(end) = u32::try_from(t.names.len()) else {
                t.names
                    .truncate(t.ends.last().copied().unwrap_or(0) as usize);
                break;
            };
            t.addrs.push(addr);
            t.ends.push(end);
        }
        t
    }

    /// The name of the symbol `addr` is in: the one at the greatest address
    /// not above it.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.names.get(start..self.ends[i] as usize)
    }

    /// The symbols in `[start, end]`.
    fn within(&self, start: u64, end: u64) -> Self {
        self.filtered(|a| (start..=end).contains(&a))
    }

    /// The symbols outside `[start, end)`: for an address outside that range
    /// they give the name the whole table gives (the nearest symbol below an
    /// address at or above `end` is at or above `end`, since `_etext` is listed
    /// at `end`; below `start`, it is below `start`).
    fn outside(&self, start: u64, end: u64) -> Self {
        self.filtered(|a| !(start..end).contains(&a))
    }

    fn filtered(&self, keep: impl Fn(u64) -> bool) -> Self {
        Self::from_sorted(
            (0..self.addrs.len())
                .filter(|&i| keep(self.addrs[i]))
                .filter_map(|i| Some((self.addrs[i], self.name(self.addrs[i])?))),
        )
    }

    /// How many symbols.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// No symbols.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// What a cache file holds: the boot it was made in, the core text range and
/// its symbols.
#[derive(Debug, PartialEq)]
pub struct Cached {
    /// The boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// The core kernel's text, `[_stext, _etext)`.
    pub core: (u64, u64),
    /// Its symbols.
    pub table: Table,
}

impl Cached {
    /// The file: `MAGIC`, the boot id and a newline, then little-endian
    /// `u64`s (core start, core end, symbol count), each symbol's address
    /// (`u64`) and name end (`u32`), and the names.
    pub fn encode(&self) -> Vec<u8> {
        let t = &self.table;
        let mut out = Vec::with_capacity(64 + t.addrs.len() * 12 + t.names.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.boot.as_bytes());
        out.push(b'\n');
        for v in [self.core.0, self.core.1, t.addrs.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (&addr, &end) in t.addrs.iter().zip(&t.ends) {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        out.extend_from_slice(t.names.as_bytes());
        out
    }

    /// A cache file read back; `None` unless every part is as
    /// [`Cached::encode`] writes it (addresses rising within the core range,
    /// name ends rising to the names' length, UTF-8 names).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let nl = rest.iter().take(64).position(|&b| b == b'\n')?;
        let boot = std::str::from_utf8(&rest[..nl]).ok()?;
        if !valid_boot_id(boot) {
            return None;
        }
        let mut rest = &rest[nl + 1..];
        let u64_at = |rest: &mut &[u8]| -> Option<u64> {
            let (v, r) = rest.split_first_chunk::<8>()?;
            *rest = r;
            Some(u64::from_le_bytes(*v))
        };
        let (start, end, n) = (u64_at(&mut rest)?, u64_at(&mut rest)?, u64_at(&mut rest)?);
        if start >= end || n > (rest.len() / 12) as u64 {
            return None;
        }
        let n = n as usize;
        let (entries, names) = rest.split_at(n * 12);
        let names = std::str::from_utf8(names).ok()?;
        let mut table = Table {
            addrs: Vec::with_capacity(n),
            ends: Vec::with_capacity(n),
            names: String::new(),
        };
        let (mut last_addr, mut last_end) = (None, 0u32);
        for e in entries.chunks_exact(12) {
            let addr = u64::from_le_bytes(e[..8].try_into().ok()?);
            let name_end = u32::from_le_bytes(e[8..].try_into().ok()?);
            if last_addr.is_some_and(|a| addr <= a)
                || !(start..=end).contains(&addr)
                || name_end <= last_end
                || !names.is_char_boundary(name_end as usize)
            {
                return None;
            }
            (last_addr, last_end) = (Some(addr), name_end);
            table.addrs.push(addr);
            table.ends.push(name_end);
        }
        if last_end as usize != names.len() {
            return None;
        }
        table.names = names.to_owned();
        Some(Self {
            boot: boot.to_owned(),
            core: (start, end),
            table,
        })
    }
}

/// A boot id as the kernel writes it: 36 characters of lower-case hex and
/// dashes (also what the cache file is named).
fn valid_boot_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// This boot's id.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    valid_boot_id(id).then(|| id.to_owned())
}

/// Where a run's kernel names came from (`kernel_symbols` in summary.json).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    /// No kernel address was named.
    #[default]
    None,
    /// This boot's cache file only: `/proc/kallsyms` was not read.
    Cache,
    /// `/proc/kallsyms`, read whole.
    Kallsyms,
    /// A replayed capture's symbol file.
    File,
}

/// Names for kernel addresses (see the module's doc). Kept for a whole
/// recording: the cache file is read at most once, `/proc/kallsyms` at most
/// once.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    /// Symbols from this file instead (a replayed capture's): read whole.
    pub source: Option<PathBuf>,
    /// The per-boot cache's folder (`CACHE_DIR`; another in unit tests).
    cache_dir: Option<PathBuf>,
    /// The core text's symbols and range, from the cache (or a full read).
    core: Option<((u64, u64), Table)>,
    /// The cache was looked for.
    core_looked: bool,
    /// Once a full read was needed: the symbols outside the core text (every
    /// symbol if the core text is not known, or for a replayed capture).
    rest: Option<Table>,
    /// Full reads done (1 at most; for the tests).
    pub full_reads: u32,
}

impl KernelSymbols {
    /// Symbols from `/proc/kallsyms` and the cache in `cache_dir`
    /// ([`CACHE_DIR`] by default).
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Self {
            cache_dir: Some(cache_dir.unwrap_or_else(|| PathBuf::from(CACHE_DIR))),
            ..Self::default()
        }
    }

    /// Where the names given so far came from.
    pub fn read(&self) -> Read {
        match (&self.rest, &self.core) {
            (Some(_), _) if self.source.is_some() => Read::File,
            (Some(_), _) => Read::Kallsyms,
            (None, Some(_)) => Read::Cache,
            (None, None) => Read::None,
        }
    }

    /// A name for each of `addrs`.
    pub fn names(&mut self, addrs: &[u64]) -> Vec<Option<String>> {
        if addrs.is_empty() {
            return Vec::new();
        }
        if self.rest.is_none() {
            if let Some(path) = &self.source {
                let text = read_bounded(path).unwrap_or_default();
                self.rest = Some(Table::parse(&text).0);
            } else {
                if !self.core_looked {
                    self.core_looked = true;
                    self.core = self.read_cache();
                }
                let covered = self.core.as_ref().is_some_and(|((start, end), _)| {
                    addrs.iter().all(|a| (*start..*end).contains(a))
                });
                if !covered {
                    self.read_full();
                }
            }
        }
        addrs
            .iter()
            .map(|&a| {
                let table = match (&self.core, &self.rest) {
                    (Some(((start, end), core)), _) if (*start..*end).contains(&a) => core,
                    (_, Some(rest)) => rest,
                    _ => return None,
                };
                table.name(a).map(str::to_owned)
            })
            .collect()
    }

    /// Reads `/proc/kallsyms` whole, keeps its core text in the cache if the
    /// cache had none, and the rest (see [`KernelSymbols::rest`]).
    fn read_full(&mut self) {
        self.full_reads += 1;
        let text = read_bounded(Path::new("/proc/kallsyms")).unwrap_or_default();
        let (table, core) = Table::parse(&text);
        drop(text);
        if let (Some((start, end)), None) = (core, &self.core) {
            let cached = Cached {
                boot: boot_id().unwrap_or_default(),
                core: (start, end),
                table: table.within(start, end),
            };
            if !cached.boot.is_empty() {
                self.write_cache(&cached);
            }
            self.core = Some((cached.core, cached.table));
        }
        self.rest = Some(match &self.core {
            Some(((start, end), _)) => table.outside(*start, *end),
            None => table,
        });
    }

    /// This boot's cache file, if there is one crossprof wrote.
    fn read_cache(&self) -> Option<((u64, u64), Table)> {
        let dir = self.cache_folder()?;
        let boot = boot_id()?;
        let bytes = dir.read_own(&boot, MAX_KALLSYMS).ok()?;
        let cached = Cached::decode(&bytes)?;
        (cached.boot == boot).then_some((cached.core, cached.table))
    }

    /// Writes `cached` as its boot's file, and removes other boots' files.
    fn write_cache(&self, cached: &Cached) {
        let Some(dir) = self.cache_folder() else {
            return;
        };
        if dir.write_file(&cached.boot, &cached.encode()).is_err() {
            return;
        }
        for name in dir.names().unwrap_or_default() {
            if name != cached.boot && valid_boot_id(&name) {
                let _ = dir.remove(&name);
            }
        }
    }

    /// The cache folder (made 0700 if missing), refused unless it is a
    /// private folder of crossprof's user.
    fn cache_folder(&self) -> Option<OutFolder> {
        let path = self.cache_dir.as_deref()?;
        let parent = OutFolder::create(path.parent()?).ok()?;
        parent.subfolder(path.file_name()?.to_str()?).ok()
    }
}

/// A text file, at most [`MAX_KALLSYMS`] bytes of it, not through a link and
/// never blocking; lossy UTF-8.
fn read_bounded(path: &Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_KALLSYMS).read_to_end(&mut bytes).ok()?;
    Some(
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TEXT: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000010 T __entry_text_start
ffffffff81000040 T entry_SYSCALL_64
ffffffff81000100 t do_syscall_64
ffffffff81002000 T _etext
ffffffff82400000 D __start_rodata
not a line
ffffffffc0001000 t kvm_fn\t[kvm]
ffffffffc0002000 t bpf_prog_0123456789abcdef_sample\t[bpf]
";

    #[test]
    fn names_are_the_nearest_symbol_below_the_first_listed_of_an_address() {
        let (t, core) = Table::parse(TEXT);
        assert_eq!(core, Some((0xffffffff81000000, 0xffffffff81002000)));
        assert_eq!(t.name(0xffffffff81000000), Some("_stext"));
        assert_eq!(t.name(0xffffffff81000044), Some("entry_SYSCALL_64"));
        assert_eq!(t.name(0xffffffff81000fff), Some("do_syscall_64"));
        assert_eq!(t.name(0xffffffffc0001010), Some("kvm_fn"));
        assert_eq!(t.name(0xffffffff80000000), None);
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn the_symbols_outside_the_core_text_name_what_lies_outside_it() {
        let (t, core) = Table::parse(TEXT);
        let (start, end) = core.unwrap();
        let rest = t.outside(start, end);
        assert_eq!(rest.len(), 4, "_etext, rodata, a module's, a BPF program's");
        for a in [
            0,
            start - 1,
            end,
            end + 1,
            0xffffffffc0001010,
            0xffffffffc0002fff,
            u64::MAX,
        ] {
            assert_eq!(rest.name(a), t.name(a), "{a:#x}");
        }
    }

    fn cached() -> Cached {
        let (t, core) = Table::parse(TEXT);
        let core = core.unwrap();
        Cached {
            boot: "0123abcd-0000-4000-8000-00000000cafe".into(),
            core,
            table: t.within(core.0, core.1),
        }
    }

    /// A cache file (a fuzz seed).
    pub(crate) fn cache_file() -> Vec<u8> {
        cached().encode()
    }

    #[test]
    fn the_cache_file_round_trips_and_refuses_what_it_did_not_write() {
        let cached = cached();
        assert_eq!(cached.table.len(), 5);
        assert_eq!(cached.table.name(0xffffffff81001000), Some("do_syscall_64"));
        let bytes = cached.encode();
        assert_eq!(Cached::decode(&bytes).as_ref(), Some(&cached));
        // Every cut and every flipped byte is refused or decodes to a table
        // as well formed as one written (never a panic).
        for cut in 0..bytes.len() {
            assert_eq!(Cached::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x80;
            if let Some(c) = Cached::decode(&b) {
                assert_eq!(c.table.len(), 5, "flip at {i}");
            }
        }
        let mut bad_boot = bytes.clone();
        bad_boot[MAGIC.len()] = b'X';
        assert_eq!(Cached::decode(&bad_boot), None);
    }

    /// Needs root's cache folder and `/proc/kallsyms` with addresses: the
    /// second set of symbols names the core kernel from the cache, with no
    /// full read; a module's or BPF program's address still asks for one.
    #[test]
    fn a_second_run_names_the_core_kernel_from_the_cache() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let (full, Some((start, end))) = Table::parse(&text) else {
            eprintln!("skipped: /proc/kallsyms shows no addresses here");
            return;
        };
        let dir = std::env::temp_dir()
            .join(format!("crossprof-ksyms-{}", std::process::id()))
            .join("kallsyms");
        let addrs: Vec<u64> = (0..64).map(|i| start + (end - start) / 64 * i).collect();
        let want: Vec<Option<String>> = addrs
            .iter()
            .map(|&a| full.name(a).map(str::to_owned))
            .collect();
        let mut first = KernelSymbols::new(Some(dir.clone()));
        assert_eq!(first.names(&addrs), want);
        assert_eq!(first.full_reads, 1);
        assert_eq!(first.read(), Read::Kallsyms);
        let mut second = KernelSymbols::new(Some(dir.clone()));
        assert_eq!(second.names(&addrs), want);
        assert_eq!(second.full_reads, 0, "named from the cache");
        assert_eq!(second.read(), Read::Cache);
        // Outside the core text: a full read, which keeps only what lies
        // outside it and names every address as the whole table does.
        let around: Vec<u64> = [start - 1, start, end - 1, end, end + 0x1000, u64::MAX]
            .into_iter()
            .chain(addrs.iter().copied())
            .collect();
        let want: Vec<Option<String>> = around
            .iter()
            .map(|&a| full.name(a).map(str::to_owned))
            .collect();
        assert_eq!(second.names(&around), want);
        assert_eq!(second.full_reads, 1, "outside the core text: a full read");
        let kept = second.rest.as_ref().map_or(0, Table::len);
        assert!(kept < full.len() / 4, "kept {kept} of {}", full.len());
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
