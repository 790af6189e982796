//! Normalization: remove or rewrite what a package installation leaves that depends on the
//! build host or the moment (caches, logs, lock files, backups, host names, resolver config,
//! byte-code caches), then clamp every timestamp to SOURCE_DATE_EPOCH. Each rule is listed in
//! [`RULES`] with the reason it exists; the double build finds new ones.

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::path::{Path, PathBuf};

/// What to do with a path (relative to the root; `*` matches one path component's tail).
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Delete the file or the whole directory tree.
    Remove,
    /// Delete what a directory holds, keep the directory.
    Empty,
    /// Replace the file with this content (mode 0644).
    Write(&'static str),
}

/// The rules, applied in order. `{os}` in written content is replaced by the OS name.
pub const RULES: &[(&str, Action, &str)] = &[
    (
        "etc/hostname",
        Action::Write("{os}\n"),
        "mmdebstrap copies the build host's",
    ),
    (
        "etc/hosts",
        Action::Write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        "absent or the build host's",
    ),
    (
        "etc/resolv.conf",
        Action::Remove,
        "the build host's resolver",
    ),
    (
        "etc/apt/sources.list",
        Action::Write(
            "# Packages come from the image build; this system is not updated with apt.\n",
        ),
        "names the build's private repository",
    ),
    (
        "etc/machine-id",
        Action::Write(""),
        "generated at first boot",
    ),
    (
        "var/lib/dbus/machine-id",
        Action::Remove,
        "generated at first boot",
    ),
    (
        "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
        Action::Remove,
        "the build's dpkg options (force-unsafe-io)",
    ),
    (
        "etc/nvme/hostid",
        Action::Remove,
        "random per-machine NVMe host id from nvme-cli's postinst: never shared",
    ),
    (
        "etc/nvme/hostnqn",
        Action::Remove,
        "random per-machine NVMe host NQN from nvme-cli's postinst: never shared",
    ),
    ("etc/.pwd.lock", Action::Remove, "lock file"),
    ("etc/passwd-", Action::Remove, "backup"),
    ("etc/group-", Action::Remove, "backup"),
    ("etc/shadow-", Action::Remove, "backup"),
    ("etc/gshadow-", Action::Remove, "backup"),
    ("etc/subuid-", Action::Remove, "backup"),
    ("etc/subgid-", Action::Remove, "backup"),
    ("var/lib/dpkg/status-old", Action::Remove, "backup"),
    ("var/lib/dpkg/available-old", Action::Remove, "backup"),
    ("var/cache/debconf/config.dat-old", Action::Remove, "backup"),
    (
        "var/cache/debconf/templates.dat-old",
        Action::Remove,
        "backup",
    ),
    (
        "var/cache/apt",
        Action::Empty,
        "package cache (partial/ is owned by _apt)",
    ),
    (
        "var/lib/apt/lists",
        Action::Empty,
        "index lists of the private repository",
    ),
    (
        "var/cache/ldconfig/aux-cache",
        Action::Remove,
        "holds inode numbers and times",
    ),
    ("var/cache/man", Action::Empty, "man-db index with times"),
    (
        "var/lib/systemd/random-seed",
        Action::Remove,
        "a random seed must not be shared",
    ),
    ("var/log/dpkg.log", Action::Remove, "log with times"),
    ("var/log/alternatives.log", Action::Remove, "log with times"),
    ("var/log/bootstrap.log", Action::Remove, "log with times"),
    ("var/log/apt", Action::Empty, "logs with times"),
    (
        "boot/initrd.img-*",
        Action::Remove,
        "made at package time; the UKI carries plinth's own",
    ),
    ("tmp", Action::Empty, "scratch"),
    ("var/tmp", Action::Empty, "scratch"),
];

/// Why normalization failed.
#[derive(Debug, thiserror::Error)]
#[error("normalizing {path}: {message}")]
pub struct NormalizeError {
    pub path: String,
    pub message: String,
}

/// Apply [`RULES`], drop Python byte-code caches, and clamp every time to `epoch`.
pub fn normalize(root: &Path, os: &str, epoch: i64) -> Result<(), NormalizeError> {
    for (path, action, _why) in RULES {
        for target in expand(root, path)? {
            apply(root, &target, *action, os)?;
        }
    }
    remove_pycache(root)?;
    clamp_times(root, epoch)
}

/// The paths a rule names: itself, or with a trailing `*` every entry of its directory whose
/// name starts with what comes before the `*`.
fn expand(root: &Path, rule: &str) -> Result<Vec<PathBuf>, NormalizeError> {
    let Some(prefix) = rule.strip_suffix('*') else {
        return Ok(vec![root.join(rule)]);
    };
    let (dir, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let dir = root.join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(start))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

fn err(path: &Path, e: impl std::fmt::Display) -> NormalizeError {
    NormalizeError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn apply(root: &Path, path: &Path, action: Action, os: &str) -> Result<(), NormalizeError> {
    // Never follow a symlink out of the root (e.g. resolv.conf → /run/...).
    let meta = std::fs::symlink_metadata(path);
    match action {
        Action::Remove => match meta {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| err(path, e)),
            Ok(_) => std::fs::remove_file(path).map_err(|e| err(path, e)),
            Err(_) => Ok(()),
        },
        Action::Empty => {
            if !meta.is_ok_and(|m| m.is_dir()) {
                return Ok(());
            }
            for entry in std::fs::read_dir(path).map_err(|e| err(path, e))? {
                let entry = entry.map_err(|e| err(path, e))?;
                apply(root, &entry.path(), Action::Remove, os)?;
            }
            Ok(())
        }
        Action::Write(content) => {
            if meta.is_ok() {
                apply(root, path, Action::Remove, os)?;
            }
            if let Some(parent) = path.parent() {
                if !parent.starts_with(root) || !parent.is_dir() {
                    return Ok(());
                }
            }
            std::fs::write(path, content.replace("{os}", os)).map_err(|e| err(path, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| err(path, e))
        }
    }
}

/// Python writes `__pycache__/*.pyc` with the build's times and paths.
fn remove_pycache(root: &Path) -> Result<(), NormalizeError> {
    for path in walk(root)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if (name == "__pycache__" && is_dir) || (name.ends_with(".pyc") && !is_dir) {
            apply(root, &path, Action::Remove, "")?;
        }
    }
    Ok(())
}

/// Every path below `root` (not following symlinks), parents before children, sorted.
pub fn walk(root: &Path) -> Result<Vec<PathBuf>, NormalizeError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| err(&dir, e)))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries.into_iter().rev() {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Set access and modification times of every path (and the root) to at most `epoch`.
pub fn clamp_times(root: &Path, epoch: i64) -> Result<(), NormalizeError> {
    let mut paths = walk(root)?;
    paths.push(root.to_path_buf());
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        use std::os::unix::fs::MetadataExt;
        let mtime = meta.mtime().min(epoch);
        let t = TimeSpec::new(mtime, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| err(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn rules_apply_and_times_are_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "etc/apt",
            "var/cache/apt/archives/partial",
            "usr/lib/python3/__pycache__",
            "tmp",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/hostname"), "buildhost\n").unwrap();
        std::fs::write(root.join("etc/passwd-"), "x").unwrap();
        std::fs::write(
            root.join("usr/lib/python3/__pycache__/a.cpython-311.pyc"),
            "x",
        )
        .unwrap();
        std::fs::write(root.join("tmp/junk"), "x").unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/initrd.img-6.1.0-56-amd64"), "x").unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-56-amd64"), "k").unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        normalize(root, "guest-os", 1_700_000_000).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "guest-os\n"
        );
        assert!(!root.join("etc/passwd-").exists());
        assert!(!root.join("boot/initrd.img-6.1.0-56-amd64").exists());
        assert!(root.join("boot/vmlinuz-6.1.0-56-amd64").exists());
        assert!(std::fs::symlink_metadata(root.join("etc/resolv.conf")).is_err());
        assert!(!root.join("usr/lib/python3/__pycache__").exists());
        assert!(root.join("var/cache/apt").is_dir());
        assert!(!root.join("var/cache/apt/archives").exists());
        assert!(!root.join("tmp/junk").exists() && root.join("tmp").is_dir());
        for path in walk(root).unwrap() {
            let m = std::fs::symlink_metadata(&path).unwrap();
            assert!(m.mtime() <= 1_700_000_000, "{}", path.display());
        }
    }
}
