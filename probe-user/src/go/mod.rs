//! Go: symbolizing Go binaries from their own function table, stripped or not.
//!
//! Issue #4, first steps: [`pclntab`] names every PC of a Go binary, inlined
//! calls included, from `.gopclntab` (Go 1.18 on), which `-ldflags='-s -w'` keeps;
//! [`offsets`] tells the kernel where a Go version keeps the goroutine id, which
//! it reads from the `g` in R14 (`probe-ebpf/src/go.rs`).
//! [`labels`] reads a goroutine's pprof labels behind the `g.labels` pointer
//! the kernel sends. Not done yet: goroutine states, unwinding across the
//! runtime's stack switches.

pub mod labels;
pub mod offsets;
pub mod pclntab;
pub mod states;
