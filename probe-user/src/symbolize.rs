//! Naming frames, off the hot path.
//!
//! Stacks are aggregated as [`FrameRef`]s: kernel addresses, offsets into mapped
//! files, or markers. A frame is sent for naming the first time it is seen, to a
//! dedicated thread that owns the long-lived symbol caches (blazesym's
//! `Symbolizer` is not `Send`), so names are ready by the time the recording stops
//! and stop-to-SVG stays short. Each runtime adds its own sources here.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use crate::{
    dotnet::r2r::R2rImage,
    frame::{FrameRef, INLINE_SEPARATOR, Marker, ModuleId, Source, sanitize},
    go::pclntab::{GoTable, GoTables},
    native::{
        process::{ModuleTable, ProcessTable},
        symbols::NativeSymbols,
    },
};

/// Names found so far.
#[derive(Debug, Default)]
pub struct Names {
    names: HashMap<FrameRef, Arc<str>>,
    /// Source lines where known: one per function the frame's name holds
    /// (outermost first, as [`INLINE_SEPARATOR`] splits it).
    sources: HashMap<FrameRef, Arc<[Option<Source>]>>,
    /// Frames looked up that no symbol covered.
    pub unnamed: u64,
    /// The file offset of the function an unnamed native frame is in (by
    /// its unwind info's FDE): shown as `[file+START]`, so that one unnamed
    /// function is one frame, not one per sampled address.
    function_starts: HashMap<FrameRef, u64>,
}

impl Names {
    /// How `frame` reads: its symbol, or what is known of it (`[libc.so.6+0x1234]`,
    /// the start of its function where the unwind info bounds it, else its own
    /// offset; `[unknown]`). Never empty, never with `;` or a line break (folded syntax).
    pub fn display<'a>(&'a self, frame: FrameRef, procs: &'a ProcessTable) -> Cow<'a, str> {
        if let Some(name) = self.names.get(&frame) {
            return Cow::Borrowed(name);
        }
        let modules = &procs.modules;
        match frame {
            FrameRef::Managed(id) => Cow::Owned(sanitize(procs.managed_name(id)).into_owned()),
            FrameRef::Thread(id) => Cow::Owned(sanitize(procs.thread_name(id)).into_owned()),
            FrameRef::Goroutine(0) => Cow::Borrowed("[no goroutine]"),
            FrameRef::Goroutine(id) => Cow::Owned(format!("goroutine {id}")),
            FrameRef::Label(id) => Cow::Owned(sanitize(procs.label_text(id)).into_owned()),
            FrameRef::Kernel(_) => Cow::Borrowed(Marker::Unknown.label()),
            FrameRef::Elf { module, offset } => Cow::Owned(format!(
                "[{}+{:#x}]",
                sanitize(&modules.get(module).name),
                self.function_starts.get(&frame).copied().unwrap_or(offset)
            )),
            FrameRef::Marker(m) => Cow::Borrowed(m.label()),
        }
    }

    /// Records `frame`'s name (`None`: no symbol covered it).
    pub(crate) fn insert(&mut self, frame: FrameRef, name: Option<String>) {
        match name {
            Some(name) if !name.is_empty() => {
                // Each frame of an inlined chain on its own: the separator
                // is crossprof's, a control character inside a name is not.
                let clean: Vec<Cow<'_, str>> = name.split(INLINE_SEPARATOR).map(sanitize).collect();
                self.names
                    .insert(frame, clean.join(&INLINE_SEPARATOR.to_string()).into());
            }
            _ => self.unnamed += 1,
        }
    }

    /// The source lines of `frame`, one per function its name holds
    /// (outermost first), if any is known.
    pub fn sources(&self, frame: FrameRef) -> Option<&[Option<Source>]> {
        self.sources.get(&frame).map(|s| &s[..])
    }

    /// Forgets every name (the agent's bound on memory: what is still sampled
    /// is named again).
    pub fn clear(&mut self) {
        self.names.clear();
        self.sources.clear();
        self.function_starts.clear();
    }

    /// Was `frame` named?
    pub fn has(&self, frame: FrameRef) -> bool {
        self.names.contains_key(&frame)
    }

    /// Number of named frames.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Nothing named yet?
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

enum Job {
    Kernel(Vec<u64>),
    Elf {
        module: ModuleId,
        path: PathBuf,
        offsets: Vec<u64>,
    },
    /// A .NET assembly (PE file): its ReadyToRun code (see `dotnet::r2r`),
    /// read through `file` (see `Module::open`).
    Assembly {
        module: ModuleId,
        path: PathBuf,
        file: Option<std::fs::File>,
        offsets: Vec<u64>,
    },
}

/// Each frame's name, source lines, and (unnamed native code) the file
/// offset of the function it is in, by its unwind info.
type Batch = Vec<(
    FrameRef,
    Option<String>,
    Option<Arc<[Option<Source>]>>,
    Option<u64>,
)>;

/// Names of file offsets `offsets` of the ELF file at `path`. A Go binary
/// (`go` is its table) is named from its own table, stripped or not, inlined
/// calls included; what the table does not cover, the C functions linked into
/// a binary built with cgo, from the ELF symbols like any other file.
pub(crate) fn elf_names(
    go: Option<&GoTable>,
    native: &NativeSymbols,
    path: &Path,
    offsets: &[u64],
) -> Vec<Option<String>> {
    let Some(table) = go else {
        return native.elf(path, offsets);
    };
    let mut names: Vec<Option<String>> = offsets
        .iter()
        .map(|&o| crate::go::name_of(table, o))
        .collect();
    let outside: Vec<u64> = offsets
        .iter()
        .zip(&names)
        .filter(|(_, name)| name.is_none())
        .map(|(&o, _)| o)
        .collect();
    if !outside.is_empty() {
        let mut found = native.elf(path, &outside).into_iter();
        for name in names.iter_mut().filter(|n| n.is_none()) {
            *name = found.next().flatten();
        }
    }
    names
}

/// The symbolizer thread and the names it has sent back.
pub struct SymbolizerThread {
    jobs: Option<mpsc::Sender<Job>>,
    /// Jobs sent whose batch has not come back.
    pending: usize,
    results: mpsc::Receiver<Batch>,
    handle: Option<JoinHandle<crate::native::kallsyms::Read>>,
    /// What has come back.
    pub names: Names,
    /// Where kernel names came from (known once [`SymbolizerThread::finish`]ed).
    pub kernel_read: crate::native::kallsyms::Read,
}

impl SymbolizerThread {
    /// Starts the thread; separate debug files are also looked for in `debug_dirs`,
    /// and Go binaries are named from the tables in `go` (shared with the pipeline).
    pub fn spawn(
        debug_dirs: Vec<PathBuf>,
        kallsyms: Option<PathBuf>,
        go: GoTables,
        debuginfod: Option<Vec<String>>,
    ) -> Self {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("crossprof-sym".into())
            .spawn(move || {
                let mut native = NativeSymbols::new(&debug_dirs);
                if let Some(path) = kallsyms {
                    native.use_kallsyms(path);
                }
                if let Some(servers) = debuginfod {
                    native.use_debuginfod(
                        servers,
                        std::path::Path::new(crate::native::debuginfod::CACHE_DIR),
                    );
                }
                let mut assemblies: HashMap<PathBuf, Option<R2rImage>> = HashMap::new();
                for job in job_rx {
                    let batch: Batch = match job {
                        Job::Kernel(addrs) => {
                            let names = native.kernel(&addrs);
                            addrs
                                .into_iter()
                                .map(FrameRef::Kernel)
                                .zip(names)
                                .map(|(f, n)| (f, n, None, None))
                                .collect()
                        }
                        Job::Elf {
                            module,
                            path,
                            offsets,
                        } => {
                            let table = go.get(&path);
                            if table.is_none() {
                                // Native: names and, where DWARF says, lines.
                                let named = native.elf_sourced(&path, &offsets);
                                let unnamed: Vec<u64> = offsets
                                    .iter()
                                    .zip(&named)
                                    .filter(|(_, (name, _))| name.is_none())
                                    .map(|(&o, _)| o)
                                    .collect();
                                let mut starts =
                                    native.function_starts(&path, &unnamed).into_iter();
                                offsets
                                    .into_iter()
                                    .zip(named)
                                    .map(|(offset, (name, source))| {
                                        let sources = source.map(|(file, line)| {
                                            Arc::from([Some((Arc::from(file.as_str()), line))])
                                        });
                                        let start = if name.is_none() {
                                            starts.next().flatten()
                                        } else {
                                            None
                                        };
                                        (FrameRef::Elf { module, offset }, name, sources, start)
                                    })
                                    .collect()
                            } else {
                                let names = elf_names(table.as_deref(), &native, &path, &offsets);
                                offsets
                                    .into_iter()
                                    .zip(names)
                                    .map(|(offset, name)| {
                                        let sources = table
                                            .as_deref()
                                            .and_then(|t| crate::go::sources_of(t, offset));
                                        (FrameRef::Elf { module, offset }, name, sources, None)
                                    })
                                    .collect()
                            }
                        }
                        Job::Assembly {
                            module,
                            path,
                            file,
                            offsets,
                        } => {
                            // Read once per file, bounded; a file that is not a
                            // ReadyToRun image names nothing.
                            let image = assemblies.entry(path).or_insert_with_key(|path| {
                                let image = file
                                    .and_then(|f| {
                                        crate::files::read_at_most(
                                            &f,
                                            0,
                                            crate::dotnet::MAX_ASSEMBLY,
                                        )
                                        .ok()
                                    })
                                    .and_then(|data| R2rImage::parse(&data).ok());
                                log::debug!(
                                    "{}: {} ReadyToRun methods named",
                                    path.display(),
                                    image.as_ref().map_or(0, R2rImage::len)
                                );
                                image
                            });
                            offsets
                                .into_iter()
                                .map(|offset| {
                                    let name = image
                                        .as_ref()
                                        .and_then(|i| i.name_at_file_offset(offset))
                                        .map(str::to_owned);
                                    (FrameRef::Elf { module, offset }, name, None, None)
                                })
                                .collect()
                        }
                    };
                    if result_tx.send(batch).is_err() {
                        break;
                    }
                }
                native.kernel_read()
            })
            .expect("spawn the symbolizer thread");
        Self {
            jobs: Some(jobs),
            pending: 0,
            results,
            handle: Some(handle),
            names: Names::default(),
            kernel_read: Default::default(),
        }
    }

    /// Queues `frames` (each seen for the first time) for naming, one batch per file.
    pub fn submit(&mut self, frames: &[FrameRef], modules: &ModuleTable) {
        let Some(jobs) = &self.jobs else { return };
        let mut kernel = Vec::new();
        let mut per_module: BTreeMap<ModuleId, Vec<u64>> = BTreeMap::new();
        for &f in frames {
            match f {
                FrameRef::Kernel(a) => kernel.push(a),
                FrameRef::Elf { module, offset } => {
                    per_module.entry(module).or_default().push(offset)
                }
                FrameRef::Managed(_)
                | FrameRef::Thread(_)
                | FrameRef::Goroutine(_)
                | FrameRef::Label(_)
                | FrameRef::Marker(_) => {}
            }
        }
        if !kernel.is_empty() && jobs.send(Job::Kernel(kernel)).is_ok() {
            self.pending += 1;
        }
        for (module, offsets) in per_module {
            let m = modules.get(module);
            let path = m.open_path.clone();
            let job = if m.is_assembly() {
                Job::Assembly {
                    module,
                    file: m.open(),
                    path,
                    offsets,
                }
            } else {
                Job::Elf {
                    module,
                    path,
                    offsets,
                }
            };
            if jobs.send(job).is_ok() {
                self.pending += 1;
            }
        }
    }

    /// Waits for every queued job's names (the thread keeps running).
    pub fn flush(&mut self) {
        while self.pending > 0 {
            match self.results.recv() {
                Ok(batch) => self.take(batch),
                Err(_) => break,
            }
        }
    }

    /// Takes in whatever names are ready, without waiting.
    pub fn poll(&mut self) {
        while let Ok(batch) = self.results.try_recv() {
            self.take(batch);
        }
    }

    /// Waits for every queued job, then stops the thread.
    pub fn finish(&mut self) {
        self.jobs = None;
        while let Ok(batch) = self.results.recv() {
            self.take(batch);
        }
        if let Some(h) = self.handle.take()
            && let Ok(read) = h.join()
        {
            self.kernel_read = read;
        }
    }

    fn take(&mut self, batch: Batch) {
        self.pending = self.pending.saturating_sub(1);
        for (frame, name, sources, start) in batch {
            if let Some(start) = start {
                self.names.function_starts.insert(frame, start);
            }
            self.names.insert(frame, name);
            if let Some(s) = sources {
                self.names.sources.insert(frame, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_the_folded_syntax_intact() {
        assert_eq!(sanitize("plain"), "plain");
        assert_eq!(sanitize("a;b\nc"), "a:b c");
        assert_eq!(sanitize("tab\there"), "tab\there");
    }

    #[test]
    fn sanitize_leaves_nothing_xml_or_a_terminal_would_choke_on() {
        assert_eq!(sanitize("evil\x01\x1b[31m"), "evil\\x01\\x1b[31m");
        assert_eq!(sanitize("nul\0del\x7f"), "nul\\x00del\\x7f");
        assert_eq!(sanitize("x\u{fffe}\u{85}"), "x\\u{fffe}\\x85");
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let out = sanitize(&c.to_string()).into_owned();
            assert!(
                out.chars().all(|o| o == '\t'
                    || (!o.is_control() && o != ';' && o != '\u{fffe}' && o != '\u{ffff}')),
                "{c:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn c_code_of_a_go_binary_built_with_cgo_is_named_from_its_elf_symbols() {
        let names = ["main.inner", "runtime.cgocall", "cfunc", "cspin"];
        let (bin, offsets) = crate::kinds::cgo_fixture(&names);
        let table = GoTable::parse(std::fs::read(&bin).unwrap())
            .unwrap()
            .unwrap();
        let got = elf_names(Some(&table), &NativeSymbols::new(&[]), &bin, &offsets);
        assert_eq!(got, names.map(|n| Some(n.to_owned())));
        // Its Go table alone leaves the C functions unnamed.
        assert_eq!(crate::go::name_of(&table, offsets[2]), None);
    }

    #[test]
    fn unnamed_frames_say_what_is_known() {
        let names = Names::default();
        let procs = ProcessTable::default();
        assert_eq!(names.display(FrameRef::Kernel(1), &procs), "[unknown]");
        assert_eq!(
            names.display(FrameRef::Marker(Marker::UserTruncated), &procs),
            "[truncated: user stack deeper than 127 frames]"
        );
        assert!(FrameRef::Marker(Marker::KernelTruncated).is_kernel());
        assert!(!FrameRef::Marker(Marker::Unknown).is_kernel());
    }

    #[test]
    fn unnamed_code_reads_as_its_function_start_when_known() {
        let mut thread = SymbolizerThread {
            jobs: None,
            pending: 1,
            results: mpsc::channel().1,
            handle: None,
            names: Names::default(),
            kernel_read: Default::default(),
        };
        let mut procs = ProcessTable::default();
        let module = procs
            .modules
            .add_file(std::path::Path::new("/opt/app/libx.so"));
        let at = |offset| FrameRef::Elf { module, offset };
        thread.take(vec![
            (at(0x1234), None, None, Some(0x1200)),
            (at(0x1250), None, None, Some(0x1200)),
            (at(0x9999), None, None, None),
        ]);
        let names = &thread.names;
        assert_eq!(names.display(at(0x1234), &procs), "[libx.so+0x1200]");
        assert_eq!(names.display(at(0x1250), &procs), "[libx.so+0x1200]");
        assert_eq!(names.display(at(0x9999), &procs), "[libx.so+0x9999]");
        assert_eq!(names.unnamed, 3, "still counted as unnamed");
    }
}
