//! Tag listing: `GET /v2/<name>/tags/list`, following `Link: <…>; rel="next"` pages (Docker Hub,
//! Quay and distribution all paginate), bounded in pages and page size.

use futures::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::auth::Access;
use super::error::{status_error, transport};
use super::ops::check_repo;
use super::proto;
use super::transport::Req;
use super::{Registry, RegistryError};

/// Tags asked for per page.
const TAGS_PER_PAGE: usize = 1000;
/// Most pages followed: a registry whose `Link` loops ends here, with an error.
const MAX_PAGES: usize = 200;
/// Largest page body read.
const MAX_PAGE_SIZE: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The target of the `rel="next"` entry of `Link` headers (`<url>; rel="next"`).
fn next_link(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|entry| {
            entry
                .split(';')
                .skip(1)
                .any(|p| matches!(p.replace(' ', "").as_str(), "rel=\"next\"" | "rel=next"))
        })
        .and_then(|entry| entry.split(';').next()?.trim().strip_prefix('<')?.strip_suffix('>'))
}

impl Registry {
    /// Every tag of `repo`, in the registry's order, all pages; empty when the repository does
    /// not exist (404). A next page on another host is refused (it would receive our credentials).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        check_repo(repo)?;
        let first = self.api_url(&format!("/v2/{repo}/tags/list")).await?;
        let mut url = proto::with_query(&first, "n", &TAGS_PER_PAGE.to_string());
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self
                .send(Req::new(Method::GET, url.clone(), Access::Pull(repo)))
                .await?;
            if resp.status() == StatusCode::NOT_FOUND && tags.is_empty() {
                return Ok(tags);
            }
            if !resp.status().is_success() {
                return Err(status_error("GET", &url, resp).await);
            }
            let next = next_link(resp.headers())
                .map(|link| next_page(&url, link))
                .transpose()?;
            let body = read_page(&url, resp).await?;
            let page: TagPage = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Invalid(format!("{}: invalid tag list: {e}", proto::display_url(&url))))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => return Ok(tags),
            }
        }
        Err(RegistryError::Invalid(format!(
            "{}: tag list longer than {MAX_PAGES} pages",
            proto::display_url(&first)
        )))
    }
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

async fn read_page(url: &Url, resp: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(format!("GET {}: reading body", proto::display_url(url)), e))?;
        if body.len() + chunk.len() > MAX_PAGE_SIZE {
            return Err(RegistryError::Invalid(format!(
                "{}: tag list page over {MAX_PAGE_SIZE} bytes",
                proto::display_url(url)
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn next_link_table() {
        let cases: [(&[&str], Option<&str>); 6] = [
            (&[], None),
            (
                &["</v2/a/tags/list?last=b&n=2>; rel=\"next\""],
                Some("/v2/a/tags/list?last=b&n=2"),
            ),
            (
                &["<https://h/v2/a/tags/list?last=b>;rel=next"],
                Some("https://h/v2/a/tags/list?last=b"),
            ),
            (&["</first>; rel=\"prev\", </second>; rel=\"next\""], Some("/second")),
            (&["</first>; rel=\"prev\""], None),
            (&["garbage"], None),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::LINK, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(next_link(&headers), want, "{values:?}");
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
