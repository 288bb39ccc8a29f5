//! Where each Go version keeps what the kernel reads in a `g` (amd64).
//!
//! `g.goid` (golang/go `src/runtime/runtime2.go`, the `g` struct, per tag):
//! - 152 in go1.19.8, go1.20.6, go1.21.12 (and 1.22: DWARF of a go1.22.12 binary);
//! - 160 in go1.23.5 (and 1.24: DWARF of go1.24.0): `g.syscallbp` added before it;
//! - 152 again from 1.25 (`gobuf.ret` removed, CL 652276; OpenTelemetry eBPF
//!   profiler `interpreter/go/offsets.go` agrees for 1.25 and 1.26).
//!
//! `g.labels`: 360 in 1.19-1.20; 344 in 1.21-1.22 (`parentGoid` added, trace fields
//! removed); 352 in 1.23-1.24 (`syscallbp`); 344 in 1.25 (`gobuf.ret` removed); 352
//! in 1.26 (OpenTelemetry's offsets.go; `secret`/`ditWanted` added).
//!
//! `m.curg` / `g.sched.bp` / `m.gsignal`: 192/104/80 up to 1.24, 184/96/72 from
//! 1.25 (`g.m` 48 and `g.sched.pc` 64 throughout).
//!
//! `g.atomicstatus` / `g.waitreason`: 144/176 in 1.19-1.22, 152/184 in 1.23-1.24
//! (`syscallbp`), 144/176 from 1.25.
//!
//! Every figure above was checked against the DWARF of binaries built here by
//! go1.19.8 (Debian), go1.21.13, go1.23.9, go1.25.5 and go1.27.3 (gdb
//! `ptype/o struct 'runtime.g'`).
//!
//! What `g.labels` points at (`runtime/pprof/label.go`): up to 1.23 a `*labelMap`,
//! `labelMap` being a `map[string]string`; from 1.24 a `labelMap` holding a
//! `[]label{key, value string}` sorted by key (CL 574516).
//!
//! 1.27 is taken to keep 1.26's layout (checked here end to end with go1.27.3: the
//! goroutine ids the fixture prints are the ones read). A version outside the table
//! gets no goroutine data, and a note, never a guess.

use probe_common::go::GoOffsets;

/// How a Go version keeps pprof labels behind `g.labels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelLayout {
    /// `*map[string]string` (Go 1.19-1.23).
    Map,
    /// A slice of `{key, value string}` sorted by key (Go 1.24 on).
    Slice,
}

fn minor(version: &str) -> Option<u32> {
    version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The offsets for Go `version` (`go1.23.9`, as in the build info), if known.
pub fn for_version(version: &str) -> Option<GoOffsets> {
    let minor = minor(version)?;
    let (goid, labels, status, wait_reason) = match minor {
        19..=20 => (152, 360, 144, 176),
        21..=22 => (152, 344, 144, 176),
        23..=24 => (160, 352, 152, 184),
        25 => (152, 344, 144, 176),
        26..=27 => (152, 352, 144, 176),
        _ => return None,
    };
    // `gobuf.ret` went in 1.25 (CL 652276): `g.sched.bp` moved from 56 + 48 to
    // 56 + 40, and `m.curg` from 192 to 184.
    let (m_curg, sched_bp, m_gsignal) = if minor <= 24 {
        (192, 104, 80)
    } else {
        (184, 96, 72)
    };
    Some(GoOffsets {
        goid,
        labels,
        status,
        wait_reason,
        m_curg,
        sched_bp,
        m_gsignal,
        _pad: 0,
        sigtramp: [0; 2],
        cgo_sigtramp: 0,
    })
}

/// Does Go `version` change a goroutine's status around system calls without
/// `casgstatus` (a bare CAS on the fast path of `reentersyscall` and `exitsyscall`,
/// read in go1.27.3's `proc.go`; go1.25.5 still calls `casgstatus`)? Taken to
/// start with 1.26, the release that reworked syscall states.
pub fn syscall_fast_path(version: &str) -> bool {
    minor(version).is_some_and(|m| m >= 26)
}

/// Where a Go version keeps a goroutine's creation in its `g`:
/// `(parentGoid, gopc, startpc)`, read for goroutines that changed no state
/// while followed. From DWARF (gdb `ptype/o`) of go1.19.8, 1.21.13, 1.23.9,
/// 1.25.5 and 1.27.3; 1.22, 1.24 and 1.26 by the same shifts as the other fields
/// (`syscallbp` +8 in 1.23, `gobuf.ret` -8 in 1.25, +8 in 1.26). 1.19 has no
/// `parentGoid` (added in 1.21); 1.20 is not known.
pub fn creation(version: &str) -> Option<(Option<u64>, u64, u64)> {
    Some(match minor(version)? {
        19 => (None, 296, 312),
        21..=22 | 25 => (Some(272), 280, 296),
        23..=24 | 26..=27 => (Some(280), 288, 304),
        _ => return None,
    })
}

/// How Go `version` keeps its labels, if known.
pub fn label_layout(version: &str) -> Option<LabelLayout> {
    match minor(version)? {
        19..=23 => Some(LabelLayout::Map),
        24..=27 => Some(LabelLayout::Slice),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_their_layout() {
        assert_eq!(for_version("go1.19.8").map(|o| o.goid), Some(152));
        assert_eq!(for_version("go1.23.9").map(|o| o.goid), Some(160));
        assert_eq!(
            for_version("go1.24.0 X:boringcrypto").map(|o| o.goid),
            Some(160)
        );
        assert_eq!(for_version("go1.25.5").map(|o| o.goid), Some(152));
        assert_eq!(for_version("go1.27.3").map(|o| o.goid), Some(152));
        assert_eq!(
            for_version("go1.28.0"),
            None,
            "a future layout is not guessed"
        );
        assert_eq!(for_version("go1.18"), None);
        assert_eq!(for_version("devel +abc"), None);
    }
}
