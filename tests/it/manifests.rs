//! `manifests/k8s.yaml`: the invariants an operator relies on after `kubectl apply`. The schema itself
//! is checked offline by `kubernetes-validate` in scripts/test.sh.

use std::process::Command;

use serde_json::Value;

const MANIFEST: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/k8s.yaml"));
const SETTINGS_DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md"));

pub(crate) fn objects() -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(MANIFEST).expect("manifests/k8s.yaml parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// A YAML list of strings (`verbs`, `resources`, …).
pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    let all = objects();
    let found: Vec<&Value> = all
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0].clone()
}

fn config_text() -> String {
    object("ConfigMap", "k8s-copycat-config")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml is a string")
        .to_owned()
}

fn container() -> Value {
    let deployment = object("Deployment", "k8s-copycat");
    assert_eq!(deployment["metadata"]["namespace"], "k8s-copycat");
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "one replica until leader election is built"
    );
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(containers.len(), 1);
    containers[0].clone()
}

/// Runs `copycat check-config` on the ConfigMap's config.yaml with an empty environment.
fn check_config() -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config_text()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_copycat"))
        .arg("check-config")
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .output()
        .expect("run copycat");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the ConfigMap's config.yaml is invalid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn configmap_config_is_valid_and_a_harmless_dry_run() {
    let stdout = check_config();
    assert!(stdout.lines().any(|l| l == "targetKind: docker"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "dryRun: true"), "{stdout}");
}

#[test]
fn configmap_config_names_every_setting() {
    assert_names_every_setting("the ConfigMap", &config_text());
}

#[test]
fn example_config_names_every_setting() {
    assert_names_every_setting("config.yaml.example", include_str!("../../config.yaml.example"));
}

/// `text` names every key check-config prints, every environment-only setting and every row of the
/// settings table.
fn assert_names_every_setting(what: &str, text: &str) {
    let stdout = check_config();
    let mut missing = Vec::new();
    let (yaml, env_only) = stdout
        .split_once("# Settings read only from the environment")
        .expect("check-config lists the environment-only settings");
    // Every key of the effective configuration, at every depth (list items included).
    for line in yaml.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some((key, _)) = line.split_once(':')
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric())
            && !text.contains(&format!("{key}:"))
        {
            missing.push(key.to_owned());
        }
    }
    // The environment-only settings (CONFIG_PATH, METRICS_ADDR, …) are named in a comment.
    for line in env_only.lines().skip(1) {
        if let Some((name, _)) = line.trim_start_matches('#').trim().split_once(':')
            && !text.contains(name)
        {
            missing.push(name.to_owned());
        }
    }
    // Entry fields that check-config prints only for non-empty lists (registryCredentials[].tokenEnv,
    // …): the generated settings table in docs/configuration.md names them all.
    let table = SETTINGS_DOC
        .split("<!-- settings:start -->")
        .nth(1)
        .and_then(|t| t.split("<!-- settings:end -->").next())
        .expect("settings table in docs/configuration.md");
    let mut rows = 0;
    for row in table.lines().filter(|l| l.starts_with("| `") || l.starts_with("| —")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (yaml_key, env) = (cells[1].trim_matches('`'), cells[2].trim_matches('`'));
        rows += 1;
        if yaml_key != "—" {
            let leaf = yaml_key.rsplit(['.', ']']).next().unwrap();
            if !text.contains(&format!("{leaf}:")) {
                missing.push(yaml_key.to_owned());
            }
        } else if !text.contains(env) {
            missing.push(env.to_owned());
        }
    }
    assert!(rows > 50, "settings table not found ({rows} rows)");
    assert!(missing.is_empty(), "settings missing from {what}: {missing:?}");
}

#[test]
fn deployment_probes_ports_and_config_mount() {
    let c = container();
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 8081);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8081);
    let ports: Vec<&Value> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert!(
        ports.contains(&&Value::from(8080)) && ports.contains(&&Value::from(8081)),
        "{ports:?}"
    );
    assert!(c.get("args").is_none(), "the image's default command is `copycat run`");
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/config");
    assert_eq!(mount["readOnly"], true);
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "POD_NAMESPACE" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{env:?}"
    );
    let service = object("Service", "k8s-copycat");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
}

/// Issue 18, §5: the manifest names a versioned image, never `latest`.
#[test]
fn deployment_image_is_the_crate_version() {
    let image = container()["image"].as_str().unwrap().to_owned();
    assert_eq!(image, format!("ghcr.io/copycat/copycat:{}", env!("CARGO_PKG_VERSION")));
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("docker build -t {image} ")),
        "the Dockerfile's build line names {image}"
    );
}

#[test]
fn deployment_security_context() {
    let sc = container()["securityContext"].clone();
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let c = container();
    let requests = &c["resources"]["requests"];
    let limits = &c["resources"]["limits"];
    assert_eq!(
        (requests["cpu"].as_str(), requests["memory"].as_str()),
        (Some("50m"), Some("64Mi"))
    );
    assert_eq!(
        (limits["cpu"].as_str(), limits["memory"].as_str()),
        (Some("500m"), Some("256Mi"))
    );
}

#[test]
fn cluster_role_reads_creates_only_events_and_image_statuses_and_grants_no_secrets() {
    let role = object("ClusterRole", "k8s-copycat");
    let rules = role["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    let mut creates_events = false;
    for rule in rules {
        let (groups, resources, verbs) = (
            strings(&rule["apiGroups"]),
            strings(&rule["resources"]),
            strings(&rule["verbs"]),
        );
        for r in &resources {
            assert!(r != "secrets" && r != "*", "ClusterRole grants {r}");
        }
        if verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())) {
            continue;
        }
        // The other write: the status of `Image` objects, patched through their status subresource.
        if resources == ["images/status"] {
            assert_eq!(
                (groups, verbs),
                (vec!["skopeo.io".to_owned()], vec!["patch".to_owned()]),
                "{rule}"
            );
            continue;
        }
        // The one write: core/v1 Events (what copycat creates), in any namespace, create only.
        assert_eq!(
            (groups, resources, verbs),
            (
                vec![String::new()],
                vec!["events".to_owned()],
                vec!["create".to_owned()]
            ),
            "{rule}"
        );
        creates_events = true;
    }
    assert!(
        creates_events,
        "Events on failing workloads need create on events: {rules:?}"
    );
    // Writes in copycat's own namespace: the Lease.
    let role = object("Role", "k8s-copycat");
    assert_eq!(role["metadata"]["namespace"], "k8s-copycat");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["resources"]), ["leases"], "{rule}");
    }
    let binding = object("ClusterRoleBinding", "k8s-copycat");
    assert_eq!(binding["subjects"][0]["name"], "k8s-copycat");
    assert_eq!(binding["subjects"][0]["namespace"], "k8s-copycat");
}
