//! The normalized event: what one Activity Log record looks like after
//! decode → normalize → enrich, and how rules read its fields.
//!
//! [`NormalizedEvent`] keeps the fields the product reads on its hot path as
//! typed values (no JSON tree walk per rule evaluation) and keeps the rest
//! (`identity`, `properties`) as JSON, as Elastic stores them. Rules never see
//! the struct directly: they go through [`Document`] with a [`FieldRef`]
//! resolved once when the rule is compiled, so evaluating a query is a match
//! on an enum plus a comparison, without allocating.
//!
//! This module is pure: no I/O, no clock.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

/// One value of a field, borrowed from the document.
///
/// The variant carries the field's type as Elasticsearch would map it, so the
/// matcher can apply Kibana's per-type semantics: exact case-sensitive
/// comparison for keywords, numeric equality for numbers, CIDR containment
/// for IPs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ip(IpAddr),
}

/// A field name compiled once against the normalized-event schema.
///
/// Fields firstseen produces as typed values resolve to [`KnownField`];
/// anything under `azure.activitylogs.identity.` or
/// `azure.activitylogs.properties.` resolves to a path into that JSON
/// subtree; any other name resolves to [`FieldTarget::Unmapped`], which has no
/// values (as an unmapped field has none in Elasticsearch).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRef {
    name: Box<str>,
    target: FieldTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldTarget {
    Known(KnownField),
    /// Path below `azure.activitylogs.identity`.
    Identity(Box<[Box<str>]>),
    /// Path below `azure.activitylogs.properties`.
    Properties(Box<[Box<str>]>),
    Unmapped,
}

macro_rules! known_fields {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every typed field of [`NormalizedEvent`], by its ECS name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum KnownField { $($variant),* }

        impl KnownField {
            pub const ALL: &'static [KnownField] = &[$(KnownField::$variant),*];

            /// The ECS field name, as rules and alert documents spell it.
            pub fn name(self) -> &'static str {
                match self { $(KnownField::$variant => $name),* }
            }

            pub fn from_name(name: &str) -> Option<KnownField> {
                match name { $($name => Some(KnownField::$variant),)* _ => None }
            }
        }
    };
}

known_fields! {
    DataStreamDataset => "data_stream.dataset",
    DataStreamType => "data_stream.type",
    EventDataset => "event.dataset",
    EventModule => "event.module",
    EventKind => "event.kind",
    EventAction => "event.action",
    EventOutcome => "event.outcome",
    EventType => "event.type",
    EventDuration => "event.duration",
    CloudProvider => "cloud.provider",
    CloudAccountId => "cloud.account.id",
    CloudRegion => "cloud.region",
    AzureSubscriptionId => "azure.subscription_id",
    AzureTenantId => "azure.tenant_id",
    AzureCorrelationId => "azure.correlation_id",
    AzureResourceId => "azure.resource.id",
    AzureResourceGroup => "azure.resource.group",
    AzureResourceProvider => "azure.resource.provider",
    AzureResourceName => "azure.resource.name",
    OperationName => "azure.activitylogs.operation_name",
    ResultType => "azure.activitylogs.result_type",
    ResultSignature => "azure.activitylogs.result_signature",
    Category => "azure.activitylogs.category",
    EventCategory => "azure.activitylogs.event_category",
    ActivityTenantId => "azure.activitylogs.tenant_id",
    IdentityName => "azure.activitylogs.identity_name",
    ActivityLevel => "azure.activitylogs.level",
    SourceIp => "source.ip",
    SourceAddress => "source.address",
    SourcePort => "source.port",
    SourceAsNumber => "source.as.number",
    SourceAsOrganizationName => "source.as.organization.name",
    ClientIp => "client.ip",
    RelatedIp => "related.ip",
    LogLevel => "log.level",
    GeoName => "geo.name",
    UserName => "user.name",
    UserEmail => "user.email",
    UserDomain => "user.domain",
    UserFullName => "user.full_name",
    Message => "message",
}

impl FieldRef {
    /// Resolves an ECS field name against the normalized-event schema.
    pub fn resolve(name: &str) -> FieldRef {
        let target = if let Some(known) = KnownField::from_name(name) {
            FieldTarget::Known(known)
        } else if let Some(rest) = name.strip_prefix("azure.activitylogs.identity.") {
            FieldTarget::Identity(split_path(rest))
        } else if let Some(rest) = name.strip_prefix("azure.activitylogs.properties.") {
            FieldTarget::Properties(split_path(rest))
        } else {
            FieldTarget::Unmapped
        };
        FieldRef {
            name: name.into(),
            target,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn target(&self) -> &FieldTarget {
        &self.target
    }
}

fn split_path(path: &str) -> Box<[Box<str>]> {
    path.split('.').map(Box::from).collect()
}

/// Read access to a document's field values, as rules see it.
pub trait Document {
    /// Calls `visit` with each value of `field` (once per element for a
    /// multi-valued field) until `visit` returns `true`; returns whether it
    /// did. A missing field calls `visit` zero times.
    fn any_value(&self, field: &FieldRef, visit: &mut dyn FnMut(FieldValue<'_>) -> bool) -> bool;
}

/// `event.outcome` values Elastic's pipeline can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Constant values every activity-log event carries.
pub const DATASET: &str = "azure.activitylogs";

/// One Activity Log record, normalized to the ECS fields Elastic's Azure
/// integration produces, plus the ASN enrichment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NormalizedEvent {
    /// `@timestamp`, Unix milliseconds (UTC, truncated to ms).
    pub timestamp_ms: i64,
    /// True when `time` was missing or unparseable and `@timestamp` fell
    /// back to the Event Hubs enqueued time (or 0 when there was none).
    pub timestamp_fallback: bool,
    /// `event.action`: the operation name upper-cased (deliberate deviation 1).
    pub event_action: Option<Box<str>>,
    pub event_outcome: Option<Outcome>,
    /// `event.type`, from the record category.
    pub event_type: Option<&'static str>,
    /// `event.duration` in nanoseconds.
    pub event_duration_ns: Option<i64>,
    /// `cloud.region` (location, when it is a real region).
    pub cloud_region: Option<Box<str>>,
    pub subscription_id: Option<Box<str>>,
    /// `azure.activitylogs.tenant_id`: the record's `tenantId`.
    pub tenant_id: Option<Box<str>>,
    /// `azure.tenant_id`: the tenant named by a `/tenants/<id>/providers/…`
    /// resource id (Elastic keeps the two apart).
    pub resource_tenant_id: Option<Box<str>>,
    pub correlation_id: Option<Box<str>>,
    pub resource_id: Option<Box<str>>,
    pub resource_group: Option<Box<str>>,
    pub resource_provider: Option<Box<str>>,
    pub resource_name: Option<Box<str>>,
    /// Extra grok captures of the shared pipeline
    /// (`azure.resource.namespace`, `azure.resource.authorization_rule`).
    pub resource_namespace: Option<Box<str>>,
    pub resource_authorization_rule: Option<Box<str>>,
    /// `azure.activitylogs.operation_name`, verbatim.
    pub operation_name: Option<Box<str>>,
    pub result_type: Option<Box<str>>,
    pub result_signature: Option<Box<str>>,
    pub category: Option<Box<str>>,
    pub event_category: Option<Box<str>>,
    /// `azure.activitylogs.identity` when the record's identity is an object
    /// (claim keys with `.` replaced by `_`, evidence keys in snake_case).
    pub identity: Option<Value>,
    /// `azure.activitylogs.identity_name` when identity is a plain string.
    pub identity_name: Option<Box<str>>,
    /// `azure.activitylogs.properties`.
    pub properties: Option<Value>,
    /// `azure.activitylogs.level`: the numeric/capitalised `Level` field.
    pub activity_level: Option<Value>,
    pub source_ip: Option<IpAddr>,
    /// `source.address`: the caller value when it is not an IP literal.
    pub source_address: Option<Box<str>>,
    /// `source.port`, when the caller was `ip:port` (deviation 3).
    pub source_port: Option<u16>,
    pub source_as_number: Option<u32>,
    pub source_as_organization: Option<Arc<str>>,
    pub log_level: Option<Box<str>>,
    pub geo_name: Option<Box<str>>,
    pub user_name: Option<Box<str>>,
    pub user_email: Option<Box<str>>,
    pub user_domain: Option<Box<str>>,
    pub user_full_name: Option<Box<str>>,
    /// `message`, from `properties.statusMessage`.
    pub message: Option<Box<str>>,
    /// `event.original`: the record as it arrived (after empty-key stripping).
    pub original: Box<str>,
}

fn str_value(v: &Option<Box<str>>) -> Option<FieldValue<'_>> {
    v.as_deref().map(FieldValue::Str)
}

impl NormalizedEvent {
    /// The value of a typed field, or `None` when the record has none.
    pub fn known(&self, field: KnownField) -> Option<FieldValue<'_>> {
        use KnownField as K;
        match field {
            K::DataStreamDataset | K::EventDataset => Some(FieldValue::Str(DATASET)),
            K::DataStreamType => Some(FieldValue::Str("logs")),
            K::EventModule => Some(FieldValue::Str("azure")),
            K::EventKind => Some(FieldValue::Str("event")),
            K::CloudProvider => Some(FieldValue::Str("azure")),
            K::EventAction => str_value(&self.event_action),
            K::EventOutcome => self.event_outcome.map(|o| FieldValue::Str(o.as_str())),
            K::EventType => self.event_type.map(FieldValue::Str),
            K::EventDuration => self.event_duration_ns.map(FieldValue::Int),
            K::CloudAccountId | K::AzureSubscriptionId => str_value(&self.subscription_id),
            K::CloudRegion => str_value(&self.cloud_region),
            K::AzureTenantId => str_value(&self.resource_tenant_id),
            K::ActivityTenantId => str_value(&self.tenant_id),
            K::AzureCorrelationId => str_value(&self.correlation_id),
            K::AzureResourceId => str_value(&self.resource_id),
            K::AzureResourceGroup => str_value(&self.resource_group),
            K::AzureResourceProvider => str_value(&self.resource_provider),
            K::AzureResourceName => str_value(&self.resource_name),
            K::OperationName => str_value(&self.operation_name),
            K::ResultType => str_value(&self.result_type),
            K::ResultSignature => str_value(&self.result_signature),
            K::Category => str_value(&self.category),
            K::EventCategory => str_value(&self.event_category),
            K::IdentityName => str_value(&self.identity_name),
            K::ActivityLevel => self.activity_level.as_ref().and_then(json_scalar),
            K::SourceIp | K::ClientIp | K::RelatedIp => self.source_ip.map(FieldValue::Ip),
            K::SourceAddress => str_value(&self.source_address),
            K::SourcePort => self.source_port.map(|p| FieldValue::Int(p.into())),
            K::SourceAsNumber => self.source_as_number.map(|n| FieldValue::Int(n.into())),
            K::SourceAsOrganizationName => {
                self.source_as_organization.as_deref().map(FieldValue::Str)
            }
            K::LogLevel => str_value(&self.log_level),
            K::GeoName => str_value(&self.geo_name),
            K::UserName => str_value(&self.user_name),
            K::UserEmail => str_value(&self.user_email),
            K::UserDomain => str_value(&self.user_domain),
            K::UserFullName => str_value(&self.user_full_name),
            K::Message => str_value(&self.message),
        }
    }
}

/// A JSON scalar as a field value; arrays and objects have no scalar value.
pub fn json_scalar(v: &Value) -> Option<FieldValue<'_>> {
    match v {
        Value::String(s) => Some(FieldValue::Str(s)),
        Value::Bool(b) => Some(FieldValue::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(FieldValue::Int(i)),
            None => n.as_f64().map(FieldValue::Float),
        },
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Visits the values at `path` below `root`. Keys are tried whole first
/// (`a.b` as one key, as dotted claim names would be), then segment by
/// segment; arrays expand to their elements.
fn visit_json(
    root: &Value,
    path: &[Box<str>],
    visit: &mut dyn FnMut(FieldValue<'_>) -> bool,
) -> bool {
    match root {
        Value::Array(items) => items.iter().any(|item| visit_json(item, path, visit)),
        Value::Object(map) => {
            if path.is_empty() {
                return false;
            }
            // Longest dotted key first, so `a.b.c` finds {"a.b": {"c": 1}}.
            for take in (1..=path.len()).rev() {
                let found = if take == 1 {
                    map.get(&*path[0])
                } else {
                    let key = path[..take].join(".");
                    map.get(&key)
                };
                if let Some(child) = found {
                    if visit_json(child, &path[take..], visit) {
                        return true;
                    }
                }
            }
            false
        }
        scalar => path.is_empty() && json_scalar(scalar).is_some_and(visit),
    }
}

impl Document for NormalizedEvent {
    fn any_value(&self, field: &FieldRef, visit: &mut dyn FnMut(FieldValue<'_>) -> bool) -> bool {
        match &field.target {
            FieldTarget::Known(k) => self.known(*k).is_some_and(visit),
            FieldTarget::Identity(path) => self
                .identity
                .as_ref()
                .is_some_and(|v| visit_json(v, path, visit)),
            FieldTarget::Properties(path) => self
                .properties
                .as_ref()
                .is_some_and(|v| visit_json(v, path, visit)),
            FieldTarget::Unmapped => false,
        }
    }
}

/// An ECS JSON document (nested objects, dotted keys or both) as a
/// [`Document`]. Any field name is looked up (the schema does not limit a
/// JSON document). Used by tests and by anything that holds rendered ECS.
/// On the IP fields, strings that parse as IP addresses are offered as
/// [`FieldValue::Ip`], as Elasticsearch's `ip` mapping would index them.
impl Document for Value {
    fn any_value(&self, field: &FieldRef, visit: &mut dyn FnMut(FieldValue<'_>) -> bool) -> bool {
        let path = split_path(field.name());
        let is_ip_field = matches!(
            field.target,
            FieldTarget::Known(KnownField::SourceIp | KnownField::ClientIp | KnownField::RelatedIp)
        );
        if is_ip_field {
            let mut wrapped = |v: FieldValue<'_>| match v {
                FieldValue::Str(s) => match s.parse::<IpAddr>() {
                    Ok(ip) => visit(FieldValue::Ip(ip)),
                    Err(_) => visit(v),
                },
                other => visit(other),
            };
            visit_json(self, &path, &mut wrapped)
        } else {
            visit_json(self, &path, visit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(doc: &dyn Document, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        doc.any_value(&FieldRef::resolve(name), &mut |v| {
            out.push(format!("{v:?}"));
            false
        });
        out
    }

    #[test]
    fn resolves_known_nested_and_unmapped_fields() {
        assert_eq!(
            FieldRef::resolve("source.as.number").target(),
            &FieldTarget::Known(KnownField::SourceAsNumber)
        );
        assert_eq!(
            FieldRef::resolve("azure.activitylogs.identity.claims.name").target(),
            &FieldTarget::Identity(vec!["claims".into(), "name".into()].into())
        );
        assert_eq!(
            FieldRef::resolve("host.name").target(),
            &FieldTarget::Unmapped
        );
        for k in KnownField::ALL {
            assert_eq!(KnownField::from_name(k.name()), Some(*k));
        }
    }

    #[test]
    fn normalized_event_exposes_typed_values() {
        let ev = NormalizedEvent {
            source_as_number: Some(64500),
            source_ip: Some("203.0.113.7".parse().unwrap()),
            event_outcome: Some(Outcome::Success),
            identity: Some(
                json!({"claims": {"http://schemas_xmlsoap_org/x": "a", "groups": ["g1", "g2"]}}),
            ),
            ..Default::default()
        };
        assert_eq!(values(&ev, "source.as.number"), ["Int(64500)"]);
        assert_eq!(values(&ev, "source.ip"), ["Ip(203.0.113.7)"]);
        assert_eq!(values(&ev, "event.outcome"), [r#"Str("success")"#]);
        assert_eq!(
            values(&ev, "data_stream.dataset"),
            [r#"Str("azure.activitylogs")"#]
        );
        assert_eq!(
            values(&ev, "azure.activitylogs.identity.claims.groups"),
            [r#"Str("g1")"#, r#"Str("g2")"#]
        );
        assert_eq!(
            values(
                &ev,
                "azure.activitylogs.identity.claims.http://schemas_xmlsoap_org/x"
            ),
            [r#"Str("a")"#]
        );
        assert!(values(&ev, "azure.resource.name").is_empty());
    }

    #[test]
    fn json_documents_accept_nested_and_dotted_keys() {
        let doc = json!({"source": {"ip": "2001:db8::1", "as.number": 64501}, "tags": ["a", "b"]});
        assert_eq!(values(&doc, "source.ip"), ["Ip(2001:db8::1)"]);
        assert_eq!(values(&doc, "source.as.number"), ["Int(64501)"]);
        assert_eq!(values(&doc, "tags"), [r#"Str("a")"#, r#"Str("b")"#]);
    }
}
