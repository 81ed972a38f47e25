//! The in-memory partition log and the Event Hubs start filter.
//!
//! Owns what the double stores (an append-only list of events per partition,
//! with sequence numbers, offsets and enqueued times assigned at publish time)
//! and how a receiver's `apache.org:selector-filter:string` expression picks
//! its first event. It does no I/O: the AMQP side in `server.rs` reads it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes added to each event's body length when computing the next offset.
///
/// Real offsets are byte positions in the partition's storage, so they are
/// neither dense nor equal to the sequence number; a fixed per-record overhead
/// keeps them strictly increasing even for empty bodies and makes a consumer
/// that confuses offsets with sequence numbers fail visibly.
const RECORD_OVERHEAD: i64 = 64;

/// One stored event.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub(crate) sequence_number: i64,
    pub(crate) offset: i64,
    /// Milliseconds since the Unix epoch (AMQP timestamps have millisecond precision).
    pub(crate) enqueued_ms: i64,
    pub(crate) partition_key: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// Append-only event list of one partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionLog {
    pub(crate) events: Vec<StoredEvent>,
    next_offset: i64,
}

impl PartitionLog {
    /// Appends an event; the enqueued time defaults to now.
    pub(crate) fn append(
        &mut self,
        body: Vec<u8>,
        enqueued: Option<SystemTime>,
        partition_key: Option<String>,
    ) -> &StoredEvent {
        let sequence_number = self.events.len() as i64;
        let offset = self.next_offset;
        self.next_offset += body.len() as i64 + RECORD_OVERHEAD;
        let enqueued_ms = system_time_to_ms(enqueued.unwrap_or_else(SystemTime::now));
        self.events.push(StoredEvent {
            sequence_number,
            offset,
            enqueued_ms,
            partition_key,
            body,
        });
        &self.events[self.events.len() - 1]
    }
}

/// Converts a time to Unix milliseconds (negative before 1970).
pub(crate) fn system_time_to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Converts Unix milliseconds back to a time.
pub(crate) fn ms_to_system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Which annotation a start filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterField {
    Offset,
    SequenceNumber,
    EnqueuedTime,
}

/// A parsed start filter: the first delivered event is the first one in the
/// log for which `field op value` holds; everything after it follows, as on
/// the real service (positions, not a per-event predicate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartFilter {
    /// `x-opt-offset > '-1'`: from the first retained event.
    Earliest,
    /// `x-opt-offset > '@latest'`: only events published after the attach.
    Latest,
    /// A numeric comparison.
    Compare {
        field: FilterField,
        inclusive: bool,
        value: i64,
    },
}

/// Why a filter expression was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported selector filter {expression:?}: {reason}")]
pub(crate) struct FilterError {
    expression: String,
    reason: &'static str,
}

impl StartFilter {
    /// Parses the expressions the SDK builds (`StartPosition::start_expression`):
    /// `amqp.annotation.x-opt-<field> <op> '<value>'`, with or without spaces
    /// around the operator.
    pub(crate) fn parse(expression: &str) -> Result<Self, FilterError> {
        let err = |reason| FilterError {
            expression: expression.to_owned(),
            reason,
        };
        let rest = expression
            .trim()
            .strip_prefix("amqp.annotation.x-opt-")
            .ok_or_else(|| err("expected amqp.annotation.x-opt-<field>"))?;
        let name_end = rest
            .find([' ', '>', '='])
            .ok_or_else(|| err("missing operator"))?;
        let field = match &rest[..name_end] {
            "offset" => FilterField::Offset,
            "sequence-number" => FilterField::SequenceNumber,
            "enqueued-time" => FilterField::EnqueuedTime,
            _ => return Err(err("unknown annotation")),
        };
        let rest = rest[name_end..].trim_start();
        let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (false, r)
        } else {
            return Err(err("operator must be > or >="));
        };
        let value = rest
            .trim()
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| err("value must be single-quoted"))?;
        if field == FilterField::Offset {
            match value {
                "-1" => return Ok(StartFilter::Earliest),
                "@latest" => return Ok(StartFilter::Latest),
                _ => {}
            }
        }
        let value: i64 = value.parse().map_err(|_| err("value is not an integer"))?;
        Ok(StartFilter::Compare {
            field,
            inclusive,
            value,
        })
    }

    /// Whether `event` may be the first event delivered.
    pub(crate) fn admits(&self, event: &StoredEvent, log_len_at_attach: usize) -> bool {
        match self {
            StartFilter::Earliest => true,
            StartFilter::Latest => event.sequence_number >= log_len_at_attach as i64,
            StartFilter::Compare {
                field,
                inclusive,
                value,
            } => {
                let actual = match field {
                    FilterField::Offset => event.offset,
                    FilterField::SequenceNumber => event.sequence_number,
                    FilterField::EnqueuedTime => event.enqueued_ms,
                };
                if *inclusive {
                    actual >= *value
                } else {
                    actual > *value
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: usize) -> PartitionLog {
        let mut log = PartitionLog::default();
        for i in 0..n {
            log.append(
                vec![b'x'; i],
                Some(ms_to_system_time(1_000 * i as i64)),
                None,
            );
        }
        log
    }

    fn first(filter: &StartFilter, log: &PartitionLog) -> Option<i64> {
        log.events
            .iter()
            .find(|e| filter.admits(e, log.events.len()))
            .map(|e| e.sequence_number)
    }

    #[test]
    fn parses_every_expression_the_sdk_builds() {
        assert_eq!(
            StartFilter::parse("amqp.annotation.x-opt-offset > '-1'"),
            Ok(StartFilter::Earliest)
        );
        assert_eq!(
            StartFilter::parse("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(StartFilter::Latest)
        );
        assert_eq!(
            StartFilter::parse("amqp.annotation.x-opt-sequence-number >='41'"),
            Ok(StartFilter::Compare {
                field: FilterField::SequenceNumber,
                inclusive: true,
                value: 41
            })
        );
        assert_eq!(
            StartFilter::parse("amqp.annotation.x-opt-offset >'128'"),
            Ok(StartFilter::Compare {
                field: FilterField::Offset,
                inclusive: false,
                value: 128
            })
        );
        assert_eq!(
            StartFilter::parse("amqp.annotation.x-opt-enqueued-time >'1700000000000'"),
            Ok(StartFilter::Compare {
                field: FilterField::EnqueuedTime,
                inclusive: false,
                value: 1_700_000_000_000
            })
        );
    }

    #[test]
    fn refuses_malformed_expressions() {
        for bad in [
            "",
            "amqp.annotation.x-opt-foo > '1'",
            "amqp.annotation.x-opt-offset = '1'",
            "amqp.annotation.x-opt-offset > 1",
            "amqp.annotation.x-opt-sequence-number > 'abc'",
        ] {
            assert!(StartFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_are_increasing_and_not_sequence_numbers() {
        let log = log_of(4);
        let offsets: Vec<i64> = log.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 64, 129, 195]);
    }

    #[test]
    fn start_positions_pick_the_right_first_event() {
        let log = log_of(5);
        let seq = |inclusive, value| StartFilter::Compare {
            field: FilterField::SequenceNumber,
            inclusive,
            value,
        };
        assert_eq!(first(&StartFilter::Earliest, &log), Some(0));
        assert_eq!(first(&StartFilter::Latest, &log), None);
        assert_eq!(first(&seq(true, 2), &log), Some(2));
        assert_eq!(first(&seq(false, 2), &log), Some(3));
        assert_eq!(first(&seq(false, 4), &log), None);
        let off = |inclusive, value| StartFilter::Compare {
            field: FilterField::Offset,
            inclusive,
            value,
        };
        assert_eq!(first(&off(true, 129), &log), Some(2));
        assert_eq!(first(&off(false, 129), &log), Some(3));
        let time = |inclusive, value| StartFilter::Compare {
            field: FilterField::EnqueuedTime,
            inclusive,
            value,
        };
        assert_eq!(first(&time(true, 3_000), &log), Some(3));
        assert_eq!(first(&time(false, 3_000), &log), Some(4));
    }

    #[test]
    fn time_round_trips_through_milliseconds() {
        for ms in [-5_000, 0, 1_700_000_000_123] {
            assert_eq!(system_time_to_ms(ms_to_system_time(ms)), ms);
        }
    }
}
