//! What the cluster currently uses, kept compactly: per object, only its image uses and its owner.
//! Watch events update it; a relist (`Init` … `InitDone`) removes objects that vanished meanwhile.

use std::collections::{HashMap, HashSet};

use crate::platform::Platform;

use super::extract::{ContainerImage, Owner, OwnerKind};
use super::pull_failures::PullFailure;
use crate::copy::PullSecret;
use crate::registry::DockerAuths;
use crate::workload::Kind;

/// What copycat watches: the workload kinds, plus ReplicaSets (to resolve a Pod's Deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watched {
    /// A workload kind whose images are mirrored.
    Workload(Kind),
    /// ReplicaSets, for owner chains only.
    ReplicaSet,
    /// Nodes, for the platform a Pod runs on (`checkNodePlatform`).
    Node,
    /// Pull secrets (`useImagePullSecrets`): only their registry credentials are kept.
    Secret,
    /// ServiceAccounts, for the pull secrets they give their Pods (`useImagePullSecrets`).
    ServiceAccount,
}

impl Watched {
    /// Whether readiness waits for it: not for the pull-secret watches (`useImagePullSecrets`), which
    /// the shipped RBAC does not grant; a refused one is reported by `/readyz` and in the log instead.
    pub fn readiness_waits(self) -> bool {
        !matches!(self, Watched::Secret | Watched::ServiceAccount)
    }

    /// The Kubernetes kind, e.g. `Deployment`.
    pub fn kind_name(self) -> &'static str {
        match self {
            Watched::Workload(kind) => kind.as_str(),
            Watched::ReplicaSet => "ReplicaSet",
            Watched::Node => "Node",
            Watched::Secret => "Secret",
            Watched::ServiceAccount => "ServiceAccount",
        }
    }
}

/// One watch: a kind, in every namespace or in one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Feed {
    /// What is watched.
    pub watched: Watched,
    /// The one namespace watched; `None`: every namespace (and cluster-scoped kinds).
    pub namespace: Option<String>,
}

impl Feed {
    /// How logs, `/readyz` and errors name the watch: `Deployment cluster-wide`,
    /// `Pod in namespace shop`.
    pub fn name(&self) -> String {
        format!("{}{}", self.watched.kind_name(), self.scope())
    }

    /// Where the watch looks, as it follows the kind: ` cluster-wide`, ` in namespace shop`.
    pub fn scope(&self) -> String {
        match &self.namespace {
            Some(ns) => format!(" in namespace {ns}"),
            None => " cluster-wide".to_owned(),
        }
    }
}

impl From<Watched> for Feed {
    /// `watched` in every namespace.
    fn from(watched: Watched) -> Feed {
        Feed {
            watched,
            namespace: None,
        }
    }
}

/// The pull secrets an object (or a ServiceAccount) names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullRefs {
    /// `imagePullSecrets` names, in order.
    pub secrets: Vec<String>,
    /// `serviceAccountName` of a Pod spec (`None`: the namespace's `default`).
    pub service_account: Option<String>,
}

/// One object's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Workload kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What an object contributes, extracted from a watch event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Images in use (empty for finished Pods).
    pub images: Vec<ContainerImage>,
    /// Controller, when the object has one copycat follows.
    pub owner: Option<Owner>,
    /// The Node a Pod runs on (`spec.nodeName`).
    pub node: Option<String>,
    /// The platform a Node reports.
    pub platform: Option<Platform>,
    /// Pull secrets named by a Pod spec, or given by a ServiceAccount.
    pub pull: PullRefs,
    /// Registry credentials of a pull secret (`None` for other objects and unusable secrets).
    pub auths: Option<DockerAuths>,
    /// `metadata.creationTimestamp`, in Unix seconds.
    pub created: Option<i64>,
    /// Containers of a Pod waiting for an image they failed to pull (for copy on the fly; the
    /// inventory does not keep them).
    pub pull_failures: Vec<PullFailure>,
}

/// A watch event, reduced to what the inventory needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A relist of a feed starts.
    Init(Feed),
    /// An object seen during a relist.
    InitApply(Feed, Seen),
    /// The relist is complete: objects of the feed not seen in it are gone.
    InitDone(Feed),
    /// An object was added or changed.
    Apply(Watched, Seen),
    /// An object was deleted.
    Delete(Watched, Seen),
}

/// An object's image uses and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Images in use.
    pub images: Vec<ContainerImage>,
    /// Controller, if any.
    pub owner: Option<Owner>,
    /// Node of a Pod.
    pub node: Option<String>,
    /// Pull secrets its Pod spec names.
    pub pull: PullRefs,
    /// When it was created (Unix seconds): which of two sources naming one target was used first.
    pub created: Option<i64>,
}

/// What changed in an [`Inventory`] since its changes were last taken: what planning must redo.
#[derive(Debug, Default)]
pub struct Changes {
    /// Workload objects added, changed or removed.
    pub objects: HashSet<ObjectKey>,
    /// ReplicaSets (namespace, name) whose Deployment changed, appeared or vanished: their Pods'
    /// workload may change.
    pub replica_sets: HashSet<(String, String)>,
    /// Something any object may depend on changed: a Node's platform, a pull secret or a
    /// ServiceAccount's pull secrets.
    pub everything: bool,
}

/// The current image uses of every watched object.
#[derive(Debug, Default)]
pub struct Inventory {
    objects: HashMap<ObjectKey, Entry>,
    /// (namespace, ReplicaSet) → Deployment.
    replica_sets: HashMap<(String, String), String>,
    /// Node → platform.
    nodes: HashMap<String, Platform>,
    /// (namespace, Secret) → registry credentials of a pull secret.
    secrets: HashMap<(String, String), DockerAuths>,
    /// (namespace, ServiceAccount) → its `imagePullSecrets`.
    service_accounts: HashMap<(String, String), Vec<String>>,
    /// Objects seen by an ongoing relist, per feed.
    relisting: HashMap<Feed, HashSet<(String, String)>>,
    synced: HashSet<Feed>,
    changes: Changes,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one update; returns whether any image use changed (a reason to plan again).
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Init(feed) => {
                self.relisting.insert(feed, HashSet::new());
                false
            }
            Update::InitApply(feed, seen) => {
                let w = feed.watched;
                self.relisting
                    .entry(feed)
                    .or_default()
                    .insert((seen.namespace.clone(), seen.name.clone()));
                self.upsert(w, seen)
            }
            Update::InitDone(feed) => {
                let seen = self.relisting.remove(&feed).unwrap_or_default();
                let (w, only) = (feed.watched, feed.namespace.clone());
                self.synced.insert(feed);
                // A namespace's relist says nothing about the other namespaces.
                self.retain(w, |ns, name| {
                    only.as_deref().is_some_and(|only| only != ns) || seen.contains(&(ns.to_owned(), name.to_owned()))
                })
            }
            Update::Apply(w, seen) => self.upsert(w, seen),
            Update::Delete(w, seen) => self.remove(w, &seen.namespace, &seen.name),
        }
    }

    /// What changed since the last call (everything applied so far, the first time).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    fn upsert(&mut self, w: Watched, seen: Seen) -> bool {
        let changed = self.upsert_entry(w, seen);
        if changed && matches!(w, Watched::Node | Watched::Secret | Watched::ServiceAccount) {
            self.changes.everything = true;
        }
        changed
    }

    fn upsert_entry(&mut self, w: Watched, seen: Seen) -> bool {
        match w {
            Watched::Node => match seen.platform {
                Some(p) => self.nodes.insert(seen.name, p.clone()).as_ref() != Some(&p),
                None => self.nodes.remove(&seen.name).is_some(),
            },
            Watched::Secret => upsert_or_remove(&mut self.secrets, (seen.namespace, seen.name), seen.auths),
            Watched::ServiceAccount => {
                let secrets = Some(seen.pull.secrets).filter(|s| !s.is_empty());
                upsert_or_remove(&mut self.service_accounts, (seen.namespace, seen.name), secrets)
            }
            Watched::ReplicaSet => {
                let key = (seen.namespace, seen.name);
                let changed = match seen.owner.filter(|o| o.kind == OwnerKind::Workload(Kind::Deployment)) {
                    Some(owner) => {
                        self.replica_sets.insert(key.clone(), owner.name.clone()).as_ref() != Some(&owner.name)
                    }
                    None => self.replica_sets.remove(&key).is_some(),
                };
                if changed {
                    self.changes.replica_sets.insert(key);
                }
                changed
            }
            Watched::Workload(kind) => {
                let key = ObjectKey {
                    kind,
                    namespace: seen.namespace,
                    name: seen.name,
                };
                let entry = Entry {
                    images: seen.images,
                    owner: seen.owner,
                    node: seen.node,
                    pull: seen.pull,
                    created: seen.created,
                };
                if self.objects.get(&key) == Some(&entry) {
                    return false;
                }
                // An owner change alone matters to skips and names, so it counts as a change too.
                self.changes.objects.insert(key.clone());
                self.objects.insert(key, entry);
                true
            }
        }
    }

    fn remove(&mut self, w: Watched, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        match w {
            Watched::Node => self.nodes.remove(name).is_some() && self.everything_changed(),
            Watched::Secret => self.secrets.remove(&key).is_some() && self.everything_changed(),
            Watched::ServiceAccount => self.service_accounts.remove(&key).is_some() && self.everything_changed(),
            Watched::ReplicaSet => {
                let removed = self.replica_sets.remove(&key).is_some();
                if removed {
                    self.changes.replica_sets.insert(key);
                }
                removed
            }
            Watched::Workload(kind) => {
                let (namespace, name) = key;
                let key = ObjectKey { kind, namespace, name };
                let removed = self.objects.remove(&key);
                if removed.is_some() {
                    self.changes.objects.insert(key);
                }
                removed.is_some_and(|e| !e.images.is_empty())
            }
        }
    }

    /// Records that everything may have to be planned again; `true`.
    fn everything_changed(&mut self) -> bool {
        self.changes.everything = true;
        true
    }

    fn retain(&mut self, w: Watched, keep: impl Fn(&str, &str) -> bool) -> bool {
        match w {
            Watched::Node => {
                let before = self.nodes.len();
                self.nodes.retain(|name, _| keep("", name));
                before != self.nodes.len() && self.everything_changed()
            }
            Watched::ReplicaSet => {
                let gone = retain_named(&mut self.replica_sets, keep);
                let changed = !gone.is_empty();
                self.changes.replica_sets.extend(gone);
                changed
            }
            Watched::Secret => !retain_named(&mut self.secrets, keep).is_empty() && self.everything_changed(),
            Watched::ServiceAccount => {
                !retain_named(&mut self.service_accounts, keep).is_empty() && self.everything_changed()
            }
            Watched::Workload(kind) => {
                let before = self.objects.len();
                let changed = &mut self.changes.objects;
                self.objects.retain(|k, _| {
                    let kept = k.kind != kind || keep(&k.namespace, &k.name);
                    if !kept {
                        changed.insert(k.clone());
                    }
                    kept
                });
                before != self.objects.len()
            }
        }
    }

    /// Credentials for source registry `host` from the pull secrets an object in `namespace` names,
    /// then from those of its ServiceAccount, in order, without duplicates, each with the Secret it
    /// comes from. Secrets that do not exist (yet) or hold nothing for `host` are passed over, as the
    /// kubelet does.
    pub fn pull_credentials(&self, namespace: &str, pull: &PullRefs, host: &str) -> Vec<PullSecret> {
        let account = pull.service_account.as_deref().unwrap_or("default");
        let from_account = self
            .service_accounts
            .get(&(namespace.to_owned(), account.to_owned()))
            .into_iter()
            .flatten();
        let mut out: Vec<PullSecret> = Vec::new();
        for name in pull.secrets.iter().chain(from_account) {
            let found = self
                .secrets
                .get(&(namespace.to_owned(), name.clone()))
                .and_then(|auths| auths.get(host));
            if let Some(c) = found
                && !out.iter().any(|s| s.credential == *c)
            {
                out.push(PullSecret {
                    name: format!("{namespace}/{name}"),
                    credential: c.clone(),
                });
            }
        }
        out
    }

    /// Whether the first list of `feed` has completed.
    pub fn is_synced(&self, feed: &Feed) -> bool {
        self.synced.contains(feed)
    }

    /// The platform of the Node an object runs on, when known.
    pub fn platform_of(&self, entry: &Entry) -> Option<&Platform> {
        self.nodes.get(entry.node.as_deref()?)
    }

    /// Every object with its entry.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.objects.iter()
    }

    /// The entry of one object, if it is known.
    pub fn get(&self, key: &ObjectKey) -> Option<&Entry> {
        self.objects.get(key)
    }

    /// The workload a Pod or Job belongs to, following ReplicaSet → Deployment and Job → CronJob; the
    /// object itself when it has no such owner. A ReplicaSet not (yet) known is resolved by its name
    /// (`<deployment>-<pod-template-hash>`), so a Pod never gets a name of its own by accident.
    pub fn workload_of(&self, key: &ObjectKey, entry: &Entry) -> (Kind, String) {
        let Some(owner) = &entry.owner else {
            return (key.kind, key.name.clone());
        };
        match owner.kind {
            OwnerKind::ReplicaSet => {
                let deployment = self
                    .replica_sets
                    .get(&(key.namespace.clone(), owner.name.clone()))
                    .cloned();
                let fallback = || {
                    owner
                        .name
                        .rsplit_once('-')
                        .map_or(owner.name.clone(), |(d, _)| d.to_owned())
                };
                (Kind::Deployment, deployment.unwrap_or_else(fallback))
            }
            OwnerKind::Workload(Kind::Job) => {
                let job = ObjectKey {
                    kind: Kind::Job,
                    namespace: key.namespace.clone(),
                    name: owner.name.clone(),
                };
                match self.objects.get(&job).and_then(|e| e.owner.as_ref()) {
                    Some(o) if o.kind == OwnerKind::Workload(Kind::CronJob) => (Kind::CronJob, o.name.clone()),
                    _ => (Kind::Job, owner.name.clone()),
                }
            }
            OwnerKind::Workload(kind) => (kind, owner.name.clone()),
        }
    }

    /// Every workload in the owner chain of an object (itself first), for skip lists.
    pub fn owner_chain(&self, key: &ObjectKey, entry: &Entry) -> Vec<(Kind, String)> {
        let mut chain = vec![(key.kind, key.name.clone())];
        if let Some(owner) = &entry.owner {
            if let OwnerKind::Workload(Kind::Job) = owner.kind {
                chain.push((Kind::Job, owner.name.clone()));
            }
            let top = self.workload_of(key, entry);
            if !chain.contains(&top) {
                chain.push(top);
            }
        }
        chain
    }
}

/// Sets or (for `None`) removes `key`; whether anything changed.
fn upsert_or_remove<V: PartialEq>(
    map: &mut HashMap<(String, String), V>,
    key: (String, String),
    value: Option<V>,
) -> bool {
    match value {
        Some(v) if map.get(&key) == Some(&v) => false,
        Some(v) => {
            map.insert(key, v);
            true
        }
        None => map.remove(&key).is_some(),
    }
}

/// Keeps the entries `keep` accepts; the keys dropped.
fn retain_named<V>(map: &mut HashMap<(String, String), V>, keep: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
    let mut gone = Vec::new();
    map.retain(|key, _| {
        let kept = keep(&key.0, &key.1);
        if !kept {
            gone.push(key.clone());
        }
        kept
    });
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ns: &str, name: &str, images: &[&str], owner: Option<(OwnerKind, &str)>) -> Seen {
        Seen {
            namespace: ns.into(),
            name: name.into(),
            images: images
                .iter()
                .map(|i| ContainerImage {
                    image: (*i).into(),
                    container: "c".into(),
                    pod_digest: None,
                })
                .collect(),
            owner: owner.map(|(kind, name)| Owner {
                kind,
                name: name.into(),
            }),
            ..Seen::default()
        }
    }

    const DEPLOY: Watched = Watched::Workload(Kind::Deployment);
    const POD: Watched = Watched::Workload(Kind::Pod);

    fn names(inv: &Inventory) -> Vec<String> {
        let mut v: Vec<String> = inv
            .objects()
            .map(|(k, _)| format!("{:?}/{}/{}", k.kind, k.namespace, k.name))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn pull_credentials_follow_the_spec_then_the_service_account() {
        let auths = |host: &str, user: &str| {
            let json = format!(r#"{{"auths": {{"{host}": {{"username": "{user}", "password": "pw"}}}}}}"#);
            crate::registry::parse_docker_config_json(json.as_bytes()).unwrap()
        };
        let secret = |ns: &str, name: &str, a: Option<DockerAuths>| Seen {
            auths: a,
            ..seen(ns, name, &[], None)
        };
        let account = |ns: &str, name: &str, secrets: &[&str]| Seen {
            pull: PullRefs {
                secrets: secrets.iter().map(|s| s.to_string()).collect(),
                service_account: None,
            },
            ..seen(ns, name, &[], None)
        };
        let mut inv = Inventory::new();
        for (ns, name, host, user) in [
            ("a", "one", "r.io", "u1"),
            ("a", "two", "r.io", "u2"),
            ("a", "other", "q.io", "u3"),
            ("b", "one", "r.io", "u4"),
        ] {
            inv.apply(Update::Apply(
                Watched::Secret,
                secret(ns, name, Some(auths(host, user))),
            ));
        }
        assert!(inv.apply(Update::Apply(
            Watched::ServiceAccount,
            account("a", "default", &["two", "one"])
        )));
        assert!(!inv.apply(Update::Apply(
            Watched::ServiceAccount,
            account("a", "default", &["two", "one"])
        )));
        inv.apply(Update::Apply(
            Watched::ServiceAccount,
            account("a", "builder", &["other"]),
        ));
        let user = |creds: Vec<PullSecret>| -> Vec<String> {
            creds
                .into_iter()
                .map(|c| match c.credential {
                    crate::registry::Credential::Basic { username, .. } => format!("{username} from {}", c.name),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        let refs = |secrets: &[&str], sa: Option<&str>| PullRefs {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            service_account: sa.map(str::to_owned),
        };
        let cases: [(&str, PullRefs, &str, &[&str]); 6] = [
            ("a", refs(&["one"], None), "r.io", &["u1 from a/one", "u2 from a/two"]),
            ("a", refs(&[], None), "r.io", &["u2 from a/two", "u1 from a/one"]),
            (
                "a",
                refs(&["missing", "one"], Some("builder")),
                "r.io",
                &["u1 from a/one"],
            ),
            ("a", refs(&[], Some("builder")), "q.io", &["u3 from a/other"]),
            ("b", refs(&["one", "two"], None), "r.io", &["u4 from b/one"]),
            ("a", refs(&["one"], None), "elsewhere.io", &[]),
        ];
        for (ns, pull, host, want) in cases {
            assert_eq!(
                user(inv.pull_credentials(ns, &pull, host)),
                want,
                "{ns} {pull:?} {host}"
            );
        }
        // A deleted secret, and one that turned into another type, stop counting.
        assert!(inv.apply(Update::Delete(Watched::Secret, secret("a", "two", None))));
        assert!(inv.apply(Update::Apply(Watched::Secret, secret("a", "one", None))));
        assert!(inv.pull_credentials("a", &refs(&["one"], None), "r.io").is_empty());
    }

    #[test]
    fn events_and_relists() {
        let mut inv = Inventory::new();
        assert!(!inv.apply(Update::Init(DEPLOY.into())));
        assert!(inv.apply(Update::InitApply(DEPLOY.into(), seen("a", "web", &["nginx:1"], None))));
        assert!(inv.apply(Update::InitApply(DEPLOY.into(), seen("a", "api", &["api:1"], None))));
        assert!(!inv.apply(Update::InitDone(DEPLOY.into())));
        assert!(inv.is_synced(&DEPLOY.into()) && !inv.is_synced(&POD.into()));
        assert!(
            !inv.apply(Update::Apply(DEPLOY, seen("a", "web", &["nginx:1"], None))),
            "no change, no replan"
        );
        assert!(inv.apply(Update::Apply(DEPLOY, seen("a", "web", &["nginx:2"], None))));
        // A relist after a 410 that no longer has `api`: it is gone.
        inv.apply(Update::Init(DEPLOY.into()));
        inv.apply(Update::InitApply(DEPLOY.into(), seen("a", "web", &["nginx:2"], None)));
        assert!(inv.apply(Update::InitDone(DEPLOY.into())));
        assert_eq!(names(&inv), vec!["Deployment/a/web"]);
        assert!(inv.apply(Update::Delete(DEPLOY, seen("a", "web", &[], None))));
        assert!(names(&inv).is_empty());
    }

    /// Updates, then the objects, the ReplicaSets and whether everything changed.
    type ChangeCase = (Vec<Update>, Vec<ObjectKey>, Vec<&'static str>, bool);

    #[test]
    fn changes_name_what_planning_must_redo() {
        let key = |kind, name: &str| ObjectKey {
            kind,
            namespace: "a".into(),
            name: name.into(),
        };
        let rs = |deployment: &str| {
            seen(
                "a",
                "web-1",
                &[],
                Some((OwnerKind::Workload(Kind::Deployment), deployment)),
            )
        };
        let node = |arch: &str| Seen {
            platform: Some(Platform::parse(arch).unwrap()),
            ..seen("", "n1", &[], None)
        };
        let mut inv = Inventory::new();
        // (updates, objects changed, ReplicaSets changed, everything)
        let cases: Vec<ChangeCase> = vec![
            (
                vec![
                    Update::Apply(POD, seen("a", "p", &["nginx:1"], None)),
                    Update::Apply(DEPLOY, seen("a", "web", &["nginx:1"], None)),
                ],
                vec![key(Kind::Pod, "p"), key(Kind::Deployment, "web")],
                vec![],
                false,
            ),
            (
                vec![Update::Apply(POD, seen("a", "p", &["nginx:1"], None))],
                vec![],
                vec![],
                false,
            ),
            (
                vec![Update::Apply(Watched::ReplicaSet, rs("web"))],
                vec![],
                vec!["web-1"],
                false,
            ),
            (
                vec![Update::Apply(Watched::ReplicaSet, rs("web"))],
                vec![],
                vec![],
                false,
            ),
            (
                vec![Update::Delete(Watched::ReplicaSet, rs("web"))],
                vec![],
                vec!["web-1"],
                false,
            ),
            (vec![Update::Apply(Watched::Node, node("arm64"))], vec![], vec![], true),
            (vec![Update::Apply(Watched::Node, node("arm64"))], vec![], vec![], false),
            // A relist without `p`: it vanished meanwhile.
            (
                vec![
                    Update::Init(POD.into()),
                    Update::InitDone(POD.into()),
                    Update::Delete(DEPLOY, seen("a", "web", &[], None)),
                ],
                vec![key(Kind::Pod, "p"), key(Kind::Deployment, "web")],
                vec![],
                false,
            ),
        ];
        for (i, (updates, objects, replica_sets, everything)) in cases.into_iter().enumerate() {
            for u in updates {
                inv.apply(u);
            }
            let changes = inv.take_changes();
            let mut got: Vec<ObjectKey> = changes.objects.into_iter().collect();
            got.sort();
            let mut want = objects;
            want.sort();
            assert_eq!(got, want, "case {i}");
            let got: Vec<String> = changes.replica_sets.into_iter().map(|(_, n)| n).collect();
            assert_eq!(got, replica_sets, "case {i}");
            assert_eq!(changes.everything, everything, "case {i}");
        }
    }

    #[test]
    fn a_namespace_feed_relists_only_its_namespace() {
        let feed = |ns: &str| Feed {
            watched: DEPLOY,
            namespace: Some(ns.into()),
        };
        let mut inv = Inventory::new();
        for ns in ["a", "b"] {
            inv.apply(Update::Init(feed(ns)));
            inv.apply(Update::InitApply(feed(ns), seen(ns, "web", &["nginx:1"], None)));
            inv.apply(Update::InitApply(feed(ns), seen(ns, "api", &["api:1"], None)));
        }
        inv.apply(Update::InitDone(feed("a")));
        assert!(inv.is_synced(&feed("a")) && !inv.is_synced(&feed("b")));
        assert!(!inv.is_synced(&DEPLOY.into()), "the cluster-wide feed is another feed");
        inv.apply(Update::InitDone(feed("b")));
        // A relist of `a` after a 410 no longer has `a/api`; `b` keeps both.
        inv.apply(Update::Init(feed("a")));
        inv.apply(Update::InitApply(feed("a"), seen("a", "web", &["nginx:1"], None)));
        assert!(inv.apply(Update::InitDone(feed("a"))));
        assert_eq!(
            names(&inv),
            vec!["Deployment/a/web", "Deployment/b/api", "Deployment/b/web"]
        );
    }

    #[test]
    fn node_platforms() {
        let mut inv = Inventory::new();
        let node = |name: &str, arch: Option<&str>| Seen {
            platform: arch.map(|a| Platform::parse(a).unwrap()),
            ..seen("", name, &[], None)
        };
        assert!(inv.apply(Update::Apply(Watched::Node, node("n1", Some("arm64")))));
        assert!(!inv.apply(Update::Apply(Watched::Node, node("n1", Some("arm64")))));
        let pod = Seen {
            node: Some("n1".into()),
            ..seen("a", "p", &["x"], None)
        };
        inv.apply(Update::Apply(POD, pod));
        let (_, entry) = inv.objects().next().unwrap();
        assert_eq!(
            inv.platform_of(entry).map(ToString::to_string).as_deref(),
            Some("linux/arm64")
        );
        inv.apply(Update::Init(Watched::Node.into()));
        inv.apply(Update::InitDone(Watched::Node.into()));
        let (_, entry) = inv.objects().next().unwrap();
        assert_eq!(inv.platform_of(entry), None, "a relist without the node forgets it");
    }

    #[test]
    fn owner_chains() {
        let mut inv = Inventory::new();
        inv.apply(Update::Apply(
            Watched::ReplicaSet,
            seen(
                "a",
                "web-7d4b9",
                &[],
                Some((OwnerKind::Workload(Kind::Deployment), "web")),
            ),
        ));
        inv.apply(Update::Apply(
            Watched::Workload(Kind::Job),
            seen(
                "a",
                "nightly-123",
                &["tool:1"],
                Some((OwnerKind::Workload(Kind::CronJob), "nightly")),
            ),
        ));
        let cases = [
            (
                seen(
                    "a",
                    "web-7d4b9-x1",
                    &["nginx"],
                    Some((OwnerKind::ReplicaSet, "web-7d4b9")),
                ),
                (Kind::Deployment, "web"),
            ),
            (
                seen(
                    "a",
                    "other-5f6c7-x1",
                    &["nginx"],
                    Some((OwnerKind::ReplicaSet, "other-5f6c7")),
                ),
                (Kind::Deployment, "other"),
            ),
            (
                seen(
                    "a",
                    "nightly-123-abc",
                    &["tool"],
                    Some((OwnerKind::Workload(Kind::Job), "nightly-123")),
                ),
                (Kind::CronJob, "nightly"),
            ),
            (
                seen(
                    "a",
                    "once-abc",
                    &["tool"],
                    Some((OwnerKind::Workload(Kind::Job), "once")),
                ),
                (Kind::Job, "once"),
            ),
            (
                seen(
                    "a",
                    "db-0",
                    &["pg"],
                    Some((OwnerKind::Workload(Kind::StatefulSet), "db")),
                ),
                (Kind::StatefulSet, "db"),
            ),
            (seen("a", "bare", &["x"], None), (Kind::Pod, "bare")),
        ];
        for (pod, (kind, name)) in cases {
            inv.apply(Update::Apply(POD, pod.clone()));
            let key = ObjectKey {
                kind: Kind::Pod,
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
            let entry = inv.objects().find(|(k, _)| **k == key).map(|(_, e)| e.clone()).unwrap();
            assert_eq!(inv.workload_of(&key, &entry), (kind, name.to_owned()), "{}", pod.name);
        }
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: "a".into(),
            name: "nightly-123-abc".into(),
        };
        let entry = inv.objects().find(|(k, _)| **k == key).map(|(_, e)| e.clone()).unwrap();
        assert_eq!(
            inv.owner_chain(&key, &entry),
            vec![
                (Kind::Pod, "nightly-123-abc".into()),
                (Kind::Job, "nightly-123".into()),
                (Kind::CronJob, "nightly".into())
            ]
        );
    }
}
