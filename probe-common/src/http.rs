//! Request attribution (`--group-by trace`): where a plaintext HTTP/1.x request
//! starts and ends in a target's thread or goroutine.
//!
//! The kernel side watches the `read`, `recvfrom`, `recvmsg`, `write` and
//! `sendto` system calls of target processes as they return, and sends an
//! [`HttpEvent`] when one moved bytes that begin with an HTTP method (a request
//! received, or sent by a client: its first bytes, up to [`HTTP_BYTES`],
//! headers included) or with `HTTP/1.` (a response sent, or received by a
//! client). The collector parses the `traceparent` header and attributes to its
//! trace id what that goroutine (Go) or thread does in between.

/// Bytes of a request kept (its request line and headers, usually).
pub const HTTP_BYTES: usize = 1024;

/// A request received or a response sent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    /// [`crate::RecordKind::HttpRequest`], `HttpResponse`, `HttpRequestSent` or
    /// `HttpResponseRead`.
    pub kind: u32,
    /// Process (tgid).
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Bytes of `bytes` that hold data (0 for a response).
    pub len: u32,
    /// `bpf_ktime_get_ns()`.
    pub time_ns: u64,
    /// The goroutine making the call, in a Go process (0: none).
    pub goid: u64,
    /// The start of the request.
    pub bytes: [u8; HTTP_BYTES],
}
const _: () = assert!(core::mem::size_of::<HttpEvent>() == 32 + HTTP_BYTES);

/// The fixed part of an [`HttpEvent`] (a response is sent without `bytes`, a
/// request with room for 256, 512 or [`HTTP_BYTES`] of them: the record's
/// length says which).
pub const HTTP_HEADER_BYTES: usize = 32;
