//! What is wrong with the watches right now, for `/readyz` and for a log that stays readable while
//! the API server is away: every watcher retries with its own backoff, so without a shared limit an
//! unreachable server would produce a line per watcher per retry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one warning about failing watches per this interval (403s are reported apart: they name
/// a missing permission and are logged per watch).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The watches the API server refuses (403) or that fail for another reason (server unreachable,
/// timeouts, 5xx), shared by the watchers and `/readyz`. A watch's problem is forgotten once it
/// delivers again.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth(Arc<Mutex<Problems>>);

#[derive(Debug, Default)]
struct Problems {
    /// The API server's URL, named in the warnings and in `/readyz`.
    server: String,
    /// How many watches run, for "N of M failing".
    watches: usize,
    /// By watch (kind and scope).
    problems: BTreeMap<String, Problem>,
    last_warning: Option<Instant>,
    /// Failures since the last warning that no warning reported.
    unreported: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Forbidden(String),
    Failing(String),
}

/// A warning to log about failing watches, decided by [`WatchHealth::failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureWarning {
    /// The API server's URL.
    pub server: String,
    /// Watches failing now, of `watches`.
    pub failing: usize,
    /// Watches running.
    pub watches: usize,
    /// Failures since the previous warning that it did not report.
    pub unreported: usize,
}

impl WatchHealth {
    /// For `watches` watches of the API server at `server`.
    pub fn new(server: impl Into<String>, watches: usize) -> WatchHealth {
        WatchHealth(Arc::new(Mutex::new(Problems {
            server: server.into(),
            watches,
            ..Problems::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Problems> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API server refused `what` (403) with `refusal`.
    pub fn forbidden(&self, what: &str, refusal: String) {
        self.lock()
            .problems
            .insert(what.to_owned(), Problem::Forbidden(refusal));
    }

    /// `what` failed with `error` at `now`; returns the warning to log, if one is due: the first
    /// failure logs at once, later ones at most once per [`FAILURE_LOG_INTERVAL`].
    pub fn failed(&self, what: &str, error: String, now: Instant) -> Option<FailureWarning> {
        let mut all = self.lock();
        all.problems.insert(what.to_owned(), Problem::Failing(error));
        let due = all
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= FAILURE_LOG_INTERVAL);
        if !due {
            all.unreported += 1;
            return None;
        }
        all.last_warning = Some(now);
        let failing = all
            .problems
            .values()
            .filter(|p| matches!(p, Problem::Failing(_)))
            .count();
        Some(FailureWarning {
            server: all.server.clone(),
            failing,
            watches: all.watches.max(failing),
            unreported: std::mem::take(&mut all.unreported),
        })
    }

    /// `what` delivers again. Returns true when it was the last failing watch (the API server is
    /// back), so that the recovery can be logged once.
    pub fn delivered(&self, what: &str) -> bool {
        let mut all = self.lock();
        if all.problems.is_empty() {
            return false;
        }
        let was_failing = matches!(all.problems.remove(what), Some(Problem::Failing(_)));
        let still_failing = all.problems.values().any(|p| matches!(p, Problem::Failing(_)));
        if was_failing && !still_failing {
            // The next failure is news again.
            all.last_warning = None;
            all.unreported = 0;
            return true;
        }
        false
    }

    /// Whether the API server refuses `what` (403): that will not heal by retrying.
    pub fn is_forbidden(&self, what: &str) -> bool {
        matches!(self.lock().problems.get(what), Some(Problem::Forbidden(_)))
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        self.lock().server.clone()
    }

    /// One line per watch with a problem: `forbidden: WHAT: REASON` or `failing: WHAT: ERROR`.
    pub fn describe(&self) -> Vec<String> {
        let all = self.lock();
        all.problems
            .iter()
            .map(|(what, problem)| match problem {
                Problem::Forbidden(why) => format!("forbidden: {what}: {why}"),
                Problem::Failing(why) => format!("failing: {what}: {why} (API server {})", all.server),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{FAILURE_LOG_INTERVAL, FailureWarning, WatchHealth};

    fn warning(failing: usize, unreported: usize) -> Option<FailureWarning> {
        Some(FailureWarning {
            server: "https://127.0.0.1:1".to_owned(),
            failing,
            watches: 3,
            unreported,
        })
    }

    #[test]
    fn failures_warn_at_once_then_at_most_once_per_interval() {
        let health = WatchHealth::new("https://127.0.0.1:1", 3);
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        // (watch, seconds after t0, warning expected)
        let steps = [
            ("Pod", 0, warning(1, 0)),
            ("Deployment", 0, None),
            ("Job", 1, None),
            ("Pod", 2, None),
            ("Pod", 9, None),
            ("Deployment", 10, warning(3, 4)),
            ("Job", 11, None),
            ("Pod", 20, warning(3, 1)),
        ];
        for (what, at, want) in steps {
            assert_eq!(
                health.failed(what, "refused".into(), t0 + second * at),
                want,
                "{what} at {at} s"
            );
        }
        assert_eq!(FAILURE_LOG_INTERVAL, second * 10);
    }

    #[test]
    fn recovery_is_reported_once_when_the_last_failing_watch_delivers() {
        let health = WatchHealth::new("https://127.0.0.1:1", 3);
        let t0 = Instant::now();
        assert!(health.failed("Pod", "refused".into(), t0).is_some());
        assert!(health.failed("Job", "refused".into(), t0).is_none());
        health.forbidden("Secret", "list forbidden: no".into());
        assert!(!health.delivered("Pod"), "Job still fails");
        assert!(!health.delivered("Deployment"), "never failed");
        assert!(health.delivered("Job"), "the last failing watch");
        assert!(!health.delivered("Job"), "once");
        assert_eq!(health.describe(), ["forbidden: Secret: list forbidden: no"]);
        // A failure after the recovery is news again.
        assert_eq!(
            health.failed("Pod", "refused".into(), t0 + Duration::from_secs(1)),
            warning(1, 0)
        );
    }

    #[test]
    fn describe_names_each_problem_and_the_server_of_failures() {
        let health = WatchHealth::new("https://10.0.0.1:6443", 2);
        health.forbidden(
            "StatefulSet cluster-wide",
            "list forbidden: statefulsets.apps is forbidden".into(),
        );
        health.failed("Pod cluster-wide", "connection refused".into(), Instant::now());
        assert_eq!(
            health.describe(),
            [
                "failing: Pod cluster-wide: connection refused (API server https://10.0.0.1:6443)",
                "forbidden: StatefulSet cluster-wide: list forbidden: statefulsets.apps is forbidden",
            ]
        );
        assert!(health.delivered("Pod cluster-wide"));
        health.forbidden("StatefulSet cluster-wide", "again".into());
        assert!(
            !health.delivered("StatefulSet cluster-wide"),
            "a refusal healing is not a recovery of the server"
        );
        assert!(health.describe().is_empty());
    }
}
