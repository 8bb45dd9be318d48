//! A stand-in Kubernetes API server, faithful enough for the unmodified `kube` client
//! (`Api` verbs, `kube::runtime::watcher`, `kube-lease-manager`).
//!
//! Objects are schema-free JSON in memory under one global, increasing `resourceVersion`;
//! a bounded event history feeds watches and consistent paged lists. Served types: core/v1
//! pods, namespaces, nodes, events, secrets, serviceaccounts; apps/v1 deployments,
//! statefulsets, daemonsets, replicasets; batch/v1 jobs, cronjobs; coordination.k8s.io/v1
//! leases; apiextensions.k8s.io/v1 customresourcedefinitions; and the custom kinds copycat reads,
//! served whether or not their CRD object exists: skopeo.io/v1alpha1 images and
//! image.toolkit.fluxcd.io/v1 and v1beta2 imagerepositories (each version stored apart, no
//! conversion), all with a status subresource.
//!
//! Two ways to use it:
//!
//! * in-process: `kube::Client::new(server.router(), "default")` (axum's `Router` is a tower
//!   `Service` for kube's body type);
//! * over TCP: [`ApiServer::serve`] starts it on `127.0.0.1:<free port>` on its own thread and
//!   writes a kubeconfig (`http://127.0.0.1:PORT`, no auth). Build a client with
//!   `kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(running.kubeconfig_path())?, &Default::default())`
//!   and `kube::Client::try_from(config)`, or point `KUBECONFIG` at it for a binary.
//!   The kubeconfig's default namespace is `default`.
//!
//! Tests drive the cluster's side through [`ApiServer::apply`], [`ApiServer::delete`],
//! [`ApiServer::compact`], [`ApiServer::close_watches`], [`RunningApiServer::restart`] and read
//! [`ApiServer::requests`]; black-box tests and scripts use the same through `/_control/`
//! (see the `control` module docs: `POST /_control/apply`, `DELETE /_control/objects/…`,
//! `POST /_control/compact`, …).
//!
//! Behaviour worth knowing (as on a real server unless said otherwise):
//! * `ApiServer::new()` starts with the namespaces `default`, `kube-system`, `kube-public` and
//!   `kube-node-lease`; API creates of namespaced objects need their namespace (404 otherwise),
//!   [`ApiServer::apply`] does not check.
//! * Types with a status subresource ignore `status` in main-resource writes through the API
//!   (and drop it on create); use `/status`, or [`ApiServer::apply`], which stores objects as given.
//! * Lists leave `apiVersion`/`kind` out of items; watch events carry them.
//! * Deleting through the API honours `metadata.finalizers` (marks `deletionTimestamp`, the
//!   object goes when the last finalizer is removed); [`ApiServer::delete`] removes at once.
//!   Deleting a namespace deletes everything in it at once. No other garbage collection.
//! * Creating a core/v1 Event runs the real server's legacy Event validation (the Event lives in
//!   its `involvedObject`'s namespace; with `eventTime`, `reportingComponent` and
//!   `reportingInstance` are required). No other per-kind validation.

mod answer;
mod control;
mod faults;
mod http;
mod ops;
mod patch;
pub mod resources;
mod selector;
mod status;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

pub use faults::{ApiFault, ApiFaultKind, REFUSED_USER};
pub use resources::ResourceType;
pub use status::ApiError;

use store::Store;

use crate::util::ServerThread;

/// Default bound of the event history.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;
/// Default period of watch bookmarks (the real server sends them about once a minute).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// Settings for [`ApiServer::with_config`].
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// How many events the history keeps; watches and list snapshots older than that get 410.
    pub history_limit: usize,
    /// Period of BOOKMARK events on watches that ask for them.
    pub bookmark_interval: Duration,
    /// Create `default`, `kube-system`, `kube-public`, `kube-node-lease` at start.
    pub default_namespaces: bool,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            history_limit: DEFAULT_HISTORY_LIMIT,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            default_namespaces: true,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// Current resourceVersion, for waking watches.
    pub(crate) rv_tx: tokio::sync::watch::Sender<u64>,
    /// Bumped by [`ApiServer::close_watches`].
    pub(crate) epoch_tx: tokio::sync::watch::Sender<u64>,
    bookmark_interval: Mutex<Duration>,
    requests: Mutex<Vec<(String, String)>>,
    /// Armed by [`ApiServer::inject`].
    pub(crate) faults: Mutex<Vec<ApiFault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Runs `f` on the store, then wakes watches if anything was written.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut st = lock(&self.store);
        let r = f(&mut st);
        let rv = st.rv;
        drop(st);
        self.rv_tx.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        r
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        *lock(&self.bookmark_interval)
    }

    pub(crate) fn log_request(&self, method: &str, path_and_query: &str) {
        lock(&self.requests).push((method.to_owned(), path_and_query.to_owned()));
    }
}

/// The stand-in API server's state; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct ApiServer {
    pub(crate) shared: Arc<Shared>,
}

impl Default for ApiServer {
    fn default() -> Self {
        ApiServer::new()
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

fn resolve(kind: &str) -> Result<usize, ApiError> {
    resources::by_name(kind).ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?}")))
}

impl ApiServer {
    /// A server with the default settings and the four standard namespaces.
    pub fn new() -> ApiServer {
        ApiServer::with_config(ApiServerConfig::default())
    }

    /// A server with explicit settings.
    pub fn with_config(config: ApiServerConfig) -> ApiServer {
        let server = ApiServer {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(config.history_limit)),
                rv_tx: tokio::sync::watch::Sender::new(0),
                epoch_tx: tokio::sync::watch::Sender::new(0),
                bookmark_interval: Mutex::new(config.bookmark_interval),
                requests: Mutex::new(Vec::new()),
                faults: Mutex::new(Vec::new()),
            }),
        };
        if config.default_namespaces {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                // Static, valid objects: cannot fail.
                let _ = server.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }));
            }
        }
        server
    }

    /// The HTTP interface as an axum `Router` (the Kubernetes API plus `/_control/`).
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Serves on `127.0.0.1:<free port>` with a kubeconfig in a temporary directory.
    pub fn serve(&self) -> anyhow::Result<RunningApiServer> {
        self.serve_at(0, None)
    }

    /// Serves on `127.0.0.1:port` (0: any free port), writing the kubeconfig to `kubeconfig`
    /// (default: a file in a temporary directory owned by the returned handle).
    pub fn serve_at(&self, port: u16, kubeconfig: Option<&Path>) -> anyhow::Result<RunningApiServer> {
        let listener = bind(port)?;
        let addr = listener.local_addr()?;
        let (dir, path) = match kubeconfig {
            Some(p) => (None, p.to_owned()),
            None => {
                let dir = tempfile::tempdir().context("kubeconfig directory")?;
                let p = dir.path().join("kubeconfig");
                (Some(dir), p)
            }
        };
        write_kubeconfig(&path, addr.port())?;
        let thread = ServerThread::spawn("fake-apiserver", listener, self.router())?;
        Ok(RunningApiServer {
            server: self.clone(),
            addr,
            kubeconfig: path,
            _dir: dir,
            thread: Some(thread),
        })
    }

    /// Creates or replaces an object as the cluster's own controllers would: no version or
    /// namespace checks; `uid`, `creationTimestamp`, `generation` and `status` kept when
    /// given, filled in otherwise. Emits ADDED or MODIFIED (nothing when unchanged).
    /// Namespaced objects without `metadata.namespace` go to `default`.
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        self.shared
            .write(|st| ops::control_apply(st, obj))
            .map(|a| (*a).clone())
    }

    /// [`ApiServer::apply`] for each object, stopping at the first failure.
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) -> Result<Vec<Value>, ApiError> {
        self.shared.write(|st| {
            objs.into_iter()
                .map(|o| ops::control_apply(st, o).map(|a| (*a).clone()))
                .collect()
        })
    }

    /// [`ApiServer::apply_all`] without handing the stored objects back (for bulk loads):
    /// the number applied.
    pub fn load(&self, objs: impl IntoIterator<Item = Value>) -> Result<usize, ApiError> {
        self.shared.write(|st| {
            let mut n = 0;
            for o in objs {
                ops::control_apply(st, o)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Deletes an object at once (finalizers ignored; a namespace takes its contents), emitting
    /// DELETED. `kind` is a kind, plural or short name (`Pod`, `pods`, `deploy`); `ns` is `""`
    /// for cluster-scoped kinds. Returns the object's last state, `None` if it did not exist.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.try_delete(kind, ns, name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ApiServer::delete`], failing on an unknown kind instead of panicking.
    pub fn try_delete(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let res = resolve(kind)?;
        Ok(self
            .shared
            .write(|st| ops::control_delete(st, res, ns, name))
            .map(|a| (*a).clone()))
    }

    /// The stored object, if any (see [`ApiServer::delete`] for `kind` and `ns`).
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.try_get(kind, ns, name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ApiServer::get`], failing on an unknown kind instead of panicking.
    pub fn try_get(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let res = resolve(kind)?;
        Ok(self.shared.read(|st| ops::get(st, res, ns, name)).map(|a| (*a).clone()))
    }

    /// All objects of a kind in namespace `ns` (`""`: all namespaces), in key order.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn list(&self, kind: &str, ns: &str) -> Vec<Value> {
        self.try_list(kind, ns).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ApiServer::list`], failing on an unknown kind instead of panicking.
    pub fn try_list(&self, kind: &str, ns: &str) -> Result<Vec<Value>, ApiError> {
        let res = resolve(kind)?;
        let ns = (!ns.is_empty() && resources::RESOURCES[res].namespaced).then_some(ns);
        Ok(self.shared.read(|st| {
            let mut out = Vec::new();
            let _ = st.scan_at(res, ns, st.rv, None, |_, v| {
                out.push((**v).clone());
                true
            });
            out
        }))
    }

    /// The current (last handed out) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|st| st.rv)
    }

    /// Drops the event history: watches resuming from (and paged lists continuing at) an
    /// older resourceVersion get 410 Expired and must relist. Open watches go on.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Expires every resourceVersion handed out so far and ends every open watch stream: each
    /// client's next watch gets 410 Gone, whatever it had already received, so it must relist.
    /// Unlike [`compact`](Self::compact), this holds even for a client (in another process) that
    /// has seen the latest event.
    pub fn expire_watches(&self) {
        self.shared.write(Store::expire);
        self.close_watches();
    }

    /// Ends every open watch stream cleanly (as a load balancer dropping connections would);
    /// clients re-watch from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.epoch_tx.send_modify(|e| *e += 1);
    }

    /// Period of BOOKMARK events: at once for watches opened from now on, after their next
    /// bookmark for open ones.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval.max(Duration::from_millis(1));
    }

    /// Bound of the event history (trims at once if lower).
    pub fn set_history_limit(&self, events: usize) {
        self.shared.write(|st| st.set_history_limit(events));
    }

    /// Every API request so far (not `/_control/` ones), oldest first: (method, path?query).
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the logged requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Arms `fault` (after those already armed; a request gets the first one that matches): 403 on
    /// one resource, 401, 429 with `Retry-After`, 5xx bursts, slow answers. See [`ApiFault`].
    pub fn inject(&self, fault: ApiFault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Disarms every fault; the server serves normally again.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// How many logged requests have this method and contain `needle` in their path and query
    /// (e.g. `("GET", "watch=true")`).
    pub fn count_requests(&self, method: &str, needle: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|(m, p)| m == method && p.contains(needle))
            .count()
    }
}

/// Objects from JSON (an object, a `…List` with `items`, or an array) or YAML (documents
/// separated by `---`, each an object or a list).
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(v) => vec![v],
        Err(json_err) => serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| anyhow::anyhow!("neither JSON ({json_err}) nor YAML ({e})"))?,
    };
    let mut out = Vec::new();
    for d in docs {
        match d {
            Value::Null => {}
            Value::Array(items) => out.extend(items),
            Value::Object(mut m) => match m.remove("items") {
                Some(Value::Array(items)) => out.extend(items),
                Some(other) => {
                    m.insert("items".into(), other);
                    out.push(Value::Object(m));
                }
                None => out.push(Value::Object(m)),
            },
            other => anyhow::bail!("not an object: {other}"),
        }
    }
    Ok(out)
}

fn write_kubeconfig(path: &Path, port: u16) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user: {{}}
preferences: {{}}
"
    );
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Binds `127.0.0.1:port`, retrying briefly when the port is still being released.
fn bind(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            Err(e) if port != 0 && Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("binding 127.0.0.1:{port}")),
        }
    }
}

/// An [`ApiServer`] listening on loopback; dereferences to the [`ApiServer`]. Dropping it stops it.
pub struct RunningApiServer {
    server: ApiServer,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _dir: Option<tempfile::TempDir>,
    thread: Option<ServerThread>,
}

impl std::fmt::Debug for RunningApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApiServer")
            .field("addr", &self.addr)
            .field("kubeconfig", &self.kubeconfig)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl std::ops::Deref for RunningApiServer {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        &self.server
    }
}

impl RunningApiServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The kubeconfig written for it (cluster `fake`, no auth, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The shared state (also reachable through `Deref`).
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// Stops listening and drops every open connection (watches see the stream break).
    /// Objects and history stay.
    pub fn stop(&mut self) {
        self.thread = None;
    }

    /// Listens again on the same port (after [`RunningApiServer::stop`]).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.thread.is_some() {
            return Ok(());
        }
        let listener = bind(self.addr.port())?;
        self.thread = Some(ServerThread::spawn("fake-apiserver", listener, self.server.router())?);
        Ok(())
    }

    /// Simulates an API server restart: connections drop, objects stay, the resourceVersion
    /// moves on and the event history is gone, so every watch resuming from before the restart
    /// gets 410 Expired and must relist. Same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The real server's etcd revision keeps moving (leases, events): nothing before the
        // restart can be resumed from.
        self.server.shared.write(Store::expire);
        self.start()
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let v = parse_documents(r#"{"kind":"List","items":[{"a":1},{"b":2}]}"#).unwrap();
        assert_eq!(v.len(), 2);
        let v = parse_documents("a: 1\n---\nkind: PodList\nitems:\n- b: 2\n- c: 3\n").unwrap();
        assert_eq!(v, vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]);
        assert_eq!(parse_documents("[{\"x\": true}]").unwrap(), vec![json!({"x": true})]);
    }

    #[test]
    fn control_apply_and_list() {
        let s = ApiServer::new();
        assert_eq!(s.list("ns", "").len(), 4);
        let rv = s.resource_version();
        let pod = s
            .apply(json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" }, "status": { "phase": "Running" } }))
            .unwrap();
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(s.resource_version(), rv + 1);
        // Unchanged: no write.
        s.apply(pod.clone()).unwrap();
        assert_eq!(s.resource_version(), rv + 1);
        assert_eq!(s.list("Pod", "default").len(), 1);
        assert_eq!(s.list("pods", "other").len(), 0);
        assert!(s.get("po", "default", "p").is_some());
        assert!(s.delete("Pod", "default", "p").is_some());
        assert!(s.delete("Pod", "default", "p").is_none());
        assert!(s.try_get("Widget", "", "x").is_err());
    }
}
