use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::*;

fn load_with(yaml: &str, env: &[(&str, &str)], overrides: Overrides, purpose: Purpose) -> Result<Loaded, ConfigErrors> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let overrides = Overrides {
        config: Some(file.path().to_owned()),
        ..overrides
    };
    load(&|k| env.get(k).cloned(), &overrides, purpose)
}

fn ok(yaml: &str, env: &[(&str, &str)]) -> Config {
    match load_with(yaml, env, Overrides::default(), Purpose::OneShot) {
        Ok(l) => l.config,
        Err(e) => panic!("expected success, got {e}"),
    }
}

fn problems(yaml: &str, env: &[(&str, &str)], purpose: Purpose) -> Vec<String> {
    match load_with(yaml, env, Overrides::default(), purpose) {
        Ok(_) => panic!("expected problems for {yaml:?} {env:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const DOCKER: &str = "targetKind: docker\ndocker:\n  registry: registry.example.com\n";

#[test]
fn defaults_match_k8s_copycat() {
    let c = ok("", &[]);
    assert_eq!(c.target_kind, TargetKind::Ecr);
    assert_eq!(c.digest_pull_ignored_tags, vec!["latest"]);
    assert_eq!(c.include_namespaces, vec!["*"]);
    assert_eq!(c.watch_resources, settings::RESOURCE_KINDS.to_vec());
    assert_eq!(c.request_timeout, Some(Duration::from_secs(300)));
    assert_eq!(c.registry_retry_attempts, 3);
    assert_eq!(c.registry_retry_backoff, Duration::from_secs(10));
    assert_eq!(c.failure_cooldown, Some(Duration::from_secs(3600)));
    assert_eq!(c.force_reconcile_interval, None);
    assert_eq!(c.max_concurrent_reconciles, 2);
    assert!(c.ecr.create_repo && c.allow_different_digest_repush && c.runtime.leader_elect && c.emit_events);
    assert!(!c.dry_run && !c.dry_pull && !c.digest_pull && !c.docker.insecure);
    assert_eq!(
        (c.runtime.metrics_addr.as_str(), c.runtime.health_addr.as_str()),
        (":8080", ":8081")
    );
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn only_the_default_config_path_may_be_missing() {
    let missing = "/nonexistent/copycat.yaml";
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    // (--config, CONFIG_PATH, the problem's origin: None = loads with defaults)
    let cases: [Case; 5] = [
        (Some(missing), None, Some("--config")),
        (None, Some(missing), Some("CONFIG_PATH (env)")),
        (Some(missing), Some(super::load::NO_FILE), Some("--config")),
        (Some(super::load::NO_FILE), None, None),
        (None, Some(super::load::NO_FILE), None),
    ];
    for (flag, var, problem) in cases {
        let overrides = Overrides {
            config: flag.map(Into::into),
            ..Default::default()
        };
        let env = |k: &str| (k == "CONFIG_PATH").then(|| var.map(str::to_owned)).flatten();
        match (load(&env, &overrides, Purpose::OneShot), problem) {
            (Ok(_), None) => {}
            (Err(errors), Some(origin)) => {
                let [p] = &errors.0[..] else { panic!("{errors}") };
                assert_eq!((p.origin.as_str(), p.value.as_deref()), (origin, Some(missing)));
                assert!(p.message.contains("does not exist"), "{p}");
            }
            (got, _) => panic!("{flag:?} {var:?}: {:?}", got.map(|l| l.config.runtime.config_path)),
        }
    }
    // The built-in default path (/config/config.yaml, where the manifest mounts the ConfigMap) may
    // be absent: defaults are used.
    if !std::path::Path::new("/config/config.yaml").exists() {
        let loaded = load(&|_| None, &Overrides::default(), Purpose::OneShot).unwrap();
        assert!(!loaded.config.runtime.config_found);
    }
}

#[test]
fn unreadable_or_invalid_file_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        config: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let err = load(&|_| None, &overrides, Purpose::OneShot).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot use the config file: not a regular file but a directory"),
        "{err}"
    );
    let p = problems("dryRun: [unclosed", &[], Purpose::OneShot);
    assert!(p[0].contains("invalid YAML"), "{p:?}");
    let p = problems("- a\n- b\n", &[], Purpose::OneShot);
    assert!(p[0].contains("must be a YAML mapping"), "{p:?}");
}

#[test]
fn bad_values_are_reported_by_name() {
    // (yaml, env, text every reported problem set must contain)
    let cases: &[Case<'_>] = &[
        (
            "includeNamespace: [a]",
            &[],
            &[
                "includeNamespace (",
                "unknown key",
                "did you mean \"includeNamespaces\"",
            ],
        ),
        (
            "",
            &[("WATCH_RESOURCES", "deploymentz")],
            &["WATCH_RESOURCES (env)", "deploymentz", "did you mean \"deployments\""],
        ),
        (
            "watchResources: [pods, deploymentz]",
            &[],
            &["watchResources (", "deploymentz"],
        ),
        (
            "ecr:\n  acountID: '1'\n",
            &[],
            &["ecr.acountID", "did you mean \"ecr.accountID\""],
        ),
        ("dryRun: maybe", &[], &["dryRun (", "\"maybe\"", "expected a boolean"]),
        ("", &[("DRY_RUN", "maybe")], &["DRY_RUN (env)", "expected a boolean"]),
        (
            "",
            &[("TARGET_INSECURE", "sure")],
            &["TARGET_INSECURE (env)", "expected a boolean"],
        ),
        ("targetKind: gcr", &[], &["targetKind (", "allowed values: ecr, docker"]),
        (
            "",
            &[("TARGET_REGISTRY", "myregistry")],
            &["TARGET_REGISTRY (env)", "is not a registry host", "myregistry:5000"],
        ),
        (
            "docker: {registry: 'r.example.com:99999'}",
            &[],
            &["docker.registry (", "invalid port \"99999\""],
        ),
        (
            "registryMirrors: {docker.io: ['mirror .gcr.io']}",
            &[],
            &["registryMirrors.docker.io", "mirror .gcr.io"],
        ),
        ("", &[("METRICS_ADDR", "8080")], &["METRICS_ADDR (env)", "no port"]),
        (
            "",
            &[("HEALTH_ADDR", "[::1:80")],
            &["HEALTH_ADDR (env)", "invalid host"],
        ),
        (
            "registryRetryAttempts: 0",
            &[],
            &["registryRetryAttempts", "greater than 0"],
        ),
        (
            "registryRetryBackoff: -1",
            &[],
            &["registryRetryBackoff", "must not be negative"],
        ),
        ("requestTimeout: soon", &[], &["requestTimeout", "duration like 90s"]),
        ("verifyInterval: -1h", &[], &["verifyInterval", "must not be negative"]),
        ("referrers: some", &[], &["referrers", "some"]),
        ("", &[("REFERRERS", "yes")], &["REFERRERS", "yes"]),
        (
            "referrerArtifactTypes: [spdx]",
            &[],
            &["referrerArtifactTypes", "no media type"],
        ),
        ("referrerDepth: 0", &[], &["referrerDepth", "greater than 0"]),
        ("referrersInterval: 0", &[], &["referrersInterval", "more than 0"]),
        (
            "referrersInterval: hourly",
            &[],
            &["referrersInterval", "duration like 90s"],
        ),
        (
            "restoreDrillInterval: -5m",
            &[],
            &["restoreDrillInterval", "must not be negative"],
        ),
        ("restoreDrillImages: 0", &[], &["restoreDrillImages", "greater than 0"]),
        (
            "",
            &[("RESTORE_DRILL_IMAGES", "all")],
            &["RESTORE_DRILL_IMAGES", "whole number"],
        ),
        (
            "",
            &[("VERIFY_INTERVAL", "daily")],
            &["VERIFY_INTERVAL", "duration like 90s"],
        ),
        (
            "maxConcurrentReconciles: two",
            &[],
            &["maxConcurrentReconciles", "whole number"],
        ),
        (
            "ignoreMissingPlatforms: ['(']",
            &[],
            &["ignoreMissingPlatforms", "invalid regex"],
        ),
        (
            "mirrorPlatforms: ['linux/']",
            &[],
            &["mirrorPlatforms", "invalid platform"],
        ),
        (
            "includeNamespaces: ['team-[a']",
            &[],
            &["includeNamespaces", "unclosed '['"],
        ),
        (
            "ecr:\n  lifecyclePolicy: '{nope'\n",
            &[],
            &["ecr.lifecyclePolicy", "not valid JSON"],
        ),
        (
            "docker:\n  registry: https://r.example.com\n",
            &[],
            &["docker.registry", "without a scheme"],
        ),
        (
            "pathMap:\n  - {from: '(', to: x, regex: true}\n",
            &[],
            &["pathMap[0].from", "invalid regex"],
        ),
        ("pathMap:\n  - {to: x}\n", &[], &["pathMap[0].from", "required"]),
        (
            "pathMap:\n  - {from: a, too: x}\n",
            &[],
            &["pathMap[0].too", "did you mean \"pathMap[0].to\""],
        ),
        (
            "registryCredentials:\n  - {username: u, password: p}\n",
            &[],
            &["registryCredentials[0].registry", "required"],
        ),
        (
            "registryCredentials:\n  - {registry: ghcr.io, usernameEnv: NOPE}\n",
            &[],
            &["registryCredentials[0]", "no credentials for ghcr.io"],
        ),
        (
            "skipNames:\n  deployment: [x]\n",
            &[],
            &["skipNames.deployment", "did you mean \"skipNames.deployments\""],
        ),
        ("dryRun: {a: 1}", &[], &["dryRun", "got a mapping"]),
        (
            "requestTimeout: 5\nrequestTimeoutSeconds: 6\n",
            &[],
            &["requestTimeoutSeconds", "given twice"],
        ),
    ];
    assert_reported(cases);
}

type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

/// Each case's YAML and env must fail, with every listed text somewhere in the problems.
fn assert_reported(cases: &[Case<'_>]) {
    for (yaml, env, wanted) in cases {
        let all = problems(yaml, env, Purpose::OneShot).join("\n");
        for w in *wanted {
            assert!(all.contains(w), "for {yaml:?} {env:?}: expected {w:?} in:\n{all}");
        }
    }
}

#[rustfmt::skip]
#[test]
fn bad_transport_settings_are_reported_by_name() {
    assert_reported(&[
        ("registries:\n  - {insecure: true}\n", &[], &["registries[0].host", "required"]),
        ("registries:\n  - {host: a.io}\n  - {host: A.io}\n", &[], &["registries[1].host", "listed twice"]),
        ("registries:\n  - {host: a.io, caFil: x}\n", &[], &["registries[0].caFil", "did you mean \"registries[0].caFile\""]),
        ("registryMirrors: [a]", &[], &["registryMirrors", "expected a mapping"]),
        ("registryMirrors:\n  docker.io: [https://m.example.com]\n", &[], &["registryMirrors.docker.io", "without a scheme"]),
        ("blobConcurrency: 0", &[], &["blobConcurrency", "greater than 0"]),
        ("digestTagTemplate: 'v-$hexx'", &[], &["digestTagTemplate", "unknown placeholder $hexx"]),
        ("docker:\n  repoPrefix: mirror/$namespaces\n", &[], &["docker.repoPrefix", "unknown placeholder $namespaces", "$container_name"]),
        ("", &[("ECR_REPO_PREFIX", "$cluster/x")], &["ECR_REPO_PREFIX (env)", "$cluster"]),
        ("", &[("DIGEST_TAG_TEMPLATE", "bad/$short")], &["DIGEST_TAG_TEMPLATE (env)", "invalid tag"]),
        ("digestTagTemplate: 'sha256-$hex'", &[], &["digestTagTemplate", "\"sha256-$hex\"", "reserved by the OCI referrers tag schema"]),
        ("", &[("DIGEST_TAG_TEMPLATE", "$algorithm-$short")], &["DIGEST_TAG_TEMPLATE (env)", "reserved"]),
        ("digestTagTemplate: backup", &[], &["digestTagTemplate", "gives every digest the same tag"]),
    ]);
}

/// `digestTagTemplate`: an anchor tag by default, `none` (file or env) turns it off, an empty value is
/// the default, and `check-config` prints what is in effect.
#[test]
fn digest_tag_template_defaults_to_an_anchor_and_can_be_turned_off() {
    let default = Some(crate::naming::DEFAULT_DIGEST_TAG_TEMPLATE);
    // (file, env, the template in effect, what check-config prints)
    type TemplateCase<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: [TemplateCase<'_>; 7] = [
        ("", &[], default, "digestTagTemplate: copycat-$hex\n"),
        (
            "digestTagTemplate: ''\n",
            &[],
            default,
            "digestTagTemplate: copycat-$hex\n",
        ),
        ("digestTagTemplate: none\n", &[], None, "digestTagTemplate: none\n"),
        (
            "",
            &[("DIGEST_TAG_TEMPLATE", "None")],
            None,
            "digestTagTemplate: none\n",
        ),
        (
            "digestTagTemplate: none\n",
            &[("DIGEST_TAG_TEMPLATE", "pin-$short")],
            Some("pin-$short"),
            "digestTagTemplate: pin-$short\n",
        ),
        (
            "digestTagTemplate: none\n",
            &[("DIGEST_TAG_TEMPLATE", "")],
            None,
            "digestTagTemplate: none\n",
        ),
        (
            "digestTagTemplate: $algorithm.$hex\n",
            &[],
            Some("$algorithm.$hex"),
            "digestTagTemplate: $algorithm.$hex\n",
        ),
    ];
    for (yaml, env, want, printed) in cases {
        let loaded = load_with(yaml, env, Overrides::default(), Purpose::OneShot).unwrap();
        let c = loaded.config;
        assert_eq!(c.digest_tag_template.as_deref(), want, "{yaml:?} {env:?}");
        let shown = c.to_yaml();
        assert!(shown.contains(printed), "{yaml:?} {env:?}: {printed:?} not in\n{shown}");
        // An empty value in the file once meant "untagged": say what it means now.
        let warned = loaded
            .warnings
            .iter()
            .any(|w| w.contains("digestTagTemplate \"\" means the default"));
        assert_eq!(
            warned,
            yaml == "digestTagTemplate: ''\n",
            "{yaml:?} {env:?}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn transport_settings() {
    let c = ok(
        "registries:\n  - {host: Reg.Example.com:5000, insecure: true}\n  - {host: ghcr.io, caFile: /ca.pem}\nregistryMirrors:\n  index.docker.io: [mirror.gcr.io, Mirror2.example.com]\nalwaysOverwriteTags: []\n",
        &[("IMAGE_DEADLINE", "0"), ("BLOB_CONCURRENCY", "8")],
    );
    assert_eq!(
        (c.registries[0].host.as_str(), c.registries[0].insecure),
        ("reg.example.com:5000", true)
    );
    assert_eq!(c.registries[1].ca_file, "/ca.pem");
    assert_eq!(
        c.registry_mirrors["docker.io"],
        vec!["mirror.gcr.io", "mirror2.example.com"]
    );
    assert!(c.always_overwrite_tags.is_empty());
    assert_eq!((c.image_deadline, c.blob_concurrency), (None, 8));
    assert_eq!(ok("", &[]).always_overwrite_tags, vec!["latest"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "dryRun: maybe\nregistryRetryAttempts: 0\nincludeNamespace: [x]\n",
        &[("WATCH_RESOURCES", "nope")],
        Purpose::Daemon,
    );
    // three bad values, one unknown key, and the ECR target's two required settings
    assert_eq!(p.len(), 6, "{p:#?}");
}

#[test]
fn daemon_needs_a_target() {
    let p = problems("", &[], Purpose::Daemon).join("\n");
    assert!(
        p.contains("ecr.accountID / ECR_ACCOUNT_ID: required when targetKind is ecr"),
        "{p}"
    );
    assert!(p.contains("ecr.region / AWS_REGION: required"), "{p}");
    let p = problems("targetKind: docker", &[], Purpose::Daemon).join("\n");
    assert!(
        p.contains("docker.registry / TARGET_REGISTRY: required when targetKind is docker"),
        "{p}"
    );
    let p = problems(
        "",
        &[("ECR_ACCOUNT_ID", "12345"), ("AWS_REGION", "eu-west-1")],
        Purpose::Daemon,
    )
    .join("\n");
    assert!(
        p.contains("ECR_ACCOUNT_ID (env): \"12345\" is not a 12-digit AWS account id"),
        "{p}"
    );
    assert!(load_with(DOCKER, &[], Overrides::default(), Purpose::Daemon).is_ok());
}

#[test]
fn fixed_k8s_copycat_config_bugs() {
    // The documented keys are honoured (k8s-copycat ignored them), and so are the Go field names.
    let c = ok("requestTimeout: 120\nregistryRetryBackoff: 2\n", &[]);
    assert_eq!(
        (c.request_timeout, c.registry_retry_backoff),
        (Some(Duration::from_secs(120)), Duration::from_secs(2))
    );
    let c = ok("requestTimeoutSeconds: 7\nregistryRetryBackoffSeconds: 1\n", &[]);
    assert_eq!(
        (c.request_timeout, c.registry_retry_backoff),
        (Some(Duration::from_secs(7)), Duration::from_secs(1))
    );
    // Case-insensitive TARGET_KIND, same bool syntax in file and env.
    assert_eq!(ok("", &[("TARGET_KIND", "DOCKER")]).target_kind, TargetKind::Docker);
    assert_eq!(ok("targetKind: Docker", &[]).target_kind, TargetKind::Docker);
    assert!(ok("dryRun: 'Yes'", &[]).dry_run && ok("", &[("DRY_RUN", "Yes")]).dry_run);
    assert!(ok("dryPull: on", &[]).dry_pull && ok("", &[("DRY_PULL", "1")]).dry_pull);
    assert!(!ok("emitEvents: false", &[]).emit_events && !ok("", &[("EMIT_EVENTS", "false")]).emit_events);
    // An explicit empty list really means none.
    assert!(ok("digestPullIgnoredTags: []", &[]).digest_pull_ignored_tags.is_empty());
    assert_eq!(
        ok("digestPullIgnoredTags: [Latest, stable]", &[]).digest_pull_ignored_tags,
        vec!["latest", "stable"]
    );
}

#[test]
fn durations_accept_integers_and_humantime() {
    let cases = [
        ("failureCooldownMinutes: 5", Some(300)),
        ("failureCooldownMinutes: 90s", Some(90)),
        ("failureCooldownMinutes: 0", None),
        ("failureCooldownMinutes: -3", None),
        ("failureCooldownMinutes: 1h", Some(3600)),
    ];
    for (yaml, want) in cases {
        assert_eq!(ok(yaml, &[]).failure_cooldown, want.map(Duration::from_secs), "{yaml}");
    }
    assert_eq!(
        ok("forceReconcileMinutes: 30", &[]).force_reconcile_interval,
        Some(Duration::from_secs(1800))
    );
    assert_eq!(ok("requestTimeout: 0", &[]).request_timeout, None);
    // (yaml, env, verifyInterval in seconds)
    type Interval<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<u64>);
    let intervals: [Interval; 4] = [
        ("", &[], Some(86_400)),
        ("verifyInterval: 0", &[], None),
        ("verifyInterval: 90", &[], Some(90)),
        ("verifyInterval: 1h", &[("VERIFY_INTERVAL", "5m")], Some(300)),
    ];
    for (yaml, env, want) in intervals {
        assert_eq!(
            ok(yaml, env).verify_interval,
            want.map(Duration::from_secs),
            "{yaml} {env:?}"
        );
    }
    // (yaml, env, restoreDrillInterval in seconds, restoreDrillImages)
    type Drills<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<u64>, u32);
    let drills: [Drills; 4] = [
        ("", &[], Some(86_400), 2),
        ("restoreDrillInterval: 0\nrestoreDrillImages: 5", &[], None, 5),
        ("restoreDrillInterval: 6h", &[], Some(21_600), 2),
        (
            "restoreDrillInterval: 6h",
            &[("RESTORE_DRILL_INTERVAL", "90"), ("RESTORE_DRILL_IMAGES", "1")],
            Some(90),
            1,
        ),
    ];
    for (yaml, env, interval, images) in drills {
        let c = ok(yaml, env);
        assert_eq!(
            (c.restore_drill_interval, c.restore_drill_images),
            (interval.map(Duration::from_secs), images),
            "{yaml} {env:?}"
        );
    }
    assert_eq!(
        ok("", &[("REGISTRY_REQUEST_TIMEOUT", "2m")]).request_timeout,
        Some(Duration::from_secs(120))
    );
}

#[test]
fn precedence_flags_over_env_over_file() {
    let c = ok(
        "skipNamespaces: [a]\nmaxConcurrentReconciles: 4\n",
        &[("MAX_CONCURRENT_RECONCILES", "8"), ("SKIP_NAMESPACES", "  ")],
    );
    assert_eq!(c.max_concurrent_reconciles, 8);
    assert_eq!(c.skip_namespaces, vec!["a"], "a blank env var falls back to the file");
    let overrides = Overrides {
        metrics_addr: Some("127.0.0.1:9000".into()),
        leader_elect: Some(false),
        dry_run: Some(true),
        dry_pull: Some(false),
        log_level: Some("debug".into()),
        ..Default::default()
    };
    let c = load_with(
        "dryRun: false\ndryPull: true\nlogLevel: error\n",
        &[("METRICS_ADDR", ":1"), ("LEADER_ELECT", "true")],
        overrides,
        Purpose::OneShot,
    )
    .unwrap()
    .config;
    assert_eq!(c.runtime.metrics_addr, "127.0.0.1:9000");
    assert!(
        !c.runtime.leader_elect && c.dry_run && !c.dry_pull,
        "--dry-pull=false wins over the file"
    );
    assert_eq!(c.log_level, LogLevel::Debug);
    let bad = Overrides {
        log_level: Some("loud".into()),
        ..Default::default()
    };
    let err = load_with("", &[], bad, Purpose::OneShot).unwrap_err();
    assert!(err.to_string().contains("--log-level (flag) = \"loud\""), "{err}");
}

#[test]
fn lists_and_normalisation() {
    let c = ok(
        "excludeRegistries: ['https://Index.Docker.io/', 'registry.gitlab.com/group/', 'docker.io']\nskipNames:\n  pods: ['a,b', c]\n",
        &[("MIRROR_PLATFORMS", "arm64, linux/arm/v7, ARM64")],
    );
    assert_eq!(c.exclude_registries, vec!["docker.io", "registry.gitlab.com/group"]);
    assert_eq!(c.skip_names.pods, vec!["a", "b", "c"]);
    let platforms: Vec<String> = c.mirror_platforms.iter().map(ToString::to_string).collect();
    assert_eq!(platforms, vec!["linux/arm64", "linux/arm/v7"]);
    assert_eq!(
        ok("", &[("WATCH_RESOURCES", "Pods, JOBS,pods")]).watch_resources,
        vec!["pods", "jobs"]
    );
}

#[test]
fn empty_watch_and_namespace_lists_mean_everything_as_in_k8s_copycat() {
    // The Helm chart renders `watchResources: []` and `includeNamespaces: []` by default.
    for (yaml, env) in [
        ("watchResources: []\nincludeNamespaces: []\n", vec![]),
        ("watchResources:\nincludeNamespaces:\n", vec![]),
        ("watchResources: ['']\n", vec![("INCLUDE_NAMESPACES", " , ")]),
        ("", vec![("WATCH_RESOURCES", ","), ("INCLUDE_NAMESPACES", ",")]),
    ] {
        let c = ok(yaml, &env);
        assert_eq!(c.watch_resources, settings::RESOURCE_KINDS.to_vec(), "{yaml:?} {env:?}");
        assert_eq!(c.include_namespaces, vec!["*"], "{yaml:?} {env:?}");
    }
    // check-config prints the effective lists.
    let printed = ok("watchResources: []\nincludeNamespaces: []\n", &[]).to_yaml();
    for kind in settings::RESOURCE_KINDS {
        assert!(printed.contains(&format!("- {kind}\n")), "{printed}");
    }
    assert!(
        printed.contains("includeNamespaces:\n- '*'\n") || printed.contains("includeNamespaces:\n- \"*\"\n"),
        "{printed}"
    );
}

#[test]
fn a_daemon_with_every_namespace_skipped_is_refused() {
    let p = problems(
        &format!("{DOCKER}includeNamespaces: [a, b]\nskipNamespaces: [b, a, c]\n"),
        &[],
        Purpose::Daemon,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("includeNamespaces (")
            && p[0].contains("skipNamespaces")
            && p[0].contains("nothing would be watched"),
        "{p:?}"
    );
    // A glob may match namespaces that appear later; one name left is enough.
    ok(
        &format!("{DOCKER}includeNamespaces: [a, 'team-*']\nskipNamespaces: [a]\n"),
        &[],
    );
    ok(
        &format!("{DOCKER}includeNamespaces: [a, b]\nskipNamespaces: [a]\n"),
        &[],
    );
}

#[test]
fn excluded_registries_with_a_tag_are_warned_about() {
    let cases: [(&str, Option<&str>); 9] = [
        ("docker.io/library/nginx:1.25", Some("docker.io/library/nginx")),
        ("registry:5000/app:1", Some("registry:5000/app")),
        ("ghcr.io/org/app@sha256:abc", Some("ghcr.io/org/app")),
        ("nginx:latest", Some("nginx")),
        ("registry:5000", None),
        ("registry:5000/team", None),
        ("docker.io", None),
        ("[::1]:5000/app", None),
        ("[::1]:5000", None),
    ];
    for (entry, want) in cases {
        let yaml = format!("excludeRegistries: ['{entry}']\n");
        let loaded = load_with(&yaml, &[], Overrides::default(), Purpose::OneShot).unwrap();
        match want {
            Some(repo) => {
                assert_eq!(loaded.warnings.len(), 1, "{entry}: {:?}", loaded.warnings);
                let w = &loaded.warnings[0];
                assert!(
                    w.contains("never matches") && w.contains(&format!("{repo:?}")),
                    "{entry}: {w}"
                );
            }
            None => assert!(loaded.warnings.is_empty(), "{entry}: {:?}", loaded.warnings),
        }
    }
}

#[test]
fn key_spelling_is_forgiven_only_in_case() {
    let loaded = load_with(
        "ECR:\n  accountId: '123456789012'\n",
        &[],
        Overrides::default(),
        Purpose::OneShot,
    )
    .unwrap();
    assert_eq!(loaded.config.ecr.account_id, "123456789012");
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
}

#[test]
fn secret_values_are_masked_in_every_problem() {
    let yaml = "registryCredentials:
  - registry: ghcr.io
    username: bot
    password: [hunter2-in-a-list]
  - registry: quay.io
    token: {nested: hunter3-in-a-mapping}
  - registry: r.example.com
    token: [a, hunter4]
    username: [not-secret-shown]
";
    let p = problems(yaml, &[("ADMIN_TOKEN", "ok")], Purpose::OneShot).join("\n");
    for secret in ["hunter2", "hunter3", "hunter4"] {
        assert!(!p.contains(secret), "{secret} printed: {p}");
    }
    assert!(
        p.contains("registryCredentials[0].password (") && p.contains(&format!("= {}", crate::secret::MASK)),
        "{p}"
    );
    assert!(p.contains("registryCredentials[1].token ("), "{p}");
    assert!(p.contains("not-secret-shown"), "other values are still quoted: {p}");
    assert!(settings::is_secret("registryCredentials[12].password"));
    assert!(settings::is_secret("TARGET_PASSWORD") && settings::is_secret("ADMIN_TOKEN"));
    assert!(!settings::is_secret("registryCredentials[0].username") && !settings::is_secret("TARGET_USERNAME"));
}

#[test]
fn yaml_syntax_errors_show_where_with_secrets_masked() {
    let p = problems(
        "targetKind: docker\nregistryCredentials:\n  - registry: r\n    password: \"hunter2\n  - x: [\n",
        &[],
        Purpose::OneShot,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("invalid YAML") && p[0].contains("at line 5"), "{p:?}");
    assert!(p[0].contains("   4 |     password: ********"), "{p:?}");
    assert!(!p[0].contains("hunter2"), "{p:?}");
}

#[test]
fn string_settings_are_bounded() {
    let long_prefix = "a/".repeat(200);
    let p = problems("", &[("TARGET_REPO_PREFIX", &long_prefix)], Purpose::OneShot);
    assert!(
        p[0].starts_with("TARGET_REPO_PREFIX (env)")
            && p[0].contains("registries take repository names of at most 256"),
        "{p:?}"
    );
    assert!(p[0].len() < 400, "a long value is quoted shortened: {p:?}");
    let p = problems("", &[("AWS_REGION", &"x".repeat(5000))], Purpose::OneShot);
    assert!(p[0].contains("5000 characters, more than the 4096"), "{p:?}");
    let policy = serde_json::json!({"rules": [{"description": "d".repeat(20_000)}]}).to_string();
    let c = ok(&format!("ecr:\n  lifecyclePolicy: '{policy}'\n"), &[]);
    assert_eq!(
        c.ecr.lifecycle_policy.len(),
        policy.len(),
        "ECR takes policies up to 30,720 characters"
    );
    let p = problems(
        &format!("pathMap:\n  - from: '{}'\n    to: x\n", "y".repeat(5000)),
        &[],
        Purpose::OneShot,
    );
    assert!(
        p[0].starts_with("pathMap[0].from (") && p[0].contains("more than the 4096"),
        "{p:?}"
    );
}

#[test]
fn only_a_regular_file_of_at_most_one_mib_is_read() {
    // /dev/null alone is read, as no file (`NO_FILE`).
    for path in ["/dev/zero", "/dev/urandom"] {
        let overrides = Overrides {
            config: Some(path.into()),
            ..Default::default()
        };
        let err = load(&|_| None, &overrides, Purpose::OneShot).unwrap_err().to_string();
        assert!(err.contains("not a regular file but a character device"), "{err}");
    }
    let big = format!("dryRun: true\n{}", "#".repeat(1024 * 1024));
    let err = load_with(&big, &[], Overrides::default(), Purpose::OneShot)
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the limit of 1048576 bytes"), "{err}");
}

#[test]
fn credentials_resolve_env_and_stay_masked() {
    let yaml = "registryCredentials:\n  - registry: GHCR.io\n    registryAliases: ['*.ghcr.io']\n    username: literal\n    usernameEnv: GH_USER\n    passwordEnv: GH_PASS\n    password: fallback\n  - registry: quay.io\n    token: tok-123\n";
    let c = ok(
        yaml,
        &[
            ("GH_USER", "octocat"),
            ("GH_PASS", "s3cret-pass"),
            ("TARGET_PASSWORD", "t4rget-pass"),
        ],
    );
    let creds = &c.registry_credentials;
    assert_eq!(
        (creds[0].registry.as_str(), creds[0].username.as_str()),
        ("ghcr.io", "octocat")
    );
    assert_eq!(creds[0].password.expose(), "s3cret-pass");
    assert_eq!(creds[1].token.expose(), "tok-123");
    let printed = format!("{}\n{:?}", c.to_yaml(), c);
    for secret in ["s3cret-pass", "tok-123", "t4rget-pass"] {
        assert!(!printed.contains(secret), "secret {secret} printed:\n{printed}");
    }
    assert!(printed.contains(crate::secret::MASK));
}

#[test]
fn ecr_repository_settings() {
    let c = ok(
        "ecr:\n  imageTagMutability: immutable\n  encryptionType: kms\n  kmsKey: alias/ecr\n  tags: {team: platform, cost-center: 42}\n  registryHost: VPCE.example.com\n",
        &[("ECR_SCAN_ON_PUSH", "yes")],
    );
    assert_eq!(c.ecr.image_tag_mutability, "IMMUTABLE");
    assert_eq!(c.ecr.encryption_type, "KMS");
    assert!(c.ecr.scan_on_push);
    assert_eq!(
        crate::destination::ecr::Settings::from_config(&c.ecr).registry_host,
        "vpce.example.com"
    );
    let tags: Vec<(&str, &str)> = c.ecr.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(tags, [("cost-center", "42"), ("team", "platform")]);
    let d = ok("", &[]);
    assert_eq!(
        (d.ecr.image_tag_mutability.as_str(), d.ecr.encryption_type.as_str()),
        ("MUTABLE", "AES256")
    );
    assert_reported(&[
        (
            "ecr:\n  imageTagMutability: sometimes\n",
            &[],
            &["ecr.imageTagMutability (", "allowed values: MUTABLE, IMMUTABLE"],
        ),
        (
            "",
            &[("ECR_ENCRYPTION_TYPE", "rot13")],
            &["ECR_ENCRYPTION_TYPE (env)", "AES256, KMS, KMS_DSSE"],
        ),
        ("ecr:\n  tags: [a, b]\n", &[], &["ecr.tags", "expected a mapping"]),
        (
            "ecr:\n  tags: {team: [a]}\n",
            &[],
            &["ecr.tags.team", "expected a single value"],
        ),
    ]);
    let p = problems(
        "ecr:\n  kmsKey: alias/x\n",
        &[("ECR_ACCOUNT_ID", "123456789012"), ("AWS_REGION", "eu-west-1")],
        Purpose::Daemon,
    )
    .join("\n");
    assert!(
        p.contains("ecr.kmsKey") && p.contains("ecr.encryptionType is AES256"),
        "{p}"
    );
}

#[test]
fn effective_yaml_loads_back_to_the_same_config() {
    let yaml = format!(
        "{DOCKER}digestPull: true\nfailureCooldownMinutes: 90s\nrequestTimeout: 0\nmirrorPlatforms: [linux/arm/v7]\nignoreMissingPlatforms: ['.*arm.*']\npathMap:\n  - {{from: a/, to: b/}}\nlogLevel: debug\n"
    );
    let first = ok(&yaml, &[]).to_yaml();
    let second = ok(&first, &[]).to_yaml();
    assert_eq!(
        first
            .lines()
            .filter(|l| !l.starts_with("#   CONFIG_PATH"))
            .collect::<Vec<_>>(),
        second
            .lines()
            .filter(|l| !l.starts_with("#   CONFIG_PATH"))
            .collect::<Vec<_>>()
    );
    // every YAML key of the table appears in the output
    for key in settings::SETTINGS
        .iter()
        .filter_map(|s| s.key)
        .filter(|k| !k.contains("[]"))
    {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(first.contains(&format!("{leaf}:")), "{key} missing from:\n{first}");
    }
}

#[test]
fn every_setting_in_the_table_is_read() {
    let env = |_: &str| None;
    let mut loader = load::Loader::new(&env);
    load::build(&mut loader, &Overrides::default(), Purpose::Daemon);
    for s in settings::SETTINGS
        .iter()
        .filter(|s| !s.id().contains("[]") && s.id() != "CONFIG_PATH")
    {
        assert!(
            loader.used.contains(&s.id()),
            "setting {} is documented but never read",
            s.id()
        );
    }
}

#[test]
fn referrer_settings_and_their_defaults() {
    use crate::referrer_policy::{ArtifactTypes, ReferrerPolicy, ReferrersMode};
    let c = ok("", &[]);
    assert_eq!(c.referrer_policy(), ReferrerPolicy::default());
    assert_eq!(c.referrers_interval, Duration::from_secs(3600));
    let c = ok(
        "referrers: Signatures\nreferrerArtifactTypes: [\"!application/spdx+json\"]\nreferrerDepth: 1\nreferrersInterval: 10m",
        &[],
    );
    assert_eq!(
        c.referrer_policy(),
        ReferrerPolicy {
            mode: ReferrersMode::Signatures,
            artifact_types: ArtifactTypes {
                include: vec![],
                exclude: vec!["application/spdx+json".into()],
            },
            depth: 1,
        }
    );
    assert_eq!(c.referrers_interval, Duration::from_secs(600));
    let c = ok("", &[("REFERRERS", "none"), ("REFERRERS_INTERVAL", "90")]);
    assert_eq!(
        (c.referrers, c.referrers_interval),
        (ReferrersMode::None, Duration::from_secs(90))
    );
}

#[test]
fn docs_list_every_setting() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (start, end) = ("<!-- settings:start -->\n", "<!-- settings:end -->");
    let table = reference_table();
    let current = doc
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(t, _)| t);
    if current == Some(table.as_str()) {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let (head, rest) = doc
            .split_once(start)
            .expect("docs/configuration.md lacks the settings:start marker");
        let (_, tail) = rest
            .split_once(end)
            .expect("docs/configuration.md lacks the settings:end marker");
        std::fs::write(path, format!("{head}{start}{table}{end}{tail}")).unwrap();
        return;
    }
    panic!(
        "docs/configuration.md is out of date with the settings table; run `UPDATE_DOCS=1 cargo test docs_list_every_setting`"
    );
}

#[test]
fn listener_addresses_and_registry_hosts_in_every_accepted_form() {
    // (An empty variable counts as unset.)
    for address in [
        "0",
        ":8080",
        "127.0.0.1:0",
        "localhost:9090",
        "[::1]:8080",
        "0.0.0.0:80",
    ] {
        let c = ok("", &[("METRICS_ADDR", address), ("HEALTH_ADDR", address)]);
        assert_eq!(c.runtime.metrics_addr, address);
    }
    for host in [
        "localhost:5000",
        "registry.example.com",
        "Registry.Example.com:5000/team",
        "[::1]:5000",
        "docker.io",
    ] {
        let c = ok("", &[("TARGET_REGISTRY", host), ("ECR_REGISTRY_HOST", host)]);
        assert_eq!(c.docker.registry, host);
    }
    let flag = Overrides {
        metrics_addr: Some("localhost".into()),
        ..Overrides::default()
    };
    let err = load_with("", &[], flag, Purpose::OneShot).unwrap_err().to_string();
    assert!(
        err.contains("--metrics-bind-address (flag)") && err.contains("no port"),
        "{err}"
    );
}

#[test]
fn on_the_fly_rules_are_normalised_and_bad_ones_refused_by_name() {
    assert!(!ok("", &[]).on_the_fly.enabled, "off by default");
    let yaml = format!(
        "{DOCKER}onTheFly:\n  enabled: true\n  rules:\n    - {{mirror: Registry.Example.com/dockerhub/, source: index.docker.io/}}\n    - {{mirror: registry.example.com/ghcr, source: ghcr.io/acme}}\n"
    );
    let config = load_with(&yaml, &[], Overrides::default(), Purpose::Daemon)
        .unwrap()
        .config;
    let rules: Vec<(&str, &str)> = config
        .on_the_fly
        .rules
        .iter()
        .map(|r| (r.mirror.as_str(), r.source.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("registry.example.com/dockerhub", "docker.io"),
            ("registry.example.com/ghcr", "ghcr.io/acme")
        ]
    );
    let rules = |rules: &str| format!("{DOCKER}onTheFly:\n  enabled: true\n  rules:\n{rules}");
    let cases: &[(String, &[&str])] = &[
        (
            rules("    - {source: docker.io}\n"),
            &["onTheFly.rules[0].mirror", "required"],
        ),
        (
            rules(
                "    - {mirror: registry.example.com/a, source: docker.io}\n    - {mirror: registry.example.com/a/, source: ghcr.io}\n",
            ),
            &[
                "onTheFly.rules[1].mirror",
                "given twice (also onTheFly.rules[0].mirror)",
            ],
        ),
        (
            rules("    - {mirror: registry.example.com/a, source: 'https://docker.io'}\n"),
            &["onTheFly.rules[0].source", "without a scheme"],
        ),
        (
            rules("    - {mirror: registry.example.com/a, source: Docker/x}\n"),
            &["onTheFly.rules[0].source", "not a registry host"],
        ),
        (
            rules("    - {mirror: other.example.com/a, source: docker.io}\n"),
            &[
                "onTheFly.rules[0].mirror",
                "not on the target registry (registry.example.com)",
            ],
        ),
        (
            rules("    - {mirror: registry.example.com/a, sorce: docker.io}\n"),
            &["onTheFly.rules[0].sorce", "did you mean \"onTheFly.rules[0].source\""],
        ),
        (rules("    []\n"), &["onTheFly.rules", "at least one rule"]),
        (
            format!(
                "{DOCKER}watchResources: [deployments]\nonTheFly:\n  enabled: true\n  rules: [{{mirror: registry.example.com/a, source: docker.io}}]\n"
            ),
            &["onTheFly.enabled", "needs pods in watchResources"],
        ),
        (
            "targetKind: pullThrough\npullThrough: {caches: {docker.io: h.example.com}}\nonTheFly:\n  enabled: true\n  rules: [{mirror: h.example.com/a, source: docker.io}]\n".to_owned(),
            &["onTheFly.enabled", "a pull-through cache (targetKind pullThrough) cannot be written to"],
        ),
    ];
    for (yaml, want) in cases {
        let p = problems(yaml, &[], Purpose::Daemon).join("\n");
        for w in *want {
            assert!(p.contains(w), "{yaml}: {w:?} missing from\n{p}");
        }
    }
}

#[rustfmt::skip]
#[test]
fn pull_through_caches_are_checked_entry_by_entry() {
    let c = ok(
        "targetKind: PullThrough\npullThrough:\n  caches:\n    Index.Docker.io: Harbor.Example.com/dockerhub-proxy/\n    ghcr.io: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ghcr\n    localhost:5000: cache.example.com:5000\n  blobs: false\n",
        &[],
    );
    assert_eq!(c.target_kind, TargetKind::PullThrough);
    let caches: Vec<(&str, &str)> = c.pull_through.caches.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        caches,
        [
            ("docker.io", "harbor.example.com/dockerhub-proxy"),
            ("ghcr.io", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ghcr"),
            ("localhost:5000", "cache.example.com:5000"),
        ],
        "Docker Hub's spellings are one registry; hosts are lower-cased, trailing slashes dropped"
    );
    assert!(!c.pull_through.blobs);
    assert!(ok("", &[]).pull_through.blobs, "blobs are read by default");
    assert!(!ok("", &[("PULL_THROUGH_BLOBS", "false")]).pull_through.blobs);
    assert_eq!(ok("", &[("TARGET_KIND", "pullthrough")]).target_kind, TargetKind::PullThrough);
    let caches = "pullThrough:\n  caches:\n";
    assert_reported(&[
        ("pullThrough:\n  caches: [a.example.com]\n", &[], &["pullThrough.caches", "expected a mapping"]),
        (&format!("{caches}    docker.io: https://h.example.com\n"), &[], &["pullThrough.caches.docker.io", "without a scheme"]),
        (&format!("{caches}    docker.io/library: h.example.com\n"), &[], &["pullThrough.caches.docker.io/library", "without a path"]),
        (&format!("{caches}    docker.io: ''\n"), &[], &["pullThrough.caches.docker.io", "no cache given for docker.io"]),
        (&format!("{caches}    docker.io: [h.example.com]\n"), &[], &["pullThrough.caches.docker.io", "expected a cache host"]),
        (&format!("{caches}    docker.io: cache\n"), &[], &["pullThrough.caches.docker.io", "\"cache\" is not a registry host"]),
        (&format!("{caches}    myregistry: h.example.com\n"), &[], &["pullThrough.caches.myregistry", "\"myregistry\" is not a registry host"]),
        (&format!("{caches}    docker.io: a.example.com\n    registry-1.docker.io: b.example.com\n"), &[], &["pullThrough.caches.registry-1.docker.io", "docker.io is given twice (also as \"docker.io\")"]),
        ("pullThrough:\n  cache: {}\n", &[], &["pullThrough.cache", "did you mean \"pullThrough.caches\""]),
        ("", &[("TARGET_KIND", "pull")], &["TARGET_KIND (env)", "pullThrough"]),
    ]);
    let p = problems("targetKind: pullThrough", &[], Purpose::Daemon).join("\n");
    assert!(p.contains("pullThrough.caches: required when targetKind is pullThrough"), "{p}");
    let with_path_map = format!("targetKind: pullThrough\n{caches}    docker.io: h.example.com\npathMap:\n  - {{from: a/, to: b/}}\n");
    let loaded = load_with(&with_path_map, &[], Overrides::default(), Purpose::Daemon).unwrap();
    assert!(loaded.warnings.iter().any(|w| w.contains("pathMap does not apply")), "{:?}", loaded.warnings);
}

#[rustfmt::skip]
#[test]
fn flux_image_repository_settings_and_bad_values_by_name() {
    let c = ok("", &[]).flux_image_repositories;
    assert_eq!((c.enabled, c.namespaces.len(), c.destination_prefix.as_str(), c.max_tags, c.all_tags), (false, 0, "", 100, false), "the defaults");
    let yaml = "fluxImageRepositories:\n  enabled: true\n  namespaces: [flux-system, team-a]\n  destinationPrefix: flux/$namespace\n  maxTags: 5\n  allTags: true\n";
    let c = ok(yaml, &[]).flux_image_repositories;
    assert_eq!((c.enabled, c.namespaces, c.destination_prefix.as_str(), c.max_tags, c.all_tags), (true, vec!["flux-system".to_owned(), "team-a".to_owned()], "flux/$namespace", 5, true));
    assert!(ok("fluxImageRepositories: {namespaces: ['*']}", &[]).flux_image_repositories.namespaces.is_empty(), "`*` is all");
    assert_reported(&[
        ("fluxImageRepositories: {enabled: maybe}", &[], &["fluxImageRepositories.enabled", "maybe"]),
        ("fluxImageRepositories: {maxTags: 0}", &[], &["fluxImageRepositories.maxTags", "greater than 0"]),
        ("fluxImageRepositories: {namespaces: [team-*]}", &[], &["fluxImageRepositories.namespaces", "\"team-*\" is not a namespace name", "no globs"]),
        ("fluxImageRepositories: {namespaces: ['*', a]}", &[], &["fluxImageRepositories.namespaces", "cannot be listed with names"]),
        ("fluxImageRepositories: {destinationPrefix: flux/$ns}", &[], &["fluxImageRepositories.destinationPrefix", "unknown placeholder $ns"]),
        ("fluxImageRepositories: {allTag: true}", &[], &["fluxImageRepositories.allTag", "did you mean \"fluxImageRepositories.allTags\""]),
    ]);
    let p = problems("targetKind: pullThrough\npullThrough:\n  caches:\n    docker.io: h.example.com\nfluxImageRepositories: {enabled: true}\n", &[], Purpose::Daemon).join("\n");
    assert!(p.contains("fluxImageRepositories.enabled") && p.contains("pullThrough"), "{p}");
}
