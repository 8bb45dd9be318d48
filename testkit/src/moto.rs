//! A `moto_server` process (PyPI `moto[server]`) as the ECR control plane, bound to a free loopback
//! port, with request recording on so tests can count the API calls a client made. moto has no
//! registry side: pair it with a [`crate::Registry`] whose htpasswd user is `AWS` with
//! [`Moto::registry_password`].

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// moto's fixed account id.
pub const ACCOUNT_ID: &str = "123456789012";

const INSTALL_HINT: &str = "run scripts/test.sh (it installs moto into target/venv), or: python3 -m venv target/venv \
     && target/venv/bin/pip install 'moto[server]==5.2.5'; or point COPYCAT_MOTO_SERVER at a moto_server binary";

/// A running moto server. Dropping it kills and reaps the process.
pub struct Moto {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
    /// Holds the recorder's file (moto writes `./moto_recording` unless told otherwise).
    _dir: tempfile::TempDir,
}

/// `COPYCAT_MOTO_SERVER`, else the project's `target/venv/bin/moto_server`, else `moto_server` on `PATH`.
fn moto_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("COPYCAT_MOTO_SERVER") {
        return crate::tools::require_tool(&PathBuf::from(p).to_string_lossy(), INSTALL_HINT);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/moto_server");
    if venv.exists() {
        return Ok(venv);
    }
    crate::tools::require_tool("moto_server", INSTALL_HINT)
}

impl Moto {
    /// Starts moto on a free port, waits until it answers, and starts its request recorder.
    pub fn start() -> anyhow::Result<Moto> {
        let bin = moto_server()?;
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = tempfile::NamedTempFile::new()?;
            let dir = tempfile::Builder::new().prefix("testkit-moto-").tempdir()?;
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .env("MOTO_ENABLE_RECORDING", "True")
                .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
                .stdin(Stdio::null())
                .stdout(log.reopen()?)
                .stderr(log.reopen()?)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let mut moto = Moto {
                child,
                port,
                _log: log,
                _dir: dir,
            };
            match moto.wait_ready() {
                Ok(()) => {
                    moto.call("POST", "/moto-api/recorder/start-recording", &[], "")?;
                    return Ok(moto);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self._log.path()).unwrap_or_default();
                bail!("moto_server exited with {status}: {log}");
            }
            if self.call("GET", "/moto-api/", &[], "").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("moto_server did not answer within 20 s")
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL for the AWS SDK (`AWS_ENDPOINT_URL_ECR`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry password moto's `GetAuthorizationToken` hands out (user `AWS`).
    pub fn registry_password() -> String {
        format!("{ACCOUNT_ID}-auth-token")
    }

    /// Calls an ECR API operation (`CreateRepository`, …) with a JSON body; returns the JSON answer,
    /// or an error with moto's error body.
    pub fn ecr(&self, operation: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let target = format!("X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.{operation}");
        let headers = [
            target.as_str(),
            "Content-Type: application/x-amz-json-1.1",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ecr/aws4_request, \
             SignedHeaders=host, Signature=0",
        ];
        let (status, text) = self.call("POST", "/", &headers, &body.to_string())?;
        if status != 200 {
            bail!("ECR {operation}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The ECR operations received so far, in order (from moto's recorder; the test's own
    /// [`Moto::ecr`] calls included).
    pub fn operations(&self) -> anyhow::Result<Vec<String>> {
        let (_, text) = self.call("GET", "/moto-api/recorder/download-recording", &[], "")?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| operation_of(&v))
            .collect())
    }

    /// How many times `operation` was called.
    pub fn count(&self, operation: &str) -> usize {
        self.operations()
            .map(|ops| ops.iter().filter(|o| *o == operation).count())
            .unwrap_or_default()
    }

    /// One request over a fresh connection: status and body.
    fn call(&self, method: &str, path: &str, headers: &[&str], body: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        tcp.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").context("malformed HTTP answer from moto")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status in moto's answer")?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Ok((status, body))
    }
}

/// The operation of a recorded request: JSON protocols (ECR) name it in `X-Amz-Target`, query
/// protocols (STS) in the form body's `Action`.
fn operation_of(request: &serde_json::Value) -> Option<String> {
    if let Some(target) = request["headers"]["X-Amz-Target"].as_str() {
        return target.rsplit('.').next().map(str::to_owned);
    }
    let body = request["body"].as_str()?;
    let body = if request["body_encoded"].as_bool() == Some(true) {
        use base64::Engine as _;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).ok()?).ok()?
    } else {
        body.to_owned()
    };
    body.split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .map(str::to_owned)
}

/// Decodes a chunked body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
