//! Logging setup: JSON lines by default (for log collectors), text for people.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber. `RUST_LOG`, when set, refines the filter (e.g. `copycat=debug,kube=warn`).
pub fn init(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        // No module path: flattened, it would be a second `target` key after the mirror target's
        // (outcome lines have a `target` field), and most JSON readers keep the last one.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_target(false)
            .try_init(),
        // Colours only on a terminal: in a container, text lines go to log files and collectors,
        // where escape codes are noise (and break `grep target=…`).
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    // A second init (tests, repeated commands) keeps the first subscriber.
    drop(result);
}
