//! The goroutine layout from a Go binary's own DWARF, when it has any (a build
//! without `-ldflags=-w`): the member offsets of `runtime.g`, `runtime.m` and
//! `runtime.gobuf`, so that a runtime whose layout differs from its release's
//! (a patched or forked toolchain reporting the same version) is still read
//! right. Stripped binaries fall back to the per-version table in
//! [`super::offsets`].
//!
//! Go's linker writes its DWARF zlib-compressed (`SHF_COMPRESSED`); each struct
//! type is a `DW_TAG_structure_type` named `runtime.g` etc., its fields
//! `DW_TAG_member`s with a constant `DW_AT_data_member_location`.

use std::{borrow::Cow, collections::HashMap};

use gimli::{EndianSlice, LittleEndian};
use probe_common::go::{G_M, G_SCHED_PC, GoOffsets};

use crate::native::elf::Elf;

/// Most bytes of one decompressed DWARF section read.
const MAX_SECTION: usize = 256 << 20;

/// What the DWARF says, in the shape the table gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// For the kernel.
    pub offsets: GoOffsets,
    /// `(parentGoid, gopc, startpc)`, see [`super::offsets::creation`].
    pub creation: Option<(Option<u64>, u64, u64)>,
    /// Read from the binary's DWARF (else from the per-version table).
    pub from_dwarf: bool,
}

/// The layout in `file`'s DWARF, if it has DWARF and it describes every field
/// crossprof reads. `None` also when `g.m`, `g.sched` or `gobuf.pc` are not
/// where the kernel program reads them (constants there).
pub fn layout(file: &[u8], elf: &Elf) -> Option<Layout> {
    let wanted: [(&str, &[&str]); 3] = [
        (
            "runtime.g",
            &[
                "goid",
                "labels",
                "atomicstatus",
                "waitreason",
                "m",
                "sched",
                "parentGoid",
                "gopc",
                "startpc",
            ],
        ),
        ("runtime.m", &["curg", "gsignal"]),
        ("runtime.gobuf", &["pc", "bp"]),
    ];
    let types = members(file, elf, &wanted)?;
    let field = |ty: &str, name: &str| types.get(ty)?.get(name).copied();
    let g = |name| field("runtime.g", name);
    let sched = g("sched")?;
    if g("m")? != G_M || sched + field("runtime.gobuf", "pc")? != G_SCHED_PC {
        return None;
    }
    let small = |v: u64| u32::try_from(v).ok();
    Some(Layout {
        offsets: GoOffsets {
            goid: small(g("goid")?)?,
            labels: small(g("labels")?)?,
            status: small(g("atomicstatus")?)?,
            wait_reason: small(g("waitreason")?)?,
            m_curg: small(field("runtime.m", "curg")?)?,
            sched_bp: small(sched + field("runtime.gobuf", "bp")?)?,
            m_gsignal: small(field("runtime.m", "gsignal")?)?,
            _pad: 0,
            sigtramp: [0; 2],
            cgo_sigtramp: 0,
        },
        creation: Some((g("parentGoid"), g("gopc")?, g("startpc")?)),
        from_dwarf: true,
    })
}

/// For each struct type named in `wanted`, the offsets of the members named
/// there (the first definition of each type found).
fn members(
    file: &[u8],
    elf: &Elf,
    wanted: &[(&str, &[&str])],
) -> Option<HashMap<String, HashMap<String, u64>>> {
    elf.section(".debug_info")?;
    let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, gimli::Error> {
        Ok(elf
            .section_bytes(file, id.name(), MAX_SECTION)
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut found: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        // The struct being read, and its depth.
        let mut current: Option<(String, isize)> = None;
        while let Ok(Some(entry)) = entries.next_dfs() {
            let depth = entry.depth();
            if current.as_ref().is_some_and(|(_, d)| depth <= *d) {
                current = None;
            }
            let name = || -> Option<String> {
                let attr = entry.attr_value(gimli::DW_AT_name)?;
                let s = dwarf.attr_string(&unit, attr).ok()?;
                Some(s.to_string_lossy().into_owned())
            };
            match entry.tag() {
                gimli::DW_TAG_structure_type if current.is_none() => {
                    if let Some(n) = name()
                        && wanted.iter().any(|(ty, _)| *ty == n)
                        && !found.contains_key(&n)
                    {
                        found.insert(n.clone(), HashMap::new());
                        current = Some((n, depth));
                    }
                }
                gimli::DW_TAG_member => {
                    if let Some((ty, _)) = &current
                        && let Some(n) = name()
                        && wanted
                            .iter()
                            .any(|(t, fields)| t == ty && fields.contains(&n.as_str()))
                        && let Some(loc) = entry.attr_value(gimli::DW_AT_data_member_location)
                        && let Some(off) = loc.udata_value()
                    {
                        found.get_mut(ty)?.insert(n, off);
                    }
                }
                _ => {}
            }
            if found.len() == wanted.len()
                && current.is_none()
                && found.values().all(|m| !m.is_empty())
            {
                return Some(found);
            }
        }
    }
    (!found.is_empty()).then_some(found)
}

#[cfg(test)]
mod tests {
    use crossprof_tests::{Go, GoBuild};

    use super::*;

    /// The DWARF of every normal build agrees with the per-version table (which
    /// was itself written from these builds' DWARF); stripped builds have none.
    #[test]
    fn dwarf_layout_matches_the_table_in_every_version() {
        for go in Go::ALL {
            let what = format!("go {}", go.version());
            let file = std::fs::read(go.fixture("chain", GoBuild::Normal)).unwrap();
            let elf = Elf::parse(&file).unwrap();
            let got = layout(&file, &elf).unwrap_or_else(|| panic!("{what}: no layout"));
            let version = format!("go{}", go.version());
            let version = if go == Go::Go119 {
                "go1.19.8".into()
            } else {
                version
            };
            assert_eq!(
                Some(got.offsets),
                super::super::offsets::for_version(&version),
                "{what}"
            );
            assert_eq!(
                got.creation,
                super::super::offsets::creation(&version),
                "{what}"
            );
            let stripped = std::fs::read(go.fixture("chain", GoBuild::Stripped)).unwrap();
            let elf = Elf::parse(&stripped).unwrap();
            assert_eq!(layout(&stripped, &elf), None, "{what}: stripped");
        }
    }
}
