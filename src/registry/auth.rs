//! Authentication: `WWW-Authenticate` parsing, token scopes, token responses and the token cache
//! (pure), and the challenge and token flow that turns a challenge and credentials into the
//! `Authorization` of a request ([`Registry::authorization`]); `transport` applies it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{self, HeaderValue};
use reqwest::{Response, StatusCode, Url};

use super::error::{chain, status_error, timed_out, transport};
use super::tls::Base;
use super::{Credential, Registry, RegistryError, proto};
use crate::secret::Secret;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Scheme, lower-case (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order; keys lower-case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of parameter `key` (lower-case).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of parameter `key`, in order (`scope` may repeat).
    pub fn params_named<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one or more `WWW-Authenticate` header values (RFC 7235 §4.1): a value may hold several
/// challenges, parameter values may be quoted and contain commas and escaped quotes.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        parse_one_header(value, &mut out);
    }
    out
}

fn parse_one_header(s: &str, out: &mut Vec<Challenge>) {
    let b = s.as_bytes();
    let mut i = 0;
    let is_sep = |c: u8| c == b',' || c.is_ascii_whitespace();
    loop {
        while i < b.len() && is_sep(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return;
        }
        let start = i;
        while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let token = &s[start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !token.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote (or end)
                v
            } else {
                let vs = i;
                while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                s[vs..i].to_string()
            };
            // A parameter before any scheme is malformed and ignored.
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), value));
            }
        } else if !token.is_empty() {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
            i = j.max(i);
        } else {
            i += 1; // stray '='
        }
    }
}

/// The challenge copycat answers: Bearer when offered (it carries scopes), else Basic.
pub fn preferred(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| c.scheme == "bearer" && c.param("realm").is_some_and(|r| !r.is_empty()))
        .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
}

/// What a request needs from a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Read `repo`.
    Pull(&'a str),
    /// Read and write `repo`.
    Push(&'a str),
    /// Write `repo` and read `from` (cross-repository mount), in one token.
    Mount {
        /// The repository written to.
        repo: &'a str,
        /// The repository the blob is mounted from.
        from: &'a str,
    },
}

/// The scope strings for `access`, sorted and deduplicated (`repository:<name>:<actions>`).
pub fn scopes(access: Access<'_>) -> BTreeSet<String> {
    let pull = |r: &str| format!("repository:{r}:pull");
    let push = |r: &str| format!("repository:{r}:pull,push");
    match access {
        Access::Pull(r) => [pull(r)].into(),
        Access::Push(r) => [push(r)].into(),
        Access::Mount { repo, from } if repo == from => [push(repo)].into(),
        Access::Mount { repo, from } => [push(repo), pull(from)].into(),
    }
}

/// Whether a token granted for `have` covers `want` (`pull,push` covers `pull` of the same repo).
pub fn covers(have: &BTreeSet<String>, want: &BTreeSet<String>) -> bool {
    want.iter().all(|w| {
        have.contains(w)
            || w.strip_suffix(":pull")
                .is_some_and(|repo| have.contains(&format!("{repo}:pull,push")))
    })
}

/// A token service answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// `token`, or `access_token` when `token` is absent.
    pub token: Secret,
    /// `expires_in`, default 60 s (distribution's token spec).
    pub expires_in: Duration,
}

/// Token lifetime when the service does not say (distribution token spec).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Why a token service answer cannot be used. Never quotes the body (it holds tokens).
#[derive(Debug, thiserror::Error)]
pub enum TokenResponseError {
    /// The answer is not JSON.
    #[error("token response is not valid JSON ({0})")]
    Json(#[source] serde_json::Error),
    /// The answer holds no token.
    #[error("token response has neither `token` nor `access_token`")]
    NoToken,
}

/// Parses a token service answer.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenResponseError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(TokenResponseError::Json)?;
    let token = raw
        .token
        .filter(|t| !t.is_empty())
        .or(raw.access_token.filter(|t| !t.is_empty()))
        .ok_or(TokenResponseError::NoToken)?;
    let expires_in = match raw.expires_in {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    Ok(TokenResponse {
        token: Secret::new(token),
        expires_in,
    })
}

/// How long a token is used: its lifetime less a safety margin (a quarter, at most 30 s), so a token
/// is not sent in its last seconds and expires on the way.
pub fn usable_lifetime(expires_in: Duration) -> Duration {
    let margin = (expires_in / 4).min(Duration::from_secs(30));
    expires_in - margin
}

#[derive(Debug, Clone)]
struct Entry {
    host: String,
    scopes: BTreeSet<String>,
    token: Secret,
    valid_until: Instant,
}

/// Key of a token: registry host and scope set.
type TokenKey = (String, BTreeSet<String>);

/// Bearer tokens per (registry host, scope set), with a lock per key so concurrent requests needing
/// the same token fetch it once.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<Vec<Entry>>,
    fetch_locks: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenCache {
    /// A valid token for `host` whose scopes cover `scopes`.
    pub fn get(&self, host: &str, scopes: &BTreeSet<String>, now: Instant) -> Option<Secret> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.valid_until > now);
        entries
            .iter()
            .find(|e| e.host == host && covers(&e.scopes, scopes))
            .map(|e| e.token.clone())
    }

    /// Stores a token fetched for `scopes`.
    pub fn put(&self, host: &str, scopes: BTreeSet<String>, token: Secret, valid_until: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !(e.host == host && e.scopes == scopes));
        entries.push(Entry {
            host: host.to_string(),
            scopes,
            token,
            valid_until,
        });
    }

    /// Forgets `token` (the registry refused it).
    pub fn invalidate(&self, host: &str, token: &Secret) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !(e.host == host && &e.token == token));
    }

    /// The lock serialising fetches of one (host, scopes) token.
    pub fn fetch_lock(&self, host: &str, scopes: &BTreeSet<String>) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.fetch_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry((host.to_string(), scopes.clone()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }
}

/// An `Authorization` header value and, for exchanged tokens, the token (to forget it on a 401).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AuthHeader {
    pub(crate) value: Secret,
    pub(crate) token: Option<Secret>,
}

impl AuthHeader {
    pub(crate) fn header_value(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(self.value.expose()).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

impl Registry {
    /// Remembers the scheme a 401 asked for, so the next requests authenticate up front.
    pub(crate) fn observe_challenge(&self, resp: &Response) {
        if resp.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        let values: Vec<&str> = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let challenges = parse_challenges(values);
        if let Some(c) = preferred(&challenges) {
            *self.state.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        }
    }

    /// The `Authorization` for a request needing `scopes`, from the known challenge and credentials:
    /// a configured bearer token as is; Basic when the registry asked for Basic; a (cached) token from
    /// the realm when it asked for Bearer; nothing before any challenge.
    pub(crate) async fn authorization(
        &self,
        base: &Base,
        scopes: &BTreeSet<String>,
        credential: &Credential,
    ) -> Result<Option<AuthHeader>, RegistryError> {
        if let Credential::Bearer(t) = credential {
            return Ok(Some(AuthHeader {
                value: Secret::new(format!("Bearer {}", t.expose())),
                token: None,
            }));
        }
        let challenge = self.state.challenge.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(challenge) = challenge else { return Ok(None) };
        match challenge.scheme.as_str() {
            "basic" => Ok(match credential {
                Credential::Basic { username, password } => Some(AuthHeader {
                    value: Secret::new(basic_value(username, password)),
                    token: None,
                }),
                _ => None,
            }),
            "bearer" => {
                let token = self.token(base, &challenge, scopes, credential).await?;
                Ok(Some(AuthHeader {
                    value: Secret::new(format!("Bearer {}", token.expose())),
                    token: Some(token),
                }))
            }
            _ => Ok(None),
        }
    }

    /// A token for `scopes` from the cache, or from the challenge's realm (one fetch at a time per key).
    async fn token(
        &self,
        base: &Base,
        challenge: &Challenge,
        scopes: &BTreeSet<String>,
        credential: &Credential,
    ) -> Result<Secret, RegistryError> {
        let tokens = &self.parent.inner.tokens;
        let host = self.token_key();
        let scopes: BTreeSet<String> = if scopes.is_empty() {
            challenge.params_named("scope").map(str::to_string).collect()
        } else {
            scopes.clone()
        };
        if let Some(t) = tokens.get(host, &scopes, Instant::now()) {
            return Ok(t);
        }
        let lock = tokens.fetch_lock(host, &scopes);
        let _guard = lock.lock().await;
        if let Some(t) = tokens.get(host, &scopes, Instant::now()) {
            return Ok(t);
        }
        let auth_err = |detail: String| RegistryError::Auth {
            registry: self.host.clone(),
            detail,
        };
        let realm = challenge.param("realm").unwrap_or_default();
        let mut url = Url::parse(realm).map_err(|e| auth_err(format!("invalid token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                q.append_pair("service", service);
            }
            for s in &scopes {
                q.append_pair("scope", s);
            }
        }
        let mut rb = base.client.get(url.clone());
        if let Credential::Basic { username, password } = credential {
            let mut v = HeaderValue::from_str(&basic_value(username, password))
                .map_err(|_| auth_err("the username or password contains characters not allowed in a header".into()))?;
            v.set_sensitive(true);
            rb = rb.header(header::AUTHORIZATION, v);
        }
        let request = rb
            .build()
            .map_err(|e| auth_err(format!("token request to {realm}: {}", chain(&e))))?;
        let context = || format!("GET {}", proto::display_url(&url));
        self.count("GET");
        let fut = base.client.execute(request);
        let resp = match self.options().request_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| timed_out(context(), t))?,
            None => fut.await,
        }
        .map_err(|e| transport(context(), e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = match credential {
                Credential::Anonymous => "anonymous access",
                _ => "the credentials",
            };
            return Err(auth_err(format!(
                "token service {realm} refused {who} (HTTP {})",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            let err = status_error("GET", &url, resp).await;
            return Err(if err.is_retryable() {
                err
            } else {
                auth_err(format!("token service failed: {err}"))
            });
        }
        let body = resp.bytes().await.map_err(|e| transport(context(), e))?;
        let parsed = parse_token_response(&body).map_err(|e| auth_err(format!("token service {realm}: {e}")))?;
        let valid_until = Instant::now() + usable_lifetime(parsed.expires_in);
        tokens.put(host, scopes, parsed.token.clone(), valid_until);
        Ok(parsed.token)
    }
}

fn basic_value(username: &str, password: &Secret) -> String {
    let raw = format!("{username}:{}", password.expose());
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn challenge_parsing_table() {
        let cases: Vec<(Vec<&str>, Vec<Challenge>)> = vec![
            (
                vec![r#"Basic realm="test-realm""#],
                vec![ch("basic", &[("realm", "test-realm")])],
            ),
            (
                vec![
                    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
                ],
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:library/nginx:pull"),
                    ],
                )],
            ),
            // A quoted value containing commas (push scope), unusual case and spacing.
            (
                vec![r#"BEARER  Realm = "http://127.0.0.1:9/token" , service="reg",scope="repository:a/b:pull,push""#],
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "http://127.0.0.1:9/token"),
                        ("service", "reg"),
                        ("scope", "repository:a/b:pull,push"),
                    ],
                )],
            ),
            // Several challenges in one header value.
            (
                vec![r#"Basic realm="a, b", Bearer realm="https://t/x",service=svc"#],
                vec![
                    ch("basic", &[("realm", "a, b")]),
                    ch("bearer", &[("realm", "https://t/x"), ("service", "svc")]),
                ],
            ),
            // Several header values; escaped quote; a challenge without parameters.
            (
                vec![r#"Negotiate"#, r#"Bearer realm="x\"y",error="invalid_token""#],
                vec![
                    ch("negotiate", &[]),
                    ch("bearer", &[("realm", "x\"y"), ("error", "invalid_token")]),
                ],
            ),
            // Repeated scope parameter.
            (
                vec![r#"Bearer realm="r",scope="repository:a:pull",scope="repository:b:pull""#],
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "r"),
                        ("scope", "repository:a:pull"),
                        ("scope", "repository:b:pull"),
                    ],
                )],
            ),
            (vec![""], vec![]),
            (vec![" , "], vec![]),
            // Unterminated quote: keeps what there is.
            (vec![r#"Basic realm="open"#], vec![ch("basic", &[("realm", "open")])]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_challenges(input.iter().copied()), want, "{input:?}");
        }
    }

    #[test]
    fn preferred_challenge() {
        let basic = ch("basic", &[("realm", "r")]);
        let bearer = ch("bearer", &[("realm", "https://t")]);
        let bearer_no_realm = ch("bearer", &[("service", "s")]);
        assert_eq!(preferred(&[basic.clone(), bearer.clone()]), Some(&bearer));
        assert_eq!(preferred(&[bearer_no_realm.clone(), basic.clone()]), Some(&basic));
        assert_eq!(preferred(&[ch("negotiate", &[])]), None);
        assert_eq!(preferred(&[]), None);
    }

    #[test]
    fn scope_strings_table() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let cases = [
            (Access::Pull("library/nginx"), set(&["repository:library/nginx:pull"])),
            (Access::Push("team/app"), set(&["repository:team/app:pull,push"])),
            (
                Access::Mount {
                    repo: "mirror/app",
                    from: "team/app",
                },
                set(&["repository:mirror/app:pull,push", "repository:team/app:pull"]),
            ),
            (
                Access::Mount {
                    repo: "same",
                    from: "same",
                },
                set(&["repository:same:pull,push"]),
            ),
        ];
        for (access, want) in cases {
            assert_eq!(scopes(access), want, "{access:?}");
        }
    }

    #[test]
    fn scope_coverage() {
        let push = scopes(Access::Push("a"));
        let pull = scopes(Access::Pull("a"));
        let mount = scopes(Access::Mount { repo: "a", from: "b" });
        assert!(covers(&push, &pull));
        assert!(covers(&push, &push));
        assert!(!covers(&pull, &push));
        assert!(covers(&mount, &push));
        assert!(covers(&mount, &scopes(Access::Pull("b"))));
        assert!(!covers(&push, &mount));
        assert!(!covers(&push, &scopes(Access::Pull("ab"))));
        assert!(covers(&pull, &BTreeSet::new()));
    }

    #[test]
    fn token_response_table() {
        type Case<'a> = (&'a str, Result<(&'a str, u64), ()>);
        let cases: Vec<Case> = vec![
            (r#"{"token":"t1","expires_in":300}"#, Ok(("t1", 300))),
            (r#"{"access_token":"t2"}"#, Ok(("t2", 60))),
            (r#"{"token":"","access_token":"t3","expires_in":0}"#, Ok(("t3", 60))),
            (
                r#"{"token":"t4","access_token":"other","expires_in":"x"}"#,
                Ok(("t4", 60)),
            ),
            (
                r#"{"token":"t5","expires_in":12.7,"issued_at":"2020-01-01T00:00:00Z"}"#,
                Ok(("t5", 12)),
            ),
            (r#"{"expires_in":300}"#, Err(())),
            (r#"not json"#, Err(())),
        ];
        for (body, want) in cases {
            let got = parse_token_response(body.as_bytes());
            match (got, want) {
                (Ok(r), Ok((tok, secs))) => {
                    assert_eq!(r.token.expose(), tok, "{body}");
                    assert_eq!(r.expires_in, Duration::from_secs(secs), "{body}");
                }
                (Err(e), Err(())) => {
                    let e = e.to_string();
                    assert!(!e.contains("t1") && !e.contains("secret"), "{e}");
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        // The error never quotes the body.
        let err = parse_token_response(br#"{"tokne":"supersecret"}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("supersecret"), "{err}");
    }

    #[test]
    fn usable_lifetime_table() {
        let cases = [(60, 45_000), (300, 270_000), (3600, 3_570_000), (4, 3_000), (1, 750)];
        for (expires, usable_ms) in cases {
            assert_eq!(
                usable_lifetime(Duration::from_secs(expires)),
                Duration::from_millis(usable_ms),
                "{expires}"
            );
        }
    }

    #[test]
    fn token_cache_lookup_and_expiry() {
        let cache = TokenCache::default();
        let now = Instant::now();
        let push = scopes(Access::Push("a"));
        cache.put("r", push.clone(), Secret::new("tok"), now + Duration::from_secs(10));
        assert_eq!(
            cache
                .get("r", &scopes(Access::Pull("a")), now)
                .map(|s| s.expose().to_string()),
            Some("tok".into())
        );
        assert_eq!(
            cache.get("r", &push, now).map(|s| s.expose().to_string()),
            Some("tok".into())
        );
        assert_eq!(cache.get("other", &push, now), None);
        assert_eq!(cache.get("r", &scopes(Access::Pull("b")), now), None);
        assert_eq!(cache.get("r", &push, now + Duration::from_secs(11)), None);
        cache.put("r", push.clone(), Secret::new("tok2"), now + Duration::from_secs(10));
        cache.invalidate("r", &Secret::new("tok2"));
        assert_eq!(cache.get("r", &push, now), None);
        let l1 = cache.fetch_lock("r", &push);
        let l2 = cache.fetch_lock("r", &push);
        assert!(Arc::ptr_eq(&l1, &l2));
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            basic_value("Aladdin", &Secret::new("open sesame")),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
