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
    pub fn update(&mut self, elapsed: Duration, samples: u64, lost: u64) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
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
