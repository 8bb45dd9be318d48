//! TLS for the registry clients: one reqwest client per distinct TLS setting (verified, unverified
//! for insecure hosts, or with a host's own CA file), and which of them a host uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::error::chain;
use super::proto;
use super::{ClientOptions, RegistryError};

/// Connect timeout when no request timeout is configured.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a host's TLS is verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TlsMode {
    /// System roots, verified.
    Verified,
    /// Unverified HTTPS, falling back to plain HTTP.
    Insecure,
    /// System roots plus the CA certificates in this PEM file, verified.
    CustomCa(PathBuf),
}

/// The reqwest clients: one per distinct TLS setting, shared by every host using it.
pub(crate) struct Clients {
    /// Kept as built: a failure matters only to a host that uses the client, so it is reported then.
    verified: Result<reqwest::Client, Arc<reqwest::Error>>,
    insecure: Result<reqwest::Client, Arc<reqwest::Error>>,
    custom: HashMap<PathBuf, reqwest::Client>,
}

fn builder(options: &ClientOptions) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .user_agent(options.user_agent.clone())
        .connect_timeout(
            options
                .request_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |t| t.min(DEFAULT_CONNECT_TIMEOUT)),
        )
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(t) = options.request_timeout {
        // Between chunks of a streamed body (and while waiting for headers).
        b = b.read_timeout(t);
    }
    b
}

/// Reads a PEM CA file into certificates, checking each one parses as a trust anchor, so a bad file
/// fails at start naming the file rather than at the first handshake.
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |what: String| RegistryError::Invalid(format!("CA file {}: {what}", path.display()));
    let pem = crate::files::read_limited(path, crate::files::MAX_CONFIG_FILE_SIZE).map_err(|e| bad(e.to_string()))?;
    let mut store = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for (i, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = der.map_err(|e| bad(format!("invalid PEM ({e:?})")))?;
        store
            .add(der.clone())
            .map_err(|e| bad(format!("certificate #{} is not a usable CA certificate: {e}", i + 1)))?;
        certs.push(
            reqwest::Certificate::from_der(der.as_ref()).map_err(|e| bad(format!("certificate #{}: {e}", i + 1)))?,
        );
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    Ok(certs)
}

impl Clients {
    pub(crate) fn build(options: &ClientOptions) -> Result<Clients, RegistryError> {
        // reqwest with `rustls-no-provider` panics when no process-wide provider is installed; main
        // installs ring, and so does this for library users and tests that did not.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let verified = builder(options).build().map_err(Arc::new);
        let insecure = builder(options)
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(Arc::new);
        let mut custom = HashMap::new();
        for settings in options.hosts.values() {
            let Some(path) = &settings.ca_file else { continue };
            if settings.insecure || custom.contains_key(path) {
                continue;
            }
            let certs = load_ca_file(path)?;
            let client = builder(options).tls_certs_merge(certs).build().map_err(|e| {
                RegistryError::Invalid(format!(
                    "CA file {}: cannot set up TLS with it: {}",
                    path.display(),
                    chain(&e)
                ))
            })?;
            custom.insert(path.clone(), client);
        }
        Ok(Clients {
            verified,
            insecure,
            custom,
        })
    }

    /// The client for `mode`.
    pub(crate) fn get(&self, mode: &TlsMode) -> Result<reqwest::Client, RegistryError> {
        let (built, kind) = match mode {
            TlsMode::Verified => (&self.verified, "verified"),
            TlsMode::Insecure => (&self.insecure, "unverified"),
            TlsMode::CustomCa(p) => {
                return self.custom.get(p).cloned().ok_or_else(|| {
                    RegistryError::Invalid(format!("CA file {}: no TLS client was set up for it", p.display()))
                });
            }
        };
        built
            .clone()
            .map_err(|e| RegistryError::Invalid(format!("cannot set up {kind} TLS: {}", chain(&*e))))
    }
}

/// The TLS mode of `host`: its settings, else insecure for loopback hosts, else verified.
pub(crate) fn tls_mode(options: &ClientOptions, given: &str, canonical: &str) -> TlsMode {
    let settings = options
        .hosts
        .get(given)
        .or_else(|| options.hosts.get(canonical))
        .or_else(|| {
            options
                .hosts
                .iter()
                .find(|(k, _)| crate::reference::canonical_host(k) == canonical)
                .map(|(_, v)| v)
        });
    match settings {
        Some(s) if s.insecure => TlsMode::Insecure,
        Some(s) if s.ca_file.is_some() => TlsMode::CustomCa(s.ca_file.clone().unwrap_or_default()),
        _ if proto::is_loopback(proto::endpoint_host(canonical)) => TlsMode::Insecure,
        _ => TlsMode::Verified,
    }
}

/// Where a host's API lives once the scheme is decided.
#[derive(Clone)]
pub(crate) struct Base {
    /// `scheme://endpoint/`.
    pub url: Url,
    pub(crate) client: reqwest::Client,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::HostSettings;

    fn options(hosts: &[(&str, HostSettings)]) -> ClientOptions {
        ClientOptions {
            hosts: hosts.iter().map(|(h, s)| (h.to_string(), s.clone())).collect(),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn tls_mode_table() {
        let insecure = HostSettings {
            insecure: true,
            ca_file: None,
        };
        let ca = HostSettings {
            insecure: false,
            ca_file: Some("/ca.pem".into()),
        };
        let o = options(&[
            ("insecure.example", insecure.clone()),
            ("localhost:5443", ca.clone()),
            ("ca.example", ca.clone()),
            ("index.docker.io", insecure.clone()),
        ]);
        let cases = [
            ("quay.io", TlsMode::Verified),
            ("insecure.example", TlsMode::Insecure),
            ("ca.example", TlsMode::CustomCa("/ca.pem".into())),
            ("localhost:5000", TlsMode::Insecure),
            ("127.0.0.1:5000", TlsMode::Insecure),
            ("[::1]:5000", TlsMode::Insecure),
            ("localhost:5443", TlsMode::CustomCa("/ca.pem".into())),
            ("docker.io", TlsMode::Insecure),
        ];
        for (host, want) in cases {
            assert_eq!(
                tls_mode(&o, host, &crate::reference::canonical_host(host)),
                want,
                "{host}"
            );
        }
        assert_eq!(tls_mode(&options(&[]), "docker.io", "docker.io"), TlsMode::Verified);
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let err = load_ca_file(&missing).unwrap_err().to_string();
        assert!(err.contains("missing-ca.pem") && err.contains("cannot read"), "{err}");

        let empty = dir.path().join("empty-ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = load_ca_file(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty-ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        let garbage = dir.path().join("garbage-ca.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_ca_file(&garbage).unwrap_err().to_string();
        assert!(err.contains("garbage-ca.pem"), "{err}");

        // And through Registries::new.
        let o = options(&[(
            "r.example",
            HostSettings {
                insecure: false,
                ca_file: Some(missing.clone()),
            },
        )]);
        let err = match crate::registry::Registries::new(o, Arc::new(crate::registry::credentials::Credentials::new()))
        {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing CA file must fail"),
        };
        assert!(err.contains("missing-ca.pem"), "{err}");
    }
}
