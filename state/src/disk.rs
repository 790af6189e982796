//! Which partition holds the state: the one named `data` in the GPT of the disk the running
//! root comes from, found through sysfs. Never by `/dev/disk/by-partlabel/data`: a host that
//! sees a guest's disk (or a USB stick with plinth on it) has two partitions of that name.
//!
//! The root is a device-mapper (verity) device; its first underlying device is a partition of
//! the boot disk, whose sibling entries are the other partitions. sysfs is read as outside
//! input (`--sysfs-root` points at a copy in tests): every file is bounded, every name checked
//! before it becomes a path.

use std::path::{Path, PathBuf};

/// The most bytes read from one sysfs attribute.
const ATTR_MAX: u64 = 4096;

/// Why the state partition could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: expected {expected}, found {found:?}")]
    Unexpected {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("the boot disk {disk} has no partition named `{name}`\n  hint: the image's GPT names it in os.yaml (role: data)")]
    NoPartition { disk: String, name: String },
    #[error("the boot disk {disk} has {count} partitions named `{name}`")]
    Ambiguous {
        disk: String,
        name: String,
        count: usize,
    },
}

/// A partition found: its kernel name (`vda7`), its device node and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub node: PathBuf,
    pub size: u64,
}

fn read_attr(path: &Path) -> Result<String, DiskError> {
    use std::io::Read;
    let err = |e: std::io::Error| DiskError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(ATTR_MAX)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(text)
}

/// A kernel block device name (`vda7`, `nvme0n1p3`, `dm-0`): one plain path component.
pub fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `KEY=value` from a uevent file's text.
pub fn uevent_value<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn checked_name(path: &Path, name: String) -> Result<String, DiskError> {
    if is_device_name(&name) {
        Ok(name)
    } else {
        Err(DiskError::Unexpected {
            path: path.display().to_string(),
            expected: "a block device name",
            found: name,
        })
    }
}

/// The sysfs directory of the block device `major:minor`, resolved.
fn block_dir(sysfs: &Path, major: u64, minor: u64) -> Result<PathBuf, DiskError> {
    let link = sysfs.join(format!("dev/block/{major}:{minor}"));
    std::fs::canonicalize(&link).map_err(|e| DiskError::Read {
        path: link.display().to_string(),
        message: e.to_string(),
    })
}

/// The partition under the device `dir`: itself if it is one, else (device mapper) its first
/// underlying device's, in name order.
fn underlying_partition(dir: &Path) -> Result<PathBuf, DiskError> {
    let mut dir = dir.to_path_buf();
    // dm on dm (verity on crypt, say) is followed a few levels, no further.
    for _ in 0..4 {
        if dir.join("partition").is_file() {
            return Ok(dir);
        }
        let slaves = dir.join("slaves");
        let mut names: Vec<String> = match std::fs::read_dir(&slaves) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        let Some(first) = names.into_iter().next() else {
            return Err(DiskError::Unexpected {
                path: dir.display().to_string(),
                expected: "a partition or a device-mapper device over one",
                found: "a whole disk or a device with no underlying device".into(),
            });
        };
        let first = checked_name(&slaves, first)?;
        dir = std::fs::canonicalize(slaves.join(&first)).map_err(|e| DiskError::Read {
            path: slaves.join(&first).display().to_string(),
            message: e.to_string(),
        })?;
    }
    Err(DiskError::Unexpected {
        path: dir.display().to_string(),
        expected: "a partition within 4 device-mapper levels",
        found: "a deeper stack".into(),
    })
}

/// The partition named `name` on the disk that holds the device `major:minor` (the root's),
/// read from the sysfs at `sysfs`; its node is under `dev`.
pub fn sibling_partition(
    sysfs: &Path,
    dev: &Path,
    (major, minor): (u64, u64),
    name: &str,
) -> Result<Partition, DiskError> {
    let part = underlying_partition(&block_dir(sysfs, major, minor)?)?;
    let disk = part.parent().ok_or_else(|| DiskError::Unexpected {
        path: part.display().to_string(),
        expected: "a partition inside its disk's directory",
        found: "no parent".into(),
    })?;
    let mut found = Vec::new();
    let entries = std::fs::read_dir(disk).map_err(|e| DiskError::Read {
        path: disk.display().to_string(),
        message: e.to_string(),
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !path.join("partition").is_file() {
            continue;
        }
        let uevent = read_attr(&path.join("uevent"))?;
        if uevent_value(&uevent, "PARTNAME") != Some(name) {
            continue;
        }
        let devname = uevent_value(&uevent, "DEVNAME").unwrap_or_default();
        let devname = checked_name(&path.join("uevent"), devname.to_string())?;
        let size_path = path.join("size");
        let sectors = read_attr(&size_path)?;
        let sectors: u64 = sectors.trim().parse().map_err(|_| DiskError::Unexpected {
            path: size_path.display().to_string(),
            expected: "a number of 512-byte sectors",
            found: sectors.trim().chars().take(40).collect(),
        })?;
        found.push(Partition {
            node: dev.join(&devname),
            name: devname,
            size: sectors.saturating_mul(512),
        });
    }
    let disk_name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match found.len() {
        0 => Err(DiskError::NoPartition {
            disk: disk_name,
            name: name.into(),
        }),
        1 => Ok(found.remove(0)),
        count => Err(DiskError::Ambiguous {
            disk: disk_name,
            name: name.into(),
            count,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs with disk `vda` (partitions root-a = vda2, data = vda7, plus `extra`), a verity
    /// device dm-0 over vda2 and vda3, and disk `vdb` with another `data`.
    pub(crate) fn fake_sysfs(root: &Path, extra: &[(&str, &str)]) {
        let dev = root.join("devices/pci0000:00/virtio1/block");
        let part = |disk: &str, p: &str, label: &str| {
            let d = dev.join(disk).join(p);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("partition"), "1\n").unwrap();
            std::fs::write(d.join("size"), "524288\n").unwrap();
            std::fs::write(
                d.join("uevent"),
                format!("MAJOR=254\nMINOR=2\nDEVNAME={p}\nDEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
        };
        part("vda", "vda2", "root-a");
        part("vda", "vda3", "verity-a");
        part("vda", "vda7", "data");
        part("vdb", "vdb7", "data");
        for (p, label) in extra {
            part("vda", p, label);
        }
        let dm = root.join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(dev.join("vda/vda3"), dm.join("slaves/vda3")).unwrap();
        symlink(dev.join("vda/vda2"), dm.join("slaves/vda2")).unwrap();
        std::fs::create_dir_all(root.join("dev/block")).unwrap();
        symlink(&dm, root.join("dev/block/253:0")).unwrap();
        symlink(dev.join("vda/vda2"), root.join("dev/block/254:2")).unwrap();
    }

    #[test]
    fn the_data_partition_is_found_on_the_roots_own_disk() {
        let t = tempfile::tempdir().unwrap();
        fake_sysfs(t.path(), &[]);
        let want = Partition {
            name: "vda7".into(),
            node: PathBuf::from("/dev/vda7"),
            size: 256 << 20,
        };
        for root in [(253, 0), (254, 2)] {
            let got = sibling_partition(t.path(), Path::new("/dev"), root, "data").unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn missing_twice_named_and_crafted_partitions_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fake_sysfs(t.path(), &[("vda9", "data")]);
        let e = sibling_partition(t.path(), Path::new("/dev"), (253, 0), "data").unwrap_err();
        assert!(matches!(e, DiskError::Ambiguous { count: 2, .. }), "{e}");
        let e = sibling_partition(t.path(), Path::new("/dev"), (253, 0), "state").unwrap_err();
        assert_eq!(
            e.to_string().lines().next().unwrap(),
            "the boot disk vda has no partition named `state`"
        );
        let e = sibling_partition(t.path(), Path::new("/dev"), (9, 9), "data").unwrap_err();
        assert!(e.to_string().contains("dev/block/9:9"), "{e}");

        // A DEVNAME that would leave /dev.
        let t = tempfile::tempdir().unwrap();
        fake_sysfs(t.path(), &[]);
        let uevent = t
            .path()
            .join("devices/pci0000:00/virtio1/block/vda/vda7/uevent");
        std::fs::write(&uevent, "DEVNAME=../etc/shadow\nPARTNAME=data\n").unwrap();
        let e = sibling_partition(t.path(), Path::new("/dev"), (253, 0), "data").unwrap_err();
        assert!(
            e.to_string().contains("expected a block device name"),
            "{e}"
        );
        // A size that is not a number.
        std::fs::write(&uevent, "DEVNAME=vda7\nPARTNAME=data\n").unwrap();
        std::fs::write(uevent.with_file_name("size"), "lots\n").unwrap();
        let e = sibling_partition(t.path(), Path::new("/dev"), (253, 0), "data").unwrap_err();
        assert!(e.to_string().contains("512-byte sectors"), "{e}");
    }

    #[test]
    fn uevent_values_and_device_names() {
        let u = "MAJOR=8\nPARTNAME=data\nPARTNAME2=x\n";
        assert_eq!(uevent_value(u, "PARTNAME"), Some("data"));
        assert_eq!(uevent_value(u, "PART"), None);
        for ok in ["vda7", "nvme0n1p3", "dm-0", "sr0"] {
            assert!(is_device_name(ok));
        }
        for bad in ["", ".", "..", "a/b", "vda 7", &"x".repeat(65)] {
            assert!(!is_device_name(bad), "{bad}");
        }
    }
}
