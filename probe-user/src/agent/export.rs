//! The agent's push of every window to the backends a fleet runs, each
//! destination on a thread of its own so that a slow or unreachable backend
//! never holds up sampling:
//!
//! - `--otlp-endpoint URL`: OTLP/HTTP, the request ([`crate::otlp`])
//!   protobuf-encoded and gzipped, POSTed to `URL/v1development/profiles`
//!   (the specification's default path for the profiles signal; a URL that
//!   already ends with it is taken as is), as the OpenTelemetry Collector's
//!   `otlp` receiver takes it on port 4318.
//! - `--pyroscope-url URL`: Pyroscope's ingest API, one request per process
//!   and window ([`crate::pyroscope`]).
//!
//! Requests wait in memory, oldest first, at most [`MAX_QUEUED`] of them and
//! [`MAX_QUEUED_BYTES`] (beyond, the oldest are dropped and counted); a
//! failed send (no answer, 408, 429, 5xx) is tried again after an exponential
//! backoff with jitter (1 s doubling up to 60 s), a refused one (another
//! 4xx: the request is malformed or not allowed) is dropped and counted
//! with its answer as the last error. On stop, what is queued is sent for
//! at most [`FLUSH_DEADLINE`].
//!
//! Not done yet (issue #22): gRPC, TLS options beyond the system's roots,
//! a queue on disk that outlives the agent.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Requests held while a destination is down (an OTLP request is a window,
/// a Pyroscope one a process's window).
pub const MAX_QUEUED: usize = 1024;
/// Bytes (as sent) held while a destination is down: the agent's memory
/// goal holds with a backend down for good.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// How long the last windows may take to go out when the agent stops.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// One request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How the sending goes, in `/api/windows` (`agent.otlp`,
/// `agent.pyroscope`) and the log.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportStatus {
    /// Where requests go.
    pub url: String,
    /// Requests sent (answered 2xx).
    pub sent: u64,
    /// Bytes sent (as sent: gzipped), over all requests sent.
    pub bytes_sent: u64,
    /// Requests waiting to be sent.
    pub queued: u64,
    /// Requests dropped: refused by the destination, or the oldest while
    /// more than [`MAX_QUEUED`] or [`MAX_QUEUED_BYTES`] waited.
    pub dropped: u64,
    /// The last failure, if the last send failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where requests go: a name for the log, and what every request carries.
#[derive(Debug, Clone)]
pub struct Destination {
    /// `otlp` or `pyroscope`: the log's prefix and the thread's name.
    pub name: &'static str,
    /// The URL shown in the status.
    pub url: String,
    /// Headers every request carries (authorization, tenant).
    pub headers: Vec<(String, String)>,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where it goes (a Pyroscope request's carries its query).
    pub url: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The body, gzipped by the sending thread when `gzip` is set.
    pub body: Vec<u8>,
    /// Compress the body (`Content-Encoding: gzip`).
    pub gzip: bool,
}

/// The sending thread's handle.
#[derive(Debug)]
pub struct Exporter {
    jobs: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// Shared with the thread.
    pub status: Arc<Mutex<ExportStatus>>,
}

impl Exporter {
    /// Starts the thread sending to `dest`.
    pub fn start(dest: Destination) -> std::io::Result<Self> {
        let status = Arc::new(Mutex::new(ExportStatus {
            url: dest.url.clone(),
            ..Default::default()
        }));
        let (jobs, rx) = mpsc::channel::<Request>();
        let shared = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name(format!("crossprof-{}", dest.name))
            .spawn(move || run(&dest, &rx, &shared))?;
        Ok(Exporter {
            jobs: Some(jobs),
            thread: Some(thread),
            status,
        })
    }

    /// Queues a request.
    pub fn push(&self, request: Request) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(request);
        }
    }

    /// The status now.
    pub fn status(&self) -> Option<ExportStatus> {
        self.status.lock().ok().map(|s| s.clone())
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

/// A request as it goes out: its body compressed if asked.
struct Ready {
    request: Request,
}

impl Ready {
    fn of(mut request: Request) -> Self {
        if request.gzip {
            request.body = crate::pprof::gzip(&request.body);
        }
        Ready { request }
    }
}

fn send(agent: &ureq::Agent, dest: &Destination, ready: &Ready) -> Sent {
    let r = &ready.request;
    let mut post = agent.post(&r.url).header("Content-Type", &r.content_type);
    if r.gzip {
        post = post.header("Content-Encoding", "gzip");
    }
    for (k, v) in &dest.headers {
        post = post.header(k, v);
    }
    // The URL as shown: a Pyroscope request's query (the app name and its
    // labels) is left out of the log.
    let shown = &dest.url;
    match post.send(&r.body[..]) {
        Ok(answer) => {
            let code = answer.status().as_u16();
            match code {
                200..=299 => Sent::Ok,
                408 | 429 | 500..=599 => Sent::Retry(format!("{shown}: HTTP {code}")),
                _ => Sent::Refused(format!("{shown}: HTTP {code}, request dropped")),
            }
        }
        Err(e) => Sent::Retry(format!("{shown}: {e}")),
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

/// The queue, bounded in requests and bytes (oldest dropped first).
#[derive(Default)]
struct Queue {
    items: VecDeque<Ready>,
    bytes: usize,
}

impl Queue {
    /// Adds `ready`; returns how many of the oldest were dropped for it.
    fn push(&mut self, ready: Ready) -> u64 {
        self.bytes += ready.request.body.len();
        self.items.push_back(ready);
        let mut dropped = 0;
        while self.items.len() > MAX_QUEUED
            || (self.bytes > MAX_QUEUED_BYTES && self.items.len() > 1)
        {
            self.pop();
            dropped += 1;
        }
        dropped
    }

    fn pop(&mut self) {
        if let Some(r) = self.items.pop_front() {
            self.bytes -= r.request.body.len();
        }
    }
}

fn run(dest: &Destination, rx: &mpsc::Receiver<Request>, status: &Mutex<ExportStatus>) {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("crossprof/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let name = dest.name;
    let mut queue = Queue::default();
    let mut backoff = BACKOFF_FIRST;
    let mut retry_at: Option<Instant> = None;
    let mut stopping_by: Option<Instant> = None;
    let update = |f: &mut dyn FnMut(&mut ExportStatus)| {
        if let Ok(mut s) = status.lock() {
            f(&mut s);
        }
    };
    loop {
        // Take in new requests: wait for one when idle, else only until a
        // retry is due.
        let wait = match (queue.items.is_empty(), retry_at) {
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
                let mut dropped = queue.push(Ready::of(request));
                while let Ok(more) = rx.try_recv() {
                    dropped += queue.push(Ready::of(more));
                }
                update(&mut |s| s.dropped += dropped);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) if stopping_by.is_none() => {
                stopping_by = Some(Instant::now() + FLUSH_DEADLINE);
                retry_at = None;
            }
            Err(_) => {}
        }
        update(&mut |s| s.queued = queue.items.len() as u64);
        if let Some(by) = stopping_by
            && (queue.items.is_empty() || Instant::now() >= by)
        {
            if !queue.items.is_empty() {
                log::warn!(
                    "{name}: {} request(s) not sent to {} before the agent stopped",
                    queue.items.len(),
                    dest.url
                );
            }
            return;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let Some(ready) = queue.items.front() else {
            continue;
        };
        match send(&agent, dest, ready) {
            Sent::Ok => {
                let n = ready.request.body.len() as u64;
                queue.pop();
                backoff = BACKOFF_FIRST;
                retry_at = None;
                update(&mut |s| {
                    s.sent += 1;
                    s.bytes_sent += n;
                    s.queued = queue.items.len() as u64;
                    s.last_error = None;
                });
            }
            Sent::Refused(why) => {
                log::warn!("{name}: {why}");
                queue.pop();
                update(&mut |s| {
                    s.dropped += 1;
                    s.last_error = Some(why.clone());
                });
            }
            Sent::Retry(why) => {
                let first = status.lock().is_ok_and(|s| s.last_error.is_none());
                if first {
                    log::warn!("{name}: {why}; requests wait and are sent again");
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

    fn request(bytes: usize) -> Ready {
        Ready::of(Request {
            url: String::new(),
            content_type: String::new(),
            body: vec![0; bytes],
            gzip: false,
        })
    }

    #[test]
    fn the_queue_is_bounded_in_requests_and_bytes_oldest_dropped_first() {
        let mut q = Queue::default();
        let dropped: u64 = (0..MAX_QUEUED + 5).map(|_| q.push(request(10))).sum();
        assert_eq!((q.items.len(), dropped), (MAX_QUEUED, 5));
        let mut q = Queue::default();
        q.push(request(1));
        let dropped = q.push(request(MAX_QUEUED_BYTES));
        assert_eq!(dropped, 1, "the older one goes");
        assert_eq!((q.items.len(), q.bytes), (1, MAX_QUEUED_BYTES));
        // One request larger than the bound is still sent.
        let dropped = q.push(request(MAX_QUEUED_BYTES + 1));
        assert_eq!((dropped, q.items.len()), (1, 1));
    }

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
