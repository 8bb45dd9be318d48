//! The `Image` controller (image-operator's `skopeo.io/v1alpha1` objects): each object's tags are
//! declared to the queue ([`Queue::declare`]), so copies get its single-flight, cooldown, positive
//! cache and metrics; the queue's outcomes become per-tag status and Warning Events.
//!
//! - `OneShot`: the tag, or every tag the pattern matches at the first pass, copied once per
//!   `metadata.generation`.
//! - `OnceByTag`: the pattern's current and future tags, each copied once; the tag list is read again
//!   every `images.tagListInterval`. A tag once copied is never submitted again (the status is the
//!   memory, across restarts); when upstream moves it, the status says `Moved` and a Warning Event
//!   (`TagMoved`) tells, once per new digest.
//! - `Recurrent`: every `spec.frequency`, every declared tag again past the positive cache
//!   ([`Queue::refresh_declared`]): an unchanged tag costs two HEADs.
//!
//! At most `images.maxTagsPerImage` tags of one object are being copied at a time; the rest wait
//! (`status.pendingTags`) and follow as those finish. Only the leader lists, declares and writes
//! status; a spec copycat cannot follow gets a `Failed` condition with its reason, never a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Change, ObjectKey, Watch, crd_present, patch_status, refusal_reason, watch_objects};
use crate::declarative::image::{
    self, Condition, ImageObject, ImagePlan, ImageSettings, ImageStatus, Mode, SpecError, TagResult, Versions,
    next_pass,
};
use crate::events::ObjectNotice;
use crate::metrics::Metrics;
use crate::plan::{MirrorTask, TargetKey};
use crate::queue::{DeclaredSource, Interest, Queue, TaskOutcome};
use crate::reference::Digest;
use crate::registry::Registries;

/// How often due passes and status writes are looked for.
const TICK: Duration = Duration::from_millis(500);

/// After a failed status write, the wait before the next attempt for that object.
const STATUS_RETRY: Duration = Duration::from_secs(5);

/// The CRD that must exist.
const CRD: &str = "images.skopeo.io";

/// What the controller works with.
pub struct ImageController {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// `images.*`.
    pub settings: ImageSettings,
    /// The daemon's queue.
    pub queue: Queue,
    /// Registry clients, for tag lists and the moved-tag checks.
    pub registries: Registries,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    /// Where Warning Events go, when Events are on.
    pub events: Option<mpsc::Sender<ObjectNotice>>,
    /// Where the watch's events are counted.
    pub metrics: Arc<Metrics>,
}

impl ImageController {
    /// Runs until the daemon stops it: returns at once when the CRD is not installed.
    pub async fn run(self) {
        let ImageController {
            client,
            settings,
            queue,
            registries,
            mut leading,
            events,
            metrics,
        } = self;
        let watch = Watch {
            resource: image::api_resource(),
            crd: CRD,
            enabled_by: "images.enabled",
            namespaces: settings.namespaces.clone(),
        };
        if !crd_present(&client, &watch).await {
            return;
        }
        let (_watching, mut changes) = watch_objects::<ImageObject>(&client, &watch, &metrics);
        let (to, mut outcomes) = mpsc::unbounded_channel();
        queue.report_outcomes(Interest::Declared(image::KIND), to);
        tracing::info!(namespaces = watch.scope(), "watching Image objects");
        metrics.expect_status_writes(&watch.resource.plural);
        let mut controller = Controller {
            client,
            settings,
            queue,
            registries,
            events,
            metrics,
            objects: BTreeMap::new(),
            tag_lists: HashMap::new(),
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(change) => controller.on_change(change),
                    None => return,
                },
                Some(outcome) = outcomes.recv() => controller.on_outcome(&outcome),
                _ = tick.tick() => {
                    if *leading.borrow() {
                        controller.tell_finished();
                        controller.run_due().await;
                        controller.write_statuses().await;
                    }
                }
                Ok(()) = leading.changed() => {
                    // A new leader takes every pass up at once (a finished OneShot stays finished).
                    if *leading.borrow_and_update() {
                        for tracked in controller.objects.values_mut() {
                            tracked.told = false;
                            if tracked.due.is_some() {
                                tracked.due = Some(Instant::now());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The controller's state.
struct Controller {
    client: kube::Client,
    settings: ImageSettings,
    queue: Queue,
    registries: Registries,
    events: Option<mpsc::Sender<ObjectNotice>>,
    /// Where refused status writes are counted.
    metrics: Arc<Metrics>,
    objects: BTreeMap<ObjectKey, Tracked>,
    /// Per source repository: when it was listed and what it held (or why it could not be listed).
    tag_lists: HashMap<String, (Instant, TagList)>,
}

/// A repository's tags, or why they could not be listed.
type TagList = Result<Arc<Vec<String>>, String>;

/// One `Image` object.
struct Tracked {
    source: DeclaredSource,
    uid: Option<String>,
    generation: Option<i64>,
    plan: Result<ImagePlan, SpecError>,
    /// Per source tag, its latest result: the status' `tags`, read back at start.
    tags: BTreeMap<String, TagResult>,
    /// What the object declares to the queue: target → source tag.
    declared: HashMap<TargetKey, String>,
    /// Declared targets without an outcome since they were last submitted.
    waiting: HashSet<TargetKey>,
    /// Matching tags not declared yet.
    pending: usize,
    /// `OneShot`: the tags matching at the first pass.
    snapshot: Option<Vec<String>>,
    /// `Recurrent`: whether the tags were declared once (later passes copy them again).
    declared_once: bool,
    /// Whether the queue was told what this object declares since this replica leads (a finished
    /// `OneShot` runs no pass, yet its copies stay declared for the periodic verification).
    told: bool,
    /// `OnceByTag`: when copied tags were last checked for moves.
    moves_checked: Option<Instant>,
    /// When the next pass is due; `None`: never (a finished `OneShot`, an invalid spec reported).
    due: Option<Instant>,
    /// Why the last tag list failed.
    list_error: Option<String>,
    last_sync: Option<String>,
    /// The status last written (or read), to write only changes.
    written: Option<ImageStatus>,
    /// Not before this instant (after a failed write).
    write_after: Option<Instant>,
}

impl Tracked {
    /// A new object, its memory read from the status it carries.
    fn new(object: &ImageObject, target_registry: &str) -> Tracked {
        let key = ObjectKey::of(&object.metadata);
        let plan = ImagePlan::from_spec(&object.spec, target_registry);
        let status = object.status.clone().unwrap_or_default();
        let same_generation = status.observed_generation == object.metadata.generation;
        let once_by_tag = matches!(&plan, Ok(p) if p.mode == Mode::OnceByTag);
        let remembered = same_generation || once_by_tag;
        // A dry run's tags were handled by that run only: copied for real after it.
        let tags: BTreeMap<String, TagResult> = match remembered {
            true => status
                .tags
                .iter()
                .filter(|t| t.result != DRY_RUN)
                .map(|t| (t.tag.clone(), t.clone()))
                .collect(),
            false => BTreeMap::new(),
        };
        // A OneShot already done for this generation is not done again after a restart.
        let finished = matches!(&plan, Ok(p) if p.mode == Mode::OneShot)
            && same_generation
            && status.last_sync_time.is_some()
            && status.pending_tags.unwrap_or(0) == 0
            && !tags.is_empty()
            && tags.values().all(|t| is_done(&t.result));
        Tracked {
            uid: object.metadata.uid.clone(),
            tags,
            due: (!finished).then(Instant::now),
            last_sync: status.last_sync_time.clone(),
            written: Some(status),
            ..Tracked::nothing_done(&key, object.metadata.generation, plan)
        }
    }

    /// An object of `plan` with nothing done, no status read, due now.
    fn nothing_done(key: &ObjectKey, generation: Option<i64>, plan: Result<ImagePlan, SpecError>) -> Tracked {
        Tracked {
            source: DeclaredSource::new(image::KIND, &key.namespace, &key.name),
            uid: None,
            generation,
            plan,
            tags: BTreeMap::new(),
            declared: HashMap::new(),
            waiting: HashSet::new(),
            pending: 0,
            snapshot: None,
            declared_once: false,
            told: false,
            moves_checked: None,
            due: Some(Instant::now()),
            list_error: None,
            last_sync: None,
            written: None,
            write_after: None,
        }
    }

    /// What the object declares to the queue under `plan`: the tags to copy (by tag), and for
    /// `OneShot` and `OnceByTag` each tag copied to its current target, pinned to the digest copied
    /// (never copied again by tag, so a tag moved upstream is not followed, yet the copy stays
    /// declared: the periodic verification checks it, repairs it and looks for new signatures of
    /// that digest).
    fn tasks(&self, plan: &ImagePlan) -> Vec<MirrorTask> {
        let copying = self
            .declared
            .values()
            .filter_map(|tag| plan.request(tag).ok().map(MirrorTask::new));
        let once = matches!(plan.mode, Mode::OneShot | Mode::OnceByTag);
        let copied = self
            .tags
            .values()
            .filter(|t| once && is_copied(&t.result))
            .filter_map(|t| {
                let digest = t.source_digest.as_deref()?.parse::<Digest>().ok()?;
                let mut request = plan.request(&t.tag).ok()?;
                let key = TargetKey::of(&request);
                if key.to_string() != t.destination || self.declared.contains_key(&key) {
                    return None; // copied elsewhere under an older spec, or being copied again
                }
                request.source = request.source.with_digest(digest);
                Some(MirrorTask::new(request))
            });
        copying.chain(copied).collect()
    }

    /// A reference for Events.
    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(format!("{}/{}", image::GROUP, image::VERSION)),
            kind: Some(image::KIND.to_owned()),
            namespace: Some(self.source.namespace.clone()),
            name: Some(self.source.name.clone()),
            uid: self.uid.clone(),
            ..ObjectReference::default()
        }
    }

    /// The status to write now.
    fn status(&self, now: &str) -> ImageStatus {
        let previous = self
            .written
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let mut status = match &self.plan {
            Err(e) => image::invalid_status(e, self.generation, now),
            Ok(_) => ImageStatus {
                observed_generation: self.generation,
                last_sync_time: self.last_sync.clone(),
                conditions: conditions(self.summary(), now),
                tags: self.tags.values().cloned().collect(),
                pending_tags: Some(self.pending as u64),
            },
        };
        keep_transition_times(&mut status.conditions, previous);
        status
    }

    fn summary(&self) -> Summary<'_> {
        let failed = self.tags.values().filter(|t| t.result == FAILED).count();
        let moved = self.tags.values().filter(|t| t.result == MOVED).count();
        Summary {
            waiting: self.waiting.len(),
            pending: self.pending,
            failed,
            moved,
            list_error: self.list_error.as_deref(),
            copied: self
                .tags
                .values()
                .filter(|t| matches!(t.result.as_str(), COPIED | PRESENT))
                .count(),
        }
    }
}

/// `Copied`: the copy wrote the image.
const COPIED: &str = "Copied";
/// `Present`: the destination held it already.
const PRESENT: &str = "Present";
/// `Failed`: the last attempt failed (the queue retries after its cooldown).
const FAILED: &str = "Failed";
/// `Moved`: copied once, then moved upstream; not copied again (`OnceByTag`).
const MOVED: &str = "Moved";
/// `DryRun`: nothing written (`dryRun`, `dryPull`).
const DRY_RUN: &str = "DryRun";

/// Whether a tag with this result was copied (and may have moved upstream since).
fn is_copied(result: &str) -> bool {
    matches!(result, COPIED | PRESENT | MOVED)
}

/// Whether a tag with this result is handled: never submitted again for `OneShot` and `OnceByTag`
/// (a dry run's only while this process runs: its results are not read back at start).
fn is_done(result: &str) -> bool {
    is_copied(result) || result == DRY_RUN
}

/// The tag status result of a queue outcome.
fn tag_result(outcome: &str) -> &'static str {
    match outcome {
        "copied" => COPIED,
        "present" | "warmed" => PRESENT,
        "failed" => FAILED,
        _ => DRY_RUN,
    }
}

/// What the conditions are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary<'a> {
    /// Tags being copied.
    waiting: usize,
    /// Tags not declared yet.
    pending: usize,
    /// Tags whose last attempt failed.
    failed: usize,
    /// Tags moved upstream since copied.
    moved: usize,
    /// Why the tag list failed.
    list_error: Option<&'a str>,
    /// Tags copied.
    copied: usize,
}

/// `Ready`, `Progressing` and `Failed` for `summary`.
fn conditions(summary: Summary<'_>, now: &str) -> Vec<Condition> {
    let condition = |type_: &str, on: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if on { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: Some(now.to_owned()),
    };
    let progressing = summary.waiting + summary.pending > 0;
    let (failed, failed_reason, failed_message) = match (summary.list_error, summary.failed) {
        (Some(e), _) => (true, "TagListFailed", format!("cannot list the source's tags: {e}")),
        (None, 0) => (false, "NoFailure", String::new()),
        (None, n) => (
            true,
            "CopyFailed",
            format!("{n} tag(s) failed; retried after the cooldown"),
        ),
    };
    let (ready_reason, ready_message) = match (progressing, failed) {
        (_, true) => ("Failed", failed_message.clone()),
        (true, false) => ("Progressing", String::new()),
        (false, false) if summary.moved > 0 => (
            "SyncedWithMovedTags",
            format!(
                "{} tag(s) copied; {} moved upstream since and not copied again",
                summary.copied, summary.moved
            ),
        ),
        (false, false) => ("Synced", format!("{} tag(s) copied", summary.copied)),
    };
    vec![
        condition("Ready", !progressing && !failed, ready_reason, ready_message),
        condition(
            "Progressing",
            progressing,
            if progressing { "Copying" } else { "Idle" },
            match progressing {
                true => format!("{} tag(s) being copied, {} waiting", summary.waiting, summary.pending),
                false => String::new(),
            },
        ),
        condition("Failed", failed, failed_reason, failed_message),
    ]
}

/// Keeps each condition's `lastTransitionTime` from `previous` while its status is unchanged.
fn keep_transition_times(conditions: &mut [Condition], previous: &[Condition]) {
    for condition in conditions {
        if let Some(before) = previous
            .iter()
            .find(|p| p.type_ == condition.type_ && p.status == condition.status)
        {
            condition.last_transition_time.clone_from(&before.last_transition_time);
        }
    }
}

/// A Warning Event on the object, when Events are on (the emitter keeps one per key per window).
fn tell(
    events: Option<&mpsc::Sender<ObjectNotice>>,
    tracked: &Tracked,
    key: String,
    reason: &'static str,
    message: String,
) {
    if let Some(events) = events {
        let _ = events.try_send(ObjectNotice {
            key,
            regarding: tracked.reference(),
            reason,
            message,
        });
    }
}

/// RFC 3339, to the second.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Controller {
    fn on_change(&mut self, change: Change<ImageObject>) {
        match change {
            Change::Applied(object) => {
                let key = ObjectKey::of(&object.metadata);
                match self.objects.get_mut(&key) {
                    // A status write (ours) or a label: the spec is the same.
                    Some(tracked) if tracked.generation == object.metadata.generation => {
                        tracked.uid.clone_from(&object.metadata.uid);
                    }
                    Some(tracked) => {
                        let mut fresh = Tracked::new(&object, &self.settings.target_registry);
                        // OnceByTag remembers what it copied whatever the spec became.
                        if matches!(&fresh.plan, Ok(p) if p.mode == Mode::OnceByTag) {
                            fresh.tags = std::mem::take(&mut tracked.tags);
                        } else {
                            fresh.tags.clear();
                        }
                        fresh.written = tracked.written.take();
                        tracing::info!(object = %fresh.source, "Image changed");
                        *tracked = fresh;
                    }
                    None => {
                        let tracked = Tracked::new(&object, &self.settings.target_registry);
                        tracing::debug!(object = %tracked.source, "Image seen");
                        self.objects.insert(key, tracked);
                    }
                }
            }
            Change::Undecodable(key, generation, error) => {
                tracing::warn!(object = %key, error, "Image object does not decode; reported on its status");
                let tracked = Tracked::nothing_done(&key, generation, Err(SpecError::Decode(error)));
                if let Some(old) = self.objects.insert(key, tracked) {
                    self.queue.undeclare(old.source);
                }
            }
            Change::Deleted(key) => {
                if let Some(tracked) = self.objects.remove(&key) {
                    tracing::info!(object = %tracked.source, "Image deleted; its waiting copies are dropped");
                    self.queue.undeclare(tracked.source);
                }
            }
        }
    }

    /// Records the outcome of a copy on each declaring object's tag.
    fn on_outcome(&mut self, outcome: &TaskOutcome) {
        for source in &outcome.declared_by {
            let key = ObjectKey {
                namespace: source.namespace.clone(),
                name: source.name.clone(),
            };
            let Some(tracked) = self.objects.get_mut(&key) else {
                continue;
            };
            let Some(tag) = tracked.declared.get(&outcome.target).cloned() else {
                continue;
            };
            tracked.waiting.remove(&outcome.target);
            let result = tag_result(outcome.result);
            let recurrent = matches!(&tracked.plan, Ok(p) if matches!(p.mode, Mode::Recurrent { .. }));
            if is_done(result) && !recurrent {
                tracked.declared.remove(&outcome.target);
            }
            if result == FAILED {
                let message = format!(
                    "Cannot copy {} to {}: {}",
                    outcome.source,
                    outcome.target,
                    outcome.error.as_deref().unwrap_or_default()
                );
                let event_key = format!("{}|{tag}", tracked.source);
                tell(self.events.as_ref(), tracked, event_key, "MirrorFailed", message);
            }
            tracked.tags.insert(
                tag.clone(),
                TagResult {
                    tag,
                    source_digest: outcome.source_digest.as_ref().map(ToString::to_string),
                    destination: outcome.target.to_string(),
                    result: result.to_owned(),
                    message: outcome.error.clone().unwrap_or_default(),
                    time: Some(timestamp(outcome.time)),
                },
            );
            // More tags wait for room: the next pass need not wait for the tag list interval.
            if tracked.waiting.is_empty() && tracked.pending > 0 {
                tracked.due = Some(Instant::now());
            }
        }
    }

    /// Tells the queue what each object that runs no pass (a finished `OneShot`) declares, once
    /// since this replica leads: its copies, for the periodic verification.
    fn tell_finished(&mut self) {
        for tracked in self.objects.values_mut().filter(|t| t.due.is_none() && !t.told) {
            tracked.told = true;
            if let Ok(plan) = &tracked.plan {
                let done = self.queue.declare(tracked.source.clone(), tracked.tasks(plan));
                tracing::debug!(object = %tracked.source, submitted = done.submitted, "Image copies declared");
            }
        }
    }

    /// Runs the passes that are due.
    async fn run_due(&mut self) {
        let now = Instant::now();
        let due: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, t)| t.due.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.pass(&key).await;
        }
    }

    /// One pass over an object: list its tags (cached), declare what is to copy, check copied tags
    /// for moves (`OnceByTag`), say when the next pass is due.
    async fn pass(&mut self, key: &ObjectKey) {
        let Some(tracked) = self.objects.get(key) else {
            return;
        };
        let plan = match &tracked.plan {
            Ok(plan) => plan.clone(),
            Err(e) => {
                let (reason, message) = (e.reason(), e.to_string());
                let event_key = format!("{}|{:?}|invalid", tracked.source, tracked.generation);
                tell(self.events.as_ref(), tracked, event_key, reason, message);
                if let Some(tracked) = self.objects.get_mut(key) {
                    tracked.due = None;
                }
                return;
            }
        };
        let listed = match &plan.versions {
            Versions::Tag(_) => Ok(Arc::new(vec![])),
            Versions::Pattern { .. } => self.tag_list(&plan).await,
        };
        let max = self.settings.max_tags_per_image;
        let interval = self.settings.tag_list_interval;
        let Some(tracked) = self.objects.get_mut(key) else {
            return;
        };
        tracked.last_sync = Some(timestamp(SystemTime::now()));
        let listed = match listed {
            Ok(listed) => {
                tracked.list_error = None;
                listed
            }
            Err(e) => {
                tracing::warn!(object = %tracked.source, source = %plan.source, error = e, "cannot list the source's tags");
                tracked.list_error = Some(e);
                tracked.due = Some(Instant::now() + interval);
                return;
            }
        };
        let matching: Vec<String> = plan.tags(&listed).into_iter().map(str::to_owned).collect();
        let (refresh, submitted): (bool, Vec<TargetKey>) = match plan.mode {
            Mode::Recurrent { every } => {
                // The newest `max` matching tags, copied again every frequency.
                let keep = matching.len().min(max);
                tracked.pending = matching.len() - keep;
                tracked.declared = declared(&plan, &matching[matching.len() - keep..]);
                tracked.due = Some(Instant::now() + every);
                let refresh = std::mem::replace(&mut tracked.declared_once, true);
                (refresh, tracked.declared.keys().cloned().collect())
            }
            Mode::OneShot | Mode::OnceByTag => {
                let candidates = match plan.mode {
                    Mode::OneShot => tracked.snapshot.get_or_insert(matching).clone(),
                    _ => matching,
                };
                let mut skip: HashSet<String> = tracked
                    .tags
                    .values()
                    .filter(|t| is_done(&t.result))
                    .map(|t| t.tag.clone())
                    .collect();
                skip.extend(tracked.declared.values().cloned());
                let names: Vec<&str> = candidates.iter().map(String::as_str).collect();
                let room = max.saturating_sub(tracked.declared.len());
                let this_pass = next_pass(&names, &skip, room);
                tracked.pending = this_pass.pending;
                let new = declared(
                    &plan,
                    &this_pass.copy.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>(),
                );
                let submitted = new.keys().cloned().collect();
                tracked.declared.extend(new);
                tracked.due = match plan.mode {
                    Mode::OneShot if tracked.declared.is_empty() && tracked.pending == 0 => None,
                    _ => Some(Instant::now() + interval),
                };
                (false, submitted)
            }
        };
        tracked.waiting.retain(|k| tracked.declared.contains_key(k));
        tracked.waiting.extend(submitted);
        tracked.told = true;
        let tasks = tracked.tasks(&plan);
        let source = tracked.source.clone();
        let done = self.queue.declare(source.clone(), tasks);
        let refreshed = if refresh {
            self.queue.refresh_declared(&source)
        } else {
            0
        };
        tracing::debug!(object = %source, submitted = done.submitted, refreshed, "Image pass");
        if plan.mode == Mode::OnceByTag {
            self.check_moves(key, &plan).await;
        }
    }

    /// `OnceByTag`: asks the source for the digest of each copied tag (one HEAD each, at most
    /// `maxTagsPerImage` tags once per `tagListInterval`); a tag now elsewhere is reported `Moved`,
    /// once per new digest, and never copied again.
    async fn check_moves(&mut self, key: &ObjectKey, plan: &ImagePlan) {
        let interval = self.settings.tag_list_interval;
        let Some(tracked) = self.objects.get_mut(key) else {
            return;
        };
        if tracked.moves_checked.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        tracked.moves_checked = Some(Instant::now());
        let tracked = &*tracked;
        let copied: Vec<(String, String)> = tracked
            .tags
            .values()
            .rev()
            .filter(|t| is_copied(&t.result))
            .filter_map(|t| Some((t.tag.clone(), t.source_digest.clone()?)))
            .take(self.settings.max_tags_per_image)
            .collect();
        let registry = self.registries.get(plan.source.registry());
        let mut moved = vec![];
        for (tag, digest) in copied {
            match registry.head_manifest(plan.source.repository(), &tag).await {
                Ok(Some(head)) if head.digest.to_string() != digest => {
                    moved.push((tag, digest, head.digest.to_string()))
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(source = %plan.source, tag, error = %e, "cannot check the tag for a move"),
            }
        }
        let Some(tracked) = self.objects.get_mut(key) else {
            return;
        };
        for (tag, copied, now) in moved {
            let message = format!(
                "{}:{tag} moved upstream from {copied} to {now}; OnceByTag does not copy a tag again",
                plan.source
            );
            if let Some(entry) = tracked.tags.get_mut(&tag)
                && (entry.result != MOVED || entry.message != message)
            {
                tracing::warn!(object = %tracked.source, source = %plan.source, tag, copied, now, "tag moved upstream; not copied again");
                entry.result = MOVED.to_owned();
                entry.message.clone_from(&message);
                let event_key = format!("{}|{tag}|{now}", tracked.source);
                let tracked = &*tracked;
                tell(self.events.as_ref(), tracked, event_key, "TagMoved", message);
            }
        }
    }

    /// The tags of `plan`'s source repository, listed at most once per `tagListInterval`.
    async fn tag_list(&mut self, plan: &ImagePlan) -> TagList {
        let repository = plan.source.name();
        let interval = self.settings.tag_list_interval;
        if let Some((at, listed)) = self.tag_lists.get(&repository)
            && at.elapsed() < interval
        {
            return listed.clone();
        }
        let listed = self
            .registries
            .get(plan.source.registry())
            .list_tags(plan.source.repository())
            .await
            .map(Arc::new)
            .map_err(|e| e.to_string());
        self.tag_lists.retain(|_, (at, _)| at.elapsed() < interval);
        self.tag_lists.insert(repository, (Instant::now(), listed.clone()));
        listed
    }

    /// Writes the status of every object whose status changed.
    async fn write_statuses(&mut self) {
        let now = timestamp(SystemTime::now());
        let resource = image::api_resource();
        for (key, tracked) in &mut self.objects {
            if tracked.write_after.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let status = tracked.status(&now);
            if tracked.written.as_ref().is_some_and(|w| same_status(w, &status)) {
                continue;
            }
            match patch_status(&self.client, &resource, key, &status, &self.metrics).await {
                Ok(()) => {
                    tracked.written = Some(status);
                    tracked.write_after = None;
                }
                Err(e) => {
                    tracing::warn!(object = %tracked.source, verb = "patch", resource = "images/status",
                        reason = refusal_reason(&e), error = %e,
                        "cannot write the Image's status (counted in k8s_copycat_status_write_errors_total); retrying");
                    tracked.write_after = Some(Instant::now() + STATUS_RETRY);
                }
            }
        }
    }
}

/// Whether two statuses say the same, transition times aside.
fn same_status(a: &ImageStatus, b: &ImageStatus) -> bool {
    let strip = |s: &ImageStatus| {
        let mut s = s.clone();
        s.conditions.iter_mut().for_each(|c| c.last_transition_time = None);
        s
    };
    strip(a) == strip(b)
}

/// The targets of `tags` under `plan`, with their source tags.
fn declared(plan: &ImagePlan, tags: &[String]) -> HashMap<TargetKey, String> {
    tags.iter()
        .filter_map(|tag| Some((TargetKey::of(&plan.request(tag).ok()?), tag.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-07T17:00:00Z";

    fn summary(waiting: usize, pending: usize, failed: usize, moved: usize, list_error: Option<&str>) -> Summary<'_> {
        Summary {
            waiting,
            pending,
            failed,
            moved,
            list_error,
            copied: 3,
        }
    }

    #[test]
    fn conditions_table() {
        // (summary, Ready, Progressing, Failed, Ready's reason, Failed's reason)
        let cases = [
            (
                summary(0, 0, 0, 0, None),
                "True",
                "False",
                "False",
                "Synced",
                "NoFailure",
            ),
            (
                summary(2, 0, 0, 0, None),
                "False",
                "True",
                "False",
                "Progressing",
                "NoFailure",
            ),
            (
                summary(0, 5, 0, 0, None),
                "False",
                "True",
                "False",
                "Progressing",
                "NoFailure",
            ),
            (
                summary(0, 0, 1, 0, None),
                "False",
                "False",
                "True",
                "Failed",
                "CopyFailed",
            ),
            (
                summary(1, 0, 1, 0, None),
                "False",
                "True",
                "True",
                "Failed",
                "CopyFailed",
            ),
            (
                summary(0, 0, 0, 0, Some("401")),
                "False",
                "False",
                "True",
                "Failed",
                "TagListFailed",
            ),
            (
                summary(0, 0, 0, 2, None),
                "True",
                "False",
                "False",
                "SyncedWithMovedTags",
                "NoFailure",
            ),
        ];
        for (s, ready, progressing, failed, ready_reason, failed_reason) in cases {
            let c = conditions(s, NOW);
            let got: Vec<&str> = c.iter().map(|c| c.status.as_str()).collect();
            assert_eq!(got, [ready, progressing, failed], "{s:?}");
            assert_eq!(c[0].reason, ready_reason, "{s:?}");
            assert_eq!(c[2].reason, failed_reason, "{s:?}");
        }
    }

    #[test]
    fn outcomes_become_tag_results_and_done_tags_are_never_copied_again() {
        for (outcome, result, done) in [
            ("copied", COPIED, true),
            ("present", PRESENT, true),
            ("warmed", PRESENT, true),
            ("failed", FAILED, false),
            ("would-copy", DRY_RUN, true),
            ("dry-pull", DRY_RUN, true),
        ] {
            assert_eq!(tag_result(outcome), result, "{outcome}");
            assert_eq!(is_done(result), done, "{outcome}");
        }
        assert!(is_done(MOVED), "a moved tag is not copied again");
    }

    /// An object as served: `mode`, `generation`, and a status observed at `observed` holding the
    /// `(tag, result)` pairs.
    #[test]
    fn copied_tags_stay_declared_pinned_to_the_digest_copied() {
        let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let at = |tag: &str| format!("r.example/b:{tag}");
        // (tag, result, source digest, destination) in the status
        let status = [
            ("1.0.0", COPIED, Some(d(1)), at("1.0.0")),
            ("1.1.0", PRESENT, Some(d(2)), at("1.1.0")),
            // Moved upstream: the digest copied stays what is checked.
            ("1.2.0", MOVED, Some(d(3)), at("1.2.0")),
            ("1.3.0", FAILED, None, at("1.3.0")),
            ("1.4.0", DRY_RUN, Some(d(5)), at("1.4.0")),
            // Copied under an older spec to another destination.
            ("1.5.0", COPIED, Some(d(6)), "r.example/old:1.5.0".into()),
            // Being copied again (declared by tag).
            ("1.6.0", COPIED, Some(d(7)), at("1.6.0")),
        ];
        // (mode, the sources declared)
        let cases: [(&str, Vec<String>); 3] = [
            (
                "OnceByTag",
                vec![
                    format!("quay.io/a/b:1.0.0@{}", d(1)),
                    format!("quay.io/a/b:1.1.0@{}", d(2)),
                    format!("quay.io/a/b:1.2.0@{}", d(3)),
                    "quay.io/a/b:1.6.0".into(),
                ],
            ),
            (
                "OneShot",
                vec![
                    format!("quay.io/a/b:1.0.0@{}", d(1)),
                    format!("quay.io/a/b:1.1.0@{}", d(2)),
                    format!("quay.io/a/b:1.2.0@{}", d(3)),
                    "quay.io/a/b:1.6.0".into(),
                ],
            ),
            // Recurrent declares its tags by tag, copied or not.
            ("Recurrent", vec!["quay.io/a/b:1.6.0".into()]),
        ];
        for (mode, want) in cases {
            let mut tracked = Tracked::new(&object(mode, 1, 1, &[], 0), "r.example");
            let plan = tracked.plan.clone().unwrap();
            for (tag, result, digest, destination) in &status {
                let entry = TagResult {
                    tag: (*tag).into(),
                    source_digest: digest.clone(),
                    destination: destination.clone(),
                    result: (*result).into(),
                    message: String::new(),
                    time: None,
                };
                tracked.tags.insert((*tag).into(), entry);
            }
            tracked.declared = declared(&plan, &["1.6.0".to_owned()]);
            let mut got: Vec<String> = tracked
                .tasks(&plan)
                .iter()
                .map(|t| t.request.source.to_string())
                .collect();
            got.sort();
            assert_eq!(got, want, "{mode}");
        }
    }

    fn object(mode: &str, generation: i64, observed: i64, tags: &[(&str, &str)], pending: u64) -> ImageObject {
        let tags: Vec<serde_json::Value> = tags
            .iter()
            .map(|(tag, result)| serde_json::json!({"tag": tag, "result": result, "destination": "d"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "skopeo.io/v1alpha1", "kind": "Image",
            "metadata": {"name": "a", "namespace": "shop", "generation": generation},
            "spec": {"mode": mode, "frequency": "1h", "source": {"name": "quay.io/a/b", "version": "1.x.x"},
                     "destination": {"name": "b"}},
            "status": {"observedGeneration": observed, "lastSyncTime": NOW, "tags": tags, "pendingTags": pending}
        }))
        .unwrap()
    }

    #[test]
    fn the_status_is_the_memory_read_back_at_start() {
        let copied = [
            ("1.0.0", COPIED),
            ("1.1.0", MOVED),
            ("1.2.0", DRY_RUN),
            ("1.3.0", FAILED),
        ];
        // (object, tags remembered, a pass due)
        let cases = [
            // OnceByTag remembers what it copied whatever the generation; a dry run is forgotten.
            (
                object("OnceByTag", 2, 1, &copied, 0),
                vec!["1.0.0", "1.1.0", "1.3.0"],
                true,
            ),
            (
                object("OnceByTag", 1, 1, &copied, 0),
                vec!["1.0.0", "1.1.0", "1.3.0"],
                true,
            ),
            // A OneShot done for this generation stays done; one whose spec changed starts again.
            (object("OneShot", 1, 1, &[("1.0.0", COPIED)], 0), vec!["1.0.0"], false),
            (object("OneShot", 2, 1, &[("1.0.0", COPIED)], 0), vec![], true),
            // Not done: tags pending, or a failed tag.
            (object("OneShot", 1, 1, &[("1.0.0", COPIED)], 3), vec!["1.0.0"], true),
            (object("OneShot", 1, 1, &[("1.0.0", FAILED)], 0), vec!["1.0.0"], true),
            (object("Recurrent", 1, 1, &[("1.0.0", COPIED)], 0), vec!["1.0.0"], true),
        ];
        for (i, (object, remembered, due)) in cases.into_iter().enumerate() {
            let tracked = Tracked::new(&object, "r.example");
            let tags: Vec<&str> = tracked.tags.keys().map(String::as_str).collect();
            assert_eq!(tags, remembered, "case {i}");
            assert_eq!(tracked.due.is_some(), due, "case {i}");
        }
    }

    #[test]
    fn transition_times_stay_while_a_condition_keeps_its_status() {
        let before = conditions(summary(1, 0, 0, 0, None), "2026-01-01T00:00:00Z");
        let mut after = conditions(summary(0, 0, 0, 0, None), NOW);
        keep_transition_times(&mut after, &before);
        let times: Vec<&str> = after
            .iter()
            .map(|c| c.last_transition_time.as_deref().unwrap())
            .collect();
        // Ready and Progressing changed; Failed stayed False.
        assert_eq!(times, [NOW, NOW, "2026-01-01T00:00:00Z"]);
    }
}
