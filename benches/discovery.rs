//! Scale benchmark of discovery and planning: `cargo bench --bench discovery`.
//!
//! The stand-in API server holds 10,000 Pods under 2,000 Deployments (with their ReplicaSets), 500
//! StatefulSets, 200 DaemonSets, 500 Jobs and 200 CronJobs in 50 namespaces, using 300 images.
//! `copycat run` starts with `DRY_PULL=true` (no registry request at all). Reported: time until every
//! watcher has listed and until every task is planned, peak RSS, requests made to the API server, and
//! the CPU copycat spends on 1,000 Pod status updates that change no image (and whether they caused
//! any new planning).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;

const NAMESPACES: usize = 50;
const IMAGES: usize = 300;

fn image(i: usize) -> String {
    format!("registry.example.com/lib/img{:03}:1", i % IMAGES)
}

fn pod_template(i: usize) -> Value {
    json!({"metadata": {"labels": {"app": format!("a{i}")}}, "spec": {"containers": [{"name": "main", "image": image(i)}]}})
}

fn workload(kind: &str, api: &str, i: usize) -> Value {
    let ns = format!("ns-{:02}", i % NAMESPACES);
    let name = format!("{}-{i}", kind.to_lowercase());
    let spec = if kind == "CronJob" {
        json!({"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": pod_template(i)}}})
    } else {
        json!({"selector": {"matchLabels": {"app": format!("a{i}")}}, "template": pod_template(i)})
    };
    json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn pod(d: usize, replica: usize, restarts: u32) -> Value {
    let ns = format!("ns-{:02}", d % NAMESPACES);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("deployment-{d}-rs-{replica}"), "namespace": ns,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("deployment-{d}-rs"), "uid": format!("rs-{d}"), "controller": true}]},
           "spec": {"containers": [{"name": "main", "image": image(d)}]},
           "status": {"phase": "Running", "containerStatuses": [{"name": "main", "image": image(d), "ready": true, "restartCount": restarts,
                       "imageID": format!("registry.example.com/lib/img{:03}@sha256:{}", d % IMAGES, "a".repeat(64))}]}})
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command name.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn vm_hwm_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::new();
    let mut objects = Vec::new();
    for n in 0..NAMESPACES {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n:02}")}}));
    }
    for d in 0..2000 {
        objects.push(workload("Deployment", "apps/v1", d));
        objects.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("deployment-{d}-rs"), "namespace": format!("ns-{:02}", d % NAMESPACES),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("deployment-{d}"), "uid": format!("d-{d}"), "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": format!("a{d}")}}, "template": pod_template(d)}}));
        for r in 0..5 {
            objects.push(pod(d, r, 0));
        }
    }
    for (kind, api, count) in [
        ("StatefulSet", "apps/v1", 500),
        ("DaemonSet", "apps/v1", 200),
        ("Job", "batch/v1", 500),
        ("CronJob", "batch/v1", 200),
    ] {
        for i in 0..count {
            objects.push(workload(kind, api, i + 7));
        }
    }
    let total = objects.len();
    server.apply_all(objects).expect("load objects");
    let running = server.serve().expect("serve");
    server.clear_requests();
    eprintln!("loaded {total} objects");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_copycat"))
        .args(["run", "--kubeconfig"])
        .arg(running.kubeconfig_path())
        .env_clear()
        .envs([
            ("CONFIG_PATH", "/nonexistent"),
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", "mirror.example.com"),
            ("DRY_PULL", "true"),
            ("LEADER_ELECT", "false"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info"),
            // Loopback only, on ports the system picks (the defaults listen on every interface).
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("HEALTH_ADDR", "127.0.0.1:0"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start copycat");
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<(Instant, Value)>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send((Instant::now(), v));
            }
        }
    });

    let (mut listed, mut planned, mut would, mut inventory) = (None, None, 0usize, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    while planned.is_none() || would < IMAGES {
        assert!(
            Instant::now() < deadline,
            "copycat did not plan in 120 s (planned: {planned:?}, would-mirror lines: {would})"
        );
        peak = peak.max(vm_hwm_mib(pid));
        while let Ok((at, v)) = rx.recv_timeout(Duration::from_millis(10)) {
            match v["message"].as_str() {
                Some("initial list complete") => {
                    listed = Some(at - started);
                    inventory = v["objects"].as_u64().unwrap_or(0);
                }
                // The first plan made with every watcher listed.
                Some("planned") if listed.is_some() && v["tasks"].as_u64() == Some(IMAGES as u64) => {
                    planned = planned.or(Some(at - started))
                }
                Some(m) if m.starts_with("would mirror") || v["result"].as_str() == Some("dry-pull") => would += 1,
                _ => {}
            }
        }
    }
    let list_requests = server.count_requests("GET", "");
    let cpu_before = cpu_ticks(pid);
    let plans_before = Instant::now();
    for i in 0..1000 {
        server.apply(pod(i, 0, 1)).expect("status update");
    }
    std::thread::sleep(Duration::from_secs(3));
    let cpu_after = cpu_ticks(pid);
    peak = peak.max(vm_hwm_mib(pid));
    let replans = rx
        .try_iter()
        .filter(|(at, v)| *at > plans_before && v["message"] == "planned" && v["submitted"].as_u64() != Some(0))
        .count();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let tick = 1.0 / 100.0;

    println!("\n## discovery at scale ({total} objects, {IMAGES} images, DRY_PULL)\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| every watcher listed ({inventory} objects kept) | {:.2} s | |",
        listed.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    println!(
        "| every task planned ({IMAGES} tasks) | {:.2} s | ≤ 5 s |",
        planned.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    println!("| peak RSS of copycat | {peak} MiB | ≤ 100 MiB |");
    println!("| requests to the API server until planned | {list_requests} | |");
    println!(
        "| CPU on 1,000 Pod status updates | {:.2} s | < 1 s |",
        (cpu_after - cpu_before) as f64 * tick
    );
    println!("| plans that submitted work after those updates | {replans} | 0 (no registry request) |");
    println!("| exit after SIGTERM | {:?} | 0 |", status.code());
}
