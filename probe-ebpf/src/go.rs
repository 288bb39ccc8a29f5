//! Go: the goroutine a sample ran on (see `probe_common::go`).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::map, maps::HashMap};
use probe_common::go::{GoOffsets, MAX_GO_PIDS};

/// Go processes, with the offsets of their Go version.
#[map]
static GO_PIDS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(MAX_GO_PIDS, 0);

/// The id and `labels` pointer of the goroutine `tgid` was running, from the
/// candidate `g` in R14 and the user stack pointer `sp`; `(0, 0)` when `tgid` is
/// not Go, R14 is not a `g` whose stack holds `sp`, or the goroutine is a system
/// stack's (g0).
#[inline(always)]
pub fn goroutine(tgid: u32, sp: u64, r14: u64) -> (u64, u64) {
    // SAFETY: the value is copied out field by field.
    let Some(offsets) = (unsafe { GO_PIDS.get(tgid) }) else {
        return (0, 0);
    };
    let (goid_off, labels_off) = (u64::from(offsets.goid), u64::from(offsets.labels));
    if r14 == 0 {
        return (0, 0);
    }
    // SAFETY: the user-read helper checks the addresses and fails on a fault.
    let (lo, hi) = unsafe {
        match (
            bpf_probe_read_user(r14 as *const u64),
            bpf_probe_read_user((r14 + 8) as *const u64),
        ) {
            (Ok(lo), Ok(hi)) => (lo, hi),
            _ => return (0, 0),
        }
    };
    if !(lo <= sp && sp < hi) {
        return (0, 0);
    }
    // SAFETY: as above.
    unsafe {
        (
            bpf_probe_read_user((r14 + goid_off) as *const u64).unwrap_or(0),
            bpf_probe_read_user((r14 + labels_off) as *const u64).unwrap_or(0),
        )
    }
}
