//! New Terms semantics, pure: which terms a record carries, how a term is
//! keyed, and whether it is new.
//!
//! Mirrors Kibana's New Terms rule type (../shared/research/A §2):
//! - a term is the tuple of the rule's 1–3 new-terms field values; array
//!   values expand to every combination (cartesian product);
//! - a record missing any of the fields carries no term (no alert, no
//!   history);
//! - a term is new at time `t` iff no matching record had it in
//!   `[t − W, t)`: with last-seen `L` kept at the maximum, new iff there is
//!   no `L` or `L < t − W`. So a record exactly `W` after the last sighting
//!   counts as seen (Elastic's history range is inclusive at its start) and
//!   a late record (`t ≤ L`) is never new.
//!
//! Deliberate deviation 2: string values of ARM identifier fields (resource
//! names, ids, groups, providers, subscription ids) are keyed
//! case-insensitively, because ARM treats them so and Azure's logs change
//! their case over time; alerts still show the original casing.

use std::net::IpAddr;

use crate::event::{Document, FieldRef, FieldValue};

/// The new-terms fields of one rule, resolved once.
#[derive(Debug, Clone)]
pub struct TermFields {
    fields: Vec<FieldRef>,
    case_fold: Vec<bool>,
}

/// Whether a field holds ARM identifiers (keyed case-insensitively).
pub fn is_arm_identifier(field: &str) -> bool {
    field.starts_with("azure.resource.")
        || matches!(
            field,
            "azure.subscription_id"
                | "cloud.account.id"
                | "azure.resource_id"
                | "cloud.resource_id"
                | "event.action"
        )
}

impl TermFields {
    pub fn new(names: &[String]) -> TermFields {
        TermFields {
            fields: names.iter().map(|n| FieldRef::resolve(n)).collect(),
            case_fold: names.iter().map(|n| is_arm_identifier(n)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Calls `each` once per term the document carries (cartesian product
    /// over multi-valued fields), with the values in field order. Calls it
    /// zero times when any field is missing.
    pub fn for_each_term(&self, doc: &dyn Document, mut each: impl FnMut(&[TermValue])) {
        let mut per_field: Vec<Vec<TermValue>> = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let values = distinct_values(doc, field);
            if values.is_empty() {
                return;
            }
            per_field.push(values);
        }
        let mut index = vec![0usize; per_field.len()];
        let mut combo: Vec<TermValue> = Vec::with_capacity(per_field.len());
        loop {
            combo.clear();
            combo.extend(
                index
                    .iter()
                    .zip(&per_field)
                    .map(|(&i, vals)| vals[i].clone()),
            );
            each(&combo);
            // Odometer increment over the value lists.
            let mut pos = per_field.len();
            loop {
                if pos == 0 {
                    return;
                }
                pos -= 1;
                index[pos] += 1;
                if index[pos] < per_field[pos].len() {
                    break;
                }
                index[pos] = 0;
            }
        }
    }

    /// Encodes one term's values for the state key (a type tag then the
    /// bytes; the store length-prefixes each).
    pub fn encode_values(&self, values: &[TermValue]) -> Vec<Vec<u8>> {
        values
            .iter()
            .zip(&self.case_fold)
            .map(|(v, &fold)| encode_value(v, fold))
            .collect()
    }
}

/// One value of a term, owned (terms are built only for records that
/// matched the query, so the copy is off the hot path).
#[derive(Debug, Clone, PartialEq)]
pub enum TermValue {
    Str(Box<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ip(IpAddr),
}

impl From<FieldValue<'_>> for TermValue {
    fn from(v: FieldValue<'_>) -> Self {
        match v {
            FieldValue::Str(s) => TermValue::Str(s.into()),
            FieldValue::Int(i) => TermValue::Int(i),
            FieldValue::Float(f) => TermValue::Float(f),
            FieldValue::Bool(b) => TermValue::Bool(b),
            FieldValue::Ip(ip) => TermValue::Ip(ip),
        }
    }
}

impl TermValue {
    /// The value as the alert shows it: numbers stay numbers, original case.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            TermValue::Str(s) => s.as_ref().into(),
            TermValue::Int(i) => (*i).into(),
            TermValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            TermValue::Bool(b) => (*b).into(),
            TermValue::Ip(ip) => ip.to_string().into(),
        }
    }
}

impl std::fmt::Display for TermValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TermValue::Str(s) => f.write_str(s),
            TermValue::Int(i) => write!(f, "{i}"),
            TermValue::Float(x) => write!(f, "{x}"),
            TermValue::Bool(b) => write!(f, "{b}"),
            TermValue::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A field's distinct values (composite aggregations bucket distinct
/// values, so `["a","a"]` is one term).
fn distinct_values(doc: &dyn Document, field: &FieldRef) -> Vec<TermValue> {
    let mut out: Vec<TermValue> = Vec::new();
    doc.any_value(field, &mut |v| {
        let v = TermValue::from(v);
        if !out.contains(&v) {
            out.push(v);
        }
        false
    });
    out
}

fn encode_value(v: &TermValue, fold_case: bool) -> Vec<u8> {
    match v {
        TermValue::Str(s) => {
            let mut out = Vec::with_capacity(s.len() + 1);
            out.push(b's');
            if fold_case {
                out.extend_from_slice(s.to_lowercase().as_bytes());
            } else {
                out.extend_from_slice(s.as_bytes());
            }
            out
        }
        TermValue::Int(i) => [&[b'i'][..], &i.to_be_bytes()].concat(),
        TermValue::Float(f) => {
            // 1.0 and 1 are the same number to Elasticsearch.
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                [&[b'i'][..], &(*f as i64).to_be_bytes()].concat()
            } else {
                [&[b'f'][..], &f.to_bits().to_be_bytes()].concat()
            }
        }
        TermValue::Bool(b) => vec![b'b', u8::from(*b)],
        TermValue::Ip(ip) => {
            let mut out = vec![b'p'];
            match ip {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.to_ipv6_mapped().octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            }
            out
        }
    }
}

/// Whether a term last seen at `last_seen_ms` is new at `t_ms` with a
/// history window of `window_ms`.
pub fn is_new(last_seen_ms: Option<i64>, t_ms: i64, window_ms: i64) -> bool {
    match last_seen_ms {
        None => true,
        Some(last) => last < t_ms.saturating_sub(window_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn terms(fields: &[&str], doc: serde_json::Value) -> Vec<Vec<TermValue>> {
        let tf = TermFields::new(&fields.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        tf.for_each_term(&doc, |t| out.push(t.to_vec()));
        out
    }

    #[test]
    fn cartesian_product_over_arrays_with_distinct_values() {
        let t = terms(&["a", "b"], json!({"a": ["x", "y", "x"], "b": [1, 2]}));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0], vec![TermValue::Str("x".into()), TermValue::Int(1)]);
        assert_eq!(t[3], vec![TermValue::Str("y".into()), TermValue::Int(2)]);
    }

    #[test]
    fn a_missing_field_yields_no_term() {
        assert!(terms(&["a", "b"], json!({"a": "x"})).is_empty());
        assert!(terms(&["a", "b"], json!({"a": "x", "b": []})).is_empty());
        assert_eq!(terms(&["a"], json!({"a": "x"})).len(), 1);
    }

    #[test]
    fn arm_identifiers_key_case_insensitively_other_fields_do_not() {
        let tf = TermFields::new(&["azure.resource.name".to_string(), "user.name".to_string()]);
        let a = tf.encode_values(&[
            TermValue::Str("VM1/EXTENSIONS/X".into()),
            TermValue::Str("Bob".into()),
        ]);
        let b = tf.encode_values(&[
            TermValue::Str("vm1/extensions/x".into()),
            TermValue::Str("Bob".into()),
        ]);
        let c = tf.encode_values(&[
            TermValue::Str("vm1/extensions/x".into()),
            TermValue::Str("bob".into()),
        ]);
        assert_eq!(a, b);
        assert_ne!(b, c);
    }

    #[test]
    fn numbers_key_by_value_not_by_spelling() {
        let tf = TermFields::new(&["source.as.number".to_string()]);
        assert_eq!(
            tf.encode_values(&[TermValue::Int(8075)]),
            tf.encode_values(&[TermValue::Float(8075.0)])
        );
        assert_ne!(
            tf.encode_values(&[TermValue::Int(8075)]),
            tf.encode_values(&[TermValue::Str("8075".into())])
        );
    }

    #[test]
    fn newness_boundaries() {
        let w = 7 * 86_400_000;
        assert!(is_new(None, 0, w));
        // Exactly W ago counts as seen (inclusive history start).
        assert!(!is_new(Some(0), w, w));
        assert!(is_new(Some(0), w + 1, w));
        // Late records are never new.
        assert!(!is_new(Some(100), 50, w));
        assert!(!is_new(Some(100), 100, w));
    }
}
