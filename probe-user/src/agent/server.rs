//! The agent's HTTP server (`--listen`): a few GET endpoints over plain
//! HTTP/1.1, one request per connection.
//!
//! - `/debug/pprof/profile?seconds=N`: a capture of the next N seconds (default
//!   30, as Go's), a gzipped pprof profile served like Go's `net/http/pprof`,
//!   so `go tool pprof http://HOST/debug/pprof/profile?seconds=5` and
//!   Parca's and Pyroscope's scrapers work unchanged;
//! - `/api/windows`: the stored windows, JSON;
//! - `/flamegraph.svg?window=ID|latest&pid=PID&mode=cpu|offcpu|goblock&compare=previous`:
//!   a window (or one process of it) as an SVG, or its differential
//!   flamegraph against the window before;
//! - `/`: the live page (`page.html`).
//!
//! Bound to anything but a loopback address, every endpoint wants
//! `Authorization: Bearer TOKEN` (the first line of `--token-file`); a request
//! without it gets 401 and no data.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use super::store::Store;
use crate::fold::Folded;

/// The live page.
const PAGE: &str = include_str!("page.html");
/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Longest on-demand capture.
pub const MAX_CAPTURE_SECS: f64 = 600.0;

/// An on-demand capture asked of the agent's loop.
#[derive(Debug)]
pub struct Capture {
    /// How long.
    pub seconds: f64,
    /// Where its gzipped pprof profile goes.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// What the server shares with the agent's loop.
#[derive(Debug)]
pub struct Shared {
    /// The windows.
    pub store: Mutex<Store>,
    /// Captures to take.
    pub captures: mpsc::UnboundedSender<Capture>,
    /// Asks the agent's loop for a snapshot of the window being counted (in
    /// the store when the reply comes).
    pub snapshots: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
    /// What the profiles weigh (`cpu`, or `wall`: CPU and the sources below).
    pub mode: &'static str,
    /// The profiles a window holds: `cpu`, and `offcpu` (`--off-cpu`) and
    /// `goblock` (`--go-waits`) when followed.
    pub sources: Vec<&'static str>,
    /// Sampling frequency.
    pub freq: u64,
    /// How the agent itself is doing, as of the last window.
    pub status: Mutex<AgentStatus>,
    /// Captures running (at most [`MAX_CAPTURES`]).
    pub captures_running: std::sync::atomic::AtomicUsize,
}

/// The agent's own figures, in `/api/windows` (`agent`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct AgentStatus {
    /// Processes it holds state for.
    pub processes: usize,
    /// Frame names it holds.
    pub names: usize,
    /// Its resident memory, KiB.
    pub rss_kib: u64,
    /// CPU seconds it has used (user + system).
    pub cpu_seconds: f64,
    /// Samples lost since it started (ring buffer full, undecodable).
    pub lost: u64,
    /// Windows cut.
    pub windows: u64,
    /// Rows of `.eh_frame` rules in the kernel's table now.
    pub unwind_rows_in_use: u64,
    /// Rows given back since it started (files no live process maps).
    pub unwind_rows_freed: u64,
    /// Files whose rules did not fit (their stacks end at
    /// `[truncated: no unwind info]`).
    pub unwind_files_refused: u64,
    /// What loading the kernel programs cost, and whether the sampler's Go
    /// and .NET walks are loaded (they are once a runtime is met).
    pub kernel_load: Option<crate::summary::KernelLoad>,
    /// The OTLP export (`--otlp-endpoint`): sent, queued, dropped, the
    /// last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<super::export::ExportStatus>,
    /// The Pyroscope export (`--pyroscope-url`), the same figures per
    /// process window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pyroscope: Option<super::export::ExportStatus>,
}

/// Serves `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, &shared).await {
                log::debug!("{peer}: {e}");
            }
        });
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    fn error(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: format!("{text}\n").into_bytes(),
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    _peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let response = match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(())) => match Request::parse(&head) {
            Some(req) => {
                // Answered while the client is there: a client that hangs up
                // (read returns 0) drops the answer being made, and with it
                // a capture's claim on the agent.
                let mut probe = [0u8; 256];
                tokio::select! {
                    r = respond(&req, shared) => r,
                    _ = async {
                        loop {
                            match stream.read(&mut probe).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    } => return Ok(()),
                }
            }
            None => Response::error(400, "bad request"),
        },
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Response::error(431, "request head too large")
        }
        _ => return Ok(()),
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    authorization: Option<String>,
    /// The `crossprof_token` cookie (the live page's way to pass the token to
    /// the SVG it loads).
    cookie_token: Option<String>,
    /// The `Host` header.
    host: Option<String>,
}

impl Request {
    pub(crate) fn parse(head: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(head).ok()?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_owned();
        let target = first.next()?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let headers: Vec<(&str, &str)> = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let authorization = header("authorization").map(str::to_owned);
        let cookie_token = header("cookie").and_then(|c| {
            c.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == "crossprof_token")
                .map(|(_, v)| percent_decode(v))
        });
        Some(Self {
            method,
            path: percent_decode(path),
            query,
            authorization,
            cookie_token,
            host: header("host").map(str::to_owned),
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares in time independent of where they differ.
fn same_token(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is `host` (a `Host` header) a loopback name or address, with or without a
/// port: `localhost`, `127.0.0.1:7070`, `[::1]:7070`?
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn respond(req: &Request, shared: &Shared) -> Response {
    // Without a token the agent serves loopback only, and only to requests
    // made to a loopback name: a web page whose host name rebinds to
    // 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
    if shared.token.is_none() && req.host.as_deref().is_some_and(|h| !loopback_host(h)) {
        return Response::error(
            403,
            "forbidden: without a token the agent answers requests to localhost or a loopback address only",
        );
    }
    if let Some(token) = &shared.token {
        let given = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .or(req.cookie_token.as_deref());
        if !given.is_some_and(|g| same_token(g, token)) {
            let mut r = Response::error(401, "unauthorized: send Authorization: Bearer <token>");
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            return r;
        }
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::error(405, "only GET");
    }
    match req.path.as_str() {
        "/" | "/index.html" => Response::ok("text/html; charset=utf-8", PAGE.as_bytes().to_vec()),
        "/api/windows" => {
            current(shared).await;
            windows(shared)
        }
        "/api/status" => status(shared),
        "/flamegraph.svg" => {
            if req
                .query
                .get("window")
                .is_some_and(|w| w == super::store::CURRENT)
            {
                current(shared).await;
            }
            flamegraph(req, shared)
        }
        "/debug/pprof/profile" => profile(req, shared).await,
        _ => Response::error(
            404,
            "not found: try /, /api/windows, /api/status, /flamegraph.svg or /debug/pprof/profile?seconds=N",
        ),
    }
}

/// Brings the snapshot of the window being counted up to date (at most
/// [`SNAPSHOT_WAIT`] waited for: an old one is shown rather than none).
async fn current(shared: &Shared) {
    let (tx, rx) = oneshot::channel();
    if shared.snapshots.send(tx).is_ok() {
        let _ = tokio::time::timeout(SNAPSHOT_WAIT, rx).await;
    }
}

/// The longest a request waits for a snapshot of the window being counted.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// The agent's own state, without the window list: its processes, memory,
/// CPU and losses, and each export destination's sending (`otlp`,
/// `pyroscope`: sent, queued, on disk, dropped, last error), as of the last
/// window cut.
fn status(shared: &Shared) -> Response {
    let store = shared.store.lock().expect("store");
    let mut body = overview(shared, &store);
    body["windows_on_disk"] = store.windows_on_disk().into();
    Response::ok("application/json", body.to_string().into_bytes())
}

fn windows(shared: &Shared) -> Response {
    let store = shared.store.lock().expect("store");
    let mut body = overview(shared, &store);
    body["windows"] = serde_json::json!(store.list());
    Response::ok("application/json", body.to_string().into_bytes())
}

/// What `/api/status` and `/api/windows` both show: the agent's state, its
/// mode and bytes on disk.
fn overview(shared: &Shared, store: &super::store::Store) -> serde_json::Value {
    serde_json::json!({
        "agent": shared.status.lock().expect("status").clone(),
        "mode": shared.mode,
        "sources": shared.sources,
        "frequency_hz": shared.freq,
        "disk_bytes": store.disk_bytes(),
    })
}

async fn profile(req: &Request, shared: &Shared) -> Response {
    let seconds = match req.query.get("seconds").map(|s| s.parse::<f64>()) {
        None => 30.0,
        Some(Ok(s)) if s > 0.0 && s <= MAX_CAPTURE_SECS => s,
        Some(_) => {
            return Response::error(
                400,
                &format!(
                    "seconds must be a number of seconds, more than 0 and at most {MAX_CAPTURE_SECS}"
                ),
            );
        }
    };
    // A few at a time: each keeps a copy of every stack for its seconds.
    let Some(_slot) = CaptureSlot::take(&shared.captures_running) else {
        return Response::error(
            429,
            &format!("{MAX_CAPTURES} captures are running: try again when one ends"),
        );
    };
    let (tx, rx) = oneshot::channel();
    if shared
        .captures
        .send(Capture { seconds, reply: tx })
        .is_err()
    {
        return Response::error(503, "the agent is stopping");
    }
    match rx.await {
        Ok(data) => {
            let mut r = Response::ok("application/octet-stream", data);
            r.headers.push((
                "Content-Disposition",
                "attachment; filename=\"profile\"".into(),
            ));
            r
        }
        Err(_) => Response::error(503, "the agent stopped before the capture ended"),
    }
}

/// Captures that may run at once.
pub const MAX_CAPTURES: usize = 4;

/// A running capture's place among [`MAX_CAPTURES`], given back when dropped
/// (its answer sent, or its client gone).
struct CaptureSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> CaptureSlot<'a> {
    fn take(running: &'a std::sync::atomic::AtomicUsize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CAPTURES).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(running))
    }
}

impl Drop for CaptureSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Does folded `line` belong to profile `mode`?
fn in_mode(line: &str, mode: &str, wall: bool) -> bool {
    let leaf = line.rsplit(';').next().unwrap_or("");
    match mode {
        "cpu" => !wall || leaf == "[running]",
        "offcpu" => wall && leaf != "[running]" && !leaf.starts_with("[wait: "),
        "goblock" => leaf.starts_with("[wait: "),
        _ => true,
    }
}

/// Folded stacks of one window, for one process or all, in one mode.
fn select(by_pid: &BTreeMap<u32, Folded>, pid: Option<u32>, mode: &str, wall: bool) -> Folded {
    let mut out = Folded::default();
    for (_, f) in by_pid
        .iter()
        .filter(|(p, _)| pid.is_none_or(|want| **p == want))
    {
        for (line, &n) in f.stacks.iter().filter(|(l, _)| in_mode(l, mode, wall)) {
            *out.stacks.entry(line.clone()).or_insert(0) += n;
        }
        for (text, kind) in &f.kinds {
            out.kinds.entry(text.clone()).or_insert(*kind);
        }
    }
    out
}

fn stripped(f: &Folded) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (line, &n) in &f.stacks {
        *out.entry(crate::diff::strip(line)).or_insert(0) += n;
    }
    out
}

fn flamegraph(req: &Request, shared: &Shared) -> Response {
    let q = |k: &str| req.query.get(k).map(String::as_str).unwrap_or("");
    let window = q("window");
    let mode = match q("mode") {
        "" | "all" | "wall" => "all",
        m @ ("cpu" | "offcpu" | "goblock") => m,
        m => return Response::error(400, &format!("mode {m:?}: use cpu, offcpu, goblock or all")),
    };
    let pid = match q("pid") {
        "" | "all" => None,
        p => match p.parse::<u32>() {
            Ok(p) => Some(p),
            Err(_) => return Response::error(400, &format!("pid {p:?} is not a process id")),
        },
    };
    let wall = shared.mode == "wall";
    let count_name = if wall { "µs" } else { "samples" };
    let store = shared.store.lock().expect("store");
    let (folded, id) = match store.recent(window) {
        Some(w) => (select(&w.by_pid, pid, mode, wall), w.meta.id.clone()),
        None => {
            // Older windows: from their pprof file (no frame kinds: inferno's
            // own colours).
            let Some(data) = store.read_pprof(window) else {
                return Response::error(404, &format!("no window {window:?}: see /api/windows"));
            };
            let read = match crate::pprof::read_pid(&data, pid) {
                Ok(r) => r,
                Err(e) => return Response::error(500, &format!("window {window}: {e}")),
            };
            let mut f = Folded::default();
            for (line, v) in read.stacks {
                let n = v.get(read.default_column).copied().unwrap_or(0).max(0) as u64;
                if n > 0 && in_mode(&line, mode, wall) {
                    *f.stacks.entry(line).or_insert(0) += n;
                }
            }
            (f, window.to_owned())
        }
    };
    let what = match pid {
        Some(p) => format!("pid {p}"),
        None => "all processes".to_owned(),
    };
    let mut svg = Vec::new();
    let result = if q("compare") == "previous" {
        let Some(prev) = store.previous(&id) else {
            return Response::error(404, "no previous window in memory to compare with");
        };
        let before = select(&prev.by_pid, pid, mode, wall);
        crate::diff::render(
            &stripped(&before),
            &stripped(&folded),
            &format!("Window {id} against {}", prev.meta.id),
            &format!("{what}, {mode}: red grew, blue shrank (self share, normalised)"),
            &mut svg,
        )
    } else {
        crate::render::render_svg(
            &folded,
            &format!("Window {id}"),
            &format!("{what}, {mode}, {} Hz", shared.freq),
            count_name,
            &mut svg,
        )
    };
    match result {
        Ok(()) => Response::ok("image/svg+xml", svg),
        Err(e) => Response::error(500, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_query_and_authorization() {
        let r = Request::parse(
            b"GET /flamegraph.svg?window=latest&pid=42&s=main%2Ehot HTTP/1.1\r\nHost: x\r\nauthorization: Bearer abc\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.path, "/flamegraph.svg");
        assert_eq!(r.query["pid"], "42");
        assert_eq!(r.query["s"], "main.hot");
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        let r = Request::parse(b"GET / HTTP/1.1\r\nCookie: a=b; crossprof_token=t%2B1\r\n\r\n")
            .unwrap();
        assert_eq!(r.cookie_token.as_deref(), Some("t+1"));
        assert!(Request::parse(b"\xff\r\n\r\n").is_none());
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
    }

    #[test]
    fn modes_pick_stacks_by_leaf() {
        assert!(in_mode("p;main;[running]", "cpu", true));
        assert!(!in_mode("p;main;[blocked: futex]", "cpu", true));
        assert!(in_mode("p;main;[blocked: futex]", "offcpu", true));
        assert!(in_mode("p;main;[wait: chan receive]", "goblock", true));
        assert!(in_mode("p;main;hot", "cpu", false));
        assert!(!in_mode("p;main;hot", "offcpu", false));
    }
}
