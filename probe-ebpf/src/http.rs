//! Request attribution (see `probe_common::http`): the start of an HTTP
//! request or response a target reads or writes — a server receiving a request
//! and answering it, a client sending one and receiving the answer.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    programs::BtfTracePointContext,
};
use probe_common::{
    Counter, RecordKind,
    http::{HTTP_BYTES, HTTP_HEADER_BYTES, HttpEvent},
};

use crate::{EVENTS, config, count};

/// Is the current process followed for requests?
#[inline(always)]
fn followed(tgid: u32) -> bool {
    config().http != 0 && crate::selected(tgid)
}

/// x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_RECVMSG: u64 = 47;

/// `raw_syscalls:sys_exit` (`regs`, `ret`): a `read`, `recvfrom` or `recvmsg`
/// of a target that returned the start of a request sends it (a server
/// receiving it), or says it read the start of a response (a client receiving
/// it); a `write` or `sendto` that wrote the start of a response says so (a
/// server answering), one that wrote a request sends it (a client sending it).
///
/// One BTF-typed raw tracepoint at the call's exit, not a tracepoint pair per
/// call: the buffer is the second argument, still in the saved registers
/// (`rsi`); the raw tracepoint skips building a perf record per call, and its
/// typed `pt_regs` is read with plain loads rather than helper calls (see
/// xtask/src/bench/http.rs for the cost).
#[inline(always)]
pub fn sys_exit(ctx: &BtfTracePointContext) {
    // The arguments of the `sys_exit` tracepoint: (pt_regs *, long).
    let ret: i64 = ctx.arg(1);
    if ret < 12 {
        return;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: a BTF-typed program reads the kernel's `pt_regs` directly (the
    // verifier turns the loads into checked ones).
    let nr = unsafe { core::ptr::read_volatile(&(*regs).orig_rax) };
    let read = match nr {
        SYS_READ | SYS_RECVFROM | SYS_RECVMSG => true,
        SYS_WRITE | SYS_SENDTO => false,
        _ => return,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !followed((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: as above.
    let arg = unsafe { core::ptr::read_volatile(&(*regs).rsi) };
    let (buf, len) = if nr == SYS_RECVMSG {
        // The message's first buffer: `struct user_msghdr`'s `msg_iov` @16,
        // `struct iovec` { base @0, len @8 } (include/uapi/linux/socket.h,
        // uio.h) — .NET's sockets receive so.
        // SAFETY: user reads through the helper, which checks the addresses.
        let first = unsafe {
            bpf_probe_read_user((arg + 16) as *const u64)
                .and_then(|iov| bpf_probe_read_user(iov as *const [u64; 2]))
        };
        match first {
            Ok([base, len]) => (base, if (ret as u64) < len { ret as u64 } else { len }),
            Err(_) => return,
        }
    } else {
        (arg, ret as u64)
    };
    if len < 12 {
        return;
    }
    // SAFETY: the user-read helper checks the address.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return;
    };
    match (read, is_request(word) && len >= 16, is_response(word)) {
        (true, true, _) => send(RecordKind::HttpRequest, pid_tgid, regs, buf, len),
        (true, false, true) => send(RecordKind::HttpResponseRead, pid_tgid, regs, 0, 0),
        (false, _, true) => send(RecordKind::HttpResponse, pid_tgid, regs, 0, 0),
        (false, true, false) => send(RecordKind::HttpRequestSent, pid_tgid, regs, buf, len),
        _ => {}
    }
}

/// The first four bytes of an HTTP/1.x request, and the same minus the first
/// byte (Go's net/http reads one byte in the background between requests on a
/// kept-alive connection, to see the client leave; the serving goroutine then
/// reads the rest: `ET /path HTTP/1.1...`).
const METHODS: [[u8; 4]; 14] = [
    *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"PATC", *b"OPTI", //
    *b"ET /", *b"OST ", *b"UT /", *b"EAD ", *b"ELET", *b"ATCH", *b"PTIO",
];

/// Does `word` (the first 8 bytes read or written) start an HTTP/1.x request?
#[inline(always)]
fn is_request(word: u64) -> bool {
    let w4 = (word & 0xffff_ffff) as u32;
    METHODS.iter().any(|m| w4 == u32::from_le_bytes(*m))
}

/// Does `word` start an HTTP/1.x response (`HTTP/1.` and either digit)?
#[inline(always)]
fn is_response(word: u64) -> bool {
    word & 0x00ff_ffff_ffff_ffff == u64::from_le_bytes(*b"HTTP/1.\0")
}

/// An [`HttpEvent`] with room for `N` bytes: records are reserved in three
/// sizes (most requests' headers fit in 256 bytes, a browser's in 1 KiB), so
/// that the ring carries what was read, not always [`HTTP_BYTES`].
#[repr(C)]
struct Sized<const N: usize> {
    kind: u32,
    pid: u32,
    tid: u32,
    len: u32,
    time_ns: u64,
    goid: u64,
    bytes: [u8; N],
}
const _: () = assert!(core::mem::size_of::<Sized<0>>() == HTTP_HEADER_BYTES);
const _: () =
    assert!(core::mem::size_of::<Sized<HTTP_BYTES>>() == core::mem::size_of::<HttpEvent>());

/// Sends an [`HttpEvent`] of the current thread (its saved user registers
/// `regs`), with the first `len` bytes at `buf` (at most `HTTP_BYTES`).
#[inline(always)]
fn send(kind: RecordKind, pid_tgid: u64, regs: *const pt_regs, buf: u64, len: u64) {
    let goid = crate::go::syscall_goid((pid_tgid >> 32) as u32, regs);
    if len == 0 {
        send_sized::<0>(kind, pid_tgid, goid, buf, 0);
    } else if len <= 256 {
        send_sized::<256>(kind, pid_tgid, goid, buf, len);
    } else if len <= 512 {
        send_sized::<512>(kind, pid_tgid, goid, buf, len);
    } else {
        send_sized::<HTTP_BYTES>(kind, pid_tgid, goid, buf, len);
    }
}

/// [`send`] in a record with room for `N` bytes (`len` is cut to `N`).
#[inline(always)]
fn send_sized<const N: usize>(kind: RecordKind, pid_tgid: u64, goid: u64, buf: u64, len: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let flags = crate::wakeup_flags();
    let Some(mut entry) = EVENTS.reserve::<Sized<N>>(0) else {
        count(Counter::HttpEventsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    let n = if len > N as u64 { N as u64 } else { len };
    // SAFETY: the reservation is a Sized<N>, exclusively owned; the header is
    // written field by field (a struct copy would be a memcpy call) and the
    // bytes by the user-read helper, which zero-fills on a fault.
    unsafe {
        (*e).kind = kind as u32;
        (*e).pid = tgid;
        (*e).tid = pid_tgid as u32;
        (*e).len = n as u32;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).goid = goid;
        if N > 0 && n > 0 {
            generated::bpf_probe_read_user(
                (*e).bytes.as_mut_ptr().cast(),
                n as u32,
                buf as *const core::ffi::c_void,
            );
        }
    }
    entry.submit(flags);
}
