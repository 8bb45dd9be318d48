//! image-operator's `Image` (`skopeo.io/v1alpha1`), taken as image-operator's users wrote it: the
//! spec as served ([`ImageSpec`]), checked into an [`ImagePlan`] (source repository, one tag or a
//! version pattern, destination, mode), the copies of one pass ([`next_pass`]) and the status
//! written back ([`ImageStatus`]). A spec that cannot be followed is a [`SpecError`] whose
//! [`SpecError::reason`] goes on the object's `Failed` condition, never a crash.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::copy::CopyRequest;
use crate::reference::{self, ImageRef, ReferenceError};
use crate::tag_pattern::{PatternError, VersionPattern};

/// The API group of `Image`.
pub const GROUP: &str = "skopeo.io";
/// Its version.
pub const VERSION: &str = "v1alpha1";
/// Its kind.
pub const KIND: &str = "Image";
/// Its plural (the resource in URLs and RBAC rules).
pub const PLURAL: &str = "images";

/// The resource, for `kube::Api::all_with` / `namespaced_with`.
pub fn api_resource() -> kube::core::ApiResource {
    super::api_resource(GROUP, VERSION, KIND, PLURAL)
}

/// How the daemon follows `Image` objects (`images.*` settings, built by `wiring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSettings {
    /// Namespaces watched; empty: cluster-wide.
    pub namespaces: Vec<String>,
    /// How long a source repository's tag list is reused.
    pub tag_list_interval: Duration,
    /// Tags of one object being copied at once; the rest wait.
    pub max_tags_per_image: usize,
    /// Where destinations without a registry host go: copycat's target (`TARGET_REGISTRY`, or the
    /// ECR registry).
    pub target_registry: String,
}

/// An `Image` object as copycat reads and writes it.
pub type ImageObject = kube::core::Object<ImageSpec, ImageStatus>;

/// `spec` of an `Image` (manifests/crds/images.skopeo.io.yaml). `mode` stays text so an unknown
/// one is reported on the object rather than failing to decode it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// `OneShot`, `OnceByTag` or `Recurrent`.
    pub mode: String,
    /// For `Recurrent`: `[0-9]+[smhdw]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<String>,
    /// Tags `X.Y.Z-rcN` also match the pattern.
    #[serde(default)]
    pub allow_candidate_release: bool,
    /// What to copy.
    pub source: SourceSpec,
    /// Where to.
    pub destination: DestinationSpec,
}

/// `spec.source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// Repository with its registry (`quay.io/argoproj/argocd`).
    pub name: String,
    /// A tag or a version pattern.
    pub version: String,
}

/// `spec.destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationSpec {
    /// Repository; without a registry host it goes to copycat's target.
    pub name: String,
    /// Destination tag of a single-tag copy (default: the source tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `status` of an `Image`, written through the status subresource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the last pass ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// `Ready`, `Progressing`, `Failed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One entry per source tag copied or tried.
    #[serde(default)]
    pub tags: Vec<TagResult>,
    /// Matching tags not copied yet (over `maxTagsPerImage` this pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tags: Option<u64>,
}

/// A status condition, as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// What happened to one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagResult {
    /// The source tag.
    pub tag: String,
    /// Its digest when copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// `registry/repository:tag` written.
    #[serde(default)]
    pub destination: String,
    /// `Copied`, `Present`, `Failed`, `Moved` (upstream moved an already copied tag; not re-copied).
    pub result: String,
    /// Detail (the error of a failure).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// Why a spec cannot be followed; reported on the object's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `spec.mode` is none of the three.
    #[error("spec.mode {0:?}: expected OneShot, OnceByTag or Recurrent")]
    Mode(String),
    /// `spec.frequency` does not parse.
    #[error("spec.frequency {0:?}: expected a number followed by s, m, h, d or w (15m, 1h), above 0")]
    Frequency(String),
    /// `Recurrent` without `spec.frequency`.
    #[error("spec.frequency: Recurrent needs one (15m, 1h)")]
    MissingFrequency,
    /// `spec.source.version` looks like a pattern but is not a valid one.
    #[error("spec.source.version: {0}")]
    Pattern(#[source] PatternError),
    /// `spec.source` names no repository (or names a tag or digest in `name`).
    #[error("spec.source.name {name:?}: {reason}")]
    Source {
        /// As given.
        name: String,
        /// Why.
        reason: String,
    },
    /// `spec.destination` names no repository, or a tag no copy can be written to.
    #[error("spec.destination: {0}")]
    Destination(String),
    /// The object does not fit the `Image` schema (a field of the wrong type).
    #[error("the object does not decode as an Image: {0}")]
    Decode(String),
}

impl SpecError {
    /// The reason on the `Failed` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Mode(_) => "InvalidMode",
            SpecError::Frequency(_) | SpecError::MissingFrequency => "InvalidFrequency",
            SpecError::Pattern(_) => "InvalidPattern",
            SpecError::Source { .. } => "InvalidSource",
            SpecError::Destination(_) => "InvalidDestination",
            SpecError::Decode(_) => "InvalidSpec",
        }
    }
}

/// How often the object's tags are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Once, when the object is created or changed.
    OneShot,
    /// Each matching tag once, now and as new ones appear; a copied tag is never re-copied.
    OnceByTag,
    /// Again every `every` (HEAD-first, so an unchanged tag costs two HEADs).
    Recurrent {
        /// `spec.frequency`.
        every: Duration,
    },
}

/// Which source tags: one, or those a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versions {
    /// `spec.source.version` is a tag.
    Tag(String),
    /// `spec.source.version` is a version pattern.
    Pattern {
        /// The pattern.
        pattern: VersionPattern,
        /// `allowCandidateRelease`.
        candidates: bool,
    },
}

/// A checked spec: what to copy, where, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// How often.
    pub mode: Mode,
    /// The source repository (no tag).
    pub source: ImageRef,
    /// Which tags.
    pub versions: Versions,
    /// The destination repository (its tag ignored).
    pub destination: ImageRef,
    /// The destination tag of a single-tag copy; `None`: each source tag keeps its name.
    pub destination_tag: Option<String>,
}

/// `spec.frequency`: `[0-9]+` then `s`, `m`, `h`, `d` or `w`, above zero.
pub fn parse_frequency(text: &str) -> Result<Duration, SpecError> {
    let bad = || SpecError::Frequency(text.to_owned());
    let unit_at = text.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(unit_at);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds_per: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(seconds_per) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(bad()),
    }
}

impl ImagePlan {
    /// Checks `spec`; destination names without a registry host go to `target_registry`
    /// (copycat's target).
    pub fn from_spec(spec: &ImageSpec, target_registry: &str) -> Result<ImagePlan, SpecError> {
        let mode = match spec.mode.as_str() {
            "OneShot" => Mode::OneShot,
            "OnceByTag" => Mode::OnceByTag,
            "Recurrent" => Mode::Recurrent {
                every: parse_frequency(spec.frequency.as_deref().ok_or(SpecError::MissingFrequency)?)?,
            },
            other => return Err(SpecError::Mode(other.to_owned())),
        };
        let source = repository(&spec.source.name).map_err(|reason| SpecError::Source {
            name: spec.source.name.clone(),
            reason,
        })?;
        let version = spec.source.version.trim();
        let versions = if VersionPattern::is_pattern(version) {
            Versions::Pattern {
                pattern: VersionPattern::parse(version).map_err(SpecError::Pattern)?,
                candidates: spec.allow_candidate_release,
            }
        } else {
            source.with_tag(version).map_err(|e| SpecError::Source {
                name: format!("{}:{version}", spec.source.name),
                reason: e.to_string(),
            })?;
            Versions::Tag(version.to_owned())
        };
        let name = spec.destination.name.trim();
        let full_name = if reference::names_registry(name) {
            name.to_owned()
        } else {
            format!("{target_registry}/{name}")
        };
        let destination = repository(&full_name).map_err(|r| SpecError::Destination(format!("name {name:?}: {r}")))?;
        let destination_tag = match (&versions, spec.destination.version.as_deref().map(str::trim)) {
            (_, None | Some("")) => None,
            // image-operator's examples repeat the pattern as the destination version.
            (Versions::Pattern { .. }, Some(v)) if v == version => None,
            (Versions::Pattern { .. }, Some(v)) => {
                return Err(SpecError::Destination(format!(
                    "version {v:?}: a pattern copies many tags, each keeps its name; leave destination.version empty"
                )));
            }
            (Versions::Tag(_), Some(v)) => {
                destination
                    .with_tag(v)
                    .map_err(|e| SpecError::Destination(format!("version {v:?}: {e}")))?;
                Some(v.to_owned())
            }
        };
        Ok(ImagePlan {
            mode,
            source,
            versions,
            destination,
            destination_tag,
        })
    }

    /// The copy of source tag `tag` (a tag from the source's list, or the spec's own tag).
    pub fn request(&self, tag: &str) -> Result<CopyRequest, ReferenceError> {
        Ok(CopyRequest {
            source: self.source.with_tag(tag)?,
            target: self.destination.clone(),
            target_tag: Some(self.destination_tag.clone().unwrap_or_else(|| tag.to_owned())),
        })
    }

    /// The source tags to consider, given the source's tag list (for a pattern), oldest first.
    pub fn tags<'a>(&'a self, listed: &'a [String]) -> Vec<&'a str> {
        match &self.versions {
            Versions::Tag(tag) => vec![tag.as_str()],
            Versions::Pattern { pattern, candidates } => pattern.select(listed.iter().map(String::as_str), *candidates),
        }
    }
}

/// A repository name with its registry and no tag or digest.
fn repository(name: &str) -> Result<ImageRef, String> {
    let name = name.trim();
    if name.contains('@') || reference::has_explicit_tag(name) {
        return Err("name the repository only; the tag goes in version".into());
    }
    ImageRef::parse(name).map_err(|e| e.to_string())
}

/// The copies of one pass: the newest matching tags not yet done, at most `max`; the others wait
/// for the next pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass<'a> {
    /// Tags to copy now, newest first.
    pub copy: Vec<&'a str>,
    /// Matching tags not done and not in this pass.
    pub pending: usize,
}

/// The pass over `matching` (oldest first, as [`ImagePlan::tags`] gives them) when the tags in
/// `done` are already copied (OnceByTag, or the tags of a OneShot pattern already handled).
pub fn next_pass<'a>(matching: &[&'a str], done: &HashSet<String>, max: usize) -> Pass<'a> {
    let todo: Vec<&str> = matching.iter().rev().copied().filter(|t| !done.contains(*t)).collect();
    let pending = todo.len().saturating_sub(max);
    Pass {
        copy: todo.into_iter().take(max).collect(),
        pending,
    }
}

/// The status of an object whose spec cannot be followed: not ready, failed with the reason.
pub fn invalid_status(error: &SpecError, generation: Option<i64>, now: &str) -> ImageStatus {
    let condition = |type_: &str, status: &str| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: error.reason().to_owned(),
        message: error.to_string(),
        last_transition_time: Some(now.to_owned()),
    };
    ImageStatus {
        observed_generation: generation,
        last_sync_time: None,
        conditions: vec![
            condition("Ready", "False"),
            condition("Progressing", "False"),
            condition("Failed", "True"),
        ],
        tags: vec![],
        pending_tags: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        mode: &str,
        frequency: Option<&str>,
        source: &str,
        version: &str,
        dest: &str,
        dest_version: Option<&str>,
    ) -> ImageSpec {
        ImageSpec {
            mode: mode.into(),
            frequency: frequency.map(String::from),
            allow_candidate_release: false,
            source: SourceSpec {
                name: source.into(),
                version: version.into(),
            },
            destination: DestinationSpec {
                name: dest.into(),
                version: dest_version.map(String::from),
            },
        }
    }

    #[test]
    fn frequency_table() {
        for (text, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3_600),
            ("1d", 86_400),
            ("1w", 604_800),
            ("01m", 60),
        ] {
            assert_eq!(parse_frequency(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        for bad in [
            "",
            "m",
            "15",
            "0s",
            "1.5h",
            "-1m",
            "15M",
            "1y",
            " 1m",
            "99999999999999999999w",
        ] {
            assert!(parse_frequency(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn spec_table() {
        let target = "mirror.example:5000";
        // (spec, Ok(source, versions-is-pattern, destination, destination tag) | Err(reason))
        let ok = |s: ImageSpec, source: &str, pattern: bool, dest: &str, tag: Option<&str>| {
            let plan = ImagePlan::from_spec(&s, target).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(plan.source.name(), source, "{s:?}");
            assert_eq!(matches!(plan.versions, Versions::Pattern { .. }), pattern, "{s:?}");
            assert_eq!(plan.destination.name(), dest, "{s:?}");
            assert_eq!(plan.destination_tag.as_deref(), tag, "{s:?}");
            plan
        };
        let plan = ok(
            spec(
                "OneShot",
                None,
                "quay.io/argoproj/argocd",
                "v2.13.x",
                "tchoupinax/argoproj/argocd",
                Some("v2.13.x"),
            ),
            "quay.io/argoproj/argocd",
            true,
            "mirror.example:5000/tchoupinax/argoproj/argocd",
            None,
        );
        assert_eq!(plan.mode, Mode::OneShot);
        ok(
            spec(
                "OneShot",
                None,
                "quay.io/a/b",
                "1.27",
                "other.example/a/b",
                Some("stable"),
            ),
            "quay.io/a/b",
            false,
            "other.example/a/b",
            Some("stable"),
        );
        let recurrent = ok(
            spec(
                "Recurrent",
                Some("15m"),
                "quay.io/nginx/nginx-ingress",
                "3.7-alpine",
                "nginx-ingress",
                None,
            ),
            "quay.io/nginx/nginx-ingress",
            false,
            "mirror.example:5000/nginx-ingress",
            None,
        );
        assert_eq!(
            recurrent.mode,
            Mode::Recurrent {
                every: Duration::from_secs(900)
            }
        );
        let request = recurrent.request("3.7-alpine").unwrap();
        assert_eq!(request.source.to_string(), "quay.io/nginx/nginx-ingress:3.7-alpine");
        assert_eq!(request.target_tag.as_deref(), Some("3.7-alpine"));

        for (s, reason) in [
            (spec("Daily", None, "quay.io/a/b", "1", "b", None), "InvalidMode"),
            (
                spec("Recurrent", None, "quay.io/a/b", "1", "b", None),
                "InvalidFrequency",
            ),
            (
                spec("Recurrent", Some("15x"), "quay.io/a/b", "1", "b", None),
                "InvalidFrequency",
            ),
            (
                spec("OneShot", None, "quay.io/a/b", "v2.x", "b", None),
                "InvalidPattern",
            ),
            (spec("OneShot", None, "quay.io/a/b:1", "1", "b", None), "InvalidSource"),
            (spec("OneShot", None, "", "1", "b", None), "InvalidSource"),
            (
                spec("OneShot", None, "quay.io/a/b", "bad tag!", "b", None),
                "InvalidSource",
            ),
            (
                spec("OneShot", None, "quay.io/a/b", "1", "", None),
                "InvalidDestination",
            ),
            (
                spec("OneShot", None, "quay.io/a/b", "2.x.x", "b", Some("latest")),
                "InvalidDestination",
            ),
            (
                spec("OneShot", None, "quay.io/a/b", "1", "b", Some("no good")),
                "InvalidDestination",
            ),
        ] {
            let e = ImagePlan::from_spec(&s, target).unwrap_err();
            assert_eq!(e.reason(), reason, "{s:?}: {e}");
            let status = invalid_status(&e, Some(3), "2026-01-01T00:00:00Z");
            assert_eq!(status.conditions.iter().filter(|c| c.status == "True").count(), 1);
            assert_eq!(status.conditions[2].type_, "Failed");
            assert_eq!(status.conditions[2].reason, reason);
        }
    }

    #[test]
    fn a_pass_takes_the_newest_undone_tags_up_to_the_limit() {
        let matching = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"];
        let done: HashSet<String> = ["1.4.0".to_owned(), "1.1.0".to_owned()].into();
        assert_eq!(
            next_pass(&matching, &done, 2),
            Pass {
                copy: vec!["1.3.0", "1.2.0"],
                pending: 1
            }
        );
        assert_eq!(next_pass(&matching, &done, 10).pending, 0);
        let all: HashSet<String> = matching.iter().map(|t| t.to_string()).collect();
        assert!(next_pass(&matching, &all, 2).copy.is_empty());
    }

    #[test]
    fn the_served_spec_decodes() {
        let json = serde_json::json!({
            "mode": "OnceByTag",
            "allowCandidateRelease": true,
            "source": {"name": "quay.io/argoproj/argocd", "version": "v2.13.x"},
            "destination": {"name": "argoproj/argocd"}
        });
        let spec: ImageSpec = serde_json::from_value(json).unwrap();
        assert!(spec.allow_candidate_release);
        assert_eq!(spec.destination.version, None);
    }
}
