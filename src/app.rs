//! Runs the parsed command line: loads the configuration once and dispatches to the command.

use std::process::ExitCode;

use crate::cli::{Cli, Command, EXIT_USAGE};
use crate::commands;
use crate::config::{self, Config, ConfigErrors, Purpose};
use crate::telemetry;
use crate::wiring::{self, DaemonParts, WiringError};

/// Runs `cli` and returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let zap_warnings = cli.flags.zap.warnings();
    let (command, overrides) = cli.into_parts();
    let purpose = match command {
        Command::Run(_)
        | Command::CheckConfig(_)
        | Command::Verify(_)
        | Command::Failover(_)
        | Command::NodeConfig(_) => Purpose::Daemon,
        Command::Copy(_) | Command::Sync(_) | Command::PlanTags(_) => Purpose::OneShot,
    };
    let env = |name: &str| std::env::var(name).ok();
    let mut loaded = match config::load(&env, &overrides, purpose) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("copycat: {errors}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    loaded.warnings.extend(zap_warnings);
    if let Command::CheckConfig(_) = command {
        for warning in &loaded.warnings {
            eprintln!("copycat: warning: {warning}");
        }
        print!("{}", loaded.config.to_yaml());
        return ExitCode::SUCCESS;
    }
    let unusable = wiring::ca_file_problems(&loaded.config);
    if !unusable.is_empty() {
        eprintln!("copycat: {}", ConfigErrors(unusable));
        return ExitCode::from(EXIT_USAGE);
    }
    telemetry::init(loaded.config.log_level, loaded.config.log_format);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    match &command {
        Command::Copy(args) => commands::copy(&loaded.config, args).await,
        Command::Sync(args) => commands::sync(&loaded.config, args).await,
        Command::Verify(args) => commands::verify(&loaded.config, args).await,
        Command::Failover(args) => commands::failover(&loaded.config, args).await,
        Command::PlanTags(args) => commands::plan_tags(&loaded.config, args).await,
        Command::NodeConfig(args) => commands::node_config(&loaded.config, args).await,
        Command::Run(_) | Command::CheckConfig(_) => run_daemon(&loaded.config).await,
    }
}

/// Builds the daemon's parts and runs it. No usable Kubernetes configuration exits 2 like any bad
/// setting; other errors (an unusable Docker config, no Kubernetes access) exit 1 with the reason.
async fn run_daemon(config: &Config) -> ExitCode {
    let parts = match DaemonParts::build(config).await {
        Ok(parts) => parts,
        Err(WiringError::Kubeconfig(e)) => {
            eprintln!("copycat: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            tracing::error!(error = %e, "copycat stopped");
            return ExitCode::FAILURE;
        }
    };
    match crate::daemon::run(config, parts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "copycat stopped");
            ExitCode::FAILURE
        }
    }
}
