//! Leader election: with `LEADER_ELECT=true` (the default) replicas compete for the Lease
//! `k8s-copycat` in `POD_NAMESPACE` through `kube-lease-manager`; only the holder mirrors.
//!
//! [`Leadership`] publishes whether this replica leads on a watch channel (the plan loop follows
//! it) and on the `k8s_copycat_leader` gauge; [`Leadership::release`] hands the Lease back on
//! shutdown so that another replica takes over without waiting for it to expire.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// The Lease's name.
pub const LEASE_NAME: &str = "k8s-copycat";
/// How long a lease lasts without renewal (seconds): the longest a failover takes when the leader
/// dies without releasing it.
pub const LEASE_DURATION: u64 = 15;
/// How long before expiry the leader renews (seconds).
pub const LEASE_GRACE: u64 = 5;
/// How long releasing the Lease may take on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this replica leads, as it changes.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// The elector; `None` when election is off (always leading).
    elector: Option<Elector>,
}

struct Elector {
    /// Keeps the library's channel open; dropping it makes the library release the Lease.
    upstream: watch::Receiver<bool>,
    manager: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    relay: JoinHandle<()>,
    identity: String,
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

    /// [`Leadership::elect`] with explicit lease timings (seconds).
    pub async fn elect_with(
        client: kube::Client,
        namespace: &str,
        identity: String,
        metrics: Arc<Metrics>,
        duration: u64,
        grace: u64,
    ) -> anyhow::Result<Leadership> {
        metrics.set_leader(false);
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity.clone())
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager("copycat")
            .build()
            .await
            .with_context(|| format!("leader election: cannot use Lease {namespace}/{LEASE_NAME}"))?;
        tracing::info!(identity = %identity, lease = %format!("{namespace}/{LEASE_NAME}"), "leader election started");
        let (upstream, manager) = manager.watch().await;
        let (tx, leading) = watch::channel(false);
        let mut from = upstream.clone();
        let who = identity.clone();
        let relay = tokio::spawn(async move {
            loop {
                let now = *from.borrow_and_update();
                if *tx.borrow() != now {
                    if now {
                        tracing::info!(identity = %who, "became the leader: mirroring");
                    } else {
                        tracing::warn!(identity = %who, "lost the leadership: no longer mirroring");
                    }
                    metrics.set_leader(now);
                    let _ = tx.send(now);
                }
                if from.changed().await.is_err() {
                    // The elector stopped (released or failed): no longer leading.
                    metrics.set_leader(false);
                    let _ = tx.send(false);
                    return;
                }
            }
        });
        Ok(Leadership {
            leading,
            elector: Some(Elector {
                upstream,
                manager,
                relay,
                identity,
            }),
        })
    }

    /// Whether this replica leads right now, and changes to it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Steps down and releases the Lease (bounded); nothing to do without election.
    pub async fn release(self) {
        let Some(elector) = self.elector else { return };
        let Elector {
            upstream,
            manager,
            relay,
            identity,
        } = elector;
        relay.abort();
        let _ = relay.await;
        // The last receiver gone, the library releases the Lease and returns.
        drop(upstream);
        match tokio::time::timeout(RELEASE_TIMEOUT, manager).await {
            Ok(Ok(Ok(_))) => tracing::info!(identity = %identity, "leader election lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(identity = %identity, error = %e, "cannot release the leader election lease")
            }
            Ok(Err(e)) => tracing::warn!(identity = %identity, error = %e, "leader election task failed"),
            Err(_) => tracing::warn!(identity = %identity, "releasing the leader election lease timed out"),
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
