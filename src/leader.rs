//! Leader election: with `LEADER_ELECT=true` (the default) replicas compete for the Lease
//! `k8s-copycat` in `POD_NAMESPACE` through `kube-lease-manager`; only the holder mirrors.
//!
//! [`Leadership`] publishes whether this replica leads on a watch channel (the plan loop follows
//! it) and on the `k8s_copycat_leader` gauge; [`Leadership::release`] hands the Lease back on
//! shutdown so that another replica takes over without waiting for it to expire.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// The Lease's name.
pub const LEASE_NAME: &str = "k8s-copycat";
/// How long a lease lasts without renewal (seconds): the longest a failover takes when the leader
/// dies without releasing it.
pub const LEASE_DURATION: u64 = 15;
/// How long before expiry the leader renews (seconds).
pub const LEASE_GRACE: u64 = 5;
/// How long to wait before reading the Lease again after an error.
const RETRY: Duration = Duration::from_secs(2);
/// How often a follower checks whether the leader released the Lease.
const RELEASE_POLL: Duration = Duration::from_secs(1);
/// How long releasing the Lease may take on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this replica leads, as it changes.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// The elector; `None` when election is off (always leading).
    elector: Option<Elector>,
}

struct Elector {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What the elector task needs to (re)build its lease manager.
struct Params {
    client: kube::Client,
    namespace: String,
    identity: String,
    duration: u64,
    grace: u64,
}

impl Params {
    async fn build(&self) -> kube_lease_manager::Result<LeaseManager> {
        LeaseManagerBuilder::new(self.client.clone(), LEASE_NAME)
            .with_namespace(self.namespace.clone())
            .with_identity(self.identity.clone())
            .with_duration(self.duration)
            .with_grace(self.grace)
            // One field manager per replica: the library takes a free Lease with a server-side apply
            // of `holderIdentity`, which only conflicts between different managers. With one shared
            // name two replicas starting together both "took" it (the later apply silently won) and
            // both mirrored until the next renewal (seen on a real API server).
            .with_field_manager(format!("copycat/{}", self.identity))
            .build()
            .await
    }
}

impl Leadership {
    /// No election (`LEADER_ELECT=false`): this replica always leads.
    pub fn always(metrics: &Metrics) -> Leadership {
        metrics.set_leader(true);
        let (tx, leading) = watch::channel(true);
        // Keep the channel open for good: `changed()` then simply never fires.
        std::mem::forget(tx);
        Leadership { leading, elector: None }
    }

    /// Competes for the Lease [`LEASE_NAME`] in `namespace` as `identity`.
    pub async fn elect(
        client: kube::Client,
        namespace: &str,
        identity: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Leadership> {
        Leadership::elect_with(client, namespace, identity, metrics, LEASE_DURATION, LEASE_GRACE).await
    }

    /// [`Leadership::elect`] with explicit lease timings (seconds). Fails when the Lease cannot be
    /// read or created at start (a missing namespace, no RBAC).
    pub async fn elect_with(
        client: kube::Client,
        namespace: &str,
        identity: String,
        metrics: Arc<Metrics>,
        duration: u64,
        grace: u64,
    ) -> anyhow::Result<Leadership> {
        metrics.set_leader(false);
        let params = Params {
            client,
            namespace: namespace.to_owned(),
            identity,
            duration,
            grace,
        };
        let manager = params
            .build()
            .await
            .with_context(|| format!("leader election: cannot use Lease {namespace}/{LEASE_NAME}"))?;
        tracing::info!(identity = %params.identity, lease = %format!("{namespace}/{LEASE_NAME}"), "leader election started");
        let (tx, leading) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(elector(params, manager, tx, metrics, stopped));
        Ok(Leadership {
            leading,
            elector: Some(Elector { stop, task }),
        })
    }

    /// Whether this replica leads right now, and changes to it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Steps down and releases the Lease (bounded); nothing to do without election.
    pub async fn release(self) {
        let Some(Elector { stop, task }) = self.elector else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(RELEASE_TIMEOUT + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            tracing::warn!("leader election did not stop in time");
        }
    }
}

/// Why the elector stopped following one lease manager.
enum Outcome {
    /// Shutdown: release the Lease.
    Stop,
    /// Another holder released it: take it with a fresh manager.
    Released,
    /// The API server failed: step down, read the Lease again shortly.
    Failed,
}

/// Follows the Lease until `stopped`, publishing on `tx` and the gauge. When the API server cannot
/// be reached the replica steps down at once (it cannot know it still holds the Lease) and starts
/// over with a fresh manager, which reports leading again if the Lease is still its own.
async fn elector(
    params: Params,
    manager: LeaseManager,
    tx: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    mut stopped: oneshot::Receiver<()>,
) {
    let id = params.identity.clone();
    let publish = |now: bool| {
        if *tx.borrow() != now {
            if now {
                tracing::info!(identity = %id, "became the leader: mirroring");
            } else {
                tracing::warn!(identity = %id, "not the leader any more: no longer mirroring");
            }
            metrics.set_leader(now);
            let _ = tx.send(now);
        }
    };
    let leases: kube::Api<Lease> = kube::Api::namespaced(params.client.clone(), &params.namespace);
    let mut manager = Some(manager);
    loop {
        let current = match manager.take() {
            Some(m) => m,
            None => match params.build().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read the Lease; retrying");
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            },
        };
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + RELEASE_POLL, RELEASE_POLL);
        let mut seen_held = false;
        let mut free_polls = 0;
        // Kept across the polls, so that a follower's wait for the holder's term is not restarted.
        let mut changed = Box::pin(current.changed());
        let outcome = loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break Outcome::Stop,
                result = &mut changed => match result {
                    Ok(now) => {
                        publish(now);
                        changed.set(current.changed());
                    }
                    Err(e) => {
                        tracing::warn!(identity = %id, error = %e, "leader election: cannot renew or read the Lease");
                        publish(false);
                        break Outcome::Failed;
                    }
                },
                // The library only looks again when the holder's term ends; a follower that sees the
                // Lease released (a leader shutting down) takes it at once with a fresh manager.
                _ = poll.tick(), if !*tx.borrow() => {
                    let holder = tokio::time::timeout(RELEASE_POLL, leases.get(LEASE_NAME)).await;
                    if let Ok(Ok(lease)) = holder {
                        let held = lease
                            .spec
                            .and_then(|s| s.holder_identity)
                            .is_some_and(|h| !h.is_empty() && h != id);
                        // A release seen happening, or a Lease left free for two polls in a row (a
                        // fresh manager takes a free Lease at once; this one waits for a stale term).
                        if held {
                            seen_held = true;
                            free_polls = 0;
                        } else if seen_held || {
                            free_polls += 1;
                            free_polls >= 2
                        } {
                            tracing::info!(identity = %id, "the Lease was released: taking it");
                            break Outcome::Released;
                        }
                    }
                }
            }
        };
        // The pending `changed()` may hold the manager's state lock: drop it before releasing.
        drop(changed);
        match outcome {
            Outcome::Stop => {
                publish(false);
                match tokio::time::timeout(RELEASE_TIMEOUT, current.release()).await {
                    Ok(Ok(())) => tracing::info!(identity = %id, "leader election lease released"),
                    Ok(Err(e)) => {
                        tracing::warn!(identity = %id, error = %e, "cannot release the leader election lease")
                    }
                    Err(_) => tracing::warn!(identity = %id, "releasing the leader election lease timed out"),
                }
                return;
            }
            Outcome::Released => continue,
            Outcome::Failed => {}
        }
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// This replica's identity: `HOSTNAME` (the pod name in a pod), else `POD_NAME`, else a random id.
pub fn identity() -> String {
    ["HOSTNAME", "POD_NAME"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(random_id)
}

fn random_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("copycat-{:016x}", h.finish())
}
