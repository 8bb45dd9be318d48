//! Shell-style globs (`*`, `?`, `[a-z]`, `[!x]`) as Go's `path.Match` understands them, for namespace and
//! registry-host patterns. `*` never crosses a `/`.

/// Reports whether `s` contains glob syntax; entries without it are matched literally.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Why a glob pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// A `[` class is never closed.
    #[error("unclosed '[' in pattern {0:?}")]
    UnclosedClass(String),
    /// The pattern ends in an escape.
    #[error("trailing '\\' in pattern {0:?}")]
    TrailingEscape(String),
}

/// Checks a pattern's syntax, so bad patterns fail at start rather than never matching.
pub fn validate(pattern: &str) -> Result<(), GlobError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '[' => i = class_end(&chars, i).ok_or_else(|| GlobError::UnclosedClass(pattern.to_owned()))?,
            '\\' if i + 1 == chars.len() => return Err(GlobError::TrailingEscape(pattern.to_owned())),
            '\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Matches `s` against `pattern`; an invalid pattern matches nothing.
pub fn matches(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    validate(pattern).is_ok() && match_from(&p, &t)
}

fn match_from(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len())
            .take_while(|&n| n == 0 || t[n - 1] != '/')
            .any(|n| match_from(&p[1..], &t[n..])),
        Some('?') => t.first().is_some_and(|&c| c != '/') && match_from(&p[1..], &t[1..]),
        Some('[') => {
            let end = class_end(p, 0).unwrap_or(p.len() - 1);
            t.first().is_some_and(|&c| c != '/' && class_matches(&p[1..end], c)) && match_from(&p[end + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && match_from(&p[2..], &t[1..]),
        Some(&c) => t.first() == Some(&c) && match_from(&p[1..], &t[1..]),
    }
}

/// Index of the `]` closing the class that opens at `start`.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if p.get(i) == Some(&'!') || p.get(i) == Some(&'^') {
        i += 1;
    }
    let first = i;
    while i < p.len() {
        match p[i] {
            ']' if i > first => return Some(i),
            '\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn class_matches(class: &[char], c: char) -> bool {
    let (negated, body) = match class.first() {
        Some('!') | Some('^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut i = 0;
    let mut found = false;
    while i < body.len() {
        let lo = if body[i] == '\\' && i + 1 < body.len() {
            i += 1;
            body[i]
        } else {
            body[i]
        };
        if i + 2 < body.len() && body[i + 1] == '-' {
            found |= (lo..=body[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= lo == c;
            i += 1;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            ("*", "default", true),
            ("*", "", true),
            ("team-*", "team-a", true),
            ("team-*", "team", false),
            ("*-prod", "shop-prod", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[!abc]x", "bx", false),
            ("[!abc]x", "dx", true),
            ("[a-c]*", "cat", true),
            ("[a-c]*", "dog", false),
            ("*.docker.io", "registry-1.docker.io", true),
            ("*.docker.io", "docker.io", false),
            ("ns", "ns", true),
            ("ns", "ns2", false),
            ("a*", "a/b", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("[", "[", false),
        ];
        for (pattern, s, want) in cases {
            assert_eq!(matches(pattern, s), want, "matches({pattern:?}, {s:?})");
        }
    }

    #[test]
    fn validation_table() {
        for ok in ["*", "a[bc]", "[]]x", "[!a]", "a\\*", "plain"] {
            assert!(validate(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["[", "a[bc", "x\\", "[!"] {
            assert!(validate(bad).is_err(), "{bad:?} should be invalid");
        }
    }
}
