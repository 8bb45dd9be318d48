//! Flux's `ImageRepository` (`image.toolkit.fluxcd.io/v1` and `v1beta2`, the same fields), as
//! imagerepo-mirror used it: the image-reflector-controller scans `spec.image` and writes
//! `status.lastScanResult`; a new `revision` means the set of tags changed, and its
//! `latestTags` are mirrored ([`scan_changed`], [`TagSelection`], [`naming_for`]).

use serde::{Deserialize, Serialize};

use crate::naming::{NameContext, NamingError, TargetNaming};
use crate::reference::ReferenceError;

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

/// How `ImageRepository` objects are followed (`fluxImageRepositories`), built by the wiring.
#[derive(Debug, Clone)]
pub struct FluxSettings {
    /// Namespaces watched; empty: all.
    pub namespaces: Vec<String>,
    /// copycat's target naming with `destinationPrefix` (or the target's `repoPrefix`) as prefix;
    /// its placeholder values are set per object ([`naming_for`]).
    pub naming: TargetNaming,
    /// Most tags copied per scan of one object.
    pub max_tags: usize,
    /// Also copy every tag the source repository lists.
    pub all_tags: bool,
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

/// The tags a new scan asks to copy: the scan's `latest_tags` first, then the tags `listed` by the
/// registry (with `allTags`; empty otherwise) in reverse alphabetical order, the order of Flux's
/// `latestTags` (a registry lists in no order it promises), each once, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelection {
    /// The tags to copy, in that order.
    pub tags: Vec<String>,
    /// How many more the limit left out.
    pub left_out: usize,
}

impl TagSelection {
    /// Selects from `scan` and `listed` (see [`TagSelection`]).
    pub fn of(scan: &ScanResult, listed: &[String], limit: usize) -> TagSelection {
        let mut seen = std::collections::HashSet::new();
        let mut listed: Vec<&String> = listed.iter().collect();
        listed.sort_unstable_by(|a, b| b.cmp(a));
        let all: Vec<&String> = scan
            .latest_tags
            .iter()
            .chain(listed)
            .filter(|t| seen.insert(t.as_str()))
            .collect();
        TagSelection {
            left_out: all.len().saturating_sub(limit),
            tags: all.into_iter().take(limit).cloned().collect(),
        }
    }
}

/// Why an `ImageRepository` gives no copies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FluxError {
    /// `spec.image`, or the image with one of its tags, is no valid reference.
    #[error("spec.image: {0}")]
    Image(#[from] ReferenceError),
    /// The target named for it is no valid reference.
    #[error(transparent)]
    Naming(#[from] NamingError),
}

/// How the copies of the `ImageRepository` `namespace/name` are named: copycat's target naming
/// (`base`: the target host, path, `pathMap` and the `repoPrefix` or `destinationPrefix` template)
/// with `$namespace` the object's namespace and `$podname` its name.
pub fn naming_for(base: &TargetNaming, namespace: &str, name: &str) -> TargetNaming {
    TargetNaming {
        ctx: NameContext {
            namespace: namespace.to_owned(),
            podname: name.to_owned(),
            container_name: String::new(),
            arch: None,
        },
        ..base.clone()
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
    fn tags_selected_latest_first_then_listed_newest_first_within_the_limit() {
        let listed: Vec<String> = ["1.0", "latest", "0.9", "1.2", "1.1"].map(String::from).to_vec();
        // (listed, limit, tags, left out, what)
        type Case<'a> = (&'a [String], usize, &'a [&'a str], usize, &'a str);
        let cases: [Case<'_>; 5] = [
            (&[], 10, &["1.1", "1.0"], 0, "latest tags only"),
            (&[], 1, &["1.1"], 1, "latest tags, limited"),
            (
                &listed,
                10,
                &["1.1", "1.0", "latest", "1.2", "0.9"],
                0,
                "all tags, each once",
            ),
            (&listed, 3, &["1.1", "1.0", "latest"], 2, "all tags, limited"),
            (&listed, 0, &[], 5, "limit 0"),
        ];
        for (listed, limit, tags, left_out, what) in cases {
            let got = TagSelection::of(&scan("r"), listed, limit);
            assert_eq!(
                (got.tags.iter().map(String::as_str).collect::<Vec<_>>(), got.left_out),
                (tags.to_vec(), left_out),
                "{what}"
            );
        }
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
