//! Logging setup: JSON lines by default (for log collectors), text for people.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel};

/// What every level leaves out: kube's client logs each non-2xx answer at ERROR, while copycat logs
/// every failed API call itself, with its context and the right level (a 500 being retried is a
/// warning), so the line would only double (and overstate) each one.
const QUIET: &str = "kube_client::client::builder=off";

/// The filter for `level`. `trace` is copycat's own trace: the dependencies stay at debug, because
/// their trace output dumps requests and responses, credentials included (the AWS SDK prints
/// `GetAuthorizationToken`'s answer, the ECR registry password).
fn directives(level: LogLevel) -> String {
    let level = match level {
        LogLevel::Trace => "debug,copycat=trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    format!("{level},{QUIET}")
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the filter (e.g.
/// `copycat=debug,kube=warn`), without the limits [`directives`] sets.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives(level)));
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The messages that pass the filter made for `level`, out of one event per case below.
    fn passed(level: LogLevel) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(directives(level)))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "copycat::registry", "copycat-trace");
            tracing::debug!(target: "copycat::queue", "copycat-debug");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "aws-trace");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "aws-debug");
            tracing::trace!(target: "hyper_util::client::legacy", "hyper-trace");
            tracing::error!(target: "kube_client::client::builder", "kube-builder-error");
            tracing::error!(target: "kube_client::client", "kube-error");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn trace_is_copycats_own_dependencies_stay_at_debug_and_kubes_request_errors_are_left_out() {
        let trace = passed(LogLevel::Trace);
        for shown in ["copycat-trace", "copycat-debug", "aws-debug", "kube-error"] {
            assert!(trace.contains(shown), "{shown}: {trace}");
        }
        for hidden in ["aws-trace", "hyper-trace", "kube-builder-error"] {
            assert!(!trace.contains(hidden), "{hidden}: {trace}");
        }
        let info = passed(LogLevel::Info);
        assert!(info.contains("kube-error") && !info.contains("copycat-debug"), "{info}");
        assert!(!info.contains("kube-builder-error"), "{info}");
    }
}
