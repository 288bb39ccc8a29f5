//! Little-endian integers read out of file or event bytes, bounds-checked:
//! `None` past the end, never a panic (ELF headers, Go's pclntab, EventPipe
//! payloads).

/// The `u16` at byte `at`.
pub fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// The `u32` at byte `at`.
pub fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The `u64` at byte `at`.
pub fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_none_past_the_end() {
        let d = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&d, 0), Some(0x0201));
        assert_eq!(u32_at(&d, 5), Some(0x0908_0706));
        assert_eq!(u64_at(&d, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u32_at(&d, 6), None);
        assert_eq!(u64_at(&d, usize::MAX), None);
    }
}
