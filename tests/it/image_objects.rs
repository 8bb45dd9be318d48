//! image-operator's `Image` objects followed by `copycat run` (the built binary) against the stand-in
//! API server (with the CRD installed) and real registries: docker-registry, and testkit's static
//! registry for a thousand tags.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::apiserver::{ApiFault, ApiServer, RunningApiServer};
use testkit::{Client, Image, Registry, RegistryMode, StaticRegistry, list_tags, manifest_digest};

use crate::on_the_fly::metric;
use crate::server::Daemon;
use crate::support::{config_file, copycat_requests, eventually, manifest_puts, start};

/// How long a test waits for something the daemon does.
const WAIT: Duration = Duration::from_secs(60);

const IMAGE_CRD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/manifests/crds/images.skopeo.io.yaml"
));

/// The stand-in with the `Image` CRD and namespace `shop`, serving.
pub(crate) fn cluster() -> (ApiServer, RunningApiServer) {
    let server = ApiServer::new();
    let crd: Value = serde_saphyr::from_str(IMAGE_CRD).unwrap();
    server.apply(crd).unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    let running = server.serve().expect("serve the stand-in API server");
    (server, running)
}

/// An `Image` object `shop/NAME` with `spec`.
pub(crate) fn image(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "skopeo.io/v1alpha1", "kind": "Image",
           "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

/// The daemon mirroring into `dst`, following `Image` objects with `settings` (YAML under `images:`).
fn daemon(running: &RunningApiServer, dst: &Registry, settings: &str, more: &str) -> (Daemon, tempfile::NamedTempFile) {
    let config = format!("images:\n  enabled: true\n{settings}referrers: none\nwatchResources: [deployments]\n{more}");
    daemon_with(running, dst, &config, &[])
}

/// The daemon mirroring into `dst` with the configuration file `config` and the environment `env`.
fn daemon_with(
    running: &RunningApiServer,
    dst: &Registry,
    config: &str,
    env: &[(&str, &str)],
) -> (Daemon, tempfile::NamedTempFile) {
    let config = config_file(config);
    let mut all = vec![("CONFIG_PATH", config.path().to_str().unwrap())];
    all.extend_from_slice(env);
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), dst, &all);
    (daemon, config)
}

/// The `Image` object `shop/app` copying `app` of `src` in `mode`, `version` (a tag or a pattern), to
/// `app` at copycat's target.
fn app_image(src: &Registry, mode: &str, version: &str) -> Value {
    let source = format!("{}/app", src.host());
    image(
        "app",
        json!({"mode": mode, "source": {"name": source, "version": version}, "destination": {"name": "app"}}),
    )
}

/// The status of `shop/NAME`, if written.
pub(crate) fn status(server: &ApiServer, name: &str) -> Value {
    server
        .get("Image", "shop", name)
        .and_then(|o| o.get("status").cloned())
        .unwrap_or(Value::Null)
}

/// The `status` (`True`/`False`) and reason of condition `type_`.
pub(crate) fn condition(status: &Value, type_: &str) -> (String, String) {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default()
}

/// `(tag, result)` of each tag in `status`.
pub(crate) fn tag_results(status: &Value) -> Vec<(String, String)> {
    status["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|t| {
                    (
                        t["tag"].as_str().unwrap().to_owned(),
                        t["result"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The field `field` of tag `tag` in `status`.
pub(crate) fn tag_field(status: &Value, tag: &str, field: &str) -> Option<String> {
    status["tags"]
        .as_array()?
        .iter()
        .find(|t| t["tag"] == tag)
        .and_then(|t| t[field].as_str().map(str::to_owned))
}

/// The reasons of the Warning Events on `shop/NAME`.
fn event_reasons(server: &ApiServer, name: &str) -> Vec<String> {
    server
        .list("Event", "shop")
        .iter()
        .filter(|e| e["involvedObject"]["kind"] == "Image" && e["involvedObject"]["name"] == name)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Pushes `image` to `repo` under each of `tags`.
async fn push(reg: &Registry, repo: &str, image: &Image, tags: &[&str]) {
    let client = Client::new(reg).unwrap();
    for tag in tags {
        client.push_image(repo, tag, image).await.unwrap();
    }
}

/// OneShot with a pattern copies exactly the tags matching it (candidates only when allowed), once;
/// an invalid pattern or frequency is reported on the object's status with its reason, and a copy
/// that fails is reported on the tag, in the `Failed` condition and in a Warning Event on the object.
#[tokio::test]
async fn one_shot_copies_exactly_the_matching_tags_and_bad_objects_are_reported() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image_v = Image::oci("amd64", &[1_000], 1).unwrap();
    let tags = ["v2.13.0", "v2.13.2", "v2.13.3-rc1", "v2.14.0", "latest", "v2.13"];
    push(&src, "argoproj/argocd", &image_v, &tags).await;
    let (server, running) = cluster();
    let source = format!("{}/argoproj/argocd", src.host());
    let objects = [
        image(
            "argocd",
            json!({"mode": "OneShot", "source": {"name": source, "version": "v2.13.x"},
            "destination": {"name": "argoproj/argocd", "version": "v2.13.x"}}),
        ),
        image(
            "argocd-rc",
            json!({"mode": "OneShot", "allowCandidateRelease": true,
            "source": {"name": source, "version": "v2.13.x"}, "destination": {"name": "rc/argocd"}}),
        ),
        image(
            "bad-pattern",
            json!({"mode": "OneShot", "source": {"name": source, "version": "v2.x"},
            "destination": {"name": "argoproj/argocd"}}),
        ),
        image(
            "bad-frequency",
            json!({"mode": "Recurrent", "frequency": "15x",
            "source": {"name": source, "version": "latest"}, "destination": {"name": "argoproj/argocd"}}),
        ),
        image(
            "missing",
            json!({"mode": "OneShot", "source": {"name": format!("{}/no/such", src.host()), "version": "1.0"},
            "destination": {"name": "no/such"}}),
        ),
        // A field of the wrong type (a real API server's schema refuses it; the stand-in does not).
        image(
            "undecodable",
            json!({"mode": "OneShot", "source": {"name": 5, "version": "1.0"}, "destination": {"name": "x"}}),
        ),
    ];
    server.apply_all(objects).unwrap();
    let (daemon, _config) = daemon(&running, &dst, "", "");

    eventually("argocd and argocd-rc ready", WAIT, async || {
        condition(&status(&server, "argocd"), "Ready").0 == "True"
            && condition(&status(&server, "argocd-rc"), "Ready").0 == "True"
    })
    .await;
    let mut copied = list_tags(&dst, "argoproj/argocd").await.unwrap();
    copied.sort();
    assert_eq!(copied, ["v2.13.0", "v2.13.2"], "exactly the matching releases");
    let mut with_rc = list_tags(&dst, "rc/argocd").await.unwrap();
    with_rc.sort();
    assert_eq!(
        with_rc,
        ["v2.13.0", "v2.13.2", "v2.13.3-rc1"],
        "candidates when allowed"
    );
    let argocd = status(&server, "argocd");
    assert_eq!(
        tag_results(&argocd),
        [("v2.13.0".into(), "Copied".into()), ("v2.13.2".into(), "Copied".into())]
    );
    let digest = manifest_digest(&src, "argoproj/argocd", "v2.13.0").await.unwrap();
    assert_eq!(tag_field(&argocd, "v2.13.0", "sourceDigest"), digest);
    assert_eq!(
        tag_field(&argocd, "v2.13.0", "destination"),
        Some(format!("{}/argoproj/argocd:v2.13.0", dst.host()))
    );
    assert!(argocd["lastSyncTime"].is_string(), "{argocd}");
    assert_eq!(argocd["pendingTags"], 0);

    eventually("the invalid objects reported", WAIT, async || {
        condition(&status(&server, "bad-pattern"), "Failed") == ("True".into(), "InvalidPattern".into())
            && condition(&status(&server, "bad-frequency"), "Failed") == ("True".into(), "InvalidFrequency".into())
            && condition(&status(&server, "undecodable"), "Failed") == ("True".into(), "InvalidSpec".into())
    })
    .await;
    let message = status(&server, "bad-pattern")["conditions"][2]["message"].clone();
    assert!(message.as_str().unwrap().contains("\"v2.x\""), "{message}");

    eventually("the failed copy reported", WAIT, async || {
        let missing = status(&server, "missing");
        condition(&missing, "Failed") == ("True".into(), "CopyFailed".into())
            && tag_results(&missing) == [("1.0".to_owned(), "Failed".to_owned())]
            && event_reasons(&server, "missing").contains(&"MirrorFailed".to_owned())
    })
    .await;
    assert!(event_reasons(&server, "bad-pattern").contains(&"InvalidPattern".to_owned()));
    // Once: nothing is written again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let puts = manifest_puts(&dst);
    assert!(puts.values().all(|n| *n == 1), "{puts:?}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("watching Image objects"), "{log}");
}

/// OnceByTag picks up a tag pushed later within one tag-list interval, and a tag moved upstream
/// after its copy is reported (`Moved`, Warning Event `TagMoved`) and never copied again.
#[tokio::test]
async fn once_by_tag_picks_up_new_tags_and_never_recopies_a_moved_one() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let first = Image::oci("amd64", &[1_000], 2).unwrap();
    let moved = Image::oci("amd64", &[1_000], 3).unwrap();
    push(&src, "app", &first, &["1.0.0", "1.1.0", "2.0.0"]).await;
    let (server, running) = cluster();
    server.apply(app_image(&src, "OnceByTag", "1.x.x")).unwrap();
    let (daemon, _config) = daemon(&running, &dst, "  tagListInterval: 1s\n", "");
    let copied = async |tags: &[&str]| {
        let mut listed = list_tags(&dst, "app").await.unwrap_or_default();
        listed.sort();
        listed == tags
    };
    eventually("1.0.0 and 1.1.0 copied", WAIT, async || {
        copied(&["1.0.0", "1.1.0"]).await
    })
    .await;

    push(&src, "app", &first, &["1.2.0"]).await;
    let pushed = std::time::Instant::now();
    eventually("1.2.0 copied", WAIT, async || {
        copied(&["1.0.0", "1.1.0", "1.2.0"]).await
    })
    .await;
    let within = pushed.elapsed();

    let before = manifest_digest(&dst, "app", "1.1.0").await.unwrap();
    push(&src, "app", &moved, &["1.1.0"]).await;
    eventually("1.1.0 reported moved", WAIT, async || {
        let s = status(&server, "app");
        tag_field(&s, "1.1.0", "result").as_deref() == Some("Moved")
            && event_reasons(&server, "app").contains(&"TagMoved".to_owned())
    })
    .await;
    // A few more tag-list intervals: still not copied again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manifest_digest(&dst, "app", "1.1.0").await.unwrap(), before);
    let puts = manifest_puts(&dst);
    assert_eq!(puts.get("app:1.1.0"), Some(&1), "{puts:?}");
    let s = status(&server, "app");
    assert_eq!(condition(&s, "Ready"), ("True".into(), "SyncedWithMovedTags".into()));
    assert_eq!(
        event_reasons(&server, "app")
            .iter()
            .filter(|r| *r == "TagMoved")
            .count(),
        1,
        "one Event per move"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!("a tag pushed later was copied {within:?} after the push (tagListInterval 1s)");
    assert!(within < Duration::from_secs(10), "{within:?}");

    // The status is the memory: after a restart (and 1.0.0 moved meanwhile) nothing is copied
    // again, and the new move is reported.
    push(&src, "app", &moved, &["1.0.0"]).await;
    let (restarted, _config) = self::daemon(&running, &dst, "  tagListInterval: 1s\n", "");
    eventually("1.0.0 reported moved after the restart", WAIT, async || {
        tag_field(&status(&server, "app"), "1.0.0", "result").as_deref() == Some("Moved")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = manifest_puts(&dst);
    assert_eq!(after, puts, "nothing written after the restart");
    let (code, log) = restarted.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Recurrent copies the tag again every frequency: unchanged, that costs exactly two HEADs (source
/// and destination, nothing else); moved upstream, the destination follows within one frequency.
#[tokio::test]
async fn recurrent_recopies_a_moved_tag_and_costs_two_heads_when_unchanged() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let first = Image::oci("amd64", &[1_000], 4).unwrap();
    let second = Image::oci("amd64", &[1_000], 5).unwrap();
    push(&src, "nginx", &first, &["stable"]).await;
    let (server, running) = cluster();
    server
        .apply(image(
            "nginx",
            json!({"mode": "Recurrent", "frequency": "3s",
            "source": {"name": format!("{}/nginx", src.host()), "version": "stable"},
            "destination": {"name": "mirror/nginx"}}),
        ))
        .unwrap();
    let (daemon, _config) = daemon(&running, &dst, "", "");
    let tag_time = || tag_field(&status(&server, "nginx"), "stable", "time");
    eventually("stable copied", WAIT, async || {
        tag_field(&status(&server, "nginx"), "stable", "result").as_deref() == Some("Copied")
    })
    .await;
    // Wait for a refresh of the unchanged tag, then count what the next one asks.
    let copied_at = tag_time();
    eventually("a refresh", WAIT, async || tag_time() != copied_at).await;
    assert_eq!(
        tag_field(&status(&server, "nginx"), "stable", "result").as_deref(),
        Some("Present")
    );
    let (src_before, dst_before) = (copycat_requests(&src).len(), copycat_requests(&dst).len());
    let refreshed_at = tag_time();
    eventually("another refresh", WAIT, async || tag_time() != refreshed_at).await;
    let src_new: Vec<String> = copycat_requests(&src)[src_before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let dst_new: Vec<String> = copycat_requests(&dst)[dst_before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    eprintln!("one refresh of an unchanged tag: source {src_new:?}, destination {dst_new:?}");
    assert_eq!(src_new, ["HEAD /v2/nginx/manifests/stable"]);
    assert_eq!(dst_new, ["HEAD /v2/mirror/nginx/manifests/stable"]);

    push(&src, "nginx", &second, &["stable"]).await;
    let moved = manifest_digest(&src, "nginx", "stable").await.unwrap();
    let pushed = std::time::Instant::now();
    eventually("the moved tag copied again", Duration::from_secs(10), async || {
        manifest_digest(&dst, "mirror/nginx", "stable").await.unwrap() == moved
    })
    .await;
    let within = pushed.elapsed();
    eprintln!("a moved tag reached the destination {within:?} after the push (frequency 3s)");
    assert!(within <= Duration::from_secs(5), "{within:?}");
    eventually("the status says so", WAIT, async || {
        tag_field(&status(&server, "nginx"), "stable", "sourceDigest") == moved
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// A thousand matching tags: at most `maxTagsPerImage` are declared to the queue at a time (the
/// rest wait in `status.pendingTags`), all are copied in the end, and the daemon's memory stays
/// small.
#[tokio::test]
async fn a_thousand_tags_are_copied_at_most_max_tags_per_image_at_a_time() {
    let src = StaticRegistry::start().unwrap();
    src.set_tag_page_limit(100);
    let (digest, _) = src.put_image("big/app", 1);
    let versions: Vec<String> = (0..1_000).map(|i| format!("1.{}.{}", i / 100, i % 100)).collect();
    for tag in versions.iter().map(String::as_str).chain(["latest", "2.0.0"]) {
        src.tag("big/app", tag, &digest);
    }
    let dst = start(RegistryMode::Plain);
    let (server, running) = cluster();
    let (daemon, _config) = daemon(
        &running,
        &dst,
        "  maxTagsPerImage: 100\n",
        "maxConcurrentReconciles: 8\n",
    );
    eventually("the daemon watching", WAIT, async || {
        daemon.run.log().contains("watching Image objects")
    })
    .await;
    let idle_rss = peak_rss_kib(daemon.run.pid());
    server
        .apply(image(
            "big",
            json!({"mode": "OneShot",
            "source": {"name": format!("{}/big/app", src.host()), "version": "1.x.x"},
            "destination": {"name": "big/app"}}),
        ))
        .unwrap();
    let started = std::time::Instant::now();
    let mut most_busy = 0;
    let mut most_pending = 0;
    let deadline = started + Duration::from_secs(300);
    loop {
        assert!(std::time::Instant::now() < deadline, "not done within 300 s");
        let (_, body) = daemon.json("GET", "/status", None).await;
        let busy = body
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| matches!(e["state"].as_str(), Some("queued" | "running")))
                    .count()
            })
            .unwrap_or(0);
        most_busy = most_busy.max(busy);
        let s = status(&server, "big");
        most_pending = most_pending.max(s["pendingTags"].as_u64().unwrap_or(0));
        if condition(&s, "Ready").0 == "True" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let rss = peak_rss_kib(daemon.run.pid());
    let s = status(&server, "big");
    assert_eq!(s["tags"].as_array().unwrap().len(), 1_000);
    assert!(tag_results(&s).iter().all(|(_, r)| r == "Copied"));
    let mut copied = list_tags(&dst, "big/app").await.unwrap();
    copied.sort();
    let mut want = versions.clone();
    want.sort();
    assert_eq!(copied, want);
    eprintln!(
        "1,000 tags in {took:?}; at most {most_busy} in the queue at once, {most_pending} pending at most; daemon peak RSS {rss} KiB ({idle_rss} KiB before the object)"
    );
    assert!(most_busy <= 100, "{most_busy} targets queued or running at once");
    assert!(most_pending >= 800, "the rest waited: {most_pending}");
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// The peak resident set of process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Only the leader copies and writes status: while another replica holds the Lease nothing is
/// copied and the object's status stays empty; once the Lease is free, this replica takes it and
/// copies.
#[tokio::test]
async fn only_the_leader_copies_and_writes_status() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push(&src, "app", &Image::oci("amd64", &[1_000], 6).unwrap(), &["1.0.0"]).await;
    let (server, running) = cluster();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "k8s-copycat"}}))
        .unwrap();
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    server
        .apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "k8s-copycat", "namespace": "k8s-copycat"},
            "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600,
                     "acquireTime": now, "renewTime": now}}))
        .unwrap();
    server.apply(app_image(&src, "OneShot", "1.0.0")).unwrap();
    let (daemon, _config) = daemon_with(
        &running,
        &dst,
        "images:\n  enabled: true\nwatchResources: [deployments]\n",
        &[("LEADER_ELECT", "true"), ("HOSTNAME", "this-replica")],
    );
    eventually("the daemon following", WAIT, async || {
        daemon.run.log().contains("watching Image objects")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests: Vec<String> = copycat_requests(&dst)
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        requests.is_empty(),
        "a follower copied: {requests:?}\n{}",
        daemon.run.log()
    );
    assert_eq!(status(&server, "app"), Value::Null, "a follower wrote the status");

    // The other replica releases the Lease, as one does on shutdown.
    server
        .apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "k8s-copycat", "namespace": "k8s-copycat"},
            "spec": {"leaseDurationSeconds": 3600, "acquireTime": now, "renewTime": now}}))
        .unwrap();
    eventually("copied once leading", WAIT, async || {
        tag_field(&status(&server, "app"), "1.0.0", "result").as_deref() == Some("Copied")
    })
    .await;
    assert!(manifest_digest(&dst, "app", "1.0.0").await.unwrap().is_some());
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// A destination with a registry host goes to that registry with the credentials configured for it
/// (`registryCredentials`, password from an environment variable), never shown in the status, the
/// Events or the log.
#[tokio::test]
async fn a_destination_with_a_host_uses_its_configured_credentials() {
    let (user, pass) = ("mirror-user", "hunter2-Image-Pw");
    let src = start(RegistryMode::Plain);
    let other = start(RegistryMode::Basic {
        user: user.into(),
        pass: pass.into(),
    });
    let dst = start(RegistryMode::Plain);
    push(&src, "app", &Image::oci("amd64", &[1_000], 8).unwrap(), &["1.0.0"]).await;
    let (server, running) = cluster();
    server
        .apply(image(
            "app",
            json!({"mode": "OneShot",
            "source": {"name": format!("{}/app", src.host()), "version": "1.0.0"},
            "destination": {"name": format!("{}/elsewhere/app", other.host()), "version": "stable"}}),
        ))
        .unwrap();
    let more = format!(
        "registryCredentials:\n  - registry: {}\n    username: {user}\n    passwordEnv: OTHER_PASSWORD\n",
        other.host()
    );
    let config = config_file(&format!(
        "images:\n  enabled: true\nreferrers: none\nwatchResources: [deployments]\n{more}"
    ));
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            ("CONFIG_PATH", config.path().to_str().unwrap()),
            ("OTHER_PASSWORD", pass),
        ],
    );
    eventually("copied to the other registry", WAIT, async || {
        tag_field(&status(&server, "app"), "1.0.0", "result").as_deref() == Some("Copied")
    })
    .await;
    let s = status(&server, "app");
    assert_eq!(
        tag_field(&s, "1.0.0", "destination"),
        Some(format!("{}/elsewhere/app:stable", other.host()))
    );
    assert!(copycat_requests(&dst).is_empty(), "nothing went to copycat's target");
    let events = serde_json::to_string(&server.list("Event", "shop")).unwrap();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    crate::support::assert_no_secrets(
        &[
            ("the log", &log),
            ("the status", &s.to_string()),
            ("the Events", &events),
        ],
        &crate::support::credential_secrets(user, pass),
    );
}

/// Enabled without the CRD installed: the feature stays off, said once, and the daemon runs on.
#[tokio::test]
async fn enabled_without_the_crd_is_said_once_and_the_daemon_runs_on() {
    let dst = start(RegistryMode::Plain);
    let server = ApiServer::new();
    let running = server.serve().unwrap();
    let (daemon, _config) = daemon(&running, &dst, "", "");
    eventually("the warning", WAIT, async || {
        daemon.run.log().contains("enabled, but the CRD is not installed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("the CRD is not installed").count(), 1, "{log}");
    assert!(log.contains("images.enabled"), "{log}");
    assert!(!log.contains("watching Image objects"), "{log}");
}

/// An `Image` object's copy is part of the daemon's continuous coverage like a planned target: it
/// is verified once copied (`/status`, `/status/summary`, the metrics) and drilled; found missing
/// when its manifest is deleted at the destination, copied again in repair mode and verified again;
/// covered again after a restart (nothing copied); once the object is deleted, its target leaves
/// `/status` and the coverage.
#[tokio::test]
async fn an_image_objects_copy_is_verified_repaired_and_leaves_the_coverage_with_the_object() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let pushed = Image::oci("amd64", &[1_000], 7).unwrap();
    push(&src, "app", &pushed, &["1.0.0"]).await;
    let (server, running) = cluster();
    server.apply(app_image(&src, "OneShot", "1.0.0")).unwrap();
    let (daemon, _config) = daemon(
        &running,
        &dst,
        "  tagListInterval: 1s\n",
        "verifyInterval: 2s\nrestoreDrillInterval: 1s\n",
    );
    let target = format!("{}/app:1.0.0", dst.host());
    // The target's /status entry (its source and backup state) and the summary's (images, verified).
    let coverage = async |daemon: &Daemon| {
        let (_, status) = daemon.json("GET", "/status", None).await;
        let entry = status
            .as_array()
            .and_then(|all| all.iter().find(|e| e["target"] == target.as_str()).cloned());
        let entry = entry.map(|e| e["backup"]["state"].as_str().unwrap_or_default().to_owned());
        let (_, summary) = daemon.json("GET", "/status/summary", None).await;
        let s = &summary["summary"];
        (entry, s["images"].as_u64(), s["verified"].as_u64())
    };
    // Once copied, the copy stays declared (pinned to the digest copied: a OneShot copies it never
    // again by tag) and is verified.
    let digest = pushed.digest.clone();
    let verified = (Some("verified".to_owned()), Some(1), Some(1));
    let started = std::time::Instant::now();
    eventually("the copy verified", WAIT, async || coverage(&daemon).await == verified).await;
    let first = started.elapsed();
    assert_eq!(
        tag_field(&status(&server, "app"), "1.0.0", "result").as_deref(),
        Some("Copied")
    );
    let (_, metrics) = daemon.get("/metrics").await;
    assert_eq!(
        crate::server::sample(&metrics, r#"k8s_copycat_backup_images{state="verified"}"#),
        Some(1.0),
        "{metrics}"
    );
    // Restore drills take it like a planned target.
    eventually("a restore drill passed", WAIT, async || {
        let (_, summary) = daemon.json("GET", "/status/summary", None).await;
        summary["restoreDrill"]["passed"] == 1
    })
    .await;

    // Its manifest deleted at the destination: found missing, repaired, verified again.
    Client::new(&dst)
        .unwrap()
        .delete_manifest("app", &digest)
        .await
        .unwrap();
    assert_eq!(manifest_digest(&dst, "app", "1.0.0").await.unwrap(), None);
    let deleted = std::time::Instant::now();
    eventually("repaired and verified again", WAIT, async || {
        let (_, metrics) = daemon.get("/metrics").await;
        crate::server::sample(&metrics, "k8s_copycat_backup_repairs_total") == Some(1.0)
            && coverage(&daemon).await == verified
    })
    .await;
    let repaired = deleted.elapsed();
    assert_eq!(
        manifest_digest(&dst, "app", "1.0.0").await.unwrap(),
        Some(digest.clone())
    );
    assert!(
        daemon
            .run
            .log()
            .contains("backup check: the target does not hold the whole image"),
        "{}",
        daemon.run.log()
    );

    // After a restart, the finished OneShot's copy is covered again, without a copy.
    let puts = manifest_puts(&dst);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let (daemon, _config) = self::daemon(&running, &dst, "  tagListInterval: 1s\n", "verifyInterval: 2s\n");
    eventually("verified after the restart", WAIT, async || {
        coverage(&daemon).await == verified
    })
    .await;
    assert_eq!(manifest_puts(&dst), puts, "nothing written after the restart");

    // The object deleted: its target leaves /status and the coverage.
    server.delete("Image", "shop", "app").unwrap();
    let deleted = std::time::Instant::now();
    eventually("the target gone from the coverage", WAIT, async || {
        coverage(&daemon).await == (None, Some(0), Some(0))
    })
    .await;
    let gone = deleted.elapsed();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!(
        "verified {first:?} after the daemon started; repaired and verified {repaired:?} after the delete (verifyInterval 2s); out of the coverage {gone:?} after the object"
    );
}

/// `/status/summary` names the `Image` object that declares a target the backup lacks: an object
/// whose source tag does not exist is listed among the unverified images (`failed`, on the source
/// side) with `declaredBy`, while the copy of another object, verified, is counted and not listed.
#[tokio::test]
async fn the_summary_names_the_image_object_of_an_unverified_declared_target() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push(&src, "app", &Image::oci("amd64", &[1_000], 10).unwrap(), &["1.0.0"]).await;
    let (server, running) = cluster();
    let missing = image(
        "missing",
        json!({"mode": "OneShot", "source": {"name": format!("{}/no/such", src.host()), "version": "1.0"},
        "destination": {"name": "no/such"}}),
    );
    server
        .apply_all([app_image(&src, "OneShot", "1.0.0"), missing])
        .unwrap();
    let (daemon, _config) = daemon(
        &running,
        &dst,
        "",
        "verifyInterval: 2s
",
    );
    let started = std::time::Instant::now();
    let summary = async || daemon.json("GET", "/status/summary", None).await.1;
    eventually("one verified, one failed in the summary", WAIT, async || {
        let s = &summary().await["summary"];
        (s["images"].as_u64(), s["verified"].as_u64(), s["failed"].as_u64()) == (Some(2), Some(1), Some(1))
    })
    .await;
    let summary = summary().await;
    let listed = summary["unverified"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "the verified copy is not listed: {summary}");
    let entry = &listed[0];
    assert_eq!(entry["target"], format!("{}/no/such:1.0", dst.host()), "{summary}");
    assert_eq!(entry["image"], format!("{}/no/such:1.0", src.host()), "{summary}");
    assert_eq!(entry["state"], "failed", "{summary}");
    assert_eq!(entry["side"], "source", "{summary}");
    assert_eq!(entry["declaredBy"], json!(["Image shop/missing"]), "{summary}");
    assert_eq!(entry["users"], json!([]), "no workload uses it: {summary}");
    eprintln!(
        "the declared target listed with its object {:?} after the start",
        started.elapsed()
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // The check's warning names the object too.
    let warned = log
        .lines()
        .find(|l| l.contains("backup check: the target does not hold the whole image") && l.contains("no/such"));
    assert!(
        warned.is_some_and(|l| l.contains("declared_by=Image shop/missing")),
        "{log}"
    );
}

/// The `referrersInterval` sweep reaches an `OnceByTag` object's copies too: a re-sign upstream of
/// the digest copied arrives within the interval, while the tag, moved upstream meanwhile, is not
/// copied again (the copy stays declared by the digest it copied).
#[tokio::test]
async fn the_referrers_sweep_brings_a_new_signature_of_a_once_by_tag_copy() {
    use testkit::artifacts::{self, Subject};
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let first = Image::oci("amd64", &[1_000], 8).unwrap();
    let moved = Image::oci("amd64", &[1_000], 9).unwrap();
    push(&src, "app", &first, &["1.0.0"]).await;
    let subject = Subject::of(&first);
    let sig_tag = subject.cosign_tag("sig");
    let signed = artifacts::cosign_signature(&subject, "app", 1, 1);
    signed.push(&src, "app", &sig_tag).await.unwrap();
    let (server, running) = cluster();
    server.apply(app_image(&src, "OnceByTag", "1.x.x")).unwrap();
    // The sweep alone: the periodic verification would find the new signature missing and repair
    // the copy too.
    let (daemon, _config) = daemon_with(
        &running,
        &dst,
        "images:\n  enabled: true\n  tagListInterval: 1s\nwatchResources: [deployments]\n",
        &[("REFERRERS_INTERVAL", "3s"), ("VERIFY_INTERVAL", "0")],
    );
    let signature_at_target = async || manifest_digest(&dst, "app", &sig_tag).await.unwrap();
    eventually("the copy and its signature at the target", WAIT, async || {
        signature_at_target().await == Some(signed.digest.clone())
    })
    .await;

    // The tag moves upstream, then the digest copied is signed again.
    push(&src, "app", &moved, &["1.0.0"]).await;
    eventually("1.0.0 reported moved", WAIT, async || {
        tag_field(&status(&server, "app"), "1.0.0", "result").as_deref() == Some("Moved")
    })
    .await;
    let resigned = artifacts::cosign_signature(&subject, "app", 2, 1);
    resigned.push(&src, "app", &sig_tag).await.unwrap();
    let pushed = std::time::Instant::now();
    eventually("the re-sign at the target", Duration::from_secs(15), async || {
        signature_at_target().await == Some(resigned.digest.clone())
    })
    .await;
    let within = pushed.elapsed();
    assert_eq!(
        manifest_digest(&dst, "app", "1.0.0").await.unwrap(),
        Some(first.digest.clone()),
        "the moved tag is not copied again"
    );
    assert_eq!(manifest_puts(&dst).get("app:1.0.0"), Some(&1));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!("a re-sign of a OnceByTag copy reached the target {within:?} after the push (referrersInterval 3s)");
}

/// A status write the API server refuses (403 as RBAC words it, 409, 422) is logged, counted in
/// `k8s_copycat_status_write_errors_total` by reason and retried until written; the copy itself is
/// not affected.
#[tokio::test]
async fn a_refused_status_write_is_counted_by_reason_and_the_copy_goes_on() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    push(&src, "org/app", &Image::oci("amd64", &[1_000], 2).unwrap(), &["1.0"]).await;
    let (server, running) = cluster();
    // The next three status patches are refused, one per reason, in this order.
    server.inject(ApiFault::forbidden("images", "patch").times(1));
    server.inject(ApiFault::refused_write(409).on("images", "patch").times(1));
    server.inject(ApiFault::refused_write(422).on("images", "patch").times(1));
    server
        .apply(image(
            "app",
            json!({"mode": "OneShot", "source": {"name": format!("{}/org/app", src.host()), "version": "1.0"},
                   "destination": {"name": "org/app"}}),
        ))
        .unwrap();
    let (daemon, _config) = daemon(&running, &dst, "", "");

    eventually("the tag copied", WAIT, async || {
        list_tags(&dst, "org/app").await.is_ok_and(|t| t == ["1.0"])
    })
    .await;
    let series =
        |reason: &str| format!(r#"k8s_copycat_status_write_errors_total{{reason="{reason}",resource="images"}}"#);
    eventually("the forbidden write counted", WAIT, async || {
        metric(&daemon, &series("forbidden")).await.as_deref() == Some("1")
    })
    .await;
    eventually("the status written at last", WAIT, async || {
        condition(&status(&server, "app"), "Ready").0 == "True"
    })
    .await;
    let counted: Vec<(&str, Option<String>)> = {
        let mut all = vec![];
        for reason in ["forbidden", "conflict", "invalid", "not_found", "other"] {
            all.push((reason, metric(&daemon, &series(reason)).await));
        }
        all
    };
    let status_patches = server
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "PATCH" && p.contains("/images/app/status"))
        .count();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let one = Some("1".to_owned());
    let zero = Some("0".to_owned());
    assert_eq!(
        counted,
        [
            ("forbidden", one.clone()),
            ("conflict", one.clone()),
            ("invalid", one),
            ("not_found", zero.clone()),
            ("other", zero)
        ],
        "{log}"
    );
    assert!(status_patches >= 4, "three refused, then written: {status_patches}");
    assert_eq!(
        log.matches("cannot write the Image's status").count(),
        3,
        "one warning per refusal: {log}"
    );
    assert_eq!(tag_results(&status(&server, "app")), [("1.0".into(), "Copied".into())]);
    let puts = manifest_puts(&dst);
    assert!(puts.values().all(|n| *n == 1), "copied once: {puts:?}");
    eprintln!("figures: {status_patches} status patches, 3 refused (forbidden, conflict, invalid), each counted once");
}
