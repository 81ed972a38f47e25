//! Rule files: loading Elastic detection-rules TOML files into [`Rule`]s.
//!
//! The format is the one Elastic's prebuilt rules use
//! (`elastic/detection-rules`, `rules/**/*.toml`): a `[metadata]` table and a
//! `[rule]` table whose `[rule.new_terms]` holds the new-terms fields and the
//! history window in detection-rules' own `field`/`value` shape. A prebuilt
//! Azure `new_terms` rule must load unchanged, so keys this loader does not
//! use are accepted and ignored (Elastic adds keys over time).
//!
//! Only what firstseen can run is accepted: `type = "new_terms"` with
//! `language = "kuery"`. Everything else is a [`RuleError`] that names the
//! file, the key and the reason, written for the person who edits the file.
//! Kibana's own load-time checks are repeated here: 1 to 3 distinct
//! new-terms fields, a history window that starts before `from`, a risk score
//! of 0–100 and a known severity.
//!
//! This module reads files and does nothing else: no clock, no state.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::kql::{KqlError, Query};

/// Kibana's `MAX_NUMBER_OF_NEW_TERMS_FIELDS`.
pub const MAX_NEW_TERMS_FIELDS: usize = 3;

/// Kibana's default look-back when a rule has no `from`.
const DEFAULT_FROM: &str = "now-6m";

/// Kibana's default schedule when a rule has no `interval`.
const DEFAULT_INTERVAL: &str = "5m";

/// A loaded, validated `new_terms` rule with its compiled query.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `rule.rule_id`: the stable id (a UUID in Elastic's rules).
    pub rule_id: String,
    /// `rule.name`.
    pub name: String,
    /// `rule.description`.
    pub description: String,
    /// `rule.severity`.
    pub severity: Severity,
    /// `rule.risk_score`, 0–100.
    pub risk_score: u8,
    /// `rule.tags`.
    pub tags: Vec<String>,
    /// `rule.threat`: MITRE ATT&CK mapping, as alert documents carry it.
    pub threat: Vec<Threat>,
    /// `rule.references`.
    pub references: Vec<String>,
    /// `rule.false_positives`.
    pub false_positives: Vec<String>,
    /// `rule.author`.
    pub author: Vec<String>,
    /// `rule.license`.
    pub license: Option<String>,
    /// `rule.note`: the investigation guide (markdown).
    pub note: Option<String>,
    /// `rule.setup`: setup instructions (markdown).
    pub setup: Option<String>,
    /// `rule.index`: the index patterns the rule reads in Elastic. firstseen
    /// does not use it for matching; it is kept for alert documents.
    pub index: Vec<String>,
    /// `rule.query`, verbatim.
    pub query_text: String,
    /// `rule.query`, compiled.
    pub query: Query,
    /// `rule.new_terms` `new_terms_fields`: 1 to 3 distinct field names.
    pub new_terms_fields: Vec<String>,
    /// `history_window_start` as written, e.g. `now-7d`.
    pub history_window_start: String,
    /// The history window W: how far back a term counts as seen.
    pub history_window: Duration,
    /// `rule.from` as written (default `now-6m`).
    pub from: String,
    /// The look-back of `from`: Kibana's scheduled search range. Kept for
    /// validation and reporting; streaming evaluation does not need it.
    pub lookback: Duration,
    /// `rule.interval` (default 5m).
    pub interval: Duration,
    /// `rule.max_signals`, when set.
    pub max_signals: Option<u32>,
    /// `rule.timestamp_override`, e.g. `event.ingested`.
    pub timestamp_override: Option<String>,
    /// `rule.investigation_fields.field_names`.
    pub investigation_fields: Vec<String>,
    /// `rule.version`, when set.
    pub version: Option<u32>,
    /// The `[metadata]` table.
    pub metadata: RuleMetadata,
    /// The file the rule was loaded from.
    pub source: PathBuf,
}

/// The `[metadata]` keys firstseen keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleMetadata {
    /// `creation_date`, as written (`YYYY/MM/DD`).
    pub creation_date: Option<String>,
    /// `updated_date`, as written.
    pub updated_date: Option<String>,
    /// `maturity`: `production`, `development`, `deprecated`...
    pub maturity: Option<String>,
    /// `integration`: the Elastic integration packages the rule needs.
    pub integration: Vec<String>,
    /// `min_stack_version`, as written.
    pub min_stack_version: Option<String>,
}

/// Alert severity, Kibana's four levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The lower-case name used in rule files and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Severity> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[rule.threat]]` entry: a framework tactic and its techniques.
/// Serializes in Kibana's alert shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threat {
    /// `MITRE ATT&CK`.
    pub framework: String,
    pub tactic: Tactic,
    #[serde(default)]
    pub technique: Vec<Technique>,
}

/// `[rule.threat.tactic]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tactic {
    /// e.g. `TA0002`.
    pub id: String,
    pub name: String,
    pub reference: String,
}

/// `[[rule.threat.technique]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Technique {
    /// e.g. `T1651`.
    pub id: String,
    pub name: String,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtechnique: Vec<Subtechnique>,
}

/// `[[rule.threat.technique.subtechnique]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtechnique {
    /// e.g. `T1555.006`.
    pub id: String,
    pub name: String,
    pub reference: String,
}

/// Why a rule file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key has the wrong type (the message has the line).
    #[error("{}: not a valid rule file: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    /// A key is missing or has a value firstseen cannot use.
    #[error("{}: {key}: {reason}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// `rule.query` does not compile.
    #[error("{}: rule.query: {source}", .path.display())]
    Query {
        path: PathBuf,
        #[source]
        source: KqlError,
    },
    #[error(
        "{}: rule.rule_id: {rule_id} is already used by {}; every rule needs its own rule_id",
        .second.display(),
        .first.display()
    )]
    DuplicateId {
        rule_id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: no rule files (*.toml) in this directory", .path.display())]
    NoRules { path: PathBuf },
}

impl RuleError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            RuleError::Io { path, .. }
            | RuleError::Syntax { path, .. }
            | RuleError::Invalid { path, .. }
            | RuleError::Query { path, .. }
            | RuleError::NoRules { path } => path,
            RuleError::DuplicateId { second, .. } => second,
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written. Everything is optional here so that a missing key
// gets our message (naming the key) rather than serde's.

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    metadata: RawMetadata,
    rule: Option<RawRule>,
}

#[derive(Deserialize, Default)]
struct RawMetadata {
    creation_date: Option<String>,
    updated_date: Option<String>,
    maturity: Option<String>,
    integration: Option<OneOrMany>,
    min_stack_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default)]
    author: Vec<String>,
    description: Option<String>,
    #[serde(default)]
    false_positives: Vec<String>,
    from: Option<String>,
    #[serde(default)]
    index: Vec<String>,
    interval: Option<String>,
    language: Option<String>,
    license: Option<String>,
    max_signals: Option<i64>,
    name: Option<String>,
    note: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    risk_score: Option<i64>,
    rule_id: Option<String>,
    setup: Option<String>,
    severity: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    timestamp_override: Option<String>,
    #[serde(rename = "type")]
    rule_type: Option<String>,
    query: Option<String>,
    version: Option<i64>,
    investigation_fields: Option<RawInvestigationFields>,
    new_terms: Option<RawNewTerms>,
    #[serde(default)]
    threat: Vec<Threat>,
}

#[derive(Deserialize)]
struct RawInvestigationFields {
    #[serde(default)]
    field_names: Vec<String>,
}

/// `[rule.new_terms]`: detection-rules stores the API's `new_terms_fields`
/// and `history_window_start` as `{field, value}` pairs.
#[derive(Deserialize)]
struct RawNewTerms {
    field: Option<String>,
    value: Option<Vec<String>>,
    #[serde(default)]
    history_window_start: Vec<RawHistoryWindowStart>,
}

#[derive(Deserialize)]
struct RawHistoryWindowStart {
    field: Option<String>,
    value: Option<String>,
}

/// Loads and validates one rule file.
///
/// # Errors
///
/// A [`RuleError`] naming the file and the offending key when the file
/// cannot be read, is not TOML of the expected shape, is not a
/// `new_terms`/`kuery` rule, fails validation, or its query does not compile.
pub fn load_rule_file(path: &Path) -> Result<Rule, RuleError> {
    let text = std::fs::read_to_string(path).map_err(|source| RuleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_rule(&text, path)
}

/// Loads `path`: one rule file, or every `*.toml` file in a directory
/// (not recursive), in file-name order.
///
/// # Errors
///
/// The first file's [`RuleError`]; [`RuleError::DuplicateId`] when two files
/// share a `rule_id`; [`RuleError::NoRules`] for a directory without rule
/// files.
pub fn load_rules(path: &Path) -> Result<Vec<Rule>, RuleError> {
    let io_err = |source| RuleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return Ok(vec![load_rule_file(path)?]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let file = entry.path();
        if file.extension().is_some_and(|e| e == "toml") && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(RuleError::NoRules {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    let mut rules = Vec::with_capacity(files.len());
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let rule = load_rule_file(&file)?;
        if let Some(first) = seen.get(&rule.rule_id) {
            return Err(RuleError::DuplicateId {
                rule_id: rule.rule_id,
                first: first.clone(),
                second: file,
            });
        }
        seen.insert(rule.rule_id.clone(), file);
        rules.push(rule);
    }
    Ok(rules)
}

/// Parses rule-file text; `path` is only used in errors and [`Rule::source`].
///
/// # Errors
///
/// As [`load_rule_file`], minus reading.
pub fn parse_rule(text: &str, path: &Path) -> Result<Rule, RuleError> {
    let invalid = |key: &str, reason: String| RuleError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| RuleError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let rule = raw
        .rule
        .ok_or_else(|| invalid("rule", "missing the [rule] table".to_string()))?;
    let required = |value: Option<String>, key: &str| -> Result<String, RuleError> {
        match value {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(invalid(key, "is empty".to_string())),
            None => Err(invalid(key, "missing".to_string())),
        }
    };

    // Type and language first: for another rule type the other keys differ.
    let rule_type = required(rule.rule_type, "rule.type")?;
    if rule_type != "new_terms" {
        return Err(invalid(
            "rule.type",
            format!("{rule_type:?} is not supported; firstseen runs only new_terms rules with language \"kuery\""),
        ));
    }
    let language = required(rule.language, "rule.language")?;
    if language != "kuery" {
        return Err(invalid(
            "rule.language",
            format!("{language:?} is not supported; firstseen runs only new_terms rules with language \"kuery\" (KQL)"),
        ));
    }

    let rule_id = required(rule.rule_id, "rule.rule_id")?;
    let name = required(rule.name, "rule.name")?;
    let description = required(rule.description, "rule.description")?;

    let severity_text = required(rule.severity, "rule.severity")?;
    let severity = Severity::parse(&severity_text).ok_or_else(|| {
        invalid(
            "rule.severity",
            format!("{severity_text:?} is not one of low, medium, high, critical"),
        )
    })?;
    let risk = rule
        .risk_score
        .ok_or_else(|| invalid("rule.risk_score", "missing".to_string()))?;
    let risk_score = u8::try_from(risk)
        .ok()
        .filter(|r| *r <= 100)
        .ok_or_else(|| {
            invalid(
                "rule.risk_score",
                format!("{risk} is not between 0 and 100"),
            )
        })?;

    let query_text = required(rule.query, "rule.query")?;
    let query = Query::parse(&query_text).map_err(|source| RuleError::Query {
        path: path.to_path_buf(),
        source,
    })?;

    let new_terms = rule.new_terms.ok_or_else(|| {
        invalid(
            "rule.new_terms",
            "missing; a new_terms rule needs [rule.new_terms]".to_string(),
        )
    })?;
    let (new_terms_fields, history_window_start) =
        validate_new_terms(new_terms).map_err(|reason| invalid("rule.new_terms", reason))?;
    let history_window = parse_date_math(&history_window_start).ok_or_else(|| {
        invalid(
            "rule.new_terms",
            format!(
                "history_window_start {history_window_start:?} is not a date-math duration like now-7d"
            ),
        )
    })?;
    if history_window.is_zero() {
        return Err(invalid(
            "rule.new_terms",
            format!(
                "history_window_start {history_window_start:?} is an empty window; use e.g. now-7d"
            ),
        ));
    }

    let from = rule.from.unwrap_or_else(|| DEFAULT_FROM.to_string());
    let lookback = parse_date_math(&from).ok_or_else(|| {
        invalid(
            "rule.from",
            format!("{from:?} is not a date-math duration like now-9m"),
        )
    })?;
    // Kibana's validateHistoryWindowStart: the history must reach further
    // back than the rule's own search range.
    if history_window <= lookback {
        return Err(invalid(
            "rule.new_terms",
            format!(
                "history_window_start {history_window_start:?} must be earlier than from {from:?} (the history window must be longer than the rule's look-back)"
            ),
        ));
    }
    let interval_text = rule
        .interval
        .unwrap_or_else(|| DEFAULT_INTERVAL.to_string());
    let interval = parse_duration(&interval_text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                "rule.interval",
                format!("{interval_text:?} is not a duration like 5m"),
            )
        })?;
    let max_signals = match rule.max_signals {
        None => None,
        Some(n) => Some(u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
            invalid("rule.max_signals", format!("{n} is not a positive integer"))
        })?),
    };
    let version =
        match rule.version {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                invalid("rule.version", format!("{n} is not a non-negative integer"))
            })?),
        };
    for (i, threat) in rule.threat.iter().enumerate() {
        if threat.tactic.id.trim().is_empty() {
            return Err(invalid(
                &format!("rule.threat[{i}].tactic.id"),
                "is empty".to_string(),
            ));
        }
    }

    Ok(Rule {
        rule_id,
        name,
        description,
        severity,
        risk_score,
        tags: rule.tags,
        threat: rule.threat,
        references: rule.references,
        false_positives: rule.false_positives,
        author: rule.author,
        license: rule.license,
        note: rule.note,
        setup: rule.setup,
        index: rule.index,
        query_text,
        query,
        new_terms_fields,
        history_window_start,
        history_window,
        from,
        lookback,
        interval,
        max_signals,
        timestamp_override: rule.timestamp_override,
        investigation_fields: rule
            .investigation_fields
            .map(|f| f.field_names)
            .unwrap_or_default(),
        version,
        metadata: RuleMetadata {
            creation_date: raw.metadata.creation_date,
            updated_date: raw.metadata.updated_date,
            maturity: raw.metadata.maturity,
            integration: match raw.metadata.integration {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s],
                Some(OneOrMany::Many(v)) => v,
            },
            min_stack_version: raw.metadata.min_stack_version,
        },
        source: path.to_path_buf(),
    })
}

/// Checks the `{field, value}` shape of `[rule.new_terms]` and returns
/// (new-terms fields, history_window_start text).
fn validate_new_terms(raw: RawNewTerms) -> Result<(Vec<String>, String), String> {
    match raw.field.as_deref() {
        Some("new_terms_fields") => {}
        Some(other) => return Err(format!("field is {other:?}; expected \"new_terms_fields\"")),
        None => return Err("missing field = \"new_terms_fields\"".to_string()),
    }
    let fields = raw.value.ok_or_else(|| {
        "missing value = [\"field.name\", ...] (the new-terms fields)".to_string()
    })?;
    if fields.is_empty() || fields.len() > MAX_NEW_TERMS_FIELDS {
        return Err(format!(
            "new_terms_fields has {} fields; 1 to {MAX_NEW_TERMS_FIELDS} are allowed",
            fields.len()
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        if f.trim().is_empty() {
            return Err(format!("new_terms_fields[{i}] is empty"));
        }
        if fields[..i].contains(f) {
            return Err(format!("new_terms_fields lists {f:?} twice"));
        }
    }
    let window = match raw.history_window_start.as_slice() {
        [one] => one,
        [] => {
            return Err(
                "missing [[rule.new_terms.history_window_start]] with field = \"history_window_start\" and value = \"now-7d\""
                    .to_string(),
            )
        }
        more => {
            return Err(format!(
                "history_window_start is given {} times; give it once",
                more.len()
            ))
        }
    };
    match window.field.as_deref() {
        Some("history_window_start") => {}
        Some(other) => {
            return Err(format!(
                "history_window_start has field = {other:?}; expected \"history_window_start\""
            ))
        }
        None => {
            return Err(
                "history_window_start is missing field = \"history_window_start\"".to_string(),
            )
        }
    }
    let value = window
        .value
        .clone()
        .ok_or_else(|| "history_window_start is missing value (e.g. \"now-7d\")".to_string())?;
    Ok((fields, value))
}

/// Elasticsearch date math relative to now, `now-<n><unit>`, as a duration
/// into the past. `now` alone is zero. Units with a fixed length only:
/// `s`, `m`, `h`/`H`, `d`, `w`; months and years (`M`, `y`) and rounding
/// (`/d`) have no fixed length and are refused.
pub fn parse_date_math(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix("now")?;
    if rest.is_empty() {
        return Some(Duration::ZERO);
    }
    parse_duration(rest.strip_prefix('-')?)
}

/// `<n><unit>` with the units of [`parse_date_math`], e.g. `5m`, `7d`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "H" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(secs_per).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repo_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn elastic_rule_files_load_unchanged() {
        let dir = repo_path("tests/fixtures/elastic-rules");
        let rules = load_rules(&dir).unwrap();
        assert_eq!(rules.len(), 4, "one rule per fixture file");
        for rule in &rules {
            assert_eq!(rule.query.source(), rule.query_text);
            assert!(!rule.new_terms_fields.is_empty());
            assert_eq!(
                rule.history_window,
                Duration::from_secs(7 * 86_400),
                "{}",
                rule.name
            );
            assert_eq!(rule.lookback, Duration::from_secs(9 * 60));
            assert_eq!(rule.interval, Duration::from_secs(300));
            assert_eq!(rule.timestamp_override.as_deref(), Some("event.ingested"));
            assert_eq!(rule.metadata.integration, ["azure"]);
            assert!(!rule.threat.is_empty());
        }
        // Sorted by file name.
        let names: Vec<_> = rules
            .iter()
            .map(|r| r.source.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        let by_id = |id: &str| rules.iter().find(|r| r.rule_id == id).unwrap();
        let crud = by_id("d69d05f8-d48a-4dcb-b226-fb2efbedd6ba");
        assert_eq!(
            crud.new_terms_fields,
            ["azure.resource.name", "source.as.number"]
        );
        assert_eq!(crud.severity, Severity::Medium);
        assert_eq!(crud.risk_score, 47);
        assert_eq!(crud.threat[1].tactic.id, "TA0003");
        assert_eq!(crud.investigation_fields.len(), 14);
        let doc = json!({
            "data_stream": {"dataset": "azure.activitylogs"},
            "event": {"action": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/DELETE", "outcome": "success"},
            "azure": {"resource": {"name": "VM/EXTENSIONS/X"}},
            "source": {"as": {"number": 64500}}
        });
        assert!(crud.query.matches(&doc));

        let keys = by_id("8b4d6c3a-2e9f-4b7c-9a5d-6f8e3c1b4d2a");
        assert!(keys.false_positives.is_empty());
        assert_eq!(keys.threat[0].technique[0].subtechnique[0].id, "T1555.006");

        let blob = by_id("4c5a4e8b-3f2d-4a6e-9b5c-7d8f9e0a1b2c");
        let doc = json!({
            "event": {"dataset": "azure.activitylogs", "action": "MICROSOFT.STORAGE/STORAGEACCOUNTS/WRITE", "outcome": "success"},
            "azure": {"activitylogs": {"properties": {"responseBody": "{\"allowBlobPublicAccess\":true}"}}}
        });
        assert!(blob.query.matches(&doc));
    }

    #[test]
    fn threat_serializes_in_kibana_shape() {
        let rules = load_rules(&repo_path("tests/fixtures/elastic-rules")).unwrap();
        let keys = rules
            .iter()
            .find(|r| r.rule_id == "8b4d6c3a-2e9f-4b7c-9a5d-6f8e3c1b4d2a")
            .unwrap();
        let v = serde_json::to_value(&keys.threat[0]).unwrap();
        assert_eq!(v["framework"], "MITRE ATT&CK");
        assert_eq!(v["tactic"]["id"], "TA0006");
        assert_eq!(
            v["technique"][0]["subtechnique"][0]["name"],
            "Cloud Secrets Management Stores"
        );
        assert_eq!(
            serde_json::to_value(Severity::Critical).unwrap(),
            "critical"
        );
    }

    #[test]
    fn seed_rule_loads_with_every_required_field() {
        let path = repo_path("config/rules/azure_vm_extension_crud_unusual_source_asn.toml");
        let rule = load_rule_file(&path).unwrap();
        assert!(uuid_like(&rule.rule_id), "{}", rule.rule_id);
        assert_ne!(
            rule.rule_id, "d69d05f8-d48a-4dcb-b226-fb2efbedd6ba",
            "a fresh rule_id, not Elastic's"
        );
        assert_eq!(rule.index, ["logs-azure.activitylogs-*"]);
        assert_eq!(
            rule.new_terms_fields,
            ["azure.resource.name", "source.as.number"]
        );
        assert_eq!(rule.history_window_start, "now-7d");
        assert_eq!(rule.history_window, Duration::from_secs(7 * 86_400));
        assert_eq!(rule.from, "now-9m");
        assert_eq!(rule.timestamp_override.as_deref(), Some("event.ingested"));
        assert_eq!(rule.severity, Severity::Medium);
        assert_eq!(rule.risk_score, 47);
        assert_eq!(rule.query_text.trim(), SEED_QUERY);
        let tactics: Vec<_> = rule.threat.iter().map(|t| t.tactic.id.as_str()).collect();
        assert_eq!(tactics, ["TA0002", "TA0003"]);
        assert_eq!(rule.threat[0].tactic.name, "Execution");
        assert_eq!(rule.threat[0].technique[0].id, "T1651");
        assert_eq!(
            rule.threat[0].technique[0].name,
            "Cloud Administration Command"
        );
        assert_eq!(rule.threat[1].tactic.name, "Persistence");
        assert!(rule.threat.iter().all(|t| t.framework == "MITRE ATT&CK"));
        assert!(rule.description.len() > 100);
        assert!(!rule.false_positives.is_empty());
        assert!(rule.note.as_deref().is_some_and(|n| n.contains("## ")));
        assert_eq!(rule.metadata.maturity.as_deref(), Some("production"));
        assert_eq!(
            rule.query.fields(),
            [
                "data_stream.dataset",
                "event.action",
                "event.outcome",
                "azure.resource.name",
                "source.as.number"
            ]
        );
    }

    const SEED_QUERY: &str = r#"data_stream.dataset:azure.activitylogs and event.action:("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/WRITE") and event.outcome:(Success or success) and azure.resource.name:* and source.as.number:(* and not (3598 or 8068 or 8069 or 8070 or 8071 or 8072 or 8073 or 8074 or 8075 or 12076))"#;

    fn uuid_like(s: &str) -> bool {
        let parts: Vec<_> = s.split('-').collect();
        parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && parts
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    }

    const MINIMAL: &str = r#"
[metadata]
creation_date = "2025/01/01"
integration = "azure"
maturity = "production"
some_future_key = { nested = true }

[rule]
description = "d"
language = "kuery"
name = "n"
risk_score = 21
rule_id = "r1"
severity = "low"
type = "new_terms"
query = 'a:b'
a_key_elastic_adds_later = ["x"]

[rule.new_terms]
field = "new_terms_fields"
value = ["a"]
[[rule.new_terms.history_window_start]]
field = "history_window_start"
value = "now-14d"
"#;

    fn parse(text: &str) -> Result<Rule, RuleError> {
        parse_rule(text, Path::new("config/rules/x.toml"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("should fail:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_rule_defaults_and_tolerates_unknown_keys() {
        let rule = parse(MINIMAL).unwrap();
        assert_eq!(rule.from, "now-6m");
        assert_eq!(rule.lookback, Duration::from_secs(360));
        assert_eq!(rule.history_window, Duration::from_secs(14 * 86_400));
        assert_eq!(rule.metadata.integration, ["azure"]);
        assert!(rule.threat.is_empty() && rule.tags.is_empty() && rule.index.is_empty());
        assert_eq!(rule.timestamp_override, None);
        assert_eq!(rule.source, Path::new("config/rules/x.toml"));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"value = "now-14d""#,
                r#"value = "now-7x""#,
                r#"config/rules/x.toml: rule.new_terms: history_window_start "now-7x" is not a date-math duration like now-7d"#,
            ),
            (
                r#"value = "now-14d""#,
                r#"value = "now-1M""#,
                "is not a date-math duration",
            ),
            (r#"value = "now-14d""#, r#"value = "now""#, "empty window"),
            (
                r#"value = "now-14d""#,
                r#"value = "now-5m""#,
                r#"rule.new_terms: history_window_start "now-5m" must be earlier than from "now-6m""#,
            ),
            (
                r#"value = ["a"]"#,
                r#"value = []"#,
                "0 fields; 1 to 3 are allowed",
            ),
            (
                r#"value = ["a"]"#,
                r#"value = ["a", "b", "c", "d"]"#,
                "4 fields; 1 to 3 are allowed",
            ),
            (
                r#"value = ["a"]"#,
                r#"value = ["a", "a"]"#,
                r#"lists "a" twice"#,
            ),
            (
                r#"field = "new_terms_fields""#,
                r#"field = "fields""#,
                r#"expected "new_terms_fields""#,
            ),
            (
                r#"field = "history_window_start""#,
                r#"field = "x""#,
                "history_window_start has field",
            ),
            (
                r#"type = "new_terms""#,
                r#"type = "query""#,
                r#"config/rules/x.toml: rule.type: "query" is not supported; firstseen runs only new_terms rules"#,
            ),
            (r#"type = "new_terms""#, r#"type = "esql""#, "not supported"),
            (
                r#"language = "kuery""#,
                r#"language = "lucene""#,
                r#"rule.language: "lucene" is not supported"#,
            ),
            (
                r#"risk_score = 21"#,
                r#"risk_score = 101"#,
                "rule.risk_score: 101 is not between 0 and 100",
            ),
            (
                r#"risk_score = 21"#,
                r#"risk_score = -1"#,
                "rule.risk_score: -1 is not between 0 and 100",
            ),
            (r#"risk_score = 21"#, "", "rule.risk_score: missing"),
            (
                r#"severity = "low""#,
                r#"severity = "Low""#,
                r#"rule.severity: "Low" is not one of low, medium, high, critical"#,
            ),
            (r#"rule_id = "r1""#, "", "rule.rule_id: missing"),
            (
                r#"rule_id = "r1""#,
                r#"rule_id = " ""#,
                "rule.rule_id: is empty",
            ),
            (
                r#"query = 'a:b'"#,
                r#"query = 'a >= 1'"#,
                "x.toml: rule.query: at byte 2: range queries (`>=`) are not supported",
            ),
            (
                r#"query = 'a:b'"#,
                r#"query = 'a:(b'"#,
                "rule.query: at byte 4",
            ),
            (
                r#"risk_score = 21"#,
                r#"risk_score = "high""#,
                "not a valid rule file",
            ),
            (
                r#"query = 'a:b'"#,
                "query = 'a:b'\nfrom = \"yesterday\"",
                r#"rule.from: "yesterday" is not a date-math duration"#,
            ),
            (
                r#"query = 'a:b'"#,
                "query = 'a:b'\ninterval = \"5x\"",
                r#"rule.interval: "5x" is not a duration"#,
            ),
            (
                r#"query = 'a:b'"#,
                "query = 'a:b'\nmax_signals = 0",
                "rule.max_signals: 0 is not a positive integer",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(MINIMAL.contains(from), "{from}");
            let text = MINIMAL.replacen(from, to, 1);
            let shown = parse_err(&text);
            assert!(
                shown.contains(expected),
                "{to}:\n  got      {shown}\n  expected {expected}"
            );
        }
        assert!(parse_err("[metadata]\n").contains("rule: missing the [rule] table"));
        assert!(parse_err("not toml [").contains("not a valid rule file"));
        let no_new_terms = MINIMAL.split("[rule.new_terms]").next().unwrap();
        assert!(parse_err(no_new_terms).contains("rule.new_terms: missing"));
        // `from` may be wider than the default and then needs a longer history.
        let text = MINIMAL.replacen("query = 'a:b'", "query = 'a:b'\nfrom = \"now-20d\"", 1);
        assert!(parse_err(&text).contains("must be earlier than from \"now-20d\""));
    }

    #[test]
    fn date_math() {
        assert_eq!(
            parse_date_math("now-7d"),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(parse_date_math("now-30m"), Some(Duration::from_secs(1_800)));
        assert_eq!(parse_date_math("now-65m"), Some(Duration::from_secs(3_900)));
        assert_eq!(parse_date_math("now-2h"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_date_math("now-2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(
            parse_date_math("now-1w"),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(parse_date_math("now-45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_date_math("now"), Some(Duration::ZERO));
        for bad in [
            "now-7",
            "now-d",
            "now+7d",
            "now-7d/d",
            "7d",
            "now-1y",
            "now-1M",
            "now-99999999999999999999d",
            "",
        ] {
            assert_eq!(parse_date_math(bad), None, "{bad}");
        }
    }

    #[test]
    fn directories_load_sorted_and_reject_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_rules(dir.path()),
            Err(RuleError::NoRules { .. })
        ));
        std::fs::write(
            dir.path().join("b.toml"),
            MINIMAL.replace("rule_id = \"r1\"", "rule_id = \"r2\""),
        )
        .unwrap();
        std::fs::write(dir.path().join("a.toml"), MINIMAL).unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a rule").unwrap();
        let rules = load_rules(dir.path()).unwrap();
        let ids: Vec<_> = rules.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"]);

        let single = load_rules(&dir.path().join("a.toml")).unwrap();
        assert_eq!(single.len(), 1);

        std::fs::write(dir.path().join("c.toml"), MINIMAL).unwrap();
        let err = load_rules(dir.path()).unwrap_err();
        assert!(matches!(err, RuleError::DuplicateId { .. }));
        let shown = err.to_string();
        assert!(
            shown.contains("c.toml: rule.rule_id: r1 is already used by"),
            "{shown}"
        );
        assert!(shown.contains("a.toml"), "{shown}");

        let missing = load_rules(&dir.path().join("nope.toml")).unwrap_err();
        assert!(matches!(missing, RuleError::Io { .. }));
        assert!(missing.to_string().contains("nope.toml: cannot read"));
    }
}
