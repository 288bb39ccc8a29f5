//! Errors. [`UsageError`]s are the user's to fix (exit status 2); anything else is
//! crossprof's or the system's (exit status 1).

use std::{io, path::PathBuf};

/// Bad input: each message says what was wrong and what to do, on one line.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// `--debuginfod` without usable servers.
    #[error("{0}")]
    Debuginfod(#[from] crate::native::debuginfod::DebuginfodError),
    /// Neither root nor CAP_BPF + CAP_PERFMON.
    #[error(
        "crossprof needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load eBPF programs: run it with sudo"
    )]
    NotPrivileged,
    /// The kernel lacks what the run needs.
    #[error("{0}")]
    Kernel(crate::kernel::Refusal),
    /// A `--pid` that does not exist.
    #[error("--pid {0}: no process has that id: check it with `ps -p {0}`")]
    NoSuchPid(u32),
    /// A `--pid` that exited while crossprof attached.
    #[error(
        "process {0} exited before crossprof attached to it: start the recording while it runs"
    )]
    PidExited(u32),
    /// The command after `--` cannot be started.
    #[error("cannot start `{command}`: {reason}: check the command name and its PATH")]
    Spawn {
        /// The command as given.
        command: String,
        /// Why.
        reason: String,
    },
    /// The output folder cannot be created or written.
    #[error("cannot write to output folder {}: {source}: pick a writable folder with -o DIR", path.display())]
    OutputDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `--freq` out of range.
    #[error(
        "--freq {freq} is out of range: use 1 to {max} Hz (the kernel's perf_event_max_sample_rate)"
    )]
    Frequency {
        /// What was asked.
        freq: u64,
        /// The kernel's limit.
        max: u64,
    },
    /// A `--debug-dir` that cannot be listed.
    #[error(
        "--debug-dir {} is not a readable folder: give a folder that holds debug files, e.g. --debug-dir /usr/lib/debug",
        .0.display()
    )]
    DebugDir(PathBuf),
    /// `--duration` is not a positive number of seconds.
    #[error("--duration {0} is not a positive number of seconds: use e.g. --duration 10")]
    Duration(f64),
    /// `--duration` too long for the clock.
    #[error(
        "--duration {0} is longer than a hundred years: give a shorter one, or none to record until the command exits or Ctrl-C"
    )]
    DurationTooLong(f64),
    /// `--kernel-waits` without off-CPU spans to give them to.
    #[error("--kernel-waits needs off-CPU spans: add --mode offcpu or --mode wall")]
    KernelWaits,
    /// A profile `diff` cannot read.
    #[error("{}: {why}: give a folded stacks file (profile.folded) or a pprof profile (profile.pb.gz)", path.display())]
    Profile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A `--comm` name the kernel cannot hold.
    #[error(
        "--comm {0:?} is longer than 15 bytes, the kernel's limit for process names: give the name as `ps -o comm` shows it"
    )]
    CommTooLong(String),
    /// An empty `--comm`.
    #[error("--comm \"\" is empty: give a process name as `ps -o comm` shows it")]
    CommEmpty,
    /// `record --` with nothing after it.
    #[error(
        "nothing after --: give the command to profile after it, or leave -- out to profile the whole system"
    )]
    NoCommand,
    /// A `--pid` that is a zombie.
    #[error(
        "process {0} is a zombie (it exited; its parent has not collected it): there is nothing of it to profile"
    )]
    Zombie(u32),
    /// A `--pid` that is a kernel thread.
    #[error(
        "process {0} is a kernel thread ({1}): --pid takes user processes; record the whole system (no --pid) to see the kernel's work"
    )]
    KernelThread(u32, String),
    /// A `--cgroup` that is not a cgroup v2 folder.
    #[error("--cgroup {}: {why}: give a cgroup v2 folder, e.g. /sys/fs/cgroup/system.slice/app.service", path.display())]
    Cgroup {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// crossprof runs in a pid namespace other than the host's.
    #[error(
        "crossprof runs in a pid namespace of its own (a container without the host's pids): the kernel reports every process by its pid on the host, which this namespace's /proc does not show; run it in the host's pid namespace (docker run --pid=host, Kubernetes hostPID: true)"
    )]
    PidNamespace,
    /// A `--container` whose cgroup was not found.
    #[error("--container {id}: {why}")]
    Container {
        /// The id given.
        id: String,
        /// What was wrong.
        why: String,
    },
    /// `--token-file` unusable.
    #[error("--token-file {}: {why}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// `--ca-file`, `--cert-file` or `--key-file` unusable.
    #[error("{}: {why}: give a PEM file (--ca-file: certificates; --cert-file: the client's certificate chain; --key-file: its private key)", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A non-loopback `--listen` without a token.
    #[error(
        "--listen {0} is reachable from other hosts: give --token-file FILE (a secret of 16 characters or more), or listen on 127.0.0.1"
    )]
    TokenNeeded(std::net::SocketAddr),
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}: pick another --listen address or port")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `--log-file` cannot be opened.
    #[error("cannot open --log-file {}: {source}: give a writable file", path.display())]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command-line syntax error reported by clap.
    #[error("{0}")]
    Syntax(String),
}

/// Everything that can end a recording early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's to fix.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Loading or attaching the kernel programs failed.
    #[error(transparent)]
    Sampler(#[from] crate::kernel::error::SamplerError),
    /// Writing an output failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The outputs could not be written (a full disk): none were kept.
    #[error(
        "cannot write {}: {source}: no output was kept (free some space, or pick another folder with -o){}",
        path.display(),
        command_status.map_or(String::new(), |s| format!("; the command exited with status {s}"))
    )]
    Outputs {
        /// The file that failed.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
        /// The command's exit status, if there was one.
        command_status: Option<i32>,
    },
    /// Any other I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What crossprof was doing.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The process exit status this error ends crossprof with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            // The user's to fix (a full disk), and nothing half-written left.
            Error::Outputs { .. } => 2,
            // A kernel that refuses a program is the user's kernel: the
            // message names it, the cause, and the log to report.
            Error::Sampler(crate::kernel::error::SamplerError::Refused { .. }) => 2,
            _ => 1,
        }
    }
}
