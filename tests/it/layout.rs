//! The source layout issue 12 asks for, checked on every `make test`: no import circle between
//! the top-level modules of `src/`, no source file over 600 lines, a `config` module that
//! leans on nothing but `routing`, `split`, `net` and `certs` (a leaf: it imports nothing), and
//! `unsafe` allowed in one module only (`handover`, which adopts received descriptors).
//!
//! A top-level module is `src/X.rs` together with everything under `src/X/`. Its edges are the
//! `crate::Y` paths (and `use crate::{Y, Z::..}` groups, and `super::Y` paths that climb to the
//! crate root) in its non-test code: `#[cfg(test)]` items and `tests.rs` files are left out, as
//! are comments and string literals. `super::` and `self::` paths that stay inside the module are
//! no edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files longer than this are too big to review as one piece.
const MAX_LINES: usize = 600;

/// What `config` may import: the leaves it describes, and nothing that serves requests.
const CONFIG_MAY_IMPORT: &[&str] = &["config", "routing", "split", "net", "certs"];

/// The one file that may allow `unsafe_code` (the crate denies it).
const UNSAFE_ALLOWED_IN: &str = "src/handover.rs";

#[test]
fn the_source_layout_has_no_import_circle_no_oversized_file_and_a_leaf_config() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layout = Layout::read(&src);
    let mut problems = Vec::new();

    for circle in layout.circles() {
        let mut text = format!("import circle between {}:", circle.join(", "));
        for (from, to, at) in layout.edges_within(&circle) {
            text.push_str(&format!("\n    {from} -> {to}  ({at})"));
        }
        problems.push(text);
    }
    for (file, lines) in &layout.lines {
        if *lines > MAX_LINES && !is_test_file(file) {
            problems.push(format!(
                "{} has {lines} lines (at most {MAX_LINES})",
                file.display()
            ));
        }
    }
    for use_ in &layout.uses {
        if use_.from == "config" && !CONFIG_MAY_IMPORT.contains(&use_.to.as_str()) {
            problems.push(format!(
                "config imports {} ({}:{}); config may import only {}",
                use_.to,
                use_.file.display(),
                use_.line,
                CONFIG_MAY_IMPORT.join(", ")
            ));
        }
    }
    for use_ in &layout.uses {
        if use_.from == "certs" {
            problems.push(format!(
                "certs imports {} ({}:{}); it is a leaf that config shares",
                use_.to,
                use_.file.display(),
                use_.line
            ));
        }
    }
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(src.parent().unwrap()).unwrap();
        let allows = text.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with("//") && l.contains("allow(unsafe_code)")
        });
        if allows && rel != Path::new(UNSAFE_ALLOWED_IN) {
            problems.push(format!(
                "{} allows unsafe code; only {UNSAFE_ALLOWED_IN} may",
                rel.display()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} layout problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// One reference from a module to another, where it first appears in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

struct Layout {
    /// Every reference, one per (file, target module), first occurrence.
    uses: Vec<Use>,
    /// Line counts of every `.rs` file, relative to the crate root.
    lines: BTreeMap<PathBuf, usize>,
    modules: BTreeSet<String>,
}

impl Layout {
    fn read(src: &Path) -> Layout {
        let modules = top_level_modules(src);
        let root = src.parent().unwrap();
        let mut uses = Vec::new();
        let mut lines = BTreeMap::new();
        for file in rust_files(src) {
            let text = std::fs::read_to_string(&file).unwrap();
            let rel = file.strip_prefix(root).unwrap().to_path_buf();
            lines.insert(rel.clone(), text.lines().count());
            let Some(module) = module_of(src, &file) else {
                continue; // lib.rs and main.rs: the roots
            };
            if is_test_file(&rel) {
                continue;
            }
            // src/X.rs is module X (depth 1); src/X/Y.rs is X::Y (depth 2), and so on.
            let depth = file.strip_prefix(src).unwrap().components().count();
            let mut seen = BTreeSet::new();
            for (to, line) in references(&text, depth) {
                if to != module && modules.contains(&to) && seen.insert(to.clone()) {
                    uses.push(Use {
                        from: module.clone(),
                        to,
                        file: rel.clone(),
                        line,
                    });
                }
            }
        }
        uses.sort();
        Layout {
            uses,
            lines,
            modules,
        }
    }

    fn graph(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in &self.modules {
            graph.entry(m).or_default();
        }
        for u in &self.uses {
            graph.entry(&u.from).or_default().insert(&u.to);
        }
        graph
    }

    /// Strongly connected components of more than one module (Tarjan).
    fn circles(&self) -> Vec<Vec<String>> {
        struct Tarjan<'a> {
            graph: BTreeMap<&'a str, BTreeSet<&'a str>>,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<String>>,
        }
        impl<'a> Tarjan<'a> {
            fn visit(&mut self, v: &'a str) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                let next: Vec<&'a str> = self.graph[v].iter().copied().collect();
                for w in next {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let low = self.low[v].min(self.low[w]);
                        self.low.insert(v, low);
                    } else if self.on_stack.contains(w) {
                        let low = self.low[v].min(self.index[w]);
                        self.low.insert(v, low);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack.remove(w);
                        component.push(w.to_string());
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.found.push(component);
                    }
                }
            }
        }
        let graph = self.graph();
        let nodes: Vec<&str> = graph.keys().copied().collect();
        let mut t = Tarjan {
            graph,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for v in nodes {
            if !t.index.contains_key(v) {
                t.visit(v);
            }
        }
        t.found.sort();
        t.found
    }

    /// The edges inside one circle, each with the first place it is written.
    fn edges_within(&self, circle: &[String]) -> Vec<(String, String, String)> {
        let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
        for u in &self.uses {
            if circle.contains(&u.from) && circle.contains(&u.to) {
                edges
                    .entry((u.from.clone(), u.to.clone()))
                    .or_insert_with(|| format!("{}:{}", u.file.display(), u.line));
            }
        }
        edges
            .into_iter()
            .map(|((from, to), at)| (from, to, at))
            .collect()
    }
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
            && path
                .components()
                .next()
                .is_some_and(|c| c.as_os_str() == "src")
}

/// `src/X.rs` and `src/X/` for every X but the crate roots.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                path.file_name()?.to_str().map(str::to_string)
            } else if path.extension().is_some_and(|e| e == "rs") {
                path.file_stem()?.to_str().map(str::to_string)
            } else {
                None
            }
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to, or `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    let module = name.strip_suffix(".rs").unwrap_or(name);
    (module != "lib" && module != "main").then(|| module.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Identifiers, `::` and punctuation with their line numbers; comments (nested block comments
/// too), string, byte-string, raw-string and char literals, and lifetimes are dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_whitespace() => i += 1,
            '/' if at(i + 1) == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
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
                        line += usize::from(chars[i] == '\n');
                        i += 1;
                    }
                }
            }
            '"' => i = skip_quoted(&chars, i, &mut line),
            '\'' => {
                // A char literal ('a', '\n', '\u{..}') or a lifetime ('a, 'static).
                if at(i + 1) == '\\' {
                    // Past the quote, the backslash and the escaped character.
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    i += 1;
                    while at(i).is_alphanumeric() || at(i) == '_' {
                        i += 1;
                    }
                }
            }
            _ if c.is_alphabetic() || c == '_' => {
                let start = i;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // Raw strings and byte strings: r"..", r#".."#, b"..", br#".."#.
                let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
                if matches!(word.as_str(), "r" | "br" | "b" | "c" | "cr")
                    && at(i + hashes) == '"'
                    && (hashes == 0 || word.ends_with('r'))
                {
                    if word.ends_with('r') {
                        i += hashes + 1;
                        let close: Vec<char> = std::iter::once('"')
                            .chain("#".repeat(hashes).chars())
                            .collect();
                        while i < chars.len() && !chars[i..].starts_with(&close) {
                            line += usize::from(chars[i] == '\n');
                            i += 1;
                        }
                        i += close.len();
                    } else {
                        // b"..": the same escapes as a plain string.
                        i = skip_quoted(&chars, i, &mut line);
                    }
                    continue;
                }
                if word == "b" && at(i) == '\'' {
                    // b'x' or b'\n'
                    i += 1;
                    while i < chars.len() && chars[i] != '\'' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                    continue;
                }
                out.push((Tok::Ident(word), line));
            }
            _ if c.is_ascii_digit() => {
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
            ':' if at(i + 1) == ':' => {
                out.push((Tok::Path, line));
                i += 2;
            }
            _ => {
                out.push((Tok::Punct(c), line));
                i += 1;
            }
        }
    }
    out
}

/// The index just past the string literal whose opening quote is at `i`, counting its lines.
fn skip_quoted(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\\' {
            i += 1;
        }
        *line += usize::from(chars.get(i) == Some(&'\n'));
        i += 1;
    }
    i + 1
}

fn is_punct(t: Option<&(Tok, usize)>, c: char) -> bool {
    matches!(t, Some((Tok::Punct(p), _)) if *p == c)
}

fn is_ident(t: Option<&(Tok, usize)>, word: &str) -> bool {
    matches!(t, Some((Tok::Ident(w), _)) if w == word)
}

/// The index just past the bracketed group that opens at `i` (`(`, `[` or `{`).
fn skip_group(toks: &[(Tok, usize)], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j < toks.len() {
        match toks[j].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// Whether the attribute that starts at `i` (`#` `[` ...) is `cfg(test)` or a `cfg` that
/// needs `test` (`cfg(all(test, unix))`); `cfg(not(test))` is not.
fn is_test_cfg(toks: &[(Tok, usize)], i: usize) -> bool {
    if !is_punct(toks.get(i + 1), '[') || !is_ident(toks.get(i + 2), "cfg") {
        return false;
    }
    let end = skip_group(toks, i + 1);
    let words: Vec<&str> = toks[i..end]
        .iter()
        .filter_map(|(t, _)| match t {
            Tok::Ident(w) => Some(w.as_str()),
            _ => None,
        })
        .collect();
    words.contains(&"test") && !words.contains(&"not") && !words.contains(&"any")
}

/// The index just past the item that starts at `i`: its attributes, then up to a `;` or a
/// `{...}` block at the item's own level.
fn skip_item(toks: &[(Tok, usize)], mut i: usize) -> usize {
    while is_punct(toks.get(i), '#') && is_punct(toks.get(i + 1), '[') {
        i = skip_group(toks, i + 1);
    }
    while i < toks.len() {
        match toks[i].0 {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return skip_group(toks, i),
            Tok::Punct('(' | '[') => i = skip_group(toks, i),
            _ => i += 1,
        }
    }
    i
}

/// The first identifier of each element of the `{...}` group that opens at `i`, with its line:
/// `{a::{b, c}, d as e, self}` gives `a`, `d` and `self`.
fn group_heads(toks: &[(Tok, usize)], i: usize) -> Vec<(String, usize)> {
    let end = skip_group(toks, i);
    let mut heads = Vec::new();
    let mut j = i + 1;
    let mut expect_head = true;
    while j < end.saturating_sub(1) {
        match &toks[j].0 {
            Tok::Punct('{' | '(' | '[') => {
                j = skip_group(toks, j);
                continue;
            }
            Tok::Punct(',') => expect_head = true,
            Tok::Ident(w) if expect_head => {
                heads.push((w.clone(), toks[j].1));
                expect_head = false;
            }
            _ => {}
        }
        j += 1;
    }
    heads
}

/// Every top-level module name a file's non-test code refers to, with its line. `depth` is how
/// deep the file's own module sits below the crate root (1 for `src/X.rs`).
fn references(text: &str, depth: usize) -> Vec<(String, usize)> {
    let toks = tokens(text);
    let mut refs = Vec::new();
    // Brace depths at which inline `mod name { .. }` blocks close, innermost last.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here = &toks[i].0;
        if *here == Tok::Punct('#') && is_test_cfg(&toks, i) {
            i = skip_item(&toks, i);
            continue;
        }
        match here {
            Tok::Punct('{') => braces += 1,
            Tok::Punct('}') => {
                braces = braces.saturating_sub(1);
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            Tok::Ident(w)
                if w == "mod"
                    && matches!(toks.get(i + 1), Some((Tok::Ident(_), _)))
                    && is_punct(toks.get(i + 2), '{') =>
            {
                inline_mods.push(braces);
            }
            Tok::Ident(w) if w == "crate" || w == "super" => {
                // Only a path's first segment: `a::crate` is no path, `$crate::x` is.
                let first = i == 0 || toks[i - 1].0 != Tok::Path;
                if first && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) {
                    let mut j = i;
                    let mut level = depth + inline_mods.len();
                    if w == "crate" {
                        level = 0;
                        j += 2;
                    } else {
                        while is_ident(toks.get(j), "super")
                            && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Path)
                        {
                            level = level.saturating_sub(1);
                            j += 2;
                        }
                    }
                    // Only a path that reaches the crate root names a top-level module.
                    if level == 0 {
                        match toks.get(j) {
                            Some((Tok::Ident(m), line)) => refs.push((m.clone(), *line)),
                            Some((Tok::Punct('{'), _)) => refs.extend(group_heads(&toks, j)),
                            _ => {}
                        }
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

#[test]
fn the_layout_parser_finds_the_edges_a_reader_would() {
    let text = r##"
//! A module doc naming crate::doc_comment.
/* A block /* nested crate::nested */ comment naming crate::block. */
use crate::config::Config;
pub(crate) use crate::routing::Route;
use crate::{
    split::{Side, Shift},
    net, stats::Stats as S,
};
use super::sibling;
use super::super::upstream::Upstream;
use self::inner::X;
const S1: &str = "crate::in_a_string";
const S2: &str = r#"crate::in_a_raw_string "quoted""#;
const C: char = '"';
const Q: [char; 2] = ['\'', '\u{7b}']; const B: u8 = b'"';
fn f<'a>(x: &'a str) -> &'a str { crate::telemetry::log(x); x }
mod inner {
    use super::super::super::lambda::Event;
    fn g() { super::sibling(); }
}
#[cfg(test)]
mod tests {
    use crate::admin::Admin;
}
#[cfg(test)]
use crate::proxy::Proxy;
#[cfg(not(test))]
use crate::auth::Auth;
fn h() { let _ = crate::limits::Limit { a: 1 }; }
"##;
    // As the file src/X/Y.rs: depth 2.
    let got: Vec<String> = references(text, 2).into_iter().map(|(m, _)| m).collect();
    assert_eq!(
        got,
        [
            "config",
            "routing",
            "split",
            "net",
            "stats",
            "upstream",
            "telemetry",
            "lambda",
            "auth",
            "limits"
        ]
    );
    // As src/X.rs (depth 1), `super::sibling` climbs to the crate root.
    let got: Vec<String> = references("use super::sibling;\nmod m { use super::here; }", 1)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(got, ["sibling"]);
    // Lines are those of the reference.
    assert_eq!(references("\n\nuse crate::a;", 1), [("a".to_string(), 3)]);
}
