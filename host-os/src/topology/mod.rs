//! The machine as the GuestOS VM planner sees it: NUMA nodes (CPUs, memory, distances, free
//! hugepages), host threads (cores, SMT siblings, L3 groups), NVMe controllers with their
//! namespaces, and NICs, each with the NUMA node it is attached to. Read from /sys and /proc
//! (`sysfs`) under a root that tests point at captured or generated trees.

#[doc(hidden)]
pub mod fixture;
mod report;
pub mod sysfs;

use serde::Serialize;
use std::collections::BTreeSet;

/// The whole machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub nodes: Vec<NumaNode>,
    /// Online host threads, by id.
    pub cpus: Vec<Cpu>,
    pub nvme: Vec<Nvme>,
    pub nics: Vec<Nic>,
    /// The disks the running host uses itself (`nvme0n1`, `sda`): it mounts a filesystem or
    /// swaps on them, or a device-mapper, md or LVM device holds them. Never given to a guest.
    pub host_disks: BTreeSet<String>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    pub id: u32,
    /// Its online host threads.
    pub cpus: Vec<u32>,
    pub memory_total_bytes: u64,
    /// Free, or taken back by the kernel on demand (page cache, reclaimable slab).
    pub memory_free_bytes: u64,
    /// Distance to every node, in the order of node ids (`distances[i]` to the i-th node of
    /// `Topology::nodes`); 10 is local.
    pub distances: Vec<u32>,
    pub hugepages_2m: Hugepages,
    pub hugepages_1g: Hugepages,
}

/// Hugepages of one size on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Hugepages {
    pub total: u64,
    pub free: u64,
}

/// One host thread (a logical CPU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    pub id: u32,
    pub node: u32,
    /// Socket.
    pub package: u32,
    /// The core's id within its package.
    pub core: u32,
    /// Every thread of its core, itself included, ascending.
    pub siblings: Vec<u32>,
    /// The id of the L3 cache it shares (a CCX on EPYC), if the kernel reports one.
    pub l3: Option<u32>,
}

/// An NVMe controller (a PCI function of class 0x010802).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nvme {
    /// PCI address, `0000:41:00.0`.
    pub pci: String,
    /// The NUMA node of its PCIe root; `None` when the firmware does not say (-1).
    pub node: Option<u32>,
    /// The bound driver: `nvme`, `vfio-pci`, or none.
    pub driver: Option<String>,
    /// The controller's name while the nvme driver has it (`nvme0`).
    pub name: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub namespaces: Vec<Namespace>,
}

/// An NVMe namespace (a block device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
}

/// A network interface on a PCI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub name: String,
    pub pci: String,
    pub node: Option<u32>,
    /// Link speed in Mb/s, when the link is up.
    pub speed_mbps: Option<u32>,
    pub driver: Option<String>,
}

impl Topology {
    pub fn node(&self, id: u32) -> Option<&NumaNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.id == id)
    }

    /// The distance from node `from` to node `to` (the firmware's SLIT; 10 local, and 10 or
    /// 20 when the kernel has no table).
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        let index = self.nodes.iter().position(|n| n.id == to);
        self.node(from)
            .and_then(|n| index.and_then(|i| n.distances.get(i).copied()))
            .unwrap_or(if from == to { 10 } else { 20 })
    }

    /// Whether SMT is on: some core has more than one thread.
    pub fn smt(&self) -> bool {
        self.cpus.iter().any(|c| c.siblings.len() > 1)
    }

    /// The NVMe controller that has namespace `name` (`nvme0n1`), or whose PCI address or
    /// controller name is `name`.
    pub fn find_nvme(&self, name: &str) -> Option<&Nvme> {
        self.nvme.iter().find(|c| {
            c.pci == name
                || c.name.as_deref() == Some(name)
                || c.namespaces.iter().any(|n| n.name == name)
        })
    }

    /// Whether the host itself uses a namespace of the controller.
    pub fn is_host_disk(&self, nvme: &Nvme) -> bool {
        nvme.namespaces
            .iter()
            .any(|n| self.host_disks.contains(&n.name))
    }
}
