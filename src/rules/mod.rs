//! Detection rules: the KQL matcher ([`kql`]), the loader for rule files in
//! Elastic's detection-rules TOML format ([`rule_file`]), New Terms
//! semantics ([`new_terms`]) and operator allowlists ([`allowlist`]).
//!
//! All pure apart from reading the rule files; matching a compiled query
//! against an event cannot fail and does not allocate.

pub mod allowlist;
pub mod kql;
pub mod new_terms;
pub mod rule_file;
