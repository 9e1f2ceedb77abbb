//! The library's module dependencies as `docs/MODULES.md` lists them: the list must be what
//! the code imports, and the imports must have no cycle. A change that adds an import
//! between two modules fails here until the list says so, so the map stays true.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules `lib.rs` declares.
fn lib_modules(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            rust_files(&entry.path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every `crate::x` a module's files name (tests included: they shape the same
/// dependencies), including `use crate::{x, y::z}` groups.
fn imports(src: &Path, modules: &[String]) -> Graph {
    let known: BTreeSet<&str> = modules.iter().map(String::as_str).collect();
    let mut graph = Graph::new();
    for m in modules {
        let mut files = Vec::new();
        rust_files(&src.join(format!("{m}.rs")), &mut files);
        rust_files(&src.join(m), &mut files);
        let deps = graph.entry(m.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut names = Vec::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    names.extend(
                        group
                            .split(',')
                            .map(|g| g.trim().split("::").next().unwrap_or("")),
                    );
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    names.push(&rest[..end]);
                }
            }
            for n in names {
                if known.contains(n) && n != m {
                    deps.insert(n.to_string());
                }
            }
        }
    }
    graph
}

/// `- \`a\` → \`b\`, \`c\`` lines (`→ nothing` for a leaf).
fn documented(doc: &str) -> Graph {
    doc.lines()
        .filter_map(|l| {
            let (module, deps) = l.strip_prefix("- `")?.split_once("` →")?;
            let deps = deps
                .split(',')
                .map(|d| d.trim().trim_matches('`').to_string())
                .filter(|d| !d.is_empty() && d != "nothing")
                .collect();
            Some((module.to_string(), deps))
        })
        .collect()
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let list = if deps.is_empty() {
                "nothing".to_string()
            } else {
                deps.iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("- `{m}` → {list}\n")
        })
        .collect()
}

/// A cycle, if any, by depth-first search.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

#[test]
fn docs_modules_lists_what_the_code_imports_and_there_is_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let actual = imports(&src, &lib_modules(&src));
    if let Some(c) = cycle(&actual) {
        panic!("import cycle between modules: {}", c.join(" -> "));
    }
    let doc_path = root.join("../docs/MODULES.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    assert_eq!(
        documented(&doc),
        actual,
        "{} is out of date; its list should read:\n{}",
        doc_path.display(),
        render(&actual)
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
}
