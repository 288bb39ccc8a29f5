//! The frame model every stage shares: what a stack is made of once the
//! kernel's addresses are read ([`FrameRef`]: a kernel address, an offset in a
//! mapped file, a JIT method, a grouping level, or a [`Marker`] that says why
//! there is nothing to name), and the rules of how frames read in every
//! output (annotations, inline separators, safe names, thread roots).
//!
//! A leaf: it imports no other module of the crate, so that the decoder, the
//! runtimes, the process table, naming, folding and the writers can all use it
//! without importing each other.

use std::{borrow::Cow, sync::Arc};

use serde::Serialize;

/// Index of a mapped file in the
/// [`ModuleTable`](crate::native::process::ModuleTable).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModuleId(pub u32);

/// A frame that has no symbol to look up: it says why.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marker {
    /// An address in no known mapping, or in anonymous memory.
    Unknown,
    /// The vDSO.
    Vdso,
    /// The user stack could not be read at all.
    UserStackError,
    /// The user stack filled every slot; outer frames are missing.
    UserTruncated,
    /// The kernel stack could not be read.
    KernelStackError,
    /// The kernel stack filled every slot; outer frames are missing.
    KernelTruncated,
    /// The sample's .NET process was in a garbage-collection pause.
    Gc,
    /// The user leaf was in a managed method's prolog or epilog: the stack stops
    /// after it rather than guess.
    LeafEdge,
    /// A native frame with no `.eh_frame` rule and no usable frame pointer:
    /// the walk stopped there.
    NoUnwindInfo,
    /// Inserted where a profile is shown ([`crate::roots::marked`]) before a
    /// user stack whose walk ended, unmarked, at a frame that is no thread
    /// root: a frame-pointer walk that met a zero or a bad frame pointer (code
    /// built without frame pointers, walked before its object's unwind rules
    /// were loaded), or a zero return address. Outer frames may be missing.
    ShortOfRoot,
    /// Inserted by [`crate::fold`] where Go code calls native code or native
    /// code calls Go (see [`crate::kinds`]).
    Cgo,
    /// Inserted by [`crate::fold`] where managed .NET code calls native code
    /// that is not the .NET runtime itself (see [`crate::kinds`]).
    PInvoke,
}

impl Marker {
    /// Does the marker say the user stack is cut there (outer frames
    /// missing)?
    pub fn says_cut(self) -> bool {
        matches!(
            self,
            Marker::UserStackError
                | Marker::UserTruncated
                | Marker::LeafEdge
                | Marker::NoUnwindInfo
                | Marker::ShortOfRoot
        )
    }

    /// How the marker reads in a profile.
    pub fn label(self) -> &'static str {
        match self {
            Marker::Unknown => "[unknown]",
            Marker::Vdso => "[vdso]",
            Marker::UserStackError => "[truncated: user stack unreadable]",
            Marker::UserTruncated => "[truncated: user stack deeper than 127 frames]",
            Marker::KernelStackError => "[truncated: kernel stack unreadable]",
            Marker::KernelTruncated => "[truncated: kernel stack deeper than 127 frames]",
            Marker::Gc => "[gc]",
            Marker::LeafEdge => "[truncated: leaf in a managed prolog or epilog]",
            Marker::NoUnwindInfo => "[truncated: no unwind info]",
            Marker::ShortOfRoot => "[truncated: walk ended short of a thread root]",
            Marker::Cgo => "[cgo]",
            Marker::PInvoke => "[P/Invoke]",
        }
    }
}

/// One frame of an aggregated stack, valid after its process is gone.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrameRef {
    /// A kernel address (return addresses already moved back into their call).
    Kernel(u64),
    /// An offset into a mapped file (likewise adjusted).
    Elf {
        /// The file.
        module: ModuleId,
        /// Offset in the file.
        offset: u64,
    },
    /// A managed (.NET JIT) method, named when it was sampled; the index into
    /// [`ProcessTable::managed_name`](crate::native::process::ProcessTable::managed_name).
    Managed(u32),
    /// The thread a sample ran on (`--per-thread`): an index into the process
    /// table's thread names.
    Thread(u32),
    /// The goroutine a sample of a Go process ran on (`--group-by goroutine`); 0
    /// is a system stack, no goroutine.
    Goroutine(u64),
    /// A `--group-by label:KEY` level: an index into the process table's label
    /// texts (`worker=w3`).
    Label(u32),
    /// No symbol to look up.
    Marker(Marker),
}

impl FrameRef {
    /// Managed frames are annotated `_[j]` (inferno's JIT annotation).
    pub fn is_managed(self) -> bool {
        matches!(self, FrameRef::Managed(_))
    }

    /// Kernel frames are annotated `_[k]` in folded stacks.
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            FrameRef::Kernel(_)
                | FrameRef::Marker(Marker::KernelStackError | Marker::KernelTruncated)
        )
    }
}

/// A frame's source file and line.
pub type Source = (Arc<str>, u32);

/// Separates the frames one address stands for (a Go function and the calls
/// inlined into it) in a name; [`crate::fold`] turns it into `;`.
pub const INLINE_SEPARATOR: char = '\u{1f}';

/// inferno's annotation for inlined frames.
pub const INLINE_SUFFIX: &str = "_[i]";

/// inferno's annotation for kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";
/// inferno's annotation for JIT-compiled (managed) frames.
pub const JIT_SUFFIX: &str = "_[j]";

/// A folded frame's name without inferno's annotation (`_[k]`, `_[j]`, `_[i]`).
pub fn strip_annotation(frame: &str) -> &str {
    [KERNEL_SUFFIX, JIT_SUFFIX, INLINE_SUFFIX]
        .iter()
        .find_map(|s| frame.strip_suffix(s))
        .unwrap_or(frame)
}

/// Functions a thread's stack starts in: a process's entry (`_start`), a
/// thread's (`clone3`/`clone`, glibc's `start_thread` above them), Go's
/// goroutines and threads (`runtime.goexit`, `runtime.mstart*`,
/// `runtime.rt0_go`).
pub fn is_root(name: &str) -> bool {
    matches!(
        name,
        "_start"
            | "clone3"
            | "clone"
            | "__clone"
            | "start_thread"
            | "runtime.goexit"
            | "runtime.rt0_go"
    ) || name.starts_with("runtime.mstart")
}

/// Makes a name safe for every output: for the folded format (`;` separates
/// frames, a line break separates stacks), for XML 1.0 (the SVG: it forbids
/// every control character but tab, line feed and carriage return, and
/// U+FFFE/U+FFFF), and for a terminal (escape sequences). Names come from
/// targets (`prctl` names, symbols, perf maps): each such character becomes a
/// visible `\xNN` (`\u{fffe}` for the two non-characters).
pub fn sanitize(name: &str) -> Cow<'_, str> {
    let bad =
        |c: char| c == ';' || (c.is_control() && c != '\t') || c == '\u{fffe}' || c == '\u{ffff}';
    if !name.contains(bad) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            ';' => out.push(':'),
            '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x100 && bad(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whose code a frame is (how [`crate::kinds`] tells them apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// The kernel.
    Kernel,
    /// .NET code, JIT-compiled or ReadyToRun.
    Managed,
    /// Go code.
    Go,
    /// Any other user-side code.
    Native,
    /// Glue between runtimes, and the markers fold inserts at crossings.
    Transition,
}

impl FrameKind {
    /// Every kind, in legend order.
    pub const ALL: [FrameKind; 5] = [
        FrameKind::Managed,
        FrameKind::Go,
        FrameKind::Native,
        FrameKind::Transition,
        FrameKind::Kernel,
    ];

    /// How the kind reads in the legend and the transitions table.
    pub fn label(self) -> &'static str {
        match self {
            FrameKind::Kernel => "kernel",
            FrameKind::Managed => "managed",
            FrameKind::Go => "Go",
            FrameKind::Native => "native",
            FrameKind::Transition => "transition",
        }
    }
}

/// Names (or names with what else a frame carries) interned once, so stacks
/// carry a small id.
#[derive(Debug)]
pub(crate) struct Interner<T = Arc<str>> {
    ids: std::collections::HashMap<T, u32>,
    items: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: std::collections::HashMap::new(),
            items: Vec::new(),
        }
    }
}

impl<T: Clone + std::hash::Hash + Eq> Interner<T> {
    pub(crate) fn intern(&mut self, item: &T) -> u32 {
        if let Some(&id) = self.ids.get(item) {
            return id;
        }
        let id = self.items.len() as u32;
        self.items.push(item.clone());
        self.ids.insert(item.clone(), id);
        id
    }

    pub(crate) fn item(&self, id: u32) -> Option<&T> {
        self.items.get(id as usize)
    }
}

impl Interner {
    pub(crate) fn get(&self, id: u32) -> &str {
        self.item(id).map_or("[unknown]", |n| n)
    }
}
