//! The kernel side's errors: what did not load, attach or open, a
//! verifier's refusal read into its cause, and the first check of all: a
//! program looked up by name and type.

use std::io;

use aya::{Ebpf, maps::MapError, programs::ProgramError};

/// The error of a program that did not load: a verifier's refusal becomes
/// [`SamplerError::Refused`] (the cause from the log's end, the whole log
/// saved to a file), anything else stays [`SamplerError::Program`].
pub(crate) fn load_failed(name: &'static str, source: ProgramError) -> SamplerError {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &source
    else {
        return SamplerError::Program { name, source };
    };
    let log = verifier_log.to_string();
    if log.trim().is_empty() {
        log::debug!("loading {name}: {io_error} with no verifier log");
        return SamplerError::Program { name, source };
    }
    let saved = match crate::kernel::verifier::save(name, &log) {
        Ok(path) => path.display().to_string(),
        Err(e) => format!("no file ({e}; RUST_LOG=debug prints it)"),
    };
    log::debug!("the verifier's log for {name}:\n{log}");
    SamplerError::Refused {
        program: name,
        release: crate::kernel::release(),
        cause: crate::kernel::verifier::cause(&log, 3),
        log: saved,
    }
}

/// Failures of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The object did not load (verifier, missing kernel feature, memory).
    #[error("cannot load crossprof's eBPF programs into the kernel: {0}")]
    Load(#[source] aya::EbpfError),
    /// The processes targets start cannot be followed on this kernel.
    #[error(
        "cannot follow the processes the targets start: {0} (--no-children records the command's own process only)"
    )]
    FollowChildren(String),
    /// A program is not in the object.
    #[error("eBPF program `{0}` is missing from crossprof's object file: rebuild crossprof")]
    MissingProgram(&'static str),
    /// The verifier refused a program: which, on which kernel, why (the
    /// log's last words), and where the whole log is.
    #[error(
        "the kernel ({release}) refused crossprof's eBPF program `{program}`: {cause}; the verifier's whole log is in {log}; please report it with that file"
    )]
    Refused {
        /// The program.
        program: &'static str,
        /// `uname -r`.
        release: String,
        /// What the verifier said last.
        cause: crate::kernel::verifier::Cause,
        /// Where the whole log was written (or why it could not be).
        log: String,
    },
    /// Loading one program failed.
    #[error("cannot load eBPF program `{name}`: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// perf_event_open or the attach failed on a CPU.
    #[error("cannot attach the CPU sampler to cpu {cpu}: {source}")]
    Attach {
        /// The CPU.
        cpu: u32,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// A map is missing or of the wrong type.
    #[error("eBPF map `{name}`: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// A uprobe on a Go runtime function could not be attached.
    #[error("cannot attach the goroutine-state probe `{name}` to {target}: {source}")]
    Uprobe {
        /// Program name.
        name: &'static str,
        /// The binary.
        target: String,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// A tracepoint could not be attached.
    #[error("cannot attach the tracepoint program `{name}`: {source}")]
    Tracepoint {
        /// Program name.
        name: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// The off-CPU programs could not be loaded or attached.
    #[error("cannot follow off-CPU time: {what}: {source}")]
    OffCpu {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// `/sys/devices/system/cpu/online` unreadable.
    #[error("cannot list the online CPUs: {0}")]
    Cpus(#[source] io::Error),
}

/// Program `name` of `ebpf` as its type `P`.
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, SamplerError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SamplerError::MissingProgram(name))?
        .try_into()
        .map_err(|source| SamplerError::Program { name, source })
}
