//! Checks for the external programs the harness drives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// Returns the path of executable `name` found on `PATH` (or `name` itself when it is a path).
///
/// A missing tool is an error, never a silent skip: the message says how to install it, e.g.
/// `docker-registry not found: install it with 'apt-get install -y docker-registry'`.
pub fn require_tool(name: &str, install_hint: &str) -> anyhow::Result<PathBuf> {
    find_tool(name).ok_or_else(|| anyhow::anyhow!("{name} not found: install it with '{install_hint}'"))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `rel` (e.g. `cluster/copycat-cluster`) in the Cargo target dir: `CARGO_TARGET_DIR`, else the one
/// holding the running test binary, else the workspace's `target/`; `None` when none has it.
pub fn in_target_dir(rel: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(std::path::Path::to_path_buf));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dirs.into_iter().map(|dir| dir.join(rel)).find(|p| p.exists())
}

/// The Debian `docker-registry` binary (CNCF distribution 2.8).
pub(crate) fn docker_registry() -> anyhow::Result<PathBuf> {
    // The package installs to /usr/bin, which is not always on PATH for test runners.
    let fixed = PathBuf::from("/usr/bin/docker-registry");
    if is_executable(&fixed) {
        return Ok(fixed);
    }
    require_tool("docker-registry", "apt-get install -y docker-registry")
}

/// `openssl` CLI, used to generate the test certificates.
pub(crate) fn openssl() -> anyhow::Result<PathBuf> {
    require_tool("openssl", "apt-get install -y openssl")
}

/// `htpasswd`, used to write bcrypt password files.
pub(crate) fn htpasswd() -> anyhow::Result<PathBuf> {
    require_tool("htpasswd", "apt-get install -y apache2-utils")
}

/// `skopeo`, the independent verifier.
pub(crate) fn skopeo() -> anyhow::Result<PathBuf> {
    require_tool("skopeo", "apt-get install -y skopeo")
}

/// Runs `cmd` without proxy variables (loopback registries must be reached directly) and without
/// stdin, killed after `timeout`; its stdout when it succeeds, else an error with `what` and its
/// stderr.
pub(crate) async fn output_of(
    mut cmd: tokio::process::Command,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
