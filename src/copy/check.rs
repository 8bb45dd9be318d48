//! Whether a target holds a whole image: the manifest under the target tag (or digest) with the
//! expected digest, every child manifest of an index, and every blob (configs and layers). Quick
//! checks HEAD what they can (the manifests are read, since they list what else must be there: the
//! one under the tag with a single GET, whose digest is the one compared);
//! deep checks read every blob and re-hash it while it streams, as a node pulling the image would.
//! `copycat verify` runs it once per planned target; the daemon's periodic verification can run it
//! the same way.

use futures::{StreamExt, TryStreamExt};

use super::manifest::Kind;
use super::select::{self, Selection};
use super::walk::{Walk, drain_verified};
use super::{
    Copier, CopyError, CopyOptions, CopyRequest, MAX_MANIFEST_SIZE, parse_manifest, read, sha256_digest, source_digest,
    source_error, target_error,
};
use crate::reference::Digest;
use crate::registry::{Registry, RegistryError};

/// How thoroughly to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// HEAD every blob and child manifest (the manifests themselves are read and their digests
    /// checked, since they say what else must be present).
    Quick,
    /// Read every blob and re-hash it, streaming: finds content that is present but damaged.
    Deep,
}

/// What the target holds for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// The manifest with the expected digest and everything it references are present.
    Verified {
        /// Manifests checked (the top one included).
        manifests: usize,
        /// Distinct blobs checked.
        blobs: usize,
    },
    /// Parts are missing (or, in a deep check, damaged).
    Missing(Missing),
    /// The target tag holds another digest.
    Mismatch {
        /// The digest the target should hold.
        expected: Digest,
        /// The digest it holds.
        found: Digest,
    },
}

/// What is missing from a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// The manifest under the target tag (or digest) itself: nothing else was looked at.
    pub manifest: bool,
    /// Child manifests of an index that the target lacks.
    pub child_manifests: Vec<Digest>,
    /// Blobs the target lacks.
    pub blobs: Vec<Digest>,
    /// Blobs or child manifests present whose bytes do not hash to their digest or have another
    /// size (size differences are found by every check, damaged bytes only by deep ones).
    pub damaged: Vec<Digest>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.manifest {
            return f.write_str("the manifest");
        }
        let parts: Vec<String> = [
            (self.child_manifests.len(), "child manifest"),
            (self.blobs.len(), "blob"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
        .chain((!self.damaged.is_empty()).then(|| format!("{} damaged", self.damaged.len())))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

/// What one blob check found.
enum BlobFound {
    Present,
    Absent,
    Damaged,
}

impl Copier {
    /// The digest the target of `req` must hold when copied with `opts`: the source digest (the
    /// reference's own, else a HEAD of its tag, with the options' pull secrets tried first) or, with
    /// a platform subset, the digest of what the copy writes under the tag (one platform's manifest,
    /// or the filtered index), which needs a GET of the source index.
    pub async fn expected_digest(&self, req: &CopyRequest, opts: &CopyOptions) -> Result<Digest, CopyError> {
        self.with_source(&req.source, &opts.source_credentials, |src| async move {
            let readers = self.readers(&src);
            let digest = source_digest(&req.source, &readers).await?;
            if opts.platforms.is_empty() {
                return Ok(digest);
            }
            let reference = digest.to_string();
            let repo = req.source.repository();
            let top = read(
                &readers,
                |r| Box::pin(r.get_manifest(repo, &reference, MAX_MANIFEST_SIZE)),
                |_| true,
            )
            .await
            .map_err(source_error(
                src.host(),
                format!("GET manifest {}@{digest}", req.source.name()),
            ))?;
            let parsed = parse_manifest(&top, &req.source)?;
            if parsed.kind == Kind::Image {
                return Ok(digest);
            }
            let (selection, _missing) =
                select::select(&top.bytes, &parsed.manifests, &opts.platforms).map_err(|source| {
                    CopyError::Platforms {
                        reference: req.source.to_string(),
                        source,
                    }
                })?;
            Ok(match selection {
                Selection::Single(entry) => entry.digest,
                Selection::Filtered { bytes, .. } => sha256_digest(&bytes),
            })
        })
        .await
    }

    /// Checks that the target of `req` (its tag, or `expected` for a target by digest) holds
    /// `expected` and everything it references, `concurrency` blobs at a time. A registry that
    /// fails to answer is the error (on the target side, naming the host and repository).
    pub async fn check_target(
        &self,
        req: &CopyRequest,
        expected: &Digest,
        depth: Depth,
        concurrency: usize,
    ) -> Result<TargetState, CopyError> {
        let dst = self.registries.get(req.target.registry());
        let repo = req.target.repository();
        let reference = req.target_tag.clone().unwrap_or_else(|| expected.to_string());
        let shown = req.target_display(Some(expected));
        // One GET of the tag (or digest): its digest is the one compared, and its bytes list what
        // else must be there.
        let mut top = match dst.get_manifest(repo, &reference, MAX_MANIFEST_SIZE).await {
            Ok(top) if top.digest != *expected => {
                return Ok(TargetState::Mismatch {
                    expected: expected.clone(),
                    found: top.digest,
                });
            }
            Ok(top) => Some(top),
            Err(RegistryError::Status { status: 404, .. }) => {
                return Ok(TargetState::Missing(Missing {
                    manifest: true,
                    ..Missing::default()
                }));
            }
            // Bytes that do not hash to the digest the registry names: another manifest under the
            // tag, or the expected one damaged (`None`).
            Err(RegistryError::DigestMismatch { digest, .. }) => match Digest::parse(&digest) {
                Ok(found) if found != *expected => {
                    return Ok(TargetState::Mismatch {
                        expected: expected.clone(),
                        found,
                    });
                }
                _ => None,
            },
            Err(e) => return Err(target_error(dst.host(), format!("GET target {shown}"))(e)),
        };
        let mut missing = Missing::default();
        let mut walk = Walk::new(expected);
        while let Some((digest, level)) = walk.next_manifest() {
            let reference = digest.to_string();
            // `None`: present, but its bytes do not hash to its digest.
            let manifest = if level == 1 {
                top.take()
            } else {
                let present = dst.head_manifest(repo, &reference).await.map_err(target_error(
                    dst.host(),
                    format!("HEAD target {}@{digest}", req.target.name()),
                ))?;
                if present.is_none() {
                    missing.child_manifests.push(digest);
                    continue;
                }
                match dst.get_manifest(repo, &reference, MAX_MANIFEST_SIZE).await {
                    Ok(manifest) => Some(manifest),
                    Err(RegistryError::DigestMismatch { .. }) => None,
                    Err(e) => {
                        let action = format!("GET manifest {}@{digest}", req.target.name());
                        return Err(target_error(dst.host(), action)(e));
                    }
                }
            };
            match manifest {
                Some(manifest) => {
                    walk.add(&manifest, level, &req.target)?;
                    // What it lists, for the look at its signatures that may follow (no GET again).
                    self.referrers.remember_listed(&manifest);
                }
                None => missing.damaged.push(digest),
            }
        }
        let tree = walk.into_tree();
        let (manifests, blobs) = (tree.manifests, tree.blobs);
        let checked = blobs.len();
        let found: Vec<(Digest, BlobFound)> = futures::stream::iter(blobs)
            .map(|(digest, size)| {
                let dst = &dst;
                async move {
                    let found = check_blob(dst, repo, &digest, size, depth).await.map_err(target_error(
                        dst.host(),
                        format!("check blob {}@{digest}", req.target.name()),
                    ))?;
                    Ok::<_, CopyError>((digest, found))
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for (digest, found) in found {
            match found {
                BlobFound::Present => {}
                BlobFound::Absent => missing.blobs.push(digest),
                BlobFound::Damaged => missing.damaged.push(digest),
            }
        }
        if missing == Missing::default() {
            return Ok(TargetState::Verified {
                manifests,
                blobs: checked,
            });
        }
        for list in [&mut missing.child_manifests, &mut missing.blobs, &mut missing.damaged] {
            list.sort();
        }
        Ok(TargetState::Missing(missing))
    }
}

/// One blob of `repo`: HEAD (present with the declared size), or for a deep check a GET whose bytes
/// are re-hashed as they stream, never held whole.
async fn check_blob(
    dst: &Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    depth: Depth,
) -> Result<BlobFound, RegistryError> {
    match dst.blob_size(repo, digest).await? {
        None => return Ok(BlobFound::Absent),
        Some(n) if n != size => return Ok(BlobFound::Damaged),
        Some(_) if depth == Depth::Quick => return Ok(BlobFound::Present),
        Some(_) => {}
    }
    match drain_verified(dst, repo, digest, size, Default::default()).await {
        Ok(()) => Ok(BlobFound::Present),
        Err(RegistryError::DigestMismatch { .. }) => Ok(BlobFound::Damaged),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_hex(&format!("{n:02x}").repeat(32)).unwrap()
    }

    #[test]
    fn what_is_missing_is_said_in_counts() {
        let cases = [
            (
                Missing {
                    manifest: true,
                    ..Missing::default()
                },
                "the manifest",
            ),
            (
                Missing {
                    child_manifests: vec![digest(1)],
                    blobs: vec![digest(2), digest(3)],
                    ..Missing::default()
                },
                "1 child manifest, 2 blobs",
            ),
            (
                Missing {
                    damaged: vec![digest(4)],
                    ..Missing::default()
                },
                "1 damaged",
            ),
            (
                Missing {
                    blobs: vec![digest(2)],
                    damaged: vec![digest(4), digest(5)],
                    ..Missing::default()
                },
                "1 blob, 2 damaged",
            ),
        ];
        for (missing, want) in cases {
            assert_eq!(missing.to_string(), want, "{missing:?}");
        }
    }
}
