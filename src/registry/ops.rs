//! The distribution API operations on top of `transport`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::Digest as _;

use super::auth::Access;
use super::error::{status_error, transport};
use super::proto;
use super::transport::{BodyWatch, Payload, Req, streamed_body};
use super::{
    BlobDownload, BlobSource, ByteStream, Manifest, ManifestHead, MountOutcome, Registry, RegistryError, UploadError,
};
use crate::reference::Digest;

/// Smallest PATCH chunk: ECR refuses parts under 5 MiB, and fewer round trips are faster anyway.
pub const MIN_CHUNK: u64 = 5 * 1024 * 1024;
/// Pieces a chunk is streamed in (for the idle timeout's progress).
const PIECE: usize = 256 * 1024;
/// Limit for the GET that stands in for a HEAD without `Docker-Content-Digest`.
const HEAD_FALLBACK_LIMIT: u64 = 4 * 1024 * 1024;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `Content-Length` as sent (HEAD responses have no body, so reqwest's `content_length` is no help).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok())
}

fn content_digest(headers: &HeaderMap, url: &Url) -> Result<Option<Digest>, RegistryError> {
    match header_str(headers, "docker-content-digest") {
        None => Ok(None),
        Some(v) => Digest::parse(v).map(Some).map_err(|e| {
            RegistryError::Invalid(format!(
                "{}: invalid Docker-Content-Digest: {e}",
                proto::display_url(url)
            ))
        }),
    }
}

/// The digest of `bytes` with `algorithm` (sha256 or sha512).
pub fn digest_of(algorithm: &str, bytes: &[u8]) -> Result<Digest, RegistryError> {
    let hex = match algorithm {
        "sha256" => hex(&sha2::Sha256::digest(bytes)),
        "sha512" => hex(&sha2::Sha512::digest(bytes)),
        other => {
            return Err(RegistryError::Invalid(format!(
                "unsupported digest algorithm {other:?}"
            )));
        }
    };
    Digest::parse(&format!("{algorithm}:{hex}")).map_err(|e| RegistryError::Invalid(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn path_error(what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Invalid(format!("invalid {what}: {e}"))
}

/// Refuses path segments that would change the URL's meaning (`..`, `?`, `#`, empty).
pub(super) fn check_repo(repo: &str) -> Result<(), RegistryError> {
    if repo.is_empty()
        || repo.contains(['?', '#', ' ', '\\'])
        || repo.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(path_error("repository", format!("{repo:?}")));
    }
    Ok(())
}

fn check_reference(reference: &str) -> Result<(), RegistryError> {
    if reference.is_empty() || reference.contains(['/', '?', '#', ' ', '\\']) || reference == "." || reference == ".." {
        return Err(path_error("manifest reference", format!("{reference:?}")));
    }
    Ok(())
}

/// A failed upload attempt, and whether the request that failed was already retried by the
/// transport (then the upload is not tried again).
struct Failed {
    error: UploadError,
    retried: bool,
}

impl Failed {
    fn source(error: RegistryError) -> Failed {
        Failed {
            error: UploadError::at_source(error),
            retried: false,
        }
    }

    fn target(error: RegistryError) -> Failed {
        Failed {
            error: UploadError::at_target(error),
            retried: false,
        }
    }

    fn retried_source(error: RegistryError) -> Failed {
        Failed {
            retried: true,
            ..Failed::source(error)
        }
    }

    fn retried_target(error: RegistryError) -> Failed {
        Failed {
            retried: true,
            ..Failed::target(error)
        }
    }
}

/// Outcome of one monolithic PUT.
enum Put {
    Done,
    /// The registry does not take monolithic uploads (status given): go chunked.
    Refused(u16),
}

impl Registry {
    /// HEAD a manifest by tag or digest; `None` when it does not exist.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<ManifestHead>, RegistryError> {
        check_repo(repo)?;
        check_reference(reference)?;
        let url = self.api_url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let resp = self
            .send(Req::new(Method::HEAD, url.clone(), Access::Pull(repo)).accept_manifests())
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let headers = resp.headers();
                let digest = content_digest(headers, &url)?;
                let media_type = header_str(headers, header::CONTENT_TYPE.as_str())
                    .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
                let size = content_length(headers);
                match (digest, media_type, size) {
                    (Some(digest), Some(media_type), Some(size)) if !media_type.is_empty() => Ok(Some(ManifestHead {
                        digest,
                        media_type,
                        size,
                    })),
                    _ => {
                        // Registries that omit the digest on HEAD: fetch it (rare; Docker Hub sends it).
                        let m = self.get_manifest(repo, reference, HEAD_FALLBACK_LIMIT).await?;
                        Ok(Some(ManifestHead {
                            digest: m.digest,
                            media_type: m.media_type,
                            size: m.bytes.len() as u64,
                        }))
                    }
                }
            }
            _ => Err(status_error("HEAD", &url, resp).await),
        }
    }

    /// GET a manifest by tag or digest, refusing bodies over `max_size` bytes; the digest is verified.
    pub async fn get_manifest(&self, repo: &str, reference: &str, max_size: u64) -> Result<Manifest, RegistryError> {
        check_repo(repo)?;
        check_reference(reference)?;
        let by_digest = if reference.contains(':') {
            Some(Digest::parse(reference).map_err(|e| path_error("manifest digest", e))?)
        } else {
            None
        };
        let url = self.api_url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let mut req = Req::new(Method::GET, url.clone(), Access::Pull(repo)).accept_manifests();
        req.manifest_get = true;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        let too_big = |n: u64| {
            RegistryError::Invalid(format!(
                "manifest {repo}:{reference} on {} is {n} bytes, over the limit of {max_size}",
                self.host
            ))
        };
        if let Some(n) = resp.content_length().filter(|&n| n > max_size) {
            return Err(too_big(n));
        }
        let header_digest = content_digest(resp.headers(), &url)?;
        let content_type = header_str(resp.headers(), header::CONTENT_TYPE.as_str()).map(str::to_string);
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport(format!("GET {}: reading body", proto::display_url(&url)), e))?;
            if body.len() as u64 + chunk.len() as u64 > max_size {
                return Err(too_big(body.len() as u64 + chunk.len() as u64));
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        let primary = by_digest.clone().or_else(|| header_digest.clone());
        let algorithm = primary.as_ref().map_or("sha256", |d| d.algorithm());
        let digest = digest_of(algorithm, &bytes)?;
        for (expected, source) in [
            (&by_digest, "requested digest"),
            (&header_digest, "Docker-Content-Digest"),
        ] {
            let Some(expected) = expected else { continue };
            let actual = if expected.algorithm() == digest.algorithm() {
                digest.clone()
            } else {
                digest_of(expected.algorithm(), &bytes)?
            };
            if &actual != expected {
                return Err(RegistryError::DigestMismatch {
                    digest: expected.to_string(),
                    detail: format!(
                        "manifest {repo}:{reference} from {} hashes to {actual} ({source} is {expected})",
                        self.host
                    ),
                });
            }
        }
        Ok(Manifest {
            media_type: proto::manifest_media_type(content_type.as_deref(), &bytes),
            bytes,
            digest,
        })
    }

    /// HEAD a blob; its size when present.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        check_repo(repo)?;
        let url = self.api_url(&format!("/v2/{repo}/blobs/{digest}")).await?;
        let resp = self
            .send(Req::new(Method::HEAD, url.clone(), Access::Pull(repo)))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => content_length(resp.headers())
                .map(Some)
                .ok_or_else(|| RegistryError::Invalid(format!("HEAD {}: no Content-Length", proto::display_url(&url)))),
            _ => Err(status_error("HEAD", &url, resp).await),
        }
    }

    /// GET a blob as a stream.
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<BlobDownload, RegistryError> {
        check_repo(repo)?;
        let url = self.api_url(&format!("/v2/{repo}/blobs/{digest}")).await?;
        let resp = self
            .send(Req::new(Method::GET, url.clone(), Access::Pull(repo)))
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        let size = resp.content_length();
        let context = format!("GET {}: reading body", proto::display_url(&url));
        let stream: ByteStream = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport(context.clone(), e)))
            .boxed();
        Ok(BlobDownload { size, stream })
    }

    /// Asks the registry to link `digest` from `from_repo` into `repo`.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from_repo: &str,
    ) -> Result<MountOutcome, RegistryError> {
        check_repo(repo)?;
        check_repo(from_repo)?;
        let mut url = self.api_url(&format!("/v2/{repo}/blobs/uploads/")).await?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from_repo);
        let access = Access::Mount { repo, from: from_repo };
        let resp = self.send(Req::new(Method::POST, url.clone(), access)).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => {
                // Declined: the registry opened an ordinary upload session instead. Close it.
                if let Ok(session) = self.session_location(&url, &resp) {
                    self.cancel_upload(repo, &session).await;
                }
                Ok(MountOutcome::NotMounted)
            }
            _ => Err(status_error("POST", &url, resp).await),
        }
    }

    fn session_location(&self, request_url: &Url, resp: &Response) -> Result<Url, RegistryError> {
        let location = header_str(resp.headers(), header::LOCATION.as_str()).ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{} {}: HTTP {} without a Location header",
                "POST",
                proto::display_url(request_url),
                resp.status().as_u16()
            ))
        })?;
        proto::resolve_location(request_url, location)
            .map_err(|e| RegistryError::Invalid(format!("{}: {e}", proto::display_url(request_url))))
    }

    /// Best-effort `DELETE` of an upload session.
    async fn cancel_upload(&self, repo: &str, session: &Url) {
        let mut req = Req::new(Method::DELETE, session.clone(), Access::Push(repo));
        req.retry = false;
        match self.send(req).await {
            Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => {}
            Ok(resp) => tracing::debug!(
                registry = %self.host, session = %proto::display_url(session), status = resp.status().as_u16(),
                "cancelling upload session refused"
            ),
            Err(e) => tracing::debug!(registry = %self.host, error = %e, "cancelling upload session failed"),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: the session URL and the registry's minimum chunk size.
    async fn open_upload(&self, repo: &str) -> Result<(Url, Option<u64>), RegistryError> {
        let url = self.api_url(&format!("/v2/{repo}/blobs/uploads/")).await?;
        let resp = self
            .send(Req::new(Method::POST, url.clone(), Access::Push(repo)))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, resp).await);
        }
        let min = header_str(resp.headers(), "oci-chunk-min-length").and_then(|v| v.parse().ok());
        Ok((self.session_location(&url, &resp)?, min))
    }

    /// Uploads a blob of known `size` from `source`: one streaming monolithic PUT; chunked PATCHes only
    /// when the registry refuses that. A failed transfer (the streamed PUT or PATCH, or the source's
    /// body cut or stalled) is tried again from a fresh `source`, `retry_attempts` times in all.
    /// Requests the transport already retried (opening the upload session, the source's GET) are
    /// not retried once more: retries are counted once per request. The error says which side failed.
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        source: BlobSource<'_>,
    ) -> Result<(), UploadError> {
        check_repo(repo).map_err(UploadError::at_target)?;
        let mut retries = self.retries(true);
        let mut reauthenticated = false;
        loop {
            let failed = match self.upload_once(repo, digest, size, source).await {
                Ok(()) => return Ok(()),
                Err(failed) => failed,
            };
            // A 401 on the streamed PUT (token expired mid-way): the transport already dropped the
            // token; one extra attempt, not counted, picks up a fresh one.
            if matches!(failed.error.error, RegistryError::Status { status: 401, .. }) && !reauthenticated {
                reauthenticated = true;
                continue;
            }
            let err = failed.error;
            match retries.after_failure(!failed.retried && err.error.is_retryable(), err.error.retry_after()) {
                Some(delay) => {
                    tracing::debug!(registry = %self.host, %digest, side = ?err.side, "retrying blob upload");
                    self.wait_to_retry(delay, &err).await;
                }
                None => return Err(err),
            }
        }
    }

    /// One upload: monolithic unless the registry is known to refuse it, chunked when it refuses.
    async fn upload_once(&self, repo: &str, digest: &Digest, size: u64, source: BlobSource<'_>) -> Result<(), Failed> {
        if !self.state.monolithic_refused.load(Ordering::Relaxed) {
            let (session, _) = self.open_upload(repo).await.map_err(Failed::retried_target)?;
            match self.put_monolithic(repo, &session, digest, size, source).await {
                Ok(Put::Done) => return Ok(()),
                Ok(Put::Refused(status)) => {
                    tracing::info!(registry = %self.host, status, "monolithic upload refused; using chunked uploads");
                    self.state.monolithic_refused.store(true, Ordering::Relaxed);
                    self.cancel_upload(repo, &session).await;
                }
                Err(e) => {
                    self.cancel_upload(repo, &session).await;
                    return Err(e);
                }
            }
        }
        let (mut session, min) = self.open_upload(repo).await.map_err(Failed::retried_target)?;
        let chunk = min.unwrap_or(0).max(MIN_CHUNK);
        match self.put_chunked(repo, &mut session, digest, size, chunk, source).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.cancel_upload(repo, &session).await;
                Err(e)
            }
        }
    }

    /// Sends a streamed upload request; a failure of the stream's source wins over the request's own
    /// (which is only its consequence).
    async fn send_stream(&self, req: Req<'_>, watch: &BodyWatch) -> Result<Response, Failed> {
        let result = self.send(req).await;
        if let Some(e) = watch.take_source_failure() {
            return Err(Failed::source(e));
        }
        result.map_err(Failed::target)
    }

    async fn put_monolithic(
        &self,
        repo: &str,
        session: &Url,
        digest: &Digest,
        size: u64,
        source: BlobSource<'_>,
    ) -> Result<Put, Failed> {
        let stream = source().await.map_err(Failed::retried_source)?;
        let watch = Arc::new(BodyWatch::default());
        let body = streamed_body(stream, watch.clone(), self.parent.inner.stats.clone());
        let url = proto::with_query(session, "digest", &digest.to_string());
        let req = Req::new(Method::PUT, url.clone(), Access::Push(repo))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, &size.to_string())
            .body(Payload::Stream(Some(body), watch.clone()));
        let resp = self.send_stream(req, &watch).await?;
        match resp.status().as_u16() {
            200..=299 => {
                self.check_committed(&resp, digest, &url).map_err(Failed::target)?;
                Ok(Put::Done)
            }
            s @ (400 | 404 | 405 | 413 | 416) => {
                let err = status_error("PUT", &url, resp).await;
                if let RegistryError::Status { detail, .. } = &err
                    && (detail.contains("DIGEST_INVALID") || detail.contains("SIZE_INVALID"))
                {
                    // The registry took the bytes and they did not hash to the digest: not a refusal
                    // of monolithic uploads, and resending the same source would not help.
                    return Err(Failed::target(RegistryError::DigestMismatch {
                        digest: digest.to_string(),
                        detail: format!("{} refused the uploaded bytes: {detail}", self.host),
                    }));
                }
                tracing::debug!(registry = %self.host, error = %err, "monolithic upload refused");
                Ok(Put::Refused(s))
            }
            _ => Err(Failed::target(status_error("PUT", &url, resp).await)),
        }
    }

    fn check_committed(&self, resp: &Response, digest: &Digest, url: &Url) -> Result<(), RegistryError> {
        match content_digest(resp.headers(), url) {
            Ok(Some(d)) if &d != digest => Err(RegistryError::DigestMismatch {
                digest: digest.to_string(),
                detail: format!("{} stored the upload as {d}", self.host),
            }),
            _ => Ok(()),
        }
    }

    async fn put_chunked(
        &self,
        repo: &str,
        session: &mut Url,
        digest: &Digest,
        size: u64,
        chunk: u64,
        source: BlobSource<'_>,
    ) -> Result<(), Failed> {
        let mut stream = source().await.map_err(Failed::retried_source)?;
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let mut buf = BytesMut::new();
        let mut offset = 0u64;
        let mut done = false;
        while !done {
            match stream.next().await {
                Some(item) => buf.extend_from_slice(&item.map_err(Failed::source)?),
                None => done = true,
            }
            while buf.len() >= chunk || (done && !buf.is_empty()) {
                let n = buf.len().min(chunk);
                let data = buf.split_to(n).freeze();
                self.patch(repo, session, offset, data).await?;
                offset += n as u64;
            }
        }
        if offset != size {
            return Err(Failed::source(RegistryError::DigestMismatch {
                digest: digest.to_string(),
                detail: format!("the source produced {offset} bytes, expected {size}"),
            }));
        }
        let url = proto::with_query(session, "digest", &digest.to_string());
        let mut req = Req::new(Method::PUT, url.clone(), Access::Push(repo));
        req.retry = false;
        let resp = self.send(req).await.map_err(Failed::target)?;
        if !resp.status().is_success() {
            return Err(Failed::target(status_error("PUT", &url, resp).await));
        }
        self.check_committed(&resp, digest, &url).map_err(Failed::target)
    }

    async fn patch(&self, repo: &str, session: &mut Url, offset: u64, data: Bytes) -> Result<(), Failed> {
        let len = data.len() as u64;
        let pieces: Vec<Result<Bytes, RegistryError>> = (0..data.len())
            .step_by(PIECE)
            .map(|i| Ok(data.slice(i..(i + PIECE).min(data.len()))))
            .collect();
        let watch = Arc::new(BodyWatch::default());
        let body = streamed_body(
            futures::stream::iter(pieces).boxed(),
            watch.clone(),
            self.parent.inner.stats.clone(),
        );
        let req = Req::new(Method::PATCH, session.clone(), Access::Push(repo))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, &len.to_string())
            .header(header::CONTENT_RANGE, &format!("{offset}-{}", offset + len - 1))
            .body(Payload::Stream(Some(body), watch.clone()));
        let resp = self.send_stream(req, &watch).await?;
        // 202 per the spec; ECR answers 201.
        if !resp.status().is_success() {
            return Err(Failed::target(status_error("PATCH", session, resp).await));
        }
        if let Some(location) = header_str(resp.headers(), header::LOCATION.as_str()) {
            *session = proto::resolve_location(session, location).map_err(|e| {
                Failed::target(RegistryError::Invalid(format!(
                    "PATCH {}: {e}",
                    proto::display_url(session)
                )))
            })?;
        }
        Ok(())
    }

    /// PUT a manifest under a tag or digest with its exact bytes; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        check_repo(repo)?;
        check_reference(reference)?;
        let url = self.api_url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let local = digest_of("sha256", &bytes)?;
        let req = Req::new(Method::PUT, url.clone(), Access::Push(repo))
            .header(header::CONTENT_TYPE, media_type)
            .body(Payload::Bytes(bytes));
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        Ok(content_digest(resp.headers(), &url)?.unwrap_or(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_values() {
        assert_eq!(
            digest_of("sha256", b"").unwrap().to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(
            digest_of("sha512", b"abc")
                .unwrap()
                .to_string()
                .starts_with("sha512:ddaf35a1")
        );
        assert!(digest_of("md5", b"").is_err());
    }

    #[test]
    fn path_checks() {
        for ok in ["library/nginx", "a", "a/b/c", "team_x/app-1"] {
            assert!(check_repo(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/../b", "a//b", "/a", "a?x", "a#b", "./a"] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
        for ok in ["latest", "v1.2", "sha256:abc"] {
            assert!(check_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", "x?y"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }
}
