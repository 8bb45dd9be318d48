//! Parsers for setting values. File and environment values go through the same functions, so
//! `DRY_RUN=Yes` and `dryRun: yes` mean the same thing and an invalid value is an error in both.

use std::fmt;
use std::time::Duration;

/// Why a setting's value was refused. The loader reports it beside the key (or variable, or flag)
/// and the value, so the texts say what is wrong with the value and what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A list where one value belongs.
    #[error("expected a single value, got a list")]
    NotSingle,
    /// A YAML list item that is itself a list or mapping.
    #[error("expected a value, got a nested list or mapping")]
    Nested,
    /// A YAML mapping where a value or list belongs.
    #[error("expected a value or a list, got a mapping")]
    Mapping,
    /// More characters than the setting takes.
    #[error("{length} characters, more than the {max} this setting takes")]
    TooLong {
        /// The value's length (the longest item's, for a list).
        length: usize,
        /// The setting's limit.
        max: usize,
    },
    /// Not a boolean spelling.
    #[error("expected a boolean: true/false, yes/no, on/off or 1/0")]
    NotBoolean,
    /// Not a whole number.
    #[error("expected a whole number greater than 0")]
    NotWholeNumber,
    /// A whole number out of range.
    #[error("must be a whole number greater than 0")]
    NotPositive,
    /// A negative duration.
    #[error("must not be negative")]
    Negative,
    /// Neither a number of `unit`s nor a duration.
    #[error("expected a whole number of {unit} or a duration like 90s, 5m, 1h ({reason})")]
    NotDuration {
        /// `seconds` or `minutes`.
        unit: &'static str,
        /// What the duration parser said.
        reason: String,
    },
    /// Not one of the allowed values.
    #[error("allowed values: {}{}", allowed.join(", "), suggestion(got, allowed))]
    NotAllowed {
        /// The value given.
        got: String,
        /// The values the setting takes.
        allowed: Vec<&'static str>,
    },
    /// List items that are not allowed values.
    #[error(
        "unknown value(s) {}; allowed: {}{}",
        unknown.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", "),
        allowed.join(", "),
        match unknown.as_slice() { [one] => suggestion(one, allowed), _ => String::new() }
    )]
    UnknownItems {
        /// The items not allowed.
        unknown: Vec<String>,
        /// The values the setting takes.
        allowed: Vec<&'static str>,
    },
    /// A value of the wrong form for this setting; `problem` says which form and why.
    #[error("{problem}")]
    Invalid {
        /// What is wrong, in the setting's own words.
        problem: String,
    },
}

impl ValueError {
    /// A value of the wrong form, described by `problem`.
    pub fn invalid(problem: impl fmt::Display) -> Self {
        ValueError::Invalid {
            problem: problem.to_string(),
        }
    }
}

/// A raw setting value: a scalar (env var, YAML scalar) or a YAML sequence of scalars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One text value; lists given this way are comma-separated.
    Scalar(String),
    /// A YAML sequence; items may themselves hold comma-separated values.
    List(Vec<String>),
}

impl Input {
    fn scalar(&self) -> Result<&str, ValueError> {
        match self {
            Input::Scalar(s) => Ok(s.trim()),
            Input::List(_) => Err(ValueError::NotSingle),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Scalar(s) => write!(f, "{s:?}"),
            Input::List(items) => write!(f, "{items:?}"),
        }
    }
}

/// Booleans: `true/false`, `yes/no`, `on/off`, `1/0`, `t/f`, any case.
pub fn boolean(input: &Input) -> Result<bool, ValueError> {
    match input.scalar()?.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Ok(false),
        _ => Err(ValueError::NotBoolean),
    }
}

/// Text, trimmed.
pub fn text(input: &Input) -> Result<String, ValueError> {
    input.scalar().map(str::to_owned)
}

/// A list: YAML sequence items or comma-separated text, each item trimmed, blanks dropped.
pub fn list(input: &Input) -> Result<Vec<String>, ValueError> {
    let items: Vec<&str> = match input {
        Input::Scalar(s) => vec![s.as_str()],
        Input::List(items) => items.iter().map(String::as_str).collect(),
    };
    Ok(items
        .into_iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A whole number greater than zero.
pub fn positive_u32(input: &Input) -> Result<u32, ValueError> {
    let s = input.scalar()?;
    match s.parse::<i64>() {
        Ok(n) if n > 0 && n <= i64::from(u32::MAX) => Ok(n as u32),
        Ok(_) => Err(ValueError::NotPositive),
        Err(_) => Err(ValueError::NotWholeNumber),
    }
}

/// A span of time: a bare integer counts in `unit` (the unit k8s-copycat used for this key), anything
/// else is humantime (`90s`, `5m`, `1h30m`). Zero or a negative integer yields `None`, which each setting
/// interprets (usually "disabled").
pub fn duration(input: &Input, unit: Duration) -> Result<Option<Duration>, ValueError> {
    let s = input.scalar()?;
    if let Ok(n) = s.parse::<i64>() {
        return Ok(u32::try_from(n).ok().filter(|&n| n > 0).map(|n| unit * n));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(ValueError::NotDuration {
            unit: unit_name(unit),
            reason: e.to_string(),
        }),
    }
}

/// A duration that must not be negative; zero is allowed and kept.
pub fn non_negative_duration(input: &Input, unit: Duration) -> Result<Duration, ValueError> {
    Ok(optional_non_negative_duration(input, unit)?.unwrap_or(Duration::ZERO))
}

/// A duration that must not be negative; zero disables (`None`).
pub fn optional_non_negative_duration(input: &Input, unit: Duration) -> Result<Option<Duration>, ValueError> {
    if input.scalar()?.starts_with('-') {
        return Err(ValueError::Negative);
    }
    duration(input, unit)
}

fn unit_name(unit: Duration) -> &'static str {
    match unit.as_secs() {
        60 => "minutes",
        _ => "seconds",
    }
}

/// One of `allowed`, compared case-insensitively; returns the canonical spelling.
pub fn one_of(input: &Input, allowed: &[&'static str]) -> Result<&'static str, ValueError> {
    let s = input.scalar()?;
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(s))
        .copied()
        .ok_or_else(|| ValueError::NotAllowed {
            got: s.to_owned(),
            allowed: allowed.to_vec(),
        })
}

/// A list whose items must each be one of `allowed` (case-insensitive); duplicates are dropped and
/// every unknown item is reported.
pub fn list_of(input: &Input, allowed: &[&'static str]) -> Result<Vec<&'static str>, ValueError> {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for item in list(input)? {
        match allowed.iter().find(|a| a.eq_ignore_ascii_case(&item)) {
            Some(a) if !out.contains(a) => out.push(*a),
            Some(_) => {}
            None => unknown.push(item),
        }
    }
    if unknown.is_empty() {
        return Ok(out);
    }
    Err(ValueError::UnknownItems {
        unknown,
        allowed: allowed.to_vec(),
    })
}

/// `; did you mean "x"?` when a candidate is close to `got`, else empty.
pub fn suggestion<S: AsRef<str>>(got: &str, candidates: &[S]) -> String {
    closest(got, candidates)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

/// The candidate nearest to `got`, if any is near enough to be a plausible typo.
pub fn closest<'a, S: AsRef<str>>(got: &str, candidates: &'a [S]) -> Option<&'a str> {
    let got = got.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&got, &c.as_ref().to_ascii_lowercase()), c.as_ref()))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Input {
        Input::Scalar(v.into())
    }

    #[test]
    fn booleans() {
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("on", true),
            ("1", true),
            ("t", true),
        ] {
            assert_eq!(boolean(&s(v)), Ok(want), "{v}");
        }
        for (v, want) in [
            ("false", false),
            ("No", false),
            ("OFF", false),
            ("0", false),
            (" f ", false),
        ] {
            assert_eq!(boolean(&s(v)), Ok(want), "{v}");
        }
        for v in ["maybe", "", "2", "truee"] {
            assert!(boolean(&s(v)).is_err(), "{v}");
        }
        assert!(boolean(&Input::List(vec!["true".into()])).is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(list(&s(" a, b ,,c ")), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(list(&s("")), Ok(vec![]));
        assert_eq!(
            list(&Input::List(vec!["a,b".into(), " c ".into(), "".into()])),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(list(&Input::List(vec![])), Ok(vec![]));
    }

    #[test]
    fn durations() {
        let sec = Duration::from_secs(1);
        let min = Duration::from_secs(60);
        type Case = (&'static str, Duration, Result<Option<Duration>, ()>);
        let cases: [Case; 9] = [
            ("300", sec, Ok(Some(Duration::from_secs(300)))),
            ("60", min, Ok(Some(Duration::from_secs(3600)))),
            ("90s", min, Ok(Some(Duration::from_secs(90)))),
            ("1h", sec, Ok(Some(Duration::from_secs(3600)))),
            ("1h30m", sec, Ok(Some(Duration::from_secs(5400)))),
            ("0", sec, Ok(None)),
            ("-5", min, Ok(None)),
            ("0s", sec, Ok(None)),
            ("soon", sec, Err(())),
        ];
        for (v, unit, want) in cases {
            assert_eq!(duration(&s(v), unit).map_err(|_| ()), want, "{v}");
        }
        assert_eq!(non_negative_duration(&s("0"), sec), Ok(Duration::ZERO));
        assert_eq!(non_negative_duration(&s("10"), sec), Ok(Duration::from_secs(10)));
        assert!(non_negative_duration(&s("-1"), sec).is_err());
        assert_eq!(optional_non_negative_duration(&s("0"), sec), Ok(None));
        assert_eq!(
            optional_non_negative_duration(&s("24h"), sec),
            Ok(Some(Duration::from_secs(86_400)))
        );
        assert!(optional_non_negative_duration(&s("-1h"), sec).is_err());
    }

    #[test]
    fn positive_numbers() {
        assert_eq!(positive_u32(&s("3")), Ok(3));
        for v in ["0", "-1", "x", "1.5", "99999999999"] {
            assert!(positive_u32(&s(v)).is_err(), "{v}");
        }
    }

    #[test]
    fn enums_and_suggestions() {
        assert_eq!(one_of(&s("ECR"), &["ecr", "docker"]), Ok("ecr"));
        let err = one_of(&s("dockr"), &["ecr", "docker"]).unwrap_err().to_string();
        assert!(err.contains("did you mean \"docker\""), "{err}");
        assert_eq!(
            list_of(&s("Pods,pods,jobs"), &["jobs", "pods"]),
            Ok(vec!["pods", "jobs"])
        );
        let err = list_of(&s("deploymentz"), &["deployments", "pods"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"deploymentz\"") && err.contains("did you mean \"deployments\""),
            "{err}"
        );
        assert_eq!(
            closest("includeNamespace", &["includeNamespaces", "skipNamespaces"]),
            Some("includeNamespaces")
        );
        assert_eq!(closest("zzz", &["includeNamespaces"]), None);
    }
}
