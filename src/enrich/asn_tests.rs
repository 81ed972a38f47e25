//! Tests of the ASN databases: every format on the shared cases table
//! (cases/README.md, "Test ASN mmdb"), range boundaries, lookup results,
//! reload, and error reporting; plus the check that the bundled samples
//! resolve in the bundled ASN extract as designed.

use super::*;
use crate::enrich::testing::{write_cases_csv, CASES};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use mmdb_writer::Writer;
use serde::Serialize;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn db_from(paths: &[&Path], format: AsnFormat) -> Result<AsnDb, AsnError> {
    AsnDb::load(&AsnSource {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        format,
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn next(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => u32::from(v)
            .checked_add(1)
            .map(|n| Ipv4Addr::from(n).into()),
        IpAddr::V6(v) => u128::from(v)
            .checked_add(1)
            .map(|n| Ipv6Addr::from(n).into()),
    }
}

fn prev(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => u32::from(v)
            .checked_sub(1)
            .map(|n| Ipv4Addr::from(n).into()),
        IpAddr::V6(v) => u128::from(v)
            .checked_sub(1)
            .map(|n| Ipv6Addr::from(n).into()),
    }
}

/// The AS the cases table gives an address, if any.
fn table_asn(a: IpAddr) -> Option<u32> {
    CASES.iter().find_map(|(s, e, asn, _)| {
        let (s, e) = (ip(s), ip(e));
        let inside = match (a, s, e) {
            (IpAddr::V4(a), IpAddr::V4(s), IpAddr::V4(e)) => s <= a && a <= e,
            (IpAddr::V6(a), IpAddr::V6(s), IpAddr::V6(e)) => s <= a && a <= e,
            _ => false,
        };
        inside.then_some(*asn)
    })
}

/// Checks a database against the whole cases table: first and last address
/// of every range, the neighbours just outside, and the absent networks.
fn check_cases(db: &AsnDb) {
    for (start, end, asn, org) in CASES {
        for a in [ip(start), ip(end)] {
            let got = db.lookup(a).unwrap_or_else(|| panic!("{a} should hit"));
            assert_eq!(got.number, *asn, "{a}");
            assert_eq!(got.organization.as_deref(), Some(*org), "{a}");
        }
        for outside in [prev(ip(start)), next(ip(end))].into_iter().flatten() {
            assert_eq!(
                db.lookup(outside).map(|i| i.number),
                table_asn(outside),
                "{outside} just outside {start}-{end}"
            );
        }
    }
    for miss in [
        "10.0.0.1",
        "10.255.255.255",
        "127.0.0.1",
        "2001:db8:3::1",
        "8.8.8.8",
    ] {
        assert_eq!(db.lookup(ip(miss)), None, "{miss} should miss");
    }
    // An IPv4-mapped IPv6 caller is the IPv4 address.
    assert_eq!(
        db.lookup(ip("::ffff:203.0.113.7")).map(|i| i.number),
        Some(64500)
    );
}

#[derive(Serialize)]
struct MaxMindAsn<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: &'a str,
}

#[derive(Serialize)]
struct IpinfoLite<'a> {
    asn: String,
    as_name: &'a str,
    as_domain: &'a str,
    country_code: &'a str,
}

fn cases_mmdb(path: &Path, schema: &str, build_epoch: u64) {
    let mut w = Writer::builder(schema)
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(build_epoch))
        .build();
    for (start, end, asn, org) in CASES {
        for net in range_nets(ip(start), ip(end)) {
            if schema == "ipinfo lite.mmdb" {
                w.insert(
                    net,
                    &IpinfoLite {
                        asn: format!("AS{asn}"),
                        as_name: org,
                        as_domain: "example.com",
                        country_code: "ZZ",
                    },
                )
                .unwrap();
            } else {
                w.insert(
                    net,
                    &MaxMindAsn {
                        autonomous_system_number: *asn,
                        autonomous_system_organization: org,
                    },
                )
                .unwrap();
            }
        }
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

/// The CIDR networks covering an inclusive range.
fn range_nets(start: IpAddr, end: IpAddr) -> Vec<ipnet::IpNet> {
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => ipnet::Ipv4Subnets::new(s, e, 0)
            .map(ipnet::IpNet::V4)
            .collect(),
        (IpAddr::V6(s), IpAddr::V6(e)) => ipnet::Ipv6Subnets::new(s, e, 0)
            .map(ipnet::IpNet::V6)
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn mmdb_maxmind_schema_matches_the_cases_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("GeoLite2-ASN.mmdb");
    cases_mmdb(&p, "GeoLite2-ASN", 1_740_000_000);
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    check_cases(&db);
    let m = db.metadata();
    assert_eq!(m.format, "mmdb");
    assert_eq!(m.build_epoch, Some(1_740_000_000));
    assert_eq!(m.database_types, ["GeoLite2-ASN"]);
    assert!(m.mmdb_nodes > 0);
}

#[test]
fn mmdb_ipinfo_lite_schema_matches_the_cases_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ipinfo_lite.mmdb");
    cases_mmdb(&p, "ipinfo lite.mmdb", 1_741_000_000);
    let db = db_from(&[&p], AsnFormat::Mmdb).unwrap();
    check_cases(&db);
    assert_eq!(db.metadata().build_epoch, Some(1_741_000_000));
}

#[test]
fn csv_matches_the_cases_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cases.csv");
    write_cases_csv(&p).unwrap();
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    check_cases(&db);
    let m = db.metadata();
    assert_eq!(m.format, "csv");
    // 192.0.2.0/25 and /25 have different ASNs: not merged.
    assert_eq!((m.ranges_v4, m.ranges_v6), (4, 3));
    assert_eq!(m.build_epoch, None);
}

#[test]
fn numeric_csv_as_in_ip_location_db_num_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (s, e, asn, org) in CASES {
        let num = |a: &str| match ip(a) {
            IpAddr::V4(v) => u128::from(u32::from(v)),
            IpAddr::V6(v) => u128::from(v),
        };
        text.push_str(&format!("{},{},{asn},{org}\n", num(s), num(e)));
    }
    let p = write(dir.path(), "asn-num.csv", &text);
    check_cases(&db_from(&[&p], AsnFormat::Auto).unwrap());
}

#[test]
fn iptoasn_tsv_matches_the_cases_table_and_as0_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("10.0.0.0\t10.255.255.255\t0\tNone\tNot routed\n");
    for (s, e, asn, org) in CASES {
        text.push_str(&format!("{s}\t{e}\t{asn}\tZZ\t{org}\n"));
    }
    text.push_str("127.0.0.0\t127.255.255.255\t0\tNone\tNot routed\n");
    let p = write(dir.path(), "ip2asn-combined.tsv", &text);
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    check_cases(&db);
    assert_eq!(db.metadata().format, "tsv");
}

#[test]
fn comma_separated_files_and_directories_combine() {
    let dir = tempfile::tempdir().unwrap();
    let (v4, v6): (Vec<_>, Vec<_>) = CASES.iter().partition(|c| !c.0.contains(':'));
    let lines = |rows: Vec<&(&str, &str, u32, &str)>| {
        rows.iter()
            .map(|(s, e, a, o)| format!("{s},{e},{a},\"{o}\"\n"))
            .collect::<String>()
    };
    let sub = dir.path().join("asn");
    std::fs::create_dir(&sub).unwrap();
    let p4 = write(&sub, "asn-ipv4.csv", &lines(v4));
    let p6 = write(&sub, "asn-ipv6.csv", &lines(v6));
    write(&sub, "README.md", "not data, ignored in a directory\n");
    write(&sub, ".asn-ipv4.csv.tmp", "garbage,ignored\n");

    let spec = format!("{},{}", p4.display(), p6.display());
    check_cases(&AsnDb::load(&AsnSource::parse(&spec)).unwrap());
    let from_dir = AsnDb::load(&AsnSource::parse(&sub.display().to_string())).unwrap();
    check_cases(&from_dir);
    assert_eq!(from_dir.metadata().files, vec![p4, p6]);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = AsnDb::load(&AsnSource::parse(&empty.display().to_string())).unwrap_err();
    assert_eq!(err.code(), "no_files");
}

#[test]
fn text_ranges_are_consulted_before_mmdb_files() {
    let dir = tempfile::tempdir().unwrap();
    let mmdb = dir.path().join("a.mmdb");
    cases_mmdb(&mmdb, "GeoLite2-ASN", 1);
    let csv = write(
        dir.path(),
        "override.csv",
        "203.0.113.0,203.0.113.255,64999,Override\n",
    );
    let db = db_from(&[&mmdb, &csv], AsnFormat::Auto).unwrap();
    assert_eq!(db.lookup(ip("203.0.113.7")).unwrap().number, 64999);
    assert_eq!(db.lookup(ip("198.51.100.1")).unwrap().number, 64501);
    assert_eq!(db.metadata().format, "mmdb+csv");
}

fn cases_db() -> (tempfile::TempDir, AsnDb) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cases.csv");
    write_cases_csv(&p).unwrap();
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    (dir, db)
}

#[test]
fn enrich_reports_each_lookup_result() {
    let (_dir, db) = cases_db();
    let mut ev = NormalizedEvent {
        source_ip: Some(ip("2001:db8:85a3::8a2e:370:7334")),
        ..Default::default()
    };
    assert_eq!(db.enrich(&mut ev), AsnLookupResult::Hit);
    assert_eq!(ev.source_as_number, Some(64502));
    assert_eq!(
        ev.source_as_organization.as_deref(),
        Some("Example IPv6 Network")
    );

    // A miss clears what an earlier lookup (or an older database) set.
    ev.source_ip = Some(ip("10.20.30.40"));
    assert_eq!(db.enrich(&mut ev), AsnLookupResult::Miss);
    assert_eq!(
        (ev.source_as_number, ev.source_as_organization.clone()),
        (None, None)
    );

    let mut not_ip = NormalizedEvent {
        source_address: Some("127.0.0.0/8".into()),
        ..Default::default()
    };
    assert_eq!(db.enrich(&mut not_ip), AsnLookupResult::InvalidIp);
    assert_eq!(not_ip.source_as_number, None);

    let mut none = NormalizedEvent::default();
    assert_eq!(db.enrich(&mut none), AsnLookupResult::NoIp);

    let labels: Vec<_> = AsnLookupResult::ALL.iter().map(|r| r.as_label()).collect();
    assert_eq!(labels, ["hit", "miss", "invalid_ip", "no_ip"]);
}

#[test]
fn organizations_are_shared_not_copied_per_hit() {
    let (_dir, db) = cases_db();
    let a = db.lookup(ip("192.0.2.1")).unwrap().organization.unwrap();
    let b = db.lookup(ip("192.0.2.200")).unwrap().organization.unwrap();
    assert!(Arc::ptr_eq(&a, &b), "one interned name for both ranges");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.mmdb");
    cases_mmdb(&p, "GeoLite2-ASN", 1);
    let mmdb = db_from(&[&p], AsnFormat::Auto).unwrap();
    let a = mmdb
        .lookup(ip("203.0.113.1"))
        .unwrap()
        .organization
        .unwrap();
    let b = mmdb
        .lookup(ip("203.0.113.2"))
        .unwrap()
        .organization
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn unsorted_duplicate_and_adjacent_ranges_are_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "messy.csv",
        "198.51.100.128,198.51.100.255,64501,CI\n\
         203.0.113.0,203.0.113.255,64500,Corp\n\
         198.51.100.0,198.51.100.127,64501,CI\n\
         203.0.113.0,203.0.113.255,64500,Corp\n",
    );
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    assert_eq!(db.metadata().ranges_v4, 2, "adjacent same-AS halves merge");
    assert_eq!(db.lookup(ip("198.51.100.127")).unwrap().number, 64501);
    assert_eq!(db.lookup(ip("198.51.100.128")).unwrap().number, 64501);
    assert_eq!(db.lookup(ip("203.0.113.255")).unwrap().number, 64500);
    assert_eq!(db.lookup(ip("204.0.0.0")), None);
}

#[test]
fn overlaps_resolve_to_the_narrowest_range_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.csv",
        "# comment\n203.0.113.0,203.0.114.255,64500,Corp\n203.0.113.64,203.0.113.71,64502,Nested\n",
    );
    // Partial overlap (as in the real ip-location-db data), narrower.
    let b = write(
        dir.path(),
        "b.csv",
        "203.0.114.128,203.0.115.10,64501,Other\n",
    );
    let db = db_from(&[&a, &b], AsnFormat::Auto).unwrap();
    let asn = |s: &str| db.lookup(ip(s)).map(|i| i.number);
    assert_eq!(asn("203.0.113.0"), Some(64500));
    assert_eq!(asn("203.0.113.63"), Some(64500));
    assert_eq!(asn("203.0.113.64"), Some(64502));
    assert_eq!(asn("203.0.113.71"), Some(64502));
    assert_eq!(asn("203.0.113.72"), Some(64500));
    assert_eq!(asn("203.0.114.127"), Some(64500));
    assert_eq!(asn("203.0.114.128"), Some(64501));
    assert_eq!(asn("203.0.115.10"), Some(64501));
    assert_eq!(asn("203.0.115.11"), None);
    let m = db.metadata();
    assert_eq!(m.overlaps_resolved, 2);
    let first = m.first_overlap.as_deref().unwrap();
    assert!(
        first.contains("a.csv:3 (AS64502) overlaps") && first.contains("a.csv:2 (AS64500)"),
        "{first}"
    );
    assert_eq!((m.ranges_v4, m.ranges_v6), (4, 0));
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = "203.0.113.0,203.0.113.255,64500,Corp\n";
    let cases = [
        ("start,end\n", "fields"),
        ("203.0.113.0,203.0.113.x,1,Org\n", "not an IP address"),
        ("203.0.113.9,203.0.113.1,1,Org\n", "after its end"),
        ("203.0.113.0,2001:db8::1,1,Org\n", "different IP versions"),
        ("203.0.113.0,203.0.113.9,AS-X,Org\n", "not an AS number"),
        ("203.0.113.0,203.0.113.9,1,\"Org\n", "unterminated"),
        ("203.0.113.0,203.0.113.9,1,Org,extra\n", "found 5"),
    ];
    for (bad, want) in cases {
        let p = write(dir.path(), "bad.csv", &format!("{good}{good}{bad}"));
        let err = db_from(&[&p], AsnFormat::Csv).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.code(), "malformed_line", "{msg}");
        assert!(msg.contains("bad.csv:3:"), "{msg}");
        assert!(msg.contains(want), "{msg} should mention {want}");
    }
    let p = write(dir.path(), "bad.tsv", "1.0.0.0\t1.0.0.255\t13335\tUS\n");
    let msg = db_from(&[&p], AsnFormat::Auto).unwrap_err().to_string();
    assert!(
        msg.contains("bad.tsv:1:") && msg.contains("found 4"),
        "{msg}"
    );

    let p = write(dir.path(), "blank.csv", "\n\n");
    assert_eq!(
        db_from(&[&p], AsnFormat::Auto).unwrap_err().code(),
        "unknown_format"
    );
    let p = write(dir.path(), "zero.csv", "10.0.0.0,10.255.255.255,0,\n");
    assert_eq!(db_from(&[&p], AsnFormat::Auto).unwrap_err().code(), "empty");
    let p = write(dir.path(), "junk.mmdb", "not really a maxmind file");
    assert_eq!(
        db_from(&[&p], AsnFormat::Mmdb).unwrap_err().code(),
        "invalid_mmdb"
    );
    let missing = dir.path().join("missing.csv");
    let err = db_from(&[&missing], AsnFormat::Auto).unwrap_err();
    assert_eq!(err.code(), "io");
    assert!(err.to_string().contains("missing.csv"));
}

#[test]
fn csv_quoting_and_header_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "q.csv",
        "ip_range_start,ip_range_end,autonomous_system_number,autonomous_system_organization\r\n\
         2.26.200.0,2.26.215.255,201907,\"LLC \"\"SPUTNIK\"\"\"\r\n\
         1.0.0.0,1.0.0.255,AS13335,\"Cloudflare, Inc.\"\r\n\
         1.0.4.0,1.0.7.255,38803,\r\n",
    );
    let db = db_from(&[&p], AsnFormat::Auto).unwrap();
    let org = |a: &str| db.lookup(ip(a)).and_then(|i| i.organization);
    assert_eq!(org("2.26.200.1").as_deref(), Some("LLC \"SPUTNIK\""));
    assert_eq!(org("1.0.0.1").as_deref(), Some("Cloudflare, Inc."));
    assert_eq!(db.lookup(ip("1.0.0.1")).unwrap().number, 13335);
    assert_eq!(db.lookup(ip("1.0.5.5")).unwrap().organization, None);
}

/// Replaces a file the way geoipupdate does (new inode via rename) or in
/// place (same inode, new content), and makes sure the mtime moves even on
/// coarse-grained file systems.
fn replace(path: &Path, text: &str, in_place: bool) {
    if in_place {
        std::fs::write(path, text).unwrap();
    } else {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

#[test]
fn reload_swaps_on_change_and_keeps_the_old_database_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("asn.csv");
    write_cases_csv(&p).unwrap();
    let enricher = AsnEnricher::open(AsnSource::parse(&p.display().to_string())).unwrap();
    let asn_of = |e: &AsnEnricher| e.snapshot().lookup(ip("203.0.113.7")).map(|i| i.number);
    assert!(!enricher.reload_if_changed().unwrap());
    assert_eq!(asn_of(&enricher), Some(64500));

    // A batch holding the old snapshot keeps it across the swap.
    let held = enricher.snapshot();
    replace(&p, "203.0.113.0,203.0.113.255,64999,Renumbered\n", false);
    assert!(enricher.reload_if_changed().unwrap());
    assert_eq!(asn_of(&enricher), Some(64999));
    assert_eq!(held.lookup(ip("203.0.113.7")).unwrap().number, 64500);
    assert_eq!(enricher.metadata().ranges_v4, 1);

    // A broken new version: error once, old database keeps serving.
    replace(
        &p,
        "203.0.113.0,203.0.113.255,64998,Ok\nnot,a,range,line\n",
        true,
    );
    let err = enricher.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("asn.csv:2:"), "{err}");
    assert_eq!(asn_of(&enricher), Some(64999));
    assert!(!enricher.reload_if_changed().unwrap(), "reported once");

    // A vanished file is reported and the database kept.
    std::fs::remove_file(&p).unwrap();
    assert_eq!(enricher.reload_if_changed().unwrap_err().code(), "io");
    assert_eq!(asn_of(&enricher), Some(64999));

    // Fixed: picked up.
    replace(&p, "203.0.113.0,203.0.113.255,64997,Fixed\n", false);
    assert!(enricher.reload_if_changed().unwrap());
    assert_eq!(asn_of(&enricher), Some(64997));
    assert_eq!(enricher.reload_counts(), (2, 2));
}

#[test]
fn reload_picks_up_a_replaced_mmdb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("GeoLite2-ASN.mmdb");
    cases_mmdb(&p, "GeoLite2-ASN", 100);
    let enricher = AsnEnricher::open(AsnSource::parse(&p.display().to_string())).unwrap();
    let tmp = dir.path().join("new.mmdb");
    cases_mmdb(&tmp, "GeoLite2-ASN", 200);
    std::fs::rename(&tmp, &p).unwrap();
    assert!(enricher.reload_if_changed().unwrap());
    assert_eq!(enricher.metadata().build_epoch, Some(200));
    let mut ev = NormalizedEvent {
        source_ip: Some(ip("192.0.2.200")),
        ..Default::default()
    };
    assert_eq!(enricher.enrich(&mut ev), AsnLookupResult::Hit);
    assert_eq!(ev.source_as_number, Some(8075));
}

#[tokio::test]
async fn watch_polls_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("asn.csv");
    write_cases_csv(&p).unwrap();
    let enricher = Arc::new(AsnEnricher::open(AsnSource::parse(&p.display().to_string())).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(enricher.clone().watch(Duration::from_millis(20), async {
        let _ = rx.await;
    }));
    replace(&p, "203.0.113.0,203.0.113.255,64999,Renumbered\n", false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while enricher.reload_counts().0 == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        enricher.reload_counts(),
        (1, 0),
        "watch reloaded the changed file"
    );
    assert_eq!(
        enricher
            .snapshot()
            .lookup(ip("203.0.113.7"))
            .map(|i| i.number),
        Some(64999)
    );
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watch stops on shutdown")
        .unwrap();
}

/// Every caller in the bundled samples resolves in the bundled ASN extract
/// to the AS the sample design intends (samples/EXPECTED.md, "Networks").
#[test]
fn sample_callers_resolve_in_the_bundled_extract_as_designed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let db = AsnDb::load(&AsnSource::parse(&root.join("asn").display().to_string())).unwrap();
    let intended: BTreeMap<&str, Option<u32>> = [
        ("12.1.20.45", Some(7018)),
        ("136.226.23.17", Some(62044)),
        ("2003:1a0:4c2f:7b00:1d5e:9a41:2c7:11", Some(3320)),
        ("3.1.112.40", Some(16509)),
        ("3.1.112.41", Some(16509)),
        ("4.210.33.7", Some(8075)),
        ("20.13.97.214", Some(8075)),
        ("13.107.9.20", Some(8068)),
        ("13.69.233.10", Some(8075)),
        ("167.99.148.23", Some(14061)),
        ("185.206.225.67", Some(9009)),
        ("10.20.30.40", None),
        ("jumpbox-01.corp.example.com", None),
    ]
    .into_iter()
    .collect();
    let mut seen = BTreeMap::new();
    let logs = root.join("activity-logs");
    let mut files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 12, "2025-03-01 .. 2025-03-12");
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let body: serde_json::Value = serde_json::from_str(line).unwrap();
            for rec in body["records"].as_array().unwrap() {
                let caller = rec["callerIpAddress"].as_str().unwrap().to_owned();
                *seen.entry(caller).or_insert(0usize) += 1;
            }
        }
    }
    for (caller, n) in &seen {
        let Some(want) = intended.get(caller.as_str()) else {
            panic!("{caller} ({n} records) is not in the sample design");
        };
        let got = caller.parse::<IpAddr>().ok().and_then(|a| db.lookup(a));
        assert_eq!(got.map(|i| i.number), *want, "{caller}");
    }
    for caller in intended.keys() {
        assert!(
            seen.contains_key(*caller),
            "{caller} is designed but unused"
        );
    }
}
