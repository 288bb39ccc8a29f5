//! No two files of probe-user import each other, directly or through others
//! (issue #19): a reader can start at any file and find what it builds on
//! below it, never back above. Read from the sources (`use crate::...`,
//! `super::...` and paths written inline), tests left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Every module of the crate by its path (`go::table`), with its source.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The source without its tests and comments.
fn code(source: &str) -> String {
    let source = source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |at| &source[..at]);
    source
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, group: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once("::{") {
            Some((head, rest)) if item.ends_with('}') => {
                expand(&format!("{prefix}::{head}"), &rest[..rest.len() - 1], out)
            }
            _ => out.push(format!("{prefix}::{item}")),
        }
    }
}

/// The module paths `source` (of module `module`) names.
fn paths(module: &str, source: &str) -> Vec<Vec<String>> {
    let code = code(source);
    let mut found = Vec::new();
    // Every path from `crate::` or `super::`, inline (`crate::a::b`) or
    // grouped at any depth (`crate::a::{b, c::{d}}`).
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let after = &code[at + path.len()..];
            match (path.strip_suffix("::"), after.strip_prefix('{')) {
                (Some(prefix), Some(body)) => {
                    let mut depth = 1;
                    let end = body
                        .char_indices()
                        .find(|&(_, c)| {
                            match c {
                                '{' => depth += 1,
                                '}' => depth -= 1,
                                _ => {}
                            }
                            depth == 0
                        })
                        .map_or(body.len(), |(i, _)| i);
                    expand(prefix, &body[..end], &mut found);
                }
                _ => found.push(path),
            }
        }
    }
    let parent: Vec<String> = module.split("::").map(str::to_owned).collect();
    found
        .into_iter()
        .map(|path| {
            let mut parts: Vec<String> = path
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if parts.first().is_some_and(|p| p == "super") {
                let mut up = parent[..parent.len().saturating_sub(1)].to_vec();
                up.extend(parts.drain(1..));
                up
            } else {
                parts.drain(1..).collect()
            }
        })
        .collect()
}

#[test]
fn no_file_imports_itself_through_others() {
    let modules = modules();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, source) in &modules {
        let deps = edges.entry(module).or_default();
        for path in paths(module, source) {
            // The longest prefix that is a module of the crate.
            let target = (1..=path.len())
                .rev()
                .map(|k| path[..k].join("::"))
                .find_map(|p| modules.get_key_value(&p).map(|(k, _)| k.as_str()));
            if let Some(target) = target
                && target != module
                && !module.starts_with(&format!("{target}::"))
            {
                deps.insert(target);
            }
        }
    }
    assert!(
        edges
            .get("go::table")
            .is_some_and(|d| d.contains("native::process")),
        "the reader lost track of imports: {edges:#?}"
    );
    // Depth-first: a module met again while on the path is a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = path.iter().position(|&p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m);
            return Some(cycle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for &next in edges.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for &m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
}
