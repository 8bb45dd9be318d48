//! Progress and the closing summary of the one-shot commands: a bar on a terminal, periodic log
//! lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::copy::{Copier, CopyError, CopyReport, Outcome};

/// Tallies of finished images.
#[derive(Debug, Default)]
pub struct Tally {
    copied: AtomicU32,
    present: AtomicU32,
    warmed: AtomicU32,
    would_copy: AtomicU32,
    failed: AtomicU32,
    /// Images whose related artifacts were looked for within the interval, so not asked again.
    looked_recently: AtomicU32,
}

/// Reports progress while images copy, then a summary.
pub struct Progress {
    copier: Copier,
    total: u64,
    started: Instant,
    tally: Arc<Tally>,
    bar: Option<ProgressBar>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    /// Starts reporting on `total` images copied by `copier`.
    pub fn start(copier: &Copier, total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} images {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let progress = Progress {
            copier: copier.clone(),
            total: total as u64,
            started: Instant::now(),
            tally: Arc::default(),
            bar,
            ticker: Mutex::new(None),
        };
        let (copier, bar, tally, started) = (
            copier.clone(),
            progress.bar.clone(),
            progress.tally.clone(),
            progress.started,
        );
        let handle = tokio::spawn(async move {
            let period = if bar.is_some() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(10)
            };
            let mut interval = tokio::time::interval(period);
            interval.tick().await;
            loop {
                interval.tick().await;
                let bytes = copier.total_bytes();
                let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                match &bar {
                    Some(bar) => bar.set_message(format!("{} ({}/s)", human_bytes(bytes), human_bytes(rate as u64))),
                    None => tracing::info!(
                        done = tally.done(),
                        total,
                        bytes,
                        rate = %format!("{}/s", human_bytes(rate as u64)),
                        "progress"
                    ),
                }
            }
        });
        *progress.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        progress
    }

    /// Records one finished image and reports it.
    pub fn finished(&self, source: &str, target: &str, result: &Result<CopyReport, CopyError>) {
        let line = match result {
            Ok(r) => {
                let counter = match r.outcome {
                    Outcome::Copied => &self.tally.copied,
                    Outcome::AlreadyPresent => &self.tally.present,
                    Outcome::Warmed => &self.tally.warmed,
                    Outcome::WouldCopy => &self.tally.would_copy,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if r.referrers.recent {
                    self.tally.looked_recently.fetch_add(1, Ordering::Relaxed);
                }
                describe(source, target, r)
            }
            Err(e) => {
                self.tally.failed.fetch_add(1, Ordering::Relaxed);
                format!("FAILED {source} → {target}: {e}")
            }
        };
        match &self.bar {
            Some(bar) => {
                bar.println(&line);
                bar.inc(1);
            }
            None if result.is_err() => tracing::error!(source, target, "{line}"),
            None => tracing::info!(source, target, "{line}"),
        }
    }

    /// Stops reporting and prints the summary; true when nothing failed.
    pub fn summary(self) -> bool {
        if let Some(handle) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let elapsed = self.started.elapsed();
        let bytes = self.copier.total_bytes();
        let t = &self.tally;
        let mut line = format!(
            "{} image{}: {} copied, {} already present, {} failed",
            self.total,
            if self.total == 1 { "" } else { "s" },
            t.copied.load(Ordering::Relaxed),
            t.present.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
        );
        let warmed = t.warmed.load(Ordering::Relaxed);
        if warmed > 0 {
            line.push_str(&format!(", {warmed} warmed through a pull-through cache"));
        }
        let would = t.would_copy.load(Ordering::Relaxed);
        if would > 0 {
            line.push_str(&format!(", {would} would be copied (dry run)"));
        }
        let recent = t.looked_recently.load(Ordering::Relaxed);
        if recent > 0 {
            line.push_str(&format!(
                "; signatures/attestations/SBOMs of {recent} looked for within referrersInterval, not asked again (sync --no-state asks now)"
            ));
        }
        let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
        line.push_str(&format!(
            "; {} transferred in {:.1}s ({}/s)",
            human_bytes(bytes),
            elapsed.as_secs_f64(),
            human_bytes(rate as u64)
        ));
        eprintln!("{line}");
        t.failed.load(Ordering::Relaxed) == 0
    }
}

impl Tally {
    fn done(&self) -> u32 {
        [
            &self.copied,
            &self.present,
            &self.warmed,
            &self.would_copy,
            &self.failed,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// One line saying what a copy did.
pub fn describe(source: &str, target: &str, r: &CopyReport) -> String {
    let digest = r
        .digest
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "unknown digest".into());
    let verb = match r.outcome {
        Outcome::Copied => "copied",
        Outcome::AlreadyPresent => "already present",
        Outcome::Warmed => "warmed",
        Outcome::WouldCopy => "would copy (dry run)",
    };
    let mut line = format!("{verb}: {source} → {target} ({digest}");
    if r.outcome == Outcome::Warmed {
        line.push_str(&format!(
            "; {} blobs read through; {}",
            r.blobs_warmed,
            human_bytes(r.bytes)
        ));
    }
    if r.outcome == Outcome::Copied {
        line.push_str(&format!(
            "; blobs: {} transferred, {} mounted, {} present; {}",
            r.blobs_transferred,
            r.blobs_mounted,
            r.blobs_skipped,
            human_bytes(r.bytes)
        ));
    }
    if r.filtered {
        line.push_str("; platform-filtered index, new digest");
    }
    let referrers = &r.referrers;
    if let Some(error) = &referrers.error {
        line.push_str(&format!("; signatures/attestations/SBOMs failed: {error}"));
    } else if referrers.found > 0 {
        line.push_str(&format!(
            "; signatures/attestations/SBOMs: {} at the target, {} copied",
            referrers.found,
            referrers.copied_total()
        ));
    }
    if !r.missing_platforms.is_empty() {
        let missing: Vec<String> = r.missing_platforms.iter().map(ToString::to_string).collect();
        line.push_str(&format!("; source lacks {}", missing.join(", ")));
    }
    line.push(')');
    line
}

/// `1.5 GiB`, `320 KiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (900 << 20, "900.0 MiB"),
            (3 << 30, "3.0 GiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want);
        }
    }
}
