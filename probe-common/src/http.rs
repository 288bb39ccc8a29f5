//! Request attribution (`--group-by trace`): where a plaintext HTTP/1.x request
//! starts and ends in a target's thread or goroutine.
//!
//! The kernel side watches `read` and `write` system calls of target processes
//! and sends an [`HttpEvent`] when a read returns bytes that begin with an
//! HTTP method (a request received: the first [`HTTP_BYTES`] of it, headers
//! included) and when a write begins with `HTTP/1.` (a response sent). The
//! collector parses the `traceparent` header and attributes to its trace id
//! what that goroutine (Go) or thread does in between.

/// Bytes of a request kept (its request line and headers, usually).
pub const HTTP_BYTES: usize = 1024;

/// A request received or a response sent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    /// [`crate::RecordKind::HttpRequest`] or [`crate::RecordKind::HttpResponse`].
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

/// The fixed part of an [`HttpEvent`] (a response is sent without `bytes`).
pub const HTTP_HEADER_BYTES: usize = 32;
