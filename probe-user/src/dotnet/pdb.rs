//! Source lines of managed code from the assembly's Portable PDB: the debug
//! symbols Roslyn writes next to a `.dll` for .NET Core and .NET 5+ (`<stem>.pdb`).
//!
//! The format, from the public specifications (ECMA-335 6th edition Partition II
//! §24 and §23.2; "Portable PDB v1.0: Format Specification", dotnet/runtime
//! `docs/design/specs/PortablePdb-Metadata.md`; "PE/COFF Specification Addendum",
//! `docs/design/specs/PE-COFF.md`):
//! - A portable PDB is an ECMA-335 metadata blob on its own: the metadata root
//!   (`BSJB`, §II.24.2.1) lists streams (§II.24.2.2). A standalone PDB has a `#Pdb`
//!   stream (PDB id, entry point, the row counts of the assembly's tables it
//!   refers to), a `#~` tables stream (§II.24.2.6) holding only the debug tables
//!   (0x30 and up), and its own `#Blob`, `#GUID`, `#Strings` heaps (§II.24.2.3-5).
//! - Table Document (0x30) names the source files; a name is a blob of a separator
//!   character and blob indices of its UTF-8 parts ("Document Name Blob").
//! - Table MethodDebugInformation (0x31) has one row per MethodDef of the assembly
//!   (row id = MethodDef row id): the method's document and its sequence-points
//!   blob, IL offset to source line, delta-encoded with ECMA-335 compressed
//!   integers (§II.23.2; "Sequence Points Blob").
//! - The PDB belongs to the assembly whose CodeView debug directory entry (PE/COFF
//!   data directory 6, type 2, `RSDS`) has the PDB id's first 16 bytes as its GUID
//!   and whose TimeDateStamp is the id's last 4 bytes (PE-COFF.md, "CodeView Debug
//!   Directory Entry"); a stale PDB is refused rather than giving wrong lines.
//!
//! A line is looked up as the runtime does for exception stack traces
//! (`System.Diagnostics.StackTraceSymbols.GetSourceLineInfo`): the last non-hidden
//! sequence point at or before the IL offset.
//!
//! Not read: PDBs embedded in the assembly (debug directory type 17, Deflate
//! compressed, `<DebugType>embedded</DebugType>`), Windows (MSF) PDBs, local
//! scopes and variables, and the source-link/embedded-source custom debug
//! information.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// A sequence point: IL offset → source position. Hidden points (line 0xfeefee
/// in the spec: compiler-generated code with no source) are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencePoint {
    /// Offset of the first IL instruction of the point, in the method body.
    pub il_offset: u32,
    /// index into `PortablePdb::documents`
    pub document: u32,
    /// Start line, 1-based.
    pub line: u32,
    /// Start column, 1-based.
    pub column: u32,
}

/// Why a portable PDB could not be read or matched to its assembly.
#[derive(Debug, thiserror::Error)]
pub enum PdbError {
    /// A file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The PDB is not well-formed.
    #[error("malformed portable PDB: {0}")]
    Format(&'static str),
    /// The assembly is not a PE file that can be read.
    #[error("not a PE file: {0}")]
    Pe(&'static str),
    /// The assembly names no PDB (built without debug symbols, or embedded only).
    #[error("no CodeView debug directory entry in the assembly")]
    NoCodeView,
    /// A Windows PDB (MSF container), which is not read.
    #[error("a Windows PDB (MSF 7.00), not a portable PDB")]
    WindowsPdb,
    /// The PDB was built with another version of the assembly.
    #[error("PDB id does not match the assembly's CodeView entry (stale PDB)")]
    Mismatch,
    /// No PDB file where one was looked for.
    #[error("no PDB file (looked for {0})")]
    NotFound(String),
    /// An error about one file.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        error: Box<PdbError>,
    },
}

/// The debug information of one assembly that maps IL offsets to source lines.
#[derive(Debug)]
pub struct PortablePdb {
    id: [u8; 20],
    documents: Vec<Arc<str>>,
    /// Every method's non-hidden points, method after method.
    points: Vec<SequencePoint>,
    /// MethodDef rid `r`'s points are `points[methods[r - 1]..methods[r]]`.
    methods: Vec<u32>,
}

/// ECMA-335 §II.24.2.1: the metadata root's signature, `BSJB`.
const METADATA_SIGNATURE: u32 = 0x424A_5342;
/// Portable PDB spec, "Document Table: 0x30".
const TABLE_DOCUMENT: u32 = 0x30;
/// Portable PDB spec, "MethodDebugInformation Table: 0x31".
const TABLE_METHOD_DEBUG_INFORMATION: u32 = 0x31;
/// ECMA-335 §II.22: MethodDef is table 0x06, the high byte of its tokens.
const TABLE_METHOD_DEF: u32 = 0x06;
/// Portable PDB spec, "Sequence Points Blob": lines and columns are below these.
const MAX_LINE: i64 = 0x2000_0000;
const MAX_COLUMN: i64 = 0x1_0000;
/// The line of a hidden sequence point (never kept; a decoded line equal to it is
/// malformed).
const HIDDEN_LINE: i64 = 0xFE_EFEE;
/// The first bytes of a Windows PDB (the MSF 7.00 container).
const MSF_MAGIC: &[u8] = b"Microsoft C/C++ MSF 7.00";

/// A bounds-checked little-endian reader; running out of bytes is the error `eof`.
struct Reader<'a> {
    d: &'a [u8],
    at: usize,
    eof: &'static str,
}

impl<'a> Reader<'a> {
    fn new(d: &'a [u8], eof: &'static str) -> Self {
        Self { d, at: 0, eof }
    }

    fn at(d: &'a [u8], at: usize, eof: &'static str) -> Self {
        Self { d, at, eof }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.d.len()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PdbError> {
        let end = self.at.checked_add(n).ok_or(PdbError::Format(self.eof))?;
        let b = self.d.get(self.at..end).ok_or(PdbError::Format(self.eof))?;
        self.at = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PdbError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, PdbError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, PdbError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, PdbError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, PdbError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A heap or table index, 2 or 4 bytes wide (ECMA-335 §II.24.2.6).
    fn index(&mut self, wide: bool) -> Result<u32, PdbError> {
        if wide {
            self.u32()
        } else {
            self.u16().map(u32::from)
        }
    }

    /// An unsigned compressed integer and its width in bits (ECMA-335 §II.23.2):
    /// `0xxxxxxx` is 7 bits in 1 byte, `10xxxxxx` 14 bits in 2, `110xxxxx` 29 bits
    /// in 4, big-endian.
    fn compressed_bits(&mut self) -> Result<(u32, u32), PdbError> {
        let b0 = u32::from(self.u8()?);
        Ok(if b0 & 0x80 == 0 {
            (b0, 7)
        } else if b0 & 0xC0 == 0x80 {
            (((b0 & 0x3F) << 8) | u32::from(self.u8()?), 14)
        } else if b0 & 0xE0 == 0xC0 {
            let rest = self.array::<3>()?;
            let v = rest.iter().fold(b0 & 0x1F, |v, &b| (v << 8) | u32::from(b));
            (v, 29)
        } else {
            return Err(PdbError::Format("bad compressed integer"));
        })
    }

    /// An unsigned compressed integer (ECMA-335 §II.23.2).
    fn compressed(&mut self) -> Result<u32, PdbError> {
        Ok(self.compressed_bits()?.0)
    }

    /// A signed compressed integer (ECMA-335 §II.23.2): the two's-complement value
    /// in 7, 14 or 29 bits rotated left by one, so that the sign is the lowest bit
    /// of the unsigned encoding (3 is `0x06`, -3 is `0x7B`).
    fn signed(&mut self) -> Result<i32, PdbError> {
        let (u, bits) = self.compressed_bits()?;
        let magnitude = (u >> 1) as i32;
        Ok(if u & 1 == 0 {
            magnitude
        } else {
            magnitude - (1 << (bits - 1))
        })
    }
}

/// The `#Blob` heap (ECMA-335 §II.24.2.4): each blob is its compressed length
/// then its bytes; index 0 is the empty blob.
struct Blobs<'a>(&'a [u8]);

impl<'a> Blobs<'a> {
    fn get(&self, index: u32) -> Result<&'a [u8], PdbError> {
        if index == 0 {
            return Ok(&[]);
        }
        let mut r = Reader::at(self.0, index as usize, "blob beyond the #Blob heap");
        let len = r.compressed()? as usize;
        r.bytes(len)
    }
}

/// The streams of an ECMA-335 metadata root this reader needs.
struct Streams<'a> {
    pdb: Option<&'a [u8]>,
    tables: Option<&'a [u8]>,
    blob: Option<&'a [u8]>,
}

/// Reads the metadata root at the start of `d` (ECMA-335 §II.24.2.1): signature,
/// major and minor version (u16 each), reserved u32, version string length u32
/// (a multiple of 4) and string, flags u16, stream count u16, then the stream
/// headers (§II.24.2.2: offset from the root u32, size u32, NUL-terminated name
/// padded to a multiple of 4 bytes).
fn streams(d: &[u8]) -> Result<Streams<'_>, PdbError> {
    let mut r = Reader::new(d, "truncated metadata root");
    if r.u32()? != METADATA_SIGNATURE {
        return Err(PdbError::Format("no BSJB metadata signature"));
    }
    r.bytes(8)?; // versions, reserved
    let version_len = r.u32()? as usize;
    r.bytes(version_len)?;
    r.u16()?; // flags
    let n = r.u16()?;
    let mut s = Streams {
        pdb: None,
        tables: None,
        blob: None,
    };
    for _ in 0..n {
        let offset = r.u32()? as usize;
        let size = r.u32()? as usize;
        let rest = d.get(r.at..).unwrap_or_default();
        let name_len = rest
            .iter()
            .take(32)
            .position(|&b| b == 0)
            .ok_or(PdbError::Format("bad stream name"))?;
        let name = &rest[..name_len];
        r.bytes((name_len + 4) & !3)?;
        let data = offset
            .checked_add(size)
            .and_then(|end| d.get(offset..end))
            .ok_or(PdbError::Format("stream beyond the file"))?;
        match name {
            b"#Pdb" => s.pdb = Some(data),
            b"#~" => s.tables = Some(data),
            b"#Blob" => s.blob = Some(data),
            _ => {}
        }
    }
    Ok(s)
}

impl PortablePdb {
    /// Reads the standalone portable PDB `data` (the contents of a `.pdb` file),
    /// decoding every method's sequence points.
    pub fn parse(data: &[u8]) -> Result<Self, PdbError> {
        if data.starts_with(MSF_MAGIC) {
            return Err(PdbError::WindowsPdb);
        }
        let s = streams(data)?;
        let pdb = s
            .pdb
            .ok_or(PdbError::Format("no #Pdb stream (not a standalone PDB)"))?;
        let tables = s.tables.ok_or(PdbError::Format("no #~ stream"))?;
        let blobs = Blobs(s.blob.unwrap_or_default());

        // Portable PDB spec, "#Pdb stream": PDB id [20], EntryPoint u32,
        // ReferencedTypeSystemTables u64, then a u32 row count per bit set. The
        // row counts size references to the assembly's tables, which neither
        // table read here has.
        let mut r = Reader::new(pdb, "truncated #Pdb stream");
        let id = r.array::<20>()?;
        r.u32()?; // entry point
        let referenced = r.u64()?;
        r.bytes(4 * referenced.count_ones() as usize)?;

        // ECMA-335 §II.24.2.6: reserved u32, major u8, minor u8, HeapSizes u8,
        // reserved u8, Valid u64, Sorted u64, a u32 row count per Valid bit, then
        // the tables in table-number order. HeapSizes: 0x01 wide #Strings, 0x02 wide
        // #GUID, 0x04 wide #Blob indices.
        let mut r = Reader::new(tables, "truncated #~ stream");
        r.bytes(6)?;
        let heap_sizes = r.u8()?;
        r.u8()?;
        let valid = r.u64()?;
        r.u64()?; // sorted
        // Portable PDB spec, "#~ stream": only debug tables (0x30 and up) in a
        // standalone PDB, so Document then MethodDebugInformation come first.
        if valid & ((1 << TABLE_DOCUMENT) - 1) != 0 {
            return Err(PdbError::Format("type-system tables in a standalone PDB"));
        }
        let mut rows = |table: u32| -> Result<u32, PdbError> {
            if valid & (1 << table) != 0 {
                r.u32()
            } else {
                Ok(0)
            }
        };
        let n_documents = rows(TABLE_DOCUMENT)?;
        let n_methods = rows(TABLE_METHOD_DEBUG_INFORMATION)?;
        let tables_at = 24 + 4 * valid.count_ones() as usize;
        let (wide_guid, wide_blob) = (heap_sizes & 0x02 != 0, heap_sizes & 0x04 != 0);
        let width = |wide: bool| if wide { 4 } else { 2 };
        // ECMA-335 §II.24.2.6: a table index is 4 bytes when the table has 2^16
        // rows or more.
        let wide_document = n_documents >= 0x1_0000;

        // Document (0x30): Name (blob), HashAlgorithm (guid), Hash (blob),
        // Language (guid).
        let document_row = 2 * width(wide_blob) + 2 * width(wide_guid);
        // MethodDebugInformation (0x31): Document (Document row id),
        // SequencePoints (blob).
        let method_row = width(wide_document) + width(wide_blob);
        let end = |rows: u32, row: usize, at: usize| {
            (rows as usize)
                .checked_mul(row)
                .and_then(|n| n.checked_add(at))
                .filter(|&end| end <= tables.len())
                .ok_or(PdbError::Format("tables beyond the #~ stream"))
        };
        let document_end = end(n_documents, document_row, tables_at)?;
        end(n_methods, method_row, document_end)?;
        let mut documents = Vec::with_capacity(n_documents as usize);
        let mut r = Reader::at(tables, tables_at, "truncated Document table");
        for _ in 0..n_documents {
            let name = r.index(wide_blob)?;
            r.bytes(document_row - width(wide_blob))?;
            documents.push(document_name(&blobs, name)?);
        }

        let mut pdb = PortablePdb {
            id,
            documents,
            points: Vec::new(),
            methods: Vec::with_capacity(n_methods as usize + 1),
        };
        pdb.methods.push(0);
        let mut r = Reader::at(tables, document_end, "truncated MethodDebugInformation");
        for _ in 0..n_methods {
            let document = r.index(wide_document)?;
            let blob = r.index(wide_blob)?;
            if blob != 0 {
                pdb.decode_points(blobs.get(blob)?, document)?;
            }
            let end = u32::try_from(pdb.points.len())
                .map_err(|_| PdbError::Format("too many sequence points"))?;
            pdb.methods.push(end);
        }
        Ok(pdb)
    }

    /// Appends the non-hidden points of one sequence-points blob (Portable PDB
    /// spec, "Sequence Points Blob") whose MethodDebugInformation row names
    /// `document` (0: the blob names its first document).
    fn decode_points(&mut self, blob: &[u8], document: u32) -> Result<(), PdbError> {
        let mut r = Reader::new(blob, "truncated sequence points");
        // header: LocalSignature (StandAloneSig row id), then InitialDocument only
        // when the row's Document is nil (the method spans several documents).
        r.compressed()?;
        let mut document = match document {
            0 => r.compressed()?,
            d => d,
        };
        let mut il: Option<u32> = None;
        let mut previous: Option<(i64, i64)> = None;
        while !r.is_empty() {
            // δILOffset: absolute in the first record; after it a zero marks a
            // document-record, a Document row id follows.
            let delta_il = r.compressed()?;
            let offset = match il {
                None => delta_il,
                Some(_) if delta_il == 0 => {
                    document = r.compressed()?;
                    continue;
                }
                Some(p) => p
                    .checked_add(delta_il)
                    .ok_or(PdbError::Format("IL offset overflows"))?,
            };
            il = Some(offset);
            // ΔLines (EndLine - StartLine), then ΔColumns: unsigned when ΔLines is
            // 0, else signed. Both 0: a hidden sequence point, nothing more.
            let delta_lines = r.compressed()?;
            let delta_columns = if delta_lines == 0 {
                i64::from(r.compressed()?)
            } else {
                i64::from(r.signed()?)
            };
            if delta_lines == 0 && delta_columns == 0 {
                continue;
            }
            // δStartLine, δStartColumn: absolute (unsigned) in the first non-hidden
            // point, else signed differences from the previous non-hidden one.
            let (line, column) = match previous {
                None => (i64::from(r.compressed()?), i64::from(r.compressed()?)),
                Some((l, c)) => (l + i64::from(r.signed()?), c + i64::from(r.signed()?)),
            };
            if !(0..MAX_LINE).contains(&line) || line == HIDDEN_LINE {
                return Err(PdbError::Format("sequence point line out of range"));
            }
            if !(0..MAX_COLUMN).contains(&column) {
                return Err(PdbError::Format("sequence point column out of range"));
            }
            previous = Some((line, column));
            if document == 0 || document as usize > self.documents.len() {
                return Err(PdbError::Format("sequence point in no document"));
            }
            self.points.push(SequencePoint {
                il_offset: offset,
                document: document - 1,
                line: line as u32,
                column: column as u32,
            });
        }
        Ok(())
    }

    /// The PDB id (20 bytes) from the #Pdb stream.
    pub fn id(&self) -> [u8; 20] {
        self.id
    }

    /// Document names (full paths as the compiler wrote them), by index.
    pub fn documents(&self) -> &[Arc<str>] {
        &self.documents
    }

    /// The non-hidden sequence points of MethodDef token `token` (0x06RRRRRR), by
    /// IL offset ascending; empty if none.
    pub fn sequence_points(&self, token: u32) -> &[SequencePoint] {
        if token >> 24 != TABLE_METHOD_DEF {
            return &[];
        }
        let rid = (token & 0x00FF_FFFF) as usize;
        let (Some(&start), Some(&end)) = (
            rid.checked_sub(1).and_then(|i| self.methods.get(i)),
            self.methods.get(rid),
        ) else {
            return &[];
        };
        self.points
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Source file and line of IL offset `il` in method `token`: the last
    /// non-hidden sequence point at or before `il` (None if none).
    pub fn line(&self, token: u32, il: u32) -> Option<(&Arc<str>, u32)> {
        let points = self.sequence_points(token);
        let i = points.partition_point(|p| p.il_offset <= il);
        let p = points.get(i.checked_sub(1)?)?;
        Some((self.documents.get(p.document as usize)?, p.line))
    }
}

/// A document name (Portable PDB spec, "Document Name Blob"): a separator (a UTF-8
/// character, or byte 0 for none), then compressed #Blob indices of the UTF-8
/// parts (0: an empty part), joined by the separator.
fn document_name(blobs: &Blobs<'_>, index: u32) -> Result<Arc<str>, PdbError> {
    let blob = blobs.get(index)?;
    let mut r = Reader::new(blob, "truncated document name");
    // "Name shall not be nil": read as an empty name all the same.
    let Some(&lead) = blob.first() else {
        return Ok("".into());
    };
    // The separator's length in bytes: none, or a UTF-8 character's from its
    // first byte.
    let len = match lead {
        0 => 0,
        0x01..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return Err(PdbError::Format("bad document name separator")),
    };
    let separator = r.bytes(len.max(1))?.get(..len).unwrap_or_default();
    let mut name = Vec::new();
    let mut first = true;
    while !r.is_empty() {
        if !first {
            name.extend_from_slice(separator);
        }
        first = false;
        name.extend_from_slice(blobs.get(r.compressed()?)?);
    }
    Ok(String::from_utf8_lossy(&name).into())
}

/// The CodeView debug directory entry of a PE file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodeView {
    guid: [u8; 16],
    age: u32,
    /// The entry's TimeDateStamp: the last 4 bytes of a portable PDB's id.
    stamp: u32,
    path: String,
}

/// PE/COFF "Debug Type": IMAGE_DEBUG_TYPE_CODEVIEW.
const DEBUG_TYPE_CODEVIEW: u32 = 2;
/// PE-COFF.md "CodeView Debug Directory Entry": MinorVersion `PM` marks a
/// portable PDB.
const CODEVIEW_PORTABLE_MINOR: u16 = 0x504D;

/// The CodeView entry of PE file `d` (Microsoft PE/COFF specification: the
/// optional header's data directory 6 is the Debug Directory, an array of 28-byte
/// `IMAGE_DEBUG_DIRECTORY` entries). When there are several, the one marked
/// portable wins. Other entry types are skipped: Reproducible (16), PdbChecksum
/// (19) and EmbeddedPortablePdb (17), whose Deflate-compressed PDB is not read.
fn codeview_entry(d: &[u8]) -> Result<CodeView, PdbError> {
    read_codeview(d).map_err(|e| match e {
        PdbError::Format(why) => PdbError::Pe(why),
        e => e,
    })
}

fn read_codeview(d: &[u8]) -> Result<CodeView, PdbError> {
    let eof = "truncated PE file";
    if d.get(..2) != Some(b"MZ") {
        return Err(PdbError::Pe("no MZ header"));
    }
    let pe = Reader::at(d, 0x3C, eof).u32()? as usize;
    let mut r = Reader::at(d, pe, eof);
    if r.bytes(4)? != b"PE\0\0" {
        return Err(PdbError::Pe("no PE signature"));
    }
    // COFF file header: Machine u16, NumberOfSections u16, TimeDateStamp u32,
    // PointerToSymbolTable u32, NumberOfSymbols u32, SizeOfOptionalHeader u16,
    // Characteristics u16.
    r.u16()?;
    let n_sections = r.u16()?;
    r.bytes(12)?;
    let optional_size = usize::from(r.u16()?);
    r.u16()?;
    let optional = r.at;
    // Optional header: NumberOfRvaAndSizes then the data directories (RVA u32,
    // size u32 each) at 92 and 96 (PE32) or 108 and 112 (PE32+).
    let (count_at, dirs_at) = match r.u16()? {
        0x10B => (92, 96),
        0x20B => (108, 112),
        _ => return Err(PdbError::Pe("unknown optional header magic")),
    };
    if Reader::at(d, optional + count_at, eof).u32()? <= 6 {
        return Err(PdbError::NoCodeView);
    }
    let mut r = Reader::at(d, optional + dirs_at + 6 * 8, eof);
    let (debug_rva, debug_size) = (r.u32()?, r.u32()?);
    // Section table: 40 bytes a section; VirtualSize at 8, VirtualAddress at 12,
    // SizeOfRawData at 16, PointerToRawData at 20.
    let mut sections = Vec::with_capacity(usize::from(n_sections));
    for i in 0..usize::from(n_sections) {
        let mut r = Reader::at(d, optional + optional_size + 40 * i + 8, eof);
        sections.push((r.u32()?, r.u32()?, r.u32()?, r.u32()?));
    }
    let file_offset = |rva: u32| {
        sections
            .iter()
            .find(|&&(_, va, raw_size, _)| rva >= va && rva - va < raw_size)
            .map(|&(_, va, _, raw)| (rva - va) as usize + raw as usize)
    };
    if debug_rva == 0 {
        return Err(PdbError::NoCodeView);
    }
    let debug =
        file_offset(debug_rva).ok_or(PdbError::Pe("debug directory outside every section"))?;
    let mut found: Option<CodeView> = None;
    for i in 0..(debug_size / 28).min(64) as usize {
        // Characteristics u32, TimeDateStamp u32, MajorVersion u16, MinorVersion
        // u16, Type u32, SizeOfData u32, AddressOfRawData u32, PointerToRawData u32.
        let mut r = Reader::at(d, debug + 28 * i, eof);
        r.u32()?;
        let stamp = r.u32()?;
        r.u16()?;
        let minor = r.u16()?;
        let (kind, size, rva, pointer) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        if kind != DEBUG_TYPE_CODEVIEW || (found.is_some() && minor != CODEVIEW_PORTABLE_MINOR) {
            continue;
        }
        // The data's file offset, or else its RVA; an entry whose data is not in
        // the file is skipped.
        let at = match pointer {
            0 => file_offset(rva),
            p => Some(p as usize),
        };
        let Some(data) = at.and_then(|at| d.get(at..at.checked_add(size as usize)?)) else {
            continue;
        };
        // PE-COFF.md: "RSDS", Guid [16], Age u32, NUL-terminated UTF-8 path.
        let mut r = Reader::new(data, "truncated CodeView data");
        let (Ok(b"RSDS"), Ok(guid), Ok(age)) = (r.bytes(4), r.array::<16>(), r.u32()) else {
            continue;
        };
        let rest = &data[r.at..];
        let path = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        found = Some(CodeView {
            guid,
            age,
            stamp,
            path: String::from_utf8_lossy(path).into_owned(),
        });
        if minor == CODEVIEW_PORTABLE_MINOR {
            break;
        }
    }
    found.ok_or(PdbError::NoCodeView)
}

/// The CodeView record of PE file `data`: (GUID, age, pdb path as written). None
/// if none.
pub fn codeview(data: &[u8]) -> Option<([u8; 16], u32, String)> {
    codeview_entry(data)
        .ok()
        .map(|cv| (cv.guid, cv.age, cv.path))
}

/// Reads PDB file contents `data` if they are the portable PDB `cv` names.
fn matching(data: &[u8], cv: &CodeView) -> Result<PortablePdb, PdbError> {
    let pdb = PortablePdb::parse(data)?;
    // PE-COFF.md, "CodeView Debug Directory Entry": the PDB id is the CodeView
    // GUID followed by the entry's TimeDateStamp.
    if pdb.id[..16] != cv.guid || pdb.id[16..] != cv.stamp.to_le_bytes() {
        return Err(PdbError::Mismatch);
    }
    Ok(pdb)
}

/// The portable PDB of assembly `dll` (a path): `<dir>/<stem>.pdb` next to it, or
/// the CodeView path if that file exists; returned only if its id matches the
/// assembly's CodeView GUID (a stale PDB would give wrong lines). Err with a
/// one-line reason otherwise (no CodeView, no file, id mismatch, not portable
/// (Windows PDB 'Microsoft C/C++ MSF 7.00' magic), unreadable).
///
/// Also looked for: the CodeView path's file name in the assembly's folder (the
/// PDB copied along with a `.dll` whose PDB was named differently).
///
/// Files are read with `read` (the process's view of its files: every path
/// here, the CodeView one included, comes from the process).
pub fn for_assembly(
    dll: &Path,
    read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<PortablePdb, PdbError> {
    let in_file = |path: &Path, e: PdbError| PdbError::File {
        path: path.to_path_buf(),
        error: Box::new(e),
    };
    let pe = read(dll).map_err(|e| in_file(dll, e.into()))?;
    let cv = codeview_entry(&pe).map_err(|e| in_file(dll, e))?;
    let dir = dll.parent().unwrap_or(Path::new(""));
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut look_for = |path: PathBuf| {
        if !candidates.contains(&path) {
            candidates.push(path);
        }
    };
    if let Some(stem) = dll.file_stem() {
        let mut name = stem.to_os_string();
        name.push(".pdb");
        look_for(dir.join(name));
    }
    let written = Path::new(&cv.path);
    if written.is_absolute() {
        look_for(written.to_path_buf());
    }
    // The path may be a Windows one.
    if let Some(name) = cv.path.rsplit(['/', '\\']).next().filter(|n| !n.is_empty()) {
        look_for(dir.join(name));
    }
    let mut failure = None;
    for path in &candidates {
        let result = match read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e.into()),
            Ok(data) => matching(&data, &cv),
        };
        match result {
            Ok(pdb) => return Ok(pdb),
            Err(e) => {
                failure.get_or_insert(in_file(path, e));
            }
        }
    }
    Err(failure.unwrap_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        PdbError::NotFound(tried.join(", "))
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// ECMA-335 §II.23.2 unsigned compressed integer.
    fn cu(v: u32) -> Vec<u8> {
        match v {
            0..=0x7F => vec![v as u8],
            0x80..=0x3FFF => (0x8000 | v as u16).to_be_bytes().to_vec(),
            _ => (0xC000_0000 | v).to_be_bytes().to_vec(),
        }
    }

    /// ECMA-335 §II.23.2 signed compressed integer: rotate the 7-, 14- or 29-bit
    /// two's complement left by one bit.
    fn ci(v: i32) -> Vec<u8> {
        let bits = match v {
            -0x40..0x40 => 7,
            -0x2000..0x2000 => 14,
            _ => 29,
        };
        let u = (((v as u32) << 1) | u32::from(v < 0)) & ((1 << bits) - 1);
        match bits {
            7 => vec![u as u8],
            14 => (0x8000 | u as u16).to_be_bytes().to_vec(),
            _ => (0xC000_0000 | u).to_be_bytes().to_vec(),
        }
    }

    /// A `#Blob` heap under construction.
    struct BlobHeap(Vec<u8>);

    impl BlobHeap {
        fn add(&mut self, b: &[u8]) -> u32 {
            let at = self.0.len() as u32;
            self.0.extend(cu(b.len() as u32));
            self.0.extend_from_slice(b);
            at
        }

        /// A document name blob: separator, then the parts' blob indices.
        fn document(&mut self, separator: &str, parts: &[&str]) -> u32 {
            let mut name = if separator.is_empty() {
                vec![0]
            } else {
                separator.as_bytes().to_vec()
            };
            for part in parts {
                let index = if part.is_empty() {
                    0
                } else {
                    self.add(part.as_bytes())
                };
                name.extend(cu(index));
            }
            self.add(&name)
        }
    }

    /// One sequence-points blob record.
    enum Rec {
        /// δIL, ΔLines, ΔColumns, δStartLine, δStartColumn (signed unless first).
        Point(u32, u32, i32, i32, i32),
        Hidden(u32),
        Document(u32),
    }

    fn points_blob(initial_document: Option<u32>, records: &[Rec]) -> Vec<u8> {
        let mut b = cu(7); // LocalSignature
        if let Some(d) = initial_document {
            b.extend(cu(d));
        }
        let mut first = true;
        for rec in records {
            match *rec {
                Rec::Point(il, dl, dc, line, col) => {
                    b.extend(cu(il));
                    b.extend(cu(dl));
                    b.extend(if dl == 0 { cu(dc as u32) } else { ci(dc) });
                    if first {
                        b.extend(cu(line as u32));
                        b.extend(cu(col as u32));
                        first = false;
                    } else {
                        b.extend(ci(line));
                        b.extend(ci(col));
                    }
                }
                Rec::Hidden(il) => b.extend([cu(il), cu(0), cu(0)].concat()),
                Rec::Document(d) => b.extend([cu(0), cu(d)].concat()),
            }
        }
        b
    }

    const ID: [u8; 20] = *b"0123456789abcdefSTMP";

    /// A standalone portable PDB: three documents, four methods; `wide` makes the
    /// #GUID and #Blob indices 4 bytes.
    pub(crate) fn sample(wide: bool) -> Vec<u8> {
        let mut blobs = BlobHeap(vec![0]);
        let doc1 = blobs.document("/", &["", "src", "app", "Program.cs"]);
        let doc2 = blobs.document("\\", &["C:", "src", "Other.cs"]);
        let doc3 = blobs.document("", &["Gen", "erated.cs"]);
        let hash = blobs.add(&[0xAB; 20]);
        // Method 1 (document 1): line 10, hidden, 12 (end line 13), back to 8.
        let m1 = blobs.add(&points_blob(
            None,
            &[
                Rec::Point(0, 0, 10, 10, 5),
                Rec::Hidden(3),
                Rec::Point(2, 1, -3, 2, 4),
                Rec::Point(4, 0, 6, -4, -4),
            ],
        ));
        // Method 3 (several documents): starts in document 2, switches to 1.
        let m3 = blobs.add(&points_blob(
            Some(2),
            &[
                Rec::Point(1, 0, 1, 100, 1),
                Rec::Document(1),
                Rec::Point(5, 0, 3, -80, 2),
                Rec::Hidden(2),
                Rec::Point(0x90, 2, 0, 1, 0),
            ],
        ));
        // Method 4 (document 3): a hidden point first, large deltas.
        let m4 = blobs.add(&points_blob(
            None,
            &[
                Rec::Hidden(0),
                Rec::Point(0x4000, 0, 1, 300_000, 70),
                Rec::Point(1, 0, 1, -299_990, 8000),
                Rec::Point(1, 0, 1, 8192, -8000),
            ],
        ));
        blobs.0.resize(blobs.0.len().next_multiple_of(4), 0);
        let idx = |v: u32| {
            if wide {
                v.to_le_bytes().to_vec()
            } else {
                (v as u16).to_le_bytes().to_vec()
            }
        };

        let mut tables = vec![0, 0, 0, 0, 2, 0, if wide { 0x06 } else { 0 }, 1];
        let valid: u64 = (1 << 0x30) | (1 << 0x31) | (1 << 0x32);
        tables.extend(valid.to_le_bytes());
        tables.extend(0u64.to_le_bytes());
        tables.extend([3u32, 4, 1].iter().flat_map(|r| r.to_le_bytes()));
        for doc in [doc1, doc2, doc3] {
            tables.extend([idx(doc), idx(1), idx(hash), idx(2)].concat());
        }
        for (document, blob) in [(1u16, m1), (0, 0), (0, m3), (3, m4)] {
            tables.extend(document.to_le_bytes());
            tables.extend(idx(blob));
        }
        tables.extend([0; 16]); // the LocalScope row, not read
        tables.resize(tables.len().next_multiple_of(4), 0);

        let mut pdb_stream = ID.to_vec();
        pdb_stream.extend(0x0600_0001u32.to_le_bytes());
        pdb_stream.extend((1u64 << TABLE_METHOD_DEF).to_le_bytes());
        pdb_stream.extend(4u32.to_le_bytes());
        let guids = [[0x11; 16], [0x22; 16]].concat();
        let streams: [(&str, Vec<u8>); 5] = [
            ("#Pdb", pdb_stream),
            ("#~", tables),
            ("#Strings", vec![0; 4]),
            ("#GUID", guids),
            ("#Blob", blobs.0),
        ];

        let mut root = METADATA_SIGNATURE.to_le_bytes().to_vec();
        root.extend([1, 0, 1, 0, 0, 0, 0, 0]);
        root.extend(12u32.to_le_bytes());
        root.extend(b"PDB v1.0\0\0\0\0");
        root.extend(0u16.to_le_bytes());
        root.extend((streams.len() as u16).to_le_bytes());
        let headers: usize = streams
            .iter()
            .map(|(name, _)| 8 + (name.len() + 4) / 4 * 4)
            .sum();
        let mut offset = root.len() + headers;
        for (name, data) in &streams {
            root.extend((offset as u32).to_le_bytes());
            root.extend((data.len() as u32).to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize((name.len() + 4) / 4 * 4, 0);
            root.extend(n);
            offset += data.len();
        }
        for (_, data) in streams {
            root.extend(data);
        }
        root
    }

    fn sp(il_offset: u32, document: u32, line: u32, column: u32) -> SequencePoint {
        SequencePoint {
            il_offset,
            document,
            line,
            column,
        }
    }

    fn check_sample(pdb: &PortablePdb) {
        assert_eq!(pdb.id(), ID);
        let docs: Vec<&str> = pdb.documents().iter().map(|d| &**d).collect();
        assert_eq!(
            docs,
            ["/src/app/Program.cs", "C:\\src\\Other.cs", "Generated.cs"]
        );

        assert_eq!(
            pdb.sequence_points(0x0600_0001),
            [sp(0, 0, 10, 5), sp(5, 0, 12, 9), sp(9, 0, 8, 5)]
        );
        assert_eq!(pdb.sequence_points(0x0600_0002), []);
        assert_eq!(
            pdb.sequence_points(0x0600_0003),
            [sp(1, 1, 100, 1), sp(6, 0, 20, 3), sp(0x98, 0, 21, 3)]
        );
        assert_eq!(
            pdb.sequence_points(0x0600_0004),
            [
                sp(0x4000, 2, 300_000, 70),
                sp(0x4001, 2, 10, 8070),
                sp(0x4002, 2, 8202, 70)
            ]
        );

        let line = |token, il| pdb.line(token, il).map(|(d, l)| (&**d, l));
        assert_eq!(line(0x0600_0001, 0), Some(("/src/app/Program.cs", 10)));
        // Inside the hidden point's range: the last visible point before it.
        assert_eq!(line(0x0600_0001, 4), Some(("/src/app/Program.cs", 10)));
        assert_eq!(line(0x0600_0001, 5), Some(("/src/app/Program.cs", 12)));
        assert_eq!(line(0x0600_0001, 1000), Some(("/src/app/Program.cs", 8)));
        assert_eq!(line(0x0600_0003, 0), None);
        assert_eq!(line(0x0600_0003, 5), Some(("C:\\src\\Other.cs", 100)));
        assert_eq!(line(0x0600_0003, 0x20), Some(("/src/app/Program.cs", 20)));
        assert_eq!(line(0x0600_0002, 0), None);
        assert_eq!(line(0x0600_0004, 0x3FFF), None);
        assert_eq!(line(0x0600_0004, 0x4000), Some(("Generated.cs", 300_000)));
        // Not a MethodDef, or beyond the table.
        assert_eq!(line(0x0200_0001, 0), None);
        assert_eq!(line(0x0600_0000, 0), None);
        assert_eq!(line(0x0600_0005, 0), None);
    }

    #[test]
    fn reads_documents_and_sequence_points() {
        check_sample(&PortablePdb::parse(&sample(false)).unwrap());
        check_sample(&PortablePdb::parse(&sample(true)).unwrap());
    }

    #[test]
    fn compressed_integers() {
        // ECMA-335 §II.23.2's examples.
        for (bytes, value) in [
            (&[0x03][..], 0x03),
            (&[0x7F], 0x7F),
            (&[0x80, 0x80], 0x80),
            (&[0xAE, 0x57], 0x2E57),
            (&[0xBF, 0xFF], 0x3FFF),
            (&[0xC0, 0x00, 0x40, 0x00], 0x4000),
            (&[0xDF, 0xFF, 0xFF, 0xFF], 0x1FFF_FFFF),
        ] {
            assert_eq!(Reader::new(bytes, "eof").compressed().unwrap(), value);
            assert_eq!(cu(value), bytes);
        }
        for (bytes, value) in [
            (&[0x06][..], 3),
            (&[0x7B], -3),
            (&[0x80, 0x80], 64),
            (&[0x01], -64),
            (&[0xC0, 0x00, 0x40, 0x00], 8192),
            (&[0x80, 0x01], -8192),
            (&[0xDF, 0xFF, 0xFF, 0xFE], 268_435_455),
            (&[0xC0, 0x00, 0x00, 0x01], -268_435_456),
        ] {
            assert_eq!(Reader::new(bytes, "eof").signed().unwrap(), value);
            assert_eq!(ci(value), bytes);
        }
        for bad in [&[][..], &[0x80], &[0xC0, 0, 0], &[0xE0, 0, 0, 0]] {
            assert!(Reader::new(bad, "eof").compressed().is_err());
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for wide in [false, true] {
            let data = sample(wide);
            for len in 0..data.len() {
                let _ = PortablePdb::parse(&data[..len]);
            }
            for i in 0..data.len() {
                for flip in [0x01, 0x80, 0xFF] {
                    let mut d = data.clone();
                    d[i] ^= flip;
                    if let Ok(pdb) = PortablePdb::parse(&d) {
                        for token in 0x0600_0000..0x0600_0006 {
                            let _ = pdb.line(token, 0x10);
                        }
                    }
                }
            }
        }
        let pe = sample_pe();
        for len in 0..pe.len() {
            let _ = codeview(&pe[..len]);
        }
        for i in 0..pe.len() {
            let mut d = pe.clone();
            d[i] ^= 0xFF;
            let _ = codeview(&d);
        }
        assert!(matches!(PortablePdb::parse(b""), Err(PdbError::Format(_))));
        assert!(matches!(
            PortablePdb::parse(b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0"),
            Err(PdbError::WindowsPdb)
        ));
    }

    /// A minimal PE32 file: one section holding a debug directory of a
    /// Reproducible entry, a Windows CodeView entry and a portable one.
    pub(crate) fn sample_pe() -> Vec<u8> {
        let mut d = vec![0u8; 0x400];
        d[..2].copy_from_slice(b"MZ");
        d[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        let put = |d: &mut Vec<u8>, at: usize, b: &[u8]| d[at..at + b.len()].copy_from_slice(b);
        put(&mut d, 0x80, b"PE\0\0");
        put(&mut d, 0x84, &0x14Cu16.to_le_bytes()); // i386
        put(&mut d, 0x86, &1u16.to_le_bytes()); // sections
        put(&mut d, 0x94, &0xE0u16.to_le_bytes()); // optional header size
        let opt = 0x98;
        put(&mut d, opt, &0x10Bu16.to_le_bytes());
        put(&mut d, opt + 92, &16u32.to_le_bytes());
        put(&mut d, opt + 96 + 6 * 8, &0x2010u32.to_le_bytes());
        put(&mut d, opt + 96 + 6 * 8 + 4, &(3 * 28u32).to_le_bytes());
        let section = opt + 0xE0;
        put(&mut d, section, b".text\0\0\0");
        for (i, v) in [0x200u32, 0x2000, 0x200, 0x200].iter().enumerate() {
            put(&mut d, section + 8 + 4 * i, &v.to_le_bytes());
        }
        let entry = |d: &mut Vec<u8>, at: usize, stamp: u32, minor: u16, kind: u32, data: u32| {
            put(d, at + 4, &stamp.to_le_bytes());
            put(d, at + 10, &minor.to_le_bytes());
            put(d, at + 12, &kind.to_le_bytes());
            if data != 0 {
                put(d, at + 16, &0x40u32.to_le_bytes());
                put(d, at + 20, &(data + 0x1E00).to_le_bytes());
                put(d, at + 24, &data.to_le_bytes());
            }
        };
        entry(&mut d, 0x210, 0, 0, 16, 0);
        entry(&mut d, 0x210 + 28, 0x1111, 0, 2, 0x280);
        entry(&mut d, 0x210 + 56, 0x504D_5453, 0x504D, 2, 0x300);
        put(&mut d, 0x280, b"RSDS");
        put(&mut d, 0x284, &[0x77; 16]);
        put(&mut d, 0x294, &3u32.to_le_bytes());
        put(&mut d, 0x298, b"C:\\build\\windows.pdb\0");
        put(&mut d, 0x300, b"RSDS");
        put(&mut d, 0x304, &ID[..16]);
        put(&mut d, 0x314, &1u32.to_le_bytes());
        put(&mut d, 0x318, b"/src/app/obj/Release/app.pdb\0");
        d
    }

    #[test]
    fn reads_codeview_and_matches_pdb() {
        let pe = sample_pe();
        let (guid, age, path) = codeview(&pe).unwrap();
        assert_eq!(guid[..], ID[..16]);
        assert_eq!(age, 1);
        assert_eq!(path, "/src/app/obj/Release/app.pdb");
        let cv = codeview_entry(&pe).unwrap();
        assert_eq!(cv.stamp.to_le_bytes(), ID[16..]);

        // The id is GUID + stamp: a PDB with another id is stale.
        let pdb = sample(false);
        assert!(matching(&pdb, &cv).is_ok());
        let mut stale = cv.clone();
        stale.stamp += 1;
        assert!(matches!(matching(&pdb, &stale), Err(PdbError::Mismatch)));
        stale = cv.clone();
        stale.guid[0] ^= 1;
        assert!(matches!(matching(&pdb, &stale), Err(PdbError::Mismatch)));

        // Without the debug directory, or no PE at all.
        let mut none = pe.clone();
        none[0x98 + 96 + 48..0x98 + 96 + 56].fill(0);
        assert!(codeview(&none).is_none());
        assert!(matches!(codeview_entry(&none), Err(PdbError::NoCodeView)));
        assert!(codeview(&pdb).is_none());
    }
}
