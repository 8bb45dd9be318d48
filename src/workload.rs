//! The workloads copycat watches: their kinds and how one is named; the declarative objects
//! (`Image`, Flux `ImageRepository`) that ask for images besides them. The words every floor above
//! shares (discovery, plan, queue, events, status); this module imports nothing of copycat.

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

impl Kind {
    /// Every kind, in the order `watchResources` lists them by default.
    pub const ALL: [Kind; 6] = [
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
        Kind::CronJob,
        Kind::Pod,
    ];

    /// The Kubernetes kind, e.g. `Deployment`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::Pod => "Pod",
        }
    }

    /// The resource name `watchResources` uses for it, e.g. `deployments`.
    pub const fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
            Kind::Job => "jobs",
            Kind::CronJob => "cronjobs",
            Kind::Pod => "pods",
        }
    }

    /// The kind a resource name (`deployments`) stands for.
    pub fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }

    /// The kind a Kubernetes kind name (`Deployment`, as in an owner reference) stands for.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds `resources` (as `watchResources` spells them) name; unknown names are left out.
pub fn kinds_named(resources: &[&str]) -> Vec<Kind> {
    resources.iter().filter_map(|r| Kind::from_resource(r)).collect()
}

/// A workload that uses an image: the top of a Pod's owner chain (a Deployment rather than its
/// ReplicaSet or Pods). Shown as `Deployment shop/web`; events are attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// The workload `kind` `namespace/name`.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Workload {
        Workload {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// As its display form, which `/status` has always shown.
impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A declarative object asking for images to be mirrored, as the queue keeps its targets and `/status`
/// and the coverage name it: `Image shop/base`, `ImageRepository flux-system/app`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeclaredSource {
    /// The object's kind (`Image`, `ImageRepository`).
    pub kind: &'static str,
    /// Its namespace (empty for a cluster-scoped kind).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl DeclaredSource {
    /// `kind namespace/name`.
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> DeclaredSource {
        DeclaredSource {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for DeclaredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl serde::Serialize for DeclaredSource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_resource(kind.resource()), Some(kind));
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_resource("replicasets"), None);
        assert_eq!(Kind::from_name("ReplicaSet"), None);
        assert_eq!(kinds_named(&["pods", "nodes", "jobs"]), [Kind::Pod, Kind::Job]);
    }
}
