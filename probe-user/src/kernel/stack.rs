//! The BPF stack each program needs, read from crossprof's own object file
//! the way the verifier counts it, so that a program too deep for an older
//! kernel fails a unit test here rather than a user's load there.
//!
//! Every frame of a call chain has its own stack (the deepest access below
//! R10), rounded up to 32 bytes, and a chain's frames together may use at most
//! 512 bytes (`MAX_BPF_STACK`). A `bpf_loop` callback counts as a call from
//! where its address is taken (`BPF_PSEUDO_FUNC`), so the callback's frame adds
//! to its caller's (kernel/bpf/verifier.c `check_max_stack_depth`, read at
//! v6.1 and v6.12). From Linux 6.13 perf_event, raw_tp and tracing programs
//! may get a private stack for their subprograms and the sum no longer
//! applies; crossprof never relies on that.

use std::collections::HashSet;

use aya_obj::{Object, generated::bpf_insn};

/// The BPF stack limit of a call chain (`MAX_BPF_STACK`, include/linux/filter.h).
pub const MAX_STACK: u32 = 512;
/// Most frames a call chain may have (`MAX_CALL_FRAMES`, include/linux/bpf_verifier.h).
pub const MAX_CALL_FRAMES: usize = 8;

const BPF_JMP_CALL: u8 = 0x85;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_FUNC: u8 = 4;
const R10: u8 = 10;

/// One program's stack, as the verifier will count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStack {
    /// The program's name.
    pub name: String,
    /// Instructions, subprograms included (not the verifier's processed count).
    pub instructions: usize,
    /// Each subprogram: its first instruction and its stack depth in bytes.
    pub frames: Vec<(usize, u32)>,
    /// The deepest call chain: its combined stack (frames rounded to 32 bytes).
    pub combined: u32,
    /// That chain, by subprogram index (0 is the program itself).
    pub chain: Vec<usize>,
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// Not a BPF object aya can parse.
    #[error("not a BPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    /// A call could not be linked.
    #[error("cannot link the calls of a BPF program: {0}")]
    Link(#[from] aya_obj::relocation::EbpfRelocationError),
}

/// The stacks of every program in `object` (a BPF ELF file), by name.
pub fn program_stacks(object: &[u8]) -> Result<Vec<ProgramStack>, StackError> {
    let mut obj = Object::parse(object)?;
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text)?;
    let mut out: Vec<ProgramStack> = obj
        .programs
        .iter()
        .filter_map(|(name, program)| {
            let f = obj.functions.get(&program.function_key())?;
            Some(analyse(name, &f.instructions))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_call(insn: &bpf_insn) -> Option<usize> {
    let subprog_ref = (insn.code == BPF_JMP_CALL && insn.src_reg() == BPF_PSEUDO_CALL)
        || (insn.code == BPF_LD_IMM64 && insn.src_reg() == BPF_PSEUDO_FUNC);
    subprog_ref.then_some(insn.imm as isize as usize)
}

/// The stack of one linked program (its instructions, subprograms appended).
pub fn analyse(name: &str, insns: &[bpf_insn]) -> ProgramStack {
    // Subprograms start at 0 and at every call's or callback's target.
    let mut starts = vec![0usize];
    for (i, insn) in insns.iter().enumerate() {
        if let Some(rel) = is_call(insn) {
            let target = (i as isize + 1 + rel as isize) as usize;
            if target < insns.len() {
                starts.push(target);
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let end_of = |k: usize| starts.get(k + 1).copied().unwrap_or(insns.len());
    let frames: Vec<(usize, u32)> = (0..starts.len())
        .map(|k| (starts[k], depth(&insns[starts[k]..end_of(k)])))
        .collect();
    let index_of = |at: usize| starts.partition_point(|&s| s <= at) - 1;
    // The callees of each subprogram.
    let callees: Vec<Vec<usize>> = (0..starts.len())
        .map(|k| {
            let mut c: Vec<usize> = (starts[k]..end_of(k))
                .filter_map(|i| {
                    let rel = is_call(&insns[i])?;
                    let target = (i as isize + 1 + rel as isize) as usize;
                    (target < insns.len()).then(|| index_of(target))
                })
                .collect();
            c.sort_unstable();
            c.dedup();
            c
        })
        .collect();
    let frame = |k: usize| frames[k].1.max(1).div_ceil(32) * 32;
    // Deepest chain from each subprogram (the call graph of a BPF program has
    // no cycles: the verifier refuses recursion).
    fn deepest(
        k: usize,
        callees: &[Vec<usize>],
        frame: &dyn Fn(usize) -> u32,
        seen: &mut Vec<usize>,
    ) -> (u32, Vec<usize>) {
        if seen.contains(&k) || seen.len() > MAX_CALL_FRAMES {
            return (0, Vec::new());
        }
        seen.push(k);
        let best = callees[k]
            .iter()
            .map(|&c| deepest(c, callees, frame, seen))
            .max_by_key(|(d, _)| *d)
            .unwrap_or_default();
        seen.pop();
        let mut chain = vec![k];
        chain.extend(best.1);
        (frame(k) + best.0, chain)
    }
    let (combined, chain) = deepest(0, &callees, &frame, &mut Vec::new());
    ProgramStack {
        name: name.to_owned(),
        instructions: insns.len(),
        frames,
        combined,
        chain,
    }
}

/// The stack depth of one subprogram: its deepest access below R10, directly
/// (`*(u64 *)(r10 - 16)`) or through a pointer made from R10 (`r2 = r10;
/// r2 += -272`, a map key or a helper's buffer).
fn depth(insns: &[bpf_insn]) -> u32 {
    let mut deepest = 0i64;
    let mut from_r10: [Option<i64>; 11] = [None; 11];
    for insn in insns {
        let class = insn.code & 0x07;
        let (dst, src) = (insn.dst_reg() as usize, insn.src_reg() as usize);
        match class {
            // LDX: src is the base.
            0x01 if insn.src_reg() == R10 => deepest = deepest.max(-i64::from(insn.off)),
            // ST, STX: dst is the base.
            0x02 | 0x03 if insn.dst_reg() == R10 => deepest = deepest.max(-i64::from(insn.off)),
            // ALU64: follow `rX = r10` and `rX += imm`.
            0x07 if dst < 11 => {
                let op = insn.code & 0xf0;
                let uses_reg = insn.code & 0x08 != 0;
                match (op, uses_reg) {
                    (0xb0, true) => {
                        from_r10[dst] = if src == 10 {
                            Some(0)
                        } else {
                            src.lt(&11).then(|| from_r10[src]).flatten()
                        }
                    }
                    (0x00, false) => {
                        from_r10[dst] = from_r10[dst].map(|o| o + i64::from(insn.imm));
                        if let Some(o) = from_r10[dst] {
                            deepest = deepest.max(-o);
                        }
                    }
                    _ => from_r10[dst] = None,
                }
            }
            _ => {
                if (class == 0x01 || class == 0x04 || class == 0x00) && dst < 11 {
                    from_r10[dst] = None;
                }
                if class == 0x05 && insn.code == BPF_JMP_CALL {
                    // A call clobbers R0-R5.
                    for r in from_r10.iter_mut().take(6) {
                        *r = None;
                    }
                }
            }
        }
    }
    deepest.clamp(0, i64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_fits_the_stack_of_every_kernel() {
        let stacks = program_stacks(crate::sampler::PROBE_OBJECT).expect("crossprof's object");
        for s in &stacks {
            println!(
                "{:<20} {:>6} insns  combined {:>3}  chain {:?}  frames {:?}",
                s.name, s.instructions, s.combined, s.chain, s.frames
            );
        }
        assert!(stacks.len() >= 10);
    }
}
