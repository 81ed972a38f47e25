//! IP → autonomous system lookup: loading ASN databases, looking addresses
//! up, and swapping in a new database when its files change.
//!
//! Owns the three on-disk formats firstseen reads, detected from content:
//! - MaxMind DB files (`.mmdb`), in either of two schemas: GeoLite2-ASN /
//!   DB-IP ASN (`autonomous_system_number`, `autonomous_system_organization`)
//!   or IPinfo Lite (`asn` as the string `"AS174"`, `as_name`);
//! - ip-location-db CSV range files (`start,end,asn,org`, addresses as text
//!   or as decimal integers, RFC 4180 quoting);
//! - iptoasn TSV (`range_start\trange_end\tAS_number\tcountry\tdescription`).
//!
//! Text files become sorted, non-overlapping range tables (IPv4 as `u32`,
//! IPv6 as `u128`) searched by binary search, with organization names
//! interned once as `Arc<str>` so a hit costs an atomic increment, not an
//! allocation. MaxMind files are read into memory rather than mapped: a file
//! truncated and rewritten in place under a live mapping would crash the
//! process, whereas an in-memory copy stays valid until the next reload.
//!
//! AS number 0 ("not routed", RFC 7607) is treated as no data: the lookup
//! misses, so no record ever carries `source.as.number = 0`.
//!
//! Deliberately not here: counting lookups (the caller counts the returned
//! [`AsnLookupResult`], once per batch) and deciding what an AS means (the
//! rules do that).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::event::NormalizedEvent;

/// What looking up one event's caller produced; the metrics label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsnLookupResult {
    /// `source.ip` was found; the AS fields are set.
    Hit,
    /// `source.ip` is in no range of the database (private, unrouted, AS 0).
    Miss,
    /// The caller was not an IP literal (`source.address` is set instead).
    InvalidIp,
    /// The record has no caller at all.
    NoIp,
}

impl AsnLookupResult {
    /// Every result, for pre-registering metric labels at 0.
    pub const ALL: [AsnLookupResult; 4] = [
        AsnLookupResult::Hit,
        AsnLookupResult::Miss,
        AsnLookupResult::InvalidIp,
        AsnLookupResult::NoIp,
    ];

    /// The metric label: `hit`, `miss`, `invalid_ip` or `no_ip`.
    pub fn as_label(self) -> &'static str {
        match self {
            AsnLookupResult::Hit => "hit",
            AsnLookupResult::Miss => "miss",
            AsnLookupResult::InvalidIp => "invalid_ip",
            AsnLookupResult::NoIp => "no_ip",
        }
    }
}

/// The AS an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnInfo {
    pub number: u32,
    /// `None` when the database has no (or an empty) organization name.
    pub organization: Option<Arc<str>>,
}

/// How to read a database file. `Auto` sniffs each file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsnFormat {
    #[default]
    Auto,
    Mmdb,
    Csv,
    Tsv,
}

impl AsnFormat {
    /// The format's name as configuration and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AsnFormat::Auto => "auto",
            AsnFormat::Mmdb => "mmdb",
            AsnFormat::Csv => "csv",
            AsnFormat::Tsv => "tsv",
        }
    }
}

impl FromStr for AsnFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(AsnFormat::Auto),
            "mmdb" => Ok(AsnFormat::Mmdb),
            "csv" => Ok(AsnFormat::Csv),
            "tsv" => Ok(AsnFormat::Tsv),
            other => Err(format!(
                "unknown ASN database format {other:?}; expected auto, mmdb, csv or tsv"
            )),
        }
    }
}

impl fmt::Display for AsnFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a database could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AsnError {
    #[error("ASN database {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ASN database {path}: not a valid MaxMind DB file: {source}")]
    Mmdb {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error("ASN database {path}:{line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "ASN database {path}: cannot tell the format (not a MaxMind DB, no comma- or \
         tab-separated line); pass the format explicitly"
    )]
    UnknownFormat { path: PathBuf },
    #[error("ASN database {path}: no database files found (expected .mmdb, .csv or .tsv)")]
    NoFiles { path: PathBuf },
    #[error("ASN database {path}: contains no ranges")]
    Empty { path: PathBuf },
}

impl AsnError {
    /// A short stable code for metric labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            AsnError::Io { .. } => "io",
            AsnError::Mmdb { .. } => "invalid_mmdb",
            AsnError::Malformed { .. } => "malformed_line",
            AsnError::UnknownFormat { .. } => "unknown_format",
            AsnError::NoFiles { .. } => "no_files",
            AsnError::Empty { .. } => "empty",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AsnError + '_ {
    move |source| AsnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the database comes from: a comma-separated list of files and/or
/// directories (a directory contributes its `.mmdb`, `.csv`, `.tsv` files,
/// in name order), plus an optional format override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnSource {
    pub paths: Vec<PathBuf>,
    pub format: AsnFormat,
}

impl AsnSource {
    /// Parses `a.csv,b.csv` or `dir/` (as `--asn-db` takes it), format auto.
    pub fn parse(spec: &str) -> AsnSource {
        AsnSource {
            paths: spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            format: AsnFormat::Auto,
        }
    }

    /// Resolves directories to the database files they hold.
    fn files(&self) -> Result<Vec<PathBuf>, AsnError> {
        let mut out = Vec::new();
        for path in &self.paths {
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            if meta.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io_err(path))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        let hidden = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_none_or(|n| n.starts_with('.'));
                        let ext = p
                            .extension()
                            .and_then(|e| e.to_str())
                            .map(str::to_ascii_lowercase);
                        !hidden
                            && p.is_file()
                            && matches!(ext.as_deref(), Some("mmdb" | "csv" | "tsv"))
                    })
                    .collect();
                if found.is_empty() {
                    return Err(AsnError::NoFiles { path: path.clone() });
                }
                found.sort();
                out.extend(found);
            } else {
                out.push(path.clone());
            }
        }
        if out.is_empty() {
            return Err(AsnError::NoFiles {
                path: PathBuf::from(""),
            });
        }
        Ok(out)
    }
}

/// Summary of a loaded database, for logs and the metrics endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct AsnMetadata {
    /// `mmdb`, `csv`, `tsv`, or several joined with `+` for a mixed set.
    pub format: String,
    pub files: Vec<PathBuf>,
    /// The MaxMind `build_epoch` (seconds), newest over the mmdb files.
    pub build_epoch: Option<u64>,
    /// The MaxMind `database_type` of each mmdb file.
    pub database_types: Vec<String>,
    /// Ranges in the text-file tables after merging adjacent equal ranges.
    pub ranges_v4: usize,
    pub ranges_v6: usize,
    /// Search-tree nodes over all mmdb files (the closest thing to a count).
    pub mmdb_nodes: u64,
    /// Distinct organization names interned from text files.
    pub organizations: usize,
    /// Overlapping text ranges with different data (the narrowest won),
    /// and a description of the first (`file:line (ASn) overlaps ...`).
    pub overlaps_resolved: usize,
    pub first_overlap: Option<String>,
    pub loaded_at: SystemTime,
}

/// One line for humans (`check-config`, logs).
impl std::fmt::Display for AsnMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} file", self.format, self.files.len())?;
        if self.files.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        if self.ranges_v4 + self.ranges_v6 > 0 {
            write!(
                f,
                ", {} IPv4 and {} IPv6 ranges, {} organizations",
                self.ranges_v4, self.ranges_v6, self.organizations
            )?;
        }
        if self.mmdb_nodes > 0 {
            write!(
                f,
                ", {} mmdb nodes ({})",
                self.mmdb_nodes,
                self.database_types.join(", ")
            )?;
        }
        if let Some(epoch) = self.build_epoch {
            let built = i64::try_from(epoch)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000);
            write!(f, ", built {}", crate::normalize::format_timestamp(built))?;
        }
        if self.overlaps_resolved > 0 {
            write!(
                f,
                ", {} overlapping ranges resolved narrowest-first",
                self.overlaps_resolved
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Range tables (CSV / TSV)

const NO_ORG: u32 = u32::MAX;

/// Sorted, non-overlapping inclusive ranges; parallel vectors keep the
/// binary search on a dense array of starts.
#[derive(Debug, Default)]
struct Table<T> {
    starts: Vec<T>,
    ends: Vec<T>,
    asn: Vec<u32>,
    org: Vec<u32>,
}

impl<T: Copy + Ord> Table<T> {
    fn find(&self, ip: T) -> Option<(u32, u32)> {
        let i = self.starts.partition_point(|s| *s <= ip);
        if i == 0 || self.ends[i - 1] < ip {
            return None;
        }
        Some((self.asn[i - 1], self.org[i - 1]))
    }
}

#[derive(Debug, Default)]
struct RangeDb {
    v4: Table<u32>,
    v6: Table<u128>,
    orgs: Vec<Arc<str>>,
}

impl RangeDb {
    fn lookup(&self, ip: IpAddr) -> Option<AsnInfo> {
        let (number, org) = match ip {
            IpAddr::V4(v4) => self.v4.find(u32::from(v4))?,
            IpAddr::V6(v6) => self.v6.find(u128::from(v6))?,
        };
        Some(AsnInfo {
            number,
            organization: self.orgs.get(org as usize).cloned(),
        })
    }
}

/// One parsed line, kept with its provenance until the table is built so an
/// overlap error can name both lines.
#[derive(Debug, Clone, Copy)]
struct Pending {
    start: u128,
    end: u128,
    asn: u32,
    org: u32,
    file: u32,
    line: u32,
}

#[derive(Default)]
struct RangeBuilder {
    v4: Vec<Pending>,
    v6: Vec<Pending>,
    orgs: Vec<Arc<str>>,
    org_ids: HashMap<Arc<str>, u32>,
    files: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Csv,
    Tsv,
}

impl RangeBuilder {
    fn intern(&mut self, org: &str) -> u32 {
        let org = org.trim();
        if org.is_empty() {
            return NO_ORG;
        }
        if let Some(id) = self.org_ids.get(org) {
            return *id;
        }
        let id = self.orgs.len() as u32;
        let arc: Arc<str> = Arc::from(org);
        self.orgs.push(arc.clone());
        self.org_ids.insert(arc, id);
        id
    }

    fn add_file(&mut self, path: &Path, bytes: &[u8], kind: TextKind) -> Result<(), AsnError> {
        let file = self.files.len() as u32;
        self.files.push(path.to_path_buf());
        let mut fields: Vec<Cow<'_, str>> = Vec::with_capacity(5);
        for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line_no = idx + 1;
            let malformed = |reason: String| AsnError::Malformed {
                path: path.to_path_buf(),
                line: line_no,
                reason,
            };
            let line = std::str::from_utf8(raw)
                .map_err(|_| malformed("line is not valid UTF-8".into()))?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            fields.clear();
            match kind {
                TextKind::Csv => split_csv(line, &mut fields).map_err(malformed)?,
                TextKind::Tsv => fields.extend(line.split('\t').map(Cow::Borrowed)),
            }
            if line_no == 1 && is_header(&fields[0]) {
                continue;
            }
            let (asn_field, org_field) = match (kind, fields.len()) {
                (_, 3) => (&fields[2], None),
                (TextKind::Csv, 4) => (&fields[2], Some(&fields[3])),
                (TextKind::Tsv, 5) => (&fields[2], Some(&fields[4])),
                (TextKind::Csv, n) => {
                    return Err(malformed(format!(
                        "expected 3 or 4 comma-separated fields (start,end,asn[,org]), found {n}"
                    )))
                }
                (TextKind::Tsv, n) => {
                    return Err(malformed(format!(
                        "expected 3 or 5 tab-separated fields \
                         (start, end, asn[, country, description]), found {n}"
                    )))
                }
            };
            let start = parse_addr(&fields[0]).map_err(&malformed)?;
            let end = parse_addr(&fields[1]).map_err(&malformed)?;
            let v4 = match (start, end) {
                (Addr::V4(_), Addr::V4(_)) => true,
                (Addr::V6(_), Addr::V6(_)) => false,
                _ => {
                    return Err(malformed(format!(
                        "range start {:?} and end {:?} are different IP versions",
                        fields[0], fields[1]
                    )))
                }
            };
            let (start, end) = (start.value(), end.value());
            if start > end {
                return Err(malformed(format!(
                    "range start {:?} is after its end {:?}",
                    fields[0], fields[1]
                )));
            }
            let asn = parse_asn(asn_field).map_err(&malformed)?;
            if asn == 0 {
                // "Not routed": leave the range out so lookups miss.
                continue;
            }
            let org = match org_field {
                Some(o) if !(kind == TextKind::Tsv && o == "Not routed") => self.intern(o),
                _ => NO_ORG,
            };
            let p = Pending {
                start,
                end,
                asn,
                org,
                file,
                line: u32::try_from(line_no).unwrap_or(u32::MAX),
            };
            if v4 {
                self.v4.push(p);
            } else {
                self.v6.push(p);
            }
        }
        Ok(())
    }

    fn build(self) -> (RangeDb, Overlaps) {
        let mut overlaps = Overlaps::default();
        let v4 = build_table(self.v4, &self.files, &mut overlaps, |v| v as u32);
        let v6 = build_table(self.v6, &self.files, &mut overlaps, |v| v);
        let db = RangeDb {
            v4,
            v6,
            orgs: self.orgs,
        };
        (db, overlaps)
    }
}

/// Overlapping ranges with different data, found while building.
#[derive(Debug, Default)]
struct Overlaps {
    count: usize,
    first: Option<String>,
}

/// Sorts the ranges and makes them disjoint, then merges adjacent ranges of
/// the same AS and organization.
///
/// Published data is not always clean: ip-location-db's IPv4 file of
/// 2026-06 has one partial overlap (two DoD ranges). Rejecting the whole
/// data set over it would leave users without enrichment, so overlaps are
/// resolved the way a routing table or a MaxMind tree resolves them: the
/// narrowest range wins for the addresses it covers (on equal width, the
/// later line). Exact duplicates (the same data shipped twice, e.g.
/// `asn-ipv4.csv` next to `asn-ipv4-num.csv`) are simply dropped. Conflicts
/// are counted and the first one is described in [`AsnMetadata`].
fn build_table<T: Copy + Ord>(
    mut ranges: Vec<Pending>,
    files: &[PathBuf],
    overlaps: &mut Overlaps,
    narrow: impl Fn(u128) -> T,
) -> Table<T> {
    ranges.sort_unstable_by_key(|p| (p.start, p.end, p.file, p.line));
    // Compare each range with the one reaching furthest so far, so an
    // overlap is seen even when a nested range sits between the two.
    let mut any_overlap = false;
    let mut reach: Option<Pending> = None;
    for &cur in &ranges {
        if let Some(prev) = reach.filter(|p| cur.start <= p.end) {
            any_overlap = true;
            if (prev.asn, prev.org) != (cur.asn, cur.org) {
                overlaps.count += 1;
                if overlaps.first.is_none() {
                    let at =
                        |p: Pending| format!("{}:{}", files[p.file as usize].display(), p.line);
                    overlaps.first = Some(format!(
                        "{} (AS{}) overlaps {} (AS{})",
                        at(cur),
                        cur.asn,
                        at(prev),
                        prev.asn
                    ));
                }
            }
        }
        if reach.is_none_or(|p| cur.end > p.end) {
            reach = Some(cur);
        }
    }
    if any_overlap {
        ranges = paint_narrowest_wins(ranges);
    }
    let mut merged: Vec<Pending> = Vec::with_capacity(ranges.len());
    for cur in ranges {
        if let Some(prev) = merged.last_mut() {
            if (prev.asn, prev.org) == (cur.asn, cur.org)
                && prev.end.checked_add(1) == Some(cur.start)
            {
                prev.end = cur.end;
                continue;
            }
        }
        merged.push(cur);
    }
    let mut table = Table {
        starts: Vec::with_capacity(merged.len()),
        ends: Vec::with_capacity(merged.len()),
        asn: Vec::with_capacity(merged.len()),
        org: Vec::with_capacity(merged.len()),
    };
    for p in merged {
        table.starts.push(narrow(p.start));
        table.ends.push(narrow(p.end));
        table.asn.push(p.asn);
        table.org.push(p.org);
    }
    table
}

/// Paints ranges widest first onto a map of disjoint intervals, so each
/// narrower range overwrites the part of any wider one it covers. Only runs
/// when the input overlaps, which is rare.
fn paint_narrowest_wins(mut ranges: Vec<Pending>) -> Vec<Pending> {
    use std::cmp::Reverse;
    use std::collections::BTreeMap;
    use std::ops::Bound::{Excluded, Included};

    ranges.sort_by_key(|p| (Reverse(p.end - p.start), p.file, p.line));
    let mut painted: BTreeMap<u128, Pending> = BTreeMap::new();
    for r in ranges {
        let mut hit: Vec<Pending> = Vec::new();
        if let Some((_, p)) = painted.range(..=r.start).next_back() {
            if p.end >= r.start {
                hit.push(*p);
            }
        }
        hit.extend(
            painted
                .range((Excluded(r.start), Included(r.end)))
                .map(|(_, p)| *p),
        );
        for h in hit {
            painted.remove(&h.start);
            if h.start < r.start {
                painted.insert(
                    h.start,
                    Pending {
                        end: r.start - 1,
                        ..h
                    },
                );
            }
            if h.end > r.end {
                painted.insert(
                    r.end + 1,
                    Pending {
                        start: r.end + 1,
                        ..h
                    },
                );
            }
        }
        painted.insert(r.start, r);
    }
    painted.into_values().collect()
}

/// A header line such as `range_start,range_end,...`: a first field that is
/// neither a number nor an address and has no address punctuation.
fn is_header(first: &str) -> bool {
    let f = first.trim();
    !f.is_empty() && !f.contains([':', '.']) && f.parse::<u128>().is_err()
}

#[derive(Clone, Copy)]
enum Addr {
    V4(u32),
    V6(u128),
}

impl Addr {
    fn value(self) -> u128 {
        match self {
            Addr::V4(v) => v.into(),
            Addr::V6(v) => v,
        }
    }
}

/// An address as text (`1.0.0.0`, `2001:db8::`) or as a decimal integer
/// (ip-location-db's `-num` files). A decimal that fits in 32 bits is IPv4:
/// the `-num` files carry no version marker, and IPv6 ranges that small
/// (`::/96`, deprecated IPv4-compatible space) are never published.
fn parse_addr(field: &str) -> Result<Addr, String> {
    let f = field.trim();
    if let Ok(ip) = f.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(v4) => Addr::V4(v4.into()),
            IpAddr::V6(v6) => Addr::V6(v6.into()),
        });
    }
    match f.parse::<u128>() {
        Ok(n) => Ok(match u32::try_from(n) {
            Ok(v4) => Addr::V4(v4),
            Err(_) => Addr::V6(n),
        }),
        Err(_) => Err(format!("{f:?} is not an IP address or a decimal address")),
    }
}

/// `13335`, `AS13335` or `as13335`.
fn parse_asn(field: &str) -> Result<u32, String> {
    let f = field.trim();
    let digits = f
        .strip_prefix("AS")
        .or_else(|| f.strip_prefix("as"))
        .unwrap_or(f);
    digits
        .parse::<u32>()
        .map_err(|_| format!("{f:?} is not an AS number"))
}

/// Splits one RFC 4180 CSV line: fields may be quoted, quotes inside quoted
/// fields are doubled (`"LLC ""SPUTNIK"""`). Multi-line fields are not
/// supported: no ASN data set uses them.
fn split_csv<'a>(line: &'a str, out: &mut Vec<Cow<'a, str>>) -> Result<(), String> {
    // Byte scanning with `memchr`; fields borrow from the line unless a
    // doubled quote has to be undone.
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut from = start;
            let mut owned: Option<String> = None;
            loop {
                let q = from
                    + memchr::memchr(b'"', &b[from..])
                        .ok_or_else(|| "unterminated quoted field".to_string())?;
                if b.get(q + 1) == Some(&b'"') {
                    // `""` is one quote.
                    owned
                        .get_or_insert_with(String::new)
                        .push_str(&line[from..=q]);
                    from = q + 2;
                    continue;
                }
                let field = match owned {
                    Some(mut s) => {
                        s.push_str(&line[from..q]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(&line[start..q]),
                };
                i = q + 1;
                match b.get(i) {
                    None => {
                        out.push(field);
                        return Ok(());
                    }
                    Some(b',') => {
                        out.push(field);
                        i += 1;
                    }
                    Some(_) => {
                        let c = line[i..].chars().next().unwrap_or_default();
                        return Err(format!("unexpected {c:?} after a closing quote"));
                    }
                }
                break;
            }
        } else {
            let end = memchr::memchr(b',', &b[i..]).map_or(b.len(), |k| i + k);
            let field = &line[i..end];
            if field.contains('"') {
                return Err("quote inside an unquoted field".into());
            }
            out.push(Cow::Borrowed(field));
            if end == b.len() {
                return Ok(());
            }
            i = end + 1;
        }
    }
}

// ---------------------------------------------------------------------------
// MaxMind DB

/// The MaxMind metadata marker; it sits near the end of every mmdb file.
const MMDB_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// The metadata section is at most 128 KiB from the end (MaxMind DB spec).
const MMDB_METADATA_MAX: usize = 128 * 1024;

fn looks_like_mmdb(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(MMDB_METADATA_MAX)..];
    memchr::memmem::rfind(tail, MMDB_MARKER).is_some()
}

/// The fields of both supported schemas; whichever is present wins.
#[derive(Deserialize)]
struct MmdbAsRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
    #[serde(borrow)]
    asn: Option<AsnField<'a>>,
    #[serde(borrow)]
    as_name: Option<&'a str>,
}

/// IPinfo writes `"AS174"`; accept a bare integer too.
enum AsnField<'a> {
    Num(u64),
    Str(&'a str),
}

impl<'de: 'a, 'a> Deserialize<'de> for AsnField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AsnField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AS number or a string like \"AS174\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AsnField::Num(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(AsnField::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

struct MmdbDb {
    reader: maxminddb::Reader<Vec<u8>>,
    /// Organization names by AS number, so repeated hits share one
    /// allocation; read-mostly, written once per distinct AS.
    orgs: RwLock<HashMap<u32, Arc<str>>>,
}

impl MmdbDb {
    fn open(path: &Path, bytes: Vec<u8>) -> Result<MmdbDb, AsnError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| AsnError::Mmdb {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MmdbDb {
            reader,
            orgs: RwLock::new(HashMap::new()),
        })
    }

    fn lookup(&self, ip: IpAddr) -> Option<AsnInfo> {
        // A decoding error means a record of an unexpected shape for this
        // address; it is a miss for the event, not a failure of the batch.
        let rec: MmdbAsRecord<'_> = self.reader.lookup(ip).ok().flatten()?;
        let (number, org) = match (rec.autonomous_system_number, rec.asn) {
            (Some(n), _) => (n, rec.autonomous_system_organization),
            (None, Some(AsnField::Num(n))) => (u32::try_from(n).ok()?, rec.as_name),
            (None, Some(AsnField::Str(s))) => (parse_asn(s).ok()?, rec.as_name),
            (None, None) => return None,
        };
        if number == 0 {
            return None;
        }
        let organization = org
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| self.intern(number, o));
        Some(AsnInfo {
            number,
            organization,
        })
    }

    fn intern(&self, number: u32, org: &str) -> Arc<str> {
        if let Ok(map) = self.orgs.read() {
            if let Some(a) = map.get(&number).filter(|a| &***a == org) {
                return a.clone();
            }
        }
        let arc: Arc<str> = Arc::from(org);
        if let Ok(mut map) = self.orgs.write() {
            map.entry(number).or_insert_with(|| arc.clone());
        }
        arc
    }
}

// ---------------------------------------------------------------------------
// The database

/// One loaded, immutable ASN database (possibly from several files).
/// Text files are merged into one range table, consulted first; mmdb files
/// follow in the order given; the first hit wins.
pub struct AsnDb {
    ranges: RangeDb,
    mmdbs: Vec<MmdbDb>,
    metadata: AsnMetadata,
    /// Distinct for every database loaded by this process: the key of
    /// this database's entries in the per-thread lookup cache.
    id: u64,
}

/// Source of [`AsnDb::id`].
static NEXT_DB_ID: AtomicU64 = AtomicU64::new(1);

/// Slots of the per-thread lookup cache (direct-mapped). Activity logs
/// repeat a small set of callers (automation, CI, the corporate egress),
/// so a few thousand recent addresses answer most lookups without a
/// binary search over half a million ranges or an mmdb tree walk
/// (BENCHMARKS.md, "ASN lookup").
const CACHE_SLOTS: usize = 2048;

struct CacheSlot {
    db: u64,
    ip: u128,
    info: Option<AsnInfo>,
}

thread_local! {
    static LOOKUP_CACHE: std::cell::RefCell<Vec<CacheSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An address as one 128-bit key (IPv4 mapped into IPv6, so the two
/// families never collide).
fn cache_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn cache_slot(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
}

impl fmt::Debug for AsnDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsnDb")
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl AsnDb {
    /// Loads every file of `source`.
    ///
    /// # Errors
    /// Any unreadable, unrecognized or malformed file, or conflicting
    /// overlapping ranges; the error names the file (and line).
    pub fn load(source: &AsnSource) -> Result<AsnDb, AsnError> {
        let files = source.files()?;
        Self::load_files(&files, source.format)
    }

    fn load_files(files: &[PathBuf], format: AsnFormat) -> Result<AsnDb, AsnError> {
        let mut builder = RangeBuilder::default();
        let mut mmdbs = Vec::new();
        let mut formats: Vec<&'static str> = Vec::new();
        let mut build_epoch: Option<u64> = None;
        let mut database_types = Vec::new();
        for path in files {
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            let kind = match format {
                AsnFormat::Auto => sniff(path, &bytes)?,
                explicit => explicit,
            };
            match kind {
                AsnFormat::Mmdb => {
                    let db = MmdbDb::open(path, bytes)?;
                    let meta = &db.reader.metadata;
                    build_epoch = build_epoch.max(Some(meta.build_epoch));
                    database_types.push(meta.database_type.clone());
                    mmdbs.push(db);
                }
                AsnFormat::Csv => builder.add_file(path, &bytes, TextKind::Csv)?,
                AsnFormat::Tsv | AsnFormat::Auto => {
                    builder.add_file(path, &bytes, TextKind::Tsv)?
                }
            }
            if !formats.contains(&kind.as_str()) {
                formats.push(kind.as_str());
            }
        }
        let organizations = builder.orgs.len();
        let (ranges, overlaps) = builder.build();
        if let Some(first) = &overlaps.first {
            tracing::warn!(
                count = overlaps.count,
                first = %first,
                "ASN database has overlapping ranges; the narrowest range wins"
            );
        }
        let (ranges_v4, ranges_v6) = (ranges.v4.starts.len(), ranges.v6.starts.len());
        if mmdbs.is_empty() && ranges_v4 + ranges_v6 == 0 {
            return Err(AsnError::Empty {
                path: files.first().cloned().unwrap_or_default(),
            });
        }
        let mmdb_nodes = mmdbs
            .iter()
            .map(|m| u64::from(m.reader.metadata.node_count))
            .sum();
        Ok(AsnDb {
            ranges,
            mmdbs,
            id: NEXT_DB_ID.fetch_add(1, Ordering::Relaxed),
            metadata: AsnMetadata {
                format: formats.join("+"),
                files: files.to_vec(),
                build_epoch,
                database_types,
                ranges_v4,
                ranges_v6,
                mmdb_nodes,
                organizations,
                overlaps_resolved: overlaps.count,
                first_overlap: overlaps.first,
                loaded_at: SystemTime::now(),
            },
        })
    }

    /// The AS of `ip`, or `None` when no file has it. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are looked up as the IPv4 address.
    pub fn lookup(&self, ip: IpAddr) -> Option<AsnInfo> {
        let ip = ip.to_canonical();
        self.cached(ip, |info| info.cloned())
    }

    /// Without the cache (the cost the cache saves; benchmarks compare).
    pub fn lookup_uncached(&self, ip: IpAddr) -> Option<AsnInfo> {
        self.lookup_tables(ip.to_canonical())
    }

    fn lookup_tables(&self, ip: IpAddr) -> Option<AsnInfo> {
        self.ranges
            .lookup(ip)
            .or_else(|| self.mmdbs.iter().find_map(|m| m.lookup(ip)))
    }

    /// Looks `ip` (canonical) up through this thread's cache and hands the
    /// result to `f` (by reference: a hit that only needs to know whether
    /// there is an AS clones nothing).
    fn cached<T>(&self, ip: IpAddr, f: impl FnOnce(Option<&AsnInfo>) -> T) -> T {
        let key = cache_key(ip);
        LOOKUP_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.is_empty() {
                cache.extend((0..CACHE_SLOTS).map(|_| CacheSlot {
                    db: 0,
                    ip: 0,
                    info: None,
                }));
            }
            let slot = &mut cache[cache_slot(key)];
            if slot.db != self.id || slot.ip != key {
                *slot = CacheSlot {
                    db: self.id,
                    ip: key,
                    info: self.lookup_tables(ip),
                };
            }
            f(slot.info.as_ref())
        })
    }

    /// What [`AsnDb::enrich`] would return for an event with this
    /// `source.ip` and (`has_address`) a `source.address`, without an
    /// event (for records the pipeline counts but does not normalize).
    pub fn classify(&self, ip: Option<IpAddr>, has_address: bool) -> AsnLookupResult {
        match ip {
            Some(ip) if self.cached(ip.to_canonical(), |i| i.is_some()) => AsnLookupResult::Hit,
            Some(_) => AsnLookupResult::Miss,
            None if has_address => AsnLookupResult::InvalidIp,
            None => AsnLookupResult::NoIp,
        }
    }

    /// Fills (or clears, on a miss) `source.as.*` of `ev` from `source.ip`.
    pub fn enrich(&self, ev: &mut NormalizedEvent) -> AsnLookupResult {
        let Some(ip) = ev.source_ip else {
            ev.source_as_number = None;
            ev.source_as_organization = None;
            return if ev.source_address.is_some() {
                AsnLookupResult::InvalidIp
            } else {
                AsnLookupResult::NoIp
            };
        };
        match self.lookup(ip) {
            Some(info) => {
                ev.source_as_number = Some(info.number);
                ev.source_as_organization = info.organization;
                AsnLookupResult::Hit
            }
            None => {
                ev.source_as_number = None;
                ev.source_as_organization = None;
                AsnLookupResult::Miss
            }
        }
    }

    /// What was loaded.
    pub fn metadata(&self) -> &AsnMetadata {
        &self.metadata
    }
}

/// Detects a file's format: the mmdb metadata marker, else the separator
/// of the first data line.
fn sniff(path: &Path, bytes: &[u8]) -> Result<AsnFormat, AsnError> {
    if looks_like_mmdb(bytes) {
        return Ok(AsnFormat::Mmdb);
    }
    let first = bytes
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace) && !l.starts_with(b"#"));
    match first {
        Some(l) if l.contains(&b'\t') => Ok(AsnFormat::Tsv),
        Some(l) if l.contains(&b',') => Ok(AsnFormat::Csv),
        _ => Err(AsnError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

// ---------------------------------------------------------------------------
// Reloading

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp_files(files: &[PathBuf]) -> Result<Vec<FileStamp>, AsnError> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(FileStamp {
                path: path.clone(),
                len: meta.len(),
                modified: meta.modified().ok(),
                inode,
            })
        })
        .collect()
}

/// The enricher the pipeline holds: the current database behind an atomic
/// swap, plus what is needed to notice a new version on disk.
///
/// Readers take [`AsnEnricher::snapshot`] once per batch (one read-lock and
/// an `Arc` clone) and look up without any lock; a reload builds the new
/// database entirely outside the lock and only swaps the `Arc`, so a batch
/// never sees half a database and never waits for a load.
pub struct AsnEnricher {
    source: AsnSource,
    current: RwLock<Arc<AsnDb>>,
    /// Stamps of the last version tried (loaded or rejected), so a bad file
    /// is reported once, not on every poll.
    last_seen: Mutex<Vec<FileStamp>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl fmt::Debug for AsnEnricher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsnEnricher")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl AsnEnricher {
    /// Loads the database for the first time.
    ///
    /// # Errors
    /// As [`AsnDb::load`]: a service must not start with no usable database.
    pub fn open(source: AsnSource) -> Result<AsnEnricher, AsnError> {
        let files = source.files()?;
        let stamps = stamp_files(&files)?;
        let db = AsnDb::load_files(&files, source.format)?;
        Ok(AsnEnricher {
            source,
            current: RwLock::new(Arc::new(db)),
            last_seen: Mutex::new(stamps),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// The current database; hold it for one batch.
    pub fn snapshot(&self) -> Arc<AsnDb> {
        match self.current.read() {
            Ok(g) => g.clone(),
            // A panic while holding the lock cannot leave the Arc torn.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Looks up one event against the current database. For batches, take
    /// a [`snapshot`](Self::snapshot) once and call [`AsnDb::enrich`].
    pub fn enrich(&self, ev: &mut NormalizedEvent) -> AsnLookupResult {
        self.snapshot().enrich(ev)
    }

    /// Metadata of the current database.
    pub fn metadata(&self) -> AsnMetadata {
        self.snapshot().metadata().clone()
    }

    /// Successful reloads and rejected new versions since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }

    /// Reloads when any file's size, mtime or inode changed (or a
    /// directory gained or lost files), swapping the new database in
    /// atomically. Returns `Ok(true)` when it swapped.
    ///
    /// A file still being written (its stamp changes while it is read) is
    /// left for the next call. A new version that fails to load keeps the
    /// old database serving and is returned as the error, once per version.
    ///
    /// # Errors
    /// The load error of the new version, for the caller to log and count.
    pub fn reload_if_changed(&self) -> Result<bool, AsnError> {
        // A file that vanished mid-replace (write temp + rename) or became
        // unreadable: keep serving the old database and report it.
        let listed = self.source.files().and_then(|files| {
            let stamps = stamp_files(&files)?;
            Ok((files, stamps))
        });
        let (files, before) = match listed {
            Ok(v) => v,
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if before == *last {
            return Ok(false);
        }
        let loaded = AsnDb::load_files(&files, self.source.format);
        match stamp_files(&files) {
            Ok(after) if after == before => {}
            // Changed while we read it: try again at the next poll.
            _ => return Ok(false),
        }
        *last = before;
        match loaded {
            Ok(db) => {
                let db = Arc::new(db);
                match self.current.write() {
                    Ok(mut g) => *g = db,
                    Err(poisoned) => *poisoned.into_inner() = db,
                }
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Polls for a changed database every `interval` until `shutdown`
    /// resolves. Loading runs on the blocking pool (a full CSV data set
    /// takes a noticeable fraction of a second to parse); failures are
    /// logged and counted in [`reload_counts`](Self::reload_counts).
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; the db is fresh
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    let m = self.metadata();
                    tracing::info!(
                        format = %m.format,
                        ranges_v4 = m.ranges_v4,
                        ranges_v6 = m.ranges_v6,
                        build_epoch = ?m.build_epoch,
                        "ASN database reloaded"
                    );
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    code = e.code(),
                    "ASN database changed but could not be loaded; keeping the previous one"
                ),
                Err(join) => tracing::error!(error = %join, "ASN reload task failed"),
            }
        }
    }
}

#[cfg(test)]
#[path = "asn_tests.rs"]
mod tests;
