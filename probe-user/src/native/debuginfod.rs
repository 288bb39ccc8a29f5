//! A debuginfod client (the protocol elfutils' `debuginfod` serves and
//! Debian, Fedora and Ubuntu run public servers of): `GET
//! URL/buildid/<hex build id>/debuginfo` returns the separate debug file of the
//! binary with that GNU build id. Off by default (`--debuginfod`); the servers
//! are `DEBUGINFOD_URLS` (space-separated, as elfutils reads it).
//!
//! What it fetches is checked before use: an ELF file whose build id is the
//! binary's, no larger than `MAX_FILE`. Fetched files are kept in a folder
//! only root can write (`/var/cache/crossprof/debuginfod/<id>.debug`, 0600 in a
//! 0700 folder, at most `MAX_CACHE` of them, the files used longest ago
//! removed first), read again by later runs without asking; a build id no server
//! has is not asked again in this run. Each request gives up after
//! `REQUEST_TIMEOUT`, and a run spends at most `BUDGET` waiting on servers:
//! naming (on the symbolizer thread) never waits long for a slow one.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where fetched debug files are kept.
pub const CACHE_DIR: &str = "/var/cache/crossprof/debuginfod";
/// The longest a request may take (connecting, and reading the file).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The most a run waits on servers, all requests together.
const BUDGET: Duration = Duration::from_secs(60);
/// The largest debug file fetched (a large C++ library's are hundreds of MiB).
const MAX_FILE: u64 = 1 << 30;
/// The most the cache folder holds: past it, the files used longest ago go
/// (an agent runs for months beside processes that come and go).
const MAX_CACHE: u64 = 4 << 30;

/// Why a debuginfod setting is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DebuginfodError {
    /// `--debuginfod` without servers to ask.
    #[error(
        "--debuginfod needs the servers in DEBUGINFOD_URLS (space-separated), e.g. DEBUGINFOD_URLS=https://debuginfod.debian.net"
    )]
    NoServers,
    /// A server that is not an http(s) URL.
    #[error("DEBUGINFOD_URLS holds {0:?}, which is not an http:// or https:// URL")]
    BadUrl(String),
}

/// The servers in `urls` (a `DEBUGINFOD_URLS` value), each without a
/// trailing slash.
pub fn servers(urls: Option<&str>) -> Result<Vec<String>, DebuginfodError> {
    let list: Vec<String> = urls
        .unwrap_or_default()
        .split_whitespace()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    if list.is_empty() {
        return Err(DebuginfodError::NoServers);
    }
    if let Some(bad) = list.iter().find(|u| {
        !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_control)
    }) {
        return Err(DebuginfodError::BadUrl(bad.clone()));
    }
    Ok(list)
}

/// A client: its servers, its cache, what it has spent.
pub struct Client {
    servers: Vec<String>,
    cache: PathBuf,
    agent: ureq::Agent,
    /// Build ids no server had (or whose answer was refused), this run.
    missing: std::collections::HashSet<String>,
    /// Time spent waiting on servers so far.
    spent: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `servers` keeping files in `cache` (created 0700).
    pub fn new(servers: Vec<String>, cache: &Path) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(3)
            .http_status_as_error(false)
            .user_agent(concat!("crossprof/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            servers,
            cache: cache.to_path_buf(),
            agent: ureq::Agent::new_with_config(config),
            missing: Default::default(),
            spent: Duration::ZERO,
        }
    }

    /// The debug file of build id `id` (lower-case hex): from the cache, else
    /// fetched from the first server that has it and kept; `None` if none
    /// has it, the budget is spent, or what came is not its debug file.
    pub fn debug_file(&mut self, id: &str) -> Option<std::fs::File> {
        if id.len() < 16 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let cached = self.cache.join(format!("{id}.debug"));
        if let Some(f) = super::elf::open_with_build_id(&cached, Some(id)) {
            // Used now: the last the cache's bound removes.
            let _ = f.set_modified(std::time::SystemTime::now());
            return Some(f);
        }
        if self.missing.contains(id) || self.spent >= BUDGET {
            return None;
        }
        let started = Instant::now();
        let fetched = self.fetch(id, &cached);
        self.spent += started.elapsed();
        match fetched {
            Some(f) => Some(f),
            None => {
                self.missing.insert(id.to_owned());
                None
            }
        }
    }

    /// Asks each server in turn; keeps the first good answer at `to`.
    fn fetch(&mut self, id: &str, to: &Path) -> Option<std::fs::File> {
        ensure_private_dir(&self.cache).ok()?;
        for server in &self.servers {
            let url = format!("{server}/buildid/{id}/debuginfo");
            let Ok(mut response) = self.agent.get(&url).call() else {
                log::debug!("debuginfod: {url}: no answer");
                continue;
            };
            if response.status() != 200 {
                log::debug!("debuginfod: {url}: {}", response.status());
                continue;
            }
            let partial = self
                .cache
                .join(format!(".{id}.{}.part", std::process::id()));
            let written = write_private(&partial, |out| {
                let mut body = response.body_mut().with_config().limit(MAX_FILE).reader();
                std::io::copy(&mut body, out).map(|_| ())
            });
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
                continue;
            }
            if super::elf::open_with_build_id(&partial, Some(id)).is_none() {
                log::debug!("debuginfod: {url}: not the debug file of {id}");
                let _ = std::fs::remove_file(&partial);
                continue;
            }
            if std::fs::rename(&partial, to).is_err() {
                let _ = std::fs::remove_file(&partial);
                continue;
            }
            log::debug!("debuginfod: {id} from {server}");
            trim_cache(&self.cache, MAX_CACHE, to);
            return super::elf::open_with_build_id(to, Some(id));
        }
        None
    }
}

/// Makes `dir` (and its parents) if missing, and checks it is a folder only
/// root reaches: owned by root, mode 0700 (set on the last component), not a
/// link.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let md = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != me {
        return Err(std::io::Error::other("not a folder of ours"));
    }
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` (0600, failing if anything is there) and fills it with
/// `fill`.
fn write_private(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    fill(&mut f)?;
    f.flush()
}

/// Removes the cached debug files used longest ago (by modification time,
/// which a use sets) until the folder holds at most `max` bytes of them;
/// never `keep`, the one just added. Only regular `*.debug` files are
/// counted or removed.
fn trim_cache(dir: &Path, max: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "debug"))
        .filter_map(|e| {
            let md = std::fs::symlink_metadata(e.path()).ok()?;
            if !md.is_file() {
                return None;
            }
            Some((md.modified().ok()?, md.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// `DEBUGINFOD_URLS` as elfutils reads it.
pub fn urls_from_env() -> Option<String> {
    std::env::var("DEBUGINFOD_URLS").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_read_as_elfutils_reads_them() {
        assert_eq!(
            servers(Some(" https://a.example/ http://b:8002 ")),
            Ok(vec![
                "https://a.example".to_owned(),
                "http://b:8002".to_owned()
            ])
        );
        assert_eq!(servers(None), Err(DebuginfodError::NoServers));
        assert_eq!(servers(Some("  ")), Err(DebuginfodError::NoServers));
        assert_eq!(
            servers(Some("file:///srv")),
            Err(DebuginfodError::BadUrl("file:///srv".into()))
        );
    }

    #[test]
    fn the_cache_keeps_under_its_bound_the_files_used_last() {
        let dir = std::env::temp_dir().join(format!("crossprof-dcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(1000);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let path = dir.join(format!("{name}.debug"));
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(10 * i as u64))
                .unwrap();
        }
        std::fs::write(dir.join("notes.txt"), vec![0u8; 1000]).unwrap();
        // "a" is the oldest but was just added: kept; "b" and "c" go.
        trim_cache(&dir, 200, &dir.join("a.debug"));
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.debug", "d.debug", "notes.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_another_build_id_or_none_is_refused_and_ids_are_hex() {
        let dir = std::env::temp_dir().join(format!("crossprof-debuginfod-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut client = Client::new(vec!["http://127.0.0.1:9".into()], &dir);
        // Not hex, or too short: never a path.
        assert!(client.debug_file("../../etc/passwd").is_none());
        assert!(client.debug_file("abcd").is_none());
        // A cached file is used only if it is that build id's.
        ensure_private_dir(&dir).unwrap();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let id = super::super::elf::build_id_in(&exe).expect("a build id");
        std::fs::write(dir.join(format!("{id}.debug")), &exe).unwrap();
        assert!(client.debug_file(&id).is_some(), "the cached file");
        let other = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(dir.join(format!("{other}.debug")), &exe).unwrap();
        assert!(client.debug_file(other).is_none(), "another id's file");
        // A server that does not answer: no file, and not asked again.
        assert!(client.missing.contains(other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
