//! Flux `ImageRepository` scans mirrored (`fluxImageRepositories`), as imagerepo-mirror did: every
//! replica follows the objects; the leader, each time an object's `status.lastScanResult.revision`
//! differs from the one it last mirrored ([`scan_changed`]), declares the copies of the scan's tags
//! to the queue ([`Queue::declare`]); a deleted object's are undeclared. Gaining the lead mirrors
//! every object's current scan once (the queue's positive cache and target checks make copies
//! already done cost a HEAD). A changed `spec` (another image or Secret, or none) has the current
//! scan's copies made and declared again, though its revision is the same.
//!
//! `spec.secretRef` names a `kubernetes.io/dockerconfigjson` Secret in the object's namespace: it is
//! read with one GET by name when a scan is mirrored (never listed or watched), and its credentials
//! for `spec.image`'s registry are tried first, then the configured ones. A Secret that cannot be
//! used is logged (its name and why, never its content), counted
//! (`k8s_copycat_flux_secret_ref_errors_total`) and shown with the object in `/status`
//! ([`Queue::declare_problem`]); the copies go ahead with the configured credentials. While it
//! cannot be used it is read again at each change of the object (Flux writes its status at every
//! scan), and once it can, the copies are declared again with its credentials and the problem
//! cleared.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::watch;

use super::{Change, ObjectKey, Watch, served_versions, watch_objects};

use crate::copy::{Copier, PullSecret};
use crate::declarative::flux::{
    self, FluxError, FluxSettings, ImageRepositoryObject, ScanResult, TagSelection, scan_changed,
};
use crate::discovery::watch::docker_config_of;
use crate::metrics::Metrics;
use crate::naming::TargetNaming;
use crate::plan::{Arch, MirrorTask};
use crate::queue::{DeclaredSource, Queue, SourceProblem};
use crate::reference::ImageRef;
use crate::registry::credentials::DockerConfigError;

/// The CRD that must exist.
const CRD: &str = "imagerepositories.image.toolkit.fluxcd.io";

/// What the controller works with.
pub struct FluxController {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// `fluxImageRepositories.*`.
    pub settings: FluxSettings,
    /// The daemon's queue.
    pub queue: Queue,
    /// The copy engine, whose source reads list the tags for `allTags`.
    pub copier: Copier,
    /// Where the Flux metrics are counted.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
}

impl FluxController {
    /// Runs until the daemon stops it: returns at once when the CRD is not installed or serves
    /// neither `v1` nor `v1beta2`.
    pub async fn run(self) {
        let FluxController {
            client,
            settings,
            queue,
            copier,
            metrics,
            mut leading,
        } = self;
        let mut watch = Watch {
            resource: flux::api_resource(flux::VERSIONS[0]),
            crd: CRD,
            enabled_by: "fluxImageRepositories.enabled",
            namespaces: settings.namespaces.clone(),
        };
        let Some(served) = served_versions(&client, &watch).await else {
            return;
        };
        let Some(version) = flux::VERSIONS.into_iter().find(|v| served.iter().any(|s| s == v)) else {
            tracing::warn!(
                crd = CRD,
                served = served.join(","),
                wanted = flux::VERSIONS.join(","),
                "fluxImageRepositories.enabled, but the CRD serves no version copycat reads: not watching ImageRepository objects"
            );
            return;
        };
        watch.resource = flux::api_resource(version);
        let (_watching, mut changes) = watch_objects::<ImageRepositoryObject>(&client, &watch, &metrics);
        tracing::info!(
            namespaces = watch.scope(),
            version,
            "watching Flux ImageRepository objects"
        );
        let mut mirror = FluxMirror::new(client, queue, copier, settings, metrics);
        let mut lead = *leading.borrow_and_update();
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(Change::Applied(object)) => mirror.applied(object, lead).await,
                    Some(Change::Deleted(key)) => mirror.deleted(&key),
                    Some(Change::Undecodable(key, _, error)) => {
                        tracing::warn!(object = %key, error, "ImageRepository cannot be read; ignoring it");
                    }
                    None => return,
                },
                Ok(()) = leading.changed() => {
                    let now = *leading.borrow_and_update();
                    if now && !lead {
                        mirror.lead().await;
                    }
                    lead = now;
                }
            }
        }
    }
}

/// Why a `spec.secretRef` Secret gives no credentials. Messages name the Secret and the registry,
/// never a credential.
#[derive(Debug, thiserror::Error)]
pub enum SecretRefError {
    /// No such Secret in the object's namespace.
    #[error("Secret {0} not found")]
    NotFound(String),
    /// The API server did not answer the GET (RBAC: `get` on secrets; or it is away).
    #[error("Secret {secret} cannot be read: {source}")]
    Unreadable {
        /// `namespace/name`.
        secret: String,
        /// The API server's or the client's answer.
        source: kube::Error,
    },
    /// Not a `kubernetes.io/dockerconfigjson` (or `dockercfg`) Secret with its key.
    #[error("Secret {0} is not a kubernetes.io/dockerconfigjson Secret with a .dockerconfigjson key")]
    NotDockerConfig(String),
    /// Its Docker config cannot be read.
    #[error("Secret {secret}: {source}")]
    Invalid {
        /// `namespace/name`.
        secret: String,
        /// What is wrong with it.
        source: DockerConfigError,
    },
    /// It has no credentials for the image's registry.
    #[error("Secret {secret} has no credentials for {registry}")]
    NoEntry {
        /// `namespace/name`.
        secret: String,
        /// The canonical registry host of `spec.image`.
        registry: String,
    },
}

impl SecretRefError {
    /// The `reason` label of `k8s_copycat_flux_secret_ref_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SecretRefError::NotFound(_) => "not_found",
            SecretRefError::Unreadable { .. } => "unreadable",
            SecretRefError::NotDockerConfig(_) => "not_docker_config",
            SecretRefError::Invalid { .. } => "invalid",
            SecretRefError::NoEntry { .. } => "no_entry",
        }
    }
}

/// One followed object: what it is now, the scan this replica last mirrored, whether its
/// `spec.secretRef` could not be used then (it is read again at the object's next change), and
/// whether its `spec` changed since (its tasks are made again, with the same revision).
struct Followed {
    object: ImageRepositoryObject,
    mirrored: Option<ScanResult>,
    secret_unusable: bool,
    spec_changed: bool,
}

/// The copies of one scan, and why its `spec.secretRef` gave no credentials, if it did not.
struct Scanned {
    tasks: Vec<MirrorTask>,
    secret_problem: Option<SecretRefError>,
}

impl Followed {
    fn scan(&self) -> Option<&ScanResult> {
        self.object.status.as_ref()?.last_scan_result.as_ref()
    }
}

/// The copies of `image` (`spec.image`) under each of `tags`, the tag kept at the target, named by
/// `naming` (a `$arch` from the image is read just before copying), `credentials` tried first.
fn copies(
    image: &ImageRef,
    tags: &[String],
    naming: &TargetNaming,
    credentials: &[PullSecret],
) -> Result<Vec<MirrorTask>, FluxError> {
    tags.iter()
        .map(|tag| {
            let mut task = MirrorTask::named(image.with_tag(tag)?, Some(tag.clone()), naming.clone(), Arch::FromImage)?;
            task.add_source_credentials(credentials.iter().cloned());
            Ok(task)
        })
        .collect()
}

/// Follows `ImageRepository` objects and declares their scans' copies.
struct FluxMirror {
    client: kube::Client,
    queue: Queue,
    copier: Copier,
    settings: FluxSettings,
    metrics: Arc<Metrics>,
    objects: HashMap<DeclaredSource, Followed>,
}

/// The queue's name of the object `key`.
fn source_of(key: &ObjectKey) -> DeclaredSource {
    DeclaredSource::new(flux::KIND, &key.namespace, &key.name)
}

impl FluxMirror {
    /// Follows objects with `settings`: Secrets read through `client`, tags listed through
    /// `copier`, copies declared to `queue`; the Flux metrics are registered on `metrics`.
    fn new(
        client: kube::Client,
        queue: Queue,
        copier: Copier,
        settings: FluxSettings,
        metrics: Arc<Metrics>,
    ) -> FluxMirror {
        metrics.enable_flux();
        FluxMirror {
            client,
            queue,
            copier,
            settings,
            metrics,
            objects: HashMap::new(),
        }
    }

    /// The object was created or changed (or listed again): when `lead` and its scan's revision is
    /// not the one last mirrored, its tags are declared.
    async fn applied(&mut self, object: ImageRepositoryObject, lead: bool) {
        let source = source_of(&ObjectKey::of(&object.metadata));
        match self.objects.get_mut(&source) {
            Some(followed) => {
                // Another Secret, or none: the copies' credentials change though the scan did not.
                followed.spec_changed |= followed.object.spec != object.spec;
                followed.object = object;
            }
            None => {
                self.objects.insert(
                    source.clone(),
                    Followed {
                        object,
                        mirrored: None,
                        secret_unusable: false,
                        spec_changed: false,
                    },
                );
            }
        }
        if lead {
            self.mirror_if_changed(&source).await;
        }
    }

    /// The object `key` is gone: what it declared is forgotten (running copies finish).
    fn deleted(&mut self, key: &ObjectKey) {
        let source = source_of(key);
        if self.objects.remove(&source).is_some() {
            let forgotten = self.queue.undeclare(source.clone());
            tracing::info!(object = %source, forgotten, "ImageRepository deleted: its tags are no longer mirrored");
        }
    }

    /// This replica now leads: every object's current scan is mirrored.
    async fn lead(&mut self) {
        let sources: Vec<DeclaredSource> = self.objects.keys().cloned().collect();
        for source in sources {
            if let Some(followed) = self.objects.get_mut(&source) {
                followed.mirrored = None;
            }
            self.mirror_if_changed(&source).await;
        }
    }

    /// Declares `source`'s scan when it is not the one last mirrored, or again when its
    /// `spec.secretRef` could not be used last time (to try it again) or its `spec` changed.
    async fn mirror_if_changed(&mut self, source: &DeclaredSource) {
        let Some(followed) = self.objects.get(source) else {
            return;
        };
        let Some(scan) = followed.scan().cloned() else {
            return;
        };
        let changed = scan_changed(followed.mirrored.as_ref(), Some(&scan));
        let (was_unusable, respec) = (followed.secret_unusable, followed.spec_changed);
        if !changed && !scan.revision.is_empty() {
            self.metrics.flux_scan("unchanged");
        }
        if !changed && !was_unusable && !respec {
            return;
        }
        let object = &followed.object;
        let secret_unusable = match self.tasks(source, object, &scan).await {
            Ok(Scanned { tasks, secret_problem }) => {
                let n = tasks.len();
                let submitted = self.queue.declare(source.clone(), tasks);
                if changed {
                    self.metrics.flux_scan("mirrored");
                    tracing::info!(object = %source, image = object.spec.image, revision = scan.revision,
                        tags = n, submitted = submitted.submitted, "ImageRepository scan changed: mirroring its tags");
                } else if was_unusable && secret_problem.is_none() {
                    tracing::info!(object = %source, image = object.spec.image, revision = scan.revision,
                        tags = n, submitted = submitted.submitted,
                        "ImageRepository spec.secretRef problem gone: its tags declared again");
                } else if respec {
                    tracing::info!(object = %source, image = object.spec.image, revision = scan.revision,
                        tags = n, submitted = submitted.submitted, "ImageRepository spec changed: its tags declared again");
                }
                let unusable = secret_problem.is_some();
                self.queue
                    .declare_problem(source, secret_problem.map(SourceProblem::new));
                unusable
            }
            Err(e) => {
                if changed {
                    self.metrics.flux_scan("invalid");
                }
                if changed || respec {
                    tracing::warn!(object = %source, image = object.spec.image, revision = scan.revision, error = %e,
                        "ImageRepository not mirrored");
                }
                // Nothing declared anew: a problem shown stays, and is looked at again next time.
                was_unusable
            }
        };
        if let Some(followed) = self.objects.get_mut(source) {
            followed.mirrored = Some(scan);
            followed.secret_unusable = secret_unusable;
            followed.spec_changed = false;
        }
    }

    /// The copies of `scan` of `object`: its tags (with `allTags`, the listed ones too) within the
    /// limit, each with the `spec.secretRef` credentials first.
    async fn tasks(
        &self,
        source: &DeclaredSource,
        object: &ImageRepositoryObject,
        scan: &ScanResult,
    ) -> Result<Scanned, FluxError> {
        let image = ImageRef::parse(&object.spec.image).map_err(FluxError::Image)?;
        let (credentials, secret_problem) = match &object.spec.secret_ref {
            Some(secret) => match self
                .read_secret(&source.namespace, &secret.name, image.registry())
                .await
            {
                Ok(credential) => (vec![credential], None),
                Err(e) => {
                    self.metrics.flux_secret_error(e.reason());
                    tracing::warn!(object = %source, image = %image.name(), error = %e,
                        "ImageRepository spec.secretRef cannot be used; trying the configured credentials");
                    (vec![], Some(e))
                }
            },
            None => (vec![], None),
        };
        let listed = if self.settings.all_tags {
            self.list_tags(source, &image, &credentials).await
        } else {
            vec![]
        };
        let selection = TagSelection::of(scan, &listed, self.settings.max_tags);
        if selection.left_out > 0 {
            tracing::warn!(object = %source, image = %image.name(), copied = selection.tags.len(),
                left_out = selection.left_out, "more tags than fluxImageRepositories.maxTags: the rest are not mirrored");
        }
        let naming = flux::naming_for(&self.settings.naming, &source.namespace, &source.name);
        let tasks = copies(&image, &selection.tags, &naming, &credentials)?;
        Ok(Scanned { tasks, secret_problem })
    }

    /// Reads the Secret `namespace/name` (one GET) and takes its credentials for `registry`.
    async fn read_secret(&self, namespace: &str, name: &str, registry: &str) -> Result<PullSecret, SecretRefError> {
        let full = format!("{namespace}/{name}");
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Err(SecretRefError::NotFound(full)),
            Err(source) => return Err(SecretRefError::Unreadable { secret: full, source }),
        };
        let auths = docker_config_of(&secret)
            .ok_or_else(|| SecretRefError::NotDockerConfig(full.clone()))?
            .map_err(|source| SecretRefError::Invalid {
                secret: full.clone(),
                source,
            })?;
        match auths.get(registry) {
            Some(credential) => Ok(PullSecret {
                name: full,
                credential: credential.clone(),
            }),
            None => Err(SecretRefError::NoEntry {
                secret: full,
                registry: registry.to_owned(),
            }),
        }
    }

    /// Every tag of `image`'s repository (`allTags`), read as its copies read the source
    /// ([`Copier::list_source_tags`]: the Secret's credentials first, then the configured ones);
    /// none (logged) when it cannot be listed.
    async fn list_tags(&self, source: &DeclaredSource, image: &ImageRef, credentials: &[PullSecret]) -> Vec<String> {
        match self.copier.list_source_tags(image, credentials).await {
            Ok(tags) => tags,
            Err(e) => {
                tracing::warn!(object = %source, image = %image.name(), error = %e,
                    "fluxImageRepositories.allTags: the tags cannot be listed; mirroring the scan's latest tags only");
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_ref_problem_has_its_own_reason_label() {
        let secret = || "flux-system/pull".to_owned();
        let problems = [
            SecretRefError::NotFound(secret()),
            SecretRefError::Unreadable {
                secret: secret(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            SecretRefError::NotDockerConfig(secret()),
            SecretRefError::Invalid {
                secret: secret(),
                source: DockerConfigError::NotAnObject,
            },
            SecretRefError::NoEntry {
                secret: secret(),
                registry: "ghcr.io".into(),
            },
        ];
        let reasons: Vec<&str> = problems.iter().map(SecretRefError::reason).collect();
        assert_eq!(
            reasons,
            crate::metrics::FLUX_SECRET_ERRORS,
            "the metric's labels, one each, in order"
        );
    }
    use crate::naming::{NameContext, PathMapRule, PathRule};
    use crate::registry::Credential;
    use crate::secret::Secret;

    #[test]
    fn copies_are_named_by_the_target_naming_with_the_objects_namespace() {
        let base = TargetNaming {
            prefix: "flux/$namespace/$podname/$arch".into(),
            rules: PathRule::compile(&[PathMapRule {
                from: "org/".into(),
                to: "team/".into(),
                regex: false,
            }])
            .unwrap()
            .into(),
            ctx: NameContext::default(),
            target_host: "mirror.example:5000".into(),
            target_path: "backup".into(),
        };
        let naming = flux::naming_for(&base, "apps", "app-repo");
        let tags = ["1.1".to_owned(), "1.0".to_owned()];
        let secret = PullSecret {
            name: "apps/pull".into(),
            credential: Credential::Basic {
                username: "u".into(),
                password: Secret::new("p"),
            },
        };
        // (spec.image, first source, first target without its `$arch` segment, read from the image)
        let cases = [
            (
                "ghcr.io/org/app",
                "ghcr.io/org/app:1.1",
                "mirror.example:5000/backup/flux/apps/app-repo/team/app:1.1",
            ),
            (
                "nginx",
                "docker.io/library/nginx:1.1",
                "mirror.example:5000/backup/flux/apps/app-repo/library/nginx:1.1",
            ),
        ];
        for (image, source, target) in cases {
            let tasks = copies(
                &ImageRef::parse(image).unwrap(),
                &tags,
                &naming,
                std::slice::from_ref(&secret),
            )
            .unwrap();
            assert_eq!(tasks.len(), 2, "{image}");
            assert_eq!(tasks[0].request.source.to_string(), source, "{image}");
            assert_eq!(tasks[0].request.target_display(None), target, "{image}");
            assert!(tasks[0].arch_naming.is_some(), "{image}: $arch from the image");
            assert_eq!(tasks[1].request.target_tag.as_deref(), Some("1.0"), "{image}");
            assert_eq!(tasks[1].source_credentials, std::slice::from_ref(&secret), "{image}");
        }
        let image = ImageRef::parse("ghcr.io/org/app").unwrap();
        assert!(matches!(
            copies(&image, &["bad tag".into()], &naming, &[]),
            Err(FluxError::Image(_))
        ));
        assert!(
            ImageRef::parse("localhost:5000/Org/App").is_err(),
            "spec.image is checked by the caller"
        );
    }
}
