//! What `copycat sync` keeps between runs: its looks for the images' signatures, attestations and
//! SBOMs, so an image already at the target is looked at once per `referrersInterval` across runs
//! (a cron job every few minutes asks the source once an interval, as the daemon does) instead of at
//! every run. An image the run has to write is always looked at.
//!
//! The file is a cache: a missing, unreadable, damaged or oversized (past 128 MiB) one costs one
//! look per image, never an image; a write that fails is a warning. Two runs writing at once lose
//! nothing but a look.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::copy::referrers::{MAX_LOOKS, ReferrerLook};
use crate::reference::Digest;

/// The file's name under the state directory.
const FILE_NAME: &str = "sync-state.json";
/// The format written (a file of another version is read as empty).
const VERSION: u32 = 1;
/// Largest file read: [`MAX_LOOKS`] looks of long references fit in well under it.
const MAX_FILE_BYTES: u64 = 128 << 20;

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    version: u32,
    referrer_looks: Vec<ReferrerLook>,
}

/// Where the state is kept: `--state FILE`; none with `--no-state`; else
/// `$XDG_STATE_HOME/copycat/sync-state.json`, else `$HOME/.local/state/copycat/sync-state.json`;
/// none when neither variable is set.
pub fn locate(state: Option<&Path>, no_state: bool, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if no_state {
        return None;
    }
    if let Some(path) = state {
        return Some(path.to_owned());
    }
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    let dir = non_empty("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".local/state")))?;
    Some(dir.join("copycat").join(FILE_NAME))
}

/// The looks kept at `path`; none (with a warning naming the file) when it cannot be read.
pub fn load(path: &Path) -> Vec<ReferrerLook> {
    match read(path) {
        Ok(looks) => looks,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error,
                "ignoring the sync state: every image's signatures, attestations and SBOMs are looked for in this run");
            Vec::new()
        }
    }
}

fn read(path: &Path) -> Result<Vec<ReferrerLook>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!("version {} (this copycat reads {VERSION})", file.version));
    }
    Ok(file.referrer_looks)
}

/// Writes `looks` to `path`, merged with what the file holds now (another run may have written it
/// meanwhile): the newest look per image, none older than `interval`, at most [`MAX_LOOKS`]. A
/// failure is a warning naming the file.
pub fn save(path: &Path, looks: Vec<ReferrerLook>, interval: Duration) {
    let current = read(path).unwrap_or_default();
    let merged = merge(current.into_iter().chain(looks), interval, SystemTime::now());
    if let Err(error) = write(path, &merged) {
        tracing::warn!(file = %path.display(), %error,
            "cannot keep the sync state: the next run looks for every image's signatures, attestations and SBOMs again");
    }
}

/// The newest look per (source repository, target repository, digest), within `interval` of `now`, newest first, at most [`MAX_LOOKS`].
fn merge(looks: impl IntoIterator<Item = ReferrerLook>, interval: Duration, now: SystemTime) -> Vec<ReferrerLook> {
    let oldest = now
        .checked_sub(interval)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut newest: HashMap<(String, String, Digest), ReferrerLook> = HashMap::new();
    for look in looks.into_iter().filter(|l| l.at > oldest) {
        let key = (
            look.source_repository.clone(),
            look.target_repository.clone(),
            look.digest.clone(),
        );
        match newest.get(&key) {
            Some(kept) if kept.at >= look.at => {}
            _ => {
                newest.insert(key, look);
            }
        }
    }
    let mut merged: Vec<ReferrerLook> = newest.into_values().collect();
    merged.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.target.cmp(&b.target)));
    merged.truncate(MAX_LOOKS as usize);
    merged
}

/// Writes the file whole (a temporary file renamed over it), readable by its owner only.
fn write(path: &Path, looks: &[ReferrerLook]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let file = StateFile {
        version: VERSION,
        referrer_looks: looks.to_vec(),
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = write_private(&temporary, &bytes).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn look(repository: &str, digest: &str, at: u64) -> ReferrerLook {
        ReferrerLook {
            source: format!("src.io/{repository}:1"),
            target: format!("dst.io/{repository}:1"),
            source_repository: format!("src.io/{repository}"),
            target_repository: format!("dst.io/{repository}"),
            digest: digest.parse().unwrap(),
            at,
        }
    }

    #[test]
    fn the_file_is_found_where_the_flags_and_the_environment_say() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let given = Path::new("/tmp/given.json");
        // (--state, --no-state, environment, where)
        type Case = (
            Option<&'static Path>,
            bool,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: [Case; 6] = [
            (Some(given), false, &[("HOME", "/home/u")], Some("/tmp/given.json")),
            (None, true, &[("HOME", "/home/u")], None),
            (
                None,
                false,
                &[("HOME", "/home/u"), ("XDG_STATE_HOME", "/var/st")],
                Some("/var/st/copycat/sync-state.json"),
            ),
            (
                None,
                false,
                &[("HOME", "/home/u"), ("XDG_STATE_HOME", "")],
                Some("/home/u/.local/state/copycat/sync-state.json"),
            ),
            (None, false, &[], None),
            (None, false, &[("HOME", "")], None),
        ];
        for (state, no_state, vars, want) in cases {
            assert_eq!(
                locate(state, no_state, env(vars)),
                want.map(PathBuf::from),
                "{state:?} {no_state} {vars:?}"
            );
        }
    }

    #[test]
    fn merging_keeps_the_newest_look_per_image_within_the_interval() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let hour = Duration::from_secs(3600);
        // (looks, those kept: repository, digest, when)
        type Case = (Vec<ReferrerLook>, Vec<(&'static str, &'static str, u64)>);
        let cases: [Case; 4] = [
            (vec![], vec![]),
            (
                vec![look("a", D1, 9_000), look("a", D1, 9_500), look("a", D1, 9_200)],
                vec![("a", D1, 9_500)],
            ),
            // Another digest of the same repository, another repository: both kept, newest first.
            (
                vec![look("a", D1, 9_000), look("a", D2, 9_100), look("b", D1, 8_000)],
                vec![("a", D2, 9_100), ("a", D1, 9_000), ("b", D1, 8_000)],
            ),
            // A look as old as the interval or older is gone.
            (vec![look("a", D1, 6_400), look("b", D1, 6_401)], vec![("b", D1, 6_401)]),
        ];
        for (looks, want) in cases {
            let got: Vec<(String, String, u64)> = merge(looks, hour, now)
                .into_iter()
                .map(|l| (l.source_repository, l.digest.to_string(), l.at))
                .collect();
            let want: Vec<(String, String, u64)> = want
                .into_iter()
                .map(|(r, d, at)| (format!("src.io/{r}"), d.to_owned(), at))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_damaged_or_foreign_file_reads_as_empty_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.json");
        assert!(load(&path).is_empty(), "a missing file is no error");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for damaged in ["{not json", r#"{"version": 99, "referrerLooks": []}"#] {
            std::fs::write(&path, damaged).unwrap();
            assert!(read(&path).is_err(), "{damaged}");
            assert!(load(&path).is_empty());
        }
        // A file past the bound is not read whole (a sparse file: no disk is used).
        let huge = std::fs::File::create(&path).unwrap();
        huge.set_len(MAX_FILE_BYTES + 1).unwrap();
        drop(huge);
        assert_eq!(read(&path).unwrap_err(), "larger than 128 MiB");
        assert!(load(&path).is_empty());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        save(&path, vec![look("a", D1, now)], Duration::from_secs(3600));
        save(&path, vec![look("b", D2, now)], Duration::from_secs(3600));
        let kept: Vec<String> = load(&path).into_iter().map(|l| l.source_repository).collect();
        assert_eq!(kept.len(), 2, "the second run adds to the first: {kept:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
