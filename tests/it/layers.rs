//! The shape of `src/`: the file-level import graph has no cycle, lower layers never import
//! higher ones, the domain core does no I/O, and no file outgrows one concept.
//!
//! Each file's references to other files (`crate::a::b`, `super::c`, a child `d::`) are read
//! from its code, with comments, string literals and inline `#[cfg(test)]` modules left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, bottom to top; a file may only reference files of its own layer or below. An entry
/// is a top-level module, or a file within one (`health/streak`) that sits lower than its
/// module; the longest entry that names a file decides its layer.
const LAYERS: [(&str, &[&str]); 4] = [
    (
        "domain core",
        &[
            "addr",
            "backoff",
            "balance",
            "health/streak",
            "instance",
            "parsed",
            "registry",
            "snapshot",
            "text",
            "update",
        ],
    ),
    (
        "runtime support",
        &["accept", "clock", "net", "rt", "shutdown", "throttle"],
    ),
    (
        "components",
        &[
            "admin",
            "cache",
            "discovery",
            "etcd",
            "field",
            "health",
            "proxy",
            "register",
        ],
    ),
    ("top", &["cli", "config", "dev", "error", "server", "lib"]),
];

/// What the domain core must not touch: sockets, files, processes, clocks, etcd, HTTP.
const IO: [&str; 9] = [
    "tokio::net",
    "tokio::io",
    "tokio::fs",
    "tokio::process",
    "tokio::time",
    "std::fs",
    "std::net::Tcp",
    "etcd_client",
    "hyper",
];

/// A module path, such as `["proxy", "http", "forward"]`; the crate root is empty.
type Module = Vec<String>;

struct File {
    text: String,
    /// Child modules declared with `mod x;`.
    children: BTreeSet<String>,
}

fn load(dir: &Path, module: Module, files: &mut BTreeMap<Module, File>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 file name")
            .to_string();
        if path.is_dir() {
            let mut m = module.clone();
            m.push(name);
            load(&path, m, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            if module.is_empty() && name == "main" {
                continue; // the binary: it uses `cairn::`, like any library user
            }
            let mut m = module.clone();
            if !(module.is_empty() && name == "lib") {
                m.push(name);
            }
            let raw = std::fs::read_to_string(&path).expect("reading a source file");
            let text = strip_tests(&strip(&raw));
            let children = declared_mods(&text);
            files.insert(m, File { text, children });
        }
    }
}

/// The code without comments, string and char literals (replaced by spaces).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c[i] == 'r' && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#')) {
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push(' ');
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push(' ');
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The code without inline `#[cfg(test)] mod x { ... }` blocks: their `super` is the file itself.
fn strip_tests(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let inline = trimmed.starts_with("mod ")
            && trimmed
                .find(['{', ';'])
                .is_some_and(|p| trimmed.as_bytes()[p] == b'{');
        if !inline {
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let open =
            at + "#[cfg(test)]".len() + (rest.len() - trimmed.len()) + trimmed.find('{').unwrap();
        let mut depth = 0;
        let mut end = open;
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

fn declared_mods(text: &str) -> BTreeSet<String> {
    let tokens = tokenize(text);
    let mut mods = BTreeSet::new();
    for w in tokens.windows(3) {
        if w[0] == "mod" && w[2] == ";" {
            mods.insert(w[1].clone());
        }
    }
    mods
}

/// Identifiers and the punctuation paths are made of.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
        } else {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if ch == ':' && chars.get(i + 1) == Some(&':') {
                tokens.push("::".to_string());
                i += 1;
            } else if !ch.is_whitespace() {
                tokens.push(ch.to_string());
            }
        }
        i += 1;
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Every module path a file's code names, starting from `crate`, `super`, `self` or a child.
fn referenced(module: &Module, file: &File) -> Vec<Module> {
    let tokens = tokenize(&file.text);
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        if tokens.get(i + 1).map(String::as_str) != Some("::") {
            continue;
        }
        if i > 0 && tokens[i - 1] == "::" {
            continue; // the middle of a path
        }
        let base: Module = match tokens[i].as_str() {
            "crate" => Vec::new(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            "self" => module.clone(),
            child if file.children.contains(child) => {
                let mut m = module.clone();
                m.push(child.to_string());
                m
            }
            _ => continue,
        };
        let mut paths = Vec::new();
        tree(&tokens, i + 2, base, &mut paths);
        out.extend(paths);
    }
    out
}

/// Expands the use tree or path at `tokens[at..]` under `base`.
fn tree(tokens: &[String], mut at: usize, mut base: Module, out: &mut Vec<Module>) -> usize {
    loop {
        match tokens.get(at).map(String::as_str) {
            Some("{") => {
                at += 1;
                loop {
                    at = tree(tokens, at, base.clone(), out);
                    match tokens.get(at).map(String::as_str) {
                        Some(",") => at += 1,
                        Some("}") => return at + 1,
                        _ => return at,
                    }
                    if tokens.get(at).map(String::as_str) == Some("}") {
                        return at + 1;
                    }
                }
            }
            Some("super") => {
                base.pop();
                at += 2;
            }
            Some(word) if word.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                base.push(word.to_string());
                if tokens.get(at + 1).map(String::as_str) == Some("::") {
                    at += 2;
                } else {
                    out.push(base);
                    return at + 1;
                }
            }
            _ => {
                out.push(base);
                return at;
            }
        }
    }
}

/// The deepest file that `path` names.
fn resolve(path: &Module, files: &BTreeMap<Module, File>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| files.contains_key(m))
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib".to_string()
    } else {
        m.join("/")
    }
}

fn layer(m: &Module) -> usize {
    let path = name(m);
    let names = |entry: &str| path == entry || path.starts_with(&format!("{entry}/"));
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, entries))| entries.iter().map(move |e| (i, *e)))
        .filter(|(_, entry)| names(entry))
        .max_by_key(|(_, entry)| entry.len())
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("src/{path}.rs belongs to no layer: add it to LAYERS"))
}

fn graph() -> (BTreeMap<Module, File>, BTreeMap<Module, BTreeSet<Module>>) {
    let mut files = BTreeMap::new();
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        Vec::new(),
        &mut files,
    );
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, f) in &files {
        let to: BTreeSet<Module> = referenced(m, f)
            .iter()
            .filter_map(|p| resolve(p, &files))
            .filter(|t| t != m)
            .collect();
        edges.insert(m.clone(), to);
    }
    (files, edges)
}

#[test]
fn the_import_graph_of_src_has_no_cycle() {
    let (_, edges) = graph();
    // Depth-first search; a node met again while on the stack closes a cycle.
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            let cycle: Vec<String> = stack[at..].iter().chain([m]).map(name).collect();
            panic!("import cycle: {}", cycle.join(" -> "));
        }
        stack.push(m.clone());
        for t in &edges[m] {
            visit(t, edges, done, stack);
        }
        stack.pop();
        done.insert(m.clone());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut done, &mut Vec::new());
    }
    assert!(edges.len() > 30, "too few files found: {:?}", edges.keys());
    assert!(
        edges[&vec!["discovery".to_string()]].contains(&vec!["update".to_string()]),
        "the reader misses imports"
    );
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let (_, edges) = graph();
    let mut wrong = Vec::new();
    for (from, to) in &edges {
        for t in to {
            if layer(t) > layer(from) {
                wrong.push(format!(
                    "{} ({}) imports {} ({})",
                    name(from),
                    LAYERS[layer(from)].0,
                    name(t),
                    LAYERS[layer(t)].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_domain_core_does_no_io() {
    let (files, _) = graph();
    let mut wrong = Vec::new();
    for (m, f) in files.iter().filter(|(m, _)| layer(m) == 0) {
        for io in IO {
            if f.text.contains(io) {
                wrong.push(format!("src/{}.rs uses {io}", name(m)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_source_file_is_over_500_lines_tests_aside() {
    let (files, _) = graph();
    let long: Vec<String> = files
        .iter()
        .filter(|(m, _)| m.last().is_none_or(|n| n != "tests"))
        .map(|(m, f)| (name(m), f.text.lines().count()))
        .filter(|(_, n)| *n > 500)
        .map(|(m, n)| format!("src/{m}.rs: {n} lines"))
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn the_reader_sees_what_rust_sees() {
    let text = strip_tests(&strip(
        "use crate::{a::B, c::{d::E, F}};\nuse super::x::Y; // crate::no\nlet s = \"crate::no\";\nlet c = '{';\nmod kid;\nfn f() { kid::go(); }\n#[cfg(test)]\nmod tests { use super::*; use crate::z; }\n",
    ));
    let file = File {
        children: declared_mods(&text),
        text,
    };
    let module: Module = vec!["p".into(), "q".into()];
    let mut got: Vec<String> = referenced(&module, &file).iter().map(name).collect();
    got.sort();
    assert_eq!(got, ["a/B", "c/F", "c/d/E", "p/q/kid/go", "p/x/Y"]);
}
