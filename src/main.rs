//! The `firstseen` command line. Only this file knows the CLI; everything
//! else is library code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use firstseen::config::Config;
use firstseen::pipeline::{process_body, BodyContext, PipelineStats};
use firstseen::replay::{load_asn, replay, ReplayOptions};
use firstseen::source::file::{bodies, expand_paths, read_file};
use firstseen::store::Store;

/// Streaming New Terms detector for Azure Activity Logs: VM extension
/// operations from networks not seen before.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ECS document of every record in the given bodies (NDJSON).
    Normalize {
        /// ASN database (mmdb, CSV/TSV ranges, comma-separated list or directory).
        #[arg(long)]
        asn_db: Option<String>,
        /// Files or directories of Event Hubs bodies; `-` for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the rules over files of Event Hubs bodies and print alerts (NDJSON).
    Replay {
        /// Configuration file (flags below override it; optional).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A rule file or a directory of rule files.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// ASN database.
        #[arg(long)]
        asn_db: Option<String>,
        /// State directory (RocksDB); default: a fresh temporary one.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Update state without emitting alerts (warm-up from archives).
        #[arg(long)]
        learn: bool,
        /// Do not show progress on stderr.
        #[arg(long)]
        quiet: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The service: consume Activity Logs from Event Hubs, alert on new
    /// terms, deliver alerts to the configured sinks. Runs until SIGTERM.
    Run {
        /// Configuration file.
        #[arg(long, short, env = "FIRSTSEEN_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 when a running firstseen answers `/readyz` (or `/healthz`
    /// with --live) with 200: a container health check without curl.
    Healthcheck {
        /// The operations server address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        addr: std::net::SocketAddr,
        /// Check liveness instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// Inspect and manage alerts in a state directory.
    Alerts {
        /// State directory (RocksDB).
        #[arg(long)]
        state: PathBuf,
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// Validate the configuration, rules and ASN database; print the
    /// effective configuration.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// List pending (outbox) and dead-lettered alerts.
    List,
    /// Print one alert document (pending or dead-lettered) by id.
    Show { id: String },
    /// Move dead-lettered alerts back to the outbox (all, or those given).
    Requeue { ids: Vec<String> },
    /// List the undecodable event bodies kept for inspection.
    Events,
    /// Delete every dead-lettered alert (or, with --events, every
    /// undecodable event body).
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        /// Purge the undecodable event bodies instead of the dead letters.
        #[arg(long)]
        events: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // One-shot commands: terse text logs; `run` sets up its own.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(code) => code,
        // `firstseen normalize … | head`: the reader left; not an error.
        Err(e)
            if e.chain().any(|c| {
                let kind = c
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| c.downcast_ref::<serde_json::Error>()?.io_error_kind());
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("firstseen: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause added only when the text so far
/// does not already say it (our error types put their cause in their own
/// message, and `{:#}` would print it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Normalize { asn_db, paths } => normalize(asn_db, &paths),
        Command::Replay {
            config,
            rules,
            asn_db,
            state,
            learn,
            quiet,
            paths,
        } => {
            let mut config = Config::load(config.as_deref(), env_vars())?;
            if let Some(r) = rules {
                config.rules.path = r;
            }
            if asn_db.is_some() {
                config.asn.database = asn_db;
            }
            let opts = ReplayOptions {
                config,
                state_dir: state,
                learn,
                paths,
                progress: !quiet,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut err = std::io::stderr();
            let summary = replay(&opts, &mut out, &mut err)?;
            out.flush()?;
            eprintln!("{summary}");
            // 3: finished, but some bodies or files could not be read.
            Ok(
                if summary.stats.decode_error_total() > 0 || summary.unreadable_files > 0 {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        Command::Run { config } => {
            let config = Config::load(Some(&config), env_vars())?;
            firstseen::logging::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                tokio::spawn(firstseen::app::shutdown_on_signals(shutdown.clone()));
                firstseen::app::run(config, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { addr, live } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let path = if live { "/healthz" } else { "/readyz" };
            runtime.block_on(firstseen::server::probe(
                addr,
                path,
                std::time::Duration::from_secs(3),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts { state, action } => alerts(&state, action),
        Command::CheckConfig { config } => check_config(config.as_deref()),
    }
}

/// `check-config`: everything `run` would check before consuming, without
/// connecting anywhere: config, rules and allowlist, the ASN database, the
/// sinks (secrets resolved, files openable), the Event Hubs credentials
/// (resolved, not used), the state directory. Prints the effective
/// configuration (secrets as where they come from) and every problem;
/// exits 1 if there is one.
fn check_config(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path, env_vars())?;
    let mut problems: Vec<String> = Vec::new();
    match firstseen::engine::load_detection(
        &config.rules.path,
        &config.allowlist,
        firstseen::replay::now_ms(),
    ) {
        Ok((detector, warnings)) => {
            for r in detector.rules() {
                eprintln!(
                    "rule {} ({}): new terms {:?}, window {}",
                    r.rule_id,
                    r.name,
                    r.new_terms_fields,
                    humantime::format_duration(r.history_window)
                );
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    match load_asn(&config) {
        Ok(Some(db)) => {
            let m = db.metadata();
            eprintln!("asn database: {m}");
        }
        Ok(None) => eprintln!(
            "warning: no ASN database ([asn] database): source.as.number stays empty, rules on it cannot match"
        ),
        Err(e) => problems.push(format!("asn.database: {}", error_chain(&e))),
    }
    if let Err(e) = firstseen::sink::build_sinks(&config.sinks) {
        problems.push(e.to_string());
    }
    match &config.eventhubs {
        Some(eh) => {
            if let Err(e) = eh.check_credentials() {
                problems.push(e.to_string());
            }
        }
        None => eprintln!(
            "warning: no [eventhubs] section: `run` cannot start (replay and normalize work)"
        ),
    }
    if let Err(e) = check_writable_dir(&config.state.dir) {
        problems.push(format!("state.dir: {e}"));
    }
    println!(
        "{}",
        toml::to_string_pretty(&config).context("rendering the configuration")?
    );
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(if problems.is_empty() {
        eprintln!("configuration ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `dir` exists and accepts a new file, or can be created (its nearest
/// existing ancestor is a writable directory). Leaves nothing behind.
fn check_writable_dir(dir: &std::path::Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    tempfile::tempfile_in(existing)
        .map(drop)
        .map_err(|e| format!("{}: cannot create files here: {e}", existing.display()))
}

fn normalize(asn_db: Option<String>, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut config = Config::default();
    config.asn.database = asn_db;
    let asn = load_asn(&config)?;
    let limits = config.decode.limits();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stats = PipelineStats::default();
    let mut candidates = Vec::new();
    for file in expand_paths(paths)? {
        let content = read_file(&file)?;
        for body in bodies(&file, &content) {
            candidates.clear();
            let errs = process_body(
                body.bytes,
                &BodyContext::default(),
                &limits,
                asn.as_ref(),
                &mut candidates,
                &mut stats,
            );
            for e in errs {
                let at = body.line.map(|l| format!(":{l}")).unwrap_or_default();
                eprintln!("{}{at}: decode error: {e}", file.display());
            }
            for c in &candidates {
                serde_json::to_writer(&mut out, &firstseen::normalize::to_ecs_json(&c.event))?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(if stats.decode_error_total() > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn alerts(state: &std::path::Path, action: AlertsAction) -> anyhow::Result<ExitCode> {
    if !state.join("CURRENT").exists() {
        anyhow::bail!("{}: no firstseen state here", state.display());
    }
    // Inspecting works while the service runs; changing needs it stopped
    // (RocksDB allows one writer per directory).
    let read_only = matches!(
        action,
        AlertsAction::List | AlertsAction::Show { .. } | AlertsAction::Events
    );
    let store = if read_only {
        Store::open_read_only(state)?
    } else {
        Store::open(state).map_err(|e| {
            if e.to_string().to_ascii_lowercase().contains("lock") {
                anyhow::anyhow!(
                    "{}: the state directory is in use (is `firstseen run` running on it?); stop the service to requeue or purge",
                    state.display()
                )
            } else {
                anyhow::Error::new(e)
            }
        })?
    };
    match action {
        AlertsAction::List => {
            let pending = store.outbox_all()?;
            let dead = store.dead_letters()?;
            let undecodable = store.dead_events()?.len();
            println!(
                "{} pending, {} dead-lettered, {undecodable} undecodable event bodies{}",
                pending.len(),
                dead.len(),
                if undecodable > 0 {
                    " (see `alerts events`)"
                } else {
                    ""
                }
            );
            for (sink, row) in &pending {
                println!(
                    "pending  {sink}  {}  created {}",
                    row.id,
                    firstseen::normalize::format_timestamp(row.created_at_ms)
                );
            }
            for d in &dead {
                println!(
                    "dead     {}  {}  reason {}  status {}  attempts {}  {}",
                    d.sink,
                    d.alert.id,
                    d.reason,
                    d.status.map_or("-".into(), |s| s.to_string()),
                    d.attempts,
                    d.response_excerpt.chars().take(80).collect::<String>()
                );
            }
        }
        AlertsAction::Show { id } => {
            // The full id, or a prefix of it that names one alert.
            let mut found: Vec<_> = store
                .outbox_all()?
                .into_iter()
                .map(|(_, row)| row)
                .chain(store.dead_letters()?.into_iter().map(|d| d.alert))
                .filter(|r| r.id.starts_with(id.as_str()))
                .collect();
            found.sort_by(|a, b| a.id.cmp(&b.id));
            found.dedup_by(|a, b| a.id == b.id);
            match found.as_slice() {
                [] => anyhow::bail!("no alert with id {id}"),
                [row] => println!("{}", row.body),
                more => anyhow::bail!(
                    "{} alerts have ids starting with {id}; give more of the id",
                    more.len()
                ),
            }
        }
        AlertsAction::Events => {
            for e in store.dead_events()? {
                println!(
                    "{}  {}  partition {}  sequence {}  {}  {}  {}",
                    firstseen::normalize::format_timestamp(e.recorded_at_ms),
                    e.source,
                    e.partition.as_deref().unwrap_or("-"),
                    e.sequence_number.map_or("-".into(), |n| n.to_string()),
                    e.error_kind,
                    e.detail,
                    e.body_excerpt
                        .chars()
                        .take(120)
                        .collect::<String>()
                        .escape_debug()
                );
            }
        }
        AlertsAction::Requeue { ids } => {
            let mut n = 0;
            for d in store.dead_letters()? {
                if (ids.is_empty() || ids.contains(&d.alert.id))
                    && store.requeue_dead_letter(
                        &d.sink,
                        d.alert.seq,
                        firstseen::replay::now_ms(),
                    )?
                {
                    n += 1;
                }
            }
            println!("requeued {n} alerts");
        }
        AlertsAction::Purge { yes, events } => {
            let what = if events {
                "undecodable event bodies"
            } else {
                "dead-lettered alerts"
            };
            if !yes {
                anyhow::bail!("purge deletes every {what} for good; run again with --yes");
            }
            let n = if events {
                store.purge_dead_events()?
            } else {
                store.purge_dead_letters()?
            };
            println!("purged {n} {what}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
