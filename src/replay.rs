//! `firstseen replay`: the main job over files. Reads Event Hubs bodies
//! from files and directories, runs every rule against the persistent
//! state, and writes alerts as NDJSON.
//!
//! Each batch of records commits its term updates in one RocksDB write, so
//! an interrupted replay leaves consistent state. Replay uses `@timestamp`
//! as the rule time (files carry no enqueued times), processes files in the
//! order given (directories sorted), and relies on the New Terms semantics
//! for records out of order across batches (a late record is never new).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::engine::{Candidate, Detector, SourcePosition};
use crate::enrich::{AsnDb, AsnFormat, AsnSource};
use crate::pipeline::{process_body_prefiltered, BodyContext, PipelineStats};
use crate::source::file::{expand_paths, for_each_body};
use crate::store::{BatchWrite, Store};

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub config: Config,
    /// State directory; `None` = a fresh temporary one (a one-off replay).
    pub state_dir: Option<PathBuf>,
    /// Update state without emitting alerts (warm-up from archives).
    pub learn: bool,
    pub paths: Vec<PathBuf>,
    /// Print progress to stderr (only when it is a terminal).
    pub progress: bool,
}

/// The summary printed at the end.
#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    pub files: u64,
    /// Files that could not be read to the end (I/O error, truncated gzip):
    /// reported on stderr, their readable part processed, the rest skipped.
    pub unreadable_files: u64,
    pub stats: PipelineStats,
    pub matched: u64,
    pub alerts: u64,
    pub elapsed: Duration,
}

impl ReplaySummary {
    pub fn records_per_second(&self) -> f64 {
        self.stats.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replay: {} files ({} unreadable), {} bodies, {} records, {} matched, {} alerts, {} decode errors, {} timestamp fallbacks, {:.1}s ({:.0} records/s)",
            self.files,
            self.unreadable_files,
            self.stats.bodies,
            self.stats.records,
            self.matched,
            self.alerts,
            self.stats.decode_error_total(),
            self.stats.timestamp_fallbacks,
            self.elapsed.as_secs_f64(),
            self.records_per_second()
        )
    }
}

/// Loads the ASN database named by the config, if any.
///
/// # Errors
/// Unreadable or malformed database (the message names the file).
pub fn load_asn(config: &Config) -> anyhow::Result<Option<AsnDb>> {
    let Some(spec) = config.asn.database.as_deref() else {
        return Ok(None);
    };
    let mut source = AsnSource::parse(spec);
    source.format = config
        .asn
        .format
        .parse::<AsnFormat>()
        .map_err(|e| anyhow::anyhow!("asn.format: {e}"))?;
    let db = AsnDb::load(&source).with_context(|| format!("loading ASN database {spec}"))?;
    Ok(Some(db))
}

/// Runs a replay, writing alerts to `alerts` and problems to `errors`.
///
/// # Errors
/// Configuration, rule, ASN or state problems, and unreadable files. Decode
/// errors in bodies are not errors of the replay: they are reported on
/// `errors` and counted in the summary.
pub fn replay(
    opts: &ReplayOptions,
    alerts: &mut dyn Write,
    errors: &mut dyn Write,
) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let config = &opts.config;
    let (detector, warnings) =
        crate::engine::load_detection(&config.rules.path, &config.allowlist, now_ms())?;
    for w in warnings {
        writeln!(errors, "warning: {w}")?;
    }
    let asn = load_asn(config)?;
    if asn.is_none() {
        writeln!(
            errors,
            "warning: no ASN database (--asn-db / [asn] database): source.as.number stays empty, rules on it cannot match"
        )?;
    }
    if opts.learn && opts.state_dir.is_none() {
        writeln!(
            errors,
            "warning: --learn without --state learns into a temporary directory that is deleted at exit"
        )?;
    }
    let temp_state;
    let state_dir = match &opts.state_dir {
        Some(dir) => dir.clone(),
        None => {
            temp_state = tempfile::Builder::new()
                .prefix("firstseen-replay-")
                .tempdir()?;
            temp_state.path().to_owned()
        }
    };
    let store = Store::open(&state_dir)?;
    let files = expand_paths(&opts.paths)?;
    let limits = config.decode.limits();
    let show_progress = opts.progress && std::io::stderr().is_terminal();

    let mut summary = ReplaySummary::default();
    let mut pending: Vec<Candidate> = Vec::with_capacity(config.pipeline.batch_records);
    let mut last_progress = Instant::now();
    // `summary.stats.records` when the current batch began.
    let mut batch_start: u64 = 0;
    for file in &files {
        summary.files += 1;
        // NDJSON is streamed line by line: memory does not grow with the file.
        // An error of this closure (state, output) stops the replay; an
        // error reading the file is reported and the replay goes on.
        let mut stopped: Option<anyhow::Error> = None;
        let mut step = |body: crate::source::file::FileBody<'_>| -> anyhow::Result<()> {
            let ctx = BodyContext {
                enqueued_time_ms: None,
                position: SourcePosition {
                    file: Some(file.display().to_string()),
                    line: body.line,
                    ..SourcePosition::default()
                },
            };
            let errs = process_body_prefiltered(
                body.bytes,
                &ctx,
                &limits,
                asn.as_ref(),
                detector.prefilter(),
                &mut pending,
                &mut summary.stats,
            );
            for e in errs {
                let at = body.line.map(|l| format!(":{l}")).unwrap_or_default();
                writeln!(errors, "{}{at}: decode error: {e}", file.display())?;
            }
            // Batches are counted in records, as without the prefilter, so
            // the same records share a batch (and its time ordering).
            if summary.stats.records - batch_start >= config.pipeline.batch_records as u64 {
                batch_start = summary.stats.records;
                flush(
                    &detector,
                    &store,
                    &mut pending,
                    opts.learn,
                    alerts,
                    &mut summary,
                )?;
            }
            if show_progress && last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                eprint!(
                    "\r{} records, {} alerts, {:.0} records/s   ",
                    summary.stats.records,
                    summary.alerts,
                    summary.stats.records as f64 / started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        };
        let read = for_each_body(file, |body| {
            step(body).map_err(|e| {
                stopped = Some(e);
                anyhow::anyhow!("replay stopped")
            })
        });
        if let Some(e) = stopped {
            return Err(e);
        }
        if let Err(e) = read {
            summary.unreadable_files += 1;
            writeln!(errors, "{}: read error: {e}", file.display())?;
        }
    }
    flush(
        &detector,
        &store,
        &mut pending,
        opts.learn,
        alerts,
        &mut summary,
    )?;
    if show_progress {
        eprintln!();
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn flush(
    detector: &Detector,
    store: &Store,
    pending: &mut Vec<Candidate>,
    learn: bool,
    alerts: &mut dyn Write,
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut write = BatchWrite::default();
    let now_ms = now_ms();
    let report = detector.evaluate(store, &mut write, pending, now_ms, learn)?;
    store.commit(write)?;
    summary.matched += report.matched.iter().sum::<u64>();
    summary.alerts += report.alerts.len() as u64;
    for alert in &report.alerts {
        alerts.write_all(alert.body.as_bytes())?;
        alerts.write_all(b"\n")?;
    }
    alerts.flush()?;
    pending.clear();
    Ok(())
}

/// Wall-clock time in Unix ms (the one clock read of the replay path: the
/// alert creation time).
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
