//! speedscope's JSON file format (<https://www.speedscope.app/file-format-schema.json>):
//! frames shared by index, and one "sampled" profile per process (by pid,
//! titled `comm (pid)`), each stack root first with its weight. The folded
//! annotations (`_[k]`, `_[j]`, `_[i]`) are left out of the names.

use std::{collections::HashMap, io};

use serde_json::{Value, json};

use crate::{fold::Folded, frame::strip_annotation};

/// The file `record --format speedscope` writes.
pub const FILE: &str = "profile.speedscope.json";

/// Writes `profiles` (one per process: its title, `comm (pid)`, and its
/// folded stacks, whose first frame is the process root) as a speedscope
/// file; `unit` is speedscope's name for the weights (`none` for sample
/// counts, `microseconds`). Two processes of one name (a server's workers)
/// are two profiles.
pub fn write(
    profiles: &[(String, Folded)],
    name: &str,
    unit: &str,
    w: &mut dyn io::Write,
) -> io::Result<()> {
    let mut frames: Vec<Value> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    // Per profile: its title, its stacks (frame indexes) and their weights.
    type Profile<'a> = (&'a str, Vec<Vec<usize>>, Vec<u64>);
    let mut out: Vec<Profile> = Vec::new();
    for (title, folded) in profiles {
        let (mut samples, mut weights) = (Vec::new(), Vec::new());
        for (line, &count) in &folded.stacks {
            // The process root is the profile itself.
            let stack: Vec<usize> = line
                .split(';')
                .skip(1)
                .map(|f| {
                    *index.entry(f).or_insert_with(|| {
                        frames.push(json!({ "name": strip_annotation(f) }));
                        frames.len() - 1
                    })
                })
                .collect();
            samples.push(stack);
            weights.push(count);
        }
        out.push((title, samples, weights));
    }
    let profiles = out;
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
        let folded = |lines: &[(&str, u64)]| {
            let mut f = Folded::default();
            for &(l, n) in lines {
                f.stacks.insert(l.into(), n);
            }
            f
        };
        let profiles = [
            (
                "app (10)".to_owned(),
                folded(&[("app;main;hot", 3), ("app;main;read_[k]", 1)]),
            ),
            ("app (11)".to_owned(), folded(&[("app;main", 2)])),
        ];
        let mut out = Vec::new();
        write(&profiles, "t", "none", &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let frames = v["shared"]["frames"].as_array().unwrap();
        let names: Vec<&str> = frames.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["main", "hot", "read"]);
        let p = &v["profiles"][0];
        assert_eq!(p["name"], "app (10)");
        assert_eq!(p["samples"], json!([[0, 1], [0, 2]]));
        assert_eq!(p["weights"], json!([3, 1]));
        assert_eq!(p["endValue"], 4);
        assert_eq!(v["profiles"][1]["name"], "app (11)");
        assert_eq!(v["profiles"][1]["samples"], json!([[0]]));
    }
}
