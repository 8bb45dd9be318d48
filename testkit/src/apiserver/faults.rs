//! Faults the stand-in answers instead of (or before) serving a request, armed with
//! [`super::ApiServer::inject`]: what a real API server does under RBAC refusals (403), a bad
//! credential (401), throttling (429 with `Retry-After`), overload (5xx) and slow lists. Faulted
//! requests are still logged in [`super::ApiServer::requests`].

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::answer::error_response;
use super::resources::ResourceType;
use super::status::ApiError;

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFaultKind {
    /// Answer `code` with a `Status` of `reason`, without serving the request; a 403's message
    /// names the user, verb and resource as RBAC's does.
    Status {
        /// HTTP status.
        code: u16,
        /// `Status.reason` (`Forbidden`, `TooManyRequests`, …).
        reason: &'static str,
        /// `Retry-After` in seconds, if any.
        retry_after: Option<u64>,
    },
    /// Serve the request after waiting this long (a slow list).
    Delay(Duration),
}

/// A fault on the requests one verb makes on one resource (or on every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFault {
    /// What happens.
    pub kind: ApiFaultKind,
    /// Plural resource name (`deployments`); `None`: every resource.
    pub resource: Option<String>,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`); `None`: every verb.
    pub verb: Option<String>,
    /// How many more requests it applies to; `None`: until [`super::ApiServer::clear_faults`].
    pub remaining: Option<usize>,
}

/// The user the stand-in names in its refusals, as a real server names a ServiceAccount.
pub const REFUSED_USER: &str = "system:serviceaccount:k8s-copycat:k8s-copycat";

impl ApiFault {
    fn status(code: u16, reason: &'static str, retry_after: Option<u64>) -> ApiFault {
        ApiFault {
            kind: ApiFaultKind::Status {
                code,
                reason,
                retry_after,
            },
            resource: None,
            verb: None,
            remaining: None,
        }
    }

    /// 403 for `verb` on `resource`, as RBAC refuses it, until cleared.
    pub fn forbidden(resource: &str, verb: &str) -> ApiFault {
        ApiFault::status(403, "Forbidden", None).on(resource, verb)
    }

    /// 401 Unauthorized (a token the server does not accept), on every request until cleared.
    pub fn unauthorized() -> ApiFault {
        ApiFault::status(401, "Unauthorized", None)
    }

    /// 429 with `Retry-After: retry_after_secs`, on every request until limited or cleared.
    pub fn too_many_requests(retry_after_secs: u64) -> ApiFault {
        ApiFault::status(429, "TooManyRequests", Some(retry_after_secs))
    }

    /// A 5xx (500 InternalError, 503 ServiceUnavailable, …) on every request until limited or cleared.
    pub fn server_error(code: u16) -> ApiFault {
        let reason = match code {
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiFault::status(code, reason, None)
    }

    /// A write the API server does not take: 409 `Conflict`, 422 `Invalid` (the schema refuses it)
    /// or 400 `BadRequest` (any other code: 400), on every request until limited or cleared.
    pub fn refused_write(code: u16) -> ApiFault {
        match code {
            409 => ApiFault::status(409, "Conflict", None),
            422 => ApiFault::status(422, "Invalid", None),
            _ => ApiFault::status(400, "BadRequest", None),
        }
    }

    /// Serves each request after `delay`.
    pub fn slow(delay: Duration) -> ApiFault {
        ApiFault {
            kind: ApiFaultKind::Delay(delay),
            resource: None,
            verb: None,
            remaining: None,
        }
    }

    /// Only for `verb` on `resource` (plural name; `""` for any verb or any resource).
    pub fn on(self, resource: &str, verb: &str) -> ApiFault {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ApiFault {
            resource: some(resource),
            verb: some(verb),
            ..self
        }
    }

    /// For the next `count` matching requests only.
    pub fn times(self, count: usize) -> ApiFault {
        ApiFault {
            remaining: Some(count),
            ..self
        }
    }

    fn matches(&self, resource: &str, verb: &str) -> bool {
        self.remaining != Some(0)
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.verb.as_deref().is_none_or(|v| v == verb)
    }
}

/// Takes one use of the first armed fault matching `verb` on `resource`.
pub(crate) fn take(faults: &mut Vec<ApiFault>, resource: &str, verb: &str) -> Option<ApiFaultKind> {
    let i = faults.iter().position(|f| f.matches(resource, verb))?;
    let kind = faults[i].kind.clone();
    if let Some(n) = faults[i].remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            faults.remove(i);
        }
    }
    Some(kind)
}

/// The answer of a [`ApiFaultKind::Status`] fault to `verb` on `rt` in `namespace`.
pub(crate) fn answer(
    code: u16,
    reason: &'static str,
    retry_after: Option<u64>,
    rt: &ResourceType,
    verb: &str,
    namespace: Option<&str>,
) -> Response {
    let resource = if rt.group.is_empty() {
        rt.plural.to_owned()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    };
    let message = match code {
        403 => {
            let scope = namespace.map_or("at the cluster scope".to_owned(), |ns| {
                format!("in the namespace \"{ns}\"")
            });
            format!(
                "{resource} is forbidden: User \"{REFUSED_USER}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
                rt.plural, rt.group
            )
        }
        401 => "Unauthorized".to_owned(),
        429 => "Too many requests, please try again later.".to_owned(),
        _ => format!("injected by the testkit stand-in: {reason}"),
    };
    let mut response = error_response(&ApiError::new(code, reason, message));
    if StatusCode::from_u16(code).is_err() {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_match_resource_and_verb_and_run_out() {
        let mut faults = vec![
            ApiFault::forbidden("secrets", "list"),
            ApiFault::server_error(500).times(2),
        ];
        assert_eq!(
            take(&mut faults, "secrets", "list"),
            Some(ApiFaultKind::Status {
                code: 403,
                reason: "Forbidden",
                retry_after: None
            })
        );
        assert!(matches!(
            take(&mut faults, "secrets", "watch"),
            Some(ApiFaultKind::Status { code: 500, .. })
        ));
        assert!(matches!(
            take(&mut faults, "pods", "list"),
            Some(ApiFaultKind::Status { code: 500, .. })
        ));
        assert_eq!(take(&mut faults, "pods", "list"), None, "the 500s ran out");
        assert_eq!(faults.len(), 1, "the 403 stays until cleared");
    }

    #[test]
    fn refused_writes_carry_the_api_servers_reason() {
        // (code asked, code and reason answered)
        let cases = [
            (409, 409, "Conflict"),
            (422, 422, "Invalid"),
            (400, 400, "BadRequest"),
            (418, 400, "BadRequest"),
        ];
        for (asked, code, reason) in cases {
            assert_eq!(
                ApiFault::refused_write(asked).kind,
                ApiFaultKind::Status {
                    code,
                    reason,
                    retry_after: None
                },
                "{asked}"
            );
        }
    }
}
