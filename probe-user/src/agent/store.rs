//! The agent's windows: each written to `--dir` as `ID.pb.gz` (pprof) and
//! `ID.folded`, files 0600 in a 0700 folder (profiles reveal code, command
//! lines and trace ids), with retention by age (`--retain`) and total size
//! (`--max-disk`), oldest first. The ID is the window's start in UTC,
//! `20261126T030512.345Z`, so names sort by time.
//!
//! The latest windows are also kept in memory (per process, with each frame's
//! kind for the colours), for the live page and for serving while the folder
//! cannot be written: a full disk or a read-only folder does not stop the
//! agent; it keeps up to [`MEMORY_WINDOWS`] windows in memory, drops the
//! oldest beyond, and says so in the log at most once a minute.
//!
//! The folder is held open and every file is reached relative to it
//! ([`OutFolder`]): written under a random name with `O_EXCL | O_NOFOLLOW`
//! and renamed into place, read and listed only if it is a regular file of
//! crossprof's own with one name. A `--dir` other users can write (or
//! own) cannot make the agent write through a planted link, nor serve a
//! planted link's or hard link's target at `/api/windows/ID/pprof`.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{error::UsageError, files::OutFolder, fold::Folded};

/// Windows kept in memory when they cannot be written (2 otherwise: the
/// latest and the one before, for the live page's comparison).
pub const MEMORY_WINDOWS: usize = 10;
/// How often a failing folder is reported.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A process in a window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMeta {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub comm: String,
    /// go, dotnet or native.
    pub runtime: &'static str,
    /// Its samples (on-CPU samples, or stacks counted in wall mode).
    pub samples: u64,
    /// A Go process's goroutines' time per state in the window, summed
    /// over them (`--go-state-sampling`): `running_ms`, `waiting_ms` per
    /// reason, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine_states: Option<crate::summary::StateTimes>,
}

/// The id of the window being counted, as `/api/windows` lists it.
pub const CURRENT: &str = "current";

/// What `/api/windows` lists of a window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowMeta {
    /// Its id (its start, UTC).
    pub id: String,
    /// Start and end, milliseconds since the Unix epoch (0: unknown, a
    /// window of an earlier run).
    pub start_unix_ms: u64,
    /// End.
    pub end_unix_ms: u64,
    /// Samples counted.
    pub samples: u64,
    /// Samples lost in the window (ring buffer full, undecodable).
    pub lost: u64,
    /// Its processes, most samples first (empty for an earlier run's).
    pub processes: Vec<ProcessMeta>,
    /// Bytes on disk (0: in memory only).
    pub bytes: u64,
    /// Written to the folder?
    pub on_disk: bool,
    /// Still in memory?
    pub in_memory: bool,
    /// The window being counted now (id `current`), as of `end_unix_ms`:
    /// listed last, never written; replaced by the whole window when cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// A window's profile.
#[derive(Debug)]
pub struct Window {
    /// What is listed of it.
    pub meta: WindowMeta,
    /// Folded stacks per process, with their frames' kinds.
    pub by_pid: BTreeMap<u32, Folded>,
    /// The gzipped pprof profile.
    pub pprof: Vec<u8>,
    /// The folded stacks of every process, as written.
    pub folded: Vec<u8>,
}

/// Every window: the folder's and the latest in memory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    folder: OutFolder,
    retain: Duration,
    max_disk: u64,
    /// On disk, oldest first: (id, bytes).
    disk: VecDeque<(String, u64)>,
    /// In memory, oldest first.
    recent: VecDeque<Window>,
    /// The window being counted, as of its last snapshot (see
    /// [`Store::set_current`]).
    current: Option<Window>,
    /// Windows dropped without being written, since the last report.
    dropped: u64,
    /// Windows kept in memory only, since the last report.
    unwritten: u64,
    /// The last write failure, and when it was last reported.
    failure: Option<(String, Option<Instant>)>,
}

impl Store {
    /// Opens (creates) the folder, mode 0700, and lists the windows an earlier
    /// run left in it.
    pub fn open(dir: &Path, retain: Duration, max_disk: u64) -> Result<Self, UsageError> {
        let err = |source: io::Error| UsageError::OutputDir {
            path: dir.to_path_buf(),
            source,
        };
        let folder = OutFolder::create(dir).map_err(err)?;
        // Ours to keep private, even if it existed (a read-only folder is
        // still profiled into memory).
        if let Err(e) = folder.make_private() {
            log::warn!("cannot make {} private (0700): {e}", dir.display());
        }
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if let Ok(st) = folder.stat()
            && st.st_uid != me
        {
            log::warn!(
                "{} belongs to uid {}: its windows are written and read safely, but that user can delete them; give the agent a folder of its own",
                dir.display(),
                st.st_uid
            );
        }
        let mut disk: Vec<(String, u64)> = Vec::new();
        for name in folder.names().map_err(err)? {
            if let Some(id) = name.strip_suffix(".pb.gz").filter(|id| is_id(id))
                && let Some(bytes) = window_bytes(&folder, id)
            {
                disk.push((id.to_owned(), bytes));
            }
        }
        disk.sort();
        let mut store = Self {
            dir: dir.to_path_buf(),
            folder,
            retain,
            max_disk,
            disk: disk.into(),
            recent: VecDeque::new(),
            current: None,
            dropped: 0,
            unwritten: 0,
            failure: None,
        };
        store.expire(0);
        Ok(store)
    }

    /// Adds a window: written to the folder (within the limits), kept in memory.
    pub fn add(&mut self, mut w: Window) {
        // The snapshot of this window is out of date: the next is taken
        // when asked for.
        self.current = None;
        let bytes = (w.pprof.len() + w.folded.len()) as u64;
        let oldest_kept = unix_ms().saturating_sub(self.retain.as_millis() as u64);
        if w.meta.start_unix_ms < oldest_kept {
            // Already older than --retain (a clock set back): not written.
        } else if bytes > self.max_disk {
            self.fail(format!(
                "a window of {bytes} bytes is larger than --max-disk {}",
                self.max_disk
            ));
        } else {
            self.expire(bytes);
            match self.write(&w) {
                Ok(()) => {
                    w.meta.on_disk = true;
                    w.meta.bytes = bytes;
                    self.disk.push_back((w.meta.id.clone(), bytes));
                    // Kept in time order (a window from a clock set back
                    // sorts first, and goes first).
                    self.disk.make_contiguous().sort();
                    if self.failure.take().is_some() {
                        log::warn!("{}: windows are written again", self.dir.display());
                    }
                }
                Err(e) => self.fail(format!("cannot write {}: {e}", self.dir.display())),
            }
        }
        if !w.meta.on_disk {
            self.unwritten += 1;
        }
        w.meta.in_memory = true;
        self.recent.push_back(w);
        // In memory: the last two windows, and up to MEMORY_WINDOWS of those
        // the folder does not hold.
        let n = self.recent.len();
        let mut kept = VecDeque::with_capacity(n);
        let mut unwritten = 0;
        for (i, w) in std::mem::take(&mut self.recent)
            .into_iter()
            .enumerate()
            .rev()
        {
            if w.meta.on_disk {
                if i + 2 >= n {
                    kept.push_front(w);
                }
            } else if unwritten < MEMORY_WINDOWS {
                unwritten += 1;
                kept.push_front(w);
            } else {
                self.dropped += 1;
            }
        }
        self.recent = kept;
        self.report();
    }

    /// Writes a window's two files, 0600, each through a temporary name.
    fn write(&self, w: &Window) -> io::Result<()> {
        for (ext, data) in [("pb.gz", &w.pprof), ("folded", &w.folded)] {
            if let Err(e) = self
                .folder
                .write_file(&format!("{}.{ext}", w.meta.id), data)
            {
                let _ = self.folder.remove(&format!("{}.pb.gz", w.meta.id));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the oldest windows until every one left is younger than
    /// `--retain` and `room` more bytes fit under `--max-disk`.
    fn expire(&mut self, room: u64) {
        let now_ms = unix_ms();
        let oldest_kept = now_ms.saturating_sub(self.retain.as_millis() as u64);
        let mut total: u64 = self.disk.iter().map(|(_, b)| b).sum();
        while let Some((id, bytes)) = self.disk.front() {
            let too_old = id_unix_ms(id).is_some_and(|t| t < oldest_kept);
            if !too_old && total + room <= self.max_disk {
                break;
            }
            for ext in ["pb.gz", "folded"] {
                let _ = self.folder.remove(&format!("{id}.{ext}"));
            }
            total -= bytes;
            self.disk.pop_front();
        }
        for w in &mut self.recent {
            if w.meta.on_disk && !self.disk.iter().any(|(id, _)| *id == w.meta.id) {
                w.meta.on_disk = false;
                w.meta.bytes = 0;
            }
        }
    }

    fn fail(&mut self, why: String) {
        match &mut self.failure {
            Some((known, _)) => *known = why,
            None => self.failure = Some((why, None)),
        }
    }

    /// Logs a write failure at most once a minute, with what it cost.
    fn report(&mut self) {
        let Some((why, last)) = &mut self.failure else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        log::warn!(
            "{why}: still profiling; {} window(s) kept in memory only, {} dropped since the last report (at most {MEMORY_WINDOWS} kept)",
            self.unwritten,
            self.dropped
        );
        *last = Some(Instant::now());
        self.unwritten = 0;
        self.dropped = 0;
    }

    /// Every window, oldest first.
    pub fn list(&self) -> Vec<WindowMeta> {
        let mut out: Vec<WindowMeta> = self
            .disk
            .iter()
            .filter(|(id, _)| !self.recent.iter().any(|w| w.meta.id == *id))
            .map(|(id, bytes)| WindowMeta {
                id: id.clone(),
                start_unix_ms: id_unix_ms(id).unwrap_or(0),
                end_unix_ms: 0,
                samples: 0,
                lost: 0,
                processes: Vec::new(),
                bytes: *bytes,
                on_disk: true,
                in_memory: false,
                partial: false,
            })
            .collect();
        out.extend(self.recent.iter().map(|w| w.meta.clone()));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(self.current.iter().map(|w| w.meta.clone()));
        out
    }

    /// Keeps `w` as the window being counted (id [`CURRENT`], marked
    /// partial), in place of the last snapshot; never written.
    pub fn set_current(&mut self, mut w: Window) {
        w.meta.id = CURRENT.to_owned();
        w.meta.partial = true;
        // Not one of the windows kept (in memory or on disk).
        w.meta.in_memory = false;
        w.meta.on_disk = false;
        self.current = Some(w);
    }

    /// When the window being counted was last snapshot, if it was.
    pub fn current_at_ms(&self) -> Option<u64> {
        self.current.as_ref().map(|w| w.meta.end_unix_ms)
    }

    /// The window `id` (`latest`: the newest) if in memory.
    pub fn recent(&self, id: &str) -> Option<&Window> {
        match id {
            // The newest whole window; the one being counted until there is one.
            "latest" | "" => self.recent.back().or(self.current.as_ref()),
            CURRENT => self.current.as_ref(),
            _ => self.recent.iter().find(|w| w.meta.id == id),
        }
    }

    /// The window before `id` in memory.
    pub fn previous(&self, id: &str) -> Option<&Window> {
        let i = match id {
            CURRENT => return self.recent.back().filter(|_| self.current.is_some()),
            "latest" | "" => self.recent.len().checked_sub(1)?,
            _ => self.recent.iter().position(|w| w.meta.id == id)?,
        };
        self.recent.get(i.checked_sub(1)?)
    }

    /// The pprof file of window `id` on disk.
    pub fn read_pprof(&self, id: &str) -> Option<Vec<u8>> {
        if !is_id(id) || !self.disk.iter().any(|(d, _)| d == id) {
            return None;
        }
        self.folder
            .read_own(&format!("{id}.pb.gz"), self.max_disk)
            .ok()
    }

    /// Windows on disk.
    pub fn windows_on_disk(&self) -> usize {
        self.disk.len()
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.iter().map(|(_, b)| b).sum()
    }
}

/// The bytes of window `id`'s files, if its pprof file is one crossprof
/// wrote (an entry someone else planted is not a window).
fn window_bytes(folder: &OutFolder, id: &str) -> Option<u64> {
    let pprof = folder.own_file_len(&format!("{id}.pb.gz"))?;
    Some(pprof + folder.own_file_len(&format!("{id}.folded")).unwrap_or(0))
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The window id of a start time: `YYYYMMDDTHHMMSS.mmmZ`, UTC.
pub fn window_id(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        unix_ms % 1000
    )
}

/// Is `s` a window id (so a request cannot name another file)?
pub fn is_id(s: &str) -> bool {
    id_unix_ms(s).is_some()
}

/// The start time a window id stands for.
pub fn id_unix_ms(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = id.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s, ms) = (num(9..11)?, num(11..13)?, num(13..15)?, num(16..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    Some(((days as u64 * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based
/// computation: 400-year eras of 146,097 days, years starting in March).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    #[test]
    fn window_ids_are_utc_times_that_sort() {
        assert_eq!(window_id(0), "19700101T000000.000Z");
        // 2026-11-26 03:05:12.345 UTC
        let t = 1_795_662_312_345;
        let id = window_id(t);
        assert_eq!(id, "20261126T030512.345Z");
        assert_eq!(id_unix_ms(&id), Some(t));
        assert_eq!(id_unix_ms("2024022 9T000000.000Z"), None);
        assert!(!is_id("../../etc/passwd"));
        assert_eq!(
            id_unix_ms(&window_id(951_782_400_000)),
            Some(951_782_400_000)
        ); // 2000-02-29
    }

    fn window(id_ms: u64, bytes: usize) -> Window {
        Window {
            meta: WindowMeta {
                id: window_id(id_ms),
                start_unix_ms: id_ms,
                end_unix_ms: id_ms + 1000,
                samples: 1,
                lost: 0,
                processes: Vec::new(),
                bytes: 0,
                on_disk: false,
                in_memory: false,
                partial: false,
            },
            by_pid: BTreeMap::new(),
            pprof: vec![1; bytes],
            folded: vec![b'x'; bytes],
        }
    }

    #[test]
    fn the_window_being_counted_is_listed_last_until_a_whole_one_is_added() {
        let dir = std::env::temp_dir().join(format!("crossprof-current-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, Duration::from_secs(86_400), 1 << 20).unwrap();
        let now = unix_ms();
        store.set_current(window(now, 10));
        let list = store.list();
        assert_eq!(list.len(), 1);
        assert!(list[0].partial && list[0].id == CURRENT && !list[0].in_memory);
        assert!(
            store.recent("").is_some_and(|w| w.meta.partial),
            "latest until a whole one"
        );
        assert!(store.previous(CURRENT).is_none());
        assert_eq!(store.current_at_ms(), Some(now + 1000));
        store.add(window(now, 10));
        assert_eq!(store.current_at_ms(), None, "a whole window replaces it");
        store.set_current(window(now + 1000, 10));
        let list = store.list();
        assert_eq!(list.len(), 2);
        assert!(!list[0].partial && list[1].partial, "{list:?}");
        assert!(store.recent("latest").is_some_and(|w| !w.meta.partial));
        assert!(store.recent(CURRENT).is_some_and(|w| w.meta.partial));
        assert_eq!(store.previous(CURRENT).unwrap().meta.id, window_id(now));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "one window written (pprof and folded), the partial never"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_keeps_the_folder_under_max_disk_oldest_first() {
        let dir = std::env::temp_dir().join(format!("crossprof-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, Duration::from_secs(86_400), 10_000).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let now = unix_ms();
        for i in 0..20 {
            store.add(window(now + i * 1000, 1000)); // 2,000 bytes a window
            assert!(store.disk_bytes() <= 10_000);
            let on_disk: u64 = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.metadata().unwrap().len())
                .sum();
            assert!(on_disk <= 10_000, "{on_disk} bytes in the folder");
        }
        let list = store.list();
        assert_eq!(list.len(), 5, "the newest five fit");
        assert_eq!(list.last().unwrap().id, window_id(now + 19_000));
        let f = dir.join(format!("{}.pb.gz", window_id(now + 19_000)));
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
        // Already older than --retain: not written.
        let old = window(now - 90_000_000, 10);
        store.add(old);
        assert!(
            !store
                .list()
                .iter()
                .any(|w| w.id == window_id(now - 90_000_000) && w.on_disk)
        );
        // An earlier run's windows are found again.
        let again = Store::open(&dir, Duration::from_secs(86_400), 10_000).unwrap();
        assert_eq!(again.list().len(), 5);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_folder_keeps_windows_in_memory_bounded() {
        let dir = std::env::temp_dir().join(format!("crossprof-store-ro-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, Duration::from_secs(86_400), 1 << 30).unwrap();
        fs::remove_dir_all(&dir).unwrap(); // writes now fail
        let now = unix_ms();
        for i in 0..30 {
            store.add(window(now + i * 1000, 100));
        }
        assert_eq!(store.recent.len(), MEMORY_WINDOWS);
        assert!(store.recent("latest").is_some());
        assert!(store.list().iter().all(|w| !w.on_disk && w.in_memory));
    }

    /// A folder another user can write: a link or a hard link planted under
    /// a window's name is neither listed nor served, and one planted at a
    /// name a window is written to is replaced, never written through.
    #[test]
    fn planted_links_are_neither_served_nor_written_through() {
        let dir =
            std::env::temp_dir().join(format!("crossprof-store-links-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let secret = std::env::temp_dir().join(format!("crossprof-secret-{}", std::process::id()));
        fs::write(&secret, "secret").unwrap();
        let now = unix_ms();
        let (linked, hard, written) =
            (window_id(now - 3000), window_id(now - 2000), window_id(now));
        std::os::unix::fs::symlink(&secret, dir.join(format!("{linked}.pb.gz"))).unwrap();
        fs::hard_link(&secret, dir.join(format!("{hard}.pb.gz"))).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join(format!("{written}.pb.gz"))).unwrap();
        let mut store = Store::open(&dir, Duration::from_secs(86_400), 1 << 30).unwrap();
        assert!(store.list().is_empty(), "{:?}", store.list());
        assert_eq!(store.read_pprof(&linked), None);
        assert_eq!(store.read_pprof(&hard), None);
        store.add(window(now, 100));
        assert_eq!(fs::read_to_string(&secret).unwrap(), "secret");
        assert!(
            fs::symlink_metadata(dir.join(format!("{written}.pb.gz")))
                .unwrap()
                .is_file()
        );
        assert_eq!(store.read_pprof(&written).map(|p| p.len()), Some(100));
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&secret).unwrap();
    }
}
