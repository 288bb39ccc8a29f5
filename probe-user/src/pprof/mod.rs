//! pprof's `profile.proto`, the format `go tool pprof`, Parca, Pyroscope and
//! Grafana read: written from aggregated stacks, and read back (for `crossprof
//! diff`). The message and field numbers are those of google/pprof's
//! `proto/profile.proto` (the schema is public; no code of it is used): a
//! profile is sample types, samples (location ids leaf first, one value per
//! sample type, labels), mappings, locations (an address and its lines,
//! innermost inlined function first), functions and a string table whose entry
//! 0 is "".
//!
//! What crossprof puts in it:
//! - a location per distinct frame: an offset into a mapped file (the mapping is
//!   that file, from offset 0, with its build id), a kernel address (mapping
//!   `[kernel.kallsyms]` with the running kernel's build id), a .NET JIT
//!   method or a marker (`[unknown]`, `[wait: chan receive]`, ...), which have
//!   no mapping. Every location is already named (`has_functions`); Go frames
//!   carry file and line (from `.gopclntab`), inlined calls as lines of one
//!   location;
//! - the levels a recording adds above a stack become labels, not frames: `pid`
//!   and `comm` of the process, its `runtime` (go, dotnet, native), `thread`,
//!   `goroutine`, `trace_id`, `state`, and each Go pprof label `key=value` as
//!   `key`;
//! - values: see [`Kind`].

use std::{collections::HashMap, io::Write as _, sync::Arc};

pub use read::{MAX_GUNZIP, Read, gunzip, read, read_pid};

use crate::{
    aggregate::StackKey,
    frame::{FrameRef, INLINE_SEPARATOR, INLINE_SUFFIX, ModuleId},
    native::{elf, process::ProcessTable},
    symbolize::Names,
};

mod read;

/// The file `record` writes.
pub const FILE: &str = "profile.pb.gz";

/// What a profile's values mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// On-CPU samples at `freq` Hz: `samples`/count and `cpu`/nanoseconds, as
    /// Go's own CPU profile.
    Cpu {
        /// Sampling frequency.
        freq: u64,
    },
    /// Off-CPU spans: `off_cpu`/nanoseconds (the weights are microseconds).
    OffCpu,
    /// Goroutine waits: `go_wait`/nanoseconds.
    GoWait,
    /// Wall-clock stacks (on-CPU ones under a `[running]` leaf weighing one
    /// period each, off-CPU spans and goroutine waits under their cause):
    /// `samples` and `cpu`, then `off_cpu` and `go_wait` for the sources
    /// followed, each stack in its own column.
    Wall {
        /// Sampling frequency of the on-CPU samples.
        freq: u64,
        /// Off-CPU spans are followed (an `off_cpu` column).
        off_cpu: bool,
        /// Goroutine waits are followed (a `go_wait` column).
        go_wait: bool,
    },
}

/// Sample types of CPU samples, as Go's CPU profile names them.
const CPU_TYPES: [(&str, &str); 2] = [("samples", "count"), ("cpu", "nanoseconds")];
const OFF_CPU_TYPE: (&str, &str) = ("off_cpu", "nanoseconds");
const GO_WAIT_TYPE: (&str, &str) = ("go_wait", "nanoseconds");

impl Kind {
    /// The kind of a profile recorded with `args`.
    pub fn of(args: &crate::session::Config) -> Self {
        let freq = args.freq;
        match args.mode {
            crate::cli::Mode::Cpu => Kind::Cpu { freq },
            crate::cli::Mode::Offcpu => Kind::OffCpu,
            crate::cli::Mode::Goblock => Kind::GoWait,
            crate::cli::Mode::Wall => Kind::Wall {
                freq,
                off_cpu: args.off_cpu,
                go_wait: args.go_waits,
            },
        }
    }

    pub(crate) fn sample_types(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Kind::Cpu { .. } => CPU_TYPES.to_vec(),
            Kind::OffCpu => vec![OFF_CPU_TYPE],
            Kind::GoWait => vec![GO_WAIT_TYPE],
            Kind::Wall {
                off_cpu, go_wait, ..
            } => {
                let mut types = CPU_TYPES.to_vec();
                types.extend(off_cpu.then_some(OFF_CPU_TYPE));
                types.extend(go_wait.then_some(GO_WAIT_TYPE));
                types
            }
        }
    }

    pub(crate) fn period_ns(self) -> i64 {
        match self {
            Kind::Cpu { freq } | Kind::Wall { freq, .. } => (1_000_000_000 / freq.max(1)) as i64,
            Kind::OffCpu | Kind::GoWait => 1,
        }
    }

    /// The values of a stack that weighs `weight` and ends in `leaf`.
    pub(crate) fn values(self, weight: u64, leaf: &str) -> Vec<i64> {
        let w = weight as i64;
        match self {
            Kind::Cpu { .. } => vec![w, w.saturating_mul(self.period_ns())],
            Kind::OffCpu | Kind::GoWait => vec![w.saturating_mul(1000)],
            Kind::Wall {
                freq,
                off_cpu,
                go_wait,
            } => {
                let ns = w.saturating_mul(1000);
                let running = leaf == "[running]";
                let waiting = leaf.starts_with("[wait: ");
                let mut values = if running {
                    let period_us = (1_000_000 / freq.max(1)).max(1) as i64;
                    vec![(w / period_us).max(1), ns]
                } else {
                    vec![0, 0]
                };
                if off_cpu {
                    values.push(if running || waiting { 0 } else { ns });
                }
                if go_wait {
                    values.push(if waiting { ns } else { 0 });
                }
                values
            }
        }
    }
}

/// When and how long a profile was taken.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_ns: i64,
    /// Length in nanoseconds.
    pub duration_ns: i64,
}

/// Build ids of the files frames are in, read once per file (kept by the
/// agent across windows: a binary deleted after an upgrade keeps the id it had
/// when first seen, its file being held open by the module table).
#[derive(Debug, Default)]
pub struct BuildIds {
    modules: HashMap<ModuleId, Option<Arc<str>>>,
    kernel: Option<Option<Arc<str>>>,
}

impl BuildIds {
    pub(crate) fn module(&mut self, id: ModuleId, procs: &ProcessTable) -> Option<Arc<str>> {
        self.modules
            .entry(id)
            .or_insert_with(|| {
                let m = procs.modules.get(id);
                if m.is_assembly() {
                    return None;
                }
                elf::build_id(&m.open_path).map(Arc::from)
            })
            .clone()
    }

    pub(crate) fn kernel(&mut self) -> Option<Arc<str>> {
        self.kernel
            .get_or_insert_with(|| {
                let notes = std::fs::read("/sys/kernel/notes").ok()?;
                match elf::notes_build_id(&notes)? {
                    elf::BuildId::Gnu(id) | elf::BuildId::Go(id) => Some(Arc::from(id)),
                }
            })
            .clone()
    }
}

/// Builds the profile of `stacks` and returns it encoded (not compressed).
pub fn build<'a>(
    stacks: impl IntoIterator<Item = (&'a StackKey, u64)>,
    names: &Names,
    procs: &ProcessTable,
    build_ids: &mut BuildIds,
    kind: Kind,
    span: Span,
) -> Vec<u8> {
    let mut b = Builder::default();
    b.string(""); // entry 0
    // The first mapping is the profile's main binary for pprof's readers
    // (`go tool pprof` prints it as `File:`): the executable of the process
    // with the most weight, not whatever the first stack's leaf was in (the
    // kernel, libc).
    let stacks: Vec<(&StackKey, u64)> = stacks.into_iter().collect();
    let mut per_pid: HashMap<u32, u64> = HashMap::new();
    for (key, weight) in &stacks {
        *per_pid.entry(key.pid).or_default() += weight;
    }
    let main = per_pid
        .iter()
        .max_by_key(|&(&pid, &w)| (w, std::cmp::Reverse(pid)))
        .and_then(|(&pid, _)| procs.exe_module(pid));
    if let Some(module) = main {
        b.mapping(Some(module), procs, build_ids, false);
    }
    let mut runtimes: HashMap<u32, &'static str> = HashMap::new();
    for (key, weight) in stacks {
        let frames = &key.frames[..];
        let levels = frames
            .iter()
            .take_while(|&&f| level(f, names, procs).is_some())
            .count();
        // A stack of levels alone (a marker leaf, no code) keeps its last one.
        let levels = levels.min(frames.len().saturating_sub(1));
        let mut labels: Vec<(i64, Label)> = Vec::new();
        let p = procs.get(key.pid);
        let pid = b.string("pid");
        labels.push((pid, Label::Num(i64::from(key.pid))));
        let comm = procs.name_of(key.pid);
        if !comm.is_empty() {
            let k = b.string("comm");
            let v = b.string(&comm);
            labels.push((k, Label::Str(v)));
        }
        let runtime = *runtimes.entry(key.pid).or_insert_with(|| {
            procs
                .runtime(key.pid)
                .map_or("unknown", crate::runtime::Runtime::name)
        });
        let k = b.string("runtime");
        let v = b.string(runtime);
        labels.push((k, Label::Str(v)));
        // The container and pod its cgroup names (see `crate::containers`).
        if let Some(c) = p.and_then(|p| p.container.as_ref()) {
            let k = b.string("container_id");
            let v = b.string(&c.id);
            labels.push((k, Label::Str(v)));
            if let Some(uid) = &c.pod_uid {
                let k = b.string("pod_uid");
                let v = b.string(uid);
                labels.push((k, Label::Str(v)));
            }
        }
        for &f in &frames[..levels] {
            if let Some((key, value)) = level(f, names, procs) {
                let k = b.string(&key);
                labels.push((
                    k,
                    match value {
                        Value::Num(n) => Label::Num(n),
                        Value::Str(s) => Label::Str(b.string(&s)),
                    },
                ));
            }
        }
        // A stack cut short with no mark of its own gets one.
        let code = &crate::roots::marked(&frames[levels..], names, procs)[..];
        let leaf = code
            .last()
            .map(|&f| names.display(f, procs))
            .unwrap_or_default();
        let values = kind.values(weight, &leaf);
        let locations: Vec<u64> = code
            .iter()
            .rev()
            .map(|&f| b.location(f, names, procs, build_ids))
            .collect();
        b.samples.push(Sample {
            locations,
            values,
            labels,
        });
    }
    b.encode(kind, span)
}

/// What a level frame says as a label.
pub(crate) enum Value {
    /// A number.
    Num(i64),
    /// A text.
    Str(String),
}

/// The label a frame stands for, if it is one of the levels a recording puts
/// above a stack (`--per-thread`, `--group-by`).
pub(crate) fn level(
    frame: FrameRef,
    names: &Names,
    procs: &ProcessTable,
) -> Option<(String, Value)> {
    match frame {
        FrameRef::Thread(_) => Some((
            "thread".into(),
            Value::Str(names.display(frame, procs).into_owned()),
        )),
        FrameRef::Goroutine(g) => Some(("goroutine".into(), Value::Num(g as i64))),
        FrameRef::Label(_) => {
            let text = names.display(frame, procs);
            label_of_level(&text).map(|(k, v)| (k.to_owned(), Value::Str(v.to_owned())))
        }
        _ => None,
    }
}

/// A level's text as a label: `trace <id>` (`--group-by trace`; `[no trace]`
/// is no label), a goroutine status (`--group-by state`), `key=value` (a Go
/// pprof label, `--group-by label:key`).
fn label_of_level(text: &str) -> Option<(&str, &str)> {
    if let Some(id) = text.strip_prefix("trace ") {
        return Some(("trace_id", id));
    }
    if text == "[no trace]" {
        return Some(("trace_id", ""));
    }
    if matches!(
        text,
        "[running]" | "[runnable]" | "[syscall]" | "[waiting]" | "[no goroutine]" | "[dead]"
    ) {
        return Some(("state", text.trim_matches(['[', ']'])));
    }
    let (key, value) = text.split_once('=')?;
    (!key.is_empty() && !key.contains([' ', '['])).then_some((key, value))
}

/// The lines of `frame`'s location, innermost first (as pprof and OTLP
/// list them): `(function, file, line)`, an inlined call being one more
/// line (the name lists them outermost first). A .NET method's line comes
/// with its frame, a Go or DWARF-described one from the symbolizer.
pub(crate) fn frame_lines(
    frame: FrameRef,
    names: &Names,
    procs: &ProcessTable,
) -> Vec<(String, String, i64)> {
    let name = names.display(frame, procs);
    let sources = names.sources(frame);
    let managed = match frame {
        FrameRef::Managed(id) => procs.managed_source(id),
        _ => None,
    };
    let mut lines: Vec<(String, String, i64)> = name
        .split(INLINE_SEPARATOR)
        .enumerate()
        .map(|(i, part)| {
            let part = part.strip_suffix(INLINE_SUFFIX).unwrap_or(part);
            let source = sources
                .and_then(|s| s.get(i))
                .and_then(Option::as_ref)
                .or(managed);
            let (file, line) = source.map_or(("", 0), |(f, l)| (&**f, i64::from(*l)));
            (part.to_owned(), file.to_owned(), line)
        })
        .collect();
    lines.reverse();
    lines
}

/// What a mapping of `module` (`None`: the kernel) says: its file's path,
/// its size (the mapping's limit) and its build id.
pub(crate) fn mapping_facts(
    module: Option<ModuleId>,
    procs: &ProcessTable,
    build_ids: &mut BuildIds,
) -> (String, u64, Option<Arc<str>>) {
    match module {
        Some(m) => {
            let module = procs.modules.get(m);
            let limit = std::fs::metadata(&module.open_path).map_or(u64::MAX, |md| md.len());
            (
                module.path.to_string_lossy().into_owned(),
                limit,
                build_ids.module(m, procs),
            )
        }
        None => ("[kernel.kallsyms]".to_owned(), u64::MAX, build_ids.kernel()),
    }
}

#[derive(Debug)]
enum Label {
    Str(i64),
    Num(i64),
}

#[derive(Debug)]
struct Sample {
    locations: Vec<u64>,
    values: Vec<i64>,
    labels: Vec<(i64, Label)>,
}

#[derive(Debug)]
struct Mapping {
    limit: u64,
    file: i64,
    build_id: i64,
    lines: bool,
}

#[derive(Debug)]
struct Location {
    mapping: u64,
    address: u64,
    /// (function id, line), innermost first.
    lines: Vec<(u64, i64)>,
}

#[derive(Debug, Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<(i64, i64)>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<Option<ModuleId>, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<FrameRef, u64>,
    samples: Vec<Sample>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        self.functions.push(key);
        let id = self.functions.len() as u64;
        self.function_ids.insert(key, id);
        id
    }

    /// The mapping of a module (`None`: the kernel).
    fn mapping(
        &mut self,
        module: Option<ModuleId>,
        procs: &ProcessTable,
        build_ids: &mut BuildIds,
        lines: bool,
    ) -> u64 {
        if let Some(&id) = self.mapping_ids.get(&module) {
            if lines {
                self.mappings[id as usize - 1].lines = true;
            }
            return id;
        }
        let (file, limit, build_id) = mapping_facts(module, procs, build_ids);
        let file = self.string(&file);
        let build_id = self.string(build_id.as_deref().unwrap_or(""));
        self.mappings.push(Mapping {
            limit,
            file,
            build_id,
            lines,
        });
        let id = self.mappings.len() as u64;
        self.mapping_ids.insert(module, id);
        id
    }

    fn location(
        &mut self,
        frame: FrameRef,
        names: &Names,
        procs: &ProcessTable,
        build_ids: &mut BuildIds,
    ) -> u64 {
        if let Some(&id) = self.location_ids.get(&frame) {
            return id;
        }
        let sources = names.sources(frame);
        let lines: Vec<(u64, i64)> = frame_lines(frame, names, procs)
            .into_iter()
            .map(|(name, file, line)| (self.function(&name, &file), line))
            .collect();
        let (mapping, address) = match frame {
            FrameRef::Elf { module, offset } => (
                self.mapping(Some(module), procs, build_ids, sources.is_some()),
                offset,
            ),
            FrameRef::Kernel(addr) => (self.mapping(None, procs, build_ids, false), addr),
            _ => (0, 0),
        };
        self.locations.push(Location {
            mapping,
            address,
            lines,
        });
        let id = self.locations.len() as u64;
        self.location_ids.insert(frame, id);
        id
    }

    fn encode(mut self, kind: Kind, span: Span) -> Vec<u8> {
        let types: Vec<(i64, i64)> = kind
            .sample_types()
            .iter()
            .map(|(t, u)| (self.string(t), self.string(u)))
            .collect();
        // CPU time is what a profile with samples is read for (as Go's);
        // otherwise its one value.
        let (period_type, default_type) = match kind {
            Kind::Cpu { .. } | Kind::Wall { .. } => (self.string("cpu"), self.string("cpu")),
            Kind::OffCpu | Kind::GoWait => (types[0].0, 0),
        };
        let period_type = (period_type, self.string("nanoseconds"));
        let comment = self.string("crossprof");

        let mut out = Vec::new();
        for (t, u) in &types {
            let mut m = Vec::new();
            put_int(&mut m, 1, *t as u64);
            put_int(&mut m, 2, *u as u64);
            put_bytes(&mut out, 1, &m);
        }
        for s in &self.samples {
            let mut m = Vec::new();
            put_packed(&mut m, 1, s.locations.iter().copied());
            put_packed(&mut m, 2, s.values.iter().map(|&v| v as u64));
            for (k, v) in &s.labels {
                let mut l = Vec::new();
                put_int(&mut l, 1, *k as u64);
                match v {
                    Label::Str(s) => put_int(&mut l, 2, *s as u64),
                    Label::Num(n) => put_int(&mut l, 3, *n as u64),
                }
                put_bytes(&mut m, 3, &l);
            }
            put_bytes(&mut out, 2, &m);
        }
        for (i, m) in self.mappings.iter().enumerate() {
            let mut e = Vec::new();
            put_int(&mut e, 1, i as u64 + 1);
            put_int(&mut e, 3, m.limit);
            put_int(&mut e, 5, m.file as u64);
            put_int(&mut e, 6, m.build_id as u64);
            put_int(&mut e, 7, 1); // has_functions
            put_int(&mut e, 8, u64::from(m.lines)); // has_filenames
            put_int(&mut e, 9, u64::from(m.lines)); // has_line_numbers
            put_int(&mut e, 10, 1); // has_inline_frames
            put_bytes(&mut out, 3, &e);
        }
        for (i, l) in self.locations.iter().enumerate() {
            let mut e = Vec::new();
            put_int(&mut e, 1, i as u64 + 1);
            put_int(&mut e, 2, l.mapping);
            put_int(&mut e, 3, l.address);
            for &(f, line) in &l.lines {
                let mut li = Vec::new();
                put_int(&mut li, 1, f);
                put_int(&mut li, 2, line as u64);
                put_bytes(&mut e, 4, &li);
            }
            put_bytes(&mut out, 4, &e);
        }
        for (i, &(name, file)) in self.functions.iter().enumerate() {
            let mut e = Vec::new();
            put_int(&mut e, 1, i as u64 + 1);
            put_int(&mut e, 2, name as u64);
            put_int(&mut e, 3, name as u64);
            put_int(&mut e, 4, file as u64);
            put_bytes(&mut out, 5, &e);
        }
        for s in &self.strings {
            put_bytes(&mut out, 6, s.as_bytes());
        }
        put_int(&mut out, 9, span.start_unix_ns as u64);
        put_int(&mut out, 10, span.duration_ns as u64);
        let mut pt = Vec::new();
        put_int(&mut pt, 1, period_type.0 as u64);
        put_int(&mut pt, 2, period_type.1 as u64);
        put_bytes(&mut out, 11, &pt);
        put_int(&mut out, 12, kind.period_ns() as u64);
        put_packed(&mut out, 13, [comment as u64]);
        put_int(&mut out, 14, default_type as u64);
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field; zero (proto3's default) is left out.
fn put_int(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_packed(out: &mut Vec<u8>, field: u64, vs: impl IntoIterator<Item = u64>) {
    let mut b = Vec::new();
    for v in vs {
        put_varint(&mut b, v);
    }
    if !b.is_empty() {
        put_bytes(out, field, &b);
    }
}

/// `data` gzipped (RFC 1952: header, raw deflate, CRC-32 and length), as pprof
/// files are.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    out.write_all(&crc.finalize().to_le_bytes()).expect("vec");
    out.write_all(&(data.len() as u32).to_le_bytes())
        .expect("vec");
    out
}

#[cfg(test)]
mod tests {
    use super::{read::varint, *};

    #[test]
    fn a_wall_profile_has_a_column_per_source_followed() {
        let wall = |off_cpu, go_wait| Kind::Wall {
            freq: 100,
            off_cpu,
            go_wait,
        };
        let names = |k: Kind| k.sample_types().iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(
            names(wall(true, true)),
            ["samples", "cpu", "off_cpu", "go_wait"]
        );
        assert_eq!(names(wall(false, true)), ["samples", "cpu", "go_wait"]);
        assert_eq!(names(wall(true, false)), ["samples", "cpu", "off_cpu"]);
        // Each stack's values line up with the columns: a 10 ms period.
        let k = wall(false, true);
        assert_eq!(k.values(20_000, "[running]"), [2, 20_000_000, 0]);
        assert_eq!(k.values(5_000, "[wait: chan receive]"), [0, 0, 5_000_000]);
        let k = wall(true, false);
        assert_eq!(k.values(5_000, "[blocked: futex]"), [0, 0, 5_000_000]);
        assert_eq!(k.values(20_000, "[running]"), [2, 20_000_000, 0]);
    }

    #[test]
    fn varints_are_protobufs() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        assert_eq!(varint(&mut &b[..]).unwrap(), 300);
        put_int(&mut b, 1, 0);
        assert_eq!(b.len(), 2, "zero fields are left out");
    }

    #[test]
    fn levels_become_labels() {
        assert_eq!(label_of_level("trace 0af7"), Some(("trace_id", "0af7")));
        assert_eq!(label_of_level("worker=w3"), Some(("worker", "w3")));
        assert_eq!(label_of_level("[syscall]"), Some(("state", "syscall")));
        assert_eq!(label_of_level("[blocked: futex]"), None);
        assert_eq!(label_of_level("[wait: a=b]"), None);
    }

    #[test]
    fn a_built_profile_reads_back_with_its_stacks_lines_and_labels() {
        let mut procs = ProcessTable::default();
        let main = procs.text_frame("main");
        let hot = procs.text_frame("hot");
        let trace = procs.text_frame("trace 0af7651916cd43dd8448eb211c80319c");
        let running = procs.text_frame("[running]");
        let names = Names::default();
        let key = |frames: Vec<FrameRef>| StackKey {
            pid: 42,
            frames: frames.into_boxed_slice(),
        };
        let a = key(vec![trace, FrameRef::Goroutine(7), main, hot, running]);
        let b = key(vec![trace, main, procs.text_frame("[blocked: futex]")]);
        let stacks = [(&a, 20_000u64), (&b, 5_000)];
        let span = Span {
            start_unix_ns: 1,
            duration_ns: 2,
        };
        let data = build(
            stacks.iter().map(|(k, n)| (*k, *n)),
            &names,
            &procs,
            &mut BuildIds::default(),
            Kind::Wall {
                freq: 100,
                off_cpu: true,
                go_wait: true,
            },
            span,
        );
        let text = String::from_utf8_lossy(&data);
        assert!(text.contains("trace_id") && text.contains("goroutine"));
        let got = read(&gzip(&data)).unwrap();
        assert_eq!(
            got.sample_types[1],
            ("cpu".to_owned(), "nanoseconds".to_owned())
        );
        assert_eq!(got.default_column, 1);
        // The levels are labels, not frames; [running] samples are CPU time.
        // (No comm: process 42 is not in the table.) Only process 42's.
        assert_eq!(read_pid(&data, Some(42)).unwrap().stacks.len(), 2);
        assert!(read_pid(&data, Some(43)).unwrap().stacks.is_empty());
        assert_eq!(got.stacks["main;hot;[running]"], [2, 20_000_000, 0, 0]);
        assert_eq!(got.stacks["main;[blocked: futex]"], [0, 0, 5_000_000, 0]);
        assert!(
            read(&[0x0a, 0x05]).is_err(),
            "a truncated profile is an error"
        );
    }

    #[test]
    fn gzip_round_trips() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let z = gzip(&data);
        assert!(z.len() < data.len() / 4);
        assert_eq!(gunzip(&z).unwrap(), data);
        assert!(gunzip(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff]).is_err());
    }
}
