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
}

/// Every free NVMe namespace, in PCI address order.
pub fn candidates(root: &Path, topo: &Topology) -> Vec<Target> {
    let mut out = Vec::new();
    for c in &topo.nvme {
        if topo.is_host_disk(c) {
            continue;
        }
        for ns in &c.namespaces {
            let wwid = std::fs::read_to_string(root.join("sys/block").join(&ns.name).join("wwid"))
                .ok()
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
            });
        }
    }
    out.sort_by(|a, b| (&a.pci, &a.namespace).cmp(&(&b.pci, &b.namespace)));
    out
}

/// The disks the config names, in its order; or every candidate.
pub fn choose(candidates: Vec<Target>, wanted: &[DiskId]) -> Result<Vec<Target>, DiskError> {
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
    wanted
        .iter()
        .enumerate()
        .map(|(index, id)| {
            candidates
                .iter()
                .find(|t| t.is(id))
                .cloned()
                .ok_or_else(|| DiskError::NotFound {
                    index,
                    wanted: match (&id.serial, &id.wwn) {
                        (Some(s), _) => format!("serial {s}"),
                        (_, Some(w)) => format!("wwn {w}"),
                        _ => "nothing".into(),
                    },
                    found: list(),
                })
        })
        .collect()
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
        let chosen = choose(all.clone(), &wanted).unwrap();
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
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("target_disks[0] (serial ZZZ) matches no free NVMe disk"),
            "{err}"
        );
        assert_eq!(choose(all, &[]).unwrap().len(), 3);
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
