//! Source lines of JIT-compiled .NET methods: where in its method a sampled
//! address is (the runtime's IL-to-native maps, from EventPipe), and which
//! source line that IL is (the assembly's portable PDB, [`super::pdb`]).
//!
//! The perf map names a method but has no line. The runtime says the rest in
//! its own events (dotnet/runtime `src/coreclr/vm/ClrEtwAll.man`,
//! `eventtrace.cpp`; checked on 8.0.4 here):
//! - `MethodLoadVerbose` (runtime provider, event 143, keyword JIT 0x10): a
//!   method's code was written: `u64 MethodID, u64 ModuleID, u64
//!   MethodStartAddress, u32 MethodSize, u32 MethodToken, u32 MethodFlags,`
//!   then names. One per code version (each tier has its own code).
//! - `MethodILToNativeMap` (event 190, keyword JittedMethodILToNativeMap
//!   0x20000, level verbose): `u64 MethodID, u64 ReJITID, u8 MethodExtent, u16
//!   Count, u32 ILOffsets[Count], u32 NativeOffsets[Count]`; written by
//!   `ETW::MethodLog::MethodJitted` right after the code version's
//!   `MethodLoadVerbose`, on the same thread, and with no address of its own:
//!   it belongs to the last method loaded on its thread. IL offsets
//!   0xFFFFFFFF/FE/FD are "no mapping", prolog and epilog.
//!   The rundown writes them the other way round (seen on 8.0.4: each
//!   `MethodDCEndILToNativeMap` just before its `MethodDCEndVerbose`), so a
//!   rundown map waits for the next load of its method on its thread.
//! - `MethodUnloadVerbose` (event 144, same layout): the code is freed.
//! - `ModuleLoad` (event 152, keyword Loader 0x8): `u64 ModuleID, u64
//!   AssemblyID, u32 ModuleFlags, u32 Reserved1, ModuleILPath` (UTF-16, NUL).
//! - A session asked for with `requestRundown` writes, when it stops, the
//!   same facts for everything loaded then (rundown provider: MethodDCEndVerbose
//!   144, MethodDCEndILToNativeMap 150, ModuleDCEnd 154, same layouts): how
//!   a process that was already running gets its lines.
//!
//! A sampled address (a return address already moved into its call) is looked
//! up in the code versions' ranges; its offset in the code picks the last map
//! entry at or before it; that IL offset picks the last sequence point at or
//! before it in the method's (token's) PDB entry. No map, no PDB, or a PDB that
//! is not the assembly's (its id differs): no line, never a guessed one.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
};

use super::{
    MAX_ASSEMBLY,
    eventpipe::{self, Event, EventSink, Provider, Session, TraceError},
    pdb::{PdbError, PortablePdb},
};
use crate::{
    frame::Source,
    le::{u16_at, u32_at, u64_at},
};

/// Keywords of the live session: JIT (0x10), Loader (0x8) and
/// JittedMethodILToNativeMap (0x20000).
pub const KEYWORDS: u64 = 0x10 | 0x8 | 0x2_0000;

const METHOD_LOAD_VERBOSE: u32 = 143;
const METHOD_UNLOAD_VERBOSE: u32 = 144;
const METHOD_IL_TO_NATIVE_MAP: u32 = 190;
const MODULE_LOAD: u32 = 152;
const METHOD_DC_END_VERBOSE: u32 = 144;
const METHOD_DC_END_IL_TO_NATIVE_MAP: u32 = 150;
const MODULE_DC_END: u32 = 154;

/// How long a rundown may take to be written and read (a large service has
/// tens of thousands of methods).
pub const RUNDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// IL offsets at or above this are no IL (no mapping, prolog, epilog).
const IL_SPECIAL: u32 = 0xFFFF_FFFD;

/// The live session's request.
pub fn live_request() -> Vec<u8> {
    eventpipe::collect_request(KEYWORDS, eventpipe::LEVEL_VERBOSE, false)
}

/// A short session's request whose stop writes the rundown (for a process
/// already running: its methods are compiled).
pub fn rundown_request() -> Vec<u8> {
    // Its own events are not needed: loader events only, rare.
    eventpipe::collect_request(0x8, eventpipe::LEVEL_INFORMATIONAL, true)
}

/// Starts the live session of process `pid`, and if its runtime may have
/// compiled methods before (it loaded its core library: no JIT before
/// that), a rundown into the same log.
pub fn start(pid: u32) -> Result<Session<MethodLog>, TraceError> {
    let live = Session::open(pid, &live_request(), "jit", MethodLog::default())?;
    if super::ipc::runtime_started(pid) == Some(true) {
        let mut rundown =
            Session::open_shared(pid, &rundown_request(), "rundown", live.shared_log())?;
        if let Some(why) = rundown.stop_within(RUNDOWN_WAIT) {
            return Err(TraceError::Format(format!("the rundown broke: {why}")));
        }
    }
    Ok(live)
}

/// One code version of a method.
#[derive(Debug)]
struct Code {
    end: u64,
    module_id: u64,
    token: u32,
    /// `(native offset, IL offset)`, by native offset.
    map: Vec<(u32, u32)>,
}

/// What the events said: code versions and modules.
#[derive(Debug, Default)]
pub struct MethodLog {
    /// By start address.
    code: BTreeMap<u64, Code>,
    /// Module id -> its IL file, as the process names it.
    modules: HashMap<u64, Arc<str>>,
    /// The last code version loaded on each thread (live events): its map
    /// follows.
    last_load: HashMap<u64, (u64, u64)>,
    /// The last map written on each thread (rundown events): its code
    /// version follows.
    waiting_map: HashMap<u64, (u64, Vec<(u32, u32)>)>,
    /// Maps that followed no load (counted, not used).
    pub orphan_maps: u64,
}

impl EventSink for MethodLog {
    fn event(&mut self, ev: &Event<'_>) {
        let rundown = ev.provider == Provider::Rundown;
        match (ev.provider, ev.event_id) {
            (Provider::Runtime, METHOD_LOAD_VERBOSE)
            | (Provider::Rundown, METHOD_DC_END_VERBOSE) => {
                let p = ev.payload;
                let (Some(method_id), Some(module_id), Some(start), Some(size), Some(token)) = (
                    u64_at(p, 0),
                    u64_at(p, 8),
                    u64_at(p, 16),
                    u32_at(p, 24),
                    u32_at(p, 28),
                ) else {
                    return;
                };
                if size == 0 {
                    return;
                }
                let map = if rundown {
                    match self.waiting_map.remove(&ev.thread_id) {
                        Some((id, map)) if id == method_id => map,
                        Some(_) => {
                            self.orphan_maps += 1;
                            Vec::new()
                        }
                        None => Vec::new(),
                    }
                } else {
                    self.last_load.insert(ev.thread_id, (method_id, start));
                    Vec::new()
                };
                self.insert(
                    start,
                    Code {
                        end: start + u64::from(size),
                        module_id,
                        token,
                        map,
                    },
                );
            }
            (Provider::Runtime, METHOD_UNLOAD_VERBOSE) => {
                // Its code is freed (a collectible assembly unloaded, a
                // dynamic method collected): the memory may hold another's.
                if let Some(start) = u64_at(ev.payload, 16) {
                    self.code.remove(&start);
                }
            }
            (Provider::Runtime, METHOD_IL_TO_NATIVE_MAP)
            | (Provider::Rundown, METHOD_DC_END_IL_TO_NATIVE_MAP) => {
                let p = ev.payload;
                let (Some(method_id), Some(count)) = (u64_at(p, 0), u16_at(p, 17)) else {
                    return;
                };
                let count = usize::from(count);
                let il = |i: usize| u32_at(p, 19 + 4 * i);
                let native = |i: usize| u32_at(p, 19 + 4 * count + 4 * i);
                let Some(mut map) = (0..count)
                    .map(|i| Some((native(i)?, il(i)?)))
                    .collect::<Option<Vec<_>>>()
                else {
                    return;
                };
                map.sort_by_key(|&(native, _)| native);
                if rundown {
                    if self
                        .waiting_map
                        .insert(ev.thread_id, (method_id, map))
                        .is_some()
                    {
                        self.orphan_maps += 1;
                    }
                    return;
                }
                match self.last_load.remove(&ev.thread_id) {
                    Some((id, start)) if id == method_id => {
                        if let Some(code) = self.code.get_mut(&start) {
                            code.map = map;
                        }
                    }
                    _ => self.orphan_maps += 1,
                }
            }
            (Provider::Runtime, MODULE_LOAD) | (Provider::Rundown, MODULE_DC_END) => {
                let Some(module_id) = u64_at(ev.payload, 0) else {
                    return;
                };
                if let Some((path, _)) = ev.payload.get(24..).and_then(eventpipe::utf16z)
                    && !path.is_empty()
                {
                    self.modules.insert(module_id, path.into());
                }
            }
            _ => {}
        }
    }
}

impl MethodLog {
    /// Adds a code version, dropping any older one its range overlaps (code
    /// memory freed and reused without an unload event seen).
    fn insert(&mut self, start: u64, code: Code) {
        let inside: Vec<u64> = self.code.range(start..code.end).map(|(&s, _)| s).collect();
        for s in inside {
            self.code.remove(&s);
        }
        if let Some((&s, before)) = self.code.range(..start).next_back()
            && before.end > start
        {
            self.code.remove(&s);
        }
        self.code.insert(start, code);
    }

    /// Where `addr` is in its method: `(module's IL path, method token, IL
    /// offset)`, if a code version with a map holds it.
    pub fn il_at(&self, addr: u64) -> Option<(Arc<str>, u32, u32)> {
        let (&start, code) = self.code.range(..=addr).next_back()?;
        if addr >= code.end {
            return None;
        }
        let off = u32::try_from(addr - start).ok()?;
        let i = code.map.partition_point(|&(native, _)| native <= off);
        let (_, il) = *code.map.get(i.checked_sub(1)?)?;
        if il >= IL_SPECIAL {
            return None;
        }
        let path = self.modules.get(&code.module_id)?.clone();
        Some((path, code.token, il))
    }

    /// Code versions known.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// None known?
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }
}

/// The portable PDBs of a process's assemblies, read once each.
#[derive(Debug, Default)]
pub struct Pdbs {
    by_path: HashMap<Arc<str>, Option<Arc<PortablePdb>>>,
    /// Assemblies whose PDB is there but unusable (stale, Windows format,
    /// corrupt), and why. Assemblies without one (the framework's) are the
    /// norm, not noted.
    unusable: Vec<(String, String)>,
}

impl Pdbs {
    /// The source line of IL offset `il` of method `token` in the assembly at
    /// `path` (as process `pid` names it: read through its root).
    pub fn source(&mut self, pid: u32, path: &Arc<str>, token: u32, il: u32) -> Option<Source> {
        let pdb = self
            .by_path
            .entry(path.clone())
            .or_insert_with(|| {
                let read = |p: &Path| crate::files::read_in_root(pid, p, MAX_ASSEMBLY);
                match super::pdb::for_assembly(Path::new(&**path), read) {
                    Ok(pdb) => Some(Arc::new(pdb)),
                    Err(e) => {
                        if !is_absent(&e) {
                            self.unusable.push((path.to_string(), e.to_string()));
                        }
                        None
                    }
                }
            })
            .as_ref()?;
        let (file, line) = pdb.line(token, il)?;
        Some((file.clone(), line))
    }
}

impl Pdbs {
    /// Assemblies with a PDB that could not be used, and why.
    pub fn unusable(&self) -> &[(String, String)] {
        &self.unusable
    }
}

/// Is `e` the normal case of an assembly shipped without a PDB?
fn is_absent(e: &PdbError) -> bool {
    match e {
        PdbError::NotFound(_) | PdbError::NoCodeView => true,
        PdbError::File { error, .. } => is_absent(error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(provider: Provider, event_id: u32, thread_id: u64, payload: &[u8]) -> Event<'_> {
        Event {
            provider,
            event_id,
            thread_id,
            timestamp: 0,
            payload,
        }
    }

    fn load(method: u64, module: u64, start: u64, size: u32, token: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&method.to_le_bytes());
        p.extend_from_slice(&module.to_le_bytes());
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&token.to_le_bytes());
        p.extend_from_slice(&[0; 4 + 6]); // flags, three empty names
        p
    }

    fn map(method: u64, pairs: &[(u32, u32)]) -> Vec<u8> {
        let mut p = method.to_le_bytes().to_vec();
        p.extend_from_slice(&0u64.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
        for (il, _) in pairs {
            p.extend_from_slice(&il.to_le_bytes());
        }
        for (_, native) in pairs {
            p.extend_from_slice(&native.to_le_bytes());
        }
        p.extend_from_slice(&[0, 0]);
        p
    }

    fn module(id: u64, path: &str) -> Vec<u8> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 16]);
        for u in path.encode_utf16().chain([0]) {
            p.extend_from_slice(&u.to_le_bytes());
        }
        p
    }

    #[test]
    fn an_address_goes_to_the_il_offset_of_its_code_version() {
        let mut log = MethodLog::default();
        let m = module(7, "/app/chain.dll");
        log.event(&ev(Provider::Runtime, MODULE_LOAD, 1, &m));
        // Tier 0 of method 0x06000001, then tier 1 of it on another thread.
        let t0 = load(100, 7, 0x1000, 0x40, 0x0600_0001);
        log.event(&ev(Provider::Runtime, METHOD_LOAD_VERBOSE, 1, &t0));
        let t0_map = map(
            100,
            &[(0xFFFF_FFFE, 0), (0, 0x8), (5, 0x20), (0xFFFF_FFFD, 0x38)],
        );
        log.event(&ev(Provider::Runtime, METHOD_IL_TO_NATIVE_MAP, 1, &t0_map));
        let t1 = load(100, 7, 0x2000, 0x10, 0x0600_0001);
        log.event(&ev(Provider::Runtime, METHOD_LOAD_VERBOSE, 2, &t1));
        let t1_map = map(100, &[(5, 0)]);
        log.event(&ev(Provider::Runtime, METHOD_IL_TO_NATIVE_MAP, 2, &t1_map));

        fn at_in(log: &MethodLog, a: u64) -> Option<(String, u32, u32)> {
            log.il_at(a).map(|(p, t, il)| (p.to_string(), t, il))
        }
        assert_eq!(at_in(&log, 0x1004), None, "prolog");
        assert_eq!(
            at_in(&log, 0x1010),
            Some(("/app/chain.dll".into(), 0x0600_0001, 0))
        );
        assert_eq!(
            at_in(&log, 0x1021),
            Some(("/app/chain.dll".into(), 0x0600_0001, 5))
        );
        assert_eq!(at_in(&log, 0x1039), None, "epilog");
        assert_eq!(at_in(&log, 0x1040), None, "past the code");
        assert_eq!(
            at_in(&log, 0x2008),
            Some(("/app/chain.dll".into(), 0x0600_0001, 5))
        );
        // A map after another method's load is not taken for it.
        let other = map(999, &[(0, 0)]);
        log.event(&ev(Provider::Runtime, METHOD_IL_TO_NATIVE_MAP, 2, &other));
        assert_eq!(log.orphan_maps, 1);
        // Rundown events have the same layout, each map before its load.
        let r_map = map(200, &[(3, 0)]);
        log.event(&ev(
            Provider::Rundown,
            METHOD_DC_END_IL_TO_NATIVE_MAP,
            3,
            &r_map,
        ));
        let r = load(200, 7, 0x3000, 0x10, 0x0600_0002);
        log.event(&ev(Provider::Rundown, METHOD_DC_END_VERBOSE, 3, &r));
        assert_eq!(
            at_in(&log, 0x3001),
            Some(("/app/chain.dll".into(), 0x0600_0002, 3))
        );
        // Freed code is forgotten; code written over another's range
        // replaces it.
        let unload = load(200, 7, 0x3000, 0x10, 0x0600_0002);
        log.event(&ev(Provider::Runtime, METHOD_UNLOAD_VERBOSE, 3, &unload));
        assert_eq!(at_in(&log, 0x3001), None);
        let over = load(300, 7, 0x1ff8, 0x20, 0x0600_0003);
        log.event(&ev(Provider::Runtime, METHOD_LOAD_VERBOSE, 4, &over));
        assert_eq!(
            at_in(&log, 0x2008),
            None,
            "tier 1's range now holds another"
        );
        assert_eq!(
            at_in(&log, 0x1021),
            Some(("/app/chain.dll".into(), 0x0600_0001, 5))
        );
        // Truncated payloads are ignored, not a panic.
        for cut in 0..t0_map.len() {
            log.event(&ev(
                Provider::Runtime,
                METHOD_IL_TO_NATIVE_MAP,
                1,
                &t0_map[..cut],
            ));
            log.event(&ev(
                Provider::Runtime,
                METHOD_LOAD_VERBOSE,
                1,
                &t0[..cut.min(t0.len())],
            ));
        }
    }
}
