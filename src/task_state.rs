//! Where a mirror target stands, in the words `/status` and the `k8s_copycat_tasks` gauge use. The
//! plan decides the excluded and conflicting ones, the queue the rest; both report to `metrics`,
//! which sits below them, so the words live here, on the ground floor. So do the backup states the
//! periodic verification (`coverage`) gives and `k8s_copycat_backup_images` counts, and the results
//! of restore drills that `k8s_copycat_restore_drill_total` counts.

use std::fmt;

use serde::Serialize;

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Being copied.
    Running,
    /// The target holds the source's content (copied, or already present); a pull-through cache
    /// target served it when read through.
    Mirrored,
    /// The last attempt failed and the cooldown is disabled: retried at `next_retry` (a backoff that
    /// doubles with each failure) or when submitted again, whichever comes first.
    Failed,
    /// The last attempt failed; retried at `next_retry`.
    Cooldown,
    /// Dry run or dry pull: decided, nothing written.
    DryRun,
    /// Not mirrored: the source is under an `excludeRegistries` entry or on the target registry.
    Excluded,
    /// Not mirrored: another source names the same target and keeps it (it was used first).
    Conflict,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Mirrored,
        TaskState::Failed,
        TaskState::Cooldown,
        TaskState::DryRun,
        TaskState::Excluded,
        TaskState::Conflict,
    ];

    /// `queued`, `running`, `mirrored`, `failed`, `cooldown`, `dry-run`, `excluded` or `conflict`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Mirrored => "mirrored",
            TaskState::Failed => "failed",
            TaskState::Cooldown => "cooldown",
            TaskState::DryRun => "dry-run",
            TaskState::Excluded => "excluded",
            TaskState::Conflict => "conflict",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backup state of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// The target holds the expected digest and everything it references.
    Verified,
    /// As verified, but no tag holds the copy (a digest-only source with `digestTagTemplate: none`):
    /// a registry rule that expires untagged images can delete it, so it counts as at risk, not
    /// verified.
    Untagged,
    /// Not checked yet (the daemon checks a target once the queue has finished with it).
    Pending,
    /// The target lacks the manifest, child manifests or blobs (or holds them damaged).
    Missing,
    /// The target tag holds another digest.
    Mismatch,
    /// The check could not be made (a registry error, a source that cannot be read), or the image is
    /// not mirrored at all (an invalid reference, a target another image keeps).
    Failed,
    /// Left out by a rule (`excludeRegistries`, or it already lives on the target): not counted.
    Excluded,
}

impl BackupState {
    /// Every state.
    pub const ALL: [BackupState; 7] = [
        BackupState::Verified,
        BackupState::Untagged,
        BackupState::Pending,
        BackupState::Missing,
        BackupState::Mismatch,
        BackupState::Failed,
        BackupState::Excluded,
    ];

    /// The state's name, as the table and JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Verified => "verified",
            BackupState::Untagged => "untagged",
            BackupState::Pending => "pending",
            BackupState::Missing => "missing",
            BackupState::Mismatch => "mismatch",
            BackupState::Failed => "failed",
            BackupState::Excluded => "excluded",
        }
    }
}

/// How a restore drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillResult {
    /// Every manifest and blob was read and hashed to its digest; the tag holds the expected digest.
    Passed,
    /// Something could not be read, was missing or damaged, or the tag holds another digest.
    Failed,
}

impl DrillResult {
    /// Every result.
    pub const ALL: [DrillResult; 2] = [DrillResult::Passed, DrillResult::Failed];

    /// `passed` or `failed`, as metrics and `/status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillResult::Passed => "passed",
            DrillResult::Failed => "failed",
        }
    }
}

/// A time as `/status` shows it (RFC 3339, milliseconds, UTC), or `null`.
pub fn rfc3339<S: serde::Serializer>(t: &Option<std::time::SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serializer.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => serializer.serialize_none(),
    }
}
