//! cgo: unwinding through the calls between Go and C (issue #5).
//!
//! A Go binary that uses cgo is linked by the C linker, so it has `.eh_frame`
//! rows for its C parts and none for Go code. Its processes are walked by
//! rules (`crate::native::unwind`), and this module adds the rows for the Go
//! side, from `.gopclntab`:
//!
//! - Go functions outside the runtime: by their stack-pointer offsets
//!   (`pcsp`), exact wherever the function is, whatever RBP holds (assembly
//!   such as crypto/md5's uses it as a general register); see
//!   `by_stack_pointer`.
//! - the runtime's functions (and those that write SP):
//!   [`cfa_kind::GO_FRAME_POINTER`]. Go keeps frame pointers; what rules
//!   cannot say is that a frame record may sit on another stack. `runtime.cgocallback` (C calling Go, entered through `crosscall2`,
//!   whose frame record links to the C caller's RBP) runs on the system stack
//!   and calls `cgocallbackg` on the goroutine's; a frame-pointer walk that
//!   insists on records going up one stack stops there.
//! - `crosscall2` (C calling Go): by its stack-pointer offsets, see
//!   `crosscall2_rows`.
//! - `runtime.asmcgocall` (Go calling C): it switches to the system stack
//!   (g0) and calls the C function there. C code is walked by its rules up to
//!   the return address into asmcgocall; the goroutine's stack pointer is
//!   then found in asmcgocall's frame on the system stack, stored as a depth
//!   below `g.stack.hi` with the g after it ([`cfa_kind::GO_CGO_CALL`]).
//!
//! Facts from `runtime/asm_amd64.s` (`asmcgocall`) and
//! `runtime/cgo/asm_amd64.s` + `abi_amd64.h` (`crosscall2`), Go 1.19-1.27:
//! asmcgocall keeps `SP at entry` as `g.stack.hi - SP` at 40(SP) with the g at
//! 48(SP) up to 1.21 (64-byte frame, `CALL AX`), at 0(SP) with the g at 8(SP)
//! from 1.23 (16-byte frame, `CALL asmcgocall_landingpad`, which jumps to the
//! C function); on g0 already (`nosave`), the word is SP itself and the g slot
//! 0. From 1.21 asmcgocall has a frame record (`PUSHQ BP`), so SP at entry
//! points at the saved RBP, the return address after it. The offset and the
//! record are read from the code itself (below), not from the version, and a
//! binary whose asmcgocall reads otherwise gets no rule there (the walk ends
//! in `[truncated: no unwind info]`, never a guess).

use probe_common::native::{RBP_SAME, RBP_UNKNOWN, UnwindRow, cfa_kind};

use super::pclntab::GoTable;

/// Which linker linked a Go binary: the Go code's rows depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linker {
    /// The C linker (cgo, `-linkmode=external`, c-shared): the binary has
    /// `.eh_frame` rows for its C parts, so its processes are walked by rules
    /// anyway, and every Go function outside the runtime gets exact rows from
    /// its `pcsp` table.
    C,
    /// Go's own linker (pure Go, the default): no `.eh_frame`. Compiled Go
    /// keeps frame pointers, so only assembly outside the runtime (which may
    /// use RBP as a general register: crypto/md5's `block`, chacha20poly1305)
    /// gets `pcsp` rows; everything else keeps the frame-pointer rule, which
    /// dedups into a few rows for the whole binary (a large Go program's
    /// ~100,000 functions would otherwise take ~400,000 of the kernel's 1M
    /// shared rows).
    Go,
}

/// Rows for the Go code of a binary: `(start, end, row)` link-time ranges,
/// sorted, for [`crate::native::unwind`] to merge with the C parts' rows.
/// With [`Linker::Go`], empty when no function needs more than its frame
/// pointer: the process keeps the cheaper frame-pointer walk
/// (`bpf_get_stack`).
pub fn rows(table: &GoTable, linker: Linker) -> Vec<(u64, u64, UnwindRow)> {
    let frame_pointer = go_row(cfa_kind::GO_FRAME_POINTER, 0, 0);
    let mut out = Vec::new();
    let mut by_sp = 0usize;
    for (entry, end, name) in table.functions() {
        if u32::try_from(end).is_err() {
            continue;
        }
        let cgo = linker == Linker::C;
        match name.as_str() {
            // The ABI wrapper of the same name has no switch: frame pointer.
            "runtime.asmcgocall" if cgo => out.push((
                entry,
                end,
                asmcgocall_rule(table, entry, end).unwrap_or(frame_pointer),
            )),
            "crosscall2" if cgo => match crosscall2_rows(table, entry, end) {
                Some(rows) => out.extend(rows),
                None => out.push((entry, end, go_row(cfa_kind::UNKNOWN, 0, RBP_UNKNOWN))),
            },
            _ if keeps_frame_pointer_rule(table, entry, &name) => {
                out.push((entry, end, frame_pointer))
            }
            // Go's linker: compiled Go keeps its frame pointers.
            _ if !cgo
                && table
                    .func_flag(entry)
                    .is_none_or(|f| f & FUNC_FLAG_ASM == 0) =>
            {
                out.push((entry, end, frame_pointer))
            }
            _ => match by_stack_pointer(table, entry, end) {
                Some(rows) => {
                    by_sp += 1;
                    out.extend(rows)
                }
                None => out.push((entry, end, frame_pointer)),
            },
        }
    }
    if linker == Linker::Go && by_sp == 0 {
        out.clear();
    }
    out
}

/// `abi.FuncFlag` bits (internal/abi/symtab.go; the same in Go 1.18-1.27,
/// `funcFlag_*` in runtime/symtab.go before 1.20): the outermost frame of a
/// stack, a function that writes SP with other than a constant (its `pcsp`
/// cannot say where its frame is), and one written in assembly.
const FUNC_FLAG_TOP_FRAME: u8 = 1;
const FUNC_FLAG_SP_WRITE: u8 = 2;
const FUNC_FLAG_ASM: u8 = 4;

/// Does the function at `entry` keep the frame-pointer rule? The runtime's
/// (its stack switches link frame records across stacks: systemstack, mcall,
/// morestack, gogo, the signal handlers), the outermost ones and those that
/// write SP. Everything else is walked by its `pcsp`, which is exact, where
/// RBP may be a general register (crypto/md5's `block`, math/big's assembly
/// keep their caller's RBP in their frame and use the register).
fn keeps_frame_pointer_rule(table: &GoTable, entry: u64, name: &str) -> bool {
    name.starts_with("runtime.")
        || name.starts_with("runtime/")
        || name.starts_with("internal/runtime/")
        || table
            .func_flag(entry)
            .is_none_or(|f| f & (FUNC_FLAG_TOP_FRAME | FUNC_FLAG_SP_WRITE) != 0)
}

/// Rows for the Go function at `entry..end` by its stack-pointer offsets:
/// the CFA is `RSP + delta + 8`, the return address below it; the caller's
/// RBP is still in the register while nothing is pushed (delta 0), and saved
/// at CFA − 16 once the frame is set up (the compiler's and the assembler's
/// prologue save it right below the return address: `PUSHQ BP`, or `MOVQ BP,
/// size-8(SP)` after `SUBQ $size, SP` before Go 1.21; cmd/internal/obj/x86
/// obj6.go). `None` if the table does not read or a frame is too large for a
/// row.
fn by_stack_pointer(table: &GoTable, entry: u64, end: u64) -> Option<Vec<(u64, u64, UnwindRow)>> {
    table
        .sp_ranges(entry, end)?
        .into_iter()
        .filter(|&(start, stop, _)| start < stop)
        .map(|(start, stop, delta)| {
            if delta < 0 {
                return None;
            }
            let cfa = i16::try_from(delta.checked_add(8)?).ok()?;
            let rbp = if delta == 0 { RBP_SAME } else { -2 };
            Some((start, stop, go_row(cfa_kind::RSP, cfa, rbp)))
        })
        .collect()
}

/// `crosscall2`'s rows, by stack-pointer offset (its `pcsp` table). C calls
/// it without a frame pointer in RBP, so its frame record links to junk (from
/// Go 1.23 the assembler adds a second record on top, whose "return address"
/// is the C caller's RBP): the CFA is RSP-based, and the caller's RBP is the
/// first one saved, at CFA - 16 (`PUSHQ BP` at entry from 1.23, `MOVQ BP,
/// off(SP)` right after `ADJSP` up to 1.21; objdump of each toolchain's build).
fn crosscall2_rows(table: &GoTable, entry: u64, end: u64) -> Option<Vec<(u64, u64, UnwindRow)>> {
    let code = table.bytes(entry, usize::try_from(end.checked_sub(entry)?).ok()?)?;
    // Where the caller's RBP is saved, and from which PC on.
    let saved_from = if code.first() == Some(&0x55) {
        entry + 1
    } else {
        let at = code
            .windows(5)
            .position(|w| w[..4] == [0x48, 0x89, 0x6c, 0x24])?;
        let delta = table.sp_delta(entry + at as u64)?;
        // mov %rbp, disp8(%rsp): the slot must be CFA - 16.
        if i32::from(code[at + 4] as i8) - delta - 8 != -16 {
            return None;
        }
        entry + at as u64 + 5
    };
    let mut out: Vec<(u64, u64, UnwindRow)> = Vec::new();
    for pc in entry..end {
        // Past the last instruction (alignment padding): no rule.
        let Some(delta) = table.sp_delta(pc) else {
            out.push((pc, end, go_row(cfa_kind::UNKNOWN, 0, RBP_UNKNOWN)));
            break;
        };
        let cfa_off = i16::try_from(delta.checked_add(8)?).ok()?;
        let rbp = if pc >= saved_from { -2 } else { RBP_SAME };
        let row = go_row(cfa_kind::RSP, cfa_off, rbp);
        match out.last_mut() {
            Some((_, e, last)) if last.cfa_off == cfa_off && last.rbp == rbp => *e = pc + 1,
            _ => out.push((pc, pc + 1, row)),
        }
    }
    Some(out)
}

fn go_row(kind: u8, cfa_off: i16, rbp: i8) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_off,
        cfa_kind: kind,
        rbp,
    }
}

/// The [`cfa_kind::GO_CGO_CALL`] row of asmcgocall's body at `entry..end`, if
/// its code reads as expected: `MOVQ SP, DX` (SP at entry, after `PUSHQ BP;
/// MOVQ SP, BP` if the function starts with them), then `SUBQ DX, DI` (the
/// depth) stored by `MOVQ DI, off(SP)`.
fn asmcgocall_rule(table: &GoTable, entry: u64, end: u64) -> Option<UnwindRow> {
    let code = table.bytes(entry, usize::try_from(end.checked_sub(entry)?).ok()?)?;
    asmcgocall_rule_in(code)
}

/// [`asmcgocall_rule`] on the function's bytes.
fn asmcgocall_rule_in(code: &[u8]) -> Option<UnwindRow> {
    const PUSH_RBP_MOV_RSP_RBP: [u8; 4] = [0x55, 0x48, 0x89, 0xe5];
    const SUB_RDX_RDI: [u8; 3] = [0x48, 0x29, 0xd7];
    let record = code.starts_with(&PUSH_RBP_MOV_RSP_RBP);
    let at = code.windows(3).position(|w| w == SUB_RDX_RDI)? + 3;
    let store = &code[at..];
    let off = match store {
        // mov %rdi, (%rsp)
        [0x48, 0x89, 0x3c, 0x24, ..] => 0,
        // mov %rdi, disp8(%rsp)
        [0x48, 0x89, 0x7c, 0x24, d, ..] => i16::from(*d as i8),
        _ => return None,
    };
    Some(go_row(cfa_kind::GO_CGO_CALL, off, i8::from(record)))
}

#[cfg(test)]
mod tests {
    use crossprof_tests::{Go, GoBuild};

    use super::*;

    /// The rows of the cgo fixture as built by every toolchain: asmcgocall's
    /// depth slot and frame record, and crosscall2's CFA and saved RBP at its
    /// call to cgocallback, as the disassembly reads (objdump, checked by hand
    /// for 1.19, 1.21 and 1.27).
    #[test]
    fn transitions_of_every_version_have_their_rules() {
        for go in Go::ALL {
            let bin = go.fixture("cgo", GoBuild::Normal);
            let table = GoTable::parse(std::fs::read(&bin).unwrap())
                .unwrap()
                .unwrap();
            let rows = rows(&table, Linker::C);
            let switch: Vec<_> = rows
                .iter()
                .filter(|r| r.2.cfa_kind == cfa_kind::GO_CGO_CALL)
                .map(|r| (r.2.cfa_off, r.2.rbp))
                .collect();
            let want = match go {
                Go::Go119 => (40, 0),
                Go::Go121 => (40, 1),
                _ => (0, 1),
            };
            assert_eq!(switch, [want], "go {}", go.version());
            // At the return address from cgocallback: CFA = RSP + 0x18 of
            // arguments + 0x30 of saved registers (+ 8 for the frame record
            // from 1.21) + 8; the C caller's RBP at CFA - 16.
            let (entry, end) = table.function("crosscall2").unwrap();
            let code = table.bytes(entry, (end - entry) as usize).unwrap();
            let call = code.iter().position(|&b| b == 0xe8).unwrap() as u64 + entry;
            let ret = call + 5;
            let row = rows
                .iter()
                .find(|r| r.0 <= ret && ret < r.1)
                .map(|r| r.2)
                .unwrap();
            // The assembler adds `PUSHQ BP; MOVQ SP, BP` from 1.23.
            let frame = if matches!(go, Go::Go119 | Go::Go121) {
                0x50
            } else {
                0x58
            };
            assert_eq!(
                (row.cfa_kind, row.cfa_off, row.rbp),
                (cfa_kind::RSP, frame, -2),
                "go {}",
                go.version()
            );
            // Go code outside the runtime by its stack offsets: at entry the
            // return address at RSP and RBP untouched; inside, the caller's
            // RBP saved right below the return address.
            let main = table.function("main.caller").unwrap();
            let own: Vec<_> = rows
                .iter()
                .filter(|r| r.0 >= main.0 && r.1 <= main.1)
                .collect();
            assert!(own.len() >= 2, "go {}: {own:?}", go.version());
            assert!(own.iter().all(|r| r.2.cfa_kind == cfa_kind::RSP));
            assert_eq!((own[0].0, own[0].2.cfa_off, own[0].2.rbp), (main.0, 8, 0));
            assert!(own.iter().any(|r| r.2.cfa_off > 8 && r.2.rbp == -2));
            // The runtime's by frame pointer (records that cross stacks).
            for name in ["runtime.systemstack", "runtime.cgocallbackg"] {
                let (entry, end) = table.function(name).unwrap();
                assert!(
                    rows.iter().any(|r| r.0 == entry
                        && r.1 == end
                        && r.2.cfa_kind == cfa_kind::GO_FRAME_POINTER),
                    "go {}: {name}",
                    go.version()
                );
            }
        }
    }

    /// A pure Go binary (Go's linker): its assembly outside the runtime by
    /// stack-pointer offsets (in Spinbp's body, CFA = RSP + its frame + 8, the
    /// caller's RBP at CFA - 16), compiled Go and the runtime by
    /// frame pointers; a cgo build of the same program: compiled Go by
    /// stack-pointer offsets too.
    #[test]
    fn a_pure_go_binary_has_stack_pointer_rows_for_its_assembly_only() {
        for go in [Go::Go119, Go::Go127] {
            let find = |rows: &[(u64, u64, UnwindRow)], table: &GoTable, name: &str| {
                let (entry, end, _) = table
                    .functions()
                    .find(|(_, _, n)| n == name)
                    .unwrap_or_else(|| panic!("{name}"));
                rows.iter()
                    .filter(|r| r.0 >= entry && r.1 <= end)
                    .map(|r| (r.2.cfa_kind, r.2.cfa_off, r.2.rbp))
                    .collect::<Vec<_>>()
            };
            let pure =
                GoTable::parse(std::fs::read(go.pure_fixture("asmbp", GoBuild::Normal)).unwrap())
                    .unwrap()
                    .unwrap();
            let rows = rows(&pure, Linker::Go);
            let spin = find(&rows, &pure, "crossprof.test/asmbp/spin.Spinbp");
            assert!(
                spin.iter()
                    .any(|&(kind, off, rbp)| kind == cfa_kind::RSP && off >= 16 && rbp == -2),
                "go {}: {spin:?}",
                go.version()
            );
            let fp = (cfa_kind::GO_FRAME_POINTER, 0, 0);
            for name in ["main.work", "runtime.mcall", "runtime.main"] {
                assert_eq!(
                    find(&rows, &pure, name),
                    [fp],
                    "go {}: {name}",
                    go.version()
                );
            }
            let cgo = GoTable::parse(std::fs::read(go.fixture("asmbp", GoBuild::Normal)).unwrap())
                .unwrap()
                .unwrap();
            let rows = super::rows(&cgo, Linker::C);
            let work = find(&rows, &cgo, "main.work");
            assert!(
                work.iter().all(|r| r.0 == cfa_kind::RSP) && work.len() >= 2,
                "go {}: {work:?}",
                go.version()
            );
        }
    }

    #[test]
    fn asmcgocall_depth_slots_are_read_from_the_code() {
        // go1.19: no frame record, depth at 0x28(%rsp).
        let go119 = [
            0x48, 0x8b, 0x44, 0x24, 0x08, // mov 0x8(%rsp),%rax
            0x48, 0x89, 0xe2, // mov %rsp,%rdx
            0x48, 0x8b, 0x7f, 0x08, // mov 0x8(%rdi),%rdi
            0x48, 0x29, 0xd7, // sub %rdx,%rdi
            0x48, 0x89, 0x7c, 0x24, 0x28, // mov %rdi,0x28(%rsp)
            0xff, 0xd0, // call *%rax
        ];
        let r = asmcgocall_rule_in(&go119).unwrap();
        assert_eq!(
            (r.cfa_kind, r.cfa_off, r.rbp),
            (cfa_kind::GO_CGO_CALL, 40, 0)
        );
        // go1.27: frame record, depth at (%rsp).
        let go127 = [
            0x55, 0x48, 0x89, 0xe5, // push %rbp; mov %rsp,%rbp
            0x48, 0x89, 0xe2, // mov %rsp,%rdx
            0x48, 0x29, 0xd7, // sub %rdx,%rdi
            0x48, 0x89, 0x3c, 0x24, // mov %rdi,(%rsp)
            0xe8, 0, 0, 0, 0, // call landingpad
        ];
        let r = asmcgocall_rule_in(&go127).unwrap();
        assert_eq!(
            (r.cfa_kind, r.cfa_off, r.rbp),
            (cfa_kind::GO_CGO_CALL, 0, 1)
        );
        // Anything else: no rule.
        assert!(asmcgocall_rule_in(&[0x48, 0x29, 0xd7, 0x90]).is_none());
        assert!(asmcgocall_rule_in(&[0x90; 16]).is_none());
    }
}
