//! copycat as a drop-in for k8s-copycat's users (the built binary): the configuration its Helm chart
//! mounts by default and its README's example configuration, Go-style flags, listeners on `:port`
//! reachable over IPv4 and IPv6, and the image's `/k8s-copycat` entrypoint path.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;

use crate::support::{ANY_PORT, CopycatRun, eventually, http};

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/k8s-copycat/chart-config.yaml"
);
const README: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/k8s-copycat/readme-config.yaml"
);
const DOCKERFILE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"));

/// Source registry of the test workloads' images; with `dryPull` (the chart's default) nothing
/// contacts it.
const SOURCE: &str = "src.example.com";
/// The target registry the chart's users set through `extraEnv`.
const TARGET: &str = "mirror.example.com:5000";
/// Placeholders for the README's credential variables.
const README_ENV: [(&str, &str); 3] = [
    ("DOCKERHUB_USERNAME", "placeholder"),
    ("DOCKERHUB_PASSWORD", "placeholder-password"),
    ("GHCR_TOKEN", "placeholder-token"),
];
/// How long the daemon may take to list, plan and log.
const WAIT: Duration = Duration::from_secs(30);

/// The six kinds k8s-copycat watches: name in the image path, and the collection path of its API.
const KINDS: [(&str, &str); 6] = [
    ("deployment", "/apis/apps/v1/deployments"),
    ("statefulset", "/apis/apps/v1/statefulsets"),
    ("daemonset", "/apis/apps/v1/daemonsets"),
    ("job", "/apis/batch/v1/jobs"),
    ("cronjob", "/apis/batch/v1/cronjobs"),
    ("pod", "/api/v1/pods"),
];

/// `copycat ARGS…` with an empty environment except `env`.
fn copycat(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
    cmd.args(args).env_clear().envs(env.iter().copied());
    cmd.output().expect("run copycat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The image a test object of `kind` in `namespace` runs.
fn image(namespace: &str, kind: &str) -> String {
    format!("{SOURCE}/{namespace}/{kind}:1")
}

/// One object of each watched kind in `namespace`, each running its own [`image`].
fn one_of_each_kind(namespace: &str) -> Vec<Value> {
    let pod_spec =
        |kind: &str| json!({"containers": [{"name": "c", "image": image(namespace, kind)}], "restartPolicy": "Never"});
    let template = |kind: &str| json!({"metadata": {"labels": {"app": kind}}, "spec": pod_spec(kind)});
    let meta = |kind: &str| json!({"name": kind, "namespace": namespace});
    let selector = |kind: &str| json!({"matchLabels": {"app": kind}});
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("deployment"),
               "spec": {"selector": selector("deployment"), "template": template("deployment")}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("statefulset"),
               "spec": {"serviceName": "statefulset", "selector": selector("statefulset"), "template": template("statefulset")}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("daemonset"),
               "spec": {"selector": selector("daemonset"), "template": template("daemonset")}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("job"), "spec": {"template": template("job")}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("cronjob"),
               "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template("cronjob")}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("pod"), "spec": pod_spec("pod"),
               "status": {"phase": "Running"}}),
    ]
}

/// A stand-in API server holding the namespaces `namespaces` (besides the standard ones and
/// `k8s-copycat`, where the chart installs copycat and its Lease lives), each with one object of
/// every kind.
fn cluster(namespaces: &[&str]) -> ApiServer {
    let server = ApiServer::new();
    for ns in namespaces.iter().chain(&["k8s-copycat"]) {
        server
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    for ns in namespaces {
        server.apply_all(one_of_each_kind(ns)).unwrap();
    }
    server
}

/// `copycat run` with the config file `config` and `env`, as the chart runs it (leader election
/// on, Lease in `k8s-copycat`), on local ports the kernel picks, given Go-style.
fn run_with_config(kubeconfig: &Path, config: &str, env: &[(&str, &str)]) -> CopycatRun {
    let args = [
        format!("-metrics-bind-address={ANY_PORT}"),
        format!("-health-probe-bind-address={ANY_PORT}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec![("CONFIG_PATH", config), ("TARGET_REGISTRY", TARGET)];
    all.extend_from_slice(env);
    CopycatRun::start(kubeconfig, &args, &all)
}

/// Waits until the daemon has planned (and, being in a dry pull, logged) the image of every kind in
/// each of `namespaces`.
async fn wait_planned(run: &CopycatRun, namespaces: &[&str]) {
    for ns in namespaces {
        for (kind, _) in KINDS {
            let wanted = image(ns, kind);
            eventually(&format!("{wanted} planned"), WAIT, async || {
                run.log()
                    .lines()
                    .any(|l| l.contains("would mirror") && l.contains(&wanted))
            })
            .await;
        }
    }
}

/// The list and watch requests made so far: `GET`s of a collection (no object name after it).
fn list_and_watch_requests(server: &ApiServer) -> Vec<String> {
    let collections = [
        "pods",
        "deployments",
        "statefulsets",
        "daemonsets",
        "replicasets",
        "jobs",
        "cronjobs",
        "nodes",
        "secrets",
        "serviceaccounts",
        "namespaces",
    ];
    server
        .requests()
        .into_iter()
        .filter(|(method, _)| method == "GET")
        .map(|(_, path)| path)
        .filter(|path| {
            let path = path.split('?').next().unwrap_or_default();
            collections.iter().any(|c| path.ends_with(&format!("/{c}")))
        })
        .collect()
}

/// Runs the daemon on `config` against a cluster with one object of each kind in two namespaces and
/// checks it lists and watches all six kinds everywhere, planning every image.
async fn watches_all_six_kinds(config: &str, env: &[(&str, &str)]) {
    let server = cluster(&["default", "team-a"]);
    let running = server.serve().expect("serve the stand-in API server");
    let run = run_with_config(running.kubeconfig_path(), config, env);
    wait_planned(&run, &["default", "team-a"]).await;
    for (_, path) in KINDS {
        eventually(&format!("a cluster-wide watch of {path}"), WAIT, async || {
            list_and_watch_requests(&server)
                .iter()
                .any(|p| p.starts_with(&format!("{path}?")) && p.contains("watch=true"))
        })
        .await;
    }
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn the_chart_defaults_and_the_readme_example_pass_check_config() {
    let out = copycat(&["check-config", "--config", CHART], &[("TARGET_REGISTRY", TARGET)]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The effective lists: `[]` means all six kinds and every namespace, as in k8s-copycat.
    assert!(
        stdout.contains("watchResources:\n- deployments\n- statefulsets\n- daemonsets\n- jobs\n- cronjobs\n- pods\n"),
        "{stdout}"
    );
    assert!(stdout.contains("includeNamespaces:\n- \"*\"\n"), "{stdout}");
    for line in [
        "requestTimeout: 2m",
        "dryRun: true",
        "dryPull: true",
        "registryCredentials: []",
        "logLevel: debug",
        "registry: mirror.example.com:5000",
    ] {
        assert!(stdout.lines().any(|l| l.trim() == line), "{line}: {stdout}");
    }

    let mut env = vec![("ECR_ACCOUNT_ID", "123456789012"), ("AWS_REGION", "eu-central-1")];
    env.extend(README_ENV);
    let out = copycat(&["check-config", "--config", README], &env);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for line in [
        "digestPull: true",
        "allowDifferentDigestRepush: false",
        "requestTimeout: 2m",
        "failureCooldownMinutes: 1h",
        "forceReconcileMinutes: 30m",
        "- registry: registry-1.docker.io",
        "- registry: ghcr.io",
        "regex: true",
    ] {
        assert!(stdout.lines().any(|l| l.trim() == line), "{line}: {stdout}");
    }
    for (_, secret) in README_ENV.iter().skip(1) {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed");
    }
}

#[tokio::test]
async fn the_daemon_on_the_chart_defaults_watches_all_six_kinds_in_every_namespace() {
    watches_all_six_kinds(CHART, &[]).await;
}

#[tokio::test]
async fn the_daemon_on_the_readme_example_watches_all_six_kinds() {
    // The README's target is ECR; here a registry target and a dry pull keep the run offline.
    let mut env = vec![("TARGET_KIND", "docker"), ("DRY_PULL", "true")];
    env.extend(README_ENV);
    watches_all_six_kinds(README, &env).await;
}

#[tokio::test]
async fn listed_namespaces_are_watched_one_by_one_with_namespaced_requests_only() {
    // The chart's newer default lists copycat's own namespace; a second one is added by env.
    let server = cluster(&["k8s-copycat", "team-b", "default"]);
    let running = server.serve().unwrap();
    let run = run_with_config(
        running.kubeconfig_path(),
        CHART,
        &[("INCLUDE_NAMESPACES", "k8s-copycat,team-b")],
    );
    wait_planned(&run, &["k8s-copycat", "team-b"]).await;
    let kinds_and_owners = KINDS.iter().map(|(_, path)| *path).chain(["/apis/apps/v1/replicasets"]);
    for path in kinds_and_owners {
        for ns in ["k8s-copycat", "team-b"] {
            let (prefix, plural) = path.rsplit_once('/').unwrap();
            let namespaced = format!("{prefix}/namespaces/{ns}/{plural}?");
            eventually(&format!("a watch of {namespaced}"), WAIT, async || {
                list_and_watch_requests(&server)
                    .iter()
                    .any(|p| p.starts_with(&namespaced) && p.contains("watch=true"))
            })
            .await;
        }
    }
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let outside: Vec<String> = list_and_watch_requests(&server)
        .into_iter()
        .filter(|p| !p.contains("/namespaces/k8s-copycat/") && !p.contains("/namespaces/team-b/"))
        .collect();
    assert!(
        outside.is_empty(),
        "list/watch requests beyond the two namespaces (a Role per namespace would refuse them): {outside:?}"
    );
    assert!(
        !log.contains(&image("default", "deployment")),
        "the namespace not listed is not mirrored: {log}"
    );
}

#[test]
fn a_daemon_with_nothing_to_watch_stops_with_exit_2_naming_the_setting() {
    let out = copycat(
        &["run"],
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", TARGET),
            ("INCLUDE_NAMESPACES", "shop"),
            ("SKIP_NAMESPACES", "shop"),
            ("CONFIG_PATH", "/dev/null"),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("INCLUDE_NAMESPACES (env)")
            && stderr.contains("skipNamespaces")
            && stderr.contains("nothing would be watched"),
        "{stderr}"
    );
}

/// Every form in which k8s-copycat's flags reach the binary, through `check-config`: the flag's
/// effect on the printed configuration.
#[test]
fn go_style_flags_in_every_form() {
    let base = [
        ("TARGET_KIND", "docker"),
        ("TARGET_REGISTRY", TARGET),
        ("CONFIG_PATH", "/dev/null"),
    ];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&["--dry-run"], &[], "dryRun: true"),
        (&["-dry-run"], &[], "dryRun: true"),
        (&["--dry-run=true"], &[], "dryRun: true"),
        (&["-dry-run=false"], &[("DRY_RUN", "true")], "dryRun: false"),
        (&["--dry-run=false"], &[("DRY_RUN", "true")], "dryRun: false"),
        (&["--dry-pull"], &[], "dryPull: true"),
        (&["-dry-pull=true"], &[], "dryPull: true"),
        (&["--dry-pull=false"], &[("DRY_PULL", "true")], "dryPull: false"),
        (&["-dry-pull=0"], &[("DRY_PULL", "true")], "dryPull: false"),
        (&["--leader-elect=false"], &[], "#   LEADER_ELECT: false"),
        (&["-leader-elect=false"], &[], "#   LEADER_ELECT: false"),
        (
            &["-leader-elect"],
            &[("LEADER_ELECT", "false")],
            "#   LEADER_ELECT: true",
        ),
        (
            &["--leader-elect=true"],
            &[("LEADER_ELECT", "false")],
            "#   LEADER_ELECT: true",
        ),
        (&["-metrics-bind-address=:9090"], &[], "#   METRICS_ADDR: :9090"),
        (&["-metrics-bind-address", ":9091"], &[], "#   METRICS_ADDR: :9091"),
        (&["--metrics-bind-address", ":9092"], &[], "#   METRICS_ADDR: :9092"),
        (&["-health-probe-bind-address=:9093"], &[], "#   HEALTH_ADDR: :9093"),
        (&["--health-probe-bind-address=:9094"], &[], "#   HEALTH_ADDR: :9094"),
        (&["-zap-log-level=debug"], &[], "logLevel: debug"),
        (&["--zap-log-level", "warn"], &[], "logLevel: warn"),
        (&["-kubeconfig=/nonexistent/kubeconfig"], &[], "dryRun: false"),
        // A repeated flag: the last one wins, as with Go's flag package.
        (&["-dry-run=true", "--dry-run=false"], &[], "dryRun: false"),
    ];
    for (flags, env, line) in cases {
        let mut args = vec!["check-config"];
        args.extend_from_slice(flags);
        let all: Vec<(&str, &str)> = base.iter().chain(env.iter()).copied().collect();
        let out = copycat(&args, &all);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {stderr}");
        assert!(
            stdout.lines().any(|l| l == *line),
            "{flags:?}: {line:?} missing from\n{stdout}"
        );
    }
    // Flags before the command, as `args:` in a chart with the image's default command replaced.
    let out = copycat(&["-dry-run=true", "-leader-elect=false", "check-config"], &base);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).lines().any(|l| l == "dryRun: true"));

    // The other zap flags start with a warning naming what copycat does instead.
    let out = copycat(
        &[
            "check-config",
            "--zap-devel",
            "-zap-encoder=console",
            "--zap-stacktrace-level",
            "error",
            "-zap-time-encoding=iso8601",
        ],
        &base,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (flag, instead) in [
        ("--zap-devel=true", "LOG_FORMAT=text"),
        ("--zap-encoder=console", "LOG_FORMAT"),
        ("--zap-stacktrace-level=error", "--log-level"),
        ("--zap-time-encoding=iso8601", "RFC 3339"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("copycat: warning: {flag} is ignored")) && l.contains(instead)),
            "{flag}: {stderr}"
        );
    }

    // Unknown flags and bad values stay refused, naming the flag.
    for (flag, named) in [
        ("-zap-colour=true", "--zap-colour"),
        ("--frobnicate", "--frobnicate"),
        ("-leader-elect=perhaps", "--leader-elect"),
        ("--dry-run=sometimes", "--dry-run"),
    ] {
        let out = copycat(&["check-config", flag], &base);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(named), "{flag}: {stderr}");
    }
}

#[tokio::test]
async fn listeners_on_port_only_addresses_accept_ipv4_and_ipv6() {
    // The test needs the IPv6 loopback: fail (not pass) where the machine has none.
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!(
            "this machine has no IPv6 loopback ([::1]: {e}); the dual-stack test cannot run. \
             Enable IPv6 on lo (sysctl -w net.ipv6.conf.lo.disable_ipv6=0)"
        );
    }
    let server = ApiServer::new();
    let running = server.serve().unwrap();
    let env = [
        ("TARGET_KIND", "docker"),
        ("TARGET_REGISTRY", TARGET),
        ("LEADER_ELECT", "false"),
        ("DRY_PULL", "true"),
        ("METRICS_ADDR", ":0"),
        ("HEALTH_ADDR", "0.0.0.0:0"),
    ];
    // `:port` and `0.0.0.0:port` listen on every interface, IPv6 included, as Go's listeners do.
    // Port 0: the kernel picks the ports, read back from the log.
    let run = CopycatRun::start(running.kubeconfig_path(), &[], &env);
    let port = |address: String| address.rsplit_once(':').unwrap().1.to_owned();
    let (metrics, health) = (
        port(run.bound_address("metrics").await),
        port(run.bound_address("health probe").await),
    );
    for host in ["127.0.0.1", "[::1]"] {
        let (metrics, health) = (format!("{host}:{metrics}"), format!("{host}:{health}"));
        eventually(&format!("/readyz on {health}"), WAIT, async || {
            http(&health, "GET", "/readyz", None).await.0 == 200
        })
        .await;
        let (code, body) = http(&metrics, "GET", "/metrics", None).await;
        assert_eq!(code, 200, "/metrics on {metrics}");
        assert!(body.contains("k8s_copycat_images_tracked"), "{body}");
    }
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(&format!("[::]:{metrics}")), "{log}");
}

#[tokio::test]
async fn the_image_entrypoint_path_k8s_copycat_runs_the_daemon_with_go_style_args() {
    // As a chart or manifest with `command: ["/k8s-copycat"]` and k8s-copycat's args runs it: the
    // image provides /k8s-copycat as a link to copycat (see the Dockerfile test below).
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("k8s-copycat");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_copycat"), &link).unwrap();
    let server = cluster(&["default"]);
    let running = server.serve().unwrap();
    let args: Vec<OsString> = [
        "-leader-elect=false".to_owned(),
        format!("-metrics-bind-address={ANY_PORT}"),
        "-health-probe-bind-address".to_owned(),
        ANY_PORT.to_owned(),
        format!("-kubeconfig={}", running.kubeconfig_path().display()),
        "--dry-pull=true".to_owned(),
        "-zap-log-level=info".to_owned(),
        "--zap-devel=false".to_owned(),
        "-zap-encoder=json".to_owned(),
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let run = CopycatRun::start_program(&link, &args, &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", TARGET)]);
    let (metrics, health) = (
        run.bound_address("metrics").await,
        run.bound_address("health probe").await,
    );
    eventually("/readyz", WAIT, async || {
        http(&health, "GET", "/readyz", None).await.0 == 200
    })
    .await;
    wait_planned(&run, &["default"]).await;
    assert_eq!(http(&metrics, "GET", "/metrics", None).await.0, 200);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("--zap-devel=false is ignored") && log.contains("--zap-encoder=json is ignored"),
        "{log}"
    );
    assert_eq!(
        server.count_requests("GET", "/leases"),
        0,
        "-leader-elect=false: no Lease is read"
    );
}

/// The image layout is built from the Dockerfile (scripts that build it without Docker must produce
/// the same): `/k8s-copycat` is a link to the binary the entrypoint names.
#[test]
fn the_dockerfile_provides_k8s_copycat_as_a_link_to_the_entrypoint() {
    let entrypoint = DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT [\"")?.strip_suffix("\"]"))
        .expect("an exec-form ENTRYPOINT");
    assert_eq!(entrypoint, "/usr/local/bin/copycat");
    let build = DOCKERFILE.replace("\\\n", " ");
    let words: Vec<&str> = build.split_whitespace().collect();
    let link = words
        .windows(4)
        .find(|w| w[0] == "ln" && w[1] == "-s" && w[3] == "/out/k8s-copycat")
        .unwrap_or_else(|| panic!("the build stage links /out/k8s-copycat:\n{DOCKERFILE}"));
    assert_eq!(link[2], entrypoint, "the link points at the entrypoint's binary");
    let installed = format!("/out{entrypoint}");
    assert!(
        words
            .windows(2)
            // The release binary, or its copy without debug information.
            .any(|w| w[0].ends_with("/copycat") && w[1] == installed),
        "the binary is installed at {installed}:\n{DOCKERFILE}"
    );
    assert!(
        DOCKERFILE.lines().any(|l| l.trim() == "COPY --from=build /out/ /"),
        "the final stage copies /out (binary and link) to /:\n{DOCKERFILE}"
    );
}

const MIGRATION: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/migration.md"));

/// k8s-copycat's settings (shared/reference/k8s-copycat-behaviour.md §1.2): YAML key, environment
/// variable and default, in copycat's syntax (`None`: no variable, or no default to compare).
const K8S_COPYCAT_SETTINGS: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
    (Some("targetKind"), Some("TARGET_KIND"), Some("ecr")),
    (Some("logLevel"), None, Some("info")),
    (Some("ecr.accountID"), Some("ECR_ACCOUNT_ID"), Some("")),
    (Some("ecr.region"), Some("AWS_REGION"), Some("")),
    (Some("ecr.repoPrefix"), Some("ECR_REPO_PREFIX"), Some("")),
    (Some("ecr.createRepo"), Some("ECR_CREATE_REPO"), Some("true")),
    (Some("ecr.assumeRoleArn"), None, Some("")),
    (Some("ecr.lifecyclePolicy"), None, Some("")),
    (Some("docker.registry"), Some("TARGET_REGISTRY"), Some("")),
    (Some("docker.repoPrefix"), Some("TARGET_REPO_PREFIX"), Some("")),
    (Some("docker.insecure"), Some("TARGET_INSECURE"), Some("false")),
    (None, Some("TARGET_USERNAME"), Some("")),
    (None, Some("TARGET_PASSWORD"), Some("")),
    (Some("digestPull"), Some("DIGEST_PULL"), Some("false")),
    (
        Some("digestPullIgnoredTags"),
        Some("DIGEST_PULL_IGNORED_TAGS"),
        Some("latest"),
    ),
    (
        Some("ignoreMissingPlatforms"),
        Some("IGNORE_MISSING_PLATFORMS"),
        Some(""),
    ),
    (Some("checkNodePlatform"), Some("CHECK_NODE_PLATFORM"), Some("false")),
    (Some("mirrorPlatforms"), Some("MIRROR_PLATFORMS"), Some("")),
    (
        Some("allowDifferentDigestRepush"),
        Some("ALLOW_DIFFERENT_DIGEST_REPUSH"),
        Some("true"),
    ),
    (Some("includeNamespaces"), Some("INCLUDE_NAMESPACES"), Some("*")),
    (Some("skipNamespaces"), Some("SKIP_NAMESPACES"), Some("")),
    (Some("skipNames.deployments"), Some("SKIP_DEPLOYMENTS"), Some("")),
    (Some("skipNames.statefulSets"), Some("SKIP_STATEFULSETS"), Some("")),
    (Some("skipNames.daemonSets"), Some("SKIP_DAEMONSETS"), Some("")),
    (Some("skipNames.jobs"), Some("SKIP_JOBS"), Some("")),
    (Some("skipNames.cronJobs"), Some("SKIP_CRONJOBS"), Some("")),
    (Some("skipNames.pods"), Some("SKIP_PODS"), Some("")),
    (Some("excludeRegistries"), Some("EXCLUDE_REGISTRIES"), Some("")),
    (
        Some("watchResources"),
        Some("WATCH_RESOURCES"),
        Some("deployments,statefulsets,daemonsets,jobs,cronjobs,pods"),
    ),
    (Some("dryRun"), Some("DRY_RUN"), Some("false")),
    (Some("dryPull"), Some("DRY_PULL"), Some("false")),
    (Some("requestTimeout"), Some("REGISTRY_REQUEST_TIMEOUT"), Some("300")),
    (
        Some("registryRetryAttempts"),
        Some("REGISTRY_RETRY_ATTEMPTS"),
        Some("3"),
    ),
    (Some("registryRetryBackoff"), Some("REGISTRY_RETRY_BACKOFF"), Some("10")),
    (
        Some("failureCooldownMinutes"),
        Some("FAILURE_COOLDOWN_MINUTES"),
        Some("60"),
    ),
    (
        Some("forceReconcileMinutes"),
        Some("FORCE_RECONCILE_MINUTES"),
        Some("0"),
    ),
    (
        Some("maxConcurrentReconciles"),
        Some("MAX_CONCURRENT_RECONCILES"),
        Some("2"),
    ),
    (Some("registryCredentials[].registry"), None, None),
    (Some("registryCredentials[].registryAliases"), None, None),
    (Some("registryCredentials[].username"), None, None),
    (Some("registryCredentials[].password"), None, None),
    (Some("registryCredentials[].token"), None, None),
    (Some("registryCredentials[].usernameEnv"), None, None),
    (Some("registryCredentials[].passwordEnv"), None, None),
    (Some("registryCredentials[].tokenEnv"), None, None),
    (Some("pathMap[].from"), None, None),
    (Some("pathMap[].to"), None, None),
    (Some("pathMap[].regex"), None, Some("false")),
    (None, Some("CONFIG_PATH"), Some("/config/config.yaml")),
    (None, Some("METRICS_ADDR"), Some(":8080")),
];

/// k8s-copycat's flags (§1.3), its endpoints (§2.8, §2.9) and metrics (§4).
const K8S_COPYCAT_FLAGS: &[&str] = &[
    "metrics-bind-address",
    "health-probe-bind-address",
    "leader-elect",
    "dry-run",
    "dry-pull",
    "kubeconfig",
    "zap-log-level",
    "zap-devel",
    "zap-encoder",
    "zap-stacktrace-level",
    "zap-time-encoding",
];
const K8S_COPYCAT_ENDPOINTS: &[&str] = &["/metrics", "/healthz", "/readyz", "/force-reconcile", "/reset-cooldown"];
const K8S_COPYCAT_METRICS: &[&str] = &[
    "k8s_copycat_registry_pull_success_total",
    "k8s_copycat_registry_pull_error_total",
    "k8s_copycat_registry_push_success_total",
    "k8s_copycat_registry_push_error_total",
];

/// The migration guide's reference table covers every k8s-copycat name, and copycat reads every
/// k8s-copycat setting under the same key and variable, with the same default (where the table says
/// the defaults differ, the test names it here).
#[test]
fn every_k8s_copycat_name_is_in_the_migration_table_and_read_the_same_way() {
    use clap::CommandFactory as _;
    let (_, table) = MIGRATION
        .split_once("## Every k8s-copycat setting, flag, endpoint and metric")
        .expect("docs/migration.md has the reference table");
    let in_table = |name: &str| table.contains(&format!("`{name}`")) || table.contains(&format!("`{name} "));
    let settings = copycat::config::settings::SETTINGS;
    for (key, env, default) in K8S_COPYCAT_SETTINGS {
        let shown = key.map(|k| k.rsplit("[].").next().unwrap_or(k)).or(*env).unwrap();
        assert!(in_table(shown), "{shown} is missing from docs/migration.md's table");
        if let Some(env) = env {
            assert!(in_table(env), "{env} is missing from docs/migration.md's table");
        }
        let setting = settings
            .iter()
            .find(|s| key.map_or(s.key.is_none() && s.env == *env, |k| s.key == Some(k)))
            .unwrap_or_else(|| panic!("copycat does not read {key:?} / {env:?}"));
        if env.is_some() {
            assert_eq!(setting.env, *env, "{key:?} is read from another variable");
        }
        if let Some(default) = default {
            assert_eq!(setting.default, *default, "{key:?} / {env:?} has another default");
        }
    }
    let cli = copycat::cli::Cli::command();
    let flags: Vec<String> = cli
        .get_arguments()
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().into_iter().flatten())
        })
        .map(str::to_owned)
        .collect();
    for flag in K8S_COPYCAT_FLAGS {
        assert!(
            in_table(&format!("--{flag}")),
            "--{flag} is missing from docs/migration.md's table"
        );
        assert!(flags.iter().any(|f| f == flag), "copycat does not accept --{flag}");
    }
    for name in K8S_COPYCAT_ENDPOINTS.iter().chain(K8S_COPYCAT_METRICS) {
        assert!(
            table.contains(&format!("`{name}")),
            "{name} is missing from docs/migration.md's table"
        );
    }
}
