//! `crossprof diff`: a differential flamegraph of two profiles, each a folded
//! stacks file or a pprof profile (gzipped or not), such as `record` and the
//! agent write.
//!
//! The frames are those of AFTER; each is coloured by how its own (self) share
//! changed from BEFORE (inferno's differential colouring, FlameGraph's
//! convention): red grew, blue shrank, the deeper the more, near-white
//! unchanged. Both profiles are normalised to the same total first (a share
//! of 1,000,000 each), so a longer or busier recording does not read as
//! growth. Folded annotations (`_[k]`, `_[j]`, `_[i]`) are dropped so that a
//! folded file and a pprof profile of one program match; a pprof sample's
//! `comm` label becomes its root frame, as in crossprof's folded stacks.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use inferno::flamegraph::{self, Options};

use crate::{
    cli::DiffArgs,
    error::{Error, UsageError},
};

/// The total each side is scaled to.
const SCALE: f64 = 1_000_000.0;

/// Runs `crossprof diff`.
pub fn diff(args: &DiffArgs) -> Result<i32, Error> {
    let before = load(&args.before)?;
    let after = load(&args.after)?;
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| "Differential flamegraph".to_owned());
    let subtitle = format!(
        "{} -> {}: red grew, blue shrank (self share, both normalised to the same total)",
        args.before.display(),
        args.after.display()
    );
    let mut svg = Vec::new();
    render(&before, &after, &title, &subtitle, &mut svg).map_err(|source| Error::Write {
        path: args.output.clone(),
        source,
    })?;
    write_output(&args.output, &svg).map_err(|source| {
        Error::Usage(UsageError::OutputDir {
            path: args.output.clone(),
            source,
        })
    })?;
    eprintln!(
        "crossprof: {} stacks before, {} after -> {}",
        before.len(),
        after.len(),
        args.output.display()
    );
    Ok(0)
}

/// Writes `data` to `path` as [`crate::files`] writes outputs: a new private
/// file of a name no one can guess in `path`'s folder, renamed into place (a
/// full disk leaves nothing half-written; a link planted at `path` is
/// replaced, not written through).
fn write_output(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let folder = crate::files::OutFolder::open(dir)?;
    let (mut f, tmp) = folder.create_temp(name)?;
    let written = f.write_all(data).and_then(|()| f.sync_data());
    match written.and_then(|()| folder.rename(&tmp, name)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = folder.remove(&tmp);
            Err(e)
        }
    }
}

/// The largest profile `diff` reads.
const MAX_INPUT: u64 = 1 << 30;

/// Draws the differential flamegraph of `before` -> `after` (folded stacks).
pub fn render(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    title: &str,
    subtitle: &str,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let lines = differential_lines(before, after);
    let mut opts = Options::default();
    opts.title = title.to_owned();
    opts.subtitle = Some(subtitle.to_owned());
    opts.count_name = "millionths".to_owned();
    match flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut *out) {
        // inferno still writes a complete SVG that says there was no input.
        Err(e) if lines.is_empty() && e.kind() == std::io::ErrorKind::InvalidData => Ok(()),
        other => other,
    }
}

/// The folded stacks of the profile at `path`.
pub fn load(path: &Path) -> Result<BTreeMap<String, u64>, UsageError> {
    let bad = |why: String| UsageError::Profile {
        path: path.to_path_buf(),
        why,
    };
    let data = read_bounded(path).map_err(|e| bad(e.to_string()))?;
    if data.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    // Text that parses as folded stacks is folded; anything else must be pprof.
    if let Ok(text) = std::str::from_utf8(&data)
        && let Some(stacks) = parse_folded(text)
    {
        return Ok(stacks);
    }
    let read = crate::pprof::read(&data)
        .map_err(|e| bad(format!("not folded stacks, nor pprof ({e})")))?;
    if read.sample_types.is_empty() {
        return Err(bad("not folded stacks, nor pprof (no sample types)".into()));
    }
    let col = read.default_column;
    Ok(read
        .stacks
        .into_iter()
        .filter_map(|(stack, values)| {
            let v = *values.get(col)?;
            (v > 0).then(|| (strip(&stack), v as u64))
        })
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            let total = m.entry(k).or_insert(0u64);
            *total = total.saturating_add(v);
            m
        }))
}

/// Reads `path`: a regular file (a FIFO would block), at most
/// [`MAX_INPUT`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_INPUT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_INPUT >> 20),
        ));
    }
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INPUT), &mut data)?;
    Ok(data)
}

/// Folded lines (`a;b;c 12`), annotations dropped; `None` if a line is not one.
pub fn parse_folded(text: &str) -> Option<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, count) = line.trim_end().rsplit_once(' ')?;
        let count: u64 = count.parse().ok()?;
        // Each frame as crossprof's own outputs have it (no control
        // character reaches the SVG).
        let frames: Vec<_> = strip(stack)
            .split(';')
            .map(|f| crate::frame::sanitize(f).into_owned())
            .collect();
        let total = out.entry(frames.join(";")).or_insert(0u64);
        *total = total.saturating_add(count);
    }
    (!out.is_empty()).then_some(out)
}

/// A folded stack without inferno's annotations.
pub fn strip(stack: &str) -> String {
    stack
        .split(';')
        .map(crate::frame::strip_annotation)
        .collect::<Vec<_>>()
        .join(";")
}

/// inferno's differential input: `stack BEFORE AFTER`, each side scaled to
/// `SCALE`; a stack only in BEFORE is kept (with 0 after) so that what
/// vanished still counts as shrunk.
pub fn differential_lines(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Vec<String> {
    let total = |m: &BTreeMap<String, u64>| {
        m.values().fold(0u64, |a, &v| a.saturating_add(v)).max(1) as f64
    };
    let (tb, ta) = (total(before), total(after));
    let mut stacks: Vec<&String> = before.keys().chain(after.keys()).collect();
    stacks.sort();
    stacks.dedup();
    stacks
        .into_iter()
        .map(|s| {
            let b = before
                .get(s)
                .map_or(0, |&n| (n as f64 * SCALE / tb).round() as u64);
            let a = after
                .get(s)
                .map_or(0, |&n| (n as f64 * SCALE / ta).round() as u64);
            format!("{s} {b} {a}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[(&str, u64)]) -> BTreeMap<String, u64> {
        lines.iter().map(|&(s, n)| (s.to_owned(), n)).collect()
    }

    #[test]
    fn sides_are_normalised_to_the_same_total() {
        let before = map(&[("p;main;a", 50), ("p;main;b", 50)]);
        // Twice as long a recording, b twice as hot relative to a.
        let after = map(&[("p;main;a", 100), ("p;main;b", 200)]);
        let lines = differential_lines(&before, &after);
        assert_eq!(lines, ["p;main;a 500000 333333", "p;main;b 500000 666667"]);
        let same = differential_lines(&before, &before);
        assert!(same.iter().all(|l| {
            let mut it = l.rsplitn(3, ' ');
            it.next() == it.next()
        }));
    }

    #[test]
    fn folded_text_is_read_and_annotations_dropped() {
        let m = parse_folded("p;main;read_[k] 3\np;main 2\n").unwrap();
        assert_eq!(m, map(&[("p;main;read", 3), ("p;main", 2)]));
        assert_eq!(parse_folded("not folded"), None);
        assert_eq!(parse_folded(""), None);
    }
}
