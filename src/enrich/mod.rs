//! Enrichment: what firstseen adds to a normalized event after
//! normalization. Today that is the caller's autonomous system
//! (`source.as.number`, `source.as.organization.name`), looked up in an ASN
//! database that can be replaced on disk while the service runs.
//!
//! The pipeline holds one [`AsnEnricher`], takes a [`AsnDb`] snapshot per
//! batch, calls [`AsnDb::enrich`] per event and counts the returned
//! [`AsnLookupResult`] (its [`as_label`](AsnLookupResult::as_label) is the
//! metric label). A background task runs [`AsnEnricher::watch`].

pub mod asn;

pub use asn::{
    AsnDb, AsnEnricher, AsnError, AsnFormat, AsnInfo, AsnLookupResult, AsnMetadata, AsnSource,
};

/// The shared test ASN table of the failure cases (cases/README.md, "Test
/// ASN mmdb"), for tests across the crate and in `tests/`. It writes plain
/// CSV, so callers need no mmdb writer.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    /// `(first address, last address, AS number, organization)`.
    /// Documentation prefixes only; 10/8 and 127/8 are deliberately absent.
    pub const CASES: &[(&str, &str, u32, &str)] = &[
        (
            "203.0.113.0",
            "203.0.113.255",
            64500,
            "Example Corp Network",
        ),
        (
            "198.51.100.0",
            "198.51.100.255",
            64501,
            "Example CI Runners",
        ),
        ("192.0.2.0", "192.0.2.127", 8068, "Microsoft Corporation"),
        ("192.0.2.128", "192.0.2.255", 8075, "Microsoft Corporation"),
        (
            "2001:db8:85a3::",
            "2001:db8:85a3:ffff:ffff:ffff:ffff:ffff",
            64502,
            "Example IPv6 Network",
        ),
        (
            "2001:db8:1::",
            "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
            8076,
            "Example AS 8076",
        ),
        (
            "2001:db8:2::",
            "2001:db8:2:ffff:ffff:ffff:ffff:ffff",
            8067,
            "Example AS 8067",
        ),
    ];

    /// Writes [`CASES`] as an ip-location-db style CSV (`start,end,asn,org`,
    /// IPv4 and IPv6 in one file), loadable with `--asn-db <path>`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_cases_csv(path: &Path) -> std::io::Result<()> {
        let mut out = String::new();
        for (start, end, asn, org) in CASES {
            out.push_str(&format!("{start},{end},{asn},\"{org}\"\n"));
        }
        std::fs::write(path, out)
    }
}
