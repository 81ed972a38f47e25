//! Every alert firstseen produces conforms to the published JSON Schema
//! (schema/alert.schema.json), which webhook consumers code against; and the
//! schema is strict enough to reject a broken alert.

use std::path::PathBuf;

use firstseen::config::Config;
use firstseen::replay::{replay, ReplayOptions};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schema/alert.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::new(&schema).expect("the schema is valid draft 2020-12")
}

fn sample_alerts() -> Vec<Value> {
    let mut config = Config::default();
    config.rules.path = root().join("config/rules");
    config.asn.database = Some(root().join("samples/asn").display().to_string());
    let opts = ReplayOptions {
        config,
        state_dir: None,
        learn: false,
        paths: vec![root().join("samples/activity-logs")],
        progress: false,
    };
    let mut out = Vec::new();
    replay(&opts, &mut out, &mut Vec::new()).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_sample_alert_conforms_to_the_schema() {
    let v = validator();
    let alerts = sample_alerts();
    assert_eq!(alerts.len(), 15);
    for alert in &alerts {
        let errors: Vec<String> = v.iter_errors(alert).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} : {errors:?}", alert["id"]);
    }
}

#[test]
fn the_schema_rejects_broken_alerts() {
    let v = validator();
    let good = sample_alerts().remove(0);
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "missing id",
            Box::new(|a| drop(a.as_object_mut().unwrap().remove("id"))),
        ),
        ("short id", Box::new(|a| a["id"] = "abc".into())),
        (
            "bad severity",
            Box::new(|a| a["rule"]["severity"] = "urgent".into()),
        ),
        (
            "risk score out of range",
            Box::new(|a| a["rule"]["risk_score"] = 101.into()),
        ),
        (
            "four new-terms fields",
            Box::new(|a| {
                a["new_terms"]["fields"] = serde_json::json!(["a", "b", "c", "d"]);
            }),
        ),
        (
            "unknown top-level key",
            Box::new(|a| a["extra"] = true.into()),
        ),
        (
            "timestamp without millis",
            Box::new(|a| a["rule_time"] = "2025-03-01T09:12:00Z".into()),
        ),
        (
            "wrong dataset",
            Box::new(|a| a["event"]["data_stream"]["dataset"] = "x".into()),
        ),
        (
            "unknown source key",
            Box::new(|a| a["source"]["host"] = "x".into()),
        ),
    ];
    assert!(v.is_valid(&good));
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !v.is_valid(&bad),
            "the schema accepted an alert with {what}"
        );
    }
}
