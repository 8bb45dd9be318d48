//! The validated configuration. Field names serialise to the YAML keys, so `check-config` prints a
//! file that loads back to the same configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::naming::PathMapRule;
use crate::platform::Platform;
use crate::referrer_policy::{ArtifactTypes, ReferrersMode};
use crate::secret::Secret;

/// Everything copycat reads at start, validated.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Kind of target registry.
    pub target_kind: TargetKind,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log line format.
    pub log_format: LogFormat,
    /// ECR target settings (used when `target_kind` is ECR).
    pub ecr: EcrConfig,
    /// Generic registry target settings (used when `target_kind` is Docker).
    pub docker: DockerConfig,
    /// Pull-through cache settings (used when `target_kind` is PullThrough).
    pub pull_through: PullThroughConfig,
    /// Mirror by digest rather than by tag.
    pub digest_pull: bool,
    /// Tags that stay tag-based under `digest_pull` (lower-case).
    pub digest_pull_ignored_tags: Vec<String>,
    /// Patterns silencing missing-platform reports.
    pub ignore_missing_platforms: Vec<Pattern>,
    /// Use the Pod's Node platform.
    pub check_node_platform: bool,
    /// Use Pods' pull secrets for their source registries.
    pub use_image_pull_secrets: bool,
    /// Extra platforms mirrored in digest mode.
    pub mirror_platforms: Vec<Platform>,
    /// Overwrite a target tag holding another digest.
    pub allow_different_digest_repush: bool,
    /// Namespace names and globs to watch.
    pub include_namespaces: Vec<String>,
    /// Namespaces never watched.
    pub skip_namespaces: Vec<String>,
    /// Per-kind skip lists.
    pub skip_names: SkipNames,
    /// Normalised registry prefixes never mirrored.
    pub exclude_registries: Vec<String>,
    /// Workload kinds to watch, canonical names from `settings::RESOURCE_KINDS`.
    pub watch_resources: Vec<&'static str>,
    /// Write nothing anywhere.
    pub dry_run: bool,
    /// Make no registry request at all.
    pub dry_pull: bool,
    /// Per-request timeout; `None` means no deadline.
    #[serde(serialize_with = "optional_duration")]
    pub request_timeout: Option<Duration>,
    /// Attempts per registry request.
    pub registry_retry_attempts: u32,
    /// Base retry delay.
    #[serde(serialize_with = "duration")]
    pub registry_retry_backoff: Duration,
    /// Per-target failure cooldown; `None` disables it.
    #[serde(rename = "failureCooldownMinutes", serialize_with = "optional_duration")]
    pub failure_cooldown: Option<Duration>,
    /// Create Kubernetes Events on workloads whose images fail to mirror.
    pub emit_events: bool,
    /// Periodic full rescan; `None` disables it.
    #[serde(rename = "forceReconcileMinutes", serialize_with = "optional_duration")]
    pub force_reconcile_interval: Option<Duration>,
    /// Concurrent mirror workers.
    pub max_concurrent_reconciles: u32,
    /// Source registry credentials.
    pub registry_credentials: Vec<RegistryCredential>,
    /// Source repository path rewrites.
    pub path_map: Vec<PathMapRule>,
    /// Tags overwritten regardless of `allow_different_digest_repush` (lower-case).
    pub always_overwrite_tags: Vec<String>,
    /// Anchor tag template for digest-only sources; `None` (`none`): push by digest only, untagged.
    #[serde(serialize_with = "optional_template")]
    pub digest_tag_template: Option<String>,
    /// Which signatures, attestations and SBOMs are copied with each image.
    pub referrers: ReferrersMode,
    /// Their filter by artifact type.
    pub referrer_artifact_types: ArtifactTypes,
    /// Levels of related artifacts followed.
    pub referrer_depth: u32,
    /// How often the daemon looks for new related artifacts of each mirrored image.
    #[serde(serialize_with = "duration")]
    pub referrers_interval: Duration,
    /// Blobs of one image transferred at once.
    pub blob_concurrency: u32,
    /// Requests in flight per registry host.
    pub registry_max_concurrent_requests: u32,
    /// Deadline for one image; `None` means none.
    #[serde(serialize_with = "optional_duration")]
    pub image_deadline: Option<Duration>,
    /// Positive cache TTL (`None`: no cache).
    #[serde(rename = "mirroredCacheTTL", serialize_with = "optional_duration")]
    pub mirrored_cache_ttl: Option<Duration>,
    /// Periodic verification of the planned targets; `None` disables it.
    #[serde(serialize_with = "optional_duration")]
    pub verify_interval: Option<Duration>,
    /// Restore drills of verified targets; `None` disables them.
    #[serde(serialize_with = "optional_duration")]
    pub restore_drill_interval: Option<Duration>,
    /// Targets pulled whole per restore drill.
    pub restore_drill_images: u32,
    /// How long running copies may finish after SIGTERM.
    #[serde(serialize_with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Transport settings per registry host.
    pub registries: Vec<RegistrySettings>,
    /// Read mirrors per source registry host.
    pub registry_mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Copy on the fly of images on the target registry that Pods fail to pull.
    pub on_the_fly: OnTheFly,
    /// Mirroring of Flux `ImageRepository` scans.
    pub flux_image_repositories: FluxImageRepositories,
    /// image-operator's `Image` objects.
    pub images: Images,
    /// Settings that come only from the environment or flags.
    #[serde(skip)]
    pub runtime: RuntimeSettings,
}

/// Target registry kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// AWS ECR.
    Ecr,
    /// Any OCI/Docker registry.
    Docker,
    /// Pull-through caches, filled by reading images through them.
    #[serde(rename = "pullThrough")]
    PullThrough,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Decisions and skips.
    Debug,
    /// Outcomes.
    Info,
    /// Problems that do not stop work.
    Warn,
    /// Failures.
    Error,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable text.
    Text,
}

/// ECR target settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EcrConfig {
    /// Account id (12 digits).
    #[serde(rename = "accountID")]
    pub account_id: String,
    /// AWS region.
    pub region: String,
    /// Templated repository prefix.
    pub repo_prefix: String,
    /// Create missing repositories.
    pub create_repo: bool,
    /// Role to assume on top of the default chain.
    pub assume_role_arn: String,
    /// External ID for AssumeRole.
    pub assume_role_external_id: String,
    /// Session name for AssumeRole.
    pub assume_role_session_name: String,
    /// Registry host override (empty: derived from account and region).
    pub registry_host: String,
    /// Lifecycle policy JSON for created repositories.
    pub lifecycle_policy: String,
    /// Keep the lifecycle policy of existing repositories in sync.
    pub reconcile_lifecycle_policy: bool,
    /// `MUTABLE` or `IMMUTABLE`, for created repositories.
    pub image_tag_mutability: String,
    /// Scan on push, for created repositories.
    pub scan_on_push: bool,
    /// `AES256`, `KMS` or `KMS_DSSE`, for created repositories.
    pub encryption_type: String,
    /// KMS key for `KMS*` encryption (empty: AWS managed key).
    pub kms_key: String,
    /// Resource tags for created repositories.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Generic registry target settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    /// Target host, optionally with a port and a path.
    pub registry: String,
    /// Templated repository prefix.
    pub repo_prefix: String,
    /// Plain HTTP / no TLS verification for the target.
    pub insecure: bool,
    /// Target username (env only).
    #[serde(skip)]
    pub username: String,
    /// Extra CA certificates for the target.
    pub ca_file: String,
    /// Target password (env only).
    #[serde(skip)]
    pub password: Secret,
}

/// Pull-through cache settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullThroughConfig {
    /// The cache (`host[:port][/path]`, lower-case) of each source registry (canonical host).
    pub caches: std::collections::BTreeMap<String, String>,
    /// Read every blob through the cache too, not only the manifests.
    pub blobs: bool,
}

/// Per-kind skip lists: entries are `name`, `namespace/name` or `*`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkipNames {
    /// Deployments.
    pub deployments: Vec<String>,
    /// StatefulSets.
    pub stateful_sets: Vec<String>,
    /// DaemonSets.
    pub daemon_sets: Vec<String>,
    /// Jobs.
    pub jobs: Vec<String>,
    /// CronJobs.
    pub cron_jobs: Vec<String>,
    /// Pods.
    pub pods: Vec<String>,
}

/// Credentials for one source registry (and its aliases). `*Env` names are resolved at load time.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredential {
    /// Host or host glob, lower-case.
    pub registry: String,
    /// Other hosts or globs sharing the credentials.
    pub registry_aliases: Vec<String>,
    /// Basic-auth username.
    pub username: String,
    /// Basic-auth password.
    pub password: Secret,
    /// Bearer token; wins over username/password.
    pub token: Secret,
}

/// Transport settings for one registry host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySettings {
    /// Lower-case `host[:port]`.
    pub host: String,
    /// Plain HTTP / no TLS verification.
    pub insecure: bool,
    /// Extra CA certificates (PEM file), empty for none.
    pub ca_file: String,
}

/// Copy on the fly (`onTheFly`): images on the target registry that Pods fail to pull are copied
/// from the source a rule names.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OnTheFly {
    /// Whether failed pulls are watched for and copied.
    pub enabled: bool,
    /// Mirror prefix → source rules; the longest matching mirror prefix wins.
    pub rules: Vec<OnTheFlyRule>,
}

/// image-operator's `Image` objects (`images`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Images {
    /// Whether they are watched (when the CRD exists).
    pub enabled: bool,
    /// Where; empty: cluster-wide.
    pub namespaces: Vec<String>,
    /// How long a tag list is reused.
    #[serde(serialize_with = "duration")]
    pub tag_list_interval: Duration,
    /// Tags of one object being copied at once.
    pub max_tags_per_image: u32,
}

/// One `onTheFly.rules` entry: images under `mirror` come from `source` (the rest of the path kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnTheFlyRule {
    /// `host[:port][/path]` on the target registry: host lower-case, no trailing `/`.
    pub mirror: String,
    /// `host[:port][/path]` of the upstream registry: host canonical (`docker.io`), no trailing `/`.
    pub source: String,
}

/// Mirroring of Flux `ImageRepository` scans (`fluxImageRepositories`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxImageRepositories {
    /// Whether `ImageRepository` objects are watched.
    pub enabled: bool,
    /// The namespaces watched, each by its own watch; empty: all, one cluster-wide watch.
    pub namespaces: Vec<String>,
    /// Repository prefix template replacing the target's `repoPrefix`; empty: the target's.
    pub destination_prefix: String,
    /// Most tags copied per scan of one object.
    pub max_tags: u32,
    /// Also copy every tag the source repository lists.
    pub all_tags: bool,
}

/// A validated regular expression that prints as its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

/// Settings read only from the environment or flags.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// The config file path that was used.
    pub config_path: PathBuf,
    /// Whether that file existed.
    pub config_found: bool,
    /// `/metrics` and admin listener.
    pub metrics_addr: String,
    /// `/healthz` and `/readyz` listener.
    pub health_addr: String,
    /// Whether to use leader election.
    pub leader_elect: bool,
    /// Namespace of the Lease.
    pub pod_namespace: String,
    /// Bearer token the POST admin endpoints require; empty: none.
    pub admin_token: Secret,
    /// Explicit kubeconfig, if given.
    pub kubeconfig: Option<PathBuf>,
}

fn duration<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*d))
}

/// A template, or the keyword that turns it off, so `check-config` shows `none` rather than nothing.
fn optional_template<S: Serializer>(t: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(t.as_deref().unwrap_or(crate::naming::NO_DIGEST_TAG))
}

fn optional_duration<S: Serializer>(d: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, serializer),
        None => serializer.serialize_str("0"),
    }
}
