//! The ceiling for `replay` as a whole process (BENCHMARKS.md, "Replay"):
//! reads an NDJSON file of Event Hubs bodies line by line, as `replay`
//! streams it, and parses each body with serde_json into typed records
//! that borrow only the fields the seed rule needs. Prints records, bytes
//! and the time; run it under `/usr/bin/time -v` next to `firstseen
//! replay` on the same file (`scripts/bench-replay.sh` does).

use std::io::BufRead;
use std::time::Instant;

#[path = "../benches/ceiling/mod.rs"]
mod ceiling;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: bench_ceiling FILE.ndjson")?;
    let start = Instant::now();
    let file = std::fs::File::open(&path)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let (mut records, mut bytes, mut touched) = (0u64, 0u64, 0usize);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        bytes += line.len() as u64;
        let body = line.trim_ascii();
        if body.is_empty() {
            continue;
        }
        let parsed: ceiling::TypedBody<'_> = serde_json::from_slice(body)?;
        for r in &parsed.records {
            records += 1;
            touched += r.touched();
        }
    }
    let s = start.elapsed().as_secs_f64();
    eprintln!(
        "ceiling: {records} records, {:.1} MB in {s:.2} s = {:.0} records/s, {:.1} MB/s ({touched} field bytes)",
        bytes as f64 / 1e6,
        records as f64 / s,
        bytes as f64 / 1e6 / s
    );
    Ok(())
}
