//! Test certificates, generated once per process with the `openssl` CLI (EC P-256: fast).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context as _;

/// Everything the TLS and token modes need, held in memory; each registry writes its own copies.
pub(crate) struct Certs {
    /// PEM of the test CA that signs the registry's server certificate.
    pub ca_pem: String,
    /// DER of the same CA certificate.
    pub ca_der: Vec<u8>,
    /// PEM of the server certificate (SAN `IP:127.0.0.1,DNS:localhost`).
    pub server_cert_pem: String,
    /// PEM of the server's private key.
    pub server_key_pem: String,
    /// PKCS#8 DER of the token signing key (for `ring`).
    pub signing_pkcs8: Vec<u8>,
    /// DER of the self-signed token signing certificate (goes into the JWT `x5c` header).
    pub signing_cert_der: Vec<u8>,
    /// PEM of the same certificate (the registry's `rootcertbundle`).
    pub signing_cert_pem: String,
}

static CERTS: OnceLock<Result<Certs, String>> = OnceLock::new();

/// The process-wide certificates, generated on first use.
pub(crate) fn certs() -> anyhow::Result<&'static Certs> {
    CERTS
        .get_or_init(|| generate().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("generating test certificates: {e}"))
}

fn generate() -> anyhow::Result<Certs> {
    let openssl = crate::tools::openssl()?;
    let dir = tempfile::Builder::new().prefix("testkit-certs-").tempdir()?;
    let d = dir.path();
    // Every argument is free of spaces, so each command is written as one string.
    let run = |cmd: &str| -> anyhow::Result<()> {
        let out = Command::new(&openssl)
            .args(cmd.split_whitespace())
            .current_dir(d)
            .output()
            .context("running openssl")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let genkey = |name: &str| {
        run(&format!(
            "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}"
        ))
    };

    // CA.
    genkey("ca.key")?;
    run(
        "req -x509 -new -key ca.key -sha256 -days 3650 -subj /CN=copycat-testkit-CA \
         -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt",
    )?;

    // Server certificate signed by the CA.
    genkey("server.key")?;
    run("req -new -key server.key -subj /CN=localhost -out server.csr")?;
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    run(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 825 -sha256 \
         -extfile server.ext -out server.crt",
    )?;

    // Token signing key and its self-signed certificate.
    genkey("signing.key")?;
    run("pkcs8 -topk8 -nocrypt -in signing.key -outform DER -out signing.pk8")?;
    run(
        "req -x509 -new -key signing.key -sha256 -days 3650 -subj /CN=test-issuer \
         -out signing.crt",
    )?;
    run("x509 -in signing.crt -outform DER -out signing.der")?;
    run("x509 -in ca.crt -outform DER -out ca.der")?;

    let read = |name: &str| std::fs::read(d.join(name)).with_context(|| format!("reading {name}"));
    let text = |name: &str| -> anyhow::Result<String> { Ok(String::from_utf8(read(name)?)?) };
    let certs = Certs {
        ca_pem: text("ca.crt")?,
        ca_der: read("ca.der")?,
        server_cert_pem: text("server.crt")?,
        server_key_pem: text("server.key")?,
        signing_pkcs8: read("signing.pk8")?,
        signing_cert_der: read("signing.der")?,
        signing_cert_pem: text("signing.crt")?,
    };
    // Fail early (and once) if ring cannot use the key.
    check_signing_key(&certs.signing_pkcs8)?;
    Ok(certs)
}

fn check_signing_key(pkcs8: &[u8]) -> anyhow::Result<()> {
    let rng = ring::rand::SystemRandom::new();
    ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        .map_err(|e| anyhow::anyhow!("ring rejected the token signing key: {e}"))?;
    Ok(())
}

/// Writes `contents` to `dir/name` and returns the path.
pub(crate) fn write_file(dir: &Path, name: &str, contents: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}
