//! Copy on the fly (`onTheFly`): when a Pod fails to pull an image from the target registry, copy it
//! there from its source, ahead of routine work, so that the kubelet's next pull retry succeeds.
//!
//! The Pod watch already carries the container statuses ([`pull_failures`](crate::discovery::pull_failures));
//! the plan loop hands the failing containers of each Pod update to [`OnTheFly::observe`]. An image
//! on the target registry is mapped back to its source by the `onTheFly.rules` ([`reverse`]: the
//! longest matching mirror prefix wins) and submitted to the queue as an urgent task whose target is
//! exactly the image the Pod asked for. An image no rule covers is reported once per Pod and image
//! per window (log line, `unmatched` in `/status` and the metrics, a Warning Event on the Pod), never
//! guessed. A copy that fails (a source that does not exist, say) is reported by the queue like any
//! failure: a `MirrorFailed` Warning Event on the Pod naming the source tried, once per cooldown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::OnTheFlyRule;
use crate::copy::CopyRequest;
use crate::discovery::pull_failures::PullFailure;
use crate::events::Notice;
use crate::metrics::Metrics;
use crate::plan::{MirrorTask, TargetKey};
use crate::queue::{DEFAULT_STATUS_CAPACITY, Interest, Queue, TaskOutcome, TaskStatus, UnmatchedImages};
use crate::reference::{ImageRef, canonical_host};
use crate::workload::{Kind, Workload};

/// The reason of the Warning Event on a Pod whose failing image no rule maps to a source.
pub const UNMATCHED_REASON: &str = "MirrorSourceUnknown";

/// How long the first failed pull of a target is remembered while its copy is pending.
const FIRST_SEEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why an image on the target registry has no source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreversible {
    /// No rule's mirror prefix covers the image.
    #[error("no onTheFly rule covers it (mirror prefixes: {prefixes})")]
    Unmatched {
        /// The configured mirror prefixes, comma-separated.
        prefixes: String,
    },
    /// The rule that covers it names no valid source reference.
    #[error("the rule {mirror} → {upstream} makes {source_text}, which is no valid image reference: {error}")]
    Invalid {
        /// The rule's mirror prefix.
        mirror: String,
        /// The rule's source.
        upstream: String,
        /// The reference the rule made.
        source_text: String,
        /// Why it does not parse.
        error: String,
    },
}

/// The source of `image` (an image on the target registry) by `rules`: the rule with the longest
/// mirror prefix that `image`'s repository lies under maps that prefix to its source, the rest of
/// the path, the tag and the digest kept (`registry.example.com/dockerhub` → `docker.io` maps
/// `registry.example.com/dockerhub/nginx:1` to `docker.io/library/nginx:1`).
pub fn reverse(rules: &[OnTheFlyRule], image: &ImageRef) -> Result<ImageRef, Unreversible> {
    let name = image.name();
    let rule = rules
        .iter()
        .filter(|r| {
            name.strip_prefix(r.mirror.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|r| r.mirror.len())
        .ok_or_else(|| Unreversible::Unmatched {
            prefixes: rules.iter().map(|r| r.mirror.as_str()).collect::<Vec<_>>().join(", "),
        })?;
    let rest = &name[rule.mirror.len() + 1..];
    let mut text = format!("{}/{rest}", rule.source);
    if let Some(tag) = image.tag() {
        text = format!("{text}:{tag}");
    }
    if let Some(digest) = image.digest() {
        text = format!("{text}@{digest}");
    }
    ImageRef::parse(&text).map_err(|e| Unreversible::Invalid {
        mirror: rule.mirror.clone(),
        upstream: rule.source.clone(),
        source_text: text.clone(),
        error: e.to_string(),
    })
}

/// Copy on the fly, running: submits the failing images of the Pods it is shown and records the
/// outcomes of their copies.
pub struct OnTheFly {
    rules: Vec<OnTheFlyRule>,
    /// The target registry's host, canonical: only images there are copycat's to copy.
    target_host: String,
    queue: Queue,
    metrics: Arc<Metrics>,
    /// Where Warning Events are asked for (none when Events are off).
    notices: Option<mpsc::Sender<crate::events::Notice>>,
    /// Whether this replica leads; only the leader submits.
    leading: watch::Receiver<bool>,
    /// (Pod, image) pairs reported unmatched in the current window, with their status.
    unmatched: UnmatchedImages,
    /// When a failed pull of each target was first seen, until its copy is done.
    first_seen: moka::sync::Cache<TargetKey, Instant>,
    /// Records the queue's outcomes of urgent targets.
    outcomes: JoinHandle<()>,
}

impl Drop for OnTheFly {
    fn drop(&mut self) {
        self.outcomes.abort();
    }
}

impl OnTheFly {
    /// Copy on the fly into the registry `target` (`host[:port][/path]`) by `rules`, through
    /// `queue`; unmatched images are reported once per `window`, with Events through `notices`.
    pub fn start(
        rules: Vec<OnTheFlyRule>,
        target: &str,
        queue: Queue,
        metrics: Arc<Metrics>,
        notices: Option<mpsc::Sender<Notice>>,
        leading: watch::Receiver<bool>,
        window: Duration,
    ) -> OnTheFly {
        metrics.enable_on_the_fly();
        let first_seen: moka::sync::Cache<TargetKey, Instant> = moka::sync::Cache::builder()
            .max_capacity(DEFAULT_STATUS_CAPACITY)
            .time_to_live(FIRST_SEEN_TTL)
            .build();
        let (to, mut outcomes) = mpsc::unbounded_channel::<TaskOutcome>();
        queue.report_outcomes(Interest::Urgent, to);
        let recorder = {
            let (metrics, first_seen) = (metrics.clone(), first_seen.clone());
            tokio::spawn(async move {
                while let Some(outcome) = outcomes.recv().await {
                    record(&metrics, &first_seen, &outcome);
                }
            })
        };
        OnTheFly {
            rules,
            target_host: canonical_host(target),
            queue,
            metrics,
            notices,
            leading,
            unmatched: UnmatchedImages::new(window),
            first_seen,
            outcomes: recorder,
        }
    }

    /// The images found without a source, for `/status`.
    pub fn unmatched(&self) -> UnmatchedImages {
        self.unmatched.clone()
    }

    /// Handles the containers of Pod `namespace/name` waiting on failed pulls: each image on the
    /// target registry is copied from the source its rule names, or reported when none does.
    /// Followers do nothing (the leader copies).
    pub fn observe(&self, namespace: &str, name: &str, failures: &[PullFailure]) {
        if failures.is_empty() || !*self.leading.borrow() {
            return;
        }
        let pod = Workload::new(Kind::Pod, namespace, name);
        for failure in failures {
            let Ok(image) = ImageRef::parse(&failure.image) else {
                continue; // the kubelet reports an invalid name itself
            };
            if image.registry() != self.target_host {
                continue; // not copycat's registry: nothing it can copy
            }
            match reverse(&self.rules, &image) {
                Ok(source) => self.submit(&pod, failure, image, source),
                Err(why) => self.report_unmatched(&pod, failure, &image, &why),
            }
        }
    }

    fn submit(&self, pod: &Workload, failure: &PullFailure, image: ImageRef, source: ImageRef) {
        let target_tag = image.tag().map(str::to_owned);
        let task = MirrorTask::new(CopyRequest {
            source,
            target: image,
            target_tag,
        })
        .with_user(pod.clone());
        let (key, source) = (task.key(), task.request.source.clone());
        // Set before submitting, so that an outcome reported at once finds it.
        let first = !self.first_seen.contains_key(&key);
        self.first_seen.get_with(key.clone(), Instant::now);
        if !self.queue.submit_urgent(task) {
            // Known mirrored (the kubelet has not retried yet): nothing to time.
            if first {
                self.first_seen.invalidate(&key);
            }
            return;
        }
        if first {
            tracing::info!(pod = %pod, container = failure.container, reason = failure.reason,
                source = %source, target = %key, "a Pod fails to pull an image on the target registry: copying it on the fly");
        }
    }

    fn report_unmatched(&self, pod: &Workload, failure: &PullFailure, image: &ImageRef, why: &Unreversible) {
        if self.unmatched.contains(pod, &image.to_string()) {
            return;
        }
        tracing::warn!(pod = %pod, container = failure.container, image = %image, reason = %why,
            "a Pod fails to pull an image on the target registry that no onTheFly rule maps to a source: not copied");
        self.metrics.on_the_fly("unmatched", None);
        let message = format!("Cannot copy {image} on the fly: {why}; not copied");
        let status = TaskStatus::unmatched(image.to_string(), pod.clone(), message.clone());
        self.unmatched.insert(pod.clone(), image.to_string(), status);
        if let Some(notices) = &self.notices {
            let notice = Notice {
                key: format!("{pod}|{image}"),
                users: vec![pod.clone()],
                reason: UNMATCHED_REASON,
                message,
            };
            let _ = notices.try_send(notice);
        }
    }
}

/// Counts the outcome of an urgent copy and, once the target holds the image, how long after the
/// failed pull was first seen.
fn record(metrics: &Metrics, first_seen: &moka::sync::Cache<TargetKey, Instant>, outcome: &TaskOutcome) {
    match outcome.result {
        "copied" | "present" => {
            let since = first_seen.remove(&outcome.target).map(|at| at.elapsed());
            metrics.on_the_fly(outcome.result, since);
        }
        "failed" => metrics.on_the_fly("failed", None),
        _ => {} // dry runs copy nothing; pull-through caches (warmed) are no target of it
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mirror: &str, source: &str) -> OnTheFlyRule {
        OnTheFlyRule {
            mirror: mirror.into(),
            source: source.into(),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn images_map_back_by_the_longest_matching_mirror_prefix() {
        let rules = [
            rule("r.example/dockerhub", "docker.io"),
            rule("r.example/dockerhub/bitnami", "ghcr.io/bitnami-mirror"),
            rule("r.example/ghcr", "ghcr.io"),
            rule("r.example:5000", "quay.io/all"),
        ];
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("r.example/dockerhub/library/app:1.0", Ok("docker.io/library/app:1.0")),
            // Docker Hub's implied library/ comes back through the parser.
            ("r.example/dockerhub/nginx:1", Ok("docker.io/library/nginx:1")),
            ("r.example/dockerhub/nginx", Ok("docker.io/library/nginx:latest")),
            (
                &format!("r.example/dockerhub/nginx@{D}"),
                Ok(&format!("docker.io/library/nginx@{D}")),
            ),
            (
                &format!("r.example/ghcr/acme/web:2@{D}"),
                Ok(&format!("ghcr.io/acme/web:2@{D}")),
            ),
            // The longer prefix wins whatever the order of the rules.
            (
                "r.example/dockerhub/bitnami/redis:7",
                Ok("ghcr.io/bitnami-mirror/redis:7"),
            ),
            ("r.example:5000/a/b:1", Ok("quay.io/all/a/b:1")),
            // A prefix matches whole path segments only.
            ("r.example/dockerhubx/nginx:1", Err("no onTheFly rule covers it")),
            ("r.example/dockerhub:1", Err("no onTheFly rule covers it")),
            ("r.example/other/app:1", Err("no onTheFly rule covers it")),
            ("elsewhere.example/dockerhub/app:1", Err("no onTheFly rule covers it")),
        ];
        for (image, want) in cases {
            let got = reverse(&rules, &ImageRef::parse(image).unwrap())
                .map(|s| s.to_string())
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{image}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{image}: {got}"),
                (got, want) => panic!("{image}: got {got:?}, want {want:?}"),
            }
        }
        let unmatched = reverse(&rules[..1], &ImageRef::parse("r.example/x/y:1").unwrap()).unwrap_err();
        assert_eq!(
            unmatched.to_string(),
            "no onTheFly rule covers it (mirror prefixes: r.example/dockerhub)"
        );
    }

    #[test]
    fn a_rule_making_no_valid_reference_says_so() {
        // A long source path plus a long image path: more than the 255 characters a name may have.
        let long = "a".repeat(200);
        let rules = [rule("r.example/x", &format!("ghcr.io/{long}"))];
        let image = ImageRef::parse(&format!("r.example/x/{}:1", "b".repeat(100))).unwrap();
        match reverse(&rules, &image) {
            Err(e @ Unreversible::Invalid { .. }) => {
                assert!(e.to_string().starts_with("the rule r.example/x → ghcr.io/aaaa"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
