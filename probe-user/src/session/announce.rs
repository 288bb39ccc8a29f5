//! Processes the kernel announces — a target's `exec`, code a target maps —
//! read the moment they are announced, on a thread of their own.
//!
//! The sample pipeline is one thread, and some of its work takes tens of
//! milliseconds (the first read of a Go binary's tables, a burst of
//! records). A process that lives a few milliseconds (a build's compiler, a
//! script's `sed`) has exited by the time it gets to the process's `exec`:
//! its maps are gone, and every sample of it would be `[unknown]`. So the
//! kernel sends announcements on a ring of their own
//! (`probe_common::names::ANNOUNCE`), and [`Announcer`]'s thread reads each
//! announced process's `/proc` files at once (a few tens of microseconds)
//! into [`AnnouncedReads`], where the process table finds them if the
//! process has exited when it reads it. The records themselves are then
//! handed to the pipeline, which takes them before the ring's samples, as
//! it took them when they came on the sample ring.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use crate::replay::source::{AnnouncedReads, ProcRead};

/// How long the thread waits for an announcement before it looks whether
/// it is asked to stop.
const POLL_MS: i32 = 100;

/// Most announcement records waiting for the pipeline; beyond, the oldest
/// are dropped (the reads they caused are kept: the pipeline reads a process
/// at its first sample anyway).
const MAX_WAITING: usize = 16 << 10;

/// The announcements' thread, and the records it hands to the pipeline.
pub(crate) struct Announcer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Records read off the ring, for the pipeline, oldest first.
    waiting: Mutex<Vec<Vec<u8>>>,
    /// Woken when records wait.
    notify: tokio::sync::Notify,
    stop: AtomicBool,
}

impl Announcer {
    /// Starts the thread reading `ring` into `reads`.
    pub(crate) fn start(ring: RingBuf<MapData>, reads: AnnouncedReads) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::new()),
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("crossprof-announce".into())
            .spawn({
                let shared = shared.clone();
                move || run(ring, &reads, &shared)
            })?;
        Ok(Announcer {
            shared,
            thread: Some(thread),
        })
    }

    /// Resolves when records wait (cancel-safe).
    pub(crate) async fn notified(&self) {
        self.shared.notify.notified().await;
    }

    /// The records waiting, oldest first.
    pub(crate) fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.shared.waiting.lock().expect("announcements"))
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long after its `exec` a process's mapped code is read here too (its
/// libraries, mapped by the dynamic loader before `main`): a process that
/// has lived longer has been read by the pipeline, which re-reads it itself
/// (a .NET process loading assemblies for minutes costs no read here).
const YOUNG: Duration = Duration::from_secs(1);

/// The thread: waits for the ring, reads each announced process once per
/// batch (a `dlopen` of a library and its dependencies announces several
/// mappings at once) if it is young, keeps the reads, hands the records on.
fn run(mut ring: RingBuf<MapData>, reads: &AnnouncedReads, shared: &Shared) {
    let fd = ring.as_fd().as_raw_fd();
    // Processes by the time their exec was announced.
    let mut young: HashMap<u32, Instant> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if n <= 0 {
            continue;
        }
        let mut records = Vec::new();
        let mut pids = BTreeSet::new();
        let now = Instant::now();
        young.retain(|_, at| now.duration_since(*at) < YOUNG);
        while let Some(item) = ring.next() {
            match announced(&item) {
                Some((pid, true)) => {
                    young.insert(pid, now);
                    pids.insert(pid);
                }
                Some((pid, false)) if young.contains_key(&pid) => {
                    pids.insert(pid);
                }
                _ => {}
            }
            records.push(item.to_vec());
        }
        for pid in pids {
            reads.keep(ProcRead::live(pid));
        }
        if records.is_empty() {
            continue;
        }
        {
            let mut waiting = shared.waiting.lock().expect("announcements");
            waiting.extend(records);
            if waiting.len() > MAX_WAITING {
                let over = waiting.len() - MAX_WAITING;
                waiting.drain(..over);
            }
        }
        shared.notify.notify_one();
    }
}

/// The process an announcement is about, and whether it is its `exec`: an
/// `Exec` or `MapsChanged` record (`probe_common::native::MapsChanged`),
/// whatever else the bytes hold.
fn announced(item: &[u8]) -> Option<(u32, bool)> {
    use probe_common::RecordKind;
    let word = |at: usize| {
        item.get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let kind = word(0)?;
    let exec = kind == RecordKind::Exec as u32;
    (exec || kind == RecordKind::MapsChanged as u32)
        .then(|| word(4))
        .flatten()
        .filter(|&pid| pid != 0)
        .map(|pid| (pid, exec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, pid: u32) -> Vec<u8> {
        [kind.to_ne_bytes(), pid.to_ne_bytes()].concat()
    }

    #[test]
    fn announcements_name_their_process_and_nothing_else_does() {
        use probe_common::RecordKind;
        assert_eq!(
            announced(&record(RecordKind::Exec as u32, 42)),
            Some((42, true))
        );
        assert_eq!(
            announced(&record(RecordKind::MapsChanged as u32, 7)),
            Some((7, false))
        );
        assert_eq!(announced(&record(RecordKind::Exec as u32, 0)), None);
        assert_eq!(announced(&record(RecordKind::CpuSample as u32, 42)), None);
        assert_eq!(announced(&[1, 2, 3]), None, "short");
        assert_eq!(announced(&record(RecordKind::Exec as u32, 9)[..6]), None);
    }
}
