//! Checks run before anything is loaded or written, so that bad input fails fast,
//! with one clear line and nothing half-done.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use crate::{
    error::UsageError,
    kernel::{Kernel, Needs, Plan, Walk},
};

/// Default location of the kernel's BTF.
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Environment variable that overrides [`DEFAULT_BTF`].
pub const BTF_ENV: &str = "CROSSPROF_BTF";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Root, or CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN (which implies both on kernels
/// older than 5.8).
pub fn check_privileges() -> Result<(), UsageError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = parse_cap_eff(&status).unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(UsageError::NotPrivileged)
    }
}

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`,
/// include/linux/proc_ns.h: 0xEFFFFFFC since Linux 3.8).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// crossprof must run in the initial pid namespace: its kernel programs name
/// every thread by its pid there, and it reads `/proc` by those pids (a
/// container's own /proc has other numbers, or none, for them). In a pid
/// namespace of its own (a container without `--pid=host`, a pod without
/// `hostPID`) it says so and stops instead of recording nameless stacks.
pub fn check_pid_namespace() -> Result<(), UsageError> {
    use std::os::unix::fs::MetadataExt as _;
    match fs::metadata("/proc/self/ns/pid") {
        Ok(ns) if ns.ino() != INIT_PID_NS_INO => Err(UsageError::PidNamespace),
        // No namespace file (a kernel without CONFIG_PID_NS): only one.
        _ => Ok(()),
    }
}

/// The `CapEff:` bit set of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Where the kernel's BTF is read: [`BTF_ENV`] if set, else [`DEFAULT_BTF`].
pub fn btf_path() -> PathBuf {
    std::env::var_os(BTF_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BTF))
}

/// How a run that `needs` this goes on the running kernel (`what` names the
/// run in a refusal): every walk, or frame pointers only (said in a note), or
/// a one-line refusal naming the kernel, what it lacks, the kernel that has
/// it, and what runs here.
pub fn check_kernel(needs: Needs, what: &str) -> Result<KernelPlan, UsageError> {
    let kernel = Kernel::probe(&btf_path());
    let plan = kernel.plan(needs, what).map_err(UsageError::Kernel)?;
    Ok(KernelPlan {
        release: kernel.release,
        plan,
    })
}

/// The running kernel and how a run goes on it.
#[derive(Clone, Debug)]
pub struct KernelPlan {
    /// `uname -r`.
    pub release: String,
    /// The walk, and what the kernel lacks.
    pub plan: Plan,
}

impl KernelPlan {
    /// The note of a degraded run.
    pub fn note(&self) -> Option<String> {
        self.plan.note(&self.release)
    }

    /// What summary.json says of the kernel.
    pub fn summary(&self) -> crate::summary::KernelSummary {
        crate::summary::KernelSummary {
            release: self.release.clone(),
            walk: match self.plan.walk {
                Walk::Full => "full",
                Walk::FramePointers => "frame pointers only",
            },
            missing: self
                .plan
                .missing
                .iter()
                .map(|f| format!("{} (Linux {})", f.name(), f.since()))
                .collect(),
        }
    }
}

/// `perf_event_max_sample_rate`, the kernel's ceiling for sampling frequencies.
pub fn max_sample_rate() -> u64 {
    fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100_000)
}

/// 1 to [`max_sample_rate`] Hz.
pub fn check_freq(freq: u64) -> Result<(), UsageError> {
    let max = max_sample_rate();
    if freq == 0 || freq > max {
        return Err(UsageError::Frequency { freq, max });
    }
    Ok(())
}

/// Each `--debug-dir` must be a folder crossprof can list.
pub fn check_debug_dirs(dirs: &[PathBuf]) -> Result<(), UsageError> {
    match dirs.iter().find(|d| fs::read_dir(d).is_err()) {
        Some(bad) => Err(UsageError::DebugDir(bad.clone())),
        None => Ok(()),
    }
}

/// `--debuginfod` needs servers to ask (`DEBUGINFOD_URLS`).
pub fn check_debuginfod(enabled: bool) -> Result<(), UsageError> {
    if enabled {
        crate::native::debuginfod::servers(crate::native::debuginfod::urls_from_env().as_deref())?;
    }
    Ok(())
}

/// The longest `--duration`: a hundred years (longer overflows the clock's
/// arithmetic; "until stopped" is no `--duration` at all).
pub const MAX_DURATION_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// `--duration`, if given, must be a positive number of seconds, at most
/// [`MAX_DURATION_SECS`].
pub fn check_duration(duration: Option<f64>) -> Result<(), UsageError> {
    match duration {
        Some(d) if !(d.is_finite() && d > 0.0) => Err(UsageError::Duration(d)),
        Some(d) if d > MAX_DURATION_SECS => Err(UsageError::DurationTooLong(d)),
        _ => Ok(()),
    }
}

/// Is `pid` a kernel thread (`PF_KTHREAD` in the flags of `/proc/PID/stat`,
/// field 9; include/linux/sched.h)?
pub fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The name (field 2) may hold spaces and parentheses: fields count from
    // the last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Each pid must name a live process. A thread id is accepted and mapped to its
/// process (its tgid), since the kernel filter works on processes.
pub fn resolve_pids(pids: &[u32]) -> Result<Vec<u32>, UsageError> {
    let mut out = Vec::with_capacity(pids.len());
    for &pid in pids {
        if pid == 0 {
            return Err(UsageError::NoSuchPid(pid));
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|_| UsageError::NoSuchPid(pid))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
        };
        let tgid = field("Tgid:").parse().unwrap_or(pid);
        if field("State:").starts_with('Z') {
            return Err(UsageError::Zombie(pid));
        }
        if is_kernel_thread(tgid) {
            return Err(UsageError::KernelThread(pid, field("Name:").to_owned()));
        }
        if !out.contains(&tgid) {
            out.push(tgid);
        }
    }
    Ok(out)
}

/// Finds the program the way `execvp` will, so that a command that cannot start is
/// reported before anything is loaded or created.
pub fn resolve_command(program: &std::ffi::OsStr) -> Result<PathBuf, UsageError> {
    let name = Path::new(program);
    let spawn_err = |reason: &str| UsageError::Spawn {
        command: name.display().to_string(),
        reason: reason.to_owned(),
    };
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.is_empty() {
        return Err(spawn_err("empty command"));
    }
    if name.components().count() > 1 || name.is_absolute() {
        if !name.exists() {
            return Err(spawn_err("no such file"));
        }
        if !executable(name) {
            return Err(spawn_err("not an executable file"));
        }
        return Ok(name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| spawn_err("not found in PATH"))
}

/// An output folder that was checked writable. Every file goes in through a
/// new, private temporary file renamed into place (see [`crate::files`]); if
/// writing the outputs fails, [`OutputDir::abandon`] removes those written, and
/// the folder if crossprof made it: the outputs are whole or absent.
#[derive(Debug)]
pub struct OutputDir {
    /// The folder.
    pub path: PathBuf,
    folder: crate::files::OutFolder,
    created: bool,
    /// The files written so far.
    written: std::cell::RefCell<Vec<String>>,
}

impl OutputDir {
    /// Creates `path` if needed (mode 0700, with its missing parents) and
    /// proves it writable with a temporary file of a name no one can guess.
    pub fn prepare(path: &Path) -> Result<Self, UsageError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let err = |source: io::Error| UsageError::OutputDir {
            path: path.to_path_buf(),
            source,
        };
        let created = fs::symlink_metadata(path).is_err();
        if created {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(err)?;
        }
        let folder = match crate::files::OutFolder::open(path) {
            Ok(f) => f,
            Err(e) => {
                if created {
                    let _ = fs::remove_dir(path);
                }
                return Err(err(e));
            }
        };
        if created {
            folder.chown_to_invoker();
        }
        let dir = Self {
            path: path.to_path_buf(),
            folder,
            created,
            written: Default::default(),
        };
        let probe = dir
            .folder
            .create_temp("write-test")
            .and_then(|(mut f, name)| {
                let wrote = f.write_all(b"x");
                let _ = dir.folder.remove(&name);
                wrote
            });
        if let Err(e) = probe {
            dir.discard();
            return Err(err(e));
        }
        Ok(dir)
    }

    /// Removes the folder if crossprof created it and it is still empty.
    pub fn discard(&self) {
        if self.created {
            let _ = fs::remove_dir(&self.path);
        }
    }

    /// Writes `name` in the folder: a new private temporary file, then a
    /// rename, so a reader never sees half a file, and no link or existing
    /// file is ever written through.
    pub fn write_atomic(
        &self,
        name: &str,
        write: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
    ) -> Result<PathBuf, crate::error::Error> {
        let dest = self.path.join(name);
        let mut tmp_name = None;
        let result = (|| {
            let (file, tmp) = self.folder.create_temp(name)?;
            tmp_name = Some(tmp.clone());
            let mut out = io::BufWriter::new(file);
            write(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            self.folder.rename(&tmp, name)
        })();
        if let Err(source) = result {
            if let Some(tmp) = tmp_name {
                let _ = self.folder.remove(&tmp);
            }
            return Err(crate::error::Error::Write { path: dest, source });
        }
        self.written.borrow_mut().push(name.to_owned());
        self.folder.sync();
        Ok(dest)
    }

    /// After a failed write (`e`): removes what was written, and the folder if
    /// crossprof made it, and says so, with the command's exit status.
    pub fn abandon(
        &self,
        e: crate::error::Error,
        command_status: Option<i32>,
    ) -> crate::error::Error {
        for name in self.written.borrow_mut().drain(..) {
            let _ = self.folder.remove(&name);
        }
        self.discard();
        match e {
            crate::error::Error::Write { path, source } => crate::error::Error::Outputs {
                path,
                source,
                command_status,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert_ne!(caps & (1 << CAP_BPF), 0);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn frequency_bounds() {
        assert!(check_freq(0).is_err());
        assert!(check_freq(99).is_ok());
        assert!(check_freq(max_sample_rate() + 1).is_err());
    }

    #[test]
    fn duration_must_be_positive() {
        assert!(check_duration(Some(0.0)).is_err());
        assert!(check_duration(Some(f64::NAN)).is_err());
        assert!(check_duration(Some(1.5)).is_ok());
        assert!(check_duration(None).is_ok());
    }

    #[test]
    fn commands_are_resolved_like_execvp() {
        assert!(resolve_command("sh".as_ref()).is_ok());
        assert!(resolve_command("/nonexistent/prog".as_ref()).is_err());
        assert!(resolve_command("no-such-command-xyz".as_ref()).is_err());
        let plain = std::env::temp_dir().join(format!("crossprof-not-exec-{}", std::process::id()));
        fs::write(&plain, "data").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        let result = resolve_command(plain.as_os_str());
        fs::remove_file(&plain).unwrap();
        assert!(
            matches!(result, Err(UsageError::Spawn { reason, .. }) if reason == "not an executable file")
        );
    }
}
