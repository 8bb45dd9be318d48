//! The copy engine: mirror one image reference from a source registry to a target registry,
//! byte-exact. HEADs first (an unchanged image costs two HEADs and no GET), then blobs (skip if
//! present, mount if known elsewhere on the target, else stream with on-the-fly verification), then
//! child manifests by digest, and the tag last, so a tag never points at incomplete content.
//! Repair mode ([`CopyOptions::repair`]) does not trust a tag that holds the expected digest: it
//! walks the tree below it at the target and copies only what is missing there.

pub mod arch;
pub mod check;
mod locks;
pub mod manifest;
pub mod referrers;
pub mod select;
pub mod verify;
mod walk;
pub mod warm;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};

use crate::destination::{RepositoryError, RepositoryPreparer};
use crate::naming::NamingError;
use crate::platform::Platform;
use crate::reference::{Digest, ImageRef};
use crate::referrer_policy::ReferrerPolicy;
use crate::registry::{Credential, Manifest, ManifestHead, MountOutcome, Registries, Registry, RegistryError, Side};
use locks::KeyedLocks;
use manifest::{Budget, Descriptor, Kind, ManifestError, Parsed};
use referrers::{ReferrerReport, ReferrerState};
use select::{NoMatchingPlatform, Selection};
pub use warm::PullThrough;

/// Manifests larger than this are refused (a guard against hostile registries).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Mount sources remembered per digest; a few suffice, the first usually works.
const MOUNT_CANDIDATES: usize = 3;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy only these platforms of an index (empty: everything, digest preserved).
    pub platforms: Vec<Platform>,
    /// Overwrite a target tag that holds another digest.
    pub allow_overwrite: bool,
    /// Tags that may always be overwritten (k8s-copycat: `latest`).
    pub always_overwrite_tags: Vec<String>,
    /// Decide, but write nothing.
    pub dry_run: bool,
    /// Blobs transferred at the same time for one image.
    pub blob_concurrency: usize,
    /// Deadline for the whole image.
    pub deadline: Option<Duration>,
    /// Credentials for the source registry to try in order (a Pod's pull secrets) before the
    /// configured ones; empty: only the configured ones.
    pub source_credentials: Vec<PullSecret>,
    /// Signatures, attestations and SBOMs copied with the image ([`referrers`]). Off by default here;
    /// the configuration's default (`referrers: all`) comes through `wiring::copy_options`.
    pub referrers: ReferrerPolicy,
    /// The target is a pull-through cache: fill it by reading the image through it ([`warm`])
    /// instead of copying; `None`: copy.
    pub pull_through: Option<PullThrough>,
    /// Repair mode, for a target a check found incomplete: a tag that already holds the expected
    /// digest is not trusted; the whole tree below it is walked at the target (HEADs; the manifests
    /// present are read from the target) and only what is missing is copied. The tag is written
    /// again only when it does not hold the digest.
    pub repair: bool,
}

/// Credentials for a source registry from a pull secret (`imagePullSecrets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSecret {
    /// The Secret they come from, as `namespace/name`, for messages.
    pub name: String,
    /// The credentials.
    pub credential: Credential,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: vec![],
            allow_overwrite: true,
            always_overwrite_tags: vec!["latest".into()],
            dry_run: false,
            blob_concurrency: 4,
            deadline: None,
            source_credentials: vec![],
            referrers: ReferrerPolicy::none(),
            pull_through: None,
            repair: false,
        }
    }
}

/// One image to copy.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    /// Source reference (tag, digest or tag@digest).
    pub source: ImageRef,
    /// Target registry and repository (its tag and digest are ignored).
    pub target: ImageRef,
    /// Tag to write at the target; `None` pushes by digest only.
    pub target_tag: Option<String>,
}

impl CopyRequest {
    /// `source` read through the pull-through cache `cache` (`host[:port][/path]`): the cache's
    /// path, then the source's repository, by the source's own tag (or digest alone).
    pub fn through_cache(source: ImageRef, cache: &str) -> Result<CopyRequest, NamingError> {
        let text = format!("{}/{}", cache.trim_end_matches('/'), source.repository());
        let target = ImageRef::parse(&text).map_err(|e| NamingError::Target(Box::new(e)))?;
        Ok(CopyRequest {
            target_tag: source.tag().map(str::to_owned),
            source,
            target,
        })
    }

    /// The target as text, `registry/repo:tag` or `registry/repo@digest`.
    pub fn target_display(&self, digest: Option<&Digest>) -> String {
        match (&self.target_tag, digest) {
            (Some(tag), _) => format!("{}:{tag}", self.target.name()),
            (None, Some(d)) => format!("{}@{d}", self.target.name()),
            (None, None) => self.target.name(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target already held the content under the tag (or digest).
    AlreadyPresent,
    /// Content was written.
    Copied,
    /// Dry run: content would have been written.
    WouldCopy,
    /// The image was read through the pull-through cache that is the target, which now serves it.
    Warmed,
}

impl Outcome {
    /// `copied`, `present`, `would-copy` or `warmed`: the `result` of log lines and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Copied => "copied",
            Outcome::AlreadyPresent => "present",
            Outcome::WouldCopy => "would-copy",
            Outcome::Warmed => "warmed",
        }
    }
}

/// The result of one copy.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// What happened.
    pub outcome: Outcome,
    /// Digest of the source manifest (the index, for a filtered copy).
    pub source_digest: Digest,
    /// Digest written (or present) at the target; unknown only in some dry runs.
    pub digest: Option<Digest>,
    /// Blob bytes streamed from source to target.
    pub bytes: u64,
    /// Blobs already at the target.
    pub blobs_skipped: u32,
    /// Blobs linked from another repository of the target registry.
    pub blobs_mounted: u32,
    /// Blobs streamed.
    pub blobs_transferred: u32,
    /// Blobs read through a pull-through cache.
    pub blobs_warmed: u32,
    /// Manifests written by digest below the tag (an index's children the target lacked).
    pub manifests_written: u32,
    /// Requested platforms the source does not offer.
    pub missing_platforms: Vec<Platform>,
    /// Whether a new, filtered index was written (its digest differs from the source's).
    pub filtered: bool,
    /// The image's signatures, attestations and SBOMs.
    pub referrers: ReferrerReport,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A registry request failed.
    #[error("{action}: {source}")]
    Registry {
        /// What was being done, with the reference.
        action: Box<str>,
        /// Whether reading the source or checking or writing the target failed.
        side: Side,
        /// The registry host of that side (a source's read mirrors fall back to it).
        host: Box<str>,
        /// The failure.
        #[source]
        source: RegistryError,
    },
    /// The source reference does not exist.
    #[error("source {0} not found")]
    SourceNotFound(String),
    /// A manifest cannot be copied.
    #[error("{reference}: {source}")]
    Manifest {
        /// The manifest's reference.
        reference: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// None of the requested platforms exist.
    #[error("{reference}: {source}")]
    Platforms {
        /// The source.
        reference: String,
        /// Requested and available platforms.
        #[source]
        source: NoMatchingPlatform,
    },
    /// The target tag holds other content and may not be overwritten.
    #[error(
        "target {target} exists with digest {existing}, refusing to overwrite it with {new} (allowDifferentDigestRepush is false)"
    )]
    TagConflict {
        /// The target reference.
        target: String,
        /// Digest at the target.
        existing: Digest,
        /// Digest that would be written.
        new: Digest,
    },
    /// The target repository cannot be prepared (ECR: missing and not allowed to create, or the
    /// AWS call failed).
    #[error("target repository: {0}")]
    Repository(#[source] RepositoryError),
    /// The target cannot be named (`$arch` from the image made an invalid repository name).
    #[error("cannot name the target: {0}")]
    TargetName(#[source] NamingError),
    /// The source refused the pull secrets tried, and the configured credentials (or anonymous
    /// access) after them.
    #[error("the source refused pull secret {}: {refusal}", .secrets.join(", "))]
    PullSecretRefused {
        /// The pull secrets refused (`namespace/name`), in the order tried.
        secrets: Vec<String>,
        /// The refusal of the first of them.
        #[source]
        refusal: Box<CopyError>,
    },
    /// A pull-through cache does not serve the image it was just read through.
    #[error("pull-through cache {target}: {detail}")]
    NotServed {
        /// The image at the cache.
        target: String,
        /// What it serves instead.
        detail: String,
    },
    /// The whole-image deadline passed.
    #[error("copy to {target} did not finish within {after:?}")]
    DeadlineExceeded {
        /// The target reference.
        target: String,
        /// The deadline.
        after: Duration,
    },
}

impl CopyError {
    /// Whether trying again later may succeed (the daemon's cooldown decides when).
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Registry { source, .. } => {
                source.is_retryable() || matches!(source, RegistryError::RateLimited { .. })
            }
            CopyError::Repository(e) => e.transient,
            CopyError::DeadlineExceeded { .. } | CopyError::SourceNotFound(_) | CopyError::NotServed { .. } => true,
            _ => false,
        }
    }

    /// Which side failed: the source for a missing source, an unusable manifest or platform list,
    /// the target for a tag conflict, a target repository that cannot be prepared or named, and the
    /// whole-image deadline; a registry failure says which side it happened on.
    pub fn side(&self) -> Side {
        match self {
            CopyError::Registry { side, .. } => *side,
            CopyError::SourceNotFound(_)
            | CopyError::Manifest { .. }
            | CopyError::Platforms { .. }
            | CopyError::PullSecretRefused { .. } => Side::Source,
            CopyError::TagConflict { .. }
            | CopyError::Repository(_)
            | CopyError::TargetName(_)
            | CopyError::NotServed { .. }
            | CopyError::DeadlineExceeded { .. } => Side::Target,
        }
    }
}

impl CopyError {
    /// Whether the source refused these credentials, or hid the image from them (registries answer
    /// 404 for private images): other credentials may do.
    fn is_source_access_denied(&self) -> bool {
        matches!(self, CopyError::SourceNotFound(_)) || self.is_source_refusal()
    }

    /// Whether the source refused the credentials (authentication failed, 401, 403).
    fn is_source_refusal(&self) -> bool {
        matches!(
            self,
            CopyError::Registry {
                side: Side::Source,
                source: RegistryError::Auth { .. } | RegistryError::Status { status: 401 | 403, .. },
                ..
            }
        )
    }
}

/// A failed `action` on `side`, whose registry is `host`.
fn registry_error(side: Side, host: &str, action: impl Into<String>) -> impl FnOnce(RegistryError) -> CopyError {
    let (host, action): (Box<str>, String) = (host.into(), action.into());
    move |source| CopyError::Registry {
        action: action.into(),
        side,
        host,
        source,
    }
}

/// A failed `action` reading the source at `host`.
fn source_error(host: &str, action: impl Into<String>) -> impl FnOnce(RegistryError) -> CopyError {
    registry_error(Side::Source, host, action)
}

/// A failed `action` checking or writing the target at `host`.
fn target_error(host: &str, action: impl Into<String>) -> impl FnOnce(RegistryError) -> CopyError {
    registry_error(Side::Target, host, action)
}

/// Copies images; shares blob locks and the mount cache across every copy it runs.
#[derive(Clone)]
pub struct Copier {
    registries: Registries,
    /// Read mirrors per source registry host, tried in order before the registry itself.
    mirrors: Arc<HashMap<String, Vec<String>>>,
    /// Preparation of target repositories before their first write, per target host.
    preparers: Arc<HashMap<String, Arc<dyn RepositoryPreparer>>>,
    shared: Arc<Shared>,
    /// What the copier knows about related artifacts ([`referrers`]).
    referrers: Arc<ReferrerState>,
}

struct Shared {
    /// One transfer per (target host, digest) at a time: an image waiting on a layer another image is
    /// pushing then mounts it instead of transferring it again.
    blob_locks: KeyedLocks<(String, Digest)>,
    /// Repositories of a target host known to hold a digest: candidates for cross-repository mounts.
    known: moka::sync::Cache<(String, Digest), Arc<Vec<String>>>,
    /// Digest of the filtered index produced for (source index digest, platforms), so an unchanged
    /// filtered copy is recognised by HEADs alone.
    filtered: moka::sync::Cache<(Digest, String), Digest>,
    /// Blob bytes moved by every copy.
    total_bytes: AtomicU64,
    /// `$arch` of source digests already looked at.
    architectures: moka::sync::Cache<Digest, String>,
}

/// What a copy writes under the tag once the platform list is applied.
struct Selected {
    /// The manifest written under the tag.
    top: Manifest,
    /// It, parsed.
    parsed: Parsed,
    /// The manifests it lists that are copied (an index's kept entries).
    children: Vec<Descriptor>,
    /// Requested platforms the source lacks.
    missing: Vec<Platform>,
    /// Whether `top` is a new, filtered index.
    filtered: bool,
    /// Its level in the source image (1: the source's own top manifest).
    level: usize,
}

/// What a copy decided, before its counters are added to the report.
struct Decision {
    outcome: Outcome,
    source_digest: Digest,
    digest: Option<Digest>,
    missing_platforms: Vec<Platform>,
    filtered: bool,
}

/// Per-copy counters.
#[derive(Default)]
struct Counters {
    bytes: Arc<AtomicU64>,
    skipped: AtomicU32,
    mounted: AtomicU32,
    transferred: AtomicU32,
    manifests: AtomicU32,
}

impl Counters {
    /// Whether anything was written to the target (a blob mounted or streamed, a manifest by digest).
    fn wrote(&self) -> bool {
        [&self.mounted, &self.transferred, &self.manifests]
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
    }
}

/// The pieces of one copy that every step needs.
struct Job<'a> {
    /// The source registry; reads go through `readers` (mirrors first, then `src`).
    src: Registry,
    readers: Vec<Registry>,
    src_repo: &'a str,
    dst: Registry,
    dst_repo: &'a str,
    opts: &'a CopyOptions,
    counters: Counters,
}

impl Copier {
    /// A copier over `registries`.
    pub fn new(registries: Registries) -> Copier {
        Copier {
            registries,
            mirrors: Arc::default(),
            preparers: Arc::default(),
            shared: Arc::new(Shared {
                blob_locks: KeyedLocks::new(),
                known: moka::sync::Cache::new(100_000),
                filtered: moka::sync::Cache::new(10_000),
                total_bytes: AtomicU64::new(0),
                architectures: moka::sync::Cache::new(10_000),
            }),
            referrers: Arc::new(ReferrerState::new(referrers::DEFAULT_INTERVAL)),
        }
    }

    /// An image's related artifacts are looked for at most once per `every` (a re-sign upstream
    /// reaches the target within it).
    pub fn with_referrers_interval(mut self, every: Duration) -> Copier {
        self.referrers = Arc::new(ReferrerState::new(every));
        self
    }

    /// Reads from each source host in `mirrors` try those hosts first, in order, and fall back to the
    /// host itself when a mirror fails or lacks the content. Writes never go to a mirror.
    pub fn with_mirrors(mut self, mirrors: HashMap<String, Vec<String>>) -> Copier {
        self.mirrors = Arc::new(mirrors);
        self
    }

    /// Repositories of target `host` are prepared by `preparer` before anything is written to them
    /// (never in a dry run).
    pub fn with_preparer(mut self, host: &str, preparer: Arc<dyn RepositoryPreparer>) -> Copier {
        Arc::make_mut(&mut self.preparers).insert(host.to_ascii_lowercase(), preparer);
        self
    }

    /// The registry clients this copier uses.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Blob bytes moved by this copier so far.
    pub fn total_bytes(&self) -> u64 {
        self.shared.total_bytes.load(Ordering::Relaxed)
    }

    /// Copies `req` according to `opts`. With source credentials, each is tried in order while the
    /// source refuses access, then the configured credentials. When the target is a pull-through
    /// cache (`opts.pull_through`), the image is read through it instead ([`warm`]).
    pub async fn copy(&self, req: &CopyRequest, opts: &CopyOptions) -> Result<CopyReport, CopyError> {
        if let Some(how) = opts.pull_through {
            return self.warm(req, opts, how).await;
        }
        self.with_source(&req.source, &opts.source_credentials, |src| {
            self.copy_from(req, opts, src)
        })
        .await
    }

    /// `$arch` of `source` as k8s-copycat names it (see [`arch`]): a single image's config
    /// architecture, or an index's architectures joined with `-`; with the digest it was read from,
    /// so the copy can be pinned to the image that named it. Remembered per source digest, so an
    /// unchanged source costs one HEAD.
    pub async fn source_architecture(
        &self,
        source: &ImageRef,
        opts: &CopyOptions,
    ) -> Result<(Digest, String), CopyError> {
        self.with_source(source, &opts.source_credentials, |src| {
            self.architecture_from(source, src)
        })
        .await
    }

    /// Every tag of `source`'s repository, read as a copy of it reads the source: with each of
    /// `credentials` (pull secrets, a Flux `spec.secretRef`) in order while the source refuses
    /// access, then with the configured ones; a refusal of all of them after a pull secret was
    /// refused is [`CopyError::PullSecretRefused`]. Listed at the registry itself, never through a
    /// read mirror (a mirror holds only the tags read through it). Empty when the repository does
    /// not exist.
    pub async fn list_source_tags(
        &self,
        source: &ImageRef,
        credentials: &[PullSecret],
    ) -> Result<Vec<String>, CopyError> {
        let repo = source.repository();
        self.with_source(source, credentials, |src| async move {
            let action = format!("list tags of {}", source.name());
            src.list_tags(repo).await.map_err(source_error(src.host(), action))
        })
        .await
    }

    /// Runs `attempt` with the source registry client for each of `credentials` (pull secrets) in
    /// order while the source refuses access, then with the configured credentials. When those are
    /// refused too after a pull secret was refused, the error says so, naming the pull secrets
    /// (the configured credentials' refusal, often "no credentials are configured", says little).
    async fn with_source<T, F, Fut>(
        &self,
        source: &ImageRef,
        credentials: &[PullSecret],
        attempt: F,
    ) -> Result<T, CopyError>
    where
        F: Fn(Registry) -> Fut,
        Fut: Future<Output = Result<T, CopyError>>,
    {
        let src = self.registries.get(source.registry());
        let mut refused: Vec<String> = Vec::new();
        let mut first_refusal = None;
        for secret in credentials {
            match attempt(src.with_credential(secret.credential.clone())).await {
                Err(e) if e.is_source_access_denied() => {
                    tracing::debug!(source = %source, secret = %secret.name, error = %e,
                        "pull secret refused; trying the next credentials");
                    if e.is_source_refusal() {
                        refused.push(secret.name.clone());
                        first_refusal.get_or_insert(e);
                    }
                }
                result => return result,
            }
        }
        match (attempt(src).await, first_refusal) {
            (Err(e), Some(refusal)) if e.is_source_access_denied() => Err(CopyError::PullSecretRefused {
                secrets: refused,
                refusal: Box::new(refusal),
            }),
            (result, _) => result,
        }
    }

    /// The read mirrors of `src`'s host, then `src`.
    fn readers(&self, src: &Registry) -> Vec<Registry> {
        let mut readers: Vec<Registry> = self
            .mirrors
            .get(src.host())
            .into_iter()
            .flatten()
            .map(|m| self.registries.get(m))
            .collect();
        readers.push(src.clone());
        readers
    }

    async fn architecture_from(&self, source: &ImageRef, src: Registry) -> Result<(Digest, String), CopyError> {
        let readers = self.readers(&src);
        let repo = source.repository();
        let digest = source_digest(source, &readers).await?;
        if let Some(arch) = self.shared.architectures.get(&digest) {
            return Ok((digest, arch));
        }
        let reference = digest.to_string();
        let manifest = read(
            &readers,
            |r| r.get_manifest(repo, &reference, MAX_MANIFEST_SIZE).boxed(),
            |_| true,
        )
        .await
        .map_err(source_error(
            src.host(),
            format!("GET manifest {}@{digest}", source.name()),
        ))?;
        let parsed = parse_manifest(&manifest, source)?;
        let arch = match (parsed.kind, &parsed.config) {
            (Kind::Image, Some(config)) => {
                let bytes = read(&readers, |r| read_small_blob(r, repo, config).boxed(), |_| true)
                    .await
                    .map_err(source_error(
                        src.host(),
                        format!("GET config {}@{}", source.name(), config.digest),
                    ))?;
                arch::config_architecture(&bytes).map_err(|error| CopyError::Manifest {
                    reference: format!("{}@{}", source.name(), config.digest),
                    source: error,
                })?
            }
            _ => arch::index_architectures(&parsed.manifests),
        };
        self.shared.architectures.insert(digest.clone(), arch.clone());
        Ok((digest, arch))
    }

    /// The pieces of one copy (or check, without `writing`) of `req` from `src`.
    fn job<'a>(&self, req: &'a CopyRequest, opts: &'a CopyOptions, src: Registry, writing: bool) -> Job<'a> {
        let readers = self.readers(&src);
        let dst = self.registries.get(req.target.registry());
        Job {
            src,
            readers,
            src_repo: req.source.repository(),
            dst: if writing {
                dst.for_writing(req.target.repository())
            } else {
                dst
            },
            dst_repo: req.target.repository(),
            opts,
            counters: Counters::default(),
        }
    }

    async fn copy_from(&self, req: &CopyRequest, opts: &CopyOptions, src: Registry) -> Result<CopyReport, CopyError> {
        let job = self.job(req, opts, src, !opts.dry_run);
        // The source's tag list, which the look for related artifacts needs, is asked for while the
        // image is copied: an unchanged image then costs no extra round trip.
        let (result, tags) = futures::join!(
            within_deadline(req, opts, self.run(req, &job)),
            self.prefetch_tags(req, &job)
        );
        let referrers = match &result {
            Ok(Decision {
                digest: Some(digest),
                filtered,
                outcome,
                ..
            }) => {
                let written = *outcome != Outcome::AlreadyPresent;
                self.copy_referrers(req, &job, (digest, *filtered, written), tags).await
            }
            _ => ReferrerReport::default(),
        };
        let bytes = job.counters.bytes.load(Ordering::Relaxed);
        self.shared.total_bytes.fetch_add(bytes, Ordering::Relaxed);
        let Decision {
            outcome,
            source_digest,
            digest,
            missing_platforms,
            filtered,
        } = result?;
        Ok(CopyReport {
            outcome,
            source_digest,
            digest,
            bytes,
            blobs_skipped: job.counters.skipped.load(Ordering::Relaxed),
            blobs_mounted: job.counters.mounted.load(Ordering::Relaxed),
            blobs_transferred: job.counters.transferred.load(Ordering::Relaxed),
            blobs_warmed: 0,
            manifests_written: job.counters.manifests.load(Ordering::Relaxed),
            missing_platforms,
            filtered,
            referrers,
        })
    }

    async fn run(&self, req: &CopyRequest, job: &Job<'_>) -> Result<Decision, CopyError> {
        let opts = job.opts;
        let platforms_key = opts
            .platforms
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");

        // 1. The source digest, by HEAD (free on Docker Hub) unless the reference pins it.
        let source_digest = source_digest(&req.source, &job.readers).await?;

        // 2. What the target should end up holding, when already known without a GET.
        let expected = if opts.platforms.is_empty() {
            Some(source_digest.clone())
        } else {
            self.shared
                .filtered
                .get(&(source_digest.clone(), platforms_key.clone()))
        };
        let target_head = self.head_target(req, job, expected.as_ref()).await?;
        if let (Some(want), Some(head)) = (&expected, &target_head)
            && head.digest == *want
            && !opts.repair
        {
            self.referrers.remember_media_type(want, &head.media_type);
            return Ok(Decision {
                outcome: Outcome::AlreadyPresent,
                source_digest,
                digest: Some(want.clone()),
                missing_platforms: vec![],
                filtered: !opts.platforms.is_empty(),
            });
        }
        if let Some(want) = &expected {
            check_overwrite(req, opts, target_head.as_ref(), want)?;
            if opts.dry_run {
                return Ok(Decision {
                    outcome: Outcome::WouldCopy,
                    source_digest,
                    digest: Some(want.clone()),
                    missing_platforms: vec![],
                    filtered: !opts.platforms.is_empty(),
                });
            }
        }

        // 3. Only now GET the source manifest, by digest so we copy exactly what we compared.
        let top = self.get_manifest(job, &source_digest.to_string(), &req.source).await?;
        let top_parsed = parse_manifest(&top, &req.source)?;
        let mut budget = Budget::default();
        admit(&mut budget, &top_parsed, 1, &req.source, &top.digest)?;
        let Selected {
            top,
            parsed: top_parsed,
            children,
            missing,
            filtered,
            level,
        } = self
            .apply_platforms(req, job, top, top_parsed, &platforms_key, &mut budget)
            .await?;
        let target_head = match target_head {
            // A digest-only target is looked up by the digest we now know.
            None if req.target_tag.is_none() => self.head_target(req, job, Some(&top.digest)).await?,
            head => head,
        };

        let tagged = target_head.as_ref().is_some_and(|head| head.digest == top.digest);
        if tagged && !opts.repair {
            return Ok(Decision {
                outcome: Outcome::AlreadyPresent,
                source_digest,
                digest: Some(top.digest),
                missing_platforms: missing,
                filtered,
            });
        }
        check_overwrite(req, opts, target_head.as_ref(), &top.digest)?;
        if opts.dry_run {
            return Ok(Decision {
                outcome: Outcome::WouldCopy,
                source_digest,
                digest: Some(top.digest),
                missing_platforms: missing,
                filtered,
            });
        }

        // 4. Content first: children (with their blobs) by digest, or the image's blobs.
        if let Some(preparer) = self.preparers.get(job.dst.host()) {
            preparer.ensure(job.dst_repo).await.map_err(CopyError::Repository)?;
        }
        // The referrer walk below it then needs no read at the target (an image lists nothing).
        self.referrers.remember_children(&top.digest, &children);
        match top_parsed.kind {
            Kind::Index => self.copy_children(req, job, children, level, &mut budget).await?,
            Kind::Image => self.copy_blobs(job, &top_parsed).await?,
        }

        // 5. The tag last, unless it holds the digest (repair mode).
        if tagged {
            let wrote = job.counters.wrote();
            if wrote {
                tracing::info!(target = %req.target_display(Some(&top.digest)),
                    manifests = job.counters.manifests.load(Ordering::Relaxed),
                    blobs_transferred = job.counters.transferred.load(Ordering::Relaxed),
                    blobs_mounted = job.counters.mounted.load(Ordering::Relaxed),
                    bytes = job.counters.bytes.load(Ordering::Relaxed),
                    "repaired the target: copied what was missing under its tag");
            }
            return Ok(Decision {
                outcome: if wrote {
                    Outcome::Copied
                } else {
                    Outcome::AlreadyPresent
                },
                source_digest,
                digest: Some(top.digest),
                missing_platforms: missing,
                filtered,
            });
        }
        let reference = req.target_tag.clone().unwrap_or_else(|| top.digest.to_string());
        let written = job
            .dst
            .put_manifest(job.dst_repo, &reference, top.bytes.clone(), &top.media_type)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("PUT manifest {}", req.target_display(Some(&top.digest))),
            ))?;
        if written != top.digest {
            tracing::warn!(target = %req.target_display(None), expected = %top.digest, reported = %written,
                "target registry reports a different digest for the manifest it stored");
        }
        Ok(Decision {
            outcome: Outcome::Copied,
            source_digest,
            digest: Some(top.digest),
            missing_platforms: missing,
            filtered,
        })
    }

    async fn head_target(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        expected: Option<&Digest>,
    ) -> Result<Option<ManifestHead>, CopyError> {
        let reference = match (&req.target_tag, expected) {
            (Some(tag), _) => tag.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => return Ok(None),
        };
        job.dst
            .head_manifest(job.dst_repo, &reference)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("HEAD target {}", req.target_display(expected)),
            ))
    }

    async fn get_manifest(&self, job: &Job<'_>, reference: &str, shown: &ImageRef) -> Result<Manifest, CopyError> {
        read(
            &job.readers,
            |r| r.get_manifest(job.src_repo, reference, MAX_MANIFEST_SIZE).boxed(),
            |_| true,
        )
        .await
        .map_err(source_error(
            job.src.host(),
            format!("GET manifest {}@{reference}", shown.name()),
        ))
    }

    /// Applies the platform list to an index: the manifest to write under the tag, what it needs, the
    /// missing platforms and whether a new index was built. A single platform's manifest, written
    /// under the tag, is level 2 of the source image: an index there is admitted to `budget`.
    async fn apply_platforms(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        top: Manifest,
        parsed: Parsed,
        platforms_key: &str,
        budget: &mut Budget,
    ) -> Result<Selected, CopyError> {
        if parsed.kind == Kind::Image || job.opts.platforms.is_empty() {
            let children = parsed.manifests.clone();
            return Ok(Selected {
                top,
                parsed,
                children,
                missing: vec![],
                filtered: false,
                level: 1,
            });
        }
        let (selection, missing) =
            select::select(&top.bytes, &parsed.manifests, &job.opts.platforms).map_err(|source| {
                CopyError::Platforms {
                    reference: req.source.to_string(),
                    source,
                }
            })?;
        match selection {
            Selection::Single(entry) => {
                let child = self.get_manifest(job, &entry.digest.to_string(), &req.source).await?;
                let child_parsed = parse_manifest(&child, &req.source)?;
                admit(budget, &child_parsed, 2, &req.source, &child.digest)?;
                let children = child_parsed.manifests.clone();
                Ok(Selected {
                    top: child,
                    parsed: child_parsed,
                    children,
                    missing,
                    filtered: false,
                    level: 2,
                })
            }
            Selection::Filtered { bytes, kept } => {
                let digest = sha256_digest(&bytes);
                self.shared
                    .filtered
                    .insert((top.digest.clone(), platforms_key.to_owned()), digest.clone());
                let manifest = Manifest {
                    bytes: Bytes::from(bytes),
                    media_type: parsed.media_type.clone(),
                    digest,
                };
                Ok(Selected {
                    top: manifest,
                    parsed,
                    children: kept,
                    missing,
                    filtered: true,
                    level: 1,
                })
            }
        }
    }

    /// Copies the manifests below the index written under the tag (its `children`; the index is at
    /// `level` of the source image) by digest, each after what it references, skipping those the
    /// target has; in repair mode those are read from the target and walked too, so what is missing
    /// below them is copied (they are not written again). Depth first with a list of the indexes
    /// open, not recursion: a hostile chain of indexes costs heap, not stack, and is refused by
    /// `budget` at [`manifest::MAX_INDEX_DEPTH`] before any entry of the index breaking a limit is
    /// copied.
    async fn copy_children(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        children: Vec<Descriptor>,
        level: usize,
        budget: &mut Budget,
    ) -> Result<(), CopyError> {
        /// An index being copied: its manifest to write once its entries are (`None` for the one
        /// under the tag, which the caller writes, and for one the target has) and the entries not
        /// copied yet.
        struct Open {
            index: Option<Manifest>,
            entries: std::vec::IntoIter<Descriptor>,
        }
        let mut open = vec![Open {
            index: None,
            entries: children.into_iter(),
        }];
        while let Some(current) = open.last_mut() {
            let Some(child) = current.entries.next() else {
                if let Some(index) = open.pop().and_then(|done| done.index) {
                    self.put_child(req, job, index).await?;
                }
                continue;
            };
            let digest = child.digest.to_string();
            let present = job
                .dst
                .head_manifest(job.dst_repo, &digest)
                .await
                .map_err(target_error(
                    job.dst.host(),
                    format!("HEAD target {}@{digest}", req.target.name()),
                ))?;
            let manifest = match &present {
                None => self.get_manifest(job, &digest, &req.source).await?,
                Some(_) if !job.opts.repair => continue,
                Some(_) => job
                    .dst
                    .get_manifest(job.dst_repo, &digest, MAX_MANIFEST_SIZE)
                    .await
                    .map_err(target_error(
                        job.dst.host(),
                        format!("GET manifest {}@{digest}", req.target.name()),
                    ))?,
            };
            let shown = if present.is_some() { &req.target } else { &req.source };
            let parsed = parse_manifest(&manifest, shown)?;
            // What the target has already is walked, not written again.
            let to_write = present.is_none().then_some(manifest);
            match parsed.kind {
                Kind::Index => {
                    admit(budget, &parsed, level + open.len(), shown, &child.digest)?;
                    self.referrers.remember_children(&child.digest, &parsed.manifests);
                    open.push(Open {
                        index: to_write,
                        entries: parsed.manifests.into_iter(),
                    });
                }
                Kind::Image => {
                    self.copy_blobs(job, &parsed).await?;
                    if let Some(manifest) = to_write {
                        self.put_child(req, job, manifest).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a manifest below the tag, by its digest.
    async fn put_child(&self, req: &CopyRequest, job: &Job<'_>, manifest: Manifest) -> Result<(), CopyError> {
        let digest = manifest.digest.to_string();
        job.dst
            .put_manifest(job.dst_repo, &digest, manifest.bytes, &manifest.media_type)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("PUT manifest {}@{digest}", req.target.name()),
            ))?;
        job.counters.manifests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn copy_blobs(&self, job: &Job<'_>, parsed: &Parsed) -> Result<(), CopyError> {
        let copies: Vec<_> = parsed.blobs().map(|blob| self.copy_blob(job, blob)).collect();
        futures::stream::iter(copies)
            .buffer_unordered(job.opts.blob_concurrency.max(1))
            .try_collect::<()>()
            .await
    }

    /// One blob: present → skip; known in another target repository (or the source shares the
    /// registry) → mount; otherwise stream it, verified, in one monolithic upload.
    async fn copy_blob(&self, job: &Job<'_>, blob: &Descriptor) -> Result<(), CopyError> {
        let key = (job.dst.host().to_owned(), blob.digest.clone());
        let _transfer = self.shared.blob_locks.lock(key.clone()).await;
        let shown = format!("{}/{}@{}", job.dst.host(), job.dst_repo, blob.digest);
        let present = job
            .dst
            .blob_size(job.dst_repo, &blob.digest)
            .await
            .map_err(target_error(job.dst.host(), format!("HEAD blob {shown}")))?;
        if present.is_some() {
            job.counters.skipped.fetch_add(1, Ordering::Relaxed);
            self.remember(&key, job.dst_repo);
            return Ok(());
        }
        for from in self.mount_candidates(job, &key) {
            match job.dst.mount_blob(job.dst_repo, &blob.digest, &from).await {
                Ok(MountOutcome::Mounted) => {
                    job.counters.mounted.fetch_add(1, Ordering::Relaxed);
                    self.remember(&key, job.dst_repo);
                    return Ok(());
                }
                Ok(MountOutcome::NotMounted) => {}
                Err(e) => tracing::debug!(blob = %shown, from = %from, error = %e, "mount failed; will copy instead"),
            }
        }
        let (readers, src_repo, digest, size) = (
            job.readers.clone(),
            job.src_repo.to_owned(),
            blob.digest.clone(),
            blob.size,
        );
        let progress = job.counters.bytes.clone();
        let open = move || {
            let (readers, src_repo, digest, progress) =
                (readers.clone(), src_repo.clone(), digest.clone(), progress.clone());
            async move {
                let download = read(&readers, |r| r.get_blob(&src_repo, &digest).boxed(), |_| true).await?;
                Ok(verify::verified(download.stream, &digest, size, progress))
            }
            .boxed()
        };
        job.dst
            .push_blob(job.dst_repo, &blob.digest, blob.size, &open)
            .await
            .map_err(|e| {
                let host = match e.side {
                    Side::Source => job.src.host(),
                    Side::Target => job.dst.host(),
                };
                let action = format!(
                    "copy blob {}/{}@{} to {shown}",
                    job.src.host(),
                    job.src_repo,
                    blob.digest
                );
                registry_error(e.side, host, action)(e.error)
            })?;
        job.counters.transferred.fetch_add(1, Ordering::Relaxed);
        self.remember(&key, job.dst_repo);
        Ok(())
    }

    fn mount_candidates(&self, job: &Job<'_>, key: &(String, Digest)) -> Vec<String> {
        let mut candidates: Vec<String> = Vec::new();
        if job.src.host() == job.dst.host() {
            candidates.push(job.src_repo.to_owned());
        }
        if let Some(known) = self.shared.known.get(key) {
            candidates.extend(known.iter().cloned());
        }
        candidates.retain(|r| r != job.dst_repo);
        candidates.dedup();
        candidates.truncate(MOUNT_CANDIDATES);
        candidates
    }

    fn remember(&self, key: &(String, Digest), repo: &str) {
        let mut repos: Vec<String> = self.shared.known.get(key).map(|r| r.to_vec()).unwrap_or_default();
        if !repos.iter().any(|r| r == repo) {
            repos.insert(0, repo.to_owned());
            repos.truncate(MOUNT_CANDIDATES);
            self.shared.known.insert(key.clone(), Arc::new(repos));
        }
    }
}

/// Runs `work` for `req` within the whole-image deadline of `opts`, if any.
async fn within_deadline<T>(
    req: &CopyRequest,
    opts: &CopyOptions,
    work: impl Future<Output = Result<T, CopyError>>,
) -> Result<T, CopyError> {
    match opts.deadline {
        Some(after) => tokio::time::timeout(after, work).await.unwrap_or_else(|_| {
            Err(CopyError::DeadlineExceeded {
                target: req.target_display(None),
                after,
            })
        }),
        None => work.await,
    }
}

/// Runs a read against each of `readers` in turn (mirrors, then the registry itself): the first
/// mirror answer that is `found` wins; a mirror's failure falls through to the next reader.
async fn read<'r, T>(
    readers: &'r [Registry],
    op: impl Fn(&'r Registry) -> BoxFuture<'r, Result<T, RegistryError>>,
    found: impl Fn(&T) -> bool,
) -> Result<T, RegistryError> {
    let (upstream, mirrors) = readers.split_last().expect("the source registry is always a reader");
    for mirror in mirrors {
        match op(mirror).await {
            Ok(value) if found(&value) => return Ok(value),
            Ok(_) => tracing::debug!(
                mirror = mirror.host(),
                "mirror lacks the content; trying the next reader"
            ),
            Err(e) => tracing::debug!(mirror = mirror.host(), error = %e, "mirror failed; trying the next reader"),
        }
    }
    op(upstream).await
}

/// The source registry itself, the last of `readers` (mirrors come first).
fn upstream(readers: &[Registry]) -> &Registry {
    readers.last().expect("the source registry is always a reader")
}

/// The digest `source` pins, or the one a HEAD of its tag reports (free on Docker Hub).
async fn source_digest(source: &ImageRef, readers: &[Registry]) -> Result<Digest, CopyError> {
    if let Some(d) = source.digest() {
        return Ok(d.clone());
    }
    let tag = source.tag().unwrap_or("latest");
    let head = read(
        readers,
        |r| r.head_manifest(source.repository(), tag).boxed(),
        Option::is_some,
    )
    .await
    .map_err(source_error(upstream(readers).host(), format!("HEAD source {source}")))?;
    head.map(|h| h.digest)
        .ok_or_else(|| CopyError::SourceNotFound(source.to_string()))
}

/// A small blob (an image config) read whole and verified.
async fn read_small_blob(registry: &Registry, repo: &str, blob: &Descriptor) -> Result<Bytes, RegistryError> {
    if blob.size > MAX_MANIFEST_SIZE {
        return Err(RegistryError::Invalid(format!(
            "config blob {} of {} bytes is over the {MAX_MANIFEST_SIZE}-byte limit",
            blob.digest, blob.size
        )));
    }
    let download = registry.get_blob(repo, &blob.digest).await?;
    let stream = verify::verified(download.stream, &blob.digest, blob.size, Arc::default());
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat().into())
}

/// Admits the entries of `parsed`, when it is an index at `level` of the source image, to `budget`;
/// the error names the index (`shown@digest`) and the limit.
fn admit(
    budget: &mut Budget,
    parsed: &Parsed,
    level: usize,
    shown: &ImageRef,
    digest: &Digest,
) -> Result<(), CopyError> {
    if parsed.kind != Kind::Index {
        return Ok(());
    }
    budget
        .admit(parsed.manifests.len(), level)
        .map_err(|source| CopyError::Manifest {
            reference: format!("{}@{digest}", shown.name()),
            source,
        })
}

fn parse_manifest(manifest: &Manifest, shown: &ImageRef) -> Result<Parsed, CopyError> {
    manifest::parse(&manifest.bytes, &manifest.media_type).map_err(|source| CopyError::Manifest {
        reference: format!("{}@{}", shown.name(), manifest.digest),
        source,
    })
}

fn check_overwrite(
    req: &CopyRequest,
    opts: &CopyOptions,
    target: Option<&ManifestHead>,
    new: &Digest,
) -> Result<(), CopyError> {
    let (Some(tag), Some(head)) = (&req.target_tag, target) else {
        return Ok(());
    };
    let always = opts.always_overwrite_tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    if head.digest == *new || opts.allow_overwrite || always {
        return Ok(());
    }
    Err(CopyError::TagConflict {
        target: req.target_display(None),
        existing: head.digest.clone(),
        new: new.clone(),
    })
}

/// `sha256:` digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Digest::sha256_hex(&hex).expect("64 hex characters")
}
