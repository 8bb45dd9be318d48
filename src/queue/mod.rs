//! The mirror queue: turns [`MirrorTask`]s from discovery into calls of the copy engine.
//!
//! - **One task per target** ([`TargetKey`]: target repository plus tag, or digest). A submission for
//!   a target already queued merges into it (users unioned, the newest request wins). While a target
//!   is being copied it is not started again; if a submission during the copy asks for different
//!   work (another source digest, say), the target runs once more afterwards (after the cooldown,
//!   if the copy failed).
//! - **Positive cache**: after a successful copy (copied, already present, or a dry-run decision)
//!   the same target with the same source reference and platforms is skipped without any registry
//!   request for [`QueueOptions::positive_ttl`], or until the source reference (a pinned digest
//!   included) changes.
//! - **Repair** ([`Queue::repair`]): a target a check found incomplete is copied again past the
//!   positive cache in the engine's repair mode ([`CopyOptions::repair`]); the request survives
//!   merges and failed attempts and is cleared by a success.
//! - **Failure cooldown** per target: after a failure the target waits
//!   [`QueueOptions::failure_cooldown`], then is retried by a timer with the latest request.
//!   Submissions meanwhile do not run it early; [`Queue::reset_cooldown`] re-queues every waiting
//!   target at once. Permanent errors (a tag conflict, a digest mismatch) cool down too, since the
//!   operator may fix the registry, but are logged at error level.
//! - **Retry backoff** when the cooldown is disabled: a failed target is retried by a timer after
//!   [`QueueOptions::retry_backoff`], doubling with each further failure up to
//!   [`QueueOptions::max_retry_backoff`] (as k8s-copycat's controller-runtime requeue did), or at once
//!   when it is submitted again.
//! - **Worker pool**: at most [`QueueOptions::workers`] copies at a time.
//! - **Priority** ([`Queue::submit_urgent`], copy on the fly): an urgent target is taken by the
//!   next free worker ahead of every routine one, with the same merging, positive cache and cooldown;
//!   it stays known (and is not forgotten by [`Queue::retain_planned`]) for a while after its last
//!   urgent submission, and its outcomes are reported ([`Queue::report_outcomes`]).
//! - **Declared work** ([`Queue::declare`]): what a declarative object (an `Image`, a Flux
//!   `ImageRepository`) asks for, outside the plan: only new or changed work is submitted (the rule
//!   [`Queue::submit_plan`] uses), its targets are kept like urgent ones until no object declares them
//!   ([`Queue::undeclare`]), [`Queue::refresh_declared`] copies them again past the positive cache,
//!   and their outcomes are reported per object ([`Queue::report_outcomes`]).
//! - **Dropping waiting work** ([`Queue::drop_waiting`], when the replica loses leadership): queued
//!   targets and those in cooldown are forgotten; running copies finish and schedule nothing more.
//! - **Dry pull**: no copy call, one log line per task. Dry runs are the copier's
//!   ([`CopyOptions::dry_run`]).
//!
//! Every outcome is one structured log line. Memory is bounded by the number of distinct targets
//! waiting or in cooldown; finished targets live in bounded caches.

mod kept;
mod report;
mod status;

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::copy::{Copier, CopyError, CopyOptions, CopyReport, CopyRequest, Outcome};
use crate::metrics::Metrics;
use crate::plan::{MirrorTask, TargetKey, union_users};
use crate::reference::{Digest, ImageRef};
use crate::task_state::TaskState;
pub use crate::workload::DeclaredSource;
use crate::workload::Workload;
use kept::Kept;
pub use kept::{DeclaringObject, Interest, SourceProblem};
pub use report::{FailureReport, TaskOutcome};
use status::Counters;
pub use status::{ExcludedImages, QueueCounters, TaskStatus, UnmatchedImages};

/// How long a successful copy is trusted without asking any registry.
pub const DEFAULT_POSITIVE_TTL: Duration = Duration::from_secs(6 * 60 * 60);

/// Finished targets whose status is kept for [`Queue::snapshot`].
pub const DEFAULT_STATUS_CAPACITY: u64 = 10_000;

/// Targets the positive cache remembers.
const POSITIVE_CAPACITY: u64 = 100_000;

/// The shortest time an urgent target stays urgent after its last urgent submission.
const MIN_URGENT_TTL: Duration = Duration::from_secs(60 * 60);

/// With the cooldown disabled, the wait before the first automatic retry of a failed target.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// With the cooldown disabled, the longest wait between automatic retries (controller-runtime's
/// default, which k8s-copycat's failures were requeued with).
pub const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_secs(1000);

/// How the queue works.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Copies running at the same time (at least 1).
    pub workers: usize,
    /// Wait after a failure before retrying the target; `None` (or zero) disables the cooldown: a
    /// failed target is then retried after [`QueueOptions::retry_backoff`], or when submitted again.
    pub failure_cooldown: Option<Duration>,
    /// With the cooldown disabled, the wait before retrying a target that failed once; it doubles
    /// with each consecutive failure.
    pub retry_backoff: Duration,
    /// The longest wait [`QueueOptions::retry_backoff`] grows to.
    pub max_retry_backoff: Duration,
    /// How long a successful copy is trusted (zero: not at all).
    pub positive_ttl: Duration,
    /// How to copy; `platforms` is replaced by each task's.
    pub copy: CopyOptions,
    /// Make no registry request: log what would be mirrored.
    pub dry_pull: bool,
    /// Finished targets kept for status.
    pub status_capacity: u64,
    /// Missing platforms not worth a warning, matched against `<source>|<os>/<arch>`.
    pub ignore_missing_platforms: Vec<regex::Regex>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            workers: 2,
            failure_cooldown: Some(Duration::from_secs(60 * 60)),
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            max_retry_backoff: DEFAULT_MAX_RETRY_BACKOFF,
            positive_ttl: DEFAULT_POSITIVE_TTL,
            copy: CopyOptions::default(),
            dry_pull: false,
            status_capacity: DEFAULT_STATUS_CAPACITY,
            ignore_missing_platforms: vec![],
        }
    }
}

/// What [`Queue::submit_plan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSubmitted {
    /// Tasks submitted (new, or their work changed).
    pub submitted: usize,
    /// Waiting targets dropped because the plan no longer holds them.
    pub forgotten: usize,
}

/// What the queue needs of the copy engine: a small port, so that the state machine can be tested
/// with a fake; [`Copier`] is the real one.
pub trait CopyEngine: Send + Sync + 'static {
    /// Copies `request` ([`Copier::copy`]).
    fn copy<'a>(
        &'a self,
        request: &'a CopyRequest,
        options: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<CopyReport, CopyError>>;

    /// The manifest digest and architecture of `source` ([`Copier::source_architecture`]).
    fn source_architecture<'a>(
        &'a self,
        source: &'a ImageRef,
        options: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<(Digest, String), CopyError>>;
}

impl CopyEngine for Copier {
    fn copy<'a>(
        &'a self,
        request: &'a CopyRequest,
        options: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<CopyReport, CopyError>> {
        Box::pin(Copier::copy(self, request, options))
    }

    fn source_architecture<'a>(
        &'a self,
        source: &'a ImageRef,
        options: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<(Digest, String), CopyError>> {
        Box::pin(Copier::source_architecture(self, source, options))
    }
}

/// The mirror queue. Cloning is cheap and every clone is the same queue; when the last clone is
/// dropped the workers stop after their current copy (prefer [`Queue::shutdown`]).
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Stops the workers when the last [`Queue`] clone goes (the workers themselves hold [`Inner`]).
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop();
    }
}

struct Inner {
    copier: Box<dyn CopyEngine>,
    options: QueueOptions,
    state: Mutex<State>,
    /// Keys of queued entries, each sent once when its entry becomes queued.
    ready: mpsc::UnboundedSender<TargetKey>,
    /// Keys of queued urgent entries, taken before those of `ready`.
    urgent_ready: mpsc::UnboundedSender<TargetKey>,
    /// Targets kept besides the plan: urgent and declared ones.
    kept: Kept,
    /// Where the outcomes of urgent or declared targets are reported ([`Queue::report_outcomes`]).
    subscribers: Mutex<Vec<(Interest, mpsc::UnboundedSender<TaskOutcome>)>>,
    /// The targets of the last plan ([`Queue::retain_planned`]).
    planned: Mutex<HashSet<TargetKey>>,
    /// Work that succeeded per target (users cleared).
    positive: moka::sync::Cache<TargetKey, Arc<MirrorTask>>,
    /// Status of targets no longer in `State::entries`.
    finished: moka::sync::Cache<TargetKey, Arc<TaskStatus>>,
    counters: Counters,
    /// Queued plus running entries, for [`Queue::wait_idle`].
    busy: watch::Sender<usize>,
    /// Set once: workers take no more tasks.
    stopping: watch::Sender<bool>,
    /// Where cooldown timers run.
    runtime: Handle,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Cooldown and backoff generations, so a stale timer cannot re-queue a newer wait.
    generation: AtomicU64,
    /// Where outcomes are recorded for `/metrics`, once set.
    metrics: OnceLock<Arc<Metrics>>,
    /// Where failures are reported (for Kubernetes Events), once set.
    failures: OnceLock<mpsc::Sender<FailureReport>>,
    /// The work (users left out) of every target of the last plan submitted, by target
    /// ([`Queue::submit_plan`]).
    last_plan: Mutex<HashMap<String, MirrorTask>>,
    /// `target|platform` pairs already warned about, so a missing platform is reported once, not on
    /// every retry or rescan.
    reported_missing: moka::sync::Cache<String, ()>,
}

/// Targets queued, running or cooling down.
#[derive(Default)]
struct State {
    entries: HashMap<TargetKey, Entry>,
    queued: usize,
    running: usize,
    cooling: usize,
    stopped: bool,
}

struct Entry {
    /// The latest request (while running: the running one, plus users that arrived meanwhile).
    task: MirrorTask,
    phase: Phase,
    last: Attempt,
    /// Consecutive failed attempts (the retry backoff doubles with each).
    failures: u32,
}

enum Phase {
    Queued,
    Running {
        /// A differing request submitted during the copy, run afterwards.
        pending: Option<Box<MirrorTask>>,
        /// Dropped while running: its outcome schedules nothing (no cooldown retry, no rerun)
        /// unless the target is submitted again meanwhile.
        dropped: Option<Unwanted>,
    },
    Cooldown {
        until: SystemTime,
        generation: u64,
        timer: AbortHandle,
    },
    /// Failed with the cooldown disabled: retried when the timer fires or when submitted again.
    Backoff {
        until: SystemTime,
        generation: u64,
        timer: AbortHandle,
    },
}

/// Why waiting work was dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unwanted {
    /// This replica no longer leads ([`Queue::drop_waiting`]): its status stays.
    NotLeading,
    /// No workload uses the target's source any more ([`Queue::retain_planned`]): its status goes.
    Unplanned,
}

/// What the last attempt left behind.
#[derive(Default, Clone)]
struct Attempt {
    /// The target the last attempt wrote to, once known (with `$arch` from the image it differs from
    /// the key).
    target: Option<String>,
    digest: Option<Digest>,
    error: Option<String>,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
    /// Related artifacts at the target, as last looked for.
    referrers: Option<u32>,
}

/// A successful attempt.
enum Done {
    Copy(CopyReport),
    DryPull,
}

impl Done {
    fn digest(&self) -> Option<Digest> {
        match self {
            Done::Copy(report) => report.digest.clone(),
            Done::DryPull => None,
        }
    }

    /// Related artifacts the target holds, when this attempt looked for them successfully.
    fn referrers(&self) -> Option<u32> {
        match self {
            Done::Copy(report) if report.referrers.checked && report.referrers.error.is_none() => {
                Some(report.referrers.found)
            }
            _ => None,
        }
    }

    fn state(&self) -> TaskState {
        match self {
            Done::Copy(CopyReport {
                outcome: Outcome::Copied | Outcome::AlreadyPresent | Outcome::Warmed,
                ..
            }) => TaskState::Mirrored,
            _ => TaskState::DryRun,
        }
    }
}

/// An attempt's outcome, with the target it named when `$arch` came from the image.
struct Attempted {
    named: Option<String>,
    result: Result<Done, Failure>,
}

impl Attempted {
    /// An outcome reached before (or without) naming the target.
    fn before_naming(result: Result<Done, Failure>) -> Attempted {
        Attempted { named: None, result }
    }
}

/// A failed attempt.
enum Failure {
    Copy(CopyError),
    /// The copy panicked; the worker survives and the target cools down like any failure.
    Panicked(String),
}

impl Failure {
    fn is_transient(&self) -> bool {
        match self {
            Failure::Copy(e) => e.is_transient(),
            Failure::Panicked(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Copy(e) => e.fmt(f),
            Failure::Panicked(message) => write!(f, "copy panicked: {message}"),
        }
    }
}

impl Queue {
    /// Starts the worker pool on the current tokio runtime (panics outside one).
    pub fn start(copier: impl CopyEngine, options: QueueOptions) -> Queue {
        let runtime = Handle::current();
        let (ready, ready_rx) = mpsc::unbounded_channel();
        let (urgent_ready, urgent_rx) = mpsc::unbounded_channel();
        // Long enough for a failed target to wait out its cooldown and be known mirrored afterwards.
        let urgent_ttl = [
            Some(options.positive_ttl),
            options.failure_cooldown,
            Some(MIN_URGENT_TTL),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(MIN_URGENT_TTL);
        let inner = Arc::new(Inner {
            copier: Box::new(copier),
            positive: moka::sync::Cache::builder()
                .max_capacity(POSITIVE_CAPACITY)
                .time_to_live(options.positive_ttl)
                .build(),
            finished: moka::sync::Cache::new(options.status_capacity),
            reported_missing: moka::sync::Cache::new(options.status_capacity),
            options,
            state: Mutex::default(),
            ready,
            urgent_ready,
            kept: Kept::new(POSITIVE_CAPACITY, urgent_ttl),
            subscribers: Mutex::default(),
            planned: Mutex::default(),
            counters: Counters::default(),
            busy: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
            runtime: runtime.clone(),
            workers: Mutex::default(),
            generation: AtomicU64::new(0),
            metrics: OnceLock::new(),
            failures: OnceLock::new(),
            last_plan: Mutex::default(),
        });
        let ready_rx = Arc::new(tokio::sync::Mutex::new((urgent_rx, ready_rx)));
        let handles = (0..inner.options.workers.max(1))
            .map(|_| runtime.spawn(work(inner.clone(), ready_rx.clone())))
            .collect();
        *lock(&inner.workers) = handles;
        Queue {
            inner: inner.clone(),
            _owner: Arc::new(Owner(inner)),
        }
    }

    /// Hands a task to the queue. Never blocks and never fails: the task is merged, skipped (known
    /// mirrored), deferred (cooldown) or queued. Ignored after [`Queue::shutdown`].
    pub fn submit(&self, mut task: MirrorTask) {
        let inner = &self.inner;
        union_users(&mut task.users, []); // bounds them
        let key = task.key();
        let mut guard = inner.lock();
        let st = &mut *guard;
        if st.stopped {
            tracing::debug!(target = %key, "queue stopped; task ignored");
            return;
        }
        Counters::add(&inner.counters.submitted, 1);
        if let Some(entry) = st.entries.get_mut(&key) {
            Counters::add(&inner.counters.merged, 1);
            match &mut entry.phase {
                Phase::Queued | Phase::Cooldown { .. } => entry.task.absorb(task),
                // Without a cooldown, a submission retries a failed target at once.
                Phase::Backoff { timer, .. } => {
                    timer.abort();
                    entry.task.absorb(task);
                    entry.phase = Phase::Queued;
                    st.queued += 1;
                    inner.publish(st);
                    inner.enqueue(key);
                }
                Phase::Running { pending, dropped } => {
                    // Wanted again: the outcome schedules a retry or rerun as usual.
                    *dropped = None;
                    match pending {
                        Some(pending) => pending.absorb(task),
                        None if entry.task.same_work(&task) && (entry.task.repair || !task.repair) => {
                            union_users(&mut entry.task.users, task.users)
                        }
                        None => *pending = Some(Box::new(task)),
                    }
                }
            }
            return;
        }
        if let Some(done) = inner.positive.get(&key)
            && done.same_work(&task)
        {
            Counters::add(&inner.counters.skipped_by_cache, 1);
            tracing::debug!(target = %key, source = %task.request.source, "known mirrored; skipped");
            inner.note_users(&key, task.users);
            return;
        }
        let last = inner.finished.get(&key).map(|s| s.attempt()).unwrap_or_default();
        st.entries.insert(
            key.clone(),
            Entry {
                task,
                phase: Phase::Queued,
                last,
                failures: 0,
            },
        );
        st.queued += 1;
        inner.publish(st);
        inner.enqueue(key);
    }

    /// Submits `task` ahead of routine work (copy on the fly: a Pod waits for this image). Like
    /// [`Queue::submit`] otherwise: merged into the target's entry, skipped when known mirrored, held
    /// by its cooldown; a target already queued as routine work is moved ahead. Returns `false` when
    /// the target is known mirrored (nothing will run).
    pub fn submit_urgent(&self, task: MirrorTask) -> bool {
        let key = task.key();
        self.inner.kept.urgent.insert(key.clone(), ());
        let (known, queued) = {
            let st = self.inner.lock();
            let entry = st.entries.get(&key);
            let known = entry.is_none() && self.inner.positive.get(&key).is_some_and(|done| done.same_work(&task));
            (
                known,
                matches!(
                    entry,
                    Some(Entry {
                        phase: Phase::Queued,
                        ..
                    })
                ),
            )
        };
        self.submit(task);
        if queued {
            // Its key also waits in the routine channel; `begin` skips whichever comes second.
            let _ = self.inner.urgent_ready.send(key);
        }
        !known
    }

    /// Reports the outcome of every attempt at a target of `interest` (urgent ones, or those objects
    /// of one kind declare) to `to` from now on.
    pub fn report_outcomes(&self, interest: Interest, to: mpsc::UnboundedSender<TaskOutcome>) {
        lock(&self.inner.subscribers).push((interest, to));
    }

    /// Replaces what the declarative object `source` asks for by `tasks` (an `Image`'s tags, an
    /// `ImageRepository`'s latest tags): submits the tasks that are new, whose work changed
    /// ([`MirrorTask::same_work`], as [`Queue::submit_plan`]) or that the queue does not know any more
    /// (dropped when leadership was lost, say), but not a tag it copied now declared pinned to the
    /// digest copied; keeps their targets whatever the plan holds (and they are checked, repaired and
    /// swept like planned ones: [`Queue::declared_tasks`]); forgets the targets no object declares any
    /// more and no plan holds, as [`Queue::retain_planned`] does.
    pub fn declare(&self, source: DeclaredSource, tasks: Vec<MirrorTask>) -> PlanSubmitted {
        let declaration = self.inner.kept.declare(&source, tasks);
        // A copy done by tag and now declared by the digest it copied is not copied again: the
        // positive cache takes the pinned work.
        let mut unknown = vec![];
        for (before, task) in declaration.pinned {
            let key = task.key();
            if self
                .inner
                .positive
                .get(&key)
                .is_some_and(|done| done.same_work(&before))
            {
                self.inner.positive.insert(key, Arc::new(task.work()));
            } else {
                unknown.push(task);
            }
        }
        unknown.extend(
            declaration
                .unchanged
                .into_iter()
                .filter(|task| !self.knows(&task.key())),
        );
        let submitted = declaration.changed.len() + unknown.len();
        for task in declaration.changed.into_iter().chain(unknown) {
            tracing::debug!(%source, source_image = %task.request.source, target = %task.key(), "declared");
            self.submit(task);
        }
        let forgotten = {
            let planned = lock(&self.inner.planned);
            let gone: HashSet<&TargetKey> = declaration
                .undeclared
                .iter()
                .filter(|key| !planned.contains(*key) && !self.inner.kept.keeps(key))
                .collect();
            self.forget_where(|key| gone.contains(key))
        };
        // After the submissions: a watcher that sees the change finds new work queued already.
        if declaration.any {
            self.inner.kept.changed();
        }
        PlanSubmitted { submitted, forgotten }
    }

    /// The work of every target objects declare now (users left out), once per target, with the
    /// objects declaring it.
    pub fn declared_tasks(&self) -> Vec<(MirrorTask, Vec<DeclaredSource>)> {
        self.inner.kept.all_declared()
    }

    /// Changes whenever what objects declare changes (targets declared or undeclared, their work
    /// changed): then [`Queue::declared_tasks`] says what they declare.
    pub fn declared_changes(&self) -> watch::Receiver<u64> {
        self.inner.kept.changes()
    }

    /// Forgets what `source` declared (the object was deleted): [`Queue::declare`] with nothing,
    /// and its problem.
    pub fn undeclare(&self, source: DeclaredSource) -> usize {
        self.inner.kept.set_problem(&source, None);
        self.declare(source, vec![]).forgotten
    }

    /// Records what stands in the way of `source`'s copies while they go ahead (`None`: nothing any
    /// more): shown with the object in the `/status` entry of every target it declares
    /// ([`TaskStatus::declared_by`]).
    pub fn declare_problem(&self, source: &DeclaredSource, problem: Option<SourceProblem>) {
        self.inner.kept.set_problem(source, problem);
    }

    /// Submits every target `source` declares again past the positive cache (a `Recurrent` object,
    /// once per frequency: HEAD-first, an unchanged image costs two HEADs); returns how many.
    pub fn refresh_declared(&self, source: &DeclaredSource) -> usize {
        let tasks = self.inner.kept.declared(source);
        let n = tasks.len();
        for task in tasks {
            self.inner.positive.invalidate(&task.key());
            self.submit(task);
        }
        n
    }

    /// Whether the queue has an entry for `key` or knows it mirrored.
    fn knows(&self, key: &TargetKey) -> bool {
        self.inner.lock().entries.contains_key(key) || self.inner.positive.contains_key(key)
    }

    /// Submits `task` to be copied in repair mode (a check found its target incomplete) although
    /// the positive cache may know the target mirrored: the cache entry is dropped first, so the
    /// copy runs, and it walks the whole tree at the target, copying only what is missing there.
    pub fn repair(&self, mut task: MirrorTask) {
        task.repair = true;
        self.inner.positive.invalidate(&task.key());
        self.submit(task);
    }

    /// Submits every task of the last plan and every declared one again past the positive cache (the
    /// daemon does, once per `referrersInterval`, so that new signatures upstream reach the target);
    /// returns how many targets.
    pub fn resubmit_mirrored(&self) -> usize {
        let mut tasks: HashMap<TargetKey, MirrorTask> = lock(&self.inner.last_plan)
            .values()
            .map(|task| (task.key(), task.clone()))
            .collect();
        for (task, _) in self.inner.kept.all_declared() {
            tasks.entry(task.key()).or_insert(task);
        }
        let n = tasks.len();
        for (key, mut task) in tasks {
            // The plan keeps the work only; the users shown are those of the last attempt.
            if let Some(done) = self.inner.finished.get(&key) {
                task.users = done.users.clone();
            }
            self.inner.positive.invalidate(&key);
            self.submit(task);
        }
        n
    }

    /// Hands a whole plan to the queue: submits the tasks that are new or whose work changed since the
    /// last plan (by [`MirrorTask::same_work`], the rule the positive cache uses: their source,
    /// platforms or pull-secret credentials, so a corrected pull Secret reaches the next attempt of
    /// every task using it), all of them when `everything`, and forgets the targets the plan no
    /// longer holds ([`Queue::retain_planned`]).
    pub fn submit_plan(&self, tasks: Vec<MirrorTask>, everything: bool) -> PlanSubmitted {
        let planned: HashSet<TargetKey> = tasks.iter().map(MirrorTask::key).collect();
        let mut current = HashMap::with_capacity(tasks.len());
        let mut submitted = 0;
        {
            let last = lock(&self.inner.last_plan);
            for task in tasks {
                let target = task.request.target_display(task.request.source.digest());
                let work = task.work();
                if everything || !last.get(&target).is_some_and(|done| done.same_work(&work)) {
                    submitted += 1;
                    tracing::debug!(source = %task.request.source, target = %task.request.target_display(None), "planned");
                    self.submit(task);
                }
                current.insert(target, work);
            }
        }
        *lock(&self.inner.last_plan) = current;
        let forgotten = self.retain_planned(&planned);
        PlanSubmitted { submitted, forgotten }
    }

    /// Forgets the last plan: the next [`Queue::submit_plan`] submits every task.
    pub fn forget_plan(&self) {
        lock(&self.inner.last_plan).clear();
    }

    /// Records every attempt's outcome in `metrics` from now on (set once; later calls are ignored).
    pub fn record_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Reports every failed attempt to `to` from now on (set once; later calls are ignored). Never
    /// blocks a worker: when `to` is full, the report is dropped.
    pub fn report_failures(&self, to: mpsc::Sender<FailureReport>) {
        let _ = self.inner.failures.set(to);
    }

    /// Ends every cooldown and queues those targets now; returns how many there were.
    pub fn reset_cooldown(&self) -> usize {
        let inner = &self.inner;
        let mut guard = inner.lock();
        let st = &mut *guard;
        if st.stopped {
            return 0;
        }
        let mut cleared = 0;
        for (key, entry) in &mut st.entries {
            if let Phase::Cooldown { timer, .. } = &entry.phase {
                timer.abort();
                entry.phase = Phase::Queued;
                cleared += 1;
                inner.enqueue(key.clone());
            }
        }
        st.cooling -= cleared;
        st.queued += cleared;
        Counters::add(&inner.counters.retried, cleared as u64);
        inner.publish(st);
        tracing::info!(cleared, "failure cooldown reset; targets queued again");
        cleared
    }

    /// Drops every target waiting for a worker or for the end of its cooldown, and the reruns planned
    /// for running ones; returns how many targets were dropped. For a replica that lost leadership:
    /// the new leader submits its own plan, and work left here would duplicate it. Running copies
    /// finish (they are idempotent), but schedule nothing afterwards unless submitted again.
    pub fn drop_waiting(&self) -> usize {
        self.drop_waiting_where(|_| true, Unwanted::NotLeading)
    }

    /// Forgets the targets `planned` does not hold (no workload uses their source any more): their
    /// queued work, cooldown and retries are dropped as by [`Queue::drop_waiting`], and their status
    /// leaves [`Queue::snapshot`]. Returns how many waiting targets were dropped. Without this, an
    /// image that failed would be retried after every cooldown for as long as the daemon runs.
    pub fn retain_planned(&self, planned: &HashSet<TargetKey>) -> usize {
        // Urgent targets come from failed pulls, declared ones from objects, not from the plan.
        let forgotten = self.forget_where(|key| !planned.contains(key) && !self.inner.kept.keeps(key));
        *lock(&self.inner.planned) = planned.clone();
        forgotten
    }

    /// Drops the waiting work of the targets `unwanted` selects and their status; returns how many
    /// waiting targets were dropped.
    fn forget_where(&self, unwanted: impl Fn(&TargetKey) -> bool) -> usize {
        let dropped = self.drop_waiting_where(&unwanted, Unwanted::Unplanned);
        let finished = &self.inner.finished;
        let gone: Vec<Arc<TargetKey>> = finished
            .iter()
            .map(|(key, _)| key)
            .filter(|key| unwanted(key))
            .collect();
        for key in gone {
            finished.invalidate(&*key);
        }
        dropped
    }

    /// [`Queue::drop_waiting`] for the targets `drop` selects.
    fn drop_waiting_where(&self, drop: impl Fn(&TargetKey) -> bool, why: Unwanted) -> usize {
        let inner = &self.inner;
        let mut guard = inner.lock();
        let st = &mut *guard;
        let (mut queued, mut cooling) = (0, 0);
        let before = st.entries.len();
        // Keys already sent to the workers stay in the channel; `begin` skips keys without an entry.
        st.entries.retain(|key, entry| {
            if !drop(key) {
                return true;
            }
            match &mut entry.phase {
                Phase::Queued => {
                    queued += 1;
                    false
                }
                Phase::Cooldown { timer, .. } => {
                    timer.abort();
                    cooling += 1;
                    false
                }
                Phase::Backoff { timer, .. } => {
                    timer.abort();
                    false
                }
                Phase::Running { pending, dropped } => {
                    *pending = None;
                    *dropped = Some(why);
                    true
                }
            }
        });
        st.queued -= queued;
        st.cooling -= cooling;
        inner.publish(st);
        before - st.entries.len()
    }

    /// Whether failures put targets in cooldown (for `/reset-cooldown`'s answer).
    pub fn cooldown_enabled(&self) -> bool {
        self.inner.cooldown().is_some()
    }

    /// Waits until nothing is queued or running (targets in cooldown do not count); `false` if
    /// `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut busy = self.inner.busy.subscribe();
        matches!(
            tokio::time::timeout(timeout, busy.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }

    /// Every target the queue knows: those queued, running or cooling down, and the most recent
    /// finished ones (bounded), sorted by target.
    pub fn snapshot(&self) -> Vec<TaskStatus> {
        let st = self.inner.lock();
        let declared = self.inner.kept.view();
        let mut all: Vec<TaskStatus> = st
            .entries
            .iter()
            .map(|(key, entry)| TaskStatus {
                declared_by: declared.declaring(key),
                ..entry.status(key, None)
            })
            .collect();
        all.extend(
            self.inner
                .finished
                .iter()
                .filter(|(key, _)| !st.entries.contains_key(&**key))
                .map(|(key, status)| TaskStatus {
                    declared_by: declared.declaring(&key),
                    ..(*status).clone()
                }),
        );
        drop(declared);
        drop(st);
        all.sort_by(|a, b| a.target.cmp(&b.target));
        all
    }

    /// The keys of the targets queued or being copied right now (cheaper than a snapshot).
    pub fn busy(&self) -> HashSet<String> {
        let st = self.inner.lock();
        st.entries
            .iter()
            .filter(|(_, e)| matches!(e.phase, Phase::Queued | Phase::Running { .. }))
            .map(|(key, _)| key.to_string())
            .collect()
    }

    /// Totals since the start and current gauges.
    pub fn counters(&self) -> QueueCounters {
        let st = self.inner.lock();
        QueueCounters {
            queued: st.queued,
            running: st.running,
            cooling_down: st.cooling,
            ..self.inner.counters.totals()
        }
    }

    /// Stops taking tasks and cancels cooldown timers, lets running copies finish within `grace`,
    /// then cancels the rest (their futures are dropped: no tag is written by a cancelled copy).
    pub async fn shutdown(self, grace: Duration) {
        let inner = &self.inner;
        inner.stop();
        let workers = std::mem::take(&mut *lock(&inner.workers));
        let running = inner.lock().running;
        if running > 0 {
            tracing::info!(running, grace = %humantime::format_duration(grace), "waiting for running copies");
        }
        let aborts: Vec<AbortHandle> = workers.iter().map(JoinHandle::abort_handle).collect();
        let mut all = futures::future::join_all(workers);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            let running = inner.lock().running;
            tracing::warn!(
                running,
                "copies still running after the shutdown grace; cancelling them"
            );
            aborts.iter().for_each(AbortHandle::abort);
            all.await;
            let mut guard = inner.lock();
            let st = &mut *guard;
            for entry in st.entries.values_mut() {
                if let Phase::Running { pending, .. } = &mut entry.phase {
                    if let Some(pending) = pending.take() {
                        entry.task.absorb(*pending);
                    }
                    entry.phase = Phase::Queued;
                    entry.last.error = Some("cancelled by shutdown".into());
                    st.running -= 1;
                    st.queued += 1;
                }
            }
            inner.publish(st);
        }
    }
}

/// The keys of queued targets: urgent ones, then routine ones.
type Ready = Arc<tokio::sync::Mutex<(mpsc::UnboundedReceiver<TargetKey>, mpsc::UnboundedReceiver<TargetKey>)>>;

/// The next queued key, an urgent one first; `None` once the queue is gone.
async fn next_key(ready: &Ready) -> Option<TargetKey> {
    let mut guard = ready.lock().await;
    let (urgent, routine) = &mut *guard;
    tokio::select! {
        biased;
        Some(key) = urgent.recv() => Some(key),
        key = routine.recv() => key,
    }
}

/// One worker: takes queued targets until the queue stops.
async fn work(inner: Arc<Inner>, ready: Ready) {
    let mut stopping = inner.stopping.subscribe();
    loop {
        let key = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => return,
            key = next_key(&ready) => match key {
                Some(key) => key,
                None => return,
            },
        };
        let Some(task) = inner.begin(&key) else {
            continue;
        };
        let started = Instant::now();
        let attempted = inner.execute(&task).await;
        inner.finish(key, task, attempted, started.elapsed());
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The failure cooldown, if enabled.
    fn cooldown(&self) -> Option<Duration> {
        self.options.failure_cooldown.filter(|d| !d.is_zero())
    }

    fn publish(&self, st: &State) {
        let busy = st.queued + st.running;
        self.busy.send_if_modified(|n| std::mem::replace(n, busy) != busy);
    }

    /// No more tasks: marks the state stopped, cancels cooldown timers, tells the workers.
    fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        for entry in st.entries.values() {
            if let Phase::Cooldown { timer, .. } | Phase::Backoff { timer, .. } = &entry.phase {
                timer.abort();
            }
        }
        drop(st);
        self.stopping.send_replace(true);
    }

    /// Moves a queued target to running; `None` when there is nothing to run (known mirrored by now).
    fn begin(&self, key: &TargetKey) -> Option<MirrorTask> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let entry = st.entries.get_mut(key)?;
        if !matches!(entry.phase, Phase::Queued) {
            return None;
        }
        // A merge may have turned the task back into work that is known done.
        if let Some(done) = self.positive.get(key)
            && done.same_work(&entry.task)
            && !entry.task.repair
        {
            let entry = st.entries.remove(key).expect("entry present");
            st.queued -= 1;
            self.publish(st);
            Counters::add(&self.counters.skipped_by_cache, 1);
            self.note_users(key, entry.task.users);
            return None;
        }
        entry.phase = Phase::Running {
            pending: None,
            dropped: None,
        };
        entry.last.started = Some(SystemTime::now());
        st.queued -= 1;
        st.running += 1;
        Some(entry.task.clone())
    }

    /// One attempt at `task`, in a `mirror` span naming its source and target: every line the copy
    /// engine and the registry client log meanwhile carries the image it works for.
    #[tracing::instrument(name = "mirror", skip_all, fields(source = %task.request.source, target = %task.key()))]
    async fn execute(&self, task: &MirrorTask) -> Attempted {
        if self.options.dry_pull {
            return Attempted::before_naming(Ok(Done::DryPull));
        }
        let options = CopyOptions {
            platforms: task.platforms.clone(),
            source_credentials: task.source_credentials.clone(),
            repair: task.repair,
            ..self.options.copy.clone()
        };
        let read_arch = async |source: &ImageRef| self.copier.source_architecture(source, &options).await;
        let request = match task.name_target(read_arch).await {
            Ok(request) => request,
            Err(e) => return Attempted::before_naming(Err(Failure::Copy(e))),
        };
        let named = task
            .arch_naming
            .is_some()
            .then(|| request.target_display(request.source.digest()));
        let result = match AssertUnwindSafe(self.copier.copy(&request, &options))
            .catch_unwind()
            .await
        {
            Ok(Ok(report)) => Ok(Done::Copy(report)),
            Ok(Err(e)) => Err(Failure::Copy(e)),
            Err(panic) => Err(Failure::Panicked(panic_message(panic.as_ref()))),
        };
        Attempted { named, result }
    }

    /// Records an attempt's outcome and decides what comes next for the target.
    fn finish(self: &Arc<Self>, key: TargetKey, ran: MirrorTask, attempted: Attempted, took: Duration) {
        let Attempted { named, result } = attempted;
        // A target dropped while it ran waits for no retry. (Submitted again between this check and
        // the update below, a failure ends `failed` and waits for the next submission instead.)
        let (dropped, failures) = match self.lock().entries.get(&key) {
            Some(Entry {
                phase: Phase::Running { dropped, .. },
                failures,
                ..
            }) => (*dropped, *failures),
            Some(e) => (None, e.failures),
            None => (None, 0),
        };
        let cooldown = self.cooldown().filter(|_| dropped.is_none());
        let backoff = (self.cooldown().is_none() && dropped.is_none()).then(|| self.backoff(failures + 1));
        self.report(&key, named.as_deref(), &ran, &result, took, cooldown.or(backoff));
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(mut entry) = st.entries.remove(&key) else {
            return;
        };
        // Read again: a submission since the check above makes the target wanted again.
        let Phase::Running { pending, dropped } = std::mem::replace(&mut entry.phase, Phase::Queued) else {
            st.entries.insert(key, entry);
            return;
        };
        st.running -= 1;
        entry.last.finished = Some(SystemTime::now());
        if named.is_some() {
            entry.last.target = named;
        }
        // A repair asked during a plain copy runs afterwards too.
        let repair_asked = pending.as_ref().is_some_and(|p| p.repair && !ran.repair);
        let rerun = repair_asked || pending.as_ref().is_some_and(|p| !p.same_work(&ran));
        if let Some(pending) = pending {
            entry.task.absorb(*pending);
        }
        let next = match result {
            Ok(done) => {
                entry.task.repair = repair_asked;
                self.positive.insert(key.clone(), Arc::new(ran.work()));
                entry.last.digest = done.digest();
                entry.last.referrers = done.referrers().or(entry.last.referrers);
                entry.last.error = None;
                (!rerun).then(|| done.state())
            }
            Err(failure) => {
                self.positive.invalidate(&key);
                entry.last.error = Some(failure.to_string());
                entry.failures = entry.failures.saturating_add(1);
                if let Some(after) = cooldown {
                    entry.phase = self.wait(&key, after, false);
                    st.cooling += 1;
                    st.entries.insert(key, entry);
                    self.publish(st);
                    return;
                }
                if let Some(after) = backoff.filter(|_| !rerun) {
                    entry.phase = self.wait(&key, after, true);
                    st.entries.insert(key, entry);
                    self.publish(st);
                    return;
                }
                (!rerun).then_some(TaskState::Failed)
            }
        };
        match next {
            Some(_) if dropped == Some(Unwanted::Unplanned) => {}
            Some(state) => {
                self.finished
                    .insert(key.clone(), Arc::new(entry.status(&key, Some(state))));
            }
            None => {
                Counters::add(&self.counters.reruns, 1);
                st.queued += 1;
                st.entries.insert(key.clone(), entry);
                self.enqueue(key);
            }
        }
        self.publish(st);
    }

    /// With the cooldown disabled, the wait before retrying a target that failed `failures` times in
    /// a row: the base backoff, doubled for each failure after the first, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.options
            .retry_backoff
            .saturating_mul(1 << doublings)
            .min(self.options.max_retry_backoff)
    }

    /// Starts the timer that queues `key` again after `after`: the end of its cooldown, or of its
    /// retry backoff.
    fn wait(self: &Arc<Self>, key: &TargetKey, after: Duration, backoff: bool) -> Phase {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let queue = Arc::downgrade(self);
        let expired = key.clone();
        let timer = self.runtime.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(queue) = queue.upgrade() {
                queue.cooldown_expired(&expired, generation);
            }
        });
        let until = SystemTime::now() + after;
        let timer = timer.abort_handle();
        if backoff {
            Phase::Backoff {
                until,
                generation,
                timer,
            }
        } else {
            Phase::Cooldown {
                until,
                generation,
                timer,
            }
        }
    }

    fn cooldown_expired(&self, key: &TargetKey, generation: u64) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.stopped {
            return;
        }
        let Some(entry) = st.entries.get_mut(key) else {
            return;
        };
        match entry.phase {
            Phase::Cooldown { generation: g, .. } if g == generation => st.cooling -= 1,
            Phase::Backoff { generation: g, .. } if g == generation => {}
            _ => return,
        }
        entry.phase = Phase::Queued;
        tracing::debug!(target = %key, source = %entry.task.request.source, "cooldown over; retrying");
        st.queued += 1;
        Counters::add(&self.counters.retried, 1);
        self.publish(st);
        self.enqueue(key.clone());
    }

    /// Hands a queued target's key to the workers: ahead of routine work when it is urgent.
    fn enqueue(&self, key: TargetKey) {
        let channel = if self.kept.urgent.contains_key(&key) {
            &self.urgent_ready
        } else {
            &self.ready
        };
        let _ = channel.send(key);
    }

    /// Adds users to a finished target's status (a cached skip still says who uses the image).
    fn note_users(&self, key: &TargetKey, users: Vec<Workload>) {
        if let Some(status) = self.finished.get(key)
            && users.iter().any(|u| !status.users.contains(u))
        {
            let mut status = (*status).clone();
            union_users(&mut status.users, users);
            self.finished.insert(key.clone(), Arc::new(status));
        }
    }
}

impl Entry {
    /// Status of an active entry, or of a finished one in `finished`.
    fn status(&self, key: &TargetKey, finished: Option<TaskState>) -> TaskStatus {
        let (state, next_retry) = match (&self.phase, finished) {
            (_, Some(state)) => (state, None),
            (Phase::Queued, None) => (TaskState::Queued, None),
            (Phase::Running { .. }, None) => (TaskState::Running, None),
            (Phase::Cooldown { until, .. }, None) => (TaskState::Cooldown, Some(*until)),
            (Phase::Backoff { until, .. }, None) => (TaskState::Failed, Some(*until)),
        };
        TaskStatus {
            target: self.last.target.clone().unwrap_or_else(|| key.to_string()),
            key: key.to_string(),
            source: self.task.request.source.to_string(),
            state,
            digest: self.last.digest.clone(),
            last_error: self.last.error.clone(),
            next_retry,
            users: self.task.users.clone(),
            started: self.last.started,
            finished: self.last.finished,
            excluded_by: None,
            kept_source: None,
            referrers: self.last.referrers,
            declared_by: vec![],
        }
    }
}

impl TaskStatus {
    fn attempt(&self) -> Attempt {
        Attempt {
            target: Some(self.target.clone()),
            digest: self.digest.clone(),
            error: self.last_error.clone(),
            started: self.started,
            finished: self.finished,
            referrers: self.referrers,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests;
