//! Reading the small files that configure copycat (the config file, CA files, Docker `config.json`):
//! regular files only, up to a size limit. A FIFO would hang the start and `/dev/zero` would fill the
//! memory; both (and anything too large to be a configuration) stop the start with a clear error.

use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

/// Largest configuration file read: 1 MiB, the most a Kubernetes ConfigMap or Secret can hold.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1024 * 1024;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read (missing, no permission, …).
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("not a regular file but a {0}; give the path of a file")]
    NotRegular(&'static str),
    /// Larger than the limit.
    #[error("larger than the limit of {max} bytes ({size} bytes or more)")]
    TooLarge {
        /// Bytes found (at least).
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl ReadError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The bytes of the regular file at `path` (symbolic links followed, as Kubernetes mounts them), at
/// most `max` of them. The type is checked before opening, since opening a FIFO blocks until someone
/// writes to it; the size is checked before and while reading, so a file that grows is cut short.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(describe(kind)));
    }
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > max {
        return Err(ReadError::TooLarge { size, max });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or_default());
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO (named pipe)"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.yaml");
        std::fs::write(&small, "dryRun: true\n").unwrap();
        assert_eq!(read_limited(&small, 100).unwrap(), b"dryRun: true\n");
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        assert_eq!(
            read_limited(&link, 100).unwrap(),
            b"dryRun: true\n",
            "links are followed"
        );

        let large = dir.path().join("large.yaml");
        std::fs::write(&large, vec![b'#'; 101]).unwrap();
        assert!(matches!(
            read_limited(&large, 100),
            Err(ReadError::TooLarge { size: 101, max: 100 })
        ));
        assert!(read_limited(&large, 101).is_ok());

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cases: [(&Path, &str); 3] = [
            (&fifo, "FIFO"),
            (Path::new("/dev/zero"), "character device"),
            (dir.path(), "directory"),
        ];
        for (path, kind) in cases {
            let err = read_limited(path, 100).unwrap_err();
            assert!(err.to_string().contains(kind), "{}: {err}", path.display());
        }
        let missing = read_limited(&dir.path().join("missing"), 100).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }
}
