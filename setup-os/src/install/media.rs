//! SetupOS's own partitions: the `config` (FAT, the provider's config.yaml) and `data`
//! (ext4, the carried releases) partitions of the disk SetupOS booted from, found through
//! sysfs beside the running root (never by `/dev/disk/by-partlabel/...`: the NVMe disks of
//! a node installed before carry partitions of the same names), and mounted read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the provider's config partition is mounted.
pub const CONFIG_DIR: &str = "/run/plinth/config";
/// Where the carried releases' partition is mounted.
pub const DATA_DIR: &str = "/run/plinth/data";

/// The two mounts, made.
#[derive(Debug, Clone)]
pub struct Media {
    pub config: PathBuf,
    pub data: PathBuf,
}

/// Find the boot disk's `config` and `data` partitions and mount them read-only.
pub fn mount(sysfs: &Path) -> Result<Media, String> {
    let st = nix::sys::stat::stat("/").map_err(|e| format!("/: {e}"))?;
    let root = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    let mut mounts = Vec::new();
    for (name, fstype, dir) in [("config", "vfat", CONFIG_DIR), ("data", "ext4", DATA_DIR)] {
        let part = plinth_state::disk::sibling_partition(sysfs, Path::new("/dev"), root, name)
            .map_err(|e| format!("SetupOS's {name} partition: {e}"))?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        let already = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(dir));
        if !already {
            let out = Command::new("mount")
                .args(["-t", fstype, "-o", "ro,nodev,nosuid,noexec"])
                .arg(&part.node)
                .arg(dir)
                .output()
                .map_err(|e| format!("mount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mount {} on {dir}: {}",
                    part.node.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        mounts.push(PathBuf::from(dir));
    }
    Ok(Media {
        config: mounts[0].clone(),
        data: mounts[1].clone(),
    })
}
