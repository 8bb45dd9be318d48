//! The mirror queue against real registries: one copy per target, single-flight, the positive cache,
//! the failure cooldown and its timer, the worker cap, dry runs, shutdown. Request counts come from the
//! registries' access logs, limited to copycat's own requests (testkit's pushes use another user agent).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use copycat::copy::{CopyOptions, CopyRequest};
use copycat::plan::MirrorTask;
use copycat::platform::Platform;
use copycat::queue::{Queue, QueueOptions, TaskStatus};
use copycat::reference::ImageRef;
use copycat::task_state::TaskState;
use copycat::workload::{Kind, Workload};
use serde_json::{Value, json};
use testkit::logs::Logs;
use testkit::{AccessLogEntry, Fault, FaultProxy, Image, Match, Registry, RegistryMode, manifest_digest};

use crate::copy::copier;
use crate::support::start;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn options(workers: usize) -> QueueOptions {
    QueueOptions {
        workers,
        failure_cooldown: Some(Duration::from_secs(1)),
        ..QueueOptions::default()
    }
}

/// A task copying `source` from `src_host` (a registry or a proxy in front of one) to `dst` `repo:tag`.
fn task(src_host: &str, source: &str, dst: &Registry, repo: &str, tag: &str) -> MirrorTask {
    MirrorTask::new(CopyRequest {
        source: ImageRef::parse(&format!("{src_host}/{source}")).unwrap(),
        target: ImageRef::parse(&format!("{}/{repo}", dst.host())).unwrap(),
        target_tag: Some(tag.to_owned()),
    })
}

/// Requests copycat made to `reg` (all of those answered so far: `requests()` waits for the access
/// log to catch up).
fn ours(reg: &Registry) -> Vec<AccessLogEntry> {
    reg.requests()
        .into_iter()
        .filter(|r| r.user_agent == "copycat-test")
        .collect()
}

fn manifest_puts(reg: &Registry, repo: &str) -> usize {
    let prefix = format!("/v2/{repo}/manifests/");
    ours(reg)
        .iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with(&prefix))
        .count()
}

/// Polls `done` until it holds; fails the test after [`WAIT`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn status(queue: &Queue, target: &str) -> TaskStatus {
    let all = queue.snapshot();
    all.iter()
        .find(|s| s.target.ends_with(target))
        .cloned()
        .unwrap_or_else(|| panic!("no status for {target} in {all:#?}"))
}

/// The Pod `shop/NAME`.
fn pod(name: impl Into<String>) -> Workload {
    Workload::new(Kind::Pod, "shop", name)
}

/// The Deployment `shop/NAME`.
fn deployment(name: &str) -> Workload {
    Workload::new(Kind::Deployment, "shop", name)
}

/// The users of a status, as `/status` shows them.
fn users(status: &TaskStatus) -> Vec<String> {
    status.users.iter().map(ToString::to_string).collect()
}

fn digest(status: &TaskStatus) -> Option<String> {
    status.digest.as_ref().map(ToString::to_string)
}

/// The queue's lines.
fn queue_lines(logs: &Logs) -> Vec<serde_json::Value> {
    logs.lines()
        .into_iter()
        .filter(|l| l["target"] == "copycat::queue")
        .collect()
}

#[tokio::test]
async fn fifty_submits_of_one_target_make_one_copy() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let image = Image::oci("amd64", &[50_000], 1).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    // A source HEAD held until released keeps the copy running while the second half arrives.
    proxy.set(Fault::hold().on(Match::new(Some("HEAD"), Some("/manifests/"))));
    let queue = Queue::start(copier(&[&src, &dst]), options(4));
    let submit = |i: usize| {
        queue.submit(task(&proxy.host(), "app:v1", &dst, "app", "v1").with_user(pod(format!("web-{i}"))));
    };

    (0..25).for_each(submit);
    assert_eq!(queue.counters().queued, 1, "25 submissions, one queued task");
    until("the copy to start", || queue.counters().running == 1).await;
    (25..50).for_each(submit);
    assert_eq!(
        (queue.counters().running, queue.counters().queued),
        (1, 0),
        "not started again"
    );
    proxy.release_stalls();
    assert!(queue.wait_idle(WAIT).await);

    assert_eq!(manifest_puts(&dst, "app"), 1);
    let c = queue.counters();
    assert_eq!((c.submitted, c.merged, c.copied, c.reruns, c.failed), (50, 49, 1, 0, 0));
    let s = status(&queue, "/app:v1");
    assert_eq!(s.state, TaskState::Mirrored);
    assert_eq!(digest(&s), Some(image.digest.clone()));
    let latest: Vec<String> = (45..50).map(|i| format!("Pod shop/web-{i}")).collect();
    assert_eq!(users(&s), latest, "users unioned, bounded to the most recent");
    assert_eq!(queue.snapshot().len(), 1);

    submit(50);
    assert_eq!(queue.counters().skipped_by_cache, 1);
    assert!(status(&queue, "/app:v1").users.contains(&pod("web-50")));
    queue.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_request_changed_during_the_copy_runs_once_more_afterwards() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let (v1, v2) = (
        Image::oci("amd64", &[20_000], 2).unwrap(),
        Image::oci("amd64", &[20_000], 3).unwrap(),
    );
    v1.push(&src, "app", "v1").await.unwrap();
    v2.push(&src, "app", "v2").await.unwrap();
    // Pinned sources need no source HEAD; hold the first manifest GET instead.
    proxy.set(Fault::hold().on(Match::new(Some("GET"), Some("/manifests/"))));
    let queue = Queue::start(copier(&[&src, &dst]), options(2));
    let pinned = |d: &str| task(&proxy.host(), &format!("app:v1@{d}"), &dst, "app", "v1");

    queue.submit(pinned(&v1.digest));
    until("the first copy to start", || queue.counters().running == 1).await;
    for i in 0..5 {
        queue.submit(pinned(&v2.digest).with_user(pod(format!("web-{i}"))));
    }
    let c = queue.counters();
    assert_eq!((c.running, c.queued), (1, 0), "a running target is not started again");
    proxy.release_stalls();
    assert!(queue.wait_idle(WAIT).await);

    let c = queue.counters();
    assert_eq!((c.copied, c.reruns), (2, 1), "{c:?}");
    assert_eq!(manifest_puts(&dst, "app"), 2);
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(v2.digest.clone())
    );
    let s = status(&queue, "/app:v1");
    assert_eq!((s.state, digest(&s)), (TaskState::Mirrored, Some(v2.digest.clone())));
    assert_eq!(s.users.len(), 5);
}

#[tokio::test]
async fn queued_submissions_merge_and_the_newest_request_wins() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let (v1, v2) = (
        Image::oci("amd64", &[20_000], 4).unwrap(),
        Image::oci("amd64", &[20_000], 5).unwrap(),
    );
    v1.push(&src, "slow", "v1").await.unwrap();
    v1.push(&src, "app", "v1").await.unwrap();
    v2.push(&src, "app", "v2").await.unwrap();
    proxy.set(Fault::hold().on(Match::new(Some("HEAD"), Some("/v2/slow/manifests/"))));
    let queue = Queue::start(copier(&[&src, &dst]), options(1));

    // The only worker is busy while the app target is submitted twice.
    queue.submit(task(&proxy.host(), "slow:v1", &dst, "slow", "v1"));
    until("the slow copy to start", || queue.counters().running == 1).await;
    let pinned = |d: &str| task(&proxy.host(), &format!("app:v1@{d}"), &dst, "app", "v1");
    queue.submit(pinned(&v1.digest).with_user(deployment("old")));
    queue.submit(pinned(&v2.digest).with_user(deployment("new")));
    assert_eq!(status(&queue, "/app:v1").state, TaskState::Queued);
    proxy.release_stalls();
    assert!(queue.wait_idle(WAIT).await);

    assert_eq!(manifest_puts(&dst, "app"), 1, "one copy for the merged task");
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(v2.digest.clone())
    );
    let s = status(&queue, "/app:v1");
    assert_eq!(users(&s), ["Deployment shop/old", "Deployment shop/new"]);
    assert!(s.source.ends_with(&v2.digest), "{}", s.source);
    assert_eq!(queue.counters().merged, 1);
}

#[tokio::test]
async fn the_positive_cache_skips_known_targets_without_any_request_until_its_ttl() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[20_000], 6).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    // Long enough that the three cached submissions below (no I/O) finish well inside it.
    let ttl = Duration::from_secs(3);
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            positive_ttl: ttl,
            ..options(2)
        },
    );
    let t = || task(&src.host(), "app:v1", &dst, "app", "v1");

    queue.submit(t());
    assert!(queue.wait_idle(WAIT).await);
    let cached_at = Instant::now();
    assert_eq!(queue.counters().copied, 1);
    let (src_before, dst_before) = (ours(&src).len(), ours(&dst).len());

    for _ in 0..3 {
        queue.submit(t());
    }
    assert!(cached_at.elapsed() < ttl, "the submissions came inside the TTL");
    assert!(queue.wait_idle(WAIT).await);
    assert_eq!(queue.counters().skipped_by_cache, 3);
    assert_eq!(ours(&src).len(), src_before, "no request at the source");
    assert_eq!(ours(&dst).len(), dst_before, "no request at the target");

    // Once the entry expires the registries are asked again: two HEADs, already present.
    tokio::time::sleep(ttl.saturating_sub(cached_at.elapsed()) + Duration::from_millis(100)).await;
    queue.submit(t());
    assert!(queue.wait_idle(WAIT).await);
    assert_eq!(queue.counters().present, 1);
    let (src_after, dst_after) = (ours(&src), ours(&dst));
    assert_eq!(src_after.len(), src_before + 1);
    assert_eq!(dst_after.len(), dst_before + 1);
    assert!(src_after.last().is_some_and(|r| r.method == "HEAD"));
    assert!(dst_after.last().is_some_and(|r| r.method == "HEAD"));
}

#[tokio::test]
async fn a_changed_source_digest_is_copied_again_each_outcome_one_log_line() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (v1, v2) = (
        Image::oci("amd64", &[20_000], 7).unwrap(),
        Image::oci("amd64", &[30_000], 8).unwrap(),
    );
    v1.push(&src, "app", "v1").await.unwrap();
    v2.push(&src, "app", "v2").await.unwrap();
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let queue = Queue::start(copier(&[&src, &dst]), options(2));
    let pinned = |d: &str| task(&src.host(), &format!("app:v1@{d}"), &dst, "app", "v1").with_user(deployment("web"));

    queue.submit(pinned(&v1.digest));
    assert!(queue.wait_idle(WAIT).await);
    queue.submit(pinned(&v1.digest));
    queue.submit(pinned(&v2.digest));
    assert!(queue.wait_idle(WAIT).await);
    queue.submit(pinned(&v2.digest));

    let c = queue.counters();
    assert_eq!((c.copied, c.skipped_by_cache), (2, 2), "{c:?}");
    assert_eq!(manifest_puts(&dst, "app"), 2);
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(v2.digest.clone())
    );

    let lines = queue_lines(&logs);
    let outcomes: Vec<&serde_json::Value> = lines.iter().filter(|l| l["fields"]["result"].is_string()).collect();
    assert_eq!(outcomes.len(), 2, "{lines:#?}");
    for (line, image) in outcomes.iter().zip([&v1, &v2]) {
        let f = &line["fields"];
        assert_eq!(line["level"], "INFO");
        assert_eq!(f["result"], "copied");
        assert_eq!(f["source"], format!("{}/app:v1@{}", src.host(), image.digest));
        assert_eq!(f["target"], format!("{}/app:v1", dst.host()));
        assert_eq!(
            (&f["namespace"], &f["workload"]),
            (&json!("shop"), &json!("Deployment/web"))
        );
        assert_eq!(
            f["users"],
            Value::Null,
            "counted only when more than one workload uses the image"
        );
        assert_eq!(f["digest"], image.digest);
        assert!(f["bytes"].as_u64().unwrap() > 0, "{f}");
        assert!(f["duration_ms"].is_u64(), "{f}");
    }
}

#[tokio::test]
async fn a_failed_target_cools_down_then_retries_by_itself() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let image = Image::oci("amd64", &[20_000], 9).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    // The source says "not found" once; the retry then finds the image without the test racing the
    // cooldown to push it.
    proxy.set(Fault::status(404).on(Match::new(Some("HEAD"), Some("/v2/app/manifests/v1"))));
    let cooldown = Duration::from_secs(2);
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            failure_cooldown: Some(cooldown),
            ..options(2)
        },
    );
    let t = |user: &str| task(&proxy.host(), "app:v1", &dst, "app", "v1").with_user(pod(user));
    let source_heads = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "HEAD" && r.path == "/v2/app/manifests/v1")
            .count()
    };

    queue.submit(t("a"));
    until("the failure", || queue.counters().cooling_down == 1).await;
    let failed_at = Instant::now();
    let s = status(&queue, "/app:v1");
    assert_eq!(s.state, TaskState::Cooldown);
    assert!(s.last_error.as_deref().unwrap().contains("not found"), "{s:?}");
    assert!(s.next_retry.is_some());
    assert_eq!(source_heads(), 1);

    // A submission during the cooldown does not run the target early, but it is what is retried.
    // 200 ms is far inside the 2 s cooldown, so a retry now would be an early one.
    queue.submit(t("b"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = queue.counters();
    assert_eq!((c.failed, c.cooling_down, c.merged), (1, 1, 1));
    assert_eq!(source_heads(), 1);

    until("the automatic retry", || queue.counters().copied == 1).await;
    let waited = failed_at.elapsed();
    assert!(
        waited >= cooldown - Duration::from_millis(300) && waited < cooldown + Duration::from_secs(5),
        "retried after {waited:?}"
    );
    assert!(queue.wait_idle(WAIT).await);
    let s = status(&queue, "/app:v1");
    assert_eq!(s.state, TaskState::Mirrored);
    assert_eq!(s.last_error, None);
    assert_eq!(users(&s), ["Pod shop/a", "Pod shop/b"]);
    assert_eq!(queue.counters().retried, 1);
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(image.digest.clone())
    );
}

#[tokio::test]
async fn without_a_cooldown_a_submission_retries_a_failure_at_once() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            failure_cooldown: None,
            // No automatic retry within the test: only the submission retries.
            retry_backoff: Duration::from_secs(3600),
            ..options(2)
        },
    );
    let t = || task(&src.host(), "app:v1", &dst, "app", "v1");
    queue.submit(t());
    assert!(queue.wait_idle(WAIT).await);
    assert_eq!(status(&queue, "/app:v1").state, TaskState::Failed);
    assert_eq!(queue.counters().cooling_down, 0);
    assert!(!queue.cooldown_enabled());

    Image::oci("amd64", &[20_000], 10)
        .unwrap()
        .push(&src, "app", "v1")
        .await
        .unwrap();
    queue.submit(t());
    assert!(queue.wait_idle(WAIT).await);
    let c = queue.counters();
    assert_eq!((c.failed, c.copied, c.retried), (1, 1, 0));
    assert_eq!(status(&queue, "/app:v1").state, TaskState::Mirrored);
}

#[tokio::test]
async fn without_a_cooldown_a_failure_is_retried_after_a_doubling_backoff() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            failure_cooldown: None,
            retry_backoff: Duration::from_millis(200),
            max_retry_backoff: Duration::from_millis(800),
            ..options(2)
        },
    );
    queue.submit(task(&src.host(), "app:v1", &dst, "app", "v1"));
    until("the first failure", || queue.counters().failed == 1).await;
    let failed = status(&queue, "/app:v1");
    assert_eq!(failed.state, TaskState::Failed);
    assert!(failed.next_retry.is_some(), "a retry is scheduled: {failed:?}");
    assert_eq!(queue.counters().cooling_down, 0, "a backoff is no cooldown");
    assert!(queue.wait_idle(WAIT).await, "waiting targets do not count as busy");

    // 200 ms, 400 ms, 800 ms, 800 ms: four more failures take about 2.2 s, not less.
    let started = Instant::now();
    until("four retries", || queue.counters().failed == 5).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "retried too early: {took:?}");
    assert_eq!(queue.counters().retried, 4);

    Image::oci("amd64", &[20_000], 12)
        .unwrap()
        .push(&src, "app", "v1")
        .await
        .unwrap();
    until("the copy once the source has it", || queue.counters().copied == 1).await;
    assert_eq!(status(&queue, "/app:v1").state, TaskState::Mirrored);
    assert!(status(&queue, "/app:v1").next_retry.is_none());
}

#[tokio::test]
async fn reset_cooldown_requeues_at_once() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            failure_cooldown: Some(Duration::from_secs(3600)),
            ..options(2)
        },
    );
    queue.submit(task(&src.host(), "app:v1", &dst, "app", "v1"));
    queue.submit(task(&src.host(), "other:v1", &dst, "other", "v1"));
    until("both failures", || queue.counters().cooling_down == 2).await;
    assert!(queue.wait_idle(WAIT).await, "targets in cooldown do not count as busy");

    let image = Image::oci("amd64", &[20_000], 11).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    image.push(&src, "other", "v1").await.unwrap();
    assert!(queue.cooldown_enabled());
    assert_eq!(queue.reset_cooldown(), 2);
    assert!(queue.wait_idle(WAIT).await);
    let c = queue.counters();
    assert_eq!((c.copied, c.retried, c.cooling_down), (2, 2, 0), "{c:?}");
    assert_eq!(queue.reset_cooldown(), 0);
}

#[tokio::test]
async fn permanent_errors_cool_down_too_and_log_at_error_level() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (ours_image, theirs) = (
        Image::oci("amd64", &[20_000], 12).unwrap(),
        Image::oci("amd64", &[20_000], 13).unwrap(),
    );
    ours_image.push(&src, "app", "v1").await.unwrap();
    theirs.push(&dst, "app", "v1").await.unwrap();
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let copy = CopyOptions {
        allow_overwrite: false,
        always_overwrite_tags: vec![],
        ..CopyOptions::default()
    };
    let queue = Queue::start(copier(&[&src, &dst]), QueueOptions { copy, ..options(2) });

    queue.submit(
        task(&src.host(), "app:v1", &dst, "app", "v1")
            .with_user(deployment("web"))
            .with_user(pod("debug")),
    );
    until("the failure", || queue.counters().cooling_down == 1).await;
    let s = status(&queue, "/app:v1");
    assert_eq!(s.state, TaskState::Cooldown);
    assert!(
        s.last_error.as_deref().unwrap().contains("refusing to overwrite"),
        "{s:?}"
    );
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(theirs.digest.clone())
    );

    let lines = queue_lines(&logs);
    let failure = lines
        .iter()
        .find(|l| l["fields"]["result"] == "failed")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(failure["level"], "ERROR");
    assert!(
        failure["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("refusing to overwrite"),
        "{failure}"
    );
    let f = &failure["fields"];
    assert_eq!(
        (&f["namespace"], &f["workload"], &f["users"]),
        (&json!("shop"), &json!("Deployment/web"), &json!(2))
    );
    assert_eq!(f["bytes"], Value::Null, "unknown for a failure");
    assert_eq!(failure["fields"]["retry_in"], "1s");
}

#[tokio::test]
async fn the_worker_cap_holds_copies_never_overlap_with_one_worker() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let image = Image::oci("amd64", &[20_000], 14).unwrap();
    image.push(&src, "app", "v1").await.unwrap();

    // Copy intervals as the queue saw them, sorted by start. Every source HEAD takes 200 ms with one
    // worker; with three, the HEADs are held until all three copies run.
    let run = |workers: usize, round: &'static str| {
        let (proxy, src, dst) = (&proxy, &src, &dst);
        async move {
            let stall = if workers == 1 {
                Fault::stall(Duration::from_millis(200))
            } else {
                Fault::hold()
            };
            proxy.set(stall.on(Match::new(Some("HEAD"), Some("/manifests/"))).times(3));
            let queue = Queue::start(copier(&[src, dst]), options(workers));
            for name in ["a", "b", "c"] {
                queue.submit(task(&proxy.host(), "app:v1", dst, &format!("{round}/{name}"), "v1"));
            }
            if workers > 1 {
                until("three copies at once", || queue.counters().running == 3).await;
                proxy.release_stalls();
            }
            assert!(queue.wait_idle(WAIT).await);
            assert_eq!(queue.counters().copied, 3);
            let mut spans: Vec<_> = queue
                .snapshot()
                .iter()
                .map(|s| (s.started.unwrap(), s.finished.unwrap()))
                .collect();
            spans.sort();
            queue.shutdown(WAIT).await;
            spans
        }
    };

    let serial = run(1, "one").await;
    for pair in serial.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "copies overlapped with one worker: {serial:?}");
    }
    // The measure can see overlap: three workers do overlap.
    let parallel = run(3, "three").await;
    assert!(
        parallel.windows(2).any(|pair| pair[0].1 > pair[1].0),
        "three workers never overlapped: {parallel:?}"
    );
}

#[tokio::test]
async fn dropping_waiting_work_forgets_queued_and_cooling_targets_and_lets_running_copies_finish() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    Image::oci("amd64", &[20_000], 20)
        .unwrap()
        .push(&src, "queued", "v1")
        .await
        .unwrap();
    // The running copy's source is missing, and says so only once released.
    proxy.set(Fault::hold().on(Match::new(Some("HEAD"), Some("/v2/running/manifests/"))));
    let queue = Queue::start(copier(&[&src, &dst]), options(1));
    let requested = |repo: &str| {
        let path = format!("/v2/{repo}/");
        proxy.requests().iter().filter(|r| r.path.starts_with(&path)).count()
    };

    queue.submit(task(&proxy.host(), "cooling:v1", &dst, "cooling", "v1"));
    until("the first failure", || queue.counters().cooling_down == 1).await;
    queue.submit(task(&proxy.host(), "running:v1", &dst, "running", "v1"));
    until("the slow copy to start", || queue.counters().running == 1).await;
    // Another source for the running target: a rerun after the copy, unless dropped.
    queue.submit(task(&proxy.host(), "running:v2", &dst, "running", "v1"));
    queue.submit(task(&proxy.host(), "queued:v1", &dst, "queued", "v1"));
    assert_eq!(queue.counters().queued, 1);

    assert_eq!(queue.drop_waiting(), 2, "the queued target and the one in cooldown");
    let c = queue.counters();
    assert_eq!((c.queued, c.running, c.cooling_down), (0, 1, 0), "{c:?}");
    proxy.release_stalls();
    assert!(queue.wait_idle(WAIT).await);
    let (cooling_requests, running_requests) = (requested("cooling"), requested("running"));
    // Three times the 1 s cooldown: a retry of the dropped target would have come by now, so
    // nothing was retried or run again, and the dropped target never started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = queue.counters();
    assert_eq!(
        (c.failed, c.retried, c.reruns, c.copied, c.cooling_down),
        (2, 0, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(
        status(&queue, "/running:v1").state,
        TaskState::Failed,
        "the running copy's failure waits for the next submission, not a cooldown"
    );
    assert_eq!(
        (requested("cooling"), requested("running")),
        (cooling_requests, running_requests)
    );
    assert_eq!(requested("queued"), 0);
    assert!(queue.snapshot().iter().all(|s| !s.target.contains("/queued")));

    // Submitted again (by a new leader's plan), the target runs as usual.
    queue.submit(task(&proxy.host(), "queued:v1", &dst, "queued", "v1"));
    assert!(queue.wait_idle(WAIT).await);
    assert_eq!(queue.counters().copied, 1);
    assert_eq!(manifest_puts(&dst, "queued"), 1);
}

#[tokio::test]
async fn targets_no_longer_planned_are_forgotten_and_never_retried() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    Image::oci("amd64", &[20_000], 21)
        .unwrap()
        .push(&src, "ok", "v1")
        .await
        .unwrap();
    let queue = Queue::start(copier(&[&src, &dst]), options(2));
    let tried = |repo: &str| {
        let path = format!("/v2/{repo}/manifests/");
        ours(&src).iter().filter(|r| r.path.starts_with(&path)).count()
    };
    // Two sources that do not exist (cooling down after their failure) and one that mirrors.
    let (gone, kept, ok) = (
        task(&src.host(), "gone:v1", &dst, "gone", "v1"),
        task(&src.host(), "kept:v1", &dst, "kept", "v1"),
        task(&src.host(), "ok:v1", &dst, "ok", "v1"),
    );
    let planned: HashSet<_> = [kept.key()].into();
    for t in [gone, kept, ok] {
        queue.submit(t);
    }
    until("two failures and a copy", || {
        let c = queue.counters();
        (c.cooling_down, c.copied) == (2, 1)
    })
    .await;

    // Only `kept` is still used by a workload: `gone` and the finished `ok` are forgotten.
    assert_eq!(queue.retain_planned(&planned), 1, "one waiting target dropped");
    assert_eq!(queue.counters().cooling_down, 1);
    let targets: Vec<String> = queue.snapshot().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, [format!("{}/kept:v1", dst.host())]);
    let gone_tries = tried("gone");
    // Two retries of `kept` take two cooldowns; `gone` failed with it, so its retry (if any) was due
    // a whole cooldown before the second.
    until("kept to be retried twice after its cooldowns", || {
        queue.counters().retried >= 2
    })
    .await;
    assert_eq!(tried("gone"), gone_tries, "a forgotten target is never retried");
    assert!(tried("kept") > 1, "the planned target is");
}

#[tokio::test]
async fn dry_pull_makes_no_registry_request_and_logs_each_task() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[20_000], 15).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let queue = Queue::start(
        copier(&[&src, &dst]),
        QueueOptions {
            dry_pull: true,
            ..options(2)
        },
    );
    for name in ["a", "b", "c"] {
        queue.submit(task(&src.host(), "app:v1", &dst, name, "v1"));
    }
    assert!(queue.wait_idle(WAIT).await);
    queue.submit(task(&src.host(), "app:v1", &dst, "a", "v1"));

    let c = queue.counters();
    assert_eq!((c.dry_pulled, c.skipped_by_cache, c.copied), (3, 1, 0));
    assert!(queue.snapshot().iter().all(|s| s.state == TaskState::DryRun));
    assert!(ours(&src).is_empty(), "{:?}", ours(&src));
    assert!(ours(&dst).is_empty(), "{:?}", ours(&dst));
    let lines = queue_lines(&logs);
    let said: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    for name in ["a", "b", "c"] {
        let line = format!("would mirror {}/app:v1 → {}/{name}:v1", src.host(), dst.host());
        assert_eq!(said.iter().filter(|s| **s == line).count(), 1, "{said:#?}");
    }
}

#[tokio::test]
async fn dry_run_counts_would_copy_and_writes_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[20_000], 16).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let copy = CopyOptions {
        dry_run: true,
        ..CopyOptions::default()
    };
    let queue = Queue::start(copier(&[&src, &dst]), QueueOptions { copy, ..options(2) });
    queue.submit(task(&src.host(), "app:v1", &dst, "app", "v1"));
    assert!(queue.wait_idle(WAIT).await);

    assert_eq!(queue.counters().would_copy, 1);
    assert_eq!(status(&queue, "/app:v1").state, TaskState::DryRun);
    let writes: Vec<_> = ours(&dst)
        .into_iter()
        .filter(|r| r.method != "HEAD" && r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(manifest_digest(&dst, "app", "v1").await.unwrap(), None);
}

/// A queue copying one image whose blob downloads are held (until [`FaultProxy::release_stalls`]),
/// once a download has begun.
async fn copying_with_held_downloads(seed: u64) -> (Registry, Registry, FaultProxy, Image, Queue) {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let image = Image::oci("amd64", &[20_000], seed).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    proxy.set(
        Fault::hold()
            .on(Match::new(Some("GET"), Some("/blobs/sha256:")))
            .times(10),
    );
    let queue = Queue::start(copier(&[&src, &dst]), options(2));
    queue.submit(task(&proxy.host(), "app:v1", &dst, "app", "v1"));
    until("a blob download", || {
        proxy.requests().iter().any(|r| r.path.contains("/blobs/sha256:"))
    })
    .await;
    (src, dst, proxy, image, queue)
}

#[tokio::test]
async fn shutdown_lets_a_running_copy_finish_within_the_grace() {
    let (_src, dst, proxy, image, queue) = copying_with_held_downloads(17).await;

    let shutdown = tokio::spawn(queue.clone().shutdown(Duration::from_secs(20)));
    // The download is held for up to a minute: a shutdown that did not wait would be done by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!shutdown.is_finished(), "the shutdown waits for the running copy");
    assert_eq!(queue.counters().running, 1);
    proxy.release_stalls();
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the shutdown ends once the copy has finished")
        .unwrap();
    assert_eq!(queue.counters().copied, 1);
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        Some(image.digest.clone())
    );
}

#[tokio::test]
async fn shutdown_cancels_a_copy_that_outlasts_the_grace() {
    let (src, dst, _proxy, _image, queue) = copying_with_held_downloads(18).await;

    let began = Instant::now();
    queue.clone().shutdown(Duration::from_millis(300)).await;
    let took = began.elapsed();
    // The download is held for a minute: well under that, the copy was cancelled, not finished.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap(),
        None,
        "no tag written"
    );
    let s = status(&queue, "/app:v1");
    assert_eq!(s.state, TaskState::Queued);
    assert_eq!(s.last_error.as_deref(), Some("cancelled by shutdown"));

    let submitted = queue.counters().submitted;
    queue.submit(task(&src.host(), "app:v1", &dst, "app", "v1"));
    assert_eq!(queue.counters().submitted, submitted, "ignored after shutdown");
    assert_eq!(queue.reset_cooldown(), 0);
}

#[tokio::test]
async fn a_missing_platform_is_reported_once_unless_ignored() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci_index(&[1000], false, 60).unwrap();
    image.push(&src, "multi", "v1").await.unwrap();
    image.push(&src, "quiet", "v1").await.unwrap();
    let options = QueueOptions {
        positive_ttl: Duration::ZERO,
        ignore_missing_platforms: vec![regex::Regex::new(r"quiet.*\|linux/s390x$").unwrap()],
        ..options(1)
    };
    let queue = Queue::start(copier(&[&src, &dst]), options);
    let platforms: Vec<Platform> = ["linux/amd64", "linux/s390x"]
        .iter()
        .map(|p| Platform::parse(p).unwrap())
        .collect();
    for _ in 0..3 {
        queue.submit(task(&src.host(), "multi:v1", &dst, "multi", "v1").with_platforms(platforms.clone()));
        assert!(queue.wait_idle(Duration::from_secs(20)).await);
    }
    queue.submit(task(&src.host(), "quiet:v1", &dst, "quiet", "v1").with_platforms(platforms.clone()));
    assert!(queue.wait_idle(Duration::from_secs(20)).await);
    let warnings: Vec<serde_json::Value> = queue_lines(&logs)
        .into_iter()
        .filter(|l| l["fields"]["message"] == "the source does not offer a requested platform")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "three copies of multi, one warning; quiet is ignored: {warnings:?}"
    );
    assert_eq!(warnings[0]["fields"]["platform"], "linux/s390x");
    let c = queue.counters();
    assert_eq!(
        (c.copied + c.present, c.skipped_by_cache),
        (4, 0),
        "every submission ran a copy"
    );
}
