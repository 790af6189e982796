//! The OS's overlay: `<os>/rootfs/` copied over the installed root. Git keeps only "file" or
//! "executable", and a checkout's umask decides the rest, so modes are normalized the same way
//! (directories 0755, files 0644 or 0755), owners are root, and symlinks are kept as links.
//! An OS without an overlay directory is a no-op.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why the overlay could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay {path}: {message}")]
    Io { path: String, message: String },
    #[error("overlay {path}: only directories, regular files and symlinks can be in an overlay\n  hint: remove it from the source tree")]
    Special { path: String },
    #[error("overlay {path}: replaces a directory of the image with a file (or the reverse)\n  hint: change the overlay path, or remove the package content in a later stage")]
    Kind { path: String },
}

/// Copy `overlay` over `root`; returns the number of paths written.
pub fn apply(overlay: &Path, root: &Path) -> Result<usize, OverlayError> {
    if !overlay.is_dir() {
        return Ok(0);
    }
    let io = |path: &Path, e: std::io::Error| OverlayError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let paths = super::normalize::walk(overlay).map_err(|e| OverlayError::Io {
        path: e.path,
        message: e.message,
    })?;
    for src in &paths {
        let rel = src.strip_prefix(overlay).unwrap_or(src);
        let dest = root.join(rel);
        let meta = std::fs::symlink_metadata(src).map_err(|e| io(src, e))?;
        let existing = std::fs::symlink_metadata(&dest).ok();
        let ft = meta.file_type();
        if ft.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    return Err(OverlayError::Kind {
                        path: rel.display().to_string(),
                    })
                }
                None => std::fs::create_dir(&dest).map_err(|e| io(&dest, e))?,
            }
            set_mode(&dest, 0o755).map_err(|e| io(&dest, e))?;
        } else if ft.is_file() || ft.is_symlink() {
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(OverlayError::Kind {
                    path: rel.display().to_string(),
                });
            }
            if existing.is_some() {
                std::fs::remove_file(&dest).map_err(|e| io(&dest, e))?;
            }
            if ft.is_symlink() {
                let target = std::fs::read_link(src).map_err(|e| io(src, e))?;
                std::os::unix::fs::symlink(target, &dest).map_err(|e| io(&dest, e))?;
            } else {
                std::fs::copy(src, &dest).map_err(|e| io(&dest, e))?;
                let exec = meta.permissions().mode() & 0o111 != 0;
                set_mode(&dest, if exec { 0o755 } else { 0o644 }).map_err(|e| io(&dest, e))?;
            }
        } else {
            return Err(OverlayError::Special {
                path: rel.display().to_string(),
            });
        }
        // Owners are root: the build runs as root, so new paths already are; keep it explicit.
        std::os::unix::fs::lchown(&dest, Some(0), Some(0)).map_err(|e| io(&dest, e))?;
    }
    Ok(paths.len())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_normalized_links_kept_and_kinds_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (overlay, root) = (dir.path().join("overlay"), dir.path().join("root"));
        std::fs::create_dir_all(overlay.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), "old").unwrap();
        std::fs::write(overlay.join("etc/motd"), "new").unwrap();
        set_mode(&overlay.join("etc/motd"), 0o600).unwrap();
        std::fs::write(overlay.join("etc/systemd/system/a.service"), "[Unit]").unwrap();
        std::fs::write(overlay.join("etc/run.sh"), "#!/bin/sh").unwrap();
        set_mode(&overlay.join("etc/run.sh"), 0o700).unwrap();
        std::os::unix::fs::symlink("motd", overlay.join("etc/motd.link")).unwrap();
        assert_eq!(apply(&overlay, &root).unwrap(), 7);
        let mode = |p: &str| {
            std::fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "new"
        );
        assert_eq!(mode("etc/motd"), 0o644);
        assert_eq!(mode("etc/run.sh"), 0o755);
        assert_eq!(mode("etc/systemd"), 0o755);
        assert_eq!(
            std::fs::read_link(root.join("etc/motd.link")).unwrap(),
            Path::new("motd")
        );
        assert_eq!(apply(&dir.path().join("none"), &root).unwrap(), 0);
        // A file over a directory is refused.
        std::fs::create_dir_all(overlay.join("x")).unwrap();
        std::fs::write(root.join("x"), "file").unwrap();
        let err = apply(&overlay, &root).unwrap_err();
        assert!(matches!(err, OverlayError::Kind { .. }), "{err}");
    }
}
