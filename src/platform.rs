//! Image platforms (`linux/amd64`, `linux/arm/v7`) as used in `mirrorPlatforms` and index entries.

use std::fmt;

/// An OS/architecture pair with an optional variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v7`; `None` matches any variant.
    pub variant: Option<String>,
}

/// A platform spec that is not `arch`, `os/arch` or `os/arch/variant`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected arch, os/arch or os/arch/variant")]
pub struct InvalidPlatform(pub String);

impl Platform {
    /// Parses `arch`, `os/arch` or `os/arch/variant` (case-insensitive; a bare arch means Linux).
    pub fn parse(s: &str) -> Result<Platform, InvalidPlatform> {
        let invalid = || InvalidPlatform(s.to_owned());
        let parts: Vec<String> = s.trim().split('/').map(|p| p.trim().to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            return Err(invalid());
        }
        let (os, architecture, variant) = match parts.as_slice() {
            [arch] => ("linux".to_owned(), arch.clone(), None),
            [os, arch] => (os.clone(), arch.clone(), None),
            [os, arch, variant] => (os.clone(), arch.clone(), Some(variant.clone())),
            _ => return Err(invalid()),
        };
        Ok(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// Whether an index entry's platform satisfies this requested one; a request without a variant
    /// accepts any variant.
    pub fn accepts(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os.eq_ignore_ascii_case(os)
            && self.architecture.eq_ignore_ascii_case(architecture)
            && self
                .variant
                .as_deref()
                .is_none_or(|v| variant.is_some_and(|got| got.eq_ignore_ascii_case(v)))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases = [
            ("amd64", Ok("linux/amd64")),
            ("linux/arm64", Ok("linux/arm64")),
            ("Linux/ARM/v7", Ok("linux/arm/v7")),
            ("windows/amd64", Ok("windows/amd64")),
            ("", Err(())),
            ("linux/", Err(())),
            ("/amd64", Err(())),
            ("a/b/c/d", Err(())),
        ];
        for (input, want) in cases {
            let got = Platform::parse(input).map(|p| p.to_string()).map_err(|_| ());
            assert_eq!(got, want.map(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn accepts_variants() {
        let arm = Platform::parse("linux/arm").unwrap();
        assert!(arm.accepts("linux", "arm", Some("v7")));
        assert!(arm.accepts("linux", "arm", None));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(v7.accepts("linux", "arm", Some("v7")));
        assert!(!v7.accepts("linux", "arm", Some("v6")));
        assert!(!v7.accepts("linux", "arm", None));
        assert!(!v7.accepts("linux", "arm64", Some("v7")));
    }
}
