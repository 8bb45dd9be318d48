//! Targets kept besides the plan: those submitted urgently (copy on the fly) a short while ago, and
//! those a declarative object (an `Image`, a Flux `ImageRepository`) declares. [`Queue::retain_planned`]
//! forgets neither, and their outcomes are reported to whoever subscribed to them
//! ([`Queue::report_outcomes`]).
//!
//! [`Queue::retain_planned`]: super::Queue::retain_planned
//! [`Queue::report_outcomes`]: super::Queue::report_outcomes

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::plan::{MirrorTask, TargetKey};
use crate::workload::DeclaredSource;

/// What stands in the way of a declarative object's copies while they go ahead regardless (a Flux
/// `spec.secretRef` Secret that cannot be used, say), reported by its controller
/// ([`Queue::declare_problem`](super::Queue::declare_problem)). Its message must name no credential:
/// `/status` shows it.
#[derive(Debug, Clone)]
pub struct SourceProblem(Arc<dyn std::error::Error + Send + Sync>);

impl SourceProblem {
    /// The problem `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> SourceProblem {
        SourceProblem(Arc::new(error))
    }
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SourceProblem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An object declaring a target, as the target's `/status` entry shows it (`declaredBy`).
#[derive(Debug, Clone, Serialize)]
pub struct DeclaringObject {
    /// `ImageRepository flux-system/app`.
    pub object: DeclaredSource,
    /// What stands in the way of its copies now, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<SourceProblem>,
}

/// Which targets' outcomes a subscriber wants ([`Queue::report_outcomes`](super::Queue::report_outcomes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Targets submitted urgently.
    Urgent,
    /// Targets declared by objects of this kind.
    Declared(&'static str),
}

/// The targets kept besides the plan.
pub(super) struct Kept {
    /// Targets submitted urgently ([`Queue::submit_urgent`](super::Queue::submit_urgent)) recently.
    pub(super) urgent: moka::sync::Cache<TargetKey, ()>,
    declared: Mutex<Declared>,
    /// Bumped whenever what objects declare changes ([`Kept::changed`]).
    version: watch::Sender<u64>,
}

/// What each declarative object declares, and the reverse.
#[derive(Default)]
struct Declared {
    /// Per object, the work (users left out) of each target it declares.
    by_source: HashMap<DeclaredSource, HashMap<TargetKey, MirrorTask>>,
    /// Per target, the objects declaring it.
    by_key: HashMap<TargetKey, Vec<DeclaredSource>>,
    /// Per object, what stands in the way of its copies now.
    problems: HashMap<DeclaredSource, SourceProblem>,
}

/// The declarations while locked ([`Kept::view`]).
pub(super) struct DeclaredView<'a>(MutexGuard<'a, Declared>);

impl DeclaredView<'_> {
    /// The objects declaring `key`, each with its current problem.
    pub(super) fn declaring(&self, key: &TargetKey) -> Vec<DeclaringObject> {
        let Some(sources) = self.0.by_key.get(key) else {
            return vec![];
        };
        sources
            .iter()
            .map(|source| DeclaringObject {
                object: source.clone(),
                problem: self.0.problems.get(source).cloned(),
            })
            .collect()
    }
}

/// What [`Kept::declare`] changed.
pub(super) struct Declaration {
    /// Whether the declared targets or their work changed at all.
    pub(super) any: bool,
    /// Tasks that are new or whose work changed.
    pub(super) changed: Vec<MirrorTask>,
    /// Tasks declared with the same work as before.
    pub(super) unchanged: Vec<MirrorTask>,
    /// Tasks declared by tag before and now pinned to a digest, the same work otherwise (a copy done
    /// by tag, declared from then on by the digest it copied), with the work declared before.
    pub(super) pinned: Vec<(MirrorTask, MirrorTask)>,
    /// Targets this object no longer declares and no other object does.
    pub(super) undeclared: Vec<TargetKey>,
}

impl Kept {
    /// Urgent targets stay kept for `urgent_ttl` after their last urgent submission.
    pub(super) fn new(capacity: u64, urgent_ttl: Duration) -> Kept {
        Kept {
            urgent: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(urgent_ttl)
                .build(),
            declared: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }

    /// Tells [`Kept::changes`] watchers that what objects declare changed.
    pub(super) fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes whenever what objects declare changes.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The work of every declared target, once per target (when two objects declare one target, the
    /// work of the first object by kind, namespace and name, so that it does not change from one call
    /// to the next), with the objects declaring it in that order.
    pub(super) fn all_declared(&self) -> Vec<(MirrorTask, Vec<DeclaredSource>)> {
        let declared = super::lock(&self.declared);
        let mut sources: Vec<_> = declared.by_source.iter().collect();
        sources.sort_by(|a, b| a.0.cmp(b.0));
        let mut all: HashMap<&TargetKey, &MirrorTask> = HashMap::with_capacity(declared.by_key.len());
        for (_, work) in sources {
            for (key, task) in work {
                all.entry(key).or_insert(task);
            }
        }
        all.into_iter()
            .map(|(key, task)| {
                let mut by = declared.by_key.get(key).cloned().unwrap_or_default();
                by.sort();
                (task.clone(), by)
            })
            .collect()
    }

    /// Whether `key` is kept whatever the plan holds.
    pub(super) fn keeps(&self, key: &TargetKey) -> bool {
        self.urgent.contains_key(key) || super::lock(&self.declared).by_key.contains_key(key)
    }

    /// The objects declaring `key`.
    pub(super) fn declared_by(&self, key: &TargetKey) -> Vec<DeclaredSource> {
        super::lock(&self.declared).by_key.get(key).cloned().unwrap_or_default()
    }

    /// The declarations, locked once to look up many targets ([`DeclaredView::declaring`]).
    pub(super) fn view(&self) -> DeclaredView<'_> {
        DeclaredView(super::lock(&self.declared))
    }

    /// Records what stands in the way of `source`'s copies now (`None`: nothing any more).
    pub(super) fn set_problem(&self, source: &DeclaredSource, problem: Option<SourceProblem>) {
        let mut declared = super::lock(&self.declared);
        match problem {
            Some(problem) => declared.problems.insert(source.clone(), problem),
            None => declared.problems.remove(source),
        };
    }

    /// The work `source` declares now.
    pub(super) fn declared(&self, source: &DeclaredSource) -> Vec<MirrorTask> {
        super::lock(&self.declared)
            .by_source
            .get(source)
            .map(|work| work.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces what `source` declares by `tasks` (none: the object is gone).
    pub(super) fn declare(&self, source: &DeclaredSource, tasks: Vec<MirrorTask>) -> Declaration {
        let mut guard = super::lock(&self.declared);
        let declared = &mut *guard;
        let previous = declared.by_source.remove(source).unwrap_or_default();
        let mut current = HashMap::with_capacity(tasks.len());
        let (mut changed, mut unchanged, mut pinned) = (vec![], vec![], vec![]);
        for task in tasks {
            let key = task.key();
            let work = task.work();
            match previous.get(&key) {
                Some(before) if before.same_work(&work) => unchanged.push(task),
                Some(before) if pins(before, &work) => pinned.push((before.clone(), task)),
                Some(_) => changed.push(task),
                None => {
                    declared.by_key.entry(key.clone()).or_default().push(source.clone());
                    changed.push(task);
                }
            }
            current.insert(key, work);
        }
        let mut undeclared = vec![];
        let mut dropped = false;
        for key in previous.into_keys().filter(|k| !current.contains_key(k)) {
            dropped = true;
            let Some(sources) = declared.by_key.get_mut(&key) else {
                continue;
            };
            sources.retain(|s| s != source);
            if sources.is_empty() {
                declared.by_key.remove(&key);
                undeclared.push(key);
            }
        }
        if !current.is_empty() {
            declared.by_source.insert(source.clone(), current);
        }
        Declaration {
            any: dropped || !changed.is_empty() || !pinned.is_empty(),
            changed,
            unchanged,
            pinned,
            undeclared,
        }
    }
}

/// Whether `after` is `before` pinned to a digest: the same tag and the same work otherwise.
fn pins(before: &MirrorTask, after: &MirrorTask) -> bool {
    let (was, now) = (&before.request.source, &after.request.source);
    if was.digest().is_some() || now.digest().is_none() {
        return false;
    }
    let mut unpinned = after.clone();
    unpinned.request.source = now.without_digest();
    before.same_work(&unpinned)
}
