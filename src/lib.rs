//! firstseen: a streaming New Terms detector for Azure Activity Logs.
//!
//! Layout (data flows one way): [`source`] → [`decode`] → [`normalize`] →
//! [`enrich`] → [`rules`] (via [`engine`]) → [`store`] (term state + outbox +
//! checkpoint, one write batch) → sinks. [`pipeline`] chains the pure
//! stages; [`replay`] is the main job over files. See ARCHITECTURE.md for
//! the map and the invariants.

pub mod app;
pub mod config;
pub mod decode;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod prefilter;
pub mod replay;
pub mod rules;
pub mod scan;
pub mod server;
pub mod sink;
pub mod source;
pub mod store;
