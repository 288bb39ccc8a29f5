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
//! Every request is written to the destination's outbox on disk
//! ([`super::outbox`], `--dir`/`outbox-NAME/`) when it is made, and removed
//! once sent: a backend down for hours, or an agent stopped or killed
//! meanwhile, loses nothing (the next start sends what is left, oldest
//! first, before anything new). The outbox is bounded (its share of
//! `--max-disk`), and so is the count of requests waiting
//! ([`MAX_QUEUED_ON_DISK`]); beyond either, the oldest are dropped and
//! counted. Where the outbox cannot be written (a full disk, a read-only
//! folder) requests wait in memory instead, at most [`MAX_QUEUED`] of them
//! and [`MAX_QUEUED_BYTES`].
//!
//! A failed send (no answer within [`REQUEST_TIMEOUT`], a refused
//! connection, 408, 429, 5xx) is tried again after an exponential backoff
//! with jitter (1 s doubling up to 60 s); a refused request (another 4xx:
//! malformed or not allowed) is dropped and counted with its answer as the
//! last error. On stop, what waits is sent for at most [`FLUSH_DEADLINE`]
//! (stopping at the first failure when it is on disk: the next start sends
//! it), and the agent never waits longer than that for a request in flight.
//! Delivery is at least once: a request whose answer was cut short by the
//! stop is sent again by the next start.
//!
//! TLS (an `https` URL): the system's roots or `--ca-file`'s, and a client
//! certificate with `--cert-file`/`--key-file` ([`super::tls`]).
//!
//! `--otlp-protocol grpc` sends OTLP requests with gRPC ([`super::grpc`]);
//! everything else (the outbox, retries, the stop) is the same.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::outbox::{Outbox, Stored};
pub use super::tls::TlsFiles;

/// Requests held in memory while a destination is down and the outbox
/// cannot be written (an OTLP request is a window, a Pyroscope one a
/// process's window).
pub const MAX_QUEUED: usize = 1024;
/// Bytes (as sent) held in memory while a destination is down and the
/// outbox cannot be written: the agent's memory goal holds with a backend
/// down for good.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Requests waiting in the outbox at most (each costs ~40 bytes of memory
/// to list).
pub const MAX_QUEUED_ON_DISK: usize = 100_000;
/// How long the last windows may take to go out when the agent stops.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// One request's limit (connecting, sending, the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The largest request file read back (a window's request is far smaller).
const MAX_REQUEST_FILE: u64 = 256 << 20;

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
    /// Of those, the ones in the outbox on disk.
    pub queued_on_disk: u64,
    /// Bytes the outbox takes.
    pub disk_bytes: u64,
    /// The outbox (absent: requests wait in memory only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// Requests dropped: refused by the destination, or the oldest while
    /// more waited than the bounds allow.
    pub dropped: u64,
    /// The last failure, if the last send failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where requests go: a name for the log, and what every request carries.
#[derive(Debug, Clone)]
pub struct Destination {
    /// `otlp` or `pyroscope`: the log's prefix, the thread's and the
    /// outbox's name.
    pub name: &'static str,
    /// The URL requests go to (each adds its query).
    pub url: String,
    /// Headers every request carries (authorization, tenant).
    pub headers: Vec<(String, String)>,
    /// TLS files for an `https` URL.
    pub tls: TlsFiles,
    /// OTLP over gRPC ([`super::grpc`]) rather than HTTP.
    pub grpc: bool,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// Added to the destination's URL: empty, or `?...` (a Pyroscope
    /// request's name and time span).
    pub query: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The body, gzipped by the sending thread when `gzip` is set.
    pub body: Vec<u8>,
    /// Compress the body (`Content-Encoding: gzip`).
    pub gzip: bool,
}

/// An outbox as [`Outbox::open`] gives it: with what an earlier run left.
pub type Opened = (Outbox, Vec<(u64, u64)>);

/// The sending thread's handle.
#[derive(Debug)]
pub struct Exporter {
    jobs: Option<mpsc::Sender<Request>>,
    /// Told when the thread ends.
    done: mpsc::Receiver<()>,
    /// Shared with the thread.
    pub status: Arc<Mutex<ExportStatus>>,
}

impl Exporter {
    /// Starts the thread sending to `dest`, requests waiting in `outbox`
    /// (bounded at `max_disk` bytes), or in memory without one.
    pub fn start(
        dest: Destination,
        outbox: Option<Opened>,
        max_disk: u64,
    ) -> std::io::Result<Self> {
        let status = Arc::new(Mutex::new(ExportStatus {
            url: dest.url.clone(),
            outbox: outbox.as_ref().map(|(o, _)| o.path().display().to_string()),
            ..Default::default()
        }));
        let (jobs, rx) = mpsc::channel::<Request>();
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::clone(&status);
        let mut queue = Queue::new(outbox, max_disk);
        std::thread::Builder::new()
            .name(format!("crossprof-{}", dest.name))
            .spawn(move || {
                run(&dest, &rx, &mut queue, &shared);
                let _ = done_tx.send(());
            })?;
        Ok(Exporter {
            jobs: Some(jobs),
            done,
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

    /// Sends what waits, for at most [`FLUSH_DEADLINE`], and stops (a
    /// request still in flight then is left to the thread: the process is
    /// ending, and the request is still in the outbox).
    pub fn finish(mut self) -> ExportStatus {
        drop(self.jobs.take());
        let _ = self
            .done
            .recv_timeout(FLUSH_DEADLINE + Duration::from_millis(500));
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
fn ready(request: Request) -> Stored {
    let gzip = request.gzip;
    Stored {
        query: request.query,
        content_type: request.content_type,
        body: if gzip {
            crate::pprof::gzip(&request.body).into()
        } else {
            request.body.into()
        },
        gzip,
    }
}

/// How requests go out.
enum Transport {
    Http(ureq::Agent),
    Grpc(Box<super::grpc::Client>),
    /// The gRPC client could not be made (a malformed URL): every request
    /// fails with this.
    Broken(String),
}

impl Transport {
    fn of(dest: &Destination) -> Self {
        if dest.grpc {
            return match super::grpc::Client::new(
                &dest.url,
                &dest.headers,
                &dest.tls,
                REQUEST_TIMEOUT,
            ) {
                Ok(c) => Transport::Grpc(Box::new(c)),
                Err(e) => Transport::Broken(e),
            };
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("crossprof/", env!("CARGO_PKG_VERSION")))
            .tls_config(dest.tls.ureq())
            .build();
        Transport::Http(ureq::Agent::new_with_config(config))
    }

    fn send(&mut self, dest: &Destination, r: &Stored) -> Sent {
        match self {
            Transport::Http(agent) => send(agent, dest, r),
            Transport::Grpc(client) => match client.send(r) {
                Ok(()) => Sent::Ok,
                Err(super::grpc::Failed::Retry(why)) => Sent::Retry(why),
                Err(super::grpc::Failed::Refused(why)) => Sent::Refused(why),
            },
            Transport::Broken(why) => Sent::Retry(why.clone()),
        }
    }
}

fn send(agent: &ureq::Agent, dest: &Destination, r: &Stored) -> Sent {
    let url = format!("{}{}", dest.url, r.query);
    let mut post = agent.post(&url).header("Content-Type", &r.content_type);
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

/// A waiting request: in the outbox (by its number) or in memory.
enum Waiting {
    OnDisk { seq: u64, bytes: u64 },
    InMemory(Stored),
}

/// The requests waiting, oldest first, bounded (oldest dropped first).
struct Queue {
    items: VecDeque<Waiting>,
    /// Of `items`, the ones in memory, and their bytes.
    in_memory: usize,
    memory_bytes: usize,
    disk_bytes: u64,
    outbox: Option<Outbox>,
    max_disk: u64,
    /// The outbox's last write failure (said once until a write works).
    disk_failure: Option<String>,
}

impl Queue {
    /// A queue over `outbox` (what an earlier run left in it first).
    fn new(outbox: Option<Opened>, max_disk: u64) -> Self {
        let (outbox, left) = match outbox {
            Some((o, left)) => (Some(o), left),
            None => (None, Vec::new()),
        };
        let mut q = Queue {
            items: VecDeque::new(),
            in_memory: 0,
            memory_bytes: 0,
            disk_bytes: 0,
            outbox,
            max_disk,
            disk_failure: None,
        };
        for (seq, bytes) in left {
            q.disk_bytes += bytes;
            q.items.push_back(Waiting::OnDisk { seq, bytes });
        }
        q
    }

    fn on_disk(&self) -> usize {
        self.items.len() - self.in_memory
    }

    /// Adds `r`, in the outbox if it can be written; returns how many of
    /// the oldest were dropped for it.
    fn push(&mut self, r: Stored) -> u64 {
        let written = self.outbox.as_mut().map(|o| o.write(&r));
        match written {
            Some(Ok((seq, bytes))) => {
                if self.disk_failure.take().is_some() {
                    log::warn!("requests are written to the outbox again");
                }
                self.disk_bytes += bytes;
                self.items.push_back(Waiting::OnDisk { seq, bytes });
            }
            Some(Err(e)) => {
                if self.disk_failure.is_none() {
                    log::warn!(
                        "cannot write the outbox ({e}): requests wait in memory (at most {MAX_QUEUED})"
                    );
                }
                self.disk_failure = Some(e.to_string());
                self.keep_in_memory(r);
            }
            None => self.keep_in_memory(r),
        }
        let mut dropped = 0;
        while self.items.len() > 1
            && (self.in_memory > MAX_QUEUED
                || self.memory_bytes > MAX_QUEUED_BYTES
                || self.disk_bytes > self.max_disk
                || self.items.len() > MAX_QUEUED_ON_DISK)
        {
            self.pop();
            dropped += 1;
        }
        dropped
    }

    fn keep_in_memory(&mut self, r: Stored) {
        self.in_memory += 1;
        self.memory_bytes += r.body.len();
        self.items.push_back(Waiting::InMemory(r));
    }

    /// The oldest request: read back from the outbox if it is there (one
    /// that cannot be read is dropped: the count of such is returned).
    fn front(&mut self) -> (Option<Stored>, u64) {
        let mut unreadable = 0;
        loop {
            match self.items.front() {
                None => return (None, unreadable),
                Some(Waiting::InMemory(r)) => return (Some(r.clone()), unreadable),
                Some(Waiting::OnDisk { seq, .. }) => {
                    let seq = *seq;
                    let read = self.outbox.as_ref().map(|o| o.read(seq, MAX_REQUEST_FILE));
                    match read {
                        Some(Ok(r)) => return (Some(r), unreadable),
                        Some(Err(e)) => {
                            log::warn!("request {seq} of the outbox is dropped: {e}");
                            self.pop();
                            unreadable += 1;
                        }
                        None => {
                            self.pop();
                            unreadable += 1;
                        }
                    }
                }
            }
        }
    }

    /// Forgets the oldest request (and its file).
    fn pop(&mut self) {
        match self.items.pop_front() {
            Some(Waiting::OnDisk { seq, bytes }) => {
                self.disk_bytes -= bytes;
                if let Some(o) = &self.outbox {
                    o.remove(seq);
                }
            }
            Some(Waiting::InMemory(r)) => {
                self.in_memory -= 1;
                self.memory_bytes -= r.body.len();
            }
            None => {}
        }
    }
}

fn run(
    dest: &Destination,
    rx: &mpsc::Receiver<Request>,
    queue: &mut Queue,
    status: &Mutex<ExportStatus>,
) {
    let mut transport = Transport::of(dest);
    let name = dest.name;
    let mut backoff = BACKOFF_FIRST;
    let mut retry_at: Option<Instant> = None;
    let mut stopping_by: Option<Instant> = None;
    let update = |f: &mut dyn FnMut(&mut ExportStatus)| {
        if let Ok(mut s) = status.lock() {
            f(&mut s);
        }
    };
    let counts = |q: &Queue| (q.items.len() as u64, q.on_disk() as u64, q.disk_bytes);
    if !queue.items.is_empty() {
        log::warn!(
            "{name}: {} request(s) an earlier run left in the outbox are sent first",
            queue.items.len()
        );
    }
    loop {
        let (queued, queued_on_disk, disk_bytes) = counts(queue);
        update(&mut |s| {
            s.queued = queued;
            s.queued_on_disk = queued_on_disk;
            s.disk_bytes = disk_bytes;
        });
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
                let mut dropped = queue.push(ready(request));
                while let Ok(more) = rx.try_recv() {
                    dropped += queue.push(ready(more));
                }
                if dropped > 0 {
                    update(&mut |s| s.dropped += dropped);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) if stopping_by.is_none() => {
                stopping_by = Some(Instant::now() + FLUSH_DEADLINE);
                retry_at = None;
            }
            Err(_) => {}
        }
        if let Some(by) = stopping_by
            && (queue.items.is_empty() || Instant::now() >= by)
        {
            stop_note(name, &dest.url, queue);
            return;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let (head, unreadable) = queue.front();
        if unreadable > 0 {
            update(&mut |s| s.dropped += unreadable);
        }
        let Some(head) = head else {
            continue;
        };
        match transport.send(dest, &head) {
            Sent::Ok => {
                let n = head.body.len() as u64;
                queue.pop();
                backoff = BACKOFF_FIRST;
                retry_at = None;
                update(&mut |s| {
                    s.sent += 1;
                    s.bytes_sent += n;
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
                    if queue.in_memory == 0 {
                        // All of it is on disk: the next start sends it.
                        stop_note(name, &dest.url, queue);
                        return;
                    }
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

/// Says what the agent's stop leaves unsent, and where.
fn stop_note(name: &str, url: &str, queue: &Queue) {
    let (on_disk, total) = (queue.on_disk(), queue.items.len());
    if on_disk > 0 {
        let outbox = queue
            .outbox
            .as_ref()
            .map(|o| o.path().display().to_string())
            .unwrap_or_default();
        log::warn!(
            "{name}: {on_disk} request(s) not sent to {url} before the agent stopped stay in {outbox}: the next start sends them"
        );
    }
    if total > on_disk {
        log::warn!(
            "{name}: {} request(s) held in memory (the outbox could not be written) not sent to {url}: lost",
            total - on_disk
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: usize) -> Stored {
        ready(Request {
            query: String::new(),
            content_type: String::new(),
            body: vec![0; bytes],
            gzip: false,
        })
    }

    #[test]
    fn the_memory_queue_is_bounded_in_requests_and_bytes_oldest_dropped_first() {
        let mut q = Queue::new(None, 0);
        let dropped: u64 = (0..MAX_QUEUED + 5).map(|_| q.push(request(10))).sum();
        assert_eq!((q.items.len(), dropped), (MAX_QUEUED, 5));
        let mut q = Queue::new(None, 0);
        q.push(request(1));
        let dropped = q.push(request(MAX_QUEUED_BYTES));
        assert_eq!(dropped, 1, "the older one goes");
        assert_eq!((q.items.len(), q.memory_bytes), (1, MAX_QUEUED_BYTES));
        // One request larger than the bound is still sent.
        let dropped = q.push(request(MAX_QUEUED_BYTES + 1));
        assert_eq!((dropped, q.items.len()), (1, 1));
    }

    #[test]
    fn the_outbox_is_bounded_in_bytes_oldest_dropped_first_and_files_removed() {
        let dir = std::env::temp_dir().join(format!("crossprof-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = crate::files::OutFolder::create(&dir).unwrap();
        let outbox = Outbox::open(root.subfolder("outbox-t").unwrap());
        let mut q = Queue::new(Some(outbox), 1000);
        let dropped: u64 = (0..10).map(|_| q.push(request(200))).sum();
        let files = || std::fs::read_dir(dir.join("outbox-t")).unwrap().count();
        assert!(q.disk_bytes <= 1000, "{}", q.disk_bytes);
        assert_eq!(q.items.len(), files(), "one file per waiting request");
        assert_eq!(dropped as usize + q.items.len(), 10);
        assert!(dropped > 0);
        // Oldest first: the ones left are the newest, in order.
        let seqs: Vec<u64> = q
            .items
            .iter()
            .map(|w| match w {
                Waiting::OnDisk { seq, .. } => *seq,
                Waiting::InMemory(_) => panic!("in memory"),
            })
            .collect();
        assert_eq!(*seqs.last().unwrap(), 9);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let (head, _) = q.front();
        assert_eq!(head.unwrap().body.len(), 200);
        q.pop();
        assert_eq!(q.items.len(), files());
        let _ = std::fs::remove_dir_all(&dir);
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
