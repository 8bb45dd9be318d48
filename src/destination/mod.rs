//! Where mirrored images go: the target registry host, the credentials that reach it, and what must
//! happen before a repository is first written. A generic registry needs nothing beyond the
//! registry client; ECR ([`ecr`]) needs tokens from the AWS API and repositories created up front.

pub mod ecr;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::{Config, TargetKind};
use crate::registry::CredentialProvider;

/// Why a target repository cannot be prepared.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct RepositoryError {
    /// What failed, naming the operation and the repository, never credentials.
    pub detail: String,
    /// Whether trying again later may succeed (throttling, a network error).
    pub transient: bool,
}

/// Makes sure a target repository can take a push (ECR: exists, with the configured settings).
pub trait RepositoryPreparer: Send + Sync {
    /// Called before the first write to `repository`; cheap when it is known to be ready.
    fn ensure<'a>(&'a self, repository: &'a str) -> BoxFuture<'a, Result<(), RepositoryError>>;
}

/// A connected target registry.
#[derive(Clone)]
pub struct Target {
    /// Registry host (`host[:port]`), as image references name it.
    pub host: String,
    /// What the planner prefixes repositories with: the host, plus the docker target's path.
    pub registry: String,
    /// Credentials that expire and are renewed (ECR); `None`: the static target credentials.
    pub credentials: Option<Arc<dyn CredentialProvider>>,
    /// Preparation of repositories before they are written (ECR); `None`: nothing to prepare.
    pub repositories: Option<Arc<dyn RepositoryPreparer>>,
}

impl Target {
    /// A registry that needs no preparation and uses static credentials.
    pub fn plain(registry: &str) -> Target {
        Target {
            host: registry.split('/').next().unwrap_or_default().to_owned(),
            registry: registry.to_owned(),
            credentials: None,
            repositories: None,
        }
    }

    /// The daemon's targets from the configuration: the target registry (for ECR this builds the AWS
    /// clients; no AWS call is made until the first image needs one), or with `targetKind:
    /// pullThrough` each host of `pullThrough.caches` ([`Target::for_hosts`]).
    pub async fn from_config(config: &Config) -> Vec<Target> {
        match config.target_kind {
            TargetKind::Docker => vec![Target::plain(&config.docker.registry)],
            TargetKind::Ecr => {
                let settings = ecr::Settings::from_config(&config.ecr);
                vec![ecr::Ecr::connect(settings).await.target()]
            }
            TargetKind::PullThrough => {
                let caches = config.pull_through.caches.values();
                let hosts: Vec<&str> = caches.map(|c| c.split('/').next().unwrap_or(c)).collect();
                Target::for_hosts(config, &hosts).await
            }
        }
    }

    /// One target per distinct host of `hosts` ([`Target::for_host`]).
    pub async fn for_hosts(config: &Config, hosts: &[&str]) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::new();
        for host in hosts {
            if !targets.iter().any(|t| t.host.eq_ignore_ascii_case(host)) {
                targets.push(Target::for_host(config, host).await);
            }
        }
        targets
    }

    /// The target for an image reference's registry `host` in the one-shot commands: an ECR
    /// registry host (`<account>.dkr.ecr.<region>.amazonaws.com`, or `ecr.registryHost` with
    /// `targetKind: ecr`) gets ECR tokens and repository creation; any other host is plain.
    pub async fn for_host(config: &Config, host: &str) -> Target {
        let host = host.to_ascii_lowercase();
        let configured = (config.target_kind == TargetKind::Ecr
            && !config.ecr.account_id.is_empty()
            && !config.ecr.region.is_empty())
        .then(|| ecr::Settings::from_config(&config.ecr))
        .filter(|s| s.registry_host == host);
        let settings = configured.or_else(|| {
            ecr::parse_registry_host(&host).map(|(account, region)| {
                let mut ecr = config.ecr.clone();
                ecr.account_id = account;
                ecr.region = region;
                ecr.registry_host = String::new();
                ecr::Settings::from_config(&ecr)
            })
        });
        match settings {
            Some(settings) => ecr::Ecr::connect(settings).await.target(),
            None => Target::plain(&host),
        }
    }
}
