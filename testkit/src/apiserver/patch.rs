//! JSON merge patch (RFC 7386), JSON patch (RFC 6902), and a small model of server-side
//! apply's field ownership (`metadata.managedFields`, lists atomic).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn pointer_parts(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = ptr.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {ptr:?}"));
    };
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).ok_or_else(|| format!("path element {p:?} not found"))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| format!("invalid array index {p:?}"))?;
                a.get_mut(i).ok_or_else(|| format!("array index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into a scalar at {p:?}")),
        };
    }
    Ok(cur)
}

fn get_at(doc: &Value, ptr: &str) -> Result<Value, String> {
    doc.pointer(ptr)
        .cloned()
        .ok_or_else(|| format!("path {ptr:?} not found"))
}

fn add_at(doc: &mut Value, ptr: &str, value: Value) -> Result<(), String> {
    let parts = pointer_parts(ptr)?;
    let Some((last, init)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("invalid array index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("array index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add to a scalar at {ptr:?}")),
    }
}

fn remove_at(doc: &mut Value, ptr: &str) -> Result<Value, String> {
    let parts = pointer_parts(ptr)?;
    let Some((last, init)) = parts.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(doc, init)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("path {ptr:?} not found")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("array index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove from a scalar at {ptr:?}")),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{name} operation without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("{name} operation without \"from\""))
        };
        match name {
            "add" => add_at(doc, path, value()?)?,
            "remove" => {
                remove_at(doc, path)?;
            }
            "replace" => {
                remove_at(doc, path)?;
                add_at(doc, path, value()?)?;
            }
            "move" => {
                let v = remove_at(doc, from()?)?;
                add_at(doc, path, v)?;
            }
            "copy" => {
                let v = get_at(doc, from()?)?;
                add_at(doc, path, v)?;
            }
            "test" => {
                if get_at(doc, path)? != value()? {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// A field path (`["spec", "holderIdentity"]`).
pub type FieldPath = Vec<String>;

/// Metadata fields no manager owns.
fn untracked(path: &[String]) -> bool {
    match path {
        [top] if top == "apiVersion" || top == "kind" => true,
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Leaves of an object (scalars and lists), by path; untracked fields left out.
pub fn leaves(v: &Value) -> BTreeMap<FieldPath, &Value> {
    fn walk<'a>(v: &'a Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, &'a Value>) {
        if untracked(path) {
            return;
        }
        match v {
            // Empty objects own nothing: only what they will hold.
            Value::Object(m) => {
                for (k, c) in m {
                    path.push(k.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => {
                out.insert(path.clone(), v);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion` the manager used.
    pub api_version: String,
    /// When the entry last changed.
    pub time: String,
    /// `status` for writes to the status subresource.
    pub subresource: Option<String>,
    /// Owned leaf paths.
    pub fields: BTreeSet<FieldPath>,
}

fn fields_to_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for part in path {
            let key = if part.starts_with("k:") || part.starts_with("v:") || part.starts_with("i:") || part == "." {
                part.clone()
            } else {
                format!("f:{part}")
            };
            cur = cur
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("object");
        }
    }
    Value::Object(root)
}

fn fields_from_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, c) in m {
            if k == "." {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
                continue;
            }
            let seg = k.strip_prefix("f:").unwrap_or(k).to_owned();
            path.push(seg);
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The object's `metadata.managedFields`, parsed.
pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(entries) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            ManagedEntry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_owned),
                fields: e.get("fieldsV1").map(fields_from_v1).unwrap_or_default(),
            }
        })
        .collect()
}

/// Writes `entries` as `metadata.managedFields` (removing it when empty).
pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Who performs a write, for field ownership.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Field manager.
    pub manager: &'a str,
    /// `apiVersion` of the request.
    pub api_version: &'a str,
    /// `status` for the status subresource.
    pub subresource: Option<&'a str>,
    /// Timestamp for changed entries.
    pub now: &'a str,
}

fn entry_mut<'e>(entries: &'e mut Vec<ManagedEntry>, w: &Writer<'_>, op: &str) -> &'e mut ManagedEntry {
    let sub = w.subresource.map(str::to_owned);
    if let Some(i) = entries
        .iter()
        .position(|e| e.manager == w.manager && e.operation == op && e.subresource == sub)
    {
        return &mut entries[i];
    }
    entries.push(ManagedEntry {
        manager: w.manager.to_owned(),
        operation: op.to_owned(),
        api_version: w.api_version.to_owned(),
        time: w.now.to_owned(),
        subresource: sub,
        fields: BTreeSet::new(),
    });
    entries.last_mut().expect("just pushed")
}

/// Drops ownership of paths that are no longer leaves of `new`, and empty entries.
fn prune(entries: &mut Vec<ManagedEntry>, new_leaves: &BTreeMap<FieldPath, &Value>) {
    for e in entries.iter_mut() {
        e.fields.retain(|p| new_leaves.contains_key(p));
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// Records an update (`PUT`, merge/strategic/JSON patch) by `w` that turned `old` into `new`:
/// the writer takes over every field it changed; removed fields lose their owners.
pub fn record_update(old: &Value, new: &mut Value, w: &Writer<'_>) {
    let mut entries = read_managed(old);
    let old_leaves = leaves(old);
    let new_leaves = leaves(new);
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    if !changed.is_empty() {
        for e in entries.iter_mut() {
            e.fields.retain(|p| !changed.contains(p));
        }
        let mine = entry_mut(&mut entries, w, "Update");
        mine.fields.extend(changed);
        mine.time = w.now.to_owned();
        mine.api_version = w.api_version.to_owned();
    }
    prune(&mut entries, &new_leaves);
    write_managed(new, &entries);
}

/// Server-side apply of `applied` by `w` onto `old` (or a create when `old` is `None`).
/// Returns the merged object with updated ownership, or the conflicts as
/// `(other manager, dotted path)` when `force` is off.
pub fn server_side_apply(
    old: Option<&Value>,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<(String, String)>> {
    let applied_leaves: BTreeMap<FieldPath, &Value> =
        leaves(applied).into_iter().filter(|(_, v)| !v.is_null()).collect();
    let Some(old) = old else {
        let mut new = applied.clone();
        let mut entries = Vec::new();
        let mine = entry_mut(&mut entries, w, "Apply");
        mine.fields = applied_leaves.keys().cloned().collect();
        write_managed(&mut new, &entries);
        return Ok(new);
    };
    let mut entries = read_managed(old);
    let old_leaves = leaves(old);
    let sub = w.subresource.map(str::to_owned);
    let is_mine = |e: &ManagedEntry| e.manager == w.manager && e.operation == "Apply" && e.subresource == sub;

    // Conflicts: another manager owns a field (or a parent/child of it) whose value would change.
    let mut conflicts = Vec::new();
    for (p, v) in &applied_leaves {
        if old_leaves.get(p) == Some(v) {
            continue;
        }
        for e in entries.iter().filter(|e| !is_mine(e)) {
            if e.fields.iter().any(|q| related(p, q)) {
                conflicts.push((e.manager.clone(), format!(".{}", p.join("."))));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }

    let mut new = old.clone();
    // Fields this manager applied before but no longer does, and nobody else owns, go away.
    let previously: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| is_mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in previously {
        if applied_leaves.contains_key(&p) {
            continue;
        }
        let owned_by_other = entries.iter().filter(|e| !is_mine(e)).any(|e| e.fields.contains(&p));
        if !owned_by_other {
            remove_path(&mut new, &p);
        }
    }
    merge_patch(&mut new, applied);

    if force {
        for e in entries.iter_mut().filter(|e| !is_mine(e)) {
            e.fields.retain(|q| !applied_leaves.keys().any(|p| related(p, q)));
        }
    }
    let mine = entry_mut(&mut entries, w, "Apply");
    let fields: BTreeSet<FieldPath> = applied_leaves.keys().cloned().collect();
    if mine.fields != fields {
        mine.time = w.now.to_owned();
    }
    mine.fields = fields;
    mine.api_version = w.api_version.to_owned();
    // Leaves that stopped being leaves (or vanished) lose their owners.
    let new_leaves = leaves(&new);
    prune(&mut entries, &new_leaves);
    write_managed(&mut new, &entries);
    Ok(new)
}

/// Removes the value at `path` (and then empty parent objects).
fn remove_path(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = v.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            m.remove(first);
        }
    }
}

/// Re-applies the ownership bookkeeping after the caller changed `new` again (for example
/// restoring `status`): ownership of paths that are not leaves any more is dropped.
pub fn prune_object(new: &mut Value) {
    let mut entries = read_managed(new);
    if entries.is_empty() {
        return;
    }
    let before = entries.clone();
    let new_leaves = leaves(new);
    prune(&mut entries, &new_leaves);
    if entries != before {
        write_managed(new, &entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge() {
        let mut t = json!({ "a": 1, "b": { "c": 2, "d": 3 }, "l": [1, 2] });
        merge_patch(&mut t, &json!({ "b": { "c": null, "e": 4 }, "l": [3], "a": null }));
        assert_eq!(t, json!({ "b": { "d": 3, "e": 4 }, "l": [3] }));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({ "a": { "b": [1, 2] }, "c": "x" });
        json_patch(
            &mut d,
            &json!([
                { "op": "add", "path": "/a/b/-", "value": 3 },
                { "op": "add", "path": "/a/b/0", "value": 0 },
                { "op": "replace", "path": "/c", "value": "y" },
                { "op": "copy", "from": "/c", "path": "/d" },
                { "op": "move", "from": "/d", "path": "/e~1f" },
                { "op": "remove", "path": "/a/b/1" },
                { "op": "test", "path": "/c", "value": "y" },
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({ "a": { "b": [0, 2, 3] }, "c": "y", "e/f": "y" }));
        assert!(json_patch(&mut d, &json!([{ "op": "test", "path": "/c", "value": "z" }])).is_err());
        assert!(json_patch(&mut d, &json!([{ "op": "remove", "path": "/nope" }])).is_err());
    }

    fn w(m: &str) -> Writer<'_> {
        Writer {
            manager: m,
            api_version: "v1",
            subresource: None,
            now: "2024-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_v1_round_trip() {
        let mut set = BTreeSet::new();
        set.insert(vec!["spec".to_owned(), "holderIdentity".to_owned()]);
        set.insert(vec!["metadata".to_owned(), "labels".to_owned(), "a".to_owned()]);
        let v = fields_to_v1(&set);
        assert_eq!(
            v,
            json!({ "f:spec": { "f:holderIdentity": {} }, "f:metadata": { "f:labels": { "f:a": {} } } })
        );
        assert_eq!(fields_from_v1(&v), set);
    }

    #[test]
    fn apply_conflicts_and_force() {
        let base = json!({ "apiVersion": "v1", "kind": "X", "metadata": { "name": "n" }, "spec": {} });
        let a = server_side_apply(
            Some(&base),
            &json!({ "spec": { "holder": "a", "t": 1 } }),
            &w("a"),
            false,
        )
        .unwrap();
        // Same value: shared ownership, no conflict.
        let shared = server_side_apply(Some(&a), &json!({ "spec": { "t": 1 } }), &w("b"), false).unwrap();
        assert_eq!(read_managed(&shared).len(), 2);
        let err = server_side_apply(Some(&a), &json!({ "spec": { "holder": "b" } }), &w("b"), false).unwrap_err();
        assert_eq!(err, vec![("a".to_owned(), ".spec.holder".to_owned())]);
        let forced = server_side_apply(Some(&a), &json!({ "spec": { "holder": "b" } }), &w("b"), true).unwrap();
        assert_eq!(forced["spec"]["holder"], "b");
        let owners = read_managed(&forced);
        assert!(
            owners
                .iter()
                .any(|e| e.manager == "b" && e.fields.contains(&vec!["spec".into(), "holder".into()]))
        );
        assert!(
            !owners
                .iter()
                .any(|e| e.manager == "a" && e.fields.contains(&vec!["spec".into(), "holder".into()]))
        );
        // Re-applying without a field removes it.
        let again = server_side_apply(Some(&a), &json!({ "spec": { "holder": "a" } }), &w("a"), false).unwrap();
        assert!(again["spec"].get("t").is_none());
    }

    #[test]
    fn update_takes_ownership_and_removal_frees() {
        let base = json!({ "apiVersion": "v1", "kind": "X", "metadata": { "name": "n" }, "spec": {} });
        let a = server_side_apply(
            Some(&base),
            &json!({ "spec": { "holder": "a", "t": 1 } }),
            &w("a"),
            false,
        )
        .unwrap();
        let mut released = a.clone();
        merge_patch(&mut released, &json!({ "spec": { "holder": null, "t": null } }));
        record_update(&a, &mut released, &w("a"));
        assert!(read_managed(&released).is_empty());
        let b = server_side_apply(Some(&released), &json!({ "spec": { "holder": "b" } }), &w("b"), false).unwrap();
        assert_eq!(b["spec"]["holder"], "b");
        let mut renewed = b.clone();
        merge_patch(&mut renewed, &json!({ "spec": { "t": 2 } }));
        record_update(&b, &mut renewed, &w("b"));
        let entries = read_managed(&renewed);
        assert_eq!(entries.len(), 2);
        assert!(
            entries
                .iter()
                .any(|e| e.operation == "Update" && e.fields.contains(&vec!["spec".into(), "t".into()]))
        );
    }
}
