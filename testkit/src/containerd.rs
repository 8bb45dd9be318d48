//! A containerd daemon of its own (the Debian package's), to pull through registry `hosts.toml`
//! files the way its CRI plugin reads them (`config_path`): `ctr content fetch --hosts-dir`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::tools::require_tool;

/// How long containerd may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a `ctr` invocation may run before it is killed and the call fails.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// A running containerd with its root, state and socket in a temp dir (the CRI plugin off).
/// Dropping it kills and reaps the process. It needs root, as containerd does.
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits (bounded) until its socket exists.
    pub fn start() -> anyhow::Result<Containerd> {
        let bin = require_tool("containerd", "apt-get install -y containerd")?;
        require_tool("ctr", "apt-get install -y containerd")?;
        let dir = tempfile::Builder::new().prefix("testkit-containerd-").tempdir()?;
        let p = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
            p("root"),
            p("state"),
            p("c.sock"),
            p("c.sock.ttrpc")
        );
        std::fs::write(dir.path().join("config.toml"), config)?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut containerd = Containerd {
            child: Some(child),
            dir,
        };
        let started = std::time::Instant::now();
        while !containerd.socket().exists() {
            if let Some(status) = containerd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("containerd exited ({status}): {}", containerd.log());
            }
            anyhow::ensure!(
                started.elapsed() < START_TIMEOUT,
                "containerd did not open its socket within {START_TIMEOUT:?}: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(containerd)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Fetches `reference` (its manifests and blobs into the content store) in namespace `ns`,
    /// resolving its registry through the `hosts.toml` files under `hosts_dir`.
    pub async fn fetch(&self, hosts_dir: &Path, ns: &str, reference: &str) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(require_tool("ctr", "apt-get install -y containerd")?);
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", ns, "content", "fetch", "--hosts-dir"])
            .arg(hosts_dir)
            .arg(reference);
        crate::tools::output_of(cmd, &format!("ctr content fetch {reference}"), CTR_TIMEOUT)
            .await
            .map(drop)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
