//! `firstseen alerts`: inspecting the outbox, dead letters and undecodable
//! bodies (also while another process holds the state directory), requeue
//! with a fresh age clock, purge with confirmation.

use std::path::Path;
use std::process::{Command, Output};

use firstseen::store::{BatchWrite, DeadEventRow, DeadLetterRow, OutboxRow, Store};

fn alerts(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firstseen"))
        .arg("alerts")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn row(store: &Store, id: &str, created_at_ms: i64) -> OutboxRow {
    OutboxRow {
        seq: store.next_seq(),
        id: id.into(),
        created_at_ms,
        body: format!("{{\"id\":\"{id}\"}}"),
    }
}

/// Two pending alerts, one dead letter (expired), one undecodable body.
fn populate(store: &Store) {
    let mut w = BatchWrite::default();
    store.put_alert(&mut w, "soar", &row(store, "aaaa1111", 1_000));
    store.put_alert(&mut w, "soar", &row(store, "aaaa2222", 2_000));
    store.put_dead_event(
        &mut w,
        &DeadEventRow {
            source: "eventhubs".into(),
            partition: Some("3".into()),
            sequence_number: Some(200),
            error_kind: "invalid_json".into(),
            detail: "expected value at line 1 column 12".into(),
            body_excerpt: "{\"records\":[ 227 B blob data ]}".into(),
            recorded_at_ms: 1_000,
        },
    );
    store.commit(w).unwrap();
    store
        .dead_letter(DeadLetterRow {
            sink: "soar".into(),
            alert: row(store, "bbbb3333", 0),
            reason: "max_age_exceeded".into(),
            status: None,
            response_excerpt: String::new(),
            attempts: 0,
            dead_lettered_at_ms: 10,
        })
        .unwrap();
}

#[test]
fn list_and_show_work_while_the_directory_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    populate(&store);
    // `store` stays open: this process holds RocksDB's lock, as `run` would.
    let out = alerts(dir.path(), &["list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    assert!(
        listing.starts_with("2 pending, 1 dead-lettered, 1 undecodable event bodies"),
        "{listing}"
    );
    assert!(
        listing.contains("aaaa1111") && listing.contains("bbbb3333"),
        "{listing}"
    );

    // A unique prefix is enough; an ambiguous one says so.
    let out = alerts(dir.path(), &["show", "bbbb"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\"id\":\"bbbb3333\"}"
    );
    let out = alerts(dir.path(), &["show", "aaaa"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("2 alerts have ids starting with aaaa"),
        "{}",
        text(&out)
    );

    let out = alerts(dir.path(), &["events"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = text(&out);
    assert!(
        events.contains("partition 3  sequence 200  invalid_json") && events.contains("blob data"),
        "{events}"
    );

    // Changing the state needs the service stopped, and says so.
    let out = alerts(dir.path(), &["requeue"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("in use"), "{}", text(&out));
}

#[test]
fn requeue_restarts_the_age_clock_and_purge_needs_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        populate(&store);
    }
    let before = firstseen::replay::now_ms();
    let out = alerts(dir.path(), &["requeue", "bbbb3333"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("requeued 1 alerts"));
    {
        let store = Store::open(dir.path()).unwrap();
        let pending = store.outbox_all().unwrap();
        let requeued = pending.iter().find(|(_, r)| r.id == "bbbb3333").unwrap();
        assert!(
            requeued.1.created_at_ms >= before,
            "max_age counts from the requeue, not from the original commit"
        );
        // It goes behind what was already pending.
        assert_eq!(pending.last().unwrap().1.id, "bbbb3333");
        assert!(store.dead_letters().unwrap().is_empty());
    }

    let out = alerts(dir.path(), &["purge", "--events"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let out = alerts(dir.path(), &["purge", "--events", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("purged 1 undecodable event bodies"),
        "{}",
        text(&out)
    );
    let store = Store::open(dir.path()).unwrap();
    assert!(store.dead_events().unwrap().is_empty());
}

#[test]
fn old_undecodable_bodies_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut w = BatchWrite::default();
    for at in [1_000, 2_000, 3_000] {
        store.put_dead_event(
            &mut w,
            &DeadEventRow {
                source: "eventhubs".into(),
                partition: None,
                sequence_number: None,
                error_kind: "invalid_json".into(),
                detail: String::new(),
                body_excerpt: String::new(),
                recorded_at_ms: at,
            },
        );
    }
    store.commit(w).unwrap();
    assert_eq!(store.gc_dead_events(2_500).unwrap(), 2);
    let left = store.dead_events().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].recorded_at_ms, 3_000);
}
