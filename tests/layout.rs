//! The layout of `src/` has no circles: no file imports, directly or through others, a file
//! that imports it back. A parent module that reaches into its children is fine; a child that
//! calls back into its parent (`super::…` to the parent's items) closes a circle, and so does
//! a low module (`config`, `error`, `wire`) that reaches up to a module built on it.
//!
//! The check reads the sources as text: every path that starts with `crate::`, `super::`,
//! `self::` or the name of a module declared in the same module, in `use` trees and in code
//! (macro calls included), is resolved to the file that defines what it names, following
//! `pub use` re-exports to where the item is defined. Test modules (`#[cfg(test)] mod …`),
//! comments and string literals are left out. An item used inside the crate must therefore not
//! be defined in `lib.rs`, which re-exports everything and so stands above every module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A module path from the crate root (`["forward", "pending"]`).
type ModPath = Vec<String>;

/// Per module: the names it re-exports, each with the module it is written in and the path it
/// re-exports.
type Reexports = HashMap<ModPath, HashMap<String, (ModPath, Vec<String>)>>;

/// A module: its path from the crate root, and the file that holds it.
#[derive(Debug, Clone)]
struct Module {
    path: Vec<String>,
    file: String,
}

/// What one file says: the paths it uses (absolute module paths once resolved), the names it
/// re-exports (name → path), and the inline modules it declares.
#[derive(Debug, Default)]
struct FileFacts {
    /// (module path the reference was made in, the path as written).
    uses: Vec<(Vec<String>, Vec<String>)>,
    /// Per module path (the file's own, or one of its inline modules): re-exported names.
    reexports: Reexports,
    /// Inline modules declared in the file, as absolute paths.
    inline: Vec<Vec<String>>,
    /// Per module path: the child modules it declares (`mod x;` or `mod x { … }`).
    children: HashMap<Vec<String>, BTreeSet<String>>,
    /// `macro_rules!` macros the file defines: `#[macro_export]` ones live at the crate root.
    macros: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    /// `::`
    PathSep,
}

/// The tokens of Rust source that matter here: identifiers and punctuation, without comments,
/// string, byte and character literals, lifetimes, or numbers.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
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
            i = skip_string(&chars, i + 1);
        } else if (c == 'r' || c == 'b') && is_raw_string_start(&chars, i) {
            i = skip_raw_string(&chars, i);
        } else if c == 'b' && at(i + 1) == '"' {
            i = skip_string(&chars, i + 2);
        } else if c == 'b' && at(i + 1) == '\'' {
            i = skip_char(&chars, i + 1);
        } else if c == '\'' {
            // A character literal, or a lifetime / label.
            if at(i + 1) == '\\' || (at(i + 2) == '\'' && at(i + 1) != '\'') {
                i = skip_char(&chars, i);
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token::PathSep);
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn skip_char(chars: &[char], mut i: usize) -> usize {
    // At the opening quote.
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn is_raw_string_start(chars: &[char], i: usize) -> bool {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"') && (i == 0 || !is_ident_char(chars[i - 1]))
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn skip_raw_string(chars: &[char], mut i: usize) -> usize {
    while chars[i] != '#' && chars[i] != '"' {
        i += 1;
    }
    let mut hashes = 0;
    while chars[i] == '#' {
        hashes += 1;
        i += 1;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// The paths of a `use` tree starting at `tokens[*i]`, up to its `;`, with the name each one
/// is bound to (the last segment, or its `as` name).
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, String)>,
) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(name)) if name == "as" => {
                *i += 1;
                if let Some(Token::Ident(alias)) = tokens.get(*i) {
                    let alias = alias.clone();
                    *i += 1;
                    out.push((path.clone(), alias));
                }
                return;
            }
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
            }
            Some(Token::PathSep) => *i += 1,
            Some(Token::Punct('{')) => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        Some(Token::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Token::Punct(',')) => *i += 1,
                        None => return,
                        _ => use_tree(tokens, i, &path, out),
                    }
                }
            }
            Some(Token::Punct('*')) => {
                *i += 1;
                path.push("*".into());
                out.push((path, "*".into()));
                return;
            }
            _ => {
                if let Some(last) = path.last().cloned() {
                    let bound = if last == "self" {
                        path.pop();
                        path.last().cloned().unwrap_or_default()
                    } else {
                        last
                    };
                    out.push((path, bound));
                }
                return;
            }
        }
    }
}

/// Reads one file: its uses, re-exports and inline modules.
fn read_file(module: &[String], source: &str) -> FileFacts {
    let tokens = tokens(source);
    let mut facts = FileFacts::default();
    // The stack of modules the tokens are in: (path, brace depth at which it closes).
    let mut stack: Vec<(Vec<String>, usize)> = vec![(module.to_vec(), 0)];
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let current = stack.last().map(|(p, _)| p.clone()).unwrap_or_default();
        match &tokens[i] {
            Token::Punct('#') => {
                // `#[cfg(test)]`: the next item is left out whole.
                let is_cfg_test = matches!(
                    &tokens[i..(i + 7).min(tokens.len())],
                    [Token::Punct('#'), Token::Punct('['), Token::Ident(cfg), Token::Punct('('), Token::Ident(t), Token::Punct(')'), Token::Punct(']')]
                        if cfg == "cfg" && t == "test"
                );
                i = if is_cfg_test {
                    skip_item(&tokens, i + 7)
                } else {
                    i + 1
                };
            }
            Token::Ident(word) if word == "mod" => {
                let Some(Token::Ident(name)) = tokens.get(i + 1) else {
                    i += 1;
                    continue;
                };
                let name = name.clone();
                facts
                    .children
                    .entry(current.clone())
                    .or_default()
                    .insert(name.clone());
                if let Some(Token::Punct('{')) = tokens.get(i + 2) {
                    let mut path = current.clone();
                    path.push(name);
                    facts.inline.push(path.clone());
                    depth += 1;
                    stack.push((path, depth));
                    i += 3;
                } else {
                    i += 3;
                }
            }
            Token::Ident(word)
                if word == "macro_rules" && tokens.get(i + 1) == Some(&Token::Punct('!')) =>
            {
                if let Some(Token::Ident(name)) = tokens.get(i + 2) {
                    facts.macros.push(name.clone());
                }
                i += 3;
            }
            Token::Ident(word) if word == "use" => {
                let public = i > 0 && matches!(&tokens[i - 1], Token::Ident(p) if p == "pub")
                    || i > 3 && matches!(&tokens[i - 4], Token::Ident(p) if p == "pub");
                i += 1;
                let mut trees = Vec::new();
                use_tree(&tokens, &mut i, &[], &mut trees);
                for (path, bound) in trees {
                    if path
                        .first()
                        .is_some_and(|f| f == "std" || f == "core" || f == "alloc")
                    {
                        continue;
                    }
                    if public && bound != "*" {
                        facts
                            .reexports
                            .entry(current.clone())
                            .or_default()
                            .insert(bound, (current.clone(), path.clone()));
                    }
                    facts.uses.push((current.clone(), path));
                }
            }
            Token::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Token::Punct('}') => {
                if stack.len() > 1 && stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Token::Ident(first) => {
                // A path in code: `crate::a::b`, `super::x`, `child::f`.
                let preceded_by_sep = i > 0 && tokens[i - 1] == Token::PathSep;
                let preceded_by_dollar = i > 0 && tokens[i - 1] == Token::Punct('$');
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while let (Some(Token::PathSep), Some(Token::Ident(next))) =
                    (tokens.get(j), tokens.get(j + 1))
                {
                    path.push(next.clone());
                    j += 2;
                }
                if !preceded_by_sep && !preceded_by_dollar && path.len() > 1 {
                    facts.uses.push((current.clone(), path));
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    facts
}

/// The index just past the item that starts at `tokens[i]` (after its attributes): at its
/// `;`, or at the `}` that closes its body.
fn skip_item(tokens: &[Token], mut i: usize) -> usize {
    let mut level = 0usize;
    while i < tokens.len() {
        match tokens[i] {
            Token::Punct('(' | '[' | '{') => level += 1,
            Token::Punct(')' | ']') => level = level.saturating_sub(1),
            Token::Punct('}') => {
                level = level.saturating_sub(1);
                if level == 0 {
                    return i + 1;
                }
            }
            Token::Punct(';') if level == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Every module of the crate under `src/` (the library, not `src/bin`).
fn modules(src: &Path) -> Vec<Module> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            found.push(Module {
                path: parts,
                file: format!("src/{}", relative.display()),
            });
        }
    }
    found.sort_by(|a, b| a.file.cmp(&b.file));
    found
}

/// The import graph: file → the files it takes names from, each with the paths that do it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph(files: &[(Module, String)]) -> Graph {
    // Module path → file, for file modules and inline modules.
    let mut module_file: HashMap<Vec<String>, String> = HashMap::new();
    let mut facts: HashMap<String, FileFacts> = HashMap::new();
    for (module, source) in files {
        module_file.insert(module.path.clone(), module.file.clone());
        let f = read_file(&module.path, source);
        for inline in &f.inline {
            module_file.insert(inline.clone(), module.file.clone());
        }
        facts.insert(module.file.clone(), f);
    }
    let mut reexports: Reexports = HashMap::new();
    let mut children: HashMap<Vec<String>, BTreeSet<String>> = HashMap::new();
    // A macro called as `crate::name!` is defined where its `macro_rules!` is.
    let mut macros: HashMap<String, String> = HashMap::new();
    for (file, f) in &facts {
        for name in &f.macros {
            macros.insert(name.clone(), file.clone());
        }
    }
    for f in facts.values() {
        for (m, r) in &f.reexports {
            reexports.entry(m.clone()).or_default().extend(r.clone());
        }
        for (m, c) in &f.children {
            children.entry(m.clone()).or_default().extend(c.clone());
        }
    }
    let resolver = Resolver {
        module_file: &module_file,
        reexports: &reexports,
        children: &children,
        macros: &macros,
    };
    let mut graph = Graph::new();
    for (module, _) in files {
        let f = &facts[&module.file];
        let entry = graph.entry(module.file.clone()).or_default();
        for (within, path) in &f.uses {
            let Some(absolute) = resolver.absolute(within, path) else {
                continue;
            };
            if let Some(target) = resolver.file_of(&absolute, 0) {
                if target != module.file {
                    entry.entry(target).or_default().insert(path.join("::"));
                }
            }
        }
    }
    graph
}

struct Resolver<'a> {
    module_file: &'a HashMap<Vec<String>, String>,
    reexports: &'a Reexports,
    children: &'a HashMap<Vec<String>, BTreeSet<String>>,
    macros: &'a HashMap<String, String>,
}

impl Resolver<'_> {
    /// The absolute path of `path` as written inside module `within`, if it is a path into
    /// this crate.
    fn absolute(&self, within: &[String], path: &[String]) -> Option<Vec<String>> {
        let (first, rest) = path.split_first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => within.to_vec(),
            "super" => {
                let mut base = within.to_vec();
                base.pop()?;
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            name if self.children.get(within).is_some_and(|c| c.contains(name)) => {
                let mut base = within.to_vec();
                base.push(name.to_string());
                base
            }
            _ => return None,
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file that defines what `path` names: the deepest module on it, or where a name
    /// re-exported by that module comes from.
    fn file_of(&self, path: &[String], hops: usize) -> Option<String> {
        let mut module_len = 0;
        for len in (0..=path.len()).rev() {
            if self.module_file.contains_key(&path[..len]) {
                module_len = len;
                break;
            }
        }
        let module = &path[..module_len];
        if module.is_empty() && path.len() == 1 {
            if let Some(file) = self.macros.get(&path[0]) {
                return Some(file.clone());
            }
        }
        if hops < 16 {
            if let Some(name) = path.get(module_len) {
                if let Some((within, target)) = self.reexports.get(module).and_then(|r| r.get(name))
                {
                    if let Some(mut absolute) = self.absolute(within, target) {
                        absolute.extend(path[module_len + 1..].iter().cloned());
                        return self.file_of(&absolute, hops + 1);
                    }
                }
            }
        }
        self.module_file.get(module).cloned()
    }
}

/// The strongly connected components of more than one file (Tarjan's algorithm).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
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
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found.sort();
    s.found
}

/// What ties the files of each circle, for the failure message.
fn describe(graph: &Graph, found: &[Vec<String>]) -> String {
    let mut text = String::new();
    for (n, circle) in found.iter().enumerate() {
        text += &format!("circle {}: {}\n", n + 1, circle.join(", "));
        for from in circle {
            for (to, paths) in &graph[from] {
                if circle.contains(to) {
                    let paths: Vec<&str> = paths.iter().map(String::as_str).take(4).collect();
                    text += &format!("  {from} -> {to}: {}\n", paths.join(", "));
                }
            }
        }
    }
    text
}

fn crate_files() -> Vec<(Module, String)> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    modules(&src)
        .into_iter()
        .map(|m| {
            let source =
                std::fs::read_to_string(src.join(m.file.trim_start_matches("src/"))).unwrap();
            (m, source)
        })
        .collect()
}

/// No file of `src/` takes names, directly or through others, from a file that takes names
/// from it.
#[test]
fn the_modules_of_the_crate_import_each_other_without_circles() {
    let files = crate_files();
    let graph = graph(&files);
    // The check sees the imports at all: a link uses its send queue, the wire format the WAMP
    // messages.
    let edge = |from: &str, to: &str| graph.get(from).is_some_and(|e| e.contains_key(to));
    assert!(
        edge("src/forward/link.rs", "src/forward/queue.rs"),
        "{graph:#?}"
    );
    assert!(edge("src/wire/fast.rs", "src/wamp/mod.rs"), "{graph:#?}");
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(edges > 40, "only {edges} imports seen");
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "import circles in src/:\n{}",
        describe(&graph, &found)
    );
}

/// The checker finds a circle through a child's `super::`, through a re-export, and through a
/// path in code, and ignores test modules, comments and strings.
#[test]
fn the_checker_finds_circles_and_ignores_tests_comments_and_strings() {
    let module = |path: &[&str], file: &str, source: &str| {
        (
            Module {
                path: path.iter().map(|s| s.to_string()).collect(),
                file: file.into(),
            },
            source.to_string(),
        )
    };
    let files = vec![
        module(&[], "src/lib.rs", "pub mod a; pub mod b; mod c; pub use c::Thing;"),
        module(&["a"], "src/a/mod.rs", "mod child; pub struct Top; fn f() { child::run(); }"),
        module(&["a", "child"], "src/a/child.rs", "use super::Top; pub fn run() {}"),
        module(&["b"], "src/b.rs", "pub fn g() { let _ = crate::Thing; } // crate::a::Top\n const S: &str = \"crate::a::Top\"; #[cfg(test)] mod tests { use crate::a::Top; }"),
        module(&["c"], "src/c.rs", "pub struct Thing; fn h() { crate::b::g(); let _ = 'x'; let r = r#\"crate::a\"#; }"),
    ];
    let graph = graph(&files);
    let found = circles(&graph);
    assert_eq!(
        found,
        vec![
            vec!["src/a/child.rs".to_string(), "src/a/mod.rs".to_string()],
            vec!["src/b.rs".to_string(), "src/c.rs".to_string()],
        ],
        "{graph:#?}"
    );
    assert!(
        !graph["src/b.rs"].contains_key("src/a/mod.rs"),
        "{graph:#?}"
    );
    assert!(
        !graph["src/c.rs"].contains_key("src/a/mod.rs"),
        "{graph:#?}"
    );
}

/// How `name` is declared in a module's own tokens: `Some(true)` when some declaration of it
/// is plainly `pub` (not `pub(crate)`, `pub(super)`, not after `#[doc(hidden)]`), `Some(false)`
/// when it is declared but never so, `None` when not declared there. Items inside test modules
/// are left out; items of inline modules count too (the caller resolves modules by file).
fn visibility(tokens: &[Token], name: &str) -> Option<bool> {
    let kinds = [
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod", "union",
    ];
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(w)) => Some(w.as_str()),
        _ => None,
    };
    let mut found = None;
    let mut hidden = false;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Punct('#') => {
                let attr: Vec<&Token> = tokens[i..(i + 7).min(tokens.len())].iter().collect();
                let is =
                    |w: &str, at: usize| matches!(attr.get(at), Some(Token::Ident(x)) if x == w);
                if is("cfg", 2) && is("test", 4) {
                    i = skip_item(tokens, i + 7);
                    hidden = false;
                    continue;
                }
                if is("doc", 2) && is("hidden", 4) {
                    hidden = true;
                }
                // Past the attribute's closing bracket.
                let mut depth = 0usize;
                i += 1;
                while i < tokens.len() {
                    match tokens[i] {
                        Token::Punct('[') => depth += 1,
                        Token::Punct(']') => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            Token::Ident(word) => {
                let (public, mut j) = if word == "pub" {
                    match tokens.get(i + 1) {
                        Some(Token::Punct('(')) => (false, i + 4),
                        _ => (!hidden, i + 1),
                    }
                } else {
                    (false, i)
                };
                if let Some(kind) = ident(j) {
                    if kind == "unsafe" || kind == "async" {
                        j += 1;
                    }
                }
                match ident(j) {
                    Some(kind) if kinds.contains(&kind) && ident(j + 1) == Some(name) => {
                        found = Some(found.unwrap_or(false) || public);
                    }
                    Some("macro_rules") if ident(j + 2) == Some(name) => {
                        found = Some(found.unwrap_or(false) || public);
                    }
                    Some("use") => {
                        // The names a use brings in: the last segment of each path, or its
                        // alias.
                        let end = tokens[j..]
                            .iter()
                            .position(|t| *t == Token::Punct(';'))
                            .map_or(tokens.len(), |p| j + p);
                        let mut k = j + 1;
                        while k < end {
                            if let Token::Ident(w) = &tokens[k] {
                                let next = tokens.get(k + 1);
                                let is_last = !matches!(next, Some(Token::PathSep));
                                let aliased = matches!(next, Some(Token::Ident(a)) if a == "as");
                                if w == name && is_last && !aliased {
                                    found = Some(found.unwrap_or(false) || public);
                                }
                            }
                            k += 1;
                        }
                        i = end;
                    }
                    _ => {}
                }
                if word != "pub" {
                    hidden = false;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

/// The router embeds the library as any other router would: every path from `src/router/`
/// into the rest of the crate names an item that is public at the crate root (a `pub mod`
/// or `pub use` of `lib.rs` and, inside a public module, items declared plainly `pub`, not
/// `pub(crate)` and not `#[doc(hidden)]`).
#[test]
fn the_router_uses_only_what_the_crate_makes_public() {
    let files = crate_files();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let file_of_module = |module: &[String]| -> Option<Vec<Token>> {
        let base = src.join(module.join("/"));
        let path = [base.with_extension("rs"), base.join("mod.rs")]
            .into_iter()
            .find(|p| p.exists())?;
        Some(tokens(&std::fs::read_to_string(path).ok()?))
    };
    let lib = tokens(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut checked = 0;
    let mut refused = Vec::new();
    for (module, source) in &files {
        if module.path.first().map(String::as_str) != Some("router") {
            continue;
        }
        let facts = read_file(&module.path, source);
        for (within, path) in &facts.uses {
            if path.first().map(String::as_str) != Some("crate") {
                continue;
            }
            let rest = &path[1..];
            // Walk the path: each module on it must be public, and so the item it ends at.
            let mut scope = lib.clone();
            let mut at: Vec<String> = Vec::new();
            for (n, segment) in rest.iter().enumerate() {
                match visibility(&scope, segment) {
                    Some(true) => {}
                    // Macros exported at the root (`#[macro_export]`) are public there.
                    None if at.is_empty() && facts.macros.is_empty() && segment == "settings" => {}
                    other => {
                        refused.push(format!(
                            "{} (in {}): `{}` is {}",
                            path.join("::"),
                            within.join("::"),
                            segment,
                            if other.is_some() {
                                "not public"
                            } else {
                                "not found"
                            }
                        ));
                        break;
                    }
                }
                at.push(segment.clone());
                if n + 1 < rest.len() {
                    match file_of_module(&at) {
                        Some(t) => scope = t,
                        // An item, not a module: what follows is its own (a variant, a
                        // method).
                        None => break,
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} paths from the router into the crate seen"
    );
    assert!(
        refused.is_empty(),
        "the router reaches past the public API:\n{}",
        refused.join("\n")
    );
}

/// The visibility check tells `pub` from `pub(crate)`, `#[doc(hidden)]`, and test modules.
#[test]
fn the_public_api_check_tells_pub_from_crate_private_and_hidden() {
    let t = tokens(
        "pub fn open() {}\npub(crate) fn inner() {}\n#[doc(hidden)]\npub fn hidden() {}\n\
         pub use a::{B, C as D};\npub mod m;\n#[cfg(test)]\nmod tests { pub fn in_test() {} }",
    );
    assert_eq!(visibility(&t, "open"), Some(true));
    assert_eq!(visibility(&t, "inner"), Some(false));
    assert_eq!(visibility(&t, "hidden"), Some(false));
    assert_eq!(visibility(&t, "B"), Some(true));
    assert_eq!(visibility(&t, "D"), Some(true));
    assert_eq!(visibility(&t, "C"), None);
    assert_eq!(visibility(&t, "m"), Some(true));
    assert_eq!(visibility(&t, "in_test"), None);
    assert_eq!(visibility(&t, "absent"), None);
}
