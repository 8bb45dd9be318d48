//! Strict key checking for the config file: every key must be one the settings table knows. Keys that
//! differ only in case (k8s-copycat's Go decoder accepted those) and known aliases are rewritten to
//! their canonical spelling with a warning; anything else is an error with the closest known key.

use serde_json::Value;

use super::Problem;
use super::parse::closest;
use super::settings::{KEY_ALIASES, SETTINGS};

/// Walks the parsed file, renaming tolerated spellings in place and reporting unknown keys.
pub fn canonicalize(root: &mut Value, file: &str, problems: &mut Vec<Problem>, warnings: &mut Vec<String>) {
    walk(root, "", file, problems, warnings);
}

fn walk(value: &mut Value, prefix: &str, file: &str, problems: &mut Vec<Problem>, warnings: &mut Vec<String>) {
    let Value::Object(map) = value else {
        // A wrong shape is reported by the reader of that setting, with its expected type.
        return;
    };
    let known = children(prefix);
    let names: Vec<String> = map.keys().cloned().collect();
    for name in names {
        let shown = join(prefix, &name);
        let Some(canonical) = resolve(&name, prefix, &known) else {
            let hint = closest(&name, &known)
                .map(|c| format!("; did you mean {:?}?", join(prefix, c)))
                .unwrap_or_default();
            problems.push(Problem::new(
                format!("{shown} ({file})"),
                None,
                format!("unknown key{hint}"),
            ));
            continue;
        };
        if canonical != name {
            if map.contains_key(canonical) {
                problems.push(Problem::new(
                    format!("{shown} ({file})"),
                    None,
                    format!("given twice, also as {:?}", join(prefix, canonical)),
                ));
                continue;
            }
            warnings.push(format!("{file}: key {shown:?} read as {:?}", join(prefix, canonical)));
            let v = map.remove(&name).unwrap_or(Value::Null);
            map.insert(canonical.to_owned(), v);
        }
        let path = join(prefix, canonical);
        let Some(child) = map.get_mut(canonical) else {
            continue;
        };
        if is_prefix(&format!("{path}.")) {
            walk(child, &path, file, problems, warnings);
        } else if is_prefix(&format!("{path}[]."))
            && let Value::Array(items) = child
        {
            for (i, item) in items.iter_mut().enumerate() {
                walk_element(item, &path, i, file, problems, warnings);
            }
        }
    }
}

fn walk_element(
    item: &mut Value,
    path: &str,
    index: usize,
    file: &str,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let mut item_problems = Vec::new();
    walk(item, &format!("{path}[]"), file, &mut item_problems, warnings);
    // Name the entry's position, not the generic `[]`, so the user can find it.
    for mut p in item_problems {
        p.origin = p.origin.replacen(&format!("{path}[]"), &format!("{path}[{index}]"), 1);
        p.message = p.message.replacen(&format!("{path}[]"), &format!("{path}[{index}]"), 1);
        problems.push(p);
    }
}

fn resolve(name: &str, prefix: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .find(|k| **k == name)
        .or_else(|| known.iter().find(|k| k.eq_ignore_ascii_case(name)))
        .copied()
        .or_else(|| {
            KEY_ALIASES
                .iter()
                .find(|(alias, _)| prefix.is_empty() && alias.eq_ignore_ascii_case(name))
                .map(|(_, canonical)| *canonical)
        })
}

/// Names of the keys directly below `prefix` (`""` is the top level, `a[]` the fields of list `a`).
fn children(prefix: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for key in SETTINGS.iter().filter_map(|s| s.key) {
        let rest = if prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let name = &rest[..rest.find(['.', '[']).unwrap_or(rest.len())];
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

fn is_prefix(p: &str) -> bool {
    SETTINGS.iter().filter_map(|s| s.key).any(|k| k.starts_with(p))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
