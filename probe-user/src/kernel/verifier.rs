//! What the verifier said when it refused a program: the cause, which is at the
//! end of its log, not the first line (often a harmless warning, such as 6.1's
//! `reg type unsupported for arg#0 function cpu_sample#5` about the BTF type of
//! the program's context).

use std::{
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
};

/// Saves a refused program's whole log where a user can attach it to a
/// report: `$TMPDIR/crossprof-verifier-PROGRAM-PID.log`, a new file (never
/// one that exists, nor through a link: /tmp is everyone's), 0600.
pub fn save(program: &str, log: &str) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let mut last = None;
    for n in 0..16 {
        let name = if n == 0 {
            format!("crossprof-verifier-{program}-{pid}.log")
        } else {
            format!("crossprof-verifier-{program}-{pid}-{n}.log")
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(log.as_bytes())?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

/// Lines of a verifier log that are statistics, printed after the cause.
const STATS: [&str; 4] = [
    "verification time",
    "stack depth",
    "processed ",
    "max_states_per_insn",
];

/// Is `line` the verifier tracing its walk (an instruction, a source line, a
/// register state, a branch), rather than saying something?
fn is_trace(line: &str) -> bool {
    let t = line.trim_start();
    // `3424: (0f) r3 += r2`, `3424: R1=...`
    let insn = t
        .split_once(':')
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    insn || t.starts_with(';')
        || t.starts_with("from ")
        || t.starts_with("frame")
        || t.starts_with("caller:")
        || t.starts_with("callee:")
        || t.starts_with("returning from callee")
        || t.starts_with("to caller at")
        || t.starts_with("func#")
        || t.starts_with("last_idx")
        || t.starts_with("parent ")
        || t.starts_with("mark_precise")
        || t.starts_with("regs=")
        || t.starts_with("Global function")
        || t.starts_with("Func#")
        || t.starts_with("Validating")
}

/// The cause of a refusal: the last lines the verifier wrote before its
/// statistics that are not a trace of its walk (at most `max`), and the
/// instruction it stopped at, if the log shows one.
pub fn cause(log: &str, max: usize) -> Cause {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    // Drop the statistics at the end.
    let mut end = lines.len();
    while end > 0
        && STATS
            .iter()
            .any(|s| lines[end - 1].trim_start().starts_with(s))
    {
        end -= 1;
    }
    let mut said: Vec<String> = Vec::new();
    let mut at = end;
    while at > 0 && !is_trace(lines[at - 1]) {
        at -= 1;
    }
    for l in &lines[at..end] {
        said.push(l.trim().to_owned());
    }
    // The instruction it stopped at: the trace line just before.
    let insn = lines[..at]
        .iter()
        .rev()
        .find(|l| {
            let t = l.trim_start();
            t.split_once(": (")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|l| {
            // Without the register states some kernels print after `;`.
            let t = l.trim();
            t.split_once("  ;")
                .map_or(t, |(insn, _)| insn)
                .trim()
                .to_owned()
        });
    if said.is_empty() {
        // Nothing but a trace: its last line is all there is.
        if let Some(l) = lines[..end].last() {
            said.push(l.trim().to_owned());
        }
    }
    if said.len() > max {
        said.drain(..said.len() - max);
    }
    Cause { said, insn }
}

/// The cause of a verifier refusal (see [`cause`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// What the verifier said, last lines last.
    pub said: Vec<String>,
    /// The instruction it stopped at (`4824: (7b) *(u64 *)(r0 +8) = r1`).
    pub insn: Option<String>,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.said.join(" / "))?;
        if let Some(insn) = &self.insn {
            write!(f, " (at instruction {insn})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real logs, saved from Debian's kernels refusing crossprof's programs
    /// before they were fitted to them (tests/data/verifier/).
    fn saved(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/verifier")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_cause_on_6_1_is_the_last_words_not_the_first_warning() {
        let log = saved("6.1-unbounded-min.log");
        assert!(log.starts_with("reg type unsupported for arg#0"));
        let c = cause(&log, 3);
        assert_eq!(
            c.said.last().map(String::as_str),
            Some(
                "math between map_value pointer and register with unbounded min value is not allowed"
            ),
            "{c:?}"
        );
        assert!(
            c.said.iter().all(|l| !l.contains("reg type unsupported")),
            "{c:?}"
        );
        assert!(
            c.insn.as_deref().is_some_and(|i| i.ends_with("r3 += r2")),
            "{c:?}"
        );
    }

    #[test]
    fn the_cause_on_6_12_is_the_combined_stack() {
        let log = saved("6.12-combined-stack.log");
        let c = cause(&log, 3);
        assert!(
            c.said
                .iter()
                .any(|l| l == "combined stack size of 3 calls is 528. Too large"),
            "{c:?}"
        );
    }

    #[test]
    fn statistics_and_traces_are_not_the_cause() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (b7) r0 = 0\n1: (95) exit\n\
                   R0 !read_ok\nprocessed 2 insns (limit 1000000)\nstack depth 0\n";
        let c = cause(log, 3);
        assert_eq!(c.said, vec!["R0 !read_ok".to_owned()]);
        assert_eq!(c.insn.as_deref(), Some("1: (95) exit"));
    }

    #[test]
    fn an_empty_log_has_no_cause() {
        let c = cause("", 3);
        assert!(c.said.is_empty() && c.insn.is_none());
    }
}
