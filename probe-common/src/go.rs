//! Go: what the kernel needs to read the current goroutine of a Go process.
//!
//! On x86-64, Go code compiled for the internal ABI keeps the current `g` in R14
//! (golang/go `src/cmd/compile/abi-internal.md`, Go 1.17+). The kernel program
//! takes R14 as a candidate `g` and accepts it only if the sampled stack pointer
//! lies within that `g`'s stack (`g.stack.lo <= sp < g.stack.hi`, offsets 0 and 8
//! in every version): R14 is an ordinary register in C and assembly code. On a
//! system stack (g0) the id is 0, "no goroutine".

/// Processes whose goroutines are read.
pub const MAX_GO_PIDS: u32 = 4096;

/// Where a Go version keeps what the kernel reads in a `g` (from the collector's
/// per-version table, `probe-user/src/go/offsets.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    /// `g.goid` (int64).
    pub goid: u32,
    /// `g.labels` (unsafe.Pointer to the goroutine's pprof labels).
    pub labels: u32,
}
const _: () = assert!(core::mem::size_of::<GoOffsets>() == 8);

#[cfg(feature = "user")]
// SAFETY: plain old data, no implicit padding.
unsafe impl aya::Pod for GoOffsets {}
