//! `firstseen run` as a whole process: the real binary, the real SDK client
//! speaking AMQP to the loopback Event Hubs double (in this test process),
//! real RocksDB on disk, and a real HTTP webhook receiver on 127.0.0.1.
//!
//! The data is the bundled samples, one record per event (so each record's
//! rule time is its own enqueued time), spread round-robin over 4
//! partitions and published a day at a time: a day is published only once
//! the service has committed the previous one, so the cross-partition order
//! the evaluator sees is the order the expectation assumes. Alerts are
//! compared as (day, resource name, AS) with samples/EXPECTED.md's
//! full-replay table: which of a day's records of a new term alerts depends
//! on how the partitions interleave, the day does not.
//!
//! Cases: ../shared/cases/README.md BR-09(b)(c), BR-12(b); crash, restart,
//! connection drop and link detach from the consumer issue; the receiver
//! outage from the webhook issue. Every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use eventhubs_double::{DoubleConfig, EventHubsDouble, PublishOptions};
use serde_json::Value;

const PARTITIONS: u32 = 4;
const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// One single-record body and its enqueued time.
struct Event {
    body: Vec<u8>,
    enqueued: SystemTime,
}

/// The samples of day `d` (1..=12), one event per record, in file order.
fn day(d: u32) -> Vec<Event> {
    let path = root().join(format!("samples/activity-logs/2025-03-{d:02}.ndjson"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let body: Value = serde_json::from_str(line).unwrap();
        let records = match body.get("records") {
            Some(Value::Array(r)) => r.clone(),
            _ => vec![body],
        };
        for record in records {
            let t = record["time"].as_str().unwrap();
            let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .unwrap();
            out.push(Event {
                body: serde_json::to_vec(&serde_json::json!({ "records": [record] })).unwrap(),
                enqueued: SystemTime::from(t),
            });
        }
    }
    out
}

/// (day, resource name, AS) of the full-replay table of samples/EXPECTED.md.
fn expected_full_replay() -> BTreeSet<(String, String, i64)> {
    let text = std::fs::read_to_string(root().join("samples/EXPECTED.md")).unwrap();
    let mut rows = BTreeSet::new();
    let mut in_first_table = false;
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let is_row =
            cells.len() >= 6 && cells[1].parse::<u32>().is_ok() && cells[3].starts_with('`');
        if is_row {
            in_first_table = true;
            rows.insert((
                cells[2][..10].to_string(),
                cells[3].trim_matches('`').to_string(),
                cells[4].parse().unwrap(),
            ));
        } else if in_first_table {
            break;
        }
    }
    assert_eq!(rows.len(), 15, "EXPECTED.md's full-replay table");
    rows
}

fn alert_key(alert: &Value) -> (String, String, i64) {
    (
        alert["rule_time"].as_str().unwrap()[..10].to_string(),
        alert["new_terms"]["values"][0]
            .as_str()
            .unwrap()
            .to_string(),
        alert["new_terms"]["values"][1].as_i64().unwrap(),
    )
}

/// Publishes `events` round-robin over the partitions; returns the last
/// sequence number per partition.
fn publish(double: &EventHubsDouble, events: &[Event], last: &mut BTreeMap<String, i64>) {
    for (i, ev) in events.iter().enumerate() {
        let partition = (i as u32 % PARTITIONS).to_string();
        let p = double
            .publish_with(
                &partition,
                ev.body.clone(),
                PublishOptions {
                    enqueued_time: Some(ev.enqueued),
                    partition_key: None,
                },
            )
            .unwrap();
        last.insert(partition, p.sequence_number);
    }
}

// ---------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    /// Accept the request and never answer.
    Stall,
}

#[derive(Default)]
struct Seen {
    requests: Vec<(String, Value)>,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

type RecvState = (Arc<Mutex<Seen>>, Arc<Mutex<Mode>>);

async fn hook(
    State((seen, mode)): State<RecvState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let alert: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().requests.push((id, alert));
    let current = *mode.lock().unwrap();
    if current == Mode::Stall {
        std::future::pending::<()>().await;
    }
    StatusCode::OK
}

impl Receiver {
    /// A port for a receiver that is not listening yet.
    fn reserve() -> Receiver {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        Receiver {
            addr,
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            task: None,
        }
    }

    async fn start() -> Receiver {
        let mut r = Receiver::reserve();
        r.listen().await;
        r
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((self.seen.clone(), self.mode.clone()));
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        }));
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// Distinct alert ids and how many requests carried each.
    fn ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for (id, _) in self.requests() {
            *ids.entry(id).or_default() += 1;
        }
        ids
    }

    /// (day, resource, AS) per distinct id; panics if one id came with two
    /// different alerts or one term with two ids.
    fn alert_keys(&self) -> BTreeSet<(String, String, i64)> {
        let mut by_id: BTreeMap<String, (String, String, i64)> = BTreeMap::new();
        for (id, alert) in self.requests() {
            assert_eq!(
                alert["id"].as_str(),
                Some(id.as_str()),
                "webhook-id is the alert id"
            );
            let key = alert_key(&alert);
            if let Some(prev) = by_id.insert(id.clone(), key.clone()) {
                assert_eq!(prev, key, "id {id} redelivered with a different alert");
            }
        }
        let keys: BTreeSet<_> = by_id.values().cloned().collect();
        assert_eq!(
            keys.len(),
            by_id.len(),
            "one id per alerting term: {by_id:?}"
        );
        keys
    }
}

// ---------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------

struct Instance {
    dir: PathBuf,
    config: PathBuf,
    metrics: SocketAddr,
    connection_string: String,
    child: Option<Child>,
    runs: u32,
}

struct Options<'a> {
    receiver: &'a Receiver,
    owner_level: i64,
    partitions: Option<&'a [&'a str]>,
    start: &'a str,
    concurrency: usize,
}

impl<'a> Options<'a> {
    fn new(receiver: &'a Receiver) -> Self {
        Options {
            receiver,
            owner_level: 0,
            partitions: None,
            start: "earliest",
            concurrency: 4,
        }
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Instance {
    fn new(dir: &Path, double: &EventHubsDouble, o: Options<'_>) -> Instance {
        std::fs::create_dir_all(dir).unwrap();
        let metrics = free_port();
        let partitions = o.partitions.map_or(String::new(), |p| {
            format!(
                "partitions = [{}]\n",
                p.iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let config = format!(
            r#"
[state]
dir = "{state}"
[rules]
path = "{rules}"
[asn]
database = "{asn}"
[eventhubs]
namespace = "{ns}"
event_hub = "{hub}"
custom_endpoint = "{endpoint}"
start = "{start}"
owner_level = {owner}
{partitions}batch_max_events = 64
batch_max_wait = "20ms"
reconnect_initial_backoff = "100ms"
reconnect_max_backoff = "1s"
[eventhubs.auth]
kind = "connection-string"
env = "FIRSTSEEN_TEST_EH_CONNECTION_STRING"
[[sinks]]
type = "webhook"
name = "soar"
url = "http://{recv}/hook"
allow_insecure_http = true
signing_secrets = [{{ value = "{SECRET}" }}]
request_timeout = "2s"
concurrency = {concurrency}
poll_interval = "200ms"
shutdown_grace = "1s"
retry = {{ initial_interval = "100ms", max_interval = "500ms", max_age = "1h" }}
[server]
listen = "{metrics}"
[log]
format = "json"
level = "info"
[run]
sink_flush_timeout = "5s"
"#,
            state = dir.join("state").display(),
            rules = root().join("config/rules").display(),
            asn = root().join("samples/asn").display(),
            ns = double.fully_qualified_namespace(),
            hub = double.hub_name(),
            endpoint = double.endpoint(),
            start = o.start,
            owner = o.owner_level,
            recv = o.receiver.addr,
            concurrency = o.concurrency,
        );
        let path = dir.join("firstseen.toml");
        std::fs::write(&path, config).unwrap();
        Instance {
            dir: dir.to_owned(),
            config: path,
            metrics,
            connection_string: double.connection_string(),
            child: None,
            runs: 0,
        }
    }

    /// Starts the process and waits until it serves metrics.
    async fn start(&mut self) {
        assert!(self.child.is_none());
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("run-{}.log", self.runs))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_firstseen"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(
                "FIRSTSEEN_TEST_EH_CONNECTION_STRING",
                &self.connection_string,
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if self.scrape().await.is_some() {
                return;
            }
            self.assert_running();
            assert!(
                std::time::Instant::now() < deadline,
                "no metrics endpoint: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("run-{}.log", self.runs))).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "firstseen exited ({status:?}): {}",
            self.log()
        );
    }

    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; waits for the exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrape(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.metrics);
        let response = reqwest::get(url).await.ok()?;
        response.text().await.ok()
    }

    /// Sum of a metric's samples whose labels contain `labels` (e.g.
    /// `partition="2"`; empty for all).
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.scrape().await.unwrap_or_default();
        metric_in(&text, name, labels)
    }

    /// Waits until every partition in `last` has committed its last
    /// published sequence number.
    async fn wait_committed(&mut self, last: &BTreeMap<String, i64>) {
        let deadline = std::time::Instant::now() + WAIT;
        'outer: loop {
            self.assert_running();
            let text = self.scrape().await.unwrap_or_default();
            for (p, seq) in last {
                let got = metric_in(
                    &text,
                    "firstseen_store_checkpoint_sequence_number",
                    &format!("partition=\"{p}\""),
                );
                if got < *seq as f64 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "partition {p} did not commit {seq} (at {got}): {}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                }
            }
            return;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.is_empty() || l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn start_double() -> EventHubsDouble {
    EventHubsDouble::start(DoubleConfig::new("insights-activity-logs", PARTITIONS))
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the receiver has seen `n` distinct ids, then a little longer
/// so that any extra delivery would show.
async fn wait_for_ids(receiver: &Receiver, n: usize) {
    wait_for(&format!("{n} distinct alerts"), || {
        receiver.ids().len() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_four_partitions_alerts_exactly_as_expected() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    let mut last = BTreeMap::new();
    let mut published = 0;
    for d in 1..=12 {
        let events = day(d);
        published += events.len();
        publish(&double, &events, &mut last);
        fs.wait_committed(&last).await;
    }
    let expected = expected_full_replay();
    wait_for_ids(&receiver, expected.len()).await;
    assert_eq!(receiver.alert_keys(), expected);
    assert!(
        receiver.ids().values().all(|n| *n == 1),
        "each alert delivered once"
    );
    // Every delivered body conforms to the published schema and carries its
    // Event Hubs position.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schema/alert.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for (_, alert) in receiver.requests() {
        let errors: Vec<String> = validator
            .iter_errors(&alert)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let position = &alert["source"];
        assert!(position["partition"].is_string() && position["sequence_number"].is_i64());
        assert!(position["offset"].is_string() && position["enqueued_time"].is_string());
        assert_eq!(
            position["enqueued_time"], alert["rule_time"],
            "rule time = enqueued time"
        );
    }

    // What the service counted.
    assert_eq!(
        fs.metric("firstseen_source_events_received_total", "")
            .await,
        published as f64
    );
    assert_eq!(fs.metric("firstseen_rules_alerts_total", "").await, 15.0);
    assert_eq!(fs.metric("firstseen_decode_errors_total", "").await, 0.0);
    for p in 0..PARTITIONS {
        assert!(
            fs.metric(
                "firstseen_source_events_received_total",
                &format!("partition=\"{p}\"")
            )
            .await
                > 0.0,
            "partition {p} was read"
        );
    }
    wait_for_outbox_empty(&fs).await;
    assert_eq!(fs.terminate().await.code(), Some(0), "{}", fs.log());
    // Every log line about a batch carries its partition; secrets stay out.
    let log = fs.log();
    assert!(
        !log.contains(SECRET) && !log.contains("SharedAccessKey="),
        "{log}"
    );
    assert!(log.contains("\"partition\""), "{log}");
}

async fn wait_for_outbox_empty(fs: &Instance) {
    let deadline = std::time::Instant::now() + WAIT;
    while fs.metric("firstseen_sink_outbox_pending_alerts", "").await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_loses_and_doubles_nothing() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    let mut last = BTreeMap::new();
    for d in 1..=5 {
        publish(&double, &day(d), &mut last);
        fs.wait_committed(&last).await;
    }
    // Stop while day 6 is being read.
    publish(&double, &day(6), &mut last);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(fs.terminate().await.code(), Some(0), "{}", fs.log());
    assert!(fs.log().contains("\"stopped\""), "{}", fs.log());

    fs.start().await;
    fs.wait_committed(&last).await;
    for d in 7..=12 {
        publish(&double, &day(d), &mut last);
        fs.wait_committed(&last).await;
    }
    let expected = expected_full_replay();
    wait_for_ids(&receiver, expected.len()).await;
    assert_eq!(receiver.alert_keys(), expected);
    assert!(
        receiver.ids().values().all(|n| *n == 1),
        "graceful restart delivers each alert once: {:?}",
        receiver.ids()
    );
    // The second run started strictly after each partition's checkpoint:
    // nothing at or below a committed sequence number reached it.
    assert_eq!(
        fs.metric("firstseen_source_events_redelivered_total", "")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_neither_loses_nor_invents_alerts() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    // Deterministic "random" kill points (xorshift), in ms after publishing.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut last = BTreeMap::new();
    fs.start().await;
    for d in 1..=12 {
        publish(&double, &day(d), &mut last);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(seed % 400);
        tokio::time::sleep(kill_after).await;
        fs.kill();
        fs.start().await;
        // The day must be committed before the next one is published.
        fs.wait_committed(&last).await;
    }
    let expected = expected_full_replay();
    wait_for_ids(&receiver, expected.len()).await;
    // Redelivery of an id is allowed (a kill between a POST and its
    // response); a lost or an extra alert is not.
    assert_eq!(receiver.alert_keys(), expected);
    assert_eq!(receiver.ids().len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_detached_links_lose_nothing() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    let mut last = BTreeMap::new();
    for d in 1..=12 {
        publish(&double, &day(d), &mut last);
        match d {
            3 | 9 => {
                assert!(double.drop_connections() >= 1);
            }
            6 => {
                for p in 0..PARTITIONS {
                    double.detach_receivers(&p.to_string(), "com.microsoft:server-busy", "test");
                }
            }
            8 => {
                double.detach_receivers("1", "amqp:link:detach-forced", "test");
            }
            _ => {}
        }
        fs.wait_committed(&last).await;
    }
    let expected = expected_full_replay();
    wait_for_ids(&receiver, expected.len()).await;
    assert_eq!(receiver.alert_keys(), expected);
    assert!(
        receiver.ids().values().all(|n| *n == 1),
        "{:?}",
        receiver.ids()
    );
    fs.assert_running();
    let c = double.counters();
    assert!(c.connections >= 3, "the client reconnected: {c:?}");
}

/// A single-record body in the case template R(...) of the shared cases.
fn r_body(vm: &str, ip: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"records": [{
        "time": "2025-03-01T10:00:00.1234567Z",
        "resourceId": format!("/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG-APP/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}/EXTENSIONS/CUSTOMSCRIPTEXTENSION"),
        "operationName": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE",
        "category": "Administrative",
        "resultType": "Success",
        "resultSignature": "Succeeded.Created",
        "callerIpAddress": ip,
        "correlationId": "11111111-1111-1111-1111-111111111111",
        "level": "Information",
        "identity": {"claims": {"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": "alice@example.com"}},
        "properties": {"statusCode": "Created"}
    }]}))
    .unwrap()
}

/// An attacker address from the samples (DigitalOcean, AS14061 in samples/asn).
const OUTSIDE_IP: &str = "167.99.148.23";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_09_b_kill_after_commit_before_post_delivers_once_after_restart() {
    let double = start_double().await;
    // The receiver is down: the alert is committed but cannot be posted.
    let mut receiver = Receiver::reserve();
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    let p = double
        .publish("0", r_body("VM-WEB-08", OUTSIDE_IP))
        .unwrap();
    let last = BTreeMap::from([("0".to_string(), p.sequence_number)]);
    fs.wait_committed(&last).await;
    assert_eq!(fs.metric("firstseen_rules_alerts_total", "").await, 1.0);
    fs.kill();

    receiver.listen().await;
    fs.start().await;
    wait_for_ids(&receiver, 1).await;
    let ids = receiver.ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        ids.values().copied().collect::<Vec<_>>(),
        vec![1],
        "exactly one delivery"
    );
    assert_eq!(
        receiver.alert_keys().into_iter().next().unwrap().1,
        "VM-WEB-08/EXTENSIONS/CUSTOMSCRIPTEXTENSION"
    );
    // The restart did not re-read the committed event either.
    assert_eq!(fs.metric("firstseen_rules_alerts_total", "").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_09_c_kill_between_post_and_response_redelivers_the_same_id() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Stall);
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    double
        .publish("2", r_body("VM-WEB-08", OUTSIDE_IP))
        .unwrap();
    wait_for("the POST to arrive", || !receiver.requests().is_empty()).await;
    fs.kill();

    receiver.set_mode(Mode::Ok);
    let before = receiver.requests().len();
    fs.start().await;
    wait_for("the redelivery", || receiver.requests().len() > before).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = receiver.ids();
    assert_eq!(ids.len(), 1, "one alert, redelivered with its id: {ids:?}");
    assert!(ids.values().all(|n| *n >= 2), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_12_b_second_instance_takes_two_partitions_first_keeps_the_others() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Instance::new(&tmp.path().join("a"), &double, Options::new(&receiver));
    a.start().await;
    let mut last = BTreeMap::new();
    for p in 0..PARTITIONS {
        let ev = double
            .publish(&p.to_string(), r_body(&format!("VM-A-{p}"), OUTSIDE_IP))
            .unwrap();
        last.insert(p.to_string(), ev.sequence_number);
    }
    a.wait_committed(&last).await;
    wait_for_ids(&receiver, 4).await;

    // Instance B: higher owner level, partitions 2 and 3, its own state,
    // reading them from the start again (events seen by both instances).
    let mut b_options = Options::new(&receiver);
    b_options.owner_level = 1;
    b_options.partitions = Some(&["2", "3"]);
    let mut b = Instance::new(&tmp.path().join("b"), &double, b_options);
    b.start().await;
    let deadline = std::time::Instant::now() + WAIT;
    while a.metric("firstseen_source_ownership_lost_total", "").await < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never lost p2/p3: {}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in ["2", "3"] {
        let lost = format!("partition=\"{p}\"");
        assert_eq!(
            a.metric("firstseen_source_ownership_lost_total", &lost)
                .await,
            1.0
        );
    }
    for p in ["0", "1"] {
        let kept = format!("partition=\"{p}\"");
        assert_eq!(
            a.metric("firstseen_source_ownership_lost_total", &kept)
                .await,
            0.0
        );
    }
    b.wait_committed(
        &last
            .clone()
            .into_iter()
            .filter(|(p, _)| p == "2" || p == "3")
            .collect(),
    )
    .await;

    // New events everywhere: A handles 0 and 1, B handles 2 and 3.
    for p in 0..PARTITIONS {
        let ev = double
            .publish(&p.to_string(), r_body(&format!("VM-B-{p}"), OUTSIDE_IP))
            .unwrap();
        last.insert(p.to_string(), ev.sequence_number);
    }
    let (a_parts, b_parts): (BTreeMap<_, _>, BTreeMap<_, _>) = last
        .clone()
        .into_iter()
        .partition(|(p, _)| p == "0" || p == "1");
    a.wait_committed(&a_parts).await;
    b.wait_committed(&b_parts).await;
    wait_for_ids(&receiver, 8).await;
    a.assert_running();

    // A wrote no checkpoint for the partitions it lost after losing them.
    for (p, seq) in &b_parts {
        let cp = a
            .metric(
                "firstseen_store_checkpoint_sequence_number",
                &format!("partition=\"{p}\""),
            )
            .await;
        assert!(
            cp < *seq as f64,
            "A committed partition {p} after losing it"
        );
    }
    // The handover re-read p2/p3 on B: same records, same alert ids, so the
    // distinct alerts are exactly one per record.
    let keys = receiver.alert_keys();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert_eq!(receiver.ids().len(), 8);
    assert!(
        receiver.requests().len() >= 10,
        "B re-sent the p2/p3 alerts with their ids"
    );
    let readiness = reqwest::get(format!("http://{}/readyz", a.metrics))
        .await
        .unwrap();
    assert_eq!(
        readiness.status().as_u16(),
        503,
        "A is not ready with lost partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_consumption_goes_on_and_the_backlog_drains_in_creation_order() {
    let double = start_double().await;
    let mut receiver = Receiver::reserve();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::new(&receiver);
    options.concurrency = 1;
    let mut fs = Instance::new(tmp.path(), &double, options);
    fs.start().await;
    let mut last = BTreeMap::new();
    for d in 1..=12 {
        publish(&double, &day(d), &mut last);
        fs.wait_committed(&last).await;
    }
    // Everything was consumed and committed while nothing could be delivered.
    let deadline = std::time::Instant::now() + WAIT;
    while fs.metric("firstseen_sink_outbox_pending_alerts", "").await < 15.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "backlog gauge never showed the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fs.metric(
            "firstseen_sink_webhook_failures_total",
            "reason=\"connect\""
        )
        .await
            >= 1.0
    );
    assert_eq!(
        fs.metric("firstseen_sink_alerts_delivered_total", "").await,
        0.0
    );

    receiver.listen().await;
    wait_for_ids(&receiver, 15).await;
    wait_for_outbox_empty(&fs).await;
    let created: Vec<String> = receiver
        .requests()
        .iter()
        .map(|(_, a)| a["created_at"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(created, sorted, "drained in order of creation");
    assert_eq!(receiver.alert_keys(), expected_full_replay());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_source_fail_fast_with_a_message() {
    let double = start_double().await;
    let receiver = Receiver::reserve();
    let tmp = tempfile::tempdir().unwrap();
    let fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    // The connection string variable is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .arg("run")
        .arg("--config")
        .arg(&fs.config)
        .env_remove("FIRSTSEEN_TEST_EH_CONNECTION_STRING")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FIRSTSEEN_TEST_EH_CONNECTION_STRING"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_15_lag_age_is_clamped_for_future_enqueued_times_and_counted() {
    let double = start_double().await;
    let receiver = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = Instance::new(tmp.path(), &double, Options::new(&receiver));
    fs.start().await;
    // Before any event the error counters already exist at 0.
    let text = fs.scrape().await.unwrap();
    for name in [
        "firstseen_clock_skew_events_total",
        "firstseen_source_connection_errors_total",
        "firstseen_decode_errors_total",
        "firstseen_sink_webhook_failures_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing before any event"
        );
    }
    let at = |offset_s: i64| {
        let now = SystemTime::now();
        if offset_s >= 0 {
            now + Duration::from_secs(offset_s as u64)
        } else {
            now - Duration::from_secs((-offset_s) as u64)
        }
    };
    let publish_at = |t: SystemTime| {
        double
            .publish_with(
                "0",
                r_body("VM-LAG-01", OUTSIDE_IP),
                PublishOptions {
                    enqueued_time: Some(t),
                    partition_key: None,
                },
            )
            .unwrap()
            .sequence_number
    };
    let seq = publish_at(at(5));
    fs.wait_committed(&BTreeMap::from([("0".to_string(), seq)]))
        .await;
    let lag = "partition=\"0\"";
    assert_eq!(
        fs.metric("firstseen_source_consumer_lag_seconds", lag)
            .await,
        0.0
    );
    assert_eq!(
        fs.metric("firstseen_clock_skew_events_total", "").await,
        1.0
    );

    let seq = publish_at(at(-120));
    fs.wait_committed(&BTreeMap::from([("0".to_string(), seq)]))
        .await;
    let age = fs
        .metric("firstseen_source_consumer_lag_seconds", lag)
        .await;
    assert!((119.0..130.0).contains(&age), "lag {age}");
    assert_eq!(
        fs.metric("firstseen_clock_skew_events_total", "").await,
        1.0
    );
}
