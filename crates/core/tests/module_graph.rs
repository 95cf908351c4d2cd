//! The top-level modules of `crates/core/src` must not import each other in a circle: a cycle
//! means no module of it can be read, tested or moved without the others. This test reads the
//! sources, builds the graph of references between top-level modules and fails, printing the
//! cycle, if the graph has one. It also keeps `vocab` a leaf.
//!
//! A reference is any `crate::<name>` path (in `use` lines, in code, `$crate::` in macros) and
//! any `super::` path that climbs to the crate root, in production and test code alike.
//! Comments and literals are skipped. `<name>` is a top-level module, or an item `lib.rs`
//! re-exports from one (`crate::ApiError` is `error`). A file belongs to the top-level module
//! its path starts with (`src/town_config/patch.rs` is `town_config`); a file pulled in with
//! `#[path]` belongs to the module that declares it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    PathSep,
    Punct(char),
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Skips a quoted literal whose opening `"` is at `i`, honouring `\` escapes; returns its
/// content and the index after the closing quote.
fn quoted(s: &[char], mut i: usize) -> (String, usize) {
    let start = i + 1;
    i += 1;
    while i < s.len() && s[i] != '"' {
        i += if s[i] == '\\' { 2 } else { 1 };
    }
    let end = i.min(s.len());
    (s[start..end].iter().collect(), end + 1)
}

/// Skips a raw string whose `hashes` `#`s and opening `"` start at `i`.
fn raw_quoted(s: &[char], i: usize, hashes: usize) -> (String, usize) {
    let start = i + hashes + 1;
    let mut j = start;
    while j < s.len() {
        if s[j] == '"'
            && s[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return (s[start..j].iter().collect(), j + 1 + hashes);
        }
        j += 1;
    }
    (s[start..].iter().collect(), s.len())
}

/// The tokens of Rust source that matter for paths: identifiers, `::`, punctuation and string
/// contents (for `#[path]`). Comments, numbers, char literals and lifetimes leave nothing.
fn tokens(src: &str) -> Vec<Tok> {
    let s: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let (text, end) = quoted(&s, i);
            out.push(Tok::Str(text));
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1b}') or a lifetime ('a): neither names a module.
            if next == Some('\\') {
                i += 3;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if s.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < s.len() && is_ident_char(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() {
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            let hashes = s[i..].iter().take_while(|&&c| c == '#').count();
            if raw_prefix && s.get(i + hashes) == Some(&'"') {
                let (text, end) = raw_quoted(&s, i, hashes);
                out.push(Tok::Str(text));
                i = end;
            } else if matches!(word.as_str(), "b" | "c") && s.get(i) == Some(&'"') {
                let (text, end) = quoted(&s, i);
                out.push(Tok::Str(text));
                i = end;
            } else if word == "b" && s.get(i) == Some(&'\'') {
                // A byte literal: the `'` branch skips it on the next turn.
            } else if word == "r" && hashes == 1 && s.get(i + 1).is_some_and(|&c| is_ident_start(c))
            {
                i += 1;
                let start = i;
                while i < s.len() && is_ident_char(s[i]) {
                    i += 1;
                }
                out.push(Tok::Ident(s[start..i].iter().collect()));
            } else {
                out.push(Tok::Ident(word));
            }
        } else if c == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// The first segment of each path starting at `toks[j]`: `name` or each item of `{a::X, b}`.
fn heads(toks: &[Tok], j: usize, out: &mut BTreeSet<String>) {
    match toks.get(j) {
        Some(Tok::Ident(name)) => {
            out.insert(name.clone());
        }
        Some(Tok::Punct('{')) => {
            let mut depth = 0;
            for k in j..toks.len() {
                match &toks[k] {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            return;
                        }
                    }
                    _ => {}
                }
                let opens_item = matches!(toks[k], Tok::Punct('{') | Tok::Punct(','));
                if depth == 1 && opens_item {
                    if let Some(name) = ident(toks.get(k + 1)) {
                        if name != "self" {
                            out.insert(name.to_owned());
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The names that the root-relative paths of a file start with. `depth` is how deep the file's
/// module is below the crate root (`src/a.rs` is 1, `src/a/b.rs` is 2); an inline `mod x { }`
/// adds one inside its braces, which decides where a `super::` chain lands.
fn references(src: &str, depth: usize) -> BTreeSet<String> {
    let toks = tokens(src);
    let mut out = BTreeSet::new();
    let mut braces = 0usize;
    let mut inline_mods: Vec<usize> = Vec::new();
    for i in 0..toks.len() {
        let after_sep = i > 0 && toks[i - 1] == Tok::PathSep;
        match &toks[i] {
            Tok::Punct('{') => {
                braces += 1;
                let is_mod = i >= 2
                    && ident(toks.get(i - 2)) == Some("mod")
                    && ident(toks.get(i - 1)).is_some();
                if is_mod {
                    inline_mods.push(braces);
                }
            }
            Tok::Punct('}') => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            Tok::Ident(w)
                if w == "crate" && !after_sep && toks.get(i + 1) == Some(&Tok::PathSep) =>
            {
                heads(&toks, i + 2, &mut out);
            }
            Tok::Ident(w) if w == "super" && !after_sep => {
                let mut j = i;
                let mut climbs = 0;
                while ident(toks.get(j)) == Some("super") && toks.get(j + 1) == Some(&Tok::PathSep)
                {
                    climbs += 1;
                    j += 2;
                }
                if climbs > 0 && climbs >= depth + inline_mods.len() {
                    heads(&toks, j, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which top-level module a file under `src` belongs to, and how deep its module is, from its
/// path alone (`None` for `lib.rs`).
fn place_by_path(src: &Path, file: &Path) -> Option<(String, usize)> {
    let rel = file.strip_prefix(src).expect("file under src");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let stem = |p: &str| p.trim_end_matches(".rs").to_owned();
    match parts.as_slice() {
        [only] if only == "lib.rs" => None,
        [only] => Some((stem(only), 1)),
        [dir, ..] => {
            let is_mod_rs = parts.last().is_some_and(|p| p == "mod.rs");
            Some((dir.clone(), parts.len() - usize::from(is_mod_rs)))
        }
        [] => None,
    }
}

/// The files that `#[path = "…"] mod name;` lines of `src_text` (at module `depth`) pull in,
/// each with the depth its module gets.
fn path_includes(file: &Path, src_text: &str, depth: usize) -> Vec<(PathBuf, usize)> {
    let toks = tokens(src_text);
    let mut out = Vec::new();
    for i in 0..toks.len() {
        let attr = [
            Tok::Punct('#'),
            Tok::Punct('['),
            Tok::Ident("path".into()),
            Tok::Punct('='),
        ];
        if toks[i..].starts_with(&attr) {
            if let Some(Tok::Str(target)) = toks.get(i + 4) {
                let dir = file.parent().expect("file has a directory");
                out.push((dir.join(target), depth + 1));
            }
        }
    }
    out
}

struct CrateGraph {
    /// Top-level modules as `lib.rs` declares them.
    declared: BTreeSet<String>,
    /// Top-level modules that have files.
    found: BTreeSet<String>,
    edges: Graph,
}

/// Reads every `.rs` file under `src` and builds the module graph.
fn crate_graph(src: &Path) -> CrateGraph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), fs::read_to_string(f).expect("readable source")))
        .collect();
    let mut place: BTreeMap<PathBuf, (String, usize)> = files
        .iter()
        .filter_map(|f| place_by_path(src, f).map(|p| (f.clone(), p)))
        .collect();
    // A `#[path]` file may itself declare one: repeat until nothing moves.
    loop {
        let mut moved = false;
        for (file, text) in &texts {
            let Some((module, depth)) = place.get(file).cloned() else {
                continue;
            };
            for (target, target_depth) in path_includes(file, text, depth) {
                let target = texts
                    .keys()
                    .find(|k| same_file(k, &target))
                    .cloned()
                    .unwrap_or(target);
                let wanted = (module.clone(), target_depth);
                if place.get(&target) != Some(&wanted) {
                    place.insert(target, wanted);
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }

    let lib = texts
        .get(&src.join("lib.rs"))
        .map(|t| tokens(t))
        .unwrap_or_default();
    let mut declared = BTreeSet::new();
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..lib.len() {
        if ident(lib.get(i)) == Some("mod") && lib.get(i + 2) == Some(&Tok::Punct(';')) {
            if let Some(name) = ident(lib.get(i + 1)) {
                declared.insert(name.to_owned());
            }
        }
        if ident(lib.get(i)) == Some("use") {
            let mut j = i + 1;
            if ident(lib.get(j)) == Some("crate") {
                j += 2;
            }
            let Some(module) = ident(lib.get(j)).map(str::to_owned) else {
                continue;
            };
            for t in lib[j + 1..].iter().take_while(|t| **t != Tok::Punct(';')) {
                if let Tok::Ident(name) = t {
                    if !matches!(name.as_str(), "self" | "as" | "crate" | "super") {
                        reexports.insert(name.clone(), module.clone());
                    }
                }
            }
        }
    }

    let found: BTreeSet<String> = place.values().map(|(m, _)| m.clone()).collect();
    let mut edges: Graph = found.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (file, (module, depth)) in &place {
        let Some(text) = texts.get(file) else {
            continue;
        };
        for name in references(text, *depth) {
            let target = if found.contains(&name) {
                Some(name)
            } else {
                reexports.get(&name).cloned()
            };
            if let Some(target) = target.filter(|t| t != module) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    CrateGraph {
        declared,
        found,
        edges,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A cycle of `graph` as the path `a, b, …, a`, or `None` if it has none.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'g>(
        node: &'g str,
        graph: &'g Graph,
        done: &mut BTreeSet<&'g str>,
        path: &mut Vec<&'g str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| (*n).to_owned()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut done, &mut Vec::new()))
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, to)| {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", to.join(", "))
        })
        .collect()
}

#[test]
fn core_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = crate_graph(&src);
    assert_eq!(
        graph.found, graph.declared,
        "the modules with files should be the ones lib.rs declares"
    );
    let edges: usize = graph.edges.values().map(BTreeSet::len).sum();
    assert!(edges > 0, "no references found: the reader is broken");
    println!("module graph of gastown-core:\n{}", show(&graph.edges));
    if let Some(cycle) = find_cycle(&graph.edges) {
        panic!(
            "module cycle in crates/core/src: {}\n(move the shared items to a module below \
             both, e.g. vocab)\nwhole graph:\n{}",
            cycle.join(" -> "),
            show(&graph.edges)
        );
    }
    let vocab = graph.edges.get("vocab").expect("a vocab module");
    assert!(
        vocab.is_empty(),
        "vocab must stay a leaf, imports {vocab:?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_hand_made_cycle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            g.entry((*to).to_owned()).or_default();
        }
        g
    };
    let cyclic = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("x", "a")]);
    assert_eq!(
        find_cycle(&cyclic),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    let from_the_side = graph(&[("a", "z"), ("z", "m"), ("m", "z")]);
    assert_eq!(
        find_cycle(&from_the_side),
        Some(["z", "m", "z"].map(String::from).to_vec())
    );
    let diamond = graph(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]);
    assert_eq!(find_cycle(&diamond), None);
    assert_eq!(find_cycle(&Graph::new()), None);
}

#[test]
fn references_come_from_code_not_comments_or_literals() {
    let src = r####"
        use crate::{a::X, b::{self, Y}, ApiError};
        use std::collections::BTreeMap;
        // use crate::c;
        /* crate::d /* nested */ crate::d2 */
        /// [`crate::doc`]
        const S: &str = "crate::e \" crate::e2";
        const R: &str = r#"crate::f "quoted" "#;
        const B: &[u8] = b"crate::g";
        fn f<'a>(x: &'a str) -> char { let _ = '"'; let _ = '\''; crate::h::call(); 'x' }
        pub(crate) fn i() {}
        pub(in crate::j) fn k() {}
        fn l() { super::m::n(); }
        mod inner { use super::super::o; mod deeper { use super::super::p; } }
        macro_rules! q { () => { $crate::r::S } }
    "####;
    // From `src/x.rs`, `super::m` is the root's `m`, as is `super::super::o` in `mod inner`.
    let want: BTreeSet<String> = ["a", "b", "ApiError", "h", "j", "m", "o", "r"]
        .map(String::from)
        .into();
    assert_eq!(references(src, 1), want);
    // One level deeper (`src/x/y.rs`), `super::m` and `super::super::o` stay inside `x`.
    let want_deeper: BTreeSet<String> = ["a", "b", "ApiError", "h", "j", "r"]
        .map(String::from)
        .into();
    assert_eq!(references(src, 2), want_deeper);
}

/// The whole reader on a crate made for it: the cycle `a -> b -> c -> a` runs through a folder
/// module's submodule, a re-export of `lib.rs` and a `#[path]` file, and must still be found.
#[test]
fn a_cycle_through_submodules_and_reexports_is_found() {
    let root = std::env::temp_dir().join(format!("gastown-module-graph-{}", std::process::id()));
    let src = root.join("src");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(src.join("b")).expect("temp dir");
    let write = |path: &str, text: &str| fs::write(src.join(path), text).expect("temp file");
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub use c::Thing;\n",
    );
    write(
        "a.rs",
        "#[cfg(test)]\n#[path = \"a_tests.rs\"]\nmod tests;\n",
    );
    write("a_tests.rs", "use super::super::b::Y;\n");
    write("b/mod.rs", "mod inner;\n");
    write("b/inner.rs", "pub fn f() -> crate::Thing { todo!() }\n");
    write(
        "c.rs",
        "// crate::b is no reference\npub fn g() { crate::a::h() }\n",
    );
    let graph = crate_graph(&src);
    let _ = fs::remove_dir_all(&root);

    assert_eq!(graph.found, graph.declared);
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(graph.edges["a"], set(&["b"]), "a_tests.rs is part of a");
    assert_eq!(graph.edges["b"], set(&["c"]), "crate::Thing is c's");
    assert_eq!(
        graph.edges["c"],
        set(&["a"]),
        "the comment is not a reference"
    );
    assert_eq!(
        find_cycle(&graph.edges),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
