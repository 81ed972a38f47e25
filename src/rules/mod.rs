//! Rules: KQL matching, Elastic rule files and New Terms semantics.

pub mod new_terms;
