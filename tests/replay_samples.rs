//! The shipped seed rule over the bundled multi-day samples alerts exactly
//! where the hand-computed expectation (samples/EXPECTED.md, recomputed by
//! an independent Python implementation in samples/generate.py) says, in a
//! full replay and in learn-then-detect mode; and the `firstseen replay`
//! binary does the same as a whole process.

use std::path::{Path, PathBuf};
use std::process::Command;

use firstseen::config::Config;
use firstseen::replay::{replay, ReplayOptions};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config() -> Config {
    let mut c = Config::default();
    c.rules.path = root().join("config/rules");
    c.asn.database = Some(root().join("samples/asn").display().to_string());
    c
}

fn days(from: u32, to: u32) -> Vec<PathBuf> {
    (from..=to)
        .map(|d| root().join(format!("samples/activity-logs/2025-03-{d:02}.ndjson")))
        .collect()
}

/// (minute "YYYY-MM-DD HH:MM", resource name, AS) of each alert.
fn run(state: Option<&Path>, paths: Vec<PathBuf>, learn: bool) -> Vec<(String, String, i64)> {
    let opts = ReplayOptions {
        config: config(),
        state_dir: state.map(Path::to_owned),
        learn,
        paths,
        progress: false,
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let summary = replay(&opts, &mut out, &mut err).unwrap();
    assert_eq!(
        summary.stats.decode_error_total(),
        0,
        "{}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let a: Value = serde_json::from_str(l).unwrap();
            let t = a["rule_time"].as_str().unwrap();
            (
                format!("{} {}", &t[..10], &t[11..16]),
                a["new_terms"]["values"][0].as_str().unwrap().to_string(),
                a["new_terms"]["values"][1].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Parses the alert tables of samples/EXPECTED.md: (heading, rows).
fn expected_tables() -> Vec<Vec<(String, String, i64)>> {
    let text = std::fs::read_to_string(root().join("samples/EXPECTED.md")).unwrap();
    let mut tables = Vec::new();
    let mut current: Vec<(String, String, i64)> = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let is_alert_row =
            cells.len() >= 6 && cells[1].parse::<u32>().is_ok() && cells[3].starts_with('`');
        if is_alert_row {
            current.push((
                cells[2].to_string(),
                cells[3].trim_matches('`').to_string(),
                cells[4].parse().unwrap(),
            ));
        } else if !current.is_empty() {
            tables.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        tables.push(current);
    }
    tables
}

#[test]
fn full_replay_alerts_exactly_as_expected() {
    let tables = expected_tables();
    assert_eq!(
        tables.len(),
        2,
        "EXPECTED.md has the full-replay and learn-then-detect tables"
    );
    let got = run(None, days(1, 12), false);
    assert_eq!(got, tables[0]);
}

#[test]
fn learn_then_detect_alerts_only_the_second_week_expectation() {
    let tables = expected_tables();
    let dir = tempfile::tempdir().unwrap();
    let learned = run(Some(dir.path()), days(1, 7), true);
    assert!(learned.is_empty(), "--learn emits no alerts");
    // A second process on the same state (state survives reopening).
    let got = run(Some(dir.path()), days(8, 12), false);
    assert_eq!(got, tables[1]);
}

#[test]
fn replay_binary_prints_alerts_and_a_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .args(["replay", "--quiet", "--rules"])
        .arg(root().join("config/rules"))
        .arg("--asn-db")
        .arg(root().join("samples/asn"))
        .arg(root().join("samples/activity-logs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = String::from_utf8(out.stdout).unwrap().lines().count();
    assert_eq!(alerts, expected_tables()[0].len());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("{alerts} alerts")), "{stderr}");
}

#[test]
fn normalize_binary_reports_decode_errors_in_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bodies.ndjson");
    std::fs::write(
        &file,
        "{\"records\":[{\"time\":\"2025-03-01T10:00:00Z\",\"operationName\":\"x\",\"callerIpAddress\":\"203.0.113.7\"}]}\n{broken\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .arg("normalize")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let doc: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(doc["source"]["ip"], "203.0.113.7");
    assert_eq!(doc["event"]["action"], "X");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("bodies.ndjson:2: decode error: invalid_json"),
        "{stderr}"
    );
}

#[test]
fn unreadable_and_truncated_files_are_reported_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let good = root().join("samples/activity-logs/2025-03-10.ndjson");
    // A gzip cut in the middle of its deflate stream.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &std::fs::read(&good).unwrap()).unwrap();
    let gz = gz.finish().unwrap();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::write(inputs.join("a-truncated.ndjson.gz"), &gz[..gz.len() / 2]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.json"), inputs.join("b-dangling.json"))
        .unwrap();
    std::fs::copy(&good, inputs.join("c-good.ndjson")).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .args(["replay", "--quiet", "--rules"])
        .arg(root().join("config/rules"))
        .arg("--asn-db")
        .arg(root().join("samples/asn"))
        .arg(&inputs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("a-truncated.ndjson.gz: read error"),
        "{stderr}"
    );
    assert!(stderr.contains("b-dangling.json: read error"), "{stderr}");
    assert!(stderr.contains("(2 unreadable)"), "{stderr}");
    // The good file's alerts (the readable half of the gzip repeats its
    // terms, so no extra alert may come from it beyond the first half).
    let alerts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let from_good = alerts
        .iter()
        .filter(|a| {
            a["source"]["file"]
                .as_str()
                .unwrap()
                .ends_with("c-good.ndjson")
        })
        .count();
    let from_gz = alerts.len() - from_good;
    assert!(from_gz > 0, "the readable part of the gzip was replayed");
    assert!(!alerts.is_empty());
    assert_eq!(
        alerts.len(),
        run(None, vec![good], false).len(),
        "each term alerts once, whichever copy carried it first"
    );
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    use std::io::BufRead;
    // `firstseen normalize … | head -1`
    let mut child = Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .arg("normalize")
        .arg(root().join("samples/activity-logs"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'));
    // The reader is dropped here; the writer gets EPIPE.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_record_without_a_usable_time_is_counted_not_judged_in_replay() {
    let dir = tempfile::tempdir().unwrap();
    let record = |vm: &str, time: &str| {
        serde_json::json!({
            "time": time,
            "resourceId": format!("/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}/EXTENSIONS/CUSTOMSCRIPT"),
            "operationName": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE",
            "resultType": "Success",
            "callerIpAddress": "167.99.148.23",
        })
    };
    let body = serde_json::json!({"records": [
        record("VM-NO-TIME", "not a time"),
        record("VM-TIMED", "2025-03-10T12:00:00Z"),
    ]});
    let file = dir.path().join("b.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let run = |cmd: &str| {
        Command::new(env!("CARGO_BIN_EXE_firstseen"))
            .args([cmd, "--asn-db"])
            .arg(root().join("samples/asn"))
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run("replay");
    let alerts = String::from_utf8(out.stdout).unwrap();
    assert_eq!(alerts.lines().count(), 1, "{alerts}");
    assert!(alerts.contains("VM-TIMED") && !alerts.contains("VM-NO-TIME"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 timestamp fallbacks"), "{stderr}");
    // `normalize` still shows it.
    let docs = String::from_utf8(run("normalize").stdout).unwrap();
    assert_eq!(docs.lines().count(), 2);
}
