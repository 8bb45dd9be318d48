//! Restore drills: proof that the backup can be restored, not only that it is listed. Every
//! `restoreDrillInterval` the leader takes `restoreDrillImages` targets the periodic verification
//! found whole (those never drilled first, then the one drilled longest ago, so every target takes
//! its turn) and pulls each whole from the target registry as a node would: the tag resolved, every
//! manifest and every blob read and re-hashed while it streams ([`Depth::Deep`]), with copycat's
//! own credentials for the target (read scope: the same client as the checks, never the writing
//! one) and without asking the source. A drill passes when the target still holds the digest the
//! verification compared with the source (or the cluster's pinned digest) and every byte below it
//! hashes to its digest.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{BackupStates, WholeTarget, count, describe};
use crate::copy::Copier;
use crate::copy::check::{Depth, TargetState};
pub use crate::task_state::DrillResult;

/// How long the drill loop waits for a first verified target before looking again.
const WAIT_FOR_VERIFIED: Duration = Duration::from_secs(1);

/// One restore drill of one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    /// When it ended.
    #[serde(serialize_with = "crate::task_state::rfc3339")]
    pub at: Option<SystemTime>,
    /// Passed or failed.
    pub result: DrillResult,
    /// What was read, or what failed.
    pub detail: String,
    /// The target pulled (`registry/repo:tag` or `registry/repo@digest`).
    pub target: String,
    /// The digest the target had to hold: the source's (or the cluster's pinned one) at the last
    /// verification.
    pub digest: String,
    /// How long the pull took.
    #[serde(rename = "durationSeconds", serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Pulls `target` whole from the target registry, `blobs` blobs at a time, and says how it went.
pub async fn drill(copier: &Copier, target: &WholeTarget, blobs: usize) -> Drill {
    let started = Instant::now();
    let pulled = copier
        .check_target(&target.request, &target.digest, Depth::Deep, blobs)
        .await;
    let (result, detail) = match pulled {
        Ok(TargetState::Verified { manifests, blobs }) => (
            DrillResult::Passed,
            format!(
                "pulled whole: {} and {} read and re-hashed",
                count(manifests, "manifest"),
                count(blobs, "blob")
            ),
        ),
        Ok(incomplete) => (
            DrillResult::Failed,
            describe(incomplete, target.request.target_tag.is_some()).1,
        ),
        Err(e) => (DrillResult::Failed, e.to_string()),
    };
    Drill {
        at: Some(SystemTime::now()),
        result,
        detail,
        target: target.request.target_display(Some(&target.digest)),
        digest: target.digest.to_string(),
        duration: started.elapsed(),
    }
}

/// The restore drill loop, run by the leader.
pub struct RestoreDrills {
    /// The copier whose target registry is read.
    pub copier: Copier,
    /// Where the verified targets come from and the drills go.
    pub states: BackupStates,
    /// `restoreDrillInterval`: one round per interval.
    pub interval: Duration,
    /// `restoreDrillImages`: targets pulled per round.
    pub images: usize,
    /// Blobs of one target read at the same time.
    pub blobs: usize,
}

impl RestoreDrills {
    /// Runs a round as soon as a target is verified, then one per interval, while `leading` says
    /// this replica leads, for ever. Targets of a round are pulled one after the other; `done`
    /// gets each drill (for the metrics).
    pub async fn run(self, mut leading: watch::Receiver<bool>, done: impl Fn(&Drill)) {
        let mut next = Instant::now();
        loop {
            if !*leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    return;
                }
                next = Instant::now();
                continue;
            }
            if Instant::now() >= next {
                let picked = self.states.drill_candidates(self.images);
                if picked.is_empty() {
                    next = Instant::now() + WAIT_FOR_VERIFIED.min(self.interval);
                } else {
                    let round = Instant::now();
                    for (key, target) in picked {
                        if !*leading.borrow() {
                            break;
                        }
                        let drill = drill(&self.copier, &target, self.blobs).await;
                        log(&drill);
                        done(&drill);
                        self.states.record_drill(&key, drill);
                    }
                    next = round + self.interval;
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// One line per drill: info when it passed, a warning when it failed.
fn log(drill: &Drill) {
    let took = format!("{:.3}s", drill.duration.as_secs_f64());
    match drill.result {
        DrillResult::Passed => tracing::info!(target = %drill.target, digest = %drill.digest, took,
            detail = %drill.detail, "restore drill passed"),
        DrillResult::Failed => tracing::warn!(target = %drill.target, digest = %drill.digest, took,
            detail = %drill.detail, "restore drill failed: the backup could not be pulled whole"),
    }
}
