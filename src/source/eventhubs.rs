//! Azure Event Hubs source: one reader task per partition, built on the
//! official `azure_messaging_eventhubs` `ConsumerClient`.
//!
//! Each reader opens a receiver on its partition (with an owner level, so
//! two instances never read one partition silently), cuts the stream into
//! batches bounded by count and by time, and hands them to the single
//! evaluator over a bounded channel (backpressure: a slow evaluator makes
//! readers wait instead of buffering the hub in memory).
//!
//! What this module knows about the SDK (measured against the loopback
//! double, see `crates/eventhubs-double/README.md`):
//! - Transient faults (dropped TCP connection, link detached with
//!   `server-busy`) never reach the stream: the SDK re-attaches by itself
//!   **with the receiver's original start filter**, so old events arrive
//!   again. A reader therefore remembers the last sequence number it
//!   forwarded, drops anything at or below it, and on the first such replay
//!   reopens its receiver right after that position, so a long-lived
//!   receiver does not re-read the partition from where it started.
//! - `Latest` is resolved to a concrete sequence number before the first
//!   attach. A receiver left at `Latest` would, after an SDK-internal
//!   reconnect, skip whatever was published while it was disconnected.
//! - `ConsumerDisconnected` is the only sign that a receiver with a higher
//!   (or equal) owner level took the partition. It is final for that
//!   reader: it stops, is logged and counted; the other partitions go on.
//!
//! The reader never commits anything. The evaluator commits the checkpoint
//! with the batch's state, and also skips events at or below the committed
//! checkpoint, so what a reader forwards twice is harmless.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::credentials::{Secret, TokenCredential};
use azure_core_amqp::message::AmqpMessageBody;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{AmqpMessage, AmqpTransport, ReceivedEventData};
use azure_messaging_eventhubs::{
    ConsumerClient, EventHubsError, OpenReceiverOptions, StartLocation, StartPosition,
};
use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::HealthCheck;
use crate::metrics::ConnectionErrorKind;
use crate::sink::retry::{FullJitter, RetryPolicy};

/// How long a partition may stay "retrying" before `/readyz` fails.
const RETRY_GRACE: Duration = Duration::from_secs(120);
/// How often partition properties are read for the lag metrics.
const LAG_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// Bound on closing a receiver (the SDK's close has no timeout of its own).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one SDK call that does I/O (connect, properties): the SDK's own
/// retry budget is only checked after a call returns, and a black-holed
/// endpoint would otherwise hold a reader (and shutdown) for minutes.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A batch is also handed over once its bodies reach this many bytes, so
/// memory is bounded by bytes (Standard-tier events are up to 1 MiB).
const BATCH_MAX_BYTES: usize = 4 << 20;
/// A reader whose receiver stays up this long without an error is healthy
/// again even if its partition is quiet.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// `[eventhubs]`: where to read and how.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// Fully qualified namespace, e.g. `myns.servicebus.windows.net`.
    pub namespace: String,
    /// The event hub the diagnostic setting exports to.
    pub event_hub: String,
    /// Consumer group. Default `$Default`; give firstseen its own.
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Where a partition without a checkpoint starts.
    #[serde(default)]
    pub start: StartFrom,
    /// Receiver owner level (epoch).
    #[serde(default)]
    pub owner_level: i64,
    /// Read only these partition ids (default: every partition of the hub).
    /// For splitting one hub between instances by hand; each instance needs
    /// its own state directory then, and a term seen by two instances can
    /// alert on both (with the same alert id, so receivers can deduplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<String>>,
    /// A batch is processed when it holds this many events...
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// ...or when this much time passed since its first event.
    #[serde(
        default = "default_batch_max_wait",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub batch_max_wait: Duration,
    /// Receiver credit (events prefetched per partition).
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// First reconnect backoff ceiling (full jitter).
    #[serde(
        default = "default_reconnect_initial",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub reconnect_initial_backoff: Duration,
    /// Largest reconnect backoff ceiling.
    #[serde(
        default = "default_reconnect_max",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub reconnect_max_backoff: Duration,
    /// Endpoint override: a private-endpoint host, or `amqp://127.0.0.1:PORT`
    /// for a local test double.
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// `amqp` (TCP 5671) or `amqp-websockets` (443).
    #[serde(default)]
    pub transport: Transport,
    /// How to authenticate.
    pub auth: AuthConfig,
}

fn default_consumer_group() -> String {
    "$Default".into()
}
fn default_batch_max_events() -> usize {
    256
}
fn default_batch_max_wait() -> Duration {
    Duration::from_millis(50)
}
fn default_prefetch() -> u32 {
    300
}
fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"50ms\" or \"30s\" ({e})"
        ))
    })
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The AMQP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// AMQP over TCP/TLS, port 5671.
    #[default]
    Amqp,
    /// AMQP over secure WebSockets, port 443 (networks that block 5671).
    AmqpWebsockets,
}

/// Where a partition without a checkpoint starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only events enqueued after the receiver starts (the default: a new
    /// deployment should not alert on the hub's whole retention).
    #[default]
    Latest,
    /// The oldest retained event.
    Earliest,
    /// Events enqueued at or after this time (backfill).
    EnqueuedTime(SystemTime),
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(StartFrom::Latest),
            "earliest" => Ok(StartFrom::Earliest),
            other => {
                let t = time::OffsetDateTime::parse(
                    other,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| {
                    format!(
                        "{other:?} is not \"latest\", \"earliest\" or an RFC 3339 time like \"2026-12-01T00:00:00Z\""
                    )
                })?;
                Ok(StartFrom::EnqueuedTime(SystemTime::from(t)))
            }
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Latest => s.serialize_str("latest"),
            StartFrom::Earliest => s.serialize_str("earliest"),
            StartFrom::EnqueuedTime(t) => {
                let t = time::OffsetDateTime::from(*t);
                let text = t
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(serde::ser::Error::custom)?;
                s.serialize_str(&text)
            }
        }
    }
}

/// `[eventhubs.auth]`: exactly one `kind`. Secrets come only from an
/// environment variable or a file, never from the config file itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A SAS connection string (`Endpoint=sb://…;SharedAccessKeyName=…;…`).
    ConnectionString {
        /// Environment variable holding it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        /// File holding it (a Kubernetes secret mount).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<PathBuf>,
    },
    /// AKS workload identity: the webhook sets `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID` and `AZURE_FEDERATED_TOKEN_FILE`; keys here
    /// override them.
    WorkloadIdentity {
        /// Application (client) id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Tenant id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_id: Option<String>,
        /// Projected service-account token file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    /// Managed identity: system-assigned, or user-assigned by client id or
    /// resource id.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Resource id of a user-assigned identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource_id: Option<String>,
    },
    /// A service principal with a client secret.
    ClientSecret {
        /// Tenant id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Environment variable holding the secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        /// File holding the secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
    /// `az login` (and `azd`) on a developer machine.
    DeveloperTools,
}

/// A configuration or start-up error of the Event Hubs source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A bad `[eventhubs]` value.
    #[error("eventhubs.{key}: {message}")]
    Config {
        /// The key, relative to `[eventhubs]`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The credential could not be built (e.g. missing tenant id).
    #[error("eventhubs.auth: cannot build the {kind} credential: {source}")]
    Credential {
        /// The auth kind.
        kind: &'static str,
        /// The SDK's reason (boxed: it is large, and this is the error
        /// path).
        source: Box<azure_core::Error>,
    },
    /// Connecting, authenticating or reading the hub's properties failed.
    #[error("{what} ({namespace}/{event_hub}): {source}")]
    Connect {
        /// What was being done.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Hub.
        event_hub: String,
        /// The SDK's reason (boxed, as above).
        source: Box<EventHubsError>,
    },
}

impl EventHubsConfig {
    /// Checks values that serde cannot: non-empty names, bounds, exactly one
    /// secret source.
    ///
    /// # Errors
    /// The first bad key, with the reason.
    pub fn validate(&self) -> Result<(), SourceError> {
        let bad = |key: &'static str, message: &str| SourceError::Config {
            key,
            message: message.to_string(),
        };
        if self.namespace.trim().is_empty() || self.namespace.contains("://") {
            return Err(bad(
                "namespace",
                "must be a fully qualified host name like myns.servicebus.windows.net (no scheme)",
            ));
        }
        if self.event_hub.trim().is_empty() {
            return Err(bad("event_hub", "must not be empty"));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(bad("consumer_group", "must not be empty"));
        }
        if self.owner_level < 0 {
            return Err(bad("owner_level", "must be 0 or greater"));
        }
        if self.partitions.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(bad(
                "partitions",
                "must list at least one partition id (or be left out)",
            ));
        }
        if self.batch_max_events == 0 {
            return Err(bad("batch_max_events", "must be greater than 0"));
        }
        if self.batch_max_wait.is_zero() {
            return Err(bad("batch_max_wait", "must be greater than 0"));
        }
        if self.prefetch == 0 {
            return Err(bad("prefetch", "must be greater than 0"));
        }
        if self.reconnect_initial_backoff.is_zero()
            || self.reconnect_max_backoff < self.reconnect_initial_backoff
        {
            return Err(bad(
                "reconnect_max_backoff",
                "backoffs must be > 0 and reconnect_max_backoff >= reconnect_initial_backoff",
            ));
        }
        if let Some(endpoint) = &self.custom_endpoint {
            if !["amqp://", "amqps://", "sb://", "https://", "wss://"]
                .iter()
                .any(|s| endpoint.starts_with(s))
            {
                return Err(bad(
                    "custom_endpoint",
                    "must be a URL such as amqps://host or amqp://127.0.0.1:5672",
                ));
            }
        }
        match &self.auth {
            AuthConfig::ConnectionString { env, file } => {
                if env.is_some() == file.is_some() {
                    return Err(bad(
                        "auth",
                        "kind = \"connection-string\" needs exactly one of `env` or `file`",
                    ));
                }
            }
            AuthConfig::ClientSecret {
                tenant_id,
                client_id,
                secret_env,
                secret_file,
            } => {
                if tenant_id.is_empty() || client_id.is_empty() {
                    return Err(bad(
                        "auth",
                        "kind = \"client-secret\" needs tenant_id and client_id",
                    ));
                }
                if secret_env.is_some() == secret_file.is_some() {
                    return Err(bad(
                        "auth",
                        "kind = \"client-secret\" needs exactly one of `secret_env` or `secret_file`",
                    ));
                }
            }
            AuthConfig::ManagedIdentity {
                client_id,
                resource_id,
            } => {
                if client_id.is_some() && resource_id.is_some() {
                    return Err(bad(
                        "auth",
                        "kind = \"managed-identity\" takes `client_id` or `resource_id`, not both",
                    ));
                }
            }
            AuthConfig::WorkloadIdentity { .. } | AuthConfig::DeveloperTools => {}
        }
        Ok(())
    }

    /// Resolves the secret and builds the credential exactly as `run`
    /// would, without connecting (for `check-config`).
    ///
    /// # Errors
    /// As [`EventHubsSource::connect`] before it dials.
    pub fn check_credentials(&self) -> Result<(), SourceError> {
        self.validate()?;
        ClientFactory::new(self).map(drop)
    }

    fn start_position(&self) -> StartPosition {
        match self.start {
            StartFrom::Latest => StartPosition {
                location: StartLocation::Latest,
                inclusive: false,
            },
            StartFrom::Earliest => StartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            },
            StartFrom::EnqueuedTime(t) => StartPosition {
                location: StartLocation::EnqueuedTime(t),
                inclusive: true,
            },
        }
    }
}

fn read_secret(env: Option<&str>, file: Option<&PathBuf>) -> Result<String, SourceError> {
    let value = match (env, file) {
        (Some(var), _) => std::env::var(var).map_err(|_| SourceError::Config {
            key: "auth",
            message: format!("environment variable {var} is not set (or not UTF-8)"),
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| SourceError::Config {
                key: "auth",
                message: format!("cannot read {}: {e}", path.display()),
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => {
            return Err(SourceError::Config {
                key: "auth",
                message: "no secret source".into(),
            })
        }
    };
    if value.trim().is_empty() {
        return Err(SourceError::Config {
            key: "auth",
            message: "the secret is empty".into(),
        });
    }
    Ok(value)
}

/// Builds the Azure AD credential for `auth` (`None` for connection
/// strings, which the SDK turns into SAS tokens itself).
fn credential(auth: &AuthConfig) -> Result<Option<Arc<dyn TokenCredential>>, SourceError> {
    use azure_identity::{
        ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
        ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
        WorkloadIdentityCredentialOptions,
    };
    let wrap = |kind: &'static str| {
        move |source| SourceError::Credential {
            kind,
            source: Box::new(source),
        }
    };
    Ok(Some(match auth {
        AuthConfig::ConnectionString { .. } => return Ok(None),
        AuthConfig::WorkloadIdentity {
            client_id,
            tenant_id,
            token_file,
        } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            client_id: client_id.clone(),
            tenant_id: tenant_id.clone(),
            token_file_path: token_file.clone(),
            ..Default::default()
        }))
        .map_err(wrap("workload-identity"))?,
        AuthConfig::ManagedIdentity {
            client_id,
            resource_id,
        } => {
            let user_assigned_id = match (client_id, resource_id) {
                (Some(id), _) => Some(UserAssignedId::ClientId(id.clone())),
                (None, Some(id)) => Some(UserAssignedId::ResourceId(id.clone())),
                (None, None) => None,
            };
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id,
                ..Default::default()
            }))
            .map_err(wrap("managed-identity"))?
        }
        AuthConfig::ClientSecret {
            tenant_id,
            client_id,
            secret_env,
            secret_file,
        } => {
            let secret = read_secret(secret_env.as_deref(), secret_file.as_ref())?;
            ClientSecretCredential::new(tenant_id, client_id.clone(), Secret::new(secret), None)
                .map_err(wrap("client-secret"))?
        }
        AuthConfig::DeveloperTools => {
            DeveloperToolsCredential::new(None).map_err(wrap("developer-tools"))?
        }
    }))
}

// ---------------------------------------------------------------------------
// What readers hand to the evaluator
// ---------------------------------------------------------------------------

/// Resume strictly after this position (the committed checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartAfter {
    /// Last committed sequence number.
    pub sequence_number: i64,
    /// Its offset, when known (kept for operators; the reader resumes by
    /// sequence number, which the service accepts on every tier).
    pub offset: Option<String>,
}

/// One Event Hubs event, owned (the evaluator runs on another thread).
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// Partition id.
    pub partition: Arc<str>,
    /// `x-opt-sequence-number`.
    pub sequence_number: i64,
    /// `x-opt-offset`.
    pub offset: Option<String>,
    /// `x-opt-enqueued-time`, Unix milliseconds.
    pub enqueued_time_ms: Option<i64>,
    /// The Data-section body.
    pub body: Vec<u8>,
}

/// Consecutive events of one partition, in sequence order.
#[derive(Debug)]
pub struct PartitionBatch {
    /// Partition id.
    pub partition: Arc<str>,
    /// The events.
    pub events: Vec<ReceivedEvent>,
}

/// Why a reader task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionExit {
    /// Shutdown was requested (its last batch was handed over).
    Shutdown,
    /// Another receiver with a higher or equal owner level took the partition.
    OwnershipLost,
    /// The evaluator stopped accepting batches.
    EvaluatorGone,
}

/// A partition reader's state, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    /// Opening its receiver.
    Attaching,
    /// Receiver open and reading.
    Attached,
    /// Failing since `since` (the first failure of the current streak,
    /// kept across reconnect attempts), retrying.
    Retrying {
        /// The last failure.
        reason: String,
        /// When the streak began.
        since: std::time::Instant,
    },
    /// A failure that retrying is unlikely to cure (authorization, a
    /// missing hub or partition): not ready at once; still retried slowly
    /// so that fixing the role assignment recovers without a restart.
    Failing(String),
    /// Taken over by another instance.
    Lost,
    /// Stopped by shutdown.
    Stopped,
}

impl PartitionState {
    /// Mirrors the state into its readiness check: attached is ok; retrying
    /// is ok for a grace period; attaching, lost and stopped are failing.
    pub fn apply(&self, check: &HealthCheck) {
        self.apply_at(check, std::time::Instant::now());
    }

    /// [`apply`](Self::apply) as of `now`.
    fn apply_at(&self, check: &HealthCheck, now: std::time::Instant) {
        match self {
            PartitionState::Attached => check.set_ok(),
            PartitionState::Attaching => check.set_failing("attaching the receiver"),
            PartitionState::Retrying { reason, since } => {
                match RETRY_GRACE.checked_sub(now.saturating_duration_since(*since)) {
                    Some(left) if !left.is_zero() => check.set_retrying(reason.clone(), left),
                    _ => check.set_failing(format!(
                        "retrying for over {}s: {reason}",
                        RETRY_GRACE.as_secs()
                    )),
                }
            }
            PartitionState::Failing(reason) => check.set_failing(reason.clone()),
            PartitionState::Lost => check.set_failing(
                "taken over by a receiver with a higher owner level (another instance?)",
            ),
            PartitionState::Stopped => check.set_failing("stopped"),
        }
    }
}

// ---------------------------------------------------------------------------
// Counters (plain atomics; the service mirrors them into Prometheus)
// ---------------------------------------------------------------------------

/// Per-partition counters and state, shared by readers, evaluator and the
/// metrics upkeep.
#[derive(Debug)]
struct PartitionStats {
    ownership_lost: AtomicU64,
    reconnects: AtomicU64,
    redelivered: AtomicU64,
    /// `i64::MIN` until the first properties read.
    last_enqueued: AtomicI64,
    /// The committed checkpoint (`i64::MIN` before any) and its enqueued
    /// time, Unix ms; set by the evaluator.
    committed: AtomicI64,
    committed_enqueued_ms: AtomicI64,
    state: Mutex<PartitionState>,
}

/// Counters of the source, keyed by partition id.
#[derive(Debug)]
pub struct SourceStats {
    partitions: HashMap<String, PartitionStats>,
    /// Indexed like [`ConnectionErrorKind::ALL`].
    connection_errors: Vec<AtomicU64>,
}

impl SourceStats {
    /// Zeroed counters for these partitions.
    pub fn new(partitions: &[String]) -> Self {
        SourceStats {
            partitions: partitions
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        PartitionStats {
                            ownership_lost: AtomicU64::new(0),
                            reconnects: AtomicU64::new(0),
                            redelivered: AtomicU64::new(0),
                            last_enqueued: AtomicI64::new(i64::MIN),
                            committed: AtomicI64::new(i64::MIN),
                            committed_enqueued_ms: AtomicI64::new(0),
                            state: Mutex::new(PartitionState::Attaching),
                        },
                    )
                })
                .collect(),
            connection_errors: ConnectionErrorKind::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The partition ids, sorted.
    pub fn partitions(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.partitions.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn get(&self, p: &str) -> Option<&PartitionStats> {
        self.partitions.get(p)
    }

    /// Times the partition was taken over.
    pub fn ownership_lost(&self, p: &str) -> u64 {
        self.get(p)
            .map_or(0, |s| s.ownership_lost.load(Ordering::Relaxed))
    }

    /// Receiver reopenings after a transient failure or a replay.
    pub fn reconnects(&self, p: &str) -> u64 {
        self.get(p)
            .map_or(0, |s| s.reconnects.load(Ordering::Relaxed))
    }

    /// Events received again (at or below what was already forwarded or
    /// committed) and skipped.
    pub fn redelivered(&self, p: &str) -> u64 {
        self.get(p)
            .map_or(0, |s| s.redelivered.load(Ordering::Relaxed))
    }

    /// Transient errors of this kind, all partitions together.
    pub fn connection_errors(&self, kind: ConnectionErrorKind) -> u64 {
        ConnectionErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.connection_errors[i].load(Ordering::Relaxed))
    }

    /// Counts an event skipped because it was already committed.
    pub fn duplicate_skipped(&self, p: &str) {
        if let Some(s) = self.get(p) {
            s.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The partition's last enqueued sequence number, from the latest
    /// properties read.
    pub fn last_enqueued_sequence_number(&self, p: &str) -> Option<i64> {
        self.get(p)
            .map(|s| s.last_enqueued.load(Ordering::Relaxed))
            .filter(|v| *v != i64::MIN)
    }

    /// Records a committed checkpoint (the evaluator, after its commit).
    pub fn set_committed(&self, p: &str, sequence_number: i64, enqueued_time_ms: i64) {
        if let Some(s) = self.get(p) {
            s.committed_enqueued_ms
                .store(enqueued_time_ms, Ordering::Relaxed);
            s.committed.store(sequence_number, Ordering::Relaxed);
        }
    }

    /// The committed checkpoint's sequence number and enqueued time (ms).
    pub fn committed(&self, p: &str) -> Option<(i64, i64)> {
        let s = self.get(p)?;
        let seq = s.committed.load(Ordering::Relaxed);
        (seq != i64::MIN).then(|| (seq, s.committed_enqueued_ms.load(Ordering::Relaxed)))
    }

    /// The reader's current state.
    pub fn partition_state(&self, p: &str) -> Option<PartitionState> {
        self.get(p).map(|s| lock(&s.state).clone())
    }

    fn set_state(&self, p: &str, state: PartitionState) {
        if let Some(s) = self.get(p) {
            *lock(&s.state) = state;
        }
    }

    fn count_error(&self, kind: ConnectionErrorKind) {
        if let Some(i) = ConnectionErrorKind::ALL.iter().position(|k| *k == kind) {
            self.connection_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn add(&self, p: &str, field: impl Fn(&PartitionStats) -> &AtomicU64) {
        if let Some(s) = self.get(p) {
            field(s).fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Error classification (pure)
// ---------------------------------------------------------------------------

/// What a receiver error means for its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The partition was taken over: stop this reader.
    OwnershipLost,
    /// Retry with backoff; counted under this kind.
    Transient(ConnectionErrorKind),
    /// Unlikely to pass by itself (unauthorized, not found): reported as
    /// failing at once, retried at the longest backoff.
    Permanent(ConnectionErrorKind),
}

/// Classifies an SDK error. `ConsumerDisconnected` is typed; the rest is
/// recognised from the error text, because the AMQP error kinds are not
/// re-exported by the SDK (and every non-ownership error is retried alike:
/// the kind only labels the counter).
pub fn classify(error: &EventHubsError) -> ErrorClass {
    if matches!(error.kind, ErrorKind::ConsumerDisconnected(_)) {
        return ErrorClass::OwnershipLost;
    }
    let text = format!("{error} {:?}", error.kind).to_ascii_lowercase();
    let kind = classify_text(&text);
    let permanent = [
        "unauthorized",
        "forbidden",
        "not found",
        "notfound",
        "does not exist",
    ]
    .iter()
    .any(|n| text.contains(n));
    if permanent {
        ErrorClass::Permanent(kind)
    } else {
        ErrorClass::Transient(kind)
    }
}

/// The counter label for a transient error, from its text.
pub fn classify_text(text: &str) -> ConnectionErrorKind {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["link:stolen", "consumerdisconnected"]) {
        // Typed errors are caught before; a stolen link inside another
        // error still must not be retried blindly, but it is counted here.
        ConnectionErrorKind::LinkDetached
    } else if has(&["server-busy", "serverbusy", "throttl", "quota"]) {
        ConnectionErrorKind::ServiceBusy
    } else if has(&[
        "unauthorized",
        "forbidden",
        "authenticat",
        "access token",
        "sas token",
        "get_token",
        "cbs",
        "put-token",
        "credential",
    ]) {
        ConnectionErrorKind::Auth
    } else if has(&["timeout", "timed out", "elapsed"]) {
        ConnectionErrorKind::Timeout
    } else if has(&["detach", "linkclosed", "link closed", "link:"]) {
        ConnectionErrorKind::LinkDetached
    } else if has(&["refused", "dns", "resolve", "tls", "handshake", "websocket"]) {
        ConnectionErrorKind::Connect
    } else if has(&[
        "connection",
        "reset",
        "broken pipe",
        "closed",
        "dropped",
        "eof",
    ]) {
        ConnectionErrorKind::ConnectionClosed
    } else {
        ConnectionErrorKind::Other
    }
}

// ---------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------

/// Opens `ConsumerClient`s: the secret and credential are resolved once,
/// at start, so a reader can replace a broken client without re-reading
/// configuration.
struct ClientFactory {
    config: EventHubsConfig,
    connection_string: Option<String>,
    credential: Option<Arc<dyn TokenCredential>>,
}

impl ClientFactory {
    fn new(config: &EventHubsConfig) -> Result<Self, SourceError> {
        let connection_string = match &config.auth {
            AuthConfig::ConnectionString { env, file } => {
                Some(read_secret(env.as_deref(), file.as_ref())?)
            }
            _ => None,
        };
        Ok(ClientFactory {
            config: config.clone(),
            connection_string,
            credential: credential(&config.auth)?,
        })
    }

    async fn open(&self) -> Result<ConsumerClient, EventHubsError> {
        let config = &self.config;
        let mut builder = ConsumerClient::builder()
            .with_consumer_group(config.consumer_group.clone())
            .with_application_id(format!("firstseen/{}", env!("CARGO_PKG_VERSION")))
            .with_transport(match config.transport {
                Transport::Amqp => AmqpTransport::Tcp,
                Transport::AmqpWebsockets => AmqpTransport::WebSocket,
            });
        if let Some(endpoint) = &config.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        match (&self.connection_string, &self.credential) {
            (Some(cs), _) => {
                builder
                    .open_with_connection_string(cs, Some(&config.event_hub))
                    .await
            }
            (None, Some(credential)) => {
                builder
                    .open(
                        &config.namespace,
                        config.event_hub.clone(),
                        credential.clone(),
                    )
                    .await
            }
            (None, None) => Err(EventHubsError::from(ErrorKind::SimpleMessage(
                "no credential configured".into(),
            ))),
        }
    }
}

/// Closes a client without waiting on a dead connection for ever.
async fn close_client(client: ConsumerClient) {
    if tokio::time::timeout(CLOSE_TIMEOUT, client.close())
        .await
        .is_err()
    {
        tracing::debug!("closing an Event Hubs client timed out");
    }
}

/// A connected Event Hubs client and the hub's partition list.
pub struct EventHubsSource {
    /// For hub properties and the lag poller.
    client: ConsumerClient,
    /// Each partition reader opens (and, after a failure, replaces) its
    /// own client, so that one broken AMQP connection or session cannot
    /// wedge the other partitions.
    factory: Arc<ClientFactory>,
    config: EventHubsConfig,
    partition_ids: Vec<String>,
}

impl std::fmt::Debug for EventHubsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubsSource")
            .field("namespace", &self.config.namespace)
            .field("event_hub", &self.config.event_hub)
            .field("partitions", &self.partition_ids)
            .finish()
    }
}

impl EventHubsSource {
    /// Builds the credential, opens the client and reads the hub's
    /// partitions. Everything that can be wrong with the configuration or
    /// the credentials shows up here, before anything is consumed.
    ///
    /// # Errors
    /// A bad configuration, a missing secret, a credential that cannot be
    /// built, or a connection / authentication / hub-properties failure
    /// (after the SDK's own retries).
    pub async fn connect(config: &EventHubsConfig) -> Result<Self, SourceError> {
        config.validate()?;
        let factory = Arc::new(ClientFactory::new(config)?);
        let connect_error = |what: &'static str| {
            let namespace = config.namespace.clone();
            let event_hub = config.event_hub.clone();
            move |source| SourceError::Connect {
                what,
                namespace,
                event_hub,
                source: Box::new(source),
            }
        };
        let client = factory
            .open()
            .await
            .map_err(connect_error("opening the Event Hubs connection"))?;
        // The first authenticated call: a wrong credential, a missing role
        // (Azure Event Hubs Data Receiver) or a wrong hub name fails here.
        let properties = client.get_eventhub_properties().await.map_err(connect_error(
            "reading the event hub's properties (check the hub name and that the identity has the Azure Event Hubs Data Receiver role)",
        ))?;
        if properties.partition_ids.is_empty() {
            return Err(SourceError::Config {
                key: "event_hub",
                message: format!("event hub {} reports no partitions", config.event_hub),
            });
        }
        let partition_ids = match &config.partitions {
            None => properties.partition_ids,
            Some(wanted) => {
                if let Some(unknown) = wanted
                    .iter()
                    .find(|p| !properties.partition_ids.contains(p))
                {
                    return Err(SourceError::Config {
                        key: "partitions",
                        message: format!(
                            "partition {unknown:?} is not one of the hub's partitions {:?}",
                            properties.partition_ids
                        ),
                    });
                }
                wanted.clone()
            }
        };
        Ok(EventHubsSource {
            client,
            factory,
            config: config.clone(),
            partition_ids,
        })
    }

    /// The hub's partition ids.
    pub fn partition_ids(&self) -> &[String] {
        &self.partition_ids
    }

    /// Spawns one reader per partition into `tasks`, plus a lag poller that
    /// ends with `stop`. Partitions in `start_after` resume strictly after
    /// their checkpoint; the others start at the configured position.
    pub fn spawn_readers(
        self,
        start_after: HashMap<String, StartAfter>,
        tx: mpsc::Sender<PartitionBatch>,
        stop: CancellationToken,
        stats: Arc<SourceStats>,
        tasks: &mut JoinSet<PartitionExit>,
    ) {
        for partition in &self.partition_ids {
            let reader = PartitionReader {
                factory: self.factory.clone(),
                client: None,
                config: self.config.clone(),
                partition: Arc::from(partition.as_str()),
                resume_after: start_after.get(partition).map(|s| s.sequence_number),
                initial: None,
                failing_since: None,
                tx: tx.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
            };
            tasks.spawn(reader.run());
        }
        tokio::spawn(poll_lag(
            self.client,
            self.factory,
            self.partition_ids,
            stats,
            stop,
        ));
    }
}

/// Reads each partition's last enqueued sequence number for the lag gauge.
/// A failing poller replaces its client after this many failed rounds.
const LAG_POLL_FAILURES_BEFORE_RECONNECT: u32 = 3;

async fn poll_lag(
    client: ConsumerClient,
    factory: Arc<ClientFactory>,
    partitions: Vec<String>,
    stats: Arc<SourceStats>,
    stop: CancellationToken,
) {
    let mut client = Some(client);
    let mut failed_rounds = 0;
    loop {
        if client.is_none() {
            client = tokio::time::timeout(CALL_TIMEOUT, factory.open())
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(c) = &client {
            let mut failed = false;
            for p in &partitions {
                if stop.is_cancelled() {
                    break;
                }
                let props = tokio::time::timeout(CALL_TIMEOUT, c.get_partition_properties(p)).await;
                match props.unwrap_or_else(|_| {
                    Err(EventHubsError::from(ErrorKind::SimpleMessage(
                        "reading partition properties timed out".into(),
                    )))
                }) {
                    Ok(props) => {
                        if let Some(s) = stats.get(p) {
                            s.last_enqueued
                                .store(props.last_enqueued_sequence_number, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        failed = true;
                        tracing::debug!(partition = %p, error = %e, "reading partition properties for lag failed");
                    }
                }
            }
            failed_rounds = if failed { failed_rounds + 1 } else { 0 };
            if failed_rounds >= LAG_POLL_FAILURES_BEFORE_RECONNECT {
                failed_rounds = 0;
                if let Some(c) = client.take() {
                    close_client(c).await;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(LAG_POLL_INTERVAL) => {}
        }
    }
    if let Some(c) = client {
        close_client(c).await;
    }
}

/// How one receiver session ended.
enum Pump {
    Shutdown,
    EvaluatorGone,
    /// The SDK replayed old events (an internal reconnect): reopen after
    /// what was forwarded.
    Replay,
    /// The stream ended without an error.
    Ended,
    /// Opening took longer than [`CALL_TIMEOUT`].
    TimedOut,
    Failed(EventHubsError),
}

struct PartitionReader {
    factory: Arc<ClientFactory>,
    /// This reader's client; `None` after a failure until reopened.
    client: Option<ConsumerClient>,
    config: EventHubsConfig,
    partition: Arc<str>,
    /// The last sequence number handed to the evaluator (initially the
    /// committed checkpoint). The next receiver starts strictly after it.
    resume_after: Option<i64>,
    /// The start position chosen for a partition without a checkpoint,
    /// decided once: a reopen before the first event must not re-pin
    /// `latest` (events published in between would be skipped).
    initial: Option<StartPosition>,
    /// First failure of the current failure streak (readiness).
    failing_since: Option<std::time::Instant>,
    tx: mpsc::Sender<PartitionBatch>,
    stop: CancellationToken,
    stats: Arc<SourceStats>,
}

impl PartitionReader {
    async fn run(mut self) -> PartitionExit {
        let policy = RetryPolicy {
            initial_interval: self.config.reconnect_initial_backoff,
            max_interval: self.config.reconnect_max_backoff,
            max_age: Duration::MAX,
        };
        let mut jitter = FullJitter::new();
        let mut failures: u32 = 0;
        let mut replays: u32 = 0;
        let p = self.partition.clone();
        loop {
            if self.stop.is_cancelled() {
                return self.exit(PartitionExit::Shutdown).await;
            }
            if self.failing_since.is_none() {
                self.stats.set_state(&p, PartitionState::Attaching);
            }
            let stop = self.stop.clone();
            let opened = tokio::select! {
                _ = stop.cancelled() => None,
                opened = tokio::time::timeout(CALL_TIMEOUT, self.open()) => Some(opened),
            };
            let Some(opened) = opened else {
                return self.exit(PartitionExit::Shutdown).await;
            };
            let outcome = match opened {
                Err(_) => Pump::TimedOut,
                Ok(Err(e)) => Pump::Failed(e),
                Ok(Ok(receiver)) => {
                    if self.failing_since.is_none() {
                        self.stats.set_state(&p, PartitionState::Attached);
                    }
                    let outcome = self.pump(&receiver, &mut failures).await;
                    if tokio::time::timeout(CLOSE_TIMEOUT, receiver.close())
                        .await
                        .is_err()
                    {
                        tracing::debug!(partition = %p, "receiver close timed out");
                    }
                    outcome
                }
            };
            match outcome {
                Pump::Shutdown => return self.exit(PartitionExit::Shutdown).await,
                Pump::EvaluatorGone => return self.exit(PartitionExit::EvaluatorGone).await,
                Pump::Replay => {
                    self.stats.add(&p, |s| &s.reconnects);
                    tracing::info!(
                        partition = %p,
                        resume_after = ?self.resume_after,
                        "the client re-attached from its original position; reopening after the last forwarded event"
                    );
                    // The SDK just recovered this client's connection or
                    // link; a receiver reopened on it can collide with the
                    // recovered link's name. Start clean.
                    if let Some(client) = self.client.take() {
                        close_client(client).await;
                    }
                    // A receiver that replays again at once must not spin.
                    replays = replays.saturating_add(1);
                    if replays > 1 {
                        let delay = policy.next_delay(replays - 1, None, &mut jitter);
                        tokio::select! {
                            _ = self.stop.cancelled() => return self.exit(PartitionExit::Shutdown).await,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                Pump::Ended | Pump::Failed(_) | Pump::TimedOut => {
                    // A fresh connection next time: the SDK's own recovery
                    // can leave a client with a session it never re-creates.
                    if let Some(client) = self.client.take() {
                        close_client(client).await;
                    }
                    // (counter label, message, a refusal retrying won't cure)
                    let (kind, message, permanent) = match &outcome {
                        Pump::Failed(e) => match classify(e) {
                            ErrorClass::OwnershipLost => {
                                self.stats.add(&p, |s| &s.ownership_lost);
                                self.stats.set_state(&p, PartitionState::Lost);
                                tracing::warn!(
                                    partition = %p,
                                    error = %e,
                                    "partition taken over by a receiver with a higher owner level; this reader stops, the other partitions go on"
                                );
                                return self.exit(PartitionExit::OwnershipLost).await;
                            }
                            ErrorClass::Transient(kind) => (kind, e.to_string(), false),
                            ErrorClass::Permanent(kind) => (kind, e.to_string(), true),
                        },
                        Pump::TimedOut => (
                            ConnectionErrorKind::Timeout,
                            format!("opening the receiver took over {}s", CALL_TIMEOUT.as_secs()),
                            false,
                        ),
                        _ => (
                            ConnectionErrorKind::ConnectionClosed,
                            "the receiver stream ended".to_string(),
                            false,
                        ),
                    };
                    failures = failures.saturating_add(1);
                    replays = 0;
                    self.stats.count_error(kind);
                    self.stats.add(&p, |s| &s.reconnects);
                    let since = *self
                        .failing_since
                        .get_or_insert_with(std::time::Instant::now);
                    let reason = format!("{}: {message}", kind.as_str());
                    let delay = if permanent {
                        policy.max_interval
                    } else {
                        policy.next_delay(failures, None, &mut jitter)
                    };
                    if permanent {
                        tracing::error!(
                            partition = %p,
                            kind = kind.as_str(),
                            error = %message,
                            retry_in_ms = delay.as_millis() as u64,
                            "receiver refused (check the identity's Azure Event Hubs Data Receiver role, the hub and the consumer group); retrying slowly"
                        );
                        self.stats.set_state(&p, PartitionState::Failing(reason));
                    } else {
                        tracing::warn!(
                            partition = %p,
                            kind = kind.as_str(),
                            error = %message,
                            retry_in_ms = delay.as_millis() as u64,
                            consecutive_failures = failures,
                            "receiver failed; reconnecting"
                        );
                        self.stats
                            .set_state(&p, PartitionState::Retrying { reason, since });
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return self.exit(PartitionExit::Shutdown).await,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn exit(&mut self, exit: PartitionExit) -> PartitionExit {
        if exit != PartitionExit::OwnershipLost {
            self.stats
                .set_state(&self.partition, PartitionState::Stopped);
        }
        if let Some(client) = self.client.take() {
            close_client(client).await;
        }
        exit
    }

    async fn open(&mut self) -> Result<azure_messaging_eventhubs::EventReceiver, EventHubsError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => self.factory.open().await?,
        };
        let client = self.client.insert(client);
        let start_position = match self.resume_after {
            Some(seq) => StartPosition {
                location: StartLocation::SequenceNumber(seq),
                inclusive: false,
            },
            None => match &self.initial {
                Some(position) => position.clone(),
                None => {
                    let position = initial_position(client, &self.config, &self.partition).await?;
                    self.initial = Some(position.clone());
                    position
                }
            },
        };
        tracing::debug!(partition = %self.partition, ?start_position, "opening receiver");
        client
            .open_receiver_on_partition(
                self.partition.to_string(),
                Some(OpenReceiverOptions {
                    owner_level: Some(self.config.owner_level),
                    prefetch: Some(self.config.prefetch),
                    start_position: Some(start_position),
                    ..Default::default()
                }),
            )
            .await
    }

    /// Reads one receiver until it fails, replays, or shutdown; hands
    /// batches to the evaluator.
    async fn pump(
        &mut self,
        receiver: &azure_messaging_eventhubs::EventReceiver,
        failures: &mut u32,
    ) -> Pump {
        let stream = receiver.stream_events();
        futures::pin_mut!(stream);
        let mut batch: Vec<ReceivedEvent> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut deadline: Option<Instant> = None;
        // A failure streak ends with the first event, or once the receiver
        // has stayed up for HEALTHY_AFTER (a quiet partition).
        let mut healthy_at = self.failing_since.map(|_| Instant::now() + HEALTHY_AFTER);
        loop {
            let item = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    return match self.flush(&mut batch).await {
                        Ok(()) => Pump::Shutdown,
                        Err(()) => Pump::EvaluatorGone,
                    };
                }
                // The evaluator stopped (a failed commit): stop reading now
                // rather than at the next event of a quiet partition.
                _ = self.tx.closed() => return Pump::EvaluatorGone,
                _ = sleep_until(healthy_at) => {
                    healthy_at = None;
                    self.mark_healthy();
                    continue;
                }
                _ = sleep_until(deadline) => {
                    deadline = None;
                    batch_bytes = 0;
                    if self.flush(&mut batch).await.is_err() {
                        return Pump::EvaluatorGone;
                    }
                    continue;
                }
                item = stream.next() => item,
            };
            let outcome = match item {
                None => Some(Pump::Ended),
                Some(Err(e)) => Some(Pump::Failed(e)),
                Some(Ok(event)) => {
                    *failures = 0;
                    healthy_at = None;
                    self.mark_healthy();
                    match self.accept(event) {
                        Accepted::Event(ev) => {
                            if let Some(last) = self.resume_after {
                                if ev.sequence_number > last + 1 {
                                    // Retention removed events after the
                                    // checkpoint (firstseen was down longer
                                    // than the hub keeps events).
                                    tracing::warn!(
                                        partition = %self.partition,
                                        after = last,
                                        next = ev.sequence_number,
                                        missing = ev.sequence_number - last - 1,
                                        "sequence numbers skipped: events expired from the hub before they were read"
                                    );
                                }
                            }
                            self.resume_after = Some(ev.sequence_number);
                            batch_bytes += ev.body.len();
                            batch.push(ev);
                            if batch.len() == 1 {
                                deadline = Some(Instant::now() + self.config.batch_max_wait);
                            }
                            if batch.len() >= self.config.batch_max_events
                                || batch_bytes >= BATCH_MAX_BYTES
                            {
                                deadline = None;
                                batch_bytes = 0;
                                if self.flush(&mut batch).await.is_err() {
                                    return Pump::EvaluatorGone;
                                }
                            }
                            None
                        }
                        Accepted::Replayed => Some(Pump::Replay),
                        Accepted::Skipped => None,
                    }
                }
            };
            if let Some(outcome) = outcome {
                // Whatever ends this receiver, what was read is handed over.
                if self.flush(&mut batch).await.is_err() {
                    return Pump::EvaluatorGone;
                }
                return outcome;
            }
        }
    }

    /// Ends a failure streak: the partition is attached and reading.
    fn mark_healthy(&mut self) {
        self.failing_since = None;
        self.stats
            .set_state(&self.partition, PartitionState::Attached);
    }

    fn accept(&self, event: ReceivedEventData) -> Accepted {
        let Some(sequence_number) = event.sequence_number() else {
            // Without a sequence number the event cannot be checkpointed or
            // deduplicated; the service always sets one.
            tracing::error!(partition = %self.partition, "event without x-opt-sequence-number skipped");
            self.stats.count_error(ConnectionErrorKind::Other);
            return Accepted::Skipped;
        };
        if self
            .resume_after
            .is_some_and(|last| sequence_number <= last)
        {
            self.stats.add(&self.partition, |s| &s.redelivered);
            return Accepted::Replayed;
        }
        let body = match data_body(event.raw_amqp_message()) {
            Some(body) => body,
            None => {
                // Not a single Data section: the decoder counts and
                // dead-letters the empty body with this position.
                tracing::warn!(
                    partition = %self.partition,
                    sequence_number,
                    "event body is not a single AMQP Data section"
                );
                Vec::new()
            }
        };
        Accepted::Event(ReceivedEvent {
            partition: self.partition.clone(),
            sequence_number,
            offset: event.offset().clone(),
            enqueued_time_ms: event.enqueued_time().map(system_time_ms),
            body,
        })
    }

    /// Hands the batch over (waits while the evaluator is busy). `Err`
    /// when the evaluator is gone.
    async fn flush(&self, batch: &mut Vec<ReceivedEvent>) -> Result<(), ()> {
        if batch.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(batch);
        self.tx
            .send(PartitionBatch {
                partition: self.partition.clone(),
                events,
            })
            .await
            .map_err(|_| ())
    }
}

/// The configured start, with `latest` pinned to the partition's current
/// last sequence number (see the module doc for why).
async fn initial_position(
    client: &ConsumerClient,
    config: &EventHubsConfig,
    partition: &str,
) -> Result<StartPosition, EventHubsError> {
    if config.start != StartFrom::Latest {
        return Ok(config.start_position());
    }
    let props = client.get_partition_properties(partition).await?;
    Ok(if props.is_empty {
        // Nothing retained: everything that arrives from now on is new.
        StartPosition {
            location: StartLocation::Earliest,
            inclusive: false,
        }
    } else {
        StartPosition {
            location: StartLocation::SequenceNumber(props.last_enqueued_sequence_number),
            inclusive: false,
        }
    })
}

enum Accepted {
    Event(ReceivedEvent),
    Replayed,
    Skipped,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The event's body when it is one AMQP Data section (what Activity Log
/// exports send), else `None`. Read from the raw message: the SDK's
/// `event_data()` would first build an `EventData` holding a copy of the
/// body and of the properties, which would then be copied again.
fn data_body(message: &AmqpMessage) -> Option<Vec<u8>> {
    match &message.body {
        AmqpMessageBody::Binary(sections) if sections.len() == 1 => Some(sections[0].clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_data_section_is_a_body() {
        let with = |body: AmqpMessageBody| AmqpMessage {
            body,
            ..AmqpMessage::default()
        };
        let one = with(AmqpMessageBody::Binary(vec![b"{\"records\":[]}".to_vec()]));
        assert_eq!(data_body(&one).as_deref(), Some(&b"{\"records\":[]}"[..]));
        // What the SDK's `event_data().body()` gives for the same messages.
        assert_eq!(
            ReceivedEventData::from(one).event_data().body(),
            Some(&b"{\"records\":[]}"[..])
        );
        let empty_section = with(AmqpMessageBody::Binary(vec![Vec::new()]));
        assert_eq!(data_body(&empty_section), Some(Vec::new()));
        for other in [
            AmqpMessageBody::Binary(vec![b"a".to_vec(), b"b".to_vec()]),
            AmqpMessageBody::Binary(Vec::new()),
            AmqpMessageBody::Value(azure_messaging_eventhubs::models::AmqpValue::String(
                "{}".into(),
            )),
            AmqpMessageBody::Empty,
        ] {
            let message = with(other);
            assert_eq!(data_body(&message), None, "{:?}", message.body);
            assert_eq!(ReceivedEventData::from(message).event_data().body(), None);
        }
    }

    fn parse(toml_text: &str) -> Result<EventHubsConfig, String> {
        toml::from_str::<EventHubsConfig>(toml_text).map_err(|e| e.to_string())
    }

    const BASE: &str = r#"
namespace = "myns.servicebus.windows.net"
event_hub = "insights-activity-logs"
[auth]
kind = "connection-string"
env = "EH_CONN"
"#;

    #[test]
    fn defaults_are_applied() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.consumer_group, "$Default");
        assert_eq!(c.start, StartFrom::Latest);
        assert_eq!(c.batch_max_events, 256);
        assert_eq!(c.batch_max_wait, Duration::from_millis(50));
        assert_eq!(c.transport, Transport::Amqp);
        c.validate().unwrap();
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(
            "earliest".parse::<StartFrom>().unwrap(),
            StartFrom::Earliest
        );
        let t = "2026-12-01T00:00:00Z".parse::<StartFrom>().unwrap();
        assert_eq!(
            t,
            StartFrom::EnqueuedTime(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200))
        );
        let err = "yesterday".parse::<StartFrom>().unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        let err = parse(&format!("{BASE}\nsecret = \"x\"\n")).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse("namespace = \"a.b\"\nevent_hub = \"h\"\n[auth]\nkind = \"password\"\n")
            .unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
        let err = parse(&BASE.replace("[auth]", "transport = \"udp\"\n[auth]")).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = parse(BASE).unwrap();
        c.namespace = "amqps://myns".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("eventhubs.namespace"));
        let mut c = parse(BASE).unwrap();
        c.auth = AuthConfig::ConnectionString {
            env: None,
            file: None,
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        let mut c = parse(BASE).unwrap();
        c.batch_max_events = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("eventhubs.batch_max_events"));
        let mut c = parse(BASE).unwrap();
        c.reconnect_max_backoff = Duration::from_millis(1);
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_auth_kind_parses() {
        for auth in [
            "kind = \"workload-identity\"",
            "kind = \"managed-identity\"\nclient_id = \"00000000-0000-0000-0000-000000000000\"",
            "kind = \"client-secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nsecret_file = \"/run/s\"",
            "kind = \"developer-tools\"",
            "kind = \"connection-string\"\nfile = \"/run/secrets/eh\"",
        ] {
            let text = format!("namespace = \"a.b\"\nevent_hub = \"h\"\n[auth]\n{auth}\n");
            let c = parse(&text).unwrap_or_else(|e| panic!("{auth}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{auth}: {e}"));
            // The effective configuration round-trips (check-config prints it).
            let printed = toml::to_string(&c).unwrap();
            assert_eq!(parse(&printed).unwrap(), c, "{printed}");
        }
    }

    #[test]
    fn missing_secret_is_a_clear_error() {
        let err = read_secret(Some("FIRSTSEEN_TEST_SURELY_UNSET_VAR"), None).unwrap_err();
        assert!(
            err.to_string().contains("FIRSTSEEN_TEST_SURELY_UNSET_VAR"),
            "{err}"
        );
        let err = read_secret(None, Some(&PathBuf::from("/nonexistent/secret"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
    }

    #[test]
    fn error_text_maps_to_bounded_kinds() {
        use ConnectionErrorKind as K;
        assert_eq!(
            classify_text("amqp error: com.microsoft:server-busy"),
            K::ServiceBusy
        );
        assert_eq!(classify_text("cbs put-token failed: unauthorized"), K::Auth);
        assert_eq!(classify_text("operation timed out"), K::Timeout);
        assert_eq!(classify_text("link detached by remote"), K::LinkDetached);
        assert_eq!(classify_text("connection refused"), K::Connect);
        assert_eq!(
            classify_text("connection reset by peer"),
            K::ConnectionClosed
        );
        assert_eq!(classify_text("something odd"), K::Other);
        assert_eq!(classify_text("cancellation token fired"), K::Other);
    }

    #[test]
    fn refusals_are_permanent_and_busy_is_transient() {
        let err = |m: &'static str| EventHubsError::from(ErrorKind::SimpleMessage(m.into()));
        assert_eq!(
            classify(&err("CBS put-token: status 401 Unauthorized")),
            ErrorClass::Permanent(ConnectionErrorKind::Auth)
        );
        assert!(matches!(
            classify(&err(
                "The messaging entity 'x' could not be found (NotFound)"
            )),
            ErrorClass::Permanent(_)
        ));
        assert_eq!(
            classify(&err("com.microsoft:server-busy")),
            ErrorClass::Transient(ConnectionErrorKind::ServiceBusy)
        );
        assert_eq!(
            classify(&EventHubsError::from(ErrorKind::ConsumerDisconnected(None))),
            ErrorClass::OwnershipLost
        );
    }

    #[test]
    fn partition_states_drive_readiness() {
        let health = crate::health::Health::new();
        let check = health.register("partition-0", "attaching");
        PartitionState::Attached.apply(&check);
        assert!(health.report().is_ready());
        PartitionState::Retrying {
            reason: "connect: refused".into(),
            since: std::time::Instant::now(),
        }
        .apply(&check);
        assert!(
            health.report().is_ready(),
            "retrying is ready within the grace period"
        );
        // A streak older than the grace period fails, however often the
        // reader went through attaching in between.
        let since = std::time::Instant::now();
        PartitionState::Attached.apply(&check);
        PartitionState::Retrying {
            reason: "connect: refused".into(),
            since,
        }
        .apply_at(&check, since + RETRY_GRACE * 2);
        assert!(!health.report().is_ready());
        PartitionState::Failing("auth: unauthorized".into()).apply(&check);
        assert!(!health.report().is_ready(), "a refusal fails at once");
        PartitionState::Lost.apply(&check);
        assert!(!health.report().is_ready());
    }

    #[test]
    fn stats_count_per_partition_and_kind() {
        let stats = SourceStats::new(&["0".into(), "1".into()]);
        stats.duplicate_skipped("1");
        stats.add("0", |s| &s.ownership_lost);
        stats.count_error(ConnectionErrorKind::Timeout);
        assert_eq!(stats.redelivered("1"), 1);
        assert_eq!(stats.redelivered("0"), 0);
        assert_eq!(stats.ownership_lost("0"), 1);
        assert_eq!(stats.connection_errors(ConnectionErrorKind::Timeout), 1);
        assert_eq!(stats.connection_errors(ConnectionErrorKind::Auth), 0);
        assert_eq!(stats.last_enqueued_sequence_number("0"), None);
        assert_eq!(stats.partitions(), vec!["0".to_string(), "1".to_string()]);
        // Unknown partitions are ignored, not a panic.
        stats.duplicate_skipped("9");
        assert_eq!(stats.partition_state("9"), None);
    }
}
