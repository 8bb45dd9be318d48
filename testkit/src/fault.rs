//! A fault-injecting reverse proxy in front of a plain-HTTP registry ([`FaultProxy`]).
//!
//! Every request is forwarded to the upstream with its method, path and query, headers and
//! body, streaming both ways (nothing is buffered, so multi-hundred-MiB blobs are fine). The
//! client's `Host` header is kept, so distribution builds upload `Location` URLs that point back
//! at the proxy; absolute `Location`s naming the upstream are rewritten as a fallback.
//!
//! It also serves as a forward proxy (a client's `HTTP_PROXY`, [`FaultProxy::start_forward`]):
//! absolute-form requests (`GET http://HOST:PORT/v2/…`) go to the host they name, so a test can see
//! every registry request one process makes.
//!
//! Faults are set at run time with [`FaultProxy::set`]: each applies to the next
//! [`Fault::count`] requests its [`Match`] selects, then the proxy is transparent again.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testkit::{Fault, FaultProxy, Match, Registry, RegistryMode};
//! let reg = Registry::start(RegistryMode::Plain)?;
//! let proxy = FaultProxy::start(&reg.url())?;
//! proxy.set(Fault::status(503).on(Match::new(Some("GET"), Some("/blobs/"))).times(2));
//! let client = proxy.client(&reg)?; // testkit's push client, addressing the proxy
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::push::Client;
use crate::registry::Registry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long a cut response waits after its last byte before the connection is closed, so that
/// hyper flushes what was already written.
const FLUSH_GRACE: Duration = Duration::from_millis(100);

/// Connect timeout towards the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which requests a [`Fault`] applies to: all conditions given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// HTTP method, compared case-insensitively (`None`: any).
    pub method: Option<&'static str>,
    /// Substring of the request target, path plus query (`None`: any), e.g. `/blobs/`.
    pub path_contains: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests with `method` (if given) whose path plus query contains `path_contains` (if given).
    pub fn new(method: Option<&'static str>, path_contains: Option<&str>) -> Match {
        Match {
            method,
            path_contains: path_contains.map(str::to_owned),
        }
    }

    /// Whether a request with `method` and request target `path` (path plus query) matches.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.as_deref().is_none_or(|p| path.contains(p))
    }
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer `status` without contacting the upstream (the request body is read and
    /// discarded first, so the client reliably sees the answer), with a registry-style JSON
    /// error body and, if given, a `Retry-After` header.
    Status {
        /// e.g. 500, 503, 429.
        status: u16,
        /// `Retry-After` value, e.g. `"1"`.
        retry_after: Option<String>,
    },
    /// Forward, send the response head (with the upstream's `Content-Length`) and the first
    /// `bytes` of the body, then close the connection. A body no longer than `bytes` is sent
    /// whole.
    DropResponseAfter {
        /// Body bytes sent before the cut.
        bytes: u64,
    },
    /// Read `bytes` of the request body (or all of it, if shorter), then close the connection
    /// without answering. The upstream is not contacted, so it never sees any of the request.
    DropRequestAfter {
        /// Body bytes read before the cut.
        bytes: u64,
    },
    /// Wait `duration` (or until [`FaultProxy::release_stalls`]), then forward normally. A client
    /// that disconnects meanwhile (e.g. its timeout fired) is noticed by hyper: the request is then
    /// not forwarded at all and its [`ProxyRequest::status`] stays `None`.
    Stall {
        /// How long to wait.
        duration: Duration,
    },
    /// Forward, send the response head and the first `bytes` of the body, then send nothing more
    /// for `duration` before going on: a registry that answers, then stalls mid-body.
    StallBodyAfter {
        /// Body bytes sent before the stall.
        bytes: u64,
        /// How long nothing is sent.
        duration: Duration,
    },
    /// Forward, flipping every bit of the body byte at `offset` (nothing changes if the body
    /// is shorter). Headers, `Docker-Content-Digest` included, are untouched.
    CorruptBody {
        /// Zero-based offset in the response body.
        offset: u64,
    },
}

/// A fault armed on a [`FaultProxy`]: `kind`, applied to the next `count` requests selected by
/// `filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What to do.
    pub kind: FaultKind,
    /// Which requests.
    pub filter: Match,
    /// How many more matching requests get it.
    pub count: usize,
}

impl Fault {
    /// `kind` for the next request of any kind; narrow it with [`Fault::on`] and
    /// [`Fault::times`].
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            filter: Match::any(),
            count: 1,
        }
    }

    /// [`FaultKind::Status`] without `Retry-After`.
    pub fn status(status: u16) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            retry_after: None,
        })
    }

    /// [`FaultKind::Status`] with `Retry-After: retry_after`.
    pub fn status_retry_after(status: u16, retry_after: &str) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            retry_after: Some(retry_after.to_owned()),
        })
    }

    /// [`FaultKind::DropResponseAfter`].
    pub fn drop_response_after(bytes: u64) -> Fault {
        Fault::new(FaultKind::DropResponseAfter { bytes })
    }

    /// [`FaultKind::DropRequestAfter`].
    pub fn drop_request_after(bytes: u64) -> Fault {
        Fault::new(FaultKind::DropRequestAfter { bytes })
    }

    /// [`FaultKind::Stall`].
    pub fn stall(duration: Duration) -> Fault {
        Fault::new(FaultKind::Stall { duration })
    }

    /// A [`FaultKind::Stall`] held until the test calls [`FaultProxy::release_stalls`] (at most
    /// [`HOLD_LIMIT`], so a test that forgets still ends): keeps a copy running for exactly as long
    /// as a test needs, however slow the machine.
    pub fn hold() -> Fault {
        Fault::stall(HOLD_LIMIT)
    }

    /// [`FaultKind::StallBodyAfter`].
    pub fn stall_body_after(bytes: u64, duration: Duration) -> Fault {
        Fault::new(FaultKind::StallBodyAfter { bytes, duration })
    }

    /// [`FaultKind::CorruptBody`].
    pub fn corrupt_body(offset: u64) -> Fault {
        Fault::new(FaultKind::CorruptBody { offset })
    }

    /// Only for requests selected by `filter`.
    pub fn on(self, filter: Match) -> Fault {
        Fault { filter, ..self }
    }

    /// For the next `count` matching requests.
    pub fn times(self, count: usize) -> Fault {
        Fault { count, ..self }
    }
}

/// The longest a [`Fault::hold`] stalls when it is never released.
pub const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// HTTP method.
    pub method: String,
    /// Request target: path plus query.
    pub path: String,
    /// Status sent to the client (the upstream's, an injected one, or 502 when the upstream
    /// could not be reached); `None` while pending, and when no answer was sent.
    pub status: Option<u16>,
    /// Whether a fault was applied to it.
    pub faulted: bool,
}

struct Shared {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    upstream: String,
    /// The proxy's own URL.
    url: String,
    client: reqwest::Client,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<ProxyRequest>>,
    applied: AtomicUsize,
    /// Bumped by [`FaultProxy::release_stalls`]; stalls in progress end when it changes.
    releases: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Records the request and takes the first armed fault matching it (one use of it), with a
    /// receiver that sees the next [`FaultProxy::release_stalls`] (taken under the same lock, so a
    /// release either disarmed the fault or will end the stall).
    fn arrive(&self, method: &str, path: &str) -> (usize, Option<FaultKind>, tokio::sync::watch::Receiver<u64>) {
        let (fault, released) = {
            let mut faults = lock(&self.faults);
            let released = self.releases.subscribe();
            let fault = faults
                .iter()
                .position(|f| f.count > 0 && f.filter.matches(method, path))
                .map(|i| {
                    faults[i].count -= 1;
                    let kind = faults[i].kind.clone();
                    if faults[i].count == 0 {
                        faults.remove(i);
                    }
                    kind
                });
            (fault, released)
        };
        if fault.is_some() {
            self.applied.fetch_add(1, Ordering::SeqCst);
        }
        let mut log = lock(&self.log);
        log.push(ProxyRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            status: None,
            faulted: fault.is_some(),
        });
        (log.len() - 1, fault, released)
    }

    fn answered(&self, index: usize, status: StatusCode) {
        if let Some(r) = lock(&self.log).get_mut(index) {
            r.status = Some(status.as_u16());
        }
    }
}

/// A reverse proxy on `127.0.0.1:<free port>` in front of a plain-HTTP registry, injecting
/// [`Fault`]s. It runs on its own thread and tokio runtime, so it outlives any test runtime;
/// dropping it stops the listener and every connection and joins the thread.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream_url` (`http://HOST:PORT`, e.g. [`Registry::url`]
    /// of a `Plain` or `Basic` registry; HTTPS upstreams are not supported).
    pub fn start(upstream_url: &str) -> anyhow::Result<FaultProxy> {
        let upstream = upstream_url.trim_end_matches('/').to_owned();
        let authority = upstream
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("FaultProxy needs a plain http:// upstream, got {upstream_url:?}"))?;
        anyhow::ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "upstream must be http://HOST:PORT, got {upstream_url:?}"
        );
        // reqwest is built with `rustls-no-provider`: it needs a process-wide provider even
        // though the proxy only speaks plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the proxy's upstream client")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding fault proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            url: format!("http://{addr}"),
            client,
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            applied: AtomicUsize::new(0),
            releases: tokio::sync::watch::Sender::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building fault proxy runtime")?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            // Short enough for the 15-byte kernel thread name.
            .name(format!("faultpx-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, state, stop_rx));
                // Dropping the runtime aborts every connection still open.
                drop(runtime);
            })
            .context("spawning fault proxy thread")?;
        Ok(FaultProxy {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A proxy without an upstream of its own, for a client's `HTTP_PROXY`: every request the client
    /// sends to a plain-HTTP host comes in absolute form and is forwarded to that host (recorded in
    /// [`FaultProxy::requests`], faults applied as usual).
    pub fn start_forward() -> anyhow::Result<FaultProxy> {
        // Port 0 cannot be connected to: an origin-form request gets a 502.
        FaultProxy::start("http://127.0.0.1:0")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// `127.0.0.1:PORT`, the registry part of image references through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The upstream URL, without a trailing slash.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// testkit's registry [`Client`] for `reg` (its credentials and token server), sending its
    /// requests through this proxy.
    pub fn client(&self, reg: &Registry) -> anyhow::Result<Client> {
        Ok(Client::new(reg)?.with_base_url(&self.url()))
    }

    /// Arms `fault` (in addition to those already armed; a `count` of 0 arms nothing). A
    /// request gets at most one fault: the first armed one whose filter matches.
    pub fn set(&self, fault: Fault) {
        if fault.count > 0 {
            lock(&self.shared.faults).push(fault);
        }
    }

    /// Disarms every fault; requests already being faulted go on as they are.
    pub fn clear(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Ends every [`FaultKind::Stall`] in progress now (those requests are forwarded at once) and
    /// disarms the stall faults still armed, so a request that has not arrived yet is not held
    /// either. Stall faults armed later apply as usual.
    pub fn release_stalls(&self) {
        let mut faults = lock(&self.shared.faults);
        faults.retain(|f| !matches!(f.kind, FaultKind::Stall { .. }));
        self.shared.releases.send_modify(|n| *n += 1);
    }

    /// Faults still armed, with their remaining counts.
    pub fn pending_faults(&self) -> Vec<Fault> {
        lock(&self.shared.faults).clone()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        lock(&self.shared.log).clone()
    }

    /// How many requests a fault was applied to.
    pub fn faults_applied(&self) -> usize {
        self.shared.applied.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.shared.url)
            .field("upstream", &self.shared.upstream)
            .field("faults", &self.pending_faults())
            .finish()
    }
}

/// Accept loop; returns when `stop` fires (or its sender is dropped).
async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fault proxy listener: {e}");
            return;
        }
    };
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    eprintln!("fault proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            // Errors here are mostly deliberate cuts, or clients going away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Error returned to hyper to close a connection without (finishing) an answer.
#[derive(Debug)]
struct Cut(&'static str);

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault proxy: {}", self.0)
    }
}

impl std::error::Error for Cut {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let (index, fault, mut released) = shared.arrive(&method, &path);
    let response = match fault {
        None => forward(&shared, req, &path, Tamper::None).await,
        Some(FaultKind::Status { status, retry_after }) => {
            drain(req.into_body(), u64::MAX).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error_response(status, retry_after.as_deref(), "injected by testkit FaultProxy")
        }
        Some(FaultKind::DropRequestAfter { bytes }) => {
            drain(req.into_body(), bytes).await;
            // An error from the service makes hyper close the connection without answering.
            return Err(Box::new(Cut("request dropped")));
        }
        Some(FaultKind::Stall { duration }) => {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                _ = released.changed() => {}
            }
            forward(&shared, req, &path, Tamper::None).await
        }
        Some(FaultKind::DropResponseAfter { bytes }) => forward(&shared, req, &path, Tamper::CutAfter(bytes)).await,
        Some(FaultKind::StallBodyAfter { bytes, duration }) => {
            forward(&shared, req, &path, Tamper::StallAfter(bytes, duration)).await
        }
        Some(FaultKind::CorruptBody { offset }) => forward(&shared, req, &path, Tamper::Flip(offset)).await,
    };
    shared.answered(index, response.status());
    Ok(response)
}

/// Reads and discards up to `limit` bytes of `body` (stops early at its end or on an error).
async fn drain(mut body: Incoming, limit: u64) {
    let mut read = 0u64;
    while read < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

/// What to do to a forwarded response body.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    None,
    CutAfter(u64),
    StallAfter(u64, Duration),
    Flip(u64),
}

/// Hop-by-hop headers, never forwarded (hyper frames each side's body itself).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

async fn forward(shared: &Shared, req: Request<Incoming>, path: &str, tamper: Tamper) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // `Host` stays as the client sent it: distribution derives upload `Location`s from it.
    // Absolute-form (forward proxy): the host the request names; origin-form: the upstream.
    let base = parts
        .uri
        .authority()
        .map_or_else(|| shared.upstream.clone(), |a| format!("http://{a}"));
    let mut upstream_req = shared
        .client
        .request(parts.method, format!("{base}{path}"))
        .headers(headers);
    if !body.is_end_stream() {
        upstream_req = upstream_req.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let upstream = match upstream_req.send().await {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                None,
                &format!("fault proxy: upstream {base} failed: {e}"),
            );
        }
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && let Some(rest) = loc.strip_prefix(&shared.upstream)
        && let Ok(v) = HeaderValue::from_str(&format!("{}{rest}", shared.url))
    {
        headers.insert(header::LOCATION, v);
    }
    let stream = upstream.bytes_stream().map(|r| r.map_err(BoxError::from));
    let body: ProxyBody = match tamper {
        Tamper::None => stream_body(stream),
        Tamper::CutAfter(limit) => stream_body(cut_after(stream, limit)),
        Tamper::StallAfter(limit, duration) => stream_body(stall_after(stream, limit, duration)),
        Tamper::Flip(offset) => stream_body(flip_at(stream, offset)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    // Keeps `Content-Length`: with a streamed body hyper frames the response by it, so a client
    // can tell a cut body from a complete one.
    *response.headers_mut() = headers;
    response
}

fn stream_body(s: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static) -> ProxyBody {
    UnsyncBoxBody::new(StreamBody::new(s.map(|r| r.map(Frame::data))))
}

/// The first `limit` bytes of `inner`, then (unless `inner` ends there) an error.
fn cut_after(
    inner: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    limit: u64,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    let inner = Box::pin(inner);
    futures::stream::unfold(Some((inner, 0u64)), move |state| async move {
        let (mut inner, sent) = state?;
        match inner.next().await {
            None => None,
            Some(Err(e)) => Some((Err(e), None)),
            Some(Ok(chunk)) if sent < limit => {
                let keep = (limit - sent).min(chunk.len() as u64) as usize;
                Some((Ok(chunk.slice(..keep)), Some((inner, sent + keep as u64))))
            }
            Some(Ok(_)) => {
                // More body is there: let hyper flush what it has, then cut.
                tokio::time::sleep(FLUSH_GRACE).await;
                Some((Err(Box::new(Cut("response cut")) as BoxError), None))
            }
        }
    })
}

/// The first `limit` bytes of `inner`, a pause of `duration`, then the rest.
fn stall_after(
    inner: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    limit: u64,
    duration: Duration,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    /// Bytes sent so far and the part of a chunk held back over the pause (`None` once paused).
    struct Before {
        sent: u64,
        held: Bytes,
    }
    let inner = Box::pin(inner);
    let start = Some(Before {
        sent: 0,
        held: Bytes::new(),
    });
    futures::stream::unfold((inner, start), move |(mut inner, before)| async move {
        let Some(Before { sent, held }) = before else {
            let next = inner.next().await?;
            return Some((next, (inner, None)));
        };
        if sent >= limit {
            tokio::time::sleep(duration).await;
            return Some((Ok(held), (inner, None)));
        }
        match inner.next().await {
            None => None,
            Some(Err(e)) => Some((Err(e), (inner, None))),
            Some(Ok(chunk)) => {
                let keep = (limit - sent).min(chunk.len() as u64) as usize;
                let before = Before {
                    sent: sent + keep as u64,
                    held: chunk.slice(keep..),
                };
                Some((Ok(chunk.slice(..keep)), (inner, Some(before))))
            }
        }
    })
}

/// `inner` with the byte at `offset` inverted.
fn flip_at(
    inner: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    offset: u64,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    let mut pos = 0u64;
    inner.map(move |r| {
        let chunk = r?;
        let start = pos;
        pos += chunk.len() as u64;
        if (start..pos).contains(&offset) {
            let mut b = BytesMut::from(chunk.as_ref());
            b[(offset - start) as usize] ^= 0xff;
            return Ok(b.freeze());
        }
        Ok(chunk)
    })
}

/// A registry-style error (`{"errors":[{"code","message","detail"}]}`).
fn error_response(status: StatusCode, retry_after: Option<&str>, detail: &str) -> Response<ProxyBody> {
    let code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let message = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": detail }] });
    let body = Bytes::from(body.to_string());
    let mut response = Response::new(UnsyncBoxBody::new(Full::new(body).map_err(|e: Infallible| match e {})));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(header::RETRY_AFTER, v);
    }
    response
}
