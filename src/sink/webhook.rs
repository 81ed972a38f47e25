//! The webhook delivery worker: drains one sink's outbox with signed HTTPS
//! POSTs, retrying without losing alerts and without storming the receiver
//! (BR-13).
//!
//! Owns the HTTP wire format (headers, body, status handling) and the
//! scheduling of attempts. It does not decide what is retryable (that is
//! [`super::retry`]) and does not know the storage layout (that is the
//! [`Outbox`] implementation).
//!
//! # Scheduling
//!
//! The worker keeps a bounded window of the oldest pending alerts in memory
//! (refilled from the outbox on a [`super::Wakeup`], on completions, and on a
//! poll tick that rescans from the start), and starts attempts oldest first.
//!
//! Two clocks gate an attempt:
//! - **the sink gate**: any retryable failure puts the whole sink in
//!   backoff (`consecutive failures` → full-jitter wait, `Retry-After`
//!   honoured) and, until the next response that is not a retryable failure,
//!   limits it to one request in flight. A receiver that is down therefore
//!   sees one probe per backoff interval, however large the backlog, and when
//!   it comes back the backlog drains oldest first;
//! - **the alert's own backoff**, for failures that may be about that alert
//!   (5xx, 408, 429, timeouts): a "poison" alert that always gets a 500 backs
//!   off on its own schedule while the alerts behind it keep flowing.
//!   Connection failures say nothing about the alert, so they only move the
//!   sink gate (which keeps the oldest alert first in line).
//!
//! An alert is removed from the outbox only after a 2xx; a permanent failure
//! (4xx other than 408/429) or passing `max_age` moves it to the dead-letter
//! store with the last status and a bounded response excerpt. Outbox calls
//! that fail are retried; nothing is dropped.
//!
//! # Shutdown
//!
//! On cancellation the worker stops starting attempts, gives in-flight ones
//! `shutdown_grace` to finish (acknowledging those that succeed), then
//! abandons the rest: they stay in the outbox and are resent after restart
//! with the same `webhook-id`, which receivers use to deduplicate.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{validate_webhook, SinkConfigError, WebhookConfig};
use super::retry::{
    classify_status, classify_transport, system_time_from_ms, Classification, FullJitter, Jitter,
    RetryPolicy, TransportFailure,
};
use super::signing::{Signer, SigningKey};
use super::{
    outbox_call, Clock, DeadLetter, DeadLetterReason, FailureReason, Outbox, PendingAlert,
    SinkStats, SystemClock, WakeupReceiver, RESPONSE_EXCERPT_LIMIT,
};

/// Alerts held in memory per in-flight slot; the rest wait in the outbox.
const WINDOW_PER_SLOT: usize = 64;

/// A configured webhook sink, ready to [`run`](WebhookSink::run).
pub struct WebhookSink {
    name: String,
    shared: Arc<Shared>,
    policy: RetryPolicy,
    concurrency: usize,
    window: usize,
    poll_interval: Duration,
    shutdown_grace: Duration,
    jitter: Box<dyn Jitter>,
}

/// What every attempt task needs.
struct Shared {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    signer: Signer,
    clock: Arc<dyn Clock>,
    stats: Arc<SinkStats>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: receivers such as chat bridges carry tokens in it.
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl WebhookSink {
    /// Validates the config, reads secrets and header values, loads the extra
    /// CA file and builds the HTTP client.
    ///
    /// # Errors
    /// A [`SinkConfigError`] naming the key (bad URL, missing secret, bad CA
    /// file, ...).
    pub fn from_config(cfg: &WebhookConfig) -> Result<Self, SinkConfigError> {
        validate_webhook(cfg)?;
        let name = cfg.name.as_str();
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| SinkConfigError::new(name, "url", e.to_string()))?;

        let mut keys = Vec::with_capacity(cfg.signing_secrets.len());
        for (i, source) in cfg.signing_secrets.iter().enumerate() {
            let key = format!("signing_secrets[{i}]");
            let secret = source.resolve(name, &key)?;
            keys.push(
                SigningKey::from_whsec(&secret)
                    .map_err(|e| SinkConfigError::new(name, &key, e.to_string()))?,
            );
        }
        let signer = Signer::new(keys)
            .map_err(|e| SinkConfigError::new(name, "signing_secrets", e.to_string()))?;

        let mut headers = HeaderMap::new();
        for (header, source) in &cfg.headers {
            let key = format!("headers.{header}");
            let value = source.resolve(name, &key)?;
            let header_name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|e| SinkConfigError::new(name, &key, e.to_string()))?;
            let mut header_value = HeaderValue::from_str(&value).map_err(|_| {
                SinkConfigError::new(
                    name,
                    &key,
                    "the value contains characters not allowed in a header",
                )
            })?;
            // Keeps tokens out of debug logs of the HTTP stack.
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }

        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            // A 301/302 would turn the POST into a GET and lose the alert;
            // a redirect is a configuration problem and is dead-lettered.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!cfg.allow_insecure_http)
            .user_agent(concat!("firstseen/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.extra_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                SinkConfigError::new(
                    name,
                    "extra_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SinkConfigError::new(
                    name,
                    "extra_ca_file",
                    format!("{} is not a PEM bundle: {e}", path.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(SinkConfigError::new(
                    name,
                    "extra_ca_file",
                    "the file holds no PEM certificate",
                ));
            }
            // Added to the platform verifier's roots, not replacing them.
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| {
            SinkConfigError::new(
                name,
                "extra_ca_file",
                format!("cannot build the HTTP client: {e}"),
            )
        })?;

        let concurrency = cfg.concurrency.max(1);
        Ok(WebhookSink {
            name: cfg.name.clone(),
            shared: Arc::new(Shared {
                client,
                url,
                headers,
                signer,
                clock: Arc::new(SystemClock),
                stats: Arc::new(SinkStats::default()),
            }),
            policy: cfg.retry.into(),
            concurrency,
            window: concurrency * WINDOW_PER_SLOT,
            poll_interval: cfg.poll_interval,
            shutdown_grace: cfg.shutdown_grace,
            jitter: Box::new(FullJitter::new()),
        })
    }

    /// Replaces the wall clock (alert ages, signature timestamps, HTTP dates).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.shared_mut().clock = clock;
        self
    }

    /// Replaces the jitter source (tests use [`super::retry::NoJitter`]).
    pub fn with_jitter(mut self, jitter: Box<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// The counters this sink updates; clone the `Arc` before `run`.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn shared_mut(&mut self) -> &mut Shared {
        // Only called while building, before `run` clones the Arc.
        Arc::get_mut(&mut self.shared).expect("WebhookSink is configured before it runs")
    }

    /// Drains the outbox until `shutdown` is cancelled: first what is already
    /// pending (alerts left by a previous run), then whatever the consumer
    /// commits. `wakeup` is optional; without it the worker polls.
    pub async fn run(
        self,
        outbox: Arc<dyn Outbox>,
        wakeup: Option<WakeupReceiver>,
        shutdown: CancellationToken,
    ) {
        let poll_interval = self.poll_interval;
        let grace = self.shutdown_grace;
        let mut worker = Worker::new(self, outbox);
        let mut wakeup = wakeup;
        let mut poll = tokio::time::interval(poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The interval's first tick fires at once: the start drains the
        // outbox with a full scan.
        let mut refresh = Refresh::None;
        tracing::info!(sink = %worker.sink.name, "webhook sink started");
        loop {
            worker.flush_acks().await;
            match std::mem::replace(&mut refresh, Refresh::None) {
                Refresh::None => {}
                Refresh::Incremental => worker.load(worker.cursor).await,
                Refresh::Full => worker.load(None).await,
            }
            worker.expire();
            worker.flush_acks().await;
            worker.dispatch();
            let deadline = worker.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = worker.in_flight.join_next(), if !worker.in_flight.is_empty() => {
                    if worker.complete(joined) {
                        refresh = refresh.max(Refresh::Incremental);
                    }
                }
                woke = wait_wakeup(&mut wakeup) => {
                    if woke {
                        refresh = refresh.max(Refresh::Incremental);
                    } else {
                        // The consumer dropped its side; polling remains.
                        wakeup = None;
                    }
                }
                _ = poll.tick() => refresh = Refresh::Full,
                () = sleep_until_opt(deadline) => {}
            }
        }

        tracing::info!(sink = %worker.sink.name, in_flight = worker.in_flight.len(), "webhook sink stopping");
        let grace_timer = tokio::time::sleep(grace);
        tokio::pin!(grace_timer);
        while !worker.in_flight.is_empty() {
            tokio::select! {
                () = &mut grace_timer => break,
                Some(joined) = worker.in_flight.join_next() => { worker.complete(joined); }
            }
        }
        let abandoned = worker.in_flight.len();
        worker.in_flight.abort_all();
        worker
            .sink
            .shared
            .stats
            .in_flight
            .store(0, Ordering::Relaxed);
        worker.flush_acks().await;
        tracing::info!(sink = %worker.sink.name, abandoned, "webhook sink stopped; undelivered alerts stay in the outbox");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refresh {
    None,
    Incremental,
    Full,
}

async fn wait_wakeup(wakeup: &mut Option<WakeupReceiver>) -> bool {
    match wakeup {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One alert in the in-memory window.
struct Slot {
    alert: PendingAlert,
    attempts: u32,
    failures: u32,
    not_before: Instant,
    in_flight: bool,
    last_status: Option<u16>,
    last_error: String,
}

/// An outbox write the worker still owes (retried until it succeeds).
enum Ack {
    Delivered,
    Dead(DeadLetter),
}

/// The result of one attempt, as the attempt task reports it.
struct AttemptOutcome {
    class: Classification,
    status: Option<u16>,
    excerpt: String,
    elapsed: Duration,
}

struct Worker {
    sink: WebhookSink,
    outbox: Arc<dyn Outbox>,
    window: BTreeMap<u64, Slot>,
    acks: BTreeMap<u64, Ack>,
    cursor: Option<u64>,
    /// The last load filled its whole limit: more may be waiting.
    maybe_more: bool,
    gate: Instant,
    sink_failures: u32,
    /// The alert whose own failure (not a connection failure) last put the
    /// sink in backoff; the next probe prefers another alert.
    last_failed: Option<u64>,
    last_sink_error: (Option<u16>, String),
    in_flight: JoinSet<(u64, AttemptOutcome)>,
}

impl Worker {
    fn new(sink: WebhookSink, outbox: Arc<dyn Outbox>) -> Self {
        Worker {
            sink,
            outbox,
            window: BTreeMap::new(),
            acks: BTreeMap::new(),
            cursor: None,
            maybe_more: false,
            gate: Instant::now(),
            sink_failures: 0,
            last_failed: None,
            last_sink_error: (None, String::new()),
            in_flight: JoinSet::new(),
        }
    }

    fn stats(&self) -> &SinkStats {
        &self.sink.shared.stats
    }

    /// Fills the window with the oldest alerts after `after` (all when None).
    async fn load(&mut self, after: Option<u64>) {
        let room = self
            .sink
            .window
            .saturating_sub(self.window.len() + self.acks.len());
        if room > 0 {
            // A full scan re-reads what the window already holds.
            let limit = if after.is_none() {
                room + self.window.len() + self.acks.len()
            } else {
                room
            };
            match outbox_call(&self.outbox, move |o| o.pending(after, limit)).await {
                Ok(alerts) => {
                    self.maybe_more = alerts.len() >= limit;
                    let now = Instant::now();
                    for alert in alerts {
                        if self.window.len() + self.acks.len() >= self.sink.window {
                            self.maybe_more = true;
                            break;
                        }
                        let seq = alert.seq;
                        if self.window.contains_key(&seq) || self.acks.contains_key(&seq) {
                            continue;
                        }
                        self.cursor = Some(self.cursor.map_or(seq, |c| c.max(seq)));
                        self.window.insert(
                            seq,
                            Slot {
                                alert,
                                attempts: 0,
                                failures: 0,
                                not_before: now,
                                in_flight: false,
                                last_status: None,
                                last_error: String::new(),
                            },
                        );
                    }
                }
                Err(e) => {
                    self.stats().outbox_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %self.sink.name, error = %e, "reading the outbox failed; retrying on the next poll");
                }
            }
        }
        match outbox_call(&self.outbox, |o| o.pending_count()).await {
            Ok(n) => self.stats().backlog.store(n, Ordering::Relaxed),
            Err(e) => {
                self.stats().outbox_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = %self.sink.name, error = %e, "counting the outbox failed");
            }
        }
    }

    /// Writes owed acknowledgements and dead letters; keeps failed ones.
    async fn flush_acks(&mut self) {
        while let Some((seq, ack)) = self.acks.pop_first() {
            let result = match &ack {
                Ack::Delivered => outbox_call(&self.outbox, move |o| o.delivered(seq)).await,
                Ack::Dead(dead) => {
                    let dead = dead.clone();
                    outbox_call(&self.outbox, move |o| o.dead_letter(seq, dead)).await
                }
            };
            if let Err(e) = result {
                self.stats().outbox_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = %self.sink.name, seq, error = %e, "updating the outbox failed; will retry");
                self.acks.insert(seq, ack);
                return;
            }
        }
    }

    /// Dead-letters alerts past `max_age` that are not in flight.
    fn expire(&mut self) {
        let now_ms = self.sink.shared.clock.now_ms();
        let expired: Vec<u64> = self
            .window
            .iter()
            .filter(|(_, s)| {
                !s.in_flight && self.sink.policy.expired(s.alert.created_at_ms, now_ms)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let Some(slot) = self.window.remove(&seq) else {
                continue;
            };
            // An alert never attempted (the sink was in backoff) carries the
            // sink's last error, so the dead letter says why.
            let (status, excerpt) = if slot.attempts > 0 {
                (slot.last_status, slot.last_error)
            } else if self.last_sink_error.1.is_empty() {
                (None, "not attempted before max_age".to_owned())
            } else {
                self.last_sink_error.clone()
            };
            tracing::warn!(sink = %self.sink.name, alert_id = %slot.alert.id, attempts = slot.attempts,
                "alert passed max_age undelivered; dead-lettered");
            self.stats()
                .record_dead_letter(DeadLetterReason::MaxAgeExceeded);
            self.acks.insert(
                seq,
                Ack::Dead(DeadLetter {
                    reason: DeadLetterReason::MaxAgeExceeded,
                    status,
                    response_excerpt: excerpt,
                    attempts: slot.attempts,
                    dead_lettered_at_ms: now_ms,
                }),
            );
        }
    }

    /// Requests allowed in flight now: one probe while the sink is failing.
    fn limit(&self) -> usize {
        if self.sink_failures > 0 {
            1
        } else {
            self.sink.concurrency
        }
    }

    /// Starts attempts for due alerts, oldest first.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if now < self.gate {
            return;
        }
        let room = self.limit().saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        let due = self
            .window
            .iter()
            .filter(|(_, s)| !s.in_flight && s.not_before <= now)
            .map(|(seq, _)| *seq);
        let due: Vec<u64> = if self.sink_failures > 0 {
            // Probing a failing sink: if the last failure may have been about
            // one alert, probe with another one when there is one, so a
            // poison alert cannot hold the sink in backoff.
            let candidates: Vec<u64> = due.collect();
            let other = candidates
                .iter()
                .copied()
                .find(|seq| Some(*seq) != self.last_failed);
            other.or(candidates.first().copied()).into_iter().collect()
        } else {
            due.take(room).collect()
        };
        for seq in due {
            let Some(slot) = self.window.get_mut(&seq) else {
                continue;
            };
            slot.in_flight = true;
            slot.attempts += 1;
            let alert = slot.alert.clone();
            let shared = Arc::clone(&self.sink.shared);
            shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
            shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            self.in_flight
                .spawn(async move { (seq, attempt(&shared, &alert).await) });
        }
    }

    /// When the loop must wake up next to dispatch or expire something.
    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let now_ms = self.sink.shared.clock.now_ms();
        let can_dispatch = self.in_flight.len() < self.limit();
        self.window
            .values()
            .filter(|s| !s.in_flight)
            .flat_map(|s| {
                let expiry = now
                    + self
                        .sink
                        .policy
                        .remaining_age(s.alert.created_at_ms, now_ms);
                let due = can_dispatch.then(|| s.not_before.max(self.gate));
                std::iter::once(expiry).chain(due)
            })
            .min()
    }

    /// Applies an attempt's outcome. Returns true when a slot left the
    /// window and more alerts may be waiting in the outbox.
    fn complete(&mut self, joined: Result<(u64, AttemptOutcome), tokio::task::JoinError>) -> bool {
        self.stats().in_flight.fetch_sub(1, Ordering::Relaxed);
        let (seq, outcome) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A panicking attempt task cannot tell which alert it held;
                // the full rescan on the next poll tick picks it up again.
                tracing::error!(sink = %self.sink.name, error = %e, "a delivery task failed");
                for slot in self.window.values_mut() {
                    slot.in_flight = false;
                }
                return false;
            }
        };
        self.stats().record_duration(outcome.elapsed);
        let Some(slot) = self.window.get_mut(&seq) else {
            return false;
        };
        slot.in_flight = false;
        slot.last_status = outcome.status;
        slot.last_error = outcome.excerpt;
        match outcome.class {
            Classification::Success => {
                self.sink_failures = 0;
                self.last_failed = None;
                let Some(slot) = self.window.remove(&seq) else {
                    return false;
                };
                self.stats().delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sink = %self.sink.name, alert_id = %slot.alert.id, attempts = slot.attempts, "alert delivered");
                self.acks.insert(seq, Ack::Delivered);
                self.maybe_more
            }
            Classification::Permanent { reason } => {
                // The receiver answered: it is up, whatever it thinks of this alert.
                self.sink_failures = 0;
                self.last_failed = None;
                let Some(slot) = self.window.remove(&seq) else {
                    return false;
                };
                self.stats().record_failure(reason);
                self.stats().record_dead_letter(DeadLetterReason::Rejected);
                tracing::warn!(sink = %self.sink.name, alert_id = %slot.alert.id, status = slot.last_status.unwrap_or(0),
                    reason = reason.as_label(), "receiver rejected the alert; dead-lettered");
                self.acks.insert(
                    seq,
                    Ack::Dead(DeadLetter {
                        reason: DeadLetterReason::Rejected,
                        status: slot.last_status,
                        response_excerpt: slot.last_error,
                        attempts: slot.attempts,
                        dead_lettered_at_ms: self.sink.shared.clock.now_ms(),
                    }),
                );
                self.maybe_more
            }
            Classification::Retryable {
                reason,
                retry_after,
            } => {
                let now = Instant::now();
                slot.failures += 1;
                let alert_failures = slot.failures;
                self.last_sink_error = (slot.last_status, slot.last_error.clone());
                self.sink_failures = self.sink_failures.saturating_add(1);
                let sink_delay = self.sink.policy.next_delay(
                    self.sink_failures,
                    retry_after,
                    self.sink.jitter.as_mut(),
                );
                self.gate = self.gate.max(now + sink_delay);
                let alert_delay = if reason == FailureReason::Connect {
                    Duration::ZERO
                } else {
                    self.last_failed = Some(seq);
                    self.sink.policy.next_delay(
                        alert_failures,
                        retry_after,
                        self.sink.jitter.as_mut(),
                    )
                };
                if let Some(slot) = self.window.get_mut(&seq) {
                    slot.not_before = now + alert_delay;
                    tracing::warn!(sink = %self.sink.name, alert_id = %slot.alert.id, attempts = slot.attempts,
                        reason = reason.as_label(), status = slot.last_status.unwrap_or(0),
                        retry_in_ms = u64::try_from(sink_delay.max(alert_delay).as_millis()).unwrap_or(u64::MAX),
                        "delivery failed; will retry");
                }
                self.stats().record_failure(reason);
                self.stats().retried.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// One signed POST. Never panics; every failure becomes an outcome.
async fn attempt(shared: &Shared, alert: &PendingAlert) -> AttemptOutcome {
    let started = Instant::now();
    let done = |class, status, excerpt| AttemptOutcome {
        class,
        status,
        excerpt,
        elapsed: started.elapsed(),
    };
    let Ok(id) = HeaderValue::from_str(&alert.id) else {
        return done(
            Classification::Permanent {
                reason: FailureReason::UnexpectedStatus,
            },
            None,
            "the alert id is not a valid header value".to_owned(),
        );
    };
    // Fresh on every attempt, as the spec requires (receivers reject stale
    // timestamps); the id stays the same so receivers can deduplicate.
    let timestamp = shared.clock.now_ms().div_euclid(1000);
    let signature = shared
        .signer
        .signature_header(&alert.id, timestamp, &alert.body);
    let mut headers = shared.headers.clone();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("webhook-id"), id);
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(timestamp),
    );
    if let Ok(value) = HeaderValue::from_str(&signature) {
        headers.insert(HeaderName::from_static("webhook-signature"), value);
    }
    let request = shared
        .client
        .post(shared.url.clone())
        .headers(headers)
        .body(alert.body.to_vec());
    match request.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let now = system_time_from_ms(shared.clock.now_ms());
            let class = classify_status(status, retry_after.as_deref(), now);
            // Read at most the excerpt; the rest of a large error page is not
            // worth the time or memory.
            let mut body = Vec::new();
            while body.len() < RESPONSE_EXCERPT_LIMIT {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            body.truncate(RESPONSE_EXCERPT_LIMIT);
            done(
                class,
                Some(status),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(e) => {
            let failure = if e.is_connect() {
                TransportFailure::Connect
            } else if e.is_timeout() {
                TransportFailure::Timeout
            } else {
                TransportFailure::Other
            };
            done(classify_transport(failure), None, error_text(e))
        }
    }
}

/// The error and its causes, without the URL (it may carry a token), bounded.
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.len() > RESPONSE_EXCERPT_LIMIT {
        let mut cut = RESPONSE_EXCERPT_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
