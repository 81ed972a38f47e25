//! End to end through the loopback Event Hubs double and a local webhook
//! receiver (issue 7, measurements 5 and 6): sustained events/s of
//! `firstseen run` on one core, alert latency from enqueue to webhook
//! receipt at 10%, 50% and 90% of that rate and at a 40-TU namespace's
//! ingress (40 MB/s) and egress (80 MB/s), idle and loaded RSS, startup
//! time to ready, and both processes' CPU use.
//!
//! ```sh
//! scripts/fetch-asn-db.sh                       # data/asn (real callers)
//! cargo build --release --bin firstseen
//! cargo bench --bench e2e -- --firstseen target/release/firstseen [--records 1200000] [--seconds 10]
//! ```
//!
//! With `taskset` present, this process (the double, the publisher and
//! the receiver) re-executes itself pinned to CPU 0 and firstseen runs
//! pinned to CPU 1. The sustained rate is measured with firstseen paused
//! (SIGSTOP) while the backlog is published and resumed (SIGCONT) for the
//! drain, so the harness only serves: AMQP receive, decode → normalize →
//! enrich → rules, one synced RocksDB commit per partition batch, webhook
//! delivery of every alert. Not a test: it asserts nothing about time; it
//! prints what it measured.

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
/// (partition, sequence number) of an event → its first alert's latency.
type Received = Arc<Mutex<HashMap<(String, i64), Duration>>>;

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
        records: 1_200_000,
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
        let at = published.lock().unwrap().get(&key).copied();
        if let Some(at) = at {
            received
                .lock()
                .unwrap()
                .entry(key)
                .or_insert(now.duration_since(at));
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

/// CPU seconds (user + system) a process has used so far (`self` or a pid).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
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

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits until `done` holds for the events with an alert at the receiver,
/// or `cap`.
async fn wait_received(
    received: &Received,
    cap: Duration,
    done: impl Fn(&HashMap<(String, i64), Duration>) -> bool,
) {
    let deadline = Instant::now() + cap;
    while !done(&received.lock().unwrap()) && Instant::now() <= deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of `keys` have an alert at the receiver.
fn distinct_received(received: &Received, keys: &[(String, i64)]) -> usize {
    let r = received.lock().unwrap();
    keys.iter().filter(|k| r.contains_key(*k)).count()
}

/// Publishes round-robin over the partitions, recording when each went in;
/// returns each body's (partition, sequence number).
fn publish(
    double: &EventHubsDouble,
    published: &Published,
    last: &mut HashMap<String, i64>,
    bodies: &[Vec<u8>],
    i0: usize,
) -> Vec<(String, i64)> {
    let mut keys = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let partition = ((i0 + i) as u32 % PARTITIONS).to_string();
        let body = body.clone();
        // Stamped before the event is enqueued, so latency is never short.
        let at = Instant::now();
        let ev = double.publish(&partition, body).unwrap();
        let key = (partition.clone(), ev.sequence_number);
        published.lock().unwrap().insert(key.clone(), at);
        last.insert(partition, ev.sequence_number);
        keys.push(key);
    }
    keys
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

/// Set once this process has re-executed itself pinned to CPU 0.
const PINNED_ENV: &str = "FIRSTSEEN_E2E_HARNESS_PINNED";

fn main() {
    // The harness (double, publisher, receiver) on CPU 0, firstseen on
    // CPU 1: neither can take the other's core.
    if std::env::var_os(PINNED_ENV).is_none() && Path::new("/usr/bin/taskset").exists() {
        let status = Command::new("/usr/bin/taskset")
            .args(["-c", "0"])
            .arg(std::env::current_exe().expect("own path"))
            .args(std::env::args_os().skip(1))
            .env(PINNED_ENV, "1")
            .status()
            .expect("re-running pinned to CPU 0");
        std::process::exit(status.code().unwrap_or(1));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

async fn bench() {
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

    // 1. Startup and idle RSS against an empty hub. Then firstseen is
    //    paused (SIGSTOP) with its links attached, the backlog published,
    //    and firstseen resumed (SIGCONT): from there it drains as fast as it
    //    can go (the sustained rate) until every event is committed and
    //    every alert delivered, with the harness only serving.
    let mut last: HashMap<String, i64> = HashMap::new();
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = rss_mib(pid);
    signal(pid, "STOP");
    let backlog_keys = publish(&double, &published, &mut last, &backlog, 0);
    let drain_start = Instant::now();
    let cpu_before = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
    signal(pid, "CONT");
    let mut peak_rss: f64 = 0.0;
    {
        let sampler = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (rss, _) = rss_mib(pid);
                peak_rss = peak_rss.max(rss);
            }
        };
        let done = async {
            wait_committed(&client, metrics, &last).await;
            // Every alert the backlog raises (one per distinct term).
            let n = backlog_stats.distinct_terms;
            wait_received(&received, Duration::from_secs(120), |got| got.len() >= n).await
        };
        tokio::select! {
            _ = done => {}
            _ = sampler => {}
        }
    }
    let drain = drain_start.elapsed();
    let drain_fs_cpu = (cpu_seconds(&pid.to_string()) - cpu_before.0) / drain.as_secs_f64() * 100.0;
    let drain_harness_cpu = (cpu_seconds("self") - cpu_before.1) / drain.as_secs_f64() * 100.0;
    let backlog_alerts = distinct_received(&received, &backlog_keys);
    let sustained_events = backlog.len() as f64 / drain.as_secs_f64();
    let sustained_records = backlog_stats.records as f64 / drain.as_secs_f64();
    let sustained_mb = backlog_bytes as f64 / drain.as_secs_f64() / 1e6;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after_rss, _) = rss_mib(pid);

    println!("## firstseen run, end to end (firstseen pinned to one core)\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| startup: spawn → /readyz 200 (readiness is re-evaluated every second) | {:.0} ms |",
        ms(startup)
    );
    println!("| RSS idle, 1 s after ready, empty hub | {idle_rss:.1} MiB |");
    println!(
        "| backlog | {} events, {} records, {:.1} MB, {} rule-matching records |",
        backlog.len(),
        backlog_stats.records,
        backlog_bytes as f64 / 1e6,
        backlog_stats.matching_records
    );
    println!(
        "| sustained (backlog drain: first publish → last commit and last alert delivered) | {sustained_events:.0} events/s, {sustained_records:.0} records/s, {sustained_mb:.1} MB/s |"
    );
    println!(
        "| drain time (SIGCONT → last commit and last alert) | {:.2} s |",
        drain.as_secs_f64(),
    );
    println!(
        "| backlog alerts delivered / distinct new terms | {backlog_alerts} / {} |",
        backlog_stats.distinct_terms
    );
    println!(
        "| CPU while draining: firstseen (CPU 1) / harness (CPU 0), share of one core | {drain_fs_cpu:.0}% / {drain_harness_cpu:.0}% |"
    );
    println!("| RSS peak while draining (sampled every 100 ms) | {peak_rss:.1} MiB |");
    println!("| RSS 2 s after the drain | {after_rss:.1} MiB |");

    // 2. Live traffic at a fraction of the sustained rate: latency from
    //    publish (= enqueue) to webhook receipt, per alert.
    println!("\nLive traffic, one event in {ALERT_EVERY} alerting; latency = webhook receipt − publish (enqueue):\n");
    println!("| load | events/s offered | events/s published | MB/s | firstseen CPU | harness CPU | alerts received/expected | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut seed = cfg.seed;
    let mut offset = backlog.len();
    // Fractions of the drain rate, and the ingress (1 MB/s per TU) and
    // egress (2 MB/s per TU) of a 40-TU Standard namespace.
    let alert_every = ALERT_EVERY as f64;
    let mean_body = backlog_bytes as f64 / backlog.len() as f64 * (1.0 - 1.0 / alert_every)
        + alerting_body(0).len() as f64 / alert_every;
    let mut loads: Vec<(String, f64)> = [0.1, 0.5, 0.9]
        .iter()
        .map(|f| (format!("{:.0}%", f * 100.0), sustained_events * f))
        .collect();
    loads.push(("40 TU ingress, 40 MB/s".into(), 40e6 / mean_body));
    loads.push(("40 TU egress, 80 MB/s".into(), 80e6 / mean_body));
    loads.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (label, rate) in loads {
        let count = (rate * a.seconds as f64).ceil() as usize;
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        cfg.seed = seed;
        // A fifth more records than the mean body size asks for, so there
        // are at least `count` bodies to publish.
        cfg.records = (count as f64 * 1.2 * backlog_stats.records as f64 / backlog.len() as f64)
            as usize
            + 100;
        let (mut live, _) = workload::generate(&cfg, &a.asn).unwrap();
        assert!(
            live.len() >= count,
            "generated {} bodies of {count}",
            live.len()
        );
        live.truncate(count);
        // Every ALERT_EVERY-th event carries one record of a term never seen
        // before (a generated workload repeats its term names across seeds).
        let mut expected: Vec<usize> = Vec::new();
        for (i, body) in live.iter_mut().enumerate().step_by(ALERT_EVERY) {
            *body = alerting_body(offset + i);
            expected.push(i);
        }
        let live_bytes: usize = live.iter().map(Vec::len).sum();
        let live = &live[..];
        received.lock().unwrap().clear();
        // Publish in 10 ms ticks.
        let tick = Duration::from_millis(10);
        let per_tick = rate * tick.as_secs_f64();
        let started = Instant::now();
        let cpu_before = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
        let mut sent = 0usize;
        let mut live_keys: Vec<(String, i64)> = Vec::with_capacity(live.len());
        let mut ticker = tokio::time::interval(tick);
        while sent < live.len() {
            ticker.tick().await;
            let due =
                ((started.elapsed().as_secs_f64() / tick.as_secs_f64()) * per_tick).ceil() as usize;
            let upto = due.min(live.len());
            if upto > sent {
                live_keys.extend(publish(
                    &double,
                    &published,
                    &mut last,
                    &live[sent..upto],
                    offset + sent,
                ));
                sent = upto;
            }
        }
        // What the publisher managed (it shares CPU 0 with the double and
        // the receiver): below the offered rate, the harness is the limit.
        let published_rate = live.len() as f64 / started.elapsed().as_secs_f64();
        let published_mb = live_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
        let expected: Vec<(String, i64)> = expected.iter().map(|i| live_keys[*i].clone()).collect();
        offset += live.len();
        wait_committed(&client, metrics, &last).await;
        // Every alerting event's alert, however late (a late one left out
        // would hide the tail); two minutes at most.
        wait_received(&received, Duration::from_secs(120), |got| {
            expected.iter().all(|k| got.contains_key(k))
        })
        .await;
        // CPU use from the first publish until the last alert arrived, as a
        // share of one core: firstseen near 100% is firstseen's limit.
        let busy = started.elapsed().as_secs_f64();
        let fs_cpu = (cpu_seconds(&pid.to_string()) - cpu_before.0) / busy * 100.0;
        let harness_cpu = (cpu_seconds("self") - cpu_before.1) / busy * 100.0;
        // One sample per alerting event: its first alert's latency. (Alerts
        // of the generated records, which may also be new terms, are left
        // out; an event whose alert never came is counted as missing.)
        let mut lat: Vec<Duration> = {
            let r = received.lock().unwrap();
            expected.iter().filter_map(|k| r.get(k).copied()).collect()
        };
        let arrived = lat.len();
        lat.sort();
        println!(
            "| {label} | {rate:.0} | {published_rate:.0} | {published_mb:.1} | {fs_cpu:.0}% | {harness_cpu:.0}% | {arrived}/{} | {:.1} ms | {:.1} ms | {:.1} ms |",
            expected.len(),
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
