//! `copycat copy` and `copycat sync` as an operator runs them: the built binary, real registries.

use std::process::{Command, Output};

use testkit::{Image, Registry, RegistryMode, StaticRegistry, list_tags, manifest_digest, skopeo_digest};

use crate::support::start;

/// The built binary with an empty environment except `env`, no config file, text logs.
pub(crate) fn copycat(args: &[&str], env: &[(&str, &str)]) -> Output {
    copycat_command(args, env).output().expect("run copycat")
}

/// [`copycat`] as a command not yet run (to start it and act while it runs).
pub(crate) fn copycat_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
    cmd.args(args)
        .env_clear()
        .env("CONFIG_PATH", "/dev/null")
        .env("LOG_FORMAT", "text");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
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

/// A digest-only source (`repo@sha256:…`) gets its anchor tag `copycat-<hex>` by default from `copy`
/// and `sync`, so rules that expire untagged images cannot delete the copy; `DIGEST_TAG_TEMPLATE=none`
/// pushes it by digest alone, untagged; another template names another tag. Each target's whole tag
/// list is read from the registry, and every tag resolves (through skopeo) to the source's digest.
#[tokio::test]
async fn digest_only_sources_get_an_anchor_tag_unless_turned_off() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[3000], 300).unwrap();
    for repo in ["lib/pinned", "lib/untagged"] {
        image.push(&src, repo, "v1").await.unwrap();
    }
    let hex = image.digest.trim_start_matches("sha256:");
    let anchor = format!("copycat-{hex}");
    let pin = format!("pin-{}", &hex[..12]);
    let dir = tempfile::tempdir().unwrap();
    let sync_file = |name: &str, repo: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "targetRepoPrefix: \"{}/external/\"\nimages:\n  - source: \"{}/{repo}@{}\"\n",
            dst.host(),
            src.host(),
            image.digest
        );
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (sync_default, sync_none) = (sync_file("a.yaml", "lib/pinned"), sync_file("b.yaml", "lib/untagged"));
    let source = format!("{}/lib/pinned@{}", src.host(), image.digest);
    let copy = |repo: &str| vec!["copy".to_owned(), source.clone(), format!("{}/{repo}", dst.host())];
    let sync = |file: &str| vec!["sync".to_owned(), "--images".to_owned(), file.to_owned()];
    let none = [("DIGEST_TAG_TEMPLATE", "none")];
    let pin_env = [("DIGEST_TAG_TEMPLATE", "pin-$short")];
    // (arguments, environment, target repository, its tags)
    type Case<'a> = (Vec<String>, &'a [(&'a str, &'a str)], &'a str, Vec<&'a str>);
    let cases: [Case<'_>; 5] = [
        (copy("anchored"), &[], "anchored", vec![&anchor]),
        (copy("untagged"), &none, "untagged", vec![]),
        (copy("pinned"), &pin_env, "pinned", vec![&pin]),
        (sync(&sync_default), &[], "external/lib/pinned", vec![&anchor]),
        (sync(&sync_none), &none, "external/lib/untagged", vec![]),
    ];
    for (args, env, repo, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = copycat(&args, env);
        assert_eq!(out.status.code(), Some(0), "{args:?} {env:?}: {}", text(&out));
        assert_eq!(
            list_tags(&dst, repo).await.unwrap(),
            want,
            "{args:?} {env:?}: tags of {repo}"
        );
        assert_eq!(
            manifest_digest(&dst, repo, &image.digest).await.unwrap().as_deref(),
            Some(image.digest.as_str()),
            "{args:?} {env:?}: {repo}@digest"
        );
        for tag in want {
            assert_eq!(
                skopeo_digest(&dst, &format!("{repo}:{tag}")).await.unwrap(),
                image.digest,
                "{repo}:{tag}"
            );
        }
    }
    assert_eq!(
        manifest_digest(&dst, "untagged", "latest").await.unwrap(),
        None,
        "never :latest"
    );
}

#[tokio::test]
async fn copy_and_sync_bring_signatures_unless_told_not_to() {
    use testkit::artifacts::{self, Subject};
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[3000], 150).unwrap();
    image.push(&src, "team/signed", "1.0").await.unwrap();
    let subject = Subject::of(&image);
    let sig = artifacts::cosign_signature(&subject, "team/signed", 1, 1);
    sig.push(&src, "team/signed", &subject.cosign_tag("sig")).await.unwrap();
    let source = format!("{}/team/signed:1.0", src.host());

    let none = copycat(
        &[
            "copy",
            "--referrers",
            "none",
            &source,
            &format!("{}/off/signed", dst.host()),
        ],
        &[],
    );
    assert_eq!(none.status.code(), Some(0), "{}", text(&none));
    assert_eq!(list_tags(&dst, "off/signed").await.unwrap(), vec!["1.0"]);
    let by_config = copycat(
        &["copy", &source, &format!("{}/config/signed", dst.host())],
        &[("REFERRERS", "none")],
    );
    assert_eq!(by_config.status.code(), Some(0), "{}", text(&by_config));
    assert_eq!(list_tags(&dst, "config/signed").await.unwrap(), vec!["1.0"]);

    let all = copycat(&["copy", &source, &format!("{}/on/signed", dst.host())], &[]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    assert!(
        text(&all).contains("signatures/attestations/SBOMs: 1 at the target, 1 copied"),
        "{}",
        text(&all)
    );
    assert_eq!(
        manifest_digest(&dst, "on/signed", &subject.cosign_tag("sig"))
            .await
            .unwrap(),
        Some(sig.digest.clone())
    );

    let dir = tempfile::tempdir().unwrap();
    let file = images_file(&dir, &dst, std::slice::from_ref(&source));
    let synced = copycat(&["sync", "--images", &file, "--referrers", "signatures"], &[]);
    assert_eq!(synced.status.code(), Some(0), "{}", text(&synced));
    assert_eq!(
        skopeo_digest(&dst, &format!("external/team/signed:{}", subject.cosign_tag("sig")))
            .await
            .unwrap(),
        sig.digest
    );
    let bad = copycat(
        &["copy", "--referrers", "some", &source, &format!("{}/x", dst.host())],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--referrers"), "{}", text(&bad));
}

/// A cron job's runs of `sync`: an image already at the target is looked at for related artifacts
/// once per `referrersInterval` across runs (the state file), a re-sign upstream arrives after it,
/// an image the run writes is always looked at, and the state never stops a sync.
#[tokio::test]
async fn sync_remembers_its_looks_for_signatures_between_runs() {
    use testkit::artifacts::{self, Subject};
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[3000], 160).unwrap();
    image.push(&src, "team/app", "1.0").await.unwrap();
    let subject = Subject::of(&image);
    let sig = artifacts::cosign_signature(&subject, "team/app", 1, 1);
    sig.push(&src, "team/app", &subject.cosign_tag("sig")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = images_file(&dir, &dst, &[format!("{}/team/app:1.0", src.host())]);
    let state = dir.path().join("state/sync.json");
    let home = dir.path().join("home");
    let tag_lists = |from: usize| {
        src.requests()[from..]
            .iter()
            .filter(|r| r.path.contains("/tags/list"))
            .count()
    };
    // 2 s, so a copier's look holds 1.8 s (90 %, as the daemon's).
    let interval = [("REFERRERS_INTERVAL", "2")];
    let sync = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["sync", "--images", file.as_str()];
        args.extend_from_slice(extra);
        let out = copycat(&args, env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    };
    let with_state = ["--state", state.to_str().unwrap()];

    let before = src.requests().len();
    let first = sync(&with_state, &interval);
    assert!(first.contains("1 at the target, 1 copied"), "{first}");
    assert_eq!(tag_lists(before), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600,
        "the state file is its owner's"
    );

    // Within the interval: the image is at the target, nothing is asked about its artifacts; a
    // re-sign upstream waits for the interval's end.
    let att = artifacts::cosign_attestation(&subject, "team/app", 2);
    att.push(&src, "team/app", &subject.cosign_tag("att")).await.unwrap();
    let before = src.requests().len();
    let second = sync(&with_state, &interval);
    assert!(second.contains("looked for within referrersInterval"), "{second}");
    assert_eq!(tag_lists(before), 0, "{second}");
    assert_eq!(
        manifest_digest(&dst, "external/team/app", &subject.cosign_tag("att"))
            .await
            .unwrap(),
        None
    );
    // --no-state looks now.
    let before = src.requests().len();
    let now = sync(&["--no-state"], &interval);
    assert_eq!(tag_lists(before), 1, "{now}");
    assert!(now.contains("2 at the target, 1 copied"), "{now}");

    // After the interval, the remembered look is over: the next run looks (and finds nothing new).
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let before = src.requests().len();
    let after = sync(&with_state, &interval);
    assert_eq!(tag_lists(before), 1, "{after}");
    assert!(after.contains("2 at the target, 0 copied"), "{after}");

    // The target lost everything: the image is written, and its artifacts looked for at once, even
    // though the state remembers a look a moment ago.
    dst.wipe().unwrap();
    let rewritten = sync(&with_state, &interval);
    assert!(rewritten.contains("2 at the target, 2 copied"), "{rewritten}");

    // Without --state, the file is under $XDG_STATE_HOME, else $HOME/.local/state; a dry run
    // writes none.
    let xdg = dir.path().join("xdg");
    sync(&["--dry-run"], &[("HOME", home.to_str().unwrap())]);
    assert!(!home.join(".local/state/copycat/sync-state.json").exists());
    sync(&[], &[("HOME", home.to_str().unwrap())]);
    assert!(home.join(".local/state/copycat/sync-state.json").exists());
    sync(
        &[],
        &[
            ("HOME", home.to_str().unwrap()),
            ("XDG_STATE_HOME", xdg.to_str().unwrap()),
        ],
    );
    assert!(xdg.join("copycat/sync-state.json").exists());

    // A damaged state file is a warning naming it; the run looks, and writes a good one.
    std::fs::write(&state, "{ not json").unwrap();
    let before = src.requests().len();
    let damaged = sync(&with_state, &interval);
    assert!(
        damaged.contains("ignoring the sync state") && damaged.contains(state.to_str().unwrap()),
        "{damaged}"
    );
    assert_eq!(tag_lists(before), 1, "{damaged}");
    let before = src.requests().len();
    sync(&with_state, &interval);
    assert_eq!(tag_lists(before), 0, "the damaged file was replaced");

    // --state and --no-state together are a usage error.
    let both = copycat(
        &["sync", "--images", &file, "--no-state", "--state", "/tmp/x.json"],
        &[],
    );
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
}
