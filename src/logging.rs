//! Log setup for `run`: JSON lines for production (log shippers), readable
//! text on a terminal. The level comes from `RUST_LOG` when set, else from
//! `[log] level`.
//!
//! Secrets never reach a log line: the configuration holds only the names
//! of the environment variables and files that hold them, and the code that
//! reads a secret never logs its value (tests/run_eventhubs.rs checks a
//! whole run's log for the webhook secret and the connection string).

use std::io::IsTerminal;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber.
///
/// # Errors
/// An invalid level filter, or a subscriber already installed.
pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v)?,
        _ => tracing_subscriber::EnvFilter::try_new(&cfg.level)?,
    };
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        // Colours only on a terminal, not in redirected files.
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
