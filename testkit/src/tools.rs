//! Checks for the external programs the harness drives.

use std::path::PathBuf;

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
