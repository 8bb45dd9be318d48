//! `copycat node-config`: the registries to configure (`--registry`, else one list of the cluster
//! planned as the daemon plans it), their routes to the mirror ([`crate::node_config`]), and the
//! files written under `--output` or printed. Refused registries and what the mirror cannot serve go
//! to stderr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_FAILED, bad_namespace, list_cluster, usage};
use crate::cli::NodeConfigArgs;
use crate::config::Config;
use crate::discovery::watch::ListError;
use crate::naming::NamingError;
use crate::node_config::{self, Order, Route, Runtime};
use crate::plan::Planner;
use crate::wiring::{self, KubeconfigError};

/// The CRI-O drop-in's file name under `--output`.
pub const CRIO_FILE: &str = "copycat-mirror.conf";

/// `copycat node-config`.
pub async fn node_config(config: &Config, args: &NodeConfigArgs) -> ExitCode {
    if let Some(bad) = bad_namespace(&args.namespaces) {
        return usage(&format!("--namespace {bad:?}: not a namespace name"));
    }
    let names = if args.registries.is_empty() {
        match cluster_registries(config, args).await {
            Ok(names) => names,
            // Configuration problems are usage errors (2); a cluster that cannot be listed is 1.
            Err(e @ (ClusterError::Kubeconfig(_) | ClusterError::PathMap(_))) => {
                return usage(&format!(
                    "{e} (or name the registries with --registry HOST, which needs no cluster)"
                ));
            }
            Err(e @ ClusterError::List(_)) => {
                eprintln!("copycat: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    } else {
        args.registries.clone()
    };
    let namespaces = match node_config::namespaces(&names) {
        Ok(n) => n,
        Err(e) => return usage(&format!("--registry: {e}")),
    };
    if namespaces.is_empty() {
        return usage(
            "no registry to configure: the cluster runs no image copycat mirrors (check --namespace and the \
             namespace filters), or name the registries with --registry HOST",
        );
    }
    let naming = wiring::mirror_naming(config);
    let (routes, refusals) = naming.routes(&namespaces);
    for refusal in &refusals {
        eprintln!("copycat: {}: not configured: {}", refusal.namespace, refusal.reason);
    }
    for route in &routes {
        for gap in &route.gaps {
            eprintln!("copycat: {}: not served by the mirror: {gap}", route.namespace);
        }
        if args.format == Runtime::Containerd {
            for (from, location) in &route.moved {
                eprintln!(
                    "copycat: {}: not served by the mirror: images under {}/{from} are kept at {location} (pathMap), \
                     and containerd cannot rewrite paths",
                    route.namespace, route.namespace
                );
            }
        }
    }
    if !routes.is_empty() {
        let order = if args.mirror_first {
            Order::MirrorFirst
        } else {
            Order::UpstreamFirst
        };
        let files = render(args.format, &routes, order, naming.insecure);
        let written = match &args.output {
            Some(dir) => write(dir, &files),
            None => {
                print(&files);
                Ok(())
            }
        };
        if let Err(e) = written {
            eprintln!("copycat: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
        let names: Vec<&str> = routes.iter().map(|r| r.namespace.as_str()).collect();
        eprintln!(
            "copycat: configured {} registr{} ({}) for the mirror {}",
            routes.len(),
            if routes.len() == 1 { "y" } else { "ies" },
            names.join(", "),
            routes[0].mirror.host
        );
    }
    if refusals.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Why the cluster's registries cannot be read.
#[derive(Debug, thiserror::Error)]
enum ClusterError {
    /// No usable Kubernetes configuration.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// `pathMap` does not compile.
    #[error("pathMap: {0}")]
    PathMap(#[from] NamingError),
    /// The API server did not list every watched kind.
    #[error(transparent)]
    List(#[from] ListError),
}

/// The source registries of the images the daemon would mirror: one list of the cluster, planned.
async fn cluster_registries(config: &Config, args: &NodeConfigArgs) -> Result<Vec<String>, ClusterError> {
    let (client, api_server) = wiring::kube_client(config).await?;
    let planner = Planner::new(config, &wiring::target_registry(config))?;
    let inventory = list_cluster(config, client, &api_server, &planner, &args.namespaces).await?;
    let plan = planner.plan(&inventory);
    let registries: BTreeSet<String> = plan
        .tasks
        .iter()
        .map(|t| t.request.source.registry().to_owned())
        .collect();
    eprintln!(
        "copycat: the cluster pulls mirrored images from {}",
        if registries.is_empty() {
            "no registry".to_owned()
        } else {
            registries.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    );
    Ok(registries.into_iter().collect())
}

/// The files for `routes`: (path relative to `--output`, text).
fn render(runtime: Runtime, routes: &[Route], order: Order, insecure: bool) -> Vec<(String, String)> {
    match runtime {
        Runtime::Containerd => routes
            .iter()
            .map(|route| {
                (
                    format!("{}/hosts.toml", route.namespace),
                    node_config::containerd_hosts(route, order, insecure),
                )
            })
            .collect(),
        Runtime::CriO => vec![(
            CRIO_FILE.to_owned(),
            node_config::crio_registries(routes, order, insecure),
        )],
    }
}

/// A file `node-config` could not write.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
struct WriteError {
    /// The file or the directory that could not be created.
    path: PathBuf,
    source: std::io::Error,
}

/// Writes `files` under `dir`, creating directories as needed.
fn write(dir: &Path, files: &[(String, String)]) -> Result<(), WriteError> {
    for (name, text) in files {
        let path = dir.join(name);
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| WriteError { path, source }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(failed(parent))?;
        }
        std::fs::write(&path, text).map_err(failed(&path))?;
        eprintln!("copycat: wrote {}", path.display());
    }
    Ok(())
}

/// `files` on stdout, each after a comment naming it (several `hosts.toml` files are no one TOML
/// document: write them with `--output`).
fn print(files: &[(String, String)]) {
    for (i, (name, text)) in files.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("# ---- {name} ----");
        print!("{text}");
    }
}
