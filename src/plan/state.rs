//! The plan kept up to date as objects change. Each object's part of the plan (its tasks, excluded
//! and invalid images) is kept by target, so that an added, changed or removed object costs the
//! planning of its own images and the merge of the targets it names, not a walk over the cluster.
//! Pure logic: the daemon hands it the inventory's changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::copy::PullSecret;
use crate::discovery::extract::OwnerKind;
use crate::discovery::inventory::{Changes, Entry, Inventory, ObjectKey};
use crate::platform::Platform;
use crate::workload::{Kind, Workload};

use super::{
    ExcludedImage, InvalidImage, MirrorTask, ObjectPlan, Plan, Planned, Planner, TargetConflict, union, union_users,
};

/// How a pass brought the plan up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Every target merged again (the first pass with every watcher listed, a rescan, or a change
    /// every object may depend on: a Node's platform, a pull secret).
    Full,
    /// Only what changed.
    Incremental,
}

impl Pass {
    /// `full` or `incremental`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Full => "full",
            Pass::Incremental => "incremental",
        }
    }
}

/// An owner an object's workload is resolved through: (namespace, ReplicaSet or Job, name).
type OwnerRef = (String, OwnerKind, String);

/// One use of a target: the task (shared by the uses doing the same work) and the pull-secret
/// credentials of its object.
type TaskUse = (Arc<MirrorTask>, Vec<PullSecret>);

// Memory: a large cluster has one record per Pod, so they are kept small: slices instead of
// growable vectors, the namespace not repeated, the workload shared by all of its Pods.

/// The plan of an inventory, kept up to date by [`PlanState::replan`].
#[derive(Debug, Default)]
pub struct PlanState {
    /// What each planned object contributes where.
    objects: HashMap<Arc<ObjectKey>, ObjectRecord>,
    /// Per target: every object's uses of it and the merged task.
    targets: BTreeMap<Arc<str>, TargetUses>,
    /// Per excluded source reference: the rule and every object using it.
    excluded: BTreeMap<String, ExcludedUses>,
    /// Invalid image uses, by object.
    invalid: BTreeMap<Arc<ObjectKey>, Vec<(Workload, String, InvalidImage)>>,
    /// Objects whose workload is resolved through a ReplicaSet or a Job, by that owner.
    dependents: HashMap<OwnerRef, BTreeSet<Arc<ObjectKey>>>,
    /// The workloads of the planned objects, shared by their objects' records.
    users: HashSet<Arc<Workload>>,
    /// Targets and excluded sources whose uses changed since they were last merged.
    dirty_targets: BTreeSet<Arc<str>>,
    dirty_excluded: BTreeSet<String>,
    /// Whether a pass has merged everything since every watcher listed.
    merged_listed: bool,
    /// Whether the plan ([`PlanState::plan`]) may differ from when [`PlanState::take_changed`] was
    /// last asked: an entry was merged or dropped, or invalid images came or went.
    changed: bool,
}

/// Where one object's plan went, to take it back when the object changes.
#[derive(Debug)]
struct ObjectRecord {
    user: Arc<Workload>,
    targets: Box<[Arc<str>]>,
    excluded: Box<[String]>,
    /// The ReplicaSet or Job (in the object's namespace) its workload is resolved through.
    owner: Option<(OwnerKind, Box<str>)>,
}

/// The uses of one target.
#[derive(Debug, Default)]
struct TargetUses {
    /// By object, in object order (the order the plan merges them in).
    by_object: BTreeMap<Arc<ObjectKey>, ObjectUses>,
    /// The distinct tasks (without users and credentials) of the uses, shared between them.
    works: Vec<Arc<MirrorTask>>,
    /// The task that keeps the target and the conflicts of the others, as last merged.
    merged: Option<(MirrorTask, Vec<TargetConflict>)>,
}

/// One object's uses of one target.
#[derive(Debug)]
struct ObjectUses {
    user: Arc<Workload>,
    /// Creation time (unknown: last): the oldest use keeps a target two sources name.
    created: i64,
    /// Each use's task and pull-secret credentials, in the object's image order.
    uses: Box<[TaskUse]>,
}

/// The uses of one excluded source.
#[derive(Debug)]
struct ExcludedUses {
    rule: String,
    users: BTreeMap<Arc<ObjectKey>, Arc<Workload>>,
    merged: Option<ExcludedImage>,
}

impl PlanState {
    /// An empty plan.
    pub fn new() -> PlanState {
        PlanState::default()
    }

    /// Brings the plan up to date with `inventory`: re-plans the objects changed since the last
    /// pass (all of them when `rescan`, or when something every object may depend on changed) and
    /// merges the targets they touched. While not every watcher has `listed`, targets that already
    /// have a task are merged again only once every watcher has: the first pass after that merges
    /// every target (mirror work starts early without walking the objects again and again).
    pub fn replan(&mut self, planner: &Planner, inventory: &mut Inventory, listed: bool, rescan: bool) -> Pass {
        let changes = inventory.take_changes();
        if rescan || changes.everything {
            self.rebuild(planner, inventory);
            self.merged_listed = listed;
            return Pass::Full;
        }
        self.apply(planner, inventory, changes);
        if !listed {
            self.merge(true);
            return Pass::Incremental;
        }
        if self.merged_listed {
            self.merge(false);
            return Pass::Incremental;
        }
        self.merged_listed = true;
        self.merge(false);
        Pass::Full
    }

    /// Plans every object of `inventory` from scratch.
    pub fn rebuild(&mut self, planner: &Planner, inventory: &Inventory) {
        *self = PlanState {
            merged_listed: self.merged_listed,
            changed: true,
            ..PlanState::default()
        };
        for (key, entry) in inventory.objects() {
            self.add(planner, inventory, key, entry);
        }
        self.merge(false);
    }

    /// Re-plans the objects `changes` name, and those whose workload is resolved through a changed
    /// ReplicaSet or Job.
    fn apply(&mut self, planner: &Planner, inventory: &Inventory, changes: Changes) {
        let mut keys: BTreeSet<ObjectKey> = BTreeSet::new();
        let through = |owner: OwnerRef| self.dependents.get(&owner).into_iter().flatten();
        for (namespace, name) in changes.replica_sets {
            keys.extend(through((namespace, OwnerKind::ReplicaSet, name)).map(|k| (**k).clone()));
        }
        for key in changes.objects {
            if key.kind == Kind::Job {
                let owner = (key.namespace.clone(), OwnerKind::Workload(Kind::Job), key.name.clone());
                keys.extend(through(owner).map(|k| (**k).clone()));
            }
            keys.insert(key);
        }
        for key in keys {
            self.remove(&key);
            if let Some(entry) = inventory.get(&key) {
                self.add(planner, inventory, &key, entry);
            }
        }
    }

    /// Adds the plan of one object (not planned yet).
    fn add(&mut self, planner: &Planner, inventory: &Inventory, key: &ObjectKey, entry: &Entry) {
        let Some(ObjectPlan {
            user,
            created,
            owner,
            uses,
        }) = planner.object(inventory, key, entry)
        else {
            return;
        };
        let key = Arc::new(key.clone());
        let user = match self.users.get(&user) {
            Some(shared) => shared.clone(),
            None => {
                let user = Arc::new(user);
                self.users.insert(user.clone());
                user
            }
        };
        let owner = owner.map(|o| (o.kind, o.name.into_boxed_str()));
        if let Some((kind, name)) = &owner {
            let owner = (key.namespace.clone(), *kind, name.to_string());
            self.dependents.entry(owner).or_default().insert(key.clone());
        }
        // This object's uses by target, in image order.
        let mut by_target: Vec<(Arc<str>, Vec<TaskUse>)> = Vec::new();
        let mut excluded: Vec<String> = Vec::new();
        for (image, planned) in uses {
            match planned {
                Ok(Planned::Task(mut task)) => {
                    let credentials = std::mem::take(&mut task.source_credentials);
                    let target = task.key();
                    let target = match self.targets.get_key_value(target.as_str()) {
                        Some((name, _)) => name.clone(),
                        None => Arc::from(target.as_str()),
                    };
                    let work = self.targets.entry(target.clone()).or_default().share(*task);
                    match by_target.iter_mut().find(|(t, _)| *t == target) {
                        Some((_, uses)) => uses.push((work, credentials)),
                        None => by_target.push((target, vec![(work, credentials)])),
                    }
                }
                Ok(Planned::Excluded { source, rule }) => {
                    let source = source.to_string();
                    let uses = self.excluded.entry(source.clone()).or_insert_with(|| ExcludedUses {
                        rule,
                        users: BTreeMap::new(),
                        merged: None,
                    });
                    uses.users.insert(key.clone(), user.clone());
                    if !excluded.contains(&source) {
                        self.dirty_excluded.insert(source.clone());
                        excluded.push(source);
                    }
                }
                Err(e) => {
                    self.changed = true;
                    self.invalid
                        .entry(key.clone())
                        .or_default()
                        .push(((*user).clone(), image, e));
                }
            }
        }
        let mut targets = Vec::with_capacity(by_target.len());
        for (target, uses) in by_target {
            let object = ObjectUses {
                user: user.clone(),
                created,
                uses: uses.into_boxed_slice(),
            };
            let target_uses = self.targets.get_mut(&target).expect("added above");
            target_uses.by_object.insert(key.clone(), object);
            self.dirty_targets.insert(target.clone());
            targets.push(target);
        }
        let record = ObjectRecord {
            user,
            targets: targets.into_boxed_slice(),
            excluded: excluded.into_boxed_slice(),
            owner,
        };
        self.objects.insert(key, record);
    }

    /// Takes back the plan of one object, if it has one.
    fn remove(&mut self, key: &ObjectKey) {
        let Some(record) = self.objects.remove(key) else {
            return;
        };
        for target in record.targets {
            if let Some(uses) = self.targets.get_mut(&target) {
                uses.by_object.remove(key);
            }
            self.dirty_targets.insert(target);
        }
        for source in record.excluded {
            if let Some(uses) = self.excluded.get_mut(&source) {
                uses.users.remove(key);
            }
            self.dirty_excluded.insert(source);
        }
        self.changed |= self.invalid.remove(key).is_some();
        if let Some((kind, name)) = record.owner {
            let owner = (key.namespace.clone(), kind, name.into_string());
            if let Some(dependents) = self.dependents.get_mut(&owner) {
                dependents.remove(key);
                if dependents.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
        // The record and the set hold the last references: no other object has this workload.
        if Arc::strong_count(&record.user) == 2 {
            self.users.remove(&record.user);
        }
    }

    /// Merges the targets and excluded sources whose uses changed; with `new_only`, only those not
    /// merged before (and drops those no longer used), the others stay due.
    fn merge(&mut self, new_only: bool) {
        let dirty = std::mem::take(&mut self.dirty_targets);
        self.dirty_targets = merge_due(&mut self.targets, dirty, new_only, &mut self.changed);
        let dirty = std::mem::take(&mut self.dirty_excluded);
        self.dirty_excluded = merge_due(&mut self.excluded, dirty, new_only, &mut self.changed);
    }

    /// Whether the plan may have changed since the last call (or since it was made): when not, a
    /// pass has nothing new to hand on.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The plan as last merged: tasks and conflicts by target, excluded images by source, invalid
    /// images by object.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for (task, conflicts) in self.targets.values().filter_map(|t| t.merged.as_ref()) {
            plan.tasks.push(task.clone());
            plan.conflicts.extend(conflicts.iter().cloned());
        }
        plan.excluded = self.excluded.values().filter_map(|e| e.merged.clone()).collect();
        plan.invalid = self.invalid.values().flatten().cloned().collect();
        plan
    }
}

/// What uses of one target or excluded source are kept as: merged into the plan's entry when due.
trait Uses {
    /// Whether nothing uses it any more.
    fn unused(&self) -> bool;
    /// Whether it has been merged before.
    fn merged(&self) -> bool;
    /// Merges the uses of `name` into its plan entry.
    fn merge(&mut self, name: &str);
}

/// Merges the `dirty` entries of `map` that are due (with `new_only`, those never merged), drops
/// those no longer used, and sets `changed` if it did either; returns those left due.
fn merge_due<K, V>(map: &mut BTreeMap<K, V>, dirty: BTreeSet<K>, new_only: bool, changed: &mut bool) -> BTreeSet<K>
where
    K: Ord + std::borrow::Borrow<str>,
    V: Uses,
{
    let mut pending = BTreeSet::new();
    for name in dirty {
        let key: &str = name.borrow();
        let Some(uses) = map.get_mut(key) else {
            continue;
        };
        if uses.unused() {
            *changed |= uses.merged();
            map.remove(key);
        } else if !new_only || !uses.merged() {
            *changed = true;
            uses.merge(key);
        } else {
            pending.insert(name);
        }
    }
    pending
}

impl Uses for ExcludedUses {
    fn unused(&self) -> bool {
        self.users.is_empty()
    }

    fn merged(&self) -> bool {
        self.merged.is_some()
    }

    fn merge(&mut self, source: &str) {
        let mut image = ExcludedImage {
            source: source.to_owned(),
            rule: self.rule.clone(),
            users: vec![],
        };
        for user in self.users.values() {
            add_user(&mut image.users, user);
        }
        self.merged = Some(image);
    }
}

impl Uses for TargetUses {
    fn unused(&self) -> bool {
        self.by_object.is_empty()
    }

    fn merged(&self) -> bool {
        self.merged.is_some()
    }

    fn merge(&mut self, _target: &str) {
        self.merge_claims();
    }
}

impl TargetUses {
    /// The shared copy of `task`'s work: an existing one doing the same, or `task` itself.
    fn share(&mut self, task: MirrorTask) -> Arc<MirrorTask> {
        let same = |w: &MirrorTask| {
            w.request.source == task.request.source
                && w.request.target == task.request.target
                && w.request.target_tag == task.request.target_tag
                && w.platforms == task.platforms
                && w.arch_naming.is_none()
                && task.arch_naming.is_none()
        };
        if let Some(work) = self.works.iter().find(|w| same(w)) {
            return work.clone();
        }
        let work = Arc::new(task);
        self.works.push(work.clone());
        work
    }

    /// Merges the uses into the task that keeps the target, in object order: one claim per source
    /// repository (tags of tagged sources only: a target by digest, or by the anchor tag of a
    /// digest-only source, holds the same content whatever the source). A claim's last use gives
    /// the request; platforms and users are unioned (Pods of one image on nodes of different
    /// platforms share the tag: every platform they need is mirrored), every user's pull secrets
    /// are tried in order. The claim used first (oldest creation, then object order) keeps the
    /// target, the others are conflicts: the same on every plan and every replica.
    fn merge_claims(&mut self) {
        self.works.retain(|w| Arc::strong_count(w) > 1);
        let mut claims: Vec<Claim<'_>> = Vec::new();
        for (key, object) in &self.by_object {
            for (work, credentials) in &object.uses {
                let found = claims.iter().position(|c| Arc::ptr_eq(c.last, work)).or_else(|| {
                    let repository = repository(work);
                    claims.iter().position(|c| c.repository == repository)
                });
                let Some(i) = found else {
                    claims.push(Claim {
                        repository: repository(work),
                        last: work,
                        platforms: work.platforms.clone(),
                        users: vec![(*object.user).clone()],
                        credentials: vec![],
                        first: (object.created, key),
                    });
                    let claim = claims.last_mut().expect("just pushed");
                    add_credentials(&mut claim.credentials, credentials);
                    continue;
                };
                let claim = &mut claims[i];
                claim.last = work;
                if !work.platforms.iter().all(|p| claim.platforms.contains(p)) {
                    claim.platforms = union(&claim.platforms, &work.platforms);
                }
                add_user(&mut claim.users, &object.user);
                add_credentials(&mut claim.credentials, credentials);
                claim.first = claim.first.min((object.created, key));
            }
        }
        claims.sort_by(|a, b| a.first.cmp(&b.first));
        let mut claims = claims.into_iter().map(Claim::into_task);
        let Some(kept) = claims.next() else {
            self.merged = None;
            return;
        };
        let conflicts = claims
            .map(|other| TargetConflict {
                target: kept.key().to_string(),
                source: other.request.source.to_string(),
                kept: kept.request.source.to_string(),
                users: other.users,
            })
            .collect();
        self.merged = Some((kept, conflicts));
    }
}

/// The uses of one target from one source repository, merged.
struct Claim<'a> {
    repository: Option<String>,
    /// The last use's task: its request wins.
    last: &'a Arc<MirrorTask>,
    platforms: Vec<Platform>,
    users: Vec<Workload>,
    credentials: Vec<PullSecret>,
    /// The oldest use: creation time, then object.
    first: (i64, &'a Arc<ObjectKey>),
}

impl Claim<'_> {
    fn into_task(self) -> MirrorTask {
        MirrorTask {
            platforms: self.platforms,
            users: self.users,
            source_credentials: self.credentials,
            ..(**self.last).clone()
        }
    }
}

/// The source repository a task claims its target for (`None`: the target holds the same content
/// whatever the source).
fn repository(task: &MirrorTask) -> Option<String> {
    let request = &task.request;
    (request.target_tag.is_some() && request.source.tag().is_some()).then(|| request.source.name())
}

/// [`union_users`] of one user, cloning it only when it is new.
fn add_user(users: &mut Vec<Workload>, user: &Workload) {
    if !users.contains(user) {
        union_users(users, [user.clone()]);
    }
}

/// Adds the credentials not tried yet (the same credentials from another Secret are not tried twice).
fn add_credentials(to: &mut Vec<PullSecret>, credentials: &[PullSecret]) {
    for c in credentials {
        if !to.iter().any(|s| s.credential == c.credential) {
            to.push(c.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Purpose};
    use crate::discovery::extract::{ContainerImage, Owner};
    use crate::discovery::inventory::{Feed, PullRefs, Seen, Update, Watched};
    use crate::reference::Digest;

    /// A small deterministic generator (xorshift): the sequences are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const NAMESPACES: [&str; 3] = ["a", "b", "kube-system"];
    /// Tags, digests, a second registry naming the same targets (conflicts without `$registry`),
    /// excluded registries, invalid strings, `latest` (tag mode under `digestPull`).
    const IMAGES: [&str; 9] = [
        "nginx:1",
        "nginx:2",
        "ghcr.io/library/nginx:1",
        "quay.io/org/tool:3",
        "redis",
        "mirror.example.com/m/x:1",
        "Not:Valid",
        "ghcr.io/org/app:5",
        "docker.io/org/app:5",
    ];
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn images(rng: &mut Rng) -> Vec<ContainerImage> {
        (0..rng.below(3))
            .map(|i| ContainerImage {
                image: (*rng.pick(&IMAGES)).to_owned(),
                container: format!("c{}", rng.below(2) + i),
                pod_digest: (rng.below(2) == 0).then(|| Digest::parse(DIGEST).unwrap()),
            })
            .collect()
    }

    fn owner(kind: OwnerKind, name: String) -> Option<Owner> {
        Some(Owner { kind, name })
    }

    fn auths(user: &str) -> crate::registry::DockerAuths {
        let json = format!(r#"{{"auths": {{"docker.io": {{"username": "{user}", "password": "pw"}}}}}}"#);
        crate::registry::parse_docker_config_json(json.as_bytes()).unwrap()
    }

    /// One random change of a small cluster: workloads, ReplicaSets, Pods, Jobs, Nodes, pull
    /// secrets, ServiceAccounts, deletions and relists.
    fn update(rng: &mut Rng) -> Vec<Update> {
        let namespace = (*rng.pick(&NAMESPACES)).to_owned();
        let seen = |rng: &mut Rng, prefix: &str, names: usize, owner: Option<Owner>| Seen {
            namespace: namespace.clone(),
            name: format!("{prefix}{}", rng.below(names)),
            images: images(rng),
            owner,
            node: Some(format!("n{}", rng.below(3))),
            pull: PullRefs {
                secrets: (0..rng.below(2)).map(|i| format!("s{i}")).collect(),
                service_account: None,
            },
            created: Some(rng.below(4) as i64),
            ..Seen::default()
        };
        let pod_owner = |rng: &mut Rng| match rng.below(3) {
            0 => owner(OwnerKind::ReplicaSet, format!("web-r{}", rng.below(3))),
            1 => owner(OwnerKind::Workload(Kind::Job), format!("j{}", rng.below(2))),
            _ => None,
        };
        match rng.below(14) {
            0..=4 => {
                let owner = pod_owner(rng);
                let pod = seen(rng, "p", 8, owner);
                vec![Update::Apply(Watched::Workload(Kind::Pod), pod)]
            }
            5 => vec![Update::Delete(Watched::Workload(Kind::Pod), seen(rng, "p", 8, None))],
            6 => {
                let owner = owner(OwnerKind::Workload(Kind::Deployment), format!("web{}", rng.below(2)));
                let mut rs = seen(rng, "web-r", 3, owner);
                rs.images.clear();
                match rng.below(3) {
                    0 => vec![Update::Delete(Watched::ReplicaSet, rs)],
                    _ => vec![Update::Apply(Watched::ReplicaSet, rs)],
                }
            }
            7 => {
                let owner = (rng.below(2) == 0).then(|| Owner {
                    kind: OwnerKind::Workload(Kind::CronJob),
                    name: "nightly".into(),
                });
                let job = seen(rng, "j", 2, owner);
                match rng.below(3) {
                    0 => vec![Update::Delete(Watched::Workload(Kind::Job), job)],
                    _ => vec![Update::Apply(Watched::Workload(Kind::Job), job)],
                }
            }
            8 => {
                let kind = *rng.pick(&[Kind::Deployment, Kind::StatefulSet, Kind::CronJob]);
                let object = seen(rng, "web", 2, None);
                match rng.below(4) {
                    0 => vec![Update::Delete(Watched::Workload(kind), object)],
                    _ => vec![Update::Apply(Watched::Workload(kind), object)],
                }
            }
            9 => {
                let platform = rng.pick(&[None, Some("amd64"), Some("arm64")]);
                let node = Seen {
                    name: format!("n{}", rng.below(3)),
                    platform: platform.map(|p| crate::platform::Platform::parse(p).unwrap()),
                    ..Seen::default()
                };
                vec![Update::Apply(Watched::Node, node)]
            }
            10 => {
                let secret = Seen {
                    namespace,
                    name: format!("s{}", rng.below(2)),
                    auths: (rng.below(3) > 0).then(|| auths(&format!("u{}", rng.below(3)))),
                    ..Seen::default()
                };
                vec![Update::Apply(Watched::Secret, secret)]
            }
            11 => {
                let account = Seen {
                    namespace,
                    name: "default".into(),
                    pull: PullRefs {
                        secrets: vec![format!("s{}", rng.below(2))],
                        service_account: None,
                    },
                    ..Seen::default()
                };
                vec![Update::Apply(Watched::ServiceAccount, account)]
            }
            // A relist of the Pods that finds only some of them (the others vanished meanwhile).
            12 => {
                let feed = Feed::from(Watched::Workload(Kind::Pod));
                let mut relist = vec![Update::Init(feed.clone())];
                for _ in 0..rng.below(4) {
                    let owner = pod_owner(rng);
                    let pod = seen(rng, "p", 8, owner);
                    relist.push(Update::InitApply(feed.clone(), pod));
                }
                relist.push(Update::InitDone(feed));
                relist
            }
            _ => vec![],
        }
    }

    fn config(env: &[(&str, &str)]) -> Config {
        let mut all = vec![("TARGET_KIND", "docker"), ("TARGET_REGISTRY", "mirror.example.com")];
        all.extend_from_slice(env);
        crate::config::from_env(&all, Purpose::Daemon)
    }

    fn targets(plan: &Plan) -> Vec<String> {
        plan.tasks.iter().map(|t| t.key().to_string()).collect()
    }

    /// After every step of a bounded random sequence of changes, the plan kept up to date equals
    /// the plan made from scratch (once every watcher has listed; before, its targets do: tasks
    /// already planned wait for the full pass). Full passes happen only where something every
    /// object depends on changed, and once when the lists complete.
    #[test]
    fn the_plan_kept_up_to_date_equals_the_plan_made_from_scratch() {
        let configs = [
            vec![
                ("SKIP_NAMESPACES", "kube-system"),
                ("SKIP_DEPLOYMENTS", "web1"),
                ("SKIP_JOBS", "b/j1"),
                ("EXCLUDE_REGISTRIES", "quay.io"),
                ("TARGET_REPO_PREFIX", "m/$namespace/$podname"),
            ],
            vec![
                ("DIGEST_PULL", "true"),
                ("CHECK_NODE_PLATFORM", "true"),
                ("MIRROR_PLATFORMS", "linux/arm64"),
                ("SKIP_CRONJOBS", "nightly"),
            ],
            vec![("USE_IMAGE_PULL_SECRETS", "true"), ("DIGEST_PULL", "true")],
            vec![
                ("DIGEST_PULL", "true"),
                ("DIGEST_TAG_TEMPLATE", "none"),
                ("TARGET_REPO_PREFIX", "$arch/$container_name"),
            ],
        ];
        for (c, env) in configs.iter().enumerate() {
            let planner = Planner::new(&config(env), "mirror.example.com").unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + c as u64);
            let mut inventory = Inventory::new();
            let mut state = PlanState::new();
            let mut full = 0;
            let mut everything = 0;
            let mut unchanged = 0;
            let mut previous = format!("{:?}", state.plan());
            for step in 0..600 {
                let listed = step >= 150;
                // A rescan now and then, as `/force-reconcile` asks.
                let rescan = step % 97 == 96;
                let mut shared = rescan;
                for u in update(&mut rng) {
                    shared |= matches!(
                        u,
                        Update::Apply(Watched::Node | Watched::Secret | Watched::ServiceAccount, _)
                    );
                    inventory.apply(u);
                }
                everything += usize::from(shared);
                let pass = state.replan(&planner, &mut inventory, listed, rescan);
                full += usize::from(pass == Pass::Full);
                let scratch = planner.plan(&inventory);
                let kept = state.plan();
                // A pass that says nothing changed has nothing new to hand on: the same plan.
                let now = format!("{kept:?}");
                if !state.take_changed() {
                    unchanged += 1;
                    assert_eq!(now, previous, "config {c}, step {step}: changed but not said");
                }
                previous = now;
                if listed {
                    assert_eq!(format!("{kept:?}"), format!("{scratch:?}"), "config {c}, step {step}");
                } else {
                    assert_eq!(targets(&kept), targets(&scratch), "config {c}, step {step}");
                }
                if step == 150 {
                    assert_eq!(
                        pass,
                        Pass::Full,
                        "the first pass with every watcher listed merges everything"
                    );
                }
            }
            assert!(
                full <= everything + 1,
                "config {c}: {full} full passes, {everything} due to changes or rescans"
            );
            assert!(
                !targets(&state.plan()).is_empty(),
                "config {c}: the sequence plans something"
            );
            assert!(unchanged > 0, "config {c}: some passes change nothing");
        }
    }
}
