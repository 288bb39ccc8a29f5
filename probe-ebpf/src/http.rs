//! Request attribution (see `probe_common::http`): the start of an HTTP
//! request read by a target, and the start of a response it writes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::map,
    maps::LruHashMap,
    programs::TracePointContext,
};
use probe_common::{
    Counter, RecordKind,
    http::{HTTP_BYTES, HttpEvent},
};

use crate::{EVENTS, TARGETS, config, count};

/// Threads of targets in a `read`: tid -> the buffer.
#[map]
static READS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Is the current process followed for requests?
#[inline(always)]
fn followed(tgid: u32) -> bool {
    let cfg = config();
    // SAFETY: the value is only tested for presence, never read.
    cfg.http != 0 && (cfg.filter_pids == 0 || unsafe { TARGETS.get(tgid) }.is_some())
}

/// `sys_enter_read` (format: fd @16, buf @24, count @32): notes the buffer.
#[inline(always)]
pub fn read_enter(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !followed((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: a read of the tracepoint record at its format's offset.
    if let Ok(buf) = unsafe { ctx.read_at::<u64>(24) } {
        let _ = READS.insert(pid_tgid as u32, buf, 0);
    }
}

/// Does `word` (the first 8 bytes read) start an HTTP/1.x request, or
/// continue one whose first byte an earlier 1-byte read took? (Go's net/http
/// reads one byte in the background between requests on a kept-alive
/// connection, to see the client leave; the serving goroutine then reads the
/// rest: `ET /path HTTP/1.1...`.)
#[inline(always)]
fn is_request(word: u64) -> bool {
    let w4 = word & 0xffff_ffff;
    let w = |s: &[u8; 4]| u64::from(u32::from_le_bytes(*s));
    w4 == w(b"GET ")
        || w4 == w(b"POST")
        || w4 == w(b"PUT ")
        || w4 == w(b"HEAD")
        || w4 == w(b"DELE")
        || w4 == w(b"PATC")
        || w4 == w(b"OPTI")
        || w4 == w(b"ET /")
        || w4 == w(b"OST ")
        || w4 == w(b"UT /")
        || w4 == w(b"EAD ")
        || w4 == w(b"ELET")
        || w4 == w(b"ATCH")
        || w4 == w(b"PTIO")
}

/// `sys_exit_read` (ret @16): a read that returned the start of a request
/// sends it.
#[inline(always)]
pub fn read_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&buf) = (unsafe { READS.get(tid) }) else {
        return;
    };
    let _ = READS.remove(tid);
    // SAFETY: a read of the tracepoint record at its return value's offset.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if ret < 16 {
        return;
    }
    // SAFETY: the user-read helper checks the address.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return;
    };
    if !is_request(word) {
        return;
    }
    send(RecordKind::HttpRequest, pid_tgid, buf, ret as u64);
}

/// `sys_enter_write` (fd @16, buf @24, count @32): a response's first bytes.
#[inline(always)]
pub fn write_enter(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !followed((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: reads of the tracepoint record at its format's offsets.
    let (Ok(buf), Ok(len)) = (unsafe { (ctx.read_at::<u64>(24), ctx.read_at::<u64>(32)) }) else {
        return;
    };
    if len < 12 {
        return;
    }
    // SAFETY: the user-read helper checks the address.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return;
    };
    // "HTTP/1." and either version digit.
    if word & 0x00ff_ffff_ffff_ffff != u64::from_le_bytes(*b"HTTP/1.\0") {
        return;
    }
    send(RecordKind::HttpResponse, pid_tgid, 0, 0);
}

/// Sends an [`HttpEvent`] of the current thread, with the first `len` bytes at
/// `buf` (at most `HTTP_BYTES`).
#[inline(always)]
fn send(kind: RecordKind, pid_tgid: u64, buf: u64, len: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let goid = crate::go::current_goid(tgid);
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        count(Counter::HttpEventsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    let n = if len > HTTP_BYTES as u64 {
        HTTP_BYTES as u64
    } else {
        len
    };
    // SAFETY: the reservation is an HttpEvent-sized, exclusively owned slot;
    // the header is written field by field (a struct copy would be a memcpy
    // call) and the bytes by the user-read helper, which zero-fills on a fault.
    unsafe {
        (*e).kind = kind as u32;
        (*e).pid = tgid;
        (*e).tid = pid_tgid as u32;
        (*e).len = n as u32;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).goid = goid;
        if n > 0 {
            generated::bpf_probe_read_user(
                (*e).bytes.as_mut_ptr().cast(),
                n as u32,
                buf as *const core::ffi::c_void,
            );
        }
    }
    entry.submit(0);
}
