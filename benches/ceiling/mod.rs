//! The parsing ceiling the benchmarks compare firstseen with: serde_json
//! parsing a body into typed records that borrow only the fields the seed
//! rule reads (`operationName`, `resultType`, `resourceId`,
//! `callerIpAddress`, `time`), everything else skipped. Shared by
//! `benches/pipeline.rs` and `examples/bench_ceiling.rs`.

use std::borrow::Cow;

use serde::Deserialize;

/// A string borrowed from the body when it has no escapes. The newtype is
/// needed: `#[serde(borrow)]` on `Option<Cow<str>>` still allocates
/// (serde borrows only a bare `Cow<str>` field).
#[derive(Deserialize)]
pub struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// One record: only what the seed rule reads.
#[derive(Deserialize)]
pub struct TypedRecord<'a> {
    #[serde(borrow, rename = "operationName")]
    pub operation_name: Option<Text<'a>>,
    #[serde(borrow, rename = "resultType")]
    pub result_type: Option<Text<'a>>,
    #[serde(borrow, rename = "resourceId")]
    pub resource_id: Option<Text<'a>>,
    #[serde(borrow, rename = "callerIpAddress")]
    pub caller: Option<Text<'a>>,
    #[serde(borrow)]
    pub time: Option<Text<'a>>,
}

impl TypedRecord<'_> {
    /// Bytes of the fields read: using them keeps the parse from being
    /// optimized away.
    pub fn touched(&self) -> usize {
        [
            &self.operation_name,
            &self.result_type,
            &self.resource_id,
            &self.caller,
            &self.time,
        ]
        .iter()
        .map(|f| f.as_deref().map_or(0, str::len))
        .sum()
    }
}

/// An Event Hubs body.
#[derive(Deserialize)]
pub struct TypedBody<'a> {
    #[serde(borrow)]
    pub records: Vec<TypedRecord<'a>>,
}
