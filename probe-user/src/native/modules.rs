//! The files processes map, each opened once through the first process
//! seen mapping it and shared by every process that maps it (by device and
//! inode), held open so that it is still the very file that ran when it is
//! symbolized (after its process exited, or the file was replaced).

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::maps::MapEntry;
use crate::{
    frame::ModuleId,
    go::pclntab::{GoTable, GoTables},
};

/// A mapped file, shared by every process that maps it.
#[derive(Debug)]
pub struct Module {
    /// The file's name, for display (`libc.so.6`).
    pub name: String,
    /// The path the process mapped it from.
    pub path: PathBuf,
    /// A path that opens the same file for as long as crossprof runs: the mapped
    /// path itself while it is that file, else `/proc/self/fd/N` of the handle
    /// kept open.
    pub open_path: PathBuf,
    handle: Option<File>,
}

impl Module {
    /// A .NET assembly (a PE `*.dll` the runtime maps), not an ELF object.
    pub fn is_assembly(&self) -> bool {
        self.name.ends_with(".dll")
    }

    /// The file itself, to read: a second descriptor of the one opened at
    /// first sight (through the process's view), so that what is read is
    /// what was mapped whatever the path became since; else (none could be
    /// opened then) the path opened now, non-blocking, if it is a regular
    /// file.
    pub fn open(&self) -> Option<File> {
        match &self.handle {
            Some(f) => f.try_clone().ok(),
            None => crate::files::open_regular(&self.open_path),
        }
    }
}

/// Is `path` the file `f` has open?
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Interns mapped files by device and inode.
#[derive(Debug, Default)]
pub struct ModuleTable {
    by_key: HashMap<(u32, u32, u64), ModuleId>,
    modules: Vec<Module>,
    /// Go function tables, read when first needed; shared with the symbolizer.
    pub go: GoTables,
}

impl ModuleTable {
    /// The module for `entry`, opened through `pid`'s view of it on first sight.
    pub(super) fn intern(
        &mut self,
        pid: u32,
        entry: &MapEntry,
        source: &crate::replay::source::ProcSource,
    ) -> ModuleId {
        let key = (entry.dev_major, entry.dev_minor, entry.inode);
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        let path = PathBuf::from(entry.path.trim_end_matches(" (deleted)"));
        // A replay's process is not there: the path only.
        let through_process = source.is_live().then(|| {
            [
                PathBuf::from(format!(
                    "/proc/{pid}/map_files/{:x}-{:x}",
                    entry.start, entry.end
                )),
                Path::new(&format!("/proc/{pid}/root"))
                    .join(path.strip_prefix("/").unwrap_or(&path)),
            ]
        });
        let handle = through_process
            .into_iter()
            .flatten()
            .chain([path.clone()])
            .find_map(|p| crate::files::open_regular(&p));
        // Symbolize through the path the process mapped when it is still that
        // very file: separate debug files (`.gnu_debuglink`) are looked for next
        // to it. Otherwise (replaced, deleted, another mount namespace) through
        // the handle kept open.
        let open_path = match &handle {
            Some(f) if same_file(f, &path) => path.clone(),
            Some(f) => PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
            None => path.clone(),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| entry.path.clone());
        source.opened(&entry.path, handle.as_ref());
        let id = ModuleId(self.modules.len() as u32);
        self.modules.push(Module {
            name,
            path,
            open_path,
            handle,
        });
        self.by_key.insert(key, id);
        id
    }

    /// The module of the file at `path`, for tests that classify or name
    /// frames of a file no process maps.
    #[cfg(test)]
    pub(crate) fn add_file(&mut self, path: &Path) -> ModuleId {
        let id = ModuleId(self.modules.len() as u32);
        self.modules.push(Module {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            open_path: path.to_path_buf(),
            handle: None,
        });
        id
    }

    /// The module behind `id`.
    pub fn get(&self, id: ModuleId) -> &Module {
        &self.modules[id.0 as usize]
    }

    /// The Go function table of `id`, if it is a Go binary (read once).
    pub fn go_table(&self, id: ModuleId) -> Option<Arc<GoTable>> {
        self.go.get(&self.modules.get(id.0 as usize)?.open_path)
    }

    /// Number of distinct files held.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// No module yet?
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}
