//! .NET JIT code named from the runtime's own memory: nothing asked of the
//! runtime, nothing written by it (no perf map, no diagnostics IPC), only
//! reads of `/proc/PID/mem` (issue #21; the approach of the OpenTelemetry eBPF
//! profiler's `interpreter/dotnet`, read to learn, for .NET 6-10).
//!
//! From a sampled address to `Namespace.Type::Method`:
//! 1. **The DAC table** (`g_dacTable` in `libcoreclr.so`): the addresses the
//!    runtime's debugger-access layer needs, in `src/coreclr/inc/dacvars.h`
//!    order; its first slot is the code-range structure. .NET 8 exports the
//!    symbol and stores absolute addresses (since .NET 7, dotnet/runtime PR
//!    68065); .NET Core 3.1 does not export it (its `.symtab`, shipped, lists
//!    it as a local symbol) and stores 4-byte offsets from the library's base.
//!    The table is filled during the runtime's start-up: a zero slot means
//!    "not yet", asked again later.
//! 2. **Code ranges → the code heap**: .NET 8 keeps them in
//!    `ExecutionManager::g_codeRangeMap`, a `RangeSectionMap` of five levels
//!    of 256 pointers (the level index is 8 bits of the address from bit 49
//!    down to bit 17; every pointer tagged in bit 0), whose last level points
//!    to `RangeSectionFragment {next, begin, end, RangeSection*}` lists; 3.1
//!    keeps a linked list (`ExecutionManager::m_CodeRangeList`). A
//!    `RangeSection` flagged `CODEHEAP` (2) points to its `HeapList`, whose
//!    `mapBase` and nibble map (`pHdrMap`) find a method's start.
//! 3. **The nibble map** (`src/coreclr/vm/nibblemapmacros.h`): one 32-bit
//!    word per 256 code bytes, one nibble per 32-byte bucket, the most
//!    significant nibble first; nibble `n > 0` says a method starts at
//!    `bucket + (n - 1) * 4`. Before .NET 10 the start is the first such
//!    nibble at or before the address (`EEJitManager::FindMethodCode`); from
//!    10 a word inside one method holds a pointer to its start instead
//!    (`Nibbles::Constant`).
//! 4. **Code header → MethodDesc → token**: the 8 bytes before a method's code
//!    point to its `RealCodeHeader`, whose `phdrMDesc` is the `MethodDesc`.
//!    The MethodDef token is `0x06000000 | chunk token range << bits |
//!    remainder`, the remainder in the MethodDesc's first 16 bits (12 bits on
//!    .NET 8, 14 on 3.1: `METHOD_TOKEN_REMAINDER_BIT_COUNT`), the range in its
//!    `MethodDescChunk` (found `chunk index * 8 + 0x18` bytes before it). The
//!    chunk's `MethodTable` gives the `Module`, whose `PEAssembly` (3.1:
//!    `PEFile`) → `PEImage` holds the assembly's path (an `SString` of
//!    UTF-16). Dynamic methods (LCG, classification 7) carry their own name.
//! 5. The name is the MethodDef's in the assembly's ECMA-335 metadata,
//!    `Namespace.Type::Method` as the perf map prints it once crossprof drops
//!    tier and signature ([`super::r2r::MethodNames`]).
//!
//! Layout facts per version are in [`NET10`], [`NET9`], [`NET8`] and [`CORE31`], each
//! with its sources; every offset was checked on this project's machine by
//! walking a running process (2026-12-06: every JIT method of the chain
//! fixture, at its first, middle and last byte, found at the start and with
//! the name its perf map gives, 102 of 102 addresses on 8.0.4, 51 of 51 on
//! 3.1.23; 60 of 60 on 10.0.0 with the constant-time map, where the linear
//! reading got 28 wrong). Other versions are not read (see [`Layout::of`]).
//!
//! Everything read is the target's and treated as hostile: each walk is
//! bounded (levels, list links, nibble words, name lengths), a pointer must be
//! a user-space address, and what does not fit is "not named", never a panic.
//! The runtime changes these structures while they are read; a torn read
//! names nothing or, at worst, names an address as its neighbour was named
//! a moment before.

use std::{collections::HashMap, fs::File, sync::Arc};

use crate::le::{u32_at, u64_at};
use crate::procmem::{Memory, each_batched, read_batched, user_pointer};

use super::{Clr, MAX_ASSEMBLY, r2r::MethodNames};
use crate::native::maps::MapEntry;

/// Why a process's runtime memory cannot be read for names.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// A version whose layouts crossprof does not know.
    #[error("its layouts are not known to crossprof for .NET {0} (known: 10.0, 9.0, 8.0, 3.1)")]
    Version(String),
    /// `libcoreclr.so` is not mapped from its start.
    #[error("libcoreclr.so is not mapped from its start")]
    NoCoreclr,
    /// The library could not be read, or has no `g_dacTable` symbol.
    #[error("no g_dacTable in libcoreclr.so ({0})")]
    NoDacTable(&'static str),
    /// `/proc/PID/mem` could not be opened.
    #[error("its memory could not be opened: {0}")]
    Open(String),
    /// The DAC table is still empty: the runtime is starting.
    #[error("its runtime has not started yet")]
    NotStarted,
    /// The runtime's own contract descriptor disagrees with the layout
    /// crossprof has for its version, or is not there to check it by.
    #[error("{0}")]
    Descriptor(String),
}

impl MemoryError {
    /// May locating the runtime succeed later? Its library not mapped from
    /// its start yet, or not openable or readable as mapped (the loader
    /// moves its mappings while it loads it): yes; a version, symbol or
    /// layout crossprof does not know: no.
    pub fn may_pass(&self) -> bool {
        matches!(
            self,
            MemoryError::NoCoreclr
                | MemoryError::Open(_)
                | MemoryError::NoDacTable(
                    "libcoreclr.so could not be opened" | "libcoreclr.so could not be read"
                )
        )
    }
}

/// Where a runtime version keeps what names its JIT code (x86-64 Linux,
/// release builds).
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// The versions it is for (`8.0`).
    pub version: &'static str,
    /// DAC table entries are 8-byte addresses (else 4-byte offsets from
    /// libcoreclr's base).
    dac_addresses: bool,
    /// How the code ranges are kept.
    ranges: Ranges,
    /// `RangeSection::flags` (u32).
    section_flags: u64,
    /// `RangeSection::pHeapList` (3.1: `pHeapListOrZapModule`).
    section_heap_list: u64,
    /// The flag of a range of precompiled (ReadyToRun) code, and of a range of
    /// runtime stubs, if the version has one.
    flag_precompiled: Option<u32>,
    flag_stubs: Option<u32>,
    /// Bits of the MethodDef token kept in the MethodDesc.
    token_remainder_bits: u32,
    /// `Module` → its `PEAssembly` (3.1: `PEFile`).
    module_pe: u64,
    /// JIT code's debug info starts with a flag byte (.NET 5 on: see
    /// [`super::debuginfo`]).
    debug_flag_byte: bool,
    /// Its bounds are packed in bits (.NET 10).
    bounds_bit_packed: bool,
    /// The nibble map's format.
    nibbles: Nibbles,
    /// `DynamicMethodDesc::m_pszMethodName` (a UTF-8 string).
    dynamic_name: u64,
    /// What of the table the runtime's own contract descriptor states, checked
    /// against it before its memory is read ([`super::descriptor`]).
    described: Described,
}

/// What a runtime version's contract descriptor describes of [`Layout`].
#[derive(Debug, PartialEq, Eq)]
enum Described {
    /// Nothing: no descriptor (before .NET 9).
    Nothing,
    /// The type system (`MethodDesc`, its chunk, `MethodTable`, `Module`,
    /// `DynamicMethodDesc`) but not the code heaps, `PEAssembly` or the nibble
    /// map's version (.NET 9: its descriptor's first version).
    TypeSystem,
    /// The type system and the code heaps (.NET 10).
    CodeHeaps,
}

/// How a code heap's nibble map says where methods start (see the module's
/// doc).
#[derive(Debug, PartialEq, Eq)]
enum Nibbles {
    /// Nibbles only: a method's start is the first nibble at or before an
    /// address, however far back (before .NET 10; the runtime's contract
    /// `ExecutionManager` version 1).
    Linear,
    /// Nibbles, and in each word whose 256 bytes lie inside one method a
    /// pointer to its start (its low nibble above 8): at most two words read
    /// (.NET 10, dotnet/runtime PR 108939, contract `ExecutionManager` 2).
    Constant,
}

#[derive(Debug, PartialEq, Eq)]
enum Ranges {
    /// `RangeSectionMap`: five levels of 256 tagged pointers.
    Map,
    /// A list of `RangeSection`s linked at this offset, from the pointer the
    /// DAC slot locates.
    List { next: u64 },
}

/// .NET 8 (8.0.4 checked). Sources, dotnet/runtime at v8.0.4 as cited by the
/// OpenTelemetry eBPF profiler's `interpreter/dotnet/data.go`:
/// `src/coreclr/vm/codeman.h` (`RangeSectionMap` levels L999-L1002, fragment
/// L974; `RangeSection {_range, _flags, _pjit, _pR2RModule, _pHeapList}`),
/// `loaderallocator.hpp`; at v7.0.15, unchanged in 8: `HeapList` (codeman.h
/// L466: `mapBase` 0x20, `pHdrMap` 0x28), `RealCodeHeader` (L131-L135:
/// `phdrMDesc` 0x18), `MethodDesc` (method.hpp L193: token remainder u16 at
/// 0, chunk index u8 at 2, flags u16 at 6), `MethodDescChunk` (L2163/L2344:
/// MethodTable at 0, token range u16 at 0x12), `MethodTable` (methodtable.h:
/// `m_pLoaderModule` 0x18), `Module` (ceeload.h: `m_pPEAssembly` 0x110),
/// `PEAssembly::m_PEImage` 0x8, `PEImage::m_path` 0; remainder bits in
/// `vm/vars.hpp`. Checked in memory here as the module doc says.
pub const NET8: Layout = Layout {
    version: "8.0",
    dac_addresses: true,
    ranges: Ranges::Map,
    section_flags: 0x10,
    section_heap_list: 0x28,
    flag_precompiled: None,
    flag_stubs: Some(4),
    token_remainder_bits: 12,
    module_pe: 0x110,
    debug_flag_byte: true,
    bounds_bit_packed: false,
    nibbles: Nibbles::Linear,
    dynamic_name: 0x18,
    described: Described::Nothing,
};

/// .NET Core 3.1 (3.1.23 checked; dotnet/coreclr release/3.1,
/// `src/vm/codeman.h`: `RangeSection {LowAddress, HighAddress, pjit, pnext,
/// pLastUsed, flags, pHeapListOrZapModule}`, flag `RANGE_SECTION_READYTORUN`
/// 4; `ceeload.h`: `Module::m_file` 0x10; remainder bits 14). The offsets were
/// read by dumping a running 3.1.23 process's structures and agree with the
/// OpenTelemetry profiler's .NET 6 table for the same types.
pub const CORE31: Layout = Layout {
    version: "3.1",
    dac_addresses: false,
    ranges: Ranges::List { next: 0x18 },
    section_flags: 0x28,
    section_heap_list: 0x30,
    flag_precompiled: Some(4),
    flag_stubs: None,
    token_remainder_bits: 14,
    module_pe: 0x10,
    debug_flag_byte: false,
    bounds_bit_packed: false,
    nibbles: Nibbles::Linear,
    dynamic_name: 0x18,
    described: Described::Nothing,
};

/// .NET 10 (10.0.0 checked). 10 publishes its layouts in the contract
/// descriptor it exports (`DotNetRuntimeContractDescriptor`, compact JSON;
/// dotnet/runtime `docs/design/datacontracts/contract-descriptor.md` and
/// `data_descriptor.md`); these were read from 10.0.0's own (libcoreclr
/// 10.0.25.52411, commit b0f34d51): `RangeSection {RangeBegin 0, RangeEndOpen
/// 8, Flags 16, JitManager 24, R2RModule 32, HeapList 40}`,
/// `CodeHeapListNode {EndAddress 24, MapBase 32, HeaderMap 40}`,
/// `RealCodeHeader {GCInfo 16, MethodDesc 24, NumUnwindInfos 32,
/// UnwindInfos 36}`, `MethodDesc` (16 bytes from .NET 9: `CodeData` at 8)
/// with the remainder, chunk index and flags where 8 has them,
/// `MethodDescChunk {MethodTable 0, FlagsAndTokenRange 18}` (24 bytes),
/// `MethodTable.Module` 24, `Module.PEAssembly` 216 (8: 0x110),
/// `PEAssembly.PEImage` 8, `DynamicMethodDesc.MethodName` 32 (8: 0x18), global
/// `MethodDescTokenRemainderBitCount` 12, contract `ExecutionManager` 2 (the
/// constant-time nibble map). `g_dacTable` is still exported, slot 0 the range
/// map, as in 8; the range map's levels are unchanged. Debug info bounds are
/// bit-packed (PR 116031). Checked by walking a running 10.0.0 process.
pub const NET10: Layout = Layout {
    version: "10.0",
    module_pe: 0xd8,
    bounds_bit_packed: true,
    nibbles: Nibbles::Constant,
    dynamic_name: 0x20,
    described: Described::CodeHeaps,
    ..NET8
};

/// .NET 9 (9.0.4 checked: Ubuntu 25.04's build, `dotnet9` 9.0.4-0ubuntu1,
/// libcoreclr 9.0.425.16305, commit b7deac6d). The code heaps, nibble map
/// (linear: the constant-time map, PR 108939, came in 10), code header and
/// debug info (flag byte, nibbles) are 8's; what 9 changed is 10's: the
/// 16-byte `MethodDesc` (`m_codeData` at 8, dotnet/runtime PR 102298), so
/// `DynamicMethodDesc::m_pszMethodName` at 0x20, and a `Module` grown by
/// `m_path` (a UTF-16 copy of the path, 0x110) before `m_pPEAssembly`
/// (0x118; `src/coreclr/vm/ceeload.h`: `m_pSimpleName, m_path,
/// m_pPEAssembly, m_baseAddress`). 9's contract descriptor, its first,
/// describes the type system only: `Module.Path` 272 and `Module.Base` 288
/// (the `PEAssembly` pointer is the word between them), `MethodDesc`,
/// `MethodDescChunk`, `MethodTable.Module`, `DynamicMethodDesc.MethodName`
/// 32, checked per process; not the code heaps (no `ExecutionManager`
/// contract), which were checked by walking a running 9.0.4 process: every
/// JIT method of two fixtures named as the runtime's own perf map names it.
pub const NET9: Layout = Layout {
    version: "9.0",
    module_pe: 0x118,
    dynamic_name: 0x20,
    described: Described::TypeSystem,
    ..NET8
};

impl Layout {
    /// The layout of runtime `clr`, if crossprof knows it.
    pub fn of(clr: &Clr) -> Result<&'static Layout, MemoryError> {
        let mut parts = clr.version.split('.');
        match (parts.next(), parts.next()) {
            (Some("8"), Some("0")) => Ok(&NET8),
            (Some("9"), Some("0")) => Ok(&NET9),
            (Some("3"), Some("1")) => Ok(&CORE31),
            (Some("10"), Some("0")) => Ok(&NET10),
            _ => Err(MemoryError::Version(clr.version.clone())),
        }
    }
}

impl Layout {
    /// What this table says, as the runtime's contract descriptor names it
    /// (`None`: a version without one). The constants the descriptor does not
    /// publish (flag values, the code header's debug-info field, the
    /// `SString` inside `PEImage`) are not in it.
    pub fn expected(&self) -> Option<super::descriptor::Expected> {
        // The type system, as both versions with a descriptor state it.
        let mut fields = vec![
            ("MethodDesc", "Flags3AndTokenRemainder", 0),
            ("MethodDesc", "ChunkIndex", 2),
            ("MethodDesc", "Flags", 6),
            ("MethodDescChunk", "MethodTable", 0),
            ("MethodDescChunk", "FlagsAndTokenRange", CHUNK_TOKEN_RANGE),
            ("MethodDescChunk", "!", CHUNK_HEADER),
            ("MethodTable", "Module", METHOD_TABLE_MODULE),
            ("DynamicMethodDesc", "MethodName", self.dynamic_name),
        ];
        let mut globals = vec![
            (
                "MethodDescTokenRemainderBitCount",
                u64::from(self.token_remainder_bits),
            ),
            ("MethodDescAlignment", 8),
        ];
        let mut contracts = vec![("RuntimeTypeSystem", 1)];
        match self.described {
            Described::Nothing => return None,
            Described::TypeSystem => {
                // 9 names `Module`'s path copy and base address, not its
                // `PEAssembly`: the word between the two (`ceeload.h`).
                fields.extend([
                    ("Module", "Path", self.module_pe - 8),
                    ("Module", "Base", self.module_pe + 8),
                ]);
            }
            Described::CodeHeaps => {
                fields.extend([
                    ("RangeSectionFragment", "Next", 0),
                    ("RangeSectionFragment", "RangeBegin", 8),
                    ("RangeSectionFragment", "RangeEndOpen", 16),
                    ("RangeSectionFragment", "RangeSection", 24),
                    ("RangeSection", "RangeBegin", 0),
                    ("RangeSection", "RangeEndOpen", 8),
                    ("RangeSection", "Flags", self.section_flags),
                    ("RangeSection", "HeapList", self.section_heap_list),
                    ("CodeHeapListNode", "EndAddress", HEAP_END),
                    ("CodeHeapListNode", "MapBase", HEAP_MAP_BASE),
                    ("CodeHeapListNode", "HeaderMap", HEAP_NIBBLE_MAP),
                    ("RealCodeHeader", "MethodDesc", CODE_HEADER_METHOD_DESC),
                    ("RealCodeHeader", "NumUnwindInfos", CODE_HEADER_UNWIND_COUNT),
                    ("RealCodeHeader", "UnwindInfos", CODE_HEADER_UNWIND_INFOS),
                    ("Module", "PEAssembly", self.module_pe),
                    ("PEAssembly", "PEImage", PE_IMAGE),
                ]);
                globals.push(("StubCodeBlockLast", STUB_CODE_BLOCK_LAST));
                contracts.push((
                    "ExecutionManager",
                    match self.nibbles {
                        Nibbles::Linear => 1,
                        Nibbles::Constant => 2,
                    },
                ));
            }
        }
        Some(super::descriptor::Expected {
            fields,
            globals,
            contracts,
        })
    }
}

/// `RangeSection` flag: the range is a JIT code heap.
const RANGE_CODE_HEAP: u32 = 2;
/// `HeapList::endAddress` (the end of the heap's used code),
/// `HeapList::mapBase`, `HeapList::pHdrMap` (both versions).
const HEAP_END: u64 = 0x18;
const HEAP_MAP_BASE: u64 = 0x20;
const HEAP_NIBBLE_MAP: u64 = 0x28;
/// `RealCodeHeader::phdrDebugInfo`, `RealCodeHeader::phdrMDesc` (both
/// versions).
const CODE_HEADER_DEBUG_INFO: u64 = 0;
const CODE_HEADER_METHOD_DESC: u64 = 0x18;
/// `RealCodeHeader::nUnwindInfos` (u32) and `unwindInfos`, an array of
/// `RUNTIME_FUNCTION {BeginAddress, EndAddress, UnwindData}` (u32 each,
/// offsets from the heap's `mapBase`): the method's body, then its funclets
/// (both versions; checked on 8.0.4 against the perf map's sizes, 152 of
/// 156 methods whole in the first, the other 4 with their funclets).
const CODE_HEADER_UNWIND_COUNT: u64 = 0x20;
const CODE_HEADER_UNWIND_INFOS: u64 = 0x24;
/// More unwind infos than this is not a code header.
const MAX_UNWIND_INFOS: u32 = 64;
/// A code block's header holds, instead of a `RealCodeHeader` pointer, its
/// `StubCodeBlockKind` when the block is a stub's (up to
/// `STUB_CODE_BLOCK_LAST`, 0xF; dotnet/runtime `src/coreclr/vm/codeman.h`,
/// .NET 7 and 8). Seen on 8.0.4: virtual stub dispatch stubs in the JIT code
/// heap, headed 6-9 where the perf map lists them as below.
const STUB_CODE_BLOCK_LAST: u64 = 0xF;

/// The size of a method's code from its `RUNTIME_FUNCTION`s (12 bytes
/// each, the body's first): from the body's start to the furthest end. `None`:
/// not such a list.
fn size_of_unwind_infos(infos: &[u8]) -> Option<u64> {
    let first = u32_at(infos, 0)?;
    let mut end = first;
    for info in 0..infos.len() / 12 {
        let (b, e) = (u32_at(infos, info * 12)?, u32_at(infos, info * 12 + 4)?);
        if b < first || e <= b {
            return None;
        }
        end = end.max(e);
    }
    // No method is larger than what a lookup walks back over.
    let size = u64::from(end - first);
    (size <= MAX_NIBBLE_WORDS * 256).then_some(size)
}

/// A method listed by [`Namer::new_methods`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its code's first byte.
    pub start: u64,
    /// One past its code's last byte.
    pub end: u64,
    /// What names it across its versions (Tier 0, OSR and Tier 1 share their
    /// `MethodDesc`; overloads do not), for the frame shapes.
    pub key: Arc<str>,
    /// Its first bytes (at most [`super::unwind::PROLOG_BYTES`]).
    pub prolog: Vec<u8>,
}

/// The `RealCodeHeader` a code block's header word points to; `None` for a
/// stub block's kind (at most [`STUB_CODE_BLOCK_LAST`]), a header not
/// written yet (0), or what is no user-space address.
fn real_header(word: u64) -> Option<u64> {
    (word > STUB_CODE_BLOCK_LAST && word < 1 << 47).then_some(word)
}

/// The perf map's name for a stub block's kind (`STUB_CODE_BLOCK_VSD_*`).
fn stub_kind(kind: u64) -> Option<&'static str> {
    match kind {
        6 => Some("GenerateDispatchStub"),
        7 => Some("GenerateResolveStub"),
        8 => Some("GenerateLookupStub"),
        9 => Some("GenerateVTableCallStub"),
        _ => None,
    }
}
/// `MethodDescChunk`'s size before its first MethodDesc, and where its token
/// range (u16) is (both versions).
const CHUNK_HEADER: u64 = 0x18;
const CHUNK_TOKEN_RANGE: u64 = 0x12;
/// `MethodTable::m_pLoaderModule` (both versions).
const METHOD_TABLE_MODULE: u64 = 0x18;
/// `PEAssembly::m_PEImage` / `PEFile::m_identity`; `PEImage::m_path`, an
/// `SString` (u32 size in bytes with the NUL, ..., UTF-16 buffer at 0x10).
const PE_IMAGE: u64 = 0x8;
const SSTRING_BUFFER: u64 = 0x10;
/// MethodDesc classification of a dynamic method (`mcDynamic`): every
/// version (its name, [`Layout::dynamic_name`], checked: an IL stub's points
/// to `IL_STUB_UnboxingStub` on 3.1.23, `InvokeStub_EventAttribute.set_Level`
/// on 8.0.4).
const DYNAMIC: u16 = 7;

/// The most nibble-map words read back from an address: 1 MiB of code, far
/// more than any method (the runtime's own walk is unbounded:
/// dotnet/runtime#93550).
const MAX_NIBBLE_WORDS: u64 = (1 << 20) / 256;
/// The most `RangeSection`s (3.1's list) or fragments (8's map) followed,
/// and map pages read.
const MAX_LINKS: usize = 4096;
/// The most methods listed (a large service JIT-compiles ~100,000).
const MAX_LISTED: usize = 1 << 18;
/// The longest path or method name read.
const MAX_NAME: u32 = 4096;

/// What the runtime says is at a code address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A JIT-compiled method.
    Method(Method),
    /// In a range of precompiled (ReadyToRun) code: named from its assembly.
    Precompiled,
    /// In a range of the runtime's stubs, or a stub in a code heap: its
    /// kind, where the runtime says (the perf map's name for it).
    Stub(Option<&'static str>),
    /// In no range the runtime knows (or the walk failed).
    Unknown,
}

/// A JIT-compiled method found in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Its code's first byte.
    pub start: u64,
    /// Its `MethodDesc`.
    pub method_desc: u64,
    /// Its MethodDef token (`0x06000000` for a dynamic method).
    pub token: u32,
    /// Its `Module`.
    pub module: u64,
    /// A dynamic method's own name.
    pub dynamic: Option<String>,
}

/// A process's runtime, read in its memory.
#[derive(Debug)]
pub struct Runtime<M> {
    mem: M,
    layout: &'static Layout,
    /// The code-range map (8) or the list head pointer's address (3.1).
    ranges: u64,
}

impl Runtime<File> {
    /// Finds the runtime `clr` of process `pid`: its layout, its DAC table
    /// (from libcoreclr's symbols, read through the process's own mapping of
    /// it, as its maps show it now: the loader maps a library's span first and
    /// its segments over it, so a mapping seen early may have been split since)
    /// and the code ranges.
    pub fn find(pid: u32, clr: &Clr) -> Result<Self, MemoryError> {
        Self::locate(pid, clr)?.start().map_err(|(_, e)| e)
    }

    /// Finds the runtime of process `pid` as [`Runtime::find`] does, but for
    /// its DAC table's being filled.
    pub fn locate(pid: u32, clr: &Clr) -> Result<Located, MemoryError> {
        let layout = Layout::of(clr)?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| MemoryError::Open(e.to_string()))?;
        let maps = crate::native::maps::parse_maps(&maps);
        let lib = coreclr_mapping(&maps).ok_or(MemoryError::NoCoreclr)?;
        let file = crate::files::open_regular(std::path::Path::new(&format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            lib.start, lib.end
        )))
        .ok_or(MemoryError::NoDacTable("libcoreclr.so could not be opened"))?;
        let mapped = crate::native::elf::MappedFile::of(&file)
            .ok_or(MemoryError::NoDacTable("libcoreclr.so could not be read"))?;
        let d = mapped.bytes();
        let elf = crate::native::elf::Elf::parse(d).ok_or(MemoryError::NoDacTable("not ELF"))?;
        let table = elf
            .symbol(d, "g_dacTable")
            .ok_or(MemoryError::NoDacTable("no such symbol"))?;
        // The mapping at file offset 0 is at the first segment's address.
        let bias = lib.start.wrapping_sub(elf.vaddr(0).unwrap_or(0));
        let mem =
            File::open(format!("/proc/{pid}/mem")).map_err(|e| MemoryError::Open(e.to_string()))?;
        // Where its contract descriptor is, for a version crossprof checks
        // its layout by: read once the runtime has started (see
        // `Located::start`), not now — caught at its first mapping, the
        // library's data may not be relocated yet (its pointers then lead
        // nowhere: .NET 9 went unnamed in one test run of twenty).
        let descriptor = match layout.expected() {
            Some(_) => {
                let at = elf.symbol(d, "DotNetRuntimeContractDescriptor").ok_or_else(|| {
                    MemoryError::Descriptor(
                        "its libcoreclr.so exports no DotNetRuntimeContractDescriptor to check crossprof's layout by".into(),
                    )
                })?;
                Some(bias.wrapping_add(at))
            }
            None => None,
        };
        Ok(Located {
            mem,
            layout,
            bias,
            table: bias.wrapping_add(table),
            descriptor,
        })
    }
}

/// Slot 0 of the DAC table at `table`: the code ranges; `NotStarted` while
/// it is empty.
fn ranges_slot(
    mem: &impl Memory,
    layout: &Layout,
    bias: u64,
    table: u64,
) -> Result<u64, MemoryError> {
    let ranges = if layout.dac_addresses {
        mem.u64(table)
    } else {
        mem.u32(table)
            .map(|rva| bias.wrapping_add(u64::from(rva)))
            .filter(|&a| a != bias)
    };
    ranges
        .filter(|&a| a != 0 && a < 1 << 47)
        .ok_or(MemoryError::NotStarted)
}

/// A process's runtime located (its memory open, its DAC table found), its
/// table perhaps not filled yet: [`Located::start`] is one read.
#[derive(Debug)]
pub struct Located {
    mem: File,
    layout: &'static Layout,
    bias: u64,
    table: u64,
    /// Its contract descriptor's address, if its layout is checked by it.
    descriptor: Option<u64>,
}

impl Located {
    /// The runtime, once its DAC table is filled (and its layout checked
    /// by its contract descriptor, where the version has one); else itself
    /// again, to be asked later.
    pub fn start(self) -> Result<Runtime<File>, (Self, MemoryError)> {
        let ranges = match ranges_slot(&self.mem, self.layout, self.bias, self.table) {
            Ok(ranges) => ranges,
            Err(e) => return Err((self, e)),
        };
        if let (Some(at), Some(expected)) = (self.descriptor, self.layout.expected()) {
            let mem = &self.mem;
            let json = mem
                .array::<40>(at)
                .and_then(|head| super::descriptor::json_text(&head, |a, buf| mem.read(a, buf)));
            let checked = match json {
                Some(json) => super::descriptor::check(&json, &expected),
                None => Err("its contract descriptor could not be read".into()),
            };
            if let Err(why) = checked {
                return Err((self, MemoryError::Descriptor(why)));
            }
        }
        Ok(Runtime {
            mem: self.mem,
            layout: self.layout,
            ranges,
        })
    }
}

/// The mapping of libcoreclr at file offset 0 among a process's maps.
pub fn coreclr_mapping(entries: &[MapEntry]) -> Option<&MapEntry> {
    entries
        .iter()
        .find(|e| e.offset == 0 && e.path.ends_with("/libcoreclr.so"))
}

impl<M: Memory> Runtime<M> {
    /// The runtime in `mem` whose libcoreclr is loaded at `bias` with its DAC
    /// table at `table`.
    pub fn at(mem: M, layout: &'static Layout, bias: u64, table: u64) -> Result<Self, MemoryError> {
        let ranges = ranges_slot(&mem, layout, bias, table)?;
        Ok(Self {
            mem,
            layout,
            ranges,
        })
    }

    /// Its layout.
    pub fn layout(&self) -> &'static Layout {
        self.layout
    }

    /// What is at code address `pc`.
    pub fn code_at(&self, pc: u64) -> Code {
        let Some(section) = self.range_section(pc) else {
            return Code::Unknown;
        };
        let l = self.layout;
        let Some(flags) = self.mem.u32(section + l.section_flags) else {
            return Code::Unknown;
        };
        if flags & RANGE_CODE_HEAP == 0 {
            return match (l.flag_precompiled, l.flag_stubs) {
                (Some(f), _) if flags & f != 0 => Code::Precompiled,
                (None, Some(f)) if flags & f == 0 => Code::Precompiled,
                (_, Some(f)) if flags & f != 0 => Code::Stub(None),
                _ => Code::Unknown,
            };
        }
        self.method_in_heap(section, pc).unwrap_or(Code::Unknown)
    }

    /// The `RangeSection` holding `pc`.
    fn range_section(&self, pc: u64) -> Option<u64> {
        let m = &self.mem;
        match self.layout.ranges {
            Ranges::Map => {
                let mut p = self.ranges;
                for level in 0..5 {
                    let index = (pc >> (49 - 8 * level)) & 0xff;
                    p = m.pointer(p + index * 8, true)?;
                }
                for _ in 0..MAX_LINKS {
                    // RangeSectionFragment {next, begin, end, section}.
                    let (begin, end) = (m.u64(p + 8)?, m.u64(p + 16)?);
                    if (begin..end).contains(&pc) {
                        return m.pointer(p + 24, false);
                    }
                    p = m.pointer(p, true)?;
                }
                None
            }
            Ranges::List { next } => {
                let mut p = m.pointer(self.ranges, false)?;
                for _ in 0..MAX_LINKS {
                    let (begin, end) = (m.u64(p)?, m.u64(p + 8)?);
                    if (begin..end).contains(&pc) {
                        return Some(p);
                    }
                    p = m.pointer(p + next, false)?;
                }
                None
            }
        }
    }

    /// Every JIT method's code, `(start, end)` sorted by start, in every code
    /// heap: each nibble the heap's map has set up to the heap's end of used
    /// code is a method's start; its code runs to the next one's header (8
    /// bytes before it) or to that end (what follows a method's code in its
    /// block, read-only data, is never run). At most `MAX_LISTED` methods.
    pub fn jit_methods(&self) -> Vec<(u64, u64)> {
        self.jit_listing().methods
    }

    /// [`Runtime::jit_methods`], with the heaps it found and whether each
    /// was read whole (what a method missing from the listing says: freed,
    /// or only not seen).
    pub fn jit_listing(&self) -> JitListing {
        self.jit_listing_in(&self.code_heaps())
    }

    /// [`Runtime::jit_listing`] of the code heaps `heaps` (`HeapList`s, as
    /// [`Runtime::code_heaps`] found them).
    fn jit_listing_in(&self, heaps: &[u64]) -> JitListing {
        let mut out = Vec::new();
        // What all heaps' maps may cost a listing (the target says how large
        // its heaps are): 4 MiB of map, 1 GiB of code.
        let mut budget: u64 = 4 << 20;
        // Each heap's end, map base and map (three words in a row), all
        // heaps' in one batched read.
        let m = &self.mem;
        let wants: Vec<(u64, usize)> = heaps.iter().map(|&heap| (heap + HEAP_END, 24)).collect();
        let mut heaps = Vec::new();
        for words in read_batched(m, &wants) {
            let word = |at: u64| {
                words
                    .as_deref()
                    .and_then(|w| u64_at(w, (at - HEAP_END) as usize))
                    .and_then(user_pointer)
            };
            let (Some(end), Some(base), Some(map)) =
                (word(HEAP_END), word(HEAP_MAP_BASE), word(HEAP_NIBBLE_MAP))
            else {
                continue;
            };
            let Some(map_bytes) = end.checked_sub(base).map(|u| u.div_ceil(256) * 4) else {
                continue;
            };
            if map_bytes > budget {
                // Not read, but known: its methods are not taken as freed.
                heaps.push((base, end, false));
                continue;
            }
            budget -= map_bytes;
            // Read in chunks: a heap that claims more than it has fails at its
            // first unreadable chunk, having cost no more than that.
            let mut starts = Vec::new();
            let mut chunk = [0u8; 16 << 10];
            let mut at = 0;
            let mut whole = true;
            while at < map_bytes {
                let n = (map_bytes - at).min(chunk.len() as u64) as usize;
                if !m.read(map + at, &mut chunk[..n]) {
                    whole = false;
                    break;
                }
                for (i, word) in chunk[..n].chunks_exact(4).enumerate() {
                    let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    let w = at / 4 + i as u64;
                    if self.layout.nibbles == Nibbles::Constant && is_pointer_word(word) {
                        continue;
                    }
                    for b in 0..8u64 {
                        if let Some(start) = nibble_start(w, word, b) {
                            if out.len() + starts.len() < MAX_LISTED {
                                starts.push(base + start);
                            } else {
                                whole = false;
                            }
                        }
                    }
                }
                at += n as u64;
            }
            for (i, &start) in starts.iter().enumerate() {
                let next = starts.get(i + 1).map_or(end, |&n| n.saturating_sub(8));
                if next > start && out.len() < MAX_LISTED {
                    out.push((start, next));
                }
            }
            heaps.push((base, end, whole));
        }
        out.sort_unstable();
        JitListing {
            methods: out,
            heaps,
        }
    }

    /// Every code heap's `HeapList`.
    ///
    /// Listed ten times a second (see `MEMORY_POLL`), so read in few reads:
    /// the map level by level, each level's pages together, then every
    /// fragment list a link at a time across all lists, then every section's
    /// fields, each step one batched read ([`each_batched`]: the runtime
    /// allocates a range's fragments as one array, its map pages and
    /// sections near each other). A fragment read alone per map entry was
    /// ~250 reads of /proc/PID/mem a listing for .NET 8's CoreLib alone (one
    /// fragment per 128 KiB of every range), a third of the agent's CPU.
    fn code_heaps(&self) -> Vec<u64> {
        let m = &self.mem;
        let mut sections = Vec::new();
        match self.layout.ranges {
            Ranges::Map => {
                // The levels' pages: tagged pointers to the next level's
                // pages, at the last level to fragment lists.
                let mut links = vec![self.ranges];
                let mut read = 0;
                for _ in 0..5 {
                    links.truncate(MAX_LINKS.saturating_sub(read));
                    read += links.len();
                    links = follow(m, &links, 256 * 8, |entries, next| {
                        next.extend(
                            entries
                                .chunks_exact(8)
                                .filter_map(|e| user_pointer(u64_at(e, 0)? & !1)),
                        );
                    });
                }
                // RangeSectionFragment {next, begin, end, section}: the
                // lists' first links together, then their second ones...
                let mut followed = 0;
                while !links.is_empty() && followed < MAX_LINKS {
                    links.truncate(MAX_LINKS - followed);
                    followed += links.len();
                    links = follow(m, &links, 32, |words, next| {
                        sections.extend(u64_at(words, 24).and_then(user_pointer));
                        next.extend(u64_at(words, 0).and_then(|p| user_pointer(p & !1)));
                    });
                }
            }
            Ranges::List { next } => {
                let mut p = m.pointer(self.ranges, false);
                for _ in 0..MAX_LINKS {
                    let Some(section) = p else { break };
                    sections.push(section);
                    p = m.pointer(section + next, false);
                }
            }
        }
        sections.sort_unstable();
        sections.dedup();
        // The flags and the heap list of each section, read together.
        let (flags, heap) = (self.layout.section_flags, self.layout.section_heap_list);
        let from = flags.min(heap);
        let len = (flags.max(heap) + 8 - from) as usize;
        let field = |fields: &[u8], at: u64| u64_at(fields, (at - from) as usize).unwrap_or(0);
        let wants: Vec<(u64, usize)> = sections.iter().map(|&s| (s + from, len)).collect();
        let mut heaps = Vec::new();
        each_batched(m, &wants, |_, fields| {
            let Some(fields) = fields else { return };
            // `_flags` is a u32 (the word's low half).
            if field(fields, flags) as u32 & RANGE_CODE_HEAP != 0
                && let Some(heap) = user_pointer(field(fields, heap))
            {
                heaps.push(heap);
            }
        });
        heaps
    }

    /// The JIT method holding `pc` in the code heap of `section`.
    /// `Code::Stub`: a stub's block holds it (its header gives the
    /// kind), or none holds it (none starts before it within
    /// [`MAX_NIBBLE_WORDS`], or the method before it ends before it: code of
    /// the runtime's all the same); `None`: not known (a read failed).
    fn method_in_heap(&self, section: u64, pc: u64) -> Option<Code> {
        let m = &self.mem;
        let heap = m.pointer(section + self.layout.section_heap_list, false)?;
        let base = m.pointer(heap + HEAP_MAP_BASE, false)?;
        let map = m.pointer(heap + HEAP_NIBBLE_MAP, false)?;
        let start = match self.layout.nibbles {
            Nibbles::Linear => method_start(m, base, map, pc)?,
            Nibbles::Constant => method_start_constant(m, base, map, pc)?,
        };
        let Some(start) = start else {
            return Some(Code::Stub(None));
        };
        let word = m.u64(start.checked_sub(8)?)?;
        // (0: not written yet, a method being made.)
        if word != 0 && word <= STUB_CODE_BLOCK_LAST {
            return Some(Code::Stub(stub_kind(word)));
        }
        let header = real_header(word)?;
        if self
            .size_in_header(header)
            .is_some_and(|size| pc >= start + size)
        {
            return Some(Code::Stub(None));
        }
        self.method(self.method_desc_in_header(header)?, start)
            .map(Code::Method)
    }

    /// The `RealCodeHeader` of the method whose code starts at `start`: the
    /// 8 bytes before its code point to it.
    fn code_header(&self, start: u64) -> Option<u64> {
        real_header(self.mem.u64(start.checked_sub(8)?)?)
    }

    /// The size of the code of the method starting at `start`, funclets
    /// included, from its code header's unwind infos (`None`: not read, or
    /// not such a header).
    pub fn code_size(&self, start: u64) -> Option<u64> {
        self.size_in_header(self.code_header(start)?)
    }

    /// The code size a `RealCodeHeader` gives (see [`Runtime::code_size`]).
    fn size_in_header(&self, header: u64) -> Option<u64> {
        let m = &self.mem;
        let n = m.u32(header + CODE_HEADER_UNWIND_COUNT)?;
        if n == 0 || n > MAX_UNWIND_INFOS {
            return None;
        }
        let infos = m.bytes(header + CODE_HEADER_UNWIND_INFOS, n as usize * 12)?;
        size_of_unwind_infos(&infos)
    }

    /// The bounds (native offset → IL offset) of the method whose code
    /// starts at `start`, from the debug info its code header points to.
    pub fn bounds(&self, start: u64) -> Option<Vec<super::debuginfo::Bound>> {
        let header = self.code_header(start)?;
        let info = self.mem.pointer(header + CODE_HEADER_DEBUG_INFO, false)?;
        super::debuginfo::bounds(
            |a, buf| self.mem.read(a, buf),
            info,
            self.layout.debug_flag_byte,
            self.layout.bounds_bit_packed,
        )
    }

    /// The `MethodDesc` a `RealCodeHeader` gives.
    fn method_desc_in_header(&self, header: u64) -> Option<u64> {
        self.mem.pointer(header + CODE_HEADER_METHOD_DESC, false)
    }

    /// The method of MethodDesc `md`, whose code starts at `start`.
    fn method(&self, md: u64, start: u64) -> Option<Method> {
        let m = &self.mem;
        if !md.is_multiple_of(8) {
            return None;
        }
        let head: [u8; 8] = m.array(md)?;
        let remainder = u16::from_le_bytes([head[0], head[1]]);
        let chunk_index = u64::from(head[2]);
        let classification = u16::from_le_bytes([head[6], head[7]]) & 7;
        let chunk = md.checked_sub(chunk_index * 8 + CHUNK_HEADER)?;
        let method_table = m.pointer(chunk, false)?;
        let bits = self.layout.token_remainder_bits;
        let range = u32::from(u16::from_le_bytes(m.array(chunk + CHUNK_TOKEN_RANGE)?))
            & ((1 << (24 - bits)) - 1);
        let token = 0x0600_0000 | range << bits | (u32::from(remainder) & ((1 << bits) - 1));
        let module = m.pointer(method_table + METHOD_TABLE_MODULE, false)?;
        let dynamic = (classification == DYNAMIC)
            .then(|| {
                m.pointer(md + self.layout.dynamic_name, false)
                    .and_then(|p| utf8(m, p))
            })
            .flatten();
        Some(Method {
            start,
            method_desc: md,
            token,
            module,
            dynamic,
        })
    }

    /// The path of `module`'s assembly, as the process names it.
    pub fn module_path(&self, module: u64) -> Option<String> {
        let m = &self.mem;
        let pe = m.pointer(module + self.layout.module_pe, false)?;
        let image = m.pointer(pe + PE_IMAGE, false)?;
        let size = m.u32(image)?;
        if !(4..=MAX_NAME * 2).contains(&size) || !size.is_multiple_of(2) {
            return None;
        }
        let buffer = m.pointer(image + SSTRING_BUFFER, false)?;
        let bytes = m.bytes(buffer, size as usize)?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|u| u16::from_le_bytes([u[0], u[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let path = String::from_utf16(&units).ok()?;
        path.starts_with('/').then_some(path)
    }
}

/// The start of the method holding `pc` in a code heap whose code starts at
/// `base` and whose nibble map is at `map` (see the module's doc), reading at
/// most [`MAX_NIBBLE_WORDS`] words back. `Some(None)`: no method starts
/// there; `None`: the map could not be read.
fn method_start(m: &impl Memory, base: u64, map: u64, pc: u64) -> Option<Option<u64>> {
    let Some(delta) = pc.checked_sub(base) else {
        return Some(None);
    };
    let bucket = delta >> 5;
    let mut word_index = bucket >> 3;
    let lowest = word_index.saturating_sub(MAX_NIBBLE_WORDS);
    // Buckets of the first word read: those at or before pc's.
    let mut first = Some(bucket & 7);
    const CHUNK: u64 = 64;
    loop {
        let from = word_index.saturating_sub(CHUNK - 1).max(lowest);
        let n = (word_index - from + 1) as usize;
        let words = m.bytes(map.checked_add(from * 4)?, n * 4)?;
        for i in (0..n).rev() {
            let word = u32::from_le_bytes(words[i * 4..i * 4 + 4].try_into().ok()?);
            let index = from + i as u64;
            let top = first.take().unwrap_or(7);
            if word == 0 {
                continue;
            }
            for b in (0..=top).rev() {
                // In pc's own bucket a method starting after pc is not its.
                if let Some(start) = nibble_start(index, word, b).filter(|&s| s <= delta) {
                    return base.checked_add(start).map(Some);
                }
            }
        }
        if from == lowest {
            return Some(None);
        }
        word_index = from - 1;
    }
}

/// [`method_start`] for a map of [`Nibbles::Constant`] (dotnet/runtime
/// `EECodeGenManager::FindMethodCode`, `nibblemapmacros.h`, .NET 10): pc's
/// word, if it is a pointer, gives the start; else a nibble at or before pc's
/// bucket in it; else the previous word, by its pointer or its last nibble (a
/// method spanning a whole word has a pointer in it, so no further word can
/// hold the start).
fn method_start_constant(m: &impl Memory, base: u64, map: u64, pc: u64) -> Option<Option<u64>> {
    let Some(delta) = pc.checked_sub(base) else {
        return Some(None);
    };
    let bucket = delta >> 5;
    let index = bucket >> 3;
    // (word, its last bucket that may hold the start)
    let words = [
        Some((index, bucket & 7)),
        index.checked_sub(1).map(|i| (i, 7)),
    ];
    for (i, top) in words.into_iter().flatten() {
        let word = m.u32(map.checked_add(i * 4)?)?;
        if is_pointer_word(word) {
            return base.checked_add(pointer_word_start(word)).map(Some);
        }
        for b in (0..=top).rev() {
            // In pc's own bucket a method starting after pc is not its.
            if let Some(start) = nibble_start(i, word, b).filter(|&s| s <= delta) {
                return base.checked_add(start).map(Some);
            }
        }
    }
    Some(None)
}

/// Is nibble-map word `word` a pointer ([`Nibbles::Constant`]): its low
/// nibble above 8 (a nibble's value is at most 8)?
fn is_pointer_word(word: u32) -> bool {
    word & 0xf > 8
}

/// The start a pointer word gives, as an offset from the heap's code base:
/// the word is the offset with its low nibble replaced by `9 + (offset &
/// 0xf) / 4` (code starts are 4-aligned).
fn pointer_word_start(word: u32) -> u64 {
    u64::from(word & !0xf) + (u64::from((word & 0xf) - 9) << 2)
}

/// Where bucket `b` (0-7) of nibble-map word `word` (the `index`th) says a
/// method starts, as an offset from the heap's code base, if it says one
/// does: the most significant nibble is the first bucket, nibble `n > 0` a
/// start at the bucket's `(n - 1) * 4`.
fn nibble_start(index: u64, word: u32, b: u64) -> Option<u64> {
    let nibble = u64::from((word >> (28 - 4 * b)) & 0xf);
    (nibble != 0).then(|| (index * 8 + b) * 32 + (nibble - 1) * 4)
}

/// A NUL-terminated UTF-8 string at `p`, at most [`MAX_NAME`] bytes.
fn utf8(m: &impl Memory, p: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64];
    while out.len() < MAX_NAME as usize {
        // A string near the end of a mapping: read less.
        let n = if m.read(p + out.len() as u64, &mut chunk) {
            64
        } else if m.read(p + out.len() as u64, &mut chunk[..1]) {
            1
        } else {
            return None;
        };
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    None
}

/// The most addresses whose names are kept before the cache starts over, and
/// how long they are kept: code can be freed (a dynamic method, a collectible
/// assembly) and its memory given to another method; a name is never older
/// than this.
const MAX_CACHED: usize = 1 << 16;
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The code heaps one walk of the code-range map found (see
/// [`Namer::listing`]).
#[derive(Debug)]
struct WalkedHeaps {
    /// When.
    at: std::time::Instant,
    /// Their `HeapList`s.
    heaps: Vec<u64>,
    /// The base of each whose words were read then, in the listing's order.
    bases: Vec<u64>,
}

/// How long the code heaps one walk of the code-range map found are listed
/// without walking it again (when nothing says it changed). Also how long a
/// heap freed whole (a collectible assembly unloaded) whose memory still
/// reads as it did may go on being listed, its methods not taken as freed.
const HEAPS_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Names JIT code of one process from its runtime's memory, caching what it
/// read: methods by their MethodDesc, assemblies' metadata by path.
#[derive(Debug)]
pub struct Namer<M> {
    runtime: Runtime<M>,
    pid: u32,
    /// Addresses named so far (`None`: not a method).
    by_address: HashMap<u64, Option<Arc<str>>>,
    /// Names by MethodDesc.
    by_method: HashMap<u64, Option<Arc<str>>>,
    /// Module → its assembly's path.
    modules: HashMap<u64, Option<String>>,
    /// Assembly path → its metadata's names (`None`: unreadable).
    assemblies: HashMap<String, Option<Arc<MethodNames>>>,
    /// When the address and method caches were last emptied.
    cached_since: std::time::Instant,
    /// Methods listed by [`Namer::new_methods`]: `(start, end)`, sorted by
    /// start (each listing is walked beside it, not looked up in it: a
    /// JIT-heavy program's tens of thousands of methods, ten times a second).
    listed: Vec<(u64, u64)>,
    /// Listed methods found freed since (see [`Namer::new_methods`]).
    pub freed: u64,
    /// The code heaps of the last walk of the code-range map, the bases
    /// their listing read, and when (see [`Namer::listing`]).
    heaps: Option<WalkedHeaps>,
    /// Was JIT code named that no listing holds (a heap the last walk did
    /// not find, or a method compiled since)? The next listing walks the
    /// map again.
    heaps_stale: bool,
    /// Where addresses are in their methods' IL (see [`Namer::il_at`]).
    il_by_address: HashMap<u64, Option<IlPlace>>,
    /// Bounds by method start (`None`: none read).
    bounds: HashMap<u64, Option<Arc<[super::debuginfo::Bound]>>>,
    /// Addresses named from memory.
    pub named: u64,
    /// Addresses looked up and not named (not a method, or a walk failed).
    pub unnamed: u64,
}

/// Where an address is in its method's IL: the assembly's path, the
/// MethodDef token, the IL offset.
pub type IlPlace = (Arc<str>, u32, u32);

/// Which file: device, inode, size, modification time.
type FileId = (u64, u64, i64, i64, i64);

/// The method names of every assembly some process's [`Namer`] holds, by
/// file: many processes of one framework share one read of
/// `System.Private.CoreLib.dll` (~10 MB read, its metadata kept); an entry
/// goes when the last process holding it does.
static ASSEMBLIES: std::sync::Mutex<Option<HashMap<FileId, std::sync::Weak<MethodNames>>>> =
    std::sync::Mutex::new(None);

/// The method names of the assembly process `pid` names `path`, read as it
/// sees it ([`crate::files::open_in_root`]), shared by file.
fn shared_names(pid: u32, path: &str) -> Option<Arc<MethodNames>> {
    let (file, st) = crate::files::open_in_root(pid, path.as_ref(), MAX_ASSEMBLY).ok()?;
    let id: FileId = (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
    );
    let mut shared = ASSEMBLIES.lock().unwrap_or_else(|e| e.into_inner());
    let shared = shared.get_or_insert_with(HashMap::new);
    if let Some(names) = shared.get(&id).and_then(std::sync::Weak::upgrade) {
        return Some(names);
    }
    let data = crate::files::read_at_most(&file, 0, MAX_ASSEMBLY).ok()?;
    let names = Arc::new(MethodNames::parse(&data).ok()?);
    shared.retain(|_, w| w.strong_count() > 0);
    shared.insert(id, Arc::downgrade(&names));
    Some(names)
}

impl<M: Memory> Namer<M> {
    /// Names from `runtime`, of process `pid` (whose assemblies are read as
    /// it sees them: [`crate::files::read_in_root`]).
    pub fn new(runtime: Runtime<M>, pid: u32) -> Self {
        Self {
            runtime,
            pid,
            by_address: HashMap::new(),
            by_method: HashMap::new(),
            modules: HashMap::new(),
            assemblies: HashMap::new(),
            cached_since: std::time::Instant::now(),
            listed: Vec::new(),
            freed: 0,
            heaps: None,
            heaps_stale: false,
            il_by_address: HashMap::new(),
            bounds: HashMap::new(),
            named: 0,
            unnamed: 0,
        }
    }

    /// The name of the JIT method holding `pc`, `Namespace.Type::Method`
    /// (a dynamic method: `dynamicClass::NAME`).
    pub fn name(&mut self, pc: u64) -> Option<&Arc<str>> {
        if !self.by_address.contains_key(&pc) {
            self.expire();
            let name = match self.runtime.code_at(pc) {
                Code::Method(method) => {
                    if !in_ranges(&self.listed, pc) {
                        self.heaps_stale = true;
                    }
                    self.method_name(&method)
                }
                // The kind of stub is in the range list's own object (not
                // read): the perf map's `[stub: KIND]`, without the kind.
                Code::Stub(Some(kind)) => Some(Arc::from(format!("[stub: {kind}]"))),
                Code::Stub(None) => Some(Arc::from("[stub]")),
                Code::Precompiled | Code::Unknown => None,
            };
            if name.is_some() {
                self.named += 1;
            } else {
                self.unnamed += 1;
            }
            self.by_address.insert(pc, name);
        }
        self.by_address.get(&pc)?.as_ref()
    }

    /// Where JIT code address `pc` is in its method: its assembly's path,
    /// its MethodDef token and the IL offset, from the runtime's debug info
    /// (what source lines are looked up by in the assembly's PDB).
    pub fn il_at(&mut self, pc: u64) -> Option<IlPlace> {
        if let Some(place) = self.il_by_address.get(&pc) {
            return place.clone();
        }
        self.expire();
        let place = self.il_place(pc);
        self.il_by_address.insert(pc, place.clone());
        place
    }

    /// Empties every cache once one is full or [`CACHE_FOR`] old: code can
    /// be freed and its memory reused, so nothing said of an address (its
    /// name, its IL place, its method's bounds) is older than that.
    fn expire(&mut self) {
        if self.by_address.len() >= MAX_CACHED
            || self.il_by_address.len() >= MAX_CACHED
            || self.cached_since.elapsed() >= CACHE_FOR
        {
            self.by_address.clear();
            self.by_method.clear();
            self.modules.clear();
            self.il_by_address.clear();
            self.bounds.clear();
            self.cached_since = std::time::Instant::now();
        }
    }

    /// Forgets what was said of the code of the methods at `ranges` (freed,
    /// no longer listed; sorted): the names and IL places of addresses in
    /// them, their bounds, names by MethodDesc.
    fn forget_code(&mut self, ranges: &[(u64, u64)]) {
        for (start, _) in ranges {
            self.bounds.remove(start);
        }
        self.freed += ranges.len() as u64;
        self.by_address.retain(|&pc, _| !in_ranges(ranges, pc));
        self.il_by_address.retain(|&pc, _| !in_ranges(ranges, pc));
        // Names by MethodDesc are not tied to a start: a freed dynamic
        // method's MethodDesc may be given to another. Read again as needed
        // (addresses keep theirs).
        self.by_method.clear();
    }

    fn il_place(&mut self, pc: u64) -> Option<IlPlace> {
        let Code::Method(method) = self.runtime.code_at(pc) else {
            return None;
        };
        if method.dynamic.is_some() {
            return None; // no assembly, no PDB
        }
        let runtime = &self.runtime;
        let bounds = self
            .bounds
            .entry(method.start)
            .or_insert_with(|| runtime.bounds(method.start).map(Arc::from))
            .clone()?;
        let il = super::debuginfo::il_offset(&bounds, u32::try_from(pc - method.start).ok()?)?;
        let path = self
            .modules
            .entry(method.module)
            .or_insert_with(|| runtime.module_path(method.module))
            .clone()?;
        Some((Arc::from(path), method.token, il))
    }

    fn method_name(&mut self, method: &Method) -> Option<Arc<str>> {
        if let Some(name) = self.by_method.get(&method.method_desc) {
            return name.clone();
        }
        let name = match &method.dynamic {
            Some(name) => Some(Arc::from(format!("dynamicClass::{name}"))),
            None => {
                let runtime = &self.runtime;
                let path = self
                    .modules
                    .entry(method.module)
                    .or_insert_with(|| runtime.module_path(method.module))
                    .clone();
                path.and_then(|path| {
                    let pid = self.pid;
                    let names = self
                        .assemblies
                        .entry(path)
                        .or_insert_with_key(|path| shared_names(pid, path));
                    names.as_ref()?.method_name(method.token).map(Arc::from)
                })
            }
        };
        self.by_method.insert(method.method_desc, name.clone());
        name
    }

    /// Its runtime's layout.
    pub fn layout(&self) -> &'static Layout {
        self.runtime.layout()
    }

    /// What it gave, for `summary.json`.
    pub fn summary(&self) -> crate::summary::JitFromMemory {
        crate::summary::JitFromMemory {
            named: self.named,
            unnamed: self.unnamed,
            methods_listed: self.listed.len() as u64,
            methods_freed: self.freed,
        }
    }

    /// This moment's JIT methods ([`Runtime::jit_listing`]), from the code
    /// heaps an earlier walk of the code-range map found where it can: the
    /// map is walked again at most every [`HEAPS_FOR`], or at once when JIT
    /// code was named that no listing holds (`heaps_stale`: a heap created
    /// since, or new code in a known one, see [`Namer::name`]) or a known
    /// heap no longer reads as it did (its map's base changed or cannot be
    /// read: freed). A steady process's listing is then a batched read of
    /// its heaps' words and a read of each heap's nibble map (4 reads for a
    /// .NET 8 `chain.dll`), not the walk's ~40 (pages, fragments, sections:
    /// ~70% of what a listing cost).
    fn listing(&mut self) -> JitListing {
        if let Some(walked) = &self.heaps
            && !self.heaps_stale
            && walked.at.elapsed() < HEAPS_FOR
        {
            let listing = self.runtime.jit_listing_in(&walked.heaps);
            if listing
                .heaps
                .iter()
                .map(|h| h.0)
                .eq(walked.bases.iter().copied())
            {
                return listing;
            }
        }
        let heaps = self.runtime.code_heaps();
        let listing = self.runtime.jit_listing_in(&heaps);
        self.heaps = Some(WalkedHeaps {
            at: std::time::Instant::now(),
            bases: listing.heaps.iter().map(|h| h.0).collect(),
            heaps,
        });
        self.heaps_stale = false;
        listing
    }

    /// The JIT methods not listed by an earlier call, with their keys and
    /// first bytes. A method ends where its code header says, if that is
    /// before the next one (what lies between is the runtime's: stubs);
    /// stubs' blocks are left out. Two batched reads ([`read_batched`]) for
    /// all the new methods' code and code headers, not a few reads each (a
    /// JIT-heavy program makes thousands a second).
    ///
    /// A listed method the code heaps no longer hold was freed (a dynamic
    /// method collected, a collectible assembly unloaded): what was said of
    /// its code (names by address and by its MethodDesc, IL places, bounds)
    /// is forgotten, so that code later put there is named afresh, and its
    /// start is listed again when a method is there (its frame shape with
    /// it).
    pub fn new_methods(&mut self) -> Vec<Listed> {
        let listing = self.listing();
        let Compared { kept, fresh, freed } = listing.compare(std::mem::take(&mut self.listed));
        self.listed = kept;
        if !freed.is_empty() {
            self.forget_code(&freed);
        }
        let prolog_max = super::unwind::PROLOG_BYTES as u64;
        // The header word before each method's code, and its first bytes.
        let wants: Vec<(u64, usize)> = fresh
            .iter()
            .map(|&(start, end)| {
                (
                    start.saturating_sub(8),
                    8 + (end - start).min(prolog_max) as usize,
                )
            })
            .collect();
        let heads: Vec<Option<(u64, Vec<u8>)>> = read_batched(&self.runtime.mem, &wants)
            .into_iter()
            .map(|c| {
                let c = c?;
                Some((u64_at(&c, 0)?, c[8..].to_vec()))
            })
            .collect();
        // Each RealCodeHeader from its MethodDesc on: the unwind count and
        // the first infos.
        const INFOS: usize = 4;
        let size = (CODE_HEADER_UNWIND_INFOS - CODE_HEADER_METHOD_DESC) as usize + 12 * INFOS;
        let wants: Vec<(u64, usize)> = heads
            .iter()
            .map(
                |h| match h.as_ref().and_then(|(word, _)| real_header(*word)) {
                    Some(header) => (header + CODE_HEADER_METHOD_DESC, size),
                    None => (0, 0),
                },
            )
            .collect();
        let reals = read_batched(&self.runtime.mem, &wants);
        let count_at = (CODE_HEADER_UNWIND_COUNT - CODE_HEADER_METHOD_DESC) as usize;
        let infos_at = (CODE_HEADER_UNWIND_INFOS - CODE_HEADER_METHOD_DESC) as usize;
        let mut out = Vec::new();
        let mut accepted = Vec::with_capacity(fresh.len());
        for (((start, end), head), real) in fresh.into_iter().zip(heads).zip(reals) {
            let Some((word, prolog)) = head.filter(|(word, _)| *word != 0) else {
                // Not read, or its header not written yet: not listed, the
                // next call tries again.
                continue;
            };
            if word <= STUB_CODE_BLOCK_LAST {
                // A stub's block: listed, not read again, not a method.
                accepted.push((start, end));
                continue;
            }
            let header = real_header(word);
            let (md, code_size) = match real.as_deref() {
                Some(r) => (
                    u64_at(r, 0).and_then(user_pointer),
                    match u32_at(r, count_at).map(|n| n as usize) {
                        Some(0) | None => None,
                        Some(n) if n <= INFOS => {
                            size_of_unwind_infos(&r[infos_at..infos_at + 12 * n])
                        }
                        // Many funclets: read whole.
                        Some(_) => header.and_then(|h| self.runtime.size_in_header(h)),
                    },
                ),
                // The header runs into unreadable memory: read as little
                // as it holds.
                None => (
                    header.and_then(|h| self.runtime.method_desc_in_header(h)),
                    header.and_then(|h| self.runtime.size_in_header(h)),
                ),
            };
            let end = code_size.map_or(end, |size| end.min(start + size));
            accepted.push((start, end));
            let key = match md {
                Some(md) => format!("MethodDesc {md:#x}"),
                None => format!("code at {start:#x}"),
            };
            let prolog = prolog[..prolog.len().min((end - start) as usize)].to_vec();
            out.push(Listed {
                start,
                end,
                key: Arc::from(key),
                prolog,
            });
        }
        self.listed = merge_sorted(std::mem::take(&mut self.listed), accepted);
        out
    }
}

/// Is `pc` in one of `ranges` (`[start, end)`, sorted by start, not
/// overlapping)?
fn in_ranges(ranges: &[(u64, u64)], pc: u64) -> bool {
    let i = ranges.partition_point(|&(start, _)| start <= pc);
    i > 0 && pc < ranges[i - 1].1
}

/// Reads `len` bytes at each of `at` in one batched read ([`each_batched`])
/// and hands each that could be read to `each`, which pushes the pointers it
/// finds there; returns them sorted, without repeats: the next step of a walk
/// that follows many links at once.
fn follow(
    m: &impl Memory,
    at: &[u64],
    len: usize,
    mut each: impl FnMut(&[u8], &mut Vec<u64>),
) -> Vec<u64> {
    let wants: Vec<(u64, usize)> = at.iter().map(|&a| (a, len)).collect();
    let mut next = Vec::new();
    each_batched(m, &wants, |_, bytes| {
        if let Some(bytes) = bytes {
            each(bytes, &mut next);
        }
    });
    next.sort_unstable();
    next.dedup();
    next
}

/// Two lists sorted by start, as one.
fn merge_sorted(a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        out.push(if x.0 <= y.0 { a.next() } else { b.next() }.unwrap_or_default());
    }
    out.extend(a);
    out.extend(b);
    out
}

/// A listing beside an earlier one's methods (see [`JitListing::compare`]),
/// `(start, end)` each, sorted by start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compared {
    /// The earlier ones still held, or in a heap not read whole (not seen,
    /// not freed).
    pub kept: Vec<(u64, u64)>,
    /// This listing's methods the earlier one did not have.
    pub fresh: Vec<(u64, u64)>,
    /// The earlier ones freed since (as [`JitListing::freed`] says).
    pub freed: Vec<(u64, u64)>,
}

/// What a listing of JIT code found (see [`Runtime::jit_listing`]).
#[derive(Debug, Default)]
pub struct JitListing {
    /// Every method's code, `(start, end)`, sorted.
    pub methods: Vec<(u64, u64)>,
    /// Every code heap's `(base, end)`, and whether its map was read whole.
    pub heaps: Vec<(u64, u64, bool)>,
}

impl JitListing {
    /// Of `listed` method starts (from an earlier listing), those freed
    /// since: in a heap read whole that no longer maps them, or in no heap
    /// any more (a collectible assembly's heap released). None when no heap
    /// was found (a listing that failed says nothing).
    pub fn freed(&self, listed: impl Iterator<Item = u64>) -> Vec<u64> {
        if self.heaps.is_empty() {
            return Vec::new();
        }
        listed
            .filter(|&start| {
                self.methods
                    .binary_search_by_key(&start, |&(s, _)| s)
                    .is_err()
                    && !self.in_unread_heap(start)
            })
            .collect()
    }

    /// Is `start` in a heap whose map was not read whole (its methods not
    /// all seen)?
    fn in_unread_heap(&self, start: u64) -> bool {
        self.heaps
            .iter()
            .any(|&(base, end, whole)| !whole && (base..end).contains(&start))
    }

    /// This listing beside `listed`, an earlier one's methods (sorted by
    /// start), in one walk of both (see [`Compared`]).
    pub fn compare(&self, listed: Vec<(u64, u64)>) -> Compared {
        if self.heaps.is_empty() {
            // A listing that failed says nothing.
            return Compared {
                kept: listed,
                ..Compared::default()
            };
        }
        let (mut kept, mut fresh, mut freed) =
            (Vec::with_capacity(listed.len()), Vec::new(), Vec::new());
        let mut new = self.methods.iter().copied().peekable();
        let mut last_fresh = None;
        for old in listed {
            while let Some(m) = new.next_if(|m| m.0 < old.0) {
                if last_fresh.replace(m.0) != Some(m.0) {
                    fresh.push(m);
                }
            }
            if new.next_if(|m| m.0 == old.0).is_some() || self.in_unread_heap(old.0) {
                kept.push(old);
            } else {
                freed.push(old);
            }
            // A start listed twice counts once.
            while new.next_if(|m| m.0 == old.0).is_some() {}
        }
        for m in new {
            if last_fresh.replace(m.0) != Some(m.0) {
                fresh.push(m);
            }
        }
        Compared { kept, fresh, freed }
    }
}

/// Made-up memory, for the tests and the fuzz target: runs of bytes at
/// addresses.
#[derive(Debug, Default, Clone)]
pub struct Regions(pub std::collections::BTreeMap<u64, Vec<u8>>);

impl Regions {
    /// `bytes` at `addr`.
    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        self.0.insert(addr, bytes.to_vec());
    }

    /// A `u64` at `addr`.
    pub fn word(&mut self, addr: u64, v: u64) {
        self.put(addr, &v.to_le_bytes());
    }

    /// The fuzz target's input: `u64` DAC table address, `u64` code
    /// address, then runs of `u64` address, `u16` length, bytes.
    pub fn decode(mut b: &[u8]) -> Option<(Self, u64, u64)> {
        let u64_of = |b: &mut &[u8]| -> Option<u64> {
            let (v, rest) = b.split_first_chunk::<8>()?;
            *b = rest;
            Some(u64::from_le_bytes(*v))
        };
        let (table, pc) = (u64_of(&mut b)?, u64_of(&mut b)?);
        let mut regions = Self::default();
        while let Some(addr) = u64_of(&mut b) {
            let (len, rest) = b.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
            regions.put(addr, &rest[..len]);
            b = &rest[len..];
        }
        Some((regions, table, pc))
    }

    /// What [`Regions::decode`] reads (runs longer than 64 KiB cut).
    pub fn encode(&self, table: u64, pc: u64) -> Vec<u8> {
        let mut out = [table.to_le_bytes(), pc.to_le_bytes()].concat();
        for (addr, run) in &self.0 {
            let run = &run[..run.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&(run.len() as u16).to_le_bytes());
            out.extend_from_slice(run);
        }
        out
    }
}

impl Memory for Regions {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some((&at, run)) = self.0.range(..=addr).next_back() else {
            return false;
        };
        let off = (addr - at) as usize;
        match off.checked_add(buf.len()).and_then(|end| run.get(off..end)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Walks the structures in `b` (see [`Regions::decode`]) with every layout:
/// the fuzz target.
pub fn fuzz_walk(b: &[u8]) {
    let Some((memory, table, pc)) = Regions::decode(b) else {
        return;
    };
    for layout in [&NET8, &CORE31, &NET9, &NET10] {
        if let Ok(rt) = Runtime::at(memory.clone(), layout, 0x1000, table) {
            if let Code::Method(m) = rt.code_at(pc) {
                let _ = rt.module_path(m.module);
            }
            let _ = rt.jit_methods();
            let _ = Namer::new(rt, 0).new_methods();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use super::Regions as Fake;
    use crate::procmem::Counting;

    const BASE: u64 = 0x7f00_0000_0000;
    const MAP: u64 = 0x5500_0000_0000;

    /// A nibble map of `words` words with methods starting at `starts`
    /// (offsets from the heap's base).
    fn nibble_map(words: usize, starts: &[u64]) -> Vec<u8> {
        let mut w = vec![0u32; words];
        for &s in starts {
            let bucket = s / 32;
            let nibble = (s % 32) / 4 + 1;
            w[(bucket / 8) as usize] |= (nibble as u32) << (28 - 4 * (bucket % 8));
        }
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn the_nibble_map_gives_the_start_at_or_before_an_address() {
        let starts = [0x0, 0x44, 0x100, 0x1f8c, 0x9000];
        let mut mem = Fake::default();
        mem.put(MAP, &nibble_map(0x100, &starts));
        let find = |pc: u64| method_start(&mem, BASE, MAP, BASE + pc).map(|s| s.map(|s| s - BASE));
        assert_eq!(find(0x0), Some(Some(0x0)));
        assert_eq!(
            find(0x43),
            Some(Some(0x0)),
            "same bucket, before the next start"
        );
        assert_eq!(find(0x44), Some(Some(0x44)));
        assert_eq!(find(0xff), Some(Some(0x44)));
        assert_eq!(find(0x1f8b), Some(Some(0x100)), "a method over many words");
        assert_eq!(find(0x1f8c), Some(Some(0x1f8c)));
        assert_eq!(
            find(0x8fff),
            Some(Some(0x1f8c)),
            "over whole zero words and chunks"
        );
        assert_eq!(find(0x9001), Some(Some(0x9000)));
        assert_eq!(
            method_start(&mem, BASE, MAP, BASE - 1),
            Some(None),
            "below the heap: no method"
        );
        // Past the map: not readable, not known.
        assert_eq!(find(0x100 * 256 + 5), None);
        // Nothing within the bound: no method (a read 1 MiB back at most).
        let mut far = Fake::default();
        far.put(MAP, &nibble_map(8192, &[0]));
        let pc = BASE + (MAX_NIBBLE_WORDS + 10) * 256;
        assert_eq!(method_start(&far, BASE, MAP, pc), Some(None));
        assert_eq!(method_start(&far, BASE, MAP, BASE + 1000), Some(Some(BASE)));
    }

    /// A .NET 10 nibble map of `words` words with methods `(start, size)`
    /// (offsets from the heap's base), as the runtime sets one
    /// (`NibbleMapSetUnlocked`): the start's nibble, and a pointer to it in
    /// each later word whose 256 bytes lie inside the method.
    fn constant_map(words: usize, methods: &[(u64, u64)]) -> Vec<u8> {
        let mut map = nibble_map(words, &methods.iter().map(|m| m.0).collect::<Vec<_>>());
        for &(start, size) in methods {
            let pointer = (start & !0xf) as u32 + ((start & 0xf) >> 2) as u32 + 9;
            let mut index = start / 256 + 1;
            while (index + 1) * 256 <= start + size {
                let at = index as usize * 4;
                map[at..at + 4].copy_from_slice(&pointer.to_le_bytes());
                index += 1;
            }
        }
        map
    }

    #[test]
    fn the_net10_nibble_map_gives_the_start_from_a_pointer_or_two_words() {
        // A short method, one over two whole words (pointers in words 1 and
        // 2), one starting in the word after it, one far on (a zero word
        // between).
        let methods = [(0x0, 0x40), (0x44, 0x300), (0x388, 0x10), (0x9000, 0x20)];
        let mut mem = Fake::default();
        mem.put(MAP, &constant_map(0x100, &methods));
        let find = |pc: u64| {
            method_start_constant(&mem, BASE, MAP, BASE + pc).map(|s| s.map(|s| s - BASE))
        };
        assert_eq!(find(0x0), Some(Some(0x0)));
        assert_eq!(find(0x43), Some(Some(0x0)));
        assert_eq!(find(0x44), Some(Some(0x44)));
        assert_eq!(find(0x150), Some(Some(0x44)), "a pointer word");
        assert_eq!(find(0x2ff), Some(Some(0x44)), "the second pointer word");
        assert_eq!(
            find(0x343),
            Some(Some(0x44)),
            "before the next start in its word: the pointer word before"
        );
        assert_eq!(find(0x388), Some(Some(0x388)));
        assert_eq!(find(0x3ff), Some(Some(0x388)));
        assert_eq!(find(0x9001), Some(Some(0x9000)));
        assert_eq!(
            find(0x8fff),
            Some(None),
            "past a zero word: no method (the linear map's reading would go on)"
        );
        // The linear reading takes a pointer word's nibbles for starts.
        assert_ne!(
            method_start(&mem, BASE, MAP, BASE + 0x1f0).map(|s| s.map(|s| s - BASE)),
            Some(Some(0x44))
        );
        assert_eq!(
            method_start_constant(&mem, BASE, MAP, BASE - 1),
            Some(None),
            "below the heap"
        );
        assert_eq!(find(0x100 * 256 + 5), None, "past the map: not known");
    }

    /// A .NET 8 runtime in made-up memory: a code heap at `BASE` with one
    /// method at +0x40 (MethodDef 0x06001234, chunk index 2) of a module whose
    /// path is `/app/Prog.dll`, and a stub range.
    pub(crate) fn net8() -> (Fake, u64) {
        let mut m = Fake::default();
        let table = 0x1000_0000;
        let ranges = 0x1100_0000u64;
        m.word(table, ranges);
        // Five levels: one page per level, each entry tagged in bit 0.
        let mut level_at = ranges;
        let pc = BASE + 0x40;
        for level in 0..5u64 {
            let next = 0x1200_0000 + level * 0x1000;
            let index = (pc >> (49 - 8 * level)) & 0xff;
            let mut page = vec![0u8; 256 * 8];
            page[(index * 8) as usize..(index * 8 + 8) as usize]
                .copy_from_slice(&(next | 1).to_le_bytes());
            m.put(level_at, &page);
            level_at = next;
        }
        let section = 0x1300_0000u64;
        // The last level's fragment list: one that misses, one that holds pc.
        let miss = 0x1300_1000u64;
        let frag = level_at;
        let mut f = Vec::new();
        for v in [miss | 1, BASE + 0x10_0000, BASE + 0x20_0000, 0] {
            f.extend_from_slice(&u64::to_le_bytes(v));
        }
        m.put(frag, &f);
        let mut f = Vec::new();
        for v in [0, BASE, BASE + 0x1_0000, section] {
            f.extend_from_slice(&u64::to_le_bytes(v));
        }
        m.put(miss, &f);
        let heap = 0x1400_0000u64;
        let mut s = vec![0u8; 0x30];
        s[0..8].copy_from_slice(&BASE.to_le_bytes());
        s[8..16].copy_from_slice(&(BASE + 0x1_0000).to_le_bytes());
        s[0x10..0x14].copy_from_slice(&RANGE_CODE_HEAP.to_le_bytes());
        s[0x28..0x30].copy_from_slice(&heap.to_le_bytes());
        m.put(section, &s);
        let mut h = vec![0u8; 0x30];
        h[0x20..0x28].copy_from_slice(&BASE.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&MAP.to_le_bytes());
        m.put(heap, &h);
        m.put(MAP, &nibble_map(16, &[0x40]));
        // Code: the header pointer before it, then the code.
        let real_header = 0x1500_0000u64;
        let mut code = vec![0u8; 0x100];
        code[0x38..0x40].copy_from_slice(&real_header.to_le_bytes());
        m.put(BASE, &code);
        // Its MethodDesc, and one unwind info: its code is [+0x40, +0xa0).
        let unwind: Vec<u8> = [1u32, 0x40, 0xa0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        m.put(
            real_header,
            &[
                [0u8; 0x18].as_slice(),
                &0x1600_0040u64.to_le_bytes(),
                &unwind,
            ]
            .concat(),
        );
        // The chunk at 0x1600_0018 - 0x18, its MethodDesc at index 2 (+16).
        let chunk = 0x1600_0040 - 2 * 8 - CHUNK_HEADER;
        let mt = 0x1700_0000u64;
        let mut c = vec![0u8; 0x18 + 0x40];
        c[0..8].copy_from_slice(&mt.to_le_bytes());
        c[0x12..0x14].copy_from_slice(&0x001u16.to_le_bytes()); // range 1
        let md = (0x18 + 16) as usize;
        c[md..md + 2].copy_from_slice(&0x0234u16.to_le_bytes());
        c[md + 2] = 2;
        m.put(chunk, &c);
        let module = 0x1800_0000u64;
        m.put(
            mt,
            &[[0u8; 0x18].as_slice(), &module.to_le_bytes()].concat(),
        );
        let pe = 0x1900_0000u64;
        let mut md_bytes = vec![0u8; 0x118];
        md_bytes[0x110..0x118].copy_from_slice(&pe.to_le_bytes());
        m.put(module, &md_bytes);
        let image = 0x1a00_0000u64;
        m.put(pe, &[[0u8; 8].as_slice(), &image.to_le_bytes()].concat());
        let path: Vec<u8> = "/app/Prog.dll\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let buffer = 0x1b00_0000u64;
        let mut sstring = vec![0u8; 0x18];
        sstring[0..4].copy_from_slice(&(path.len() as u32).to_le_bytes());
        sstring[0x10..0x18].copy_from_slice(&buffer.to_le_bytes());
        m.put(image, &sstring);
        m.put(buffer, &path);
        (m, table)
    }

    #[test]
    fn the_code_heaps_list_every_method_to_the_next_one_s_header() {
        let (mut mem, table) = net8();
        // The heap's used code ends at +0x400; methods at +0x40 and +0x100.
        mem.put(MAP, &nibble_map(16, &[0x40, 0x100]));
        let heap = 0x1400_0000u64;
        let mut h = vec![0u8; 0x30];
        h[0x18..0x20].copy_from_slice(&(BASE + 0x400).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&BASE.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&MAP.to_le_bytes());
        mem.put(heap, &h);
        // The second is a stub's block (a resolve stub's, 7).
        mem.put(BASE + 0x400, &[0u8; 8]);
        let mut code = mem.0[&BASE].clone();
        code.resize(0x108, 0xcc);
        code[0xf8..0x100].copy_from_slice(&7u64.to_le_bytes());
        mem.put(BASE, &code);
        let rt = Runtime::at(mem, &NET8, 0x1000, table).unwrap();
        assert_eq!(
            rt.jit_methods(),
            vec![(BASE + 0x40, BASE + 0xf8), (BASE + 0x100, BASE + 0x400)]
        );
        // Listed once, to the end its code header gives (+0xa0), with its
        // MethodDesc and first bytes; the stub not at all.
        let mut namer = Namer::new(rt, 0);
        let listed = namer.new_methods();
        assert_eq!(
            listed,
            vec![Listed {
                start: BASE + 0x40,
                end: BASE + 0xa0,
                key: Arc::from("MethodDesc 0x16000040"),
                prolog: code[0x40..0x80].to_vec(),
            }]
        );
        assert!(namer.new_methods().is_empty(), "listed again");
    }

    /// [`net8`] with its code heap's used code ending at +0x400 (what a
    /// listing reads to): the memory, the DAC table, the heap's `HeapList`
    /// and its bytes.
    fn net8_listable() -> (Fake, u64, u64, Vec<u8>) {
        let (mut mem, table) = net8();
        let heap = 0x1400_0000u64;
        let mut h = mem.0[&heap].clone();
        h[0x18..0x20].copy_from_slice(&(BASE + 0x400).to_le_bytes());
        mem.put(heap, &h);
        (mem, table, heap, h)
    }

    /// A listing reads the code-range map in a few batched reads, however
    /// many fragments its ranges have: here a 10 MiB precompiled range (80
    /// fragments, one per 128 KiB, allocated as one array as .NET 8 does)
    /// beside the code heap. Read a fragment at a time, this was ~90 reads.
    #[test]
    fn a_listing_reads_the_range_map_in_a_few_reads() {
        let (mut mem, table, _, _) = net8_listable();
        // The last level's page (the fourth below the root, see `net8`):
        // entries 1-80 point into the array of the precompiled range's
        // fragments; entry 0 is the code heap's list.
        let leaf = 0x1200_3000u64;
        let (array, section) = (0x1700_0000u64, 0x1300_2000u64);
        let mut page = mem.0[&leaf].clone();
        let mut fragments = Vec::new();
        for i in 0..80u64 {
            let at = array + i * 32;
            page[((i + 1) * 8) as usize..((i + 2) * 8) as usize]
                .copy_from_slice(&(at | 1).to_le_bytes());
            for v in [0, 0x7e00_0000_0000, 0x7e00_00a0_0000, section] {
                fragments.extend_from_slice(&u64::to_le_bytes(v));
            }
        }
        mem.put(leaf, &page);
        mem.put(array, &fragments);
        // A precompiled image's section: not a code heap.
        mem.put(section, &[0u8; 0x30]);
        let rt = Runtime::at(Counting(mem, Default::default()), &NET8, 0x1000, table).unwrap();
        rt.mem.1.set(0);
        assert_eq!(rt.jit_methods(), vec![(BASE + 0x40, BASE + 0x400)]);
        // 5 pages, the lists' first and second links, the sections' fields,
        // the heap's words, its nibble map: a read each, and a read per
        // request of a run that spans two made-up regions.
        let reads = rt.mem.1.get();
        assert!(reads <= 14, "{reads} reads for a listing");
    }

    /// A steady process's listings read its known heaps only; the map is
    /// walked again once JIT code is named that no listing holds, or a known
    /// heap's map base moves (freed, its memory reused).
    #[test]
    fn a_steady_listing_reads_its_known_heaps_only() {
        let (mem, table, heap, mut h) = net8_listable();
        let rt = Runtime::at(Counting(mem, Default::default()), &NET8, 0x1000, table).unwrap();
        let mut namer = Namer::new(rt, 0);
        let list = |namer: &mut Namer<Counting<Fake>>| {
            namer.runtime.mem.1.set(0);
            let fresh = namer.new_methods().len();
            (namer.runtime.mem.1.get(), fresh)
        };
        let (walked, fresh) = list(&mut namer);
        assert_eq!(fresh, 1);
        // The heap's words and its nibble map.
        assert_eq!(list(&mut namer), (2, 0));
        assert_eq!(list(&mut namer), (2, 0));
        // Listed code named (its assembly is not on this machine: the
        // method is found, its name is not): nothing changes.
        let _ = namer.name(BASE + 0x50);
        assert!(!namer.heaps_stale);
        assert_eq!(list(&mut namer), (2, 0));
        // JIT code no listing holds (here: as if compiled since).
        namer.listed.clear();
        namer.by_address.clear();
        let _ = namer.name(BASE + 0x50);
        assert!(namer.heaps_stale);
        let (reads, fresh) = list(&mut namer);
        assert!(
            reads >= walked - 4 && fresh == 1,
            "walked again: {reads} reads"
        );
        assert_eq!(list(&mut namer), (2, 0));
        // The heap's map base moved.
        h[0x20..0x28].copy_from_slice(&(BASE + 0x1000).to_le_bytes());
        namer.runtime.mem.0.put(heap, &h);
        let (reads, _) = list(&mut namer);
        assert!(reads > 2 + 5, "walked again: {reads} reads");
    }

    /// A listing beside the earlier one, in one walk: kept, fresh and freed
    /// as the lookups (`freed`, a start per method) say, for made-up lists.
    #[test]
    fn a_listing_compared_with_the_last_finds_what_lookups_find() {
        let listing = |methods: Vec<(u64, u64)>, heaps| JitListing { methods, heaps };
        let whole = vec![(0, 100, true)];
        let l = listing(vec![(1, 2), (3, 4), (9, 10), (9, 10)], whole.clone());
        let Compared { kept, fresh, freed } = l.compare(vec![(1, 2), (5, 6), (9, 10)]);
        assert_eq!(kept, [(1, 2), (9, 10)]);
        assert_eq!(fresh, [(3, 4)]);
        assert_eq!(freed, [(5, 6)]);
        // In a heap not read whole: not seen, not freed.
        let l = listing(vec![(1, 2)], vec![(0, 4, true), (4, 8, false)]);
        assert_eq!(l.compare(vec![(1, 2), (5, 6)]).kept, [(1, 2), (5, 6)]);
        // No heap found: the listing says nothing.
        let l = listing(Vec::new(), Vec::new());
        let none = Compared {
            kept: vec![(5, 6)],
            ..Compared::default()
        };
        assert_eq!(l.compare(vec![(5, 6)]), none);
        // Against lookups, on pseudo-random lists.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 64
        };
        for _ in 0..500 {
            let mut old: Vec<(u64, u64)> =
                (0..next()).map(|_| next()).map(|s| (s, s + 1)).collect();
            old.sort_unstable();
            old.dedup();
            let mut new: Vec<(u64, u64)> =
                (0..next()).map(|_| next()).map(|s| (s, s + 1)).collect();
            new.sort_unstable();
            let l = listing(
                new.clone(),
                vec![(0, 32, true), (32, 48, next() % 2 == 0), (48, 64, true)],
            );
            let Compared { kept, fresh, freed } = l.compare(old.clone());
            let starts = |v: &[(u64, u64)]| v.iter().map(|m| m.0).collect::<Vec<_>>();
            assert_eq!(starts(&freed), l.freed(old.iter().map(|m| m.0)));
            let mut want_fresh = starts(&new);
            want_fresh.dedup();
            want_fresh.retain(|s| old.binary_search_by_key(s, |m| m.0).is_err());
            assert_eq!(starts(&fresh), want_fresh);
            assert_eq!(kept.len() + freed.len(), old.len());
            assert_eq!(
                merge_sorted(kept, fresh)
                    .windows(2)
                    .filter(|w| w[0].0 >= w[1].0)
                    .count(),
                0
            );
        }
    }

    /// A dynamic method's code freed, then another put at the same start:
    /// the first's name is forgotten with its listing, the second is named
    /// afresh and listed again (its frame shape with it); a heap whose map
    /// could not be read frees nothing.
    #[test]
    fn freed_code_is_named_afresh_and_listed_again() {
        let (mut mem, table, _, _) = net8_listable();
        // The method's MethodDesc made a dynamic method's, named by a string.
        let chunk = 0x1600_0040 - 2 * 8 - CHUNK_HEADER;
        let mut c = mem.0[&chunk].clone();
        let md = (0x18 + 16) as usize;
        c[md + 6] = DYNAMIC as u8;
        let name = 0x1c00_0000u64;
        let name_at = md + NET8.dynamic_name as usize;
        c[name_at..name_at + 8].copy_from_slice(&name.to_le_bytes());
        mem.put(chunk, &c);
        mem.put(name, b"AlphaHot\0");
        let rt = Runtime::at(mem, &NET8, 0x1000, table).unwrap();
        let mut namer = Namer::new(rt, 0);
        let pc = BASE + 0x50;
        assert_eq!(namer.new_methods().len(), 1);
        assert_eq!(namer.name(pc).map(|n| &**n), Some("dynamicClass::AlphaHot"));
        // The map unreadable for a listing: nothing is taken as freed.
        let map = namer.runtime.mem.0.remove(&MAP).unwrap();
        assert!(namer.new_methods().is_empty());
        assert_eq!(namer.freed, 0);
        // Freed: the map no longer has it.
        namer.runtime.mem.put(MAP, &nibble_map(16, &[]));
        assert!(namer.new_methods().is_empty());
        assert_eq!(namer.freed, 1);
        // Another dynamic method compiled there (its MethodDesc and its
        // name string at the same places, as the runtime may reuse them).
        namer.runtime.mem.put(name, b"BetaHot\0");
        namer.runtime.mem.put(MAP, &map);
        assert_eq!(namer.new_methods().len(), 1, "not listed again");
        assert_eq!(namer.name(pc).map(|n| &**n), Some("dynamicClass::BetaHot"));
    }

    #[test]
    fn a_net8_method_is_found_through_the_range_map_to_its_token_and_assembly() {
        let (mem, table) = net8();
        let rt = Runtime::at(mem, &NET8, 0x1000, table).unwrap();
        let Code::Method(method) = rt.code_at(BASE + 0x80) else {
            panic!("no method: {:?}", rt.code_at(BASE + 0x80));
        };
        assert_eq!(method.start, BASE + 0x40);
        assert_eq!(method.token, 0x0600_1234, "range 1 << 12 | remainder 0x234");
        assert_eq!(
            rt.module_path(method.module).as_deref(),
            Some("/app/Prog.dll")
        );
        assert_eq!(rt.code_size(BASE + 0x40), Some(0x60));
        // In the heap but in no method: before the first one, or past the
        // end its code header gives (a runtime stub's).
        assert_eq!(rt.code_at(BASE + 0x3f), Code::Stub(None));
        assert!(matches!(rt.code_at(BASE + 0x9f), Code::Method(_)));
        assert_eq!(rt.code_at(BASE + 0xa0), Code::Stub(None));
        // A stub's block: its header is its kind (a dispatch stub's, 6).
        let (mut mem, table) = net8();
        mem.put(MAP, &nibble_map(16, &[0x40, 0x200]));
        mem.put(BASE + 0x1f8, &6u64.to_le_bytes());
        let rt = Runtime::at(mem, &NET8, 0x1000, table).unwrap();
        assert_eq!(
            rt.code_at(BASE + 0x210),
            Code::Stub(Some("GenerateDispatchStub"))
        );
        assert!(matches!(rt.code_at(BASE + 0x50), Code::Method(_)));
        // An address the map has no level for.
        assert_eq!(rt.code_at(BASE + (1 << 30)), Code::Unknown);
    }

    #[test]
    fn every_cut_of_the_structures_names_nothing_and_never_panics() {
        let (mem, table) = net8();
        let runs: Vec<u64> = mem.0.keys().copied().collect();
        for at in runs {
            let (mut mem, table) = (net8().0, table);
            let run = mem.0.get_mut(&at).unwrap();
            // Cut short, then every byte flipped in turn.
            run.truncate(run.len() / 2);
            let Ok(rt) = Runtime::at(mem, &NET8, 0x1000, table) else {
                continue;
            };
            if let Code::Method(m) = rt.code_at(BASE + 0x80) {
                assert_eq!(m.start, BASE + 0x40, "cut at {at:#x}");
            }
        }
        let (clean, _) = net8();
        for (&at, run) in &clean.0 {
            for i in (0..run.len()).step_by(3) {
                let (mut mem, _) = net8();
                mem.0.get_mut(&at).unwrap()[i] ^= 0xa5;
                if let Ok(rt) = Runtime::at(mem, &NET8, 0x1000, table) {
                    let _ = rt.code_at(BASE + 0x80);
                    let _ = rt.module_path(0x1800_0000);
                }
            }
        }
        // The table still empty: the runtime has not started.
        let mut empty = Fake::default();
        empty.word(table, 0);
        assert_eq!(
            Runtime::at(empty, &NET8, 0x1000, table).unwrap_err(),
            MemoryError::NotStarted
        );
    }

    /// A perf map's name without the type arguments of a generic type's
    /// instantiation (`List`1[System.__Canon]::Add` → `List`1::Add`), which
    /// the metadata does not give.
    fn without_instantiation(name: &str) -> String {
        // Type arguments follow the generic type, or a type nested in it
        // (`List`1+Enumerator[System.__Canon]::MoveNext`): a `[` in the type
        // part of a name with a backtick.
        let mut out = String::new();
        let mut depth = 0;
        for c in name.chars() {
            match c {
                '[' if depth > 0 || (out.contains('`') && !out.contains("::")) => depth += 1,
                ']' if depth > 0 => depth -= 1,
                _ if depth > 0 => {}
                _ => out.push(c),
            }
        }
        out
    }

    /// Needs root and the runtimes (`cargo xtask bootstrap`): the chain
    /// fixture runs with its perf map on, as ground truth, and every JIT
    /// method the map lists is looked up in the process's memory at its
    /// middle byte and must get the name the map gives it (tier and
    /// signature dropped, as crossprof shows perf-map names).
    #[test]
    fn every_jit_method_is_named_as_the_runtime_s_own_perf_map_names_it() {
        use crossprof_tests::Dotnet;
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to read another process's memory");
            return;
        }
        let cases = Dotnet::ALL
            .into_iter()
            .flat_map(|r| [(r, "chain"), (r, "framework")]);
        for (runtime, fixture) in cases {
            let dll = runtime.fixture(fixture);
            let setting = match runtime {
                Dotnet::Core31 => "COMPlus_PerfMapEnabled",
                _ => "DOTNET_PerfMapEnabled",
            };
            let mut child = runtime
                .command(&dll, &["3"])
                .env(setting, "1")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let map = format!("/tmp/perf-{pid}.map");
            // Past start-up and tiering: Hot at Tier 1 (or 3.1's tier 1).
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let text = std::fs::read_to_string(&map).unwrap_or_default();
            let clr = Clr {
                version: runtime.version().into(),
            };
            let runtime_memory = Runtime::find(pid, &clr).expect("the runtime found");
            // Every method is also listed, with its code's range.
            let listed = runtime_memory.jit_methods();
            let mut namer = Namer::new(runtime_memory, pid);
            let mut unlisted = Vec::new();
            let (mut total, mut same, mut wrong) = (0, 0, Vec::new());
            let mut stubs = std::collections::BTreeMap::new();
            let mut sized = 0;
            for line in text.lines() {
                let mut fields = line.splitn(3, ' ');
                let (Some(start), Some(size), Some(raw)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
                let (Some(start), Some(size)) = (hex(start), hex(size)) else {
                    continue;
                };
                // 10 names its stub blocks `stub ReportStubBlock<KIND>`.
                let stub = raw.starts_with("stub<") || raw.starts_with("stub ");
                if stub && size > 0 {
                    let kind = raw.rsplit_once('<').map_or(raw, |(_, k)| k);
                    let at = match namer.runtime.code_at(start + size / 2) {
                        Code::Stub(_) => "stub",
                        Code::Method(_) => "method",
                        Code::Precompiled => "precompiled",
                        Code::Unknown => "unknown",
                    };
                    *stubs.entry((kind.to_owned(), at)).or_insert(0u32) += 1;
                }
                if stub || raw.contains("[PreJIT]") || size == 0 {
                    continue;
                }
                total += 1;
                if namer.runtime.code_size(start) == Some(size) {
                    sized += 1;
                }
                let i = listed.partition_point(|&(s, _)| s < start);
                if listed
                    .get(i)
                    .is_none_or(|&(s, end)| s != start || end < start + size)
                {
                    unlisted.push(format!("{start:#x}+{size:#x} {raw}: {:x?}", listed.get(i)));
                }
                let want = without_instantiation(&super::super::perfmap::display_name(raw));
                match namer.name(start + size / 2) {
                    Some(got) if **got == *want => same += 1,
                    // .NET 8's perf map writes some generic types'
                    // constructors `.cto` (`List`1[System.__Canon]::.cto(int32)`).
                    Some(got) if want.ends_with("::.cto") && **got == format!("{want}r") => {
                        same += 1
                    }
                    got => wrong.push(format!("{start:#x} {raw}: {got:?}")),
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            for file in ["perf-{}.map", "perfinfo-{}.map", "jit-{}.dump"] {
                let _ =
                    std::fs::remove_file(format!("/tmp/{}", file.replace("{}", &pid.to_string())));
            }
            assert!(
                total >= 10,
                "{runtime:?} {fixture}: only {total} JIT methods in {map}"
            );
            assert!(
                same * 100 >= total * 98,
                "{runtime:?} {fixture}: {same} of {total} named as the perf map names them; not: {wrong:#?}"
            );
            assert!(text.contains("Program::"), "{runtime:?} {fixture}: {text}");
            // Each method's size, from its code header's unwind infos, is
            // the perf map's.
            assert!(
                sized * 100 >= total * 98,
                "{runtime:?} {fixture}: {sized} of {total} sized as the perf map sizes them"
            );
            // .NET 8 keeps its precode stubs in ranges of the code map (shown
            // `[stub]`), and virtual stub dispatch's in its code heaps, in
            // blocks headed by their kind (`[stub: GenerateDispatchStub]`...).
            // 3.1's precode lies in its code heaps outside any method
            // (`[stub]`), its dispatch stubs nowhere the map knows
            // (`[unknown]`, counted as unnamed).
            if runtime == Dotnet::Net8 {
                let count = |at: &str| -> u32 {
                    stubs
                        .iter()
                        .filter(|((kind, a), _)| kind.starts_with("PRECODE") && *a == at)
                        .map(|(_, n)| n)
                        .sum()
                };
                let (found, all) = (count("stub"), count("stub") + count("unknown"));
                assert!(
                    all > 0 && found * 100 >= all * 98,
                    "{fixture}: {found} of {all} precode stubs found as stubs: {stubs:?}"
                );
                let vsd: Vec<_> = stubs
                    .iter()
                    .filter(|((k, _), _)| k.starts_with("Generate"))
                    .collect();
                assert!(
                    !vsd.is_empty() && vsd.iter().all(|((_, at), _)| *at == "stub"),
                    "{fixture}: virtual stub dispatch stubs not found as stubs: {stubs:?}"
                );
            }
            assert!(
                unlisted.len() * 50 <= total,
                "{runtime:?} {fixture}: {} of {total} not listed whole: {unlisted:#?}",
                unlisted.len()
            );
            eprintln!(
                "{runtime:?} {fixture}: {same} of {total} JIT methods named as the perf map names them; not: {wrong:#?}; stubs: {stubs:?}"
            );
        }
    }

    #[test]
    fn processes_share_an_assembly_s_names_while_one_holds_them() {
        // A copy of its own: no other test holds its names.
        let dll = std::env::temp_dir().join(format!("crossprof-shared-{}.dll", std::process::id()));
        std::fs::copy(crossprof_tests::Dotnet::Net8.fixture("chain"), &dll).unwrap();
        let corelib = dll.to_str().unwrap().to_owned();
        let me = std::process::id();
        let first = shared_names(me, &corelib).expect("the fixture's metadata");
        let second = shared_names(me, &corelib).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "read once");
        assert!(
            first.method_name(0x0600_0001).is_some(),
            "MethodDef 1 is named"
        );
        let weak = Arc::downgrade(&first);
        drop((first, second));
        assert!(weak.upgrade().is_none(), "freed with the last holder");
        assert!(
            shared_names(me, "/proc/self/exe").is_none(),
            "not an assembly"
        );
    }

    #[test]
    fn net9_is_checked_by_the_type_system_its_descriptor_states() {
        // The facts 9.0.4's own descriptor states (read from a running
        // 9.0.4 process), in its compact form: no code heaps, no PEAssembly,
        // no ExecutionManager contract.
        let nine = br#"{"version":0,"baseline":"empty","types":{
            "MethodDesc":{"ChunkIndex":2,"Slot":4,"Flags":6,"Flags3AndTokenRemainder":0},
            "MethodDescChunk":{"!":24,"MethodTable":0,"Next":8,"Size":16,"Count":17,"FlagsAndTokenRange":18},
            "MethodTable":{"MTFlags":0,"Module":24},
            "Module":{"Base":288,"Path":272,"Flags":296},
            "DynamicMethodDesc":{"MethodName":32}},
          "globals":{"MethodDescTokenRemainderBitCount":["0xc","uint8"],"MethodDescAlignment":["0x8","uint64"]},
          "contracts":{"Loader":1,"RuntimeTypeSystem":1,"Thread":1}}"#;
        let check = |layout: &Layout| {
            super::super::descriptor::check(nine, &layout.expected().expect("described"))
        };
        assert_eq!(check(&NET9), Ok(()));
        // A table that put PEAssembly elsewhere is caught by its neighbours.
        let moved = Layout {
            module_pe: 0x110,
            ..NET9
        };
        assert_eq!(
            check(&moved),
            Err("its descriptor puts Module.Path at 272, where crossprof reads 264".into())
        );
        // 10's table asks for what 9's descriptor does not state.
        assert!(check(&NET10).is_err());
        assert_eq!(NET8.expected().map(|_| ()), None, "8 has no descriptor");
    }

    #[test]
    fn only_the_versions_whose_layouts_were_checked_are_read() {
        let clr = |v: &str| Clr { version: v.into() };
        assert_eq!(Layout::of(&clr("8.0.4")), Ok(&NET8));
        assert_eq!(Layout::of(&clr("3.1.23")), Ok(&CORE31));
        assert_eq!(Layout::of(&clr("10.0.0")), Ok(&NET10));
        assert_eq!(Layout::of(&clr("9.0.4")), Ok(&NET9));
        for other in ["11.0.0", "6.0.36", "unknown", "3.0.3", "1.0.0"] {
            assert!(Layout::of(&clr(other)).is_err(), "{other}");
        }
    }
}
