//! Kubernetes Events for images that could not be mirrored, so that `kubectl describe` on the
//! workload shows why: a `Warning` Event on each workload using the image, reason [`REASON`] for a
//! failed copy, [`CONFLICT_REASON`] for an image whose target another source keeps, and other
//! notices (copy on the fly: [`Notice`]) with their own reason; and Warning Events on any other object
//! ([`ObjectNotice`]: a declarative `Image` whose tag failed or moved).
//!
//! The queue reports failures ([`Queue::report_failures`]), the plan loop conflicts
//! ([`Events::conflicts`]) and notices ([`Events::notices`]); an [`Emitter`] task turns them into core/v1 Events (the API `kubectl
//! describe` reads) created through the API server. It emits only while this replica leads, at most
//! once per target (per conflicting source) per window (the failure cooldown), and never holds up
//! mirroring: a full backlog drops reports, API errors are logged and forgotten.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::plan::{TargetConflict, TargetKey};
use crate::queue::{DEFAULT_STATUS_CAPACITY, FailureReport, Queue};
use crate::workload::{Kind, Workload};

/// The reason of Events about failed copies.
pub const REASON: &str = "MirrorFailed";
/// The reason of Events about images whose target another source keeps.
pub const CONFLICT_REASON: &str = "TargetConflict";
/// The reporting component, as `kubectl describe` shows it under `From`.
const COMPONENT: &str = "k8s-copycat";
/// Events at most per target in this window when the failure cooldown is disabled.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Failure reports waiting to be turned into Events; more are dropped.
const BACKLOG: usize = 256;
/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest message, in bytes (the limit the events API puts on a note).
const MAX_MESSAGE: usize = 1024;

/// Turns failure reports into Events.
pub struct Emitter {
    client: Client,
    /// This replica's identity (`reportingInstance`).
    instance: String,
    /// Whether this replica leads; followers emit nothing.
    leading: watch::Receiver<bool>,
    /// Targets with an Event in the current window.
    recent: moka::sync::Cache<TargetKey, ()>,
    /// (target, source) conflicts with an Event in the current window.
    recent_conflicts: moka::sync::Cache<(String, String), ()>,
    /// Notices (by [`Notice::key`]) with an Event in the current window.
    recent_notices: moka::sync::Cache<String, ()>,
}

/// Something to tell the users of an image in a Warning Event of its own reason, at most once per
/// `key` per window.
#[derive(Debug, Clone)]
pub struct Notice {
    /// What makes two notices the same one (e.g. the Pod and the image).
    pub key: String,
    /// Where the Event goes.
    pub users: Vec<Workload>,
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's message (bounded when emitted).
    pub message: String,
}

/// Something to tell about one object (not a workload: an `Image`, say) in a Warning Event, at most
/// once per `key` per window.
#[derive(Debug, Clone)]
pub struct ObjectNotice {
    /// What makes two notices the same one (e.g. the object and its tag).
    pub key: String,
    /// The object the Event is about (with its `uid`, which `kubectl describe` selects Events by).
    pub regarding: ObjectReference,
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's message (bounded when emitted).
    pub message: String,
}

/// A running [`Emitter`].
pub struct Events {
    /// The emitting task; aborting it stops the Events.
    pub task: JoinHandle<()>,
    /// Where the plan loop reports images whose target another source keeps.
    pub conflicts: mpsc::Sender<TargetConflict>,
    /// Where other notices are reported.
    pub notices: mpsc::Sender<Notice>,
    /// Where notices about other objects are reported.
    pub objects: mpsc::Sender<ObjectNotice>,
}

impl Emitter {
    /// An emitter creating Events through `client` as `instance`, at most once per target per
    /// `window`, while `leading` says so.
    pub fn new(client: Client, instance: String, window: Duration, leading: watch::Receiver<bool>) -> Emitter {
        Emitter {
            client,
            instance,
            leading,
            recent: window_cache(window),
            recent_conflicts: window_cache(window),
            recent_notices: window_cache(window),
        }
    }

    /// Emits Events for the failures `queue` reports from now on, until the queue is dropped, and
    /// for the conflicts sent to [`Events::conflicts`].
    pub fn start(self, queue: &Queue) -> Events {
        let (to, reports) = mpsc::channel(BACKLOG);
        queue.report_failures(to);
        let (conflicts, conflict_reports) = mpsc::channel(BACKLOG);
        let (notices, notice_reports) = mpsc::channel(BACKLOG);
        let (objects, object_reports) = mpsc::channel(BACKLOG);
        Events {
            task: tokio::spawn(self.run(reports, conflict_reports, notice_reports, object_reports)),
            conflicts,
            notices,
            objects,
        }
    }

    async fn run(
        self,
        mut reports: mpsc::Receiver<FailureReport>,
        mut conflicts: mpsc::Receiver<TargetConflict>,
        mut notices: mpsc::Receiver<Notice>,
        mut objects: mpsc::Receiver<ObjectNotice>,
    ) {
        loop {
            tokio::select! {
                Some(report) = reports.recv() => self.on_failure(report).await,
                Some(conflict) = conflicts.recv() => self.on_conflict(conflict).await,
                Some(notice) = notices.recv() => self.on_notice(notice).await,
                Some(notice) = objects.recv() => self.on_object_notice(notice).await,
                else => return,
            }
        }
    }

    /// One Event on the notice's object, unless it had one in the window or this replica does not
    /// lead.
    async fn on_object_notice(&self, notice: ObjectNotice) {
        if !*self.leading.borrow() || self.recent_notices.contains_key(&notice.key) {
            return;
        }
        self.recent_notices.insert(notice.key, ());
        let object = format!(
            "{} {}/{}",
            notice.regarding.kind.as_deref().unwrap_or_default(),
            notice.regarding.namespace.as_deref().unwrap_or_default(),
            notice.regarding.name.as_deref().unwrap_or_default()
        );
        let created = tokio::time::timeout(
            API_TIMEOUT,
            self.create(notice.regarding, notice.reason, &bounded(notice.message)),
        )
        .await;
        let reason = notice.reason;
        match created {
            Ok(Ok(())) => tracing::debug!(object, reason, "event created"),
            Ok(Err(e)) => tracing::warn!(object, reason, error = format!("{e:#}"), "cannot create the event"),
            Err(_) => tracing::warn!(object, reason, "creating the event timed out"),
        }
    }

    /// One Event per user of a notice, unless it had one in the window or this replica does not lead.
    async fn on_notice(&self, notice: Notice) {
        if !*self.leading.borrow() || self.recent_notices.contains_key(&notice.key) {
            return;
        }
        self.recent_notices.insert(notice.key, ());
        self.emit_all(&notice.users, notice.reason, &bounded(notice.message))
            .await;
    }

    /// One Event per user of an image whose target another source keeps, unless this conflict had
    /// one in the window or this replica does not lead.
    async fn on_conflict(&self, conflict: TargetConflict) {
        if !*self.leading.borrow() {
            return;
        }
        let key = (conflict.target.clone(), conflict.source.clone());
        if self.recent_conflicts.contains_key(&key) {
            return;
        }
        self.recent_conflicts.insert(key, ());
        self.emit_all(&conflict.users, CONFLICT_REASON, &conflict_message(&conflict))
            .await;
    }

    /// One Event per user of the image, unless the target had one in the window or this replica
    /// does not lead. The window starts even if creating fails, so an API server that refuses
    /// (RBAC, say) is asked once per window, not once per failure.
    async fn on_failure(&self, report: FailureReport) {
        if !*self.leading.borrow() {
            return;
        }
        if self.recent.contains_key(&report.target) {
            tracing::debug!(target = %report.target, "failure event already emitted in this window");
            return;
        }
        self.recent.insert(report.target.clone(), ());
        self.emit_all(&report.users, REASON, &message(&report)).await;
    }

    /// Creates an Event with `reason` and `message` on each of `workloads`; failures are logged.
    async fn emit_all(&self, workloads: &[Workload], reason: &str, message: &str) {
        for workload in workloads {
            let created = tokio::time::timeout(API_TIMEOUT, self.emit(workload, reason, message)).await;
            match created {
                Ok(Ok(true)) => tracing::debug!(%workload, reason, "event created"),
                Ok(Ok(false)) => tracing::debug!(%workload, reason, "workload gone; no event"),
                Ok(Err(e)) => tracing::warn!(%workload, reason, error = format!("{e:#}"), "cannot create the event"),
                Err(_) => tracing::warn!(%workload, reason, "creating the event timed out"),
            }
        }
    }

    /// Creates the Event on `workload`; `false` when the workload no longer exists.
    async fn emit(&self, workload: &Workload, reason: &str, message: &str) -> anyhow::Result<bool> {
        let Some(regarding) = reference(&self.client, workload)
            .await
            .with_context(|| format!("reading {workload}"))?
        else {
            return Ok(false);
        };
        self.create(regarding, reason, message).await?;
        Ok(true)
    }

    /// Creates a Warning Event on `regarding`, in its namespace.
    async fn create(&self, regarding: ObjectReference, reason: &str, message: &str) -> anyhow::Result<()> {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = event(regarding, reason, message, &self.instance, Timestamp::now());
        Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await
            .with_context(|| format!("creating an Event in namespace {namespace}"))?;
        Ok(())
    }
}

/// What had an Event in the last `window`.
fn window_cache<K: std::hash::Hash + Eq + Send + Sync + 'static>(window: Duration) -> moka::sync::Cache<K, ()> {
    moka::sync::Cache::builder()
        .max_capacity(DEFAULT_STATUS_CAPACITY)
        .time_to_live(window)
        .build()
}

/// A reference to `workload` with its current `uid` (`kubectl describe` selects Events by it);
/// `None` when it does not exist.
async fn reference(client: &Client, workload: &Workload) -> kube::Result<Option<ObjectReference>> {
    match workload.kind {
        Kind::Deployment => reference_to::<Deployment>(client, workload).await,
        Kind::StatefulSet => reference_to::<StatefulSet>(client, workload).await,
        Kind::DaemonSet => reference_to::<DaemonSet>(client, workload).await,
        Kind::Job => reference_to::<Job>(client, workload).await,
        Kind::CronJob => reference_to::<CronJob>(client, workload).await,
        Kind::Pod => reference_to::<Pod>(client, workload).await,
    }
}

async fn reference_to<K>(client: &Client, workload: &Workload) -> kube::Result<Option<ObjectReference>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let found = Api::<K>::namespaced(client.clone(), &workload.namespace)
        .get_metadata_opt(&workload.name)
        .await?;
    Ok(found.map(|meta| meta.object_ref(&())))
}

/// What went wrong and what happens next, bounded to [`MAX_MESSAGE`] bytes.
fn message(report: &FailureReport) -> String {
    let next = match report.retry_in {
        Some(after) => format!("retrying in {}", humantime::format_duration(after)),
        None => "retried when planned again".to_owned(),
    };
    bounded(format!(
        "Cannot mirror {} to {}: {}; {next}",
        report.source, report.target, report.error
    ))
}

/// Which source keeps the target and how to name them apart, bounded to [`MAX_MESSAGE`] bytes.
fn conflict_message(conflict: &TargetConflict) -> String {
    bounded(format!(
        "Not mirroring {} to {}: {} has the same target and keeps it (used first); give each registry its own targets with $registry in the repository prefix",
        conflict.source, conflict.target, conflict.kept
    ))
}

/// `text` cut to [`MAX_MESSAGE`] bytes with `…`.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A core/v1 Warning Event on `regarding`, as client-go's event recorder makes them: named
/// `<object>.<hex nanoseconds>`, in the object's namespace, counted once, without `eventTime`.
fn event(regarding: ObjectReference, reason: &str, message: &str, instance: &str, now: Timestamp) -> Event {
    let object = regarding.name.as_deref().unwrap_or(COMPONENT);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(object, now)),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: regarding,
        type_: Some("Warning".to_owned()),
        reason: Some(reason.to_owned()),
        action: Some("Mirror".to_owned()),
        message: Some(message.to_owned()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    }
}

/// `<object>.<hex nanoseconds>`, shortened so that it stays a valid name (at most 253 characters).
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let keep = object.len().min(253 - suffix.len());
    format!("{}{suffix}", object[..keep].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyRequest;
    use crate::plan::MirrorTask;
    use crate::reference::ImageRef;

    fn report(error: &str, retry_in: Option<Duration>) -> FailureReport {
        let task = MirrorTask::new(CopyRequest {
            source: ImageRef::parse("ghcr.io/acme/web:1").unwrap(),
            target: ImageRef::parse("r.example/acme/web").unwrap(),
            target_tag: Some("1".into()),
        });
        FailureReport {
            target: task.key(),
            source: task.request.source,
            error: error.to_owned(),
            users: vec![Workload::new(Kind::Deployment, "shop", "web")],
            retry_in,
        }
    }

    #[test]
    fn messages_name_source_target_error_and_retry_and_stay_bounded() {
        let m = message(&report("manifest not found", Some(Duration::from_secs(3600))));
        assert_eq!(
            m,
            "Cannot mirror ghcr.io/acme/web:1 to r.example/acme/web:1: manifest not found; retrying in 1h"
        );
        let m = message(&report("é".repeat(2000).as_str(), None));
        assert!(m.len() <= MAX_MESSAGE && m.ends_with('…'), "{} bytes", m.len());
    }

    #[test]
    fn events_are_warnings_on_the_workload_in_its_namespace() {
        let regarding = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = event(regarding.clone(), REASON, "m", "copycat-0", now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(e.metadata.name.as_deref(), Some("web.17979cfe362a0000"));
        assert_eq!(e.involved_object, regarding);
        assert_eq!(
            (e.type_.as_deref(), e.reason.as_deref()),
            (Some("Warning"), Some(REASON))
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("copycat-0"));
        assert_eq!(e.count, Some(1));
        assert!(e.event_time.is_none(), "a classic core/v1 Event");
        let long = event_name(&"a".repeat(300), now);
        assert_eq!(long.len(), 253);
    }
}
