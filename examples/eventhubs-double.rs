//! Runs the loopback Event Hubs double on its own, so that `firstseen run`
//! (or a benchmark) can consume from it without Azure:
//!
//! ```text
//! cargo run --example eventhubs-double -- --listen 127.0.0.1:5672 --partitions 4 \
//!     [--hub activity-logs] [--rate 200] PATH...
//! ```
//!
//! Each PATH is a file or a directory (read recursively, in name order). A
//! `.json` file is one event body; `.ndjson` / `.jsonl` files hold one body
//! per non-empty line; `.gz` variants of all three are decompressed. Bodies are
//! published round-robin over the partitions, at `--rate` events per second if
//! given (else all at once), then the double serves until Ctrl-C.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use eventhubs_double::{DoubleConfig, EventHubsDouble};

/// Command line of the example.
#[derive(Debug, Parser)]
#[command(
    about = "Loopback Azure Event Hubs double (AMQP 1.0, no TLS) for local runs and benchmarks"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:5672 (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// Number of partitions (ids 0..N-1).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Event hub name.
    #[arg(long, default_value = "activity-logs")]
    hub: String,
    /// Events per second to publish at (all at once if absent).
    #[arg(long)]
    rate: Option<f64>,
    /// Files or directories with event bodies (.json, .ndjson, .jsonl, optionally .gz).
    paths: Vec<PathBuf>,
}

/// How a file's content maps to event bodies.
enum Layout {
    /// The whole file is one body.
    Single,
    /// One body per non-empty line.
    Lines,
}

/// The layout of a file from its name, and whether it is gzipped; `None` for
/// files that hold no event bodies.
fn layout_of(path: &Path) -> Option<(Layout, bool)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(stem) => (stem.to_owned(), true),
        None => (name, false),
    };
    if stem.ends_with(".json") {
        Some((Layout::Single, gz))
    } else if stem.ends_with(".ndjson") || stem.ends_with(".jsonl") {
        Some((Layout::Lines, gz))
    } else {
        None
    }
}

/// Collects event files under `path` in name order.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", path.display()))?;
        entries.sort();
        for entry in entries {
            collect_files(&entry, out)?;
        }
    } else if layout_of(path).is_some() {
        out.push(path.to_owned());
    } else {
        eprintln!(
            "skipping {} (not .json/.ndjson/.jsonl[.gz])",
            path.display()
        );
    }
    Ok(())
}

/// Reads the event bodies of one file.
fn read_bodies(path: &Path) -> Result<Vec<Vec<u8>>> {
    let Some((layout, gz)) = layout_of(path) else {
        return Ok(Vec::new());
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::new(reader);
    match layout {
        Layout::Single => {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(vec![body])
        }
        Layout::Lines => {
            let mut bodies = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                let trimmed = line.trim_ascii();
                if !trimmed.is_empty() {
                    bodies.push(trimmed.to_vec());
                }
            }
            Ok(bodies)
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of events per second, e.g. --rate 200");
        }
    }
    let mut files = Vec::new();
    for path in &args.paths {
        collect_files(path, &mut files)?;
    }

    let double = EventHubsDouble::start(DoubleConfig {
        hub_name: args.hub.clone(),
        partitions: args.partitions,
        listen: args.listen,
    })
    .await?;
    println!("Event Hubs double listening");
    println!("  custom endpoint:           {}", double.endpoint());
    println!(
        "  fully qualified namespace: {}",
        double.fully_qualified_namespace()
    );
    println!("  event hub:                 {}", double.hub_name());
    println!(
        "  partitions:                {}",
        double.partition_ids().join(",")
    );
    println!(
        "  connection string:         {}",
        double.connection_string()
    );
    println!("  (any token or key is accepted; use the custom endpoint with AMQP over TCP)");

    let partitions = double.partition_ids();
    let mut interval = args.rate.map(|rate| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    // A Cell so that the Ctrl-C branch can report progress while the
    // publishing future holds a shared borrow.
    let published = std::cell::Cell::new(0usize);
    let publishing = async {
        for file in &files {
            for body in read_bodies(file)? {
                if let Some(interval) = interval.as_mut() {
                    interval.tick().await;
                }
                let partition = &partitions[published.get() % partitions.len()];
                double.publish(partition, body)?;
                published.set(published.get() + 1);
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = publishing => {
            r?;
            println!(
                "published {} events from {} files; serving until Ctrl-C",
                published.get(),
                files.len()
            );
            tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        }
        r = tokio::signal::ctrl_c() => {
            r.context("cannot wait for Ctrl-C")?;
            println!("interrupted after publishing {} events", published.get());
        }
    }
    let c = double.counters();
    println!(
        "delivered {} transfers ({} accepted) over {} connections",
        c.delivered, c.accepted, c.connections
    );
    double.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
