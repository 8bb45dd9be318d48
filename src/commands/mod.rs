//! The one-shot commands `copycat copy` and `copycat sync`, and the wiring from configuration to a
//! [`Copier`] that the daemon shares.

mod progress;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;

use crate::app::EXIT_USAGE;
use crate::cli::{CopyArgs, SyncArgs};
use crate::config::{Config, Problem};
use crate::copy::{Copier, CopyOptions, CopyRequest};
use crate::naming;
use crate::platform::Platform;
use crate::reference::{self, ImageRef};
use crate::registry::credentials::{Credentials, load_docker_config};
use crate::registry::{ClientOptions, Credential, HostSettings, Registries};
use crate::target::Target;
use progress::Progress;

/// Exit status when some images failed.
const EXIT_FAILED: u8 = 1;

/// The CA files of `config` that cannot be used (unreadable, or without a usable certificate), as
/// configuration problems naming their setting: a start with one stops like any bad setting, instead
/// of failing later naming only the file. `check-config` does not read them: they may exist only where
/// copycat runs (a mounted Secret).
pub fn ca_file_problems(config: &Config) -> Vec<Problem> {
    let docker =
        (!config.docker.insecure).then(|| ("docker.caFile / TARGET_CA_FILE".to_owned(), &config.docker.ca_file));
    let entries = config
        .registries
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.insecure)
        .map(|(i, r)| (format!("registries[{i}].caFile"), &r.ca_file));
    docker
        .into_iter()
        .chain(entries)
        .filter(|(_, path)| !path.is_empty())
        .filter_map(|(origin, path)| {
            let error = crate::registry::load_ca_file(std::path::Path::new(path)).err()?;
            Some(Problem {
                origin,
                value: Some(path.clone()),
                message: error.to_string(),
            })
        })
        .collect()
}

/// Registry clients for `config`. Targets with renewable credentials (ECR) get them; the other
/// targets get the static target credentials (`TARGET_USERNAME`, `TARGET_PASSWORD`) and TLS
/// settings (`docker.insecure`, `docker.caFile`).
pub fn registries(config: &Config, targets: &[Target]) -> Result<Registries, String> {
    let env = |name: &str| std::env::var(name).ok();
    let mut credentials = Credentials::new();
    let docker = &config.docker;
    let mut hosts: HashMap<String, HostSettings> = config
        .registries
        .iter()
        .map(|r| {
            (
                r.host.clone(),
                HostSettings {
                    insecure: r.insecure,
                    ca_file: non_empty_path(&r.ca_file),
                },
            )
        })
        .collect();
    for target in targets {
        let host = reference::normalize_host(&target.host);
        if let Some(provider) = &target.credentials {
            credentials = credentials.with_provider(&host, provider.clone());
            continue;
        }
        if !docker.username.is_empty() || !docker.password.is_empty() {
            let credential = Credential::Basic {
                username: docker.username.clone(),
                password: docker.password.clone(),
            };
            credentials = credentials.with_host(&host, credential);
        }
        let settings = hosts.entry(host).or_default();
        settings.insecure |= docker.insecure;
        if settings.ca_file.is_none() {
            settings.ca_file = non_empty_path(&docker.ca_file);
        }
    }
    credentials = credentials.with_registry_credentials(&config.registry_credentials);
    if let Some((path, auths)) = load_docker_config(&env)? {
        tracing::debug!(path = %path.display(), entries = auths.len(), "using registry credentials from Docker config");
        credentials = credentials.with_docker_auths(auths);
    }
    let options = ClientOptions {
        request_timeout: config.request_timeout,
        retry_attempts: config.registry_retry_attempts,
        retry_backoff: config.registry_retry_backoff,
        max_concurrent_requests: config.registry_max_concurrent_requests as usize,
        hosts,
        user_agent: format!("copycat/{}", env!("CARGO_PKG_VERSION")),
    };
    Registries::new(options, Arc::new(credentials)).map_err(|e| e.to_string())
}

/// A copier over `registries` with the configured read mirrors, preparing the targets' repositories.
pub fn copier(config: &Config, registries: Registries, targets: &[Target]) -> Copier {
    let mut copier = Copier::new(registries).with_mirrors(config.registry_mirrors.clone().into_iter().collect());
    for target in targets {
        if let Some(preparer) = &target.repositories {
            copier = copier.with_preparer(&target.host, preparer.clone());
        }
    }
    copier
}

/// The copier of the one-shot commands for images written to `target_hosts`.
async fn command_copier(config: &Config, target_hosts: &[&str]) -> Result<Copier, String> {
    let mut targets: Vec<Target> = Vec::new();
    for host in target_hosts {
        if !targets.iter().any(|t| t.host.eq_ignore_ascii_case(host)) {
            targets.push(Target::for_host(config, host).await);
        }
    }
    Ok(copier(config, registries(config, &targets)?, &targets))
}

fn non_empty_path(path: &str) -> Option<std::path::PathBuf> {
    (!path.is_empty()).then(|| path.into())
}

/// Copy options from the configuration.
pub fn copy_options(config: &Config, platforms: Vec<Platform>) -> CopyOptions {
    CopyOptions {
        platforms,
        allow_overwrite: config.allow_different_digest_repush,
        always_overwrite_tags: config.always_overwrite_tags.clone(),
        dry_run: config.dry_run,
        blob_concurrency: config.blob_concurrency as usize,
        deadline: config.image_deadline,
        source_credentials: vec![],
    }
}

/// `copycat copy SRC DST`.
pub async fn copy(config: &Config, args: &CopyArgs) -> ExitCode {
    let request = match copy_request(&args.source, &args.target, &config.digest_tag_template) {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    let platforms = match args
        .platforms
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(e) => return usage(&format!("--platform: {e}")),
    };
    if config.dry_pull {
        println!(
            "dry pull: would copy {} → {}",
            request.source,
            request.target_display(request.source.digest())
        );
        return ExitCode::SUCCESS;
    }
    let copier = match command_copier(config, &[request.target.registry()]).await {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let progress = Progress::start(&copier, 1);
    let result = copier.copy(&request, &copy_options(config, platforms)).await;
    progress.finished(&request.source.to_string(), &request.target_display(None), &result);
    if progress.summary() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Source and target of `copy`: the target keeps the source's tag unless it names one, and a
/// digest-only source is pushed by digest (never to `:latest`), tagged by `digestTagTemplate` if set.
pub fn copy_request(source: &str, target: &str, digest_tag_template: &str) -> Result<CopyRequest, String> {
    let source_ref = ImageRef::parse(source).map_err(|e| format!("SRC: {e}"))?;
    let target_ref = ImageRef::parse(target).map_err(|e| format!("DST: {e}"))?;
    if target_ref.digest().is_some() {
        return Err(format!(
            "DST {target:?}: name a tag or nothing; the digest is the source's"
        ));
    }
    let explicit = if reference::has_explicit_tag(target) {
        target_ref.tag()
    } else {
        None
    };
    let target_tag = naming::target_tag(&source_ref, explicit, digest_tag_template).map_err(|e| format!("DST: {e}"))?;
    Ok(CopyRequest {
        source: source_ref,
        target: target_ref.without_digest(),
        target_tag,
    })
}

/// `copycat sync --images FILE`.
pub async fn sync(config: &Config, args: &SyncArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.images) {
        Ok(t) => t,
        Err(e) => return usage(&format!("cannot read {}: {e}", args.images.display())),
    };
    let entries = match crate::images_file::parse(&text, &config.digest_tag_template) {
        Ok(e) => e,
        Err(problems) => return usage(&format!("{}:\n  {}", args.images.display(), problems.join("\n  "))),
    };
    if config.dry_pull {
        for e in &entries {
            println!(
                "dry pull: would copy {} → {}",
                e.request.source,
                e.request.target_display(e.request.source.digest())
            );
        }
        return ExitCode::SUCCESS;
    }
    let target_hosts: Vec<&str> = entries.iter().map(|e| e.request.target.registry()).collect();
    let copier = match command_copier(config, &target_hosts).await {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let progress = Progress::start(&copier, entries.len());
    futures::stream::iter(&entries)
        .for_each_concurrent(usize::from(args.jobs), |entry| {
            let (copier, progress) = (&copier, &progress);
            async move {
                // Like image-syncer, sync never replaces a tag that holds other content.
                let opts = CopyOptions {
                    allow_overwrite: false,
                    always_overwrite_tags: vec![],
                    ..copy_options(config, entry.platforms.clone())
                };
                let result = copier.copy(&entry.request, &opts).await;
                progress.finished(
                    &entry.request.source.to_string(),
                    &entry.request.target_display(None),
                    &result,
                );
            }
        })
        .await;
    if progress.summary() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("copycat: {message}");
    ExitCode::from(EXIT_USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_targets() {
        const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            ("nginx:1.27", "r.io/m/nginx", Ok("r.io/m/nginx:1.27".to_owned())),
            (
                "nginx:1.27",
                "r.io/m/nginx:stable",
                Ok("r.io/m/nginx:stable".to_owned()),
            ),
            (&format!("ghcr.io/a/b@{D}") as &str, "r.io/b", Ok(format!("r.io/b@{D}"))),
            (&format!("ghcr.io/a/b@{D}"), "r.io/b:v1", Ok("r.io/b:v1".to_owned())),
            (&format!("ghcr.io/a/b:v2@{D}"), "r.io/b", Ok("r.io/b:v2".to_owned())),
            ("nginx", &format!("r.io/b@{D}"), Err("DST")),
            ("Nginx", "r.io/b", Err("SRC")),
        ];
        for (src, dst, want) in cases {
            let got = copy_request(src, dst, "").map(|r| r.target_display(r.source.digest()));
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w.as_str()), "{src} {dst}"),
                Err(prefix) => assert!(got.unwrap_err().starts_with(prefix), "{src} {dst}"),
            }
        }
    }
}
