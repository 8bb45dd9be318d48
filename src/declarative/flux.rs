//! Flux's `ImageRepository` (`image.toolkit.fluxcd.io/v1` and `v1beta2`, the same fields), as
//! imagerepo-mirror used it: the image-reflector-controller scans `spec.image` and writes
//! `status.lastScanResult`; a new `revision` means the set of tags changed, and its
//! `latestTags` are mirrored ([`scan_changed`], [`ScanResult::requests`]).

use serde::{Deserialize, Serialize};

use crate::copy::CopyRequest;
use crate::reference::{ImageRef, ReferenceError};

/// The API group.
pub const GROUP: &str = "image.toolkit.fluxcd.io";
/// The versions served by Flux (v1 since Flux 2.7), newest first.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta2"];
/// The kind.
pub const KIND: &str = "ImageRepository";
/// The plural.
pub const PLURAL: &str = "imagerepositories";

/// The resource in `version`, for `kube::Api::all_with`.
pub fn api_resource(version: &str) -> kube::core::ApiResource {
    super::api_resource(GROUP, version, KIND, PLURAL)
}

/// An `ImageRepository` as copycat reads it.
pub type ImageRepositoryObject = kube::core::Object<ImageRepositorySpec, ImageRepositoryStatus>;

/// The part of `spec` copycat reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositorySpec {
    /// The scanned image repository (`ghcr.io/org/app`, or `org/app` on Docker Hub).
    pub image: String,
    /// A `kubernetes.io/dockerconfigjson` Secret in the object's namespace with credentials for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

/// `{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalObjectReference {
    /// The Secret's name.
    pub name: String,
}

/// The part of `status` copycat reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositoryStatus {
    /// The last scan; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_result: Option<ScanResult>,
}

/// `status.lastScanResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanResult {
    /// Changes when the set of tags changes.
    #[serde(default)]
    pub revision: String,
    /// How many tags the scan found.
    #[serde(default)]
    pub tag_count: u64,
    /// The latest few tags (Flux keeps 10 by default).
    #[serde(default)]
    pub latest_tags: Vec<String>,
}

/// Whether a change of an object from `old` (`None` on create) to `new` asks for a mirror:
/// only a set revision that differs from the one before (imagerepo-mirror's predicate).
pub fn scan_changed(old: Option<&ScanResult>, new: Option<&ScanResult>) -> bool {
    match revision(new) {
        None => false,
        Some(new) => revision(old) != Some(new),
    }
}

/// The revision of a scan, when it has one.
fn revision(scan: Option<&ScanResult>) -> Option<&str> {
    scan.map(|s| s.revision.as_str()).filter(|r| !r.is_empty())
}

impl ScanResult {
    /// The copies of `latest_tags` of `image` to `prefix` + the image's repository path, each tag
    /// kept (`ghcr.io/org/app:1.2` → `<prefix>/org/app:1.2`), at most `limit`, in the scan's order.
    pub fn requests(&self, image: &str, prefix: &str, limit: usize) -> Result<Vec<CopyRequest>, ReferenceError> {
        let source = ImageRef::parse(image)?;
        let target = ImageRef::parse(&format!("{}/{}", prefix.trim_end_matches('/'), source.repository()))?;
        self.latest_tags
            .iter()
            .take(limit)
            .map(|tag| {
                Ok(CopyRequest {
                    source: source.with_tag(tag)?,
                    target: target.clone(),
                    target_tag: Some(tag.clone()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(revision: &str) -> ScanResult {
        ScanResult {
            revision: revision.into(),
            tag_count: 2,
            latest_tags: vec!["1.1".into(), "1.0".into()],
        }
    }

    #[test]
    fn revision_predicate_table() {
        let (empty, a, b) = (scan(""), scan("sha256:a"), scan("sha256:b"));
        // (old: None on create or before a scan, new, mirror?, what): imagerepo-mirror's table.
        let cases: [(Option<&ScanResult>, Option<&ScanResult>, bool, &str); 8] = [
            (None, None, false, "create without a scan result"),
            (None, Some(&empty), false, "create with an empty revision"),
            (None, Some(&a), true, "create with a revision"),
            (Some(&a), Some(&a), false, "update, same revision"),
            (Some(&a), Some(&b), true, "update, revision differs"),
            (None, Some(&b), true, "update, nil → set"),
            (None, None, false, "update, both nil"),
            (Some(&a), None, false, "update, scan result gone"),
        ];
        for (old, new, want, what) in cases {
            assert_eq!(scan_changed(old, new), want, "{what}");
        }
    }

    #[test]
    fn latest_tags_go_under_the_prefix() {
        let requests = scan("r")
            .requests("ghcr.io/org/app", "mirror.example:5000/flux/", 1)
            .unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].source.to_string(), "ghcr.io/org/app:1.1");
        assert_eq!(requests[0].target_display(None), "mirror.example:5000/flux/org/app:1.1");
        let hub = scan("r").requests("nginx", "mirror.example", 5).unwrap();
        assert_eq!(hub[1].target_display(None), "mirror.example/library/nginx:1.0");
        assert!(scan("r").requests("Bad Image", "mirror.example", 5).is_err());
    }

    #[test]
    fn the_served_object_decodes() {
        let object: ImageRepositoryObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageRepository",
            "metadata": {"name": "app", "namespace": "flux-system"},
            "spec": {"image": "ghcr.io/org/app", "interval": "5m", "secretRef": {"name": "pull"}},
            "status": {"lastScanResult": {"revision": "abc", "tagCount": 3, "latestTags": ["3", "2", "1"], "scanTime": "2026-01-01T00:00:00Z"}}
        }))
        .unwrap();
        assert_eq!(object.spec.secret_ref.unwrap().name, "pull");
        assert_eq!(
            object.status.unwrap().last_scan_result.unwrap().latest_tags,
            ["3", "2", "1"]
        );
    }
}
