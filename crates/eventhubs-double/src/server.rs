//! The AMQP side of the double: connections, sessions and the three kinds of
//! links the SDK opens (CBS request/reply, `$management` request/reply, and
//! partition receivers), plus the shared state the control API acts on.
//!
//! fe2o3-amqp 0.16 answers a peer's `detach` on a link only while that link
//! is polled, and the SDK has no close timeout, so every link this module
//! owns runs in its own task that also waits on the link's detach; otherwise
//! `EventReceiver::close()` / `ConsumerClient::close()` hang.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAcceptor,
    SessionAcceptor,
};
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::{DetachError, SendError};
use fe2o3_amqp::types::definitions::{self, ErrorCondition};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, Outcome, Properties,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{
    Array, Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value,
};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use fe2o3_amqp::{Receiver, Sender};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::log::{system_time_to_ms, PartitionLog, StartFilter, StoredEvent};
use crate::Counters;

/// Filter key of the Event Hubs start position.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// Link property carrying the owner level.
const EPOCH_PROPERTY: &str = "com.microsoft:epoch";
/// How long the double waits for a peer's answer (detach reply, disposition of
/// a management reply, reply link attach) before giving up on that link.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks a mutex, recovering from poisoning: the protected data stays
/// consistent because no code path panics while holding a lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One partition: its log and a "length changed" signal for live receivers.
#[derive(Debug)]
struct Partition {
    id: String,
    log: Mutex<PartitionLog>,
    appended: watch::Sender<usize>,
}

/// A detach request sent to a partition link task.
#[derive(Debug, Clone)]
struct DetachCommand {
    condition: String,
    description: String,
}

/// A served partition link, as seen by the epoch logic and the control API.
#[derive(Debug)]
struct LinkEntry {
    id: u64,
    epoch: Option<i64>,
    commands: mpsc::UnboundedSender<DetachCommand>,
}

/// Atomic counters behind [`Counters`].
#[derive(Debug, Default)]
struct Cells {
    connections: AtomicU64,
    open_connections: AtomicU64,
    cbs_put_tokens: AtomicU64,
    management_requests: AtomicU64,
    receiver_attaches: AtomicU64,
    refused_attaches: AtomicU64,
    stolen_links: AtomicU64,
    forced_detaches: AtomicU64,
    active_receivers: AtomicU64,
    delivered: AtomicU64,
    accepted: AtomicU64,
    credit_waits: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the control API and every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) hub: String,
    created_ms: i64,
    partitions: Vec<Partition>,
    /// Served partition links by (consumer group, partition id).
    links: Mutex<HashMap<(String, String), Vec<LinkEntry>>>,
    /// Abrupt-close switch of each open connection.
    connections: Mutex<HashMap<u64, CancellationToken>>,
    /// Graceful stop: connections send AMQP `close`.
    shutdown: CancellationToken,
    delivered_by_partition: Vec<AtomicU64>,
    cells: Cells,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(hub: &str, partitions: u32) -> Self {
        Self {
            hub: hub.to_owned(),
            created_ms: system_time_to_ms(SystemTime::now()),
            partitions: (0..partitions)
                .map(|i| Partition {
                    id: i.to_string(),
                    log: Mutex::new(PartitionLog::default()),
                    appended: watch::channel(0).0,
                })
                .collect(),
            links: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            delivered_by_partition: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            cells: Cells::default(),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn partition_ids(&self) -> Vec<String> {
        self.partitions.iter().map(|p| p.id.clone()).collect()
    }

    fn partition_index(&self, id: &str) -> Option<usize> {
        self.partitions.iter().position(|p| p.id == id)
    }

    pub(crate) fn publish(
        &self,
        partition: &str,
        body: Vec<u8>,
        enqueued: Option<SystemTime>,
        partition_key: Option<String>,
    ) -> Option<StoredEvent> {
        let p = &self.partitions[self.partition_index(partition)?];
        let (event, len) = {
            let mut log = lock(&p.log);
            let event = log.append(body, enqueued, partition_key).clone();
            (event, log.events.len())
        };
        p.appended.send_replace(len);
        Some(event)
    }

    pub(crate) fn drop_connections(&self) -> usize {
        let conns = lock(&self.connections);
        for token in conns.values() {
            token.cancel();
        }
        conns.len()
    }

    pub(crate) fn open_connections(&self) -> u64 {
        self.cells.open_connections.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub(crate) fn detach_receivers(
        &self,
        partition: &str,
        condition: &str,
        description: &str,
    ) -> usize {
        let mut links = lock(&self.links);
        let mut n = 0;
        for ((_, pid), entries) in links.iter_mut() {
            if pid != partition {
                continue;
            }
            for entry in entries.drain(..) {
                let cmd = DetachCommand {
                    condition: condition.to_owned(),
                    description: description.to_owned(),
                };
                if entry.commands.send(cmd).is_ok() {
                    n += 1;
                    bump(&self.cells.forced_detaches);
                }
            }
        }
        n
    }

    pub(crate) fn counters(&self) -> Counters {
        let c = &self.cells;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            connections: get(&c.connections),
            open_connections: get(&c.open_connections),
            cbs_put_tokens: get(&c.cbs_put_tokens),
            management_requests: get(&c.management_requests),
            receiver_attaches: get(&c.receiver_attaches),
            refused_attaches: get(&c.refused_attaches),
            stolen_links: get(&c.stolen_links),
            forced_detaches: get(&c.forced_detaches),
            active_receivers: get(&c.active_receivers),
            delivered: get(&c.delivered),
            accepted: get(&c.accepted),
            credit_waits: get(&c.credit_waits),
            delivered_by_partition: self
                .partitions
                .iter()
                .zip(&self.delivered_by_partition)
                .map(|(p, n)| (p.id.clone(), get(n)))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Applies the owner-level rules to a new receiver on (cg, partition) and
    /// registers it when admitted. Event Hubs semantics: an epoch receiver
    /// with epoch >= every current epoch takes the partition over (older links
    /// get `amqp:link:stolen`); a lower epoch, or a receiver without epoch
    /// while an epoch receiver holds the partition, is refused. Receivers
    /// without epoch share a partition with each other.
    fn admit(
        &self,
        consumer_group: &str,
        partition: &str,
        epoch: Option<i64>,
    ) -> Result<(u64, mpsc::UnboundedReceiver<DetachCommand>), String> {
        let mut links = lock(&self.links);
        let entries = links
            .entry((consumer_group.to_owned(), partition.to_owned()))
            .or_default();
        let max_epoch = entries.iter().filter_map(|e| e.epoch).max();
        match (epoch, max_epoch) {
            (Some(new), Some(old)) if new < old => {
                return Err(format!(
                    "Receiver with epoch {new} refused: a receiver with higher epoch {old} holds partition {partition} of consumer group {consumer_group}"
                ))
            }
            (None, Some(old)) => {
                return Err(format!(
                    "Receiver without epoch refused: a receiver with epoch {old} holds partition {partition} of consumer group {consumer_group}"
                ))
            }
            (Some(new), _) => {
                for entry in entries.drain(..) {
                    let cmd = DetachCommand {
                        condition: "amqp:link:stolen".to_owned(),
                        description: format!(
                            "New receiver with higher epoch of '{new}' is created hence current receiver with epoch '{}' is getting disconnected",
                            entry.epoch.map_or("none".to_owned(), |e| e.to_string())
                        ),
                    };
                    if entry.commands.send(cmd).is_ok() {
                        bump(&self.cells.stolen_links);
                    }
                }
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        entries.push(LinkEntry {
            id,
            epoch,
            commands: tx,
        });
        Ok((id, rx))
    }

    fn unregister(&self, consumer_group: &str, partition: &str, id: u64) {
        let mut links = lock(&self.links);
        if let Some(entries) = links.get_mut(&(consumer_group.to_owned(), partition.to_owned())) {
            entries.retain(|e| e.id != id);
        }
    }
}

/// Accepts TCP connections until the task is aborted.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                // Nagle + delayed ACK cost ~40 ms per request/response round trip.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_tcp(shared.clone(), tcp));
            }
            Err(e) => {
                tracing::warn!(error = %e, "eventhubs-double: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Relays one TCP connection to an in-process AMQP endpoint, so that the
/// double can cut the socket at any moment (fe2o3 owns its transport).
async fn serve_tcp(shared: Arc<Shared>, mut tcp: TcpStream) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let kill = CancellationToken::new();
    lock(&shared.connections).insert(id, kill.clone());
    bump(&shared.cells.connections);
    shared
        .cells
        .open_connections
        .fetch_add(1, Ordering::Relaxed);

    let (mut ours, theirs) = tokio::io::duplex(256 * 1024);
    let amqp = tokio::spawn(serve_amqp(shared.clone(), theirs));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut tcp, &mut ours) => {}
        _ = kill.cancelled() => {
            // Linger 0 makes the close an RST, like a broken network path.
            // (Deprecated because a non-zero linger blocks the thread on drop;
            // zero never blocks.)
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
        }
    }
    drop(tcp);
    drop(ours);
    amqp.abort();
    lock(&shared.connections).remove(&id);
    shared
        .cells
        .open_connections
        .fetch_sub(1, Ordering::Relaxed);
}

/// SASL that accepts any mechanism the SDK may use. The SDK sends ANONYMOUS
/// for both credentials and connection strings (tokens travel over CBS);
/// PLAIN and MSSBCBS are offered for other clients.
#[derive(Debug, Clone)]
struct AcceptAnySasl;

impl SaslAcceptor for AcceptAnySasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("ANONYMOUS"),
            Symbol::from("MSSBCBS"),
            Symbol::from("PLAIN"),
        ])
    }

    fn on_init(&mut self, _init: SaslInit) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
}

async fn serve_amqp(shared: Arc<Shared>, io: tokio::io::DuplexStream) {
    let acceptor = ConnectionAcceptor::builder()
        .container_id("eventhubs-double")
        .max_frame_size(65536)
        .sasl_acceptor(AcceptAnySasl)
        .build();
    let mut conn = match acceptor.accept(io).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = ?e, "eventhubs-double: connection open failed");
            return;
        }
    };
    let session_acceptor = SessionAcceptor::new();
    loop {
        tokio::select! {
            incoming = conn.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                match session_acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => { tokio::spawn(serve_session(shared.clone(), session)); }
                    Err(e) => tracing::debug!(error = ?e, "eventhubs-double: begin failed"),
                }
            }
            _ = shared.shutdown.cancelled() => {
                let _ = tokio::time::timeout(PEER_TIMEOUT, conn.close()).await;
                return;
            }
        }
    }
    let _ = tokio::time::timeout(PEER_TIMEOUT, conn.close()).await;
}

/// Reply links of one session, by the address the client listens on
/// (the request's `reply-to`).
type ReplyLinks = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ReplyMessage>>>>;

/// A CBS or management response: application properties + amqp-value body.
type ReplyMessage = Message<AmqpValue<Value>>;

/// What a request link serves.
#[derive(Debug, Clone, Copy)]
enum RequestKind {
    Cbs,
    Management,
}

async fn serve_session(shared: Arc<Shared>, mut session: ListenerSessionHandle) {
    let replies: ReplyLinks = Arc::default();
    let link_acceptor = LinkAcceptor::new();
    while let Some(attach) = session.next_incoming_attach().await {
        let source_addr = attach
            .source
            .as_ref()
            .and_then(|s| s.address.clone())
            .unwrap_or_default();
        let target_addr = attach
            .target
            .as_ref()
            .and_then(|t| match t.as_ref() {
                fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => t.address.clone(),
                // Coordinator targets exist only with fe2o3's `transaction` feature.
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .unwrap_or_default();
        let link_name = attach.name.clone();
        let partition_request = match attach.role {
            fe2o3_amqp::types::definitions::Role::Receiver => {
                classify_receiver_attach(&shared, &source_addr, &attach)
            }
            fe2o3_amqp::types::definitions::Role::Sender => None,
        };
        let endpoint = match link_acceptor
            .accept_incoming_attach(attach, &mut session)
            .await
        {
            Ok(ep) => ep,
            Err(e) => {
                tracing::debug!(error = ?e, link = %link_name, "eventhubs-double: attach failed");
                // Do not let a link that never came up hold the partition's epoch.
                if let Some(Ok(admitted)) = &partition_request {
                    let pid = &shared.partitions[admitted.partition].id;
                    shared.unregister(&admitted.consumer_group, pid, admitted.id);
                }
                continue;
            }
        };
        match endpoint {
            LinkEndpoint::Receiver(receiver) => {
                let kind = if target_addr.ends_with("$cbs") {
                    RequestKind::Cbs
                } else {
                    RequestKind::Management
                };
                tokio::spawn(serve_requests(
                    shared.clone(),
                    receiver,
                    kind,
                    replies.clone(),
                ));
            }
            LinkEndpoint::Sender(sender) => match partition_request {
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    lock(&replies).insert(target_addr, tx);
                    tokio::spawn(serve_replies(sender, rx));
                }
                Some(Err(description)) => {
                    bump(&shared.cells.refused_attaches);
                    tokio::spawn(refuse(sender, description));
                }
                Some(Ok(admitted)) => {
                    bump(&shared.cells.receiver_attaches);
                    tokio::spawn(serve_partition(shared.clone(), sender, admitted));
                }
            },
        }
    }
}

/// A partition receiver the double admitted.
#[derive(Debug)]
struct Admitted {
    consumer_group: String,
    partition: usize,
    filter: StartFilter,
    id: u64,
    commands: mpsc::UnboundedReceiver<DetachCommand>,
}

/// For a client receiver link: `None` if it is a CBS/management reply link,
/// else the admission decision for a partition link (`Err` = refuse with
/// `amqp:link:stolen` or not-found text).
fn classify_receiver_attach(
    shared: &Shared,
    source_addr: &str,
    attach: &Attach,
) -> Option<Result<Admitted, (String, String)>> {
    if source_addr.ends_with("$cbs") || source_addr.ends_with("$management") {
        return None;
    }
    let not_found = |what: String| Err(("amqp:not-found".to_owned(), what));
    // amqps://<ns>/<hub>/ConsumerGroups/<cg>/Partitions/<id>
    let path = source_addr
        .split_once("://")
        .map_or(source_addr, |(_, rest)| rest);
    let segments: Vec<&str> = path.split('/').collect();
    let [_host, hub, cg_kw, cg, p_kw, pid] = segments.as_slice() else {
        return Some(not_found(format!(
            "unsupported source address {source_addr:?}"
        )));
    };
    if !cg_kw.eq_ignore_ascii_case("ConsumerGroups") || !p_kw.eq_ignore_ascii_case("Partitions") {
        return Some(not_found(format!(
            "unsupported source address {source_addr:?}"
        )));
    }
    if *hub != shared.hub {
        return Some(not_found(format!("event hub {hub:?} does not exist")));
    }
    let Some(partition) = shared.partition_index(pid) else {
        return Some(not_found(format!("partition {pid:?} does not exist")));
    };
    let filter = match selector_expression(attach) {
        // No filter: the service starts at the end of the partition.
        None => StartFilter::Latest,
        Some(expr) => match StartFilter::parse(&expr) {
            Ok(f) => f,
            Err(e) => return Some(Err(("amqp:invalid-field".to_owned(), e.to_string()))),
        },
    };
    let epoch = attach.properties.as_ref().and_then(|props| {
        props.iter().find_map(|(k, v)| {
            (k.as_str() == EPOCH_PROPERTY).then(|| match v {
                Value::Long(n) => Some(*n),
                Value::Int(n) => Some(i64::from(*n)),
                _ => None,
            })?
        })
    });
    Some(
        shared
            .admit(cg, pid, epoch)
            .map(|(id, commands)| Admitted {
                consumer_group: (*cg).to_owned(),
                partition,
                filter,
                id,
                commands,
            })
            .map_err(|d| ("amqp:link:stolen".to_owned(), d)),
    )
}

/// The selector filter string of a receiver attach, if any.
fn selector_expression(attach: &Attach) -> Option<String> {
    let filter = attach.source.as_ref()?.filter.as_ref()?;
    filter.iter().find_map(|(k, v)| {
        if k.as_str() != SELECTOR_FILTER {
            return None;
        }
        match v {
            Value::Described(d) => match &d.value {
                Value::String(s) => Some(s.clone()),
                _ => None,
            },
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn amqp_error(condition: &str, description: &str) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.to_owned()),
        None,
    )
}

/// Refuses an attach the way the service does: attach, then close the link
/// at once with the error.
async fn refuse(sender: Sender, (condition, description): (String, String)) {
    let _ = tokio::time::timeout(
        PEER_TIMEOUT,
        sender.close_with_error(amqp_error(&condition, &description)),
    )
    .await;
}

/// Answers a peer-initiated detach in kind: replying `closed: true` to a
/// `closed: false` detach makes fe2o3 clients re-attach and close again.
async fn answer_detach(sender: Sender, why: DetachError) {
    let reply = async move {
        match why {
            DetachError::ClosedByRemote => {
                let _ = sender.close().await;
            }
            DetachError::DetachedByRemote => {
                let _ = sender.detach().await;
            }
            _ => {}
        }
    };
    let _ = tokio::time::timeout(PEER_TIMEOUT, reply).await;
}

/// Serves one reply link (CBS or management responses).
async fn serve_replies(mut sender: Sender, mut rx: mpsc::UnboundedReceiver<ReplyMessage>) {
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                match tokio::time::timeout(PEER_TIMEOUT, sender.send(msg)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
            }
            why = sender.on_detach() => {
                answer_detach(sender, why).await;
                return;
            }
        }
    }
}

/// Serves one request link: answers each CBS or management request on the
/// reply link named by its `reply-to`. `recv` answers the peer's detach itself.
async fn serve_requests(
    shared: Arc<Shared>,
    mut receiver: Receiver,
    kind: RequestKind,
    replies: ReplyLinks,
) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(_) => return,
        };
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
        let request = delivery.message();
        let props = request.application_properties.as_ref().map(|ap| &ap.0);
        let prop = |key: &str| -> Option<String> {
            match props?.get(key)? {
                SimpleValue::String(s) => Some(s.clone()),
                SimpleValue::Symbol(s) => Some(s.as_str().to_owned()),
                _ => None,
            }
        };
        let (status, description, body) = match kind {
            RequestKind::Cbs => {
                bump(&shared.cells.cbs_put_tokens);
                match prop("operation").as_deref() {
                    Some("put-token") => (202, "Accepted".to_owned(), Value::Null),
                    other => (
                        400,
                        format!("unsupported CBS operation {other:?}"),
                        Value::Null,
                    ),
                }
            }
            RequestKind::Management => {
                bump(&shared.cells.management_requests);
                management_reply(
                    &shared,
                    prop("operation").as_deref(),
                    prop("type").as_deref(),
                    prop("name").as_deref(),
                    prop("partition").as_deref(),
                )
            }
        };
        let mut properties = Properties::default();
        properties.correlation_id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let reply = Message::builder()
            .properties(properties)
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", SimpleValue::Int(status))
                    .insert("status-description", SimpleValue::String(description))
                    .build(),
            )
            .value(body)
            .build();
        let reply_to = request
            .properties
            .as_ref()
            .and_then(|p| p.reply_to.clone())
            .unwrap_or_default();
        // The reply link attaches before the request is sent; still allow a
        // short wait in case the session task has not registered it yet.
        let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
        loop {
            let tx = lock(&replies).get(&reply_to).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(reply);
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(reply_to = %reply_to, "eventhubs-double: no reply link");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Builds the `$management` READ reply with the exact keys and AMQP types
/// the SDK decodes (`src/common/management.rs`; a wrongly typed value panics
/// in azure_core_amqp's conversions).
fn management_reply(
    shared: &Shared,
    operation: Option<&str>,
    entity_type: Option<&str>,
    name: Option<&str>,
    partition: Option<&str>,
) -> (i32, String, Value) {
    if operation != Some("READ") {
        return (
            400,
            format!("unsupported operation {operation:?}"),
            Value::Null,
        );
    }
    if name != Some(shared.hub.as_str()) {
        return (404, format!("event hub {name:?} not found"), Value::Null);
    }
    let mut map: OrderedMap<Value, Value> = OrderedMap::new();
    let mut put = |k: &str, v: Value| {
        map.insert(Value::String(k.to_owned()), v);
    };
    match entity_type {
        Some("com.microsoft:eventhub") => {
            put("name", Value::String(shared.hub.clone()));
            put("type", Value::String("com.microsoft:eventhub".to_owned()));
            put(
                "created_at",
                Value::Timestamp(Timestamp::from_milliseconds(shared.created_ms)),
            );
            put(
                "partition_count",
                Value::Int(shared.partitions.len() as i32),
            );
            put(
                "partition_ids",
                Value::Array(Array::from(
                    shared
                        .partitions
                        .iter()
                        .map(|p| Value::String(p.id.clone()))
                        .collect::<Vec<_>>(),
                )),
            );
        }
        Some("com.microsoft:partition") => {
            let Some(idx) = partition.and_then(|p| shared.partition_index(p)) else {
                return (
                    404,
                    format!("partition {partition:?} not found"),
                    Value::Null,
                );
            };
            let p = &shared.partitions[idx];
            let log = lock(&p.log);
            let last = log.events.last();
            put("name", Value::String(shared.hub.clone()));
            put("type", Value::String("com.microsoft:partition".to_owned()));
            put("partition", Value::String(p.id.clone()));
            put("begin_sequence_number", Value::Long(0));
            put(
                "last_enqueued_sequence_number",
                Value::Long(last.map_or(-1, |e| e.sequence_number)),
            );
            put("last_enqueued_sequence_number_epoch", Value::Long(0));
            put(
                "last_enqueued_offset",
                Value::String(last.map_or("-1".to_owned(), |e| e.offset.to_string())),
            );
            put(
                "last_enqueued_time_utc",
                Value::Timestamp(Timestamp::from_milliseconds(
                    last.map_or(0, |e| e.enqueued_ms),
                )),
            );
            put("is_partition_empty", Value::Bool(last.is_none()));
        }
        other => return (400, format!("unsupported type {other:?}"), Value::Null),
    }
    (200, "OK".to_owned(), Value::Map(map))
}

/// Builds the AMQP message of one stored event.
fn event_message(e: &StoredEvent) -> Message<fe2o3_amqp::types::messaging::Data> {
    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(e.sequence_number),
        )
        .insert(
            Symbol::from("x-opt-offset"),
            Value::String(e.offset.to_string()),
        )
        .insert(
            Symbol::from("x-opt-enqueued-time"),
            Value::Timestamp(Timestamp::from_milliseconds(e.enqueued_ms)),
        );
    if let Some(key) = &e.partition_key {
        annotations = annotations.insert(
            Symbol::from("x-opt-partition-key"),
            Value::String(key.clone()),
        );
    }
    Message::builder()
        .message_annotations(annotations.build())
        .data(Binary::from(e.body.clone()))
        .build()
}

type Ack = DeliveryFut<Result<Outcome, SendError>>;

/// Serves one partition receiver: sends the log from the start filter on,
/// then new events as they are published, only while the link has credit
/// (fe2o3's `send` waits for credit and answers a detach meanwhile).
async fn serve_partition(shared: Arc<Shared>, mut sender: Sender, admitted: Admitted) {
    let Admitted {
        consumer_group,
        partition,
        filter,
        id,
        mut commands,
    } = admitted;
    shared
        .cells
        .active_receivers
        .fetch_add(1, Ordering::Relaxed);
    let p = &shared.partitions[partition];
    let mut appended = p.appended.subscribe();
    let len_at_attach = *appended.borrow_and_update();
    let mut next = 0usize;
    let mut started = false;
    let mut acks: FuturesUnordered<Ack> = FuturesUnordered::new();

    let outcome: Option<DetachCommand> = loop {
        // A pending detach command wins over pending events, so a test that
        // detaches and then publishes sees the event on the next link only.
        if let Ok(cmd) = commands.try_recv() {
            break Some(cmd);
        }
        while let Some(Some(ack)) = acks.next().now_or_never() {
            if matches!(ack, Ok(Outcome::Accepted(_))) {
                bump(&shared.cells.accepted);
            }
        }
        let event = {
            let log = lock(&p.log);
            let mut found = None;
            while next < log.events.len() {
                let e = &log.events[next];
                if started || filter.admits(e, len_at_attach) {
                    started = true;
                    found = Some(event_message(e));
                    break;
                }
                next += 1;
            }
            found
        };
        match event {
            Some(msg) => {
                let send = sender.send_batchable(msg);
                tokio::pin!(send);
                // Poll once to tell "sent at once" from "waited for credit".
                let sent = match futures_util::poll!(send.as_mut()) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => {
                        bump(&shared.cells.credit_waits);
                        None
                    }
                };
                let sent = match sent {
                    Some(r) => r,
                    None => tokio::select! {
                        biased;
                        r = &mut send => r,
                        cmd = commands.recv() => break cmd,
                    },
                };
                match sent {
                    Ok(ack) => {
                        acks.push(ack);
                        next += 1;
                        bump(&shared.cells.delivered);
                        shared.delivered_by_partition[partition].fetch_add(1, Ordering::Relaxed);
                    }
                    // Detached or closed by the peer (answered inside send), or
                    // the connection is gone.
                    Err(_) => break None,
                }
            }
            None => {
                tokio::select! {
                    biased;
                    cmd = commands.recv() => break cmd,
                    why = sender.on_detach() => {
                        answer_detach(sender, why).await;
                        shared.unregister(&consumer_group, &p.id, id);
                        shared.cells.active_receivers.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    changed = appended.changed() => {
                        if changed.is_err() { break None; }
                    }
                    Some(ack) = acks.next(), if !acks.is_empty() => {
                        if matches!(ack, Ok(Outcome::Accepted(_))) {
                            bump(&shared.cells.accepted);
                        }
                    }
                }
            }
        }
    };
    shared.unregister(&consumer_group, &p.id, id);
    shared
        .cells
        .active_receivers
        .fetch_sub(1, Ordering::Relaxed);
    if let Some(cmd) = outcome {
        let _ = tokio::time::timeout(
            PEER_TIMEOUT,
            sender.close_with_error(amqp_error(&cmd.condition, &cmd.description)),
        )
        .await;
    }
}
