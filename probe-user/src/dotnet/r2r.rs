//! ReadyToRun (precompiled) code named from the assembly file itself, for when the
//! runtime does not say (.NET Core 3.1 writes no jitdump; a process whose perf map
//! the user turned on has none either).
//!
//! The path from a sampled address to `Namespace.Type::Method`, facts from
//! dotnet/runtime (`src/coreclr/inc/pedecoder.h`, `readytorun.h`,
//! `nativeformatreader.h`, `vm/readytoruninfo.cpp`, `vm/codeman.cpp`; identical in
//! 3.1 and 8) and ECMA-335 Partition II §22 and §24:
//! - The loader maps each PE section at `base + VirtualAddress` from the file
//!   (PAL `MAPMapPEFile`), so a frame's file offset converts to an RVA through the
//!   section table.
//! - Data directory 14 is the CLI header; its `ManagedNativeHeader` (offset 64) is
//!   the `READYTORUN_HEADER` (`u32 'RTR\0', u16 major, u16 minor, u32 flags,
//!   u32 sections`, then `{u32 type, u32 rva, u32 size}` each).
//! - Section 102 lists `RUNTIME_FUNCTION {begin, end, unwind}` (RVAs, sorted);
//!   section 103 is a NativeArray indexed by `MethodDef rid - 1` whose entries give
//!   the method's first runtime function (`id >> 1`, or `id >> 2` with fixups).
//! - The metadata (`BSJB`, tables stream `#~`, `#Strings`) names the MethodDef and
//!   its TypeDef (the type whose `MethodList` range holds it), nested types through
//!   `NestedClass` as `Outer+Inner`, as the runtime's own maps print them.
//!
//! - Methods of generic types and generic methods live in section 109, a
//!   NativeHashtable whose entries are R2R method signatures (flags, owner type,
//!   MethodDef token, instantiation) followed by the same entry point: the
//!   signature is skipped to reach it, and the MethodDef names it
//!   (``System.Collections.Generic.List`1::AddWithResize``, without the
//!   instantiation).
//!
//! An address in code no entry point claims (a funclet, a method named through a
//! MemberRef) stays unnamed (`[Assembly.dll+0xOFFSET]`), never given a
//! neighbour's name. Composite images (one `*.r2r.dll` for many assemblies) are
//! not read.

use std::{collections::HashMap, sync::Arc};

/// Why an assembly could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a ReadyToRun image: {0}")]
pub struct R2rError(&'static str);

/// The named precompiled methods of one assembly.
#[derive(Debug)]
pub struct R2rImage {
    sections: Vec<Section>,
    /// `(begin RVA, end RVA, name)`, sorted by begin.
    methods: Vec<(u32, u32, Arc<str>)>,
}

#[derive(Debug, Clone, Copy)]
struct Section {
    rva: u32,
    virtual_size: u32,
    raw_offset: u32,
    raw_size: u32,
}

fn u16_at(d: &[u8], at: usize) -> Result<u16, R2rError> {
    d.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(R2rError("truncated file"))
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, R2rError> {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(R2rError("truncated file"))
}

const RTR_SIGNATURE: u32 = 0x0052_5452;
const SECTION_RUNTIME_FUNCTIONS: u32 = 102;
const SECTION_METHODDEF_ENTRYPOINTS: u32 = 103;
const SECTION_INSTANCE_METHOD_ENTRYPOINTS: u32 = 109;

impl R2rImage {
    /// The PE sections of assembly file `d` (no method named yet) and its CLI
    /// header's file offset.
    fn pe(d: &[u8]) -> Result<(Self, usize), R2rError> {
        if d.get(..2) != Some(b"MZ") {
            return Err(R2rError("no MZ header"));
        }
        let pe = u32_at(d, 0x3C)? as usize;
        if d.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(R2rError("no PE header"));
        }
        let n_sections = usize::from(u16_at(d, pe + 6)?);
        let opt = pe + 24;
        let opt_size = usize::from(u16_at(d, pe + 20)?);
        let dirs = match u16_at(d, opt)? {
            0x20B => opt + 112,
            0x10B => opt + 96,
            _ => return Err(R2rError("unknown optional header")),
        };
        let mut sections = Vec::with_capacity(n_sections);
        for i in 0..n_sections {
            let s = opt + opt_size + 40 * i;
            sections.push(Section {
                virtual_size: u32_at(d, s + 8)?,
                rva: u32_at(d, s + 12)?,
                raw_size: u32_at(d, s + 16)?,
                raw_offset: u32_at(d, s + 20)?,
            });
        }
        let img = R2rImage {
            sections,
            methods: Vec::new(),
        };
        let cli = img.off(u32_at(d, dirs + 14 * 8)?)?;
        Ok((img, cli))
    }

    /// Reads the assembly file `d`.
    pub fn parse(d: &[u8]) -> Result<Self, R2rError> {
        let (mut img, cli) = Self::pe(d)?;
        let metadata = img.off(u32_at(d, cli + 8)?)?;
        let header = img.off(u32_at(d, cli + 64)?)?;
        if u32_at(d, header)? != RTR_SIGNATURE {
            return Err(R2rError("no READYTORUN_HEADER"));
        }
        let n = u32_at(d, header + 12)? as usize;
        let (mut functions, mut entry_points, mut instances) = (None, None, None);
        for i in 0..n.min(256) {
            let s = header + 16 + 12 * i;
            let (kind, rva, size) = (u32_at(d, s)?, u32_at(d, s + 4)?, u32_at(d, s + 8)?);
            match kind {
                SECTION_RUNTIME_FUNCTIONS => functions = Some((img.off(rva)?, size as usize / 12)),
                SECTION_METHODDEF_ENTRYPOINTS => entry_points = Some(rva),
                SECTION_INSTANCE_METHOD_ENTRYPOINTS => instances = Some(rva),
                _ => {}
            }
        }
        let (functions, n_functions) = functions.ok_or(R2rError("no runtime functions"))?;
        let entry_points = entry_points.ok_or(R2rError("no method entry points"))?;
        let names = MetadataNames::parse(d, metadata)?;
        let array = NativeArray::new(&img, d, entry_points)?;
        // (MethodDef rid, RVA of its entry-point blob), plain methods first, then
        // generic instantiations.
        let mut entries: Vec<(u32, u32)> = (1..=names.method_count())
            .filter_map(|rid| Some((rid, array.get(&img, d, rid - 1)?)))
            .collect();
        if let Some(rva) = instances {
            entries.extend(instance_entries(&img, d, rva)?);
        }
        for (rid, mut at) in entries {
            let id = decode_unsigned(&img, d, &mut at)?;
            let index = if id & 1 != 0 { id >> 2 } else { id >> 1 } as usize;
            if index >= n_functions || rid == 0 || rid > names.method_count() {
                continue;
            }
            let f = functions + 12 * index;
            let (begin, end) = (u32_at(d, f)?, u32_at(d, f + 4)?);
            if let Some(name) = names.method_name(d, rid) {
                img.methods.push((begin, end, name.into()));
            }
        }
        img.methods.sort_by_key(|m| m.0);
        img.methods.dedup_by_key(|m| m.0);
        Ok(img)
    }

    /// The file offset of `rva`.
    fn off(&self, rva: u32) -> Result<usize, R2rError> {
        self.sections
            .iter()
            .find(|s| rva >= s.rva && rva - s.rva < s.virtual_size.max(s.raw_size))
            .map(|s| (rva - s.rva) as usize + s.raw_offset as usize)
            .or_else(|| {
                let first = self.sections.iter().map(|s| s.rva).min().unwrap_or(0);
                (rva < first).then_some(rva as usize) // the headers
            })
            .ok_or(R2rError("address outside every section"))
    }

    /// The RVA of file offset `off`.
    fn rva(&self, off: u64) -> Option<u32> {
        let s = self.sections.iter().find(|s| {
            off >= u64::from(s.raw_offset) && off - u64::from(s.raw_offset) < u64::from(s.raw_size)
        })?;
        Some((off - u64::from(s.raw_offset)) as u32 + s.rva)
    }

    /// The precompiled method whose code holds file offset `off`.
    pub fn name_at_file_offset(&self, off: u64) -> Option<&str> {
        let rva = self.rva(off)?;
        let i = self.methods.partition_point(|m| m.0 <= rva);
        let (_, end, name) = self.methods.get(i.checked_sub(1)?)?;
        (rva < *end).then_some(&**name)
    }

    /// Every named method's code: `(file offset, bytes)`.
    pub fn method_code(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.methods.iter().filter_map(|&(begin, end, _)| {
            let off = self.off(begin).ok()?;
            Some((off as u64, end.checked_sub(begin)?))
        })
    }

    /// Methods named.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// No method named?
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

/// NativeFormat's variable-length unsigned integer at RVA `*at`; advances `*at`.
fn decode_unsigned(img: &R2rImage, d: &[u8], at: &mut u32) -> Result<u32, R2rError> {
    let p = img.off(*at)?;
    let b = |i: usize| {
        d.get(p + i)
            .copied()
            .map(u32::from)
            .ok_or(R2rError("truncated varint"))
    };
    let b0 = b(0)?;
    let (value, len) = if b0 & 1 == 0 {
        (b0 >> 1, 1)
    } else if b0 & 2 == 0 {
        ((b0 >> 2) | (b(1)? << 6), 2)
    } else if b0 & 4 == 0 {
        ((b0 >> 3) | (b(1)? << 5) | (b(2)? << 13), 3)
    } else if b0 & 8 == 0 {
        ((b0 >> 4) | (b(1)? << 4) | (b(2)? << 12) | (b(3)? << 20), 4)
    } else if b0 & 16 == 0 {
        (u32_at(d, p + 1)?, 5)
    } else {
        return Err(R2rError("bad varint"));
    };
    *at = at.checked_add(len).ok_or(R2rError("varint past 4 GiB"))?;
    Ok(value)
}

/// NativeFormat's signed variable-length integer at RVA `*at`.
fn decode_signed(img: &R2rImage, d: &[u8], at: &mut u32) -> Result<i32, R2rError> {
    let p = img.off(*at)?;
    let b0 = u32::from(*d.get(p).ok_or(R2rError("truncated varint"))?);
    let len = [1, 2, 3, 4, 5][(b0.trailing_ones() as usize).min(4)];
    let mut at2 = *at;
    let value = decode_unsigned(img, d, &mut at2)?;
    *at = at2;
    // Sign-extend from the value's width: 7, 14, 21, 28 or 32 bits.
    let bits = [7, 14, 21, 28, 32][len - 1];
    Ok(if bits == 32 {
        value as i32
    } else {
        ((value << (32 - bits)) as i32) >> (32 - bits)
    })
}

/// `(MethodDef rid, entry-point RVA)` of every method instantiation in the
/// InstanceMethodEntryPoints hash table (NativeFormat `NativeHashtable`: a byte
/// header, bucket offsets, then per bucket `u8 low hash, signed relative offset`
/// entries, each pointing at an R2R method signature followed by the entry point).
fn instance_entries(img: &R2rImage, d: &[u8], rva: u32) -> Result<Vec<(u32, u32)>, R2rError> {
    let header = u32::from(
        *d.get(img.off(rva)?)
            .ok_or(R2rError("truncated hash table"))?,
    );
    let bad = || R2rError("hash table out of range");
    let base = rva.checked_add(1).ok_or_else(bad)?;
    let buckets = 1u32.checked_shl(header >> 2).ok_or_else(bad)?;
    let index_size = 1u32 << (header & 3);
    let bucket_at = |b: u32| -> Result<u32, R2rError> {
        let p = img.off(
            b.checked_mul(index_size)
                .and_then(|o| o.checked_add(base))
                .ok_or_else(bad)?,
        )?;
        Ok(match index_size {
            1 => u32::from(*d.get(p).ok_or(R2rError("truncated hash table"))?),
            2 => u32::from(u16_at(d, p)?),
            _ => u32_at(d, p)?,
        })
    };
    let mut out = Vec::new();
    for b in 0..buckets.min(1 << 24) {
        let (mut at, end) = (
            base.checked_add(bucket_at(b)?).ok_or_else(bad)?,
            base.checked_add(bucket_at(b + 1)?).ok_or_else(bad)?,
        );
        while at < end {
            at = at.checked_add(1).ok_or_else(bad)?; // low hash byte
            let from = at;
            let delta = decode_signed(img, d, &mut at)?;
            let blob = from.wrapping_add_signed(delta);
            let mut sig = Sig { img, d, at: blob };
            if let Ok(Some(rid)) = sig.method() {
                out.push((rid, sig.at));
            }
        }
    }
    Ok(out)
}

/// An R2R method signature (`src/coreclr/inc/readytorun.h` ReadyToRunMethodSigFlags,
/// ECMA-335 II.23.2 compressed integers and type signatures).
struct Sig<'a> {
    img: &'a R2rImage,
    d: &'a [u8],
    at: u32,
}

const SIG_METHOD_INSTANTIATION: u32 = 0x04;
const SIG_SLOT_INSTEAD_OF_TOKEN: u32 = 0x08;
const SIG_MEMBER_REF_TOKEN: u32 = 0x10;
const SIG_CONSTRAINED: u32 = 0x20;
const SIG_OWNER_TYPE: u32 = 0x40;
const SIG_UPDATE_CONTEXT: u32 = 0x80;

impl Sig<'_> {
    fn byte(&mut self) -> Result<u8, R2rError> {
        let b = *self
            .d
            .get(self.img.off(self.at)?)
            .ok_or(R2rError("truncated signature"))?;
        self.at = self.at.wrapping_add(1);
        Ok(b)
    }

    /// ECMA-335 compressed unsigned integer.
    fn data(&mut self) -> Result<u32, R2rError> {
        let b0 = u32::from(self.byte()?);
        Ok(if b0 & 0x80 == 0 {
            b0
        } else if b0 & 0xC0 == 0x80 {
            ((b0 & 0x3F) << 8) | u32::from(self.byte()?)
        } else if b0 & 0xE0 == 0xC0 {
            let mut v = b0 & 0x1F;
            for _ in 0..3 {
                v = (v << 8) | u32::from(self.byte()?);
            }
            v
        } else {
            return Err(R2rError("bad compressed integer"));
        })
    }

    /// The MethodDef rid the signature names (None for a MemberRef or a slot),
    /// leaving `at` on what follows it.
    fn method(&mut self) -> Result<Option<u32>, R2rError> {
        let flags = self.data()?;
        if flags & SIG_UPDATE_CONTEXT != 0 {
            self.data()?; // module
        }
        if flags & SIG_OWNER_TYPE != 0 {
            self.skip_type(0)?;
        }
        let token = self.data()?;
        if flags & SIG_METHOD_INSTANTIATION != 0 {
            for _ in 0..self.data()?.min(64) {
                self.skip_type(0)?;
            }
        }
        if flags & SIG_CONSTRAINED != 0 {
            self.skip_type(0)?;
        }
        let plain = flags & (SIG_SLOT_INSTEAD_OF_TOKEN | SIG_MEMBER_REF_TOKEN) == 0;
        Ok(plain.then_some(token))
    }

    /// Skips one type signature.
    fn skip_type(&mut self, depth: u32) -> Result<(), R2rError> {
        if depth > 32 {
            return Err(R2rError("signature nested too deep"));
        }
        match self.byte()? {
            // void .. string, typedref, native ints, object; R2R's __Canon
            0x01..=0x0E | 0x16 | 0x18 | 0x19 | 0x1C | 0x3E => {}
            // pointer, byref, szarray, pinned; R2R's native value type
            0x0F | 0x10 | 0x1D | 0x45 | 0x3D => self.skip_type(depth + 1)?,
            // valuetype / class token
            0x11 | 0x12 => {
                self.data()?;
            }
            // generic parameter number
            0x13 | 0x1E => {
                self.data()?;
            }
            // array: type, rank, sizes, lower bounds
            0x14 => {
                self.skip_type(depth + 1)?;
                self.data()?;
                for _ in 0..2 {
                    for _ in 0..self.data()?.min(64) {
                        self.data()?;
                    }
                }
            }
            // generic instantiation: type, count, arguments
            0x15 => {
                self.skip_type(depth + 1)?;
                for _ in 0..self.data()?.min(64) {
                    self.skip_type(depth + 1)?;
                }
            }
            // function pointer: calling convention, [generic count], count, return, params
            0x1B => {
                let conv = self.byte()?;
                if conv & 0x10 != 0 {
                    self.data()?;
                }
                let n = self.data()?.min(64);
                for _ in 0..=n {
                    self.skip_type(depth + 1)?;
                }
            }
            // custom modifiers: token, then the type
            0x1F | 0x20 => {
                self.data()?;
                self.skip_type(depth + 1)?;
            }
            // R2R's module override: module index, then the type
            0x3F => {
                self.data()?;
                self.skip_type(depth + 1)?;
            }
            _ => return Err(R2rError("unknown element type")),
        }
        Ok(())
    }
}

/// NativeFormat's sparse array: a block index, then a bit tree per 16 entries.
struct NativeArray {
    base: u32,
    count: u32,
    index_size: u32,
}

impl NativeArray {
    fn new(img: &R2rImage, d: &[u8], rva: u32) -> Result<Self, R2rError> {
        let mut at = rva;
        let val = decode_unsigned(img, d, &mut at)?;
        Ok(Self {
            base: at,
            count: val >> 2,
            index_size: val & 3,
        })
    }

    /// The RVA of element `index`, if present.
    fn get(&self, img: &R2rImage, d: &[u8], index: u32) -> Option<u32> {
        if index >= self.count {
            return None;
        }
        let slot = self
            .base
            .checked_add((index / 16).checked_mul(1 << self.index_size)?)?;
        let p = img.off(slot).ok()?;
        let rel = match self.index_size {
            0 => u32::from(*d.get(p)?),
            1 => u32::from(u16_at(d, p).ok()?),
            _ => u32_at(d, p).ok()?,
        };
        let mut at = self.base.checked_add(rel)?;
        let mut bit = 8;
        while bit > 0 {
            let mut next = at;
            let val = decode_unsigned(img, d, &mut next).ok()?;
            if index & bit != 0 {
                if val & 2 != 0 {
                    at = at.checked_add(val >> 2)?;
                    bit >>= 1;
                    continue;
                }
            } else if val & 1 != 0 {
                at = next;
                bit >>= 1;
                continue;
            }
            // A leaf for exactly this index, or nothing.
            return (val & 3 == 0 && (val >> 2) == (index & 15)).then_some(next);
        }
        Some(at)
    }
}

/// An assembly's methods named by MethodDef token from its metadata alone
/// (any assembly: IL only or ReadyToRun), for JIT code found in the runtime's
/// memory ([`super::memory`]). Keeps the metadata, not the whole file (a
/// framework assembly's precompiled code is most of it).
pub struct MethodNames {
    metadata: Vec<u8>,
    names: MetadataNames,
}

impl std::fmt::Debug for MethodNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MethodNames({} methods)", self.names.method_count())
    }
}

impl MethodNames {
    /// Reads assembly file `d`'s metadata.
    pub fn parse(d: &[u8]) -> Result<Self, R2rError> {
        let (img, cli) = R2rImage::pe(d)?;
        let root = img.off(u32_at(d, cli + 8)?)?;
        let size = u32_at(d, cli + 12)? as usize;
        let metadata = d
            .get(root..root.saturating_add(size))
            .ok_or(R2rError("the metadata runs past the file"))?
            .to_vec();
        let names = MetadataNames::parse(&metadata, 0)?;
        Ok(Self { metadata, names })
    }

    /// `Namespace.Type::Method` of MethodDef `token` (`0x06xxxxxx`).
    pub fn method_name(&self, token: u32) -> Option<String> {
        if token >> 24 != 0x06 {
            return None;
        }
        self.names.method_name(&self.metadata, token & 0x00ff_ffff)
    }
}

/// Names from the ECMA-335 metadata: MethodDef and TypeDef rows.
struct MetadataNames {
    /// Bytes of a `#Strings` index.
    str_idx: usize,
    strings: usize,
    string_size: usize,
    typedef: Table,
    methoddef: Table,
    /// nested TypeDef rid -> enclosing TypeDef rid
    enclosing: HashMap<u32, u32>,
    /// TypeDef `MethodList` column, by TypeDef rid - 1.
    method_lists: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Table {
    at: usize,
    rows: u32,
    row_size: usize,
}

impl MetadataNames {
    fn parse(d: &[u8], root: usize) -> Result<Self, R2rError> {
        if u32_at(d, root)? != 0x424A_5342 {
            return Err(R2rError("no metadata root"));
        }
        let version_len = u32_at(d, root + 12)? as usize;
        let mut at = root + 16 + version_len + 2;
        let n_streams = usize::from(u16_at(d, at)?);
        at += 2;
        let (mut tables, mut strings) = (None, None);
        for _ in 0..n_streams {
            let offset = u32_at(d, at)? as usize;
            let size = u32_at(d, at + 4)? as usize;
            let name_start = at + 8;
            let name_len = d
                .get(name_start..)
                .and_then(|n| n.iter().position(|&b| b == 0))
                .ok_or(R2rError("bad stream name"))?;
            match &d[name_start..name_start + name_len] {
                b"#~" | b"#-" => tables = Some(root + offset),
                b"#Strings" => strings = Some((root + offset, size)),
                _ => {}
            }
            at = name_start + (name_len + 4) / 4 * 4;
        }
        let tables = tables.ok_or(R2rError("no tables stream"))?;
        let (strings, string_size) = strings.ok_or(R2rError("no strings heap"))?;
        let heap_sizes = *d.get(tables + 6).ok_or(R2rError("truncated file"))?;
        let valid = u64::from(u32_at(d, tables + 8)?) | (u64::from(u32_at(d, tables + 12)?) << 32);
        let mut rows = [0u32; 64];
        let mut at = tables + 24;
        for (t, r) in rows.iter_mut().enumerate() {
            if valid & (1 << t) != 0 {
                *r = u32_at(d, at)?;
                at += 4;
            }
        }
        if heap_sizes & 0x40 != 0 {
            at += 4;
        }
        let sizes = RowSizes::new(&rows, heap_sizes);
        let mut offsets = [0usize; 0x2A];
        for (t, slot) in offsets.iter_mut().enumerate() {
            *slot = at;
            // Every table inside the file: row counts are the file's word, and
            // later loops run over them.
            at = sizes
                .row(t)?
                .checked_mul(rows[t] as usize)
                .and_then(|n| n.checked_add(at))
                .filter(|&end| end <= d.len())
                .ok_or(R2rError("a metadata table runs past the file"))?;
        }
        let table = |t: usize| -> Result<Table, R2rError> {
            Ok(Table {
                at: offsets[t],
                rows: rows[t],
                row_size: sizes.row(t)?,
            })
        };
        let (typedef, methoddef, nested) = (table(0x02)?, table(0x06)?, table(0x29)?);
        let str_idx = sizes.str;
        let def_idx = sizes.simple(0x02);
        let method_idx = sizes.simple(0x06);
        // TypeDef: Flags u32, Name, Namespace, Extends, FieldList, MethodList.
        let method_list_at =
            4 + 2 * str_idx + sizes.coded(&[0x02, 0x01, 0x1B], 2) + sizes.simple(0x04);
        let mut method_lists = Vec::with_capacity(typedef.rows as usize);
        for r in 0..typedef.rows as usize {
            let p = typedef.at + r * typedef.row_size + method_list_at;
            method_lists.push(read_index(d, p, method_idx)?);
        }
        let mut enclosing = HashMap::new();
        for r in 0..nested.rows as usize {
            let p = nested.at + r * nested.row_size;
            enclosing.insert(
                read_index(d, p, def_idx)?,
                read_index(d, p + def_idx, def_idx)?,
            );
        }
        Ok(Self {
            str_idx,
            strings,
            string_size,
            typedef,
            methoddef,
            enclosing,
            method_lists,
        })
    }

    fn method_count(&self) -> u32 {
        self.methoddef.rows
    }

    fn string(&self, d: &[u8], index: u32) -> Option<String> {
        let index = index as usize;
        if index >= self.string_size {
            return None;
        }
        let s = d.get(self.strings + index..self.strings + self.string_size)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    /// `Namespace.Type::Method` (nested: `Namespace.Outer+Inner::Method`).
    fn method_name(&self, d: &[u8], rid: u32) -> Option<String> {
        if rid == 0 || rid > self.methoddef.rows {
            return None;
        }
        // MethodDef: RVA u32, ImplFlags u16, Flags u16, Name, ...
        let row = self.methoddef.at + (rid as usize - 1) * self.methoddef.row_size;
        let method = self.string(d, read_index(d, row + 8, self.str_idx).ok()?)?;
        // The owning type: the last whose MethodList starts at or before rid.
        let owner = self.method_lists.partition_point(|&first| first <= rid);
        let ty = self.type_name(d, owner as u32, 0)?;
        Some(format!("{ty}::{method}"))
    }

    fn type_name(&self, d: &[u8], rid: u32, depth: u32) -> Option<String> {
        if rid == 0 || rid > self.typedef.rows || depth > 16 {
            return None;
        }
        // TypeDef: Flags u32, Name, Namespace, ...
        let row = self.typedef.at + (rid as usize - 1) * self.typedef.row_size;
        let name = self.string(d, read_index(d, row + 4, self.str_idx).ok()?)?;
        if let Some(&outer) = self.enclosing.get(&rid) {
            return Some(format!("{}+{name}", self.type_name(d, outer, depth + 1)?));
        }
        let namespace =
            self.string(d, read_index(d, row + 4 + self.str_idx, self.str_idx).ok()?)?;
        Some(if namespace.is_empty() {
            name
        } else {
            format!("{namespace}.{name}")
        })
    }
}

fn read_index(d: &[u8], at: usize, size: usize) -> Result<u32, R2rError> {
    if size == 2 {
        u16_at(d, at).map(u32::from)
    } else {
        u32_at(d, at)
    }
}

/// Row sizes of the metadata tables (ECMA-335 II.22: columns; II.24.2.6: index
/// widths from row counts and heap sizes).
struct RowSizes {
    rows: [u32; 64],
    str: usize,
    guid: usize,
    blob: usize,
}

// Coded index kinds: the tables each may point into, and its tag bits.
const TYPE_DEF_OR_REF: (&[usize], u32) = (&[0x02, 0x01, 0x1B], 2);
const RESOLUTION_SCOPE: (&[usize], u32) = (&[0x00, 0x1A, 0x23, 0x01], 2);
const HAS_CONSTANT: (&[usize], u32) = (&[0x04, 0x08, 0x17], 2);
const HAS_CUSTOM_ATTRIBUTE: (&[usize], u32) = (
    &[
        0x06, 0x04, 0x01, 0x02, 0x08, 0x09, 0x0A, 0x00, 0x0E, 0x17, 0x14, 0x11, 0x1A, 0x1B, 0x20,
        0x23, 0x26, 0x27, 0x28, 0x2A, 0x2C, 0x2B,
    ],
    5,
);
const HAS_FIELD_MARSHAL: (&[usize], u32) = (&[0x04, 0x08], 1);
const HAS_DECL_SECURITY: (&[usize], u32) = (&[0x02, 0x06, 0x20], 2);
const MEMBER_REF_PARENT: (&[usize], u32) = (&[0x02, 0x01, 0x1A, 0x06, 0x1B], 3);
const HAS_SEMANTICS: (&[usize], u32) = (&[0x14, 0x17], 1);
const METHOD_DEF_OR_REF: (&[usize], u32) = (&[0x06, 0x0A], 1);
const MEMBER_FORWARDED: (&[usize], u32) = (&[0x04, 0x06], 1);
const IMPLEMENTATION: (&[usize], u32) = (&[0x26, 0x23, 0x27], 2);
const CUSTOM_ATTRIBUTE_TYPE: (&[usize], u32) = (&[0x06, 0x0A], 3);

impl RowSizes {
    fn new(rows: &[u32; 64], heap_sizes: u8) -> Self {
        let wide = |bit: u8| if heap_sizes & bit != 0 { 4 } else { 2 };
        Self {
            rows: *rows,
            str: wide(1),
            guid: wide(2),
            blob: wide(4),
        }
    }

    fn simple(&self, table: usize) -> usize {
        if self.rows[table] < 0x1_0000 { 2 } else { 4 }
    }

    fn coded(&self, tables: &[usize], bits: u32) -> usize {
        let max = tables.iter().map(|&t| self.rows[t]).max().unwrap_or(0);
        if max < (1 << (16 - bits)) { 2 } else { 4 }
    }

    fn c(&self, kind: (&[usize], u32)) -> usize {
        self.coded(kind.0, kind.1)
    }

    /// Bytes of one row of `table` (tables 0x00 to 0x29).
    fn row(&self, table: usize) -> Result<usize, R2rError> {
        let (s, g, b) = (self.str, self.guid, self.blob);
        let i = |t| self.simple(t);
        Ok(match table {
            0x00 => 2 + s + 3 * g,
            0x01 => self.c(RESOLUTION_SCOPE) + 2 * s,
            0x02 => 4 + 2 * s + self.c(TYPE_DEF_OR_REF) + i(0x04) + i(0x06),
            0x03 => i(0x04),
            0x04 => 2 + s + b,
            0x05 => i(0x06),
            0x06 => 8 + s + b + i(0x08),
            0x07 => i(0x08),
            0x08 => 4 + s,
            0x09 => i(0x02) + self.c(TYPE_DEF_OR_REF),
            0x0A => self.c(MEMBER_REF_PARENT) + s + b,
            0x0B => 2 + self.c(HAS_CONSTANT) + b,
            0x0C => self.c(HAS_CUSTOM_ATTRIBUTE) + self.c(CUSTOM_ATTRIBUTE_TYPE) + b,
            0x0D => self.c(HAS_FIELD_MARSHAL) + b,
            0x0E => 2 + self.c(HAS_DECL_SECURITY) + b,
            0x0F => 6 + i(0x02),
            0x10 => 4 + i(0x04),
            0x11 => b,
            0x12 => i(0x02) + i(0x14),
            0x13 => i(0x14),
            0x14 => 2 + s + self.c(TYPE_DEF_OR_REF),
            0x15 => i(0x02) + i(0x17),
            0x16 => i(0x17),
            0x17 => 2 + s + b,
            0x18 => 2 + i(0x06) + self.c(HAS_SEMANTICS),
            0x19 => i(0x02) + 2 * self.c(METHOD_DEF_OR_REF),
            0x1A => s,
            0x1B => b,
            0x1C => 2 + self.c(MEMBER_FORWARDED) + s + i(0x1A),
            0x1D => 4 + i(0x04),
            0x1E => 8,
            0x1F => 4,
            0x20 => 16 + b + 2 * s,
            0x21 => 4,
            0x22 => 12,
            0x23 => 12 + 2 * b + 2 * s,
            0x24 => 4 + i(0x23),
            0x25 => 12 + i(0x23),
            0x26 => 4 + s + b,
            0x27 => 8 + 2 * s + self.c(IMPLEMENTATION),
            0x28 => 8 + s + self.c(IMPLEMENTATION),
            0x29 => 2 * i(0x02),
            _ => return Err(R2rError("table beyond NestedClass")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framework's own ReadyToRun images, installed by `cargo xtask bootstrap`.
    fn corelib(version_dir: &str, version: &str) -> Vec<u8> {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let path = format!(
            "{home}/.cache/crossprof/{version_dir}/shared/Microsoft.NETCore.App/{version}/System.Private.CoreLib.dll"
        );
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (cargo xtask bootstrap installs the .NET runtimes)")
        })
    }

    fn check(image: &R2rImage) {
        assert!(image.len() > 5000, "only {} methods named", image.len());
        let names: std::collections::HashSet<&str> = image.methods.iter().map(|m| &*m.2).collect();
        for known in [
            "System.String::Concat",
            "System.Collections.HashHelpers::GetPrime",
            "System.Number::FormatInt32",
            // Methods of generic types: only in InstanceMethodEntryPoints.
            "System.Collections.Generic.List`1::AddWithResize",
            "System.Collections.Generic.Dictionary`2::TryInsert",
        ] {
            assert!(names.contains(known), "{known} not named");
        }
        // A nested type reads Outer+Inner, as the runtime prints it.
        assert!(names.iter().any(|n| n.contains('+')), "no nested type name");
        // Every method's own range names it, from its first byte to its last.
        for (begin, end, name) in image.methods.iter().step_by(97) {
            let s = image
                .sections
                .iter()
                .find(|s| *begin >= s.rva && *begin < s.rva + s.virtual_size)
                .unwrap();
            let off = u64::from(begin - s.rva + s.raw_offset);
            assert_eq!(image.name_at_file_offset(off), Some(&**name));
            let last = off + u64::from(end - begin) - 1;
            assert_eq!(image.name_at_file_offset(last), Some(&**name));
        }
    }

    #[test]
    fn names_net8_corelib_methods() {
        check(&R2rImage::parse(&corelib("dotnet8/dnv/net/runtime/.net", "8.0.4")).unwrap());
    }

    #[test]
    fn names_core31_corelib_methods() {
        check(&R2rImage::parse(&corelib("dotnet31/dotnetcore2/bin", "3.1.23")).unwrap());
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        assert_eq!(R2rImage::parse(b"").unwrap_err(), R2rError("no MZ header"));
        let mut data = corelib("dotnet8/dnv/net/runtime/.net", "8.0.4");
        data.truncate(4096);
        assert!(R2rImage::parse(&data).is_err());
        // ELF is not PE.
        let elf = std::fs::read("/proc/self/exe").unwrap();
        assert!(R2rImage::parse(&elf[..4096]).is_err());
    }
}
