//! Amazon ECR as the target: the registry host of an account and region, registry credentials from
//! `GetAuthorizationToken` (fetched once, cached, renewed before they expire and when the registry
//! refuses them), and repositories created on first use with the configured settings and lifecycle
//! policy.
//!
//! AWS credentials come from the SDK's default chain (environment, shared config, IRSA web identity,
//! EKS Pod Identity, IMDS), optionally wrapped in STS AssumeRole. The ECR API endpoint follows the
//! SDK's rules, so `AWS_ENDPOINT_URL_ECR` and `AWS_ENDPOINT_URL` work. The SDK runs on its own
//! hyper client with rustls and ring: no second TLS stack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability, Tag,
};
use base64::Engine as _;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{RepositoryError, RepositoryPreparer, Target};
use crate::config::EcrConfig;
use crate::registry::{Credential, CredentialProvider, RegistryError};
use crate::secret::Secret;

/// Registry tokens are renewed at least this often, whatever their expiry says (they last 12 h).
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// A token refused by the registry is renewed only when it is older than this: a younger one was
/// refused for another reason (permissions), and fetching again would not help.
pub const TOKEN_MIN_AGE: Duration = Duration::from_secs(10);
/// Renew this long before the token's `expiresAt`.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(3600);

/// Everything the ECR target needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Account id of the registry.
    pub account_id: String,
    /// Region of the registry.
    pub region: String,
    /// Registry host to push to.
    pub registry_host: String,
    /// Create missing repositories.
    pub create_repo: bool,
    /// Lifecycle policy JSON for created repositories.
    pub lifecycle_policy: Option<String>,
    /// Apply the lifecycle policy to existing repositories too.
    pub reconcile_lifecycle_policy: bool,
    /// Settings of created repositories.
    pub repository: RepositorySettings,
    /// STS AssumeRole on top of the default chain.
    pub assume_role: Option<AssumeRole>,
    /// When registry tokens are renewed.
    pub tokens: TokenPolicy,
}

/// Settings of repositories copycat creates.
#[derive(Debug, Clone)]
pub struct RepositorySettings {
    /// `MUTABLE` or `IMMUTABLE`.
    pub tag_mutability: String,
    /// Basic scan on push.
    pub scan_on_push: bool,
    /// `AES256`, `KMS` or `KMS_DSSE`.
    pub encryption_type: String,
    /// KMS key for `KMS*`; `None`: the AWS managed key.
    pub kms_key: Option<String>,
    /// Resource tags.
    pub tags: BTreeMap<String, String>,
}

/// A role to assume.
#[derive(Debug, Clone)]
pub struct AssumeRole {
    /// Role ARN.
    pub arn: String,
    /// External ID, when the trust policy requires one.
    pub external_id: Option<String>,
    /// Session name.
    pub session_name: String,
}

/// When registry tokens are renewed; see [`renew_after`].
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// Renew at least this often.
    pub max_age: Duration,
    /// Never renew a refused token younger than this.
    pub min_age: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            max_age: TOKEN_MAX_AGE,
            min_age: TOKEN_MIN_AGE,
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Settings {
    /// From the `ecr` section (validated at load).
    pub fn from_config(c: &EcrConfig) -> Settings {
        Settings {
            account_id: c.account_id.clone(),
            region: c.region.clone(),
            registry_host: match non_empty(&c.registry_host) {
                Some(h) => h.to_ascii_lowercase(),
                None => registry_host(&c.account_id, &c.region),
            },
            create_repo: c.create_repo,
            lifecycle_policy: non_empty(&c.lifecycle_policy),
            reconcile_lifecycle_policy: c.reconcile_lifecycle_policy,
            repository: RepositorySettings {
                tag_mutability: c.image_tag_mutability.clone(),
                scan_on_push: c.scan_on_push,
                encryption_type: c.encryption_type.clone(),
                kms_key: non_empty(&c.kms_key),
                tags: c.tags.clone(),
            },
            assume_role: non_empty(&c.assume_role_arn).map(|arn| AssumeRole {
                arn,
                external_id: non_empty(&c.assume_role_external_id),
                session_name: non_empty(&c.assume_role_session_name).unwrap_or_else(|| "copycat".into()),
            }),
            tokens: TokenPolicy::default(),
        }
    }
}

/// The SDK's default configuration for `region`, on an HTTPS client with rustls and ring.
pub fn sdk_defaults(region: &str) -> aws_config::ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .http_client(http)
}

/// DNS suffix of a region's partition.
fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else if region.starts_with("us-isob-") {
        "sc2s.sgov.gov"
    } else if region.starts_with("us-iso-") {
        "c2s.ic.gov"
    } else if region.starts_with("eu-isoe-") {
        "cloud.adc-e.uk"
    } else if region.starts_with("us-isof-") {
        "csp.hci.ic.gov"
    } else {
        "amazonaws.com"
    }
}

/// `<account>.dkr.ecr.<region>.<partition suffix>`.
pub fn registry_host(account_id: &str, region: &str) -> String {
    format!("{account_id}.dkr.ecr.{region}.{}", dns_suffix(region))
}

/// Account and region of an ECR registry host (`<12 digits>.dkr.ecr[-fips].<region>.<suffix>`), or
/// `None` for any other host.
pub fn parse_registry_host(host: &str) -> Option<(String, String)> {
    let mut parts = host.splitn(4, '.');
    let account = parts.next()?;
    let (dkr, ecr, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || dkr != "dkr" {
        return None;
    }
    if ecr != "ecr" && ecr != "ecr-fips" {
        return None;
    }
    let (region, suffix) = rest.split_once('.')?;
    (!region.is_empty() && suffix == dns_suffix(region)).then(|| (account.to_owned(), region.to_owned()))
}

/// How long a token fetched at `now` is used before it is renewed: an hour before `expires_at`
/// (half the remaining time when less than two hours remain), at most `max_age`. An expiry that is
/// missing or already past (clock skew; moto always answers 2015) does not make copycat fetch in a
/// loop: the token is used until `max_age` or until the registry refuses it.
pub fn renew_after(now: SystemTime, expires_at: Option<SystemTime>, max_age: Duration) -> Duration {
    let remaining = expires_at.and_then(|e| e.duration_since(now).ok()).unwrap_or_default();
    if remaining.is_zero() {
        return max_age;
    }
    let before = if remaining > 2 * TOKEN_EXPIRY_MARGIN {
        remaining - TOKEN_EXPIRY_MARGIN
    } else {
        remaining / 2
    };
    before.min(max_age)
}

/// The ECR target: AWS client, registry token, known repositories.
pub struct Ecr {
    client: aws_sdk_ecr::Client,
    settings: Settings,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// Repositories known to exist (and to carry the lifecycle policy, when reconciled).
    ready: moka::future::Cache<String, ()>,
}

struct CachedToken {
    credential: Credential,
    fetched: Instant,
    renew_at: Instant,
}

impl Ecr {
    /// Builds the AWS clients for `settings` from the SDK's defaults (credential chain, endpoint
    /// variables); makes no AWS call.
    pub async fn connect(settings: Settings) -> Arc<Ecr> {
        let base = sdk_defaults(&settings.region).load().await;
        Ecr::with_sdk_config(settings, &base).await
    }

    /// Builds the AWS clients for `settings` on `base` (tests pass their endpoint and credentials).
    pub async fn with_sdk_config(settings: Settings, base: &aws_config::SdkConfig) -> Arc<Ecr> {
        let mut ecr = aws_sdk_ecr::config::Builder::from(base);
        if let Some(role) = &settings.assume_role {
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
                .session_name(&role.session_name)
                .configure(base);
            if let Some(id) = &role.external_id {
                provider = provider.external_id(id);
            }
            ecr = ecr.credentials_provider(provider.build().await);
        }
        Ecr::with_client(settings, aws_sdk_ecr::Client::from_conf(ecr.build()))
    }

    /// The target for `settings` through `client`.
    fn with_client(settings: Settings, client: aws_sdk_ecr::Client) -> Arc<Ecr> {
        Arc::new(Ecr {
            client,
            settings,
            token: tokio::sync::Mutex::new(None),
            ready: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This registry as a [`Target`].
    pub fn target(self: Arc<Self>) -> Target {
        Target {
            host: self.settings.registry_host.clone(),
            registry: self.settings.registry_host.clone(),
            credentials: Some(self.clone()),
            repositories: Some(self),
        }
    }

    /// The registry credential: the cached token, or a new one when it is due for renewal.
    pub async fn credential(&self) -> Result<Credential, EcrError> {
        let mut current = self.token.lock().await;
        if let Some(t) = current.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.credential.clone());
        }
        let fresh = self.fetch_token().await?;
        let credential = fresh.credential.clone();
        *current = Some(fresh);
        Ok(credential)
    }

    /// Renews the token after the registry refused `refused`; whether the request should be sent
    /// again (once) with the token now cached.
    async fn renew_refused(&self, refused: &Credential) -> bool {
        let mut current = self.token.lock().await;
        match current.as_ref() {
            // Another request renewed it already.
            Some(t) if t.credential != *refused => return true,
            Some(t) if t.fetched.elapsed() < self.settings.tokens.min_age => return false,
            _ => {}
        }
        match self.fetch_token().await {
            Ok(fresh) => {
                *current = Some(fresh);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the ECR registry token");
                false
            }
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, EcrError> {
        let op = "GetAuthorizationToken";
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| EcrError::from_sdk(op, None, e))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| EcrError::invalid(op, "the answer holds no authorization data"))?;
        let credential = decode_token(data.authorization_token().unwrap_or_default())
            .map_err(|bad| EcrError::invalid(op, bad.to_string()))?;
        let expires_at = data.expires_at().and_then(|t| SystemTime::try_from(*t).ok());
        let after = renew_after(SystemTime::now(), expires_at, self.settings.tokens.max_age);
        tracing::debug!(registry = %self.settings.registry_host, renew_in = ?after, "fetched an ECR registry token");
        let fetched = Instant::now();
        Ok(CachedToken {
            credential,
            fetched,
            renew_at: fetched + after,
        })
    }

    /// Makes sure `repository` exists (creating it when allowed) and, with
    /// `reconcileLifecyclePolicy`, carries the lifecycle policy. Remembered for an hour; concurrent
    /// calls for one repository share one check.
    pub async fn ensure_repository(&self, repository: &str) -> Result<(), EcrError> {
        self.ready
            .try_get_with(repository.to_owned(), self.prepare(repository))
            .await
            .map_err(|e: Arc<EcrError>| (*e).clone())
    }

    async fn prepare(&self, repository: &str) -> Result<(), EcrError> {
        let op = "DescribeRepositories";
        let exists = match self
            .client
            .describe_repositories()
            .registry_id(&self.settings.account_id)
            .repository_names(repository)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(EcrError::from_sdk(op, Some(repository), e)),
        };
        if exists {
            if self.settings.reconcile_lifecycle_policy {
                self.reconcile_lifecycle_policy(repository).await?;
            }
            return Ok(());
        }
        if !self.settings.create_repo {
            return Err(EcrError {
                operation: op,
                repository: Some(repository.to_owned()),
                code: Some("RepositoryNotFoundException".into()),
                message: format!(
                    "repository {repository} does not exist in {} and ecr.createRepo is false; create it or allow copycat to",
                    self.settings.registry_host
                ),
                transient: false,
            });
        }
        if self.create_repository(repository).await? {
            self.put_lifecycle_policy(repository).await?;
        } else if self.settings.reconcile_lifecycle_policy {
            self.reconcile_lifecycle_policy(repository).await?;
        }
        Ok(())
    }

    /// Creates `repository` with the configured settings; `false` when it already existed (another
    /// replica or worker created it first).
    pub async fn create_repository(&self, repository: &str) -> Result<bool, EcrError> {
        let r = &self.settings.repository;
        let mut encryption =
            EncryptionConfiguration::builder().encryption_type(EncryptionType::from(r.encryption_type.as_str()));
        if let Some(key) = &r.kms_key {
            encryption = encryption.kms_key(key);
        }
        let encryption = encryption
            .build()
            .map_err(|e| EcrError::invalid("CreateRepository", e.to_string()))?;
        let mut create = self
            .client
            .create_repository()
            .registry_id(&self.settings.account_id)
            .repository_name(repository)
            .image_tag_mutability(ImageTagMutability::from(r.tag_mutability.as_str()))
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(r.scan_on_push)
                    .build(),
            )
            .encryption_configuration(encryption);
        for (key, value) in &r.tags {
            let tag = Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| EcrError::invalid("CreateRepository", e.to_string()))?;
            create = create.tags(tag);
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(repository, registry = %self.settings.registry_host, "created ECR repository");
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_already_exists_exception()) =>
            {
                tracing::debug!(repository, "ECR repository was created concurrently");
                Ok(false)
            }
            Err(e) => Err(EcrError::from_sdk("CreateRepository", Some(repository), e)),
        }
    }

    async fn put_lifecycle_policy(&self, repository: &str) -> Result<(), EcrError> {
        let Some(policy) = &self.settings.lifecycle_policy else {
            return Ok(());
        };
        self.client
            .put_lifecycle_policy()
            .registry_id(&self.settings.account_id)
            .repository_name(repository)
            .lifecycle_policy_text(policy)
            .send()
            .await
            .map_err(|e| EcrError::from_sdk("PutLifecyclePolicy", Some(repository), e))?;
        tracing::info!(repository, "applied the lifecycle policy");
        Ok(())
    }

    /// Puts the configured policy when the repository has none or a different one (compared as JSON).
    async fn reconcile_lifecycle_policy(&self, repository: &str) -> Result<(), EcrError> {
        let Some(want) = &self.settings.lifecycle_policy else {
            return Ok(());
        };
        let current = match self
            .client
            .get_lifecycle_policy()
            .registry_id(&self.settings.account_id)
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => out.lifecycle_policy_text().map(str::to_owned),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(EcrError::from_sdk("GetLifecyclePolicy", Some(repository), e)),
        };
        if current.as_deref().is_some_and(|c| same_json(c, want)) {
            return Ok(());
        }
        self.put_lifecycle_policy(repository).await
    }
}

fn same_json(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

/// Why an ECR authorization token cannot be used; never quotes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadToken {
    /// Not base64.
    #[error("the authorization token is not base64")]
    NotBase64,
    /// Not UTF-8 once decoded.
    #[error("the authorization token is not UTF-8")]
    NotUtf8,
    /// Not `user:password`.
    #[error("the authorization token is not of the form user:password")]
    NotUserPassword,
}

/// `base64("AWS:<password>")` → Basic credentials.
fn decode_token(token: &str) -> Result<Credential, BadToken> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| BadToken::NotBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| BadToken::NotUtf8)?;
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Credential::Basic {
            username: user.to_owned(),
            password: Secret::new(password),
        }),
        _ => Err(BadToken::NotUserPassword),
    }
}

impl CredentialProvider for Ecr {
    fn credential_for<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, Result<Credential, RegistryError>> {
        Box::pin(async move {
            self.credential().await.map_err(|e| RegistryError::Auth {
                registry: self.settings.registry_host.clone(),
                detail: e.to_string(),
            })
        })
    }

    fn renew<'a>(&'a self, _host: &'a str, refused: &'a Credential) -> BoxFuture<'a, bool> {
        Box::pin(self.renew_refused(refused))
    }
}

impl RepositoryPreparer for Ecr {
    fn ensure<'a>(&'a self, repository: &'a str) -> BoxFuture<'a, Result<(), RepositoryError>> {
        Box::pin(async move {
            self.ensure_repository(repository).await.map_err(|e| RepositoryError {
                transient: e.transient,
                detail: e.to_string(),
            })
        })
    }
}

/// A failed ECR API call: operation, repository, AWS error code and message; never credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "ECR {operation}{}: {}{message}",
    .repository.as_ref().map(|r| format!(" {r}")).unwrap_or_default(),
    .code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default()
)]
pub struct EcrError {
    /// The API operation.
    pub operation: &'static str,
    /// The repository it was about.
    pub repository: Option<String>,
    /// AWS error code (`AccessDeniedException`, …).
    pub code: Option<String>,
    /// AWS error message, or the client-side failure.
    pub message: String,
    /// Throttling, server errors and network failures.
    pub transient: bool,
}

impl EcrError {
    fn from_sdk<E, R>(operation: &'static str, repository: Option<&str>, err: SdkError<E, R>) -> EcrError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        let message = match err.message() {
            Some(m) => m.to_owned(),
            None => DisplayErrorContext(&err).to_string(),
        };
        let transient = match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
            _ => code.as_deref().is_some_and(is_transient_code),
        };
        EcrError {
            operation,
            repository: repository.map(str::to_owned),
            code,
            message,
            transient,
        }
    }

    fn invalid(operation: &'static str, message: impl Into<String>) -> EcrError {
        EcrError {
            operation,
            repository: None,
            code: None,
            message: message.into(),
            transient: false,
        }
    }
}

/// AWS error codes worth retrying later.
pub fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "LimitExceededException"
            | "ServerException"
            | "ServiceUnavailable"
            | "InternalFailure"
            | "RequestTimeout"
            | "RequestTimeoutException"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        let cases = [
            (
                "123456789012",
                "eu-central-1",
                "123456789012.dkr.ecr.eu-central-1.amazonaws.com",
            ),
            (
                "123456789012",
                "cn-north-1",
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            ),
            (
                "123456789012",
                "us-gov-west-1",
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
            ),
            (
                "123456789012",
                "us-iso-east-1",
                "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
            ),
            (
                "123456789012",
                "us-isob-east-1",
                "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
            ),
        ];
        for (account, region, want) in cases {
            assert_eq!(registry_host(account, region), want);
            let parsed = parse_registry_host(want);
            assert_eq!(parsed, Some((account.to_owned(), region.to_owned())), "{want}");
        }
    }

    #[test]
    fn parsing_registry_hosts() {
        let acct = |a: &str, r: &str| Some((a.to_owned(), r.to_owned()));
        let cases = [
            (
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                acct("123456789012", "us-east-1"),
            ),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com.cn", None),
            ("12345678901.dkr.ecr.us-east-1.amazonaws.com", None),
            ("123456789012.dkr.ecr.us-east-1.example.com", None),
            ("public.ecr.aws", None),
            ("ghcr.io", None),
            ("123456789012.dkr.ecr", None),
            ("localhost:5000", None),
        ];
        for (host, want) in cases {
            assert_eq!(parse_registry_host(host), want, "{host}");
        }
    }

    #[test]
    fn token_renewal() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = |n: u64| Duration::from_secs(n * 3600);
        let m = |n: u64| Duration::from_secs(n * 60);
        let cases = [
            // (expires in, max age, renew after)
            (Some(h(12)), h(6), h(6)),
            (Some(h(12)), h(24), h(11)),
            (Some(h(3)), h(6), h(2)),
            (Some(h(2)), h(6), h(1)),
            (Some(m(30)), h(6), m(15)),
            (Some(Duration::from_secs(2)), h(6), Duration::from_secs(1)),
            (None, h(6), h(6)),
            (Some(Duration::ZERO), h(6), h(6)),
        ];
        for (expires_in, max_age, want) in cases {
            let expires_at = expires_in.map(|d| now + d);
            assert_eq!(renew_after(now, expires_at, max_age), want, "{expires_in:?}");
        }
        // Already expired (moto answers 2015-01-01): no hot loop.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_070_400);
        assert_eq!(renew_after(now, Some(past), h(6)), h(6));
    }

    #[test]
    fn tokens_decode_to_basic_credentials() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ok = decode_token(&b64("AWS:123456789012-auth-token")).unwrap();
        assert_eq!(
            ok,
            Credential::Basic {
                username: "AWS".into(),
                password: Secret::new("123456789012-auth-token")
            }
        );
        for bad in ["not base64!".to_owned(), b64("no-colon"), b64("AWS:"), b64(":pw")] {
            let err = decode_token(&bad).unwrap_err().to_string();
            assert!(!err.contains("auth-token"), "{err}");
        }
    }

    #[test]
    fn error_messages_name_operation_repository_and_code() {
        let e = EcrError {
            operation: "CreateRepository",
            repository: Some("mirror/nginx".into()),
            code: Some("AccessDeniedException".into()),
            message: "not authorized".into(),
            transient: false,
        };
        assert_eq!(
            e.to_string(),
            "ECR CreateRepository mirror/nginx: AccessDeniedException: not authorized"
        );
        assert_eq!(
            EcrError::invalid("GetAuthorizationToken", "no data").to_string(),
            "ECR GetAuthorizationToken: no data"
        );
        for (code, transient) in [
            ("ThrottlingException", true),
            ("ServerException", true),
            ("AccessDeniedException", false),
            ("RepositoryNotFoundException", false),
        ] {
            assert_eq!(is_transient_code(code), transient, "{code}");
        }
    }
}

/// Answers moto cannot give, from aws-smithy-mocks: IAM refusals and malformed token answers.
#[cfg(test)]
mod mocked {
    use aws_sdk_ecr::Client;
    use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
    use aws_sdk_ecr::operation::get_authorization_token::GetAuthorizationTokenOutput;
    use aws_sdk_ecr::types::error::RepositoryNotFoundException;
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use crate::config::Purpose;

    use super::*;

    /// The ECR target with the default settings, answered by `rules`.
    fn ecr(rules: &[&Rule]) -> Arc<Ecr> {
        let env = [("ECR_ACCOUNT_ID", "123456789012"), ("AWS_REGION", "eu-central-1")];
        let settings = Settings::from_config(&crate::config::from_env(&env, Purpose::OneShot).ecr);
        Ecr::with_client(settings, mock_client!(aws_sdk_ecr, RuleMode::MatchAny, rules))
    }

    /// The body of an error answer of the ECR JSON protocol.
    fn aws_error(code: &str, message: &str) -> Option<String> {
        Some(serde_json::json!({"__type": code, "message": message}).to_string())
    }

    #[tokio::test]
    async fn a_refused_creation_names_operation_repository_and_code() {
        let missing = mock!(Client::describe_repositories).then_error(|| {
            DescribeRepositoriesError::RepositoryNotFoundException(
                RepositoryNotFoundException::builder().message("not found").build(),
            )
        });
        let refused = mock!(Client::create_repository)
            .sequence()
            .http_status(
                400,
                aws_error(
                    "AccessDeniedException",
                    "User: arn:aws:sts::123456789012:assumed-role/copycat/pod is not authorized to perform: ecr:CreateRepository",
                ),
            )
            .build();
        let err = ecr(&[&missing, &refused])
            .ensure_repository("mirror/app")
            .await
            .unwrap_err();
        assert_eq!(
            (
                err.operation,
                err.repository.as_deref(),
                err.code.as_deref(),
                err.transient
            ),
            (
                "CreateRepository",
                Some("mirror/app"),
                Some("AccessDeniedException"),
                false
            )
        );
        let text = err.to_string();
        assert!(
            text.starts_with("ECR CreateRepository mirror/app: AccessDeniedException: User: arn:"),
            "{text}"
        );
        assert_eq!((missing.num_calls(), refused.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn a_token_answer_without_data_is_an_error_naming_the_operation() {
        let empty =
            mock!(Client::get_authorization_token).then_output(|| GetAuthorizationTokenOutput::builder().build());
        let err = ecr(&[&empty]).credential().await.unwrap_err();
        assert_eq!((err.operation, err.transient), ("GetAuthorizationToken", false));
        assert!(err.to_string().contains("no authorization data"), "{err}");
    }
}
