//! Reading and writing the governance record's small files: every file read is outside input
//! (a voter's staged copy, a workdir passed around, a key file), so it is opened as
//! [`plinth_release::untrusted`] opens a release's files (a regular file, never through a
//! link) and refused past a cap before it is read; every file written goes to a temporary
//! file in its own directory, is flushed and renamed over its name, so a crash or a refusal
//! leaves the old file or the new one, never half of one.

use crate::error::GovernanceError;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::Path;

/// The largest metadata file read (TUF role metadata, a staged copy, workdir state). tough's
/// own client limits are 1 MiB for root, snapshot and timestamp and 10 MiB for targets.
pub const MAX_METADATA: u64 = 10 << 20;
/// The largest key file read (a PEM private key or a public key's JSON).
pub const MAX_KEY: u64 = 16 << 10;

/// The bytes of `path`, refused past `cap` bytes; errors name the file and what it is
/// (`what`: "staged targets metadata").
pub fn read_bounded(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, GovernanceError> {
    plinth_release::untrusted::read_untrusted(path, cap).map_err(|source| GovernanceError::Read {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// `path` parsed as JSON of type `T` (at most `cap` bytes); a parse error names the file, the
/// line and column and what the file was expected to be.
pub fn read_json<T: DeserializeOwned>(
    path: &Path,
    cap: u64,
    what: &'static str,
) -> Result<T, GovernanceError> {
    let bytes = read_bounded(path, cap, what)?;
    parse_json(&bytes, path, what)
}

/// `bytes` (the content of `path`) parsed as JSON of type `T`.
pub fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<T, GovernanceError> {
    serde_json::from_slice(bytes).map_err(|e| GovernanceError::Malformed {
        path: path.to_path_buf(),
        what,
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, flushed to
/// disk, renamed over `path`. `mode` sets the file's permission bits (0o600 for a private
/// key).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GovernanceError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |source| GovernanceError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".plinth-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Write `value` as pretty JSON with a trailing newline, atomically ([`write_atomic`], mode
/// 0644).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), GovernanceError> {
    write_atomic(path, &to_json(value), 0o644)
}

/// `value` as pretty JSON with a trailing newline (how every file of the record is written).
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("governance metadata serializes");
    bytes.push(b'\n');
    bytes
}

/// Create `dir` (and its parents) with mode 0700 on the last component; an existing one
/// must be a directory only its owner can open.
pub fn create_private_dir(dir: &Path) -> Result<(), GovernanceError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| GovernanceError::Write {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(dir).map_err(io)?;
            if !md.is_dir() {
                return Err(GovernanceError::Refused {
                    what: format!("{}: not a directory", dir.display()),
                    hint: "name a new directory for the keys".into(),
                });
            }
            if md.permissions().mode() & 0o077 != 0 {
                return Err(GovernanceError::Refused {
                    what: format!(
                        "{}: mode {:o}; private keys go into a directory only its owner can open",
                        dir.display(),
                        md.permissions().mode() & 0o777
                    ),
                    hint: "name a new directory (it is made 0700), or chmod 700 this one".into(),
                });
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_and_bounded_reads_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json(&path, &serde_json::json!({"a": 1})).unwrap();
        write_json(&path, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = read_json(&path, 100, "test file").unwrap();
        assert_eq!(v["a"], 2);
        let e = read_json::<serde_json::Value>(&path, 3, "test file").unwrap_err();
        assert!(e.to_string().contains("a.json"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "{\n  \"a\": \n").unwrap();
        let e = read_json::<serde_json::Value>(&path, 100, "test file").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
