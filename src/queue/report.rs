//! How the queue reports each attempt: one structured log line (under the `copycat::queue` target,
//! as operators filter it), the counters, the metrics, failure reports for Events, and a warning
//! per missing platform. Reading only; the state machine in the parent module decides.

use std::time::{Duration, SystemTime};

use super::status::Counters;
use super::{DeclaredSource, Done, Failure, Inner, Interest};
use crate::copy::Outcome;
use crate::plan::{MirrorTask, TargetKey};
use crate::platform::Platform;
use crate::reference::{Digest, ImageRef};
use crate::workload::Workload;

/// Logs one mirror outcome at `$level` (a constant) with [`OutcomeLine`]'s fields, `result`, then the
/// extra fields and the message.
macro_rules! outcome {
    ($level:expr, $line:expr, $result:expr, $($rest:tt)+) => {
        tracing::event!(target: "copycat::queue", $level, source = %$line.source, target = %$line.target, namespace = $line.namespace,
            workload = $line.workload.as_deref(), users = $line.users, result = $result,
            digest = $line.digest.as_deref(), bytes = $line.bytes, duration_ms = $line.duration_ms, $($rest)+)
    };
}

impl Inner {
    /// Warns once per target and platform about a requested platform the source lacks, unless
    /// `ignoreMissingPlatforms` matches `<source>|<os>/<arch>`.
    fn report_missing_platforms(&self, key: &TargetKey, source: &ImageRef, missing: &[Platform]) {
        for platform in missing {
            let subject = format!("{source}|{}/{}", platform.os, platform.architecture);
            if self
                .options
                .ignore_missing_platforms
                .iter()
                .any(|r| r.is_match(&subject))
            {
                continue;
            }
            let seen = format!("{key}|{platform}");
            if self.reported_missing.contains_key(&seen) {
                continue;
            }
            self.reported_missing.insert(seen, ());
            tracing::warn!(target: "copycat::queue", %source, target = %key, %platform, "the source does not offer a requested platform");
        }
    }

    /// Sends a failure to whoever asked for them ([`Queue::report_failures`]), if anyone.
    fn tell_failure(&self, key: &TargetKey, task: &MirrorTask, failure: &Failure, retry_in: Option<Duration>) {
        let Some(to) = self.failures.get() else {
            return;
        };
        let report = FailureReport {
            target: key.clone(),
            source: task.request.source.clone(),
            error: failure.to_string(),
            users: task.users.clone(),
            retry_in,
        };
        if to.try_send(report).is_err() {
            tracing::debug!(target: "copycat::queue", target = %key, "failure report dropped: the receiver is busy or gone");
        }
    }

    /// Sends the outcome of an attempt at an urgent or declared target to whoever asked for them
    /// ([`Queue::report_outcomes`](super::Queue::report_outcomes)), if anyone.
    fn tell_outcome(&self, key: &TargetKey, task: &MirrorTask, result: &Result<Done, Failure>) {
        let subscribers = super::lock(&self.subscribers);
        if subscribers.is_empty() {
            return;
        }
        let urgent = self.kept.urgent.contains_key(key);
        let declared = self.kept.declared_by(key);
        let (text, digest, error) = match result {
            Ok(Done::Copy(report)) => (report.outcome.as_str(), Some(report.source_digest.clone()), None),
            Ok(Done::DryPull) => ("dry-pull", None, None),
            Err(failure) => ("failed", None, Some(failure.to_string())),
        };
        for (interest, to) in subscribers.iter() {
            let declared_by: Vec<DeclaredSource> = match interest {
                Interest::Urgent if urgent => vec![],
                Interest::Declared(kind) => declared.iter().filter(|s| s.kind == *kind).cloned().collect(),
                Interest::Urgent => continue,
            };
            if matches!(interest, Interest::Declared(_)) && declared_by.is_empty() {
                continue;
            }
            let _ = to.send(TaskOutcome {
                target: key.clone(),
                source: task.request.source.clone(),
                source_digest: digest.clone(),
                result: text,
                error: error.clone(),
                time: SystemTime::now(),
                declared_by,
            });
        }
    }

    /// Counts an attempt and logs it as one line.
    pub(super) fn report(
        &self,
        key: &TargetKey,
        named: Option<&str>,
        task: &MirrorTask,
        result: &Result<Done, Failure>,
        took: Duration,
        retry_in: Option<Duration>,
    ) {
        let c = &self.counters;
        let source = &task.request.source;
        if let Some(metrics) = self.metrics.get() {
            let (from, to) = (source.registry(), task.request.target.registry());
            match result {
                Ok(Done::Copy(report)) => metrics.mirror_succeeded(from, to, report, took),
                Ok(Done::DryPull) => {}
                Err(Failure::Copy(e)) => metrics.mirror_failed(from, to, Some(e), took),
                Err(Failure::Panicked(_)) => metrics.mirror_failed(from, to, None, took),
            }
        }
        self.tell_outcome(key, task, result);
        let line = OutcomeLine::new(named.unwrap_or(key.as_str()), task, took);
        match result {
            Ok(Done::DryPull) => {
                Counters::add(&c.dry_pulled, 1);
                let line = OutcomeLine { bytes: Some(0), ..line };
                outcome!(tracing::Level::INFO, line, "dry-pull", "would mirror {source} → {key}");
            }
            Ok(Done::Copy(report)) => {
                let counter = match report.outcome {
                    Outcome::Copied => &c.copied,
                    Outcome::AlreadyPresent => &c.present,
                    Outcome::Warmed => &c.warmed,
                    Outcome::WouldCopy => &c.would_copy,
                };
                let result = report.outcome.as_str();
                Counters::add(counter, 1);
                Counters::add(&c.bytes, report.bytes);
                let line = OutcomeLine {
                    digest: report.digest.as_ref().map(ToString::to_string),
                    bytes: Some(report.bytes),
                    ..line
                };
                outcome!(
                    tracing::Level::INFO,
                    line,
                    result,
                    missing_platforms = report.missing_platforms.len(),
                    "mirror {result}"
                );
                self.report_missing_platforms(key, source, &report.missing_platforms);
            }
            Err(failure) => {
                Counters::add(&c.failed, 1);
                self.tell_failure(key, task, failure, retry_in);
                let retry_in = match retry_in {
                    Some(d) => humantime::format_duration(d).to_string(),
                    None => "on next submit".to_owned(),
                };
                if failure.is_transient() {
                    outcome!(tracing::Level::WARN, line, "failed", error = %failure, %retry_in, "mirror failed");
                } else {
                    outcome!(tracing::Level::ERROR, line, "failed", reason = %failure, %retry_in,
                        "mirror failed and will fail again until the registry changes");
                }
            }
        }
    }
}

/// A failed attempt, as [`Queue::report_failures`] reports it.
#[derive(Debug, Clone)]
pub struct FailureReport {
    /// The target.
    pub target: TargetKey,
    /// The source of the attempt.
    pub source: ImageRef,
    /// What went wrong (contains no credentials).
    pub error: String,
    /// Who uses the image (at most [`MAX_USERS`](crate::plan::MAX_USERS)).
    pub users: Vec<Workload>,
    /// When the target is retried (at the end of its cooldown or retry backoff); `None`: when it is
    /// submitted again.
    pub retry_in: Option<Duration>,
}

/// The outcome of an attempt at an urgent or declared target, as
/// [`Queue::report_outcomes`](super::Queue::report_outcomes) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The target.
    pub target: TargetKey,
    /// The source of the attempt.
    pub source: ImageRef,
    /// The source's digest the target now holds (none for a failure or a dry pull).
    pub source_digest: Option<Digest>,
    /// `copied`, `present`, `would-copy`, `warmed`, `dry-pull` or `failed` (the log line's `result`).
    pub result: &'static str,
    /// What went wrong, for a failure (contains no credentials).
    pub error: Option<String>,
    /// When the attempt ended.
    pub time: SystemTime,
    /// The objects of the subscriber's kind declaring the target (empty for urgent outcomes).
    pub declared_by: Vec<DeclaredSource>,
}

/// The fields every outcome line has. `None` fields are left out of the line: the digest when
/// neither the source pins one nor the copy found one, the bytes of a failed attempt.
struct OutcomeLine<'a> {
    source: &'a ImageRef,
    target: &'a str,
    /// Namespace of the first user.
    namespace: Option<&'a str>,
    /// The first user as `Kind/name`.
    workload: Option<String>,
    /// How many workloads use the image, when more than one.
    users: Option<usize>,
    digest: Option<String>,
    bytes: Option<u64>,
    duration_ms: u64,
}

impl<'a> OutcomeLine<'a> {
    /// The line of an attempt at `task`, with the source's pinned digest and no bytes yet.
    fn new(target: &'a str, task: &'a MirrorTask, took: Duration) -> OutcomeLine<'a> {
        let first = task.users.first();
        OutcomeLine {
            source: &task.request.source,
            target,
            namespace: first.map(|u| u.namespace.as_str()),
            workload: first.map(|u| format!("{}/{}", u.kind, u.name)),
            users: (task.users.len() > 1).then_some(task.users.len()),
            digest: task.request.source.digest().map(ToString::to_string),
            bytes: None,
            duration_ms: took.as_millis() as u64,
        }
    }
}
