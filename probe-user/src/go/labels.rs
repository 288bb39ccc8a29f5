//! A goroutine's pprof labels (`pprof.Do`, `pprof.SetGoroutineLabels`), read from
//! the process's memory (`/proc/PID/mem`, read-only) at the `g.labels` pointer the
//! kernel sent with the sample (layouts in [`super::offsets`]).
//!
//! A label set is immutable once made (a new one is allocated for every change),
//! so each pointer is read once and cached. Everything read is checked (sizes,
//! counts, UTF-8) and a set that does not read whole is no labels, never a
//! partial or wrong one.

use std::{collections::HashMap, fs::File, sync::Arc};

use super::offsets::LabelLayout;
use crate::procmem::Memory as _;
use crate::replay::source::ProcSource;

/// `(key, value)` pairs, sorted by key.
pub type LabelSet = Arc<[(String, String)]>;

/// Most labels read from one set, and longest key or value.
const MAX_LABELS: u64 = 64;
const MAX_STRING: u64 = 4096;

/// One process's label sets, by `g.labels` pointer.
#[derive(Debug)]
pub struct Labels {
    pid: u32,
    mem: Option<File>,
    layout: LabelLayout,
    cache: HashMap<u64, Option<LabelSet>>,
    /// Where each set read is also written (`record --capture`).
    source: ProcSource,
}

impl Labels {
    /// Reads labels of `pid`, laid out as `layout`: from its memory, or,
    /// replaying a capture, as the capture read them (see
    /// [`crate::replay`]).
    pub fn open(pid: u32, layout: LabelLayout, source: &ProcSource) -> Self {
        let cache = source
            .captured_labels(pid)
            .into_iter()
            .map(|(ptr, set)| (ptr, set.map(Arc::from)))
            .collect();
        Self {
            pid,
            mem: source
                .is_live()
                .then(|| File::open(format!("/proc/{pid}/mem")).ok())
                .flatten(),
            layout,
            cache,
            source: source.clone(),
        }
    }

    /// The label set at `ptr` (a `g.labels` value), if it reads.
    pub fn get(&mut self, ptr: u64) -> Option<LabelSet> {
        if ptr == 0 {
            return None;
        }
        if let Some(set) = self.cache.get(&ptr) {
            return set.clone();
        }
        let set: Option<LabelSet> = self.read(ptr).map(|mut v| {
            v.sort();
            Arc::from(v)
        });
        self.source.labels_read(self.pid, ptr, set.as_deref());
        self.cache.insert(ptr, set.clone());
        set
    }

    fn word(&self, addr: u64) -> Option<u64> {
        self.mem.as_ref()?.u64(addr)
    }

    fn string(&self, ptr: u64, len: u64) -> Option<String> {
        if len > MAX_STRING || (len > 0 && ptr == 0) {
            return None;
        }
        String::from_utf8(self.mem.as_ref()?.bytes(ptr, len as usize)?).ok()
    }

    fn read(&self, ptr: u64) -> Option<Vec<(String, String)>> {
        match self.layout {
            // A slice header {data, len, cap} of {key, value string} (32 bytes).
            LabelLayout::Slice => {
                let (data, len, cap) = (self.word(ptr)?, self.word(ptr + 8)?, self.word(ptr + 16)?);
                if len > MAX_LABELS || len > cap {
                    return None;
                }
                (0..len)
                    .map(|i| {
                        let e = data + 32 * i;
                        Some((
                            self.string(self.word(e)?, self.word(e + 8)?)?,
                            self.string(self.word(e + 16)?, self.word(e + 24)?)?,
                        ))
                    })
                    .collect()
            }
            // *map[string]string: the map header (runtime/map.go `hmap`, Go 1.19-1.23:
            // count int @0, B uint8 @9, buckets @16) and its buckets (`bmap`: tophash
            // [8]u8, keys [8]string, elems [8]string, overflow pointer = 272 bytes);
            // a slot is full when its tophash is >= minTopHash (5).
            LabelLayout::Map => {
                let h = self.word(ptr)?;
                if h == 0 {
                    return Some(Vec::new());
                }
                let count = self.word(h)?;
                let b = (self.word(h + 8)? >> 8) & 0xFF;
                let buckets = self.word(h + 16)?;
                if count > MAX_LABELS || b > 4 || self.word(h + 24)? != 0 {
                    return None; // too big, or mid-growth (oldbuckets set)
                }
                let mut out = Vec::new();
                for i in 0..(1u64 << b) {
                    let mut bucket = buckets + 272 * i;
                    for _ in 0..4 {
                        let tophash: [u8; 8] = self.mem.as_ref()?.array(bucket)?;
                        for (j, &t) in tophash.iter().enumerate() {
                            if t < 5 {
                                continue;
                            }
                            let k = bucket + 8 + 16 * j as u64;
                            let v = bucket + 8 + 128 + 16 * j as u64;
                            out.push((
                                self.string(self.word(k)?, self.word(k + 8)?)?,
                                self.string(self.word(v)?, self.word(v + 8)?)?,
                            ));
                        }
                        bucket = self.word(bucket + 264)?;
                        if bucket == 0 {
                            break;
                        }
                    }
                }
                (out.len() as u64 == count).then_some(out)
            }
        }
    }
}
