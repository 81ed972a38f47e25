//! Configuration: one TOML file, overridable by `FIRSTSEEN_…` environment
//! variables, validated before anything runs.
//!
//! Raw (serde, unknown keys rejected with the key and the file named) →
//! validated [`Config`]. Durations are human (`7d`, `30s`). Secrets never
//! live in this file: sections that need one name an environment variable
//! or a file to read it from.
//!
//! Environment overrides use `__` between path segments:
//! `FIRSTSEEN_STATE__DIR=/data` sets `[state] dir`,
//! `FIRSTSEEN_ASN__DATABASE=…` sets `[asn] database`. The value is read as a
//! TOML scalar when it parses as one (numbers, booleans), else as a string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decode::DecodeLimits;
use crate::rules::allowlist::AllowlistEntry;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state: StateConfig,
    pub rules: RulesConfig,
    pub asn: AsnConfig,
    pub decode: DecodeConfig,
    pub pipeline: PipelineConfig,
    /// Extra exclusions applied after each rule's query.
    pub allowlist: Vec<AllowlistEntry>,
    /// Where `run` reads from (required by `run`, unused by `replay`).
    pub eventhubs: Option<crate::source::eventhubs::EventHubsConfig>,
    /// Where alerts go (`[[sinks]]`); several may be configured.
    pub sinks: Vec<crate::sink::config::SinkConfig>,
    /// The operations HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Service lifecycle.
    pub run: RunConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: std::net::SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text when it is.
    Auto,
    /// One JSON object per line (production, log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `firstseen=debug,warn`); `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// On shutdown, how long sinks may keep delivering pending alerts
    /// (what is left is delivered after the restart).
    #[serde(with = "humantime_serde")]
    pub sink_flush_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            sink_flush_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// RocksDB directory (term state, outbox, checkpoints, dead letters).
    pub dir: PathBuf,
    /// How often expired terms are swept.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Extra time terms are kept beyond the longest history window, for
    /// late records.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// How long undecodable event bodies are kept for inspection
    /// (`firstseen alerts events`); older ones are deleted by the sweep, so
    /// a hostile producer cannot fill the disk.
    #[serde(with = "humantime_serde")]
    pub dead_event_retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/firstseen"),
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(86_400),
            dead_event_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// A rule file, or a directory of `*.toml` rule files.
    pub path: PathBuf,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            path: PathBuf::from("config/rules"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsnConfig {
    /// ASN database: an mmdb file, CSV/TSV range files, a comma-separated
    /// list of them, or a directory.
    pub database: Option<String>,
    /// `auto`, `mmdb`, `csv` or `tsv`.
    pub format: String,
    /// How often the database files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for AsnConfig {
    fn default() -> Self {
        AsnConfig {
            database: None,
            format: "auto".into(),
            reload_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Largest event body accepted (Event Hubs Standard caps events at 1 MiB).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_depth: usize,
    /// Most records one body may carry.
    pub max_records: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        let d = DecodeLimits::default();
        DecodeConfig {
            max_body_bytes: d.max_body_bytes,
            max_depth: d.max_depth,
            max_records: d.max_records,
        }
    }
}

impl DecodeConfig {
    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_body_bytes: self.max_body_bytes,
            max_depth: self.max_depth,
            max_records: self.max_records,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Records per batch (one RocksDB commit per batch).
    pub batch_records: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_records: 5000,
        }
    }
}

/// `humantime` durations for serde (`"7d"`, `"30s"`).
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 30s or 7d ({e})"))
        })
    }
}

impl Config {
    /// Loads `path` (or the defaults when `None`), then applies the
    /// environment overrides from `env`, then validates.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, unknown keys (named with the file),
    /// bad values, bad overrides.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => ("(defaults)".to_string(), String::new()),
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: name.clone(),
                    message: e.to_string(),
                })?;
        let mut applied: Vec<String> = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("FIRSTSEEN_") else {
                continue;
            };
            // RUST_LOG-style knobs of the binary are not config keys.
            if rest.is_empty() || !rest.contains("__") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set_path(&mut table, &keys, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            applied.push(var);
        }
        // A bad key or value may come from an override rather than the file.
        if !applied.is_empty() {
            applied.sort();
            name = format!("{name} (with {})", applied.join(", "));
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: name.clone(),
                    message: e.to_string(),
                })?;
        config.validate(&name)?;
        Ok(config)
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: name.to_string(),
            key: key.to_string(),
            message,
        };
        if self.decode.max_body_bytes == 0
            || self.decode.max_depth == 0
            || self.decode.max_records == 0
        {
            return Err(invalid("decode", "limits must be greater than 0".into()));
        }
        if self.pipeline.batch_records == 0 {
            return Err(invalid(
                "pipeline.batch_records",
                "must be greater than 0".into(),
            ));
        }
        if !["auto", "mmdb", "csv", "tsv"].contains(&self.asn.format.as_str()) {
            return Err(invalid(
                "asn.format",
                format!("{:?} is not one of auto, mmdb, csv, tsv", self.asn.format),
            ));
        }
        crate::rules::allowlist::Allowlist::new(&self.allowlist)
            .map_err(|e| invalid("allowlist", e.to_string()))?;
        crate::sink::config::validate_sinks(&self.sinks)
            .map_err(|e| invalid(&format!("sinks.{}.{}", e.sink, e.key), e.message))?;
        if let Some(eh) = &self.eventhubs {
            eh.validate()
                .map_err(|e| invalid("eventhubs", e.to_string()))?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter like \"info\" or \"firstseen=debug,warn\"",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a table in the config"))?;
    }
    // Numbers, booleans and TOML arrays (`["0", "1"]`) as such; anything
    // else is a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstseen.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_and_human_durations() {
        let c = load("[state]\ndir = \"/tmp/x\"\ngc_interval = \"30m\"\n", &[]).unwrap();
        assert_eq!(c.state.gc_interval, Duration::from_secs(1800));
        assert_eq!(c.rules.path, PathBuf::from("config/rules"));
        assert_eq!(c.decode.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let err = load("[state]\ndirr = \"/tmp\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("firstseen.toml"), "{err}");
        assert!(err.contains("dirr"), "{err}");
    }

    #[test]
    fn environment_overrides() {
        let c = load(
            "[state]\ndir = \"/tmp/x\"\n",
            &[
                ("FIRSTSEEN_STATE__DIR", "/data"),
                ("FIRSTSEEN_DECODE__MAX_DEPTH", "12"),
                ("FIRSTSEEN_LOG", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.state.dir, PathBuf::from("/data"));
        assert_eq!(c.decode.max_depth, 12);
        let err = load("", &[("FIRSTSEEN_STATE__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = load("[state]\ngc_interval = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let err = load("[asn]\nformat = \"xml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("asn.format"), "{err}");
        let err = load("[[allowlist]]\nowner = \"a\"\nreason = \"b\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `asn` or `resource_name`"), "{err}");
    }
}
