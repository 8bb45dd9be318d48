//! The ECR target against a real moto server (the ECR API) paired with a docker-registry whose
//! htpasswd user is `AWS` with moto's token password (moto has no registry side).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use copycat::copy::{Copier, CopyError, CopyOptions, CopyRequest, Outcome};
use copycat::destination::ecr::{Ecr, RepositorySettings, Settings, TokenPolicy, sdk_defaults};
use copycat::reference::ImageRef;
use copycat::registry::Registries;
use copycat::registry::credentials::Credentials;
use serde_json::json;
use testkit::moto::ACCOUNT_ID;
use testkit::{Fault, FaultProxy, Image, Match, Moto, Registry, RegistryMode, manifest_digest, skopeo_digest};

use testkit::apiserver::ApiServer;

use crate::commands::{copycat, text};
use crate::support::{
    self, CopycatRun, assert_no_secrets, config_file, credential_secrets, eventually, http, secret, start,
};

const REGION: &str = "us-east-1";
const POLICY: &str = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;

fn moto() -> Moto {
    Moto::start().expect("start moto_server")
}

/// The registry side of the fake ECR: Basic auth, user `AWS`, moto's token as password.
fn ecr_registry() -> Registry {
    start(RegistryMode::basic("AWS", &Moto::registry_password()))
}

fn settings(registry_host: &str) -> Settings {
    Settings {
        account_id: ACCOUNT_ID.into(),
        region: REGION.into(),
        registry_host: registry_host.into(),
        create_repo: true,
        lifecycle_policy: None,
        reconcile_lifecycle_policy: false,
        repository: RepositorySettings {
            tag_mutability: "MUTABLE".into(),
            scan_on_push: false,
            encryption_type: "AES256".into(),
            kms_key: None,
            tags: BTreeMap::new(),
        },
        assume_role: None,
        tokens: TokenPolicy::default(),
    }
}

/// The ECR target on moto, with static test credentials.
async fn connect(moto: &Moto, settings: Settings) -> Arc<Ecr> {
    let creds = aws_sdk_ecr::config::Credentials::new("testing", "testing", None, None, "test");
    let sdk = sdk_defaults(REGION)
        .endpoint_url(moto.url())
        .credentials_provider(creds)
        .load()
        .await;
    Ecr::with_sdk_config(settings, &sdk).await
}

/// A copier that reads anonymously and writes to the ECR target (tokens from moto, repositories
/// prepared through moto).
fn copier(ecr: &Arc<Ecr>) -> Copier {
    let host = ecr.settings().registry_host.clone();
    let credentials = Credentials::new().with_provider(&host, ecr.clone());
    let registries = Registries::new(
        support::options(HashMap::new(), support::TIMEOUT),
        Arc::new(credentials),
    )
    .unwrap();
    Copier::new(registries).with_preparer(&host, ecr.clone())
}

fn request(src: &Registry, source: &str, target_host: &str, target_repo: &str, tag: &str) -> CopyRequest {
    CopyRequest {
        source: ImageRef::parse(&format!("{}/{source}", src.host())).unwrap(),
        target: ImageRef::parse(&format!("{target_host}/{target_repo}")).unwrap(),
        target_tag: Some(tag.into()),
    }
}

fn repository(moto: &Moto, name: &str) -> Option<serde_json::Value> {
    moto.ecr("DescribeRepositories", json!({"repositoryNames": [name]}))
        .ok()
        .map(|v| v["repositories"][0].clone())
}

#[tokio::test]
async fn mirrors_into_new_repositories_created_with_settings_and_policy() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    let images = [
        Image::oci("amd64", &[3000, 200], 700).unwrap(),
        Image::docker("amd64", &[2500], 701).unwrap(),
        Image::oci_index(&[1500], true, 702).unwrap(),
    ];
    for (i, image) in images.iter().enumerate() {
        image.push(&src, &format!("team/app{i}"), "1").await.unwrap();
    }
    let mut s = settings(&dst.host());
    s.lifecycle_policy = Some(POLICY.into());
    s.repository.tag_mutability = "IMMUTABLE".into();
    s.repository.scan_on_push = true;
    s.repository.tags = BTreeMap::from([("team".to_owned(), "platform".to_owned())]);
    let ecr = connect(&moto, s).await;
    let copier = copier(&ecr);

    for round in 0..2 {
        for i in 0..images.len() {
            let req = request(
                &src,
                &format!("team/app{i}:1"),
                &dst.host(),
                &format!("mirror/app{i}"),
                "1",
            );
            let report = copier.copy(&req, &CopyOptions::default()).await.unwrap();
            let want = if round == 0 {
                Outcome::Copied
            } else {
                Outcome::AlreadyPresent
            };
            assert_eq!(report.outcome, want, "round {round}, image {i}");
        }
    }
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            skopeo_digest(&dst, &format!("mirror/app{i}:1")).await.unwrap(),
            image.digest
        );
        let repo = repository(&moto, &format!("mirror/app{i}")).expect("repository created");
        assert_eq!(repo["imageTagMutability"], "IMMUTABLE");
        assert_eq!(repo["imageScanningConfiguration"]["scanOnPush"], true);
        assert_eq!(repo["encryptionConfiguration"]["encryptionType"], "AES256");
        let tags = moto
            .ecr("ListTagsForResource", json!({"resourceArn": repo["repositoryArn"]}))
            .unwrap();
        assert_eq!(tags["tags"], json!([{"Key": "team", "Value": "platform"}]));
        let policy = moto
            .ecr(
                "GetLifecyclePolicy",
                json!({"repositoryName": format!("mirror/app{i}")}),
            )
            .unwrap();
        let stored: serde_json::Value = serde_json::from_str(policy["lifecyclePolicyText"].as_str().unwrap()).unwrap();
        assert_eq!(stored, serde_json::from_str::<serde_json::Value>(POLICY).unwrap());
    }
    // One token for everything, one existence check and one creation per repository.
    assert_eq!(moto.count("GetAuthorizationToken"), 1);
    assert_eq!(moto.count("DescribeRepositories") - images.len(), images.len());
    assert_eq!(moto.count("CreateRepository"), images.len());
    assert_eq!(moto.count("PutLifecyclePolicy"), images.len());
}

#[tokio::test]
async fn existing_repositories_are_used_and_their_policy_reconciled_when_asked() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    Image::oci("amd64", &[1000], 710)
        .unwrap()
        .push(&src, "lib/a", "1")
        .await
        .unwrap();
    moto.ecr("CreateRepository", json!({"repositoryName": "mirror/a"}))
        .unwrap();

    let plain = connect(&moto, settings(&dst.host())).await;
    copier(&plain)
        .copy(
            &request(&src, "lib/a:1", &dst.host(), "mirror/a", "1"),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(moto.count("CreateRepository"), 1, "only the test's own");
    assert_eq!(
        moto.count("PutLifecyclePolicy"),
        0,
        "existing repositories keep their policy by default"
    );

    let reconciling = || {
        let mut s = settings(&dst.host());
        s.lifecycle_policy = Some(POLICY.into());
        s.reconcile_lifecycle_policy = true;
        connect(&moto, s)
    };
    reconciling().await.ensure_repository("mirror/a").await.unwrap();
    assert_eq!(moto.count("PutLifecyclePolicy"), 1);
    // Already in sync: a fresh instance reads the policy and leaves it.
    reconciling().await.ensure_repository("mirror/a").await.unwrap();
    assert_eq!(moto.count("PutLifecyclePolicy"), 1);
}

#[tokio::test]
async fn a_missing_repository_without_create_repo_fails_naming_it_and_writes_nothing() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    Image::oci("amd64", &[1000], 720)
        .unwrap()
        .push(&src, "lib/b", "1")
        .await
        .unwrap();
    let mut s = settings(&dst.host());
    s.create_repo = false;
    let ecr = connect(&moto, s).await;
    let err = copier(&ecr)
        .copy(
            &request(&src, "lib/b:1", &dst.host(), "mirror/b", "1"),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::Repository(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("mirror/b") && text.contains("ecr.createRepo is false"),
        "{text}"
    );
    assert!(!text.contains(&Moto::registry_password()), "{text}");
    assert!(repository(&moto, "mirror/b").is_none());
    assert!(!dst.requests().iter().any(|r| r.method == "PUT" || r.method == "POST"));
}

#[tokio::test]
async fn concurrent_creation_of_one_repository_is_success_for_everyone() {
    let (moto, dst) = (moto(), ecr_registry());
    // Two replicas (separate instances, no shared cache) race for the same repository.
    let (a, b) = (
        connect(&moto, settings(&dst.host())).await,
        connect(&moto, settings(&dst.host())).await,
    );
    let (ra, rb) = tokio::join!(a.ensure_repository("race/app"), b.ensure_repository("race/app"));
    ra.unwrap();
    rb.unwrap();
    // The losing side of the race: CreateRepository answers RepositoryAlreadyExistsException.
    assert!(!a.create_repository("race/app").await.unwrap());
    assert!(repository(&moto, "race/app").is_some());
}

#[tokio::test]
async fn the_token_is_cached_and_renewed_when_due() {
    let (moto, dst) = (moto(), ecr_registry());
    let mut s = settings(&dst.host());
    // Long enough that the five cached calls below (no I/O) come well inside it.
    let max_age = Duration::from_secs(2);
    s.tokens = TokenPolicy {
        max_age,
        min_age: Duration::ZERO,
    };
    let ecr = connect(&moto, s).await;
    let fetched = std::time::Instant::now();
    for _ in 0..5 {
        ecr.credential().await.unwrap();
    }
    assert!(fetched.elapsed() < max_age, "the calls came inside max_age");
    assert_eq!(moto.count("GetAuthorizationToken"), 1, "cached");
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    ecr.credential().await.unwrap();
    assert_eq!(moto.count("GetAuthorizationToken"), 2, "renewed after max_age");
}

#[tokio::test]
async fn a_refused_token_is_renewed_and_the_request_sent_again() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    Image::oci("amd64", &[1000], 730)
        .unwrap()
        .push(&src, "lib/c", "1")
        .await
        .unwrap();
    let proxy = FaultProxy::start(&dst.url()).unwrap();
    let host = proxy.host();
    let mut s = settings(&host);
    s.tokens.min_age = Duration::ZERO;
    let ecr = connect(&moto, s).await;
    let copier = copier(&ecr);
    // Learn the challenge and take a token, then have the registry refuse it once (expired).
    copier
        .copy(
            &request(&src, "lib/c:1", &host, "mirror/c", "1"),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    proxy.set(
        Fault::status(401)
            .on(Match::new(Some("HEAD"), Some("/manifests/2")))
            .times(1),
    );
    let report = copier
        .copy(
            &request(&src, "lib/c:1", &host, "mirror/c", "2"),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Copied);
    assert_eq!(proxy.faults_applied(), 1);
    assert_eq!(moto.count("GetAuthorizationToken"), 2, "one renewal after the refusal");
    assert!(manifest_digest(&dst, "mirror/c", "2").await.unwrap().is_some());
}

#[tokio::test]
async fn dry_run_creates_nothing() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    Image::oci("amd64", &[1000], 740)
        .unwrap()
        .push(&src, "lib/d", "1")
        .await
        .unwrap();
    let ecr = connect(&moto, settings(&dst.host())).await;
    let opts = CopyOptions {
        dry_run: true,
        ..CopyOptions::default()
    };
    let report = copier(&ecr)
        .copy(&request(&src, "lib/d:1", &dst.host(), "mirror/d", "1"), &opts)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::WouldCopy);
    assert_eq!(moto.count("CreateRepository"), 0);
    assert_eq!(moto.count("DescribeRepositories"), 0);
    assert!(!dst.requests().iter().any(|r| r.method == "PUT" || r.method == "POST"));
}

/// The environment that points copycat at moto for the ECR API (and STS) with static credentials.
fn aws_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", REGION.into()),
        ("ECR_ACCOUNT_ID", ACCOUNT_ID.into()),
    ]
}

#[tokio::test]
async fn the_daemon_mirrors_a_cluster_into_ecr_through_an_assumed_role() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    let image = Image::oci_index(&[4000], true, 750).unwrap();
    image.push(&src, "shop/web", "1.0").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "prod"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                   "containers": [{"name": "web", "image": format!("{}/shop/web:1.0", src.host())}]}}}}))
        .unwrap();
    let running = server.serve().unwrap();
    let config = config_file(&format!(
        "ecr:\n  assumeRoleArn: arn:aws:iam::{ACCOUNT_ID}:role/copycat-push\n  assumeRoleExternalId: ext-1\n  lifecyclePolicy: '{POLICY}'\n"
    ));
    let mut env = aws_env(&moto);
    env.extend([
        ("CONFIG_PATH", config.path().display().to_string()),
        ("TARGET_KIND", "ecr".into()),
        ("ECR_REGISTRY_HOST", dst.host()),
        ("ECR_REPO_PREFIX", "mirror/$namespace".into()),
        ("FAILURE_COOLDOWN_MINUTES", "0".into()),
        ("LEADER_ELECT", "false".into()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("HEALTH_ADDR", "127.0.0.1:0".into()),
        // The most verbose level, where a dependency's request dumps would show credentials.
        ("LOG_LEVEL", "trace".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = CopycatRun::start(running.kubeconfig_path(), &[], &env);
    eventually("the image in ECR", Duration::from_secs(30), async || {
        manifest_digest(&dst, "mirror/prod/shop/web", "1.0")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let metrics_address = daemon.bound_address("metrics").await;
    let (_, status) = http(&metrics_address, "GET", "/status", None).await;
    let (_, metrics) = http(&metrics_address, "GET", "/metrics", None).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        skopeo_digest(&dst, "mirror/prod/shop/web:1.0").await.unwrap(),
        image.digest
    );
    let policy = moto
        .ecr("GetLifecyclePolicy", json!({"repositoryName": "mirror/prod/shop/web"}))
        .expect("repository created with the lifecycle policy");
    assert!(policy["lifecyclePolicyText"].as_str().unwrap().contains("untagged"));
    assert_eq!(moto.count("GetAuthorizationToken"), 1, "{log}");
    assert_eq!(moto.count("AssumeRole"), 1, "the push role is assumed once: {log}");
    // What GetAuthorizationToken hands out (asked again now that the count is checked).
    let token = moto.ecr("GetAuthorizationToken", json!({})).unwrap()["authorizationData"][0]["authorizationToken"]
        .as_str()
        .expect("an authorizationToken")
        .to_owned();
    let mut secrets = credential_secrets("AWS", &Moto::registry_password());
    secrets.push(secret("the ECR authorizationToken", token.trim_end_matches('=')));
    assert_no_secrets(
        &[("the trace log", &log), ("/status", &status), ("/metrics", &metrics)],
        &secrets,
    );
}

#[tokio::test]
async fn copy_to_an_ecr_target_creates_the_repository() {
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    let image = Image::docker("amd64", &[3000], 760).unwrap();
    image.push(&src, "lib/tool", "2").await.unwrap();
    let mut env = aws_env(&moto);
    env.extend([("TARGET_KIND", "ecr".into()), ("ECR_REGISTRY_HOST", dst.host())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = copycat(
        &[
            "copy",
            &format!("{}/lib/tool:2", src.host()),
            &format!("{}/backup/tool", dst.host()),
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(skopeo_digest(&dst, "backup/tool:2").await.unwrap(), image.digest);
    assert!(repository(&moto, "backup/tool").is_some());
}

/// Serves `app` on a free local port in the background; its URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// An ECR API endpoint that always answers `ThrottlingException` (moto never throttles); counts calls.
async fn throttling_endpoint() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (
                axum::http::StatusCode::BAD_REQUEST,
                [
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amzn-errortype", "ThrottlingException"),
                ],
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            )
        }
    });
    (serve(app).await, calls)
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_then_reported_as_transient_with_its_code() {
    let (url, calls) = throttling_endpoint().await;
    let creds = aws_sdk_ecr::config::Credentials::new("testing", "testing", None, None, "test");
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(10));
    let sdk = sdk_defaults(REGION)
        .endpoint_url(url)
        .credentials_provider(creds)
        .retry_config(retry)
        .load()
        .await;
    let ecr = Ecr::with_sdk_config(settings("127.0.0.1:1"), &sdk).await;
    let err = ecr.ensure_repository("mirror/busy").await.unwrap_err();
    assert!(err.transient, "{err:?}");
    assert_eq!(err.code.as_deref(), Some("ThrottlingException"));
    assert_eq!(
        err.to_string(),
        "ECR DescribeRepositories mirror/busy: ThrottlingException: Rate exceeded"
    );
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the SDK's own retries"
    );
    let err = ecr.credential().await.unwrap_err();
    assert!(
        err.transient
            && err
                .to_string()
                .starts_with("ECR GetAuthorizationToken: ThrottlingException"),
        "{err}"
    );
}

/// `copycat copy` into ECR (moto) without static keys: the credentials come from the AWS profile
/// `mirror` with the settings `profile`, in a config file in `home` (also `HOME`); `env` adds to
/// moto's endpoint, region and account.
async fn copy_with_profile(moto: &Moto, home: &std::path::Path, profile: &str, env: &[(&str, String)]) {
    let config = home.join("config");
    std::fs::write(&config, format!("[profile mirror]\n{profile}")).unwrap();
    let mut env = env.to_vec();
    env.extend([
        ("AWS_CONFIG_FILE", config.display().to_string()),
        ("AWS_PROFILE", "mirror".into()),
        ("HOME", home.display().to_string()),
    ]);
    let (src, dst) = (start(RegistryMode::Plain), ecr_registry());
    let image = Image::docker("amd64", &[2000], 770).unwrap();
    image.push(&src, "lib/tool", "3").await.unwrap();
    let mut all: Vec<(String, String)> = aws_env(moto)
        .into_iter()
        .filter(|(k, _)| !["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].contains(k))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    all.extend([
        ("TARGET_KIND".into(), "ecr".into()),
        ("ECR_REGISTRY_HOST".into(), dst.host()),
    ]);
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let args = [
        "copy".to_owned(),
        format!("{}/lib/tool:3", src.host()),
        format!("{}/profile/tool", dst.host()),
    ];
    // Off the test's runtime, which may serve a stand-in endpoint to the process meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        copycat(&args, &all)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(skopeo_digest(&dst, "profile/tool:3").await.unwrap(), image.digest);
}

#[tokio::test]
async fn an_aws_profile_with_credential_process_is_used() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = dir.path().join("credentials.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"process-key\", \"SecretAccessKey\": \"process-secret\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let profile = format!("credential_process = {}\n", script.display());
    copy_with_profile(&moto, dir.path(), &profile, &[]).await;
    assert!(marker.exists(), "the credential_process ran");
}

/// An IAM Identity Center (SSO) portal answering `GetRoleCredentials` for `token`; counts calls.
async fn sso_portal(token: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/federation/credentials",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let counter = counter.clone();
            async move {
                if headers.get("x-amz-sso_bearer_token").and_then(|v| v.to_str().ok()) != Some(token) {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let expiration = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    + 3_600_000;
                let body = json!({"roleCredentials": {"accessKeyId": "sso-key", "secretAccessKey": "sso-secret",
                                  "sessionToken": "sso-session", "expiration": expiration as u64}});
                (axum::http::StatusCode::OK, body.to_string())
            }
        }),
    );
    (serve(app).await, calls)
}

#[tokio::test]
async fn an_aws_sso_profile_is_used() {
    use sha1::Digest as _;
    let moto = moto();
    let token = "sso-access-token";
    let (portal, calls) = sso_portal(token).await;
    let home = tempfile::tempdir().unwrap();
    let start_url = "https://example.awsapps.com/start";
    let cache = home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let name: String = sha1::Sha1::digest(start_url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        cache.join(format!("{name}.json")),
        json!({"startUrl": start_url, "region": REGION, "accessToken": token, "expiresAt": "2099-01-01T00:00:00Z"})
            .to_string(),
    )
    .unwrap();
    let profile = format!(
        "sso_start_url = {start_url}\nsso_region = {REGION}\nsso_account_id = {ACCOUNT_ID}\nsso_role_name = push\n"
    );
    copy_with_profile(&moto, home.path(), &profile, &[("AWS_ENDPOINT_URL_SSO", portal)]).await;
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the role credentials came from the SSO portal"
    );
}

/// An `Image` object whose destination names no registry host goes to the ECR target: the repository
/// is created (as the daemon creates them) and the image pushed.
#[tokio::test]
async fn an_image_object_without_a_destination_host_goes_to_ecr_in_a_new_repository() {
    use crate::image_objects::{cluster, image, status, tag_field};
    let (moto, src, dst) = (moto(), start(RegistryMode::Plain), ecr_registry());
    let pushed = Image::oci("amd64", &[2000], 751).unwrap();
    pushed.push(&src, "tools/cli", "3.1.0").await.unwrap();
    let (server, running) = cluster();
    server
        .apply(image(
            "cli",
            json!({"mode": "OneShot",
            "source": {"name": format!("{}/tools/cli", src.host()), "version": "3.x.x"},
            "destination": {"name": "vendor/cli"}}),
        ))
        .unwrap();
    let config = config_file("images:\n  enabled: true\nwatchResources: [deployments]\nreferrers: none\n");
    let mut env = aws_env(&moto);
    env.extend([
        ("CONFIG_PATH", config.path().display().to_string()),
        ("TARGET_KIND", "ecr".into()),
        ("ECR_REGISTRY_HOST", dst.host()),
        ("LEADER_ELECT", "false".into()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("HEALTH_ADDR", "127.0.0.1:0".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = CopycatRun::start(running.kubeconfig_path(), &[], &env);
    eventually("the tag copied", Duration::from_secs(60), async || {
        tag_field(&status(&server, "cli"), "3.1.0", "result").as_deref() == Some("Copied")
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(repository(&moto, "vendor/cli").is_some(), "repository created: {log}");
    assert_eq!(skopeo_digest(&dst, "vendor/cli:3.1.0").await.unwrap(), pushed.digest);
    assert_eq!(
        tag_field(&status(&server, "cli"), "3.1.0", "destination"),
        Some(format!("{}/vendor/cli:3.1.0", dst.host()))
    );
}
