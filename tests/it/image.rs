//! The container image built without a container engine (`scripts/image.sh`, an OCI image layout in
//! `<target>/image`; scripts/test.sh builds it before the tests): its layer unpacked and the binary
//! run inside it with `chroot` as uid 65532, its config against the Dockerfile's, two builds of one
//! commit with one digest, and the push with its digest.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testkit::RegistryMode;

use crate::support::start;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `<target>/image`, failing with how to build it.
fn layout() -> PathBuf {
    testkit::tools::in_target_dir("image/index.json")
        .map(|index| index.parent().unwrap().to_path_buf())
        .expect("no image layout in the target dir: build it with 'scripts/image.sh' (scripts/test.sh does)")
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The layout's one manifest digest, its manifest and its config.
fn image(layout: &Path) -> (String, Value, Value) {
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let digest = manifests[0]["digest"].as_str().unwrap().to_owned();
    let manifest_bytes = blob(layout, &digest);
    assert_eq!(
        testkit::sha256_digest(&manifest_bytes),
        digest,
        "the manifest blob matches its digest"
    );
    let manifest = json(&manifest_bytes);
    let config = json(&blob(layout, manifest["config"]["digest"].as_str().unwrap()));
    (digest, manifest, config)
}

/// Runs `scripts/image.sh ARGS` (with the release binary already built); its output.
fn image_sh(args: &[&str], umask: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("umask {umask} && exec scripts/image.sh --no-build \"$@\""))
        .arg("image.sh")
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run scripts/image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/image.sh {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                todo.push(path);
            }
        }
    }
    out
}

/// `chroot --userspec=65532:65532 ROOT ARGS` with an empty environment: (exit code, stdout+stderr).
fn in_image(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let chroot = testkit::require_tool("chroot", "apt-get install -y coreutils").unwrap();
    let out = Command::new(chroot)
        .arg("--userspec=65532:65532")
        .arg(root)
        .args(args)
        .env_clear()
        .output()
        .expect("run chroot");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Issue 13, §3: the layer holds the binary (also as `/k8s-copycat`), the libraries it needs, CA
/// certificates and the passwd entry of 65532, and no shell; unpacked, the binary runs inside it with
/// `chroot` as 65532 (`--version`, `check-config` on the manifest's ConfigMap). The config matches
/// the Dockerfile's (user, entrypoint, command, ports) and carries the OCI labels.
#[test]
fn the_image_runs_under_chroot_with_only_what_it_holds() {
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "chroot needs root: run this test as root (CI does)"
    );
    let layout = layout();
    let (_, manifest, config) = image(&layout);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{labels}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .unwrap()
            .contains("copycat")
    );
    assert_eq!(
        labels["org.opencontainers.image.created"], config["created"],
        "created is the commit time"
    );

    // Equivalent to the Dockerfile's image.
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let instruction = |name: &str| {
        dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
            .to_owned()
    };
    let c = &config["config"];
    assert_eq!(c["User"], instruction("USER"));
    assert_eq!(c["Entrypoint"], json(instruction("ENTRYPOINT").as_bytes()));
    assert_eq!(c["Cmd"], json(instruction("CMD").as_bytes()));
    let ports: BTreeSet<String> = instruction("EXPOSE").split(' ').map(|p| format!("{p}/tcp")).collect();
    let exposed: BTreeSet<String> = c["ExposedPorts"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(exposed, ports);

    // Unpacked as a runtime would.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = layers[0]["digest"].as_str().unwrap();
    let gz = layout.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    let tar = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap().stdout;
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        testkit::sha256_digest(&tar),
        "diff_id of the layer"
    );
    let root = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .args(["-xzf"])
        .arg(&gz)
        .arg("-C")
        .arg(root.path())
        .args(["--same-owner", "--numeric-owner"])
        .status()
        .unwrap();
    assert!(status.success());
    let files = tree(root.path());
    for wanted in [
        "usr/local/bin/copycat",
        "k8s-copycat",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "home/nonroot",
        "tmp",
    ] {
        assert!(files.contains(wanted), "{wanted} missing: {files:?}");
    }
    let shells: Vec<&String> = files
        .iter()
        .filter(|f| ["sh", "bash", "dash", "busybox"].contains(&f.rsplit('/').next().unwrap()))
        .collect();
    assert!(shells.is_empty(), "a shell in the image: {shells:?}");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert_eq!(
        std::fs::metadata(root.path().join("home/nonroot")).unwrap().uid(),
        65532
    );
    assert_eq!(
        std::fs::read_link(root.path().join("k8s-copycat")).unwrap(),
        Path::new("/usr/local/bin/copycat")
    );

    // Issue 18, §5: the binary without debug information, linked to the separate debug file; the
    // image within 20 MiB compressed.
    let sections = Command::new("objdump")
        .arg("-h")
        .arg(root.path().join("usr/local/bin/copycat"))
        .output()
        .expect("objdump (binutils)");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        !sections.contains(".debug_line"),
        "debug information in the image's binary:\n{sections}"
    );
    assert!(
        sections.contains(".gnu_debuglink"),
        "no link to the debug file:\n{sections}"
    );
    let debug_file = layout
        .parent()
        .unwrap()
        .join(format!("copycat-{}.debug", env!("CARGO_PKG_VERSION")));
    assert!(debug_file.is_file(), "{} missing", debug_file.display());
    let compressed = layers[0]["size"].as_u64().unwrap();
    assert!(
        compressed <= 20 << 20,
        "the layer is {compressed} bytes compressed, more than 20 MiB"
    );

    // Runs with only what the image holds, as 65532.
    for binary in ["/usr/local/bin/copycat", "/k8s-copycat"] {
        let (code, out) = in_image(root.path(), &[binary, "--version"]);
        assert_eq!(code, Some(0), "{binary} --version: {out}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    }
    let configmap = crate::manifests::objects()
        .into_iter()
        .find(|o| o["kind"] == "ConfigMap")
        .unwrap();
    std::fs::create_dir(root.path().join("config")).unwrap();
    std::fs::write(
        root.path().join("config/config.yaml"),
        configmap["data"]["config.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let (code, out) = in_image(
        root.path(),
        &[
            "/usr/local/bin/copycat",
            "check-config",
            "--config",
            "/config/config.yaml",
        ],
    );
    assert_eq!(code, Some(0), "check-config in the image: {out}");
}

/// Issue 13, §3: two builds of one commit (at different times, with different umasks, into
/// different directories) write the same blobs, so the image has the same digest.
#[test]
fn two_builds_of_one_commit_have_the_same_digest() {
    layout(); // the release binary and a first build exist
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out_a = a.path().join("image");
    let out_b = b.path().join("image");
    image_sh(&["--out", out_a.to_str().unwrap()], "022");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    image_sh(&["--out", out_b.to_str().unwrap()], "077");
    let (digest_a, _, _) = image(&out_a);
    let (digest_b, _, _) = image(&out_b);
    assert_eq!(digest_a, digest_b);
    assert_eq!(tree(&out_a), tree(&out_b), "the same blobs");
    assert_eq!(
        std::fs::read(out_a.join("index.json")).unwrap(),
        std::fs::read(out_b.join("index.json")).unwrap()
    );
}

/// Issue 13, §3: `scripts/image.sh --push REF` pushes the layout to a registry and prints the digest,
/// which is the layout's and what the registry serves.
#[tokio::test]
async fn the_image_is_pushed_with_its_digest() {
    layout();
    let registry = start(RegistryMode::Plain);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("image");
    let reference = format!("{}/tools/copycat:{}", registry.host(), env!("CARGO_PKG_VERSION"));
    let printed = image_sh(
        &["--out", dir.to_str().unwrap(), "--push", &reference, "--insecure"],
        "022",
    );
    let (digest, _, _) = image(&dir);
    assert_eq!(printed.lines().last(), Some(digest.as_str()), "{printed}");
    assert_eq!(
        testkit::manifest_digest(&registry, "tools/copycat", env!("CARGO_PKG_VERSION"))
            .await
            .unwrap()
            .as_deref(),
        Some(digest.as_str())
    );
}
