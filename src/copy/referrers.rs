//! Related artifacts travel with an image: once an image is at the target, the signatures,
//! attestations and SBOMs of each of its manifests (the index and each child) are found at the
//! source and copied byte-exactly, with the same HEAD-first, mount and retry rules as images:
//!
//! - the cosign tag scheme: `sha256-<hex>.sig`, `.att`, `.sbom` tags in the same repository, copied
//!   under the same tag;
//! - OCI 1.1 referrers: the Referrers API where the source serves it, else the referrers tag schema
//!   (an index tagged `sha256-<hex>`); each referrer is pushed by digest with its `subject`, and when
//!   the target does not index subjects itself, its own `sha256-<hex>` index is *merged* (read,
//!   merge, write, read back; never dropping an entry another writer added);
//! - recursively (a signature of an attestation) to the policy's depth.
//!
//! Cost: one tag list of the source repository per image (shared by the images of a repository
//! looked at within a short time), plus one Referrers API call per digest where the source serves it
//! (learnt once per host), and nothing else when there is nothing to copy.
//! A target image is looked at once per `referrersInterval`; calls within it cost nothing, unless the
//! image itself had to be written (the target lost it, so it likely lost its artifacts too). The
//! looks can be kept across processes ([`Copier::referrer_looks`]): `copycat sync` keeps them in a
//! state file, so a cron job every few minutes asks the source once an interval, as the daemon does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::manifest::{self, Budget, Descriptor, Kind, Parsed};
use super::{
    Copier, CopyError, CopyOptions, CopyRequest, Job, MAX_MANIFEST_SIZE, admit, parse_manifest, read, target_error,
};
use super::{locks::KeyedLocks, source_error};
use crate::reference::Digest;
use crate::referrer_policy::CosignTag;
use crate::registry::{Manifest, ReferrerDescriptor, ReferrerIndex, RegistryError};

/// How often a mirrored image's referrers are looked for by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Most looks remembered (images, and source/target reference pairs).
pub const MAX_LOOKS: u64 = 100_000;
/// Most referrers copied with one image (every level): a hostile source cannot make it endless.
const MAX_REFERRERS: usize = 1_000;
/// Attempts at merging the target's fallback index while other writers change it.
const MERGE_ATTEMPTS: u32 = 5;
/// Wait before merging again, times the attempt.
const MERGE_BACKOFF: Duration = Duration::from_millis(50);
/// Longest a source repository's tag list is shared by the looks of its images (less when the
/// interval is short). A re-sign landing after a shared list was fetched waits for the image's next
/// look: kept short, so that stays rare.
const TAG_LIST_REUSE: Duration = Duration::from_secs(10);
/// Least wait after writing the fallback index before checking no other writer replaced it.
const MERGE_SETTLE: Duration = Duration::from_millis(200);
/// Longest tag the distribution spec allows.
const MAX_TAG_LENGTH: usize = 128;
/// Config media types that say nothing about an artifact's type.
const GENERIC_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.empty.v1+json",
];

/// Where a referrer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrerSource {
    /// A cosign `sha256-<hex>.sig|.att|.sbom` tag.
    CosignTag,
    /// The source's Referrers API.
    ReferrersApi,
    /// The source's referrers tag schema index (`sha256-<hex>`).
    FallbackTag,
}

impl ReferrerSource {
    /// Every source, in the order of [`ReferrerReport::copied`].
    pub const ALL: [ReferrerSource; 3] = [
        ReferrerSource::CosignTag,
        ReferrerSource::ReferrersApi,
        ReferrerSource::FallbackTag,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReferrerSource::CosignTag => "cosign-tag",
            ReferrerSource::ReferrersApi => "referrers-api",
            ReferrerSource::FallbackTag => "fallback-tag",
        }
    }
}

/// What a copy did about the image's related artifacts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferrerReport {
    /// Whether they were looked for (not: turned off, a dry run, or looked for within the interval).
    pub checked: bool,
    /// Not looked for because they were looked for within the interval (by this process, or by an
    /// earlier run whose looks were remembered).
    pub recent: bool,
    /// Related artifacts the target holds for the image (copied now or before), when looked for.
    pub found: u32,
    /// Copied now, by [`ReferrerSource::ALL`].
    pub copied: [u32; 3],
    /// In a check ([`Copier::missing_referrers`]): those the target lacks, or whose index there does
    /// not list them.
    pub missing: u32,
    /// Why looking for or copying them failed (the image itself is copied; tried again next time).
    pub error: Option<String>,
}

impl ReferrerReport {
    /// Copied now, all sources.
    pub fn copied_total(&self) -> u32 {
        self.copied.iter().sum()
    }

    fn count(&mut self, source: ReferrerSource, found: Found) {
        match found {
            Found::Present => self.found += 1,
            Found::Copied => {
                self.found += 1;
                self.copied[source as usize] += 1;
            }
            Found::Missing => self.missing += 1,
        }
    }
}

/// What became of one related artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The target held it.
    Present,
    /// Copied now.
    Copied,
    /// The target lacks it (a check writes nothing).
    Missing,
}

/// One look for an image's related artifacts, as a one-shot command keeps it between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerLook {
    /// The source reference as requested (`ghcr.io/org/app:1.2`).
    pub source: String,
    /// The target reference (`registry.example.com/mirror/app:1.2`).
    pub target: String,
    /// The source repository (`ghcr.io/org/app`).
    pub source_repository: String,
    /// The target repository (`registry.example.com/mirror/app`).
    pub target_repository: String,
    /// The image (its top manifest) whose related artifacts were looked for.
    pub digest: Digest,
    /// When, in whole seconds since the Unix epoch (rounded down: a remembered look ends early,
    /// never late).
    pub at: u64,
}

impl ReferrerLook {
    fn looked_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.at)
    }
}

/// A look within the interval: when, and the references it was made for (kept for
/// [`Copier::referrer_looks`]).
#[derive(Debug, Clone)]
struct Looked {
    at: SystemTime,
    source: String,
    target: String,
}

/// When a remembered value was looked at.
trait LookedAt {
    fn looked_at(&self) -> SystemTime;
}

impl LookedAt for Looked {
    fn looked_at(&self) -> SystemTime {
        self.at
    }
}

impl LookedAt for SystemTime {
    fn looked_at(&self) -> SystemTime {
        *self
    }
}

/// Entries live the interval from the look they record: a look remembered from an earlier run keeps
/// its age.
struct FromTheLook(Duration);

impl FromTheLook {
    fn remaining(&self, at: SystemTime) -> Duration {
        self.0
            .saturating_sub(SystemTime::now().duration_since(at).unwrap_or_default())
    }
}

impl<K, V: LookedAt> moka::Expiry<K, V> for FromTheLook {
    fn expire_after_create(&self, _: &K, value: &V, _: Instant) -> Option<Duration> {
        Some(self.remaining(value.looked_at()))
    }

    /// A new look replaces the old one's expiry (moka would keep the old one).
    fn expire_after_update(&self, _: &K, value: &V, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(self.remaining(value.looked_at()))
    }
}

/// What the copier remembers about related artifacts.
pub(super) struct ReferrerState {
    /// How long a look holds.
    interval: Duration,
    /// (source repository, target repository, top digest) looked at within the interval.
    checked: moka::sync::Cache<(String, String, Digest), Looked>,
    /// (source reference, target reference) looked at within the interval: no tag list is fetched
    /// ahead of the copy for them.
    checked_references: moka::sync::Cache<(String, String), SystemTime>,
    /// The manifests an index lists (content-addressed: never stale).
    children: moka::sync::Cache<Digest, Arc<Vec<Listed>>>,
    /// Tag lists by (source host, repository), shared by the looks of every image of a repository
    /// within a tenth of the interval (at most [`TAG_LIST_REUSE`]); concurrent looks share one request.
    tag_lists: moka::future::Cache<(String, String), Arc<Vec<String>>>,
    /// Whether a source host serves the Referrers API.
    source_api: Mutex<HashMap<String, bool>>,
    /// Whether a target host indexes `subject`s itself (Referrers API or `OCI-Subject`).
    target_api: Mutex<HashMap<String, bool>>,
    /// Target hosts known to honour conditional manifest writes (one answered 412 to `If-Match`).
    conditional: Mutex<HashMap<String, bool>>,
    /// One merge of a target's fallback index at a time per (host, repository, tag).
    index_locks: KeyedLocks<(String, String, String)>,
    /// One first Referrers API call per source host at a time, so a host is probed once.
    probing: KeyedLocks<String>,
}

impl ReferrerState {
    pub(super) fn new(interval: Duration) -> ReferrerState {
        let interval = interval.max(Duration::from_millis(1));
        ReferrerState {
            interval,
            checked: moka::sync::Cache::builder()
                .max_capacity(MAX_LOOKS)
                .expire_after(FromTheLook(interval))
                .build(),
            checked_references: moka::sync::Cache::builder()
                .max_capacity(MAX_LOOKS)
                .expire_after(FromTheLook(interval))
                .build(),
            children: moka::sync::Cache::new(10_000),
            tag_lists: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live((interval / 10).clamp(Duration::from_millis(1), TAG_LIST_REUSE))
                .build(),
            source_api: Mutex::default(),
            target_api: Mutex::default(),
            conditional: Mutex::default(),
            index_locks: KeyedLocks::new(),
            probing: KeyedLocks::new(),
        }
    }

    /// The looks within the interval, with the time each was made.
    fn looks(&self) -> Vec<ReferrerLook> {
        self.checked
            .iter()
            .map(|(key, looked)| {
                let (source_repository, target_repository, digest) = key.as_ref().clone();
                ReferrerLook {
                    source: looked.source,
                    target: looked.target,
                    source_repository,
                    target_repository,
                    digest,
                    at: looked.at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                }
            })
            .collect()
    }

    /// Takes `looks` made earlier as its own, each for the rest of the interval from when it was
    /// made; returns how many were still within it.
    fn remember(&self, looks: impl IntoIterator<Item = ReferrerLook>) -> usize {
        let expiry = FromTheLook(self.interval);
        let mut remembered = 0;
        for look in looks {
            let at = look.looked_at();
            if expiry.remaining(at).is_zero() {
                continue;
            }
            let looked = Looked {
                at,
                source: look.source,
                target: look.target,
            };
            self.checked_references
                .insert((looked.source.clone(), looked.target.clone()), at);
            self.checked
                .insert((look.source_repository, look.target_repository, look.digest), looked);
            remembered += 1;
        }
        remembered
    }

    /// Remembers that `digest`, of `media_type`, lists no manifests when it is no index (a HEAD
    /// tells, so the referrer walk of an unchanged image needs no GET).
    pub(super) fn remember_media_type(&self, digest: &Digest, media_type: &str) {
        if ![manifest::OCI_INDEX, manifest::DOCKER_LIST].contains(&media_type) {
            self.children.insert(digest.clone(), Arc::default());
        }
    }

    /// Remembers what `manifest` lists (nothing, for an image), when it parses.
    pub(super) fn remember_listed(&self, manifest: &Manifest) {
        if let Ok(parsed) = manifest::parse(&manifest.bytes, &manifest.media_type) {
            self.remember_children(&manifest.digest, &parsed.manifests);
        }
    }

    /// Remembers the manifests an index lists (the copy knows them, so the referrer walk needs no GET).
    pub(super) fn remember_children(&self, index: &Digest, children: &[Descriptor]) {
        let listed = children
            .iter()
            .map(|d| Listed {
                digest: d.digest.clone(),
                index: [manifest::OCI_INDEX, manifest::DOCKER_LIST].contains(&d.media_type.as_str()),
            })
            .collect();
        self.children.insert(index.clone(), Arc::new(listed));
    }
}

/// A manifest an index lists.
#[derive(Debug, Clone)]
struct Listed {
    digest: Digest,
    /// Whether it is an index itself (its descriptor's media type says so).
    index: bool,
}

fn cached(map: &Mutex<HashMap<String, bool>>, host: &str) -> Option<bool> {
    map.lock().unwrap_or_else(|e| e.into_inner()).get(host).copied()
}

fn remember(map: &Mutex<HashMap<String, bool>>, host: &str, value: bool) {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(host.to_owned(), value);
}

/// Whether `tag` may name a digest as the cosign tags and the referrers tag schema do
/// (`sha256-<hex>`, with or without a `.sig`-like suffix): a repository without such a tag holds
/// nothing for either scheme.
fn names_a_digest(tag: &str) -> bool {
    let stem = tag.split_once('.').map_or(tag, |(stem, _)| stem);
    stem.split_once('-').is_some_and(|(algorithm, hex)| {
        !algorithm.is_empty()
            && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && hex.len() >= 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// `<algorithm>-<hex>`, at most 128 characters: the referrers tag schema's tag for `digest`.
pub fn fallback_tag(digest: &Digest) -> String {
    let mut tag = format!("{}-{}", digest.algorithm(), digest.encoded());
    tag.truncate(MAX_TAG_LENGTH);
    tag
}

/// cosign's tag for `kind` of `digest`: `sha256-<hex>.sig`.
pub fn cosign_tag(digest: &Digest, kind: CosignTag) -> String {
    format!("{}-{}.{}", digest.algorithm(), digest.encoded(), kind.suffix())
}

/// A manifest's artifact type: its `artifactType`, else its config's media type unless that is a
/// generic one, else its first layer's media type (cosign's `.sig`: the simple-signing payload).
fn artifact_type(bytes: &[u8], parsed: &Parsed) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "artifactType")]
        artifact_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(bytes)
        .ok()
        .and_then(|t| t.artifact_type)
        .or_else(|| {
            parsed
                .config
                .as_ref()
                .filter(|c| !GENERIC_CONFIGS.contains(&c.media_type.as_str()))
                .map(|c| c.media_type.clone())
        })
        .or_else(|| parsed.layers.first().map(|l| l.media_type.clone()))
}

/// The fallback index at the target with `entries` added: `None` when it lists them all already.
/// Entries already there are kept as they are (unknown fields included), new ones appended.
fn merge_index(current: Option<&[u8]>, entries: &[ReferrerDescriptor]) -> Result<Option<Vec<u8>>, String> {
    let mut index = match current {
        Some(bytes) => serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?,
        None => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": [],
        }),
    };
    let listed = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or("the index has no manifests list")?;
    let present: HashSet<String> = listed
        .iter()
        .filter_map(|m| m.get("digest")?.as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = entries
        .iter()
        .filter(|e| !present.contains(&e.digest.to_string()))
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    for entry in missing {
        listed.push(serde_json::to_value(entry).map_err(|e| e.to_string())?);
    }
    serde_json::to_vec(&index).map(Some).map_err(|e| e.to_string())
}

/// Entries of `entries` the index `bytes` does not list.
fn unlisted<'e>(bytes: Option<&[u8]>, entries: &'e [ReferrerDescriptor]) -> Vec<&'e ReferrerDescriptor> {
    let listed: HashSet<Digest> = bytes
        .and_then(|b| serde_json::from_slice::<ReferrerIndex>(b).ok())
        .map(|i| i.manifests.into_iter().map(|m| m.digest).collect())
        .unwrap_or_default();
    entries.iter().filter(|e| !listed.contains(&e.digest)).collect()
}

/// One walk over an image's related artifacts.
#[derive(Default)]
struct Walk {
    /// Only look (`copycat verify`): count what the target lacks, write nothing.
    check: bool,
    /// The source repository's tags, listed once per walk.
    tags: HashSet<String>,
    /// Referrers handled (a loop of referrers ends here).
    seen: HashSet<Digest>,
    report: ReferrerReport,
}

/// A source's tag list, fetched while its image is copied.
pub(super) type Prefetched = Option<Result<Arc<Vec<String>>, RegistryError>>;

impl Copier {
    /// The source repository's tags, when the copy of `req` is going to look for related artifacts
    /// (not turned off, no dry run, not looked at within the interval); fetched beside the image copy.
    pub(super) async fn prefetch_tags(&self, req: &CopyRequest, job: &Job<'_>) -> Prefetched {
        let opts = job.opts;
        let key = (req.source.to_string(), req.target_display(None));
        if opts.dry_run
            || opts.referrers.is_off()
            || (!opts.repair && self.referrers.checked_references.contains_key(&key))
        {
            return None;
        }
        Some(self.source_tags(job).await)
    }

    /// The source repository's tags: one request per repository for the looks within a short
    /// time (see [`ReferrerState::tag_lists`]).
    async fn source_tags(&self, job: &Job<'_>) -> Result<Arc<Vec<String>>, RegistryError> {
        let key = (job.src.host().to_owned(), job.src_repo.to_owned());
        self.referrers
            .tag_lists
            .try_get_with(key, async { job.src.list_tags(job.src_repo).await.map(Arc::new) })
            .await
            // The looks that shared a failed request see its message.
            .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|shared| RegistryError::Invalid(shared.to_string())))
    }

    /// After the image `top` (a filtered index when `filtered`) is at the target: copies its related
    /// artifacts, unless they are turned off, this is a dry run, or they were looked for within the
    /// interval and the image was already there (`written` now: the target lost it, and likely its
    /// artifacts with it). A failure is logged and reported, never fails the image.
    pub(super) async fn copy_referrers(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        (top, filtered, written): (&Digest, bool, bool),
        tags: Prefetched,
    ) -> ReferrerReport {
        let opts = job.opts;
        if opts.dry_run || opts.referrers.is_off() {
            return ReferrerReport::default();
        }
        let key = (req.source.name(), req.target.name(), top.clone());
        // A repair (a check found the target incomplete) looks again at once.
        if !opts.repair && !written && self.referrers.checked.contains_key(&key) {
            return ReferrerReport {
                recent: true,
                ..ReferrerReport::default()
            };
        }
        // A failed prefetch is asked again by the walk (and fails there, with its context).
        let tags = tags.and_then(Result::ok);
        let walked = match opts.deadline {
            Some(after) => tokio::time::timeout(after, self.walk_referrers(req, job, top, filtered, tags, false))
                .await
                .unwrap_or_else(|_| {
                    Err(CopyError::DeadlineExceeded {
                        target: format!("related artifacts of {}", req.target_display(Some(top))),
                        after,
                    })
                }),
            None => self.walk_referrers(req, job, top, filtered, tags, false).await,
        };
        match walked {
            Ok(report) => {
                let looked = Looked {
                    at: SystemTime::now(),
                    source: req.source.to_string(),
                    target: req.target_display(None),
                };
                self.referrers
                    .checked_references
                    .insert((looked.source.clone(), looked.target.clone()), looked.at);
                self.referrers.checked.insert(key, looked);
                report
            }
            Err(e) => {
                tracing::warn!(source = %req.source, target = %req.target_display(Some(top)), error = %e,
                    "copying the image's signatures, attestations and SBOMs failed; trying again next time");
                ReferrerReport {
                    checked: true,
                    error: Some(e.to_string()),
                    ..ReferrerReport::default()
                }
            }
        }
    }

    /// The looks for related artifacts made (or remembered) within the interval, for a one-shot
    /// command to keep until its next run.
    pub fn referrer_looks(&self) -> Vec<ReferrerLook> {
        self.referrers.looks()
    }

    /// Remembers looks an earlier run made: an image looked at within the interval is not looked at
    /// again while it is already at the target. Returns how many were still within it.
    pub fn remember_referrer_looks(&self, looks: impl IntoIterator<Item = ReferrerLook>) -> usize {
        self.referrers.remember(looks)
    }

    /// How long a look for related artifacts holds (`referrersInterval`, as the copier was built).
    pub fn referrers_interval(&self) -> Duration {
        self.referrers.interval
    }

    /// Counts the related artifacts of `top` (at the target of `req`) that the source has and the
    /// target lacks, as `copycat verify` does; writes nothing. With a platform subset, only the
    /// children's are looked at.
    pub async fn missing_referrers(
        &self,
        req: &CopyRequest,
        opts: &CopyOptions,
        top: &Digest,
    ) -> Result<ReferrerReport, CopyError> {
        if opts.referrers.is_off() {
            return Ok(ReferrerReport::default());
        }
        self.with_source(&req.source, &opts.source_credentials, |src| async move {
            let job = self.job(req, opts, src, false);
            let filtered = !opts.platforms.is_empty();
            self.walk_referrers(req, &job, top, filtered, None, true).await
        })
        .await
    }

    /// Looks at the related artifacts of `top` first (which also learns whether the source serves the
    /// Referrers API), then at those of every manifest below it, unless nothing can refer to those:
    /// the source does not serve the API and holds no tag naming a digest (an unchanged index then
    /// costs nothing but the tag list, not even a read of it at the target).
    async fn walk_referrers(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        top: &Digest,
        filtered: bool,
        tags: Option<Arc<Vec<String>>>,
        check: bool,
    ) -> Result<ReferrerReport, CopyError> {
        let tags = match tags {
            Some(tags) => tags,
            None => self.source_tags(job).await.map_err(source_error(
                job.src.host(),
                format!("list tags of {}", req.source.name()),
            ))?,
        };
        let mut walk = Walk {
            check,
            tags: tags.iter().cloned().collect(),
            ..Walk::default()
        };
        walk.report.checked = true;
        // A filtered index exists only at the target: nothing at the source refers to it.
        if !filtered {
            self.follow(req, job, vec![top.clone()], &mut walk).await?;
        }
        let may_refer = cached(&self.referrers.source_api, job.src.host()) != Some(false)
            || walk.tags.iter().any(|t| names_a_digest(t));
        if may_refer {
            let below = self.manifests_below(req, job, top).await?;
            self.follow(req, job, below, &mut walk).await?;
        }
        Ok(walk.report)
    }

    /// Copies the related artifacts of `subjects`, and theirs, to the policy's depth.
    async fn follow(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        subjects: Vec<Digest>,
        walk: &mut Walk,
    ) -> Result<(), CopyError> {
        let mut pending: VecDeque<(Digest, usize)> = subjects.into_iter().map(|d| (d, 1)).collect();
        while let Some((subject, level)) = pending.pop_front() {
            let found = self.referrers_of(req, job, &subject, walk).await?;
            if level < job.opts.referrers.depth {
                pending.extend(found.into_iter().map(|d| (d, level + 1)));
            }
        }
        Ok(())
    }

    /// Every manifest below `top` (none for an image): the manifests it lists, and below each index
    /// among them those it lists, to the copy engine's nesting limit ([`manifest::MAX_INDEX_DEPTH`]
    /// levels) and at most [`manifest::MAX_IMAGE_MANIFESTS`]; each index read at the target the
    /// first time (the copy tells those it wrote).
    async fn manifests_below(&self, req: &CopyRequest, job: &Job<'_>, top: &Digest) -> Result<Vec<Digest>, CopyError> {
        let mut below = Vec::new();
        let mut seen = HashSet::from([top.clone()]);
        let mut open = vec![(top.clone(), 1)];
        while let Some((index, level)) = open.pop() {
            for child in self.children_of(req, job, &index).await?.iter() {
                if below.len() >= manifest::MAX_IMAGE_MANIFESTS {
                    return Ok(below);
                }
                if !seen.insert(child.digest.clone()) {
                    continue;
                }
                below.push(child.digest.clone());
                if child.index && level + 1 < manifest::MAX_INDEX_DEPTH {
                    open.push((child.digest.clone(), level + 1));
                }
            }
        }
        Ok(below)
    }

    /// The manifests the index `index` lists (none for an image), read at the target the first time.
    async fn children_of(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        index: &Digest,
    ) -> Result<Arc<Vec<Listed>>, CopyError> {
        if let Some(children) = self.referrers.children.get(index) {
            return Ok(children);
        }
        let reference = index.to_string();
        let manifest = job
            .dst
            .get_manifest(job.dst_repo, &reference, MAX_MANIFEST_SIZE)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("GET manifest {}@{index}", req.target.name()),
            ))?;
        let parsed = parse_manifest(&manifest, &req.target)?;
        self.referrers.remember_children(index, &parsed.manifests);
        Ok(self.referrers.children.get(index).unwrap_or_default())
    }

    /// Copies the related artifacts of `subject` the policy takes; returns their digests.
    async fn referrers_of(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        subject: &Digest,
        walk: &mut Walk,
    ) -> Result<Vec<Digest>, CopyError> {
        let policy = &job.opts.referrers;
        let mut found = Vec::new();
        let tags = &walk.tags;

        let cosign: Vec<(CosignTag, String)> = CosignTag::ALL
            .into_iter()
            .filter(|&kind| policy.mode_takes_cosign(kind))
            .map(|kind| (kind, cosign_tag(subject, kind)))
            .filter(|(_, tag)| tags.contains(tag))
            .collect();
        for (kind, tag) in cosign {
            if walk.seen.len() >= MAX_REFERRERS {
                break;
            }
            if let Some((digest, result)) = self.copy_cosign_tag(req, job, &tag, kind, walk.check).await?
                && walk.seen.insert(digest.clone())
            {
                walk.report.count(ReferrerSource::CosignTag, result);
                found.push(digest);
            }
        }

        let (listed, source, verbatim) = match self.source_referrers(req, job, subject).await? {
            Some(listed) => (listed, ReferrerSource::ReferrersApi, None),
            None if tags.contains(&fallback_tag(subject)) => {
                let index = self.get_manifest(job, &fallback_tag(subject), &req.source).await?;
                let listed: ReferrerIndex = serde_json::from_slice(&index.bytes).map_err(|e| CopyError::Manifest {
                    reference: format!("{}:{}", req.source.name(), fallback_tag(subject)),
                    source: manifest::ManifestError::Invalid(e.to_string()),
                })?;
                (listed.manifests, ReferrerSource::FallbackTag, Some(index))
            }
            None => (vec![], ReferrerSource::FallbackTag, None),
        };
        let taken: Vec<ReferrerDescriptor> = listed
            .iter()
            .filter(|d| policy.takes_referrer(d.artifact_type.as_deref()))
            .cloned()
            .collect();
        let missing_before = walk.report.missing;
        for referrer in &taken {
            if walk.seen.len() >= MAX_REFERRERS {
                break;
            }
            if walk.seen.insert(referrer.digest.clone()) {
                let result = self.copy_referrer(req, job, referrer, walk.check).await?;
                walk.report.count(source, result);
                found.push(referrer.digest.clone());
            }
        }
        if taken.is_empty() || self.target_indexes_subjects(req, job, subject).await? {
            return Ok(found);
        }
        if walk.check {
            // Present by digest but left out of the target's index: invisible to clients.
            let tag = fallback_tag(subject);
            let index = self
                .target_index(job, &tag, &format!("{}:{tag}", req.target.name()))
                .await?;
            // A referrer the target lacks is unlisted too: counted once.
            let unlisted = unlisted(index.as_ref().map(|m| &m.bytes[..]), &taken).len() as u32;
            let lacking = walk.report.missing - missing_before;
            walk.report.missing = missing_before + lacking.max(unlisted);
        } else {
            // The source's own index, byte for byte, when everything in it is taken.
            let verbatim = verbatim.filter(|_| taken.len() == listed.len());
            self.merge_fallback_index(req, job, subject, &taken, verbatim).await?;
        }
        Ok(found)
    }

    /// The source's Referrers API answer for `subject`, or `None` when its host does not serve the
    /// API (learnt from the first 404, then remembered).
    async fn source_referrers(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        subject: &Digest,
    ) -> Result<Option<Vec<ReferrerDescriptor>>, CopyError> {
        let host = job.src.host();
        let _probing = match cached(&self.referrers.source_api, host) {
            Some(false) => return Ok(None),
            Some(true) => None,
            None => Some(self.referrers.probing.lock(host.to_owned()).await),
        };
        // Another copy may have probed while this one waited.
        if cached(&self.referrers.source_api, host) == Some(false) {
            return Ok(None);
        }
        let asked = job.opts.referrers.artifact_types.single();
        let answer = job
            .src
            .referrers(job.src_repo, subject, asked)
            .await
            .map_err(source_error(
                host,
                format!("GET referrers of {}@{subject}", req.source.name()),
            ))?;
        remember(&self.referrers.source_api, host, answer.is_some());
        Ok(answer.map(|r| r.descriptors))
    }

    /// Whether the target indexes `subject`s itself: it answered `OCI-Subject` to a PUT, or serves
    /// the Referrers API (asked once per host).
    async fn target_indexes_subjects(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        subject: &Digest,
    ) -> Result<bool, CopyError> {
        let host = job.dst.host();
        if let Some(known) = cached(&self.referrers.target_api, host) {
            return Ok(known);
        }
        let served = job
            .dst
            .referrers(job.dst_repo, subject, None)
            .await
            .map_err(target_error(
                host,
                format!("GET referrers of {}@{subject}", req.target.name()),
            ))?
            .is_some();
        remember(&self.referrers.target_api, host, served);
        Ok(served)
    }

    /// A cosign tag: its digest and what became of it (in a `check`, a tag the target lacks or holds
    /// another digest under is missing), or `None` when the policy does not take it (or it
    /// vanished). An unchanged tag costs a HEAD at each side.
    async fn copy_cosign_tag(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        tag: &str,
        kind: CosignTag,
        check: bool,
    ) -> Result<Option<(Digest, Found)>, CopyError> {
        let Some(head) = read(
            &job.readers,
            |r| r.head_manifest(job.src_repo, tag).boxed(),
            Option::is_some,
        )
        .await
        .map_err(source_error(
            job.src.host(),
            format!("HEAD source {}:{tag}", req.source.name()),
        ))?
        else {
            return Ok(None);
        };
        let at_target = job.dst.head_manifest(job.dst_repo, tag).await.map_err(target_error(
            job.dst.host(),
            format!("HEAD target {}:{tag}", req.target.name()),
        ))?;
        if at_target.is_some_and(|t| t.digest == head.digest) {
            return Ok(Some((head.digest, Found::Present)));
        }
        let manifest = self.get_manifest(job, &head.digest.to_string(), &req.source).await?;
        let parsed = parse_manifest(&manifest, &req.source)?;
        if !job
            .opts
            .referrers
            .takes_cosign(kind, artifact_type(&manifest.bytes, &parsed).as_deref())
        {
            return Ok(None);
        }
        let digest = manifest.digest.clone();
        if check {
            return Ok(Some((digest, Found::Missing)));
        }
        self.put_referrer(req, job, manifest, parsed, tag).await?;
        Ok(Some((digest, Found::Copied)))
    }

    /// An OCI referrer, by digest: what became of it.
    async fn copy_referrer(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        referrer: &ReferrerDescriptor,
        check: bool,
    ) -> Result<Found, CopyError> {
        let reference = referrer.digest.to_string();
        let present = job
            .dst
            .head_manifest(job.dst_repo, &reference)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("HEAD target {}@{reference}", req.target.name()),
            ))?;
        if present.is_some() {
            return Ok(Found::Present);
        }
        if check {
            return Ok(Found::Missing);
        }
        let manifest = self.get_manifest(job, &reference, &req.source).await?;
        let parsed = parse_manifest(&manifest, &req.source)?;
        self.put_referrer(req, job, manifest, parsed, &reference).await?;
        Ok(Found::Copied)
    }

    /// Writes a referrer manifest under `reference` after what it needs (blobs, or the manifests an
    /// index lists), remembering whether the target indexed its `subject`.
    async fn put_referrer(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        manifest: Manifest,
        parsed: Parsed,
        reference: &str,
    ) -> Result<(), CopyError> {
        match parsed.kind {
            Kind::Index => {
                let mut budget = Budget::default();
                admit(&mut budget, &parsed, 1, &req.source, &manifest.digest)?;
                self.copy_children(req, job, parsed.manifests, 1, &mut budget).await?;
            }
            Kind::Image => self.copy_blobs(job, &parsed).await?,
        }
        let put = job
            .dst
            .put_manifest_with_subject(job.dst_repo, reference, manifest.bytes, &manifest.media_type)
            .await
            .map_err(target_error(
                job.dst.host(),
                format!("PUT manifest {}:{reference}", req.target.name()),
            ))?;
        if put.subject_indexed {
            remember(&self.referrers.target_api, job.dst.host(), true);
        }
        Ok(())
    }

    /// Adds `entries` to the target's fallback index of `subject`: read it, merge, check it did not
    /// change meanwhile, and write it on the condition that it still holds what was read (`If-Match`
    /// with its digest; `If-None-Match: *` when there was none); again (a few times) when it changed.
    /// A registry that honours the condition (it answered 412 once) needs nothing more. Others
    /// (distribution ignores it) are read back once another writer's write racing ours would have
    /// landed, merging again when one replaced it; a writer slower than that can still drop entries
    /// there: the next look (one interval later) adds ours back.
    /// `verbatim`, the source's own index, is written as is when the target has none.
    async fn merge_fallback_index(
        &self,
        req: &CopyRequest,
        job: &Job<'_>,
        subject: &Digest,
        entries: &[ReferrerDescriptor],
        verbatim: Option<Manifest>,
    ) -> Result<(), CopyError> {
        let tag = fallback_tag(subject);
        let shown = format!("{}:{tag}", req.target.name());
        let _merging = self
            .referrers
            .index_locks
            .lock((job.dst.host().to_owned(), job.dst_repo.to_owned(), tag.clone()))
            .await;
        for attempt in 1..=MERGE_ATTEMPTS {
            let current = self.target_index(job, &tag, &shown).await?;
            let body: Bytes = match (&current, &verbatim) {
                (None, Some(source)) => source.bytes.clone(),
                _ => match merge_index(current.as_ref().map(|m| &m.bytes[..]), entries) {
                    Ok(Some(body)) => body.into(),
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        return Err(CopyError::Manifest {
                            reference: shown,
                            source: manifest::ManifestError::Invalid(e),
                        });
                    }
                },
            };
            let now = job
                .dst
                .head_manifest(job.dst_repo, &tag)
                .await
                .map_err(target_error(job.dst.host(), format!("HEAD target {shown}")))?;
            let read = current.as_ref().map(|m| m.digest.clone());
            if now.map(|h| h.digest) == read {
                let started = Instant::now();
                let put = job
                    .dst
                    .put_manifest_if(job.dst_repo, &tag, body, manifest::OCI_INDEX, read.as_ref())
                    .await;
                match put {
                    Ok(_) if cached(&self.referrers.conditional, job.dst.host()) == Some(true) => return Ok(()),
                    Ok(_) => {
                        // Another writer that read the index before our write may still replace it:
                        // its write lands about one round trip after its read. Check once that has
                        // passed.
                        tokio::time::sleep(MERGE_SETTLE.max(started.elapsed() * 2)).await;
                        let back = self.target_index(job, &tag, &shown).await?;
                        if unlisted(back.as_ref().map(|m| &m.bytes[..]), entries).is_empty() {
                            return Ok(());
                        }
                    }
                    Err(RegistryError::Status { status: 412, .. }) => {
                        remember(&self.referrers.conditional, job.dst.host(), true);
                    }
                    Err(e) => return Err(target_error(job.dst.host(), format!("PUT manifest {shown}"))(e)),
                }
            }
            tracing::debug!(index = %shown, attempt, "the fallback index changed underneath; merging again");
            tokio::time::sleep(MERGE_BACKOFF * attempt).await;
        }
        Err(target_error(
            job.dst.host(),
            format!("merge the referrers index {shown}"),
        )(RegistryError::Invalid(format!(
            "it kept changing underneath ({MERGE_ATTEMPTS} attempts)"
        ))))
    }

    /// The target's fallback index `tag`, `None` when there is none.
    async fn target_index(&self, job: &Job<'_>, tag: &str, shown: &str) -> Result<Option<Manifest>, CopyError> {
        match job.dst.get_manifest(job.dst_repo, tag, MAX_MANIFEST_SIZE).await {
            Ok(m) => Ok(Some(m)),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(target_error(job.dst.host(), format!("GET manifest {shown}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_looks_hold_for_the_rest_of_the_interval_from_when_they_were_made() {
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let look = |repository: &str, age: u64| ReferrerLook {
            source: format!("src.io/{repository}:1"),
            target: format!("dst.io/{repository}:1"),
            source_repository: format!("src.io/{repository}"),
            target_repository: format!("dst.io/{repository}"),
            digest: digest('a'),
            at: now - age,
        };
        let state = ReferrerState::new(hour);
        // (repository, age in seconds, still held)
        let cases = [
            ("new", 0, true),
            ("half", 1800, true),
            ("last", 3590, true),
            ("over", 3600, false),
            ("old", 86_400, false),
        ];
        let remembered = state.remember(cases.iter().map(|(r, age, _)| look(r, *age)));
        assert_eq!(remembered, cases.iter().filter(|c| c.2).count());
        state.checked.run_pending_tasks();
        for (repository, age, held) in cases {
            let key = (
                format!("src.io/{repository}"),
                format!("dst.io/{repository}"),
                digest('a'),
            );
            assert_eq!(state.checked.contains_key(&key), held, "{repository}");
            let pair = (format!("src.io/{repository}:1"), format!("dst.io/{repository}:1"));
            assert_eq!(state.checked_references.contains_key(&pair), held, "{repository}");
            if held {
                let kept = state.looks().into_iter().find(|l| l.source_repository == key.0);
                assert_eq!(kept, Some(look(repository, age)), "kept with its own time");
            }
        }
        assert_eq!(state.looks().len(), remembered);

        // A newer look of an image replaces an older one, and its expiry with it.
        let short = ReferrerState::new(Duration::from_secs(10));
        let mut again = look("again", 9);
        assert_eq!(short.remember([again.clone()]), 1);
        again.at = now;
        assert_eq!(short.remember([again.clone()]), 1);
        std::thread::sleep(Duration::from_millis(1_100));
        short.checked.run_pending_tasks();
        assert_eq!(short.looks(), vec![again], "held past the first look's end");
    }

    fn digest(c: char) -> Digest {
        Digest::sha256_hex(&c.to_string().repeat(64)).unwrap()
    }

    fn entry(c: char, artifact_type: &str) -> ReferrerDescriptor {
        ReferrerDescriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: digest(c),
            size: 10,
            artifact_type: Some(artifact_type.into()),
            annotations: serde_json::Map::new(),
        }
    }

    fn digests(bytes: &[u8]) -> Vec<String> {
        let index: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap()[7..8].to_owned())
            .collect()
    }

    #[test]
    fn merging_keeps_every_entry_and_adds_the_missing() {
        let theirs = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{"mediaType":"x/y","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":1,"unknown":true}],
            "annotations":{"a":"b"}}"#;
        // (current index, entries to add, digests listed after, or None: nothing to write)
        type Case<'a> = (Option<&'a [u8]>, Vec<ReferrerDescriptor>, Option<Vec<&'a str>>);
        let cases: Vec<Case> = vec![
            (None, vec![entry('a', "t/a")], Some(vec!["a"])),
            (Some(theirs), vec![entry('a', "t/a")], Some(vec!["c", "a"])),
            (Some(theirs), vec![entry('c', "x/y")], None),
            (
                Some(theirs),
                vec![entry('a', "t/a"), entry('c', "x/y"), entry('b', "t/b")],
                Some(vec!["c", "a", "b"]),
            ),
        ];
        for (current, entries, want) in cases {
            let merged = merge_index(current, &entries).unwrap();
            assert_eq!(
                merged.as_deref().map(digests),
                want.map(|w| w.iter().map(|s| s.to_string()).collect())
            );
            if let (Some(bytes), Some(_)) = (merged, current) {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(v["annotations"]["a"], "b", "the rest of their index is kept");
                assert_eq!(v["manifests"][0]["unknown"], true, "their entries are kept as they are");
            }
        }
        assert!(merge_index(Some(b"{}"), &[entry('a', "t/a")]).is_err());
        assert!(merge_index(Some(b"not json"), &[entry('a', "t/a")]).is_err());
        let merged = merge_index(None, &[entry('a', "t/a"), entry('b', "t/b")])
            .unwrap()
            .unwrap();
        assert!(unlisted(Some(&merged), &[entry('a', "t/a")]).is_empty());
        assert_eq!(unlisted(Some(&merged), &[entry('d', "t/d")]).len(), 1);
        assert_eq!(unlisted(None, &[entry('d', "t/d")]).len(), 1);
    }

    #[test]
    fn tags_that_may_name_a_digest() {
        let hex = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            (&format!("sha256-{hex}"), true),
            (&format!("sha256-{hex}.sig"), true),
            (&format!("sha256-{hex}.att"), true),
            (&format!("sha512-{}", "b".repeat(121)), true),
            ("v1", false),
            ("latest", false),
            ("sha256-abc", false),
            (&format!("sha256-{}", "z".repeat(64)), false),
            (&format!("-{hex}"), false),
            (&format!("SHA256-{hex}"), false),
            ("1.2.3-alpine", false),
        ];
        for (tag, want) in cases {
            assert_eq!(names_a_digest(tag), *want, "{tag}");
        }
    }

    #[test]
    fn tags_of_a_digest() {
        let d = digest('a');
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "a".repeat(64)));
        assert_eq!(
            cosign_tag(&d, CosignTag::Signature),
            format!("sha256-{}.sig", "a".repeat(64))
        );
        assert_eq!(
            cosign_tag(&d, CosignTag::Sbom),
            format!("sha256-{}.sbom", "a".repeat(64))
        );
        let long = Digest::parse(&format!("sha512:{}", "b".repeat(128))).unwrap();
        assert_eq!(fallback_tag(&long).len(), 128);
    }

    #[test]
    fn artifact_types_of_manifests() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
                Some("application/spdx+json"),
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#,
                Some("application/vnd.dev.cosign.simplesigning.v1+json"),
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.example.thing","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
                Some("application/vnd.example.thing"),
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
                None,
            ),
        ];
        for (json, want) in cases {
            let parsed = manifest::parse(json.as_bytes(), manifest::OCI_MANIFEST).unwrap();
            assert_eq!(artifact_type(json.as_bytes(), &parsed).as_deref(), *want, "{json}");
        }
    }
}
