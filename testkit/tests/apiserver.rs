//! The stand-in API server driven by the real, unmodified `kube` client, `kube::runtime::watcher`
//! and `kube-lease-manager`, in-process and over TCP.

use std::io::{BufRead as _, Read as _, Write as _};
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt as _, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::{Value, json};
use testkit::apiserver::{ApiServer, RunningApiServer};
use tokio::time::{sleep, timeout};

/// Bound of every single wait.
const T: Duration = Duration::from_secs(10);

fn in_process(server: &ApiServer) -> Client {
    Client::new(server.router(), "default")
}

async fn tcp_client(running: &RunningApiServer) -> Client {
    let kc = Kubeconfig::read_from(running.kubeconfig_path()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(config).expect("client")
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": labels },
        "spec": { "containers": [{ "name": "main", "image": format!("registry.example/{name}:1") }] },
    })
}

fn typed_pod(name: &str) -> Pod {
    serde_json::from_value(pod(name, json!({}))).expect("pod")
}

fn no_namespace(mut p: Pod) -> Pod {
    p.metadata.namespace = None;
    p
}

fn deployment(ns: &str, name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": image }] },
            },
        },
    })
}

/// `(code, reason)` of an API error.
fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send>>;

fn describe<K: kube::Resource>(e: &watcher::Event<K>) -> String {
    match e {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(o) => format!("InitApply({})", o.name_any()),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(o) => format!("Apply({})", o.name_any()),
        watcher::Event::Delete(o) => format!("Delete({})", o.name_any()),
    }
}

/// The next event; errors are recorded and followed by a short pause, as a backoff would.
async fn next_event<K: kube::Resource>(s: &mut Events<K>, errors: &mut Vec<String>) -> watcher::Event<K> {
    timeout(T, async {
        loop {
            match s.next().await {
                Some(Ok(e)) => return e,
                Some(Err(e)) => {
                    errors.push(e.to_string());
                    sleep(Duration::from_millis(50)).await;
                }
                None => panic!("watcher stream ended"),
            }
        }
    })
    .await
    .expect("timed out waiting for a watcher event")
}

async fn next_described<K: kube::Resource>(s: &mut Events<K>, errors: &mut Vec<String>) -> String {
    describe(&next_event(s, errors).await)
}

/// Events up to and including the next `InitDone`.
async fn until_init_done<K: kube::Resource>(s: &mut Events<K>, errors: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let e = next_described(s, errors).await;
        let done = e == "InitDone";
        out.push(e);
        if done {
            return out;
        }
    }
}

fn list_requests(server: &ApiServer, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.starts_with(path) && !p.contains("watch=true"))
        .count()
}

#[tokio::test]
async fn crud_round_trips_and_error_codes() {
    let server = ApiServer::new();
    let client = in_process(&server);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let all: Api<Pod> = Api::all(client.clone());
    assert!(all.list(&ListParams::default()).await.unwrap().items.is_empty());

    let created = pods.create(&PostParams::default(), &typed_pod("web")).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert_eq!(rv1, server.resource_version());

    assert_eq!(
        api_error(pods.create(&PostParams::default(), &typed_pod("web")).await),
        (409, "AlreadyExists".into())
    );
    assert_eq!(api_error(pods.get("nope").await), (404, "NotFound".into()));
    assert_eq!(
        api_error(pods.delete("nope", &DeleteParams::default()).await),
        (404, "NotFound".into())
    );
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "missing");
    assert_eq!(
        api_error(
            pods.create(&PostParams::default(), &{
                let mut p = typed_pod("x");
                p.metadata.namespace = Some("other".into());
                p
            })
            .await
        ),
        (400, "BadRequest".into()),
        "body and URL namespaces must agree"
    );
    assert_eq!(
        api_error(
            elsewhere
                .create(&PostParams::default(), &no_namespace(typed_pod("x")))
                .await
        ),
        (404, "NotFound".into()),
        "the namespace must exist"
    );

    // Replace: a stale resourceVersion conflicts, the current one goes through.
    let mut got = pods.get("web").await.unwrap();
    got.spec.as_mut().unwrap().containers[0].image = Some("registry.example/web:2".into());
    let mut stale = got.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(
        api_error(pods.replace("web", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    let replaced = pods.replace("web", &PostParams::default(), &got).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert!(replaced.resource_version().unwrap().parse::<u64>().unwrap() > rv1);

    // Merge, strategic and JSON patches.
    let merged = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "a": "1" } } })),
        )
        .await
        .unwrap();
    assert_eq!(merged.labels().get("a").map(String::as_str), Some("1"));
    let strategic = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "metadata": { "labels": { "a": null, "b": "2" } } })),
        )
        .await
        .unwrap();
    assert!(!strategic.labels().contains_key("a"));
    assert_eq!(strategic.labels().get("b").map(String::as_str), Some("2"));
    // JSON patch (kube's typed variant needs a feature we do not build): a raw request.
    let ops = json!([
        { "op": "add", "path": "/metadata/annotations", "value": { "note": "x" } },
        { "op": "test", "path": "/metadata/labels/b", "value": "2" },
    ]);
    let req = axum::http::Request::patch("/api/v1/namespaces/default/pods/web")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    let jp: Pod = client.request(req).await.unwrap();
    assert_eq!(jp.annotations().get("note").map(String::as_str), Some("x"));
    let failing = json!([{ "op": "test", "path": "/metadata/labels/b", "value": "nope" }]);
    let req = axum::http::Request::patch("/api/v1/namespaces/default/pods/web")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&failing).unwrap())
        .unwrap();
    assert_eq!(api_error(client.request::<Pod>(req).await), (422, "Invalid".into()));

    // Merge patch with a stale resourceVersion is a precondition failure.
    assert_eq!(
        api_error(
            pods.patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "resourceVersion": "2", "labels": { "c": "3" } } })),
            )
            .await
        ),
        (409, "Conflict".into())
    );

    // Server-side apply: create-or-merge, field ownership, conflicts, force.
    let alice = PatchParams::apply("alice");
    let applied = pods
        .patch(
            "api",
            &alice,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": "api", "labels": { "owner": "alice" } },
                "spec": { "containers": [{ "name": "main", "image": "registry.example/api:1" }] },
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.labels().get("owner").map(String::as_str), Some("alice"));
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m.manager.as_deref().unwrap_or(""),
                m.operation.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(managers, vec!["alice/Apply"]);
    let bob_patch = Patch::Apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "api", "labels": { "owner": "bob" } },
    }));
    assert_eq!(
        api_error(pods.patch("api", &PatchParams::apply("bob"), &bob_patch).await),
        (409, "Conflict".into())
    );
    let forced = pods
        .patch("api", &PatchParams::apply("bob").force(), &bob_patch)
        .await
        .unwrap();
    assert_eq!(forced.labels().get("owner").map(String::as_str), Some("bob"));
    assert_eq!(
        forced.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example/api:1"),
        "fields bob did not apply stay"
    );
    assert_eq!(
        api_error(
            pods.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        ),
        (404, "NotFound".into())
    );

    // Delete: pods answer with the object; other kinds with a Success status.
    let gone = pods.delete("web", &DeleteParams::default()).await.unwrap();
    assert_eq!(gone.left().map(|p| p.name_any()).as_deref(), Some("web"));
    assert_eq!(api_error(pods.get("web").await), (404, "NotFound".into()));
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    deploys
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("default", "d", "nginx:1")).unwrap(),
        )
        .await
        .unwrap();
    let status = deploys.delete("d", &DeleteParams::default()).await.unwrap();
    assert!(status.right().is_some_and(|s| s.is_success()));
    assert!(server.get("Deployment", "default", "d").is_none());
}

#[tokio::test]
async fn paged_lists_are_consistent_snapshots() {
    let server = ApiServer::new();
    for i in 0..5 {
        server.apply(pod(&format!("p{i}"), json!({}))).unwrap();
    }
    let api: Api<Pod> = Api::all(in_process(&server));
    let names = |l: &kube::api::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();

    let page1 = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&page1), vec!["p0", "p1"]);
    assert_eq!(page1.metadata.remaining_item_count, Some(3));
    let token = page1.metadata.continue_.clone().expect("continue token");
    let snapshot_rv = page1.metadata.resource_version.clone().unwrap();

    // Changes after the first page do not show in later pages.
    server.delete("Pod", "default", "p4");
    server.apply(pod("p9", json!({}))).unwrap();
    let page2 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&page2), vec!["p2", "p3"]);
    assert_eq!(page2.metadata.remaining_item_count, Some(1), "counted in the snapshot");
    assert_eq!(page2.metadata.resource_version.as_deref(), Some(snapshot_rv.as_str()));
    let token2 = page2.metadata.continue_.clone().expect("continue token");
    let page3 = api
        .list(&ListParams::default().limit(2).continue_token(&token2))
        .await
        .unwrap();
    assert_eq!(names(&page3), vec!["p4"]);
    assert!(page3.metadata.continue_.is_none());

    // An exact read at the old resourceVersion sees the same state; a fresh list the new one.
    let exact = api
        .list(&ListParams::default().at(&snapshot_rv).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(names(&exact), vec!["p0", "p1", "p2", "p3", "p4"]);
    let fresh = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&fresh), vec!["p0", "p1", "p2", "p3", "p9"]);
    let any = api.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(names(&any), names(&fresh));

    // Once the history is compacted, the old snapshot is gone: 410 Expired.
    server.compact();
    assert_eq!(
        api_error(api.list(&ListParams::default().limit(2).continue_token(&token2)).await),
        (410, "Expired".into())
    );
    assert_eq!(
        api_error(
            api.list(&ListParams::default().at(&snapshot_rv).matching(VersionMatch::Exact))
                .await
        ),
        (410, "Expired".into())
    );
    // A garbled token is a bad request.
    assert_eq!(
        api_error(
            api.list(&ListParams::default().limit(2).continue_token("garbage"))
                .await
        ),
        (400, "BadRequest".into())
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = ApiServer::new();
    server.apply(pod("a", json!({ "app": "web", "env": "prod" }))).unwrap();
    server
        .apply(pod("b", json!({ "app": "web", "env": "staging", "canary": "true" })))
        .unwrap();
    server.apply(pod("c", json!({ "app": "db", "env": "prod" }))).unwrap();
    let api: Api<Pod> = Api::all(in_process(&server));
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            let mut n: Vec<String> = api
                .list(&lp)
                .await
                .unwrap()
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(names(ListParams::default().labels("app=web")).await, ["a", "b"]);
    assert_eq!(names(ListParams::default().labels("app=web,env!=prod")).await, ["b"]);
    assert_eq!(names(ListParams::default().labels("!canary")).await, ["a", "c"]);
    assert_eq!(names(ListParams::default().labels("canary")).await, ["b"]);
    assert_eq!(
        names(ListParams::default().labels("env in (prod, qa)")).await,
        ["a", "c"]
    );
    assert_eq!(names(ListParams::default().labels("app notin (web)")).await, ["c"]);
    assert_eq!(names(ListParams::default().fields("metadata.name=b")).await, ["b"]);
    assert_eq!(
        names(ListParams::default().fields("metadata.namespace=default,metadata.name!=b")).await,
        ["a", "c"]
    );
    assert_eq!(
        names(ListParams::default().labels("app=web").limit(1)).await.len(),
        1,
        "selectors and limits combine"
    );
    let err = api.list(&ListParams::default().fields("spec.bogus=x")).await;
    let Err(kube::Error::Api(s)) = err else {
        panic!("expected 400")
    };
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert!(
        s.message.contains("field label not supported: spec.bogus"),
        "{}",
        s.message
    );
    assert_eq!(
        api_error(api.list(&ListParams::default().labels("app in web")).await),
        (400, "BadRequest".into())
    );

    // A selector-filtered watch sees objects enter and leave the selection as ADDED/DELETED.
    let rv = server.resource_version().to_string();
    let mut s = api
        .watch(&WatchParams::default().labels("app=web").disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    server.apply(pod("c", json!({ "app": "web" }))).unwrap();
    server.apply(pod("a", json!({ "app": "db" }))).unwrap();
    server.apply(pod("a", json!({ "app": "db", "x": "y" }))).unwrap();
    server.apply(pod("b", json!({ "app": "web", "x": "y" }))).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = timeout(T, s.try_next()).await.unwrap().unwrap().unwrap();
        seen.push(match ev {
            WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.name_any()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.name_any()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED c", "DELETED a", "MODIFIED b"]);
}

#[tokio::test]
async fn watcher_sees_init_then_applies_and_deletes() {
    let server = ApiServer::new();
    server.apply(deployment("default", "a", "nginx:1")).unwrap();
    server.apply(deployment("kube-system", "b", "nginx:1")).unwrap();
    let api: Api<Deployment> = Api::all(in_process(&server));
    let mut w: Events<Deployment> = watcher(api, watcher::Config::default()).boxed();
    let mut errors = Vec::new();
    assert_eq!(
        until_init_done(&mut w, &mut errors).await,
        ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]
    );

    server.apply(deployment("default", "c", "nginx:1")).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(c)");
    server.apply(deployment("default", "a", "nginx:2")).unwrap();
    let watcher::Event::Apply(a) = next_event(&mut w, &mut errors).await else {
        panic!("expected Apply(a)")
    };
    assert_eq!(a.name_any(), "a");
    assert_eq!(a.metadata.generation, Some(2));
    let image = a.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("nginx:2"));
    server.delete("Deployment", "kube-system", "b");
    assert_eq!(next_described(&mut w, &mut errors).await, "Delete(b)");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(list_requests(&server, "/apis/apps/v1/deployments?"), 1);
}

#[tokio::test]
async fn watcher_relists_after_410_on_a_broken_connection() {
    let server = ApiServer::new();
    for n in ["a", "b"] {
        server.apply(deployment("default", n, "nginx:1")).unwrap();
    }
    let api: Api<Deployment> = Api::all(in_process(&server));
    let mut w: Events<Deployment> = watcher(api, watcher::Config::default()).boxed();
    let mut errors = Vec::new();
    until_init_done(&mut w, &mut errors).await;
    server.apply(deployment("default", "x", "nginx:1")).unwrap();
    assert_eq!(
        next_described(&mut w, &mut errors).await,
        "Apply(x)",
        "the watch is open"
    );

    // While the client is away: the connection drops, things change, history is compacted.
    server.close_watches();
    server.delete("Deployment", "default", "a");
    server.apply(deployment("default", "c", "nginx:1")).unwrap();
    server.compact();

    let relist = until_init_done(&mut w, &mut errors).await;
    assert_eq!(
        relist,
        ["Init", "InitApply(b)", "InitApply(c)", "InitApply(x)", "InitDone"]
    );
    assert!(
        errors.iter().any(|e| e.contains("Expired") || e.contains("too old")),
        "the resumed watch got 410: {errors:?}"
    );
    assert_eq!(list_requests(&server, "/apis/apps/v1/deployments?"), 2);
    server.apply(deployment("default", "d", "nginx:1")).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(d)");
}

#[tokio::test]
async fn watcher_relists_after_server_restart() {
    let server = ApiServer::new();
    for n in ["a", "b"] {
        server.apply(deployment("default", n, "nginx:1")).unwrap();
    }
    let mut running = server.serve().unwrap();
    let api: Api<Deployment> = Api::all(tcp_client(&running).await);
    let mut w: Events<Deployment> = watcher(api, watcher::Config::default()).boxed();
    let mut errors = Vec::new();
    assert_eq!(
        until_init_done(&mut w, &mut errors).await,
        ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]
    );
    server.apply(deployment("default", "x", "nginx:1")).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(x)");

    running.stop();
    server.delete("Deployment", "default", "a");
    server.apply(deployment("default", "c", "nginx:1")).unwrap();
    let rv_before = server.resource_version();
    running.restart().unwrap();
    assert!(server.resource_version() > rv_before, "the resourceVersion moves on");

    let relist = until_init_done(&mut w, &mut errors).await;
    assert_eq!(
        relist,
        ["Init", "InitApply(b)", "InitApply(c)", "InitApply(x)", "InitDone"]
    );
    assert!(!errors.is_empty(), "the broken stream surfaced as errors");
    server.apply(deployment("default", "d", "nginx:1")).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(d)");
}

#[tokio::test]
async fn bookmarks_when_asked_and_timeout_ends_the_stream() {
    let server = ApiServer::new();
    server.set_bookmark_interval(Duration::from_millis(150));
    let api: Api<Pod> = Api::all(in_process(&server));
    let rv = server.resource_version().to_string();
    let started = Instant::now();
    let mut s = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    let first = timeout(T, s.try_next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Bookmark(b) = first else {
        panic!("expected a bookmark, got {first:?}")
    };
    assert_eq!(b.metadata.resource_version, rv);
    assert_eq!(b.types.kind, "Pod");
    let created = server.apply(pod("p", json!({}))).unwrap();
    let new_rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let mut saw_added = false;
    let mut last_bookmark = None;
    while let Some(ev) = timeout(T, s.try_next()).await.expect("stream ends by itself").unwrap() {
        match ev {
            WatchEvent::Added(p) => {
                assert_eq!(p.name_any(), "p");
                saw_added = true;
            }
            WatchEvent::Bookmark(b) => last_bookmark = Some(b.metadata.resource_version),
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(saw_added);
    assert_eq!(
        last_bookmark.as_deref(),
        Some(new_rv.as_str()),
        "bookmarks follow the resourceVersion"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Not asked for: none.
    let s = api
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), &new_rv)
        .await
        .unwrap();
    let events: Vec<_> = timeout(T, s.try_collect::<Vec<_>>()).await.unwrap().unwrap();
    assert!(events.is_empty(), "{events:?}");

    // Too old: one ERROR event carrying a 410 Status.
    server.apply(pod("q", json!({}))).unwrap();
    server.compact();
    let s = api.watch(&WatchParams::default(), &rv).await.unwrap();
    let events: Vec<_> = timeout(T, s.try_collect::<Vec<_>>()).await.unwrap().unwrap();
    assert_eq!(events.len(), 1);
    let WatchEvent::Error(e) = &events[0] else {
        panic!("expected ERROR, got {:?}", events[0])
    };
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert!(e.message.starts_with("too old resource version"), "{}", e.message);
}

#[tokio::test]
async fn watcher_rewatches_from_last_resource_version_after_timeout() {
    let server = ApiServer::new();
    let api: Api<Pod> = Api::all(in_process(&server));
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut w: Events<Pod> = watcher(api, config).boxed();
    let mut errors = Vec::new();
    assert_eq!(until_init_done(&mut w, &mut errors).await, ["Init", "InitDone"]);
    let p1 = server.apply(pod("p1", json!({}))).unwrap();
    let rv1 = p1["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(p1)");
    // Keep polling past the 1 s server-side timeout: the watcher re-watches quietly.
    assert!(
        timeout(Duration::from_millis(1600), w.next()).await.is_err(),
        "no events meanwhile"
    );
    server.apply(pod("p2", json!({}))).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(p2)");
    assert!(errors.is_empty(), "{errors:?}");

    let watches: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.contains("watch=true"))
        .map(|(_, p)| p)
        .collect();
    assert!(watches.len() >= 2, "{watches:?}");
    assert!(
        watches[1].contains(&format!("resourceVersion={rv1}")),
        "second watch resumes at the last seen resourceVersion {rv1}: {watches:?}"
    );
    assert_eq!(list_requests(&server, "/api/v1/pods?"), 1, "no relist");
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = ApiServer::new();
    server.apply(pod("a", json!({}))).unwrap();
    let api: Api<Pod> = Api::all(in_process(&server));
    let mut w: Events<Pod> = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut errors = Vec::new();
    assert_eq!(
        until_init_done(&mut w, &mut errors).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply(pod("b", json!({}))).unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(b)");
    assert_eq!(list_requests(&server, "/api/v1/pods?"), 0, "no list call at all");
    assert!(server.count_requests("GET", "sendInitialEvents=true") >= 1);
}

#[tokio::test]
async fn lease_manager_one_holder_then_handover() {
    let server = ApiServer::new();
    let client = in_process(&server);
    let build = |id: &str| {
        LeaseManagerBuilder::new(client.clone(), "copycat-leader")
            .with_identity(id)
            .with_duration(3)
            .with_grace(1)
            .build()
    };
    let a = build("a").await.unwrap();
    let b = build("b").await.unwrap();

    // Both race for the lease: exactly one wins, the other keeps waiting.
    let (ra, rb) = tokio::join!(
        timeout(Duration::from_secs(2), a.changed()),
        timeout(Duration::from_secs(2), b.changed())
    );
    let a_won = matches!(ra, Ok(Ok(true)));
    let b_won = matches!(rb, Ok(Ok(true)));
    assert!(a_won ^ b_won, "exactly one leader: a={ra:?} b={rb:?}");
    let (leader, follower, leader_id, follower_id) = if a_won { (a, b, "a", "b") } else { (b, a, "b", "a") };
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get("copycat-leader").await.unwrap()).as_deref(),
        Some(leader_id)
    );

    // The leader steps down; the follower takes over within a lease duration.
    leader.release().await.unwrap();
    assert!(
        !timeout(T, leader.changed()).await.unwrap().unwrap(),
        "leader knows it lost it"
    );
    assert!(
        timeout(T, follower.changed()).await.unwrap().unwrap(),
        "follower takes over"
    );
    let lease = leases.get("copycat-leader").await.unwrap();
    assert_eq!(holder(lease.clone()).as_deref(), Some(follower_id));
    assert!(lease.spec.unwrap().lease_transitions.unwrap_or(0) >= 2);
    follower.release().await.unwrap();
}

/// A raw HTTP/1.1 request: (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn over_tcp_with_kubeconfig_and_control_api() {
    let server = ApiServer::new();
    server.apply(pod("web", json!({}))).unwrap();
    let running = server.serve().unwrap();
    assert!(running.url().starts_with("http://127.0.0.1:"));
    let client = tcp_client(&running).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);

    let port = running.port();
    let list = json!({ "kind": "List", "items": [pod("x", json!({})), pod("y", json!({}))] });
    let (code, body) = tokio::task::spawn_blocking(move || http(port, "POST", "/_control/apply", &list.to_string()))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 3);

    let (code, body) = tokio::task::spawn_blocking(move || {
        let first = http(port, "DELETE", "/_control/objects/Pod/default/web", "");
        let again = http(port, "DELETE", "/_control/objects/pods/default/web", "");
        let compact = http(port, "POST", "/_control/compact", "");
        let get = http(port, "GET", "/_control/objects/pods/default/x", "");
        assert_eq!(again.0, 404, "{}", again.1);
        assert_eq!(compact.0, 200, "{}", compact.1);
        assert_eq!(get.0, 200, "{}", get.1);
        first
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, ["x", "y"]);
    let (code, body) = tokio::task::spawn_blocking(move || http(port, "GET", "/_control/requests", ""))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let log: Vec<(String, String)> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        log.iter()
            .filter(|(m, p)| m == "GET" && p.starts_with("/api/v1/namespaces/default/pods"))
            .count(),
        3
    );
    assert!(
        !log.iter().any(|(_, p)| p.starts_with("/_control")),
        "control calls are not logged"
    );
}

#[tokio::test]
async fn discovery_version_metadata_and_dynamic_lists() {
    let server = ApiServer::new();
    server.apply(deployment("default", "d", "nginx:1")).unwrap();
    let client = in_process(&server);
    let info = client.apiserver_version().await.unwrap();
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));

    let gvk = kube::api::GroupVersionKind::gvk("apps", "v1", "Deployment");
    for discovery in [
        kube::discovery::Discovery::new(client.clone()).run().await.unwrap(),
        kube::discovery::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let (ar, caps) = discovery.resolve_gvk(&gvk).expect("deployments discovered");
        assert_eq!(ar.plural, "deployments");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(discovery.has_group("coordination.k8s.io"));
        // The custom kinds copycat reads: Image with its status subresource, Flux's
        // ImageRepository in both versions (v1 preferred).
        let image = kube::api::GroupVersionKind::gvk("skopeo.io", "v1alpha1", "Image");
        let (images, image_caps) = discovery.resolve_gvk(&image).expect("images discovered");
        assert_eq!(
            (images.plural.as_str(), image_caps.scope.clone()),
            ("images", kube::discovery::Scope::Namespaced)
        );
        assert!(
            image_caps.subresources.iter().any(|(s, _)| s.plural == "status"),
            "images/status"
        );
        for version in ["v1", "v1beta2"] {
            let gvk = kube::api::GroupVersionKind::gvk("image.toolkit.fluxcd.io", version, "ImageRepository");
            assert!(discovery.resolve_gvk(&gvk).is_some(), "ImageRepository {version}");
        }
        let flux = discovery.get("image.toolkit.fluxcd.io").expect("flux group");
        assert_eq!(flux.preferred_version_or_latest(), "v1");
        // Dynamic lists decode although items come without apiVersion/kind.
        let dynamic: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
        let items = dynamic.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(items.len(), 1);
        assert!(items[0].types.is_none());
    }
    let ar = kube::discovery::oneshot::pinned_kind(&client, &kube::api::GroupVersionKind::gvk("", "v1", "Namespace"))
        .await
        .unwrap()
        .0;
    assert_eq!(ar.plural, "namespaces");

    let deploys: Api<Deployment> = Api::all(client.clone());
    let meta = deploys.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 1);
    assert_eq!(meta.items[0].name_any(), "d");
    let one = Api::<Deployment>::default_namespaced(client.clone())
        .get_metadata("d")
        .await
        .unwrap();
    assert_eq!(one.metadata.namespace.as_deref(), Some("default"));
    let namespaces: Api<Namespace> = Api::all(client);
    let ns = namespaces.get("default").await.unwrap();
    assert_eq!(ns.status.and_then(|s| s.phase).as_deref(), Some("Active"));
}

#[tokio::test]
async fn status_subresource_and_finalizers() {
    let server = ApiServer::new();
    let client = in_process(&server);
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut d = deployment("default", "web", "nginx:1");
    d["status"] = json!({ "replicas": 3 });
    d["metadata"]["finalizers"] = json!(["example.com/keep"]);
    let created = deploys
        .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    assert!(created.status.is_none(), "status is not set through the main resource");
    let patched = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );

    let mut w: Events<Deployment> = watcher(Api::all(client.clone()), watcher::Config::default()).boxed();
    let mut errors = Vec::new();
    until_init_done(&mut w, &mut errors).await;
    let pending = deploys.delete("web", &DeleteParams::default()).await.unwrap();
    let marked = pending.left().expect("still there while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(next_described(&mut w, &mut errors).await, "Apply(web)");
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    assert_eq!(next_described(&mut w, &mut errors).await, "Delete(web)");
    assert_eq!(api_error(deploys.get("web").await), (404, "NotFound".into()));
}

/// Kills the child process on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn fake_apiserver_binary_serves_loaded_objects() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: apps\n\
         spec:\n  template:\n    spec:\n      containers:\n      - name: main\n        image: nginx:1\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kube/config");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
            .args(["--port", "0", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--load")
            .arg(&objects)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fake-apiserver"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = timeout(
        T,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("fake-apiserver announces itself")
    .unwrap()
    .unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let deploys: Api<Deployment> = Api::all(client);
    let names: Vec<String> = deploys
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    assert_eq!(names, ["web"]);
}

/// The whole raw answer (status line, headers, body) to `GET path`.
fn raw_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[tokio::test]
async fn injected_faults_answer_as_a_real_server_and_only_where_armed() {
    use k8s_openapi::api::core::v1::Secret;
    use testkit::apiserver::ApiFault;

    let server = ApiServer::new();
    server.apply(pod("web", json!({}))).unwrap();
    let client = in_process(&server);
    let (secrets, pods) = (Api::<Secret>::all(client.clone()), Api::<Pod>::all(client.clone()));

    // RBAC-like 403 on one verb of one resource; other verbs and resources are served.
    server.inject(ApiFault::forbidden("secrets", "list"));
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            assert!(
                status.message.contains("User \"system:serviceaccount:k8s-copycat:k8s-copycat\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert!(matches!(
        Api::<Secret>::namespaced(client.clone(), "default").get("missing").await,
        Err(kube::Error::Api(s)) if s.code == 404
    ));
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
    server.clear_faults();
    assert!(secrets.list(&ListParams::default()).await.is_ok());

    // A burst of 500s runs out; a slow list is served late.
    server.inject(ApiFault::server_error(500).on("pods", "list").times(2));
    for _ in 0..2 {
        assert!(matches!(pods.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 500));
    }
    assert!(pods.list(&ListParams::default()).await.is_ok());
    server.inject(ApiFault::slow(Duration::from_millis(300)).on("pods", "list").times(1));
    let started = Instant::now();
    assert!(pods.list(&ListParams::default()).await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // 429 with Retry-After, armed through the control API, as a raw client sees it.
    let running = server.serve().unwrap();
    let port = running.port();
    let (armed, answer) = tokio::task::spawn_blocking(move || {
        let armed = http(
            port,
            "POST",
            "/_control/faults?status=429&retryAfter=3&resource=pods&verb=list&times=1",
            "",
        );
        (armed, raw_get(port, "/api/v1/pods"))
    })
    .await
    .unwrap();
    assert_eq!(armed.0, 200, "{}", armed.1);
    let head = answer.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{answer}");
    assert!(head.contains("\r\nretry-after: 3"), "{answer}");
    assert!(answer.contains("\"reason\":\"TooManyRequests\""), "{answer}");
}
