//! Where registry credentials come from, in order of precedence:
//!
//! 1. explicit per-host credentials added by the caller (e.g. the target's `TARGET_USERNAME`/`TARGET_PASSWORD`);
//! 2. `registryCredentials` from the configuration: an exact match of `registry` or a `registryAliases` entry
//!    first, then glob patterns; within each pass the first entry in configuration order wins, so the
//!    result never depends on anything but the file. `token` wins over username/password;
//! 3. a Docker `config.json`: `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
//!    `~/.docker/config.json` (the first that exists).
//!
//! Docker Hub is the same registry under `docker.io`, `index.docker.io`, `registry-1.docker.io` and
//! `https://index.docker.io/v1/`; all of them are looked up alike.
//!
//! Limitation: a Docker `identitytoken` (an OAuth2 refresh token, as `docker login` stores for Azure
//! and some SSO setups) is sent as the Basic password of user `<token>` to the token service, not
//! exchanged through the OAuth2 POST flow. Registries that accept that form work; others refuse it
//! with an authentication error. Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;

use super::{Credential, CredentialProvider, RegistryError};
use crate::config::RegistryCredential;
use crate::glob;
use crate::reference::{DOCKER_HUB, DOCKER_HUB_SPELLINGS, canonical_host};
use crate::secret::Secret;

/// Credentials from a Docker `config.json` (or a Kubernetes `.dockerconfigjson` secret), keyed by
/// canonical host (`docker.io` for Docker Hub).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerAuths {
    entries: HashMap<String, Credential>,
}

impl DockerAuths {
    /// The credential stored for a canonical host.
    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.entries.get(&canonical_host(host))
    }

    /// How many registries have credentials.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no registry has credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the entries of `other` for hosts not present here.
    pub fn merge(&mut self, other: DockerAuths) {
        for (k, v) in other.entries {
            self.entries.entry(k).or_insert(v);
        }
    }
}

/// Why a Docker config (a file, or a pull Secret's) cannot be used. Messages name the file and the
/// registry key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    /// The document is not JSON.
    #[error("not a valid Docker config JSON document ({0})")]
    Json(#[source] serde_json::Error),
    /// The document is JSON, but no object.
    #[error("a Docker config must be a JSON object")]
    NotAnObject,
    /// `auths` is there, but no object.
    #[error("`auths` must be an object")]
    AuthsNotAnObject,
    /// One registry's entry is malformed.
    #[error("auth entry for {key:?}: {problem}")]
    Entry {
        /// The registry key of the entry.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A Docker config file is malformed.
    #[error("{}: {source}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        source: Box<DockerConfigError>,
    },
    /// A Docker config file exists but cannot be read.
    #[error("Docker config {}: {source}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: crate::files::ReadError,
    },
}

/// Parses a Docker `config.json`, a Kubernetes `.dockerconfigjson` (both `{"auths": {…}}`) or a legacy
/// `.dockercfg` (the `auths` map at top level). Entries: `auth` (base64 `user:password`), or
/// `username`/`password`, or `identitytoken` (see the module limitation), or `registrytoken` (a bearer
/// token). Keys may be hosts or URLs (`https://index.docker.io/v1/`). Entries with nothing usable are
/// skipped; malformed ones are errors naming the registry key, never the secret.
pub fn parse_docker_config_json(bytes: &[u8]) -> Result<DockerAuths, DockerConfigError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(DockerConfigError::Json)?;
    let obj = value.as_object().ok_or(DockerConfigError::NotAnObject)?;
    let auths = match obj.get("auths") {
        Some(serde_json::Value::Object(a)) => a.clone(),
        Some(serde_json::Value::Null) | None => {
            // Legacy .dockercfg: registry keys at top level. A config.json with only other keys
            // (credsStore, HttpHeaders, …) has no auths.
            let legacy = obj.values().all(|v| v.is_object())
                && obj
                    .values()
                    .any(|v| v.get("auth").is_some() || v.get("username").is_some());
            if legacy { obj.clone() } else { serde_json::Map::new() }
        }
        Some(_) => return Err(DockerConfigError::AuthsNotAnObject),
    };
    let mut out = DockerAuths::default();
    // Sorted so that two keys for the same canonical host resolve deterministically (first wins).
    let mut keys: Vec<&String> = auths.keys().collect();
    keys.sort();
    for key in keys {
        let host = canonical_host(key);
        if host.is_empty() {
            continue;
        }
        let entry = &auths[key];
        let Some(cred) = docker_entry(key, entry)? else {
            continue;
        };
        out.entries.entry(host).or_insert(cred);
    }
    Ok(out)
}

fn docker_entry(key: &str, entry: &serde_json::Value) -> Result<Option<Credential>, DockerConfigError> {
    let bad = |problem| DockerConfigError::Entry {
        key: key.to_owned(),
        problem,
    };
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    if !entry.is_object() {
        return Err(bad("not an object"));
    }
    if let Some(token) = field("identitytoken") {
        return Ok(Some(Credential::Basic {
            username: "<token>".into(),
            password: Secret::new(token),
        }));
    }
    if let Some(token) = field("registrytoken") {
        return Ok(Some(Credential::Bearer(Secret::new(token))));
    }
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
            .map_err(|_| bad("`auth` is not valid base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8 text"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| bad("`auth` must encode \"username:password\""))?;
        if user.is_empty() && pass.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Credential::Basic {
            username: user.to_string(),
            password: Secret::new(pass.trim_end_matches(['\n', '\r'])),
        }));
    }
    match (field("username"), field("password")) {
        (None, None) => Ok(None),
        (user, pass) => Ok(Some(Credential::Basic {
            username: user.unwrap_or("").to_string(),
            password: Secret::new(pass.unwrap_or("")),
        })),
    }
}

/// The Docker config files to try, in order, given an environment lookup: `$REGISTRY_AUTH_FILE`,
/// `$DOCKER_CONFIG/config.json`, `$HOME/.docker/config.json`.
pub fn docker_config_candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(f) = set("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(f));
    }
    if let Some(d) = set("DOCKER_CONFIG") {
        out.push(Path::new(&d).join("config.json"));
    }
    if let Some(h) = set("HOME") {
        out.push(Path::new(&h).join(".docker").join("config.json"));
    }
    out
}

/// Loads the first existing Docker config among [`docker_config_candidates`]; `Ok(None)` when none
/// exists. Errors name the file, never its contents.
pub fn load_docker_config(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(PathBuf, DockerAuths)>, DockerConfigError> {
    for path in docker_config_candidates(env) {
        match crate::files::read_limited(&path, crate::files::MAX_CONFIG_FILE_SIZE) {
            Ok(bytes) => {
                let auths = parse_docker_config_json(&bytes).map_err(|e| DockerConfigError::InFile {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                return Ok(Some((path, auths)));
            }
            Err(e) if e.is_not_found() => continue,
            Err(source) => return Err(DockerConfigError::Unreadable { path, source }),
        }
    }
    Ok(None)
}

/// One `registryCredentials` entry, ready for lookup.
#[derive(Debug, Clone)]
struct ConfigEntry {
    /// `registry` then `registryAliases`, canonicalised when not globs.
    names: Vec<String>,
    credential: Credential,
}

/// The [`CredentialProvider`] copycat uses: a provider of expiring credentials for its host (the ECR
/// target), explicit hosts, then configuration, then Docker config.
#[derive(Clone, Default)]
pub struct Credentials {
    providers: Vec<(String, Arc<dyn CredentialProvider>)>,
    explicit: Vec<(String, Credential)>,
    config: Vec<ConfigEntry>,
    docker: DockerAuths,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("providers", &self.providers.iter().map(|(h, _)| h).collect::<Vec<_>>())
            .field("explicit", &self.explicit)
            .field("config", &self.config)
            .field("docker", &self.docker)
            .finish()
    }
}

impl Credentials {
    /// No credentials at all (every registry anonymous).
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Hands every credential question about exactly `host` to `provider` (e.g. ECR tokens).
    pub fn with_provider(mut self, host: &str, provider: Arc<dyn CredentialProvider>) -> Credentials {
        self.providers.push((canonical_host(host), provider));
        self
    }

    fn provider_for(&self, host: &str) -> Option<&Arc<dyn CredentialProvider>> {
        let host = canonical_host(host);
        self.providers.iter().find(|(h, _)| *h == host).map(|(_, p)| p)
    }

    /// Adds credentials for exactly `host` that win over everything else (first added wins).
    pub fn with_host(mut self, host: &str, credential: Credential) -> Credentials {
        if credential != Credential::Anonymous {
            self.explicit.push((canonical_host(host), credential));
        }
        self
    }

    /// Adds the configuration's `registryCredentials`, in order.
    pub fn with_registry_credentials(mut self, entries: &[RegistryCredential]) -> Credentials {
        for e in entries {
            let credential = if !e.token.is_empty() {
                Credential::Bearer(e.token.clone())
            } else if !e.username.is_empty() || !e.password.is_empty() {
                Credential::Basic {
                    username: e.username.clone(),
                    password: e.password.clone(),
                }
            } else {
                continue;
            };
            let names = std::iter::once(&e.registry)
                .chain(&e.registry_aliases)
                .filter(|n| !n.trim().is_empty())
                .map(|n| {
                    if glob::is_glob(n) {
                        n.trim().to_ascii_lowercase()
                    } else {
                        canonical_host(n)
                    }
                })
                .collect();
            self.config.push(ConfigEntry { names, credential });
        }
        self
    }

    /// Adds Docker config credentials (lowest precedence).
    pub fn with_docker_auths(mut self, auths: DockerAuths) -> Credentials {
        self.docker.merge(auths);
        self
    }

    /// The credential for `host` and where it came from (for logs: never the secret).
    pub fn lookup(&self, host: &str) -> (Credential, &'static str) {
        let host = canonical_host(host);
        if let Some((_, c)) = self.explicit.iter().find(|(h, _)| *h == host) {
            return (c.clone(), "explicit");
        }
        if let Some(e) = self
            .config
            .iter()
            .find(|e| e.names.iter().any(|n| !glob::is_glob(n) && *n == host))
        {
            return (e.credential.clone(), "registryCredentials");
        }
        let spellings: Vec<&str> = if host == DOCKER_HUB {
            DOCKER_HUB_SPELLINGS.to_vec()
        } else {
            vec![host.as_str()]
        };
        if let Some(e) = self.config.iter().find(|e| {
            e.names
                .iter()
                .any(|n| glob::is_glob(n) && spellings.iter().any(|s| glob::matches(n, s)))
        }) {
            return (e.credential.clone(), "registryCredentials");
        }
        if let Some(c) = self.docker.get(&host) {
            return (c.clone(), "docker config");
        }
        (Credential::Anonymous, "none")
    }
}

impl CredentialProvider for Credentials {
    fn credential_for<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Credential, RegistryError>> {
        match self.provider_for(host) {
            Some(p) => p.credential_for(host),
            None => Box::pin(std::future::ready(Ok(self.lookup(host).0))),
        }
    }

    fn renew<'a>(&'a self, host: &'a str, refused: &'a Credential) -> BoxFuture<'a, bool> {
        match self.provider_for(host) {
            Some(p) => p.renew(host, refused),
            None => Box::pin(std::future::ready(false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: Secret::new(p),
        }
    }

    fn rc(registry: &str, aliases: &[&str], user: &str, pass: &str, token: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            registry_aliases: aliases.iter().map(|s| s.to_string()).collect(),
            username: user.into(),
            password: Secret::new(pass),
            token: Secret::new(token),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn lookup_table() {
        let docker = parse_docker_config_json(
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"ghcr.io":{{"auth":"{}"}},"only-docker.test":{{"username":"du","password":"dp"}}}}}}"#,
                b64("hubuser:hubpass"),
                b64("gh:docker-config")
            )
            .as_bytes(),
        )
        .unwrap();
        let creds = Credentials::new()
            .with_host("target.example:5000", basic("target", "tpass"))
            .with_registry_credentials(&[
                rc("*.example", &[], "glob1", "g1", ""),
                rc("registry.example", &["mirror.example", "*.corp"], "exact", "e", ""),
                rc("ghcr.io", &[], "ignored", "ignored", "ghtoken"),
                rc("*.corp", &[], "second-glob", "x", ""),
                rc("index.docker.io", &[], "hub-config", "hp", ""),
                rc("target.example:5000", &[], "config-target", "c", ""),
                rc("quay.io", &[], "", "", ""),
                rc("*.hub-*.io", &[], "", "", ""),
            ])
            .with_docker_auths(docker);

        let cases: Vec<(&str, Credential, &str)> = vec![
            // explicit wins over a config entry for the same host
            ("target.example:5000", basic("target", "tpass"), "explicit"),
            ("TARGET.example:5000", basic("target", "tpass"), "explicit"),
            // exact match beats an earlier glob
            ("registry.example", basic("exact", "e"), "registryCredentials"),
            // alias, exact
            ("mirror.example", basic("exact", "e"), "registryCredentials"),
            // glob: first matching entry in config order (entry 2's alias "*.corp" before entry 4)
            ("git.corp", basic("exact", "e"), "registryCredentials"),
            ("other.example", basic("glob1", "g1"), "registryCredentials"),
            // token wins over username/password; config wins over docker config
            (
                "ghcr.io",
                Credential::Bearer(Secret::new("ghtoken")),
                "registryCredentials",
            ),
            // Docker Hub under any spelling finds the config entry written as index.docker.io
            ("docker.io", basic("hub-config", "hp"), "registryCredentials"),
            ("registry-1.docker.io", basic("hub-config", "hp"), "registryCredentials"),
            (
                "https://index.docker.io/v1/",
                basic("hub-config", "hp"),
                "registryCredentials",
            ),
            // docker config fallback; an empty config entry (quay.io) is skipped
            ("only-docker.test", basic("du", "dp"), "docker config"),
            ("quay.io", Credential::Anonymous, "none"),
            // '*' spans dots (Go path.Match) but a port must match too
            ("a.b.example", basic("glob1", "g1"), "registryCredentials"),
            ("a.example:5000", Credential::Anonymous, "none"),
            ("registry.example:443", Credential::Anonymous, "none"),
        ];
        for (host, want, source) in cases {
            let (got, got_source) = creds.lookup(host);
            assert_eq!(got, want, "{host}");
            assert_eq!(got_source, source, "{host}");
            assert_eq!(creds.lookup(host).0, want, "{host}");
        }
    }

    #[test]
    fn docker_hub_aliases_and_globs() {
        for name in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
        ] {
            let creds = Credentials::new().with_registry_credentials(&[rc(name, &[], "u", "p", "")]);
            for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(creds.lookup(host).0, basic("u", "p"), "entry {name}, host {host}");
            }
            let json = format!(r#"{{"auths":{{"{name}":{{"auth":"{}"}}}}}}"#, b64("d:q"));
            let creds = Credentials::new().with_docker_auths(parse_docker_config_json(json.as_bytes()).unwrap());
            assert_eq!(creds.lookup("docker.io").0, basic("d", "q"), "docker config key {name}");
        }
        // A glob written against one Docker Hub spelling matches Docker Hub.
        let creds = Credentials::new().with_registry_credentials(&[rc("*.docker.io", &[], "g", "p", "")]);
        assert_eq!(creds.lookup("docker.io").0, basic("g", "p"));
        assert_eq!(creds.lookup("quay.io").0, Credential::Anonymous);
    }

    #[test]
    fn docker_config_parsing_table() {
        type Want<'a> = Result<Vec<(&'a str, Credential)>, &'a str>;
        let cases: Vec<(String, Want)> = vec![
            (
                format!(r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#, b64("user:pa:ss")),
                Ok(vec![("r.example", basic("user", "pa:ss"))]),
            ),
            (
                r#"{"auths":{"http://localhost:5000/v2/":{"username":"u","password":"p"}}}"#.into(),
                Ok(vec![("localhost:5000", basic("u", "p"))]),
            ),
            (
                format!(
                    r#"{{"auths":{{"acr.example":{{"auth":"{}","identitytoken":"refresh"}}}}}}"#,
                    b64("00000000-0000-0000-0000-000000000000:")
                ),
                Ok(vec![("acr.example", basic("<token>", "refresh"))]),
            ),
            (
                r#"{"auths":{"t.example":{"registrytoken":"bearer-tok"}}}"#.into(),
                Ok(vec![("t.example", Credential::Bearer(Secret::new("bearer-tok")))]),
            ),
            // legacy .dockercfg: no "auths" wrapper
            (
                format!(
                    r#"{{"https://index.docker.io/v1/":{{"auth":"{}","email":"x@y"}}}}"#,
                    b64("a:b")
                ),
                Ok(vec![("docker.io", basic("a", "b"))]),
            ),
            // unpadded base64
            (
                format!(
                    r#"{{"auths":{{"p.example":{{"auth":"{}"}}}}}}"#,
                    b64("ab:c").trim_end_matches('=')
                ),
                Ok(vec![("p.example", basic("ab", "c"))]),
            ),
            // credential helpers only, empty entries: nothing
            (
                r#"{"auths":{"e.example":{}},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}"#.into(),
                Ok(vec![]),
            ),
            (r#"{"credsStore":"desktop"}"#.into(), Ok(vec![])),
            (r#"{}"#.into(), Ok(vec![])),
            (
                r#"{"auths":{"bad.example":{"auth":"%%%secret%%%"}}}"#.into(),
                Err("bad.example"),
            ),
            (
                format!(
                    r#"{{"auths":{{"nocolon.example":{{"auth":"{}"}}}}}}"#,
                    b64("justsecret")
                ),
                Err("nocolon.example"),
            ),
            (r#"{"auths":[]}"#.into(), Err("auths")),
            (r#"[]"#.into(), Err("object")),
            (r#"{"auths":"#.into(), Err("JSON")),
        ];
        for (json, want) in cases {
            match (parse_docker_config_json(json.as_bytes()), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.len(), want.len(), "{json}");
                    for (host, cred) in want {
                        assert_eq!(got.get(host), Some(&cred), "{json}: {host}");
                    }
                }
                (Err(e), Err(needle)) => {
                    let e = e.to_string();
                    assert!(e.contains(needle), "{json}: error {e:?} should mention {needle:?}");
                    assert!(!e.contains("secret"), "{json}: error leaks: {e}");
                }
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn docker_config_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let auth_file = dir.path().join("auth.json");
        let docker_dir = dir.path().join("dockercfg");
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        std::fs::create_dir_all(&docker_dir).unwrap();
        let write = |p: &Path, user: &str| {
            std::fs::write(
                p,
                format!(r#"{{"auths":{{"r.example":{{"username":"{user}","password":"p"}}}}}}"#),
            )
            .unwrap()
        };
        write(&home.join(".docker/config.json"), "home");
        let vars = |auth: bool, docker: bool| {
            let mut m = HashMap::new();
            m.insert("HOME".to_string(), home.display().to_string());
            if auth {
                m.insert("REGISTRY_AUTH_FILE".to_string(), auth_file.display().to_string());
            }
            if docker {
                m.insert("DOCKER_CONFIG".to_string(), docker_dir.display().to_string());
            }
            m
        };
        let user_of = |m: HashMap<String, String>| {
            let env = move |k: &str| m.get(k).cloned();
            let (_, auths) = load_docker_config(&env).unwrap().unwrap();
            match auths.get("r.example") {
                Some(Credential::Basic { username, .. }) => username.clone(),
                other => panic!("{other:?}"),
            }
        };
        // Missing files are skipped.
        assert_eq!(user_of(vars(true, true)), "home");
        write(&docker_dir.join("config.json"), "dockerconfig");
        assert_eq!(user_of(vars(true, true)), "dockerconfig");
        assert_eq!(user_of(vars(false, false)), "home");
        write(&auth_file, "authfile");
        assert_eq!(user_of(vars(true, true)), "authfile");
        // No file at all.
        let env = |_: &str| None;
        assert_eq!(load_docker_config(&env).unwrap(), None);
        // A broken file is an error naming it, not quoting it.
        std::fs::write(&auth_file, r#"{"auths":{"r":{"auth":"!!secret!!"}}}"#).unwrap();
        let m = vars(true, false);
        let env = move |k: &str| m.get(k).cloned();
        let err = load_docker_config(&env).unwrap_err().to_string();
        assert!(err.contains("auth.json") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let creds = Credentials::new()
            .with_host("a", basic("u", "hunter2"))
            .with_registry_credentials(&[rc("b", &[], "", "", "tok-hunter3")]);
        let s = format!("{creds:?}");
        assert!(!s.contains("hunter2") && !s.contains("hunter3"), "{s}");
    }
}
