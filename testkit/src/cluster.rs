//! A real Kubernetes control plane for tests: `copycat-cluster run` (testkit/cluster, Go) starts
//! etcd, kube-apiserver (RBAC and Node authorization, service-account tokens) and
//! kube-controller-manager on free loopback ports. No scheduler or kubelet: Pods stay Pending, and
//! tests set their status through the status subresource.
//!
//! The Go program is built by `scripts/cluster.sh build` (and so by `scripts/test.sh`) into
//! `<target dir>/cluster/copycat-cluster`; a test that finds no build fails saying so.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long [`Cluster::start`] and [`Cluster::restart_apiserver`] wait for the control plane: the
/// API server builds its OpenAPI documents on start, which takes long on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a stop may take before the control plane is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

const BUILD_HINT: &str = "build it with 'scripts/cluster.sh build' (Go 1.25+ and the Go module proxy; \
     scripts/test.sh does it), or point COPYCAT_CLUSTER_BIN at a build";

/// The `copycat-cluster` build: `COPYCAT_CLUSTER_BIN`, else `cluster/copycat-cluster` in the Cargo
/// target dir ([`crate::tools::in_target_dir`]).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("COPYCAT_CLUSTER_BIN") {
        return crate::tools::require_tool(&PathBuf::from(path).to_string_lossy(), BUILD_HINT);
    }
    crate::tools::in_target_dir("cluster/copycat-cluster")
        .ok_or_else(|| anyhow::anyhow!("copycat-cluster not found: {BUILD_HINT}"))
}

/// A running control plane in its own temp dir (etcd data, certificates, logs, kubeconfigs).
/// Dropping it stops every process (SIGTERM, then SIGKILL) and removes the directory.
pub struct Cluster {
    child: Child,
    lines: mpsc::Receiver<String>,
    binary: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    admin_token: String,
    ca_pem: String,
    started_in: Duration,
    // Last: removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a control plane and waits until it is ready: `/readyz` answers and the controller
    /// manager has made the `default` ServiceAccount.
    pub fn start() -> anyhow::Result<Cluster> {
        let binary = binary()?;
        let dir = tempfile::Builder::new().prefix("testkit-cluster-").tempdir()?;
        let began = Instant::now();
        let mut command = Command::new(&binary);
        // If this process dies without dropping the cluster (a test killed on timeout), the control
        // plane stops too: SIGTERM when its parent goes, and its components follow it (their
        // parent-death signal is SIGKILL).
        // SAFETY: prctl(2) is async-signal-safe and touches only the child being set up.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .args(["run", "--timeout"])
            .arg(format!("{}s", READY_TIMEOUT.as_secs()))
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("copycat-cluster.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let pki = dir.path().join("pki");
        let mut cluster = Cluster {
            child,
            lines,
            binary,
            server: String::new(),
            kubeconfig: dir.path().join("kubeconfig"),
            admin_token: String::new(),
            ca_pem: String::new(),
            started_in: Duration::ZERO,
            dir,
        };
        let ready = cluster.wait_line("ready ")?;
        cluster.server = ready.split(' ').nth(1).unwrap_or_default().to_owned();
        cluster.started_in = began.elapsed();
        let tokens = std::fs::read_to_string(pki.join("tokens.csv"))?;
        cluster.admin_token = tokens.split(',').next().unwrap_or_default().to_owned();
        cluster.ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
        Ok(cluster)
    }

    /// Waits for the next stdout line starting with `prefix`, failing when the process exits or
    /// [`READY_TIMEOUT`] passes, with the end of its logs.
    fn wait_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("copycat-cluster exited ({status}):\n{}", self.log_tails());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "copycat-cluster not {} within {READY_TIMEOUT:?}:\n{}",
                    prefix.trim(),
                    self.log_tails()
                );
            }
        }
    }

    /// The last lines of every component's log, for a failure message.
    fn log_tails(&self) -> String {
        ["copycat-cluster", "kube-apiserver", "kube-controller-manager", "etcd"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}.log\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin's kubeconfig (bearer token of a `system:masters` user).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// How long the start took, until ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The directory holding the logs (`kube-apiserver.log`, …), certificates and etcd's data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's process id (it changes with [`Cluster::restart_apiserver`]), e.g. to read its
    /// CPU time from `/proc`.
    pub fn apiserver_pid(&self) -> anyhow::Result<u32> {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(self.dir.path().join("cluster.json"))?)?;
        state["apiserverPid"]
            .as_u64()
            .map(|pid| pid as u32)
            .context("no apiserverPid in cluster.json")
    }

    /// Writes `<dir>/<name>.kubeconfig`: this cluster, authenticated with bearer `token` (e.g. a
    /// ServiceAccount's token from the TokenRequest API).
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: copycat\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: copycat\n    user: {name}\n\
             current-context: {name}\n",
            self.server
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs the real kubectl (built into `copycat-cluster`) as the admin; fails unless it exits 0.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .arg("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Restarts the API server on the same port, keeping etcd's data (the controller manager and
    /// every client see their connections drop); returns how long until it was ready again.
    pub fn restart_apiserver(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.signal(libc::SIGUSR1)?;
        self.wait_line("restarted ")?;
        Ok(began.elapsed())
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `self` lives.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            bail!(
                "signal {signal} to copycat-cluster: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The components die with it (their parent-death signal is SIGKILL).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
