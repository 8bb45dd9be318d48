//! skopeo as an independent verifier (and copier, for benchmarks).

use std::time::Duration;

use crate::registry::Registry;

/// Longest a skopeo invocation may run before it is killed and the call fails.
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

/// skopeo flags to reach `reg` with `prefix` (`""` for `inspect`, `"src-"` / `"dest-"` for
/// `copy`): `--tls-verify=false` over HTTP, `--cert-dir` for the test CA, `--creds` or
/// `--no-creds`. skopeo does the token flow by itself.
pub fn skopeo_flags(reg: &Registry, prefix: &str) -> Vec<String> {
    let mut flags = Vec::new();
    match reg.skopeo_cert_dir() {
        Some(dir) => {
            flags.push(format!("--{prefix}tls-verify=true"));
            flags.push(format!("--{prefix}cert-dir={}", dir.display()));
        }
        None => flags.push(format!("--{prefix}tls-verify=false")),
    }
    match reg.credentials() {
        Some((user, pass)) => flags.push(format!("--{prefix}creds={user}:{pass}")),
        None => flags.push(format!("--{prefix}no-creds")),
    }
    flags
}

/// `docker://127.0.0.1:PORT/<reference>`.
pub fn docker_ref(reg: &Registry, reference: &str) -> String {
    format!("docker://{}/{reference}", reg.host())
}

/// Runs skopeo with `args`, without proxy variables; returns stdout.
pub async fn run_skopeo(args: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(crate::tools::skopeo()?);
    cmd.args(args);
    crate::tools::output_of(cmd, &format!("skopeo {}", args.join(" ")), SKOPEO_TIMEOUT).await
}

/// The raw manifest of `repo:tag` (or `repo@digest`) exactly as the registry serves it.
pub async fn skopeo_inspect_raw(reg: &Registry, reference: &str) -> anyhow::Result<Vec<u8>> {
    let mut args = vec!["inspect".to_owned(), "--raw".to_owned()];
    args.extend(skopeo_flags(reg, ""));
    args.push(docker_ref(reg, reference));
    run_skopeo(&args).await
}

/// `sha256:` digest of the raw manifest skopeo reads for `reference` (`repo:tag` or
/// `repo@digest`). skopeo 1.9 prints `--raw` output as is, with no trailing newline added.
pub async fn skopeo_digest(reg: &Registry, reference: &str) -> anyhow::Result<String> {
    let raw = skopeo_inspect_raw(reg, reference).await?;
    Ok(crate::util::sha256_digest(&raw))
}

/// `skopeo copy --all --preserve-digests` from `src`/`src_ref` to `dst`/`dst_ref`.
pub async fn skopeo_copy(src: &Registry, src_ref: &str, dst: &Registry, dst_ref: &str) -> anyhow::Result<()> {
    let mut args = vec!["copy".to_owned(), "--all".to_owned(), "--preserve-digests".to_owned()];
    args.extend(skopeo_flags(src, "src-"));
    args.extend(skopeo_flags(dst, "dest-"));
    args.push(docker_ref(src, src_ref));
    args.push(docker_ref(dst, dst_ref));
    run_skopeo(&args).await.map(drop)
}
