//! The OS's overlay: what `<os>/rootfs/` (and the agent binary) change in the installed root,
//! as a list of [`Change`]s that the ext4 stage writes into the package stage's root image.
//! Git keeps only "file" or "executable", and a checkout's umask decides the rest, so modes are
//! normalized the same way (directories 0755, files 0644 or 0755), owners are root (group
//! root too, except for files the build generates with another group: [`put_file_group`]),
//! and symlinks are kept as links. An OS without an overlay directory changes nothing. The
//! overlay is applied after normalization: what it says is what the image holds. A profile
//! may name its own overlay directory beside `rootfs/` (os.yaml `profiles.<name>.overlay`),
//! laid over it ([`dirs`], [`plan_layers`]): its files replace `rootfs/`'s.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the overlay could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay {path}: {message}")]
    Io { path: String, message: String },
    #[error("overlay {path}: only directories, regular files and symlinks can be in an overlay\n  hint: remove it from the source tree")]
    Special { path: String },
    #[error("overlay {path}: replaces a directory of the image with a file (or the reverse)\n  hint: change the overlay path, or remove the package content in a later stage")]
    Kind { path: String },
    #[error("overlay {path}: no such directory\n  hint: os.yaml's profile names it as its overlay; create it beside rootfs/, or remove the setting")]
    Missing { path: String },
}

/// What one path of the root becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A directory, mode 0755 (made if the root has none).
    Dir,
    /// A regular file with the content of `source`, this mode and group id (owner root).
    File {
        source: PathBuf,
        mode: u32,
        gid: u32,
    },
    /// A symbolic link to `target`.
    Symlink { target: PathBuf },
}

/// One path of the root (relative, e.g. `etc/motd`) and what it becomes; owner root, group
/// root unless [`What::File`] names another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub what: What,
    /// The root has a file or link there already, which this one replaces.
    pub replaces: bool,
    /// The root has that directory already.
    pub exists: bool,
}

/// The overlay directories of `profile`, in the order they are laid: `<os>/rootfs/`, then
/// the profile's own (`profiles.<name>.overlay`).
pub fn dirs(workspace: &Path, profile: &crate::spec::Profile) -> Vec<PathBuf> {
    let os = workspace.join(&profile.os);
    std::iter::once(os.join("rootfs"))
        .chain(profile.overlay.as_ref().map(|d| os.join(d)))
        .collect()
}

/// The changes of the overlays `dirs` laid in order over `root` ([`plan`] of each): a later
/// file or link replaces an earlier one at the same path; a later one of another kind (a
/// file where an earlier overlay has a directory) is refused. Every directory but the first
/// must exist.
pub fn plan_layers(dirs: &[PathBuf], root: &Path) -> Result<Vec<Change>, OverlayError> {
    let mut changes: Vec<Change> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 && !dir.is_dir() {
            return Err(OverlayError::Missing {
                path: dir.display().to_string(),
            });
        }
        for change in plan(dir, root)? {
            let is_dir = matches!(change.what, What::Dir);
            match changes.iter().position(|c| c.path == change.path) {
                None => changes.push(change),
                Some(at) if matches!(changes[at].what, What::Dir) != is_dir => {
                    return Err(OverlayError::Kind {
                        path: change.path.display().to_string(),
                    })
                }
                Some(_) if is_dir => {}
                Some(at) => {
                    // Whether the root itself has a file there, as the earlier overlay's
                    // change said (the earlier overlay's file is never written).
                    let replaced = changes.remove(at);
                    changes.push(Change {
                        replaces: replaced.replaces,
                        ..change
                    });
                }
            }
        }
    }
    Ok(changes)
}

/// The changes `overlay` makes to the tree `root`, parents before children. Refuses a file
/// over a directory of `root` (or the reverse) and anything but directories, files and links.
pub fn plan(overlay: &Path, root: &Path) -> Result<Vec<Change>, OverlayError> {
    if !overlay.is_dir() {
        return Ok(Vec::new());
    }
    let io = |path: &Path, e: std::io::Error| OverlayError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let paths = super::normalize::walk(overlay).map_err(|e| OverlayError::Io {
        path: e.path,
        message: e.message,
    })?;
    let mut changes = Vec::new();
    for src in &paths {
        let rel = src.strip_prefix(overlay).unwrap_or(src).to_path_buf();
        let meta = std::fs::symlink_metadata(src).map_err(|e| io(src, e))?;
        let existing = std::fs::symlink_metadata(root.join(&rel)).ok();
        let ft = meta.file_type();
        let kind_error = || OverlayError::Kind {
            path: rel.display().to_string(),
        };
        let what = if ft.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                return Err(kind_error());
            }
            What::Dir
        } else if ft.is_file() || ft.is_symlink() {
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(kind_error());
            }
            if ft.is_symlink() {
                What::Symlink {
                    target: std::fs::read_link(src).map_err(|e| io(src, e))?,
                }
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                What::File {
                    source: src.clone(),
                    mode: if exec { 0o755 } else { 0o644 },
                    gid: 0,
                }
            }
        } else {
            return Err(OverlayError::Special {
                path: rel.display().to_string(),
            });
        };
        let dir = matches!(what, What::Dir);
        changes.push(Change {
            path: rel,
            what,
            replaces: existing.is_some() && !dir,
            exists: existing.is_some() && dir,
        });
    }
    Ok(changes)
}

/// Make `rel` a regular file of the root with the content of `source` (a file the build
/// generated, or the agent binary), replacing what the root or the overlay had there; group
/// root.
pub fn put_file(changes: &mut Vec<Change>, root: &Path, rel: &str, source: &Path, mode: u32) {
    put_file_group(changes, root, rel, source, mode, 0);
}

/// A directory `rel` (mode 0755), unless the overlay or the root has it already.
pub fn put_dir(changes: &mut Vec<Change>, root: &Path, rel: &str) {
    let path = PathBuf::from(rel);
    if changes.iter().any(|c| c.path == path) {
        return;
    }
    let exists = root.join(&path).is_dir();
    changes.push(Change {
        path,
        what: What::Dir,
        replaces: false,
        exists,
    });
}

/// [`put_file`] with group id `gid` (e.g. /etc/shadow, group `shadow`).
pub fn put_file_group(
    changes: &mut Vec<Change>,
    root: &Path,
    rel: &str,
    source: &Path,
    mode: u32,
    gid: u32,
) {
    let path = PathBuf::from(rel);
    let before = changes.len();
    changes.retain(|c| c.path != path);
    changes.push(Change {
        replaces: changes.len() < before || std::fs::symlink_metadata(root.join(&path)).is_ok(),
        exists: false,
        path,
        what: What::File {
            source: source.to_path_buf(),
            mode,
            gid,
        },
    });
}

/// Read a regular file of the root as the overlay leaves it: the overlay's own copy when it
/// has one, else the root's.
pub fn read_file(changes: &[Change], root: &Path, rel: &str) -> std::io::Result<Vec<u8>> {
    match changes.iter().find(|c| c.path == Path::new(rel)) {
        Some(Change {
            what: What::File { source, .. },
            ..
        }) => std::fs::read(source),
        Some(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the overlay makes {rel} a directory or a link: a regular file is needed"),
        )),
        None => std::fs::read(root.join(rel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    }

    #[test]
    fn modes_are_normalized_links_kept_and_kinds_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (overlay, root) = (dir.path().join("overlay"), dir.path().join("root"));
        std::fs::create_dir_all(overlay.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), "old").unwrap();
        std::fs::write(overlay.join("etc/motd"), "new").unwrap();
        set_mode(&overlay.join("etc/motd"), 0o600);
        std::fs::write(overlay.join("etc/systemd/system/a.service"), "[Unit]").unwrap();
        std::fs::write(overlay.join("etc/run.sh"), "#!/bin/sh").unwrap();
        set_mode(&overlay.join("etc/run.sh"), 0o700);
        std::os::unix::fs::symlink("motd", overlay.join("etc/motd.link")).unwrap();
        let changes = plan(&overlay, &root).unwrap();
        let paths: Vec<String> = changes
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "etc",
                "etc/motd",
                "etc/motd.link",
                "etc/run.sh",
                "etc/systemd",
                "etc/systemd/system",
                "etc/systemd/system/a.service"
            ]
        );
        let get = |p: &str| changes.iter().find(|c| c.path == Path::new(p)).unwrap();
        assert!(get("etc").exists && !get("etc").replaces);
        assert!(!get("etc/systemd").exists);
        assert!(get("etc/motd").replaces);
        assert!(matches!(
            get("etc/motd").what,
            What::File { mode: 0o644, .. }
        ));
        assert!(matches!(
            get("etc/run.sh").what,
            What::File { mode: 0o755, .. }
        ));
        assert_eq!(
            get("etc/motd.link").what,
            What::Symlink {
                target: "motd".into()
            }
        );
        assert_eq!(read_file(&changes, &root, "etc/motd").unwrap(), b"new");
        assert!(plan(&dir.path().join("none"), &root).unwrap().is_empty());
        // A file over a directory is refused.
        std::fs::create_dir_all(overlay.join("x")).unwrap();
        std::fs::write(root.join("x"), "file").unwrap();
        let err = plan(&overlay, &root).unwrap_err();
        assert!(matches!(err, OverlayError::Kind { .. }), "{err}");
    }

    #[test]
    fn a_profile_overlay_replaces_files_of_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let (base, test, root) = (
            dir.path().join("rootfs"),
            dir.path().join("rootfs-test"),
            dir.path().join("root"),
        );
        for d in [&base, &test] {
            std::fs::create_dir_all(d.join("usr/lib/plinth")).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(base.join("usr/lib/plinth/state.conf"), "key_source=snp\n").unwrap();
        std::fs::write(base.join("usr/lib/plinth/other"), "kept").unwrap();
        std::fs::write(
            test.join("usr/lib/plinth/state.conf"),
            "key_source=tpm2-hmac\n",
        )
        .unwrap();
        let changes = plan_layers(&[base.clone(), test.clone()], &root).unwrap();
        let paths: Vec<String> = changes
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/lib",
                "usr/lib/plinth",
                "usr/lib/plinth/other",
                "usr/lib/plinth/state.conf"
            ]
        );
        assert_eq!(
            read_file(&changes, &root, "usr/lib/plinth/state.conf").unwrap(),
            b"key_source=tpm2-hmac\n"
        );
        // The root has no state.conf: nothing there to remove before writing it.
        let conf = changes
            .iter()
            .find(|c| c.path == Path::new("usr/lib/plinth/state.conf"))
            .unwrap();
        assert!(!conf.replaces);
        // The base alone is what a profile without an overlay gets.
        let alone = plan_layers(std::slice::from_ref(&base), &root).unwrap();
        assert_eq!(
            read_file(&alone, &root, "usr/lib/plinth/state.conf").unwrap(),
            b"key_source=snp\n"
        );
        // A directory where rootfs/ has a file is refused; a missing profile overlay is named.
        std::fs::create_dir_all(test.join("usr/lib/plinth/other")).unwrap();
        let err = plan_layers(&[base.clone(), test.clone()], &root).unwrap_err();
        assert!(matches!(err, OverlayError::Kind { .. }), "{err}");
        let err = plan_layers(&[base, dir.path().join("rootfs-none")], &root).unwrap_err();
        assert!(
            err.to_string().contains("rootfs-none: no such directory"),
            "{err}"
        );
    }
}
