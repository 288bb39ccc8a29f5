//! `/proc/PID/maps` parsing.

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`, `w`, `x`, `p`/`s`.
    pub perms: [u8; 4],
    /// Offset of `start` in the file.
    pub offset: u64,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Inode; 0 for anonymous memory.
    pub inode: u64,
    /// Path or pseudo-name (`[vdso]`, `[heap]`), empty for anonymous memory. A
    /// deleted file keeps its ` (deleted)` suffix.
    pub path: String,
}

impl MapEntry {
    /// Executable?
    pub fn is_exec(&self) -> bool {
        self.perms[2] == b'x'
    }

    /// Backed by a file on a device (not anonymous, not a `[pseudo]` mapping).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses a whole maps file; lines that do not parse are skipped (the kernel's
/// format is stable, so only a torn read produces them).
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MapEntry> {
    // 7f2c...-7f2d... r-xp 00001000 08:01 1234   /usr/lib/libc.so.6
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    if perms.len() != 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: [perms[0], perms[1], perms[2], perms[3]],
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c8a00000-55d4c8a01000 r--p 00000000 fe:01 393300                     /work/chain
55d4c8a01000-55d4c8a02000 r-xp 00001000 fe:01 393300                     /work/chain
7f1e2c028000-7f1e2c17d000 r-xp 00028000 fe:01 1181                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2c200000-7f1e2c221000 rw-p 00000000 00:00 0 
7ffc1a3f3000-7ffc1a3f5000 r-xp 00000000 00:00 0                          [vdso]
7f00aa000000-7f00aa100000 r-xp 00000000 00:01 77                         /memfd:doublemapper (deleted)
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 6);
        let exe = &maps[1];
        assert_eq!(
            (exe.start, exe.end, exe.offset),
            (0x55d4c8a01000, 0x55d4c8a02000, 0x1000)
        );
        assert_eq!((exe.dev_major, exe.dev_minor, exe.inode), (0xfe, 1, 393300));
        assert!(exe.is_exec() && exe.is_file());
        assert_eq!(maps[2].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(!maps[3].is_exec());
        assert_eq!(maps[3].path, "");
        assert_eq!(maps[4].path, "[vdso]");
        assert!(!maps[4].is_file());
        assert_eq!(maps[5].path, "/memfd:doublemapper (deleted)");
    }

    #[test]
    fn skips_torn_lines() {
        assert!(parse_maps("55d4c8a00000-55d4 r-").is_empty());
        assert!(parse_maps("zz-yy r-xp 0 0:0 0 /x").is_empty());
    }
}
