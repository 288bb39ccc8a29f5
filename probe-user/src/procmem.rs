//! A process's memory, read-only through its `/proc/PID/mem`: what the
//! runtimes whose state crossprof reads there share (.NET's code heaps and
//! method descriptors in `dotnet/memory.rs`, Go's goroutines in
//! `go/states.rs`). A leaf (it imports nothing of the crate).

use std::{fs::File, os::unix::fs::FileExt as _};

/// Reads of a process's memory (a trait so that the walks can be tested on
/// made-up memory).
pub trait Memory {
    /// Fills `buf` from `addr`; false if any of it cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// The `N` bytes at `addr`.
    fn array<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.read(addr, &mut b).then_some(b)
    }

    /// The `len` bytes at `addr` (the caller bounds `len`).
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.read(addr, &mut b).then_some(b)
    }

    /// The little-endian `u64` at `addr`.
    fn u64(&self, addr: u64) -> Option<u64> {
        self.array(addr).map(u64::from_le_bytes)
    }

    /// The little-endian `u32` at `addr`.
    fn u32(&self, addr: u64) -> Option<u32> {
        self.array(addr).map(u32::from_le_bytes)
    }

    /// A pointer at `addr`: a user-space address (below 2^47), not null,
    /// with its bit-0 tag (the code-range map's) cleared if `tagged`.
    fn pointer(&self, addr: u64, tagged: bool) -> Option<u64> {
        let p = self.u64(addr)?;
        user_pointer(if tagged { p & !1 } else { p })
    }
}

/// `p` if it is a user-space address (below 2^47) and not null.
pub fn user_pointer(p: u64) -> Option<u64> {
    (p != 0 && p < 1 << 47).then_some(p)
}

impl Memory for File {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_exact_at(buf, addr).is_ok()
    }
}

/// Reads each of `wants` (address, length), several at once where they lie
/// close together: one read per run of requests within `BATCH_SPAN` bytes,
/// none more than `BATCH_GAP` after the one before
/// (a JIT's methods and their code headers, and a Go program's `g`s, are
/// allocated one after another: a read of /proc/PID/mem costs as much for 64
/// bytes as for kilobytes, ~2 µs here, and takes the target's memory-map lock
/// each time). A run whose read fails (a hole between its requests) is read
/// request by request. `f` is handed each request's index in `wants` and its
/// bytes, `None` for one that cannot be read, in address order; a request of
/// 0 bytes is not read nor handed.
pub fn each_batched(
    mem: &impl Memory,
    wants: &[(u64, usize)],
    mut f: impl FnMut(usize, Option<&[u8]>),
) {
    let mut order: Vec<usize> = (0..wants.len()).filter(|&i| wants[i].1 > 0).collect();
    order.sort_unstable_by_key(|&i| wants[i].0);
    let mut buf = Vec::new();
    let mut one = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let first = wants[order[i]].0;
        let mut end = first.saturating_add(wants[order[i]].1 as u64);
        let mut j = i + 1;
        while j < order.len() {
            let (a, n) = wants[order[j]];
            let e = a.saturating_add(n as u64).max(end);
            if e - first > BATCH_SPAN || a > end.saturating_add(BATCH_GAP) {
                break;
            }
            end = e;
            j += 1;
        }
        buf.clear();
        buf.resize((end - first) as usize, 0);
        let whole = mem.read(first, &mut buf);
        for &k in &order[i..j] {
            let (a, n) = wants[k];
            if whole {
                let at = (a - first) as usize;
                f(k, buf.get(at..at + n));
            } else {
                one.clear();
                one.resize(n, 0);
                f(k, mem.read(a, &mut one).then_some(&one[..]));
            }
        }
        i = j;
    }
}

/// [`each_batched`]'s bytes, one owned copy per request (`None`: not read).
pub fn read_batched(mem: &impl Memory, wants: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
    let mut out = vec![None; wants.len()];
    each_batched(mem, wants, |k, bytes| out[k] = bytes.map(<[u8]>::to_vec));
    out
}

/// The most bytes [`each_batched`] reads at once.
const BATCH_SPAN: u64 = 64 << 10;
/// The widest gap [`each_batched`] reads through to join two requests: the
/// kernel copies /proc/PID/mem a page at a time (a page looked up in the
/// target's page tables, then copied twice), so a page of gap costs about
/// what another read does; 64 KiB runs of sparse requests (.NET's code-range
/// map pages and fragments) cost more than the reads they saved.
const BATCH_GAP: u64 = 4 << 10;

/// Counts the reads made of `M` (for tests of how many a walk makes).
#[cfg(test)]
pub(crate) struct Counting<M>(pub M, pub std::cell::Cell<u32>);

#[cfg(test)]
impl<M: Memory> Memory for Counting<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.1.set(self.1.get() + 1);
        self.0.read(addr, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through made-up memory with holes: requests in one run are read at
    /// once; within a run that crosses a hole, each is read alone and the
    /// one in the hole is `None`.
    #[test]
    fn batched_reads_read_runs_at_once_and_holes_one_by_one() {
        let mut r = crate::dotnet::memory::Regions::default();
        r.put(0x1000, &(0..=255).collect::<Vec<u8>>());
        r.put(0x9000, &[7; 16]);
        r.put(0x20000, &[9; 16]);
        let mem = Counting(r, std::cell::Cell::new(0));
        let got = read_batched(&mem, &[(0x1010, 2), (0x1000, 4), (0x20000, 2), (0x5000, 0)]);
        assert_eq!(
            got,
            vec![
                Some(vec![0x10, 0x11]),
                Some(vec![0, 1, 2, 3]),
                Some(vec![9, 9]),
                None
            ]
        );
        // One read for the first two, one for the third (over 64 KiB away:
        // two runs), none for the empty one.
        assert_eq!(mem.1.get(), 2);
        // Within a run but across a hole: each read alone, the hole's None.
        mem.1.set(0);
        let got = read_batched(&mem, &[(0x10f0, 8), (0x2000, 4), (0x9008, 8)]);
        assert_eq!(
            got,
            vec![Some((0xf0..0xf8).collect()), None, Some(vec![7; 8])]
        );
        assert_eq!(mem.1.get(), 4);
    }

    /// Through a file as the memory (what a `/proc/PID/mem` is): neighbours
    /// (a Go program's `g`s, 448 bytes apart) read in runs, far ones alone,
    /// and a request that cannot be read (past the end) handed as `None`
    /// without losing the neighbours it was batched with; each reading is
    /// the bytes at its address, in address order.
    #[test]
    fn batched_reads_of_a_file_hand_each_request_its_bytes() {
        let path = std::env::temp_dir().join(format!("crossprof-procmem-{}", std::process::id()));
        let memory: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &memory).unwrap();
        let mem = File::open(&path).unwrap();
        let need = 400;
        // A run of neighbours (one read), one alone, a run longer than
        // BATCH_SPAN, a run whose last request is past the end (its first
        // then read alone), and one far past it.
        let mut addrs: Vec<u64> = (0..18).map(|i| 1000 + i * 448).collect();
        addrs.push(100_000);
        addrs.extend((0..200).map(|i| 150_000 + i * 448));
        addrs.extend([299_000, 299_800, 400_000]);
        let wants: Vec<(u64, usize)> = addrs.iter().map(|&a| (a, need)).collect();
        let (mut seen, mut missing) = (Vec::new(), Vec::new());
        each_batched(&mem, &wants, |k, bytes| {
            let a = wants[k].0;
            match bytes {
                Some(bytes) => {
                    assert_eq!(bytes, &memory[a as usize..a as usize + need], "at {a}");
                    seen.push(a);
                }
                None => missing.push(a),
            }
        });
        std::fs::remove_file(&path).unwrap();
        let (readable, unreadable): (Vec<u64>, Vec<u64>) = addrs
            .iter()
            .partition(|&&a| a as usize + need <= memory.len());
        assert_eq!(seen, readable);
        assert_eq!(missing, unreadable);
    }

    /// Requests join a run across gaps up to `BATCH_GAP` and within
    /// `BATCH_SPAN`, never across a wider gap.
    #[test]
    fn runs_join_across_small_gaps_only() {
        let path = std::env::temp_dir().join(format!("crossprof-gaps-{}", std::process::id()));
        let memory: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &memory).unwrap();
        let mem = Counting(File::open(&path).unwrap(), Default::default());
        std::fs::remove_file(&path).unwrap();
        let reads = |addrs: &[u64]| {
            mem.1.set(0);
            let wants: Vec<(u64, usize)> = addrs.iter().map(|&a| (a, 32)).collect();
            let mut handed = 0;
            each_batched(&mem, &wants, |k, bytes| {
                let a = wants[k].0 as usize;
                assert_eq!(bytes, Some(&memory[a..a + 32]));
                handed += 1;
            });
            assert_eq!(handed, addrs.len());
            mem.1.get()
        };
        let gap = BATCH_GAP;
        assert_eq!(reads(&[0, 32 + gap, 64 + 2 * gap]), 1);
        assert_eq!(reads(&[0, 33 + gap]), 2);
        assert_eq!(reads(&[0, 40_000, 80_000, 120_000]), 4);
        let steps: Vec<u64> = (0..40).map(|i| i * 2048).collect();
        assert_eq!(reads(&steps), 2, "a run ends at BATCH_SPAN");
    }
}
