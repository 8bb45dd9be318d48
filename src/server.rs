//! The daemon's HTTP endpoints (see `docs/operations.md`).
//!
//! - On `METRICS_ADDR` (`:8080`): `GET /metrics`; `GET|POST /force-reconcile`, `GET|POST
//!   /reset-cooldown` (k8s-copycat's admin endpoints, same JSON); `GET /status`.
//! - On `HEALTH_ADDR` (`:8081`): `/healthz` (alive) and `/readyz` (the initial list of the cluster
//!   is complete).
//!
//! When `ADMIN_TOKEN` is set, the two admin endpoints require `Authorization: Bearer <token>` (the
//! scheme in any case, as HTTP allows); refused calls are logged, at most one line per
//! [`REFUSAL_LOG_INTERVAL`] with the number left out. Without it they are open, which the start
//! warns about. With leader election, a replica that is not the leader answers them 503 (only the leader
//! mirrors); `/status`, `/metrics` and the probes work on every replica.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::coverage::{BackupState, BackupStates, Drill, ImageBackup};
use crate::discovery::health::WatchHealth;
use crate::metrics::Metrics;
use crate::queue::{ExcludedImages, Queue, TaskStatus, UnmatchedImages};
use crate::registry::Registry;
use crate::secret::Secret;
use crate::task_state::TaskState;

/// How long `/force-reconcile` waits for the queue to go idle unless `?wait=` says otherwise.
pub const DEFAULT_FORCE_WAIT: Duration = Duration::from_secs(30);
/// The longest `?wait=` accepted.
const MAX_FORCE_WAIT: Duration = Duration::from_secs(60 * 60);
/// At most one log line per this interval about refused admin calls (a caller hammering the endpoint
/// with bad tokens must not flood the log); each line counts the refusals left out before it.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The answer about backup states when there are none.
const VERIFICATION_DISABLED: &str = "periodic verification is disabled (verifyInterval: 0, or dryPull)";

/// What one full rescan planned, as the daemon's plan loop reports it.
#[derive(Debug, Clone, Default)]
pub struct PlanSummary {
    /// Workloads (distinct users) whose images were planned.
    pub workloads: usize,
    /// Target keys of the planned tasks (as [`crate::queue::TaskStatus::key`]).
    pub targets: Vec<String>,
}

/// A request for a full rescan, answered by the plan loop once every task is submitted.
pub type RescanRequest = oneshot::Sender<PlanSummary>;

/// Everything the endpoints read or drive.
pub struct Admin {
    /// The mirror queue.
    pub queue: Queue,
    /// The images the latest plan leaves out.
    pub excluded: ExcludedImages,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Set once the daemon's initial list of the cluster is complete.
    pub ready: Arc<AtomicBool>,
    /// Where full rescans are requested.
    pub rescan: mpsc::Sender<RescanRequest>,
    /// Token the admin endpoints require; empty: none.
    pub admin_token: Secret,
    /// Docker Hub's client, for its rate-limit gauge.
    pub dockerhub: Option<Registry>,
    /// Whether this replica leads (`None`: no election, always).
    leading: Option<watch::Receiver<bool>>,
    /// The watches the API server refuses, for `/readyz`.
    watch_health: WatchHealth,
    /// The rescan in flight (planned, queue not yet seen idle), which concurrent calls join.
    current: tokio::sync::Mutex<Option<PlanSummary>>,
    /// Refused admin calls, for rate-limited logging.
    refusals: RefusalLog,
    /// The backup states of the periodic verification (`None`: `verifyInterval` is 0).
    backup: Option<BackupStates>,
    /// The images copy on the fly found no source for (`None`: it is off).
    unmatched: Option<UnmatchedImages>,
}

impl Admin {
    /// The endpoints' state.
    pub fn new(
        queue: Queue,
        excluded: ExcludedImages,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        rescan: mpsc::Sender<RescanRequest>,
        admin_token: Secret,
        dockerhub: Option<Registry>,
    ) -> Admin {
        Admin {
            queue,
            excluded,
            metrics,
            ready,
            rescan,
            admin_token,
            dockerhub,
            leading: None,
            watch_health: WatchHealth::default(),
            current: tokio::sync::Mutex::new(None),
            refusals: RefusalLog::new(REFUSAL_LOG_INTERVAL),
            backup: None,
            unmatched: None,
        }
    }

    /// Shows the backup states of the periodic verification in `/status`, `/status/summary` and
    /// the metrics.
    pub fn with_backup(mut self, states: BackupStates) -> Admin {
        self.metrics.enable_backup();
        self.backup = Some(states);
        self
    }

    /// Every target the queue knows, sorted by target, then the excluded images, sorted by source,
    /// then the images copy on the fly found no source for.
    fn statuses(&self) -> Vec<TaskStatus> {
        let mut all = self.queue.snapshot();
        all.extend(self.excluded.get());
        if let Some(unmatched) = &self.unmatched {
            all.extend(unmatched.statuses());
        }
        all
    }

    /// Shows the images copy on the fly found no source for in `/status`.
    pub fn with_unmatched(mut self, unmatched: UnmatchedImages) -> Admin {
        self.unmatched = Some(unmatched);
        self
    }

    /// Answers the admin endpoints only while `leading` says this replica leads (503 otherwise).
    pub fn with_leadership(mut self, leading: watch::Receiver<bool>) -> Admin {
        self.leading = Some(leading);
        self
    }

    /// Names the watches the API server refuses or that fail in `/readyz`'s answer.
    pub fn with_watch_health(mut self, watch_health: WatchHealth) -> Admin {
        self.watch_health = watch_health;
        self
    }

    /// The 503 a follower answers on the admin endpoints, `None` on the leader.
    fn not_leader(&self) -> Option<Response> {
        let leading = self.leading.as_ref().is_none_or(|l| *l.borrow());
        (!leading).then(|| {
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "this replica is not the leader: only the leader mirrors; send this request to the leader (k8s_copycat_leader 1)".into(),
            )
        })
    }
}

/// The running listeners; dropping them does not stop them, [`Servers::shutdown`] does.
pub struct Servers {
    tasks: Vec<JoinHandle<()>>,
    /// Where the metrics listener is bound (`None`: disabled with `0`).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the health listener is bound (`None`: disabled with `0`).
    pub health_addr: Option<SocketAddr>,
}

impl Servers {
    /// Stops both listeners (requests in progress are dropped).
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds both listeners and serves them in the background. A listener that cannot be bound is an
/// error naming its address. `:8080` means every interface; `0` disables a listener.
pub async fn start(metrics_addr: &str, health_addr: &str, admin: Arc<Admin>) -> anyhow::Result<Servers> {
    let admin_token_missing = admin.admin_token.is_empty();
    let admin_routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/force-reconcile", get(force_reconcile).post(force_reconcile))
        .route("/reset-cooldown", get(reset_cooldown).post(reset_cooldown))
        .route("/status", get(status))
        .route("/status/summary", get(status_summary))
        .with_state(admin.clone());
    let health_routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(admin);
    let mut servers = Servers {
        tasks: vec![],
        metrics_addr: None,
        health_addr: None,
    };
    for (what, addr, app) in [
        ("metrics", metrics_addr, admin_routes),
        ("health probe", health_addr, health_routes),
    ] {
        let Some(bind) = bind_address(addr) else {
            tracing::info!("{what} listener disabled ({addr:?})");
            continue;
        };
        let listener = match bind {
            Bind::Everywhere(port) => listen_everywhere(port).and_then(tokio::net::TcpListener::from_std),
            Bind::At(address) => tokio::net::TcpListener::bind(address).await,
        }
        .with_context(|| format!("cannot listen on {what} address {addr:?}"))?;
        let local = listener.local_addr().context("listener address")?;
        tracing::info!(address = %local, "{what} listener started");
        if what == "metrics" {
            servers.metrics_addr = Some(local);
            if admin_token_missing {
                tracing::warn!(address = %local,
                    "ADMIN_TOKEN is not set: anyone who can reach this address can call /force-reconcile and /reset-cooldown; set ADMIN_TOKEN to require a bearer token");
            }
        } else {
            servers.health_addr = Some(local);
        }
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        servers.tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "{what} listener failed");
            }
        }));
    }
    Ok(servers)
}

/// Where a listener binds.
#[derive(Debug, PartialEq, Eq)]
enum Bind {
    /// Every interface, IPv6 and IPv4.
    Everywhere(u16),
    /// The address as given (`host:port`).
    At(String),
}

/// As Go's `net.Listen("tcp", …)`, which k8s-copycat used: `:8080`, `0.0.0.0:8080` and `[::]:8080`
/// mean every interface, IPv6 included; `0` or empty → disabled; anything else as given.
fn bind_address(addr: &str) -> Option<Bind> {
    let addr = addr.trim();
    if addr.is_empty() || addr == "0" {
        return None;
    }
    let everywhere = match addr.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "[::]", port)) => port.parse().ok(),
        _ => None,
    };
    Some(everywhere.map_or_else(|| Bind::At(addr.to_owned()), Bind::Everywhere))
}

/// A listener on every interface: one IPv6 socket that also accepts IPv4 (`IPV6_V6ONLY` off,
/// whatever `net.ipv6.bindv6only` says), or an IPv4 one where the machine has no IPv6.
fn listen_everywhere(port: u16) -> std::io::Result<std::net::TcpListener> {
    match listen_dual_stack(port) {
        Ok(listener) => Ok(listener),
        Err(e) if !ipv4_fallback_on(&e) => Err(e),
        Err(e) => {
            tracing::info!(error = %e, "no IPv6 listener possible; listening on IPv4 only");
            listen_on(
                std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
                socket2::Domain::IPV4,
            )
        }
    }
}

fn listen_dual_stack(port: u16) -> std::io::Result<std::net::TcpListener> {
    listen_on(
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        socket2::Domain::IPV6,
    )
}

/// A non-blocking listening socket on `address`; IPv6 ones accept IPv4 too.
fn listen_on(address: SocketAddr, domain: socket2::Domain) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if domain == socket2::Domain::IPV6 {
        socket.set_only_v6(false)?;
    }
    // As std's and tokio's listeners: a restart may bind the port while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether a failed dual-stack listener should give way to an IPv4 one: yes when IPv6 itself is
/// missing (no IPv6 in the kernel, no IPv6 address, no IPv4-mapped addresses), not when the port is
/// taken or not ours to bind, which IPv4 would hit as well.
fn ipv4_fallback_on(error: &std::io::Error) -> bool {
    !matches!(
        error.kind(),
        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
    )
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    admin.metrics.observe_tasks(admin.statuses().iter().map(|s| s.state));
    if let Some(backup) = &admin.backup {
        let report = backup.report(std::time::SystemTime::now());
        let s = &report.summary;
        admin
            .metrics
            .set_backup(&s.counts(), s.coverage, report.oldest_unverified);
    }
    if let Some(hub) = &admin.dockerhub {
        admin.metrics.set_dockerhub_ratelimit(hub.ratelimit_remaining());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        admin.metrics.render(),
    )
        .into_response()
}

/// 200 once the initial list is complete, 503 before; either way followed by the watches the API
/// server refuses or that fail (the API server unreachable, say), one line each: a refused or
/// failing watch keeps the start from completing, unless it is an optional one.
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let (code, mut text) = if admin.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the initial list of the cluster is not complete yet".to_owned(),
        )
    };
    for problem in admin.watch_health.describe() {
        text += &format!("\n{problem}");
    }
    (code, text).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    state: Option<String>,
    /// Keep the entries in this backup state.
    backup: Option<String>,
}

/// One `/status` entry: the queue's (or the plan's) status of a target and, with periodic
/// verification, its backup state.
#[derive(Serialize)]
struct StatusEntry {
    #[serde(flatten)]
    task: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup: Option<Backup>,
}

/// The backup state of one `/status` entry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Backup {
    state: BackupState,
    detail: String,
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    checked: Option<std::time::SystemTime>,
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    last_verified: Option<std::time::SystemTime>,
    /// The target's last restore drill.
    #[serde(skip_serializing_if = "Option::is_none")]
    drill: Option<Drill>,
}

impl Backup {
    /// The backup state of `image` as a `/status` entry shows it.
    fn of(image: &ImageBackup) -> Backup {
        Backup {
            state: image.image.state,
            detail: image.image.detail.clone(),
            checked: image.checked,
            last_verified: image.last_verified,
            drill: image.drill.clone(),
        }
    }
}

async fn status(State(admin): State<Arc<Admin>>, Query(q): Query<StatusQuery>) -> Response {
    let mut all = admin.statuses();
    if let Some(wanted) = q.state.as_deref().filter(|s| !s.is_empty()) {
        let Some(state) = TaskState::ALL.into_iter().find(|s| s.as_str() == wanted) else {
            let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            return message(
                StatusCode::BAD_REQUEST,
                format!("unknown state {wanted:?}; one of {}", names.join(", ")),
            );
        };
        all.retain(|s| s.state == state);
    }
    let Some(states) = &admin.backup else {
        if q.backup.as_deref().is_some_and(|b| !b.is_empty()) {
            return message(StatusCode::BAD_REQUEST, VERIFICATION_DISABLED.into());
        }
        return axum::Json(all).into_response();
    };
    let report = states.report(std::time::SystemTime::now());
    let wanted = match q.backup.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(wanted) => match BackupState::ALL.into_iter().find(|s| s.as_str() == wanted) {
            Some(state) => Some(state),
            None => {
                let names: Vec<&str> = BackupState::ALL.iter().map(|s| s.as_str()).collect();
                return message(
                    StatusCode::BAD_REQUEST,
                    format!("unknown backup state {wanted:?}; one of {}", names.join(", ")),
                );
            }
        },
    };
    // Planned targets by key; the images the plan leaves out (excluded: no target; conflicts: the
    // target another source keeps) by source and target.
    let mut planned: HashMap<&str, &ImageBackup> = HashMap::new();
    let mut unplanned: HashMap<(&str, &str), &ImageBackup> = HashMap::new();
    for image in &report.images {
        if image.key.is_empty() {
            unplanned.insert((&image.image.image, &image.image.target), image);
        } else {
            planned.insert(&image.key, image);
        }
    }
    let entries: Vec<StatusEntry> = all
        .into_iter()
        .map(|task| {
            let image = match task.state {
                TaskState::Excluded | TaskState::Conflict => unplanned.get(&(&*task.source, &*task.target)),
                _ => planned.get(task.key.as_str()),
            };
            let backup = image.map(|i| Backup::of(i));
            StatusEntry { task, backup }
        })
        .filter(|e| wanted.is_none_or(|w| e.backup.as_ref().is_some_and(|b| b.state == w)))
        .collect();
    axum::Json(entries).into_response()
}

/// The backup summary of the periodic verification: counts, coverage and the longest an image
/// has gone unverified (404 when `verifyInterval` is 0).
async fn status_summary(State(admin): State<Arc<Admin>>) -> Response {
    match &admin.backup {
        Some(states) => axum::Json(states.summary_report(std::time::SystemTime::now())).into_response(),
        None => message(StatusCode::NOT_FOUND, VERIFICATION_DISABLED.into()),
    }
}

fn message(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "message": message }))).into_response()
}

/// Why an admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header of another scheme than `Bearer` (or not text).
    NotBearer,
    /// A bearer token that is not `ADMIN_TOKEN`.
    WrongToken,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "no Authorization header",
            Refusal::NotBearer => "Authorization is not a Bearer token",
            Refusal::WrongToken => "wrong bearer token",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer` and `BEARER` are valid too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the admin token: `None` when the call may proceed (or no token is configured).
fn check_token(token: &str, headers: &HeaderMap) -> Option<Refusal> {
    if token.is_empty() {
        return None;
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Some(Refusal::Missing);
    };
    let Some(given) = value.to_str().ok().and_then(bearer_token) else {
        return Some(Refusal::NotBearer);
    };
    (!constant_time_eq(given.as_bytes(), token.as_bytes())).then_some(Refusal::WrongToken)
}

/// Rate limit of the refused-call log: the first refusal is logged, then at most one per interval,
/// each with the number of refusals left out since the previous line.
struct RefusalLog {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Notes a refusal at `now`: `Some(left out before it)` when it is to be logged.
    fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

/// `None` when the request may proceed, else the 401 answer; refusals are logged (rate-limited),
/// never with the token given.
fn unauthorized(admin: &Admin, headers: &HeaderMap, peer: SocketAddr, path: &str) -> Option<Response> {
    let refusal = check_token(admin.admin_token.expose(), headers)?;
    if let Some(not_logged) = admin.refusals.note(Instant::now()) {
        tracing::warn!(%peer, path, reason = refusal.as_str(), refusals_not_logged_since_last = not_logged,
            "admin request refused");
    }
    let mut response = message(
        StatusCode::UNAUTHORIZED,
        "this endpoint requires Authorization: Bearer <ADMIN_TOKEN>".into(),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Some(response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResetAnswer {
    reset: bool,
    cleared_targets: usize,
    message: &'static str,
}

async fn reset_cooldown(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&admin, &headers, peer, "/reset-cooldown") {
        return denied;
    }
    if let Some(follower) = admin.not_leader() {
        return follower;
    }
    let answer = if !admin.queue.cooldown_enabled() {
        ResetAnswer {
            reset: false,
            cleared_targets: 0,
            message: "failure cooldown disabled",
        }
    } else {
        match admin.queue.reset_cooldown() {
            0 => ResetAnswer {
                reset: false,
                cleared_targets: 0,
                message: "no cooldown entries to reset",
            },
            n => ResetAnswer {
                reset: true,
                cleared_targets: n,
                message: "failure cooldown reset",
            },
        }
    };
    axum::Json(answer).into_response()
}

#[derive(Deserialize)]
struct ForceQuery {
    wait: Option<String>,
}

/// `/force-reconcile`'s answer (k8s-copycat's fields plus `pending`).
#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ForceAnswer {
    /// Whether a rescan was started or joined.
    pub triggered: bool,
    /// Whether every target of the rescan ended mirrored (or decided, in a dry run) within the wait.
    pub success: bool,
    /// Workloads whose images the rescan planned.
    pub workloads_processed: usize,
    /// Targets of the rescan that are mirrored (or decided, in a dry run).
    pub images_mirrored: usize,
    /// What happened.
    pub message: String,
    /// Targets of the rescan still queued or running when the wait ended.
    pub pending: usize,
}

async fn force_reconcile(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ForceQuery>,
) -> Response {
    if let Some(denied) = unauthorized(&admin, &headers, peer, "/force-reconcile") {
        return denied;
    }
    if let Some(follower) = admin.not_leader() {
        return follower;
    }
    let wait = match q.wait.as_deref().filter(|w| !w.is_empty()) {
        None => DEFAULT_FORCE_WAIT,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d <= MAX_FORCE_WAIT => d,
            Ok(_) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "wait {text:?} is longer than {}",
                        humantime::format_duration(MAX_FORCE_WAIT)
                    ),
                );
            }
            Err(e) => return message(StatusCode::BAD_REQUEST, format!("invalid wait {text:?}: {e}")),
        },
    };
    let not_ready = |why: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ForceAnswer {
                message: format!("force reconcile service not ready: {why}"),
                ..ForceAnswer::default()
            }),
        )
            .into_response()
    };
    if !admin.ready.load(Ordering::Acquire) {
        return not_ready("the initial list of the cluster is not complete yet");
    }
    let summary = {
        let mut current = admin.current.lock().await;
        match &*current {
            Some(running) if !idle(&admin.queue) => {
                tracing::info!("force reconcile joins the rescan in progress");
                running.clone()
            }
            _ => {
                let (reply, answer) = oneshot::channel();
                if admin.rescan.send(reply).await.is_err() {
                    return not_ready("the daemon is stopping");
                }
                match tokio::time::timeout(Duration::from_secs(60), answer).await {
                    Ok(Ok(summary)) => {
                        *current = Some(summary.clone());
                        summary
                    }
                    _ => return not_ready("the plan loop did not answer"),
                }
            }
        }
    };
    let went_idle = admin.queue.wait_idle(wait).await;
    if went_idle {
        *admin.current.lock().await = None;
    }
    let answer = tally(&admin.queue, &summary, went_idle, wait);
    tracing::info!(
        success = answer.success,
        workloads = answer.workloads_processed,
        mirrored = answer.images_mirrored,
        pending = answer.pending,
        "force reconcile: {}",
        answer.message
    );
    axum::Json(answer).into_response()
}

fn idle(queue: &Queue) -> bool {
    let c = queue.counters();
    c.queued + c.running == 0
}

/// The answer for a rescan that planned `summary`, from the queue's current status.
fn tally(queue: &Queue, summary: &PlanSummary, went_idle: bool, wait: Duration) -> ForceAnswer {
    let targets: HashSet<&str> = summary.targets.iter().map(String::as_str).collect();
    let (mut mirrored, mut failed, mut pending) = (0, 0, 0);
    for status in queue.snapshot().iter().filter(|s| targets.contains(s.key.as_str())) {
        match status.state {
            TaskState::Mirrored | TaskState::DryRun => mirrored += 1,
            TaskState::Failed | TaskState::Cooldown => failed += 1,
            TaskState::Queued | TaskState::Running => pending += 1,
            TaskState::Excluded | TaskState::Conflict | TaskState::Unmatched => {}
        }
    }
    let total = summary.targets.len();
    let (success, message) = if !went_idle {
        (
            false,
            format!(
                "force reconcile still running after {}: {pending} of {total} targets pending",
                humantime::format_duration(wait)
            ),
        )
    } else if failed > 0 {
        (
            false,
            format!(
                "force reconcile failed: {failed} of {total} targets failed (see /status?state=cooldown and /status?state=failed)"
            ),
        )
    } else {
        (true, "force reconcile completed".to_owned())
    };
    ForceAnswer {
        triggered: true,
        success,
        workloads_processed: summary.workloads,
        images_mirrored: mirrored,
        message,
        pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_like_go() {
        let at = |a: &str| Some(Bind::At(a.into()));
        let cases = [
            (":8080", Some(Bind::Everywhere(8080))),
            ("0.0.0.0:8080", Some(Bind::Everywhere(8080))),
            ("[::]:9", Some(Bind::Everywhere(9))),
            (" :0 ", Some(Bind::Everywhere(0))),
            ("127.0.0.1:9", at("127.0.0.1:9")),
            ("[::1]:9", at("[::1]:9")),
            ("localhost:9", at("localhost:9")),
            ("0", None),
            ("", None),
        ];
        for (addr, want) in cases {
            assert_eq!(bind_address(addr), want, "{addr:?}");
        }
    }

    #[test]
    fn ipv4_fallback_only_when_ipv6_is_missing() {
        use std::io::{Error, ErrorKind};
        let cases = [
            (Error::from(ErrorKind::AddrNotAvailable), true),
            (Error::from(ErrorKind::Unsupported), true),
            (Error::from_raw_os_error(97), true), // EAFNOSUPPORT: a kernel without IPv6
            (Error::from(ErrorKind::AddrInUse), false),
            (Error::from(ErrorKind::PermissionDenied), false),
        ];
        for (error, want) in cases {
            assert_eq!(ipv4_fallback_on(&error), want, "{error}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let headers = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        let cases = [
            (Some("Bearer s3cret"), None),
            (Some("bearer s3cret"), None),
            (Some("BEARER s3cret"), None),
            (Some("  Bearer   s3cret  "), None),
            (Some("Bearer wrong"), Some(Refusal::WrongToken)),
            (Some("Bearer s3cret2"), Some(Refusal::WrongToken)),
            (Some("Bearer"), Some(Refusal::NotBearer)),
            (Some("Basic czNjcmV0"), Some(Refusal::NotBearer)),
            (Some("Bearers s3cret"), Some(Refusal::NotBearer)),
            (None, Some(Refusal::Missing)),
        ];
        for (value, want) in cases {
            assert_eq!(check_token("s3cret", &headers(value)), want, "{value:?}");
        }
        assert_eq!(check_token("", &headers(None)), None, "no token configured: open");
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_the_count_left_out() {
        let log = RefusalLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let cases = [
            (0, Some(0)),
            (1, None),
            (30, None),
            (59, None),
            (60, Some(3)),
            (61, None),
            (200, Some(1)),
            (201, None),
        ];
        for (second, want) in cases {
            assert_eq!(log.note(at(second)), want, "at {second} s");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
