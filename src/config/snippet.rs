//! The context of a YAML syntax error: the line it is on and the one before, so the reader can find
//! it, with every value that could be a secret masked. After a syntax error nothing says which
//! setting a value belongs to but the text itself, so a value is shown only on a `key: value` line of
//! a setting that is not secret, outside any multi-line value (block scalar, quoted scalar or flow
//! collection spanning lines); everything else, comments included, is masked.

use std::fmt::Write as _;

use super::settings::{KEY_ALIASES, SETTINGS};
use crate::secret::MASK;

/// The error message (without the parser's own snippet, which quotes the file as is) and the
/// masked context lines.
pub(super) fn describe(text: &str, error: &serde_saphyr::Error) -> String {
    let plain = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off, };
    let mut out = error.render_with_options(plain);
    if let Some(location) = error.location() {
        let line = usize::try_from(location.line()).unwrap_or(usize::MAX);
        for (number, shown) in context(text, line) {
            let _ = write!(out, "\n      {number:>4} | {shown}");
        }
    }
    out
}

/// Lines `line - 1` and `line` (1-based) of `text`, masked, with their numbers.
fn context(text: &str, line: usize) -> Vec<(usize, String)> {
    let first = line.saturating_sub(1).max(1);
    let mut within = Within::Nothing;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate().take(line) {
        let shown = within.mask(raw);
        if i + 1 >= first {
            out.push((i + 1, shown));
        }
    }
    out
}

/// Whether the lines read so far leave the next one inside a multi-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Within {
    /// At the start of a node.
    Nothing,
    /// A block scalar (`|`, `>`) introduced on a line indented by `indent`: more indented (or blank)
    /// lines are its content.
    Block { indent: usize },
    /// A quoted scalar or flow collection left open.
    Open(Scan),
}

impl Within {
    /// `raw` as it may be shown; updates the state for the next line.
    fn mask(&mut self, raw: &str) -> String {
        let indent = raw.len() - raw.trim_start().len();
        match *self {
            Within::Block { indent: block } if raw.trim().is_empty() || indent > block => {
                return render(&raw[..indent], None, "", true);
            }
            Within::Open(scan) => {
                let scan = scan.feed(raw);
                *self = if scan.is_open() {
                    Within::Open(scan)
                } else {
                    Within::Nothing
                };
                return render(&raw[..indent], None, "", true);
            }
            _ => *self = Within::Nothing,
        }
        let line = Line::split(raw);
        let value = line.value.trim_start();
        if value.starts_with(['|', '>']) {
            *self = Within::Block { indent };
        } else {
            let scan = Scan::default().feed(value);
            if scan.is_open() {
                *self = Within::Open(scan);
            }
        }
        let shown = line.key.is_some_and(shown_key) && is_single_line_scalar(value) && *self == Within::Nothing;
        render(line.prefix, line.key, line.value, !shown && !value.is_empty())
    }
}

/// A line cut into indentation with list markers, key and value.
struct Line<'a> {
    prefix: &'a str,
    key: Option<&'a str>,
    value: &'a str,
}

impl Line<'_> {
    fn split(raw: &str) -> Line<'_> {
        let mut rest = raw.trim_start();
        while let Some(after) = rest
            .strip_prefix('-')
            .filter(|a| a.is_empty() || a.starts_with([' ', '\t']))
        {
            rest = after.trim_start();
        }
        let prefix = &raw[..raw.len() - rest.len()];
        let key_end = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].find(q).map(|end| end + 2),
            _ => rest.find(": ").or_else(|| rest.strip_suffix(':').map(str::len)),
        };
        match key_end.filter(|&end| rest[end..].starts_with(':') && !rest[..end].contains(['{', '[', '#'])) {
            Some(end) => Line {
                prefix,
                key: Some(&rest[..end]),
                value: &rest[end + 1..],
            },
            None => Line {
                prefix,
                key: None,
                value: rest,
            },
        }
    }
}

/// A line from its parts, its value (as written after the key) replaced by the mask when `mask`.
fn render(prefix: &str, key: Option<&str>, value: &str, mask: bool) -> String {
    let mut out = prefix.to_owned();
    if let Some(key) = key {
        out.push_str(key);
        out.push(':');
    }
    match (mask, key) {
        (false, _) => out.push_str(value),
        (true, Some(_)) => {
            out.push(' ');
            out.push_str(MASK);
        }
        (true, None) => out.push_str(MASK),
    }
    out
}

/// Whether `value` (after `key:`) is a plain or quoted scalar that ends on its line, with no comment
/// (which could hold anything).
fn is_single_line_scalar(value: &str) -> bool {
    let value = value.trim();
    !value.starts_with(['{', '[', '|', '>', '!', '&', '*'])
        && !value.contains('#')
        && !Scan::default().feed(value).is_open()
}

/// Whether `key` names a setting (or a part of one) that is not secret.
fn shown_key(key: &str) -> bool {
    let key = key.trim_matches(['"', '\'']);
    let settings = SETTINGS
        .iter()
        .filter(|s| s.kind != "secret")
        .filter_map(|s| s.key)
        .flat_map(|k| k.split(['.', '[', ']']));
    let aliases = KEY_ALIASES.iter().map(|(alias, _)| *alias);
    settings
        .chain(aliases)
        .any(|name| !name.is_empty() && name.eq_ignore_ascii_case(key))
}

/// Quotes and flow brackets open at the end of the text fed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Scan {
    quote: Option<char>,
    depth: usize,
}

impl Scan {
    fn is_open(self) -> bool {
        self.quote.is_some() || self.depth > 0
    }

    /// The state after `text`. A quote opens a quoted scalar only where a node starts (at the start,
    /// or after `[`, `{`, `,`, `:` or `-` and spaces); `#` after a space outside quotes starts a comment.
    fn feed(mut self, text: &str) -> Scan {
        let mut node_start = self.quote.is_none();
        let mut previous = ' ';
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match self.quote {
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some('\'') if c == '\'' && chars.peek() == Some(&'\'') => {
                    chars.next();
                }
                Some(q) if c == q => {
                    self.quote = None;
                    node_start = false;
                }
                Some(_) => {}
                None => match c {
                    '#' if previous.is_whitespace() => break,
                    '"' | '\'' if node_start => self.quote = Some(c),
                    '[' | '{' => {
                        self.depth += 1;
                        node_start = true;
                    }
                    ']' | '}' => {
                        self.depth = self.depth.saturating_sub(1);
                        node_start = false;
                    }
                    ',' | ':' | '-' => node_start = true,
                    c if c.is_whitespace() => {}
                    _ => node_start = false,
                },
            }
            previous = c;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks every line of `text` in turn.
    fn all(text: &str) -> Vec<String> {
        let mut within = Within::Nothing;
        text.lines().map(|l| within.mask(l)).collect()
    }

    #[test]
    fn only_values_of_known_settings_that_are_not_secret_are_shown() {
        let text = "\
targetKind: docker
docker: {registry: r.example.com}
registryCredentials:
  - registry: ghcr.io
    username: bot
    password: hunter2
    'token': \"hunter3\"
  - registry: \"quay.io\"
    passwrd: hunter4
# password: hunter5
logLevel: info # hunter6
dryRun: 'it''s fine'
-
";
        let want = [
            "targetKind: docker",
            "docker: ********",
            "registryCredentials:",
            "  - registry: ghcr.io",
            "    username: bot",
            "    password: ********",
            "    'token': ********",
            "  - registry: \"quay.io\"",
            "    passwrd: ********",
            "********",
            "logLevel: ********",
            "dryRun: 'it''s fine'",
            "-",
        ];
        assert_eq!(all(text), want);
    }

    #[test]
    fn lines_inside_multi_line_values_are_masked_whatever_they_look_like() {
        let text = "\
password: |
  registry: hunter2

  hunter3
registry: r.example.com
token: \"hunter4
  registry: hunter5\"
registry: [a,
  registry: hunter6]
logLevel: 'unclosed
  registry: hunter7
";
        let want = [
            "password: ********",
            "  ********",
            "********",
            "  ********",
            "registry: r.example.com",
            "token: ********",
            "  ********",
            "registry: ********",
            "  ********",
            "logLevel: ********",
            "  ********",
        ];
        assert_eq!(all(text), want);
    }

    #[test]
    fn syntax_errors_show_two_masked_lines_and_never_the_secret() {
        let cases = [
            "registryCredentials:\n  - registry: r\n    password: \"hunter2\n  - x: [\n",
            "targetKind: docker\npassword: hunter2\n\tb: 2\n",
            "password: [hunter2, other\nkey: v\n",
            "registryCredentials:\n  - password: hunter2\n  password: hunter2\n",
            "registryCredentials:\n- {registry: r, password: hunter2\n",
        ];
        for text in cases {
            let error = serde_saphyr::from_str::<serde_json::Value>(text).unwrap_err();
            let shown = describe(text, &error);
            assert!(!shown.contains("hunter2"), "{text:?}:\n{shown}");
            assert!(
                shown.contains(" | ") && shown.contains(" at line "),
                "{text:?}:\n{shown}"
            );
        }
        let text = "targetKind: docker\ndryRun: [true\nlogLevel: info\n";
        let error = serde_saphyr::from_str::<serde_json::Value>(text).unwrap_err();
        let shown = describe(text, &error);
        assert!(shown.contains("   2 | dryRun: ********"), "{shown}");
    }
}
