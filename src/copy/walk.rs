//! The manifests of one image, read from the one under the tag down through its indexes within the
//! limits of [`manifest`](super::manifest), and the blobs they reference: what the target checks
//! and the pull-through warm-up share. Reading a manifest is the caller's: a check HEADs first and
//! records what is missing, a warm-up GETs through the cache.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

use super::manifest::{Budget, Kind};
use super::{CopyError, admit, parse_manifest, verify};
use crate::reference::{Digest, ImageRef};
use crate::registry::{Manifest, Registry, RegistryError};

/// What a walk found.
#[derive(Debug, Default)]
pub(super) struct Tree {
    /// Manifests read (the top one included).
    pub manifests: usize,
    /// Distinct blobs of the image manifests (configs and non-foreign layers), with their sizes.
    pub blobs: BTreeSet<(Digest, u64)>,
}

/// A walk over the image whose top manifest is given: the caller takes each manifest to read from
/// [`Walk::next_manifest`] (the top one is level 1), reads it its own way, and hands it to [`Walk::add`] (or
/// skips it, recording why). Each manifest is offered once however often it is listed, and an
/// index's entries are admitted to the [`Budget`] before any of them is offered: depth first with a
/// list of the manifests to read, not recursion, so a hostile chain of indexes costs heap, not
/// stack.
pub(super) struct Walk {
    pending: Vec<(Digest, usize)>,
    seen: BTreeSet<Digest>,
    budget: Budget,
    tree: Tree,
}

impl Walk {
    /// A walk starting at the manifest `top`.
    pub fn new(top: &Digest) -> Walk {
        Walk {
            pending: vec![(top.clone(), 1)],
            seen: BTreeSet::new(),
            budget: Budget::default(),
            tree: Tree::default(),
        }
    }

    /// The next manifest to read, with its level; `None` when the walk is done.
    pub fn next_manifest(&mut self) -> Option<(Digest, usize)> {
        while let Some((digest, level)) = self.pending.pop() {
            if self.seen.insert(digest.clone()) {
                return Some((digest, level));
            }
        }
        None
    }

    /// Adds `manifest`, read as `digest` at `level`: an index's entries are admitted and queued, an
    /// image's blobs collected. Errors name the image as `shown`.
    pub fn add(&mut self, manifest: &Manifest, level: usize, shown: &ImageRef) -> Result<(), CopyError> {
        self.tree.manifests += 1;
        let parsed = parse_manifest(manifest, shown)?;
        match parsed.kind {
            Kind::Index => {
                admit(&mut self.budget, &parsed, level, shown, &manifest.digest)?;
                let entries = parsed.manifests.iter().map(|d| (d.digest.clone(), level + 1));
                self.pending.extend(entries);
            }
            Kind::Image => self
                .tree
                .blobs
                .extend(parsed.blobs().map(|b| (b.digest.clone(), b.size))),
        }
        Ok(())
    }

    /// What the walk found.
    pub fn into_tree(self) -> Tree {
        self.tree
    }
}

/// Reads blob `digest` of `repo` whole, re-hashing it as it streams and dropping the bytes (never
/// held whole); `progress` counts the bytes of the read that succeeds. A damaged blob is
/// [`RegistryError::DigestMismatch`]. A read broken off midway (a connection reset, a stall past
/// the timeout) is started again within the registry's retry budget, as an upload would be; the
/// request opening each read is retried by the registry client itself.
pub(super) async fn drain_verified(
    registry: &Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    progress: Arc<AtomicU64>,
) -> Result<(), RegistryError> {
    let mut retries = registry.retries(true);
    loop {
        let download = registry.get_blob(repo, digest).await?;
        let read = Arc::new(AtomicU64::new(0));
        let mut stream = verify::verified(download.stream, digest, size, read.clone());
        let broken = loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => {
                    progress.fetch_add(read.load(Ordering::Relaxed), Ordering::Relaxed);
                    return Ok(());
                }
            }
        };
        match retries.after_failure(broken.is_retryable(), None) {
            Some(delay) => registry.wait_to_retry(delay, &broken).await,
            None => return Err(broken),
        }
    }
}
