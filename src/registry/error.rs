//! Registry errors from what reqwest and registries answer: flattened cause chains without URLs,
//! transport failures and timeouts, and the `Status` error of an unexpected answer with its detail
//! and `Retry-After`.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header;
use reqwest::{Response, Url};

use super::{RegistryError, proto, retry};

/// Most of an error body read for its detail.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// An error message chain (`a: b: c`) without URLs, so nothing but our own context names the request.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && parts.last().is_none_or(|l| !l.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// A flattened error message usable as a `Transport` source.
#[derive(Debug)]
pub(crate) struct Cause(pub String);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cause {}

pub(crate) fn transport(context: String, e: reqwest::Error) -> RegistryError {
    let e = e.without_url();
    RegistryError::Transport {
        context,
        source: Box::new(Cause(chain(&e))),
    }
}

pub(crate) fn timed_out(context: String, after: Duration) -> RegistryError {
    RegistryError::Transport {
        context,
        source: Box::new(Cause(format!("no response within {after:?}"))),
    }
}

impl RegistryError {
    /// `Retry-After` carried by the error, if any.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Reads at most `MAX_ERROR_BODY` bytes of an error response for its detail.
async fn error_body(resp: Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    proto::error_detail(&body)
}

pub(crate) fn retry_after_of(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
}

/// The `Status` error for an unexpected response.
pub(crate) async fn status_error(method: &'static str, url: &Url, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let retry_after = retry_after_of(&resp);
    let detail = error_body(resp).await;
    RegistryError::Status {
        method,
        url: proto::display_url(url),
        status,
        detail,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_flattening() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E("error sending request", Some(Box::new(E("connection refused", None))));
        assert_eq!(chain(&e), "error sending request: connection refused");
        let e = E("tls: bad cert", Some(Box::new(E("bad cert", None))));
        assert_eq!(chain(&e), "tls: bad cert");
    }
}
