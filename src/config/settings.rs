//! The table of every setting: YAML key, environment variable, default and meaning. Loading reads
//! values through it, strict key checking and `docs/configuration.md` are derived from it, so the
//! three cannot drift apart.

use crate::workload::Kind;

/// One configurable setting.
#[derive(Debug)]
pub struct Setting {
    /// Dotted YAML path (`ecr.createRepo`); `[]` marks the fields of list entries. `None`: env/flag only.
    pub key: Option<&'static str>,
    /// Environment variable, if any.
    pub env: Option<&'static str>,
    /// Default, in the same syntax the setting accepts (it is parsed by the same code).
    pub default: &'static str,
    /// The value's type, as shown in the docs.
    pub kind: &'static str,
    /// What it does.
    pub help: &'static str,
}

impl Setting {
    /// The name used to look the setting up: its YAML key, else its env var.
    pub fn id(&self) -> &'static str {
        self.key.or(self.env).unwrap_or_default()
    }
}

/// Finds a setting by YAML key or, for env-only settings, by env var name.
pub fn lookup(id: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.id() == id)
        .unwrap_or_else(|| panic!("setting {id:?} is missing from the SETTINGS table"))
}

/// Whether the setting named `name` holds a secret, whose value is never shown: a YAML key (fields of
/// list entries by position, `registryCredentials[2].password`) or an environment variable.
pub fn is_secret(name: &str) -> bool {
    let mut key = String::with_capacity(name.len());
    let mut in_index = false;
    for c in name.chars() {
        match c {
            '[' => in_index = true,
            ']' => {
                in_index = false;
                key.push_str("[]");
            }
            _ if in_index => {}
            _ => key.push(c),
        }
    }
    SETTINGS
        .iter()
        .any(|s| s.kind == "secret" && (s.key == Some(key.as_str()) || s.env == Some(name)))
}

/// YAML keys accepted as another spelling of a key (k8s-copycat's Go decoder matched field names).
pub const KEY_ALIASES: &[(&str, &str)] = &[
    ("requestTimeoutSeconds", "requestTimeout"),
    ("registryRetryBackoffSeconds", "registryRetryBackoff"),
];

/// Names of the watchable workload kinds, as `watchResources` spells them.
pub const RESOURCE_KINDS: &[&str] = &{
    let mut names = [""; Kind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Kind::ALL[i].resource();
        i += 1;
    }
    names
};

const fn s(
    key: Option<&'static str>,
    env: Option<&'static str>,
    default: &'static str,
    kind: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        default,
        kind,
        help,
    }
}

/// Every setting copycat reads.
#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    s(Some("targetKind"), Some("TARGET_KIND"), "ecr", "`ecr` \\| `docker` \\| `pullThrough`", "Kind of target registry (case-insensitive): ECR, any OCI/Docker registry, or pull-through caches (`pullThrough.caches`, see docs/pull-through.md), which are read through, never written to."),
    s(Some("logLevel"), Some("LOG_LEVEL"), "info", "`trace` \\| `debug` \\| `info` \\| `warn` \\| `error`", "Log verbosity. Flag `--log-level` (alias `--zap-log-level`). `trace` is copycat's own trace; its dependencies (AWS SDK, kube, hyper, h2, reqwest, rustls) stay at `debug`, because their trace output dumps requests and responses with credentials in them (the AWS SDK prints `GetAuthorizationToken`'s answer, the ECR registry password). kube's per-request ERROR line for non-2xx answers is left out at every level: copycat logs each failed API call itself. `RUST_LOG`, when set, replaces this filter, limits included: do not set it to `trace` for the AWS SDK or the HTTP crates outside a test setup."),
    s(Some("logFormat"), Some("LOG_FORMAT"), "json", "`json` \\| `text`", "Log line format: JSON for collectors, text for people."),
    s(Some("ecr.accountID"), Some("ECR_ACCOUNT_ID"), "", "string", "AWS account id of the target ECR registry. Required when `targetKind` is `ecr`."),
    s(Some("ecr.region"), Some("AWS_REGION"), "", "string", "AWS region of the target ECR registry. Required when `targetKind` is `ecr`."),
    s(Some("ecr.repoPrefix"), Some("ECR_REPO_PREFIX"), "", "template", "Repository prefix in ECR; placeholders `$namespace`, `$podname`, `$container_name`, `$arch`, `$registry`."),
    s(Some("ecr.createRepo"), Some("ECR_CREATE_REPO"), "true", "bool", "Create missing ECR repositories."),
    s(Some("ecr.assumeRoleArn"), None, "", "string", "IAM role to assume (STS AssumeRole) on top of the default credential chain, e.g. a central account's push role."),
    s(Some("ecr.assumeRoleExternalId"), None, "", "string", "External ID sent with the AssumeRole call, when the role's trust policy requires one."),
    s(Some("ecr.assumeRoleSessionName"), None, "copycat", "string", "Session name of the assumed role (shows in CloudTrail)."),
    s(Some("ecr.registryHost"), Some("ECR_REGISTRY_HOST"), "", "host[:port]", "Registry host to push to instead of `<accountID>.dkr.ecr.<region>.<partition suffix>`, e.g. a VPC endpoint's DNS name. The ECR API endpoint follows the SDK's rules (`AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL`)."),
    s(Some("ecr.lifecyclePolicy"), None, "", "JSON string", "Lifecycle policy applied to repositories copycat creates. Must be valid JSON."),
    s(Some("ecr.reconcileLifecyclePolicy"), Some("ECR_RECONCILE_LIFECYCLE_POLICY"), "false", "bool", "Also apply `ecr.lifecyclePolicy` to existing repositories copycat pushes to, when theirs differs."),
    s(Some("ecr.imageTagMutability"), Some("ECR_IMAGE_TAG_MUTABILITY"), "MUTABLE", "`MUTABLE` \\| `IMMUTABLE`", "Tag mutability of repositories copycat creates (case-insensitive)."),
    s(Some("ecr.scanOnPush"), Some("ECR_SCAN_ON_PUSH"), "false", "bool", "Enable basic scan on push for repositories copycat creates."),
    s(Some("ecr.encryptionType"), Some("ECR_ENCRYPTION_TYPE"), "AES256", "`AES256` \\| `KMS` \\| `KMS_DSSE`", "Encryption of repositories copycat creates (case-insensitive)."),
    s(Some("ecr.kmsKey"), Some("ECR_KMS_KEY"), "", "string", "KMS key ARN or id for `KMS`/`KMS_DSSE` encryption; empty: the AWS managed key."),
    s(Some("ecr.tags"), None, "", "map string → string", "Resource tags of repositories copycat creates, e.g. `{team: platform}`."),
    s(Some("docker.registry"), Some("TARGET_REGISTRY"), "", "host[:port]", "Target registry host for `targetKind: docker`. Required then."),
    s(Some("docker.repoPrefix"), Some("TARGET_REPO_PREFIX"), "", "template", "Repository prefix in the target registry; same placeholders as `ecr.repoPrefix`."),
    s(Some("docker.insecure"), Some("TARGET_INSECURE"), "false", "bool", "Allow plain HTTP and skip TLS verification for the target registry only."),
    s(Some("docker.caFile"), Some("TARGET_CA_FILE"), "", "path", "PEM file of extra CA certificates trusted for the target registry."),
    s(Some("pullThrough.caches"), None, "", "map host → cache host[:port][/path]", "For `targetKind: pullThrough`: the pull-through cache of each source registry, with the path prefix under which the cache serves it (e.g. `docker.io: harbor.example.com/dockerhub-proxy`). An image is pulled through `<cache>/<source repository>` with its own tag or digest. Docker Hub's spellings (`index.docker.io`, `registry-1.docker.io`) are one registry. Images of a registry without an entry are not mirrored (`excluded` in `/status`). Credentials for a cache host come from `registryCredentials` (ECR caches: ECR tokens), its TLS settings from `registries`."),
    s(Some("pullThrough.blobs"), Some("PULL_THROUGH_BLOBS"), "true", "bool", "For `targetKind: pullThrough`: also read every blob through the cache (streamed, verified, discarded), so that caches that fetch blobs only when asked hold them. `false`: manifests only."),
    s(None, Some("TARGET_USERNAME"), "", "string", "Username for the docker target (anonymous when empty)."),
    s(None, Some("TARGET_PASSWORD"), "", "secret", "Password for the docker target. Never printed."),
    s(Some("digestPull"), Some("DIGEST_PULL"), "false", "bool", "Mirror by digest: the Pod's `imageID`, or the tag resolved at the source for workloads without Pods."),
    s(Some("digestPullIgnoredTags"), Some("DIGEST_PULL_IGNORED_TAGS"), "latest", "list", "Tags that stay tag-based under `digestPull`. An explicit empty list (`[]`) means none."),
    s(Some("ignoreMissingPlatforms"), Some("IGNORE_MISSING_PLATFORMS"), "", "list of regex", "Silence 'platform missing' reports matching `<source>|<os>/<arch>`. Invalid regexes are errors."),
    s(Some("useImagePullSecrets"), Some("USE_IMAGE_PULL_SECRETS"), "false", "bool", "Pull private source images with the credentials of the Pods' `imagePullSecrets` and their ServiceAccounts' (tried in order, before `registryCredentials`). Needs list/watch on secrets and serviceaccounts (the optional block in the manifest's ClusterRole)."),
    s(Some("checkNodePlatform"), Some("CHECK_NODE_PLATFORM"), "false", "bool", "Use the platform of the Node a Pod runs on (needs list/watch on nodes)."),
    s(Some("mirrorPlatforms"), Some("MIRROR_PLATFORMS"), "", "list of platforms", "Extra platforms to mirror in digest mode: `arch`, `os/arch` or `os/arch/variant` (`linux/arm/v7`)."),
    s(Some("allowDifferentDigestRepush"), Some("ALLOW_DIFFERENT_DIGEST_REPUSH"), "true", "bool", "Overwrite a target tag that holds a different digest."),
    s(Some("includeNamespaces"), Some("INCLUDE_NAMESPACES"), "*", "list of names/globs", "Namespaces to watch; `*` or an empty list (`[]`, the Helm chart's default) means all. Globs (`team-*`) are evaluated continuously; a glob matching nothing matches nothing. Plain names only (no globs): copycat watches each of them separately, so namespace-scoped RBAC (a Role per namespace) is enough."),
    s(Some("skipNamespaces"), Some("SKIP_NAMESPACES"), "", "list", "Namespaces never mirrored (wins over `includeNamespaces`)."),
    s(Some("skipNames.deployments"), Some("SKIP_DEPLOYMENTS"), "", "list", "Deployments to skip: `name`, `namespace/name` or `*`."),
    s(Some("skipNames.statefulSets"), Some("SKIP_STATEFULSETS"), "", "list", "StatefulSets to skip: `name`, `namespace/name` or `*`."),
    s(Some("skipNames.daemonSets"), Some("SKIP_DAEMONSETS"), "", "list", "DaemonSets to skip: `name`, `namespace/name` or `*`."),
    s(Some("skipNames.jobs"), Some("SKIP_JOBS"), "", "list", "Jobs to skip: `name`, `namespace/name` or `*`."),
    s(Some("skipNames.cronJobs"), Some("SKIP_CRONJOBS"), "", "list", "CronJobs to skip: `name`, `namespace/name` or `*`."),
    s(Some("skipNames.pods"), Some("SKIP_PODS"), "", "list", "Pods to skip: `name`, `namespace/name` or `*`."),
    s(Some("excludeRegistries"), Some("EXCLUDE_REGISTRIES"), "", "list", "Source registries (or registry/path prefixes) never mirrored. The target registry is always excluded."),
    s(Some("watchResources"), Some("WATCH_RESOURCES"), "deployments,statefulsets,daemonsets,jobs,cronjobs,pods", "list", "Kinds to watch: `deployments`, `statefulsets`, `daemonsets`, `jobs`, `cronjobs`, `pods`; an empty list (`[]`, the Helm chart's default) means all six."),
    s(Some("dryRun"), Some("DRY_RUN"), "false", "bool", "Log what would be mirrored; write nothing anywhere (no repository creation, no push). Flag `--dry-run`."),
    s(Some("dryPull"), Some("DRY_PULL"), "false", "bool", "Make no registry request at all; only log the planned mirror tasks. Flag `--dry-pull`."),
    s(Some("requestTimeout"), Some("REGISTRY_REQUEST_TIMEOUT"), "300", "seconds or duration", "Timeout of each registry request; `0` means none. Also accepted as `requestTimeoutSeconds`."),
    s(Some("registryRetryAttempts"), Some("REGISTRY_RETRY_ATTEMPTS"), "3", "integer > 0", "Attempts per registry request on transient errors (connection errors, 408, 429, 5xx)."),
    s(Some("registryRetryBackoff"), Some("REGISTRY_RETRY_BACKOFF"), "10", "seconds or duration", "Base delay between attempts (exponential, with jitter). Also accepted as `registryRetryBackoffSeconds`."),
    s(Some("failureCooldownMinutes"), Some("FAILURE_COOLDOWN_MINUTES"), "60", "minutes or duration", "After a failure, wait this long before retrying that target; `0` disables the cooldown: a failed target is then retried after 1 s, doubling with each failure up to about 16 minutes (as k8s-copycat's requeue), or at once when submitted again."),
    s(Some("emitEvents"), Some("EMIT_EVENTS"), "true", "bool", "Create a Warning Event (reason `MirrorFailed`) on each workload whose image could not be mirrored, at most once per target per `failureCooldownMinutes` (per 60 minutes when that is 0). Only the leader emits; never in `dryRun` or `dryPull`. Needs `create` on `events`."),
    s(Some("forceReconcileMinutes"), Some("FORCE_RECONCILE_MINUTES"), "0", "minutes or duration", "Full rescan interval; `0` disables periodic rescans."),
    s(Some("verifyInterval"), Some("VERIFY_INTERVAL"), "24h", "seconds or duration", "How often the daemon (the leader) checks that every planned target, and every target an `Image` or Flux `ImageRepository` object declares, still holds its whole image (a GET of each manifest, a HEAD of each child manifest and blob, and its signatures, attestations and SBOMs where they travel: `referrers`): re-checks are spread evenly over the interval, a few at a time; a target not checked yet is checked once the queue has finished with it; a target found `missing` parts is copied again past the positive cache. Results show in `/status` (`backup`), `/status/summary` and the `k8s_copycat_backup_*` metrics. `0` disables it (and those metrics); so does `dryPull`, which sends no registry request."),
    s(Some("restoreDrillInterval"), Some("RESTORE_DRILL_INTERVAL"), "24h", "seconds or duration", "How often the leader runs a restore drill: it pulls `restoreDrillImages` targets that the periodic verification found whole from the target registry as a node would (the tag resolved, every manifest and blob read and re-hashed; copycat's own target credentials, read scope; no source request), those never drilled first, then the one drilled longest ago. The first round runs once a target is verified. Results show in `/status` (`backup.drill`), `/status/summary` (`restoreDrill`) and the `k8s_copycat_restore_drill_*` metrics. `0` disables it; it needs `verifyInterval` > 0."),
    s(Some("restoreDrillImages"), Some("RESTORE_DRILL_IMAGES"), "2", "integer > 0", "Targets pulled whole per restore drill (one after the other)."),
    s(Some("mirroredCacheTTL"), Some("MIRRORED_CACHE_TTL"), "6h", "seconds or duration", "How long a target known to hold its source's digest is not checked again (unless the source reference changes); capped below `forceReconcileMinutes` so rescans re-check. `0` disables the cache."),
    s(Some("maxConcurrentReconciles"), Some("MAX_CONCURRENT_RECONCILES"), "2", "integer > 0", "Concurrent mirror workers."),
    s(Some("registryCredentials"), None, "", "list of entries", "Credentials for source registries; fields below."),
    s(Some("registryCredentials[].registry"), None, "", "host", "Registry host the entry applies to (required). May be a glob such as `*.docker.io`."),
    s(Some("registryCredentials[].registryAliases"), None, "", "list of hosts", "Other hosts (or globs) using the same credentials."),
    s(Some("registryCredentials[].username"), None, "", "string", "Username for basic auth."),
    s(Some("registryCredentials[].password"), None, "", "secret", "Password for basic auth. Prefer `passwordEnv`."),
    s(Some("registryCredentials[].token"), None, "", "secret", "Bearer token, sent as is; wins over username/password."),
    s(Some("registryCredentials[].usernameEnv"), None, "", "env var name", "Read the username from this env var (falls back to `username`)."),
    s(Some("registryCredentials[].passwordEnv"), None, "", "env var name", "Read the password from this env var (falls back to `password`)."),
    s(Some("registryCredentials[].tokenEnv"), None, "", "env var name", "Read the token from this env var (falls back to `token`)."),
    s(Some("pathMap"), None, "", "list of rules", "Rewrites of the source repository path; first matching rule wins; fields below."),
    s(Some("pathMap[].from"), None, "", "string", "Prefix (or regex with `regex: true`) to match in the source repository path."),
    s(Some("pathMap[].to"), None, "", "string", "Replacement; regex rules may use `$1` / `${name}`."),
    s(Some("pathMap[].regex"), None, "false", "bool", "Treat `from` as a regular expression (replace all matches)."),
    s(Some("alwaysOverwriteTags"), Some("ALWAYS_OVERWRITE_TAGS"), "latest", "list", "Tags overwritten even when `allowDifferentDigestRepush` is false (k8s-copycat: `latest`). `[]` means none."),
    s(Some("digestTagTemplate"), Some("DIGEST_TAG_TEMPLATE"), "copycat-$hex", "template or `none`", "Anchor tag written with a digest-only source (`repo@sha256:…`), so that registry rules that expire untagged images cannot delete the copy: `$algorithm`, `$hex`, `$short` (12 hex). It must name `$hex` or `$short`; `<algorithm>-<hex>` (e.g. `sha256-$hex`) is refused, the OCI referrers tag schema reserves it. `$hex` is shortened to fit 128 characters (sha512), keeping at least 64. `none`: push by digest only, untagged; coverage (`copycat verify`, `/status`, `k8s_copycat_backup_images`) then counts such copies `untagged`, at risk, not verified. Empty: the default."),
    s(Some("referrers"), Some("REFERRERS"), "all", "`all` \\| `signatures` \\| `none`", "Signatures, attestations and SBOMs copied with every mirrored digest (the index and each child): cosign's `sha256-<hex>.sig`/`.att`/`.sbom` tags and OCI 1.1 referrers (the Referrers API, else the `sha256-<hex>` referrers tag schema), recursively. `signatures`: cosign `.sig` tags and referrers whose artifactType is a signature type (cosign, sigstore bundle, Notation). `none`: no request is made for them. Applies to the daemon, `copy` and `sync` (flag `--referrers`). See docs/referrers.md."),
    s(Some("referrerArtifactTypes"), Some("REFERRER_ARTIFACT_TYPES"), "", "list of media types", "Filter of `referrers` by artifact type: `type` entries admit only the types listed, `!type` entries refuse a type (e.g. `[\"!application/spdx+json\"]`). A cosign tag's type is its manifest's `artifactType`, else its config's media type unless generic, else its first layer's (`.sig`: `application/vnd.dev.cosign.simplesigning.v1+json`)."),
    s(Some("referrerDepth"), Some("REFERRER_DEPTH"), "3", "integer > 0", "Levels of related artifacts followed: 1 is the image's own, 2 their signatures and attestations, and so on."),
    s(Some("referrersInterval"), Some("REFERRERS_INTERVAL"), "1h", "seconds or duration", "How often the daemon looks for new related artifacts of each mirrored image (one tag list of the source repository per image, plus one Referrers API call per digest where the source serves it): a re-sign upstream reaches the target within it. Nothing is asked in between, whatever the number of status updates. `copycat sync` keeps its looks in a state file for the same time (`--state`, `--no-state`), so a cron job's runs look once per interval too."),
    s(Some("blobConcurrency"), Some("BLOB_CONCURRENCY"), "4", "integer > 0", "Blobs of one image transferred at the same time."),
    s(Some("registryMaxConcurrentRequests"), Some("REGISTRY_MAX_CONCURRENT_REQUESTS"), "16", "integer > 0", "Requests in flight per registry host (until response headers)."),
    s(Some("shutdownGracePeriod"), Some("SHUTDOWN_GRACE_PERIOD"), "25", "seconds or duration", "On SIGTERM, how long running copies may finish before they are cancelled (no tag is written for an unfinished image). Keep it below the Pod's `terminationGracePeriodSeconds` (30 by default)."),
    s(Some("imageDeadline"), Some("IMAGE_DEADLINE"), "1h", "seconds or duration", "Deadline for mirroring one image, all requests included; `0` means none."),
    s(Some("registries"), None, "", "list of entries", "Transport settings per registry host; fields below."),
    s(Some("registries[].host"), None, "", "host[:port]", "Registry host the entry applies to (required)."),
    s(Some("registries[].insecure"), None, "false", "bool", "Allow plain HTTP and skip TLS verification for this host. Loopback hosts may use plain HTTP without it."),
    s(Some("registries[].caFile"), None, "", "path", "PEM file of extra CA certificates trusted for this host."),
    s(Some("onTheFly.enabled"), None, "false", "bool", "Copy on the fly: when a Pod fails to pull an image on the target registry (container waiting with `ErrImagePull` or `ImagePullBackOff`, init containers too), copy it from the source an `onTheFly.rules` entry names, ahead of routine work; the kubelet's next pull retry then succeeds. Needs `pods` in `watchResources` and at least one rule. See docs/on-the-fly.md."),
    s(Some("onTheFly.rules"), None, "", "list of rules", "Where images on the target registry come from; the longest matching `mirror` prefix wins; fields below. An image no rule matches is reported (Warning Event on the Pod, `/status`), never guessed."),
    s(Some("onTheFly.rules[].mirror"), None, "", "host[:port][/path]", "Prefix on the target registry, e.g. `registry.example.com/dockerhub` (required; its host must be the target registry's)."),
    s(Some("onTheFly.rules[].source"), None, "", "host[:port][/path]", "Where images under `mirror` come from, the rest of the path kept, e.g. `docker.io` (required)."),
    s(Some("fluxImageRepositories.enabled"), None, "false", "bool", "Mirror the tags Flux's image-reflector-controller finds: watch `ImageRepository` objects (`image.toolkit.fluxcd.io` `v1`, else `v1beta2`) and, each time an object's `status.lastScanResult.revision` changes, copy `spec.image` under each of its `latestTags` (imagerepo-mirror's trigger). Off unless enabled and the CRD is served. Only the leader copies. Needs list and watch on `imagerepositories`, get on its CRD, and get on the Secrets named by `spec.secretRef` (docs/migration.md, from imagerepo-mirror)."),
    s(Some("fluxImageRepositories.namespaces"), None, "", "list of names", "Namespaces whose `ImageRepository` objects are mirrored; empty (or `*`): all, one cluster-wide watch. Names only (no globs): one watch per namespace, so a Role in each is enough."),
    s(Some("fluxImageRepositories.destinationPrefix"), None, "", "template", "Repository prefix on the target registry for these copies, instead of the target's `repoPrefix`; same placeholders, `$namespace` being the `ImageRepository`'s namespace and `$podname` its name (`$container_name` is empty). Empty: the target's `repoPrefix`, so copies are named as the daemon names a workload's images (`pathMap` included)."),
    s(Some("fluxImageRepositories.maxTags"), None, "100", "integer > 0", "Most tags copied per scan of one `ImageRepository`; the rest are left out and logged. The scan's `latestTags` come first, then (with `allTags`) the listed tags in reverse alphabetical order (Flux's order of `latestTags`)."),
    s(Some("fluxImageRepositories.allTags"), None, "false", "bool", "Also copy the repository's other tags: on each new revision, the source's whole tag list (`/v2/<name>/tags/list`, `Link` pages followed), within `maxTags`."),
    s(Some("images.enabled"), None, "false", "bool", "Watch image-operator's `Image` objects (`skopeo.io/v1alpha1`) and copy what they declare through the queue: `OneShot`, `OnceByTag`, `Recurrent`. Off unless enabled here **and** the CRD (manifests/crds/images.skopeo.io.yaml) is installed. See docs/migration.md."),
    s(Some("images.namespaces"), None, "", "list", "Namespaces whose `Image` objects are watched (one watch each, so namespace-scoped RBAC is enough); empty: cluster-wide."),
    s(Some("images.tagListInterval"), None, "5m", "seconds or duration", "How long a source repository's tag list is reused before it is listed again (`/v2/<name>/tags/list`, `Link` pages followed): `OnceByTag` objects pick up a new tag within it."),
    s(Some("images.maxTagsPerImage"), None, "200", "integer > 0", "At most this many of an object's tags are being copied at once; the rest wait (`status.pendingTags`) and follow as these finish."),
    s(Some("registryMirrors"), None, "", "map host → list of hosts", "Read mirrors per source registry, tried in order before the registry itself (e.g. `docker.io: [mirror.gcr.io]`). Never written to."),
    s(None, Some("CONFIG_PATH"), "/config/config.yaml", "path", "Config file; only the default path may be missing (defaults are used); `/dev/null` means none. Flag `--config`."),
    s(None, Some("METRICS_ADDR"), ":8080", "address", "Listener for `/metrics` and the admin endpoints; `:PORT` listens on every interface, IPv4 and IPv6. Flag `--metrics-bind-address`."),
    s(None, Some("HEALTH_ADDR"), ":8081", "address", "Listener for `/healthz` and `/readyz`; `:PORT` listens on every interface, IPv4 and IPv6. Flag `--health-probe-bind-address`."),
    s(None, Some("LEADER_ELECT"), "true", "bool", "Use a Lease so that only one replica mirrors. Flag `--leader-elect`."),
    s(None, Some("POD_NAMESPACE"), "k8s-copycat", "string", "Namespace of the leader-election Lease (set from the downward API)."),
    s(None, Some("ADMIN_TOKEN"), "", "secret", "When set, `/force-reconcile` and `/reset-cooldown` (POST or GET) require `Authorization: Bearer <token>`. Empty: no authentication (as k8s-copycat)."),
];
