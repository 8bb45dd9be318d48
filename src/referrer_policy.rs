//! Which artifacts related to an image (signatures, attestations, SBOMs) travel with it: the
//! `referrers` mode, the `referrerArtifactTypes` filter and the recursion depth. Pure logic; the
//! copy engine ([`crate::copy::referrers`]) asks it about each artifact it finds.

use std::fmt;
use std::str::FromStr;

/// How deep referrers of referrers are followed by default (a signature of an attestation of an
/// image is depth 2).
pub const DEFAULT_DEPTH: usize = 3;

/// Artifact types that are signatures (`referrers: signatures` copies these and cosign `.sig` tags).
pub const SIGNATURE_TYPES: &[&str] = &[
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.cncf.notary.signature",
];

/// The `referrers` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferrersMode {
    /// Every related artifact.
    All,
    /// Cosign `.sig` tags and referrers whose artifact type is a signature type.
    Signatures,
    /// Nothing: no request is made to look for them.
    None,
}

impl FromStr for ReferrersMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ReferrersMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(ReferrersMode::All),
            "signatures" => Ok(ReferrersMode::Signatures),
            "none" => Ok(ReferrersMode::None),
            other => Err(format!("{other:?} is not one of all, signatures, none")),
        }
    }
}

impl fmt::Display for ReferrersMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferrersMode::All => "all",
            ReferrersMode::Signatures => "signatures",
            ReferrersMode::None => "none",
        })
    }
}

/// The kinds of cosign tag in an image's repository (`sha256-<hex>.sig` and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CosignTag {
    /// `.sig`: signatures.
    Signature,
    /// `.att`: attestations.
    Attestation,
    /// `.sbom`: an attached SBOM.
    Sbom,
}

impl CosignTag {
    /// Every kind.
    pub const ALL: [CosignTag; 3] = [CosignTag::Signature, CosignTag::Attestation, CosignTag::Sbom];

    /// The tag suffix, without the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            CosignTag::Signature => "sig",
            CosignTag::Attestation => "att",
            CosignTag::Sbom => "sbom",
        }
    }
}

/// The `referrerArtifactTypes` filter: `type` entries admit only the types listed (when there is at
/// least one), `!type` entries refuse a type. Media types compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactTypes {
    /// Admitted types; empty: every type.
    pub include: Vec<String>,
    /// Refused types.
    pub exclude: Vec<String>,
}

impl ArtifactTypes {
    /// Reads the entries of `referrerArtifactTypes`; the error names the bad entry.
    pub fn parse(entries: &[String]) -> Result<ArtifactTypes, String> {
        let mut types = ArtifactTypes::default();
        for entry in entries {
            let (list, media_type) = match entry.trim().strip_prefix('!') {
                Some(t) => (&mut types.exclude, t.trim()),
                None => (&mut types.include, entry.trim()),
            };
            let valid = media_type
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !media_type.contains(char::is_whitespace));
            if !valid {
                return Err(format!(
                    "{entry:?} is no media type (`type/subtype`, `!` in front to exclude)"
                ));
            }
            list.push(media_type.to_ascii_lowercase());
        }
        Ok(types)
    }

    /// Whether an artifact of `artifact_type` passes (`None`: unknown type, passes only when no
    /// include list is given).
    pub fn admits(&self, artifact_type: Option<&str>) -> bool {
        let t = artifact_type.map(str::to_ascii_lowercase);
        let listed = |list: &[String]| t.as_ref().is_some_and(|t| list.contains(t));
        !listed(&self.exclude) && (self.include.is_empty() || listed(&self.include))
    }

    /// The entries it reads from: `type` and `!type`.
    pub fn entries(&self) -> Vec<String> {
        let refused = self.exclude.iter().map(|t| format!("!{t}"));
        self.include.iter().cloned().chain(refused).collect()
    }

    /// The one type to ask a Referrers API to filter by, when exactly one is admitted.
    pub fn single(&self) -> Option<&str> {
        match self.include.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl serde::Serialize for ArtifactTypes {
    /// As the entries of `referrerArtifactTypes`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(serializer)
    }
}

/// What travels with an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerPolicy {
    /// The mode.
    pub mode: ReferrersMode,
    /// The artifact type filter.
    pub artifact_types: ArtifactTypes,
    /// Levels of referrers followed: 1 is the image's own, 2 their referrers, and so on.
    pub depth: usize,
}

impl Default for ReferrerPolicy {
    /// `referrers: all`, no filter, depth [`DEFAULT_DEPTH`].
    fn default() -> ReferrerPolicy {
        ReferrerPolicy {
            mode: ReferrersMode::All,
            artifact_types: ArtifactTypes::default(),
            depth: DEFAULT_DEPTH,
        }
    }
}

impl ReferrerPolicy {
    /// Nothing travels.
    pub fn none() -> ReferrerPolicy {
        ReferrerPolicy {
            mode: ReferrersMode::None,
            ..ReferrerPolicy::default()
        }
    }

    /// Whether nothing is looked for.
    pub fn is_off(&self) -> bool {
        self.mode == ReferrersMode::None || self.depth == 0
    }

    /// Whether the mode takes cosign tags of `kind` (before their artifact type is known).
    pub fn mode_takes_cosign(&self, kind: CosignTag) -> bool {
        match self.mode {
            ReferrersMode::All => true,
            ReferrersMode::Signatures => kind == CosignTag::Signature,
            ReferrersMode::None => false,
        }
    }

    /// Whether a cosign tag of `kind`, whose manifest has `artifact_type`, is copied.
    pub fn takes_cosign(&self, kind: CosignTag, artifact_type: Option<&str>) -> bool {
        self.mode_takes_cosign(kind) && self.artifact_types.admits(artifact_type)
    }

    /// Whether an OCI referrer of `artifact_type` is copied.
    pub fn takes_referrer(&self, artifact_type: Option<&str>) -> bool {
        let by_mode = match self.mode {
            ReferrersMode::All => true,
            ReferrersMode::Signatures => {
                artifact_type.is_some_and(|t| SIGNATURE_TYPES.iter().any(|s| s.eq_ignore_ascii_case(t)))
            }
            ReferrersMode::None => false,
        };
        by_mode && self.artifact_types.admits(artifact_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    const SPDX: &str = "application/spdx+json";
    const INTOTO: &str = "application/vnd.dsse.envelope.v1+json";

    fn policy(mode: ReferrersMode, types: &[&str]) -> ReferrerPolicy {
        let entries: Vec<String> = types.iter().map(|s| s.to_string()).collect();
        ReferrerPolicy {
            mode,
            artifact_types: ArtifactTypes::parse(&entries).unwrap(),
            depth: DEFAULT_DEPTH,
        }
    }

    #[test]
    fn modes_and_filters_decide_what_travels() {
        use CosignTag::*;
        use ReferrersMode::{All, None as Off, Signatures};
        // (mode, filter, cosign kind or referrer, artifact type, copied)
        type Case<'a> = (ReferrersMode, &'a [&'a str], Option<CosignTag>, Option<&'a str>, bool);
        let cases: &[Case] = &[
            (All, &[], Some(Signature), Some(SIG), true),
            (All, &[], Some(Sbom), Some(SPDX), true),
            (All, &[], None, Some(SPDX), true),
            (All, &[], None, None, true),
            (Signatures, &[], Some(Signature), Some(SIG), true),
            (Signatures, &[], Some(Attestation), Some(INTOTO), false),
            (Signatures, &[], None, Some(SIG), true),
            (
                Signatures,
                &[],
                None,
                Some("APPLICATION/VND.CNCF.NOTARY.SIGNATURE"),
                true,
            ),
            (Signatures, &[], None, Some(SPDX), false),
            (Signatures, &[], None, None, false),
            (Off, &[], Some(Signature), Some(SIG), false),
            (Off, &[], None, Some(SIG), false),
            (All, &["!application/spdx+json"], None, Some(SPDX), false),
            (All, &["!application/spdx+json"], None, Some(SIG), true),
            (All, &["!application/spdx+json"], Some(Sbom), Some(SPDX), false),
            (All, &[SPDX], None, Some(SPDX), true),
            (All, &[SPDX], None, Some(SIG), false),
            (All, &[SPDX], None, None, false),
            (Signatures, &[SPDX], None, Some(SPDX), false),
        ];
        for (mode, types, kind, artifact_type, want) in cases {
            let p = policy(*mode, types);
            let got = match kind {
                Some(k) => p.takes_cosign(*k, *artifact_type),
                None => p.takes_referrer(*artifact_type),
            };
            assert_eq!(got, *want, "{mode} {types:?} {kind:?} {artifact_type:?}");
        }
    }

    #[test]
    fn parsing_modes_and_types() {
        for (text, want) in [
            ("all", Ok(ReferrersMode::All)),
            (" Signatures ", Ok(ReferrersMode::Signatures)),
            ("NONE", Ok(ReferrersMode::None)),
        ] {
            assert_eq!(text.parse::<ReferrersMode>(), want);
        }
        assert!("some".parse::<ReferrersMode>().unwrap_err().contains("\"some\""));
        let types = ArtifactTypes::parse(&["text/SPDX".into(), "! application/x+json".into()]).unwrap();
        assert_eq!(types.include, vec!["text/spdx"]);
        assert_eq!(types.exclude, vec!["application/x+json"]);
        assert_eq!(types.single(), Some("text/spdx"));
        assert_eq!(types.entries(), vec!["text/spdx", "!application/x+json"]);
        for bad in ["", "!", "spdx", "a/", "/b", "a b/c"] {
            let err = ArtifactTypes::parse(&[bad.into()]).unwrap_err();
            assert!(err.contains("no media type"), "{bad}: {err}");
        }
        assert!(ReferrerPolicy::none().is_off());
        assert!(!ReferrerPolicy::default().is_off());
    }
}
