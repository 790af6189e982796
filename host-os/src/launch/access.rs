//! What QEMU, once unprivileged, opens itself, and so is given to its user before it starts
//! (libvirt's DAC model): the virtio-blk disks, the VFIO group of each passed-through NVMe
//! controller, and `/dev/sev` under SEV-SNP; and the locked-memory limit VFIO needs to pin
//! all guest memory for DMA. Every device is checked first, so a host that cannot run the
//! plan is told why before QEMU is started.
//!
//! Giving is done through a descriptor of the file itself, opened without following a
//! link (`O_PATH|O_NOFOLLOW`, then `fchownat(fd, "", AT_EMPTY_PATH)`): a development disk
//! image may sit in a directory QEMU's user can write, where QEMU could swap it for a link
//! to a root file between two starts. A link, a directory, anything but a regular file or
//! a device node, and a regular file with more than one name (a hard link to a root file)
//! are refused.

use super::qemu::RunAs;
use crate::plan::{Boot, DiskPlan, Plan};
use crate::topology::sysfs;
use std::path::{Path, PathBuf};

/// Why a device the plan needs cannot be given to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{pci}: its IOMMU group ({link}): {source}\n  hint: VFIO needs the IOMMU on (amd_iommu=on iommu=pt on HostOS's command line)")]
    NoGroup {
        pci: String,
        link: String,
        source: std::io::Error,
    },
    #[error("{pci}: IOMMU group {group} also holds {other} (driver {driver}), so VFIO cannot take the group\n  hint: bind {other} to vfio-pci too, or move the controller to a slot with a group of its own")]
    SharedGroup {
        pci: String,
        group: String,
        other: String,
        driver: String,
    },
    #[error("{path}: missing, {why}")]
    Missing { path: String, why: &'static str },
    #[error("giving {path} to uid {uid}: {source}")]
    Chown {
        path: String,
        uid: u32,
        source: std::io::Error,
    },
    #[error("giving {path} to uid {uid}: refused: {why}\n  hint: QEMU is given only regular files with one name and device nodes, never through a link; name the file itself")]
    Refused { path: String, uid: u32, why: String },
    #[error("{path}: QEMU's user (uid {uid}, gid {gid}) cannot reach it: {dir} is mode {mode:o}, owner uid {owner} gid {group}\n  hint: QEMU opens it itself after dropping root; keep it under directories others may search (chmod o+x {dir}), or move it")]
    Unreachable {
        path: String,
        dir: String,
        uid: u32,
        gid: u32,
        mode: u32,
        owner: u32,
        group: u32,
    },
}

/// Where the kernel's trees are: `/sys` and `/dev` (test trees elsewhere).
#[derive(Debug, Clone)]
pub struct Roots {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

/// The device nodes QEMU opens for `disks` and `boot`, each checked to exist.
pub fn devices(
    disks: &[DiskPlan],
    boot: &Boot,
    roots: &Roots,
) -> Result<Vec<PathBuf>, AccessError> {
    let mut paths = Vec::new();
    for d in disks {
        match d {
            DiskPlan::VirtioBlk { path, .. } => paths.push(PathBuf::from(path)),
            DiskPlan::Vfio { pci, .. } => {
                let group = vfio_group(pci, &roots.sysfs)?;
                paths.push(present(
                    roots.dev.join("vfio").join(&group),
                    "the VFIO group's device (is the controller bound to vfio-pci?)",
                )?);
            }
        }
    }
    if matches!(boot, Boot::SevSnpDirect { .. }) {
        paths.push(present(
            roots.dev.join("sev"),
            "the AMD secure processor's device (SEV-SNP needs it on in the BIOS, and the ccp and kvm_amd sev_snp=1 modules)",
        )?);
    }
    Ok(paths)
}

fn present(path: PathBuf, why: &'static str) -> Result<PathBuf, AccessError> {
    match path.symlink_metadata() {
        Ok(_) => Ok(path),
        Err(_) => Err(AccessError::Missing {
            path: path.display().to_string(),
            why,
        }),
    }
}

/// The IOMMU group of PCI device `pci`, checked to be VFIO's whole: every other device in
/// it is on vfio-pci or pci-stub, unbound, or a bridge (the kernel's viability rule).
fn vfio_group(pci: &str, sysfs: &Path) -> Result<String, AccessError> {
    let link = sysfs.join("bus/pci/devices").join(pci).join("iommu_group");
    let target = std::fs::read_link(&link).map_err(|source| AccessError::NoGroup {
        pci: pci.into(),
        link: link.display().to_string(),
        source,
    })?;
    let group = file_name(&target);
    let members = sysfs
        .join("kernel/iommu_groups")
        .join(&group)
        .join("devices");
    for entry in std::fs::read_dir(&members).into_iter().flatten().flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other == pci {
            continue;
        }
        let dev = entry.path();
        let driver = sysfs::read_driver(&dev.join("driver")).ok().flatten();
        let bridge = std::fs::read_to_string(dev.join("class"))
            .is_ok_and(|c| c.trim().starts_with("0x0604"));
        match driver {
            Some(d) if !bridge && d != "vfio-pci" && d != "pci-stub" => {
                return Err(AccessError::SharedGroup {
                    pci: pci.into(),
                    group,
                    other,
                    driver: d,
                })
            }
            _ => {}
        }
    }
    Ok(group)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Give each of `paths` to `to` (owner and group), so QEMU can open it after the jail drops
/// root. Block devices keep their mode: the owner is who may read and write. Each is
/// changed through a descriptor opened without following a link (see the module doc).
pub fn give(paths: &[PathBuf], to: RunAs) -> Result<(), AccessError> {
    use nix::fcntl::{open, AtFlags, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    use nix::unistd::{fchownat, Gid, Uid};
    for p in paths {
        let shown = p.display().to_string();
        let chown_err = |e: nix::Error| AccessError::Chown {
            path: shown.clone(),
            uid: to.uid,
            source: std::io::Error::from(e),
        };
        let refused = |why: String| AccessError::Refused {
            path: shown.clone(),
            uid: to.uid,
            why,
        };
        let fd = open(
            p.as_path(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(chown_err)?;
        let st = fstat(&fd).map_err(chown_err)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        match kind {
            SFlag::S_IFREG if st.st_nlink > 1 => {
                return Err(refused(format!(
                    "a regular file with {} names (a hard link)",
                    st.st_nlink
                )))
            }
            SFlag::S_IFREG | SFlag::S_IFBLK | SFlag::S_IFCHR => {}
            SFlag::S_IFLNK => return Err(refused("a symbolic link".into())),
            SFlag::S_IFDIR => return Err(refused("a directory".into())),
            _ => return Err(refused("not a regular file or a device node".into())),
        }
        fchownat(
            &fd,
            "",
            Some(Uid::from_raw(to.uid)),
            Some(Gid::from_raw(to.gid)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(chown_err)?;
    }
    Ok(())
}

/// Check that QEMU's user `to` may search every directory above each of `paths` (QEMU
/// opens them by name once unprivileged), so that a file kept in a private directory is
/// named before QEMU starts, not only by QEMU's `Permission denied` after. Only the mode
/// bits are read (the jail drops supplementary groups); a POSIX ACL can grant what they
/// deny, so the caller reports this as a warning, not a refusal.
pub fn reachable(paths: &[&Path], to: RunAs) -> Result<(), AccessError> {
    use std::os::unix::fs::MetadataExt;
    for p in paths {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Ok(real) = std::fs::canonicalize(parent) else {
            continue; // missing: QEMU's open names it
        };
        for dir in real.ancestors() {
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            let bits = if m.uid() == to.uid {
                m.mode() >> 6
            } else if m.gid() == to.gid {
                m.mode() >> 3
            } else {
                m.mode()
            };
            if bits & 0o1 == 0 {
                return Err(AccessError::Unreachable {
                    path: p.display().to_string(),
                    dir: dir.display().to_string(),
                    uid: to.uid,
                    gid: to.gid,
                    mode: m.mode() & 0o7777,
                    owner: m.uid(),
                    group: m.gid(),
                });
            }
        }
    }
    Ok(())
}

/// The locked-memory limit QEMU needs, in bytes: with a VFIO device, all guest memory is
/// pinned for DMA, plus 1 GiB for QEMU's own (libvirt's rule); otherwise none is set.
pub fn memlock_bytes(plan: &Plan) -> Option<u64> {
    plan.disks
        .iter()
        .any(|d| matches!(d, DiskPlan::Vfio { .. }))
        .then_some((plan.memory_gib + 1) << 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    const PCI: &str = "0000:41:00.0";

    /// A sysfs tree with `PCI` in IOMMU group 17, with `others` (address, driver) beside it,
    /// and a /dev with vfio/17.
    fn tree(others: &[(&str, Option<&str>, &str)]) -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = dir.path().join("sys");
        let dev = dir.path().join("dev");
        let group = sysfs.join("kernel/iommu_groups/17/devices");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::create_dir_all(sysfs.join("bus/pci/devices")).unwrap();
        std::fs::create_dir_all(sysfs.join("bus/pci/drivers/vfio-pci")).unwrap();
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        std::fs::write(dev.join("vfio/17"), "").unwrap();
        let all = [(PCI, Some("vfio-pci"), "0x010802")];
        for (addr, driver, class) in all.iter().chain(others) {
            let d = sysfs.join("devices/pci0000:40").join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            if let Some(drv) = driver {
                symlink(format!("../../../bus/pci/drivers/{drv}"), d.join("driver")).unwrap();
            }
            symlink("../../../kernel/iommu_groups/17", d.join("iommu_group")).unwrap();
            symlink(
                format!("../../../devices/pci0000:40/{addr}"),
                sysfs.join("bus/pci/devices").join(addr),
            )
            .unwrap();
            symlink(
                format!("../../../../devices/pci0000:40/{addr}"),
                group.join(addr),
            )
            .unwrap();
        }
        (dir, Roots { sysfs, dev })
    }

    fn vfio() -> Vec<DiskPlan> {
        vec![DiskPlan::Vfio {
            pci: PCI.into(),
            node: Some(1),
        }]
    }

    #[test]
    fn a_passed_through_controller_needs_its_vfio_group_and_sev_needs_dev_sev() {
        let (_dir, roots) = tree(&[
            ("0000:40:01.1", Some("pcieport"), "0x060400"),
            ("0000:41:00.1", None, "0x130000"),
        ]);
        let got = devices(&vfio(), &Boot::Disk, &roots).unwrap();
        assert_eq!(got, vec![roots.dev.join("vfio/17")]);
        // SEV-SNP without /dev/sev: refused, naming the device and what turns it on.
        let e = devices(&vfio(), &Boot::sev_snp("0x30000".into()), &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: missing", roots.dev.join("sev").display())),
            "{e}"
        );
        assert!(e.contains("sev_snp=1"), "{e}");
        std::fs::write(roots.dev.join("sev"), "").unwrap();
        let got = devices(&vfio(), &Boot::sev_snp("0x30000".into()), &roots).unwrap();
        assert_eq!(got, vec![roots.dev.join("vfio/17"), roots.dev.join("sev")]);
    }

    #[test]
    fn a_group_shared_with_a_host_driver_is_refused() {
        let (_dir, roots) = tree(&[("0000:41:00.1", Some("nvme"), "0x010802")]);
        let e = devices(&vfio(), &Boot::Disk, &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("0000:41:00.0: IOMMU group 17 also holds 0000:41:00.1 (driver nvme)"),
            "{e}"
        );
    }

    #[test]
    fn no_iommu_is_named_with_the_fix() {
        let (_dir, roots) = tree(&[]);
        let disks = vec![DiskPlan::Vfio {
            pci: "0000:42:00.0".into(),
            node: None,
        }];
        let e = devices(&disks, &Boot::Disk, &roots)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0000:42:00.0/iommu_group"), "{e}");
        assert!(e.contains("amd_iommu=on"), "{e}");
    }

    #[test]
    fn given_paths_belong_to_the_qemu_user() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk");
        std::fs::write(&f, "").unwrap();
        give(
            std::slice::from_ref(&f),
            RunAs {
                uid: 65534,
                gid: 65534,
            },
        )
        .unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        let e = give(
            &[dir.path().join("gone")],
            RunAs {
                uid: 65534,
                gid: 65534,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "giving {}/gone to uid 65534",
                dir.path().display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_file_in_a_directory_qemus_user_cannot_search_is_named_with_that_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let disk = private.join("disk.img");
        std::fs::write(&disk, "").unwrap();
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };
        let e = reachable(&[disk.as_path()], nobody)
            .unwrap_err()
            .to_string();
        let real = std::fs::canonicalize(&private).unwrap();
        assert!(
            e.starts_with(&format!(
                "{}: QEMU's user (uid 65534, gid 65534) cannot reach it: {} is mode 700",
                disk.display(),
                real.display()
            )),
            "{e}"
        );
        // Searchable by others, or owned by QEMU's user: reachable.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        reachable(&[disk.as_path()], nobody).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&private, Some(65534), None).unwrap();
        reachable(&[disk.as_path()], nobody).unwrap();
    }
}
