//! Write semantics: create, replace, patch, delete as the real server applies them, plus the
//! unchecked writes of the test control interface.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::patch::{self, Writer};
use super::resources::{RESOURCES, ResIdx, ResourceType, by_api_version_kind, by_name};
use super::status::ApiError;
use super::store::{Key, Store, rv_of};
use crate::util;

/// Who writes: the API (checked like the real server) or the test control interface
/// (trusted: keeps given uid/timestamps/status, no namespace or version checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    Api,
    Control,
}

/// Per-request write options.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOpts {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub force: bool,
    /// `User-Agent`, the default field manager for updates.
    pub user_agent: Option<String>,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<String>,
}

impl WriteOpts {
    fn manager(&self) -> String {
        if let Some(m) = &self.field_manager {
            return m.clone();
        }
        self.user_agent
            .as_deref()
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// Patch body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Outcome of a delete.
pub(crate) enum Deleted {
    /// Gone; the object's last state (with the delete's resourceVersion).
    Gone(Arc<Value>),
    /// Finalizers pending: marked with `deletionTimestamp`, still there.
    Pending(Arc<Value>),
}

pub(crate) fn now() -> String {
    util::rfc3339(util::unix_now())
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    // SystemRandom only fails when the OS has no randomness at all.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = util::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter()
        .map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char)
        .collect()
}

fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("object")
}

/// Object name or `""`.
pub(crate) fn name_of(v: &Value) -> &str {
    meta_str(v, "name").unwrap_or("")
}

/// RFC 1123 subdomain, as most kinds require of names.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

/// Everything but `metadata`, `status`, `apiVersion`, `kind`: what bumps `generation`.
fn spec_differs(a: &Value, b: &Value) -> bool {
    let skip = |k: &str| matches!(k, "metadata" | "status" | "apiVersion" | "kind");
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let count = |m: &Map<String, Value>| m.keys().filter(|k| !skip(k)).count();
    count(a) != count(b) || a.iter().filter(|(k, _)| !skip(k)).any(|(k, v)| b.get(k) != Some(v))
}

/// Equal apart from `resourceVersion` and managed-fields timestamps: such a write is a no-op.
fn same_object(a: &Value, b: &Value) -> bool {
    fn keys_eq(a: &Map<String, Value>, b: &Map<String, Value>, skip: &dyn Fn(&str) -> bool) -> bool {
        a.keys().filter(|k| !skip(k)).eq(b.keys().filter(|k| !skip(k)))
    }
    fn maps_eq(a: &Map<String, Value>, b: &Map<String, Value>, skip: &dyn Fn(&str) -> bool) -> bool {
        keys_eq(a, b, skip) && a.iter().filter(|(k, _)| !skip(k)).all(|(k, v)| b.get(k) == Some(v))
    }
    fn managed_eq(x: &Value, y: &Value) -> bool {
        match (x.as_array(), y.as_array()) {
            (Some(xs), Some(ys)) => {
                xs.len() == ys.len()
                    && xs.iter().zip(ys).all(|(e, f)| match (e.as_object(), f.as_object()) {
                        (Some(e), Some(f)) => maps_eq(e, f, &|k| k == "time"),
                        _ => e == f,
                    })
            }
            _ => x == y,
        }
    }
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    keys_eq(a, b, &|_| false)
        && a.iter().all(|(k, va)| {
            let vb = &b[k];
            match (k.as_str(), va.as_object(), vb.as_object()) {
                ("metadata", Some(ma), Some(mb)) => {
                    let skip = |k: &str| k == "resourceVersion" || k == "managedFields";
                    maps_eq(ma, mb, &skip)
                        && match (ma.get("managedFields"), mb.get("managedFields")) {
                            (Some(x), Some(y)) => managed_eq(x, y),
                            (x, y) => x == y,
                        }
                }
                _ => va == vb,
            }
        })
}

/// Fills in and fixes up server-owned fields of `new` (which replaces `old`).
fn prepare(rt: &ResourceType, old: Option<&Value>, new: &mut Value, ns: &str, name: &str, trust: Trust) {
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    // Only fields outside metadata and status bump the generation: decide before touching them.
    let generation = match old {
        Some(o) => {
            let g = meta(o)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if spec_differs(o, new) { g + 1 } else { g }
        }
        None => match (
            trust,
            meta(new).and_then(|m| m.get("generation")).and_then(Value::as_i64),
        ) {
            (Trust::Control, Some(g)) => g,
            _ => 1,
        },
    };
    let m = meta_mut(new);
    m.insert("name".into(), json!(name));
    if rt.namespaced {
        m.insert("namespace".into(), json!(ns));
    } else {
        m.remove("namespace");
    }
    m.remove("resourceVersion");
    m.remove("selfLink");
    let keep = |field: &str, m: &mut Map<String, Value>| match old.and_then(|o| meta(o)?.get(field)) {
        Some(v) => {
            m.insert(field.into(), v.clone());
        }
        None => {
            if trust == Trust::Api {
                m.remove(field);
            }
        }
    };
    match old {
        Some(_) => {
            keep("uid", m);
            keep("creationTimestamp", m);
        }
        None => {
            if trust == Trust::Api || !m.get("uid").is_some_and(Value::is_string) {
                m.insert("uid".into(), json!(new_uid()));
            }
            if trust == Trust::Api || !m.get("creationTimestamp").is_some_and(Value::is_string) {
                m.insert("creationTimestamp".into(), json!(now()));
            }
        }
    }
    if trust == Trust::Api {
        keep("deletionTimestamp", m);
        keep("deletionGracePeriodSeconds", m);
    }
    m.insert("generation".into(), json!(generation));
    if trust == Trust::Api && rt.status_subresource {
        match old.and_then(|o| o.get("status")) {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    match rt.kind {
        "Namespace" => {
            let labels = meta_mut(new).entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if old.is_none() {
                if new.pointer("/spec/finalizers").is_none() {
                    new["spec"]["finalizers"] = json!(["kubernetes"]);
                }
                if new.pointer("/status/phase").is_none() {
                    new["status"]["phase"] = json!("Active");
                }
            }
        }
        "Secret" => {
            if let Some(Value::Object(sd)) = new.as_object_mut().and_then(|o| o.remove("stringData")) {
                use base64::Engine as _;
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    new["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
        }
        _ => {}
    }
}

/// A new object of the status subresource: `old` with `status` taken from `body`.
fn with_status_of(old: &Value, body: &Value) -> Value {
    let mut new = old.clone();
    match body.get("status") {
        Some(s) => new["status"] = s.clone(),
        None => {
            if let Some(o) = new.as_object_mut() {
                o.remove("status");
            }
        }
    }
    // A stale resourceVersion in the body still counts as a precondition.
    if let Some(rv) = meta_str(body, "resourceVersion") {
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv));
    }
    new
}

fn has_finalizers(v: &Value) -> bool {
    meta(v)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Stores `new` over `old` unless nothing changed; an object whose deletion was waiting on
/// finalizers goes away once the last one is removed.
fn finish(store: &mut Store, key: Key, old: Option<&Arc<Value>>, new: Value, dry_run: bool) -> Arc<Value> {
    if let Some(o) = old
        && same_object(o, &new)
    {
        return o.clone();
    }
    if dry_run {
        let mut new = new;
        if let Some(o) = old {
            meta_mut(&mut new).insert("resourceVersion".into(), json!(rv_of(o).to_string()));
        }
        return Arc::new(new);
    }
    let terminating = meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp"));
    if terminating && !has_finalizers(&new) && old.is_some() {
        // Like the real registry: no MODIFIED, just the delete (whose event carries the last
        // stored state); the caller gets its update back with the delete's resourceVersion.
        let gone = store.commit(key, None);
        let mut new = new;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv_of(&gone).to_string()));
        return Arc::new(new);
    }
    store.commit(key, Some(new))
}

fn check_type(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
        && av != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(())
}

fn check_namespace(store: &Store, rt: &ResourceType, ns: &str, body: &Value) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    if let Some(bns) = meta_str(body, "namespace")
        && !bns.is_empty()
        && bns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let ns_idx = by_name("namespaces").expect("namespaces served");
    match store.objects.get(&(ns_idx, String::new(), ns.to_owned())) {
        None => Err(ApiError::not_found(&RESOURCES[ns_idx], ns)),
        Some(n) if meta(n).is_some_and(|m| m.contains_key("deletionTimestamp")) => Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.qualified(),
                name_of(body)
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The real server's legacy validation of a core/v1 Event create (`legacyValidateEvent`): without
/// `eventTime` (the classic client-go recorder's events) the Event must live in its involved
/// object's namespace (`default` or none for a cluster-scoped object); with it, also
/// `reportingComponent` and `reportingInstance` are required. Other kinds pass.
fn check_event(rt: &ResourceType, ns: &str, name: &str, body: &Value) -> Result<(), ApiError> {
    if rt.kind != "Event" || !rt.group.is_empty() {
        return Ok(());
    }
    let involved = body["involvedObject"]["namespace"].as_str().unwrap_or("");
    let timed = body.get("eventTime").is_some_and(|t| !t.is_null());
    let namespace_ok = match (involved, timed) {
        ("", false) => ns.is_empty() || ns == "default",
        ("", true) => ns == "default" || ns == "kube-system",
        (involved, _) => timed || involved == ns,
    };
    let mut problems = Vec::new();
    if !namespace_ok {
        problems.push(format!(
            "involvedObject.namespace: Invalid value: {involved:?}: does not match event.namespace"
        ));
    }
    if timed {
        for field in ["reportingComponent", "reportingInstance"] {
            if body[field].as_str().unwrap_or("").is_empty() {
                problems.push(format!("{field}: Required value"));
            }
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(ApiError::invalid(rt, name, problems.remove(0))),
        _ => Err(ApiError::invalid(rt, name, format!("[{}]", problems.join(", ")))),
    }
}

fn key(res: ResIdx, ns: &str, name: &str) -> Key {
    let ns = if RESOURCES[res].namespaced { ns } else { "" };
    (res, ns.to_owned(), name.to_owned())
}

fn writer<'a>(rt_av: &'a str, manager: &'a str, opts: &'a WriteOpts, now: &'a str) -> Writer<'a> {
    Writer {
        manager,
        api_version: rt_av,
        subresource: opts.subresource.as_deref(),
        now,
    }
}

/// `POST` to a collection.
pub(crate) fn create(
    store: &mut Store,
    res: ResIdx,
    ns: &str,
    mut body: Value,
    opts: &WriteOpts,
) -> Result<Arc<Value>, ApiError> {
    let rt = &RESOURCES[res];
    check_type(rt, &body)?;
    let name = match meta_str(&body, "name").filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => match meta_str(&body, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        },
    };
    validate_name(rt, &name)?;
    check_namespace(store, rt, ns, &body)?;
    check_event(rt, ns, &name, &body)?;
    let key = key(res, ns, &name);
    if store.objects.contains_key(&key) {
        return Err(ApiError::already_exists(rt, &name));
    }
    prepare(rt, None, &mut body, ns, &name, Trust::Api);
    // Managed fields are the server's to write.
    meta_mut(&mut body).remove("managedFields");
    if opts.field_manager.is_some() {
        let now = now();
        let manager = opts.manager();
        let av = rt.api_version();
        patch::record_update(&json!({}), &mut body, &writer(&av, &manager, opts, &now));
    }
    Ok(finish(store, key, None, body, opts.dry_run))
}

/// `PUT` of an object (or its status).
pub(crate) fn replace(
    store: &mut Store,
    res: ResIdx,
    ns: &str,
    name: &str,
    body: Value,
    opts: &WriteOpts,
) -> Result<Arc<Value>, ApiError> {
    let rt = &RESOURCES[res];
    check_type(rt, &body)?;
    let key = key(res, ns, name);
    let old = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(bn) = meta_str(&body, "name")
        && bn != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({bn}) does not match the name on the URL ({name})"
        )));
    }
    let mut new = if opts.subresource.is_some() {
        with_status_of(&old, &body)
    } else {
        body
    };
    if let Some(rv) = meta_str(&new, "resourceVersion")
        && !rv.is_empty()
        && rv != rv_of(&old).to_string()
    {
        return Err(ApiError::stale(rt, name));
    }
    update_common(store, rt, key, &old, &mut new, ns, name, opts)
}

#[allow(clippy::too_many_arguments)]
fn update_common(
    store: &mut Store,
    rt: &ResourceType,
    key: Key,
    old: &Arc<Value>,
    new: &mut Value,
    ns: &str,
    name: &str,
    opts: &WriteOpts,
) -> Result<Arc<Value>, ApiError> {
    let trust = if opts.subresource.is_some() {
        // The status subresource keeps everything else as it was and may change status.
        Trust::Control
    } else {
        Trust::Api
    };
    prepare(rt, Some(old), new, ns, name, trust);
    if trust == Trust::Control {
        // Status writes do not touch metadata beyond what `with_status_of` kept.
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            match meta(old).and_then(|m| m.get(f)) {
                Some(v) => {
                    meta_mut(new).insert(f.into(), v.clone());
                }
                None => {
                    meta_mut(new).remove(f);
                }
            }
        }
    }
    // Managed fields are the server's: the request cannot rewrite them.
    match meta(old).and_then(|m| m.get("managedFields")) {
        Some(mf) => {
            meta_mut(new).insert("managedFields".into(), mf.clone());
        }
        None => {
            meta_mut(new).remove("managedFields");
        }
    }
    let tracked = opts.field_manager.is_some() || meta(old).is_some_and(|m| m.contains_key("managedFields"));
    if tracked {
        let now = now();
        let manager = opts.manager();
        let av = rt.api_version();
        patch::record_update(old, new, &writer(&av, &manager, opts, &now));
    }
    Ok(finish(store, key, Some(old), std::mem::take(new), opts.dry_run))
}

/// `PATCH` of an object (or its status). Returns the object and whether it was created
/// (server-side apply of a missing object).
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    store: &mut Store,
    res: ResIdx,
    ns: &str,
    name: &str,
    pt: PatchType,
    body: &Value,
    opts: &WriteOpts,
) -> Result<(Arc<Value>, bool), ApiError> {
    let rt = &RESOURCES[res];
    let key = key(res, ns, name);
    let old = store.objects.get(&key).cloned();
    let now = now();
    let av = rt.api_version();
    let manager = opts.manager();
    if pt == PatchType::Apply {
        check_type(rt, body)?;
        if opts.field_manager.is_none() {
            return Err(ApiError::invalid(
                rt,
                name,
                "fieldManager: Required value: is required for apply patch",
            ));
        }
        if let Some(bn) = meta_str(body, "name")
            && bn != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({bn}) does not match the name on the URL ({name})"
            )));
        }
        let w = writer(&av, &manager, opts, &now);
        let Some(old) = old else {
            // Apply creates.
            validate_name(rt, name)?;
            check_namespace(store, rt, ns, body)?;
            let mut new =
                patch::server_side_apply(None, body, &w, opts.force).map_err(|_| ApiError::stale(rt, name))?;
            let mf = meta(&new).and_then(|m| m.get("managedFields")).cloned();
            prepare(rt, None, &mut new, ns, name, Trust::Api);
            if let Some(mf) = mf {
                meta_mut(&mut new).insert("managedFields".into(), mf);
            }
            patch::prune_object(&mut new);
            return Ok((finish(store, key, None, new, opts.dry_run), true));
        };
        if let Some(rv) = meta_str(body, "resourceVersion")
            && !rv.is_empty()
            && rv != rv_of(&old).to_string()
        {
            return Err(ApiError::stale(rt, name));
        }
        let applied = if opts.subresource.is_some() {
            // Only status counts on the status subresource.
            let mut a = json!({});
            if let Some(s) = body.get("status") {
                a["status"] = s.clone();
            }
            a
        } else {
            body.clone()
        };
        let mut new = match patch::server_side_apply(Some(&old), &applied, &w, opts.force) {
            Ok(v) => v,
            Err(conflicts) => {
                let n = conflicts.len();
                let list: Vec<String> = conflicts
                    .iter()
                    .map(|(m, p)| format!("conflict with \"{m}\" using {av}: {p}"))
                    .collect();
                let message = if n == 1 {
                    format!("Apply failed with 1 conflict: {}", list[0])
                } else {
                    format!("Apply failed with {n} conflicts: {}", list.join("\n"))
                };
                let mut e = ApiError::new(409, "Conflict", message);
                e.details = Some(json!({ "name": name, "kind": rt.plural, "group": rt.group }));
                return Err(e);
            }
        };
        let mf = meta(&new).and_then(|m| m.get("managedFields")).cloned();
        let trust = if opts.subresource.is_some() {
            Trust::Control
        } else {
            Trust::Api
        };
        prepare(rt, Some(&old), &mut new, ns, name, trust);
        match mf {
            Some(mf) => {
                meta_mut(&mut new).insert("managedFields".into(), mf);
            }
            None => {
                meta_mut(&mut new).remove("managedFields");
            }
        }
        patch::prune_object(&mut new);
        return Ok((finish(store, key, Some(&old), new, opts.dry_run), false));
    }
    let old = old.ok_or_else(|| ApiError::not_found(rt, name))?;
    let mut patched = (*old).clone();
    match pt {
        PatchType::Merge | PatchType::Strategic => {
            if !body.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut patched, body);
        }
        PatchType::Json => {
            patch::json_patch(&mut patched, body).map_err(|e| ApiError::invalid(rt, name, e))?;
        }
        PatchType::Apply => unreachable!("handled above"),
    }
    // A resourceVersion the patch sets (or keeps) must still be current.
    let patched_rv = meta_str(&patched, "resourceVersion").unwrap_or("").to_owned();
    if !patched_rv.is_empty() && patched_rv != rv_of(&old).to_string() {
        return Err(ApiError::stale(rt, name));
    }
    let mut new = if opts.subresource.is_some() {
        with_status_of(&old, &patched)
    } else {
        patched
    };
    let out = update_common(store, rt, key, &old, &mut new, ns, name, opts)?;
    Ok((out, false))
}

/// `DELETE` of one object, honouring `preconditions` in the `DeleteOptions` body.
pub(crate) fn delete(
    store: &mut Store,
    res: ResIdx,
    ns: &str,
    name: &str,
    options: &Value,
    dry_run: bool,
) -> Result<Deleted, ApiError> {
    let rt = &RESOURCES[res];
    let key = key(res, ns, name);
    let old = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
        let actual = meta_str(&old, "uid").unwrap_or("");
        if uid != actual {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
            ));
        }
    }
    if let Some(rv) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        let actual = rv_of(&old).to_string();
        if rv != actual {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                ),
            ));
        }
    }
    if has_finalizers(&old) {
        if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) || dry_run {
            return Ok(Deleted::Pending(old));
        }
        let mut marked = (*old).clone();
        let m = meta_mut(&mut marked);
        m.insert("deletionTimestamp".into(), json!(now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        return Ok(Deleted::Pending(store.commit(key, Some(marked))));
    }
    if dry_run {
        return Ok(Deleted::Gone(old));
    }
    Ok(Deleted::Gone(remove(store, key)))
}

/// Removes an object now (namespaces take their contents with them).
pub(crate) fn remove(store: &mut Store, key: Key) -> Arc<Value> {
    if RESOURCES[key.0].kind == "Namespace" {
        let ns = key.2.clone();
        let inside: Vec<Key> = store
            .objects
            .keys()
            .filter(|k| RESOURCES[k.0].namespaced && k.1 == ns)
            .cloned()
            .collect();
        for k in inside {
            store.commit(k, None);
        }
    }
    store.commit(key, None)
}

/// Test control: create or replace `obj` as given (no version or namespace checks; status,
/// uid and timestamps kept when given). Namespaced objects without a namespace go to `default`.
pub(crate) fn control_apply(store: &mut Store, mut obj: Value) -> Result<Arc<Value>, ApiError> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let res = by_api_version_kind(av, kind)
        .ok_or_else(|| ApiError::bad_request(format!("no served type for apiVersion {av:?} kind {kind:?}")))?;
    let rt = &RESOURCES[res];
    let name = name_of(&obj).to_owned();
    validate_name(rt, &name)?;
    let ns = match meta_str(&obj, "namespace").filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => "default".to_owned(),
    };
    let key = key(res, &ns, &name);
    let old = store.objects.get(&key).cloned();
    if let Some(o) = &old
        && !meta(&obj).is_some_and(|m| m.contains_key("managedFields"))
        && let Some(mf) = meta(o).and_then(|m| m.get("managedFields"))
    {
        meta_mut(&mut obj).insert("managedFields".into(), mf.clone());
    }
    prepare(rt, old.as_deref(), &mut obj, &ns, &name, Trust::Control);
    Ok(finish(store, key, old.as_ref(), obj, false))
}

/// Test control: delete now, finalizers or not. `None` when absent.
pub(crate) fn control_delete(store: &mut Store, res: ResIdx, ns: &str, name: &str) -> Option<Arc<Value>> {
    let key = key(res, ns, name);
    if !store.objects.contains_key(&key) {
        return None;
    }
    Some(remove(store, key))
}

/// Looks up a stored object.
pub(crate) fn get(store: &Store, res: ResIdx, ns: &str, name: &str) -> Option<Arc<Value>> {
    store.objects.get(&key(res, ns, name)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(n: &str) -> ResIdx {
        by_name(n).unwrap()
    }

    fn with_default_ns() -> Store {
        let mut s = Store::new(100);
        control_apply(
            &mut s,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "default" } }),
        )
        .unwrap();
        s
    }

    #[test]
    fn create_get_conflicts() {
        let mut s = with_default_ns();
        let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" }, "spec": { "containers": [] }, "status": { "phase": "Running" } });
        let created = create(&mut s, idx("pods"), "default", pod.clone(), &WriteOpts::default()).unwrap();
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created.get("status").is_none(), "status is dropped on create");
        assert_eq!(rv_of(&created), s.rv);
        let e = create(&mut s, idx("pods"), "default", pod.clone(), &WriteOpts::default()).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = create(&mut s, idx("pods"), "nope", pod, &WriteOpts::default()).unwrap_err();
        assert_eq!((e.code, e.reason), (404, "NotFound"));
        let mut stale = (*created).clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        stale["spec"]["x"] = json!(1);
        let e = replace(&mut s, idx("pods"), "default", "p", stale, &WriteOpts::default()).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let mut fresh = (*created).clone();
        fresh["spec"]["x"] = json!(1);
        let updated = replace(&mut s, idx("pods"), "default", "p", fresh, &WriteOpts::default()).unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        // No-op writes keep the resourceVersion.
        let rv = s.rv;
        let same = replace(
            &mut s,
            idx("pods"),
            "default",
            "p",
            (*updated).clone(),
            &WriteOpts::default(),
        )
        .unwrap();
        assert_eq!(s.rv, rv);
        assert_eq!(rv_of(&same), rv);
    }

    #[test]
    fn events_live_in_the_namespace_of_their_object() {
        let mut s = with_default_ns();
        control_apply(
            &mut s,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "shop" } }),
        )
        .unwrap();
        let event = |ns: &str, extra: Value| {
            let mut e = json!({ "apiVersion": "v1", "kind": "Event", "metadata": { "name": "web.1" },
                "involvedObject": { "apiVersion": "apps/v1", "kind": "Deployment", "namespace": ns, "name": "web" },
                "reason": "MirrorFailed", "type": "Warning" });
            e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            e
        };
        let opts = WriteOpts::default();
        let created = create(&mut s, idx("events"), "shop", event("shop", json!({})), &opts).unwrap();
        assert_eq!(created["involvedObject"]["name"], "web");
        let e = create(&mut s, idx("events"), "default", event("shop", json!({})), &opts).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(e.message.contains("does not match event.namespace"), "{}", e.message);
        let timed = json!({ "eventTime": "2026-01-01T00:00:00.000000Z" });
        let e = create(&mut s, idx("events"), "shop", event("shop", timed), &opts).unwrap_err();
        assert!(
            e.message
                .contains("[reportingComponent: Required value, reportingInstance: Required value]"),
            "{}",
            e.message
        );
    }

    #[test]
    fn finalizers_delay_delete() {
        let mut s = with_default_ns();
        let cm = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "s", "finalizers": ["x/y"] }, "stringData": { "k": "v" } });
        let created = create(&mut s, idx("secrets"), "default", cm, &WriteOpts::default()).unwrap();
        assert_eq!(created["data"]["k"], "dg==");
        let Deleted::Pending(marked) = delete(&mut s, idx("secrets"), "default", "s", &json!({}), false).unwrap()
        else {
            panic!("expected pending")
        };
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        let (gone, _) = patch(
            &mut s,
            idx("secrets"),
            "default",
            "s",
            PatchType::Merge,
            &json!({ "metadata": { "finalizers": null } }),
            &WriteOpts::default(),
        )
        .unwrap();
        assert!(gone["metadata"]["deletionTimestamp"].is_string());
        assert!(get(&s, idx("secrets"), "default", "s").is_none());
    }

    #[test]
    fn namespace_delete_cascades() {
        let mut s = with_default_ns();
        control_apply(
            &mut s,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "apps" } }),
        )
        .unwrap();
        control_apply(
            &mut s,
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "a", "namespace": "apps" } }),
        )
        .unwrap();
        control_apply(
            &mut s,
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "b" } }),
        )
        .unwrap();
        assert!(control_delete(&mut s, idx("ns"), "", "apps").is_some());
        assert!(get(&s, idx("pods"), "apps", "a").is_none());
        assert!(get(&s, idx("pods"), "default", "b").is_some());
    }
}
