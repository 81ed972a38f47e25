//! Writes a seeded benchmark workload (see `benches/workload/mod.rs`) as
//! NDJSON, one Event Hubs body per line, for `firstseen replay`.
//!
//! ```sh
//! scripts/fetch-asn-db.sh
//! cargo run --release --example bench_generate -- \
//!     --out data/bench/activity.ndjson --records 1000000 --terms 10000
//! ```
//!
//! Options: `--out FILE` (required), `--asn-db DIR` (default `data/asn`),
//! and the workload's `--seed --records --terms --callers --vms
//! --extension-share --max-records-per-body`. Prints what it wrote.

#[path = "../benches/workload/mod.rs"]
mod workload;

use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = workload::WorkloadConfig::default();
    let rest = cfg.apply_args(&args);
    let mut out: Option<PathBuf> = None;
    let mut asn_dir = PathBuf::from("data/asn");
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().map(PathBuf::from),
            "--asn-db" => asn_dir = it.next().map(PathBuf::from).ok_or("--asn-db DIR")?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let out = out.ok_or("--out FILE is required")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    let mut result = Ok(());
    let stats = workload::generate_each(&cfg, &asn_dir, |body| {
        if result.is_ok() {
            result = file
                .write_all(body.as_bytes())
                .and_then(|()| file.write_all(b"\n"));
        }
    })?;
    result?;
    file.flush()?;
    println!("{}: {stats}", out.display());
    println!("config: {cfg:?}");
    Ok(())
}
