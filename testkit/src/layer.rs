//! Deterministic tar+gzip layers generated in chunks, so that large ones never sit in memory.
//!
//! A layer is a tar holding one regular file of pseudo-random bytes (ChaCha20 keystream from a
//! seed, via `ring`: fast even in debug builds), gzipped with `Compression::none()` (stored
//! blocks: cheap, and the compressed size is predictable: payload plus a small overhead).

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::util::Sha256;

/// Size of the pieces the generator produces (and of streamed upload chunks).
pub const CHUNK: usize = 1024 * 1024;

/// A layer's recipe: the seed and the size of the file inside the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    /// Seed of the pseudo-random file content.
    pub seed: u64,
    /// Size in bytes of the single file inside the tar (the compressed blob is a bit larger).
    pub payload_size: u64,
}

/// What one generation pass learns about a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:` digest of the gzipped blob.
    pub digest: String,
    /// Size of the gzipped blob.
    pub size: u64,
    /// `sha256:` digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl LayerSpec {
    /// Generates the gzipped blob and hands it to `sink` in pieces of at most about [`CHUNK`]
    /// bytes; returns the digests and size. Same spec, same bytes, same chunking: always.
    pub fn generate(&self, mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<LayerDigests> {
        let mut gz = GzEncoder::new(Vec::with_capacity(CHUNK + 64 * 1024), Compression::none());
        let mut tar_hash = Sha256::new();
        let mut blob_hash = Sha256::new();
        let mut size = 0u64;
        let mut emit = |gz: &mut GzEncoder<Vec<u8>>, data: &[u8]| -> anyhow::Result<()> {
            tar_hash.update(data);
            gz.write_all(data)?;
            let out = gz.get_mut();
            if out.len() >= CHUNK {
                blob_hash.update(out);
                size += out.len() as u64;
                sink(out)?;
                out.clear();
            }
            Ok(())
        };

        emit(
            &mut gz,
            &tar_header(&format!("layer-{:016x}.bin", self.seed), self.payload_size),
        )?;
        let mut rng = KeyStream::new(self.seed);
        let mut remaining = self.payload_size;
        while remaining > 0 {
            let n = remaining.min(CHUNK as u64) as usize;
            emit(&mut gz, &rng.next_chunk()[..n])?;
            remaining -= n as u64;
        }
        // Padding to a 512-byte boundary, then the two zero blocks that end the archive.
        let pad = (512 - (self.payload_size % 512) as usize) % 512;
        emit(&mut gz, &vec![0u8; pad + 1024])?;
        // What is left in the buffer plus the gzip trailer.
        let tail = gz.finish()?;
        blob_hash.update(&tail);
        size += tail.len() as u64;
        sink(&tail)?;
        Ok(LayerDigests {
            digest: blob_hash.finish(),
            size,
            diff_id: tar_hash.finish(),
        })
    }

    /// The whole blob in memory (only for small layers).
    pub fn to_bytes(&self) -> anyhow::Result<(Vec<u8>, LayerDigests)> {
        let mut v = Vec::new();
        let d = self.generate(|c| {
            v.extend_from_slice(c);
            Ok(())
        })?;
        Ok((v, d))
    }
}

/// ChaCha20 keystream (encrypting a buffer in place, over and over).
struct KeyStream {
    key: LessSafeKey,
    buf: Vec<u8>,
    counter: u64,
}

impl KeyStream {
    fn new(seed: u64) -> KeyStream {
        let mut material = b"copycat-testkit-layer-".to_vec();
        material.extend_from_slice(&seed.to_le_bytes());
        let k = ring::digest::digest(&ring::digest::SHA256, &material);
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k.as_ref()).expect("32-byte key"));
        KeyStream {
            key,
            buf: vec![0u8; CHUNK],
            counter: 0,
        }
    }

    fn next_chunk(&mut self) -> &[u8] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        let _tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut self.buf)
            .expect("chacha20 seal");
        &self.buf
    }
}

/// A ustar header for one regular file, mode 0644, owned by root, mtime 0.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], off: usize, s: &[u8]| h[off..off + s.len()].copy_from_slice(s);
    put(&mut h, 0, &name.as_bytes()[..name.len().min(99)]);
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 265, b"root");
    put(&mut h, 297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn valid_tar_gzip_and_deterministic() {
        let spec = LayerSpec {
            seed: 7,
            payload_size: 3 * CHUNK as u64 / 2 + 3,
        };
        let (bytes, d) = spec.to_bytes().unwrap();
        assert_eq!(bytes.len() as u64, d.size);
        assert_eq!(crate::util::sha256_digest(&bytes), d.digest);
        let (again, d2) = spec.to_bytes().unwrap();
        assert_eq!(d, d2);
        assert_eq!(bytes, again);

        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(crate::util::sha256_digest(&tar), d.diff_id);
        assert_eq!(tar.len() % 512, 0);
        let size = u64::from_str_radix(std::str::from_utf8(&tar[124..135]).unwrap(), 8).unwrap();
        assert_eq!(size, spec.payload_size);
        assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
        assert!(std::str::from_utf8(&tar[..20]).unwrap().starts_with("layer-"));

        let other = LayerSpec { seed: 8, ..spec }.to_bytes().unwrap().1;
        assert_ne!(other.digest, d.digest);
    }

    #[test]
    fn empty_payload() {
        let (bytes, d) = LayerSpec {
            seed: 1,
            payload_size: 0,
        }
        .to_bytes()
        .unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(tar.len(), 512 + 1024);
        assert_eq!(crate::util::sha256_digest(&tar), d.diff_id);
    }
}
