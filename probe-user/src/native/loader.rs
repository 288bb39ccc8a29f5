//! The objects the dynamic loader will map for a program, found before the
//! program runs: its interpreter (`PT_INTERP`, read from `.interp`) and its
//! `DT_NEEDED` libraries, transitively, searched as ld.so searches them
//! (`DT_RPATH` when there is no `DT_RUNPATH`, `LD_LIBRARY_PATH`,
//! `DT_RUNPATH`, then the system folders; `$ORIGIN` expanded). See ld.so(8).
//!
//! `record -- CMD` reads these objects' unwind rules before CMD starts
//! ([`super::unwind::UnwindTables::prefetch`]): once it has exec'd, only its
//! mappings are left to write, so its first samples are walked like the rest
//! (a large libc's rules take a while to read, longer still in a slow VM).
//! A miss here costs nothing but time: the rules of what the process really
//! maps are read when it is seen, as for any process.

use std::path::{Path, PathBuf};

use super::elf::{Elf, MappedFile};
use crate::le::u64_at;

/// At most this many objects are looked for (a program with more still gets
/// the rest's rules when it is seen).
const MAX_OBJECTS: usize = 64;

/// The folders searched after the ones a program names: Debian's multiarch
/// folders (from `/etc/ld.so.conf.d/x86_64-linux-gnu.conf`), then the
/// loader's built-in ones. `/etc/ld.so.cache` is not read: a library found
/// only through it is simply not read early.
const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What an ELF object asks of the loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `PT_INTERP` (an executable's dynamic loader).
    pub interp: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` folders (colon lists, unexpanded).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` folders (colon lists, unexpanded).
    pub runpath: Vec<String>,
}

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// [`Needs`] of the ELF file `d`, from its `.interp`, `.dynamic` and
/// `.dynstr` sections (bounded by the file: a hostile header yields less,
/// never a panic).
pub fn needs(d: &[u8]) -> Needs {
    let Some(elf) = Elf::parse(d) else {
        return Needs::default();
    };
    let c_str = |bytes: &[u8]| {
        let s = bytes.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(s).into_owned()
    };
    let mut needs = Needs {
        interp: elf.section_data(d, ".interp").map(c_str),
        ..Needs::default()
    };
    let (Some(dynamic), Some(strings)) = (
        elf.section_data(d, ".dynamic"),
        elf.section_data(d, ".dynstr"),
    ) else {
        return needs;
    };
    for entry in dynamic.chunks_exact(16) {
        let (Some(tag), Some(value)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
            break;
        };
        if tag == DT_NULL {
            break;
        }
        let Some(text) = usize::try_from(value)
            .ok()
            .and_then(|at| strings.get(at..))
            .map(c_str)
        else {
            continue;
        };
        match tag {
            DT_NEEDED => needs.needed.push(text),
            DT_RPATH => needs.rpath.push(text),
            DT_RUNPATH => needs.runpath.push(text),
            _ => {}
        }
    }
    needs
}

/// The objects the loader will map for the executable at `program` (for a
/// script, its `#!` interpreter's): itself, its interpreter and the libraries it needs, transitively (canonical
/// paths, each once, at most `MAX_OBJECTS`); `library_path` is the
/// `LD_LIBRARY_PATH` it will run with. Unreadable objects are left out.
pub fn objects_loaded_by(program: &Path, library_path: Option<&str>) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    let Ok(program) = std::fs::canonicalize(program) else {
        return found;
    };
    let mut queue = std::collections::VecDeque::from([program]);
    while let Some(path) = queue.pop_front() {
        if found.contains(&path) || found.len() >= MAX_OBJECTS {
            continue;
        }
        let Some(file) = MappedFile::open(&path) else {
            continue;
        };
        // A script: its interpreter is what runs (`#!/bin/sh -e`).
        if let Some(line) = file.bytes().strip_prefix(b"#!") {
            let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(&line[..line.len().min(256)]).into_owned();
            if let Some(interp) = line.split_whitespace().next()
                && let Ok(interp) = std::fs::canonicalize(interp)
            {
                queue.push_back(interp);
            }
            continue;
        }
        let needs = needs(file.bytes());
        let origin = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        found.push(path);
        if let Some(interp) = needs.interp.as_deref()
            && let Ok(interp) = std::fs::canonicalize(interp)
        {
            queue.push_back(interp);
        }
        let expand = |list: &[String]| -> Vec<PathBuf> {
            list.iter()
                .flat_map(|l| l.split(':'))
                .filter(|d| !d.is_empty())
                .map(|d| {
                    PathBuf::from(
                        d.replace("${ORIGIN}", &origin.to_string_lossy())
                            .replace("$ORIGIN", &origin.to_string_lossy()),
                    )
                })
                .collect()
        };
        let mut dirs = Vec::new();
        if needs.runpath.is_empty() {
            dirs.extend(expand(&needs.rpath));
        }
        dirs.extend(
            library_path
                .map(|l| expand(&[l.to_owned()]))
                .unwrap_or_default(),
        );
        dirs.extend(expand(&needs.runpath));
        dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
        for name in &needs.needed {
            // A name with a slash is a path (relative to the working folder).
            let candidates: Vec<PathBuf> = if name.contains('/') {
                vec![PathBuf::from(name)]
            } else {
                dirs.iter().map(|d| d.join(name)).collect()
            };
            if let Some(lib) = candidates
                .iter()
                .find_map(|c| std::fs::canonicalize(c).ok().filter(|c| c.is_file()))
            {
                queue.push_back(lib);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_loads_its_interpreter_and_libc() {
        // Any dynamically linked program of the system: sh is in every image.
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let objects = objects_loaded_by(&sh, None);
        assert_eq!(objects.first(), Some(&sh), "{objects:?}");
        let names: Vec<String> = objects
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        // What the loader really maps for it, read from a running copy.
        let mut child = std::process::Command::new(&sh)
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        for line in maps.lines().filter(|l| l.contains(" r-xp ")) {
            let Some(path) = line
                .split_whitespace()
                .nth(5)
                .filter(|p| p.starts_with('/'))
            else {
                continue;
            };
            assert!(
                objects.contains(&PathBuf::from(path)),
                "{path} is mapped but was not found: {objects:?}"
            );
        }
    }

    #[test]
    fn a_script_loads_its_interpreter() {
        let dir = std::env::temp_dir().join(format!("crossprof-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("run.sh");
        std::fs::write(&script, "#!/bin/sh -e\nexit 0\n").unwrap();
        let objects = objects_loaded_by(&script, None);
        std::fs::remove_dir_all(&dir).unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(objects.first(), Some(&sh), "{objects:?}");
        assert!(!objects.contains(&script), "{objects:?}");
        assert!(
            objects.iter().any(|p| p.ends_with("libc.so.6")),
            "{objects:?}"
        );
    }

    #[test]
    fn needs_are_read_from_the_dynamic_section_and_bad_bytes_give_none() {
        let libc = std::fs::read(
            objects_loaded_by(&std::fs::canonicalize("/bin/sh").unwrap(), None)
                .into_iter()
                .find(|p| p.ends_with("libc.so.6"))
                .unwrap(),
        )
        .unwrap();
        let n = needs(&libc);
        assert!(n.needed.iter().any(|l| l.starts_with("ld-linux")), "{n:?}");
        let sh = needs(&std::fs::read("/bin/sh").unwrap());
        assert!(
            sh.interp.as_deref().is_some_and(|i| i.contains("ld-linux")),
            "{sh:?}"
        );
        assert_eq!(needs(b"\x7fELF\x02\x01garbage"), Needs::default());
        for cut in [0, 64, 1000, libc.len() / 2] {
            let _ = needs(&libc[..cut]);
        }
    }
}
