//! The goroutine-state uprobes (`--go-states`, goroutine waits): where they
//! go in a Go binary, loading and attaching their kernel programs
//! (`probe-ebpf/src/go.rs`), what they leave in the kernel, and which
//! processes of a session they follow.
//!
//! The kernel side probes function entries only, never a return: a
//! uretprobe rewrites the return address on the goroutine's stack, and Go
//! moves stacks.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    path::Path,
};

use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use probe_common::{
    go::{GKey, GoOffsets, Goroutine},
    names,
};

use super::{
    pclntab::GoTable,
    states::{Tracking, wait_reasons},
};
use crate::{
    kernel::error::{SamplerError, load_failed, program},
    native::process::ProcessTable,
};

/// The Go uprobe programs.
const GO_PROGRAMS: [&str; 4] = [
    names::GO_CASGSTATUS_PROG,
    names::GO_NEWPROC1_PROG,
    names::GO_SYSCALL_ENTER_PROG,
    names::GO_SYSCALL_EXIT_PROG,
];

/// File offsets of the functions probed in one Go binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePoints {
    /// `runtime.casgstatus`.
    pub casgstatus: u64,
    /// `runtime.newproc1` (creation sites), if found.
    pub newproc1: Option<u64>,
    /// `runtime.reentersyscall` and `runtime.exitsyscall`, on versions whose
    /// syscall fast path bypasses `casgstatus`.
    pub syscalls: Option<(u64, u64)>,
}

impl ProbePoints {
    /// Finds them in `table` (names from `.gopclntab`, so stripped binaries
    /// work too); `syscall_fast_path` from the binary's Go version.
    pub fn find(table: &GoTable, syscall_fast_path: bool) -> Result<Self, &'static str> {
        let at = |name: &str| {
            let (entry, _) = table.function(name)?;
            table.file_offset(entry)
        };
        let casgstatus = at("runtime.casgstatus").ok_or("no runtime.casgstatus")?;
        let syscalls = if syscall_fast_path {
            Some((
                at("runtime.reentersyscall").ok_or("no runtime.reentersyscall")?,
                at("runtime.exitsyscall").ok_or("no runtime.exitsyscall")?,
            ))
        } else {
            None
        };
        Ok(Self {
            casgstatus,
            newproc1: at("runtime.newproc1"),
            syscalls,
        })
    }
}

/// Loads the Go uprobe programs (verified once; attached per binary).
pub(crate) fn load(ebpf: &mut Ebpf) -> Result<(), SamplerError> {
    for name in GO_PROGRAMS {
        program::<UProbe>(ebpf, name)?
            .load()
            .map_err(|source| load_failed(name, source))?;
    }
    Ok(())
}

/// Follows the goroutine states of the Go executable `exe` (a path the
/// kernel resolves, e.g. `/proc/PID/exe`): uprobes at the entry of `points`,
/// told the binary's `g` offsets through their cookie. With a `pid`, only
/// that process hits them; without, every process running `exe` does (and
/// the programs keep only the target set's).
pub(crate) fn attach_probes(
    ebpf: &mut Ebpf,
    pid: Option<NonZeroU32>,
    exe: &Path,
    points: &ProbePoints,
    offsets: GoOffsets,
) -> Result<(), SamplerError> {
    let cookie = probe_common::go::cookie(offsets, pid.is_none());
    let scope = match pid {
        Some(pid) => UProbeScope::OneProcess(pid),
        None => UProbeScope::AllProcesses,
    };
    let mut at = vec![(names::GO_CASGSTATUS_PROG, points.casgstatus)];
    at.extend(points.newproc1.map(|o| (names::GO_NEWPROC1_PROG, o)));
    if let Some((enter, exit)) = points.syscalls {
        at.push((names::GO_SYSCALL_ENTER_PROG, enter));
        at.push((names::GO_SYSCALL_EXIT_PROG, exit));
    }
    for (name, offset) in at {
        program::<UProbe>(ebpf, name)?
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                },
                exe,
                scope,
            )
            .map_err(|source| SamplerError::Uprobe {
                name,
                target: exe.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

/// The goroutines the kernel still tracks (alive): process, `g` address,
/// record.
pub fn live_goroutines(ebpf: &Ebpf) -> Vec<(u32, u64, Goroutine)> {
    let Some(map) = ebpf.map(names::GOROUTINES) else {
        return Vec::new();
    };
    let Ok(map) = BpfHashMap::<_, GKey, Goroutine>::try_from(map) else {
        return Vec::new();
    };
    map.iter()
        .filter_map(Result::ok)
        .map(|(k, g)| (k.tgid, k.g, g))
        .collect()
}

/// `(run_count, run_time_ns)` summed over the Go uprobe programs, when
/// `kernel.bpf_stats_enabled` is 1.
pub fn program_stats(ebpf: &Ebpf) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for name in GO_PROGRAMS {
        let Some(program) = ebpf.program(name) else {
            continue;
        };
        let Ok(program): Result<&UProbe, _> = program.try_into() else {
            continue;
        };
        if let Ok(info) = program.info() {
            total.0 += info.run_count();
            total.1 += info.run_time().as_nanos() as u64;
        }
    }
    (total.0 > 0).then_some(total)
}

/// A Go executable whose state probes were attached before its process started
/// (`record -- CMD`), so that every goroutine is seen from its creation.
pub struct Preattached {
    /// The executable, canonical.
    exe: std::path::PathBuf,
    /// When the probes were attached.
    since_ns: u64,
}

/// With goroutine states followed: gives each Go process the kernel now
/// tracks (`tracked`, from `ProcessTable::poll_go`) its [`Tracking`], from the
/// probes attached before the command started (`pre`, for its executable) or
/// from probes attached now; a process whose probes could not be attached is
/// listed in `failed` with why.
pub(crate) fn follow(
    procs: &mut ProcessTable,
    ebpf: &mut Ebpf,
    tracked: Vec<(u32, probe_common::go::GoOffsets, std::sync::Arc<GoTable>)>,
    pre: Option<&Preattached>,
    failed: &mut Vec<(String, String)>,
) {
    for (pid, offsets, table) in tracked {
        let allgs = procs.go_allgs(pid, &table);
        if let Some(pre) = pre
            && let Some(p) = procs.get_mut(pid)
            && p.exe.as_deref() == pre.exe.to_str()
        {
            p.go.states = Some(tracking(&table, pre.since_ns, allgs));
            continue;
        }
        let Some(nz_pid) = std::num::NonZeroU32::new(pid) else {
            continue;
        };
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let attached = attach(ebpf, &table, Some(nz_pid), &exe, offsets);
        let Some(p) = procs.get_mut(pid) else {
            continue;
        };
        match attached {
            Ok(since_ns) => p.go.states = Some(tracking(&table, since_ns, allgs)),
            Err(why) => failed.push((format!("{} (pid {pid})", p.name), why)),
        }
    }
}

/// With `--go-states`, attaches the state probes to the command's executable
/// before it starts, if it is Go (`Ok(None)` if it is not).
pub(crate) fn preattach(
    ebpf: &mut Ebpf,
    procs: &ProcessTable,
    exe: &std::path::Path,
) -> Result<Option<Preattached>, String> {
    let Ok(exe) = exe.canonicalize() else {
        return Ok(None);
    };
    let Some(table) = procs.modules.go.get(&exe) else {
        return Ok(None);
    };
    let Some(offsets) = crate::go::layout(&table).map(|l| l.offsets) else {
        return Ok(None);
    };
    let since_ns = attach(ebpf, &table, None, &exe, offsets)?;
    Ok(Some(Preattached { exe, since_ns }))
}

/// Attaches the goroutine-state probes to the Go binary `table` was read from
/// (`exe`), for process `pid` only or for every process running it; returns
/// when they went in (CLOCK_MONOTONIC ns).
fn attach(
    ebpf: &mut Ebpf,
    table: &GoTable,
    pid: Option<std::num::NonZeroU32>,
    exe: &std::path::Path,
    offsets: probe_common::go::GoOffsets,
) -> Result<u64, String> {
    let version = table.version.as_deref().unwrap_or_default();
    let fast = crate::go::offsets::syscall_fast_path(version);
    let points =
        ProbePoints::find(table, fast).map_err(|e| format!("{e} in its function table"))?;
    let since_ns = crate::sys::monotonic_ns();
    attach_probes(ebpf, pid, exe, &points, offsets).map_err(|e| e.to_string())?;
    Ok(since_ns)
}

/// A Go process's goroutine states, followed since `since_ns`.
fn tracking(table: &GoTable, since_ns: u64, allgs: Option<u64>) -> Tracking {
    Tracking {
        since_ns,
        reasons: wait_reasons(table).unwrap_or_default(),
        allgs,
        layout: crate::go::layout(table),
        ..Default::default()
    }
}

/// At the end of a recording with goroutine states followed: every goroutine
/// of each followed process, from the process's own list (`runtime.allgs`,
/// read from its memory) and from the kernel's table, the table winning for
/// one that changes between the two reads; their time counted up to
/// `end_ns`.
pub(crate) fn collect_goroutines(procs: &mut ProcessTable, ebpf: &Ebpf, end_ns: u64) {
    // Every goroutine from the processes' own lists first, then the kernel's
    // table: one that changes between the two reads is in the table.
    let all_gs: Vec<(u32, Vec<(u64, probe_common::go::Goroutine)>)> = procs
        .iter()
        .filter_map(|p| {
            let t = p.go.states.as_ref()?;
            let all = super::states::all_goroutines(
                &std::fs::File::open(format!("/proc/{}/mem", p.pid)).ok()?,
                t.allgs?,
                t.layout.as_ref()?,
                t.since_ns,
            );
            Some((p.pid, all))
        })
        .collect();
    let mut seen: BTreeMap<u32, HashMap<u64, usize>> = BTreeMap::new();
    for (pid, g_addr, g) in live_goroutines(ebpf) {
        if let Some(t) = procs.get_mut(pid).and_then(|p| p.go.states.as_mut()) {
            seen.entry(pid).or_default().insert(g_addr, t.live.len());
            t.live.push(g);
        }
    }
    for (pid, all) in all_gs {
        if let Some(t) = procs.get_mut(pid).and_then(|p| p.go.states.as_mut()) {
            t.add_unseen(all, &seen.remove(&pid).unwrap_or_default());
        }
    }
    for p in procs.iter_mut() {
        if let Some(t) = p.go.states.as_mut() {
            t.end_ns = end_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use crossprof_tests::{Go, GoBuild};

    use super::*;

    #[test]
    fn probe_points_are_found_in_stripped_and_pie_builds() {
        for go in Go::ALL {
            for build in GoBuild::ALL {
                let what = format!("go {} {build:?}", go.version());
                let table = GoTable::parse(std::fs::read(go.fixture("chain", build)).unwrap())
                    .unwrap()
                    .unwrap();
                let fast = matches!(go, Go::Go127);
                let points =
                    ProbePoints::find(&table, fast).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(points.newproc1.is_some(), "{what}");
                assert_eq!(points.syscalls.is_some(), fast, "{what}");
                // casgstatus is //go:nosplit: its first instruction is not the
                // stack-bound check every splittable function starts with
                // (`cmp rsp, [r14+16]`: 49 3b 66 10).
                let (entry, _) = table.function("runtime.casgstatus").unwrap();
                assert_eq!(table.file_offset(entry), Some(points.casgstatus), "{what}");
                assert_ne!(
                    table.bytes(entry, 4),
                    Some(&[0x49, 0x3b, 0x66, 0x10][..]),
                    "{what}"
                );
            }
        }
    }
}
