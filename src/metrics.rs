//! Prometheus metrics served at `/metrics`. k8s-copycat's four registry counters keep their names
//! and labels; the rest share the `k8s_copycat_` prefix.
//!
//! Counters and the histogram are recorded by the queue when an attempt ends
//! ([`Metrics::mirror_succeeded`], [`Metrics::mirror_failed`]); gauges are refreshed from the queue
//! just before each scrape ([`Metrics::observe_queue`]).

use std::time::{Duration, SystemTime};

use prometheus::{Encoder as _, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder};

use crate::copy::{CopyError, CopyReport, Outcome};
use crate::queue::{TaskState, TaskStatus};
use crate::registry::RegistryError;

const PREFIX: &str = "k8s_copycat_";

/// Every metric copycat exports, on its own registry.
pub struct Metrics {
    registry: prometheus::Registry,
    pull_success: IntCounterVec,
    pull_error: IntCounterVec,
    push_success: IntCounterVec,
    push_error: IntCounterVec,
    bytes_copied: IntCounter,
    blobs: IntCounterVec,
    duration: prometheus::HistogramVec,
    last_success: IntGauge,
    tasks: IntGaugeVec,
    images_tracked: IntGauge,
    ratelimit: IntGaugeVec,
    leader: IntGauge,
    watch_events: IntCounterVec,
    verified_present: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Which side of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reading the source (or one of its read mirrors).
    Pull,
    /// Writing (or checking) the target.
    Push,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered at zero.
    pub fn new() -> Metrics {
        let registry = prometheus::Registry::new();
        let counter_vec = |name: &str, help: &str| {
            let c =
                IntCounterVec::new(Opts::new(format!("{PREFIX}{name}"), help), &["registry"]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let pull_success = counter_vec(
            "registry_pull_success_total",
            "Source manifests read (or matched) for a mirror attempt, by source registry.",
        );
        let pull_error = counter_vec(
            "registry_pull_error_total",
            "Mirror attempts that failed reading the source, by source registry.",
        );
        let push_success = counter_vec(
            "registry_push_success_total",
            "Mirror attempts that wrote content to the target, by target registry.",
        );
        let push_error = counter_vec(
            "registry_push_error_total",
            "Mirror attempts that failed checking or writing the target, by target registry.",
        );
        let bytes_copied = IntCounter::new(
            format!("{PREFIX}bytes_copied_total"),
            "Blob bytes streamed from source to target registries.",
        )
        .expect("valid metric");
        let blobs = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}blobs_total"),
                "Blobs of mirrored images, by how they reached the target: skipped (already there), mounted (linked from another repository), transferred (streamed).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["skipped", "mounted", "transferred"] {
            blobs.with_label_values(&[outcome]);
        }
        let duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}mirror_duration_seconds"),
                "Duration of mirror attempts, by result (copied, present, would-copy, failed).",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let last_success = IntGauge::new(
            format!("{PREFIX}last_success_timestamp_seconds"),
            "Unix time of the last attempt that left a target mirrored (copied or already present); 0: none yet.",
        )
        .expect("valid metric");
        let tasks = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}tasks"),
                "Targets the queue knows, by state (finished ones: the most recent, bounded).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let images_tracked = IntGauge::new(
            format!("{PREFIX}images_tracked"),
            "Targets the latest plan derived from what the cluster runs.",
        )
        .expect("valid metric");
        let ratelimit = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}dockerhub_ratelimit_remaining"),
                "Last ratelimit-remaining Docker Hub reported; absent until it reports one.",
            ),
            &["registry"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            format!("{PREFIX}leader"),
            "1 while this replica holds the leader-election Lease and mirrors (always with LEADER_ELECT=false), else 0.",
        )
        .expect("valid metric");
        let watch_events = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}watch_events_total"),
                "Events the cluster watchers received, by kind (Deployment, Pod, ReplicaSet, …) and event (applied, deleted, restarted: a (re)list began).",
            ),
            &["kind", "event"],
        )
        .expect("valid metric");
        let verified_present = IntCounter::new(
            format!("{PREFIX}images_verified_present_total"),
            "Mirror attempts that found the target already holding the source's digest, so nothing was copied.",
        )
        .expect("valid metric");
        for m in [
            Box::new(bytes_copied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(blobs.clone()),
            Box::new(duration.clone()),
            Box::new(last_success.clone()),
            Box::new(tasks.clone()),
            Box::new(images_tracked.clone()),
            Box::new(ratelimit.clone()),
            Box::new(leader.clone()),
            Box::new(watch_events.clone()),
            Box::new(verified_present.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        for state in TaskState::ALL {
            tasks.with_label_values(&[state.as_str()]).set(0);
        }
        Metrics {
            registry,
            pull_success,
            pull_error,
            push_success,
            push_error,
            bytes_copied,
            blobs,
            duration,
            last_success,
            tasks,
            images_tracked,
            ratelimit,
            leader,
            watch_events,
            verified_present,
        }
    }

    /// A successful attempt from `source` to `target` (registry hosts): the source was read or
    /// matched; the target was written only when `outcome` is [`Outcome::Copied`].
    pub fn mirror_succeeded(&self, source: &str, target: &str, report: &CopyReport, took: Duration) {
        let outcome = report.outcome;
        self.pull_success.with_label_values(&[&registry_label(source)]).inc();
        for (label, n) in [
            ("skipped", report.blobs_skipped),
            ("mounted", report.blobs_mounted),
            ("transferred", report.blobs_transferred),
        ] {
            self.blobs.with_label_values(&[label]).inc_by(u64::from(n));
        }
        let result = match outcome {
            Outcome::Copied => {
                self.push_success.with_label_values(&[&registry_label(target)]).inc();
                "copied"
            }
            Outcome::AlreadyPresent => {
                self.verified_present.inc();
                "present"
            }
            Outcome::WouldCopy => "would-copy",
        };
        if outcome != Outcome::WouldCopy {
            self.last_success.set(unix_now());
        }
        self.bytes_copied.inc_by(report.bytes);
        self.duration.with_label_values(&[result]).observe(took.as_secs_f64());
    }

    /// A failed attempt; counted as a pull or push error by [`error_side`]. `error` is `None` when
    /// the copy did not return one (it panicked): only the duration is recorded.
    pub fn mirror_failed(&self, source: &str, target: &str, error: Option<&CopyError>, took: Duration) {
        match error.map(|e| error_side(e, target)) {
            Some(Side::Pull) => self.pull_error.with_label_values(&[&registry_label(source)]).inc(),
            Some(Side::Push) => self.push_error.with_label_values(&[&registry_label(target)]).inc(),
            None => {}
        }
        self.duration.with_label_values(&["failed"]).observe(took.as_secs_f64());
    }

    /// Refreshes the task gauges from a queue snapshot.
    pub fn observe_queue(&self, snapshot: &[TaskStatus]) {
        for state in TaskState::ALL {
            let n = snapshot.iter().filter(|s| s.state == state).count();
            self.tasks.with_label_values(&[state.as_str()]).set(n as i64);
        }
    }

    /// Counts one watch event of `kind` (`Deployment`, …): `applied`, `deleted` or `restarted`.
    pub fn watch_event(&self, kind: &str, event: &str) {
        self.watch_events.with_label_values(&[kind, event]).inc();
    }

    /// Sets how many targets the latest plan holds.
    pub fn set_images_tracked(&self, n: usize) {
        self.images_tracked.set(n as i64);
    }

    /// Sets whether this replica leads (mirrors).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Sets Docker Hub's last reported `ratelimit-remaining`, if it reported one.
    pub fn set_dockerhub_ratelimit(&self, remaining: Option<u64>) {
        if let Some(n) = remaining {
            self.ratelimit
                .with_label_values(&["docker.io"])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The `registry` label: the host lower-cased, Docker Hub under any of its names as `docker.io`
/// (k8s-copycat's `registryLabel`).
pub fn registry_label(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let host = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

/// Which side a failed copy failed on. A registry failure names its host (in the request URL, or
/// as the registry that refused authentication or is rate limited): the target host means push,
/// any other host (the source, a read mirror, Docker Hub's API host) means pull. Failures naming no
/// host: a digest mismatch is bad source content (pull), anything else counts against the target.
/// Copy-level failures: a missing source, an unusable manifest or platform list are pull errors;
/// a tag conflict, an unpreparable target repository and the whole-image deadline are push errors.
pub fn error_side(error: &CopyError, target_host: &str) -> Side {
    match error {
        CopyError::Registry { source, .. } => match error_host(source) {
            Some(host) if registry_label(&host) == registry_label(target_host) => Side::Push,
            Some(_) => Side::Pull,
            None if matches!(source, RegistryError::DigestMismatch { .. }) => Side::Pull,
            None => Side::Push,
        },
        CopyError::SourceNotFound(_) | CopyError::Manifest { .. } | CopyError::Platforms { .. } => Side::Pull,
        CopyError::TagConflict { .. }
        | CopyError::Repository(_)
        | CopyError::TargetName(_)
        | CopyError::DeadlineExceeded { .. } => Side::Push,
    }
}

/// The registry host a registry error names, if any.
fn error_host(error: &RegistryError) -> Option<String> {
    let url_host = |text: &str| {
        let rest = &text[text.find("://")? + 3..];
        let host = rest.split(['/', ' ', '?']).next()?;
        (!host.is_empty()).then(|| host.to_owned())
    };
    match error {
        RegistryError::Status { url, .. } => url_host(url),
        RegistryError::Transport { context, .. } => url_host(context),
        RegistryError::Auth { registry, .. } | RegistryError::RateLimited { registry, .. } => Some(registry.clone()),
        RegistryError::DigestMismatch { .. } | RegistryError::Invalid(_) => None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_error(e: RegistryError) -> CopyError {
        CopyError::Registry {
            action: "x".into(),
            source: e,
        }
    }

    fn status(url: &str) -> RegistryError {
        RegistryError::Status {
            method: "GET",
            url: url.into(),
            status: 500,
            detail: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn labels_name_the_registry_host() {
        assert_eq!(registry_label("docker.io"), "docker.io");
        assert_eq!(registry_label("Registry-1.Docker.io"), "docker.io");
        assert_eq!(registry_label("index.docker.io"), "docker.io");
        assert_eq!(registry_label("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_label("https://GHCR.io/owner"), "ghcr.io");
    }

    #[test]
    fn failures_are_classified_by_the_host_they_name() {
        let t = "r.example:5000";
        let cases = [
            (
                registry_error(status("http://r.example:5000/v2/a/manifests/1")),
                Side::Push,
            ),
            (
                registry_error(status("https://registry-1.docker.io/v2/library/nginx/manifests/1")),
                Side::Pull,
            ),
            (
                registry_error(RegistryError::Auth {
                    registry: "r.example:5000".into(),
                    detail: "denied".into(),
                }),
                Side::Push,
            ),
            (
                registry_error(RegistryError::RateLimited {
                    registry: "docker.io".into(),
                    retry_after: Duration::from_secs(1),
                }),
                Side::Pull,
            ),
            (
                registry_error(RegistryError::Transport {
                    context: "PUT http://r.example:5000/v2/a/blobs/uploads/x".into(),
                    source: "reset".into(),
                }),
                Side::Push,
            ),
            (
                registry_error(RegistryError::Transport {
                    context: "GET https://ghcr.io/v2/a/blobs/sha256:1".into(),
                    source: "reset".into(),
                }),
                Side::Pull,
            ),
            (
                registry_error(RegistryError::DigestMismatch {
                    digest: "sha256:1".into(),
                    detail: "size".into(),
                }),
                Side::Pull,
            ),
            (CopyError::SourceNotFound("ghcr.io/a:1".into()), Side::Pull),
            (
                CopyError::DeadlineExceeded {
                    target: "r.example:5000/a:1".into(),
                    after: Duration::from_secs(1),
                },
                Side::Push,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error_side(&error, t), want, "{error}");
        }
    }

    #[test]
    fn outcomes_count_on_the_right_side_and_render() {
        let m = Metrics::new();
        let report = |outcome, bytes, blobs: [u32; 3]| CopyReport {
            outcome,
            source_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap(),
            digest: None,
            bytes,
            blobs_skipped: blobs[0],
            blobs_mounted: blobs[1],
            blobs_transferred: blobs[2],
            missing_platforms: vec![],
            filtered: false,
        };
        let copied = report(Outcome::Copied, 10, [1, 2, 3]);
        m.mirror_succeeded("docker.io", "r.io", &copied, Duration::from_millis(5));
        let present = report(Outcome::AlreadyPresent, 0, [0, 0, 0]);
        m.mirror_succeeded("registry-1.docker.io", "r.io", &present, Duration::ZERO);
        m.mirror_failed(
            "ghcr.io",
            "r.io",
            Some(&CopyError::SourceNotFound("ghcr.io/a:1".into())),
            Duration::ZERO,
        );
        m.mirror_failed("ghcr.io", "r.io", None, Duration::ZERO);
        m.set_dockerhub_ratelimit(None);
        let text = m.render();
        assert!(
            text.contains(r#"k8s_copycat_registry_pull_success_total{registry="docker.io"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"k8s_copycat_registry_push_success_total{registry="r.io"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"k8s_copycat_registry_pull_error_total{registry="ghcr.io"} 1"#),
            "{text}"
        );
        assert!(!text.contains("k8s_copycat_registry_push_error_total{"), "{text}");
        assert!(text.contains("k8s_copycat_bytes_copied_total 10"), "{text}");
        for line in [
            r#"k8s_copycat_blobs_total{outcome="skipped"} 1"#,
            r#"k8s_copycat_blobs_total{outcome="mounted"} 2"#,
            r#"k8s_copycat_blobs_total{outcome="transferred"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains("k8s_copycat_images_verified_present_total 1"), "{text}");
        assert!(
            text.contains(r#"k8s_copycat_mirror_duration_seconds_count{result="failed"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"k8s_copycat_tasks{state="mirrored"} 0"#), "{text}");
        assert!(
            !text.contains("dockerhub_ratelimit_remaining{"),
            "absent until known: {text}"
        );
        m.set_dockerhub_ratelimit(Some(97));
        assert!(
            m.render()
                .contains(r#"k8s_copycat_dockerhub_ratelimit_remaining{registry="docker.io"} 97"#)
        );
    }
}
