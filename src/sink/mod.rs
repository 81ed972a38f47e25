//! Alert delivery: the durable outbox interface and the sinks that drain it.
//!
//! The consumer commits each alert into the outbox in the same RocksDB write
//! batch as the term state and the partition checkpoint (see
//! ARCHITECTURE-NOTES.md). A sink never touches the consumption path: it only
//! reads the outbox through the small synchronous [`Outbox`] trait, sends, and
//! then removes the alert ([`Outbox::delivered`]) or moves it to the
//! dead-letter store ([`Outbox::dead_letter`]). The consumer tells the sinks
//! that new alerts were committed through a [`Wakeup`]; sinks also poll as a
//! fallback, so a lost wake-up delays an alert by at most the poll interval.
//!
//! # Several sinks, one alert stream
//!
//! Each configured sink owns **its own outbox**, keyed by the sink's `name`
//! (in RocksDB: one key prefix or column family per sink name). When the
//! consumer commits an alert, the store writes one outbox row per configured
//! sink, all in the same write batch. Each sink then drains, acknowledges and
//! dead-letters its own rows independently, so "an alert is removed once
//! every sink has it" holds by construction, a slow webhook never delays the
//! NDJSON file, and a dead letter names the sink that gave up. The price is
//! one copy of the (small, rare) alert body per sink, which is cheaper than a
//! shared row with a per-sink delivery bitmap that every sink must
//! read-modify-write under a lock.
//!
//! # Why the trait is synchronous
//!
//! RocksDB point reads, deletes and small write batches take microseconds, so
//! an `async` trait would only add boxing. Because an implementation may still
//! block (a synced WAL write, a stalled compaction), the workers call it from
//! [`tokio::task::spawn_blocking`]: the thread hop costs microseconds per call,
//! alerts are rare, and a slow disk can then never stall the runtime threads
//! that the consumer also uses.
//!
//! This module does not know the HTTP wire format (that is [`webhook`]) nor
//! how rows are laid out on disk (that is the store).

pub mod config;
pub mod ndjson;
pub mod retry;
pub mod signing;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// One alert waiting in the durable outbox, in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAlert {
    /// Outbox order key, strictly increasing in commit order.
    pub seq: u64,
    /// Deterministic alert id; sent as `webhook-id` on every attempt.
    pub id: String,
    /// When the alert was committed (Unix milliseconds); the maximum age is
    /// measured from here.
    pub created_at_ms: i64,
    /// The alert JSON document, sent as-is.
    pub body: Arc<[u8]>,
}

/// Why a sink gave up on an alert. A closed set: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The receiver answered with a non-retryable status (4xx other than 408
    /// and 429, or an unexpected 1xx/3xx).
    Rejected,
    /// The alert was older than the sink's `max_age` before it was delivered.
    MaxAgeExceeded,
}

impl DeadLetterReason {
    /// Every reason, so metrics can pre-register each label at zero (BR-15).
    pub const ALL: [DeadLetterReason; 2] =
        [DeadLetterReason::Rejected, DeadLetterReason::MaxAgeExceeded];

    /// The metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::MaxAgeExceeded => "max_age_exceeded",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the dead-letter store keeps about an alert a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why the sink gave up.
    pub reason: DeadLetterReason,
    /// The last HTTP status received, if any.
    pub status: Option<u16>,
    /// The start of the last response body, or the last transport error
    /// (at most [`RESPONSE_EXCERPT_LIMIT`] bytes).
    pub response_excerpt: String,
    /// Delivery attempts made by this process.
    pub attempts: u32,
    /// When the alert was dead-lettered (Unix milliseconds).
    pub dead_lettered_at_ms: i64,
}

/// Longest response excerpt kept in a dead letter, in bytes.
pub const RESPONSE_EXCERPT_LIMIT: usize = 1024;

/// A storage failure behind the [`Outbox`] trait.
#[derive(Debug, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl OutboxError {
    /// Wraps any storage error.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        OutboxError(err.into())
    }
}

/// The durable queue one sink drains (one per sink name, see the module doc).
///
/// Requirement on implementations: seqs become visible in increasing order
/// (assign them under the commit lock), so a reader that has seen seq `n`
/// never later finds a new row below `n`. Workers still rescan from the start
/// on their poll tick as a safety net.
pub trait Outbox: Send + Sync + 'static {
    /// Oldest first, at most `limit`, skipping `seq <= after`.
    ///
    /// # Errors
    /// A storage failure; the worker retries on its next poll.
    fn pending(&self, after: Option<u64>, limit: usize) -> Result<Vec<PendingAlert>, OutboxError>;

    /// Number of alerts waiting (the backlog gauge).
    ///
    /// # Errors
    /// A storage failure.
    fn pending_count(&self) -> Result<u64, OutboxError>;

    /// Removes the alert after this sink got a 2xx (or wrote it). Removing a
    /// seq that is absent is not an error.
    ///
    /// # Errors
    /// A storage failure; the worker retries the removal.
    fn delivered(&self, seq: u64) -> Result<(), OutboxError>;

    /// Moves the alert to the dead-letter store atomically.
    ///
    /// # Errors
    /// A storage failure; the worker retries the move.
    fn dead_letter(&self, seq: u64, dead: DeadLetter) -> Result<(), OutboxError>;
}

/// An in-memory [`Outbox`] for tests and for `replay` without a database.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    next_seq: u64,
    pending: BTreeMap<u64, PendingAlert>,
    dead: Vec<(PendingAlert, DeadLetter)>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an alert (what the consumer's commit does) and returns its seq.
    pub fn push(
        &self,
        id: impl Into<String>,
        created_at_ms: i64,
        body: impl Into<Arc<[u8]>>,
    ) -> u64 {
        let mut inner = self.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let alert = PendingAlert {
            seq,
            id: id.into(),
            created_at_ms,
            body: body.into(),
        };
        inner.pending.insert(seq, alert);
        seq
    }

    /// The dead letters so far, oldest first.
    pub fn dead_letters(&self) -> Vec<(PendingAlert, DeadLetter)> {
        self.lock().dead.clone()
    }

    /// The alerts still waiting, oldest first.
    pub fn snapshot(&self) -> Vec<PendingAlert> {
        self.lock().pending.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the maps half-updated
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Outbox for MemoryOutbox {
    fn pending(&self, after: Option<u64>, limit: usize) -> Result<Vec<PendingAlert>, OutboxError> {
        let inner = self.lock();
        let start = after.map_or(0, |a| a.saturating_add(1));
        Ok(inner
            .pending
            .range(start..)
            .take(limit)
            .map(|(_, a)| a.clone())
            .collect())
    }

    fn pending_count(&self) -> Result<u64, OutboxError> {
        Ok(self.lock().pending.len() as u64)
    }

    fn delivered(&self, seq: u64) -> Result<(), OutboxError> {
        self.lock().pending.remove(&seq);
        Ok(())
    }

    fn dead_letter(&self, seq: u64, dead: DeadLetter) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        if let Some(alert) = inner.pending.remove(&seq) {
            inner.dead.push((alert, dead));
        }
        Ok(())
    }
}

/// A configured sink, ready to run.
pub enum Sink {
    Webhook(webhook::WebhookSink),
    Ndjson(ndjson::NdjsonSink),
}

impl Sink {
    /// The sink's configured name (its outbox key and metric label).
    pub fn name(&self) -> &str {
        match self {
            Sink::Webhook(s) => s.name(),
            Sink::Ndjson(s) => s.name(),
        }
    }

    /// The sink's counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        match self {
            Sink::Webhook(s) => s.stats(),
            Sink::Ndjson(s) => s.stats(),
        }
    }

    /// Drains `outbox` until `shutdown` is cancelled.
    pub async fn run(
        self,
        outbox: Arc<dyn Outbox>,
        wakeup: Option<WakeupReceiver>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        match self {
            Sink::Webhook(s) => s.run(outbox, wakeup, shutdown).await,
            Sink::Ndjson(s) => s.run(outbox, wakeup, shutdown).await,
        }
    }
}

/// Validates and builds every configured sink (reads secrets, builds HTTP
/// clients), so that a bad sink stops the service at start.
///
/// # Errors
/// The first problem, naming the sink and key.
pub fn build_sinks(configs: &[config::SinkConfig]) -> Result<Vec<Sink>, config::SinkConfigError> {
    config::validate_sinks(configs)?;
    configs
        .iter()
        .map(|c| match c {
            config::SinkConfig::Webhook(w) => {
                webhook::WebhookSink::from_config(w).map(Sink::Webhook)
            }
            config::SinkConfig::Ndjson(n) => ndjson::NdjsonSink::from_config(n).map(Sink::Ndjson),
        })
        .collect()
}

/// A sink's queue in the RocksDB state: one sink name's rows of the shared
/// outbox column family (see [`crate::store`]).
pub struct StoreOutbox {
    store: Arc<crate::store::Store>,
    sink: String,
}

impl StoreOutbox {
    /// The outbox of the sink called `sink`.
    pub fn new(store: Arc<crate::store::Store>, sink: impl Into<String>) -> Self {
        StoreOutbox {
            store,
            sink: sink.into(),
        }
    }
}

impl Outbox for StoreOutbox {
    fn pending(&self, after: Option<u64>, limit: usize) -> Result<Vec<PendingAlert>, OutboxError> {
        let rows = self
            .store
            .outbox_pending(&self.sink, after, limit)
            .map_err(OutboxError::new)?;
        Ok(rows
            .into_iter()
            .map(|row| PendingAlert {
                seq: row.seq,
                id: row.id,
                created_at_ms: row.created_at_ms,
                body: Arc::from(row.body.into_bytes()),
            })
            .collect())
    }

    fn pending_count(&self) -> Result<u64, OutboxError> {
        self.store
            .outbox_count(&self.sink)
            .map_err(OutboxError::new)
    }

    fn delivered(&self, seq: u64) -> Result<(), OutboxError> {
        self.store
            .outbox_remove(&self.sink, seq)
            .map_err(OutboxError::new)
    }

    fn dead_letter(&self, seq: u64, dead: DeadLetter) -> Result<(), OutboxError> {
        let Some(alert) = self
            .store
            .outbox_get(&self.sink, seq)
            .map_err(OutboxError::new)?
        else {
            return Ok(()); // already moved or delivered
        };
        self.store
            .dead_letter(crate::store::DeadLetterRow {
                sink: self.sink.clone(),
                alert,
                reason: dead.reason.as_label().to_owned(),
                status: dead.status,
                response_excerpt: dead.response_excerpt,
                attempts: dead.attempts,
                dead_lettered_at_ms: dead.dead_lettered_at_ms,
            })
            .map_err(OutboxError::new)
    }
}

/// The consumer's side of "new alerts committed": cheap to clone, never
/// blocks, and coalesces (many notifications before a sink looks count once).
#[derive(Debug, Clone)]
pub struct Wakeup {
    tx: Arc<watch::Sender<u64>>,
}

/// A sink's side of a [`Wakeup`].
pub type WakeupReceiver = watch::Receiver<u64>;

impl Default for Wakeup {
    fn default() -> Self {
        Self::new()
    }
}

impl Wakeup {
    /// A new wake-up channel with no subscribers.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        Wakeup { tx: Arc::new(tx) }
    }

    /// Tells every subscribed sink that alerts were committed. Call it after
    /// the write batch commits.
    pub fn notify(&self) {
        // A generation counter rather than `Notify`: every sink sees it, and a
        // sink that is busy when it fires still sees it on its next wait.
        self.tx
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver for one sink worker.
    pub fn subscribe(&self) -> WakeupReceiver {
        self.tx.subscribe()
    }
}

/// Wall-clock time for alert ages, signature timestamps and `Retry-After`
/// dates. Injectable so tests can move it together with tokio's paused clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why one delivery attempt failed. A closed set: it is the `reason` label of
/// `webhook_failures_total`, pre-registered at zero (BR-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// 4xx other than 408/429: permanent, dead-lettered.
    Status4xx,
    /// 408 Request Timeout: retried.
    Status408,
    /// 429 Too Many Requests: retried, `Retry-After` honoured.
    Status429,
    /// 5xx: retried (`Retry-After` honoured on 503).
    Status5xx,
    /// 1xx/3xx: permanent (redirects are not followed, so a POST is never
    /// silently turned into a GET).
    UnexpectedStatus,
    /// The request exceeded the request timeout: retried.
    Timeout,
    /// Connecting failed (refused, DNS, TLS handshake): retried.
    Connect,
    /// Any other transport failure, e.g. the connection dropped mid-response.
    Transport,
    /// A local I/O failure (NDJSON sink): retried.
    Io,
}

impl FailureReason {
    /// Every reason, for pre-registering labels.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::Status4xx,
        FailureReason::Status408,
        FailureReason::Status429,
        FailureReason::Status5xx,
        FailureReason::UnexpectedStatus,
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::Transport,
        FailureReason::Io,
    ];

    /// The metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            FailureReason::Status4xx => "4xx",
            FailureReason::Status408 => "408",
            FailureReason::Status429 => "429",
            FailureReason::Status5xx => "5xx",
            FailureReason::UnexpectedStatus => "unexpected_status",
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::Transport => "transport",
            FailureReason::Io => "io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the request-duration histogram buckets; the
/// last bucket is `+Inf`. Prometheus' default buckets.
pub const DURATION_BUCKETS_SECONDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters one sink worker updates; the metrics module reads them (plain
/// atomics, so the sink does not depend on the metrics registry).
#[derive(Default)]
pub struct SinkStats {
    /// Attempts started (HTTP requests sent, or NDJSON writes).
    pub attempts: AtomicU64,
    /// Alerts delivered and removed from the outbox.
    pub delivered: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Attempts in flight now (gauge).
    pub in_flight: AtomicU64,
    /// Alerts waiting in this sink's outbox, last seen (gauge).
    pub backlog: AtomicU64,
    /// Outbox calls that failed (the worker retries them).
    pub outbox_errors: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
    dead_lettered: [AtomicU64; DeadLetterReason::ALL.len()],
    duration_buckets: [AtomicU64; DURATION_BUCKETS_SECONDS.len() + 1],
    duration_sum_micros: AtomicU64,
    duration_count: AtomicU64,
    /// Called with each request duration in seconds (the metrics module
    /// plugs its Prometheus histogram in here).
    duration_observer: std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>,
}

impl std::fmt::Debug for SinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkStats")
            .field("attempts", &self.attempts)
            .field("delivered", &self.delivered)
            .field("retried", &self.retried)
            .finish_non_exhaustive()
    }
}

impl SinkStats {
    /// Failed attempts with this reason.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason.index()].load(Ordering::Relaxed)
    }

    /// Alerts dead-lettered with this reason.
    pub fn dead_lettered(&self, reason: DeadLetterReason) -> u64 {
        self.dead_lettered[reason.index()].load(Ordering::Relaxed)
    }

    /// Request-duration histogram: non-cumulative bucket counts (one per
    /// [`DURATION_BUCKETS_SECONDS`] bound, then `+Inf`), sum, count.
    pub fn request_durations(&self) -> (Vec<u64>, Duration, u64) {
        let buckets = self
            .duration_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = Duration::from_micros(self.duration_sum_micros.load(Ordering::Relaxed));
        (buckets, sum, self.duration_count.load(Ordering::Relaxed))
    }

    pub(crate) fn record_failure(&self, reason: FailureReason) {
        self.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_dead_letter(&self, reason: DeadLetterReason) {
        self.dead_lettered[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a function called with every request duration (seconds).
    /// Only the first registration takes effect.
    pub fn observe_durations_with(&self, observer: impl Fn(f64) + Send + Sync + 'static) {
        let _ = self.duration_observer.set(Box::new(observer));
    }

    pub(crate) fn record_duration(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(observe) = self.duration_observer.get() {
            observe(secs);
        }
        let bucket = DURATION_BUCKETS_SECONDS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS_SECONDS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs one outbox call on the blocking pool (see the module doc).
pub(crate) async fn outbox_call<T, F>(outbox: &Arc<dyn Outbox>, f: F) -> Result<T, OutboxError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Outbox) -> Result<T, OutboxError> + Send + 'static,
{
    let outbox = Arc::clone(outbox);
    match tokio::task::spawn_blocking(move || f(outbox.as_ref())).await {
        Ok(result) => result,
        Err(join) => Err(OutboxError::new(format!(
            "outbox call did not complete: {join}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_outbox_pages_in_order_and_moves_dead_letters() {
        let outbox = MemoryOutbox::new();
        let a = outbox.push("a", 1, b"{}".to_vec());
        let b = outbox.push("b", 2, b"{}".to_vec());
        let c = outbox.push("c", 3, b"{}".to_vec());
        let ids = |v: Vec<PendingAlert>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(outbox.pending(None, 2).unwrap()), ["a", "b"]);
        assert_eq!(ids(outbox.pending(Some(a), 10).unwrap()), ["b", "c"]);
        outbox.delivered(b).unwrap();
        let dead = DeadLetter {
            reason: DeadLetterReason::Rejected,
            status: Some(400),
            response_excerpt: "bad".into(),
            attempts: 1,
            dead_lettered_at_ms: 9,
        };
        outbox.dead_letter(c, dead.clone()).unwrap();
        assert_eq!(outbox.pending_count().unwrap(), 1);
        assert_eq!(outbox.dead_letters()[0].1, dead);
        assert_eq!(outbox.dead_letters()[0].0.id, "c");
    }

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = FailureReason::ALL.iter().map(|r| r.as_label()).collect();
        labels.extend(DeadLetterReason::ALL.iter().map(|r| r.as_label()));
        let n = labels.len();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n);
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn durations_land_in_buckets() {
        let stats = SinkStats::default();
        stats.record_duration(Duration::from_millis(3));
        stats.record_duration(Duration::from_secs(60));
        let (buckets, sum, count) = stats.request_durations();
        assert_eq!(buckets[0], 1);
        assert_eq!(*buckets.last().unwrap(), 1);
        assert_eq!(count, 2);
        assert_eq!(sum, Duration::from_millis(60_003));
    }

    #[tokio::test]
    async fn wakeup_is_seen_even_if_sent_before_waiting() {
        let wake = Wakeup::new();
        let mut rx = wake.subscribe();
        wake.notify();
        wake.notify();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .unwrap()
            .unwrap();
        rx.borrow_and_update();
        assert!(!rx.has_changed().unwrap());
    }
}
