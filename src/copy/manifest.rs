//! Reading manifests just enough to copy them: what they reference, and what kind they are. The bytes
//! themselves are never re-serialised, so digests are preserved.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::reference::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Annotation buildx puts on attestation entries, naming the image manifest they describe.
pub const ATTESTATION_FOR: &str = "vnd.docker.reference.digest";
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// Most manifest levels of one image, the one under the tag being level 1: an index of indexes of
/// indexes of images. Real images have two levels (index → image), rarely three (an index of
/// indexes); anything deeper is refused, so a hostile registry cannot make a copy endless.
pub const MAX_INDEX_DEPTH: usize = 4;
/// Most entries of one index. Multi-platform images list a few dozen at most.
pub const MAX_INDEX_ENTRIES: usize = 1_000;
/// Most manifests of one image, every level counted (the top one included).
pub const MAX_IMAGE_MANIFESTS: usize = 2_000;

/// Why a manifest cannot be copied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Docker schema 1 (deprecated, signed, not digest-stable).
    #[error(
        "Docker schema 1 manifests are not supported (the image is too old to copy byte-exactly; re-push it with a current client)"
    )]
    Schema1,
    /// Not JSON, or missing required parts.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// A media type that is neither an image manifest nor an index.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// Indexes nested deeper than [`MAX_INDEX_DEPTH`] levels.
    #[error(
        "indexes nested deeper than {MAX_INDEX_DEPTH} levels (an index at level {level} lists further manifests); copycat refuses such images"
    )]
    TooDeep {
        /// Level of the index whose entries would be too deep (the top is level 1).
        level: usize,
    },
    /// An index with more than [`MAX_INDEX_ENTRIES`] entries.
    #[error("index lists {entries} manifests, more than the limit of {MAX_INDEX_ENTRIES} per index")]
    TooManyEntries {
        /// Entries listed.
        entries: usize,
    },
    /// An image of more than [`MAX_IMAGE_MANIFESTS`] manifests.
    #[error("image holds more than {MAX_IMAGE_MANIFESTS} manifests ({manifests} listed so far)")]
    TooManyManifests {
        /// Manifests found so far.
        manifests: usize,
    },
}

/// The manifests an image walk has met, against the limits ([`MAX_INDEX_DEPTH`],
/// [`MAX_INDEX_ENTRIES`], [`MAX_IMAGE_MANIFESTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    manifests: usize,
}

impl Default for Budget {
    /// The top manifest alone.
    fn default() -> Budget {
        Budget { manifests: 1 }
    }
}

impl Budget {
    /// Admits the `entries` of an index at `level` (the top is level 1), or says which limit they
    /// break. Nothing of them is copied before they are admitted.
    pub fn admit(&mut self, entries: usize, level: usize) -> Result<(), ManifestError> {
        if level >= MAX_INDEX_DEPTH {
            return Err(ManifestError::TooDeep { level });
        }
        if entries > MAX_INDEX_ENTRIES {
            return Err(ManifestError::TooManyEntries { entries });
        }
        self.manifests += entries;
        if self.manifests > MAX_IMAGE_MANIFESTS {
            return Err(ManifestError::TooManyManifests {
                manifests: self.manifests,
            });
        }
        Ok(())
    }
}

/// Whether a manifest lists other manifests or describes one image or artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OCI index or Docker manifest list.
    Index,
    /// OCI image manifest (images and artifacts) or Docker schema 2 manifest.
    Image,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// External URLs (foreign / non-distributable layers).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Platform of an index entry.
    #[serde(default)]
    pub platform: Option<EntryPlatform>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EntryPlatform {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Architecture variant.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Descriptor {
    /// Layers the registry is not expected to hold (Windows base layers and the like).
    pub fn is_foreign(&self) -> bool {
        !self.urls.is_empty() && (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
    }

    /// buildx attestation entries (`unknown/unknown` platform, annotated with the image they describe).
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(REFERENCE_TYPE)
            .is_some_and(|t| t == "attestation-manifest")
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The manifest's media type (from the response, else its `mediaType`, else inferred).
    pub media_type: String,
    /// Index or image.
    pub kind: Kind,
    /// Config blob of an image manifest.
    pub config: Option<Descriptor>,
    /// Layer blobs of an image manifest.
    pub layers: Vec<Descriptor>,
    /// Entries of an index.
    pub manifests: Vec<Descriptor>,
}

impl Parsed {
    /// Blobs an image manifest needs at the target: config and non-foreign layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|l| !l.is_foreign()))
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Parses `bytes` served with `content_type` (parameters such as `; charset` are ignored).
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Parsed, ManifestError> {
    let content_type = content_type.split(';').next().unwrap_or_default().trim();
    if content_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(ManifestError::Schema1);
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let known = |t: &str| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t);
    let media_type = if known(content_type) {
        content_type.to_owned()
    } else if let Some(t) = raw.media_type.as_deref().filter(|t| known(t)) {
        t.to_owned()
    } else if raw.manifests.is_some() {
        OCI_INDEX.to_owned()
    } else if raw.config.is_some() {
        OCI_MANIFEST.to_owned()
    } else {
        let shown = raw.media_type.as_deref().unwrap_or(content_type);
        return Err(ManifestError::UnsupportedMediaType(shown.to_owned()));
    };
    let kind = if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        Kind::Index
    } else {
        Kind::Image
    };
    let parsed = Parsed {
        media_type,
        kind,
        config: raw.config,
        layers: raw.layers.unwrap_or_default(),
        manifests: raw.manifests.unwrap_or_default(),
    };
    match kind {
        Kind::Image if parsed.config.is_none() => Err(ManifestError::Invalid("image manifest without a config".into())),
        _ => Ok(parsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_depth_entries_and_manifests() {
        // (entries, level) admitted in turn, and the outcome of each.
        type Step = (usize, usize, Result<(), ManifestError>);
        let cases: Vec<Vec<Step>> = vec![
            // index → images, and index → index → index → images: within the depth.
            vec![(30, 1, Ok(()))],
            vec![(2, 1, Ok(())), (2, 2, Ok(())), (5, 3, Ok(()))],
            // An index at level 4 listing anything would put manifests at level 5.
            vec![
                (1, 1, Ok(())),
                (1, 2, Ok(())),
                (1, 3, Ok(())),
                (1, 4, Err(ManifestError::TooDeep { level: 4 })),
            ],
            vec![(0, 499, Err(ManifestError::TooDeep { level: 499 }))],
            vec![(MAX_INDEX_ENTRIES, 1, Ok(()))],
            vec![(20_000, 1, Err(ManifestError::TooManyEntries { entries: 20_000 }))],
            // Three indexes of 900 each: each within the entry limit, the image not.
            vec![
                (3, 1, Ok(())),
                (900, 2, Ok(())),
                (900, 2, Ok(())),
                (900, 2, Err(ManifestError::TooManyManifests { manifests: 2704 })),
            ],
            vec![
                (MAX_INDEX_ENTRIES, 1, Ok(())),
                (MAX_INDEX_ENTRIES - 1, 2, Ok(())),
                (1, 2, Err(ManifestError::TooManyManifests { manifests: 2001 })),
            ],
        ];
        for steps in cases {
            let mut budget = Budget::default();
            for (entries, level, want) in &steps {
                assert_eq!(&budget.admit(*entries, *level), want, "{steps:?}");
            }
        }
        let message = ManifestError::TooDeep { level: 4 }.to_string();
        assert!(message.contains("deeper than 4 levels"), "{message}");
        let message = ManifestError::TooManyEntries { entries: 20_000 }.to_string();
        assert!(
            message.contains("20000 manifests, more than the limit of 1000"),
            "{message}"
        );
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","config":{{"mediaType":"c","digest":"{D1}","size":10}},"layers":[{{"mediaType":"l","digest":"{D2}","size":20}}]}}"#
        )
    }

    #[test]
    fn kinds_and_media_types() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#
        );
        let helm = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{D1}","size":1}},"layers":[]}}"#
        );
        // (bytes, content type, expected media type, kind)
        let cases: Vec<(String, &str, &str, Kind)> = vec![
            (image(OCI_MANIFEST), OCI_MANIFEST, OCI_MANIFEST, Kind::Image),
            (
                image(DOCKER_MANIFEST),
                "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
                DOCKER_MANIFEST,
                Kind::Image,
            ),
            (
                image(DOCKER_MANIFEST),
                "application/octet-stream",
                DOCKER_MANIFEST,
                Kind::Image,
            ),
            (index.clone(), OCI_INDEX, OCI_INDEX, Kind::Index),
            (index.clone(), "", OCI_INDEX, Kind::Index),
            (
                index.replace(
                    "\"schemaVersion\":2",
                    &format!("\"schemaVersion\":2,\"mediaType\":\"{DOCKER_LIST}\""),
                ),
                "text/plain",
                DOCKER_LIST,
                Kind::Index,
            ),
            (helm, "", OCI_MANIFEST, Kind::Image),
        ];
        for (bytes, ct, want_type, want_kind) in cases {
            let p = parse(bytes.as_bytes(), ct).unwrap_or_else(|e| panic!("{bytes}: {e}"));
            assert_eq!((p.media_type.as_str(), p.kind), (want_type, want_kind), "{bytes}");
        }
        let p = parse(index.as_bytes(), OCI_INDEX).unwrap();
        assert_eq!(p.manifests[0].platform.as_ref().unwrap().variant.as_deref(), Some("v7"));
        let p = parse(image(OCI_MANIFEST).as_bytes(), OCI_MANIFEST).unwrap();
        assert_eq!(p.blobs().map(|d| d.size).collect::<Vec<_>>(), vec![10, 20]);
    }

    #[test]
    fn refusals() {
        let cases: [(&str, &str, &str); 6] = [
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, "application/json", "schema 1"),
            (
                "{}",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                "schema 1",
            ),
            ("not json", OCI_MANIFEST, "invalid manifest"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#,
                "",
                "unsupported",
            ),
            (r#"{"schemaVersion":2,"layers":[]}"#, OCI_MANIFEST, "without a config"),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:bad","size":1}}"#,
                OCI_MANIFEST,
                "invalid manifest",
            ),
        ];
        for (bytes, ct, want) in cases {
            let err = parse(bytes.as_bytes(), ct).unwrap_err().to_string();
            assert!(err.contains(want), "{bytes}: {err}");
        }
    }

    #[test]
    fn foreign_layers_and_attestations() {
        let foreign: Descriptor = serde_json::from_str(&format!(
            r#"{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D1}","size":1,"urls":["https://x"]}}"#
        ))
        .unwrap();
        assert!(foreign.is_foreign());
        let att: Descriptor = serde_json::from_str(&format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.digest":"{D2}","vnd.docker.reference.type":"attestation-manifest"}}}}"#
        ))
        .unwrap();
        assert!(att.is_attestation() && !att.is_foreign());
    }
}
