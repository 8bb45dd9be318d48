//! Platform selection: which part of an index to copy when the user asked for a platform subset.

use crate::platform::Platform;

use super::manifest::{ATTESTATION_FOR, Descriptor};

/// What to copy out of an index for a platform list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One platform was asked for: copy that platform's manifest alone, under the tag.
    Single(Descriptor),
    /// Several: a new index holding the kept entries (and their attestations); new digest.
    Filtered {
        /// The new index bytes.
        bytes: Vec<u8>,
        /// The entries it keeps, in the source's order.
        kept: Vec<Descriptor>,
    },
}

/// Requested platforms the source does not offer, and what it offers instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source offers none of the requested platforms {}; it has {}", list(.requested), list(.available))]
pub struct NoMatchingPlatform {
    /// Asked for.
    pub requested: Vec<Platform>,
    /// Offered by the index.
    pub available: Vec<Platform>,
}

fn list(platforms: &[Platform]) -> String {
    platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Chooses entries of an index (`index_bytes` parsed into `entries`) for `requested` platforms.
/// Returns the selection and the requested platforms the index lacks.
pub fn select(
    index_bytes: &[u8],
    entries: &[Descriptor],
    requested: &[Platform],
) -> Result<(Selection, Vec<Platform>), NoMatchingPlatform> {
    let runnable: Vec<&Descriptor> = entries
        .iter()
        .filter(|e| !e.is_attestation() && e.platform.is_some())
        .collect();
    let mut kept: Vec<&Descriptor> = Vec::new();
    let mut missing = Vec::new();
    for want in requested {
        let found = runnable.iter().find(|e| {
            let p = e.platform.as_ref().expect("filtered on platform");
            want.accepts(&p.os, &p.architecture, p.variant.as_deref())
        });
        match found {
            Some(e) if !kept.iter().any(|k| k.digest == e.digest) => kept.push(e),
            Some(_) => {}
            None => missing.push(want.clone()),
        }
    }
    if kept.is_empty() {
        let available = runnable
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .map(|p| Platform {
                os: p.os.clone(),
                architecture: p.architecture.clone(),
                variant: p.variant.clone(),
            })
            .collect();
        return Err(NoMatchingPlatform {
            requested: requested.to_vec(),
            available,
        });
    }
    if requested.len() == 1 {
        return Ok((Selection::Single(kept[0].clone()), missing));
    }
    let keep = |e: &Descriptor| {
        kept.iter().any(|k| k.digest == e.digest)
            || (e.is_attestation()
                && e.annotations
                    .get(ATTESTATION_FOR)
                    .is_some_and(|d| kept.iter().any(|k| k.digest.to_string() == *d)))
    };
    let kept_entries: Vec<Descriptor> = entries.iter().filter(|e| keep(e)).cloned().collect();
    Ok((
        Selection::Filtered {
            bytes: filtered_index(index_bytes, entries, &keep),
            kept: kept_entries,
        },
        missing,
    ))
}

/// The index with only the kept entries; every other field (and each kept entry) unchanged.
fn filtered_index(index_bytes: &[u8], entries: &[Descriptor], keep: &dyn Fn(&Descriptor) -> bool) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(index_bytes).expect("index already parsed once");
    if let Some(serde_json::Value::Array(raw_entries)) = value.get_mut("manifests") {
        let mut flags = entries.iter().map(keep);
        raw_entries.retain(|_| flags.next().unwrap_or(false));
    }
    serde_json::to_vec(&value).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::manifest::{OCI_INDEX, parse};

    fn digest(n: u8) -> String {
        format!(
            "sha256:{}",
            format!("{n:x}").repeat(64).chars().take(64).collect::<String>()
        )
    }

    fn index() -> String {
        let entry = |n: u8, arch: &str, variant: Option<&str>| {
            let v = variant.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
            format!(
                r#"{{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"{arch}","os":"linux"{v}}}}}"#,
                digest(n)
            )
        };
        let att = |n: u8, of: u8| {
            format!(
                r#"{{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.digest":"{}","vnd.docker.reference.type":"attestation-manifest"}}}}"#,
                digest(n),
                digest(of)
            )
        };
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{},{},{}],"annotations":{{"a":"b"}}}}"#,
            entry(1, "amd64", None),
            entry(2, "arm64", Some("v8")),
            entry(3, "arm", Some("v7")),
            att(4, 1),
            att(5, 2)
        )
    }

    fn run(requested: &[&str]) -> Result<(Selection, Vec<Platform>), NoMatchingPlatform> {
        let bytes = index();
        let parsed = parse(bytes.as_bytes(), OCI_INDEX).unwrap();
        let requested: Vec<Platform> = requested.iter().map(|p| Platform::parse(p).unwrap()).collect();
        select(bytes.as_bytes(), &parsed.manifests, &requested)
    }

    #[test]
    fn one_platform_selects_its_manifest() {
        let cases = [
            ("linux/amd64", 1),
            ("arm64", 2),
            ("linux/arm64/v8", 2),
            ("linux/arm/v7", 3),
            ("linux/arm", 3),
        ];
        for (p, n) in cases {
            let (sel, missing) = run(&[p]).unwrap();
            let Selection::Single(d) = sel else {
                panic!("{p}: not single")
            };
            assert_eq!(d.digest.to_string(), digest(n), "{p}");
            assert!(missing.is_empty());
        }
    }

    #[test]
    fn several_platforms_filter_the_index_keeping_their_attestations() {
        let (sel, missing) = run(&["linux/amd64", "linux/arm64", "linux/s390x"]).unwrap();
        let Selection::Filtered { bytes, kept } = sel else {
            panic!("not filtered")
        };
        let kept: Vec<String> = kept.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(kept, vec![digest(1), digest(2), digest(4), digest(5)]);
        assert_eq!(missing, vec![Platform::parse("linux/s390x").unwrap()]);
        let reparsed = parse(&bytes, OCI_INDEX).unwrap();
        assert_eq!(reparsed.manifests.len(), 4);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["annotations"]["a"], "b", "other fields are kept");
        // deterministic: same input, same bytes, same digest
        let Selection::Filtered { bytes: again, .. } = run(&["linux/amd64", "linux/arm64", "linux/s390x"]).unwrap().0
        else {
            panic!()
        };
        assert_eq!(bytes, again);
    }

    #[test]
    fn variant_mismatch_and_absent_platforms() {
        let err = run(&["linux/arm/v6", "windows/amd64"]).unwrap_err();
        assert_eq!(err.requested.len(), 2);
        assert_eq!(
            err.available.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
        );
        assert!(
            err.to_string()
                .contains("none of the requested platforms linux/arm/v6, windows/amd64")
        );
    }
}
