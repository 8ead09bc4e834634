//! The workspace's layering, checked: which crossmerge crate may depend on which (the direction
//! the root Cargo.toml and each lib.rs state), that candle stays out of the core, and that no
//! two source files import each other, directly or round a longer loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every crate of the workspace: its name, folder, and the workspace crates it may use.
const ALLOWED: &[(&str, &str, &[&str])] = &[
    ("crossmerge-store", "crates/store", &[]),
    ("crossmerge-core", "crates/core", &["crossmerge-store"]),
    ("crossmerge-nn", "crates/nn", &["crossmerge-store"]),
    ("crossmerge-synth", "crates/synth", &["crossmerge-store"]),
    ("crossmerge-web", "crates/web", &["crossmerge-core"]),
    (
        "crossmerge",
        ".",
        &[
            "crossmerge-store",
            "crossmerge-core",
            "crossmerge-nn",
            "crossmerge-synth",
            "crossmerge-web",
        ],
    ),
    ("xtask", "xtask", &["crossmerge", "crossmerge-synth"]),
];

/// Dependencies only the model layer (and the glue above it) may build.
const MODEL_ONLY: &[&str] = &["candle-core", "candle-nn", "tokenizers", "pulp"];

fn manifest(dir: &str) -> toml::Table {
    let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// Names of every dependency of a manifest, normal, dev and build.
fn dependencies(m: &toml::Table) -> BTreeSet<String> {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(|d| d.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

#[test]
fn crates_depend_only_downward() {
    let members: BTreeSet<&str> = ALLOWED.iter().map(|(n, _, _)| *n).collect();
    let listed = manifest(".")["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect::<BTreeSet<_>>();
    let known: BTreeSet<String> = ALLOWED
        .iter()
        .filter(|(_, d, _)| *d != ".")
        .map(|(_, d, _)| (*d).to_owned())
        .collect();
    assert_eq!(
        listed, known,
        "a workspace member without a place in ALLOWED (give it one here and in the README)"
    );
    let mut wrong = Vec::new();
    for (name, dir, allowed) in ALLOWED {
        let m = manifest(dir);
        assert_eq!(m["package"]["name"].as_str(), Some(*name), "{dir}");
        for dep in dependencies(&m) {
            if members.contains(dep.as_str()) && !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{name} depends on {dep}"));
            }
            if MODEL_ONLY.contains(&dep.as_str()) && !["crossmerge-nn", "crossmerge"].contains(name)
            {
                wrong.push(format!(
                    "{name} depends on {dep}, which belongs to crossmerge-nn"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "against the layering: {wrong:?}");
}

/// A source file's module path: `lib.rs` is the root, `a/b.rs` is `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_owned())
        .collect();
    if parts == ["lib"] || parts == ["main"] {
        Vec::new()
    } else {
        parts
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `a::b::c` paths a file names after `crate::`, `super::` or `self::`, or relative to
/// one of its own child modules (`use child::X`), resolved to module paths.
fn referenced(
    module: &[String],
    is_dir_module: bool,
    children: &[String],
    text: &str,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `other_crate::`
        }
        out.push(ident(&text[i + 7..]));
    }
    // `super::` from `a/b.rs` (module a::b) is `a`; `self::` is the module itself.
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    for (i, _) in text.match_indices("super::") {
        let mut p = parent.clone();
        p.extend(ident(&text[i + 7..]));
        out.push(p);
    }
    if is_dir_module {
        for (i, _) in text.match_indices("self::") {
            if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut p = module.to_vec();
            p.extend(ident(&text[i + 6..]));
            out.push(p);
        }
        for child in children {
            for (i, _) in text.match_indices(&format!("{child}::")) {
                if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let mut p = module.to_vec();
                p.extend(ident(&text[i..]));
                out.push(p);
            }
        }
    }
    out
}

/// Depth-first search from `m`; every cycle met is pushed to `found` as `a → b → a`.
fn visit(
    m: &Vec<String>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    stack: &mut Vec<Vec<String>>,
    done: &mut BTreeSet<Vec<String>>,
    found: &mut Vec<String>,
) {
    if done.contains(m) {
        return;
    }
    if let Some(i) = stack.iter().position(|s| s == m) {
        let cycle: Vec<String> = stack[i..]
            .iter()
            .chain(std::iter::once(m))
            .map(|p| p.join("::"))
            .collect();
        found.push(cycle.join(" → "));
        return;
    }
    stack.push(m.clone());
    for next in edges.get(m).into_iter().flatten() {
        visit(next, edges, stack, done, found);
    }
    stack.pop();
    done.insert(m.clone());
}

#[test]
fn no_source_files_import_each_other() {
    let mut loops = Vec::new();
    for (name, dir, _) in ALLOWED {
        let src = root().join(dir).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeMap<Vec<String>, PathBuf> = files
            .iter()
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        // Edges between files, leaving out a module's use of its own ancestors (a child
        // naming what its parent declares is how Rust modules nest, not a loop).
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, file) in &modules {
            // Code only: a doc link names a module without importing it.
            let text: String = std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let is_dir_module = module.is_empty() || file.with_extension("").is_dir();
            let children: Vec<String> = modules
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .map(|m| m[module.len()].clone())
                .collect();
            for path in referenced(module, is_dir_module, &children, &text) {
                let target = (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| modules.contains_key(p))
                    .unwrap_or_default();
                if &target != module && !module.starts_with(&target) {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        let mut done = BTreeSet::new();
        let mut found = Vec::new();
        for m in modules.keys() {
            visit(m, &edges, &mut Vec::new(), &mut done, &mut found);
        }
        loops.extend(found.into_iter().map(|c| format!("{name}: {c}")));
    }
    assert!(loops.is_empty(), "files that import each other: {loops:#?}");
}
