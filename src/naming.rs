//! Target naming: how a source reference becomes a target reference. Pure functions.

use crate::reference::{Digest, ImageRef};

/// Placeholders of `digestTagTemplate`.
pub const DIGEST_TAG_PLACEHOLDERS: &[&str] = &["algorithm", "hex", "short"];

/// Expands `digestTagTemplate` for a digest-only source: `$algorithm` (`sha256`), `$hex` (the whole
/// hex digest), `$short` (its first 12 characters). Only whole tokens expand (`$hexes` is an error,
/// not `$hex` + `es`). The result must be a valid tag.
pub fn digest_tag(template: &str, digest: &Digest) -> Result<String, String> {
    let encoded = digest.encoded();
    let expanded = expand(template, |name| match name {
        "algorithm" => Some(digest.algorithm().to_owned()),
        "hex" => Some(encoded.to_owned()),
        "short" => Some(encoded.chars().take(12).collect()),
        _ => None,
    })?;
    let probe = ImageRef::parse("probe").expect("a valid reference");
    probe
        .with_tag(&expanded)
        .map_err(|e| format!("{template:?} expands to an invalid tag {expanded:?}: {e}"))?;
    Ok(expanded)
}

/// The tag to write at the target: an explicit one, else the source's tag; a digest-only source
/// gets `digest_tag_template` expanded, or no tag at all (pushed by digest, never to `:latest`).
pub fn target_tag(
    source: &ImageRef,
    explicit: Option<&str>,
    digest_tag_template: &str,
) -> Result<Option<String>, String> {
    if let Some(tag) = explicit.or(source.tag()) {
        return Ok(Some(tag.to_owned()));
    }
    match source.digest() {
        Some(digest) if !digest_tag_template.is_empty() => digest_tag(digest_tag_template, digest).map(Some),
        _ => Ok(None),
    }
}

/// Replaces each `$name` token (letters, digits, `_`) using `value`; an unknown name is an error naming
/// it and the known ones.
pub fn expand(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
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
            None => return Err(format!("unknown placeholder ${name} in {template:?}")),
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
    fn target_tags() {
        const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            ("nginx:1.27", None, "", Some("1.27")),
            ("nginx:1.27", Some("stable"), "", Some("stable")),
            ("nginx", None, "", Some("latest")),
            (&format!("nginx@{D}") as &str, None, "", None),
            (&format!("nginx@{D}"), None, "pin-$short", Some("pin-0123456789ab")),
            (&format!("nginx@{D}"), Some("x"), "pin-$short", Some("x")),
            (&format!("nginx:1@{D}"), None, "pin-$short", Some("1")),
        ];
        for (source, explicit, template, want) in cases {
            let source = ImageRef::parse(source).unwrap();
            assert_eq!(
                target_tag(&source, explicit, template).unwrap().as_deref(),
                want,
                "{source} {explicit:?} {template}"
            );
        }
    }

    #[test]
    fn digest_tags() {
        let d = Digest::parse("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
        let cases = [
            (
                "$algorithm-$hex",
                Ok("sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            ),
            ("pinned-$short", Ok("pinned-0123456789ab")),
            ("v1", Ok("v1")),
            ("$hexes", Err("unknown placeholder $hexes")),
            ("$", Err("unknown placeholder $ ")),
            ("-$short", Err("invalid tag")),
            ("a/$short", Err("invalid tag")),
        ];
        for (template, want) in cases {
            match (digest_tag(template, &d), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{template}"),
                (Err(e), Err(w)) => assert!(e.contains(w.trim()), "{template}: {e}"),
                (got, w) => panic!("{template}: got {got:?}, want {w:?}"),
            }
        }
    }
}
