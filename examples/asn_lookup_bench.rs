//! Measures ASN database load time and lookup cost on a real data set.
//!
//! `cargo run --example asn_lookup_bench -- data/asn` (after
//! `scripts/fetch-asn-db.sh`); any `--asn-db` spec works (files, a
//! comma-separated list, a directory, mmdb). Prints load time, table sizes
//! and the mean cost of a lookup over random IPv4, random IPv6 (inside
//! 2000::/3, where the data is) and a hit-heavy mix.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use firstseen::enrich::{AsnDb, AsnSource};

/// xorshift64*: deterministic addresses without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn bench(db: &AsnDb, name: &str, ips: &[IpAddr]) {
    let start = Instant::now();
    let mut hits = 0usize;
    for ip in ips {
        if black_box(db.lookup(*ip)).is_some() {
            hits += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / ips.len() as f64;
    println!(
        "{name:>12}: {ns:8.1} ns/lookup ({} lookups, {:.1}% hits)",
        ips.len(),
        100.0 * hits as f64 / ips.len() as f64
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args()
        .nth(1)
        .ok_or("usage: asn_lookup_bench <asn-db spec>")?;
    let start = Instant::now();
    let db = AsnDb::load(&AsnSource::parse(&spec))?;
    let load = start.elapsed();
    let m = db.metadata();
    println!(
        "loaded {} ({}) in {:.0} ms: {} IPv4 ranges, {} IPv6 ranges, {} organizations, {} mmdb nodes",
        spec,
        m.format,
        load.as_secs_f64() * 1000.0,
        m.ranges_v4,
        m.ranges_v6,
        m.organizations,
        m.mmdb_nodes
    );
    let n = 1_000_000;
    let mut rng = Rng(0x5eed_f00d_1234_5678);
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| Ipv4Addr::from(rng.next() as u32).into())
        .collect();
    let v6: Vec<IpAddr> = (0..n)
        .map(|_| {
            let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            Ipv6Addr::from((r >> 3) | (1u128 << 125)).into()
        })
        .collect();
    // Hit-heavy: the first address of random 1.0.0.0/8..223.0.0.0/8 /24s
    // that resolve, as real callers mostly do.
    let hits: Vec<IpAddr> = v4
        .iter()
        .filter(|ip| db.lookup(**ip).is_some())
        .copied()
        .collect();
    bench(&db, "random v4", &v4);
    bench(&db, "random v6", &v6);
    bench(&db, "v4 hits", &hits);
    Ok(())
}
