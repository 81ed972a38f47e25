//! The monitoring artefacts in `deploy/monitoring/` against the metrics the
//! binary really exports: every `firstseen_*` name in the Grafana dashboard,
//! the alerting rules and their unit tests must exist (a renamed metric would
//! otherwise leave an alert that can never fire), and the rules pass
//! `promtool check rules` / `promtool test rules` when promtool is installed
//! (required under CI, where `.ci/run` installs the Debian package).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use firstseen::health::Health;
use firstseen::metrics::{MetricLabels, Metrics};
use prometheus::proto::MetricType;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

/// Every series name a scrape can contain (histograms expand to their
/// `_bucket`, `_sum` and `_count` series).
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new(&MetricLabels {
        partitions: vec!["0".into()],
        rules: vec!["r".into()],
        sinks: vec!["s".into()],
    })
    .unwrap();
    let h = Health::new();
    h.register("rocksdb", "opening");
    m.record_health(&h.report());
    let mut names = BTreeSet::new();
    for f in m.registry().gather() {
        let name = f.name().to_string();
        if f.get_field_type() == MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// `firstseen_…` identifiers in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("firstseen_") {
        let start = i + pos;
        // Skip matches inside a longer identifier (e.g. `my_firstseen_x`).
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], &mut exprs);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = referenced_names(e);
        assert!(
            !names.is_empty(),
            "expression uses no firstseen metric: {e}"
        );
        for n in names {
            assert!(
                exported.contains(&n),
                "dashboard uses unknown metric {n} in {e}"
            );
            used.insert(n);
        }
    }
    // The dashboard is the operator's overview: each family appears on it.
    for f in &exported {
        let base = f
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        let shown = used.iter().any(|u| u.starts_with(base));
        assert!(shown, "metric family {base} is on no dashboard panel");
    }
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_names();
    for file in [
        "firstseen-alerts.yaml",
        "firstseen-alerts.test.yaml",
        "firstseen-asn-stale.test.yaml",
    ] {
        let text = std::fs::read_to_string(monitoring(file)).unwrap();
        let names = referenced_names(&text);
        assert!(!names.is_empty(), "{file} references no metric");
        for n in names {
            assert!(exported.contains(&n), "{file} uses unknown metric {n}");
        }
    }
}

#[test]
fn referenced_names_finds_identifiers() {
    let got =
        referenced_names("rate(firstseen_a_total[5m]) / my_firstseen_b + firstseen_c{x=\"1\"}");
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["firstseen_a_total", "firstseen_c"]
    );
}

/// Runs promtool with `args` in deploy/monitoring; skips locally when it is
/// not installed, fails under CI.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring(""))
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP promtool {args:?}: {e}; install the Debian package `prometheus`");
            return;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_check_and_test_rules() {
    promtool(&["check", "rules", "firstseen-alerts.yaml"]);
    promtool(&[
        "test",
        "rules",
        "firstseen-alerts.test.yaml",
        "firstseen-asn-stale.test.yaml",
    ]);
}
