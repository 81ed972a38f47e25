//! Pipeline throughput on one core against a parsing ceiling, on the same
//! bytes in the same run (issue 7, measurement 1).
//!
//! ```sh
//! scripts/fetch-asn-db.sh
//! taskset -c 1 cargo bench --bench pipeline -- --records 200000
//! ```
//!
//! Generates a seeded workload in memory (`benches/workload/mod.rs`), then
//! times each of these once per round for `--reps` rounds (default 5,
//! interleaved so that noise from other processes spreads over all of
//! them) and keeps the best:
//! - **ceiling**: serde_json parsing every body into typed records that
//!   borrow only the fields the seed rule needs (`operationName`,
//!   `resultType`, `resourceId`, `callerIpAddress`, `time`), everything
//!   else skipped;
//! - **decode**, **decode+normalize**, **decode+normalize+enrich**
//!   (`process_body`), and the **full pipeline**: `process_body`, then the
//!   detector and one synced RocksDB commit per 5,000 records, as `replay`
//!   batches them, into a fresh state directory each repetition;
//! - the same full pipeline with the raw-byte prefilter.
//!
//! Prints records/s, MB/s and the ratio to the ceiling. Not a test: it
//! asserts nothing about time. `--profile NAME` runs only the measurement
//! whose name starts with NAME, `--reps` times (for `perf record`).

mod ceiling;
mod workload;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firstseen::decode::{decode_body, DecodeLimits};
use firstseen::engine::{Candidate, Detector};
use firstseen::enrich::{AsnDb, AsnSource};
use firstseen::normalize::{normalize, RecordContext};
use firstseen::pipeline::{process_body, process_body_prefiltered, BodyContext, PipelineStats};
use firstseen::rules::allowlist::Allowlist;
use firstseen::rules::rule_file::load_rules;
use firstseen::store::{BatchWrite, Store};

const BATCH_RECORDS: usize = 5000;

fn ceiling(bodies: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for body in bodies {
        let parsed: ceiling::TypedBody<'_> = serde_json::from_slice(body).expect("generated JSON");
        for r in &parsed.records {
            if r.touched() > 0 {
                n += 1;
            }
        }
    }
    n
}

struct Env {
    detector: Detector,
    asn: AsnDb,
    limits: DecodeLimits,
}

fn decode_only(env: &Env, bodies: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for body in bodies {
        let d = decode_body(body, &env.limits);
        n += black_box(d.records).len();
    }
    n
}

fn decode_normalize(env: &Env, bodies: &[Vec<u8>], enrich: bool) -> usize {
    let mut n = 0;
    for body in bodies {
        let d = decode_body(body, &env.limits);
        for record in d.records {
            let (mut ev, _) = normalize(record, RecordContext::default());
            if enrich {
                env.asn.enrich(&mut ev);
            }
            black_box(&ev);
            n += 1;
        }
    }
    n
}

/// One body through `process_body` or, with `prefilter`,
/// `process_body_prefiltered`.
fn process_one(
    env: &Env,
    body: &[u8],
    prefilter: bool,
    out: &mut Vec<Candidate>,
    stats: &mut PipelineStats,
) {
    let ctx = BodyContext::default();
    let asn = Some(&env.asn);
    if prefilter {
        let p = env.detector.prefilter();
        process_body_prefiltered(body, &ctx, &env.limits, asn, p, out, stats);
    } else {
        process_body(body, &ctx, &env.limits, asn, out, stats);
    }
}

/// Every body through [`process_one`], candidates discarded.
fn process_bodies(env: &Env, bodies: &[Vec<u8>], prefilter: bool) -> PipelineStats {
    let mut stats = PipelineStats::default();
    let mut out = Vec::with_capacity(BATCH_RECORDS);
    for body in bodies {
        process_one(env, body, prefilter, &mut out, &mut stats);
        out.clear();
    }
    stats
}

#[derive(Default, Debug, Clone, Copy)]
struct FullReport {
    /// Processing time, without opening and closing the store.
    elapsed: Duration,
    records: u64,
    matched: u64,
    alerts: u64,
}

/// What `replay` does per body and per batch, minus file I/O and alert
/// printing.
fn full(
    env: &Env,
    bodies: &[Vec<u8>],
    state: &std::path::Path,
    prefilter: bool,
) -> (FullReport, PipelineStats) {
    // Opening (creating) the state directory is not part of the
    // throughput; `report.elapsed` starts after it.
    let store = Store::open(state).expect("state dir");
    let started = Instant::now();
    let mut stats = PipelineStats::default();
    let mut pending: Vec<Candidate> = Vec::with_capacity(BATCH_RECORDS);
    let mut report = FullReport::default();
    let mut batch_start = 0u64;
    let flush = |pending: &mut Vec<Candidate>, report: &mut FullReport| {
        if pending.is_empty() {
            return;
        }
        let mut write = BatchWrite::default();
        let r = env
            .detector
            .evaluate(&store, &mut write, pending, 1_750_000_000_000, false)
            .expect("store reads");
        store.commit(write).expect("commit");
        report.matched += r.matched.iter().sum::<u64>();
        report.alerts += r.alerts.len() as u64;
        black_box(&r.alerts);
        pending.clear();
    };
    for body in bodies {
        process_one(env, body, prefilter, &mut pending, &mut stats);
        // Batches of 5,000 records (not candidates), as `replay` cuts them.
        if stats.records - batch_start >= BATCH_RECORDS as u64 {
            batch_start = stats.records;
            flush(&mut pending, &mut report);
        }
    }
    flush(&mut pending, &mut report);
    report.records = stats.records;
    report.elapsed = started.elapsed();
    (report, stats)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cfg = workload::WorkloadConfig::default();
    let rest = cfg.apply_args(&args);
    let mut reps = 5;
    let mut profile: Option<String> = None;
    let mut asn_dir = PathBuf::from("data/asn");
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().ok_or("--reps N")?.parse()?,
            "--profile" => profile = Some(it.next().ok_or("--profile NAME")?.clone()),
            "--asn-db" => asn_dir = it.next().ok_or("--asn-db DIR")?.into(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }

    let t = Instant::now();
    let (bodies, wstats) = workload::generate(&cfg, &asn_dir)?;
    println!(
        "workload: {wstats} (generated in {:.1}s)",
        t.elapsed().as_secs_f64()
    );
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let records = wstats.records as f64;

    let asn = AsnDb::load(&AsnSource::parse(&asn_dir.display().to_string()))?;
    let rules = load_rules(std::path::Path::new("config/rules"))?;
    let env = Env {
        detector: Detector::new(rules, Allowlist::new(&[])?),
        asn,
        limits: DecodeLimits::default(),
    };
    let scratch = tempfile::Builder::new()
        .prefix("firstseen-bench-")
        .tempdir_in(std::env::temp_dir())?;

    println!(
        "CPUs allowed: {} (one core: run under `taskset -c N`); best of {reps} interleaved rounds; {} bodies, {:.1} MB",
        workload::check_one_core(),
        bodies.len(),
        bytes as f64 / 1e6
    );
    // Every measurement once per round, `reps` rounds, best time kept:
    // interleaving spreads noise from other processes over all of them.
    let rep = std::cell::Cell::new(0);
    let state = |prefilter: bool| {
        rep.set(rep.get() + 1);
        let dir = scratch.path().join(format!("full-{}", rep.get()));
        let out = full(&env, &bodies, &dir, prefilter);
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    type Run<'a> = Box<dyn Fn() -> Option<(FullReport, PipelineStats)> + 'a>;
    let measurements: Vec<(&str, Run<'_>)> = vec![
        (
            "ceiling: serde_json typed, borrowed fields",
            Box::new(|| {
                assert_eq!(ceiling(&bodies), wstats.records);
                None
            }),
        ),
        (
            "decode",
            Box::new(|| {
                assert_eq!(decode_only(&env, &bodies), wstats.records);
                None
            }),
        ),
        (
            "decode + normalize",
            Box::new(|| {
                decode_normalize(&env, &bodies, false);
                None
            }),
        ),
        (
            "decode + normalize + enrich",
            Box::new(|| {
                decode_normalize(&env, &bodies, true);
                None
            }),
        ),
        (
            "process_body (the above + counters)",
            Box::new(|| {
                process_bodies(&env, &bodies, false);
                None
            }),
        ),
        (
            "full: + rules + RocksDB (5k-record batches)",
            Box::new(|| Some(state(false))),
        ),
        (
            "process_body_prefiltered",
            Box::new(|| {
                process_bodies(&env, &bodies, true);
                None
            }),
        ),
        (
            "full with prefilter (what `replay` and `run` do)",
            Box::new(|| Some(state(true))),
        ),
    ];
    if let Some(name) = &profile {
        // For perf: repeat one measurement for `reps` rounds, nothing else.
        let (_, run) = measurements
            .iter()
            .find(|(n, _)| n.starts_with(name.as_str()))
            .ok_or("--profile: no such measurement")?;
        for _ in 0..reps {
            run();
        }
        return Ok(());
    }
    let mut best = vec![Duration::MAX; measurements.len()];
    let mut reports: Vec<Option<(FullReport, PipelineStats)>> = vec![None; measurements.len()];
    for _ in 0..reps {
        for (i, (_, run)) in measurements.iter().enumerate() {
            let start = Instant::now();
            let out = run();
            let t = out
                .as_ref()
                .map_or_else(|| start.elapsed(), |(r, _)| r.elapsed);
            best[i] = best[i].min(t);
            if out.is_some() {
                reports[i] = out;
            }
        }
    }
    let ceiling_t = best[0];
    let rows: Vec<(String, Duration)> = measurements
        .iter()
        .zip(&best)
        .map(|((n, _), t)| (n.to_string(), *t))
        .collect();
    let (report, stats) = reports[5].clone().expect("full ran");
    let (report_p, stats_p) = reports[7].clone().expect("full with prefilter ran");

    println!();
    println!("| measurement | time (s) | records/s | MB/s | × ceiling |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in &rows {
        let s = t.as_secs_f64();
        println!(
            "| {name} | {s:.3} | {:.0} | {:.1} | {:.2} |",
            records / s,
            bytes as f64 / 1e6 / s,
            ceiling_t.as_secs_f64() / s
        );
    }
    println!();
    println!(
        "full pipeline: {} records, {} matched the rule, {} alerts (workload: {} matching, {} distinct terms)",
        report.records, report.matched, report.alerts, wstats.matching_records, wstats.distinct_terms
    );
    println!(
        "with prefilter: {} records, {} matched, {} alerts; counters {} those without it",
        report_p.records,
        report_p.matched,
        report_p.alerts,
        if stats_p == stats {
            "identical to"
        } else {
            "DIFFER from"
        }
    );
    println!(
        "prefilter needles: {:?}",
        env.detector.prefilter().needles()
    );
    // How selective the prefilter is on this workload: records it lets
    // through (or the scanner cannot summarize) are fully normalized.
    let mut scratch = firstseen::prefilter::Scratch::default();
    let (mut full, mut scanned) = (0usize, 0usize);
    for body in &bodies {
        let text = std::str::from_utf8(body)?;
        if let Some(records) = firstseen::scan::scan_envelope(text, 64, 10_000) {
            for r in records {
                scanned += 1;
                if r.needs_full || env.detector.prefilter().may_match(r.text, &mut scratch) {
                    full += 1;
                }
            }
        }
    }
    println!(
        "records taking the full path: {full} of {scanned} ({:.2}%)",
        100.0 * full as f64 / scanned.max(1) as f64
    );
    Ok(())
}
