//! Filling a pull-through cache (Harbor proxy-cache project, ECR pull-through cache rule,
//! distribution in proxy mode): such a cache cannot be pushed to, it stores what is pulled through
//! it. So the image is read through the cache: its manifest by the source's tag (or digest), every
//! manifest below an index, and every blob unless only manifests are wanted (blobs stream through
//! digest verification and are dropped, never held whole); then a HEAD confirms the cache serves
//! the manifest read. Nothing is written, and the source itself is not asked (a dry run asks it for
//! the digest and leaves the cache alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use super::walk::{Walk, drain_verified};
use super::{
    Copier, CopyError, CopyOptions, CopyReport, CopyRequest, MAX_MANIFEST_SIZE, Outcome, source_digest, target_error,
    within_deadline,
};
use crate::reference::Digest;
use crate::registry::{Manifest, Registry, RegistryError};

/// How to fill a pull-through cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullThrough {
    /// Read every blob through the cache too, not only the manifests.
    pub blobs: bool,
}

/// What a warm-up read.
struct Warmed {
    digest: Digest,
    blobs: u32,
}

impl Copier {
    /// Reads `req.source` through the pull-through cache `req.target` names (its tag or digest is
    /// the source's): see the module documentation. A dry run asks only the source for the digest.
    pub(super) async fn warm(
        &self,
        req: &CopyRequest,
        opts: &CopyOptions,
        how: PullThrough,
    ) -> Result<CopyReport, CopyError> {
        if opts.dry_run {
            let digest = self
                .with_source(&req.source, &opts.source_credentials, |src| async move {
                    source_digest(&req.source, &self.readers(&src)).await
                })
                .await?;
            return Ok(report(Outcome::WouldCopy, digest, 0, 0));
        }
        let cache = self.registries.get(req.target.registry());
        let bytes = Arc::new(AtomicU64::new(0));
        let result = within_deadline(req, opts, self.warm_through(req, opts, how, &cache, bytes.clone())).await;
        let bytes = bytes.load(Ordering::Relaxed);
        self.shared.total_bytes.fetch_add(bytes, Ordering::Relaxed);
        let Warmed { digest, blobs } = result?;
        Ok(report(Outcome::Warmed, digest, bytes, blobs))
    }

    async fn warm_through(
        &self,
        req: &CopyRequest,
        opts: &CopyOptions,
        how: PullThrough,
        cache: &Registry,
        bytes: Arc<AtomicU64>,
    ) -> Result<Warmed, CopyError> {
        let repo = req.target.repository();
        let reference = match req.source.digest() {
            Some(digest) => digest.to_string(),
            None => req.source.tag().unwrap_or("latest").to_owned(),
        };

        // 1. Every manifest, the top one by the source's own reference (so a cache records the tag).
        let top = get_through(cache, req, &reference).await?;
        let digest = top.digest.clone();
        let mut walk = Walk::new(&digest);
        let mut top = Some(top);
        while let Some((child, level)) = walk.next_manifest() {
            let manifest = match top.take() {
                Some(manifest) if level == 1 => manifest,
                _ => get_through(cache, req, &child.to_string()).await?,
            };
            walk.add(&manifest, level, &req.target)?;
        }
        let tree = walk.into_tree();

        // 2. Every blob, streamed, verified and dropped.
        let blobs = if how.blobs {
            let count = tree.blobs.len() as u32;
            futures::stream::iter(tree.blobs)
                .map(|(blob, size)| {
                    let bytes = bytes.clone();
                    async move {
                        let action = format!("GET blob {}@{blob}", req.target.name());
                        drain_verified(cache, repo, &blob, size, bytes)
                            .await
                            .map_err(target_error(cache.host(), action))
                    }
                })
                .buffer_unordered(opts.blob_concurrency.max(1))
                .try_collect::<()>()
                .await?;
            count
        } else {
            0
        };

        // 3. The cache serves what was read.
        let shown = shown(req, &reference);
        let head = cache
            .head_manifest(repo, &reference)
            .await
            .map_err(target_error(cache.host(), format!("HEAD {shown}")))?;
        match head {
            Some(head) if head.digest == digest => Ok(Warmed { digest, blobs }),
            Some(head) => Err(CopyError::NotServed {
                target: shown,
                detail: format!("serves {} after {digest} was read through it", head.digest),
            }),
            None => Err(CopyError::NotServed {
                target: shown,
                detail: format!("does not serve it after {digest} was read through it"),
            }),
        }
    }
}

/// `req`'s image at the cache by `reference`, as text.
fn shown(req: &CopyRequest, reference: &str) -> String {
    let separator = if reference.contains(':') { '@' } else { ':' };
    format!("{}{separator}{reference}", req.target.name())
}

/// GETs the manifest `reference` of `req`'s image through `cache`. A cache answers 404 when its
/// upstream lacks the image: the source is not found.
async fn get_through(cache: &Registry, req: &CopyRequest, reference: &str) -> Result<Manifest, CopyError> {
    let repo = req.target.repository();
    match cache.get_manifest(repo, reference, MAX_MANIFEST_SIZE).await {
        Err(RegistryError::Status { status: 404, .. }) => Err(CopyError::SourceNotFound(format!(
            "{} (through the pull-through cache as {})",
            req.source,
            shown(req, reference)
        ))),
        result => result.map_err(target_error(
            cache.host(),
            format!("GET manifest {}", shown(req, reference)),
        )),
    }
}

/// The report of a warm-up (or its dry run).
fn report(outcome: Outcome, digest: Digest, bytes: u64, blobs: u32) -> CopyReport {
    CopyReport {
        outcome,
        source_digest: digest.clone(),
        digest: Some(digest),
        bytes,
        blobs_skipped: 0,
        blobs_mounted: 0,
        blobs_transferred: 0,
        blobs_warmed: blobs,
        manifests_written: 0,
        missing_platforms: vec![],
        filtered: false,
        referrers: Default::default(),
    }
}
