//! What a panic does: crossprof never shows a user a Rust backtrace, and never
//! leaves a command it started running unprofiled behind it.
//!
//! A panic anywhere (the event loop, the symbolizer thread, an IPC thread)
//! prints one line (what failed and where, and to report it), stops the
//! command `record -- CMD` started as a normal stop would (SIGTERM), and exits
//! with status 70 (`EX_SOFTWARE`). No input should reach one: the fuzz targets
//! and the CLI table test check that; this is the last line of defence.
//!
//! It writes no profile. The issue asked for "what it can", but a panic means
//! the collector's own state broke somewhere, and a profile built from it could
//! be silently wrong, which crossprof never hands out; the outputs of the run
//! are either whole (written before the panic) or absent.

use std::sync::atomic::{AtomicI32, Ordering};

/// Exit status after a panic (sysexits.h `EX_SOFTWARE`).
pub const EXIT_STATUS: i32 = 70;

/// The command `record -- CMD` started (its pid), 0 when none.
static COMMAND: AtomicI32 = AtomicI32::new(0);

/// Records the command crossprof started, for the hook to stop.
pub fn started(pid: u32) {
    COMMAND.store(pid as i32, Ordering::SeqCst);
}

/// The command ended (or was reaped): the hook must not signal its pid again.
pub fn ended() {
    COMMAND.store(0, Ordering::SeqCst);
}

/// Installs the hook (once, first thing in `main`).
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let what = what.lines().next().unwrap_or_default().to_owned();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let pid = COMMAND.swap(0, Ordering::SeqCst);
        let stopped = if pid > 0 {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            format!("; the command it started (pid {pid}) was sent SIGTERM")
        } else {
            String::new()
        };
        eprintln!(
            "crossprof: internal error: {what}{at}{stopped}; please report it with the command line that caused it (RUST_BACKTRACE=1 shows where)"
        );
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        std::process::exit(EXIT_STATUS);
    }));
}
