//! Webhook sink against a real HTTP receiver on 127.0.0.1 with scripted
//! responses, using the in-memory outbox.
//!
//! Timing tests run on tokio's paused clock (the receiver runs in the same
//! runtime, so virtual time only advances when everything waits): BR-13's
//! seconds and minutes cost nothing, and the assertions are about virtual
//! instants recorded by the receiver. Jitter is pinned to the window's
//! ceiling ([`NoJitter`]) where exact growth is asserted, and left random
//! (seeded) where only bounds are asserted.
//!
//! See: ../shared/cases/README.md, BR-13.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use firstseen::sink::config::{SinkConfig, WebhookConfig};
use firstseen::sink::retry::{FullJitter, Jitter, NoJitter};
use firstseen::sink::webhook::WebhookSink;
use firstseen::sink::{
    Clock, DeadLetterReason, FailureReason, MemoryOutbox, Outbox, SinkStats, SystemClock, Wakeup,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
// 32 bytes of 0x2a.
const SECRET_B: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    body: String,
    delay: Duration,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        retry_after: None,
        body: String::new(),
        delay: Duration::ZERO,
    }
}

/// A request as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Recv {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

impl Recv {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(State(st): State<Arc<Recv>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    st.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: body.to_vec(),
    });
    // Scripted replies first, then 200 for ever.
    let next = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| reply(200));
    if !next.delay.is_zero() {
        tokio::time::sleep(next.delay).await;
    }
    let mut response = (StatusCode::from_u16(next.status).unwrap(), next.body).into_response();
    if let Some(ra) = next.retry_after {
        response
            .headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    response
}

async fn serve(listener: tokio::net::TcpListener, script: Vec<Reply>) -> Arc<Recv> {
    let st = Arc::new(Recv {
        script: Mutex::new(script.into()),
        seen: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(handle))
        .with_state(Arc::clone(&st));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    st
}

async fn receiver(script: Vec<Reply>) -> (SocketAddr, Arc<Recv>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, serve(listener, script).await)
}

/// Wall clock that moves with tokio's (paused) clock.
struct TokioClock {
    base_ms: i64,
    start: Instant,
}

impl TokioClock {
    fn new() -> Arc<Self> {
        Arc::new(TokioClock {
            base_ms: SystemClock.now_ms(),
            start: Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + i64::try_from(self.start.elapsed().as_millis()).unwrap()
    }
}

fn config(addr: SocketAddr, extra: &str) -> WebhookConfig {
    let secrets = if extra.contains("signing_secrets") {
        String::new()
    } else {
        format!("signing_secrets = [{{ value = \"{SECRET_A}\" }}]")
    };
    // Defaults a test may override through `extra`.
    let request_timeout = if extra.contains("request_timeout") {
        ""
    } else {
        "request_timeout = \"10s\""
    };
    let text = format!(
        r#"
        type = "webhook"
        name = "test"
        url = "http://{addr}/hook"
        allow_insecure_http = true
        {secrets}
        {request_timeout}
        connect_timeout = "2s"
        {extra}
        "#
    );
    match toml::from_str::<SinkConfig>(&text).unwrap() {
        SinkConfig::Webhook(w) => w,
        SinkConfig::Ndjson(_) => unreachable!("the text says webhook"),
    }
}

struct Running {
    stats: Arc<SinkStats>,
    wake: Wakeup,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(
    cfg: &WebhookConfig,
    outbox: Arc<MemoryOutbox>,
    jitter: Box<dyn Jitter>,
    clock: Arc<dyn Clock>,
) -> Running {
    let sink = WebhookSink::from_config(cfg)
        .unwrap()
        .with_jitter(jitter)
        .with_clock(clock);
    let stats = sink.stats();
    let wake = Wakeup::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink.run(outbox.clone(), Some(wake.subscribe()), stop.clone()));
    Running {
        stats,
        wake,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// Waits (virtual time) until `cond` holds; fails after `limit`.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alert(n: usize) -> Vec<u8> {
    format!(r#"{{"alert":{{"id":"alert-{n}","rule":"vm-ext","term":["é","AS{n}"]}}}}"#).into_bytes()
}

// BR-13 (a): 503, 503, 200 → 3 attempts with growing delays, 1 success.
#[tokio::test(start_paused = true)]
async fn br_13_a_503_503_200_retries_with_growing_delays() {
    let (addr, recv) = receiver(vec![reply(503), reply(503)]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("alert-a", clock.now_ms(), alert(1));
    let run = start(&config(addr, ""), outbox.clone(), Box::new(NoJitter), clock);
    wait_for(Duration::from_secs(60), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    assert_eq!(seen.len(), 3);
    let d1 = seen[1].at - seen[0].at;
    let d2 = seen[2].at - seen[1].at;
    // Ceilings 1 s then 2 s (NoJitter picks the ceiling).
    assert!(
        d1 >= Duration::from_secs(1) && d1 < Duration::from_millis(1500),
        "{d1:?}"
    );
    assert!(
        d2 >= Duration::from_secs(2) && d2 < Duration::from_millis(2500),
        "{d2:?}"
    );
    assert!(seen.iter().all(|s| s.id == "alert-a" && s.body == alert(1)));
    assert!(seen.iter().all(|s| s.content_type == "application/json"));
    assert_eq!(run.stats.failures(FailureReason::Status5xx), 2);
    assert_eq!(run.stats.delivered.load(Ordering::Relaxed), 1);
    assert_eq!(run.stats.retried.load(Ordering::Relaxed), 2);
    run.stop().await;
}

// BR-13 (a) with real (seeded) full jitter: delays stay inside the windows.
#[tokio::test(start_paused = true)]
async fn br_13_a_full_jitter_stays_within_backoff_windows() {
    let (addr, recv) = receiver(vec![reply(503), reply(502), reply(500), reply(504)]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("alert-j", clock.now_ms(), alert(1));
    let run = start(
        &config(addr, ""),
        outbox.clone(),
        Box::new(FullJitter::seeded(42)),
        clock,
    );
    wait_for(Duration::from_secs(60), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    assert_eq!(seen.len(), 5);
    for (i, pair) in seen.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let ceiling = Duration::from_secs(1 << i) + Duration::from_millis(100);
        assert!(gap <= ceiling, "gap {i} = {gap:?} > {ceiling:?}");
    }
    run.stop().await;
}

// BR-13 (b): 429 with Retry-After: 7, then 200 → 2nd attempt ≥ 7 s later.
#[tokio::test(start_paused = true)]
async fn br_13_b_429_retry_after_is_honoured() {
    let too_many = Reply {
        retry_after: Some("7"),
        ..reply(429)
    };
    let (addr, recv) = receiver(vec![too_many]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("alert-b", clock.now_ms(), alert(2));
    // Random jitter: its 1 s window is far below 7 s, so only Retry-After
    // can explain a 7 s gap.
    let run = start(
        &config(addr, ""),
        outbox.clone(),
        Box::new(FullJitter::seeded(3)),
        clock,
    );
    wait_for(Duration::from_secs(60), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "{gap:?}"
    );
    assert_eq!(seen[0].id, seen[1].id);
    assert_eq!(run.stats.failures(FailureReason::Status429), 1);
    run.stop().await;
}

// Retry-After as an HTTP date on 503.
#[tokio::test(start_paused = true)]
async fn br_13_b_503_retry_after_http_date_is_honoured() {
    let clock = TokioClock::new();
    let date = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(clock.now_ms()).unwrap() + 30_000),
    );
    let date: &'static str = Box::leak(date.into_boxed_str());
    let unavailable = Reply {
        retry_after: Some(date),
        ..reply(503)
    };
    let (addr, recv) = receiver(vec![unavailable]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.push("alert-d", clock.now_ms(), alert(2));
    let run = start(&config(addr, ""), outbox.clone(), Box::new(NoJitter), clock);
    wait_for(Duration::from_secs(120), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    let gap = seen[1].at - seen[0].at;
    // The date has one-second resolution.
    assert!(
        gap >= Duration::from_secs(29) && gap <= Duration::from_secs(31),
        "{gap:?}"
    );
    run.stop().await;
}

// BR-13 (c): 400 → 1 attempt, no retry, dead letter with status and excerpt.
#[tokio::test(start_paused = true)]
async fn br_13_c_400_is_dead_lettered_without_retry() {
    let long_body = format!("invalid payload: {}", "x".repeat(5000));
    let (addr, recv) = receiver(vec![Reply {
        body: long_body.clone(),
        ..reply(400)
    }])
    .await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("alert-c", clock.now_ms(), alert(3));
    let run = start(&config(addr, ""), outbox.clone(), Box::new(NoJitter), clock);
    wait_for(Duration::from_secs(60), "dead letter", || {
        outbox.dead_letters().len() == 1
    })
    .await;
    // Plenty of time for a (wrong) retry.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(recv.seen().len(), 1);
    let (dead_alert, dead) = &outbox.dead_letters()[0];
    assert_eq!(dead_alert.id, "alert-c");
    assert_eq!(dead.reason, DeadLetterReason::Rejected);
    assert_eq!(dead.status, Some(400));
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.response_excerpt.len(), 1024);
    assert!(long_body.starts_with(&dead.response_excerpt));
    assert_eq!(outbox.pending_count().unwrap(), 0);
    assert_eq!(run.stats.failures(FailureReason::Status4xx), 1);
    assert_eq!(run.stats.dead_lettered(DeadLetterReason::Rejected), 1);
    assert_eq!(run.stats.retried.load(Ordering::Relaxed), 0);
    run.stop().await;
}

// BR-13 (d): receiver sleeps 15 s, client timeout 10 s → 2 attempts, same id.
#[tokio::test(start_paused = true)]
async fn br_13_d_timeout_retries_with_same_webhook_id() {
    let slow = Reply {
        delay: Duration::from_secs(15),
        ..reply(200)
    };
    let (addr, recv) = receiver(vec![slow]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("alert-d", clock.now_ms(), alert(4));
    let run = start(&config(addr, ""), outbox.clone(), Box::new(NoJitter), clock);
    wait_for(Duration::from_secs(120), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].id, "alert-d");
    assert_eq!(seen[1].id, "alert-d");
    // The second attempt follows the 10 s timeout plus a 1 s backoff, and
    // carries a fresh timestamp.
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(11) && gap < Duration::from_secs(12),
        "{gap:?}"
    );
    assert_ne!(seen[0].timestamp, seen[1].timestamp);
    assert_eq!(run.stats.failures(FailureReason::Timeout), 1);
    assert_eq!(run.stats.delivered.load(Ordering::Relaxed), 1);
    run.stop().await;
}

// BR-13 (e): receiver refuses connections for a long time → attempts capped
// with backoff to max_interval, the outbox keeps accepting alerts, the
// backlog gauge shows them, and the backlog drains in creation order.
#[tokio::test(start_paused = true)]
async fn br_13_e_outage_is_probed_sparingly_then_drains_in_order() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // Nothing listens: connections are refused.

    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    let cfg = config(addr, "concurrency = 4");
    let run = start(&cfg, outbox.clone(), Box::new(NoJitter), clock.clone());

    // The consumer keeps committing during the outage, never waiting on the sink.
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = format!("alert-{n:02}");
        let before = std::time::Instant::now();
        outbox.push(id.clone(), clock.now_ms(), alert(n));
        run.wake.notify();
        assert!(
            before.elapsed() < Duration::from_millis(100),
            "committing must not block"
        );
        ids.push(id);
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    // 600 s of outage: ceilings 1,2,4,...,256 s → about 10 probes, not 20
    // alerts × retries.
    let at_10_min = run.stats.attempts.load(Ordering::Relaxed);
    assert!(
        (8..=10).contains(&at_10_min),
        "attempts after 10 min: {at_10_min}"
    );
    assert_eq!(run.stats.backlog.load(Ordering::Relaxed), 20);
    assert_eq!(run.stats.failures(FailureReason::Connect), at_10_min);
    assert_eq!(run.stats.delivered.load(Ordering::Relaxed), 0);

    // 20 more minutes: the interval is capped at 5 min → 4 more probes
    // (uncapped doubling would give 1).
    tokio::time::sleep(Duration::from_secs(1200)).await;
    let at_30_min = run.stats.attempts.load(Ordering::Relaxed);
    assert!(
        (3..=5).contains(&(at_30_min - at_10_min)),
        "{at_10_min} → {at_30_min}"
    );
    assert_eq!(run.stats.failures(FailureReason::Connect), at_30_min);

    // The receiver comes back on the same port.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let recv = serve(listener, vec![]).await;
    wait_for(Duration::from_secs(600), "backlog drained", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen: Vec<String> = recv.seen().into_iter().map(|s| s.id).collect();
    // The probe is the oldest alert; then up to 4 run at once, started
    // oldest first, so no alert arrives more than 3 places early.
    assert_eq!(seen[0], ids[0]);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "each alert exactly once");
    for (pos, id) in seen.iter().enumerate() {
        let created = ids.iter().position(|i| i == id).unwrap();
        assert!(created < pos + 4, "{id} arrived at {pos}: {seen:?}");
    }
    assert!(outbox.dead_letters().is_empty());
    run.stop().await;
}

// Poison alert: one alert always gets a 500; the alerts behind it still flow.
#[tokio::test(start_paused = true)]
async fn a_failing_alert_does_not_block_the_ones_behind_it() {
    let (addr, recv) = receiver(vec![reply(500), reply(500), reply(500)]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    for n in 0..5 {
        outbox.push(format!("alert-{n}"), clock.now_ms(), alert(n));
    }
    let run = start(
        &config(addr, "concurrency = 1"),
        outbox.clone(),
        Box::new(NoJitter),
        clock,
    );
    wait_for(Duration::from_secs(120), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    let seen = recv.seen();
    // alert-0 gets 3 × 500, yet alert-1.. are not held back until alert-0 succeeds.
    let first_other = seen.iter().position(|s| s.id != "alert-0").unwrap();
    let last_zero = seen.iter().rposition(|s| s.id == "alert-0").unwrap();
    assert!(
        first_other < last_zero,
        "{:?}",
        seen.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), 8);
    run.stop().await;
}

// An alert older than max_age is dead-lettered, with the last error.
#[tokio::test(start_paused = true)]
async fn alerts_past_max_age_are_dead_lettered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("old", clock.now_ms(), alert(1));
    let cfg = config(addr, r#"retry = { max_age = "10m", max_interval = "1m" }"#);
    let run = start(&cfg, outbox.clone(), Box::new(NoJitter), clock);
    wait_for(Duration::from_secs(900), "dead letter", || {
        outbox.dead_letters().len() == 1
    })
    .await;
    let (_, dead) = &outbox.dead_letters()[0];
    assert_eq!(dead.reason, DeadLetterReason::MaxAgeExceeded);
    assert!(dead.attempts >= 5, "{dead:?}");
    assert!(
        dead.response_excerpt.to_lowercase().contains("connect"),
        "{dead:?}"
    );
    assert_eq!(run.stats.dead_lettered(DeadLetterReason::MaxAgeExceeded), 1);
    run.stop().await;
}

// Restart with a non-empty outbox delivers everything exactly once; a crash
// between the POST and its response redelivers with the same webhook-id.
#[tokio::test(start_paused = true)]
async fn restart_drains_once_and_an_unanswered_post_is_resent_with_its_id() {
    let hang = Reply {
        delay: Duration::from_secs(3600),
        ..reply(200)
    };
    let (addr, recv) = receiver(vec![hang]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    for n in 0..6 {
        outbox.push(format!("alert-{n}"), clock.now_ms(), alert(n));
    }
    // First run: the first POST never gets an answer; shut down while it hangs.
    let cfg = config(
        addr,
        "concurrency = 1\nrequest_timeout = \"2h\"\nshutdown_grace = \"1s\"",
    );
    let run = start(&cfg, outbox.clone(), Box::new(NoJitter), clock.clone());
    wait_for(Duration::from_secs(10), "first POST", || {
        recv.seen().len() == 1
    })
    .await;
    run.stop().await;
    assert_eq!(
        outbox.pending_count().unwrap(),
        6,
        "an unanswered alert stays durable"
    );

    // Second run: drains the outbox exactly once, starting with the same id.
    let run = start(
        &config(addr, ""),
        outbox.clone(),
        Box::new(NoJitter),
        clock.clone(),
    );
    wait_for(Duration::from_secs(60), "drained", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    run.stop().await;
    let ids: Vec<String> = recv.seen().into_iter().map(|s| s.id).collect();
    assert_eq!(ids[0], "alert-0");
    let mut after_restart = ids[1..].to_vec();
    after_restart.sort();
    assert_eq!(
        after_restart,
        (0..6).map(|n| format!("alert-{n}")).collect::<Vec<_>>()
    );

    // Third run: nothing left, nothing sent.
    let before = recv.seen().len();
    let run = start(&config(addr, ""), outbox.clone(), Box::new(NoJitter), clock);
    tokio::time::sleep(Duration::from_secs(30)).await;
    run.stop().await;
    assert_eq!(recv.seen().len(), before);
}

// Extra headers come from the environment / files.
#[tokio::test(start_paused = true)]
async fn extra_headers_are_sent() {
    let (addr, recv) = receiver(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer s3cret\n").unwrap();
    let extra = format!(
        "headers = {{ Authorization = {{ file = {:?} }} }}",
        token.display().to_string()
    );
    let outbox = Arc::new(MemoryOutbox::new());
    let clock = TokioClock::new();
    outbox.push("h", clock.now_ms(), alert(0));
    let run = start(
        &config(addr, &extra),
        outbox.clone(),
        Box::new(NoJitter),
        clock,
    );
    wait_for(Duration::from_secs(10), "delivery", || {
        outbox.pending_count().unwrap() == 0
    })
    .await;
    run.stop().await;
    assert_eq!(
        recv.seen()[0].authorization.as_deref(),
        Some("Bearer s3cret")
    );
}

#[test]
fn plain_http_without_opt_in_is_a_config_error() {
    let mut cfg = config("127.0.0.1:9".parse().unwrap(), "");
    cfg.allow_insecure_http = false;
    let err = WebhookSink::from_config(&cfg).unwrap_err();
    assert_eq!(err.key, "url");
    assert!(err.to_string().contains("allow_insecure_http"), "{err}");
}

// ---------------------------------------------------------------------------
// Signatures, verified by independent implementations.

/// A verifier written from the Standard Webhooks spec, independent of
/// `firstseen::sink::signing`: returns whether any `v1,` entry matches.
fn spec_verify(secret: &str, seen: &Seen, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut signed = Vec::new();
    signed.extend_from_slice(seen.id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(seen.timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    seen.signature.split(' ').any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        mac.verify_slice(&sig).is_ok()
    })
}

const PY_VERIFY: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
cases = json.load(open(sys.argv[1]))
secrets = sys.argv[2:]
ok = 0
for c in cases:
    body = base64.b64decode(c["body"])
    for s in secrets:
        Webhook(s).verify(body, c["headers"])  # raises if it does not verify
        try:
            Webhook(s).verify(body + b" ", c["headers"])
            sys.exit("tampered body accepted")
        except WebhookVerificationError:
            pass
    try:
        Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(body, c["headers"])
        sys.exit("wrong secret accepted")
    except WebhookVerificationError:
        pass
    ok += 1
print("verified", ok)
"#;

fn python_has_standardwebhooks() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

// Real clock here: the Python library rejects timestamps more than 5 min
// from its own clock.
#[tokio::test]
async fn every_request_verifies_with_either_rotated_secret_and_tampering_fails() {
    let (addr, recv) = receiver(vec![reply(503)]).await;
    let outbox = Arc::new(MemoryOutbox::new());
    for n in 0..5 {
        outbox.push(format!("msg_{n}"), SystemClock.now_ms(), alert(n));
    }
    let extra = format!(
        "signing_secrets = [{{ value = \"{SECRET_A}\" }}, {{ value = \"{SECRET_B}\" }}]\nretry = {{ initial_interval = \"20ms\" }}"
    );
    let cfg = config(addr, &extra);
    let sink = WebhookSink::from_config(&cfg).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink.run(outbox.clone(), None, stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while outbox.pending_count().unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "delivery timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();

    let seen = recv.seen();
    assert_eq!(seen.len(), 6, "5 alerts + 1 retry");
    for s in &seen {
        assert_eq!(
            s.signature.split(' ').count(),
            2,
            "two signatures while rotating"
        );
        assert!(spec_verify(SECRET_A, s, &s.body) && spec_verify(SECRET_B, s, &s.body));
        let mut tampered = s.body.clone();
        tampered.push(b' ');
        assert!(!spec_verify(SECRET_A, s, &tampered) && !spec_verify(SECRET_B, s, &tampered));
    }

    if !python_has_standardwebhooks() {
        eprintln!("NOTE: python3 -m pip install standardwebhooks to also verify with the reference library");
        return;
    }
    let cases: Vec<serde_json::Value> = seen
        .iter()
        .map(|s| {
            serde_json::json!({
                "headers": {"webhook-id": s.id, "webhook-timestamp": s.timestamp, "webhook-signature": s.signature},
                "body": STANDARD.encode(&s.body),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", PY_VERIFY])
        .arg(&cases_path)
        .args([SECRET_A, SECRET_B])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python verifier failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "verified 6");
}
