//! System users of the overlay's `usr/lib/sysusers.d/*.conf`, written into the image's
//! /etc/passwd, group, shadow and gshadow at build time: the root is read-only under
//! dm-verity, so systemd-sysusers cannot add them at boot. The real `systemd-sysusers
//! --root` runs in a scratch root holding only copies of those four files (the overlay's copy
//! where it has one) and the conf files, named on its command line, with a cleared
//! environment and SOURCE_DATE_EPOCH (shadow's last change day), so nothing of the build
//! host is read. The results replace the four files with the package root's modes and groups
//! (Debian: shadow and gshadow 0640, group `shadow`); sysusers' backups (`passwd-`, …) and
//! its lock file stay in the scratch root.

use super::overlay::{self, Change, What};
use super::tool::{self, ToolError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the overlay's sysusers.d files are.
pub const SYSUSERS_DIR: &str = "usr/lib/sysusers.d";

/// The user and group databases sysusers writes, with their modes where the root has none.
const DATABASES: [(&str, u32); 4] = [
    ("etc/passwd", 0o644),
    ("etc/group", 0o644),
    ("etc/shadow", 0o640),
    ("etc/gshadow", 0o640),
];

/// Why the system users could not be written.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("systemd-sysusers refused the overlay's sysusers.d files ({status}):\n{output}\n  command: {command}\n  hint: fix the line it names (see sysusers.d(5); a GECOS field cannot hold a colon)")]
    Refused {
        status: String,
        command: String,
        /// Its output, conf file paths given as the overlay's sources.
        output: String,
    },
    #[error(transparent)]
    Tool(ToolError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// The overlay's sysusers.d files, (name, source), sorted by name.
pub fn conf_files(changes: &[Change]) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = changes
        .iter()
        .filter(|c| c.path.parent() == Some(Path::new(SYSUSERS_DIR)))
        .filter_map(|c| match &c.what {
            What::File { source, .. } => {
                let name = c.path.file_name()?.to_str()?;
                name.ends_with(".conf")
                    .then(|| (name.to_string(), source.clone()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Run systemd-sysusers on the overlay's sysusers.d files against the users and groups of
/// `root` as `changes` leave them, in the empty-or-absent scratch directory `scratch`, and
/// put the four resulting databases into `changes`. Nothing to do without conf files.
pub fn apply(
    changes: &mut Vec<Change>,
    root: &Path,
    scratch: &Path,
    epoch: i64,
) -> Result<(), UsersError> {
    let confs = conf_files(changes);
    if confs.is_empty() {
        return Ok(());
    }
    let io = |path: &Path, e: std::io::Error| UsersError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).map_err(|e| io(scratch, e))?;
    }
    let etc = scratch.join("etc");
    let conf_dir = scratch.join(SYSUSERS_DIR);
    for dir in [&etc, &conf_dir] {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    // (path in the root, mode, gid) of each database, from the package root's file.
    let mut owners = Vec::new();
    for (rel, default_mode) in DATABASES {
        let bytes = overlay::read_file(changes, root, rel).map_err(|e| io(&root.join(rel), e))?;
        let (mode, gid) = match std::fs::metadata(root.join(rel)) {
            Ok(m) => (m.mode() & 0o7777, m.gid()),
            Err(_) => (default_mode, 0),
        };
        let copy = scratch.join(rel);
        std::fs::write(&copy, bytes).map_err(|e| io(&copy, e))?;
        owners.push((rel, mode, gid));
    }
    let mut cmd = Command::new("systemd-sysusers");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .arg(format!("--root={}", scratch.display()));
    // Conf paths in sysusers' messages, and the overlay sources they are copies of.
    let mut names = Vec::new();
    for (name, source) in &confs {
        let copy = conf_dir.join(name);
        std::fs::copy(source, &copy).map_err(|e| io(source, e))?;
        cmd.arg(&copy);
        names.push((copy.display().to_string(), source.display().to_string()));
    }
    match tool::run("systemd-sysusers", "systemd", &mut cmd) {
        Ok(_) => {}
        Err(ToolError::Failed {
            status,
            command,
            output,
            ..
        }) => {
            let output = names
                .iter()
                .fold(output, |text, (copy, source)| text.replace(copy, source));
            return Err(UsersError::Refused {
                status,
                command,
                output,
            });
        }
        Err(e) => return Err(UsersError::Tool(e)),
    }
    for (rel, mode, gid) in owners {
        overlay::put_file_group(changes, root, rel, &scratch.join(rel), mode, gid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const EPOCH: i64 = 1_700_000_000;

    /// A Debian-like root: root, daemon, nobody; group shadow (gid 42) owning shadow and
    /// gshadow (when this user may give files that group). Returns the expected gid of those.
    fn fake_root(root: &Path) -> u32 {
        let etc = root.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let files = [
            (
                "passwd",
                "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                0o644,
            ),
            (
                "group",
                "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nnogroup:x:65534:\n",
                0o644,
            ),
            (
                "shadow",
                "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
                0o640,
            ),
            (
                "gshadow",
                "root:*::\ndaemon:*::\nshadow:*::\nnogroup:*::\n",
                0o640,
            ),
        ];
        for (name, text, mode) in files {
            let path = etc.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut gid = 42;
        for name in ["shadow", "gshadow"] {
            let path = etc.join(name);
            if std::os::unix::fs::chown(&path, None, Some(42)).is_err() {
                gid = std::fs::metadata(&path).unwrap().gid();
            }
        }
        gid
    }

    /// The overlay's changes: one sysusers.d conf file (and an unrelated file).
    fn overlay_changes(dir: &Path, conf: &str) -> Vec<Change> {
        let overlay = dir.join("overlay");
        std::fs::create_dir_all(overlay.join(SYSUSERS_DIR)).unwrap();
        std::fs::write(overlay.join(SYSUSERS_DIR).join("test-qemu.conf"), conf).unwrap();
        std::fs::write(overlay.join(SYSUSERS_DIR).join("README"), "not a conf").unwrap();
        overlay::plan(&overlay, &dir.join("root")).unwrap()
    }

    fn source<'a>(changes: &'a [Change], rel: &str) -> (&'a Path, u32, u32) {
        match changes.iter().find(|c| c.path == Path::new(rel)) {
            Some(Change {
                what: What::File { source, mode, gid },
                replaces: true,
                ..
            }) => (source, *mode, *gid),
            other => panic!("{rel}: {other:?}"),
        }
    }

    #[test]
    fn sysusers_adds_the_user_reproducibly_with_modes_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let shadow_gid = fake_root(&root);
        let conf =
            "# test user\nu test-qemu - \"plinth test QEMU\" /nonexistent /usr/sbin/nologin\n";
        let mut outputs = Vec::new();
        for run in ["a", "b"] {
            let mut changes = overlay_changes(dir.path(), conf);
            apply(
                &mut changes,
                &root,
                &dir.path().join(format!("scratch-{run}")),
                EPOCH,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut bytes = Vec::new();
            for (rel, mode, gid) in [
                ("etc/passwd", 0o644, 0),
                ("etc/group", 0o644, 0),
                ("etc/shadow", 0o640, shadow_gid),
                ("etc/gshadow", 0o640, shadow_gid),
            ] {
                let (src, m, g) = source(&changes, rel);
                assert_eq!((m, g), (mode, gid), "{rel}");
                bytes.push(std::fs::read(src).unwrap());
            }
            // Only the four databases are added: no backups, no lock file.
            assert!(!changes.iter().any(|c| {
                let p = c.path.to_string_lossy();
                p.ends_with('-') || p.ends_with(".pwd.lock")
            }));
            outputs.push(bytes);
        }
        assert!(outputs[0] == outputs[1], "two runs differ");
        let text = |i: usize| String::from_utf8(outputs[0][i].clone()).unwrap();
        let (passwd, group, shadow) = (text(0), text(1), text(2));
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        let line = passwd
            .lines()
            .find(|l| l.starts_with("test-qemu:"))
            .unwrap_or_else(|| panic!("no test-qemu in passwd:\n{passwd}"));
        let fields: Vec<&str> = line.split(':').collect();
        assert_eq!(
            fields[4..],
            ["plinth test QEMU", "/nonexistent", "/usr/sbin/nologin"]
        );
        let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        assert!(
            (1..1000).contains(&uid) && (1..1000).contains(&gid),
            "{line}"
        );
        assert!(group.contains(&format!("\ntest-qemu:x:{gid}:")), "{group}");
        let shadow_line = shadow
            .lines()
            .find(|l| l.starts_with("test-qemu:"))
            .unwrap_or_else(|| panic!("no test-qemu in shadow:\n{shadow}"));
        let lastchg = shadow_line.split(':').nth(2).unwrap();
        assert_eq!(lastchg, (EPOCH / 86400).to_string(), "{shadow_line}");
    }

    #[test]
    fn a_bad_conf_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fake_root(&root);
        let mut changes = overlay_changes(dir.path(), "# bad\nu test:qemu - \"x\"\n");
        let err = apply(&mut changes, &root, &dir.path().join("scratch"), EPOCH).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, UsersError::Refused { .. }), "{text}");
        let conf = dir
            .path()
            .join("overlay")
            .join(SYSUSERS_DIR)
            .join("test-qemu.conf");
        assert!(text.contains(&format!("{}:2:", conf.display())), "{text}");
        // Nothing was put into the changes.
        assert!(!changes.iter().any(|c| c.path.starts_with("etc")));
    }

    #[test]
    fn without_conf_files_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut changes = Vec::new();
        let scratch = dir.path().join("scratch");
        apply(&mut changes, dir.path(), &scratch, EPOCH).unwrap();
        assert!(changes.is_empty() && !scratch.exists());
    }
}
