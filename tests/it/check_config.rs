//! `copycat check-config` as an operator runs it: exit codes and messages.

use std::process::{Command, Output};

use crate::support::config_file as write;

fn check_config(config: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
    cmd.arg("check-config").arg("--config").arg(config).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run copycat")
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml.example");

#[test]
fn example_config_is_valid() {
    let out = check_config(EXAMPLE, &[("DOCKERHUB_PASSWORD", "dh-secret-value")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("registry: registry.example.com:5000"), "{stdout}");
    assert!(!stdout.contains("dh-secret-value"), "secret printed: {stdout}");
}

/// `check-config` shows the anchor tag template in effect: the default, or `none` when turned off
/// in the file or the environment; a reserved template exits 2 naming the key and why.
#[test]
fn check_config_shows_the_anchor_tag_template_or_none() {
    let target = "targetKind: docker\ndocker: {registry: r.example.com}\n";
    let unset = write(target);
    let off = write(&format!("{target}digestTagTemplate: none\n"));
    let reserved = write(&format!("{target}digestTagTemplate: $algorithm-$hex\n"));
    let path = |f: &tempfile::NamedTempFile| f.path().to_str().unwrap().to_owned();
    // (config file, environment, the line printed or None for exit 2, the reason named)
    type Case<'a> = (String, &'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: [Case<'_>; 4] = [
        (path(&unset), &[], Some("digestTagTemplate: copycat-$hex\n"), ""),
        (path(&off), &[], Some("digestTagTemplate: none\n"), ""),
        (
            path(&unset),
            &[("DIGEST_TAG_TEMPLATE", "NONE")],
            Some("digestTagTemplate: none\n"),
            "",
        ),
        (path(&reserved), &[], None, "reserved by the OCI referrers tag schema"),
    ];
    for (file, env, shown, error) in cases {
        let out = check_config(&file, env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        match shown {
            Some(line) => {
                assert_eq!(out.status.code(), Some(0), "{env:?}: {stderr}");
                assert!(stdout.contains(line), "{env:?}: {line:?} not in {stdout}");
            }
            None => {
                assert_eq!(out.status.code(), Some(2), "{stdout}");
                assert!(
                    stderr.contains("digestTagTemplate (") && stderr.contains(error),
                    "{stderr}"
                );
            }
        }
    }
}

#[test]
fn misspelled_key_is_named_with_a_suggestion() {
    let file = write("targetKind: docker\ndocker: {registry: r.example.com}\nincludeNamespace: [a]\n");
    let out = check_config(file.path().to_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("includeNamespace (") && stderr.contains("did you mean \"includeNamespaces\""),
        "{stderr}"
    );
}

#[test]
fn bad_env_value_is_named() {
    let out = check_config(EXAMPLE, &[("WATCH_RESOURCES", "deploymentz")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("WATCH_RESOURCES (env)") && stderr.contains("deploymentz"),
        "{stderr}"
    );
}

#[test]
fn every_problem_is_listed_and_secrets_stay_hidden() {
    let file =
        write("targetKind: docker\ndocker: {registry: r.example.com}\ndryRun: maybe\nregistryRetryAttempts: 0\n");
    let out = check_config(
        file.path().to_str().unwrap(),
        &[("TARGET_PASSWORD", "pw-should-not-show"), ("DIGEST_PULL", "nah")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("3 problems"), "{stderr}");
    for key in ["dryRun", "registryRetryAttempts", "DIGEST_PULL"] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
    assert!(!stderr.contains("pw-should-not-show"));
    let ok = write("targetKind: docker\ndocker: {registry: r.example.com}\n");
    let out = check_config(
        ok.path().to_str().unwrap(),
        &[("TARGET_PASSWORD", "pw-should-not-show")],
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("pw-should-not-show") && stdout.contains("TARGET_PASSWORD: ********"),
        "{stdout}"
    );
}

/// `copycat ARGS` with an empty environment: exit code and stderr, or a failure if it takes more
/// than 10 s (a FIFO used to hang the start, `/dev/zero` to fill the memory).
fn copycat_quickly(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_copycat"))
        .args(args)
        .env_clear()
        .env("TARGET_KIND", "docker")
        .env("TARGET_REGISTRY", "r.example.com")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run copycat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("copycat {args:?} still running after 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_fifo_a_device_or_a_huge_file_as_config_stops_the_start_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, format!("dryRun: true\n{}\n", "#".repeat(2 * 1024 * 1024))).unwrap();
    let cases = [
        (fifo.to_str().unwrap(), "not a regular file but a FIFO"),
        ("/dev/zero", "not a regular file but a character device"),
        (huge.to_str().unwrap(), "larger than the limit of 1048576 bytes"),
    ];
    for (path, why) in cases {
        for command in ["check-config", "run"] {
            let (code, stderr) = copycat_quickly(&[command, "--config", path]);
            assert_eq!(code, Some(2), "{command} {path}: {stderr}");
            assert!(
                stderr.contains(path) && stderr.contains(why),
                "{command} {path}: {stderr}"
            );
        }
    }
}

#[test]
fn secrets_in_malformed_configs_are_never_printed() {
    let cases = [
        // A password given as a list, a token as a mapping.
        "targetKind: docker\ndocker: {registry: r.example.com}\nregistryCredentials:\n  - registry: ghcr.io\n    password: [\"hunter2-Zq\"]\n  - registry: quay.io\n    token: {t: hunter2-Zq}\n",
        // Syntax errors right after a secret, in a block scalar and in an unclosed quote.
        "targetKind: docker\nregistryCredentials:\n  - registry: ghcr.io\n    password: hunter2-Zq\n\tusername: x\n",
        "registryCredentials:\n  - registry: ghcr.io\n    password: |\n      hunter2-Zq\n    username: [x\n",
        "registryCredentials:\n  - registry: ghcr.io\n    token: \"hunter2-Zq\n  - registry: [\n",
    ];
    for yaml in cases {
        let file = write(yaml);
        let out = check_config(file.path().to_str().unwrap(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}\n{stderr}");
        assert!(!stderr.contains("hunter2-Zq"), "secret printed for {yaml:?}:\n{stderr}");
        assert!(
            stderr.contains("registryCredentials") || stderr.contains(" | "),
            "{stderr}"
        );
    }
}

#[test]
fn overlong_string_settings_are_refused() {
    let file = write("targetKind: docker\ndocker: {registry: r.example.com}\n");
    let prefix = "p".repeat(100 * 1024);
    let out = check_config(file.path().to_str().unwrap(), &[("TARGET_REPO_PREFIX", &prefix)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TARGET_REPO_PREFIX (env)") && stderr.contains("more than the 4096"),
        "{stderr}"
    );
    assert!(
        stderr.len() < 1000,
        "the value is not echoed whole: {} bytes",
        stderr.len()
    );
}

/// A pull-through target prints its caches normalised; a bad cache entry exits 2 naming it, and
/// `copycat run` refuses it the same way before it needs a cluster.
#[test]
fn pull_through_caches_are_shown_normalised_or_refused_by_entry() {
    let good = write(
        "targetKind: pullThrough\npullThrough:\n  caches:\n    index.docker.io: Harbor.Example.com/dockerhub-proxy/\n",
    );
    let out = check_config(good.path().to_str().unwrap(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("targetKind: pullThrough\n"), "{stdout}");
    assert!(
        stdout.contains("docker.io: harbor.example.com/dockerhub-proxy\n"),
        "{stdout}"
    );

    let bad = write("targetKind: pullThrough\npullThrough:\n  caches:\n    ghcr.io: https://cache.example.com/ghcr\n");
    let path = bad.path().to_str().unwrap();
    let out = check_config(path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pullThrough.caches.ghcr.io ({path}): give the registry host without a scheme"
        )),
        "{stderr}"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_copycat"))
        .args(["run", "--config", path])
        .env_clear()
        .output()
        .expect("run copycat");
    assert_eq!(run.status.code(), Some(2), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("pullThrough.caches.ghcr.io"));

    // node-config describes one target registry; each registry has its own cache here.
    let node = Command::new(env!("CARGO_BIN_EXE_copycat"))
        .args([
            "node-config",
            "--format",
            "containerd",
            "--registry",
            "docker.io",
            "--config",
        ])
        .arg(good.path())
        .env_clear()
        .output()
        .expect("run copycat");
    let stderr = String::from_utf8_lossy(&node.stderr);
    assert_eq!(node.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("with targetKind pullThrough"), "{stderr}");
}
