//! Request attribution (`--group-by trace`, see `probe_common::http`): which
//! W3C trace each Go goroutine or thread works for, from the requests it reads
//! until the response it writes.

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

/// The requests in flight.
#[derive(Debug, Default)]
pub struct Requests {
    current: HashMap<Worker, String>,
    /// Requests seen, with a valid traceparent.
    pub traced: u64,
    /// Requests seen without one (their time stays unattributed).
    pub untraced: u64,
    /// Requests not followed: too many in flight.
    pub overflow: u64,
}

impl Requests {
    /// `worker` read the start of a request.
    pub fn request(&mut self, worker: Worker, bytes: &[u8]) {
        match traceparent(bytes) {
            Some(trace)
                if self.current.len() < MAX_IN_FLIGHT || self.current.contains_key(&worker) =>
            {
                self.traced += 1;
                self.current.insert(worker, trace);
            }
            Some(_) => self.overflow += 1,
            None => {
                // A request without a trace ends whatever the worker did before.
                self.untraced += 1;
                self.current.remove(&worker);
            }
        }
    }

    /// Thread `tid` of `pid`, running goroutine `goid`, wrote the start of a
    /// response: its request is done (also one its thread read before the
    /// process was known to be Go, when its goroutine was not known).
    pub fn response(&mut self, pid: u32, tid: u32, goid: u64) {
        self.current.remove(&Worker::of(pid, tid, goid));
        self.current.remove(&Worker::Thread(pid, tid));
    }

    /// The trace thread `tid` of `pid` works for now, running goroutine
    /// `goid`: its goroutine's, else its thread's (a request read in the first
    /// moments of a Go process, before its goroutines are known).
    pub fn trace(&self, pid: u32, tid: u32, goid: u64) -> Option<&str> {
        self.current
            .get(&Worker::of(pid, tid, goid))
            .or_else(|| self.current.get(&Worker::Thread(pid, tid)))
            .map(String::as_str)
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
        r.request(Worker::of(1, 10, 7), &traced());
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
        r.response(1, 11, 7);
        assert_eq!(r.trace(1, 10, 7), None);
        // A request without a trace ends the previous one's attribution.
        r.request(Worker::of(1, 10, 7), &traced());
        r.request(Worker::of(1, 10, 7), &request("accept: x"));
        assert_eq!((r.trace(1, 10, 7), r.traced, r.untraced), (None, 2, 1));
        // Read by a thread before its goroutine was known: the thread's, until
        // the response.
        r.request(Worker::of(1, 12, 0), &traced());
        assert_eq!(r.trace(1, 12, 9), Some(TRACE));
        r.response(1, 12, 9);
        assert_eq!(r.trace(1, 12, 9), None);
    }
}
