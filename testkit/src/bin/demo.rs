//! `demo --copycat PATH`: copycat's main job in a couple of minutes, without a cluster.
//!
//! Starts a source and a target docker-registry and the stand-in Kubernetes API server (all on
//! 127.0.0.1, random ports), seeds the source with a few images, applies sample workloads that use
//! them, runs `PATH run` against it all (its log lines prefixed `copycat | `), waits until every
//! image the workloads use is at the target, changes the Deployment's image and waits for the new
//! one too, then prints a summary (digests checked with skopeo) and the target's catalog.
//! Exits 0 only if every expected target arrived with the source's digest.

use std::io::{BufRead as _, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{Image, Registry, RegistryMode, http_client, manifest_digest, skopeo_digest};

const USAGE: &str = "usage: demo --copycat PATH   (PATH: a built copycat binary, e.g. target/debug/copycat)";
/// Longest wait for each round of mirroring.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for copycat to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// `TARGET_REPO_PREFIX`: one folder per namespace under `demo/`.
const PREFIX: &str = "demo/$namespace";

/// One image a workload uses, and where copycat should put it.
#[derive(Clone)]
struct Expected {
    namespace: &'static str,
    repo: &'static str,
    tag: &'static str,
    used_by: &'static str,
    digest: String,
}

impl Expected {
    fn target_repo(&self) -> String {
        format!("{}/{}", PREFIX.replace("$namespace", self.namespace), self.repo)
    }
}

/// The copycat process; killed on drop if still running.
struct Copycat(Child);

impl Copycat {
    /// Starts `copycat run` with its metrics and health listeners on the given loopback addresses
    /// (its defaults listen on every interface).
    fn start(
        bin: &PathBuf,
        kubeconfig: &std::path::Path,
        target: &str,
        [metrics, health]: [&str; 2],
    ) -> anyhow::Result<Copycat> {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--log-level", "info"])
            .args(["--metrics-bind-address", metrics, "--health-probe-bind-address", health])
            // Hermetic: only the settings below, no config file, no proxies.
            .env_clear()
            .env("CONFIG_PATH", "/dev/null")
            .env("TARGET_KIND", "docker")
            .env("TARGET_REGISTRY", target)
            .env("TARGET_REPO_PREFIX", PREFIX)
            .env("LEADER_ELECT", "false")
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its log goes through our pipe, so it cannot see a terminal: colour only when we print to one.
        if !std::io::stdout().is_terminal() {
            cmd.env("NO_COLOR", "1");
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    println!("copycat | {line}");
                }
            });
        }
        Ok(Copycat(child))
    }

    /// Fails if copycat has already exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("copycat exited early ({status}); see its log above"),
            None => Ok(()),
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; SIGKILL if it does not come.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.0.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.0.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                bail!("copycat did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Copycat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> anyhow::Result<PathBuf> {
    let mut copycat = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--copycat" => copycat = Some(PathBuf::from(it.next().context(USAGE)?)),
            a if a.starts_with("--copycat=") => copycat = Some(PathBuf::from(&a["--copycat=".len()..])),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let copycat = copycat.context(USAGE)?;
    anyhow::ensure!(
        copycat.is_file(),
        "{} does not exist; build it first (cargo build --release --bin copycat)",
        copycat.display()
    );
    Ok(copycat)
}

async fn run() -> anyhow::Result<bool> {
    let bin = parse_args()?;

    step("starting a source and a target registry (docker-registry) on 127.0.0.1");
    let src = Registry::start(RegistryMode::Plain).context("starting the source registry")?;
    let dst = Registry::start(RegistryMode::Plain).context("starting the target registry")?;
    println!("  source: {}   target: {}", src.host(), dst.host());

    step("seeding the source registry");
    let seeds: Vec<(&str, &str, Image, &str)> = vec![
        (
            "shop/web",
            "1.0",
            Image::oci_index(&[40_000], true, 1)?,
            "OCI index amd64+arm64 with attestations",
        ),
        (
            "shop/web",
            "2.0",
            Image::oci_index(&[40_000], true, 2)?,
            "OCI index amd64+arm64 with attestations",
        ),
        (
            "library/redis",
            "7.2",
            Image::docker_manifest_list(&[30_000], 3)?,
            "Docker manifest list amd64+arm64",
        ),
        (
            "tools/envoy",
            "1.30",
            Image::docker("amd64", &[20_000], 4)?,
            "Docker schema2, linux/amd64",
        ),
        (
            "infra/node-exporter",
            "1.8.1",
            Image::oci("amd64", &[20_000], 5)?,
            "OCI image, linux/amd64",
        ),
        (
            "batch/backup",
            "2024.11",
            Image::oci("arm64", &[10_000], 6)?,
            "OCI image, linux/arm64/v8",
        ),
        (
            "batch/migrate",
            "v3",
            Image::docker("amd64", &[10_000], 7)?,
            "Docker schema2, linux/amd64",
        ),
    ];
    let mut digests = std::collections::HashMap::new();
    for (repo, tag, image, what) in &seeds {
        let digest = image
            .push(&src, repo, tag)
            .await
            .with_context(|| format!("pushing {repo}:{tag}"))?;
        println!("  {:<40} {}  {what}", format!("{repo}:{tag}"), short(&digest));
        digests.insert((*repo, *tag), digest);
    }
    let expect = |namespace, repo, tag, used_by| Expected {
        namespace,
        repo,
        tag,
        used_by,
        digest: digests[&(repo, tag)].clone(),
    };

    step("applying sample workloads to the stand-in API server");
    let s = src.host();
    let server = ApiServer::new();
    for obj in workloads(&s, &digests) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("-").to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        server
            .apply(obj)
            .map_err(|e| anyhow::anyhow!("applying {kind} {name}: {e}"))?;
        if kind != "Namespace" {
            println!("  {:<12} {ns}/{name}", kind);
        }
    }
    let running = server.serve().context("serving the stand-in API server")?;
    println!(
        "  API server: {}   kubeconfig: {}",
        running.url(),
        running.kubeconfig_path().display()
    );

    let mut expected = vec![
        expect(
            "storefront",
            "shop/web",
            "1.0",
            "Deployment web (+ its ReplicaSet and Pods)",
        ),
        expect("storefront", "tools/envoy", "1.30", "Deployment web, init container"),
        expect("storefront", "library/redis", "7.2", "StatefulSet redis"),
        expect("monitoring", "infra/node-exporter", "1.8.1", "DaemonSet node-exporter"),
        expect("batch", "batch/backup", "2024.11", "CronJob nightly-backup"),
        expect("batch", "batch/migrate", "v3", "Job migrate-db"),
    ];

    step(&format!(
        "running {} run (TARGET_KIND=docker TARGET_REGISTRY={} TARGET_REPO_PREFIX='{PREFIX}')",
        bin.display(),
        dst.host()
    ));
    let update = expect("storefront", "shop/web", "2.0", "Deployment web, after the update");
    let (metrics, health) = (free_loopback_address()?, free_loopback_address()?);
    let mut copycat = Copycat::start(&bin, running.kubeconfig_path(), &dst.host(), [&metrics, &health])?;

    let started = Instant::now();
    let all_arrived = wait_for(&dst, &expected, &mut copycat).await?.is_empty();
    expected.push(update.clone());
    if all_arrived {
        step(&format!(
            "all {} images mirrored after {:.1} s",
            expected.len() - 1,
            secs(started)
        ));

        step("rolling the Deployment storefront/web out to shop/web:2.0");
        server
            .apply(deployment(&s, "2.0"))
            .map_err(|e| anyhow::anyhow!("updating the Deployment: {e}"))?;
        let started = Instant::now();
        if wait_for(&dst, std::slice::from_ref(&update), &mut copycat)
            .await?
            .is_empty()
        {
            step(&format!(
                "the new image was mirrored {:.1} s after the update",
                secs(started)
            ));
        }
    }

    step(&format!("what copycat reports (GET http://{metrics}/status)"));
    match reported(&dst, &metrics).await {
        Ok(rows) => print_table(&["state", "target", "digest", "source", "used by"], &rows),
        Err(e) => println!("  {e:#}"),
    }

    step("stopping copycat (SIGTERM)");
    match copycat.stop() {
        Ok(status) => println!("  copycat exited: {status}"),
        Err(e) => println!("  {e:#}"),
    }

    step("summary (digests read back with skopeo)");
    let mut failures = Vec::new();
    let rows: Vec<[String; 5]> = {
        let mut rows = Vec::new();
        for e in &expected {
            let source = format!("{}/{}:{}", src.host(), e.repo, e.tag);
            let target = format!("{}/{}:{}", dst.host(), e.target_repo(), e.tag);
            let src_digest = skopeo_digest(&src, &format!("{}:{}", e.repo, e.tag)).await;
            let dst_digest = match manifest_digest(&dst, &e.target_repo(), e.tag).await {
                Ok(Some(_)) => skopeo_digest(&dst, &format!("{}:{}", e.target_repo(), e.tag))
                    .await
                    .map(Some),
                Ok(None) => Ok(None),
                Err(err) => Err(err),
            };
            let (digest, verdict) = match (&src_digest, &dst_digest) {
                (Ok(s), Ok(Some(d))) if s == d && *s == e.digest => (short(d), "yes".to_owned()),
                (Ok(_), Ok(Some(d))) => {
                    failures.push(format!("{target}: digest {d} differs from the source's {}", e.digest));
                    (short(d), "NO".to_owned())
                }
                (_, Ok(None)) => {
                    failures.push(format!("{target} is missing (from {source}, used by {})", e.used_by));
                    ("-".to_owned(), "MISSING".to_owned())
                }
                (Err(err), _) | (_, Err(err)) => {
                    failures.push(format!("{target}: could not check: {err:#}"));
                    ("?".to_owned(), "ERROR".to_owned())
                }
            };
            rows.push([source, target, digest, verdict, e.used_by.to_owned()]);
        }
        rows
    };
    print_table(&["source", "target", "digest", "same", "used by"], &rows);

    step(&format!("target catalog ({}/v2/_catalog)", dst.url()));
    match catalog(&dst).await {
        Ok(repos) if repos.is_empty() => println!("  (empty)"),
        Ok(repos) => repos.iter().for_each(|r| println!("  {r}")),
        Err(e) => println!("  could not read the catalog: {e:#}"),
    }

    println!();
    if failures.is_empty() {
        println!(
            "OK: all {} images the workloads use are in the target registry, byte-identical to the source.",
            expected.len()
        );
        Ok(true)
    } else {
        println!(
            "FAILED: {} of {} targets not as expected:",
            failures.len(),
            expected.len()
        );
        failures.iter().for_each(|f| println!("  - {f}"));
        Ok(false)
    }
}

/// Polls the target with HEAD requests until every expected manifest exists, copycat dies, or
/// [`MIRROR_TIMEOUT`] passes; returns what is still missing.
async fn wait_for<'a>(
    dst: &Registry,
    expected: &'a [Expected],
    copycat: &mut Copycat,
) -> anyhow::Result<Vec<&'a Expected>> {
    let deadline = Instant::now() + MIRROR_TIMEOUT;
    loop {
        let mut missing = Vec::new();
        for e in expected {
            if manifest_digest(dst, &e.target_repo(), e.tag).await?.is_none() {
                missing.push(e);
            }
        }
        if missing.is_empty() {
            return Ok(missing);
        }
        if let Err(e) = copycat.check_alive() {
            println!("  {e:#}");
            return Ok(missing);
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = missing
                .iter()
                .map(|e| format!("{}:{}", e.target_repo(), e.tag))
                .collect();
            println!(
                "  timed out after {MIRROR_TIMEOUT:?}; still missing: {}",
                names.join(", ")
            );
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A free `127.0.0.1` address.
fn free_loopback_address() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// copycat's `/status`, one row per target: state, target, digest, source, users.
async fn reported(dst: &Registry, metrics: &str) -> anyhow::Result<Vec<[String; 5]>> {
    let all: Vec<Value> = http_client(dst)?
        .get(format!("http://{metrics}/status"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("reading /status")?;
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    Ok(all
        .iter()
        .map(|s| {
            let users: Vec<String> = s["users"].as_array().into_iter().flatten().map(text).collect();
            [
                text(&s["state"]),
                text(&s["target"]),
                s["digest"].as_str().map_or_else(|| "-".to_owned(), short),
                text(&s["source"]),
                users.join(", "),
            ]
        })
        .collect())
}

async fn catalog(reg: &Registry) -> anyhow::Result<Vec<String>> {
    let body: Value = http_client(reg)?
        .get(format!("{}/v2/_catalog", reg.url()))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["repositories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect())
}

fn deployment(src: &str, tag: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "namespace": "storefront", "uid": "uid-deploy-web"},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                        "initContainers": [{"name": "proxy-init", "image": format!("{src}/tools/envoy:1.30")}],
                        "containers": [{"name": "web", "image": format!("{src}/shop/web:{tag}")}]}}}})
}

/// The sample cluster: 3 namespaces, a Deployment with its ReplicaSet and 2 running Pods, a
/// StatefulSet, a DaemonSet, a CronJob and a Job.
fn workloads(src: &str, digests: &std::collections::HashMap<(&str, &str), String>) -> Vec<Value> {
    let pod_template =
        |labels: Value, containers: Value| json!({"metadata": {"labels": labels}, "spec": {"containers": containers}});
    let mut objs: Vec<Value> = ["storefront", "monitoring", "batch"]
        .iter()
        .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .collect();
    objs.push(deployment(src, "1.0"));
    objs.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f7c9b6", "namespace": "storefront", "uid": "uid-rs-web",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-deploy-web", "controller": true}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": deployment(src, "1.0")["spec"]["template"].clone()}}));
    for suffix in ["x7k2p", "q9m4t"] {
        objs.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-5d8f7c9b6-{suffix}"), "namespace": "storefront", "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b6", "uid": "uid-rs-web", "controller": true}]},
            "spec": deployment(src, "1.0")["spec"]["template"]["spec"].clone(),
            "status": {"phase": "Running",
                "initContainerStatuses": [{"name": "proxy-init", "image": format!("{src}/tools/envoy:1.30"),
                    "imageID": format!("docker-pullable://{src}/tools/envoy@{}", digests[&("tools/envoy", "1.30")]),
                    "ready": true, "restartCount": 0}],
                "containerStatuses": [{"name": "web", "image": format!("{src}/shop/web:1.0"),
                    "imageID": format!("docker-pullable://{src}/shop/web@{}", digests[&("shop/web", "1.0")]),
                    "ready": true, "restartCount": 0}]}}));
    }
    objs.push(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "redis", "namespace": "storefront"},
        "spec": {"serviceName": "redis", "replicas": 1, "selector": {"matchLabels": {"app": "redis"}},
                 "template": pod_template(json!({"app": "redis"}), json!([{"name": "redis", "image": format!("{src}/library/redis:7.2")}]))}}));
    objs.push(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-exporter", "namespace": "monitoring"},
        "spec": {"selector": {"matchLabels": {"app": "node-exporter"}},
                 "template": pod_template(json!({"app": "node-exporter"}), json!([{"name": "exporter", "image": format!("{src}/infra/node-exporter:1.8.1")}]))}}));
    objs.push(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly-backup", "namespace": "batch"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                 "containers": [{"name": "backup", "image": format!("{src}/batch/backup:2024.11")}]}}}}}}));
    objs.push(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate-db", "namespace": "batch"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "migrate", "image": format!("{src}/batch/migrate:v3")}]}}}}),
    );
    objs
}

fn print_table(header: &[&str], rows: &[[String; 5]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `sha256:` plus the first 12 hex digits.
fn short(digest: &str) -> String {
    digest.chars().take(7 + 12).collect()
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn step(what: &str) {
    println!("\n==> {what}");
}
