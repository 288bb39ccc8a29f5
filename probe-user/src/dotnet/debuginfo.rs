//! Where a JIT-compiled method's native code is in its IL, from the debug info
//! the runtime keeps for it in memory (issue #21): what the verbose JIT event
//! session (`MethodILToNativeMap`, [`super::lines`]) would say, read without
//! asking the runtime for anything.
//!
//! The blob `RealCodeHeader::phdrDebugInfo` points to (dotnet/runtime
//! `src/coreclr/vm/debuginfostore.cpp`, `CompressDebugInfo`; the nibble
//! encoding is `src/coreclr/inc/nibblestream.h`; read on .NET 8.0.4 and 3.1.23
//! in live processes: every method's bounds decoded to exactly their size,
//! their offsets agreeing with the JIT's disassembly and the IL; .NET 10's
//! bit-packed bounds as `docs/design/datacontracts/DebugInfo.md` (version 1)
//! describes them, read on 10.0.0):
//! - From .NET 5 on, JIT code's blob starts with a flag byte: bit 0 a
//!   `PatchpointInfo` follows (OSR: 32 bytes, then 4 per local, the number of
//!   locals a u32 at its offset 8), bit 1 rich debug info follows (a u32 size,
//!   then that many bytes). .NET Core 3.1 has no flag byte.
//! - Then, nibble-encoded: the bounds' size in bytes and the variables' size;
//!   the bounds start at the next whole byte. A size of `0xFFFFFFFF` says two
//!   bounds lists follow instead (the code's, instrumented, then the
//!   uninstrumented code's): the sizes of both, then the variables'.
//! - The bounds: their count, then per entry the native offset (a delta from
//!   the previous entry's), the IL offset biased by 3 (so that `NO_MAPPING`,
//!   `PROLOG` and `EPILOG`, -1 to -3, encode as 2 to 0) and the source type
//!   flags. From .NET 10 ([`decode_packed_bounds`]) the count and the bits
//!   each field takes are nibble-encoded, then the entries are packed in bits,
//!   least significant first: 2 bits of source type, the native delta, the
//!   biased IL offset.
//! - A nibble stream reads each byte's low nibble first; a value is groups of
//!   3 bits, most significant first, each nibble's bit 3 saying another
//!   follows.
//!
//! Everything read is the target's: sizes and counts are bounded, a stream
//! that runs out or overflows decodes to nothing.

/// IL offsets from here up are the runtime's special values (no mapping,
/// prolog, epilog), not a place in the IL.
pub const IL_SPECIAL: u32 = 0xFFFF_FFFD;

/// The largest bounds list read (a method's is tens of bytes; the largest
/// seen in the framework, a few hundred).
const MAX_BOUNDS_BYTES: u32 = 64 << 10;
/// The largest rich debug info skipped over, and the most locals an OSR
/// method's patchpoint info may list.
const MAX_RICH_BYTES: u32 = 1 << 20;
const MAX_PATCHPOINT_LOCALS: u32 = 1 << 16;

/// The bounds size that says two bounds lists follow
/// (`DEBUG_INFO_BOUNDS_HAS_INSTRUMENTED_BOUNDS`).
const HAS_INSTRUMENTED_BOUNDS: u32 = 0xFFFF_FFFF;

/// Flag-byte bits (`EXTRA_DEBUG_INFO_PATCHPOINT`, `EXTRA_DEBUG_INFO_RICH`).
const FLAG_PATCHPOINT: u8 = 1;
const FLAG_RICH: u8 = 2;

/// A nibble stream (`NibbleReader`).
struct Nibbles<'a> {
    data: &'a [u8],
    /// Nibbles read.
    at: usize,
}

impl<'a> Nibbles<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn nibble(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.at / 2)?;
        let n = if self.at.is_multiple_of(2) {
            byte & 0xf
        } else {
            byte >> 4
        };
        self.at += 1;
        Some(n)
    }

    /// An unsigned value (`ReadEncodedU32`): at most 11 groups of 3 bits.
    fn u32(&mut self) -> Option<u32> {
        let mut v: u64 = 0;
        for _ in 0..11 {
            let n = self.nibble()?;
            v = (v << 3) | u64::from(n & 7);
            if n & 8 == 0 {
                return u32::try_from(v).ok();
            }
        }
        None
    }

    /// The first whole byte after what was read.
    fn next_byte(&self) -> usize {
        self.at.div_ceil(2)
    }
}

/// One entry of a method's bounds: a native offset and the IL offset its
/// code from there on is at (or one of the special values, at or above
/// [`IL_SPECIAL`]).
pub type Bound = (u32, u32);

/// Decodes a bounds list (its count, then the entries), at most `max`.
pub fn decode_bounds(data: &[u8]) -> Option<Vec<Bound>> {
    let mut r = Nibbles::new(data);
    let count = r.u32()?;
    // Each entry takes three nibbles at least.
    if u64::from(count) * 3 > data.len() as u64 * 2 {
        return None;
    }
    let mut native: u32 = 0;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        native = native.wrapping_add(r.u32()?);
        let il = r.u32()?.wrapping_sub(3);
        let _source = r.u32()?;
        out.push((native, il));
    }
    Some(out)
}

/// Decodes a .NET 10 bounds list: its count, the bits of a native delta and
/// of an IL offset (each less one), nibble-encoded; then from the next whole
/// byte the entries, each `2 + native + il` bits read least significant bit
/// first (source type, native delta from the previous entry, IL offset
/// biased by 3).
pub fn decode_packed_bounds(data: &[u8]) -> Option<Vec<Bound>> {
    let mut r = Nibbles::new(data);
    let count = r.u32()?;
    let native_bits = r.u32()?.checked_add(1)?;
    let il_bits = r.u32()?.checked_add(1)?;
    if native_bits > 32 || il_bits > 32 {
        return None;
    }
    let entry_bits = 2 + native_bits + il_bits;
    let packed = data.get(r.next_byte()..)?;
    if u64::from(count) * u64::from(entry_bits) > packed.len() as u64 * 8 {
        return None;
    }
    let field = |at: u64, bits: u32| -> u64 {
        (0..u64::from(bits)).fold(0, |v, i| {
            let bit = at + i;
            let set = (packed[(bit / 8) as usize] >> (bit % 8)) & 1;
            v | u64::from(set) << i
        })
    };
    let mut native: u32 = 0;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        let at = i * u64::from(entry_bits) + 2;
        native = native.wrapping_add(field(at, native_bits) as u32);
        let il = (field(at + u64::from(native_bits), il_bits) as u32).wrapping_sub(3);
        out.push((native, il));
    }
    Some(out)
}

/// The bounds of the method whose debug info is at `addr` in the memory
/// `read` reads (filling a buffer from an address; false if it cannot);
/// `flag_byte`: the runtime writes the leading flag byte (.NET 5 on);
/// `packed`: the bounds are packed in bits (.NET 10).
pub fn bounds(
    read: impl Fn(u64, &mut [u8]) -> bool,
    addr: u64,
    flag_byte: bool,
    packed: bool,
) -> Option<Vec<Bound>> {
    let u32_at = |a: u64| {
        let mut b = [0u8; 4];
        read(a, &mut b).then(|| u32::from_le_bytes(b))
    };
    let mut p = addr;
    if flag_byte {
        let mut flags = [0u8];
        if !read(p, &mut flags) || flags[0] & !(FLAG_PATCHPOINT | FLAG_RICH) != 0 {
            return None;
        }
        p += 1;
        if flags[0] & FLAG_PATCHPOINT != 0 {
            let locals = u32_at(p + 8)?;
            if locals > MAX_PATCHPOINT_LOCALS {
                return None;
            }
            p += 32 + 4 * u64::from(locals);
        }
        if flags[0] & FLAG_RICH != 0 {
            let size = u32_at(p)?;
            if size > MAX_RICH_BYTES {
                return None;
            }
            p += 4 + u64::from(size);
        }
    }
    // Up to four values of at most 11 nibbles each (fewer bytes where the
    // blob ends near the end of its mapping: two values, as before .NET 8).
    let mut head = [0u8; 22];
    let head = if read(p, &mut head) {
        &head[..]
    } else if read(p, &mut head[..11]) {
        &head[..11]
    } else {
        return None;
    };
    let mut r = Nibbles::new(head);
    let mut cb_bounds = r.u32()?;
    if cb_bounds == HAS_INSTRUMENTED_BOUNDS {
        // The code's own (instrumented) bounds come first.
        cb_bounds = r.u32()?;
        let _cb_uninstrumented = r.u32()?;
    }
    let _cb_vars = r.u32()?;
    if cb_bounds == 0 || cb_bounds > MAX_BOUNDS_BYTES {
        return None;
    }
    let mut data = vec![0u8; cb_bounds as usize];
    if !read(p + r.next_byte() as u64, &mut data) {
        return None;
    }
    if packed {
        decode_packed_bounds(&data)
    } else {
        decode_bounds(&data)
    }
}

/// The IL offset of native offset `off` in a method whose bounds are
/// `bounds` (sorted by native offset, as the runtime writes them): the last
/// entry at or before it, unless that is a special one.
pub fn il_offset(bounds: &[Bound], off: u32) -> Option<u32> {
    let i = bounds.partition_point(|&(native, _)| native <= off);
    let (_, il) = *bounds.get(i.checked_sub(1)?)?;
    (il < IL_SPECIAL).then_some(il)
}

/// A reader of `b` as memory at `base`.
fn reader(b: &[u8], base: u64) -> impl Fn(u64, &mut [u8]) -> bool + '_ {
    move |addr, buf| {
        let Some(at) = addr.checked_sub(base).and_then(|a| usize::try_from(a).ok()) else {
            return false;
        };
        match at.checked_add(buf.len()).and_then(|end| b.get(at..end)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Decodes the blob in `b` as either version would: the fuzz target.
pub fn fuzz(b: &[u8]) {
    for flag_byte in [false, true] {
        if let Some(bounds) = bounds(reader(b, 0x1000), 0x1000, flag_byte, false) {
            let _ = il_offset(&bounds, 0x10);
        }
    }
    let _ = decode_bounds(b);
    let _ = decode_packed_bounds(b);
    if let Some(bounds) = bounds(reader(b, 0x1000), 0x1000, true, true) {
        let _ = il_offset(&bounds, 0x10);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Nibbles packed as the runtime writes them: the low nibble first.
    fn pack(nibbles: &[u8]) -> Vec<u8> {
        nibbles
            .chunks(2)
            .map(|c| c[0] | c.get(1).map_or(0, |h| h << 4))
            .collect()
    }

    /// `v` as a nibble-encoded value: groups of 3 bits, most significant first.
    fn encode(v: u32) -> Vec<u8> {
        let mut groups = vec![(v & 7) as u8];
        let mut rest = v >> 3;
        while rest != 0 {
            groups.push((rest & 7) as u8 | 8);
            rest >>= 3;
        }
        groups.reverse();
        groups
    }

    #[test]
    fn nibble_values_read_most_significant_group_first_low_nibble_first() {
        // 0x53 = 0b1_010_011: groups 1, 2, 3 -> nibbles 0x9, 0xa, 0x3.
        assert_eq!(encode(0x53), vec![0x9, 0xa, 0x3]);
        let bytes = pack(&[0x9, 0xa, 0x3, 0x5]);
        assert_eq!(bytes, vec![0xa9, 0x53]);
        let mut r = Nibbles::new(&bytes);
        assert_eq!(r.u32(), Some(0x53));
        assert_eq!(r.next_byte(), 2);
        assert_eq!(r.u32(), Some(5));
        assert_eq!(r.u32(), None, "ran out");
        // u32::MAX fits in 11 groups; more does not.
        let mut r = Nibbles::new(&[0xff; 8]);
        assert_eq!(r.u32(), None);
        let max = pack(&encode(u32::MAX));
        assert_eq!(Nibbles::new(&max).u32(), Some(u32::MAX));
    }

    /// A blob as the runtime lays it out: flags, then the sizes, then the
    /// bounds (native deltas, IL offsets biased by 3, source types).
    pub(crate) fn blob(flag: Option<u8>, entries: &[(u32, i64, u32)]) -> Vec<u8> {
        let mut bounds = encode(entries.len() as u32);
        let mut last = 0;
        for &(native, il, source) in entries {
            bounds.extend(encode(native - last));
            bounds.extend(encode((il + 3) as u32));
            bounds.extend(encode(source));
            last = native;
        }
        let bounds = pack(&bounds);
        let mut out = Vec::new();
        if let Some(f) = flag {
            out.push(f);
            if f & FLAG_PATCHPOINT != 0 {
                // 32 bytes with 2 locals at offset 8, then 2 x 4 bytes.
                let mut ppi = vec![0xee; 40];
                ppi[8..12].copy_from_slice(&2u32.to_le_bytes());
                out.extend(ppi);
            }
            if f & FLAG_RICH != 0 {
                out.extend(5u32.to_le_bytes());
                out.extend([0xdd; 5]);
            }
        }
        let mut head = encode(bounds.len() as u32);
        head.extend(encode(7)); // the variables' size: skipped
        out.extend(pack(&head));
        out.extend(bounds);
        out.extend([0xcc; 7]);
        out
    }

    #[test]
    fn bounds_are_read_past_the_flag_byte_and_what_it_announces() {
        let entries = [(0, -2, 0), (0x1a, 0, 1), (0x2c, 0x12, 1), (0x80, -3, 0)];
        let want: Vec<Bound> = vec![
            (0, 0xFFFF_FFFE),
            (0x1a, 0),
            (0x2c, 0x12),
            (0x80, 0xFFFF_FFFD),
        ];
        for flag in [
            None,
            Some(0),
            Some(FLAG_PATCHPOINT),
            Some(FLAG_RICH),
            Some(3),
        ] {
            let b = blob(flag, &entries);
            assert_eq!(
                bounds(reader(&b, 0x1000), 0x1000, flag.is_some(), false).as_deref(),
                Some(want.as_slice()),
                "flags {flag:?}"
            );
        }
        // An unknown flag bit: not a blob this reader knows.
        let mut b = blob(Some(0), &entries);
        b[0] = 4;
        assert_eq!(bounds(reader(&b, 0x1000), 0x1000, true, false), None);
        // The IL offset of a native offset: the last entry at or before it,
        // none in the prolog or epilog.
        assert_eq!(il_offset(&want, 0x10), None, "prolog");
        assert_eq!(il_offset(&want, 0x1a), Some(0));
        assert_eq!(il_offset(&want, 0x7f), Some(0x12));
        assert_eq!(il_offset(&want, 0x90), None, "epilog");
    }

    /// A .NET 10 blob: the flag byte, the sizes (with `instrumented`, the
    /// marker and two lists' sizes, the first list this one), then the bounds
    /// packed in bits as the runtime packs them (`CompressBoundaries`).
    fn packed_blob(entries: &[(u32, i64, u32)], instrumented: bool) -> Vec<u8> {
        let bits_for = |v: u64| (64 - v.leading_zeros()).max(1);
        let mut last = 0;
        let (mut native_bits, mut il_bits) = (1, 1);
        for &(native, il, _) in entries {
            native_bits = native_bits.max(bits_for(u64::from(native - last)));
            il_bits = il_bits.max(bits_for((il + 3) as u64));
            last = native;
        }
        let mut head = encode(entries.len() as u32);
        head.extend(encode(native_bits - 1));
        head.extend(encode(il_bits - 1));
        let mut bounds = pack(&head);
        let (mut acc, mut n, mut last) = (0u128, 0u32, 0);
        for &(native, il, source) in entries {
            let entry = u128::from(source)
                | u128::from(native - last) << 2
                | ((il + 3) as u128) << (2 + native_bits);
            acc |= entry << n;
            n += 2 + native_bits + il_bits;
            last = native;
            while n >= 8 {
                bounds.push(acc as u8);
                acc >>= 8;
                n -= 8;
            }
        }
        if n > 0 {
            bounds.push(acc as u8);
        }
        let mut head = Vec::new();
        if instrumented {
            head.extend(encode(HAS_INSTRUMENTED_BOUNDS));
            head.extend(encode(bounds.len() as u32));
            head.extend(encode(3)); // the uninstrumented list's: not read
        } else {
            head.extend(encode(bounds.len() as u32));
        }
        head.extend(encode(7)); // the variables' size: skipped
        let mut out = vec![0];
        out.extend(pack(&head));
        out.extend(bounds);
        out.extend([0xcc; 30]);
        out
    }

    #[test]
    fn net10_bounds_are_unpacked_from_their_bits() {
        // Deltas needing 9 bits and IL offsets 5: entries straddle bytes.
        let entries = [(0, -2, 2), (0x1a, 0, 2), (0x12c, 0x12, 1), (0x130, -3, 0)];
        let want: Vec<Bound> = vec![
            (0, 0xFFFF_FFFE),
            (0x1a, 0),
            (0x12c, 0x12),
            (0x130, 0xFFFF_FFFD),
        ];
        for instrumented in [false, true] {
            let b = packed_blob(&entries, instrumented);
            assert_eq!(
                bounds(reader(&b, 0x1000), 0x1000, true, true).as_deref(),
                Some(want.as_slice()),
                "instrumented: {instrumented}"
            );
            // Read as the older format, the same bytes are something else.
            assert_ne!(
                bounds(reader(&b, 0x1000), 0x1000, true, false).as_deref(),
                Some(want.as_slice())
            );
        }
        // A count the bytes cannot hold, and fields wider than 32 bits: none.
        let mut head = encode(1000);
        head.extend(encode(3));
        head.extend(encode(3));
        assert_eq!(decode_packed_bounds(&pack(&head)), None);
        let mut head = encode(1);
        head.extend(encode(40));
        head.extend(encode(3));
        let mut wide = pack(&head);
        wide.extend([0xff; 16]);
        assert_eq!(decode_packed_bounds(&wide), None);
    }

    #[test]
    fn every_cut_of_a_blob_decodes_to_nothing_or_a_prefix_and_never_panics() {
        let b = blob(Some(3), &[(0, 0, 1), (0x10, 4, 1), (0x20, 9, 1)]);
        let whole = bounds(reader(&b, 0x1000), 0x1000, true, false).unwrap();
        for cut in 0..b.len() {
            let got = bounds(reader(&b[..cut], 0x1000), 0x1000, true, false);
            assert!(got.is_none_or(|g| g == whole), "cut at {cut}");
            fuzz(&b[..cut]);
        }
        for i in 0..b.len() {
            let mut flipped = b.clone();
            flipped[i] ^= 0x5a;
            fuzz(&flipped);
        }
    }
}
