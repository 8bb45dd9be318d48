//! `copycat verify`: is the backup complete? One list of each watched kind (the daemon's own
//! discovery), the daemon's plan (filters, exclusions, naming), then every planned target checked at
//! the target registry; a table or JSON on stdout, progress on stderr.

use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_FAILED, usage};
use crate::cli::{OutputFormat, VerifyArgs};
use crate::config::Config;
use crate::copy::check::Depth;
use crate::coverage::{self, CheckOptions, ImageCoverage, Summary};
use crate::discovery::inventory::Inventory;
use crate::discovery::watch::{self, ListError};
use crate::wiring::{DaemonParts, WiringError};

/// How long the API server may take to list every watched kind.
pub(super) const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// `copycat verify`.
pub async fn verify(config: &Config, args: &VerifyArgs) -> ExitCode {
    let (parts, namespaces) = match cluster_parts(config, &args.namespaces).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    let inventory = match list_watched(config, &parts, namespaces.as_deref()).await {
        Ok(inventory) => inventory,
        Err(e) => {
            eprintln!("copycat: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let plan = parts.planner.plan(&inventory);
    let total = plan.tasks.len();
    eprintln!(
        "copycat: checking {total} targets at {}{}",
        parts.targets.join(", "),
        if args.deep { " (deep: reading every blob)" } else { "" }
    );
    let options = CheckOptions {
        depth: if args.deep { Depth::Deep } else { Depth::Quick },
        images: usize::from(args.jobs),
        blobs: config.blob_concurrency as usize,
    };
    let images = coverage::check_plan(&parts.copier, &plan, options, |image, done| {
        progress(image, done, total)
    })
    .await;
    let summary = Summary::of(images.iter().map(|i| i.state));
    if images.is_empty() {
        eprintln!("copycat: warning: no image is in scope (check --namespace and the namespace filters)");
    }
    match args.output {
        OutputFormat::Table => {
            print!("{}", coverage::table(&images));
            println!("{summary}");
        }
        OutputFormat::Json => {
            let report = serde_json::json!({ "images": images, "summary": summary });
            println!("{report:#}");
        }
    }
    if summary.complete() {
        ExitCode::SUCCESS
    } else {
        eprintln!("copycat: the backup is incomplete: {summary}");
        ExitCode::from(EXIT_FAILED)
    }
}

/// The daemon's parts for a one-shot command that reads the cluster, and the namespaces it lists:
/// `--namespace` (checked), else those the configuration names one by one, else all (`None`). A
/// configuration or kubeconfig problem is the exit code to return (printed).
pub(super) async fn cluster_parts(
    config: &Config,
    namespaces: &[String],
) -> Result<(DaemonParts, Option<Vec<String>>), ExitCode> {
    if let Some(bad) = namespaces.iter().find(|n| n.is_empty() || n.contains('/')) {
        return Err(usage(&format!("--namespace {bad:?}: not a namespace name")));
    }
    let parts = match DaemonParts::build(config).await {
        Ok(parts) => parts,
        Err(e @ WiringError::Kubeconfig(_)) => return Err(usage(&e.to_string())),
        Err(e) => {
            eprintln!("copycat: {e}");
            return Err(ExitCode::from(EXIT_FAILED));
        }
    };
    let namespaces = if namespaces.is_empty() {
        parts.planner.scope().only_names()
    } else {
        Some(namespaces.to_vec())
    };
    Ok((parts, namespaces))
}

/// One list of each kind the daemon watches (its own discovery) in `namespaces` (`None`: every
/// namespace), said on stderr; for the commands that plan from the cluster (`verify`, `node-config`).
pub(super) async fn list_watched(
    config: &Config,
    parts: &DaemonParts,
    namespaces: Option<&[String]>,
) -> Result<Inventory, ListError> {
    let watched = watch::watched_for(
        &parts.watched,
        config.check_node_platform,
        config.use_image_pull_secrets,
    );
    let feeds = watch::feeds(&watched, namespaces);
    eprintln!(
        "copycat: listing {} in {} from {}",
        config.watch_resources.join(", "),
        scope_text(namespaces),
        parts.api_server
    );
    watch::list_once(parts.client.clone(), &parts.api_server, &feeds, LIST_TIMEOUT).await
}

/// `namespaces` as progress lines name them.
pub(super) fn scope_text(namespaces: Option<&[String]>) -> String {
    namespaces.map_or_else(|| "every namespace".to_owned(), |n| n.join(", "))
}

/// One finished check on stderr: every image that is not verified, and a count every 10 images.
fn progress(image: &ImageCoverage, done: usize, total: usize) {
    let state = image.state.as_str();
    if image.state != coverage::BackupState::Verified {
        eprintln!(
            "copycat: [{done}/{total}] {} → {}: {state}: {}",
            image.image, image.target, image.detail
        );
    } else if done.is_multiple_of(10) || done == total {
        eprintln!("copycat: [{done}/{total}] checked");
    }
}
