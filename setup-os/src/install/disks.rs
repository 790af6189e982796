//! Which disks HostOS and GuestOS go onto: NVMe namespaces the running system does not use,
//! named by what the disks report (controller serial, namespace WWN), never by `/dev/sdX`
//! order. The provider's `target_disks` picks and orders them; without it every free NVMe
//! namespace is a candidate, in PCI address order. HostOS takes the first disk its image
//! fits on, GuestOS the next; the rest become GuestOS's data disks.

use plinth_host::topology::Topology;
use plinth_node_config::DiskId;
use serde::Serialize;
use std::path::Path;

/// One candidate disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The namespace's block device name (`nvme1n1`), for this boot only.
    pub namespace: String,
    /// The controller's PCI address: stable across boots, what guest-os.env names.
    pub pci: String,
    pub serial: Option<String>,
    /// `wwid` of the namespace (`eui.…`, `naa.…`, or QEMU's `nvme.…`).
    pub wwn: Option<String>,
    pub model: Option<String>,
    pub size_bytes: u64,
    pub node: Option<u32>,
    /// How many namespaces its controller has (plinth installs onto whole drives).
    pub namespaces_on_controller: usize,
    /// GPT names of the partitions it holds now (a node installed before has some).
    pub partitions: Vec<String>,
}

impl Target {
    /// `nvme1n1 (serial S5GX…, 6401 GB, 0000:41:00.0)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (serial {}, {} GB, {})",
            self.namespace,
            self.serial.as_deref().unwrap_or("?"),
            self.size_bytes / 1_000_000_000,
            self.pci
        )
    }

    fn is(&self, id: &DiskId) -> bool {
        match (&id.serial, &id.wwn) {
            (Some(s), _) => self.serial.as_deref().map(str::trim) == Some(s.trim()),
            (_, Some(w)) => self
                .wwn
                .as_deref()
                .is_some_and(|mine| mine.trim().eq_ignore_ascii_case(w.trim())),
            _ => false,
        }
    }
}

/// Where each OS goes.
#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub host: Target,
    pub guest: Target,
    /// Further disks given to GuestOS.
    pub guest_data: Vec<Target>,
}

/// Why no disks could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "config.yaml target_disks[{index}] ({wanted}) matches no free NVMe disk; found: {found}"
    )]
    NotFound {
        index: usize,
        wanted: String,
        found: String,
    },
    #[error("{needed} disks are needed (HostOS, GuestOS), {found} are free: {list}")]
    TooFew {
        needed: usize,
        found: usize,
        list: String,
    },
    #[error(
        "no free disk holds the {os} image ({size} bytes); the largest left is {largest} bytes"
    )]
    TooSmall {
        os: &'static str,
        size: u64,
        largest: u64,
    },
    #[error("config.yaml target_disks[{index}] ({wanted}) matches {count} namespaces: {found}")]
    Ambiguous {
        index: usize,
        wanted: String,
        count: usize,
        found: String,
    },
    #[error(
        "config.yaml target_disks[{index}] and target_disks[{first}] name the same disk, {disk}"
    )]
    Twice {
        index: usize,
        first: usize,
        disk: String,
    },
    #[error(
        "{disk} is one of {count} namespaces of its controller: plinth installs onto whole drives"
    )]
    SharedController { disk: String, count: usize },
    #[error("{disk} holds partitions ({names}): a node is installed on it")]
    Installed { disk: String, names: String },
}

/// Every free NVMe namespace, in PCI address order.
pub fn candidates(root: &Path, topo: &Topology) -> Vec<Target> {
    let mut out = Vec::new();
    for c in &topo.nvme {
        if topo.is_host_disk(c) {
            continue;
        }
        for ns in &c.namespaces {
            // Outside input (a captured tree's, or a drive's): bounded, no link followed.
            let block = root.join("sys/block").join(&ns.name);
            let wwid = plinth_release::untrusted::read_untrusted(&block.join("wwid"), 512)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|w| w.trim().to_string())
                .filter(|w| !w.is_empty() && w.len() <= 256);
            out.push(Target {
                namespace: ns.name.clone(),
                pci: c.pci.clone(),
                serial: c.serial.as_ref().map(|s| s.trim().to_string()),
                wwn: wwid,
                model: c.model.as_ref().map(|m| m.trim().to_string()),
                size_bytes: ns.size_bytes,
                node: c.node,
                namespaces_on_controller: c.namespaces.len(),
                partitions: partition_names(&block, &ns.name),
            });
        }
    }
    out.sort_by(|a, b| (&a.pci, &a.namespace).cmp(&(&b.pci, &b.namespace)));
    out
}

/// The GPT names of the partitions of block device `dir` (`sys/block/<name>`), from each
/// partition's `uevent` (PARTNAME), bounded.
fn partition_names(dir: &Path, name: &str) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return names;
    };
    for entry in entries.flatten().take(256) {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if !file.starts_with(name) || file == name {
            continue;
        }
        let uevent = plinth_release::untrusted::read_untrusted(&entry.path().join("uevent"), 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        if let Some(part) = uevent.lines().find_map(|l| l.strip_prefix("PARTNAME=")) {
            names.push(part.chars().take(36).collect());
        } else if uevent.lines().any(|l| l == "DEVTYPE=partition") {
            names.push(String::new());
        }
    }
    names.sort();
    names
}

/// The disks the config names, in its order; or every candidate. Each name must match
/// exactly one namespace, no disk may be named twice, every disk must be a whole drive
/// (its controller's only namespace), and a disk that holds partitions (a node installed
/// before) is taken only when `reinstall`.
pub fn choose(
    candidates: Vec<Target>,
    wanted: &[DiskId],
    reinstall: bool,
) -> Result<Vec<Target>, DiskError> {
    let chosen = pick(candidates, wanted)?;
    for t in &chosen {
        if t.namespaces_on_controller > 1 {
            return Err(DiskError::SharedController {
                disk: t.describe(),
                count: t.namespaces_on_controller,
            });
        }
        if !t.partitions.is_empty() && !reinstall {
            return Err(DiskError::Installed {
                disk: t.describe(),
                names: t.partitions.join(", "),
            });
        }
    }
    Ok(chosen)
}

fn pick(candidates: Vec<Target>, wanted: &[DiskId]) -> Result<Vec<Target>, DiskError> {
    if wanted.is_empty() {
        return Ok(candidates);
    }
    let list = || {
        candidates
            .iter()
            .map(Target::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chosen: Vec<Target> = Vec::new();
    for (index, id) in wanted.iter().enumerate() {
        let name = match (&id.serial, &id.wwn) {
            (Some(s), _) => format!("serial {s}"),
            (_, Some(w)) => format!("wwn {w}"),
            _ => "nothing".into(),
        };
        let matches: Vec<&Target> = candidates.iter().filter(|t| t.is(id)).collect();
        let t = match matches.as_slice() {
            [] => {
                return Err(DiskError::NotFound {
                    index,
                    wanted: name,
                    found: list(),
                })
            }
            [one] => (*one).clone(),
            more => {
                return Err(DiskError::Ambiguous {
                    index,
                    wanted: name,
                    count: more.len(),
                    found: more
                        .iter()
                        .map(|t| t.describe())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        if let Some(first) = chosen.iter().position(|c| c.namespace == t.namespace) {
            return Err(DiskError::Twice {
                index,
                first,
                disk: t.describe(),
            });
        }
        chosen.push(t);
    }
    Ok(chosen)
}

/// HostOS onto the first disk its image fits on, GuestOS onto the next that fits.
pub fn assign(
    chosen: Vec<Target>,
    host_size: u64,
    guest_size: u64,
) -> Result<Assignment, DiskError> {
    if chosen.len() < 2 {
        return Err(DiskError::TooFew {
            needed: 2,
            found: chosen.len(),
            list: chosen
                .iter()
                .map(Target::describe)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut left = chosen;
    let mut take = |os: &'static str, size: u64| {
        let i = left
            .iter()
            .position(|t| t.size_bytes >= size)
            .ok_or(DiskError::TooSmall {
                os,
                size,
                largest: left.iter().map(|t| t.size_bytes).max().unwrap_or(0),
            })?;
        Ok::<_, DiskError>(left.remove(i))
    };
    let host = take("HostOS", host_size)?;
    let guest = take("GuestOS", guest_size)?;
    Ok(Assignment {
        host,
        guest,
        guest_data: left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ns: &str, pci: &str, serial: &str, gb: u64) -> Target {
        Target {
            namespace: ns.into(),
            pci: pci.into(),
            serial: Some(serial.into()),
            wwn: Some(format!("eui.{serial:0>16}")),
            model: None,
            size_bytes: gb * 1_000_000_000,
            node: Some(0),
            namespaces_on_controller: 1,
            partitions: Vec::new(),
        }
    }

    #[test]
    fn the_config_picks_and_orders_disks_by_serial_or_wwn() {
        let all = vec![
            t("nvme0n1", "0000:01:00.0", "AAA", 100),
            t("nvme1n1", "0000:02:00.0", "BBB", 100),
            t("nvme2n1", "0000:03:00.0", "CCC", 100),
        ];
        let wanted = [
            DiskId {
                serial: Some("CCC".into()),
                wwn: None,
            },
            DiskId {
                serial: None,
                wwn: Some("EUI.0000000000000AAA".into()),
            },
        ];
        let chosen = choose(all.clone(), &wanted, false).unwrap();
        assert_eq!(
            chosen
                .iter()
                .map(|t| t.namespace.as_str())
                .collect::<Vec<_>>(),
            ["nvme2n1", "nvme0n1"]
        );
        let err = choose(
            all.clone(),
            &[DiskId {
                serial: Some("ZZZ".into()),
                wwn: None,
            }],
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("target_disks[0] (serial ZZZ) matches no free NVMe disk"),
            "{err}"
        );
        assert_eq!(choose(all.clone(), &[], false).unwrap().len(), 3);

        // The same disk by serial and by WWN: refused, not written twice.
        let id = |serial: Option<&str>, wwn: Option<&str>| DiskId {
            serial: serial.map(Into::into),
            wwn: wwn.map(Into::into),
        };
        let twice = [
            id(Some("AAA"), None),
            id(None, Some("eui.0000000000000aaa")),
        ];
        let err = choose(all.clone(), &twice, false).unwrap_err();
        assert!(err.to_string().contains("name the same disk"), "{err}");
        // Two drives reporting one serial: ambiguous.
        let mut same = all.clone();
        same[1].serial = Some("AAA".into());
        let err = choose(same, &[id(Some("AAA"), None)], false).unwrap_err();
        assert!(err.to_string().contains("matches 2 namespaces"), "{err}");
        // A split drive, and a node installed before (without reinstall).
        let mut split = all.clone();
        split[0].namespaces_on_controller = 2;
        let err = choose(split, &[], false).unwrap_err();
        assert!(err.to_string().contains("whole drives"), "{err}");
        let mut installed = all;
        installed[2].partitions = vec!["esp".into(), "root-a".into()];
        let err = choose(installed.clone(), &[], false).unwrap_err();
        assert!(
            err.to_string().contains("holds partitions (esp, root-a)"),
            "{err}"
        );
        assert_eq!(choose(installed, &[], true).unwrap().len(), 3);
    }

    #[test]
    fn each_os_goes_onto_the_first_disk_it_fits() {
        let disks = vec![
            t("nvme0n1", "0000:01:00.0", "AAA", 1),
            t("nvme1n1", "0000:02:00.0", "BBB", 100),
            t("nvme2n1", "0000:03:00.0", "CCC", 100),
        ];
        let a = assign(disks.clone(), 50_000_000_000, 60_000_000_000).unwrap();
        assert_eq!(
            (a.host.namespace.as_str(), a.guest.namespace.as_str()),
            ("nvme1n1", "nvme2n1")
        );
        assert_eq!(a.guest_data.len(), 1);
        let err = assign(disks[..1].to_vec(), 1, 1).unwrap_err();
        assert!(err.to_string().contains("2 disks are needed"), "{err}");
        let err = assign(disks, 500_000_000_000, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("no free disk holds the HostOS image"),
            "{err}"
        );
    }
}
