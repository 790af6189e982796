//! The GuestOS disks of a plan: each asked-for disk found among the NVMe controllers and
//! refused if the host uses it; the home node they give the VM; and how each is attached:
//! VFIO passthrough of the controller when it is bound to vfio-pci, otherwise virtio-blk of
//! the namespace with its own I/O thread, one queue per vCPU, io_uring and no host page cache.

use super::{PlanError, Reason};
use crate::topology::{Nvme, Topology};
use serde::Serialize;
use std::collections::BTreeMap;

/// An asked-for disk, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    /// As asked.
    pub name: String,
    pub nvme: Nvme,
    /// The namespace when one was named or the controller has one.
    pub namespace: Option<String>,
}

impl DiskRequest {
    pub fn is_vfio(&self) -> bool {
        self.nvme.driver.as_deref() == Some("vfio-pci")
    }
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
        pci: String,
        node: Option<u32>,
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
pub fn resolve(topo: &Topology, names: &[String]) -> Result<Vec<DiskRequest>, PlanError> {
    let mut found: Vec<DiskRequest> = Vec::new();
    for name in names {
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
        if let Some(first) = found
            .iter()
            .find(|d| d.nvme.pci == nvme.pci && (vfio || d.is_vfio() || d.namespace == namespace))
        {
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
            nvme,
            namespace,
        });
    }
    Ok(found)
}

/// The node most disks hang off (the lowest such id on a tie); when no disk's node is known,
/// the first NIC's node, else the first node.
pub fn home_node(topo: &Topology, disks: &[DiskRequest], reasons: &mut Vec<Reason>) -> u32 {
    let first = topo.nodes.first().map_or(0, |n| n.id);
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for d in disks {
        if let Some(n) = d.nvme.node {
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
    for d in disks {
        if d.is_vfio() {
            reasons.push(Reason {
                topic: "disk",
                text: format!(
                    "{}: VFIO passthrough of controller {}: it is bound to vfio-pci and the host does not use it, so the guest drives it with no host I/O path",
                    d.name, d.nvme.pci
                ),
            });
            plans.push(DiskPlan::Vfio {
                pci: d.nvme.pci.clone(),
                node: d.nvme.node,
            });
            continue;
        }
        let Some(ns) = &d.namespace else {
            continue;
        };
        // The planner reserves an I/O thread core whenever there is a virtio-blk disk.
        let iothread_cpu = iothread_cpus[next_iothread as usize % iothread_cpus.len()];
        let queues = vcpus.min(MAX_QUEUES);
        reasons.push(Reason {
            topic: "disk",
            text: format!(
                "{}: virtio-blk of /dev/{ns} (controller {} is bound to {}, not vfio-pci): I/O thread {next_iothread} on host thread {iothread_cpu}, {queues} queues (one per vCPU), io_uring, no host page cache",
                d.name,
                d.nvme.pci,
                d.nvme.driver.as_deref().unwrap_or("no driver")
            ),
        });
        plans.push(DiskPlan::VirtioBlk {
            path: format!("/dev/{ns}"),
            pci: d.nvme.pci.clone(),
            node: d.nvme.node,
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
