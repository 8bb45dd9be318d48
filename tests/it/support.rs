//! Shared helpers of the integration tests: real registries, and copycat's clients wired to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use copycat::registry::credentials::Credentials;
use copycat::registry::{ClientOptions, Credential, HostSettings, Registries};
use copycat::secret::Secret;
use testkit::{Registry, RegistryMode};

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
