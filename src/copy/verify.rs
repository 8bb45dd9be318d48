//! Verifies blob bytes while they stream from source to target. The last chunk is held back until
//! size and digest are confirmed, so a corrupted blob never completes its upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256, Sha512};

use crate::reference::Digest;
use crate::registry::{ByteStream, RegistryError};

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// The hasher of `digest`'s algorithm ([`Digest::parse`] admits only sha256 and sha512).
    fn for_digest(digest: &Digest) -> Hasher {
        match digest.algorithm() {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

struct State {
    inner: ByteStream,
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    seen: u64,
    held: Option<Bytes>,
    done: bool,
    progress: Arc<AtomicU64>,
}

impl State {
    fn fail(&mut self, detail: String) -> RegistryError {
        self.done = true;
        RegistryError::DigestMismatch {
            digest: self.digest.to_string(),
            detail,
        }
    }
}

/// Wraps `stream` so that it yields exactly `size` bytes hashing to `digest`, or ends in an error.
/// Bytes read are added to `progress`.
pub fn verified(stream: ByteStream, digest: &Digest, size: u64, progress: Arc<AtomicU64>) -> ByteStream {
    let state = State {
        inner: stream,
        hasher: Some(Hasher::for_digest(digest)),
        digest: digest.clone(),
        size,
        seen: 0,
        held: None,
        done: false,
        progress,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    s.seen += chunk.len() as u64;
                    if s.seen > s.size {
                        let e = s.fail(format!(
                            "source sent more than the {} bytes its descriptor declares",
                            s.size
                        ));
                        return Some((Err(e), s));
                    }
                    s.progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if let Some(h) = s.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    if s.seen != s.size {
                        let e = s.fail(format!(
                            "source sent {} bytes, its descriptor declares {}",
                            s.seen, s.size
                        ));
                        return Some((Err(e), s));
                    }
                    let actual = s.hasher.take().map(Hasher::finish_hex).unwrap_or_default();
                    if actual != s.digest.encoded() {
                        let e = s.fail(format!("source bytes hash to {}:{actual}", s.digest.algorithm()));
                        return Some((Err(e), s));
                    }
                    s.done = true;
                    return s.held.take().map(|last| (Ok(last), s));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(data: &[u8]) -> Digest {
        Digest::sha256_hex(
            &Sha256::digest(data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
        .unwrap()
    }

    async fn run(chunks: Vec<&'static [u8]>, digest: &Digest, size: u64) -> (Vec<Result<Bytes, String>>, u64) {
        let progress = Arc::new(AtomicU64::new(0));
        let inner = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed();
        let out = verified(inner, digest, size, progress.clone());
        let items = out.map(|r| r.map_err(|e| e.to_string())).collect().await;
        (items, progress.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn good_stream_passes_through_whole() {
        let d = sha256(b"hello world");
        let (items, progress) = run(vec![b"hello", b" ", b"world"], &d, 11).await;
        let joined: Vec<u8> = items.into_iter().flat_map(|r| r.unwrap().to_vec()).collect();
        assert_eq!((joined.as_slice(), progress), (&b"hello world"[..], 11));
        let (items, _) = run(vec![], &sha256(b""), 0).await;
        assert!(items.is_empty());
    }

    #[tokio::test]
    async fn bad_streams_end_in_an_error_before_the_last_chunk() {
        let d = sha256(b"hello world");
        // (chunks, declared size, expected message part)
        let cases: [(Vec<&'static [u8]>, u64, &str); 3] = [
            (vec![b"hello", b" ", b"worlD"], 11, "hash to sha256:"),
            (vec![b"hello", b" "], 11, "sent 6 bytes"),
            (vec![b"hello", b" ", b"world!"], 11, "more than the 11 bytes"),
        ];
        for (chunks, size, want) in cases {
            let (items, _) = run(chunks, &d, size).await;
            let last = items.last().unwrap().as_ref().unwrap_err();
            assert!(last.contains(want), "{last}");
            let delivered: usize = items.iter().filter_map(|r| r.as_ref().ok()).map(Bytes::len).sum();
            assert!(delivered < size as usize, "the final bytes must be withheld");
        }
    }

    #[tokio::test]
    async fn sha512_digests_are_verified_too() {
        use sha2::Sha512;
        let hex: String = Sha512::digest(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        let d = Digest::parse(&format!("sha512:{hex}")).unwrap();
        let (items, _) = run(vec![b"a", b"bc"], &d, 3).await;
        assert!(items.iter().all(Result::is_ok), "{items:?}");
        let (items, _) = run(vec![b"a", b"bd"], &d, 3).await;
        assert!(items.last().unwrap().as_ref().unwrap_err().contains("hash to sha512:"));
    }
}
