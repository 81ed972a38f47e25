//! Sources of Event Hubs bodies. `file` serves replay and normalize.

pub mod eventhubs;
pub mod file;
