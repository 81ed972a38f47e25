//! The real `azure_messaging_eventhubs` 0.16 `ConsumerClient` against the
//! loopback Event Hubs double (`crates/eventhubs-double`) over 127.0.0.1.
//!
//! Owns the evidence that the double speaks enough Event Hubs for the SDK
//! (properties, every start position, owner levels) and records what the
//! SDK does on faults the consumer must survive (dropped connection, link
//! detached with `server-busy`). Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::ReceivedEventData;
use azure_messaging_eventhubs::{
    ConsumerClient, EventReceiver, OpenReceiverOptions, RetryOptions, StartLocation, StartPosition,
};
use eventhubs_double::{DoubleConfig, EventHubsDouble, PublishOptions, PublishedEvent};
use futures::{Stream, StreamExt};

/// Bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

/// A credential that hands out a fake token; the double accepts any token.
#[derive(Debug)]
struct FakeCredential;

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "fake-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

async fn start_double(partitions: u32) -> EventHubsDouble {
    EventHubsDouble::start(DoubleConfig::new("activity-logs", partitions))
        .await
        .expect("double starts")
}

fn quick_retries() -> RetryOptions {
    RetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(50),
        max_delay: azure_core::time::Duration::milliseconds(500),
        max_total_elapsed: azure_core::time::Duration::seconds(15),
        max_retries: 5,
    }
}

async fn open_client(double: &EventHubsDouble) -> ConsumerClient {
    tokio::time::timeout(
        WAIT,
        ConsumerClient::builder()
            .with_custom_endpoint(double.endpoint())
            .with_retry_options(quick_retries())
            .open(
                double.fully_qualified_namespace(),
                double.hub_name().to_owned(),
                Arc::new(FakeCredential),
            ),
    )
    .await
    .expect("open in time")
    .expect("open succeeds")
}

async fn open_receiver(
    client: &ConsumerClient,
    partition: &str,
    location: StartLocation,
    inclusive: bool,
    owner_level: Option<i64>,
) -> EventReceiver {
    let options = OpenReceiverOptions {
        owner_level,
        prefetch: Some(50),
        start_position: Some(StartPosition {
            location,
            inclusive,
        }),
        ..Default::default()
    };
    tokio::time::timeout(
        WAIT,
        client.open_receiver_on_partition(partition.to_owned(), Some(options)),
    )
    .await
    .expect("open receiver in time")
    .expect("open receiver succeeds")
}

/// Next stream item, failing the test after [`WAIT`].
async fn next<S>(stream: &mut S) -> azure_messaging_eventhubs::Result<ReceivedEventData>
where
    S: Stream<Item = azure_messaging_eventhubs::Result<ReceivedEventData>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("stream item in time")
        .expect("stream does not end")
}

/// Takes `n` events, failing on any error.
async fn take_events<S>(stream: &mut S, n: usize) -> Vec<ReceivedEventData>
where
    S: Stream<Item = azure_messaging_eventhubs::Result<ReceivedEventData>> + Unpin,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(stream).await.expect("event, not error"));
    }
    out
}

fn assert_matches(event: &ReceivedEventData, published: &PublishedEvent, body: &[u8]) {
    assert_eq!(event.sequence_number(), Some(published.sequence_number));
    assert_eq!(event.offset().as_deref(), Some(published.offset.as_str()));
    assert_eq!(event.enqueued_time(), Some(published.enqueued_time));
    assert_eq!(event.event_data().body(), Some(body));
}

fn body(i: usize) -> Vec<u8> {
    format!(r#"{{"records":[{{"operationName":"op-{i}"}}]}}"#).into_bytes()
}

async fn close_receiver(receiver: EventReceiver) {
    tokio::time::timeout(WAIT, receiver.close())
        .await
        .expect("receiver close does not hang")
        .expect("receiver closes");
}

#[tokio::test]
async fn properties_match_the_hub_and_partitions() {
    let double = start_double(4).await;
    let client = open_client(&double).await;

    let hub = client
        .get_eventhub_properties()
        .await
        .expect("hub properties");
    assert_eq!(hub.name, "activity-logs");
    assert_eq!(hub.partition_ids, vec!["0", "1", "2", "3"]);
    assert!(hub.created_on.is_some());

    let empty = client
        .get_partition_properties("0")
        .await
        .expect("partition 0");
    assert!(empty.is_empty);
    assert_eq!(empty.last_enqueued_sequence_number, -1);

    let mut last = None;
    for i in 0..3 {
        last = Some(double.publish("1", body(i)).expect("publish"));
    }
    let last = last.expect("published");
    let p1 = client
        .get_partition_properties("1")
        .await
        .expect("partition 1");
    assert_eq!(p1.id, "1");
    assert_eq!(p1.eventhub, "activity-logs");
    assert!(!p1.is_empty);
    assert_eq!(p1.beginning_sequence_number, 0);
    assert_eq!(p1.last_enqueued_sequence_number, 2);
    assert_eq!(p1.last_enqueued_offset, last.offset);
    assert_eq!(p1.last_enqueued_time_utc, Some(last.enqueued_time));

    assert!(client.get_partition_properties("9").await.is_err());
    assert!(double.counters().cbs_put_tokens >= 1);
    tokio::time::timeout(WAIT, client.close())
        .await
        .expect("client close does not hang")
        .expect("client closes");
}

#[tokio::test]
async fn connection_string_with_custom_endpoint_works() {
    let double = start_double(2).await;
    let client = tokio::time::timeout(
        WAIT,
        ConsumerClient::builder()
            .with_custom_endpoint(double.endpoint())
            .open_with_connection_string(&double.connection_string(), None),
    )
    .await
    .expect("open in time")
    .expect("open with connection string");
    let hub = client
        .get_eventhub_properties()
        .await
        .expect("hub properties");
    assert_eq!(hub.partition_ids, vec!["0", "1"]);
}

#[tokio::test]
async fn every_start_position_picks_the_right_first_event() {
    let double = start_double(4).await;
    let client = open_client(&double).await;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let published: Vec<PublishedEvent> = (0..5)
        .map(|i| {
            double
                .publish_with(
                    "2",
                    body(i),
                    PublishOptions {
                        enqueued_time: Some(t0 + Duration::from_secs(i as u64)),
                        partition_key: Some(format!("key-{i}")),
                    },
                )
                .expect("publish")
        })
        .collect();
    let second = t0 + Duration::from_secs(2);
    let cases: Vec<(&str, StartLocation, bool, usize)> = vec![
        ("earliest", StartLocation::Earliest, false, 0),
        ("seq >= 2", StartLocation::SequenceNumber(2), true, 2),
        ("seq > 2", StartLocation::SequenceNumber(2), false, 3),
        (
            "offset >= #1",
            StartLocation::Offset(published[1].offset.clone()),
            true,
            1,
        ),
        (
            "offset > #1",
            StartLocation::Offset(published[1].offset.clone()),
            false,
            2,
        ),
        ("time >= t2", StartLocation::EnqueuedTime(second), true, 2),
        ("time > t2", StartLocation::EnqueuedTime(second), false, 3),
    ];
    for (name, location, inclusive, first) in cases {
        let receiver = open_receiver(&client, "2", location, inclusive, None).await;
        {
            let stream = receiver.stream_events();
            futures::pin_mut!(stream);
            let events = take_events(&mut stream, 5 - first).await;
            for (event, i) in events.iter().zip(first..) {
                assert_matches(event, &published[i], &body(i));
                assert_eq!(
                    event.partition_key().as_deref(),
                    Some(format!("key-{i}").as_str()),
                    "{name}"
                );
            }
        }
        close_receiver(receiver).await;
    }

    // Latest: only what is published after the link is attached.
    let attaches = double.counters().receiver_attaches;
    let receiver = open_receiver(&client, "2", StartLocation::Latest, false, None).await;
    {
        let stream = receiver.stream_events();
        futures::pin_mut!(stream);
        let publish_after_attach = async {
            assert!(
                double
                    .wait_until(WAIT, |c| c.receiver_attaches > attaches
                        && c.active_receivers == 1)
                    .await
            );
            double.publish("2", body(5)).expect("publish")
        };
        let (event, new) = tokio::join!(next(&mut stream), publish_after_attach);
        let event = event.expect("event");
        assert_eq!(new.sequence_number, 5);
        assert_matches(&event, &new, &body(5));
    }
    close_receiver(receiver).await;
    assert!(double.counters().accepted >= 1);
}

#[tokio::test]
async fn higher_owner_level_steals_the_partition_and_lower_is_refused() {
    let double = start_double(4).await;
    let first = open_client(&double).await;
    let second = open_client(&double).await;
    for p in ["0", "1"] {
        double.publish(p, body(0)).expect("publish");
    }
    let r0 = open_receiver(&first, "0", StartLocation::Earliest, false, Some(1)).await;
    let r1 = open_receiver(&first, "1", StartLocation::Earliest, false, Some(1)).await;
    let s0 = r0.stream_events();
    let s1 = r1.stream_events();
    futures::pin_mut!(s0, s1);
    take_events(&mut s0, 1).await;
    take_events(&mut s1, 1).await;

    // The second instance takes partition 0 over with a higher owner level.
    let thief = open_receiver(&second, "0", StartLocation::Earliest, false, Some(2)).await;
    let thief_stream = thief.stream_events();
    futures::pin_mut!(thief_stream);
    take_events(&mut thief_stream, 1).await;

    let err = next(&mut s0)
        .await
        .expect_err("stolen link yields an error");
    assert!(
        matches!(err.kind, ErrorKind::ConsumerDisconnected(_)),
        "expected ConsumerDisconnected, got {err:?}"
    );
    assert_eq!(double.counters().stolen_links, 1);

    // Partition 1 of the first instance keeps flowing.
    let p1 = double.publish("1", body(1)).expect("publish");
    let event = next(&mut s1).await.expect("partition 1 still flows");
    assert_matches(&event, &p1, &body(1));

    // A lower owner level than the holder's is refused with the same error.
    let refused = open_receiver(&first, "0", StartLocation::Earliest, false, Some(1)).await;
    {
        let stream = refused.stream_events();
        futures::pin_mut!(stream);
        let err = next(&mut stream).await.expect_err("lower epoch is refused");
        assert!(
            matches!(err.kind, ErrorKind::ConsumerDisconnected(_)),
            "expected ConsumerDisconnected, got {err:?}"
        );
    }
    assert_eq!(double.counters().refused_attaches, 1);

    // The thief still owns partition 0.
    let p0 = double.publish("0", body(2)).expect("publish");
    let event = next(&mut thief_stream)
        .await
        .expect("thief keeps partition 0");
    assert_matches(&event, &p0, &body(2));
}

/// Reads until an event with sequence number `until` or above arrives,
/// returning the sequence numbers seen (stream errors are recorded as -1).
async fn read_until<S>(stream: &mut S, until: i64) -> Vec<i64>
where
    S: Stream<Item = azure_messaging_eventhubs::Result<ReceivedEventData>> + Unpin,
{
    let mut seen = Vec::new();
    loop {
        match next(stream).await {
            Ok(event) => {
                let seq = event.sequence_number().expect("sequence number");
                seen.push(seq);
                if seq >= until {
                    return seen;
                }
            }
            Err(_) => seen.push(-1),
        }
        assert!(seen.len() < 100, "runaway stream: {seen:?}");
    }
}

#[tokio::test]
async fn dropped_connection_is_recovered_by_the_sdk_with_the_original_filter() {
    let double = start_double(4).await;
    let client = open_client(&double).await;
    for i in 0..3 {
        double.publish("0", body(i)).expect("publish");
    }
    let receiver = open_receiver(&client, "0", StartLocation::Earliest, false, None).await;
    let stream = receiver.stream_events();
    futures::pin_mut!(stream);
    let got: Vec<i64> = take_events(&mut stream, 3)
        .await
        .iter()
        .filter_map(|e| e.sequence_number())
        .collect();
    assert_eq!(got, vec![0, 1, 2]);

    assert_eq!(double.drop_connections(), 1);
    for i in 3..5 {
        double.publish("0", body(i)).expect("publish");
    }
    let after = read_until(&mut stream, 4).await;
    // Observed: no error reaches the stream (an error would show as -1); the
    // SDK reconnects by itself and re-attaches with its ORIGINAL start filter
    // (earliest), so events 0..=2 are delivered a second time.
    assert_eq!(after, vec![0, 1, 2, 3, 4]);
    let c = double.counters();
    assert_eq!(c.connections, 2, "{c:?}");
    assert_eq!(c.receiver_attaches, 2, "{c:?}");
}

#[tokio::test]
async fn server_busy_detach_is_retried_by_the_sdk_with_the_original_filter() {
    detach_is_retried_with_the_original_filter("com.microsoft:server-busy").await;
}

#[tokio::test]
async fn detach_forced_is_retried_by_the_sdk_with_the_original_filter() {
    detach_is_retried_with_the_original_filter("amqp:link:detach-forced").await;
}

async fn detach_is_retried_with_the_original_filter(condition: &str) {
    let double = start_double(4).await;
    let client = open_client(&double).await;
    for i in 0..3 {
        double.publish("0", body(i)).expect("publish");
    }
    let receiver = open_receiver(&client, "0", StartLocation::SequenceNumber(0), true, None).await;
    let stream = receiver.stream_events();
    futures::pin_mut!(stream);
    take_events(&mut stream, 3).await;

    let attaches = double.counters().receiver_attaches;
    assert_eq!(
        double.detach_receivers("0", condition, "injected by the test"),
        1
    );
    double.publish("0", body(3)).expect("publish");
    let after = read_until(&mut stream, 3).await;
    // Observed: no error reaches the stream; the SDK re-attaches on the same
    // connection with its ORIGINAL filter (sequence number >= 0), so 0..=2 are
    // delivered a second time before the new event 3.
    assert_eq!(after, vec![0, 1, 2, 3]);
    let c = double.counters();
    assert_eq!(c.receiver_attaches, attaches + 1, "{c:?}");
    assert_eq!(c.connections, 1, "{c:?}");
}

#[tokio::test]
async fn deliveries_wait_for_credit_and_arrive_in_order() {
    let double = start_double(1).await;
    let client = open_client(&double).await;
    let published: Vec<PublishedEvent> = (0..20)
        .map(|i| double.publish("0", body(i)).expect("publish"))
        .collect();
    let options = OpenReceiverOptions {
        prefetch: Some(2),
        start_position: Some(StartPosition {
            location: StartLocation::Earliest,
            inclusive: false,
        }),
        ..Default::default()
    };
    let receiver = client
        .open_receiver_on_partition("0".to_owned(), Some(options))
        .await
        .expect("open receiver");
    {
        let stream = receiver.stream_events();
        futures::pin_mut!(stream);
        let events = take_events(&mut stream, 20).await;
        for (i, (event, p)) in events.iter().zip(&published).enumerate() {
            assert_matches(event, p, &body(i));
        }
    }
    let c = double.counters();
    // With a prefetch of 2 the double runs out of credit many times; it must
    // wait for the client's flow instead of overrunning the link.
    assert!(c.credit_waits >= 1, "{c:?}");
    assert_eq!(c.delivered, 20, "{c:?}");
    close_receiver(receiver).await;
}

#[tokio::test]
async fn graceful_shutdown_closes_connected_clients_in_time() {
    let double = start_double(2).await;
    let client = open_client(&double).await;
    client
        .get_eventhub_properties()
        .await
        .expect("hub properties");
    assert_eq!(double.counters().open_connections, 1);
    tokio::time::timeout(WAIT, double.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown completes in time");
}
