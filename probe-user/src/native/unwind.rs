//! The kernel's `.eh_frame` tables (see `probe_common::native`): each
//! object's rules, read once per file ([`super::rules`], on the parser
//! thread) and written once into the shared `UNWIND_ROWS` array with a page
//! index (`UNWIND_PAGES`), and per
//! process the list of its mappings with where their rows are (`UNWIND_MAPS`,
//! at the process's slot, named in its `PROCESSES` entry: `crate::process`).
//!
//! A file's rows stay while a process whose walks use them lives, and are
//! given back when the last one is gone (a long-running agent sees a browser
//! come and go: its rows must not keep the table full for what starts after).
//! A file that does not fit even then gets no rules (its frames fall back to
//! frame pointers, and a stack that cannot be walked further ends in
//! `[truncated: no unwind info]`), is counted (`unwind_files_refused`), and is
//! tried again once room is freed.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{Array as BpfArray, MapData, MapError};
use probe_common::native::{
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_PAGES, MAX_UNWIND_PIDS, MAX_UNWIND_ROWS, UnwindMapping,
    UnwindMappings, UnwindPage, UnwindRow,
};

use super::rules::VDSO;
use super::{
    elf::Elf,
    rules::{Parsed, Parser, spawn_parser, vdso_rules},
};
use crate::go::pclntab::GoTable;

/// Why the tables could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum UnwindTableError {
    /// A map update failed.
    #[error("cannot update the kernel's unwind tables: {0}")]
    Map(#[from] MapError),
    /// The row array is full.
    #[error(
        "the kernel's unwind table is full ({MAX_UNWIND_ROWS} rows, {MAX_UNWIND_PAGES} pages of code): objects mapped from now on are walked by frame pointers only"
    )]
    Full,
    /// An object's rules are still being read (on the parser thread): try
    /// again at a later poll. Not a failure.
    #[error("unwind rules are still being read")]
    Pending,
}

/// One executable mapping of a process, for [`UnwindTables::add_process`].
#[derive(Clone, Copy)]
pub struct ObjectMapping<'a> {
    /// First address.
    pub start: u64,
    /// Past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The file.
    pub path: &'a Path,
    /// Its Go function table, if it is a Go binary (rows for its Go code are
    /// added when it has C parts: see [`crate::go::cgo`]).
    pub go: Option<&'a Arc<GoTable>>,
}

/// An object's rows in `UNWIND_ROWS` and its page index in `UNWIND_PAGES`.
#[derive(Debug, Clone, Copy)]
struct Placed {
    first: u32,
    count: u32,
    pages_first: u32,
    pages: u32,
    page_base: u32,
}

/// A memory-mapped `BPF_F_MMAPABLE` array map of `len` `T`s.
struct Mapped<T> {
    _map: MapData,
    at: *mut T,
    len: usize,
}

impl<T> Mapped<T> {
    fn new(map: MapData, len: usize) -> std::io::Result<Self> {
        let bytes = len * size_of::<T>();
        // SAFETY: a shared read-write mapping of the array map's fd, of exactly
        // the array's size (a multiple of the page size); checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            _map: map,
            at: at.cast::<T>(),
            len,
        })
    }

    /// Copies `values` to index `first` on; the caller has checked the bounds.
    fn write(&mut self, first: usize, values: &[T]) {
        assert!(first + values.len() <= self.len, "write past the map");
        // SAFETY: inside the mapping (asserted); entries past what processes
        // were given are not read by the kernel meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr(), self.at.add(first), values.len());
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.at.cast(), self.len * size_of::<T>()) };
    }
}

/// The kernel's tables and what is in them.
pub struct UnwindTables {
    /// `UNWIND_ROWS` and `UNWIND_PAGES`, memory-mapped (`BPF_F_MMAPABLE`).
    rows: Mapped<UnwindRow>,
    pages: Mapped<UnwindPage>,
    /// `UNWIND_MAPS` (per slot), and each process's slot in its
    /// `PROCESSES` entry.
    maps: BpfArray<MapData, UnwindMappings>,
    processes: crate::process::ProcessEntries,
    /// Our copy of the slots given out, and those free again (oldest first:
    /// a slot is reused as late as possible, in case a walk of its previous
    /// process is still running).
    slot_of: HashMap<u32, u32>,
    /// What each process's list says now, `(start, end, first row)` per
    /// mapping: a list asked again unchanged (its process still waits for a
    /// file) is not written again.
    written: HashMap<u32, Vec<(u64, u64, u32)>>,
    free_slots: std::collections::VecDeque<u32>,
    next_slot: u32,
    /// By file (the path that opens it for as long as crossprof runs).
    placed: HashMap<std::path::PathBuf, Option<(Placed, Arc<Elf>)>>,
    /// The processes whose walks use each placed file's rows: a file no live
    /// process maps gives its rows back.
    users: HashMap<std::path::PathBuf, std::collections::BTreeSet<u32>>,
    /// Per process, the files its walks use.
    objects_of: HashMap<u32, Vec<std::path::PathBuf>>,
    next: u32,
    next_page: u32,
    /// Ranges of rows and of page entries given back, `(first, count)`.
    free_rows: Vec<(u32, u32)>,
    free_pages: Vec<(u32, u32)>,
    /// Files refused for lack of room, with the rows and page entries they
    /// need: not parsed again until a free block that large exists (a file
    /// that can never fit, never). Parsing a large library's rules takes
    /// seconds; retrying it whenever any process exits would take the event
    /// loop's time for nothing.
    refused: HashMap<std::path::PathBuf, (u32, u32)>,
    /// The last `UnwindMappings::generation` written.
    generation: u32,
    /// Files being read off the event loop, and those read and not yet
    /// written (kept while a process waiting for them may still ask: see
    /// [`UnwindTables::end_poll`]).
    parser: Parser,
    parsed: HashMap<PathBuf, Option<Parsed>>,
    /// The vDSO's rules and its image's size (see [`vdso_rules`]), placed
    /// like a file's while a process maps it.
    vdso: Option<(Parsed, u64)>,
    /// Files asked for since the last [`UnwindTables::begin_poll`].
    wanted: HashSet<PathBuf>,
    /// Files read before a command started ([`UnwindTables::prefetch`]):
    /// kept until placed, though no process asked for them yet.
    early: HashSet<PathBuf>,
    /// Rows written, for the summary (memory: 8 bytes each).
    pub rows_written: u64,
    /// Rows given back by files no live process maps any more.
    pub rows_freed: u64,
    /// Files whose rules did not fit (their code is walked by frame
    /// pointers: `[truncated: no unwind info]` where it has none).
    pub files_refused: u64,
}

/// The largest block [`allocate`] could hand out now: a free range, or the
/// untouched tail.
fn largest_free(free: &[(u32, u32)], next: u32, max: u32) -> u32 {
    free.iter()
        .map(|&(_, len)| len)
        .max()
        .unwrap_or(0)
        .max(max.saturating_sub(next))
}

/// The first `n` entries free in `free` (first fit; what is left of a range
/// stays free), else at `*next` if `next + n <= max`.
fn allocate(free: &mut Vec<(u32, u32)>, next: &mut u32, max: u32, n: u32) -> Option<u32> {
    if let Some(i) = free.iter().position(|&(_, len)| len >= n) {
        let (first, len) = free[i];
        if len == n {
            free.swap_remove(i);
        } else {
            free[i] = (first + n, len - n);
        }
        return Some(first);
    }
    let end = next.checked_add(n).filter(|&e| e <= max)?;
    let first = *next;
    *next = end;
    Some(first)
}

impl UnwindTables {
    /// Wraps the kernel's maps; the row and page arrays are mapped into memory.
    pub fn new(
        rows_map: MapData,
        pages_map: MapData,
        maps: BpfArray<MapData, UnwindMappings>,
        processes: crate::process::ProcessEntries,
    ) -> std::io::Result<Self> {
        Ok(Self {
            rows: Mapped::new(rows_map, MAX_UNWIND_ROWS as usize)?,
            pages: Mapped::new(pages_map, MAX_UNWIND_PAGES as usize)?,
            maps,
            processes,
            slot_of: HashMap::new(),
            written: HashMap::new(),
            free_slots: std::collections::VecDeque::new(),
            next_slot: 0,
            placed: HashMap::new(),
            users: HashMap::new(),
            objects_of: HashMap::new(),
            next: 0,
            next_page: 0,
            free_rows: Vec::new(),
            free_pages: Vec::new(),
            refused: HashMap::new(),
            generation: 0,
            parser: spawn_parser(Arc::new(tokio::sync::Notify::new())),
            parsed: HashMap::new(),
            wanted: HashSet::new(),
            early: HashSet::new(),
            vdso: vdso_rules(),
            rows_written: 0,
            rows_freed: 0,
            files_refused: 0,
        })
    }

    /// Gives the kernel the rules of `pid`'s executable mappings `(start, end,
    /// file offset, path)`; its user stacks are walked by them from then on.
    /// Returns how many mappings have rules.
    pub fn add_process(
        &mut self,
        pid: u32,
        mappings: &[ObjectMapping<'_>],
    ) -> Result<usize, UnwindTableError> {
        // Every file asked of the parser thread at once; those read are
        // placed and written now, the others when they are read (the answer
        // is then `Pending`, and the caller asks again). Not all or nothing:
        // a process that keeps mapping libraries (a runtime's start-up: .NET
        // maps libcoreclr, then libclrjit, then ICU...) would otherwise have
        // no rules, not even libc's, until the last one is read (its first
        // 240 ms of walks cut at libc, seen on .NET 8). The files placed are
        // the process's users' (`set_objects`): its exit gives them back.
        // Smallest code first: the parser thread reads in order, and libc
        // should not wait behind a 200 MB libLLVM mapped beside it.
        let mut by_size: Vec<&ObjectMapping<'_>> = mappings.iter().collect();
        by_size.sort_by_key(|m| m.end.saturating_sub(m.start));
        let mut pending = false;
        for m in by_size {
            match self.ready(m.path, m.go) {
                Err(UnwindTableError::Pending) => pending = true,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        let mut entries = Vec::new();
        let mut used = Vec::new();
        let mut full = false;
        for &ObjectMapping {
            start,
            end,
            offset,
            path,
            go,
        } in mappings
        {
            let placed = match self.place(path, go) {
                Ok(p) => p,
                Err(UnwindTableError::Full) => {
                    full = true;
                    None
                }
                Err(UnwindTableError::Pending) => None,
                Err(e) => return Err(e),
            };
            let Some((placed, elf)) = placed else {
                continue;
            };
            let Some(link) = elf.mapping_vaddr(offset) else {
                continue;
            };
            if !used.iter().any(|p: &std::path::PathBuf| p == path) {
                used.push(path.to_path_buf());
            }
            entries.push(UnwindMapping {
                start,
                end,
                bias: start.wrapping_sub(link),
                first: placed.first,
                count: placed.count,
                pages_first: placed.pages_first,
                pages: placed.pages,
                page_base: placed.page_base,
                _pad: 0,
            });
        }
        entries.sort_by_key(|e| e.start);
        entries.truncate(MAX_UNWIND_MAPPINGS);
        let summary: Vec<_> = entries.iter().map(|e| (e.start, e.end, e.first)).collect();
        if self.written.get(&pid) == Some(&summary) {
            return if pending {
                Err(UnwindTableError::Pending)
            } else {
                Ok(entries.len())
            };
        }
        if entries.is_empty() {
            return if pending {
                Err(UnwindTableError::Pending)
            } else if full {
                Err(UnwindTableError::Full)
            } else {
                Ok(0)
            };
        }
        // A new version number for every write (see `UnwindMappings::generation`).
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        let mut value = UnwindMappings {
            count: entries.len() as u32,
            generation: self.generation,
            entries: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        };
        value.entries[..entries.len()].copy_from_slice(&entries);
        let slot = match self.slot_of.get(&pid) {
            Some(&slot) => slot,
            None => {
                let slot = match self.free_slots.pop_front() {
                    Some(slot) => slot,
                    None if self.next_slot < MAX_UNWIND_PIDS => {
                        self.next_slot += 1;
                        self.next_slot - 1
                    }
                    None => return Err(UnwindTableError::Full),
                };
                self.slot_of.insert(pid, slot);
                slot
            }
        };
        // The mappings first, then the slot: the kernel never sees a slot
        // without its mappings.
        self.maps.set(slot, value, 0)?;
        self.processes.set_rules(pid, Some(slot))?;
        self.written.insert(pid, summary);
        self.set_objects(pid, used);
        if pending {
            return Err(UnwindTableError::Pending);
        }
        if full {
            return Err(UnwindTableError::Full);
        }
        Ok(entries.len())
    }

    /// Does the object at `path` have rules (placing them if not done yet)?
    pub fn has_rules(
        &mut self,
        path: &Path,
        go: Option<&Arc<GoTable>>,
    ) -> Result<bool, UnwindTableError> {
        Ok(self.place(path, go)?.is_some())
    }

    /// Every object with rows in the kernel's table: its rows and page index
    /// entries (8 bytes each), largest first (`path` as crossprof opened it).
    pub fn objects(&self) -> Vec<(String, u32, u32)> {
        let mut objects: Vec<(String, u32, u32)> = self
            .placed
            .iter()
            .filter_map(|(path, p)| {
                let placed = &p.as_ref()?.0;
                Some((path.display().to_string(), placed.count, placed.pages))
            })
            .collect();
        objects.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        objects
    }

    /// Stops walking `pid` by rules (it exited, or its maps changed); the
    /// rows of files no other process uses are given back.
    pub fn remove_process(&mut self, pid: u32) {
        self.written.remove(&pid);
        if let Some(slot) = self.slot_of.remove(&pid) {
            let _ = self.processes.set_rules(pid, None);
            self.free_slots.push_back(slot);
        }
        self.set_objects(pid, Vec::new());
    }

    /// Records that `pid`'s walks use the files `now` (and no others): a
    /// file left without a user gives its rows and page entries back. (Its
    /// process's slot no longer points at them: the slot was removed or
    /// rewritten first.)
    fn set_objects(&mut self, pid: u32, now: Vec<std::path::PathBuf>) {
        let before = self.objects_of.remove(&pid).unwrap_or_default();
        for path in before.iter().filter(|p| !now.contains(p)) {
            let Some(users) = self.users.get_mut(path) else {
                continue;
            };
            users.remove(&pid);
            if !users.is_empty() {
                continue;
            }
            self.users.remove(path);
            if let Some(Some((placed, _))) = self.placed.remove(path) {
                self.free_rows.push((placed.first, placed.count));
                self.free_pages.push((placed.pages_first, placed.pages));
                self.rows_freed += u64::from(placed.count);
            }
        }
        for path in &now {
            self.users.entry(path.clone()).or_default().insert(pid);
        }
        if !now.is_empty() {
            self.objects_of.insert(pid, now);
        }
    }

    /// The size of the vDSO image whose rules are known (a process's
    /// `[vdso]` mapping of another size gets none).
    pub fn vdso_len(&self) -> Option<u64> {
        self.vdso.as_ref().map(|&(_, len)| len)
    }

    /// Rows in use now.
    pub fn rows_in_use(&self) -> u64 {
        self.placed
            .values()
            .filter_map(|p| p.as_ref())
            .map(|(p, _)| u64::from(p.count))
            .sum()
    }

    /// Notified whenever the parser thread has read a file: the event loop
    /// then polls, so that a process's rules are in as soon as they are read
    /// (not at the next tick).
    pub fn rules_read(&self) -> Arc<tokio::sync::Notify> {
        self.parser.notify()
    }

    /// Takes in the files the parser thread has read since the last poll.
    pub fn begin_poll(&mut self) {
        while let Some((path, parsed)) = self.parser.take() {
            self.received(path, parsed);
        }
        self.wanted.clear();
    }

    /// Keeps what the parser thread read of `path`.
    fn received(&mut self, path: PathBuf, parsed: Option<Parsed>) {
        self.parsed.insert(path, parsed);
    }

    /// Drops what was read for files no process asked for during this poll
    /// (their processes exited before the rules were read): a storm of
    /// short-lived processes leaves no parsed rows behind.
    pub fn end_poll(&mut self) {
        let (wanted, early) = (&self.wanted, &self.early);
        self.parsed
            .retain(|path, _| wanted.contains(path) || early.contains(path));
    }

    /// Reads the rules of `paths` (the objects a command will load, see
    /// [`super::loader`]) now, waiting at most `deadline`, and keeps them until
    /// a process maps them: a command started after this has only its
    /// mappings to be written when it is seen. Returns how many were read in
    /// time. A Go binary's rules include its Go code's (see
    /// [`crate::go::cgo`]), read from its function table (`go_table`, the
    /// same tables the process's mappings are given when it runs).
    pub fn prefetch(
        &mut self,
        paths: &[PathBuf],
        go_table: impl Fn(&Path) -> Option<Arc<GoTable>>,
        deadline: std::time::Duration,
    ) -> usize {
        let until = std::time::Instant::now() + deadline;
        let mut waiting = HashSet::new();
        for path in paths {
            let go = go_table(path);
            self.early.insert(path.clone());
            if let Err(UnwindTableError::Pending) = self.ready(path, go.as_ref()) {
                waiting.insert(path.clone());
            }
        }
        let mut read = paths.len() - waiting.len();
        while !waiting.is_empty() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let Some((path, parsed)) = self.parser.take_within(left) else {
                break;
            };
            if waiting.remove(&path) {
                read += 1;
            }
            self.received(path, parsed);
        }
        read
    }

    /// Is the object at `path` placed, known to have no rules, refused (and
    /// still without room), or read and waiting to be placed? If not, it is
    /// sent to the parser thread (once) and the answer is
    /// [`UnwindTableError::Pending`]. The one place that decides whether a
    /// file is read: [`UnwindTables::add_process`] asks it of every file
    /// before placing any, so that all are read at once.
    fn ready(&mut self, path: &Path, go: Option<&Arc<GoTable>>) -> Result<(), UnwindTableError> {
        self.wanted.insert(path.to_path_buf());
        if path == Path::new(VDSO) {
            if !self.placed.contains_key(path) && !self.parsed.contains_key(path) {
                let rules = self.vdso.as_ref().map(|(rules, _)| rules.clone());
                self.parsed.insert(path.to_path_buf(), rules);
            }
            return Ok(());
        }
        if let Some(&(rows, pages)) = self.refused.get(path) {
            let fits = largest_free(&self.free_rows, self.next, MAX_UNWIND_ROWS) >= rows
                && largest_free(&self.free_pages, self.next_page, MAX_UNWIND_PAGES) >= pages;
            if !fits {
                return Ok(()); // `place` says `Full`
            }
            // Room now: read it again.
            self.refused.remove(path);
        }
        if self.placed.contains_key(path) || self.parsed.contains_key(path) {
            return Ok(());
        }
        if !self.parser.is_pending(path) && !self.parser.ask(path.to_path_buf(), go.cloned()) {
            // The thread is gone (it panicked): no rules for this file.
            self.placed.insert(path.to_path_buf(), None);
            return Ok(());
        }
        Err(UnwindTableError::Pending)
    }

    /// The object at `path`, placed in `UNWIND_ROWS` (once per file); `None`
    /// if it has no rules; [`UnwindTableError::Pending`] while the parser
    /// thread reads it.
    fn place(
        &mut self,
        path: &Path,
        go: Option<&Arc<GoTable>>,
    ) -> Result<Option<(Placed, Arc<Elf>)>, UnwindTableError> {
        if let Some(p) = self.placed.get(path) {
            return Ok(p.clone());
        }
        self.ready(path, go)?;
        self.early.remove(path);
        if self.refused.contains_key(path) {
            return Err(UnwindTableError::Full);
        }
        let Some(Parsed {
            rows,
            page_base,
            index,
            elf,
        }) = self.parsed.remove(path).flatten()
        else {
            self.placed.insert(path.to_path_buf(), None);
            return Ok(None);
        };
        let count = rows.len() as u32;
        let pages_needed = u32::try_from(index.len()).unwrap_or(u32::MAX);
        let refuse = |t: &mut Self| {
            t.refused.insert(path.to_path_buf(), (count, pages_needed));
            t.files_refused += 1;
            Err(UnwindTableError::Full)
        };
        if u64::from(count) > u64::from(MAX_UNWIND_ROWS) || index.len() > MAX_UNWIND_PAGES as usize
        {
            return refuse(self);
        }
        let Some(first) = allocate(&mut self.free_rows, &mut self.next, MAX_UNWIND_ROWS, count)
        else {
            return refuse(self);
        };
        let Some(pages_first) = allocate(
            &mut self.free_pages,
            &mut self.next_page,
            MAX_UNWIND_PAGES,
            index.len() as u32,
        ) else {
            self.free_rows.push((first, count));
            return refuse(self);
        };
        // Written before any process's list points at them, so the kernel
        // does not read them meanwhile.
        self.rows.write(first as usize, &rows);
        self.pages.write(pages_first as usize, &index);
        self.rows_written += u64::from(count);
        let placed = Some((
            Placed {
                first,
                count,
                pages_first,
                pages: index.len() as u32,
                page_base,
            },
            elf,
        ));
        self.placed.insert(path.to_path_buf(), placed.clone());
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows given back are taken again first (first fit, split when larger),
    /// and nothing is handed out past the table's end.
    #[test]
    fn freed_rows_are_reused_before_the_table_grows() {
        let (mut free, mut next) = (Vec::new(), 0u32);
        assert_eq!(allocate(&mut free, &mut next, 100, 60), Some(0));
        assert_eq!(
            allocate(&mut free, &mut next, 100, 50),
            None,
            "past the end"
        );
        assert_eq!(allocate(&mut free, &mut next, 100, 40), Some(60));
        free.push((0, 60)); // the first file's process exited
        assert_eq!(allocate(&mut free, &mut next, 100, 25), Some(0));
        assert_eq!(free, [(25, 35)]);
        assert_eq!(allocate(&mut free, &mut next, 100, 35), Some(25));
        assert!(free.is_empty());
        assert_eq!(allocate(&mut free, &mut next, 100, 1), None, "full");
        assert_eq!(allocate(&mut free, &mut next, u32::MAX, u32::MAX), None);
        // What a refused file waits for: a block as large as it needs.
        assert_eq!(largest_free(&[], 100, 100), 0);
        assert_eq!(largest_free(&[(3, 10), (40, 25)], 90, 100), 25);
        assert_eq!(largest_free(&[(3, 10)], 50, 100), 50);
    }
}
