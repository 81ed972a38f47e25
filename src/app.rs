//! `firstseen run`: the long-running service. Wires the stages together:
//!
//! ```text
//! partition readers (one task each) ──bounded channel──▶ evaluator (one thread)
//!   source::eventhubs                                    decode → normalize → enrich
//!                                                        → rules → one RocksDB batch:
//!                                                          terms + outbox + checkpoint
//!                                                                 │ wake-up
//!                                                                 ▼
//!                                                        sink workers (one per sink)
//! ```
//!
//! Invariants kept here (see ARCHITECTURE.md):
//! - **One evaluator.** Every term decision is made by one thread fed by all
//!   partition readers, so a term arriving on two partitions at once alerts
//!   once.
//! - **One commit per batch.** A batch's term updates, its alerts (one outbox
//!   row per sink), its dead events and the partition checkpoint are one
//!   synced RocksDB write: a crash either keeps all of it or none, so
//!   re-reading after a restart neither loses nor doubles an alert.
//! - **Events at or below the committed checkpoint are skipped**, whatever
//!   the reader hands over (the SDK may replay after a reconnect).
//! - Consumption never waits on delivery: alerts wait in the outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Candidate, Detector, SourcePosition};
use crate::enrich::{AsnEnricher, AsnFormat, AsnSource};
use crate::health::Health;
use crate::metrics::{MetricLabels, Metrics, PartitionMetrics, RuleMetrics};
use crate::normalize::format_timestamp;
use crate::pipeline::{process_body_prefiltered, BodyContext, PipelineStats};
use crate::sink::{SinkStats, StoreOutbox, Wakeup};
use crate::source::eventhubs::{
    EventHubsSource, PartitionBatch, PartitionExit, SourceStats, StartAfter,
};
use crate::store::{BatchWrite, Checkpoint, DeadEventRow, Store};

/// Batches waiting between the readers and the evaluator. Small on
/// purpose: when the evaluator falls behind, readers wait (backpressure)
/// instead of buffering the hub in memory.
const CHANNEL_BATCHES: usize = 16;

/// Runs the service until SIGTERM/SIGINT (or `shutdown` is cancelled).
///
/// # Errors
/// Start-up problems (configuration, rules, ASN database, state directory,
/// Event Hubs authentication or configuration) fail fast with a message
/// naming what is wrong. Once running, transient failures are retried and
/// counted, not returned.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let eh_config = config
        .eventhubs
        .clone()
        .context("[eventhubs] is not configured: `run` needs an Event Hubs namespace and hub (see config/firstseen.toml)")?;

    // Validate everything before consuming anything.
    let (detector, warnings) = crate::engine::load_detection(
        &config.rules.path,
        &config.allowlist,
        crate::replay::now_ms(),
    )?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Terms older than the longest history window (plus grace) can be
    // deleted: no rule can find them "seen" any more.
    let longest_window_ms = detector
        .rules()
        .map(|r| i64::try_from(r.history_window.as_millis()).unwrap_or(i64::MAX))
        .max()
        .unwrap_or(0);
    let sinks = crate::sink::build_sinks(&config.sinks)?;
    let asn = open_asn(&config)?;
    let store = Arc::new(
        Store::open(&config.state.dir)
            .with_context(|| format!("opening state directory {}", config.state.dir.display()))?,
    );

    let health = Health::new();
    let check_store = health.register("store", "opening");
    let check_rules = health.register("rules", "loading");
    let check_asn = health.register("asn", "loading");
    check_store.set_ok();
    check_rules.set_ok();
    if asn.is_some() {
        check_asn.set_ok();
    } else {
        check_asn.set_failing("no ASN database configured ([asn] database)");
    }

    let source = EventHubsSource::connect(&eh_config)
        .await
        .context("connecting to Event Hubs")?;
    let partitions: Vec<String> = source.partition_ids().to_vec();

    let labels = MetricLabels {
        partitions: partitions.clone(),
        rules: detector.rules().map(|r| r.rule_id.clone()).collect(),
        sinks: sinks.iter().map(|s| s.name().to_string()).collect(),
    };
    let metrics = Metrics::new(&labels)?;
    if let Some(asn) = &asn {
        metrics.asn_reload(crate::metrics::ReloadResult::Ok, asn.metadata().build_epoch);
    }

    let server =
        crate::server::Server::bind(config.server.listen, metrics.clone(), health.clone()).await?;
    let server_stop = shutdown.clone();
    let server_task = tokio::spawn(server.run(async move { server_stop.cancelled().await }));

    // Sinks drain their outboxes first thing (alerts left by a previous
    // run), concurrently with consumption.
    let wakeup = Wakeup::new();
    let sink_stop = CancellationToken::new();
    let mut sink_tasks = JoinSet::new();
    let mut sink_stats = Vec::new();
    for sink in sinks {
        let outbox: Arc<dyn crate::sink::Outbox> =
            Arc::new(StoreOutbox::new(store.clone(), sink.name()));
        let stats = sink.stats();
        let histogram = metrics.sink(sink.name()).request_duration;
        stats.observe_durations_with(move |secs| histogram.observe(secs));
        sink_stats.push((sink.name().to_string(), stats));
        sink_tasks.spawn(sink.run(outbox, Some(wakeup.subscribe()), sink_stop.clone()));
    }
    let sink_names: Vec<String> = sink_stats.iter().map(|(n, _)| n.clone()).collect();

    // Partition readers start strictly after their committed checkpoints.
    let checkpoints: HashMap<String, Checkpoint> = store.checkpoints()?.into_iter().collect();
    let start_after = checkpoints
        .iter()
        .map(|(p, cp)| {
            (
                p.clone(),
                StartAfter {
                    sequence_number: cp.sequence_number,
                    offset: Some(cp.offset.clone()).filter(|o| !o.is_empty()),
                },
            )
        })
        .collect();
    for (partition, cp) in &checkpoints {
        if partitions.contains(partition) {
            metrics
                .partition(partition)
                .checkpoint_sequence_number
                .set(cp.sequence_number);
        }
    }
    let source_stats = Arc::new(SourceStats::new(&partitions));
    for (partition, cp) in &checkpoints {
        source_stats.set_committed(partition, cp.sequence_number, cp.enqueued_time_ms);
    }
    let (tx, rx) = mpsc::channel::<PartitionBatch>(CHANNEL_BATCHES);
    let reader_stop = shutdown.child_token();
    let mut readers = JoinSet::new();
    source.spawn_readers(
        start_after,
        tx,
        reader_stop.clone(),
        source_stats.clone(),
        &mut readers,
    );
    let partition_checks: HashMap<String, crate::health::HealthCheck> = partitions
        .iter()
        .map(|p| {
            (
                p.clone(),
                health.register(&format!("partition-{p}"), "attaching"),
            )
        })
        .collect();

    let evaluator = Evaluator {
        detector,
        store: store.clone(),
        asn: asn.clone(),
        limits: config.decode.limits(),
        sinks: sink_names,
        wakeup: wakeup.clone(),
        metrics: metrics.clone(),
        checkpoints,
        partition_metrics: HashMap::new(),
        rule_metrics: Vec::new(),
        source_stats: source_stats.clone(),
    };
    let mut evaluator_task = tokio::task::spawn_blocking(move || evaluator.run(rx));

    // Background upkeep: metrics mirroring, readiness, term GC, ASN reloads.
    let upkeep_stop = CancellationToken::new();
    let upkeep = tokio::spawn(upkeep_loop(Upkeep {
        store: store.clone(),
        asn: asn.clone(),
        metrics: metrics.clone(),
        source_stats: source_stats.clone(),
        sink_stats,
        partition_checks,
        gc_interval: config.state.gc_interval,
        dead_event_retention_ms: i64::try_from(config.state.dead_event_retention.as_millis())
            .unwrap_or(i64::MAX),
        gc_keep_ms: longest_window_ms
            .saturating_add(i64::try_from(config.state.gc_grace.as_millis()).unwrap_or(i64::MAX)),
        asn_reload_interval: config.asn.reload_interval,
        stop: upkeep_stop.clone(),
    }));
    tracing::info!(
        partitions = partitions.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "consuming"
    );

    // Readers end on shutdown, when their partition is taken over, or when
    // the evaluator stops. An evaluator that stops on its own (a failed
    // commit) stops the readers too, so the error surfaces at once.
    let mut lost = 0usize;
    let mut evaluator_result = None;
    loop {
        tokio::select! {
            exit = readers.join_next() => match exit {
                None => break,
                Some(Ok(PartitionExit::OwnershipLost)) => lost += 1,
                Some(Ok(PartitionExit::Shutdown | PartitionExit::EvaluatorGone)) => {}
                Some(Err(e)) => {
                    // Readers do not panic by design; if one does, the
                    // service stops rather than run with a blind partition.
                    tracing::error!(error = %e, "partition reader task failed; stopping");
                    reader_stop.cancel();
                }
            },
            result = &mut evaluator_task, if evaluator_result.is_none() => {
                evaluator_result = Some(result);
                reader_stop.cancel();
            }
        }
    }
    if lost == partitions.len() && evaluator_result.is_none() && !shutdown.is_cancelled() {
        // Every partition belongs to another instance now. Stay up (not
        // ready, metrics served) so the operator sees why, until stopped.
        tracing::error!("every partition was taken over by another instance; idle until stopped");
        shutdown.cancelled().await;
    }
    // The readers dropped their senders: the evaluator drains what is
    // queued, commits it and returns.
    let evaluator_result = match evaluator_result {
        Some(result) => result,
        None => evaluator_task.await,
    };
    match evaluator_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            upkeep_stop.cancel();
            sink_stop.cancel();
            return Err(e.context("evaluator stopped"));
        }
        Err(e) => anyhow::bail!("evaluator task failed: {e}"),
    }
    // Give the sinks a bounded time to deliver what is pending.
    wakeup.notify();
    let flush_deadline = tokio::time::sleep(config.run.sink_flush_timeout);
    tokio::pin!(flush_deadline);
    loop {
        let pending: u64 = store.outbox_count_all().unwrap_or(0);
        if pending == 0 {
            break;
        }
        tokio::select! {
            _ = &mut flush_deadline => {
                tracing::warn!(pending, "shutdown: alerts left in the outbox; they are delivered after restart");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    sink_stop.cancel();
    while sink_tasks.join_next().await.is_some() {}
    upkeep_stop.cancel();
    let _ = upkeep.await;
    shutdown.cancel();
    let _ = server_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the ASN database named by the configuration (with hot reload).
///
/// # Errors
/// An unreadable or malformed database: the service does not start without
/// the database it was told to use.
pub fn open_asn(config: &Config) -> anyhow::Result<Option<Arc<AsnEnricher>>> {
    let Some(spec) = config.asn.database.as_deref() else {
        return Ok(None);
    };
    let mut source = AsnSource::parse(spec);
    source.format = config
        .asn
        .format
        .parse::<AsnFormat>()
        .map_err(|e| anyhow::anyhow!("asn.format: {e}"))?;
    let enricher =
        AsnEnricher::open(source).with_context(|| format!("loading ASN database {spec}"))?;
    Ok(Some(Arc::new(enricher)))
}

/// The single evaluator: owns every term decision.
struct Evaluator {
    detector: Detector,
    store: Arc<Store>,
    asn: Option<Arc<AsnEnricher>>,
    limits: crate::decode::DecodeLimits,
    sinks: Vec<String>,
    wakeup: Wakeup,
    metrics: Arc<Metrics>,
    /// The last committed checkpoint of each partition.
    checkpoints: HashMap<String, Checkpoint>,
    partition_metrics: HashMap<String, PartitionMetrics>,
    rule_metrics: Vec<RuleMetrics>,
    source_stats: Arc<SourceStats>,
}

impl Evaluator {
    fn run(mut self, mut rx: mpsc::Receiver<PartitionBatch>) -> anyhow::Result<()> {
        self.rule_metrics = self
            .detector
            .rules()
            .map(|r| self.metrics.rule(&r.rule_id))
            .collect();
        while let Some(batch) = rx.blocking_recv() {
            self.process(batch)?;
        }
        Ok(())
    }

    /// One partition batch → one committed write.
    fn process(&mut self, batch: PartitionBatch) -> anyhow::Result<()> {
        let started = Instant::now();
        let partition = batch.partition.to_string();
        let pm = self
            .partition_metrics
            .entry(partition.clone())
            .or_insert_with(|| self.metrics.partition(&partition))
            .clone();
        let committed = self.checkpoints.get(&partition).map(|c| c.sequence_number);
        let asn = self.asn.as_ref().map(|a| a.snapshot());
        let now_ms = crate::replay::now_ms();

        let mut stats = PipelineStats::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut write = BatchWrite::default();
        let mut last: Option<Checkpoint> = None;
        for ev in &batch.events {
            if committed.is_some_and(|c| ev.sequence_number <= c) {
                self.source_stats.duplicate_skipped(&partition);
                continue;
            }
            pm.events_received.inc();
            let ctx = BodyContext {
                enqueued_time_ms: ev.enqueued_time_ms,
                position: SourcePosition {
                    partition: Some(partition.clone()),
                    sequence_number: Some(ev.sequence_number),
                    offset: ev.offset.clone(),
                    enqueued_time: ev.enqueued_time_ms.map(format_timestamp),
                    ..SourcePosition::default()
                },
            };
            // Records that cannot match any rule are counted, not
            // normalized (the same counters and alerts as `process_body`).
            let errors = process_body_prefiltered(
                &ev.body,
                &ctx,
                &self.limits,
                asn.as_deref(),
                self.detector.prefilter(),
                &mut candidates,
                &mut stats,
            );
            for e in errors {
                tracing::warn!(
                    partition = %partition,
                    sequence_number = ev.sequence_number,
                    kind = e.kind.code(),
                    error = %e,
                    "undecodable event body dead-lettered"
                );
                self.store.put_dead_event(
                    &mut write,
                    &DeadEventRow {
                        source: "eventhubs".into(),
                        partition: Some(partition.clone()),
                        sequence_number: Some(ev.sequence_number),
                        error_kind: e.kind.code().into(),
                        detail: e.to_string(),
                        body_excerpt: excerpt(&ev.body),
                        recorded_at_ms: now_ms,
                    },
                );
            }
            last = Some(Checkpoint {
                sequence_number: ev.sequence_number,
                offset: ev.offset.clone().unwrap_or_default(),
                enqueued_time_ms: ev.enqueued_time_ms.unwrap_or(0),
            });
        }
        let Some(checkpoint) = last else {
            return Ok(()); // everything was a replay of committed events
        };

        let report = self
            .detector
            .evaluate(&self.store, &mut write, &candidates, now_ms, false)
            .context("reading term state")?;
        for alert in &report.alerts {
            for sink in &self.sinks {
                self.store.put_alert(&mut write, sink, alert);
            }
        }
        self.store
            .put_checkpoint(&mut write, &partition, &checkpoint);
        if let Err(e) = self.store.commit(write) {
            pm.checkpoint_errors.inc();
            // Without the commit nothing of this batch happened; the
            // process stops so that a restart re-reads it from the
            // checkpoint rather than carrying on with state it lacks.
            return Err(anyhow::Error::new(e).context(format!(
                "committing partition {partition} batch ending at sequence number {}",
                checkpoint.sequence_number
            )));
        }
        pm.checkpoint_commits.inc();
        pm.checkpoint_sequence_number
            .set(checkpoint.sequence_number);
        self.source_stats.set_committed(
            &partition,
            checkpoint.sequence_number,
            checkpoint.enqueued_time_ms,
        );
        if !report.alerts.is_empty() {
            for alert in &report.alerts {
                tracing::info!(
                    partition = %partition,
                    alert_id = %alert.id,
                    "alert committed"
                );
            }
            self.wakeup.notify();
        }

        // Metrics.
        pm.records_received.inc_by(stats.records);
        self.metrics.records_normalized.inc_by(stats.records);
        self.metrics
            .timestamp_fallbacks
            .inc_by(stats.timestamp_fallbacks);
        for (code, n) in &stats.decode_errors {
            self.metrics.decode_errors_by_code(code, *n);
        }
        for (code, n) in &stats.outcome_unmapped {
            self.metrics.outcome_unmapped_by_code(code, *n);
        }
        for (label, n) in &stats.asn_lookups {
            self.metrics.asn_lookups_by_label(label, *n);
        }
        for (i, rm) in self.rule_metrics.iter().enumerate() {
            rm.matches
                .inc_by(report.matched.get(i).copied().unwrap_or(0));
            rm.alerts
                .inc_by(report.alerts_per_rule.get(i).copied().unwrap_or(0));
        }
        let last_enqueued = self
            .source_stats
            .last_enqueued_sequence_number(&partition)
            .unwrap_or(checkpoint.sequence_number);
        self.metrics.observe_lag(
            &pm,
            last_enqueued,
            checkpoint.sequence_number,
            crate::sink::retry::system_time_from_ms(checkpoint.enqueued_time_ms),
            SystemTime::now(),
        );
        pm.batch_duration.observe(started.elapsed().as_secs_f64());
        self.checkpoints.insert(partition, checkpoint);
        Ok(())
    }
}

/// The start of a body, lossily as text, for a dead event (64 KiB at most).
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(64 * 1024)];
    String::from_utf8_lossy(cut).into_owned()
}

struct Upkeep {
    store: Arc<Store>,
    asn: Option<Arc<AsnEnricher>>,
    metrics: Arc<Metrics>,
    source_stats: Arc<SourceStats>,
    sink_stats: Vec<(String, Arc<SinkStats>)>,
    partition_checks: HashMap<String, crate::health::HealthCheck>,
    gc_interval: Duration,
    dead_event_retention_ms: i64,
    gc_keep_ms: i64,
    asn_reload_interval: Duration,
    stop: CancellationToken,
}

/// Once a second: mirror the source's and sinks' atomics into Prometheus
/// and readiness; on their own intervals: term GC and ASN reload checks.
async fn upkeep_loop(u: Upkeep) {
    let mut mirror = CounterMirror::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gc = Instant::now();
    let mut last_asn = Instant::now();
    let mut gc_running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = u.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        for (partition, check) in &u.partition_checks {
            match u.source_stats.partition_state(partition) {
                Some(state) => state.apply(check),
                None => check.set_failing("unknown partition"),
            }
        }
        mirror.mirror_source(&u.metrics, &u.source_stats);
        refresh_lag(&u.metrics, &u.source_stats);
        for (name, stats) in &u.sink_stats {
            mirror.mirror_sink(&u.metrics, name, stats);
        }
        u.metrics
            .terms_stored
            .set(i64::try_from(u.store.estimated_terms()).unwrap_or(i64::MAX));

        if last_gc.elapsed() >= u.gc_interval && gc_running.as_ref().is_none_or(|h| h.is_finished())
        {
            last_gc = Instant::now();
            let store = u.store.clone();
            let metrics = u.metrics.clone();
            let now = crate::replay::now_ms();
            let cutoff = now.saturating_sub(u.gc_keep_ms);
            let dead_cutoff = now.saturating_sub(u.dead_event_retention_ms);
            gc_running = Some(tokio::task::spawn_blocking(move || {
                match store.gc_terms(cutoff) {
                    Ok(n) => {
                        metrics.gc_runs.inc();
                        metrics.terms_expired.inc_by(n);
                        tracing::info!(expired = n, "term GC done");
                    }
                    Err(e) => tracing::error!(error = %e, "term GC failed"),
                }
                match store.gc_dead_events(dead_cutoff) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "old undecodable event bodies deleted"),
                    Err(e) => tracing::error!(error = %e, "dead event GC failed"),
                }
            }));
        }
        if let Some(asn) = &u.asn {
            if last_asn.elapsed() >= u.asn_reload_interval {
                last_asn = Instant::now();
                let asn = asn.clone();
                let metrics = u.metrics.clone();
                // Loading hundreds of thousands of ranges takes ~1 s: off the
                // runtime threads. The old database serves meanwhile.
                tokio::task::spawn_blocking(move || match asn.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!("ASN database reloaded");
                        metrics.asn_reload(
                            crate::metrics::ReloadResult::Ok,
                            asn.metadata().build_epoch,
                        );
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "ASN database reload failed; the previous one stays in use");
                        metrics.asn_reload(crate::metrics::ReloadResult::Error, None);
                    }
                });
            }
        }
    }
    if let Some(h) = gc_running {
        let _ = h.await;
    }
}

/// Lag from the poller's last enqueued sequence number and the committed
/// checkpoint, every second: without it the gauges would freeze at their
/// last value exactly when a partition stops making progress (retrying,
/// stalled). The age only moves while the partition is behind; skew is
/// counted where batches are committed, not here.
fn refresh_lag(metrics: &Metrics, stats: &SourceStats) {
    let now = SystemTime::now();
    for partition in stats.partitions() {
        let (Some(last), Some((committed, enqueued_ms))) = (
            stats.last_enqueued_sequence_number(&partition),
            stats.committed(&partition),
        ) else {
            continue;
        };
        let pm = metrics.partition(&partition);
        let lag = crate::metrics::compute_lag(
            last,
            committed,
            crate::sink::retry::system_time_from_ms(enqueued_ms),
            now,
        );
        pm.lag_events.set(lag.events);
        if lag.events > 0 {
            pm.lag_seconds.set(lag.seconds);
        }
    }
}

/// Cancels `shutdown` on the first SIGTERM/SIGINT; exits at once on the
/// second (an operator who presses Ctrl-C twice means it).
pub async fn shutdown_on_signals(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutdown requested: finishing the batch in flight (signal again to exit now)");
    shutdown.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers we can still honour Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Mirrors counters kept as plain atomics by the source and the sinks (which
/// do not depend on Prometheus) into the registry, by deltas.
#[derive(Default)]
struct CounterMirror {
    last: HashMap<String, u64>,
}

impl CounterMirror {
    /// Adds to `counter` what `current` grew by since the last call.
    fn sync(&mut self, key: String, current: u64, counter: &prometheus::IntCounter) {
        let last = self.last.entry(key).or_insert(0);
        if current > *last {
            counter.inc_by(current - *last);
            *last = current;
        }
    }

    fn mirror_source(&mut self, metrics: &Metrics, stats: &SourceStats) {
        for partition in stats.partitions() {
            let partition: &str = &partition;
            let pm = metrics.partition(partition);
            self.sync(
                format!("own/{partition}"),
                stats.ownership_lost(partition),
                &pm.ownership_lost,
            );
            self.sync(
                format!("rec/{partition}"),
                stats.reconnects(partition),
                &pm.reconnects,
            );
            self.sync(
                format!("dup/{partition}"),
                stats.redelivered(partition),
                &pm.redelivered,
            );
        }
        for kind in crate::metrics::ConnectionErrorKind::ALL {
            let current = stats.connection_errors(*kind);
            let last = self
                .last
                .entry(format!("conn/{}", kind.as_str()))
                .or_insert(0);
            for _ in *last..current {
                metrics.connection_error(*kind);
            }
            *last = (*last).max(current);
        }
    }

    fn mirror_sink(&mut self, metrics: &Metrics, name: &str, stats: &SinkStats) {
        use crate::metrics::{DeadLetterReason as M, WebhookFailureReason as W};
        use crate::sink::{DeadLetterReason as D, FailureReason as F};
        let sm = metrics.sink(name);
        sm.outbox_pending.set(
            i64::try_from(stats.backlog.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(i64::MAX),
        );
        self.sync(
            format!("{name}/delivered"),
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            &sm.delivered,
        );
        self.sync(
            format!("{name}/retried"),
            stats.retried.load(std::sync::atomic::Ordering::Relaxed),
            &sm.retried,
        );
        for reason in D::ALL {
            let exported = match reason {
                D::Rejected => M::Status4xx,
                D::MaxAgeExceeded => M::MaxAge,
            };
            self.sync(
                format!("{name}/dead/{}", reason.as_label()),
                stats.dead_lettered(reason),
                sm.dead_lettered(exported),
            );
        }
        for reason in F::ALL {
            let exported = match reason {
                F::Status4xx => W::Http4xx,
                F::Status408 => W::Http408,
                F::Status429 => W::Http429,
                F::Status5xx => W::Http5xx,
                F::Timeout => W::Timeout,
                F::Connect => W::Connect,
                F::UnexpectedStatus | F::Transport | F::Io => W::Other,
            };
            // Several sink reasons fold into `other`: sync each separately.
            self.sync(
                format!("{name}/fail/{}", reason.as_label()),
                stats.failures(reason),
                sm.failure(exported),
            );
        }
    }
}
