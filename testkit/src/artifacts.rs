//! Synthetic but format-faithful artifacts related to images, as the tools that make them write
//! them: cosign simple-signing signatures and in-toto attestations (the cosign tag scheme,
//! `sha256-<hex>.sig` / `.att`), and an SPDX SBOM as an OCI 1.1 artifact with `subject` and
//! `artifactType`, published with the referrers tag schema (an index tagged `sha256-<hex>`, as oras
//! and cosign do on registries without the Referrers API).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::image::{Blob, Image, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, mix};
use crate::push::Client;
use crate::registry::Registry;
use crate::util::sha256_digest;

/// cosign's simple-signing payload media type (the `.sig` layer).
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a cosign signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// DSSE envelope media type (cosign `.att` layers).
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// SPDX JSON artifact type.
pub const SPDX_JSON: &str = "application/spdx+json";
/// The OCI empty descriptor's media type (config of artifacts).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The subject of a related artifact: an image manifest or index.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

impl Subject {
    /// The subject `image`.
    pub fn of(image: &Image) -> Subject {
        Subject {
            media_type: image.media_type.clone(),
            digest: image.digest.clone(),
            size: image.manifest.len() as u64,
        }
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }

    /// cosign's tag for it: `sha256-<hex>.<suffix>`.
    pub fn cosign_tag(&self, suffix: &str) -> String {
        format!("{}.{suffix}", fallback_tag(&self.digest))
    }
}

/// The referrers tag schema's tag for `digest`: `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A fake but well-formed signature value (base64 of pseudo-random bytes).
fn signature_value(seed: u64) -> String {
    let bytes: Vec<u8> = (0..64).map(|i| mix(seed, i) as u8).collect();
    STANDARD.encode(bytes)
}

/// cosign's config of a signature or attestation manifest: its payload layers as `diff_ids`.
fn cosign_config(layers: &[&Blob]) -> Blob {
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>() },
        "config": {},
    });
    Blob::from_bytes(OCI_CONFIG, serde_json::to_vec(&config).expect("JSON"))
}

/// An OCI manifest of `config` and annotated `layers`, compact as cosign writes it.
fn cosign_manifest(config: Blob, layers: Vec<(Blob, Value)>) -> Image {
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|(blob, annotations)| {
            let mut d = blob.descriptor();
            d["annotations"] = annotations.clone();
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": descriptors,
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("JSON"));
    let mut blobs = vec![config];
    blobs.extend(layers.into_iter().map(|(b, _)| b));
    Image {
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(&manifest),
        manifest,
        blobs,
        children: vec![],
        platform: None,
    }
}

/// A cosign signature manifest (`sha256-<hex>.sig`) of `subject` with `count` signatures: each a
/// simple-signing payload layer annotated with its signature (a re-sign adds one).
pub fn cosign_signature(subject: &Subject, repository: &str, count: u64, seed: u64) -> Image {
    let layers: Vec<(Blob, Value)> = (0..count)
        .map(|i| {
            let payload = json!({
                "critical": {
                    "identity": { "docker-reference": repository },
                    "image": { "docker-manifest-digest": subject.digest },
                    "type": "cosign container image signature",
                },
                "optional": { "n": i.to_string() },
            });
            let blob = Blob::from_bytes(SIMPLE_SIGNING, serde_json::to_vec(&payload).expect("JSON"));
            (blob, json!({ SIGNATURE_ANNOTATION: signature_value(mix(seed, i)) }))
        })
        .collect();
    let refs: Vec<&Blob> = layers.iter().map(|(b, _)| b).collect();
    let config = cosign_config(&refs);
    cosign_manifest(config, layers)
}

/// A cosign attestation manifest (`sha256-<hex>.att`) of `subject`: a DSSE envelope around an
/// in-toto SLSA provenance statement.
pub fn cosign_attestation(subject: &Subject, repository: &str, seed: u64) -> Image {
    let predicate_type = "https://slsa.dev/provenance/v0.2";
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{ "name": repository, "digest": { "sha256": subject.digest.trim_start_matches("sha256:") } }],
        "predicate": { "builder": { "id": format!("https://example.com/builder/{seed}") }, "buildType": "https://example.com/build" },
    });
    let envelope = json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": STANDARD.encode(serde_json::to_vec(&statement).expect("JSON")),
        "signatures": [{ "keyid": "", "sig": signature_value(seed) }],
    });
    let blob = Blob::from_bytes(DSSE_ENVELOPE, serde_json::to_vec(&envelope).expect("JSON"));
    let annotations = json!({ "predicateType": predicate_type, SIGNATURE_ANNOTATION: "" });
    let config = cosign_config(&[&blob]);
    cosign_manifest(config, vec![(blob, annotations)])
}

/// An SPDX SBOM of `subject` as an OCI 1.1 artifact: `artifactType` `application/spdx+json`, the
/// empty config, one SPDX document layer, and `subject`.
pub fn spdx_sbom(subject: &Subject, seed: u64) -> Image {
    artifact(subject, SPDX_JSON, spdx_document(subject, seed), seed)
}

/// An OCI 1.1 artifact of `artifact_type` holding `content`, referring to `subject`.
pub fn artifact(subject: &Subject, artifact_type: &str, content: Vec<u8>, seed: u64) -> Image {
    let empty = Blob::from_bytes(OCI_EMPTY, &b"{}"[..]);
    let layer = Blob::from_bytes(artifact_type, content);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": OCI_EMPTY, "digest": empty.digest, "size": 2, "data": "e30=" },
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
        "annotations": { "org.opencontainers.image.created": format!("2024-01-{:02}T00:00:00Z", seed % 28 + 1) },
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("JSON"));
    Image {
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(&manifest),
        manifest,
        blobs: vec![empty, layer],
        children: vec![],
        platform: None,
    }
}

fn spdx_document(subject: &Subject, seed: u64) -> Vec<u8> {
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": subject.digest,
        "documentNamespace": format!("https://example.com/spdx/{seed}"),
        "creationInfo": { "created": "2024-01-01T00:00:00Z", "creators": ["Tool: copycat-testkit"] },
        "packages": [{ "SPDXID": "SPDXRef-Package-1", "name": format!("pkg-{seed}"), "downloadLocation": "NOASSERTION" }],
    });
    serde_json::to_vec_pretty(&doc).expect("JSON")
}

/// The descriptor of `artifact` in a referrers index (with its `artifactType` and annotations).
pub fn referrer_descriptor(artifact: &Image) -> Value {
    let manifest: Value = serde_json::from_slice(&artifact.manifest).expect("artifact manifests are JSON");
    let mut d = json!({
        "mediaType": artifact.media_type,
        "digest": artifact.digest,
        "size": artifact.manifest.len(),
    });
    let artifact_type = manifest
        .get("artifactType")
        .cloned()
        .or_else(|| manifest["config"].get("mediaType").cloned());
    if let Some(t) = artifact_type {
        d["artifactType"] = t;
    }
    if let Some(a) = manifest.get("annotations") {
        d["annotations"] = a.clone();
    }
    d
}

/// Pushes `artifact` (which names `subject`) to `repo` by digest and adds it to the referrers tag
/// schema's index of `subject` (`sha256-<hex>`), as a client does on a registry without the
/// Referrers API. Not safe against concurrent writers (which is what copycat must be).
pub async fn publish_referrer(reg: &Registry, repo: &str, subject: &Subject, artifact: &Image) -> anyhow::Result<()> {
    let client = Client::new(reg)?;
    client.push_image(repo, &artifact.digest, artifact).await?;
    let tag = fallback_tag(&subject.digest);
    let mut entries = match client.manifest_digest(repo, &tag).await? {
        Some(_) => {
            let (bytes, _) = client.get_manifest(repo, &tag).await?;
            let index: Value = serde_json::from_slice(&bytes)?;
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        None => vec![],
    };
    entries.push(referrer_descriptor(artifact));
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    client
        .push_raw_manifest(repo, &tag, OCI_INDEX, Bytes::from(serde_json::to_vec(&index)?))
        .await?;
    Ok(())
}

/// Digests listed by the referrers index `bytes`, sorted.
pub fn index_digests(bytes: &[u8]) -> anyhow::Result<Vec<String>> {
    let index: Value = serde_json::from_slice(bytes)?;
    let mut out: Vec<String> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}
