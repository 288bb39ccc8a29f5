//! The runtime's diagnostics IPC, just enough to turn the perf map on and off in a
//! process that started without `DOTNET_PerfMapEnabled`.
//!
//! Protocol (dotnet/runtime `src/native/eventpipe/ds-protocol.h` and
//! `ds-process-protocol.h`, .NET 8; checked against 8.0.4 here): a Unix socket
//! `dotnet-diagnostic-<pid>-<key>-socket` in the process's temp folder; each message
//! is a 20-byte header — magic `DOTNET_IPC_V1\0` (14 bytes), `u16` total size,
//! `u8` command set, `u8` command id, `u16` reserved — then the payload, all
//! little-endian. The Process command set is 0x04; `EnablePerfMap` is 0x05 with a
//! `u32` perf-map type payload (1 = all: perf map, perfinfo and jitdump), `DisablePerfMap` 0x06 with none.
//! The reply's command set is 0xFF (server): id 0x00 is OK, 0xFF an error whose
//! payload is a `u32` HRESULT. Runtimes before .NET 8 answer these ids with an error.
//!
//! **`EnablePerfMap` must not arrive before the runtime initialised its perf
//! map.** The runtime opens its diagnostics socket early in `EEStartupHelper`
//! (`DiagnosticServerAdapter::Initialize`) and only later runs
//! `PerfMap::Initialize`, which sets up the lock `PerfMap::Enable` takes
//! (dotnet/runtime `src/coreclr/vm/ceemain.cpp`, .NET 8). A command in between
//! takes an uninitialised lock that start-up then initialises again: the
//! process crashes or hangs (dotnet/runtime#122472, fixed in .NET 10 servicing
//! by moving `PerfMap::Initialize` first). Reproduced here on 8.0.4: a process
//! held at that point with `DOTNET_DefaultDiagnosticPortSuspend=1` segfaults
//! as soon as crossprof enables its perf map. So crossprof waits until the
//! runtime has mapped `System.Private.CoreLib.dll`, which start-up does well
//! after `PerfMap::Initialize` ([`wait_for_startup`]).

use std::{
    io::{self, Read as _, Write as _},
    os::{fd::FromRawFd as _, unix::net::UnixStream},
    time::{Duration, Instant},
};

use crate::files::{Refused, TargetDir};

const MAGIC: &[u8; 14] = b"DOTNET_IPC_V1\0";
/// Bytes of a message header.
pub const HEADER_LEN: usize = 20;
const PROCESS_COMMAND_SET: u8 = 0x04;
const ENABLE_PERF_MAP: u8 = 0x05;
const DISABLE_PERF_MAP: u8 = 0x06;
const SERVER_COMMAND_SET: u8 = 0xFF;
const SERVER_OK: u8 = 0x00;
/// `PerfMapType::ALL` (src/coreclr/vm/perfmap.h): the perf map (JIT code), the
/// perfinfo map (image loads) and the jitdump, the only one that lists ReadyToRun
/// code (see [`super::jitdump`]).
const PERF_MAP_TYPE_ALL: u32 = 1;
/// How long an exchange (connect, request, whole reply) may take, all told: a
/// peer that trickles its reply a byte at a time is cut off here, not after
/// each byte's own timeout.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The same while crossprof stops: stopping never waits on one exchange for
/// longer.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an IPC command failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// No diagnostics socket, and why (see [`missing_socket`]).
    #[error("no diagnostics socket: {0}")]
    NoSocket(String),
    /// The socket did not answer as the protocol says.
    #[error("diagnostics IPC: {0}")]
    Io(#[from] io::Error),
    /// What is at the socket's name is not the process's socket (a link, a
    /// file, another user's socket): not connected to.
    #[error("{0}: not connected to")]
    Planted(String),
    /// The runtime had not loaded its core library yet, so the perf map was not
    /// asked for (asking earlier can crash .NET 8: see the module's notes).
    #[error(
        "the runtime had not finished starting (System.Private.CoreLib not loaded after {0:?}); asking for the perf map earlier can crash .NET 8"
    )]
    NotStarted(Duration),
    /// The runtime refused the command (runtimes before .NET 8 do not know it).
    #[error(
        "the runtime refused the command (HRESULT {0:#010x}); .NET before 8 cannot turn the perf map on at run time"
    )]
    Refused(u32),
}

/// The diagnostics socket's name in the temp folder of `pid`. It holds the
/// process's start time as its disambiguation key
/// (`dotnet-diagnostic-PID-STARTTICKS-socket`, checked on 8.0.4 and 3.1.23:
/// `/proc/PID/stat` field 22): a process killed leaves its socket behind, and
/// one of a process that had the same pid before answers "connection refused"
/// (found by CI: /tmp held 127 such sockets).
///
/// The pid in the name is the one the process sees (see
/// [`crate::files::own_pid`]): in a container, not the host's.
pub fn socket_name(pid: u32) -> Option<String> {
    let start = super::start_ticks(pid)?;
    let own = crate::files::own_pid(pid);
    Some(format!("dotnet-diagnostic-{own}-{start}-socket"))
}

/// Is the diagnostics socket of `pid` there, a socket of the process's own
/// user (see [`connect`])?
pub fn socket_ready(pid: u32) -> Result<(), IpcError> {
    let name = socket_name(pid).ok_or_else(|| missing_socket(pid, None))?;
    let dir = TargetDir::temp(pid).map_err(|_| missing_socket(pid, None))?;
    dir.check(&name, libc::S_IFSOCK)
        .map_err(|r| refused(pid, &dir, &name, r))
}

fn refused(pid: u32, dir: &TargetDir, name: &str, r: Refused) -> IpcError {
    match r {
        Refused::Missing => missing_socket(pid, Some(dir.show(name))),
        other => IpcError::Planted(format!("{}: {other}", dir.show(name))),
    }
}

/// Why process `pid` has no diagnostics socket (`at`: where it was looked
/// for, as the process sees it), in the words that fit: it exited; its
/// runtime was started with diagnostics off; or nothing is at that path (the
/// runtime has not made it yet). A note built on it never blames a setting
/// the process does not have.
pub fn missing_socket(pid: u32, at: Option<String>) -> IpcError {
    let why = if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        "the process exited".to_owned()
    } else if let Some(key) = diagnostics_off(pid) {
        format!("its runtime was started with {key}=0")
    } else {
        match at {
            Some(path) => {
                format!("none at {path} (not made yet, or the runtime listens elsewhere)")
            }
            None => "its temp folder could not be opened".to_owned(),
        }
    };
    IpcError::NoSocket(why)
}

/// The setting that turned process `pid`'s diagnostics server off, if one
/// did (in the environment it started with; .NET 8 has the `_IPC` one too).
fn diagnostics_off(pid: u32) -> Option<&'static str> {
    let environ = crate::files::initial_environ(pid)?;
    [
        "DOTNET_EnableDiagnostics",
        "COMPlus_EnableDiagnostics",
        "DOTNET_EnableDiagnostics_IPC",
    ]
    .into_iter()
    .find(|key| crate::files::env_value(&environ, key) == Some(&b"0"[..]))
}

/// Connects to the diagnostics socket of `pid`, found in its temp folder
/// through its own root (as [`crate::files`] finds a target's files): only a
/// socket of the process's user, never through a link (a link planted there
/// would have root connect to any socket on the machine), and never waiting
/// for a listener whose backlog is full. The stream's timeouts are set to
/// what is left of `deadline`.
pub fn connect(pid: u32, deadline: Instant) -> Result<UnixStream, IpcError> {
    let name = socket_name(pid).ok_or_else(|| missing_socket(pid, None))?;
    let dir = TargetDir::temp(pid).map_err(|_| missing_socket(pid, None))?;
    dir.check(&name, libc::S_IFSOCK)
        .map_err(|r| refused(pid, &dir, &name, r))?;
    // The path through the folder's descriptor: resolved in the folder
    // checked above, whatever its path is made of.
    let path = dir.fd_path(&name);
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(IpcError::Io(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.len() >= addr.sun_path.len() {
        return Err(IpcError::NoSocket(format!(
            "its path is longer than a socket address holds ({} bytes)",
            bytes.len()
        )));
    }
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: a valid sockaddr_un of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // EAGAIN: the listener's backlog is full; not waited on.
        return Err(IpcError::Io(io::Error::last_os_error()));
    }
    sock.set_nonblocking(false)?;
    set_deadline(&sock, deadline)?;
    Ok(sock)
}

/// Sets `sock`'s timeouts to what is left before `deadline` (failing once it
/// is past).
fn set_deadline(sock: &UnixStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the exchange took too long",
        ));
    }
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))
}

/// How long a process that was just started may take to open its diagnostics
/// socket: crossprof can see a .NET process (libcoreclr.so mapped) before the
/// runtime has created it (seen on 3.1.23, tens of milliseconds into start-up).
pub const SOCKET_WAIT: Duration = Duration::from_secs(2);

/// Waits up to [`SOCKET_WAIT`] for `pid`'s diagnostics socket; `false` if it never
/// appears (diagnostics disabled) or the process is gone.
pub fn wait_for_socket(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + SOCKET_WAIT;
    // The socket's name and folder do not change while it is awaited: found
    // once (each is a few /proc reads), then only the name checked per poll.
    let (mut name, mut dir) = (None, None);
    loop {
        if name.is_none() {
            name = socket_name(pid);
        }
        if dir.is_none() {
            dir = TargetDir::temp(pid).ok();
        }
        if let (Some(name), Some(dir)) = (&name, &dir)
            && dir.check(name, libc::S_IFSOCK).is_ok()
        {
            return true;
        }
        if std::time::Instant::now() >= deadline
            || !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a runtime's start-up may take to load its core library before
/// crossprof gives up asking for its perf map. A process held at start-up by
/// `DOTNET_DiagnosticPorts=...,suspend` waits for its monitor meanwhile.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// Has the runtime of `pid` mapped `System.Private.CoreLib.dll` (start-up is
/// then past `PerfMap::Initialize`)? `None` when the process is gone.
pub fn runtime_started(pid: u32) -> Option<bool> {
    let maps = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
    Some(
        maps.split(|&b| b == b'\n')
            .any(|line| line.ends_with(b"/System.Private.CoreLib.dll")),
    )
}

/// Waits until the runtime of `pid` has started far enough for
/// [`enable_perf_map`] (see the module's notes), polling its maps; gives up
/// after [`STARTUP_WAIT`], when the process is gone, or when `cancel` is set.
pub fn wait_for_startup(pid: u32, cancel: &std::sync::atomic::AtomicBool) -> Result<(), IpcError> {
    let start = std::time::Instant::now();
    loop {
        match runtime_started(pid) {
            Some(true) => return Ok(()),
            None => return Err(missing_socket(pid, None)),
            Some(false) => {}
        }
        if start.elapsed() >= STARTUP_WAIT || cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(IpcError::NotStarted(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks the runtime of `pid` to write its perf map from now on; call
/// [`wait_for_startup`] first.
pub fn enable_perf_map(pid: u32) -> Result<(), IpcError> {
    command(
        pid,
        ENABLE_PERF_MAP,
        &PERF_MAP_TYPE_ALL.to_le_bytes(),
        Instant::now() + TIMEOUT,
    )
}

/// Asks the runtime of `pid` to stop writing its perf map (crossprof is
/// stopping: at most [`STOP_TIMEOUT`]).
pub fn disable_perf_map(pid: u32) -> Result<(), IpcError> {
    command(pid, DISABLE_PERF_MAP, &[], Instant::now() + STOP_TIMEOUT)
}

/// A request message.
pub fn encode(command_set: u8, command_id: u8, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
    msg.extend_from_slice(MAGIC);
    msg.extend_from_slice(&((HEADER_LEN + payload.len()) as u16).to_le_bytes());
    msg.push(command_set);
    msg.push(command_id);
    msg.extend_from_slice(&0u16.to_le_bytes());
    msg.extend_from_slice(payload);
    msg
}

/// Reads a reply: `Ok` for an OK, the HRESULT for an error.
pub fn decode_reply(reply: &[u8]) -> Result<(), IpcError> {
    let bad =
        |what: &str| IpcError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()));
    if reply.len() < HEADER_LEN || &reply[..14] != MAGIC {
        return Err(bad("reply without the IPC header"));
    }
    if reply[16] != SERVER_COMMAND_SET {
        return Err(bad("reply is not from the server command set"));
    }
    if reply[17] == SERVER_OK {
        return Ok(());
    }
    let hresult = reply
        .get(HEADER_LEN..HEADER_LEN + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    Err(IpcError::Refused(hresult))
}

fn command(pid: u32, command_id: u8, payload: &[u8], deadline: Instant) -> Result<(), IpcError> {
    let mut sock = connect(pid, deadline)?;
    sock.write_all(&encode(PROCESS_COMMAND_SET, command_id, payload))?;
    decode_reply(&read_reply(&mut sock, deadline)?)
}

/// Reads exactly `buf.len()` bytes, before `deadline`.
fn read_exact_by(sock: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        set_deadline(sock, deadline)?;
        match sock.read(&mut buf[at..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one reply message (header and payload, at most 4 KiB of payload),
/// all of it before `deadline`.
pub fn read_reply(sock: &mut UnixStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_by(sock, &mut header, deadline)?;
    let total = usize::from(u16::from_le_bytes([header[14], header[15]]));
    let mut reply = header.to_vec();
    if total > HEADER_LEN {
        let mut rest = vec![0u8; (total - HEADER_LEN).min(4096)];
        read_exact_by(sock, &mut rest, deadline)?;
        reply.extend_from_slice(&rest);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_explained_by_the_cause_the_process_has() {
        let gone = missing_socket(u32::MAX - 1, None).to_string();
        assert!(gone.ends_with("the process exited"), "{gone}");
        let mut off = std::process::Command::new("sleep")
            .arg("5")
            .env("DOTNET_EnableDiagnostics", "0")
            .spawn()
            .unwrap();
        // A spawn may return before the new program's environment is set
        // up (the vfork parent resumes early in exec): wait for it.
        for _ in 0..100 {
            if std::fs::read(format!("/proc/{}/environ", off.id())).is_ok_and(|e| !e.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let why = missing_socket(off.id(), Some("/tmp/x".into())).to_string();
        assert!(
            why.contains("started with DOTNET_EnableDiagnostics=0"),
            "{why}"
        );
        let _ = off.kill();
        let _ = off.wait();
        let here = missing_socket(std::process::id(), Some("/tmp/x".into())).to_string();
        assert!(here.contains("none at /tmp/x"), "{here}");
    }

    #[test]
    fn requests_follow_the_ipc_header_layout() {
        let msg = encode(PROCESS_COMMAND_SET, ENABLE_PERF_MAP, &3u32.to_le_bytes());
        assert_eq!(&msg[..14], b"DOTNET_IPC_V1\0");
        assert_eq!(u16::from_le_bytes([msg[14], msg[15]]), 24);
        assert_eq!((msg[16], msg[17]), (0x04, 0x05));
        assert_eq!(&msg[18..20], &[0, 0]);
        assert_eq!(&msg[20..], &[3, 0, 0, 0]);
    }

    #[test]
    fn replies_are_ok_or_a_refusal_with_its_hresult() {
        let ok = encode(SERVER_COMMAND_SET, SERVER_OK, &0u32.to_le_bytes());
        assert!(decode_reply(&ok).is_ok());
        let err = encode(SERVER_COMMAND_SET, 0xFF, &0x8013_1384u32.to_le_bytes());
        assert!(matches!(
            decode_reply(&err),
            Err(IpcError::Refused(0x8013_1384))
        ));
        assert!(decode_reply(b"garbage").is_err());
    }
}
