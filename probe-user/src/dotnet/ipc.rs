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
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

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
/// How long a command may take to be answered.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Why an IPC command failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// No diagnostics socket: diagnostics disabled (`DOTNET_EnableDiagnostics=0`)
    /// or the process is gone.
    #[error("no diagnostics socket (DOTNET_EnableDiagnostics=0, or the process exited)")]
    NoSocket,
    /// The socket did not answer as the protocol says.
    #[error("diagnostics IPC: {0}")]
    Io(#[from] io::Error),
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

/// The diagnostics socket of `pid`, seen through the process's own root, if
/// it is there. Its name holds the process's start time as its
/// disambiguation key (`dotnet-diagnostic-PID-STARTTICKS-socket`, checked on
/// 8.0.4 and 3.1.23: `/proc/PID/stat` field 22): a process killed leaves its
/// socket behind, and one of a process that had the same pid before answers
/// "connection refused" (found by CI: /tmp held 127 such sockets).
pub fn socket_path(pid: u32) -> Option<PathBuf> {
    let start = super::start_ticks(pid)?;
    let path = PathBuf::from(format!(
        "/proc/{pid}/root/tmp/dotnet-diagnostic-{pid}-{start}-socket"
    ));
    path.exists().then_some(path)
}

/// How long a process that was just started may take to open its diagnostics
/// socket: crossprof can see a .NET process (libcoreclr.so mapped) before the
/// runtime has created it (seen on 3.1.23, tens of milliseconds into start-up).
pub const SOCKET_WAIT: Duration = Duration::from_secs(2);

/// Waits up to [`SOCKET_WAIT`] for `pid`'s diagnostics socket; `false` if it never
/// appears (diagnostics disabled) or the process is gone.
pub fn wait_for_socket(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + SOCKET_WAIT;
    loop {
        if socket_path(pid).is_some() {
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
            None => return Err(IpcError::NoSocket),
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
    command(pid, ENABLE_PERF_MAP, &PERF_MAP_TYPE_ALL.to_le_bytes())
}

/// Asks the runtime of `pid` to stop writing its perf map.
pub fn disable_perf_map(pid: u32) -> Result<(), IpcError> {
    command(pid, DISABLE_PERF_MAP, &[])
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

fn command(pid: u32, command_id: u8, payload: &[u8]) -> Result<(), IpcError> {
    let path = socket_path(pid).ok_or(IpcError::NoSocket)?;
    let mut sock = UnixStream::connect(&path)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    sock.write_all(&encode(PROCESS_COMMAND_SET, command_id, payload))?;
    decode_reply(&read_reply(&mut sock)?)
}

/// Reads one reply message (header and payload, at most 4 KiB of payload).
pub fn read_reply(sock: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    sock.read_exact(&mut header)?;
    let total = usize::from(u16::from_le_bytes([header[14], header[15]]));
    let mut reply = header.to_vec();
    if total > HEADER_LEN {
        let mut rest = vec![0u8; (total - HEADER_LEN).min(4096)];
        sock.read_exact(&mut rest)?;
        reply.extend_from_slice(&rest);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

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
