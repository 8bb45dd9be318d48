//! `copycat run`: watch the cluster, plan mirror tasks from what it runs, mirror them through the
//! queue. One loop owns the inventory; planning happens shortly after changes settle, and again on
//! the `forceReconcileMinutes` timer.
//!
//! With leader election every replica watches and plans (so a follower takes over at once), but
//! only the leader submits to the queue: all of the current plan when it gains the Lease, nothing
//! more from the moment it loses it, when the queued tasks are dropped too (the new leader submits
//! its own plan).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch as channel};
use tokio::time::Instant;

use crate::config::Config;
use crate::controllers::flux::FluxController;
use crate::controllers::image::ImageController;
use crate::coverage::{BackupStates, RestoreDrills, Verifier, periodic};
use crate::discovery::health::WatchHealth;
use crate::discovery::inventory::{Feed, Inventory, Update, Watched};
use crate::discovery::watch;
use crate::events::{self, Emitter};
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::on_the_fly::OnTheFly;
use crate::plan::{Pass, PlanState, Planner, TargetConflict};
use crate::queue::{ExcludedImages, Queue};
use crate::referrer_policy::ReferrerPolicy;
use crate::server::{self, Admin, PlanSummary, RescanRequest};
use crate::wiring::DaemonParts;
use crate::workload::{Kind, Workload};

/// How long changes may keep arriving before a plan is made (a rollout touches many objects at once).
const SETTLE: Duration = Duration::from_millis(250);

/// The longest the first full plan waits, once the watches readiness needs have listed, for the
/// pull-secret watches (`useImagePullSecrets`) to list too: planning without them would try every
/// private image without its credentials and fail it, while a watch the RBAC refuses must not hold
/// mirroring back for ever.
const CREDENTIALS_GRACE: Duration = Duration::from_secs(3);

/// Runs the daemon with the `parts` built from `config` until SIGTERM or SIGINT.
pub async fn run(config: &Config, parts: DaemonParts) -> anyhow::Result<()> {
    let DaemonParts {
        client,
        targets,
        copier,
        queue,
        planner,
        events,
        watched,
        api_server,
        on_the_fly,
        images,
        flux,
    } = parts;
    let dockerhub = copier.registries().get("docker.io");
    let verify_copier = copier.clone();
    let queue = Queue::start(copier, queue);
    let metrics = Arc::new(Metrics::new());
    queue.record_metrics(metrics.clone());
    let identity = leader::identity();
    let leadership = if config.runtime.leader_elect {
        Leadership::elect(
            client.clone(),
            &config.runtime.pod_namespace,
            identity.clone(),
            metrics.clone(),
        )
        .await?
    } else {
        Leadership::always(&metrics)
    };
    let events_window = events;
    let events =
        events.map(|window| Emitter::new(client.clone(), identity, window, leadership.subscribe()).start(&queue));
    // Copy on the fly writes to the one target registry (start refuses it with pull-through caches).
    let on_the_fly = on_the_fly.zip(targets.first()).map(|(rules, target)| {
        OnTheFly::start(
            rules,
            target,
            queue.clone(),
            metrics.clone(),
            events.as_ref().map(|e| e.notices.clone()),
            leadership.subscribe(),
            events_window.unwrap_or(events::DEFAULT_WINDOW),
        )
    });
    // Image objects: declared to the queue, acted on only while leading.
    let image_controller = images.map(|settings| {
        tokio::spawn(
            ImageController {
                client: client.clone(),
                settings,
                queue: queue.clone(),
                registries: verify_copier.registries().clone(),
                leading: leadership.subscribe(),
                events: events.as_ref().map(|e| e.objects.clone()),
                metrics: metrics.clone(),
            }
            .run(),
        )
    });
    // Flux ImageRepository scans: declared to the queue, acted on only while leading.
    let flux_controller = flux.map(|settings| {
        tokio::spawn(
            FluxController {
                client: client.clone(),
                settings,
                queue: queue.clone(),
                copier: verify_copier.clone(),
                metrics: metrics.clone(),
                leading: leadership.subscribe(),
            }
            .run(),
        )
    });
    let ready = Arc::new(AtomicBool::new(false));
    let namespaces = planner.scope().only_names();
    let watched = watch::watched_for(&watched, config.check_node_platform, config.use_image_pull_secrets);
    let feeds = watch::feeds(&watched, namespaces.as_deref());
    let watch_health = WatchHealth::new(api_server, feeds.len());
    let (rescan_tx, rescan_rx) = mpsc::channel(8);
    let excluded = ExcludedImages::default();
    let admin = Admin::new(
        queue.clone(),
        excluded.clone(),
        metrics.clone(),
        ready.clone(),
        rescan_tx,
        config.runtime.admin_token.clone(),
        Some(dockerhub),
    )
    .with_leadership(leadership.subscribe())
    .with_watch_health(watch_health.clone());
    let admin = match &on_the_fly {
        Some(on_the_fly) => admin.with_unmatched(on_the_fly.unmatched()),
        None => admin,
    };
    // dryPull promises no registry request at all.
    let verify_interval = config.verify_interval.filter(|_| !config.dry_pull);
    let backup = verify_interval.map(|_| BackupStates::default());
    let admin = match &backup {
        Some(states) => admin.with_backup(states.clone()),
        None => admin,
    };
    // Restore drills pull targets the verification found whole: they need it.
    let drills = backup
        .clone()
        .zip(config.restore_drill_interval)
        .map(|(states, interval)| {
            states.enable_drills();
            metrics.enable_restore_drill();
            let drills = RestoreDrills {
                copier: verify_copier.clone(),
                states,
                interval,
                images: config.restore_drill_images as usize,
                blobs: config.blob_concurrency as usize,
            };
            let metrics = metrics.clone();
            tokio::spawn(drills.run(leadership.subscribe(), move |drill| {
                metrics.restore_drill(drill.result, drill.duration);
            }))
        });
    // dryRun and dryPull write nothing: no related artifact either. A pull-through cache is filled by
    // reads, never written: nothing to sweep for (and a sweep would read every image through it again).
    let pull_through = config.target_kind == crate::config::TargetKind::PullThrough;
    let referrers_travel = !config.referrer_policy().is_off() && !config.dry_run && !config.dry_pull && !pull_through;
    let verifier = backup.clone().zip(verify_interval).map(|(states, interval)| {
        let verifier = Verifier {
            copier: verify_copier,
            states,
            interval,
            concurrency: periodic::CONCURRENCY,
            blobs: config.blob_concurrency as usize,
            // A target missing related artifacts is incomplete; its repair copy brings them.
            referrers: if referrers_travel {
                config.referrer_policy()
            } else {
                ReferrerPolicy::none()
            },
        };
        let copy_again = {
            let (queue, metrics) = (queue.clone(), metrics.clone());
            move |task| {
                metrics.backup_repair();
                queue.repair(task);
            }
        };
        let busy = {
            let queue = queue.clone();
            move || queue.busy()
        };
        tokio::spawn(verifier.run(leadership.subscribe(), busy, copy_again))
    });
    // The targets objects declare enter the same coverage as the plan's.
    let declared_coverage = backup
        .clone()
        .map(|states| tokio::spawn(cover_declared(queue.clone(), states, leadership.subscribe())));
    let referrer_sweep = referrers_travel.then(|| {
        tokio::spawn(sweep_referrers(
            queue.clone(),
            config.referrers_interval,
            leadership.subscribe(),
        ))
    });
    let servers = server::start(
        &config.runtime.metrics_addr,
        &config.runtime.health_addr,
        Arc::new(admin),
    )
    .await?;
    warn_about_missing_namespaces(&client, &planner, namespaces.as_deref()).await;
    let (watchers, updates) = watch::start(client, &feeds, metrics.clone(), &watch_health);
    let scope = namespaces.map_or_else(|| "every namespace".to_owned(), |n| n.join(","));
    tracing::info!(target = %targets.join(","), dry_run = config.dry_run, dry_pull = config.dry_pull, events = events.is_some(),
        on_the_fly = on_the_fly.is_some(), kinds = config.watch_resources.join(","), namespaces = scope, "copycat started");

    let loop_state = LoopState {
        feeds: &feeds,
        planning: Planning {
            planner: &planner,
            state: PlanState::new(),
            queue: &queue,
            metrics: &metrics,
            excluded,
            backup,
            conflict_events: events.as_ref().map(|e| e.conflicts.clone()),
            reported_invalid: HashSet::new(),
            reported_conflicts: HashSet::new(),
            warned_naming: false,
            handed_on: None,
        },
        rescan: config.force_reconcile_interval,
        ready: &ready,
        queue: &queue,
        leading: leadership.subscribe(),
        on_the_fly: on_the_fly.as_ref(),
    };
    // The watchers retry for ever; if they all end anyway, nothing is watched any more, and a
    // Pod that exits 0 would not even be restarted as failing.
    let stopped = tokio::select! {
        () = plan_loop(updates, rescan_rx, loop_state) => true,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            false
        }
    };
    ready.store(false, Ordering::Release);
    servers.shutdown().await;
    drop(watchers);
    // Hand the Lease over before draining: running copies may finish while another replica leads.
    leadership.release().await;
    queue.shutdown(config.shutdown_grace_period).await;
    if let Some(events) = events {
        events.task.abort();
    }
    for task in [verifier, declared_coverage, drills, image_controller, flux_controller]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    if let Some(sweep) = referrer_sweep {
        sweep.abort();
    }
    if stopped {
        anyhow::bail!("every watcher stopped: nothing is watched any more");
    }
    Ok(())
}

/// Once per `every`, while this replica leads, submits every planned and declared target again past
/// the positive cache: the copy (two HEADs for an unchanged image) then looks for new signatures, attestations and
/// SBOMs at the source, so a re-sign upstream reaches the target within the interval. The copier
/// looks at most once per interval per image, whatever else submits it meanwhile.
async fn sweep_referrers(queue: Queue, every: Duration, leading: channel::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if *leading.borrow() {
            let targets = queue.resubmit_mirrored();
            tracing::debug!(
                targets,
                "looking for new signatures, attestations and SBOMs of every mirrored image"
            );
        }
    }
}

/// Hands the targets declarative objects declare to the periodic verification whenever they change
/// and whenever this replica gains the lead (the plan loop clears the coverage when it loses it), as
/// [`Planning::hand_on`] hands it the plan's.
async fn cover_declared(queue: Queue, states: BackupStates, mut leading: channel::Receiver<bool>) {
    let mut declared = queue.declared_changes();
    loop {
        declared.borrow_and_update();
        if *leading.borrow_and_update() {
            states.set_declared(queue.declared_tasks(), std::time::SystemTime::now());
        }
        tokio::select! {
            changed = declared.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
        }
    }
}

/// Explicitly named namespaces that do not exist yet are watched anyway (they are picked up when they
/// appear); say so once at start, since a typo looks the same. When only `names` are watched, each
/// is read on its own: namespace-scoped RBAC may allow that (a Role granting `get` on `namespaces`
/// in that namespace) but never a list of all namespaces.
async fn warn_about_missing_namespaces(client: &kube::Client, planner: &Planner, names: Option<&[String]>) {
    let api = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    if let Some(names) = names {
        for name in names {
            match api.get_metadata_opt(name).await {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(
                    namespace = name.as_str(),
                    "includeNamespaces names a namespace that does not exist (yet); it is watched once it appears"
                ),
                Err(e) => {
                    tracing::debug!(namespace = name.as_str(), error = %e, "cannot read the namespace to check it exists")
                }
            }
        }
        return;
    }
    if planner.scope().explicit_names().next().is_none() {
        return; // only globs (or everything): no name can be missing
    }
    match api.list_metadata(&Default::default()).await {
        Ok(list) => {
            let existing: HashSet<String> = list.items.into_iter().filter_map(|n| n.metadata.name).collect();
            for name in planner.scope().explicit_names().filter(|n| !existing.contains(*n)) {
                tracing::warn!(
                    namespace = name,
                    "includeNamespaces names a namespace that does not exist (yet); it is watched once it appears"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list namespaces to check includeNamespaces"),
    }
}

/// What the plan loop works with.
struct LoopState<'a> {
    feeds: &'a [Feed],
    planning: Planning<'a>,
    /// `forceReconcileMinutes`.
    rescan: Option<Duration>,
    /// Set once the initial list is complete (`/readyz`), the optional pull-secret watches aside.
    ready: &'a AtomicBool,
    queue: &'a Queue,
    /// Whether this replica leads (submits to the queue).
    leading: channel::Receiver<bool>,
    /// Copy on the fly, when enabled.
    on_the_fly: Option<&'a OnTheFly>,
}

/// Applies watch updates to the inventory and submits the tasks that changed, at most `SETTLE`
/// after the first change not yet planned (so constant churn cannot postpone planning). Full
/// rescans run on the `forceReconcileMinutes` timer and when `/force-reconcile` asks.
async fn plan_loop(mut updates: mpsc::Receiver<Update>, mut forced: mpsc::Receiver<RescanRequest>, s: LoopState<'_>) {
    let LoopState {
        feeds,
        mut planning,
        rescan,
        ready,
        queue,
        mut leading,
        on_the_fly,
    } = s;
    let mut lead = *leading.borrow_and_update();
    let mut inventory = Inventory::new();
    let mut plan_at: Option<Instant> = None;
    let mut listed = false;
    // Whether every watch, the pull-secret ones included, has listed once.
    let mut credentials_listed = false;
    let mut next_rescan = rescan.map(|every| Instant::now() + every);
    loop {
        let plan_due = until(plan_at);
        let rescan_due = until(next_rescan);
        tokio::select! {
            update = updates.recv() => match update {
                Some(update) => {
                    if let Some(on_the_fly) = on_the_fly {
                        copy_failed_pulls(on_the_fly, planning.planner, &update);
                    }
                    if inventory.apply(update) && plan_at.is_none() {
                        plan_at = Some(Instant::now() + SETTLE);
                    }
                    if !listed && feeds.iter().all(|f| !f.watched.readiness_waits() || inventory.is_synced(f)) {
                        listed = true;
                        ready.store(true, Ordering::Release);
                        tracing::info!(objects = inventory.objects().count(), "initial list complete");
                        // The one pass that merges everything: at once when the pull-secret watches
                        // have listed too (below), else once they do or after the grace at the latest.
                        plan_at = Some(Instant::now() + CREDENTIALS_GRACE);
                    }
                    if listed && !credentials_listed && feeds.iter().all(|f| inventory.is_synced(f)) {
                        credentials_listed = true;
                        plan_at = Some(Instant::now());
                    }
                }
                None => return,
            },
            () = plan_due => {
                plan_at = None;
                planning.run_changes(&mut inventory, listed, lead && leads(&leading));
            }
            Ok(()) = leading.changed() => {
                let now = *leading.borrow_and_update();
                if now != lead {
                    lead = now;
                    planning.handed_on = None;
                    if lead && listed {
                        tracing::info!("leading: submitting the whole current plan");
                        planning.run(&mut inventory, listed, Trigger::Leading, lead && leads(&leading));
                    } else if lead {
                        // The initial list is not complete: the plan made once it is submits everything.
                        queue.forget_plan();
                        plan_at.get_or_insert_with(|| Instant::now() + SETTLE);
                    } else {
                        if let Some(backup) = &planning.backup {
                            backup.clear();
                        }
                        let dropped = queue.drop_waiting();
                        tracing::info!(dropped, "following: no longer submitting; queued copies dropped (running ones may finish)");
                    }
                }
            }
            () = rescan_due => {
                next_rescan = rescan.map(|every| Instant::now() + every);
                tracing::info!("periodic rescan");
                planning.run(&mut inventory, listed, Trigger::Rescan, lead && leads(&leading));
            }
            Some(reply) = forced.recv() => {
                tracing::info!("forced rescan");
                let summary = planning.run(&mut inventory, listed, Trigger::Rescan, lead && leads(&leading));
                let _ = reply.send(summary);
            }
        }
    }
}

/// Hands the containers of a Pod update that wait on failed pulls to copy on the fly, unless the
/// Pod's namespace is out of scope. (Only Pod statuses say so: no extra API request.)
fn copy_failed_pulls(on_the_fly: &OnTheFly, planner: &Planner, update: &Update) {
    let pod = Watched::Workload(Kind::Pod);
    let seen = match update {
        Update::Apply(watched, seen) if *watched == pod => seen,
        Update::InitApply(feed, seen) if feed.watched == pod => seen,
        _ => return,
    };
    if !seen.pull_failures.is_empty() && planner.scope().allows(&seen.namespace) {
        on_the_fly.observe(&seen.namespace, &seen.name, &seen.pull_failures);
    }
}

/// Whether the elector says this replica leads right now: checked again before every submission,
/// so a loss not yet handled by the loop stops submissions at once.
fn leads(leading: &channel::Receiver<bool>) -> bool {
    *leading.borrow()
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a plan pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Objects changed: re-plan them, submit what changed.
    Changes,
    /// This replica now leads: submit the whole current plan.
    Leading,
    /// `forceReconcileMinutes` or `/force-reconcile`: re-plan every object, submit everything.
    Rescan,
}

/// Keeps the plan of the inventory up to date and hands the results on: tasks to the queue, the
/// number of images to the metrics, excluded images and conflicts to `/status`, conflicts to the
/// Events.
struct Planning<'a> {
    planner: &'a Planner,
    /// The plan, kept up to date with the inventory's changes.
    state: PlanState,
    queue: &'a Queue,
    metrics: &'a Metrics,
    excluded: ExcludedImages,
    /// The backup states of the periodic verification, given the leader's plans.
    backup: Option<BackupStates>,
    /// Where conflicts are reported for Events (none when Events are off).
    conflict_events: Option<mpsc::Sender<TargetConflict>>,
    /// Invalid image strings already reported, so each is logged once.
    reported_invalid: HashSet<(Workload, String)>,
    /// Conflicts (target, source) of the last plan, so each is logged once while it lasts.
    reported_conflicts: HashSet<(String, String)>,
    /// Whether the naming was warned about (images of several registries, no `$registry`).
    warned_naming: bool,
    /// Whether the last plan handed on was submitted (this replica led); `None` when the next pass
    /// must hand its plan on whatever changed (none yet, or the leadership changed since).
    handed_on: Option<bool>,
}

impl Planning<'_> {
    /// Brings the plan up to date with `inventory` (every watcher `listed` or not yet) and, when
    /// `lead`, hands it to the queue ([`Queue::submit_plan`]: the tasks that are new or whose work
    /// changed, all of them unless `trigger` is only changes; targets no longer planned are
    /// forgotten); returns what the plan holds.
    fn run(&mut self, inventory: &mut Inventory, listed: bool, trigger: Trigger, lead: bool) -> PlanSummary {
        let pass = self
            .state
            .replan(self.planner, inventory, listed, trigger == Trigger::Rescan);
        self.hand_on(pass, trigger, lead)
    }

    /// [`Planning::run`] on changes, handing the plan on only if it changed (or the leadership did
    /// since the last hand-off, or the pass was a full one): while changes keep arriving (the
    /// initial lists of a large cluster), most passes merge nothing new, and handing on the whole
    /// plan each time would cost the cluster's size again and again.
    fn run_changes(&mut self, inventory: &mut Inventory, listed: bool, lead: bool) {
        let pass = self.state.replan(self.planner, inventory, listed, false);
        if self.state.take_changed() || self.handed_on != Some(lead) || pass == Pass::Full {
            self.hand_on(pass, Trigger::Changes, lead);
        } else {
            tracing::debug!(pass = pass.as_str(), "plan unchanged: nothing to hand on");
        }
    }

    /// Hands the plan of a `pass` on: to the queue when `lead`, to the metrics, `/status` and Events.
    fn hand_on(&mut self, pass: Pass, trigger: Trigger, lead: bool) -> PlanSummary {
        self.state.take_changed();
        self.handed_on = Some(lead);
        self.metrics.plan_pass(pass.as_str());
        let everything = trigger != Trigger::Changes;
        let plan = self.state.plan();
        // The queue first: the verifier checks only targets the queue is not busy with, so a new
        // target it can see must be queued already (else it is checked before its first copy,
        // found missing and counted as a repair).
        let submitted = lead.then(|| self.queue.submit_plan(plan.tasks.clone(), everything));
        if let Some(backup) = &self.backup {
            if lead {
                backup.set_plan(&plan, std::time::SystemTime::now());
            } else {
                backup.clear();
            }
        }
        if !self.warned_naming
            && let Some(registries) = self.planner.colliding_registries(&plan)
        {
            self.warned_naming = true;
            tracing::warn!(registries = %registries.join(", "),
                "the repository prefix has no $registry and images come from several registries: an image path used on two of them names one target, which keeps the source used first (the other shows as conflict in /status)");
        }
        for (user, image, error) in plan.invalid {
            if self.reported_invalid.insert((user.clone(), image.clone())) {
                tracing::warn!(workload = %user, image = %image, error = %error, "invalid image reference; not mirrored");
            }
        }
        self.report_conflicts(&plan.conflicts, lead);
        self.metrics
            .set_conflicts(plan.conflicts.iter().map(TargetConflict::labels));
        let (tasks, excluded, conflicts) = (plan.tasks.len(), plan.excluded.len(), plan.conflicts.len());
        self.excluded.set(plan.excluded, plan.conflicts);
        let workloads: HashSet<&Workload> = plan.tasks.iter().flat_map(|t| &t.users).collect();
        let workloads = workloads.len();
        let targets: Vec<String> = plan.tasks.iter().map(|t| t.key().to_string()).collect();
        if let Some(done) = submitted {
            tracing::info!(
                tasks,
                submitted = done.submitted,
                excluded,
                conflicts,
                forgotten = done.forgotten,
                pass = pass.as_str(),
                "planned"
            );
        } else {
            tracing::info!(
                tasks,
                excluded,
                conflicts,
                pass = pass.as_str(),
                "planned (following: nothing submitted)"
            );
        }
        self.metrics.set_images_tracked(targets.len());
        PlanSummary { workloads, targets }
    }
}

impl Planning<'_> {
    /// Logs each conflict once while it lasts and, when `lead`, hands it on for a Warning Event on
    /// the workloads whose image is left out.
    fn report_conflicts(&mut self, conflicts: &[TargetConflict], lead: bool) {
        let mut current = HashSet::with_capacity(conflicts.len());
        for conflict in conflicts {
            let key = (conflict.target.clone(), conflict.source.clone());
            if !self.reported_conflicts.contains(&key) {
                let users: Vec<String> = conflict.users.iter().map(ToString::to_string).collect();
                tracing::warn!(target = %conflict.target, source = %conflict.source, kept = %conflict.kept,
                    users = %users.join(", "), "two sources name one target: not mirroring this one, the target keeps the source used first");
                if lead && let Some(events) = &self.conflict_events {
                    let _ = events.try_send(conflict.clone());
                }
            }
            current.insert(key);
        }
        self.reported_conflicts = current;
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
