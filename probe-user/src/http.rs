//! Request attribution (`--group-by trace`, see `probe_common::http`): which
//! W3C trace each Go goroutine or thread works for: a server's from the request
//! it reads until the response it writes, a client's from the request it sends
//! until it reads the response.
//!
//! A client is followed on the thread (or goroutine) that sends: a synchronous
//! call (.NET's `HttpClient.Send`, a blocking socket) sends and waits on the same
//! thread. An asynchronous one hands the wait to another thread, whose time is
//! then unattributed (never attributed to a wrong trace).

use std::collections::HashMap;

/// Requests in flight at once (all targets); more are counted and left
/// unattributed.
pub const MAX_IN_FLIGHT: usize = 1 << 16;

/// The `trace-id` of a request's `traceparent` header (W3C Trace Context:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), if it has a valid
/// one. Lower-case hex only, not all zeros, version 00 (a later version may
/// add fields after the flags, which are ignored as the spec asks).
pub fn traceparent(request: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(request).unwrap_or_else(|e| {
        // A request cut in the middle of a UTF-8 sequence: its valid start.
        std::str::from_utf8(&request[..e.valid_up_to()]).unwrap_or_default()
    });
    // Headers only: up to the blank line (or all we have of them).
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let value = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("traceparent")
            .then(|| value.trim())
    })?;
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && (parts[0] != "00" || parts.len() == 4)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then(|| parts[1].to_owned())
}

/// Who works for a request: a goroutine of a Go process, else a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Worker {
    /// (pid, goid).
    Goroutine(u32, u64),
    /// (pid, tid).
    Thread(u32, u32),
}

impl Worker {
    /// The worker of a record of `pid`'s thread `tid` running goroutine `goid`.
    pub fn of(pid: u32, tid: u32, goid: u64) -> Self {
        if goid != 0 {
            Worker::Goroutine(pid, goid)
        } else {
            Worker::Thread(pid, tid)
        }
    }
}

/// A request that ended: its span, for the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Who worked for it.
    pub worker: Worker,
    /// Its trace id.
    pub trace: String,
    /// Read (or sent, by a client) at.
    pub start_ns: u64,
    /// Its response written (or read, by a client) at.
    pub end_ns: u64,
    /// Sent by the worker, not received.
    pub client: bool,
}

impl Finished {
    /// Its process.
    pub fn pid(&self) -> u32 {
        match self.worker {
            Worker::Goroutine(pid, _) | Worker::Thread(pid, _) => pid,
        }
    }
}

/// A request in flight.
#[derive(Debug)]
struct InFlight {
    trace: String,
    pid: u32,
    start_ns: u64,
    /// Sent by its worker (a client waiting for the response), not received.
    client: bool,
    /// For a goroutine created while its creator worked for the request: the
    /// worker that read it (its time ends with that worker's).
    root: Option<Worker>,
    /// For the worker that read it: the goroutines working for it too.
    heirs: Vec<Worker>,
}

/// A request slower than `--slow-ms`, with where its time went.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlowRequest {
    /// Its trace id.
    pub trace_id: String,
    /// The process that served it (or sent it: `client`).
    pub pid: u32,
    /// The client's view: from sending the request to reading the response.
    pub client: bool,
    /// From reading the request to writing the response (client: from sending
    /// it to reading the response).
    pub ms: f64,
    /// Its time by cause, most first (at most 5): the leaf label of what its
    /// worker was doing (`[running]`, `[blocked: io]`, `[wait: sync.Mutex.Lock]`,
    /// ...), in ms (wall, off-CPU and goroutine-wait profiles).
    pub causes: Vec<(String, f64)>,
}

/// Slow requests kept (the slowest).
pub const MAX_SLOW: usize = 100;

/// The requests in flight.
#[derive(Debug, Default)]
pub struct Requests {
    current: HashMap<Worker, InFlight>,
    /// `--slow-ms`, in ns (0: off).
    pub slow_ns: u64,
    /// Processes seen running goroutines: their thread-keyed requests (read
    /// before the process was known to be Go) are dropped, and threads there
    /// work for no trace (an M runs many goroutines).
    go: std::collections::HashSet<u32>,
    /// Per (process, trace) in flight: µs by cause (with `slow_ns` only).
    causes: HashMap<(u32, String), HashMap<String, u64>>,
    /// Requests slower than `slow_ns`, slowest first.
    pub slow: Vec<SlowRequest>,
    /// Requests seen, with a valid traceparent.
    pub traced: u64,
    /// Requests seen without one (their time stays unattributed).
    pub untraced: u64,
    /// Of those, requests whose headers did not end in the bytes of their
    /// first read (split across reads): a `traceparent` may have come later.
    pub partial: u64,
    /// Requests not followed: too many in flight.
    pub overflow: u64,
    /// Requests sent with a valid traceparent (clients).
    pub sent: u64,
    /// Goroutines that worked for the request of the goroutine that created
    /// them.
    pub inherited: u64,
    /// Times a cause was not kept: too many (process, trace) pairs had causes.
    pub causes_dropped: u64,
}

impl Requests {
    /// Requests followed, slow ones kept from `slow_ns` (0: none).
    pub fn new(slow_ns: u64) -> Self {
        Self {
            slow_ns,
            ..Default::default()
        }
    }

    /// `worker` read the start of a request at `time_ns`.
    pub fn request(&mut self, worker: Worker, bytes: &[u8], time_ns: u64) {
        let pid = match worker {
            Worker::Goroutine(pid, _) | Worker::Thread(pid, _) => pid,
        };
        match traceparent(bytes) {
            Some(trace)
                if self.current.len() < MAX_IN_FLIGHT || self.current.contains_key(&worker) =>
            {
                self.traced += 1;
                let old = self.current.insert(
                    worker,
                    InFlight {
                        trace,
                        pid,
                        start_ns: time_ns,
                        client: false,
                        root: None,
                        heirs: Vec::new(),
                    },
                );
                self.drop_heirs(worker, old.as_ref());
            }
            Some(_) => self.overflow += 1,
            None => {
                // A request without a trace ends whatever the worker did before.
                self.untraced += 1;
                let ends = bytes.windows(4).any(|w| w == b"\r\n\r\n");
                if !ends && bytes.len() < probe_common::http::HTTP_BYTES {
                    self.partial += 1;
                }
                let old = self.current.remove(&worker);
                self.drop_heirs(worker, old.as_ref());
            }
        }
    }

    /// `worker` no longer works for `old`'s request: nor do its heirs.
    fn drop_heirs(&mut self, worker: Worker, old: Option<&InFlight>) {
        let Some(old) = old else {
            return;
        };
        for heir in &old.heirs {
            // Only an heir still working for it (goroutine ids are never
            // reused, but an heir may have read a request of its own).
            if self
                .current
                .get(heir)
                .is_some_and(|h| h.root == Some(worker) && h.trace == old.trace)
            {
                self.current.remove(heir);
            }
        }
    }

    /// `worker` sent the start of a request at `time_ns`: with a traceparent,
    /// it works for that trace until it reads the response — unless it serves a
    /// request already (a server calling downstream works for its own request
    /// throughout; an untraced call changes nothing either).
    ///
    /// Threads only: a Go client does not wait where it sends (net/http's
    /// `writeLoop` goroutine writes every request of a connection and then
    /// parks until the next one, while `readLoop` reads the response), so a
    /// goroutine that sends would keep the trace while it waits for the next
    /// request, the time of which it is not.
    pub fn request_sent(&mut self, worker: Worker, bytes: &[u8], time_ns: u64) {
        if matches!(worker, Worker::Goroutine(..)) {
            return;
        }
        let Some(trace) = traceparent(bytes) else {
            return;
        };
        let pid = match worker {
            Worker::Goroutine(pid, _) | Worker::Thread(pid, _) => pid,
        };
        match self.current.get(&worker) {
            Some(r) if !r.client => return,
            Some(_) => {}
            None if self.current.len() >= MAX_IN_FLIGHT => {
                self.overflow += 1;
                return;
            }
            None => {}
        }
        self.sent += 1;
        self.current.insert(
            worker,
            InFlight {
                trace,
                pid,
                start_ns: time_ns,
                client: true,
                root: None,
                heirs: Vec::new(),
            },
        );
    }

    /// Goroutine `goid` of `pid` was created by `parent_goid`: if the creator
    /// works for a request, so does it (a handler's fan-out, a helper it waits
    /// on), until the request ends or the goroutine does.
    pub fn goroutine_started(&mut self, pid: u32, goid: u64, parent_goid: u64) {
        let parent = Worker::Goroutine(pid, parent_goid);
        let Some(p) = self.current.get(&parent) else {
            return;
        };
        if self.current.len() >= MAX_IN_FLIGHT {
            self.overflow += 1;
            return;
        }
        let (trace, start_ns) = (p.trace.clone(), p.start_ns);
        let root = p.root.unwrap_or(parent);
        let child = Worker::Goroutine(pid, goid);
        let Some(r) = self.current.get_mut(&root) else {
            return;
        };
        r.heirs.push(child);
        self.inherited += 1;
        self.current.insert(
            child,
            InFlight {
                trace,
                pid,
                start_ns,
                client: false,
                root: Some(root),
                heirs: Vec::new(),
            },
        );
    }

    /// Goroutine `goid` of `pid` ended: it works for no request any more.
    pub fn goroutine_ended(&mut self, pid: u32, goid: u64) {
        let w = Worker::Goroutine(pid, goid);
        if self.current.get(&w).is_some_and(|r| r.root.is_some()) {
            self.current.remove(&w);
        }
    }

    /// Thread `tid` of `pid`, running goroutine `goid`, read the start of a
    /// response at `time_ns`: the request it sent is done.
    pub fn response_read(
        &mut self,
        pid: u32,
        tid: u32,
        goid: u64,
        time_ns: u64,
    ) -> Option<Finished> {
        self.seen(pid, goid);
        let worker = Worker::of(pid, tid, goid);
        if !self.current.get(&worker)?.client {
            return None;
        }
        let done = self.current.remove(&worker)?;
        Some(self.done(worker, done, time_ns))
    }

    /// Thread `tid` of `pid`, running goroutine `goid`, wrote the start of a
    /// response at `time_ns`: its request is done (also one its thread read
    /// before the process was known to be Go, when its goroutine was not known).
    pub fn response(&mut self, pid: u32, tid: u32, goid: u64, time_ns: u64) -> Option<Finished> {
        self.seen(pid, goid);
        let worker = Worker::of(pid, tid, goid);
        let r = self.current.get(&worker)?;
        if r.client || r.root.is_some() {
            // A client's request ends when it reads the response; an heir's
            // with its root's.
            return None;
        }
        let done = self.current.remove(&worker)?;
        Some(self.done(worker, done, time_ns))
    }

    /// A record of `pid` with goroutine `goid`: once a process shows a
    /// goroutine, requests its threads read before are dropped (their
    /// goroutine was not known; their time stays unattributed, never given to
    /// whatever else the thread runs).
    fn seen(&mut self, pid: u32, goid: u64) {
        if goid != 0 && self.go.insert(pid) {
            let before = self.current.len();
            self.current
                .retain(|w, _| !matches!(w, Worker::Thread(p, _) if *p == pid));
            self.untraced += (before - self.current.len()) as u64;
        }
    }

    /// A request ended: kept if slow, its causes dropped otherwise.
    fn done(&mut self, worker: Worker, r: InFlight, end_ns: u64) -> Finished {
        self.drop_heirs(worker, Some(&r));
        let causes = self
            .causes
            .remove(&(r.pid, r.trace.clone()))
            .unwrap_or_default();
        let finished = Finished {
            worker,
            trace: r.trace.clone(),
            start_ns: r.start_ns,
            end_ns,
            client: r.client,
        };
        let ns = end_ns.saturating_sub(r.start_ns);
        if self.slow_ns == 0 || ns < self.slow_ns {
            return finished;
        }
        let mut causes: Vec<(String, f64)> = causes
            .into_iter()
            .map(|(cause, us)| (cause, us as f64 / 1e3))
            .collect();
        causes.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        causes.truncate(5);
        self.slow.push(SlowRequest {
            trace_id: r.trace,
            pid: r.pid,
            client: r.client,
            ms: ns as f64 / 1e6,
            causes,
        });
        self.slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        self.slow.truncate(MAX_SLOW);
        finished
    }

    /// Counts `us` of `cause` for `trace` in `pid` (with `--slow-ms`).
    ///
    /// At most [`MAX_IN_FLIGHT`] (process, trace) pairs are kept: a request that
    /// ends without its response (replaced, dropped) leaves its causes behind,
    /// and past the bound new ones are not kept (counted in `causes_dropped`).
    pub fn attribute(&mut self, pid: u32, trace: &str, cause: &str, us: u64) {
        if self.slow_ns == 0 {
            return;
        }
        let key = (pid, trace.to_owned());
        if self.causes.len() >= MAX_IN_FLIGHT && !self.causes.contains_key(&key) {
            self.causes_dropped += 1;
            return;
        }
        *self
            .causes
            .entry(key)
            .or_default()
            .entry(cause.to_owned())
            .or_insert(0) += us;
    }

    /// The trace thread `tid` of `pid` works for now, running goroutine
    /// `goid` (0: none): its goroutine's in a Go process (a thread on its
    /// system stack works for none), else its thread's.
    pub fn trace(&mut self, pid: u32, tid: u32, goid: u64) -> Option<&str> {
        self.seen(pid, goid);
        if goid == 0 && self.go.contains(&pid) {
            return None;
        }
        self.current
            .get(&Worker::of(pid, tid, goid))
            .map(|r| r.trace.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    fn request(header: &str) -> Vec<u8> {
        format!("GET /x HTTP/1.1\r\nHost: a\r\n{header}\r\nAccept: */*\r\n\r\nbody").into_bytes()
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let h = format!("traceparent: 00-{TRACE}-b7ad6b7169203331-01");
        assert_eq!(traceparent(&request(&h)).as_deref(), Some(TRACE));
        // Header names are case-insensitive; spaces around the value do not count.
        let h = format!("TraceParent:   00-{TRACE}-b7ad6b7169203331-00  ");
        assert_eq!(traceparent(&request(&h)).as_deref(), Some(TRACE));
    }

    #[test]
    fn malformed_or_partial_headers_give_nothing() {
        for h in [
            format!("traceparent: 00-{}-b7ad6b7169203331-01", &TRACE[..31]),
            format!(
                "traceparent: 00-{}-b7ad6b7169203331-01",
                TRACE.to_uppercase()
            ),
            "traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01".to_owned(),
            format!("traceparent: 00-{TRACE}-0000000000000000-01"),
            format!("traceparent: ff-{TRACE}-b7ad6b7169203331-01"),
            format!("traceparent: 00-{TRACE}-b7ad6b7169203331-01-extra"),
            format!("traceparent 00-{TRACE}-b7ad6b7169203331-01"),
            format!("x-traceparent: 00-{TRACE}-b7ad6b7169203331-01"),
        ] {
            assert_eq!(traceparent(&request(&h)), None, "{h}");
        }
        // Cut before the header's end: no trace rather than a wrong one.
        let full = request(&format!("traceparent: 00-{TRACE}-b7ad6b7169203331-01"));
        let cut = &full[..full.len() - 60];
        assert_eq!(traceparent(cut), None);
        // In the body, not the headers: not a header.
        let body = format!(
            "POST / HTTP/1.1\r\nHost: a\r\n\r\ntraceparent: 00-{TRACE}-b7ad6b7169203331-01"
        );
        assert_eq!(traceparent(body.as_bytes()), None);
    }

    #[test]
    fn a_worker_works_for_its_request_until_its_response() {
        let mut r = Requests::default();
        let traced = || request(&format!("traceparent: 00-{TRACE}-b7ad6b7169203331-01"));
        r.request(Worker::of(1, 10, 7), &traced(), 0);
        assert_eq!(r.trace(1, 10, 7), Some(TRACE));
        assert_eq!(
            r.trace(1, 10, 8),
            None,
            "another goroutine on the same thread"
        );
        assert_eq!(
            r.trace(1, 11, 7),
            Some(TRACE),
            "the goroutine on another thread"
        );
        r.response(1, 11, 7, 0);
        assert_eq!(r.trace(1, 10, 7), None);
        // A request without a trace ends the previous one's attribution.
        r.request(Worker::of(1, 10, 7), &traced(), 0);
        r.request(Worker::of(1, 10, 7), &request("accept: x"), 0);
        assert_eq!(r.trace(1, 10, 7), None);
        assert_eq!((r.traced, r.untraced, r.partial), (2, 1, 0));
        // A request split across reads, its traceparent in the second: no
        // trace, counted as partial.
        r.request(Worker::of(1, 10, 7), &traced(), 0);
        r.request(Worker::of(1, 10, 7), b"GET /x HTTP/1.1\r\nHost: a\r\n", 0);
        assert_eq!(r.trace(1, 10, 7), None);
        assert_eq!((r.traced, r.untraced, r.partial), (3, 2, 1));
        // A thread's request in a process not (yet) known to be Go is the
        // thread's; once the process shows goroutines it is dropped, never
        // given to what else the thread runs, and its system stack works for
        // no trace.
        r.request(Worker::of(2, 12, 0), &traced(), 0);
        assert_eq!(r.trace(2, 12, 0), Some(TRACE));
        assert_eq!(r.trace(2, 12, 9), None);
        assert_eq!(r.trace(2, 12, 0), None);
        assert_eq!(r.untraced, 3);
    }

    #[test]
    fn slow_requests_are_kept_with_their_causes() {
        let mut r = Requests {
            slow_ns: 200_000_000,
            ..Default::default()
        };
        let traced = |t: char| {
            let id: String = std::iter::repeat_n(t, 32).collect();
            request(&format!("traceparent: 00-{id}-b7ad6b7169203331-01"))
        };
        r.request(Worker::of(1, 10, 7), &traced('1'), 1_000_000_000);
        r.request(Worker::of(1, 11, 8), &traced('2'), 1_000_000_000);
        let one: String = std::iter::repeat_n('1', 32).collect();
        let two: String = std::iter::repeat_n('2', 32).collect();
        r.attribute(1, &one, "[running]", 100_000);
        r.attribute(1, &one, "[wait: sleep]", 300_000);
        r.attribute(1, &two, "[running]", 100_000);
        // The same trace's time in its client (another process) is the client's.
        r.attribute(2, &one, "[blocked: io]", 390_000);
        r.response(1, 10, 7, 1_400_000_000); // 400 ms: slow
        r.response(1, 11, 8, 1_100_000_000); // 100 ms: not
        assert_eq!(
            r.slow,
            [SlowRequest {
                trace_id: one,
                pid: 1,
                client: false,
                ms: 400.0,
                causes: vec![("[wait: sleep]".into(), 300.0), ("[running]".into(), 100.0)],
            }]
        );
    }

    #[test]
    fn a_client_works_for_the_request_it_sent_until_it_reads_the_response() {
        let mut r = Requests::new(1);
        let traced = |t: char| {
            let id: String = std::iter::repeat_n(t, 32).collect();
            request(&format!("traceparent: 00-{id}-b7ad6b7169203331-01"))
        };
        let one: String = std::iter::repeat_n('1', 32).collect();
        // A .NET thread sends request 1 and waits for its response.
        r.request_sent(Worker::of(3, 30, 0), &traced('1'), 0);
        assert_eq!(r.trace(3, 30, 0), Some(one.as_str()));
        // A response written (not read) by the thread is not the end.
        r.response(3, 30, 0, 1);
        assert_eq!(r.trace(3, 30, 0), Some(one.as_str()));
        r.attribute(3, &one, "[blocked: io]", 5_000);
        r.response_read(3, 30, 0, 7_000_000);
        assert_eq!(r.trace(3, 30, 0), None);
        assert_eq!(r.slow.len(), 1);
        assert!(r.slow[0].client);
        assert_eq!(r.slow[0].causes, [("[blocked: io]".to_owned(), 5.0)]);
        // A goroutine serving request 2 calls downstream, with or without
        // forwarding the trace: it works for request 2 until its response,
        // and reading the downstream's response does not end it.
        // A goroutine sending a request works for nothing by sending it.
        r.request_sent(Worker::of(4, 41, 10), &traced('4'), 0);
        assert_eq!(r.trace(4, 41, 10), None);
        let two: String = std::iter::repeat_n('2', 32).collect();
        r.request(Worker::of(4, 40, 9), &traced('2'), 0);
        r.request_sent(Worker::of(4, 40, 9), &request("accept: x"), 0);
        r.request_sent(Worker::of(4, 40, 9), &traced('3'), 0);
        r.response_read(4, 40, 9, 0);
        assert_eq!(r.trace(4, 40, 9), Some(two.as_str()));
        r.response(4, 40, 9, 0);
        assert_eq!(r.trace(4, 40, 9), None);
        assert_eq!((r.traced, r.sent), (1, 1));
    }

    #[test]
    fn goroutines_created_for_a_request_work_for_it_until_it_ends() {
        let mut r = Requests::default();
        let traced = |t: char| {
            let id: String = std::iter::repeat_n(t, 32).collect();
            request(&format!("traceparent: 00-{id}-b7ad6b7169203331-01"))
        };
        let one: String = std::iter::repeat_n('1', 32).collect();
        r.request(Worker::of(1, 10, 7), &traced('1'), 0);
        // Created by the handler, and by its child: both work for request 1.
        r.goroutine_started(1, 20, 7);
        r.goroutine_started(1, 21, 20);
        // Created by a goroutine working for nothing: nothing.
        r.goroutine_started(1, 22, 99);
        assert_eq!(r.trace(1, 11, 20), Some(one.as_str()));
        assert_eq!(r.trace(1, 11, 21), Some(one.as_str()));
        assert_eq!(r.trace(1, 11, 22), None);
        // An heir writing a response does not end the request.
        assert_eq!(r.response(1, 11, 20, 1), None);
        // An heir that ends works for nothing; the others go on.
        r.goroutine_ended(1, 21);
        assert_eq!(r.trace(1, 11, 21), None);
        assert_eq!(r.trace(1, 11, 20), Some(one.as_str()));
        // The request's end is its heirs'.
        assert!(r.response(1, 10, 7, 2).is_some());
        assert_eq!(r.trace(1, 11, 20), None);
        assert_eq!(r.inherited, 2);
        // A request replaced by the next one on the same goroutine takes its
        // heirs with it.
        r.request(Worker::of(1, 10, 7), &traced('1'), 3);
        r.goroutine_started(1, 30, 7);
        r.request(Worker::of(1, 10, 7), &traced('2'), 4);
        assert_eq!(r.trace(1, 11, 30), None);
    }

    #[test]
    fn causes_are_bounded() {
        let mut r = Requests::new(1);
        for i in 0..MAX_IN_FLIGHT as u32 + 10 {
            r.attribute(i, "t", "[running]", 1);
        }
        assert_eq!(r.causes.len(), MAX_IN_FLIGHT);
        assert_eq!(r.causes_dropped, 10);
        // A pair already kept still counts.
        r.attribute(0, "t", "[running]", 1);
        assert_eq!(r.causes[&(0, "t".to_owned())]["[running]"], 2);
    }
}
