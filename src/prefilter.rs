//! The raw-byte prefilter: decides from a record's JSON text, before it is
//! parsed into a tree and normalized, that no rule can match it.
//!
//! Most activity-log records are not what any rule looks for (the seed
//! rule wants VM-extension operations, about 1% of records), and building
//! the normalized event is most of the pipeline's cost. So the pipeline
//! first asks [`Prefilter::may_match`]; a record it rejects is only
//! summarized for the counters ([`crate::normalize::summarize_record`])
//! and never reaches the rules, which could not have matched it.
//!
//! Soundness: the prefilter may say "may match" for a record no rule
//! matches, never the reverse. It is derived from each rule's
//! [`Query::necessary`] condition, using only fields whose string values
//! are, up to ASCII case, a piece of a JSON string in the record (see
//! [`value_is_raw_text`]). For such a field and a literal that must equal
//! (or, for wildcards, occur in) its value:
//! - every run of the literal free of `"`, `\` and `/` and control
//!   characters appears in the record's text, ASCII-case-insensitively,
//!   unless the text uses `\u` escapes (then the record always takes the
//!   full path): in JSON those characters can only be escaped as `\uXXXX`;
//! - a literal made only of number characters (`0-9 . e E + -`) is not
//!   used, because a numeric JSON value renders differently from its text
//!   (`1e2` is `100.0`).
//!
//! A rule whose condition says nothing (a query on other fields, `not`
//! alone, `field:*` alone) disables the prefilter: every record takes the
//! full path. Pure: no I/O.

use memchr::memmem::Finder;

use crate::event::{FieldRef, FieldTarget, KnownField};
use crate::rules::kql::{Necessary, Query};

/// Whether every string value [`crate::normalize::normalize`] gives the
/// field is, up to ASCII case, a piece of one JSON string of the record (a
/// member value, possibly inside a JSON string it decodes), so that its
/// text can be searched for in the record's bytes. Values derived any
/// other way (defaults, lower-cased and de-spaced regions, renamed keys,
/// the ASN enrichment) are not.
pub fn value_is_raw_text(field: &FieldRef) -> bool {
    use KnownField as K;
    match field.target() {
        FieldTarget::Known(k) => matches!(
            k,
            // operationName, upper-cased.
            K::EventAction
                | K::OperationName
                // resourceId and the pieces the resource-id grok cuts out of it.
                | K::AzureResourceId
                | K::AzureResourceGroup
                | K::AzureResourceProvider
                | K::AzureResourceName
                | K::AzureSubscriptionId
                | K::CloudAccountId
                | K::AzureTenantId
                // Plain top-level members.
                | K::ResultType
                | K::ResultSignature
                | K::Category
                | K::AzureCorrelationId
                | K::ActivityTenantId
                | K::GeoName
                | K::LogLevel
                | K::SourceAddress
                // "success"/"failure"/"unknown": from resultType (any case)
                // or properties.result (exact).
                | K::EventOutcome
        ),
        FieldTarget::Identity(_) | FieldTarget::Properties(_) | FieldTarget::Unmapped => false,
    }
}

/// Compiled condition over needle indexes.
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    /// May match (nothing to check).
    True,
    Needle(usize),
    All(Vec<Cond>),
    Any(Vec<Cond>),
}

impl Cond {
    fn simplify(self) -> Cond {
        match self {
            Cond::All(items) => {
                let mut out: Vec<Cond> = Vec::new();
                for c in items.into_iter().map(Cond::simplify) {
                    match c {
                        Cond::True => {}
                        Cond::All(inner) => out.extend(inner),
                        c if !out.contains(&c) => out.push(c),
                        _ => {}
                    }
                }
                match out.len() {
                    0 => Cond::True,
                    1 => out.pop().expect("one"),
                    _ => Cond::All(out),
                }
            }
            Cond::Any(items) => {
                let mut out: Vec<Cond> = Vec::new();
                for c in items.into_iter().map(Cond::simplify) {
                    match c {
                        Cond::True => return Cond::True,
                        Cond::Any(inner) => out.extend(inner),
                        c if !out.contains(&c) => out.push(c),
                        _ => {}
                    }
                }
                match out.len() {
                    0 => Cond::True,
                    1 => out.pop().expect("one"),
                    _ => hoist(out),
                }
            }
            leaf => leaf,
        }
    }
}

/// `Any(All(a, b, x), All(a, b, y))` → `All(a, b, Any(x, y))`: needles
/// every alternative requires are checked once, first.
fn hoist(alternatives: Vec<Cond>) -> Cond {
    let needles_of = |c: &Cond| -> Vec<usize> {
        match c {
            Cond::Needle(n) => vec![*n],
            Cond::All(items) => items
                .iter()
                .filter_map(|i| match i {
                    Cond::Needle(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut common = needles_of(&alternatives[0]);
    for alt in &alternatives[1..] {
        let these = needles_of(alt);
        common.retain(|n| these.contains(n));
    }
    if common.is_empty() {
        return Cond::Any(alternatives);
    }
    let rest: Vec<Cond> = alternatives
        .into_iter()
        .map(|alt| match alt {
            Cond::All(items) => Cond::All(
                items
                    .into_iter()
                    .filter(|i| !matches!(i, Cond::Needle(n) if common.contains(n)))
                    .collect(),
            )
            .simplify(),
            // A lone needle that is common: the alternative is satisfied
            // by the common part alone.
            _ => Cond::True,
        })
        .collect();
    let mut all: Vec<Cond> = common.into_iter().map(Cond::Needle).collect();
    all.push(Cond::Any(rest).simplify());
    Cond::All(all).simplify()
}

/// The prefilter of a rule set. Build it once per rule set.
#[derive(Debug)]
pub struct Prefilter {
    /// `None`: some rule gives no condition; every record may match.
    cond: Option<Cond>,
    needles: Vec<Finder<'static>>,
    /// `\u`, built once: `memmem::find` would build a searcher per record.
    unicode_escape: Finder<'static>,
}

/// Per-call scratch space, reused across the records of a body.
#[derive(Debug, Default)]
pub struct Scratch {
    lower: Vec<u8>,
    memo: Vec<Option<bool>>,
}

/// Characters a numeric JSON value's text can consist of.
fn is_number_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

/// Runs shorter than this are not searched (sound: dropping a required
/// piece only weakens the condition; short ones reject almost nothing).
const MIN_NEEDLE: usize = 3;

struct Builder {
    needles: Vec<Vec<u8>>,
}

impl Builder {
    fn needle(&mut self, text: &str) -> usize {
        let lower = text.as_bytes().to_ascii_lowercase();
        match self.needles.iter().position(|n| *n == lower) {
            Some(i) => i,
            None => {
                self.needles.push(lower);
                self.needles.len() - 1
            }
        }
    }

    /// The condition that `value`'s text (or a piece of it) is in the
    /// record: all its escape-free runs occur.
    fn literal(&mut self, literal: &str) -> Cond {
        if is_number_text(literal) {
            return Cond::True;
        }
        let runs = literal
            .split(|c: char| c == '"' || c == '\\' || c == '/' || c.is_control())
            .filter(|r| r.len() >= MIN_NEEDLE);
        Cond::All(runs.map(|r| Cond::Needle(self.needle(r))).collect())
    }

    fn cond_of(&mut self, n: &Necessary<'_>) -> Cond {
        match n {
            Necessary::Unknown => Cond::True,
            Necessary::Equals { field, values } if value_is_raw_text(field) => {
                Cond::Any(values.iter().map(|v| self.literal(v)).collect())
            }
            Necessary::Contains { field, parts } if value_is_raw_text(field) => {
                Cond::All(parts.iter().map(|p| self.literal(p)).collect())
            }
            Necessary::Equals { .. } | Necessary::Contains { .. } => Cond::True,
            Necessary::All(items) => Cond::All(items.iter().map(|i| self.cond_of(i)).collect()),
            Necessary::Any(items) => Cond::Any(items.iter().map(|i| self.cond_of(i)).collect()),
        }
    }
}

impl Prefilter {
    /// The prefilter for a set of queries: a record may match when it may
    /// match any of them.
    pub fn new<'a>(queries: impl IntoIterator<Item = &'a Query>) -> Prefilter {
        let mut b = Builder {
            needles: Vec::new(),
        };
        let per_query: Vec<Cond> = queries
            .into_iter()
            .map(|q| b.cond_of(&q.necessary()))
            .collect();
        let cond = if per_query.is_empty() {
            // No rules: nothing can match.
            Some(Cond::Any(Vec::new()))
        } else {
            match Cond::Any(per_query).simplify() {
                Cond::True => None,
                c => Some(c),
            }
        };
        Prefilter {
            cond,
            needles: b
                .needles
                .iter()
                .map(|n| Finder::new(n).into_owned())
                .collect(),
            unicode_escape: Finder::new(b"\\u").into_owned(),
        }
    }

    /// A prefilter that lets every record through.
    pub fn disabled() -> Prefilter {
        Prefilter {
            cond: None,
            needles: Vec::new(),
            unicode_escape: Finder::new(b"\\u").into_owned(),
        }
    }

    /// Whether it can reject anything.
    pub fn is_active(&self) -> bool {
        self.cond.is_some()
    }

    /// The byte strings it searches for (lower-cased), for diagnostics.
    pub fn needles(&self) -> Vec<String> {
        self.needles
            .iter()
            .map(|f| String::from_utf8_lossy(f.needle()).into_owned())
            .collect()
    }

    /// False only when no rule can match the record whose JSON text this
    /// is.
    pub fn may_match(&self, text: &str, scratch: &mut Scratch) -> bool {
        let Some(cond) = &self.cond else {
            return true;
        };
        let bytes = text.as_bytes();
        // `\uXXXX` escapes could hide any needle character.
        if self.unicode_escape.find(bytes).is_some() {
            return true;
        }
        scratch.lower.clear();
        scratch
            .lower
            .extend(bytes.iter().map(u8::to_ascii_lowercase));
        scratch.memo.clear();
        scratch.memo.resize(self.needles.len(), None);
        self.eval(cond, scratch)
    }

    fn eval(&self, cond: &Cond, scratch: &mut Scratch) -> bool {
        match cond {
            Cond::True => true,
            Cond::Needle(i) => match scratch.memo[*i] {
                Some(found) => found,
                None => {
                    let found = self.needles[*i].find(&scratch.lower).is_some();
                    scratch.memo[*i] = Some(found);
                    found
                }
            },
            Cond::All(items) => items.iter().all(|c| self.eval(c, scratch)),
            Cond::Any(items) => items.iter().any(|c| self.eval(c, scratch)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefilter(queries: &[&str]) -> Prefilter {
        let qs: Vec<Query> = queries.iter().map(|q| Query::parse(q).unwrap()).collect();
        Prefilter::new(qs.iter())
    }

    fn may(p: &Prefilter, text: &str) -> bool {
        p.may_match(text, &mut Scratch::default())
    }

    const SEED: &str = r#"event.action:("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/WRITE") and event.outcome:(Success or success) and azure.resource.name:* and source.as.number:(* and not (8075 or 12076))"#;

    #[test]
    fn seed_rule_needles_are_hoisted_and_case_insensitive() {
        let p = prefilter(&[SEED]);
        assert!(p.is_active());
        let needles = p.needles();
        for n in ["microsoft.compute", "extensions", "write", "success"] {
            assert!(needles.contains(&n.to_string()), "{needles:?}");
        }
        let ext = r#"{"operationName":"microsoft.compute/virtualMachines/extensions/write","resultType":"SUCCESS"}"#;
        assert!(may(&p, ext));
        // An escaped solidus does not hide the pieces.
        let escaped = r#"{"operationName":"MICROSOFT.COMPUTE\/VIRTUALMACHINES\/EXTENSIONS\/WRITE","resultType":"Success"}"#;
        assert!(may(&p, escaped));
        let other = r#"{"operationName":"MICROSOFT.STORAGE/STORAGEACCOUNTS/LISTKEYS/ACTION","resultType":"Success"}"#;
        assert!(!may(&p, other));
        let start = r#"{"operationName":"MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE","resultType":"Start"}"#;
        assert!(!may(&p, start));
    }

    #[test]
    fn unicode_escapes_always_take_the_full_path() {
        let p = prefilter(&[SEED]);
        let hidden = r#"{"operationName":"MICROSOFT.COMPUTE/VIRTUALMACHINES/\u0045XTENSIONS/WRITE","resultType":"Success"}"#;
        assert!(may(&p, hidden));
    }

    #[test]
    fn conditions_on_other_fields_disable_it() {
        // Numbers, derived fields, negation alone, existence alone.
        for q in [
            "source.as.number:64500",
            "event.type:change",
            "not event.action:X",
            "azure.resource.name:*",
            "azure.activitylogs.properties.status_code:Created",
            "event.action:123",
        ] {
            assert!(!prefilter(&[q]).is_active(), "{q}");
        }
        // One rule without a condition disables it for the set.
        assert!(!prefilter(&[SEED, "source.as.number:64500"]).is_active());
    }

    #[test]
    fn wildcards_require_their_fixed_parts() {
        let p = prefilter(&["azure.resource.name:*/EXTENSIONS/CUSTOMSCRIPT*"]);
        assert!(p.is_active());
        assert!(may(
            &p,
            r#"{"resourceId":"/x/VM1/extensions/CustomScript"}"#
        ));
        assert!(!may(&p, r#"{"resourceId":"/x/VM1/extensions/RunCommand"}"#));
    }

    #[test]
    fn or_of_rules_is_the_union() {
        let p = prefilter(&[
            SEED,
            "event.action:MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE",
        ]);
        assert!(may(
            &p,
            r#"{"operationName":"Microsoft.Authorization/roleAssignments/write"}"#
        ));
        assert!(!may(
            &p,
            r#"{"operationName":"Microsoft.Storage/storageAccounts/write"}"#
        ));
    }

    #[test]
    fn no_rules_match_nothing() {
        let p = Prefilter::new(std::iter::empty());
        assert!(p.is_active());
        assert!(!may(&p, "{}"));
    }
}
