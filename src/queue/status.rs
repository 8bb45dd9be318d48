//! What the queue tells the outside: per-target status and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use super::DeclaringObject;
use crate::plan::{ExcludedImage, TargetConflict};
use crate::reference::Digest;
use crate::task_state::{TaskState, rfc3339};
use crate::workload::Workload;

/// One target as the queue knows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Where the image is mirrored: `registry/repo:tag` or `registry/repo@digest`. With `$arch` from
    /// the image, the name the last attempt gave it (before any attempt, without that segment).
    /// Empty (`null` in JSON) for an excluded image.
    #[serde(serialize_with = "empty_as_null")]
    pub target: String,
    /// The task's identity ([`TargetKey`](super::TargetKey)): `target` without a `$arch` segment
    /// taken from the image; empty for an excluded image.
    #[serde(skip)]
    pub key: String,
    /// The source reference of the latest request.
    pub source: String,
    /// Where it stands.
    pub state: TaskState,
    /// Digest written or found at the target by the last successful attempt.
    pub digest: Option<Digest>,
    /// Error of the last attempt, if it failed.
    pub last_error: Option<String>,
    /// When a target in cooldown, or failed with the cooldown disabled, is retried.
    #[serde(serialize_with = "rfc3339")]
    pub next_retry: Option<SystemTime>,
    /// Who uses the image (the most recent few), shown as `Deployment shop/web`.
    pub users: Vec<Workload>,
    /// When the last attempt started.
    #[serde(serialize_with = "rfc3339")]
    pub started: Option<SystemTime>,
    /// When the last attempt ended.
    #[serde(serialize_with = "rfc3339")]
    pub finished: Option<SystemTime>,
    /// For an excluded image: the `excludeRegistries` entry, or the target registry, it falls under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded_by: Option<String>,
    /// For an image in conflict: the source that keeps its target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_source: Option<String>,
    /// Signatures, attestations and SBOMs the target holds for the image, as last looked for
    /// (`referrersInterval`); absent before the first look or with `referrers: none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrers: Option<u32>,
    /// The declarative objects (`Image`, Flux `ImageRepository`) asking for the target, each with
    /// what stands in the way of its copies now (a `spec.secretRef` Secret that cannot be used);
    /// left out when none does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub declared_by: Vec<DeclaringObject>,
}

impl TaskStatus {
    /// The status of an image the plan leaves out.
    pub fn excluded(image: &ExcludedImage) -> TaskStatus {
        TaskStatus {
            target: String::new(),
            key: String::new(),
            source: image.source.clone(),
            state: TaskState::Excluded,
            digest: None,
            last_error: None,
            next_retry: None,
            users: image.users.clone(),
            started: None,
            finished: None,
            excluded_by: Some(image.rule.clone()),
            kept_source: None,
            referrers: None,
            declared_by: vec![],
        }
    }

    /// The status of `image`, which `pod` fails to pull from the target registry and which copy on
    /// the fly found no source for (`message` says why).
    pub fn unmatched(image: String, pod: Workload, message: String) -> TaskStatus {
        TaskStatus {
            target: image,
            key: String::new(),
            source: String::new(),
            state: TaskState::Unmatched,
            digest: None,
            last_error: Some(message),
            next_retry: None,
            users: vec![pod],
            started: None,
            finished: Some(SystemTime::now()),
            excluded_by: None,
            kept_source: None,
            referrers: None,
            declared_by: vec![],
        }
    }

    /// The status of an image whose target another source keeps: never `mirrored`, since the
    /// target holds the other source's content.
    pub fn conflict(conflict: &TargetConflict) -> TaskStatus {
        TaskStatus {
            target: conflict.target.clone(),
            key: String::new(),
            source: conflict.source.clone(),
            state: TaskState::Conflict,
            digest: None,
            last_error: Some(format!(
                "not mirrored: {} is also the target of {}, which keeps it (used first); give each registry its own targets with $registry in the repository prefix",
                conflict.target, conflict.kept
            )),
            next_retry: None,
            users: conflict.users.clone(),
            started: None,
            finished: None,
            excluded_by: None,
            kept_source: Some(conflict.kept.clone()),
            referrers: None,
            declared_by: vec![],
        }
    }
}

/// The images copy on the fly found no source for (a Pod fails to pull them from the target
/// registry and no `onTheFly` rule covers them), as `/status` shows them (state `unmatched`), each
/// for one window after it was reported. Cloning is cheap and every clone is the same list.
#[derive(Clone)]
pub struct UnmatchedImages(moka::sync::Cache<(Workload, String), Arc<TaskStatus>>);

impl UnmatchedImages {
    /// An empty list keeping each image for `window`.
    pub fn new(window: std::time::Duration) -> UnmatchedImages {
        UnmatchedImages(
            moka::sync::Cache::builder()
                .max_capacity(super::DEFAULT_STATUS_CAPACITY)
                .time_to_live(window)
                .build(),
        )
    }

    /// Whether `image` of `pod` is listed.
    pub fn contains(&self, pod: &Workload, image: &str) -> bool {
        self.0.contains_key(&(pod.clone(), image.to_owned()))
    }

    /// Lists `image` of `pod` with `status`.
    pub fn insert(&self, pod: Workload, image: String, status: TaskStatus) {
        self.0.insert((pod, image), Arc::new(status));
    }

    /// Their statuses, sorted by image, then Pod.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        let mut all: Vec<TaskStatus> = self.0.iter().map(|(_, status)| (*status).clone()).collect();
        all.sort_by(|a, b| (&a.target, &a.users).cmp(&(&b.target, &b.users)));
        all
    }
}

/// The images the latest plan leaves out, as `/status` shows them: those excluded, and those in
/// conflict over a target with another source. Set by the plan loop, read by the endpoints. Cloning
/// is cheap and every clone is the same list.
#[derive(Clone, Default)]
pub struct ExcludedImages(Arc<Mutex<(Vec<ExcludedImage>, Vec<TargetConflict>)>>);

impl ExcludedImages {
    /// Replaces the lists (statuses are made only when read, not on every plan).
    pub fn set(&self, images: Vec<ExcludedImage>, conflicts: Vec<TargetConflict>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (images, conflicts);
    }

    /// The statuses of the current lists: excluded images, then conflicts.
    pub fn get(&self) -> Vec<TaskStatus> {
        let lists = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (images, conflicts) = &*lists;
        let excluded = images.iter().map(TaskStatus::excluded);
        excluded.chain(conflicts.iter().map(TaskStatus::conflict)).collect()
    }
}

fn empty_as_null<S: Serializer>(s: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match s {
        "" => serializer.serialize_none(),
        s => serializer.serialize_str(s),
    }
}

/// Totals since the queue started, and the current gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueCounters {
    /// Tasks submitted (before shutdown).
    pub submitted: u64,
    /// Submissions merged into a task of the same target already queued, running or cooling down.
    pub merged: u64,
    /// Submissions (or dequeued tasks) skipped because the positive cache knows the target is mirrored.
    pub skipped_by_cache: u64,
    /// Copies that wrote content.
    pub copied: u64,
    /// Copies that found the content already at the target.
    pub present: u64,
    /// Images read through a pull-through cache target.
    pub warmed: u64,
    /// Dry-run copies that would have written content.
    pub would_copy: u64,
    /// Tasks only logged because of `dryPull`.
    pub dry_pulled: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Targets re-queued after a cooldown (expired or reset).
    pub retried: u64,
    /// Extra runs because the request changed while a copy of the target ran.
    pub reruns: u64,
    /// Blob bytes moved by the queue's copies.
    pub bytes: u64,
    /// Tasks waiting for a worker now.
    pub queued: usize,
    /// Copies running now.
    pub running: usize,
    /// Targets in cooldown now.
    pub cooling_down: usize,
}

/// The counters' atomic storage.
#[derive(Default)]
pub(super) struct Counters {
    pub submitted: AtomicU64,
    pub merged: AtomicU64,
    pub skipped_by_cache: AtomicU64,
    pub copied: AtomicU64,
    pub present: AtomicU64,
    pub warmed: AtomicU64,
    pub would_copy: AtomicU64,
    pub dry_pulled: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub reruns: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals, with the gauges left at zero.
    pub fn totals(&self) -> QueueCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueCounters {
            submitted: get(&self.submitted),
            merged: get(&self.merged),
            skipped_by_cache: get(&self.skipped_by_cache),
            copied: get(&self.copied),
            present: get(&self.present),
            warmed: get(&self.warmed),
            would_copy: get(&self.would_copy),
            dry_pulled: get(&self.dry_pulled),
            failed: get(&self.failed),
            retried: get(&self.retried),
            reruns: get(&self.reruns),
            bytes: get(&self.bytes),
            ..QueueCounters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_for_the_status_endpoint() {
        let status = TaskStatus {
            target: "r.io/nginx:1.27".into(),
            key: "r.io/nginx:1.27".into(),
            source: "docker.io/library/nginx:1.27".into(),
            state: TaskState::DryRun,
            digest: None,
            last_error: None,
            next_retry: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400)),
            users: vec![Workload::new(crate::workload::Kind::Deployment, "a", "web")],
            started: None,
            finished: None,
            excluded_by: None,
            kept_source: None,
            referrers: Some(3),
            declared_by: vec![],
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["referrers"], 3);
        assert_eq!(json["state"], "dry-run");
        assert_eq!(json["nextRetry"], "1970-01-02T00:00:00.000Z");
        assert_eq!(json["lastError"], serde_json::Value::Null);
        assert_eq!(json["users"], serde_json::json!(["Deployment a/web"]));
        assert_eq!(TaskState::DryRun.to_string(), "dry-run");
        assert!(json.get("excludedBy").is_none());

        let excluded = TaskStatus::excluded(&ExcludedImage {
            source: "quay.io/org/app:1".into(),
            rule: "quay.io".into(),
            users: vec![],
        });
        let json = serde_json::to_value(&excluded).unwrap();
        assert_eq!(json["state"], "excluded");
        assert_eq!(json["target"], serde_json::Value::Null);
        assert_eq!(json["excludedBy"], "quay.io");

        let conflict = TaskStatus::conflict(&TargetConflict {
            target: "r.io/team/app:1".into(),
            source: "b.example/team/app:1".into(),
            kept: "a.example/team/app:1".into(),
            users: vec![],
        });
        let json = serde_json::to_value(&conflict).unwrap();
        assert_eq!(json["state"], "conflict");
        assert_eq!(json["target"], "r.io/team/app:1");
        assert_eq!(json["source"], "b.example/team/app:1");
        assert_eq!(json["keptSource"], "a.example/team/app:1");
        assert!(json["lastError"].as_str().unwrap().contains("$registry"), "{json}");
        assert!(json.get("excludedBy").is_none());
    }
}
