//! What a new user reads when something is missing: the built binary's exit code and its message.

use crate::commands::{copycat, text};

/// A docker target, so that only the part under test is missing.
const TARGET: [(&str, &str); 2] = [("TARGET_KIND", "docker"), ("TARGET_REGISTRY", "127.0.0.1:5999")];

/// The lines copycat printed to stderr.
fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_without_any_kubeconfig_exits_2_with_one_sentence_naming_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let out = copycat(
        &["run", "--leader-elect=false"],
        &[TARGET[0], TARGET[1], ("HOME", home_str)],
    );
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let [line] = &lines[..] else {
        panic!("one line expected: {lines:#?}")
    };
    let home_config = format!("{home_str}/.kube/config");
    for part in [
        "no Kubernetes configuration",
        "KUBERNETES_SERVICE_HOST",
        "KUBECONFIG",
        &home_config,
        "--kubeconfig",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert_eq!(line.matches(&home_config).count(), 1, "{line}");
    assert!(!line.starts_with('{'), "a plain sentence, not a JSON log line: {line}");
}

#[test]
fn an_unusable_kubeconfig_exits_2_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-kubeconfig");
    let garbage = dir.path().join("garbage-kubeconfig");
    std::fs::write(&garbage, "clusters: [this is not a kubeconfig").unwrap();
    for (how, path) in [
        ("flag", &missing),
        ("flag", &garbage),
        ("env", &missing),
        ("env", &garbage),
    ] {
        let path = path.to_str().unwrap();
        let flag = format!("--kubeconfig={path}");
        let mut args = vec!["run", "--leader-elect=false"];
        let mut env = vec![TARGET[0], TARGET[1], ("HOME", dir.path().to_str().unwrap())];
        match how {
            "flag" => args.push(&flag),
            _ => env.push(("KUBECONFIG", path)),
        }
        let out = copycat(&args, &env);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(2), "{how} {path}: {}", text(&out));
        // One sentence; a YAML error may add the parser's pointer to the bad line below it.
        let line = &lines[0];
        assert!(
            line.starts_with("copycat: cannot use the Kubernetes configuration from"),
            "{lines:#?}"
        );
        assert_eq!(
            lines.join("\n").matches(path).count(),
            1,
            "{how}: the path once: {lines:#?}"
        );
    }
}

#[test]
fn a_config_file_the_user_named_must_exist() {
    let missing = "/nonexistent/copycat/config.yaml";
    let flag = format!("--config={missing}");
    for (args, env, origin) in [
        (vec!["check-config", flag.as_str()], vec![], "--config"),
        (
            vec!["check-config"],
            vec![("CONFIG_PATH", missing)],
            "CONFIG_PATH (env)",
        ),
        (
            vec!["copy", "a.example/x:1", "b.example/x:1", flag.as_str()],
            vec![],
            "--config",
        ),
    ] {
        let mut all = vec![TARGET[0], TARGET[1]];
        all.extend(env);
        let out = copycat(&args, &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            stderr.contains(&format!("{origin} = {missing}: the config file does not exist")),
            "{args:?}: {stderr}"
        );
    }
    // /dev/null means no file.
    let out = copycat(&["check-config", "--config=/dev/null"], &TARGET);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn run_with_nothing_set_hints_at_the_docker_target() {
    let out = copycat(&["run"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr.contains("ecr.accountID / ECR_ACCOUNT_ID: required when targetKind is ecr")
            && stderr.contains("TARGET_KIND=docker"),
        "{stderr}"
    );
}

#[test]
fn one_shot_commands_show_and_take_only_their_own_flags() {
    let daemon_only = [
        "--metrics-bind-address",
        "--health-probe-bind-address",
        "--leader-elect",
        "--kubeconfig",
    ];
    for command in ["copy", "sync"] {
        let out = copycat(&[command, "--help"], &[]);
        let help = text(&out);
        assert_eq!(out.status.code(), Some(0), "{help}");
        for flag in daemon_only {
            assert!(!help.contains(flag), "{command} --help lists {flag}:\n{help}");
        }
        assert!(help.contains("--config") && help.contains("--dry-run"), "{help}");
    }
    for command in ["run", "check-config"] {
        let help = text(&copycat(&[command, "--help"], &[]));
        for flag in daemon_only {
            assert!(help.contains(flag), "{command} --help lacks {flag}:\n{help}");
        }
    }
    let out = copycat(&["copy", "a.example/x:1", "b.example/x:1", "--kubeconfig=k"], &TARGET);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--kubeconfig"), "{}", text(&out));
}
