//! The test control API under `/_control/` (not logged in [`super::ApiServer::requests`]).
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /_control/apply` | body: one object, a `List`, a JSON array, or multi-document YAML; create or replace each (answers the object, or a `List`) |
//! | `GET /_control/objects/{kind}[/{namespace}[/{name}]]` | list or get (cluster-scoped kinds: `/{kind}[/{name}]`) |
//! | `DELETE /_control/objects/{kind}/{namespace}/{name}` | delete now, finalizers or not (cluster-scoped: `/{kind}/{name}`) |
//! | `POST /_control/compact` | drop the event history |
//! | `POST /_control/close-watches` | end every open watch |
//! | `POST /_control/bookmark-interval?ms=N` | bookmark period for new watches |
//! | `POST /_control/history-limit?events=N` | bound of the event history |
//! | `GET /_control/requests`, `DELETE /_control/requests` | request log `[[method, path?query], …]`, or clear it |
//! | `GET /_control/resource-version` | `{"resourceVersion": "N"}` |
//! | `POST /_control/faults?status=N\|delayMs=N[&resource=R][&verb=V][&retryAfter=S][&times=N]` | arm an [`super::ApiFault`]: 403 (worded as RBAC's), 401, 400/409/422 (a refused write), 429, 5xx, or a delay |
//! | `DELETE /_control/faults` | disarm every fault |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::answer::{Query, error_response, json_response};
use super::resources::{RESOURCES, by_name};
use super::status::ApiError;
use super::{ApiFault, ApiServer, Shared, parse_documents};

pub(crate) fn handle(sh: &Arc<Shared>, method: &Method, path: &str, q: &Query, body: &Bytes) -> Response {
    let server = ApiServer { shared: sh.clone() };
    match route(&server, method, path, q, body) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

fn route(server: &ApiServer, method: &Method, path: &str, q: &Query, body: &Bytes) -> Result<Value, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    let number = |k: &str| -> Result<u64, ApiError> {
        q.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("query parameter {k}=<number> required")))
    };
    match (method.clone(), segs.as_slice()) {
        (Method::POST, ["apply"]) => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
            let single = serde_json::from_str::<Value>(text)
                .ok()
                .is_some_and(|v| v.is_object() && v.get("items").is_none());
            let docs = parse_documents(text).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
            let applied = server.apply_all(docs)?;
            if single && applied.len() == 1 {
                Ok(applied.into_iter().next().unwrap_or_default())
            } else {
                Ok(json!({ "kind": "List", "apiVersion": "v1", "items": applied }))
            }
        }
        (Method::GET, ["objects", kind, rest @ ..]) => {
            let res = by_name(kind).ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?}")))?;
            let rt = &RESOURCES[res];
            let (ns, name) = split_rest(rt.namespaced, rest)?;
            match name {
                Some(name) => server
                    .try_get(kind, ns, name)?
                    .ok_or_else(|| ApiError::not_found(rt, name)),
                None => Ok(json!({
                    "kind": rt.list_kind(),
                    "apiVersion": rt.api_version(),
                    "metadata": { "resourceVersion": server.resource_version().to_string() },
                    "items": server.try_list(kind, ns)?,
                })),
            }
        }
        (Method::DELETE, ["objects", kind, rest @ ..]) => {
            let res = by_name(kind).ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?}")))?;
            let rt = &RESOURCES[res];
            let (ns, name) = split_rest(rt.namespaced, rest)?;
            let name = name.ok_or_else(|| ApiError::bad_request("object name required"))?;
            server
                .try_delete(kind, ns, name)?
                .ok_or_else(|| ApiError::not_found(rt, name))
        }
        (Method::POST, ["compact"]) => {
            server.compact();
            Ok(json!({ "resourceVersion": server.resource_version().to_string() }))
        }
        (Method::POST, ["close-watches"]) => {
            server.close_watches();
            Ok(json!({}))
        }
        (Method::POST, ["bookmark-interval"]) => {
            server.set_bookmark_interval(Duration::from_millis(number("ms")?));
            Ok(json!({}))
        }
        (Method::POST, ["history-limit"]) => {
            server.set_history_limit(usize::try_from(number("events")?).unwrap_or(usize::MAX));
            Ok(json!({}))
        }
        (Method::GET, ["requests"]) => Ok(json!(server.requests())),
        (Method::DELETE, ["requests"]) => {
            server.clear_requests();
            Ok(json!({}))
        }
        (Method::POST, ["faults"]) => {
            let fault = match (q.get("status"), q.get("delayMs")) {
                (Some(_), None) => match number("status")? {
                    401 => ApiFault::unauthorized(),
                    403 => ApiFault::forbidden("", ""),
                    code @ (400 | 409 | 422) => ApiFault::refused_write(u16::try_from(code).unwrap_or(400)),
                    429 => ApiFault::too_many_requests(q.get("retryAfter").map_or(Ok(1), |_| number("retryAfter"))?),
                    code @ 500..=599 => ApiFault::server_error(u16::try_from(code).unwrap_or(500)),
                    code => {
                        return Err(ApiError::bad_request(format!(
                            "status {code}: one of 400, 401, 403, 409, 422, 429, 5xx"
                        )));
                    }
                },
                (None, Some(_)) => ApiFault::slow(Duration::from_millis(number("delayMs")?)),
                _ => return Err(ApiError::bad_request("exactly one of status=N or delayMs=N required")),
            };
            let mut fault = fault.on(q.get("resource").unwrap_or(""), q.get("verb").unwrap_or(""));
            if q.get("times").is_some() {
                fault = fault.times(usize::try_from(number("times")?).unwrap_or(usize::MAX));
            }
            server.inject(fault);
            Ok(json!({}))
        }
        (Method::DELETE, ["faults"]) => {
            server.clear_faults();
            Ok(json!({}))
        }
        (Method::GET, ["resource-version"]) => Ok(json!({ "resourceVersion": server.resource_version().to_string() })),
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!("no control endpoint {method} {path}"),
        )),
    }
}

/// `[ns, name]`, `[ns]`, `[]` for namespaced kinds; `[name]`, `[]` for cluster-scoped ones.
fn split_rest<'a>(namespaced: bool, rest: &[&'a str]) -> Result<(&'a str, Option<&'a str>), ApiError> {
    match (namespaced, rest) {
        (_, []) => Ok(("", None)),
        (true, [ns]) => Ok((ns, None)),
        (true, [ns, name]) => Ok((ns, Some(name))),
        (false, [name]) => Ok(("", Some(name))),
        _ => Err(ApiError::bad_request("expected /objects/{kind}[/{namespace}[/{name}]]")),
    }
}
