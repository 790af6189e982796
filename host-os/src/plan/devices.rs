//! The GuestOS disks of a plan: each asked-for disk found among the NVMe controllers and
//! refused if the host uses it; the home node they give the VM; and how each is attached:
//! VFIO passthrough of the controller when it is bound to vfio-pci, otherwise virtio-blk of
//! the namespace with its own I/O thread, one queue per vCPU, io_uring and no host page cache.
//! In the development layout an image file can stand for a disk (virtio-blk, no node).

use super::{PlanError, Reason};
use crate::topology::{Nvme, Topology};
use serde::Serialize;
use std::collections::BTreeMap;

/// An asked-for disk, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    /// As asked.
    pub name: String,
    pub source: DiskSource,
}

/// What an asked-for disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    Nvme {
        nvme: Nvme,
        /// The namespace when one was named or the controller has one.
        namespace: Option<String>,
    },
    /// An image file (development layout only).
    File,
}

impl DiskRequest {
    pub fn is_vfio(&self) -> bool {
        self.nvme()
            .is_some_and(|n| n.driver.as_deref() == Some("vfio-pci"))
    }

    fn nvme(&self) -> Option<&Nvme> {
        match &self.source {
            DiskSource::Nvme { nvme, .. } => Some(nvme),
            DiskSource::File => None,
        }
    }

    fn node(&self) -> Option<u32> {
        self.nvme().and_then(|n| n.node)
    }
}

/// The serial number the guest sees on virtio-blk disk `i` (`/sys/block/vdX/serial`).
pub fn serial(i: usize) -> String {
    format!("plinth-disk{i}")
}

/// How one disk is given to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DiskPlan {
    /// The whole NVMe controller, by VFIO.
    Vfio { pci: String, node: Option<u32> },
    /// The namespace's block device, by virtio-blk.
    VirtioBlk {
        path: String,
        /// The NVMe controller (none for an image file).
        #[serde(skip_serializing_if = "Option::is_none")]
        pci: Option<String>,
        node: Option<u32>,
        /// What the guest reads in `/sys/block/vdX/serial`.
        serial: String,
        /// Index into the plan's I/O threads.
        iothread: u32,
        iothread_cpu: u32,
        queues: u32,
        aio: &'static str,
        /// `cache.direct=on`: no host page cache.
        direct: bool,
    },
}

/// Find every asked-for disk; refuse unknown ones, repeated ones, and any the host uses.
/// With `files` (the development layout), an absolute path outside /dev names an image file.
pub fn resolve(
    topo: &Topology,
    names: &[String],
    files: bool,
) -> Result<Vec<DiskRequest>, PlanError> {
    let mut found: Vec<DiskRequest> = Vec::new();
    for name in names {
        if name.starts_with('/') && !name.starts_with("/dev/") {
            file_disk(name, files)?;
            if let Some(first) = found.iter().find(|d| &d.name == name) {
                return Err(PlanError::DiskTwice {
                    name: name.clone(),
                    first: first.name.clone(),
                });
            }
            found.push(DiskRequest {
                name: name.clone(),
                source: DiskSource::File,
            });
            continue;
        }
        let nvme = topo
            .find_nvme(name)
            .ok_or_else(|| PlanError::DiskMissing {
                name: name.clone(),
                found: describe(topo),
            })?
            .clone();
        let namespace = nvme
            .namespaces
            .iter()
            .find(|n| &n.name == name)
            .or_else(|| nvme.namespaces.first())
            .map(|n| n.name.clone());
        // The same namespace twice, or a passed-through controller with anything else on it.
        let vfio = nvme.driver.as_deref() == Some("vfio-pci");
        if let Some(first) = found.iter().find(|d| match &d.source {
            DiskSource::Nvme {
                nvme: n,
                namespace: ns,
            } => n.pci == nvme.pci && (vfio || d.is_vfio() || *ns == namespace),
            DiskSource::File => false,
        }) {
            return Err(PlanError::DiskTwice {
                name: name.clone(),
                first: first.name.clone(),
            });
        }
        if let Some(ns) = nvme
            .namespaces
            .iter()
            .find(|n| topo.host_disks.contains(&n.name))
        {
            return Err(PlanError::DiskInUse {
                name: name.clone(),
                what: format!("/dev/{} (controller {})", ns.name, nvme.pci),
            });
        }
        if !vfio && namespace.is_none() {
            return Err(PlanError::DiskUnusable {
                name: name.clone(),
                pci: nvme.pci.clone(),
                driver: nvme.driver.clone().unwrap_or_else(|| "no driver".into()),
            });
        }
        found.push(DiskRequest {
            name: name.clone(),
            source: DiskSource::Nvme { nvme, namespace },
        });
    }
    Ok(found)
}

/// An image file as a disk: only in the development layout, and it must be a regular file.
fn file_disk(name: &str, allowed: bool) -> Result<(), PlanError> {
    let refuse = |why: String, hint| PlanError::DiskFile {
        name: name.to_string(),
        why,
        hint,
    };
    if !allowed {
        return Err(refuse(
            "an image file is a disk only in the development layout".into(),
            "name an NVMe namespace, controller or PCI address, or plan with --development",
        ));
    }
    match std::fs::metadata(name) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(refuse(
            "not a regular file".into(),
            "give the path of a raw disk image",
        )),
        Err(e) => Err(refuse(
            format!("cannot be read: {e}"),
            "give the path of a raw disk image",
        )),
    }
}

/// The node most disks hang off (the lowest such id on a tie); when no disk's node is known,
/// the first NIC's node, else the first node.
pub fn home_node(topo: &Topology, disks: &[DiskRequest], reasons: &mut Vec<Reason>) -> u32 {
    let first = topo.nodes.first().map_or(0, |n| n.id);
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for d in disks {
        if let Some(n) = d.node() {
            *count.entry(n).or_default() += 1;
        }
    }
    let best = count
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(n, _)| *n);
    let nic_node = topo.nics.iter().find_map(|n| n.node);
    let text = match best {
        Some(n) if count.len() == 1 => {
            format!("home node {n}: every GuestOS disk's controller is attached to it")
        }
        Some(n) => format!(
            "home node {n}: most GuestOS disks are attached to it ({}); the others cross the interconnect",
            count
                .iter()
                .map(|(node, c)| format!("node {node}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => match nic_node {
            Some(n) => format!(
                "home node {n}, the NIC's: {}",
                if disks.is_empty() {
                    "no GuestOS disk given"
                } else {
                    "the firmware does not say which node the disks are on"
                }
            ),
            None if disks.is_empty() => format!("home node {first}: no GuestOS disk given"),
            None => {
                format!("home node {first}: the firmware does not say which node the disks are on")
            }
        },
    };
    let home = best.or(nic_node).unwrap_or(first);
    reasons.push(Reason {
        topic: "node",
        text,
    });
    let nics: Vec<String> = topo
        .nics
        .iter()
        .filter(|n| n.node == Some(home))
        .map(|n| n.name.clone())
        .collect();
    if !topo.nics.is_empty() {
        reasons.push(Reason {
            topic: "node",
            text: if nics.is_empty() {
                "no NIC is on the home node: network traffic crosses the interconnect".into()
            } else {
                format!("NIC {} on the home node", nics.join(", "))
            },
        });
    }
    home
}

/// How each disk is attached; virtio-blk disks get the I/O threads in turn.
pub fn plan_disks(
    disks: &[DiskRequest],
    iothread_cpus: &[u32],
    vcpus: u32,
    reasons: &mut Vec<Reason>,
) -> Vec<DiskPlan> {
    let mut plans = Vec::new();
    let mut next_iothread = 0u32;
    for (i, d) in disks.iter().enumerate() {
        let (path, pci, why) = match &d.source {
            DiskSource::Nvme { nvme, .. } if d.is_vfio() => {
                reasons.push(Reason {
                    topic: "disk",
                    text: format!(
                        "{}: VFIO passthrough of controller {}: it is bound to vfio-pci and the host does not use it, so the guest drives it with no host I/O path",
                        d.name, nvme.pci
                    ),
                });
                plans.push(DiskPlan::Vfio {
                    pci: nvme.pci.clone(),
                    node: nvme.node,
                });
                continue;
            }
            DiskSource::Nvme {
                namespace: None, ..
            } => continue,
            DiskSource::Nvme {
                nvme,
                namespace: Some(ns),
            } => (
                format!("/dev/{ns}"),
                Some(nvme.pci.clone()),
                format!(
                    "virtio-blk of /dev/{ns} (controller {} is bound to {}, not vfio-pci)",
                    nvme.pci,
                    nvme.driver.as_deref().unwrap_or("no driver")
                ),
            ),
            DiskSource::File => (d.name.clone(), None, "virtio-blk of the image file".into()),
        };
        // The planner reserves an I/O thread core whenever there is a virtio-blk disk.
        let iothread_cpu = iothread_cpus[next_iothread as usize % iothread_cpus.len()];
        let queues = vcpus.min(MAX_QUEUES);
        let serial = serial(i);
        reasons.push(Reason {
            topic: "disk",
            text: format!(
                "{}: {why}, serial {serial}: I/O thread {next_iothread} on host thread {iothread_cpu}, {queues} queues (one per vCPU), io_uring, no host page cache",
                d.name,
            ),
        });
        plans.push(DiskPlan::VirtioBlk {
            path,
            pci,
            node: d.node(),
            serial,
            iothread: next_iothread,
            iothread_cpu,
            queues,
            aio: "io_uring",
            direct: true,
        });
        next_iothread += 1;
    }
    plans
}

/// virtio-blk's queue limit in QEMU.
const MAX_QUEUES: u32 = 1024;

/// The NVMe controllers, for an error.
fn describe(topo: &Topology) -> String {
    if topo.nvme.is_empty() {
        return "none".into();
    }
    topo.nvme
        .iter()
        .map(|c| {
            let names: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
            format!(
                "{} ({}{})",
                c.pci,
                c.driver.as_deref().unwrap_or("no driver"),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(": {}", names.join(", "))
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
