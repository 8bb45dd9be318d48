//! Node runtime mirror configuration (`copycat node-config`): for each source registry a cluster
//! pulls from, where copycat keeps its images at the mirror, and the containerd `hosts.toml` or CRI-O
//! `registries.conf` text that lets a node pull them from there when the upstream fails (or first).
//! Pure: the command finds the registries and writes the files.
//!
//! A node can only prepend a fixed path to the repository it asks for, so a registry is expressible
//! when its target path is `<fixed prefix>/<source path>`: the prefix may use `$registry`, not
//! `$namespace`, `$podname`, `$container_name` or `$arch` (they differ per workload or node).
//! `pathMap` prefix rules move whole subtrees, which CRI-O can follow (a longer `prefix` entry) and
//! containerd cannot; regex rules neither can. What a configuration cannot serve is said in it.

use std::fmt::Write as _;

use crate::naming::{self, NameContext, NamingError, PathMapRule, PathRule, TargetNaming};
use crate::reference::{self, DOCKER_HUB, ImageRef, ReferenceError};

/// The node's container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// One `<registry>/hosts.toml` per registry, for containerd's `config_path`.
    Containerd,
    /// One `registries.conf` drop-in, for CRI-O (containers-image).
    #[value(name = "cri-o", alias = "crio")]
    CriO,
}

/// Which of the upstream and the mirror a node tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The upstream, then the mirror when the upstream fails (the default).
    UpstreamFirst,
    /// The mirror, then the upstream when the mirror lacks the image (`--mirror-first`).
    MirrorFirst,
}

/// The Docker Hub's API host: some manifests name it, and runtimes treat it as a registry of its
/// own (only `index.docker.io` is normalised to `docker.io`), while copycat mirrors it as `docker.io`.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The placeholders whose value depends on the workload or the node.
const PER_WORKLOAD: [&str; 4] = ["namespace", "podname", "container_name", "arch"];

/// How copycat names targets, as far as a node can follow it.
#[derive(Debug, Clone)]
pub struct MirrorNaming {
    /// `repoPrefix` template.
    pub prefix: String,
    /// `pathMap` rules, in order.
    pub path_map: Vec<PathMapRule>,
    /// Target registry host (`host[:port]`).
    pub target_host: String,
    /// Path of the target registry under which repositories live (docker target), may be empty.
    pub target_path: String,
    /// The mirror is reached without TLS verification (`docker.insecure`).
    pub insecure: bool,
    /// `excludeRegistries` entries (normalised prefixes).
    pub exclude: Vec<String>,
    /// Source registries reached without TLS verification (`registries[].insecure`).
    pub insecure_sources: Vec<String>,
}

/// A host and the repository path under it (`r.example` + `mirror/docker.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `host[:port]`.
    pub host: String,
    /// Repository path, without leading or trailing `/`; may be empty.
    pub path: String,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.host)
        } else {
            write!(f, "{}/{}", self.host, self.path)
        }
    }
}

/// How a node reaches one source registry's images at the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The registry as the node's runtime names it: `docker.io`, `registry-1.docker.io`, `ghcr.io`,
    /// `localhost:5000` (containerd's directory name, CRI-O's `prefix`).
    pub namespace: String,
    /// The upstream as a containerd host URL (`https://registry-1.docker.io` for the Docker Hub).
    pub upstream_url: String,
    /// The upstream is reached without TLS verification (`registries[].insecure`): the node's own
    /// setting for it, which this configuration replaces, is kept.
    pub upstream_insecure: bool,
    /// Where this registry's images live at the mirror.
    pub mirror: Location,
    /// `pathMap` prefix rules in effect: a source path prefix and where that subtree lives instead.
    pub moved: Vec<(String, Location)>,
    /// What the mirror keeps elsewhere or not at all (regex `pathMap` rules, excluded paths).
    pub gaps: Vec<String>,
}

/// A registry a node cannot be configured for, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The registry.
    pub namespace: String,
    /// Why.
    pub reason: RefusalReason,
}

/// Why a node cannot be sent to the mirror for a registry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RefusalReason {
    /// The registry is the mirror.
    #[error("it is the mirror itself: its images are not copied")]
    Mirror,
    /// `excludeRegistries` leaves the whole registry out.
    #[error("excludeRegistries entry {rule:?}: its images are not mirrored")]
    Excluded {
        /// The entry.
        rule: String,
    },
    /// The target path depends on the workload or the node.
    #[error(
        "the target path depends on {} (repoPrefix {prefix:?}), which differ between workloads or nodes; \
         a node cannot name it: use `copycat failover --to-mirror` instead",
        .placeholders.iter().map(|p| format!("${p}")).collect::<Vec<_>>().join(", ")
    )]
    PerWorkload {
        /// The placeholders, without `$`.
        placeholders: Vec<&'static str>,
        /// `repoPrefix`.
        prefix: String,
    },
    /// The daemon's naming gives no target for the registry's images.
    #[error("no target name: {0}")]
    Naming(#[from] NamingError),
    /// The registry (or a `pathMap` prefix under it) makes no image reference.
    #[error("no image reference: {0}")]
    Reference(#[from] ReferenceError),
    /// The target does not end in the source path (cleaned or shortened): a node cannot prepend
    /// its way there.
    #[error("the target {target} does not end in the source path")]
    Reshaped {
        /// The target named for a probe image.
        target: String,
    },
}

/// Why a `--registry` value names no registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a registry host (host[:port], e.g. docker.io, ghcr.io, registry.example:5000)")]
pub struct BadRegistry {
    /// The value given.
    pub value: String,
}

/// The runtime namespaces for registry names: lower-cased, Docker Hub spellings as `docker.io`
/// followed by [`DOCKER_HUB_API`], sorted, without repeats. A name with a scheme, a path, or that is
/// no registry host (`nginx`) is refused.
pub fn namespaces(names: &[String]) -> Result<Vec<String>, BadRegistry> {
    let mut out = Vec::new();
    for name in names {
        let bad = || BadRegistry { value: name.clone() };
        let host = name.trim().to_ascii_lowercase();
        if host.is_empty() || host.contains("://") || host.contains('/') {
            return Err(bad());
        }
        // A registry host is what a reference's first component is taken for.
        let probe = ImageRef::parse(&format!("{host}/copycat/probe")).map_err(|_| bad())?;
        let canonical = reference::canonical_host(&host);
        if probe.registry() != canonical {
            return Err(bad());
        }
        if canonical == DOCKER_HUB {
            out.extend([DOCKER_HUB.to_owned(), DOCKER_HUB_API.to_owned()]);
        } else {
            out.push(canonical);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl MirrorNaming {
    /// The route of each namespace (see [`namespaces`]), or why there is none.
    pub fn routes(&self, namespaces: &[String]) -> (Vec<Route>, Vec<Refusal>) {
        let mut routes = Vec::new();
        let mut refusals = Vec::new();
        for namespace in namespaces {
            match self.route(namespace) {
                Ok(route) => routes.push(route),
                Err(reason) => refusals.push(Refusal {
                    namespace: namespace.clone(),
                    reason,
                }),
            }
        }
        (routes, refusals)
    }

    fn route(&self, namespace: &str) -> Result<Route, RefusalReason> {
        // copycat names the Docker Hub `docker.io` whatever the spelling.
        let registry = reference::canonical_host(namespace);
        if registry == self.target_host {
            return Err(RefusalReason::Mirror);
        }
        if let Some(rule) = self.exclude.iter().find(|e| **e == registry) {
            return Err(RefusalReason::Excluded { rule: rule.clone() });
        }
        let placeholders: Vec<&'static str> = PER_WORKLOAD
            .into_iter()
            .filter(|p| self.depends_on(p, &registry))
            .collect();
        if !placeholders.is_empty() {
            return Err(RefusalReason::PerWorkload {
                placeholders,
                prefix: self.prefix.clone(),
            });
        }
        let plain: Vec<PathMapRule> = self.path_map.iter().filter(|r| !r.regex).cloned().collect();
        let mirror = self.mirror_of(&registry, "", &[])?;
        let mut moved = Vec::new();
        let mut gaps = Vec::new();
        for rule in &plain {
            let from = rule.from.trim_matches('/').to_owned();
            match self.mirror_of(&registry, &from, &plain) {
                Ok(location) => moved.push((from, location)),
                Err(e) => gaps.push(format!(
                    "pathMap rule {:?} → {:?} cannot be followed: {e}",
                    rule.from, rule.to
                )),
            }
        }
        gaps.extend(self.path_map.iter().filter(|r| r.regex).map(|r| {
            format!(
                "pathMap regex rule {:?} → {:?}: images whose path it rewrites are kept under the rewritten path, \
                 which a node cannot follow",
                r.from, r.to
            )
        }));
        gaps.extend(
            self.exclude
                .iter()
                .filter(|e| e.strip_prefix(&registry).is_some_and(|rest| rest.starts_with('/')))
                .map(|e| format!("excludeRegistries entry {e:?}: images under it are not mirrored")),
        );
        Ok(Route {
            namespace: namespace.to_owned(),
            upstream_url: if registry == DOCKER_HUB {
                format!("https://{DOCKER_HUB_API}")
            } else {
                format!("https://{namespace}")
            },
            upstream_insecure: self.insecure_sources.contains(&registry),
            mirror,
            moved,
            gaps,
        })
    }

    /// Whether the prefix for `registry` changes with `placeholder` alone.
    fn depends_on(&self, placeholder: &str, registry: &str) -> bool {
        let with = |value: &str| {
            let mut ctx = NameContext {
                arch: Some("copycat".into()),
                ..NameContext::default()
            };
            match placeholder {
                "namespace" => ctx.namespace = value.into(),
                "podname" => ctx.podname = value.into(),
                "container_name" => ctx.container_name = value.into(),
                _ => ctx.arch = Some(value.into()),
            }
            naming::expand_prefix(&self.prefix, &ctx, registry)
        };
        with("a") != with("b")
    }

    /// Where copycat keeps the images of `registry` under source path `under` (all of them when
    /// empty), applying `rules`: the target of a probe image under it, the probe's own path removed.
    fn mirror_of(&self, registry: &str, under: &str, rules: &[PathMapRule]) -> Result<Location, RefusalReason> {
        const PROBE: &str = "copycat-probe/image";
        let naming = TargetNaming {
            prefix: self.prefix.clone(),
            rules: PathRule::compile(rules)?.into(),
            ctx: NameContext::default(),
            target_host: self.target_host.clone(),
            target_path: self.target_path.clone(),
        };
        let source_path = if under.is_empty() {
            PROBE.to_owned()
        } else {
            format!("{under}/{PROBE}")
        };
        let source = ImageRef::parse(&format!("{registry}/{source_path}"))?;
        let target = naming.target(&source, None)?;
        let path = target
            .repository()
            .strip_suffix(PROBE)
            .map(|p| p.trim_end_matches('/').to_owned())
            .ok_or_else(|| RefusalReason::Reshaped {
                target: target.name().to_owned(),
            })?;
        Ok(Location {
            host: target.registry().to_owned(),
            path,
        })
    }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` as TOML comment lines.
fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

/// The containerd host URL of `location`: its path as the API root (`override_path`) when it has one.
fn containerd_url(location: &Location) -> (String, bool) {
    if location.path.is_empty() {
        (format!("https://{}", location.host), false)
    } else {
        (format!("https://{}/v2/{}", location.host, location.path), true)
    }
}

/// The containerd `hosts.toml` of `route`, for `<config_path>/<namespace>/hosts.toml`.
///
/// containerd tries the `[host]` entries in file order and `server` last, moving on after a
/// connection error, a 404 or another error status. Upstream first: the upstream is the one `[host]`
/// (it keeps `push`), the mirror is `server`. Mirror first: the mirror is the `[host]`, the upstream
/// `server`.
pub fn containerd_hosts(route: &Route, order: Order, insecure: bool) -> String {
    let (mirror_url, override_path) = containerd_url(&route.mirror);
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "Written by `copycat node-config` for images from {}.\n{}",
            route.namespace,
            match order {
                Order::UpstreamFirst => format!(
                    "Pulled from {} first, then from the copycat mirror {} when that fails (connection error,\n\
                     404 or other error status; an unreachable upstream costs containerd's dial timeout first).",
                    route.upstream_url, route.mirror
                ),
                Order::MirrorFirst => format!(
                    "Pulled from the copycat mirror {} first, then from {} when the mirror lacks the image\n\
                     (a tag the mirror holds is served from it even if it has moved upstream).",
                    route.mirror, route.upstream_url
                ),
            }
        ),
    );
    for (from, location) in &route.moved {
        comment(
            &mut out,
            &format!(
                "Not served by the mirror: images under {}/{from} are kept at {location} (pathMap), \
                 and containerd cannot rewrite paths.",
                route.namespace
            ),
        );
    }
    for gap in &route.gaps {
        comment(&mut out, &format!("Not served by the mirror: {gap}."));
    }
    let mirror_keys = |out: &mut String, indent: &str| {
        let _ = writeln!(out, "{indent}capabilities = [\"pull\", \"resolve\"]");
        if override_path {
            let _ = writeln!(out, "{indent}override_path = true");
        }
        if insecure {
            let _ = writeln!(out, "{indent}skip_verify = true");
        }
    };
    match order {
        Order::UpstreamFirst => {
            let _ = writeln!(out, "server = {}", quoted(&mirror_url));
            mirror_keys(&mut out, "");
            let _ = writeln!(out, "\n[host.{}]", quoted(&route.upstream_url));
            let _ = writeln!(out, "  capabilities = [\"pull\", \"resolve\", \"push\"]");
            if route.upstream_insecure {
                let _ = writeln!(out, "  skip_verify = true");
            }
        }
        Order::MirrorFirst => {
            let _ = writeln!(out, "server = {}", quoted(&route.upstream_url));
            if route.upstream_insecure {
                let _ = writeln!(out, "skip_verify = true");
            }
            let _ = writeln!(out, "\n[host.{}]", quoted(&mirror_url));
            mirror_keys(&mut out, "  ");
        }
    }
    out
}

/// The CRI-O (containers-image `registries.conf` v2) drop-in for `routes`, for
/// `/etc/containers/registries.conf.d/`.
///
/// containers-image tries every `[[registry.mirror]]` in order and the `location` last, moving on
/// after any error. Upstream first: the mirror is the `location` and the upstream the one
/// `[[registry.mirror]]`. Mirror first: the other way round. `pathMap` prefix rules become entries
/// with a longer `prefix` (the longest matching prefix wins, and it is replaced by the location).
pub fn crio_registries(routes: &[Route], order: Order, insecure: bool) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        &match order {
            Order::UpstreamFirst => {
                "Written by `copycat node-config`: each registry is pulled from upstream first, then from the\n\
                 copycat mirror when that fails. containers-image tries [[registry.mirror]] entries before the\n\
                 location, so the upstream is the mirror entry and the copycat mirror the location."
                    .to_owned()
            }
            Order::MirrorFirst => {
                "Written by `copycat node-config`: each registry is pulled from the copycat mirror first, then\n\
                 from upstream when the mirror lacks the image."
                    .to_owned()
            }
        },
    );
    for route in routes {
        let upstream = Location {
            host: route.namespace.clone(),
            path: String::new(),
        };
        let _ = writeln!(out);
        for gap in &route.gaps {
            comment(
                &mut out,
                &format!("{}: not served by the mirror: {gap}.", route.namespace),
            );
        }
        let insecure = Insecure {
            upstream: route.upstream_insecure,
            mirror: insecure,
        };
        crio_entry(&mut out, &route.namespace, &upstream, &route.mirror, order, insecure);
        for (from, location) in &route.moved {
            let prefix = format!("{}/{from}", route.namespace);
            let upstream = Location {
                host: route.namespace.clone(),
                path: from.clone(),
            };
            let _ = writeln!(out);
            comment(
                &mut out,
                &format!("pathMap: images under {prefix} are kept at {location}."),
            );
            crio_entry(&mut out, &prefix, &upstream, location, order, insecure);
        }
    }
    out
}

/// Which ends are reached without TLS verification.
#[derive(Clone, Copy)]
struct Insecure {
    upstream: bool,
    mirror: bool,
}

/// One `[[registry]]` entry with its one `[[registry.mirror]]`.
fn crio_entry(
    out: &mut String,
    prefix: &str,
    upstream: &Location,
    mirror: &Location,
    order: Order,
    insecure: Insecure,
) {
    let (location, fallback, location_insecure, fallback_insecure) = match order {
        Order::UpstreamFirst => (mirror, upstream, insecure.mirror, insecure.upstream),
        Order::MirrorFirst => (upstream, mirror, insecure.upstream, insecure.mirror),
    };
    let _ = writeln!(out, "[[registry]]");
    let _ = writeln!(out, "prefix = {}", quoted(prefix));
    let _ = writeln!(out, "location = {}", quoted(&location.to_string()));
    if location_insecure {
        let _ = writeln!(out, "insecure = true");
    }
    let _ = writeln!(out, "\n[[registry.mirror]]");
    let _ = writeln!(out, "location = {}", quoted(&fallback.to_string()));
    if fallback_insecure {
        let _ = writeln!(out, "insecure = true");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECR: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

    fn naming(prefix: &str, target: &str, rules: &[(&str, &str, bool)]) -> MirrorNaming {
        let (host, path) = target.split_once('/').unwrap_or((target, ""));
        MirrorNaming {
            prefix: prefix.into(),
            path_map: rules
                .iter()
                .map(|(from, to, regex)| PathMapRule {
                    from: (*from).into(),
                    to: (*to).into(),
                    regex: *regex,
                })
                .collect(),
            target_host: host.into(),
            target_path: path.into(),
            insecure: false,
            exclude: vec!["quay.io".into(), "ghcr.io/vendor".into()],
            insecure_sources: vec!["localhost:5000".into()],
        }
    }

    fn names(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn registry_names_become_runtime_namespaces() {
        // (names given, the namespaces, or the value refused)
        type Case<'a> = (&'a [&'a str], Result<&'a [&'a str], &'a str>);
        let cases: [Case<'_>; 7] = [
            (&["docker.io"], Ok(&["docker.io", "registry-1.docker.io"])),
            (
                &["Index.Docker.IO", "ghcr.io"],
                Ok(&["docker.io", "ghcr.io", "registry-1.docker.io"]),
            ),
            (&["registry-1.docker.io"], Ok(&["docker.io", "registry-1.docker.io"])),
            (
                &["localhost:5000", "ghcr.io", "GHCR.io"],
                Ok(&["ghcr.io", "localhost:5000"]),
            ),
            (&["https://ghcr.io"], Err("https://ghcr.io")),
            (&["nginx"], Err("nginx")),
            (&["ghcr.io/org"], Err("ghcr.io/org")),
        ];
        for (given, want) in cases {
            let got = namespaces(&names(given));
            match want {
                Ok(w) => assert_eq!(got, Ok(names(w)), "{given:?}"),
                Err(value) => assert_eq!(got.unwrap_err().value, value, "{given:?}"),
            }
        }
        assert!(namespaces(&names(&[""])).is_err());
    }

    /// (prefix, target, pathMap, namespace) → the mirror location, or the start of the refusal.
    #[test]
    fn routes_follow_the_daemons_naming() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str, bool)],
            &'a str,
            Result<&'a str, &'a str>,
        );
        let cases: [Case<'_>; 15] = [
            ("mirror", "r.example", &[], "docker.io", Ok("r.example/mirror")),
            (
                "mirror",
                "r.example",
                &[],
                "registry-1.docker.io",
                Ok("r.example/mirror"),
            ),
            ("", "r.example", &[], "ghcr.io", Ok("r.example")),
            ("", "r.example/base", &[], "ghcr.io", Ok("r.example/base")),
            (
                "$registry",
                "r.example/base",
                &[],
                "docker.io",
                Ok("r.example/base/docker.io"),
            ),
            // copycat names the Docker Hub docker.io however a manifest spells it.
            (
                "m/$registry",
                "r.example",
                &[],
                "registry-1.docker.io",
                Ok("r.example/m/docker.io"),
            ),
            (
                "$registry",
                "r.example",
                &[],
                "localhost:5000",
                Ok("r.example/localhost-5000"),
            ),
            (
                "Mirror/ $registry /",
                ECR,
                &[],
                "ghcr.io",
                Ok(&*format!("{ECR}/mirror/ghcr.io")),
            ),
            (
                "$namespace",
                "r.example",
                &[],
                "docker.io",
                Err("the target path depends on $namespace ("),
            ),
            (
                "m/$podname/$container_name",
                "r.example",
                &[],
                "ghcr.io",
                Err("the target path depends on $podname, $container_name"),
            ),
            (
                "$registry/$arch",
                "r.example",
                &[],
                "ghcr.io",
                Err("the target path depends on $arch"),
            ),
            (
                "",
                "r.example",
                &[],
                "quay.io",
                Err("excludeRegistries entry \"quay.io\""),
            ),
            ("", "r.example", &[], "r.example", Err("it is the mirror itself")),
            // A pathMap prefix that makes no repository path leaves a gap, not a refusal.
            (
                "m",
                "r.example",
                &[("Upper/Case", "x", false)],
                "ghcr.io",
                Ok("r.example/m"),
            ),
            // A regex rule leaves the registry expressible, with a gap.
            (
                "m",
                "r.example",
                &[("^a/(.*)$", "b/$1", true)],
                "ghcr.io",
                Ok("r.example/m"),
            ),
        ];
        for (prefix, target, rules, namespace, want) in cases {
            let (routes, refusals) = naming(prefix, target, rules).routes(&names(&[namespace]));
            match want {
                Ok(location) => {
                    assert!(refusals.is_empty(), "{prefix} {namespace}: {refusals:?}");
                    assert_eq!(routes[0].mirror.to_string(), location, "{prefix} {target} {namespace}");
                }
                Err(reason) => {
                    assert!(routes.is_empty(), "{prefix} {namespace}: {routes:?}");
                    let got = refusals[0].reason.to_string();
                    assert!(got.starts_with(reason), "{prefix} {namespace}: {got}");
                    assert_eq!(refusals[0].namespace, namespace);
                }
            }
        }
    }

    #[test]
    fn path_map_prefix_rules_move_subtrees_as_the_daemon_does() {
        let rules = [
            ("bitnami", "vendor/bitnami", false),
            // Shadowed by the rule before it for every path under it: the daemon applies the first match.
            ("bitnami/redis", "elsewhere", false),
            ("strip/", "", false),
            ("^team-(.*)$", "teams/$1", true),
        ];
        let naming = naming("m/$registry", "r.example", &rules);
        let (routes, _) = naming.routes(&names(&["ghcr.io"]));
        let route = &routes[0];
        let moved: Vec<(&str, String)> = route.moved.iter().map(|(f, l)| (f.as_str(), l.to_string())).collect();
        assert_eq!(
            moved,
            [
                ("bitnami", "r.example/m/ghcr.io/vendor/bitnami".to_owned()),
                ("bitnami/redis", "r.example/m/ghcr.io/vendor/bitnami/redis".to_owned()),
                ("strip", "r.example/m/ghcr.io".to_owned()),
            ]
        );
        // The same targets the daemon names for images under those paths.
        let rules = PathRule::compile(&naming.path_map).unwrap();
        for (source, moved_to) in [
            ("ghcr.io/bitnami/redis/x:1", "r.example/m/ghcr.io/vendor/bitnami/redis"),
            ("ghcr.io/strip/a/b:1", "r.example/m/ghcr.io"),
        ] {
            let source = ImageRef::parse(source).unwrap();
            let target = naming::target_repository("m/$registry", &rules, &source, &NameContext::default()).unwrap();
            assert!(
                format!("r.example/{target}").starts_with(moved_to),
                "{source}: {target}"
            );
        }
        assert_eq!(route.gaps.len(), 2, "{:?}", route.gaps);
        assert!(route.gaps[0].contains("^team-(.*)$"), "{:?}", route.gaps);
        // An excluded path under a registry is a gap, not a refusal.
        assert!(route.gaps[1].contains("\"ghcr.io/vendor\""), "{:?}", route.gaps);
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn str_at<'a>(value: &'a toml::Value, key: &str) -> &'a str {
        value
            .get(key)
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{key} in {value}"))
    }

    /// containerd: the upstream first (a `[host]`) and the mirror as `server`, or the other way round;
    /// the mirror's path as API root (`override_path`) when it has one.
    #[test]
    fn containerd_hosts_files() {
        // (prefix, target, namespace, order, insecure, server, host, override_path)
        type Case<'a> = (&'a str, &'a str, &'a str, Order, bool, &'a str, &'a str, Option<bool>);
        let cases: [Case<'_>; 6] = [
            (
                "mirror",
                "r.example",
                "docker.io",
                Order::UpstreamFirst,
                false,
                "https://r.example/v2/mirror",
                "https://registry-1.docker.io",
                Some(true),
            ),
            (
                "mirror",
                "r.example",
                "docker.io",
                Order::MirrorFirst,
                false,
                "https://registry-1.docker.io",
                "https://r.example/v2/mirror",
                Some(true),
            ),
            (
                "",
                "r.example:5000",
                "ghcr.io",
                Order::UpstreamFirst,
                true,
                "https://r.example:5000",
                "https://ghcr.io",
                None,
            ),
            (
                "",
                "r.example:5000",
                "registry-1.docker.io",
                Order::MirrorFirst,
                true,
                "https://registry-1.docker.io",
                "https://r.example:5000",
                None,
            ),
            (
                "$registry",
                ECR,
                "localhost:5000",
                Order::MirrorFirst,
                false,
                "https://localhost:5000",
                &*format!("https://{ECR}/v2/localhost-5000"),
                Some(true),
            ),
            (
                "$registry",
                "r.example/base",
                "docker.io",
                Order::UpstreamFirst,
                false,
                "https://r.example/v2/base/docker.io",
                "https://registry-1.docker.io",
                Some(true),
            ),
        ];
        for (prefix, target, namespace, order, insecure, server, host, override_path) in cases {
            let (routes, _) = naming(prefix, target, &[]).routes(&names(&[namespace]));
            let text = containerd_hosts(&routes[0], order, insecure);
            let doc = toml::Value::Table(table(&text));
            assert_eq!(doc["server"].as_str(), Some(server), "{text}");
            let hosts = doc["host"].as_table().unwrap();
            assert_eq!(hosts.keys().collect::<Vec<_>>(), [host], "{text}");
            let (mirror_keys, upstream_keys) = match order {
                Order::UpstreamFirst => (&doc, &hosts[host]),
                Order::MirrorFirst => (&hosts[host], &doc),
            };
            let caps = |v: &toml::Value| -> Vec<String> {
                v.get("capabilities")
                    .map(|c| {
                        c.as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_str().unwrap().to_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            assert_eq!(caps(mirror_keys), ["pull", "resolve"], "{text}");
            // The upstream keeps every capability (push included): a `[host]` lists them, `server` has
            // them by default.
            let upstream_caps: &[&str] = match order {
                Order::UpstreamFirst => &["pull", "resolve", "push"],
                Order::MirrorFirst => &[],
            };
            assert_eq!(caps(upstream_keys), upstream_caps, "{text}");
            assert_eq!(
                mirror_keys.get("override_path").and_then(toml::Value::as_bool),
                override_path,
                "{text}"
            );
            assert_eq!(
                mirror_keys.get("skip_verify").and_then(toml::Value::as_bool),
                insecure.then_some(true),
                "{text}"
            );
            // localhost:5000 is an insecure source (`registries[].insecure`).
            let upstream_insecure = (namespace == "localhost:5000").then_some(true);
            assert_eq!(
                upstream_keys.get("skip_verify").and_then(toml::Value::as_bool),
                upstream_insecure,
                "{text}"
            );
            assert!(text.starts_with("# Written by `copycat node-config`"), "{text}");
        }
    }

    #[test]
    fn containerd_hosts_files_name_what_the_mirror_cannot_serve() {
        let rules = [("bitnami", "vendor/bitnami", false), ("^x/(.*)$", "y/$1", true)];
        let (routes, _) = naming("m", "r.example", &rules).routes(&names(&["docker.io"]));
        let text = containerd_hosts(&routes[0], Order::UpstreamFirst, false);
        table(&text);
        assert!(
            text.contains(
                "# Not served by the mirror: images under docker.io/bitnami are kept at r.example/m/vendor/bitnami"
            ),
            "{text}"
        );
        assert!(
            text.contains("# Not served by the mirror: pathMap regex rule \"^x/(.*)$\""),
            "{text}"
        );
    }

    /// CRI-O: upstream first puts the mirror in `location` and the upstream in the one mirror entry
    /// (containers-image tries mirrors first); pathMap prefix rules become longer prefixes.
    #[test]
    fn crio_registries_files() {
        let rules = [("bitnami", "vendor/bitnami", false)];
        let naming = MirrorNaming {
            insecure: true,
            ..naming("m/$registry", "r.example:5000", &rules)
        };
        let (routes, _) = naming.routes(&names(&["docker.io", "registry-1.docker.io", "ghcr.io"]));
        for order in [Order::UpstreamFirst, Order::MirrorFirst] {
            let text = crio_registries(&routes, order, naming.insecure);
            let doc = table(&text);
            let entries = doc["registry"].as_array().unwrap();
            let got: Vec<(String, String, String, bool, bool)> = entries
                .iter()
                .map(|e| {
                    let mirrors = e["mirror"].as_array().unwrap();
                    assert_eq!(mirrors.len(), 1, "{text}");
                    let insecure = |v: &toml::Value| v.get("insecure").and_then(toml::Value::as_bool) == Some(true);
                    (
                        str_at(e, "prefix").to_owned(),
                        str_at(e, "location").to_owned(),
                        str_at(&mirrors[0], "location").to_owned(),
                        insecure(e),
                        insecure(&mirrors[0]),
                    )
                })
                .collect();
            let m = "r.example:5000/m";
            let want = [
                ("docker.io", "docker.io", format!("{m}/docker.io")),
                (
                    "docker.io/bitnami",
                    "docker.io/bitnami",
                    format!("{m}/docker.io/vendor/bitnami"),
                ),
                ("registry-1.docker.io", "registry-1.docker.io", format!("{m}/docker.io")),
                (
                    "registry-1.docker.io/bitnami",
                    "registry-1.docker.io/bitnami",
                    format!("{m}/docker.io/vendor/bitnami"),
                ),
                ("ghcr.io", "ghcr.io", format!("{m}/ghcr.io")),
                (
                    "ghcr.io/bitnami",
                    "ghcr.io/bitnami",
                    format!("{m}/ghcr.io/vendor/bitnami"),
                ),
            ];
            let want: Vec<(String, String, String, bool, bool)> = want
                .into_iter()
                .map(|(prefix, upstream, mirror)| match order {
                    Order::UpstreamFirst => (prefix.into(), mirror, upstream.into(), true, false),
                    Order::MirrorFirst => (prefix.into(), upstream.into(), mirror, false, true),
                })
                .collect();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        let text = format!("a = {}", quoted("q\"b\\s\n\u{1}é"));
        assert_eq!(table(&text)["a"].as_str(), Some("q\"b\\s\n\u{1}é"));
    }
}
