//! speedscope's JSON file format (<https://www.speedscope.app/file-format-schema.json>):
//! frames shared by index, and one "sampled" profile per process (the folded
//! stacks' root), each stack root first with its weight. The folded
//! annotations (`_[k]`, `_[j]`, `_[i]`) are left out of the names.

use std::{collections::HashMap, io};

use serde_json::{Value, json};

use crate::fold::{Folded, strip_annotation};

/// The file `record --format speedscope` writes.
pub const FILE: &str = "profile.speedscope.json";

/// Writes `folded` as a speedscope file; `unit` is speedscope's name for the
/// weights (`none` for sample counts, `microseconds`).
pub fn write(folded: &Folded, name: &str, unit: &str, w: &mut dyn io::Write) -> io::Result<()> {
    let mut frames: Vec<Value> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    // Per process (the first frame): its samples and weights.
    type Profile<'a> = (&'a str, Vec<Vec<usize>>, Vec<u64>);
    let mut profiles: Vec<Profile> = Vec::new();
    for (line, &count) in &folded.stacks {
        let mut parts = line.split(';');
        let process = parts.next().unwrap_or("[unknown]");
        let stack: Vec<usize> = parts
            .map(|f| {
                *index.entry(f).or_insert_with(|| {
                    frames.push(json!({ "name": strip_annotation(f) }));
                    frames.len() - 1
                })
            })
            .collect();
        let p = match profiles.iter().position(|p| p.0 == process) {
            Some(i) => i,
            None => {
                profiles.push((process, Vec::new(), Vec::new()));
                profiles.len() - 1
            }
        };
        profiles[p].1.push(stack);
        profiles[p].2.push(count);
    }
    let profiles: Vec<Value> = profiles
        .into_iter()
        .map(|(process, samples, weights)| {
            let total: u64 = weights.iter().sum();
            json!({
                "type": "sampled",
                "name": process,
                "unit": unit,
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            })
        })
        .collect();
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": name,
        "exporter": concat!("crossprof ", env!("CARGO_PKG_VERSION")),
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": profiles,
    });
    serde_json::to_writer(&mut *w, &doc)?;
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_profile_per_process_with_shared_frames() {
        let mut folded = Folded::default();
        folded.stacks.insert("app;main;hot".into(), 3);
        folded.stacks.insert("app;main;read_[k]".into(), 1);
        folded.stacks.insert("other;main".into(), 2);
        let mut out = Vec::new();
        write(&folded, "t", "none", &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let frames = v["shared"]["frames"].as_array().unwrap();
        let names: Vec<&str> = frames.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["main", "hot", "read"]);
        let p = &v["profiles"][0];
        assert_eq!(p["name"], "app");
        assert_eq!(p["samples"], json!([[0, 1], [0, 2]]));
        assert_eq!(p["weights"], json!([3, 1]));
        assert_eq!(p["endValue"], 4);
        assert_eq!(v["profiles"][1]["samples"], json!([[0]]));
    }
}
