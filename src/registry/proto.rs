//! Small pieces of the distribution protocol that need no network: endpoints, headers, URLs, bodies.

use std::time::Duration;

use reqwest::Url;

use crate::reference::DOCKER_HUB;

/// Where Docker Hub's registry API is served.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// The `host[:port]` the registry API is reached at (`docker.io` → `registry-1.docker.io`).
pub fn endpoint_host(canonical: &str) -> &str {
    if canonical == DOCKER_HUB {
        DOCKER_HUB_ENDPOINT
    } else {
        canonical
    }
}

/// Whether `host[:port]` is a loopback address: `localhost`, `127.*`, `[::1]`.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// Parses Docker Hub's `ratelimit-remaining: 100;w=21600` into (remaining, window).
pub fn parse_ratelimit(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let remaining = parts.next()?.trim().parse::<u64>().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((remaining, window))
}

/// Why an upload `Location` header cannot be followed (its query, which may hold a signature, left
/// out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLocation {
    /// The header is empty.
    #[error("empty Location header")]
    Empty,
    /// The header is no URL.
    #[error("invalid Location header {location:?}: {reason}")]
    Invalid {
        /// The header without its query.
        location: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// Resolves an upload `Location` (absolute, or relative to the request URL) against `base`.
pub fn resolve_location(base: &Url, location: &str) -> Result<Url, BadLocation> {
    let location = location.trim();
    if location.is_empty() {
        return Err(BadLocation::Empty);
    }
    base.join(location).map_err(|e| BadLocation::Invalid {
        location: strip_query(location).to_owned(),
        reason: e.to_string(),
    })
}

/// `url` with `name=value` appended to its query (which may already exist).
pub fn with_query(url: &Url, name: &str, value: &str) -> Url {
    let mut url = url.clone();
    url.query_pairs_mut().append_pair(name, value);
    url
}

/// A URL for messages: upload session URLs carry opaque `_state` tokens in the query, which are long
/// and of no use in a log line, so the query is dropped from them.
pub fn display_url(url: &Url) -> String {
    if url.query().is_some_and(|q| q.contains("_state")) {
        let mut u = url.clone();
        u.set_query(None);
        u.to_string()
    } else {
        url.to_string()
    }
}

fn strip_query(s: &str) -> &str {
    s.split('?').next().unwrap_or(s)
}

/// The human part of an error body: distribution's `{"errors":[{"code","message","detail"}]}` as
/// `CODE: message; …`, else the trimmed text, at most 300 characters.
pub fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        e.errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    truncate(&text, 300)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The media type of a manifest: the response `Content-Type` without parameters, unless it is
/// generic (`application/json`, `text/plain`, `application/octet-stream`, absent); then the JSON
/// `mediaType`; then a guess from the structure (`manifests` → OCI index, otherwise OCI manifest).
pub fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let generic = matches!(
        ct.as_str(),
        "" | "application/json" | "text/plain" | "application/octet-stream"
    );
    if !generic {
        return ct;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(mt), ..
        }) if !mt.is_empty() => mt,
        Ok(Probe { manifests: Some(_), .. }) => "application/vnd.oci.image.index.v1+json".into(),
        Ok(_) => "application/vnd.oci.image.manifest.v1+json".into(),
        Err(_) if !ct.is_empty() => ct,
        Err(_) => "application/octet-stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("docker.io"), "registry-1.docker.io");
        assert_eq!(endpoint_host("quay.io"), "quay.io");
    }

    #[test]
    fn loopback_table() {
        let cases = [
            ("localhost", true),
            ("localhost:5000", true),
            ("LOCALHOST:1", true),
            ("127.0.0.1", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3:80", true),
            ("[::1]", true),
            ("[::1]:5000", true),
            ("128.0.0.1:5000", false),
            ("localhost.example.com", false),
            ("registry.local:5000", false),
            ("[::2]:5000", false),
            ("docker.io", false),
        ];
        for (host, want) in cases {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }

    #[test]
    fn ratelimit_table() {
        let cases = [
            ("100;w=21600", Some((100, Some(21600)))),
            ("0;w=21600", Some((0, Some(21600)))),
            (" 76 ; w=21600 ", Some((76, Some(21600)))),
            ("42", Some((42, None))),
            ("5;w=", Some((5, None))),
            ("5;foo=1;w=60", Some((5, Some(60)))),
            ("", None),
            ("x;w=1", None),
            ("-1;w=60", None),
        ];
        for (value, want) in cases {
            let want = want.map(|(r, w)| (r, w.map(Duration::from_secs)));
            assert_eq!(parse_ratelimit(value), want, "{value:?}");
        }
    }

    #[test]
    fn location_resolution_table() {
        let base = Url::parse("https://reg.example:5000/v2/team/app/blobs/uploads/").unwrap();
        let cases = [
            (
                "/v2/team/app/blobs/uploads/uuid-1?_state=abc",
                "https://reg.example:5000/v2/team/app/blobs/uploads/uuid-1?_state=abc",
            ),
            (
                "https://reg.example:5000/v2/team/app/blobs/uploads/uuid-2",
                "https://reg.example:5000/v2/team/app/blobs/uploads/uuid-2",
            ),
            (
                "https://storage.example/upload/abc?sig=1",
                "https://storage.example/upload/abc?sig=1",
            ),
            ("uuid-3", "https://reg.example:5000/v2/team/app/blobs/uploads/uuid-3"),
            (
                " /v2/x/blobs/uploads/u ",
                "https://reg.example:5000/v2/x/blobs/uploads/u",
            ),
        ];
        for (location, want) in cases {
            assert_eq!(resolve_location(&base, location).unwrap().as_str(), want, "{location}");
        }
        assert!(resolve_location(&base, "").is_err());
        assert!(resolve_location(&base, "http://[bad").is_err());

        let d = "sha256:0123";
        let cases = [
            (
                "https://r/v2/a/blobs/uploads/u",
                "https://r/v2/a/blobs/uploads/u?digest=sha256%3A0123",
            ),
            (
                "https://r/v2/a/blobs/uploads/u?_state=x%3D",
                "https://r/v2/a/blobs/uploads/u?_state=x%3D&digest=sha256%3A0123",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_query(&Url::parse(url).unwrap(), "digest", d).as_str(), want);
        }
    }

    #[test]
    fn display_url_drops_upload_state() {
        let u = Url::parse("http://r/v2/a/blobs/uploads/u?_state=long&digest=x").unwrap();
        assert_eq!(display_url(&u), "http://r/v2/a/blobs/uploads/u");
        let u = Url::parse("http://r/v2/a/blobs/uploads/?mount=sha256:1&from=b").unwrap();
        assert_eq!(display_url(&u), u.to_string());
    }

    #[test]
    fn error_detail_table() {
        let cases = [
            (
                r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:x"}]}"#,
                "MANIFEST_BLOB_UNKNOWN: blob unknown to registry",
            ),
            (
                r#"{"errors":[{"code":"DENIED"},{"message":"second"}]}"#,
                "DENIED; second",
            ),
            ("  upstream\n connect error  ", "upstream connect error"),
            ("", ""),
        ];
        for (body, want) in cases {
            assert_eq!(error_detail(body.as_bytes()), want);
        }
        let long = "x".repeat(1000);
        assert_eq!(error_detail(long.as_bytes()).chars().count(), 301);
    }

    #[test]
    fn media_type_table() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let index = "application/vnd.oci.image.index.v1+json";
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        let cases = [
            (Some(docker), r#"{}"#, docker),
            (
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                "{}",
                index,
            ),
            (
                Some("application/json"),
                r#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#,
                docker,
            ),
            (None, r#"{"schemaVersion":2,"manifests":[]}"#, index),
            (
                Some("text/plain"),
                r#"{"schemaVersion":2,"config":{},"layers":[]}"#,
                oci,
            ),
            (Some("application/json"), "not json", "application/json"),
        ];
        for (ct, body, want) in cases {
            assert_eq!(manifest_media_type(ct, body.as_bytes()), want, "{ct:?} {body}");
        }
    }
}
