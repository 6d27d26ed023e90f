//! The crate's layers, kept by a test: every file under `proxy/src` is read, the `crate::`
//! and `super::` paths its non-test code uses are collected, and an import of a higher layer, or two
//! modules importing each other, fails the test with the file and the import.
//!
//! The order, lowest first (a module may import its own layer and those below):
//!
//! - foundation: locking, logging, events and alarms, privileges, re-read files,
//!   supervised tasks, the connection type, cheap deadlines; they import nothing of the crate.
//! - codecs: pure parsing and formatting (the line reader, SMTP and POP3 commands and
//!   replies, SASL, PROXY v2, VRRP packets and state machine, the agent wire format, the
//!   routing map syntax, the directories' keys, templates and LDAP filters), no I/O beyond
//!   reading lines or a map file.
//! - configuration: placed above the codecs, which is the honest order: validating the
//!   TOML produces the codecs' types (VRRP parameters, agent keys) and checks routing
//!   maps against the pools; the certificate store is built from it. The cluster's
//!   certificate authority and the manager's mutual TLS belong here too: files and TLS
//!   configurations, below everything that runs the manager or a front-end.
//! - kernel side: the eBPF programs and their pinned maps.
//! - shared state: what the sessions and the control tasks both hold: the health board
//!   (back-end state and the "capacity freed" signal admission waits on), the HA drain
//!   gate and the front-end's own health.
//! - back-end side: pools, groups, selection, admission, leases and legs, and the probes
//!   and agent polls that feed the board.
//! - sessions: per-client limits, the per-service context, the core the SMTP and POP3
//!   sessions share (errors, TLS upgrade, command reading, error budget), the sessions,
//!   the front's listeners and accept loops.
//! - control: VRRP at run time, the load writer, the SNMP notifications of alarms, the
//!   agent daemon, the front-end tied together on its kernel side, its control socket, the
//!   daemon itself, the cluster manager's configuration journal.
#![cfg(test)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Layers, lowest first. A module belongs to the longest entry that is a prefix of its
/// path; every module must belong to one.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "sync",
            "logging",
            "events",
            "privs",
            "reload",
            "supervise",
            "stream",
            "stats",
            "release",
            "notify",
            "wait",
        ],
    ),
    (
        "codecs",
        &[
            "lines",
            "smtp",
            "smtp::command",
            "smtp::reply",
            "smtp::data",
            "pop3",
            "pop3::command",
            "pop3::response",
            "sasl",
            "backend::proxy_v2",
            "vrrp",
            "agent_wire",
            "prometheus",
            "route",
            "directory::template",
            "directory::filter",
        ],
    ),
    (
        "configuration",
        &["config", "tls", "manager::pki", "manager::tls"],
    ),
    ("kernel side", &["datapath"]),
    (
        "shared state",
        &["health::board", "ha::hooks", "ha::gate", "ha::health"],
    ),
    ("back-end side", &["backend", "health", "directory"]),
    (
        "sessions",
        &[
            "front::limits",
            "service",
            "session_core",
            "smtp::session",
            "pop3::session",
            "front",
        ],
    ),
    (
        "control",
        &[
            "ha",
            "load_writer",
            "snmp",
            "agent",
            "frontend",
            "control",
            "daemon",
            "manager",
            "install_update",
        ],
    ),
];

/// The layer index and table entry of a module path (`smtp::session::auth`).
fn unit(module: &[String]) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (i, (_, entries)) in LAYERS.iter().enumerate() {
        for e in entries.iter() {
            let parts: Vec<&str> = e.split("::").collect();
            if parts.len() <= module.len()
                && parts.iter().zip(module).all(|(a, b)| *a == b)
                && best.is_none_or(|(_, b)| b.split("::").count() < parts.len())
            {
                best = Some((i, e));
            }
        }
    }
    best
}

/// Source text with comments, string and char literals blanked (newlines kept), so braces
/// and `crate::` inside them are not seen.
fn blank(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let keep = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(keep(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(keep(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    for &ch in &b[i..=e] {
                        out.push(keep(ch));
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The blanked text without the items under `#[cfg(test)]` (test modules, test helpers).
fn without_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` (a `use`, a `mod x;`) or its balanced block.
        let semi = item.find(';');
        let open = item.find('{');
        let end = match (semi, open) {
            (Some(s), Some(o)) if s < o => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(o)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[o..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        out.extend(
            item[..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expands the use tree or path at the start of `s` (after `crate::`) into full paths.
fn paths(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut cur: Vec<String> = prefix.to_vec();
    loop {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        if b.get(i) == Some(&'{') {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == '}' {
                    i += 1;
                    break;
                }
                let used: String = b[i..].iter().collect();
                i += paths(&used, &cur, out);
            }
            return i;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let seg: String = b[start..i].iter().collect();
        if seg.is_empty() {
            break;
        }
        if seg != "self" {
            cur.push(seg);
        }
        if b.get(i) == Some(&':') && b.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            break;
        }
    }
    if cur.len() > prefix.len() || !cur.is_empty() {
        out.push(cur);
    }
    i
}

/// The module path of a file under `proxy/src` (`smtp/session/auth.rs` is
/// `smtp::session::auth`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Files declared as `#[cfg(test)] mod x;`: test code as a whole.
fn test_files(src: &Path, files: &[PathBuf]) -> BTreeSet<Vec<String>> {
    let mut tests = BTreeSet::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let text = blank(&text);
        let rel = f.strip_prefix(src).unwrap_or(f);
        let mut base = module_of(rel);
        if !(rel.ends_with("mod.rs") || rel.ends_with("lib.rs") || rel.ends_with("main.rs")) {
            // `mod x;` in `a/b.rs` is `a/b/x.rs`: the module path already names `b`.
        } else if rel.ends_with("lib.rs") || rel.ends_with("main.rs") {
            base.clear();
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            let item = rest[at + "#[cfg(test)]".len()..].trim_start();
            let item = item
                .strip_prefix("pub(crate) ")
                .or_else(|| item.strip_prefix("pub "))
                .unwrap_or(item);
            if let Some(m) = item.strip_prefix("mod ") {
                let name: String = m.chars().take_while(|c| is_ident(*c)).collect();
                if m[name.len()..].trim_start().starts_with(';') {
                    let mut t = base.clone();
                    t.push(name);
                    tests.insert(t);
                }
            }
            rest = &rest[at + 1..];
        }
    }
    tests
}

/// `(file, module, imported path)` for every `crate::` path in non-test code.
fn imports(src: &Path) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let tests = test_files(src, &files);
    let mut found = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap_or(f);
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        let module = module_of(rel);
        if tests
            .iter()
            .any(|t| module.len() >= t.len() && module[..t.len()] == t[..])
        {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let code = without_tests(&blank(&text));
        let mut rest = code.as_str();
        let mut offset = 0;
        while let Some(at) = rest.find("crate::") {
            let before = code[..offset + at].chars().next_back();
            let after = &rest[at + "crate::".len()..];
            if !before.is_some_and(|c| is_ident(c) || c == '$') {
                let mut ps = Vec::new();
                paths(after, &[], &mut ps);
                for p in ps {
                    found.push((rel.display().to_string(), module.clone(), p));
                }
            }
            offset += at + "crate::".len();
            rest = &code[offset..];
        }
        // `super::` paths, resolved against the file's module (inline modules of non-test
        // code are not told apart: the crate has none that import through `super::`).
        let mut rest = code.as_str();
        let mut offset = 0;
        while let Some(at) = rest.find("super::") {
            let start = offset + at;
            let before = code[..start].chars().next_back();
            let mut after = &code[start..];
            let mut base = module.clone();
            while let Some(r) = after.strip_prefix("super::") {
                base.pop();
                after = r;
            }
            // Only the first `super` of a chain starts a path.
            if !before.is_some_and(|c| is_ident(c) || c == ':') {
                let mut ps = Vec::new();
                paths(after, &base, &mut ps);
                for p in ps {
                    found.push((rel.display().to_string(), module.clone(), p));
                }
            }
            offset = code.len() - after.len();
            rest = &code[offset..];
        }
    }
    found
}

/// What is wrong with the crate's imports, one line each.
fn violations(src: &Path) -> Vec<String> {
    let found = imports(src);
    let mut bad = Vec::new();
    // Edges between table entries, and between sibling files of one folder.
    let mut units: BTreeMap<(&str, &str), (String, String)> = BTreeMap::new();
    let mut files: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    let modules: BTreeSet<Vec<String>> = found.iter().map(|(_, m, _)| m.clone()).collect();
    let mut seen_files = BTreeSet::new();
    for (file, module, path) in &found {
        let Some((from_layer, from)) = unit(module) else {
            if seen_files.insert(file.clone()) {
                bad.push(format!("{file}: module {} has no layer", module.join("::")));
            }
            continue;
        };
        let Some((to_layer, to)) = unit(path) else {
            bad.push(format!(
                "{file}: `crate::{}` is in no layer",
                path.join("::")
            ));
            continue;
        };
        let shown = format!("crate::{}", path.join("::"));
        if to_layer > from_layer {
            bad.push(format!(
                "{file}: `{shown}` imports layer {:?} ({to}) from layer {:?} ({from})",
                LAYERS[to_layer].0, LAYERS[from_layer].0
            ));
        }
        if from != to {
            units
                .entry((from, to))
                .or_insert((file.clone(), shown.clone()));
        }
        // The module the path lands in: its longest prefix that is a file of the crate.
        let target = (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p));
        if let Some(target) = target
            && target.len() == module.len()
            && target.len() > 1
            && target[..target.len() - 1] == module[..module.len() - 1]
            && target != *module
        {
            files
                .entry((module.join("::"), target.join("::")))
                .or_insert((file.clone(), shown));
        }
    }
    for ((a, b), (file, shown)) in &units {
        if a < b
            && let Some((back_file, back)) = units.get(&(*b, *a))
        {
            bad.push(format!(
                "cycle {a} <-> {b}: {file} uses `{shown}`, {back_file} uses `{back}`"
            ));
        }
    }
    for ((a, b), (file, shown)) in &files {
        if a < b
            && let Some((back_file, back)) = files.get(&(b.clone(), a.clone()))
        {
            bad.push(format!(
                "cycle {a} <-> {b}: {file} uses `{shown}`, {back_file} uses `{back}`"
            ));
        }
    }
    bad
}

#[test]
fn layers_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "{} import(s) break the layers (see proxy/src/architecture.rs):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_use_trees_inline_paths_and_skips_tests() {
    let code = without_tests(&blank(
        "use crate::{a::b, c::{d, self}};\n// crate::x\nfn f() { crate::e::g(\"crate::y\"); }\n#[cfg(test)]\nmod tests { use crate::z; }\n",
    ));
    let mut all = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        paths(rest, &[], &mut all);
    }
    let all: Vec<String> = all.iter().map(|p| p.join("::")).collect();
    assert_eq!(all, ["a::b", "c::d", "c", "e::g"]);
}

#[test]
fn super_paths_resolve_against_the_file() {
    let dir = std::env::temp_dir().join(format!("rb-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("smtp")).unwrap();
    std::fs::write(
        dir.join("smtp/command.rs"),
        "use super::super::daemon::X;\n",
    )
    .unwrap();
    std::fs::write(dir.join("smtp/mod.rs"), "pub mod command;\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        bad,
        [
            "smtp/command.rs: `crate::daemon::X` imports layer \"control\" (daemon) from layer \"codecs\" (smtp::command)"
        ]
    );
}
