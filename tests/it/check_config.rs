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
