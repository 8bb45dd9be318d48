//! Command-line interface. Flags keep k8s-copycat's names so existing manifests keep working.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, parse};

/// Keeps a backup copy of every container image your Kubernetes cluster runs in a registry you control.
///
/// Configuration comes from built-in defaults, then the YAML file (--config, CONFIG_PATH, default
/// /config/config.yaml), then environment variables, then these flags. See docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "copycat", version, propagate_version = true)]
pub struct Cli {
    /// What to do; without a command copycat runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags shared by every command.
    #[command(flatten)]
    pub flags: GlobalFlags,
}

/// copycat's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the cluster's workloads and mirror every image they use (the default).
    Run,
    /// Mirror one image reference, e.g. `copycat copy docker.io/library/nginx:1.27 registry.example.com/mirror/nginx:1.27`.
    Copy(CopyArgs),
    /// Mirror every image listed in a file (kyma image-syncer format: targetRepoPrefix + images).
    Sync(SyncArgs),
    /// Load the configuration exactly as `run` would, print it with secrets masked, and exit 0;
    /// or list every problem and exit 2.
    CheckConfig,
}

/// Arguments of `copycat copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source image reference (tag, digest or tag@digest).
    pub source: String,
    /// Target image reference.
    pub target: String,
    /// Copy only these platforms (`linux/amd64`, `linux/arm/v7`); repeatable. Default: everything.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
}

/// Arguments of `copycat sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The images file.
    #[arg(long, value_name = "FILE")]
    pub images: PathBuf,
    /// Images copied at the same time.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// Config file (overrides CONFIG_PATH).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for /metrics and the admin endpoints (overrides METRICS_ADDR).
    #[arg(long = "metrics-bind-address", global = true, value_name = "ADDR")]
    pub metrics_bind_address: Option<String>,
    /// Address for /healthz and /readyz (overrides HEALTH_ADDR).
    #[arg(long = "health-probe-bind-address", global = true, value_name = "ADDR")]
    pub health_probe_bind_address: Option<String>,
    /// Use leader election (`--leader-elect=false` to turn it off; overrides LEADER_ELECT).
    #[arg(long = "leader-elect", global = true, value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = flag_bool)]
    pub leader_elect: Option<bool>,
    /// Write nothing anywhere; log what would be mirrored.
    #[arg(long = "dry-run", global = true)]
    pub dry_run: bool,
    /// Make no registry request at all; log the planned mirror tasks.
    #[arg(long = "dry-pull", global = true)]
    pub dry_pull: bool,
    /// Kubeconfig file (default: in-cluster config, then KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error (overrides LOG_LEVEL).
    #[arg(long = "log-level", alias = "zap-log-level", global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

fn flag_bool(s: &str) -> Result<bool, String> {
    parse::boolean(&parse::Input::Scalar(s.to_owned()))
}

impl GlobalFlags {
    /// The flags as configuration overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            metrics_addr: self.metrics_bind_address.clone(),
            health_addr: self.health_probe_bind_address.clone(),
            leader_elect: self.leader_elect,
            dry_run: self.dry_run,
            dry_pull: self.dry_pull,
            kubeconfig: self.kubeconfig.clone(),
            log_level: self.log_level.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("copycat").chain(args.iter().copied()))
    }

    #[test]
    fn k8s_copycat_flags_are_accepted() {
        let cli = parse(&[
            "--metrics-bind-address=:9090",
            "--health-probe-bind-address",
            ":9091",
            "--leader-elect=false",
            "--dry-run",
            "--zap-log-level=debug",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let o = cli.flags.overrides();
        assert_eq!(o.metrics_addr.as_deref(), Some(":9090"));
        assert_eq!(o.health_addr.as_deref(), Some(":9091"));
        assert_eq!(o.leader_elect, Some(false));
        assert!(o.dry_run && !o.dry_pull);
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(parse(&["--leader-elect"]).unwrap().flags.leader_elect, Some(true));
        assert!(parse(&["--leader-elect=perhaps"]).is_err());
    }

    #[test]
    fn commands() {
        assert!(matches!(parse(&["run"]).unwrap().command, Some(Command::Run)));
        assert!(matches!(
            parse(&["check-config", "--config", "x.yaml"]).unwrap().command,
            Some(Command::CheckConfig)
        ));
        let Some(Command::Copy(c)) = parse(&[
            "copy",
            "a",
            "b",
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/arm64",
        ])
        .unwrap()
        .command
        else {
            panic!("not a copy")
        };
        assert_eq!((c.source.as_str(), c.target.as_str(), c.platforms.len()), ("a", "b", 2));
        let Some(Command::Sync(s)) = parse(&["sync", "--images", "f.yaml", "--jobs", "8", "--dry-run"])
            .unwrap()
            .command
        else {
            panic!("not a sync")
        };
        assert_eq!(s.jobs, 8);
        assert!(parse(&["sync"]).is_err());
        assert!(parse(&["copy", "a"]).is_err());
        assert!(parse(&["sync", "--images", "f", "--jobs", "0"]).is_err());
    }
}
