//! `copycat node-config`: the registries to configure (`--registry`, else one list of the cluster
//! planned as the daemon plans it), their routes to the mirror ([`crate::node_config`]), and the
//! files written under `--output` or printed. Refused registries and what the mirror cannot serve go
//! to stderr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::verify::{cluster_parts, list_watched};
use super::{EXIT_FAILED, usage};
use crate::cli::NodeConfigArgs;
use crate::config::Config;
use crate::node_config::{self, Order, Route, Runtime};
use crate::wiring;

/// The CRI-O drop-in's file name under `--output`.
pub const CRIO_FILE: &str = "copycat-mirror.conf";

/// `copycat node-config`.
pub async fn node_config(config: &Config, args: &NodeConfigArgs) -> ExitCode {
    let Some(naming) = wiring::mirror_naming(config) else {
        return usage(
            "node-config describes one target registry; with targetKind pullThrough, point each runtime's \
             mirror of a registry at its cache (pullThrough.caches) by hand, see docs/pull-through.md",
        );
    };
    let names = if args.registries.is_empty() {
        match cluster_registries(config, args).await {
            Ok(names) => names,
            Err(code) => {
                eprintln!("copycat: (--registry HOST names the registries without reading the cluster)");
                return code;
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

/// The source registries of the images the daemon would mirror: one list of the cluster, planned;
/// on failure, what went wrong is said and the exit code returned.
async fn cluster_registries(config: &Config, args: &NodeConfigArgs) -> Result<Vec<String>, ExitCode> {
    let (parts, namespaces) = cluster_parts(config, &args.namespaces).await?;
    let inventory = list_watched(config, &parts, namespaces.as_deref()).await.map_err(|e| {
        eprintln!("copycat: {e}");
        ExitCode::from(EXIT_FAILED)
    })?;
    let planner = &parts.planner;
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
