//! `[[sinks]]` configuration: the raw serde shapes (unknown keys rejected,
//! durations as humantime strings such as `"30s"`) and their validation.
//!
//! ```toml
//! [[sinks]]
//! type = "webhook"
//! name = "soar"                         # names this sink's outbox; unique
//! url = "https://soar.example.com/hooks/firstseen"
//! signing_secrets = [{ env = "FIRSTSEEN_WEBHOOK_SECRET" }]
//! connect_timeout = "5s"
//! request_timeout = "10s"
//! concurrency = 4
//! extra_ca_file = "/etc/firstseen/soar-ca.pem"
//! headers = { Authorization = { file = "/run/secrets/soar-token" } }
//! retry = { initial_interval = "1s", max_interval = "5m", max_age = "24h" }
//!
//! [[sinks]]
//! type = "ndjson"
//! name = "debug"
//! path = "/var/log/firstseen/alerts.ndjson"   # omit for stdout
//! ```
//!
//! Reading secrets (environment, files) and building HTTP clients is I/O and
//! lives in the sinks' `from_config`; [`validate_sinks`] is pure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::retry::RetryPolicy;

/// A configuration error: names the key and shows a correct value.
#[derive(Debug, thiserror::Error)]
#[error("sinks.{sink}.{key}: {message}")]
pub struct SinkConfigError {
    /// The sink's name.
    pub sink: String,
    /// The offending key.
    pub key: String,
    /// What is wrong, with an example of a correct value.
    pub message: String,
}

impl SinkConfigError {
    pub(crate) fn new(sink: &str, key: &str, message: impl Into<String>) -> Self {
        SinkConfigError {
            sink: sink.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// One `[[sinks]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// HTTPS POST per alert, Standard Webhooks signed.
    Webhook(WebhookConfig),
    /// One JSON line per alert to stdout or a file.
    Ndjson(NdjsonConfig),
}

impl SinkConfig {
    /// The sink's name (its outbox key).
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::Ndjson(c) => &c.name,
        }
    }
}

/// Where a secret or header value comes from. Exactly one key, e.g.
/// `{ env = "SOAR_TOKEN" }`, `{ file = "/run/secrets/token" }` or, for
/// values that are not secret, `{ value = "firstseen" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// An environment variable's value.
    Env(String),
    /// A file's content, trailing newline removed (Kubernetes/Docker secrets).
    File(PathBuf),
    /// A literal (not for secrets: config files end up in backups and tickets).
    Value(String),
}

impl SecretSource {
    /// Reads the value.
    ///
    /// # Errors
    /// A missing variable, an unreadable file, or an empty value, naming
    /// `sink` and `key`.
    pub fn resolve(&self, sink: &str, key: &str) -> Result<String, SinkConfigError> {
        let value = match self {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                SinkConfigError::new(
                    sink,
                    key,
                    format!("environment variable {var} is not set (or not UTF-8)"),
                )
            })?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    SinkConfigError::new(sink, key, format!("cannot read {}: {e}", path.display()))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            SecretSource::Value(v) => v.clone(),
        };
        if value.is_empty() {
            return Err(SinkConfigError::new(sink, key, "the value is empty"));
        }
        Ok(value)
    }
}

/// `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique sink name; keys this sink's outbox. Example: `"soar"`.
    pub name: String,
    /// Receiver URL. `https://` unless `allow_insecure_http = true`.
    pub url: String,
    /// Permit `http://` URLs (loopback tests, a sidecar on localhost).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Standard Webhooks secrets (`whsec_<base64>`); one, or two while rotating.
    pub signing_secrets: Vec<SecretSource>,
    /// Extra request headers, e.g. `Authorization = { env = "SOAR_TOKEN" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretSource>,
    /// PEM file of extra trusted CAs, added to the system roots.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// TCP + TLS connect timeout. Default `"5s"`.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect to last response byte). Default `"10s"`.
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub request_timeout: Duration,
    /// Requests in flight at once. Default 4.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retry/backoff settings.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How often the outbox is rescanned without a wake-up. Default `"5s"`.
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub poll_interval: Duration,
    /// How long in-flight requests may finish after shutdown starts. Default `"5s"`.
    #[serde(
        default = "default_shutdown_grace",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub shutdown_grace: Duration,
}

/// `retry = { ... }` of a webhook sink; see `sink::retry` for the defaults'
/// rationale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff ceiling. Default `"1s"`.
    #[serde(
        default = "default_initial_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub initial_interval: Duration,
    /// Largest backoff ceiling and `Retry-After` cap. Default `"5m"`.
    #[serde(
        default = "default_max_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub max_interval: Duration,
    /// Age after which an undelivered alert is dead-lettered. Default `"24h"`.
    #[serde(
        default = "default_max_age",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub max_age: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            initial_interval: p.initial_interval,
            max_interval: p.max_interval,
            max_age: p.max_age,
        }
    }
}

impl From<RetryConfig> for RetryPolicy {
    fn from(c: RetryConfig) -> Self {
        RetryPolicy {
            initial_interval: c.initial_interval,
            max_interval: c.max_interval,
            max_age: c.max_age,
        }
    }
}

/// `type = "ndjson"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NdjsonConfig {
    /// Unique sink name; keys this sink's outbox. Example: `"debug"`.
    pub name: String,
    /// File to append to; stdout when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How often the outbox is rescanned without a wake-up. Default `"5s"`.
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub poll_interval: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    4
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_initial_interval() -> Duration {
    RetryPolicy::default().initial_interval
}
fn default_max_interval() -> Duration {
    RetryPolicy::default().max_interval
}
fn default_max_age() -> Duration {
    RetryPolicy::default().max_age
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Printed (by `check-config`) as where the value comes from; a literal
/// `value` is redacted, since people do paste tokens there.
impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            SecretSource::Env(var) => map.serialize_entry("env", var)?,
            SecretSource::File(path) => map.serialize_entry("file", path)?,
            SecretSource::Value(_) => map.serialize_entry("value", "<redacted>")?,
        }
        map.end()
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}: expected a duration such as \"30s\", \"5m\" or \"24h\""
        ))
    })
}

/// Checks every sink and that names are unique (pure; secrets are read
/// later, when the sinks are built).
///
/// # Errors
/// The first problem found, naming the sink and key.
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), SinkConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for sink in sinks {
        let name = sink.name();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SinkConfigError::new(
                name,
                "name",
                "use letters, digits, '-' or '_', e.g. name = \"soar\"",
            ));
        }
        if !seen.insert(name) {
            return Err(SinkConfigError::new(
                name,
                "name",
                "two sinks have this name; each sink needs its own",
            ));
        }
        match sink {
            SinkConfig::Webhook(c) => validate_webhook(c)?,
            SinkConfig::Ndjson(c) => {
                if c.poll_interval.is_zero() {
                    return Err(SinkConfigError::new(
                        name,
                        "poll_interval",
                        "must be > 0, e.g. \"5s\"",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks one webhook sink.
///
/// # Errors
/// The first problem found, naming the key.
pub fn validate_webhook(c: &WebhookConfig) -> Result<(), SinkConfigError> {
    let err = |key: &str, msg: &str| Err(SinkConfigError::new(&c.name, key, msg));
    let url = reqwest::Url::parse(&c.url).map_err(|e| {
        SinkConfigError::new(
            &c.name,
            "url",
            format!("{e}; e.g. url = \"https://soar.example.com/hook\""),
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if c.allow_insecure_http => {}
        "http" => {
            return err(
                "url",
                "plain http:// sends alerts and signatures unencrypted; use https:// or set allow_insecure_http = true",
            )
        }
        _ => return err("url", "the scheme must be https:// (e.g. \"https://soar.example.com/hook\")"),
    }
    if url.host().is_none() {
        return err("url", "the URL has no host");
    }
    if c.signing_secrets.is_empty() || c.signing_secrets.len() > super::signing::MAX_SECRETS {
        return err(
            "signing_secrets",
            "give one secret, or two while rotating: signing_secrets = [{ env = \"FIRSTSEEN_WEBHOOK_SECRET\" }]",
        );
    }
    for name in c.headers.keys() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(SinkConfigError::new(
                &c.name,
                &format!("headers.{name}"),
                "not a valid HTTP header name",
            ));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("webhook-")
            || lower == "content-type"
            || lower == "content-length"
            || lower == "host"
        {
            return Err(SinkConfigError::new(
                &c.name,
                &format!("headers.{name}"),
                "this header is set by firstseen and cannot be overridden",
            ));
        }
    }
    if c.concurrency == 0 || c.concurrency > 256 {
        return err(
            "concurrency",
            "must be between 1 and 256, e.g. concurrency = 4",
        );
    }
    for (key, d) in [
        ("connect_timeout", c.connect_timeout),
        ("request_timeout", c.request_timeout),
        ("poll_interval", c.poll_interval),
        ("retry.initial_interval", c.retry.initial_interval),
        ("retry.max_interval", c.retry.max_interval),
        ("retry.max_age", c.retry.max_age),
    ] {
        if d.is_zero() {
            return err(key, "must be > 0, e.g. \"10s\"");
        }
    }
    if c.retry.max_interval < c.retry.initial_interval {
        return err(
            "retry.max_interval",
            "must be >= retry.initial_interval, e.g. \"5m\"",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        sinks: Vec<SinkConfig>,
    }

    fn parse(toml_text: &str) -> Result<Vec<SinkConfig>, toml::de::Error> {
        toml::from_str::<Root>(toml_text).map(|r| r.sinks)
    }

    const EXAMPLE: &str = r#"
        [[sinks]]
        type = "webhook"
        name = "soar"
        url = "https://soar.example.com/hook"
        signing_secrets = [{ env = "S1" }, { file = "/run/s2" }]
        request_timeout = "30s"
        headers = { Authorization = { env = "TOKEN" } }
        retry = { max_interval = "2m" }

        [[sinks]]
        type = "ndjson"
        name = "debug"
    "#;

    #[test]
    fn parses_both_types_with_defaults() {
        let sinks = parse(EXAMPLE).unwrap();
        validate_sinks(&sinks).unwrap();
        let SinkConfig::Webhook(w) = &sinks[0] else {
            panic!("webhook expected")
        };
        assert_eq!(w.request_timeout, Duration::from_secs(30));
        assert_eq!(w.connect_timeout, Duration::from_secs(5));
        assert_eq!(w.retry.max_interval, Duration::from_secs(120));
        assert_eq!(w.retry.max_age, Duration::from_secs(86_400));
        assert_eq!(w.signing_secrets[1], SecretSource::File("/run/s2".into()));
        assert_eq!(
            w.headers["Authorization"],
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            sinks[1],
            SinkConfig::Ndjson(NdjsonConfig {
                name: "debug".into(),
                path: None,
                poll_interval: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected() {
        let typo = EXAMPLE.replace("request_timeout", "request_timout");
        assert!(parse(&typo)
            .unwrap_err()
            .to_string()
            .contains("request_timout"));
        let bad = EXAMPLE.replace("\"30s\"", "\"thirty\"");
        assert!(parse(&bad).unwrap_err().to_string().contains("30s"));
        let kind = EXAMPLE.replace("\"ndjson\"", "\"kafka\"");
        assert!(parse(&kind).is_err());
    }

    #[test]
    fn http_needs_explicit_opt_in() {
        let http = EXAMPLE.replace("https://soar", "http://soar");
        let sinks = parse(&http).unwrap();
        let e = validate_sinks(&sinks).unwrap_err();
        assert_eq!((e.sink.as_str(), e.key.as_str()), ("soar", "url"));
        assert!(e.to_string().contains("allow_insecure_http"));
        let allowed = http.replace(
            "name = \"soar\"",
            "name = \"soar\"\nallow_insecure_http = true",
        );
        validate_sinks(&parse(&allowed).unwrap()).unwrap();
    }

    #[test]
    fn duplicate_names_and_reserved_headers_are_rejected() {
        let dup = EXAMPLE.replace("name = \"debug\"", "name = \"soar\"");
        assert_eq!(
            validate_sinks(&parse(&dup).unwrap()).unwrap_err().key,
            "name"
        );
        let reserved = EXAMPLE.replace("Authorization", "webhook-id");
        assert_eq!(
            validate_sinks(&parse(&reserved).unwrap()).unwrap_err().key,
            "headers.webhook-id"
        );
        let none = EXAMPLE.replace("[{ env = \"S1\" }, { file = \"/run/s2\" }]", "[]");
        assert_eq!(
            validate_sinks(&parse(&none).unwrap()).unwrap_err().key,
            "signing_secrets"
        );
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "Bearer abc\n").unwrap();
        assert_eq!(
            SecretSource::File(path).resolve("s", "k").unwrap(),
            "Bearer abc"
        );
        let missing = SecretSource::Env("FIRSTSEEN_TEST_SURELY_UNSET_VAR".into())
            .resolve("s", "headers.X")
            .unwrap_err();
        assert!(missing.to_string().contains("sinks.s.headers.X"));
    }
}
