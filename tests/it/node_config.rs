//! `copycat node-config` as an operator runs it: the built binary reads the stand-in API server and
//! writes the files; skopeo (containers-image, the library CRI-O pulls with) then pulls through the
//! CRI-O drop-in, and containerd through the `hosts.toml` files, from real registries, with the
//! upstream up and with it stopped.

use std::collections::BTreeSet;
use std::path::Path;

use testkit::apiserver::ApiServer;
use testkit::skopeo::run_skopeo;
use testkit::{Containerd, Image, Registry, RegistryMode};

use crate::commands::{copycat, text};
use crate::discovery::workload;
use crate::support::start;

/// A config file: a docker target with a path, `repoPrefix` `prefix`, insecure (plain HTTP), quay.io
/// excluded, a pathMap prefix rule moving `tools/` to `vendor/tools/`, and `source` a plain-HTTP
/// source registry.
fn config_file(dir: &Path, target: &str, prefix: &str, source: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "targetKind: docker\ndocker:\n  registry: {target}/base\n  repoPrefix: {prefix:?}\n  insecure: true\n\
             excludeRegistries: [quay.io]\npathMap:\n  - from: tools\n    to: vendor/tools\n\
             registries:\n  - host: {source:?}\n    insecure: true\n"
        ),
    )
    .unwrap();
    path
}

/// `copycat node-config ARGS…` with `config`.
fn node_config(config: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["node-config"];
    all.extend(args);
    copycat(&all, &[("CONFIG_PATH", config.to_str().unwrap())])
}

/// The manifest requests `reg` has logged.
fn manifest_requests(reg: &Registry) -> usize {
    reg.requests().iter().filter(|r| r.path.contains("/manifests/")).count()
}

/// The raw manifest of `reference` as skopeo pulls it with `registries_conf` (no TLS flags: the
/// file's `insecure` decides).
async fn pull_through(registries_conf: &Path, reference: &str) -> anyhow::Result<String> {
    let raw = run_skopeo(&[
        format!("--registries-conf={}", registries_conf.display()),
        "inspect".into(),
        "--raw".into(),
        "--no-creds".into(),
        format!("docker://{reference}"),
    ])
    .await?;
    Ok(testkit::sha256_digest(&raw))
}

/// Issue 14 part 4: the registries come from one list of the cluster (the excluded one left out);
/// the CRI-O drop-in parses, names every registry with the mirror path the daemon names, follows the
/// pathMap prefix rule, and works: skopeo pulls from the upstream while it is up (the mirror is not
/// asked) and from the mirror once it is stopped, for a plain and a pathMap-moved image.
#[tokio::test]
async fn crio_drop_in_pulls_from_the_mirror_when_the_upstream_is_down() {
    let (mut src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci_index(&[2000, 1000], true, 1500).unwrap();
    let migrate = Image::oci("amd64", &[1500], 1501).unwrap();
    web.push(&src, "shop/web", "1.0").await.unwrap();
    migrate.push(&src, "tools/migrate", "1").await.unwrap();
    // Where the daemon puts them: <path>/m/<$registry cleaned>/<pathMap(path)>.
    let src_registry = src.host().replace(':', "-");
    web.push(&dst, &format!("base/m/{src_registry}/shop/web"), "1.0")
        .await
        .unwrap();
    migrate
        .push(&dst, &format!("base/m/{src_registry}/vendor/tools/migrate"), "1")
        .await
        .unwrap();
    let src_host = src.host();
    let on = |r: &str| format!("{src_host}/{r}");
    let server = ApiServer::new();
    server
        .apply_all([
            workload(
                "Deployment",
                "apps/v1",
                "shop",
                "web",
                &[("web", &on("shop/web:1.0")), ("proxy", "nginx:1.27")],
            ),
            workload(
                "CronJob",
                "batch/v1",
                "ops",
                "nightly",
                &[("m", &on("tools/migrate:1"))],
            ),
            workload(
                "Deployment",
                "apps/v1",
                "ops",
                "agent",
                &[("a", "quay.io/vendor/agent:2")],
            ),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &dst.host(), "m/$registry", &src_host);
    let out_dir = dir.path().join("crio");
    let kubeconfig = api.kubeconfig_path().to_str().unwrap();
    let out = node_config(
        &config,
        &[
            "--format",
            "cri-o",
            "--kubeconfig",
            kubeconfig,
            "--output",
            out_dir.to_str().unwrap(),
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("copycat: configured 3 registries"), "{all}");

    let conf = out_dir.join("copycat-mirror.conf");
    let doc: toml::Table = std::fs::read_to_string(&conf).unwrap().parse().unwrap();
    let entries: Vec<(String, String, String)> = doc["registry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mirror = &e["mirror"].as_array().unwrap()[0];
            let s = |v: &toml::Value, k: &str| v[k].as_str().unwrap().to_owned();
            (s(e, "prefix"), s(e, "location"), s(mirror, "location"))
        })
        .collect();
    let m = format!("{}/base/m", dst.host());
    let want: Vec<(String, String, String)> = [
        (&*on(""), format!("{m}/{src_registry}"), &*src_host),
        (&*on("tools"), format!("{m}/{src_registry}/vendor/tools"), &*on("tools")),
        ("docker.io", format!("{m}/docker.io"), "docker.io"),
        (
            "docker.io/tools",
            format!("{m}/docker.io/vendor/tools"),
            "docker.io/tools",
        ),
        ("registry-1.docker.io", format!("{m}/docker.io"), "registry-1.docker.io"),
        (
            "registry-1.docker.io/tools",
            format!("{m}/docker.io/vendor/tools"),
            "registry-1.docker.io/tools",
        ),
    ]
    .into_iter()
    .map(|(prefix, location, upstream)| (prefix.trim_end_matches('/').to_owned(), location, upstream.to_owned()))
    .collect();
    assert_eq!(entries, want, "{}", std::fs::read_to_string(&conf).unwrap());

    // Upstream up: served by it, the mirror not asked.
    let before = manifest_requests(&dst);
    assert_eq!(pull_through(&conf, &on("shop/web:1.0")).await.unwrap(), web.digest);
    assert_eq!(
        manifest_requests(&dst),
        before,
        "the mirror was asked while the upstream is up"
    );
    // Upstream down: served by the mirror, the pathMap-moved image too.
    src.stop();
    assert_eq!(pull_through(&conf, &on("shop/web:1.0")).await.unwrap(), web.digest);
    assert_eq!(
        pull_through(&conf, &on("tools/migrate:1")).await.unwrap(),
        migrate.digest
    );
    assert!(manifest_requests(&dst) > before);
    // Without the drop-in the pull fails: the mirror is what served it.
    let empty = dir.path().join("empty.conf");
    std::fs::write(&empty, "").unwrap();
    assert!(pull_through(&empty, &on("shop/web:1.0")).await.is_err());
}

/// containerd: one `hosts.toml` per registry (Docker Hub under both names it is pulled by), the
/// upstream a `[host]` and the mirror `server` by default, the other way round with
/// `--mirror-first`; the pathMap rule, which containerd cannot follow, is named in the file and on
/// stderr. `--registry` needs no cluster.
#[test]
fn containerd_hosts_files_for_the_named_registries() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "mirror.example:5000", "m/$registry", "ghcr.io");
    for (mirror_first, out_dir) in [(false, dir.path().join("a")), (true, dir.path().join("b"))] {
        let mut args = vec![
            "--format",
            "containerd",
            "--registry",
            "docker.io",
            "--registry",
            "ghcr.io",
            "--output",
            out_dir.to_str().unwrap(),
        ];
        if mirror_first {
            args.push("--mirror-first");
        }
        let out = node_config(&config, &args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(
            all.contains("ghcr.io: not served by the mirror: images under ghcr.io/tools are kept at"),
            "{all}"
        );
        let dirs: BTreeSet<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            dirs,
            ["docker.io", "ghcr.io", "registry-1.docker.io"]
                .map(str::to_owned)
                .into()
        );
        for (registry, upstream, mirror_path) in [
            ("docker.io", "https://registry-1.docker.io", "m/docker.io"),
            ("registry-1.docker.io", "https://registry-1.docker.io", "m/docker.io"),
            ("ghcr.io", "https://ghcr.io", "m/ghcr.io"),
        ] {
            let file = std::fs::read_to_string(out_dir.join(registry).join("hosts.toml")).unwrap();
            let doc: toml::Table = file.parse().unwrap_or_else(|e| panic!("{e}\n{file}"));
            let mirror = format!("https://mirror.example:5000/v2/base/{mirror_path}");
            let (server, host) = if mirror_first {
                (upstream, mirror.as_str())
            } else {
                (mirror.as_str(), upstream)
            };
            assert_eq!(doc["server"].as_str(), Some(server), "{file}");
            let hosts = doc["host"].as_table().unwrap();
            assert_eq!(hosts.keys().collect::<Vec<_>>(), [host], "{file}");
            let mirror_keys = if mirror_first {
                hosts[host].as_table().unwrap()
            } else {
                &doc
            };
            assert_eq!(mirror_keys["override_path"].as_bool(), Some(true), "{file}");
            assert_eq!(mirror_keys["skip_verify"].as_bool(), Some(true), "{file}");
            // ghcr.io is an insecure source here (`registries[].insecure`): kept for the upstream.
            let upstream_keys = if mirror_first {
                &doc
            } else {
                hosts[host].as_table().unwrap()
            };
            assert_eq!(
                upstream_keys.get("skip_verify").and_then(toml::Value::as_bool),
                (registry == "ghcr.io").then_some(true),
                "{file}"
            );
            assert!(
                file.contains(&format!("# Not served by the mirror: images under {registry}/tools")),
                "{file}"
            );
        }
    }
}

/// With an ECR target the mirror is the ECR registry host (derived from account and region); nothing
/// is asked of AWS.
#[test]
fn an_ecr_mirror_is_its_registry_host() {
    let out = copycat(
        &["node-config", "--format", "containerd", "--registry", "ghcr.io"],
        &[
            ("TARGET_KIND", "ecr"),
            ("ECR_ACCOUNT_ID", "123456789012"),
            ("AWS_REGION", "eu-west-1"),
            ("ECR_REPO_PREFIX", "mirror/$registry"),
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = stdout.split_once("# ---- ghcr.io/hosts.toml ----\n").unwrap().1;
    let doc: toml::Table = file.parse().unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(
        doc["server"].as_str(),
        Some("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/v2/mirror/ghcr.io"),
        "{stdout}"
    );
    assert_eq!(
        doc["host"].as_table().unwrap().keys().collect::<Vec<_>>(),
        ["https://ghcr.io"]
    );
}

/// A prefix with per-workload placeholders cannot be expressed: every registry is listed with the
/// reason, nothing is written, exit 1. A bad registry, format or kubeconfig is a usage error (exit 2).
#[test]
fn registries_a_node_cannot_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "mirror.example", "$namespace/$registry", "ghcr.io");
    let out_dir = dir.path().join("out");
    let out = node_config(
        &config,
        &[
            "--format",
            "containerd",
            "--registry",
            "ghcr.io",
            "--output",
            out_dir.to_str().unwrap(),
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("ghcr.io: not configured: the target path depends on $namespace"),
        "{all}"
    );
    assert!(!out_dir.exists(), "nothing written");
    let out = node_config(&config, &["--format", "cri-o", "--registry", "quay.io"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("quay.io: not configured: excludeRegistries"),
        "{}",
        text(&out)
    );
    let out = node_config(&config, &["--format", "cri-o", "--registry", "https://ghcr.io"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = node_config(&config, &["--format", "podman", "--registry", "ghcr.io"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Without --registry the cluster is read: no usable kubeconfig is a usage error naming both ways.
    let out = node_config(
        &config,
        &["--format", "cri-o", "--kubeconfig", "/nonexistent/kubeconfig"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("/nonexistent/kubeconfig") && all.contains("--registry HOST"),
        "{all}"
    );
}

/// The manifest and blob requests `reg` has logged (GET and HEAD).
fn content_requests(reg: &Registry) -> usize {
    reg.requests()
        .iter()
        .filter(|r| r.path.contains("/manifests/") || r.path.contains("/blobs/"))
        .count()
}

/// containerd itself (the Debian package, `ctr content fetch --hosts-dir` as its CRI plugin reads
/// `config_path`) pulls through the `hosts.toml` files, both registries over TLS without
/// verification (`registries[].insecure`, `docker.insecure`). Upstream first: served by the
/// upstream while it is up, the mirror not asked; with the upstream stopped, the manifest and every
/// blob come from the mirror under its path (`override_path`). `--mirror-first`: served by the
/// mirror, the upstream not asked; an image only the upstream holds comes from it after the
/// mirror's 404.
#[tokio::test]
async fn containerd_pulls_through_the_hosts_files() {
    let (mut src, dst) = (start(RegistryMode::Tls), start(RegistryMode::Tls));
    let containerd = Containerd::start().unwrap();
    let web = Image::oci_index(&[2000, 1000], true, 1510).unwrap();
    let api = Image::oci("amd64", &[1500], 1511).unwrap();
    let fresh = Image::oci("amd64", &[1600], 1512).unwrap();
    let src_host = src.host();
    let at_mirror = |repo: &str| format!("base/m/{}/{repo}", src_host.replace(':', "-"));
    for (image, repo, tag) in [(&web, "shop/web", "1.0"), (&api, "shop/api", "2")] {
        image.push(&src, repo, tag).await.unwrap();
        image.push(&dst, &at_mirror(repo), tag).await.unwrap();
    }
    fresh.push(&src, "shop/fresh", "3").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &dst.host(), "m/$registry", &src_host);
    let hosts_dirs = [false, true].map(|mirror_first| {
        let out_dir = dir
            .path()
            .join(if mirror_first { "mirror-first" } else { "upstream-first" });
        let mut args = vec![
            "--format",
            "containerd",
            "--registry",
            &src_host,
            "--output",
            out_dir.to_str().unwrap(),
        ];
        if mirror_first {
            args.push("--mirror-first");
        }
        let out = node_config(&config, &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        out_dir
    });
    let [upstream_first, mirror_first] = &hosts_dirs;
    let on = |r: &str| format!("{src_host}/{r}");
    // Fetches `reference` through `hosts` into store namespace `ns`: (upstream asked, mirror asked).
    let fetch = async |hosts: &Path, reference: &str, ns: &str| {
        let before = (content_requests(&src), content_requests(&dst));
        containerd
            .fetch(hosts, ns, reference)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
        (content_requests(&src) > before.0, content_requests(&dst) > before.1)
    };
    assert_eq!(
        fetch(upstream_first, &on("shop/web:1.0"), "a").await,
        (true, false),
        "upstream first, upstream up"
    );
    assert_eq!(
        fetch(mirror_first, &on("shop/api:2"), "b").await,
        (false, true),
        "mirror first"
    );
    assert_eq!(
        fetch(mirror_first, &on("shop/fresh:3"), "c").await,
        (true, true),
        "mirror first, not at the mirror"
    );
    src.stop();
    // A second containerd, whose content store holds nothing yet.
    let mirror_blobs_before = dst.requests().iter().filter(|r| r.path.contains("/blobs/")).count();
    let second = Containerd::start().unwrap();
    second
        .fetch(upstream_first, "d", &on("shop/web:1.0"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    let mirror_requests: Vec<String> = dst.requests().iter().map(|r| r.path.clone()).collect();
    // ctr fetches the index and this machine's platform: its config and layer.
    let blobs_from_mirror = dst.requests().iter().filter(|r| r.path.contains("/blobs/")).count() - mirror_blobs_before;
    assert!(blobs_from_mirror >= 2, "the blobs from the mirror: {mirror_requests:?}");
    assert!(
        mirror_requests
            .iter()
            .any(|p| p.starts_with(&format!("/v2/{}/manifests/1.0", at_mirror("shop/web")))),
        "the tag resolved at the mirror's path: {mirror_requests:?}"
    );
}
