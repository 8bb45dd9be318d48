//! Builds a [`Config`] from defaults, the YAML file, the environment and flags, collecting every
//! problem instead of stopping at the first.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::model::*;
use super::parse::{self, Input, ValueError};
use super::settings::{RESOURCE_KINDS, Setting, is_secret, lookup};
use super::{Overrides, Problem, Purpose, keys, snippet};
use crate::files::{self, MAX_CONFIG_FILE_SIZE};
use crate::naming::PathMapRule;
use crate::platform::Platform;
use crate::referrer_policy::{ArtifactTypes, ReferrersMode};
use crate::secret::{MASK, Secret};

/// The config path that means "no config file" (`--config /dev/null`), read as an empty file.
pub const NO_FILE: &str = "/dev/null";

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Longest value of a setting, or of each item of a list: no setting needs more, and a longer one
/// would only be copied into every name or request built from it.
pub const MAX_VALUE_LEN: usize = 4096;
/// Longest `ecr.lifecyclePolicy`: ECR's own limit for a lifecycle policy.
const MAX_LIFECYCLE_POLICY_LEN: usize = 30_720;

/// The most characters the setting `id` (a YAML key or env-only variable; `field` for a field of a
/// list entry) takes per value.
fn max_len(id: &str) -> usize {
    if id == "ecr.lifecyclePolicy" {
        MAX_LIFECYCLE_POLICY_LEN
    } else {
        MAX_VALUE_LEN
    }
}

/// Most characters of a bad value quoted in a problem.
const MAX_SHOWN_VALUE: usize = 120;

/// `value`, cut to [`MAX_SHOWN_VALUE`] characters with `…` when longer.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(MAX_SHOWN_VALUE) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// Why `input` is too long for setting `id`, if it is.
fn too_long(id: &str, input: &Input) -> Option<ValueError> {
    let max = max_len(id);
    let longest = match input {
        Input::Scalar(s) => s.chars().count(),
        Input::List(items) => items.iter().map(|i| i.chars().count()).max().unwrap_or(0),
    };
    (longest > max).then_some(ValueError::TooLong { length: longest, max })
}

/// Where a value came from, for error messages.
enum Origin {
    Env(&'static str),
    File(String),
    Default,
}

pub(super) struct Loader<'a> {
    file: Value,
    file_label: String,
    env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
    /// Settings read so far; a test checks that every table row is read.
    pub(super) used: Vec<&'static str>,
}

impl<'a> Loader<'a> {
    pub(super) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Loader {
            file: Value::Null,
            file_label: String::new(),
            env,
            problems: vec![],
            warnings: vec![],
            used: vec![],
        }
    }

    /// Reads and parses the config file; whether it was found. A missing file means defaults when
    /// the path is the built-in default; a path the user gave (`given_by`: the flag or variable)
    /// must exist. [`NO_FILE`] reads as an empty file. Only a regular file of at most
    /// [`MAX_CONFIG_FILE_SIZE`] bytes is read.
    pub(super) fn read_file(&mut self, path: &std::path::Path, given_by: Option<&str>) -> bool {
        self.file_label = path.display().to_string();
        if path == std::path::Path::new(NO_FILE) {
            return true;
        }
        let text = match files::read_limited(path, MAX_CONFIG_FILE_SIZE) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned()),
            Err(e) if e.is_not_found() => {
                if let Some(given_by) = given_by {
                    self.problems.push(Problem::new(
                        given_by.to_owned(),
                        Some(self.file_label.clone()),
                        format!("the config file does not exist (use {NO_FILE} for none)"),
                    ));
                }
                return false;
            }
            Err(e) => Err(e.to_string()),
        };
        match text {
            Ok(text) => self.parse_text(&text),
            Err(why) => self.problems.push(Problem::new(
                self.file_label.clone(),
                None,
                format!("cannot use the config file: {why}"),
            )),
        }
        true
    }

    pub(super) fn parse_text(&mut self, text: &str) {
        match serde_saphyr::from_str::<Value>(text) {
            Ok(Value::Null) => {}
            Ok(mut v @ Value::Object(_)) => {
                keys::canonicalize(&mut v, &self.file_label, &mut self.problems, &mut self.warnings);
                self.file = v;
            }
            Ok(_) => self.problems.push(Problem::new(
                self.file_label.clone(),
                None,
                "config file must be a YAML mapping of settings".into(),
            )),
            Err(e) => self.problems.push(Problem::new(
                self.file_label.clone(),
                None,
                format!("invalid YAML: {}", snippet::describe(text, &e)),
            )),
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    fn file_value(&self, key: &str) -> Option<&Value> {
        key.split('.')
            .try_fold(&self.file, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    }

    /// The effective raw value of a setting: env (non-empty) over file over default.
    fn raw(&mut self, setting: &'static Setting) -> (Origin, Input) {
        self.used.push(setting.id());
        if let Some(v) = setting.env.and_then(|name| self.env(name)) {
            return (Origin::Env(setting.env.unwrap_or_default()), Input::Scalar(v));
        }
        if let Some(key) = setting.key
            && let Some(v) = self.file_value(key)
        {
            match to_input(v) {
                Ok(input) => return (Origin::File(key.to_owned()), input),
                Err(e) => self.problem(&Origin::File(key.to_owned()), None, e.to_string()),
            }
        }
        (Origin::Default, Input::Scalar(setting.default.to_owned()))
    }

    /// Reads setting `id` with `parse`; on a bad value records a problem and uses the default.
    fn get<T>(&mut self, id: &str, parse: impl Fn(&Input) -> Result<T, ValueError>) -> T {
        let setting = lookup(id);
        let (origin, input) = self.raw(setting);
        match too_long(id, &input).map_or_else(|| parse(&input), Err) {
            Ok(v) => v,
            Err(e) => {
                self.problem(&origin, Some(&input), e.to_string());
                let default = Input::Scalar(setting.default.to_owned());
                parse(&default).unwrap_or_else(|e| panic!("default of {id} does not parse: {e}"))
            }
        }
    }

    /// Like [`Self::get`] but for a file-only list of mappings (`registryCredentials`, `pathMap`).
    fn entries(&mut self, id: &'static str) -> Vec<(String, serde_json::Map<String, Value>)> {
        self.used.push(id);
        let Some(value) = self.file_value(id).cloned() else {
            return vec![];
        };
        let Value::Array(items) = value else {
            self.problem(&Origin::File(id.into()), None, "expected a list of entries".into());
            return vec![];
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::Object(map) => out.push((format!("{id}[{i}]"), map)),
                _ => self.problem(&Origin::File(format!("{id}[{i}]")), None, "expected a mapping".into()),
            }
        }
        out
    }

    /// Reads field `name` of a list entry, through the same parsers as top-level settings.
    fn field<T>(
        &mut self,
        entry: &(String, serde_json::Map<String, Value>),
        name: &str,
        parse: impl Fn(&Input) -> Result<T, ValueError>,
    ) -> Option<T> {
        let origin = Origin::File(format!("{}.{name}", entry.0));
        let input = match entry.1.get(name).filter(|v| !v.is_null()).map(to_input)? {
            Ok(input) => input,
            Err(e) => {
                self.problem(&origin, None, e.to_string());
                return None;
            }
        };
        too_long(name, &input)
            .map_or_else(|| parse(&input), Err)
            .map_err(|e| self.problem(&origin, Some(&input), e.to_string()))
            .ok()
    }

    /// Records a problem; the value of a secret setting is shown masked, whatever its shape.
    fn problem(&mut self, origin: &Origin, input: Option<&Input>, message: String) {
        let (origin, secret) = match origin {
            Origin::Env(name) => (format!("{name} (env)"), is_secret(name)),
            Origin::File(key) => (format!("{key} ({})", self.file_label), is_secret(key)),
            Origin::Default => ("default".into(), false),
        };
        let value = input.map(|i| {
            if secret {
                MASK.to_owned()
            } else {
                shortened(&i.to_string())
            }
        });
        self.problems.push(Problem::new(origin, value, message));
    }

    /// Records a problem about a setting's effective value (cross-field checks), unless its value
    /// was already reported as invalid (the check then sees the default instead).
    fn setting_problem(&mut self, id: &str, message: String) {
        let setting = lookup(id);
        let named = |p: &Problem| {
            [setting.key, setting.env]
                .into_iter()
                .flatten()
                .any(|name| p.origin.starts_with(&format!("{name} (")))
        };
        if self.problems.iter().any(named) {
            return;
        }
        let env_set = setting.env.is_some_and(|e| self.env(e).is_some());
        let origin = match (setting.key, setting.env) {
            (_, Some(env)) if env_set => Origin::Env(env),
            (Some(key), _) if self.file_value(key).is_some() => Origin::File(key.into()),
            (Some(key), Some(env)) => {
                self.problems
                    .push(Problem::new(format!("{key} / {env}"), None, message));
                return;
            }
            _ => Origin::Default,
        };
        self.problem(&origin, None, message);
    }
}

fn to_input(v: &Value) -> Result<Input, ValueError> {
    fn scalar(v: &Value) -> Result<String, ValueError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Ok(String::new()),
            Value::Array(_) | Value::Object(_) => Err(ValueError::Nested),
        }
    }
    match v {
        Value::Array(items) => items.iter().map(scalar).collect::<Result<_, _>>().map(Input::List),
        Value::Object(_) => Err(ValueError::Mapping),
        other => scalar(other).map(Input::Scalar),
    }
}

/// Builds the configuration; see [`super::load`].
pub(super) fn build(loader: &mut Loader<'_>, overrides: &Overrides, purpose: Purpose) -> Config {
    let target_kind = match loader.get("targetKind", |i| parse::one_of(i, &["ecr", "docker", "pullThrough"])) {
        "docker" => TargetKind::Docker,
        "pullThrough" => TargetKind::PullThrough,
        _ => TargetKind::Ecr,
    };
    let log_level = loader.get("logLevel", log_level);
    let log_level = match &overrides.log_level {
        Some(flag) => log_level_flag(loader, flag).unwrap_or(log_level),
        None => log_level,
    };
    let ecr = EcrConfig {
        account_id: loader.get("ecr.accountID", parse::text),
        region: loader.get("ecr.region", parse::text),
        repo_prefix: loader.get("ecr.repoPrefix", prefix_template),
        create_repo: loader.get("ecr.createRepo", parse::boolean),
        assume_role_arn: loader.get("ecr.assumeRoleArn", parse::text),
        assume_role_external_id: loader.get("ecr.assumeRoleExternalId", parse::text),
        assume_role_session_name: loader.get("ecr.assumeRoleSessionName", parse::text),
        registry_host: loader.get("ecr.registryHost", registry_host),
        lifecycle_policy: loader.get("ecr.lifecyclePolicy", json_text),
        reconcile_lifecycle_policy: loader.get("ecr.reconcileLifecyclePolicy", parse::boolean),
        image_tag_mutability: loader
            .get("ecr.imageTagMutability", |i| {
                parse::one_of(i, &["MUTABLE", "IMMUTABLE"])
            })
            .to_owned(),
        scan_on_push: loader.get("ecr.scanOnPush", parse::boolean),
        encryption_type: loader
            .get("ecr.encryptionType", |i| {
                parse::one_of(i, &["AES256", "KMS", "KMS_DSSE"])
            })
            .to_owned(),
        kms_key: loader.get("ecr.kmsKey", parse::text),
        tags: string_map(loader, "ecr.tags"),
    };
    let docker = DockerConfig {
        registry: loader.get("docker.registry", registry_host),
        repo_prefix: loader.get("docker.repoPrefix", prefix_template),
        insecure: loader.get("docker.insecure", parse::boolean),
        ca_file: loader.get("docker.caFile", parse::text),
        username: loader.get("TARGET_USERNAME", parse::text),
        password: Secret::new(loader.get("TARGET_PASSWORD", parse::text)),
    };
    let pull_through = PullThroughConfig {
        caches: pull_through_caches(loader),
        blobs: loader.get("pullThrough.blobs", parse::boolean),
    };
    let lower_list = |i: &Input| parse::list(i).map(|l| l.into_iter().map(|s| s.to_ascii_lowercase()).collect());
    let config = Config {
        target_kind,
        log_level,
        log_format: match loader.get("logFormat", |i| parse::one_of(i, &["json", "text"])) {
            "text" => LogFormat::Text,
            _ => LogFormat::Json,
        },
        ecr,
        docker,
        pull_through,
        digest_pull: loader.get("digestPull", parse::boolean),
        digest_pull_ignored_tags: loader.get("digestPullIgnoredTags", lower_list),
        ignore_missing_platforms: loader.get("ignoreMissingPlatforms", patterns),
        check_node_platform: loader.get("checkNodePlatform", parse::boolean),
        use_image_pull_secrets: loader.get("useImagePullSecrets", parse::boolean),
        mirror_platforms: loader.get("mirrorPlatforms", platforms),
        allow_different_digest_repush: loader.get("allowDifferentDigestRepush", parse::boolean),
        include_namespaces: loader.get("includeNamespaces", |i| all_when_empty(globs(i)?, vec!["*".into()])),
        skip_namespaces: loader.get("skipNamespaces", parse::list),
        skip_names: SkipNames {
            deployments: loader.get("skipNames.deployments", parse::list),
            stateful_sets: loader.get("skipNames.statefulSets", parse::list),
            daemon_sets: loader.get("skipNames.daemonSets", parse::list),
            jobs: loader.get("skipNames.jobs", parse::list),
            cron_jobs: loader.get("skipNames.cronJobs", parse::list),
            pods: loader.get("skipNames.pods", parse::list),
        },
        exclude_registries: loader.get("excludeRegistries", excluded_registries),
        watch_resources: loader.get("watchResources", |i| {
            all_when_empty(parse::list_of(i, RESOURCE_KINDS)?, RESOURCE_KINDS.to_vec())
        }),
        dry_run: overrides
            .dry_run
            .unwrap_or_else(|| loader.get("dryRun", parse::boolean)),
        dry_pull: overrides
            .dry_pull
            .unwrap_or_else(|| loader.get("dryPull", parse::boolean)),
        request_timeout: loader.get("requestTimeout", |i| parse::duration(i, SECOND)),
        registry_retry_attempts: loader.get("registryRetryAttempts", parse::positive_u32),
        registry_retry_backoff: loader.get("registryRetryBackoff", |i| parse::non_negative_duration(i, SECOND)),
        failure_cooldown: loader.get("failureCooldownMinutes", |i| parse::duration(i, MINUTE)),
        emit_events: loader.get("emitEvents", parse::boolean),
        force_reconcile_interval: loader.get("forceReconcileMinutes", |i| parse::duration(i, MINUTE)),
        max_concurrent_reconciles: loader.get("maxConcurrentReconciles", parse::positive_u32),
        registry_credentials: registry_credentials(loader),
        path_map: path_map(loader),
        always_overwrite_tags: loader.get("alwaysOverwriteTags", lower_list),
        digest_tag_template: loader.get("digestTagTemplate", digest_tag_template),
        referrers: loader.get("referrers", referrers_mode),
        referrer_artifact_types: loader.get("referrerArtifactTypes", artifact_types),
        referrer_depth: loader.get("referrerDepth", parse::positive_u32),
        referrers_interval: loader.get("referrersInterval", |i| {
            parse::duration(i, SECOND)?.ok_or_else(|| ValueError::invalid("must be more than 0"))
        }),
        blob_concurrency: loader.get("blobConcurrency", parse::positive_u32),
        registry_max_concurrent_requests: loader.get("registryMaxConcurrentRequests", parse::positive_u32),
        image_deadline: loader.get("imageDeadline", |i| parse::duration(i, SECOND)),
        mirrored_cache_ttl: loader.get("mirroredCacheTTL", |i| parse::duration(i, SECOND)),
        verify_interval: loader.get("verifyInterval", |i| parse::optional_non_negative_duration(i, SECOND)),
        restore_drill_interval: loader.get("restoreDrillInterval", |i| {
            parse::optional_non_negative_duration(i, SECOND)
        }),
        restore_drill_images: loader.get("restoreDrillImages", parse::positive_u32),
        shutdown_grace_period: loader.get("shutdownGracePeriod", |i| parse::non_negative_duration(i, SECOND)),
        registries: registry_settings(loader),
        registry_mirrors: registry_mirrors(loader),
        on_the_fly: OnTheFly {
            enabled: loader.get("onTheFly.enabled", parse::boolean),
            rules: on_the_fly_rules(loader),
        },
        flux_image_repositories: FluxImageRepositories {
            enabled: loader.get("fluxImageRepositories.enabled", parse::boolean),
            namespaces: loader.get("fluxImageRepositories.namespaces", namespace_names),
            destination_prefix: loader.get("fluxImageRepositories.destinationPrefix", prefix_template),
            max_tags: loader.get("fluxImageRepositories.maxTags", parse::positive_u32),
            all_tags: loader.get("fluxImageRepositories.allTags", parse::boolean),
        },
        images: Images {
            enabled: loader.get("images.enabled", parse::boolean),
            namespaces: loader.get("images.namespaces", parse::list),
            tag_list_interval: loader.get("images.tagListInterval", |i| {
                parse::duration(i, SECOND)?.ok_or_else(|| ValueError::invalid("must be more than 0"))
            }),
            max_tags_per_image: loader.get("images.maxTagsPerImage", parse::positive_u32),
        },
        runtime: RuntimeSettings {
            config_path: PathBuf::new(),
            config_found: false,
            metrics_addr: match &overrides.metrics_addr {
                Some(flag) => address_flag(loader, "--metrics-bind-address", flag),
                None => loader.get("METRICS_ADDR", listen_address),
            },
            health_addr: match &overrides.health_addr {
                Some(flag) => address_flag(loader, "--health-probe-bind-address", flag),
                None => loader.get("HEALTH_ADDR", listen_address),
            },
            leader_elect: overrides
                .leader_elect
                .unwrap_or_else(|| loader.get("LEADER_ELECT", parse::boolean)),
            pod_namespace: loader.get("POD_NAMESPACE", parse::text),
            admin_token: Secret::new(loader.get("ADMIN_TOKEN", parse::text)),
            kubeconfig: overrides.kubeconfig.clone(),
        },
    };
    if purpose == Purpose::Daemon {
        check_target(loader, &config);
        check_namespaces(loader, &config);
        check_on_the_fly(loader, &config);
        check_flux(loader, &config);
    }
    warn_about_tagged_exclusions(loader, &config.exclude_registries);
    warn_about_empty_digest_tag_template(loader);
    config
}

/// `digestTagTemplate: ""` once meant "push digest-only sources untagged" (copycat's earlier example
/// configuration wrote it); it now means the default anchor tag, so say so where it is written.
fn warn_about_empty_digest_tag_template(loader: &mut Loader<'_>) {
    let env_set = loader.env("DIGEST_TAG_TEMPLATE").is_some();
    let empty_in_file = loader
        .file_value("digestTagTemplate")
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().is_empty());
    if empty_in_file && !env_set {
        loader.warnings.push(format!(
            "digestTagTemplate \"\" means the default {:?}: digest-only sources get that anchor tag; write \
             {:?} to push them untagged",
            crate::naming::DEFAULT_DIGEST_TAG_TEMPLATE,
            crate::naming::NO_DIGEST_TAG
        ));
    }
}

/// k8s-copycat's rule for `watchResources` and `includeNamespaces`: an empty list (the Helm chart's
/// default `[]`) means everything, not nothing.
fn all_when_empty<T>(items: Vec<T>, all: Vec<T>) -> Result<Vec<T>, ValueError> {
    Ok(if items.is_empty() { all } else { items })
}

/// A daemon whose every included namespace is skipped would watch nothing and mirror nothing.
fn check_namespaces(loader: &mut Loader<'_>, config: &Config) {
    let names_only = config.include_namespaces.iter().all(|n| !crate::glob::is_glob(n));
    if names_only
        && config
            .include_namespaces
            .iter()
            .all(|n| config.skip_namespaces.contains(n))
    {
        loader.setting_problem(
            "includeNamespaces",
            format!(
                "every namespace listed ({}) is also in skipNamespaces: nothing would be watched",
                config.include_namespaces.join(", ")
            ),
        );
    }
}

/// Exclusions match `registry/repository` prefixes; an entry naming a tag or digest never matches.
fn warn_about_tagged_exclusions(loader: &mut Loader<'_>, exclude_registries: &[String]) {
    for entry in exclude_registries {
        if let Some(at) = tag_start(entry) {
            loader.warnings.push(format!(
                "excludeRegistries entry {entry:?} names a tag or digest: entries are matched against \
                 registry/repository only, so it never matches (write {:?} to exclude the repository)",
                &entry[..at]
            ));
        }
    }
}

/// Where the `:tag` or `@digest` of an exclusion entry starts, if it has one. A `:` in the only
/// segment followed by digits is a registry port (`registry:5000`), not a tag.
fn tag_start(entry: &str) -> Option<usize> {
    let last_start = entry.rfind('/').map_or(0, |i| i + 1);
    let last = &entry[last_start..];
    // A registry host alone may be a bracketed IPv6 address, whose colons are no tag.
    let host_end = match last_start {
        0 if last.starts_with('[') => last.find(']').map_or(0, |i| i + 1),
        _ => 0,
    };
    let at = host_end + last[host_end..].find(['@', ':'])?;
    let port = last_start == 0 && last[at..].starts_with(':') && last[at + 1..].bytes().all(|b| b.is_ascii_digit());
    (!port).then_some(last_start + at)
}

fn check_target(loader: &mut Loader<'_>, config: &Config) {
    match config.target_kind {
        TargetKind::Ecr => {
            let id = &config.ecr.account_id;
            if id.is_empty() {
                loader.setting_problem(
                    "ecr.accountID",
                    "required when targetKind is ecr (the default, as in k8s-copycat; for any other \
                     OCI/Docker registry set TARGET_KIND=docker and TARGET_REGISTRY)"
                        .into(),
                );
            } else if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                loader.setting_problem("ecr.accountID", format!("{id:?} is not a 12-digit AWS account id"));
            }
            if config.ecr.region.is_empty() {
                loader.setting_problem("ecr.region", "required when targetKind is ecr".into());
            }
            if !config.ecr.kms_key.is_empty() && config.ecr.encryption_type == "AES256" {
                loader.setting_problem(
                    "ecr.kmsKey",
                    "set, but ecr.encryptionType is AES256; use KMS or KMS_DSSE, or leave the key empty".into(),
                );
            }
        }
        TargetKind::Docker if config.docker.registry.is_empty() => {
            loader.setting_problem("docker.registry", "required when targetKind is docker".into());
        }
        TargetKind::Docker => {}
        TargetKind::PullThrough => {
            if config.pull_through.caches.is_empty() && !loader.problems.iter().any(|p| p.origin.starts_with(CACHES)) {
                loader.problems.push(Problem::new(
                    CACHES.into(),
                    None,
                    "required when targetKind is pullThrough: a mapping of source registry to its cache, \
                     e.g. docker.io: harbor.example.com/dockerhub-proxy"
                        .into(),
                ));
            }
            if !config.path_map.is_empty() {
                loader.warnings.push(
                    "pathMap does not apply with targetKind pullThrough: a cache serves each image under the \
                     source's own repository path"
                        .into(),
                );
            }
        }
    }
}

/// The key of the pull-through cache map.
const CACHES: &str = "pullThrough.caches";

/// `pullThrough.caches`: source registry host (Docker Hub's spellings are one) → cache
/// `host[:port][/path]`. Each bad entry is a problem naming it; so is a registry given twice.
fn pull_through_caches(loader: &mut Loader<'_>) -> std::collections::BTreeMap<String, String> {
    let mut seen: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut twice = Vec::new();
    let caches = file_map(
        loader,
        CACHES,
        "a mapping of source registry host to cache host[:port][/path]",
        |name, value| {
            if name.contains('/') || name.contains("://") {
                return Err(ValueError::invalid(
                    "name a source registry host only (e.g. docker.io or ghcr.io), without a path or scheme",
                ));
            }
            let host = registry_host(&Input::Scalar(name.clone()))?;
            let source = crate::reference::canonical_host(&host);
            let cache = match to_input(value) {
                Ok(input @ Input::Scalar(_)) => registry_host(&input)?.to_ascii_lowercase(),
                _ => return Err(ValueError::invalid("expected a cache host[:port][/path]")),
            };
            if cache.is_empty() {
                return Err(ValueError::invalid(format_args!("no cache given for {source}")));
            }
            if let Some(first) = seen.insert(source.clone(), name.clone()) {
                twice.push((name.clone(), first, source.clone()));
            }
            Ok((source, cache))
        },
    );
    for (name, first, source) in twice {
        loader.problem(
            &Origin::File(format!("{CACHES}.{name}")),
            None,
            format!("{source} is given twice (also as {first:?})"),
        );
    }
    caches
}

fn log_level(input: &Input) -> Result<LogLevel, ValueError> {
    // zap's names, as k8s-copycat accepted them, map to the nearest level.
    let allowed = [
        "trace", "debug", "info", "warn", "warning", "error", "dpanic", "panic", "fatal",
    ];
    Ok(match parse::one_of(input, &allowed)? {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" | "warning" => LogLevel::Warn,
        _ => LogLevel::Error,
    })
}

fn log_level_flag(loader: &mut Loader<'_>, flag: &str) -> Option<LogLevel> {
    let input = Input::Scalar(flag.to_owned());
    log_level(&input)
        .map_err(|e| {
            loader.problems.push(Problem::new(
                "--log-level (flag)".into(),
                Some(input.to_string()),
                e.to_string(),
            ))
        })
        .ok()
}

/// A listener address as the HTTP servers bind it: `host:port`, `:port` (every interface), `[v6]:port`,
/// or `0` / empty to disable the listener.
fn listen_address(input: &Input) -> Result<String, ValueError> {
    let address = parse::text(input)?;
    let trimmed = address.trim();
    if trimmed.is_empty() || trimmed == "0" {
        return Ok(address);
    }
    let expected = "expected host:port or :port (e.g. :8080), or 0 to disable the listener";
    let Some((host, port)) = trimmed.rsplit_once(':') else {
        return Err(ValueError::invalid(format_args!("no port; {expected}")));
    };
    if port.parse::<u16>().is_err() {
        return Err(ValueError::invalid(format_args!("invalid port {port:?}; {expected}")));
    }
    let bracketed = host.starts_with('[') || host.ends_with(']');
    let valid_host = if bracketed {
        host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.contains([':', '/']) && !host.contains(char::is_whitespace)
    };
    if !valid_host {
        return Err(ValueError::invalid(format_args!("invalid host {host:?}; {expected}")));
    }
    Ok(address)
}

/// A listener address given as a flag, which wins over the environment.
fn address_flag(loader: &mut Loader<'_>, flag: &str, value: &str) -> String {
    let input = Input::Scalar(value.to_owned());
    listen_address(&input).unwrap_or_else(|e| {
        loader.problems.push(Problem::new(
            format!("{flag} (flag)"),
            Some(input.to_string()),
            e.to_string(),
        ));
        String::new()
    })
}

fn json_text(input: &Input) -> Result<String, ValueError> {
    let text = parse::text(input)?;
    if !text.is_empty() {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| ValueError::invalid(format_args!("not valid JSON: {e}")))?;
    }
    Ok(text)
}

/// A registry `host[:port]` (for the docker target also followed by `/path`), which image references
/// must read back as that registry: otherwise targets or mirrors would silently name another one
/// (a bare `myregistry` is a Docker Hub namespace).
fn registry_host(input: &Input) -> Result<String, ValueError> {
    let host = parse::text(input)?;
    if host.contains("://") {
        return Err(ValueError::invalid(
            "give the registry host without a scheme, e.g. registry.example.com:5000",
        ));
    }
    let value = host.trim_end_matches('/');
    if value.is_empty() {
        return Ok(String::new());
    }
    let name = value.split('/').next().unwrap_or_default();
    let probe = format!("{value}/probe");
    match crate::reference::ImageRef::parse(&probe) {
        Ok(image) if image.registry() == crate::reference::canonical_host(name) => Ok(value.to_owned()),
        Ok(_) => Err(ValueError::invalid(format_args!(
            "{name:?} is not a registry host: image references would read it as a Docker Hub namespace; \
             give a domain or a port, e.g. {name}.example.com or {name}:5000"
        ))),
        Err(e) => Err(ValueError::invalid(format_args!(
            "not a valid registry host[:port]: {}",
            e.to_string().replace(&probe, value)
        ))),
    }
}

fn patterns(input: &Input) -> Result<Vec<Pattern>, ValueError> {
    parse::list(input)?
        .into_iter()
        .map(|p| {
            regex::Regex::new(&p)
                .map(Pattern)
                .map_err(|e| ValueError::invalid(format_args!("invalid regex {p:?}: {e}")))
        })
        .collect()
}

fn referrers_mode(input: &Input) -> Result<ReferrersMode, ValueError> {
    let mode = parse::one_of(input, &["all", "signatures", "none"])?;
    mode.parse().map_err(ValueError::invalid)
}

fn artifact_types(input: &Input) -> Result<ArtifactTypes, ValueError> {
    ArtifactTypes::parse(&parse::list(input)?).map_err(ValueError::invalid)
}

fn platforms(input: &Input) -> Result<Vec<Platform>, ValueError> {
    let mut out: Vec<Platform> = Vec::new();
    for p in parse::list(input)? {
        let p = Platform::parse(&p).map_err(ValueError::invalid)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn globs(input: &Input) -> Result<Vec<String>, ValueError> {
    let items = parse::list(input)?;
    for item in &items {
        crate::glob::validate(item).map_err(ValueError::invalid)?;
    }
    Ok(items)
}

/// Namespace names (DNS labels), each watched by itself; `*` or an empty list: all (empty).
fn namespace_names(input: &Input) -> Result<Vec<String>, ValueError> {
    let items = parse::list(input)?;
    if items.iter().any(|n| n == "*") {
        return if items.len() == 1 {
            Ok(vec![])
        } else {
            Err(ValueError::invalid("`*` (all namespaces) cannot be listed with names"))
        };
    }
    for name in &items {
        let label = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(ValueError::invalid(format_args!(
                "{name:?} is not a namespace name (lower-case letters, digits and `-`, at most 63; no globs)"
            )));
        }
    }
    Ok(items)
}

/// k8s-copycat's normalisation: lower-case, no scheme, no trailing `/`, `index.docker.io` → `docker.io`.
fn excluded_registries(input: &Input) -> Result<Vec<String>, ValueError> {
    let mut out: Vec<String> = parse::list(input)?
        .into_iter()
        .map(|e| {
            let e = e.to_ascii_lowercase();
            let e = e
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            match e
                .strip_prefix("index.docker.io")
                .or_else(|| e.strip_prefix("registry-1.docker.io"))
            {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    format!("docker.io{rest}")
                }
                _ => e.to_owned(),
            }
        })
        .filter(|e| !e.is_empty())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn registry_credentials(loader: &mut Loader<'_>) -> Vec<RegistryCredential> {
    let mut out = Vec::new();
    for entry in loader.entries("registryCredentials") {
        let registry = loader
            .field(&entry, "registry", parse::text)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if registry.is_empty() {
            loader.problem(&Origin::File(format!("{}.registry", entry.0)), None, "required".into());
            continue;
        }
        let aliases = loader.field(&entry, "registryAliases", parse::list).unwrap_or_default();
        let value = |loader: &mut Loader<'_>, name: &str| {
            let env_name = loader
                .field(&entry, &format!("{name}Env"), parse::text)
                .unwrap_or_default();
            let from_env = if env_name.is_empty() {
                None
            } else {
                loader.env(&env_name)
            };
            from_env
                .or_else(|| loader.field(&entry, name, parse::text))
                .unwrap_or_default()
        };
        let username = value(loader, "username");
        let password = Secret::new(value(loader, "password"));
        let token = Secret::new(value(loader, "token"));
        if username.is_empty() && password.is_empty() && token.is_empty() {
            loader.problem(
                &Origin::File(entry.0.clone()),
                None,
                format!(
                    "no credentials for {registry}: username/password or token (or their *Env variables) are all empty"
                ),
            );
            continue;
        }
        out.push(RegistryCredential {
            registry,
            registry_aliases: aliases.into_iter().map(|a| a.to_ascii_lowercase()).collect(),
            username,
            password,
            token,
        });
    }
    out
}

fn path_map(loader: &mut Loader<'_>) -> Vec<PathMapRule> {
    let mut out = Vec::new();
    for entry in loader.entries("pathMap") {
        let from = loader.field(&entry, "from", parse::text).unwrap_or_default();
        let to = loader.field(&entry, "to", parse::text).unwrap_or_default();
        let regex = loader.field(&entry, "regex", parse::boolean).unwrap_or(false);
        if from.is_empty() {
            loader.problem(&Origin::File(format!("{}.from", entry.0)), None, "required".into());
            continue;
        }
        if regex && let Err(e) = regex::Regex::new(&from) {
            loader.problem(
                &Origin::File(format!("{}.from", entry.0)),
                None,
                format!("invalid regex: {e}"),
            );
            continue;
        }
        out.push(PathMapRule { from, to, regex });
    }
    out
}

/// `onTheFly.rules`: each `mirror` and `source` a registry `host[:port][/path]` (host canonical, no
/// trailing `/`); a mirror prefix given twice is refused, since which source it means would be a guess.
fn on_the_fly_rules(loader: &mut Loader<'_>) -> Vec<OnTheFlyRule> {
    let mut out: Vec<(String, OnTheFlyRule)> = Vec::new();
    for entry in loader.entries("onTheFly.rules") {
        let prefix = |loader: &mut Loader<'_>, name: &str| {
            let value = loader.field(&entry, name, registry_host).unwrap_or_default();
            if entry.1.get(name).is_none_or(Value::is_null) {
                loader.problem(&Origin::File(format!("{}.{name}", entry.0)), None, "required".into());
            }
            let (host, path) = value.split_once('/').unwrap_or((&value, ""));
            let host = crate::reference::canonical_host(host);
            if path.is_empty() {
                host
            } else {
                format!("{host}/{path}")
            }
        };
        let (mirror, source) = (prefix(loader, "mirror"), prefix(loader, "source"));
        if mirror.is_empty() || source.is_empty() {
            continue;
        }
        if let Some((first, _)) = out.iter().find(|(_, r)| r.mirror == mirror) {
            loader.problem(
                &Origin::File(format!("{}.mirror", entry.0)),
                Some(&Input::Scalar(mirror.clone())),
                format!("given twice (also {first}.mirror): which source it means would be a guess"),
            );
            continue;
        }
        out.push((entry.0, OnTheFlyRule { mirror, source }));
    }
    out.into_iter().map(|(_, rule)| rule).collect()
}

/// With `fluxImageRepositories.enabled`: copies are named on a target registry, which pull-through
/// caches are not (they are read through, never written to).
fn check_flux(loader: &mut Loader<'_>, config: &Config) {
    if config.flux_image_repositories.enabled && config.target_kind == TargetKind::PullThrough {
        loader.setting_problem(
            "fluxImageRepositories.enabled",
            "needs a target registry to copy to: targetKind pullThrough only reads images through caches".into(),
        );
    }
}

/// With `onTheFly.enabled`: Pods are watched (their statuses say which pulls fail), there is a rule,
/// and every rule's mirror prefix is on the target registry (copycat writes nowhere else).
fn check_on_the_fly(loader: &mut Loader<'_>, config: &Config) {
    let on_the_fly = &config.on_the_fly;
    if !on_the_fly.enabled {
        return;
    }
    if !config.watch_resources.contains(&crate::workload::Kind::Pod.resource()) {
        loader.setting_problem(
            "onTheFly.enabled",
            "needs pods in watchResources: failed pulls are seen in Pod statuses".into(),
        );
    }
    if on_the_fly.rules.is_empty() {
        loader.setting_problem(
            "onTheFly.rules",
            "at least one rule (mirror prefix → source) is required when onTheFly.enabled is true".into(),
        );
    }
    let target = match config.target_kind {
        TargetKind::Docker => Some(
            config
                .docker
                .registry
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        ),
        TargetKind::Ecr if !config.ecr.registry_host.is_empty() => Some(config.ecr.registry_host.to_ascii_lowercase()),
        TargetKind::Ecr => None,
        TargetKind::PullThrough => {
            loader.setting_problem(
                "onTheFly.enabled",
                "copy on the fly writes to the target registry, and a pull-through cache (targetKind pullThrough) cannot be written to".into(),
            );
            return;
        }
    };
    for (i, rule) in on_the_fly.rules.iter().enumerate() {
        let host = rule.mirror.split('/').next().unwrap_or_default();
        let on_target = match &target {
            Some(target) => host == target,
            None => host.starts_with(&format!("{}.dkr.ecr", config.ecr.account_id)),
        };
        if !on_target {
            loader.problem(
                &Origin::File(format!("onTheFly.rules[{i}].mirror")),
                Some(&Input::Scalar(rule.mirror.clone())),
                format!(
                    "not on the target registry ({}): copycat copies only to the registry it mirrors into",
                    target.as_deref().unwrap_or("the ECR registry of ecr.accountID")
                ),
            );
        }
    }
}

fn registry_settings(loader: &mut Loader<'_>) -> Vec<RegistrySettings> {
    let mut out: Vec<RegistrySettings> = Vec::new();
    for entry in loader.entries("registries") {
        let host = loader
            .field(&entry, "host", registry_host)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host.is_empty() {
            loader.problem(&Origin::File(format!("{}.host", entry.0)), None, "required".into());
            continue;
        }
        if out.iter().any(|r| r.host == host) {
            loader.problem(
                &Origin::File(format!("{}.host", entry.0)),
                None,
                format!("{host} is listed twice"),
            );
            continue;
        }
        let insecure = loader.field(&entry, "insecure", parse::boolean).unwrap_or(false);
        let ca_file = loader.field(&entry, "caFile", parse::text).unwrap_or_default();
        out.push(RegistrySettings {
            host,
            insecure,
            ca_file,
        });
    }
    out
}

/// A mapping in the file at `id` (`expected` says what it should hold); `entry` turns each name and
/// value into an entry, and its problems name `id.<name>`.
fn file_map<V>(
    loader: &mut Loader<'_>,
    id: &'static str,
    expected: &str,
    mut entry: impl FnMut(String, &Value) -> Result<(String, V), ValueError>,
) -> std::collections::BTreeMap<String, V> {
    loader.used.push(id);
    let mut out = std::collections::BTreeMap::new();
    let Some(value) = loader.file_value(id).cloned() else {
        return out;
    };
    let Value::Object(map) = value else {
        loader.problem(&Origin::File(id.into()), None, format!("expected {expected}"));
        return out;
    };
    for (name, value) in map {
        let origin = Origin::File(format!("{id}.{name}"));
        match entry(name, &value) {
            Ok((key, v)) => {
                out.insert(key, v);
            }
            Err(e) => loader.problem(&origin, None, e.to_string()),
        }
    }
    out
}

/// A mapping of names to single values (`ecr.tags`).
fn string_map(loader: &mut Loader<'_>, id: &'static str) -> std::collections::BTreeMap<String, String> {
    file_map(
        loader,
        id,
        "a mapping of names to values",
        |name, value| match to_input(value) {
            Ok(Input::Scalar(text)) => Ok((name, text)),
            _ => Err(ValueError::NotSingle),
        },
    )
}

fn registry_mirrors(loader: &mut Loader<'_>) -> std::collections::BTreeMap<String, Vec<String>> {
    let expected = "a mapping of registry host to a list of mirror hosts";
    file_map(loader, "registryMirrors", expected, |host, mirrors| {
        let list = to_input(mirrors).and_then(|i| parse::list(&i))?;
        let mirrors = list
            .iter()
            .map(|m| registry_host(&Input::Scalar(m.clone())).map(|h| h.to_ascii_lowercase()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((crate::reference::canonical_host(&host), mirrors))
    })
}

fn digest_tag_template(input: &Input) -> Result<Option<String>, ValueError> {
    crate::naming::digest_tag_template(&parse::text(input)?).map_err(|e| match e {
        crate::naming::NamingError::UnknownPlaceholder { .. } => ValueError::invalid(format_args!(
            "{e}; placeholders: ${}",
            crate::naming::DIGEST_TAG_PLACEHOLDERS.join(", $")
        )),
        e => ValueError::invalid(e),
    })
}

fn prefix_template(input: &Input) -> Result<String, ValueError> {
    let template = parse::text(input)?;
    let max = crate::naming::MAX_REPOSITORY_LEN;
    if template.chars().count() > max {
        return Err(ValueError::invalid(format_args!(
            "{} characters: registries take repository names of at most {max}, prefix included",
            template.chars().count()
        )));
    }
    crate::naming::expand_prefix(
        &template,
        &crate::naming::NameContext::default(),
        "registry.example.com",
    )
    .map_err(|e| {
        ValueError::invalid(format_args!(
            "{e}; placeholders: ${}",
            crate::naming::PREFIX_PLACEHOLDERS.join(", $")
        ))
    })?;
    Ok(template)
}
