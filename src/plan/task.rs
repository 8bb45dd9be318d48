//! Mirror tasks, their target keys and the rules for merging two tasks of one target. Pure logic.

use std::fmt;
use std::sync::Arc;

use crate::copy::{CopyError, CopyRequest, PullSecret};
use crate::naming::{NamingError, TargetNaming};
use crate::platform::Platform;
use crate::reference::{Digest, ImageRef};
use crate::workload::Workload;

/// Users kept per task (the most recent ones): enough to find who runs an image, bounded however many
/// Pods share it.
pub const MAX_USERS: usize = 5;

/// Where the `$arch` of a target name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch<'a> {
    /// The architecture of the Node the image's Pods run on.
    Node(&'a str),
    /// The source image's own (no Node platform known): read from the source just before copying,
    /// by [`MirrorTask::name_target`].
    FromImage,
}

/// One image to mirror to one target reference.
#[derive(Debug, Clone)]
pub struct MirrorTask {
    /// Source, target repository and target tag (`None`: by digest). With `$arch` from the image
    /// (`arch_naming`), the target is named without its `$arch` segment: only the task's identity.
    pub request: CopyRequest,
    /// Platforms to copy of an index; empty: the whole index, digest preserved.
    pub platforms: Vec<Platform>,
    /// Who uses the image, e.g. `Deployment shop/web`, for logs, status and events; at most
    /// [`MAX_USERS`] are kept.
    pub users: Vec<Workload>,
    /// Credentials for the source registry from the users' pull secrets, tried in order before the
    /// configured ones (`useImagePullSecrets`).
    pub source_credentials: Vec<PullSecret>,
    /// When `$arch` comes from the image itself ([`Arch::FromImage`]): how
    /// [`MirrorTask::name_target`] names the target once the image is read.
    pub arch_naming: Option<Arc<TargetNaming>>,
    /// Copy in repair mode ([`crate::copy::CopyOptions::repair`]): a check found the target
    /// incomplete under a tag that may hold the right digest. A one-time request, not part of the
    /// work ([`MirrorTask::same_work`]); the queue clears it once a copy succeeds.
    pub repair: bool,
}

impl MirrorTask {
    /// A task for `request`, whole index, no users.
    pub fn new(request: CopyRequest) -> MirrorTask {
        MirrorTask {
            request,
            platforms: vec![],
            users: vec![],
            source_credentials: vec![],
            arch_naming: None,
            repair: false,
        }
    }

    /// The same task copying only `platforms`.
    pub fn with_platforms(mut self, platforms: Vec<Platform>) -> MirrorTask {
        self.platforms = platforms;
        self
    }

    /// A task for `source` whose target `naming` names, with `arch` as `$arch`. With
    /// [`Arch::FromImage`] and a name that has `$arch`, the target is named without that segment (the
    /// task's identity, so its key does not wait for a source read) and `naming` is kept for
    /// [`MirrorTask::name_target`].
    pub fn named(
        source: ImageRef,
        target_tag: Option<String>,
        naming: TargetNaming,
        arch: Arch<'_>,
    ) -> Result<MirrorTask, NamingError> {
        let known = match arch {
            Arch::Node(arch) => Some(arch),
            Arch::FromImage => None,
        };
        let target = naming.target(&source, known)?;
        let from_image = arch == Arch::FromImage && naming.uses_arch();
        Ok(MirrorTask {
            arch_naming: from_image.then(|| Arc::new(naming)),
            ..MirrorTask::new(CopyRequest {
                source,
                target,
                target_tag,
            })
        })
    }

    /// Adds source credentials to try after those the task has (the same credentials from another
    /// Secret are not tried twice).
    pub fn add_source_credentials(&mut self, credentials: impl IntoIterator<Item = PullSecret>) {
        for c in credentials {
            if !self.source_credentials.iter().any(|s| s.credential == c.credential) {
                self.source_credentials.push(c);
            }
        }
    }

    /// The same task with one more user.
    pub fn with_user(mut self, user: Workload) -> MirrorTask {
        union_users(&mut self.users, [user]);
        self
    }

    /// The request to copy, its target named: with `$arch` from the image (`arch_naming`), the one
    /// source read (`read_arch`: the source's manifest digest and architecture) names the target, and
    /// the source is pinned to the digest the architecture was read from (so a tag moved meanwhile
    /// cannot land under another name); otherwise the task's own request, without a read. The queue
    /// names each attempt's target here, and the coverage check each target it checks.
    pub async fn name_target(
        &self,
        read_arch: impl AsyncFnOnce(&ImageRef) -> Result<(Digest, String), CopyError>,
    ) -> Result<CopyRequest, CopyError> {
        let Some(naming) = &self.arch_naming else {
            return Ok(self.request.clone());
        };
        let source = &self.request.source;
        let (digest, arch) = read_arch(source).await?;
        let target = naming.target(source, Some(&arch)).map_err(CopyError::TargetName)?;
        tracing::debug!(%source, %arch, target = %target.name(), "named the target by the image's architecture");
        Ok(CopyRequest {
            target,
            source: source.with_digest(digest),
            target_tag: self.request.target_tag.clone(),
        })
    }

    /// The target this task writes, which identifies it in the queue.
    pub fn key(&self) -> TargetKey {
        TargetKey::of(&self.request)
    }

    /// Whether both tasks would do the same copy (same source reference, digest included, same target
    /// and tag, same platforms, same source credentials); users do not matter.
    pub fn same_work(&self, other: &MirrorTask) -> bool {
        self.request.source == other.request.source
            && self.request.target.name() == other.request.target.name()
            && self.request.target_tag == other.request.target_tag
            && self.platforms == other.platforms
            && self.source_credentials == other.source_credentials
    }

    /// Merges a newer submission of the same target into this one: the newer request and platforms
    /// win, users are unioned, and a repair asked by either stays asked.
    pub fn absorb(&mut self, newer: MirrorTask) {
        let MirrorTask {
            request,
            platforms,
            users,
            source_credentials,
            arch_naming,
            repair,
        } = newer;
        self.repair |= repair;
        self.arch_naming = arch_naming;
        self.request = request;
        self.platforms = platforms;
        self.source_credentials = source_credentials;
        union_users(&mut self.users, users);
    }

    /// The task without its users, as remembered by the positive cache.
    pub(crate) fn work(&self) -> MirrorTask {
        MirrorTask {
            request: self.request.clone(),
            platforms: self.platforms.clone(),
            users: vec![],
            source_credentials: self.source_credentials.clone(),
            arch_naming: self.arch_naming.clone(),
            repair: false,
        }
    }
}

/// Adds the users of `more` missing from `users`, then keeps the last [`MAX_USERS`] (the most recent).
pub fn union_users(users: &mut Vec<Workload>, more: impl IntoIterator<Item = Workload>) {
    for user in more {
        if !users.contains(&user) {
            users.push(user);
        }
    }
    if users.len() > MAX_USERS {
        users.drain(..users.len() - MAX_USERS);
    }
}

/// The identity of a task: the target registry and repository with the tag, or with the digest for
/// a digest-only target.
///
/// - `reg/repo:tag` when the request names a target tag;
/// - `reg/repo@sha256:…` when it pushes by digest and the source pins the digest;
/// - `reg/repo <- SOURCE` when it pushes by digest and the digest is only known after a HEAD at the
///   source (one task per source reference, since the digest cannot be known without a request).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey(Arc<str>);

impl TargetKey {
    /// The key of `request`.
    pub fn of(request: &CopyRequest) -> TargetKey {
        let text = match (&request.target_tag, request.source.digest()) {
            (Some(tag), _) => format!("{}:{tag}", request.target.name()),
            (None, Some(digest)) => format!("{}@{digest}", request.target.name()),
            (None, None) => format!("{} <- {}", request.target.name(), request.source),
        };
        TargetKey(text.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{NameContext, PathRule};
    use crate::workload::Kind;

    fn pod(name: impl Into<String>) -> Workload {
        Workload::new(Kind::Pod, "ns", name)
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn task(source: &str, target: &str, tag: Option<&str>) -> MirrorTask {
        MirrorTask::new(CopyRequest {
            source: ImageRef::parse(source).unwrap(),
            target: ImageRef::parse(target).unwrap(),
            target_tag: tag.map(str::to_owned),
        })
    }

    #[test]
    fn keys_name_the_target_tag_or_digest() {
        let cases = [
            (task("nginx:1.27", "r.io/m/nginx", Some("1.27")), "r.io/m/nginx:1.27"),
            // The target's own tag or digest is ignored: the request's target tag decides.
            (
                task("nginx:1.27", "r.io/m/nginx:other", Some("1.27")),
                "r.io/m/nginx:1.27",
            ),
            (
                task(&format!("nginx:1.27@{D1}"), "r.io/m/nginx", Some("1.27")),
                "r.io/m/nginx:1.27",
            ),
            (
                task(&format!("ghcr.io/a/b@{D1}"), "r.io/b", None),
                &format!("r.io/b@{D1}") as &str,
            ),
            (task("ghcr.io/a/b:v1", "r.io/b", None), "r.io/b <- ghcr.io/a/b:v1"),
            // Registry host spellings normalise to one key.
            (task("nginx", "R.IO:5000/b", Some("v1")), "r.io:5000/b:v1"),
        ];
        for (t, want) in cases {
            assert_eq!(t.key().as_str(), want);
            assert_eq!(t.key().to_string(), want);
        }
    }

    #[test]
    fn one_key_per_target_whatever_the_source() {
        let a = task(&format!("ghcr.io/a/b:v1@{D1}"), "r.io/b", Some("v1"));
        let b = task(&format!("docker.io/a/b:v1@{D2}"), "r.io/b", Some("v1"));
        assert_eq!(a.key(), b.key());
        assert!(!a.same_work(&b));
        // By digest, another digest is another target.
        let c = task(&format!("ghcr.io/a/b@{D1}"), "r.io/b", None);
        let d = task(&format!("ghcr.io/a/b@{D2}"), "r.io/b", None);
        assert_ne!(c.key(), d.key());
    }

    #[test]
    fn same_work_compares_source_digest_tag_and_platforms_not_users() {
        let base = task(&format!("nginx:1.27@{D1}"), "r.io/nginx", Some("1.27"));
        assert!(base.same_work(&base.clone().with_user(pod("b"))));
        assert!(!base.same_work(&task(&format!("nginx:1.27@{D2}"), "r.io/nginx", Some("1.27"))));
        assert!(!base.same_work(&task("nginx:1.27", "r.io/nginx", Some("1.27"))));
        assert!(!base.same_work(&task(&format!("nginx:1.27@{D1}"), "r.io/nginx", Some("stable"))));
        let arm = base
            .clone()
            .with_platforms(vec![Platform::parse("linux/arm64").unwrap()]);
        assert!(!base.same_work(&arm));
        assert!(arm.same_work(&arm.clone()));
    }

    #[test]
    fn absorb_takes_the_newest_request_and_unions_users() {
        let mut queued = task(&format!("nginx:1.27@{D1}"), "r.io/nginx", Some("1.27"))
            .with_user(Workload::new(Kind::Deployment, "ns", "web"))
            .with_user(pod("web-1"));
        let newer = task(&format!("nginx:1.27@{D2}"), "r.io/nginx", Some("1.27"))
            .with_platforms(vec![Platform::parse("linux/amd64").unwrap()])
            .with_user(pod("web-1"))
            .with_user(pod("web-2"));
        queued.absorb(newer.clone());
        assert!(queued.same_work(&newer));
        let users: Vec<String> = queued.users.iter().map(ToString::to_string).collect();
        assert_eq!(users, ["Deployment ns/web", "Pod ns/web-1", "Pod ns/web-2"]);
    }

    /// Names a task of `nginx:1.27` by `prefix` with `arch`, then its target as the queue does,
    /// with a source read answering `amd64` at D1: the identity key, the target copied, the source
    /// copied and how many reads it took.
    async fn named(prefix: &str, arch: Arch<'_>) -> (String, String, String, usize) {
        let naming = TargetNaming {
            prefix: prefix.into(),
            rules: PathRule::compile(&[]).unwrap().into(),
            ctx: NameContext {
                namespace: "shop".into(),
                ..NameContext::default()
            },
            target_host: "r.io".into(),
            target_path: String::new(),
        };
        let source = ImageRef::parse("nginx:1.27").unwrap();
        let task = MirrorTask::named(source, Some("1.27".into()), naming, arch).unwrap();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let read_arch = async |_: &ImageRef| {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((Digest::parse(D1).unwrap(), "amd64".to_owned()))
        };
        let request = task.name_target(read_arch).await.unwrap();
        let reads = reads.into_inner();
        (
            task.key().to_string(),
            request.target.name().to_owned(),
            request.source.to_string(),
            reads,
        )
    }

    #[tokio::test]
    async fn a_target_is_named_once_reading_the_source_only_for_the_images_arch() {
        let pinned = format!("docker.io/library/nginx:1.27@{D1}");
        let cases = [
            // The node's architecture names the target when planned: no read.
            (
                "$namespace/$arch",
                Arch::Node("arm64"),
                "r.io/shop/arm64/library/nginx:1.27",
                "r.io/shop/arm64/library/nginx",
                "docker.io/library/nginx:1.27",
                0,
            ),
            // The image's own: the identity drops the segment; one read names the target and pins
            // the source to the digest read.
            (
                "$namespace/$arch",
                Arch::FromImage,
                "r.io/shop/library/nginx:1.27",
                "r.io/shop/amd64/library/nginx",
                &pinned as &str,
                1,
            ),
            // A name without `$arch` never reads the image.
            (
                "$namespace",
                Arch::FromImage,
                "r.io/shop/library/nginx:1.27",
                "r.io/shop/library/nginx",
                "docker.io/library/nginx:1.27",
                0,
            ),
            (
                "$namespace",
                Arch::Node("arm64"),
                "r.io/shop/library/nginx:1.27",
                "r.io/shop/library/nginx",
                "docker.io/library/nginx:1.27",
                0,
            ),
        ];
        for (prefix, arch, key, target, source, reads) in cases {
            let got = named(prefix, arch).await;
            assert_eq!(
                got,
                (key.into(), target.into(), source.into(), reads),
                "{prefix} {arch:?}"
            );
        }
    }

    #[test]
    fn users_are_bounded_keeping_the_most_recent() {
        let mut users = vec![];
        union_users(&mut users, (0..3).map(|i| pod(format!("p{i}"))));
        union_users(&mut users, (0..3).map(|i| pod(format!("p{i}"))));
        assert_eq!(users.len(), 3, "duplicates are not added");
        union_users(&mut users, (3..20).map(|i| pod(format!("p{i}"))));
        assert_eq!(users, (15..20).map(|i| pod(format!("p{i}"))).collect::<Vec<_>>());
        let many = (0..100).fold(task("nginx", "r.io/nginx", Some("latest")), |t, i| {
            t.with_user(pod(format!("p{i}")))
        });
        assert_eq!(many.users.len(), MAX_USERS);
        assert_eq!(many.work().users.len(), 0);
    }
}
