//! firstseen: a streaming New Terms detector for Azure Activity Logs.
//!
//! Layout (data flows one way): `source` → [`decode`] → [`normalize`] →
//! [`enrich`] → [`rules`] → [`store`] (term state + outbox + checkpoint, one
//! write batch) → `sink`. See ARCHITECTURE.md for the map and the invariants.

pub mod decode;
pub mod enrich;
pub mod event;
pub mod normalize;
pub mod rules;
pub mod sink;
pub mod store;
