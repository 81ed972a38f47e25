//! Decode: one Event Hubs event body → the Activity Log records it carries.
//!
//! A diagnostic setting writes `{"records":[…]}`, but real exports also carry
//! a bare top-level array of records or one record object, so all three are
//! accepted, in the order Elastic's Event Hubs input tries them (records
//! object, then array, then the object itself as one record).
//!
//! Decoding never fails a whole batch: it returns the records it could read
//! plus a [`DecodeError`] per problem, and the caller counts, logs and
//! dead-letters those with the event's position. Bodies are bounded
//! ([`DecodeLimits`]) so a hostile body cannot make us allocate or recurse
//! without limit.
//!
//! Pure: no I/O, no clock.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Limits on the work one body may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest body accepted, in bytes. Event Hubs caps an event at 1 MiB
    /// (Standard tier), so the default accepts every legitimate event.
    pub max_body_bytes: usize,
    /// Deepest nesting of objects/arrays. Activity Log records nest about
    /// eight levels (properties.responseBody…); 64 leaves room for odd
    /// services and stops recursion bombs long before serde's own limit.
    pub max_depth: usize,
    /// Most records one body may carry.
    pub max_records: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_body_bytes: 1024 * 1024,
            max_depth: 64,
            max_records: 10_000,
        }
    }
}

/// Why a body (or one record of it) could not be decoded. The variant names
/// are metric labels (`code()`), so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The body is not UTF-8.
    InvalidUtf8,
    /// The body is not valid JSON.
    InvalidJson,
    /// The body exceeds `max_body_bytes`.
    TooLarge,
    /// The body nests deeper than `max_depth`.
    TooDeep,
    /// The body carries more than `max_records` records.
    TooManyRecords,
    /// The body is empty or only whitespace.
    EmptyBody,
    /// A record is not a JSON object (e.g. a number inside `records`).
    NotAnObject,
}

impl DecodeErrorKind {
    pub const ALL: &'static [DecodeErrorKind] = &[
        DecodeErrorKind::InvalidUtf8,
        DecodeErrorKind::InvalidJson,
        DecodeErrorKind::TooLarge,
        DecodeErrorKind::TooDeep,
        DecodeErrorKind::TooManyRecords,
        DecodeErrorKind::EmptyBody,
        DecodeErrorKind::NotAnObject,
    ];

    /// Stable metric label.
    pub fn code(self) -> &'static str {
        match self {
            DecodeErrorKind::InvalidUtf8 => "invalid_utf8",
            DecodeErrorKind::InvalidJson => "invalid_json",
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::TooDeep => "too_deep",
            DecodeErrorKind::TooManyRecords => "too_many_records",
            DecodeErrorKind::EmptyBody => "empty_body",
            DecodeErrorKind::NotAnObject => "not_an_object",
        }
    }
}

/// A decode problem, with a short human detail. The caller adds the event's
/// position (source, partition, sequence number) when it logs and
/// dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.code())]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub detail: String,
    /// Index of the record within the body, when the problem is one record.
    pub record_index: Option<usize>,
}

impl DecodeError {
    fn body(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        DecodeError {
            kind,
            detail: detail.into(),
            record_index: None,
        }
    }
}

/// One record, parsed, with its text kept for `event.original`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord<'a> {
    /// The record's JSON text as it arrived (borrowed from the body).
    pub text: &'a str,
    /// Its top-level fields, with Elastic's empty-key pairs removed.
    pub fields: Map<String, Value>,
}

/// What one body yielded.
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    pub records: Vec<RawRecord<'a>>,
    pub errors: Vec<DecodeError>,
    /// Records that were empty objects `{}` (skipped, counted).
    pub empty_records: usize,
}

/// Decodes one Event Hubs event body.
pub fn decode_body<'a>(body: &'a [u8], limits: &DecodeLimits) -> Decoded<'a> {
    let mut out = Decoded::default();
    let raw_records = match decode_envelope(body, limits) {
        Ok(records) => records,
        Err(e) => {
            out.errors.push(e);
            return out;
        }
    };
    out.records.reserve(raw_records.len());
    for (index, raw) in raw_records.into_iter().enumerate() {
        match decode_record(index, raw) {
            RecordOutcome::Record(record) => out.records.push(record),
            RecordOutcome::Empty => out.empty_records += 1,
            RecordOutcome::Error(e) => out.errors.push(e),
        }
    }
    out
}

/// The body-level half of [`decode_body`]: checks the limits and splits
/// the body into its records' JSON texts (validated, not yet parsed), or
/// returns the one error that makes the whole body undecodable.
///
/// # Errors
/// Every body-level [`DecodeErrorKind`] (size, UTF-8, empty, depth, JSON
/// syntax, record count).
pub fn decode_envelope<'a>(
    body: &'a [u8],
    limits: &DecodeLimits,
) -> Result<Vec<&'a RawValue>, DecodeError> {
    envelope_records(envelope_text(body, limits)?, limits)
}

/// The first checks of [`decode_envelope`]: size, UTF-8, emptiness.
/// Returns the body as text without a byte-order mark and surrounding
/// whitespace.
///
/// # Errors
/// `TooLarge`, `InvalidUtf8` and `EmptyBody`.
pub fn envelope_text<'a>(body: &'a [u8], limits: &DecodeLimits) -> Result<&'a str, DecodeError> {
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::body(
            DecodeErrorKind::TooLarge,
            format!(
                "body is {} bytes, the limit is {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return Err(DecodeError::body(
                DecodeErrorKind::InvalidUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
    };
    // A UTF-8 byte-order mark is not JSON but some exporters write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    if text.is_empty() {
        return Err(DecodeError::body(DecodeErrorKind::EmptyBody, "empty body"));
    }
    Ok(text)
}

/// The rest of [`decode_envelope`], on what [`envelope_text`] returned:
/// nesting depth, JSON syntax and the record count.
///
/// # Errors
/// `TooDeep`, `InvalidJson` and `TooManyRecords`.
pub fn envelope_records<'a>(
    text: &'a str,
    limits: &DecodeLimits,
) -> Result<Vec<&'a RawValue>, DecodeError> {
    if let Err(depth) = check_depth(text.as_bytes(), limits.max_depth) {
        return Err(DecodeError::body(
            DecodeErrorKind::TooDeep,
            format!(
                "nesting exceeds {} levels (at byte {depth})",
                limits.max_depth
            ),
        ));
    }

    let raw_records: Vec<&'a RawValue> = if text.starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(text).map_err(|e| invalid_json(&e))?
    } else {
        #[derive(Deserialize)]
        struct Envelope<'b> {
            #[serde(borrow)]
            records: Option<Vec<&'b RawValue>>,
        }
        match serde_json::from_str::<Envelope>(text) {
            Ok(Envelope {
                records: Some(items),
            }) => items,
            // No `records` key, or one that is not an array: the object is
            // itself one record (Elastic's last fallback). Validate it.
            Ok(Envelope { records: None }) | Err(_) => {
                vec![serde_json::from_str(text).map_err(|e| invalid_json(&e))?]
            }
        }
    };

    if raw_records.len() > limits.max_records {
        return Err(DecodeError::body(
            DecodeErrorKind::TooManyRecords,
            format!(
                "body carries {} records, the limit is {}",
                raw_records.len(),
                limits.max_records
            ),
        ));
    }
    Ok(raw_records)
}

/// What one record of a body decodes to.
#[derive(Debug)]
pub enum RecordOutcome<'a> {
    Record(RawRecord<'a>),
    /// An empty object `{}` (skipped, counted).
    Empty,
    Error(DecodeError),
}

/// Whether a record's text can hold a `""` member name (Elastic's
/// `"":""` noise). Decode strips such members only then; the counting
/// summary (`normalize::summarize_top`) asks the same question.
pub(crate) fn may_have_empty_names(record_text: &str) -> bool {
    memchr::memmem::find(record_text.as_bytes(), b"\"\":").is_some()
}

/// The record-level half of [`decode_body`]: parses record `index` of a
/// body (as [`decode_envelope`] returned it).
pub fn decode_record(index: usize, raw: &RawValue) -> RecordOutcome<'_> {
    decode_record_text(index, raw.get())
}

/// [`decode_record`] on the record's JSON text.
pub fn decode_record_text(index: usize, record_text: &str) -> RecordOutcome<'_> {
    match serde_json::from_str::<Value>(record_text) {
        Ok(Value::Object(mut fields)) => {
            if fields.is_empty() {
                return RecordOutcome::Empty;
            }
            if may_have_empty_names(record_text) {
                strip_empty_keys(&mut fields);
                // `{"":""}` is `{}` once the noise is gone.
                if fields.is_empty() {
                    return RecordOutcome::Empty;
                }
            }
            RecordOutcome::Record(RawRecord {
                text: record_text,
                fields,
            })
        }
        Ok(other) => RecordOutcome::Error(DecodeError {
            kind: DecodeErrorKind::NotAnObject,
            detail: format!("record is a JSON {}, not an object", json_kind(&other)),
            record_index: Some(index),
        }),
        Err(e) => RecordOutcome::Error(DecodeError {
            record_index: Some(index),
            ..invalid_json(&e)
        }),
    }
}

fn invalid_json(e: &serde_json::Error) -> DecodeError {
    DecodeError::body(
        DecodeErrorKind::InvalidJson,
        format!("line {} column {}: {e}", e.line(), e.column()),
    )
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks nesting depth with one pass over the bytes (strings skipped), so
/// a deeply nested body is refused before any parser recurses into it.
/// Returns the byte offset where the limit was exceeded.
fn check_depth(bytes: &[u8], max_depth: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Removes `"": ""` members at any depth, as Elastic's pipeline strips the
/// `"":"",` pairs some services emit (they break Elasticsearch mappings and
/// carry nothing).
fn strip_empty_keys(map: &mut Map<String, Value>) {
    if map.get("").is_some_and(|v| v.as_str() == Some("")) {
        map.remove("");
    }
    for value in map.values_mut() {
        strip_empty_keys_value(value);
    }
}

fn strip_empty_keys_value(value: &mut Value) {
    match value {
        Value::Object(m) => strip_empty_keys(m),
        Value::Array(items) => items.iter_mut().for_each(strip_empty_keys_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Decoded<'_> {
        decode_body(body.as_bytes(), &DecodeLimits::default())
    }

    #[test]
    fn accepts_records_envelope_array_and_single_object() {
        let d = decode(r#"{"records":[{"a":1},{"b":2}]}"#);
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[1].text, r#"{"b":2}"#);
        assert!(d.errors.is_empty());

        let d = decode(r#" [ {"a":1}, {"b":2}, {"c":3} ] "#);
        assert_eq!(d.records.len(), 3);

        let d = decode(r#"{"time":"2025-03-01T10:00:00Z","operationName":"X"}"#);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].fields["operationName"], "X");
    }

    #[test]
    fn empty_records_and_empty_objects_yield_nothing() {
        let d = decode(r#"{"records":[]}"#);
        assert!(d.records.is_empty() && d.errors.is_empty());
        let d = decode("{}");
        assert!(d.records.is_empty() && d.errors.is_empty());
        assert_eq!(d.empty_records, 1);
        let d = decode(r#"{"records":[{}, {"a":1}]}"#);
        assert_eq!((d.records.len(), d.empty_records), (1, 1));
    }

    #[test]
    fn records_key_that_is_not_an_array_makes_the_object_one_record() {
        let d = decode(r#"{"records":"oops","time":"x"}"#);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].fields["records"], "oops");
    }

    #[test]
    fn invalid_json_is_an_error_not_a_panic() {
        // The unquoted blob placeholder Azure has been seen to emit (BR-06).
        let d = decode(r#"{"records":[{"properties":[ 227 B blob data ]}]}"#);
        assert!(d.records.is_empty());
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].kind, DecodeErrorKind::InvalidJson);
        assert!(d.errors[0].to_string().starts_with("invalid_json: line 1"));
    }

    #[test]
    fn non_utf8_empty_and_non_object_records_are_classified() {
        let d = decode_body(b"{\"a\":\"\xff\"}", &DecodeLimits::default());
        assert_eq!(d.errors[0].kind, DecodeErrorKind::InvalidUtf8);
        assert_eq!(decode("  \n").errors[0].kind, DecodeErrorKind::EmptyBody);
        let d = decode(r#"{"records":[1, {"a":1}, "x"]}"#);
        assert_eq!(d.records.len(), 1);
        let kinds: Vec<_> = d.errors.iter().map(|e| (e.kind, e.record_index)).collect();
        assert_eq!(
            kinds,
            [
                (DecodeErrorKind::NotAnObject, Some(0)),
                (DecodeErrorKind::NotAnObject, Some(2))
            ]
        );
        assert_eq!(decode("42").errors[0].kind, DecodeErrorKind::NotAnObject);
    }

    #[test]
    fn limits_bound_size_depth_and_record_count() {
        let limits = DecodeLimits {
            max_body_bytes: 64,
            max_depth: 4,
            max_records: 2,
        };
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            decode_body(big.as_bytes(), &limits).errors[0].kind,
            DecodeErrorKind::TooLarge
        );
        let deep = r#"{"a":[[[[1]]]]}"#;
        assert_eq!(
            decode_body(deep.as_bytes(), &limits).errors[0].kind,
            DecodeErrorKind::TooDeep
        );
        // Brackets inside strings do not count.
        let stringy = r#"{"a":"[[[[[[[["}"#;
        assert!(decode_body(stringy.as_bytes(), &limits).errors.is_empty());
        let many = r#"[{"a":1},{"a":2},{"a":3}]"#;
        assert_eq!(
            decode_body(many.as_bytes(), &limits).errors[0].kind,
            DecodeErrorKind::TooManyRecords
        );
        // A recursion bomb far beyond serde's own limit is refused cleanly.
        let bomb = "[".repeat(100_000);
        let d = decode_body(bomb.as_bytes(), &DecodeLimits::default());
        assert_eq!(d.errors[0].kind, DecodeErrorKind::TooDeep);
    }

    #[test]
    fn strips_empty_key_pairs_at_any_depth() {
        let d = decode(
            r#"{"records":[{"":"","properties":{"":"","statusCode":"Created"},"x":[{"":""}]}]}"#,
        );
        let f = &d.records[0].fields;
        assert!(!f.contains_key(""));
        assert_eq!(f["properties"], serde_json::json!({"statusCode":"Created"}));
        assert_eq!(f["x"], serde_json::json!([{}]));
        // An empty key with a real value is data, not noise: kept.
        let d = decode(r#"{"":"keep","a":1}"#);
        assert_eq!(d.records[0].fields[""], "keep");
        // Nothing but noise is an empty record, like `{}`.
        let d = decode(r#"{"records":[{"":""},{"a":1}]}"#);
        assert_eq!((d.records.len(), d.empty_records), (1, 1));
    }

    #[test]
    fn bom_is_tolerated() {
        let d = decode("\u{feff}{\"records\":[{\"a\":1}]}");
        assert_eq!(d.records.len(), 1);
    }
}
