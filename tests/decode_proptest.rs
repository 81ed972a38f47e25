//! Property tests over decode → normalize → ECS rendering: whatever a body
//! holds, the pipeline returns records or counted errors, never panics, and
//! respects its limits.
//!
//! CI runs the default case count (a few seconds). For a longer soak (about
//! 60 s on a 2-core machine) run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test --release --test decode_proptest
//! ```

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use firstseen::decode::{decode_body, DecodeLimits};
use firstseen::normalize::{normalize, to_ecs_json, RecordContext};

/// Any JSON value, nested a few levels, with keys drawn from the fields the
/// normalizer reads (so type confusion on real keys is exercised) and
/// others.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("2026-12-03T10:11:12.1234567Z"),
            Just("12/3/2026 10:11:12 AM"),
            Just("2001:db8::1"),
            Just("10.0.0.1:443"),
            Just("Success"),
            Just("Start"),
            Just("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE"),
            Just("/SUBSCRIPTIONS/X/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM/EXTENSIONS/CS"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("time".to_string()),
        Just("operationName".to_string()),
        Just("resultType".to_string()),
        Just("resultSignature".to_string()),
        Just("callerIpAddress".to_string()),
        Just("resourceId".to_string()),
        Just("identity".to_string()),
        Just("properties".to_string()),
        Just("durationMs".to_string()),
        Just("level".to_string()),
        Just("category".to_string()),
        Just("claims".to_string()),
        Just("".to_string()),
        "[a-zA-Z_]{1,10}",
    ]
}

fn record() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json_value()), 0..12)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

fn body_shape() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(record(), 0..5)
            .prop_map(|r| serde_json::to_vec(&json!({ "records": r })).unwrap()),
        prop::collection::vec(record(), 0..5).prop_map(|r| serde_json::to_vec(&r).unwrap()),
        record().prop_map(|r| serde_json::to_vec(&r).unwrap()),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

fn run(body: &[u8], limits: &DecodeLimits) -> (usize, usize) {
    let decoded = decode_body(body, limits);
    let (records, errors) = (decoded.records.len(), decoded.errors.len());
    assert!(records <= limits.max_records);
    for r in decoded.records {
        let (ev, _) = normalize(
            r,
            RecordContext {
                enqueued_time_ms: Some(1_764_000_000_000),
            },
        );
        let doc = to_ecs_json(&ev);
        assert_eq!(doc["data_stream"]["dataset"], "azure.activitylogs");
        serde_json::to_vec(&doc).expect("ECS documents serialize");
    }
    (records, errors)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        run(&body, &DecodeLimits::default());
    }

    #[test]
    fn json_shaped_bodies_decode_or_error(body in body_shape()) {
        let (records, errors) = run(&body, &DecodeLimits::default());
        // Valid JSON is never lost silently: it yields records, errors, or
        // is an empty container / `{}` (counted by the decoder).
        let v: Value = serde_json::from_slice(&body).unwrap();
        let empty = match &v {
            Value::Object(o) => o.is_empty() || o.get("records").and_then(Value::as_array).is_some_and(|a| a.iter().all(|r| r.as_object().is_some_and(|o| o.is_empty()))),
            Value::Array(a) => a.iter().all(|r| r.as_object().is_some_and(|o| o.is_empty())),
            _ => false,
        };
        prop_assert!(records + errors > 0 || empty, "lost: {}", String::from_utf8_lossy(&body));
    }

    #[test]
    fn truncated_json_is_an_error_not_a_panic(body in body_shape(), cut in 0usize..64) {
        let cut = body.len().saturating_sub(cut + 1);
        run(&body[..cut], &DecodeLimits::default());
    }

    #[test]
    fn limits_hold_under_tight_settings(body in body_shape()) {
        let limits = DecodeLimits { max_body_bytes: 256, max_depth: 3, max_records: 2 };
        run(&body, &limits);
    }
}

#[test]
fn deep_nesting_is_bounded() {
    // 100k nested arrays would overflow a recursive parser's stack.
    let mut body = "[".repeat(100_000);
    body.push_str(&"]".repeat(100_000));
    let limits = DecodeLimits {
        max_body_bytes: 1 << 20,
        ..DecodeLimits::default()
    };
    let decoded = decode_body(body.as_bytes(), &limits);
    assert!(decoded.records.is_empty());
    assert_eq!(decoded.errors.len(), 1);
    assert_eq!(decoded.errors[0].kind.code(), "too_deep");
}
