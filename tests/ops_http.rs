//! The operations server over real HTTP on 127.0.0.1: `/metrics` (checked by
//! `promtool check metrics` when it is installed), `/healthz`, `/readyz`
//! flipping from 503 to 200 as checks pass, bind errors, graceful shutdown.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use firstseen::health::Health;
use firstseen::metrics::{DecodeErrorKind, MetricLabels, Metrics, WebhookFailureReason};
use firstseen::server::{probe, Server, ServerError};
use tokio::sync::oneshot;

fn labels() -> MetricLabels {
    MetricLabels {
        partitions: (0..4).map(|p| p.to_string()).collect(),
        rules: vec![
            "vm-extension-new-asn".into(),
            "role-assignment-new-user".into(),
        ],
        sinks: vec!["soar".into(), "stdout".into()],
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

async fn start(metrics: Arc<Metrics>, health: Arc<Health>) -> Running {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), metrics, health)
        .await
        .unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// Runs `promtool check metrics` on `text`. Absent promtool skips locally but
/// fails under CI (`CI` set), where `.ci/run` installs it.
fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP promtool check metrics: promtool not runnable ({e}); install the Debian package `prometheus`");
            return;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    // promtool exits 0 on lint warnings in some versions; treat any output
    // as a failure so naming problems are caught.
    assert!(
        report.trim().is_empty(),
        "promtool check metrics reported:\n{report}"
    );
}

#[tokio::test]
async fn br_15_scrape_before_any_event_then_after_traffic() {
    // See: ../shared/cases/README.md BR-15.
    let metrics = Metrics::new(&labels()).unwrap();
    let health = Health::new();
    let mut srv = start(Arc::clone(&metrics), Arc::clone(&health)).await;

    let (status, ct, body) = get(srv.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    for line in [
        "firstseen_decode_errors_total{kind=\"invalid_json\"} 0",
        "firstseen_store_checkpoint_errors_total{partition=\"3\"} 0",
        "firstseen_enrich_asn_lookups_total{result=\"miss\"} 0",
        "firstseen_sink_webhook_failures_total{reason=\"http_5xx\",sink=\"soar\"} 0",
        "firstseen_sink_alerts_dead_lettered_total{reason=\"4xx\",sink=\"stdout\"} 0",
        "firstseen_rules_alerts_total{rule=\"role-assignment-new-user\"} 0",
        "firstseen_clock_skew_events_total 0",
        "firstseen_health_ready 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing `{line}` in first scrape"
        );
    }
    promtool_check_metrics(&body);

    // BR-15 input: one event 5 s in the future, one 120 s in the past.
    let p0 = metrics.partition("0");
    p0.events_received.inc_by(2);
    let now = SystemTime::now();
    metrics.observe_lag(&p0, 1, 1, now + Duration::from_secs(5), now);
    let (_, _, body) = get(srv.addr, "/metrics").await;
    assert!(body.contains("firstseen_source_consumer_lag_seconds{partition=\"0\"} 0\n"));
    assert!(body.contains("firstseen_clock_skew_events_total 1\n"));
    metrics.observe_lag(&p0, 2, 2, now - Duration::from_secs(120), now);
    metrics.decode_errors(DecodeErrorKind::InvalidJson, 1);
    metrics
        .sink("soar")
        .failure(WebhookFailureReason::Http429)
        .inc();
    metrics.sink("soar").request_duration.observe(0.2);
    p0.batch_duration.observe(0.003);
    let (_, _, body) = get(srv.addr, "/metrics").await;
    let lag: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("firstseen_source_consumer_lag_seconds{partition=\"0\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((lag - 120.0).abs() < 1.0, "lag {lag}");
    assert!(body.contains("firstseen_clock_skew_events_total 1\n"));
    assert!(body.contains("firstseen_decode_errors_total{kind=\"invalid_json\"} 1\n"));
    promtool_check_metrics(&body);

    srv.stop.take().unwrap().send(()).unwrap();
    srv.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn healthz_and_readyz_flip_as_checks_pass() {
    let metrics = Metrics::new(&labels()).unwrap();
    let health = Health::new();
    let db = health.register("rocksdb", "not opened yet");
    let asn = health.register("asn_database", "not loaded yet");
    let rules = health.register("rules", "not loaded yet");
    let parts: Vec<_> = (0..2)
        .map(|p| health.register(&format!("partition-{p}"), "receiver not attached"))
        .collect();
    let mut srv = start(metrics, Arc::clone(&health)).await;

    let (status, ct, body) = get(srv.addr, "/healthz").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"status":"ok"})
    );

    let ready = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let (status, _, body) = get(srv.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready(&body)["checks"].as_array().unwrap().len(), 5);

    db.set_ok();
    asn.set_ok();
    rules.set_ok();
    parts[0].set_ok();
    let (status, _, body) = get(srv.addr, "/readyz").await;
    assert_eq!(status, 503);
    let v = ready(&body);
    assert_eq!(v["status"], "unavailable");
    let failing: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failing")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["partition-1"]);
    assert!(body.contains("receiver not attached"), "{body}");

    parts[1].set_retrying("link detached, reconnecting", Duration::from_secs(300));
    let (status, _, body) = get(srv.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ready(&body)["status"], "ok");
    assert_eq!(
        probe(srv.addr, "/readyz", Duration::from_secs(5))
            .await
            .unwrap(),
        200
    );

    asn.set_failing("reload failed: bad metadata");
    let (status, _, body) = get(srv.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("asn_database") && body.contains("reload failed"),
        "{body}"
    );
    let err = probe(srv.addr, "/readyz", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status 503"), "{err}");
    assert_eq!(
        probe(srv.addr, "/healthz", Duration::from_secs(5))
            .await
            .unwrap(),
        200
    );
    let (status, _, _) = get(srv.addr, "/nope").await;
    assert_eq!(status, 404);

    srv.stop.take().unwrap().send(()).unwrap();
    srv.task.await.unwrap().unwrap();
    // After a graceful shutdown nothing listens any more.
    assert!(probe(srv.addr, "/healthz", Duration::from_secs(2))
        .await
        .is_err());
}

#[tokio::test]
async fn bind_conflict_is_a_clear_error() {
    let metrics = Metrics::new(&labels()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = match Server::bind(addr, metrics, Health::new()).await {
        Err(e) => e,
        Ok(_) => panic!("binding a taken port must fail"),
    };
    let msg = err.to_string();
    assert!(matches!(err, ServerError::Bind { .. }));
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("cannot listen"),
        "{msg}"
    );
}
