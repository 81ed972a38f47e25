//! Readiness registry: named checks that components set ok or failing.
//!
//! This module owns the *decision* behind `/readyz`: the process is ready only
//! when at least one check is registered and every registered check passes.
//! Components (store, ASN enrichment, rule loader, one check per partition
//! receiver) register a check at start, in the failing state with a reason
//! saying what they wait for, and flip it as their state changes. A receiver
//! that lost its link may report [`HealthCheck::set_retrying`]: it stays
//! ready during a grace period (a reconnect is routine) and turns failing
//! when the grace period ends without a re-attach ("retrying within bounds").
//!
//! It deliberately does no I/O and knows nothing of HTTP: [`crate::server`]
//! serves [`Health::report`] as JSON. `/healthz` (process alive) needs no
//! registry at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The state of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ok,
    Failing(String),
    Retrying { reason: String, deadline: Instant },
}

/// The registry of readiness checks. Share it as `Arc<Health>`.
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<BTreeMap<String, State>>,
}

/// A handle to one registered check, held by the component it describes.
/// Cloning is cheap; every clone sets the same check.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    health: Arc<Health>,
    name: Arc<str>,
}

/// Status of one check in a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Passing.
    Ok,
    /// Temporarily failing, still within its grace period: counts as passing.
    Retrying,
    /// Failing: the process is not ready.
    Failing,
}

/// One check in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The check's name, e.g. `rocksdb` or `partition-3`.
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
    /// Why it is not ok (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Every registered check, sorted by name.
    pub checks: Vec<CheckReport>,
}

impl HealthReport {
    /// Whether the process is ready (every check passes, at least one exists).
    pub fn is_ready(&self) -> bool {
        self.status == "ok"
    }

    /// Names of the checks that fail.
    pub fn failing(&self) -> impl Iterator<Item = &str> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Failing)
            .map(|c| c.name.as_str())
    }
}

impl Health {
    /// An empty registry.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// A poisoned lock only means another thread panicked while holding it;
    /// the map itself is always consistent (single inserts), so keep going
    /// rather than take the health endpoint down with it.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, State>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers check `name`, failing with `reason` until the component
    /// sets it ok. Registering an existing name resets it to failing.
    pub fn register(self: &Arc<Self>, name: &str, reason: &str) -> HealthCheck {
        self.lock()
            .insert(name.to_string(), State::Failing(reason.to_string()));
        HealthCheck {
            health: Arc::clone(self),
            name: name.into(),
        }
    }

    /// Removes check `name` (e.g. a partition this instance no longer owns).
    /// Returns whether it existed.
    pub fn unregister(&self, name: &str) -> bool {
        self.lock().remove(name).is_some()
    }

    /// Evaluates every check at `now`.
    pub fn report_at(&self, now: Instant) -> HealthReport {
        let checks: Vec<CheckReport> = self
            .lock()
            .iter()
            .map(|(name, state)| {
                let (status, reason) = match state {
                    State::Ok => (CheckStatus::Ok, None),
                    State::Failing(r) => (CheckStatus::Failing, Some(r.clone())),
                    State::Retrying { reason, deadline } if now < *deadline => {
                        (CheckStatus::Retrying, Some(reason.clone()))
                    }
                    State::Retrying { reason, .. } => (
                        CheckStatus::Failing,
                        Some(format!("{reason} (retrying past its grace period)")),
                    ),
                };
                CheckReport {
                    name: name.clone(),
                    status,
                    reason,
                }
            })
            .collect();
        // No check at all means start-up has not registered its components
        // yet: that is not "everything passes".
        let ready = !checks.is_empty() && checks.iter().all(|c| c.status != CheckStatus::Failing);
        HealthReport {
            status: if ready { "ok" } else { "unavailable" },
            checks,
        }
    }

    /// Evaluates every check now.
    pub fn report(&self) -> HealthReport {
        self.report_at(Instant::now())
    }

    fn set(&self, name: &str, state: State) {
        // A handle outliving an `unregister` must not resurrect the check.
        if let Some(s) = self.lock().get_mut(name) {
            *s = state;
        }
    }
}

impl HealthCheck {
    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the check as passing.
    pub fn set_ok(&self) {
        self.health.set(&self.name, State::Ok);
    }

    /// Marks the check as failing with `reason` (shown in `/readyz`).
    pub fn set_failing(&self, reason: impl Into<String>) {
        self.health.set(&self.name, State::Failing(reason.into()));
    }

    /// Marks the check as retrying: still passing until `grace` has elapsed,
    /// failing after that unless set ok again. Calling it again while already
    /// retrying keeps the original deadline, so a loop of failed reconnects
    /// cannot extend the grace period forever.
    pub fn set_retrying(&self, reason: impl Into<String>, grace: Duration) {
        let reason = reason.into();
        let now = Instant::now();
        let mut checks = self.health.lock();
        if let Some(s) = checks.get_mut(&*self.name) {
            let deadline = match s {
                State::Retrying { deadline, .. } => *deadline,
                _ => now + grace,
            };
            *s = State::Retrying { reason, deadline };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_registry_is_not_ready() {
        let h = Health::new();
        assert!(!h.report().is_ready());
    }

    #[test]
    fn ready_only_when_every_check_passes() {
        let h = Health::new();
        let db = h.register("rocksdb", "not opened yet");
        let asn = h.register("asn", "not loaded yet");
        let r = h.report();
        assert!(!r.is_ready());
        assert_eq!(r.failing().collect::<Vec<_>>(), ["asn", "rocksdb"]);
        db.set_ok();
        let r = h.report();
        assert_eq!(r.failing().collect::<Vec<_>>(), ["asn"]);
        assert_eq!(r.checks[0].reason.as_deref(), Some("not loaded yet"));
        asn.set_ok();
        assert!(h.report().is_ready());
        asn.set_failing("reload failed: truncated file");
        assert!(!h.report().is_ready());
        assert!(h.unregister("asn"));
        asn.set_failing("again");
        assert!(
            h.report().is_ready(),
            "an unregistered check must not come back"
        );
    }

    #[test]
    fn retrying_is_ready_within_grace_then_failing() {
        let h = Health::new();
        let p = h.register("partition-0", "not attached");
        p.set_retrying("link detached", Duration::from_secs(60));
        let now = Instant::now();
        let r = h.report_at(now);
        assert!(r.is_ready());
        assert_eq!(r.checks[0].status, CheckStatus::Retrying);
        // A second failure does not push the deadline out.
        p.set_retrying("reconnect failed", Duration::from_secs(3600));
        let r = h.report_at(now + Duration::from_secs(61));
        assert!(!r.is_ready());
        assert!(r.checks[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("reconnect failed"));
        p.set_ok();
        assert!(h.report_at(now + Duration::from_secs(61)).is_ready());
    }

    #[test]
    fn report_json_shape() {
        let h = Health::new();
        h.register("rules", "no rule loaded");
        let v = serde_json::to_value(h.report()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":"unavailable","checks":[{"name":"rules","status":"failing","reason":"no rule loaded"}]})
        );
    }
}
