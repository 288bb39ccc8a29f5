//! Files crossprof touches as root beside other users' processes, each guarded
//! against what those users can plant.
//!
//! **A target's files** (its perf map, jitdump, diagnostics socket: what the
//! .NET runtime writes in its temp folder) are reached through the target's
//! own root, found once as a folder handle (`openat2` with `RESOLVE_IN_ROOT`:
//! a link there cannot lead out of the target's root), then opened relative to
//! it with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checked with `fstat`: a
//! regular file (a FIFO would block an `open` or a `read`; a link is refused
//! by the open), owned by the target's user (or root for a root target: a
//! file another user planted is not the runtime's). Reads are bounded.
//!
//! **Outputs** go into a folder a user named, which others may be able to
//! write: each file is created under a random name with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` (never an existing file, never through a link), mode 0600, and
//! renamed into place relative to the folder's handle (a rename replaces a
//! planted link or hard link, never writes through it).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// Why a target's file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// It does not exist (yet).
    #[error("it does not exist")]
    Missing,
    /// It is a symbolic link (planted: the runtime writes plain files).
    #[error("it is a symbolic link")]
    Link,
    /// It is not a regular file (a FIFO, a device, a folder...).
    #[error("it is not a regular file ({0})")]
    NotRegular(&'static str),
    /// Another user owns it.
    #[error("it belongs to uid {found}, not to the process's user (uid {expected})")]
    Owner {
        /// Its owner.
        found: u32,
        /// The target's user.
        expected: u32,
    },
    /// Anything else.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// `struct open_how` (include/uapi/linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `RESOLVE_IN_ROOT`: resolve as if the folder were `/` (absolute links and
/// `..` stay inside it). Linux 5.6.
const RESOLVE_IN_ROOT: u64 = 0x10;
/// `RESOLVE_NO_MAGICLINKS`: no `/proc/PID/fd`-style links on the way.
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// `openat2(dir, path, how)`.
fn openat2(dir: RawFd, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: a NUL-terminated path and an `open_how` of the size passed,
    // both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `openat(dir, name, flags)` for one component.
fn openat(dir: RawFd, name: &str, flags: i32, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated name alive for the call.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(fd)`.
fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the struct it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never what it
/// points to.
fn lstatat(dir: RawFd, name: &str) -> io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fstatat fills the struct it is given; the name is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The kind of a file mode, for messages.
fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "folder",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "unknown kind",
    }
}

/// The user a process's files belong to: its filesystem uid (`Uid:` in
/// `/proc/PID/status`, fourth field), which the kernel gives the files it
/// creates.
pub fn process_fsuid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "Uid:")?.nth(3)?.parse().ok()
}

/// The values of the `key` line (`Uid:`, `NSpid:`) of a `/proc/PID/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<std::str::SplitWhitespace<'a>> {
    Some(
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace(),
    )
}

/// The pid process `pid` (as crossprof sees it) has in its own pid namespace:
/// the last of `NSpid:` in its status (Linux 4.1+), `pid` itself outside a
/// container. A runtime names its files by the pid it sees: a .NET process
/// that is pid 1 in a container writes `/tmp/perf-1.map` and listens on
/// `dotnet-diagnostic-1-...-socket` inside its own /tmp.
pub fn own_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| parse_own_pid(&status))
        .unwrap_or(pid)
}

/// [`own_pid`]'s reading of a status file's text.
pub fn parse_own_pid(status: &str) -> Option<u32> {
    status_field(status, "NSpid:")?.last()?.parse().ok()
}

/// Opens `path` to read it if it is a regular file: never blocking (the path
/// of a mapping, or a debug file next to a user's binary, can be replaced by
/// a FIFO after it was looked at, and a blocking open of one with no writer
/// never returns).
pub fn open_regular(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}

/// Most of a process's environment read (`/proc/PID/environ`: what it was
/// started with; a variable past this is not seen).
const ENVIRON_LIMIT: u64 = 1 << 20;

/// The environment process `pid` was started with (`/proc/PID/environ`,
/// read up to 1 MiB), read once for every variable a caller looks up in it
/// ([`env_value`]).
pub fn initial_environ(pid: u32) -> Option<Vec<u8>> {
    let mut environ = Vec::new();
    File::open(format!("/proc/{pid}/environ"))
        .ok()?
        .take(ENVIRON_LIMIT)
        .read_to_end(&mut environ)
        .ok()?;
    Some(environ)
}

/// The value of `key` in `environ` (`KEY=VALUE` entries, NUL-separated), if
/// set.
pub fn env_value<'a>(environ: &'a [u8], key: &str) -> Option<&'a [u8]> {
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
}

/// A folder a runtime was told about through its environment (`value`, the
/// variable's), as a path inside the process's root: an absolute path without
/// NUL; anything else (unset, empty, relative) is `/tmp`.
pub fn folder_in_root(value: Option<&[u8]>) -> &Path {
    match value {
        Some(v) if v.starts_with(b"/") && !v.contains(&0) => {
            Path::new(std::ffi::OsStr::from_bytes(v))
        }
        _ => Path::new("/tmp"),
    }
}

/// A folder of a target process's (its temp folder, or where it writes its
/// perf maps), opened once through its own root.
#[derive(Debug)]
pub struct TargetDir {
    dir: OwnedFd,
    /// The process's user: its files must be theirs.
    pub owner: u32,
    /// The folder as the process sees it (`/tmp`), for messages.
    pub shown: String,
}

impl TargetDir {
    /// The temp folder of process `pid`, inside its root: `$TMPDIR` as it
    /// started, else `/tmp` (the .NET runtime's: its diagnostics socket goes
    /// there; checked on .NET 8.0, where the socket and the debugger's pipes
    /// follow `TMPDIR`, and the perf map and jitdump do not: see
    /// [`TargetDir::perf_maps`]).
    pub fn temp(pid: u32) -> io::Result<Self> {
        let environ = initial_environ(pid).unwrap_or_default();
        Self::in_root(pid, folder_in_root(env_value(&environ, "TMPDIR")))
    }

    /// Where the .NET runtime of process `pid` writes its perf map, perfinfo
    /// and jitdump: `DOTNET_PerfMapJitDumpPath` (or its `COMPlus_` spelling)
    /// as it started, else `/tmp` (not `$TMPDIR`: checked on .NET 8.0).
    pub fn perf_maps(pid: u32) -> io::Result<Self> {
        let environ = initial_environ(pid).unwrap_or_default();
        let path = env_value(&environ, "DOTNET_PerfMapJitDumpPath")
            .or_else(|| env_value(&environ, "COMPlus_PerfMapJitDumpPath"));
        Self::in_root(pid, folder_in_root(path))
    }

    /// The folder `path` (absolute, as process `pid` sees it) inside its root.
    fn in_root(pid: u32, path: &Path) -> io::Result<Self> {
        let owner = process_fsuid(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such process"))?;
        let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
        let inside = path.strip_prefix("/").unwrap_or(path);
        let inside = if inside.as_os_str().is_empty() {
            Path::new(".")
        } else {
            inside
        };
        let dir = openat2(
            root.as_raw_fd(),
            inside,
            libc::O_PATH | libc::O_DIRECTORY,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )?;
        let shown = path.display().to_string();
        Ok(Self { dir, owner, shown })
    }

    /// `name` in this folder, for messages (`/tmp/perf-1.map`).
    pub fn show(&self, name: &str) -> String {
        format!("{}/{name}", self.shown.trim_end_matches('/'))
    }

    /// A folder at `path` whose files must belong to `owner` (tests, and
    /// folders crossprof is told about).
    pub fn at(path: &Path, owner: u32) -> io::Result<Self> {
        let dir = openat2(
            libc::AT_FDCWD,
            path,
            libc::O_PATH | libc::O_DIRECTORY,
            RESOLVE_NO_MAGICLINKS,
        )?;
        let shown = path.display().to_string();
        Ok(Self { dir, owner, shown })
    }

    /// `/proc/self/fd/N` of the folder: a path to files in it that no link
    /// can redirect (for the calls that only take paths, such as `connect`).
    pub fn fd_path(&self, name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }

    /// Checks `name` as a file of the target's: not a link, the kind `want`
    /// (`S_IFREG`, `S_IFSOCK`), the target's user's (or root's for a root
    /// target).
    pub fn check(&self, name: &str, want: libc::mode_t) -> Result<(), Refused> {
        let st = match lstatat(self.dir.as_raw_fd(), name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::Missing),
            Err(e) => return Err(Refused::Io(e)),
        };
        self.judge(&st, want)
    }

    fn judge(&self, st: &libc::stat, want: libc::mode_t) -> Result<(), Refused> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => Err(Refused::Link),
            m if m != want => Err(Refused::NotRegular(kind(st.st_mode))),
            _ if st.st_uid != self.owner => Err(Refused::Owner {
                found: st.st_uid,
                expected: self.owner,
            }),
            _ => Ok(()),
        }
    }

    /// Opens `name` to read it: never through a link, never blocking (a FIFO
    /// is refused, not waited on), only a regular file of the target's user.
    pub fn open_file(&self, name: &str) -> Result<File, Refused> {
        let fd = match openat(
            self.dir.as_raw_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Refused::Link),
            Err(e) => return Err(Refused::Io(e)),
        };
        let st = fstat(fd.as_raw_fd())?;
        self.judge(&st, libc::S_IFREG)?;
        Ok(File::from(fd))
    }

    /// Creates `name`, empty, as a file of the target's user (mode 0600):
    /// never over an existing entry, never through a link.
    pub fn create_for_owner(&self, name: &str) -> Result<(), Refused> {
        let fd = match openat(
            self.dir.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Refused::Link),
            Err(e) => return Err(Refused::Io(e)),
        };
        // SAFETY: fchown of the descriptor just made; -1 keeps the group.
        if unsafe { libc::fchown(fd.as_raw_fd(), self.owner, u32::MAX) } != 0 {
            let e = io::Error::last_os_error();
            let _ = self.remove_any(name);
            return Err(Refused::Io(e));
        }
        Ok(())
    }

    /// Removes the entry `name` (a file crossprof just made).
    fn remove_any(&self, name: &str) -> io::Result<()> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name alive for the call.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `name` if it is still a regular file of the target's user (a
    /// file crossprof caused; never a link, never someone else's).
    pub fn remove(&self, name: &str) -> Result<(), Refused> {
        self.check(name, libc::S_IFREG)?;
        Ok(self.remove_any(name)?)
    }
}

/// What a process may read: its user, its groups.
#[derive(Debug, Clone)]
pub struct Reader {
    uid: u32,
    gids: Vec<u32>,
}

impl Reader {
    /// Process `pid`'s filesystem uid and its groups (`/proc/PID/status`).
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let uid = *field("Uid:").get(3)?;
        let mut gids = field("Groups:");
        gids.extend(field("Gid:").get(3));
        Some(Self { uid, gids })
    }

    /// Could this process read a file of these owner and mode bits? Root
    /// reads all.
    pub fn may_read(&self, st: &libc::stat) -> bool {
        self.uid == 0
            || (st.st_uid == self.uid && st.st_mode & libc::S_IRUSR != 0)
            || (self.gids.contains(&st.st_gid) && st.st_mode & libc::S_IRGRP != 0)
            || st.st_mode & libc::S_IROTH != 0
    }
}

/// Reads the file a process names at `path` (its assemblies, their PDBs:
/// paths that come from the process itself), as the process sees it: resolved
/// inside its root (no link leads out), a regular file (never a FIFO or a
/// device: `/dev/zero` named as a PDB is refused, not read), one the process
/// itself could read, at most `max` bytes.
pub fn read_in_root(pid: u32, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, _) = open_in_root(pid, path, max)?;
    read_at_most(&file, 0, max)
}

/// Opens the file a process names at `path` as [`read_in_root`] reads it
/// (its root, no link out, a regular file it could read, at most `max`
/// bytes), and says which file it is (its `stat`).
pub fn open_in_root(pid: u32, path: &Path, max: u64) -> io::Result<(File, libc::stat)> {
    let reader = Reader::of(pid).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    let fd = openat2(
        root.as_raw_fd(),
        path,
        libc::O_RDONLY | libc::O_NONBLOCK,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )?;
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(st.st_mode)),
        ));
    }
    if !reader.may_read(&st) {
        return Err(io::Error::from(io::ErrorKind::PermissionDenied));
    }
    if st.st_size as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        ));
    }
    Ok((File::from(fd), st))
}

/// A file in a target's folder.
#[derive(Debug, Clone)]
pub struct TargetFile {
    /// The folder.
    pub dir: std::sync::Arc<TargetDir>,
    /// The file's name in it.
    pub name: String,
}

impl TargetFile {
    /// Opens it (see [`TargetDir::open_file`]).
    pub fn open(&self) -> Result<File, Refused> {
        self.dir.open_file(&self.name)
    }
}

/// Reads from `file` at `offset` at most `max` bytes, with `pread` (the
/// file's own offset untouched; nothing there: one call returning 0).
pub fn read_at_most(file: &File, offset: u64, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; max.min(16 << 10) as usize];
    while (buf.len() as u64) < max {
        let want = (max - buf.len() as u64).min(chunk.len() as u64) as usize;
        match file.read_at(&mut chunk[..want], offset + buf.len() as u64) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// 16 random bytes as hex, for names no one can guess ahead.
pub fn random_name() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most the buffer's length into it.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No entropy source: the time and pid still make a name O_EXCL
        // protects (a guessed name only fails the create).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An output folder, held open: files are created and renamed relative to it.
#[derive(Debug)]
pub struct OutFolder {
    dir: OwnedFd,
    /// The folder as the user named it.
    pub path: std::path::PathBuf,
    /// Who gets the files (`SUDO_UID`/`SUDO_GID` when run through sudo, so
    /// that the user who asked can open them; else root keeps them).
    owner: Option<(u32, u32)>,
}

impl OutFolder {
    /// Opens the folder `path` (which must exist), not through a link whose
    /// final component another user owns.
    pub fn open(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            use std::os::unix::fs::MetadataExt as _;
            let (uid, mine) = (meta.uid(), invoking_uid());
            if uid != 0 && Some(uid) != mine {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("it is a symbolic link owned by uid {uid}, another user"),
                ));
            }
        }
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path alive for the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a new descriptor nothing else owns.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
            owner: sudo_owner(),
        })
    }

    /// Creates a new file under a random name (mode 0600, never an existing
    /// file, never through a link) for writing; returns it with its name.
    pub fn create_temp(&self, stem: &str) -> io::Result<(File, String)> {
        for _ in 0..8 {
            let name = format!(".{stem}.{}.tmp", random_name());
            match openat(
                self.dir.as_raw_fd(),
                &name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            ) {
                Ok(fd) => {
                    if let Some((uid, gid)) = self.owner {
                        // SAFETY: plain fchown of the descriptor just made.
                        unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
                    }
                    return Ok((File::from(fd), name));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists))
    }

    /// Renames `from` to `to` inside the folder (replacing whatever entry
    /// `to` was: a planted link or hard link is replaced, not written through).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (
            CString::new(from).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            CString::new(to).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        );
        let d = self.dir.as_raw_fd();
        // SAFETY: NUL-terminated names alive for the call.
        if unsafe { libc::renameat(d, a.as_ptr(), d, b.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes the entry `name` of the folder (never what a link points to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name alive for the call.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The folder opened for reading (the held handle is `O_PATH`, which
    /// fsync, fchmod, fchown and listing refuse).
    fn readable(&self) -> io::Result<OwnedFd> {
        openat(
            self.dir.as_raw_fd(),
            ".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
    }

    /// Makes the folder's own entries durable (after renames).
    pub fn sync(&self) {
        if let Ok(fd) = self.readable() {
            // SAFETY: fsync of a descriptor of ours.
            unsafe { libc::fsync(fd.as_raw_fd()) };
        }
    }

    /// Creates the folder `path` (mode 0700, with its parents) when it is
    /// missing, and opens it as [`OutFolder::open`] does.
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            Ok(()) => {}
            // A link to a folder, or a file: `open` judges it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Self::open(path)
    }

    /// The folder's owner and mode.
    pub fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.dir.as_raw_fd())
    }

    /// Makes the folder private (0700): a folder of root's own keeps its
    /// files' names from other users.
    pub fn make_private(&self) -> io::Result<()> {
        let fd = self.readable()?;
        // SAFETY: fchmod of a descriptor of ours.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The folder's entries' names (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let fd = self.readable()?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Whether `st` is a file crossprof wrote here: a regular file (not a
    /// link, FIFO or device) with one name (not a hard link another user
    /// made to a file of root's), owned by crossprof's user (or the sudo
    /// user it gives its files to). A user who can write the folder can
    /// plant entries, never files of root's.
    fn ours(&self, st: &libc::stat) -> bool {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_nlink == 1
            && (st.st_uid == me || self.owner.is_some_and(|(uid, _)| uid == st.st_uid))
    }

    /// The size of `name` if it is a file crossprof wrote (see `ours`).
    pub fn own_file_len(&self, name: &str) -> Option<u64> {
        let st = lstatat(self.dir.as_raw_fd(), name).ok()?;
        self.ours(&st).then_some(st.st_size as u64)
    }

    /// Opens `name` to read it, if it is a file crossprof wrote (see
    /// `ours`): never through a link, never blocking.
    pub fn open_own(&self, name: &str) -> io::Result<File> {
        let fd = openat(
            self.dir.as_raw_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        if !self.ours(&st) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a {} of uid {} with {} name(s), not a file crossprof wrote",
                    self.path.join(name).display(),
                    kind(st.st_mode),
                    st.st_uid,
                    st.st_nlink
                ),
            ));
        }
        Ok(File::from(fd))
    }

    /// Reads `name` whole, at most `max` bytes, if crossprof wrote it.
    pub fn read_own(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_own(name)?.take(max).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Writes `data` as `name`: a new file under a random name, synced,
    /// renamed into place (see [`OutFolder::create_temp`]).
    pub fn write_file(&self, name: &str, data: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        let (mut file, temp) = self.create_temp(name)?;
        let written = file
            .write_all(data)
            .and_then(|()| file.sync_data())
            .and_then(|()| self.rename(&temp, name));
        if written.is_err() {
            let _ = self.remove(&temp);
        }
        written
    }

    /// The subfolder `name`, made (0700) if missing; refused unless it is a
    /// folder of crossprof's user that no one else may write (another
    /// user's folder could be filled with entries crossprof would read).
    pub fn subfolder(&self, name: &str) -> io::Result<Self> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name alive for the call.
        if unsafe { libc::mkdirat(self.dir.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        let fd = openat(
            self.dir.as_raw_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me || st.st_mode & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {} with mode {:o}: not a private folder of uid {me}",
                    self.path.join(name).display(),
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(Self {
            dir: fd,
            path: self.path.join(name),
            owner: None,
        })
    }

    /// Gives the folder to the sudo user, like its files (see `owner`).
    pub fn chown_to_invoker(&self) {
        if let Some((uid, gid)) = self.owner
            && let Ok(fd) = self.readable()
        {
            // SAFETY: plain fchown of a descriptor of ours.
            unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
        }
    }
}

/// The user who ran crossprof: `SUDO_UID` under sudo, else the real uid.
fn invoking_uid() -> Option<u32> {
    std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.parse().ok())
        // SAFETY: getuid cannot fail.
        .or_else(|| Some(unsafe { libc::getuid() }))
}

/// `SUDO_UID`/`SUDO_GID`, when crossprof runs as root through sudo.
fn sudo_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    #[test]
    fn own_pid_is_the_innermost_of_nspid() {
        let host = "Name:\tdotnet\nPid:\t4711\nNSpid:\t4711\t1\nUid:\t0\t0\t0\t0\n";
        assert_eq!(parse_own_pid(host), Some(1));
        assert_eq!(parse_own_pid("NSpid:\t4711\n"), Some(4711));
        assert_eq!(parse_own_pid("NSpid:\t900\t45\t7\n"), Some(7));
        // No NSpid (before Linux 4.1) or garbage: the caller keeps the pid.
        assert_eq!(parse_own_pid("Pid:\t4711\n"), None);
        assert_eq!(parse_own_pid("NSpid:\tx\n"), None);
    }

    #[test]
    fn open_regular_refuses_a_fifo_without_waiting_for_a_writer() {
        let d = scratch("open_regular");
        let fifo = d.join("planted.debug");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_regular(&fifo).is_none());
        std::fs::write(d.join("plain"), "x").unwrap();
        assert!(open_regular(&d.join("plain")).is_some());
        assert!(open_regular(&d).is_none(), "a folder");
    }

    #[test]
    fn an_environment_variable_is_found_whole_and_by_its_exact_name() {
        let environ = b"PATH=/bin\0TMPDIR=/var/tmp/app\0TMPDIR_OLD=/x\0EMPTY=\0";
        assert_eq!(env_value(environ, "TMPDIR"), Some(&b"/var/tmp/app"[..]));
        assert_eq!(env_value(environ, "EMPTY"), Some(&b""[..]));
        assert_eq!(env_value(environ, "TMP"), None);
        assert_eq!(env_value(environ, "MPDIR"), None);
        assert_eq!(env_value(b"", "TMPDIR"), None);
        // A value with `=` in it is kept whole.
        assert_eq!(env_value(b"A=b=c\0", "A"), Some(&b"b=c"[..]));
    }

    #[test]
    fn a_folder_from_the_environment_is_absolute_or_tmp() {
        assert_eq!(
            folder_in_root(Some(b"/var/tmp/app")),
            Path::new("/var/tmp/app")
        );
        assert_eq!(folder_in_root(Some(b"relative/dir")), Path::new("/tmp"));
        assert_eq!(folder_in_root(Some(b"")), Path::new("/tmp"));
        assert_eq!(folder_in_root(None), Path::new("/tmp"));
    }

    #[test]
    fn a_process_temp_folder_follows_its_tmpdir() {
        let me = std::process::id();
        let t = TargetDir::temp(me).unwrap();
        let expected = std::env::var("TMPDIR")
            .ok()
            .filter(|v| v.starts_with('/'))
            .unwrap_or_else(|| "/tmp".into());
        assert_eq!(t.shown, expected);
        assert_eq!(t.show("x"), format!("{}/x", expected.trim_end_matches('/')));
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("crossprof-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temp_files_are_new_private_and_renamed_into_place() {
        let d = scratch("out");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // A link planted where the output goes is replaced, not written through.
        symlink(&victim, d.join("profile.folded")).unwrap();
        let out = OutFolder::open(&d).unwrap();
        let (mut f, tmp) = out.create_temp("profile.folded").unwrap();
        std::io::Write::write_all(&mut f, b"a;b 1\n").unwrap();
        out.rename(&tmp, "profile.folded").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let written = d.join("profile.folded");
        assert!(
            !std::fs::symlink_metadata(&written)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "a;b 1\n");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_ne!(random_name(), random_name());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_targets_links_fifos_and_others_files_are_refused() {
        let pid = std::process::id();
        let t = TargetDir::temp(pid).unwrap();
        let d = std::env::temp_dir();
        let name = |what: &str| format!("crossprof-files-{what}-{pid}");
        let _ = std::fs::remove_file(d.join(name("link")));
        symlink("/etc/hostname", d.join(name("link"))).unwrap();
        assert!(matches!(t.open_file(&name("link")), Err(Refused::Link)));
        let fifo = d.join(name("fifo"));
        let _ = std::fs::remove_file(&fifo);
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Refused at once, never waited on.
        assert!(matches!(
            t.open_file(&name("fifo")),
            Err(Refused::NotRegular("FIFO"))
        ));
        std::fs::write(d.join(name("mine")), "x").unwrap();
        assert!(t.open_file(&name("mine")).is_ok());
        assert!(matches!(t.open_file(&name("none")), Err(Refused::Missing)));
        // A file of another user's, as a root target sees one.
        let other = TargetDir {
            dir: t.dir.try_clone().unwrap(),
            owner: t.owner + 1,
            shown: t.shown.clone(),
        };
        assert!(matches!(
            other.open_file(&name("mine")),
            Err(Refused::Owner { .. })
        ));
        assert!(matches!(
            other.remove(&name("mine")),
            Err(Refused::Owner { .. })
        ));
        t.remove(&name("mine")).unwrap();
        for n in ["link", "fifo"] {
            let _ = std::fs::remove_file(d.join(name(n)));
        }
    }
}
