//! The shape `lib.rs` promises: each module imports only from the layers before it, only the
//! enforcer imports aya, and no source file is longer than 700 lines (tests aside).

use std::{collections::BTreeMap, fs, path::Path};

/// Layer of each top-level module, as `lib.rs` lists them.
const LAYERS: [(&str, u32); 27] = [
    ("domain", 1),
    ("logging", 1),
    ("events", 2),
    ("parsers", 2),
    ("tail", 3),
    ("sources", 3),
    ("dnsbl", 3),
    ("feeds", 3),
    ("policy", 3),
    ("engine", 4),
    ("decisions", 5),
    ("enforcer", 6),
    ("fleet", 6),
    ("config", 7),
    ("store", 8),
    ("history", 8),
    ("lists", 9),
    ("drops", 9),
    ("control", 10),
    ("learn", 11),
    ("metrics", 12),
    ("daemon", 13),
    ("replay", 13),
    ("report", 13),
    ("cli", 14),
    ("main", 15),
    ("lib", 15),
];

/// (module, file path, text without its test module) for every source file.
fn sources() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel.ends_with("tests.rs") {
                continue;
            }
            let module = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let text = fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests {") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            out.push((module, rel, text));
        }
    }
    out
}

#[test]
fn every_module_imports_only_from_the_layers_before_it() {
    let layer: BTreeMap<&str, u32> = LAYERS.into_iter().collect();
    let mut wrong = Vec::new();
    for (module, file, text) in sources() {
        let own = *layer
            .get(module.as_str())
            .unwrap_or_else(|| panic!("{file}: module {module} has no layer in LAYERS"));
        // `crate::x` anywhere, and the names inside `use crate::{...}`.
        let mut used: Vec<String> = text
            .match_indices("crate::")
            .map(|(at, _)| {
                text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        for (at, _) in text.match_indices("use crate::{") {
            let inside = &text[at + 12..at + 12 + text[at + 12..].find("};").unwrap()];
            let mut depth = 0;
            let mut item = String::new();
            for c in inside.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.push(item.trim().split("::").next().unwrap().to_string());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || c != '{' {
                    item.push(c);
                }
            }
            used.push(item.trim().split("::").next().unwrap().to_string());
        }
        for dep in used {
            if dep.is_empty() || dep == module || dep == "self" {
                continue;
            }
            if let Some(&theirs) = layer.get(dep.as_str())
                && theirs > own
            {
                wrong.push(format!(
                    "{file} (layer {own}) imports {dep} (layer {theirs})"
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports from a later layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_enforcer_imports_aya() {
    for (module, file, text) in sources() {
        if module != "enforcer" {
            assert!(
                !text.contains("aya::") && !text.contains("use aya"),
                "{file} imports aya"
            );
        }
    }
}

#[test]
fn no_source_file_is_longer_than_700_lines() {
    for (_, file, text) in sources() {
        let lines = text.lines().count();
        assert!(lines <= 700, "{file}: {lines} lines");
    }
}

#[test]
fn the_engine_reads_no_clock_and_opens_no_file() {
    for (module, file, text) in sources() {
        if module != "engine" {
            continue;
        }
        for io in [
            "unix_now",
            "boot_time_ns",
            "SystemTime",
            "Instant::now",
            "std::fs",
            "File::",
        ] {
            assert!(
                !text.contains(io),
                "{file} uses {io}: the caller passes time and data"
            );
        }
    }
}
