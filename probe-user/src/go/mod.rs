//! Go: symbolizing Go binaries from their own function table, stripped or not.
//!
//! First step of issue #4: [`pclntab`] names every PC of a Go binary, inlined
//! calls included, from `.gopclntab` (Go 1.18 on), which `-ldflags='-s -w'` keeps.
//! Not done yet: goroutine identity, labels and states, unwinding across the
//! runtime's stack switches.

pub mod pclntab;
