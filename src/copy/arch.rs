//! `$arch` from the image itself, named as k8s-copycat names it, for targets whose prefix uses
//! `$arch` when no node platform is known. Pure functions.

use super::manifest::{Descriptor, ManifestError};

/// `$arch` of an index: the sorted, distinct architectures of its entries (`unknown` and empty ones,
/// such as attestations, left out) joined with `-` (`amd64-arm64`); `multiarch` when none remain.
/// Variants collapse (`arm` v6 and v7 are `arm`).
pub fn index_architectures(entries: &[Descriptor]) -> String {
    let mut archs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| p.architecture.as_str())
        .filter(|a| !a.is_empty() && *a != "unknown")
        .collect();
    archs.sort_unstable();
    archs.dedup();
    if archs.is_empty() {
        "multiarch".into()
    } else {
        archs.join("-")
    }
}

/// `$arch` of a single image: the `architecture` of its config blob.
pub fn config_architecture(config: &[u8]) -> Result<String, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        architecture: String,
    }
    let parsed: Config = serde_json::from_slice(config)
        .map_err(|e| ManifestError::Invalid(format!("the image config is not valid JSON ({e})")))?;
    if parsed.architecture.is_empty() {
        return Err(ManifestError::Invalid("the image config names no architecture".into()));
    }
    Ok(parsed.architecture)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: Option<(&str, &str)>) -> Descriptor {
        let platform = platform.map(|(os, arch)| serde_json::json!({"os": os, "architecture": arch}));
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "size": 1,
            "platform": platform,
        }))
        .unwrap()
    }

    #[test]
    fn index_architecture_names() {
        let cases: [(Vec<Descriptor>, &str); 5] = [
            (
                vec![entry(Some(("linux", "arm64"))), entry(Some(("linux", "amd64")))],
                "amd64-arm64",
            ),
            (
                vec![
                    entry(Some(("linux", "amd64"))),
                    entry(Some(("unknown", "unknown"))),
                    entry(None),
                ],
                "amd64",
            ),
            (
                vec![entry(Some(("linux", "arm"))), entry(Some(("linux", "arm")))],
                "arm",
            ),
            (
                vec![entry(Some(("linux", "amd64"))), entry(Some(("windows", "amd64")))],
                "amd64",
            ),
            (vec![entry(None), entry(Some(("unknown", "unknown")))], "multiarch"),
        ];
        for (entries, want) in cases {
            assert_eq!(index_architectures(&entries), want);
        }
    }

    #[test]
    fn config_architecture_names() {
        assert_eq!(
            config_architecture(br#"{"architecture":"arm64","os":"linux"}"#),
            Ok("arm64".into())
        );
        assert!(config_architecture(br#"{"os":"linux"}"#).is_err());
        assert!(config_architecture(b"not json").is_err());
    }
}
