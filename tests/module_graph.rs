//! No module import circles in `src/`.
//!
//! Reads the `crate::`, `super::` and `self::` paths of every file of the
//! library (test modules left out), turns each into an edge between two
//! sibling modules (`control::door::login -> control::leases` is an edge
//! `door -> leases` under `control`; a module's use of its own ancestor or
//! descendant is not an edge), and fails on every cycle among siblings.
//!
//! [`KNOWN_BACK_EDGES`] lists the edges that still close a circle, each to
//! be removed by the change that breaks it; the test also fails when one
//! of them no longer exists, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `parent: from -> to`, edges that close a circle today. Leave this list
/// shorter than you found it; never add to it.
const KNOWN_BACK_EDGES: &[&str] = &[];

type ModPath = Vec<String>;

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = read_modules(&src);
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    // Sibling edges, each with one file-level example.
    let mut edges: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for (module, text) in &modules {
        for path in referenced_paths(module, text) {
            let Some(target) = longest_module(&known, &path) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // ancestor or descendant
            }
            let key = (
                module[..common].to_vec(),
                module[common].clone(),
                target[common].clone(),
            );
            edges
                .entry(key)
                .or_insert_with(|| format!("{} -> {}", show(module), show(&target)));
        }
    }

    let mut problems = Vec::new();
    let mut allowed = BTreeSet::new();
    for known_edge in KNOWN_BACK_EDGES {
        let found = edges
            .keys()
            .find(|(parent, from, to)| edge_name(parent, from, to) == *known_edge);
        match found {
            Some(key) => {
                allowed.insert(key.clone());
            }
            None => problems.push(format!(
                "{known_edge} is gone: remove it from KNOWN_BACK_EDGES"
            )),
        }
    }
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys().filter(|k| !allowed.contains(*k)) {
        by_parent
            .entry(parent.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    for (parent, graph) in &by_parent {
        for cycle in cycles(graph) {
            let mut text = format!("a circle under {}: {:?}", show(parent), cycle);
            for (from, tos) in graph {
                for to in tos {
                    if cycle.contains(from) && cycle.contains(to) {
                        let example = &edges[&(parent.clone(), from.clone(), to.clone())];
                        text.push_str(&format!("\n    {from} -> {to}   (e.g. {example})"));
                    }
                }
            }
            problems.push(text);
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

fn edge_name(parent: &[String], from: &str, to: &str) -> String {
    format!("{}: {from} -> {to}", show(parent))
}

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// Every module of the library with its text, test modules and comments
/// left out.
fn read_modules(src: &Path) -> BTreeMap<ModPath, String> {
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut path: ModPath = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path == ["main"] {
            continue; // the binary, not the library
        }
        if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
            path.pop();
        }
        if path.last().map(String::as_str) == Some("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        modules.insert(path, strip(&text));
    }
    modules
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code of a file without its comments and its `#[cfg(test)] mod
/// tests`, which by this crate's style comes last.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.contains("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path starting with `crate::`, `super::` or `self::`, as absolute
/// module paths (use trees with `{...}` expanded).
fn referenced_paths(module: &[String], text: &str) -> Vec<ModPath> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            let before = at.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let mut base: ModPath = match start {
                "crate::" => Vec::new(),
                "self::" => module.to_vec(),
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            let mut rest = &text[at + start.len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            use_tree(&base, rest, &mut out);
        }
    }
    out
}

/// Expands one use tree (`a::b::{c, d::{e, self}}`) after `prefix`.
fn use_tree(prefix: &[String], text: &str, out: &mut Vec<ModPath>) {
    let mut path = prefix.to_vec();
    let mut rest = text;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len > 0 {
            let segment = &rest[..len];
            if segment != "self" {
                path.push(segment.to_owned());
            }
            rest = &rest[len..];
        }
        if let Some(r) = rest.strip_prefix("::") {
            rest = r;
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    use_tree(&path, item.trim(), out);
                }
                return;
            }
            continue;
        }
        out.push(path);
        return;
    }
}

/// The top-level comma-separated items of a `{...}` group.
fn split_group(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&text[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn longest_module(known: &BTreeSet<ModPath>, path: &[String]) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// The strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}
