//! The contract descriptor a .NET runtime exports from .NET 9 on
//! (`DotNetRuntimeContractDescriptor` in libcoreclr): the runtime's own
//! statement of where its types keep their fields, of its globals, and of
//! which version of each reading algorithm ("contract") applies, written for
//! out-of-process readers (dotnet/runtime
//! `docs/design/datacontracts/contract-descriptor.md` and `data_descriptor.md`).
//!
//! crossprof reads a runtime's structures by a layout table per version
//! ([`super::memory::NET10`]); where the runtime publishes a descriptor, every
//! offset and constant of the table is checked against it before anything is
//! read, so that a runtime that moved a field (a servicing build, a custom
//! build) is never read by a stale table: its frames are then `[unknown]`,
//! with a note naming the field, never named after a neighbour.
//!
//! The descriptor (x86-64, 40 bytes): a magic `DNCCDAC\0`, u32 flags (bit 1:
//! a 32-bit target), u32 size of the JSON text, a pointer to it, u32 count
//! and a pointer to an array of pointer-sized values that globals may name
//! by index. Its pointers are relocations, valid from the library's load on.
//! The JSON (the "compact" form): `types` maps each type to its fields'
//! offsets (a number, or `[offset, "type"]`; `"!"` is the type's size),
//! `globals` maps names to values (a number, a string holding a decimal or
//! `0x` number, `[value, "type"]`, or `[[index], "type"]` for an entry of the
//! pointer array), `contracts` maps each algorithm to its version.
//!
//! Everything here is the target's: the JSON is read at most [`MAX_JSON`]
//! bytes, and whatever does not parse or is missing is a mismatch.

use serde_json::Value;

/// The descriptor's magic (`DNCCDAC\0`, little-endian).
const MAGIC: u64 = u64::from_le_bytes(*b"DNCCDAC\0");
/// The largest JSON text read (10.0.0's is 10 KiB).
pub const MAX_JSON: u32 = 1 << 20;

/// The descriptor's JSON text, from the 40 bytes of its struct (`head`) and
/// a reader of the process's memory; `None` if the struct is not one (no
/// magic, a 32-bit target, an empty or oversized text) or cannot be read.
pub fn json_text(head: &[u8; 40], read: impl Fn(u64, &mut [u8]) -> bool) -> Option<Vec<u8>> {
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap_or_default());
    let (flags, size, text) = (u32_at(8), u32_at(12), u64_at(16));
    if u64_at(0) != MAGIC || flags & 2 != 0 || size == 0 || size > MAX_JSON || text == 0 {
        return None;
    }
    let mut json = vec![0u8; size as usize];
    read(text, &mut json).then_some(json)
}

/// What a layout table says of the runtime, to be checked against its
/// descriptor.
#[derive(Debug, Default)]
pub struct Expected {
    /// `(type, field, offset)`; field `"!"`: the type's size.
    pub fields: Vec<(&'static str, &'static str, u64)>,
    /// `(global, value)` for globals holding a number.
    pub globals: Vec<(&'static str, u64)>,
    /// `(contract, version)`.
    pub contracts: Vec<(&'static str, u64)>,
}

/// Checks `expected` against the descriptor's JSON text: `Err` names the
/// first fact that differs or is missing.
pub fn check(json: &[u8], expected: &Expected) -> Result<(), String> {
    let d: Value =
        serde_json::from_slice(json).map_err(|e| format!("its descriptor is not JSON ({e})"))?;
    for &(ty, field, want) in &expected.fields {
        agrees(
            number(value_of(&d["types"][ty][field])),
            want,
            |got| {
                format!("its descriptor puts {ty}.{field} at {got}, where crossprof reads {want}")
            },
            || format!("its descriptor has no {ty}.{field}"),
        )?;
    }
    for &(name, want) in &expected.globals {
        // (An index into the pointer array, `[[i], ...]`, is no number.)
        agrees(
            number(value_of(&d["globals"][name])),
            want,
            |got| format!("its descriptor gives {name} = {got}, where crossprof takes {want}"),
            || format!("its descriptor has no number {name}"),
        )?;
    }
    for &(name, want) in &expected.contracts {
        agrees(
            d["contracts"][name].as_u64(),
            want,
            |got| {
                format!(
                    "its descriptor says contract {name} version {got}, crossprof reads version {want}"
                )
            },
            || format!("its descriptor has no contract {name}"),
        )?;
    }
    Ok(())
}

/// `Ok` if the descriptor's value `got` is `want`; else what `differs`
/// says of the value it has, or what `missing` says.
fn agrees(
    got: Option<u64>,
    want: u64,
    differs: impl FnOnce(u64) -> String,
    missing: impl FnOnce() -> String,
) -> Result<(), String> {
    match got {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(differs(got)),
        None => Err(missing()),
    }
}

/// The value of a field or global written `[value, "type"]` or as the value
/// itself.
fn value_of(v: &Value) -> &Value {
    match v {
        Value::Array(a) => a.first().unwrap_or(&Value::Null),
        v => v,
    }
}

/// A JSON number, or a string holding a decimal or `0x` hexadecimal one.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// The fuzz target: a descriptor's struct and text from untrusted bytes.
pub fn fuzz(b: &[u8]) {
    let mut head = [0u8; 40];
    let n = b.len().min(40);
    head[..n].copy_from_slice(&b[..n]);
    let rest = &b[n..];
    let _ = json_text(&head, |_, buf| {
        let k = buf.len().min(rest.len());
        buf[..k].copy_from_slice(&rest[..k]);
        k == buf.len()
    });
    let expected = Expected {
        fields: vec![("MethodDesc", "Flags", 6), ("MethodDesc", "!", 16)],
        globals: vec![("MethodDescTokenRemainderBitCount", 12)],
        contracts: vec![("ExecutionManager", 2)],
    };
    let _ = check(rest, &expected);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A descriptor in the compact form, as a runtime writes one (made up:
    /// two types, three globals, two contracts).
    pub(crate) const JSON: &str = r#"{"version":0,"baseline":"empty",
        "types":{"MethodDesc":{"!":16,"ChunkIndex":2,"Flags":[6,"uint16"]},
                 "Module":{"PEAssembly":216}},
        "globals":{"MethodDescTokenRemainderBitCount":["0xc","uint8"],
                   "MethodDescAlignment":8,
                   "ExecutionManagerCodeRangeMapAddress":[[20],"pointer"]},
        "contracts":{"ExecutionManager":2,"RuntimeTypeSystem":1}}"#;

    fn expected() -> Expected {
        Expected {
            fields: vec![
                ("MethodDesc", "!", 16),
                ("MethodDesc", "ChunkIndex", 2),
                ("MethodDesc", "Flags", 6),
                ("Module", "PEAssembly", 216),
            ],
            globals: vec![
                ("MethodDescTokenRemainderBitCount", 12),
                ("MethodDescAlignment", 8),
            ],
            contracts: vec![("ExecutionManager", 2), ("RuntimeTypeSystem", 1)],
        }
    }

    #[test]
    fn a_layout_agrees_with_the_descriptor_or_the_difference_is_named() {
        assert_eq!(check(JSON.as_bytes(), &expected()), Ok(()));
        let mut moved = expected();
        moved.fields[3].2 = 0x110;
        assert_eq!(
            check(JSON.as_bytes(), &moved),
            Err("its descriptor puts Module.PEAssembly at 216, where crossprof reads 272".into())
        );
        let mut missing = expected();
        missing.fields.push(("Module", "Path", 200));
        assert_eq!(
            check(JSON.as_bytes(), &missing),
            Err("its descriptor has no Module.Path".into())
        );
        let mut bits = expected();
        bits.globals[0].1 = 14;
        assert!(check(JSON.as_bytes(), &bits).unwrap_err().contains("= 12"));
        let mut pointer = expected();
        pointer
            .globals
            .push(("ExecutionManagerCodeRangeMapAddress", 20));
        assert!(
            check(JSON.as_bytes(), &pointer).is_err(),
            "an index is no number"
        );
        let mut linear = expected();
        linear.contracts[0].1 = 1;
        assert_eq!(
            check(JSON.as_bytes(), &linear),
            Err("its descriptor says contract ExecutionManager version 2, crossprof reads version 1".into())
        );
        assert!(check(b"{\"types\":", &expected()).is_err());
        // Whatever shape the target gives a value, a mismatch, never a panic.
        let odd = br#"{"types":{"MethodDesc":{"!":[],"ChunkIndex":{},"Flags":"6"}},"globals":[]}"#;
        assert!(check(odd, &expected()).is_err());
    }

    /// The descriptor's struct for [`JSON`] at `text_at`.
    pub(crate) fn head(text_at: u64) -> [u8; 40] {
        let mut head = [0u8; 40];
        head[..8].copy_from_slice(b"DNCCDAC\0");
        head[8..12].copy_from_slice(&1u32.to_le_bytes());
        head[12..16].copy_from_slice(&(JSON.len() as u32).to_le_bytes());
        head[16..24].copy_from_slice(&text_at.to_le_bytes());
        head
    }

    #[test]
    fn the_struct_gives_its_text_only_if_it_is_one() {
        let text_at = 0x7000_0000u64;
        let head = head(text_at);
        let read = |addr: u64, buf: &mut [u8]| {
            let at = addr.wrapping_sub(text_at) as usize;
            match JSON.as_bytes().get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        };
        assert_eq!(json_text(&head, read).as_deref(), Some(JSON.as_bytes()));
        let mut wide = head;
        wide[8] = 3; // a 32-bit target
        assert_eq!(json_text(&wide, read), None);
        let mut big = head;
        big[12..16].copy_from_slice(&(MAX_JSON + 1).to_le_bytes());
        assert_eq!(json_text(&big, read), None);
        let mut other = head;
        other[0] = b'X';
        assert_eq!(json_text(&other, read), None);
        let mut short = head;
        short[12..16].copy_from_slice(&(JSON.len() as u32 + 1).to_le_bytes());
        assert_eq!(json_text(&short, read), None, "runs past what can be read");
    }
}
