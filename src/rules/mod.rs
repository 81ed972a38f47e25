//! Detection rules: the KQL matcher ([`kql`]) and the loader for rule files
//! in Elastic's detection-rules TOML format ([`rule_file`]).
//!
//! Both run at load time and are pure apart from reading the rule files;
//! matching a compiled query against an event cannot fail and does not
//! allocate.

pub mod kql;
pub mod rule_file;
