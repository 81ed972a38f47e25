//! The detector: every rule over one batch of normalized events, deciding
//! new terms against the store and building alert documents.
//!
//! One [`Detector`] owns every term decision (the serialization invariant):
//! callers feed it batches one at a time, and it writes term updates into
//! the caller's [`BatchWrite`], which the caller commits together with the
//! outbox rows and the checkpoint. Within a batch, occurrences are taken in
//! rule-time order (ties in arrival order), so the earliest record of a new
//! term is the one that alerts, and several records with one term give one
//! alert unless the batch itself spans more than the history window.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::event::NormalizedEvent;
use crate::normalize::{format_timestamp, to_ecs_json};
use crate::prefilter::Prefilter;
use crate::rules::allowlist::Allowlist;
use crate::rules::new_terms::{is_new, TermFields, TermValue};
use crate::rules::rule_file::Rule;
use crate::store::{term_key, BatchWrite, OutboxRow, Store, StoreError, TermState};

/// Where a record came from, carried into its alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourcePosition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

/// One record ready for the rules.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub event: NormalizedEvent,
    /// The rule's time for this record: the Event Hubs enqueued time, else
    /// `@timestamp` (Elastic's `event.ingested` override with fallback).
    pub rule_time_ms: i64,
    /// No usable time at all (unparseable `time`, no enqueued time): shown
    /// by `normalize`, counted as a timestamp fallback, never judged by the
    /// rules (it would be judged at 1970 and could alert spuriously).
    pub untimed: bool,
    pub position: SourcePosition,
}

struct CompiledRule {
    rule: Rule,
    terms: TermFields,
    window_ms: i64,
}

/// All rules plus the allowlist.
pub struct Detector {
    rules: Vec<CompiledRule>,
    allowlist: Allowlist,
    prefilter: Prefilter,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Records that matched each rule's query (and no allowlist entry), by
    /// rule index.
    pub matched: Vec<u64>,
    /// Records excluded by the allowlist, by rule index.
    pub allowlisted: Vec<u64>,
    /// Alerts by rule index.
    pub alerts_per_rule: Vec<u64>,
    /// The alerts, in rule-time order, ready for the outbox.
    pub alerts: Vec<OutboxRow>,
    /// Term rows written.
    pub terms_written: usize,
}

/// `7 days`, `36 hours`, `90 minutes`: the window as a person writes it
/// (humantime's `7days` reads badly in a sentence).
fn readable_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let unit = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    match secs {
        0 => humantime::format_duration(d).to_string(),
        s if s % 86_400 == 0 => unit(s / 86_400, "day"),
        s if s % 3_600 == 0 => unit(s / 3_600, "hour"),
        s if s % 60 == 0 => unit(s / 60, "minute"),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Why the configured rules and allowlist cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DetectionSetupError {
    #[error("rules.path: {0}")]
    Rules(#[from] crate::rules::rule_file::RuleError),
    #[error("{0}")]
    Allowlist(#[from] crate::rules::allowlist::AllowlistError),
}

/// Loads the rules named by `rules_path` and compiles `allowlist` against
/// them (an entry naming an unknown rule id is an error). Returns the
/// detector and warnings for a human: allowlist entries already expired at
/// `now_ms`.
///
/// # Errors
/// A rule file that does not load, or a bad allowlist entry.
pub fn load_detection(
    rules_path: &std::path::Path,
    allowlist: &[crate::rules::allowlist::AllowlistEntry],
    now_ms: i64,
) -> Result<(Detector, Vec<String>), DetectionSetupError> {
    let rules = crate::rules::rule_file::load_rules(rules_path)?;
    let allowlist = Allowlist::new(allowlist)?;
    let ids: Vec<&str> = rules.iter().map(|r| r.rule_id.as_str()).collect();
    allowlist.check_rule_ids(&ids)?;
    let warnings = allowlist
        .expired(now_ms)
        .into_iter()
        .map(|(index, owner)| {
            format!("allowlist entry {index} (owner {owner:?}) has expired and no longer applies")
        })
        .collect();
    Ok((Detector::new(rules, allowlist), warnings))
}

impl Detector {
    pub fn new(rules: Vec<Rule>, allowlist: Allowlist) -> Detector {
        let prefilter = Prefilter::new(rules.iter().map(|r| &r.query));
        let rules = rules
            .into_iter()
            .map(|rule| CompiledRule {
                terms: TermFields::new(&rule.new_terms_fields),
                window_ms: i64::try_from(rule.history_window.as_millis()).unwrap_or(i64::MAX),
                rule,
            })
            .collect();
        Detector {
            rules,
            allowlist,
            prefilter,
        }
    }

    /// The raw-byte prefilter of these rules: records it rejects cannot
    /// match any of them (pass it to
    /// [`process_body_prefiltered`](crate::pipeline::process_body_prefiltered)).
    pub fn prefilter(&self) -> &Prefilter {
        &self.prefilter
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// The longest history window of any rule (GC keeps terms this long).
    pub fn max_window_ms(&self) -> i64 {
        self.rules.iter().map(|r| r.window_ms).max().unwrap_or(0)
    }

    /// Runs every rule over `events`. Term updates go into `write`; alerts
    /// are returned (the caller puts them in the outbox of the same write,
    /// or prints them). With `learn`, state is updated and no alert made.
    ///
    /// # Errors
    /// Only store reads can fail; the batch must then not be committed.
    pub fn evaluate(
        &self,
        store: &Store,
        write: &mut BatchWrite,
        events: &[Candidate],
        now_ms: i64,
        learn: bool,
    ) -> Result<BatchReport, StoreError> {
        let mut report = BatchReport {
            matched: vec![0; self.rules.len()],
            allowlisted: vec![0; self.rules.len()],
            alerts_per_rule: vec![0; self.rules.len()],
            ..BatchReport::default()
        };
        for (rule_index, compiled) in self.rules.iter().enumerate() {
            // (rule time, arrival index, key, values)
            let mut occurrences: Vec<(i64, usize, Vec<u8>, Vec<TermValue>)> = Vec::new();
            for (i, candidate) in events.iter().enumerate() {
                if candidate.untimed || !compiled.rule.query.matches(&candidate.event) {
                    continue;
                }
                if !self.allowlist.is_empty()
                    && self.allowlist.excludes(
                        &compiled.rule.rule_id,
                        &candidate.event,
                        candidate.rule_time_ms,
                    )
                {
                    report.allowlisted[rule_index] += 1;
                    continue;
                }
                report.matched[rule_index] += 1;
                compiled.terms.for_each_term(&candidate.event, |values| {
                    let encoded = compiled.terms.encode_values(values);
                    let parts: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                    let key = term_key(&compiled.rule.rule_id, &parts);
                    occurrences.push((candidate.rule_time_ms, i, key, values.to_vec()));
                });
            }
            if occurrences.is_empty() {
                continue;
            }
            occurrences.sort_by_key(|(t, i, _, _)| (*t, *i));

            let mut local: HashMap<Vec<u8>, TermState> = HashMap::new();
            for (t, i, key, values) in occurrences {
                let previous = match local.get(&key) {
                    Some(s) => Some(*s),
                    None => store.get_term(&key)?,
                };
                let new = is_new(previous.map(|s| s.last_seen_ms), t, compiled.window_ms);
                let state = match previous {
                    Some(p) if !new => TermState {
                        last_seen_ms: p.last_seen_ms.max(t),
                        first_seen_ms: p.first_seen_ms,
                    },
                    Some(p) => TermState {
                        last_seen_ms: p.last_seen_ms.max(t),
                        first_seen_ms: t,
                    },
                    None => TermState {
                        last_seen_ms: t,
                        first_seen_ms: t,
                    },
                };
                local.insert(key.clone(), state);
                if new && !learn {
                    let candidate = &events[i];
                    let (id, body) = build_alert(
                        &compiled.rule,
                        &key,
                        &values,
                        candidate,
                        previous.map(|p| p.last_seen_ms),
                        now_ms,
                    );
                    report.alerts_per_rule[rule_index] += 1;
                    report.alerts.push(OutboxRow {
                        seq: store.next_seq(),
                        id,
                        created_at_ms: now_ms,
                        body,
                    });
                }
            }
            report.terms_written += local.len();
            for (key, state) in local {
                store.put_term(write, &key, state);
            }
        }
        Ok(report)
    }
}

/// Deterministic alert id: the rule, the term (as keyed, so case variants of
/// one ARM name share it) and the identity of the source record (a hash of
/// its exact text). A redelivered record yields the same id, so receivers
/// can deduplicate (BR-09).
pub fn alert_id(rule_id: &str, term_key: &[u8], original: &str) -> String {
    let record = Sha256::digest(original.as_bytes());
    let mut h = Sha256::new();
    h.update(b"firstseen-alert-v1\0");
    h.update((rule_id.len() as u64).to_be_bytes());
    h.update(rule_id.as_bytes());
    h.update((term_key.len() as u64).to_be_bytes());
    h.update(term_key);
    h.update(record);
    hex::encode(h.finalize())
}

fn build_alert(
    rule: &Rule,
    key: &[u8],
    values: &[TermValue],
    candidate: &Candidate,
    last_seen_ms: Option<i64>,
    now_ms: i64,
) -> (String, String) {
    let ev = &candidate.event;
    let id = alert_id(&rule.rule_id, key, &ev.original);
    let pairs: Vec<String> = rule
        .new_terms_fields
        .iter()
        .zip(values)
        .map(|(f, v)| format!("{f}={v}"))
        .collect();
    let window = humantime::format_duration(rule.history_window);
    let readable_window = readable_duration(rule.history_window);
    let history = match last_seen_ms {
        None => "never seen before".to_string(),
        Some(last) => format!(
            "last seen {}, more than the {readable_window} history window before",
            format_timestamp(last)
        ),
    };
    let reason = format!(
        "New term ({}) for rule \"{}\" at {}: {history}.",
        pairs.join(", "),
        rule.name,
        format_timestamp(candidate.rule_time_ms),
    );
    let original: Value = serde_json::from_str(&ev.original)
        .unwrap_or_else(|_| Value::String(ev.original.to_string()));
    let doc = json!({
        "id": id,
        "created_at": format_timestamp(now_ms),
        "rule": {
            "id": rule.rule_id,
            "name": rule.name,
            "severity": rule.severity,
            "risk_score": rule.risk_score,
            "tags": rule.tags,
            "threat": rule.threat,
            "history_window": window.to_string(),
            "query": rule.query_text,
        },
        "new_terms": {
            "fields": rule.new_terms_fields,
            "values": values.iter().map(TermValue::to_json).collect::<Vec<_>>(),
        },
        "reason": reason,
        "rule_time": format_timestamp(candidate.rule_time_ms),
        "previous_last_seen": last_seen_ms.map(format_timestamp),
        "event": to_ecs_json(ev),
        "original": original,
        "source": candidate.position,
    });
    (id, doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::readable_duration;
    use std::time::Duration;

    #[test]
    fn windows_read_as_people_write_them() {
        assert_eq!(readable_duration(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(readable_duration(Duration::from_secs(86_400)), "1 day");
        assert_eq!(
            readable_duration(Duration::from_secs(36 * 3_600)),
            "36 hours"
        );
        assert_eq!(
            readable_duration(Duration::from_secs(90 * 60)),
            "90 minutes"
        );
        assert_eq!(readable_duration(Duration::from_secs(61)), "1m 1s");
    }
}
