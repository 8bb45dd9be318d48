//! Declarative sources (issue 15): version patterns over real registries' tag lists.

use futures::StreamExt;
use testkit::{Client, Image, Registry, RegistryMode, StaticRegistry};

use crate::commands::{copycat, text};
use crate::support::start;

/// Pushes `image` to `repo` under every tag of `tags` (one manifest, many tags), 16 at a time.
async fn push_tags(reg: &Registry, repo: &str, image: &Image, tags: &[String]) {
    let client = Client::new(reg).unwrap();
    client.push_image(repo, "seed", image).await.unwrap();
    futures::stream::iter(tags)
        .for_each_concurrent(16, |tag| {
            let client = &client;
            async move {
                client
                    .push_raw_manifest(repo, tag, &image.media_type, image.manifest.clone())
                    .await
                    .unwrap();
            }
        })
        .await;
}

#[tokio::test]
async fn plan_tags_prints_the_matching_tags_sorted_by_version() {
    let reg = start(RegistryMode::Plain);
    let image = Image::oci("amd64", &[1_000], 7).unwrap();
    let tags: Vec<String> = [
        "v2.13.10",
        "v2.13.2",
        "v2.13.2-rc1",
        "v2.13.3-rc12",
        "v2.14.0",
        "2.13.5",
        "latest",
        "v2.13.4-alpine",
        "v2.13",
        "v2.13.0",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    push_tags(&reg, "argoproj/argocd", &image, &tags).await;
    let source = format!("{}/argoproj/argocd", reg.host());

    let out = copycat(&["plan-tags", &source, "v2.13.x"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2.13.0\nv2.13.2\nv2.13.10\n");
    assert!(text(&out).contains("3 of 11 tags"), "{}", text(&out));

    let rc = copycat(&["plan-tags", &source, "v2.13.x", "--rc"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&rc.stdout),
        "v2.13.0\nv2.13.2-rc1\nv2.13.2\nv2.13.3-rc12\nv2.13.10\n"
    );

    let bad = copycat(&["plan-tags", &source, "v2.13"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("\"v2.13\""), "{}", text(&bad));
    let tagged = copycat(&["plan-tags", &format!("{source}:v2.13.0"), "v2.13.x"], &[]);
    assert_eq!(tagged.status.code(), Some(2), "{}", text(&tagged));

    let missing = copycat(&["plan-tags", &format!("{}/no/such", reg.host()), "1.x.x"], &[]);
    assert_eq!(missing.status.code(), Some(0), "{}", text(&missing));
    assert!(text(&missing).contains("0 of 0 tags"), "{}", text(&missing));
}

#[tokio::test]
async fn plan_tags_follows_link_pages() {
    // A registry that pages its tag list 100 at a time, as Docker Hub and Quay do (distribution
    // 2.8 never pages).
    let reg = StaticRegistry::start().unwrap();
    reg.set_tag_page_limit(100);
    let (digest, _) = reg.put_image("big/app", 1);
    let versions: Vec<String> = (0..1_200).map(|i| format!("1.{}.{}", i / 100, i % 100)).collect();
    for tag in versions
        .iter()
        .map(String::as_str)
        .chain(["2.0.0", "1.0.0-rc1", "latest", "v1.0.0", "1.0"])
    {
        reg.tag("big/app", tag, &digest);
    }

    let out = copycat(&["plan-tags", &format!("{}/big/app", reg.host()), "1.x.x"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(printed, versions, "every 1.x.x tag, sorted by version");
    assert!(text(&out).contains("1200 of 1205 tags"), "{}", text(&out));
    let pages = reg.requests().iter().filter(|r| r.ends_with("/tags/list")).count();
    assert_eq!(pages, 13, "1,205 tags in pages of 100");
}

const IMAGE_CRD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/manifests/crds/images.skopeo.io.yaml"
));

/// The stand-in API server serves `Image` objects as a cluster with the CRD does, to the real
/// `kube` client: create, list, watch, and status only through the status subresource; a spec
/// copycat cannot follow gets its `Failed` condition there.
#[tokio::test]
async fn image_objects_on_the_stand_in_api_server() {
    use copycat::declarative::image::{self, ImageObject, ImagePlan};
    use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
    use kube::runtime::watcher;
    use std::time::Duration;

    let server = testkit::apiserver::ApiServer::new();
    let client = kube::Client::new(server.router(), "default");
    let crd: DynamicObject = serde_saphyr::from_str(IMAGE_CRD).unwrap();
    let crd_resource = kube::core::ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &crd_resource);
    crds.create(&PostParams::default(), &crd).await.unwrap();
    assert!(
        crds.get_opt("images.skopeo.io").await.unwrap().is_some(),
        "the CRD is there"
    );

    let images: Api<ImageObject> = Api::namespaced_with(client.clone(), "default", &image::api_resource());
    let mut watch = std::pin::pin!(watcher(images.clone(), watcher::Config::default()));
    let object: ImageObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "skopeo.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": "argocd", "namespace": "default"},
        "spec": {
            "mode": "OneShot",
            "source": {"name": "quay.io/argoproj/argocd", "version": "v2.x"},
            "destination": {"name": "argoproj/argocd"}
        },
        "status": {"lastSyncTime": "2020-01-01T00:00:00Z"}
    }))
    .unwrap();
    let created = images.create(&PostParams::default(), &object).await.unwrap();
    assert_eq!(created.status, None, "status is not written through the main resource");

    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await.expect("watch open").expect("watch event") {
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => break o,
                _ => {}
            }
        }
    })
    .await
    .expect("the watch delivers the Image");
    assert_eq!(seen.spec.source.version, "v2.x");

    let error = ImagePlan::from_spec(&seen.spec, "mirror.example").unwrap_err();
    let status = image::invalid_status(&error, seen.metadata.generation, "2026-12-07T15:00:00Z");
    images
        .patch_status(
            "argocd",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
    let listed = images.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let written = listed.items[0].status.clone().expect("status written");
    let failed = written.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "InvalidPattern")
    );
    assert!(failed.message.contains("\"v2.x\""), "{}", failed.message);
}

/// Every field copycat reads from or writes to an `Image` is in the CRD's schema (a field missing
/// there would be pruned by a real API server), and the status is a subresource.
#[test]
fn the_image_crd_schema_holds_every_field_copycat_uses() {
    use copycat::declarative::image::{Condition, DestinationSpec, ImageSpec, ImageStatus, SourceSpec, TagResult};
    use serde_json::Value;

    fn missing(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (name, v) in fields {
                    match schema["properties"].get(name) {
                        Some(s) => missing(v, s, &format!("{path}.{name}"), out),
                        None => out.push(format!("{path}.{name}")),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| missing(v, &schema["items"], path, out)),
            _ => {}
        }
    }

    let crd: Value = serde_saphyr::from_str(IMAGE_CRD).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object(), "status subresource");
    let schema = &version["schema"]["openAPIV3Schema"];
    let time = Some("2026-01-01T00:00:00Z".to_owned());
    let spec = ImageSpec {
        mode: "Recurrent".into(),
        frequency: Some("15m".into()),
        allow_candidate_release: true,
        source: SourceSpec {
            name: "quay.io/a/b".into(),
            version: "1.x.x".into(),
        },
        destination: DestinationSpec {
            name: "b".into(),
            version: Some("1.x.x".into()),
        },
    };
    let status = ImageStatus {
        observed_generation: Some(1),
        last_sync_time: time.clone(),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Copied".into(),
            message: "m".into(),
            last_transition_time: time.clone(),
        }],
        tags: vec![TagResult {
            tag: "1.0.0".into(),
            source_digest: Some("sha256:00".into()),
            destination: "r/b:1.0.0".into(),
            result: "Copied".into(),
            message: "m".into(),
            time,
        }],
        pending_tags: Some(0),
    };
    let object = serde_json::json!({ "spec": spec, "status": status });
    let mut out = Vec::new();
    missing(&object, schema, "", &mut out);
    assert!(out.is_empty(), "fields not in the CRD schema: {out:?}");
}

/// A Flux `ImageRepository` watched on the stand-in API server: the scan result the reflector writes
/// through the status subresource asks for a mirror once per new revision, never for a status write
/// that keeps the revision.
#[tokio::test]
async fn flux_scan_revisions_seen_through_a_watch() {
    use copycat::declarative::flux::{self, ImageRepositoryObject, scan_changed};
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::watcher;
    use std::time::Duration;

    let server = testkit::apiserver::ApiServer::new();
    server
        .apply(serde_json::json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageRepository",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"image": "ghcr.io/org/app", "interval": "5m"}
        }))
        .unwrap();
    let client = kube::Client::new(server.router(), "default");
    let repos: Api<ImageRepositoryObject> = Api::namespaced_with(client, "default", &flux::api_resource("v1"));
    let mut watch = std::pin::pin!(watcher(repos.clone(), watcher::Config::default()));
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match watch.next().await.expect("watch open").expect("watch event") {
                    watcher::Event::InitApply(o) | watcher::Event::Apply(o) => break o,
                    _ => {}
                }
            }
        })
        .await
        .expect("a watch event")
    };
    let scan = |o: &ImageRepositoryObject| o.status.clone().and_then(|s| s.last_scan_result);
    let write = |revision: &str, tags: &[&str]| {
        let repos = repos.clone();
        let status = serde_json::json!({"status": {"lastScanResult": {
            "revision": revision, "tagCount": tags.len(), "latestTags": tags,
            "scanTime": "2026-12-07T15:00:00Z"}}});
        async move {
            repos
                .patch_status("app", &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    };

    let created = next().await;
    assert!(
        !scan_changed(None, scan(&created).as_ref()),
        "created without a scan result"
    );
    write("rev-1", &["1.1", "1.0"]).await;
    let first = next().await;
    assert!(
        scan_changed(scan(&created).as_ref(), scan(&first).as_ref()),
        "nil → set"
    );
    assert_eq!(scan(&first).unwrap().latest_tags, ["1.1", "1.0"]);
    write("rev-1", &["1.1", "1.0"]).await;
    repos
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    let touched = next().await;
    assert!(
        !scan_changed(scan(&first).as_ref(), scan(&touched).as_ref()),
        "same revision"
    );
    write("rev-2", &["1.2", "1.1"]).await;
    let second = next().await;
    assert!(
        scan_changed(scan(&touched).as_ref(), scan(&second).as_ref()),
        "revision differs"
    );
}
