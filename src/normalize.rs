//! Normalize: one decoded Activity Log record → a [`NormalizedEvent`] with
//! the ECS fields Elastic's Azure integration (`azure.activitylogs` ingest
//! pipeline plus `azure-shared-pipeline`) produces, so Elastic's rules run
//! unchanged.
//!
//! Parity target: the newest pipeline version read (elastic/integrations
//! @37c97e14, see ../shared/research/B-activity-logs.md). Deliberate
//! deviations, each tested:
//! 1. `event.action` is the operation name upper-cased (ARM operation names
//!    are case-insensitive; Elastic copies them verbatim and its upper-case
//!    rule then misses lower-case records). The verbatim value stays in
//!    `azure.activitylogs.operation_name`.
//! 2. (in the rules engine) new-terms keys compare ARM identifiers
//!    case-insensitively.
//! 3. A caller of the exact forms `a.b.c.d:port` or `[v6]:port` yields
//!    `source.ip` and `source.port` (Elastic keeps it in `source.address`
//!    only, so its rule cannot see the AS number). Anything else that is not
//!    an IP literal (CIDR, host names, `<null>`) goes to `source.address`.
//! 4. An `identity` that arrives as a JSON-encoded string is decoded (Elastic
//!    stores it undecoded in `identity_name`); a plain display name still goes
//!    to `identity_name`.
//! 5. `durationMs` given as a float or float string becomes whole
//!    nanoseconds instead of a pipeline error.
//!
//! Never fails: a field with an unexpected type is left out and the record
//! is kept. Pure: time comes in as an argument.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use crate::decode::RawRecord;
use crate::event::{NormalizedEvent, Outcome};

/// Where the record came from, for the timestamp fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordContext {
    /// Event Hubs enqueued time of the event that carried the record.
    pub enqueued_time_ms: Option<i64>,
}

/// `resultType` values that give no `event.outcome`, as a closed set for the
/// `outcome_unmapped` metric (so we notice vocabulary drift like
/// `Succeeded`, BR-04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnmappedOutcome {
    Start,
    Accept,
    Succeeded,
    Failed,
    Other,
}

impl UnmappedOutcome {
    pub const ALL: &'static [UnmappedOutcome] = &[
        UnmappedOutcome::Start,
        UnmappedOutcome::Accept,
        UnmappedOutcome::Succeeded,
        UnmappedOutcome::Failed,
        UnmappedOutcome::Other,
    ];

    pub fn code(self) -> &'static str {
        match self {
            UnmappedOutcome::Start => "start",
            UnmappedOutcome::Accept => "accept",
            UnmappedOutcome::Succeeded => "succeeded",
            UnmappedOutcome::Failed => "failed",
            UnmappedOutcome::Other => "other",
        }
    }

    fn classify(result_type: &str) -> UnmappedOutcome {
        match result_type.to_ascii_lowercase().as_str() {
            "start" | "started" => UnmappedOutcome::Start,
            "accept" | "accepted" => UnmappedOutcome::Accept,
            "succeeded" => UnmappedOutcome::Succeeded,
            "failed" => UnmappedOutcome::Failed,
            _ => UnmappedOutcome::Other,
        }
    }
}

/// Things worth counting that happened while normalizing one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormalizeNotes {
    /// `time` was missing or unparseable; `@timestamp` fell back.
    pub timestamp_fallback: bool,
    /// `resultType` was present but gave no outcome.
    pub outcome_unmapped: Option<UnmappedOutcome>,
}

/// Normalizes one record. `record.fields` is consumed (moved into the event
/// where Elastic keeps subtrees) to avoid copying `identity`/`properties`.
pub fn normalize(record: RawRecord<'_>, ctx: RecordContext) -> (NormalizedEvent, NormalizeNotes) {
    let RawRecord { text, mut fields } = record;
    let mut ev = NormalizedEvent {
        original: text.into(),
        ..Default::default()
    };
    let mut notes = NormalizeNotes::default();

    // @timestamp
    match fields
        .get("time")
        .and_then(Value::as_str)
        .and_then(parse_time)
    {
        Some(ms) => ev.timestamp_ms = ms,
        None => {
            ev.timestamp_ms = ctx.enqueued_time_ms.unwrap_or(0);
            ev.timestamp_fallback = true;
            notes.timestamp_fallback = true;
        }
    }

    // Resource id → subscription, group, provider, name (shared pipeline grok).
    if let Some(resource_id) = take_string(&mut fields, "resourceId") {
        apply_resource_id(&resource_id, &mut ev);
        ev.resource_id = Some(resource_id.into());
    }

    // Caller → source.ip / source.address.
    if let Some(caller) = fields.get("callerIpAddress") {
        apply_caller(caller, &mut ev);
    }

    // Level: `level` is the log level; numeric `Level` stays vendor-scoped.
    if let Some(level) = fields.get("level").and_then(scalar_string) {
        ev.log_level = Some(level.into());
    }
    if let Some(level) = fields.remove("Level") {
        if !level.is_null() {
            ev.activity_level = Some(level);
        }
    }

    ev.event_duration_ns = fields.get("durationMs").and_then(duration_ns);

    if let Some(location) = fields.get("location").and_then(Value::as_str) {
        ev.geo_name = Some(location.into());
        if location.len() > 2 && !location.eq_ignore_ascii_case("global") {
            let region: String = location
                .chars()
                .filter(|c| !c.is_whitespace())
                .flat_map(char::to_lowercase)
                .collect();
            ev.cloud_region = Some(region.into());
        }
    }

    // Identity.
    match fields.remove("identity") {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(obj)) => apply_identity(obj, &mut ev),
            _ => ev.identity_name = Some(s.into()),
        },
        Some(Value::Object(obj)) => apply_identity(obj, &mut ev),
        _ => {}
    }

    // Properties (may arrive as a JSON string).
    let mut properties = match fields.remove("properties") {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => Some(Value::String(s)),
        },
        Some(Value::Null) | None => None,
        Some(v) => Some(v),
    };
    let props = properties.as_mut().and_then(Value::as_object_mut);

    // event_category: properties.eventCategory, else Policy, else Administrative.
    ev.event_category = Some(match props.as_ref().and_then(|p| p.get("eventCategory")) {
        Some(v) => scalar_string(v).unwrap_or_default().into(),
        None if props.as_ref().is_some_and(|p| p.contains_key("policies")) => "Policy".into(),
        None => "Administrative".into(),
    });

    // Outcome: resultType success/failure (any case), else properties.result.
    let result_type = fields.get("resultType").and_then(scalar_string);
    ev.event_outcome = outcome_from_result_type(fields.get("resultType").and_then(Value::as_str))
        .or_else(|| {
            outcome_from_properties_result(
                props
                    .as_ref()
                    .and_then(|p| p.get("result"))
                    .and_then(Value::as_str),
            )
        });
    if ev.event_outcome.is_none() {
        notes.outcome_unmapped = result_type.as_deref().map(UnmappedOutcome::classify);
    }
    ev.result_type = result_type.map(Into::into);

    if let Some(p) = props {
        p.remove("eventCategory");
        for key in ["responseBody", "requestBody"] {
            if let Some(Value::String(s)) = p.get(key) {
                if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                    p.insert(key.to_string(), parsed);
                }
            }
        }
        rename(p, "serviceRequestId", "service_request_id");
        rename(p, "statusCode", "status_code");
        if let Some(message) = p.remove("statusMessage") {
            ev.message = scalar_string(&message).map(Into::into);
        }
    }
    ev.properties = properties;

    // Operation, category, ids.
    if let Some(op) = fields.get("operationName").and_then(scalar_string) {
        ev.event_action = Some(op.to_ascii_uppercase().into());
        ev.operation_name = Some(op.into());
    }
    if let Some(cat) = fields.get("category").and_then(scalar_string) {
        ev.event_type = match cat.to_ascii_lowercase().as_str() {
            "write" | "action" => Some("change"),
            "read" => Some("access"),
            "delete" => Some("deletion"),
            _ => None,
        };
        ev.category = Some(cat.into());
    }
    ev.result_signature = fields
        .get("resultSignature")
        .and_then(scalar_string)
        .map(Into::into);
    ev.correlation_id = fields
        .get("correlationId")
        .and_then(scalar_string)
        .map(Into::into);
    if let Some(tenant) = fields.get("tenantId").and_then(scalar_string) {
        ev.tenant_id = Some(tenant.into());
    }

    (ev, notes)
}

/// `event.outcome` from a string `resultType` (any case).
fn outcome_from_result_type(result_type: Option<&str>) -> Option<Outcome> {
    let rt = result_type?;
    if rt.eq_ignore_ascii_case("success") {
        Some(Outcome::Success)
    } else if rt.eq_ignore_ascii_case("failure") {
        Some(Outcome::Failure)
    } else {
        None
    }
}

/// `event.outcome` from a string `properties.result` (exact case).
fn outcome_from_properties_result(result: Option<&str>) -> Option<Outcome> {
    match result? {
        "success" => Some(Outcome::Success),
        "failure" => Some(Outcome::Failure),
        "unknown" => Some(Outcome::Unknown),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Summary without normalizing

/// What [`normalize`] would note about a record, and the caller it would
/// extract, read from the record's JSON text without building the event.
/// The pipeline counts these for records the raw prefilter skips, so the
/// counters are the same whether or not a record was normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    /// The record is `{}` (decode skips and counts it).
    pub empty: bool,
    pub notes: NormalizeNotes,
    /// `source.ip`.
    pub source_ip: Option<IpAddr>,
    /// Whether `source.address` would be set.
    pub source_address: bool,
}

/// Summarizes one record's JSON text. `None` when the text is not a JSON
/// object (the caller then decodes it fully, which reports the error).
pub fn summarize_record(text: &str) -> Option<RecordSummary> {
    let top: summary::Top<'_> = serde_json::from_str(text).ok()?;
    Some(summarize_top(&top, text))
}

/// [`summarize_record`] from the members it reads, however they were
/// found (serde here, the fast body scanner in `crate::scan`).
pub(crate) fn summarize_top(top: &summary::Top<'_>, text: &str) -> RecordSummary {
    let mut notes = NormalizeNotes {
        timestamp_fallback: !matches!(&top.time, Some(summary::Scalar::Str(t)) if parse_time(t).is_some()),
        outcome_unmapped: None,
    };
    let result_type_str = match &top.result_type {
        Some(summary::Scalar::Str(s)) => Some(s.as_ref()),
        _ => None,
    };
    let mut outcome = outcome_from_result_type(result_type_str);
    if outcome.is_none() {
        // The properties' `result`, from an object or a JSON string
        // holding one, as `normalize` reads it.
        let owned;
        let props = match &top.properties {
            Some(summary::Props::Str(s)) => {
                owned = serde_json::from_str::<summary::Props<'_>>(s).ok();
                owned.as_ref()
            }
            other => other.as_ref(),
        };
        if let Some(summary::Props::Object {
            result: Some(summary::Scalar::Str(r)),
        }) = props
        {
            outcome = outcome_from_properties_result(Some(r));
        }
    }
    if outcome.is_none() {
        // `scalar_string` of resultType, classified; a number or boolean
        // is never one of the named outcomes.
        notes.outcome_unmapped = match &top.result_type {
            Some(summary::Scalar::Str(s)) => Some(UnmappedOutcome::classify(s)),
            Some(summary::Scalar::Other) => Some(UnmappedOutcome::Other),
            _ => None,
        };
    }
    let (source_ip, source_address) = match &top.caller {
        Some(summary::Scalar::Str(s)) => {
            let parts = parse_caller(s);
            (parts.ip, parts.address)
        }
        Some(summary::Scalar::Other) => (None, true),
        _ => (None, false),
    };
    RecordSummary {
        // As decode: `{}`, or only `"":""` noise when the text has some
        // (decode strips it only then).
        empty: top.entries == 0
            || (top.named == 0
                && top.empty_name_noise == Some(true)
                && crate::decode::may_have_empty_names(text)),
        notes,
        source_ip,
        source_address,
    }
}

/// Borrowing readers for [`summarize_record`]: the few top-level members
/// it needs, everything else skipped unparsed. Duplicate keys: the last
/// wins, as in the `serde_json::Map` that [`normalize`] reads.
pub(crate) mod summary {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    /// Any JSON value, parsed (so validated exactly as `serde_json::Value`
    /// parsing validates: string escapes and surrogates, number range,
    /// nesting) and dropped without allocating. `IgnoredAny` would skip
    /// without those checks and accept records `normalize` never sees.
    struct Skip;

    impl<'de> Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Skip;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(Skip)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    while seq.next_element::<Skip>()?.is_some() {}
                    Ok(Skip)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    while map.next_entry::<Skip, Skip>()?.is_some() {}
                    Ok(Skip)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A member value, as far as the summary cares.
    #[derive(Debug)]
    pub(crate) enum Scalar<'a> {
        Str(Cow<'a, str>),
        /// A number or a boolean.
        Other,
        /// null, an array or an object.
        Composite,
    }

    impl<'de> Deserialize<'de> for Scalar<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Scalar<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Scalar::Str(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Scalar::Str(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Scalar::Str(Cow::Owned(v)))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Scalar::Other)
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Scalar::Other)
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Scalar::Other)
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Scalar::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(Scalar::Composite)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    while seq.next_element::<Skip>()?.is_some() {}
                    Ok(Scalar::Composite)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    while map.next_entry::<Skip, Skip>()?.is_some() {}
                    Ok(Scalar::Composite)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// `properties`: an object (only `result` kept), a string (maybe JSON
    /// text of an object), or anything else.
    #[derive(Debug)]
    pub(crate) enum Props<'a> {
        Object { result: Option<Scalar<'a>> },
        Str(Cow<'a, str>),
        Other,
    }

    impl<'de> Deserialize<'de> for Props<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Props<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut result = None;
                    while let Some(key) = map.next_key::<Key>()? {
                        if key.0 == Some("result") {
                            result = Some(map.next_value::<Scalar<'de>>()?);
                        } else {
                            map.next_value::<Skip>()?;
                        }
                    }
                    Ok(Props::Object { result })
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Props::Str(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Props::Str(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Props::Str(Cow::Owned(v)))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Props::Other)
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Props::Other)
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Props::Other)
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Props::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(Props::Other)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    while seq.next_element::<Skip>()?.is_some() {}
                    Ok(Props::Other)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A member name, matched against the few the summary reads without
    /// allocating (escaped names are unescaped by serde_json first).
    struct Key(Option<&'static str>);

    const NAMES: &[&str] = &[
        "",
        "time",
        "resultType",
        "callerIpAddress",
        "properties",
        "result",
    ];

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Key(NAMES.iter().find(|n| **n == v).copied()))
                }
            }
            d.deserialize_str(V)
        }
    }

    /// The record's top level.
    #[derive(Debug)]
    pub(crate) struct Top<'a> {
        pub entries: usize,
        /// Members with a name other than `""`.
        pub named: usize,
        /// Whether the last `""` member (if any) has the value `""`: the
        /// noise decode strips (a record of only that is empty).
        pub empty_name_noise: Option<bool>,
        pub time: Option<Scalar<'a>>,
        pub result_type: Option<Scalar<'a>>,
        pub caller: Option<Scalar<'a>>,
        pub properties: Option<Props<'a>>,
    }

    impl<'de> Deserialize<'de> for Top<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Top<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut top = Top {
                        entries: 0,
                        named: 0,
                        empty_name_noise: None,
                        time: None,
                        result_type: None,
                        caller: None,
                        properties: None,
                    };
                    while let Some(key) = map.next_key::<Key>()? {
                        top.entries += 1;
                        if key.0 != Some("") {
                            top.named += 1;
                        }
                        match key.0 {
                            Some("") => {
                                let v: Scalar<'_> = map.next_value()?;
                                top.empty_name_noise =
                                    Some(matches!(v, Scalar::Str(s) if s.is_empty()));
                            }
                            Some("time") => top.time = Some(map.next_value()?),
                            Some("resultType") => top.result_type = Some(map.next_value()?),
                            Some("callerIpAddress") => top.caller = Some(map.next_value()?),
                            Some("properties") => top.properties = Some(map.next_value()?),
                            _ => {
                                map.next_value::<Skip>()?;
                            }
                        }
                    }
                    Ok(top)
                }
            }
            // Only an object is a record; anything else fails here and
            // is decoded (and reported) by the full path.
            d.deserialize_map(V)
        }
    }
}

fn take_string(fields: &mut Map<String, Value>, key: &str) -> Option<String> {
    match fields.remove(key)? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A scalar as Elasticsearch would index it into a keyword field.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn rename(map: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = map.remove(from) {
        map.insert(to.to_string(), v);
    }
}

/// `durationMs` as integer, float, or a string of either → nanoseconds.
fn duration_ns(v: &Value) -> Option<i64> {
    let ms: f64 = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return i.checked_mul(1_000_000);
            }
            n.as_f64()?
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return i.checked_mul(1_000_000);
            }
            s.parse::<f64>().ok()?
        }
        _ => return None,
    };
    let ns = (ms * 1_000_000.0).round();
    (ns.is_finite() && ns.abs() < i64::MAX as f64).then_some(ns as i64)
}

// ---------------------------------------------------------------------------
// Caller address

fn apply_caller(caller: &Value, ev: &mut NormalizedEvent) {
    let Some(raw) = caller.as_str() else {
        if let Some(s) = scalar_string(caller) {
            ev.source_address = Some(s.into());
        }
        return;
    };
    let parsed = parse_caller(raw);
    ev.source_ip = parsed.ip;
    ev.source_port = parsed.port;
    if parsed.address {
        ev.source_address = Some(raw.into());
    }
}

/// What a string `callerIpAddress` yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallerParts {
    ip: Option<IpAddr>,
    port: Option<u16>,
    /// The text goes to `source.address` (it is not a bare IP literal).
    address: bool,
}

fn parse_caller(raw: &str) -> CallerParts {
    let mut out = CallerParts {
        ip: None,
        port: None,
        address: false,
    };
    let trimmed = raw.trim();
    // Placeholders for "no caller" (plain or HTML-escaped) are no address.
    if trimmed.is_empty()
        || trimmed.eq_ignore_ascii_case("<null>")
        || trimmed.eq_ignore_ascii_case("&lt;null&gt;")
    {
        return out;
    }
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        out.ip = Some(ip);
        return out;
    }
    // Deviation 3: `a.b.c.d:port` and `[v6]:port` only. SocketAddr's parser
    // accepts exactly these two forms, never a bare IPv6 with a colon split.
    if let Ok(sock) = trimmed.parse::<SocketAddr>() {
        out.ip = Some(sock.ip());
        out.port = Some(sock.port());
    }
    out.address = true;
    out
}

// ---------------------------------------------------------------------------
// Identity

const CLAIMS_SCHEMA: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims";

fn apply_identity(mut identity: Map<String, Value>, ev: &mut NormalizedEvent) {
    if let Some(Value::Object(authorization)) = identity.get_mut("authorization") {
        if let Some(Value::Object(evidence)) = authorization.get_mut("evidence") {
            rename(evidence, "roleAssignmentScope", "role_assignment_scope");
            rename(evidence, "roleDefinitionId", "role_definition_id");
            rename(evidence, "roleAssignmentId", "role_assignment_id");
            rename(evidence, "principalId", "principal_id");
            rename(evidence, "principalType", "principal_type");
        }
    }
    let mut initiated_by = Map::new();
    if let Some(Value::Object(claims)) = identity.remove("claims") {
        let mut claims = claims;
        if let Some(fullname) = claims.remove("name") {
            initiated_by.insert("fullname".into(), fullname);
        }
        for part in ["surname", "name", "givenname"] {
            if let Some(v) = claims.get(&format!("{CLAIMS_SCHEMA}/{part}")) {
                if !v.is_null() {
                    initiated_by.insert(part.into(), v.clone());
                }
            }
        }
        // Elasticsearch would read dots in claim URIs as object paths.
        let claims: Map<String, Value> = claims
            .into_iter()
            .map(|(k, v)| (k.replace('.', "_"), v))
            .collect();
        identity.insert("claims".into(), Value::Object(claims));
    }
    if initiated_by.contains_key("name") {
        initiated_by.insert("schema".into(), Value::String(CLAIMS_SCHEMA.into()));
    }
    if let Some(name) = initiated_by.get("name").and_then(scalar_string) {
        match split_email(&name) {
            Some((user, domain)) => {
                ev.user_name = Some(user.into());
                ev.user_domain = Some(domain.into());
                ev.user_email = Some(name.as_str().into());
            }
            None => ev.user_name = Some(name.into()),
        }
    }
    if let Some(full) = initiated_by.get("fullname").and_then(scalar_string) {
        ev.user_full_name = Some(full.into());
    }
    if !initiated_by.is_empty() {
        identity.insert(
            "claims_initiated_by_user".into(),
            Value::Object(initiated_by),
        );
    }
    ev.identity = Some(Value::Object(identity));
}

/// Grok `%{USERNAME}@%{HOSTNAME}` (unanchored, as grok is): the user part is
/// the run of `[A-Za-z0-9._-]` right before the first usable `@`, the domain
/// the host name right after it.
fn split_email(s: &str) -> Option<(&str, &str)> {
    let is_user = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let is_host = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
    for (at, _) in s.match_indices('@') {
        let before = &s[..at];
        let user_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_user(*c))
            .last()
            .map(|(i, _)| i)?;
        let user = &before[user_start..];
        let after = &s[at + 1..];
        let host_len = after.find(|c: char| !is_host(c)).unwrap_or(after.len());
        let host = after[..host_len].trim_end_matches('.');
        if !user.is_empty() && host.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Some((user, host));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Resource id (the shared pipeline's grok patterns, case-insensitive)

fn find_ci(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    let h = haystack.as_bytes();
    let n = needle.as_bytes();
    (from..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn rfind_ci_all(haystack: &str, needle: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = find_ci(haystack, needle, from) {
        out.push(i);
        from = i + 1;
    }
    out.reverse();
    out
}

/// `SUBID`: a GUID, optionally in braces. Returns its length.
fn guid_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (open, start) = if b.first() == Some(&b'{') {
        (true, 1)
    } else {
        (false, 0)
    };
    let groups = [8, 4, 4, 4, 12];
    let mut i = start;
    for (g, len) in groups.iter().enumerate() {
        if g > 0 {
            if b.get(i) != Some(&b'-') {
                return None;
            }
            i += 1;
        }
        if b.len() < i + len || !b[i..i + len].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        i += len;
    }
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else if open {
        // `(\{){0,1}` and `(\}){0,1}` are independent in the grok; an
        // unmatched brace is still a match of the GUID part.
    }
    Some(i)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `[A-Za-z]\w+` at the start of `s`: returns its length (greedy).
fn word_token(s: &[u8]) -> Option<usize> {
    if !s.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = 1 + s[1..].iter().take_while(|c| is_word(**c)).count();
    (len >= 2).then_some(len)
}

/// `PROVIDERNAME` = `[A-Za-z]\w+ . [A-Za-z]\w+ / [A-Za-z]\w+`, followed by
/// `/` and a non-empty name. Returns (provider, name).
fn provider_and_name(tail: &str) -> Option<(&str, &str)> {
    let b = tail.as_bytes();
    // Namespace: token, any one char, token, then '/'.
    let first = word_token(b)?;
    // Backtracking over the first token's length lets the "any char" be a
    // word character too, as the regex would; the common case is a dot.
    let mut ns_end = None;
    for first_len in (2..=first).rev() {
        let sep = first_len;
        if sep >= b.len() {
            continue;
        }
        if let Some(second) = word_token(&b[sep + 1..]) {
            let end = sep + 1 + second;
            if b.get(end) == Some(&b'/') {
                ns_end = Some(end);
                break;
            }
        }
    }
    let ns_end = ns_end?;
    let type_start = ns_end + 1;
    let type_len = word_token(&b[type_start..])?;
    let provider_end = type_start + type_len;
    if b.get(provider_end) != Some(&b'/') || provider_end + 1 >= b.len() {
        return None;
    }
    Some((&tail[..provider_end], &tail[provider_end + 1..]))
}

fn apply_resource_id(id: &str, ev: &mut NormalizedEvent) {
    // Groks 1–3: /SUBSCRIPTIONS/<guid>/RESOURCEGROUPS/<group>/PROVIDERS/…
    if let Some(sub_at) = find_ci(id, "/subscriptions/", 0) {
        let after_sub = &id[sub_at + "/subscriptions/".len()..];
        if let Some(glen) = guid_len(after_sub) {
            let sub = &after_sub[..glen];
            let rest = &after_sub[glen..];
            if rest.len() > "/resourcegroups/".len()
                && rest[.."/resourcegroups/".len()].eq_ignore_ascii_case("/resourcegroups/")
            {
                let group_and_more = &rest["/resourcegroups/".len()..];
                // GROUPID is `.+` (greedy): try the last `/providers/` first.
                for p in rfind_ci_all(group_and_more, "/providers/") {
                    if p == 0 {
                        continue;
                    }
                    let group = &group_and_more[..p];
                    let tail = &group_and_more[p + "/providers/".len()..];
                    if let Some(parts) = authorization_rule(tail) {
                        ev.subscription_id = Some(sub.into());
                        ev.resource_group = Some(group.into());
                        ev.resource_provider = Some(parts.0.into());
                        ev.resource_namespace = Some(parts.1.into());
                        ev.resource_authorization_rule = Some(parts.2.into());
                        return;
                    }
                    if let Some((provider, name)) = provider_and_name(tail) {
                        ev.subscription_id = Some(sub.into());
                        ev.resource_group = Some(group.into());
                        ev.resource_provider = Some(provider.into());
                        ev.resource_name = Some(name.into());
                        return;
                    }
                }
            }
        }
    }
    // Grok 6 (newer): /tenants/<id>/providers/<provider>
    if let Some(t) = find_ci(id, "/tenants/", 0) {
        let after = &id[t + "/tenants/".len()..];
        if let Some(glen) = guid_len(after) {
            let rest = &after[glen..];
            if rest.len() > "/providers/".len()
                && rest[.."/providers/".len()].eq_ignore_ascii_case("/providers/")
            {
                ev.resource_tenant_id = Some(after[..glen].into());
                ev.resource_provider = Some(rest["/providers/".len()..].into());
                return;
            }
        }
    }
    // Grok 5: /subscriptions/<guid>[/providers/<p> | /resourceGroups/<g>]
    if let Some(sub_at) = find_ci(id, "/subscriptions/", 0) {
        let after_sub = &id[sub_at + "/subscriptions/".len()..];
        if let Some(glen) = guid_len(after_sub) {
            ev.subscription_id = Some(after_sub[..glen].into());
            let rest = &after_sub[glen..];
            if let Some(p) = rest
                .get(.."/providers/".len())
                .filter(|s| s.eq_ignore_ascii_case("/providers/"))
                .map(|_| &rest["/providers/".len()..])
            {
                // PROVIDERNAME here is the namespace plus what follows; the
                // grok is unanchored at the end, so it takes `ns.type/…` up
                // to the namespace token.
                ev.resource_provider = Some(p.into());
            } else if let Some(g) = rest
                .get(.."/resourcegroups/".len())
                .filter(|s| s.eq_ignore_ascii_case("/resourcegroups/"))
                .map(|_| &rest["/resourcegroups/".len()..])
            {
                if !g.is_empty() {
                    ev.resource_group = Some(g.into());
                }
            }
            return;
        }
    }
    // Grok 4: /providers/<anything> → provider only (non-GUID subscriptions).
    if let Some(p) = find_ci(id, "/providers/", 0) {
        let provider = &id[p + "/providers/".len()..];
        if !provider.is_empty() {
            ev.resource_provider = Some(provider.into());
        }
    }
}

/// `PROVIDERNAME/NAMESPACES/<ns>/AUTHORIZATIONRULES/<rule>` (Event Hubs and
/// Service Bus keys): returns (provider, namespace, rule).
fn authorization_rule(tail: &str) -> Option<(&str, &str, &str)> {
    let ns_at = find_ci(tail, "/namespaces/", 0)?;
    let provider = &tail[..ns_at];
    let after = &tail[ns_at + "/namespaces/".len()..];
    let rule_at = find_ci(after, "/authorizationrules/", 0)?;
    let namespace = &after[..rule_at];
    let rule = &after[rule_at + "/authorizationrules/".len()..];
    (!provider.is_empty()
        && !namespace.is_empty()
        && !namespace.contains('/')
        && !rule.is_empty()
        && !rule.contains('/'))
    .then_some((provider, namespace, rule))
}

// ---------------------------------------------------------------------------
// Time

/// Parses `time` in every format Elastic's pipeline accepts: ISO 8601 with
/// 0–9 fraction digits, `Z`, an offset or no zone (UTC); and the US forms
/// `M/d/yyyy h:mm:ss a [XXX]` and `M/d/yyyy H:mm:ss`. Returns Unix ms,
/// truncated (not rounded) to the millisecond as Elasticsearch stores it.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.as_bytes().get(4) == Some(&b'-') {
        parse_iso(s)
    } else {
        parse_us(s)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let start = self.i;
        let mut v: u32 = 0;
        while self.i < self.b.len() && self.i - start < max && self.b[self.i].is_ascii_digit() {
            v = v * 10 + u32::from(self.b[self.i] - b'0');
            self.i += 1;
        }
        let n = self.i - start;
        (n >= min).then_some((v, n))
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
    fn skip_spaces(&mut self) {
        while self.b.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }
}

/// `(year, month, day)`, `(hour, minute, second, millisecond)` at
/// `offset_s` seconds east of UTC → Unix ms; `None` when not a real time.
fn to_epoch_ms(
    (y, mo, d): (u32, u32, u32),
    (h, mi, sec, ms): (u32, u32, u32, u32),
    offset_s: i32,
) -> Option<i64> {
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    // 24:00:00 and leap seconds are not valid here (nor in Elasticsearch).
    let t = time::Time::from_hms_milli(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(sec).ok()?,
        u16::try_from(ms).ok()?,
    )
    .ok()?;
    let utc = time::PrimitiveDateTime::new(date, t).assume_utc();
    Some((utc.unix_timestamp() - i64::from(offset_s)) * 1000 + i64::from(ms))
}

/// Optional zone: `Z`, `±HH:MM`, `±HHMM`, `±HH`. Returns seconds east of UTC.
fn parse_zone(c: &mut Cursor<'_>) -> Option<i32> {
    if c.eat(b'Z') || c.eat(b'z') {
        return Some(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return Some(0);
    };
    let (hh, _) = c.digits(2, 2)?;
    let mm = if c.eat(b':') {
        c.digits(2, 2)?.0
    } else {
        c.digits(2, 2).map(|(v, _)| v).unwrap_or(0)
    };
    if hh > 23 || mm > 59 {
        return None;
    }
    Some(sign * (hh as i32 * 3600 + mm as i32 * 60))
}

fn fraction_ms(c: &mut Cursor<'_>) -> Option<u32> {
    if !(c.eat(b'.') || c.eat(b',')) {
        return Some(0);
    }
    let (v, n) = c.digits(1, 9)?;
    // Truncate to milliseconds.
    Some(match n {
        1 => v * 100,
        2 => v * 10,
        3 => v,
        _ => v / 10u32.pow(n as u32 - 3),
    })
}

fn parse_iso(s: &str) -> Option<i64> {
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let (y, _) = c.digits(4, 4)?;
    c.eat(b'-').then_some(())?;
    let (mo, _) = c.digits(2, 2)?;
    c.eat(b'-').then_some(())?;
    let (d, _) = c.digits(2, 2)?;
    if c.done() {
        return to_epoch_ms((y, mo, d), (0, 0, 0, 0), 0);
    }
    (c.eat(b'T') || c.eat(b't') || c.eat(b' ')).then_some(())?;
    let (h, _) = c.digits(1, 2)?;
    c.eat(b':').then_some(())?;
    let (mi, _) = c.digits(2, 2)?;
    let (sec, ms) = if c.eat(b':') {
        let (sec, _) = c.digits(2, 2)?;
        (sec, fraction_ms(&mut c)?)
    } else {
        (0, 0)
    };
    let offset = parse_zone(&mut c)?;
    c.done().then_some(())?;
    to_epoch_ms((y, mo, d), (h, mi, sec, ms), offset)
}

fn parse_us(s: &str) -> Option<i64> {
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let (mo, _) = c.digits(1, 2)?;
    c.eat(b'/').then_some(())?;
    let (d, _) = c.digits(1, 2)?;
    c.eat(b'/').then_some(())?;
    let (y, _) = c.digits(4, 4)?;
    c.eat(b' ').then_some(())?;
    c.skip_spaces();
    let (mut h, _) = c.digits(1, 2)?;
    c.eat(b':').then_some(())?;
    let (mi, _) = c.digits(2, 2)?;
    c.eat(b':').then_some(())?;
    let (sec, _) = c.digits(2, 2)?;
    let ms = fraction_ms(&mut c)?;
    c.skip_spaces();
    let rest = &s[c.i..];
    if rest.len() >= 2
        && (rest[..2].eq_ignore_ascii_case("AM") || rest[..2].eq_ignore_ascii_case("PM"))
    {
        if !(1..=12).contains(&h) {
            return None;
        }
        let pm = rest[..2].eq_ignore_ascii_case("PM");
        h = match (h, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, true) => h + 12,
            (h, false) => h,
        };
        c.i += 2;
        c.skip_spaces();
    }
    let offset = parse_zone(&mut c)?;
    c.done().then_some(())?;
    to_epoch_ms((y, mo, d), (h, mi, sec, ms), offset)
}

/// Formats Unix ms as Elasticsearch renders `@timestamp`
/// (`2025-03-01T10:00:00.123Z`).
pub fn format_timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            millis
        ),
        Err(_) => format!("{ms}"),
    }
}

// ---------------------------------------------------------------------------
// Rendering

/// Renders the ECS document Elastic would index for this event (nested
/// objects), without `event.ingested` and geo enrichment.
pub fn to_ecs_json(ev: &NormalizedEvent) -> Value {
    let mut doc = Map::new();
    let mut put = |path: &str, v: Value| insert_path(&mut doc, path, v);
    let s = |v: &Option<Box<str>>| v.as_deref().map(|s| Value::String(s.into()));

    put(
        "@timestamp",
        Value::String(format_timestamp(ev.timestamp_ms)),
    );
    put("data_stream.dataset", "azure.activitylogs".into());
    put("data_stream.type", "logs".into());
    put("event.dataset", "azure.activitylogs".into());
    put("event.module", "azure".into());
    put("event.kind", "event".into());
    put("cloud.provider", "azure".into());
    put("ecs.version", "8.11.0".into());
    let fields: [(&str, Option<Value>); 33] = [
        ("event.action", s(&ev.event_action)),
        ("event.outcome", ev.event_outcome.map(|o| o.as_str().into())),
        (
            "event.type",
            ev.event_type.map(|t| Value::Array(vec![t.into()])),
        ),
        ("event.duration", ev.event_duration_ns.map(Into::into)),
        (
            "event.original",
            Some(Value::String(ev.original.to_string())),
        ),
        ("cloud.region", s(&ev.cloud_region)),
        ("cloud.account.id", s(&ev.subscription_id)),
        ("cloud.resource_id", s(&ev.resource_id)),
        ("azure.subscription_id", s(&ev.subscription_id)),
        ("azure.tenant_id", s(&ev.resource_tenant_id)),
        ("azure.correlation_id", s(&ev.correlation_id)),
        ("azure.resource.id", s(&ev.resource_id)),
        ("azure.resource.group", s(&ev.resource_group)),
        ("azure.resource.provider", s(&ev.resource_provider)),
        ("azure.resource.name", s(&ev.resource_name)),
        ("azure.resource.namespace", s(&ev.resource_namespace)),
        (
            "azure.resource.authorization_rule",
            s(&ev.resource_authorization_rule),
        ),
        ("azure.activitylogs.operation_name", s(&ev.operation_name)),
        ("azure.activitylogs.result_type", s(&ev.result_type)),
        (
            "azure.activitylogs.result_signature",
            s(&ev.result_signature),
        ),
        ("azure.activitylogs.category", s(&ev.category)),
        ("azure.activitylogs.event_category", s(&ev.event_category)),
        ("azure.activitylogs.tenant_id", s(&ev.tenant_id)),
        ("azure.activitylogs.identity", ev.identity.clone()),
        ("azure.activitylogs.identity_name", s(&ev.identity_name)),
        ("azure.activitylogs.properties", ev.properties.clone()),
        ("azure.activitylogs.level", ev.activity_level.clone()),
        ("source.address", s(&ev.source_address)),
        ("source.port", ev.source_port.map(Into::into)),
        ("log.level", s(&ev.log_level)),
        ("geo.name", s(&ev.geo_name)),
        ("message", s(&ev.message)),
        (
            "source.as.organization.name",
            ev.source_as_organization.as_deref().map(|o| o.into()),
        ),
    ];
    for (path, value) in fields {
        if let Some(v) = value {
            put(path, v);
        }
    }
    if let Some(ip) = ev.source_ip {
        let ip = Value::String(ip.to_string());
        put("source.ip", ip.clone());
        put("client.ip", ip.clone());
        put("related.ip", Value::Array(vec![ip]));
    }
    if let Some(n) = ev.source_as_number {
        put("source.as.number", n.into());
    }
    for (path, v) in [
        ("user.name", s(&ev.user_name)),
        ("user.email", s(&ev.user_email)),
        ("user.domain", s(&ev.user_domain)),
        ("user.full_name", s(&ev.user_full_name)),
    ] {
        if let Some(v) = v {
            put(path, v);
        }
    }
    Value::Object(doc)
}

fn insert_path(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    // `@timestamp`-style single keys and the last segment are leaves.
    let mut current = doc;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return;
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = entry.as_object_mut().expect("just made an object");
    }
}
