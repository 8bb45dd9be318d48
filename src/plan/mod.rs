//! From what a workload uses to what to mirror: filters, digest policy and naming. Pure logic; the
//! discovery module feeds it, the queue consumes its tasks.

mod state;
mod task;

use crate::config::{Config, SkipNames, TargetKind};
use crate::copy::CopyRequest;
use crate::discovery::extract::{ContainerImage, Owner, OwnerKind};
use crate::discovery::inventory::{Entry, Inventory, ObjectKey};
use crate::glob;
use crate::naming::{self, NameContext, NamingError, PathRule, TargetNaming};
use crate::platform::Platform;
use crate::reference::{ImageRef, ReferenceError};
use crate::workload::{self, Kind, Workload};
pub use state::{Pass, PlanState};
pub use task::{Arch, MAX_USERS, MirrorTask, TargetKey, union_users};

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

    /// The namespaces to watch one by one, when `includeNamespaces` lists only plain names (no
    /// globs, no `*`): then namespace-scoped RBAC is enough. Skipped ones are left out.
    pub fn only_names(&self) -> Option<Vec<String>> {
        if self.include.iter().any(|p| glob::is_glob(p)) {
            return None;
        }
        let mut names: Vec<String> = self.include.iter().filter(|n| self.allows(n)).cloned().collect();
        names.sort();
        names.dedup();
        Some(names)
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
    /// From the normalised `excludeRegistries` and the targets' `registry[/path]`s.
    pub fn new(exclude_registries: &[String], targets: &[&str]) -> Self {
        let mut prefixes = exclude_registries.to_vec();
        prefixes.extend(targets.iter().map(|t| t.trim_end_matches('/').to_ascii_lowercase()));
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

    use crate::config::Purpose;
    use crate::discovery::extract::{Owner, OwnerKind};
    use crate::discovery::inventory::{Seen, Update, Watched};

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn config(env: &[(&str, &str)]) -> Config {
        let mut all = vec![("TARGET_KIND", "docker"), ("TARGET_REGISTRY", "mirror.example.com")];
        all.extend_from_slice(env);
        crate::config::from_env(&all, Purpose::Daemon)
    }

    fn seen(ns: &str, name: &str, images: &[(&str, Option<&str>)], owner: Option<(OwnerKind, &str)>) -> Seen {
        Seen {
            namespace: ns.into(),
            name: name.into(),
            images: images
                .iter()
                .enumerate()
                .map(|(i, (image, digest))| ContainerImage {
                    image: (*image).into(),
                    container: format!("c{i}"),
                    pod_digest: digest.map(|d| crate::reference::Digest::parse(d).unwrap()),
                })
                .collect(),
            owner: owner.map(|(kind, name)| Owner {
                kind,
                name: name.into(),
            }),
            ..Seen::default()
        }
    }

    fn inventory(objects: Vec<(Watched, Seen)>) -> Inventory {
        let mut inv = Inventory::new();
        for (w, s) in objects {
            inv.apply(Update::Apply(w, s));
        }
        inv
    }

    fn targets(plan: &Plan) -> Vec<String> {
        plan.tasks
            .iter()
            .map(|t| {
                format!(
                    "{} -> {}",
                    t.request.source,
                    t.request.target_display(t.request.source.digest())
                )
            })
            .collect()
    }

    const DEPLOY: Watched = Watched::Workload(Kind::Deployment);
    const POD: Watched = Watched::Workload(Kind::Pod);

    #[test]
    fn a_workload_and_its_pods_are_one_task() {
        let inv = inventory(vec![
            (DEPLOY, seen("shop", "web", &[("nginx:1.25", None)], None)),
            (
                Watched::ReplicaSet,
                seen(
                    "shop",
                    "web-5d8f",
                    &[],
                    Some((OwnerKind::Workload(Kind::Deployment), "web")),
                ),
            ),
            (
                POD,
                seen(
                    "shop",
                    "web-5d8f-a",
                    &[("nginx:1.25", None)],
                    Some((OwnerKind::ReplicaSet, "web-5d8f")),
                ),
            ),
            (
                POD,
                seen(
                    "shop",
                    "web-5d8f-b",
                    &[("nginx:1.25", None)],
                    Some((OwnerKind::ReplicaSet, "web-5d8f")),
                ),
            ),
        ]);
        let plan = Planner::new(
            &config(&[("TARGET_REPO_PREFIX", "m/$namespace/$podname")]),
            "mirror.example.com",
        )
        .unwrap()
        .plan(&inv);
        assert_eq!(
            targets(&plan),
            vec!["docker.io/library/nginx:1.25 -> mirror.example.com/m/shop/web/library/nginx:1.25"]
        );
        assert_eq!(
            plan.tasks[0].users,
            vec![Workload::new(Kind::Deployment, "shop", "web")]
        );
    }

    #[test]
    fn filters_and_exclusions() {
        let inv = inventory(vec![
            (
                DEPLOY,
                seen(
                    "shop",
                    "web",
                    &[
                        ("nginx:1", None),
                        ("mirror.example.com/m/x:1", None),
                        ("quay.io/org/tool:2", None),
                    ],
                    None,
                ),
            ),
            (DEPLOY, seen("kube-system", "dns", &[("coredns:1", None)], None)),
            (DEPLOY, seen("shop", "legacy", &[("legacy:1", None)], None)),
            (
                Watched::ReplicaSet,
                seen(
                    "shop",
                    "legacy-1",
                    &[],
                    Some((OwnerKind::Workload(Kind::Deployment), "legacy")),
                ),
            ),
            (
                POD,
                seen(
                    "shop",
                    "legacy-1-a",
                    &[("legacy:1", None)],
                    Some((OwnerKind::ReplicaSet, "legacy-1")),
                ),
            ),
            (DEPLOY, seen("shop", "broken", &[("Not:Valid:Image", None)], None)),
        ]);
        let config = config(&[
            ("SKIP_NAMESPACES", "kube-system"),
            ("SKIP_DEPLOYMENTS", "shop/legacy"),
            ("EXCLUDE_REGISTRIES", "quay.io"),
        ]);
        let plan = Planner::new(&config, "mirror.example.com").unwrap().plan(&inv);
        assert_eq!(
            targets(&plan),
            vec!["docker.io/library/nginx:1 -> mirror.example.com/library/nginx:1"]
        );
        let excluded: Vec<(&str, &str)> = plan
            .excluded
            .iter()
            .map(|e| (e.source.as_str(), e.rule.as_str()))
            .collect();
        assert_eq!(
            excluded,
            [
                ("mirror.example.com/m/x:1", "mirror.example.com"),
                ("quay.io/org/tool:2", "quay.io"),
            ],
            "the target itself and quay.io"
        );
        assert_eq!(plan.excluded[0].users, [Workload::new(Kind::Deployment, "shop", "web")]);
        assert_eq!(plan.invalid.len(), 1);
        assert_eq!(plan.invalid[0].1, "Not:Valid:Image");
    }

    #[test]
    fn digest_mode_uses_what_pods_run() {
        let digest = format!("sha256:{HEX}");
        let inv = inventory(vec![
            (
                POD,
                seen(
                    "a",
                    "p",
                    &[("app:1", Some(&digest)), ("tool:latest", Some(&digest))],
                    None,
                ),
            ),
            (DEPLOY, seen("a", "d", &[("other:2", None)], None)),
        ]);
        let config = config(&[("DIGEST_PULL", "true"), ("MIRROR_PLATFORMS", "linux/amd64,linux/arm64")]);
        let plan = Planner::new(&config, "mirror.example.com").unwrap().plan(&inv);
        assert_eq!(
            targets(&plan),
            vec![
                format!("docker.io/library/app:1@{digest} -> mirror.example.com/library/app:1"),
                "docker.io/library/other:2 -> mirror.example.com/library/other:2".to_owned(),
                "docker.io/library/tool:latest -> mirror.example.com/library/tool:latest".to_owned(),
            ]
        );
        let platforms: Vec<usize> = plan.tasks.iter().map(|t| t.platforms.len()).collect();
        assert_eq!(
            platforms,
            vec![2, 2, 0],
            "platform subsets only in digest mode; latest stays tag-based"
        );
    }

    #[test]
    fn node_platforms_and_arch() {
        let digest = format!("sha256:{HEX}");
        let on = |node: &str, pod: &str| Seen {
            node: Some(node.into()),
            ..seen("a", pod, &[("app:1", Some(&digest))], None)
        };
        let node = |name: &str, arch: &str| Seen {
            platform: Some(Platform::parse(arch).unwrap()),
            ..seen("", name, &[], None)
        };
        let inv = inventory(vec![
            (Watched::Node, node("n-amd", "amd64")),
            (Watched::Node, node("n-arm", "arm64")),
            (POD, on("n-amd", "p1")),
            (POD, on("n-arm", "p2")),
        ]);
        let shown = |plan: &Plan| {
            plan.tasks
                .iter()
                .map(|t| {
                    (
                        t.request.target_display(None),
                        t.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let config = config(&[
            ("DIGEST_PULL", "true"),
            ("CHECK_NODE_PLATFORM", "true"),
            ("MIRROR_PLATFORMS", "linux/arm64"),
        ]);
        let plan = Planner::new(&config, "m.io").unwrap().plan(&inv);
        assert_eq!(
            shown(&plan),
            vec![(
                "m.io/library/app:1".to_owned(),
                vec!["linux/amd64".to_owned(), "linux/arm64".to_owned()]
            )],
            "one tag, both platforms"
        );
        let by_arch = config.clone();
        let by_arch = Config {
            docker: crate::config::DockerConfig {
                repo_prefix: "$arch".into(),
                ..by_arch.docker
            },
            ..by_arch
        };
        let plan = Planner::new(&by_arch, "m.io").unwrap().plan(&inv);
        let targets: Vec<String> = shown(&plan).into_iter().map(|(t, _)| t).collect();
        assert_eq!(targets, vec!["m.io/amd64/library/app:1", "m.io/arm64/library/app:1"]);
        let off = config_with_node_platform_off();
        assert!(
            Planner::new(&off, "m.io").unwrap().plan(&inv).tasks[0]
                .platforms
                .is_empty()
        );
    }

    #[test]
    fn pull_through_reads_images_at_their_registry_s_cache() {
        let digest = format!("sha256:{HEX}");
        let inv = inventory(vec![
            (
                POD,
                seen(
                    "a",
                    "p",
                    &[
                        ("nginx:1.25", None),
                        (&format!("ghcr.io/org/app@{digest}"), None),
                        ("quay.io/org/tool:2", None),
                        ("harbor.example.com/dockerhub-proxy/library/redis:7", None),
                    ],
                    None,
                ),
            ),
            (DEPLOY, seen("a", "d", &[("ghcr.io/org/app:1.0", Some(&digest))], None)),
        ]);
        let mut config = config(&[("DIGEST_PULL", "true"), ("TARGET_REPO_PREFIX", "ignored/$namespace")]);
        config.target_kind = TargetKind::PullThrough;
        config.pull_through.caches = [
            ("docker.io", "harbor.example.com/dockerhub-proxy"),
            ("ghcr.io", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ghcr"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let plan = Planner::new(&config, "").unwrap().plan(&inv);
        assert_eq!(
            targets(&plan),
            vec![
                format!(
                    "ghcr.io/org/app:1.0@{digest} -> 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ghcr/org/app:1.0"
                ),
                format!(
                    "ghcr.io/org/app@{digest} -> 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ghcr/org/app@{digest}"
                ),
                "docker.io/library/nginx:1.25 -> harbor.example.com/dockerhub-proxy/library/nginx:1.25".to_owned(),
            ],
            "named after the source at its cache, by the source's own tag or digest (no anchor tag, no prefix)"
        );
        let excluded: Vec<(&str, &str)> = plan
            .excluded
            .iter()
            .map(|e| (e.source.as_str(), e.rule.as_str()))
            .collect();
        assert_eq!(
            excluded,
            [
                (
                    "harbor.example.com/dockerhub-proxy/library/redis:7",
                    "harbor.example.com/dockerhub-proxy"
                ),
                ("quay.io/org/tool:2", "pullThrough.caches (no cache for quay.io)"),
            ],
            "images at a cache are not read through it again; a registry without a cache is not guessed"
        );
    }

    fn config_with_node_platform_off() -> Config {
        config(&[("DIGEST_PULL", "false"), ("CHECK_NODE_PLATFORM", "true")])
    }

    #[test]
    fn target_paths_and_owner_only_watches() {
        let inv = inventory(vec![
            (
                Watched::Workload(Kind::Job),
                seen(
                    "a",
                    "nightly-1",
                    &[("tool:1", None)],
                    Some((OwnerKind::Workload(Kind::CronJob), "nightly")),
                ),
            ),
            (
                POD,
                seen(
                    "a",
                    "nightly-1-x",
                    &[("tool:1", None)],
                    Some((OwnerKind::Workload(Kind::Job), "nightly-1")),
                ),
            ),
        ]);
        let config = config(&[
            ("WATCH_RESOURCES", "pods"),
            ("TARGET_REGISTRY", "reg.example.com:5000/backup"),
            ("TARGET_REPO_PREFIX", "$podname"),
        ]);
        let plan = Planner::new(&config, &config.docker.registry).unwrap().plan(&inv);
        assert_eq!(
            targets(&plan),
            vec!["docker.io/library/tool:1 -> reg.example.com:5000/backup/nightly/library/tool:1"]
        );
        assert_eq!(
            plan.tasks[0].users,
            vec![Workload::new(Kind::CronJob, "a", "nightly")],
            "the Job itself is watched for owners only"
        );
    }

    #[test]
    fn two_sources_naming_one_target_leave_it_to_the_one_used_first() {
        let created = |seen: Seen, at: i64| Seen {
            created: Some(at),
            ..seen
        };
        let planner = Planner::new(&config(&[]), "mirror.example.com").unwrap();
        // (objects: namespace, name, image, created; kept source, conflicting source and its users)
        let cases = [
            // Another namespace, the later one created first in the list order.
            (
                vec![
                    ("a", "zeta", "a.example/team/app:1.0", 100),
                    ("b", "alpha", "b.example/team/app:1.0", 200),
                ],
                "a.example/team/app:1.0",
                "b.example/team/app:1.0",
                "Deployment b/alpha",
            ),
            // The same namespace: only one task either way, and never both users on it.
            (
                vec![
                    ("a", "one", "a.example/team/app:1.0", 300),
                    ("a", "two", "b.example/team/app:1.0", 200),
                ],
                "b.example/team/app:1.0",
                "a.example/team/app:1.0",
                "Deployment a/one",
            ),
            // Created in the same second: the first by kind, namespace and name.
            (
                vec![
                    ("a", "y", "b.example/team/app:1.0", 100),
                    ("a", "x", "a.example/team/app:1.0", 100),
                ],
                "a.example/team/app:1.0",
                "b.example/team/app:1.0",
                "Deployment a/y",
            ),
        ];
        for (objects, kept, other, loser) in cases {
            let inv = inventory(
                objects
                    .iter()
                    .map(|(ns, name, image, at)| (DEPLOY, created(seen(ns, name, &[(image, None)], None), *at)))
                    .collect(),
            );
            let plan = planner.plan(&inv);
            assert_eq!(
                targets(&plan),
                vec![format!("{kept} -> mirror.example.com/team/app:1.0")]
            );
            let users: Vec<String> = plan.tasks[0].users.iter().map(ToString::to_string).collect();
            assert_eq!(users.len(), 1, "{users:?}");
            assert_eq!(
                plan.conflicts,
                vec![TargetConflict {
                    target: "mirror.example.com/team/app:1.0".into(),
                    source: other.into(),
                    kept: kept.into(),
                    users: vec![Workload::new(Kind::Deployment, &loser[11..12], &loser[13..])],
                }],
                "{objects:?}"
            );
            assert_eq!(
                planner.colliding_registries(&plan),
                Some(vec!["a.example".to_owned(), "b.example".to_owned()])
            );
        }
        // The same digest from two registries is the same content: no conflict.
        let digest = format!("sha256:{HEX}");
        let inv = inventory(vec![
            (
                DEPLOY,
                seen("a", "x", &[(&format!("a.example/app@{digest}"), None)], None),
            ),
            (
                DEPLOY,
                seen("a", "y", &[(&format!("b.example/app@{digest}"), None)], None),
            ),
            (DEPLOY, seen("a", "z", &[("c.example/tool:1", None)], None)),
        ]);
        let plan = planner.plan(&inv);
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        let keys: Vec<String> = plan.tasks.iter().map(|t| t.key().to_string()).collect();
        assert!(
            keys.contains(&format!("mirror.example.com/app:copycat-{HEX}")),
            "one task, under the digest's anchor tag: {keys:?}"
        );
        assert_eq!(
            planner.colliding_registries(&plan),
            Some(vec!["b.example".to_owned(), "c.example".to_owned()]),
            "images from several registries without $registry can collide (one task for the digest, the later source's)"
        );
        let by_registry = Planner::new(&config(&[("TARGET_REPO_PREFIX", "$registry")]), "mirror.example.com").unwrap();
        let plan = by_registry.plan(&inv);
        assert_eq!(by_registry.colliding_registries(&plan), None);
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
        assert_eq!(scope.only_names(), None, "globs need cluster-wide watches");
        let names = NamespaceScope::new(&strings(&["prod", "dev", "prod", "old"]), &strings(&["old"]));
        assert_eq!(names.only_names(), Some(strings(&["dev", "prod"])));
        assert_eq!(NamespaceScope::new(&strings(&["*"]), &[]).only_names(), None);
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
            &["mirror.example.com/"],
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
}

/// Why an image a workload uses is not mirrored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidImage {
    /// The image string is no valid reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The target named for it is no valid reference.
    #[error(transparent)]
    Naming(#[from] NamingError),
}

/// Turns the inventory into mirror tasks: filters, digest policy and naming, one task per target.
#[derive(Debug, Clone)]
pub struct Planner {
    scope: NamespaceScope,
    skip: SkipList,
    exclusions: Exclusions,
    rules: std::sync::Arc<[PathRule]>,
    mirrored: Vec<Kind>,
    target_host: String,
    target_path: String,
    prefix: String,
    digest_pull: bool,
    ignored_tags: Vec<String>,
    mirror_platforms: Vec<Platform>,
    check_node_platform: bool,
    use_image_pull_secrets: bool,
    digest_tag_template: Option<String>,
    /// With `targetKind: pullThrough`, the cache of each source registry (`pullThrough.caches`):
    /// images are read through it, named after the source, instead of copied to `target_host`.
    caches: Option<std::collections::BTreeMap<String, String>>,
}

/// The outcome of planning.
#[derive(Debug, Default)]
pub struct Plan {
    /// One task per target reference, in a stable order.
    pub tasks: Vec<MirrorTask>,
    /// Image strings that are not valid references, with who uses them and why.
    pub invalid: Vec<(Workload, String, InvalidImage)>,
    /// Images left out by `excludeRegistries` or because they already live on the target: one per
    /// source reference, sorted by it.
    pub excluded: Vec<ExcludedImage>,
    /// Images left out because another source names the same target and keeps it, sorted by target.
    pub conflicts: Vec<TargetConflict>,
}

/// An image not mirrored because its target (a tag) is also the target of an image from another
/// repository, typically the same path on another registry without `$registry` in the prefix.
/// Writing both would leave the tag holding whichever was copied last, so the source used first
/// keeps it: the one whose oldest user was created first (then the first by kind, namespace and
/// name), the same on every plan and every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConflict {
    /// The target both name, `registry/repo:tag`.
    pub target: String,
    /// This image's source reference.
    pub source: String,
    /// The source reference that keeps the target.
    pub kept: String,
    /// Who uses this image (the most recent few).
    pub users: Vec<Workload>,
}

impl TargetConflict {
    /// The labels of its `k8s_copycat_target_conflicts` series: target, source, kept.
    pub fn labels(&self) -> [&str; 3] {
        [&self.target, &self.source, &self.kept]
    }
}

/// An image the plan leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedImage {
    /// The image reference as the workloads give it.
    pub source: String,
    /// The `excludeRegistries` entry, or the target `registry[/path]`, it falls under (or, for
    /// pull-through caches, that no cache is configured for its registry).
    pub rule: String,
    /// Who uses it (the most recent few).
    pub users: Vec<Workload>,
}

/// What one object contributes to the plan.
struct ObjectPlan {
    /// The workload it belongs to.
    user: Workload,
    /// Its creation time (unknown: last).
    created: i64,
    /// The owner its workload is resolved through (a ReplicaSet or a Job): its changes re-plan it.
    owner: Option<Owner>,
    /// Each image use (none when a skip list names it): the image string and what planning it gives.
    uses: Vec<(String, Result<Planned, InvalidImage>)>,
}

/// What planning one image use gives.
#[derive(Debug)]
pub enum Planned {
    /// Mirror it: the task (without users); boxed, as a task is much larger than an exclusion.
    Task(Box<MirrorTask>),
    /// Not mirrored: `excludeRegistries`, or the image already lives on the target.
    Excluded {
        /// The image reference.
        source: ImageRef,
        /// The `excludeRegistries` entry, or the target `registry[/path]`, it falls under.
        rule: String,
    },
}

impl Planner {
    /// How this planner names targets (prefix, `pathMap`, target `host[/path]`), for `ctx`.
    pub fn target_naming(&self, ctx: NameContext) -> TargetNaming {
        TargetNaming {
            prefix: self.prefix.clone(),
            rules: self.rules.clone(),
            ctx,
            target_host: self.target_host.clone(),
            target_path: self.target_path.clone(),
        }
    }

    /// A planner for `config`, mirroring into `target` (`host[:port][/path]`); with `targetKind:
    /// pullThrough`, into the caches of `pullThrough.caches` instead (`target` is not used).
    pub fn new(config: &Config, target: &str) -> Result<Planner, NamingError> {
        let (host, path) = target.split_once('/').unwrap_or((target, ""));
        let prefix = match config.target_kind {
            TargetKind::Docker => config.docker.repo_prefix.clone(),
            TargetKind::Ecr => config.ecr.repo_prefix.clone(),
            TargetKind::PullThrough => String::new(),
        };
        let caches = (config.target_kind == TargetKind::PullThrough).then(|| config.pull_through.caches.clone());
        let targets: Vec<&str> = match &caches {
            Some(caches) => caches.values().map(String::as_str).collect(),
            None => vec![target],
        };
        Ok(Planner {
            scope: NamespaceScope::new(&config.include_namespaces, &config.skip_namespaces),
            skip: SkipList::new(&config.skip_names),
            exclusions: Exclusions::new(&config.exclude_registries, &targets),
            rules: PathRule::compile(&config.path_map)?.into(),
            mirrored: workload::kinds_named(&config.watch_resources),
            target_host: host.to_ascii_lowercase(),
            target_path: path.trim_matches('/').to_owned(),
            prefix,
            digest_pull: config.digest_pull,
            ignored_tags: config.digest_pull_ignored_tags.clone(),
            mirror_platforms: config.mirror_platforms.clone(),
            check_node_platform: config.check_node_platform,
            use_image_pull_secrets: config.use_image_pull_secrets,
            digest_tag_template: config.digest_tag_template.clone(),
            caches,
        })
    }

    /// The namespace scope, for callers that warn about missing namespaces.
    pub fn scope(&self) -> &NamespaceScope {
        &self.scope
    }

    /// Plans every image use of the inventory.
    pub fn plan(&self, inventory: &Inventory) -> Plan {
        let mut state = PlanState::new();
        state.rebuild(self, inventory);
        state.plan()
    }

    /// What one object contributes to the plan; `None` for objects of kinds not mirrored, outside
    /// the namespace scope, or without images.
    fn object(&self, inventory: &Inventory, key: &ObjectKey, entry: &Entry) -> Option<ObjectPlan> {
        if entry.images.is_empty() || !self.mirrored.contains(&key.kind) || !self.scope.allows(&key.namespace) {
            return None;
        }
        let owner = entry
            .owner
            .clone()
            .filter(|o| matches!(o.kind, OwnerKind::ReplicaSet | OwnerKind::Workload(Kind::Job)));
        let (workload_kind, workload) = inventory.workload_of(key, entry);
        let user = Workload::new(workload_kind, key.namespace.clone(), workload);
        let created = entry.created.unwrap_or(i64::MAX);
        let chain = inventory.owner_chain(key, entry);
        if chain
            .iter()
            .any(|(kind, name)| self.skip.skips(*kind, &key.namespace, name))
        {
            return Some(ObjectPlan {
                user,
                created,
                owner,
                uses: vec![],
            });
        }
        let node = if self.check_node_platform {
            inventory.platform_of(entry)
        } else {
            None
        };
        let uses = entry
            .images
            .iter()
            .map(|use_| {
                let mut planned = self.task(&key.namespace, &user.name, node, use_);
                if let Ok(Planned::Task(task)) = &mut planned
                    && self.use_image_pull_secrets
                {
                    let host = task.request.source.registry();
                    let credentials = inventory.pull_credentials(&key.namespace, &entry.pull, host);
                    task.add_source_credentials(credentials);
                }
                (use_.image.clone(), planned)
            })
            .collect();
        Some(ObjectPlan {
            user,
            created,
            owner,
            uses,
        })
    }

    /// The source registries of `plan`'s tasks when the target naming can give images of two of
    /// them one target: the prefix has no `$registry`, and they are several. `None` otherwise.
    pub fn colliding_registries(&self, plan: &Plan) -> Option<Vec<String>> {
        let ctx = NameContext::default();
        let by_registry =
            naming::expand_prefix(&self.prefix, &ctx, "a") != naming::expand_prefix(&self.prefix, &ctx, "b");
        let tasks = plan.tasks.iter().map(|t| t.request.source.registry().to_owned());
        let conflicts = plan
            .conflicts
            .iter()
            .filter_map(|c| Some(ImageRef::parse(&c.source).ok()?.registry().to_owned()));
        let registries: std::collections::BTreeSet<String> = tasks.chain(conflicts).collect();
        (!by_registry && registries.len() > 1).then(|| registries.into_iter().collect())
    }

    /// What one container of `workload` in `namespace` plans to, as [`Planner::plan`] names it for
    /// a workload whose Pods' Node is unknown: no filter (namespaces, skip lists) is applied, only
    /// the exclusions, the digest policy and the naming. `copycat failover` asks it per container.
    pub fn plan_use(&self, namespace: &str, workload: &str, use_: &ContainerImage) -> Result<Planned, InvalidImage> {
        self.task(namespace, workload, None, use_)
    }

    fn task(
        &self,
        namespace: &str,
        workload: &str,
        node: Option<&Platform>,
        use_: &ContainerImage,
    ) -> Result<Planned, InvalidImage> {
        let image = ImageRef::parse(&use_.image)?;
        if let Some(rule) = self.exclusions.excluded_by(&image) {
            return Ok(Planned::Excluded {
                rule: rule.to_owned(),
                source: image,
            });
        }
        let digest_mode = wants_digest(self.digest_pull, &self.ignored_tags, &image);
        let source = match (&use_.pod_digest, digest_mode) {
            (Some(d), true) => image.with_digest(d.clone()),
            _ => image,
        };
        if let Some(caches) = &self.caches {
            return Ok(match caches.get(source.registry()) {
                Some(cache) => Planned::Task(Box::new(MirrorTask::new(
                    CopyRequest::through_cache(source, cache).map_err(InvalidImage::Naming)?,
                ))),
                None => Planned::Excluded {
                    rule: format!("pullThrough.caches (no cache for {})", source.registry()),
                    source,
                },
            });
        }
        let naming = self.target_naming(NameContext {
            namespace: namespace.to_owned(),
            podname: workload.to_owned(),
            container_name: use_.container.clone(),
            arch: None,
        });
        let target_tag = naming::target_tag(&source, None, self.digest_tag_template.as_deref())?;
        // Digest mode copies the node's platform and `mirrorPlatforms`; tag mode the whole index.
        let node_platform: Vec<Platform> = node.cloned().into_iter().collect();
        let platforms = if digest_mode {
            union(&node_platform, &self.mirror_platforms)
        } else {
            vec![]
        };
        // Without a node platform, `$arch` is the image's own, known only once it is read.
        let arch = node.map_or(Arch::FromImage, |p| Arch::Node(&p.architecture));
        let task = MirrorTask::named(source, target_tag, naming, arch)?.with_platforms(platforms);
        Ok(Planned::Task(Box::new(task)))
    }
}

/// The platforms of `a` and `b`, sorted and without repeats: a stable order keeps plans comparable
/// between runs (which platform comes first does not change what is copied).
fn union(a: &[Platform], b: &[Platform]) -> Vec<Platform> {
    let mut out: Vec<Platform> = a.iter().chain(b).cloned().collect();
    out.sort();
    out.dedup();
    out
}
