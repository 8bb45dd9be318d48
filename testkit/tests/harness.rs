//! Acceptance tests of the harness itself: real registries in every mode, every image kind,
//! digests checked three ways (our push, HEAD, skopeo).

use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use testkit::{Client, Image, Registry, RegistryMode, blob_exists, manifest_digest, push, skopeo_digest};

const USER: &str = "tester";
const PASS: &str = "s3cret-pass";

/// Every image kind, small layers.
fn kinds() -> Result<Vec<(&'static str, Image)>> {
    Ok(vec![
        ("single-oci", Image::oci("amd64", &[1024, 300_000], 1)?),
        ("single-docker", Image::docker("arm64", &[2048, 50_000], 2)?),
        ("oci-index-attest", Image::oci_index(&[4096, 100], true, 3)?),
        ("docker-list", Image::docker_manifest_list(&[4096], 4)?),
        ("helm", Image::helm_chart(10_000, 5)?),
        ("helm-legacy", Image::helm_chart_legacy(10_000, 6)?),
    ])
}

/// Pushes every kind and checks push digest == HEAD digest == skopeo digest, plus children,
/// blobs and raw bytes.
async fn all_kinds_roundtrip(mode: RegistryMode) -> Result<Registry> {
    let started = Instant::now();
    let reg = Registry::start(mode)?;
    let client = Client::new(&reg)?;
    for (name, image) in kinds()? {
        let repo = format!("testkit/{name}");
        let pushed = client.push_image(&repo, "v1", &image).await?;
        assert_eq!(pushed, image.digest, "{name}: push digest");
        let head = client.manifest_digest(&repo, "v1").await?;
        assert_eq!(head.as_deref(), Some(image.digest.as_str()), "{name}: HEAD digest");
        let skopeo = skopeo_digest(&reg, &format!("{repo}:v1")).await?;
        assert_eq!(skopeo, image.digest, "{name}: skopeo digest");

        let (raw, media_type) = client.get_manifest(&repo, "v1").await?;
        assert_eq!(raw, image.manifest, "{name}: raw manifest bytes");
        assert_eq!(media_type, image.media_type, "{name}: media type");
        for digest in image.all_manifest_digests() {
            let got = client.manifest_digest(&repo, &digest).await?;
            assert_eq!(got.as_deref(), Some(digest.as_str()), "{name}: child {digest}");
        }
        for blob in image.all_blobs() {
            assert!(
                client.blob_exists(&repo, &blob.digest).await?,
                "{name}: blob {}",
                blob.digest
            );
        }
        // Pushing again is idempotent (blobs are skipped after HEAD).
        assert_eq!(client.push_image(&repo, "v1", &image).await?, image.digest);
    }
    assert_eq!(client.manifest_digest("testkit/single-oci", "nope").await?, None);
    eprintln!("{:?}: all kinds in {:?}", reg.mode(), started.elapsed());
    Ok(reg)
}

#[tokio::test]
async fn plain_all_kinds() -> Result<()> {
    all_kinds_roundtrip(RegistryMode::Plain).await?;
    Ok(())
}

#[tokio::test]
async fn basic_all_kinds() -> Result<()> {
    all_kinds_roundtrip(RegistryMode::basic(USER, PASS)).await?;
    Ok(())
}

#[tokio::test]
async fn tls_all_kinds() -> Result<()> {
    let reg = all_kinds_roundtrip(RegistryMode::Tls).await?;
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let ca = std::fs::read_to_string(reg.ca_pem_path().expect("CA path"))?;
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert!(reg.skopeo_cert_dir().expect("cert dir").join("ca.crt").is_file());
    Ok(())
}

#[tokio::test]
async fn basic_tls_all_kinds() -> Result<()> {
    all_kinds_roundtrip(RegistryMode::basic_tls(USER, PASS)).await?;
    Ok(())
}

#[tokio::test]
async fn token_all_kinds() -> Result<()> {
    let reg = all_kinds_roundtrip(RegistryMode::token(USER, PASS)).await?;
    let log = reg.token_log();
    assert!(reg.token_requests() >= 2, "our client and skopeo asked for tokens");
    assert_eq!(reg.token_requests(), log.len());
    assert!(log.iter().all(|r| r.authorized));
    assert!(
        log.iter()
            .any(|r| r.scopes.iter().any(|s| s == "repository:testkit/helm:pull,push")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|r| r.user_agent.as_deref() != Some(testkit::push::USER_AGENT)),
        "skopeo did its own token flow: {log:?}"
    );
    Ok(())
}

#[tokio::test]
async fn basic_refuses_anonymous_and_wrong_password() -> Result<()> {
    let reg = Registry::start(RegistryMode::basic(USER, PASS))?;
    assert_eq!(reg.credentials(), Some((USER.to_owned(), PASS.to_owned())));
    let anon = Client::anonymous(&reg)?;
    assert_eq!(anon.ping().await?.as_u16(), 401);
    let err = anon.manifest_digest("a/b", "latest").await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let wrong = Client::with_credentials(&reg, USER, "wrong")?;
    assert_eq!(wrong.ping().await?.as_u16(), 401);
    let image = Image::oci("amd64", &[10], 9)?;
    assert!(wrong.push_image("a/b", "t", &image).await.is_err());
    assert_eq!(Client::new(&reg)?.ping().await?.as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn token_refuses_anonymous_and_wrong_password() -> Result<()> {
    let reg = Registry::start(RegistryMode::token(USER, PASS))?;
    assert_eq!(reg.token_requests(), 0);
    let anon = Client::anonymous(&reg)?;
    let resp = anon.http().get(format!("{}/v2/", reg.url())).send().await?;
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str()?.to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&reg.token_url().expect("token url")), "{challenge}");
    assert!(challenge.contains("service=\"test-registry\""), "{challenge}");
    let err = anon.manifest_digest("a/b", "latest").await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");

    // Wrong password: the token server refuses (and counts it).
    let wrong = Client::with_credentials(&reg, USER, "wrong")?;
    let err = wrong.token("a/b").await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert_eq!(reg.token_requests(), 1);
    assert!(!reg.token_log()[0].authorized);
    // Anonymous token request: refused too.
    let resp = anon
        .http()
        .get(format!(
            "{}?service=test-registry&scope=repository:a/b:pull",
            reg.token_url().unwrap()
        ))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(reg.token_requests(), 2);

    // A token for another repository does not open this one.
    let good = Client::new(&reg)?;
    let token = good.token("other/repo").await?;
    let resp = good
        .http()
        .head(format!("{}/v2/a/b/manifests/latest", reg.url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    // The right one gets through (404: nothing pushed yet).
    assert_eq!(good.manifest_digest("a/b", "latest").await?, None);
    assert_eq!(reg.token_requests(), 4);
    Ok(())
}

#[tokio::test]
async fn skopeo_with_wrong_credentials_fails() -> Result<()> {
    let reg = Registry::start(RegistryMode::basic(USER, PASS))?;
    let image = Image::oci("amd64", &[10], 10)?;
    push(&reg, "a/b", "t", &image).await?;
    let args: Vec<String> = ["inspect", "--raw", "--tls-verify=false", "--creds=tester:wrong"]
        .iter()
        .map(|s| s.to_string())
        .chain([testkit::skopeo::docker_ref(&reg, "a/b:t")])
        .collect();
    assert!(testkit::skopeo::run_skopeo(&args).await.is_err());
    Ok(())
}

#[tokio::test]
async fn restart_keeps_content_and_port() -> Result<()> {
    let mut reg = Registry::start(RegistryMode::Plain)?;
    let image = Image::oci_index(&[1000], false, 11)?;
    push(&reg, "keep/me", "v1", &image).await?;
    let (url, pid) = (reg.url(), reg.pid());

    reg.stop();
    assert_eq!(reg.pid(), None);
    assert!(
        manifest_digest(&reg, "keep/me", "v1").await.is_err(),
        "stopped registry answers"
    );
    reg.restart()?;
    assert_eq!(reg.url(), url);
    assert_ne!(reg.pid(), pid);
    assert_eq!(
        manifest_digest(&reg, "keep/me", "v1").await?,
        Some(image.digest.clone())
    );

    // Restart while running works too.
    reg.restart()?;
    assert_eq!(skopeo_digest(&reg, "keep/me:v1").await?, image.digest);
    Ok(())
}

#[tokio::test]
async fn wipe_empties_a_running_registry() -> Result<()> {
    let reg = Registry::start(RegistryMode::Plain)?;
    let image = Image::docker("amd64", &[1000, 2000], 12)?;
    push(&reg, "wipe/me", "v1", &image).await?;
    assert!(blob_exists(&reg, "wipe/me", &image.blobs[1].digest).await?);
    reg.wipe()?;
    assert_eq!(manifest_digest(&reg, "wipe/me", "v1").await?, None);
    assert!(!blob_exists(&reg, "wipe/me", &image.blobs[1].digest).await?);
    // And it still accepts pushes afterwards.
    assert_eq!(push(&reg, "wipe/me", "v1", &image).await?, image.digest);
    Ok(())
}

#[tokio::test]
async fn access_log_shows_pushes() -> Result<()> {
    let reg = Registry::start(RegistryMode::Plain)?;
    assert!(reg.requests().is_empty(), "probes are filtered: {:?}", reg.requests());
    let image = Image::oci("amd64", &[1000], 13)?;
    push(&reg, "log/me", "v1", &image).await?;
    let reqs = reg.requests();
    let has = |method: &str, prefix: &str, status: u16| {
        reqs.iter()
            .any(|e| e.method == method && e.path.starts_with(prefix) && e.status == status)
    };
    assert!(
        has("HEAD", &format!("/v2/log/me/blobs/{}", image.blobs[1].digest), 404),
        "{reqs:?}"
    );
    assert!(has("POST", "/v2/log/me/blobs/uploads/", 202), "{reqs:?}");
    assert!(has("PUT", "/v2/log/me/blobs/uploads/", 201), "{reqs:?}");
    assert!(has("PUT", "/v2/log/me/manifests/v1", 201), "{reqs:?}");
    assert!(
        reqs.iter().all(|e| e.user_agent == testkit::push::USER_AGENT),
        "{reqs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn drop_leaves_no_process() -> Result<()> {
    let reg = Registry::start(RegistryMode::token(USER, PASS))?;
    let pid = reg.pid().expect("running");
    let data = reg.data_dir();
    assert!(kill0(pid), "registry {pid} should be alive");
    drop(reg);
    assert!(!kill0(pid), "registry {pid} survived drop");
    assert!(!data.exists(), "temp dir removed");
    Ok(())
}

fn kill0(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn raw_pushes_and_refused_bad_digest() -> Result<()> {
    let reg = Registry::start(RegistryMode::Plain)?;
    let client = Client::new(&reg)?;
    let digest = testkit::push_raw_blob(&reg, "raw/one", &b"hello"[..]).await?;
    assert_eq!(digest, testkit::sha256_digest(b"hello"));
    assert_eq!(client.get_blob("raw/one", &digest).await?.as_ref(), b"hello");
    // A blob whose bytes do not match the claimed digest is refused.
    let status = client
        .push_blob_claiming(
            "raw/one",
            &testkit::sha256_digest(b"other"),
            bytes::Bytes::from_static(b"hello"),
        )
        .await?;
    assert_eq!(status.as_u16(), 400);
    // A hand-written manifest with the right Content-Type is stored byte-exact.
    let config = testkit::push_raw_blob(&reg, "raw/one", &b"{}"[..]).await?;
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"digest\":\"{config}\",\"size\":2}},\"layers\":[]}}",
        testkit::image::OCI_MANIFEST,
        testkit::image::OCI_CONFIG
    );
    let d = testkit::push_raw_manifest(&reg, "raw/one", "x", testkit::image::OCI_MANIFEST, manifest.clone()).await?;
    assert_eq!(d, testkit::sha256_digest(manifest.as_bytes()));
    assert_eq!(skopeo_digest(&reg, "raw/one:x").await?, d);
    // skopeo prints `--raw` as is: a manifest ending in a newline keeps it, none is added.
    let with_newline = format!("{manifest}\n");
    let d2 = testkit::push_raw_manifest(
        &reg,
        "raw/one",
        "nl",
        testkit::image::OCI_MANIFEST,
        with_newline.clone(),
    )
    .await?;
    assert_eq!(d2, testkit::sha256_digest(with_newline.as_bytes()));
    assert_eq!(skopeo_digest(&reg, "raw/one:nl").await?, d2);
    client.delete_manifest("raw/one", &d).await?;
    assert_eq!(client.manifest_digest("raw/one", &d).await?, None);
    Ok(())
}

#[tokio::test]
async fn large_layer_is_streamed() -> Result<()> {
    let started = Instant::now();
    let reg = Registry::start(RegistryMode::Plain)?;
    let image = Image::oci("amd64", &[200 * 1024 * 1024], 14)?;
    assert!(image.blobs[1].bytes().is_none(), "200 MiB layer not held in memory");
    let built = started.elapsed();
    assert_eq!(push(&reg, "big/one", "v1", &image).await?, image.digest);
    assert!(blob_exists(&reg, "big/one", &image.blobs[1].digest).await?);
    assert_eq!(skopeo_digest(&reg, "big/one:v1").await?, image.digest);
    eprintln!("200 MiB layer: built in {built:?}, total {:?}", started.elapsed());
    Ok(())
}

/// The 1 GiB benchmark layer: `cargo test -p testkit --test harness -- --ignored`.
#[tokio::test]
#[ignore = "benchmark-sized (1 GiB): run explicitly"]
async fn one_gib_layer_is_streamed() -> Result<()> {
    let started = Instant::now();
    let reg = Registry::start(RegistryMode::Plain)?;
    let image = Image::oci("amd64", &[1024 * 1024 * 1024], 15)?;
    let built = started.elapsed();
    assert_eq!(push(&reg, "big/gib", "v1", &image).await?, image.digest);
    assert_eq!(skopeo_digest(&reg, "big/gib:v1").await?, image.digest);
    eprintln!("1 GiB layer: built in {built:?}, total {:?}", started.elapsed());
    Ok(())
}

#[test]
fn missing_tool_fails_loudly() {
    let err = testkit::require_tool("no-such-tool-xyz", "apt-get install -y no-such-tool").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no-such-tool-xyz not found: install it with 'apt-get install -y no-such-tool'"
    );
    assert!(
        testkit::require_tool("docker-registry", "apt-get install -y docker-registry").is_ok()
            || std::path::Path::new("/usr/bin/docker-registry").exists()
    );
}

#[tokio::test]
async fn skopeo_copy_between_registries_keeps_digests() -> Result<()> {
    let src = Registry::start(RegistryMode::Tls)?;
    let dst = Registry::start(RegistryMode::token(USER, PASS))?;
    let image = Image::oci_index(&[2000], true, 16)?;
    push(&src, "copy/me", "v1", &image).await?;
    testkit::skopeo_copy(&src, "copy/me:v1", &dst, "copied/me:v1").await?;
    assert_eq!(
        manifest_digest(&dst, "copied/me", "v1").await?,
        Some(image.digest.clone())
    );
    for digest in image.all_manifest_digests() {
        assert_eq!(manifest_digest(&dst, "copied/me", &digest).await?, Some(digest.clone()));
    }
    Ok(())
}
