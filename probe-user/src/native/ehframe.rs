//! Call-frame information from an object's `.eh_frame`: for every PC, how to
//! find the caller's frame without frame pointers (issue #5). gcc `-O2` code,
//! libc and the runtimes' own libraries keep no frame-pointer chain; their
//! `.eh_frame` (kept even in stripped binaries, for C++ exceptions and
//! `backtrace()`) says, per address range, where the canonical frame address
//! (CFA) is — RSP or RBP plus an offset — and where RBP was saved. On x86-64 the
//! return address is always at CFA - 8.
//!
//! The format is DWARF's call-frame information (DWARF 5 §6.4) in the LSB
//! variant (Linux Standard Base Core, "Exception Frames"): CIEs and FDEs, each
//! FDE's instructions run from its CIE's initial state. This reader keeps what
//! an unwinder of CFA, RA and RBP needs and nothing else; rules it cannot
//! express (a CFA from another register, a DWARF expression other than the PLT's)
//! become [`Cfa::Unknown`] rows, so the kernel stops there and says so rather
//! than guessing.

/// How to compute the CFA at a PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cfa {
    /// RSP + offset.
    Rsp(i32),
    /// RBP + offset.
    Rbp(i32),
    /// A PLT entry: RSP + 8, + 8 more past the entry's 11th byte (the CFA
    /// expression every x86-64 linker emits for `.plt`).
    Plt,
    /// The outermost frame: the return address is marked undefined (a thread's
    /// or process's first function, e.g. `clone3`'s child, `_start`). The stack
    /// is complete here.
    Outermost,
    /// No rule this reader can express, or no FDE covers the PC.
    Unknown,
}

/// Where the caller's RBP is at a PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rbp {
    /// Still in RBP (not saved yet, or restored).
    Same,
    /// Saved at CFA + offset.
    AtCfa(i32),
    /// Not recoverable here.
    Unknown,
}

/// The rules from `pc` up to the next row's PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Link-time virtual address.
    pub pc: u64,
    /// The CFA.
    pub cfa: Cfa,
    /// The caller's RBP.
    pub rbp: Rbp,
}

/// Why an `.eh_frame` could not be read (whole, or an entry of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EhError {
    /// The data ends inside an entry.
    #[error("truncated .eh_frame entry at offset {0:#x}")]
    Truncated(usize),
    /// A pointer encoding this reader does not know.
    #[error("unsupported pointer encoding {0:#x} in .eh_frame")]
    Encoding(u8),
    /// An FDE points at no CIE.
    #[error("FDE at offset {0:#x} has no CIE")]
    NoCie(usize),
}

/// DWARF register numbers (System V x86-64 psABI, figure 3.36).
const REG_RBP: u64 = 6;
const REG_RSP: u64 = 7;
const REG_RA: u64 = 16;

/// Most rule states `DW_CFA_remember_state` may stack.
const MAX_REMEMBERED: usize = 16;

struct Reader<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.d.get(self.at)?;
        self.at += 1;
        Some(v)
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.d.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(v)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn uleb(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }
    fn sleb(&mut self) -> Option<i64> {
        let (mut v, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let rest = self.d.get(self.at..)?;
        let n = rest.iter().position(|&b| b == 0)?;
        self.at += n + 1;
        Some(&rest[..n])
    }

    /// A pointer in encoding `enc` (`DW_EH_PE_*`); `vaddr` is where the data
    /// starts in memory, for PC-relative values.
    fn pointer(&mut self, enc: u8, vaddr: u64) -> Result<Option<u64>, EhError> {
        if enc == 0xff {
            return Ok(Some(0)); // DW_EH_PE_omit
        }
        let field = vaddr.wrapping_add(self.at as u64);
        let value = match enc & 0x0f {
            0x00 => self.u64(),
            0x01 => self.uleb(),
            0x02 => self.u16().map(u64::from),
            0x03 => self.u32().map(u64::from),
            0x04 => self.u64(),
            0x09 => self.sleb().map(|v| v as u64),
            0x0a => self.u16().map(|v| v as i16 as u64),
            0x0b => self.u32().map(|v| v as i32 as u64),
            0x0c => self.u64(),
            _ => return Err(EhError::Encoding(enc)),
        };
        Ok(match enc & 0x70 {
            0x00 => value,
            0x10 => value.map(|v| v.wrapping_add(field)),
            // datarel/textrel/funcrel do not occur in x86-64 .eh_frame FDE
            // addresses; refuse rather than misplace.
            _ => return Err(EhError::Encoding(enc)),
        })
    }
}

/// A CIE's parts an FDE needs.
#[derive(Clone)]
struct Cie {
    code_align: u64,
    data_align: i64,
    ra_reg: u64,
    fde_enc: u8,
    has_aug_data: bool,
    initial: (usize, usize),
}

/// The unwind state while running instructions.
#[derive(Clone, Copy, PartialEq, Eq)]
struct State {
    cfa: Cfa,
    rbp: Rbp,
    /// Where the return address is.
    ra: Ra,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ra {
    /// At CFA - 8, where x86-64 always has it.
    AtCfaMinus8,
    /// `DW_CFA_undefined`: there is no caller.
    Undefined,
    /// Anything else.
    Other,
}

/// Reads every FDE of `eh` (the section's bytes, loaded at `vaddr`) into rows
/// sorted by PC. A PC between FDEs gets a [`Cfa::Unknown`] row. An entry that
/// does not read is skipped (its PCs stay unknown); the section as a whole fails
/// only if it cannot be walked at all.
pub fn rows(eh: &[u8], vaddr: u64) -> Result<Vec<Row>, EhError> {
    read_rows(eh, vaddr, Format::EhFrame)
}

/// The same for `.debug_frame` (DWARF's own form, which `gcc -g` writes when
/// unwind tables are off, e.g. `-fno-asynchronous-unwind-tables`, and which
/// separate debug files carry): CIEs are marked by an all-ones id, an FDE
/// points at its CIE by section offset, addresses are absolute 8-byte words,
/// and a version 4 CIE says its address and segment sizes.
pub fn debug_frame_rows(debug_frame: &[u8]) -> Result<Vec<Row>, EhError> {
    read_rows(debug_frame, 0, Format::DebugFrame)
}

/// Which of the two forms of call-frame information a section holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    EhFrame,
    DebugFrame,
}

impl Format {
    /// The id a CIE has (32-bit lengths; the 64-bit form's id is 8 bytes).
    fn is_cie(self, id: u64, wide: bool) -> bool {
        match self {
            Format::EhFrame => id == 0,
            Format::DebugFrame if wide => id == u64::MAX,
            Format::DebugFrame => id == u64::from(u32::MAX),
        }
    }
}

/// The functions `eh` (an `.eh_frame` loaded at `vaddr`) describes: each
/// FDE's `[start, end)`, sorted by start. Code no symbol names is grouped by
/// them (one unnamed function, not one frame per address).
pub fn functions(eh: &[u8], vaddr: u64) -> Result<Vec<(u64, u64)>, EhError> {
    let mut out = Vec::new();
    for_each_fde(eh, vaddr, Format::EhFrame, |mut r, cie| {
        if let Ok((start, range)) = fde_bounds(&mut r, cie, vaddr)
            && start != 0
            && range != 0
        {
            out.push((start, start.saturating_add(range)));
        }
    })?;
    out.sort_unstable();
    Ok(out)
}

fn read_rows(eh: &[u8], vaddr: u64, format: Format) -> Result<Vec<Row>, EhError> {
    let mut out: Vec<Row> = Vec::new();
    for_each_fde(eh, vaddr, format, |entry, cie| {
        if let Ok(Some(fde_rows)) = read_fde(entry, cie, eh, vaddr) {
            out.extend(fde_rows);
        }
    })?;
    out.sort_by_key(|row| row.pc);
    // Where one FDE ends and the next starts at the same PC, the end marker
    // (Unknown) must not hide the next FDE's first row.
    let mut merged: Vec<Row> = Vec::with_capacity(out.len());
    for row in out {
        match merged.last_mut() {
            Some(last) if last.pc == row.pc => {
                if last.cfa == Cfa::Unknown {
                    *last = row;
                }
            }
            Some(last) if last.cfa == row.cfa && last.rbp == row.rbp => {}
            _ => merged.push(row),
        }
    }
    Ok(merged)
}

/// Calls `fde` with each FDE's body (after its CIE pointer) and its CIE.
fn for_each_fde(
    eh: &[u8],
    vaddr: u64,
    format: Format,
    mut fde: impl FnMut(Reader<'_>, &Cie),
) -> Result<(), EhError> {
    let mut cies: std::collections::HashMap<usize, Cie> = Default::default();
    let mut at = 0usize;
    while at + 4 <= eh.len() {
        let mut r = Reader { d: eh, at };
        let mut len = u64::from(r.u32().ok_or(EhError::Truncated(at))?);
        if len == 0 {
            if format == Format::DebugFrame {
                at += 4; // padding, not a terminator
                continue;
            }
            break; // terminator
        }
        let wide = len == 0xffff_ffff;
        if wide {
            len = r.u64().ok_or(EhError::Truncated(at))?;
        }
        let body = r.at;
        let end = body
            .checked_add(usize::try_from(len).map_err(|_| EhError::Truncated(at))?)
            .filter(|&e| e <= eh.len())
            .ok_or(EhError::Truncated(at))?;
        let id_at = r.at;
        let id = if wide && format == Format::DebugFrame {
            r.u64()
        } else {
            r.u32().map(u64::from)
        }
        .ok_or(EhError::Truncated(at))?;
        let entry = Reader {
            d: &eh[..end],
            at: r.at,
        };
        if format.is_cie(id, wide) {
            if let Some(cie) = read_cie(entry, vaddr, format) {
                cies.insert(at, cie);
            }
        } else {
            let cie_at = match format {
                Format::EhFrame => id_at.checked_sub(id as usize),
                Format::DebugFrame => usize::try_from(id).ok(),
            }
            .ok_or(EhError::NoCie(at))?;
            let cie = match cies.get(&cie_at) {
                Some(c) => c.clone(),
                // A CIE after its FDE (allowed, rare): read it where it is.
                None => read_entry_cie(eh, cie_at, vaddr, format).ok_or(EhError::NoCie(at))?,
            };
            fde(entry, &cie);
        }
        at = end;
    }
    Ok(())
}

fn read_entry_cie(eh: &[u8], at: usize, vaddr: u64, format: Format) -> Option<Cie> {
    let mut r = Reader { d: eh, at };
    let len = r.u32()? as usize;
    let end = r.at.checked_add(len)?;
    if !format.is_cie(u64::from(r.u32()?), false) {
        return None;
    }
    read_cie(
        Reader {
            d: eh.get(..end)?,
            at: r.at,
        },
        vaddr,
        format,
    )
}

fn read_cie(mut r: Reader, vaddr: u64, format: Format) -> Option<Cie> {
    let version = r.u8()?;
    let aug = r.cstr()?;
    if aug.windows(2).any(|w| w == b"eh") {
        r.u64()?;
    }
    if format == Format::DebugFrame && version >= 4 {
        // address_size, segment_selector_size: 8-byte addresses, no segments.
        let (address_size, segment_size) = (r.u8()?, r.u8()?);
        if address_size != 8 || segment_size != 0 {
            return None;
        }
    }
    let code_align = r.uleb()?;
    let data_align = r.sleb()?;
    let ra_reg = if version == 1 {
        u64::from(r.u8()?)
    } else {
        r.uleb()?
    };
    let mut fde_enc = 0u8;
    let has_aug_data = aug.first() == Some(&b'z');
    if has_aug_data {
        let n = r.uleb()? as usize;
        let data_end = r.at.checked_add(n)?;
        for &c in &aug[1..] {
            match c {
                b'R' => fde_enc = r.u8()?,
                b'L' => {
                    r.u8()?;
                }
                b'P' => {
                    let enc = r.u8()?;
                    r.pointer(enc & 0x7f, vaddr).ok()??;
                }
                b'S' | b'B' | b'G' => {}
                _ => break,
            }
        }
        r.at = data_end;
    }
    Some(Cie {
        code_align,
        data_align,
        ra_reg,
        fde_enc,
        has_aug_data,
        initial: (r.at, r.d.len()),
    })
}

/// An FDE's first address and its length, read from the start of its body.
fn fde_bounds(r: &mut Reader, cie: &Cie, vaddr: u64) -> Result<(u64, u64), EhError> {
    let start = r
        .pointer(cie.fde_enc, vaddr)?
        .ok_or(EhError::Truncated(r.at))?;
    // The range has the format of the encoding, never its application.
    let range = r
        .pointer(cie.fde_enc & 0x0f, vaddr)?
        .ok_or(EhError::Truncated(r.at))?;
    Ok((start, range))
}

fn read_fde(mut r: Reader, cie: &Cie, eh: &[u8], vaddr: u64) -> Result<Option<Vec<Row>>, EhError> {
    let (start, range) = fde_bounds(&mut r, cie, vaddr)?;
    if start == 0 || range == 0 {
        return Ok(None);
    }
    if cie.has_aug_data {
        let n = r.uleb().ok_or(EhError::Truncated(r.at))?;
        let n = usize::try_from(n).map_err(|_| EhError::Truncated(r.at))?;
        r.bytes(n).ok_or(EhError::Truncated(r.at))?;
    }
    let initial = State {
        cfa: Cfa::Unknown,
        rbp: Rbp::Same,
        ra: if cie.ra_reg == REG_RA {
            Ra::AtCfaMinus8
        } else {
            Ra::Other
        },
    };
    let cie_code = eh
        .get(cie.initial.0..cie.initial.1)
        .ok_or(EhError::Truncated(cie.initial.0))?;
    // The CIE's instructions set the state every FDE starts from.
    let mut rows = Vec::new();
    let init = run(cie_code, cie, initial, None, start, &mut Vec::new());
    let fde_code = r.d.get(r.at..).unwrap_or(&[]);
    run(fde_code, cie, init, Some(init), start, &mut rows);
    // The FDE's first row is at its start; its end has no rule.
    if rows.first().is_none_or(|row| row.pc != start) {
        rows.insert(
            0,
            Row {
                pc: start,
                cfa: expressible(init),
                rbp: init.rbp,
            },
        );
    }
    rows.push(Row {
        pc: start.wrapping_add(range),
        cfa: Cfa::Unknown,
        rbp: Rbp::Unknown,
    });
    Ok(Some(rows))
}

fn expressible(s: State) -> Cfa {
    match s.ra {
        Ra::AtCfaMinus8 => s.cfa,
        Ra::Undefined => Cfa::Outermost,
        Ra::Other => Cfa::Unknown,
    }
}

/// Runs CFA instructions from `state` at `pc`, appending a row at every
/// advance; returns the final state. `initial` is the state `DW_CFA_restore`
/// goes back to (the CIE's; `None` while running the CIE itself).
fn run(
    code: &[u8],
    cie: &Cie,
    mut state: State,
    initial: Option<State>,
    mut pc: u64,
    rows: &mut Vec<Row>,
) -> State {
    let mut r = Reader { d: code, at: 0 };
    let mut stack: Vec<State> = Vec::new();
    let da = cie.data_align;
    let emit = |pc: u64, s: &State, rows: &mut Vec<Row>| {
        let row = Row {
            pc,
            cfa: expressible(*s),
            rbp: s.rbp,
        };
        match rows.last_mut() {
            Some(last) if last.pc == pc => *last = row,
            _ => rows.push(row),
        }
    };
    let set_reg = |state: &mut State, reg: u64, rule: Option<i64>| match reg {
        REG_RBP => {
            state.rbp = match rule {
                Some(off) => i32::try_from(off).map_or(Rbp::Unknown, Rbp::AtCfa),
                None => Rbp::Unknown,
            }
        }
        REG_RA => {
            state.ra = if rule == Some(-8) {
                Ra::AtCfaMinus8
            } else {
                Ra::Other
            }
        }
        _ => {}
    };
    let advance = |delta: u64, state: &State, pc: &mut u64, rows: &mut Vec<Row>| {
        emit(*pc, state, rows);
        *pc = pc.wrapping_add(delta.wrapping_mul(cie.code_align));
    };
    while let Some(op) = r.u8() {
        let low = u64::from(op & 0x3f);
        let ok = match op >> 6 {
            1 => {
                advance(low, &state, &mut pc, rows);
                Some(())
            }
            2 => r
                .uleb()
                .map(|off| set_reg(&mut state, low, (off as i64).checked_mul(da))),
            3 => {
                let base = initial.unwrap_or(state);
                match low {
                    REG_RBP => state.rbp = base.rbp,
                    REG_RA => state.ra = base.ra,
                    _ => {}
                }
                Some(())
            }
            _ => (|| {
                match op {
                    0x00 => {}
                    0x01 => {
                        // set_loc: an absolute address; rare in .eh_frame.
                        let to = r.pointer(cie.fde_enc, 0).ok()??;
                        emit(pc, &state, rows);
                        pc = to;
                    }
                    0x02 => advance(u64::from(r.u8()?), &state, &mut pc, rows),
                    0x03 => advance(u64::from(r.u16()?), &state, &mut pc, rows),
                    0x04 => advance(u64::from(r.u32()?), &state, &mut pc, rows),
                    0x05 => {
                        let (reg, off) = (r.uleb()?, r.uleb()?);
                        set_reg(&mut state, reg, (off as i64).checked_mul(da));
                    }
                    0x06 => {
                        let reg = r.uleb()?;
                        let base = initial.unwrap_or(state);
                        match reg {
                            REG_RBP => state.rbp = base.rbp,
                            REG_RA => state.ra = base.ra,
                            _ => {}
                        }
                    }
                    0x07 => {
                        let reg = r.uleb()?;
                        if reg == REG_RA {
                            state.ra = Ra::Undefined;
                        } else {
                            set_reg(&mut state, reg, None);
                        }
                    }
                    0x08 => {
                        let reg = r.uleb()?;
                        if reg == REG_RBP {
                            state.rbp = Rbp::Same;
                        }
                    }
                    0x09 => {
                        let (reg, _) = (r.uleb()?, r.uleb()?);
                        set_reg(&mut state, reg, None);
                    }
                    0x0a => {
                        if stack.len() < MAX_REMEMBERED {
                            stack.push(state);
                        }
                    }
                    0x0b => {
                        let saved = stack.pop()?;
                        state.cfa = saved.cfa;
                        state.rbp = saved.rbp;
                        state.ra = saved.ra;
                    }
                    0x0c => {
                        let (reg, off) = (r.uleb()?, r.uleb()?);
                        state.cfa = cfa_rule(reg, off as i64);
                    }
                    0x0d => {
                        let reg = r.uleb()?;
                        state.cfa = match (state.cfa, reg) {
                            (Cfa::Rsp(o) | Cfa::Rbp(o), REG_RSP) => Cfa::Rsp(o),
                            (Cfa::Rsp(o) | Cfa::Rbp(o), REG_RBP) => Cfa::Rbp(o),
                            _ => Cfa::Unknown,
                        };
                    }
                    0x0e => {
                        let off = r.uleb()?;
                        state.cfa = with_offset(state.cfa, off as i64);
                    }
                    0x0f => {
                        let n = r.uleb()? as usize;
                        let expr = r.bytes(n)?;
                        state.cfa = if is_plt_expression(expr) {
                            Cfa::Plt
                        } else {
                            Cfa::Unknown
                        };
                    }
                    0x10 => {
                        let reg = r.uleb()?;
                        let n = r.uleb()? as usize;
                        r.bytes(n)?;
                        set_reg(&mut state, reg, None);
                    }
                    0x11 => {
                        let (reg, off) = (r.uleb()?, r.sleb()?);
                        set_reg(&mut state, reg, off.checked_mul(da));
                    }
                    0x12 => {
                        let (reg, off) = (r.uleb()?, r.sleb()?);
                        state.cfa = cfa_rule(reg, off.saturating_mul(da));
                    }
                    0x13 => {
                        let off = r.sleb()?;
                        state.cfa = with_offset(state.cfa, off.saturating_mul(da));
                    }
                    0x14 | 0x15 => {
                        let reg = r.uleb()?;
                        if op == 0x14 {
                            r.uleb()?;
                        } else {
                            r.sleb()?;
                        }
                        set_reg(&mut state, reg, None);
                    }
                    0x16 => {
                        let reg = r.uleb()?;
                        let n = r.uleb()? as usize;
                        r.bytes(n)?;
                        set_reg(&mut state, reg, None);
                    }
                    0x2e => {
                        r.uleb()?;
                    }
                    0x2f => {
                        let (reg, off) = (r.uleb()?, r.uleb()?);
                        set_reg(
                            &mut state,
                            reg,
                            (off as i64).checked_neg().and_then(|n| n.checked_mul(da)),
                        );
                    }
                    _ => return None,
                }
                Some(())
            })(),
        };
        if ok.is_none() {
            // An instruction this reader cannot follow: nothing after it is
            // trusted.
            state.cfa = Cfa::Unknown;
            emit(pc, &state, rows);
            return state;
        }
    }
    emit(pc, &state, rows);
    state
}

fn cfa_rule(reg: u64, off: i64) -> Cfa {
    match (reg, i32::try_from(off)) {
        (REG_RSP, Ok(o)) => Cfa::Rsp(o),
        (REG_RBP, Ok(o)) => Cfa::Rbp(o),
        _ => Cfa::Unknown,
    }
}

fn with_offset(cfa: Cfa, off: i64) -> Cfa {
    match (cfa, i32::try_from(off)) {
        (Cfa::Rsp(_), Ok(o)) => Cfa::Rsp(o),
        (Cfa::Rbp(_), Ok(o)) => Cfa::Rbp(o),
        _ => Cfa::Unknown,
    }
}

/// The CFA expression binutils' and lld's x86-64 `.plt` FDEs carry:
/// `DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and;
/// DW_OP_lit11 (or lit10); DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`.
fn is_plt_expression(e: &[u8]) -> bool {
    e.len() == 11
        && e[..2] == [0x77, 0x08]
        && e[2..6] == [0x80, 0x00, 0x3f, 0x1a]
        && (e[6] == 0x3b || e[6] == 0x3a)
        && e[7..] == [0x2a, 0x33, 0x24, 0x22]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-made CIE + FDE: push rbp; mov rbp,rsp; ...; the usual prologue.
    pub(crate) fn framed() -> Vec<u8> {
        let mut cie = vec![];
        cie.extend_from_slice(&0u32.to_le_bytes()); // CIE id
        cie.push(1); // version
        cie.extend_from_slice(b"zR\0");
        cie.push(1); // code align
        cie.push(0x78); // data align -8
        cie.push(16); // RA register
        cie.push(1); // aug data length
        cie.push(0x1b); // pcrel | sdata4
        cie.extend_from_slice(&[0x0c, 7, 8]); // def_cfa rsp+8
        cie.extend_from_slice(&[0x90, 1]); // offset r16 at cfa-8
        while (cie.len() + 4) % 8 != 0 {
            cie.push(0);
        }
        let mut out = (cie.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&cie);
        let fde_at = out.len();
        let mut fde = vec![];
        fde.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // CIE pointer
        // pc_begin: pcrel to 0x1000 from the field at fde_at + 8.
        let field = (fde_at + 8) as i64;
        fde.extend_from_slice(&((0x1000 - field) as i32).to_le_bytes());
        fde.extend_from_slice(&0x40u32.to_le_bytes()); // range
        fde.push(0); // aug data length
        fde.extend_from_slice(&[0x41, 0x0e, 16, 0x86, 2]); // +1: cfa rsp+16; rbp at cfa-16
        fde.extend_from_slice(&[0x43, 0x0d, 6]); // +3: cfa register rbp
        fde.extend_from_slice(&[0x78, 0x0c, 7, 8]); // +0x38: cfa rsp+8 (after leave)
        while (fde.len() + 4) % 8 != 0 {
            fde.push(0);
        }
        out.extend_from_slice(&(fde.len() as u32).to_le_bytes());
        out.extend_from_slice(&fde);
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn reads_a_framed_prologue() {
        let rows = rows(&framed(), 0).unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    pc: 0x1000,
                    cfa: Cfa::Rsp(8),
                    rbp: Rbp::Same
                },
                Row {
                    pc: 0x1001,
                    cfa: Cfa::Rsp(16),
                    rbp: Rbp::AtCfa(-16)
                },
                Row {
                    pc: 0x1004,
                    cfa: Cfa::Rbp(16),
                    rbp: Rbp::AtCfa(-16)
                },
                Row {
                    pc: 0x103c,
                    cfa: Cfa::Rsp(8),
                    rbp: Rbp::AtCfa(-16)
                },
                Row {
                    pc: 0x1040,
                    cfa: Cfa::Unknown,
                    rbp: Rbp::Unknown
                },
            ]
        );
    }

    #[test]
    fn truncated_or_garbage_input_never_panics() {
        let good = framed();
        for cut in 0..good.len() {
            let _ = rows(&good[..cut], 0);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut bad = good.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (x as usize >> 8) % bad.len();
            bad[i] ^= (x >> 24) as u8 | 1;
            let _ = rows(&bad, 0);
        }
    }

    #[test]
    fn recognises_the_plt_expression() {
        assert!(is_plt_expression(&[
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22
        ]));
        assert!(!is_plt_expression(&[0x77, 0x08]));
    }

    /// The rule at `pc` in sorted `rows`.
    fn at(rows: &[Row], pc: u64) -> Option<&Row> {
        let i = rows.partition_point(|r| r.pc <= pc);
        rows.get(i.checked_sub(1)?)
    }

    /// Every row binutils' own reader prints (`readelf -wF`) for `path`'s
    /// `.eh_frame` is the rule this reader gives at that address: CFA and RBP.
    fn agrees_with_readelf(path: &std::path::Path) -> usize {
        let file = std::fs::read(path).unwrap();
        let elf = crate::native::elf::Elf::parse(&file).unwrap();
        let section = elf.section(".eh_frame").unwrap();
        let ours = rows(elf.section_data(&file, ".eh_frame").unwrap(), section.addr).unwrap();
        let out = std::process::Command::new("readelf")
            .arg("-wF")
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (mut columns, mut in_fde, mut checked) = (Vec::new(), false, 0);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && (f[3] == "FDE" || f[3] == "CIE") {
                in_fde = f[3] == "FDE";
                continue;
            }
            if f.first() == Some(&"LOC") {
                columns = f.clone();
                continue;
            }
            if !in_fde || f.len() != columns.len() || f.is_empty() || f[0].len() != 16 {
                continue;
            }
            let Ok(pc) = u64::from_str_radix(f[0], 16) else {
                continue;
            };
            let reg_offset = |reg: &str| -> Option<i32> {
                let rest = f[1].strip_prefix(reg)?;
                rest.strip_prefix('+').unwrap_or(rest).parse().ok()
            };
            let want_cfa = reg_offset("rsp")
                .map(Cfa::Rsp)
                .or_else(|| reg_offset("rbp").map(Cfa::Rbp));
            let want_rbp = match columns.iter().position(|c| *c == "rbp") {
                None => Some(Rbp::Same),
                Some(i) if f[i] == "u" => Some(Rbp::Same),
                Some(i) => f[i]
                    .strip_prefix("c")
                    .and_then(|o| o.parse().ok())
                    .map(Rbp::AtCfa),
            };
            let row =
                at(&ours, pc).unwrap_or_else(|| panic!("{}: no row at {pc:#x}", path.display()));
            let ra = columns.iter().position(|c| *c == "ra").map(|i| f[i]);
            if ra == Some("u") {
                assert_eq!(
                    row.cfa,
                    Cfa::Outermost,
                    "{}: at {pc:#x}: {line}",
                    path.display()
                );
                checked += 1;
                continue;
            }
            // The return address elsewhere than CFA - 8 (hand-written stubs):
            // not followed, never guessed.
            if ra.is_some_and(|ra| ra != "c-8") {
                assert_eq!(
                    row.cfa,
                    Cfa::Unknown,
                    "{}: at {pc:#x}: {line}",
                    path.display()
                );
                checked += 1;
                continue;
            }
            match want_cfa {
                Some(cfa) => assert_eq!(row.cfa, cfa, "{}: CFA at {pc:#x}: {line}", path.display()),
                None => assert!(
                    matches!(row.cfa, Cfa::Plt | Cfa::Unknown),
                    "{}: CFA at {pc:#x}: {line}: {row:?}",
                    path.display()
                ),
            }
            if want_cfa.is_some()
                && let Some(rbp) = want_rbp
            {
                assert_eq!(row.rbp, rbp, "{}: RBP at {pc:#x}: {line}", path.display());
            }
            checked += 1;
        }
        checked
    }

    #[test]
    fn agrees_with_binutils_on_libc() {
        let checked = agrees_with_readelf(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(checked > 10_000, "only {checked} rows compared");
    }

    /// The .NET runtime's own library (stripped, C++ with exceptions), as
    /// `cargo xtask bootstrap` installs it.
    #[test]
    fn agrees_with_binutils_on_libcoreclr() {
        let home = std::env::var("HOME").unwrap();
        let root = std::path::Path::new(&home).join(".cache/crossprof/dotnet8");
        let found = walk(&root)
            .into_iter()
            .find(|p| p.ends_with("libcoreclr.so"));
        let lib = found.expect("libcoreclr.so under ~/.cache/crossprof/dotnet8");
        let checked = agrees_with_readelf(&lib);
        assert!(checked > 10_000, "only {checked} rows compared");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
