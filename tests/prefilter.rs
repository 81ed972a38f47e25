//! The raw-byte prefilter changes nothing but speed:
//! - it is sound: a record it rejects matches no rule (property test over
//!   adversarial records: case variants, `\/` and `\u` escapes, numbers
//!   where strings are expected);
//! - `summarize_record` counts a rejected record exactly as `normalize`
//!   would (property test, including duplicate and escaped keys and
//!   `properties` given as a JSON string);
//! - on the bundled samples and every fixture, `process_body_prefiltered`
//!   gives the counters of `process_body` and the detector gives the same
//!   alerts.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use firstseen::decode::{decode_envelope, decode_record, DecodeLimits, RecordOutcome};
use firstseen::engine::{Candidate, Detector};
use firstseen::enrich::testing::write_cases_csv;
use firstseen::enrich::{AsnDb, AsnSource};
use firstseen::normalize::{normalize, summarize_record, RecordContext};
use firstseen::pipeline::{process_body, process_body_prefiltered, BodyContext, PipelineStats};
use firstseen::prefilter::{Prefilter, Scratch};
use firstseen::rules::allowlist::Allowlist;
use firstseen::rules::rule_file::{load_rules, Rule};
use firstseen::source::file::{bodies, expand_paths, read_file};
use firstseen::store::{BatchWrite, Store};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed rule and Elastic's Azure rules.
fn all_rules() -> Vec<Rule> {
    let mut rules = load_rules(&root().join("config/rules")).unwrap();
    rules.extend(load_rules(&root().join("tests/fixtures/elastic-rules")).unwrap());
    rules
}

fn cases_db() -> AsnDb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.csv");
    write_cases_csv(&path).unwrap();
    AsnDb::load(&AsnSource::parse(&path.display().to_string())).unwrap()
}

/// Rules, the test ASN table, each rule's own prefilter and the combined
/// one, built once for all property-test cases.
struct Fixture {
    rules: Vec<Rule>,
    db: AsnDb,
    own: Vec<Prefilter>,
    combined: Prefilter,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let rules = all_rules();
        let own = rules
            .iter()
            .map(|r| Prefilter::new(std::iter::once(&r.query)))
            .collect();
        let combined = Prefilter::new(rules.iter().map(|r| &r.query));
        Fixture {
            rules,
            db: cases_db(),
            own,
            combined,
        }
    })
}

// ---------------------------------------------------------------------------
// Records built from raw JSON pieces (so duplicates and escapes are
// possible, which serde_json::Value could not express).

fn ascii_case_variant(s: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), s.len()).prop_map(move |flips| {
        s.chars()
            .zip(flips)
            .map(|(c, f)| if f { c.to_ascii_lowercase() } else { c })
            .collect()
    })
}

/// A JSON string literal for `s`, with some characters escaped (`\/` for
/// slashes, `\uXXXX` for letters) as real serializers sometimes do.
fn json_string(s: String) -> impl Strategy<Value = String> {
    // One string in five uses escapes, each character then with a
    // chance of 1 in 10.
    (
        prop::bool::weighted(0.2),
        prop::collection::vec(0u8..10, s.chars().count()),
    )
        .prop_map(move |(escapes, choices)| {
            let mut out = String::from("\"");
            for (c, k) in s.chars().zip(choices) {
                let k = if escapes { k } else { u8::MAX };
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '/' if k == 0 => out.push_str("\\/"),
                    c if k == 1 && c.is_ascii_alphanumeric() => {
                        out.push_str(&format!("\\u{:04X}", c as u32));
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        })
}

const ACTIONS: &[&str] = &[
    "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE",
    "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/DELETE",
    "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/READ",
    "MICROSOFT.STORAGE/STORAGEACCOUNTS/WRITE",
    "MICROSOFT.STORAGE/STORAGEACCOUNTS/LISTKEYS/ACTION",
    "MICROSOFT.SERIALCONSOLE/SERIALPORTS/CONNECT/ACTION",
    "MICROSOFT.RESOURCES/DEPLOYMENTS/WRITE",
];

const RESOURCE_IDS: &[&str] = &[
    "/SUBSCRIPTIONS/00000000-0000-0000-0000-00000000000A/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM1/EXTENSIONS/CUSTOMSCRIPT",
    "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/SS/extensions/x",
    "/SUBSCRIPTIONS/00000000-0000-0000-0000-00000000000A/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.STORAGE/STORAGEACCOUNTS/ST1",
    "/subscriptions/00000000-0000-0000-0000-00000000000a",
];

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(ACTIONS).prop_flat_map(ascii_case_variant),
        prop::sample::select(RESOURCE_IDS).prop_flat_map(ascii_case_variant),
        prop::sample::select(
            &[
                "Success",
                "success",
                "SUCCESS",
                "Failure",
                "Start",
                "Accept",
                "Succeeded",
                "Failed",
                "started",
                "unknown",
                "",
                " ",
                "<null>",
                "&lt;null&gt;",
                "2025-03-01T10:00:00.1234567Z",
                "3/1/2025 10:00:00 AM",
                "not a time",
                "203.0.113.7",
                "198.51.100.9:443",
                "[2001:db8:85a3::1]:80",
                "192.0.2.200",
                "10.1.2.3",
                "2001:db8:1::5",
                "jumpbox.corp",
                "127.0.0.0/8",
                "User",
                "Owner",
            ][..]
        )
        .prop_map(str::to_string),
        "[ -~]{0,12}",
    ]
}

/// A member value as raw JSON text.
fn value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        16 => text_value().prop_flat_map(json_string),
        2 => Just("null".to_string()),
        2 => any::<bool>().prop_map(|b| b.to_string()),
        2 => any::<i32>().prop_map(|i| i.to_string()),
        1 => prop::sample::select(&[
            "1.5e3", "1e400", "-1e999", "0.000001", "18446744073709551616",
            "\"\\ud800\"", "\"x\\udc00y\"", "\"\\ud83d\\ude00\"",
        ][..]).prop_map(str::to_string),
    ];
    scalar.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let members: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A member name as raw JSON text, sometimes escaped.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(&[
            "time", "resultType", "callerIpAddress", "properties", "result", "operationName",
            "resourceId", "identity", "category", "level", "responseBody", "statusMessage", "",
            "eventCategory",
        ][..])
        .prop_map(str::to_string)
        .prop_flat_map(json_string),
        1 => Just("\"ti\\u006De\"".to_string()),
        1 => Just("\"resultTyp\\u0065\"".to_string()),
    ]
}

/// `properties` as an object or as a JSON string holding one.
fn properties() -> impl Strategy<Value = String> {
    prop::collection::vec((key(), value()), 0..4).prop_flat_map(|kv| {
        let members: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let object = format!("{{{}}}", members.join(","));
        prop_oneof![
            Just(object.clone()),
            Just(serde_json::to_string(&object).unwrap()),
        ]
    })
}

fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| format!("{k}:{v}")),
        1 => properties().prop_map(|p| format!("\"properties\":{p}")),
        1 => text_value().prop_flat_map(json_string).prop_map(|v| format!("\"operationName\":{v}")),
        1 => text_value().prop_flat_map(json_string).prop_map(|v| format!("\"resourceId\":{v}")),
        1 => text_value().prop_flat_map(json_string).prop_map(|v| format!("\"callerIpAddress\":{v}")),
        1 => text_value().prop_flat_map(json_string).prop_map(|v| format!("\"resultType\":{v}")),
    ]
}

fn record() -> impl Strategy<Value = String> {
    // Records that carry everything a rule reads, so matches are common.
    let likely = (
        prop::sample::select(ACTIONS).prop_flat_map(ascii_case_variant).prop_flat_map(json_string),
        prop::sample::select(&["Success", "success", "SUCCESS", "Start"][..])
            .prop_map(str::to_string)
            .prop_flat_map(json_string),
        prop::sample::select(RESOURCE_IDS).prop_flat_map(ascii_case_variant).prop_flat_map(json_string),
        prop::sample::select(&["203.0.113.7", "198.51.100.9:443", "2001:db8:85a3::1", "192.0.2.1"][..])
            .prop_map(str::to_string)
            .prop_flat_map(json_string),
        prop::collection::vec(member(), 0..3),
    )
        .prop_map(|(op, rt, rid, ip, extra)| {
            let mut m = vec![
                format!("\"operationName\":{op}"),
                format!("\"resultType\":{rt}"),
                format!("\"resourceId\":{rid}"),
                format!("\"callerIpAddress\":{ip}"),
                r#""identity":{"authorization":{"evidence":{"principalType":"User","role":"Owner","principalId":"x"}}}"#.to_string(),
            ];
            m.extend(extra);
            format!("{{{}}}", m.join(","))
        });
    prop_oneof![
        5 => prop::collection::vec(member(), 0..9).prop_map(|m| format!("{{{}}}", m.join(","))),
        4 => likely,
        1 => value(),
    ]
}

fn full_path(
    text: &str,
) -> Option<(
    bool,
    firstseen::normalize::NormalizeNotes,
    Option<std::net::IpAddr>,
    bool,
)> {
    let raw: &serde_json::value::RawValue = serde_json::from_str(text).unwrap();
    match decode_record(0, raw) {
        RecordOutcome::Record(r) => {
            let (ev, notes) = normalize(r, RecordContext::default());
            Some((false, notes, ev.source_ip, ev.source_address.is_some()))
        }
        RecordOutcome::Empty => Some((true, Default::default(), None, false)),
        RecordOutcome::Error(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn summary_counts_what_normalize_notes(text in record()) {
        // What the envelope parse accepts reaches the record stage (it
        // skips values unvalidated: lone surrogates, out-of-range numbers).
        prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok());
        let full = full_path(&text);
        let summary = summarize_record(&text);
        match (full, summary) {
            (Some((empty, notes, ip, address)), Some(s)) => {
                prop_assert_eq!(s.empty, empty, "{}", text);
                if !empty {
                    prop_assert_eq!(s.notes, notes, "{}", text);
                    prop_assert_eq!(s.source_ip, ip, "{}", text);
                    prop_assert_eq!(s.source_address, address, "{}", text);
                }
            }
            // Not an object: the pipeline falls back to the full path.
            (None, None) => {}
            (full, summary) => prop_assert!(false, "{text}: full {full:?} vs summary {summary:?}"),
        }
    }

    #[test]
    fn rejected_records_match_no_rule(text in record()) {
        prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok());
        let f = fixture();
        let raw: &serde_json::value::RawValue = serde_json::from_str(&text).unwrap();
        if let RecordOutcome::Record(r) = decode_record(0, raw) {
            let (mut ev, _) = normalize(r, RecordContext::default());
            f.db.enrich(&mut ev);
            let mut scratch = Scratch::default();
            for (rule, own) in f.rules.iter().zip(&f.own) {
                if rule.query.matches(&ev) {
                    prop_assert!(own.may_match(&text, &mut scratch), "rule {} matches {}", rule.name, text);
                    prop_assert!(f.combined.may_match(&text, &mut scratch), "{}", text);
                }
            }
        }
    }
}

/// A body of generated records, with random JSON whitespace, sometimes
/// broken (a cut, a stray byte) so the fallback paths run too.
fn body() -> impl Strategy<Value = String> {
    let ws = prop::sample::select(&["", " ", "\n", "\t ", "\r\n"][..]);
    (
        prop::collection::vec((record(), ws.clone()), 0..6),
        ws,
        0u8..10,
        any::<usize>(),
    )
        .prop_map(|(records, ws, damage, at)| {
            let inner: Vec<String> = records
                .into_iter()
                .map(|(r, w)| format!("{w}{r}{w}"))
                .collect();
            let mut text = format!("{{{ws}\"records\"{ws}:{ws}[{}]{ws}}}", inner.join(","));
            match damage {
                0 => text.truncate(at % (text.len() + 1)),
                1 => {
                    let at = at % (text.len() + 1);
                    if text.is_char_boundary(at) {
                        text.insert(at, ',');
                    }
                }
                2 => text = format!("{ws}[{}]", inner.join(",")),
                _ => {}
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// The fast body scanner splits exactly as serde_json and summarizes
    /// exactly as `summarize_record`.
    #[test]
    fn scanner_agrees_with_serde(text in body()) {
        let limits = DecodeLimits::default();
        if let Some(scanned) = firstseen::scan::scan_envelope(&text, limits.max_depth, limits.max_records) {
            let raw = decode_envelope(text.as_bytes(), &limits);
            prop_assert!(raw.is_ok(), "scanner accepted what serde rejects: {}", text);
            let raw = raw.unwrap();
            prop_assert_eq!(raw.len(), scanned.len());
            for (r, s) in raw.iter().zip(&scanned) {
                prop_assert_eq!(r.get(), s.text);
                if let Some(summary) = s.summary() {
                    prop_assert!(!s.needs_full);
                    prop_assert_eq!(Some(summary), summarize_record(s.text), "{}", s.text);
                }
            }
        }
    }

    /// End to end on one body: identical counters and errors, and every
    /// candidate some rule matches is still there.
    #[test]
    fn prefiltered_bodies_lose_no_match(text in body()) {
        let f = fixture();
        let detector = Detector::new(f.rules.clone(), Allowlist::new(&[]).unwrap());
        let limits = DecodeLimits::default();
        let ctx = BodyContext::default();
        let (mut plain, mut filtered) = (Vec::new(), Vec::new());
        let (mut s1, mut s2) = (PipelineStats::default(), PipelineStats::default());
        let e1 = process_body(text.as_bytes(), &ctx, &limits, Some(&f.db), &mut plain, &mut s1);
        let e2 = process_body_prefiltered(text.as_bytes(), &ctx, &limits, Some(&f.db), detector.prefilter(), &mut filtered, &mut s2);
        prop_assert_eq!(e1, e2);
        prop_assert_eq!(s1, s2);
        let matching = |c: &&Candidate| f.rules.iter().any(|r| r.query.matches(&c.event));
        let want: Vec<&str> = plain.iter().filter(matching).map(|c| &*c.event.original).collect();
        let got: Vec<&str> = filtered.iter().filter(matching).map(|c| &*c.event.original).collect();
        prop_assert_eq!(want, got);
    }
}

/// Empty-name noise: decode strips `"":""` (only where the text has
/// `"":`), and a record of nothing else is empty.
#[test]
fn empty_name_noise_is_counted_as_decode_counts_it() {
    for text in [
        r#"{"":""}"#,
        r#"{"" : ""}"#,
        r#"{"":"","":"x"}"#,
        r#"{"":"x","":""}"#,
        r#"{"":"","":""}"#,
        r#"{"":"","a":1}"#,
        r#"{"":1}"#,
        r#"{}"#,
    ] {
        let full = full_path(text).map(|(empty, ..)| empty);
        let summary = summarize_record(text).map(|s| s.empty);
        assert_eq!(full, summary, "{text}");
        let body = format!(r#"{{"records":[{text}]}}"#);
        let scanned = firstseen::scan::scan_envelope(&body, 64, 10).unwrap();
        assert_eq!(scanned[0].summary().map(|s| s.empty), full, "{text}");
    }
}

/// Records that match each rule are let through, whatever their case.
#[test]
fn matching_records_pass() {
    let rules = all_rules();
    let p = Prefilter::new(rules.iter().map(|r| &r.query));
    assert!(p.is_active(), "needles: {:?}", p.needles());
    let mut scratch = Scratch::default();
    let record = r#"{"operationName":"microsoft.compute/virtualmachines/extensions/write","resultType":"Success","resourceId":"/SUBSCRIPTIONS/X/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM1/EXTENSIONS/CS","callerIpAddress":"203.0.113.7"}"#;
    assert!(p.may_match(record, &mut scratch));
    let other = r#"{"operationName":"MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/WRITE","resultType":"Success","callerIpAddress":"203.0.113.7"}"#;
    assert!(!p.may_match(other, &mut scratch));
}

// ---------------------------------------------------------------------------
// Samples and fixtures end to end.

fn every_body_file() -> Vec<PathBuf> {
    let mut files = expand_paths(&[root().join("samples/activity-logs")]).unwrap();
    files.extend(expand_paths(&[root().join("tests/fixtures")]).unwrap());
    files
}

fn evaluate(detector: &Detector, dir: &Path, candidates: &[Candidate]) -> (Vec<String>, Vec<u64>) {
    let store = Store::open(dir).unwrap();
    let mut write = BatchWrite::default();
    let report = detector
        .evaluate(&store, &mut write, candidates, 1_750_000_000_000, false)
        .unwrap();
    store.commit(write).unwrap();
    (
        report.alerts.iter().map(|a| a.id.clone()).collect(),
        report.matched,
    )
}

#[test]
fn samples_and_fixtures_give_identical_counters_and_alerts() {
    let detector = Detector::new(all_rules(), Allowlist::new(&[]).unwrap());
    assert!(detector.prefilter().is_active());
    let asn = AsnDb::load(&AsnSource::parse(
        &root().join("samples/asn").display().to_string(),
    ))
    .unwrap();
    let limits = DecodeLimits::default();
    let (mut plain, mut filtered) = (Vec::new(), Vec::new());
    let (mut plain_stats, mut filtered_stats) =
        (PipelineStats::default(), PipelineStats::default());
    let mut bodies_seen = 0;
    for file in every_body_file() {
        let content = read_file(&file).unwrap();
        for body in bodies(&file, &content) {
            bodies_seen += 1;
            let ctx = BodyContext::default();
            let e1 = process_body(
                body.bytes,
                &ctx,
                &limits,
                Some(&asn),
                &mut plain,
                &mut plain_stats,
            );
            let e2 = process_body_prefiltered(
                body.bytes,
                &ctx,
                &limits,
                Some(&asn),
                detector.prefilter(),
                &mut filtered,
                &mut filtered_stats,
            );
            assert_eq!(e1, e2, "{}", file.display());
            // The same envelope split either way.
            assert_eq!(
                decode_envelope(body.bytes, &limits).is_ok(),
                e1.iter().all(|e| e.record_index.is_some())
            );
        }
    }
    assert!(bodies_seen > 100);
    assert_eq!(plain_stats, filtered_stats);
    assert!(
        filtered.len() < plain.len() / 2,
        "{} of {} records kept",
        filtered.len(),
        plain.len()
    );
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (alerts_plain, matched_plain) = evaluate(&detector, a.path(), &plain);
    let (alerts_filtered, matched_filtered) = evaluate(&detector, b.path(), &filtered);
    assert!(!alerts_plain.is_empty());
    assert_eq!(alerts_plain, alerts_filtered);
    assert_eq!(matched_plain, matched_filtered);
}
