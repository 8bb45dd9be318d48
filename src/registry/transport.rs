//! Sending requests: the scheme decision per host (over the clients of [`super::tls`]), authentication
//! (the challenge and token flow of [`super::auth`] applied to each request), the per-host request
//! cap, timeouts, retries and Docker Hub's pull quota.
//!
//! Every request goes through [`Registry::send`]: it retries connection errors, 408, 429 and 5xx
//! (`ClientOptions::retry_attempts` attempts in all, jittered exponential backoff, `Retry-After`
//! honoured), answers a 401 by authenticating once and resending, and holds one of the host's
//! `max_concurrent_requests` permits only until the response headers arrive, never while a body
//! streams: a transfer holds a source and a target response at once, possibly on the same host, and
//! permits held across bodies could deadlock.
//!
//! Proxies: reqwest reads `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (and lower-case
//! forms) from the environment when a client is built (`ClientBuilder::build` adds
//! `ProxyMatcher::system()` unless `no_proxy()` was called); copycat does not call `no_proxy()`.
//!
//! Redirects: reqwest follows up to 10 and drops `Authorization` when one leaves the original
//! host or port (`redirect::remove_sensitive_headers`), so blob GETs redirected to a storage host
//! carry no credentials there. Requests to URLs on other hosts (an upload `Location` elsewhere) are
//! sent without `Authorization` in the first place.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::{OnceCell, Semaphore};

use super::auth::{self, Access, AuthHeader, Challenge};
use super::error::{Cause, chain, retry_after_of, status_error, timed_out, transport};
use super::proto;
use super::retry::{self, Retries};
use super::tls::{Base, TlsMode, tls_mode};
use super::{ClientOptions, Credential, Registry, RegistryError, Stats};

/// How long a manifest GET pause lasts when Docker Hub reports 0 remaining without a window.
const DEFAULT_RATE_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct RateState {
    remaining: Option<u64>,
    paused_until: Option<Instant>,
}

/// What copycat knows about one registry host; shared by every `Registry` for it.
pub(crate) struct HostState {
    /// Canonical host (`docker.io`, `localhost:5000`): the credential and settings key.
    pub canonical: String,
    /// Where the API is reached (`registry-1.docker.io`).
    pub endpoint: String,
    mode: TlsMode,
    base: OnceCell<Base>,
    semaphore: Semaphore,
    pub(crate) challenge: Mutex<Option<Challenge>>,
    rate: Mutex<RateState>,
    /// Set once the registry refused a monolithic upload: go straight to chunked after that.
    pub monolithic_refused: AtomicBool,
}

impl HostState {
    pub(crate) fn new(options: &ClientOptions, given: &str) -> HostState {
        let canonical = crate::reference::canonical_host(given);
        let endpoint = proto::endpoint_host(&canonical).to_string();
        HostState {
            mode: tls_mode(options, given, &canonical),
            canonical,
            endpoint,
            base: OnceCell::new(),
            semaphore: Semaphore::new(options.max_concurrent_requests.max(1)),
            challenge: Mutex::new(None),
            rate: Mutex::new(RateState::default()),
            monolithic_refused: AtomicBool::new(false),
        }
    }

    pub(crate) fn ratelimit_remaining(&self) -> Option<u64> {
        lock(&self.rate).remaining
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body.
pub(crate) enum Payload {
    /// No body.
    Empty,
    /// Bytes that can be resent.
    Bytes(Bytes),
    /// A stream sent once ([`streamed_body`]); the request is never resent by the transport. The
    /// idle timeout watches its progress.
    Stream(Option<reqwest::Body>, Arc<BodyWatch>),
}

/// A streamed request body as the transport sees it while sending: the bytes the connection took,
/// whether the body waits for its source (then a stall is the source's, not the receiving
/// registry's), and the source's failure, kept as it is (a `DigestMismatch` must not become a
/// retryable transport error of the upload).
#[derive(Default)]
pub(crate) struct BodyWatch {
    progress: AtomicU64,
    awaiting_source: AtomicBool,
    source_failure: Mutex<Option<RegistryError>>,
}

impl BodyWatch {
    /// The source's failure, if the body ended because of one.
    pub(crate) fn take_source_failure(&self) -> Option<RegistryError> {
        lock(&self.source_failure).take()
    }

    /// Records the source's failure unless one is recorded already.
    fn fail_source(&self, error: RegistryError) {
        lock(&self.source_failure).get_or_insert(error);
    }
}

/// A request body streaming `source`, watched by `watch`; the bytes sent are added to `stats`.
pub(crate) fn streamed_body(source: super::ByteStream, watch: Arc<BodyWatch>, stats: Arc<Stats>) -> reqwest::Body {
    reqwest::Body::wrap_stream(WatchedBody { source, watch, stats })
}

struct WatchedBody {
    source: super::ByteStream,
    watch: Arc<BodyWatch>,
    stats: Arc<Stats>,
}

impl futures::Stream for WatchedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let polled = self.source.poll_next_unpin(cx);
        self.watch.awaiting_source.store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(bytes))) => {
                let n = bytes.len() as u64;
                self.stats.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
                // +1: an empty chunk is progress too.
                self.watch.progress.fetch_add(n + 1, Ordering::Relaxed);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                self.watch.fail_source(e);
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One registry request.
pub(crate) struct Req<'a> {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Payload,
    pub access: Access<'a>,
    /// A manifest GET: subject to Docker Hub's pull quota.
    pub manifest_get: bool,
    /// Whether the transport may resend it on retryable errors.
    pub retry: bool,
}

impl<'a> Req<'a> {
    pub(crate) fn new(method: Method, url: Url, access: Access<'a>) -> Req<'a> {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: Payload::Empty,
            access,
            manifest_get: false,
            retry: true,
        }
    }

    pub(crate) fn header(mut self, name: header::HeaderName, value: &str) -> Req<'a> {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub(crate) fn accept_manifests(self) -> Req<'a> {
        let accept = super::MANIFEST_MEDIA_TYPES.join(", ");
        self.header(header::ACCEPT, &accept)
    }

    pub(crate) fn body(mut self, body: Payload) -> Req<'a> {
        self.body = body;
        self
    }

    fn replayable(&self) -> bool {
        self.retry && !matches!(self.body, Payload::Stream(..))
    }

    fn method_name(&self) -> &'static str {
        method_name(&self.method)
    }
}

pub(crate) fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl Registry {
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.parent.inner.options
    }

    pub(crate) fn stats_ref(&self) -> &Stats {
        &self.parent.inner.stats
    }

    pub(crate) fn count(&self, method: &'static str) {
        *lock(&self.stats_ref().requests).entry(method).or_insert(0) += 1;
    }

    async fn credential(&self) -> Result<Credential, RegistryError> {
        match &self.credential {
            Some((c, _)) => Ok(c.clone()),
            None => {
                self.parent
                    .inner
                    .credentials
                    .credential_for(&self.state.canonical)
                    .await
            }
        }
    }

    /// Key of this client's tokens in the token cache: the endpoint, or the endpoint plus the
    /// fingerprint of an overriding credential.
    pub(crate) fn token_key(&self) -> &str {
        match &self.credential {
            Some((_, key)) => key,
            None => &self.state.endpoint,
        }
    }

    /// The decided scheme and client, pinging `/v2/` the first time.
    pub(crate) async fn base(&self) -> Result<&Base, RegistryError> {
        self.state.base.get_or_try_init(|| self.ping()).await
    }

    /// `base` + `path` (`/v2/...`).
    pub(crate) async fn api_url(&self, path: &str) -> Result<Url, RegistryError> {
        let base = self.base().await?;
        base.url
            .join(path.trim_start_matches('/'))
            .map_err(|e| RegistryError::Invalid(format!("invalid request path {path:?} for {}: {e}", self.host)))
    }

    /// Decides the scheme: `GET /v2/` over HTTPS (verified, or with the host's CA, or unverified for
    /// insecure hosts), then plain HTTP for insecure hosts when HTTPS fails at the connection level.
    /// Any HTTP answer settles it (200, 401 and even errors: the scheme works). Retried like any request.
    async fn ping(&self) -> Result<Base, RegistryError> {
        let mode = &self.state.mode;
        let client = self.parent.inner.clients.get(mode)?;
        let mut candidates = vec![format!("https://{}/", self.state.endpoint)];
        if *mode == TlsMode::Insecure {
            candidates.push(format!("http://{}/", self.state.endpoint));
        }
        let mut retries = self.retries(true);
        loop {
            let mut last_err = None;
            for (i, base) in candidates.iter().enumerate() {
                let base = Url::parse(base)
                    .map_err(|e| RegistryError::Invalid(format!("invalid registry host {:?}: {e}", self.host)))?;
                let url = base.join("v2/").expect("static path");
                let request = client
                    .get(url.clone())
                    .build()
                    .map_err(|e| RegistryError::Invalid(format!("GET {url}: {}", chain(&e))))?;
                match self.execute(&client, request, &url, None).await {
                    Ok(resp) => {
                        if i > 0 {
                            tracing::info!(registry = %self.host, "HTTPS failed, using plain HTTP (insecure registry)");
                        }
                        self.observe_challenge(&resp);
                        self.observe_ratelimit(&resp);
                        return Ok(Base {
                            url: base,
                            client: client.clone(),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(registry = %self.host, error = %e, "ping failed");
                        last_err = Some(e);
                    }
                }
            }
            let err = last_err.expect("at least one candidate");
            match retries.after_failure(err.is_retryable(), err.retry_after()) {
                Some(delay) => self.wait_to_retry(delay, &err).await,
                None => return Err(err),
            }
        }
    }

    /// The retry budget of one request: `retryAttempts` when it can be sent again, else one.
    pub(crate) fn retries(&self, replayable: bool) -> Retries {
        let attempts = if replayable { self.options().retry_attempts } else { 1 };
        Retries::new(attempts, self.options().retry_backoff)
    }

    /// Waits `delay` before trying again after `err`.
    pub(crate) async fn wait_to_retry(&self, delay: Duration, err: &(dyn std::fmt::Display + Sync)) {
        tracing::debug!(registry = %self.host, error = %err, ?delay, "retrying");
        tokio::time::sleep(delay).await;
    }

    /// Sends with a permit of the host's cap held until headers, under the request timeout.
    async fn execute(
        &self,
        client: &reqwest::Client,
        request: reqwest::Request,
        url: &Url,
        watch: Option<&BodyWatch>,
    ) -> Result<Response, RegistryError> {
        let method = method_name(request.method());
        let context = || format!("{method} {}", proto::display_url(url));
        self.count(method);
        let _permit = self.state.semaphore.acquire().await.expect("semaphore never closed");
        let fut = client.execute(request);
        match (self.options().request_timeout, watch) {
            (None, _) => fut.await.map_err(|e| transport(context(), e)),
            (Some(t), None) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map_err(|e| transport(context(), e)),
                Err(_) => Err(timed_out(context(), t)),
            },
            (Some(t), Some(watch)) => {
                // Streamed upload: the timeout is an idle timeout. The watch counts body bytes taken
                // by the connection; no change for a whole period `t` (and no response) is a stall.
                tokio::pin!(fut);
                let mut last = watch.progress.load(Ordering::Relaxed);
                let result = loop {
                    tokio::select! {
                        r = &mut fut => break r.map_err(|e| transport(context(), e)),
                        _ = tokio::time::sleep(t) => {
                            let now = watch.progress.load(Ordering::Relaxed);
                            if now == last {
                                break Err(RegistryError::Transport {
                                    context: context(),
                                    source: Box::new(Cause(format!("upload stalled: no progress for {t:?}"))),
                                });
                            }
                            last = now;
                        }
                    }
                };
                // Whatever ended the request (the idle check, or the client's own read timeout while
                // waiting for an answer), a body waiting for its source at that moment failed because
                // of the source, not of the registry receiving it.
                if result.is_err() && watch.awaiting_source.load(Ordering::Relaxed) {
                    watch.fail_source(RegistryError::Transport {
                        context: "reading the source".into(),
                        source: Box::new(Cause(format!("the source sent nothing for {t:?}"))),
                    });
                }
                result
            }
        }
    }

    /// Whether `url` is on the registry's own host and port (only those get `Authorization`).
    fn is_registry_url(&self, base: &Base, url: &Url) -> bool {
        url.host_str() == base.url.host_str() && url.port_or_known_default() == base.url.port_or_known_default()
    }

    /// Records Docker Hub's `ratelimit-remaining`; 0 pauses manifest GETs for the window.
    fn observe_ratelimit(&self, resp: &Response) -> Option<(u64, Option<Duration>)> {
        let parsed = resp
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(proto::parse_ratelimit)?;
        let (remaining, window) = parsed;
        let mut rate = lock(&self.state.rate);
        rate.remaining = Some(remaining);
        rate.paused_until = if remaining == 0 {
            Some(Instant::now() + window.unwrap_or(DEFAULT_RATE_PAUSE))
        } else {
            None
        };
        Some(parsed)
    }

    fn rate_paused(&self) -> Result<(), RegistryError> {
        let rate = lock(&self.state.rate);
        match rate.paused_until {
            Some(until) if until > Instant::now() => Err(RegistryError::RateLimited {
                registry: self.host.clone(),
                retry_after: until - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    fn pause_manifest_gets(&self, for_: Duration) -> RegistryError {
        let mut rate = lock(&self.state.rate);
        let until = Instant::now() + for_;
        rate.paused_until = Some(rate.paused_until.map_or(until, |u| u.max(until)));
        RegistryError::RateLimited {
            registry: self.host.clone(),
            retry_after: for_,
        }
    }

    /// Sends `req`, retrying as the module doc describes. Returns every response that is not a
    /// retryable failure; the caller judges its status.
    pub(crate) async fn send(&self, mut req: Req<'_>) -> Result<Response, RegistryError> {
        let mut retries = self.retries(req.replayable());
        loop {
            let err = match self.attempt(&mut req).await {
                Ok(resp) if retry::retryable_status(resp.status().as_u16()) => {
                    status_error(req.method_name(), &req.url, resp).await
                }
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            match retries.after_failure(err.is_retryable(), err.retry_after()) {
                Some(delay) => self.wait_to_retry(delay, &err).await,
                None => return Err(err),
            }
        }
    }

    /// The access to ask the token service for on a request needing `access` ([`Registry::for_writing`]).
    fn token_access<'a>(&self, access: Access<'a>) -> Access<'a> {
        match access {
            Access::Pull(repo) if self.writing.as_deref() == Some(repo) => Access::Push(repo),
            other => other,
        }
    }

    /// One attempt: authorization from what is known, and on a 401 one re-authentication and resend.
    /// A refusal of credentials that expire (401, or 403 after authenticating) renews them and resends.
    async fn attempt(&self, req: &mut Req<'_>) -> Result<Response, RegistryError> {
        if req.manifest_get {
            self.rate_paused()?;
        }
        let base = self.base().await?.clone();
        let scopes = auth::scopes(self.token_access(req.access));
        let ours = self.is_registry_url(&base, &req.url);
        let (credential, first) = if ours {
            let credential = self.credential().await?;
            let first = self.authorization(&base, &scopes, &credential).await?;
            (credential, first)
        } else {
            (Credential::Anonymous, None)
        };
        let resp = self.send_once(&base, req, first.as_ref()).await?;
        let resp = self.after_response(req, resp)?;
        let status = resp.status();
        let forbidden = status == StatusCode::FORBIDDEN && first.is_some();
        if !ours || !(status == StatusCode::UNAUTHORIZED || forbidden) {
            return Ok(resp);
        }
        if forbidden {
            // ECR answers an expired token with 403 DENIED; static credentials are just not allowed.
            if !self.renew(&credential).await || !req.replayable() {
                return Ok(resp);
            }
            drop(resp);
            return self.resend(&base, req, &scopes).await;
        }
        self.observe_challenge(&resp);
        if let Some(AuthHeader { token: Some(t), .. }) = &first {
            self.parent.inner.tokens.invalidate(self.token_key(), t);
        }
        if !req.replayable() {
            // A streamed body cannot be resent: the caller restarts the whole upload, which picks up
            // the fresh challenge, token or renewed credentials.
            if first.is_some() {
                self.renew(&credential).await;
            }
            return Ok(resp);
        }
        drop(resp);
        let Some(second) = self.authorization(&base, &scopes, &credential).await? else {
            return Err(RegistryError::Auth {
                registry: self.host.clone(),
                detail: format!(
                    "{} {} requires authentication and no credentials are configured for {}",
                    req.method_name(),
                    proto::display_url(&req.url),
                    self.state.canonical
                ),
            });
        };
        if first.as_ref() == Some(&second) {
            // Same static credentials (Basic, or a configured bearer token): refused, unless the
            // provider has fresher ones.
            if !self.renew(&credential).await {
                return Err(self.refused(req, &credential));
            }
            return self.resend(&base, req, &scopes).await;
        }
        self.send_authorized(&base, req, &second, &credential).await
    }

    /// Sends `req` once more with freshly fetched credentials.
    async fn resend(
        &self,
        base: &Base,
        req: &mut Req<'_>,
        scopes: &BTreeSet<String>,
    ) -> Result<Response, RegistryError> {
        let credential = self.credential().await?;
        match self.authorization(base, scopes, &credential).await? {
            Some(auth) => self.send_authorized(base, req, &auth, &credential).await,
            None => Err(self.refused(req, &credential)),
        }
    }

    /// The last send of an attempt: a 401 now means the credentials are refused.
    async fn send_authorized(
        &self,
        base: &Base,
        req: &mut Req<'_>,
        auth: &AuthHeader,
        credential: &Credential,
    ) -> Result<Response, RegistryError> {
        let resp = self.send_once(base, req, Some(auth)).await?;
        let resp = self.after_response(req, resp)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(t) = &auth.token {
                self.parent.inner.tokens.invalidate(self.token_key(), t);
            }
            self.observe_challenge(&resp);
            return Err(self.refused(req, credential));
        }
        Ok(resp)
    }

    /// Asks the credential provider for other credentials than `refused`.
    async fn renew(&self, refused: &Credential) -> bool {
        if self.credential.is_some() {
            return false;
        }
        let renewed = self
            .parent
            .inner
            .credentials
            .renew(&self.state.canonical, refused)
            .await;
        if renewed {
            tracing::debug!(registry = %self.host, "credentials refused; renewed them");
        }
        renewed
    }

    fn refused(&self, req: &Req<'_>, credential: &Credential) -> RegistryError {
        let who = match credential {
            Credential::Anonymous => "anonymous access",
            Credential::Basic { .. } => "the credentials",
            Credential::Bearer(_) => "the configured token",
        };
        RegistryError::Auth {
            registry: self.host.clone(),
            detail: format!(
                "{} {}: HTTP 401, {who} refused",
                req.method_name(),
                proto::display_url(&req.url)
            ),
        }
    }

    /// Rate-limit bookkeeping after any response; a quota 429 on a manifest GET becomes `RateLimited`.
    fn after_response(&self, req: &Req<'_>, resp: Response) -> Result<Response, RegistryError> {
        let quota = self.observe_ratelimit(&resp);
        if req.manifest_get && resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let is_quota = quota.is_some() || self.state.canonical == crate::reference::DOCKER_HUB;
            if is_quota {
                let wait = retry_after_of(&resp)
                    .or(quota.and_then(|(_, w)| w))
                    .unwrap_or(DEFAULT_RATE_PAUSE);
                return Err(self.pause_manifest_gets(wait));
            }
        }
        Ok(resp)
    }

    async fn send_once(
        &self,
        base: &Base,
        req: &mut Req<'_>,
        auth: Option<&AuthHeader>,
    ) -> Result<Response, RegistryError> {
        let mut rb = base
            .client
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(v) = auth.and_then(AuthHeader::header_value) {
            rb = rb.header(header::AUTHORIZATION, v);
        }
        let mut watch = None;
        rb = match &mut req.body {
            Payload::Empty if matches!(req.method, Method::PUT | Method::POST | Method::PATCH) => rb.body(Bytes::new()),
            Payload::Empty => rb,
            Payload::Bytes(b) => rb.body(b.clone()),
            Payload::Stream(body, w) => {
                watch = Some(w.clone());
                let body = body.take().ok_or_else(|| {
                    RegistryError::Invalid(format!("{} {}: stream body already sent", req.method, req.url))
                })?;
                rb.body(body)
            }
        };
        let request = rb.build().map_err(|e| {
            RegistryError::Invalid(format!(
                "{} {}: {}",
                req.method,
                proto::display_url(&req.url),
                chain(&e)
            ))
        })?;
        self.execute(&base.client, request, &req.url, watch.as_deref()).await
    }
}
