//! Configuration: built-in defaults, then the YAML file, then environment variables, then flags,
//! validated into one [`Config`]. Every problem is reported at once, naming the key or variable, the
//! bad value and what is allowed.

mod keys;
mod load;
mod model;
pub mod parse;
pub mod settings;
mod snippet;

use std::fmt;
use std::path::PathBuf;

pub use model::*;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key or variable and where it came from, e.g. `WATCH_RESOURCES (env)`.
    pub origin: String,
    /// The offending value, when there is one.
    pub value: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Problem {
    fn new(origin: String, value: Option<String>, message: String) -> Self {
        Problem { origin, value, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} = {v}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// All problems found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" },
    .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<Problem>);

/// Command-line flags, which win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--metrics-bind-address`.
    pub metrics_addr: Option<String>,
    /// `--health-probe-bind-address`.
    pub health_addr: Option<String>,
    /// `--leader-elect`.
    pub leader_elect: Option<bool>,
    /// `--dry-run` (`--dry-run=false` turns a configured dry run off).
    pub dry_run: Option<bool>,
    /// `--dry-pull` (`--dry-pull=false` turns a configured dry pull off).
    pub dry_pull: Option<bool>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

/// What the configuration is for: the daemon needs a target; one-shot commands name theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `copycat run` and `check-config`.
    Daemon,
    /// `copycat copy` and `copycat sync`.
    OneShot,
}

/// A loaded configuration and the non-fatal notes about it (e.g. keys read under another spelling).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth a warning in the log.
    pub warnings: Vec<String>,
}

/// Loads the configuration from the file named by `--config`, `CONFIG_PATH` or the default path,
/// the environment as given by `env`, and `overrides`.
pub fn load(
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
    purpose: Purpose,
) -> Result<Loaded, ConfigErrors> {
    let mut loader = load::Loader::new(env);
    // Only the built-in default path may be absent; a path the user gave must exist.
    let (path, given_by) = match (&overrides.config, env("CONFIG_PATH").filter(|p| !p.trim().is_empty())) {
        (Some(path), _) => (path.clone(), Some("--config")),
        (None, Some(path)) => (PathBuf::from(path), Some("CONFIG_PATH (env)")),
        (None, None) => (PathBuf::from(settings::lookup("CONFIG_PATH").default), None),
    };
    let found = loader.read_file(&path, given_by);
    let mut config = load::build(&mut loader, overrides, purpose);
    config.runtime.config_path = path;
    config.runtime.config_found = found;
    if loader.problems.is_empty() {
        Ok(Loaded {
            config,
            warnings: loader.warnings,
        })
    } else {
        Err(ConfigErrors(loader.problems))
    }
}

/// The configuration from the variables `env` alone (no file; later pairs win), for unit tests.
#[cfg(test)]
pub(crate) fn from_env(env: &[(&str, &str)], purpose: Purpose) -> Config {
    let vars: std::collections::HashMap<&str, &str> = env.iter().copied().collect();
    let overrides = Overrides {
        config: Some(load::NO_FILE.into()),
        ..Overrides::default()
    };
    load(&|k| vars.get(k).map(|v| v.to_string()), &overrides, purpose)
        .expect("valid test configuration")
        .config
}

impl Config {
    /// What travels with each image: `referrers`, `referrerArtifactTypes`, `referrerDepth`.
    pub fn referrer_policy(&self) -> crate::referrer_policy::ReferrerPolicy {
        crate::referrer_policy::ReferrerPolicy {
            mode: self.referrers,
            artifact_types: self.referrer_artifact_types.clone(),
            depth: self.referrer_depth as usize,
        }
    }

    /// The effective configuration as YAML that loads back to the same settings, secrets masked,
    /// followed by the environment-only settings as comments.
    pub fn to_yaml(&self) -> String {
        let mut out = serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        let rt = &self.runtime;
        let file_note = if rt.config_found {
            ""
        } else {
            " (not found: defaults used)"
        };
        let lines = [
            format!("CONFIG_PATH: {}{file_note}", rt.config_path.display()),
            format!("METRICS_ADDR: {}", rt.metrics_addr),
            format!("HEALTH_ADDR: {}", rt.health_addr),
            format!("LEADER_ELECT: {}", rt.leader_elect),
            format!("POD_NAMESPACE: {}", rt.pod_namespace),
            format!("ADMIN_TOKEN: {}", rt.admin_token),
            format!("TARGET_USERNAME: {}", self.docker.username),
            format!("TARGET_PASSWORD: {}", self.docker.password),
        ];
        out.push_str("# Settings read only from the environment or flags:\n");
        for line in lines {
            out.push_str(&format!("#   {line}\n"));
        }
        out
    }
}

/// The settings reference as a Markdown table, for `docs/configuration.md`.
pub fn reference_table() -> String {
    let mut out =
        String::from("| YAML key | Environment variable | Default | Type | Meaning |\n|---|---|---|---|---|\n");
    let code = |s: Option<&str>| s.map(|s| format!("`{s}`")).unwrap_or_else(|| "—".into());
    for s in settings::SETTINGS {
        let default = if s.default.is_empty() {
            "—".into()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| {} | {} | {default} | {} | {} |\n",
            code(s.key),
            code(s.env),
            s.kind,
            s.help
        ));
    }
    out
}

#[cfg(test)]
mod tests;
