//! The failure cases of ../shared/cases/README.md (BR-01, 02, 04, 06, 07,
//! 08, 09a, 10) as tests of the whole library pipeline: bodies → decode →
//! normalize → enrich (a CSV ASN database written by the test) → the
//! shipped seed rule → RocksDB state on disk. Inputs are written here
//! (documentation IPs and ASNs, zero GUIDs).

use std::path::Path;

use firstseen::decode::DecodeLimits;
use firstseen::engine::{Candidate, Detector};
use firstseen::enrich::{AsnDb, AsnSource};
use firstseen::pipeline::{process_body, BodyContext, PipelineStats};
use firstseen::rules::allowlist::Allowlist;
use firstseen::rules::rule_file::load_rule_file;
use firstseen::store::{BatchWrite, Store};
use serde_json::{json, Value};

/// T0 = 2025-03-01T10:00:00Z.
const T0: i64 = 1_740_823_200_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    asn: AsnDb,
    detector: Detector,
    stats: PipelineStats,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("asn.csv");
        firstseen::enrich::testing::write_cases_csv(&csv).unwrap();
        let asn = AsnDb::load(&AsnSource::parse(csv.to_str().unwrap())).unwrap();
        let rule = load_rule_file(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/rules/azure_vm_extension_crud_unusual_source_asn.toml"),
        )
        .unwrap();
        let detector = Detector::new(vec![rule], Allowlist::default());
        let store = Store::open(&dir.path().join("state")).unwrap();
        Harness {
            _dir: dir,
            store,
            asn,
            detector,
            stats: PipelineStats::default(),
        }
    }

    /// Processes bodies as one batch; returns the alert documents.
    fn batch(&mut self, bodies: &[String]) -> Vec<Value> {
        let mut candidates: Vec<Candidate> = Vec::new();
        for body in bodies {
            let errs = process_body(
                body.as_bytes(),
                &BodyContext::default(),
                &DecodeLimits::default(),
                Some(&self.asn),
                &mut candidates,
                &mut self.stats,
            );
            drop(errs);
        }
        let mut w = BatchWrite::default();
        let report = self
            .detector
            .evaluate(&self.store, &mut w, &candidates, 0, false)
            .unwrap();
        self.store.commit(w).unwrap();
        report
            .alerts
            .iter()
            .map(|a| serde_json::from_str(&a.body).unwrap())
            .collect()
    }

    fn one(&mut self, body: String) -> Vec<Value> {
        self.batch(&[body])
    }
}

fn iso(ms: i64) -> String {
    firstseen::normalize::format_timestamp(ms)
}

/// The record template `R(...)` of the cases file, with overrides
/// (`Value::Null` removes a field).
fn record(overrides: Value) -> Value {
    let mut r = json!({
        "time": "2025-03-01T10:00:00.1234567Z",
        "resourceId": "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG-APP/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM-WEB-01/EXTENSIONS/CUSTOMSCRIPTEXTENSION",
        "operationName": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE",
        "category": "Administrative",
        "resultType": "Success",
        "resultSignature": "Succeeded.Created",
        "callerIpAddress": "203.0.113.7",
        "correlationId": "11111111-1111-1111-1111-111111111111",
        "level": "Information",
        "identity": {"claims": {"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": "alice@example.com"}},
        "properties": {"statusCode": "Created"}
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            r.as_object_mut().unwrap().remove(k);
        } else {
            r[k] = v.clone();
        }
    }
    r
}

fn vm(name: &str) -> String {
    format!("/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG-APP/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/{name}/EXTENSIONS/CUSTOMSCRIPTEXTENSION")
}

fn body(records: &[Value]) -> String {
    json!({ "records": records }).to_string()
}

fn r(overrides: Value) -> String {
    body(&[record(overrides)])
}

fn asn_label(h: &Harness, label: &str) -> u64 {
    h.stats.asn_lookups.get(label).copied().unwrap_or(0)
}

#[test]
fn baseline_record_normalizes_as_the_cases_file_says_and_alerts_once() {
    let mut h = Harness::new();
    let alerts = h.one(r(json!({})));
    assert_eq!(alerts.len(), 1);
    let ev = &alerts[0]["event"];
    assert_eq!(ev["@timestamp"], "2025-03-01T10:00:00.123Z");
    assert_eq!(
        ev["event"]["action"],
        "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE"
    );
    assert_eq!(ev["event"]["outcome"], "success");
    assert_eq!(ev["source"]["ip"], "203.0.113.7");
    assert_eq!(ev["source"]["as"]["number"], 64500);
    assert_eq!(
        ev["azure"]["subscription_id"],
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(ev["azure"]["resource"]["group"], "RG-APP");
    assert_eq!(
        ev["azure"]["resource"]["name"],
        "VM-WEB-01/EXTENSIONS/CUSTOMSCRIPTEXTENSION"
    );
    assert_eq!(
        alerts[0]["new_terms"]["values"],
        json!(["VM-WEB-01/EXTENSIONS/CUSTOMSCRIPTEXTENSION", 64500])
    );
    // The same record again is not new.
    assert!(h.one(r(json!({}))).is_empty());
}

/// BR-01: IPv6, CIDR and ip:port callers.
#[test]
fn br_01_ipv6_cidr_and_ip_port_callers() {
    let mut h = Harness::new();
    let a = h.one(r(
        json!({"callerIpAddress": "2001:db8:85a3::8a2e:370:7334", "resourceId": vm("VM-V6")}),
    ));
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0]["event"]["source"]["ip"],
        "2001:db8:85a3::8a2e:370:7334"
    );
    assert_eq!(a[0]["event"]["source"]["as"]["number"], 64502);

    let a = h.one(r(
        json!({"callerIpAddress": "127.0.0.0/8", "resourceId": vm("VM-CIDR")}),
    ));
    assert!(a.is_empty(), "a CIDR caller has no ASN, so no alert");
    assert_eq!(asn_label(&h, "invalid_ip"), 1);
    assert_eq!(h.stats.records, 2, "the record was not dropped");

    // Deliberate deviation 3: `a.b.c.d:port` yields source.ip (documented).
    let a = h.one(r(
        json!({"callerIpAddress": "203.0.113.7:50123", "resourceId": vm("VM-PORT")}),
    ));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["event"]["source"]["ip"], "203.0.113.7");
    assert_eq!(a[0]["event"]["source"]["port"], 50123);
    assert_eq!(a[0]["event"]["source"]["address"], "203.0.113.7:50123");
    // A bare IPv6 is never split on its colons.
    let a = h.one(r(
        json!({"callerIpAddress": "2001:db8:85a3::1", "resourceId": vm("VM-V6B")}),
    ));
    assert_eq!(a[0]["event"]["source"]["ip"], "2001:db8:85a3::1");
}

/// BR-02: identity/properties as JSON strings, durationMs as strings.
#[test]
fn br_02_type_drift_keeps_every_record() {
    let mut h = Harness::new();
    let first = record(json!({
        "identity": "{\"claims\":{\"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn\":\"alice@example.com\"}}",
        "properties": "{\"statusCode\":\"Created\"}",
        "durationMs": "0"
    }));
    let second = record(
        json!({"resourceId": vm("VM-WEB-02"), "identity": "Alice Example", "durationMs": "14.2187"}),
    );
    let alerts = h.batch(&[body(&[first, second])]);
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["event"]["event"]["duration"], 0);
    assert_eq!(
        alerts[0]["event"]["azure"]["activitylogs"]["properties"]["status_code"],
        "Created"
    );
    assert_eq!(alerts[1]["event"]["event"]["duration"], 14_218_700);
    assert_eq!(
        alerts[1]["event"]["azure"]["activitylogs"]["identity_name"],
        "Alice Example"
    );
    assert_eq!(h.stats.decode_error_total(), 0);
}

/// BR-04: Start / Accept / SUCCESS / Succeeded / properties.result.
#[test]
fn br_04_result_type_vocabulary() {
    let mut h = Harness::new();
    let mut alerts = Vec::new();
    alerts.extend(h.one(r(
        json!({"resultType": "Start", "resultSignature": "Started."}),
    )));
    alerts.extend(h.one(r(json!({"resultType": "Accept"}))));
    assert!(alerts.is_empty(), "Start/Accept have no outcome");
    alerts.extend(h.one(r(json!({"resultType": "SUCCESS"}))));
    assert_eq!(alerts.len(), 1, "SUCCESS lower-cases to success");
    assert_eq!(alerts[0]["event"]["event"]["outcome"], "success");
    alerts.extend(h.one(r(json!({"resultType": "Succeeded", "resultSignature": Value::Null, "resourceId": vm("VM-WEB-03")}))));
    assert_eq!(
        alerts.len(),
        1,
        "Succeeded gives no outcome (Elastic parity)"
    );
    assert_eq!(h.stats.outcome_unmapped.get("succeeded"), Some(&1));
    assert_eq!(h.stats.outcome_unmapped.get("start"), Some(&1));
    assert_eq!(h.stats.outcome_unmapped.get("accept"), Some(&1));
    alerts.extend(h.one(r(json!({"resultType": Value::Null, "properties": {"result": "success"}, "resourceId": vm("VM-WEB-04")}))));
    assert_eq!(alerts.len(), 2);
}

/// BR-06: malformed body among good ones of every shape.
#[test]
fn br_06_bad_body_is_counted_and_the_others_alert() {
    let mut h = Harness::new();
    let bad = r#"{"records":[{"time":"2025-03-01T10:00:00Z","properties":[ 227 B blob data ]}]}"#
        .to_string();
    let bare_array = json!([record(json!({"resourceId": vm("VM-WEB-05")}))]).to_string();
    let single = record(json!({"resourceId": vm("VM-WEB-06")})).to_string();
    let empty_key = r#"{"records":[RECORD]}"#.replace(
        "RECORD",
        &record(json!({"resourceId": vm("VM-WEB-07")}))
            .to_string()
            .replace(
                r#""properties":{"statusCode":"Created"}"#,
                r#""properties":{"":"","statusCode":"Created"}"#,
            ),
    );
    assert!(empty_key.contains(r#""":"""#));
    let alerts = h.batch(&[bad, bare_array, single, empty_key]);
    assert_eq!(alerts.len(), 3);
    assert_eq!(h.stats.decode_errors.get("invalid_json"), Some(&1));
    let props = &alerts[2]["event"]["azure"]["activitylogs"]["properties"];
    assert_eq!(props, &json!({"status_code": "Created"}));
}

/// BR-07: missing new-terms field; Microsoft ASN bounds.
#[test]
fn br_07_missing_fields_and_microsoft_asn_bounds() {
    let mut h = Harness::new();
    let cases = [
        (json!("10.20.30.40"), "VM-A", 0),
        (Value::Null, "VM-B", 0),
        (json!("192.0.2.10"), "VM-C", 0),    // 8068
        (json!("192.0.2.200"), "VM-D", 0),   // 8075
        (json!("2001:db8:1::5"), "VM-E", 1), // 8076
        (json!("2001:db8:2::5"), "VM-F", 1), // 8067
    ];
    let mut total = 0;
    for (caller, name, want) in cases {
        let a = h.one(r(
            json!({"callerIpAddress": caller, "resourceId": vm(name)}),
        ));
        assert_eq!(a.len(), want, "{name}");
        total += a.len();
    }
    assert_eq!(total, 2);
    assert_eq!(asn_label(&h, "miss"), 1);
    assert_eq!(asn_label(&h, "no_ip"), 1);
    // No state for the excluded or term-less records: seeing them again
    // from a non-excluded network alerts (nothing was learned).
    assert_eq!(h.store.estimated_terms(), 2);
}

/// BR-08: sliding window, query-filtered history, late arrival.
#[test]
fn br_08_history_window_semantics() {
    let mut h = Harness::new();
    let at = |t: i64, extra: Value| {
        let mut o = extra;
        o["time"] = json!(iso(t));
        r(o)
    };
    assert!(h.one(at(T0, json!({"resultType": "Failure"}))).is_empty());
    assert_eq!(h.one(at(T0 + HOUR, json!({}))).len(), 1, "alert #1");
    assert!(h.one(at(T0 + 5 * DAY, json!({}))).is_empty());
    assert!(
        h.one(at(T0 + 11 * DAY, json!({}))).is_empty(),
        "last seen 6d ago"
    );
    assert_eq!(
        h.one(at(T0 + 19 * DAY, json!({}))).len(),
        1,
        "alert #2: 8d > W"
    );
    assert!(
        h.one(at(T0 + 2 * DAY, json!({}))).is_empty(),
        "late arrival"
    );
    // Last-seen stays at the max: exactly W after T0+19d is still seen,
    // one ms later is new.
    assert!(
        h.one(at(T0 + 26 * DAY, json!({}))).is_empty(),
        "exactly W counts as seen"
    );
    assert_eq!(h.one(at(T0 + 33 * DAY + 1, json!({}))).len(), 1);
}

/// BR-09 (a): one batch with three records of one term → one alert, with a
/// deterministic id; the same batch redelivered after a restart is not new.
#[test]
fn br_09a_one_alert_per_term_per_batch_and_stable_ids() {
    let mut h = Harness::new();
    let b = body(&[
        record(json!({"time": iso(T0)})),
        record(json!({"time": iso(T0), "correlationId": "22222222-2222-2222-2222-222222222222"})),
        record(json!({"time": iso(T0 + 1000)})),
    ]);
    let alerts = h.batch(std::slice::from_ref(&b));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0]["event"]["azure"]["correlation_id"],
        "11111111-1111-1111-1111-111111111111"
    );
    // A fresh state replaying the same batch produces the same id.
    let mut fresh = Harness::new();
    let again = fresh.batch(&[b]);
    assert_eq!(again[0]["id"], alerts[0]["id"]);
    assert_eq!(alerts[0]["id"].as_str().unwrap().len(), 64);
}

/// BR-10: with W = 2 s, an entry older than W alerts again whether or not
/// compaction ran (decisions use the stored time, never key presence).
#[test]
fn br_10_expired_terms_alert_again_with_or_without_compaction() {
    for compact in [false, true] {
        let mut h = Harness::new();
        let rule_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/rules/azure_vm_extension_crud_unusual_source_asn.toml");
        let text = std::fs::read_to_string(&rule_path)
            .unwrap()
            .replace("now-7d", "now-2s")
            .replace("now-9m", "now-1s");
        let rule = firstseen::rules::rule_file::parse_rule(&text, &rule_path).unwrap();
        assert_eq!(rule.history_window, std::time::Duration::from_secs(2));
        h.detector = Detector::new(vec![rule], Allowlist::default());
        assert_eq!(h.one(r(json!({"time": iso(T0)}))).len(), 1);
        if compact {
            h.store.compact_terms();
        }
        assert!(
            h.one(r(json!({"time": iso(T0 + 2000)}))).is_empty(),
            "exactly W ago"
        );
        assert_eq!(
            h.one(r(json!({"time": iso(T0 + 5000)}))).len(),
            1,
            "compact={compact}"
        );
    }
}

/// Deviation 2: a resource name whose case changes is the same term.
#[test]
fn resource_name_case_changes_do_not_realert() {
    let mut h = Harness::new();
    assert_eq!(h.one(r(json!({}))).len(), 1);
    let lower = r(
        json!({"resourceId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/vm-web-01/extensions/CustomScriptExtension", "operationName": "Microsoft.Compute/virtualMachines/extensions/write"}),
    );
    assert!(h.one(lower).is_empty());
}

/// State survives reopening the database.
#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut h = Harness::new();
    h.store = Store::open(&state).unwrap();
    assert_eq!(h.one(r(json!({}))).len(), 1);
    drop(h);
    let mut h = Harness::new();
    h.store = Store::open(&state).unwrap();
    assert!(h.one(r(json!({}))).is_empty());
}
