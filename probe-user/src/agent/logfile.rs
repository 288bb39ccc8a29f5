//! The agent's log: stderr, or `--log-file` (appended to, reopened on SIGHUP
//! so that logrotate can move it away).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::error::UsageError;

static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Opens (creates, 0600) the log to append to it: never through a link,
/// never blocking on a FIFO, and only a regular file of crossprof's own user
/// with one name (in a folder other users can write, a planted link or hard
/// link would have root append to a file of the planter's choosing).
fn open_file(path: &Path) -> io::Result<File> {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.nlink() != 1 || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "not a regular file of uid {me} with one name (uid {}, {} names): remove it or name another",
                meta.uid(),
                meta.nlink()
            ),
        ));
    }
    // Blocking writes from here on (a regular file never blocks anyway).
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) };
    Ok(file)
}

/// Sends the log to `path` from now on.
pub fn open(path: &Path) -> Result<(), UsageError> {
    let file = open_file(path).map_err(|source| UsageError::LogFile {
        path: path.to_path_buf(),
        source,
    })?;
    *FILE.lock().expect("log file") = Some((path.to_path_buf(), file));
    Ok(())
}

/// Reopens the log file (SIGHUP); on failure keeps writing to the old one.
pub fn reopen() {
    let mut guard = FILE.lock().expect("log file");
    if let Some((path, file)) = guard.as_mut() {
        match open_file(path) {
            Ok(f) => *file = f,
            Err(e) => {
                let _ = writeln!(file, "crossprof: cannot reopen {}: {e}", path.display());
            }
        }
    }
}

/// Where log lines go: the log file if one is open, else stderr.
#[derive(Debug, Clone, Copy)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match FILE.lock().expect("log file").as_mut() {
            Some((_, f)) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match FILE.lock().expect("log file").as_mut() {
            Some((_, f)) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// Writes one line, `crossprof: MSG`, to the log whatever its level.
pub fn say(msg: &str) {
    let _ = Sink.write_all(format!("crossprof: {msg}\n").as_bytes());
}
