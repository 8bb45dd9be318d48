//! Shared helpers of the integration tests: real registries, and copycat's clients wired to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use copycat::registry::credentials::Credentials;
use copycat::registry::{ClientOptions, Credential, HostSettings, Registries};
use copycat::secret::Secret;
use testkit::{AccessLogEntry, Registry, RegistryMode};

/// How long a test request may take before it counts as stalled.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a docker-registry, failing with the install command when it is missing.
pub fn start(mode: RegistryMode) -> Registry {
    Registry::start(mode).expect("start docker-registry (apt-get install -y docker-registry)")
}

/// Client options for tests: quick retries, `timeout` per request.
pub fn options(hosts: HashMap<String, HostSettings>, timeout: Duration) -> ClientOptions {
    ClientOptions {
        request_timeout: Some(timeout),
        retry_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        max_concurrent_requests: 16,
        hosts,
        user_agent: "copycat-test".into(),
    }
}

/// The credentials and CA files of `regs`, as a credential provider and host settings.
pub fn access(regs: &[&Registry]) -> (Credentials, HashMap<String, HostSettings>) {
    let mut credentials = Credentials::new();
    let mut hosts = HashMap::new();
    for r in regs {
        if let Some((username, password)) = r.credentials() {
            let credential = Credential::Basic {
                username,
                password: Secret::new(password),
            };
            credentials = credentials.with_host(&r.host(), credential);
        }
        if let Some(ca) = r.ca_pem_path() {
            hosts.insert(
                r.host(),
                HostSettings {
                    insecure: false,
                    ca_file: Some(ca),
                },
            );
        }
    }
    (credentials, hosts)
}

/// Registry clients that can reach each of `regs`.
pub fn registries(regs: &[&Registry]) -> Registries {
    let (credentials, hosts) = access(regs);
    Registries::new(options(hosts, TIMEOUT), Arc::new(credentials)).expect("registry clients")
}

/// A running `copycat run` (the built binary). Its stderr is drained as it comes, so a chatty daemon
/// never blocks on a full pipe; dropping it kills the process.
pub struct CopycatRun {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl CopycatRun {
    /// `copycat run --kubeconfig KUBECONFIG ARGS…` with an empty environment except `env` (later
    /// entries win), no config file and text logs.
    pub fn start(kubeconfig: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> CopycatRun {
        let mut all: Vec<std::ffi::OsString> = vec!["run".into(), "--kubeconfig".into(), kubeconfig.into()];
        all.extend(args.iter().map(Into::into));
        CopycatRun::start_program(env!("CARGO_BIN_EXE_copycat").as_ref(), &all, env)
    }

    /// `PROGRAM ARGS…` (the binary, or a link to it) with an empty environment except `env` (later
    /// entries win), no config file and text logs.
    pub fn start_program(program: &std::path::Path, args: &[std::ffi::OsString], env: &[(&str, &str)]) -> CopycatRun {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env_clear();
        cmd.env("CONFIG_PATH", "/dev/null").env("LOG_FORMAT", "text");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start copycat run");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().expect("piped stderr"), log.clone());
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        CopycatRun {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// The process id, e.g. to read its `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address the `what` listener (`metrics` or `health probe`) bound, from its
    /// `… listener started` log line (text or JSON logs); fails after 30 s.
    pub async fn bound_address(&self, what: &str) -> String {
        let started = format!("{what} listener started");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if let Some(address) = log.lines().filter(|l| l.contains(&started)).find_map(logged_address) {
                return address;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {started:?} with an address in 30 s:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether (and how) the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for copycat")
    }

    /// SIGKILL, no clean-up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM; returns the exit code and everything logged (fails after 30 s).
    pub fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for the process to exit by itself; returns the exit code and everything logged.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "copycat did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code(), self.log.lock().unwrap().clone())
    }
}

impl Drop for CopycatRun {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The listener address tests give `copycat run`: the daemon binds a port the kernel picks, and the
/// test reads it back with [`CopycatRun::bound_address`], so no other process can take it in between.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// The `address` field of a log line: `address=HOST:PORT` (text) or `"address":"HOST:PORT"` (JSON).
fn logged_address(line: &str) -> Option<String> {
    let (_, rest) = line
        .split_once("address=")
        .or_else(|| line.split_once("\"address\":\""))?;
    let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
    Some(rest[..end].to_owned()).filter(|a| !a.is_empty())
}

/// One HTTP/1.1 request, with a bearer token if given; status 0 when nothing listens (yet). Bounded by 60 s.
pub async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    http_authorized(addr, method, path, authorization.as_deref()).await
}

/// [`http`] with `authorization` as the whole `Authorization` header value, if given.
pub async fn http_authorized(addr: &str, method: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return (0, String::new());
        };
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return (0, String::new());
        }
        let mut response = Vec::new();
        if stream.read_to_end(&mut response).await.is_err() {
            return (0, String::new());
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took over 60 s"))
}

/// Polls `check` every 200 ms until it holds; fails after `within`.
pub async fn eventually(what: &str, within: Duration, check: impl AsyncFn() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A temporary file holding `text` (a config file, an images file); removed when dropped.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Requests the built `copycat` binary made to `reg` (its `User-Agent` is `copycat/<version>`; testkit's
/// own pushes and probes are left out).
pub fn copycat_requests(reg: &Registry) -> Vec<AccessLogEntry> {
    reg.requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("copycat/"))
        .collect()
}

/// How many manifest PUTs `copycat` made to `reg`, per `repo:reference` (every write of a tag or of a
/// manifest by digest), in name order.
pub fn manifest_puts(reg: &Registry) -> std::collections::BTreeMap<String, usize> {
    let mut puts = std::collections::BTreeMap::new();
    for r in copycat_requests(reg) {
        if r.method != "PUT" {
            continue;
        }
        let Some((repo, reference)) = r.path.strip_prefix("/v2/").and_then(|p| p.split_once("/manifests/")) else {
            continue;
        };
        *puts.entry(format!("{repo}:{reference}")).or_insert(0) += 1;
    }
    puts
}

/// A secret to look for in output: what it is, and its text.
#[derive(Clone)]
pub struct SecretText {
    what: String,
    text: String,
}

/// The forms the credential `user:pass` takes: the password, and `user:pass` in base64 (a Docker
/// config `auth`, the value of a Basic `Authorization` header) without its padding, so a partial
/// print is caught too.
pub fn credential_secrets(user: &str, pass: &str) -> Vec<SecretText> {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    vec![
        SecretText {
            what: format!("the password of {user}"),
            text: pass.to_owned(),
        },
        SecretText {
            what: format!("base64 {user}:password (Basic auth, Docker config auth)"),
            text: basic.trim_end_matches('=').to_owned(),
        },
    ]
}

/// Each bearer token `reg`'s token server issued (the whole JWT and, on its own, its signature);
/// fails if none was issued, as the check would then prove nothing.
pub fn issued_token_secrets(reg: &Registry) -> Vec<SecretText> {
    let tokens = reg.issued_tokens();
    assert!(!tokens.is_empty(), "the token server of {} issued no token", reg.host());
    tokens
        .into_iter()
        .flat_map(|jwt| {
            let signature = jwt.rsplit('.').next().unwrap_or_default().to_owned();
            [
                SecretText {
                    what: format!("a bearer token issued for {}", reg.host()),
                    text: jwt,
                },
                SecretText {
                    what: format!("the signature of a bearer token issued for {}", reg.host()),
                    text: signature,
                },
            ]
        })
        .collect()
}

/// A secret known only as text (an ECR `authorizationToken`, say).
pub fn secret(what: &str, text: &str) -> SecretText {
    SecretText {
        what: what.to_owned(),
        text: text.to_owned(),
    }
}

/// Fails naming the secret and the output if any of `secrets` appears in any of `outputs` (a name,
/// and the text: a log, `/status`, `/metrics`, Events, an error).
pub fn assert_no_secrets(outputs: &[(&str, &str)], secrets: &[SecretText]) {
    for s in secrets {
        assert!(s.text.len() >= 8, "{} is too short to search for: {:?}", s.what, s.text);
        for (name, text) in outputs {
            assert!(!text.contains(&s.text), "{} appears in {name}:\n{text}", s.what);
        }
    }
}
