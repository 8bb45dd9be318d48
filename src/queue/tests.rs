//! The state machine with a fake copy engine: each test is a script of submissions and releases of
//! the fake's gate, and says which copies ran and where the target ended. Real registries stay for
//! the integration tests (`tests/it/queue.rs`).

use std::sync::Mutex;

use testkit::logs::Logs;
use tokio::sync::Semaphore;

use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The longest any script waits for the queue.
const WAIT: Duration = Duration::from_secs(10);

/// Copies nothing: records each call's source (with ` (repair)` in repair mode) and holds it until
/// the test releases it; a source in repository `a/bad` fails.
#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

struct FakeState {
    calls: Mutex<Vec<String>>,
    gate: Semaphore,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            calls: Mutex::default(),
            gate: Semaphore::new(0),
        }
    }
}

impl CopyEngine for Fake {
    fn copy<'a>(
        &'a self,
        request: &'a CopyRequest,
        options: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<CopyReport, CopyError>> {
        Box::pin(async move {
            let source = request.source.to_string();
            tracing::info!("copying");
            let call = match options.repair {
                true => format!("{source} (repair)"),
                false => source.clone(),
            };
            self.0.calls.lock().unwrap().push(call);
            self.0.gate.acquire().await.expect("gate open").forget();
            if request.source.repository() == "a/bad" {
                return Err(CopyError::SourceNotFound(source));
            }
            Ok(CopyReport {
                outcome: Outcome::Copied,
                source_digest: Digest::parse(D).unwrap(),
                digest: Some(Digest::parse(D).unwrap()),
                bytes: 1,
                blobs_skipped: 0,
                blobs_mounted: 0,
                blobs_transferred: 1,
                blobs_warmed: 0,
                manifests_written: 0,
                missing_platforms: vec![],
                filtered: false,
                referrers: Default::default(),
            })
        })
    }

    fn source_architecture<'a>(
        &'a self,
        _: &'a ImageRef,
        _: &'a CopyOptions,
    ) -> BoxFuture<'a, Result<(Digest, String), CopyError>> {
        Box::pin(async { Ok((Digest::parse(D).unwrap(), "amd64".to_owned())) })
    }
}

/// One step of a script.
#[derive(Clone, Copy)]
enum Step {
    /// Submit a task copying this source to `r.example/a/web:1`.
    Submit(&'static str),
    /// The same, to be copied in repair mode ([`Queue::repair`]).
    Repair(&'static str),
    /// Wait until this many copies are running.
    Running(usize),
    /// Let this many held copies finish.
    Release(usize),
    /// Wait until nothing is queued or running.
    Idle,
    /// End every cooldown.
    ResetCooldown,
}

fn task(source: &str) -> MirrorTask {
    MirrorTask::new(CopyRequest {
        source: ImageRef::parse(source).unwrap(),
        target: ImageRef::parse("r.example/a/web").unwrap(),
        target_tag: Some("1".into()),
    })
}

async fn run(script: &[Step], cooldown: Option<Duration>) -> (Vec<String>, TaskState, QueueCounters) {
    let fake = Fake::default();
    let options = QueueOptions {
        failure_cooldown: cooldown,
        ..QueueOptions::default()
    };
    let queue = Queue::start(fake.clone(), options);
    for step in script {
        match *step {
            Step::Submit(source) => queue.submit(task(source)),
            Step::Repair(source) => queue.repair(task(source)),
            Step::Running(n) => {
                let started = Instant::now();
                while queue.counters().running != n {
                    assert!(started.elapsed() < WAIT, "{n} running never reached");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Step::Release(n) => fake.0.gate.add_permits(n),
            Step::Idle => assert!(queue.wait_idle(WAIT).await, "the queue never went idle"),
            Step::ResetCooldown => {
                queue.reset_cooldown();
            }
        }
    }
    let calls = fake.0.calls.lock().unwrap().clone();
    let snapshot = queue.snapshot();
    let [status] = snapshot.as_slice() else {
        panic!("one target expected: {snapshot:?}");
    };
    let (state, counters) = (status.state, queue.counters());
    queue.shutdown(Duration::ZERO).await;
    (calls, state, counters)
}

/// A script: what it shows, its steps, the failure cooldown, the copies that must run (their
/// sources, in order) and the target's state at the end.
type Case = (
    &'static str,
    &'static [Step],
    Option<Duration>,
    &'static [&'static str],
    TaskState,
);

#[tokio::test]
async fn the_state_machine_by_script() {
    use Step::*;
    const WEB: &str = "ghcr.io/a/web:1";
    const PINNED: &str = "ghcr.io/a/web:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const BAD: &str = "ghcr.io/a/bad:1";
    const WEB_REPAIR: &str = "ghcr.io/a/web:1 (repair)";
    const BAD_REPAIR: &str = "ghcr.io/a/bad:1 (repair)";
    let hour = Some(Duration::from_secs(3600));
    let cases: &[Case] = &[
        (
            "dedupe: submissions of one target while it waits make one copy",
            &[Submit(WEB), Submit(WEB), Submit(WEB), Release(10), Idle],
            hour,
            &[WEB],
            TaskState::Mirrored,
        ),
        (
            "positive cache: the same work after a success is not copied again",
            &[Submit(WEB), Release(10), Idle, Submit(WEB), Idle],
            hour,
            &[WEB],
            TaskState::Mirrored,
        ),
        (
            "single flight: the same work submitted during the copy does not start it again",
            &[Submit(WEB), Running(1), Submit(WEB), Submit(WEB), Release(10), Idle],
            hour,
            &[WEB],
            TaskState::Mirrored,
        ),
        (
            "single flight: other work submitted during the copy runs once afterwards",
            &[
                Submit(WEB),
                Running(1),
                Submit(PINNED),
                Submit(PINNED),
                Release(10),
                Idle,
            ],
            hour,
            &[WEB, PINNED],
            TaskState::Mirrored,
        ),
        (
            "cooldown: a failed target is not retried by a submission",
            &[Submit(BAD), Release(10), Idle, Submit(BAD), Idle],
            hour,
            &[BAD],
            TaskState::Cooldown,
        ),
        (
            "cooldown: a reset retries the target at once",
            &[Submit(BAD), Release(10), Idle, ResetCooldown, Idle],
            hour,
            &[BAD, BAD],
            TaskState::Cooldown,
        ),
        (
            "repair: a target known mirrored is copied again in repair mode, once; the same work is cached after it",
            &[
                Submit(WEB),
                Release(10),
                Idle,
                Repair(WEB),
                Release(10),
                Idle,
                Submit(WEB),
                Idle,
            ],
            hour,
            &[WEB, WEB_REPAIR],
            TaskState::Mirrored,
        ),
        (
            "repair: asked during a plain copy of the same work, it runs afterwards, a plain submission merged into it",
            &[Submit(WEB), Running(1), Repair(WEB), Submit(WEB), Release(10), Idle],
            hour,
            &[WEB, WEB_REPAIR],
            TaskState::Mirrored,
        ),
        (
            "repair: a repair that fails is retried in repair mode",
            &[Repair(BAD), Release(10), Idle, ResetCooldown, Idle],
            hour,
            &[BAD_REPAIR, BAD_REPAIR],
            TaskState::Cooldown,
        ),
        (
            "no cooldown: a submission retries a failed target at once",
            &[Submit(BAD), Release(10), Idle, Submit(BAD), Idle],
            None,
            &[BAD, BAD],
            TaskState::Failed,
        ),
    ];
    for (name, script, cooldown, want_calls, want_state) in cases {
        let (calls, state, counters) = run(script, *cooldown).await;
        assert_eq!(calls, *want_calls, "{name}: {counters:?}");
        assert_eq!(state, *want_state, "{name}: {counters:?}");
    }
}

#[tokio::test]
async fn lines_of_the_copy_engine_name_the_image() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    run(&[Step::Submit("ghcr.io/a/web:1"), Step::Release(1), Step::Idle], None).await;
    let lines = logs.lines();
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "copying")
        .unwrap_or_else(|| panic!("no line of the engine in {lines:?}"));
    assert_eq!(line["span"]["name"], "mirror", "{line}");
    assert_eq!(line["span"]["source"], "ghcr.io/a/web:1", "{line}");
    assert_eq!(line["span"]["target"], "r.example/a/web:1", "{line}");
}

#[tokio::test]
async fn a_plan_submits_only_what_changed_since_the_last_one() {
    let fake = Fake::default();
    fake.0.gate.add_permits(100);
    let queue = Queue::start(fake.clone(), QueueOptions::default());
    let web = || task("ghcr.io/a/web:1");
    let pinned = || task("ghcr.io/a/web:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    // (plan, everything, forget the last plan first) -> tasks submitted
    let cases = [
        (vec![web()], false, false, 1),
        (vec![web()], false, false, 0),
        (vec![web()], true, false, 1),
        (vec![pinned()], false, false, 1),
        (vec![pinned()], false, true, 1),
        (vec![], false, false, 0),
        (vec![pinned()], false, false, 1),
    ];
    for (i, (plan, everything, forget, want)) in cases.into_iter().enumerate() {
        if forget {
            queue.forget_plan();
        }
        let done = queue.submit_plan(plan, everything);
        assert_eq!(done.submitted, want, "plan {i}");
        assert!(queue.wait_idle(WAIT).await, "plan {i}");
    }
    queue.shutdown(Duration::ZERO).await;
}

/// A task copying `source` to `r.example/<repository>:1`.
fn task_to(source: &str, repository: &str) -> MirrorTask {
    MirrorTask::new(CopyRequest {
        source: ImageRef::parse(source).unwrap(),
        target: ImageRef::parse(&format!("r.example/{repository}")).unwrap(),
        target_tag: Some("1".into()),
    })
}

#[tokio::test]
async fn urgent_tasks_go_ahead_of_routine_work_and_outlive_plans_without_them() {
    let fake = Fake::default();
    let options = QueueOptions {
        workers: 1,
        ..QueueOptions::default()
    };
    let queue = Queue::start(fake.clone(), options);
    let (to, mut outcomes) = mpsc::unbounded_channel();
    queue.report_outcomes(Interest::Urgent, to);
    // One worker, busy; three routine targets wait, then one urgent, and one routine target that
    // turns urgent while it waits.
    queue.submit(task_to("ghcr.io/a/busy:1", "busy"));
    let started = Instant::now();
    while queue.counters().running != 1 {
        assert!(started.elapsed() < WAIT, "the first copy never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for name in ["r1", "r2", "r3", "promoted"] {
        queue.submit(task_to(&format!("ghcr.io/a/{name}:1"), name));
    }
    assert!(queue.submit_urgent(task_to("ghcr.io/a/urgent:1", "urgent")));
    assert!(queue.submit_urgent(task_to("ghcr.io/a/promoted:1", "promoted")));
    // A plan without them forgets the routine targets, never the urgent ones.
    let forgotten = queue
        .submit_plan(vec![task_to("ghcr.io/a/r1:1", "r1")], false)
        .forgotten;
    assert_eq!(forgotten, 2, "r2 and r3");
    fake.0.gate.add_permits(100);
    assert!(queue.wait_idle(WAIT).await);
    let calls = fake.0.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "ghcr.io/a/busy:1",
            "ghcr.io/a/urgent:1",
            "ghcr.io/a/promoted:1",
            "ghcr.io/a/r1:1"
        ]
    );
    let mut reported = vec![];
    while let Ok(outcome) = outcomes.try_recv() {
        reported.push((outcome.target.to_string(), outcome.result));
    }
    assert_eq!(
        reported,
        [
            ("r.example/urgent:1".to_owned(), "copied"),
            ("r.example/promoted:1".to_owned(), "copied")
        ],
        "only urgent targets are reported"
    );
    // Still known after another plan without them: shown in the status, skipped by the cache.
    queue.submit_plan(vec![], false);
    let known: Vec<String> = queue.snapshot().into_iter().map(|s| s.target).collect();
    assert_eq!(known, ["r.example/promoted:1", "r.example/urgent:1"]);
    assert!(
        !queue.submit_urgent(task_to("ghcr.io/a/urgent:1", "urgent")),
        "known mirrored"
    );
    assert_eq!(queue.counters().skipped_by_cache, 1);
    queue.shutdown(Duration::ZERO).await;
}

/// What an object declares is submitted when new or changed, outlives plans without it, is copied
/// again past the cache on a refresh, is forgotten once no object declares it, and each attempt's
/// outcome reaches the subscriber of the object's kind, naming the object.
#[tokio::test]
async fn declared_work_is_kept_besides_the_plan_and_reported_per_object() {
    let fake = Fake::default();
    fake.0.gate.add_permits(1_000);
    let queue = Queue::start(fake.clone(), QueueOptions::default());
    let (to, mut outcomes) = mpsc::unbounded_channel();
    queue.report_outcomes(Interest::Declared("Image"), to);
    let (urgent_to, mut urgent_outcomes) = mpsc::unbounded_channel();
    queue.report_outcomes(Interest::Urgent, urgent_to);
    let base = DeclaredSource::new("Image", "shop", "base");
    let other = DeclaredSource::new("Image", "shop", "other");
    let flux = DeclaredSource::new("ImageRepository", "flux-system", "app");
    let calls = || fake.0.calls.lock().unwrap().clone();
    let idle = async || assert!(queue.wait_idle(WAIT).await, "the queue never went idle");
    let known = || -> Vec<String> { queue.snapshot().into_iter().map(|s| s.target).collect() };

    // (declaration, submitted, forgotten) in turn, then the copies made so far; each declaration
    // that changes what is declared is told to those watching (the periodic verification).
    let mut changes = queue.declared_changes();
    let mut told = || {
        let changed = changes.has_changed().unwrap();
        changes.borrow_and_update();
        changed
    };
    let two = || vec![task_to("ghcr.io/a/one:1", "one"), task_to("ghcr.io/a/two:1", "two")];
    let done = queue.declare(base.clone(), two());
    assert_eq!((done.submitted, done.forgotten), (2, 0));
    assert!(told());
    idle().await;
    assert_eq!(queue.declare(base.clone(), two()).submitted, 0, "same work");
    assert!(!told(), "same work");
    // A plan without the declared targets keeps them.
    assert_eq!(
        queue.submit_plan(vec![task_to("ghcr.io/a/p:1", "p")], false).forgotten,
        0
    );
    idle().await;
    assert_eq!(known(), ["r.example/one:1", "r.example/p:1", "r.example/two:1"]);
    // Changed work for one target (another source tag), the same for the other.
    let changed = vec![task_to("ghcr.io/a/one:2", "one"), task_to("ghcr.io/a/two:1", "two")];
    assert_eq!(queue.declare(base.clone(), changed).submitted, 1);
    assert!(told());
    idle().await;
    // The tag copied, declared from then on by the digest copied: not copied again, yet told.
    let pinned = vec![
        task_to(&format!("ghcr.io/a/one:2@{D}"), "one"),
        task_to("ghcr.io/a/two:1", "two"),
    ];
    assert_eq!(queue.declare(base.clone(), pinned).submitted, 0);
    assert!(told());
    let mut declared: Vec<String> = queue
        .declared_tasks()
        .iter()
        .map(|(t, _)| t.request.source.to_string())
        .collect();
    declared.sort();
    assert_eq!(declared, [format!("ghcr.io/a/one:2@{D}"), "ghcr.io/a/two:1".to_owned()]);
    // Recurrent: a refresh copies every declared target again although the cache knows it.
    assert_eq!(queue.refresh_declared(&base), 2);
    idle().await;
    assert_eq!(calls().len(), 2 + 1 + 1 + 2);
    // Two objects declare `two`; the Flux object declares `three`.
    queue.declare(other.clone(), vec![task_to("ghcr.io/a/two:1", "two")]);
    queue.declare(flux.clone(), vec![task_to("ghcr.io/a/three:1", "three")]);
    idle().await;
    let mut declared: Vec<(String, Vec<DeclaredSource>)> = queue
        .declared_tasks()
        .into_iter()
        .map(|(t, by)| (t.request.source.to_string(), by))
        .collect();
    declared.sort();
    let one = format!("ghcr.io/a/one:2@{D}");
    let want = [
        (one.as_str(), vec![base.clone()]),
        ("ghcr.io/a/three:1", vec![flux.clone()]),
        ("ghcr.io/a/two:1", vec![base.clone(), other.clone()]),
    ];
    let want: Vec<(String, Vec<DeclaredSource>)> = want.into_iter().map(|(s, by)| (s.to_owned(), by)).collect();
    assert_eq!(declared, want, "one, two (declared twice, both objects named), three");
    // The referrers sweep: every planned and declared target once, past the cache.
    assert_eq!(queue.resubmit_mirrored(), 4, "p, one, two, three");
    idle().await;
    assert_eq!(
        calls().len(),
        2 + 1 + 1 + 2 + 1 + 4,
        "three copied once, then the sweep"
    );
    told();
    // `base` drops both: `one` is forgotten, `two` stays (declared by `other`).
    let done = queue.declare(base.clone(), vec![]);
    assert_eq!(done.submitted, 0);
    assert!(told());
    assert_eq!(known(), ["r.example/p:1", "r.example/three:1", "r.example/two:1"]);
    assert_eq!(queue.undeclare(other.clone()), 0, "nothing was waiting");
    assert_eq!(known(), ["r.example/p:1", "r.example/three:1"]);
    // Forgotten entirely: declared again, it is copied again only if the cache does not know it.
    let again = queue.declare(base.clone(), vec![task_to("ghcr.io/a/four:1", "four")]);
    assert_eq!(again.submitted, 1);
    idle().await;

    let mut reported = vec![];
    while let Ok(outcome) = outcomes.try_recv() {
        let by: Vec<String> = outcome.declared_by.iter().map(ToString::to_string).collect();
        assert_eq!(
            outcome.source_digest.as_ref().map(ToString::to_string).as_deref(),
            Some(D)
        );
        assert!(outcome.error.is_none());
        reported.push((outcome.target.to_string(), outcome.result, by.join(",")));
    }
    reported.sort();
    let one = "r.example/one:1".to_owned();
    let two = "r.example/two:1".to_owned();
    let base_name = "Image shop/base".to_owned();
    assert_eq!(
        reported,
        [
            ("r.example/four:1".to_owned(), "copied", base_name.clone()),
            (one.clone(), "copied", base_name.clone()),
            (one.clone(), "copied", base_name.clone()),
            (one.clone(), "copied", base_name.clone()),
            (one, "copied", base_name.clone()),
            (two.clone(), "copied", base_name.clone()),
            (two.clone(), "copied", base_name.clone()),
            // The sweep's, once both objects declare it.
            (two, "copied", format!("{base_name},Image shop/other")),
        ],
        "only targets Image objects declare, with the objects; none of the Flux object's or the plan's"
    );
    assert!(urgent_outcomes.try_recv().is_err(), "nothing urgent");
    queue.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_failed_declared_target_reports_its_error_and_cools_down() {
    let fake = Fake::default();
    fake.0.gate.add_permits(10);
    let queue = Queue::start(fake.clone(), QueueOptions::default());
    let (to, mut outcomes) = mpsc::unbounded_channel();
    queue.report_outcomes(Interest::Declared("Image"), to);
    let source = DeclaredSource::new("Image", "shop", "bad");
    queue.declare(source.clone(), vec![task_to("ghcr.io/a/bad:1", "bad")]);
    assert!(queue.wait_idle(WAIT).await);
    // Declared again with the same work: the cooldown holds it.
    assert_eq!(
        queue.declare(source, vec![task_to("ghcr.io/a/bad:1", "bad")]).submitted,
        0
    );
    let outcome = outcomes.try_recv().expect("one outcome");
    assert_eq!((outcome.result, outcome.source_digest), ("failed", None));
    assert!(outcome.error.unwrap().contains("ghcr.io/a/bad:1"));
    assert!(outcomes.try_recv().is_err());
    assert_eq!(fake.0.calls.lock().unwrap().len(), 1);
    queue.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn status_names_the_objects_declaring_a_target_with_their_problems() {
    let fake = Fake::default();
    fake.0.gate.add_permits(10);
    let queue = Queue::start(fake.clone(), QueueOptions::default());
    let base = DeclaredSource::new("Image", "shop", "base");
    let flux = DeclaredSource::new("ImageRepository", "flux-system", "app");
    queue.declare(base.clone(), vec![task_to("ghcr.io/a/one:1", "one")]);
    queue.declare(
        flux.clone(),
        vec![task_to("ghcr.io/a/one:1", "one"), task_to("ghcr.io/a/two:1", "two")],
    );
    queue.submit(task_to("ghcr.io/a/p:1", "p"));
    assert!(queue.wait_idle(WAIT).await);
    #[derive(Debug, thiserror::Error)]
    #[error("Secret flux-system/pull not found")]
    struct Missing;
    // (problem of the Flux object, then `declaredBy` of each target as /status shows it)
    let flux_entry = |problem: Option<&str>| match problem {
        Some(p) => serde_json::json!({"object": "ImageRepository flux-system/app", "problem": p}),
        None => serde_json::json!({"object": "ImageRepository flux-system/app"}),
    };
    let declared_by = || -> Vec<(String, serde_json::Value)> {
        let all = serde_json::to_value(queue.snapshot()).unwrap();
        let entries = all.as_array().unwrap().iter();
        entries
            .map(|e| (e["target"].as_str().unwrap().to_owned(), e["declaredBy"].clone()))
            .collect()
    };
    let base_entry = serde_json::json!({"object": "Image shop/base"});
    let problem = Some("Secret flux-system/pull not found");
    let cases: [(Option<SourceProblem>, Option<&str>); 2] =
        [(Some(SourceProblem::new(Missing)), problem), (None, None)];
    for (reported, shown) in cases {
        queue.declare_problem(&flux, reported);
        assert_eq!(
            declared_by(),
            [
                (
                    "r.example/one:1".to_owned(),
                    serde_json::json!([base_entry, flux_entry(shown)])
                ),
                ("r.example/p:1".to_owned(), serde_json::Value::Null),
                ("r.example/two:1".to_owned(), serde_json::json!([flux_entry(shown)])),
            ],
            "{shown:?}"
        );
    }
    // The object deleted: its problem goes with it.
    queue.declare_problem(&flux, Some(SourceProblem::new(Missing)));
    queue.undeclare(flux.clone());
    queue.declare(flux.clone(), vec![task_to("ghcr.io/a/one:1", "one")]);
    assert_eq!(
        declared_by()[0],
        (
            "r.example/one:1".to_owned(),
            serde_json::json!([base_entry, flux_entry(None)])
        )
    );
    queue.shutdown(Duration::ZERO).await;
}
