//! The agent's push of every window to an OpenTelemetry endpoint
//! (`--otlp-endpoint URL`): OTLP/HTTP, the request ([`crate::otlp`])
//! protobuf-encoded and gzipped, POSTed to `URL/v1development/profiles`
//! (the specification's default path for the profiles signal; a URL that
//! already ends with it is taken as is), as the OpenTelemetry Collector's
//! `otlp` receiver takes it on port 4318.
//!
//! Sending happens on a thread of its own, so that a slow or unreachable
//! backend never holds up sampling. Windows wait in memory, oldest first,
//! at most [`MAX_QUEUED`] (beyond, the oldest is dropped and counted); a
//! failed send (no answer, 429, 5xx) is tried again after an exponential
//! backoff with jitter (1 s doubling up to 60 s), a refused one (another
//! 4xx: the request is malformed or not allowed) is dropped and counted
//! with its answer as the last error. On stop, what is queued is sent for
//! at most [`FLUSH_DEADLINE`].
//!
//! Not done yet (issue #22): gRPC, TLS options beyond the system's roots,
//! a queue on disk that outlives the agent, Pyroscope's ingest API.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Windows held while the endpoint is down.
pub const MAX_QUEUED: usize = 64;
/// How long the last windows may take to go out when the agent stops.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// One request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How the sending goes, in `/api/windows` (`agent.otlp`) and the log.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportStatus {
    /// Where windows go.
    pub url: String,
    /// Windows sent (answered 2xx).
    pub sent: u64,
    /// Bytes sent (gzipped), over all windows sent.
    pub bytes_sent: u64,
    /// Windows waiting to be sent.
    pub queued: u64,
    /// Windows dropped: refused by the endpoint, or the oldest while more
    /// than [`MAX_QUEUED`] waited.
    pub dropped: u64,
    /// The last failure, if the last send failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The sending thread's handle.
#[derive(Debug)]
pub struct Exporter {
    jobs: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
    /// Shared with the thread.
    pub status: Arc<Mutex<ExportStatus>>,
}

impl Exporter {
    /// Starts the thread sending to `url` (as
    /// [`crate::cli::parse_otlp_endpoint`] made it).
    pub fn start(url: String) -> std::io::Result<Self> {
        let status = Arc::new(Mutex::new(ExportStatus {
            url: url.clone(),
            ..Default::default()
        }));
        let (jobs, rx) = mpsc::channel::<Vec<u8>>();
        let shared = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("crossprof-otlp".into())
            .spawn(move || run(&url, &rx, &shared))?;
        Ok(Exporter {
            jobs: Some(jobs),
            thread: Some(thread),
            status,
        })
    }

    /// Queues a window's request (protobuf, not compressed).
    pub fn push(&self, request: Vec<u8>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(request);
        }
    }

    /// Sends what is queued, for at most [`FLUSH_DEADLINE`], and stops.
    pub fn finish(mut self) -> ExportStatus {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What a send came to.
enum Sent {
    Ok,
    /// Try again later.
    Retry(String),
    /// Never again: drop it.
    Refused(String),
}

fn send(agent: &ureq::Agent, url: &str, body: &[u8]) -> Sent {
    let answer = agent
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "gzip")
        .send(body);
    match answer {
        Ok(r) => {
            let code = r.status().as_u16();
            match code {
                200..=299 => Sent::Ok,
                408 | 429 | 500..=599 => Sent::Retry(format!("{url}: HTTP {code}")),
                _ => Sent::Refused(format!("{url}: HTTP {code}, window dropped")),
            }
        }
        Err(e) => Sent::Retry(format!("{url}: {e}")),
    }
}

/// A pseudo-random jitter of +-20% around `d` (from the clock: no
/// randomness needed beyond spreading hosts apart).
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    d.mul_f64(factor)
}

fn run(url: &str, rx: &mpsc::Receiver<Vec<u8>>, status: &Mutex<ExportStatus>) {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("crossprof/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut backoff = BACKOFF_FIRST;
    let mut retry_at: Option<Instant> = None;
    let mut stopping_by: Option<Instant> = None;
    let update = |f: &mut dyn FnMut(&mut ExportStatus)| {
        if let Ok(mut s) = status.lock() {
            f(&mut s);
        }
    };
    loop {
        // Take in new windows: wait for one when idle, else only until a
        // retry is due.
        let wait = match (queue.is_empty(), retry_at) {
            _ if stopping_by.is_some() => Some(Duration::ZERO),
            (true, _) => None,
            (false, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            (false, None) => Some(Duration::ZERO),
        };
        let got = match wait {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d),
        };
        match got {
            Ok(request) => {
                queue.push_back(crate::pprof::gzip(&request));
                while queue.len() > MAX_QUEUED {
                    queue.pop_front();
                    update(&mut |s| s.dropped += 1);
                }
                while let Ok(more) = rx.try_recv() {
                    queue.push_back(crate::pprof::gzip(&more));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) if stopping_by.is_none() => {
                stopping_by = Some(Instant::now() + FLUSH_DEADLINE);
                retry_at = None;
            }
            Err(_) => {}
        }
        update(&mut |s| s.queued = queue.len() as u64);
        if let Some(by) = stopping_by
            && (queue.is_empty() || Instant::now() >= by)
        {
            if !queue.is_empty() {
                log::warn!(
                    "otlp: {} window(s) not sent to {url} before the agent stopped",
                    queue.len()
                );
            }
            return;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let Some(body) = queue.front() else {
            continue;
        };
        match send(&agent, url, body) {
            Sent::Ok => {
                let n = body.len() as u64;
                queue.pop_front();
                backoff = BACKOFF_FIRST;
                retry_at = None;
                update(&mut |s| {
                    s.sent += 1;
                    s.bytes_sent += n;
                    s.queued = queue.len() as u64;
                    s.last_error = None;
                });
            }
            Sent::Refused(why) => {
                log::warn!("otlp: {why}");
                queue.pop_front();
                update(&mut |s| {
                    s.dropped += 1;
                    s.last_error = Some(why.clone());
                });
            }
            Sent::Retry(why) => {
                let first = status.lock().is_ok_and(|s| s.last_error.is_none());
                if first {
                    log::warn!("otlp: {why}; windows wait and are sent again");
                }
                update(&mut |s| s.last_error = Some(why.clone()));
                if stopping_by.is_some() {
                    // No waiting on the way out: one try each until the deadline.
                    std::thread::sleep(Duration::from_millis(100));
                } else {
                    retry_at = Some(Instant::now() + jittered(backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
