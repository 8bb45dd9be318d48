//! Listing what a repository holds besides manifests by digest: its tags (`GET /v2/<name>/tags/list`,
//! paginated with `Link` — Docker Hub, Quay and distribution all paginate — on the same host only,
//! since the next page receives our credentials) and the OCI 1.1 Referrers API (`GET /v2/<name>/referrers/<digest>`), and
//! the manifest PUT that reports whether the registry indexed a `subject` (`OCI-Subject`).

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::auth::Access;
use super::error::{status_error, transport};
use super::ops::{check_reference, check_repo, content_digest, digest_of, header_str};
use super::proto;
use super::transport::{Payload, Req};
use super::{Registry, RegistryError};
use crate::reference::Digest;

/// Tags asked for per page.
const TAGS_PER_PAGE: usize = 1000;
/// Most pages followed (tag lists and referrer lists): a hostile `Link` loop ends here, with an error.
const MAX_PAGES: usize = 100;
/// Largest page body read.
const MAX_PAGE_SIZE: usize = 4 * 1024 * 1024;

/// A descriptor in a referrers list (the Referrers API answer, or the fallback tag's index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerDescriptor {
    /// Media type of the referrer manifest.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its artifact type (the manifest's `artifactType`, else its config media type).
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

/// An image index listing referrers, as far as copycat reads it.
#[derive(Debug, Deserialize)]
pub struct ReferrerIndex {
    /// The referrers.
    #[serde(default)]
    pub manifests: Vec<ReferrerDescriptor>,
}

/// What the Referrers API answered for one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrers {
    /// The referrers, every page.
    pub descriptors: Vec<ReferrerDescriptor>,
    /// Whether the registry applied the `artifactType` filter (`OCI-Filters-Applied`); when not, the
    /// caller filters.
    pub filtered: bool,
}

/// What a manifest PUT answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutManifest {
    /// The digest the registry reports.
    pub digest: Digest,
    /// Whether it answered `OCI-Subject`: it indexed the manifest's `subject` in its Referrers API.
    pub subject_indexed: bool,
}

#[derive(Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The `rel="next"` target of a `Link` header (`<url>; rel="next"`).
fn next_link(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|part| {
            part.split(';')
                .skip(1)
                .any(|p| matches!(p.trim().replace(' ', "").as_str(), "rel=\"next\"" | "rel=next"))
        })
        .and_then(|part| {
            let target = part.split(';').next()?.trim();
            target.strip_prefix('<')?.strip_suffix('>')
        })
}

/// The next page's URL: relative to the current one, on the same scheme, host and port.
fn next_page(current: &Url, link: &str) -> Result<Url, RegistryError> {
    let next = proto::resolve_location(current, link)
        .map_err(|e| RegistryError::Invalid(format!("{}: Link: {e}", proto::display_url(current))))?;
    if next.origin() != current.origin() {
        return Err(RegistryError::Invalid(format!(
            "{}: Link points to another host ({})",
            proto::display_url(current),
            next.host_str().unwrap_or_default()
        )));
    }
    Ok(next)
}

fn too_many_pages(what: &str) -> RegistryError {
    RegistryError::Invalid(format!("{what} longer than {MAX_PAGES} pages"))
}

impl Registry {
    /// Every tag of `repo`, in the registry's order, all pages; empty when the repository does not
    /// exist (404).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        check_repo(repo)?;
        let first = proto::with_query(
            &self.api_url(&format!("/v2/{repo}/tags/list")).await?,
            "n",
            &TAGS_PER_PAGE.to_string(),
        );
        let mut tags = Vec::new();
        let mut next = Some(first);
        for _ in 0..MAX_PAGES {
            let Some(url) = next.take() else { break };
            let Some((body, link)) = self.get_page(repo, &url, None).await? else {
                return Ok(tags);
            };
            let page: TagPage = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Invalid(format!("{}: invalid tag list: {e}", proto::display_url(&url))))?;
            tags.extend(page.tags.unwrap_or_default());
            match link {
                Some(link) => next = Some(link),
                None => return Ok(tags),
            }
        }
        Err(too_many_pages("tag list"))
    }

    /// The Referrers API for `digest` in `repo`, asking the registry to filter by `artifact_type`;
    /// `None` when the registry does not serve the API (404).
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>, RegistryError> {
        check_repo(repo)?;
        let mut first = self.api_url(&format!("/v2/{repo}/referrers/{digest}")).await?;
        if let Some(t) = artifact_type {
            first = proto::with_query(&first, "artifactType", t);
        }
        let mut referrers = Referrers {
            descriptors: Vec::new(),
            filtered: false,
        };
        let mut next = Some(first);
        for page_number in 0..MAX_PAGES {
            let Some(url) = next.take() else { break };
            let mut filtered = false;
            let Some((body, link)) = self.get_page(repo, &url, Some(&mut filtered)).await? else {
                // A 404 on a later page is a broken registry, not an absent API.
                return Ok((page_number > 0).then_some(referrers));
            };
            let index: ReferrerIndex = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Invalid(format!("{}: invalid referrers index: {e}", proto::display_url(&url)))
            })?;
            referrers.descriptors.extend(index.manifests);
            referrers.filtered = filtered && artifact_type.is_some();
            match link {
                Some(link) => next = Some(link),
                None => return Ok(Some(referrers)),
            }
        }
        Err(too_many_pages("referrers list"))
    }

    /// GET one page of a list: its body and the next page, `None` on 404. `filters_applied`, when
    /// given, learns whether `OCI-Filters-Applied` names `artifactType`.
    async fn get_page(
        &self,
        repo: &str,
        url: &Url,
        filters_applied: Option<&mut bool>,
    ) -> Result<Option<(Bytes, Option<Url>)>, RegistryError> {
        let req = Req::new(Method::GET, url.clone(), Access::Pull(repo)).header(header::ACCEPT, "application/json");
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(status_error("GET", url, resp).await),
            _ => {}
        }
        if let Some(applied) = filters_applied {
            *applied = header_str(resp.headers(), "oci-filters-applied")
                .is_some_and(|v| v.split(',').any(|f| f.trim() == "artifactType"));
        }
        let link = next_link(resp.headers()).map(|l| next_page(url, l)).transpose()?;
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport(format!("GET {}: reading body", proto::display_url(url)), e))?;
            if body.len() + chunk.len() > MAX_PAGE_SIZE {
                return Err(RegistryError::Invalid(format!(
                    "GET {}: answer over {MAX_PAGE_SIZE} bytes",
                    proto::display_url(url)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((body.freeze(), link)))
    }

    /// PUT a manifest under a tag or digest with its exact bytes: the digest the registry reports,
    /// and whether it indexed the manifest's `subject` (it answers `OCI-Subject`).
    pub async fn put_manifest_with_subject(
        &self,
        repo: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<PutManifest, RegistryError> {
        self.put_manifest_when(repo, reference, bytes, media_type, None).await
    }

    /// PUT a manifest under `tag` only if the tag still holds `expected` (`If-Match`), or, with
    /// `None`, holds nothing (`If-None-Match: *`). A registry that honours the condition answers 412
    /// when it does not hold ([`RegistryError::Status`]); distribution (docker-registry) ignores it
    /// and writes anyway.
    pub async fn put_manifest_if(
        &self,
        repo: &str,
        tag: &str,
        bytes: Bytes,
        media_type: &str,
        expected: Option<&Digest>,
    ) -> Result<PutManifest, RegistryError> {
        let condition = match expected {
            Some(digest) => (header::IF_MATCH, format!("\"{digest}\"")),
            None => (header::IF_NONE_MATCH, "*".to_owned()),
        };
        self.put_manifest_when(repo, tag, bytes, media_type, Some(condition))
            .await
    }

    async fn put_manifest_when(
        &self,
        repo: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
        condition: Option<(header::HeaderName, String)>,
    ) -> Result<PutManifest, RegistryError> {
        check_repo(repo)?;
        check_reference(reference)?;
        let url = self.api_url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let local = digest_of("sha256", &bytes)?;
        let mut req = Req::new(Method::PUT, url.clone(), Access::Push(repo))
            .header(header::CONTENT_TYPE, media_type)
            .body(Payload::Bytes(bytes));
        if let Some((name, value)) = condition {
            req = req.header(name, &value);
        }
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        Ok(PutManifest {
            digest: content_digest(resp.headers(), &url)?.unwrap_or(local),
            subject_indexed: header_str(resp.headers(), "oci-subject").is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn next_links() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (
                &["</v2/r/tags/list?n=2&last=b>; rel=\"next\""],
                Some("/v2/r/tags/list?n=2&last=b"),
            ),
            (&["<https://h/v2/x?last=a>;rel=next"], Some("https://h/v2/x?last=a")),
            (&["</a>; rel=\"prev\", </b>; rel=\"next\""], Some("/b")),
            (&["</a>; rel=\"prev\""], None),
            (&["garbage"], None),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(header::LINK, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(next_link(&headers), *want, "{values:?}");
        }
    }

    #[test]
    fn next_page_stays_on_the_host() {
        let current = Url::parse("http://127.0.0.1:5000/v2/a/tags/list?n=2").unwrap();
        assert_eq!(
            next_page(&current, "/v2/a/tags/list?last=b&n=2").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=b&n=2"
        );
        assert!(next_page(&current, "http://elsewhere.example/v2/a/tags/list").is_err());
    }
}
