//! The `copycat sync --images FILE` format, kyma image-syncer's:
//!
//! ```yaml
//! targetRepoPrefix: "registry.example.com/external/"
//! images:
//!   - source: "alpine:3.21"                 # → registry.example.com/external/library/alpine:3.21
//!   - source: "ghcr.io/org/app@sha256:…"    # → …/external/org/app@sha256:… (by digest)
//!     tag: "1.4"                            # → …/external/org/app:1.4 instead
//!   - source: "quay.io/org/tool:2"
//!     amd64Only: true                       # → only the linux/amd64 manifest
//! ```
//! The target is the prefix plus the source repository path without its registry host, same tag.

use serde::Deserialize;

use crate::copy::CopyRequest;
use crate::naming::NamingError;
use crate::platform::Platform;
use crate::reference::{ImageRef, ReferenceError};

/// Why one entry of the file cannot be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `source` is no image reference.
    #[error("{0}")]
    Source(ReferenceError),
    /// The prefix and the source's repository make no valid target.
    #[error("target would be invalid: {0}")]
    Target(ReferenceError),
    /// `tag` or `digestTagTemplate` makes no valid target tag.
    #[error("{0}")]
    Tag(#[from] NamingError),
    /// The target tag is not valid for the target repository.
    #[error("{0}")]
    TargetTag(ReferenceError),
}

/// One image of the file, resolved to a copy request.
#[derive(Debug, Clone)]
pub struct SyncEntry {
    /// Source and target.
    pub request: CopyRequest,
    /// Platforms to copy (empty: all).
    pub platforms: Vec<Platform>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    target_repo_prefix: String,
    images: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    source: String,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    amd64_only: bool,
}

/// Parses the file; every bad entry is reported, by position and source.
pub fn parse(text: &str, digest_tag_template: Option<&str>) -> Result<Vec<SyncEntry>, Vec<String>> {
    let file: File = serde_saphyr::from_str(text).map_err(|e| vec![format!("invalid images file: {e}")])?;
    let prefix = file.target_repo_prefix.trim().trim_end_matches('/');
    if prefix.is_empty() || prefix.contains("://") {
        return Err(vec![format!(
            "targetRepoPrefix {:?} must be a registry host with an optional path, e.g. registry.example.com/external/",
            file.target_repo_prefix
        )]);
    }
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in file.images.iter().enumerate() {
        match resolve(prefix, entry, digest_tag_template) {
            Ok(e) => entries.push(e),
            Err(e) => problems.push(format!("images[{i}] ({}): {e}", entry.source)),
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

fn resolve(prefix: &str, entry: &Entry, digest_tag_template: Option<&str>) -> Result<SyncEntry, EntryError> {
    let source = ImageRef::parse(&entry.source).map_err(EntryError::Source)?;
    let target = ImageRef::parse(&format!("{prefix}/{}", source.repository())).map_err(EntryError::Target)?;
    let target_tag = crate::naming::target_tag(&source, entry.tag.as_deref(), digest_tag_template)?;
    if let Some(tag) = &target_tag {
        target.with_tag(tag).map_err(EntryError::TargetTag)?;
    }
    let platforms = if entry.amd64_only {
        vec![Platform::parse("linux/amd64").expect("valid")]
    } else {
        vec![]
    };
    Ok(SyncEntry {
        request: CopyRequest {
            source,
            target,
            target_tag,
        },
        platforms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn targets_follow_image_syncer() {
        let text = format!(
            "targetRepoPrefix: \"reg.example.com/external/\"\nimages:\n  - source: alpine:3.21\n  - source: ghcr.io/org/app@{D}\n  - source: ghcr.io/org/app@{D}\n    tag: \"1.4\"\n  - source: quay.io/org/tool:2@{D}\n    amd64Only: true\n  - source: localhost:5000/x/y\n"
        );
        let entries = parse(&text, None).unwrap();
        let shown: Vec<String> = entries
            .iter()
            .map(|e| e.request.target_display(e.request.source.digest()))
            .collect();
        assert_eq!(
            shown,
            vec![
                "reg.example.com/external/library/alpine:3.21".to_owned(),
                format!("reg.example.com/external/org/app@{D}"),
                "reg.example.com/external/org/app:1.4".to_owned(),
                "reg.example.com/external/org/tool:2".to_owned(),
                "reg.example.com/external/x/y:latest".to_owned(),
            ]
        );
        assert_eq!(entries[3].platforms, vec![Platform::parse("linux/amd64").unwrap()]);
        assert!(entries[0].platforms.is_empty());
        let anchored = parse(&text, Some(crate::naming::DEFAULT_DIGEST_TAG_TEMPLATE)).unwrap();
        assert_eq!(
            anchored[1].request.target_display(None),
            format!("reg.example.com/external/org/app:copycat-{}", &D[7..]),
            "a digest-only source gets its anchor tag"
        );
    }

    #[test]
    fn problems_name_the_entry() {
        let cases = [
            ("targetRepoPrefix: r.io\nimages:\n  - source: Bad\n", "images[0] (Bad)"),
            (
                "targetRepoPrefix: r.io\nimages:\n  - source: a\n    tag: '-x'\n",
                "images[0] (a)",
            ),
            (
                "targetRepoPrefix: r.io\nimages:\n  - sourc: a\n",
                "unknown field `sourc`",
            ),
            ("targetRepoPrefix: https://r.io\nimages: []\n", "targetRepoPrefix"),
            ("images: []\n", "targetRepoPrefix"),
        ];
        for (text, want) in cases {
            let problems = parse(text, None).unwrap_err().join("\n");
            assert!(problems.contains(want), "{text:?}: {problems}");
        }
    }
}
