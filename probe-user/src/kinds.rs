//! Frame kinds: whose code each frame is, and where a stack crosses from one
//! runtime into another.
//!
//! Every frame of a profile has one kind ([`FrameKind`]):
//! - **kernel**: a kernel address (and the kernel's `[truncated: ...]` markers).
//! - **managed**: .NET code, JIT-compiled ([`FrameRef::Managed`]) or
//!   ReadyToRun code of an assembly (a mapped `*.dll`), named or not.
//! - **Go**: an address its binary's Go table (`.gopclntab`) covers. This is
//!   decided per address, not per binary: a Go executable built with cgo also
//!   holds C functions its Go table does not cover, and those are native.
//! - **native**: every other user-side code: C, C++, Rust, the .NET runtime
//!   itself (`libcoreclr.so`), the vDSO, addresses in no known code
//!   (`[unknown]`).
//! - **transition**: the glue between runtimes, recognised by name
//!   ([`is_glue`]: cgo's call and callback wrappers, .NET's P/Invoke IL stubs),
//!   the C wrapper cgo writes for each exported Go function (the native frame
//!   that calls `crosscall2`), and the `[cgo]` and `[P/Invoke]` markers below.
//!
//! Grouping levels (thread, goroutine, label), the process root and markers that
//! explain a gap (`[gc]`, `[truncated: ...]`) are not code: they have no kind.
//!
//! ## Crossings
//! A stack crosses runtimes between two consecutive user frames of different
//! runtimes, glue frames skipped, and [`Classifier::show`] inserts a marker frame
//! there, right before the callee (after the glue, which stays with the caller
//! side), so that the marker heads what the foreign code did:
//! - managed -> native code that is not the .NET runtime itself
//!   ([`DOTNET_RUNTIME_LIBRARIES`]: runtime helpers are not P/Invokes):
//!   `[P/Invoke]`;
//! - Go -> native and native -> Go: `[cgo]`, except native -> a Go thread root
//!   (`runtime.mstart` under cgo's C thread entry: a thread starting, not a call);
//! - managed -> Go (a P/Invoke into a Go library built with
//!   `-buildmode=c-shared`): both, `[P/Invoke];[cgo]`.
//!
//! Native -> managed (the runtime or a reverse P/Invoke calling .NET code) gets
//! none, nor does anything involving kernel frames, `[unknown]` or the vDSO
//! (which Go calls directly, without cgo). So
//! `main.inner;main._Cfunc_f;runtime.cgocall;runtime.asmcgocall;_cgo_x_Cfunc_f;f`
//! shows as `...;_cgo_x_Cfunc_f;[cgo];f`: one marker per crossing.
//!
//! Each crossing is also an [`Edge`] from the last non-glue frame before it (the
//! innermost of a frame's inlined calls) to the first non-glue frame after it
//! (the outermost), which `crossprof record --only-transitions` tabulates.

use std::{borrow::Cow, collections::HashMap, io};

use crate::{
    frame::{
        FrameKind, FrameRef, INLINE_SEPARATOR, INLINE_SUFFIX, JIT_SUFFIX, KERNEL_SUFFIX, Marker,
        is_root,
    },
    native::process::ProcessTable,
    summary::Edge,
    symbolize::Names,
};

/// The .NET runtime's own libraries: a managed frame calling into them is the
/// runtime at work (allocation, type checks, the JIT), not a P/Invoke.
pub const DOTNET_RUNTIME_LIBRARIES: &[&str] = &[
    "libcoreclr.so",
    "libclrjit.so",
    "libclrgc.so",
    "libclrgcexp.so",
    "libhostpolicy.so",
    "libhostfxr.so",
    "libcoreclrtraceptprovider.so",
    "libmscordaccore.so",
    "libmscordbi.so",
];

/// Is `name` a function that only carries a call from one runtime to another?
///
/// - cgo, Go calling C (golang/go `cmd/cgo/out.go`, `runtime/cgocall.go`):
///   the Go-side wrapper `pkg._Cfunc_f` (`_C2func_f` when it returns errno),
///   `runtime.cgocall`, `runtime.asmcgocall*`, and the C-side wrapper
///   `_cgo_<hash>_Cfunc_f` (every C function cgo writes starts `_cgo_`);
/// - cgo, C calling Go: `crosscall2`, `runtime.cgocallback*` (`cgocallbackg`,
///   `cgocallbackg1`) and the Go-side wrapper `pkg._cgoexp_<hash>_f`;
/// - .NET: the IL stubs the runtime generates for a P/Invoke and a reverse
///   P/Invoke, `IL_STUB_PInvoke` and `IL_STUB_ReversePInvoke` in the perf map
///   (`dynamicClass::IL_STUB_PInvoke`, dotnet/runtime `dllimport.cpp`).
pub fn is_glue(name: &str) -> bool {
    let name = name.strip_suffix(".abi0").unwrap_or(name);
    let method = name.rsplit("::").next().unwrap_or(name);
    name == "crosscall2"
        || name == "runtime.cgocall"
        || name.starts_with("runtime.asmcgocall")
        || name.starts_with("runtime.cgocallback")
        || name.starts_with("_cgo_")
        || name.starts_with("_cgoexp_")
        || name.contains("._cgoexp_")
        || name.contains("._Cfunc_")
        || name.contains("._C2func_")
        || method.starts_with("IL_STUB_PInvoke")
        || method.starts_with("IL_STUB_ReversePInvoke")
}

/// The side of a crossing a user frame's code is on: which runtime's code
/// it is (not a process's runtime: that is [`crate::runtime::Runtime`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// .NET code.
    Managed,
    /// Go code.
    Go,
    /// Native code outside the .NET runtime.
    Native,
    /// The .NET runtime's own native code ([`DOTNET_RUNTIME_LIBRARIES`]).
    DotnetRuntime,
}

/// What the address of a frame says about it, before its name is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    /// Its kind by address.
    pub kind: Option<FrameKind>,
    /// Its runtime, for a user frame that can take part in a crossing.
    pub side: Option<Side>,
    /// The folded annotation of its (innermost) name: `_[k]`, `_[j]` or none.
    pub suffix: &'static str,
}

/// One frame as a profile shows it. An address that stands for calls inlined
/// into it shows as several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// As in a folded line: the name and its annotation, if any.
    pub text: String,
    /// Its kind (`None`: not code).
    pub kind: Option<FrameKind>,
}

/// A call from one runtime into another, as seen in a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Crossing {
    /// The last non-glue frame before it.
    pub caller: String,
    /// Its kind.
    pub caller_kind: FrameKind,
    /// The first non-glue frame after it.
    pub callee: String,
    /// Its kind.
    pub callee_kind: FrameKind,
}

/// A stack as a profile shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShownStack {
    /// Outermost first, with a marker at each crossing.
    pub frames: Vec<Shown>,
    /// Its crossings, outermost first.
    pub crossings: Vec<Crossing>,
}

/// Classifies frames, each address once.
pub struct Classifier<'a> {
    names: &'a Names,
    procs: &'a ProcessTable,
    codes: HashMap<FrameRef, Code>,
}

impl<'a> Classifier<'a> {
    /// A classifier of frames named by `names`, in the modules of `procs`.
    pub fn new(names: &'a Names, procs: &'a ProcessTable) -> Self {
        Self {
            names,
            procs,
            codes: HashMap::new(),
        }
    }

    /// What `frame`'s address says about it.
    pub fn code(&mut self, frame: FrameRef) -> Code {
        if let Some(&code) = self.codes.get(&frame) {
            return code;
        }
        let code = code_of(frame, self.names, self.procs);
        self.codes.insert(frame, code);
        code
    }

    /// `frames` as a profile shows them: names, annotations, kinds, and a
    /// marker at each crossing. A stack cut short with no mark of its own
    /// gets one first
    /// ([`crate::roots::marked`]).
    pub fn show(&mut self, frames: &[FrameRef]) -> ShownStack {
        let frames = crate::roots::marked(frames, self.names, self.procs);
        let coded: Vec<(Cow<'a, str>, Code)> = frames
            .iter()
            .map(|&f| (self.names.display(f, self.procs), self.code(f)))
            .collect();
        show(coded.iter().map(|(name, code)| (name.as_ref(), *code)))
    }
}

/// What the address of `frame` says about it.
fn code_of(frame: FrameRef, names: &Names, procs: &ProcessTable) -> Code {
    let code = |kind, side, suffix| Code {
        kind: Some(kind),
        side,
        suffix,
    };
    if frame.is_kernel() {
        return code(FrameKind::Kernel, None, KERNEL_SUFFIX);
    }
    match frame {
        FrameRef::Managed(_) => code(FrameKind::Managed, Some(Side::Managed), JIT_SUFFIX),
        FrameRef::Elf { module, offset } => {
            let m = procs.modules.get(module);
            if m.is_assembly() {
                // ReadyToRun code; annotated as JIT code once named.
                let suffix = if names.has(frame) { JIT_SUFFIX } else { "" };
                return code(FrameKind::Managed, Some(Side::Managed), suffix);
            }
            let go = procs
                .modules
                .go_table(module)
                .is_some_and(|t| t.vaddr(offset).is_some_and(|pc| t.covers(pc)));
            if go {
                code(FrameKind::Go, Some(Side::Go), "")
            } else if DOTNET_RUNTIME_LIBRARIES.contains(&m.name.as_str()) {
                code(FrameKind::Native, Some(Side::DotnetRuntime), "")
            } else {
                code(FrameKind::Native, Some(Side::Native), "")
            }
        }
        FrameRef::Marker(Marker::Cgo | Marker::PInvoke) => code(FrameKind::Transition, None, ""),
        // Native code, but of no known runtime: it decides no crossing.
        FrameRef::Marker(Marker::Unknown | Marker::Vdso) => code(FrameKind::Native, None, ""),
        FrameRef::Kernel(_)
        | FrameRef::Marker(_)
        | FrameRef::Thread(_)
        | FrameRef::Goroutine(_)
        | FrameRef::Label(_) => Code {
            kind: None,
            side: None,
            suffix: "",
        },
    }
}

/// The markers of a call from `caller` code into `callee` code (named
/// `callee_name`); none if it crosses no runtime boundary.
fn markers(caller: Side, callee: Side, callee_name: &str) -> &'static [Marker] {
    use Side::*;
    match (caller, callee) {
        (Managed, Native) => &[Marker::PInvoke],
        (Managed, Go) => &[Marker::PInvoke, Marker::Cgo],
        (Go, Native | DotnetRuntime) => &[Marker::Cgo],
        (Native | DotnetRuntime, Go) if !is_root(callee_name) => &[Marker::Cgo],
        _ => &[],
    }
}

/// One shown frame on its way: its runtime still known.
struct Part<'n> {
    text: String,
    /// The name without its annotation.
    name: &'n str,
    kind: Option<FrameKind>,
    side: Option<Side>,
}

/// Frames (each a name, possibly several inlined ones joined by
/// [`INLINE_SEPARATOR`], and what its address says) as a profile shows them.
pub fn show<'n>(frames: impl IntoIterator<Item = (&'n str, Code)>) -> ShownStack {
    let mut parts: Vec<Part<'n>> = Vec::new();
    for (name, code) in frames {
        let user_code = matches!(
            code.kind,
            Some(FrameKind::Managed | FrameKind::Go | FrameKind::Native)
        );
        let mut segments = name.split(INLINE_SEPARATOR).peekable();
        while let Some(segment) = segments.next() {
            let mut text = segment.to_owned();
            if segments.peek().is_none() {
                text.push_str(code.suffix);
            }
            let name = segment.strip_suffix(INLINE_SUFFIX).unwrap_or(segment);
            let glue = user_code && is_glue(name);
            parts.push(Part {
                text,
                name,
                kind: if glue {
                    Some(FrameKind::Transition)
                } else {
                    code.kind
                },
                side: if glue { None } else { code.side },
            });
        }
    }
    // cgo's C wrapper of an exported Go function has the function's own name;
    // what gives it away is its one call, to crosscall2.
    for i in 1..parts.len() {
        if parts[i].name == "crosscall2"
            && matches!(parts[i - 1].side, Some(Side::Native | Side::DotnetRuntime))
        {
            parts[i - 1].kind = Some(FrameKind::Transition);
            parts[i - 1].side = None;
        }
    }

    let mut stack = ShownStack::default();
    let mut caller: Option<(usize, Side)> = None;
    for (i, part) in parts.iter().enumerate() {
        if let Some(side) = part.side {
            if let Some((at, from)) = caller {
                let markers = markers(from, side, part.name);
                if !markers.is_empty() {
                    let from = &parts[at];
                    stack.crossings.push(Crossing {
                        caller: from.name.to_owned(),
                        caller_kind: from.kind.unwrap_or(FrameKind::Native),
                        callee: part.name.to_owned(),
                        callee_kind: part.kind.unwrap_or(FrameKind::Native),
                    });
                }
                for m in markers {
                    stack.frames.push(Shown {
                        text: m.label().to_owned(),
                        kind: Some(FrameKind::Transition),
                    });
                }
            }
            caller = Some((i, side));
        }
        stack.frames.push(Shown {
            text: part.text.clone(),
            kind: part.kind,
        });
    }
    stack
}

/// Counts crossings into edges: `stacks` are each stack's crossings and its
/// samples. Most samples first, then by name.
pub fn count_edges<'c>(stacks: impl IntoIterator<Item = (&'c [Crossing], u64)>) -> Vec<Edge> {
    let mut counts: HashMap<&'c Crossing, u64> = HashMap::new();
    for (crossings, samples) in stacks {
        for (i, c) in crossings.iter().enumerate() {
            // Once per distinct edge: recursion through a boundary is one edge.
            if !crossings[..i].contains(c) {
                *counts.entry(c).or_default() += samples;
            }
        }
    }
    let mut edges: Vec<Edge> = counts
        .into_iter()
        .map(|(c, samples)| Edge {
            caller: c.caller.clone(),
            callee: c.callee.clone(),
            caller_kind: c.caller_kind,
            callee_kind: c.callee_kind,
            samples,
        })
        .collect();
    edges.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee)))
    });
    edges
}

/// Writes `edges` as a table for people:
///
/// ```text
/// SAMPLES  CALL ACROSS RUNTIMES
///     412  Prog::Main (managed) -> main.AddInts (Go)
/// ```
pub fn write_edges(edges: &[Edge], out: &mut impl io::Write) -> io::Result<()> {
    if edges.is_empty() {
        return writeln!(out, "no call across runtimes was sampled");
    }
    let width = edges
        .iter()
        .map(|e| e.samples.to_string().len())
        .max()
        .unwrap_or(0)
        .max("SAMPLES".len());
    writeln!(out, "{:>width$}  CALL ACROSS RUNTIMES", "SAMPLES")?;
    for e in edges {
        writeln!(
            out,
            "{:>width$}  {} ({}) -> {} ({})",
            e.samples,
            e.caller,
            e.caller_kind.label(),
            e.callee,
            e.callee_kind.label()
        )?;
    }
    Ok(())
}

/// The cgo fixture (`tests/fixtures/go/cgo.go`, built once) and a file offset
/// inside each of the functions `names`, Go ones (from its Go table) and C ones
/// (from its ELF symbols) alike.
#[cfg(test)]
pub(crate) fn cgo_fixture(names: &[&str]) -> (std::path::PathBuf, Vec<u64>) {
    use blazesym::inspect::{
        Inspector,
        source::{Elf, Source},
    };
    use crossprof_tests::{Go, GoBuild};

    let bin = Go::Go119.fixture("cgo_leaf", GoBuild::Normal);
    let table = crate::go::pclntab::GoTable::parse(std::fs::read(&bin).unwrap())
        .unwrap()
        .expect("a Go binary");
    let inspector = Inspector::new();
    let offsets = names
        .iter()
        .map(|&name| {
            let go = table
                .functions()
                .find(|(_, _, n)| n == name || n.strip_suffix(".abi0") == Some(name))
                .map(|(entry, _, _)| entry);
            let vaddr = go.unwrap_or_else(|| {
                // The symbol table: Go compresses its DWARF, which this build
                // of blazesym does not read.
                let mut elf = Elf::new(&bin);
                elf.debug_syms = false;
                let found = inspector.lookup(&Source::Elf(elf), &[name]).unwrap();
                found[0]
                    .first()
                    .unwrap_or_else(|| panic!("{name} in neither table of {}", bin.display()))
                    .addr
            });
            table.file_offset(vaddr + 1).unwrap()
        })
        .collect();
    (bin, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn code(kind: FrameKind, side: Side) -> Code {
        Code {
            kind: Some(kind),
            side: Some(side),
            suffix: "",
        }
    }
    const GO: Code = code(FrameKind::Go, Side::Go);
    const NATIVE: Code = code(FrameKind::Native, Side::Native);
    const CLR: Code = code(FrameKind::Native, Side::DotnetRuntime);
    const MANAGED: Code = Code {
        suffix: JIT_SUFFIX,
        ..code(FrameKind::Managed, Side::Managed)
    };
    const KERNEL: Code = Code {
        kind: Some(FrameKind::Kernel),
        side: None,
        suffix: KERNEL_SUFFIX,
    };
    const VDSO: Code = Code {
        kind: Some(FrameKind::Native),
        side: None,
        suffix: "",
    };

    fn texts(s: &ShownStack) -> Vec<&str> {
        s.frames.iter().map(|f| f.text.as_str()).collect()
    }

    fn kinds(s: &ShownStack) -> Vec<Option<FrameKind>> {
        s.frames.iter().map(|f| f.kind).collect()
    }

    fn crossing(caller: &str, ck: FrameKind, callee: &str, k: FrameKind) -> Crossing {
        Crossing {
            caller: caller.into(),
            caller_kind: ck,
            callee: callee.into(),
            callee_kind: k,
        }
    }

    #[test]
    fn glue_is_known_by_name() {
        for glue in [
            "crosscall2",
            "runtime.cgocall",
            "runtime.asmcgocall",
            "runtime.asmcgocall.abi0",
            "runtime.asmcgocall_no_g",
            "runtime.cgocallback",
            "runtime.cgocallbackg",
            "runtime.cgocallbackg1",
            "_cgoexp_0a1b2c_AddInts",
            "main._cgoexp_0a1b2c_AddInts",
            "_cgo_0a1b2c_Cfunc_foo",
            "main._Cfunc_foo",
            "example.com/pkg._C2func_foo",
            "dynamicClass::IL_STUB_PInvoke",
            "ILStubClass::IL_STUB_PInvoke",
            "dynamicClass::IL_STUB_ReversePInvoke",
        ] {
            assert!(is_glue(glue), "{glue}");
        }
        for code in [
            "main.main",
            "main.Cfunc",
            "runtime.mallocgc",
            "runtime.cgoCheckPointer",
            "cfunc",
            "Prog::Main",
            "System.Side.InteropServices.Marshal::GetLastPInvokeError",
            "[cgo]",
        ] {
            assert!(!is_glue(code), "{code}");
        }
    }

    #[test]
    fn one_cgo_marker_before_the_first_native_frame_after_the_glue() {
        let s = show([
            ("main.main", GO),
            ("main.inner", GO),
            ("main._Cfunc_f", GO),
            ("runtime.cgocall", GO),
            ("runtime.asmcgocall.abi0", GO),
            ("_cgo_0a1b2c_Cfunc_f", NATIVE),
            ("f", NATIVE),
            ("memcpy", NATIVE),
            ("sys_write", KERNEL),
        ]);
        assert_eq!(
            texts(&s),
            [
                "main.main",
                "main.inner",
                "main._Cfunc_f",
                "runtime.cgocall",
                "runtime.asmcgocall.abi0",
                "_cgo_0a1b2c_Cfunc_f",
                "[cgo]",
                "f",
                "memcpy",
                "sys_write_[k]"
            ]
        );
        use FrameKind::*;
        let t = Some(Transition);
        assert_eq!(
            kinds(&s),
            [
                Some(Go),
                Some(Go),
                t,
                t,
                t,
                t,
                t,
                Some(Native),
                Some(Native),
                Some(Kernel)
            ]
        );
        assert_eq!(s.crossings, [crossing("main.inner", Go, "f", Native)]);
    }

    #[test]
    fn a_callback_into_go_crosses_back_with_a_second_marker_in_order() {
        let s = show([
            ("main.main", GO),
            ("main._Cfunc_run", GO),
            ("runtime.cgocall", GO),
            ("runtime.asmcgocall", GO),
            ("_cgo_1_Cfunc_run", NATIVE),
            ("run", NATIVE),
            ("_cgoexp_1_cb", NATIVE),
            ("crosscall2", GO),
            ("runtime.cgocallback", GO),
            ("runtime.cgocallbackg", GO),
            ("runtime.cgocallbackg1", GO),
            ("main._cgoexp_1_cb", GO),
            ("main.cb", GO),
        ]);
        let t = texts(&s);
        let markers: Vec<usize> = (0..t.len()).filter(|&i| t[i] == "[cgo]").collect();
        assert_eq!(markers.len(), 2, "{t:?}");
        assert_eq!(t[markers[0] + 1], "run");
        assert_eq!(t[markers[1] + 1], "main.cb");
        assert_eq!(t[markers[1] - 1], "main._cgoexp_1_cb");
        use FrameKind::*;
        assert_eq!(
            s.crossings,
            [
                crossing("main.main", Go, "run", Native),
                crossing("run", Native, "main.cb", Go)
            ]
        );
    }

    #[test]
    fn p_invoke_markers_only_for_code_that_is_not_the_dotnet_runtime() {
        use FrameKind::*;
        let s = show([
            ("Prog::Main", MANAGED),
            ("dynamicClass::IL_STUB_PInvoke", MANAGED),
            ("native_add", NATIVE),
        ]);
        assert_eq!(
            texts(&s),
            [
                "Prog::Main_[j]",
                "dynamicClass::IL_STUB_PInvoke_[j]",
                "[P/Invoke]",
                "native_add"
            ]
        );
        assert_eq!(s.frames[1].kind, Some(Transition));
        assert_eq!(
            s.crossings,
            [crossing("Prog::Main", Managed, "native_add", Native)]
        );
        // A runtime helper, and what it calls in turn: no P/Invoke.
        let s = show([
            ("Prog::Main", MANAGED),
            ("JIT_New", CLR),
            ("memset", NATIVE),
            ("Prog::Finalize", MANAGED),
        ]);
        assert!(s.crossings.is_empty());
        assert!(!texts(&s).iter().any(|t| t.starts_with('[')), "{s:?}");
    }

    #[test]
    fn a_p_invoke_into_a_go_library_is_one_edge_with_both_markers() {
        let s = show([
            ("Prog::Main", MANAGED),
            ("dynamicClass::IL_STUB_PInvoke", MANAGED),
            ("AddInts", NATIVE), // cgo's C wrapper of the export: glue
            ("crosscall2", GO),
            ("runtime.cgocallback", GO),
            ("main._cgoexp_0a1b_AddInts", GO),
            ("main.AddInts", GO),
        ]);
        let t = texts(&s);
        assert_eq!(t[t.len() - 3..], ["[P/Invoke]", "[cgo]", "main.AddInts"]);
        assert_eq!(s.frames[2].kind, Some(FrameKind::Transition));
        use FrameKind::*;
        assert_eq!(
            s.crossings,
            [crossing("Prog::Main", Managed, "main.AddInts", Go)]
        );
    }

    #[test]
    fn single_runtime_stacks_are_unchanged() {
        let go = [
            ("runtime.goexit", GO),
            ("main.main", GO),
            ("main.work", GO),
            ("runtime.nanotime1", GO),
            ("[vdso]", VDSO), // Go calls the vDSO itself, not through cgo
        ];
        let native = [
            ("_start", NATIVE),
            ("main", NATIVE),
            ("work", NATIVE),
            ("write", NATIVE),
            ("ksys_write", KERNEL),
        ];
        // cgo's C thread entry starting a Go thread is no call across runtimes.
        let thread = [
            ("start_thread", NATIVE),
            ("threadentry", NATIVE),
            ("runtime.mstart", GO),
            ("runtime.schedule", GO),
        ];
        for stack in [&go[..], &native[..], &thread[..]] {
            let s = show(stack.iter().copied());
            assert!(s.crossings.is_empty(), "{s:?}");
            let plain: Vec<&str> = stack.iter().map(|(n, _)| *n).collect();
            let shown: Vec<&str> = texts(&s)
                .into_iter()
                .map(|t| t.trim_end_matches(KERNEL_SUFFIX))
                .collect();
            assert_eq!(shown, plain);
        }
    }

    #[test]
    fn crossings_name_the_innermost_inlined_caller_and_the_outermost_callee() {
        let s = show([
            ("main.outer\u{1f}main.inner_[i]", GO),
            ("main._Cfunc_f", GO),
            ("f\u{1f}g_[i]", NATIVE),
        ]);
        assert_eq!(
            texts(&s),
            [
                "main.outer",
                "main.inner_[i]",
                "main._Cfunc_f",
                "[cgo]",
                "f",
                "g_[i]"
            ]
        );
        use FrameKind::*;
        assert_eq!(s.crossings, [crossing("main.inner", Go, "f", Native)]);
    }

    #[test]
    fn edges_count_a_sample_once_per_distinct_edge_most_first() {
        use FrameKind::*;
        let down = crossing("main.inner", Go, "f", Native);
        let up = crossing("f", Native, "main.cb", Go);
        let pinvoke = crossing("Prog::Main", Managed, "add", Native);
        // Recursion through the boundary: the same edge twice in one stack.
        let recursive = vec![down.clone(), up.clone(), down.clone()];
        let once = vec![down.clone()];
        let other = vec![pinvoke.clone()];
        let edges = count_edges([
            (recursive.as_slice(), 5),
            (once.as_slice(), 2),
            (other.as_slice(), 6),
        ]);
        let got: Vec<(&str, &str, u64)> = edges
            .iter()
            .map(|e| (e.caller.as_str(), e.callee.as_str(), e.samples))
            .collect();
        assert_eq!(
            got,
            [
                ("main.inner", "f", 7),
                ("Prog::Main", "add", 6),
                ("f", "main.cb", 5)
            ]
        );
        assert_eq!((edges[0].caller_kind, edges[0].callee_kind), (Go, Native));

        let mut out = Vec::new();
        write_edges(&edges, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SAMPLES  CALL ACROSS RUNTIMES\n      \
             7  main.inner (Go) -> f (native)\n      \
             6  Prog::Main (managed) -> add (native)\n      \
             5  f (native) -> main.cb (Go)\n"
        );
        let json = serde_json::to_value(&edges[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"caller": "Prog::Main", "callee": "add",
                "caller_kind": "managed", "callee_kind": "native", "samples": 6})
        );
        let mut out = Vec::new();
        write_edges(&[], &mut out).unwrap();
        assert_eq!(out, b"no call across runtimes was sampled\n");
    }

    #[test]
    fn frames_are_classified_by_address() {
        let (names, procs) = (Names::default(), ProcessTable::default());
        let mut c = Classifier::new(&names, &procs);
        let kind = |c: &mut Classifier, f| c.code(f).kind;
        use FrameKind::*;
        assert_eq!(
            kind(&mut c, FrameRef::Kernel(0xffff_ffff_8100_0000)),
            Some(Kernel)
        );
        assert_eq!(
            kind(&mut c, FrameRef::Marker(Marker::KernelTruncated)),
            Some(Kernel)
        );
        assert_eq!(kind(&mut c, FrameRef::Managed(0)), Some(Managed));
        assert_eq!(
            kind(&mut c, FrameRef::Marker(Marker::Cgo)),
            Some(Transition)
        );
        assert_eq!(
            kind(&mut c, FrameRef::Marker(Marker::PInvoke)),
            Some(Transition)
        );
        assert_eq!(
            kind(&mut c, FrameRef::Marker(Marker::Unknown)),
            Some(Native)
        );
        assert_eq!(kind(&mut c, FrameRef::Marker(Marker::Vdso)), Some(Native));
        for not_code in [
            FrameRef::Thread(0),
            FrameRef::Goroutine(3),
            FrameRef::Label(0),
            FrameRef::Marker(Marker::Gc),
            FrameRef::Marker(Marker::UserTruncated),
        ] {
            assert_eq!(kind(&mut c, not_code), None, "{not_code:?}");
        }
    }

    #[test]
    fn go_is_decided_per_address_in_a_binary_built_with_cgo() {
        let (bin, offsets) = cgo_fixture(&["main.inner", "runtime.cgocall", "cfunc", "cspin"]);
        let mut procs = ProcessTable::default();
        let module = procs.modules.add_file(&bin);
        let names = Names::default();
        let mut c = Classifier::new(&names, &procs);
        let kinds: Vec<Option<FrameKind>> = offsets
            .iter()
            .map(|&offset| c.code(FrameRef::Elf { module, offset }).kind)
            .collect();
        use FrameKind::*;
        assert_eq!(kinds, [Some(Go), Some(Go), Some(Native), Some(Native)]);
    }
}
