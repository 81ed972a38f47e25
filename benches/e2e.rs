//! End to end through the loopback Event Hubs double and a local webhook
//! receiver (issue 7, measurements 5 and 6): sustained events/s of
//! `firstseen run` on one core, alert latency from enqueue to webhook
//! receipt at 10%, 50% and 90% of that rate, idle and loaded RSS, and
//! startup time to ready.
//!
//! ```sh
//! scripts/fetch-asn-db.sh                       # data/asn (real callers)
//! cargo build --release --bin firstseen
//! cargo bench --bench e2e -- --firstseen target/release/firstseen [--records 300000] [--seconds 10]
//! ```
//!
//! The firstseen process is pinned to CPU 1 with `taskset` (when present);
//! this process (the double, the publisher and the receiver) stays on CPU 0.
//! The double publishes in memory, so the measured rate is firstseen's:
//! AMQP receive, decode → normalize → enrich → rules, one synced RocksDB
//! commit per partition batch, webhook delivery. Not a test: it asserts
//! nothing about time; it prints what it measured.

mod workload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use eventhubs_double::{DoubleConfig, EventHubsDouble};
use serde_json::Value;

const PARTITIONS: u32 = 4;
/// In the live runs, one event in this many alerts.
const ALERT_EVERY: usize = 20;

/// A body whose one record is a successful CustomScript write on a VM named
/// after `n`, from a DigitalOcean address (AS14061, not excluded): a new
/// term for the seed rule.
fn alerting_body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"records": [{
        "time": "2025-03-10T12:00:00.0000000Z",
        "resourceId": format!("/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG-BENCH/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM-E2E-{n:08}/EXTENSIONS/CUSTOMSCRIPT"),
        "operationName": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE",
        "category": "Administrative",
        "resultType": "Success",
        "resultSignature": "Succeeded.Created",
        "callerIpAddress": "167.99.148.23",
        "correlationId": format!("00000000-0000-0000-0000-{n:012}"),
        "level": "Information",
        "identity": {"claims": {"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": "bench@example.com"}},
        "properties": {"statusCode": "Created"}
    }]}))
    .unwrap()
}

/// (partition, sequence number) → when it was published.
type Published = Arc<Mutex<HashMap<(String, i64), Instant>>>;
/// Latencies of received alerts.
type Received = Arc<Mutex<Vec<Duration>>>;

struct Args {
    firstseen: PathBuf,
    asn: PathBuf,
    records: usize,
    seconds: u64,
}

fn args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut a = Args {
        firstseen: target.join("release/firstseen"),
        asn: root.join("data/asn"),
        records: 300_000,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--firstseen" => a.firstseen = PathBuf::from(value),
            "--asn-db" => a.asn = PathBuf::from(value),
            "--records" => a.records = value.parse().expect("--records N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            // cargo bench passes --bench; ignore what we do not know.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

async fn hook(
    State((published, received)): State<(Published, Received)>,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    if let Ok(alert) = serde_json::from_slice::<Value>(&body) {
        let key = (
            alert["source"]["partition"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            alert["source"]["sequence_number"].as_i64().unwrap_or(-1),
        );
        if let Some(at) = published.lock().unwrap().get(&key) {
            received.lock().unwrap().push(now.duration_since(*at));
        }
    }
    StatusCode::OK
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn write_config(
    dir: &Path,
    double: &EventHubsDouble,
    hook: SocketAddr,
    metrics: SocketAddr,
    asn: &Path,
) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
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
start = "earliest"
[eventhubs.auth]
kind = "connection-string"
env = "BENCH_EH_CONNECTION_STRING"
[[sinks]]
type = "webhook"
name = "bench"
url = "http://{hook}/hook"
allow_insecure_http = true
signing_secrets = [{{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}]
concurrency = 16
[server]
listen = "{metrics}"
[log]
format = "json"
level = "warn"
"#,
        state = dir.join("state").display(),
        rules = root.join("config/rules").display(),
        asn = asn.display(),
        ns = double.fully_qualified_namespace(),
        hub = double.hub_name(),
        endpoint = double.endpoint(),
    );
    let path = dir.join("firstseen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(firstseen: &Path, config: &Path, connection_string: &str, log: &Path) -> Child {
    let mut cmd = if Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", "1"]).arg(firstseen);
        c
    } else {
        Command::new(firstseen)
    };
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("BENCH_EH_CONNECTION_STRING", connection_string)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawning firstseen (build it with cargo build --release --bin firstseen)")
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn metric(client: &reqwest::Client, metrics: SocketAddr, name: &str) -> Vec<(String, f64)> {
    let Ok(r) = client.get(format!("http://{metrics}/metrics")).send().await else {
        return Vec::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Waits until every partition committed its last published sequence number.
async fn wait_committed(
    client: &reqwest::Client,
    metrics: SocketAddr,
    last: &HashMap<String, i64>,
) {
    loop {
        let cps = metric(
            client,
            metrics,
            "firstseen_store_checkpoint_sequence_number",
        )
        .await;
        let done = last.iter().all(|(p, seq)| {
            cps.iter()
                .any(|(l, v)| l.contains(&format!("partition=\"{p}\"")) && *v >= *seq as f64)
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes round-robin over the partitions, recording when each went in.
fn publish(
    double: &EventHubsDouble,
    published: &Published,
    last: &mut HashMap<String, i64>,
    bodies: &[Vec<u8>],
    i0: usize,
) {
    for (i, body) in bodies.iter().enumerate() {
        let partition = ((i0 + i) as u32 % PARTITIONS).to_string();
        let ev = double.publish(&partition, body.clone()).unwrap();
        published
            .lock()
            .unwrap()
            .insert((partition.clone(), ev.sequence_number), Instant::now());
        last.insert(partition, ev.sequence_number);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let a = args();
    let mut cfg = workload::WorkloadConfig {
        records: a.records,
        // Nearly every rule-matching record is a new term: a steady alert
        // stream to time.
        terms: 10_000_000,
        ..Default::default()
    };
    let (backlog, backlog_stats) =
        workload::generate(&cfg, &a.asn).expect("workload (run scripts/fetch-asn-db.sh)");
    let backlog_bytes: usize = backlog.iter().map(Vec::len).sum();
    eprintln!("backlog workload: {backlog_stats}");

    let double = EventHubsDouble::start(DoubleConfig::new("activity-logs", PARTITIONS))
        .await
        .unwrap();
    let published: Published = Arc::default();
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state((published.clone(), received.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let config = write_config(dir.path(), &double, hook_addr, metrics, &a.asn);
    let client = reqwest::Client::new();

    // 1. A backlog published before firstseen starts: drained as fast as it
    //    can go (the sustained rate).
    let mut last: HashMap<String, i64> = HashMap::new();
    publish(&double, &published, &mut last, &backlog, 0);
    let spawned = Instant::now();
    let mut child = spawn(
        &a.firstseen,
        &config,
        &double.connection_string(),
        &dir.path().join("run.log"),
    );
    let pid = child.id();
    loop {
        if let Ok(r) = client.get(format!("http://{metrics}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "firstseen exited: {status}: {}",
                std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let startup = spawned.elapsed();
    let (idle_rss, _) = rss_mib(pid);
    let drain_start = Instant::now();
    let mut peak_rss: f64 = 0.0;
    {
        let sampler = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (rss, _) = rss_mib(pid);
                peak_rss = peak_rss.max(rss);
            }
        };
        tokio::select! {
            _ = wait_committed(&client, metrics, &last) => {}
            _ = sampler => {}
        }
    }
    let drain = drain_start.elapsed();
    let sustained_events = backlog.len() as f64 / drain.as_secs_f64();
    let sustained_records = backlog_stats.records as f64 / drain.as_secs_f64();
    let sustained_mb = backlog_bytes as f64 / drain.as_secs_f64() / 1e6;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after_rss, _) = rss_mib(pid);

    println!("## firstseen run, end to end (firstseen pinned to one core)\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| startup: spawn → /readyz 200 | {:.0} ms |", ms(startup));
    println!("| RSS idle, right after ready | {idle_rss:.1} MiB |");
    println!(
        "| backlog | {} events, {} records, {:.1} MB, {} rule-matching records |",
        backlog.len(),
        backlog_stats.records,
        backlog_bytes as f64 / 1e6,
        backlog_stats.matching_records
    );
    println!(
        "| sustained (backlog drain) | {sustained_events:.0} events/s, {sustained_records:.0} records/s, {sustained_mb:.1} MB/s |"
    );
    println!("| RSS peak while draining (sampled every 100 ms) | {peak_rss:.1} MiB |");
    println!("| RSS 2 s after the drain | {after_rss:.1} MiB |");

    // 2. Live traffic at a fraction of the sustained rate: latency from
    //    publish (= enqueue) to webhook receipt, per alert.
    println!("\nLive traffic, one event in {ALERT_EVERY} alerting; latency = webhook receipt − publish (enqueue):\n");
    println!("| load | events/s offered | alerts timed | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let mut seed = cfg.seed;
    let mut offset = backlog.len();
    for fraction in [0.1, 0.5, 0.9] {
        let rate = sustained_events * fraction;
        let count = (rate * a.seconds as f64).ceil() as usize;
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        cfg.seed = seed;
        cfg.records =
            (count as f64 * backlog_stats.records as f64 / backlog.len() as f64) as usize + 1;
        let (mut live, _) = workload::generate(&cfg, &a.asn).unwrap();
        live.truncate(count);
        // Every ALERT_EVERY-th event carries one record of a term never seen
        // before (a generated workload repeats its term names across seeds).
        for (i, body) in live.iter_mut().enumerate().step_by(ALERT_EVERY) {
            *body = alerting_body(offset + i);
        }
        let live = &live[..];
        received.lock().unwrap().clear();
        // Publish in 10 ms ticks.
        let tick = Duration::from_millis(10);
        let per_tick = rate * tick.as_secs_f64();
        let started = Instant::now();
        let mut sent = 0usize;
        let mut ticker = tokio::time::interval(tick);
        while sent < live.len() {
            ticker.tick().await;
            let due =
                ((started.elapsed().as_secs_f64() / tick.as_secs_f64()) * per_tick).ceil() as usize;
            let upto = due.min(live.len());
            if upto > sent {
                publish(
                    &double,
                    &published,
                    &mut last,
                    &live[sent..upto],
                    offset + sent,
                );
                sent = upto;
            }
        }
        offset += live.len();
        wait_committed(&client, metrics, &last).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut lat = received.lock().unwrap().clone();
        lat.sort();
        println!(
            "| {:.0}% | {rate:.0} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            fraction * 100.0,
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
        );
    }
    let (loaded_rss, hwm) = rss_mib(pid);
    println!("\nRSS after the live runs: {loaded_rss:.1} MiB (high-water mark {hwm:.1} MiB)");

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    eprintln!("firstseen exited: {status}");
}
