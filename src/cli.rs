//! Command-line interface. Flags keep k8s-copycat's names, and Go's flag syntax is accepted
//! (`-leader-elect=false`, `--dry-run=true`), so existing manifests and chart values keep working.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{Overrides, parse};
pub use crate::node_config::Runtime;
use crate::referrer_policy::ReferrersMode;

/// Exit status for usage and configuration errors (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;

/// Keeps a backup copy of every container image your Kubernetes cluster runs in a registry you control.
///
/// Configuration comes from built-in defaults, then the YAML file (--config, CONFIG_PATH, default
/// /config/config.yaml), then environment variables, then these flags. See docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "copycat", version, propagate_version = true, args_override_self = true)]
pub struct Cli {
    /// What to do; without a command copycat runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags shared by every command.
    #[command(flatten)]
    pub flags: GlobalFlags,
    /// The daemon's flags without a command, as k8s-copycat's manifests pass them.
    #[command(flatten)]
    pub daemon: DaemonFlags,
}

impl Cli {
    /// Parses the process's arguments, Go-style flags included (see [`go_style_args`]); on a usage
    /// error prints it and exits 2.
    pub fn parse_go_style() -> Cli {
        let args = go_style_args(std::env::args_os().collect(), &separate_value_flags(&Cli::command()));
        Cli::parse_from(args).checked().unwrap_or_else(|e| e.exit())
    }

    /// Refuses daemon flags given before a one-shot command (`copycat --kubeconfig K copy …`),
    /// which would otherwise be accepted and ignored.
    pub fn checked(self) -> Result<Cli, clap::Error> {
        match &self.command {
            Some(
                Command::Copy(_)
                | Command::Sync(_)
                | Command::Verify(_)
                | Command::Failover(_)
                | Command::NodeConfig(_)
                | Command::PlanTags(_),
            ) if self.daemon != DaemonFlags::default() => Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--metrics-bind-address, --health-probe-bind-address, --leader-elect and \
                     --kubeconfig belong to the daemon (`run`) and `check-config`, not to `copy`, `sync`, \
                     `plan-tags`, `verify`, `failover` or `node-config` (`verify`, `failover` and `node-config` \
                     take their own --kubeconfig FILE)",
            )),
            _ => Ok(self),
        }
    }

    /// The command to run (`run` when none is given) and every flag as configuration overrides.
    pub fn into_parts(self) -> (Command, Overrides) {
        let mut command = self.command.unwrap_or(Command::Run(self.daemon));
        if let Command::Failover(args) = &mut command {
            // Only the command line makes a failover a dry run: `dryRun` in the daemon's
            // configuration is about the daemon's copies, not about this operator's act.
            args.dry_run = self.flags.dry_run == Some(true);
        }
        let daemon = match &command {
            Command::Run(daemon) | Command::CheckConfig(daemon) => Some(daemon.clone()),
            Command::Verify(VerifyArgs { kubeconfig, .. })
            | Command::Failover(FailoverArgs { kubeconfig, .. })
            | Command::NodeConfig(NodeConfigArgs { kubeconfig, .. }) => Some(DaemonFlags {
                kubeconfig: kubeconfig.clone(),
                ..DaemonFlags::default()
            }),
            Command::Copy(_) | Command::Sync(_) | Command::PlanTags(_) => None,
        };
        let overrides = self.flags.overrides(daemon.as_ref());
        (command, overrides)
    }
}

/// Rewrites Go's flag syntax into the one clap reads: a single-dash long flag (`-leader-elect=false`,
/// `-metrics-bind-address :8080`) gets a second dash. Single-letter flags (`-h`, `-V`), the value
/// after a flag in `separate_value_flags` (`--config FILE`), and everything after `--` stay as they
/// are. `=true|false` on boolean flags needs no rewrite: clap's definitions accept it.
pub fn go_style_args(args: Vec<OsString>, separate_value_flags: &[String]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    out.extend(args.next()); // the program name
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(args);
            break;
        }
        let name_len = text.find('=').unwrap_or(text.len());
        let single_dash_long = text.len() > 2
            && text.starts_with('-')
            && text[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            && name_len > 2;
        let long = if single_dash_long {
            format!("-{text}")
        } else {
            text.to_owned()
        };
        let needs_value = long
            .strip_prefix("--")
            .is_some_and(|name| separate_value_flags.iter().any(|f| f == name));
        out.push(long.into());
        if needs_value {
            out.extend(args.next());
        }
    }
    out
}

/// The long flags of `command` and its subcommands that take their value as the next argument.
pub fn separate_value_flags(command: &clap::Command) -> Vec<String> {
    let mut command = command.clone();
    command.build();
    let mut out = Vec::new();
    let mut pending = vec![&command];
    while let Some(cmd) = pending.pop() {
        for arg in cmd.get_arguments() {
            if !arg.get_action().takes_values() || arg.is_require_equals_set() {
                continue;
            }
            let names = arg
                .get_long()
                .into_iter()
                .chain(arg.get_all_aliases().into_iter().flatten());
            for name in names {
                if !out.iter().any(|f| f == name) {
                    out.push(name.to_owned());
                }
            }
        }
        pending.extend(cmd.get_subcommands());
    }
    out
}

/// copycat's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the cluster's workloads and mirror every image they use (the default).
    Run(DaemonFlags),
    /// Mirror one image reference, e.g. `copycat copy docker.io/library/nginx:1.27 registry.example.com/mirror/nginx:1.27`;
    /// with `--pull-through`, read it through a pull-through cache instead, e.g. `copycat copy --pull-through
    /// docker.io/library/nginx:1.27 harbor.example.com/dockerhub-proxy`.
    Copy(CopyArgs),
    /// Mirror every image listed in a file (kyma image-syncer format: targetRepoPrefix + images); with
    /// `--pull-through`, targetRepoPrefix is a pull-through cache the images are read through.
    Sync(SyncArgs),
    /// Load the configuration exactly as `run` would, print it with secrets masked, and exit 0;
    /// or list every problem and exit 2.
    CheckConfig(DaemonFlags),
    /// Check that the backup is complete: list the cluster once, plan as the daemon does, and check
    /// every planned target at the target registry. Exit 0 only when every image in scope is
    /// verified, 1 otherwise, 2 for configuration errors.
    Verify(VerifyArgs),
    /// Break glass: switch workloads to their verified backups in the mirror (`--to-mirror`), or
    /// back (`--revert`), with your own kubeconfig. Exit 0 when everything in scope was switched or
    /// reverted, 1 when something was left as it is (listed), 2 for usage and configuration errors.
    Failover(FailoverArgs),
    /// Write node runtime configuration (containerd `hosts.toml` files or a CRI-O `registries.conf`
    /// drop-in) that lets nodes pull each source registry's images from the mirror when the upstream
    /// fails (or first). Exit 0 when every registry was written, 1 when some cannot be expressed at
    /// node level (listed with the reason), 2 for configuration and usage errors. See docs/restore.md.
    NodeConfig(NodeConfigArgs),
    /// Preview an image-operator version pattern: list SOURCE's tags at its registry and print those
    /// PATTERN matches today, sorted by version, e.g. `copycat plan-tags quay.io/argoproj/argocd v2.13.x`.
    PlanTags(PlanTagsArgs),
}

/// Arguments of `copycat plan-tags`.
#[derive(Debug, Args)]
pub struct PlanTagsArgs {
    /// Source repository with its registry, without a tag (`quay.io/argoproj/argocd`).
    pub source: String,
    /// Version pattern: three parts, each a number or `x`, an optional leading `v` (`v2.13.x`, `2.x.0`).
    pub pattern: String,
    /// Also match candidate releases `X.Y.Z-rcN` (an `Image`'s `allowCandidateRelease: true`).
    #[arg(long)]
    pub rc: bool,
}

/// Arguments of `copycat failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Point every container whose image has a verified backup at the mirror, pinned by digest;
    /// the originals are recorded in the annotation `copycat.io/failover-originals`.
    #[arg(long, required_unless_present = "revert", conflicts_with = "revert")]
    pub to_mirror: bool,
    /// Put back the originals failover recorded, where a container still holds what failover wrote.
    #[arg(long)]
    pub revert: bool,
    /// Kubeconfig file, with your own permissions (default: KUBECONFIG, then ~/.kube/config, then
    /// the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Only objects in this namespace (repeatable). Default: every namespace the configuration's
    /// `includeNamespaces` names, or all.
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Switch only images from this source registry (repeatable), e.g. `docker.io` during its outage.
    #[arg(long = "registry", value_name = "HOST", conflicts_with = "revert")]
    pub registries: Vec<String>,
    /// Add this imagePullSecrets entry (a Secret that can pull from the mirror) to every switched
    /// template; `--revert` removes it again (only where failover added it).
    #[arg(long, value_name = "NAME", conflicts_with = "revert")]
    pub pull_secret: Option<String>,
    /// Backups checked at the same time.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// `--dry-run` given on the command line (the global flag): decide and print, write nothing.
    #[arg(skip)]
    pub dry_run: bool,
}

/// Arguments of `copycat node-config`.
#[derive(Debug, Args)]
pub struct NodeConfigArgs {
    /// The nodes' container runtime.
    #[arg(long, value_enum)]
    pub format: Runtime,
    /// Write the files under DIR (containerd: DIR/<registry>/hosts.toml, for its `config_path`;
    /// CRI-O: DIR/copycat-mirror.conf, for /etc/containers/registries.conf.d) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Try the mirror before the upstream (default: the upstream first, the mirror when it fails).
    #[arg(long)]
    pub mirror_first: bool,
    /// A source registry to configure (repeatable). Default: every registry the cluster's workloads
    /// pull mirrored images from (one list of the cluster, as `verify` reads it).
    #[arg(long = "registry", value_name = "HOST")]
    pub registries: Vec<String>,
    /// Kubeconfig file, when the registries come from the cluster (default: KUBECONFIG, then
    /// ~/.kube/config, then the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Take the registries from images used in this namespace only (repeatable).
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
}

/// Arguments of `copycat verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Check only images used in this namespace (repeatable); the configured namespace filters
    /// still apply.
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Read every blob and manifest from the target and re-hash it (streaming), instead of HEAD
    /// requests: finds damaged content, at the cost of reading the whole backup.
    #[arg(long)]
    pub deep: bool,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Images checked at the same time.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// How `verify` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table (image, target, state, detail, users) and a summary line.
    Table,
    /// One JSON document: `images` (one object per image) and `summary`.
    Json,
}

/// Arguments of `copycat copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source image reference (tag, digest or tag@digest).
    pub source: String,
    /// Target image reference. With `--pull-through`: the cache's address and path prefix
    /// (`harbor.example.com/dockerhub-proxy`), by default the `pullThrough.caches` entry of the
    /// source's registry.
    #[arg(required_unless_present = "pull_through")]
    pub target: Option<String>,
    /// Copy only these platforms (`linux/amd64`, `linux/arm/v7`); repeatable. Default: everything.
    #[arg(long = "platform", value_name = "PLATFORM", conflicts_with = "pull_through")]
    pub platforms: Vec<String>,
    /// Signatures, attestations and SBOMs copied with the image: all, signatures, none (overrides
    /// the `referrers` setting).
    #[arg(long, value_name = "MODE")]
    pub referrers: Option<ReferrersMode>,
    /// The target is a pull-through cache: read the image through it (every manifest, and every
    /// blob unless `pullThrough.blobs` is false) instead of copying; nothing is written.
    #[arg(long)]
    pub pull_through: bool,
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
    /// Signatures, attestations and SBOMs copied with each image: all, signatures, none (overrides
    /// the `referrers` setting).
    #[arg(long, value_name = "MODE")]
    pub referrers: Option<ReferrersMode>,
    /// targetRepoPrefix is a pull-through cache: read each image through it (the source's own tag
    /// or digest) instead of copying; entries may not name a `tag` or `amd64Only`.
    #[arg(long)]
    pub pull_through: bool,
    /// Where sync remembers between runs whose signatures, attestations and SBOMs it looked for, so
    /// an image already at the target is looked at once per `referrersInterval` [default:
    /// $XDG_STATE_HOME/copycat/sync-state.json, else ~/.local/state/copycat/sync-state.json].
    #[arg(long, value_name = "FILE", conflicts_with = "no_state")]
    pub state: Option<PathBuf>,
    /// Remember nothing between runs: look for every image's related artifacts now.
    #[arg(long)]
    pub no_state: bool,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// Config file (overrides CONFIG_PATH).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write nothing anywhere; log what would be mirrored (`--dry-run=false` turns a configured dry
    /// run off; overrides DRY_RUN).
    #[arg(long = "dry-run", global = true, value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = flag_bool)]
    pub dry_run: Option<bool>,
    /// Make no registry request at all; log the planned mirror tasks (`--dry-pull=false` turns it
    /// off; overrides DRY_PULL).
    #[arg(long = "dry-pull", global = true, value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = flag_bool)]
    pub dry_pull: Option<bool>,
    /// Log level: trace, debug, info, warn, error (overrides LOG_LEVEL).
    #[arg(long = "log-level", alias = "zap-log-level", global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// k8s-copycat's other zap flags.
    #[command(flatten)]
    pub zap: ZapFlags,
}

/// Flags of the daemon (`run`, or no command) and of `check-config`, which loads its configuration.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct DaemonFlags {
    /// Address for /metrics and the admin endpoints (overrides METRICS_ADDR).
    #[arg(long = "metrics-bind-address", value_name = "ADDR")]
    pub metrics_bind_address: Option<String>,
    /// Address for /healthz and /readyz (overrides HEALTH_ADDR).
    #[arg(long = "health-probe-bind-address", value_name = "ADDR")]
    pub health_probe_bind_address: Option<String>,
    /// Use leader election (`--leader-elect=false` to turn it off; overrides LEADER_ELECT).
    #[arg(long = "leader-elect", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = flag_bool)]
    pub leader_elect: Option<bool>,
    /// Kubeconfig file (default: in-cluster config, then KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// k8s-copycat's zap logging flags other than `--zap-log-level`: accepted so that existing manifests
/// start, and ignored with a warning naming what copycat uses instead. (k8s-copycat itself overrode
/// most of them: it forced its JSON encoder, production mode and time format after parsing.)
#[derive(Debug, Args)]
pub struct ZapFlags {
    /// Ignored: zap's development mode.
    #[arg(long = "zap-devel", global = true, hide = true, value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = flag_bool)]
    devel: Option<bool>,
    /// Ignored: zap's encoder (`json`, `console`).
    #[arg(long = "zap-encoder", global = true, hide = true, value_name = "ENCODER")]
    encoder: Option<String>,
    /// Ignored: the level from which zap adds stack traces.
    #[arg(long = "zap-stacktrace-level", global = true, hide = true, value_name = "LEVEL")]
    stacktrace_level: Option<String>,
    /// Ignored: zap's time encoding.
    #[arg(long = "zap-time-encoding", global = true, hide = true, value_name = "ENCODING")]
    time_encoding: Option<String>,
}

impl ZapFlags {
    /// One warning per flag given, naming what copycat does instead.
    pub fn warnings(&self) -> Vec<String> {
        let given = |flag: &str, value: Option<String>, instead: &str| {
            value.map(|v| format!("{flag}={v} is ignored (a k8s-copycat zap flag): {instead}"))
        };
        [
            given(
                "--zap-devel",
                self.devel.map(|d| d.to_string()),
                "for readable logs set LOG_FORMAT=text, for more detail --log-level=debug",
            ),
            given(
                "--zap-encoder",
                self.encoder.clone(),
                "the log format is set by LOG_FORMAT (json or text)",
            ),
            given(
                "--zap-stacktrace-level",
                self.stacktrace_level.clone(),
                "copycat logs no stack traces; --log-level sets the verbosity",
            ),
            given(
                "--zap-time-encoding",
                self.time_encoding.clone(),
                "timestamps are RFC 3339 in both LOG_FORMAT=json and text",
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A boolean flag value, spelled as in the config file (`--dry-run=yes`).
fn flag_bool(s: &str) -> Result<bool, parse::ValueError> {
    parse::boolean(&parse::Input::Scalar(s.to_owned()))
}

impl GlobalFlags {
    /// These flags and the command's daemon flags (if it has them) as configuration overrides.
    pub fn overrides(&self, daemon: Option<&DaemonFlags>) -> Overrides {
        let daemon = daemon.cloned().unwrap_or_default();
        Overrides {
            config: self.config.clone(),
            metrics_addr: daemon.metrics_bind_address,
            health_addr: daemon.health_probe_bind_address,
            leader_elect: daemon.leader_elect,
            dry_run: self.dry_run,
            dry_pull: self.dry_pull,
            kubeconfig: daemon.kubeconfig,
            log_level: self.log_level.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` as the binary does: Go-style forms normalised, then clap.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("copycat")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        Cli::try_parse_from(go_style_args(argv, &separate_value_flags(&Cli::command())))?.checked()
    }

    #[test]
    fn go_style_args_table() {
        let value_flags = ["metrics-bind-address".to_owned(), "config".to_owned()];
        let cases: [(&[&str], &[&str]); 12] = [
            (&["-leader-elect=false"], &["--leader-elect=false"]),
            (&["--leader-elect=false"], &["--leader-elect=false"]),
            (&["-metrics-bind-address=:8080"], &["--metrics-bind-address=:8080"]),
            (
                &["-metrics-bind-address", ":8080"],
                &["--metrics-bind-address", ":8080"],
            ),
            // The value after a flag that takes one is left alone, even when it looks like a flag.
            (
                &["-config", "-odd-name.yaml", "-dry-run"],
                &["--config", "-odd-name.yaml", "--dry-run"],
            ),
            (&["--config", "-x"], &["--config", "-x"]),
            // Single letters are short flags; `-` alone and negative numbers are values.
            (&["-h"], &["-h"]),
            (&["-V", "-", "-5"], &["-V", "-", "-5"]),
            (&["-x=1"], &["-x=1"]),
            // After `--` nothing is a flag.
            (&["--", "-leader-elect"], &["--", "-leader-elect"]),
            (
                &["copy", "a", "b", "-platform", "linux/amd64"],
                &["copy", "a", "b", "--platform", "linux/amd64"],
            ),
            (&["-zap-devel", "-unknown-flag"], &["--zap-devel", "--unknown-flag"]),
        ];
        for (args, want) in cases {
            let argv = std::iter::once("copycat")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect();
            let got = go_style_args(argv, &value_flags);
            let want: Vec<OsString> = std::iter::once("copycat")
                .chain(want.iter().copied())
                .map(OsString::from)
                .collect();
            assert_eq!(got, want, "{args:?}");
        }
    }

    #[test]
    fn separate_value_flags_come_from_the_definitions() {
        let flags = separate_value_flags(&Cli::command());
        for f in [
            "config",
            "metrics-bind-address",
            "health-probe-bind-address",
            "kubeconfig",
            "log-level",
            "zap-log-level",
            "zap-encoder",
            "platform",
            "images",
            "jobs",
        ] {
            assert!(flags.iter().any(|x| x == f), "{f} takes a value: {flags:?}");
        }
        for f in ["leader-elect", "dry-run", "dry-pull", "zap-devel", "help", "version"] {
            assert!(!flags.iter().any(|x| x == f), "{f} takes no separate value: {flags:?}");
        }
    }

    #[test]
    fn every_boolean_flag_of_k8s_copycat_takes_go_values() {
        type Get = fn(&Overrides) -> Option<bool>;
        let flags: [(&str, Get); 3] = [
            ("leader-elect", |o| o.leader_elect),
            ("dry-run", |o| o.dry_run),
            ("dry-pull", |o| o.dry_pull),
        ];
        for (flag, get) in flags {
            for dashes in ["-", "--"] {
                for (form, want) in [
                    ("", Some(true)),
                    ("=true", Some(true)),
                    ("=false", Some(false)),
                    ("=True", Some(true)),
                    ("=FALSE", Some(false)),
                    ("=1", Some(true)),
                    ("=0", Some(false)),
                    ("=t", Some(true)),
                    ("=F", Some(false)),
                ] {
                    let arg = format!("{dashes}{flag}{form}");
                    let cli = parse(&[&arg]).unwrap_or_else(|e| panic!("{arg}: {e}"));
                    assert_eq!(get(&cli.into_parts().1), want, "{arg}");
                }
                let bad = format!("{dashes}{flag}=perhaps");
                assert!(parse(&[&bad]).is_err(), "{bad}");
            }
            assert_eq!(get(&parse(&[]).unwrap().into_parts().1), None, "{flag} not given");
        }
        // As with Go's flag package, a repeated flag's last value wins.
        let cli = parse(&["-leader-elect=false", "--leader-elect", "-dry-run", "--dry-run=false"]).unwrap();
        let o = cli.into_parts().1;
        assert_eq!((o.leader_elect, o.dry_run), (Some(true), Some(false)));
    }

    #[test]
    fn other_zap_flags_are_accepted_with_a_warning_naming_the_alternative() {
        let cli = parse(&[
            "--zap-devel",
            "-zap-encoder=console",
            "--zap-stacktrace-level",
            "panic",
            "-zap-time-encoding",
            "epoch",
        ])
        .unwrap();
        let warnings = cli.flags.zap.warnings();
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        for (flag, instead) in [
            ("--zap-devel=true", "LOG_FORMAT=text"),
            ("--zap-encoder=console", "LOG_FORMAT"),
            ("--zap-stacktrace-level=panic", "--log-level"),
            ("--zap-time-encoding=epoch", "RFC 3339"),
        ] {
            assert!(
                warnings.iter().any(|w| w.starts_with(flag) && w.contains(instead)),
                "{flag}: {warnings:?}"
            );
        }
        assert!(parse(&[]).unwrap().flags.zap.warnings().is_empty());
    }

    #[test]
    fn unknown_flags_are_refused_in_either_form() {
        for arg in ["--zap-colour=true", "-zap-colour=true", "-frobnicate", "--frobnicate"] {
            let err = parse(&[arg]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument, "{arg}");
            let name = arg.trim_start_matches('-').split('=').next().unwrap();
            assert!(err.to_string().contains(&format!("--{name}")), "{arg}: {err}");
        }
    }

    #[test]
    fn k8s_copycat_flags_are_accepted() {
        let cli = parse(&[
            "--metrics-bind-address=:9090",
            "--health-probe-bind-address",
            ":9091",
            "--leader-elect=false",
            "--dry-run",
            "-zap-log-level=debug",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let o = cli.into_parts().1;
        assert_eq!(o.metrics_addr.as_deref(), Some(":9090"));
        assert_eq!(o.health_addr.as_deref(), Some(":9091"));
        assert_eq!(o.leader_elect, Some(false));
        assert_eq!((o.dry_run, o.dry_pull), (Some(true), None));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(
            parse(&["--leader-elect"]).unwrap().into_parts().1.leader_elect,
            Some(true)
        );
        assert!(parse(&["--leader-elect=perhaps"]).is_err());
    }

    #[test]
    fn commands() {
        assert!(matches!(parse(&["run"]).unwrap().command, Some(Command::Run(_))));
        assert!(matches!(
            parse(&["check-config", "--config", "x.yaml"]).unwrap().command,
            Some(Command::CheckConfig(_))
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
        assert_eq!(
            (
                c.source.as_str(),
                c.target.as_deref(),
                c.platforms.len(),
                c.pull_through
            ),
            ("a", Some("b"), 2, false)
        );
        assert!(parse(&["copy", "a"]).is_err(), "DST is required");
        let Some(Command::Copy(c)) = parse(&["copy", "--pull-through", "a"]).unwrap().command else {
            panic!("not a copy")
        };
        assert_eq!(
            (c.target, c.pull_through),
            (None, true),
            "the cache may come from pullThrough.caches"
        );
        assert!(
            parse(&["copy", "--pull-through", "a", "c", "--platform", "linux/amd64"]).is_err(),
            "a cache is read through for every platform"
        );
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
        let Some(Command::Verify(v)) =
            parse(&["verify", "-n", "shop", "--namespace=ops", "--deep", "--output", "json"])
                .unwrap()
                .command
        else {
            panic!("not a verify")
        };
        assert_eq!(
            (v.namespaces.as_slice(), v.deep, v.output, v.jobs),
            (
                ["shop".to_owned(), "ops".to_owned()].as_slice(),
                true,
                OutputFormat::Json,
                4
            )
        );
        assert!(parse(&["verify", "--output", "yaml"]).is_err());
    }

    #[test]
    fn failover_takes_one_direction_and_its_own_kubeconfig() {
        let Some(Command::Failover(f)) = parse(&[
            "failover",
            "--to-mirror",
            "-n",
            "shop",
            "--registry",
            "docker.io",
            "--registry=ghcr.io",
            "--pull-secret",
            "mirror-pull",
            "--dry-run",
            "--kubeconfig",
            "k.yaml",
        ])
        .unwrap()
        .command
        else {
            panic!("not a failover")
        };
        assert!(f.to_mirror && !f.revert);
        assert_eq!(f.namespaces, ["shop"]);
        assert_eq!(f.registries, ["docker.io", "ghcr.io"]);
        assert_eq!(f.pull_secret.as_deref(), Some("mirror-pull"));
        let (command, o) = parse(&["failover", "--revert", "--kubeconfig", "k.yaml", "--dry-run"])
            .unwrap()
            .into_parts();
        assert_eq!(o.kubeconfig, Some(PathBuf::from("k.yaml")));
        assert!(matches!(command, Command::Failover(FailoverArgs { dry_run: true, .. })));
        for args in [
            &["failover", "--revert"][..],
            &["failover", "--revert", "--dry-run=false"],
        ] {
            let (command, _) = parse(args).unwrap().into_parts();
            assert!(
                matches!(command, Command::Failover(FailoverArgs { dry_run: false, .. })),
                "{args:?}"
            );
        }
        for args in [
            vec!["failover"],
            vec!["failover", "--to-mirror", "--revert"],
            vec!["failover", "--revert", "--registry", "docker.io"],
            vec!["failover", "--revert", "--pull-secret", "p"],
            vec!["--kubeconfig=k.yaml", "failover", "--revert"],
        ] {
            assert!(parse(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn verify_takes_its_own_kubeconfig_and_refuses_the_daemons_before_it() {
        let (command, o) = parse(&["verify", "--kubeconfig", "k.yaml"]).unwrap().into_parts();
        assert!(matches!(command, Command::Verify(_)));
        assert_eq!(o.kubeconfig, Some(PathBuf::from("k.yaml")));
        let (_, o) = parse(&["verify"]).unwrap().into_parts();
        assert_eq!(o.kubeconfig, None);
        for flag in ["--kubeconfig=k.yaml", "--leader-elect=false"] {
            assert!(parse(&[flag, "verify"]).is_err(), "{flag} before verify");
        }
        assert!(parse(&["verify", "--leader-elect=false"]).is_err());
    }

    #[test]
    fn node_config_args() {
        let (command, o) = parse(&[
            "node-config",
            "--format",
            "cri-o",
            "--registry",
            "docker.io",
            "--registry=ghcr.io",
            "--mirror-first",
            "--output",
            "out",
            "--kubeconfig",
            "k.yaml",
        ])
        .unwrap()
        .into_parts();
        let Command::NodeConfig(args) = command else {
            panic!("not node-config")
        };
        assert_eq!(args.format, Runtime::CriO);
        assert_eq!(args.registries, ["docker.io", "ghcr.io"]);
        assert!(args.mirror_first);
        assert_eq!(args.output, Some(PathBuf::from("out")));
        assert_eq!(o.kubeconfig, Some(PathBuf::from("k.yaml")));
        let Some(Command::NodeConfig(args)) = parse(&["node-config", "--format=crio"]).unwrap().command else {
            panic!("not node-config")
        };
        assert_eq!(
            (args.format, args.mirror_first, args.output),
            (Runtime::CriO, false, None)
        );
        for bad in [&["node-config"][..], &["node-config", "--format", "docker"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--kubeconfig=k", "node-config", "--format", "containerd"]).is_err());
    }

    #[test]
    fn daemon_flags_belong_to_the_daemon_and_check_config_only() {
        let daemon_flags = [
            "--metrics-bind-address=:9090",
            "--health-probe-bind-address=:9091",
            "--leader-elect=false",
            "--kubeconfig=k.yaml",
        ];
        for flag in daemon_flags {
            // Without a command (k8s-copycat's form), after `run` and after `check-config`.
            for args in [vec![flag], vec!["run", flag], vec!["check-config", flag]] {
                let (_, o) = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}")).into_parts();
                let given = [
                    o.metrics_addr.is_some(),
                    o.health_addr.is_some(),
                    o.leader_elect.is_some(),
                    o.kubeconfig.is_some(),
                ];
                assert_eq!(given.iter().filter(|g| **g).count(), 1, "{args:?}");
            }
            // One-shot commands refuse them, naming the flag.
            for args in [vec!["copy", "a", "b", flag], vec!["sync", "--images", "f", flag]] {
                let err = parse(&args).unwrap_err();
                assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument, "{args:?}");
            }
            // A daemon flag before a command is refused rather than silently applied to it.
            assert!(parse(&[flag, "copy", "a", "b"]).is_err(), "{flag} before copy");
        }
        // Flags every command takes, before or after the command.
        for args in [
            vec!["copy", "a", "b", "--config=c.yaml", "--dry-run", "--log-level=debug"],
            vec!["--config=c.yaml", "--dry-pull", "sync", "--images", "f"],
        ] {
            let (_, o) = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}")).into_parts();
            assert!(o.config.is_some(), "{args:?}");
        }
        let mut cli = Cli::command();
        cli.build(); // propagates the global flags into the subcommands
        let help = cli.find_subcommand_mut("copy").unwrap().render_long_help().to_string();
        for daemon_only in [
            "--metrics-bind-address",
            "--health-probe-bind-address",
            "--leader-elect",
            "--kubeconfig",
        ] {
            assert!(!help.contains(daemon_only), "copy --help lists {daemon_only}:\n{help}");
        }
        assert!(help.contains("--platform") && help.contains("--config"), "{help}");
    }
}
