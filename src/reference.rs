//! Container image references: parsing and normalisation.
//!
//! copycat keys its state (what has been mirrored, where it went) by image reference, and the same image
//! shows up under many spellings in pod specs: `nginx`, `docker.io/nginx`, `index.docker.io/library/nginx:latest`.
//! Normalising them here, once, is what keeps the daemon from mirroring one image three times. The grammar and the
//! normalisation rules are those of Docker's `github.com/distribution/reference` (`reference.go`, `normalize.go`,
//! `regexp.go`), because that is what the container runtime applies to the same strings; agreeing with it means
//! we back up exactly the image the kubelet pulls.
//!
//! The parser is hand-written rather than a regular expression so every rejection can say precisely which part of
//! the reference is wrong, and so it cannot panic on hostile input (references come from any pod in the cluster).

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Registry that references without a domain resolve to: Docker Hub's canonical name in references,
/// configuration, credentials and metric labels.
pub const DOCKER_HUB: &str = "docker.io";
/// Every spelling of Docker Hub a reference, a config entry, a Docker `config.json` key or a metric
/// label may use; all collapse to [`DOCKER_HUB`] so one registry has one identity.
pub const DOCKER_HUB_SPELLINGS: [&str; 4] = [
    DOCKER_HUB,
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];
/// Docker Hub's namespace for "official" images, implied by single-component Hub paths.
const OFFICIAL_PREFIX: &str = "library/";
/// Tag implied when a reference names neither a tag nor a digest, as `docker pull` does.
const DEFAULT_TAG: &str = "latest";
/// Registries reject longer names (distribution `NameTotalLengthMax`).
const MAX_NAME_LEN: usize = 255;
/// Registries reject longer tags (distribution tag grammar `[\w][\w.-]{0,127}`).
const MAX_TAG_LEN: usize = 128;

/// Why a reference or digest was rejected.
///
/// One variant per problem so callers and tests can tell them apart without matching on text; every message
/// quotes the whole input and the offending part, because these end up in logs and events read by someone who
/// has to find the broken pod spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ReferenceError {
    /// The reference is the empty string.
    #[error("invalid reference \"\": empty reference")]
    Empty,
    /// Leading or trailing whitespace; refused rather than trimmed, so a sloppy config is noticed by the caller.
    #[error("invalid reference {input:?}: leading or trailing whitespace")]
    Whitespace {
        /// The reference as given.
        input: String,
    },
    /// References are ASCII-only; reported separately because non-ASCII look-alikes are easy to miss by eye.
    #[error("invalid reference {input:?}: non-ASCII character {ch:?}")]
    NonAscii {
        /// The reference as given.
        input: String,
        /// The first non-ASCII character.
        ch: char,
    },
    /// A bare 64-hex-character string is an image ID, which Docker refuses to read as a name.
    #[error("invalid reference {input:?}: a 64-character hex string is an image ID, not a repository name")]
    AmbiguousHexName {
        /// The reference as given.
        input: String,
    },
    /// Nothing names the repository (`:tag`, `@sha256:…`, `docker.io/`).
    #[error("invalid reference {input:?}: missing repository name")]
    MissingRepository {
        /// The reference as given.
        input: String,
    },
    /// A repository path has an empty component (`a//b`, `/a`, `a/`).
    #[error("invalid reference {input:?}: empty path component (leading, trailing or doubled '/')")]
    EmptyPathComponent {
        /// The reference as given.
        input: String,
    },
    /// Repository paths are lower-case; tags and registry hosts may have upper case.
    #[error("invalid reference {input:?}: repository name must be lowercase ({repository:?})")]
    Uppercase {
        /// The reference as given.
        input: String,
        /// The repository path as written.
        repository: String,
    },
    /// A path component begins or ends with a separator (`-a`, `a.`).
    #[error(
        "invalid reference {input:?}: path component {component:?} must start and end with a lowercase letter or digit"
    )]
    PathComponentEdge {
        /// The reference as given.
        input: String,
        /// The offending path component.
        component: String,
    },
    /// A run of separator characters that the grammar does not allow (`..`, `___`, `._`, `-_`).
    #[error(
        "invalid reference {input:?}: invalid separator {separator:?} in path component {component:?} \
         (allowed: \".\", \"_\", \"__\" or a run of \"-\")"
    )]
    InvalidSeparator {
        /// The reference as given.
        input: String,
        /// The separator run as written.
        separator: String,
        /// The path component containing it.
        component: String,
    },
    /// A character that may not appear in a repository path.
    #[error("invalid reference {input:?}: invalid character {ch:?} in path component {component:?}")]
    InvalidPathCharacter {
        /// The reference as given.
        input: String,
        /// The first offending character.
        ch: char,
        /// The path component containing it.
        component: String,
    },
    /// `registry/repository` after normalisation is longer than registries accept.
    #[error("invalid reference {input:?}: name is {len} characters, more than {MAX_NAME_LEN}")]
    NameTooLong {
        /// The reference as given.
        input: String,
        /// Length of the normalised `registry/repository`.
        len: usize,
    },
    /// The registry part has a port but no host (`:5000/x`).
    #[error("invalid reference {input:?}: registry {registry:?} has no host")]
    EmptyHost {
        /// The reference as given.
        input: String,
        /// The registry part as written.
        registry: String,
    },
    /// A dot-separated label of the registry host is empty or not letters, digits and inner hyphens.
    #[error(
        "invalid reference {input:?}: registry host {host:?} has invalid component {component:?} \
         (letters, digits and inner '-' only)"
    )]
    InvalidDomainComponent {
        /// The reference as given.
        input: String,
        /// The registry host as written.
        host: String,
        /// The offending label.
        component: String,
    },
    /// An IPv6 address without brackets, which cannot be told apart from `host:port`.
    #[error("invalid reference {input:?}: IPv6 registry address {registry:?} must be in brackets, like [::1]:5000")]
    UnbracketedIpv6 {
        /// The reference as given.
        input: String,
        /// The registry part as written.
        registry: String,
    },
    /// A bracketed host that is not a valid IPv6 address, or a missing `]`.
    #[error("invalid reference {input:?}: {host:?} is not a valid bracketed IPv6 address")]
    InvalidIpv6 {
        /// The reference as given.
        input: String,
        /// The bracketed host as written.
        host: String,
    },
    /// A `:` after the registry host with nothing after it.
    #[error("invalid reference {input:?}: registry {registry:?} has an empty port")]
    EmptyPort {
        /// The reference as given.
        input: String,
        /// The registry part as written.
        registry: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("invalid reference {input:?}: invalid port {port:?} (must be a number from 1 to 65535)")]
    InvalidPort {
        /// The reference as given.
        input: String,
        /// The port as written.
        port: String,
    },
    /// A `:` after the repository with nothing after it.
    #[error("invalid reference {input:?}: empty tag")]
    EmptyTag {
        /// The reference as given.
        input: String,
    },
    /// A tag longer than registries accept.
    #[error("invalid reference {input:?}: tag {tag:?} is longer than {MAX_TAG_LEN} characters")]
    TagTooLong {
        /// The reference as given.
        input: String,
        /// The tag as written.
        tag: String,
    },
    /// Tags may not begin with `.` or `-`.
    #[error("invalid reference {input:?}: tag {tag:?} must start with a letter, digit or '_'")]
    InvalidTagStart {
        /// The reference as given.
        input: String,
        /// The tag as written.
        tag: String,
    },
    /// A character outside `[A-Za-z0-9_.-]` in a tag.
    #[error("invalid reference {input:?}: invalid character {ch:?} in tag {tag:?}")]
    InvalidTagCharacter {
        /// The reference as given.
        input: String,
        /// The tag as written.
        tag: String,
        /// The first offending character.
        ch: char,
    },
    /// Nothing after `@`, or an empty string given as a digest.
    #[error("{}: empty digest", digest_context(.reference, .digest))]
    EmptyDigest {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
    },
    /// A digest without the `:` between algorithm and encoded value.
    #[error("{}: expected <algorithm>:<encoded>", digest_context(.reference, .digest))]
    MissingDigestSeparator {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
    },
    /// An algorithm that does not match `[a-z0-9]+([.+_-][a-z0-9]+)*`.
    #[error(
        "{}: algorithm {algorithm:?} must be lowercase letters and digits joined by single '.', '+', '_' or '-'",
        digest_context(.reference, .digest)
    )]
    InvalidAlgorithm {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The algorithm as written.
        algorithm: String,
    },
    /// A well-formed algorithm copycat cannot verify: only `sha256` and `sha512` are accepted, since
    /// every manifest and blob is checked against its digest and content that cannot be checked is
    /// never copied.
    #[error(
        "{}: unsupported digest algorithm {algorithm:?}; only sha256 and sha512 are accepted",
        digest_context(.reference, .digest)
    )]
    UnsupportedAlgorithm {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The algorithm as written.
        algorithm: String,
    },
    /// Nothing after `algorithm:`.
    #[error("{}: empty encoded value after {algorithm:?}", digest_context(.reference, .digest))]
    EmptyEncoded {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The algorithm as written.
        algorithm: String,
    },
    /// A character outside `[A-Za-z0-9=_-]` in the encoded value.
    #[error("{}: invalid character {ch:?} in encoded value", digest_context(.reference, .digest))]
    InvalidEncodedCharacter {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The first offending character.
        ch: char,
    },
    /// A sha256/sha512 value of the wrong length; a truncated digest would silently match nothing.
    #[error("{}: {algorithm} needs {expected} hex characters, got {got}", digest_context(.reference, .digest))]
    DigestLength {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The algorithm (`sha256` or `sha512`).
        algorithm: String,
        /// Required number of hex characters.
        expected: usize,
        /// Number of characters given.
        got: usize,
    },
    /// A sha256/sha512 value that is not lowercase hex; registries compare digests as strings.
    #[error("{}: {algorithm} needs lowercase hex, found {ch:?}", digest_context(.reference, .digest))]
    DigestNotLowercaseHex {
        /// The whole reference when the digest was part of one; `None` when a digest was parsed alone.
        reference: Option<String>,
        /// The digest as written.
        digest: String,
        /// The algorithm (`sha256` or `sha512`).
        algorithm: String,
        /// The first offending character.
        ch: char,
    },
}

/// Message prefix for digest errors: a digest inside a reference is reported against the whole reference,
/// a digest parsed on its own against itself.
fn digest_context(reference: &Option<String>, digest: &str) -> String {
    match reference {
        Some(reference) => format!("invalid reference {reference:?}: digest {digest:?}"),
        None => format!("invalid digest {digest:?}"),
    }
}

/// A content digest such as `sha256:e3b0…`, the only identity of an image that cannot move.
///
/// Ordered so digest sets can live in `BTreeSet`s and be listed deterministically.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: String,
    encoded: String,
}

impl Digest {
    /// Parses `algorithm:encoded`.
    ///
    /// Only `sha256` and `sha512` are accepted, with their exact lengths in lowercase hex: copycat verifies
    /// every byte it copies against its digest, and those are the algorithms registries verify too. Other
    /// algorithms with valid grammar (the OCI spec allows registering new ones) are refused here, at parse time,
    /// rather than deep in a copy.
    pub fn parse(s: &str) -> Result<Digest, ReferenceError> {
        parse_digest(s, None)
    }

    /// Builds a sha256 digest from a hex string, e.g. one computed locally with `sha2`.
    pub fn sha256_hex(hex: &str) -> Result<Digest, ReferenceError> {
        Digest::parse(&format!("sha256:{hex}"))
    }

    /// The algorithm, e.g. `sha256`; needed to choose a hasher when verifying blobs.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The encoded value after the `:` (lowercase hex for sha256/sha512).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.encoded)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// Serialised as its string form, the way registries, manifests and our state files spell digests.
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Validated on the way in, so a corrupt state file cannot smuggle in a digest that never matches.
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `reference` is the surrounding image reference, if any, so errors can point at it.
fn parse_digest(s: &str, reference: Option<&str>) -> Result<Digest, ReferenceError> {
    let reference = || reference.map(str::to_owned);
    let digest = || s.to_owned();
    if s.is_empty() {
        return Err(ReferenceError::EmptyDigest {
            reference: reference(),
            digest: digest(),
        });
    }
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return Err(ReferenceError::MissingDigestSeparator {
            reference: reference(),
            digest: digest(),
        });
    };
    let algorithm_ok = algorithm
        .split(['.', '+', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !algorithm_ok {
        return Err(ReferenceError::InvalidAlgorithm {
            reference: reference(),
            digest: digest(),
            algorithm: algorithm.to_owned(),
        });
    }
    if !matches!(algorithm, "sha256" | "sha512") {
        return Err(ReferenceError::UnsupportedAlgorithm {
            reference: reference(),
            digest: digest(),
            algorithm: algorithm.to_owned(),
        });
    }
    if encoded.is_empty() {
        return Err(ReferenceError::EmptyEncoded {
            reference: reference(),
            digest: digest(),
            algorithm: algorithm.to_owned(),
        });
    }
    if let Some(ch) = encoded
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-')))
    {
        return Err(ReferenceError::InvalidEncodedCharacter {
            reference: reference(),
            digest: digest(),
            ch,
        });
    }
    let expected = if algorithm == "sha256" { 64 } else { 128 };
    // All characters are ASCII by now, so the byte length is the character count.
    if encoded.len() != expected {
        return Err(ReferenceError::DigestLength {
            reference: reference(),
            digest: digest(),
            algorithm: algorithm.to_owned(),
            expected,
            got: encoded.len(),
        });
    }
    if let Some(ch) = encoded.chars().find(|&c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(ReferenceError::DigestNotLowercaseHex {
            reference: reference(),
            digest: digest(),
            algorithm: algorithm.to_owned(),
            ch,
        });
    }
    Ok(Digest {
        algorithm: algorithm.to_owned(),
        encoded: encoded.to_owned(),
    })
}

/// A registry name from a reference, a config entry or a Docker `config.json` key as
/// [`ImageRef::registry`] spells it: lower-case, no scheme, no path, no trailing `/`, every Docker Hub
/// spelling as `docker.io`. The one normaliser of host spellings: credentials, client settings,
/// configuration and metric labels all use it.
pub fn canonical_host(name: &str) -> String {
    let s = name.trim().to_ascii_lowercase();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(&s);
    let host = s.split('/').next().unwrap_or("");
    if DOCKER_HUB_SPELLINGS.contains(&host) {
        DOCKER_HUB.to_owned()
    } else {
        host.to_owned()
    }
}

/// Whether the reference text names a tag itself (rather than getting the implied `latest`).
pub fn has_explicit_tag(s: &str) -> bool {
    let name_and_tag = s.split_once('@').map_or(s, |(before, _)| before);
    name_and_tag
        .rfind(':')
        .is_some_and(|colon| name_and_tag.rfind('/').is_none_or(|slash| slash < colon))
}

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// Fields are private so every value went through [`ImageRef::parse`] (or a validated `with_*`), which makes
/// equality and hashing mean "same image" rather than "same spelling".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference the way Docker's `ParseNormalizedNamed` does, then applies the implied
    /// `latest` tag when neither tag nor digest is given (never when a digest pins the image).
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let input = || s.to_owned();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
            return Err(ReferenceError::Whitespace { input: input() });
        }
        if let Some(ch) = s.chars().find(|c| !c.is_ascii()) {
            return Err(ReferenceError::NonAscii { input: input(), ch });
        }
        // From here on everything is ASCII, so byte offsets are character offsets.
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::AmbiguousHexName { input: input() });
        }

        // Neither names nor tags may contain '@', so the first one starts the digest.
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((before, after)) => (before, Some(after)),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; an earlier one belongs to a registry port.
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if name_and_tag.rfind('/').is_none_or(|slash| slash < colon) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };

        let (domain, path) = split_domain(name);
        let registry = match domain {
            None => DOCKER_HUB.to_owned(),
            Some(domain) => {
                let registry = validate_registry(s, domain)?;
                if DOCKER_HUB_SPELLINGS.contains(&registry.as_str()) {
                    DOCKER_HUB.to_owned()
                } else {
                    registry
                }
            }
        };
        validate_path(s, path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        let len = registry.len() + 1 + repository.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong { input: input(), len });
        }

        if let Some(tag) = tag {
            validate_tag(s, tag)?;
        }
        let digest = digest.map(|d| parse_digest(d, Some(s))).transpose()?;
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host, lower-cased, with its port if one was given: `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, with Docker Hub's implied `library/` made explicit.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for digest-pinned references that named no tag.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Whether the image lives on Docker Hub, whose pull rate limits make it the registry most worth mirroring.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// `registry/repository`, the identity of the repository regardless of tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another tag, keeping any digest.
    ///
    /// Validated so a mirror target built from configuration can't produce an unparseable reference.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ReferenceError> {
        validate_tag(&format!("{}:{tag}", self.name()), tag)?;
        Ok(ImageRef {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// The same reference pinned to `digest`, keeping the tag (if any) for readability.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same reference without its digest, keeping the tag or its absence.
    ///
    /// A digest-only reference becomes a bare name, which displays without a tag and would re-parse as `:latest`;
    /// no tag is invented here because `latest` may not be the image the digest named.
    pub fn without_digest(&self) -> ImageRef {
        ImageRef {
            digest: None,
            ..self.clone()
        }
    }
}

/// Canonical, fully qualified form (`docker.io/library/nginx:latest`), which every runtime resolves to the same
/// image regardless of its default-registry settings.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Whether a repository name starts with a registry host (`quay.io/a/b`, `localhost:5000/a`), as
/// distribution decides it; `team/app` and `nginx` do not (they would be Docker Hub's).
pub fn names_registry(name: &str) -> bool {
    split_domain(name).0.is_some()
}

/// Distribution's `splitDockerDomain`: the first component is a registry only if it cannot be a Docker Hub
/// namespace, i.e. it has a '.' or ':', is `localhost`, or has upper case (Hub namespaces are lower-case).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) || first.bytes().any(|b| b.is_ascii_uppercase()) => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// The part of the domain test that does not depend on letter case.
fn looks_like_domain(first: &str) -> bool {
    first == "localhost" || first.contains(['.', ':'])
}

/// Validates `host[:port]` and returns it lower-cased, since hosts are case-insensitive and one registry must
/// have one spelling. The port and IPv6 text are otherwise kept as written.
///
/// Exception: a host recognised only by its upper case (`Foo/bar`) is kept as written, because lower-cased it
/// would read back as a Docker Hub namespace and the canonical form would name a different image.
fn validate_registry(input: &str, domain: &str) -> Result<String, ReferenceError> {
    let port = if let Some(bracketed) = domain.strip_prefix('[') {
        let invalid = || ReferenceError::InvalidIpv6 {
            input: input.to_owned(),
            host: domain.to_owned(),
        };
        let (address, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        // Distribution only allows hex digits and ':' here (no embedded IPv4, no zone); std checks the structure.
        let valid_address = !address.is_empty()
            && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            && address.parse::<Ipv6Addr>().is_ok();
        if !valid_address {
            return Err(ReferenceError::InvalidIpv6 {
                input: input.to_owned(),
                host: format!("[{address}]"),
            });
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        }
    } else {
        if domain.matches(':').count() > 1 {
            return Err(ReferenceError::UnbracketedIpv6 {
                input: input.to_owned(),
                registry: domain.to_owned(),
            });
        }
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        if host.is_empty() {
            return Err(ReferenceError::EmptyHost {
                input: input.to_owned(),
                registry: domain.to_owned(),
            });
        }
        for component in host.split('.') {
            let valid = component.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && component.starts_with(|c: char| c.is_ascii_alphanumeric())
                && component.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !valid {
                return Err(ReferenceError::InvalidDomainComponent {
                    input: input.to_owned(),
                    host: host.to_owned(),
                    component: component.to_owned(),
                });
            }
        }
        port
    };
    if let Some(port) = port {
        if port.is_empty() {
            return Err(ReferenceError::EmptyPort {
                input: input.to_owned(),
                registry: domain.to_owned(),
            });
        }
        let in_range = port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !in_range {
            return Err(ReferenceError::InvalidPort {
                input: input.to_owned(),
                port: port.to_owned(),
            });
        }
    }
    let lowered = domain.to_ascii_lowercase();
    Ok(if looks_like_domain(&lowered) {
        lowered
    } else {
        domain.to_owned()
    })
}

/// Validates the repository path against distribution's `path-component` grammar.
fn validate_path(input: &str, path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(ReferenceError::MissingRepository {
            input: input.to_owned(),
        });
    }
    // Checked on the whole path first, as distribution does, because "must be lowercase" is the useful message
    // for `Nginx`, not "invalid character 'N'".
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            input: input.to_owned(),
            repository: path.to_owned(),
        });
    }
    for component in path.split('/') {
        validate_path_component(input, component)?;
    }
    Ok(())
}

/// `alpha-numeric (separator alpha-numeric)*` with `separator := [_.] | __ | [-]+`.
fn validate_path_component(input: &str, component: &str) -> Result<(), ReferenceError> {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let is_separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    if component.is_empty() {
        return Err(ReferenceError::EmptyPathComponent {
            input: input.to_owned(),
        });
    }
    if let Some(ch) = component
        .chars()
        .find(|&c| !c.is_ascii() || !(is_alnum(c as u8) || is_separator(c as u8)))
    {
        return Err(ReferenceError::InvalidPathCharacter {
            input: input.to_owned(),
            ch,
            component: component.to_owned(),
        });
    }
    let bytes = component.as_bytes();
    if !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return Err(ReferenceError::PathComponentEdge {
            input: input.to_owned(),
            component: component.to_owned(),
        });
    }
    for separator in component
        .split(|c: char| is_alnum(c as u8))
        .filter(|run| !run.is_empty())
    {
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return Err(ReferenceError::InvalidSeparator {
                input: input.to_owned(),
                separator: separator.to_owned(),
                component: component.to_owned(),
            });
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}` with ASCII `\w`. `input` is the reference the tag belongs to, for the message.
fn validate_tag(input: &str, tag: &str) -> Result<(), ReferenceError> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if tag.is_empty() {
        return Err(ReferenceError::EmptyTag {
            input: input.to_owned(),
        });
    }
    if tag.chars().count() > MAX_TAG_LEN {
        return Err(ReferenceError::TagTooLong {
            input: input.to_owned(),
            tag: tag.to_owned(),
        });
    }
    if !tag.starts_with(is_word) {
        return Err(ReferenceError::InvalidTagStart {
            input: input.to_owned(),
            tag: tag.to_owned(),
        });
    }
    if let Some(ch) = tag.chars().find(|&c| !(is_word(c) || c == '.' || c == '-')) {
        return Err(ReferenceError::InvalidTagCharacter {
            input: input.to_owned(),
            tag: tag.to_owned(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_host_table() {
        let cases = [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("HTTPS://Index.Docker.IO/v1/", "docker.io"),
            ("http://localhost:5000", "localhost:5000"),
            ("registry.example.com/v2/", "registry.example.com"),
            ("Quay.io", "quay.io"),
            ("[::1]:5000", "[::1]:5000"),
            ("ghcr.io/", "ghcr.io"),
            ("registry.hub.docker.com", "docker.io"),
        ];
        for (input, want) in cases {
            assert_eq!(canonical_host(input), want, "{input}");
        }
    }

    #[test]
    fn host_normalisation_and_explicit_tags() {
        let hosts = [
            ("Index.Docker.io", "docker.io"),
            ("registry-1.docker.io/", "docker.io"),
            ("GHCR.io", "ghcr.io"),
            ("localhost:5000", "localhost:5000"),
        ];
        for (input, want) in hosts {
            assert_eq!(canonical_host(input), want, "{input}");
        }
        let tags = [
            ("nginx", false),
            ("nginx:1", true),
            ("r:5000/x", false),
            ("r:5000/x:t", true),
            ("x@sha256:ab", false),
            ("x:t@sha256:ab", true),
        ];
        for (input, want) in tags {
            assert_eq!(has_explicit_tag(input), want, "{input}");
        }
    }

    use super::*;

    /// sha256 of the empty string.
    const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    /// sha512 of the empty string.
    const H128: &str = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                        47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    enum Want {
        Ok {
            registry: String,
            repository: String,
            tag: Option<String>,
            digest: Option<String>,
        },
        /// Variant name (as printed by `Debug`) and a substring of the message.
        Err { variant: &'static str, message: String },
    }

    struct Case {
        input: String,
        want: Want,
    }

    fn ok(input: impl Into<String>, registry: &str, repository: impl Into<String>, tag: Option<&str>) -> Case {
        ok_d(input, registry, repository, tag, None)
    }

    fn ok_d(
        input: impl Into<String>,
        registry: &str,
        repository: impl Into<String>,
        tag: Option<&str>,
        digest: Option<String>,
    ) -> Case {
        Case {
            input: input.into(),
            want: Want::Ok {
                registry: registry.to_owned(),
                repository: repository.into(),
                tag: tag.map(str::to_owned),
                digest,
            },
        }
    }

    fn err(input: impl Into<String>, variant: &'static str, message: impl Into<String>) -> Case {
        Case {
            input: input.into(),
            want: Want::Err {
                variant,
                message: message.into(),
            },
        }
    }

    fn variant_name(e: &ReferenceError) -> String {
        let debug = format!("{e:?}");
        debug
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn cases() -> Vec<Case> {
        let sha256 = || Some(format!("sha256:{H64}"));
        let long_tag_ok = "t".repeat(128);
        let long_tag_bad = "t".repeat(129);
        // "docker.io/library/" is 18 characters.
        let name_255 = "a".repeat(255 - 18);
        let name_256 = "a".repeat(256 - 18);
        let ghcr_255 = format!("ghcr.io/{}", "b".repeat(255 - 8));
        let ghcr_256 = format!("ghcr.io/{}", "b".repeat(256 - 8));
        vec![
            // Docker Hub normalisation.
            ok("nginx", "docker.io", "library/nginx", Some("latest")),
            ok("nginx:1.25", "docker.io", "library/nginx", Some("1.25")),
            ok("library/nginx", "docker.io", "library/nginx", Some("latest")),
            ok("docker.io/nginx", "docker.io", "library/nginx", Some("latest")),
            ok("docker.io/library/nginx", "docker.io", "library/nginx", Some("latest")),
            ok(
                "index.docker.io/library/nginx",
                "docker.io",
                "library/nginx",
                Some("latest"),
            ),
            ok("index.docker.io/nginx", "docker.io", "library/nginx", Some("latest")),
            ok(
                "registry-1.docker.io/bitnami/redis:7",
                "docker.io",
                "bitnami/redis",
                Some("7"),
            ),
            ok("bitnami/redis", "docker.io", "bitnami/redis", Some("latest")),
            ok("Docker.IO/nginx", "docker.io", "library/nginx", Some("latest")),
            ok("my_registry/x", "docker.io", "my_registry/x", Some("latest")),
            // Without a '/', "localhost:5000" is the Hub image "localhost" with tag "5000" (as in distribution).
            ok("localhost:5000", "docker.io", "library/localhost", Some("5000")),
            // Other registries.
            ok("ghcr.io/org/app:v1", "ghcr.io", "org/app", Some("v1")),
            ok("quay.io/a/b/c/d:tag", "quay.io", "a/b/c/d", Some("tag")),
            ok("localhost/app", "localhost", "app", Some("latest")),
            ok("localhost:5000/app:1", "localhost:5000", "app", Some("1")),
            ok("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", Some("latest")),
            ok("[::1]:5000/a:b", "[::1]:5000", "a", Some("b")),
            ok("[2001:db8::1]/x", "[2001:db8::1]", "x", Some("latest")),
            ok("[2001:DB8::1]/x", "[2001:db8::1]", "x", Some("latest")),
            ok("[fe80::1]/repo", "[fe80::1]", "repo", Some("latest")),
            ok("myhost:5000/x", "myhost:5000", "x", Some("latest")),
            ok("h:1/x", "h:1", "x", Some("latest")),
            ok("h:65535/x", "h:65535", "x", Some("latest")),
            ok("Example.COM/x", "example.com", "x", Some("latest")),
            ok("my-host.example/x", "my-host.example", "x", Some("latest")),
            // An upper-case first component cannot be a Hub namespace, so it is a registry host; kept as written
            // because "foo/bar" would be a Hub image.
            ok("Foo/bar", "Foo", "bar", Some("latest")),
            ok("Foo:5000/bar", "foo:5000", "bar", Some("latest")),
            ok("LOCALHOST/app", "localhost", "app", Some("latest")),
            // Tags and digests.
            ok_d(
                format!("name:tag@sha256:{H64}"),
                "docker.io",
                "library/name",
                Some("tag"),
                sha256(),
            ),
            ok_d(
                format!("name@sha256:{H64}"),
                "docker.io",
                "library/name",
                None,
                sha256(),
            ),
            ok_d(
                format!("ghcr.io/a/b@sha512:{H128}"),
                "ghcr.io",
                "a/b",
                None,
                Some(format!("sha512:{H128}")),
            ),
            ok_d(format!("r:5000/x:t@sha256:{H64}"), "r:5000", "x", Some("t"), sha256()),
            ok("nginx:_x", "docker.io", "library/nginx", Some("_x")),
            ok("nginx:V1.2-RC_3", "docker.io", "library/nginx", Some("V1.2-RC_3")),
            ok(
                format!("nginx:{long_tag_ok}"),
                "docker.io",
                "library/nginx",
                Some(long_tag_ok.as_str()),
            ),
            ok(format!("{H64}:v1"), "docker.io", format!("library/{H64}"), Some("v1")),
            // Separators.
            ok("a_b", "docker.io", "library/a_b", Some("latest")),
            ok("a__b", "docker.io", "library/a__b", Some("latest")),
            ok("a-b", "docker.io", "library/a-b", Some("latest")),
            ok("a---b", "docker.io", "library/a---b", Some("latest")),
            ok("a.b", "docker.io", "library/a.b", Some("latest")),
            ok("x/a.b-c_d__e---f9", "docker.io", "x/a.b-c_d__e---f9", Some("latest")),
            ok("0/1", "docker.io", "0/1", Some("latest")),
            // Length limits.
            ok(
                name_255.clone(),
                "docker.io",
                format!("library/{name_255}"),
                Some("latest"),
            ),
            ok(
                ghcr_255.clone(),
                "ghcr.io",
                &ghcr_255["ghcr.io/".len()..],
                Some("latest"),
            ),
            err(name_256, "NameTooLong", "name is 256 characters, more than 255"),
            err(ghcr_256, "NameTooLong", "name is 256 characters"),
            // Whole-input errors.
            err("", "Empty", "invalid reference \"\": empty reference"),
            err(" nginx", "Whitespace", "leading or trailing whitespace"),
            err("nginx\n", "Whitespace", "leading or trailing whitespace"),
            err("nginx\t", "Whitespace", "leading or trailing whitespace"),
            err("ngïnx", "NonAscii", "non-ASCII character 'ï'"),
            err("nginx:tåg", "NonAscii", "non-ASCII character 'å'"),
            err("nginx\u{a0}", "Whitespace", "whitespace"),
            err(H64, "AmbiguousHexName", "image ID"),
            // Repository path errors.
            err("Nginx", "Uppercase", "repository name must be lowercase (\"Nginx\")"),
            err("docker.io/Nginx", "Uppercase", "(\"Nginx\")"),
            err("ghcr.io/Org/app", "Uppercase", "(\"Org/app\")"),
            err(":tag", "MissingRepository", "missing repository name"),
            err(format!("@sha256:{H64}"), "MissingRepository", "missing repository name"),
            err("docker.io/", "MissingRepository", "missing repository name"),
            err("localhost/", "MissingRepository", "missing repository name"),
            err("a//b", "EmptyPathComponent", "empty path component"),
            err("/a", "EmptyPathComponent", "empty path component"),
            err("a/", "EmptyPathComponent", "empty path component"),
            err("host:5000//x", "EmptyPathComponent", "empty path component"),
            err(
                "a..b",
                "InvalidSeparator",
                "invalid separator \"..\" in path component \"a..b\"",
            ),
            err("a___b", "InvalidSeparator", "\"___\""),
            err("a._b", "InvalidSeparator", "\"._\""),
            err("a-_b", "InvalidSeparator", "\"-_\""),
            err("-a", "PathComponentEdge", "path component \"-a\" must start and end"),
            err("a-", "PathComponentEdge", "\"a-\""),
            err("x/_a", "PathComponentEdge", "\"_a\""),
            err("a.", "PathComponentEdge", "\"a.\""),
            err(
                "a b",
                "InvalidPathCharacter",
                "invalid character ' ' in path component \"a b\"",
            ),
            err(
                "a:b:c",
                "InvalidPathCharacter",
                "invalid character ':' in path component \"a:b\"",
            ),
            err("a+b", "InvalidPathCharacter", "'+'"),
            err("[abc]/x", "InvalidPathCharacter", "'['"),
            // Registry errors.
            err("host:99999/x", "InvalidPort", "invalid port \"99999\""),
            err("host:99999999/x", "InvalidPort", "invalid port \"99999999\""),
            err("host:0/x", "InvalidPort", "invalid port \"0\""),
            err("host:5x/x", "InvalidPort", "invalid port \"5x\""),
            err("host:+1/x", "InvalidPort", "invalid port \"+1\""),
            err("host:/x", "EmptyPort", "registry \"host:\" has an empty port"),
            err("[::1]:/x", "EmptyPort", "empty port"),
            err(":5000/x", "EmptyHost", "registry \":5000\" has no host"),
            err(
                "ex_ample.com/x",
                "InvalidDomainComponent",
                "invalid component \"ex_ample\"",
            ),
            err("-ex.com/x", "InvalidDomainComponent", "invalid component \"-ex\""),
            err("ex-.com/x", "InvalidDomainComponent", "invalid component \"ex-\""),
            err("ex..com/x", "InvalidDomainComponent", "invalid component \"\""),
            err("example.com./x", "InvalidDomainComponent", "invalid component \"\""),
            err(
                "[::1/x",
                "InvalidIpv6",
                "\"[::1\" is not a valid bracketed IPv6 address",
            ),
            err("[zz::1]/x", "InvalidIpv6", "\"[zz::1]\""),
            err("[]:5000/x", "InvalidIpv6", "\"[]\""),
            // Without '.' or ':' a bracketed first component is a (bad) Hub namespace, not a host.
            err("[]/x", "InvalidPathCharacter", "'['"),
            err("[::1]x/y", "InvalidIpv6", "\"[::1]x\""),
            err("[1:2:3]/x", "InvalidIpv6", "\"[1:2:3]\""),
            err(
                "[::ffff:1.2.3.4]/x",
                "InvalidIpv6",
                "not a valid bracketed IPv6 address",
            ),
            err(
                "::1/x",
                "UnbracketedIpv6",
                "IPv6 registry address \"::1\" must be in brackets",
            ),
            err("fe80::1:5000/x", "UnbracketedIpv6", "must be in brackets"),
            // Tag errors.
            err("nginx:", "EmptyTag", "invalid reference \"nginx:\": empty tag"),
            err(format!("ghcr.io/a/b:@sha256:{H64}"), "EmptyTag", "empty tag"),
            err(
                format!("nginx:{long_tag_bad}"),
                "TagTooLong",
                format!("tag \"{long_tag_bad}\" is longer than 128 characters"),
            ),
            err("nginx:.x", "InvalidTagStart", "tag \".x\" must start with"),
            err("nginx:-x", "InvalidTagStart", "tag \"-x\" must start with"),
            err(
                "nginx:a+b",
                "InvalidTagCharacter",
                "invalid character '+' in tag \"a+b\"",
            ),
            err("nginx:1.25:x", "InvalidPathCharacter", "':'"),
            // Digest errors.
            err(
                "nginx@",
                "EmptyDigest",
                "invalid reference \"nginx@\": digest \"\": empty digest",
            ),
            err("nginx@sha256:", "EmptyEncoded", "empty encoded value after \"sha256\""),
            err(
                "nginx@sha256",
                "MissingDigestSeparator",
                "expected <algorithm>:<encoded>",
            ),
            err(
                format!("nginx@sha256:{}", H64.to_ascii_uppercase()),
                "DigestNotLowercaseHex",
                "sha256 needs lowercase hex, found 'E'",
            ),
            err(
                "nginx@sha256:abc",
                "DigestLength",
                "invalid reference \"nginx@sha256:abc\": digest \"sha256:abc\": sha256 needs 64 hex characters, got 3",
            ),
            err(
                format!("nginx@sha512:{H64}"),
                "DigestLength",
                "sha512 needs 128 hex characters, got 64",
            ),
            err(
                format!("nginx@SHA256:{H64}"),
                "InvalidAlgorithm",
                "algorithm \"SHA256\"",
            ),
            err(format!("nginx@:{H64}"), "InvalidAlgorithm", "algorithm \"\""),
            err(
                "nginx@md5:d41d8cd98f00b204e9800998ecf8427e",
                "UnsupportedAlgorithm",
                "invalid reference \"nginx@md5:d41d8cd98f00b204e9800998ecf8427e\": digest \"md5:d41d8cd98f00b204e9800998ecf8427e\": unsupported digest algorithm \"md5\"",
            ),
            err(
                "nginx@sha256:abc/def",
                "InvalidEncodedCharacter",
                "invalid character '/' in encoded value",
            ),
            err(
                format!("nginx@sha256:{H64}@sha256:{H64}"),
                "InvalidEncodedCharacter",
                "invalid character '@'",
            ),
            err(
                "nginx@sha256:abc:def",
                "InvalidEncodedCharacter",
                "invalid character ':'",
            ),
        ]
    }

    #[test]
    fn parse_table() {
        let cases = cases();
        assert!(cases.len() >= 40);
        let mut failures = Vec::new();
        for case in &cases {
            let got = ImageRef::parse(&case.input);
            match (&case.want, &got) {
                (
                    Want::Ok {
                        registry,
                        repository,
                        tag,
                        digest,
                    },
                    Ok(r),
                ) => {
                    let actual = (
                        r.registry().to_owned(),
                        r.repository().to_owned(),
                        r.tag().map(str::to_owned),
                        r.digest().map(Digest::to_string),
                    );
                    let expected = (registry.clone(), repository.clone(), tag.clone(), digest.clone());
                    if actual != expected {
                        failures.push(format!("{:?}: expected {expected:?}, got {actual:?}", case.input));
                    }
                }
                (Want::Err { variant, message }, Err(e)) => {
                    let text = e.to_string();
                    if variant_name(e) != *variant || !text.contains(message.as_str()) {
                        failures.push(format!(
                            "{:?}: expected {variant} containing {message:?}, got {e:?} / {text:?}",
                            case.input
                        ));
                    }
                }
                (Want::Ok { .. }, Err(e)) => failures.push(format!("{:?}: expected Ok, got {e}", case.input)),
                (Want::Err { variant, .. }, Ok(r)) => {
                    failures.push(format!("{:?}: expected {variant}, got Ok({r})", case.input))
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn every_ok_row_round_trips_through_display() {
        for case in cases().iter().filter(|c| matches!(c.want, Want::Ok { .. })) {
            let r = ImageRef::parse(&case.input).unwrap();
            let shown = r.to_string();
            assert_eq!(
                ImageRef::parse(&shown).as_ref(),
                Ok(&r),
                "{:?} -> {shown:?}",
                case.input
            );
            assert_eq!(shown.parse::<ImageRef>().as_ref(), Ok(&r));
            // The canonical form is a fixed point.
            assert_eq!(ImageRef::parse(&shown).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn display_is_canonical() {
        let show = |s: &str| ImageRef::parse(s).unwrap().to_string();
        assert_eq!(show("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(show("index.docker.io/bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            show(&format!("ghcr.io/a/b@sha256:{H64}")),
            format!("ghcr.io/a/b@sha256:{H64}")
        );
        assert_eq!(
            show(&format!("r:5000/x:t@sha256:{H64}")),
            format!("r:5000/x:t@sha256:{H64}")
        );
        assert_eq!(show("[::1]:5000/a:b"), "[::1]:5000/a:b");
        assert_eq!(show("Example.COM:443/x"), "example.com:443/x:latest");
    }

    #[test]
    fn spellings_of_one_image_are_equal() {
        let canonical = ImageRef::parse("docker.io/library/nginx:latest").unwrap();
        for s in [
            "nginx",
            "nginx:latest",
            "library/nginx",
            "docker.io/nginx",
            "index.docker.io/library/nginx",
            "registry-1.docker.io/nginx:latest",
        ] {
            assert_eq!(ImageRef::parse(s).unwrap(), canonical, "{s}");
        }
    }

    #[test]
    fn accessors() {
        let r = ImageRef::parse(&format!("ghcr.io/org/app:v1@sha256:{H64}")).unwrap();
        assert_eq!(r.registry(), "ghcr.io");
        assert_eq!(r.repository(), "org/app");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest().map(Digest::encoded), Some(H64));
        assert_eq!(r.name(), "ghcr.io/org/app");
        assert!(!r.is_docker_hub());
        let hub = ImageRef::parse("nginx").unwrap();
        assert!(hub.is_docker_hub());
        assert_eq!(hub.name(), "docker.io/library/nginx");
    }

    #[test]
    fn with_tag_replaces_tag_and_keeps_digest() {
        let r = ImageRef::parse("ghcr.io/a/b:v1").unwrap();
        let r2 = r.with_tag("v2").unwrap();
        assert_eq!(r2.to_string(), "ghcr.io/a/b:v2");
        assert_eq!(r.tag(), Some("v1"), "original untouched");

        let pinned = ImageRef::parse(&format!("ghcr.io/a/b@sha256:{H64}")).unwrap();
        assert_eq!(
            pinned.with_tag("v3").unwrap().to_string(),
            format!("ghcr.io/a/b:v3@sha256:{H64}")
        );

        let long_ok = "x".repeat(128);
        assert_eq!(r.with_tag(&long_ok).unwrap().tag(), Some(long_ok.as_str()));
    }

    #[test]
    fn with_tag_validates() {
        let r = ImageRef::parse("ghcr.io/a/b:v1").unwrap();
        let cases: [(&str, &str); 6] = [
            ("", "EmptyTag"),
            ("-x", "InvalidTagStart"),
            (".x", "InvalidTagStart"),
            ("a/b", "InvalidTagCharacter"),
            ("tåg", "InvalidTagCharacter"),
            ("äx", "InvalidTagStart"),
        ];
        for (tag, variant) in cases {
            let e = r.with_tag(tag).unwrap_err();
            assert_eq!(variant_name(&e), variant, "{tag:?}: {e}");
        }
        let e = r.with_tag(&"x".repeat(129)).unwrap_err();
        assert_eq!(variant_name(&e), "TagTooLong");
        assert_eq!(
            r.with_tag("-x").unwrap_err().to_string(),
            "invalid reference \"ghcr.io/a/b:-x\": tag \"-x\" must start with a letter, digit or '_'"
        );
    }

    #[test]
    fn with_digest_and_without_digest() {
        let d = Digest::sha256_hex(H64).unwrap();
        let tagged = ImageRef::parse("ghcr.io/a/b:v1").unwrap();
        let pinned = tagged.with_digest(d.clone());
        assert_eq!(pinned.to_string(), format!("ghcr.io/a/b:v1@sha256:{H64}"));
        assert_eq!(pinned.digest(), Some(&d));
        assert_eq!(pinned.without_digest(), tagged);

        let digest_only = ImageRef::parse(&format!("ghcr.io/a/b@sha256:{H64}")).unwrap();
        let bare = digest_only.without_digest();
        assert_eq!(bare.tag(), None, "no tag is invented");
        assert_eq!(bare.digest(), None);
        assert_eq!(bare.to_string(), "ghcr.io/a/b");
        assert_eq!(bare.with_digest(d.clone()), digest_only);

        let other = Digest::parse(&format!("sha512:{H128}")).unwrap();
        assert_eq!(pinned.with_digest(other.clone()).digest(), Some(&other));
    }

    #[test]
    fn digest_table() {
        let ok_cases = [format!("sha256:{H64}"), format!("sha512:{H128}")];
        for s in &ok_cases {
            let d = Digest::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&d.to_string(), s);
            assert_eq!(s.parse::<Digest>().as_ref(), Ok(&d));
            assert_eq!(format!("{}:{}", d.algorithm(), d.encoded()), *s);
        }

        let err_cases: Vec<(String, &str, &str)> = vec![
            (String::new(), "EmptyDigest", "invalid digest \"\": empty digest"),
            (
                "sha256".into(),
                "MissingDigestSeparator",
                "expected <algorithm>:<encoded>",
            ),
            (format!(":{H64}"), "InvalidAlgorithm", "algorithm \"\""),
            (format!("SHA256:{H64}"), "InvalidAlgorithm", "algorithm \"SHA256\""),
            (format!("sha256-:{H64}"), "InvalidAlgorithm", "algorithm \"sha256-\""),
            (format!("sha..256:{H64}"), "InvalidAlgorithm", "\"sha..256\""),
            (format!("+sha256:{H64}"), "InvalidAlgorithm", "\"+sha256\""),
            (format!(" sha256:{H64}"), "InvalidAlgorithm", "\" sha256\""),
            ("sha256:".into(), "EmptyEncoded", "empty encoded value"),
            (
                "sha256:abc".into(),
                "DigestLength",
                "invalid digest \"sha256:abc\": sha256 needs 64 hex characters, got 3",
            ),
            (format!("sha256:{H64}0"), "DigestLength", "got 65"),
            (
                format!("sha512:{H64}"),
                "DigestLength",
                "sha512 needs 128 hex characters, got 64",
            ),
            (
                format!("sha256:{}", H64.to_ascii_uppercase()),
                "DigestNotLowercaseHex",
                "sha256 needs lowercase hex, found 'E'",
            ),
            (format!("sha256:{}g", &H64[1..]), "DigestNotLowercaseHex", "found 'g'"),
            (
                "sha256:ab cd".into(),
                "InvalidEncodedCharacter",
                "invalid character ' '",
            ),
            ("sha256:é".into(), "InvalidEncodedCharacter", "invalid character 'é'"),
            ("sha256:a:b".into(), "InvalidEncodedCharacter", "invalid character ':'"),
            // Well-formed, but not an algorithm copycat can verify: refused when parsed.
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
                "UnsupportedAlgorithm",
                "unsupported digest algorithm \"md5\"; only sha256 and sha512 are accepted",
            ),
            ("sha384:abc".into(), "UnsupportedAlgorithm", "\"sha384\""),
            (
                "sha256+b64u:LCa0a2j_xo".into(),
                "UnsupportedAlgorithm",
                "\"sha256+b64u\"",
            ),
            ("blake3:AbC".into(), "UnsupportedAlgorithm", "\"blake3\""),
            ("a.b_c-d+e:x=".into(), "UnsupportedAlgorithm", "\"a.b_c-d+e\""),
        ];
        for (s, variant, message) in &err_cases {
            let e = Digest::parse(s).unwrap_err();
            assert_eq!(variant_name(&e), *variant, "{s:?}: {e}");
            assert!(e.to_string().contains(message), "{s:?}: {e}");
        }
    }

    #[test]
    fn digest_sha256_hex() {
        let d = Digest::sha256_hex(H64).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.encoded(), H64);
        assert_eq!(d.to_string(), format!("sha256:{H64}"));
        assert_eq!(variant_name(&Digest::sha256_hex("abc").unwrap_err()), "DigestLength");
        assert_eq!(variant_name(&Digest::sha256_hex("").unwrap_err()), "EmptyEncoded");
        assert_eq!(
            variant_name(&Digest::sha256_hex(&H64.to_ascii_uppercase()).unwrap_err()),
            "DigestNotLowercaseHex"
        );
    }

    #[test]
    fn digest_ordering_and_serde() {
        let a = Digest::sha256_hex(&"0".repeat(64)).unwrap();
        let b = Digest::sha256_hex(H64).unwrap();
        assert!(a < b);

        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, format!("\"sha256:{H64}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), b);
        let list: Vec<Digest> = serde_json::from_str(&format!("[\"sha256:{H64}\", \"sha512:{H128}\"]")).unwrap();
        assert_eq!(list.len(), 2);

        let bad = serde_json::from_str::<Digest>("\"sha256:abc\"").unwrap_err();
        assert!(
            bad.to_string().contains("sha256 needs 64 hex characters, got 3"),
            "{bad}"
        );
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    #[test]
    fn brief_error_messages() {
        let msg = |s: &str| ImageRef::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("Nginx"),
            "invalid reference \"Nginx\": repository name must be lowercase (\"Nginx\")"
        );
        assert_eq!(msg("nginx:"), "invalid reference \"nginx:\": empty tag");
        assert_eq!(msg(""), "invalid reference \"\": empty reference");
        assert_eq!(
            msg("host:99999999/x"),
            "invalid reference \"host:99999999/x\": invalid port \"99999999\" (must be a number from 1 to 65535)"
        );
        assert_eq!(
            Digest::parse("sha256:abc").unwrap_err().to_string(),
            "invalid digest \"sha256:abc\": sha256 needs 64 hex characters, got 3"
        );
        // Control characters are escaped, so hostile input cannot forge log lines.
        assert!(msg("a\nb").contains("\"a\\nb\""));
    }

    #[test]
    fn parse_never_panics_on_prefixes_and_suffixes() {
        let mut inputs: Vec<String> = cases().into_iter().map(|c| c.input).collect();
        inputs.extend(
            [
                "[", "]", "@", ":", "/", "[:", "[]:", "@@", "::", "//", ":/", "[::1]:", "a@:", "é", "\u{0}",
            ]
            .map(str::to_owned),
        );
        for input in &inputs {
            let boundaries: Vec<usize> = input
                .char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(input.len()))
                .collect();
            for &i in &boundaries {
                for piece in [&input[..i], &input[i..]] {
                    // Only the absence of a panic matters; Ok results must still round-trip.
                    if let Ok(r) = ImageRef::parse(piece) {
                        assert_eq!(ImageRef::parse(&r.to_string()), Ok(r), "{piece:?}");
                    }
                    let _ = Digest::parse(piece);
                }
            }
        }
    }
}
