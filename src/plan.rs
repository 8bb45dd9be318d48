//! From what a workload uses to what to mirror: filters, digest policy and naming. Pure logic; the
//! discovery module feeds it, the queue consumes its tasks.

use crate::config::SkipNames;
use crate::glob;
use crate::reference::{Digest, ImageRef};

/// The workload kinds copycat watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
    /// core/v1 Pod.
    Pod,
}

/// Which namespaces are in scope. Globs are evaluated for every namespace as it appears, so
/// namespaces created later are picked up; a glob that matches nothing matches nothing.
#[derive(Debug, Clone)]
pub struct NamespaceScope {
    include: Vec<String>,
    skip: Vec<String>,
}

impl NamespaceScope {
    /// Scope from `includeNamespaces` and `skipNamespaces`.
    pub fn new(include: &[String], skip: &[String]) -> Self {
        NamespaceScope {
            include: include.to_vec(),
            skip: skip.to_vec(),
        }
    }

    /// Whether `namespace` is watched: not skipped (skip wins), and named or matched by a glob.
    pub fn allows(&self, namespace: &str) -> bool {
        !self.skip.iter().any(|s| s == namespace)
            && self.include.iter().any(|p| {
                if glob::is_glob(p) {
                    glob::matches(p, namespace)
                } else {
                    p == namespace
                }
            })
    }

    /// Whether every namespace is in scope (cluster-wide watches, no per-namespace filtering).
    pub fn is_everything(&self) -> bool {
        self.skip.is_empty() && self.include.iter().any(|p| p == "*")
    }

    /// Explicit (non-glob) names, to warn about at start when they do not exist yet.
    pub fn explicit_names(&self) -> impl Iterator<Item = &str> {
        self.include.iter().filter(|p| !glob::is_glob(p)).map(String::as_str)
    }
}

/// Per-kind skip lists: `name` (any namespace), `namespace/name`, or `*`.
#[derive(Debug, Clone, Default)]
pub struct SkipList {
    names: SkipNames,
}

impl SkipList {
    /// Skip lists from the configuration.
    pub fn new(names: &SkipNames) -> Self {
        SkipList { names: names.clone() }
    }

    /// Whether a workload of `kind` named `namespace/name` is skipped.
    pub fn skips(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let list = match kind {
            Kind::Deployment => &self.names.deployments,
            Kind::StatefulSet => &self.names.stateful_sets,
            Kind::DaemonSet => &self.names.daemon_sets,
            Kind::Job => &self.names.jobs,
            Kind::CronJob => &self.names.cron_jobs,
            Kind::Pod => &self.names.pods,
        };
        list.iter().any(|entry| match entry.split_once('/') {
            _ if entry == "*" => true,
            Some((ns, n)) => ns == namespace && n == name,
            None => entry == name,
        })
    }
}

/// Source registries never mirrored: `excludeRegistries` plus the target itself (no mirror loops).
#[derive(Debug, Clone)]
pub struct Exclusions {
    prefixes: Vec<String>,
}

impl Exclusions {
    /// From the normalised `excludeRegistries` and the target `registry[/path]`, if any.
    pub fn new(exclude_registries: &[String], target: Option<&str>) -> Self {
        let mut prefixes = exclude_registries.to_vec();
        if let Some(target) = target {
            prefixes.push(target.trim_end_matches('/').to_ascii_lowercase());
        }
        Exclusions { prefixes }
    }

    /// The exclusion prefix `image` falls under, if any. Matching is on a boundary: the prefix must be
    /// followed by the end, `/`, `:` or `@` (`registry.gitlab.com/group` excludes `…/group/app` but
    /// not `…/group-other/app`).
    pub fn excluded_by(&self, image: &ImageRef) -> Option<&str> {
        let full = format!("{}/{}", image.registry(), image.repository());
        self.prefixes
            .iter()
            .find(|p| {
                full.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ':', '@']))
            })
            .map(String::as_str)
    }
}

/// What a container's `status.imageID` says about the image it runs: the digest, when it is a
/// manifest digest. Runtime prefixes (`docker-pullable://`, `containerd://`, …) are stripped. A bare
/// `sha256:…` (Docker's image ID, a config digest) names no manifest and is ignored.
pub fn pod_digest(image_id: &str) -> Option<Digest> {
    let id = image_id.rsplit_once("://").map_or(image_id, |(_, rest)| rest);
    let (_, digest) = id.split_once('@')?;
    Digest::parse(digest).ok()
}

/// Whether `digestPull` applies to `image`: the option is on and the image's tag is not one of
/// `digestPullIgnoredTags`.
pub fn wants_digest(digest_pull: bool, ignored_tags: &[String], image: &ImageRef) -> bool {
    digest_pull
        && !image
            .tag()
            .is_some_and(|t| ignored_tags.iter().any(|i| i.eq_ignore_ascii_case(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn namespaces() {
        let scope = NamespaceScope::new(&strings(&["team-*", "prod", "[ab]x"]), &strings(&["team-secret"]));
        let cases = [
            ("team-a", true),
            ("team-secret", false),
            ("prod", true),
            ("production", false),
            ("ax", true),
            ("cx", false),
            ("default", false),
        ];
        for (ns, want) in cases {
            assert_eq!(scope.allows(ns), want, "{ns}");
        }
        assert!(!scope.is_everything());
        assert_eq!(scope.explicit_names().collect::<Vec<_>>(), vec!["prod"]);
        let none = NamespaceScope::new(&strings(&["nomatch-*"]), &[]);
        assert!(!none.allows("default"), "a glob matching nothing matches nothing");
        let all = NamespaceScope::new(&strings(&["*"]), &[]);
        assert!(all.allows("anything") && all.is_everything());
        assert!(!NamespaceScope::new(&strings(&["*"]), &strings(&["kube-system"])).allows("kube-system"));
    }

    #[test]
    fn skip_names() {
        let names = SkipNames {
            deployments: strings(&["web", "prod/api"]),
            cron_jobs: strings(&["*"]),
            ..SkipNames::default()
        };
        let skip = SkipList::new(&names);
        let cases = [
            (Kind::Deployment, "any", "web", true),
            (Kind::Deployment, "prod", "api", true),
            (Kind::Deployment, "dev", "api", false),
            (Kind::StatefulSet, "any", "web", false),
            (Kind::CronJob, "x", "y", true),
            (Kind::Pod, "x", "web", false),
        ];
        for (kind, ns, name, want) in cases {
            assert_eq!(skip.skips(kind, ns, name), want, "{kind:?} {ns}/{name}");
        }
    }

    #[test]
    fn exclusions() {
        let ex = Exclusions::new(
            &strings(&["docker.io/library", "registry.gitlab.com/group", "quay.io"]),
            Some("mirror.example.com/"),
        );
        let cases = [
            ("nginx", Some("docker.io/library")),
            ("bitnami/redis", None),
            ("registry.gitlab.com/group/sub/app:1", Some("registry.gitlab.com/group")),
            ("registry.gitlab.com/group-other/app", None),
            (
                "quay.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                Some("quay.io"),
            ),
            ("mirror.example.com/prod/library/nginx:1", Some("mirror.example.com")),
            ("localhost/app", None),
        ];
        for (image, want) in cases {
            let image = ImageRef::parse(image).unwrap();
            assert_eq!(ex.excluded_by(&image), want, "{image}");
        }
    }

    #[test]
    fn digest_policy() {
        let ignored = strings(&["latest", "stable"]);
        let cases = [
            (true, "nginx:1.25", true),
            (true, "nginx", false),
            (true, "nginx:Stable", false),
            (false, "nginx:1.25", false),
        ];
        for (on, image, want) in cases {
            assert_eq!(
                wants_digest(on, &ignored, &ImageRef::parse(image).unwrap()),
                want,
                "{on} {image}"
            );
        }
        assert!(
            wants_digest(true, &[], &ImageRef::parse("nginx").unwrap()),
            "an empty list ignores nothing"
        );
    }

    #[test]
    fn pod_digests() {
        const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            (format!("docker-pullable://nginx@sha256:{HEX}"), true),
            (format!("docker.io/library/nginx@sha256:{HEX}"), true),
            (format!("containerd://ghcr.io/a/b@sha256:{HEX}"), true),
            (format!("docker://sha256:{HEX}"), false),
            (format!("sha256:{HEX}"), false),
            ("".to_owned(), false),
            ("nginx@sha256:short".to_owned(), false),
        ];
        for (id, want) in cases {
            assert_eq!(pod_digest(&id).is_some(), want, "{id}");
        }
    }
}
