//! Each object's unwind rules in the kernel's form: read from its
//! `.eh_frame` (and `.debug_frame` where `.eh_frame` is silent, and the Go
//! side of a Go binary: [`crate::go::cgo`]) on a thread of its own (the
//! parser thread), with the page index the kernel's lookup starts from. The
//! vDSO's are read from crossprof's own. Where they are written in the
//! kernel is [`super::unwind`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use probe_common::native::{
    MAX_UNWIND_PAGES, RBP_SAME, RBP_UNKNOWN, UNWIND_PAGE_SHIFT, UnwindPage, UnwindRow, cfa_kind,
};

use super::{
    ehframe::{self, Cfa, Rbp},
    elf::Elf,
};
use crate::go::pclntab::GoTable;

/// The page index of `rows` (sorted, link-time PCs): `(page_base, pages)`,
/// one [`UnwindPage`] per page from the first row's to the last row's, whose
/// `lo..=hi` holds the row of every PC in the page.
pub fn page_index(rows: &[UnwindRow]) -> (u32, Vec<UnwindPage>) {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return (0, Vec::new());
    };
    let base = first.pc >> UNWIND_PAGE_SHIFT;
    // An index larger than the kernel's table would not fit anyway: none is
    // built (the caller refuses the file) rather than 2^24 entries first.
    let pages = (last.pc >> UNWIND_PAGE_SHIFT) - base + 1;
    if pages > MAX_UNWIND_PAGES {
        return (base, Vec::new());
    }
    // The last row at or before the start of page `base + i` (0 if none).
    let bound = |i: u32| {
        let start = u64::from(base + i) << UNWIND_PAGE_SHIFT;
        rows.partition_point(|r| u64::from(r.pc) <= start)
            .saturating_sub(1) as u32
    };
    let entries = (0..pages)
        .map(|i| UnwindPage {
            lo: bound(i),
            hi: bound(i + 1),
        })
        .collect();
    (base, entries)
}

/// An object's rules in the kernel's form, with its page index: what the
/// parser thread hands back for [`UnwindTables`] to write.
#[derive(Clone)]
pub(super) struct Parsed {
    pub(super) rows: Vec<UnwindRow>,
    pub(super) page_base: u32,
    pub(super) index: Vec<UnwindPage>,
    pub(super) elf: Arc<Elf>,
}

/// Reads the rules of the object at `path` (`.eh_frame`, plus the Go side of a
/// cgo binary or the `.debug_frame` rules `.eh_frame` leaves out); `None` if it
/// is not a readable ELF file or has no rules.
///
/// Runs on the parser thread: a large library takes seconds (libLLVM's 1.4M
/// rows: 5-15 s), which the event loop must never wait for (issue #18: a
/// recording beside a build tool's processes overran `--duration` by 20 s).
pub(super) fn parse_object(path: &Path, go: Option<&GoTable>) -> Option<Parsed> {
    let file = crate::native::elf::MappedFile::open(path)?;
    parse_bytes(file.bytes(), path, go)
}

/// [`parse_object`] of an object's bytes (`path` names it in the log).
pub(super) fn parse_bytes(data: &[u8], path: &Path, go: Option<&GoTable>) -> Option<Parsed> {
    let started = std::time::Instant::now();
    let elf = Elf::parse(data)?;
    let rows = match (
        elf.section(".eh_frame"),
        elf.section_data(data, ".eh_frame"),
    ) {
        (Some(s), Some(bytes)) => ehframe::rows(bytes, s.addr).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut rows: Vec<UnwindRow> = rows.iter().map(kernel_row).collect();
    match go {
        // A Go binary with C parts (cgo): rows for the Go side too. A Go
        // binary without `.eh_frame` (Go's own linker) gets rows only where
        // its frame pointers cannot be trusted, its assembly (its
        // `.debug_frame` is Go's, for the Go code frame pointers walk).
        Some(table) => {
            use crate::go::cgo::{Linker, rows as go_rows};
            let linker = if rows.is_empty() {
                Linker::Go
            } else {
                Linker::C
            };
            rows = merge_ranges(rows, &go_rows(table, linker));
        }
        // Code `.eh_frame` leaves out but `.debug_frame` covers (built
        // with `-g -fno-asynchronous-unwind-tables`).
        None => {
            let debug = elf
                .section_bytes(data, ".debug_frame", 64 << 20)
                .and_then(|bytes| ehframe::debug_frame_rows(&bytes).ok())
                .unwrap_or_default();
            if !debug.is_empty() {
                let debug: Vec<UnwindRow> = debug.iter().map(kernel_row).collect();
                let gaps = gaps_filled_by(&rows, &debug);
                rows = merge_ranges(rows, &gaps);
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    // Runs of one rule are one row: Go code (a row per function, all
    // alike) becomes a few, and a page's search a step or none.
    rows.dedup_by(|next, prev| {
        (next.cfa_kind, next.cfa_off, next.rbp) == (prev.cfa_kind, prev.cfa_off, prev.rbp)
    });
    let (page_base, index) = page_index(&rows);
    log::debug!(
        "{}: {} unwind rows read in {:?}",
        path.display(),
        rows.len(),
        started.elapsed()
    );
    Some(Parsed {
        rows,
        page_base,
        index,
        elf: Arc::new(elf),
    })
}

/// The name the vDSO's rules are kept under (never a file: no path opened
/// as this one, and never sent to the parser thread).
pub const VDSO: &str = "[vdso]";

/// The rules of the vDSO, read from crossprof's own (`/proc/self/mem` at
/// `[vdso]`): every 64-bit process on this kernel maps the same image, whose
/// `.eh_frame` covers `clock_gettime` and the rest. Without them a sample in
/// a vDSO function's prologue (RBP not linked yet) loses its caller, or
/// worse, a walk follows the caller's RBP in code without frame pointers.
/// Also the image's size, to check a target's mapping against.
pub(super) fn vdso_rules() -> Option<(Parsed, u64)> {
    use std::os::unix::fs::FileExt as _;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with(" [vdso]"))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    let len = usize::try_from(end.checked_sub(start)?).ok()?;
    if len > 1 << 20 {
        return None;
    }
    let mut image = vec![0u8; len];
    std::fs::File::open("/proc/self/mem")
        .ok()?
        .read_exact_at(&mut image, start)
        .ok()?;
    Some((parse_bytes(&image, Path::new(VDSO), None)?, len as u64))
}

/// The parser thread: a file's path and its Go table (for its Go code's
/// rules) in, its rules out (see [`crate::worker`]).
pub(super) type Parser = crate::worker::Worker<PathBuf, Option<Arc<GoTable>>, Option<Parsed>>;

/// Starts the parser thread; `notify` is notified after each file (the
/// event loop places its rules at once, see [`super::unwind::UnwindTables::rules_read`]).
/// One that cannot start leaves every file without rules (walked by frame
/// pointers), logged.
pub(super) fn spawn_parser(notify: Arc<tokio::sync::Notify>) -> Parser {
    crate::worker::Worker::spawn(
        "crossprof-rules",
        "reads unwind rules",
        notify,
        |path: &PathBuf, go: Option<Arc<GoTable>>| parse_object(path, go.as_deref()),
    )
}

/// The rules of `other` (rows sorted by PC) for the PCs `rows` has none for,
/// as ranges for [`merge_ranges`]: `.debug_frame` where `.eh_frame` is silent.
pub fn gaps_filled_by(rows: &[UnwindRow], other: &[UnwindRow]) -> Vec<(u64, u64, UnwindRow)> {
    let unknown_at = |pc: u32| {
        let i = rows.partition_point(|r| r.pc <= pc);
        i == 0 || rows[i - 1].cfa_kind == cfa_kind::UNKNOWN
    };
    let no_row_inside = |start: u32, end: u32| {
        let i = rows.partition_point(|r| r.pc <= start);
        rows.get(i).is_none_or(|r| r.pc >= end)
    };
    other
        .windows(2)
        .filter(|w| w[0].cfa_kind != cfa_kind::UNKNOWN && w[0].pc < w[1].pc)
        .filter(|w| unknown_at(w[0].pc) && no_row_inside(w[0].pc, w[1].pc))
        .map(|w| (u64::from(w[0].pc), u64::from(w[1].pc), w[0]))
        .collect()
}

/// `rows` (sorted by PC) with `ranges` (sorted `(start, end, row)` link-time
/// ranges, e.g. Go functions) laid over them: inside a range its row rules,
/// after it whatever rule `rows` had there.
pub fn merge_ranges(rows: Vec<UnwindRow>, ranges: &[(u64, u64, UnwindRow)]) -> Vec<UnwindRow> {
    let inside = |pc: u64| {
        let i = ranges.partition_point(|r| r.0 <= pc);
        i > 0 && pc < ranges[i - 1].1
    };
    let rule_at = |pc: u64| {
        let i = rows.partition_point(|r| u64::from(r.pc) <= pc);
        i.checked_sub(1).map_or(
            UnwindRow {
                pc: 0,
                cfa_off: 0,
                cfa_kind: cfa_kind::UNKNOWN,
                rbp: RBP_UNKNOWN,
            },
            |i| rows[i],
        )
    };
    // (pc, priority, row): a range's first row and the original rows come
    // before the row that resumes the original rule at a range's end.
    let mut all: Vec<(u32, u8, UnwindRow)> = Vec::with_capacity(rows.len() + 2 * ranges.len());
    for &(start, end, row) in ranges {
        let (Ok(s), Ok(e)) = (u32::try_from(start), u32::try_from(end)) else {
            continue;
        };
        all.push((s, 0, UnwindRow { pc: s, ..row }));
        all.push((
            e,
            1,
            UnwindRow {
                pc: e,
                ..rule_at(end)
            },
        ));
    }
    all.extend(
        rows.iter()
            .filter(|r| !inside(u64::from(r.pc)))
            .map(|&r| (r.pc, 0, r)),
    );
    all.sort_by_key(|&(pc, prio, _)| (pc, prio));
    all.dedup_by_key(|&mut (pc, _, _)| pc);
    all.into_iter().map(|(_, _, r)| r).collect()
}

/// The kernel's form of a rule: CFA offsets beyond 16 bits and RBP slots that
/// are not 8-byte aligned within ±1 KiB of the CFA have no form there and
/// become "no rule" (the frame pointer is tried instead).
pub fn kernel_row(row: &ehframe::Row) -> UnwindRow {
    let (kind, off) = match row.cfa {
        Cfa::Rsp(o) => (cfa_kind::RSP, i16::try_from(o).ok()),
        Cfa::Rbp(o) => (cfa_kind::RBP, i16::try_from(o).ok()),
        Cfa::Plt => (cfa_kind::PLT, Some(0)),
        Cfa::Outermost => (cfa_kind::OUTERMOST, Some(0)),
        Cfa::Unknown => (cfa_kind::UNKNOWN, Some(0)),
    };
    let (kind, off) = match off {
        Some(o) => (kind, o),
        None => (cfa_kind::UNKNOWN, 0),
    };
    let rbp = match row.rbp {
        Rbp::Same => RBP_SAME,
        Rbp::Unknown => RBP_UNKNOWN,
        Rbp::AtCfa(o) if o % 8 == 0 && o != 0 => i8::try_from(o / 8)
            .ok()
            .filter(|&v| v != RBP_UNKNOWN)
            .unwrap_or(RBP_UNKNOWN),
        Rbp::AtCfa(_) => RBP_UNKNOWN,
    };
    UnwindRow {
        pc: row.pc as u32,
        cfa_off: off,
        cfa_kind: kind,
        rbp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u32, kind: u8, off: i16) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_off: off,
            cfa_kind: kind,
            rbp: RBP_SAME,
        }
    }

    #[test]
    fn debug_frame_fills_only_what_eh_frame_leaves_out() {
        // .eh_frame: 0x100-0x140 (crt code); .debug_frame: 0x100-0x140 too
        // (must not override) and 0x200-0x260 (two rows).
        let eh = vec![
            row(0x100, cfa_kind::RSP, 8),
            row(0x140, cfa_kind::UNKNOWN, 0),
        ];
        let debug = vec![
            row(0x100, cfa_kind::RBP, 16),
            row(0x140, cfa_kind::UNKNOWN, 0),
            row(0x200, cfa_kind::RSP, 8),
            row(0x204, cfa_kind::RSP, 32),
            row(0x260, cfa_kind::UNKNOWN, 0),
        ];
        let merged: Vec<(u32, u8, i16)> = merge_ranges(eh.clone(), &gaps_filled_by(&eh, &debug))
            .iter()
            .map(|r| (r.pc, r.cfa_kind, r.cfa_off))
            .collect();
        assert_eq!(
            merged,
            [
                (0x100, cfa_kind::RSP, 8),
                (0x140, cfa_kind::UNKNOWN, 0),
                (0x200, cfa_kind::RSP, 8),
                (0x204, cfa_kind::RSP, 32),
                (0x260, cfa_kind::UNKNOWN, 0),
            ]
        );
    }

    #[test]
    fn the_page_index_brackets_each_pcs_row() {
        // Rows at pages 1, 1, 2.5, 3 and 4.5.
        let page = 1u32 << UNWIND_PAGE_SHIFT;
        let rows: Vec<UnwindRow> = [page, page + 0x10, page * 5 / 2, page * 3, page * 9 / 2]
            .iter()
            .map(|&pc| row(pc, cfa_kind::RSP, 8))
            .collect();
        let (base, index) = page_index(&rows);
        let pairs: Vec<(u32, u32)> = index.iter().map(|p| (p.lo, p.hi)).collect();
        assert_eq!(
            (base, pairs.as_slice()),
            (1, &[(0, 1), (1, 3), (3, 3), (3, 4)][..])
        );
        // Every PC's row (the last at or before it) lies in its page's range.
        for pc in page..page * 5 {
            let want = rows.partition_point(|r| r.pc <= pc) as u32 - 1;
            let page = &index[((pc >> UNWIND_PAGE_SHIFT) - base) as usize];
            assert!((page.lo..=page.hi).contains(&want), "{pc:#x}");
        }
        assert_eq!(page_index(&[]), (0, Vec::new()));
    }

    #[test]
    fn ranges_laid_over_rows_rule_inside_and_give_back_after() {
        // C code at 0x100-0x140 and 0x300-0x310; Go functions 0x200-0x240 and
        // 0x240-0x280 between, and a range over a stray row at 0x2a0.
        let rows = vec![
            row(0x100, cfa_kind::RSP, 8),
            row(0x140, cfa_kind::UNKNOWN, 0),
            row(0x2a0, cfa_kind::RSP, 16),
            row(0x300, cfa_kind::RSP, 24),
            row(0x310, cfa_kind::UNKNOWN, 0),
        ];
        let go = row(0, cfa_kind::GO_FRAME_POINTER, 0);
        let ranges = [(0x200, 0x240, go), (0x240, 0x280, go), (0x290, 0x2b0, go)];
        let merged: Vec<(u32, u8, i16)> = merge_ranges(rows, &ranges)
            .iter()
            .map(|r| (r.pc, r.cfa_kind, r.cfa_off))
            .collect();
        assert_eq!(
            merged,
            [
                (0x100, cfa_kind::RSP, 8),
                (0x140, cfa_kind::UNKNOWN, 0),
                (0x200, cfa_kind::GO_FRAME_POINTER, 0),
                (0x240, cfa_kind::GO_FRAME_POINTER, 0),
                // After a range: the rule the rows had there.
                (0x280, cfa_kind::UNKNOWN, 0),
                (0x290, cfa_kind::GO_FRAME_POINTER, 0),
                (0x2b0, cfa_kind::RSP, 16),
                (0x300, cfa_kind::RSP, 24),
                (0x310, cfa_kind::UNKNOWN, 0),
            ]
        );
    }

    #[test]
    fn rules_take_their_kernel_form() {
        let row = |cfa, rbp| ehframe::Row {
            pc: 0x1_0000_1234,
            cfa,
            rbp,
        };
        assert_eq!(
            kernel_row(&row(Cfa::Rsp(16), Rbp::AtCfa(-16))),
            UnwindRow {
                pc: 0x1234,
                cfa_off: 16,
                cfa_kind: cfa_kind::RSP,
                rbp: -2
            }
        );
        assert_eq!(
            kernel_row(&row(Cfa::Rbp(16), Rbp::Same)),
            UnwindRow {
                pc: 0x1234,
                cfa_off: 16,
                cfa_kind: cfa_kind::RBP,
                rbp: RBP_SAME
            }
        );
        // Too far for the kernel's form: no rule, never a wrong one.
        assert_eq!(
            kernel_row(&row(Cfa::Rsp(70_000), Rbp::Same)).cfa_kind,
            cfa_kind::UNKNOWN
        );
        assert_eq!(
            kernel_row(&row(Cfa::Rsp(8), Rbp::AtCfa(-12))).rbp,
            RBP_UNKNOWN
        );
        assert_eq!(
            kernel_row(&row(Cfa::Outermost, Rbp::Same)).cfa_kind,
            cfa_kind::OUTERMOST
        );
    }
}
