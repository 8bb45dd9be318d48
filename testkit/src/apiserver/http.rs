//! The HTTP face: Kubernetes REST paths, discovery, list, watch, and writes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::answer::{Query, error_response, json_response};
use super::faults::ApiFaultKind;
use super::ops::{self, Deleted, PatchType, WriteOpts};
use super::resources::{self, RESOURCES, ResIdx, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{EventType, Key};

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 << 20;

pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the request body: {e}"))),
    };
    let query = Query::parse(parts.uri.query());
    if path == "/_control" || path.starts_with("/_control/") {
        return super::control::handle(&sh, &parts.method, &path, &query, &body);
    }
    sh.log_request(parts.method.as_str(), &path_and_query);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(answer) = injected_fault(&sh, &parts.method, &segs, &query).await {
        return answer;
    }
    match dispatch(&sh, &parts.method, &parts.headers, &segs, &query, &body) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// Applies the first armed fault matching the request's resource and verb: its answer for a status
/// fault, `None` (after the delay) for a slow one or when none matches.
async fn injected_fault(sh: &Arc<Shared>, method: &Method, segs: &[&str], q: &Query) -> Option<Response> {
    let (g, v, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let t = parse_target(g, v, rest).ok()?;
    let rt = &RESOURCES[t.res];
    let verb = match (method.clone(), t.name) {
        (Method::GET, Some(_)) => "get",
        (Method::GET, None) if q.flag("watch").ok().flatten().unwrap_or(false) => "watch",
        (Method::GET, None) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, Some(_)) => "delete",
        (Method::DELETE, None) => "deletecollection",
        _ => return None,
    };
    let fault = {
        let mut faults = sh.faults.lock().unwrap_or_else(|e| e.into_inner());
        super::faults::take(&mut faults, rt.plural, verb)?
    };
    match fault {
        ApiFaultKind::Status {
            code,
            reason,
            retry_after,
        } => Some(super::faults::answer(code, reason, retry_after, rt, verb, t.ns)),
        ApiFaultKind::Delay(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
    }
}

fn dispatch(
    sh: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    segs: &[&str],
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let aggregated = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"));
    let get_only = |r: Response| {
        if method == Method::GET {
            Ok(r)
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segs {
        ["version"] => get_only(json_response(StatusCode::OK, &version())),
        ["healthz" | "livez" | "readyz"] => get_only("ok".into_response()),
        ["api"] if aggregated => get_only(discovery_response(aggregated_discovery(true))),
        ["api"] => get_only(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": host(headers) }],
            }),
        )),
        ["apis"] if aggregated => get_only(discovery_response(aggregated_discovery(false))),
        ["apis"] => get_only(json_response(StatusCode::OK, &api_group_list())),
        ["api", "v1"] => get_only(json_response(StatusCode::OK, &resource_list("", "v1"))),
        ["apis", g] => match api_group(g) {
            Some(v) => get_only(json_response(StatusCode::OK, &v)),
            None => Err(ApiError::no_such_resource()),
        },
        ["apis", g, v] if resources::group_versions().contains(&(*g, *v)) => {
            get_only(json_response(StatusCode::OK, &resource_list(g, v)))
        }
        ["api", "v1", rest @ ..] => resource_request(sh, method, headers, "", "v1", rest, q, body),
        ["apis", g, v, rest @ ..] => resource_request(sh, method, headers, g, v, rest, q, body),
        _ => Err(ApiError::no_such_resource()),
    }
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:6443")
        .to_owned()
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-copycat-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

fn group_version_entry(g: &str, v: &str) -> Value {
    json!({ "groupVersion": format!("{g}/{v}"), "version": v })
}

fn api_group(g: &str) -> Option<Value> {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(gg, _)| *gg == g && !g.is_empty())
        .map(|(gg, v)| group_version_entry(gg, v))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": g,
        "versions": versions,
        "preferredVersion": preferred,
    }))
}

fn api_group_list() -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in resources::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .filter_map(api_group)
        .map(|mut g| {
            if let Some(o) = g.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn resource_list(g: &str, v: &str) -> Value {
    let mut out = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "storageVersionHash": "",
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        out.push(e);
        if r.status_subresource {
            out.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let gv = if g.is_empty() { v.to_owned() } else { format!("{g}/{v}") };
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out })
}

fn aggregated_discovery(core: bool) -> Value {
    let mut items = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (g, _) in resources::group_versions() {
        if g.is_empty() != core || seen.contains(&g) {
            continue;
        }
        seen.push(g);
        let versions: Vec<Value> = resources::group_versions()
            .into_iter()
            .filter(|(gg, _)| *gg == g)
            .map(|(_, v)| {
                let res: Vec<Value> = RESOURCES
                    .iter()
                    .filter(|r| r.group == g && r.version == v)
                    .map(|r| {
                        let kind = json!({ "group": g, "version": v, "kind": r.kind });
                        let mut e = json!({
                            "resource": r.plural,
                            "responseKind": kind,
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": VERBS,
                        });
                        if !r.short_names.is_empty() {
                            e["shortNames"] = json!(r.short_names);
                        }
                        if r.status_subresource {
                            e["subresources"] =
                                json!([{ "subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS }]);
                        }
                        e
                    })
                    .collect();
                json!({ "version": v, "resources": res, "freshness": "Current" })
            })
            .collect();
        let metadata = if g.is_empty() { json!({}) } else { json!({ "name": g }) };
        items.push(json!({ "metadata": metadata, "versions": versions }));
    }
    json!({ "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items })
}

fn discovery_response(v: Value) -> Response {
    let mut r = json_response(StatusCode::OK, &v);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
    );
    r
}

/// What a resource path names.
struct Target<'a> {
    res: ResIdx,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_target<'a>(g: &str, v: &str, rest: &[&'a str]) -> Result<Target<'a>, ApiError> {
    let find = |plural: &str| resources::by_path(g, v, plural).ok_or_else(ApiError::no_such_resource);
    let t = match rest {
        ["namespaces", ns, plural, more @ ..] if resources::by_path(g, v, plural).is_some() => {
            let res = find(plural)?;
            match more {
                [] => Target {
                    res,
                    ns: Some(ns),
                    name: None,
                    sub: None,
                },
                [name] => Target {
                    res,
                    ns: Some(ns),
                    name: Some(name),
                    sub: None,
                },
                [name, sub] => Target {
                    res,
                    ns: Some(ns),
                    name: Some(name),
                    sub: Some(sub),
                },
                _ => return Err(ApiError::no_such_resource()),
            }
        }
        [plural] => Target {
            res: find(plural)?,
            ns: None,
            name: None,
            sub: None,
        },
        [plural, name] => Target {
            res: find(plural)?,
            ns: None,
            name: Some(name),
            sub: None,
        },
        [plural, name, sub] => Target {
            res: find(plural)?,
            ns: None,
            name: Some(name),
            sub: Some(sub),
        },
        _ => return Err(ApiError::no_such_resource()),
    };
    let rt = &RESOURCES[t.res];
    // Namespaced objects are only addressed inside a namespace; cluster-scoped ones never are.
    if (rt.namespaced && t.ns.is_none() && t.name.is_some()) || (!rt.namespaced && t.ns.is_some()) {
        return Err(ApiError::no_such_resource());
    }
    match t.sub {
        None => {}
        Some("status") if rt.status_subresource => {}
        Some(_) => return Err(ApiError::no_such_resource()),
    }
    Ok(t)
}

fn meta_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

fn partial(v: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": v.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn object_response(code: StatusCode, v: &Value, headers: &HeaderMap) -> Response {
    if meta_only(headers) {
        json_response(code, &partial(v))
    } else {
        json_response(code, v)
    }
}

fn parse_body(body: &Bytes, yaml_ok: bool) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if yaml_ok => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request(format!("{e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|y| ApiError::bad_request(format!("error decoding YAML: {y}")))
        }
        Err(e) => Err(ApiError::bad_request(format!("error decoding JSON: {e}"))),
    }
}

fn write_opts(q: &Query, headers: &HeaderMap, sub: Option<&str>) -> Result<WriteOpts, ApiError> {
    Ok(WriteOpts {
        dry_run: match q.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported dryRun value {v:?}: only All"
                )));
            }
        },
        field_manager: q.non_empty("fieldManager").map(str::to_owned),
        force: q.flag("force")?.unwrap_or(false),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        subresource: sub.map(str::to_owned),
    })
}

#[allow(clippy::too_many_arguments)]
fn resource_request(
    sh: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    g: &str,
    v: &str,
    rest: &[&str],
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let t = parse_target(g, v, rest)?;
    let rt = &RESOURCES[t.res];
    let ns = t.ns.unwrap_or("");
    match (method.clone(), t.name) {
        (Method::GET, None) => {
            if q.flag("watch")?.unwrap_or(false) {
                watch(sh, t.res, t.ns, q, meta_only(headers))
            } else {
                list(sh, t.res, t.ns, q, meta_only(headers))
            }
        }
        (Method::GET, Some(name)) => {
            let obj = sh
                .read(|st| ops::get(st, t.res, ns, name))
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            Ok(object_response(StatusCode::OK, &obj, headers))
        }
        (Method::POST, None) => {
            if rt.namespaced && t.ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let opts = write_opts(q, headers, None)?;
            let obj = parse_body(body, false)?;
            let created = sh.write(|st| ops::create(st, t.res, ns, obj, &opts))?;
            Ok(object_response(StatusCode::CREATED, &created, headers))
        }
        (Method::PUT, Some(name)) => {
            let opts = write_opts(q, headers, t.sub)?;
            let obj = parse_body(body, false)?;
            let out = sh.write(|st| ops::replace(st, t.res, ns, name, obj, &opts))?;
            Ok(object_response(StatusCode::OK, &out, headers))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let pt = PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            let opts = write_opts(q, headers, t.sub)?;
            let patch = parse_body(body, pt == PatchType::Apply)?;
            let (out, created) = sh.write(|st| ops::patch(st, t.res, ns, name, pt, &patch, &opts))?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(object_response(code, &out, headers))
        }
        (Method::DELETE, Some(name)) if t.sub.is_none() => {
            let options = if body.is_empty() {
                json!({})
            } else {
                parse_body(body, false)?
            };
            let dry_run = write_opts(q, headers, None)?.dry_run
                || options
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "All"));
            match sh.write(|st| ops::delete(st, t.res, ns, name, &options, dry_run))? {
                Deleted::Pending(obj) => Ok(object_response(StatusCode::OK, &obj, headers)),
                // Pods answer with their last state, other kinds with a Success status.
                Deleted::Gone(obj) if rt.kind == "Pod" => Ok(object_response(StatusCode::OK, &obj, headers)),
                Deleted::Gone(obj) => {
                    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
                    Ok(json_response(StatusCode::OK, &status::success(rt, name, uid)))
                }
            }
        }
        (Method::DELETE, None) => delete_collection(sh, t.res, t.ns, q, body, headers),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn selectors(rt: &ResourceType, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), rt).map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

#[derive(Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
    r: String,
    /// Items listed before `start` (for `remainingItemCount` without a walk over the rest).
    pos: usize,
}

/// Where a paged list goes on: the snapshot, the last key listed and how many were listed so far.
struct Resume {
    rv: u64,
    last: Key,
    pos: usize,
}

fn encode_continue(rt: &ResourceType, resume: &Resume) -> String {
    let Resume { rv, last, pos } = resume;
    let start = if last.1.is_empty() {
        last.2.clone()
    } else {
        format!("{}/{}", last.1, last.2)
    };
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: *rv,
        start,
        r: rt.qualified(),
        pos: *pos,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(rt: &ResourceType, res: ResIdx, s: &str) -> Result<Resume, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.r != rt.qualified() {
        return Err(bad());
    }
    let (ns, name) = match t.start.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (String::new(), t.start.clone()),
    };
    Ok(Resume {
        rv: t.rv,
        last: (res, ns, name),
        pos: t.pos,
    })
}

/// A list item as the real server sends it: without `apiVersion`/`kind`.
struct ListItem<'a>(&'a Value);

impl Serialize for ListItem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_object() {
            Some(m) => s.collect_map(m.iter().filter(|(k, _)| *k != "apiVersion" && *k != "kind")),
            None => self.0.serialize(s),
        }
    }
}

#[derive(Serialize)]
struct ListBody<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: Value,
    items: Vec<ListItem<'a>>,
}

fn list(sh: &Arc<Shared>, res: ResIdx, ns: Option<&str>, q: &Query, meta_only: bool) -> Result<Response, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = selectors(rt, q)?;
    let limit: usize = match q.non_empty("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let cont = q.non_empty("continue");
    let rv_param = q.non_empty("resourceVersion");
    let rvm = q.non_empty("resourceVersionMatch");
    if cont.is_some() && rv_param.is_some_and(|r| r != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if rvm.is_some() && rv_param.is_none() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if let Some(m) = rvm
        && m != "NotOlderThan"
        && m != "Exact"
    {
        return Err(ApiError::bad_request(format!("unsupported resourceVersionMatch {m:?}")));
    }
    if rvm == Some("Exact") && rv_param == Some("0") {
        return Err(ApiError::bad_request(
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ));
    }
    let after = match cont {
        Some(c) => Some(decode_continue(rt, res, c)?),
        None => None,
    };
    let no_selectors = labels.0.is_empty() && fields.0.is_empty();
    let mut items: Vec<Arc<Value>> = Vec::new();
    let mut last: Option<Key> = None;
    let mut more = false;
    let mut total: Option<usize> = None;
    let at = sh.read(|st| -> Result<u64, ApiError> {
        let (at, start) = match &after {
            Some(resume) => (resume.rv, Some(&resume.last)),
            None => {
                let at = match rv_param {
                    None | Some("0") => st.rv,
                    Some(r) => {
                        let r = parse_rv(r)?;
                        if r > st.rv {
                            return Err(ApiError::too_large(r, st.rv));
                        }
                        let exact = rvm == Some("Exact") || (rvm.is_none() && limit > 0);
                        if exact { r } else { st.rv }
                    }
                };
                (at, None)
            }
        };
        let expired = || {
            if after.is_some() {
                ApiError::continue_expired()
            } else {
                ApiError::too_old(at, st.history_start + 1)
            }
        };
        // Stops at the first match past the page: a page costs its own items, not the rest.
        st.scan_at(res, ns, at, start, |k, v| {
            if !(no_selectors || (labels.matches(v) && fields.matches(v))) {
                return true;
            }
            if limit > 0 && items.len() >= limit {
                more = true;
                return false;
            }
            items.push(v.clone());
            last = Some(k.clone());
            true
        })
        .map_err(|()| expired())?;
        if more && no_selectors {
            total = Some(st.count_at(res, ns, at).map_err(|()| expired())?);
        }
        Ok(at)
    })?;
    let mut metadata = json!({ "resourceVersion": at.to_string() });
    if more && let Some(last) = last {
        let resume = Resume {
            rv: at,
            last,
            pos: after.as_ref().map_or(0, |r| r.pos) + items.len(),
        };
        metadata["continue"] = json!(encode_continue(rt, &resume));
        if let Some(total) = total {
            metadata["remainingItemCount"] = json!(total.saturating_sub(resume.pos));
        }
    }
    if meta_only {
        // PartialObjectMetadata items keep their apiVersion/kind on the real server.
        let partials: Vec<Value> = items.iter().map(|v| partial(v)).collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": partials,
            }),
        ));
    }
    let body = ListBody {
        kind: rt.list_kind(),
        api_version: rt.api_version(),
        metadata,
        items: items.iter().map(|v| ListItem(v)).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn delete_collection(
    sh: &Arc<Shared>,
    res: ResIdx,
    ns: Option<&str>,
    q: &Query,
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = selectors(rt, q)?;
    let options = if body.is_empty() {
        json!({})
    } else {
        parse_body(body, false)?
    };
    let dry_run = write_opts(q, headers, None)?.dry_run;
    let (items, rv) = sh.write(|st| -> Result<_, ApiError> {
        let mut names: Vec<(String, String)> = Vec::new();
        let rv = st.rv;
        let _ = st.scan_at(res, ns, rv, None, |k, v| {
            if labels.matches(v) && fields.matches(v) {
                names.push((k.1.clone(), k.2.clone()));
            }
            true
        });
        let mut items = Vec::new();
        for (ns, name) in names {
            match ops::delete(st, res, &ns, &name, &options, dry_run)? {
                Deleted::Gone(o) | Deleted::Pending(o) => items.push(o),
            }
        }
        Ok((items, st.rv))
    })?;
    let body = ListBody {
        kind: rt.list_kind(),
        api_version: rt.api_version(),
        metadata: json!({ "resourceVersion": rv.to_string() }),
        items: items.iter().map(|v| ListItem(v)).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({ "type": ty, "object": object })).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        &json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta }),
    )
}

/// One open watch.
struct Watch {
    sh: Arc<Shared>,
    res: ResIdx,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    meta_only: bool,
    /// Every event up to here has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    bookmarks: bool,
    deadline: Option<Instant>,
    next_bookmark: Instant,
    rv_rx: tokio::sync::watch::Receiver<u64>,
    epoch_rx: tokio::sync::watch::Receiver<u64>,
}

impl Watch {
    fn matches(&self, v: &Value) -> bool {
        self.labels.matches(v) && self.fields.matches(v)
    }

    fn event(&self, ty: &str, v: &Value) -> Bytes {
        if self.meta_only {
            line(ty, &partial(v))
        } else {
            line(ty, v)
        }
    }

    /// Queues what happened since `cursor`.
    fn poll_store(&mut self) {
        let sh = self.sh.clone();
        let st = sh.store.lock().unwrap_or_else(|e| e.into_inner());
        if !st.in_window(self.cursor) {
            let e = ApiError::too_old(self.cursor, st.history_start + 1);
            self.pending.push_back(line("ERROR", &e.to_status()));
            self.done = true;
            return;
        }
        for e in st.events_after(self.cursor) {
            if e.key.0 != self.res || self.ns.as_ref().is_some_and(|n| *n != e.key.1) {
                continue;
            }
            let now = self.matches(&e.obj);
            let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
            // Objects moving into or out of a selector appear as ADDED/DELETED, like the real watch cache.
            let ty = match e.ty {
                EventType::Added | EventType::Deleted => now.then_some(e.ty.as_str()),
                EventType::Modified => match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                },
            };
            if let Some(ty) = ty {
                let b = self.event(ty, &e.obj);
                self.pending.push_back(b);
            }
        }
        self.cursor = st.rv;
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            // A closed connection loses whatever was not yet sent.
            if self.epoch_rx.has_changed().unwrap_or(true) {
                self.pending.clear();
                return None;
            }
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            self.rv_rx.borrow_and_update();
            self.poll_store();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let deadline = self.deadline;
            tokio::select! {
                r = self.rv_rx.changed() => {
                    if r.is_err() {
                        self.done = true;
                    }
                }
                _ = self.epoch_rx.changed() => return None,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.done = true;
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.pending.push_back(bookmark(&RESOURCES[self.res], self.cursor, false));
                    self.next_bookmark = Instant::now() + self.sh.bookmark_interval();
                }
            }
        }
    }
}

fn watch(sh: &Arc<Shared>, res: ResIdx, ns: Option<&str>, q: &Query, meta_only: bool) -> Result<Response, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = selectors(rt, q)?;
    let bookmarks = q.flag("allowWatchBookmarks")?.unwrap_or(false);
    // No (or a zero) timeout: the stream lasts until the client goes or watches are closed.
    let timeout = match q.non_empty("timeoutSeconds") {
        Some(t) => match t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?
        {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
        None => None,
    };
    let rv_param = q.get("resourceVersion").unwrap_or("");
    let send_initial = q.flag("sendInitialEvents")?;
    let rvm = q.non_empty("resourceVersionMatch");
    if send_initial == Some(true) {
        if rvm != Some("NotOlderThan") {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    } else if rvm.is_some() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let initial = send_initial.unwrap_or(rv_param.is_empty() || rv_param == "0");
    let requested = if rv_param.is_empty() {
        None
    } else {
        Some(parse_rv(rv_param)?)
    };
    let mut w = Watch {
        sh: sh.clone(),
        res,
        ns: ns.map(str::to_owned),
        labels,
        fields,
        meta_only,
        cursor: 0,
        pending: VecDeque::new(),
        done: false,
        bookmarks,
        deadline: timeout.map(|t| Instant::now() + t),
        next_bookmark: Instant::now() + sh.bookmark_interval(),
        rv_rx: sh.rv_tx.subscribe(),
        epoch_rx: sh.epoch_tx.subscribe(),
    };
    {
        let st = sh.store.lock().unwrap_or_else(|e| e.into_inner());
        if initial {
            // Synthetic ADDED events for the current state, then live events from here.
            w.cursor = st.rv;
            let mut lines = Vec::new();
            let _ = st.scan_at(res, ns, st.rv, None, |_, v| {
                if w.matches(v) {
                    lines.push(w.event("ADDED", v));
                }
                true
            });
            w.pending.extend(lines);
            if send_initial == Some(true) {
                w.pending.push_back(bookmark(rt, st.rv, true));
            }
        } else {
            let from = requested.unwrap_or(st.rv);
            if from > st.rv {
                w.pending
                    .push_back(line("ERROR", &ApiError::too_large(from, st.rv).to_status()));
                w.done = true;
            } else if !st.in_window(from) {
                w.pending.push_back(line(
                    "ERROR",
                    &ApiError::too_old(from, st.history_start + 1).to_status(),
                ));
                w.done = true;
            }
            w.cursor = from;
        }
    }
    w.rv_rx.borrow_and_update();
    w.epoch_rx.borrow_and_update();
    let stream = futures::stream::unfold(w, |mut w| async move {
        w.next_chunk().await.map(|b| (Ok::<Bytes, Infallible>(b), w))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()))
}
