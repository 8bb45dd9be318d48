//! Builds every long-lived part from the [`Config`], in one place (as ripgrep's `HiArgs` builds the
//! matcher, searcher and printer): the target, registry clients and their credentials, the copier,
//! copy and queue options, the planner, the Events settings and the watched kinds. `app` calls it;
//! `daemon` and `commands` receive the built parts and read no setting that names one of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, OnTheFlyRule, Problem, TargetKind};
use crate::copy::{Copier, CopyOptions, PullThrough};
use crate::declarative::flux::FluxSettings;
use crate::declarative::image::ImageSettings;
use crate::destination::{Target, ecr};
use crate::events;
use crate::naming::{NameContext, NamingError};
use crate::node_config::MirrorNaming;
use crate::plan::Planner;
use crate::platform::Platform;
use crate::queue::{DEFAULT_MAX_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF, DEFAULT_STATUS_CAPACITY, QueueOptions};
use crate::reference;
use crate::registry::credentials::{Credentials, DockerConfigError, load_docker_config};
use crate::registry::{ClientOptions, Credential, HostSettings, Registries, RegistryError};
use crate::workload::{self, Kind};

/// Why the parts cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// The Docker config (`DOCKER_CONFIG`, `~/.docker/config.json`) cannot be used.
    #[error(transparent)]
    DockerConfig(#[from] DockerConfigError),
    /// The registry clients cannot be built (a CA file, the TLS backend).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `pathMap` cannot be compiled.
    #[error("pathMap: {0}")]
    PathMap(#[from] NamingError),
    /// No usable Kubernetes client configuration: a configuration problem (exit 2).
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
}

/// The CA files of `config` that cannot be used (unreadable, or without a usable certificate), as
/// configuration problems naming their setting: a start with one stops like any bad setting, instead
/// of failing later naming only the file. `check-config` does not read them: they may exist only where
/// copycat runs (a mounted Secret).
pub fn ca_file_problems(config: &Config) -> Vec<Problem> {
    let docker =
        (!config.docker.insecure).then(|| ("docker.caFile / TARGET_CA_FILE".to_owned(), &config.docker.ca_file));
    let entries = config
        .registries
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.insecure)
        .map(|(i, r)| (format!("registries[{i}].caFile"), &r.ca_file));
    docker
        .into_iter()
        .chain(entries)
        .filter(|(_, path)| !path.is_empty())
        .filter_map(|(origin, path)| {
            let error = crate::registry::load_ca_file(Path::new(path)).err()?;
            Some(Problem {
                origin,
                value: Some(path.clone()),
                message: error.to_string(),
            })
        })
        .collect()
}

/// What the daemon runs with.
pub struct DaemonParts {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The URL of the API server the client talks to (without any user information), named when
    /// watches fail.
    pub api_server: String,
    /// Where images are mirrored to: the target `registry[/path]`, or with `targetKind:
    /// pullThrough` each cache's `host[:port][/path]`. The planner excludes images already there.
    pub targets: Vec<String>,
    /// The copy engine over the registry clients.
    pub copier: Copier,
    /// How the queue works.
    pub queue: QueueOptions,
    /// Filters, digest policy and naming.
    pub planner: Planner,
    /// The Events rate-limit window, when Events are wanted.
    pub events: Option<Duration>,
    /// The workload kinds to watch (`watchResources`).
    pub watched: Vec<Kind>,
    /// The `onTheFly.rules`, when copy on the fly is enabled.
    pub on_the_fly: Option<Vec<OnTheFlyRule>>,
    /// How `Image` objects are followed, when `images.enabled` (and the target is a registry copycat
    /// writes to).
    pub images: Option<ImageSettings>,
    /// How Flux `ImageRepository` scans are mirrored, when `fluxImageRepositories.enabled`.
    pub flux: Option<FluxSettings>,
}

impl DaemonParts {
    /// Builds the daemon's parts, the Kubernetes client first (a missing configuration is the first
    /// thing to say); for ECR this builds the AWS clients (no AWS call is made until the
    /// first image needs one).
    pub async fn build(config: &Config) -> Result<DaemonParts, WiringError> {
        let (client, api_server) = kube_client(config).await?;
        let targets = Target::from_config(config).await;
        let addresses: Vec<String> = match config.target_kind {
            TargetKind::PullThrough => config.pull_through.caches.values().cloned().collect(),
            TargetKind::Ecr | TargetKind::Docker => targets.iter().map(|t| t.registry.clone()).collect(),
        };
        let copier = copier(config, registries(config, &targets)?, &targets);
        // One target for ecr and docker; with pull-through caches the planner reads them itself.
        let planner = Planner::new(config, addresses.first().map_or("", String::as_str))?;
        let images = image_settings(config, addresses.first());
        let flux = flux_settings(config, &planner);
        Ok(DaemonParts {
            client,
            api_server,
            targets: addresses,
            copier,
            queue: queue_options(config),
            planner,
            events: events_wanted(config).then(|| events_window(config)),
            watched: workload::kinds_named(&config.watch_resources),
            on_the_fly: config.on_the_fly.enabled.then(|| config.on_the_fly.rules.clone()),
            images,
            flux,
        })
    }
}

/// How `Image` objects are followed, when `images.enabled`: destinations without a host go to
/// `target`. A pull-through cache is no place to write copies to: then they are not followed.
fn image_settings(config: &Config, target: Option<&String>) -> Option<ImageSettings> {
    if !config.images.enabled {
        return None;
    }
    if config.target_kind == TargetKind::PullThrough {
        tracing::warn!(
            "images.enabled: Image objects copy to a registry, not through a pull-through cache; not watching them"
        );
        return None;
    }
    Some(ImageSettings {
        namespaces: config.images.namespaces.clone(),
        tag_list_interval: config.images.tag_list_interval,
        max_tags_per_image: config.images.max_tags_per_image as usize,
        target_registry: target?.clone(),
    })
}

/// How Flux `ImageRepository` scans are mirrored, when `fluxImageRepositories.enabled`: named as
/// `planner` names a workload's images, with `destinationPrefix` instead of the target's
/// `repoPrefix` when it is set. (Configuration loading refuses the feature with pull-through
/// caches, where the planner writes to no target.)
pub fn flux_settings(config: &Config, planner: &Planner) -> Option<FluxSettings> {
    let flux = &config.flux_image_repositories;
    if !flux.enabled {
        return None;
    }
    let mut naming = planner.target_naming(NameContext::default());
    if !flux.destination_prefix.is_empty() {
        naming.prefix = flux.destination_prefix.clone();
    }
    Some(FluxSettings {
        namespaces: flux.namespaces.clone(),
        naming,
        max_tags: flux.max_tags as usize,
        all_tags: flux.all_tags,
    })
}

/// Why the daemon has no usable Kubernetes client configuration: a configuration problem (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Nowhere to look: not in a cluster, no KUBECONFIG, no ~/.kube/config.
    #[error(
        "no Kubernetes configuration: not running in a cluster (KUBERNETES_SERVICE_HOST is unset), \
         KUBECONFIG is unset and {home_config} does not exist; pass --kubeconfig FILE or set KUBECONFIG"
    )]
    Missing {
        /// The per-user default path looked at.
        home_config: String,
    },
    /// A configuration was found but cannot be used.
    #[error("cannot use the Kubernetes configuration from {source_name}: {reason}")]
    Unusable {
        /// `--kubeconfig FILE`, `KUBECONFIG`, `~/.kube/config` or `the in-cluster service account`.
        source_name: String,
        /// kube's reason, without its nested repetitions.
        reason: String,
    },
}

/// The Kubernetes client: `--kubeconfig`, else where kube looks (`KUBECONFIG`, `~/.kube/config`,
/// the in-cluster service account); and the URL of its API server.
pub async fn kube_client(config: &Config) -> Result<(kube::Client, String), KubeconfigError> {
    let kube_config = match &config.runtime.kubeconfig {
        Some(path) => {
            let source_name = format!("--kubeconfig {}", path.display());
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| unusable(&source_name, &e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| unusable(&source_name, &e))?
        }
        None => {
            // Where kube::Config::infer looks, in its order, so that nothing found is one sentence.
            let from_env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
            let home_config = std::env::home_dir().map_or_else(
                || "~/.kube/config".to_owned(),
                |home| home.join(".kube/config").display().to_string(),
            );
            let source_name = match from_env {
                Some(paths) => format!("KUBECONFIG={}", paths.to_string_lossy()),
                None if std::path::Path::new(&home_config).exists() => home_config,
                None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                    "the in-cluster service account".to_owned()
                }
                None => return Err(KubeconfigError::Missing { home_config }),
            };
            kube::Config::infer().await.map_err(|e| unusable(&source_name, &e))?
        }
    };
    let uri = &kube_config.cluster_url;
    // Scheme, host and port only: a URL's user information may hold a password.
    let api_server = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default(),
        uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let client = kube::Client::try_from(kube_config).map_err(|e| unusable("the Kubernetes client settings", &e))?;
    Ok((client, api_server))
}

fn unusable(source_name: &str, e: &dyn std::error::Error) -> KubeconfigError {
    KubeconfigError::Unusable {
        source_name: source_name.to_owned(),
        reason: innermost(e),
    }
}

/// The innermost cause of `e`: kube's configuration errors repeat the path at every level.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// Registry clients for `config`. Targets with renewable credentials (ECR) get them; the other
/// targets get the static target credentials (`TARGET_USERNAME`, `TARGET_PASSWORD`) and TLS
/// settings (`docker.insecure`, `docker.caFile`).
pub fn registries(config: &Config, targets: &[Target]) -> Result<Registries, WiringError> {
    let env = |name: &str| std::env::var(name).ok();
    let mut credentials = Credentials::new();
    let docker = &config.docker;
    let mut hosts: HashMap<String, HostSettings> = config
        .registries
        .iter()
        .map(|r| {
            (
                r.host.clone(),
                HostSettings {
                    insecure: r.insecure,
                    ca_file: non_empty_path(&r.ca_file),
                },
            )
        })
        .collect();
    for target in targets {
        let host = reference::canonical_host(&target.host);
        if let Some(provider) = &target.credentials {
            credentials = credentials.with_provider(&host, provider.clone());
            continue;
        }
        if !docker.username.is_empty() || !docker.password.is_empty() {
            let credential = Credential::Basic {
                username: docker.username.clone(),
                password: docker.password.clone(),
            };
            credentials = credentials.with_host(&host, credential);
        }
        let settings = hosts.entry(host).or_default();
        settings.insecure |= docker.insecure;
        if settings.ca_file.is_none() {
            settings.ca_file = non_empty_path(&docker.ca_file);
        }
    }
    credentials = credentials.with_registry_credentials(&config.registry_credentials);
    if let Some((path, auths)) = load_docker_config(&env)? {
        tracing::debug!(path = %path.display(), entries = auths.len(), "using registry credentials from Docker config");
        credentials = credentials.with_docker_auths(auths);
    }
    let options = ClientOptions {
        request_timeout: config.request_timeout,
        retry_attempts: config.registry_retry_attempts,
        retry_backoff: config.registry_retry_backoff,
        max_concurrent_requests: config.registry_max_concurrent_requests as usize,
        hosts,
        user_agent: format!("copycat/{}", env!("CARGO_PKG_VERSION")),
    };
    Ok(Registries::new(options, Arc::new(credentials))?)
}

/// A copier over `registries` with the configured read mirrors, preparing the targets' repositories.
pub fn copier(config: &Config, registries: Registries, targets: &[Target]) -> Copier {
    let mut copier = Copier::new(registries)
        .with_mirrors(config.registry_mirrors.clone().into_iter().collect())
        // 90 %: the daemon's sweep, once per interval, must not find the previous look still fresh.
        .with_referrers_interval(config.referrers_interval * 9 / 10);
    for target in targets {
        if let Some(preparer) = &target.repositories {
            copier = copier.with_preparer(&target.host, preparer.clone());
        }
    }
    copier
}

/// The copier of the one-shot commands for images written to (or, for pull-through caches, read
/// through) `target_hosts`.
pub async fn command_copier(config: &Config, target_hosts: &[&str]) -> Result<Copier, WiringError> {
    let targets = Target::for_hosts(config, target_hosts).await;
    Ok(copier(config, registries(config, &targets)?, &targets))
}

/// How to fill pull-through cache targets (`pullThrough.blobs`).
pub fn pull_through(config: &Config) -> PullThrough {
    PullThrough {
        blobs: config.pull_through.blobs,
    }
}

fn non_empty_path(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| path.into())
}

/// What the planner prefixes repositories with, without connecting anything: the docker target's
/// `host[/path]`, or the ECR registry host (as [`Target::from_config`] names it); `None` with
/// `targetKind: pullThrough`, where each source registry has its own cache.
pub fn target_registry(config: &Config) -> Option<String> {
    match config.target_kind {
        TargetKind::Docker => Some(config.docker.registry.clone()),
        TargetKind::Ecr => Some(ecr::Settings::from_config(&config.ecr).registry_host),
        TargetKind::PullThrough => None,
    }
}

/// How targets are named, as far as a node's runtime can follow it (`node-config`); `None` with
/// pull-through caches, which `node-config` does not describe.
pub fn mirror_naming(config: &Config) -> Option<MirrorNaming> {
    let registry = target_registry(config)?;
    let (host, path) = registry.split_once('/').unwrap_or((&registry, ""));
    let host = host.to_ascii_lowercase();
    let (prefix, insecure) = match config.target_kind {
        TargetKind::Docker => (&config.docker.repo_prefix, config.docker.insecure),
        TargetKind::Ecr => (&config.ecr.repo_prefix, false),
        TargetKind::PullThrough => return None,
    };
    let insecure = insecure || config.registries.iter().any(|r| r.insecure && r.host == host);
    Some(MirrorNaming {
        prefix: prefix.clone(),
        path_map: config.path_map.clone(),
        target_host: host,
        target_path: path.trim_matches('/').to_owned(),
        insecure,
        exclude: config.exclude_registries.clone(),
        insecure_sources: config
            .registries
            .iter()
            .filter(|r| r.insecure)
            .map(|r| reference::canonical_host(&r.host))
            .collect(),
    })
}

/// Copy options from the configuration.
pub fn copy_options(config: &Config, platforms: Vec<Platform>) -> CopyOptions {
    CopyOptions {
        platforms,
        allow_overwrite: config.allow_different_digest_repush,
        always_overwrite_tags: config.always_overwrite_tags.clone(),
        dry_run: config.dry_run,
        blob_concurrency: config.blob_concurrency as usize,
        deadline: config.image_deadline,
        source_credentials: vec![],
        referrers: config.referrer_policy(),
        pull_through: None,
        repair: false,
    }
}

/// Queue options from the configuration: `maxConcurrentReconciles` workers, `failureCooldownMinutes`,
/// `dryRun` (through the copy options) and `dryPull`. With `forceReconcileMinutes`, the positive
/// cache trusts a copy for at most 90 % of that interval, so each periodic rescan re-checks the
/// registries (two HEADs per unchanged image) instead of finding everything cached.
pub fn queue_options(config: &Config) -> QueueOptions {
    let ttl = config.mirrored_cache_ttl.unwrap_or_default();
    let positive_ttl = match config.force_reconcile_interval {
        Some(every) if !every.is_zero() => ttl.min(every * 9 / 10),
        _ => ttl,
    };
    QueueOptions {
        workers: (config.max_concurrent_reconciles as usize).max(1),
        failure_cooldown: config.failure_cooldown,
        retry_backoff: DEFAULT_RETRY_BACKOFF,
        max_retry_backoff: DEFAULT_MAX_RETRY_BACKOFF,
        positive_ttl,
        copy: CopyOptions {
            pull_through: (config.target_kind == TargetKind::PullThrough).then(|| pull_through(config)),
            ..copy_options(config, vec![])
        },
        dry_pull: config.dry_pull,
        status_capacity: DEFAULT_STATUS_CAPACITY,
        ignore_missing_platforms: config.ignore_missing_platforms.iter().map(|p| p.0.clone()).collect(),
    }
}

/// Whether `config` asks for Events: `emitEvents`, and neither `dryRun` nor `dryPull` (no side
/// effects in dry runs).
pub fn events_wanted(config: &Config) -> bool {
    config.emit_events && !config.dry_run && !config.dry_pull
}

/// The Events rate-limit window: the failure cooldown, or [`events::DEFAULT_WINDOW`] when it is
/// disabled (a failing target is then retried on every submission, which must not mean an Event
/// each time).
pub fn events_window(config: &Config) -> Duration {
    config
        .failure_cooldown
        .filter(|d| !d.is_zero())
        .unwrap_or(events::DEFAULT_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Purpose;

    fn config(env: &[(&str, &str)]) -> Config {
        crate::config::from_env(env, Purpose::OneShot)
    }

    #[test]
    fn queue_options_from_the_configuration() {
        let o = queue_options(&config(&[]));
        assert_eq!(o.workers, 2);
        assert_eq!(o.failure_cooldown, Some(Duration::from_secs(3600)));
        assert_eq!(o.positive_ttl, crate::queue::DEFAULT_POSITIVE_TTL);
        assert!(!o.dry_pull && !o.copy.dry_run);

        let o = queue_options(&config(&[
            ("MAX_CONCURRENT_RECONCILES", "5"),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
            ("FORCE_RECONCILE_MINUTES", "60"),
            ("DRY_RUN", "true"),
            ("DRY_PULL", "true"),
        ]));
        assert_eq!(o.workers, 5);
        assert_eq!(o.failure_cooldown, None);
        assert_eq!(
            o.positive_ttl,
            Duration::from_secs(54 * 60),
            "re-checked by each hourly rescan"
        );
        assert!(o.dry_pull && o.copy.dry_run);

        let o = queue_options(&config(&[("FORCE_RECONCILE_MINUTES", "1440")]));
        assert_eq!(o.positive_ttl, crate::queue::DEFAULT_POSITIVE_TTL);
        let o = queue_options(&config(&[("MIRRORED_CACHE_TTL", "30m")]));
        assert_eq!(o.positive_ttl, Duration::from_secs(30 * 60));
        let o = queue_options(&config(&[("MIRRORED_CACHE_TTL", "0")]));
        assert_eq!(o.positive_ttl, Duration::ZERO);
        // A zero TTL is a cache that remembers nothing (and does not panic).
        let cache = moka::sync::Cache::builder().time_to_live(o.positive_ttl).build();
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), None::<i32>);
    }

    #[test]
    fn mirror_naming_from_the_configuration() {
        // (env, target registry, host, path, prefix, insecure)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str, &'a str, bool);
        let cases: [Case<'_>; 3] = [
            (
                &[
                    ("TARGET_KIND", "docker"),
                    ("TARGET_REGISTRY", "R.example:5000/base/"),
                    ("TARGET_REPO_PREFIX", "m/$registry"),
                    ("TARGET_INSECURE", "true"),
                ],
                "R.example:5000/base",
                "r.example:5000",
                "base",
                "m/$registry",
                true,
            ),
            (
                &[
                    ("TARGET_KIND", "ecr"),
                    ("ECR_ACCOUNT_ID", "123456789012"),
                    ("AWS_REGION", "eu-west-1"),
                    ("ECR_REPO_PREFIX", "mirror"),
                ],
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "",
                "mirror",
                false,
            ),
            (
                &[
                    ("TARGET_KIND", "ecr"),
                    ("ECR_ACCOUNT_ID", "123456789012"),
                    ("AWS_REGION", "eu-west-1"),
                    ("ECR_REGISTRY_HOST", "ECR.internal:443"),
                ],
                "ecr.internal:443",
                "ecr.internal:443",
                "",
                "",
                false,
            ),
        ];
        for (env, registry, host, path, prefix, insecure) in cases {
            let c = config(env);
            assert_eq!(target_registry(&c).as_deref(), Some(registry), "{env:?}");
            let n = mirror_naming(&c).expect("a target registry");
            assert_eq!(
                (
                    n.target_host.as_str(),
                    n.target_path.as_str(),
                    n.prefix.as_str(),
                    n.insecure
                ),
                (host, path, prefix, insecure),
                "{env:?}"
            );
        }
    }

    #[test]
    fn on_by_default_off_in_dry_runs_and_when_asked() {
        assert!(events_wanted(&config(&[])));
        for env in [("EMIT_EVENTS", "false"), ("DRY_RUN", "true"), ("DRY_PULL", "true")] {
            assert!(!events_wanted(&config(&[env])), "{env:?}");
        }
        assert_eq!(events_window(&config(&[])), Duration::from_secs(3600));
        assert_eq!(
            events_window(&config(&[("FAILURE_COOLDOWN_MINUTES", "5")])),
            Duration::from_secs(300)
        );
        assert_eq!(
            events_window(&config(&[("FAILURE_COOLDOWN_MINUTES", "0")])),
            events::DEFAULT_WINDOW
        );
    }
}
