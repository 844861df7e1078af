//! The layout rules of docs/architecture.md, read off the source.
//!
//! `cargo test --test layout` needs no server: it reads every file under
//! `src/`, resolves each `crate::` and `super::` path to the file module it
//! names, and checks the graph that gives. It is deliberately a plain text
//! reader (no macro expansion): a path spelled in code is a dependency,
//! whether it sits in a `use` line or inline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first, and what each may import. A layer may import
/// only layers listed for it; the order is the data path bottom-up.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("ops", &["model"]),
    ("source", &["model", "ops"]),
    ("sink", &["model", "ops"]),
    ("config", &["model", "ops", "source", "sink"]),
    ("transform", &["model", "config"]),
    (
        "snapshot",
        &["model", "ops", "source", "sink", "config", "transform"],
    ),
    (
        "stream",
        &[
            "model",
            "ops",
            "source",
            "sink",
            "config",
            "transform",
            "snapshot",
        ],
    ),
    (
        "app",
        &[
            "model",
            "ops",
            "source",
            "sink",
            "config",
            "transform",
            "snapshot",
            "stream",
        ],
    ),
    // The fuzz targets drive the parsers of bytes from outside, wherever
    // they live; nothing imports them but the fuzz crate and their tests.
    (
        "fuzz",
        &[
            "model",
            "ops",
            "source",
            "sink",
            "config",
            "transform",
            "snapshot",
        ],
    ),
    (
        "cli",
        &[
            "model",
            "ops",
            "source",
            "sink",
            "config",
            "transform",
            "snapshot",
            "stream",
            "app",
        ],
    ),
];

/// A module path inside the crate: `["sink", "indexer", "worker"]`.
type ModPath = Vec<String>;

struct Source {
    module: ModPath,
    file: PathBuf,
    text: String,
}

/// `src/` of this crate, or the tree `SLUICE_LAYOUT_SRC` names (to watch
/// these tests fail on a copy with a rule broken on purpose).
fn src_dir() -> PathBuf {
    match std::env::var_os("SLUICE_LAYOUT_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    }
}

/// Every `.rs` file under `src/` with the module path it defines.
fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|file| {
            let rel = file.strip_prefix(&root).expect("under src");
            let mut module: ModPath = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            let text = std::fs::read_to_string(&file).expect("a source file");
            Source { module, file, text }
        })
        .collect()
}

/// A test module's file (`tests.rs`, `*_tests.rs`): its imports of the code
/// under test are not part of the layout.
fn is_test_file(m: &ModPath) -> bool {
    m.last()
        .is_some_and(|l| l == "tests" || l.ends_with("_tests"))
}

/// The code of `text` that ships: comments removed and everything from the
/// first `#[cfg(test)] mod` on cut (test modules sit at the end of a file).
fn shipped_code(text: &str) -> String {
    let mut end = text.len();
    for (i, _) in text.match_indices("#[cfg(test)]") {
        let after = text[i + "#[cfg(test)]".len()..].trim_start();
        let inline_mod = (after.starts_with("mod ") || after.starts_with("pub mod "))
            && match (after.find('{'), after.find(';')) {
                (Some(brace), Some(semi)) => brace < semi,
                (Some(_), None) => true,
                _ => false,
            };
        if inline_mod {
            end = i;
            break;
        }
    }
    text[..end]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths written after each `prefix` (`crate::`, `super::`) in `code`,
/// with `use` groups (`a::{b, c::d}`) expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `my_crate::` or `$crate::`-like spellings.
        }
        let chars: Vec<char> = rest.chars().collect();
        let mut pos = 0;
        parse_tree(&chars, &mut pos, Vec::new(), &mut out);
    }
    out
}

/// Parse one use tree at `pos`: `ident(::ident)*` optionally followed by
/// `::{tree, tree}`; push every full path reached.
fn parse_tree(chars: &[char], pos: &mut usize, mut base: ModPath, out: &mut Vec<ModPath>) {
    loop {
        skip_space(chars, pos);
        if chars.get(*pos) == Some(&'{') {
            *pos += 1;
            loop {
                skip_space(chars, pos);
                match chars.get(*pos) {
                    Some('}') | None => {
                        *pos += 1;
                        return;
                    }
                    Some(',') => *pos += 1,
                    _ => parse_tree(chars, pos, base.clone(), out),
                }
            }
        }
        let start = *pos;
        while chars
            .get(*pos)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
        {
            *pos += 1;
        }
        if *pos == start {
            out.push(base);
            return;
        }
        let ident: String = chars[start..*pos].iter().collect();
        if ident != "self" {
            base.push(ident);
        }
        if chars.get(*pos) == Some(&':') && chars.get(*pos + 1) == Some(&':') {
            *pos += 2;
        } else {
            // The path ends here; an `as alias` after it is not a path.
            out.push(base);
            let mut look = *pos;
            skip_space(chars, &mut look);
            if chars[look..].starts_with(&['a', 's', ' ']) {
                look += 3;
                skip_space(chars, &mut look);
                while chars
                    .get(look)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    look += 1;
                }
                *pos = look;
            }
            return;
        }
    }
}

fn skip_space(chars: &[char], pos: &mut usize) {
    while chars.get(*pos).is_some_and(|c| c.is_whitespace()) {
        *pos += 1;
    }
}

/// The file module a path names: its longest prefix that is a module.
fn resolve(path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// File module → the file modules its shipped code names.
fn file_graph(sources: &[Source]) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for s in sources.iter().filter(|s| !is_test_file(&s.module)) {
        let code = shipped_code(&s.text);
        let mut deps = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            deps.extend(resolve(&p, &modules));
        }
        for p in paths_after(&code, "super::") {
            // `super::super::x` climbs one more level per `super`.
            let mut parent = s.module[..s.module.len().saturating_sub(1)].to_vec();
            let ups = p.iter().take_while(|seg| *seg == "super").count();
            parent.truncate(parent.len().saturating_sub(ups));
            let full: ModPath = parent.into_iter().chain(p.into_iter().skip(ups)).collect();
            deps.extend(resolve(&full, &modules));
        }
        deps.remove(&s.module);
        graph.insert(s.module.clone(), deps);
    }
    graph
}

/// Top-level folder of a module (`<root>` for main.rs / lib.rs).
fn layer(m: &ModPath) -> String {
    m.first().cloned().unwrap_or_else(|| "<root>".into())
}

/// Every cycle of `graph`, as the strongly connected components with more
/// than one member (Tarjan).
fn cycles<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct Tarjan<'g, N: Ord> {
        graph: &'g BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        found: Vec<Vec<N>>,
    }
    impl<N: Ord + Clone> Tarjan<'_, N> {
        fn visit(&mut self, v: &N) {
            let i = self.index.len();
            self.index.insert(v.clone(), i);
            self.low.insert(v.clone(), i);
            self.stack.push(v.clone());
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    let done = &w == v;
                    comp.push(w);
                    if done {
                        break;
                    }
                }
                if comp.len() > 1 {
                    self.found.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

fn folder_graph(
    files: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in files {
        let from = layer(m);
        let entry = g.entry(from.clone()).or_default();
        entry.extend(deps.iter().map(layer).filter(|to| *to != from));
    }
    g
}

#[test]
fn the_top_of_src_holds_only_the_entry_points_and_the_layer_folders() {
    let mut loose = Vec::new();
    for entry in std::fs::read_dir(src_dir()).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            assert!(
                ALLOWED.iter().any(|(l, _)| *l == name),
                "src/{name}/ is not a layer of docs/architecture.md"
            );
        } else if !["main.rs", "lib.rs", "cli.rs"].contains(&name.as_str()) {
            loose.push(name);
        }
    }
    assert!(
        loose.is_empty(),
        "loose files at the top of src/: {loose:?}"
    );
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let graph = file_graph(&sources());
    assert!(
        graph.len() > 50,
        "the reader found only {} files",
        graph.len()
    );
    let found: Vec<Vec<String>> = cycles(&graph)
        .into_iter()
        .map(|c| c.iter().map(|m| m.join("::")).collect())
        .collect();
    assert!(found.is_empty(), "import cycles between files: {found:?}");
}

#[test]
fn no_two_layers_import_each_other_even_through_others() {
    let graph = folder_graph(&file_graph(&sources()));
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between layers: {found:?}");
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let files = file_graph(&sources());
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (m, deps) in &files {
        let from = layer(m);
        let Some(ok) = allowed.get(from.as_str()) else {
            continue; // main.rs / lib.rs wire everything.
        };
        for d in deps {
            let to = layer(d);
            if to != from && !ok.contains(&to.as_str()) {
                wrong.push(format!("{} -> {}", m.join("::"), d.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order: {wrong:#?}"
    );
}

#[test]
fn the_reader_sees_groups_aliases_and_inline_paths() {
    let code = "use crate::{model::{Lsn, change::Change}, sink::Holds as H};\n\
                let x = crate::ops::metrics::names::X; use super::sibling;";
    let crate_paths = paths_after(code, "crate::");
    assert_eq!(
        crate_paths,
        vec![
            vec!["model".to_string(), "Lsn".into()],
            vec!["model".into(), "change".into(), "Change".into()],
            vec!["sink".into(), "Holds".into()],
            vec!["ops".into(), "metrics".into(), "names".into(), "X".into()],
        ]
    );
    assert_eq!(
        paths_after(code, "super::"),
        vec![vec!["sibling".to_string()]]
    );
    let mut g = BTreeMap::new();
    g.insert("a", BTreeSet::from(["b"]));
    g.insert("b", BTreeSet::from(["c"]));
    g.insert("c", BTreeSet::from(["a"]));
    g.insert("d", BTreeSet::from(["a"]));
    assert_eq!(cycles(&g).len(), 1, "a -> b -> c -> a is one cycle");
    g.get_mut("c").expect("c").clear();
    assert!(cycles(&g).is_empty());
}

/// The longest function bodies, by a brace count over comment-free,
/// string-free lines (good enough for code rustfmt wrote).
fn long_functions(limit: usize) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for s in sources() {
        let lines: Vec<String> = s
            .text
            .lines()
            .map(|l| {
                let l = match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                };
                strip_literals(l)
            })
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = fn_name(line) else { continue };
            let (mut depth, mut opened) = (0i64, false);
            for (j, l) in lines.iter().enumerate().skip(i) {
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                opened |= l.contains('{');
                if !opened && l.trim_end().ends_with(';') {
                    break; // a declaration without a body
                }
                if opened && depth <= 0 {
                    let len = j - i + 1;
                    if len > limit {
                        out.push((format!("{}: {name}", s.file.display()), len));
                    }
                    break;
                }
            }
        }
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    // Only definitions: `fn` first, or after visibility/qualifiers.
    let ok = words[..at]
        .iter()
        .all(|w| w.starts_with("pub") || ["async", "const", "unsafe", "extern"].contains(w));
    let name = words.get(at + 1)?;
    ok.then(|| name.split(['(', '<']).next().unwrap_or(name).to_string())
}

/// `line` with string and char literals emptied, so braces inside them do
/// not count.
fn strip_literals(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        match (in_str, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => {
                in_str = false;
                out.push('"');
            }
            (true, _) => {}
            (false, '"') => {
                in_str = true;
                out.push('"');
            }
            (false, '\'') if matches!(chars.clone().nth(1), Some('\'')) => {
                chars.next();
                chars.next();
                out.push_str("''");
            }
            (false, c) => out.push(c),
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_a_reader_holds_in_mind() {
    // 120 lines is the issue-16 limit; the longest today are the protocol
    // matches (pgoutput::parse, decoder::decode) at about 110.
    let long = long_functions(120);
    assert!(long.is_empty(), "functions over 120 lines: {long:#?}");
    assert!(
        !long_functions(100).is_empty(),
        "the counter found no function over 100 lines, yet the protocol matches are that long: the reader is broken"
    );
}
