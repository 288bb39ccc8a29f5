//! The one-line live status on stderr while recording. Drawn only on a terminal:
//! redirected stderr (CI logs, scripts) gets the final summary only.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

/// Redraw at most this often.
const EVERY: Duration = Duration::from_millis(250);

/// The live status line.
pub struct Status {
    enabled: bool,
    last: Option<Instant>,
}

impl Status {
    /// A status line, drawn if stderr is a terminal and not `quiet`.
    pub fn new(quiet: bool) -> Self {
        Self {
            enabled: !quiet && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Redraws the line if it is due.
    /// `lost` is asked only then: reading the kernel's counters is a system
    /// call per counter (23 at every tick of a quiet recording were a third
    /// of its CPU while recording, 2026-12-06).
    pub fn update(&mut self, elapsed: Duration, samples: u64, lost: impl FnOnce() -> u64) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let lost = lost();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kcrossprof: recording {:.1} s  samples {samples}  lost {lost}  (Ctrl-C to stop)",
            elapsed.as_secs_f64()
        );
        let _ = err.flush();
    }

    /// Erases the line.
    pub fn clear(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_is_asked_only_when_the_line_is_drawn() {
        let mut quiet = Status {
            enabled: false,
            last: None,
        };
        quiet.update(Duration::ZERO, 1, || panic!("asked while quiet"));
        let mut shown = Status {
            enabled: true,
            last: Some(Instant::now()),
        };
        shown.update(Duration::ZERO, 1, || panic!("asked before it was due"));
        let mut asked = false;
        shown.last = Some(Instant::now() - EVERY);
        shown.update(Duration::ZERO, 1, || {
            asked = true;
            0
        });
        assert!(asked);
    }
}
