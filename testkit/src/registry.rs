//! Real registries (CNCF distribution 2.8, Debian `docker-registry`) on loopback.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::certs::{self, write_file};
use crate::token::{self, TokenRequest, TokenServer};

/// How long [`Registry::start`] and [`Registry::restart`] wait for `GET /v2/` to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `User-Agent` of the readiness probe; [`Registry::requests`] leaves these requests out.
pub const PROBE_USER_AGENT: &str = "copycat-testkit-probe";

/// `User-Agent` of the marker request [`Registry::requests`] makes to know the access log has caught
/// up; left out of its answer like the probes.
pub const MARKER_USER_AGENT: &str = "copycat-testkit-marker";

/// How long [`Registry::requests`] waits for its marker request to appear in the access log.
pub const LOG_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Authentication and transport of a test registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryMode {
    /// HTTP, anonymous.
    Plain,
    /// HTTP with htpasswd (bcrypt) Basic auth, realm `test-realm`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
    /// HTTPS with a certificate signed by the test CA, anonymous.
    Tls,
    /// HTTPS plus htpasswd Basic auth.
    BasicTls {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
    /// HTTP with Docker-Hub-like bearer tokens from our own token server.
    Token {
        /// User name the token server accepts.
        user: String,
        /// Password the token server accepts.
        pass: String,
    },
    /// HTTP as a pull-through cache (distribution's proxy mode, `proxy.remoteurl`) of another
    /// registry: pulls of content it lacks are fetched from the remote and stored; pushes are
    /// refused.
    Proxy {
        /// The remote's URL, e.g. `http://127.0.0.1:5000` (HTTP: the cache trusts no test CA).
        remote: String,
        /// Credentials the cache presents to the remote, if it needs them.
        remote_credentials: Option<(String, String)>,
        /// Credentials clients must present to the cache (htpasswd Basic auth); `None`: anonymous.
        credentials: Option<(String, String)>,
    },
}

impl RegistryMode {
    /// `Basic` with the given credentials.
    pub fn basic(user: &str, pass: &str) -> RegistryMode {
        RegistryMode::Basic {
            user: user.into(),
            pass: pass.into(),
        }
    }

    /// `BasicTls` with the given credentials.
    pub fn basic_tls(user: &str, pass: &str) -> RegistryMode {
        RegistryMode::BasicTls {
            user: user.into(),
            pass: pass.into(),
        }
    }

    /// `Token` with the given credentials.
    pub fn token(user: &str, pass: &str) -> RegistryMode {
        RegistryMode::Token {
            user: user.into(),
            pass: pass.into(),
        }
    }

    /// `Proxy` for the plain-HTTP registry `remote` (with its credentials), anonymous.
    pub fn proxy_of(remote: &Registry) -> RegistryMode {
        assert!(
            !remote.mode().is_tls(),
            "a test pull-through cache reaches its remote over HTTP only"
        );
        RegistryMode::Proxy {
            remote: remote.url(),
            remote_credentials: remote.credentials(),
            credentials: None,
        }
    }

    /// The same `Proxy` requiring `user:pass` of its clients (Basic auth).
    pub fn with_auth(self, user: &str, pass: &str) -> RegistryMode {
        match self {
            RegistryMode::Proxy {
                remote,
                remote_credentials,
                ..
            } => RegistryMode::Proxy {
                remote,
                remote_credentials,
                credentials: Some((user.into(), pass.into())),
            },
            other => panic!("with_auth is for Proxy, not {other:?}"),
        }
    }

    /// The credentials of htpasswd Basic auth (Basic, BasicTls, Proxy with credentials), if any.
    pub fn htpasswd_credentials(&self) -> Option<(&str, &str)> {
        match self {
            RegistryMode::Basic { user, pass }
            | RegistryMode::BasicTls { user, pass }
            | RegistryMode::Proxy {
                credentials: Some((user, pass)),
                ..
            } => Some((user, pass)),
            _ => None,
        }
    }

    /// Whether the registry speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self, RegistryMode::Tls | RegistryMode::BasicTls { .. })
    }

    /// The credentials clients must present, if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        match self {
            RegistryMode::Plain | RegistryMode::Tls => None,
            RegistryMode::Proxy { credentials, .. } => credentials.clone(),
            RegistryMode::Basic { user, pass }
            | RegistryMode::BasicTls { user, pass }
            | RegistryMode::Token { user, pass } => Some((user.clone(), pass.clone())),
        }
    }
}

/// One line of the registry's access log (combined log format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// HTTP method, e.g. `HEAD`.
    pub method: String,
    /// Request target as logged: path plus query string, e.g. `/v2/a/blobs/uploads/?digest=…`.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// `User-Agent` as logged (empty when none was sent).
    pub user_agent: String,
}

/// A running `docker-registry` process bound to `127.0.0.1:<port>`, with its own temp dir
/// (config, data, certificates, `registry.log`). Dropping it kills and reaps the process.
pub struct Registry {
    mode: RegistryMode,
    // Declared before `dir` so that the process dies before its directory is removed.
    child: Option<Child>,
    token: Option<TokenServer>,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Generates a config for `mode` in a fresh temp dir, starts the registry on a free loopback
    /// port (retrying on a port collision) and waits until `GET /v2/` answers 200 or 401.
    pub fn start(mode: RegistryMode) -> anyhow::Result<Registry> {
        crate::tools::docker_registry()?;
        let dir = tempfile::Builder::new().prefix("testkit-registry-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        let mut reg = Registry {
            mode,
            child: None,
            token: None,
            port: 0,
            tls: None,
            dir,
        };
        reg.prepare_files()?;
        let mut last_err = None;
        for _ in 0..5 {
            reg.port = free_port()?;
            match reg.spawn_and_wait() {
                Ok(()) => return Ok(reg),
                Err(StartError::AddrInUse(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no free port")))
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.mode.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The mode the registry was started with.
    pub fn mode(&self) -> &RegistryMode {
        &self.mode
    }

    /// Credentials clients must present (Basic, BasicTls, Token), if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.mode.credentials()
    }

    /// PEM file of the CA that signed the server certificate (TLS modes only).
    pub fn ca_pem_path(&self) -> Option<PathBuf> {
        self.mode.is_tls().then(|| self.dir.path().join("certs/ca.crt"))
    }

    /// A directory holding only `ca.crt`, for `skopeo --cert-dir` (TLS modes only).
    pub fn skopeo_cert_dir(&self) -> Option<PathBuf> {
        self.mode.is_tls().then(|| self.dir.path().join("skopeo-certs"))
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file receiving the registry's stdout and stderr (access log and warnings).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The whole log so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The generated `config.yml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// PID of the registry process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Token server realm, `http://127.0.0.1:PORT/token` (Token mode only).
    pub fn token_url(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// Number of requests the token server received (0 outside Token mode), including refused
    /// ones and those made by testkit's own helpers (one per helper call).
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.log().len())
    }

    /// Every bearer token the token server issued, oldest first (empty outside Token mode): secrets
    /// a test can look for in output.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.token.as_ref().map(TokenServer::issued).unwrap_or_default()
    }

    /// Every request the token server received, oldest first (empty outside Token mode).
    pub fn token_log(&self) -> Vec<TokenRequest> {
        self.token.as_ref().map(TokenServer::log).unwrap_or_default()
    }

    /// Requests the registry served so far (across restarts), parsed from the access log,
    /// without the readiness probes and markers.
    ///
    /// docker-registry writes a request's log line after answering it, so a client can hold an
    /// answer whose line is not written yet. While the registry runs this first makes a marker
    /// request and waits (at most [`LOG_CATCH_UP_TIMEOUT`], then panics) until the marker's line is
    /// in the log: every request answered before the call is then in the log too, and a count of
    /// 0 means none was made, not "not logged yet".
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.catch_up_access_log();
        parse_access_log(&self.log())
            .into_iter()
            .filter(|e| e.user_agent != PROBE_USER_AGENT && e.user_agent != MARKER_USER_AGENT)
            .collect()
    }

    /// Makes a marker request and waits until its access-log line is written; nothing to wait for
    /// when the registry does not run (a stopped process has written everything).
    fn catch_up_access_log(&self) {
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if self.child.is_none() {
            return;
        }
        let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/v2/testkit-marker/manifests/{}-{n}", std::process::id());
        if let Err(e) = probe(self.port, self.tls_config(), &path, MARKER_USER_AGENT) {
            // Not answering (e.g. killed behind our back): its log is as complete as it gets.
            eprintln!("testkit: access-log marker to {} failed: {e:#}", self.host());
            return;
        }
        let needle = format!(" {path} HTTP/");
        let deadline = Instant::now() + LOG_CATCH_UP_TIMEOUT;
        while !self.log().contains(&needle) {
            assert!(
                Instant::now() < deadline,
                "docker-registry on {} did not log the marker request {path} within {LOG_CATCH_UP_TIMEOUT:?}",
                self.host()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the registry (SIGKILL, like a crash) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the registry if it runs, then starts it again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(StartError::AddrInUse(e)) if Instant::now() >= deadline => return Err(e),
                Err(StartError::AddrInUse(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    /// Deletes all stored content (repositories, blobs, uploads) while the registry runs.
    /// Works because the config has no blob descriptor cache.
    pub fn wipe(&self) -> anyhow::Result<()> {
        let docker = self.data_dir().join("docker");
        match std::fs::remove_dir_all(&docker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("wiping {}", docker.display())),
        }
    }

    /// rustls config trusting the test CA (TLS modes only).
    fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    fn prepare_files(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path().to_owned();
        if self.mode.is_tls() {
            let c = certs::certs()?;
            std::fs::create_dir_all(d.join("certs"))?;
            std::fs::create_dir_all(d.join("skopeo-certs"))?;
            write_file(&d.join("certs"), "ca.crt", c.ca_pem.as_bytes())?;
            write_file(&d.join("certs"), "server.crt", c.server_cert_pem.as_bytes())?;
            write_file(&d.join("certs"), "server.key", c.server_key_pem.as_bytes())?;
            write_file(&d.join("skopeo-certs"), "ca.crt", c.ca_pem.as_bytes())?;
            self.tls = Some(rustls_config(&c.ca_der)?);
        }
        if let Some((user, pass)) = self.mode.htpasswd_credentials() {
            let htpasswd = crate::tools::htpasswd()?;
            let out = Command::new(htpasswd)
                .args(["-Bbn", user, pass])
                .output()
                .context("running htpasswd")?;
            anyhow::ensure!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            write_file(&d, "htpasswd", &out.stdout)?;
        }
        if let RegistryMode::Token { user, pass } = &self.mode {
            let c = certs::certs()?;
            write_file(&d, "token-root.crt", c.signing_cert_pem.as_bytes())?;
            self.token = Some(TokenServer::start(user, pass)?);
        }
        Ok(())
    }

    fn config_yaml(&self) -> String {
        let d = self.dir.path();
        let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
        let secret = crate::util::sha256_digest(format!("secret:{}", d.display()).as_bytes());
        let mut y = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: \"{secret}\"\n\
             \x20 headers:\n    X-Content-Type-Options: [nosniff]\n    {INSTANCE_HEADER}: [\"{instance}\"]\n",
            root = q(&self.data_dir()),
            port = self.port,
            secret = &secret[7..],
            instance = self.instance_id(),
        );
        if self.mode.is_tls() {
            y += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(&d.join("certs/server.crt")),
                q(&d.join("certs/server.key"))
            );
        }
        if self.mode.htpasswd_credentials().is_some() {
            y += &format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                q(&d.join("htpasswd"))
            );
        }
        match &self.mode {
            RegistryMode::Token { .. } => {
                let realm = self.token_url().unwrap_or_default();
                y += &format!(
                    "auth:\n  token:\n    realm: \"{realm}\"\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    token::SERVICE,
                    token::ISSUER,
                    q(&d.join("token-root.crt"))
                );
            }
            RegistryMode::Proxy {
                remote,
                remote_credentials,
                ..
            } => {
                let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
                y += &format!("proxy:\n  remoteurl: {}\n", quoted(remote));
                if let Some((user, pass)) = remote_credentials {
                    y += &format!("  username: {}\n  password: {}\n", quoted(user), quoted(pass));
                }
            }
            RegistryMode::Plain | RegistryMode::Tls | RegistryMode::Basic { .. } | RegistryMode::BasicTls { .. } => {}
        }
        y
    }

    /// Unique per registry; sent back in [`INSTANCE_HEADER`] so that the readiness probe can
    /// tell our process from another one that grabbed the port first.
    fn instance_id(&self) -> String {
        let d = crate::util::sha256_digest(format!("instance:{}", self.dir.path().display()).as_bytes());
        d[7..23].to_owned()
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let bin = crate::tools::docker_registry()?;
        std::fs::write(self.config_path(), self.config_yaml()).context("writing config")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening registry.log")?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning log handle")?)
            .stderr(log);
        // Hermetic: no REGISTRY_* overrides from the environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().context("spawning docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = self.log();
                let new_log = log.get(log_offset as usize..).unwrap_or(&log);
                let msg = format!("docker-registry exited with {status} before becoming ready; log:\n{new_log}");
                return Err(if new_log.contains("address already in use") {
                    StartError::AddrInUse(anyhow::anyhow!(msg))
                } else {
                    StartError::Other(anyhow::anyhow!(msg))
                });
            }
            let last_probe = match probe(self.port, self.tls_config(), "/v2/", PROBE_USER_AGENT) {
                Ok((200 | 401, Some(id))) if id == self.instance_id() => return Ok(()),
                Ok((code, id)) => format!("GET /v2/ answered {code} from instance {id:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                self.stop();
                return Err(StartError::Other(anyhow::anyhow!(
                    "docker-registry on port {} not ready after {:?} (last probe: {last_probe}); log:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url())
            .field("mode", &self.mode)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

enum StartError {
    AddrInUse(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

fn rustls_config(ca_der: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Response header carrying the registry's instance id (set through `http.headers`).
const INSTANCE_HEADER: &str = "X-Testkit-Instance";

/// One `GET PATH` over a fresh connection; returns the status code and the instance header.
fn probe(
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
    user_agent: &str,
) -> anyhow::Result<(u16, Option<String>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {user_agent}\r\n\
         Connection: close\r\n\r\n"
    );
    match tls {
        None => read_status(tcp, &req),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
            let conn = rustls::ClientConnection::new(config, name)?;
            read_status(rustls::StreamOwned::new(conn, tcp), &req)
        }
    }
}

fn read_status(mut s: impl std::io::Read + std::io::Write, req: &str) -> anyhow::Result<(u16, Option<String>)> {
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = s.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed before the end of the headers");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line: {status_line:?}"))?;
    let instance = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(INSTANCE_HEADER)
            .then(|| value.trim().to_owned())
    });
    Ok((code, instance))
}

/// Parses combined-log-format lines such as
/// `127.0.0.1 - - [22/Nov/2026:04:31:53 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`;
/// other lines (the registry's own `time=… level=…` messages) are skipped.
pub fn parse_access_log(log: &str) -> Vec<AccessLogEntry> {
    log.lines().filter_map(parse_access_line).collect()
}

fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut fields = rest.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    // Size, then "referer" "user-agent": the user agent is the last quoted string.
    let user_agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|r| r.rsplit_once('"'))
        .map(|(_, ua)| ua.to_owned())
        .unwrap_or_default();
    Some(AccessLogEntry {
        method,
        path,
        status,
        user_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines() {
        let log = "127.0.0.1 - - [22/Nov/2026:04:31:53 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n\
            time=\"2026-11-22T04:31:53Z\" level=error msg=\"response completed with error\" http.request.uri=/v2/foo\n\
            127.0.0.1 - - [22/Nov/2026:04:31:53 +0000] \"HEAD /v2/foo/manifests/x HTTP/1.1\" 404 91 \"\" \"a b\"\n";
        let e = parse_access_log(log);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            AccessLogEntry {
                method: "GET".into(),
                path: "/v2/".into(),
                status: 200,
                user_agent: "curl/7.88.1".into()
            }
        );
        assert_eq!(e[1].method, "HEAD");
        assert_eq!(e[1].path, "/v2/foo/manifests/x");
        assert_eq!(e[1].status, 404);
        assert_eq!(e[1].user_agent, "a b");
    }
}
