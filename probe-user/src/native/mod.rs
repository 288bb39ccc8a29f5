//! Native code: ELF objects mapped into processes, unwound in the
//! kernel program (`probe-ebpf/src/native.rs`: by frame pointers, or by
//! `.eh_frame` rules the collector reads), and the kernel itself.
//!
//! - [`debuginfod`] fetches debug files by build id (`--debuginfod`);
//! - [`elf`] reads section and segment headers, for tables symbolizers do not read;
//! - [`ehframe`] reads `.eh_frame` call-frame information, for unwinding code
//!   without frame pointers (issue #5);
//! - [`maps`] parses `/proc/PID/maps`;
//! - [`loader`] lists the objects a program will load, before it runs;
//! - [`process`] captures a process when it is first seen (name, exe, executable
//!   mappings, an open handle on each mapped file) and turns its addresses into
//!   [`FrameRef`](crate::frame::FrameRef)s that outlive it;
//! - [`unwind`] gives the kernel those rules, per object and per process;
//! - [`symbols`] names ELF file offsets with blazesym and kernel addresses from
//!   kallsyms.

pub mod debuginfod;
pub mod ehframe;
pub mod elf;
pub mod kallsyms;
pub mod loader;
pub mod maps;
pub mod modules;
pub mod process;
pub mod rules;
pub mod symbols;
pub mod unwind;
