//! `copycat failover`: the break-glass switch to the mirror and back, with the operator's own
//! kubeconfig (the daemon never changes a workload). `--to-mirror` reads the cluster once — the
//! daemon's discovery for the digests Pods run and who owns them, and each kind it may patch as JSON,
//! to write back unchanged but for the images, the pull secret and the record — names each container's target as the daemon does,
//! checks it at the target as `copycat verify` does, pinned to the digest the cluster runs (so the
//! source registry is not needed), and writes every object with a container whose backup is
//! verified, with `resourceVersion` as the precondition: a conflict is read again and decided again,
//! never overwritten. `--revert` puts back what the record says. The decisions are
//! [`crate::failover`]'s; this module does the reading, checking, writing and printing.

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::Value;

use super::verify::{LIST_TIMEOUT, cluster_parts, scope_text};
use super::{EXIT_FAILED, usage};
use crate::cli::FailoverArgs;
use crate::config::Config;
use crate::copy::check::Depth;
use crate::coverage::{self, BackupState, CheckOptions, ImageCoverage, WholeTarget, count};
use crate::discovery::extract::ContainerImage;
use crate::discovery::inventory::Inventory;
use crate::discovery::watch;
use crate::failover::{self, Choice, FailoverError, Outcome};
use crate::plan::{MirrorTask, Planned};
use crate::reference::{self, Digest, ImageRef};
use crate::referrer_policy::ReferrerPolicy;
use crate::wiring::DaemonParts;
use crate::workload::{Kind, Workload};

/// Writes of one object tried before its conflicts are reported.
const MAX_ATTEMPTS: usize = 5;

/// `copycat failover`.
pub async fn failover(config: &Config, args: &FailoverArgs) -> ExitCode {
    if let Some(bad) = args.registries.iter().find(|r| reference::canonical_host(r).is_empty()) {
        return usage(&format!("--registry {bad:?}: not a registry host"));
    }
    let (parts, namespaces) = match cluster_parts(config, &args.namespaces).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    eprintln!(
        "copycat: failover {} in {} at {}{}",
        if args.revert { "--revert" } else { "--to-mirror" },
        scope_text(namespaces.as_deref()),
        parts.api_server,
        if args.dry_run {
            " (dry run: nothing is written)"
        } else {
            ""
        }
    );
    let objects = match list_objects(&parts.client, namespaces.as_deref()).await {
        Ok(objects) => objects,
        Err(e) => {
            eprintln!("copycat: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let writer = Writer {
        client: parts.client.clone(),
        dry_run: args.dry_run,
    };
    let tally = if args.revert {
        revert_all(&writer, &objects).await
    } else {
        let feeds = watch::feeds(&watch::watched_for(&[Kind::Pod], false, false), namespaces.as_deref());
        let inventory = match watch::list_once(parts.client.clone(), &parts.api_server, &feeds, LIST_TIMEOUT).await {
            Ok(inventory) => inventory,
            Err(e) => {
                eprintln!("copycat: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        let cluster = Cluster::of(&inventory);
        let roles: Vec<Role> = objects.iter().map(|o| cluster.role(o)).collect();
        let choices = choices(&parts, config, args, &cluster, &objects, &roles).await;
        switch_all(&writer, &objects, &roles, &choices, args.pull_secret.as_deref()).await
    };
    println!("{}", tally.summary(args.revert, args.dry_run));
    if tally.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// One object as read, its kind and `apiVersion` set (list items may omit them).
struct Object {
    who: Workload,
    value: Value,
}

/// The API resource of `kind`.
fn resource(kind: Kind) -> ApiResource {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::Pod;
    match kind {
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        Kind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        Kind::Job => ApiResource::erase::<Job>(&()),
        Kind::CronJob => ApiResource::erase::<CronJob>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
    }
}

/// Every object of every workload kind in `namespaces` (all when `None`), one list each.
async fn list_objects(client: &kube::Client, namespaces: Option<&[String]>) -> Result<Vec<Object>, FailoverError> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let ar = resource(kind);
        let apis: Vec<(String, Api<DynamicObject>)> = match namespaces {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| {
                    let api = Api::namespaced_with(client.clone(), ns, &ar);
                    (format!("namespace {ns}"), api)
                })
                .collect(),
            None => vec![("every namespace".to_owned(), Api::all_with(client.clone(), &ar))],
        };
        for (scope, api) in apis {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|source| FailoverError::List {
                    resource: kind.resource(),
                    scope,
                    source: Box::new(source),
                })?;
            for item in list.items {
                let who = Workload::new(
                    kind,
                    item.metadata.namespace.clone().unwrap_or_default(),
                    item.metadata.name.clone().unwrap_or_default(),
                );
                out.push(Object {
                    value: json_of(item, &ar),
                    who,
                });
            }
        }
    }
    Ok(out)
}

/// `object` as JSON with its kind and `apiVersion`.
fn json_of(object: DynamicObject, ar: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).expect("a listed object serialises");
    value["apiVersion"] = Value::from(ar.api_version.clone());
    value["kind"] = Value::from(ar.kind.clone());
    value
}

/// What failover does with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// Switch its containers: a workload with a template, or a bare Pod.
    Patch,
    /// Nothing: it runs nothing (a finished Pod).
    Idle,
    /// Report it, with why it is not switched, when it uses an image with a verified backup; its
    /// containers' targets are named for this workload. `left`: it counts as left as it is (not
    /// for a Pod or Job that follows a workload failover switches, which replaces it).
    Report { why: String, workload: String, left: bool },
}

/// What the daemon's discovery says about the cluster: which workload owns each Pod and Job, and
/// which digests the Pods of each workload run per container and image.
struct Cluster {
    owners: HashMap<(Kind, String, String), (Kind, String)>,
    running: HashMap<RunKey, BTreeSet<Digest>>,
}

/// Namespace, workload kind and name, container, image as written.
type RunKey = (String, Kind, String, String, String);

/// The workloads whose templates failover switches (their Pods and Jobs follow them).
const TEMPLATES: [Kind; 4] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet, Kind::CronJob];

impl Cluster {
    /// What `inventory` (one list of Pods, ReplicaSets and Jobs) says.
    fn of(inventory: &Inventory) -> Cluster {
        let mut owners = HashMap::new();
        let mut running: HashMap<RunKey, BTreeSet<Digest>> = HashMap::new();
        for (key, entry) in inventory.objects() {
            let (kind, name) = inventory.workload_of(key, entry);
            if key.kind == Kind::Pod {
                for use_ in &entry.images {
                    if let Some(digest) = &use_.pod_digest {
                        let run = (
                            key.namespace.clone(),
                            kind,
                            name.clone(),
                            use_.container.clone(),
                            use_.image.clone(),
                        );
                        running.entry(run).or_default().insert(digest.clone());
                    }
                }
            }
            owners.insert((key.kind, key.namespace.clone(), key.name.clone()), (kind, name));
        }
        Cluster { owners, running }
    }

    /// What failover does with `object`: by its kind and its controller (`ownerReferences`), the
    /// top workload resolved as the daemon resolves it.
    fn role(&self, object: &Object) -> Role {
        let who = &object.who;
        let phase = object.value.pointer("/status/phase").and_then(Value::as_str);
        if who.kind == Kind::Pod && matches!(phase, Some("Succeeded" | "Failed")) {
            return Role::Idle;
        }
        let controller = object
            .value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true));
        let top = self.owners.get(&(who.kind, who.namespace.clone(), who.name.clone()));
        match (who.kind, controller, top) {
            (Kind::Job, None, _) => Role::Report {
                why: "a Job's Pod template cannot change".to_owned(),
                workload: who.name.clone(),
                left: true,
            },
            (Kind::Pod, None, _) => Role::Patch,
            (Kind::Job | Kind::Pod, Some(_), Some((kind, name))) if TEMPLATES.contains(kind) => Role::Report {
                why: format!(
                    "owned by {}, which failover switches; it keeps its images until it is replaced",
                    Workload::new(*kind, who.namespace.clone(), name.clone())
                ),
                workload: name.clone(),
                left: false,
            },
            (Kind::Job | Kind::Pod, Some(owner), top) => {
                let owner_kind = owner.get("kind").and_then(Value::as_str).unwrap_or("?");
                let owner_name = owner.get("name").and_then(Value::as_str).unwrap_or("?");
                Role::Report {
                    why: format!("owned by {owner_kind} {owner_name}, which failover does not switch"),
                    workload: top.map_or_else(|| who.name.clone(), |(_, name)| name.clone()),
                    left: true,
                }
            }
            _ => Role::Patch,
        }
    }

    /// The digest the Pods of `who` run in `container` for `image`: `Err` when they run several.
    fn digest(&self, who: &Workload, container: &str, image: &str) -> Result<Option<Digest>, SeveralDigests> {
        let (kind, name) = match who.kind {
            Kind::Pod | Kind::Job => self
                .owners
                .get(&(who.kind, who.namespace.clone(), who.name.clone()))
                .cloned()
                .unwrap_or((who.kind, who.name.clone())),
            kind => (kind, who.name.clone()),
        };
        let key = (
            who.namespace.clone(),
            kind,
            name,
            container.to_owned(),
            image.to_owned(),
        );
        let Some(digests) = self.running.get(&key) else {
            return Ok(None);
        };
        match digests.iter().collect::<Vec<_>>().as_slice() {
            [one] => Ok(Some((*one).clone())),
            several => Err(SeveralDigests(several.iter().map(|d| (*d).clone()).collect())),
        }
    }
}

/// The Pods of one workload run several digests of one image: a rollout in progress, or a tag that
/// moved between pulls. Which one the mirror should give is not for failover to guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its Pods run {} digests ({}): let the rollout finish first", .0.len(), list(.0))]
struct SeveralDigests(Vec<Digest>);

fn list(digests: &[Digest]) -> String {
    digests.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A container of an object: the object, the container name, its image.
type UseKey = (Workload, String, String);

/// What to do with each container of the objects to switch or report, their backups checked at the
/// target (each distinct target and digest once, `--jobs` at a time).
async fn choices(
    parts: &DaemonParts,
    config: &Config,
    args: &FailoverArgs,
    cluster: &Cluster,
    objects: &[Object],
    roles: &[Role],
) -> HashMap<UseKey, Choice> {
    let scope = Scope {
        parts,
        cluster,
        registries: args.registries.iter().map(|r| reference::canonical_host(r)).collect(),
        targets: (parts.targets.iter())
            .map(|t| t.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    };
    let mut decided: HashMap<UseKey, Choice> = HashMap::new();
    let mut pending: HashMap<UseKey, (String, String)> = HashMap::new();
    let mut tasks: HashMap<(String, String), MirrorTask> = HashMap::new();
    for (object, role) in objects.iter().zip(roles) {
        let workload = match role {
            Role::Patch => &object.who.name,
            Role::Report { workload, .. } => workload,
            Role::Idle => continue,
        };
        // An object without a Pod spec is reported when it is switched.
        let containers = failover::containers(&object.value, &object.who).unwrap_or_default();
        for (container, image) in containers {
            let key = (object.who.clone(), container.clone(), image.clone());
            match scope.task(&object.who, workload, &container, &image) {
                Ok(task) => {
                    let check = (task.key().to_string(), task.request.source.to_string());
                    tasks.entry(check.clone()).or_insert(task);
                    pending.insert(key, check);
                }
                Err(choice) => {
                    decided.insert(key, choice);
                }
            }
        }
    }
    eprintln!(
        "copycat: checking {} backups at {}",
        tasks.len(),
        parts.targets.join(", ")
    );
    let options = CheckOptions {
        depth: Depth::Quick,
        images: usize::from(args.jobs),
        blobs: config.blob_concurrency as usize,
        // The source may be down: failing over is what this is for.
        referrers: ReferrerPolicy::none(),
    };
    let checked: HashMap<(String, String), (ImageCoverage, Option<WholeTarget>)> = futures::stream::iter(tasks)
        .map(|(check, task)| {
            let options = options.clone();
            async move { (check, coverage::check_task(&parts.copier, &task, options).await) }
        })
        .buffer_unordered(options.images.max(1))
        .collect()
        .await;
    for (key, check) in pending {
        let choice = checked.get(&check).map_or_else(
            || Choice::Leave("not checked".to_owned()),
            |(row, whole)| choice_of(row, whole.as_ref()),
        );
        decided.insert(key, choice);
    }
    decided
}

/// What decides which containers failover looks at and how their targets are named.
struct Scope<'a> {
    parts: &'a DaemonParts,
    cluster: &'a Cluster,
    /// `--registry`, canonical; empty: every registry.
    registries: Vec<String>,
    /// The targets' `registry[/path]`, as the planner excludes them (images already on the mirror).
    targets: Vec<String>,
}

impl Scope<'_> {
    /// The task whose backup decides `image` in `container` of `who` (named for `workload`, as the
    /// daemon names it), pinned to the digest the cluster runs; or the choice made without a check.
    fn task(&self, who: &Workload, workload: &str, container: &str, image: &str) -> Result<MirrorTask, Choice> {
        let reference = ImageRef::parse(image).map_err(|e| Choice::Leave(format!("not an image reference: {e}")))?;
        if !self.registries.is_empty() && !self.registries.iter().any(|r| r == reference.registry()) {
            return Err(Choice::Skip);
        }
        let digest = match reference.digest() {
            Some(d) => Some(d.clone()),
            None => self
                .cluster
                .digest(who, container, image)
                .map_err(|e| Choice::Leave(e.to_string()))?,
        };
        let use_ = ContainerImage {
            image: image.to_owned(),
            container: container.to_owned(),
            pod_digest: digest.clone(),
        };
        match self.parts.planner.plan_use(&who.namespace, workload, &use_) {
            Err(e) => Err(Choice::Leave(format!("not mirrored: {e}"))),
            Ok(Planned::Excluded { rule, .. }) if self.targets.contains(&rule) => Err(Choice::Skip),
            Ok(Planned::Excluded { rule, .. }) => Err(Choice::Leave(format!("not mirrored: excluded by {rule}"))),
            Ok(Planned::Task(mut task)) => {
                // Tag mode names no digest; the backup must hold the one the cluster runs.
                if let Some(digest) = digest
                    && task.request.source.digest().is_none()
                {
                    task.request.source = task.request.source.with_digest(digest);
                }
                Ok(*task)
            }
        }
    }
}

/// The mirror image of a whole target (a verified backup): its repository and tag, pinned by the
/// digest it holds; what is wrong otherwise.
fn choice_of(row: &ImageCoverage, whole: Option<&WholeTarget>) -> Choice {
    match whole {
        Some(whole) if row.state == BackupState::Verified => {
            Choice::Mirror(format!("{}@{}", whole.request.target_display(None), whole.digest))
        }
        // Only a tag no running Pod reports a digest for, or `$arch` named from the image, sends
        // the check to the source.
        _ if row.side == Some("source") => Choice::Leave(format!(
            "backup not checked: the check needs the source registry (no running Pod reports the \
             digest it runs, or the target is named by the image's architecture): {}",
            row.detail
        )),
        _ => Choice::Leave(format!("backup {}: {}", row.state.as_str(), row.detail)),
    }
}

/// Switches every object to patch, and reports those that cannot be patched.
async fn switch_all(
    writer: &Writer,
    objects: &[Object],
    roles: &[Role],
    choices: &HashMap<UseKey, Choice>,
    pull_secret: Option<&str>,
) -> Tally {
    let mut tally = Tally::default();
    let mut secrets_checked: BTreeSet<&str> = BTreeSet::new();
    for (object, role) in objects.iter().zip(roles) {
        let who = &object.who;
        let decide = |value: &Value| {
            let choose = |container: &str, image: &str| {
                let key = (who.clone(), container.to_owned(), image.to_owned());
                choices
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Choice::Leave("changed while failing over; run failover again".to_owned()))
            };
            failover::to_mirror(value, who, choose, pull_secret).map(Some)
        };
        match role {
            Role::Idle => {}
            Role::Report { why, left, .. } => match decide(&object.value) {
                Ok(Some(outcome)) if !outcome.changed.is_empty() => {
                    let containers: Vec<&str> = outcome.changed.iter().map(|c| c.container.as_str()).collect();
                    println!(
                        "not patched {who}: {why} (a backup is verified for {})",
                        containers.join(", ")
                    );
                    tally.not_patched += usize::from(*left);
                }
                Ok(_) => {}
                Err(e) => tally.error(&e),
            },
            Role::Patch => {
                let switches = decide(&object.value).is_ok_and(|o| o.is_some_and(|o| !o.changed.is_empty()));
                if let Some(secret) = pull_secret
                    && switches
                    && who.kind != Kind::Pod
                    && secrets_checked.insert(&who.namespace)
                {
                    writer.check_pull_secret(&who.namespace, secret).await;
                }
                let written = writer.write(object, decide).await;
                tally.add(who, written, if writer.dry_run { "would switch" } else { "switched" });
            }
        }
    }
    tally
}

/// Reverts every object with a record.
async fn revert_all(writer: &Writer, objects: &[Object]) -> Tally {
    let mut tally = Tally::default();
    for object in objects
        .iter()
        .filter(|o| failover::pod_spec_pointer(o.who.kind).is_some())
    {
        let who = &object.who;
        let written = writer.write(object, |value| failover::revert(value, who)).await;
        tally.add(who, written, if writer.dry_run { "would restore" } else { "restored" });
    }
    tally
}

/// Writes objects back, or only says what it would write (`--dry-run`).
struct Writer {
    client: kube::Client,
    dry_run: bool,
}

impl Writer {
    /// Warns when the pull secret the switched templates name is not in `namespace` (the kubelet
    /// then pulls without it) or cannot be looked at. Only its metadata is read.
    async fn check_pull_secret(&self, namespace: &str, name: &str) {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), namespace);
        match secrets.get_metadata_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => println!(
                "warning: Secret {name} is not in namespace {namespace}: its Pods pull from the mirror without it"
            ),
            Err(e) => println!("warning: cannot check Secret {name} in namespace {namespace}: {e}"),
        }
    }

    /// Decides `object` and writes the outcome, with the `resourceVersion` it was read at as the
    /// precondition; on a conflict (409) reads it again, decides again and retries, at most
    /// [`MAX_ATTEMPTS`] writes. `None` when `decide` has nothing to do with it.
    async fn write(
        &self,
        object: &Object,
        decide: impl Fn(&Value) -> Result<Option<Outcome>, FailoverError>,
    ) -> Result<Option<Outcome>, FailoverError> {
        let who = &object.who;
        let ar = resource(who.kind);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &who.namespace, &ar);
        let api_error = |verb: &'static str| {
            move |source: kube::Error| FailoverError::Api {
                object: who.clone(),
                verb,
                source: Box::new(source),
            }
        };
        let mut read = object.value.clone();
        for _ in 0..MAX_ATTEMPTS {
            let Some(outcome) = decide(&read)? else {
                return Ok(None);
            };
            if self.dry_run || !outcome.writes(&read) {
                return Ok(Some(outcome));
            }
            let body: DynamicObject = serde_json::from_value(outcome.object.clone())
                .map_err(|e| api_error("update")(kube::Error::SerdeError(e)))?;
            match api.replace(&who.name, &PostParams::default(), &body).await {
                Ok(_) => return Ok(Some(outcome)),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(object = %who, "changed since it was read; reading it again");
                    match api.get_opt(&who.name).await.map_err(api_error("get"))? {
                        Some(fresh) => read = json_of(fresh, &ar),
                        None => return Err(FailoverError::Gone { object: who.clone() }),
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    return Err(FailoverError::Gone { object: who.clone() });
                }
                Err(e) => return Err(api_error("update")(e)),
            }
        }
        Err(FailoverError::Conflicts {
            object: who.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

/// What a run did, printed as it goes.
#[derive(Debug, Default)]
struct Tally {
    objects: usize,
    containers: usize,
    left: usize,
    not_patched: usize,
    errors: usize,
}

impl Tally {
    /// Prints and counts one object's outcome; `done` says what happened to changed containers.
    fn add(&mut self, who: &Workload, written: Result<Option<Outcome>, FailoverError>, done: &str) {
        let outcome = match written {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return,
            Err(e) => return self.error(&e),
        };
        for c in &outcome.changed {
            println!("{done} {who}: container {}: {} → {}", c.container, c.from, c.to);
        }
        for l in &outcome.left {
            let image = if l.image.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.image)
            };
            println!("left {who}: container {}{image}: {}", l.container, l.reason);
        }
        for note in &outcome.notes {
            println!("note {who}: {note}");
        }
        self.objects += usize::from(!outcome.changed.is_empty());
        self.containers += outcome.changed.len();
        self.left += outcome.left.len();
    }

    fn error(&mut self, e: &FailoverError) {
        println!("error {e}");
        self.errors += 1;
    }

    /// Whether everything in scope was done.
    fn complete(&self) -> bool {
        self.left + self.not_patched + self.errors == 0
    }

    fn summary(&self, revert: bool, dry_run: bool) -> String {
        let done = match (revert, dry_run) {
            (false, false) => "switched to the mirror",
            (false, true) => "would be switched to the mirror (dry run: nothing was written)",
            (true, false) => "restored",
            (true, true) => "would be restored (dry run: nothing was written)",
        };
        let left = match self.left {
            1 => "1 container left as it is".to_owned(),
            n => format!("{n} containers left as they are"),
        };
        format!(
            "failover: {} in {} {done}; {left}, {} not patched, {}",
            count(self.containers, "container"),
            count(self.objects, "object"),
            count(self.not_patched, "object"),
            count(self.errors, "error"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: Kind, name: &str, owner: Option<&str>, phase: Option<&str>) -> Object {
        let mut value = json!({"metadata": {"name": name, "namespace": "shop"}});
        if let Some(owner) = owner {
            let (kind, name) = owner.split_once(' ').unwrap();
            value["metadata"]["ownerReferences"] = json!([{"kind": kind, "name": name, "controller": true}]);
        }
        if let Some(phase) = phase {
            value["status"] = json!({"phase": phase});
        }
        Object {
            who: Workload::new(kind, "shop", name),
            value,
        }
    }

    #[test]
    fn roles_follow_the_owners_discovery_resolved() {
        let owner = |kind: Kind, name: &str, top: (Kind, &str)| {
            ((kind, "shop".to_owned(), name.to_owned()), (top.0, top.1.to_owned()))
        };
        let cluster = Cluster {
            owners: HashMap::from([
                owner(Kind::Pod, "web-1-a", (Kind::Deployment, "web")),
                owner(Kind::Pod, "nightly-1-a", (Kind::CronJob, "nightly")),
                owner(Kind::Job, "nightly-1", (Kind::CronJob, "nightly")),
                owner(Kind::Pod, "once-a", (Kind::Job, "once")),
            ]),
            running: HashMap::new(),
        };
        let report = |why: &str, workload: &str| Role::Report {
            why: why.to_owned(),
            workload: workload.to_owned(),
            left: true,
        };
        let follows = |owner: &str, workload: &str| Role::Report {
            why: format!("owned by {owner}, which failover switches; it keeps its images until it is replaced"),
            workload: workload.to_owned(),
            left: false,
        };
        let cases = [
            (object(Kind::Deployment, "web", None, None), Role::Patch),
            (object(Kind::CronJob, "nightly", None, None), Role::Patch),
            (object(Kind::Pod, "debug", None, Some("Running")), Role::Patch),
            (object(Kind::Pod, "done", None, Some("Succeeded")), Role::Idle),
            (
                object(Kind::Pod, "web-1-a", Some("ReplicaSet web-1"), None),
                follows("Deployment shop/web", "web"),
            ),
            (
                object(Kind::Pod, "nightly-1-a", Some("Job nightly-1"), None),
                follows("CronJob shop/nightly", "nightly"),
            ),
            (
                object(Kind::Job, "nightly-1", Some("CronJob nightly"), None),
                follows("CronJob shop/nightly", "nightly"),
            ),
            (
                object(Kind::Job, "once", None, None),
                report("a Job's Pod template cannot change", "once"),
            ),
            (
                object(Kind::Pod, "once-a", Some("Job once"), None),
                report("owned by Job once, which failover does not switch", "once"),
            ),
            (
                object(Kind::Pod, "x-a", Some("Rollout x"), None),
                report("owned by Rollout x, which failover does not switch", "x-a"),
            ),
        ];
        for (object, want) in cases {
            assert_eq!(cluster.role(&object), want, "{}", object.who);
        }
    }

    #[test]
    fn the_digest_is_the_one_the_workloads_pods_run() {
        let d = |n: u8| Digest::sha256_hex(&format!("{n:02x}").repeat(32)).unwrap();
        let run = |kind: Kind, name: &str, digests: &[Digest]| {
            let key = (
                "shop".to_owned(),
                kind,
                name.to_owned(),
                "c".to_owned(),
                "nginx:1".to_owned(),
            );
            (key, digests.iter().cloned().collect::<BTreeSet<_>>())
        };
        let cluster = Cluster {
            owners: HashMap::from([(
                (Kind::Pod, "shop".to_owned(), "web-1-a".to_owned()),
                (Kind::Deployment, "web".to_owned()),
            )]),
            running: HashMap::from([
                run(Kind::Deployment, "web", &[d(1)]),
                run(Kind::StatefulSet, "db", &[d(1), d(2)]),
            ]),
        };
        let digest = |kind: Kind, name: &str| cluster.digest(&Workload::new(kind, "shop", name), "c", "nginx:1");
        assert_eq!(digest(Kind::Deployment, "web"), Ok(Some(d(1))));
        assert_eq!(digest(Kind::Pod, "web-1-a"), Ok(Some(d(1))), "a Pod's workload");
        assert_eq!(digest(Kind::DaemonSet, "agent"), Ok(None), "no Pod runs it");
        let several = digest(Kind::StatefulSet, "db").unwrap_err();
        assert_eq!(several, SeveralDigests(vec![d(1), d(2)]));
        assert!(
            several.to_string().starts_with("its Pods run 2 digests (sha256:0101"),
            "{several}"
        );
    }

    #[test]
    fn only_verified_backups_are_used_pinned_to_the_digest_the_target_holds() {
        use crate::copy::CopyRequest;
        const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let row = |state: BackupState, side: Option<&'static str>| ImageCoverage {
            image: "nginx:1".into(),
            target: "m.io/library/nginx:1".into(),
            state,
            detail: "why".into(),
            expected: None,
            expected_from: None,
            side,
            users: vec![],
            declared_by: vec![],
        };
        let whole = |target: &str, tag: Option<&str>| WholeTarget {
            request: CopyRequest {
                source: ImageRef::parse("nginx:1").unwrap(),
                target: ImageRef::parse(target).unwrap(),
                target_tag: tag.map(str::to_owned),
            },
            digest: Digest::parse(D).unwrap(),
        };
        let tagged = whole("m.io:5000/library/nginx", Some("1"));
        let by_digest = whole("m.io/library/nginx", None);
        let cases = [
            (
                row(BackupState::Verified, None),
                Some(&tagged),
                Choice::Mirror(format!("m.io:5000/library/nginx:1@{D}")),
            ),
            (
                row(BackupState::Verified, None),
                Some(&by_digest),
                Choice::Mirror(format!("m.io/library/nginx@{D}")),
            ),
            (
                row(BackupState::Missing, None),
                None,
                Choice::Leave("backup missing: why".into()),
            ),
            (
                row(BackupState::Mismatch, None),
                None,
                Choice::Leave("backup mismatch: why".into()),
            ),
            (
                row(BackupState::Failed, Some("target")),
                None,
                Choice::Leave("backup failed: why".into()),
            ),
        ];
        for (row, whole, want) in cases {
            assert_eq!(choice_of(&row, whole), want, "{:?}", row.state);
        }
        let Choice::Leave(reason) = choice_of(&row(BackupState::Failed, Some("source")), None) else {
            panic!("a failed check is no mirror")
        };
        assert!(
            reason.starts_with("backup not checked: the check needs the source registry"),
            "{reason}"
        );
    }
}
