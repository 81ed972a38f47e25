//! Every Prometheus metric firstseen exports, in one registry, created once.
//!
//! This module owns the metric *names*, their help texts, their label sets and
//! the closed sets of label values. Other stages never build a metric name or a
//! label value themselves: they hold pre-resolved handles ([`PartitionMetrics`],
//! [`RuleMetrics`], [`SinkMetrics`]) or call a method that takes an enum from a
//! closed set ([`DecodeErrorKind`], [`AsnLookupResult`], ...). That is how the
//! architecture invariant "metric labels come from bounded sets only" is kept:
//! a resource name, an IP or a user name cannot reach a label, because no
//! public method accepts a free string except the configured identifiers
//! (partition ids from the hub's properties, rule ids and sink names from the
//! configuration), which are finite and known at start.
//!
//! Every series with a known label set exists at 0 from the first scrape
//! (case BR-15): an alert on `increase(x[5m]) > 0` cannot fire on the first
//! error if the series is only created by that error.
//!
//! It deliberately does not serve HTTP (see [`crate::server`]) nor decide
//! readiness (see [`crate::health`]).
//!
//! # Names
//! `firstseen_<stage>_<noun>_<unit>[_total]`, base units (seconds, bytes).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `firstseen_build_info` | gauge (=1) | `version` |
//! | `firstseen_health_ready` | gauge (0/1, as `/readyz`) | — |
//! | `firstseen_health_check_ok` | gauge (0/1) | `check` (registered check names) |
//! | `firstseen_source_events_received_total` | counter | `partition` |
//! | `firstseen_source_records_received_total` | counter | `partition` |
//! | `firstseen_source_ownership_lost_total` | counter | `partition` |
//! | `firstseen_source_reconnects_total` | counter | `partition` |
//! | `firstseen_source_events_redelivered_total` | counter | `partition` |
//! | `firstseen_source_connection_errors_total` | counter | `kind` ([`ConnectionErrorKind`]) |
//! | `firstseen_source_consumer_lag_events` | gauge | `partition` |
//! | `firstseen_store_checkpoint_sequence_number` | gauge | `partition` |
//! | `firstseen_source_consumer_lag_seconds` | gauge | `partition` |
//! | `firstseen_clock_skew_events_total` | counter | — |
//! | `firstseen_decode_errors_total` | counter | `kind` ([`DecodeErrorKind`]) |
//! | `firstseen_normalize_records_total` | counter | — |
//! | `firstseen_normalize_timestamp_fallbacks_total` | counter | — |
//! | `firstseen_normalize_outcome_unmapped_total` | counter | `value` ([`OutcomeValue`]) |
//! | `firstseen_enrich_asn_lookups_total` | counter | `result` ([`AsnLookupResult`]) |
//! | `firstseen_enrich_asn_database_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `firstseen_enrich_asn_database_build_timestamp_seconds` | gauge | — |
//! | `firstseen_rules_matches_total` | counter | `rule` |
//! | `firstseen_rules_alerts_total` | counter | `rule` |
//! | `firstseen_store_terms` | gauge | — |
//! | `firstseen_store_gc_runs_total` | counter | — |
//! | `firstseen_store_terms_expired_total` | counter | — |
//! | `firstseen_store_checkpoint_commits_total` | counter | `partition` |
//! | `firstseen_store_checkpoint_errors_total` | counter | `partition` |
//! | `firstseen_pipeline_batch_duration_seconds` | histogram | `partition` |
//! | `firstseen_sink_outbox_pending_alerts` | gauge | `sink` |
//! | `firstseen_sink_alerts_delivered_total` | counter | `sink` |
//! | `firstseen_sink_alerts_retried_total` | counter | `sink` |
//! | `firstseen_sink_alerts_dead_lettered_total` | counter | `sink`, `reason` ([`DeadLetterReason`]) |
//! | `firstseen_sink_webhook_failures_total` | counter | `sink`, `reason` ([`WebhookFailureReason`]) |
//! | `firstseen_sink_webhook_request_duration_seconds` | histogram | `sink` |
//!
//! # BR-15 names
//! Case BR-15 names the series that must exist at 0 on the first scrape with
//! generic names; here is where each one lives:
//!
//! | BR-15 | firstseen |
//! | --- | --- |
//! | `parse_errors_total` | `firstseen_decode_errors_total` (every `kind`; `sum()` for the total) |
//! | `invalid_json_messages_total` | `firstseen_decode_errors_total{kind="invalid_json"}` |
//! | `webhook_failures_total{reason=…}` | `firstseen_sink_webhook_failures_total{reason=…}` (failed attempts) and `firstseen_sink_alerts_dead_lettered_total{reason=…}` (alerts given up) |
//! | `checkpoint_errors_total` | `firstseen_store_checkpoint_errors_total` |
//! | `asn_lookup_total{result=…}` | `firstseen_enrich_asn_lookups_total{result=…}` |
//! | `clock_skew_events_total` | `firstseen_clock_skew_events_total` |

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Declares a closed set of label values: an enum, its `ALL` table and
/// `as_str()`. The table is what pre-initialization iterates over, so a new
/// variant is exported at 0 without any other edit.
macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value of the set, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value exported to Prometheus.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }

            /// The variant whose label value is `s`, if any.
            pub fn from_str_opt(s: &str) -> Option<$name> {
                match s { $($value => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

label_set! {
    /// Why an event body (or part of it) could not be decoded into records.
    DecodeErrorKind {
        /// The body is not JSON.
        InvalidJson => "invalid_json",
        /// The body is not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// The body exceeds the configured size limit.
        TooLarge => "too_large",
        /// The JSON nests deeper than the configured limit.
        TooDeep => "too_deep",
        /// The body holds more records than the configured limit.
        TooManyRecords => "too_many_records",
        /// The body is empty.
        EmptyBody => "empty_body",
        /// A record (or the body) is JSON but not an object.
        NotAnObject => "not_an_object",
        /// Any decode error code this table does not know yet, so that a new
        /// code in the decoder is still counted instead of dropped.
        Other => "other",
    }
}

label_set! {
    /// Raw `resultType` / `status` values that did not map to an ECS
    /// `event.outcome`. The raw value itself is never a label: it is folded
    /// into this closed set first by the normalizer.
    OutcomeValue {
        /// `Start` / `Started`.
        Start => "start",
        /// `Accept` / `Accepted`.
        Accept => "accept",
        /// `Succeeded` in an unexpected place.
        Succeeded => "succeeded",
        /// `Failed` in an unexpected place.
        Failed => "failed",
        /// Anything else.
        Other => "other",
    }
}

label_set! {
    /// Result of one caller-IP → AS number lookup.
    AsnLookupResult {
        /// The IP was found in the database.
        Hit => "hit",
        /// The IP is valid but not in the database (private ranges included).
        Miss => "miss",
        /// The caller IP field holds something that is not an IP address.
        InvalidIp => "invalid_ip",
        /// The record has no caller IP at all.
        NoIp => "no_ip",
    }
}

label_set! {
    /// Why an alert was moved to the dead-letter column family.
    DeadLetterReason {
        /// The receiver answered a non-retryable 4xx.
        Status4xx => "4xx",
        /// Retries went on past the configured maximum age.
        MaxAge => "max_age",
        /// Anything else (rendering error, invalid configuration...).
        Other => "other",
    }
}

label_set! {
    /// Why one webhook attempt failed (one alert may fail several times).
    WebhookFailureReason {
        /// The request timed out.
        Timeout => "timeout",
        /// TCP/TLS connection could not be established or broke.
        Connect => "connect",
        /// 408 Request Timeout (retried).
        Http408 => "http_408",
        /// 429 Too Many Requests (retried, `Retry-After` honoured).
        Http429 => "http_429",
        /// Any other 4xx (not retried).
        Http4xx => "http_4xx",
        /// Any 5xx (retried).
        Http5xx => "http_5xx",
        /// Anything else (unexpected 1xx/3xx, body error...).
        Other => "other",
    }
}

impl WebhookFailureReason {
    /// The reason for a non-2xx HTTP status.
    pub fn from_status(status: u16) -> WebhookFailureReason {
        match status {
            408 => WebhookFailureReason::Http408,
            429 => WebhookFailureReason::Http429,
            400..=499 => WebhookFailureReason::Http4xx,
            500..=599 => WebhookFailureReason::Http5xx,
            _ => WebhookFailureReason::Other,
        }
    }
}

label_set! {
    /// Transient Event Hubs connection problems, counted and retried.
    ConnectionErrorKind {
        /// Could not open the connection (DNS, TCP, TLS, WebSocket upgrade).
        Connect => "connect",
        /// The established connection was closed or reset.
        ConnectionClosed => "connection_closed",
        /// The receiver link was detached by the service.
        LinkDetached => "link_detached",
        /// Server busy / throttled.
        ServiceBusy => "service_busy",
        /// An operation timed out.
        Timeout => "timeout",
        /// Getting or refreshing the AAD token (or the CBS put-token) failed.
        Auth => "auth",
        /// Anything else.
        Other => "other",
    }
}

label_set! {
    /// Outcome of loading or reloading the ASN database.
    ReloadResult {
        /// Loaded.
        Ok => "ok",
        /// Failed; the previous database (if any) stays in use.
        Error => "error",
    }
}

/// Buckets for a webhook request: 5 ms to 30 s (the request timeout range).
const WEBHOOK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for one partition batch: 1 ms to 10 s.
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Consumer lag of one partition, as computed by [`compute_lag`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Events enqueued in the partition but not processed yet (≥ 0).
    pub events: i64,
    /// `now − enqueued time` of the last processed event, in seconds,
    /// clamped at 0.
    pub seconds: f64,
    /// The enqueued time was in the future of the local clock.
    pub clock_skew: bool,
}

/// Computes the lag of a partition without touching any metric or clock.
///
/// A negative sequence gap (the partition's last-enqueued number was read
/// before the batch that went past it) is clamped at 0. An enqueued time in
/// the future of `now` means the clocks disagree: the age is clamped at 0 and
/// the skew is reported so that the caller can count it (BR-15: a lag gauge
/// must never go negative, samza/samza#484).
pub fn compute_lag(
    last_enqueued_seq: i64,
    processed_seq: i64,
    enqueued_time: SystemTime,
    now: SystemTime,
) -> Lag {
    let events = last_enqueued_seq.saturating_sub(processed_seq).max(0);
    let (seconds, clock_skew) = match now.duration_since(enqueued_time) {
        Ok(age) => (age.as_secs_f64(), false),
        // `duration_since` fails exactly when `enqueued_time` is later than
        // `now`; equal times are Ok(0) and not skew.
        Err(_) => (0.0, true),
    };
    Lag {
        events,
        seconds,
        clock_skew,
    }
}

/// Pre-resolved handles for one partition. Cloning is cheap (reference
/// counted); hold one per partition task.
#[derive(Clone)]
pub struct PartitionMetrics {
    /// Event Hubs events (AMQP messages) received.
    pub events_received: IntCounter,
    /// Activity-log records decoded out of those events.
    pub records_received: IntCounter,
    /// Times the partition was taken over by a receiver with a higher epoch.
    pub ownership_lost: IntCounter,
    /// Receiver re-attachments after a transient failure.
    pub reconnects: IntCounter,
    /// Events received again (at or below what was already read) and skipped.
    pub redelivered: IntCounter,
    /// Checkpoint write batches committed.
    pub checkpoint_commits: IntCounter,
    /// Checkpoint write batches that failed.
    pub checkpoint_errors: IntCounter,
    /// Sequence-number gap between the partition's last enqueued event and
    /// the last processed one. Prefer [`Metrics::observe_lag`] to setting it.
    pub lag_events: IntGauge,
    /// Sequence number of the last committed checkpoint (-1 before any).
    pub checkpoint_sequence_number: IntGauge,
    /// Age of the last processed event. Prefer [`Metrics::observe_lag`].
    pub lag_seconds: Gauge,
    /// Wall time of one batch: decode → normalize → enrich → rules → commit.
    pub batch_duration: Histogram,
}

/// Pre-resolved handles for one configured rule.
#[derive(Clone)]
pub struct RuleMetrics {
    /// Records that matched the rule's query (before the new-terms decision).
    pub matches: IntCounter,
    /// Alerts produced (new terms) and written to the outbox.
    pub alerts: IntCounter,
}

/// Pre-resolved handles for one configured sink.
#[derive(Clone)]
pub struct SinkMetrics {
    /// Alerts waiting in this sink's outbox (set after each outbox change).
    pub outbox_pending: IntGauge,
    /// Alerts delivered (2xx) and removed from the outbox.
    pub delivered: IntCounter,
    /// Attempts scheduled again after a retryable failure.
    pub retried: IntCounter,
    /// Duration of one webhook request, success or failure.
    pub request_duration: Histogram,
    dead_lettered: [IntCounter; 3],
    failures: [IntCounter; 7],
}

impl SinkMetrics {
    /// Counts one alert moved to the dead-letter column family.
    pub fn dead_lettered(&self, reason: DeadLetterReason) -> &IntCounter {
        &self.dead_lettered[index_of(DeadLetterReason::ALL, reason)]
    }

    /// The failed-attempt counter for `reason`.
    pub fn failure(&self, reason: WebhookFailureReason) -> &IntCounter {
        &self.failures[index_of(WebhookFailureReason::ALL, reason)]
    }
}

/// Position of `v` in its `ALL` table. Every variant is in its table by
/// construction of `label_set!`, so the fallback 0 is never taken; it exists
/// only to avoid a panic path.
fn index_of<T: PartialEq + Copy>(all: &[T], v: T) -> usize {
    all.iter().position(|x| *x == v).unwrap_or(0)
}

/// Error building the metrics registry (a duplicate or invalid name: a
/// programming error, reported instead of panicking).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The configured, finite label values known at start.
#[derive(Debug, Clone, Default)]
pub struct MetricLabels {
    /// Partition ids of the hub (from its properties).
    pub partitions: Vec<String>,
    /// Configured rule ids.
    pub rules: Vec<String>,
    /// Configured sink names.
    pub sinks: Vec<String>,
}

/// Every metric of the process, in its own [`Registry`] (not the global one,
/// so tests can build as many as they like).
pub struct Metrics {
    registry: Registry,
    health_ready: IntGauge,
    health_check_ok: IntGaugeVec,
    events_received: IntCounterVec,
    records_received: IntCounterVec,
    ownership_lost: IntCounterVec,
    reconnects: IntCounterVec,
    redelivered: IntCounterVec,
    connection_errors: IntCounterVec,
    lag_events: IntGaugeVec,
    checkpoint_sequence_number: IntGaugeVec,
    lag_seconds: GaugeVec,
    /// Events whose enqueued time was in the future of the local clock.
    pub clock_skew_events: IntCounter,
    decode_errors: IntCounterVec,
    /// Records normalized to ECS.
    pub records_normalized: IntCounter,
    /// Records whose `@timestamp` came from a fallback field.
    pub timestamp_fallbacks: IntCounter,
    outcome_unmapped: IntCounterVec,
    asn_lookups: IntCounterVec,
    asn_reloads: IntCounterVec,
    /// Build time of the loaded ASN database, Unix seconds (0 = none loaded).
    pub asn_build_timestamp: IntGauge,
    rule_matches: IntCounterVec,
    rule_alerts: IntCounterVec,
    /// Terms currently stored (all rules).
    pub terms_stored: IntGauge,
    /// Garbage-collection passes over the term state.
    pub gc_runs: IntCounter,
    /// Terms removed by garbage collection (older than the rule's window).
    pub terms_expired: IntCounter,
    checkpoint_commits: IntCounterVec,
    checkpoint_errors: IntCounterVec,
    batch_duration: HistogramVec,
    outbox_pending: IntGaugeVec,
    delivered: IntCounterVec,
    retried: IntCounterVec,
    dead_lettered: IntCounterVec,
    webhook_failures: IntCounterVec,
    webhook_duration: HistogramVec,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::with_opts(Opts::new(name, help))?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, MetricsError> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Metrics {
    /// Registers every metric and pre-initializes every series whose labels
    /// are known: each closed set, and each partition, rule and sink given.
    ///
    /// # Errors
    /// Only on a registration conflict, which would be a bug in this module.
    pub fn new(labels: &MetricLabels) -> Result<Arc<Metrics>, MetricsError> {
        let r = Registry::new();
        let build_info = int_gauge_vec(
            &r,
            "firstseen_build_info",
            "Always 1; the version label says which build runs.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let p = &["partition"];
        let m = Metrics {
            health_ready: int_gauge(
                &r,
                "firstseen_health_ready",
                "1 when every readiness check passes (as /readyz answers 200), else 0.",
            )?,
            health_check_ok: int_gauge_vec(
                &r,
                "firstseen_health_check_ok",
                "1 when the readiness check passes (or retries within its grace period), else 0.",
                &["check"],
            )?,
            events_received: counter_vec(
                &r,
                "firstseen_source_events_received_total",
                "Event Hubs events received, per partition.",
                p,
            )?,
            records_received: counter_vec(
                &r,
                "firstseen_source_records_received_total",
                "Activity-log records decoded from received events, per partition.",
                p,
            )?,
            ownership_lost: counter_vec(
                &r,
                "firstseen_source_ownership_lost_total",
                "Times another receiver with a higher owner level took the partition over.",
                p,
            )?,
            reconnects: counter_vec(
                &r,
                "firstseen_source_reconnects_total",
                "Receiver re-attachments after a transient failure, per partition.",
                p,
            )?,
            redelivered: counter_vec(
                &r,
                "firstseen_source_events_redelivered_total",
                "Events received again after a reconnect (already read or committed) and skipped, per partition.",
                p,
            )?,
            connection_errors: counter_vec(
                &r,
                "firstseen_source_connection_errors_total",
                "Transient Event Hubs connection errors, by kind.",
                &["kind"],
            )?,
            checkpoint_sequence_number: int_gauge_vec(
                &r,
                "firstseen_store_checkpoint_sequence_number",
                "Sequence number of the partition's last committed checkpoint (-1 before the first).",
                p,
            )?,
            lag_events: int_gauge_vec(
                &r,
                "firstseen_source_consumer_lag_events",
                "Events enqueued in the partition and not processed yet.",
                p,
            )?,
            lag_seconds: {
                let v = GaugeVec::new(
                    Opts::new(
                        "firstseen_source_consumer_lag_seconds",
                        "Now minus the enqueued time of the last processed event, clamped at 0.",
                    ),
                    p,
                )?;
                r.register(Box::new(v.clone()))?;
                v
            },
            clock_skew_events: counter(
                &r,
                "firstseen_clock_skew_events_total",
                "Events whose enqueued time was in the future of the local clock.",
            )?,
            decode_errors: counter_vec(
                &r,
                "firstseen_decode_errors_total",
                "Event bodies or records that could not be decoded, by kind.",
                &["kind"],
            )?,
            records_normalized: counter(
                &r,
                "firstseen_normalize_records_total",
                "Records normalized to ECS fields.",
            )?,
            timestamp_fallbacks: counter(
                &r,
                "firstseen_normalize_timestamp_fallbacks_total",
                "Records whose timestamp came from a fallback field.",
            )?,
            outcome_unmapped: counter_vec(
                &r,
                "firstseen_normalize_outcome_unmapped_total",
                "Records whose result type did not map to event.outcome, by folded value.",
                &["value"],
            )?,
            asn_lookups: counter_vec(
                &r,
                "firstseen_enrich_asn_lookups_total",
                "Caller IP to AS number lookups, by result.",
                &["result"],
            )?,
            asn_reloads: counter_vec(
                &r,
                "firstseen_enrich_asn_database_reloads_total",
                "ASN database loads and reloads, by result.",
                &["result"],
            )?,
            asn_build_timestamp: int_gauge(
                &r,
                "firstseen_enrich_asn_database_build_timestamp_seconds",
                "Build time of the loaded ASN database (Unix seconds, 0 when none is loaded).",
            )?,
            rule_matches: counter_vec(
                &r,
                "firstseen_rules_matches_total",
                "Records matching the rule query, per rule.",
                &["rule"],
            )?,
            rule_alerts: counter_vec(
                &r,
                "firstseen_rules_alerts_total",
                "Alerts (new terms) written to the outbox, per rule.",
                &["rule"],
            )?,
            terms_stored: int_gauge(&r, "firstseen_store_terms", "Terms currently stored.")?,
            gc_runs: counter(
                &r,
                "firstseen_store_gc_runs_total",
                "Garbage-collection passes over the term state.",
            )?,
            terms_expired: counter(
                &r,
                "firstseen_store_terms_expired_total",
                "Terms removed by garbage collection.",
            )?,
            checkpoint_commits: counter_vec(
                &r,
                "firstseen_store_checkpoint_commits_total",
                "Write batches (terms + outbox + checkpoint) committed, per partition.",
                p,
            )?,
            checkpoint_errors: counter_vec(
                &r,
                "firstseen_store_checkpoint_errors_total",
                "Write batches (terms + outbox + checkpoint) that failed, per partition.",
                p,
            )?,
            batch_duration: histogram_vec(
                &r,
                "firstseen_pipeline_batch_duration_seconds",
                "Time to process and commit one partition batch.",
                p,
                BATCH_BUCKETS,
            )?,
            outbox_pending: int_gauge_vec(
                &r,
                "firstseen_sink_outbox_pending_alerts",
                "Alerts waiting in the outbox, per sink.",
                &["sink"],
            )?,
            delivered: counter_vec(
                &r,
                "firstseen_sink_alerts_delivered_total",
                "Alerts delivered and removed from the outbox, per sink.",
                &["sink"],
            )?,
            retried: counter_vec(
                &r,
                "firstseen_sink_alerts_retried_total",
                "Delivery attempts scheduled again after a retryable failure, per sink.",
                &["sink"],
            )?,
            dead_lettered: counter_vec(
                &r,
                "firstseen_sink_alerts_dead_lettered_total",
                "Alerts moved to the dead-letter store, per sink and reason.",
                &["sink", "reason"],
            )?,
            webhook_failures: counter_vec(
                &r,
                "firstseen_sink_webhook_failures_total",
                "Failed webhook attempts, per sink and reason.",
                &["sink", "reason"],
            )?,
            webhook_duration: histogram_vec(
                &r,
                "firstseen_sink_webhook_request_duration_seconds",
                "Duration of one webhook request, per sink.",
                &["sink"],
                WEBHOOK_BUCKETS,
            )?,
            registry: r,
        };
        for k in ConnectionErrorKind::ALL {
            m.connection_errors.with_label_values(&[k.as_str()]);
        }
        for k in DecodeErrorKind::ALL {
            m.decode_errors.with_label_values(&[k.as_str()]);
        }
        for v in OutcomeValue::ALL {
            m.outcome_unmapped.with_label_values(&[v.as_str()]);
        }
        for v in AsnLookupResult::ALL {
            m.asn_lookups.with_label_values(&[v.as_str()]);
        }
        for v in ReloadResult::ALL {
            m.asn_reloads.with_label_values(&[v.as_str()]);
        }
        // Resolving a handle creates its series at 0: that is the
        // pre-initialization for the configured label values.
        for id in &labels.partitions {
            m.partition(id).checkpoint_sequence_number.set(-1);
        }
        for id in &labels.rules {
            m.rule(id);
        }
        for name in &labels.sinks {
            m.sink(name);
        }
        Ok(Arc::new(m))
    }

    /// Handles for partition `id` (a partition id from the hub's properties,
    /// never anything read from an event). Creates its series at 0 if a
    /// partition appears after start.
    pub fn partition(&self, id: &str) -> PartitionMetrics {
        let l = &[id];
        PartitionMetrics {
            events_received: self.events_received.with_label_values(l),
            records_received: self.records_received.with_label_values(l),
            ownership_lost: self.ownership_lost.with_label_values(l),
            reconnects: self.reconnects.with_label_values(l),
            redelivered: self.redelivered.with_label_values(l),
            checkpoint_commits: self.checkpoint_commits.with_label_values(l),
            checkpoint_errors: self.checkpoint_errors.with_label_values(l),
            lag_events: self.lag_events.with_label_values(l),
            checkpoint_sequence_number: self.checkpoint_sequence_number.with_label_values(l),
            lag_seconds: self.lag_seconds.with_label_values(l),
            batch_duration: self.batch_duration.with_label_values(l),
        }
    }

    /// Handles for rule `rule_id` (from the loaded rule files).
    pub fn rule(&self, rule_id: &str) -> RuleMetrics {
        RuleMetrics {
            matches: self.rule_matches.with_label_values(&[rule_id]),
            alerts: self.rule_alerts.with_label_values(&[rule_id]),
        }
    }

    /// Handles for sink `name` (from the configuration).
    pub fn sink(&self, name: &str) -> SinkMetrics {
        let dl = |r: DeadLetterReason| self.dead_lettered.with_label_values(&[name, r.as_str()]);
        let wf =
            |r: WebhookFailureReason| self.webhook_failures.with_label_values(&[name, r.as_str()]);
        use DeadLetterReason as D;
        use WebhookFailureReason as W;
        SinkMetrics {
            outbox_pending: self.outbox_pending.with_label_values(&[name]),
            delivered: self.delivered.with_label_values(&[name]),
            retried: self.retried.with_label_values(&[name]),
            request_duration: self.webhook_duration.with_label_values(&[name]),
            dead_lettered: [dl(D::Status4xx), dl(D::MaxAge), dl(D::Other)],
            failures: [
                wf(W::Timeout),
                wf(W::Connect),
                wf(W::Http408),
                wf(W::Http429),
                wf(W::Http4xx),
                wf(W::Http5xx),
                wf(W::Other),
            ],
        }
    }

    /// Counts `n` decode errors of `kind`.
    pub fn decode_errors(&self, kind: DecodeErrorKind, n: u64) {
        self.decode_errors
            .with_label_values(&[kind.as_str()])
            .inc_by(n);
    }

    /// Counts `n` decode errors by the decoder's error code (its `code()`).
    /// Unknown codes are counted as `other` rather than becoming a label.
    pub fn decode_errors_by_code(&self, code: &str, n: u64) {
        let kind = DecodeErrorKind::from_str_opt(code).unwrap_or(DecodeErrorKind::Other);
        self.decode_errors(kind, n);
    }

    /// Counts `n` records whose outcome did not map, folded to `value`.
    pub fn outcome_unmapped(&self, value: OutcomeValue, n: u64) {
        self.outcome_unmapped
            .with_label_values(&[value.as_str()])
            .inc_by(n);
    }

    /// Counts `n` unmapped outcomes by the normalizer's folded code (its
    /// `code()`); unknown codes are counted as `other`.
    pub fn outcome_unmapped_by_code(&self, code: &str, n: u64) {
        let value = OutcomeValue::from_str_opt(code).unwrap_or(OutcomeValue::Other);
        self.outcome_unmapped(value, n);
    }

    /// Counts `n` ASN lookups with `result`.
    pub fn asn_lookups(&self, result: AsnLookupResult, n: u64) {
        self.asn_lookups
            .with_label_values(&[result.as_str()])
            .inc_by(n);
    }

    /// Counts one ASN database load; on success also records its build time
    /// (Unix seconds, from the database metadata).
    pub fn asn_reload(&self, result: ReloadResult, build_epoch_seconds: Option<u64>) {
        self.asn_reloads.with_label_values(&[result.as_str()]).inc();
        if let (ReloadResult::Ok, Some(ts)) = (result, build_epoch_seconds) {
            self.asn_build_timestamp
                .set(i64::try_from(ts).unwrap_or(i64::MAX));
        }
    }

    /// Counts `n` ASN lookups by the enricher's label (its `as_label()`).
    pub fn asn_lookups_by_label(&self, label: &str, n: u64) {
        // The enricher's set is closed and equal to ours; an unknown label
        // would be a bug, counted as a miss rather than becoming a label.
        let result = AsnLookupResult::from_str_opt(label).unwrap_or(AsnLookupResult::Miss);
        self.asn_lookups(result, n);
    }

    /// Counts one transient connection error of `kind`.
    pub fn connection_error(&self, kind: ConnectionErrorKind) {
        self.connection_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// Sets the lag gauges of `partition` (see [`compute_lag`]) and counts
    /// clock skew. Call once per batch with the batch's last event.
    pub fn observe_lag(
        &self,
        partition: &PartitionMetrics,
        last_enqueued_seq: i64,
        processed_seq: i64,
        enqueued_time: SystemTime,
        now: SystemTime,
    ) -> Lag {
        let lag = compute_lag(last_enqueued_seq, processed_seq, enqueued_time, now);
        partition.lag_events.set(lag.events);
        partition.lag_seconds.set(lag.seconds);
        if lag.clock_skew {
            self.clock_skew_events.inc();
        }
        lag
    }

    /// Mirrors a readiness report into `firstseen_health_*`, so that alert
    /// rules can see which check fails. Called by the `/metrics` handler
    /// before each scrape; series of checks no longer registered disappear.
    pub fn record_health(&self, report: &crate::health::HealthReport) {
        self.health_ready.set(i64::from(report.is_ready()));
        self.health_check_ok.reset();
        for c in &report.checks {
            let ok = c.status != crate::health::CheckStatus::Failing;
            // Check names are fixed component names and partition ids,
            // registered by the process itself: a bounded set.
            self.health_check_ok
                .with_label_values(&[c.name.as_str()])
                .set(i64::from(ok));
        }
    }

    /// The registry, for tests and custom exporters.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    ///
    /// # Errors
    /// Only if the encoder rejects a metric family (not expected with the
    /// names registered here).
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        // The text encoder only writes UTF-8 (names, label values, numbers).
        String::from_utf8(buf).map_err(|e| {
            MetricsError(prometheus::Error::Msg(format!(
                "exposition is not UTF-8: {e}"
            )))
        })
    }
}

/// Content type of [`Metrics::render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn labels() -> MetricLabels {
        MetricLabels {
            partitions: vec!["0".into(), "1".into()],
            rules: vec!["vm-ext-new-asn".into()],
            sinks: vec!["soar".into()],
        }
    }

    /// Parses the exposition into `series → value` (series = name{labels}).
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn br_15_first_scrape_has_every_error_series_at_zero() {
        // See: ../shared/cases/README.md BR-15.
        let m = Metrics::new(&labels()).unwrap();
        let s = samples(&m.render().unwrap());
        let expect_zero = [
            "firstseen_decode_errors_total{kind=\"invalid_json\"}".to_string(),
            "firstseen_store_checkpoint_errors_total{partition=\"0\"}".to_string(),
            "firstseen_store_checkpoint_errors_total{partition=\"1\"}".to_string(),
            "firstseen_clock_skew_events_total".to_string(),
            "firstseen_rules_alerts_total{rule=\"vm-ext-new-asn\"}".to_string(),
            "firstseen_source_ownership_lost_total{partition=\"1\"}".to_string(),
        ];
        for name in expect_zero {
            assert_eq!(s.get(&name), Some(&0.0), "{name} missing or non-zero");
        }
        for k in DecodeErrorKind::ALL {
            let n = format!("firstseen_decode_errors_total{{kind=\"{}\"}}", k.as_str());
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        for r in AsnLookupResult::ALL {
            let n = format!(
                "firstseen_enrich_asn_lookups_total{{result=\"{}\"}}",
                r.as_str()
            );
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        for r in WebhookFailureReason::ALL {
            let n = format!(
                "firstseen_sink_webhook_failures_total{{reason=\"{}\",sink=\"soar\"}}",
                r.as_str()
            );
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        for r in DeadLetterReason::ALL {
            let n = format!(
                "firstseen_sink_alerts_dead_lettered_total{{reason=\"{}\",sink=\"soar\"}}",
                r.as_str()
            );
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        for k in ConnectionErrorKind::ALL {
            let n = format!(
                "firstseen_source_connection_errors_total{{kind=\"{}\"}}",
                k.as_str()
            );
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        for v in OutcomeValue::ALL {
            let n = format!(
                "firstseen_normalize_outcome_unmapped_total{{value=\"{}\"}}",
                v.as_str()
            );
            assert_eq!(s.get(&n), Some(&0.0), "{n}");
        }
        assert_eq!(
            s.get(&format!(
                "firstseen_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )),
            Some(&1.0)
        );
        // Every sample of a counter is 0 before any event.
        for (series, v) in &s {
            if series.contains("_total") {
                assert_eq!(*v, 0.0, "{series}");
            }
        }
    }

    #[test]
    fn every_family_in_the_doc_table_is_exported_at_start() {
        // The module doc is the operator's reference; a family missing from
        // the scrape (or from the doc) would make alerts silently not match.
        let m = Metrics::new(&labels()).unwrap();
        let exported: std::collections::BTreeSet<String> = m
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let documented: std::collections::BTreeSet<String> = include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `firstseen_"))
            .filter_map(|l| l.split_once('`'))
            .map(|(name, _)| format!("firstseen_{name}"))
            .filter(|n| n != "firstseen_health_check_ok")
            .collect();
        assert_eq!(exported, documented);
        // health_check_ok has no series until a report is recorded.
        assert_eq!(exported.len(), 33);
        let m2 = Metrics::new(&labels()).unwrap();
        let h = crate::health::Health::new();
        h.register("rocksdb", "opening");
        m2.record_health(&h.report());
        assert_eq!(m2.registry().gather().len(), 34);
    }

    #[test]
    fn br_15_lag_clamped_and_skew_counted() {
        // See: ../shared/cases/README.md BR-15.
        let m = Metrics::new(&labels()).unwrap();
        let p = m.partition("0");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);

        let lag = m.observe_lag(&p, 10, 10, now + Duration::from_secs(5), now);
        assert_eq!(
            lag,
            Lag {
                events: 0,
                seconds: 0.0,
                clock_skew: true
            }
        );
        assert_eq!(p.lag_seconds.get(), 0.0);
        assert_eq!(m.clock_skew_events.get(), 1);

        let lag = m.observe_lag(&p, 15, 11, now - Duration::from_secs(120), now);
        assert!((lag.seconds - 120.0).abs() < 1e-9, "{lag:?}");
        assert_eq!(p.lag_seconds.get(), 120.0);
        assert_eq!(p.lag_events.get(), 4);
        assert!(!lag.clock_skew);
        assert_eq!(
            m.clock_skew_events.get(),
            1,
            "no skew counted for a past event"
        );

        // A stale "last enqueued" read (below what was processed) is not
        // a negative gap.
        let lag = compute_lag(3, 7, now, now);
        assert_eq!(
            lag,
            Lag {
                events: 0,
                seconds: 0.0,
                clock_skew: false
            }
        );
        assert_eq!(compute_lag(i64::MAX, i64::MIN, now, now).events, i64::MAX);
    }

    #[test]
    fn labels_stay_in_closed_sets() {
        let m = Metrics::new(&labels()).unwrap();
        m.decode_errors_by_code("some_new_code", 2);
        m.decode_errors_by_code("too_deep", 1);
        m.outcome_unmapped_by_code("accept", 1);
        m.outcome_unmapped_by_code("10.0.0.1 by alice", 1);
        m.asn_lookups(AsnLookupResult::InvalidIp, 3);
        m.sink("soar")
            .failure(WebhookFailureReason::from_status(503))
            .inc();
        m.sink("soar").dead_lettered(DeadLetterReason::MaxAge).inc();
        m.asn_reload(ReloadResult::Ok, Some(1_712_000_000));
        let text = m.render().unwrap();
        let s = samples(&text);
        assert_eq!(s["firstseen_decode_errors_total{kind=\"other\"}"], 2.0);
        assert_eq!(s["firstseen_decode_errors_total{kind=\"too_deep\"}"], 1.0);
        assert_eq!(
            s["firstseen_normalize_outcome_unmapped_total{value=\"accept\"}"],
            1.0
        );
        assert_eq!(
            s["firstseen_normalize_outcome_unmapped_total{value=\"other\"}"],
            1.0
        );
        assert_eq!(
            s["firstseen_enrich_asn_lookups_total{result=\"invalid_ip\"}"],
            3.0
        );
        assert_eq!(
            s["firstseen_sink_webhook_failures_total{reason=\"http_5xx\",sink=\"soar\"}"],
            1.0
        );
        assert_eq!(
            s["firstseen_sink_alerts_dead_lettered_total{reason=\"max_age\",sink=\"soar\"}"],
            1.0
        );
        assert_eq!(
            s["firstseen_enrich_asn_database_build_timestamp_seconds"],
            1_712_000_000.0
        );

        // Every label value is from a closed set or a configured id.
        let allowed: Vec<&str> = DecodeErrorKind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain(OutcomeValue::ALL.iter().map(|v| v.as_str()))
            .chain(AsnLookupResult::ALL.iter().map(|v| v.as_str()))
            .chain(DeadLetterReason::ALL.iter().map(|v| v.as_str()))
            .chain(WebhookFailureReason::ALL.iter().map(|v| v.as_str()))
            .chain(ConnectionErrorKind::ALL.iter().map(|v| v.as_str()))
            .chain(ReloadResult::ALL.iter().map(|v| v.as_str()))
            .chain([
                "0",
                "1",
                "vm-ext-new-asn",
                "soar",
                env!("CARGO_PKG_VERSION"),
            ])
            .chain(["+Inf"])
            .collect();
        for series in s.keys() {
            let Some((_, rest)) = series.split_once('{') else {
                continue;
            };
            for pair in rest.trim_end_matches('}').split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                let v = v.trim_matches('"');
                if k == "le" {
                    assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{series}");
                } else {
                    assert!(
                        allowed.contains(&v),
                        "label {k}={v} outside closed sets in {series}"
                    );
                }
            }
        }
        assert!(!text.contains("10.0.0.1") && !text.contains("alice"));
    }

    #[test]
    fn webhook_status_classification() {
        assert_eq!(
            WebhookFailureReason::from_status(408),
            WebhookFailureReason::Http408
        );
        assert_eq!(
            WebhookFailureReason::from_status(429),
            WebhookFailureReason::Http429
        );
        assert_eq!(
            WebhookFailureReason::from_status(404),
            WebhookFailureReason::Http4xx
        );
        assert_eq!(
            WebhookFailureReason::from_status(500),
            WebhookFailureReason::Http5xx
        );
        assert_eq!(
            WebhookFailureReason::from_status(302),
            WebhookFailureReason::Other
        );
        for r in WebhookFailureReason::ALL {
            assert_eq!(WebhookFailureReason::from_str_opt(r.as_str()), Some(*r));
        }
    }
}
