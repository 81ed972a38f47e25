//! The NDJSON sink: one alert document per line, to stdout or appended to a
//! file, flushed per alert. Used by `replay` and for debugging.
//!
//! Delivery is at-least-once like the webhook: a line is written and flushed,
//! then the alert is removed from this sink's outbox; a crash in between
//! writes the line again after restart (same alert id in the document). A
//! write failure (disk full, closed pipe) is retried with backoff, never
//! dropped and never dead-lettered, since it says nothing about the alert.
//!
//! An alert document is sent as-is, except that raw CR/LF bytes become
//! spaces: in JSON they can only be insignificant whitespace (inside strings
//! they must be escaped), so the document keeps its meaning and stays on one
//! line.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::{NdjsonConfig, SinkConfigError};
use super::retry::{FullJitter, RetryPolicy};
use super::{FailureReason, Outbox, SinkStats, WakeupReceiver};

/// Alerts written per blocking batch.
const BATCH: usize = 256;

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// A configured NDJSON sink, ready to [`run`](NdjsonSink::run).
pub struct NdjsonSink {
    name: String,
    writer: SharedWriter,
    poll_interval: Duration,
    stats: Arc<SinkStats>,
}

impl std::fmt::Debug for NdjsonSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NdjsonSink")
            .field("name", &self.name)
            .finish()
    }
}

impl NdjsonSink {
    /// Opens the file (append, create) or stdout.
    ///
    /// # Errors
    /// The file cannot be opened; the error names `path`.
    pub fn from_config(cfg: &NdjsonConfig) -> Result<Self, SinkConfigError> {
        let writer: Box<dyn Write + Send> = match &cfg.path {
            None => Box::new(std::io::stdout()),
            Some(path) => Box::new(open_append(path).map_err(|e| {
                SinkConfigError::new(
                    &cfg.name,
                    "path",
                    format!("cannot open {} for appending: {e}", path.display()),
                )
            })?),
        };
        Ok(Self::with_writer(&cfg.name, writer, cfg.poll_interval))
    }

    /// A sink writing to any writer (tests, `replay` into a buffer).
    pub fn with_writer(name: &str, writer: Box<dyn Write + Send>, poll_interval: Duration) -> Self {
        NdjsonSink {
            name: name.to_owned(),
            writer: Arc::new(Mutex::new(writer)),
            poll_interval,
            stats: Arc::new(SinkStats::default()),
        }
    }

    /// The sink's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters this sink updates.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// Writes everything pending, then whatever is committed, until
    /// `shutdown` is cancelled (the batch in hand is finished first).
    pub async fn run(
        self,
        outbox: Arc<dyn Outbox>,
        wakeup: Option<WakeupReceiver>,
        shutdown: CancellationToken,
    ) {
        let mut wakeup = wakeup;
        let backoff = RetryPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            max_age: Duration::MAX,
        };
        let mut jitter = FullJitter::new();
        let mut failures = 0u32;
        loop {
            let (writer, stats, outbox2) = (
                Arc::clone(&self.writer),
                Arc::clone(&self.stats),
                Arc::clone(&outbox),
            );
            let result =
                tokio::task::spawn_blocking(move || drain(&writer, outbox2.as_ref(), &stats)).await;
            let wait = match result {
                Ok(Ok(n)) if n == BATCH => {
                    failures = 0;
                    continue;
                }
                Ok(Ok(_)) => {
                    failures = 0;
                    None
                }
                Ok(Err(e)) => {
                    failures += 1;
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %self.name, error = %e, "writing alerts failed; will retry");
                    Some(backoff.next_delay(failures, None, &mut jitter))
                }
                Err(join) => {
                    failures += 1;
                    tracing::error!(sink = %self.name, error = %join, "the NDJSON writer task failed; will retry");
                    Some(backoff.next_delay(failures, None, &mut jitter))
                }
            };
            let sleep_for = wait.unwrap_or(self.poll_interval);
            tokio::select! {
                () = shutdown.cancelled() => break,
                woke = async {
                    match &mut wakeup {
                        Some(rx) if wait.is_none() => rx.changed().await.is_ok(),
                        _ => std::future::pending().await,
                    }
                } => if !woke { wakeup = None },
                () = tokio::time::sleep(sleep_for) => {}
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Errors of one drain pass.
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Outbox(#[from] super::OutboxError),
}

/// Writes up to one batch; returns how many alerts were written.
fn drain(
    writer: &SharedWriter,
    outbox: &dyn Outbox,
    stats: &SinkStats,
) -> Result<usize, DrainError> {
    let alerts = outbox.pending(None, BATCH).inspect_err(|_| {
        stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
    })?;
    let mut out = writer.lock().unwrap_or_else(|p| p.into_inner());
    let mut line = Vec::new();
    for alert in &alerts {
        line.clear();
        line.extend(
            alert
                .body
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        line.push(b'\n');
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            stats.record_failure(FailureReason::Io);
            return Err(e.into());
        }
        stats.record_duration(started.elapsed());
        outbox.delivered(alert.seq).inspect_err(|_| {
            stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
        })?;
        stats.delivered.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .backlog
        .store(outbox.pending_count().unwrap_or(0), Ordering::Relaxed);
    Ok(alerts.len())
}

#[cfg(test)]
mod tests {
    use super::super::{MemoryOutbox, Wakeup};
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Fails the first `n` writes.
    struct Flaky(usize, Buf);
    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 > 0 {
                self.0 -= 1;
                return Err(std::io::Error::other("disk full"));
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_in_order_one_line_each_then_follows_wakeups() {
        let outbox = Arc::new(MemoryOutbox::new());
        outbox.push("a", 0, b"{\"id\":\"a\",\n \"n\":1}".to_vec());
        outbox.push("b", 0, b"{\"id\":\"b\"}".to_vec());
        let buf = Buf::default();
        let sink = NdjsonSink::with_writer("t", Box::new(buf.clone()), Duration::from_secs(3600));
        let stats = sink.stats();
        let wake = Wakeup::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sink.run(outbox.clone(), Some(wake.subscribe()), stop.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        outbox.push("c", 0, b"{\"id\":\"c\"}".to_vec());
        wake.notify();
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.cancel();
        task.await.unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let ids: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(outbox.pending_count().unwrap(), 0);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn write_failures_are_retried_not_dropped() {
        let outbox = Arc::new(MemoryOutbox::new());
        outbox.push("a", 0, b"{}".to_vec());
        let buf = Buf::default();
        let sink = NdjsonSink::with_writer(
            "t",
            Box::new(Flaky(2, buf.clone())),
            Duration::from_secs(3600),
        );
        let stats = sink.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sink.run(outbox.clone(), None, stop.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(stats.failures(FailureReason::Io), 2);
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"{}\n");
        assert_eq!(outbox.pending_count().unwrap(), 0);
    }

    #[test]
    fn from_config_appends_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.ndjson");
        std::fs::write(&path, "old\n").unwrap();
        let cfg = NdjsonConfig {
            name: "f".into(),
            path: Some(path.clone()),
            poll_interval: Duration::from_secs(1),
        };
        let sink = NdjsonSink::from_config(&cfg).unwrap();
        let outbox = MemoryOutbox::new();
        outbox.push("a", 0, b"{}".to_vec());
        drain(&sink.writer, &outbox, &sink.stats).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n{}\n");
        let bad = NdjsonConfig {
            path: Some(dir.path().join("no/such/dir/x")),
            ..cfg
        };
        assert_eq!(NdjsonSink::from_config(&bad).unwrap_err().key, "path");
    }
}
