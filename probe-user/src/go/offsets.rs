//! Where each Go version keeps what the kernel reads in a `g` (amd64).
//!
//! `g.goid` (golang/go `src/runtime/runtime2.go`, the `g` struct, per tag):
//! - 152 in go1.19.8, go1.20.6, go1.21.12 (and 1.22: DWARF of a go1.22.12 binary);
//! - 160 in go1.23.5 (and 1.24: DWARF of go1.24.0): `g.syscallbp` added before it;
//! - 152 again from 1.25 (`gobuf.ret` removed, CL 652276; OpenTelemetry eBPF
//!   profiler `interpreter/go/offsets.go` agrees for 1.25 and 1.26).
//!
//! 1.27 is taken to keep 1.26's layout (checked here end to end with go1.27.3: the
//! goroutine ids the fixture prints are the ones read). A version outside the table
//! gets no goroutine data, and a note, never a guess.

use probe_common::go::GoOffsets;

/// The offsets for Go `version` (`go1.23.9`, as in the build info), if known.
pub fn for_version(version: &str) -> Option<GoOffsets> {
    let minor: u32 = version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let goid = match minor {
        19..=22 => 152,
        23..=24 => 160,
        25..=27 => 152,
        _ => return None,
    };
    Some(GoOffsets { goid, pad: 0 })
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
