//! A loopback Azure Event Hubs test double: a small AMQP 1.0 server that the
//! real `azure_messaging_eventhubs` 0.16 `ConsumerClient` can talk to through
//! `with_custom_endpoint("amqp://127.0.0.1:PORT")`.
//!
//! It owns an in-memory log per partition, the Event Hubs protocol surface a
//! consumer touches (SASL, CBS `put-token`, `$management` READ, partition
//! receiver links with start filters, owner-level epochs, flow credit) and
//! fault injection for tests (dropped connections, detached links). It is
//! test support only: the shipped `firstseen` binary does not link it, and it
//! does not implement publishing over AMQP, retention, checkpoint stores or
//! authorization (every token is accepted). See README.md for the details and
//! for what the SDK was observed to do against it.

mod log;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::log::ms_to_system_time;
use crate::server::Shared;

/// Namespace host name the double reports; any name works because the SDK
/// dials the custom endpoint and only sends this name in AMQP `open` and URLs.
const NAMESPACE: &str = "eventhubs-double.localhost";

/// How to start a double.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// Event hub name, e.g. `"activity-logs"`. Management READs for another name get 404.
    pub hub_name: String,
    /// Number of partitions, with ids `"0"`..`"N-1"`; at least 1.
    pub partitions: u32,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl DoubleConfig {
    /// A config for `partitions` partitions on `127.0.0.1` with a free port.
    pub fn new(hub_name: impl Into<String>, partitions: u32) -> Self {
        Self {
            hub_name: hub_name.into(),
            partitions,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Errors of the control API.
#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config is unusable.
    #[error("invalid double config: {0}")]
    Config(&'static str),
    /// A partition id that the hub does not have.
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
}

/// What `publish` stored, as a consumer will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    /// Partition id.
    pub partition: String,
    /// `x-opt-sequence-number`; 0 for the first event of a partition.
    pub sequence_number: i64,
    /// `x-opt-offset` (a decimal string, not equal to the sequence number).
    pub offset: String,
    /// `x-opt-enqueued-time`, with millisecond precision.
    pub enqueued_time: SystemTime,
}

/// Optional fields of a published event.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Enqueued time to report instead of now (e.g. for backfill tests);
    /// the double does not require it to be monotonic.
    pub enqueued_time: Option<SystemTime>,
    /// `x-opt-partition-key` annotation.
    pub partition_key: Option<String>,
}

/// Snapshot of the double's counters, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections currently open.
    pub open_connections: u64,
    /// CBS `put-token` requests answered with 202.
    pub cbs_put_tokens: u64,
    /// `$management` requests answered (any status).
    pub management_requests: u64,
    /// Partition receiver links attached and served.
    pub receiver_attaches: u64,
    /// Partition receiver attaches refused (lower epoch, non-epoch next to an
    /// epoch receiver, unknown hub or partition, bad filter).
    pub refused_attaches: u64,
    /// Links detached with `amqp:link:stolen` because a newer epoch attached.
    pub stolen_links: u64,
    /// Links detached through [`EventHubsDouble::detach_receivers`].
    pub forced_detaches: u64,
    /// Partition links currently served.
    pub active_receivers: u64,
    /// Event transfers sent to receivers (a replayed event counts again).
    pub delivered: u64,
    /// Transfers the client settled as accepted.
    pub accepted: u64,
    /// Transfers that could not be sent at once because the link had no
    /// credit left (or the session window was full): they waited for a flow.
    pub credit_waits: u64,
    /// `delivered`, per partition id.
    pub delivered_by_partition: BTreeMap<String, u64>,
}

/// A running double. Dropping it stops the listener and every connection
/// abruptly; call [`EventHubsDouble::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct EventHubsDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_task: Option<JoinHandle<()>>,
}

impl EventHubsDouble {
    /// Binds the listener and starts serving.
    ///
    /// # Errors
    /// [`DoubleError::Bind`] if the address cannot be bound,
    /// [`DoubleError::Config`] for zero partitions or an empty hub name.
    pub async fn start(config: DoubleConfig) -> Result<Self, DoubleError> {
        if config.partitions == 0 {
            return Err(DoubleError::Config("partitions must be at least 1"));
        }
        if config.hub_name.is_empty() || config.hub_name.contains('/') {
            return Err(DoubleError::Config(
                "hub_name must be non-empty and contain no '/'",
            ));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| DoubleError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| DoubleError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(&config.hub_name, config.partitions));
        let accept_task = tokio::spawn(server::accept_loop(shared.clone(), listener));
        Ok(Self {
            shared,
            addr,
            accept_task: Some(accept_task),
        })
    }

    /// The URL to pass to `ConsumerClientBuilder::with_custom_endpoint`, `amqp://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("amqp://{}", self.addr)
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A namespace name to pass to `ConsumerClient::open` (not resolved: the
    /// custom endpoint is dialled instead).
    pub fn fully_qualified_namespace(&self) -> &'static str {
        NAMESPACE
    }

    /// A connection string for `open_with_connection_string`; the key is
    /// fake and never checked.
    pub fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=double;SharedAccessKey=ZmFrZQ==;EntityPath={}",
            self.shared.hub
        )
    }

    /// The event hub name.
    pub fn hub_name(&self) -> &str {
        &self.shared.hub
    }

    /// Partition ids, `"0"`..`"N-1"`.
    pub fn partition_ids(&self) -> Vec<String> {
        self.shared.partition_ids()
    }

    /// Appends `body` to `partition` with enqueued time now and wakes its receivers.
    ///
    /// # Errors
    /// [`DoubleError::UnknownPartition`].
    pub fn publish(&self, partition: &str, body: Vec<u8>) -> Result<PublishedEvent, DoubleError> {
        self.publish_with(partition, body, PublishOptions::default())
    }

    /// Like [`publish`](Self::publish) with an enqueued time override and/or a partition key.
    ///
    /// # Errors
    /// [`DoubleError::UnknownPartition`].
    pub fn publish_with(
        &self,
        partition: &str,
        body: Vec<u8>,
        options: PublishOptions,
    ) -> Result<PublishedEvent, DoubleError> {
        let event = self
            .shared
            .publish(
                partition,
                body,
                options.enqueued_time,
                options.partition_key,
            )
            .ok_or_else(|| DoubleError::UnknownPartition(partition.to_owned()))?;
        Ok(PublishedEvent {
            partition: partition.to_owned(),
            sequence_number: event.sequence_number,
            offset: event.offset.to_string(),
            enqueued_time: ms_to_system_time(event.enqueued_ms),
        })
    }

    /// Closes every open TCP connection abruptly (RST, no AMQP `close`), as a
    /// network fault would. Returns how many were closed. New connections
    /// are accepted as before.
    pub fn drop_connections(&self) -> usize {
        self.shared.drop_connections()
    }

    /// Detaches (closes) every receiver link on `partition`, in any consumer
    /// group, with the AMQP error `condition` (e.g. `com.microsoft:server-busy`,
    /// `amqp:link:detach-forced`). Returns how many links were told to detach.
    pub fn detach_receivers(&self, partition: &str, condition: &str, description: &str) -> usize {
        self.shared
            .detach_receivers(partition, condition, description)
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Waits until `predicate` holds for the counters, checking every few
    /// milliseconds; returns false if `timeout` passes first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&Counters) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if predicate(&self.counters()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, sends AMQP `close` on every connection, waits up to
    /// `grace` for clients to go, then closes what is left abruptly.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
            let _ = task.await;
        }
        self.shared.begin_shutdown();
        let shared = self.shared.clone();
        let closed = tokio::time::timeout(grace, async move {
            while shared.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if closed.is_err() {
            self.shared.drop_connections();
        }
    }
}

impl Drop for EventHubsDouble {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        self.shared.drop_connections();
    }
}
