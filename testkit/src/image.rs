//! Synthetic images, deterministic from a seed: single-platform (OCI or Docker schema2),
//! OCI index (optionally with buildx-style attestations), Docker manifest list, Helm-like artifact.
//!
//! Manifests are pretty-printed JSON, so a copier that re-serializes them changes their digest.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::layer::{LayerDigests, LayerSpec};
use crate::util::sha256_digest;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Helm chart config media type.
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
/// Helm chart content media type.
pub const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// In-toto attestation layer media type (buildx).
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Every manifest media type, for `Accept` headers (without it, distribution 2.8 answers 404 for
/// OCI content by tag and rewrites Docker schema2 as schema1).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers at least this large (compressed) are streamed at push time instead of held in memory.
pub const STREAM_THRESHOLD: u64 = 16 * 1024 * 1024;

/// Manifest flavour of a single-platform image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OCI media types.
    Oci,
    /// Docker schema2 media types.
    Docker,
}

/// An OS/architecture pair, as in index entries and image configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<architecture>` with an optional variant.
    pub fn linux(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_owned),
        }
    }

    /// `linux/amd64`.
    pub fn amd64() -> Platform {
        Platform::linux("amd64", None)
    }

    /// `linux/arm64/v8`.
    pub fn arm64() -> Platform {
        Platform::linux("arm64", Some("v8"))
    }

    /// Platform object for index entries and configs.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Held in memory.
    Bytes(Bytes),
    /// Regenerated from its recipe whenever needed (large layers).
    Generated(LayerSpec),
}

/// A blob (config or layer) with its descriptor fields.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Media type used in the referencing manifest.
    pub media_type: String,
    /// `sha256:` digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The content.
    pub source: BlobSource,
}

impl Blob {
    /// A blob held in memory.
    pub fn from_bytes(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            size: data.len() as u64,
            source: BlobSource::Bytes(data),
        }
    }

    /// A generated tar+gzip layer holding one file of `payload_size` pseudo-random bytes;
    /// returns the blob and its diff_id. Layers of [`STREAM_THRESHOLD`] bytes or more are not
    /// kept in memory (this makes one generation pass to learn the digest).
    pub fn layer(media_type: &str, seed: u64, payload_size: u64) -> anyhow::Result<(Blob, String)> {
        let spec = LayerSpec { seed, payload_size };
        let (source, d): (BlobSource, LayerDigests) = if payload_size + 4096 < STREAM_THRESHOLD {
            let (bytes, d) = spec.to_bytes()?;
            (BlobSource::Bytes(bytes.into()), d)
        } else {
            (BlobSource::Generated(spec), spec.generate(|_| Ok(()))?)
        };
        let blob = Blob {
            media_type: media_type.into(),
            digest: d.digest,
            size: d.size,
            source,
        };
        Ok((blob, d.diff_id))
    }

    /// The bytes, if held in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.source {
            BlobSource::Bytes(b) => Some(b),
            BlobSource::Generated(_) => None,
        }
    }

    /// `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An image or index with everything needed to push it byte-exact.
#[derive(Debug, Clone)]
pub struct Image {
    /// Manifest media type (also the `Content-Type` to push it with).
    pub media_type: String,
    /// Raw manifest bytes.
    pub manifest: Bytes,
    /// `sha256:` digest of `manifest`.
    pub digest: String,
    /// Blobs referenced by this manifest (config first, then layers); empty for indexes.
    pub blobs: Vec<Blob>,
    /// Manifests referenced by this index, in index order (attestations included).
    pub children: Vec<Image>,
    /// Platform, when the image is an index child (attestations: `unknown/unknown`).
    pub platform: Option<Platform>,
}

impl Image {
    /// A single-platform image with layers of the given payload sizes.
    pub fn single(format: Format, platform: &Platform, layer_sizes: &[u64], seed: u64) -> anyhow::Result<Image> {
        let (manifest_type, config_type, layer_type) = match format {
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let (blob, diff_id) = Blob::layer(layer_type, mix(seed, i as u64), size)?;
            layers.push(blob);
            diff_ids.push(diff_id);
        }
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": { "dev.copycat.testkit.seed": seed.to_string() },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config = Blob::from_bytes(config_type, pretty(&config));
        let image = Image::manifest(manifest_type, config, layers, None)?;
        Ok(Image {
            platform: Some(platform.clone()),
            ..image
        })
    }

    /// Shorthand for a `linux/<arch>` OCI image (`arm64` gets variant `v8`).
    pub fn oci(arch: &str, layer_sizes: &[u64], seed: u64) -> anyhow::Result<Image> {
        Image::single(Format::Oci, &platform_for(arch), layer_sizes, seed)
    }

    /// Shorthand for a `linux/<arch>` Docker schema2 image (`arm64` gets variant `v8`).
    pub fn docker(arch: &str, layer_sizes: &[u64], seed: u64) -> anyhow::Result<Image> {
        Image::single(Format::Docker, &platform_for(arch), layer_sizes, seed)
    }

    /// OCI index with `linux/amd64` and `linux/arm64/v8` children (each with layers of
    /// `layer_sizes`), plus, if `attestations`, one buildx-style attestation manifest per platform.
    pub fn oci_index(layer_sizes: &[u64], attestations: bool, seed: u64) -> anyhow::Result<Image> {
        let mut entries = Vec::new();
        let mut children = Vec::new();
        for (i, platform) in [Platform::amd64(), Platform::arm64()].iter().enumerate() {
            let child = Image::single(Format::Oci, platform, layer_sizes, mix(seed, 100 + i as u64))?;
            entries.push(entry(&child, platform.to_json(), None));
            children.push(child);
        }
        if attestations {
            for i in 0..children.len() {
                let att = attestation(&children[i], mix(seed, 200 + i as u64))?;
                let annotations = json!({
                    "vnd.docker.reference.digest": children[i].digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                });
                entries.push(entry(&att, att.platform_json(), Some(annotations)));
                children.push(att);
            }
        }
        Image::index(OCI_INDEX, entries, children)
    }

    /// Docker manifest list with `linux/amd64` and `linux/arm64/v8` schema2 children.
    pub fn docker_manifest_list(layer_sizes: &[u64], seed: u64) -> anyhow::Result<Image> {
        let mut entries = Vec::new();
        let mut children = Vec::new();
        for (i, platform) in [Platform::amd64(), Platform::arm64()].iter().enumerate() {
            let child = Image::single(Format::Docker, platform, layer_sizes, mix(seed, 300 + i as u64))?;
            entries.push(entry(&child, platform.to_json(), None));
            children.push(child);
        }
        Image::index(DOCKER_MANIFEST_LIST, entries, children)
    }

    /// An index of the given children with their platforms; a child that is an index itself (an
    /// index of indexes) is listed without one, as the image spec allows.
    pub fn index_of(media_type: &str, children: Vec<Image>) -> anyhow::Result<Image> {
        let entries = children
            .iter()
            .map(|c| {
                let mut e = entry(c, c.platform_json(), None);
                if c.is_index()
                    && let Some(fields) = e.as_object_mut()
                {
                    fields.remove("platform");
                }
                e
            })
            .collect();
        Image::index(media_type, entries, children)
    }

    /// Helm-chart-like OCI artifact: Helm config, one chart tar+gzip layer of `chart_size`
    /// payload bytes. The manifest carries `mediaType` (as Helm ≥ 3.13 / oras-go v2 write it).
    pub fn helm_chart(chart_size: u64, seed: u64) -> anyhow::Result<Image> {
        Image::helm(chart_size, seed, true)
    }

    /// Like [`Image::helm_chart`] but without the top-level `mediaType` field, as older Helm
    /// (oras-go v1) pushed charts; registries then rely on the `Content-Type`.
    pub fn helm_chart_legacy(chart_size: u64, seed: u64) -> anyhow::Result<Image> {
        Image::helm(chart_size, seed, false)
    }

    fn helm(chart_size: u64, seed: u64, with_media_type: bool) -> anyhow::Result<Image> {
        let config = json!({
            "name": "testchart",
            "version": format!("0.1.{}", seed % 1000),
            "description": "copycat testkit chart",
            "apiVersion": "v2",
            "type": "application",
        });
        // Helm writes its config compactly.
        let config = Blob::from_bytes(HELM_CONFIG, serde_json::to_vec(&config)?);
        let (chart, _) = Blob::layer(HELM_CHART, mix(seed, 400), chart_size)?;
        let mut manifest = json!({
            "schemaVersion": 2,
            "config": config.descriptor(),
            "layers": [chart.descriptor()],
            "annotations": { "org.opencontainers.image.title": "testchart" },
        });
        if with_media_type {
            manifest["mediaType"] = json!(OCI_MANIFEST);
        }
        let manifest = Bytes::from(pretty(&manifest));
        Ok(Image {
            media_type: OCI_MANIFEST.into(),
            digest: sha256_digest(&manifest),
            manifest,
            blobs: vec![config, chart],
            children: Vec::new(),
            platform: None,
        })
    }

    /// A manifest of `config` and `layers`, as is.
    pub fn manifest(
        media_type: &str,
        config: Blob,
        layers: Vec<Blob>,
        annotations: Option<Value>,
    ) -> anyhow::Result<Image> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        if let Some(a) = annotations {
            m["annotations"] = a;
        }
        let manifest = Bytes::from(pretty(&m));
        let mut blobs = vec![config];
        blobs.extend(layers);
        Ok(Image {
            media_type: media_type.into(),
            digest: sha256_digest(&manifest),
            manifest,
            blobs,
            children: Vec::new(),
            platform: None,
        })
    }

    fn index(media_type: &str, entries: Vec<Value>, children: Vec<Image>) -> anyhow::Result<Image> {
        let m = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": entries });
        let manifest = Bytes::from(pretty(&m));
        Ok(Image {
            media_type: media_type.into(),
            digest: sha256_digest(&manifest),
            manifest,
            blobs: Vec::new(),
            children,
            platform: None,
        })
    }

    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }

    /// Every distinct blob of this image and its children (first occurrence order).
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        self.walk(&mut |img| {
            for b in &img.blobs {
                if seen.insert(b.digest.clone()) {
                    out.push(b);
                }
            }
        });
        out
    }

    /// Every manifest digest (children first, this one last).
    pub fn all_manifest_digests(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut |img| out.push(img.digest.clone()));
        out
    }

    /// Sum of the sizes of all distinct blobs.
    pub fn total_blob_size(&self) -> u64 {
        self.all_blobs().iter().map(|b| b.size).sum()
    }

    /// Calls `f` on every child (recursively, children first) and then on `self`.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Image)) {
        for c in &self.children {
            c.walk(f);
        }
        f(self);
    }

    /// The child for `architecture` (first match, attestations excluded).
    pub fn child_for(&self, architecture: &str) -> Option<&Image> {
        self.children
            .iter()
            .find(|c| c.platform.as_ref().is_some_and(|p| p.architecture == architecture))
    }

    fn platform_json(&self) -> Value {
        self.platform
            .as_ref()
            .map(Platform::to_json)
            .unwrap_or_else(|| json!({ "architecture": "unknown", "os": "unknown" }))
    }
}

/// A buildx-style attestation manifest for `subject`.
fn attestation(subject: &Image, seed: u64) -> anyhow::Result<Image> {
    let platform = subject.platform.clone().unwrap_or_else(Platform::amd64);
    let hex = subject.digest.trim_start_matches("sha256:");
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{
            "name": format!("pkg:docker/testkit/image@{seed}?platform={}%2F{}", platform.os, platform.architecture),
            "digest": { "sha256": hex },
        }],
        "predicate": { "spdxVersion": "SPDX-2.3", "name": format!("sbom-{seed}") },
    });
    let layer_bytes = serde_json::to_vec(&statement)?;
    let layer = Blob::from_bytes(IN_TOTO, layer_bytes);
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    });
    let config = Blob::from_bytes(OCI_CONFIG, serde_json::to_vec(&config)?);
    let mut layer_desc = layer.descriptor();
    layer_desc["annotations"] = json!({ "in-toto.io/predicate-type": "https://spdx.dev/Document" });
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer_desc],
    });
    let manifest = Bytes::from(pretty(&m));
    Ok(Image {
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(&manifest),
        manifest,
        blobs: vec![config, layer],
        children: Vec::new(),
        platform: Some(Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            variant: None,
        }),
    })
}

fn entry(child: &Image, platform: Value, annotations: Option<Value>) -> Value {
    let mut e = json!({
        "mediaType": child.media_type,
        "digest": child.digest,
        "size": child.manifest.len(),
        "platform": platform,
    });
    if let Some(a) = annotations {
        e["annotations"] = a;
    }
    e
}

fn platform_for(arch: &str) -> Platform {
    match arch {
        "arm64" => Platform::arm64(),
        other => Platform::linux(other, None),
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("JSON values serialize")
}

/// SplitMix64 of `seed` and `i`: derived seeds for children and layers.
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed
        ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let a = Image::oci("amd64", &[1000, 2000], 1).unwrap();
        let b = Image::oci("amd64", &[1000, 2000], 1).unwrap();
        let c = Image::oci("amd64", &[1000, 2000], 2).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        assert_eq!(a.blobs.len(), 3);
        let config: Value = serde_json::from_slice(a.blobs[0].bytes().unwrap()).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(config["architecture"], "amd64");
    }

    #[test]
    fn index_with_attestations() {
        let idx = Image::oci_index(&[100], true, 3).unwrap();
        assert_eq!(idx.children.len(), 4);
        let m: Value = serde_json::from_slice(&idx.manifest).unwrap();
        let e = &m["manifests"][2];
        assert_eq!(e["platform"]["architecture"], "unknown");
        assert_eq!(
            e["annotations"]["vnd.docker.reference.digest"],
            idx.children[0].digest.as_str()
        );
        assert_eq!(e["annotations"]["vnd.docker.reference.type"], "attestation-manifest");
        assert_eq!(m["manifests"][1]["platform"]["variant"], "v8");
        assert_eq!(idx.child_for("arm64").unwrap().digest, idx.children[1].digest);
        assert_eq!(idx.all_manifest_digests().len(), 5);
    }

    #[test]
    fn large_layers_are_not_held() {
        let (blob, _) = Blob::layer(OCI_LAYER_GZIP, 1, STREAM_THRESHOLD).unwrap();
        assert!(blob.bytes().is_none());
        assert!(blob.size > STREAM_THRESHOLD);
    }
}
