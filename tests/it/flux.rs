//! Flux `ImageRepository` scans mirrored (`fluxImageRepositories`): `copycat run` (the built
//! binary) against the stand-in API server and real docker-registries. The objects are written as
//! Flux's image-reflector-controller leaves them (`status.lastScanResult` with `revision` and
//! `latestTags`); copies are counted in the registries' access logs (copycat's own requests only).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::apiserver::{ApiServer, RunningApiServer};
use testkit::{Image, Registry, RegistryMode};

use crate::on_the_fly::metric;
use crate::server::Daemon;
use crate::support::{CopycatRun, config_file, copycat_requests, eventually, manifest_puts, start};

/// How long a test waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(30);

const NS: &str = "flux-system";

/// Flux's CRD serving `versions` (the stand-in serves both versions whatever it says; copycat reads
/// the CRD to choose).
fn crd(versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"name": v, "served": true, "storage": i == 0}))
        .collect();
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "imagerepositories.image.toolkit.fluxcd.io"},
           "spec": {"group": "image.toolkit.fluxcd.io", "scope": "Namespaced",
                    "names": {"kind": "ImageRepository", "plural": "imagerepositories"},
                    "versions": versions}})
}

/// The `ImageRepository` `flux-system/NAME` (API `version`) scanning `image`, with `secret_ref`, and
/// the scan result `scan` (`revision`, `latestTags`) when there is one.
fn repository(
    version: &str,
    name: &str,
    image: &str,
    secret_ref: Option<&str>,
    scan: Option<(&str, &[&str])>,
) -> Value {
    let mut spec = json!({"image": image, "interval": "5m"});
    if let Some(secret) = secret_ref {
        spec["secretRef"] = json!({"name": secret});
    }
    let mut object = json!({"apiVersion": format!("image.toolkit.fluxcd.io/{version}"), "kind": "ImageRepository",
                            "metadata": {"name": name, "namespace": NS}, "spec": spec});
    if let Some((revision, tags)) = scan {
        object["status"] = json!({"lastScanResult": {"revision": revision, "tagCount": tags.len(),
                                  "latestTags": tags, "scanTime": "2026-12-07T17:00:00Z"}});
    }
    object
}

/// The stand-in with namespace `flux-system` and, when `versions` is not empty, Flux's CRD.
fn cluster(versions: &[&str]) -> (ApiServer, RunningApiServer) {
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    if !versions.is_empty() {
        server.apply(crd(versions)).unwrap();
    }
    let running = server.serve().expect("serve the stand-in API server");
    (server, running)
}

/// Starts the daemon mirroring to `dst` with `config` and waits for `line` in its log.
async fn start_daemon(
    running: &RunningApiServer,
    dst: &Registry,
    config: &tempfile::NamedTempFile,
    line: &str,
) -> Daemon {
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        dst,
        &[("CONFIG_PATH", config.path().to_str().unwrap())],
    );
    wait_logged(&daemon.run, line).await;
    daemon
}

/// Waits until `run` has logged `line`.
async fn wait_logged(run: &CopycatRun, line: &str) {
    let started = Instant::now();
    while !run.log().contains(line) {
        assert!(
            started.elapsed() < WAIT,
            "{line:?} not logged in {WAIT:?}:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the metric `series` reads `value`.
async fn wait_metric(daemon: &Daemon, series: &str, value: &str) {
    eventually(&format!("{series} = {value}"), WAIT, async || {
        metric(daemon, series).await.as_deref() == Some(value)
    })
    .await;
}

/// Pushes one small image to `reg` `repo` under each of `tags`.
async fn push_tags(reg: &Registry, repo: &str, tags: &[&str]) {
    let image = Image::oci("amd64", &[1_000, 2_000], 11).unwrap();
    for tag in tags {
        image.push(reg, repo, tag).await.unwrap();
    }
}

/// The manifest PUTs copycat made to `dst`, `repo:tag` → count, tags only (the tags' manifests).
fn tag_puts(dst: &Registry) -> Vec<(String, usize)> {
    manifest_puts(dst)
        .into_iter()
        .filter(|(reference, _)| !reference.contains("sha256:"))
        .collect()
}

fn puts(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

#[tokio::test]
async fn a_new_revision_mirrors_its_latest_tags_once_and_an_unchanged_one_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push_tags(&src, "org/app", &["1.0", "1.1", "1.2"]).await;
    let image = format!("{}/org/app", src.host());
    let (server, running) = cluster(&["v1", "v1beta2"]);
    server.apply(repository("v1", "app", &image, None, None)).unwrap();
    // This test counts the scans' source requests: the periodic verification of the declared
    // copies (a source HEAD each) is off here and tested in `declared_copies_are_verified…`.
    let config = config_file(
        "fluxImageRepositories:\n  enabled: true\n  namespaces: [flux-system]\n  destinationPrefix: flux/$namespace\nverifyInterval: 0\n",
    );
    let daemon = start_daemon(&running, &dst, &config, "watching Flux ImageRepository objects").await;

    // Created without a scan result: nothing, not even a request to the source.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(copycat_requests(&src).is_empty(), "nothing before a scan");

    // The reflector's first scan: its latest tags are mirrored, each once.
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["1.1", "1.0"]))))
        .unwrap();
    let mirrored = r#"k8s_copycat_flux_scans_total{result="mirrored"}"#;
    wait_metric(&daemon, mirrored, "1").await;
    let want = puts(&[("flux/flux-system/org/app:1.0", 1), ("flux/flux-system/org/app:1.1", 1)]);
    eventually("both tags copied", WAIT, async || tag_puts(&dst) == want).await;
    let after_first = copycat_requests(&src).len();

    // Another status write with the same revision (Flux rescans every interval): nothing.
    let mut again = repository("v1", "app", &image, None, Some(("rev-1", &["1.1", "1.0"])));
    again["status"]["lastScanResult"]["scanTime"] = json!("2026-12-07T17:05:00Z");
    server.apply(again).unwrap();
    wait_metric(&daemon, r#"k8s_copycat_flux_scans_total{result="unchanged"}"#, "1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        copycat_requests(&src).len(),
        after_first,
        "no source request for an unchanged revision"
    );
    assert_eq!(tag_puts(&dst), want);

    // A new revision: the new tag is copied once; the tag already mirrored is not written again.
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-2", &["1.2", "1.1"]))))
        .unwrap();
    wait_metric(&daemon, mirrored, "2").await;
    let want = puts(&[
        ("flux/flux-system/org/app:1.0", 1),
        ("flux/flux-system/org/app:1.1", 1),
        ("flux/flux-system/org/app:1.2", 1),
    ]);
    eventually("1.2 copied", WAIT, async || tag_puts(&dst) == want).await;
    let source_requests = copycat_requests(&src).len();

    // An object whose spec.image is no reference: reported and counted, nothing else stops.
    server
        .apply(repository("v1", "bad", "Not An/Image", None, Some(("rev-1", &["1.0"]))))
        .unwrap();
    wait_metric(&daemon, r#"k8s_copycat_flux_scans_total{result="invalid"}"#, "1").await;
    wait_logged(&daemon.run, "ImageRepository not mirrored").await;

    server.delete("imagerepositories", NS, "app");
    wait_logged(&daemon.run, "ImageRepository deleted").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(tag_puts(&dst), want, "{log}");
    eprintln!(
        "figures: source requests {after_first} after rev-1 (2 tags), {source_requests} after rev-2 (1 new tag); target tag writes {want:?}"
    );
}

#[tokio::test]
async fn all_tags_copies_the_listed_tags_within_the_tag_limit() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push_tags(&src, "org/app", &["1.0", "1.1", "1.2", "1.3", "1.4", "latest"]).await;
    let image = format!("{}/org/app", src.host());
    let (server, running) = cluster(&["v1"]);
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["1.4"]))))
        .unwrap();
    // `referrers: none`: the copies list no tags of their own (cosign's), so every tag list is allTags'.
    let config =
        config_file("referrers: none\nfluxImageRepositories:\n  enabled: true\n  allTags: true\n  maxTags: 3\n");
    let daemon = start_daemon(&running, &dst, &config, "watching Flux ImageRepository objects").await;

    // The scan's latest tag first, then the listed ones in reverse alphabetical order: 1.4, latest, 1.3.
    let want = puts(&[("org/app:1.3", 1), ("org/app:1.4", 1), ("org/app:latest", 1)]);
    let copied = async || tag_puts(&dst) == want;
    if tokio::time::timeout(WAIT, async {
        while !copied().await {
            tokio::time::sleep(Duration::from_millis(200)).await
        }
    })
    .await
    .is_err()
    {
        panic!("copied {:?}, not {want:?}:\n{}", tag_puts(&dst), daemon.run.log());
    }
    wait_logged(&daemon.run, "more tags than fluxImageRepositories.maxTags").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lists = copycat_requests(&src)
        .iter()
        .filter(|r| r.path.starts_with("/v2/org/app/tags/list"))
        .count();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(lists, 1, "one tag list per new revision");
    assert!(log.contains("left_out=3"), "{log}");
    assert_eq!(tag_puts(&dst), want);
}

/// A registry requiring `user`:`pass`, holding `private/app:2.0`; and that image's name.
async fn protected_source(user: &str, pass: &str) -> (Registry, String) {
    let src = start(RegistryMode::Basic {
        user: user.into(),
        pass: pass.into(),
    });
    push_tags(&src, "private/app", &["2.0"]).await;
    let image = format!("{}/private/app", src.host());
    (src, image)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The `kubernetes.io/dockerconfigjson` Secret `flux-system/NAME` with `user`:`pass` for `host`.
fn pull_secret(name: &str, host: &str, user: &str, pass: &str) -> Value {
    let docker_config = json!({"auths": {host: {"auth": b64(&format!("{user}:{pass}"))}}}).to_string();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
           "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(&docker_config)}})
}

/// Stops `daemon`, which must exit 0, and checks that none of `passwords` (of `user`) nor their
/// `auth` forms is in its log, `/metrics` or `/status`; its log and metrics.
async fn stop_showing_no_credential(daemon: Daemon, user: &str, passwords: &[&str]) -> (String, String) {
    let (_, metrics) = daemon.get("/metrics").await;
    let (_, status) = daemon.get("/status").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    for (what, text) in [("log", &log), ("metrics", &metrics), ("/status", &status)] {
        for pass in passwords {
            assert!(!text.contains(pass), "the password is in the {what}");
            assert!(
                !text.contains(&b64(&format!("{user}:{pass}"))),
                "the auth is in the {what}"
            );
        }
    }
    (log, metrics)
}

#[tokio::test]
async fn secret_ref_credentials_are_used_for_a_protected_source_and_never_shown() {
    let (user, pass) = ("flux-reader", "s3cret-Flux-never-shown-9Zq");
    let (src, image) = protected_source(user, pass).await;
    let dst = start(RegistryMode::Plain);
    let (server, running) = cluster(&["v1"]);
    server.apply(pull_secret("pull", &src.host(), user, pass)).unwrap();
    server
        .apply(repository("v1", "app", &image, Some("pull"), Some(("rev-1", &["2.0"]))))
        .unwrap();
    // Objects naming a Secret that does not exist, is of another type or has no credentials for the
    // source: each reported, copied without it (and refused by the source).
    server
        .apply(repository(
            "v1",
            "other",
            &image,
            Some("missing"),
            Some(("rev-1", &["2.0"])),
        ))
        .unwrap();
    // A Secret of another type, and one without credentials for the source's registry.
    server
        .apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque", "namespace": NS},
                      "type": "Opaque", "data": {"password": b64(pass)}}),
        )
        .unwrap();
    server
        .apply(pull_secret("elsewhere", "registry.example.com", user, pass))
        .unwrap();
    for (name, secret) in [("third", "opaque"), ("fourth", "elsewhere")] {
        server
            .apply(repository("v1", name, &image, Some(secret), Some(("rev-1", &["2.0"]))))
            .unwrap();
    }
    let config = config_file("fluxImageRepositories:\n  enabled: true\n  destinationPrefix: $podname\n");
    let daemon = start_daemon(&running, &dst, &config, "watching Flux ImageRepository objects").await;

    let want = puts(&[("app/private/app:2.0", 1)]);
    eventually("the private tag copied", WAIT, async || tag_puts(&dst) == want).await;
    wait_metric(
        &daemon,
        r#"k8s_copycat_flux_secret_ref_errors_total{reason="not_found"}"#,
        "1",
    )
    .await;
    wait_logged(&daemon.run, "Secret flux-system/missing not found").await;
    for reason in ["not_docker_config", "no_entry"] {
        wait_metric(
            &daemon,
            &format!(r#"k8s_copycat_flux_secret_ref_errors_total{{reason="{reason}"}}"#),
            "1",
        )
        .await;
    }
    wait_logged(
        &daemon.run,
        &format!("Secret flux-system/elsewhere has no credentials for {}", src.host()),
    )
    .await;
    // Each problem on its object's target in /status, naming the Secret.
    let problems = [
        ("other", "Secret flux-system/missing not found".to_owned()),
        (
            "third",
            "Secret flux-system/opaque is not a kubernetes.io/dockerconfigjson Secret with a .dockerconfigjson key"
                .to_owned(),
        ),
        (
            "fourth",
            format!("Secret flux-system/elsewhere has no credentials for {}", src.host()),
        ),
    ];
    for (name, problem) in problems {
        let target = format!("{}/{name}/private/app:2.0", dst.host());
        let shown = json!([{"object": format!("ImageRepository {NS}/{name}"), "problem": problem}]);
        let entry = daemon.status_of(&target).await;
        assert_eq!(entry.map(|e| e["declaredBy"].clone()), Some(shown), "{target}");
    }
    stop_showing_no_credential(daemon, user, &[pass]).await;
    assert_eq!(tag_puts(&dst), want, "the object without its Secret copies nothing");
    // One GET of each named Secret; Secrets are never listed or watched.
    let secret_requests: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .filter(|(_, path)| path.contains("/secrets"))
        .collect();
    let gets = |name: &str| {
        secret_requests
            .iter()
            .filter(|(m, p)| m == "GET" && p.ends_with(&format!("/namespaces/{NS}/secrets/{name}")))
            .count()
    };
    let each = ["pull", "missing", "opaque", "elsewhere"].map(gets);
    assert_eq!(each, [1, 1, 1, 1], "{secret_requests:?}");
    assert_eq!(secret_requests.len(), 4, "{secret_requests:?}");
}

/// Starts the daemon mirroring to `dst` with the configuration `settings` and copycat's own
/// credentials `(user, pass)` for the registry `source` (the password from the environment), and
/// waits until it follows ImageRepository objects; with its configuration file, kept while it runs.
async fn start_reading_with(
    running: &RunningApiServer,
    dst: &Registry,
    settings: &str,
    (source, user, pass): (&Registry, &str, &str),
) -> (Daemon, tempfile::NamedTempFile) {
    let config = config_file(&format!(
        "{settings}registryCredentials:\n  - registry: \"{}\"\n    username: {user}\n    passwordEnv: FLUX_SOURCE_PASSWORD\n",
        source.host()
    ));
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        dst,
        &[
            ("CONFIG_PATH", config.path().to_str().unwrap()),
            ("FLUX_SOURCE_PASSWORD", pass),
        ],
    );
    wait_logged(&daemon.run, "watching Flux ImageRepository objects").await;
    (daemon, config)
}

/// `allTags` lists a protected source as the copies read it: with the `spec.secretRef` credentials
/// first (the only ones for one source), then the configured ones (another source, whose Secret is
/// refused); every listed tag is copied and no credential is shown.
#[tokio::test]
async fn all_tags_lists_with_the_secret_ref_first_then_the_configured_credentials() {
    let user = "flux-reader";
    let (secret_pass, configured_pass, stale_pass) = ("s3cret-List-Ref-2Wq", "s3cret-List-Conf-8Tx", "stale-List-5Pe");
    // `secret_src` is readable with the Secret `pull` only; `configured_src` with copycat's own
    // credentials only (its Secret `stale` holds an old password).
    let (secret_src, secret_image) = protected_source(user, secret_pass).await;
    let (configured_src, configured_image) = protected_source(user, configured_pass).await;
    for src in [&secret_src, &configured_src] {
        push_tags(src, "private/app", &["2.1", "2.2"]).await;
    }
    let dst = start(RegistryMode::Plain);
    let (server, running) = cluster(&["v1"]);
    server
        .apply(pull_secret("pull", &secret_src.host(), user, secret_pass))
        .unwrap();
    server
        .apply(pull_secret("stale", &configured_src.host(), user, stale_pass))
        .unwrap();
    for (name, image, secret) in [("app", &secret_image, "pull"), ("old", &configured_image, "stale")] {
        server
            .apply(repository("v1", name, image, Some(secret), Some(("rev-1", &["2.2"]))))
            .unwrap();
    }
    // `referrers: none`: the copies list no tags of their own, so every tag list is allTags'.
    let settings = "referrers: none\nfluxImageRepositories:\n  enabled: true\n  allTags: true\n  maxTags: 3\n  destinationPrefix: $podname\n";
    let (daemon, _config) =
        start_reading_with(&running, &dst, settings, (&configured_src, user, configured_pass)).await;

    let want: Vec<(String, usize)> = ["app", "old"]
        .iter()
        .flat_map(|name| ["2.0", "2.1", "2.2"].map(|tag| (format!("{name}/private/app:{tag}"), 1)))
        .collect();
    eventually("every listed tag copied", WAIT, async || tag_puts(&dst) == want).await;
    let (log, _) = stop_showing_no_credential(daemon, user, &[secret_pass, configured_pass, stale_pass]).await;
    assert!(!log.contains("the tags cannot be listed"), "{log}");
    assert_eq!(tag_puts(&dst), want, "{log}");
    // (status, count) of the tag lists each source answered copycat.
    let lists = |src: &Registry| {
        let mut answers = std::collections::BTreeMap::new();
        for r in copycat_requests(src) {
            if r.path.starts_with("/v2/private/app/tags/list") {
                *answers.entry(r.status).or_insert(0) += 1;
            }
        }
        answers.into_iter().collect::<Vec<(u16, usize)>>()
    };
    let (with_secret, with_configured) = (lists(&secret_src), lists(&configured_src));
    eprintln!(
        "figures: tag lists (status, count): Secret's source {with_secret:?}, configured source {with_configured:?}"
    );
    assert_eq!(with_secret, [(200, 1)], "one list, with the Secret");
    assert_eq!(
        with_configured,
        [(200, 1), (401, 1)],
        "the stale Secret refused, then one list with the configured credentials"
    );
}

/// Waits until the `/status` entry of `target` is in `state` with `declaredBy` as `declared_by`.
async fn wait_entry(daemon: &Daemon, target: &str, declared_by: &Value, state: &str) {
    eventually(
        &format!("{target} {state}, declared by {declared_by}"),
        WAIT,
        async || {
            daemon
                .status_of(target)
                .await
                .is_some_and(|e| e["declaredBy"] == *declared_by && e["state"] == state)
        },
    )
    .await;
}

/// A source requiring `user`:`pass` ([`protected_source`]), a plain target, and the stand-in with
/// `flux-system/app` scanning the source at `rev-1` (`2.0`), naming the Secret `pull`, which does not
/// exist; with the image's name.
async fn missing_secret_scene(user: &str, pass: &str) -> (Registry, String, Registry, ApiServer, RunningApiServer) {
    let (src, image) = protected_source(user, pass).await;
    let dst = start(RegistryMode::Plain);
    let (server, running) = cluster(&["v1"]);
    server
        .apply(repository("v1", "app", &image, Some("pull"), Some(("rev-1", &["2.0"]))))
        .unwrap();
    (src, image, dst, server, running)
}

/// A `spec.secretRef` Secret that cannot be used shows in `/status`, on the entry of each target
/// the object declares, with the object and the problem naming the Secret (never a credential);
/// once the Secret exists, Flux's next scan of the object (a status write with the same revision)
/// has it read again: the copy is made with its credentials and the problem is gone.
#[tokio::test]
async fn a_secret_ref_problem_shows_in_status_until_the_secret_can_be_used() {
    let (user, pass) = ("flux-reader", "s3cret-Status-never-shown-4Kd");
    let (src, image, dst, server, running) = missing_secret_scene(user, pass).await;
    // Without a cooldown, a target submitted again is retried at once.
    let config = config_file(
        "fluxImageRepositories:\n  enabled: true\n  destinationPrefix: $podname\nfailureCooldownMinutes: 0\n",
    );
    let daemon = start_daemon(&running, &dst, &config, "watching Flux ImageRepository objects").await;
    let target = format!("{}/app/private/app:2.0", dst.host());
    let object = "ImageRepository flux-system/app";

    let missing = json!([{"object": object, "problem": "Secret flux-system/pull not found"}]);
    wait_entry(&daemon, &target, &missing, "failed").await;
    let refused = daemon.status_of(&target).await.unwrap();
    assert!(
        refused["lastError"].is_string(),
        "the source refused the copy without credentials: {refused}"
    );
    assert!(tag_puts(&dst).is_empty());
    eprintln!("figures: the entry while the Secret is missing: {refused}");

    server.apply(pull_secret("pull", &src.host(), user, pass)).unwrap();
    let mut rescanned = repository("v1", "app", &image, Some("pull"), Some(("rev-1", &["2.0"])));
    rescanned["status"]["lastScanResult"]["scanTime"] = json!("2026-12-07T17:05:00Z");
    server.apply(rescanned).unwrap();
    let cleared = json!([{"object": object}]);
    wait_entry(&daemon, &target, &cleared, "mirrored").await;
    assert_eq!(tag_puts(&dst), puts(&[("app/private/app:2.0", 1)]));
    let (log, metrics) = stop_showing_no_credential(daemon, user, &[pass]).await;
    assert!(log.contains("ImageRepository spec.secretRef problem gone"), "{log}");
    // The Secret read once per look: at the first scan, then at the rescan.
    let gets = server
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.ends_with(&format!("/namespaces/{NS}/secrets/pull")))
        .count();
    assert_eq!(gets, 2, "{log}");
    let not_found = r#"k8s_copycat_flux_secret_ref_errors_total{reason="not_found"} 1"#;
    assert!(metrics.lines().any(|l| l == not_found), "{metrics}");
    eprintln!(
        "figures: Secret GETs {gets} (first scan, rescan); target tag writes {:?}",
        tag_puts(&dst)
    );
}

/// Removing `spec.secretRef` from an object whose Secret could not be used clears the problem shown
/// in `/status` at once (the object changed, its revision did not), with no read of the Secret; the
/// copies, made with the configured credentials all along, go on with them for the next revision.
/// Naming the Secret again with the same revision has it read again at once.
#[tokio::test]
async fn removing_an_unusable_secret_ref_clears_its_problem_and_the_configured_credentials_copy_on() {
    let (user, pass) = ("flux-reader", "s3cret-Removed-never-shown-7Hw");
    let (src, image, dst, server, running) = missing_secret_scene(user, pass).await;
    // copycat's own credentials for the source; the object's Secret does not exist.
    let settings = "fluxImageRepositories:\n  enabled: true\n  destinationPrefix: $podname\n";
    let (daemon, _config) = start_reading_with(&running, &dst, settings, (&src, user, pass)).await;
    let target = |tag: &str| format!("{}/app/private/app:{tag}", dst.host());
    let object = "ImageRepository flux-system/app";

    // Copied with the configured credentials, the Secret's problem shown with the object.
    let missing = json!([{"object": object, "problem": "Secret flux-system/pull not found"}]);
    wait_entry(&daemon, &target("2.0"), &missing, "mirrored").await;
    assert_eq!(tag_puts(&dst), puts(&[("app/private/app:2.0", 1)]));

    // The same scan, without spec.secretRef: the problem is gone, nothing is copied again.
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["2.0"]))))
        .unwrap();
    let cleared = json!([{"object": object}]);
    wait_entry(&daemon, &target("2.0"), &cleared, "mirrored").await;
    wait_logged(&daemon.run, "ImageRepository spec.secretRef problem gone").await;

    // The next revision is mirrored with the configured credentials, without a problem.
    push_tags(&src, "private/app", &["2.1"]).await;
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-2", &["2.1", "2.0"]))))
        .unwrap();
    wait_entry(&daemon, &target("2.1"), &cleared, "mirrored").await;

    // spec.secretRef named again, the revision the same: the Secret is read again at once.
    server
        .apply(repository(
            "v1",
            "app",
            &image,
            Some("pull"),
            Some(("rev-2", &["2.1", "2.0"])),
        ))
        .unwrap();
    wait_entry(&daemon, &target("2.1"), &missing, "mirrored").await;
    let (log, metrics) = stop_showing_no_credential(daemon, user, &[pass]).await;
    assert!(
        log.contains("ImageRepository spec changed: its tags declared again"),
        "{log}"
    );
    let want = puts(&[("app/private/app:2.0", 1), ("app/private/app:2.1", 1)]);
    assert_eq!(tag_puts(&dst), want, "{log}");
    // The Secret read at the first scan and when named again: an object without it reads none.
    let gets = server
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.contains("/secrets"))
        .count();
    assert_eq!(gets, 2, "{log}");
    let not_found = r#"k8s_copycat_flux_secret_ref_errors_total{reason="not_found"} 2"#;
    assert!(metrics.lines().any(|l| l == not_found), "{metrics}");
    eprintln!("figures: Secret GETs {gets}; target tag writes {:?}", tag_puts(&dst));
}

#[tokio::test]
async fn v1beta2_when_the_crd_serves_only_it_and_off_without_the_crd_or_the_setting() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push_tags(&src, "org/app", &["3.0"]).await;
    let image = format!("{}/org/app", src.host());
    let enabled = config_file("fluxImageRepositories:\n  enabled: true\n");

    // A cluster whose Flux serves v1beta2 only (before Flux 2.7).
    let (server, running) = cluster(&["v1beta2"]);
    server
        .apply(repository("v1beta2", "app", &image, None, Some(("rev-1", &["3.0"]))))
        .unwrap();
    let daemon = start_daemon(&running, &dst, &enabled, "watching Flux ImageRepository objects").await;
    eventually("the v1beta2 object's tag copied", WAIT, async || {
        tag_puts(&dst) == puts(&[("org/app:3.0", 1)])
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("version=\"v1beta2\""), "{log}");

    // No CRD: enabled, but nothing is watched (the stand-in would serve the objects regardless).
    let dst = start(RegistryMode::Plain);
    let (server, running) = cluster(&[]);
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["3.0"]))))
        .unwrap();
    let daemon = start_daemon(&running, &dst, &enabled, "the CRD is not installed").await;
    // Not enabled: the CRD is there, the object has a scan, nothing happens.
    let (server_off, running_off) = cluster(&["v1"]);
    server_off
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["3.0"]))))
        .unwrap();
    let off = daemon_started(&running_off, &dst).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = off.get("/metrics").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let (code_off, log_off) = off.stop();
    assert_eq!(code_off, Some(0), "{log_off}");
    assert!(tag_puts(&dst).is_empty(), "nothing copied:\n{log}\n{log_off}");
    assert!(!log.contains("watching Flux ImageRepository objects"), "{log}");
    assert!(!log_off.contains("ImageRepository"), "{log_off}");
    assert!(!metrics.contains("k8s_copycat_flux_"), "no Flux metrics when off");
    let flux_requests = |s: &ApiServer| {
        s.requests()
            .iter()
            .filter(|(_, p)| p.starts_with("/apis/image.toolkit.fluxcd.io/"))
            .count()
    };
    assert_eq!((flux_requests(&server), flux_requests(&server_off)), (0, 0));
}

/// The daemon with the default configuration (Flux not enabled), once its workload watches listed.
async fn daemon_started(running: &RunningApiServer, dst: &Registry) -> Daemon {
    let none = config_file("");
    start_daemon(running, dst, &none, "initial list complete").await
}

/// Two replicas: only the leader mirrors a scan; when it stops, the new leader mirrors every object's
/// current scan once (a tag already copied costs no write) and follows new revisions. The copies
/// are in the leader's backup coverage, never in a follower's.
#[tokio::test]
async fn only_the_leader_mirrors_and_a_new_leader_takes_over_the_scans() {
    use crate::leader::{TAKEOVER, two_replicas_with};
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push_tags(&src, "org/app", &["1.0", "1.1"]).await;
    let image = format!("{}/org/app", src.host());
    let (server, running) = cluster(&["v1"]);
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["1.0"]))))
        .unwrap();
    let config = config_file("fluxImageRepositories:\n  enabled: true\n");
    let env = [("CONFIG_PATH", config.path().to_str().unwrap())];
    let (leader, follower) = two_replicas_with(&server, running.kubeconfig_path(), &dst.host(), &env).await;
    let first = puts(&[("org/app:1.0", 1)]);
    eventually("the leader's copy", WAIT, async || tag_puts(&dst) == first).await;
    // (images, verified) in a replica's backup summary: the leader covers the declared copies, a
    // follower nothing.
    let covered = async |daemon: &crate::leader::Daemon| {
        let summary = daemon.json("/status/summary").await;
        let s = &summary["summary"];
        (s["images"].as_u64(), s["verified"].as_u64())
    };
    eventually("the leader's copy verified", WAIT, async || {
        covered(&leader).await == (Some(1), Some(1))
    })
    .await;
    assert_eq!(covered(&follower).await, (Some(0), Some(0)));
    let scan_changed = "ImageRepository scan changed";
    let (code, log) = leader.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(scan_changed), "{log}");
    assert!(
        !follower.run.log().contains(scan_changed),
        "the follower declares nothing:\n{}",
        follower.run.log()
    );

    eventually("the follower to take over", TAKEOVER, async || {
        follower.leader_gauge().await == Some(1.0)
    })
    .await;
    wait_logged(&follower.run, scan_changed).await;
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-2", &["1.1", "1.0"]))))
        .unwrap();
    let both = puts(&[("org/app:1.0", 1), ("org/app:1.1", 1)]);
    eventually("the new revision copied by the new leader", WAIT, async || {
        tag_puts(&dst) == both
    })
    .await;
    eventually("the new leader's copies verified", WAIT, async || {
        covered(&follower).await == (Some(2), Some(2))
    })
    .await;
    let (code, log) = follower.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.matches(scan_changed).count(),
        2,
        "the current scan once on taking over, then rev-2:\n{log}"
    );
    assert_eq!(tag_puts(&dst), both, "1.0 is not written again");
}

/// The copies a scan declares are part of the continuous coverage: verified once copied
/// (`/status`, `/status/summary`); a new revision whose latest tags leave one out takes that copy
/// out of `/status` and the coverage; one naming a tag the source lacks has that copy listed as
/// failed in the summary with `declaredBy` naming the object.
#[tokio::test]
async fn declared_copies_are_verified_and_leave_the_coverage_with_their_revision() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push_tags(&src, "org/app", &["1.0", "1.1"]).await;
    let image = format!("{}/org/app", src.host());
    let (server, running) = cluster(&["v1"]);
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-1", &["1.1", "1.0"]))))
        .unwrap();
    let config = config_file(
        "fluxImageRepositories:\n  enabled: true\n  namespaces: [flux-system]\n  destinationPrefix: flux/$namespace\nverifyInterval: 2s\n",
    );
    let daemon = start_daemon(&running, &dst, &config, "watching Flux ImageRepository objects").await;
    let target = |tag: &str| format!("{}/flux/flux-system/org/app:{tag}", dst.host());
    // The backup state of each target in /status, and the summary's (images, verified).
    let coverage = async || {
        let (_, status) = daemon.json("GET", "/status", None).await;
        let mut states: Vec<(String, String)> = status
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["target"].as_str().unwrap_or_default().to_owned(),
                    e["backup"]["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        states.sort();
        let (_, summary) = daemon.json("GET", "/status/summary", None).await;
        let s = &summary["summary"];
        (states, s["images"].as_u64(), s["verified"].as_u64())
    };
    let verified = |tags: &[&str]| {
        let states = tags.iter().map(|t| (target(t), "verified".to_owned())).collect();
        (states, Some(tags.len() as u64), Some(tags.len() as u64))
    };
    let want = verified(&["1.0", "1.1"]);
    eventually("both copies verified", WAIT, async || coverage().await == want).await;

    // The next revision's latest tags leave 1.0 out: its copy leaves the coverage.
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-2", &["1.1"]))))
        .unwrap();
    let want = verified(&["1.1"]);
    eventually("1.0 out of the coverage", WAIT, async || coverage().await == want).await;

    // A revision naming a tag the source does not have: the summary lists its copy among the
    // unverified images with the object declaring it.
    server
        .apply(repository("v1", "app", &image, None, Some(("rev-3", &["1.2", "1.1"]))))
        .unwrap();
    let listed = async || {
        let (_, summary) = daemon.json("GET", "/status/summary", None).await;
        let unverified = summary["unverified"].as_array().cloned().unwrap_or_default();
        let listed: Vec<(String, String, Value)> = unverified
            .iter()
            .map(|i| {
                let (target, state) = (i["target"].as_str(), i["state"].as_str());
                (
                    target.unwrap_or_default().to_owned(),
                    state.unwrap_or_default().to_owned(),
                    i["declaredBy"].clone(),
                )
            })
            .collect();
        listed
    };
    let want = vec![(
        target("1.2"),
        "failed".to_owned(),
        json!(["ImageRepository flux-system/app"]),
    )];
    eventually("1.2 listed as failed with its object", WAIT, async || {
        listed().await == want
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}
