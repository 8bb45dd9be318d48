//! How much of a plan is backed up: each planned target checked at the target registry
//! ([`Copier::check_target`]) and given a backup state, the plan's excluded, conflicting and invalid
//! images listed beside them, and the summary (counts and coverage = verified / (all − excluded)).
//! `copycat verify` checks a plan made from one list of the cluster; the daemon checks its own plans
//! and the targets declarative objects declare the same way, continuously (`periodic.rs`:
//! [`BackupStates`], [`Verifier`]).

pub mod drill;
pub mod periodic;

pub use crate::task_state::BackupState;
pub use drill::{Drill, DrillResult, RestoreDrills};
pub use periodic::{BackupStates, ImageBackup, Report, Verifier};

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use serde::Serialize;

use crate::copy::check::{Depth, TargetState};
use crate::copy::{Copier, CopyError, CopyOptions, CopyRequest};
use crate::plan::{MirrorTask, Plan};
use crate::reference::Digest;
use crate::referrer_policy::ReferrerPolicy;
use crate::registry::Side;
use crate::workload::{DeclaredSource, Workload};

/// Where the digest a target was checked against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedFrom {
    /// The reference the cluster runs pins it (a digest in the image, or the Pod's `imageID` with
    /// `digestPull`).
    Cluster,
    /// A HEAD of the source tag now (the cluster reports no digest for tag references).
    Source,
}

/// One image of the plan and its backup state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageCoverage {
    /// The source reference as planned (as the workloads give it, digest pinned with `digestPull`).
    pub image: String,
    /// The target reference checked (empty for excluded and invalid images).
    pub target: String,
    /// The state.
    pub state: BackupState,
    /// What is missing, the digests that differ, the error, or the exclusion rule.
    pub detail: String,
    /// The digest the target must hold, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Where `expected` came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_from: Option<ExpectedFrom>,
    /// Which side a failure happened on (`source` or `target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<&'static str>,
    /// Who uses the image (the most recent few).
    pub users: Vec<Workload>,
    /// The declarative objects (`Image`, Flux `ImageRepository`) asking for the target; left out
    /// when none does (always in `copycat verify`, which reads no such object).
    #[serde(rename = "declaredBy", skip_serializing_if = "Vec::is_empty")]
    pub declared_by: Vec<DeclaredSource>,
}

/// Counts of a coverage report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Images in the report, excluded ones included.
    pub images: usize,
    /// Verified.
    pub verified: usize,
    /// Whole at the target but held by no tag: at risk, not counted as verified.
    pub untagged: usize,
    /// Not checked yet (the daemon only; `copycat verify` checks everything).
    pub pending: usize,
    /// Missing parts.
    pub missing: usize,
    /// Another digest at the target.
    pub mismatch: usize,
    /// Not checked or not mirrored.
    pub failed: usize,
    /// Excluded by a rule.
    pub excluded: usize,
    /// verified / (images − excluded); 1 when nothing is in scope.
    pub coverage: f64,
}

impl Summary {
    /// The counts of the images in `states` (one state per image).
    pub fn of(states: impl IntoIterator<Item = BackupState>) -> Summary {
        let mut summary = Summary::default();
        for state in states {
            summary.images += 1;
            *match state {
                BackupState::Verified => &mut summary.verified,
                BackupState::Untagged => &mut summary.untagged,
                BackupState::Pending => &mut summary.pending,
                BackupState::Missing => &mut summary.missing,
                BackupState::Mismatch => &mut summary.mismatch,
                BackupState::Failed => &mut summary.failed,
                BackupState::Excluded => &mut summary.excluded,
            } += 1;
        }
        summary.coverage = 1.0;
        let in_scope = summary.images - summary.excluded;
        if in_scope > 0 {
            summary.coverage = summary.verified as f64 / in_scope as f64;
        }
        summary
    }

    /// The count of each state.
    pub fn counts(&self) -> [(BackupState, usize); 7] {
        [
            (BackupState::Verified, self.verified),
            (BackupState::Untagged, self.untagged),
            (BackupState::Pending, self.pending),
            (BackupState::Missing, self.missing),
            (BackupState::Mismatch, self.mismatch),
            (BackupState::Failed, self.failed),
            (BackupState::Excluded, self.excluded),
        ]
    }

    /// Whether every image in scope is verified.
    pub fn complete(&self) -> bool {
        self.verified == self.images - self.excluded
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Untagged and pending are shown when there are any (pending never is in `copycat verify`).
        let optional = |n: usize, what: &str| match n {
            0 => String::new(),
            n => format!(", {n} {what}"),
        };
        let (untagged, pending) = (optional(self.untagged, "untagged"), optional(self.pending, "pending"));
        write!(
            f,
            "{} images: {} verified{untagged}{pending}, {} missing, {} mismatch, {} failed, {} excluded; coverage {}/{} ({:.1}%)",
            self.images,
            self.verified,
            self.missing,
            self.mismatch,
            self.failed,
            self.excluded,
            self.verified,
            self.images - self.excluded,
            self.coverage * 100.0
        )
    }
}

/// How to check a plan.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// HEADs, or reading and re-hashing every blob.
    pub depth: Depth,
    /// Images checked at the same time.
    pub images: usize,
    /// Blobs of one image checked at the same time.
    pub blobs: usize,
    /// The signatures, attestations and SBOMs that must be at the target too (none: not checked).
    pub referrers: ReferrerPolicy,
}

/// Checks every task of `plan` at its target, `options.images` at a time, calling `done` with each
/// result and the number finished so far as it finishes; then lists the plan's excluded, conflicting
/// and invalid images. Ordered by image, then target.
pub async fn check_plan(
    copier: &Copier,
    plan: &Plan,
    options: CheckOptions,
    done: impl Fn(&ImageCoverage, usize),
) -> Vec<ImageCoverage> {
    let finished = AtomicUsize::new(0);
    let mut out: Vec<ImageCoverage> = futures::stream::iter(&plan.tasks)
        .map(|task| {
            let options = options.clone();
            async move { check_task(copier, task, options).await.0 }
        })
        .buffer_unordered(options.images.max(1))
        .inspect(|row| done(row, finished.fetch_add(1, Ordering::Relaxed) + 1))
        .collect()
        .await;
    out.extend(unplanned(plan));
    out.sort_by(|a, b| (&a.image, &a.target).cmp(&(&b.image, &b.target)));
    out
}

/// The plan's images that are not mirrored: excluded ones (`excluded`, with the rule), those whose
/// target another source keeps and invalid references (`failed`, saying why).
pub fn unplanned(plan: &Plan) -> Vec<ImageCoverage> {
    let mut out = Vec::with_capacity(plan.excluded.len() + plan.conflicts.len() + plan.invalid.len());
    out.extend(plan.excluded.iter().map(|e| ImageCoverage {
        image: e.source.clone(),
        target: String::new(),
        state: BackupState::Excluded,
        detail: format!("excluded by {}", e.rule),
        expected: None,
        expected_from: None,
        side: None,
        users: e.users.clone(),
        declared_by: vec![],
    }));
    out.extend(plan.conflicts.iter().map(|c| ImageCoverage {
        image: c.source.clone(),
        target: c.target.clone(),
        state: BackupState::Failed,
        detail: format!("not mirrored: {} keeps this target", c.kept),
        expected: None,
        expected_from: None,
        side: None,
        users: c.users.clone(),
        declared_by: vec![],
    }));
    out.extend(plan.invalid.iter().map(|(user, image, error)| ImageCoverage {
        image: image.clone(),
        target: String::new(),
        state: BackupState::Failed,
        detail: format!("not mirrored: {error}"),
        expected: None,
        expected_from: None,
        side: None,
        users: vec![user.clone()],
        declared_by: vec![],
    }));
    out
}

/// A target found whole: the request naming it and the digest it holds, which a restore drill reads
/// again without asking the source.
#[derive(Debug, Clone)]
pub struct WholeTarget {
    /// The task's request with its target named.
    pub request: CopyRequest,
    /// The digest the target holds under its tag (or by itself).
    pub digest: Digest,
}

/// One task: its target named (by the image's architecture for `$arch` from the image), the digest
/// it must hold, and what the target holds; with the target when it is whole.
pub(crate) async fn check_task(
    copier: &Copier,
    task: &MirrorTask,
    options: CheckOptions,
) -> (ImageCoverage, Option<WholeTarget>) {
    let expected_from = if task.request.source.digest().is_some() {
        ExpectedFrom::Cluster
    } else {
        ExpectedFrom::Source
    };
    let mut row = ImageCoverage {
        image: task.request.source.to_string(),
        target: task.key().to_string(),
        state: BackupState::Failed,
        detail: String::new(),
        expected: None,
        expected_from: Some(expected_from),
        side: None,
        users: task.users.clone(),
        declared_by: vec![],
    };
    let copy_options = CopyOptions {
        platforms: task.platforms.clone(),
        source_credentials: task.source_credentials.clone(),
        referrers: options.referrers.clone(),
        ..CopyOptions::default()
    };
    let checked = async {
        let request = task
            .name_target(async |source| copier.source_architecture(source, &copy_options).await)
            .await?;
        let expected = copier.expected_digest(&request, &copy_options).await?;
        let state = copier
            .check_target(&request, &expected, options.depth, options.blobs)
            .await?;
        // Signatures, attestations and SBOMs, once the image itself is whole.
        let referrers = match state {
            TargetState::Verified { .. } => Some(copier.missing_referrers(&request, &copy_options, &expected).await),
            _ => None,
        };
        Ok::<_, CopyError>((request, expected, state, referrers))
    }
    .await;
    match checked {
        Ok((request, expected, state, referrers)) => {
            row.target = request.target_display(Some(&expected));
            row.expected = Some(expected.to_string());
            (row.state, row.detail) = describe(state, request.target_tag.is_some());
            match referrers {
                Some(Ok(r)) if r.missing > 0 => {
                    row.state = BackupState::Missing;
                    row.detail = format!(
                        "{}; {} of the source's signatures, attestations and SBOMs missing",
                        row.detail, r.missing
                    );
                }
                Some(Ok(r)) if r.found > 0 => {
                    row.detail = format!("{}, {} signatures/attestations/SBOMs", row.detail, r.found);
                }
                Some(Err(e)) => {
                    row.detail = format!("{}; signatures, attestations and SBOMs not checked: {e}", row.detail);
                }
                _ => {}
            }
            let whole = (row.state == BackupState::Verified).then_some(WholeTarget {
                request,
                digest: expected,
            });
            (row, whole)
        }
        Err(e) => {
            row.side = Some(side_name(&e));
            row.detail = e.to_string();
            (row, None)
        }
    }
}

/// `source` or `target`: where `error` happened.
fn side_name(error: &CopyError) -> &'static str {
    match error.side() {
        Side::Source => "source",
        Side::Target => "target",
    }
}

/// The backup state of a target state, with what to say about it; a whole copy no tag holds
/// (`tagged` false: pushed by digest alone) is untagged.
fn describe(state: TargetState, tagged: bool) -> (BackupState, String) {
    match state {
        TargetState::Verified { manifests, blobs } => {
            let present = format!("{}, {} present", count(manifests, "manifest"), count(blobs, "blob"));
            if tagged {
                (BackupState::Verified, present)
            } else {
                (
                    BackupState::Untagged,
                    format!(
                        "{present}, but no tag holds it (digest-only source with digestTagTemplate: none): \
                         a rule that expires untagged images can delete it"
                    ),
                )
            }
        }
        TargetState::Missing(missing) => (BackupState::Missing, missing.to_string()),
        TargetState::Mismatch { expected, found } => (
            BackupState::Mismatch,
            format!("the target holds {found}, expected {expected}"),
        ),
    }
}

/// `n what`, plural when `n` is not 1.
pub(crate) fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `images` as a table: image, target, state, detail and users, columns aligned.
pub fn table(images: &[ImageCoverage]) -> String {
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            let users: Vec<String> = i.users.iter().map(ToString::to_string).collect();
            [
                i.image.clone(),
                if i.target.is_empty() {
                    "-".into()
                } else {
                    i.target.clone()
                },
                i.state.as_str().to_owned(),
                i.detail.clone(),
                users.join(", "),
            ]
        })
        .collect();
    let header = ["IMAGE", "TARGET", "STATE", "DETAIL", "USERS"].map(str::to_owned);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (w, cell) in widths.iter().zip(row) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(&row[4]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::check::Missing;
    use crate::reference::Digest;
    use crate::workload::Kind;

    fn image(name: &str, state: BackupState) -> ImageCoverage {
        ImageCoverage {
            image: name.into(),
            target: format!("r.io/{name}"),
            state,
            detail: String::new(),
            expected: None,
            expected_from: None,
            side: None,
            users: vec![Workload::new(Kind::Deployment, "shop", name)],
            declared_by: vec![],
        }
    }

    #[test]
    fn coverage_counts_verified_images_among_those_in_scope() {
        use BackupState::*;
        // (states, verified, excluded, coverage, complete)
        let cases: [(&[BackupState], usize, usize, f64, bool); 10] = [
            (&[], 0, 0, 1.0, true),
            (&[Verified, Verified], 2, 0, 1.0, true),
            (&[Verified, Excluded], 1, 1, 1.0, true),
            (&[Excluded], 0, 1, 1.0, true),
            (&[Verified, Missing, Mismatch, Failed], 1, 0, 0.25, false),
            (&[Verified, Verified, Verified, Failed, Excluded], 3, 1, 0.75, false),
            (&[Missing, Excluded], 0, 1, 0.0, false),
            (&[Verified, Pending, Excluded], 1, 1, 0.5, false),
            // A copy no tag holds is at risk: not verified, the backup not complete.
            (&[Untagged], 0, 0, 0.0, false),
            (&[Verified, Untagged, Excluded], 1, 1, 0.5, false),
        ];
        for (states, verified, excluded, coverage, complete) in cases {
            let summary = Summary::of(states.iter().copied());
            assert_eq!(summary.images, states.len(), "{states:?}");
            assert_eq!(summary.verified, verified, "{states:?}");
            assert_eq!(summary.excluded, excluded, "{states:?}");
            assert!((summary.coverage - coverage).abs() < 1e-9, "{states:?}: {summary:?}");
            assert_eq!(summary.complete(), complete, "{states:?}");
            assert_eq!(
                summary.untagged
                    + summary.pending
                    + summary.missing
                    + summary.mismatch
                    + summary.failed
                    + verified
                    + excluded,
                states.len()
            );
        }
        let summary = Summary::of([Verified, Missing, Excluded]);
        assert_eq!(
            summary.to_string(),
            "3 images: 1 verified, 1 missing, 0 mismatch, 0 failed, 1 excluded; coverage 1/2 (50.0%)"
        );
        let summary = Summary::of([Verified, Pending]);
        assert_eq!(
            summary.to_string(),
            "2 images: 1 verified, 1 pending, 0 missing, 0 mismatch, 0 failed, 0 excluded; coverage 1/2 (50.0%)"
        );
        let summary = Summary::of([Verified, Untagged, Pending]);
        assert_eq!(
            summary.to_string(),
            "3 images: 1 verified, 1 untagged, 1 pending, 0 missing, 0 mismatch, 0 failed, 0 excluded; coverage 1/3 (33.3%)"
        );
    }

    #[test]
    fn target_states_become_backup_states_with_their_detail() {
        let d = |n: u8| Digest::sha256_hex(&format!("{n:02x}").repeat(32)).unwrap();
        // (what the target holds, whether a tag holds it, the backup state, its detail)
        let cases = [
            (
                TargetState::Verified { manifests: 3, blobs: 4 },
                true,
                BackupState::Verified,
                "3 manifests, 4 blobs present".to_owned(),
            ),
            (
                TargetState::Verified { manifests: 1, blobs: 1 },
                true,
                BackupState::Verified,
                "1 manifest, 1 blob present".to_owned(),
            ),
            (
                TargetState::Verified { manifests: 1, blobs: 2 },
                false,
                BackupState::Untagged,
                "1 manifest, 2 blobs present, but no tag holds it (digest-only source with digestTagTemplate: none): \
                 a rule that expires untagged images can delete it"
                    .to_owned(),
            ),
            (
                TargetState::Missing(Missing {
                    blobs: vec![d(1)],
                    ..Missing::default()
                }),
                false,
                BackupState::Missing,
                "1 blob".to_owned(),
            ),
            (
                TargetState::Mismatch {
                    expected: d(1),
                    found: d(2),
                },
                true,
                BackupState::Mismatch,
                format!("the target holds {}, expected {}", d(2), d(1)),
            ),
        ];
        for (state, tagged, want, detail) in cases {
            assert_eq!(describe(state, tagged), (want, detail));
        }
    }

    #[test]
    fn the_table_aligns_columns_and_names_users() {
        let mut excluded = image("quay.io/x/y:1", BackupState::Excluded);
        excluded.target.clear();
        excluded.detail = "excluded by quay.io".into();
        let text = table(&[image("nginx:1", BackupState::Verified), excluded]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let state_column = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("verified"), Some(state_column), "{text}");
        assert_eq!(lines[2].find("excluded"), Some(state_column), "{text}");
        assert!(lines[2].contains(" - "), "no target is a dash: {text}");
        assert!(lines[1].ends_with("Deployment shop/nginx:1"), "{text}");
    }
}
