//! `copycat copy` and `copycat sync` as an operator runs them: the built binary, real registries.

use std::process::{Command, Output};

use testkit::{Image, Registry, RegistryMode, StaticRegistry, manifest_digest, skopeo_digest};

use crate::support::start;

/// The built binary with an empty environment except `env`, no config file, text logs.
pub(crate) fn copycat(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
    cmd.args(args)
        .env_clear()
        .env("CONFIG_PATH", "/dev/null")
        .env("LOG_FORMAT", "text");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run copycat")
}

/// Everything the command printed.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn copy_prints_what_it_did() {
    let (src, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::basic("ops", "target-secret-77")),
    );
    let image = Image::oci_index(&[20_000], true, 100).unwrap();
    image.push(&src, "team/app", "1.0").await.unwrap();
    let (source, target) = (
        format!("{}/team/app:1.0", src.host()),
        format!("{}/mirror/app", dst.host()),
    );
    let creds = [("TARGET_USERNAME", "ops"), ("TARGET_PASSWORD", "target-secret-77")];

    let out = copycat(&["copy", &source, &target], &creds);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("copied:") && all.contains(&image.digest), "{all}");
    assert!(all.contains("1 image: 1 copied, 0 already present, 0 failed"), "{all}");
    assert!(!all.contains("target-secret-77"), "the password was printed: {all}");
    assert_eq!(
        skopeo_digest(&dst, "mirror/app:1.0").await.unwrap(),
        image.digest,
        "the source tag is kept"
    );

    let again = copycat(&["copy", &source, &target], &creds);
    assert!(text(&again).contains("already present"), "{}", text(&again));

    let one = copycat(
        &["copy", "--platform", "linux/arm64", &source, &format!("{target}:arm")],
        &creds,
    );
    assert_eq!(one.status.code(), Some(0), "{}", text(&one));
    let arm = image.child_for("arm64").unwrap();
    assert_eq!(
        manifest_digest(&dst, "mirror/app", "arm").await.unwrap().as_deref(),
        Some(arm.digest.as_str())
    );
}

#[tokio::test]
async fn copy_errors_and_exit_codes() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let missing = copycat(
        &[
            "copy",
            &format!("{}/nope:1", src.host()),
            &format!("{}/nope", dst.host()),
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(text(&missing).contains("not found"), "{}", text(&missing));
    let bad = copycat(&["copy", "Not/Valid", &format!("{}/x", dst.host())], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("SRC") && text(&bad).contains("lowercase"),
        "{}",
        text(&bad)
    );
    let bad_platform = copycat(
        &["copy", "--platform", "linux/", "a", &format!("{}/x", dst.host())],
        &[],
    );
    assert_eq!(bad_platform.status.code(), Some(2));
}

#[test]
fn copy_refuses_a_3000_level_index_chain_with_an_error_not_an_abort() {
    let hostile = StaticRegistry::start().unwrap();
    hostile.put_index_chain("chain", "v1", 3_000);
    let dst = start(RegistryMode::Plain);
    let out = copycat(
        &[
            "copy",
            &format!("{}/chain:v1", hostile.host()),
            &format!("{}/chain", dst.host()),
        ],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "a failed image, not a crash: {all}");
    assert!(all.contains("indexes nested deeper than 4 levels"), "{all}");
}

fn images_file(dir: &tempfile::TempDir, dst: &Registry, sources: &[String]) -> String {
    let path = dir.path().join("images.yaml");
    let mut text = format!("targetRepoPrefix: \"{}/external/\"\nimages:\n", dst.host());
    for s in sources {
        text.push_str(&format!("  - source: \"{s}\"\n"));
    }
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sync_copies_the_list_and_never_overwrites_a_different_digest() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let dir = tempfile::tempdir().unwrap();
    let mut sources = Vec::new();
    let mut images = Vec::new();
    for i in 0..4u64 {
        let image = Image::oci("amd64", &[10_000 + i], 200 + i).unwrap();
        image.push(&src, &format!("lib/img{i}"), "v1").await.unwrap();
        sources.push(format!("{}/lib/img{i}:v1", src.host()));
        images.push(image);
    }
    // The target already holds something else under img3's tag.
    Image::oci("amd64", &[999], 299)
        .unwrap()
        .push(&dst, "external/lib/img3", "v1")
        .await
        .unwrap();
    let file = images_file(&dir, &dst, &sources);

    let out = copycat(&["sync", "--images", &file, "--jobs", "2"], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("4 images: 3 copied, 0 already present, 1 failed"), "{all}");
    assert!(all.contains("refusing to overwrite"), "{all}");
    for (i, image) in images.iter().enumerate().take(3) {
        assert_eq!(
            skopeo_digest(&dst, &format!("external/lib/img{i}:v1")).await.unwrap(),
            image.digest
        );
    }

    let dry = copycat(&["sync", "--images", &file, "--dry-run"], &[]);
    assert!(text(&dry).contains("3 already present"), "{}", text(&dry));
}

#[tokio::test]
async fn dry_pull_sends_no_request_at_all() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let dir = tempfile::tempdir().unwrap();
    let file = images_file(&dir, &dst, &[format!("{}/lib/app:v1", src.host())]);
    let (src_before, dst_before) = (src.requests().len(), dst.requests().len());
    let out = copycat(&["sync", "--images", &file, "--dry-pull"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("would copy {}/lib/app:v1", src.host())),
        "{}",
        text(&out)
    );
    // The command has exited and `requests()` waits for the access logs to catch up.
    assert_eq!((src.requests().len(), dst.requests().len()), (src_before, dst_before));
}

#[test]
fn bad_images_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.yaml");
    std::fs::write(
        &path,
        "targetRepoPrefix: r.example.com\nimages:\n  - source: Bad\n  - sourc: x\n",
    )
    .unwrap();
    let out = copycat(&["sync", "--images", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("sourc"), "{}", text(&out));
}

#[tokio::test]
async fn digest_only_sources_are_pushed_by_digest_or_tagged_by_template() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[3000], 300).unwrap();
    image.push(&src, "lib/pinned", "v1").await.unwrap();
    let source = format!("{}/lib/pinned@{}", src.host(), image.digest);

    let plain = copycat(&["copy", &source, &format!("{}/by-digest", dst.host())], &[]);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain));
    assert_eq!(
        manifest_digest(&dst, "by-digest", &image.digest)
            .await
            .unwrap()
            .as_deref(),
        Some(image.digest.as_str())
    );
    assert_eq!(manifest_digest(&dst, "by-digest", "latest").await.unwrap(), None);

    let tagged = copycat(
        &["copy", &source, &format!("{}/tagged", dst.host())],
        &[("DIGEST_TAG_TEMPLATE", "pin-$short")],
    );
    assert_eq!(tagged.status.code(), Some(0), "{}", text(&tagged));
    let short = &image.digest.trim_start_matches("sha256:")[..12];
    let tag = format!("pin-{short}");
    assert_eq!(
        skopeo_digest(&dst, &format!("tagged:{tag}")).await.unwrap(),
        image.digest
    );
}
