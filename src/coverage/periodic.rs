//! The daemon's continuous coverage: the backup state of every target the latest plan holds or a
//! declarative object declares ([`BackupStates`], read by `/status` and the metrics) and the loop that keeps it current
//! ([`Verifier`], run by the leader). A target is checked for the first time as soon as the queue
//! has finished with it; after that, one re-check starts every `verifyInterval / targets` (oldest
//! check first), so each target is checked about once per interval and the checks are spread over
//! it, at most [`Verifier::concurrency`] at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::drill::{Drill, DrillResult};
use super::{BackupState, CheckOptions, ImageCoverage, Summary, WholeTarget, check_task, unplanned};
use crate::copy::Copier;
use crate::copy::check::Depth;
use crate::plan::{MirrorTask, Plan};
use crate::referrer_policy::ReferrerPolicy;
use crate::workload::DeclaredSource;

/// Targets the daemon checks at the same time.
pub const CONCURRENCY: usize = 4;

/// The most unverified images `/status/summary` lists ([`Report::unverified`]).
pub const UNVERIFIED_LISTED: usize = 50;

/// The longest the verifier sleeps before looking for targets the queue has finished with.
const POLL: Duration = Duration::from_secs(1);

/// The backup states of the latest plan's targets and the declared ones. Cloning is cheap and every
/// clone is the same store.
#[derive(Clone, Default)]
pub struct BackupStates(Arc<Mutex<Store>>);

#[derive(Default)]
struct Store {
    /// The covered tasks by target key: the plan's, and those only objects declare (leader only;
    /// empty on a follower).
    tasks: BTreeMap<String, Planned>,
    /// The tasks declarative objects declare, by target key, with the objects declaring each.
    declared: HashMap<String, (MirrorTask, Vec<DeclaredSource>)>,
    /// The plan's excluded, conflicting and invalid images.
    unplanned: Vec<ImageCoverage>,
    /// The last check of each target key.
    checks: HashMap<String, Check>,
    /// When each target key was first covered, planned or declared (the age of an image never verified).
    since: HashMap<String, SystemTime>,
    /// Whether restore drills run (their summary is reported).
    drills_enabled: bool,
    /// The last restore drill of each target key.
    drills: HashMap<String, Drill>,
    /// When a drill last passed.
    last_drill_success: Option<SystemTime>,
}

impl Store {
    /// Adds the declared targets the plan does not hold to `tasks`, then forgets the checks, ages and
    /// drills of targets `tasks` no longer holds and starts the age of new ones at `now`.
    fn settle(&mut self, now: SystemTime) {
        let Store {
            tasks,
            declared,
            checks,
            since,
            drills,
            ..
        } = self;
        for (key, (task, _)) in declared.iter() {
            tasks
                .entry(key.clone())
                .or_insert_with(|| Planned::new(task.clone(), false));
        }
        checks.retain(|key, _| tasks.contains_key(key));
        // A tag checked, now declared pinned to the digest the check expected (an `Image`'s copy
        // once copied): the check holds for the pinned source, no second check.
        for (key, planned) in tasks.iter() {
            if let Some(check) = checks.get_mut(key)
                && check.source != planned.source
                && let Some(expected) = &check.row.expected
                && planned.source.strip_suffix(expected.as_str()) == Some(&format!("{}@", check.source))
            {
                check.source.clone_from(&planned.source);
            }
        }
        since.retain(|key, _| tasks.contains_key(key));
        drills.retain(|key, _| tasks.contains_key(key));
        for key in tasks.keys() {
            since.entry(key.clone()).or_insert(now);
        }
    }

    /// The objects declaring `key` now (none for a target only planned).
    fn declared_by(&self, key: &str) -> Vec<DeclaredSource> {
        self.declared.get(key).map(|(_, by)| by.clone()).unwrap_or_default()
    }

    /// The last check of `key`, when it was made for `source` (a check for another source is stale).
    fn current_check(&self, key: &str, source: &str) -> Option<&Check> {
        self.checks.get(key).filter(|c| c.source == source)
    }

    /// Each planned target key with when it was last checked for its current source (`None` also
    /// for a key in `again`).
    fn last_checks<'a>(
        &'a self,
        again: &'a HashSet<String>,
    ) -> impl Iterator<Item = (&'a str, Option<SystemTime>)> + Clone + 'a {
        self.tasks.iter().map(move |(key, planned)| {
            let check = self.current_check(key, &planned.source);
            let at = check.map(|c| c.checked).filter(|_| !again.contains(key));
            (key.as_str(), at)
        })
    }
}

/// One covered task (planned or declared), with its source as checks record it.
struct Planned {
    source: String,
    task: MirrorTask,
    /// Whether the plan holds it (else only objects declare it).
    from_plan: bool,
}

impl Planned {
    fn new(task: MirrorTask, from_plan: bool) -> Planned {
        Planned {
            source: task.request.source.to_string(),
            task,
            from_plan,
        }
    }
}

/// One finished check.
#[derive(Debug, Clone)]
struct Check {
    /// The source the target was checked for: another source (a new tag, a new digest) makes the
    /// check stale.
    source: String,
    row: ImageCoverage,
    checked: SystemTime,
    /// When the target was last found verified (kept when a later check finds it incomplete).
    verified: Option<SystemTime>,
    /// The target as found whole by this check, for restore drills.
    whole: Option<WholeTarget>,
}

/// One image of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageBackup {
    /// The target key (as `/status`'s entries are keyed); empty for an image not mirrored.
    #[serde(skip)]
    pub key: String,
    /// The image, its state and detail.
    #[serde(flatten)]
    pub image: ImageCoverage,
    /// When the target was last checked.
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    pub checked: Option<SystemTime>,
    /// When the target was last found verified.
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    pub last_verified: Option<SystemTime>,
    /// The last restore drill of the target, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

/// The backup states of the current plan and their summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Counts and coverage.
    pub summary: Summary,
    /// The longest an in-scope image has gone unverified: since its last verification, or since it
    /// was first planned when it never was; zero when every image is verified.
    #[serde(rename = "oldestUnverifiedSeconds", serialize_with = "seconds")]
    pub oldest_unverified: Duration,
    /// Every image, planned ones first (by target key), then those not mirrored.
    #[serde(skip)]
    pub images: Vec<ImageBackup>,
    /// The in-scope images not verified, with what each lacks, who uses it and which objects
    /// declare it: the longest unverified first (those not mirrored at all last), at most
    /// [`UNVERIFIED_LISTED`] (`/status?backup=STATE` lists every one); only in a
    /// [`BackupStates::summary_report`].
    pub unverified: Vec<ImageBackup>,
    /// The restore drills of the planned images (`None`: drills do not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_drill: Option<DrillSummary>,
}

/// The restore drills of the current plan's images, by each image's last drill.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillSummary {
    /// Images drilled at least once.
    pub drilled: usize,
    /// Images whose last drill passed.
    pub passed: usize,
    /// Images whose last drill failed.
    pub failed: usize,
    /// When the latest drill ended.
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    pub last_drill: Option<SystemTime>,
    /// When a drill last passed (any image, also one no longer planned).
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    pub last_success: Option<SystemTime>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64().floor())
}

impl BackupStates {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the targets of `plan` (made `now`); checks of targets neither planned nor declared are
    /// forgotten.
    pub fn set_plan(&self, plan: &Plan, now: SystemTime) {
        let mut store = self.store();
        store.tasks = plan
            .tasks
            .iter()
            .map(|task| (task.key().to_string(), Planned::new(task.clone(), true)))
            .collect();
        store.unplanned = unplanned(plan);
        store.settle(now);
    }

    /// Takes the targets declarative objects (an `Image`, a Flux `ImageRepository`) declare now
    /// (`tasks`, each with the objects declaring it, as of `now`): covered like planned ones (a
    /// target both planned and declared is checked as the plan names it, and named with its objects
    /// too); checks of targets neither planned nor declared any more are forgotten.
    pub fn set_declared(&self, tasks: Vec<(MirrorTask, Vec<DeclaredSource>)>, now: SystemTime) {
        let mut store = self.store();
        store.declared = tasks
            .into_iter()
            .map(|(task, by)| (task.key().to_string(), (task, by)))
            .collect();
        store.tasks.retain(|_, planned| planned.from_plan);
        store.settle(now);
    }

    /// Forgets everything but whether drills run (this replica no longer leads).
    pub fn clear(&self) {
        let mut store = self.store();
        *store = Store {
            drills_enabled: store.drills_enabled,
            ..Store::default()
        };
    }

    /// Reports restore drills from now on ([`Report::restore_drill`]).
    pub fn enable_drills(&self) {
        self.store().drills_enabled = true;
    }

    /// Records a check of `key` for `source` finished at `at` (with the target when it is whole),
    /// unless the target is no longer covered.
    fn record(&self, key: &str, source: &str, row: ImageCoverage, whole: Option<WholeTarget>, at: SystemTime) {
        let mut store = self.store();
        if !store.since.contains_key(key) {
            return;
        }
        let verified = if row.state == BackupState::Verified {
            Some(at)
        } else {
            store.current_check(key, source).and_then(|c| c.verified)
        };
        store.checks.insert(
            key.to_owned(),
            Check {
                source: source.to_owned(),
                row,
                checked: at,
                verified,
                whole,
            },
        );
    }

    /// Up to `n` targets whose last check (for their current source) found them whole, for a
    /// restore drill: those never drilled first, then the one drilled longest ago.
    pub fn drill_candidates(&self, n: usize) -> Vec<(String, WholeTarget)> {
        let store = self.store();
        let mut whole: Vec<(Option<SystemTime>, &String, &WholeTarget)> = store
            .tasks
            .iter()
            .filter_map(|(key, planned)| {
                let check = store.current_check(key, &planned.source)?;
                let target = check.whole.as_ref()?;
                Some((store.drills.get(key).and_then(|d| d.at), key, target))
            })
            .collect();
        whole.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        whole
            .into_iter()
            .take(n)
            .map(|(_, key, target)| (key.clone(), target.clone()))
            .collect()
    }

    /// Records the restore drill of `key`, unless the target is no longer covered.
    pub fn record_drill(&self, key: &str, drill: Drill) {
        let mut store = self.store();
        if !store.since.contains_key(key) {
            return;
        }
        if drill.result == DrillResult::Passed {
            store.last_drill_success = drill.at.max(store.last_drill_success);
        }
        store.drills.insert(key.to_owned(), drill);
    }

    /// The objects declaring `key` now (none for a target only planned).
    fn declared_by(&self, key: &str) -> Vec<DeclaredSource> {
        self.store().declared_by(key)
    }

    /// How many targets are covered (planned or declared).
    fn planned(&self) -> usize {
        self.store().tasks.len()
    }

    /// The checks to start next, with their tasks: [`pick`] over the planned targets as they stand
    /// in the store (no copy of the keys), a target in `again` counted as never checked. `busy` is
    /// asked (outside the store's lock) only when there is something to pick from: a re-check
    /// `slot_due` or a target waiting for its first check.
    fn next_checks(
        &self,
        again: &HashSet<String>,
        in_flight: &HashSet<String>,
        busy: impl FnOnce() -> HashSet<String>,
        slot_due: bool,
        free: usize,
    ) -> Vec<(String, MirrorTask)> {
        let waiting = slot_due || self.store().last_checks(again).any(|(_, at)| at.is_none());
        if !waiting {
            return vec![];
        }
        let busy = busy();
        let store = self.store();
        pick(store.last_checks(again), &busy, in_flight, slot_due, free)
            .into_iter()
            .filter_map(|key| {
                let task = store.tasks.get(&key)?.task.clone();
                Some((key, task))
            })
            .collect()
    }

    /// The backup state of every image of the current plan, as of `now`; `unverified` is left empty
    /// (only `/status/summary` shows it: [`BackupStates::summary_report`]).
    pub fn report(&self, now: SystemTime) -> Report {
        self.build_report(now, false)
    }

    /// [`BackupStates::report`] with the longest-unverified images listed in `unverified`.
    pub fn summary_report(&self, now: SystemTime) -> Report {
        self.build_report(now, true)
    }

    fn build_report(&self, now: SystemTime, list_unverified: bool) -> Report {
        let store = self.store();
        let mut images: Vec<ImageBackup> = store
            .tasks
            .iter()
            .map(|(key, Planned { source, task, .. })| {
                let (key, source) = (key.clone(), source.clone());
                let declared_by = store.declared_by(&key);
                match store.current_check(&key, &source) {
                    Some(check) => ImageBackup {
                        drill: store.drills.get(&key).cloned(),
                        key,
                        image: ImageCoverage {
                            declared_by,
                            ..check.row.clone()
                        },
                        checked: Some(check.checked),
                        last_verified: check.verified,
                    },
                    None => ImageBackup {
                        image: ImageCoverage {
                            image: source,
                            target: key.clone(),
                            state: BackupState::Pending,
                            detail: "not checked yet".into(),
                            expected: None,
                            expected_from: None,
                            side: None,
                            users: task.users.clone(),
                            declared_by,
                        },
                        drill: store.drills.get(&key).cloned(),
                        key,
                        checked: None,
                        last_verified: None,
                    },
                }
            })
            .collect();
        images.extend(store.unplanned.iter().map(|image| ImageBackup {
            key: String::new(),
            image: image.clone(),
            checked: None,
            last_verified: None,
            drill: None,
        }));
        // In scope and not verified, with since when: the last verification, else the first time
        // it was covered (none for an image not mirrored).
        let unverified = images
            .iter()
            .filter(|i| !matches!(i.image.state, BackupState::Verified | BackupState::Excluded))
            .map(|i| (i.last_verified.or_else(|| store.since.get(&i.key).copied()), i));
        let oldest_unverified = unverified
            .clone()
            .filter_map(|(since, _)| since)
            .map(|since| now.duration_since(since).unwrap_or_default())
            .max()
            .unwrap_or_default();
        // Sorting and copying them is for `/status/summary` only, not every `/metrics` scrape.
        let unverified = if list_unverified {
            let mut listed: Vec<_> = unverified.collect();
            listed.sort_by_key(|(since, _)| (since.is_none(), *since));
            listed
                .into_iter()
                .take(UNVERIFIED_LISTED)
                .map(|(_, i)| i.clone())
                .collect()
        } else {
            Vec::new()
        };
        let restore_drill = store.drills_enabled.then(|| {
            let drills = images.iter().filter_map(|i| i.drill.as_ref());
            let mut summary = DrillSummary {
                last_success: store.last_drill_success,
                ..DrillSummary::default()
            };
            for drill in drills {
                summary.drilled += 1;
                match drill.result {
                    DrillResult::Passed => summary.passed += 1,
                    DrillResult::Failed => summary.failed += 1,
                }
                summary.last_drill = summary.last_drill.max(drill.at);
            }
            summary
        });
        Report {
            summary: Summary::of(images.iter().map(|i| i.image.state)),
            oldest_unverified,
            images,
            unverified,
            restore_drill,
        }
    }
}

/// What to check next: every target never checked (for its current source) that the queue is not
/// copying (`busy`: queued or running) and that is not being checked, then, when a re-check `slot_due`, the target
/// checked longest ago among the rest; at most `free` in all. `candidates` are (key, last check).
fn pick<'a>(
    candidates: impl Iterator<Item = (&'a str, Option<SystemTime>)> + Clone,
    busy: &HashSet<String>,
    in_flight: &HashSet<String>,
    slot_due: bool,
    free: usize,
) -> Vec<String> {
    let ready = || {
        candidates
            .clone()
            .filter(|(key, _)| !busy.contains(*key) && !in_flight.contains(*key))
    };
    let mut picked: Vec<String> = ready()
        .filter(|(_, checked)| checked.is_none())
        .map(|(key, _)| key.to_owned())
        .take(free)
        .collect();
    if slot_due && picked.len() < free {
        let oldest = ready().filter_map(|(key, checked)| checked.map(|at| (at, key))).min();
        picked.extend(oldest.map(|(_, key)| key.to_owned()));
    }
    picked
}

/// The periodic verification of the covered targets, planned and declared (quick checks: HEADs).
pub struct Verifier {
    /// The copier whose registries are checked.
    pub copier: Copier,
    /// Where results go.
    pub states: BackupStates,
    /// `verifyInterval`: each target is checked about once per interval.
    pub interval: Duration,
    /// Targets checked at the same time.
    pub concurrency: usize,
    /// Blobs of one target checked at the same time.
    pub blobs: usize,
    /// The signatures, attestations and SBOMs a target must hold too (a target lacking some is
    /// missing parts, and copied again); [`ReferrerPolicy::none`]: not checked.
    pub referrers: ReferrerPolicy,
}

impl Verifier {
    /// Checks targets while `leading` says this replica leads, for ever. `busy` gives the target
    /// keys the queue has queued or is copying: those are not checked (a target is checked once
    /// the queue has finished with it, mirrored, failed or cooling down). `copy_again` gets each
    /// task whose target was found `missing` parts, to be copied again past the positive cache, in
    /// repair mode.
    pub async fn run(
        self,
        mut leading: watch::Receiver<bool>,
        busy: impl Fn() -> HashSet<String>,
        copy_again: impl Fn(MirrorTask),
    ) {
        let mut running: JoinSet<(MirrorTask, (ImageCoverage, Option<WholeTarget>))> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        // The key each running check is for, so a check that panics frees its target too.
        let mut checking: HashMap<tokio::task::Id, String> = HashMap::new();
        // Targets copied again after a check found them missing: checked once more as soon as the
        // queue is done with them, instead of waiting a whole interval for their turn.
        let mut copied_again: HashSet<String> = HashSet::new();
        let mut next_slot = Instant::now();
        let options = CheckOptions {
            depth: Depth::Quick,
            images: 1,
            blobs: self.blobs,
            referrers: self.referrers.clone(),
        };
        loop {
            let planned = self.states.planned();
            let spacing = self.interval / u32::try_from(planned.max(1)).unwrap_or(u32::MAX);
            let free = self.concurrency.saturating_sub(in_flight.len());
            if *leading.borrow() && free > 0 && planned > 0 {
                let slot_due = Instant::now() >= next_slot;
                let picked = self
                    .states
                    .next_checks(&copied_again, &in_flight, &busy, slot_due, free);
                if slot_due {
                    next_slot = Instant::now() + spacing;
                }
                for (key, task) in picked {
                    let (copier, options) = (self.copier.clone(), options.clone());
                    let handle = running.spawn(async move {
                        let row = check_task(&copier, &task, options).await;
                        (task, row)
                    });
                    checking.insert(handle.id(), key.clone());
                    in_flight.insert(key);
                }
            }
            let wake = (Instant::now() + POLL).min(next_slot.max(Instant::now() + Duration::from_millis(10)));
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = done.as_ref().map_or_else(tokio::task::JoinError::id, |(id, _)| *id);
                    if let Some(key) = checking.remove(&id) {
                        in_flight.remove(&key);
                    }
                    let Ok((_, (task, (mut row, whole)))) = done else { continue };
                    let key = task.key().to_string();
                    row.declared_by = self.states.declared_by(&key);
                    log_result(&row);
                    let after_copy = copied_again.remove(&key);
                    let again = copy_again_after(row.state, after_copy) && *leading.borrow();
                    self.states.record(&key, &task.request.source.to_string(), row, whole, SystemTime::now());
                    if again {
                        tracing::info!(target = %key, source = %task.request.source, "copying the image again (positive cache dropped)");
                        copied_again.insert(key);
                        copy_again(task);
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Whether a target found in `state` is copied again: when it misses parts, unless this check
/// followed such a copy already (parts the repair copy cannot restore, such as blobs the source
/// no longer has, would otherwise be copied again and re-checked in a tight loop; they are tried
/// again at the target's next regular check).
fn copy_again_after(state: BackupState, after_copy: bool) -> bool {
    state == BackupState::Missing && !after_copy
}

/// One line per check that finds a target incomplete, naming who asked for it (a debug line when
/// it is whole).
fn log_result(row: &ImageCoverage) {
    if row.state == BackupState::Verified {
        tracing::debug!(target = %row.target, source = %row.image, detail = %row.detail, "backup verified");
        return;
    }
    let (users, declared_by) = (names(&row.users), names(&row.declared_by));
    if row.state == BackupState::Untagged {
        tracing::warn!(target = %row.target, source = %row.image, detail = %row.detail, users = %users, declared_by = %declared_by,
            "backup check: the copy is whole but no tag holds it (at risk)");
    } else {
        tracing::warn!(target = %row.target, source = %row.image, state = row.state.as_str(),
            detail = %row.detail, side = row.side.unwrap_or(""), users = %users, declared_by = %declared_by,
            "backup check: the target does not hold the whole image");
    }
}

/// `a, b`: the names of `items`.
fn names(items: &[impl ToString]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyRequest;
    use crate::reference::ImageRef;

    fn task(source: &str, repo: &str) -> MirrorTask {
        MirrorTask::new(CopyRequest {
            source: ImageRef::parse(source).unwrap(),
            target: ImageRef::parse(&format!("r.example/{repo}")).unwrap(),
            target_tag: Some("1".into()),
        })
    }

    fn row(state: BackupState) -> ImageCoverage {
        ImageCoverage {
            image: String::new(),
            target: String::new(),
            state,
            detail: format!("{state:?}"),
            expected: None,
            expected_from: None,
            side: None,
            users: vec![],
            declared_by: vec![],
        }
    }

    /// `s` seconds after the epoch.
    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    /// Targets x, y and z (`r.example/x:1`, …) of `a.io/x:1`, ….
    fn three_targets() -> Plan {
        Plan {
            tasks: vec![task("a.io/x:1", "x"), task("a.io/y:1", "y"), task("a.io/z:1", "z")],
            ..Plan::default()
        }
    }

    #[test]
    fn the_report_keeps_states_per_target_and_ages_the_oldest_unverified() {
        let plan = three_targets();
        let key = |i: usize| plan.tasks[i].key().to_string();
        let source = |i: usize| plan.tasks[i].request.source.to_string();
        let states = BackupStates::default();
        states.set_plan(&plan, at(100));
        states.record(&key(0), &source(0), row(BackupState::Verified), None, at(110));
        states.record(&key(1), &source(1), row(BackupState::Verified), None, at(120));
        states.record(&key(1), &source(1), row(BackupState::Missing), None, at(200));
        states.record(
            "r.example/gone:1",
            "a.io/gone:1",
            row(BackupState::Verified),
            None,
            at(200),
        );
        let report = states.report(at(300));
        let got: Vec<(BackupState, Option<SystemTime>, Option<SystemTime>)> = report
            .images
            .iter()
            .map(|i| (i.image.state, i.checked, i.last_verified))
            .collect();
        // x verified at 110; y verified at 120, missing since 200; z never checked (pending).
        let want = vec![
            (BackupState::Verified, Some(at(110)), Some(at(110))),
            (BackupState::Missing, Some(at(200)), Some(at(120))),
            (BackupState::Pending, None, None),
        ];
        assert_eq!(got, want);
        // y: unverified since its last verification (120); z: since it was planned (100).
        assert_eq!(report.oldest_unverified, Duration::from_secs(200));
        assert_eq!(
            (report.summary.verified, report.summary.missing, report.summary.pending),
            (1, 1, 1)
        );
        assert_eq!(report.images.len(), 3, "a target not planned is not recorded");

        // Another source for y (a new tag) makes its check stale: pending again, and the next plan
        // without x forgets x.
        let plan = Plan {
            tasks: vec![task("a.io/y:2", "y"), task("a.io/z:1", "z")],
            ..Plan::default()
        };
        states.set_plan(&plan, at(400));
        let report = states.report(at(400));
        let got: Vec<BackupState> = report.images.iter().map(|i| i.image.state).collect();
        assert_eq!(got, [BackupState::Pending, BackupState::Pending]);
        assert_eq!(report.oldest_unverified, Duration::from_secs(300), "z, planned at 100");
        states.clear();
        assert_eq!(states.report(at(500)).summary.images, 0);
    }

    #[test]
    fn the_summary_lists_the_unverified_images_the_longest_unverified_first() {
        use crate::plan::{ExcludedImage, TargetConflict};
        let mut plan = three_targets();
        plan.excluded.push(ExcludedImage {
            source: "quay.io/e:1".into(),
            rule: "quay.io".into(),
            users: vec![],
        });
        plan.conflicts.push(TargetConflict {
            target: "r.example/x:1".into(),
            source: "b.io/x:1".into(),
            kept: "a.io/x:1".into(),
            users: vec![],
        });
        let key = |i: usize| plan.tasks[i].key().to_string();
        let source = |i: usize| plan.tasks[i].request.source.to_string();
        let states = BackupStates::default();
        states.set_plan(&plan, at(100));
        states.set_declared(vec![declared("a.io/w:1", "w", &["w"])], at(150));
        let checked = |i: usize, state: BackupState| ImageCoverage {
            image: source(i),
            ..row(state)
        };
        states.record(&key(0), &source(0), checked(0, BackupState::Verified), None, at(110));
        states.record(&key(1), &source(1), checked(1, BackupState::Verified), None, at(120));
        states.record(&key(1), &source(1), checked(1, BackupState::Missing), None, at(200));
        let listed = |report: &Report| -> Vec<(String, BackupState, Vec<String>)> {
            let by = |i: &ImageBackup| i.image.declared_by.iter().map(ToString::to_string).collect();
            report
                .unverified
                .iter()
                .map(|i| (i.image.image.clone(), i.image.state, by(i)))
                .collect()
        };
        // z pending since planned (100), y missing since last verified (120), w pending since
        // declared (150), then the conflict, never mirrored; x verified and the excluded image left out.
        let want = vec![
            ("a.io/z:1".to_owned(), BackupState::Pending, vec![]),
            ("a.io/y:1".to_owned(), BackupState::Missing, vec![]),
            (
                "a.io/w:1".to_owned(),
                BackupState::Pending,
                vec!["Image shop/w".to_owned()],
            ),
            ("b.io/x:1".to_owned(), BackupState::Failed, vec![]),
        ];
        let report = states.summary_report(at(300));
        assert_eq!(listed(&report), want);
        assert_eq!(report.oldest_unverified, Duration::from_secs(200), "z, planned at 100");
        // `/status` and `/metrics` get the same figures without the list.
        let plain = states.report(at(300));
        assert!(plain.unverified.is_empty());
        assert_eq!(
            (plain.summary, plain.oldest_unverified),
            (report.summary.clone(), report.oldest_unverified)
        );
        // In JSON: each with its detail, users and declaring objects (left out when none).
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["unverified"][2]["declaredBy"], serde_json::json!(["Image shop/w"]));
        assert_eq!(json["unverified"][2]["detail"], "not checked yet");
        assert!(json["unverified"][0].get("declaredBy").is_none(), "{json}");
        assert!(json.get("images").is_none(), "the whole list is /status's");

        // At most UNVERIFIED_LISTED, the longest unverified first.
        let many = Plan {
            tasks: (0..UNVERIFIED_LISTED + 5)
                .map(|n| task(&format!("a.io/m{n:03}:1"), &format!("m{n:03}")))
                .collect(),
            ..Plan::default()
        };
        states.set_declared(vec![], at(400));
        states.set_plan(&many, at(400));
        states.record(
            &many.tasks[0].key().to_string(),
            "a.io/m000:1",
            row(BackupState::Verified),
            None,
            at(300),
        );
        states.record(
            &many.tasks[0].key().to_string(),
            "a.io/m000:1",
            row(BackupState::Failed),
            None,
            at(450),
        );
        let report = states.summary_report(at(500));
        assert_eq!(report.summary.images, UNVERIFIED_LISTED + 5);
        assert_eq!(report.unverified.len(), UNVERIFIED_LISTED);
        assert_eq!(
            report.unverified[0].image.state,
            BackupState::Failed,
            "verified at 300, before the others were planned"
        );
    }

    #[test]
    fn drills_take_whole_targets_never_drilled_first_then_the_one_drilled_longest_ago() {
        let plan = three_targets();
        let key = |i: usize| plan.tasks[i].key().to_string();
        let source = |i: usize| plan.tasks[i].request.source.to_string();
        let whole = |i: usize| {
            Some(WholeTarget {
                request: plan.tasks[i].request.clone(),
                digest: crate::reference::Digest::sha256_hex(&"ab".repeat(32)).unwrap(),
            })
        };
        let drill = |result, s| Drill {
            at: Some(at(s)),
            result,
            detail: String::new(),
            target: String::new(),
            digest: String::new(),
            duration: Duration::ZERO,
        };
        let states = BackupStates::default();
        states.set_plan(&plan, at(100));
        assert_eq!(states.report(at(100)).restore_drill, None, "drills not enabled");
        states.enable_drills();
        states.record(&key(0), &source(0), row(BackupState::Verified), whole(0), at(110));
        states.record(&key(1), &source(1), row(BackupState::Verified), whole(1), at(120));
        states.record(&key(2), &source(2), row(BackupState::Missing), None, at(130));
        let picked = |n: usize| -> Vec<String> { states.drill_candidates(n).into_iter().map(|(k, _)| k).collect() };
        // (drill recorded, targets picked for a round of 1, of 5)
        assert_eq!(
            (picked(1), picked(5)),
            (vec![key(0)], vec![key(0), key(1)]),
            "z is not whole"
        );
        states.record_drill(&key(0), drill(DrillResult::Passed, 300));
        assert_eq!(picked(1), [key(1)], "never drilled first");
        states.record_drill(&key(1), drill(DrillResult::Failed, 310));
        assert_eq!(picked(2), [key(0), key(1)], "the oldest drill first");
        states.record_drill("r.example/gone:1", drill(DrillResult::Passed, 320));
        let summary = states.report(at(400)).restore_drill.unwrap();
        let want = DrillSummary {
            drilled: 2,
            passed: 1,
            failed: 1,
            last_drill: Some(at(310)),
            last_success: Some(at(300)),
        };
        assert_eq!(summary, want, "a target not planned is not recorded");
        let report = states.report(at(400));
        assert_eq!(
            report.images[1].drill.as_ref().map(|d| d.result),
            Some(DrillResult::Failed)
        );
        assert_eq!(report.images[2].drill, None);
        // x found incomplete: no longer drilled; a new source for y makes its check stale.
        states.record(&key(0), &source(0), row(BackupState::Missing), None, at(500));
        assert_eq!(picked(5), [key(1)]);
        let plan = Plan {
            tasks: vec![task("a.io/y:2", "y")],
            ..Plan::default()
        };
        states.set_plan(&plan, at(600));
        assert_eq!(picked(5), Vec::<String>::new());
        states.clear();
        assert_eq!(states.report(at(700)).restore_drill, Some(DrillSummary::default()));
    }

    /// `task(source, repo)` declared by the `Image` objects `shop/NAME` for each of `names`.
    fn declared(source: &str, repo: &str, names: &[&str]) -> (MirrorTask, Vec<DeclaredSource>) {
        let by = names.iter().map(|n| DeclaredSource::new("Image", "shop", n)).collect();
        (task(source, repo), by)
    }

    #[test]
    fn declared_targets_are_covered_beside_the_plans_until_no_object_declares_them() {
        let states = BackupStates::default();
        // (source, target repository) pairs
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        // (source, target repository, the `Image` objects declaring it)
        type Declared<'a> = &'a [(&'a str, &'a str, &'a [&'a str])];
        // (target key, source, the objects it is named with) of the covered ones
        type Covered<'a> = &'a [(&'a str, &'a str, &'a [&'a str])];
        // (plan, declared, covered targets with their sources and objects, in key order)
        let cases: [(Pairs, Declared, Covered); 6] = [
            (&[("a.io/x:1", "x")], &[], &[("r.example/x:1", "a.io/x:1", &[])]),
            // A target both planned and declared is checked as the plan names it, and named with
            // its object too.
            (
                &[("a.io/x:1", "x")],
                &[("a.io/x:2", "x", &["a"]), ("a.io/z:1", "z", &["b", "c"])],
                &[
                    ("r.example/x:1", "a.io/x:1", &["Image shop/a"]),
                    ("r.example/z:1", "a.io/z:1", &["Image shop/b", "Image shop/c"]),
                ],
            ),
            // The plan drops x: still declared, x stays with the declared source.
            (
                &[],
                &[("a.io/x:2", "x", &["a"]), ("a.io/z:1", "z", &["c"])],
                &[
                    ("r.example/x:1", "a.io/x:2", &["Image shop/a"]),
                    ("r.example/z:1", "a.io/z:1", &["Image shop/c"]),
                ],
            ),
            // No object declares z any more.
            (
                &[],
                &[("a.io/x:2", "x", &["a"])],
                &[("r.example/x:1", "a.io/x:2", &["Image shop/a"])],
            ),
            // Planned again, no longer declared: named with no object.
            (&[("a.io/x:1", "x")], &[], &[("r.example/x:1", "a.io/x:1", &[])]),
            (&[("a.io/y:1", "y")], &[], &[("r.example/y:1", "a.io/y:1", &[])]),
        ];
        for (i, (planned, declared_now, want)) in cases.into_iter().enumerate() {
            let plan = Plan {
                tasks: planned.iter().map(|(source, repo)| task(source, repo)).collect(),
                ..Plan::default()
            };
            states.set_plan(&plan, at(100 + i as u64));
            let declared_now = declared_now.iter().map(|(s, r, by)| declared(s, r, by)).collect();
            states.set_declared(declared_now, at(100 + i as u64));
            let report = states.report(at(300));
            let got: Vec<(String, String, Vec<String>)> = report
                .images
                .iter()
                .map(|i| {
                    let by = i.image.declared_by.iter().map(ToString::to_string).collect();
                    (i.key.clone(), i.image.image.clone(), by)
                })
                .collect();
            let want: Vec<(String, String, Vec<String>)> = want
                .iter()
                .map(|(k, s, by)| ((*k).into(), (*s).into(), by.iter().map(|b| (*b).into()).collect()))
                .collect();
            assert_eq!(got, want, "case {i}");
            assert_eq!(report.summary.pending, want.len(), "case {i}: not checked yet");
        }
        // A tag checked, then declared pinned to the digest the check expected: the check holds;
        // pinned to another digest, it is stale.
        let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let mut checked = row(BackupState::Verified);
        checked.expected = Some(d(1));
        states.set_declared(vec![declared("a.io/w:1", "w", &["w"])], at(500));
        states.record("r.example/w:1", "a.io/w:1", checked, None, at(500));
        for (digest, want) in [(d(1), BackupState::Verified), (d(2), BackupState::Pending)] {
            states.set_declared(vec![declared(&format!("a.io/w:1@{digest}"), "w", &["w"])], at(600));
            let report = states.report(at(600));
            let w = report.images.iter().find(|i| i.key == "r.example/w:1").unwrap();
            assert_eq!(w.image.state, want, "pinned to {digest}");
            // Checked or not, the image is named with its object.
            let by: Vec<String> = w.image.declared_by.iter().map(ToString::to_string).collect();
            assert_eq!(by, ["Image shop/w"], "pinned to {digest}");
        }
        // A declared target is recorded; one no longer covered is not.
        states.set_declared(vec![declared("a.io/x:2", "x", &["x"])], at(400));
        states.record("r.example/x:1", "a.io/x:2", row(BackupState::Verified), None, at(400));
        states.record("r.example/z:1", "a.io/z:1", row(BackupState::Verified), None, at(400));
        let summary = states.report(at(400)).summary;
        assert_eq!((summary.images, summary.verified), (2, 1), "x verified, y pending");
    }

    #[test]
    fn the_summary_counts_every_backup_state_the_metric_labels() {
        let states: Vec<BackupState> = Summary::default().counts().iter().map(|(state, _)| *state).collect();
        assert_eq!(states, BackupState::ALL);
    }

    fn keys(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_missing_target_is_copied_again_once_per_regular_check() {
        use BackupState::*;
        // (state, this check followed a copy again, copy again)
        let cases = [
            (Missing, false, true),
            (Missing, true, false),
            (Verified, false, false),
            (Verified, true, false),
            (Mismatch, false, false),
            (Failed, false, false),
            (Pending, false, false),
            // Copying again would write no tag either.
            (Untagged, false, false),
        ];
        for (state, after_copy, want) in cases {
            assert_eq!(copy_again_after(state, after_copy), want, "{state:?} {after_copy}");
        }
    }

    #[test]
    fn next_checks_come_from_the_store_asking_the_queue_only_when_one_waits() {
        let plan = three_targets();
        let key = |i: usize| plan.tasks[i].key().to_string();
        let states = BackupStates::default();
        states.set_plan(&plan, at(100));
        for i in 0..3 {
            let source = plan.tasks[i].request.source.to_string();
            states.record(&key(i), &source, row(BackupState::Verified), None, at(110 + i as u64));
        }
        assert_eq!(states.planned(), 3);
        let asked = std::cell::Cell::new(0);
        let busy = |names: &[String]| {
            asked.set(asked.get() + 1);
            names.iter().cloned().collect::<HashSet<String>>()
        };
        let next = |again: &[String], busy_now: &[String], slot_due: bool| {
            let picked = states.next_checks(
                &again.iter().cloned().collect(),
                &HashSet::new(),
                || busy(busy_now),
                slot_due,
                4,
            );
            picked
                .into_iter()
                .map(|(k, task)| {
                    assert_eq!(task.key().to_string(), k);
                    k
                })
                .collect::<Vec<_>>()
        };
        // Every target checked, no slot due: nothing to pick, the queue is not asked.
        assert_eq!(next(&[], &[], false), Vec::<String>::new());
        assert_eq!(asked.get(), 0);
        // A slot due: the target checked longest ago, unless the queue is busy with it.
        assert_eq!(next(&[], &[], true), [key(0)]);
        assert_eq!(next(&[], &[key(0)], true), [key(1)]);
        assert_eq!(asked.get(), 2);
        // A target copied again waits for a check as if never checked.
        assert_eq!(next(&[key(2)], &[], false), [key(2)]);
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn first_checks_come_first_then_one_recheck_per_slot_oldest_first() {
        let t = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let candidates: Vec<(String, Option<SystemTime>)> = vec![
            ("a".into(), t(30)),
            ("b".into(), None),
            ("c".into(), t(10)),
            ("d".into(), None),
            ("e".into(), t(20)),
        ];
        let all = keys(&["a", "b", "c", "d", "e"]);
        // (busy in the queue, being checked, slot due, free, picked)
        type Case<'a> = (HashSet<String>, HashSet<String>, bool, usize, &'a [&'a str]);
        let cases: [Case; 8] = [
            (keys(&[]), keys(&[]), false, 4, &["b", "d"]),
            (keys(&[]), keys(&[]), true, 4, &["b", "d", "c"]),
            (keys(&[]), keys(&[]), true, 2, &["b", "d"]),
            (keys(&[]), keys(&["c"]), true, 4, &["b", "d", "e"]),
            (keys(&["b", "c", "d"]), keys(&[]), true, 4, &["e"]),
            (keys(&["b", "c", "d"]), keys(&[]), false, 4, &[]),
            (keys(&["a", "c", "d", "e"]), keys(&["b"]), true, 4, &[]),
            (all, keys(&[]), true, 4, &[]),
        ];
        for (busy, in_flight, slot_due, free, want) in cases {
            let candidates = candidates.iter().map(|(key, at)| (key.as_str(), *at));
            let picked = pick(candidates, &busy, &in_flight, slot_due, free);
            assert_eq!(picked, want, "{busy:?} {in_flight:?} {slot_due} {free}");
        }
    }
}
