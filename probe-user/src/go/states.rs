//! Goroutine states over time (`--go-states`): where the uprobes go in a Go
//! binary, the names of its wait reasons, and how a goroutine's record from the
//! kernel (`probe_common::go::Goroutine`) becomes time per state.
//!
//! The kernel side (`probe-ebpf/src/go.rs`) probes function entries only — never
//! a return: a uretprobe rewrites the return address on the goroutine's stack,
//! and Go moves stacks.

use std::collections::BTreeMap;

use probe_common::go::{Goroutine, WAIT_SLOT_FREE, slot, status};

use super::pclntab::GoTable;
use crate::summary::{GoroutineStates, GoroutineTime, SiteTime, StateTimes};

/// The binary's own names of its wait reasons, indexed by `g.waitreason`.
///
/// The numbering changes between releases (reasons were added in 1.20, 1.21,
/// 1.23 and 1.25, and 1.26 reordered them), so it is read from the binary rather
/// than from a table per version: `runtime.waitReason.String` starts with
/// `cmp al, N` (the count) and loads `runtime.waitReasonStrings` with a
/// RIP-relative `lea` (seen in go1.19.8 and go1.27.3 builds alike). The array of
/// `N` strings found there is accepted only if it reads as the runtime's:
/// entry 0 empty and entry 2 `IO wait` (`waitReasonIOWait`, 2 in every release).
pub fn wait_reasons(table: &GoTable) -> Option<Vec<String>> {
    let (entry, end) = table.function("runtime.waitReason.String")?;
    let code = table.bytes(entry, end.saturating_sub(entry).min(128) as usize)?;
    let count = code[..code.len().min(8)]
        .windows(2)
        .find(|w| w[0] == 0x3c)
        .map(|w| usize::from(w[1]))?;
    (0..code.len().saturating_sub(6)).find_map(|i| {
        // lea r64, [rip + disp32]: REX.W (48 or 4c), 8d, ModRM with mod 00 rm 101.
        let is_lea = matches!(code[i], 0x48 | 0x4c) && code[i + 1] == 0x8d;
        if !is_lea || code[i + 2] & 0xc7 != 0x05 {
            return None;
        }
        let disp = i32::from_le_bytes(code[i + 3..i + 7].try_into().ok()?);
        let target = (entry + i as u64 + 7).checked_add_signed(i64::from(disp))?;
        string_array(table, target, count)
    })
}

/// `n` Go strings (`{ptr, len}`) at `at`, if they read as wait reasons.
fn string_array(table: &GoTable, at: u64, n: usize) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let header = at + 16 * i;
        let len = u64::from_le_bytes(table.bytes(header + 8, 8)?.try_into().ok()?);
        if len > 64 {
            return None;
        }
        let text = if len == 0 {
            String::new()
        } else {
            let bytes = table.bytes(table.pointer(header)?, len as usize)?;
            let text = std::str::from_utf8(bytes).ok()?;
            if !text.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return None;
            }
            text.to_owned()
        };
        out.push(text);
    }
    (out.first().is_some_and(String::is_empty) && out.get(2).is_some_and(|s| s == "IO wait"))
        .then_some(out)
}

/// Where a wait reason's time goes when its number has no name.
pub fn reason_name(reasons: &[String], reason: u32) -> String {
    match reasons.get(reason as usize) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("wait reason {reason}"),
    }
}

/// Where `runtime.allgs` (the slice of every `g`) is, as a virtual address of
/// the binary: `runtime.forEachG` loads its pointer and its length with two
/// RIP-relative `mov`s 8 bytes apart (`48 8b 0d`, `48 8b 15`: seen alike in
/// go1.19.8 and go1.27.3 builds). The data symbol itself is gone from stripped
/// binaries; what is found is checked against the process's memory before use.
pub fn allgs_address(table: &GoTable) -> Option<u64> {
    let (entry, end) = table.function("runtime.forEachG")?;
    let code = table.bytes(entry, end.saturating_sub(entry).min(128) as usize)?;
    let rip_mov = |i: usize| -> Option<u64> {
        let w = code.get(i..i + 7)?;
        if w[0] != 0x48 || w[1] != 0x8b || w[2] & 0xc7 != 0x05 {
            return None;
        }
        let disp = i32::from_le_bytes(w[3..7].try_into().ok()?);
        (entry + i as u64 + 7).checked_add_signed(i64::from(disp))
    };
    (0..code.len()).find_map(|i| {
        let first = rip_mov(i)?;
        // The next instruction stores the pointer (4 or 5 bytes), then the length.
        (i + 7..i + 16).find_map(|j| (rip_mov(j)? == first + 8).then_some(first))
    })
}

/// The most of a `g` read (its layout's largest offset, from DWARF, is taken
/// as said only below this).
const MAX_G_BYTES: u64 = 64 * 1024;

/// One goroutine as read from its `g` in the process's memory.
#[derive(Clone, Copy, Debug)]
pub struct GoroutineRead {
    /// `g.goid`.
    pub goid: u64,
    /// `g.atomicstatus` (see [`status`]).
    pub status: u32,
    /// `g.waitreason` (its number).
    pub wait_reason: u32,
    /// Who made it and where it started.
    pub creation: probe_common::go::Creation,
}

/// Every goroutine of process `pid` that is not dead, read from its memory
/// (read-only, `mem`: its `/proc/PID/mem`) through `runtime.allgs` (at
/// `allgs`, an address in the process),
/// as `(g address, record)`: a record whose current status began at `since_ns`.
/// Those the kernel never saw change (see `Tracking::add_unseen`) have been in
/// that status since tracking began.
pub fn all_goroutines(
    mem: &std::fs::File,
    allgs: u64,
    layout: &super::dwarf::Layout,
    since_ns: u64,
) -> Vec<(u64, Goroutine)> {
    let mut out = Vec::new();
    each_goroutine(mem, allgs, layout, |g, read| {
        out.push((
            g,
            Goroutine {
                goid: read.goid,
                creation: read.creation,
                since_ns,
                status: read.status,
                wait_reason: read.wait_reason,
                first_ns: 0,
                first_status: 0,
                first_reason: 0,
                ns: [0; slot::COUNT],
                wait_reasons: [WAIT_SLOT_FREE; probe_common::go::WAIT_SLOTS],
                _pad: [0; 2],
                wait_ns: [0; probe_common::go::WAIT_SLOTS],
                wait_other_ns: 0,
                changes: 0,
            },
        ));
    });
    out
}

/// Hands `f` every goroutine of the process that is not dead, read from its
/// memory (`mem`) through `runtime.allgs` (at `allgs`), with its `g`'s
/// address; `g`s in address order. Returns how many were handed.
pub fn each_goroutine(
    mem: &std::fs::File,
    allgs: u64,
    layout: &super::dwarf::Layout,
    mut f: impl FnMut(u64, GoroutineRead),
) -> usize {
    use crate::procmem::Memory as _;
    let (offsets, Some((parent, gopc, startpc))) = (layout.offsets, layout.creation) else {
        return 0;
    };
    let (Some(ptr), Some(len), Some(cap)) =
        (mem.u64(allgs), mem.u64(allgs + 8), mem.u64(allgs + 16))
    else {
        return 0;
    };
    // Not a slice of a sane size: the decoded address was wrong; say nothing.
    if len == 0 || len > cap || cap > 10_000_000 {
        return 0;
    }
    let Some(buf) = mem.bytes(ptr, 8 * len as usize) else {
        return 0;
    };
    // Offsets come from the binary's DWARF: a `g` is a few hundred bytes.
    if startpc > MAX_G_BYTES {
        return 0;
    }
    let mut gs: Vec<u64> = buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .filter(|&g| g != 0)
        .collect();
    gs.sort_unstable();
    gs.dedup();
    // Neighbouring `g`s in one read (the runtime allocates them side by
    // side): a read per `g` made a round over 10,000 goroutines take 23 ms,
    // a quarter of a core at 10 Hz.
    let need = startpc as usize + 8;
    let wants: Vec<(u64, usize)> = gs.iter().map(|&g| (g, need)).collect();
    let mut handed = 0;
    crate::procmem::each_batched(mem, &wants, |k, g_bytes| {
        let (g, Some(g_bytes)) = (wants[k].0, g_bytes) else {
            return;
        };
        // A field the DWARF places outside what was read reads as 0.
        let at = |off: u64, n: usize| -> u64 {
            let mut w = [0u8; 8];
            let field = usize::try_from(off)
                .ok()
                .and_then(|o| g_bytes.get(o..o.checked_add(n)?));
            if let Some(b) = field {
                w[..n].copy_from_slice(b);
            }
            u64::from_le_bytes(w)
        };
        let status = at(u64::from(offsets.status), 4) as u32;
        if !matches!(
            status,
            status::RUNNABLE | status::RUNNING | status::SYSCALL | status::WAITING
        ) {
            return;
        }
        handed += 1;
        f(
            g,
            GoroutineRead {
                goid: at(u64::from(offsets.goid), 8),
                status,
                wait_reason: at(u64::from(offsets.wait_reason), 1) as u32,
                creation: probe_common::go::Creation {
                    parent_goid: parent.map_or(0, |p| at(p, 8)),
                    create_pc: at(gopc, 8),
                    start_pc: at(startpc, 8),
                },
            },
        );
    });
    handed
}

/// One process's goroutine states, as followed.
#[derive(Debug, Default)]
pub struct Tracking {
    /// `runtime.allgs` in the process, if found (see [`allgs_address`]).
    pub allgs: Option<u64>,
    /// The binary's goroutine layout.
    pub layout: Option<super::dwarf::Layout>,
    /// When its probes were attached (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
    /// Its wait-reason names ([`wait_reasons`]; empty if unreadable).
    pub reasons: Vec<String>,
    /// Goroutines that ended.
    pub ended: Vec<Goroutine>,
    /// Goroutines alive at the end, and when the end was.
    pub live: Vec<Goroutine>,
    /// When the recording ended.
    pub end_ns: u64,
}

impl Tracking {
    /// Adds the goroutines of `all` (read through `runtime.allgs` just before
    /// the kernel's table was read) that the kernel never saw change: not in
    /// `seen` (the `g` addresses it tracked, with their index in `live`). They
    /// count as live, in their status since tracking began. A tracked goroutine
    /// created before tracking began gets its creation from there.
    pub fn add_unseen(
        &mut self,
        all: Vec<(u64, Goroutine)>,
        seen: &std::collections::HashMap<u64, usize>,
    ) {
        for (g, record) in all {
            match seen.get(&g).and_then(|&i| self.live.get_mut(i)) {
                Some(live) if live.creation.create_pc == 0 && live.goid == record.goid => {
                    live.creation = record.creation;
                }
                Some(_) => {}
                None => self.live.push(record),
            }
        }
    }
}

/// Wait-reason key of the time beyond the kernel's per-goroutine reason slots.
pub const OTHER_REASONS: u32 = u32::MAX;

/// A goroutine's time per state, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Per [`slot`].
    pub ns: [u64; slot::COUNT],
    /// Waiting, per wait reason ([`OTHER_REASONS`]: reasons beyond the slots).
    pub waiting: BTreeMap<u32, u64>,
}

impl Split {
    /// Adds `other` into this one.
    pub fn add(&mut self, other: &Split) {
        for (a, b) in self.ns.iter_mut().zip(other.ns) {
            *a += b;
        }
        for (&reason, &ns) in &other.waiting {
            *self.waiting.entry(reason).or_default() += ns;
        }
    }

    /// All of it.
    pub fn total(&self) -> u64 {
        self.ns.iter().sum::<u64>() + self.waiting.values().sum::<u64>()
    }

    /// Counts `ns` in goroutine status `status` (waiting: for `reason`).
    pub fn add_status(&mut self, status: u32, reason: u32, ns: u64) {
        let s = match status {
            status::WAITING => {
                *self.waiting.entry(reason).or_default() += ns;
                return;
            }
            status::RUNNING => slot::RUNNING,
            status::RUNNABLE => slot::RUNNABLE,
            status::SYSCALL => slot::SYSCALL,
            _ => slot::OTHER,
        };
        self.ns[s] += ns;
    }
}

/// The time per state of goroutine record `g`. `tracked_since_ns` is when its
/// process's probes were attached: a goroutine first seen leaving a status had
/// been in it at least since then. `open_until_ns` closes the current status of
/// a goroutine still alive at the end (`None` for one that ended: the kernel
/// closed it).
pub fn split(g: &Goroutine, tracked_since_ns: u64, open_until_ns: Option<u64>) -> Split {
    let mut out = Split {
        ns: g.ns,
        waiting: BTreeMap::new(),
    };
    for (&reason, &ns) in g.wait_reasons.iter().zip(&g.wait_ns) {
        if reason != WAIT_SLOT_FREE {
            *out.waiting.entry(u32::from(reason)).or_default() += ns;
        }
    }
    if g.wait_other_ns > 0 {
        *out.waiting.entry(OTHER_REASONS).or_default() += g.wait_other_ns;
    }
    if g.first_ns != 0 {
        let before = g.first_ns.saturating_sub(tracked_since_ns);
        out.add_status(g.first_status, g.first_reason, before);
    }
    if let Some(end) = open_until_ns
        && g.status != status::DEAD
    {
        out.add_status(g.status, g.wait_reason, end.saturating_sub(g.since_ns));
    }
    out
}

/// Goroutines listed one by one in the summary at most; beyond, per site only.
pub const MAX_LISTED: usize = 200;

/// One goroutine's time, before its functions are named.
pub struct Row<'a> {
    /// Its id.
    pub goid: u64,
    /// Where it was created.
    pub creation: &'a probe_common::go::Creation,
    /// It ended while recording.
    pub ended: bool,
    /// Its time per state.
    pub split: Split,
}

/// The summary of one process's goroutine states, followed. `name(addr,
/// leaf)` names a code address of the process; `start(addr)` the function a
/// goroutine starting there runs.
pub fn summarize(
    tracking: &Tracking,
    name: impl Fn(u64, bool) -> Option<String>,
    start: impl Fn(u64) -> Option<String>,
) -> GoroutineStates {
    let rows = tracking
        .ended
        .iter()
        .map(|g| (g, None))
        .chain(tracking.live.iter().map(|g| (g, Some(tracking.end_ns))))
        .map(|(g, open)| Row {
            goid: g.goid,
            creation: &g.creation,
            ended: open.is_none(),
            split: split(g, tracking.since_ns, open),
        })
        .collect();
    summarize_rows(rows, &tracking.reasons, name, start)
}

/// The summary of goroutines `rows`, their wait reasons named by `reasons`
/// (see [`summarize`] for `name` and `start`).
pub fn summarize_rows(
    rows: Vec<Row<'_>>,
    reasons: &[String],
    name: impl Fn(u64, bool) -> Option<String>,
    start: impl Fn(u64) -> Option<String>,
) -> GoroutineStates {
    let unknown = || "[unknown]".to_owned();
    let ended = rows.iter().filter(|r| r.ended).count();
    let mut rows: Vec<(GoroutineTime, Split)> = rows
        .into_iter()
        .map(|r| {
            let c = r.creation;
            let function = (c.start_pc != 0)
                .then(|| start(c.start_pc))
                .flatten()
                .unwrap_or_else(unknown);
            let created_by = (c.create_pc != 0)
                .then(|| name(c.create_pc, false))
                .flatten()
                .unwrap_or_else(unknown);
            let row = GoroutineTime {
                goid: r.goid,
                parent_goid: c.parent_goid,
                function,
                created_by,
                ended: r.ended,
                time: times(&r.split, reasons),
            };
            (row, r.split)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.goid.cmp(&b.0.goid)));
    let mut sites: BTreeMap<(String, String), (u64, Split)> = BTreeMap::new();
    for (row, split) in &rows {
        let site = sites
            .entry((row.function.clone(), row.created_by.clone()))
            .or_default();
        site.0 += 1;
        site.1.add(split);
    }
    let mut by_site: Vec<(SiteTime, u64)> = sites
        .into_iter()
        .map(|((function, created_by), (n, split))| {
            let site = SiteTime {
                function,
                created_by,
                goroutines: n,
                time: times(&split, reasons),
            };
            (site, split.total())
        })
        .collect();
    by_site.sort_by_key(|s| std::cmp::Reverse(s.1));
    GoroutineStates {
        seen: rows.len(),
        ended,
        by_goroutine: if rows.len() <= MAX_LISTED {
            rows.into_iter().map(|(row, _)| row).collect()
        } else {
            Vec::new()
        },
        by_site: by_site.into_iter().map(|(site, _)| site).collect(),
        sampled: None,
    }
}

/// Goroutines a [`Sampling`] keeps one by one at most; beyond, a goroutine
/// seen once is not kept (its time is lost, and counted: see
/// [`Sampling::missed`]).
pub const MAX_SAMPLED: usize = 100_000;

/// The most of one core a process's state sampling takes: a process with
/// more goroutines than its rounds can read in that share at the asked rate
/// (~0.1 µs a goroutine: 10,000 goroutines take ~1-5 ms a round) is read
/// less often. The target runs nothing for the sampling; this bounds what
/// the collector's reads can take from it (the goal: ≤ 0.5%).
pub const MAX_CORE_SHARE: f64 = 0.005;

/// Goroutine states sampled (`--go-state-sampling HZ`): every goroutine's
/// status and wait reason read from the process's memory through
/// `runtime.allgs` at a fixed rate, each reading counting one period of its
/// state. No probe, nothing in the target's way (read-only reads of its
/// memory, a few hundred bytes per goroutine per period): the always-on
/// view, where `--go-states` times every change exactly at a cost per change.
#[derive(Debug)]
pub struct Sampling {
    /// `runtime.allgs` in the process.
    allgs: u64,
    /// Its memory (`/proc/PID/mem`), opened once: every round reads through
    /// it, and none can read another process that took the pid.
    mem: std::fs::File,
    /// The binary's goroutine layout.
    layout: super::dwarf::Layout,
    /// Its wait-reason names ([`wait_reasons`]; empty if unreadable).
    pub reasons: Vec<String>,
    /// Readings per second.
    hz: u64,
    /// Its process exited: no more rounds.
    stopped: bool,
    /// Rounds taken.
    pub rounds: u64,
    /// Rounds that read no goroutine (the process exiting, or its memory
    /// unreadable).
    pub empty_rounds: u64,
    /// Goroutine readings not kept ([`MAX_SAMPLED`] reached).
    pub missed: u64,
    /// The collector's CPU time in rounds, reading and counting (the target
    /// runs nothing for it).
    read_ns: u64,
    /// Calls passed over: the rounds kept under [`MAX_CORE_SHARE`] of a core.
    pub deferred: u64,
    /// The gap the last round's time asks for (at least the period).
    spacing_ns: u64,
    /// No round before this (`None`: at every call).
    next_due: Option<std::time::Instant>,
    /// When the last round was taken.
    last: Option<std::time::Instant>,
    /// Every goroutine's time summed, since [`Sampling::new_window`] (the
    /// agent's window).
    window: Split,
    /// Per goroutine (its `g` and id: a `g` is reused once its goroutine
    /// ends), what it was seen doing.
    gs: std::collections::HashMap<(u64, u64), Sampled>,
}

/// One goroutine as sampled.
#[derive(Debug)]
struct Sampled {
    creation: probe_common::go::Creation,
    split: Split,
    /// The last round it was seen in.
    last_round: u64,
}

impl Sampling {
    /// Samples the goroutines of a process whose `runtime.allgs` is at
    /// `allgs` and whose `g` has `layout` (`None` when crossprof cannot
    /// read them: no layout with the creation fields, no `allgs`).
    /// `hz` times a second (`mem`: its `/proc/PID/mem`).
    pub fn new(
        mem: Option<std::fs::File>,
        allgs: Option<u64>,
        layout: Option<super::dwarf::Layout>,
        reasons: Vec<String>,
        hz: u64,
    ) -> Option<Self> {
        let layout = layout.filter(|l| l.creation.is_some())?;
        Some(Sampling {
            allgs: allgs?,
            mem: mem?,
            layout,
            reasons,
            hz,
            stopped: false,
            rounds: 0,
            empty_rounds: 0,
            missed: 0,
            read_ns: 0,
            deferred: 0,
            spacing_ns: 0,
            next_due: None,
            last: None,
            window: Split::default(),
            gs: std::collections::HashMap::new(),
        })
    }

    /// One round: every goroutine of the process read, each counted in
    /// the state it is in for the time since the last round (rounds are
    /// `period_ns` apart, or later when the collector was busy: at most two
    /// periods are counted, the rest of a longer gap was not seen). A
    /// process whose rounds would take more than [`MAX_CORE_SHARE`] of a
    /// core at this period is read less often: the call is passed over
    /// (counted in `deferred`) until its spacing is due.
    pub fn sample(&mut self, period_ns: u64) {
        if self.stopped {
            return;
        }
        let started = std::time::Instant::now();
        if self.next_due.is_some_and(|due| started < due) {
            self.deferred += 1;
            return;
        }
        self.rounds += 1;
        let cpu_started = crate::sys::thread_cpu_ns();
        let spacing = self.spacing_ns.max(period_ns);
        let since = self
            .last
            .map_or(spacing, |last| (started - last).as_nanos() as u64);
        self.last = Some(started);
        let counted_ns = since.min(2 * spacing);
        let (window, gs, missed, round) = (
            &mut self.window,
            &mut self.gs,
            &mut self.missed,
            self.rounds,
        );
        let read = each_goroutine(&self.mem, self.allgs, &self.layout, |g, record| {
            window.add_status(record.status, record.wait_reason, counted_ns);
            let full = gs.len() >= MAX_SAMPLED;
            let seen = match gs.entry((g, record.goid)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(_) if full => {
                    *missed += 1;
                    return;
                }
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Sampled {
                    creation: record.creation,
                    split: Split::default(),
                    last_round: 0,
                }),
            };
            seen.split
                .add_status(record.status, record.wait_reason, counted_ns);
            seen.last_round = round;
        });
        if read == 0 {
            self.empty_rounds += 1;
        }
        let took = crate::sys::thread_cpu_ns().saturating_sub(cpu_started);
        self.read_ns += took;
        // The next round once this one's CPU time is MAX_CORE_SHARE of the
        // gap (at the period's tick closest after it: half a period early).
        self.spacing_ns = ((took as f64 / MAX_CORE_SHARE) as u64).max(period_ns);
        self.next_due = (self.spacing_ns > period_ns)
            .then(|| started + std::time::Duration::from_nanos(self.spacing_ns - period_ns / 2));
    }

    /// Every goroutine's time summed since the last
    /// [`Sampling::new_window`] (none read: `None`).
    pub fn window_times(&self) -> Option<StateTimes> {
        (self.window.total() > 0).then(|| times(&self.window, &self.reasons))
    }

    /// Starts the sums of [`Sampling::window_times`] again.
    pub fn new_window(&mut self) {
        self.window = Split::default();
    }

    /// Its process exited: no more rounds.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The summary of what was sampled (see [`summarize`] for `name` and
    /// `start`). A goroutine missing from the last round ended.
    pub fn summarize(
        &self,
        name: impl Fn(u64, bool) -> Option<String>,
        start: impl Fn(u64) -> Option<String>,
    ) -> GoroutineStates {
        let rows = self
            .gs
            .iter()
            .map(|(&(_, goid), s)| Row {
                goid,
                creation: &s.creation,
                ended: s.last_round < self.rounds,
                split: s.split.clone(),
            })
            .collect();
        GoroutineStates {
            sampled: Some(crate::summary::SampledStates {
                hz: self.hz,
                rounds: self.rounds,
                empty_rounds: self.empty_rounds,
                missed: self.missed,
                deferred: self.deferred,
                round_us: self.read_ns as f64 / 1e3 / self.rounds.max(1) as f64,
            }),
            ..summarize_rows(rows, &self.reasons, name, start)
        }
    }
}

fn times(split: &Split, reasons: &[String]) -> StateTimes {
    let ms = |ns: u64| ns as f64 / 1e6;
    StateTimes {
        running_ms: ms(split.ns[slot::RUNNING]),
        runnable_ms: ms(split.ns[slot::RUNNABLE]),
        syscall_ms: ms(split.ns[slot::SYSCALL]),
        waiting_ms: split
            .waiting
            .iter()
            .filter(|&(_, &ns)| ns > 0)
            .map(|(&reason, &ns)| {
                let name = if reason == OTHER_REASONS {
                    "other reasons".to_owned()
                } else {
                    reason_name(reasons, reason)
                };
                (name, ms(ns))
            })
            .collect(),
        other_ms: ms(split.ns[slot::OTHER]),
        unobserved_ms: ms(split.ns[slot::UNOBSERVED]),
    }
}

/// The frame `--group-by state` gives a sample.
pub(crate) fn status_text(goid: u64, status: u32) -> &'static str {
    use probe_common::go::status;
    match (goid, status) {
        (0, _) => "[no goroutine]",
        (_, status::RUNNING) => "[running]",
        (_, status::SYSCALL) => "[syscall]",
        (_, status::RUNNABLE) => "[runnable]",
        (_, status::WAITING) => "[waiting]",
        _ => "[other state]",
    }
}

#[cfg(test)]
mod tests {
    use crossprof_tests::{Go, GoBuild};
    use probe_common::go::{Creation, WAIT_SLOTS};

    use super::*;

    fn record() -> Goroutine {
        Goroutine {
            goid: 7,
            creation: Creation {
                parent_goid: 1,
                create_pc: 0x401000,
                start_pc: 0x402000,
            },
            since_ns: 5_000,
            status: status::WAITING,
            wait_reason: 19,
            first_ns: 0,
            first_status: 0,
            first_reason: 0,
            ns: [100, 20, 3, 0, 0],
            wait_reasons: [
                19,
                2,
                WAIT_SLOT_FREE,
                WAIT_SLOT_FREE,
                WAIT_SLOT_FREE,
                WAIT_SLOT_FREE,
            ],
            _pad: [0; 2],
            wait_ns: [400, 50, 0, 0, 0, 0],
            wait_other_ns: 9,
            changes: 12,
        }
    }

    #[test]
    fn a_live_goroutine_keeps_its_open_state_until_the_end() {
        let s = split(&record(), 0, Some(6_000));
        assert_eq!(s.ns, [100, 20, 3, 0, 0]);
        // 400 closed waits for reason 19, plus the open one: 6000 - 5000.
        assert_eq!(s.waiting.get(&19), Some(&1_400));
        assert_eq!(s.waiting.get(&2), Some(&50));
        assert_eq!(s.waiting.get(&OTHER_REASONS), Some(&9));
        assert_eq!(s.total(), 100 + 20 + 3 + 1_400 + 50 + 9);
        assert_eq!(WAIT_SLOTS, 6);
    }

    #[test]
    fn an_ended_goroutine_is_taken_as_the_kernel_closed_it() {
        let mut g = record();
        g.status = status::DEAD;
        assert_eq!(split(&g, 0, Some(1_000_000)).waiting.get(&19), Some(&400));
    }

    #[test]
    fn time_before_the_first_change_counts_from_when_tracking_began() {
        let mut g = record();
        g.first_ns = 3_000;
        g.first_status = status::SYSCALL;
        let s = split(&g, 1_000, None);
        assert_eq!(s.ns[slot::SYSCALL], 3 + 2_000);
        g.first_status = status::WAITING;
        g.first_reason = 14;
        // A goroutine first seen after tracking began was seen from its start.
        assert_eq!(split(&g, 4_000, None).waiting.get(&14), Some(&0));
        assert_eq!(split(&g, 1_000, None).waiting.get(&14), Some(&2_000));
    }

    #[test]
    fn reason_names_fall_back_to_numbers() {
        let reasons = vec![String::new(), "GC assist marking".into(), "IO wait".into()];
        assert_eq!(reason_name(&reasons, 2), "IO wait");
        assert_eq!(reason_name(&reasons, 0), "wait reason 0");
        assert_eq!(reason_name(&reasons, 40), "wait reason 40");
    }

    /// The names and numbering of each release, read off its own binary, agree
    /// with its `runtime2.go` (indices from the `waitReason` constants there).
    #[test]
    fn wait_reasons_are_read_from_every_version_and_build() {
        for go in Go::ALL {
            for build in GoBuild::ALL {
                let what = format!("go {} {build:?}", go.version());
                let bin = go.fixture("chain", build);
                let table = GoTable::parse(std::fs::read(&bin).unwrap())
                    .unwrap()
                    .unwrap();
                let reasons = wait_reasons(&table).unwrap_or_else(|| panic!("{what}"));
                let index = |name: &str| reasons.iter().position(|r| r == name);
                let (count, chan_receive, sleep, mutex) = match go {
                    Go::Go119 => (27, 14, 19, None),
                    Go::Go121 => (32, 14, 19, Some(21)),
                    Go::Go123 => (38, 14, 19, Some(21)),
                    Go::Go125 => (47, 14, 20, Some(22)),
                    Go::Go127 => (47, 19, 14, Some(22)),
                };
                assert_eq!(reasons.len(), count, "{what}: {reasons:?}");
                assert_eq!(index("chan receive"), Some(chan_receive), "{what}");
                assert_eq!(index("sleep"), Some(sleep), "{what}");
                assert_eq!(index("sync.Mutex.Lock"), mutex, "{what}");
                assert_eq!(index("IO wait"), Some(2), "{what}");
            }
        }
    }

    /// `runtime.allgs` is found in every build, and where the normal build's
    /// symbol table says it is (stripped builds lay data out a little apart; the
    /// end-to-end tests read them).
    #[test]
    fn allgs_is_found_in_every_version_and_build() {
        for go in Go::ALL {
            let mut found = Vec::new();
            for build in [GoBuild::Normal, GoBuild::Stripped, GoBuild::Pie] {
                let what = format!("go {} {build:?}", go.version());
                let table = GoTable::parse(std::fs::read(go.fixture("chain", build)).unwrap())
                    .unwrap()
                    .unwrap();
                let at = allgs_address(&table).unwrap_or_else(|| panic!("{what}"));
                found.push(at);
            }
            // The normal build still names it: `go tool nm` agrees.
            let nm = std::process::Command::new(go.go())
                .args(["tool", "nm"])
                .arg(go.fixture("chain", GoBuild::Normal))
                .output()
                .unwrap();
            let symbol = String::from_utf8_lossy(&nm.stdout)
                .lines()
                .find(|l| l.ends_with(" runtime.allgs"))
                .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok());
            assert_eq!(Some(found[0]), symbol, "go {}", go.version());
        }
    }
}
