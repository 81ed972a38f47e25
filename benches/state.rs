//! State scale (issue 7, measurement 3): 10 million distinct terms in the
//! RocksDB term store, with the settings of `StoreTuning` compared.
//!
//! ```sh
//! cargo bench --bench state -- --terms 10000000 --variants default,index-in-cache-partitioned,no-bloom,no-lz4
//! ```
//!
//! Each variant runs in a child process of its own (so RSS is the
//! variant's own) against a fresh state directory under `--dir` (default
//! `target/bench-state`, git-ignored), and does what the detector does
//! with terms:
//! 1. insert `--terms` distinct terms through `Store::put_term`, committed
//!    in synced batches of `--batch` (10,000) terms, in a scrambled order;
//! 2. look up `--lookups` random existing terms (hits), absent terms
//!    (misses: every new term is one; an existing resource name with an
//!    unused AS number, so the key falls inside the stored key ranges) and
//!    hot terms (90% of lookups on 1% of the terms, spread over the key
//!    space); lookups start right after the inserts, with compactions
//!    still running, as in service;
//! 3. run `Store::gc_terms` with a cutoff that expires 4/7 of them, then
//!    compact and look up again.
//!
//! Prints rates, disk size, RSS and GC time per variant. The keys have the
//! shape the seed rule produces (rule id, resource name, AS number; about
//! 100 bytes). Nothing here asserts a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use firstseen::store::{term_key, BatchWrite, Store, StoreTuning, TermState};

const RULE_ID: &str = "5f3c9a7e-2b41-4d8e-9c16-8a0f7d3b2e64";
const DAY_MS: i64 = 86_400_000;
const BASE_MS: i64 = 1_740_787_200_000;

fn variant(name: &str) -> Option<StoreTuning> {
    let d = StoreTuning::default();
    Some(match name {
        // The defaults: index and filter blocks in the table readers.
        "default" => d,
        // Index and filter blocks charged to the 64 MiB block cache.
        "index-in-cache" => StoreTuning {
            cache_index_and_filter_blocks: true,
            ..d
        },
        // The same, partitioned, top levels pinned.
        "index-in-cache-partitioned" => StoreTuning {
            cache_index_and_filter_blocks: true,
            partitioned_index_and_filters: true,
            ..d
        },
        "no-bloom" => StoreTuning {
            bloom_bits_per_key: 0.0,
            ..d
        },
        "no-lz4" => StoreTuning { lz4: false, ..d },
        "no-hash-index" => StoreTuning {
            data_block_hash_index: false,
            ..d
        },
        "cache-256m" => StoreTuning {
            block_cache_bytes: 256 << 20,
            ..d
        },
        "block-16k" => StoreTuning {
            block_size: 16 << 10,
            ..d
        },
        _ => return None,
    })
}

/// Term `k`: a resource name and an AS number, encoded as the engine does
/// (`s` + lower-cased name, `i` + big-endian AS).
fn key(k: u64) -> Vec<u8> {
    key_with_asn(k, 1000 + (k.wrapping_mul(2_654_435_761) % 60_000) as i64)
}

/// A term that does not exist: term `k`'s resource name with an AS number
/// no stored term has (stored ones are 1000..61000). It sorts right beside
/// term `k`, inside every SST file's key range, so only the Bloom filter
/// (or a data-block read) can tell it is absent, as for a real new term.
fn absent_key(k: u64) -> Vec<u8> {
    key_with_asn(k, 100_000 + (k % 1000) as i64)
}

fn key_with_asn(k: u64, asn: i64) -> Vec<u8> {
    const EXT: &[&str] = &[
        "customscriptextension",
        "azuremonitorlinuxagent",
        "runcommandlinux",
        "mde.linux",
    ];
    let name = format!("vm-ext-{:08}/extensions/{}", k / 4, EXT[(k % 4) as usize]);
    let mut s = Vec::with_capacity(name.len() + 1);
    s.push(b's');
    s.extend_from_slice(name.as_bytes());
    let mut i = vec![b'i'];
    i.extend_from_slice(&asn.to_be_bytes());
    term_key(RULE_ID, &[&s, &i])
}

/// Scrambles 0..n into a pseudo-random order (n coprime to the
/// multiplier), so inserts and lookups do not walk the key order.
fn scramble(i: u64, n: u64) -> u64 {
    let mut m = 0x9e37_79b9_7f4a_7c15 % n;
    while gcd(m, n) != 1 {
        m += 1;
    }
    ((u128::from(i) * u128::from(m)) % u128::from(n)) as u64
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                total += if m.is_dir() {
                    dir_bytes(&e.path())
                } else {
                    m.len()
                };
            }
        }
    }
    total
}

/// (VmRSS, VmHWM) in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn lookups(
    store: &Store,
    keys: impl Iterator<Item = u64>,
    make_key: fn(u64) -> Vec<u8>,
    expect: bool,
) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    let mut found = 0u64;
    for k in keys {
        if store.get_term(&make_key(k)).expect("read").is_some() {
            found += 1;
        }
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if expect {
        assert_eq!(found, n, "every looked-up term exists");
    }
    (rate, found)
}

/// One variant, in this process; prints `key=value` lines for the parent.
fn child(name: &str, dir: &Path, terms: u64, batch: u64, lookups_n: u64) {
    let tuning = variant(name).expect("known variant");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("state dir");
    let store = Store::open_tuned(dir, &tuning).expect("open");
    let rss0 = rss().0;

    // 1. Insert: last-seen spread over 7 days so GC can expire half.
    let start = Instant::now();
    let mut w = BatchWrite::default();
    for i in 0..terms {
        let k = scramble(i, terms);
        let t = BASE_MS + (k % 7) as i64 * DAY_MS + (k % 1000) as i64;
        store.put_term(
            &mut w,
            &key(k),
            TermState {
                last_seen_ms: t,
                first_seen_ms: t,
            },
        );
        if w.terms() as u64 >= batch {
            store.commit(std::mem::take(&mut w)).expect("commit");
        }
    }
    store.commit(w).expect("commit");
    let insert_s = start.elapsed().as_secs_f64();
    println!("insert_rate={:.0}", terms as f64 / insert_s);
    println!("insert_s={insert_s:.1}");
    println!("disk_after_insert={}", dir_bytes(dir));
    println!("rss_after_insert={}", rss().0);
    println!("rss_start={rss0}");

    // 2. Lookups.
    let mut rng = Rng(7);
    let (hit, _) = lookups(&store, (0..lookups_n).map(|_| rng.below(terms)), key, true);
    println!("lookup_hit_rate={hit:.0}");
    let (miss, found) = lookups(
        &store,
        (0..lookups_n).map(|_| rng.below(terms)),
        absent_key,
        false,
    );
    println!("lookup_miss_rate={miss:.0}");
    println!("miss_found={found}");
    // Zipf-like hot set: 90% of lookups on 1% of the terms, spread over
    // the key space (a contiguous hot range would sit in a few blocks).
    let hot = (terms / 100).max(1);
    let hot_terms: Vec<u64> = (0..lookups_n)
        .map(|_| {
            if rng.below(10) < 9 {
                scramble(rng.below(hot), terms)
            } else {
                rng.below(terms)
            }
        })
        .collect();
    let (hot_rate, _) = lookups(&store, hot_terms.into_iter(), key, true);
    println!("lookup_hot_rate={hot_rate:.0}");
    // The detector's per-term work: read, then write the new last-seen.
    let start = Instant::now();
    let mut w = BatchWrite::default();
    for _ in 0..lookups_n {
        let k = rng.below(terms);
        let key = key(k);
        let prev = store.get_term(&key).expect("read").expect("exists");
        store.put_term(
            &mut w,
            &key,
            TermState {
                last_seen_ms: prev.last_seen_ms + 1,
                first_seen_ms: prev.first_seen_ms,
            },
        );
        if w.terms() as u64 >= batch {
            store.commit(std::mem::take(&mut w)).expect("commit");
        }
    }
    store.commit(w).expect("commit");
    println!(
        "update_rate={:.0}",
        lookups_n as f64 / start.elapsed().as_secs_f64()
    );
    println!("rss_after_lookups={}", rss().0);

    // 3. GC half, compact, look up again.
    let start = Instant::now();
    let expired = store
        .gc_terms(BASE_MS + 3 * DAY_MS + DAY_MS / 2)
        .expect("gc");
    println!("gc_s={:.1}", start.elapsed().as_secs_f64());
    println!("gc_expired={expired}");
    let start = Instant::now();
    store.compact_terms();
    println!("compact_s={:.1}", start.elapsed().as_secs_f64());
    println!("disk_after_gc_compact={}", dir_bytes(dir));
    let (miss2, _) = lookups(
        &store,
        (0..lookups_n).map(|_| rng.below(terms)),
        absent_key,
        false,
    );
    println!("lookup_miss_rate_compacted={miss2:.0}");
    let (hit2, _) = lookups(
        &store,
        (0..lookups_n)
            .map(|_| rng.below(terms))
            .filter(|k| k % 7 >= 4),
        key,
        true,
    );
    println!("lookup_hit_rate_compacted={hit2:.0}");
    let (rss_now, hwm) = rss();
    println!("rss_end={rss_now}");
    println!("rss_peak={hwm}");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut terms: u64 = 10_000_000;
    let mut batch: u64 = 10_000;
    let mut lookups_n: u64 = 1_000_000;
    let mut dir = PathBuf::from("target/bench-state");
    let mut variants = "default,index-in-cache-partitioned,no-bloom,no-lz4".to_string();
    let mut child_variant: Option<String> = None;
    let mut it = args.iter();
    let num = |v: Option<&String>| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(v.ok_or("missing value")?.replace('_', "").parse()?)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--terms" => terms = num(it.next())?,
            "--batch" => batch = num(it.next())?,
            "--lookups" => lookups_n = num(it.next())?,
            "--dir" => dir = it.next().ok_or("--dir DIR")?.into(),
            "--variants" => variants = it.next().ok_or("--variants LIST")?.clone(),
            "--child" => child_variant = it.next().cloned(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if let Some(name) = child_variant {
        child(&name, &dir.join(&name), terms, batch, lookups_n);
        return Ok(());
    }

    println!(
        "state scale: {terms} distinct terms, batches of {batch}, {lookups_n} lookups per kind, dir {}",
        dir.display()
    );
    let mut results: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for name in variants.split(',') {
        if variant(name).is_none() {
            return Err(format!("unknown variant {name:?}").into());
        }
        let out = Command::new(std::env::current_exe()?)
            .args([
                "--child",
                name,
                "--terms",
                &terms.to_string(),
                "--batch",
                &batch.to_string(),
                "--lookups",
                &lookups_n.to_string(),
                "--dir",
                &dir.display().to_string(),
            ])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "variant {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let kv: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        eprintln!("{name}: {kv:?}");
        results.push((name.to_string(), kv));
    }

    /// (row label, child's key, how to print the value)
    type Row = (&'static str, &'static str, fn(f64) -> String);
    let rows: &[Row] = &[
        ("insert (terms/s, synced 10k batches)", "insert_rate", |v| {
            format!("{v:.0}")
        }),
        ("lookup, existing term (/s)", "lookup_hit_rate", |v| {
            format!("{v:.0}")
        }),
        ("lookup, absent term (/s)", "lookup_miss_rate", |v| {
            format!("{v:.0}")
        }),
        ("lookup, 90% on 1% hot terms (/s)", "lookup_hot_rate", |v| {
            format!("{v:.0}")
        }),
        ("read + update existing term (/s)", "update_rate", |v| {
            format!("{v:.0}")
        }),
        ("disk after insert (MB)", "disk_after_insert", |v| {
            format!("{:.0}", v / 1e6)
        }),
        ("RSS after insert (MB)", "rss_after_insert", |v| {
            format!("{:.0}", v / 1e6)
        }),
        ("RSS after lookups (MB)", "rss_after_lookups", |v| {
            format!("{:.0}", v / 1e6)
        }),
        ("peak RSS (MB)", "rss_peak", |v| format!("{:.0}", v / 1e6)),
        ("GC: scan all, delete 4/7 (s)", "gc_s", |v| {
            format!("{v:.1}")
        }),
        ("terms expired by GC", "gc_expired", |v| format!("{v:.0}")),
        ("compaction after GC (s)", "compact_s", |v| {
            format!("{v:.1}")
        }),
        (
            "disk after GC + compaction (MB)",
            "disk_after_gc_compact",
            |v| format!("{:.0}", v / 1e6),
        ),
        (
            "lookup absent, compacted (/s)",
            "lookup_miss_rate_compacted",
            |v| format!("{v:.0}"),
        ),
        (
            "lookup existing, compacted (/s)",
            "lookup_hit_rate_compacted",
            |v| format!("{v:.0}"),
        ),
    ];
    println!();
    print!("| |");
    for (name, _) in &results {
        print!(" {name} |");
    }
    println!();
    print!("|---|");
    for _ in &results {
        print!("---:|");
    }
    println!();
    for (label, key, fmt) in rows {
        print!("| {label} |");
        for (_, kv) in &results {
            let v = kv
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.parse::<f64>().ok());
            print!(" {} |", v.map_or("-".to_string(), fmt));
        }
        println!();
    }
    Ok(())
}
