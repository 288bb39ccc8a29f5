//! crossprof's collector: it loads the kernel programs, reads their records off the
//! ring buffer and turns them into mixed-runtime flamegraphs.
//!
//! The pipeline, one module a stage, reads top to bottom:
//!
//! ```text
//! sampler (load + attach) -> ring buffer -> decode -> process (maps at first sight)
//!   -> aggregate (interned stacks) -> symbolize (own thread, long-lived caches)
//!   -> fold -> render (SVG) / summary
//! ```
//!
//! [`record`] drives it. Runtime-specific code lives in one module per runtime,
//! mirrored in `probe-common` and `probe-ebpf`: [`native`], [`dotnet`] (names from
//! the runtime's maps and assemblies, its stack walk, GC events) and [`go`]
//! (names from `.gopclntab`) so far. [`kinds`] says whose code each frame is
//! (kernel, managed .NET, Go, native, or glue between runtimes) and where a
//! stack crosses runtimes: fold marks the crossings, render colours by kind.
#![deny(missing_docs)]

pub mod agent;
pub mod aggregate;
pub mod check;
pub mod cli;
pub mod containers;
pub mod crash;
pub mod decode;
pub mod diff;
pub mod dotnet;
pub mod error;
pub mod files;
pub mod fold;
pub mod frame;
pub mod fuzz;
pub mod go;
pub mod http;
pub mod kernel;
pub mod kinds;
pub mod le;
pub mod native;
pub mod offcpu;
pub mod otlp;
pub mod pprof;
pub mod preflight;
pub mod process;
pub mod procmem;
pub mod pyroscope;
pub mod record;
pub mod render;
pub mod replay;
pub mod roots;
pub mod runtime;
pub mod sampler;
pub mod session;
pub mod speedscope;
pub mod status;
pub mod summary;
pub mod symbolize;
pub mod sys;
pub mod timeline;
pub mod worker;
