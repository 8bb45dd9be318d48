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
