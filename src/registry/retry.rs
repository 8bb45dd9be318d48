//! Retry policy: which failures are worth another attempt, and how long to wait before it.
//!
//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the
//! n-th retry waits a uniformly random time in `[0, min(MAX_BACKOFF, base * 2^(n-1))]`, which spreads a
//! burst of failing workers out instead of having them hammer a recovering registry in lock-step. A
//! `Retry-After` from the registry wins when it asks for longer, capped at [`MAX_RETRY_AFTER`] so one
//! header cannot park a worker for hours.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

/// Longest exponential backoff step before jitter.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Longest wait a `Retry-After` header can impose on one retry.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Whether an HTTP status is transient: request timeout, too many requests, server errors.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`; a date in the past
/// means "now", i.e. zero). `None` when unparsable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate rather than fail: they get capped by the caller anyway.
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The exponential step before jitter for retry number `retry` (1 = first retry).
pub fn backoff_ceiling(base: Duration, retry: u32) -> Duration {
    let shift = retry.saturating_sub(1).min(31);
    base.checked_mul(1u32 << shift).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
}

/// Full-jitter backoff: a point in `[0, backoff_ceiling(base, retry)]` chosen by `random`.
pub fn backoff(base: Duration, retry: u32, random: u64) -> Duration {
    let ceiling = backoff_ceiling(base, retry);
    let nanos = ceiling.as_nanos() as u64; // ≤ 60 s, fits
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % (nanos + 1))
}

/// How long to wait before retry number `retry`: the jittered backoff, or `retry_after` when longer
/// (capped at [`MAX_RETRY_AFTER`]).
pub fn retry_delay(base: Duration, retry: u32, retry_after: Option<Duration>, random: u64) -> Duration {
    let b = backoff(base, retry, random);
    match retry_after {
        Some(ra) if ra > b => ra.min(MAX_RETRY_AFTER),
        _ => b,
    }
}

/// The retry budget of one request: counts its failures and says how long to wait before the next
/// attempt, or that there is none. Every retry loop of the client uses it (pings, requests, blob
/// uploads), so they count attempts and compute waits alike.
#[derive(Debug)]
pub struct Retries {
    attempts: u32,
    base: Duration,
    failures: u32,
}

impl Retries {
    /// `attempts` in all (at least one), waits growing from `base`.
    pub fn new(attempts: u32, base: Duration) -> Retries {
        Retries {
            attempts: attempts.max(1),
            base,
            failures: 0,
        }
    }

    /// Counts a failure; the wait before the next attempt ([`retry_delay`]), or `None` when the
    /// failure is final: not `retryable`, or the attempts are used up.
    pub fn after_failure(&mut self, retryable: bool, retry_after: Option<Duration>) -> Option<Duration> {
        self.failures += 1;
        (retryable && self.failures < self.attempts)
            .then(|| retry_delay(self.base, self.failures, retry_after, random_u64()))
    }
}

/// A random number for jitter, from the standard library's per-process random hash keys (no extra
/// dependency; jitter needs spread, not cryptographic quality).
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_count_attempts_and_stop_at_final_failures() {
        let base = Duration::from_millis(100);
        // (attempts, retryable failures in a row, then one of this kind) -> waits granted
        let cases = [(3, true, 2), (3, false, 0), (1, true, 0), (0, true, 0), (5, true, 4)];
        for (attempts, retryable, want) in cases {
            let mut retries = Retries::new(attempts, base);
            let mut granted = 0;
            while let Some(delay) = retries.after_failure(retryable, None) {
                assert!(delay <= backoff_ceiling(base, granted + 1), "{attempts} {retryable}");
                granted += 1;
                assert!(granted < 10, "bounded");
            }
            assert_eq!(granted, want, "{attempts} attempts, retryable {retryable}");
        }
        let mut retries = Retries::new(3, base);
        let asked = Duration::from_secs(7);
        assert_eq!(
            retries.after_failure(true, Some(asked)),
            Some(asked),
            "Retry-After wins when longer"
        );
    }

    #[test]
    fn status_classification_table() {
        let cases = [
            (200, false),
            (201, false),
            (202, false),
            (301, false),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (405, false),
            (408, true),
            (409, false),
            (413, false),
            (416, false),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (504, true),
            (599, true),
        ];
        for (status, want) in cases {
            assert_eq!(retryable_status(status), want, "status {status}");
        }
    }

    #[test]
    fn error_classification_table() {
        use super::super::RegistryError;
        let status = |status| RegistryError::Status {
            method: "GET",
            url: "http://r/v2/".into(),
            status,
            detail: String::new(),
            retry_after: None,
        };
        let cases: Vec<(RegistryError, bool)> = vec![
            (status(503), true),
            (status(429), true),
            (status(408), true),
            (status(404), false),
            (status(401), false),
            (
                RegistryError::Transport {
                    context: "GET x".into(),
                    source: "connection reset".into(),
                },
                true,
            ),
            (
                RegistryError::Auth {
                    registry: "r".into(),
                    detail: "refused".into(),
                },
                false,
            ),
            (
                RegistryError::DigestMismatch {
                    digest: "sha256:x".into(),
                    detail: "y".into(),
                },
                false,
            ),
            (
                RegistryError::RateLimited {
                    registry: "docker.io".into(),
                    retry_after: Duration::from_secs(1),
                },
                false,
            ),
            (RegistryError::Invalid("x".into()), false),
        ];
        for (err, want) in cases {
            assert_eq!(err.is_retryable(), want, "{err}");
        }
    }

    #[test]
    fn retry_after_parsing_table() {
        // 2015-10-21 07:28:00 UTC
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let cases: [(&str, Option<Duration>); 10] = [
            ("0", Some(Duration::ZERO)),
            ("1", Some(Duration::from_secs(1))),
            (" 120 ", Some(Duration::from_secs(120))),
            ("99999999999999999999999", Some(Duration::from_secs(u64::MAX))),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(Duration::from_secs(30))),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(Duration::from_secs(60))),
            ("", None),
            ("-5", None),
            ("soon", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
    }

    #[test]
    fn backoff_bounds() {
        let base = Duration::from_millis(100);
        let cases = [
            (1, Duration::from_millis(100)),
            (2, Duration::from_millis(200)),
            (3, Duration::from_millis(400)),
            (10, Duration::from_millis(51_200)),
            (11, MAX_BACKOFF),
            (40, MAX_BACKOFF),
            (u32::MAX, MAX_BACKOFF),
        ];
        for (retry, ceiling) in cases {
            assert_eq!(backoff_ceiling(base, retry), ceiling, "retry {retry}");
            assert_eq!(backoff(base, retry, 0), Duration::ZERO);
            assert_eq!(backoff(base, retry, ceiling.as_nanos() as u64), ceiling);
            for _ in 0..200 {
                let d = backoff(base, retry, random_u64());
                assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
            }
        }
        assert_eq!(backoff(Duration::ZERO, 3, 12345), Duration::ZERO);
        assert_eq!(backoff_ceiling(Duration::from_secs(u64::MAX / 2), 5), MAX_BACKOFF);
    }

    #[test]
    fn jitter_spreads() {
        let base = Duration::from_secs(1);
        let samples: Vec<Duration> = (0..100).map(|_| backoff(base, 3, random_u64())).collect();
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 50,
            "jitter should spread delays, got {} distinct",
            distinct.len()
        );
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let base = Duration::from_millis(100);
        // backoff at most 100 ms on the first retry: Retry-After 1 s wins.
        assert_eq!(
            retry_delay(base, 1, Some(Duration::from_secs(1)), random_u64()),
            Duration::from_secs(1)
        );
        // shorter Retry-After: the backoff stands.
        let ceiling = backoff_ceiling(Duration::from_secs(10), 1);
        assert_eq!(
            retry_delay(Duration::from_secs(10), 1, Some(Duration::ZERO), u64::MAX),
            { Duration::from_nanos(u64::MAX % (ceiling.as_nanos() as u64 + 1)) }
        );
        // huge Retry-After is capped.
        assert_eq!(
            retry_delay(base, 1, Some(Duration::from_secs(86_400)), 0),
            MAX_RETRY_AFTER
        );
        assert!(retry_delay(base, 1, None, random_u64()) <= base);
    }
}
