//! The one-shot commands `copycat copy` and `copycat sync`, over a copier that [`wiring`] builds
//! for the target hosts the command names; and `copycat verify`, `copycat failover` and
//! `copycat node-config` over the daemon's parts.

mod failover;
mod node_config;
mod plan_tags;
mod progress;
mod sync_state;
mod verify;

use std::process::ExitCode;

use futures::StreamExt;
use tracing::Instrument as _;

use crate::cli::{CopyArgs, EXIT_USAGE, SyncArgs};
use crate::config::Config;
use crate::copy::{CopyOptions, CopyRequest};
use crate::naming::{self, NamingError};
use crate::platform::Platform;
use crate::reference::{self, ImageRef, ReferenceError};
use crate::referrer_policy::ReferrersMode;
use crate::wiring::{command_copier, copy_options, pull_through};
pub use failover::failover;
pub use node_config::node_config;
pub use plan_tags::plan_tags;
use progress::Progress;
pub use verify::verify;

/// Exit status when some images failed.
const EXIT_FAILED: u8 = 1;

/// `copycat copy SRC DST`.
pub async fn copy(config: &Config, args: &CopyArgs) -> ExitCode {
    let request = match (&args.target, args.pull_through) {
        (cache, true) => pull_through_request(config, &args.source, cache.as_deref()),
        (Some(target), false) => copy_request(&args.source, target, config.digest_tag_template.as_deref()),
        (None, false) => Err(CopyArgsError::NoTarget),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
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
        Err(e) => return usage(&e.to_string()),
    };
    let progress = Progress::start(&copier, 1);
    let options = CopyOptions {
        pull_through: args.pull_through.then(|| pull_through(config)),
        ..with_referrers_flag(copy_options(config, platforms), args.referrers)
    };
    let result = copier.copy(&request, &options).instrument(mirror_span(&request)).await;
    progress.finished(&request.source.to_string(), &request.target_display(None), &result);
    if progress.summary() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `options` with the mode of `--referrers`, when given.
fn with_referrers_flag(mut options: CopyOptions, flag: Option<ReferrersMode>) -> CopyOptions {
    if let Some(mode) = flag {
        options.referrers.mode = mode;
    }
    options
}

/// Why the arguments of `copy` name no copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyArgsError {
    /// SRC is no image reference.
    #[error("SRC: {0}")]
    Source(#[source] ReferenceError),
    /// DST is no image reference.
    #[error("DST: {0}")]
    Target(#[source] ReferenceError),
    /// DST names a digest, which only the source decides.
    #[error("DST {0:?}: name a tag or nothing; the digest is the source's")]
    TargetDigest(String),
    /// The target tag cannot be made (`digestTagTemplate`).
    #[error("DST: {0}")]
    TargetTag(#[source] NamingError),
    /// No DST, and not `--pull-through`.
    #[error("DST: required (or --pull-through)")]
    NoTarget,
    /// `--pull-through` without a cache, and none configured for the source's registry.
    #[error("CACHE: not given, and pullThrough.caches has no cache for {0}")]
    NoCache(String),
    /// The cache is no `host[:port][/path]`.
    #[error("CACHE {cache:?}: {source}")]
    Cache {
        /// The cache as given.
        cache: String,
        /// Why it makes no image reference.
        #[source]
        source: NamingError,
    },
}

/// `copy --pull-through SRC [CACHE]`: SRC read through CACHE, by default the `pullThrough.caches`
/// entry of its registry.
pub fn pull_through_request(config: &Config, source: &str, cache: Option<&str>) -> Result<CopyRequest, CopyArgsError> {
    let source = ImageRef::parse(source).map_err(CopyArgsError::Source)?;
    let cache = match cache {
        Some(cache) => cache.trim().to_ascii_lowercase(),
        None => (config.pull_through.caches.get(source.registry()).cloned())
            .ok_or_else(|| CopyArgsError::NoCache(source.registry().to_owned()))?,
    };
    CopyRequest::through_cache(source, &cache).map_err(|source| CopyArgsError::Cache { cache, source })
}

/// Source and target of `copy`: the target keeps the source's tag unless it names one, and a
/// digest-only source is pushed by digest (never to `:latest`), with the anchor tag `digestTagTemplate`
/// makes unless that is off (`None`).
pub fn copy_request(
    source: &str,
    target: &str,
    digest_tag_template: Option<&str>,
) -> Result<CopyRequest, CopyArgsError> {
    let source_ref = ImageRef::parse(source).map_err(CopyArgsError::Source)?;
    let target_ref = ImageRef::parse(target).map_err(CopyArgsError::Target)?;
    if target_ref.digest().is_some() {
        return Err(CopyArgsError::TargetDigest(target.to_owned()));
    }
    let explicit = if reference::has_explicit_tag(target) {
        target_ref.tag()
    } else {
        None
    };
    let target_tag =
        naming::target_tag(&source_ref, explicit, digest_tag_template).map_err(CopyArgsError::TargetTag)?;
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
    // A cache serves the source's own tags: no anchor tags for digest-only sources.
    let template = config.digest_tag_template.as_deref().filter(|_| !args.pull_through);
    let entries = match crate::images_file::parse(&text, template).and_then(|entries| {
        if args.pull_through {
            through_caches(entries)
        } else {
            Ok(entries)
        }
    }) {
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
        Err(e) => return usage(&e.to_string()),
    };
    // A dry run writes nothing anywhere, and looks for no related artifacts to remember.
    let state = sync_state::locate(args.state.as_deref(), args.no_state, |name| std::env::var(name).ok())
        .filter(|_| !config.dry_run);
    if let Some(path) = &state {
        let remembered = copier.remember_referrer_looks(sync_state::load(path));
        tracing::debug!(file = %path.display(), remembered, "sync state read");
    }
    let progress = Progress::start(&copier, entries.len());
    futures::stream::iter(&entries)
        .for_each_concurrent(usize::from(args.jobs), |entry| {
            let (copier, progress) = (&copier, &progress);
            async move {
                // Like image-syncer, sync never replaces a tag that holds other content.
                let opts = CopyOptions {
                    allow_overwrite: false,
                    always_overwrite_tags: vec![],
                    pull_through: args.pull_through.then(|| pull_through(config)),
                    ..with_referrers_flag(copy_options(config, entry.platforms.clone()), args.referrers)
                };
                let result = copier
                    .copy(&entry.request, &opts)
                    .instrument(mirror_span(&entry.request))
                    .await;
                progress.finished(
                    &entry.request.source.to_string(),
                    &entry.request.target_display(None),
                    &result,
                );
            }
        })
        .await;
    if let Some(path) = &state {
        sync_state::save(path, copier.referrer_looks(), copier.referrers_interval());
    }
    if progress.summary() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The entries of an images file read by `sync --pull-through`: each target (targetRepoPrefix plus
/// the source's repository) is the image at the cache, by the source's own tag; an entry naming
/// another tag or a platform subset is refused, since a cache serves the source as it is.
fn through_caches(
    entries: Vec<crate::images_file::SyncEntry>,
) -> Result<Vec<crate::images_file::SyncEntry>, Vec<String>> {
    let problems: Vec<String> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let why = if e.request.target_tag.as_deref() != e.request.source.tag() {
                "tag"
            } else if !e.platforms.is_empty() {
                "amd64Only"
            } else {
                return None;
            };
            Some(format!(
                "images[{i}] ({}): {why} does not apply with --pull-through: a cache serves the source as it is",
                e.request.source
            ))
        })
        .collect();
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// The span of one copy, as the daemon's queue opens it: every line the copy engine and the
/// registry client log carries the image.
fn mirror_span(request: &CopyRequest) -> tracing::Span {
    tracing::info_span!("mirror", source = %request.source, target = %request.target_display(None))
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
        const ANCHOR: Option<&str> = Some(naming::DEFAULT_DIGEST_TAG_TEMPLATE);
        let pinned = format!("ghcr.io/a/b@{D}");
        let anchored = format!("r.io/b:copycat-{}", &D[7..]);
        // (SRC, DST, digestTagTemplate, the target shown or the start of the error)
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Result<&'a str, &'a str>);
        let cases: [Case<'_>; 9] = [
            ("nginx:1.27", "r.io/m/nginx", ANCHOR, Ok("r.io/m/nginx:1.27")),
            ("nginx:1.27", "r.io/m/nginx:stable", ANCHOR, Ok("r.io/m/nginx:stable")),
            (&pinned, "r.io/b", ANCHOR, Ok(&anchored)),
            (&pinned, "r.io/b", None, Ok(&format!("r.io/b@{D}"))),
            (&pinned, "r.io/b:v1", ANCHOR, Ok("r.io/b:v1")),
            (&format!("ghcr.io/a/b:v2@{D}"), "r.io/b", ANCHOR, Ok("r.io/b:v2")),
            ("nginx", &format!("r.io/b@{D}"), ANCHOR, Err("DST")),
            ("Nginx", "r.io/b", ANCHOR, Err("SRC")),
            (&pinned, "r.io/b", Some("sha256-$hex"), Err("DST")),
        ];
        for (src, dst, template, want) in cases {
            let got = copy_request(src, dst, template)
                .map(|r| r.target_display(r.source.digest()))
                .map_err(|e| e.to_string());
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{src} {dst}"),
                Err(prefix) => assert!(got.unwrap_err().starts_with(prefix), "{src} {dst}"),
            }
        }
    }

    #[test]
    fn pull_through_targets() {
        const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut config = crate::config::from_env(&[], crate::config::Purpose::OneShot);
        config.pull_through.caches = [("docker.io".to_owned(), "harbor.example.com/hub".to_owned())].into();
        let pinned = format!("ghcr.io/org/app@{D}");
        let by_digest = format!("cache.example.com:5000/org/app@{D}");
        // (SRC, CACHE, the image at the cache or the start of the error)
        let cases: [(&str, Option<&str>, Result<&str, &str>); 6] = [
            ("nginx:1.27", None, Ok("harbor.example.com/hub/library/nginx:1.27")),
            (
                "index.docker.io/bitnami/redis",
                None,
                Ok("harbor.example.com/hub/bitnami/redis:latest"),
            ),
            (&pinned, Some("Cache.Example.com:5000/"), Ok(&by_digest)),
            (
                "ghcr.io/org/app:1",
                None,
                Err("CACHE: not given, and pullThrough.caches has no cache for ghcr.io"),
            ),
            (
                "ghcr.io/org/app:1",
                Some("cache.example.com/Bad Path"),
                Err("CACHE \"cache.example.com/bad path\""),
            ),
            ("Nginx", None, Err("SRC")),
        ];
        for (src, cache, want) in cases {
            let got = pull_through_request(&config, src, cache)
                .map(|r| r.target_display(r.source.digest()))
                .map_err(|e| e.to_string());
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{src} {cache:?}"),
                Err(prefix) => {
                    let e = got.unwrap_err();
                    assert!(e.starts_with(prefix), "{src} {cache:?}: {e}");
                }
            }
        }
    }
}
