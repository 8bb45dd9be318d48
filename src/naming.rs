//! Target naming: how a source reference becomes a target reference. Pure functions.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::reference::{Digest, ImageRef, ReferenceError};

/// Why a target name cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NamingError {
    /// A template names a placeholder that does not exist.
    #[error("unknown placeholder ${name} in {template:?}")]
    UnknownPlaceholder {
        /// The placeholder, without `$`.
        name: String,
        /// The template it is in.
        template: String,
    },
    /// `digestTagTemplate` expands to something that is no tag.
    #[error("{template:?} expands to an invalid tag {expanded:?}: {reason}")]
    InvalidTag {
        /// The template.
        template: String,
        /// What it expanded to.
        expanded: String,
        /// Why that is no tag.
        reason: Box<ReferenceError>,
    },
    /// `digestTagTemplate` expands to a tag of the form the OCI referrers tag schema reserves.
    #[error(
        "{template:?} expands to {expanded:?}: tags of the form <algorithm>-<hex> are reserved by the OCI \
         referrers tag schema (and cosign's <algorithm>-<hex>.sig), so a registry client could take the copy \
         for a referrer index; put a fixed prefix first, e.g. copycat-$hex"
    )]
    ReservedTag {
        /// The template.
        template: String,
        /// What it expanded to.
        expanded: String,
    },
    /// `digestTagTemplate` names neither `$hex` nor `$short`.
    #[error(
        "{template:?} gives every digest the same tag, so each copy would move it and leave the one \
         before untagged; use $hex (or $short)"
    )]
    SameTagForEveryDigest {
        /// The template.
        template: String,
    },
    /// A `pathMap` regex does not compile.
    #[error("pathMap {from:?}: {reason}")]
    PathMap {
        /// The rule's `from`.
        from: String,
        /// The regex error.
        reason: Box<regex::Error>,
    },
    /// The name made is no valid image reference.
    #[error("target: {0}")]
    Target(Box<ReferenceError>),
}

/// Longest repository name copycat produces (ECR's and distribution's limit).
pub const MAX_REPOSITORY_LEN: usize = 256;

/// A source-path rewrite rule.
#[derive(Debug, Clone, Serialize)]
pub struct PathMapRule {
    /// Prefix or regex to match.
    pub from: String,
    /// Replacement.
    pub to: String,
    /// Whether `from` is a regex.
    pub regex: bool,
}

/// What a workload's image use contributes to its target name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameContext {
    /// Namespace of the workload or Pod.
    pub namespace: String,
    /// Workload name; for a Pod owned by a workload, the workload's name (one repository per workload,
    /// not per Pod replica); for a bare Pod, the Pod's name.
    pub podname: String,
    /// Container name.
    pub container_name: String,
    /// Platform architecture, when known (node architecture or the image's own).
    pub arch: Option<String>,
}

/// Placeholders of `repoPrefix`.
pub const PREFIX_PLACEHOLDERS: &[&str] = &["namespace", "podname", "container_name", "arch", "registry"];

/// Expands a `repoPrefix` template: whole `$name` tokens only; segments trimmed and empty ones
/// dropped (an unknown `$arch` removes that path level, as in k8s-copycat).
pub fn expand_prefix(template: &str, ctx: &NameContext, source_registry: &str) -> Result<String, NamingError> {
    let expanded = expand(template, |name| match name {
        "namespace" => Some(ctx.namespace.clone()),
        "podname" => Some(ctx.podname.clone()),
        "container_name" => Some(ctx.container_name.clone()),
        "arch" => Some(ctx.arch.clone().unwrap_or_default()),
        "registry" => Some(source_registry.to_owned()),
        _ => None,
    })?;
    Ok(expanded
        .split('/')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/"))
}

/// A `pathMap` rule ready to apply.
#[derive(Debug, Clone)]
pub enum PathRule {
    /// Replace a leading path (whole segments only) with another.
    Prefix {
        /// Matched prefix, without trailing `/`.
        from: String,
        /// Replacement, without trailing `/`; empty strips the prefix.
        to: String,
    },
    /// Regex replace-all, `$1`/`${name}` in the replacement.
    Regex {
        /// The compiled pattern.
        from: regex::Regex,
        /// Replacement.
        to: String,
    },
}

impl PathRule {
    /// Compiles configured rules; the configuration already validated the regexes.
    pub fn compile(rules: &[PathMapRule]) -> Result<Vec<PathRule>, NamingError> {
        rules
            .iter()
            .map(|r| {
                if r.regex {
                    let from = regex::Regex::new(&r.from).map_err(|reason| NamingError::PathMap {
                        from: r.from.clone(),
                        reason: Box::new(reason),
                    })?;
                    Ok(PathRule::Regex { from, to: r.to.clone() })
                } else {
                    let trim = |s: &str| s.trim_matches('/').to_owned();
                    Ok(PathRule::Prefix {
                        from: trim(&r.from),
                        to: trim(&r.to),
                    })
                }
            })
            .collect()
    }

    fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRule::Prefix { from, to } => {
                let rest = path.strip_prefix(from.as_str())?;
                // Whole segments only: `group/project` does not match `group/project2/x`.
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                Some(format!("{to}{rest}").trim_start_matches('/').to_owned())
            }
            PathRule::Regex { from, to } => from
                .is_match(path)
                .then(|| from.replace_all(path, to.as_str()).into_owned()),
        }
    }
}

/// Applies the first matching rule to a source repository path (unchanged when none matches).
pub fn map_path(rules: &[PathRule], path: &str) -> String {
    rules
        .iter()
        .find_map(|r| r.apply(path))
        .unwrap_or_else(|| path.to_owned())
}

/// Cleans a repository name to a form both the OCI distribution grammar and ECR accept: lower-case;
/// characters outside `[a-z0-9._-/]` become `-`; each run of separators becomes one (`.`/`_` when the run
/// is only that character, else `-`); no separator at a component's edge; no empty components; at most
/// 256 characters (longer names keep a prefix and get `-` + 12 hex of their sha256); never empty.
pub fn clean_repository(name: &str) -> String {
    let lowered: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let components: Vec<String> = lowered
        .split('/')
        .map(clean_component)
        .filter(|c| !c.is_empty())
        .collect();
    let cleaned = components.join("/");
    if cleaned.is_empty() {
        return "library/unknown".into();
    }
    if cleaned.len() <= MAX_REPOSITORY_LEN {
        return cleaned;
    }
    let hash: String = Sha256::digest(cleaned.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = &cleaned[..MAX_REPOSITORY_LEN - hash.len() - 1];
    let keep = keep.trim_end_matches(|c: char| "._-/".contains(c));
    format!("{keep}-{hash}")
}

fn clean_component(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    let mut run = String::new();
    for c in component.chars() {
        if "._-".contains(c) {
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            if !out.is_empty() {
                let first = run.chars().next().unwrap_or('-');
                out.push(if run.chars().all(|r| r == first) && first != '-' {
                    first
                } else {
                    '-'
                });
            }
            run.clear();
        }
        out.push(c);
    }
    out
}

/// The target repository for a source: `clean(prefix + "/" + clean(pathMap(source path)))`.
pub fn target_repository(
    prefix_template: &str,
    rules: &[PathRule],
    source: &ImageRef,
    ctx: &NameContext,
) -> Result<String, NamingError> {
    let prefix = expand_prefix(prefix_template, ctx, source.registry())?;
    let path = clean_repository(&map_path(rules, source.repository()));
    Ok(if prefix.is_empty() {
        path
    } else {
        clean_repository(&format!("{prefix}/{path}"))
    })
}

/// The naming inputs of one image use: `repoPrefix`, `pathMap`, the placeholders' values and the
/// target registry. [`TargetNaming::target`] is the one function that turns them into a target
/// name: the planner's tasks are named through `MirrorTask::named` and, when `$arch` is the
/// image's own, `MirrorTask::name_target`; `node_config` names a probe image with it.
#[derive(Debug, Clone)]
pub struct TargetNaming {
    /// `repoPrefix` template.
    pub prefix: String,
    /// `pathMap` rules.
    pub rules: std::sync::Arc<[PathRule]>,
    /// Placeholder values; its `arch` is replaced by [`TargetNaming::target`]'s.
    pub ctx: NameContext,
    /// Target registry host.
    pub target_host: String,
    /// Path of the target registry under which repositories live (docker target), may be empty.
    pub target_path: String,
}

impl TargetNaming {
    /// The target repository for `source`, with `arch` as `$arch` (`None`: the segment is dropped).
    pub fn target(&self, source: &ImageRef, arch: Option<&str>) -> Result<ImageRef, NamingError> {
        let ctx = NameContext {
            arch: arch.map(str::to_owned),
            ..self.ctx.clone()
        };
        let repo = target_repository(&self.prefix, &self.rules, source, &ctx)?;
        let repo = if self.target_path.is_empty() {
            repo
        } else {
            clean_repository(&format!("{}/{repo}", self.target_path))
        };
        ImageRef::parse(&format!("{}/{repo}", self.target_host)).map_err(|e| NamingError::Target(Box::new(e)))
    }

    /// Whether the prefix uses `$arch`.
    pub fn uses_arch(&self) -> bool {
        let with = |arch: &str| {
            let ctx = NameContext {
                arch: Some(arch.to_owned()),
                ..self.ctx.clone()
            };
            expand_prefix(&self.prefix, &ctx, "")
        };
        with("a") != with("b")
    }
}

/// Placeholders of `digestTagTemplate`.
pub const DIGEST_TAG_PLACEHOLDERS: &[&str] = &["algorithm", "hex", "short"];

/// The default `digestTagTemplate`: a fixed prefix that says who wrote the tag and can never read as
/// a digest, plus the whole hex digest, so every digest gets its own tag. For sha256 it is 72
/// characters; for sha512 (128 hex) `$hex` is shortened to 120 to stay within a tag's 128.
pub const DEFAULT_DIGEST_TAG_TEMPLATE: &str = "copycat-$hex";

/// The `digestTagTemplate` value (any case) that turns the anchor tag off: digest-only sources are
/// then pushed by digest alone, untagged.
pub const NO_DIGEST_TAG: &str = "none";

/// Longest tag the OCI distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Fewest characters a `$hex` shortened to fit [`MAX_TAG_LEN`] keeps: 256 bits, a whole sha256.
const MIN_SHORTENED_HEX: usize = 64;

/// Digest algorithms whose `<algorithm>-<hex>` tags are not ours to write: the OCI referrers tag
/// schema reserves them for referrer indexes, and cosign writes `<algorithm>-<hex>.sig`/`.att`/`.sbom`.
const DIGEST_ALGORITHMS: &[&str] = &["sha256", "sha384", "sha512", "blake3"];

/// Reads a `digestTagTemplate` value: [`NO_DIGEST_TAG`] turns the anchor tag off (`None`), empty means
/// [`DEFAULT_DIGEST_TAG_TEMPLATE`]; any other template must give every sha256 and sha512 digest its
/// own valid tag that is not of a reserved form ([`digest_tag`]).
pub fn digest_tag_template(value: &str) -> Result<Option<String>, NamingError> {
    let value = value.trim();
    if value.eq_ignore_ascii_case(NO_DIGEST_TAG) {
        return Ok(None);
    }
    let template = if value.is_empty() {
        DEFAULT_DIGEST_TAG_TEMPLATE
    } else {
        value
    };
    // Two digests of each algorithm copycat accepts: hex lengths decide validity, not the values.
    for (algorithm, hex_len) in [("sha256", 64), ("sha512", 128)] {
        let sample = |c: &str| Digest::parse(&format!("{algorithm}:{}", c.repeat(hex_len))).expect("a valid digest");
        if digest_tag(template, &sample("0"))? == digest_tag(template, &sample("1"))? {
            return Err(NamingError::SameTagForEveryDigest {
                template: template.to_owned(),
            });
        }
    }
    Ok(Some(template.to_owned()))
}

/// Expands `digestTagTemplate` for a digest-only source: `$algorithm` (`sha256`), `$hex` (the whole
/// hex digest), `$short` (its first 12 characters). Only whole tokens expand (`$hexes` is an error,
/// not `$hex` + `es`). When the whole hex would make the tag longer than [`MAX_TAG_LEN`] (a sha512
/// digest with text around `$hex`), `$hex` keeps as many leading characters as fit, at least 64. The
/// result must be a valid tag and not of the reserved form `<algorithm>-<hex>` (optionally followed by
/// `.` and more, cosign's form).
pub fn digest_tag(template: &str, digest: &Digest) -> Result<String, NamingError> {
    let encoded = digest.encoded();
    let with_hex = |hex: &str| {
        expand(template, |name| match name {
            "algorithm" => Some(digest.algorithm().to_owned()),
            "hex" => Some(hex.to_owned()),
            "short" => Some(encoded.chars().take(12).collect()),
            _ => None,
        })
    };
    let mut expanded = with_hex(encoded)?;
    if expanded.len() > MAX_TAG_LEN {
        let others = with_hex("")?.len();
        let uses = (expanded.len() - others) / encoded.len().max(1);
        if let Some(fit) = MAX_TAG_LEN.saturating_sub(others).checked_div(uses)
            && fit >= MIN_SHORTENED_HEX
        {
            expanded = with_hex(&encoded[..fit.min(encoded.len())])?;
        }
    }
    let probe = ImageRef::parse("probe").expect("a valid reference");
    probe.with_tag(&expanded).map_err(|reason| NamingError::InvalidTag {
        template: template.to_owned(),
        expanded: expanded.clone(),
        reason: Box::new(reason),
    })?;
    if is_reserved_tag(&expanded) {
        return Err(NamingError::ReservedTag {
            template: template.to_owned(),
            expanded,
        });
    }
    Ok(expanded)
}

/// Whether `tag` is `<algorithm>-<hex>`, alone or followed by `.`: the referrers tag schema's form
/// (and cosign's), which a client may read as "the referrers (or signatures) of that digest".
fn is_reserved_tag(tag: &str) -> bool {
    let Some((algorithm, rest)) = tag.split_once('-') else {
        return false;
    };
    let hex_len = rest
        .find(|c: char| !matches!(c, '0'..='9' | 'a'..='f'))
        .unwrap_or(rest.len());
    DIGEST_ALGORITHMS.contains(&algorithm) && hex_len > 0 && (hex_len == rest.len() || rest[hex_len..].starts_with('.'))
}

/// The tag to write at the target: an explicit one, else the source's tag; a digest-only source
/// gets `digest_tag_template` expanded (its anchor tag), or no tag at all when that is `None`
/// (pushed by digest, never to `:latest`).
pub fn target_tag(
    source: &ImageRef,
    explicit: Option<&str>,
    digest_tag_template: Option<&str>,
) -> Result<Option<String>, NamingError> {
    if let Some(tag) = explicit.or(source.tag()) {
        return Ok(Some(tag.to_owned()));
    }
    match (source.digest(), digest_tag_template) {
        (Some(digest), Some(template)) => digest_tag(template, digest).map(Some),
        _ => Ok(None),
    }
}

/// Replaces each `$name` token (letters, digits, `_`) using `value`; an unknown name is an error naming
/// it and the known ones.
pub fn expand(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, NamingError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..len];
        match value(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(NamingError::UnknownPlaceholder {
                    name: name.to_owned(),
                    template: template.to_owned(),
                });
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_naming_with_the_images_architecture() {
        let naming = |prefix: &str, path: &str| TargetNaming {
            prefix: prefix.into(),
            rules: PathRule::compile(&[]).unwrap().into(),
            ctx: NameContext {
                namespace: "shop".into(),
                podname: "web".into(),
                container_name: "c".into(),
                arch: Some("ignored".into()),
            },
            target_host: "r.io".into(),
            target_path: path.into(),
        };
        let source = ImageRef::parse("nginx:1.27").unwrap();
        let cases = [
            (
                "mirror/$arch",
                "",
                Some("amd64-arm64"),
                true,
                "r.io/mirror/amd64-arm64/library/nginx",
            ),
            ("mirror/$arch", "", None, true, "r.io/mirror/library/nginx"),
            (
                "$namespace/$arch",
                "base",
                Some("arm64"),
                true,
                "r.io/base/shop/arm64/library/nginx",
            ),
            ("$namespace/$architecture", "", Some("arm64"), false, ""),
            ("$namespace", "", Some("arm64"), false, "r.io/shop/library/nginx"),
        ];
        for (prefix, path, arch, uses, want) in cases {
            let n = naming(prefix, path);
            assert_eq!(n.uses_arch(), uses, "{prefix}");
            match n.target(&source, arch) {
                Ok(target) => assert_eq!(target.name(), want, "{prefix} {arch:?}"),
                Err(e) => assert!(want.is_empty(), "{prefix}: {e}"),
            }
        }
    }

    fn ctx() -> NameContext {
        NameContext {
            namespace: "prod".into(),
            podname: "web".into(),
            container_name: "app".into(),
            arch: Some("amd64".into()),
        }
    }

    #[test]
    fn prefixes() {
        let cases = [
            ("mirror/$namespace", "mirror/prod"),
            ("$registry/$namespace", "docker.io/prod"),
            ("$namespace/$podname/$container_name", "prod/web/app"),
            ("$arch/$namespace", "amd64/prod"),
            ("", ""),
            ("/a//b/ ", "a/b"),
            ("x/$namespace-mirror", "x/prod-mirror"),
        ];
        for (template, want) in cases {
            assert_eq!(
                expand_prefix(template, &ctx(), "docker.io").unwrap(),
                want,
                "{template}"
            );
        }
        let no_arch = NameContext { arch: None, ..ctx() };
        assert_eq!(
            expand_prefix("$arch/$namespace", &no_arch, "docker.io").unwrap(),
            "prod",
            "empty segment dropped"
        );
        let err = expand_prefix("$namespaces", &ctx(), "docker.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains("$namespaces"), "{err}");
    }

    #[test]
    fn path_maps() {
        let rules = PathRule::compile(&[
            PathMapRule {
                from: "group/project".into(),
                to: "prod/project".into(),
                regex: false,
            },
            PathMapRule {
                from: "strip/".into(),
                to: "".into(),
                regex: false,
            },
            PathMapRule {
                from: "^team-(.*)/(.*)$".into(),
                to: "teams/$1/$2".into(),
                regex: true,
            },
        ])
        .unwrap();
        let cases = [
            ("group/project/app", "prod/project/app"),
            ("group/project", "prod/project"),
            ("group/project2/x", "group/project2/x"),
            ("strip/a/b", "a/b"),
            ("team-red/app", "teams/red/app"),
            ("library/nginx", "library/nginx"),
        ];
        for (path, want) in cases {
            assert_eq!(map_path(&rules, path), want, "{path}");
        }
    }

    #[test]
    fn cleaning() {
        let long = "a".repeat(300);
        let cases: Vec<(&str, String)> = vec![
            ("library/nginx", "library/nginx".into()),
            ("Org/App", "org/app".into()),
            ("a__b/c--d/e..f", "a_b/c-d/e.f".into()),
            ("a._b", "a-b".into()),
            ("-a-/_b_/.c.", "a/b/c".into()),
            ("a//b", "a/b".into()),
            ("registry:5000/x", "registry-5000/x".into()),
            ("ünïcode/app", "n-code/app".into()),
            ("", "library/unknown".into()),
            ("///", "library/unknown".into()),
        ];
        for (input, want) in cases {
            assert_eq!(clean_repository(input), want, "{input:?}");
        }
        let cleaned = clean_repository(&long);
        assert_eq!(cleaned.len(), MAX_REPOSITORY_LEN);
        assert!(
            cleaned.starts_with("aaaa") && cleaned.chars().nth(243) == Some('-'),
            "{cleaned}"
        );
        assert_ne!(
            clean_repository(&format!("{long}b")),
            cleaned,
            "the hash keeps long names apart"
        );
        let ecr = regex::Regex::new(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$").unwrap();
        for input in ["A__B--C", "x/.y./-z-", "a._-b", &long, "9/_/x"] {
            let c = clean_repository(input);
            assert!(ecr.is_match(&c) && c.len() <= MAX_REPOSITORY_LEN, "{input:?} → {c:?}");
        }
    }

    #[test]
    fn target_repositories() {
        let rules = PathRule::compile(&[PathMapRule {
            from: "bitnami".into(),
            to: "vendor/bitnami".into(),
            regex: false,
        }])
        .unwrap();
        let cases = [
            ("mirror/$namespace", "nginx:1.25", "mirror/prod/library/nginx"),
            (
                "$registry/$namespace",
                "docker.io/library/nginx:1.28",
                "docker.io/prod/library/nginx",
            ),
            ("$registry", "localhost:5000/app:1", "localhost-5000/app"),
            ("", "bitnami/redis:7", "vendor/bitnami/redis"),
        ];
        for (template, source, want) in cases {
            let source = ImageRef::parse(source).unwrap();
            assert_eq!(
                target_repository(template, &rules, &source, &ctx()).unwrap(),
                want,
                "{template} {source}"
            );
        }
    }

    const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sha512() -> String {
        format!("sha512:{}", "fedcba9876543210".repeat(8))
    }

    #[test]
    fn target_tags() {
        let pinned = format!("nginx@{D256}");
        let both = format!("nginx:1@{D256}");
        let anchor = format!("copycat-{}", &D256[7..]);
        // (source, explicit tag, template, the tag written)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let cases: [Case<'_>; 9] = [
            ("nginx:1.27", None, None, Some("1.27")),
            ("nginx:1.27", Some("stable"), Some("pin-$short"), Some("stable")),
            ("nginx", None, None, Some("latest")),
            (&pinned, None, None, None),
            (&pinned, None, Some(DEFAULT_DIGEST_TAG_TEMPLATE), Some(&anchor)),
            (&pinned, None, Some("pin-$short"), Some("pin-0123456789ab")),
            (&pinned, Some("x"), Some("pin-$short"), Some("x")),
            (&both, None, Some("pin-$short"), Some("1")),
            (&both, None, None, Some("1")),
        ];
        for (source, explicit, template, want) in cases {
            let source = ImageRef::parse(source).unwrap();
            assert_eq!(
                target_tag(&source, explicit, template).unwrap().as_deref(),
                want,
                "{source} {explicit:?} {template:?}"
            );
        }
    }

    /// Expansion for sha256 and sha512 digests: the hex is whole unless the tag would pass 128
    /// characters, reserved forms are refused however the template spells them.
    #[test]
    fn digest_tags() {
        let sha512 = sha512();
        let (h256, h512) = (&D256[7..], &sha512[7..]);
        let long_text = format!("{}-$hex", "p".repeat(64));
        let cases: Vec<(&str, &str, Result<String, &str>)> = vec![
            (DEFAULT_DIGEST_TAG_TEMPLATE, D256, Ok(format!("copycat-{h256}"))),
            (
                DEFAULT_DIGEST_TAG_TEMPLATE,
                &sha512,
                Ok(format!("copycat-{}", &h512[..120])),
            ),
            ("$hex", &sha512, Ok(h512.to_owned())),
            ("$algorithm.$hex", D256, Ok(format!("sha256.{h256}"))),
            ("$algorithm.$hex", &sha512, Ok(format!("sha512.{}", &h512[..121]))),
            ("pinned-$short", D256, Ok("pinned-0123456789ab".into())),
            ("pinned-$short", &sha512, Ok("pinned-fedcba987654".into())),
            ("x$algorithm-$hex", D256, Ok(format!("xsha256-{h256}"))),
            ("$algorithm-$hex-x", D256, Ok(format!("sha256-{h256}-x"))),
            ("SHA256-$short", D256, Ok("SHA256-0123456789ab".into())),
            ("v1", D256, Ok("v1".into())),
            // Reserved: the referrers tag schema's `<alg>-<hex>` and cosign's `<alg>-<hex>.sig`,
            // whether the algorithm comes from `$algorithm` or from literal text.
            ("$algorithm-$hex", D256, Err("reserved by the OCI referrers tag schema")),
            ("$algorithm-$hex", &sha512, Err("reserved")),
            ("sha256-$hex", D256, Err("reserved")),
            ("sha512-$hex", D256, Err("reserved")),
            ("sha256-$short", D256, Err("reserved")),
            ("$algorithm-abc$short", D256, Err("reserved")),
            ("$algorithm-$hex.sig", D256, Err("reserved")),
            ("blake3-$short", D256, Err("reserved")),
            // Too long even with `$hex` shortened to 64.
            ("x-$hex-$hex", D256, Err("invalid tag")),
            (&long_text, &sha512, Err("invalid tag")),
            ("$hexes", D256, Err("unknown placeholder $hexes")),
            ("$", D256, Err("unknown placeholder $ ")),
            ("-$short", D256, Err("invalid tag")),
            ("a/$short", D256, Err("invalid tag")),
        ];
        for (template, digest, want) in cases {
            let d = Digest::parse(digest).unwrap();
            match (digest_tag(template, &d), want) {
                (Ok(got), Ok(w)) => {
                    assert_eq!(got, w, "{template} {digest}");
                    assert!(got.len() <= MAX_TAG_LEN, "{template}: {}", got.len());
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w.trim()), "{template}: {e}"),
                (got, w) => panic!("{template} {digest}: got {got:?}, want {w:?}"),
            }
        }
    }

    /// What `digestTagTemplate` accepts: `none` turns it off, empty is the default, and a template
    /// must tell digests apart and be valid and unreserved for sha256 and sha512 alike.
    #[test]
    fn digest_tag_templates() {
        let cases: [(&str, Result<Option<&str>, &str>); 14] = [
            ("", Ok(Some(DEFAULT_DIGEST_TAG_TEMPLATE))),
            ("  ", Ok(Some(DEFAULT_DIGEST_TAG_TEMPLATE))),
            ("none", Ok(None)),
            (" NONE ", Ok(None)),
            ("copycat-$hex", Ok(Some("copycat-$hex"))),
            ("pin-$short", Ok(Some("pin-$short"))),
            ("$hex", Ok(Some("$hex"))),
            ("v1", Err("gives every digest the same tag")),
            ("$algorithm", Err("same tag")),
            ("sha256-$hex", Err("reserved")),
            ("$algorithm-$hex", Err("reserved")),
            // 65 characters of text leave 63 for `$hex`: too few.
            (&format!("{}-$hex", "p".repeat(64)), Err("invalid tag")),
            ("x-$hex-$hex", Err("invalid tag")),
            ("v-$hexx", Err("unknown placeholder $hexx")),
        ];
        for (value, want) in cases {
            match (digest_tag_template(value), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.as_deref(), w, "{value:?}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{value:?}: {e}"),
                (got, w) => panic!("{value:?}: got {got:?}, want {w:?}"),
            }
        }
    }
}
