//! Reading a pprof profile back (for `crossprof diff`, and the tests): gzip
//! undone (bounded), then the messages of `profile.proto` walked field by
//! field, every length checked against what is left.

use std::collections::{BTreeMap, HashMap};

/// The most a profile may hold once decompressed: a gzip bomb stops here.
pub const MAX_GUNZIP: usize = 256 << 20;

/// `data` un-gzipped if it is gzip (one member), else as it is.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.get(..2) != Some(&[0x1f, 0x8b]) {
        return Ok(data.to_vec());
    }
    let flags = *data.get(3).ok_or("truncated gzip header")?;
    let mut at = 10;
    if flags & 4 != 0 {
        let x = data.get(at..at + 2).ok_or("truncated gzip header")?;
        at += 2 + u16::from_le_bytes([x[0], x[1]]) as usize;
    }
    for bit in [8, 16] {
        if flags & bit != 0 {
            at += 1 + data
                .get(at..)
                .and_then(|d| d.iter().position(|&b| b == 0))
                .ok_or("truncated gzip header")?;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    miniz_oxide::inflate::decompress_to_vec_with_limit(
        data.get(at..).unwrap_or_default(),
        MAX_GUNZIP,
    )
    .map_err(|e| match e.status {
        miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
            format!("more than {} MiB once decompressed", MAX_GUNZIP >> 20)
        }
        _ => format!("corrupt gzip data ({e:?})"),
    })
}

/// A profile read back: its sample types and stacks, folded (root first, each
/// inlined call its own frame), with one value per sample type.
#[derive(Debug, Default)]
pub struct Read {
    /// `(type, unit)` per value column.
    pub sample_types: Vec<(String, String)>,
    /// The default sample type's column.
    pub default_column: usize,
    /// Folded stack -> values.
    pub stacks: BTreeMap<String, Vec<i64>>,
}

/// Reads a pprof profile (gzipped or not).
pub fn read(data: &[u8]) -> Result<Read, String> {
    read_pid(data, None)
}

/// Reads a pprof profile (gzipped or not), only the samples of process `pid`
/// (its `pid` label) if given.
pub fn read_pid(data: &[u8], pid: Option<u32>) -> Result<Read, String> {
    let data = gunzip(data)?;
    let mut strings = Vec::new();
    let mut types = Vec::new();
    let mut samples = Vec::new();
    let mut locations: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut functions: HashMap<u64, u64> = HashMap::new();
    let mut default_type = 0;
    for field in Fields(&data) {
        match field? {
            (1, Field::Bytes(b)) => {
                let mut t = (0, 0);
                for f in Fields(b) {
                    match f? {
                        (1, Field::Int(v)) => t.0 = v,
                        (2, Field::Int(v)) => t.1 = v,
                        _ => {}
                    }
                }
                types.push(t);
            }
            (2, Field::Bytes(b)) => {
                let (mut locs, mut values, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                for f in Fields(b) {
                    match f? {
                        (3, Field::Bytes(l)) => {
                            let (mut k, mut v, mut num) = (0, 0, None);
                            for lf in Fields(l) {
                                match lf? {
                                    (1, Field::Int(x)) => k = x,
                                    (2, Field::Int(x)) => v = x,
                                    (3, Field::Int(x)) => num = Some(x),
                                    _ => {}
                                }
                            }
                            labels.push((k, v, num));
                        }
                        (1, Field::Int(v)) => locs.push(v),
                        (1, Field::Bytes(p)) => locs.extend(packed(p)?),
                        (2, Field::Int(v)) => values.push(v as i64),
                        (2, Field::Bytes(p)) => values.extend(packed(p)?.map(|v| v as i64)),
                        _ => {}
                    }
                }
                samples.push((locs, values, labels));
            }
            (4, Field::Bytes(b)) => {
                let (mut id, mut funcs) = (0, Vec::new());
                for f in Fields(b) {
                    match f? {
                        (1, Field::Int(v)) => id = v,
                        (4, Field::Bytes(line)) => {
                            for lf in Fields(line) {
                                if let (1, Field::Int(v)) = lf? {
                                    funcs.push(v);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                locations.insert(id, funcs);
            }
            (5, Field::Bytes(b)) => {
                let (mut id, mut name) = (0, 0);
                for f in Fields(b) {
                    match f? {
                        (1, Field::Int(v)) => id = v,
                        (2, Field::Int(v)) => name = v,
                        _ => {}
                    }
                }
                functions.insert(id, name);
            }
            (6, Field::Bytes(b)) => strings.push(String::from_utf8_lossy(b).into_owned()),
            (14, Field::Int(v)) => default_type = v,
            _ => {}
        }
    }
    let string = |i: u64| strings.get(i as usize).cloned().unwrap_or_default();
    let mut out = Read {
        sample_types: types.iter().map(|&(t, u)| (string(t), string(u))).collect(),
        ..Read::default()
    };
    out.default_column = types
        .iter()
        .position(|&(t, _)| t == default_type && default_type != 0)
        .unwrap_or(types.len().saturating_sub(1));
    let comm_key = strings.iter().position(|s| s == "comm").map(|i| i as u64);
    let pid_key = strings.iter().position(|s| s == "pid").map(|i| i as u64);
    for (locs, values, labels) in samples {
        if let Some(pid) = pid {
            let of = labels
                .iter()
                .find(|l| Some(l.0) == pid_key)
                .and_then(|l| l.2);
            if of != Some(u64::from(pid)) {
                continue;
            }
        }
        let mut frames: Vec<String> = Vec::new();
        // crossprof's own profiles: the process is the root, as in its
        // folded stacks.
        if let Some(&(_, v, _)) = labels.iter().find(|l| Some(l.0) == comm_key) {
            frames.push(crate::frame::sanitize(&string(v)).into_owned());
        }
        for id in locs.iter().rev() {
            let funcs = locations.get(id).ok_or(format!(
                "sample names location {id}, which the profile does not have"
            ))?;
            for f in funcs.iter().rev() {
                let name = functions.get(f).map(|&n| string(n)).unwrap_or_default();
                frames.push(if name.is_empty() {
                    "[unknown]".to_owned()
                } else {
                    crate::frame::sanitize(&name).into_owned()
                });
            }
        }
        let line = if frames.is_empty() {
            "[unknown]".to_owned()
        } else {
            frames.join(";")
        };
        let e = out
            .stacks
            .entry(line)
            .or_insert_with(|| vec![0; values.len()]);
        for (a, v) in e.iter_mut().zip(&values) {
            *a += v;
        }
    }
    Ok(out)
}

enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message.
struct Fields<'a>(&'a [u8]);

pub(super) fn varint(d: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = d.split_first().ok_or("truncated varint")?;
        *d = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Field<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let mut field = || -> Result<(u64, Field<'a>), String> {
            let key = varint(&mut self.0)?;
            let value = match key & 7 {
                0 => Field::Int(varint(&mut self.0)?),
                1 => {
                    let (b, rest) = self.0.split_at_checked(8).ok_or("truncated fixed64")?;
                    self.0 = rest;
                    Field::Int(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                }
                2 => {
                    let len = varint(&mut self.0)? as usize;
                    let (b, rest) = self.0.split_at_checked(len).ok_or("truncated field")?;
                    self.0 = rest;
                    Field::Bytes(b)
                }
                5 => {
                    let (b, rest) = self.0.split_at_checked(4).ok_or("truncated fixed32")?;
                    self.0 = rest;
                    Field::Int(u64::from(u32::from_le_bytes(
                        b.try_into().expect("4 bytes"),
                    )))
                }
                w => return Err(format!("wire type {w} is not protobuf's")),
            };
            Ok((key >> 3, value))
        };
        let r = field();
        if r.is_err() {
            self.0 = &[];
        }
        Some(r)
    }
}

fn packed(mut b: &[u8]) -> Result<impl Iterator<Item = u64>, String> {
    let mut v = Vec::new();
    while !b.is_empty() {
        v.push(varint(&mut b)?);
    }
    Ok(v.into_iter())
}
