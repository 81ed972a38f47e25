//! The pure per-body pipeline shared by `replay` and `run`:
//! decode → normalize → enrich, producing [`Candidate`]s for the
//! [`Detector`](crate::engine::Detector) and counting what happened.
//!
//! No I/O beyond reading the in-memory ASN database snapshot.

use std::collections::BTreeMap;

use std::net::IpAddr;

use crate::decode::{
    decode_record_text, envelope_records, envelope_text, DecodeError, DecodeErrorKind,
    DecodeLimits, RecordOutcome,
};
use crate::engine::{Candidate, SourcePosition};
use crate::enrich::{AsnDb, AsnLookupResult};
use crate::normalize::{
    normalize, summarize_record, RecordContext, RecordSummary, UnmappedOutcome,
};
use crate::prefilter::{Prefilter, Scratch};
use crate::scan::scan_envelope;

/// Counters for one run or one batch; added into metrics by the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PipelineStats {
    pub bodies: u64,
    pub records: u64,
    pub empty_records: u64,
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub timestamp_fallbacks: u64,
    pub outcome_unmapped: BTreeMap<&'static str, u64>,
    pub asn_lookups: BTreeMap<&'static str, u64>,
}

impl PipelineStats {
    pub fn decode_error_total(&self) -> u64 {
        self.decode_errors.values().sum()
    }

    pub fn add(&mut self, other: &PipelineStats) {
        self.bodies += other.bodies;
        self.records += other.records;
        self.empty_records += other.empty_records;
        self.timestamp_fallbacks += other.timestamp_fallbacks;
        for (k, v) in &other.decode_errors {
            *self.decode_errors.entry(k).or_default() += v;
        }
        for (k, v) in &other.outcome_unmapped {
            *self.outcome_unmapped.entry(k).or_default() += v;
        }
        for (k, v) in &other.asn_lookups {
            *self.asn_lookups.entry(k).or_default() += v;
        }
    }
}

/// Where a body came from.
#[derive(Debug, Clone, Default)]
pub struct BodyContext {
    /// Event Hubs enqueued time, when the body came from Event Hubs.
    pub enqueued_time_ms: Option<i64>,
    pub position: SourcePosition,
}

/// Runs one body through decode → normalize → enrich, appending one
/// candidate per record to `out`. Returns the body's decode errors for the
/// caller to log and dead-letter with the position.
pub fn process_body(
    body: &[u8],
    ctx: &BodyContext,
    limits: &DecodeLimits,
    asn: Option<&AsnDb>,
    out: &mut Vec<Candidate>,
    stats: &mut PipelineStats,
) -> Vec<DecodeError> {
    process(body, ctx, limits, asn, None, out, stats)
}

/// [`process_body`] for the detector: records the `prefilter` rejects
/// (they cannot match any rule) are counted exactly as `process_body`
/// counts them but are not normalized and yield no candidate. The
/// detector's output is the same as with [`process_body`]; only the
/// candidates it would have discarded are missing.
pub fn process_body_prefiltered(
    body: &[u8],
    ctx: &BodyContext,
    limits: &DecodeLimits,
    asn: Option<&AsnDb>,
    prefilter: &Prefilter,
    out: &mut Vec<Candidate>,
    stats: &mut PipelineStats,
) -> Vec<DecodeError> {
    let prefilter = prefilter.is_active().then_some(prefilter);
    process(body, ctx, limits, asn, prefilter, out, stats)
}

fn process(
    body: &[u8],
    ctx: &BodyContext,
    limits: &DecodeLimits,
    asn: Option<&AsnDb>,
    prefilter: Option<&Prefilter>,
    out: &mut Vec<Candidate>,
    stats: &mut PipelineStats,
) -> Vec<DecodeError> {
    stats.bodies += 1;
    let text = match envelope_text(body, limits) {
        Ok(text) => text,
        Err(e) => {
            *stats.decode_errors.entry(e.kind.code()).or_default() += 1;
            return vec![e];
        }
    };
    let mut errors = Vec::new();
    let mut scratch = Scratch::default();
    if let Some(p) = prefilter {
        // The common `{"records":[…]}` body in one validating pass; the
        // serde path below handles everything else (and every error).
        if let Some(records) = scan_envelope(text, limits.max_depth, limits.max_records) {
            for (index, record) in records.into_iter().enumerate() {
                if !record.needs_full && !p.may_match(record.text, &mut scratch) {
                    if let Some(summary) = record.summary() {
                        count_summary(&summary, asn, stats);
                        continue;
                    }
                }
                full_record(index, record.text, ctx, asn, out, stats, &mut errors);
            }
            return errors;
        }
    }
    let raw_records = match envelope_records(text, limits) {
        Ok(records) => records,
        Err(e) => {
            *stats.decode_errors.entry(e.kind.code()).or_default() += 1;
            return vec![e];
        }
    };
    for (index, raw) in raw_records.into_iter().enumerate() {
        if let Some(p) = prefilter {
            if !p.may_match(raw.get(), &mut scratch) {
                if let Some(summary) = summarize_record(raw.get()) {
                    count_summary(&summary, asn, stats);
                    continue;
                }
            }
        }
        full_record(index, raw.get(), ctx, asn, out, stats, &mut errors);
    }
    errors
}

/// decode → normalize → enrich for one record, yielding its candidate.
fn full_record(
    index: usize,
    text: &str,
    ctx: &BodyContext,
    asn: Option<&AsnDb>,
    out: &mut Vec<Candidate>,
    stats: &mut PipelineStats,
    errors: &mut Vec<DecodeError>,
) {
    let record = match decode_record_text(index, text) {
        RecordOutcome::Record(record) => record,
        RecordOutcome::Empty => {
            stats.empty_records += 1;
            return;
        }
        RecordOutcome::Error(e) => {
            *stats.decode_errors.entry(e.kind.code()).or_default() += 1;
            errors.push(e);
            return;
        }
    };
    stats.records += 1;
    let record_ctx = RecordContext {
        enqueued_time_ms: ctx.enqueued_time_ms,
    };
    let (mut event, notes) = normalize(record, record_ctx);
    if notes.timestamp_fallback {
        stats.timestamp_fallbacks += 1;
    }
    if let Some(u) = notes.outcome_unmapped {
        *stats.outcome_unmapped.entry(u.code()).or_default() += 1;
    }
    let lookup = match asn {
        Some(db) => db.enrich(&mut event),
        None => classify_without_db(event.source_ip, event.source_address.is_some()),
    };
    *stats.asn_lookups.entry(lookup.as_label()).or_default() += 1;
    let rule_time_ms = ctx.enqueued_time_ms.unwrap_or(event.timestamp_ms);
    out.push(Candidate {
        event,
        rule_time_ms,
        // Without a parseable `time` and without an enqueued time (a
        // replay), the record has no place in any history window.
        untimed: notes.timestamp_fallback && ctx.enqueued_time_ms.is_none(),
        position: ctx.position.clone(),
    });
}

/// Counts a record the prefilter rejected as the full path would have.
fn count_summary(summary: &RecordSummary, asn: Option<&AsnDb>, stats: &mut PipelineStats) {
    if summary.empty {
        stats.empty_records += 1;
        return;
    }
    stats.records += 1;
    if summary.notes.timestamp_fallback {
        stats.timestamp_fallbacks += 1;
    }
    if let Some(u) = summary.notes.outcome_unmapped {
        *stats.outcome_unmapped.entry(u.code()).or_default() += 1;
    }
    let lookup = match asn {
        Some(db) => db.classify(summary.source_ip, summary.source_address),
        None => classify_without_db(summary.source_ip, summary.source_address),
    };
    *stats.asn_lookups.entry(lookup.as_label()).or_default() += 1;
}

/// Without a database every IP is a miss (there is nothing to find).
fn classify_without_db(source_ip: Option<IpAddr>, has_address: bool) -> AsnLookupResult {
    if source_ip.is_some() {
        AsnLookupResult::Miss
    } else if has_address {
        AsnLookupResult::InvalidIp
    } else {
        AsnLookupResult::NoIp
    }
}

/// Every label the pipeline counts, for pre-registering metrics at 0.
pub fn all_decode_error_codes() -> impl Iterator<Item = &'static str> {
    DecodeErrorKind::ALL.iter().map(|k| k.code())
}

pub fn all_unmapped_outcome_codes() -> impl Iterator<Item = &'static str> {
    UnmappedOutcome::ALL.iter().map(|k| k.code())
}
