//! What every handler of the stand-in server shares: the request's decoded query and the JSON
//! answers (a Kubernetes `Status` for errors). Apart from the router so that the control API and the
//! injected faults answer the same way without importing it.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::status::ApiError;
use crate::util;

/// Decoded query parameters.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a query string.
    pub(crate) fn parse(q: Option<&str>) -> Query {
        Query(util::parse_query(q.unwrap_or("")))
    }
    /// The last value of `k`.
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    /// The last value of `k`, unless empty.
    pub(crate) fn non_empty(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|v| !v.is_empty())
    }
    /// `k` as a boolean (`true`/`1`, `false`/`0`); absent or empty: `None`.
    pub(crate) fn flag(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!("invalid boolean for {k}: {v:?}"))),
        }
    }
}

/// `body` as JSON with `code`.
pub(crate) fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The Kubernetes `Status` of `e`, with its code.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}
