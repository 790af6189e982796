//! The one thing the initrd reads from the node's configuration (the boot disk's `config`
//! partition, which SetupOS writes and the node provider may edit): a request to wipe the
//! state volume and start over, the file [`WIPE_FILE`] holding the UUID of the volume to wipe
//! (the boot report prints it). Naming the volume makes the request explicit and one-shot: the
//! new volume has another UUID, so a request left in place never wipes it.
//!
//! The partition is outside input: it is mounted read-only (no journal replay, no devices,
//! setuid bits or programs), the file is opened without following links and must be a regular
//! file of at most [`WIPE_MAX`] bytes, and it is unmounted again before the state is touched.

use crate::header::is_uuid;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The configuration's GPT partition name.
pub const PARTITION: &str = "config";
/// The wipe request, at the partition's top.
pub const WIPE_FILE: &str = "wipe-state";
/// The most bytes read from it (a UUID and a line end).
const WIPE_MAX: u64 = 128;
/// Where the partition is mounted while it is read.
const MOUNT_DIR: &str = "/run/plinth-state/config";

/// The UUID a wipe request names; an error says what was expected.
pub fn parse_wipe(text: &str) -> Result<String, String> {
    let uuid = text.trim();
    if is_uuid(uuid) {
        Ok(uuid.to_string())
    } else {
        Err(format!(
            "{WIPE_FILE}: expected the UUID of the state volume to wipe (36 characters, as the boot report prints it), found `{}`",
            uuid.chars().take(40).collect::<String>().escape_debug()
        ))
    }
}

/// Read the wipe request from the configuration partition `device`: `None` when there is no
/// request; an error for a request that is not one (nothing is wiped then).
pub fn read_wipe_request(device: &Path) -> Result<Option<String>, String> {
    let dir = Path::new(MOUNT_DIR);
    std::fs::create_dir_all(dir).map_err(|e| format!("{MOUNT_DIR}: {e}"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{MOUNT_DIR}: {e}"))?;
    let mounted = Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,noload,nosuid,nodev,noexec"])
        .arg(device)
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !mounted.status.success() {
        return Err(format!(
            "{}: cannot be mounted read-only: {}",
            device.display(),
            String::from_utf8_lossy(&mounted.stderr).trim()
        ));
    }
    let read = read_request(&dir.join(WIPE_FILE));
    let _ = Command::new("umount").arg(dir).status();
    read
}

/// The request file, if present: a regular file, not followed if a link.
fn read_request(path: &Path) -> Result<Option<String>, String> {
    match crate::files::read_bounded(path, WIPE_MAX) {
        Ok(text) => parse_wipe(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{WIPE_FILE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_one_volume() {
        assert_eq!(
            parse_wipe("3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8\n").unwrap(),
            "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8"
        );
        for bad in ["", "yes", "all", "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8 x"] {
            let e = parse_wipe(bad).unwrap_err();
            assert!(e.starts_with("wipe-state: expected the UUID"), "{e}");
        }
    }

    #[test]
    fn the_file_is_read_with_care() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(WIPE_FILE);
        assert_eq!(read_request(&path).unwrap(), None);
        std::fs::write(&path, "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8\n").unwrap();
        assert!(read_request(&path).unwrap().is_some());
        std::fs::write(&path, "x".repeat(200)).unwrap();
        assert!(read_request(&path).unwrap_err().contains("longer than"));
        std::fs::remove_file(&path).unwrap();
        let target = t.path().join("elsewhere");
        std::fs::write(&target, "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8\n").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(read_request(&path).unwrap_err().contains("link"));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(read_request(&path).is_err());
        std::fs::remove_dir(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_request(&path)
            .unwrap_err()
            .contains("not a regular file"));
    }
}
