//! The retry policy, as pure functions: which responses are retried, how long
//! to wait before the next attempt, and when an alert is too old to keep
//! trying. No I/O and no clock: `now` and the jitter source are arguments, so
//! the BR-13 timings are testable without sleeping.
//!
//! Defaults (pager-grade): first retry within 1 s (a blip costs at most a
//! second), waits grow ×2 up to 5 min (a receiver down for hours is probed
//! about 12 times an hour, never stormed; see BR-13), and an alert is given
//! up after 24 h (a day-old page is noise; it goes to the dead-letter store,
//! from which `firstseen alerts requeue` can resend it).
//!
//! Backoff uses **full jitter** (a random wait in `[0, ceiling]`): after an
//! outage, many firstseen instances do not retry in lock-step.
//!
//! `Retry-After` (seconds or an HTTP date) on 429/503 is honoured: the next
//! attempt is no earlier than it says, **capped at `max_interval`**. The cap
//! is deliberate: a misconfigured receiver answering `Retry-After: 86400`
//! must not silence a pager for a day; `max_interval` is the operator's
//! statement of how long a retry may wait, and raising it raises the cap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};

use super::FailureReason;

/// How one attempt ended, as the retry loop needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// 2xx: remove the alert.
    Success,
    /// Try again later; `retry_after` is the receiver's own request, if any.
    Retryable {
        /// Why the attempt failed.
        reason: FailureReason,
        /// The parsed `Retry-After` (429/503 only).
        retry_after: Option<Duration>,
    },
    /// Never retry: dead-letter the alert.
    Permanent {
        /// Why the attempt failed.
        reason: FailureReason,
    },
}

/// A transport-level failure (no HTTP status received).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// The request timeout elapsed.
    Timeout,
    /// Connecting failed (refused, unreachable, DNS, TLS).
    Connect,
    /// Anything else (connection reset mid-response, ...).
    Other,
}

/// Classifies an HTTP status. `retry_after` is the raw header value; `now`
/// resolves an HTTP-date form.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Classification {
    let honoured = || retry_after.and_then(|v| parse_retry_after(v, now));
    match status {
        200..=299 => Classification::Success,
        408 => Classification::Retryable {
            reason: FailureReason::Status408,
            retry_after: None,
        },
        429 => Classification::Retryable {
            reason: FailureReason::Status429,
            retry_after: honoured(),
        },
        503 => Classification::Retryable {
            reason: FailureReason::Status5xx,
            retry_after: honoured(),
        },
        500..=599 => Classification::Retryable {
            reason: FailureReason::Status5xx,
            retry_after: None,
        },
        400..=499 => Classification::Permanent {
            reason: FailureReason::Status4xx,
        },
        _ => Classification::Permanent {
            reason: FailureReason::UnexpectedStatus,
        },
    }
}

/// Classifies a transport failure: all are retried (nothing is dropped
/// because the network misbehaved).
pub fn classify_transport(failure: TransportFailure) -> Classification {
    let reason = match failure {
        TransportFailure::Timeout => FailureReason::Timeout,
        TransportFailure::Connect => FailureReason::Connect,
        TransportFailure::Other => FailureReason::Transport,
    };
    Classification::Retryable {
        reason,
        retry_after: None,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (a date in the past
/// means "now"). Unparseable values are ignored (normal backoff applies).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings saturate rather than fail: they are capped
        // at max_interval anyway.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Converts Unix milliseconds to a `SystemTime` (for HTTP-date math).
pub fn system_time_from_ms(ms: i64) -> SystemTime {
    match u64::try_from(ms) {
        Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
        Err(_) => UNIX_EPOCH,
    }
}

/// Picks the actual wait inside a backoff window.
pub trait Jitter: Send + 'static {
    /// A wait in `[0, ceiling]`.
    fn pick(&mut self, ceiling: Duration) -> Duration;
}

/// Full jitter: uniform in `[0, ceiling]`.
#[derive(Debug)]
pub struct FullJitter(rand::rngs::StdRng);

impl FullJitter {
    /// Seeded from the OS.
    pub fn new() -> Self {
        FullJitter(rand::rngs::StdRng::from_os_rng())
    }

    /// Seeded for reproducible tests.
    pub fn seeded(seed: u64) -> Self {
        FullJitter(rand::rngs::StdRng::seed_from_u64(seed))
    }
}

impl Default for FullJitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Jitter for FullJitter {
    fn pick(&mut self, ceiling: Duration) -> Duration {
        let max = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.0.random_range(0..=max))
    }
}

/// Always the ceiling: deterministic waits for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJitter;

impl Jitter for NoJitter {
    fn pick(&mut self, ceiling: Duration) -> Duration {
        ceiling
    }
}

/// Backoff bounds and the give-up age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff ceiling after the first failure.
    pub initial_interval: Duration,
    /// Largest backoff ceiling, and the cap on `Retry-After`.
    pub max_interval: Duration,
    /// An alert older than this (since commit) is dead-lettered.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The backoff window after `failures` consecutive failures (1-based):
    /// `min(max_interval, initial_interval * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        self.initial_interval
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }

    /// The wait before the next attempt after `failures` consecutive
    /// failures: full jitter within [`Self::ceiling`], but never earlier than
    /// `retry_after` (itself capped at `max_interval`, see the module doc).
    pub fn next_delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        jitter: &mut dyn Jitter,
    ) -> Duration {
        let backoff = jitter
            .pick(self.ceiling(failures))
            .min(self.ceiling(failures));
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.max_interval)),
            None => backoff,
        }
    }

    /// How long until an alert created at `created_at_ms` passes `max_age`
    /// (zero if it already has).
    pub fn remaining_age(&self, created_at_ms: i64, now_ms: i64) -> Duration {
        let age_ms = now_ms.saturating_sub(created_at_ms).max(0);
        let max_ms = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        Duration::from_millis(u64::try_from(max_ms.saturating_sub(age_ms).max(0)).unwrap_or(0))
    }

    /// True once the alert is older than `max_age`.
    pub fn expired(&self, created_at_ms: i64, now_ms: i64) -> bool {
        self.remaining_age(created_at_ms, now_ms).is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200, None, now()), Classification::Success);
        assert_eq!(classify_status(204, None, now()), Classification::Success);
        for (status, reason) in [
            (408, FailureReason::Status408),
            (429, FailureReason::Status429),
            (500, FailureReason::Status5xx),
            (503, FailureReason::Status5xx),
            (599, FailureReason::Status5xx),
        ] {
            assert_eq!(
                classify_status(status, None, now()),
                Classification::Retryable {
                    reason,
                    retry_after: None
                },
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(
                classify_status(status, Some("5"), now()),
                Classification::Permanent {
                    reason: FailureReason::Status4xx
                },
                "{status}"
            );
        }
        assert_eq!(
            classify_status(302, None, now()),
            Classification::Permanent {
                reason: FailureReason::UnexpectedStatus
            }
        );
        assert!(matches!(
            classify_transport(TransportFailure::Connect),
            Classification::Retryable { .. }
        ));
        assert!(matches!(
            classify_transport(TransportFailure::Timeout),
            Classification::Retryable { .. }
        ));
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let seven = Some(Duration::from_secs(7));
        assert_eq!(
            classify_status(429, Some("7"), now()),
            Classification::Retryable {
                reason: FailureReason::Status429,
                retry_after: seven
            }
        );
        assert_eq!(
            classify_status(503, Some(" 7 "), now()),
            Classification::Retryable {
                reason: FailureReason::Status5xx,
                retry_after: seven
            }
        );
        assert_eq!(
            classify_status(500, Some("7"), now()),
            Classification::Retryable {
                reason: FailureReason::Status5xx,
                retry_after: None
            }
        );
    }

    #[test]
    fn retry_after_dates_and_garbage() {
        let in_90s = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&in_90s, now()),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now()),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn ceiling_doubles_up_to_max_interval() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=12).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(p.ceiling(u32::MAX), p.max_interval);
        assert_eq!(p.ceiling(0), p.initial_interval);
    }

    #[test]
    fn full_jitter_stays_in_window_and_varies() {
        let p = RetryPolicy::default();
        let mut j = FullJitter::seeded(7);
        let picks: Vec<Duration> = (0..200).map(|_| p.next_delay(4, None, &mut j)).collect();
        assert!(picks.iter().all(|d| *d <= Duration::from_secs(8)));
        let distinct: std::collections::HashSet<_> = picks.iter().collect();
        assert!(
            distinct.len() > 50,
            "jitter should spread: {}",
            distinct.len()
        );
        assert!(picks.iter().any(|d| *d < Duration::from_secs(4)));
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_max_interval() {
        let p = RetryPolicy::default();
        let mut j = FullJitter::seeded(1);
        for _ in 0..50 {
            assert!(
                p.next_delay(1, Some(Duration::from_secs(7)), &mut j) >= Duration::from_secs(7)
            );
        }
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(86_400)), &mut NoJitter),
            p.max_interval
        );
    }

    #[test]
    fn max_age() {
        let p = RetryPolicy {
            max_age: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        assert!(!p.expired(1_000, 10_999));
        assert!(p.expired(1_000, 11_000));
        assert_eq!(p.remaining_age(1_000, 2_000), Duration::from_secs(9));
        // A clock behind the commit time never makes an alert "younger than new".
        assert_eq!(p.remaining_age(5_000, 1_000), Duration::from_secs(10));
    }
}
