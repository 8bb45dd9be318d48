//! The daemon's HTTP endpoints (see `docs/operations.md`).
//!
//! - On `METRICS_ADDR` (`:8080`): `GET /metrics`; `GET|POST /force-reconcile`, `GET|POST
//!   /reset-cooldown` (k8s-copycat's admin endpoints, same JSON); `GET /status`.
//! - On `HEALTH_ADDR` (`:8081`): `/healthz` (alive) and `/readyz` (the initial list of the cluster
//!   is complete).
//!
//! When `ADMIN_TOKEN` is set, the two admin endpoints require `Authorization: Bearer <token>`.
//! With leader election, a replica that is not the leader answers them 503 (only the leader
//! mirrors); `/status`, `/metrics` and the probes work on every replica.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::queue::{ExcludedImages, Queue, TaskState, TaskStatus};
use crate::registry::Registry;
use crate::secret::Secret;

/// How long `/force-reconcile` waits for the queue to go idle unless `?wait=` says otherwise.
pub const DEFAULT_FORCE_WAIT: Duration = Duration::from_secs(30);
/// The longest `?wait=` accepted.
const MAX_FORCE_WAIT: Duration = Duration::from_secs(60 * 60);

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
    /// The rescan in flight (planned, queue not yet seen idle), which concurrent calls join.
    current: tokio::sync::Mutex<Option<PlanSummary>>,
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
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Every target the queue knows, sorted by target, then the excluded images, sorted by source.
    fn statuses(&self) -> Vec<TaskStatus> {
        let mut all = self.queue.snapshot();
        all.extend(self.excluded.get());
        all
    }

    /// Answers the admin endpoints only while `leading` says this replica leads (503 otherwise).
    pub fn with_leadership(mut self, leading: watch::Receiver<bool>) -> Admin {
        self.leading = Some(leading);
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
    let admin_routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/force-reconcile", get(force_reconcile).post(force_reconcile))
        .route("/reset-cooldown", get(reset_cooldown).post(reset_cooldown))
        .route("/status", get(status))
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
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {what} address {addr:?}"))?;
        let local = listener.local_addr().context("listener address")?;
        tracing::info!(address = %local, "{what} listener started");
        if what == "metrics" {
            servers.metrics_addr = Some(local);
        } else {
            servers.health_addr = Some(local);
        }
        servers.tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "{what} listener failed");
            }
        }));
    }
    Ok(servers)
}

/// `:8080` → every interface; `0` or empty → disabled; anything else as given.
fn bind_address(addr: &str) -> Option<String> {
    match addr.trim() {
        "" | "0" => None,
        a if a.starts_with(':') => Some(format!("0.0.0.0{a}")),
        a => Some(a.to_owned()),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    admin.metrics.observe_queue(&admin.statuses());
    if let Some(hub) = &admin.dockerhub {
        admin.metrics.set_dockerhub_ratelimit(hub.ratelimit_remaining());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        admin.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if admin.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the initial list of the cluster is not complete yet",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    state: Option<String>,
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
    axum::Json(all).into_response()
}

fn message(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "message": message }))).into_response()
}

/// `None` when the request may proceed, else the 401 answer.
fn unauthorized(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    let token = admin.admin_token.expose();
    if token.is_empty() {
        return None;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        return None;
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

async fn reset_cooldown(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&admin, &headers) {
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

async fn force_reconcile(State(admin): State<Arc<Admin>>, headers: HeaderMap, Query(q): Query<ForceQuery>) -> Response {
    if let Some(denied) = unauthorized(&admin, &headers) {
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
            TaskState::Excluded => {}
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
        assert_eq!(bind_address(":8080").as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(bind_address("127.0.0.1:9"), Some("127.0.0.1:9".into()));
        assert_eq!(bind_address("0"), None);
        assert_eq!(bind_address(""), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
