//! Prometheus metrics served at `/metrics`. k8s-copycat's four registry counters keep their names
//! and labels; the rest share the `k8s_copycat_` prefix.
//!
//! Counters and the histogram are recorded by the queue when an attempt ends
//! ([`Metrics::mirror_succeeded`], [`Metrics::mirror_failed`]); gauges are refreshed from the queue
//! just before each scrape ([`Metrics::observe_queue`]).

use std::time::{Duration, SystemTime};

use prometheus::{
    Encoder as _, Gauge, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
};

use crate::copy::referrers::ReferrerSource;
use crate::copy::{CopyError, CopyReport, Outcome};
use crate::reference::{DOCKER_HUB, canonical_host};
use crate::registry::Side;
use crate::task_state::{BackupState, DrillResult, TaskState};

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
    referrers: IntCounterVec,
    referrer_errors: IntCounter,
    duration: prometheus::HistogramVec,
    last_success: IntGauge,
    tasks: IntGaugeVec,
    images_tracked: IntGauge,
    conflicts: IntGaugeVec,
    ratelimit: IntGaugeVec,
    leader: IntGauge,
    watch_events: IntCounterVec,
    status_write_errors: IntCounterVec,
    plan_passes: IntCounterVec,
    verified_present: IntCounter,
    backup: BackupGauges,
    drills: DrillMetrics,
    on_the_fly: OnTheFlyMetrics,
    flux: FluxMetrics,
}

/// The Flux `ImageRepository` metrics, registered only when they are followed ([`Metrics::enable_flux`]).
struct FluxMetrics {
    scans: IntCounterVec,
    secret_errors: IntCounterVec,
    enabled: std::sync::atomic::AtomicBool,
}

/// The results `k8s_copycat_flux_scans_total` counts.
pub const FLUX_SCAN_RESULTS: [&str; 3] = ["mirrored", "unchanged", "invalid"];

/// The reasons `k8s_copycat_flux_secret_ref_errors_total` counts.
pub const FLUX_SECRET_ERRORS: [&str; 5] = ["not_found", "unreadable", "not_docker_config", "invalid", "no_entry"];

/// The reasons `k8s_copycat_status_write_errors_total` counts.
pub const STATUS_WRITE_ERRORS: [&str; 5] = ["forbidden", "not_found", "conflict", "invalid", "other"];

/// The copy-on-the-fly metrics, registered only when it is enabled ([`Metrics::enable_on_the_fly`]).
struct OnTheFlyMetrics {
    copies: IntCounterVec,
    seconds: prometheus::Histogram,
    enabled: std::sync::atomic::AtomicBool,
}

/// The results `k8s_copycat_on_the_fly_copies_total` counts.
pub const ON_THE_FLY_RESULTS: [&str; 4] = ["copied", "present", "failed", "unmatched"];

/// The restore drill metrics, registered only when drills run ([`Metrics::enable_restore_drill`]).
struct DrillMetrics {
    total: IntCounterVec,
    duration: prometheus::Histogram,
    last_success: IntGauge,
    enabled: std::sync::atomic::AtomicBool,
}

/// The backup-coverage gauges, registered only when periodic verification runs
/// ([`Metrics::enable_backup`]): without it they would claim a coverage nobody measured.
struct BackupGauges {
    images: IntGaugeVec,
    coverage: Gauge,
    oldest_unverified: Gauge,
    repairs: IntCounter,
    enabled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
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
            "Blob bytes streamed from source to target registries (for a pull-through cache target: read through it).",
        )
        .expect("valid metric");
        let blobs = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}blobs_total"),
                "Blobs of mirrored images, by how they reached the target: skipped (already there), mounted (linked from another repository), transferred (streamed), warmed (read through a pull-through cache target).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["skipped", "mounted", "transferred", "warmed"] {
            blobs.with_label_values(&[outcome]);
        }
        let referrers = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}referrers_copied_total"),
                "Signatures, attestations and SBOMs copied with mirrored images, by where they were found: cosign-tag (sha256-<hex>.sig/.att/.sbom), referrers-api (the source's Referrers API), fallback-tag (the source's sha256-<hex> referrers index).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for source in ReferrerSource::ALL {
            referrers.with_label_values(&[source.label()]);
        }
        let referrer_errors = IntCounter::new(
            format!("{PREFIX}referrer_errors_total"),
            "Looks for an image's related artifacts that failed (the image itself was mirrored; tried again at the next referrersInterval).",
        )
        .expect("valid metric");
        let duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}mirror_duration_seconds"),
                "Duration of mirror attempts, by result (copied, present, warmed, would-copy, failed).",
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
        let conflicts = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}target_conflicts"),
                "1 for each image the latest plan leaves out because another source (kept) names the same target; absent when there is none.",
            ),
            &["target", "source", "kept"],
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
        let status_write_errors = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}status_write_errors_total"),
                "Status writes on declarative objects (the images/status patch of an Image) the API server refused, by resource and reason: forbidden (403, RBAC), not_found (404: the object is gone or its CRD has no status subresource), conflict (409), invalid (400 or 422: the CRD's schema refuses it), other (any other answer, or none).",
            ),
            &["resource", "reason"],
        )
        .expect("valid metric");
        let plan_passes = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}plan_passes_total"),
                "Plan passes, by pass: full (every target merged again: the first plan after the initial lists, a rescan, a Node platform or pull-secret change) or incremental (only the objects that changed; a pass that leaves the plan as it was hands nothing on and is not counted).",
            ),
            &["pass"],
        )
        .expect("valid metric");
        let verified_present = IntCounter::new(
            format!("{PREFIX}images_verified_present_total"),
            "Mirror attempts that found the target already holding the source's digest, so nothing was copied.",
        )
        .expect("valid metric");
        let backup = BackupGauges {
            images: IntGaugeVec::new(
                Opts::new(
                    format!("{PREFIX}backup_images"),
                    "Images of the latest plan by backup state (verified, untagged, pending, missing, mismatch, failed, excluded), from the periodic verification; untagged copies are at risk, not verified.",
                ),
                &["state"],
            )
            .expect("valid metric"),
            coverage: Gauge::new(
                format!("{PREFIX}backup_coverage_ratio"),
                "Verified images / (all images - excluded ones); 1 when none is in scope.",
            )
            .expect("valid metric"),
            oldest_unverified: Gauge::new(
                format!("{PREFIX}backup_oldest_unverified_seconds"),
                "The longest an in-scope image has gone unverified (since its last verification, or since it was first planned); 0 when all are verified.",
            )
            .expect("valid metric"),
            repairs: IntCounter::new(
                format!("{PREFIX}backup_repairs_total"),
                "Targets copied again because a check found them missing parts (whether the copy restored them shows at the next check).",
            )
            .expect("valid metric"),
            enabled: std::sync::atomic::AtomicBool::new(false),
        };
        let drills = DrillMetrics {
            total: IntCounterVec::new(
                Opts::new(
                    format!("{PREFIX}restore_drill_total"),
                    "Restore drills (a target pulled whole from the target registry, every manifest and blob read and re-hashed), by result (passed, failed).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}restore_drill_duration_seconds"),
                    "How long restore drills took to pull one target whole.",
                )
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            )
            .expect("valid metric"),
            last_success: IntGauge::new(
                format!("{PREFIX}restore_drill_last_success_timestamp_seconds"),
                "Unix time of the last restore drill that passed; 0: none yet.",
            )
            .expect("valid metric"),
            enabled: std::sync::atomic::AtomicBool::new(false),
        };
        for m in [
            Box::new(bytes_copied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(blobs.clone()),
            Box::new(referrers.clone()),
            Box::new(referrer_errors.clone()),
            Box::new(duration.clone()),
            Box::new(last_success.clone()),
            Box::new(tasks.clone()),
            Box::new(images_tracked.clone()),
            Box::new(conflicts.clone()),
            Box::new(ratelimit.clone()),
            Box::new(leader.clone()),
            Box::new(watch_events.clone()),
            Box::new(status_write_errors.clone()),
            Box::new(plan_passes.clone()),
            Box::new(verified_present.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        for state in TaskState::ALL {
            tasks.with_label_values(&[state.as_str()]).set(0);
        }
        let on_the_fly = OnTheFlyMetrics {
            copies: IntCounterVec::new(
                Opts::new(
                    format!("{PREFIX}on_the_fly_copies_total"),
                    "Copies on the fly of images Pods failed to pull from the target registry, by result: copied, present (the target held it already), failed (an attempt failed; retried after the cooldown), unmatched (no onTheFly rule names a source; counted once per Pod and image per cooldown).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    format!("{PREFIX}on_the_fly_seconds"),
                    "From the moment copycat first saw a Pod's container waiting on a failed pull of an image (ErrImagePull or ImagePullBackOff in the Pod's status) to the end of the copy that left the target holding it.",
                )
                .buckets(vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
            )
            .expect("valid metric"),
            enabled: std::sync::atomic::AtomicBool::new(false),
        };
        let flux = FluxMetrics {
            scans: IntCounterVec::new(
                Opts::new(
                    format!("{PREFIX}flux_scans_total"),
                    "Flux ImageRepository objects seen with a scan result, by what copycat did: mirrored (a new status.lastScanResult.revision: its tags were handed to the queue), unchanged (the revision copycat last mirrored: nothing), invalid (spec.image or the target named for it is no valid reference).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            secret_errors: IntCounterVec::new(
                Opts::new(
                    format!("{PREFIX}flux_secret_ref_errors_total"),
                    "ImageRepository spec.secretRef Secrets that could not be used when a scan was mirrored (the configured credentials are used instead), by reason: not_found, unreadable (the API refused the get, e.g. RBAC), not_docker_config (no kubernetes.io/dockerconfigjson Secret), invalid (its JSON cannot be read), no_entry (no credentials for spec.image's registry).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            enabled: std::sync::atomic::AtomicBool::new(false),
        };
        Metrics {
            on_the_fly,
            flux,
            registry,
            pull_success,
            pull_error,
            push_success,
            push_error,
            bytes_copied,
            blobs,
            referrers,
            referrer_errors,
            duration,
            last_success,
            tasks,
            images_tracked,
            conflicts,
            ratelimit,
            leader,
            watch_events,
            status_write_errors,
            plan_passes,
            verified_present,
            backup,
            drills,
        }
    }

    /// Registers the restore drill metrics (once; the daemon calls it when drills run).
    pub fn enable_restore_drill(&self) {
        let d = &self.drills;
        if d.enabled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        for result in DrillResult::ALL {
            d.total.with_label_values(&[result.as_str()]);
        }
        for m in [
            Box::new(d.total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(d.duration.clone()),
            Box::new(d.last_success.clone()),
        ] {
            self.registry.register(m).expect("unique metric");
        }
    }

    /// Counts one restore drill that ended with `result` after `took`.
    pub fn restore_drill(&self, result: DrillResult, took: Duration) {
        let d = &self.drills;
        d.total.with_label_values(&[result.as_str()]).inc();
        d.duration.observe(took.as_secs_f64());
        if result == DrillResult::Passed {
            d.last_success.set(unix_now());
        }
    }

    /// Registers the backup-coverage gauges (once; the daemon calls it when `verifyInterval` is set).
    pub fn enable_backup(&self) {
        let b = &self.backup;
        if b.enabled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        for m in [
            Box::new(b.images.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(b.coverage.clone()),
            Box::new(b.oldest_unverified.clone()),
            Box::new(b.repairs.clone()),
        ] {
            self.registry.register(m).expect("unique metric");
        }
        self.set_backup(&[], 1.0, Duration::ZERO);
    }

    /// Registers the copy-on-the-fly metrics (once; the daemon calls it when `onTheFly.enabled`).
    pub fn enable_on_the_fly(&self) {
        let o = &self.on_the_fly;
        if o.enabled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        for result in ON_THE_FLY_RESULTS {
            o.copies.with_label_values(&[result]);
        }
        for m in [
            Box::new(o.copies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(o.seconds.clone()),
        ] {
            self.registry.register(m).expect("unique metric");
        }
    }

    /// Counts one copy on the fly ending with `result` (one of [`ON_THE_FLY_RESULTS`]) and, when
    /// the target now holds the image, how long after the failed pull was first seen.
    pub fn on_the_fly(&self, result: &str, since_failure: Option<Duration>) {
        self.on_the_fly.copies.with_label_values(&[result]).inc();
        if let Some(took) = since_failure {
            self.on_the_fly.seconds.observe(took.as_secs_f64());
        }
    }

    /// Registers the Flux `ImageRepository` metrics (once; the daemon calls it when they are followed).
    pub fn enable_flux(&self) {
        let f = &self.flux;
        if f.enabled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        for result in FLUX_SCAN_RESULTS {
            f.scans.with_label_values(&[result]);
        }
        for reason in FLUX_SECRET_ERRORS {
            f.secret_errors.with_label_values(&[reason]);
        }
        for m in [
            Box::new(f.scans.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(f.secret_errors.clone()),
        ] {
            self.registry.register(m).expect("unique metric");
        }
    }

    /// Shows `k8s_copycat_status_write_errors_total` at zero for `resource` (`images`) and every
    /// reason, so an alert on its rate has a series before the first refusal.
    pub fn expect_status_writes(&self, resource: &str) {
        for reason in STATUS_WRITE_ERRORS {
            self.status_write_errors.with_label_values(&[resource, reason]);
        }
    }

    /// Counts one status write on `resource` the API server refused, by `reason` (one of
    /// [`STATUS_WRITE_ERRORS`]).
    pub fn status_write_error(&self, resource: &str, reason: &str) {
        self.status_write_errors.with_label_values(&[resource, reason]).inc();
    }

    /// Counts one `ImageRepository` scan seen, by `result` (one of [`FLUX_SCAN_RESULTS`]).
    pub fn flux_scan(&self, result: &str) {
        self.flux.scans.with_label_values(&[result]).inc();
    }

    /// Counts one `spec.secretRef` Secret that could not be used, by `reason` (one of
    /// [`FLUX_SECRET_ERRORS`]).
    pub fn flux_secret_error(&self, reason: &str) {
        self.flux.secret_errors.with_label_values(&[reason]).inc();
    }

    /// Counts one target copied again after a check found it missing parts.
    pub fn backup_repair(&self) {
        self.backup.repairs.inc();
    }

    /// Sets the backup gauges: images per state (`(state, count)`, states not given are 0), the
    /// coverage ratio and the longest an in-scope image has gone unverified.
    pub fn set_backup(&self, counts: &[(BackupState, usize)], coverage: f64, oldest_unverified: Duration) {
        for state in BackupState::ALL {
            let n = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.backup.images.with_label_values(&[state.as_str()]).set(n as i64);
        }
        self.backup.coverage.set(coverage);
        self.backup
            .oldest_unverified
            .set(oldest_unverified.as_secs_f64().floor());
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
            ("warmed", report.blobs_warmed),
        ] {
            self.blobs.with_label_values(&[label]).inc_by(u64::from(n));
        }
        for (source, n) in ReferrerSource::ALL.iter().zip(report.referrers.copied) {
            self.referrers.with_label_values(&[source.label()]).inc_by(u64::from(n));
        }
        if report.referrers.error.is_some() {
            self.referrer_errors.inc();
        }
        match outcome {
            Outcome::Copied => self.push_success.with_label_values(&[&registry_label(target)]).inc(),
            Outcome::AlreadyPresent => self.verified_present.inc(),
            Outcome::Warmed | Outcome::WouldCopy => {}
        }
        let result = outcome.as_str();
        if outcome != Outcome::WouldCopy {
            self.last_success.set(unix_now());
        }
        self.bytes_copied.inc_by(report.bytes);
        self.duration.with_label_values(&[result]).observe(took.as_secs_f64());
    }

    /// A failed attempt; counted as a pull error of the source registry or a push error of the
    /// target registry by the side it failed on ([`CopyError::side`]: a source that stalls while
    /// its bytes stream into the target's upload is the source's failure). `error` is `None` when
    /// the copy did not return one (it panicked): only the duration is recorded.
    pub fn mirror_failed(&self, source: &str, target: &str, error: Option<&CopyError>, took: Duration) {
        match error.map(CopyError::side) {
            Some(Side::Source) => self.pull_error.with_label_values(&[&registry_label(source)]).inc(),
            Some(Side::Target) => self.push_error.with_label_values(&[&registry_label(target)]).inc(),
            None => {}
        }
        self.duration.with_label_values(&["failed"]).observe(took.as_secs_f64());
    }

    /// Refreshes the task gauges from the states of every target known (a queue snapshot).
    pub fn observe_tasks(&self, states: impl IntoIterator<Item = TaskState>) {
        let mut counts = [0i64; TaskState::ALL.len()];
        for state in states {
            counts[state as usize] += 1;
        }
        for (state, n) in TaskState::ALL.into_iter().zip(counts) {
            self.tasks.with_label_values(&[state.as_str()]).set(n);
        }
    }

    /// Counts one watch event of `kind` (`Deployment`, …): `applied`, `deleted` or `restarted`.
    pub fn watch_event(&self, kind: &str, event: &str) {
        self.watch_events.with_label_values(&[kind, event]).inc();
    }

    /// Counts one plan pass: `full` or `incremental`.
    pub fn plan_pass(&self, pass: &str) {
        self.plan_passes.with_label_values(&[pass]).inc();
    }

    /// Sets how many targets the latest plan holds.
    pub fn set_images_tracked(&self, n: usize) {
        self.images_tracked.set(n as i64);
    }

    /// Replaces the conflicts shown with those of the latest plan, each as `[target, source, kept]`.
    pub fn set_conflicts<'a>(&self, conflicts: impl IntoIterator<Item = [&'a str; 3]>) {
        self.conflicts.reset();
        for labels in conflicts {
            self.conflicts.with_label_values(&labels).set(1);
        }
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

/// The `registry` label: the host as [`canonical_host`] spells it, and an empty one as `docker.io`
/// (k8s-copycat's `registryLabel`).
pub fn registry_label(host: &str) -> String {
    match canonical_host(host) {
        host if host.is_empty() => DOCKER_HUB.to_owned(),
        host => host,
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

    #[test]
    fn backup_gauges_appear_only_when_enabled_and_zero_absent_states() {
        let m = Metrics::new();
        assert!(!m.render().contains("backup"), "not registered before enable_backup");
        m.enable_backup();
        m.enable_backup(); // twice is harmless
        let text = m.render();
        assert!(text.contains("k8s_copycat_backup_coverage_ratio 1\n"), "{text}");
        m.set_backup(
            &[(BackupState::Verified, 18), (BackupState::Failed, 2)],
            0.9,
            Duration::from_millis(61_500),
        );
        m.backup_repair();
        let text = m.render();
        // (line, present)
        let cases = [
            ("k8s_copycat_backup_images{state=\"verified\"} 18\n", true),
            ("k8s_copycat_backup_images{state=\"failed\"} 2\n", true),
            ("k8s_copycat_backup_images{state=\"missing\"} 0\n", true),
            ("k8s_copycat_backup_images{state=\"pending\"} 0\n", true),
            ("k8s_copycat_backup_images{state=\"untagged\"} 0\n", true),
            ("k8s_copycat_backup_coverage_ratio 0.9\n", true),
            ("k8s_copycat_backup_oldest_unverified_seconds 61\n", true),
            ("k8s_copycat_backup_repairs_total 1\n", true),
        ];
        for (line, present) in cases {
            assert_eq!(text.contains(line), present, "{line}: {text}");
        }
    }

    #[test]
    fn restore_drill_metrics_appear_only_when_enabled() {
        let m = Metrics::new();
        assert!(
            !m.render().contains("restore_drill"),
            "not registered before enable_restore_drill"
        );
        m.enable_restore_drill();
        m.enable_restore_drill(); // twice is harmless
        let text = m.render();
        assert!(
            text.contains("k8s_copycat_restore_drill_total{result=\"failed\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("k8s_copycat_restore_drill_last_success_timestamp_seconds 0\n"),
            "{text}"
        );
        m.restore_drill(DrillResult::Passed, Duration::from_millis(1500));
        m.restore_drill(DrillResult::Failed, Duration::from_millis(200));
        let text = m.render();
        for line in [
            "k8s_copycat_restore_drill_total{result=\"passed\"} 1\n",
            "k8s_copycat_restore_drill_total{result=\"failed\"} 1\n",
            "k8s_copycat_restore_drill_duration_seconds_count 2\n",
            "k8s_copycat_restore_drill_duration_seconds_bucket{le=\"0.5\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        let last = text
            .lines()
            .find_map(|l| l.strip_prefix("k8s_copycat_restore_drill_last_success_timestamp_seconds "))
            .unwrap();
        assert!(last.parse::<i64>().unwrap() > 1_700_000_000, "{last}");
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
    fn failures_count_on_the_side_they_happened() {
        let registry = |side| CopyError::Registry {
            action: "x".into(),
            side,
            host: "r.example:5000".into(),
            // The URL names the target: only the side counts.
            source: crate::registry::RegistryError::Transport {
                context: "PUT http://r.example:5000/v2/a/blobs/uploads/x".into(),
                source: "the source stalled".into(),
            },
        };
        let cases = [
            (registry(Side::Source), "pull"),
            (registry(Side::Target), "push"),
            (CopyError::SourceNotFound("ghcr.io/a:1".into()), "pull"),
            (
                CopyError::DeadlineExceeded {
                    target: "r.example:5000/a:1".into(),
                    after: Duration::from_secs(1),
                },
                "push",
            ),
        ];
        for (error, want) in cases {
            let m = Metrics::new();
            m.mirror_failed("ghcr.io", "r.example:5000", Some(&error), Duration::ZERO);
            let text = m.render();
            let (counted, label) = match want {
                "pull" => ("registry_pull_error_total", "ghcr.io"),
                _ => ("registry_push_error_total", "r.example:5000"),
            };
            assert!(
                text.contains(&format!(r#"k8s_copycat_{counted}{{registry="{label}"}} 1"#)),
                "{error}: {text}"
            );
            assert_eq!(text.matches("_error_total{").count(), 1, "{error}: {text}");
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
            blobs_warmed: 0,
            manifests_written: 0,
            missing_platforms: vec![],
            filtered: false,
            referrers: crate::copy::referrers::ReferrerReport {
                checked: true,
                found: 4,
                copied: [2, 0, 1],
                missing: 0,
                error: None,
                ..Default::default()
            },
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
            r#"k8s_copycat_referrers_copied_total{kind="cosign-tag"} 4"#,
            r#"k8s_copycat_referrers_copied_total{kind="referrers-api"} 0"#,
            r#"k8s_copycat_referrers_copied_total{kind="fallback-tag"} 2"#,
            "k8s_copycat_referrer_errors_total 0",
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
        let conflict = |source| ["r.io/team/app:1", source, "a.example/team/app:1"];
        m.set_conflicts([conflict("b.example/team/app:1")]);
        m.set_conflicts([conflict("c.example/team/app:1")]);
        let text = m.render();
        assert!(
            text.contains(r#"k8s_copycat_target_conflicts{kept="a.example/team/app:1",source="c.example/team/app:1",target="r.io/team/app:1"} 1"#),
            "{text}"
        );
        assert!(!text.contains("b.example"), "only the latest plan's conflicts: {text}");
        m.set_dockerhub_ratelimit(Some(97));
        assert!(
            m.render()
                .contains(r#"k8s_copycat_dockerhub_ratelimit_remaining{registry="docker.io"} 97"#)
        );
    }
}
