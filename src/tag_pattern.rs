//! Version patterns as image-operator's `Image` objects write them in `source.version`: three
//! dot-separated parts, each a number or `x` (`v2.13.x`, `2.x.0`, `4.x.x`), an optional leading
//! `v` that the tag must carry too. Only tags that are versions (`[v]X.Y.Z`, and `X.Y.Z-rcN` with
//! one or two digits when candidate releases are allowed) ever match; `latest`, `1.2.3-alpine` and
//! `1.2` never do. Matching tags sort by version, a release after its candidates.

use std::cmp::Ordering;

/// Why a `source.version` that looks like a pattern is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One part of a pattern: a fixed number or `x` (any number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Is(u64),
    Any,
}

/// A parsed version pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionPattern {
    /// Whether matching tags start with `v`.
    v_prefix: bool,
    parts: [Part; 3],
}

/// A tag read as a version: `[v]MAJOR.MINOR.PATCH[-rcN]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Whether the tag starts with `v`.
    pub v_prefix: bool,
    /// `MAJOR.MINOR.PATCH`.
    pub numbers: [u64; 3],
    /// `N` of `-rcN`; `None` for a release.
    pub candidate: Option<u8>,
}

impl Version {
    /// Reads `tag` as a version; `None` when it is not one (other suffixes, two parts, leading
    /// zeros, `-rc` with no or more than two digits).
    pub fn parse(tag: &str) -> Option<Version> {
        let (v_prefix, rest) = split_v(tag);
        let (core, candidate) = match rest.split_once('-') {
            None => (rest, None),
            Some((core, suffix)) => {
                let digits = suffix.strip_prefix("rc")?;
                if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (core, Some(digits.parse().ok()?))
            }
        };
        let mut numbers = [0; 3];
        let mut parts = core.split('.');
        for n in &mut numbers {
            *n = number(parts.next()?)?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            v_prefix,
            numbers,
            candidate,
        })
    }
}

impl Ord for Version {
    /// By numbers; a release after its candidates (`2.0.0-rc1 < 2.0.0-rc2 < 2.0.0`); `v` last.
    fn cmp(&self, other: &Version) -> Ordering {
        let rank = |c: Option<u8>| c.map_or(u16::MAX, u16::from);
        self.numbers
            .cmp(&other.numbers)
            .then(rank(self.candidate).cmp(&rank(other.candidate)))
            .then(self.v_prefix.cmp(&other.v_prefix))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn split_v(s: &str) -> (bool, &str) {
    match s.strip_prefix('v') {
        Some(rest) => (true, rest),
        None => (false, s),
    }
}

/// A decimal number without a leading zero (`0` itself is fine), at most 18 digits.
fn number(s: &str) -> Option<u64> {
    let ok =
        !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

impl VersionPattern {
    /// Whether `version` (a `source.version`) is meant as a pattern: one of its dot-separated
    /// parts is `x`. Anything else is a plain tag.
    pub fn is_pattern(version: &str) -> bool {
        split_v(version).1.split('.').any(|p| p == "x")
    }

    /// Parses a pattern: `[v]P.P.P`, each `P` a number or `x`, at least one `x`.
    pub fn parse(pattern: &str) -> Result<VersionPattern, PatternError> {
        let bad = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let (v_prefix, rest) = split_v(pattern);
        let pieces: Vec<&str> = rest.split('.').collect();
        if pieces.len() != 3 {
            return Err(bad("a pattern has three parts, MAJOR.MINOR.PATCH, each a number or x"));
        }
        let mut parts = [Part::Any; 3];
        for (part, piece) in parts.iter_mut().zip(&pieces) {
            *part = match *piece {
                "x" => Part::Any,
                p => Part::Is(number(p).ok_or_else(|| bad("each part is a number (no leading zero) or x"))?),
            };
        }
        if !parts.contains(&Part::Any) {
            return Err(bad("a pattern has at least one x; without one it is a tag"));
        }
        Ok(VersionPattern { v_prefix, parts })
    }

    /// `tag` as a version when it matches: the same `v` prefix, every fixed part equal, and a
    /// release, or a candidate (`-rcN`) when `candidates` allows them.
    pub fn matches(&self, tag: &str, candidates: bool) -> Option<Version> {
        let version = Version::parse(tag)?;
        let fits = version.v_prefix == self.v_prefix
            && (candidates || version.candidate.is_none())
            && self
                .parts
                .iter()
                .zip(version.numbers)
                .all(|(part, n)| matches!(part, Part::Any) || *part == Part::Is(n));
        fits.then_some(version)
    }

    /// The tags among `tags` that match, sorted by version (oldest first).
    pub fn select<'a>(&self, tags: impl IntoIterator<Item = &'a str>, candidates: bool) -> Vec<&'a str> {
        let mut matched: Vec<(Version, &str)> = tags
            .into_iter()
            .filter_map(|t| Some((self.matches(t, candidates)?, t)))
            .collect();
        matched.sort();
        matched.into_iter().map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matching_table() {
        // (pattern, tag, candidates allowed, matches)
        let cases = [
            ("v2.13.x", "v2.13.0", false, true),
            ("v2.13.x", "v2.13.17", false, true),
            ("v2.13.x", "v2.14.0", false, false),
            ("v2.13.x", "2.13.1", false, false),
            ("2.13.x", "v2.13.1", false, false),
            ("v2.13.x", "v2.13.1-rc1", false, false),
            ("v2.13.x", "v2.13.1-rc1", true, true),
            ("v2.13.x", "v2.13.1-rc12", true, true),
            ("v2.13.x", "v2.13.1-rc123", true, false),
            ("v2.13.x", "v2.13.1-rc", true, false),
            ("v2.13.x", "v2.13.1-beta1", true, false),
            ("v2.13.x", "v2.13.1-alpine", true, false),
            ("v2.13.x", "v2.13", false, false),
            ("v2.13.x", "v2.13.1.4", false, false),
            ("v2.13.x", "v2.13.01", false, false),
            ("2.x.0", "2.0.0", false, true),
            ("2.x.0", "2.7.0", false, true),
            ("2.x.0", "2.7.1", false, false),
            ("2.x.0", "3.7.0", false, false),
            ("4.x.x", "4.0.0", false, true),
            ("4.x.x", "4.19.3", false, true),
            ("4.x.x", "40.0.0", false, false),
            ("4.x.x", "latest", true, false),
            ("4.x.x", "4.1.2-rc1", false, false),
            ("4.x.x", "4.1.2-rc1", true, true),
            ("x.x.x", "0.0.0", false, true),
            ("x.x.x", "sha256-abc.sig", false, false),
            ("3.1.x", "3.1.0", false, true),
        ];
        for (pattern, tag, candidates, want) in cases {
            let p = VersionPattern::parse(pattern).unwrap();
            assert_eq!(
                p.matches(tag, candidates).is_some(),
                want,
                "{pattern} vs {tag} (rc allowed: {candidates})"
            );
        }
    }

    #[test]
    fn pattern_parse_table() {
        for bad in [
            "v2.13",
            "2.x",
            "2.x.0.1",
            "2.13.1",
            "2.y.0",
            "2.x.01",
            "",
            "v",
            "x",
            "2..x",
            "2.x.0-rc1",
        ] {
            assert!(VersionPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = VersionPattern::parse("2.x").unwrap_err();
        assert!(e.to_string().contains("\"2.x\""), "{e}");
        for (version, is_pattern) in [
            ("v2.13.x", true),
            ("2.x", true),
            ("1.27", false),
            ("latest", false),
            ("xenial", false),
            ("1.2.3", false),
        ] {
            assert_eq!(VersionPattern::is_pattern(version), is_pattern, "{version}");
        }
    }

    #[test]
    fn selected_tags_sort_by_version_release_after_candidates() {
        let p = VersionPattern::parse("1.x.x").unwrap();
        let tags = [
            "1.10.0",
            "1.2.0",
            "latest",
            "1.2.0-rc2",
            "1.2.0-rc10",
            "1.2.0-rc1",
            "1.9.9",
            "0.9.0",
        ];
        assert_eq!(
            p.select(tags, true),
            ["1.2.0-rc1", "1.2.0-rc2", "1.2.0-rc10", "1.2.0", "1.9.9", "1.10.0"]
        );
        assert_eq!(p.select(tags, false), ["1.2.0", "1.9.9", "1.10.0"]);
    }
}
