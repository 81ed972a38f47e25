//! ASN lookup cost on the full real data set (issue 7, measurement 4).
//!
//! ```sh
//! scripts/fetch-asn-db.sh
//! taskset -c 1 cargo bench --bench asn -- [--asn-db data/asn] [--mmdb]
//! ```
//!
//! Loads the ip-location-db CSVs (~515k ranges), then measures the mean
//! cost of `AsnDb::lookup` over random IPv4, random IPv6 (in 2000::/3),
//! resolving IPv4 addresses, and the caller stream of the benchmark
//! workload (Zipf-skewed repeats, as real activity logs have), each
//! without and with the per-thread cache of recent lookups, and of
//! `AsnDb::enrich` on that stream. With `--mmdb`, also converts the same ranges to a
//! MaxMind DB file (`target/bench-asn/asn.mmdb`) and measures that reader.

mod workload;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Instant;

use firstseen::decode::{decode_body, DecodeLimits};
use firstseen::enrich::{AsnDb, AsnSource};
use firstseen::event::NormalizedEvent;
use firstseen::normalize::{normalize, RecordContext};

fn time_per<T>(items: &[T], reps: usize, mut f: impl FnMut(&T) -> bool) -> (f64, f64) {
    let mut best = f64::MAX;
    let mut hits = 0;
    for _ in 0..reps {
        hits = 0;
        let start = Instant::now();
        for x in items {
            if f(x) {
                hits += 1;
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / items.len() as f64);
    }
    (best, 100.0 * hits as f64 / items.len() as f64)
}

fn bench_db(db: &AsnDb, label: &str, sets: &[(&str, Vec<IpAddr>)], events: &mut [NormalizedEvent]) {
    for (name, ips) in sets {
        let (ns, hits) = time_per(ips, 3, |ip| black_box(db.lookup_uncached(*ip)).is_some());
        println!(
            "| {label} | lookup without cache, {name} | {ns:.1} | {hits:.1}% | {} |",
            ips.len()
        );
        let (ns, hits) = time_per(ips, 3, |ip| black_box(db.lookup(*ip)).is_some());
        println!(
            "| {label} | lookup with the per-thread cache, {name} | {ns:.1} | {hits:.1}% | {} |",
            ips.len()
        );
        let (ns, hits) = time_per(ips, 3, |ip| {
            black_box(db.classify(Some(*ip), false)) == firstseen::enrich::AsnLookupResult::Hit
        });
        println!(
            "| {label} | classify (hit or miss only, cached), {name} | {ns:.1} | {hits:.1}% | {} |",
            ips.len()
        );
    }
    // enrich: what the pipeline calls per normalized record.
    let mut best = f64::MAX;
    let mut hits = 0;
    for _ in 0..3 {
        hits = 0;
        let start = Instant::now();
        for ev in events.iter_mut() {
            if db.enrich(ev) == firstseen::enrich::AsnLookupResult::Hit {
                hits += 1;
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / events.len() as f64);
    }
    println!(
        "| {label} | enrich (cached), workload records | {best:.1} | {:.1}% | {} |",
        100.0 * hits as f64 / events.len() as f64,
        events.len()
    );
}

fn write_mmdb(
    asn_dir: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    // No IPv4 aliases in the IPv6 tree: the data set has its own ranges in
    // 2001::/32 and 2002::/16, which aliasing would claim.
    let mut w = mmdb_writer::Writer::builder("GeoLite2-ASN")
        .ipv4_aliasing(mmdb_writer::Ipv4Aliasing::Disabled)
        .build();
    for file in ["asn-ipv4.csv", "asn-ipv6.csv"] {
        let text = std::fs::read_to_string(asn_dir.join(file))?;
        for line in text.lines() {
            let mut parts = line.splitn(4, ',');
            let (Some(s), Some(e), Some(asn)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let org = parts.next().unwrap_or("").trim_matches('"');
            let (Ok(s), Ok(e), Ok(asn)) =
                (s.parse::<IpAddr>(), e.parse::<IpAddr>(), asn.parse::<u32>())
            else {
                continue;
            };
            let value = mmdb_writer::Value::map([
                ("autonomous_system_number", mmdb_writer::Value::from(asn)),
                (
                    "autonomous_system_organization",
                    mmdb_writer::Value::from(org),
                ),
            ]);
            w.insert_range(s, e, &value)?;
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, w.to_bytes()?)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!("CPUs allowed: {}", workload::check_one_core());
    let mut asn_dir = PathBuf::from("data/asn");
    let mut mmdb = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--asn-db" => asn_dir = it.next().ok_or("--asn-db DIR")?.into(),
            "--mmdb" => mmdb = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }

    let start = Instant::now();
    let db = AsnDb::load(&AsnSource::parse(&asn_dir.display().to_string()))?;
    let load = start.elapsed();
    let m = db.metadata();
    println!(
        "loaded {} ({}) in {:.0} ms: {} IPv4 ranges, {} IPv6 ranges, {} organizations",
        asn_dir.display(),
        m.format,
        load.as_secs_f64() * 1000.0,
        m.ranges_v4,
        m.ranges_v6,
        m.organizations
    );

    let n = 1_000_000;
    let mut rng = workload::Rng::new(0x5eed_f00d_1234_5678);
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| Ipv4Addr::from(rng.next_u64() as u32).into())
        .collect();
    let v6: Vec<IpAddr> = (0..n)
        .map(|_| {
            let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            Ipv6Addr::from((r >> 3) | (1u128 << 125)).into()
        })
        .collect();
    let hits: Vec<IpAddr> = v4
        .iter()
        .filter(|ip| db.lookup(**ip).is_some())
        .copied()
        .collect();

    // The workload's callers, in record order.
    let cfg = workload::WorkloadConfig {
        records: 300_000,
        ..workload::WorkloadConfig::default()
    };
    let (bodies, stats) = workload::generate(&cfg, &asn_dir)?;
    let mut events: Vec<NormalizedEvent> = Vec::with_capacity(stats.records);
    for body in &bodies {
        for record in decode_body(body, &DecodeLimits::default()).records {
            let (mut ev, _) = normalize(record, RecordContext::default());
            // Keep only what enrich reads (less memory traffic).
            ev.identity = None;
            ev.properties = None;
            ev.original = "".into();
            events.push(ev);
        }
    }
    let stream: Vec<IpAddr> = events.iter().filter_map(|e| e.source_ip).collect();
    let distinct = {
        let mut s = stream.clone();
        s.sort();
        s.dedup();
        s.len()
    };
    println!(
        "workload callers: {} records, {} with an IP, {} distinct IPs",
        events.len(),
        stream.len(),
        distinct
    );
    let sets = vec![
        ("random IPv4", v4),
        ("random IPv6 in 2000::/3", v6),
        ("resolving IPv4", hits),
        ("workload callers (repeats)", stream),
    ];
    println!();
    println!("| database | operation | ns/op | hits | ops |");
    println!("|---|---|---:|---:|---:|");
    bench_db(&db, "CSV ranges", &sets, &mut events);

    if mmdb {
        let path = PathBuf::from("target/bench-asn/asn.mmdb");
        if !path.exists() {
            let start = Instant::now();
            write_mmdb(&asn_dir, &path)?;
            eprintln!(
                "wrote {} in {:.0}s",
                path.display(),
                start.elapsed().as_secs_f64()
            );
        }
        let start = Instant::now();
        let mdb = AsnDb::load(&AsnSource::parse(&path.display().to_string()))?;
        eprintln!(
            "loaded {} in {:.0} ms ({} nodes)",
            path.display(),
            start.elapsed().as_secs_f64() * 1000.0,
            mdb.metadata().mmdb_nodes
        );
        bench_db(&mdb, "mmdb (same ranges)", &sets, &mut events);
    }
    Ok(())
}
