//! Operator allowlists: extra exclusions applied after a rule's query.
//!
//! The seed rule's false-positive guidance tells users to baseline their
//! management networks and automation. Editing Elastic's rule file would
//! fork it, so exclusions live in firstseen's config instead, each with an
//! owner, a reason and an optional expiry date, so that forgotten
//! exceptions stop applying on their own. An excluded record is treated as
//! not matching the query: it neither alerts nor enters history, exactly
//! like a Kibana rule exception.

use serde::{Deserialize, Serialize};

use crate::event::{FieldValue, KnownField, NormalizedEvent};

/// One allowlist entry, as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistEntry {
    /// Excluded AS number (e.g. a corporate egress or a CI provider).
    #[serde(default)]
    pub asn: Option<u32>,
    /// Excluded `azure.resource.name` pattern; `*` matches any run of
    /// characters; compared case-insensitively (ARM names are).
    #[serde(default)]
    pub resource_name: Option<String>,
    /// Rules this entry applies to (rule ids); empty = every rule.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Who asked for the exclusion.
    pub owner: String,
    /// Why it is safe.
    pub reason: String,
    /// Last day (UTC, inclusive) the entry applies, `YYYY-MM-DD`.
    #[serde(default)]
    pub expires: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowlistError {
    #[error("allowlist entry {index} (owner {owner:?}): needs `asn` or `resource_name`")]
    Empty { index: usize, owner: String },
    #[error("allowlist entry {index} (owner {owner:?}): expires {value:?} is not a date like 2026-12-31")]
    BadExpiry {
        index: usize,
        owner: String,
        value: String,
    },
    #[error("allowlist entry {index}: owner and reason must not be empty")]
    Unaccountable { index: usize },
    #[error("allowlist entry {index} (owner {owner:?}): rules names {rule:?}, which is not the rule_id of a loaded rule (loaded: {loaded})")]
    UnknownRule {
        index: usize,
        owner: String,
        rule: String,
        loaded: String,
    },
}

/// Compiled allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    owner: String,
    asn: Option<u32>,
    resource_pattern: Option<Vec<String>>,
    rules: Vec<String>,
    /// Exclusive end, Unix ms (the day after `expires`).
    expires_before_ms: Option<i64>,
}

impl Allowlist {
    /// Validates and compiles entries.
    ///
    /// # Errors
    /// An entry without a condition, without an owner/reason, or with an
    /// unparseable expiry date.
    pub fn new(entries: &[AllowlistEntry]) -> Result<Allowlist, AllowlistError> {
        let mut out = Vec::with_capacity(entries.len());
        for (index, e) in entries.iter().enumerate() {
            if e.owner.trim().is_empty() || e.reason.trim().is_empty() {
                return Err(AllowlistError::Unaccountable { index });
            }
            if e.asn.is_none() && e.resource_name.is_none() {
                return Err(AllowlistError::Empty {
                    index,
                    owner: e.owner.clone(),
                });
            }
            let expires_before_ms = match &e.expires {
                None => None,
                Some(value) => {
                    Some(
                        day_after_ms(value).ok_or_else(|| AllowlistError::BadExpiry {
                            index,
                            owner: e.owner.clone(),
                            value: value.clone(),
                        })?,
                    )
                }
            };
            out.push(Compiled {
                owner: e.owner.clone(),
                asn: e.asn,
                resource_pattern: e
                    .resource_name
                    .as_ref()
                    .map(|p| p.to_lowercase().split('*').map(String::from).collect()),
                rules: e.rules.clone(),
                expires_before_ms,
            });
        }
        Ok(Allowlist { entries: out })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks that every `rules` entry names a loaded rule's `rule_id` (an
    /// entry naming a rule by its file name or a typo would silently never
    /// apply).
    ///
    /// # Errors
    /// The first entry naming an unknown rule id.
    pub fn check_rule_ids(&self, loaded: &[&str]) -> Result<(), AllowlistError> {
        for (index, e) in self.entries.iter().enumerate() {
            if let Some(rule) = e.rules.iter().find(|r| !loaded.contains(&r.as_str())) {
                return Err(AllowlistError::UnknownRule {
                    index,
                    owner: e.owner.clone(),
                    rule: rule.clone(),
                    loaded: loaded.join(", "),
                });
            }
        }
        Ok(())
    }

    /// Entries whose expiry date has passed at `now_ms`, as
    /// `(index, owner)`: they no longer apply and should be removed or
    /// renewed.
    pub fn expired(&self, now_ms: i64) -> Vec<(usize, &str)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.expires_before_ms.is_some_and(|end| now_ms >= end))
            .map(|(i, e)| (i, e.owner.as_str()))
            .collect()
    }

    /// Whether `ev` is excluded for `rule_id` at rule time `t_ms`. Every
    /// condition of an entry must hold (asn and resource name together
    /// narrow it).
    pub fn excludes(&self, rule_id: &str, ev: &NormalizedEvent, t_ms: i64) -> bool {
        self.entries.iter().any(|e| {
            if e.expires_before_ms.is_some_and(|end| t_ms >= end) {
                return false;
            }
            if !e.rules.is_empty() && !e.rules.iter().any(|r| r == rule_id) {
                return false;
            }
            if let Some(asn) = e.asn {
                if ev.source_as_number != Some(asn) {
                    return false;
                }
            }
            if let Some(pattern) = &e.resource_pattern {
                match ev.known(KnownField::AzureResourceName) {
                    Some(FieldValue::Str(name)) => {
                        if !wildcard_match(pattern, &name.to_lowercase()) {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
            true
        })
    }
}

fn day_after_ms(date: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(date.trim(), &format).ok()?;
    let next = day.next_day()?;
    Some(next.midnight().assume_utc().unix_timestamp() * 1000)
}

/// `parts` is the pattern split on `*`.
fn wildcard_match(parts: &[String], s: &str) -> bool {
    match parts {
        [] => s.is_empty(),
        [only] => only == s,
        [first, middle @ .., last] => {
            if !s.starts_with(first.as_str())
                || s.len() < first.len() + last.len()
                || !s.ends_with(last.as_str())
            {
                return false;
            }
            let mut rest = &s[first.len()..s.len() - last.len()];
            for part in middle {
                match rest.find(part.as_str()) {
                    Some(i) => rest = &rest[i + part.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(asn: Option<u32>, name: Option<&str>, expires: Option<&str>) -> AllowlistEntry {
        AllowlistEntry {
            asn,
            resource_name: name.map(String::from),
            rules: vec![],
            owner: "platform-team".into(),
            reason: "CI runners".into(),
            expires: expires.map(String::from),
        }
    }

    fn event(asn: u32, name: &str) -> NormalizedEvent {
        NormalizedEvent {
            source_as_number: Some(asn),
            resource_name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn asn_and_pattern_and_expiry() {
        let list = Allowlist::new(&[
            entry(Some(16509), None, Some("2025-03-05")),
            entry(None, Some("vm-build-*/extensions/*"), None),
        ])
        .unwrap();
        let day = 86_400_000;
        let mar5 = 1_741_132_800_000; // 2025-03-05T00:00:00Z
        assert!(list.excludes("r", &event(16509, "VM-WEB-01/EXTENSIONS/X"), mar5));
        assert!(list.excludes("r", &event(16509, "VM-WEB-01/EXTENSIONS/X"), mar5 + day - 1));
        assert!(!list.excludes("r", &event(16509, "VM-WEB-01/EXTENSIONS/X"), mar5 + day));
        assert!(list.excludes("r", &event(7018, "VM-BUILD-01/EXTENSIONS/DOCKER"), 0));
        assert!(!list.excludes("r", &event(7018, "VM-WEB-01/EXTENSIONS/DOCKER"), 0));
    }

    #[test]
    fn rule_ids_must_be_loaded_and_expired_entries_are_reported() {
        let mut by_name = entry(Some(9009), None, Some("2025-03-05"));
        by_name.rules = vec!["azure_vm_extension_crud_unusual_source_asn".into()];
        let list = Allowlist::new(&[entry(Some(1), None, None), by_name]).unwrap();
        let err = list
            .check_rule_ids(&["5f3c9a7e-2b41-4d8e-9c16-8a0f7d3b2e64"])
            .unwrap_err();
        assert!(
            matches!(err, AllowlistError::UnknownRule { index: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("5f3c9a7e-2b41-4d8e-9c16-8a0f7d3b2e64"),
            "{err}"
        );
        assert!(list
            .check_rule_ids(&["azure_vm_extension_crud_unusual_source_asn"])
            .is_ok());
        let mar6 = 1_741_219_200_000; // 2025-03-06T00:00:00Z
        assert_eq!(list.expired(mar6), vec![(1, "platform-team")]);
        assert!(list.expired(mar6 - 1).is_empty());
    }

    #[test]
    fn entries_must_be_accountable_and_specific() {
        assert!(matches!(
            Allowlist::new(&[entry(None, None, None)]),
            Err(AllowlistError::Empty { .. })
        ));
        let mut e = entry(Some(1), None, None);
        e.owner = " ".into();
        assert!(matches!(
            Allowlist::new(&[e]),
            Err(AllowlistError::Unaccountable { .. })
        ));
        assert!(matches!(
            Allowlist::new(&[entry(Some(1), None, Some("next week"))]),
            Err(AllowlistError::BadExpiry { .. })
        ));
    }

    #[test]
    fn wildcards() {
        let p = |s: &str| s.split('*').map(String::from).collect::<Vec<_>>();
        assert!(wildcard_match(&p("a*c"), "abc"));
        assert!(wildcard_match(&p("*"), "anything"));
        assert!(wildcard_match(&p("a*b*c"), "a-b-c"));
        assert!(!wildcard_match(&p("a*b*c"), "a-c"));
        assert!(!wildcard_match(&p("ab*ba"), "aba"));
    }
}
